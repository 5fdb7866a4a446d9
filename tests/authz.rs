//! Authorization as devices meet it: AWS IoT policies on every operation,
//! registration modes, and policy reloads on live connections.

mod common;

use common::*;
use rumqttc::QoS;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use std::time::Duration;

/// The repository's device policy, and a device provisioned with it.
const DEVICE_AUTH: &str = "[auth]\nprovisioning = { policies = [\"device\"] }\n";

fn with_device_policy(t: &TestServer) {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/device.json");
    t.write_policy(
        "device",
        &std::fs::read_to_string(shipped).expect("device.json"),
    );
}

async fn start_with_device_policy() -> TestServer {
    let mut t = TestServer::prepare(DEVICE_AUTH);
    with_device_policy(&t);
    t.restart().await;
    t
}

async fn denied(t: &TestServer, action: &str) -> f64 {
    metric(
        &t.metrics().await,
        &format!("edgegate_authz_denied_total{{action=\"{action}\"}}"),
    )
}

#[tokio::test]
async fn a_device_connects_only_as_its_own_thing() {
    let t = start_with_device_policy().await;
    // Its certificate says lamp-1: client id lamp-1 is its thing.
    let _ok = t.v4("lamp-1", true).await;
    // The same certificate with another client id has no thing, so no Connect.
    let pem = t.device("lamp-2");
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    raw.send(&connect_bytes(4, "someone-else", 30)).await;
    assert_eq!(raw.read_to_close().await, vec![0x20, 0x02, 0x00, 0x05]);
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    raw.send(&connect_bytes(5, "someone-else", 30)).await;
    let connack = raw.read_to_close().await;
    assert_eq!(connack[3], 0x87, "MQTT 5: Not authorized: {connack:?}");
    assert_eq!(denied(&t, "connect").await, 2.0);
}

