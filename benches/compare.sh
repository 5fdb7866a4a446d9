#!/usr/bin/env bash
# edgegate side by side with Eclipse Mosquitto and rumqttd on this machine,
# driven by `edgegate bench` over mutual TLS with ECDSA P-256 client
# certificates, persistence off (FSYNC=true turns edgegate's fsync on).
#
# Each broker runs pinned to CPU 0 and the load to CPU 1; brokers alternate
# run by run; every scenario runs RUNS times (3 by default). Prints, per
# figure, the median with min-max for each broker and the ratio
# edgegate/peer, plus broker CPU seconds per million messages and RSS.
#
#   benches/compare.sh                     # everything
#   BROKERS="edgegate mosquitto" SCENARIOS="fanin0 latency" RUNS=5 benches/compare.sh
#   BROKERS="edgegate mosquitto" SCENARIOS="latency latency1 latency_10k latency1_10k latency_50k latency1_50k" RUNS=9 benches/compare.sh
#       # p99 and p99.9 from publish to delivery at 1,000, 10,000 and 50,000 msg/s, QoS 0 and 1
#   BROKERS=edgegate SCENARIOS=scale RUNS=1 benches/compare.sh   # SCALE (19,900) held connections
#   FSYNC=true BROKERS=edgegate SCENARIOS="fanin1 latency1 shadow shadow1" benches/compare.sh
#       # device shadows (edgegate only) beside QoS 1 fan-in and latency, every commit flushed
#   SCENARIOS=flood benches/compare.sh
#       # a well-behaved client's p99 next to 4 flooding clients over its p99 alone;
#       # edgegate runs with its default rate limits for this one
#   BROKERS="edgegate mosquitto" SCENARIOS="conn conn_ws fanin0 fanin0_ws" benches/compare.sh
#       # MQTT over WebSockets (wss, client certificates) beside MQTT over TLS;
#       # Mosquitto serves it on a listener of its own (WSPORT), rumqttd not at all
#   STAGES=true BROKERS="edgegate mosquitto" SCENARIOS="latency latency1" RUNS=9 benches/compare.sh
#       # edgegate built with the stage-timing feature: beside each latency figure,
#       # p50, p99 and p99.9 of every stage of a message's way through it
#       # (edgegate_stage_seconds, read from /metrics on ADMINPORT)
#   BROKERS="edgegate mosquitto" SCENARIOS=release benches/compare.sh
#       # memory given back: 10,000 connections held, closed, then RSS sampled
#       # every second for RELEASE_SECS (30) against RSS before they opened
#
# Everything listens on 127.0.0.1 only, every run is bounded in count and
# time, and every broker is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
BROKERS=${BROKERS:-"edgegate mosquitto rumqttd"}
SCENARIOS=${SCENARIOS:-"conn rss release fanin0 fanin1 fanout latency"}
PORT=${PORT:-18883}
WSPORT=${WSPORT:-18884}
FSYNC=${FSYNC:-false}
RELEASE_SECS=${RELEASE_SECS:-30}
STAGES=${STAGES:-false}
ADMINPORT=${ADMINPORT:-18885}
EG=target/release/edgegate

