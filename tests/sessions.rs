//! Session lifetimes, expiry, flow control and the listeners around them.

mod common;

use common::*;
use rumqttc::QoS;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use std::time::Duration;

/// Polls the metrics until `series` equals `want`, within `WAIT`.
async fn metric_becomes(t: &TestServer, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = t.metrics().await;
        if metric(&m, series) == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {want}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn v5_session_expires_after_its_interval() {
    let t = TestServer::start().await;
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(1));
    };
    let mut c = V5::connect(&t, "brief", persistent).await;
    c.client
        .subscribe("brief/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    c.suback().await;
    c.client.disconnect().await.expect("disconnect");
    c.ended().await;
    metric_becomes(&t, "edgegate_sessions", 0.0).await;
    let c = V5::connect(&t, "brief", persistent).await;
    assert!(!c.connack.session_present, "the session expired");
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let t = TestServer::start().await;
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let mut c = V5::connect(&t, "away", persistent).await;
    c.client
        .subscribe("news/#", QoS5::AtLeastOnce)
        .await
        .expect("sub");
    c.suback().await;
    c.kill();
    let mut p = t.v5("newsroom").await;
    let expiring = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    p.client
        .publish_with_properties("news/stale", QoS5::AtLeastOnce, false, "old", expiring)
        .await
        .expect("pub");
    p.client
        .publish("news/fresh", QoS5::AtLeastOnce, false, "new")
        .await
        .expect("pub");
    // Both are stored once acknowledged; from then on, wait longer than the
    // first may live (a sleep is never shorter than asked, however loaded
    // the machine).
    for _ in 0..2 {
        assert_eq!(
            p.puback().await,
            rumqttc::v5::mqttbytes::v5::PubAckReason::Success
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = V5::connect(&t, "away", persistent).await;
    assert!(c.connack.session_present);
    let got = c.recv().await;
    assert_eq!(&got.topic[..], b"news/fresh");
    assert!(
        metric(
            &t.metrics().await,
            "edgegate_messages_dropped_total{reason=\"expired\"}"
        ) == 1.0
    );
}

#[tokio::test]
async fn shutdown_tells_v5_clients_why() {
    let mut t = TestServer::start().await;
    let mut c = t.v5("leaving").await;
    let server = t.server.take().expect("running");
    let stop = tokio::spawn(server.shutdown());
    let how = c.ended().await;
    assert!(how.contains("ServerShuttingDown"), "{how}");
    tokio::time::timeout(WAIT, stop)
        .await
        .expect("shutdown completes")
        .expect("no panic");
}

/// Raw MQTT 5 CONNECT with a QoS 0 will on `will_topic`.
fn connect_with_will(id: &str, will_topic: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 30, 0];
    for s in [id.as_bytes(), &[], will_topic.as_bytes(), b"bye"] {
        if s.is_empty() {
            body.push(0); // will properties
            continue;
        }
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s);
    }
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will() {
    let t = TestServer::start().await;
    let mut watcher = t.v4("will-watch", true).await;
    watcher.subscribe("lwt/#", QoS::AtMostOnce).await;
    let mut raw = t.raw("leaver").await;
    raw.send(&connect_with_will("leaver", "lwt/leaver")).await;
    let head = raw.read_n(2).await;
    raw.read_n(usize::from(head[1])).await;
    // DISCONNECT with reason 0x04: "disconnect with will message".
    raw.send(&[0xe0, 0x01, 0x04]).await;
    let got = watcher.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("lwt/leaver", &b"bye"[..])
    );
}

