//! The operator's log: every refusal leaves a line, no client can flood it,
//! and nothing a client sends can forge a line. Drives the built binary and
//! reads what it writes to stderr.

mod common;

use common::*;
use edgegate::transport::pki::{Ca, KeyKind};
use rumqttc::v5::mqttbytes::QoS;

/// Allows everything but publishing under `denied/`.
const POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/denied/*"}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_leaves_one_line_and_no_client_floods_the_log() {
    let t = TestServer::prepare("");
    t.write_policy("open", POLICY);
    let (mut child, port, _, log) = spawn_logging({
        let config = write_config(t.dir.path(), &config_text(""));
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"));
        c.args(["serve", "--config"]).arg(&config);
        c
    });

    // A TLS failure names the source address and says why in words.
    let other = Ca::generate("other CA").expect("ca");
    let foreign = other
        .issue_device("intruder", KeyKind::EcdsaP256)
        .expect("cert");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Ok(mut raw) = Raw::connect(addr, t.tls_config(Some(&foreign))).await {
        raw.send(&connect_bytes(4, "intruder", 30)).await;
        raw.read_to_close().await;
    }
    log.wait_for(&[
        "TLS handshake refused",
        "principal=\"127.0.0.1\"",
        "not issued by a CA the gateway trusts",
    ])
    .await;

    // A thousand denied publishes from one device: a handful of lines.
    let dev = V5::connect_to(&t, port, "flooder", |_| {}).await;
    for _ in 0..1000 {
        dev.client
            .publish("denied/x", QoS::AtMostOnce, false, "x")
            .await
            .expect("queued");
    }
    log.wait_for(&["reason=\"denied\"", "resource=\"denied/x\""])
        .await;
    // Once a second has passed, the next denial brings the summary.
    let deadline = tokio::time::Instant::now() + WAIT;
    while log.lines("suppressed").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no summary line");
        dev.client
            .publish("denied/x", QoS::AtMostOnce, false, "x")
            .await
            .expect("queued");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let denials = log.lines("reason=\"denied\"");
    assert!(
        denials.len() <= 12,
        "1,000 denials made {} lines:\n{}",
        denials.len(),
        denials.join("\n")
    );
    let summary = log.lines("suppressed").remove(0);
    assert!(
        summary.contains("principal=") && summary.contains("similar"),
        "{summary}"
    );

    // A limit refusal says which limit, with the reason code.
    let mut dev = V5::connect_to(&t, port, "deep", |_| {}).await;
    dev.client
        .publish("a/b/c/d/e/f/g/h/i", QoS::AtLeastOnce, false, "x")
        .await
        .expect("queued");
    dev.puback().await;
    log.wait_for(&["publish refused", "code=0x90", "topic too long or too deep"])
        .await;

    // A client id with a line break cannot forge a line.
    let forger = t.device("forger");
    let c = V4::connect_with(
        &t,
        port,
        "evil\nINFO forged line",
        &forger,
        true,
        None,
        |_| {},
    )
    .await;
    c.client
        .publish("denied/y", rumqttc::QoS::AtMostOnce, false, "x")
        .await
        .expect("queued");
    log.wait_for(&["resource=\"denied/y\""]).await;
    for line in log.lines("forged line") {
        assert!(line.contains("evil\\nINFO forged line"), "{line}");
    }

    // A revoked certificate: its connection closes, and so does the next
    // attempt, each with its line.
    let victim = t.device("victim");
    edgegate::transport::pki::write_pair(&t.dir.path().join("certs"), "victim", &victim)
        .expect("write");
    let _v = V4::connect_with(&t, port, "victim", &victim, true, None, |_| {}).await;
    let file = t.dir.path().join("certs/victim.pem");
    let (ok, _, err) = run_cli(
        &t.config_file(),
        &["cert", "revoke", file.to_str().expect("utf8")],
    );
    assert!(ok, "{err}");
    log.wait_for(&["connection closed", "reason=\"certificate_inactive\""])
        .await;
    if let Ok(mut raw) = Raw::connect(addr, t.tls_config(Some(&victim))).await {
        raw.send(&connect_bytes(4, "victim", 30)).await;
        raw.read_to_close().await;
    }
    log.wait_for(&["certificate refused", "reason=\"revoked\""])
        .await;

    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[test]
fn json_lines_for_machines() {
    use std::io::{BufRead, BufReader};
    let t = TestServer::prepare("");
    let config = write_config(t.dir.path(), &config_text(""));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "edgegate=info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let listening = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .take(50)
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).expect("every line is JSON"))
        .find(|v| v["fields"]["message"] == "MQTT over mutual TLS");
    child.kill().expect("stop");
    child.wait().expect("reaped");
    let line = listening.expect("the listener line");
    assert!(
        line["fields"]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(line["level"], "INFO");
}
