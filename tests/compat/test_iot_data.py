"""boto3's `iot-data` client (the data-plane HTTPS API) against the gateway's admin listener."""
import base64
import json
import queue
import time

import boto3
import botocore.config
import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest

from conftest import ADMIN_SECRET, operator_client

WAIT = 10


def iot_data(gateway, secret=ADMIN_SECRET):
    return operator_client(gateway, "iot-data", secret)


def body(response):
    return json.loads(response["payload"].read())


def update(client, thing, document, **kw):
    return body(client.update_thing_shadow(thingName=thing, payload=json.dumps(document).encode(), **kw))


def error(raised):
    return raised.value.response["Error"]["Message"]


def pages(operation, limit, **kw):
    """Follows nextToken through at most `limit` pages."""
    token = None
    for _ in range(limit):
        page = operation(**kw, **({"nextToken": token} if token else {}))
        yield page
        token = page.get("nextToken")
        if not token:
            return
    pytest.fail("pagination did not end")


def subscriber(gateway, name, *topics):
    """An MQTT 5 device subscribed to `topics` at QoS 1, and the queue of what it receives."""
    cert, key = gateway.device(name)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=gateway.ca, certfile=cert, keyfile=key)
    acks, messages = queue.Queue(), queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p=None: acks.put(rc)
    c.on_subscribe = lambda _c, _u, _mid, codes, _p=None: acks.put(codes)
    c.on_message = lambda _c, _u, msg: messages.put(msg)
    c.connect("localhost", gateway.port, keepalive=30)
    c.loop_start()
    rc = acks.get(timeout=WAIT)
    assert not rc.is_failure, rc
    c.subscribe([(t, 1) for t in topics])
    codes = acks.get(timeout=WAIT)
    assert [code.value for code in codes] == [1] * len(topics), codes
    return c, messages


def stop(device):
    device.disconnect()
    device.loop_stop()


def test_classic_shadow_over_http(gateway):
    client = iot_data(gateway)
    thing = "rest-1"
    state = {"desired": {"color": "red"}, "reported": {"color": "green"}}
    accepted = update(client, thing, {"state": state})
    assert accepted["version"] == 1
    assert accepted["state"] == state
    assert isinstance(accepted["metadata"]["desired"]["color"]["timestamp"], int)

    doc = body(client.get_thing_shadow(thingName=thing))
    assert doc["state"] == {**state, "delta": {"color": "red"}}
    assert doc["version"] == 1
    for section in ("desired", "reported"):
        # Epoch seconds, as AWS sends them (the device SDK breaks on milliseconds).
        assert abs(doc["metadata"][section]["color"]["timestamp"] - time.time()) < 600
    assert abs(doc["timestamp"] - time.time()) < 600

    # Optimistic locking: the version the writer last saw.
    assert update(client, thing, {"state": {"reported": {"color": "red"}}, "version": 1})["version"] == 2
    with pytest.raises(client.exceptions.ConflictException) as conflict:
        update(client, thing, {"state": {"reported": {"color": "blue"}}, "version": 1})
    assert error(conflict) == "Version conflict"
    doc = body(client.get_thing_shadow(thingName=thing))
    assert (doc["version"], doc["state"]) == (2, {"desired": {"color": "red"}, "reported": {"color": "red"}})

    deleted = body(client.delete_thing_shadow(thingName=thing))
    assert set(deleted) == {"version", "timestamp"}
    assert deleted["version"] == 2
    with pytest.raises(client.exceptions.ResourceNotFoundException) as missing:
        client.get_thing_shadow(thingName=thing)
    assert error(missing) == f"No shadow exists with name: '{thing}'"


