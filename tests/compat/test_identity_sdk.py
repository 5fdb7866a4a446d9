"""Fleet provisioning by claim through the AWS IoT Device SDK v2's own
`iotidentity` client, unchanged: CreateKeysAndCertificate (and
CreateCertificateFromCsr), then RegisterThing, then a connection with the
new certificate."""
import json
import queue
import subprocess

import pytest
from awscrt import mqtt
from awsiot import iotidentity, mqtt_connection_builder

from conftest import Gateway

WAIT = 10
QOS1 = mqtt.QoS.AT_LEAST_ONCE

TEMPLATE = {
    "Parameters": {"SerialNumber": {"Type": "String"},
                   "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Fn::Join": ["", ["sdk-lamp-", {"Ref": "SerialNumber"}]]}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "open"}},
    },
    "DeviceConfiguration": {"site": "north"},
}


@pytest.fixture
def fleet_gateway(tmp_path):
    (tmp_path / "fleet.json").write_text(json.dumps(TEMPLATE))
    g = Gateway(tmp_path, open_policies=True,
                extra='[[provisioning.templates]]\nname = "SdkFleet"\nfile = "fleet.json"\n')
    yield g
    g.stop()


def connect(gateway, client_id, cert, key):
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=gateway.port, cert_filepath=cert, pri_key_filepath=key,
        ca_filepath=gateway.ca, client_id=client_id, clean_session=True, keep_alive_secs=30,
    )
    conn.connect().result(WAIT)
    return conn


def subscribed(subscribe, request):
    """Subscribes to accepted and rejected; their queues."""
    accepted, rejected = queue.Queue(), queue.Queue()
    for sub, q in zip(subscribe, (accepted, rejected)):
        future, _ = sub(request, QOS1, q.put)
        future.result(WAIT)
    return accepted, rejected


def register(identity, token, serial):
    accepted, rejected = subscribed(
        (identity.subscribe_to_register_thing_accepted, identity.subscribe_to_register_thing_rejected),
        iotidentity.RegisterThingSubscriptionRequest(template_name="SdkFleet"))
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name="SdkFleet", certificate_ownership_token=token,
        parameters={"SerialNumber": serial}), QOS1).result(WAIT)
    assert rejected.empty()
    return accepted.get(timeout=WAIT)


def test_create_keys_and_certificate_then_register_thing(fleet_gateway, tmp_path):
    gateway = fleet_gateway
    cert, key = gateway.device("claim")
    claim = connect(gateway, "claim", cert, key)
    identity = iotidentity.IotIdentityClient(claim)
    accepted, rejected = subscribed(
        (identity.subscribe_to_create_keys_and_certificate_accepted,
         identity.subscribe_to_create_keys_and_certificate_rejected),
        iotidentity.CreateKeysAndCertificateSubscriptionRequest())
    identity.publish_create_keys_and_certificate(
        iotidentity.CreateKeysAndCertificateRequest(), QOS1).result(WAIT)
    created = accepted.get(timeout=WAIT)
    assert rejected.empty()
    assert len(created.certificate_id) == 64 and created.private_key

    registered = register(identity, created.certificate_ownership_token, "1")
    assert registered.thing_name == "sdk-lamp-1"
    assert registered.device_configuration == {"site": "north"}
    claim.disconnect().result(WAIT)

    (tmp_path / "new.pem").write_text(created.certificate_pem)
    (tmp_path / "new.key").write_text(created.private_key)
    device = connect(gateway, "sdk-lamp-1", str(tmp_path / "new.pem"), str(tmp_path / "new.key"))
    device.disconnect().result(WAIT)


def test_create_certificate_from_csr_then_register_thing(fleet_gateway, tmp_path):
    gateway = fleet_gateway
    key_file, csr_file = tmp_path / "own.key", tmp_path / "own.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key_file), "-out", str(csr_file), "-subj", "/CN=sdk-lamp-2"],
                   check=True, capture_output=True, timeout=60)
    cert, key = gateway.device("claim-csr")
    claim = connect(gateway, "claim-csr", cert, key)
    identity = iotidentity.IotIdentityClient(claim)
    accepted, rejected = subscribed(
        (identity.subscribe_to_create_certificate_from_csr_accepted,
         identity.subscribe_to_create_certificate_from_csr_rejected),
        iotidentity.CreateCertificateFromCsrSubscriptionRequest())
    identity.publish_create_certificate_from_csr(iotidentity.CreateCertificateFromCsrRequest(
        certificate_signing_request=csr_file.read_text()), QOS1).result(WAIT)
    created = accepted.get(timeout=WAIT)
    assert rejected.empty()

    registered = register(identity, created.certificate_ownership_token, "2")
    assert registered.thing_name == "sdk-lamp-2"
    claim.disconnect().result(WAIT)

    (tmp_path / "own.pem").write_text(created.certificate_pem)
    device = connect(gateway, "sdk-lamp-2", str(tmp_path / "own.pem"), str(key_file))
    device.disconnect().result(WAIT)