#[tokio::test]
async fn messages_too_large_for_the_client_are_dropped_not_sent() {
    let t = TestServer::start().await;
    let mut small = V5::connect(&t, "small", |o| {
        o.set_max_packet_size(Some(200));
    })
    .await;
    small
        .client
        .subscribe("big/#", QoS5::AtMostOnce)
        .await
        .expect("sub");
    small.suback().await;
    let p = t.v5("bigpub").await;
    p.client
        .publish("big/1", QoS5::AtMostOnce, false, vec![b'x'; 500])
        .await
        .expect("pub");
    p.client
        .publish("big/2", QoS5::AtMostOnce, false, "small")
        .await
        .expect("pub");
    let got = small.recv().await;
    assert_eq!(&got.topic[..], b"big/2");
    metric_becomes(
        &t,
        "edgegate_messages_dropped_total{reason=\"too_large_for_client\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn receive_maximum_is_enforced_for_qos2() {
    let t = TestServer::start_with("[limits]\nmax_inflight = 3\n").await;
    let mut raw = t.raw("flood").await;
    raw.send(&connect_bytes(5, "flood", 30)).await;
    let head = raw.read_n(2).await;
    raw.read_n(usize::from(head[1])).await;
    // Three QoS 2 publishes stay unacknowledged until PUBREL; the fourth is one too many.
    for id in 1u8..=4 {
        raw.send(&[0x34, 0x06, 0x00, 0x01, b't', 0x00, id, 0x00])
            .await;
    }
    let bytes = raw.read_to_close().await;
    // Three PUBRECs ("no matching subscribers"), then DISCONNECT 0x93.
    assert_eq!(&bytes[..5], &[0x50, 0x03, 0x00, 0x01, 0x10]);
    let disconnect = &bytes[15..];
    assert_eq!(disconnect[0], 0xe0, "{bytes:?}");
    assert_eq!(disconnect[2], 0x93, "{bytes:?}");
}

#[tokio::test]
async fn qos2_is_exactly_once_even_when_the_publish_is_resent() {
    let t = TestServer::start().await;
    let mut sub = t.v4("once-sub", true).await;
    sub.subscribe("once", QoS::ExactlyOnce).await;
    let mut raw = t.raw("once-pub").await;
    raw.send(&connect_bytes(4, "once-pub", 30)).await;
    raw.read_n(4).await;
    let publish = [0x34, 0x07, 0x00, 0x04, b'o', b'n', b'c', b'e', 0x00, 0x09];
    let mut publish = publish.to_vec();
    publish[1] = 0x09;
    publish.push(b'!');
    raw.send(&publish).await;
    assert_eq!(raw.read_n(4).await, vec![0x50, 0x02, 0x00, 0x09], "PUBREC");
    // The same packet again with DUP set, before PUBREL.
    publish[0] |= 0x08;
    raw.send(&publish).await;
    assert_eq!(
        raw.read_n(4).await,
        vec![0x50, 0x02, 0x00, 0x09],
        "PUBREC again"
    );
    raw.send(&[0x62, 0x02, 0x00, 0x09]).await;
    assert_eq!(raw.read_n(4).await, vec![0x70, 0x02, 0x00, 0x09], "PUBCOMP");
    let got = sub.recv().await;
    assert_eq!(&got.payload[..], b"!");
    sub.nothing_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn plaintext_listener_is_off_by_default_and_anonymous_clients_get_only_their_policies() {
    let t = TestServer::start().await;
    assert!(t.server().plaintext.is_none());
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connack = |auth: &'static str| async move {
        let t = TestServer::start_with(&format!(
            "[mqtt]\nlisten = [\"127.0.0.1:0\"]\nplaintext_listen = \"127.0.0.1:0\"\n{auth}"
        ))
        .await;
        let addr = t.server().plaintext.expect("plaintext listener");
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        s.write_all(&connect_bytes(4, "plain", 30))
            .await
            .expect("write");
        let mut connack = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("read");
        connack
    };
    // No anonymous policies (the default): not authorized.
    assert_eq!(connack("").await, [0x20, 0x02, 0x00, 0x05]);
    // With a policy for them, anonymous clients connect.
    assert_eq!(
        connack("[auth]\nanonymous_policies = [\"open\"]\n").await,
        [0x20, 0x02, 0x00, 0x00]
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_disconnected_instead_of_blocking_publishers() {
    let t =
        TestServer::start_with("[limits]\nmax_stored_messages = 20\nmax_queued_messages = 10\n")
            .await;
    // A subscriber that never acknowledges: its inflight window fills, then its mailbox.
    let mut raw = t.raw("stalled").await;
    raw.send(&connect_bytes(4, "stalled", 30)).await;
    raw.read_n(4).await;
    raw.send(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b's', 0x01])
        .await;
    raw.read_n(5).await;
    let mut p = t.v4("fast", true).await;
    let payload = vec![b'x'; 100];
    for _ in 0..200 {
        p.publish("s", QoS::AtLeastOnce, false, &payload).await;
    }
    // The publisher is never held up: every PUBACK arrives in time.
    for _ in 0..200 {
        p.puback().await;
    }
    metric_becomes(&t, "edgegate_connections", 1.0).await;
    let m = t.metrics().await;
    assert!(
        metric(
            &m,
            "edgegate_messages_dropped_total{reason=\"slow_consumer\"}"
        ) >= 1.0
    );
}

/// Raw MQTT 5 CONNECT with the given property bytes.
fn connect_v5_with(id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    let flags = if clean { 0x02 } else { 0x00 };
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        flags,
        0,
        30,
        props.len() as u8,
    ];
    body.extend_from_slice(props);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

async fn read_packet(raw: &mut Raw) -> Vec<u8> {
    let mut head = raw.read_n(2).await;
    let body = raw.read_n(usize::from(head[1])).await;
    head.extend(body);
    head
}

#[tokio::test]
async fn retained_messages_on_subscribe_respect_receive_maximum() {
    let t = TestServer::start().await;
    let mut p = t.v4("retainer", true).await;
    for i in 0..5 {
        p.publish(&format!("r/{i}"), QoS::AtLeastOnce, true, b"x")
            .await;
        p.puback().await;
    }
    let mut raw = t.raw("narrow").await;
    // Receive Maximum 2.
    raw.send(&connect_v5_with("narrow", true, &[0x21, 0x00, 0x02]))
        .await;
    read_packet(&mut raw).await;
    raw.send(&[
        0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, b'r', b'/', b'#', 0x01,
    ])
    .await;
    let suback = read_packet(&mut raw).await;
    assert_eq!(suback[0], 0x90);
    let first = read_packet(&mut raw).await;
    let second = read_packet(&mut raw).await;
    assert_eq!(first[0] & 0xf0, 0x30);
    assert_eq!(second[0] & 0xf0, 0x30);
    // No third PUBLISH until one is acknowledged [MQTT-3.3.4-9].
    let mut probe = [0u8; 1];
    let more = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut raw.stream, &mut probe),
    )
    .await;
    assert!(
        more.is_err(),
        "a third message arrived beyond Receive Maximum"
    );
    // PUBACK the first one.
    let pkid = publish_pkid(&first);
    raw.send(&[0x40, 0x02, pkid[0], pkid[1]]).await;
    let third = read_packet(&mut raw).await;
    assert_eq!(third[0] & 0xf0, 0x30, "the window reopened");
}

