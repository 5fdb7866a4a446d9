//! What the README promises about MQTT and the CLI, each end to end with
//! real clients: unsubscribing, retain handling, the topics clients may
//! not use, `iot:RetainPublish`, the protocol limits, certificate status
//! from the command line, and a control plane without a key.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAckReason, RetainForwardRule, SubscribeReasonCode,
};
use std::time::Duration;

/// How long a client is watched for a message that must not come.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn unsubscribe_stops_delivery_and_is_acknowledged() {
    let t = TestServer::start().await;
    let mut c = t.v5("unsub").await;
    c.client
        .subscribe("u/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    c.suback().await;
    assert_eq!(
        c.publish_qos1("u/1", false, "x").await,
        PubAckReason::Success
    );
    assert_eq!(&c.recv().await.topic[..], b"u/1");
    c.client.unsubscribe("u/#").await.expect("unsub");
    loop {
        match c.next().await {
            Ev5::Other(Packet::UnsubAck(a)) => {
                assert_eq!(a.reasons.len(), 1, "{a:?}");
                break;
            }
            Ev5::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    // Nobody subscribes now: MQTT 5 says so in the PUBACK (0x10).
    assert_eq!(
        c.publish_qos1("u/2", false, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    c.nothing_for(QUIET).await;
}

#[tokio::test]
async fn retain_handling_decides_when_retained_messages_are_sent() {
    let t = TestServer::start().await;
    let mut p = t.v5("keeper").await;
    assert_eq!(
        p.publish_qos1("r/kept", true, "x").await,
        PubAckReason::NoMatchingSubscribers,
        "kept, though nobody subscribes yet"
    );
    let mut c = t.v5("rh").await;
    let subscribe = |filter: &str, rule: RetainForwardRule| {
        let mut f = Filter::new(filter, QoS5::AtLeastOnce);
        f.retain_forward_rule = rule;
        f
    };
    // 0: at every subscribe.
    for _ in 0..2 {
        c.client
            .subscribe_many(vec![subscribe("r/#", RetainForwardRule::OnEverySubscribe)])
            .await
            .expect("sub");
        c.suback().await;
        let got = c.recv().await;
        assert!(got.retain && &got.topic[..] == b"r/kept");
    }
    // 1: only when the subscription is new.
    c.client
        .subscribe_many(vec![subscribe("r/+", RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("sub");
    c.suback().await;
    assert_eq!(&c.recv().await.topic[..], b"r/kept", "new: sent");
    c.client
        .subscribe_many(vec![subscribe("r/+", RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("sub");
    c.suback().await;
    c.nothing_for(QUIET).await;
    // 2: never.
    c.client
        .subscribe_many(vec![subscribe("r/kept", RetainForwardRule::Never)])
        .await
        .expect("sub");
    c.suback().await;
    c.nothing_for(QUIET).await;
}

#[tokio::test]
async fn clients_may_not_publish_events_nor_retain_on_dollar_topics() {
    let t = TestServer::start().await;
    let mut watcher = t.v5("watcher").await;
    watcher
        .client
        .subscribe("$aws/events/presence/+/x", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    watcher.suback().await;
    let mut c = t.v5("forger").await;
    assert_eq!(
        c.publish_qos1("$aws/events/presence/connected/x", false, "x")
            .await,
        PubAckReason::NotAuthorized
    );
    watcher.nothing_for(QUIET).await;
    assert_eq!(
        c.publish_qos1("$custom/state", true, "x").await,
        PubAckReason::ImplementationSpecificError,
        "retain on a $ topic (PUBACK has no 0x9A Retain not supported)"
    );
    // Not retained, the same topic is fine.
    assert_eq!(
        c.publish_qos1("$custom/state", false, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
}

#[tokio::test]
async fn retain_publish_is_its_own_permission() {
    let mut t = TestServer::prepare("[auth]\nprovisioning = { policies = [\"no-retain\"] }\n");
    t.write_policy(
        "no-retain",
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"], "Resource": "*"}]}"#,
    );
    t.boot().await;
    let mut c = t.v5("plain").await;
    assert_eq!(
        c.publish_qos1("data/1", false, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        c.publish_qos1("data/1", true, "x").await,
        PubAckReason::NotAuthorized
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_authz_denied_total{action=\"retainpublish\"}"),
        1.0
    );
    assert_eq!(metric(&m, "edgegate_retained_messages"), 0.0);
}

#[tokio::test]
async fn topic_and_filter_limits_answer_with_reason_codes() {
    let t = TestServer::start().await;
    let mut c = t.v5("limits").await;
    let deep = "a/b/c/d/e/f/g/h/i";
    assert_eq!(
        c.publish_qos1(deep, false, "x").await,
        PubAckReason::TopicNameInvalid,
        "more than 7 slashes"
    );
    let long = "t".repeat(257);
    assert_eq!(
        c.publish_qos1(&long, false, "x").await,
        PubAckReason::TopicNameInvalid,
        "more than 256 bytes"
    );
    let filters: Vec<Filter> = (0..9)
        .map(|i| Filter::new(format!("f/{i}"), QoS5::AtLeastOnce))
        .collect();
    c.client.subscribe_many(filters).await.expect("sub");
    let codes = c.suback().await;
    assert_eq!(codes.len(), 9);
    assert!(
        codes[..8]
            .iter()
            .all(|r| *r == SubscribeReasonCode::Success(QoS5::AtLeastOnce)),
        "{codes:?}"
    );
    assert_eq!(codes[8], SubscribeReasonCode::QuotaExceeded, "the ninth");
    c.client
        .subscribe(deep, QoS5::AtLeastOnce)
        .await
        .expect("sub");
    assert_ne!(
        c.suback().await,
        vec![SubscribeReasonCode::Success(QoS5::AtLeastOnce)]
    );
}

/// A CONNECT of MQTT 3.1.1 with any client id (the length encoded as MQTT
/// encodes it, so ids past 127 bytes fit).
fn connect_311(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

#[tokio::test]
async fn client_ids_past_128_bytes_or_starting_with_dollar_are_refused() {
    let t = TestServer::start().await;
    for (id, ok) in [
        ("c".repeat(128), true),
        ("c".repeat(129), false),
        ("$sys-client".to_owned(), false),
    ] {
        let mut raw = t.raw("ids").await;
        raw.send(&connect_311(&id)).await;
        let code = if ok { 0x00 } else { 0x02 };
        assert_eq!(
            raw.read_n(4).await,
            vec![0x20, 0x02, 0x00, code],
            "{} bytes, starts with {:?}",
            id.len(),
            id.chars().next()
        );
    }
}

#[tokio::test]
async fn certificate_status_from_the_command_line_decides_who_connects() {
    let mut t = TestServer::prepare("[auth]\nregistration = \"registry\"\n");
    let config = t.config_file();
    let cli = |args: &[&str]| run_cli(&config, args);
    let pem = t.device("lamp-7");
    let file = t.dir.path().join("lamp-7.pem");
    std::fs::write(&file, &pem.cert).expect("write");
    let file = file.to_str().expect("utf8");
    let (ok, out, err) = cli(&[
        "cert",
        "register",
        "--cert",
        file,
        "--inactive",
        "--policy",
        "open",
    ]);
    assert!(ok && out.contains("INACTIVE"), "{out}{err}");
    let (ok, _, err) = cli(&["thing", "create", "lamp-7"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["thing", "attach", "lamp-7", "--cert", file]);
    assert!(ok && out.starts_with("attached certificate "), "{out}{err}");
    t.boot().await;
    let connack = |t: &TestServer| {
        let (config, addr) = (t.tls_config(Some(&pem)), t.addr());
        async move {
            let mut raw = Raw::connect(addr, config).await.expect("tls");
            raw.send(&connect_bytes(4, "lamp-7", 30)).await;
            raw.read_n(4).await
        }
    };
    assert_eq!(
        connack(&t).await,
        vec![0x20, 0x02, 0x00, 0x05],
        "inactive: refused"
    );
    // Through the admin socket of the running gateway.
    let (ok, out, err) = tokio::task::spawn_blocking({
        let config = config.clone();
        let file = file.to_owned();
        move || run_cli(&config, &["cert", "activate", &file])
    })
    .await
    .expect("cli");
    assert!(
        ok && out.starts_with("activated certificate "),
        "{out}{err}"
    );
    assert_eq!(connack(&t).await, vec![0x20, 0x02, 0x00, 0x00], "active");
    let (ok, _, err) = tokio::task::spawn_blocking({
        let config = config.clone();
        let file = file.to_owned();
        move || run_cli(&config, &["cert", "deactivate", &file])
    })
    .await
    .expect("cli");
    assert!(ok, "{err}");
    assert_eq!(
        connack(&t).await,
        vec![0x20, 0x02, 0x00, 0x05],
        "deactivated"
    );
    // `thing attach` made lamp-7 the thing of this certificate's connections.
    let certs = t.server().registry.certificates();
    assert_eq!(certs.len(), 1);
    let principal = t.server().registry.principal_for(&certs[0].id, "lamp-7");
    assert_eq!(principal.thing.map(|t| t.name).as_deref(), Some("lamp-7"));
}

#[tokio::test]
async fn a_control_plane_without_a_key_refuses_every_request() {
    let t = TestServer::start().await;
    for (method, path) in [
        ("GET", "/things"),
        ("GET", "/certificates"),
        ("PUT", "/certificates/00?newStatus=REVOKED"),
        ("POST", "/topics/a?qos=1"),
        ("GET", "/things/x/shadow"),
    ] {
        let aws = Aws::new(t.admin(), "AKIDGUESS", "guess");
        let (status, body) = aws.call(method, path, "", &[], "").await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("the control plane is off"),
            "{body}"
        );
    }
    // /metrics and /healthz stay open on loopback.
    assert!(http_get(t.admin(), "/healthz").await.contains("\"ok\""));
}

#[tokio::test]
async fn a_rotated_ca_applies_without_a_restart_and_a_broken_file_keeps_the_previous() {
    let t = TestServer::start().await;
    let old_device = t.device("old-1");
    assert_eq!(
        connack_code(&t, client_tls(&t.ca.pem.cert, Some(&old_device)), "old-1").await,
        Some(0)
    );
    // The CA file now names a new CA (the server certificate stays).
    let rotated = edgegate::transport::pki::Ca::generate("rotated CA").expect("ca");
    let new_device = rotated
        .issue_device("new-1", edgegate::transport::pki::KeyKind::EcdsaP256)
        .expect("device");
    let ca_file = t.dir.path().join("certs/ca.pem");
    std::fs::write(&ca_file, &rotated.pem.cert).expect("rotate");
    let deadline = tokio::time::Instant::now() + WAIT;
    while connack_code(&t, client_tls(&t.ca.pem.cert, Some(&new_device)), "new-1").await != Some(0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated CA never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connack_code(&t, client_tls(&t.ca.pem.cert, Some(&old_device)), "old-2").await,
        None,
        "the old CA is no longer trusted"
    );
    // A broken file: the previous trust stays, and the failure is counted.
    let failures = metric(&t.metrics().await, "edgegate_reload_failures_total");
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("break");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, "edgegate_reload_failures_total") == failures {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connack_code(&t, client_tls(&t.ca.pem.cert, Some(&new_device)), "new-2").await,
        Some(0)
    );
}

#[tokio::test]
async fn the_data_directory_and_key_files_are_the_gateways_alone() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    let mut t = TestServer::prepare("");
    // What an earlier version, or a copy, left: readable by everyone.
    let data = t.dir.path().join("data");
    std::fs::create_dir_all(data.join("files")).expect("mkdir");
    std::fs::write(data.join("files/old.jsonl"), "{}\n").expect("write");
    let open = |p: &std::path::Path, m| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    open(&data, 0o755);
    open(&data.join("files"), 0o755);
    open(&data.join("files/old.jsonl"), 0o644);
    let key = t.dir.path().join("certs/device-9.key");
    std::fs::write(&key, "old").expect("write");
    open(&key, 0o644);
    t.boot().await;
    let mut c = t.v4("writer", true).await;
    c.publish("t", rumqttc::QoS::AtLeastOnce, true, b"kept")
        .await;
    c.puback().await;

    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&data.join("files")), 0o700, "a directory in it");
    assert_eq!(
        mode(&data.join("files/old.jsonl")),
        0o600,
        "a file that was there"
    );
    assert_eq!(mode(&data.join("edgegate.redb")), 0o600, "the store");
    edgegate::transport::pki::write_pair(
        &t.dir.path().join("certs"),
        "device-9",
        &t.device("device-9"),
    )
    .expect("write pair");
    assert_eq!(
        mode(&key),
        0o600,
        "a key file written over one that was 0644"
    );
}

#[tokio::test]
async fn retained_messages_are_bounded_per_certificate_and_in_all() {
    let t = TestServer::start_with(
        "[limits]\nmax_retained_messages = 3\nmax_retained_messages_per_principal = 2\n",
    )
    .await;
    let mut a = t.v5("retainer-a").await;
    assert_eq!(
        a.publish_qos1("r/a/1", true, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        a.publish_qos1("r/a/2", true, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        a.publish_qos1("r/a/3", true, "x").await,
        PubAckReason::QuotaExceeded,
        "a third retained message of one certificate"
    );
    assert_eq!(
        a.publish_qos1("r/a/1", true, "x").await,
        PubAckReason::NoMatchingSubscribers,
        "replacing one of its own is within its quota"
    );
    let mut b = t.v5("retainer-b").await;
    assert_eq!(
        b.publish_qos1("r/b/1", true, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        b.publish_qos1("r/b/2", true, "x").await,
        PubAckReason::QuotaExceeded,
        "three retained messages in all"
    );
    // A refused retained publish went nowhere: it is not retained.
    let mut watcher = t.v5("watcher").await;
    watcher
        .client
        .subscribe("r/#", QoS5::AtMostOnce)
        .await
        .expect("queued");
    watcher.suback().await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        topics.push(watcher.recv().await.topic);
    }
    topics.sort();
    assert_eq!(topics, ["r/a/1", "r/a/2", "r/b/1"].map(bytes::Bytes::from));
    // MQTT 3.1.1 has no refusing ack: the connection closes, unacknowledged.
    let mut old = t.v4("retainer-c", true).await;
    old.publish("r/c/1", rumqttc::QoS::AtLeastOnce, true, b"x")
        .await;
    assert!(
        matches!(old.next().await, Ev4::Error(_)),
        "the connection closes instead of an acknowledgement"
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_limit_refusals_total{limit=\"retained_messages\"}"
        ),
        3.0,
        "{m}"
    );
}
