"""Fleet provisioning by claim through the AWS IoT Device SDK v2's own
`iotidentity` client, unchanged: CreateKeysAndCertificate (and
CreateCertificateFromCsr), then RegisterThing, then a connection with the
new certificate; and templates made by boto3, with a pre-provisioning hook."""
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from awscrt import mqtt
from awsiot import iotidentity

from conftest import Gateway, operator_client, sdk_connect, sdk_subscribed

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


def ask_register(identity, token, serial, template="SdkFleet"):
    """RegisterThing; the accepted and rejected queues."""
    accepted, rejected = sdk_subscribed(
        (identity.subscribe_to_register_thing_accepted, identity.subscribe_to_register_thing_rejected),
        iotidentity.RegisterThingSubscriptionRequest(template_name=template), QOS1)
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token=token,
        parameters={"SerialNumber": serial}), QOS1).result(WAIT)
    return accepted, rejected


def register(identity, token, serial, template="SdkFleet"):
    accepted, rejected = ask_register(identity, token, serial, template)
    registered = accepted.get(timeout=WAIT)
    assert rejected.empty()
    return registered


def create_keys(identity):
    accepted, rejected = sdk_subscribed(
        (identity.subscribe_to_create_keys_and_certificate_accepted,
         identity.subscribe_to_create_keys_and_certificate_rejected),
        iotidentity.CreateKeysAndCertificateSubscriptionRequest(), QOS1)
    identity.publish_create_keys_and_certificate(
        iotidentity.CreateKeysAndCertificateRequest(), QOS1).result(WAIT)
    created = accepted.get(timeout=WAIT)
    assert rejected.empty()
    return created


def test_create_keys_and_certificate_then_register_thing(fleet_gateway, tmp_path):
    gateway = fleet_gateway
    cert, key = gateway.device("claim")
    claim = sdk_connect(gateway, "claim", cert, key)
    identity = iotidentity.IotIdentityClient(claim)
    created = create_keys(identity)
    assert len(created.certificate_id) == 64 and created.private_key

    registered = register(identity, created.certificate_ownership_token, "1")
    assert registered.thing_name == "sdk-lamp-1"
    assert registered.device_configuration == {"site": "north"}
    claim.disconnect().result(WAIT)

    (tmp_path / "new.pem").write_text(created.certificate_pem)
    (tmp_path / "new.key").write_text(created.private_key)
    device = sdk_connect(gateway, "sdk-lamp-1", str(tmp_path / "new.pem"), str(tmp_path / "new.key"))
    device.disconnect().result(WAIT)


def test_create_certificate_from_csr_then_register_thing(fleet_gateway, tmp_path):
    gateway = fleet_gateway
    key_file, csr_file = tmp_path / "own.key", tmp_path / "own.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key_file), "-out", str(csr_file), "-subj", "/CN=sdk-lamp-2"],
                   check=True, capture_output=True, timeout=60)
    cert, key = gateway.device("claim-csr")
    claim = sdk_connect(gateway, "claim-csr", cert, key)
    identity = iotidentity.IotIdentityClient(claim)
    accepted, rejected = sdk_subscribed(
        (identity.subscribe_to_create_certificate_from_csr_accepted,
         identity.subscribe_to_create_certificate_from_csr_rejected),
        iotidentity.CreateCertificateFromCsrSubscriptionRequest(), QOS1)
    identity.publish_create_certificate_from_csr(iotidentity.CreateCertificateFromCsrRequest(
        certificate_signing_request=csr_file.read_text()), QOS1).result(WAIT)
    created = accepted.get(timeout=WAIT)
    assert rejected.empty()

    registered = register(identity, created.certificate_ownership_token, "2")
    assert registered.thing_name == "sdk-lamp-2"
    claim.disconnect().result(WAIT)

    (tmp_path / "own.pem").write_text(created.certificate_pem)
    device = sdk_connect(gateway, "sdk-lamp-2", str(tmp_path / "own.pem"), str(key_file))
    device.disconnect().result(WAIT)


class Hook(BaseHTTPRequestHandler):
    """A pre-provisioning hook: refuses serial number `refuse`, allows the
    rest with a serial number of its own."""
    asked = []

    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Hook.asked.append(doc)
        serial = doc["parameters"].get("SerialNumber", "")
        if serial == "refuse":
            answer = {"allowProvisioning": False}
        else:
            answer = {"allowProvisioning": True, "parameterOverrides": {"SerialNumber": serial + "-ok"}}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_boto3_makes_a_template_with_a_hook_and_the_sdk_provisions_under_it(gateway):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_port}/check"
    try:
        iot = operator_client(gateway, "iot")
        made = iot.create_provisioning_template(
            templateName="HookedFleet", templateBody=json.dumps(TEMPLATE), enabled=True,
            provisioningRoleArn="arn:aws:iam::000000000000:role/Provisioning",
            preProvisioningHook={"targetArn": hook_url, "payloadVersion": "2020-04-01"})
        assert made["templateArn"].endswith(":provisioningtemplate/HookedFleet")
        assert made["defaultVersionId"] == 1
        described = iot.describe_provisioning_template(templateName="HookedFleet")
        assert described["preProvisioningHook"]["targetArn"] == hook_url
        assert described["enabled"] and json.loads(described["templateBody"]) == TEMPLATE
        listed = iot.list_provisioning_templates()["templates"]
        assert [t["templateName"] for t in listed] == ["HookedFleet"]

        cert, key = gateway.device("claim-hooked")
        claim = sdk_connect(gateway, "claim-hooked", cert, key)
        identity = iotidentity.IotIdentityClient(claim)
        registered = register(identity, create_keys(identity).certificate_ownership_token,
                              "3", "HookedFleet")
        assert registered.thing_name == "sdk-lamp-3-ok"
        (asked,) = Hook.asked
        assert asked["clientId"] == "claim-hooked" and asked["parameters"] == {"SerialNumber": "3"}
        assert asked["templateArn"] == made["templateArn"]

        accepted, rejected = ask_register(
            identity, create_keys(identity).certificate_ownership_token, "refuse", "HookedFleet")
        refused = rejected.get(timeout=WAIT)
        assert accepted.empty()
        assert (refused.status_code, refused.error_code) == (403, "AccessDenied")
        claim.disconnect().result(WAIT)

        iot.update_provisioning_template(templateName="HookedFleet", removePreProvisioningHook=True)
        assert "preProvisioningHook" not in iot.describe_provisioning_template(templateName="HookedFleet")
        iot.delete_provisioning_template(templateName="HookedFleet")
        with pytest.raises(iot.exceptions.ResourceNotFoundException):
            iot.describe_provisioning_template(templateName="HookedFleet")
    finally:
        server.shutdown()