/// Packet identifier of a raw QoS 1 PUBLISH: it follows the topic.
fn publish_pkid(p: &[u8]) -> [u8; 2] {
    let topic_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    [p[4 + topic_len], p[5 + topic_len]]
}

#[tokio::test]
async fn messages_resent_after_a_reconnect_respect_the_new_receive_maximum() {
    let t = TestServer::start().await;
    // A persistent session with room for 5 takes 5 messages and acknowledges none.
    let mut raw = t.raw("resumer").await;
    raw.send(&connect_v5_with(
        "resumer",
        false,
        &[0x11, 0, 0, 1, 0x2c, 0x21, 0x00, 0x05],
    ))
    .await;
    read_packet(&mut raw).await;
    raw.send(&[
        0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, b'w', b'/', b'#', 0x01,
    ])
    .await;
    assert_eq!(read_packet(&mut raw).await[0], 0x90);
    let mut p = t.v4("feeder", true).await;
    for i in 0..5 {
        p.publish(&format!("w/{i}"), QoS::AtLeastOnce, false, b"x")
            .await;
        p.puback().await;
    }
    for _ in 0..5 {
        assert_eq!(read_packet(&mut raw).await[0] & 0xf0, 0x30);
    }
    drop(raw);
    // Back with room for 2: two resent (DUP), the rest wait for room.
    let mut raw = t.raw("resumer").await;
    raw.send(&connect_v5_with(
        "resumer",
        false,
        &[0x11, 0, 0, 1, 0x2c, 0x21, 0x00, 0x02],
    ))
    .await;
    assert_eq!(read_packet(&mut raw).await[2], 1, "the session was resumed");
    let first = read_packet(&mut raw).await;
    let second = read_packet(&mut raw).await;
    assert_eq!(first[0], 0x3a, "resent QoS 1 with DUP");
    assert_eq!(second[0], 0x3a, "resent QoS 1 with DUP");
    let mut probe = [0u8; 1];
    let more = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut raw.stream, &mut probe),
    )
    .await;
    assert!(more.is_err(), "a resend went beyond Receive Maximum");
    // Each acknowledgement lets one more through, until all five are acknowledged.
    let mut pending = vec![publish_pkid(&first), publish_pkid(&second)];
    let mut seen = 2;
    while let Some(pkid) = pending.pop() {
        raw.send(&[0x40, 0x02, pkid[0], pkid[1]]).await;
        if seen < 5 {
            let next = read_packet(&mut raw).await;
            assert_eq!(next[0], 0x3a, "the window reopened for a resend");
            pending.push(publish_pkid(&next));
            seen += 1;
        }
    }
    assert_eq!(seen, 5);
}

