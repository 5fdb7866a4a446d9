"""boto3's `iot` client against the gateway's control plane, with --endpoint-url style configuration."""
import hashlib
import queue
import ssl

import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest

from conftest import ADMIN_SECRET, operator_client

WAIT = 10


def iot(gateway, secret=ADMIN_SECRET):
    return operator_client(gateway, "iot", secret)


def certificate_id(pem_file):
    """AWS's certificate id: SHA-256 of the DER encoding."""
    with open(pem_file) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def connected_device(gateway, name):
    cert, key = gateway.device(name)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=gateway.ca, certfile=cert, keyfile=key)
    events = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p=None: events.put(("connect", rc))
    c.on_disconnect = lambda _c, _u, _f, rc, _p=None: events.put(("disconnect", rc))
    c.connect("localhost", gateway.port, keepalive=30)
    c.loop_start()
    kind, rc = events.get(timeout=WAIT)
    assert kind == "connect" and not rc.is_failure, rc
    return c, events


def test_update_certificate_revokes_a_live_device(gateway):
    device, events = connected_device(gateway, "boto-victim")
    client = iot(gateway)
    cert_id = certificate_id(gateway.device("boto-victim")[0])
    certs = {c["certificateId"]: c["status"] for c in client.list_certificates()["certificates"]}
    assert certs[cert_id] == "ACTIVE"
    described = client.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert described["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    assert described["certificateArn"].endswith(f":cert/{cert_id}")

    client.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    kind, rc = events.get(timeout=WAIT)
    assert kind == "disconnect"
    assert rc == mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, "Not authorized")
    device.loop_stop()
    assert client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "REVOKED"


def test_things_and_errors_in_aws_shapes(gateway):
    client = iot(gateway)
    client.create_thing(thingName="pump-7", thingTypeName="pump",
                        attributePayload={"attributes": {"floor": "2"}})
    things = {t["thingName"]: t for t in client.list_things()["things"]}
    assert things["pump-7"]["attributes"] == {"floor": "2"}
    assert things["pump-7"]["thingTypeName"] == "pump"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.update_certificate(certificateId="0" * 64, newStatus="INACTIVE")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot(gateway, secret="wrong").list_things()
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_the_trusted_ca_is_registered_with_auto_registration(gateway):
    client = iot(gateway)
    cas = client.list_ca_certificates()["certificates"]
    assert len(cas) == 1
    ca_id = cas[0]["certificateId"]
    assert ca_id == certificate_id(gateway.ca)
    described = client.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert described["autoRegistrationStatus"] == "ENABLE"
    assert described["status"] == "ACTIVE"
