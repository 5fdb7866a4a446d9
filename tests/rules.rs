//! The rules engine end to end: rules from `config.toml`, real MQTT
//! publishers, a real HTTP server on 127.0.0.1, files on disk, and the
//! gateway killed with `kill -9` while a target is down.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::*;
use rumqttc::QoS;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Fast retries, so that a target coming back is seen within a test's wait.
const FAST_RETRIES: &str = "[actions]\nretry_initial_ms = 20\nretry_max_ms = 200\n";

/// A request the sink accepted.
#[derive(Debug)]
struct Got {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

struct SinkState {
    status: AtomicU16,
    /// Milliseconds to wait before answering.
    delay_ms: std::sync::atomic::AtomicU64,
    /// A `Location` to send with the answer.
    location: parking_lot::Mutex<Option<String>>,
    tx: mpsc::UnboundedSender<Got>,
}

/// An HTTP server on 127.0.0.1 that answers every request with a status
/// the test sets, and reports the requests it answered with 200.
struct Sink {
    state: Arc<SinkState>,
    rx: mpsc::UnboundedReceiver<Got>,
}

async fn handle(
    State(s): State<Arc<SinkState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(s.status.load(Ordering::SeqCst)).expect("status");
    if status == StatusCode::OK {
        let _ = s.tx.send(Got {
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body,
        });
    }
    let mut answer = HeaderMap::new();
    if let Some(to) = s.location.lock().clone() {
        answer.insert("location", to.parse().expect("location"));
    }
    (status, answer)
}

/// HTTPS for the sink: each accepted connection finishes its handshake first.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn tls_acceptor(pem: &edgegate::transport::pki::Pem) -> tokio_rustls::TlsAcceptor {
    let certs = rustls_pemfile::certs(&mut pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = rustls_pemfile::private_key(&mut pem.key.as_bytes())
        .expect("key")
        .expect("a key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl Sink {
    /// Serves plain HTTP on any port.
    async fn start(status: u16) -> (Self, SocketAddr) {
        Self::serve(reserve(), status, None).await
    }

    /// Serves plain HTTP on a port [`reserve`]d before.
    async fn start_on(socket: tokio::net::TcpSocket, status: u16) -> (Self, SocketAddr) {
        Self::serve(socket, status, None).await
    }

    /// Serves HTTPS with `pem` on any port.
    async fn start_tls(pem: &edgegate::transport::pki::Pem) -> (Self, SocketAddr) {
        Self::serve(reserve(), 200, Some(tls_acceptor(pem))).await
    }

    async fn serve(
        socket: tokio::net::TcpSocket,
        status: u16,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (Self, SocketAddr) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(SinkState {
            status: AtomicU16::new(status),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
            location: parking_lot::Mutex::new(None),
            tx,
        });
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = match tls {
                Some(tls) => axum::serve(TlsListener { tcp: listener, tls }, app).await,
                None => axum::serve(listener, app).await,
            };
        });
        (Self { state, rx }, addr)
    }

    fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    async fn next(&mut self) -> Got {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a request in time")
            .expect("sink alive")
    }

    /// The `seq` fields of the next `n` distinct bodies, in arrival order
    /// (a retry after a lost answer may repeat one; it must not reorder).
    async fn seqs(&mut self, n: usize) -> Vec<u64> {
        let mut seen = Vec::new();
        while seen.len() < n {
            let got = self.next().await;
            let v: serde_json::Value = serde_json::from_slice(&got.body).expect("json body");
            let seq = v["seq"].as_u64().expect("seq");
            if !seen.contains(&seq) {
                seen.push(seq);
            }
        }
        seen
    }
}

/// A port of 127.0.0.1 bound but not listening: connections to it are
/// refused, and nothing else can take it before a [`Sink`] listens there.
fn reserve() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    socket
}

fn port_of(socket: &tokio::net::TcpSocket) -> u16 {
    socket.local_addr().expect("bound").port()
}

