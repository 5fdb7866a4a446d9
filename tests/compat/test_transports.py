"""One port for every transport: paho-mqtt over WebSockets with a client
certificate, the AWS IoT Device SDK's CRT offering ALPN x-amzn-mqtt-ca as on
port 443, the README's curl line reaching the device HTTPS endpoint on
the MQTT port, and OpenSSL's client rolling its TLS 1.3 keys midway."""
import json
import queue
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import published
from test_paho import PROTOCOLS, client, connect, subscribe
from test_readme import readme_lines

WAIT = 10


def ws_connect(c, gateway):
    c.ws_set_options(path="/mqtt")
    return connect(c, gateway)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v311", "v5"])
def test_paho_over_websockets_with_a_client_certificate(gateway, protocol):
    sub = ws_connect(client(gateway, f"ws-sub-{protocol}", protocol, transport="websockets"), gateway)
    subscribe(sub, "ws/+/data", 1)
    pub = ws_connect(client(gateway, f"ws-pub-{protocol}", protocol, transport="websockets"), gateway)
    for qos in (0, 1):
        published(pub.publish(f"ws/q{qos}/data", f"over ws {qos}", qos=qos), WAIT)
        msg = sub.messages.get(timeout=WAIT)
        assert (msg.topic, msg.payload, msg.qos) == (f"ws/q{qos}/data", f"over ws {qos}".encode(), qos)
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def test_the_device_sdk_offering_alpn_x_amzn_mqtt_ca_as_on_port_443(gateway):
    # The SDK's builder offers the ALPN only when the port is 443, which a
    # test cannot bind; its CRT is given the same options the builder gives.
    from awscrt import io, mqtt as crt
    cert, key = gateway.device("alpn-device")
    options = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
    options.override_default_trust_store_from_path(None, gateway.ca)
    options.alpn_list = ["x-amzn-mqtt-ca"]
    crt_client = crt.Client(io.ClientBootstrap.get_or_create_static_default(), io.ClientTlsContext(options))
    conn = crt.Connection(client=crt_client, host_name="localhost", port=gateway.port,
                          client_id="alpn-device", clean_session=True, keep_alive_secs=30)
    conn.connect().result(WAIT)
    got = queue.Queue()
    future, _ = conn.subscribe("alpn/echo", crt.QoS.AT_LEAST_ONCE,
                               lambda topic, payload, **_: got.put((topic, payload)))
    future.result(WAIT)
    future, _ = conn.publish("alpn/echo", b"via 443's ALPN", crt.QoS.AT_LEAST_ONCE)
    future.result(WAIT)
    assert got.get(timeout=WAIT) == ("alpn/echo", b"via 443's ALPN")
    conn.disconnect().result(WAIT)


def test_the_readme_curl_line_reaches_the_shadow_on_the_mqtt_port(default_gateway):
    gateway = default_gateway
    certs = gateway.certs
    auth = ["--cacert", str(certs / "ca.pem"), "--cert", str(certs / "device-1.pem"),
            "--key", str(certs / "device-1.key")]
    update = subprocess.run(
        ["curl", "-sS", "-f", *auth, "-d", '{"state":{"reported":{"port":"one"}}}',
         f"https://localhost:{gateway.https.split(':')[1]}/things/device-1/shadow"],
        capture_output=True, text=True, timeout=WAIT + 5)
    assert update.returncode == 0, update.stderr
    (line,) = [l for l in readme_lines("curl --cacert") if "localhost:8883" in l]
    line = line.replace("data/certs/", f"{certs}/").replace("localhost:8883", f"localhost:{gateway.port}")
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=WAIT + 5)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"]["reported"] == {"port": "one"}


def test_openssl_rolling_its_tls13_keys_midway_gets_its_answer(default_gateway):
    """OpenSSL's client asks for a TLS 1.3 key update (s_client's `K`
    command) and then updates device-1's shadow over HTTPS on the MQTT port:
    the gateway rolls both directions' keys, and OpenSSL reads the answer
    sealed under the gateway's new key."""
    gateway = default_gateway
    certs = gateway.certs
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.port}", "-tls1_3",
         "-servername", "localhost", "-alpn", "http/1.1", "-CAfile", str(certs / "ca.pem"),
         "-cert", str(certs / "device-1.pem"), "-key", str(certs / "device-1.key")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = []

    def until(what):
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if what(line):
                return
        raise AssertionError("".join(seen))

    try:
        until(lambda l: l.startswith("Verify return code"))
        assert any("TLSv1.3" in l for l in seen), "".join(seen)
        proc.stdin.write("K\n")
        proc.stdin.flush()
        until(lambda l: l.strip() == "KEYUPDATE")
        body = '{"state":{"reported":{"keys":"rolled"}}}'
        proc.stdin.write(
            "POST /things/device-1/shadow HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n{body}")
        proc.stdin.flush()
        until(lambda l: l.startswith("HTTP/1.1"))
        assert seen[-1].startswith("HTTP/1.1 200"), "".join(seen)
        until(lambda l: '"keys":"rolled"' in l)
    finally:
        proc.kill()
        proc.wait()