#[tokio::test]
async fn publish_and_subscribe_are_confined_to_the_devices_topics() {
    let t = start_with_device_policy().await;
    let mut c = t.v5("meter-1").await;
    // Its own topics: allowed.
    c.client
        .subscribe("things/meter-1/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as R;
    assert_eq!(c.suback().await, vec![R::Success(QoS5::AtLeastOnce)]);
    c.client
        .publish("things/meter-1/reading", QoS5::AtLeastOnce, false, "42")
        .await
        .expect("pub");
    assert_eq!(&c.recv().await.topic[..], b"things/meter-1/reading");
    // Another device's filter: refused with 0x87, the connection stays.
    c.client
        .subscribe("things/meter-2/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    assert_eq!(c.suback().await, vec![R::NotAuthorized]);
    // Another device's topic: PUBACK 0x87.
    c.client
        .publish("things/meter-2/reading", QoS5::AtLeastOnce, false, "43")
        .await
        .expect("pub");
    assert_eq!(
        c.puback().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    assert_eq!(denied(&t, "subscribe").await, 1.0);
    assert_eq!(denied(&t, "publish").await, 1.0);
}

#[tokio::test]
async fn mqtt_311_gets_suback_0x80_and_a_closed_connection_for_a_denied_publish() {
    let t = start_with_device_policy().await;
    let mut c = t.v4("valve-1", true).await;
    assert_eq!(
        c.subscribe("things/valve-2/#", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    c.publish("things/valve-2/open", QoS::AtLeastOnce, false, b"1")
        .await;
    loop {
        match c.next().await {
            Ev4::Error(_) => break,
            Ev4::Other(rumqttc::Packet::PubAck(_)) => panic!("a denied publish was acknowledged"),
            _ => {}
        }
    }
    // Everyone else is still served.
    let _other = t.v4("valve-3", true).await;
}

#[tokio::test]
async fn a_will_on_a_forbidden_topic_refuses_the_connect() {
    let t = start_with_device_policy().await;
    let will = rumqttc::LastWill::new("things/other/lwt", "x", QoS::AtMostOnce, false);
    let pem = t.device("sneaky");
    let mut opts = rumqttc::MqttOptions::new("sneaky", "localhost", t.addr().port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(t.tls_config(Some(&pem))),
    ));
    opts.set_last_will(will);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let err = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("answer in time")
        .expect_err("refused");
    assert!(err.to_string().contains("NotAuthorized"), "{err}");
}

#[tokio::test]
async fn receive_is_checked_at_every_delivery() {
    let t = TestServer::start_with("[auth]\nprovisioning = { policies = [\"watcher\"] }\n").await;
    // May subscribe to anything under a/, but not receive a/restricted/...
    t.write_policy(
        "watcher",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect", "iot:Publish"], "Resource": "*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/a/*"},
            {"Effect": "Allow", "Action": "iot:Receive", "NotResource": "arn:aws:iot:*:*:topic/a/restricted/*"}
        ]}"#,
    );
    assert!(t.server().reload_policies().is_empty());
    let mut w = t.v4("watcher", true).await;
    w.subscribe("a/#", QoS::AtLeastOnce).await;
    let p = t.v4("publisher", true).await;
    p.publish("a/restricted/x", QoS::AtLeastOnce, false, b"secret")
        .await;
    p.publish("a/open/x", QoS::AtLeastOnce, false, b"fine")
        .await;
    let got = w.recv().await;
    assert_eq!(
        got.topic, "a/open/x",
        "the restricted message was not delivered"
    );
    assert_eq!(denied(&t, "receive").await, 1.0);
}

#[tokio::test]
async fn a_policy_reload_takes_effect_on_live_connections() {
    let t = TestServer::start_with("[auth]\nprovisioning = { policies = [\"live\"] }\n").await;
    let everything = r#"{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}"#;
    t.write_policy("live", everything);
    assert!(t.server().reload_policies().is_empty());
    let mut reader = t.v4("reader", true).await;
    reader.subscribe("feed/#", QoS::AtLeastOnce).await;
    let mut doomed = t.v5("doomed").await;
    let p = t.v4("feeder", true).await;
    p.publish("feed/1", QoS::AtLeastOnce, false, b"1").await;
    assert_eq!(&reader.recv().await.payload[..], b"1");

    // Receive on feed/ is revoked, and so is Connect for `doomed`: the
    // gateway notices the edit itself (an atomic save: temp file, rename).
    let revoked = r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/feed/*"},
            {"Effect": "Deny", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/doomed"}
        ]}"#;
    let policies = t.dir.path().join("policies");
    std::fs::write(policies.join(".live.json.tmp"), revoked).expect("write");
    std::fs::rename(policies.join(".live.json.tmp"), policies.join("live.json")).expect("rename");
    let how = doomed.ended().await;
    assert!(how.contains("NotAuthorized"), "{how}");
    // The very topic delivered before (its decision was cached) is refused now.
    p.publish("feed/1", QoS::AtLeastOnce, false, b"again").await;
    p.publish("feed/2", QoS::AtLeastOnce, false, b"2").await;
    reader.nothing_for(Duration::from_millis(500)).await;

    // A broken edit keeps the last good version and is counted.
    t.write_policy("live", "{ not json");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, "edgegate_reload_failures_total") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken edit was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = t.server().reload_policies();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("live.json"));
    p.publish("feed/3", QoS::AtLeastOnce, false, b"3").await;
    reader.nothing_for(Duration::from_millis(300)).await;
    // Nobody else was disconnected: both still work.
    reader.subscribe("other/#", QoS::AtLeastOnce).await;
    p.publish("other/1", QoS::AtLeastOnce, false, b"ok").await;
    assert_eq!(&reader.recv().await.payload[..], b"ok");
}

#[tokio::test]
async fn registry_mode_refuses_unknown_certificates() {
    let t = TestServer::start_with("[auth]\nregistration = \"registry\"\n").await;
    let pem = t.device("stranger");
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    raw.send(&connect_bytes(4, "stranger", 30)).await;
    assert_eq!(raw.read_to_close().await, vec![0x20, 0x02, 0x00, 0x05]);
    assert_eq!(
        metric(
            &t.metrics().await,
            "edgegate_connections_refused_total{reason=\"unknown\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn jitr_registers_pending_certificates_and_announces_them() {
    let t = TestServer::start_with(
        "[auth]\nregistration = \"jitr\"\nanonymous_policies = [\"open\"]\n\
         [mqtt]\nlisten = [\"127.0.0.1:0\"]\nplaintext_listen = \"127.0.0.1:0\"\n",
    )
    .await;
    // An operator on the loopback plaintext listener watches the events.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut op = tokio::net::TcpStream::connect(t.server().plaintext.expect("plaintext"))
        .await
        .expect("tcp");
    op.write_all(&connect_bytes(4, "operator", 30))
        .await
        .expect("write");
    let mut buf = [0u8; 4];
    op.read_exact(&mut buf).await.expect("connack");
    assert_eq!(buf, [0x20, 0x02, 0x00, 0x00]);
    let filter = b"$aws/events/certificates/registered/+";
    let mut sub = vec![0x82, (2 + 2 + filter.len() + 1) as u8, 0x00, 0x01];
    sub.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    sub.extend_from_slice(filter);
    sub.push(0x01);
    op.write_all(&sub).await.expect("subscribe");
    let mut suback = [0u8; 5];
    op.read_exact(&mut suback).await.expect("suback");
    assert_eq!(suback[4], 0x01);

    let pem = t.device("newcomer");
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    raw.send(&connect_bytes(4, "newcomer", 30)).await;
    assert_eq!(raw.read_to_close().await, vec![0x20, 0x02, 0x00, 0x05]);

    // The event arrives with AWS's fields.
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, op.read_exact(&mut head))
        .await
        .expect("event in time")
        .expect("read");
    let mut len = usize::from(head[1] & 0x7f);
    if head[1] & 0x80 != 0 {
        let mut more = [0u8; 1];
        op.read_exact(&mut more).await.expect("read");
        len += usize::from(more[0]) << 7;
    }
    let mut body = vec![0u8; len];
    op.read_exact(&mut body).await.expect("read");
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
    assert!(
        topic.starts_with("$aws/events/certificates/registered/"),
        "{topic}"
    );
    // QoS 1: a packet id follows the topic.
    let payload: serde_json::Value =
        serde_json::from_slice(&body[2 + topic_len + 2..]).expect("json payload");
    assert_eq!(payload["certificateStatus"], "PENDING_ACTIVATION");
    assert_eq!(payload["certificateId"].as_str().map(str::len), Some(64));
    assert_eq!(
        topic.rsplit('/').next(),
        payload["caCertificateId"].as_str()
    );
    let cert_id = payload["certificateId"].as_str().expect("id");
    let cert = t
        .server()
        .registry
        .certificate(cert_id)
        .expect("registered");
    assert_eq!(
        cert.status,
        edgegate::registry::CertStatus::PendingActivation
    );
}

#[tokio::test]
async fn two_devices_with_the_default_policy_stay_apart() {
    let t = start_with_device_policy().await;
    let mut a = t.v5("dev-a").await;
    let mut b = t.v5("dev-b").await;
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as R;
    // Neither may subscribe to everything...
    a.client
        .subscribe("#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    assert_eq!(a.suback().await, vec![R::NotAuthorized]);
    // ...nor to the other's topics.
    a.client
        .subscribe("things/dev-b/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    assert_eq!(a.suback().await, vec![R::NotAuthorized]);
    b.client
        .subscribe("things/dev-b/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    assert_eq!(b.suback().await, vec![R::Success(QoS5::AtLeastOnce)]);
    // a cannot write into b's topics: refused with 0x87, and b gets nothing.
    a.client
        .publish("things/dev-b/cmd", QoS5::AtLeastOnce, false, "evil")
        .await
        .expect("pub");
    assert_eq!(
        a.puback().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    b.nothing_for(Duration::from_millis(300)).await;
    b.client
        .publish("things/dev-b/state", QoS5::AtLeastOnce, false, "mine")
        .await
        .expect("pub");
    let got = b.recv().await;
    assert_eq!(&got.payload[..], b"mine");
    // Auto registration made each certificate a principal with its thing.
    let certs = t.server().registry.certificates();
    assert_eq!(certs.len(), 2);
    for c in &certs {
        assert_eq!(c.status, edgegate::registry::CertStatus::Active);
        assert_eq!(c.policies, vec!["device".to_owned()]);
        assert_eq!(c.things.len(), 1);
    }
    let things: Vec<String> = t
        .server()
        .registry
        .things()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(things, vec!["dev-a".to_owned(), "dev-b".to_owned()]);
}

#[tokio::test]
async fn a_revoked_certificate_is_disconnected_and_cannot_reconnect() {
    let t = TestServer::start().await;
    let pem = t.device("stolen");
    let connect = || async {
        let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
            .await
            .expect("tls");
        raw.send(&connect_bytes(5, "stolen", 30)).await;
        raw
    };
    let mut live = connect().await;
    let head = live.read_n(2).await;
    let connack = live.read_n(usize::from(head[1])).await;
    assert_eq!(connack[1], 0x00, "connected");
    let mut bystander = t.v5("bystander").await;
    let id = t
        .server()
        .registry
        .certificates()
        .into_iter()
        .find(|c| c.things == ["stolen"])
        .expect("registered")
        .id;
    let started = tokio::time::Instant::now();
    t.server()
        .registry
        .set_status(&id, edgegate::registry::CertStatus::Revoked)
        .expect("revoke");
    let rest = live.read_to_close().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second"
    );
    assert_eq!(rest[0], 0xe0, "DISCONNECT: {rest:?}");
    assert_eq!(rest[2], 0x87, "Not authorized");
    let mut again = connect().await;
    let refused = again.read_to_close().await;
    assert_eq!(refused[3], 0x87, "CONNACK Not authorized: {refused:?}");
    // The bystander never noticed.
    bystander
        .client
        .subscribe("x", QoS5::AtMostOnce)
        .await
        .expect("sub");
    bystander.suback().await;
}

#[tokio::test]
async fn the_cli_registers_lists_and_revokes_certificates_of_a_stopped_gateway() {
    let mut t = TestServer::prepare(
        "[auth]\nregistration = \"registry\"\nprovisioning = { policies = [\"open\"] }\n",
    );
    let config = t.config_file();
    let pem = t.device("reg-1");
    let cert_file = t.dir.path().join("reg-1.pem");
    std::fs::write(&cert_file, &pem.cert).expect("write cert");
    let cli = |args: &[&str]| run_cli(&config, args);
    let file = cert_file.to_str().expect("utf8");
    let (ok, _, err) = cli(&[
        "cert", "register", "--cert", file, "--policy", "open", "--thing", "reg-1",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["thing", "create", "lamp-9", "--type", "lamp"]);
    assert!(!ok && out.is_empty(), "a thing type must exist first");
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    let (ok, _, err) = cli(&["thing", "create-type", "lamp"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&[
        "thing", "create", "lamp-9", "--type", "lamp", "--attr", "site=lab",
    ]);
    assert!(ok && out.starts_with("created thing lamp-9"), "{out}{err}");
    let (_, list, _) = cli(&["cert", "list"]);
    assert!(
        list.contains("ACTIVE\tcn=reg-1\tthings=reg-1\tpolicies=open\texpires="),
        "{list}"
    );
    let (_, things, _) = cli(&["thing", "list"]);
    assert!(things.contains("lamp-9\ttype=lamp\tsite=lab"), "{things}");

    let connack = |t: &TestServer| {
        let config = t.tls_config(Some(&pem));
        let addr = t.addr();
        async move {
            let mut raw = Raw::connect(addr, config).await.expect("tls");
            raw.send(&connect_bytes(4, "reg-1", 30)).await;
            raw.read_n(4).await
        }
    };
    t.restart().await;
    assert_eq!(
        connack(&t).await,
        vec![0x20, 0x02, 0x00, 0x00],
        "registered: admitted"
    );
    t.server.take().expect("running").shutdown().await;
    let (ok, out, err) = cli(&["cert", "revoke", file]);
    assert!(ok, "{err}");
    assert!(out.starts_with("revoked certificate "), "{out}");
    // Revocation is final, offline as online.
    let (ok, _, err) = cli(&["cert", "activate", file]);
    assert!(!ok && err.contains("CertificateStateException"), "{err}");
    t.restart().await;
    assert_eq!(
        connack(&t).await,
        vec![0x20, 0x02, 0x00, 0x05],
        "revoked: refused"
    );
}

/// On a default configuration (no operator key anywhere) the CLI reaches a
/// running gateway through its admin socket. (Multi-threaded: the CLI
/// blocks this test's thread while the gateway answers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_revokes_through_the_admin_socket_of_a_running_gateway() {
    let t = TestServer::start().await;
    let config = t.config_file();
    let cli = |args: &[&str]| run_cli(&config, args);
    let socket = t.dir.path().join("data/admin.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");

    let pem = t.device("victim");
    let cert_file = t.dir.path().join("victim.pem");
    std::fs::write(&cert_file, &pem.cert).expect("write");
    let mut victim = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    victim.send(&connect_bytes(5, "victim", 30)).await;
    let head = victim.read_n(2).await;
    victim.read_n(usize::from(head[1])).await;

    let (ok, list, err) = cli(&["cert", "list"]);
    assert!(ok, "{err}");
    assert!(list.contains("ACTIVE\tcn=victim\tthings=victim"), "{list}");
    let (ok, out, err) = cli(&["cert", "revoke", cert_file.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(out.starts_with("revoked certificate "), "{out}");
    let rest = victim.read_to_close().await;
    assert_eq!(
        (rest[0], rest[2]),
        (0xe0, 0x87),
        "DISCONNECT Not authorized: {rest:?}"
    );
    let (ok, _, err) = cli(&["cert", "activate", cert_file.to_str().expect("utf8")]);
    assert!(!ok, "a revoked certificate stays revoked");
    assert!(err.contains("CertificateStateException (406)"), "{err}");
    let (ok, _, err) = cli(&["thing", "create-type", "pump"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&[
        "thing", "create", "pump-1", "--type", "pump", "--attr", "floor=2",
    ]);
    assert!(ok, "{err}");
    let (_, things, _) = cli(&["thing", "list"]);
    assert!(things.contains("pump-1\ttype=pump\tfloor=2"), "{things}");
    let revoke = audit_line(&t, |l| {
        l.contains("\"UpdateCertificate\"") && l.contains("\"status\":200")
    })
    .await;
    assert!(revoke.contains("\"principal\":\"local\""), "{revoke}");
}

/// `policy test`, given the certificate and nothing else, evaluates the
/// policies the registry attaches to it, with the thing's type and
/// attributes and the connect attributes, and agrees with the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_test_agrees_with_the_gateway_on_a_live_connection() {
    let fleet = r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["iot:Connect", "iot:Subscribe", "iot:Receive"], "Resource": "*",
         "Condition": {"ForAllValues:StringEquals": {"iot:ConnectAttributes": []}}},
        {"Effect": "Allow", "Action": "iot:Publish",
         "Resource": "arn:aws:iot:*:*:topic/site/${iot:Connection.Thing.Attributes[site]}/*",
         "Condition": {"StringEquals": {"iot:Connection.Thing.ThingTypeName": "Lamp"}}}
    ]}"#;
    let mut t = TestServer::prepare("[auth]\nprovisioning = { policies = [\"fleet\"] }\n");
    t.write_policy("fleet", fleet);
    t.boot().await;
    let config = t.config_file();
    let cli = |args: &[&str]| {
        let (ok, out, err) = run_cli(&config, args);
        assert!(ok, "{args:?}: {out}{err}");
        out
    };
    let pem = t.device("lamp-1");
    let (cert_file, _) =
        edgegate::transport::pki::write_pair(&t.dir.path().join("certs"), "lamp-1", &pem)
            .expect("write");
    let cert = cert_file.to_str().expect("utf8").to_owned();
    // The operator makes the thing; the first connect registers the
    // certificate with the fleet policy and attaches it to that thing.
    cli(&["thing", "create-type", "Lamp"]);
    cli(&[
        "thing",
        "create",
        "lamp-1",
        "--type",
        "Lamp",
        "--attr",
        "site=north",
    ]);
    V4::connect_with(&t, t.addr().port(), "lamp-1", &pem, true, None, |_| {})
        .await
        .disconnect()
        .await;

    let policy_test = |topic: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "test",
            "--cert",
            &cert,
            "--client-id",
            "lamp-1",
            "--thing",
            "lamp-1",
            "--thing-type",
            "Lamp",
            "--thing-attr",
            "site=north",
            "--action",
            "iot:Publish",
            "--resource",
        ];
        args.push(topic);
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            stdout.contains("evaluated: fleet"),
            "the registry's policies: {stdout}"
        );
        (out.status.code(), stdout)
    };
    let (code, out) = policy_test("topic/site/north/light", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ALLOWED"), "{out}");
    let (code, out) = policy_test("topic/site/south/light", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("IMPLICIT_DENY"), "{out}");

    // The gateway decides the same for the live connection.
    let mut lamp = V5::connect_with(&t, t.addr().port(), "lamp-1", &pem, |_| {}).await;
    for (topic, allowed) in [("site/north/light", true), ("site/south/light", false)] {
        let reason = lamp.publish_qos1(topic, false, "on").await;
        assert_eq!(
            reason == PubAckReason::NotAuthorized,
            !allowed,
            "{topic}: {reason:?}"
        );
    }

    // A persistent session is a connect attribute the fleet policy's empty
    // list allows none of: policy test and the gateway both refuse it.
    let connect = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "test",
            "--cert",
            &cert,
            "--client-id",
            "lamp-1",
            "--action",
            "iot:Connect",
            "--resource",
            "client/lamp-1",
        ];
        args.extend_from_slice(extra);
        run_cli(&config, &args)
    };
    assert!(connect(&[]).0, "a clean session may connect");
    let (ok, out, _) = connect(&["--connect-attributes", "PersistentConnect"]);
    assert!(!ok && out.starts_with("IMPLICIT_DENY"), "{out}");
    let refused = connack_code_v5_persistent(&t, &pem).await;
    assert_eq!(
        refused, 0x87,
        "the gateway refuses the persistent session too"
    );
}

#[tokio::test]
async fn iot_domain_name_is_the_name_the_device_asked_for() {
    let by_name = r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
         "Condition": {"StringEquals": {"iot:DomainName": "localhost"}}},
        {"Effect": "Allow", "Action": "iot:Publish",
         "Resource": "arn:aws:iot:*:*:topic/via/${iot:DomainName}/*"}
    ]}"#;
    let mut t = TestServer::prepare("[auth]\nprovisioning = { policies = [\"by-name\"] }\n");
    t.write_policy("by-name", by_name);
    t.boot().await;
    let pem = t.device("dev-1");

    // rumqttc asks for "localhost" (SNI): it may connect, and publish under it.
    let mut dev = V5::connect_with(&t, t.addr().port(), "dev-1", &pem, |_| {}).await;
    for (topic, allowed) in [("via/localhost/a", true), ("via/elsewhere/a", false)] {
        let reason = dev.publish_qos1(topic, false, "x").await;
        assert_eq!(
            reason == PubAckReason::NotAuthorized,
            !allowed,
            "{topic}: {reason:?}"
        );
    }

    // A client that asks for an address sends no server name: no domain.
    let ip = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    let mut raw = Raw::connect_to(t.addr(), t.tls_config(Some(&pem)), ip)
        .await
        .expect("tls");
    raw.send(&connect_bytes(5, "dev-1", 30)).await;
    let connack = raw.read_to_close().await;
    assert_eq!(connack[3], 0x87, "MQTT 5: Not authorized: {connack:?}");
}

/// The CONNACK reason code for a persistent MQTT 5 session as lamp-1.
async fn connack_code_v5_persistent(t: &TestServer, pem: &edgegate::transport::pki::Pem) -> u8 {
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(pem)))
        .await
        .expect("tls");
    // CONNECT v5, clean start 0, keep alive 30, Session Expiry Interval 3600.
    let id = b"lamp-1";
    let mut body = vec![
        0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 30, 5, 0x11, 0, 0, 0x0e, 0x10,
    ];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    raw.send(&packet).await;
    let got = raw.read_n(4).await;
    got[3]
}
