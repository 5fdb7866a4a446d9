"""paho-mqtt (3.1.1 and 5) against the gateway with client certificates."""
import os
import queue
import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest

from conftest import published

WAIT = 10

PROTOCOLS = [mqtt.MQTTv311, mqtt.MQTTv5]


def client(gateway, name, protocol, **kw):
    cert, key = gateway.device(name)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol, **kw)
    c.tls_set(ca_certs=gateway.ca, certfile=cert, keyfile=key)
    c.messages = queue.Queue()
    c.on_message = lambda _c, _u, msg: c.messages.put(msg)
    return c


def connect(c, gateway):
    connected = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p=None: connected.put(rc)
    c.connect("localhost", gateway.port, keepalive=30)
    c.loop_start()
    rc = connected.get(timeout=WAIT)
    assert not rc.is_failure, rc
    return c


def subscribe(c, topic, qos):
    done = queue.Queue()
    c.on_subscribe = lambda _c, _u, _mid, codes, _p=None: done.put(codes)
    c.subscribe(topic, qos)
    codes = done.get(timeout=WAIT)
    assert not codes[0].is_failure, codes


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v311", "v5"])
def test_publish_and_subscribe_at_qos_0_and_1(gateway, protocol):
    sub = connect(client(gateway, f"paho-sub-{protocol}", protocol), gateway)
    subscribe(sub, "paho/+/data", 1)
    pub = connect(client(gateway, f"paho-pub-{protocol}", protocol), gateway)
    for qos in (0, 1):
        published(pub.publish(f"paho/q{qos}/data", f"hello {qos}", qos=qos), WAIT)
        msg = sub.messages.get(timeout=WAIT)
        assert msg.topic == f"paho/q{qos}/data"
        assert msg.payload == f"hello {qos}".encode()
        assert msg.qos == qos
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v311", "v5"])
def test_retained_message(gateway, protocol):
    pub = connect(client(gateway, f"paho-rpub-{protocol}", protocol), gateway)
    published(pub.publish("paho/retained", "kept", qos=1, retain=True), WAIT)
    sub = connect(client(gateway, f"paho-rsub-{protocol}", protocol), gateway)
    subscribe(sub, "paho/retained", 1)
    msg = sub.messages.get(timeout=WAIT)
    assert msg.payload == b"kept"
    assert msg.retain
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


WILL_CLIENT = """
import queue, sys, time
import paho.mqtt.client as mqtt
ca, cert, key, port, name, proto = sys.argv[1:7]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=int(proto))
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
c.will_set("paho/wills/" + name, "offline", qos=1)
acked = queue.Queue()
c.on_connect = lambda *args: acked.put(True)
c.connect("localhost", int(port), keepalive=30)
c.loop_start()
acked.get(timeout=10)
print("connected", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v311", "v5"])
def test_will_after_abrupt_disconnect(gateway, protocol):
    watcher = connect(client(gateway, f"paho-watch-{protocol}", protocol), gateway)
    subscribe(watcher, "paho/wills/#", 1)
    name = f"paho-will-{protocol}"
    cert, key = gateway.device(name)
    proc = subprocess.Popen(
        [sys.executable, "-c", WILL_CLIENT, gateway.ca, cert, key, str(gateway.port), name, str(protocol)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "connected"
    finally:
        proc.kill()
        proc.wait()
    msg = watcher.messages.get(timeout=WAIT)
    assert msg.topic == f"paho/wills/{name}"
    assert msg.payload == b"offline"
    watcher.disconnect()
    watcher.loop_stop()
