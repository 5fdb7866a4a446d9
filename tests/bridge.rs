//! The upstream bridge against real brokers on 127.0.0.1 over mutual TLS: a
//! second edgegate, and Eclipse Mosquitto with `require_certificate`. Faults:
//! the upstream down at start, stopped and restarted mid-stream, a link that
//! stalls without a FIN, and the gateway killed with `kill -9` during an
//! outage. Every acknowledged message must arrive upstream, in order.

mod common;

use common::*;
use edgegate::transport::pki::{self, Ca, KeyKind};
use rumqttc::QoS;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Gives the edge gateway in `edge_dir` a client certificate from `ca` for
/// `edge-a`, and `ca` as the upstream's CA, at `[upstream]`'s default paths.
fn trust(edge_dir: &Path, ca: &Ca) {
    let certs = edge_dir.join("certs");
    let pem = ca
        .issue_device("edge-a", KeyKind::EcdsaP256)
        .expect("client cert");
    pki::write_pair(&certs, "upstream", &pem).expect("write client cert");
    pki::write(&certs.join("upstream-ca.pem"), &ca.pem.cert, false).expect("write ca");
}

/// `[upstream]` towards `port`: telemetry goes up under `edge-a/`, commands
/// for edge-a come down under `cmd/`. Fast timers, so faults show quickly.
fn upstream_toml(port: u16, extra: &str) -> String {
    format!(
        r#"[upstream]
endpoint = "127.0.0.1:{port}"
client_id = "edge-a"
keep_alive_secs = 2
connect_timeout_secs = 2
reconnect_initial_ms = 50
reconnect_max_ms = 300
{extra}
[[upstream.forward]]
filter = "telemetry/#"
topic = "edge-a/${{topic()}}"
[[upstream.subscribe]]
filter = "commands/edge-a/#"
topic = "cmd/${{topic(3)}}"
"#
    )
}

/// Publishes `seq` in `from..to` to `telemetry/t` at QoS 1, each acknowledged.
async fn publish_seq(p: &mut V4, from: u32, to: u32) {
    for seq in from..to {
        p.publish("telemetry/t", QoS::AtLeastOnce, false, &seq.to_be_bytes())
            .await;
        p.puback().await;
    }
}

/// The next `n` distinct sequence numbers a watcher receives, in arrival order.
async fn seqs(w: &mut V4, n: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let got = w.recv().await;
        assert_eq!(got.topic, "edge-a/telemetry/t");
        let seq = u32::from_be_bytes(got.payload[..4].try_into().expect("4 bytes"));
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    seen
}

/// An upstream gateway, stopped, with a persistent watcher whose messages
/// wait while it is away, behind a proxy: the upstream restarts on a new
/// port each time, the proxy keeps one address for the gateway (and no
/// other test can take it meanwhile).
async fn upstream_down() -> (TestServer, Proxy) {
    let mut up = TestServer::start().await;
    let proxy = Proxy::start(up.addr().port()).await;
    up.v4("watcher", false)
        .await
        .subscribe("edge-a/#", QoS::AtLeastOnce)
        .await;
    up.server.take().expect("running").shutdown().await;
    (up, proxy)
}

