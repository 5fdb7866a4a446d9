//! The broker as devices see it: MQTT 3.1.1 and 5.0 over mutual TLS.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::QoS;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, RetainForwardRule};
use std::time::Duration;

#[tokio::test]
async fn v4_publish_subscribe_at_every_qos_with_wildcards() {
    let t = TestServer::start().await;
    let mut sub = t.v4("sub-1", true).await;
    let codes = sub.subscribe("sensors/+/temp", QoS::ExactlyOnce).await;
    assert_eq!(
        codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let pub_ = t.v4("pub-1", true).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        pub_.publish(
            &format!("sensors/s{i}/temp"),
            qos,
            false,
            format!("v{i}").as_bytes(),
        )
        .await;
        let got = sub.recv().await;
        assert_eq!(got.topic, format!("sensors/s{i}/temp"));
        assert_eq!(&got.payload[..], format!("v{i}").as_bytes());
        assert_eq!(got.qos, qos);
        assert!(!got.retain);
    }
    // Not matching: one level too deep.
    pub_.publish("sensors/s1/temp/x", QoS::AtMostOnce, false, b"no")
        .await;
    sub.nothing_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn v5_properties_travel_with_the_message() {
    let t = TestServer::start().await;
    let mut sub = t.v5("sub-5").await;
    sub.client
        .subscribe_with_properties(
            "req/#",
            QoS5::AtLeastOnce,
            rumqttc::v5::mqttbytes::v5::SubscribeProperties {
                id: Some(42),
                user_properties: vec![],
            },
        )
        .await
        .expect("subscribe");
    sub.suback().await;
    let pub_ = t.v5("pub-5").await;
    let props = PublishProperties {
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(100),
        ..Default::default()
    };
    pub_.client
        .publish_with_properties("req/a", QoS5::AtLeastOnce, false, "hello", props)
        .await
        .expect("publish");
    let got = sub.recv().await;
    assert_eq!(&got.topic[..], b"req/a");
    let p = got.properties.expect("properties");
    assert_eq!(p.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(p.user_properties, vec![("k".to_owned(), "v".to_owned())]);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.subscription_identifiers, vec![42]);
    let left = p.message_expiry_interval.expect("expiry forwarded");
    assert!(
        (95..=100).contains(&left),
        "remaining expiry rewritten: {left}"
    );
}

#[tokio::test]
async fn retained_messages_are_delivered_on_subscribe_and_cleared_by_empty_payload() {
    let t = TestServer::start().await;
    let mut p = t.v4("ret-pub", true).await;
    p.publish("state/lamp", QoS::AtLeastOnce, true, b"on").await;
    p.puback().await;
    let mut s = t.v4("ret-sub", true).await;
    s.subscribe("state/#", QoS::AtLeastOnce).await;
    let got = s.recv().await;
    assert_eq!(got.topic, "state/lamp");
    assert_eq!(&got.payload[..], b"on");
    assert!(got.retain, "retained delivery carries RETAIN=1");
    // A live message is not flagged retained [MQTT-3.3.1-9].
    p.publish("state/lamp", QoS::AtLeastOnce, true, b"off")
        .await;
    let live = s.recv().await;
    assert!(!live.retain);
    // Empty payload clears it.
    p.publish("state/lamp", QoS::AtLeastOnce, true, b"").await;
    p.puback().await;
    let mut s2 = t.v4("ret-sub2", true).await;
    s2.subscribe("state/lamp", QoS::AtLeastOnce).await;
    s2.nothing_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn will_is_published_when_a_device_vanishes_but_not_after_disconnect() {
    let t = TestServer::start().await;
    let mut watcher = t.v4("watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let will = rumqttc::LastWill::new("wills/dev-a", "gone", QoS::AtLeastOnce, false);
    let dev = V4::connect(&t, "dev-a", true, Some(will), |_| {}).await;
    dev.kill();
    let got = watcher.recv().await;
    assert_eq!(got.topic, "wills/dev-a");
    assert_eq!(&got.payload[..], b"gone");

    let will = rumqttc::LastWill::new("wills/dev-b", "gone", QoS::AtLeastOnce, false);
    let dev = V4::connect(&t, "dev-b", true, Some(will), |_| {}).await;
    dev.disconnect().await;
    watcher.nothing_for(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_reconnecting() {
    let t = TestServer::start().await;
    let mut watcher = t.v4("watcher5", true).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let make_will = || {
        rumqttc::v5::mqttbytes::v5::LastWill::new(
            "wills/d5",
            "gone",
            QoS5::AtLeastOnce,
            false,
            Some(rumqttc::v5::mqttbytes::v5::LastWillProperties {
                delay_interval: Some(2),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        )
    };
    let tweak = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_last_will(make_will());
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let dev = V5::connect(&t, "d5", tweak).await;
    dev.kill();
    // Back within the delay: no will.
    let dev = V5::connect(&t, "d5", tweak).await;
    watcher.nothing_for(Duration::from_secs(3)).await;
    dev.kill();
    // Away for longer than the delay: the will arrives after it.
    let started = tokio::time::Instant::now();
    let got = watcher.recv().await;
    assert_eq!(got.topic, "wills/d5");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "will waited for its delay"
    );
}

#[tokio::test]
async fn duplicate_client_id_takes_over_the_old_connection() {
    let t = TestServer::start().await;
    let mut first = t.v5("twin").await;
    let _second = t.v5("twin").await;
    let how = first.ended().await;
    assert!(how.contains("SessionTakenOver"), "{how}");
}

#[tokio::test]
async fn persistent_session_queues_qos1_while_offline() {
    let t = TestServer::start().await;
    let mut dev = t.v4("persist-1", false).await;
    assert!(!dev.session_present);
    dev.subscribe("cmd/persist-1", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut p = t.v4("commander", true).await;
    for i in 0..5 {
        p.publish(
            "cmd/persist-1",
            QoS::AtLeastOnce,
            false,
            format!("c{i}").as_bytes(),
        )
        .await;
        p.puback().await;
    }
    let mut dev = t.v4("persist-1", false).await;
    assert!(dev.session_present, "session resumed");
    for i in 0..5 {
        let got = dev.recv().await;
        assert_eq!(&got.payload[..], format!("c{i}").as_bytes(), "in order");
    }
    // A clean session discards it.
    dev.disconnect().await;
    let dev = t.v4("persist-1", true).await;
    assert!(!dev.session_present);
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() {
    let t = TestServer::start().await;
    let mut a = t.v5("share-a").await;
    let mut b = t.v5("share-b").await;
    for c in [&mut a, &mut b] {
        c.client
            .subscribe("$share/g/jobs/#", QoS5::AtLeastOnce)
            .await
            .expect("sub");
        c.suback().await;
    }
    let p = t.v5("share-pub").await;
    for i in 0..10 {
        p.client
            .publish(format!("jobs/{i}"), QoS5::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    // Every topic seen, by member: ten distinct ones, then nothing more, so a
    // message delivered twice (to one member or to both) shows.
    let mut seen: Vec<(usize, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 10 {
        let (member, ev) = tokio::select! {
            Some(ev) = a.events.recv() => (0, ev),
            Some(ev) = b.events.recv() => (1, ev),
            () = tokio::time::sleep_until(deadline) => panic!("only {} of 10 delivered", seen.len()),
        };
        if let Ev5::Publish(p) = ev {
            seen.push((member, String::from_utf8_lossy(&p.topic).into_owned()));
        }
    }
    a.nothing_for(Duration::from_millis(300)).await;
    b.nothing_for(Duration::from_millis(300)).await;
    let mut topics: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    assert_eq!(topics.len(), 10, "each message once: {seen:?}");
    let first = seen.iter().filter(|(m, _)| *m == 0).count();
    assert!(first > 0 && first < 10, "both members served: {seen:?}");
}

#[tokio::test]
async fn no_local_and_retain_as_published() {
    let t = TestServer::start().await;
    let mut c = t.v5("nl").await;
    let mut f = Filter::new("loop/#", QoS5::AtLeastOnce);
    f.nolocal = true;
    let mut g = Filter::new("rap/#", QoS5::AtLeastOnce);
    g.preserve_retain = true;
    g.retain_forward_rule = RetainForwardRule::Never;
    c.client.subscribe_many(vec![f, g]).await.expect("sub");
    c.suback().await;
    c.client
        .publish("loop/x", QoS5::AtLeastOnce, false, "mine")
        .await
        .expect("pub");
    c.client
        .publish("rap/x", QoS5::AtLeastOnce, true, "kept")
        .await
        .expect("pub");
    let got = c.recv().await;
    assert_eq!(
        &got.topic[..],
        b"rap/x",
        "own message on a No Local subscription is skipped"
    );
    assert!(got.retain, "Retain As Published keeps the flag");
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    let t = TestServer::start().await;
    let mut sub = t.v4("alias-sub", true).await;
    sub.subscribe("alias/t", QoS::AtLeastOnce).await;
    let p = t.v5("alias-pub").await;
    let with_alias = |a| PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    p.client
        .publish_with_properties("alias/t", QoS5::AtLeastOnce, false, "1", with_alias(3))
        .await
        .expect("pub");
    p.client
        .publish_with_properties("", QoS5::AtLeastOnce, false, "2", with_alias(3))
        .await
        .expect("pub");
    assert_eq!(&sub.recv().await.payload[..], b"1");
    let second = sub.recv().await;
    assert_eq!(second.topic, "alias/t");
    assert_eq!(&second.payload[..], b"2");
}

#[tokio::test]
async fn connack_advertises_limits() {
    let t = TestServer::start_with("[limits]\nmax_qos = 1\n").await;
    let c = t.v5("props").await;
    let p = c.connack.properties.expect("CONNACK properties");
    assert_eq!(p.max_qos, Some(1));
    assert_eq!(p.receive_max, Some(100));
    assert_eq!(p.topic_alias_max, Some(8));
    assert!(p.max_packet_size.is_some());
}

#[tokio::test]
async fn qos_above_the_cap_is_refused_with_a_reason() {
    let t = TestServer::start_with("[limits]\nmax_qos = 1\n").await;
    let mut c = t.v5("capped").await;
    c.client
        .subscribe("cap/#", QoS5::ExactlyOnce)
        .await
        .expect("sub");
    let codes = c.suback().await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            QoS5::AtLeastOnce
        )],
        "granted QoS is capped"
    );
    c.client
        .publish("cap/x", QoS5::ExactlyOnce, false, "x")
        .await
        .expect("pub");
    let how = c.ended().await;
    assert!(how.contains("QoSNotSupported"), "{how}");
    // Others are still served.
    let _ok = t.v5("after-cap").await;
}

#[tokio::test]
async fn subscription_limits_answer_per_filter() {
    let t = TestServer::start_with("[limits]\nmax_subscriptions_per_connection = 2\n").await;
    let mut c = t.v5("limited").await;
    let filters = ["a/1", "a/2", "a/3"]
        .iter()
        .map(|f| Filter::new(*f, QoS5::AtMostOnce))
        .collect::<Vec<_>>();
    c.client.subscribe_many(filters).await.expect("sub");
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as R;
    assert_eq!(
        c.suback().await,
        vec![
            R::Success(QoS5::AtMostOnce),
            R::Success(QoS5::AtMostOnce),
            R::QuotaExceeded
        ]
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_limit_refusals_total{limit=\"subscriptions\"}"),
        1.0
    );
}

#[tokio::test]
async fn metrics_and_health_on_the_admin_listener() {
    let t = TestServer::start().await;
    let mut c = t.v4("metered", true).await;
    c.subscribe("m/#", QoS::AtMostOnce).await;
    c.publish("m/1", QoS::AtMostOnce, false, b"x").await;
    c.recv().await;
    let health = http_get(t.admin(), "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#"{"status":"ok"}"#));
    let m = t.metrics().await;
    assert_eq!(metric(&m, "edgegate_connections"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "edgegate_messages_received_total{qos=\"0\"}"),
        1.0
    );
    assert_eq!(metric(&m, "edgegate_messages_sent_total{qos=\"0\"}"), 1.0);
    assert_eq!(
        metric(&m, "edgegate_packets_received_total{type=\"subscribe\"}"),
        1.0
    );
    assert!(metric(&m, "edgegate_bytes_received_total") > 0.0);
}

#[tokio::test]
async fn wildcards_at_the_first_level_do_not_match_dollar_topics() {
    let t = TestServer::start().await;
    let mut all = t.v4("all", true).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut shadows = t.v4("shadows", true).await;
    shadows
        .subscribe("$aws/things/+/shadow/#", QoS::AtMostOnce)
        .await;
    let p = t.v4("dollar-pub", true).await;
    p.publish(
        "$aws/things/lamp/shadow/update",
        QoS::AtMostOnce,
        false,
        b"{}",
    )
    .await;
    let got = shadows.recv().await;
    assert_eq!(got.topic, "$aws/things/lamp/shadow/update");
    // `#` sees ordinary topics but not `$` ones [MQTT-4.7.2-1].
    p.publish("plain/topic", QoS::AtMostOnce, false, b"x").await;
    assert_eq!(all.recv().await.topic, "plain/topic");
}
