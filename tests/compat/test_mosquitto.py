"""Eclipse Mosquitto's command-line clients, run exactly as the gateway prints them on first start."""
import shlex
import shutil
import subprocess

WAIT = 10


def test_the_printed_quickstart_commands_work(gateway):
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
