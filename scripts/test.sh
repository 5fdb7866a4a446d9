#!/usr/bin/env bash
# Every test of the project, with what they need: installs Eclipse Mosquitto
# (the bridge tests' upstream; its clients and curl for the compatibility
# tests) from Debian's packages if missing, then runs formatting, lints, the
# Rust tests, each criterion bench once in test mode, and the compatibility
# tests against the release binary from a virtualenv it creates.
# `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt"
cargo fmt --check

echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings

if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null \
    || ! command -v mosquitto_rr >/dev/null || ! command -v curl >/dev/null \
    || ! { [ -x /usr/sbin/mosquitto ] || [ -x /usr/bin/mosquitto ]; }; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        mosquitto mosquitto-clients curl ca-certificates >/dev/null
fi

echo "== cargo test"
# Every test runs: none may leave itself out for want of a tool.
export EDGEGATE_ALL_TESTS=1
cargo test
# Each criterion bench once, in test mode: their sanity checks run too.
cargo test --benches

echo "== compatibility tests (paho-mqtt, AWS IoT Device SDK v2, boto3 and the AWS CLI, Mosquitto clients, curl)"
cargo build --release
python3 -m venv tests/compat/.venv
tests/compat/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
EDGEGATE_BIN=target/release/edgegate tests/compat/.venv/bin/python -m pytest -q tests/compat