# Peers, installed if missing.
if [[ " $BROKERS " == *" mosquitto "* ]] && ! [ -x /usr/sbin/mosquitto ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
if [[ " $BROKERS " == *" rumqttd "* ]] && ! command -v rumqttd >/dev/null; then
    cargo install rumqttd
fi
if [ "$STAGES" = true ]; then
    cargo build --release --quiet --features stage-timing
    admin=127.0.0.1:$ADMINPORT
else
    cargo build --release --quiet
    admin=127.0.0.1:0
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
broker_pid=""
cleanup() {
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Certificates: edgegate's first start makes a CA and a server certificate
# (SAN localhost, 127.0.0.1) that every broker uses; one client certificate
# serves every load connection.
certs=$work/data/certs
mkdir -p "$work/policies"
echo '{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}' \
    > "$work/policies/open.json"
cat > "$work/edgegate.toml" <<EOF
data_dir = "data"
[mqtt]
listen = ["127.0.0.1:$PORT"]
[admin]
listen = "$admin"
[policies]
dir = "policies"
[auth]
provisioning = { policies = ["open"] }
[limits]
max_connections = 100000
# Throughput and connection rate are what is measured: AWS IoT's
# per-connection rates (100 publishes and 512 KiB a second) and the limit
# on new connections per address are off, as the peers have none.
publishes_per_second = 0
publish_bytes_per_second = 0
connections_per_second_per_address = 0
[store]
fsync = $FSYNC
EOF
# Ten rules on topics the load does not use: every publish is still matched
# against their FROM filters, as on a gateway that runs rules for other traffic.
for i in $(seq 10); do
    cat >> "$work/edgegate.toml" <<EOF
[[rules]]
name = "sensor_$i"
sql = "SELECT temp FROM 'sensors/$i/+' WHERE temp > 50"
actions = [{ republish = { topic = "alerts/$i" } }]
EOF
done
# The flood scenario measures the rate limits: the same gateway with AWS
# IoT's per-connection quotas, its defaults.
grep -v -e '^publishes_per_second' -e '^publish_bytes_per_second' \
    -e '^connections_per_second_per_address' "$work/edgegate.toml" > "$work/edgegate-limited.toml"

cat > "$work/mosquitto.conf" <<EOF
user root
persistence false
log_type error
set_tcp_nodelay true
max_connections -1
listener $PORT 127.0.0.1
cafile $certs/ca.pem
certfile $certs/server.pem
keyfile $certs/server.key
require_certificate true
use_identity_as_username true
allow_anonymous true
listener $WSPORT 127.0.0.1
protocol websockets
cafile $certs/ca.pem
certfile $certs/server.pem
keyfile $certs/server.key
require_certificate true
use_identity_as_username true
EOF

cat > "$work/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT"
next_connection_delay_ms = 0
    [v4.1.tls]
    capath = "$certs/ca.pem"
    certpath = "$certs/server.pem"
    keypath = "$certs/server.key"
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 131072
    max_inflight_count = 100
    dynamic_filters = true
EOF

start_broker() {
    case $1 in
        edgegate) (cd "$work" && exec taskset -c 0 "$OLDPWD/$EG" serve --config "${2:-edgegate.toml}" >/dev/null 2>&1) & ;;
        mosquitto) taskset -c 0 /usr/sbin/mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 & ;;
        rumqttd) taskset -c 0 rumqttd --config "$work/rumqttd.toml" >/dev/null 2>&1 & ;;
    esac
    broker_pid=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not start" >&2
    return 1
}

stop_broker() {
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
}

# The broker's own process (edgegate runs under a subshell).
broker_proc() {
    pgrep -P "$broker_pid" -n 2>/dev/null || echo "$broker_pid"
}

start_broker edgegate
stop_broker
"$EG" cert issue --cn bench --ca-dir "$certs" --out "$certs" >/dev/null

cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

args_for() {
    case $1 in
        conn) echo "conn --connections 2000 --concurrency 32" ;;
        rss|release) echo "conn --connections 10000 --concurrency 32 --hold-secs 6" ;;
        scale) echo "conn --connections ${SCALE:-19900} --concurrency 32 --hold-secs 6" ;;
        fanin0) echo "fanin --publishers 4 --messages 100000 --qos 0" ;;
        fanin0_ws) echo "fanin --publishers 4 --messages 100000 --qos 0 --transport ws" ;;
        conn_ws) echo "conn --connections 2000 --concurrency 32 --transport ws" ;;
        fanin1) echo "fanin --publishers 4 --messages 100000 --qos 1" ;;
        fanout) echo "fanout --subscribers 50 --messages 20000 --qos 0" ;;
        latency) echo "latency --rate 1000 --duration-secs 10" ;;
        latency1) echo "latency --rate 1000 --duration-secs 10 --qos 1" ;;
        latency_10k) echo "latency --rate 10000 --duration-secs 5" ;;
        latency1_10k) echo "latency --rate 10000 --duration-secs 5 --qos 1" ;;
        latency_50k) echo "latency --rate 50000 --duration-secs 5" ;;
        latency1_50k) echo "latency --rate 50000 --duration-secs 5 --qos 1" ;;
        shadow) echo "shadow --publishers 256 --messages 100" ;;
        shadow1) echo "shadow --publishers 1 --messages 3000" ;;
        flood) echo "flood --publishers 4 --rate 100 --duration-secs 10" ;;
    esac
}