def test_named_shadows_and_their_listing(gateway):
    client = iot_data(gateway)
    thing = "rest-2"
    update(client, thing, {"state": {"reported": {"on": True}}})
    for i, name in enumerate(["cfg", "net", "ota"]):
        accepted = update(client, thing, {"state": {"desired": {"n": i}}}, shadowName=name)
        assert accepted["version"] == 1
    assert body(client.get_thing_shadow(thingName=thing, shadowName="net"))["state"]["desired"] == {"n": 1}
    assert body(client.get_thing_shadow(thingName=thing))["state"] == {"reported": {"on": True}}

    names = []
    for page in pages(client.list_named_shadows_for_thing, 4, thingName=thing, pageSize=1):
        assert len(page["results"]) <= 1
        assert abs(page["timestamp"] - time.time()) < 600
        names += page["results"]
    # The classic shadow is never listed.
    assert sorted(names) == ["cfg", "net", "ota"]
    assert client.list_named_shadows_for_thing(thingName="rest-unknown")["results"] == []

    assert body(client.delete_thing_shadow(thingName=thing, shadowName="cfg"))["version"] == 1
    with pytest.raises(client.exceptions.ResourceNotFoundException) as missing:
        client.get_thing_shadow(thingName=thing, shadowName="cfg")
    assert error(missing) == "No shadow exists with name: 'cfg'"
    assert sorted(client.list_named_shadows_for_thing(thingName=thing)["results"]) == ["net", "ota"]


def test_shadow_request_errors(gateway):
    client = iot_data(gateway)
    with pytest.raises(client.exceptions.InvalidRequestException) as invalid:
        client.update_thing_shadow(thingName="rest-3", payload=b'{"state": {"desired": ')
    assert error(invalid).startswith("Invalid JSON")
    with pytest.raises(client.exceptions.RequestEntityTooLargeException) as large:
        update(client, "rest-3", {"state": {"reported": {"blob": "x" * 9000}}})
    assert error(large) == "The payload exceeds the maximum size allowed"
    # Neither created the shadow.
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_thing_shadow(thingName="rest-3")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_thing_shadow(thingName="rest-3", shadowName="never")


def test_http_shadow_updates_reach_mqtt_devices(gateway):
    prefix = "$aws/things/rest-4/shadow/update"
    device, messages = subscriber(gateway, "rest-4", f"{prefix}/accepted", f"{prefix}/delta")
    update(iot_data(gateway), "rest-4", {"state": {"desired": {"fan": "on"}}})
    # AWS does not order /accepted and /delta.
    got = {m.topic: json.loads(m.payload) for m in (messages.get(timeout=WAIT), messages.get(timeout=WAIT))}
    assert set(got) == {f"{prefix}/accepted", f"{prefix}/delta"}
    assert got[f"{prefix}/accepted"]["version"] == 1
    assert got[f"{prefix}/accepted"]["state"] == {"desired": {"fan": "on"}}
    assert got[f"{prefix}/delta"]["version"] == 1
    assert got[f"{prefix}/delta"]["state"] == {"fan": "on"}
    stop(device)


def test_publish_carries_mqtt5_properties(gateway):
    device, messages = subscriber(gateway, "rest-sub", "things/x/#")
    iot_data(gateway).publish(
        topic="things/x/data", qos=1, retain=True, payload=b'{"t": 21}',
        contentType="application/json", responseTopic="resp/topic",
        # A plain header in botocore's model: the caller base64-encodes it.
        correlationData=base64.b64encode(b"corr-1").decode(),
        # A JSON string, as AWS documents; botocore JSON-encodes it once more.
        userProperties='[{"a":"1"},{"b":"2"}]',
        messageExpiry=60, payloadFormatIndicator="UTF8_DATA",
    )
    msg = messages.get(timeout=WAIT)
    assert (msg.topic, msg.payload, msg.qos) == ("things/x/data", b'{"t": 21}', 1)
    props = {name: getattr(msg.properties, name, None) for name in
             ("ContentType", "ResponseTopic", "CorrelationData", "UserProperty", "PayloadFormatIndicator")}
    assert props == {
        "ContentType": "application/json",
        "ResponseTopic": "resp/topic",
        "CorrelationData": b"corr-1",
        "UserProperty": [("a", "1"), ("b", "2")],
        "PayloadFormatIndicator": 1,
    }
    assert 0 < getattr(msg.properties, "MessageExpiryInterval", 0) <= 60
    stop(device)