fn http_rule(port: u16) -> String {
    format!(
        r#"{FAST_RETRIES}
[[rules]]
name = "ingest"
sql = "SELECT seq, temp, topic(2) AS device FROM 'sensors/+/temp' WHERE temp > 30"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in/${{topic(2)}}", headers = [{{ key = "x-client", value = "${{clientid()}}" }}] }} }}]
"#
    )
}

async fn publish_seq(p: &mut V4, from: u64, to: u64) {
    for seq in from..to {
        let body = format!(r#"{{"seq": {seq}, "temp": 40}}"#);
        p.publish("sensors/d1/temp", QoS::AtLeastOnce, false, body.as_bytes())
            .await;
        p.puback().await;
    }
}

#[tokio::test]
async fn http_action_posts_the_selected_fields_with_templated_url_and_headers() {
    let (mut sink, addr) = Sink::start(200).await;
    let t = TestServer::start_with(&http_rule(addr.port())).await;
    let mut p = t.v4("thermo-7", true).await;
    p.publish(
        "sensors/d1/temp",
        QoS::AtLeastOnce,
        false,
        br#"{"seq": 1, "temp": 20}"#,
    )
    .await;
    p.puback().await;
    p.publish(
        "sensors/d1/temp",
        QoS::AtLeastOnce,
        false,
        br#"{"seq": 2, "temp": 42, "noise": true}"#,
    )
    .await;
    p.puback().await;
    let got = sink.next().await;
    assert_eq!(got.path, "/in/d1");
    assert_eq!(got.headers["x-client"], "thermo-7");
    assert_eq!(got.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"seq": 2, "temp": 42, "device": "d1"}),
        "the WHERE dropped seq 1; SELECT kept only its fields"
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_rule_matched_total{rule=\"ingest\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "edgegate_rule_evaluated_total{rule=\"ingest\"}"),
        1.0
    );
}

#[tokio::test]
async fn substituted_values_cannot_change_where_a_request_goes() {
    let (mut sink, addr) = Sink::start(200).await;
    let t = TestServer::start_with(&format!(
        r#"{FAST_RETRIES}
[[rules]]
name = "routed"
sql = "SELECT * FROM 'up/+/+'"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in/${{topic(2)}}?tag=${{topic(3)}}" }} }}]
error_action = {{ republish = {{ topic = "errors/${{ruleName}}", qos = 1 }} }}
"#,
        port = addr.port()
    ))
    .await;
    let mut errors = t.v4("ops", true).await;
    errors.subscribe("errors/#", QoS::AtLeastOnce).await;
    let mut p = t.v4("dev", true).await;
    p.publish("up/a?admin=1/x&y=2", QoS::AtLeastOnce, false, b"{}")
        .await;
    p.puback().await;
    let got = sink.next().await;
    assert_eq!(
        got.path, "/in/a%3Fadmin%3D1",
        "a value stays one path segment"
    );
    assert_eq!(
        got.query.as_deref(),
        Some("tag=x%26y%3D2"),
        "and one query value"
    );
    // A value that would climb out of the template's path goes to the
    // error action instead of anywhere else.
    p.publish("up/../x", QoS::AtLeastOnce, false, b"{}").await;
    p.puback().await;
    let err = errors.recv().await;
    let doc: serde_json::Value = serde_json::from_slice(&err.payload).expect("json");
    assert!(
        doc["failures"][0]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("leaves its template")),
        "{doc}"
    );
    assert!(
        sink.rx.try_recv().is_err(),
        "nothing else reached the target"
    );
}

