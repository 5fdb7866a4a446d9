//! Lifecycle events as an operator watching `$aws/events/...` sees them:
//! AWS's topics and fields, each disconnect reason the gateway produces,
//! their order around a client's messages, and the `[events]` switches.

mod common;

use common::*;
use rumqttc::QoS;
use serde_json::Value;

/// Things named after the certificate's CN, so events carry `thingName`.
const WITH_THINGS: &str = "[auth]\nprovisioning = { policies = [\"open\"], thing_name = \"${iot:Certificate.Subject.CommonName}\" }\n";

/// A watcher subscribed to every event about `client_id`.
async fn watcher(t: &TestServer, client_id: &str) -> V4 {
    let mut w = t.v4(&format!("watcher-{client_id}"), true).await;
    let codes = w
        .subscribe(&format!("$aws/events/+/+/{client_id}"), QoS::AtLeastOnce)
        .await;
    assert!(
        matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
        "{codes:?}"
    );
    w
}

/// The next event the watcher receives: its topic and document.
async fn event(w: &mut V4) -> (String, Value) {
    let p = w.recv().await;
    let doc = serde_json::from_slice(&p.payload).expect("an event is JSON");
    (p.topic, doc)
}

#[tokio::test]
async fn presence_and_subscription_events_carry_aws_fields() {
    let t = TestServer::start_with(WITH_THINGS).await;
    let mut w = watcher(&t, "lamp-1").await;
    let mut lamp = t.v4("lamp-1", true).await;

    let (topic, connected) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/presence/connected/lamp-1");
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["clientId"], "lamp-1");
    assert_eq!(connected["thingName"], "lamp-1");
    assert_eq!(connected["ipAddress"], "127.0.0.1");
    let principal = connected["principalIdentifier"]
        .as_str()
        .expect("principal");
    assert_eq!(principal.len(), 64, "the certificate id: {connected}");
    let session = connected["sessionIdentifier"].as_str().expect("session");
    assert_eq!(session.len(), 32, "{connected}");
    assert!(connected["versionNumber"].is_u64(), "{connected}");
    let now_ms = edgegate::store::now_ms();
    let at = connected["timestamp"].as_u64().expect("timestamp");
    assert!(
        at <= now_ms && now_ms - at < 60_000,
        "epoch ms: {connected}"
    );

    lamp.subscribe("lamp/+/cmd", QoS::AtLeastOnce).await;
    let (topic, subscribed) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/subscriptions/subscribed/lamp-1");
    assert_eq!(subscribed["eventType"], "subscribed");
    assert_eq!(subscribed["topics"], serde_json::json!(["lamp/+/cmd"]));
    assert_eq!(subscribed["sessionIdentifier"], session);
    assert_eq!(subscribed["principalIdentifier"], principal);

    lamp.client.unsubscribe("lamp/+/cmd").await.expect("queued");
    let (topic, unsubscribed) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/subscriptions/unsubscribed/lamp-1");
    assert_eq!(unsubscribed["topics"], serde_json::json!(["lamp/+/cmd"]));

    lamp.disconnect().await;
    let (topic, gone) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/presence/disconnected/lamp-1");
    assert_eq!(gone["eventType"], "disconnected");
    assert_eq!(gone["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(gone["clientInitiatedDisconnect"], true);
    assert_eq!(gone["sessionIdentifier"], session);
    assert_eq!(
        gone["versionNumber"], connected["versionNumber"],
        "a connection's two events share their version"
    );
    assert!(gone.get("ipAddress").is_none(), "{gone}");
    // The watcher's own connect and subscribe count too.
    let m = t.metrics().await;
    for (kind, n) in [("presence", 3.0), ("subscriptions", 3.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("edgegate_events_published_total{{type=\"{kind}\"}}")
            ),
            n,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn connected_comes_before_the_first_message_and_disconnected_after_the_last() {
    let t = TestServer::start().await;
    let mut w = watcher(&t, "sensor-1").await;
    w.subscribe("sensor/#", QoS::AtLeastOnce).await;
    let sensor = t.v4("sensor-1", true).await;
    for i in 0..3 {
        sensor
            .publish(
                "sensor/t",
                QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    sensor.disconnect().await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let p = w.recv().await;
        seen.push(match p.topic.as_str() {
            "sensor/t" => String::from_utf8_lossy(&p.payload).into_owned(),
            topic => topic.rsplit('/').nth(1).unwrap_or(topic).to_owned(),
        });
    }
    assert_eq!(seen, ["connected", "0", "1", "2", "disconnected"]);
}

/// The `disconnectReason` the watcher sees for `client_id`'s connection,
/// after its `connected`.
async fn reason_for(w: &mut V4, client_id: &str) -> Value {
    let (topic, _) = event(w).await;
    assert_eq!(topic, format!("$aws/events/presence/connected/{client_id}"));
    let (topic, gone) = event(w).await;
    assert_eq!(
        topic,
        format!("$aws/events/presence/disconnected/{client_id}")
    );
    assert_eq!(gone["clientInitiatedDisconnect"], false, "{gone}");
    gone["disconnectReason"].clone()
}

#[tokio::test]
async fn each_way_a_connection_ends_has_its_disconnect_reason() {
    let t = TestServer::start().await;

    let mut w = watcher(&t, "lost").await;
    t.v4("lost", true).await.kill();
    assert_eq!(reason_for(&mut w, "lost").await, "CONNECTION_LOST");

    let mut w = watcher(&t, "twice").await;
    let _first = t.v4("twice", true).await;
    let (topic, _) = event(&mut w).await;
    assert!(topic.ends_with("connected/twice"), "{topic}");
    let _second = t.v4("twice", true).await;
    // The old connection's end and the new one's start, in either order.
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let (topic, doc) = event(&mut w).await;
        if topic.contains("/disconnected/") {
            reasons.push(doc["disconnectReason"].clone());
        }
    }
    assert_eq!(reasons, ["DUPLICATE_CLIENTID"]);

    let mut w = watcher(&t, "sleepy").await;
    let mut raw = t.raw("sleepy").await;
    raw.send(&connect_bytes(4, "sleepy", 1)).await;
    let _ = raw.read_to_close().await;
    assert_eq!(
        reason_for(&mut w, "sleepy").await,
        "MQTT_KEEP_ALIVE_TIMEOUT"
    );

    let mut w = watcher(&t, "rude").await;
    let mut raw = t.raw("rude").await;
    raw.send(&connect_bytes(5, "rude", 30)).await;
    // A PUBLISH with a reserved QoS of 3.
    raw.send(&[0x36, 0x03, 0x00, 0x01, b'a']).await;
    let _ = raw.read_to_close().await;
    assert_eq!(reason_for(&mut w, "rude").await, "CLIENT_ERROR");
}

#[tokio::test]
async fn a_denied_3_1_1_publish_ends_with_auth_error() {
    let mut t = TestServer::prepare("[auth]\nprovisioning = { policies = [\"narrow\"] }\n");
    t.write_policy(
        "narrow",
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect", "iot:Subscribe", "iot:Receive"], "Resource": "*"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/allowed"}]}"#,
    );
    t.boot().await;
    let mut w = watcher(&t, "bold").await;
    let bold = t.v4("bold", true).await;
    bold.publish("forbidden", QoS::AtLeastOnce, false, b"x")
        .await;
    assert_eq!(reason_for(&mut w, "bold").await, "AUTH_ERROR");
}