#[tokio::test]
async fn a_session_ended_by_disconnect_does_not_come_back_after_restart() {
    let mut t = TestServer::start().await;
    let mut raw = t.raw("ender").await;
    // Session Expiry 60, then DISCONNECT setting it to 0.
    raw.send(&connect_v5_with("ender", false, &[0x11, 0, 0, 0, 60]))
        .await;
    read_packet(&mut raw).await;
    raw.send(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'e', 0x01])
        .await;
    read_packet(&mut raw).await;
    raw.send(&[0xe0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 0]).await;
    raw.read_to_close().await;
    t.restart().await;
    let c = V5::connect(&t, "ender", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(!c.connack.session_present);
}

#[tokio::test]
async fn a_clean_session_is_not_resumed_by_a_takeover() {
    let t = TestServer::start().await;
    let mut first = t.v4("fleeting", true).await;
    first.subscribe("f/#", QoS::AtLeastOnce).await;
    let second = t.v4("fleeting", false).await;
    assert!(
        !second.session_present,
        "a clean session ends with its connection"
    );
}

#[tokio::test]
async fn the_gateway_uses_topic_aliases_the_client_allows() {
    let t = TestServer::start().await;
    let mut raw = t.raw("aliased").await;
    // Topic Alias Maximum 1.
    raw.send(&connect_v5_with("aliased", true, &[0x22, 0x00, 0x01]))
        .await;
    let connack = read_packet(&mut raw).await;
    // Server Keep Alive is always stated: 30 s as asked.
    assert!(
        connack.windows(3).any(|w| w == [0x13, 0x00, 30]),
        "{connack:?}"
    );
    raw.send(&[
        0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, b'a', b'/', b'#', 0x00,
    ])
    .await;
    read_packet(&mut raw).await;
    let p = t.v4("alias-source", true).await;
    for topic in ["a/x", "a/x", "a/y"] {
        p.publish(topic, QoS::AtMostOnce, false, b"m").await;
    }
    // First: the topic and alias 1 (properties: length 3, 0x23 0x00 0x01).
    let first = read_packet(&mut raw).await;
    assert_eq!(
        &first[2..10],
        &[0x00, 0x03, b'a', b'/', b'x', 0x03, 0x23, 0x00]
    );
    assert_eq!(first[10], 0x01);
    // Second: an empty topic and the alias alone.
    let second = read_packet(&mut raw).await;
    assert_eq!(&second[2..8], &[0x00, 0x00, 0x03, 0x23, 0x00, 0x01]);
    // Third: another topic, and no alias left to give.
    let third = read_packet(&mut raw).await;
    assert_eq!(&third[2..8], &[0x00, 0x03, b'a', b'/', b'y', 0x00]);
}

/// A connection over the load tool's client, which writes exactly what it
/// is given, when it is told to.
async fn lean(t: &TestServer, id: &str) -> edgegate::loadgen::client::Client {
    use edgegate::codec::Protocol;
    use edgegate::loadgen::client::{Client, Target};
    let pem = t.device(id);
    let target = Target {
        addr: t.addr(),
        tls: Some(t.tls_config(Some(&pem))),
        protocol: Protocol::V4,
        websocket: false,
    };
    Client::connect(&target, id).await.expect("connect")
}

