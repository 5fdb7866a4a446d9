"""Runs the edgegate binary on 127.0.0.1 with certificates made for the test.

The binary is taken from EDGEGATE_BIN (set by .ci/run), else target/release.
"""
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("EDGEGATE_BIN", ROOT / "target" / "release" / "edgegate")).resolve()

CONFIG = """
data_dir = "data"
[tls]
ca = "data/certs/ca.pem"
cert = "data/certs/server.pem"
key = "data/certs/server.key"
generate_if_missing = true
[mqtt]
listen = ["127.0.0.1:0"]
[https]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
access_key_id = "AKIDEDGEGATETEST"
secret_access_key_env = "EDGEGATE_ADMIN_SECRET"
[policies]
dir = "{policies}"
"""

# The control plane's key; the secret reaches the gateway only through its environment.
ADMIN_KEY = "AKIDEDGEGATETEST"
ADMIN_SECRET = "compat-test-secret"

# Client interoperability tests let every device talk to every other.
OPEN_AUTH = """
[auth]
provisioning = { policies = ["open"] }
"""
OPEN_POLICY = '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}'


def published(info, timeout=10):
    """Waits for a paho publish to complete; paho's own wait returns quietly
    on timeout, so say so."""
    info.wait_for_publish(timeout=timeout)
    assert info.is_published(), "the publish was not acknowledged in time"


def operator_client(gateway, service, secret=ADMIN_SECRET):
    """A boto3 client of `service` ("iot", "iot-data") signed with the control
    plane's key, pointed at the admin listener as `--endpoint-url` would."""
    import boto3
    return boto3.client(
        service,
        endpoint_url=f"http://{gateway.admin}",
        region_name="us-east-1",
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=secret,
    )


def sdk_connect(gateway, client_id, cert, key, wait=10):
    """An AWS IoT Device SDK v2 MQTT connection over mutual TLS, connected."""
    from awsiot import mqtt_connection_builder
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=gateway.port, cert_filepath=cert, pri_key_filepath=key,
        ca_filepath=gateway.ca, client_id=client_id, clean_session=True, keep_alive_secs=30,
    )
    conn.connect().result(wait)
    return conn


def sdk_subscribed(subscribe, request, qos, wait=10):
    """Subscribes an SDK service client to an operation's accepted and
    rejected answers; their queues."""
    import queue
    accepted, rejected = queue.Queue(), queue.Queue()
    for sub, q in zip(subscribe, (accepted, rejected)):
        future, _ = sub(request, qos, q.put)
        future.result(wait)
    return accepted, rejected


class Gateway:
    def __init__(self, workdir: Path, open_policies: bool, extra: str = ""):
        self.dir = workdir
        self.certs = workdir / "data" / "certs"
        if open_policies:
            policies = workdir / "policies"
            policies.mkdir()
            (policies / "open.json").write_text(OPEN_POLICY)
            (policies / "operator.json").write_text((ROOT / "policies" / "operator.json").read_text())
            config = CONFIG.format(policies=policies) + OPEN_AUTH
        else:
            # The repository's own policies and provisioning, as a user gets them.
            config = CONFIG.format(policies=ROOT / "policies")
        (workdir / "config.toml").write_text(config + extra)
        self.stdout = workdir / "stdout.txt"
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--config", str(workdir / "config.toml")],
            cwd=workdir,
            stdout=self.stdout.open("w"),
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "edgegate=info", "EDGEGATE_ADMIN_SECRET": ADMIN_SECRET},
        )
        self.port = None
        self.admin = None
        self.https = None
        # The [[listeners]] of `extra`, in order, once started.
        self.listeners = []
        expected_listeners = extra.count("[[listeners]]")
        # A thread drains stderr (so the gateway never blocks on a full pipe)
        # and hands lines over only until the listeners are known; the wait
        # for them is bounded, so a silent gateway fails the test instead
        # of hanging it.
        lines = queue.Queue()
        self._listening = threading.Event()

        def pump():
            for line in self.proc.stderr:
                if not self._listening.is_set():
                    lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while not (self.port and self.admin and self.https
                   and len(self.listeners) == expected_listeners):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            m = re.search(r"MQTT over mutual TLS addr=127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            m = re.search(r"device HTTPS listener .* addr=(127\.0\.0\.1:\d+)", line)
            if m:
                self.https = m.group(1)
            m = re.search(r"TLS listener .* addr=127\.0\.0\.1:(\d+)", line)
            if m:
                self.listeners.append(int(m.group(1)))
            m = re.search(r"admin listener .* addr=(127\.0\.0\.1:\d+)", line)
            if m:
                self.admin = m.group(1)
        self._listening.set()
        assert self.port and self.admin and self.https, "gateway did not report its listeners within 30 s"

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.pem")

    def device(self, name: str) -> tuple[str, str]:
        """Issues a device certificate with the gateway's own CLI."""
        cert, key = self.certs / f"{name}.pem", self.certs / f"{name}.key"
        if not cert.exists():
            subprocess.run(
                [str(BIN), "cert", "issue", "--cn", name,
                 "--ca-dir", str(self.certs), "--out", str(self.certs)],
                check=True, capture_output=True, timeout=60,
            )
        return str(cert), str(key)

    def quickstart(self, prefix: str = "mosquitto_") -> list[str]:
        """The client command lines starting with `prefix` that the gateway
        printed on start (printed just after it logs its listeners, so wait
        for them, within a bound)."""
        deadline = time.monotonic() + 10
        while True:
            lines = self.stdout.read_text().splitlines()
            commands = [l.strip() for l in lines if l.strip().startswith(prefix)]
            if len(commands) >= 2 or time.monotonic() > deadline:
                return commands
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def gateway(tmp_path):
    g = Gateway(tmp_path, open_policies=True)
    yield g
    g.stop()


@pytest.fixture
def default_gateway(tmp_path):
    g = Gateway(tmp_path, open_policies=False)
    yield g
    g.stop()
