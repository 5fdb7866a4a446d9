"""The command lines the gateway prints on first start (Mosquitto's clients and curl), run exactly as printed."""
import json
import shlex
import shutil
import subprocess

WAIT = 10


def test_the_printed_quickstart_commands_work(default_gateway):
    gateway = default_gateway
    assert shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub"), \
        "mosquitto-clients must be installed (.ci/run installs it)"
    commands = gateway.quickstart()
    sub = next(c for c in commands if c.startswith("mosquitto_sub"))
    pub = next(c for c in commands if c.startswith("mosquitto_pub"))
    # Receive one message, then exit; -W bounds the wait.
    subscriber = subprocess.Popen(
        shlex.split(sub) + ["-C", "1", "-W", str(WAIT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Publish until the subscriber has it (it may not have subscribed yet); bounded.
    out = ""
    for _ in range(20):
        subprocess.run(shlex.split(pub), check=True, timeout=WAIT, capture_output=True)
        try:
            out, err = subscriber.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        subscriber.kill()
        raise AssertionError("mosquitto_sub never received the message")
    assert subscriber.returncode == 0, err
    assert out.strip() == "things/device-1/hello hello from device-1"


def test_a_device_may_not_publish_on_another_devices_topics(default_gateway):
    gateway = default_gateway
    cert, key = gateway.device("device-9")
    common = ["-h", "localhost", "-p", str(gateway.port), "--cafile", gateway.ca,
              "--cert", cert, "--key", key, "-V", "mqttv5", "-i", "device-9", "-q", "1"]
    mine = subprocess.run(["mosquitto_pub", *common, "-t", "things/device-9/x", "-m", "ok"],
                          timeout=WAIT, capture_output=True, text=True)
    assert mine.returncode == 0 and "failed" not in mine.stderr, mine.stderr
    theirs = subprocess.run(["mosquitto_pub", *common, "-t", "things/device-1/x", "-m", "no"],
                            timeout=WAIT, capture_output=True, text=True)
    # MQTT 5: the PUBACK says 0x87 Not authorized, with the gateway's reason string.
    assert "Publish 1 failed: Not authorized" in theirs.stderr, theirs.stderr
    assert "not authorized to publish to this topic" in theirs.stderr


def test_mosquitto_clients_with_qos1_and_mqtt5(gateway):
    cert, key = gateway.device("mosq-dev")
    common = ["-h", "localhost", "-p", str(gateway.port), "--cafile", gateway.ca,
              "--cert", cert, "--key", key, "-V", "mqttv5"]
    subprocess.run(["mosquitto_pub", *common, "-i", "mosq-pub", "-t", "mosq/state",
                    "-m", "on", "-q", "1", "-r"], check=True, timeout=WAIT, capture_output=True)
    got = subprocess.run(["mosquitto_sub", *common, "-i", "mosq-sub", "-t", "mosq/#", "-q", "1",
                          "-C", "1", "-W", str(WAIT), "-v"],
                         check=True, timeout=WAIT + 5, capture_output=True, text=True)
    assert got.stdout.strip() == "mosq/state on"


def test_the_printed_curl_commands_reach_the_devices_shadow_over_https(default_gateway):
    gateway = default_gateway
    update, get = gateway.quickstart("curl ")
    # The gateway prints paths relative to its directory, as a user runs them.
    done = subprocess.run(shlex.split(update), cwd=gateway.dir, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    accepted = json.loads(done.stdout)
    assert accepted["state"] == {"reported": {"temp": 21}} and accepted["version"] == 1
    done = subprocess.run(shlex.split(get), cwd=gateway.dir, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"]["reported"] == {"temp": 21}
    # The device's policy covers its own shadow only.
    other = get.replace("/things/device-1/", "/things/device-2/")
    done = subprocess.run(shlex.split(other), cwd=gateway.dir, capture_output=True, text=True, timeout=WAIT)
    assert json.loads(done.stdout) == {"__type": "ForbiddenException", "message": "Forbidden"}