/// A subscriber that takes a millisecond per message, and reads its socket
/// only when it has handled what it read: it falls behind any publisher that
/// does not wait for it.
async fn slow_subscriber(
    t: &TestServer,
    topic: &str,
    qos: edgegate::codec::QoS,
    n: usize,
) -> tokio::task::JoinHandle<Vec<u32>> {
    use edgegate::codec::{Ack, Packet, Properties, QoS as Q, SubOptions, Subscribe};
    let mut sub = lean(t, "slow").await;
    sub.queue(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![(topic.into(), SubOptions::qos(qos))],
        properties: Properties::default(),
    }));
    sub.flush().await.expect("subscribe");
    while !matches!(sub.next().await.expect("suback"), Packet::SubAck(_)) {}
    tokio::spawn(async move {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        while got.len() < n && tokio::time::Instant::now() < deadline {
            if tokio::time::timeout(WAIT, sub.read()).await.is_err() {
                break;
            }
            while let Ok(Some(p)) = sub.try_next() {
                if let Packet::Publish(p) = p {
                    if p.qos != Q::AtMostOnce {
                        sub.queue(&Packet::PubAck(Ack::ok(p.pkid)));
                    }
                    got.push(u32::from_be_bytes(
                        p.payload[..4].try_into().expect("4 bytes"),
                    ));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            if sub.flush().await.is_err() {
                break;
            }
        }
        got
    })
}

#[tokio::test]
async fn a_subscriber_falling_behind_paces_its_publishers_instead_of_losing_messages() {
    const N: usize = 3000;
    // Past 200 queued messages the subscriber is falling behind; at 400 it
    // would be disconnected as too slow.
    let t = TestServer::start_with(&format!(
        "[limits]\nmax_stored_messages = 400\n{NO_RATE_LIMITS}"
    ))
    .await;
    // A subscriber that takes a millisecond per message, a fifth of the
    // publisher's pace or less.
    let reader = slow_subscriber(&t, "paced", edgegate::codec::QoS::AtLeastOnce, N).await;
    let mut p = t.v4("fast", true).await;
    for i in 0..N as u32 {
        p.publish("paced", QoS::AtLeastOnce, false, &i.to_be_bytes())
            .await;
    }
    for _ in 0..N {
        p.puback().await;
    }
    let got = reader.await.expect("reader");
    assert_eq!(
        got,
        (0..N as u32).collect::<Vec<_>>(),
        "every message, in order"
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_messages_dropped_total{reason=\"slow_consumer\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_subscriber_falling_behind_paces_qos0_publishers_too() {
    use edgegate::codec::{Packet, Publish};
    // 3000 messages of 8 KiB: far more than the socket buffers between
    // gateway and subscriber hold, so only pacing the publisher's reads can
    // keep them; past 50 queued the subscriber is falling behind, at 100
    // QoS 0 would be dropped.
    const N: usize = 3000;
    let t = TestServer::start_with(&format!(
        "[limits]\nmax_queued_messages = 100\n{NO_RATE_LIMITS}"
    ))
    .await;
    let reader = slow_subscriber(&t, "paced0", edgegate::codec::QoS::AtMostOnce, N).await;
    let mut p = lean(&t, "fast0").await;
    let mut payload = vec![b'x'; 8 * 1024];
    for i in 0..N as u32 {
        payload[..4].copy_from_slice(&i.to_be_bytes());
        p.queue(&Packet::Publish(Publish {
            dup: false,
            qos: edgegate::codec::QoS::AtMostOnce,
            retain: false,
            topic: "paced0".into(),
            pkid: 0,
            properties: edgegate::codec::PublishProperties::default(),
            payload: payload.clone().into(),
        }));
        if p.wbuf.len() >= 64 * 1024 {
            p.flush().await.expect("publish");
        }
    }
    p.flush().await.expect("publish");
    let got = reader.await.expect("reader");
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_messages_dropped_total{reason=\"queue_full\"}"),
        0.0,
        "{} of {N} delivered",
        got.len()
    );
    let first_wrong = got.iter().zip(0..).position(|(g, i)| *g != i);
    assert!(
        got.len() == N && first_wrong.is_none(),
        "{} of {N} delivered; first out of order at {first_wrong:?}",
        got.len(),
    );
}

#[tokio::test]
async fn a_subscriber_that_stopped_reading_does_not_hold_its_publishers_back() {
    let t = TestServer::start_with(&format!(
        "[limits]\nmax_queued_messages = 100\n{NO_RATE_LIMITS}"
    ))
    .await;
    // Subscribed at QoS 0, then never reads again.
    let mut stuck = t.raw("stuck").await;
    stuck.send(&connect_bytes(4, "stuck", 60)).await;
    stuck.read_n(4).await;
    stuck
        .send(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b's', 0x00])
        .await;
    stuck.read_n(5).await;
    // 16 MiB of QoS 0, then a QoS 1 message whose PUBACK must come within
    // WAIT: paced a second per read, the publisher would take hours.
    let mut p = t.v4("steady", true).await;
    let payload = vec![b'x'; 8 * 1024];
    for _ in 0..2000 {
        p.publish("s", QoS::AtMostOnce, false, &payload).await;
    }
    p.publish("s", QoS::AtLeastOnce, false, b"last").await;
    p.puback().await;
    let m = t.metrics().await;
    assert!(metric(&m, "edgegate_messages_dropped_total{reason=\"queue_full\"}") > 0.0);
    assert_eq!(
        metric(&m, "edgegate_connections"),
        2.0,
        "both still connected"
    );
}
