//! Device shadows over MQTT (rumqttc v4 and v5) and over the `iot-data`
//! REST API, as spec/aws-iot-shadow-rules.md §1 and §4 describe them.

mod common;

use common::*;
use rumqttc::QoS;
use serde_json::{Value, json};
use std::time::Duration;

/// Waits for the next message on `topic`, skipping others (the device's own
/// requests, other responses).
async fn response(dev: &mut V4, topic: &str) -> Value {
    loop {
        let p = dev.recv().await;
        if p.topic == topic {
            return serde_json::from_slice(&p.payload).expect("a JSON response");
        }
    }
}

async fn request(dev: &mut V4, topic: &str, body: Value) {
    dev.publish(topic, QoS::AtLeastOnce, false, body.to_string().as_bytes())
        .await;
}

#[tokio::test]
async fn classic_shadow_flow_over_mqtt_3_1_1() {
    let t = TestServer::start().await;
    let mut dev = t.v4("sh-1", true).await;
    let p = "$aws/things/sh-1/shadow";
    dev.subscribe(&format!("{p}/+/+"), QoS::AtLeastOnce).await;

    request(&mut dev, &format!("{p}/get"), json!({"clientToken": "g1"})).await;
    let r = response(&mut dev, &format!("{p}/get/rejected")).await;
    assert_eq!(
        (
            r["code"].as_u64(),
            r["message"].as_str(),
            r["clientToken"].as_str()
        ),
        (
            Some(404),
            Some("No shadow exists with name: 'sh-1'"),
            Some("g1")
        )
    );

    request(
        &mut dev,
        &format!("{p}/update"),
        json!({"state": {"reported": {"color": "green"}}, "clientToken": "u1"}),
    )
    .await;
    let docs = response(&mut dev, &format!("{p}/update/documents")).await;
    assert!(docs.get("previous").is_none(), "created: no previous");
    assert_eq!(docs["current"]["version"], 1);
    let a = response(&mut dev, &format!("{p}/update/accepted")).await;
    assert_eq!(
        (a["version"].as_u64(), a["clientToken"].as_str()),
        (Some(1), Some("u1"))
    );
    assert_eq!(a["state"], json!({"reported": {"color": "green"}}));
    assert!(
        a["metadata"]["reported"]["color"]["timestamp"]
            .as_u64()
            .is_some_and(|t| t < 10_000_000_000),
        "seconds"
    );

    request(
        &mut dev,
        &format!("{p}/update"),
        json!({"state": {"desired": {"color": "red"}}, "clientToken": "u2"}),
    )
    .await;
    let d = response(&mut dev, &format!("{p}/update/delta")).await;
    assert_eq!(d["state"], json!({"color": "red"}));
    assert_eq!(
        (d["version"].as_u64(), d["clientToken"].as_str()),
        (Some(2), Some("u2"))
    );
    assert_eq!(
        response(&mut dev, &format!("{p}/update/accepted")).await["version"],
        2
    );

    // A stale version is refused; the shadow stays at version 2.
    request(
        &mut dev,
        &format!("{p}/update"),
        json!({"state": {"reported": {"color": "red"}}, "version": 1, "clientToken": "u3"}),
    )
    .await;
    let r = response(&mut dev, &format!("{p}/update/rejected")).await;
    assert_eq!(
        (r["code"].as_u64(), r["message"].as_str()),
        (Some(409), Some("Version conflict"))
    );

    // Malformed requests get a rejection, never a dropped connection.
    dev.publish(
        &format!("{p}/update"),
        QoS::AtLeastOnce,
        false,
        b"{not json",
    )
    .await;
    let r = response(&mut dev, &format!("{p}/update/rejected")).await;
    assert_eq!(
        (r["code"].as_u64(), r["message"].as_str()),
        (Some(400), Some("Invalid JSON"))
    );

    request(&mut dev, &format!("{p}/get"), json!({})).await;
    let g = response(&mut dev, &format!("{p}/get/accepted")).await;
    assert_eq!(g["version"], 2);
    assert_eq!(
        g["state"],
        json!({"desired": {"color": "red"}, "reported": {"color": "green"}, "delta": {"color": "red"}})
    );

    request(
        &mut dev,
        &format!("{p}/delete"),
        json!({"clientToken": "d1"}),
    )
    .await;
    let del = response(&mut dev, &format!("{p}/delete/accepted")).await;
    assert_eq!(
        (del["version"].as_u64(), del["clientToken"].as_str()),
        (Some(2), Some("d1"))
    );
    request(&mut dev, &format!("{p}/get"), json!({})).await;
    assert_eq!(
        response(&mut dev, &format!("{p}/get/rejected")).await["code"],
        404
    );
    // The next shadow carries on from the deleted one's version.
    request(
        &mut dev,
        &format!("{p}/update"),
        json!({"state": {"reported": {"on": true}}}),
    )
    .await;
    assert_eq!(
        response(&mut dev, &format!("{p}/update/accepted")).await["version"],
        3
    );

    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"edgegate_shadow_requests_total{op="update",result="rejected"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(&m, r#"edgegate_shadow_rejections_total{code="409"}"#),
        1.0
    );
    assert_eq!(metric(&m, "edgegate_shadow_documents"), 1.0);
}

