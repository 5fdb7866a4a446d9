"""boto3's `iot` client against the gateway's control plane, with --endpoint-url style configuration."""
import hashlib
import json
import os
import queue
import ssl
import subprocess

import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest

from conftest import ADMIN_KEY, ADMIN_SECRET, BIN, ROOT, operator_client, published

WAIT = 10


def iot(gateway, secret=ADMIN_SECRET):
    return operator_client(gateway, "iot", secret)


def certificate_id(pem_file):
    """AWS's certificate id: SHA-256 of the DER encoding."""
    with open(pem_file) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def connected_device(gateway, name, cert=None, key=None):
    """An MQTT 5 device connected with its certificate (one the gateway's
    CLI issues for `name` unless given); the queue gets its (dis)connects."""
    if cert is None:
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
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.create_thing(thingName="pump-7", thingTypeName="pump")
    client.create_thing_type(thingTypeName="pump")
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


ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}'
ALLOW_CONNECT = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}'


def everything(client, operation, key, **kw):
    """Every item of a listing, through boto3's own paginator, 2 per page."""
    items = []
    for page in client.get_paginator(operation).paginate(PaginationConfig={"PageSize": 2}, **kw):
        items.extend(page[key])
    return items


def test_registry_operations(gateway):
    client = iot(gateway)
    client.create_thing_type(thingTypeName="sensor",
                             thingTypeProperties={"thingTypeDescription": "a sensor",
                                                  "searchableAttributes": ["site"]})
    assert client.describe_thing_type(thingTypeName="sensor")["thingTypeProperties"]["thingTypeDescription"] == "a sensor"
    assert [t["thingTypeName"] for t in client.list_thing_types()["thingTypes"]] == ["sensor"]
    made = client.create_thing(thingName="s-1", thingTypeName="sensor",
                               attributePayload={"attributes": {"site": "lab"}})
    again = client.create_thing(thingName="s-1", thingTypeName="sensor",
                                attributePayload={"attributes": {"site": "lab"}})
    assert again["thingId"] == made["thingId"]
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
        client.create_thing(thingName="s-1")
    for i in range(2, 6):
        client.create_thing(thingName=f"s-{i}", attributePayload={"attributes": {"site": "hall"}})
    names = [t["thingName"] for t in everything(client, "list_things", "things")]
    assert sorted(names) == ["device-1"] + [f"s-{i}" for i in range(1, 6)]
    hall = client.list_things(attributeName="site", attributeValue="hall")["things"]
    assert len(hall) == 4
    client.update_thing(thingName="s-1", expectedVersion=1,
                        attributePayload={"attributes": {"floor": "3"}, "merge": True})
    thing = client.describe_thing(thingName="s-1")
    assert thing["attributes"] == {"site": "lab", "floor": "3"} and thing["version"] == 2
    with pytest.raises(client.exceptions.VersionConflictException):
        client.update_thing(thingName="s-1", expectedVersion=1, removeThingType=True)
    client.deprecate_thing_type(thingTypeName="sensor")
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.create_thing(thingName="s-9", thingTypeName="sensor")
    client.deprecate_thing_type(thingTypeName="sensor", undoDeprecate=True)
    client.create_thing_type(thingTypeName="retired")
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.delete_thing_type(thingTypeName="retired")
    client.deprecate_thing_type(thingTypeName="retired")
    client.delete_thing_type(thingTypeName="retired")
    assert [t["thingTypeName"] for t in client.list_thing_types()["thingTypes"]] == ["sensor"]

    keys = client.create_keys_and_certificate(setAsActive=True)
    assert keys["keyPair"]["PrivateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    arn = keys["certificateArn"]
    client.attach_thing_principal(thingName="s-1", principal=arn, thingPrincipalType="EXCLUSIVE_THING")
    assert client.list_thing_principals(thingName="s-1")["principals"] == [arn]
    assert client.list_thing_principals_v2(thingName="s-1")["thingPrincipalObjects"] == [
        {"principal": arn, "thingPrincipalType": "EXCLUSIVE_THING"}]
    assert client.list_principal_things(principal=arn)["things"] == ["s-1"]
    assert client.list_principal_things_v2(principal=arn)["principalThingObjects"][0]["thingName"] == "s-1"
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.delete_thing(thingName="s-1")
    client.detach_thing_principal(thingName="s-1", principal=arn)
    client.delete_thing(thingName="s-1")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_thing(thingName="s-1")

    cert_id = keys["certificateId"]
    described = client.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert described["status"] == "ACTIVE" and described["validity"]["notAfter"].year == 2049
    with pytest.raises(client.exceptions.CertificateStateException):
        client.delete_certificate(certificateId=cert_id)
    client.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    with pytest.raises(client.exceptions.CertificateStateException):
        client.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    ca_id = certificate_id(gateway.ca)
    by_ca = [c["certificateId"] for c in everything(client, "list_certificates_by_ca", "certificates",
                                                      caCertificateId=ca_id)]
    assert cert_id in by_ca
    client.delete_certificate(certificateId=cert_id)
    assert cert_id not in [c["certificateId"] for c in everything(client, "list_certificates", "certificates")]

    code = client.get_registration_code()["registrationCode"]
    assert len(code) == 64 and code == client.get_registration_code()["registrationCode"]
    endpoint = client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert endpoint == f"localhost:{gateway.port}"


def test_policy_operations(gateway):
    client = iot(gateway)
    with pytest.raises(client.exceptions.MalformedPolicyException):
        client.create_policy(policyName="p1", policyDocument='{"Statement": [{"Effect": "Perhaps"}]}')
    made = client.create_policy(policyName="p1", policyDocument=ALLOW_CONNECT)
    assert made["policyVersionId"] == "1"
    assert (gateway.dir / "policies" / "p1.json").read_text() == ALLOW_CONNECT
    v2 = client.create_policy_version(policyName="p1", policyDocument=ALLOW_ALL, setAsDefault=True)
    assert v2["policyVersionId"] == "2" and v2["isDefaultVersion"]
    assert client.get_policy(policyName="p1")["defaultVersionId"] == "2"
    assert (gateway.dir / "policies" / "p1.json").read_text() == ALLOW_ALL
    assert client.get_policy_version(policyName="p1", policyVersionId="1")["policyDocument"] == ALLOW_CONNECT
    client.set_default_policy_version(policyName="p1", policyVersionId="1")
    versions = client.list_policy_versions(policyName="p1")["policyVersions"]
    assert {v["versionId"]: v["isDefaultVersion"] for v in versions} == {"1": True, "2": False}
    for _ in range(3):
        client.create_policy_version(policyName="p1", policyDocument=ALLOW_ALL)
    with pytest.raises(client.exceptions.VersionsLimitExceededException):
        client.create_policy_version(policyName="p1", policyDocument=ALLOW_ALL)
    names = [p["policyName"] for p in everything(client, "list_policies", "policies")]
    assert "p1" in names and "open" in names

    cert_id = certificate_id(gateway.device("pol-dev")[0])
    arn = client.register_certificate(certificatePem=open(gateway.device("pol-dev")[0]).read(),
                                      setAsActive=True)["certificateArn"]
    assert arn.endswith(cert_id)
    client.attach_policy(policyName="p1", target=arn)
    assert [p["policyName"] for p in client.list_attached_policies(target=arn)["policies"]] == ["p1"]
    assert client.list_targets_for_policy(policyName="p1")["targets"] == [arn]
    assert client.get_effective_policies(principal=arn)["effectivePolicies"][0]["policyName"] == "p1"
    tested = client.test_authorization(principal=arn, clientId="pol-dev", authInfos=[
        {"actionType": "CONNECT", "resources": ["arn:aws:iot:us-east-1:000000000000:client/pol-dev"]},
        {"actionType": "PUBLISH", "resources": ["arn:aws:iot:us-east-1:000000000000:topic/a"]},
    ])["authResults"]
    assert [r["authDecision"] for r in tested] == ["ALLOWED", "IMPLICIT_DENY"]
    with pytest.raises(client.exceptions.DeleteConflictException):
        client.delete_policy(policyName="p1")
    client.detach_policy(policyName="p1", target=arn)
    # The deprecated principal-policy calls old scripts still make.
    client.attach_principal_policy(policyName="p1", principal=arn)
    assert [p["policyName"] for p in client.list_principal_policies(principal=arn)["policies"]] == ["p1"]
    client.detach_principal_policy(policyName="p1", principal=arn)
    assert client.list_principal_policies(principal=arn)["policies"] == []
    for v in ("2", "3", "4", "5"):
        client.delete_policy_version(policyName="p1", policyVersionId=v)
    client.delete_policy(policyName="p1")
    assert not (gateway.dir / "policies" / "p1.json").exists()


def test_the_aws_cli_issues_attaches_and_revokes(gateway):
    aws = str(ROOT / "tests/compat/.venv/bin/aws")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ADMIN_KEY, "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1"}

    def cli(*args):
        done = subprocess.run([aws, "iot", *args, "--endpoint-url", f"http://{gateway.admin}", "--output", "json"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    made = cli("create-keys-and-certificate", "--set-as-active")
    cli("attach-policy", "--policy-name", "open", "--target", made["certificateArn"])
    cert = gateway.dir / "cli.pem"
    key = gateway.dir / "cli.key"
    cert.write_text(made["certificatePem"])
    key.write_text(made["keyPair"]["PrivateKey"])
    device, events = connected_device(gateway, "cli-dev", str(cert), str(key))
    cli("update-certificate", "--certificate-id", made["certificateId"], "--new-status", "REVOKED")
    kind, rc = events.get(timeout=WAIT)
    assert kind == "disconnect"
    device.loop_stop()
    listed = {c["certificateId"]: c["status"] for c in cli("list-certificates")["certificates"]}
    assert listed[made["certificateId"]] == "REVOKED"


def test_the_edgegate_cli_uses_the_admin_socket_on_a_default_configuration(default_gateway):
    gateway = default_gateway

    def edgegate(*args):
        return subprocess.run([str(BIN), *args, "--config", str(gateway.dir / "config.toml")],
                              capture_output=True, text=True, timeout=60)

    listed = edgegate("cert", "list")
    assert listed.returncode == 0, listed.stderr
    assert "cn=device-1\tthings=device-1" in listed.stdout
    device_id = certificate_id(gateway.certs / "device-1.pem")
    done = edgegate("cert", "revoke", str(gateway.certs / "device-1.pem"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked certificate {device_id}"
    done = edgegate("cert", "activate", device_id)
    assert done.returncode == 1 and "CertificateStateException" in done.stderr
    rule = gateway.dir / "rule.json"
    rule.write_text(json.dumps({"sql": "SELECT * FROM 'cli/in'",
                                "actions": [{"republish": {"topic": "cli/out"}}]}))
    done = edgegate("rule", "create", "from_cli", "--payload", str(rule))
    assert done.returncode == 0 and done.stdout.strip() == "created rule from_cli", done.stderr
    listed = edgegate("rule", "list")
    assert listed.stdout.strip() == "from_cli\tapi\tenabled\tcli/in", listed.stdout
    audit = (gateway.dir / "data" / "audit.jsonl").read_text().splitlines()
    assert any('"UpdateCertificate"' in l and '"principal":"local"' in l and '"status":200' in l
               for l in audit)


def test_topic_rules(gateway):
    client = iot(gateway)
    payload = {
        "sql": "SELECT temp FROM 'boto/+/temp' WHERE temp > 50",
        "actions": [{"republish": {"topic": "boto/alerts", "qos": 1,
                                   "roleArn": "arn:aws:iam::000000000000:role/unused"}}],
        "ruleDisabled": False,
        "awsIotSqlVersion": "2016-03-23",
    }
    client.create_topic_rule(ruleName="boto_hot", topicRulePayload=payload)
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
        client.create_topic_rule(ruleName="boto_hot", topicRulePayload=payload)
    with pytest.raises(client.exceptions.SqlParseException):
        client.create_topic_rule(ruleName="boto_bad", topicRulePayload={**payload, "sql": "SELEKT"})
    rule = client.get_topic_rule(ruleName="boto_hot")["rule"]
    assert rule["sql"] == payload["sql"] and rule["actions"] == payload["actions"]
    listed = everything(client, "list_topic_rules", "rules")
    assert [(r["ruleName"], r["topicPattern"]) for r in listed] == [("boto_hot", "boto/+/temp")]

    cert, key = gateway.device("boto-watch")
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="boto-watch", protocol=mqtt.MQTTv5)
    watcher.tls_set(ca_certs=gateway.ca, certfile=cert, keyfile=key)
    got = queue.Queue()
    watcher.on_message = lambda _c, _u, m: got.put(json.loads(m.payload))
    watcher.on_subscribe = lambda *_a: got.put("subscribed")
    watcher.connect("localhost", gateway.port, keepalive=30)
    watcher.loop_start()
    watcher.subscribe("boto/alerts", qos=1)
    assert got.get(timeout=WAIT) == "subscribed"
    publisher, _ = connected_device(gateway, "boto-sensor")
    published(publisher.publish("boto/s1/temp", json.dumps({"temp": 72}), qos=1), WAIT)
    assert got.get(timeout=WAIT) == {"temp": 72}

    client.replace_topic_rule(ruleName="boto_hot",
                              topicRulePayload={**payload, "sql": "SELECT temp, 'replaced' AS how FROM 'boto/+/temp'"})
    published(publisher.publish("boto/s1/temp", json.dumps({"temp": 1}), qos=1), WAIT)
    assert got.get(timeout=WAIT) == {"temp": 1, "how": "replaced"}
    client.disable_topic_rule(ruleName="boto_hot")
    assert client.get_topic_rule(ruleName="boto_hot")["rule"]["ruleDisabled"] is True
    client.enable_topic_rule(ruleName="boto_hot")
    client.delete_topic_rule(ruleName="boto_hot")
    with pytest.raises(client.exceptions.UnauthorizedException):
        client.get_topic_rule(ruleName="boto_hot")
    publisher.loop_stop()
    watcher.loop_stop()


def test_ca_registration_with_certificates_the_edgegate_cli_makes(gateway, tmp_path):
    client = iot(gateway)
    fleet = tmp_path / "fleet"

    def edgegate(*args):
        subprocess.run([str(BIN), "cert", *args], check=True, capture_output=True, timeout=60)

    code = client.get_registration_code()["registrationCode"]
    edgegate("ca", "--out", str(fleet))
    edgegate("issue", "--cn", code, "--ca-dir", str(fleet), "--out", str(fleet))
    edgegate("issue", "--cn", "fleet-1", "--ca-dir", str(fleet), "--out", str(fleet))
    with pytest.raises(client.exceptions.RegistrationCodeValidationException):
        client.register_ca_certificate(caCertificate=(fleet / "ca.pem").read_text(),
                                       verificationCertificate=(fleet / "fleet-1.pem").read_text())
    made = client.register_ca_certificate(caCertificate=(fleet / "ca.pem").read_text(),
                                          verificationCertificate=(fleet / f"{code}.pem").read_text(),
                                          setAsActive=True, allowAutoRegistration=False)
    ca_id = made["certificateId"]
    assert ca_id == certificate_id(fleet / "ca.pem")
    described = client.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert described["status"] == "ACTIVE" and described["autoRegistrationStatus"] == "DISABLE"
    registered = client.register_certificate(certificatePem=(fleet / "fleet-1.pem").read_text(),
                                             status="ACTIVE")
    client.attach_policy(policyName="open", target=registered["certificateArn"])
    by_ca = client.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]
    assert [c["certificateId"] for c in by_ca] == [registered["certificateId"]]

    # A device of a CA registered through the API connects.
    device, _ = connected_device(gateway, "fleet-1", str(fleet / "fleet-1.pem"), str(fleet / "fleet-1.key"))
    device.loop_stop()
    device.disconnect()

    client.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    with pytest.raises(client.exceptions.CertificateStateException):
        client.update_certificate(certificateId=registered["certificateId"], newStatus="PENDING_ACTIVATION")
    client.delete_ca_certificate(certificateId=ca_id)
    assert ca_id not in [c["certificateId"] for c in client.list_ca_certificates()["certificates"]]
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
        client.register_certificate_without_ca(certificatePem=(fleet / "fleet-1.pem").read_text())


def test_event_configurations(gateway):
    client = iot(gateway)
    described = client.describe_event_configurations()
    assert len(described["eventConfigurations"]) == 11
    assert described["eventConfigurations"]["THING"] == {"Enabled": False}
    client.update_event_configurations(eventConfigurations={"THING": {"Enabled": True}})
    described = client.describe_event_configurations()
    assert described["eventConfigurations"]["THING"] == {"Enabled": True}
    assert described["eventConfigurations"]["THING_TYPE"] == {"Enabled": False}
    assert described["lastModifiedDate"] >= described["creationDate"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.update_event_configurations(eventConfigurations={"THINGS": {"Enabled": True}})
    assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