#[tokio::test]
async fn an_unreachable_then_failing_target_loses_nothing_and_keeps_order() {
    let reserved = reserve();
    let t = TestServer::start_with(&http_rule(port_of(&reserved))).await;
    let mut p = t.v4("thermo", true).await;
    // Nothing listens: every message is acknowledged all the same.
    publish_seq(&mut p, 0, 10).await;
    // Up, but failing.
    let (mut sink, _) = Sink::start_on(reserved, 500).await;
    publish_seq(&mut p, 10, 20).await;
    let series = "edgegate_action_retries_total{rule=\"ingest\",action=\"0\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, series) < 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_spool_records{spool=\"rules/ingest/0\"}"),
        20.0
    );
    // Back: everything arrives, in order.
    sink.set_status(200);
    assert_eq!(sink.seqs(20).await, (0..20).collect::<Vec<_>>());
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(
        &t.metrics().await,
        "edgegate_spool_records{spool=\"rules/ingest/0\"}",
    ) != 0.0
    {
        assert!(tokio::time::Instant::now() < deadline, "spool not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn spooled_messages_survive_kill_9_while_the_target_is_down() {
    let (mut sink, addr) = Sink::start(503).await;
    let t = TestServer::prepare("");
    let extra = http_rule(addr.port());
    let (mut child, port, _) = spawn_binary(&t, &extra, &[]);
    let mut p = V4::connect_to(&t, port, "thermo", true, None, |_| {}).await;
    publish_seq(&mut p, 0, 30).await;
    // Every message is acknowledged, so it is in the spool; the power goes.
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let (mut child, port, _) = spawn_binary(&t, &extra, &[]);
    let mut p = V4::connect_to(&t, port, "thermo", true, None, |_| {}).await;
    publish_seq(&mut p, 30, 35).await;
    sink.set_status(200);
    assert_eq!(sink.seqs(35).await, (0..35).collect::<Vec<_>>());
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn file_action_appends_lines_rotates_and_cannot_leave_its_root() {
    let t = TestServer::start_with(
        r#"[actions]
file_root = "out"
file_max_bytes = 200
retry_initial_ms = 20
[[rules]]
name = "archive"
sql = "SELECT seq FROM 'logs/+'"
actions = [{ file = { path = "${topic(2)}/log.jsonl" } }]
error_action = { republish = { topic = "rules/errors" } }
"#,
    )
    .await;
    let mut errors = t.v4("watcher", true).await;
    errors.subscribe("rules/errors", QoS::AtLeastOnce).await;
    let mut p = t.v4("logger", true).await;
    const N: u64 = 40;
    for seq in 0..N {
        let body = format!(r#"{{"seq": {seq}}}"#);
        p.publish("logs/app", QoS::AtLeastOnce, false, body.as_bytes())
            .await;
        p.puback().await;
    }
    // `..` as a topic level would lead out of the root.
    p.publish("logs/..", QoS::AtLeastOnce, false, br#"{"seq": 99}"#)
        .await;
    p.puback().await;
    let err = errors.recv().await;
    let doc: serde_json::Value = serde_json::from_slice(&err.payload).expect("error document");
    assert_eq!(doc["ruleName"], "archive");
    assert_eq!(doc["topic"], "logs/..");
    assert_eq!(doc["clientId"], "logger");
    assert_eq!(doc["failures"][0]["failedAction"], "FileAction");
    assert_eq!(doc["failures"][0]["failedResource"], "../log.jsonl");
    assert!(!t.dir.path().join("log.jsonl").exists());

    let dir = t.dir.path().join("out/app");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut lines = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        // Rotated files are `log.jsonl.<ms>`: older first, the live file last.
        files.sort_by_key(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let suffix = name.as_deref().and_then(|n| n.strip_prefix("log.jsonl."));
            suffix
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            assert!(text.len() <= 200, "{} is past file_max_bytes", f.display());
            lines.extend(text.lines().map(str::to_owned));
        }
        if lines.len() as u64 >= N {
            let want: Vec<String> = (0..N).map(|s| format!(r#"{{"seq":{s}}}"#)).collect();
            assert_eq!(lines, want, "every line once, in order, across rotations");
            assert!(files.len() > 1, "the file rotated");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lines did not land");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rule_that_feeds_itself_stops_at_the_hop_limit() {
    let t = TestServer::start_with(
        r#"[actions]
max_hops = 3
[[rules]]
name = "echo"
sql = "SELECT * FROM 'loop/a'"
actions = [{ republish = { topic = "loop/a", qos = 1 } }]
"#,
    )
    .await;
    let mut s = t.v4("listener", true).await;
    s.subscribe("loop/a", QoS::AtLeastOnce).await;
    let mut p = t.v4("starter", true).await;
    p.publish("loop/a", QoS::AtLeastOnce, false, b"ping").await;
    p.puback().await;
    // The original and three republishes; the fourth generation is not made.
    for _ in 0..4 {
        assert_eq!(&s.recv().await.payload[..], b"ping");
    }
    let series = "edgegate_rule_evaluation_failures_total{rule=\"echo\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, series) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hop limit not reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.nothing_for(Duration::from_millis(300)).await;
    assert_eq!(
        metric(
            &t.metrics().await,
            "edgegate_rule_matched_total{rule=\"echo\"}"
        ),
        4.0
    );
}

#[tokio::test]
async fn an_edited_rule_applies_without_restart_and_a_broken_edit_changes_nothing() {
    let rule = |to: &str, sql: &str| {
        format!(
            "[[rules]]\nname = \"route\"\nsql = \"{sql}\"\nactions = [{{ republish = {{ topic = \"{to}\" }} }}]\n"
        )
    };
    let mut t = TestServer::start_with(&rule("out/a", "SELECT * FROM 'in'")).await;
    let mut s = t.v4("reader", true).await;
    s.subscribe("out/+", QoS::AtLeastOnce).await;
    let mut p = t.v4("writer", true).await;
    p.publish("in", QoS::AtLeastOnce, false, b"1").await;
    p.puback().await;
    assert_eq!(s.recv().await.topic, "out/a");

    t.extra_toml = rule("out/b", "SELECT * FROM 'in'");
    t.config_file();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        p.publish("in", QoS::AtLeastOnce, false, b"2").await;
        p.puback().await;
        if s.recv().await.topic == "out/b" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "edit not applied");
    }

    let failures = metric(&t.metrics().await, "edgegate_reload_failures_total");
    t.extra_toml = rule("out/c", "SELECT * FROM 'in' WHERE");
    t.config_file();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, "edgegate_reload_failures_total") <= failures {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broken edit not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Other files beside the configuration (a log, say) reload nothing:
    // the broken configuration is not read again.
    let failures = metric(&t.metrics().await, "edgegate_reload_failures_total");
    for i in 0..5 {
        std::fs::write(t.dir.path().join("gateway.log"), format!("line {i}\n")).expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&t.metrics().await, "edgegate_reload_failures_total"),
        failures
    );
    p.publish("in", QoS::AtLeastOnce, false, b"3").await;
    p.puback().await;
    // Drain what the polling loop above still had in flight.
    loop {
        let got = s.recv().await;
        if &got.payload[..] == b"3" {
            assert_eq!(got.topic, "out/b", "the broken edit kept the running rule");
            break;
        }
    }
}

#[tokio::test]
async fn https_targets_are_verified_against_the_configured_roots() {
    let mut t = TestServer::prepare("");
    let pem =
        t.ca.issue_server(&["localhost", "127.0.0.1"])
            .expect("server cert");
    let (mut sink, addr) = Sink::start_tls(&pem).await;
    // A target whose certificate another CA signed is never trusted: its
    // jobs fail until they age out to the error action.
    let stranger = edgegate::transport::pki::Ca::generate("stranger CA")
        .expect("ca")
        .issue_server(&["localhost", "127.0.0.1"])
        .expect("server cert");
    let (mut untrusted, stranger_addr) = Sink::start_tls(&stranger).await;
    t.extra_toml = format!(
        r#"[actions]
http_ca = "certs/ca.pem"
retry_initial_ms = 20
retry_max_ms = 200
spool_max_age_secs = 1
[[rules]]
name = "secure"
sql = "SELECT * FROM 'secure/in'"
actions = [{{ http = {{ url = "https://localhost:{port}/in" }} }}]
[[rules]]
name = "stranger"
sql = "SELECT * FROM 'stranger/in'"
actions = [{{ http = {{ url = "https://localhost:{stranger}/in" }} }}]
error_action = {{ republish = {{ topic = "errors/${{ruleName}}", qos = 1 }} }}
"#,
        port = addr.port(),
        stranger = stranger_addr.port(),
    );
    t.boot().await;
    let mut errors = t.v4("ops", true).await;
    errors.subscribe("errors/#", QoS::AtLeastOnce).await;
    let mut p = t.v4("dev", true).await;
    p.publish("secure/in", QoS::AtLeastOnce, false, b"\x00\x01binary")
        .await;
    p.puback().await;
    let got = sink.next().await;
    assert_eq!(
        &got.body[..],
        b"\x00\x01binary",
        "SELECT * of a binary payload is the payload"
    );
    assert_eq!(got.headers["content-type"], "application/octet-stream");

    p.publish("stranger/in", QoS::AtLeastOnce, false, br#"{"v": 2}"#)
        .await;
    p.puback().await;
    let err = errors.recv().await;
    assert_eq!(err.topic, "errors/stranger");
    let doc: serde_json::Value = serde_json::from_slice(&err.payload).expect("json");
    assert_eq!(doc["failures"][0]["failedAction"], "HttpAction", "{doc}");
    assert!(
        untrusted.rx.try_recv().is_err(),
        "nothing reached the untrusted target"
    );
}

#[tokio::test]
async fn a_refusing_target_sends_the_job_to_the_error_action() {
    let (sink, addr) = Sink::start(400).await;
    let t = TestServer::start_with(&format!(
        r#"{FAST_RETRIES}
[[rules]]
name = "strict"
sql = "SELECT * FROM 'strict/in'"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in" }} }}]
error_action = {{ republish = {{ topic = "errors/${{ruleName}}", qos = 1 }} }}
"#,
        port = addr.port()
    ))
    .await;
    let mut errors = t.v4("ops", true).await;
    errors.subscribe("errors/#", QoS::AtLeastOnce).await;
    let mut p = t.v4("dev", true).await;
    p.publish("strict/in", QoS::AtLeastOnce, false, br#"{"v": 1}"#)
        .await;
    p.puback().await;
    let err = errors.recv().await;
    assert_eq!(
        err.topic, "errors/strict",
        "error action templates see the document"
    );
    let doc: serde_json::Value = serde_json::from_slice(&err.payload).expect("json");
    assert_eq!(doc["failures"][0]["failedAction"], "HttpAction");
    assert!(
        doc["failures"][0]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("400")),
        "{doc}"
    );
    assert_eq!(doc["base64OriginalPayload"], "eyJ2IjogMX0=");
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_action_failures_total{rule=\"strict\",action=\"0\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "edgegate_action_retries_total{rule=\"strict\",action=\"0\"}"
        ),
        0.0,
        "a 4xx answer is not retried"
    );
    drop(sink);
}

#[tokio::test]
async fn a_full_spool_refuses_new_publishes_or_pushes_the_oldest_to_the_error_action() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let reserved = reserve();
    let port = port_of(&reserved);
    let rule = |overflow: &str| {
        format!(
            r#"[actions]
spool_max_bytes = 2000
spool_overflow = "{overflow}"
retry_initial_ms = 1000
[[rules]]
name = "bounded"
sql = "SELECT * FROM 'bounded/in'"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in" }} }}]
error_action = {{ republish = {{ topic = "errors/bounded", qos = 1 }} }}
"#
        )
    };

    // refuse_new: once full, a QoS 1 publish gets PUBACK 0x97 and is not taken.
    let t = TestServer::start_with(&rule("refuse_new")).await;
    let mut c = V5::connect(&t, "dev", |_| {}).await;
    let mut refused_at = None;
    for i in 0..40 {
        c.client
            .publish(
                "bounded/in",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                format!("{i:0>40}"),
            )
            .await
            .expect("pub");
        let reason = loop {
            match c.next().await {
                Ev5::Other(Packet::PubAck(a)) => break a.reason,
                Ev5::Error(e) => panic!("connection failed: {e}"),
                _ => {}
            }
        };
        if reason == PubAckReason::QuotaExceeded {
            refused_at = Some(i);
            break;
        }
        assert_eq!(reason, PubAckReason::Success, "a rule matched: {reason:?}");
    }
    let refused_at = refused_at.expect("the spool filled up");
    assert!(refused_at > 3, "refused only when full, at {refused_at}");
    drop(t);

    // drop_oldest: the new message is taken; the oldest goes to the error action.
    let t = TestServer::start_with(&rule("drop_oldest")).await;
    let mut errors = t.v4("ops", true).await;
    errors.subscribe("errors/bounded", QoS::AtLeastOnce).await;
    let mut p = t.v4("dev", true).await;
    for i in 0..40 {
        p.publish(
            "bounded/in",
            QoS::AtLeastOnce,
            false,
            format!("{i:0>40}").as_bytes(),
        )
        .await;
        p.puback().await;
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&errors.recv().await.payload).expect("json");
    assert_eq!(
        doc["failures"][0]["errorMessage"], "pushed out of a full spool",
        "{doc}"
    );
    // The oldest, or (while the oldest is out for delivery) the next one.
    let oldest = [
        "MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA==",
        "MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMQ==",
    ];
    assert!(
        oldest.iter().any(|o| doc["base64OriginalPayload"] == *o),
        "{doc}"
    );
}

#[tokio::test]
async fn republish_sets_mqtt5_properties_from_templates() {
    let t = TestServer::start_with(
        r#"[[rules]]
name = "relay"
sql = "SELECT level, upper(msg) AS msg FROM 'app/+/log' WHERE level = 'error'"
actions = [{ republish = { topic = "alerts/${topic(2)}", qos = 1, retain = true, headers = { content_type = "application/json", payload_format_indicator = "UTF8_DATA", message_expiry = "60", user_properties = [{ key = "from", value = "${clientid()}" }] } } }]
"#,
    )
    .await;
    let mut s = V5::connect(&t, "console", |_| {}).await;
    s.client
        .subscribe("alerts/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("sub");
    s.suback().await;
    let mut p = t.v4("app-3", true).await;
    p.publish(
        "app/web/log",
        QoS::AtLeastOnce,
        false,
        br#"{"level": "error", "msg": "disk full"}"#,
    )
    .await;
    p.puback().await;
    let got = s.recv().await;
    assert_eq!(&got.topic[..], b"alerts/web");
    let body: serde_json::Value = serde_json::from_slice(&got.payload).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"level": "error", "msg": "DISK FULL"})
    );
    let props = got.properties.expect("properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert!(props.message_expiry_interval.is_some_and(|s| s <= 60));
    assert_eq!(
        props.user_properties,
        vec![("from".to_owned(), "app-3".to_owned())]
    );
    // Retained: a later subscriber gets it too.
    let mut late = t.v4("late", true).await;
    late.subscribe("alerts/web", QoS::AtLeastOnce).await;
    assert!(late.recv().await.retain);
}

#[tokio::test]
async fn an_error_action_that_feeds_its_own_rule_stops_at_the_hop_limit() {
    let (_sink, addr) = Sink::start(400).await;
    let t = TestServer::start_with(&format!(
        r#"[actions]
max_hops = 3
[[rules]]
name = "selfish"
sql = "SELECT * FROM 'errs/#'"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in" }} }}]
error_action = {{ republish = {{ topic = "errs/x", qos = 1 }} }}
"#,
        port = addr.port()
    ))
    .await;
    let mut s = t.v4("ops", true).await;
    s.subscribe("errs/x", QoS::AtLeastOnce).await;
    let mut p = t.v4("dev", true).await;
    p.publish("errs/in", QoS::AtLeastOnce, false, b"x").await;
    p.puback().await;
    // Error documents of the original and of the first two generations.
    for _ in 0..3 {
        s.recv().await;
    }
    let series = "edgegate_rule_evaluation_failures_total{rule=\"selfish\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, series) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hop limit not reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.nothing_for(Duration::from_millis(300)).await;
}

/// Waits until `series` is at least `least`, within `WAIT`.
async fn metric_reaches(t: &TestServer, series: &str, least: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, series) < least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http_retries_on_429_and_timeouts_and_never_follows_redirects() {
    let (mut sink, addr) = Sink::start(429).await;
    let (mut elsewhere, elsewhere_addr) = Sink::start(200).await;
    let t = TestServer::start_with(&format!(
        r#"{FAST_RETRIES}
[[rules]]
name = "ingest"
sql = "SELECT * FROM 'sensors/+/temp'"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in", timeout_ms = 200 }} }}]
error_action = {{ republish = {{ topic = "errors/${{ruleName}}", qos = 1 }} }}
"#,
        port = addr.port()
    ))
    .await;
    let mut errors = t.v4("ops", true).await;
    errors.subscribe("errors/#", QoS::AtLeastOnce).await;
    let mut p = t.v4("thermo", true).await;
    let retries = "edgegate_action_retries_total{rule=\"ingest\",action=\"0\"}";
    // 429: retried, then delivered once the target takes it.
    publish_seq(&mut p, 0, 1).await;
    metric_reaches(&t, retries, 2.0).await;
    sink.set_status(200);
    assert_eq!(sink.seqs(1).await, vec![0]);
    // Too slow to answer: retried, then delivered once it is fast again.
    let before = metric(&t.metrics().await, retries);
    sink.state.delay_ms.store(1000, Ordering::SeqCst);
    publish_seq(&mut p, 1, 2).await;
    metric_reaches(&t, retries, before + 2.0).await;
    sink.state.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(sink.seqs(1).await, vec![1]);
    // A redirect is a failure: to the error action, and nothing follows it.
    sink.set_status(307);
    *sink.state.location.lock() = Some(format!("http://{elsewhere_addr}/moved"));
    publish_seq(&mut p, 2, 3).await;
    let doc: serde_json::Value =
        serde_json::from_slice(&errors.recv().await.payload).expect("json");
    assert_eq!(doc["failures"][0]["failedAction"], "HttpAction", "{doc}");
    assert!(
        doc["failures"][0]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("307")),
        "{doc}"
    );
    assert!(
        elsewhere.rx.try_recv().is_err(),
        "the redirect was followed"
    );
    errors.nothing_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_evaluation_failure_reports_every_failed_action_in_one_document() {
    let t = TestServer::start_with(
        r##"[[rules]]
name = "twice"
sql = "SELECT * FROM 'in/+'"
actions = [
  { republish = { topic = "out/${dest}/a" } },
  { republish = { topic = "out/${dest}/b" } },
]
error_action = { republish = { topic = "errors/${ruleName}", qos = 1 } }
"##,
    )
    .await;
    let mut errors = t.v4("ops", true).await;
    errors.subscribe("errors/#", QoS::AtLeastOnce).await;
    let mut p = t.v4("dev", true).await;
    // `#` in a topic name: both topics are invalid after substitution.
    p.publish("in/x", QoS::AtLeastOnce, false, br##"{"dest": "#"}"##)
        .await;
    p.puback().await;
    let doc: serde_json::Value =
        serde_json::from_slice(&errors.recv().await.payload).expect("json");
    let failures = doc["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 2, "{doc}");
    assert!(
        failures
            .iter()
            .all(|f| f["failedAction"] == "RepublishAction"),
        "{doc}"
    );
    errors.nothing_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_full_refuse_new_spool_closes_an_mqtt_311_connection_unacknowledged() {
    let reserved = reserve();
    let t = TestServer::start_with(&format!(
        r#"[actions]
spool_max_bytes = 2000
spool_overflow = "refuse_new"
retry_initial_ms = 1000
[[rules]]
name = "bounded"
sql = "SELECT * FROM 'bounded/in'"
actions = [{{ http = {{ url = "http://127.0.0.1:{port}/in" }} }}]
"#,
        port = port_of(&reserved)
    ))
    .await;
    let mut p = t.v4("dev", true).await;
    let mut closed_at = None;
    for i in 0..40 {
        p.publish(
            "bounded/in",
            QoS::AtLeastOnce,
            false,
            format!("{i:0>40}").as_bytes(),
        )
        .await;
        let acked = loop {
            match p.next().await {
                Ev4::Other(rumqttc::Packet::PubAck(_)) => break true,
                Ev4::Error(_) => break false,
                _ => {}
            }
        };
        if !acked {
            closed_at = Some(i);
            break;
        }
    }
    let closed_at = closed_at.expect("the spool filled up");
    assert!(closed_at > 3, "refused only when full, at {closed_at}");
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_spool_records{spool=\"rules/bounded/0\"}"),
        f64::from(closed_at),
        "the refused publish was not taken"
    );
}

#[tokio::test]
async fn jobs_of_a_removed_rule_are_still_delivered() {
    let reserved = reserve();
    let port = port_of(&reserved);
    let t = TestServer::start_with(&http_rule(port)).await;
    let mut p = t.v4("thermo", true).await;
    publish_seq(&mut p, 0, 5).await;
    // The rule goes from the file; its five jobs stay spooled. Its removal
    // shows when a matching publish is no longer counted (a QoS 1 publish
    // that a rule matches is acknowledged after the rule evaluated it).
    std::fs::write(t.config_file(), config_text("")).expect("rewrite");
    let matched = "edgegate_rule_matched_total{rule=\"ingest\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let before = metric(&t.metrics().await, matched);
        publish_seq(&mut p, 99, 100).await;
        if metric(&t.metrics().await, matched) == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rule was never removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut sink, _) = Sink::start_on(reserved, 200).await;
    let seqs = sink.seqs(5).await;
    assert_eq!(&seqs[..5], &[0, 1, 2, 3, 4], "{seqs:?}");
}

#[tokio::test]
async fn basic_ingest_reaches_only_the_rule_it_names_with_the_topic_after_its_prefix() {
    let t = TestServer::start_with(
        r#"
[[rules]]
name = "BuildingManager"
sql = "SELECT topic() AS t, topic(3) AS floor, level FROM 'Buildings/#'"
actions = [{ republish = { topic = "out/${topic(2)}", qos = 1 } }]

[[rules]]
name = "nosy"
sql = "SELECT * FROM '$aws/rules/#'"
actions = [{ republish = { topic = "out/nosy" } }]
"#,
    )
    .await;
    let mut ops = t.v4("ops", true).await;
    ops.subscribe("out/#", QoS::AtLeastOnce).await;
    let mut direct = t.v4("direct", true).await;
    direct.subscribe("$aws/rules/#", QoS::AtLeastOnce).await;
    let mut p = t.v4("building-5", true).await;
    // Seven levels after the prefix: the prefix does not count toward the
    // limit of seven slashes.
    p.publish(
        "$aws/rules/BuildingManager/Buildings/Building5/Floor2/Room201/Lights/a/b",
        QoS::AtLeastOnce,
        false,
        br#"{"level": 3}"#,
    )
    .await;
    p.puback().await;
    let got = ops.recv().await;
    assert_eq!(got.topic, "out/Building5");
    let doc: serde_json::Value = serde_json::from_slice(&got.payload).expect("json");
    assert_eq!(
        doc,
        serde_json::json!({"t": "Buildings/Building5/Floor2/Room201/Lights/a/b", "floor": "Floor2", "level": 3})
    );
    // Not to subscribers, not to the other rule, not retained.
    direct
        .nothing_for(std::time::Duration::from_millis(300))
        .await;
    ops.nothing_for(std::time::Duration::from_millis(300)).await;

    // A rule that does not exist: dropped, counted, and the publisher's
    // QoS 1 is acknowledged all the same.
    p.publish("$aws/rules/Nobody/x", QoS::AtLeastOnce, false, b"{}")
        .await;
    p.puback().await;
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_messages_dropped_total{reason=\"rule_not_found\"}"
        ),
        1.0
    );
}
