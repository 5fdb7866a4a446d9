//! What the gateway refuses, and that it keeps serving everyone else.

mod common;

use common::*;
use edgegate::transport::pki::{Ca, KeyKind};
use rumqttc::QoS;

/// Connects with the given TLS config, sends CONNECT and returns whatever comes back.
async fn attempt(t: &TestServer, config: std::sync::Arc<rustls::ClientConfig>) -> Vec<u8> {
    match Raw::connect(t.addr(), config).await {
        Err(_) => Vec::new(),
        Ok(mut raw) => {
            raw.send(&connect_bytes(4, "intruder", 30)).await;
            raw.read_to_close().await
        }
    }
}

async fn still_serving(t: &TestServer) {
    let mut c = t.v4("good-device", true).await;
    c.subscribe("ok", QoS::AtMostOnce).await;
}

#[tokio::test]
async fn certificates_that_are_missing_foreign_or_expired_are_refused() {
    let t = TestServer::start().await;

    assert!(
        attempt(&t, t.tls_config(None)).await.is_empty(),
        "no certificate"
    );

    let other = Ca::generate("other CA").expect("ca");
    let foreign = other
        .issue_device("intruder", KeyKind::EcdsaP256)
        .expect("cert");
    assert!(
        attempt(&t, t.tls_config(Some(&foreign))).await.is_empty(),
        "foreign CA"
    );

    let expired =
        t.ca.issue_device_valid("old", KeyKind::EcdsaP256, -30, -1)
            .expect("cert");
    assert!(
        attempt(&t, t.tls_config(Some(&expired))).await.is_empty(),
        "expired"
    );

    still_serving(&t).await;
    let m = t.metrics().await;
    for reason in ["no_certificate", "unknown_ca", "expired"] {
        assert_eq!(
            metric(
                &m,
                &format!("edgegate_handshake_failures_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason}\n{m}"
        );
    }
}

#[tokio::test]
async fn rsa_device_certificates_work() {
    let t = TestServer::start().await;
    let pem =
        t.ca.issue_device("rsa-dev", KeyKind::Rsa2048)
            .expect("rsa cert");
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    raw.send(&connect_bytes(4, "rsa-dev", 30)).await;
    assert_eq!(raw.read_n(4).await, vec![0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn a_client_that_never_sends_connect_is_dropped_at_the_deadline() {
    let t = TestServer::start().await;
    let mut raw = t.raw("silent").await;
    let started = tokio::time::Instant::now();
    assert!(raw.read_to_close().await.is_empty());
    // The deadline is 2 s from the first byte (the TLS handshake is already
    // part of it): not before, and not at some multiple of it either.
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(1500)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    still_serving(&t).await;
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_handshake_failures_total{reason=\"timeout\"}"),
        1.0
    );
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_1() {
    let t = TestServer::start().await;
    // MQTT 3.1 and levels past 5 are refused with 3.1.1's return code 1
    // [MQTT-3.1.2-2], never with an MQTT 5 CONNACK.
    for level in [3, 6, 99] {
        let mut raw = t.raw("old-client").await;
        raw.send(&connect_bytes(level, "old", 30)).await;
        assert_eq!(
            raw.read_to_close().await,
            vec![0x20, 0x02, 0x00, 0x01],
            "level {level}"
        );
    }
}

#[tokio::test]
async fn reserved_client_ids_are_refused() {
    let t = TestServer::start().await;
    let mut raw = t.raw("dollar").await;
    raw.send(&connect_bytes(4, "$aws-id", 30)).await;
    assert_eq!(raw.read_to_close().await, vec![0x20, 0x02, 0x00, 0x02]);
}

async fn connected_v5(t: &TestServer, id: &str) -> Raw {
    let mut raw = t.raw(id).await;
    raw.send(&connect_bytes(5, id, 30)).await;
    let head = raw.read_n(2).await;
    assert_eq!(head[0], 0x20, "CONNACK");
    let rest = raw.read_n(usize::from(head[1])).await;
    assert_eq!(rest[1], 0x00, "accepted");
    raw
}

async fn connected_v4(t: &TestServer, id: &str) -> Raw {
    let mut raw = t.raw(id).await;
    raw.send(&connect_bytes(4, id, 30)).await;
    assert_eq!(raw.read_n(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    raw
}

/// The reason code of the DISCONNECT that closes a v5 connection.
fn disconnect_reason(bytes: &[u8]) -> u8 {
    assert!(bytes.len() >= 3, "a DISCONNECT with a reason: {bytes:?}");
    assert_eq!(bytes[0], 0xe0, "DISCONNECT: {bytes:?}");
    bytes[2]
}

#[tokio::test]
async fn malformed_packets_close_the_connection() {
    let t = TestServer::start().await;
    // Reserved packet type 0.
    let mut raw = connected_v4(&t, "garbage").await;
    raw.send(&[0x00, 0x00]).await;
    assert!(raw.read_to_close().await.is_empty());
    // Remaining length longer than four bytes, on v5: DISCONNECT 0x81.
    let mut raw = connected_v5(&t, "garbage5").await;
    raw.send(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]).await;
    assert_eq!(disconnect_reason(&raw.read_to_close().await), 0x81);
    // SUBSCRIBE with wrong fixed-header flags.
    let mut raw = connected_v5(&t, "flags5").await;
    raw.send(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'])
        .await;
    assert_eq!(disconnect_reason(&raw.read_to_close().await), 0x81);
    still_serving(&t).await;
    assert!(metric(&t.metrics().await, "edgegate_protocol_errors_total") >= 3.0);
}

#[tokio::test]
async fn oversize_packets_are_refused_before_they_are_buffered() {
    let t = TestServer::start_with("[limits]\nmax_packet_bytes = 1024\nmax_payload_bytes = 512\n")
        .await;
    let mut raw = connected_v5(&t, "big").await;
    // Announces 1 MiB; only the header is sent.
    raw.send(&[0x30, 0x80, 0x80, 0x40]).await;
    assert_eq!(disconnect_reason(&raw.read_to_close().await), 0x95);
    // A payload over the payload limit but inside the packet limit.
    let mut raw = connected_v5(&t, "big2").await;
    let mut p = vec![0x30, 0xc8, 0x05, 0x00, 0x01, b't', 0x00];
    p.extend(std::iter::repeat_n(b'x', 0x2c8 - 4));
    raw.send(&p).await;
    assert_eq!(disconnect_reason(&raw.read_to_close().await), 0x95);
    still_serving(&t).await;
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_limit_refusals_total{limit=\"packet\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "edgegate_limit_refusals_total{limit=\"payload\"}"),
        1.0
    );
}

#[tokio::test]
async fn protocol_violations_get_their_reason_codes() {
    let t = TestServer::start().await;
    // A second CONNECT [MQTT-3.1.0-2].
    let mut raw = connected_v5(&t, "twice").await;
    raw.send(&connect_bytes(5, "twice", 30)).await;
    assert_eq!(disconnect_reason(&raw.read_to_close().await), 0x82);
    // A wildcard in a PUBLISH topic [MQTT-3.3.2-2].
    let mut raw = connected_v5(&t, "wild").await;
    raw.send(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00]).await;
    assert_eq!(disconnect_reason(&raw.read_to_close().await), 0x90);
    // The same on 3.1.1 just closes.
    let mut raw = connected_v4(&t, "wild4").await;
    raw.send(&[0x30, 0x03, 0x00, 0x01, b'#']).await;
    assert!(raw.read_to_close().await.is_empty());
    // An invalid filter gets SUBACK 0x8F and the connection stays.
    let mut raw = connected_v5(&t, "badfilter").await;
    raw.send(&[
        0x82, 0x09, 0x00, 0x07, 0x00, 0x00, 0x03, b'a', b'#', b'b', 0x00,
    ])
    .await;
    let head = raw.read_n(2).await;
    let suback = raw.read_n(usize::from(head[1])).await;
    assert_eq!(head[0], 0x90);
    assert_eq!(&suback[..2], &[0x00, 0x07]);
    assert_eq!(suback.last(), Some(&0x8f), "Topic Filter invalid");
    let text = String::from_utf8_lossy(&suback);
    assert!(
        text.contains("a#b"),
        "the reason string names the filter: {text}"
    );
    raw.send(&[0xc0, 0x00]).await;
    assert_eq!(
        raw.read_n(2).await,
        vec![0xd0, 0x00],
        "still alive: PINGRESP"
    );
    still_serving(&t).await;
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let t = TestServer::start().await;
    let mut raw = t.raw("sleepy").await;
    raw.send(&connect_bytes(5, "sleepy", 1)).await;
    let head = raw.read_n(2).await;
    raw.read_n(usize::from(head[1])).await;
    let started = tokio::time::Instant::now();
    let rest = raw.read_to_close().await;
    assert_eq!(disconnect_reason(&rest), 0x8d);
    let waited = started.elapsed();
    // 1.5 times the 1 s keep alive: a 5 times one fails this.
    assert!(
        waited >= std::time::Duration::from_millis(1400)
            && waited < std::time::Duration::from_millis(3500),
        "{waited:?}"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let t = TestServer::start_with("[limits]\nmax_connections = 1\n").await;
    let _first = t.v4("only-one", true).await;
    let pem = t.device("second");
    let refused = match Raw::connect(t.addr(), t.tls_config(Some(&pem))).await {
        Err(_) => true,
        Ok(mut raw) => {
            raw.send(&connect_bytes(4, "second", 30)).await;
            raw.read_to_close().await.is_empty()
        }
    };
    assert!(refused, "a second connection got through");
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_handshake_failures_total{reason=\"connection_limit\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn alpn_as_aws_iot_sdks_offer_it() {
    let t = TestServer::start().await;
    let pem = t.device("alpn-dev");
    for proto in [&b"x-amzn-mqtt-ca"[..], b"mqtt"] {
        let mut config = (*t.tls_config(Some(&pem))).clone();
        config.alpn_protocols = vec![proto.to_vec()];
        let mut raw = Raw::connect(t.addr(), std::sync::Arc::new(config))
            .await
            .expect("handshake");
        assert_eq!(raw.stream.get_ref().1.alpn_protocol(), Some(proto));
        raw.send(&connect_bytes(4, "alpn-dev", 30)).await;
        assert_eq!(raw.read_n(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    }
}

#[tokio::test]
async fn tls_1_2_is_served_with_forward_secret_suites_only() {
    let t = TestServer::start().await;
    let pem = t.device("tls12");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let base = t.tls_config(Some(&pem));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls 1.2")
        .with_root_certificates(base_roots(&t))
        .with_client_auth_cert(certs(&pem.cert), key(&pem.key))
        .expect("client auth");
    config.alpn_protocols = base.alpn_protocols.clone();
    let mut raw = Raw::connect(t.addr(), std::sync::Arc::new(config))
        .await
        .expect("handshake");
    let conn = raw.stream.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!(
        "{:?}",
        conn.negotiated_cipher_suite().expect("suite").suite()
    );
    assert!(suite.starts_with("TLS_ECDHE_"), "{suite}");
    raw.send(&connect_bytes(4, "tls12", 30)).await;
    assert_eq!(raw.read_n(4).await, vec![0x20, 0x02, 0x00, 0x00]);
}

fn base_roots(t: &TestServer) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&t.ca.pem.cert) {
        roots.add(c).expect("root");
    }
    roots
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem")
}

fn key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .expect("pem")
        .expect("key")
}

#[tokio::test]
async fn a_rotated_server_certificate_applies_to_new_connections_only() {
    let t = TestServer::start().await;
    let mut before = t.v4("before-rotation", true).await;
    let connect_as = |name: &'static str| {
        let pem = t.device("rotation-probe");
        let config = t.tls_config(Some(&pem));
        let addr = t.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let server_name = rustls::pki_types::ServerName::try_from(name).ok()?;
            connector.connect(server_name, tcp).await.ok()
        }
    };
    assert!(
        connect_as("rotated.local").await.is_none(),
        "not yet a name of the server"
    );
    // Rotate: a new certificate with one more name, saved atomically.
    let rotated =
        t.ca.issue_server(&["localhost", "127.0.0.1", "rotated.local"])
            .expect("server cert");
    let certs = t.dir.path().join("certs");
    for (file, text) in [("server.key", &rotated.key), ("server.pem", &rotated.cert)] {
        let tmp = certs.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, certs.join(file)).expect("rename");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect_as("rotated.local").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The connection made before the rotation is untouched.
    assert_eq!(
        before.subscribe("still/here", QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
}

/// A revocation list from the test CA revoking the given device certificates.
fn crl(t: &TestServer, revoked: &[&edgegate::transport::pki::Pem]) -> String {
    let key = rcgen::KeyPair::from_pem(&t.ca.pem.key).expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&t.ca.pem.cert, key).expect("ca");
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|pem| {
            let (_, der) = x509_parser::pem::parse_x509_pem(pem.cert.as_bytes()).expect("pem");
            let cert = der.parse_x509().expect("certificate");
            rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(revoked.len() as u64 + 1),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .expect("crl")
    .pem()
    .expect("crl pem")
}

/// Whether a client with this certificate gets a successful CONNACK.
async fn accepted(t: &TestServer, pem: &edgegate::transport::pki::Pem) -> bool {
    let Ok(mut raw) = Raw::connect(t.addr(), t.tls_config(Some(pem))).await else {
        return false;
    };
    raw.send(&connect_bytes(4, "revocation-probe", 30)).await;
    let mut connack = [0u8; 4];
    let read = tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut connack);
    matches!(tokio::time::timeout(WAIT, read).await, Ok(Ok(_))) && connack == [0x20, 2, 0, 0]
}

#[tokio::test]
async fn certificates_on_the_revocation_list_are_refused_once_it_changes() {
    let mut t = TestServer::prepare(r#"crl = "certs/crl.pem""#);
    let path = t.dir.path().join("certs/crl.pem");
    std::fs::write(&path, crl(&t, &[])).expect("write crl");
    t.boot().await;
    let lost = t.device("lost-device");
    assert!(accepted(&t, &lost).await, "not revoked yet");
    std::fs::write(&path, crl(&t, &[&lost])).expect("write crl");
    let deadline = tokio::time::Instant::now() + WAIT;
    while accepted(&t, &lost).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked certificate is still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    still_serving(&t).await;
    let m = t.metrics().await;
    assert!(metric(&m, "edgegate_handshake_failures_total{reason=\"revoked\"}") >= 1.0);
}

#[tokio::test]
async fn live_connections_close_when_the_revocation_list_names_them() {
    let mut t = TestServer::prepare(r#"crl = "certs/crl.pem""#);
    let path = t.dir.path().join("certs/crl.pem");
    std::fs::write(&path, crl(&t, &[])).expect("write crl");
    t.boot().await;
    let (lost, kept) = (t.device("lost"), t.device("kept"));
    let port = t.addr().port();
    let mut gone = V5::connect_with(&t, port, "lost", &lost, |_| {}).await;
    let mut stays = V5::connect_with(&t, port, "kept", &kept, |_| {}).await;
    std::fs::write(&path, crl(&t, &[&lost])).expect("write crl");
    let ended = gone.ended().await;
    assert!(
        ended.contains("NotAuthorized"),
        "MQTT 5 DISCONNECT 0x87 Not authorized: {ended}"
    );
    stays
        .nothing_for(std::time::Duration::from_millis(300))
        .await;
    stays
        .client
        .publish(
            "still/here",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .expect("queued");
    assert_eq!(
        stays.puback().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NoMatchingSubscribers,
        "another device of the same CA is untouched"
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_connections_refused_total{reason=\"revocation_list\"}"
        ),
        0.0,
        "closing a live connection is not a refused connect"
    );
}

#[tokio::test]
async fn rate_limits_refuse_or_slow_one_client_and_never_its_neighbour() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
    let t = TestServer::start_with(
        "[limits]\npublishes_per_second = 10\npublish_bytes_per_second = 2000\nsubscriptions_per_second = 3\n",
    )
    .await;
    // MQTT 5: publishes over the rate are refused with 0x97, as AWS IoT does.
    let mut flood = t.v5("flooder").await;
    let mut calm = t.v5("neighbour").await;
    const N: usize = 60;
    for i in 0..N {
        flood
            .client
            .publish("load/x", QoS5::AtLeastOnce, false, vec![b'x'; 10])
            .await
            .expect("queued");
        if i % 20 == 0 {
            calm.client
                .publish("calm/x", QoS5::AtLeastOnce, false, "x")
                .await
                .expect("queued");
        }
    }
    let mut refused = 0;
    for _ in 0..N {
        match flood.puback().await {
            PubAckReason::QuotaExceeded => refused += 1,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused >= N - 10 - 10,
        "{refused} of {N} refused at 10 a second"
    );
    for _ in 0..3 {
        assert_eq!(
            calm.puback().await,
            PubAckReason::NoMatchingSubscribers,
            "the neighbour has its own rate"
        );
    }

    // A SUBSCRIBE past the subscriptions a second: the excess filters get 0x97.
    let filters =
        (0..5).map(|i| rumqttc::v5::mqttbytes::v5::Filter::new(format!("f/{i}"), QoS5::AtMostOnce));
    calm.client.subscribe_many(filters).await.expect("queued");
    let codes = calm.suback().await;
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == SubscribeReasonCode::QuotaExceeded)
            .count(),
        2,
        "{codes:?}"
    );

    // MQTT 3.1.1 cannot be refused: a client over the rates is slowed, and
    // every publish is acknowledged in the end.
    let mut slow = t.v4("slowed", true).await;
    for _ in 0..15 {
        slow.publish("load/y", QoS::AtLeastOnce, false, &[b'y'; 400])
            .await;
    }
    for _ in 0..15 {
        slow.puback().await;
    }
    let m = t.metrics().await;
    for limit in ["publish_rate", "byte_rate", "subscribe_rate"] {
        assert!(
            metric(
                &m,
                &format!("edgegate_limit_refusals_total{{limit=\"{limit}\"}}")
            ) >= 1.0,
            "{limit}\n{m}"
        );
    }
}

#[tokio::test]
async fn a_reconnect_storm_of_one_client_id_starves_no_other() {
    let t = TestServer::start_with(
        "[limits]\nconnects_per_second_per_client_id = 1\nconnect_burst_per_client_id = 2\n",
    )
    .await;
    let config = t.tls_config(Some(&t.device("storm")));
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(connack_code(&t, config.clone(), "storm").await);
    }
    assert_eq!(&codes[..2], [Some(0), Some(0)], "the burst connects");
    assert!(
        codes[2..].iter().all(|c| *c == Some(3)),
        "then 3.1.1's Server unavailable (MQTT 5: 0x9F Connection rate exceeded): {codes:?}"
    );
    let calm = t.tls_config(Some(&t.device("calm")));
    assert_eq!(
        connack_code(&t, calm, "calm").await,
        Some(0),
        "another client id connects"
    );
    let m = t.metrics().await;
    assert!(
        metric(&m, "edgegate_limit_refusals_total{limit=\"connect_rate\"}") >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn new_connections_from_one_address_are_limited() {
    let t = TestServer::start_with(
        "[limits]\nconnections_per_second_per_address = 1\nconnection_burst_per_address = 3\n",
    )
    .await;
    let config = t.tls_config(Some(&t.device("many")));
    let mut accepted = 0;
    for i in 0..6 {
        if connack_code(&t, config.clone(), &format!("many-{i}")).await == Some(0) {
            accepted += 1;
        }
    }
    assert!((3..=4).contains(&accepted), "{accepted} of 6 connected");
    let m = t.metrics().await;
    assert!(
        metric(
            &m,
            "edgegate_limit_refusals_total{limit=\"connection_rate\"}"
        ) >= 2.0,
        "{m}"
    );
}

/// The 3.1.1 CONNACK return code for a persistent session (clean session 0) as `id`.
async fn persistent_connack(t: &TestServer, id: &str) -> u8 {
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&t.device(id))))
        .await
        .expect("tls");
    let mut connect = connect_bytes(4, id, 30);
    connect[9] = 0x00; // connect flags: clean session 0
    raw.send(&connect).await;
    raw.read_n(4).await[3]
}

#[tokio::test]
async fn new_persistent_sessions_are_bounded_and_clean_ones_never_refused() {
    let t = TestServer::start_with("[limits]\nmax_sessions = 2\n").await;
    assert_eq!(persistent_connack(&t, "kept-1").await, 0);
    assert_eq!(persistent_connack(&t, "kept-2").await, 0);
    assert_eq!(
        persistent_connack(&t, "one-too-many").await,
        3,
        "a third persistent session: 3.1.1's Server unavailable (MQTT 5: 0x97)"
    );
    assert_eq!(
        persistent_connack(&t, "kept-1").await,
        0,
        "a session the gateway holds comes back"
    );
    let calm = t.tls_config(Some(&t.device("clean")));
    assert_eq!(
        connack_code(&t, calm, "clean").await,
        Some(0),
        "a clean session is never refused"
    );
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_limit_refusals_total{limit=\"sessions\"}"),
        1.0,
        "{m}"
    );
}