def test_publish_to_a_shadow_topic_updates_the_shadow(gateway):
    device, messages = subscriber(gateway, "rest-5", "$aws/things/t1/shadow/update/accepted")
    client = iot_data(gateway)
    client.publish(topic="$aws/things/t1/shadow/update", qos=1,
                   payload=json.dumps({"state": {"reported": {"x": 1}}}).encode())
    assert json.loads(messages.get(timeout=WAIT).payload)["version"] == 1
    doc = body(client.get_thing_shadow(thingName="t1"))
    assert (doc["version"], doc["state"]) == (1, {"reported": {"x": 1}})
    stop(device)


def test_retained_messages(gateway):
    # Each publish is awaited on a subscriber before the retained store is read.
    device, messages = subscriber(gateway, "rest-6", "keep/#")
    client = iot_data(gateway)
    client.publish(topic="keep/a", qos=1, retain=True, payload=b"alpha")
    client.publish(topic="keep/b", qos=0, retain=True, payload=b"bravo!")
    assert sorted(messages.get(timeout=WAIT).topic for _ in range(2)) == ["keep/a", "keep/b"]

    entries = []
    for page in pages(client.list_retained_messages, 3, maxResults=1):
        assert len(page["retainedTopics"]) <= 1
        entries += page["retainedTopics"]
    by_topic = {e["topic"]: e for e in entries}
    assert sorted(by_topic) == ["keep/a", "keep/b"]
    assert (by_topic["keep/a"]["payloadSize"], by_topic["keep/a"]["qos"]) == (5, 1)
    assert (by_topic["keep/b"]["payloadSize"], by_topic["keep/b"]["qos"]) == (6, 0)
    for e in entries:
        assert abs(e["lastModifiedTime"] / 1000 - time.time()) < 600  # milliseconds

    kept = client.get_retained_message(topic="keep/a")
    assert (kept["topic"], kept["payload"], kept["qos"]) == ("keep/a", b"alpha", 1)
    assert abs(kept["lastModifiedTime"] / 1000 - time.time()) < 600
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic="keep/none")

    # An empty retained publish clears the topic (and is delivered like any message).
    client.publish(topic="keep/a", qos=1, retain=True, payload=b"")
    cleared = messages.get(timeout=WAIT)
    assert (cleared.topic, cleared.payload) == ("keep/a", b"")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic="keep/a")
    assert [e["topic"] for e in client.list_retained_messages()["retainedTopics"]] == ["keep/b"]
    stop(device)


def test_wrong_secret_is_refused(gateway):
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot_data(gateway, secret="wrong").get_thing_shadow(thingName="rest-1")
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"


def device_client(gateway, name):
    """boto3 as a device on AWS IoT's port 8443: the client certificate is the
    principal; the signature boto3 adds anyway is not what admits it."""
    cert, key = gateway.device(name)
    return boto3.client(
        "iot-data",
        endpoint_url=f"https://localhost:{gateway.https.split(':')[1]}",
        region_name="us-east-1",
        aws_access_key_id="not-a-key",
        aws_secret_access_key="not-a-secret",
        verify=gateway.ca,
        config=botocore.config.Config(client_cert=(cert, key)),
    )


def test_a_device_calls_the_https_endpoint_with_its_certificate(gateway):
    device = device_client(gateway, "boto-device")
    watcher, messages = subscriber(gateway, "boto-watch", "devices/#")
    accepted = update(device, "boto-device", {"state": {"reported": {"fw": "1.2"}}})
    assert accepted["version"] == 1
    got = body(device.get_thing_shadow(thingName="boto-device"))
    assert got["state"]["reported"] == {"fw": "1.2"}
    device.publish(topic="devices/boto-device/up", qos=1, payload=b"hello")
    msg = messages.get(timeout=WAIT)
    assert (msg.topic, msg.payload) == ("devices/boto-device/up", b"hello")
    stop(watcher)


def test_the_default_device_policy_over_https(default_gateway):
    device = device_client(default_gateway, "device-7")
    assert update(device, "device-7", {"state": {"reported": {"on": True}}})["version"] == 1
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        device.get_thing_shadow(thingName="device-1")
    assert refused.value.response["Error"]["Code"] == "ForbiddenException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
