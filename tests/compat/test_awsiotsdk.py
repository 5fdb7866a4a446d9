"""The AWS IoT Device SDK v2 for Python, connecting exactly as it would to AWS IoT Core."""
import queue
import subprocess
import sys

from awscrt import mqtt
from awsiot import mqtt_connection_builder

WAIT = 10


def connection(gateway, name, **kw):
    cert, key = gateway.device(name)
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost",
        port=gateway.port,
        cert_filepath=cert,
        pri_key_filepath=key,
        ca_filepath=gateway.ca,
        client_id=name,
        clean_session=True,
        keep_alive_secs=30,
        **kw,
    )
    conn.connect().result(WAIT)
    return conn


def subscriber(gateway, name, topic, qos):
    conn = connection(gateway, name)
    messages = queue.Queue()
    future, _ = conn.subscribe(
        topic=topic, qos=qos,
        callback=lambda topic, payload, dup, qos, retain, **kw: messages.put((topic, payload, qos, retain)),
    )
    result = future.result(WAIT)
    assert result["qos"] is not None
    return conn, messages


def test_publish_and_subscribe_at_qos_0_and_1(gateway):
    sub, messages = subscriber(gateway, "sdk-sub", "sdk/+/data", mqtt.QoS.AT_LEAST_ONCE)
    pub = connection(gateway, "sdk-pub")
    for qos in (mqtt.QoS.AT_MOST_ONCE, mqtt.QoS.AT_LEAST_ONCE):
        future, _ = pub.publish(topic=f"sdk/q{qos.value}/data", payload=f"hi {qos.value}", qos=qos)
        future.result(WAIT)
        topic, payload, got_qos, retain = messages.get(timeout=WAIT)
        assert topic == f"sdk/q{qos.value}/data"
        assert payload == f"hi {qos.value}".encode()
        assert got_qos == qos
        assert not retain
    for c in (sub, pub):
        c.disconnect().result(WAIT)


def test_retained_message(gateway):
    pub = connection(gateway, "sdk-rpub")
    future, _ = pub.publish(topic="sdk/retained", payload="kept", qos=mqtt.QoS.AT_LEAST_ONCE, retain=True)
    future.result(WAIT)
    sub, messages = subscriber(gateway, "sdk-rsub", "sdk/retained", mqtt.QoS.AT_LEAST_ONCE)
    topic, payload, _, retain = messages.get(timeout=WAIT)
    assert (topic, payload, retain) == ("sdk/retained", b"kept", True)
    for c in (sub, pub):
        c.disconnect().result(WAIT)


WILL_CLIENT = """
import sys, time
from awscrt import mqtt
from awsiot import mqtt_connection_builder
ca, cert, key, port, name = sys.argv[1:6]
conn = mqtt_connection_builder.mtls_from_path(
    endpoint="localhost", port=int(port), cert_filepath=cert, pri_key_filepath=key,
    ca_filepath=ca, client_id=name, clean_session=True, keep_alive_secs=30,
    will=mqtt.Will(topic="sdk/wills/" + name, qos=mqtt.QoS.AT_LEAST_ONCE, payload=b"offline", retain=False),
)
conn.connect().result(10)
print("connected", flush=True)
time.sleep(60)
"""


def test_will_after_abrupt_disconnect(gateway):
    watcher, messages = subscriber(gateway, "sdk-watch", "sdk/wills/#", mqtt.QoS.AT_LEAST_ONCE)
    name = "sdk-will"
    cert, key = gateway.device(name)
    proc = subprocess.Popen(
        [sys.executable, "-c", WILL_CLIENT, gateway.ca, cert, key, str(gateway.port), name],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "connected"
    finally:
        proc.kill()
        proc.wait()
    topic, payload, _, _ = messages.get(timeout=WAIT)
    assert (topic, payload) == (f"sdk/wills/{name}", b"offline")
    watcher.disconnect().result(WAIT)
