//! The load tool against a real gateway over mutual TLS: every scenario
//! runs small and its report says what a user would check (nothing lost,
//! nothing reordered, figures present).

mod common;

use common::*;
use edgegate::codec::{Protocol, QoS};
use edgegate::loadgen::{self, Options, client::Target};
use std::time::Duration;

fn options(t: &TestServer, scenario: &str, qos: QoS) -> Options {
    let pem = t.device("bench");
    Options {
        scenario: scenario.into(),
        target: Target {
            addr: t.addr(),
            tls: Some(t.tls_config(Some(&pem))),
            protocol: Protocol::V4,
            websocket: false,
        },
        connections: 20,
        concurrency: 4,
        hold_secs: 0,
        publishers: 3,
        messages: 300,
        size: 64,
        qos,
        subscribers: 3,
        rate: 200,
        duration_secs: 1,
        window: 20,
        timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn conn_reports_rate_and_handshake_percentiles() {
    let t = TestServer::start().await;
    let r = loadgen::run(&options(&t, "conn", QoS::AtMostOnce))
        .await
        .expect("runs");
    assert_eq!(r["connections"], 20, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["connections_per_s"].as_f64() > Some(0.0), "{r}");
    assert!(
        r["handshake_p99_ms"].as_f64() >= r["handshake_p50_ms"].as_f64(),
        "{r}"
    );
    assert_eq!(r["tls"], true);
    assert!(r["tool_cpu_s"].is_number());
}

#[tokio::test]
async fn conn_counts_failed_connections_by_why_they_failed() {
    let mut t = TestServer::prepare("");
    // Clients bench-conn-1 and bench-conn-10 to -19 may not connect.
    t.write_policy(
        "open",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:*","Resource":"*"},
            {"Effect":"Deny","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/bench-conn-1*"}]}"#,
    );
    t.boot().await;
    let r = loadgen::run(&options(&t, "conn", QoS::AtMostOnce))
        .await
        .expect("runs");
    assert_eq!(r["connections"], 9, "{r}");
    assert_eq!(r["failed"], 11, "{r}");
    assert_eq!(
        r["failures"],
        serde_json::json!({"connack 0x87": 11}),
        "{r}"
    );

    // A certificate of a CA the gateway does not know.
    let stranger = edgegate::transport::pki::Ca::generate("stranger CA")
        .expect("ca")
        .issue_device("bench", edgegate::transport::pki::KeyKind::EcdsaP256)
        .expect("device cert");
    let mut o = options(&t, "conn", QoS::AtMostOnce);
    o.target.tls = Some(t.tls_config(Some(&stranger)));
    o.connections = 3;
    let r = loadgen::run(&o).await.expect("runs");
    assert_eq!(r["connections"], 0, "{r}");
    let failures = r["failures"].as_object().expect("failures by kind");
    assert_eq!(failures.len(), 1, "{r}");
    let (kind, count) = failures.iter().next().expect("one kind");
    assert!(kind.starts_with("tls alert "), "{r}");
    assert_eq!(count, 3, "{r}");
}

#[tokio::test]
async fn fanin_at_every_qos_loses_and_reorders_nothing() {
    let t = TestServer::start().await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let o = options(&t, "fanin", qos);
        let sent = o.publishers * o.messages;
        let r = loadgen::run(&o).await.expect("runs");
        assert_eq!(r["messages"], sent, "{r}");
        assert_eq!(r["delivered"], sent, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["duplicates"], 0, "{r}");
        assert_eq!(r["reordered"], 0, "{r}");
        assert_eq!(r["timed_out"], false, "{r}");
        assert!(r["delivered_per_s"].as_f64() > Some(0.0), "{r}");
    }
}

#[tokio::test]
async fn fanout_delivers_to_every_subscriber() {
    let t = TestServer::start().await;
    let o = options(&t, "fanout", QoS::AtLeastOnce);
    let r = loadgen::run(&o).await.expect("runs");
    assert_eq!(r["deliveries"], o.messages * o.subscribers, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["reordered"], 0, "{r}");
    assert!(r["deliveries_per_s"].as_f64() > Some(0.0), "{r}");
}

#[tokio::test]
async fn latency_measures_after_the_warm_up() {
    let t = TestServer::start().await;
    let o = options(&t, "latency", QoS::AtMostOnce);
    let r = loadgen::run(&o).await.expect("runs");
    let sent = o.rate * o.duration_secs;
    assert_eq!(r["messages"], sent, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(
        r["measured"],
        sent - sent / 10,
        "the first tenth is the warm-up: {r}"
    );
    let (p50, p99) = (r["p50_ms"].as_f64(), r["p99_ms"].as_f64());
    assert!(p50 > Some(0.0) && p99 >= p50, "{r}");
}

/// `edgegate bench SCENARIO --broker BROKER` with a device certificate of
/// the test's CA written beside it.
fn bench_command(t: &TestServer, scenario: &str, broker: &str) -> std::process::Command {
    let pem = t.device("bench");
    let certs = t.dir.path().join("certs");
    edgegate::transport::pki::write_pair(&certs, "bench", &pem).expect("write cert");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"));
    command
        .args(["bench", scenario, "--broker", broker])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("bench.pem"))
        .arg("--key")
        .arg(certs.join("bench.key"));
    command
}