async fn wait_metric(t: &TestServer, series: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, series) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn messages_go_up_and_commands_come_down_over_mutual_tls() {
    let up = TestServer::start().await;
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    // Commands also match a forward mapping: they must not go back up.
    let mut edge = TestServer::prepare(&format!(
        "{}[[upstream.forward]]\nfilter = \"cmd/#\"\ntopic = \"edge-a/echo/${{topic()}}\"\n",
        upstream_toml(up.addr().port(), "")
    ));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;

    let mut device = edge.v4("sensor", true).await;
    device.subscribe("cmd/#", QoS::AtLeastOnce).await;
    publish_seq(&mut device, 0, 5).await;
    assert_eq!(seqs(&mut watcher, 5).await, vec![0, 1, 2, 3, 4]);
    // Forwarded as published, byte for byte (not re-serialized JSON).
    let odd = br#"{ "a" : 1.0,"b":[ ] }"#;
    device
        .publish("telemetry/json", QoS::AtLeastOnce, false, odd)
        .await;
    device.puback().await;
    let got = watcher.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("edge-a/telemetry/json", &odd[..])
    );

    let mut operator = up.v4("operator", true).await;
    operator
        .publish("commands/edge-a/reboot", QoS::AtLeastOnce, false, b"now")
        .await;
    operator.puback().await;
    let got = device.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("cmd/reboot", &b"now"[..])
    );
    watcher.nothing_for(Duration::from_millis(300)).await;

    let health = http_get(edge.admin(), "/healthz").await;
    assert!(health.contains(r#""connected":true"#), "{health}");
    wait_metric(&edge, "edgegate_upstream_forwarded_total", 6.0).await;
    assert_eq!(
        metric(&edge.metrics().await, "edgegate_upstream_received_total"),
        1.0
    );
}

/// AWS IoT closes an MQTT 3.1.1 connection that publishes where its policy
/// does not allow (so does edgegate). Such a message comes back at the head
/// of every new link: after a few links closed on it alone it is dropped
/// and counted, and the messages behind it still go up, in order.
#[tokio::test]
async fn a_message_the_upstream_closes_the_link_on_does_not_hold_back_the_rest() {
    let mut up = TestServer::prepare("");
    up.write_policy(
        "open",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/edge-a/telemetry/poison"}
        ]}"#,
    );
    up.boot().await;
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    let mut edge = TestServer::prepare(&upstream_toml(up.addr().port(), ""));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;

    let mut device = edge.v4("sensor", true).await;
    publish_seq(&mut device, 0, 2).await;
    device
        .publish("telemetry/poison", QoS::AtLeastOnce, false, b"no")
        .await;
    device.puback().await;
    publish_seq(&mut device, 2, 6).await;
    assert_eq!(seqs(&mut watcher, 6).await, (0..6).collect::<Vec<_>>());
    wait_metric(&edge, "edgegate_upstream_failed_total", 1.0).await;
    let m = edge.metrics().await;
    assert_eq!(metric(&m, "edgegate_upstream_forwarded_total"), 6.0);
    assert!(metric(&m, "edgegate_upstream_reconnects_total") >= 3.0);
    let health = http_get(edge.admin(), "/healthz").await;
    assert!(health.contains(r#""spool_records":0"#), "{health}");
}

#[tokio::test]
async fn nothing_is_lost_when_the_upstream_is_down_at_start_or_restarts_midstream() {
    let (mut up, proxy) = upstream_down().await;

    let mut edge = TestServer::prepare(&upstream_toml(
        proxy.port,
        "server_name = \"localhost\"\nmax_publishes_per_second = 20",
    ));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    let mut device = edge.v4("sensor", true).await;
    // Down at start: acknowledged all the same, spooled.
    publish_seq(&mut device, 0, 20).await;
    let health = http_get(edge.admin(), "/healthz").await;
    assert!(health.contains(r#""connected":false"#), "{health}");
    assert!(health.contains(r#""spool_records":20"#), "{health}");

    up.boot().await;
    proxy.set_target(up.addr().port());
    let mut watcher = up.v4("watcher", false).await;
    assert_eq!(seqs(&mut watcher, 20).await, (0..20).collect::<Vec<_>>());
    // Mid-stream: the upstream goes away while a backlog drains (20 a
    // second), and comes back.
    for seq in 20..120u32 {
        device
            .publish("telemetry/t", QoS::AtLeastOnce, false, &seq.to_be_bytes())
            .await;
    }
    for _ in 20..120 {
        device.puback().await;
    }
    wait_metric(&edge, "edgegate_upstream_forwarded_total", 40.0).await;
    up.server.take().expect("running").shutdown().await;
    let forwarded = metric(&edge.metrics().await, "edgegate_upstream_forwarded_total");
    assert!(
        forwarded < 120.0,
        "the stop came mid-stream ({forwarded} forwarded)"
    );
    // What the watcher got before the stop.
    let mut all = std::collections::HashSet::new();
    while let Ok(ev) = watcher.events.try_recv() {
        if let Ev4::Publish(p) = ev {
            all.insert(u32::from_be_bytes(
                p.payload[..4].try_into().expect("4 bytes"),
            ));
        }
    }
    up.boot().await;
    proxy.set_target(up.addr().port());
    let mut watcher = up.v4("watcher", false).await;
    // After the restart: everything else, new ones in order, duplicates
    // (resent by the gateway or redelivered by the upstream) counted.
    let mut last_new = None;
    let mut duplicates = 0u32;
    while !(20..120).all(|s| all.contains(&s)) {
        let got = watcher.recv().await;
        let seq = u32::from_be_bytes(got.payload[..4].try_into().expect("4 bytes"));
        if !all.insert(seq) {
            duplicates += 1;
            continue;
        }
        assert!(last_new < Some(seq), "{seq} after {last_new:?}");
        last_new = Some(seq);
    }
    wait_metric(&edge, "edgegate_upstream_forwarded_total", 120.0).await;
    let m = edge.metrics().await;
    let resent = metric(&m, "edgegate_upstream_resent_total");
    let reconnects = metric(&m, "edgegate_upstream_reconnects_total");
    assert!(reconnects >= 2.0, "{reconnects}");
    // The gateway resends only what was in flight when a link went: at most
    // its window (upstream.max_inflight, 100) per reconnect.
    assert!(
        resent <= 100.0 * reconnects,
        "{resent} resent over {reconnects} reconnects"
    );
    // A duplicate the watcher sees was resent by the gateway, or redelivered
    // by the upstream from the watcher's own window (rumqttc's 100).
    assert!(
        f64::from(duplicates) <= resent + 100.0,
        "{duplicates} duplicates, {resent} resent"
    );
}

/// A TCP proxy to `target` whose connections can be frozen: bytes stop in
/// both directions but nothing is closed, as when a link dies without a FIN.
struct Proxy {
    port: u16,
    /// Where connections go: the upstream's current port.
    target: Arc<AtomicU16>,
    /// Connections numbered up to this are frozen.
    frozen_through: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    /// While false, connections are accepted and closed at once.
    open: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let frozen_through = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let open = Arc::new(AtomicBool::new(true));
        let target = Arc::new(AtomicU16::new(target));
        let (f, n, o, t) = (
            frozen_through.clone(),
            next.clone(),
            open.clone(),
            target.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let port = t.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let id = n.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, id, f.clone()));
                tokio::spawn(pump(sr, cw, id, f.clone()));
            }
        });
        Self {
            port,
            target,
            frozen_through,
            next,
            open,
        }
    }

    /// Sends new connections to the upstream's new port (after a restart).
    fn set_target(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    /// Freezes every connection made so far.
    fn freeze(&self) {
        self.frozen_through
            .store(self.next.load(Ordering::SeqCst) - 1, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_through: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded: a frozen pump holds its sockets for at most a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if id <= frozen_through.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if id <= frozen_through.load(Ordering::SeqCst) {
            // Frozen while reading: these bytes are lost with the link.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_link_that_stalls_without_a_fin_is_detected_and_replaced() {
    let up = TestServer::start().await;
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    let proxy = Proxy::start(up.addr().port()).await;
    let mut edge = TestServer::prepare(&format!(
        "{}\n",
        upstream_toml(proxy.port, "server_name = \"localhost\"")
    ));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;
    let mut device = edge.v4("sensor", true).await;
    publish_seq(&mut device, 0, 5).await;
    assert_eq!(seqs(&mut watcher, 5).await, (0..5).collect::<Vec<_>>());

    proxy.freeze();
    publish_seq(&mut device, 5, 15).await;
    // Keep alive 2 s: the dead link is noticed within 3 s and replaced.
    wait_metric(&edge, "edgegate_upstream_reconnects_total", 1.0).await;
    assert_eq!(seqs(&mut watcher, 10).await, (5..15).collect::<Vec<_>>());
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_during_an_outage() {
    let (mut up, proxy) = upstream_down().await;
    let edge = TestServer::prepare("");
    trust(edge.dir.path(), &up.ca);
    let extra = upstream_toml(proxy.port, "server_name = \"localhost\"");
    let (mut child, mqtt, _) = spawn_binary(&edge, &extra, &[]);
    let mut device = V4::connect_to(&edge, mqtt, "sensor", true, None, |_| {}).await;
    publish_seq(&mut device, 0, 25).await;
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let (mut child, _, _) = spawn_binary(&edge, &extra, &[]);
    up.boot().await;
    proxy.set_target(up.addr().port());
    let mut watcher = up.v4("watcher", false).await;
    assert_eq!(seqs(&mut watcher, 25).await, (0..25).collect::<Vec<_>>());
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn the_rate_limit_holds_while_a_backlog_drains_at_that_rate() {
    const RATE: usize = 2000;
    const N: u32 = 10_000;
    let up = TestServer::start_with(&format!("[limits]\n{NO_RATE_LIMITS}")).await;
    let proxy = Proxy::start(up.addr().port()).await;
    proxy.set_open(false);
    let mut edge = TestServer::prepare(&format!(
        "[store]\nfsync = false\n[limits]\n{NO_RATE_LIMITS}{}",
        upstream_toml(
            proxy.port,
            &format!("server_name = \"localhost\"\nmax_publishes_per_second = {RATE}")
        )
    ));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    let mut device = edge.v4("sensor", true).await;
    // A backlog built while the link is down, published without waiting
    // for each acknowledgement.
    for seq in 0..N {
        device
            .publish("telemetry/t", QoS::AtLeastOnce, false, &seq.to_be_bytes())
            .await;
    }
    for _ in 0..N {
        device.puback().await;
    }
    // The watcher is there before the link comes back, so arrivals show
    // the pace at which the gateway sends.
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    // Timed from the moment the link opens, which is before anything can be
    // sent: a stalled receiver only makes arrivals later, so both bounds
    // below hold on a loaded machine.
    let opened = tokio::time::Instant::now();
    proxy.set_open(true);
    let mut arrivals = Vec::with_capacity(N as usize);
    let mut next = 0u32;
    while next < N {
        let got = watcher.recv().await;
        let seq = u32::from_be_bytes(got.payload[..4].try_into().expect("4 bytes"));
        if seq == next {
            arrivals.push(tokio::time::Instant::now());
            next += 1;
        } else {
            assert!(seq < next, "{seq} arrived before {next}");
        }
    }
    // No more than a second's worth (and a little) in the first second: a
    // gateway without a limit would deliver the whole backlog in it.
    let first_second = arrivals
        .iter()
        .filter(|t| t.duration_since(opened) < Duration::from_secs(1))
        .count();
    assert!(
        first_second <= RATE + RATE / 4,
        "{first_second} messages within the first second"
    );
    let took = arrivals[arrivals.len() - 1].duration_since(opened);
    // N / RATE windows: the last starts N / RATE - 1 seconds after the first.
    let least = Duration::from_secs_f64((N as f64 / RATE as f64 - 1.0) * 0.95);
    assert!(
        took >= least,
        "drained in {took:?}, faster than the rate allows"
    );
    assert!(
        took < least * 4,
        "drained in {took:?}: far slower than the rate allows"
    );
}

/// Eclipse Mosquitto on 127.0.0.1, requiring client certificates from `ca`;
/// killed when dropped.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
}

/// The Mosquitto binary, if installed. `.ci/run` installs it and
/// sets `EDGEGATE_ALL_TESTS`, under which a missing binary fails the test;
/// a plain `cargo test` leaves the test out and says so.
fn mosquitto_binary() -> Option<&'static str> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var_os("EDGEGATE_ALL_TESTS").is_none(),
            "Eclipse Mosquitto is not installed, and .ci/run runs every test"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "left out: a bridge test needs Eclipse Mosquitto (/usr/sbin/mosquitto); \
             `bash .ci/run` installs it and runs every test"
        );
    }
    found
}

impl Mosquitto {
    async fn start(dir: &Path, ca: &Ca, bin: &str) -> Self {
        // Mosquitto cannot listen on port 0: take a free port and give it
        // back; if something else takes it first, Mosquitto exits, and the
        // next attempt takes another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            if let Some(m) = Self::start_on(dir, ca, port, bin).await {
                return m;
            }
        }
        panic!("mosquitto did not start on any of five ports");
    }

    async fn start_on(dir: &Path, ca: &Ca, port: u16, bin: &str) -> Option<Self> {
        let server = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .expect("server cert");
        let (cert, key) = pki::write_pair(dir, "mosquitto", &server).expect("write cert");
        let ca_file = dir.join("mosquitto-ca.pem");
        pki::write(&ca_file, &ca.pem.cert, false).expect("write ca");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nlog_type error\nlistener {port} 127.0.0.1\n\
                 cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
                 use_identity_as_username true\nallow_anonymous true\n",
                ca_file.display(),
                cert.display(),
                key.display()
            ),
        )
        .expect("write conf");
        let mut child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if child.try_wait().expect("status").is_some() {
                // It could not listen there.
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                // Listening, and it is Mosquitto that does (it is still running).
                if child.try_wait().expect("status").is_none() {
                    return Some(Self { child, port });
                }
                return None;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mosquitto_with_required_client_certificates_is_an_upstream_too() {
    // Its certificates and clients come from this test server's CA.
    let Some(bin) = mosquitto_binary() else {
        return;
    };
    let mq_side = TestServer::prepare("");
    let mosquitto = Mosquitto::start(mq_side.dir.path(), &mq_side.ca, bin).await;
    let mut watcher = V4::connect_to(&mq_side, mosquitto.port, "watcher", true, None, |_| {}).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;

    let mut edge = TestServer::prepare(&upstream_toml(
        mosquitto.port,
        "mqtt_version = \"5\"\nserver_name = \"localhost\"",
    ));
    trust(edge.dir.path(), &mq_side.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;
    let mut device = edge.v4("sensor", true).await;
    device.subscribe("cmd/#", QoS::AtLeastOnce).await;
    publish_seq(&mut device, 0, 10).await;
    assert_eq!(seqs(&mut watcher, 10).await, (0..10).collect::<Vec<_>>());

    watcher
        .publish("commands/edge-a/reboot", QoS::AtLeastOnce, false, b"now")
        .await;
    let got = device.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("cmd/reboot", &b"now"[..])
    );
    wait_metric(&edge, "edgegate_upstream_forwarded_total", 10.0).await;
}

/// An upstream edgegate whose policy refuses `edge-a/telemetry/secret`,
/// and whose packets stop at `max_packet` bytes (its CONNACK says so).
async fn strict_upstream(max_packet: usize) -> TestServer {
    let mut up = TestServer::prepare(&format!(
        "[auth]\nprovisioning = {{ policies = [\"strict\"] }}\n[limits]\nmax_packet_bytes = {max_packet}\n"
    ));
    up.write_policy(
        "strict",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:us-east-1:000000000000:topic/edge-a/telemetry/secret"}]}"#,
    );
    up.boot().await;
    up
}

#[tokio::test]
async fn over_mqtt_5_refused_and_oversize_messages_are_dropped_counted_and_do_not_block() {
    let up = strict_upstream(1024).await;
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    let mut edge = TestServer::prepare(&upstream_toml(up.addr().port(), "mqtt_version = \"5\""));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;
    let mut device = edge.v4("sensor", true).await;
    // Refused for good upstream (PUBACK 0x87): dropped, counted, and the
    // next message is not held up behind it.
    device
        .publish("telemetry/secret", QoS::AtLeastOnce, false, b"no")
        .await;
    device.puback().await;
    // Larger than the upstream's Maximum Packet Size: never sent.
    device
        .publish("telemetry/big", QoS::AtLeastOnce, false, &[7u8; 2000])
        .await;
    device.puback().await;
    publish_seq(&mut device, 0, 3).await;
    assert_eq!(seqs(&mut watcher, 3).await, vec![0, 1, 2]);
    wait_metric(&edge, "edgegate_upstream_failed_total", 2.0).await;
    let m = edge.metrics().await;
    assert_eq!(metric(&m, "edgegate_upstream_failed_total"), 2.0);
    assert_eq!(metric(&m, "edgegate_upstream_forwarded_total"), 3.0);
    watcher.nothing_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_full_upstream_spool_refuses_new_publishes() {
    let (up, proxy) = upstream_down().await;
    let mut edge = TestServer::prepare(&upstream_toml(
        proxy.port,
        "server_name = \"localhost\"\nspool_max_bytes = 2000",
    ));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    // The link is down: messages wait in the spool until it is full, then
    // a publish is refused (MQTT 5: PUBACK 0x97), not dropped.
    let mut device = V5::connect(&edge, "sensor", |_| {}).await;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let mut refused_at = None;
    for i in 0..100u32 {
        device
            .client
            .publish(
                "telemetry/t",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                format!("{i:0>40}"),
            )
            .await
            .expect("queue");
        match device.puback().await {
            PubAckReason::Success => {}
            PubAckReason::QuotaExceeded => {
                refused_at = Some(i);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let refused_at = refused_at.expect("the spool filled up");
    assert!(refused_at > 3, "refused only when full, at {refused_at}");
    let health = http_get(edge.admin(), "/healthz").await;
    assert!(
        health.contains(&format!(r#""spool_records":{refused_at}"#)),
        "{health}"
    );
}

#[tokio::test]
async fn a_rules_upstream_action_sends_its_output_up() {
    let up = TestServer::start().await;
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    let mut edge = TestServer::prepare(&format!(
        "{}[[rules]]\nname = \"alarm\"\nsql = \"SELECT level, topic(2) AS room FROM 'alarms/+'\"\nactions = [{{ upstream = {{ topic = \"edge-a/alarms/${{topic(2)}}\" }} }}]\n",
        upstream_toml(up.addr().port(), "")
    ));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;
    let mut device = edge.v4("sensor", true).await;
    device
        .publish(
            "alarms/kitchen",
            QoS::AtLeastOnce,
            false,
            br#"{"level": 3, "x": 1}"#,
        )
        .await;
    device.puback().await;
    let got = watcher.recv().await;
    assert_eq!(got.topic, "edge-a/alarms/kitchen");
    let body: serde_json::Value = serde_json::from_slice(&got.payload).expect("json");
    assert_eq!(body, serde_json::json!({"level": 3, "room": "kitchen"}));
}

#[tokio::test]
async fn over_mqtt_5_the_upstreams_receive_maximum_is_respected() {
    // An upstream that takes one unacknowledged publish at a time, and ends
    // a connection that sends more (0x93).
    let up = TestServer::start_with("[limits]\nmax_inflight = 1\n").await;
    let mut watcher = up.v4("watcher", true).await;
    watcher.subscribe("edge-a/#", QoS::AtLeastOnce).await;
    let mut edge = TestServer::prepare(&upstream_toml(up.addr().port(), "mqtt_version = \"5\""));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;
    let mut device = edge.v4("sensor", true).await;
    for seq in 0..30u32 {
        device
            .publish("telemetry/t", QoS::AtLeastOnce, false, &seq.to_be_bytes())
            .await;
    }
    for _ in 0..30 {
        device.puback().await;
    }
    assert_eq!(seqs(&mut watcher, 30).await, (0..30).collect::<Vec<_>>());
    let m = edge.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_upstream_reconnects_total"),
        0.0,
        "one link all along: the window was never overrun"
    );
}

#[tokio::test]
async fn over_mqtt_5_the_bridge_keeps_the_keep_alive_the_upstream_assigns() {
    // The bridge asks for 2 s; the upstream assigns 1 s (Server Keep Alive)
    // and closes a link silent for 1.5 s. A bridge that kept its own 2 s
    // would be cut off and reconnect while idle.
    let up =
        TestServer::start_with("[mqtt]\nlisten = [\"127.0.0.1:0\"]\nmax_keep_alive_secs = 1\n")
            .await;
    let mut edge = TestServer::prepare(&upstream_toml(up.addr().port(), "mqtt_version = \"5\""));
    trust(edge.dir.path(), &up.ca);
    edge.boot().await;
    wait_metric(&edge, "edgegate_upstream_connected", 1.0).await;
    // Idle for several of the upstream's keep-alive deadlines: real time
    // has to pass for a keep alive to be kept or broken.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = edge.metrics().await;
    assert_eq!(metric(&m, "edgegate_upstream_reconnects_total"), 0.0);
    assert_eq!(metric(&m, "edgegate_upstream_connected"), 1.0);
}