def test_the_device_sdk_signs_its_websocket_url_with_an_operator_key(tmp_path):
    from awscrt import auth, mqtt as crt
    from awsiot import mqtt_connection_builder
    from conftest import ADMIN_KEY, ADMIN_SECRET, Gateway
    g = Gateway(tmp_path, open_policies=True,
                extra='[[listeners]]\nlisten = "127.0.0.1:0"\nclient_cert = "optional"\n')
    try:
        def connection(client_id, secret, token=None):
            creds = auth.AwsCredentialsProvider.new_static(ADMIN_KEY, secret, token)
            return mqtt_connection_builder.websockets_with_default_aws_signing(
                endpoint="localhost", port=g.listeners[0], region="us-east-1",
                credentials_provider=creds, ca_filepath=g.ca, client_id=client_id,
                clean_session=True, keep_alive_secs=30)

        # A session token travels unsigned, as the SDK sends it.
        conn = connection("sdk-sigv4", ADMIN_SECRET, token="session-token/with+chars")
        conn.connect().result(WAIT)
        got = queue.Queue()
        future, _ = conn.subscribe("sigv4/echo", crt.QoS.AT_LEAST_ONCE, lambda topic, payload, **_: got.put((topic, payload)))
        future.result(WAIT)
        future, _ = conn.publish("sigv4/echo", b"signed by the SDK", crt.QoS.AT_LEAST_ONCE)
        future.result(WAIT)
        assert got.get(timeout=WAIT) == ("sigv4/echo", b"signed by the SDK")
        conn.disconnect().result(WAIT)
        # A wrong secret is refused at the upgrade.
        wrong = connection("sdk-wrong", "not-the-secret")
        with pytest.raises(Exception):
            wrong.connect().result(WAIT)
    finally:
        g.stop()


class _Authorizer:
    """A custom authorizer endpoint on 127.0.0.1: allows the token
    `good-token` with a policy for `sdk-*` clients and `custom/*` topics."""

    def __init__(self):
        import http.server
        import json as _json
        import threading
        asked = self.asked = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                doc = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked.append(doc)
                arn = "arn:aws:iot:us-east-1:000000000000"
                if doc.get("token") == "good-token":
                    answer = {"isAuthenticated": True, "principalId": "SdkDevice",
                              "disconnectAfterInSeconds": 3600, "refreshAfterInSeconds": 300,
                              "policyDocuments": [{"Version": "2012-10-17", "Statement": [
                                  {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/sdk-*"},
                                  {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
                                   "Resource": f"{arn}:topic/custom/*"},
                                  {"Effect": "Allow", "Action": "iot:Subscribe",
                                   "Resource": f"{arn}:topicfilter/custom/*"}]}]}
                else:
                    answer = {"isAuthenticated": False}
                body = _json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/authorize"

    def close(self):
        self.server.shutdown()


def test_the_device_sdk_connects_through_a_custom_authorizer(tmp_path):
    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder
    from conftest import Gateway
    authorizer = _Authorizer()
    g = Gateway(tmp_path, open_policies=True, extra=(
        '[[listeners]]\nlisten = "127.0.0.1:0"\nclient_cert = "optional"\n'
        f'[[authorizers]]\nname = "TokenAuth"\nendpoint = "{authorizer.url}"\n'
        'token_key_name = "tok"\nsigning_disabled = true\n'))
    try:
        def client(token):
            connected, received = queue.Queue(), queue.Queue()
            c = mqtt5_client_builder.direct_with_custom_authorizer(
                endpoint="localhost", port=g.listeners[0], ca_filepath=g.ca, client_id="sdk-custom",
                auth_username="device", auth_authorizer_name="TokenAuth", auth_password=b"secret",
                auth_token_key_name="tok", auth_token_value=token,
                on_lifecycle_connection_success=lambda data: connected.put(None),
                on_lifecycle_connection_failure=lambda data: connected.put(data.exception),
                on_publish_received=lambda data: received.put(data.publish_packet))
            c.start()
            return c, connected.get(timeout=WAIT), received

        c, failure, received = client("good-token")
        assert failure is None, failure
        c.subscribe(mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter="custom/echo", qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(WAIT)
        c.publish(mqtt5.PublishPacket(topic="custom/echo", payload=b"authorized",
                                      qos=mqtt5.QoS.AT_LEAST_ONCE)).result(WAIT)
        got = received.get(timeout=WAIT)
        assert (got.topic, got.payload) == ("custom/echo", b"authorized")
        c.stop()
        # The authorizer was told what the SDK sent.
        asked = authorizer.asked[0]
        assert asked["token"] == "good-token"
        assert asked["protocolData"]["mqtt"]["clientId"] == "sdk-custom"
        assert asked["protocolData"]["mqtt"]["username"].startswith("device?")
        # A token it does not authenticate: refused.
        c, failure, _ = client("bad-token")
        assert failure is not None
        c.stop()
    finally:
        g.stop()
        authorizer.close()
