//! Custom authorizers as AWS runs them: a client without a certificate
//! presents a token in its MQTT username or its WebSocket upgrade, the
//! authorizer's endpoint decides, and its policies govern the connection.

mod common;

use common::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the authorizer endpoint was asked; it answers by the token.
#[derive(Clone, Default)]
struct Endpoint {
    asked: Arc<parking_lot::Mutex<Vec<Value>>>,
}

async fn decide(
    axum::extract::State(e): axum::extract::State<Endpoint>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let doc: Value = serde_json::from_slice(&body).expect("JSON");
    e.asked.lock().push(doc.clone());
    let arn = "arn:aws:iot:us-east-1:000000000000";
    match doc["token"].as_str().unwrap_or_default() {
        "deny" => json!({"isAuthenticated": false}).to_string().into_response(),
        "garbage" => "allow!".into_response(),
        "broken" => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "silent" => std::future::pending().await,
        "unruly" => json!({"isAuthenticated": true, "principalId": "Device1",
            "disconnectAfterInSeconds": 10, "refreshAfterInSeconds": 300,
            "policyDocuments": []})
        .to_string()
        .into_response(),
        _ => json!({
            "isAuthenticated": true, "principalId": "Device1",
            "disconnectAfterInSeconds": 3600, "refreshAfterInSeconds": 300,
            "policyDocuments": [{"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "iot:Connect", "Resource": format!("{arn}:client/dev-*")},
                {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": format!("{arn}:topic/dev/*")},
                {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": format!("{arn}:topicfilter/dev/*")}]}]})
        .to_string()
        .into_response(),
    }
}

/// An authorizer endpoint on 127.0.0.1; its URL.
async fn endpoint() -> (Endpoint, String) {
    let e = Endpoint::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/authorize", axum::routing::post(decide))
        .with_state(e.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (e, format!("http://{addr}/authorize"))
}

/// A gateway with a listener where certificates are optional and the
/// authorizers `extra` configures; the listener's address.
async fn gateway(extra: &str) -> (TestServer, SocketAddr) {
    let t = TestServer::start_with(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nclient_cert = \"optional\"\n{extra}"
    ))
    .await;
    let addr = t.server().listeners[0];
    (t, addr)
}

fn authorizer(name: &str, url: &str, more: &str) -> String {
    format!(
        "[[authorizers]]\nname = \"{name}\"\nendpoint = \"{url}\"\ntoken_key_name = \"tok\"\n{more}"
    )
}

/// A CONNECT with a username and password.
fn connect_with(level: u8, id: &str, username: &str, password: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0xc2, 0, 30];
    if level == 5 {
        body.push(0);
    }
    for field in [id.as_bytes(), username.as_bytes(), password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut p = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    p.extend(body);
    p
}

/// The CONNACK code for a CONNECT without a certificate.
async fn connack(t: &TestServer, addr: SocketAddr, connect: &[u8]) -> u8 {
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    c.send(connect).await;
    let head = c.read_n(4).await;
    assert_eq!(head[0], 0x20, "{head:?}");
    head[3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_username_connects_under_the_authorizers_policies() {
    let (e, url) = endpoint().await;
    let (t, addr) = gateway(&authorizer("TokenAuth", &url, "signing_disabled = true\n")).await;
    let username = "dev?x-amz-customauthorizer-name=TokenAuth&tok=allow&SDK=IoTDeviceSDK/Python";
    assert_eq!(
        connack(&t, addr, &connect_with(4, "dev-1", username, b"pw")).await,
        0
    );
    let asked = e.asked.lock()[0].clone();
    assert_eq!(asked["token"], "allow");
    assert_eq!(asked["signatureVerified"], false);
    assert_eq!(asked["protocols"], json!(["tls", "mqtt"]));
    assert_eq!(asked["protocolData"]["mqtt"]["username"], username);
    assert_eq!(asked["protocolData"]["mqtt"]["password"], "cHc=");
    assert_eq!(asked["protocolData"]["mqtt"]["clientId"], "dev-1");
    assert!(asked["connectionMetadata"]["id"].is_string());
    // The same token again: the answer is reused for its refresh interval.
    assert_eq!(
        connack(&t, addr, &connect_with(4, "dev-2", username, b"pw")).await,
        0
    );
    assert_eq!(e.asked.lock().len(), 1);
    // Its policies govern: a client id they do not allow, a topic either.
    assert_eq!(
        connack(&t, addr, &connect_with(4, "other", username, b"pw")).await,
        5
    );
    let mut opts = rumqttc::v5::MqttOptions::new("dev-v5", "localhost", addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(t.tls_config(None)),
    ));
    opts.set_credentials(username, "pw");
    let mut v5 = V5::start(opts).await;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    // Allowed (no one listens there).
    assert_eq!(
        v5.publish_qos1("dev/ok", false, "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        v5.publish_qos1("elsewhere", false, "x").await,
        PubAckReason::NotAuthorized
    );
    let metrics = t.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "edgegate_authorizer_decisions_total{outcome=\"allowed\"}"
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_down_slow_and_garbage_all_fail_closed() {
    let (_e, url) = endpoint().await;
    let down = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        format!("http://{}/authorize", l.local_addr().expect("addr"))
    };
    let (t, addr) = gateway(&format!(
        "{}{}",
        authorizer("TokenAuth", &url, "signing_disabled = true\n"),
        authorizer("Down", &down, "signing_disabled = true\n")
    ))
    .await;
    for (name, token) in [
        ("TokenAuth", "deny"),
        ("TokenAuth", "garbage"),
        ("TokenAuth", "broken"),
        ("TokenAuth", "silent"),
        ("TokenAuth", "unruly"),
        ("Down", "allow"),
        ("Nobody", "allow"),
    ] {
        let username = format!("u?x-amz-customauthorizer-name={name}&tok={token}");
        for level in [4, 5] {
            let code = connack(&t, addr, &connect_with(level, "dev-x", &username, b"")).await;
            let want = if level == 4 { 4 } else { 0x86 };
            assert_eq!(code, want, "{name} {token} v{level}");
        }
    }
    // No authorizer named and none the default: as without credentials.
    assert_eq!(
        connack(&t, addr, &connect_with(4, "dev-x", "plain", b"")).await,
        5
    );
    let metrics = t.metrics().await;
    for (outcome, want) in [
        ("not_authenticated", 2.0),
        ("failed", 8.0),
        ("unknown", 2.0),
    ] {
        let series = format!("edgegate_authorizer_decisions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&metrics, &series), want, "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_is_verified_before_the_authorizer_is_asked() {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let (e, url) = endpoint().await;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key");
    let pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let der = private.to_pkcs8_der().expect("der");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes()).expect("pair");
    let sign = |token: &str| {
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            token.as_bytes(),
            &mut sig,
        )
        .expect("sign");
        edgegate::sql::eval::base64_encode(&sig)
    };
    let mut t = TestServer::prepare("");
    std::fs::write(t.dir.path().join("token.pem"), pem).expect("key file");
    t.extra_toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nclient_cert = \"optional\"\n{}",
        authorizer(
            "Signed",
            &url,
            "default = true\n[authorizers.token_signing_public_keys]\nkey1 = \"token.pem\"\n"
        )
    );
    t.boot().await;
    let addr = t.server().listeners[0];
    // Named by default; the signature percent-encoded as the SDK sends it.
    let good = sign("allow");
    let quoted = good.replace('+', "%2B").replace('=', "%3D");
    let username = format!("dev?x-amz-customauthorizer-signature={quoted}&tok=allow");
    assert_eq!(
        connack(&t, addr, &connect_with(4, "dev-s", &username, b"")).await,
        0
    );
    assert_eq!(e.asked.lock()[0]["signatureVerified"], true);
    for bad in [
        format!("dev?x-amz-customauthorizer-signature={quoted}&tok=allow2"),
        "dev?tok=allow".to_owned(),
    ] {
        assert_eq!(
            connack(&t, addr, &connect_with(4, "dev-s", &bad, b"")).await,
            4
        );
    }
    assert_eq!(e.asked.lock().len(), 1, "not asked about a bad signature");
    let metrics = t.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "edgegate_authorizer_decisions_total{outcome=\"bad_signature\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_carries_its_token_in_headers() {
    let (e, url) = endpoint().await;
    let (t, addr) = gateway(&authorizer("TokenAuth", &url, "signing_disabled = true\n")).await;
    let upgrade = |token: &str| {
        format!(
            "GET /mqtt?tok={token} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\nx-amz-customauthorizer-name: TokenAuth\r\n\r\n"
        )
    };
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    let answer = head(&mut c, &upgrade("deny")).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    let mut c = Raw::connect(addr, t.tls_config(None)).await.expect("TLS");
    let answer = head(&mut c, &upgrade("allow")).await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let asked = e.asked.lock().last().cloned().expect("asked");
    assert_eq!(asked["protocols"], json!(["tls", "http"]));
    assert_eq!(asked["protocolData"]["http"]["queryString"], "?tok=allow");
    assert_eq!(
        asked["protocolData"]["http"]["headers"]["x-amz-customauthorizer-name"],
        "TokenAuth"
    );
    // CONNECT in a masked binary frame: admitted under the token's policies.
    let connect = connect_bytes(4, "dev-ws", 30);
    let mask = [1, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | connect.len() as u8];
    frame.extend(mask);
    frame.extend(connect.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    c.send(&frame).await;
    assert_eq!(c.read_n(6).await, [0x82, 0x04, 0x20, 0x02, 0x00, 0x00]);
}

/// Sends `request` and reads the answer's head.
async fn head(c: &mut Raw, request: &str) -> String {
    c.stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, c.stream.read(&mut b))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).expect("ascii")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_authorizers_through_the_control_plane() {
    let (e, url) = endpoint().await;
    let mut t = TestServer::prepare_with_operator(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nclient_cert = \"optional\"\n{}",
        authorizer("FromFile", &url, "signing_disabled = true\n")
    ));
    t.boot().await;
    let aws = t.operator();
    let made =
        json!({"authorizerFunctionArn": url, "tokenKeyName": "tok", "signingDisabled": true});
    let (status, body) = aws.post("/authorizer/ApiAuth", "", made.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["authorizerArn"],
        "arn:aws:iot:us-east-1:000000000000:authorizer/ApiAuth"
    );
    assert_eq!(aws.post("/authorizer/ApiAuth", "", made).await.0, 409);
    let (_, listed) = aws.get("/authorizers", "").await;
    let names: Vec<&str> = listed["authorizers"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["authorizerName"].as_str())
        .collect();
    assert_eq!(names, ["ApiAuth", "FromFile"]);
    let (_, described) = aws.get("/authorizer/FromFile", "").await;
    assert_eq!(described["authorizerDescription"]["source"], "config.toml");
    let (status, _) = aws
        .call(
            "PUT",
            "/authorizer/FromFile",
            "",
            &[],
            r#"{"status":"INACTIVE"}"#,
        )
        .await;
    assert_eq!(status, 409, "config.toml's is changed there");
    // The default answers clients that name no authorizer.
    let addr = t.server().listeners[0];
    assert_eq!(
        connack(&t, addr, &connect_with(4, "dev-d", "dev?tok=allow", b"")).await,
        5,
        "no default yet"
    );
    let (status, _) = aws
        .post(
            "/default-authorizer",
            "",
            json!({"authorizerName": "ApiAuth"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        connack(&t, addr, &connect_with(4, "dev-d", "dev?tok=allow", b"")).await,
        0
    );
    assert_eq!(
        aws.call("DELETE", "/authorizer/ApiAuth", "", &[], "")
            .await
            .0,
        409
    );
    // TestInvokeAuthorizer shows the answer, its policies as strings.
    let (status, tested) = aws
        .post(
            "/authorizer/ApiAuth/test",
            "",
            json!({"token": "allow", "mqttContext": {"username": "u", "password": "cHc=", "clientId": "c"}}),
        )
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["isAuthenticated"], true);
    assert!(tested["policyDocuments"][0].is_string(), "{tested}");
    let asked = e.asked.lock().last().cloned().expect("asked");
    assert_eq!(asked["protocolData"]["mqtt"]["password"], "cHc=");
    let (_, denied) = aws
        .post("/authorizer/ApiAuth/test", "", json!({"token": "deny"}))
        .await;
    assert_eq!(denied["isAuthenticated"], false);
    let (status, broken) = aws
        .post("/authorizer/ApiAuth/test", "", json!({"token": "garbage"}))
        .await;
    assert_eq!(
        (status, broken["__type"].as_str()),
        (400, Some("InvalidResponseException"))
    );
    // Kept across a restart.
    t.restart().await;
    let aws = t.operator();
    let (_, default) = aws.get("/default-authorizer", "").await;
    assert_eq!(
        default["authorizerDescription"]["authorizerName"],
        "ApiAuth"
    );
    assert_eq!(
        aws.call("DELETE", "/default-authorizer", "", &[], "")
            .await
            .0,
        200
    );
    assert_eq!(
        aws.call("DELETE", "/authorizer/ApiAuth", "", &[], "")
            .await
            .0,
        200
    );
    assert_eq!(aws.get("/authorizer/ApiAuth", "").await.0, 404);
}