#[tokio::test]
async fn named_shadows_over_mqtt_5_and_responses_are_the_services_alone() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let t = TestServer::start().await;
    let mut dev = t.v5("sh-5").await;
    let p = "$aws/things/sh-5/shadow/name/cfg";
    dev.client
        .subscribe(format!("{p}/update/+"), Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    dev.suback().await;
    dev.client
        .publish(
            format!("{p}/update"),
            Q5::AtLeastOnce,
            false,
            br#"{"state":{"desired":{"temp":21}},"clientToken":"n1"}"#.to_vec(),
        )
        .await
        .expect("publish");
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 3 {
        let m = dev.recv().await;
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        seen.insert(String::from_utf8_lossy(&m.topic).into_owned(), v);
    }
    assert_eq!(seen[&format!("{p}/update/accepted")]["version"], 1);
    assert_eq!(
        seen[&format!("{p}/update/delta")]["state"],
        json!({"temp": 21})
    );
    assert_eq!(
        seen[&format!("{p}/update/documents")]["current"]["state"]["desired"],
        json!({"temp": 21})
    );
    assert!(seen.values().all(|v| v["clientToken"] == "n1"));

    // Clients may subscribe to responses but not publish them.
    dev.client
        .publish(
            format!("{p}/update/accepted"),
            Q5::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .expect("publish");
    loop {
        match dev.next().await {
            Ev5::Other(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a))
                if a.reason != rumqttc::v5::mqttbytes::v5::PubAckReason::Success =>
            {
                assert_eq!(
                    a.reason,
                    rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
                );
                break;
            }
            Ev5::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn policies_authorize_requests_and_responses() {
    let t = TestServer::prepare("[auth]\nprovisioning = { policies = [\"own\"] }\n");
    // A device may ask about its own shadow and receive only its answers.
    t.write_policy(
        "own",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
            {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/$aws/things/${iot:ClientId}/shadow/*"},
            {"Effect":"Allow","Action":"iot:Subscribe","Resource":"*"},
            {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/$aws/things/${iot:ClientId}/shadow/*"}
        ]}"#,
    );
    let mut t = t;
    t.boot().await;
    let mut owner = t.v4("owner", true).await;
    owner
        .subscribe("$aws/things/+/shadow/+/+", QoS::AtLeastOnce)
        .await;
    request(
        &mut owner,
        "$aws/things/owner/shadow/update",
        json!({"state": {"reported": {"x": 1}}}),
    )
    .await;
    assert_eq!(
        response(&mut owner, "$aws/things/owner/shadow/update/accepted").await["version"],
        1
    );

    // Another device's answers are not delivered to it...
    let mut other = t.v4("other", true).await;
    request(
        &mut other,
        "$aws/things/other/shadow/update",
        json!({"state": {"reported": {"x": 2}}}),
    )
    .await;
    other.puback().await;
    owner.nothing_for(Duration::from_millis(300)).await;
    // ...and a request about another thing's shadow closes a 3.1.1 connection.
    request(&mut owner, "$aws/things/other/shadow/delete", json!({})).await;
    loop {
        match owner.next().await {
            Ev4::Error(_) => break,
            Ev4::Publish(p) => panic!("unexpected {}", p.topic),
            Ev4::Other(_) => {}
        }
    }
    let mut check = t.v4("other", true).await;
    check
        .subscribe("$aws/things/other/shadow/get/+", QoS::AtLeastOnce)
        .await;
    request(&mut check, "$aws/things/other/shadow/get", json!({})).await;
    assert_eq!(
        response(&mut check, "$aws/things/other/shadow/get/accepted").await["version"],
        1,
        "not deleted"
    );
    assert!(
        metric(
            &t.metrics().await,
            r#"edgegate_authz_denied_total{action="receive"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn rules_see_shadow_responses_and_republish_into_shadows() {
    let t = TestServer::start_with(
        r#"
[[rules]]
name = "mirror"
sql = "SELECT state FROM '$aws/things/+/shadow/update/accepted' WHERE topic(3) = 'src'"
actions = [{ republish = { topic = "$$aws/things/copy/shadow/update", qos = 1 } }]
"#,
    )
    .await;
    // The rule fires on the shadow service's answer, and its republish is
    // a real update of another shadow.
    let mut dev = t.v4("src", true).await;
    dev.subscribe("$aws/things/copy/shadow/update/accepted", QoS::AtLeastOnce)
        .await;
    request(
        &mut dev,
        "$aws/things/src/shadow/update",
        json!({"state": {"reported": {"t": 20}}}),
    )
    .await;
    let a = response(&mut dev, "$aws/things/copy/shadow/update/accepted").await;
    assert_eq!(
        (a["version"].as_u64(), &a["state"]),
        (Some(1), &json!({"reported": {"t": 20}}))
    );
}

#[tokio::test]
async fn an_acknowledged_update_survives_kill_9() {
    let t = TestServer::prepare("");
    let (mut child, port, _) = spawn_binary(&t, "", &[]);
    let mut dev = V4::connect_to(&t, port, "durable", true, None, |_| {}).await;
    dev.subscribe(
        "$aws/things/durable/shadow/update/accepted",
        QoS::AtLeastOnce,
    )
    .await;
    for i in 1..=5 {
        request(
            &mut dev,
            "$aws/things/durable/shadow/update",
            json!({"state": {"reported": {"n": i}}}),
        )
        .await;
        assert_eq!(
            response(&mut dev, "$aws/things/durable/shadow/update/accepted").await["version"],
            i
        );
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    dev.kill();

    let (mut child, port, _) = spawn_binary(&t, "", &[]);
    let mut dev = V4::connect_to(&t, port, "durable", true, None, |_| {}).await;
    dev.subscribe("$aws/things/durable/shadow/+/accepted", QoS::AtLeastOnce)
        .await;
    request(&mut dev, "$aws/things/durable/shadow/get", json!({})).await;
    let g = response(&mut dev, "$aws/things/durable/shadow/get/accepted").await;
    assert_eq!(
        (g["version"].as_u64(), &g["state"]["reported"]["n"]),
        (Some(5), &json!(5))
    );
    request(
        &mut dev,
        "$aws/things/durable/shadow/update",
        json!({"state": {"reported": {"n": 6}}}),
    )
    .await;
    assert_eq!(
        response(&mut dev, "$aws/things/durable/shadow/update/accepted").await["version"],
        6
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

/// A signed `iot-data` request to a gateway binary; the status and body.
fn iot_data(
    admin: &str,
    method: &str,
    path: &str,
    query: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use edgegate::http::sigv4;
    use std::io::{Read, Write};
    let date = sigv4::amz_date_now();
    let mut headers: Vec<(&str, &str)> = vec![("host", admin), ("x-amz-date", &date)];
    headers.extend_from_slice(extra);
    let request = sigv4::Request {
        method,
        path,
        query,
        headers: &headers,
        body,
    };
    let auth = sigv4::sign(&request, "AKIDTEST", SECRET, "us-east-1", "iotdata");
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let mut text = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "authorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut s = std::net::TcpStream::connect(admin).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(text.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response")
        + 4;
    let status = String::from_utf8_lossy(&out[..at])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, out[at..].to_vec())
}

const SECRET: &str = "shadow-test-secret";

/// The gateway binary with the control plane's key `AKIDTEST` (its secret
/// reaches it only through its environment); the child, its MQTT port and
/// its admin address.
fn with_admin_key(t: &TestServer) -> (std::process::Child, u16, String) {
    let env = "EDGEGATE_TEST_SHADOW_SECRET";
    let admin_section = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\naccess_key_id = \"AKIDTEST\"\nsecret_access_key_env = \"{env}\"\n"
    );
    spawn_binary(t, &admin_section, &[(env, SECRET)])
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn the_iot_data_api() {
    let t = TestServer::prepare("");
    let (mut child, port, admin) = with_admin_key(&t);
    let mut dev = V4::connect_to(&t, port, "rest-1", true, None, |_| {}).await;
    dev.subscribe("$aws/things/rest-1/shadow/update/+", QoS::AtLeastOnce)
        .await;
    dev.subscribe("data/#", QoS::AtLeastOnce).await;

    let (status, body) = iot_data(&admin, "GET", "/things/rest-1/shadow", "", &[], b"");
    assert_eq!(status, 404);
    assert_eq!(json_of(&body)["__type"], "ResourceNotFoundException");

    let (status, body) = iot_data(
        &admin,
        "POST",
        "/things/rest-1/shadow",
        "",
        &[],
        br#"{"state":{"desired":{"on":true}}}"#,
    );
    assert_eq!((status, json_of(&body)["version"].as_u64()), (200, Some(1)));
    // A REST update fans out on MQTT.
    assert_eq!(
        response(&mut dev, "$aws/things/rest-1/shadow/update/delta").await["state"],
        json!({"on": true})
    );
    assert_eq!(
        response(&mut dev, "$aws/things/rest-1/shadow/update/accepted").await["version"],
        1
    );

    let (status, body) = iot_data(
        &admin,
        "POST",
        "/things/rest-1/shadow",
        "",
        &[],
        br#"{"state":{"desired":{"on":false}},"version":7}"#,
    );
    assert_eq!(
        (status, json_of(&body)["__type"].as_str()),
        (409, Some("ConflictException"))
    );
    let big = format!(
        r#"{{"state":{{"reported":{{"blob":"{}"}}}}}}"#,
        "x".repeat(9000)
    );
    let (status, body) = iot_data(
        &admin,
        "POST",
        "/things/rest-1/shadow",
        "",
        &[],
        big.as_bytes(),
    );
    assert_eq!(
        (status, json_of(&body)["__type"].as_str()),
        (413, Some("RequestEntityTooLargeException"))
    );
    let (status, _) = iot_data(&admin, "POST", "/things/rest-1/shadow", "", &[], b"[");
    assert_eq!(status, 400);

    for name in ["b", "a", "c"] {
        let (status, _) = iot_data(
            &admin,
            "POST",
            "/things/rest-1/shadow",
            &format!("name={name}"),
            &[],
            br#"{"state":{"reported":{"k":1}}}"#,
        );
        assert_eq!(status, 200);
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let query = if token.is_empty() {
            "pageSize=2".to_owned()
        } else {
            format!("nextToken={token}&pageSize=2")
        };
        let (status, body) = iot_data(
            &admin,
            "GET",
            "/api/things/shadow/ListNamedShadowsForThing/rest-1",
            &query,
            &[],
            b"",
        );
        assert_eq!(status, 200);
        let page = json_of(&body);
        names.extend(
            page["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|v| v.as_str().expect("name").to_owned()),
        );
        match page["nextToken"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["a", "b", "c"],
        "every named shadow once, never the classic one"
    );
    let (status, body) = iot_data(
        &admin,
        "DELETE",
        "/things/rest-1/shadow",
        "name=b",
        &[],
        b"",
    );
    assert_eq!((status, json_of(&body)["version"].as_u64()), (200, Some(1)));
    let (status, body) = iot_data(&admin, "GET", "/things/rest-1/shadow", "name=a", &[], b"");
    assert_eq!(
        (status, &json_of(&body)["state"]["reported"]),
        (200, &json!({"k": 1}))
    );

    // Publish, with the topic escaped as botocore escapes it.
    let (status, _) = iot_data(
        &admin,
        "POST",
        "/topics/data%2Fx%2Fy",
        "qos=1",
        &[],
        b"hello",
    );
    assert_eq!(status, 200);
    let m = dev.recv().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        ("data/x/y", &b"hello"[..], QoS::AtLeastOnce)
    );
    // A publish to a shadow topic is a shadow update.
    let (status, _) = iot_data(
        &admin,
        "POST",
        "/topics/%24aws%2Fthings%2Frest-1%2Fshadow%2Fupdate",
        "qos=1",
        &[],
        br#"{"state":{"reported":{"on":true}}}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        response(&mut dev, "$aws/things/rest-1/shadow/update/accepted").await["version"],
        2
    );
    let (status, _) = iot_data(
        &admin,
        "POST",
        "/topics/%24aws%2Fthings%2Frest-1%2Fshadow%2Fupdate%2Faccepted",
        "",
        &[],
        b"{}",
    );
    assert_eq!(status, 403);
    let (status, _) = iot_data(&admin, "POST", "/topics/a%2F%2B", "", &[], b"{}");
    assert_eq!(status, 400, "wildcards are not topic names");

    // Retained messages: listed by topic in pages, read back with their payload.
    for topic in ["keep%2Fb", "keep%2Fa"] {
        let (status, _) = iot_data(
            &admin,
            "POST",
            &format!("/topics/{topic}"),
            "qos=1&retain=true",
            &[],
            b"kept",
        );
        assert_eq!(status, 200);
    }
    let (status, body) = iot_data(&admin, "GET", "/retainedMessage", "maxResults=1", &[], b"");
    let page = json_of(&body);
    assert_eq!(
        (status, page["retainedTopics"][0]["topic"].as_str()),
        (200, Some("keep/a"))
    );
    assert_eq!(page["retainedTopics"][0]["payloadSize"], 4);
    let token = page["nextToken"].as_str().expect("a next page").to_owned();
    let (_, body) = iot_data(
        &admin,
        "GET",
        "/retainedMessage",
        &format!("maxResults=1&nextToken={}", token.replace('/', "%2F")),
        &[],
        b"",
    );
    let page = json_of(&body);
    assert_eq!(page["retainedTopics"][0]["topic"], "keep/b");
    assert!(page.get("nextToken").is_none());
    let (status, body) = iot_data(&admin, "GET", "/retainedMessage/keep%2Fa", "", &[], b"");
    let got = json_of(&body);
    assert_eq!(
        (status, got["payload"].as_str(), got["qos"].as_u64()),
        (200, Some("a2VwdA=="), Some(1))
    );
    assert!(
        got["lastModifiedTime"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000)
    );
    let (status, _) = iot_data(&admin, "POST", "/topics/keep%2Fa", "retain=true", &[], b"");
    assert_eq!(status, 200);
    let (status, _) = iot_data(&admin, "GET", "/retainedMessage/keep%2Fa", "", &[], b"");
    assert_eq!(status, 404, "an empty retained publish clears it");
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn publish_carries_mqtt5_properties() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let t = TestServer::prepare("");
    let (mut child, port, admin) = with_admin_key(&t);
    let mut sub = V5::connect_to(&t, port, "props", |_| {}).await;
    sub.client
        .subscribe("p/#", Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let user = edgegate::sql::eval::base64_encode(br#""[{\"a\": \"1\"}, {\"b\": \"2\"}]""#);
    let (status, _) = iot_data(
        &admin,
        "POST",
        "/topics/p%2Fq",
        "qos=1&contentType=application%2Fjson&responseTopic=r%2Ft&messageExpiry=60",
        &[
            ("x-amz-mqtt5-user-properties", &user),
            ("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA"),
            ("x-amz-mqtt5-correlation-data", "Y29ycg=="),
        ],
        br#"{"v":1}"#,
    );
    assert_eq!(status, 200);
    let m = sub.recv().await;
    let p = m.properties.expect("properties");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic.as_deref(), Some("r/t"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(p.payload_format_indicator, Some(1));
    assert!(p.message_expiry_interval.is_some_and(|s| s <= 60 && s > 0));
    assert_eq!(
        p.user_properties,
        vec![("a".into(), "1".into()), ("b".into(), "2".into())]
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn the_device_https_endpoint_authorizes_with_the_certificate() {
    let t = TestServer::prepare("[auth]\nprovisioning = { policies = [\"mine\"] }\n");
    // Over HTTPS there is no client id: policies name things by certificate.
    t.write_policy(
        "mine",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":["iot:GetThingShadow","iot:UpdateThingShadow","iot:DeleteThingShadow","iot:ListNamedShadowsForThing"],
             "Resource":["arn:aws:iot:*:*:thing/${iot:Certificate.Subject.CommonName}","arn:aws:iot:*:*:thing/${iot:Certificate.Subject.CommonName}/*"]},
            {"Effect":"Allow","Action":["iot:Publish","iot:Connect","iot:Subscribe","iot:Receive"],"Resource":"*"},
            {"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/${iot:ClientId}/*"}
        ]}"#,
    );
    let mut t = t;
    t.boot().await;
    let https_addr = t.server().https.expect("the device HTTPS listener");
    let pem = t.device("web-1");
    let mut watcher = t.v4("watcher", true).await;
    watcher.subscribe("web/#", QoS::AtLeastOnce).await;
    watcher
        .subscribe("$aws/things/web-1/shadow/update/accepted", QoS::AtLeastOnce)
        .await;

    let (status, body) = https(
        &t,
        https_addr,
        Some(&pem),
        "POST",
        "/things/web-1/shadow",
        br#"{"state":{"reported":{"up":true}}}"#,
    )
    .await
    .expect("served");
    assert_eq!((status, json_of(&body)["version"].as_u64()), (200, Some(1)));
    assert_eq!(
        response(&mut watcher, "$aws/things/web-1/shadow/update/accepted").await["version"],
        1
    );
    let (status, body) = https(
        &t,
        https_addr,
        Some(&pem),
        "GET",
        "/things/web-1/shadow?name=cfg",
        b"",
    )
    .await
    .expect("served");
    assert_eq!(
        (status, json_of(&body)["__type"].as_str()),
        (404, Some("ResourceNotFoundException"))
    );
    let (status, body) = https(
        &t,
        https_addr,
        Some(&pem),
        "GET",
        "/api/things/shadow/ListNamedShadowsForThing/web-1",
        b"",
    )
    .await
    .expect("served");
    assert_eq!(
        (status, json_of(&body)["results"].clone()),
        (200, json!([]))
    );

    // Another thing's shadow is forbidden, and so counted.
    let (status, body) = https(
        &t,
        https_addr,
        Some(&pem),
        "GET",
        "/things/web-2/shadow",
        b"",
    )
    .await
    .expect("served");
    assert_eq!(
        (status, json_of(&body)["__type"].as_str()),
        (403, Some("ForbiddenException"))
    );
    assert!(
        metric(
            &t.metrics().await,
            r#"edgegate_authz_denied_total{action="getthingshadow"}"#
        ) >= 1.0
    );

    let (status, _) = https(
        &t,
        https_addr,
        Some(&pem),
        "POST",
        "/topics/web%2Fweb-1%2Ftemp?qos=1",
        b"21",
    )
    .await
    .expect("served");
    assert_eq!(status, 200);
    let m = watcher.recv().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("web/web-1/temp", &b"21"[..])
    );
    // `${iot:ClientId}` does not resolve over HTTPS: the deny above matches nothing.
    let (status, _) = https(&t, https_addr, Some(&pem), "POST", "/topics/%2Fx", b"")
        .await
        .expect("served");
    assert_eq!(status, 200);

    // No certificate, no service. A certificate revoked while its
    // connection is open is refused at its next request on that connection,
    // and a new connection of it is closed after the handshake.
    assert!(
        https(&t, https_addr, None, "GET", "/things/web-1/shadow", b"")
            .await
            .is_err()
    );
    let mut kept = KeepAlive::open(&t, https_addr, &pem).await;
    assert_eq!(kept.get("/things/web-1/shadow").await, 200);
    let id = edgegate::registry::ClientIdentity::from_der(
        &rustls_pemfile::certs(&mut pem.cert.as_bytes())
            .next()
            .expect("a cert")
            .expect("pem"),
    )
    .expect("identity")
    .certificate_id;
    t.server()
        .registry
        .set_status(&id, edgegate::registry::CertStatus::Revoked)
        .expect("revoke");
    assert_eq!(kept.get("/things/web-1/shadow").await, 403);
    assert!(
        https(
            &t,
            https_addr,
            Some(&pem),
            "GET",
            "/things/web-1/shadow",
            b""
        )
        .await
        .is_err(),
        "a revoked certificate's new connection is closed"
    );
    assert!(
        metric(
            &t.metrics().await,
            r#"edgegate_connections_refused_total{reason="revoked"}"#
        ) >= 2.0
    );
}

/// One HTTPS connection kept alive across requests.
struct KeepAlive {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl KeepAlive {
    async fn open(
        t: &TestServer,
        addr: std::net::SocketAddr,
        pem: &edgegate::transport::pki::Pem,
    ) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(t.tls_config(Some(pem)));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("in time")
            .expect("handshake");
        Self { tls }
    }

    /// The status of a GET; the body is read by its length.
    async fn get(&mut self, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        self.tls.write_all(head.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let answer = async {
            loop {
                let n = self.tls.read(&mut buf).await.expect("read");
                assert!(n > 0, "the connection stays open");
                got.extend_from_slice(&buf[..n]);
                let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a content-length");
                if got.len() >= end + 4 + length {
                    return head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("status");
                }
            }
        };
        tokio::time::timeout(WAIT, answer)
            .await
            .expect("an answer in time")
    }
}

#[tokio::test]
async fn limits_refuse_with_aws_codes_and_change_nothing() {
    let t = TestServer::start_with(
        "[limits]\nmax_named_shadows_per_thing = 2\nmax_shadows = 4\nshadow_max_bytes = 64\n",
    )
    .await;
    let mut dev = t.v4("lim", true).await;
    dev.subscribe("$aws/things/+/shadow/#", QoS::AtLeastOnce)
        .await;
    let update = |name: &str| {
        if name.is_empty() {
            "$aws/things/lim/shadow/update".to_owned()
        } else {
            format!("$aws/things/lim/shadow/name/{name}/update")
        }
    };
    for name in ["a", "b"] {
        request(
            &mut dev,
            &update(name),
            json!({"state": {"reported": {"x": 1}}}),
        )
        .await;
        let a = response(&mut dev, &format!("{}/accepted", update(name))).await;
        assert_eq!(a["version"], 1);
    }
    // A third named shadow of the same thing.
    request(
        &mut dev,
        &update("c"),
        json!({"state": {"reported": {"x": 1}}}),
    )
    .await;
    let r = response(&mut dev, &format!("{}/rejected", update("c"))).await;
    assert_eq!(r["code"], 400);
    // Too deep, then too large for the configured 64 bytes.
    let deep = json!({"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}});
    request(&mut dev, &update(""), deep).await;
    let r = response(&mut dev, &format!("{}/rejected", update(""))).await;
    assert_eq!(
        (r["code"].as_u64(), r["message"].as_str()),
        (
            Some(400),
            Some("JSON contains too many levels of nesting; maximum is 6")
        )
    );
    request(
        &mut dev,
        &update(""),
        json!({"state": {"reported": {"blob": "x".repeat(80)}}}),
    )
    .await;
    let r = response(&mut dev, &format!("{}/rejected", update(""))).await;
    assert_eq!(
        (r["code"].as_u64(), r["message"].as_str()),
        (
            Some(413),
            Some("The payload exceeds the maximum size allowed")
        )
    );
    // A deleted name still counts for its thing (for 48 hours), so creating
    // and deleting names cannot go on without end; the same name comes back.
    let a = "$aws/things/lim/shadow/name/a";
    request(&mut dev, &format!("{a}/delete"), json!({})).await;
    assert_eq!(
        response(&mut dev, &format!("{a}/delete/accepted")).await["version"],
        1
    );
    request(
        &mut dev,
        &update("c"),
        json!({"state": {"reported": {"x": 1}}}),
    )
    .await;
    assert_eq!(
        response(&mut dev, &format!("{}/rejected", update("c"))).await["code"],
        400
    );
    request(
        &mut dev,
        &update("a"),
        json!({"state": {"reported": {"x": 2}}}),
    )
    .await;
    assert_eq!(
        response(&mut dev, &format!("{}/accepted", update("a"))).await["version"],
        2
    );
    // Shadows in all: lim/a, lim/b, and two more things; the fifth is refused
    // as the gateway's capacity, not the device's mistake.
    for (thing, accepted) in [("lim", true), ("other", true), ("third", false)] {
        let topic = format!("$aws/things/{thing}/shadow/update");
        request(&mut dev, &topic, json!({"state": {"reported": {"x": 1}}})).await;
        let outcome = if accepted { "accepted" } else { "rejected" };
        let r = response(&mut dev, &format!("{topic}/{outcome}")).await;
        if !accepted {
            assert_eq!(r["code"], 503, "{r}");
        }
    }
    let m = t.metrics().await;
    assert_eq!(metric(&m, "edgegate_shadow_documents"), 4.0);
    assert_eq!(
        metric(&m, r#"edgegate_shadow_rejections_total{code="413"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"edgegate_shadow_rejections_total{code="400"}"#),
        3.0
    );
    assert_eq!(
        metric(&m, r#"edgegate_shadow_rejections_total{code="503"}"#),
        1.0
    );
}

#[tokio::test]
async fn an_idle_https_connection_gives_its_permit_back() {
    let t = TestServer::start_with(
        "[https]\nlisten = \"127.0.0.1:0\"\nidle_timeout_secs = 1\n[limits]\nmax_connections = 1\n",
    )
    .await;
    let https_addr = t.server().https.expect("the device HTTPS listener");
    let pem = t.device("idler");
    let mut idle = KeepAlive::open(&t, https_addr, &pem).await;
    assert_eq!(idle.get("/things/idler/shadow").await, 404);
    // The one connection allowed is taken: MQTT is refused meanwhile...
    let mut refused = Raw::connect(t.addr(), t.tls_config(Some(&pem))).await;
    if let Ok(raw) = refused.as_mut() {
        raw.send(&connect_bytes(4, "idler", 30)).await;
        assert!(
            raw.read_to_close().await.is_empty(),
            "no CONNACK while the permit is held"
        );
    }
    // ...until the idle HTTPS connection is closed, within a bound.
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, idle.tls.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "closed: {closed:?}");
    let dev = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(mut raw) = Raw::connect(t.addr(), t.tls_config(Some(&pem))).await {
                raw.send(&connect_bytes(4, "idler", 30)).await;
                let connack = raw.read_n(4).await;
                if connack == [0x20, 0x02, 0x00, 0x00] {
                    return;
                }
            }
        }
    })
    .await;
    assert!(dev.is_ok(), "MQTT connects once the permit is back");
}
