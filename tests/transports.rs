//! Every way a device reaches the gateway: rumqttc over `wss://` with a
//! client certificate or a SigV4-signed URL, raw frames for what no client
//! library sends (fragments, pings, closes), each TLS listener routing
//! MQTT, HTTPS and WebSockets by ALPN as AWS IoT's port 443 does, and
//! PROXY protocol headers from load balancers.

mod common;

use common::*;
use rumqttc::QoS;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A client frame, masked as RFC 6455 requires.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    assert!(payload.len() < 126, "test frames are small");
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// Sends `request` and reads the response head.
async fn ask_http<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &str) -> String {
    s.write_all(request.as_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    let mut head = Vec::new();
    let mut b = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).expect("ASCII")
}

/// Reads exactly `n` bytes.
async fn read_n<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut out))
        .await
        .expect("bytes in time")
        .expect("read");
    out
}

/// A TLS connection offering `alpn`, with a certificate for `cn`.
async fn tls(t: &TestServer, addr: SocketAddr, cn: &str, alpn: &[&[u8]]) -> Raw {
    let mut config = (*t.tls_config(Some(&t.device(cn)))).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Raw::connect(addr, Arc::new(config)).await.expect("TLS")
}

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_311_and_5_travel_over_wss_with_a_client_certificate() {
    let t = TestServer::start().await;
    let port = t.addr().port();
    let url = format!("wss://localhost:{port}/mqtt");
    let mut v4 = V4::wss(&t, &url, port, "ws-four", Some(&t.device("ws-four"))).await;
    let mut v5 = V5::wss(&t, &url, port, "ws-five", Some(&t.device("ws-five"))).await;
    let tcp = t.v4("plain-tls", true).await;
    v4.subscribe("ws/+", QoS::AtLeastOnce).await;
    v5.client
        .subscribe("ws/+", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    v5.suback().await;
    tcp.publish("ws/a", QoS::AtLeastOnce, false, b"from TLS")
        .await;
    assert_eq!(&v4.recv().await.payload[..], b"from TLS");
    assert_eq!(&v5.recv().await.payload[..], b"from TLS");
    // Larger than one frame's worth of a small write, and both ways.
    let big = vec![7u8; 100_000];
    v4.publish("ws/b", QoS::AtLeastOnce, false, &big).await;
    assert_eq!(v5.recv().await.payload.len(), big.len());
    let metrics = t.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "edgegate_transport_connections_total{transport=\"websocket\"}"
        ),
        2.0
    );
    assert!(
        metric(
            &metrics,
            "edgegate_transport_connections_total{transport=\"mqtt\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_pings_and_closes_are_handled_as_rfc_6455_says() {
    let t = TestServer::start().await;
    let mut c = tls(&t, t.addr(), "frames", &[]).await;
    let head = ask_http(&mut c.stream, UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(lower.contains("sec-websocket-protocol: mqtt"), "{head}");
    // CONNECT in two fragments with a ping between them.
    let connect = connect_bytes(4, "frames", 30);
    let (a, b) = connect.split_at(5);
    let mut sent = frame(false, 0x2, a);
    sent.extend(frame(true, 0x9, b"are you there"));
    sent.extend(frame(true, 0x0, b));
    c.send(&sent).await;
    assert_eq!(read_n(&mut c.stream, 15).await, b"\x8a\x0dare you there");
    let connack = read_n(&mut c.stream, 6).await;
    assert_eq!(connack[..2], [0x82, 0x04]);
    assert_eq!(connack[2..], CONNACK_OK);
    // PINGREQ, as a frame of its own, is answered in one.
    c.send(&frame(true, 0x2, &[0xc0, 0x00])).await;
    assert_eq!(read_n(&mut c.stream, 4).await, [0x82, 0x02, 0xd0, 0x00]);
    // The client closes: the gateway answers with the same code and goes.
    c.send(&frame(true, 0x8, &1000u16.to_be_bytes())).await;
    let rest = c.read_to_close().await;
    assert_eq!(rest, [0x88, 0x02, 0x03, 0xe8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_ends_the_connection_with_close_1003() {
    let t = TestServer::start().await;
    let mut c = tls(&t, t.addr(), "texter", &[]).await;
    let head = ask_http(&mut c.stream, UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    c.send(&frame(true, 0x1, b"\x10")).await;
    let rest = c.read_to_close().await;
    assert_eq!(rest, [0x88, 0x02, 0x03, 0xeb]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tls_listener_routes_mqtt_https_and_websockets_by_alpn() {
    let t = TestServer::start().await;
    let ports = [t.addr(), t.server().https.expect("https listener")];
    let shadow = "GET /things/lamp/shadow HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for addr in ports {
        for (i, alpn) in [&b"x-amzn-mqtt-ca"[..], b"mqtt"].into_iter().enumerate() {
            let id = format!("router-{}-{i}", addr.port());
            let mut c = tls(&t, addr, &id, &[alpn]).await;
            c.send(&connect_bytes(4, &id, 30)).await;
            assert_eq!(c.read_n(4).await, CONNACK_OK, "{addr} {alpn:?}");
        }
        for alpn in [&[&b"x-amzn-http-ca"[..]][..], &[b"http/1.1"], &[]] {
            let mut c = tls(&t, addr, "router", alpn).await;
            let head = ask_http(&mut c.stream, shadow).await;
            assert!(head.starts_with("HTTP/1.1 404 "), "{addr} {alpn:?}: {head}");
            let mut c = tls(&t, addr, "router", alpn).await;
            let head = ask_http(&mut c.stream, UPGRADE).await;
            assert!(head.starts_with("HTTP/1.1 101 "), "{addr} {alpn:?}: {head}");
        }
        // No ALPN and MQTT: MQTT, as on 8883.
        let id = format!("router-{}", addr.port());
        let mut c = tls(&t, addr, &id, &[]).await;
        c.send(&connect_bytes(5, &id, 30)).await;
        let connack = c.read_n(4).await;
        assert_eq!((connack[0], connack[3]), (0x20, 0x00), "{addr}");
    }
    let metrics = t.metrics().await;
    for (transport, want) in [("mqtt", 6.0), ("https", 6.0), ("websocket", 6.0)] {
        let series = format!("edgegate_transport_connections_total{{transport=\"{transport}\"}}");
        assert_eq!(metric(&metrics, &series), want, "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrades_get_http_errors_and_are_counted() {
    let t = TestServer::start().await;
    for (request, status) in [
        (UPGRADE.replace("/mqtt", "/chat"), "404"),
        (UPGRADE.replace("Protocol: mqtt", "Protocol: wamp"), "400"),
        (UPGRADE.replace("Version: 13", "Version: 8"), "426"),
    ] {
        let mut c = tls(&t, t.addr(), "refused", &[]).await;
        let head = ask_http(&mut c.stream, &request).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
    }
    let metrics = t.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "edgegate_handshake_failures_total{reason=\"bad_upgrade\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_listener_serves_mqtt_over_ws_too() {
    let t = TestServer::start_with(
        "[mqtt]\nlisten = [\"127.0.0.1:0\"]\nplaintext_listen = \"127.0.0.1:0\"\n\
         [auth]\nanonymous_policies = [\"open\"]\n",
    )
    .await;
    let addr = t.server().plaintext.expect("plaintext listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let head = ask_http(&mut s, UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s.write_all(&frame(true, 0x2, &connect_bytes(4, "plain-ws", 30)))
        .await
        .expect("write");
    let connack = read_n(&mut s, 6).await;
    assert_eq!(connack[2..], CONNACK_OK);
}

/// A gateway with a listener where certificates are optional, and two
/// operators: `AKIDWS` may use `ws/*` topics, `AKIDLOOK` may connect only.
async fn signing_gateway() -> (TestServer, SocketAddr) {
    let mut t = TestServer::prepare(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nclient_cert = \"optional\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\npolicies_dir = \"operator-policies\"\n\
         [[admin.users]]\naccess_key_id = \"AKIDWS\"\nsecret_file = \"ws.secret\"\npolicies = [\"WebSocketClients\"]\n\
         [[admin.users]]\naccess_key_id = \"AKIDLOOK\"\nsecret_file = \"look.secret\"\npolicies = [\"ConnectOnly\"]\n",
    );
    let dir = t.dir.path().join("operator-policies");
    std::fs::create_dir_all(&dir).expect("dir");
    let arn = "arn:aws:iot:us-east-1:000000000000";
    std::fs::write(
        dir.join("WebSocketClients.json"),
        format!(
            r#"{{"Version":"2012-10-17","Statement":[
                {{"Effect":"Allow","Action":"iot:Connect","Resource":"{arn}:client/${{aws:username}}-*"}},
                {{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"{arn}:topic/ws/*"}},
                {{"Effect":"Allow","Action":"iot:Subscribe","Resource":"{arn}:topicfilter/ws/*"}}]}}"#
        ),
    )
    .expect("policy");
    std::fs::write(
        dir.join("ConnectOnly.json"),
        format!(r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"iot:Connect","Resource":"{arn}:client/*"}}]}}"#),
    )
    .expect("policy");
    std::fs::write(t.dir.path().join("ws.secret"), "secret-of-ws\n").expect("secret");
    std::fs::write(t.dir.path().join("look.secret"), "secret-of-look\n").expect("secret");
    t.boot().await;
    let addr = t.server().listeners[0];
    (t, addr)
}

/// A URL presigned as the Device SDK signs it (`host` signed, service
/// `iotdevicegateway`), `age` seconds ago, with `extra` query parameters.
fn presigned(addr: SocketAddr, key: &str, secret: &str, age: i64, extra: &str) -> String {
    let host = format!("localhost:{}", addr.port());
    let when = time::OffsetDateTime::now_utc() - time::Duration::seconds(age);
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let date = when.format(&format).expect("date");
    let query = edgegate::http::sigv4::presign(
        &edgegate::http::sigv4::Request {
            method: "GET",
            path: "/mqtt",
            query: extra,
            headers: &[("host", &host)],
            body: b"",
        },
        key,
        secret,
        ("us-east-1", "iotdevicegateway"),
        &date,
    );
    format!("wss://{host}/mqtt?{query}")
}

/// The upgrade request for `url`, without a client certificate: the
/// status line of the answer.
async fn upgrade_status(t: &TestServer, addr: SocketAddr, url: &str) -> String {
    let target = url.split_once(&format!("{}", addr.port())).expect("port").1;
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    let request = UPGRADE.replacen("/mqtt", target, 1).replace(
        "Host: localhost",
        &format!("Host: localhost:{}", addr.port()),
    );
    let head = ask_http(&mut c.stream, &request).await;
    head.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigv4_signed_url_connects_as_its_operator_under_its_policies() {
    let (t, addr) = signing_gateway().await;
    let url = presigned(addr, "AKIDWS", "secret-of-ws", 0, "");
    let mut v4 = V4::wss(&t, &url, addr.port(), "AKIDWS-one", None).await;
    let mut v5 = V5::wss(&t, &url, addr.port(), "AKIDWS-two", None).await;
    v4.subscribe("ws/news", QoS::AtLeastOnce).await;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    assert_eq!(
        v5.publish_qos1("ws/news", false, "signed").await,
        PubAckReason::Success
    );
    assert_eq!(&v4.recv().await.payload[..], b"signed");
    // Outside its policy: refused as AWS refuses.
    assert_eq!(
        v5.publish_qos1("elsewhere/x", false, "no").await,
        PubAckReason::NotAuthorized
    );
    // A client id its policy does not allow.
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    let target = url.split_once(&addr.port().to_string()).expect("port").1;
    let head = ask_http(
        &mut c.stream,
        &UPGRADE.replacen("/mqtt", target, 1).replace(
            "Host: localhost",
            &format!("Host: localhost:{}", addr.port()),
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    c.send(&frame(true, 0x2, &connect_bytes(4, "someone-else", 30)))
        .await;
    let connack = read_n(&mut c.stream, 6).await;
    assert_eq!(connack[2..], [0x20, 0x02, 0x00, 0x05], "not authorized");
    let metrics = t.metrics().await;
    assert!(metric(&metrics, "edgegate_authz_denied_total{action=\"connect\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrong_and_unknown_signatures_get_403_before_any_mqtt() {
    let (t, addr) = signing_gateway().await;
    let good = presigned(addr, "AKIDWS", "secret-of-ws", 0, "");
    assert!(
        upgrade_status(&t, addr, &good)
            .await
            .starts_with("HTTP/1.1 101")
    );
    for (why, url) in [
        (
            "wrong secret",
            presigned(addr, "AKIDWS", "not-the-secret", 0, ""),
        ),
        (
            "unknown key",
            presigned(addr, "AKIDNOBODY", "secret-of-ws", 0, ""),
        ),
        (
            "too old",
            presigned(addr, "AKIDWS", "secret-of-ws", 20 * 60, ""),
        ),
        (
            "expired",
            presigned(addr, "AKIDWS", "secret-of-ws", 120, "X-Amz-Expires=60"),
        ),
        ("tampered", good.replace("X-Amz-Date=", "X-Amz-Date=1")),
    ] {
        let status = upgrade_status(&t, addr, &url).await;
        assert!(status.starts_with("HTTP/1.1 403"), "{why}: {status}");
    }
    // Within its X-Amz-Expires, an older URL still serves.
    let lasting = presigned(
        addr,
        "AKIDWS",
        "secret-of-ws",
        20 * 60,
        "X-Amz-Expires=3600",
    );
    assert!(
        upgrade_status(&t, addr, &lasting)
            .await
            .starts_with("HTTP/1.1 101")
    );
    let metrics = t.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "edgegate_handshake_failures_total{reason=\"bad_signature\"}"
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_or_a_signature_nothing_is_served() {
    let (t, addr) = signing_gateway().await;
    // MQTT straight over TLS: refused at CONNECT.
    assert_eq!(connack_code_at(&t, addr, "anon").await, Some(0x05));
    // An unsigned upgrade: the WebSocket opens, CONNECT is refused.
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    let head = ask_http(&mut c.stream, UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    c.send(&frame(true, 0x2, &connect_bytes(4, "anon-ws", 30)))
        .await;
    assert_eq!(
        read_n(&mut c.stream, 6).await[2..],
        [0x20, 0x02, 0x00, 0x05]
    );
    // HTTPS: 403.
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    let head = ask_http(
        &mut c.stream,
        "GET /things/lamp/shadow HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // A certificate still serves there, and is still required elsewhere.
    let mut c = tls(&t, addr, "with-cert", &[]).await;
    c.send(&connect_bytes(4, "with-cert", 30)).await;
    assert_eq!(c.read_n(4).await, CONNACK_OK);
    assert_eq!(connack_code_at(&t, t.addr(), "anon-required").await, None);
    let metrics = t.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "edgegate_connections_refused_total{reason=\"unauthenticated\"}"
        ),
        3.0
    );
}

/// The CONNACK code for a 3.1.1 CONNECT without a certificate at `addr`;
/// none if the connection was refused before.
async fn connack_code_at(t: &TestServer, addr: SocketAddr, id: &str) -> Option<u8> {
    let mut raw = Raw::connect(addr, t.tls_config(None)).await.ok()?;
    raw.send(&connect_bytes(4, id, 30)).await;
    let mut got = [0; 4];
    tokio::time::timeout(WAIT, raw.stream.read_exact(&mut got))
        .await
        .expect("an answer or a close in time")
        .ok()?;
    Some(got[3])
}

/// A TLS connection that sends `header` first, as a load balancer does.
async fn behind_proxy(t: &TestServer, addr: SocketAddr, header: &[u8], cn: &str) -> Raw {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(header).await.expect("header");
    let connector = tokio_rustls::TlsConnector::from(t.tls_config(Some(&t.device(cn))));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = connector.connect(name, tcp).await.expect("TLS");
    stream.flush().await.expect("flush");
    Raw { stream }
}

/// A v2 header for a TCP over IPv4 client.
fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(client);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(8883u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_gives_policies_the_clients_real_address() {
    let mut t = TestServer::prepare(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [auth]\nprovisioning = { policies = [\"site\"] }\n",
    );
    // Only clients from 203.0.113.0/24 may connect.
    t.write_policy(
        "site",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*",
            "Condition":{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}}]}"#,
    );
    t.boot().await;
    let (proxied, untrusting) = (t.server().listeners[0], t.server().listeners[1]);
    // Clients inside the policy's block are admitted, those outside refused,
    // whichever version of the header names them.
    for (ip, answer, place) in [
        ([203, 0, 113, 7], CONNACK_OK, "in"),
        ([198, 51, 100, 7], [0x20, 0x02, 0x00, 0x05], "out"),
    ] {
        let [a, b, c, d] = ip;
        let v1 = format!("PROXY TCP4 {a}.{b}.{c}.{d} 127.0.0.1 51000 8883\r\n").into_bytes();
        for (header, id) in [
            (v1, format!("v1-{place}")),
            (v2_header(ip, 51001), format!("v2-{place}")),
        ] {
            let mut c = behind_proxy(&t, proxied, &header, &id).await;
            c.send(&connect_bytes(4, &id, 30)).await;
            assert_eq!(c.read_n(4).await, answer, "{id}");
        }
    }
    // No header where one is required; a header from an untrusted address;
    // a header where none is read.
    let mut tcp = tokio::net::TcpStream::connect(proxied).await.expect("tcp");
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed");
    let mut tcp = tokio::net::TcpStream::connect(untrusting)
        .await
        .expect("tcp");
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8883\r\n")
        .await
        .expect("write");
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed");
    let mut plain = tokio::net::TcpStream::connect(t.addr()).await.expect("tcp");
    plain
        .write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8883\r\n")
        .await
        .expect("write");
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "closed");
    let metrics = t.metrics().await;
    for (reason, want) in [("bad_proxy_header", 1.0), ("untrusted_proxy", 1.0)] {
        let series = format!("edgegate_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), want, "{reason}");
    }
    assert!(
        metric(
            &metrics,
            "edgegate_handshake_failures_total{reason=\"tls\"}"
        ) >= 1.0
    );
}