results=$work/results.jsonl
for run in $(seq "$RUNS"); do
    # Alternate the order run by run.
    order=$BROKERS
    (( run % 2 == 0 )) && order=$(echo "$BROKERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for scenario in $SCENARIOS; do
        for broker in $order; do
            # Only edgegate has a shadow service; rumqttd serves no WebSockets.
            [[ $scenario == shadow* ]] && [ "$broker" != edgegate ] && continue
            [[ $scenario == *_ws ]] && [ "$broker" = rumqttd ] && continue
            port=$PORT
            [[ $scenario == *_ws ]] && [ "$broker" = mosquitto ] && port=$WSPORT
            config=edgegate.toml
            [ "$scenario" = flood ] && config=edgegate-limited.toml
            start_broker "$broker" "$config" || continue
            pid=$(broker_proc)
            rss0=$(rss_kib "$pid"); cpu0=$(cpu_s "$pid")
            # shellcheck disable=SC2046
            taskset -c 1 "$EG" bench $(args_for "$scenario") --broker "127.0.0.1:$port" \
                --ca "$certs/ca.pem" --cert "$certs/bench.pem" --key "$certs/bench.key" \
                --timeout-secs 120 > "$work/out.json" || true
            # Peak RSS is the kernel's high-water mark, read once the load is
            # over: sampling it meanwhile would fork onto the broker's CPU
            # twice a second, and those forks were a good part of the
            # latency tail being measured.
            peak=$(hwm_kib "$pid"); (( peak > rss0 )) || peak=$rss0
            cpu1=$(cpu_s "$pid")
            stages=""
            if [ "$STAGES" = true ] && [ "$broker" = edgegate ]; then
                stages=$(python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())' \
                    "http://$admin/metrics" | grep '^edgegate_stage_seconds_bucket{' || true)
            fi
            # release: RSS once a second after the connections closed, and
            # the first second it is back within 20% of RSS before they opened.
            after=$peak; returned=-1
            if [ "$scenario" = release ]; then
                for s in $(seq "$RELEASE_SECS"); do
                    sleep 1
                    after=$(rss_kib "$pid" 2>/dev/null || echo 0)
                    (( returned < 0 && after * 10 <= rss0 * 12 )) && returned=$s
                done
            fi
            python3 - "$broker" "$scenario" "$run" "$cpu0" "$cpu1" "$rss0" "$peak" "$work/out.json" \
                "$after" "$returned" "$stages" >> "$results" <<'PY'
import json, re, sys
broker, scenario, run, cpu0, cpu1, rss0, peak, out, after, returned, stage_lines = sys.argv[1:]
try:
    report = json.load(open(out))
except Exception:
    report = {}
# edgegate_stage_seconds_bucket{stage="route",le="0.0000123"} 4711: quantiles
# interpolated within the bucket they fall in.
buckets = {}
for m in re.finditer(r'_bucket\{stage="(\w+)",le="([^"]+)"\} (\d+)', stage_lines):
    buckets.setdefault(m[1], []).append((float(m[2]), int(m[3])))
stages = {}
for stage, counts in buckets.items():
    counts.sort()
    total = counts[-1][1]
    for q in ("0.5", "0.99", "0.999"):
        rank, low, below = float(q) * total, 0.0, 0
        for le, n in counts:
            if n >= rank and n > below:
                # Past the last bound, the last bound is what can be said.
                value = low if le == float("inf") else low + (le - low) * (rank - below) / (n - below)
                stages.setdefault(stage, {})[q] = value * 1e6
                break
            low, below = le, n
print(json.dumps({"broker": broker, "scenario": scenario, "run": int(run),
                  "broker_cpu_s": float(cpu1) - float(cpu0),
                  "rss0_kib": int(rss0), "rss_peak_kib": int(peak),
                  "rss_after_kib": int(after), "returned_s": int(returned), "report": report,
                  "stages_us": stages}))
PY
            stop_broker
        done
    done
done

python3 - "$results" "$BROKERS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
brokers = sys.argv[2].split()
figures = {
    "conn": ("mTLS connections/s", lambda r: r["report"].get("connections_per_s"), True),
    "rss": ("RSS KiB per idle mTLS connection",
            lambda r: (r["rss_peak_kib"] - r["rss0_kib"]) / max(r["report"].get("connections", 0), 1), False),
    "release": ("RSS after 10k closed / before",
                lambda r: r["rss_after_kib"] / r["rss0_kib"] if r["rss0_kib"] else None, False),
    "release_s": ("seconds until RSS within 20% of before",
                  lambda r: r["returned_s"] if r["returned_s"] >= 0 else None, False),
    "scale": ("idle mTLS connections held",
              lambda r: r["report"].get("connections", 0) - r["report"].get("failed", 0), True),
    "fanin0": ("fan-in QoS 0 delivered/s", lambda r: r["report"].get("delivered_per_s"), True),
    "conn_ws": ("wss connections/s", lambda r: r["report"].get("connections_per_s"), True),
    "fanin0_ws": ("wss fan-in QoS 0 delivered/s", lambda r: r["report"].get("delivered_per_s"), True),
    "fanin1": ("fan-in QoS 1 delivered/s", lambda r: r["report"].get("delivered_per_s"), True),
    "fanout": ("fan-out 1 to 50 deliveries/s", lambda r: r["report"].get("deliveries_per_s"), True),
    "shadow": ("shadow updates/s (256 devices)", lambda r: r["report"].get("updates_per_s"), True),
    "shadow_p99": ("shadow update p99 us (256 devices)",
                   lambda r: r["report"]["p99_ms"] * 1000 if "p99_ms" in r["report"] else None, False),
    "shadow1": ("shadow updates/s (1 device)", lambda r: r["report"].get("updates_per_s"), True),
    "flood": ("p99 next to 4 flooders / p99 alone",
              lambda r: r["report"].get("p99_ratio"), False),
    "shadow1_p99": ("shadow update p99 us (1 device)",
                    lambda r: r["report"]["p99_ms"] * 1000 if "p99_ms" in r["report"] else None, False),
}
# Latency at each rate and QoS: p99 and p99.9 rows of their own.
def micros(key):
    return lambda r: r["report"][key] * 1000 if key in r["report"] else None
for scenario, (qos, rate) in {"latency": (0, "1,000"), "latency1": (1, "1,000"),
                               "latency_10k": (0, "10,000"), "latency1_10k": (1, "10,000"),
                               "latency_50k": (0, "50,000"), "latency1_50k": (1, "50,000")}.items():
    for key, label in (("p99_ms", "p99"), ("p999_ms", "p99.9")):
        figures[f"{scenario}_{label}"] = (f"QoS {qos} latency {label} us at {rate} msg/s", micros(key), False)
        rows.extend({**r, "scenario": f"{scenario}_{label}"} for r in list(rows) if r["scenario"] == scenario)
for r in [r for r in rows if r["scenario"] in ("shadow", "shadow1")]:
    rows.append({**r, "scenario": r["scenario"] + "_p99"})
for r in [r for r in rows if r["scenario"] == "release"]:
    rows.append({**r, "scenario": "release_s"})
def messages(r):
    rep = r["report"]
    return rep.get("delivered") or rep.get("deliveries") or rep.get("messages") or 0
print(f"{'figure':40} " + " ".join(f"{b:>26}" for b in brokers) + "   ratio edgegate/peer")
for scenario, (name, value, higher) in figures.items():
    med = {}
    cells = []
    for b in brokers:
        vals = [value(r) for r in rows if r["broker"] == b and r["scenario"] == scenario]
        vals = [v for v in vals if v is not None]
        if not vals:
            cells.append(f"{'-':>26}")
            continue
        med[b] = statistics.median(vals)
        d = 2 if med[b] < 10 else 1
        cells.append(f"{med[b]:>12.{d}f} ({min(vals):.{d}f}-{max(vals):.{d}f})")
    ratios = [f"{b}: {med['edgegate'] / med[b]:.2f}x" for b in brokers
              if b != "edgegate" and "edgegate" in med and med.get(b)]
    if med:
        print(f"{name:40} " + " ".join(cells) + "   " + ", ".join(ratios)
              + ("" if higher else "  (lower is better)"))
print()
for b in brokers:
    rs = [r for r in rows if r["broker"] == b and r["scenario"] == "scale"]
    if rs:
        peak = statistics.median(r["rss_peak_kib"] for r in rs) / 1024
        per = statistics.median((r["rss_peak_kib"] - r["rss0_kib"]) / max(r["report"].get("connections", 0), 1) for r in rs)
        print(f"held connections: {b} peak RSS {peak:.1f} MiB, {per:.1f} KiB per connection")
for b in brokers:
    rs = [r for r in rows if r["broker"] == b and r["scenario"] == "release"]
    if rs:
        mib = lambda key: statistics.median(r[key] for r in rs) / 1024
        print(f"10k connections released: {b} RSS before {mib('rss0_kib'):.1f} MiB, "
              f"holding {mib('rss_peak_kib'):.1f} MiB, after closing {mib('rss_after_kib'):.1f} MiB")
staged = [r for r in rows if r.get("stages_us") and "_p99" not in r["scenario"]]
if staged:
    print("edgegate stages, us (medians over runs of each quantile): p50 / p99 / p99.9")
    for scenario in dict.fromkeys(r["scenario"] for r in staged):
        rs = [r for r in staged if r["scenario"] == scenario]
        for stage in ("route", "handoff", "write"):
            qs = [statistics.median(r["stages_us"].get(stage, {}).get(q, 0) for r in rs)
                  for q in ("0.5", "0.99", "0.999")]
            print(f"  {scenario:13} {stage:8} " + " / ".join(f"{q:7.1f}" for q in qs))
print("broker CPU seconds per million messages, peak RSS MiB (medians):")
for scenario in ("fanin0", "fanin1", "fanout"):
    for b in brokers:
        rs = [r for r in rows if r["broker"] == b and r["scenario"] == scenario and messages(r)]
        if rs:
            cpu = statistics.median(r["broker_cpu_s"] / messages(r) * 1e6 for r in rs)
            rss = statistics.median(r["rss_peak_kib"] for r in rs) / 1024
            lost = statistics.median(r["report"].get("lost", 0) for r in rs)
            print(f"  {scenario:8} {b:10} {cpu:8.2f} CPU s/M   {rss:7.1f} MiB   lost {lost:.0f}")
PY
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"edgegate"' in l]
def med(scenario, key):
    vals = [r["report"].get(key) for r in rows if r["scenario"] == scenario]
    vals = [v for v in vals if v]
    return statistics.median(vals) if vals else None
updates, acked = med("shadow", "updates_per_s"), med("fanin1", "acked_per_s")
if updates and acked:
    print(f"shadow updates/s / fan-in QoS 1 acked/s: {updates / acked:.3f}x")
p99_1 = med("latency1", "p99_ms")
for scenario, devices in (("shadow", 256), ("shadow1", 1)):
    p99 = med(scenario, "p99_ms")
    if p99 and p99_1:
        print(f"shadow update p99 ({devices} devices) / QoS 1 publish p99 at 1,000 msg/s: {p99 / p99_1:.1f}x")
PY