#[tokio::test]
async fn a_refused_connect_has_no_events_and_each_family_can_be_turned_off() {
    let t = TestServer::start().await;
    let mut w = t.v4("watcher", true).await;
    w.subscribe("$aws/events/presence/+/+", QoS::AtLeastOnce)
        .await;
    // Refused: a client id longer than limits.max_client_id_bytes.
    let long = "x".repeat(200);
    let mut raw = t.raw("refused").await;
    raw.send(&connect_bytes(4, &long, 30)).await;
    let connack = raw.read_to_close().await;
    assert_ne!(connack.get(3), Some(&0), "refused: {connack:?}");
    let _ok = t.v4("after", true).await;
    let (topic, _) = event(&mut w).await;
    assert_eq!(
        topic, "$aws/events/presence/connected/after",
        "the refused client has no event"
    );

    // Presence off, subscriptions on: a client's first event is its subscribe.
    let t = TestServer::start_with("[events]\npresence = false\n").await;
    let mut w = watcher(&t, "quiet").await;
    let mut quiet = t.v4("quiet", true).await;
    quiet.subscribe("a/b", QoS::AtMostOnce).await;
    let (topic, _) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/subscriptions/subscribed/quiet");

    // Subscriptions off, presence on: its first event after connected is
    // its disconnect.
    let t = TestServer::start_with("[events]\nsubscriptions = false\n").await;
    let mut w = watcher(&t, "calm").await;
    let mut calm = t.v4("calm", true).await;
    calm.subscribe("a/b", QoS::AtMostOnce).await;
    calm.disconnect().await;
    let (topic, _) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/presence/connected/calm");
    let (topic, _) = event(&mut w).await;
    assert_eq!(topic, "$aws/events/presence/disconnected/calm");
}

#[tokio::test]
async fn clients_cannot_publish_events() {
    let t = TestServer::start().await;
    let mut w = watcher(&t, "forger").await;
    let mut forger = t.v5("forger").await;
    let (topic, _) = event(&mut w).await;
    assert!(topic.ends_with("connected/forger"), "{topic}");
    assert_eq!(
        forger
            .publish_qos1("$aws/events/presence/disconnected/forger", false, "{}")
            .await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    forger.client.disconnect().await.expect("queued");
    let (topic, doc) = event(&mut w).await;
    assert!(topic.ends_with("disconnected/forger"), "{topic}");
    assert_eq!(
        doc["disconnectReason"], "CLIENT_INITIATED_DISCONNECT",
        "the watcher sees the gateway's event, not the forgery"
    );
}
