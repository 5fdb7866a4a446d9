"""The command lines README.md shows for device shadows, run as written
against a gateway on its repository defaults (only the ports, the data
directory and the admin secret are the test's)."""
import json
import os
import re
import shlex
import subprocess

from conftest import ADMIN_KEY, ADMIN_SECRET, BIN, ROOT, Gateway

WAIT = 10


def readme_lines(prefix):
    text = (ROOT / "README.md").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip().startswith(prefix)]
    assert lines, f"README.md shows no `{prefix}` line"
    return lines


def localized(line, gateway):
    line = line.replace("-p 8883", f"-p {gateway.port}")
    line = line.replace("127.0.0.1:9080", gateway.admin)
    line = line.replace("data/certs/", f"{gateway.certs}/")
    return line.replace("AKIDEDGEGATE:", f"{ADMIN_KEY}:")


def run(line, gateway):
    env = {**os.environ, "EDGEGATE_ADMIN_SECRET": ADMIN_SECRET}
    # The README's lines are shell lines: let the shell expand the secret.
    return subprocess.run(["bash", "-c", localized(line, gateway)], env=env,
                          capture_output=True, text=True, timeout=WAIT + 5)


def test_the_shadow_commands_of_the_readme(default_gateway):
    gateway = default_gateway
    update, get = [l for l in readme_lines("mosquitto_rr") if "/shadow/" in l]
    done = run(update, gateway)
    assert done.returncode == 0, done.stderr
    accepted = json.loads(done.stdout)
    assert accepted["state"] == {"reported": {"temp": 21}}
    assert accepted["version"] == 1
    done = run(get, gateway)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["state"]["reported"] == {"temp": 21} and got["version"] == 1

    (curl,) = readme_lines("curl --aws-sigv4")
    done = run(curl, gateway)
    assert done.returncode == 0, done.stderr
    accepted = json.loads(done.stdout)
    assert accepted["state"] == {"desired": {"temp": 19}} and accepted["version"] == 2

    (aws,) = readme_lines("aws iot-data")
    cli = re.sub(r"^aws ", f"{shlex.quote(str(ROOT / 'tests/compat/.venv/bin/aws'))} ", aws)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ADMIN_KEY, "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(["bash", "-c", localized(cli, gateway)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The payload goes to /dev/stdout, before anything the CLI prints itself.
    got, _ = json.JSONDecoder().raw_decode(done.stdout)
    assert got["state"]["delta"] == {"temp": 19} and got["version"] == 2


def test_the_event_and_basic_ingest_commands_of_the_readme(default_gateway):
    gateway = default_gateway
    watch = next(l for l in readme_lines("mosquitto_sub") if "$aws/events/#" in l)
    ingest = next(l for l in readme_lines("mosquitto_pub") if "$aws/rules/" in l)
    # The operator watches five events (the first is its own subscribe)
    # while the device publishes again and again: whenever the watcher's
    # subscription began, the device's hold a connected followed by its
    # disconnected.
    watcher = subprocess.Popen(["bash", "-c", localized(watch, gateway) + " -C 5 -W 10"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(40):
            done = run(ingest, gateway)
            assert done.returncode == 0, done.stderr
            try:
                watcher.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
        out, err = watcher.communicate(timeout=WAIT + 5)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    events = [l.split(" ", 1) for l in out.splitlines() if "/device-1 " in l]
    pairs = [(a, b) for a, b in zip(events, events[1:])
             if a[0] == "$aws/events/presence/connected/device-1"
             and b[0] == "$aws/events/presence/disconnected/device-1"]
    assert pairs, out
    connected, gone = (json.loads(e[1]) for e in pairs[0])
    assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert gone["sessionIdentifier"] == connected["sessionIdentifier"]


def test_the_fleet_provisioning_commands_of_the_readme(tmp_path):
    # The repository's policies and template, and the README's section.
    (tmp_path / "templates").mkdir()
    template = ROOT / "templates" / "device-fleet.json"
    (tmp_path / "templates" / "device-fleet.json").write_text(template.read_text())
    text = (ROOT / "README.md").read_text()
    section = text.split("[[provisioning.templates]]\nname = \"DeviceFleet\"", 1)[1].split("```", 1)[0]
    gateway = Gateway(tmp_path, open_policies=False,
                      extra="[[provisioning.templates]]\nname = \"DeviceFleet\"" + section)
    try:
        config = str(tmp_path / "config.toml")
        issue, register = [l for l in readme_lines("edgegate cert ")
                           if "--cn claim" in l or "claim.pem" in l]
        # As a user runs them, in the gateway's directory.
        for line in (issue, f"{register} --config {config}"):
            done = subprocess.run(["bash", "-c", line.replace("edgegate ", f"{BIN} ", 1)],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        create, provision = [l for l in readme_lines("mosquitto_rr") if "claim.pem" in l]
        done = run(create, gateway)
        assert done.returncode == 0, done.stderr
        created = json.loads(done.stdout)
        assert created["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
        done = run(provision.replace("TOKEN", created["certificateOwnershipToken"]), gateway)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "deviceConfiguration": {"topic": "things/device-0042/hello"},
            "thingName": "device-0042"}
        # The device connects with what it got, under the device policy.
        (tmp_path / "new.pem").write_text(created["certificatePem"])
        (tmp_path / "new.key").write_text(created["privateKey"])
        done = subprocess.run(
            ["mosquitto_pub", "-h", "localhost", "-p", str(gateway.port), "--cafile", gateway.ca,
             "--cert", str(tmp_path / "new.pem"), "--key", str(tmp_path / "new.key"),
             "-i", "device-0042", "-q", "1", "-t", "things/device-0042/hello", "-m", "hi"],
            capture_output=True, text=True, timeout=WAIT + 5)
        assert done.returncode == 0, done.stderr

        # A template made through the control plane with the AWS CLI, in the
        # repository's directory, is listed beside the one of config.toml.
        aws_cli = shlex.quote(str(ROOT / "tests/compat/.venv/bin/aws"))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ADMIN_KEY, "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}
        for line in [l for l in readme_lines("aws iot ") if "provisioning-template" in l]:
            line = localized(re.sub(r"^aws ", f"{aws_cli} ", line), gateway)
            done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        listed = json.loads(done.stdout)["templates"]
        assert [(t["templateName"], t["enabled"]) for t in listed] == [
            ("DeviceFleet", True), ("Lamps", True)]
    finally:
        gateway.stop()