#[test]
fn the_command_line_prints_one_json_line_and_refuses_other_hosts() {
    let t = TestServer::prepare("");
    let (mut child, port, _) = spawn_binary(&t, "", &[]);
    let run = |broker: String| {
        bench_command(&t, "fanin", &broker)
            .args(["--publishers", "2", "--messages", "100", "--qos", "1"])
            .args(["--timeout-secs", "30"])
            .output()
            .expect("run")
    };
    let out = run(format!("127.0.0.1:{port}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(report["delivered"], 200, "{report}");
    let out = run("10.1.2.3:8883".into());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1 only"));
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[test]
fn the_gateway_raises_its_open_files_limit_to_serve_its_connections() {
    let t = TestServer::prepare("");
    let config = write_config(
        t.dir.path(),
        &config_text("[limits]\nmax_connections = 1000\nconnections_per_second_per_address = 0\n"),
    );
    // Started with a soft limit of 256 open files, below 300 connections.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_edgegate"))
        .arg(&config);
    let (mut child, port, _) = spawn_serving(command);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let open_files: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (soft, hard) = (open_files[0], open_files[1]);
    assert!(
        soft >= hard.min(1000) && soft <= hard,
        "enough for max_connections, within the hard limit: {limits}"
    );
    let out = bench_command(&t, "conn", &format!("127.0.0.1:{port}"))
        .args(["--connections", "300", "--concurrency", "16"])
        .args(["--hold-secs", "1", "--timeout-secs", "60"])
        .output()
        .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["connections"], 300, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn shadow_updates_each_device_and_waits_for_every_answer() {
    let t = TestServer::start().await;
    let o = options(&t, "shadow", QoS::AtLeastOnce);
    let r = loadgen::run(&o).await.expect("runs");
    assert_eq!(
        (r["devices"].as_u64(), r["updates"].as_u64()),
        (
            Some(o.publishers as u64),
            Some((o.publishers * o.messages) as u64)
        ),
        "{r}"
    );
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert!(r["p99_ms"].as_f64() >= r["p50_ms"].as_f64(), "{r}");
    // Every update was stored: each device's shadow is at its last version.
    let mut dev = t.v4("check", true).await;
    dev.subscribe(
        "$aws/things/+/shadow/get/accepted",
        rumqttc::QoS::AtLeastOnce,
    )
    .await;
    dev.publish(
        "$aws/things/bench-shadow-2/shadow/get",
        rumqttc::QoS::AtLeastOnce,
        false,
        b"{}",
    )
    .await;
    let got: serde_json::Value = serde_json::from_slice(&dev.recv().await.payload).expect("json");
    assert_eq!(
        (got["version"].as_u64(), &got["state"]["reported"]["n"]),
        (Some(300), &serde_json::json!(299))
    );
}

#[tokio::test]
async fn flood_measures_a_well_behaved_client_alone_then_next_to_flooders() {
    let t = TestServer::start().await;
    let mut o = options(&t, "flood", QoS::AtMostOnce);
    // Within the default 100 publishes a second of one connection.
    o.rate = 50;
    let r = loadgen::run(&o).await.expect("runs");
    for phase in ["alone", "flooded"] {
        let p = &r[phase];
        assert_eq!(p["messages"], 50, "{r}");
        assert_eq!(p["lost"], 0, "{phase}: {r}");
        assert_eq!(p["measured"], 45, "{phase}: {r}");
    }
    assert!(r["p99_ratio"].as_f64() > Some(0.0), "{r}");
    assert!(r["flood_sent"].as_u64() > Some(0), "{r}");
    assert!(r["flood_connections"].as_u64() >= Some(3), "{r}");
    // The flooders went over the connection's publish rate, and were held to it.
    let m = t.metrics().await;
    assert!(
        metric(&m, "edgegate_limit_refusals_total{limit=\"publish_rate\"}") > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn every_scenario_runs_over_websockets_too() {
    let t = TestServer::start().await;
    for scenario in ["conn", "fanin", "latency"] {
        let mut o = options(&t, scenario, QoS::AtLeastOnce);
        o.target.websocket = true;
        let r = loadgen::run(&o).await.expect("runs");
        if scenario == "fanin" {
            assert_eq!(r["messages"], o.publishers * o.messages, "{r}");
        } else {
            assert_eq!(r["failed"].as_u64().unwrap_or(0), 0, "{r}");
        }
        assert_eq!(r["websocket"], true, "{r}");
    }
    let metrics = t.metrics().await;
    assert!(
        metric(
            &metrics,
            "edgegate_transport_connections_total{transport=\"websocket\"}"
        ) >= 20.0
    );
}
