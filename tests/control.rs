//! The control plane over SigV4, as boto3 and the AWS CLI call it: the
//! operations of spec/aws-iot-auth.md §6 with their errors, operators held
//! to their IAM-style policies, and what the operations do to live devices.

mod common;

use common::*;
use edgegate::transport::pki::{Ca, KeyKind};
use serde_json::{Value, json};
use std::time::Duration;

const ACCOUNT: &str = "000000000000";

fn arn(kind: &str, name: &str) -> String {
    format!("arn:aws:iot:us-east-1:{ACCOUNT}:{kind}/{name}")
}

/// A gateway with one operator of full access (`AKIDADMIN`) and `users`
/// (each with its secret in a file beside the configuration) under the
/// operator `policies`.
async fn gateway(users: &[(&str, &[&str])], policies: &[(&str, String)]) -> TestServer {
    gateway_with(users, policies, "").await
}

/// [`gateway`] with more configuration after the `[admin]` section.
async fn gateway_with(
    users: &[(&str, &[&str])],
    policies: &[(&str, String)],
    extra: &str,
) -> TestServer {
    let mut section =
        String::from("[admin]\nlisten = \"127.0.0.1:0\"\npolicies_dir = \"operator-policies\"\n");
    let mut all: Vec<(&str, &[&str])> = vec![("AKIDADMIN", &["Everything"])];
    all.extend_from_slice(users);
    for (key, names) in &all {
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        section.push_str(&format!(
            "[[admin.users]]\naccess_key_id = \"{key}\"\nsecret_file = \"{key}.secret\"\npolicies = [{}]\n",
            list.join(", ")
        ));
    }
    section.push_str(extra);
    let mut t = TestServer::prepare(&section);
    let dir = t.dir.path().join("operator-policies");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("Everything.json"),
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#,
    )
    .expect("write");
    for (name, text) in policies {
        std::fs::write(dir.join(format!("{name}.json")), text).expect("write");
    }
    for (key, _) in &all {
        std::fs::write(
            t.dir.path().join(format!("{key}.secret")),
            format!("secret-of-{key}\n"),
        )
        .expect("secret");
    }
    t.boot().await;
    t
}

fn client(t: &TestServer, key: &str) -> Aws {
    Aws::new(t.admin(), key, &format!("secret-of-{key}"))
}

/// Registers a device certificate ACTIVE through the API; its id.
async fn register(aws: &Aws, pem: &str) -> String {
    let (status, body) = aws
        .post(
            "/certificate/register",
            "setAsActive=true",
            json!({ "certificatePem": pem }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["certificateId"].as_str().expect("id").to_owned()
}

fn kind(body: &Value) -> &str {
    body["__type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_seed_talks_operator_policies_work_as_written() {
    let manage_certs = r#"{
      "Version": "2012-10-17",
      "Statement": [{
        "Effect": "Allow",
        "Action": ["iot:CreateKeysAndCertificate", "iot:DescribeCertificate",
                   "iot:UpdateCertificate", "iot:ListCertificates", "iot:RegisterCertificate"],
        "Resource": "*"
      }]
    }"#
    .to_owned();
    let revoke_one = |net: &str, id: &str| {
        format!(
            r#"{{
      "Version": "2012-10-17",
      "Statement": [{{
        "Effect": "Allow",
        "Action": "iot:UpdateCertificate",
        "Resource": "arn:aws:iot:us-east-1:{ACCOUNT}:cert/{id}",
        "Condition": {{ "IpAddress": {{ "aws:SourceIp": "{net}" }} }}
      }}]
    }}"#
        )
    };
    let deny_revoke = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:*","Resource":"*"},
        {"Effect":"Deny","Action":"iot:UpdateCertificate","Resource":"*"}]}"#
        .to_owned();
    let t = gateway(
        &[
            ("AKIDCERTS", &["ManageCerts"]),
            ("AKIDREVOKER", &["RevokeOneThing"]),
            ("AKIDOFFSITE", &["RevokeFromOffice"]),
            ("AKIDNOREVOKE", &["NoRevoke"]),
            ("AKIDNOTHING", &[]),
        ],
        &[
            ("ManageCerts", manage_certs),
            ("RevokeOneThing", revoke_one("127.0.0.0/8", "TARGET")),
            ("RevokeFromOffice", revoke_one("203.0.113.0/24", "TARGET")),
            ("NoRevoke", deny_revoke),
        ],
    )
    .await;
    // The certificate's id is known only now; operator policies are hot-reloaded.
    let target = t.device("stolen-1");
    let admin = client(&t, "AKIDADMIN");
    let id = register(&admin, &target.cert).await;
    let dir = t.dir.path().join("operator-policies");
    for name in ["RevokeOneThing", "RevokeFromOffice"] {
        let file = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(&file, text.replace("TARGET", &id)).expect("write");
    }
    let other = register(&admin, &t.device("other-1").cert).await;

    let certs = client(&t, "AKIDCERTS");
    let (status, body) = certs.get("/certificates", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = certs.post("/things/t1", "", json!({})).await;
    assert_eq!(
        (status, kind(&body)),
        (403, "AccessDeniedException"),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("iot:CreateThing"),
        "{body}"
    );
    let (status, _) = certs
        .call(
            "PUT",
            &format!("/certificates/{other}"),
            "newStatus=INACTIVE",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 200);

    let revoker = client(&t, "AKIDREVOKER");
    // The reload of the edited policy applies within a second.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = revoker
            .call(
                "PUT",
                &format!("/certificates/{id}"),
                "newStatus=REVOKED",
                &[],
                "",
            )
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(kind(&body), "AccessDeniedException", "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = revoker
        .call(
            "PUT",
            &format!("/certificates/{other}"),
            "newStatus=REVOKED",
            &[],
            "",
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (403, "AccessDeniedException"),
        "another certificate"
    );
    let (status, _) = revoker.get(&format!("/certificates/{id}"), "").await;
    assert_eq!(status, 403, "only UpdateCertificate");
    let (status, body) = client(&t, "AKIDOFFSITE")
        .call(
            "PUT",
            &format!("/certificates/{id}"),
            "newStatus=REVOKED",
            &[],
            "",
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (403, "AccessDeniedException"),
        "wrong source address"
    );
    let (status, body) = client(&t, "AKIDNOREVOKE")
        .call(
            "PUT",
            &format!("/certificates/{other}"),
            "newStatus=ACTIVE",
            &[],
            "",
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (403, "AccessDeniedException"),
        "explicit deny: {body}"
    );
    let (status, _) = client(&t, "AKIDNOREVOKE").get("/things", "").await;
    assert_eq!(status, 200, "the rest of its Allow stands");
    let nothing = client(&t, "AKIDNOTHING");
    for (method, path) in [
        ("GET", "/things"),
        ("GET", "/certificates"),
        ("GET", "/policies"),
    ] {
        let (status, body) = nothing.call(method, path, "", &[], "").await;
        assert_eq!(
            (status, kind(&body)),
            (403, "AccessDeniedException"),
            "{path}"
        );
    }
    let (status, body) = Aws::new(t.admin(), "AKIDCERTS", "wrong")
        .get("/things", "")
        .await;
    assert_eq!((status, kind(&body)), (403, "InvalidSignatureException"));

    let refused = audit_line(&t, |l| l.contains("\"unauthenticated\"")).await;
    assert!(refused.contains("\"principal\":\"AKIDCERTS\""), "{refused}");
    assert!(refused.contains("\"status\":403"), "{refused}");
    let denied = audit_line(&t, |l| {
        l.contains("\"AKIDOFFSITE\"") && l.contains("\"UpdateCertificate\"")
    })
    .await;
    let line: Value = serde_json::from_str(&denied).expect("json");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["status"], 403);
    assert_eq!(line["source"], "127.0.0.1");
    assert_eq!(line["resources"][0], arn("cert", &id));
    assert_eq!(line["error"], "AccessDeniedException");
    for key in ["AKIDNOTHING", "AKIDNOREVOKE"] {
        let line = audit_line(&t, |l| {
            l.contains(&format!("\"{key}\"")) && l.contains("\"decision\":\"deny\"")
        })
        .await;
        assert!(line.contains("\"AccessDeniedException\""), "{line}");
    }
    let allowed = audit_line(&t, |l| {
        l.contains("\"AKIDREVOKER\"") && l.contains("\"status\":200")
    })
    .await;
    assert!(allowed.contains("\"decision\":\"allow\""), "{allowed}");
    let metrics = t.metrics().await;
    assert!(metric(&metrics, "edgegate_control_calls_total{outcome=\"denied\"}") >= 8.0);
    assert!(
        metric(
            &metrics,
            "edgegate_control_calls_total{outcome=\"unauthenticated\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn revoked_is_final_and_deleting_a_certificate_follows_aws_rules() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let pem = t.device("gone-1");
    let id = register(&aws, &pem.cert).await;
    let (status, body) = aws
        .post(
            "/certificate/register",
            "",
            json!({ "certificatePem": pem.cert }),
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (409, "ResourceAlreadyExistsException")
    );
    assert_eq!(body["resourceId"], id.as_str());
    let update = |s: &'static str| {
        let aws = &aws;
        let id = id.clone();
        async move {
            aws.call(
                "PUT",
                &format!("/certificates/{id}"),
                &format!("newStatus={s}"),
                &[],
                "",
            )
            .await
        }
    };
    let (status, body) = update("PENDING_ACTIVATION").await;
    assert_eq!((status, kind(&body)), (406, "CertificateStateException"));
    let (status, body) = aws
        .call("DELETE", &format!("/certificates/{id}"), "", &[], "")
        .await;
    assert_eq!(
        (status, kind(&body)),
        (406, "CertificateStateException"),
        "ACTIVE"
    );
    assert_eq!(update("REVOKED").await.0, 200);
    for s in ["ACTIVE", "INACTIVE"] {
        let (status, body) = update(s).await;
        assert_eq!(
            (status, kind(&body)),
            (406, "CertificateStateException"),
            "{s}"
        );
    }
    assert_eq!(update("REVOKED").await.0, 200, "idempotent");
    let (_, d) = aws.get(&format!("/certificates/{id}"), "").await;
    let d = &d["certificateDescription"];
    assert_eq!(d["status"], "REVOKED");
    assert!(d["customerVersion"].as_u64() >= Some(2));
    assert!(d["validity"]["notAfter"].as_i64() > d["validity"]["notBefore"].as_i64());
    assert_eq!(d["ownedBy"], ACCOUNT);
    // Attached things and policies hold the deletion back.
    assert_eq!(aws.post("/things/gone-1", "", json!({})).await.0, 200);
    let principal = arn("cert", &id);
    let (status, _) = aws
        .call(
            "PUT",
            "/things/gone-1/principals",
            "",
            &[("x-amzn-principal", &principal)],
            "",
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = aws
        .call("DELETE", &format!("/certificates/{id}"), "", &[], "")
        .await;
    assert_eq!((status, kind(&body)), (409, "DeleteConflictException"));
    let (status, body) = aws.call("DELETE", "/things/gone-1", "", &[], "").await;
    assert_eq!((status, kind(&body)), (400, "InvalidRequestException"));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("still attached")
    );
    aws.call(
        "DELETE",
        "/things/gone-1/principals",
        "",
        &[("x-amzn-principal", &principal)],
        "",
    )
    .await;
    let (status, _) = aws
        .call(
            "PUT",
            "/target-policies/open",
            "",
            &[],
            &json!({ "target": principal }).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = aws
        .call("DELETE", &format!("/certificates/{id}"), "", &[], "")
        .await;
    assert_eq!(
        (status, kind(&body)),
        (409, "DeleteConflictException"),
        "a policy"
    );
    let (status, _) = aws
        .call(
            "DELETE",
            &format!("/certificates/{id}"),
            "forceDelete=true",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(aws.get(&format!("/certificates/{id}"), "").await.0, 404);
    assert_eq!(
        aws.call("DELETE", "/things/gone-1", "", &[], "").await.0,
        200
    );
}

#[tokio::test]
async fn things_types_and_principals_in_aws_shapes() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let attrs = |a: Value| json!({ "attributePayload": { "attributes": a } });
    let (status, made) = aws
        .post("/things/lamp-1", "", attrs(json!({"site": "lab"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(made["thingArn"], arn("thing", "lamp-1"));
    let (status, again) = aws
        .post("/things/lamp-1", "", attrs(json!({"site": "lab"})))
        .await;
    assert_eq!(
        (status, &again["thingId"]),
        (200, &made["thingId"]),
        "idempotent"
    );
    let (status, body) = aws
        .post("/things/lamp-1", "", attrs(json!({"site": "hall"})))
        .await;
    assert_eq!(
        (status, kind(&body)),
        (409, "ResourceAlreadyExistsException")
    );
    let (status, body) = aws.post("/things/bad%2Fname", "", json!({})).await;
    assert_eq!((status, kind(&body)), (400, "InvalidRequestException"));
    let (status, body) = aws
        .post(
            "/things/t",
            "",
            attrs(json!({"a":"1","b":"2","c":"3","d":"4"})),
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (400, "InvalidRequestException"),
        "3 attributes without a type"
    );

    let (status, body) = aws
        .post("/things/lamp-2", "", json!({"thingTypeName": "lamp"}))
        .await;
    assert_eq!((status, kind(&body)), (404, "ResourceNotFoundException"));
    let (status, _) = aws
        .post(
            "/thing-types/lamp",
            "",
            json!({"thingTypeProperties": {"thingTypeDescription": "a lamp"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(aws.post("/thing-types/lamp", "", json!({})).await.0, 409);
    assert_eq!(
        aws.post("/things/lamp-2", "", json!({"thingTypeName": "lamp"}))
            .await
            .0,
        200
    );
    let (_, ty) = aws.get("/thing-types/lamp", "").await;
    assert_eq!(ty["thingTypeProperties"]["thingTypeDescription"], "a lamp");
    let (status, body) = aws.call("DELETE", "/thing-types/lamp", "", &[], "").await;
    assert_eq!(
        (status, kind(&body)),
        (400, "InvalidRequestException"),
        "not deprecated"
    );
    aws.post("/thing-types/lamp/deprecate", "", json!({})).await;
    let (status, body) = aws
        .post("/things/lamp-3", "", json!({"thingTypeName": "lamp"}))
        .await;
    assert_eq!(
        (status, kind(&body)),
        (400, "InvalidRequestException"),
        "deprecated"
    );
    let (_, ty) = aws.get("/thing-types/lamp", "").await;
    assert_eq!(ty["thingTypeMetadata"]["deprecated"], true);

    // UpdateThing: merge removes "" values, expectedVersion guards.
    let (_, d) = aws.get("/things/lamp-1", "").await;
    assert_eq!(
        (d["version"].as_u64(), &d["defaultClientId"]),
        (Some(1), &json!("lamp-1"))
    );
    let patch = |body: Value| {
        let aws = &aws;
        async move {
            aws.call("PATCH", "/things/lamp-1", "", &[], &body.to_string())
                .await
        }
    };
    let (status, body) =
        patch(json!({"expectedVersion": 7, "attributePayload": {"attributes": {"x": "1"}}})).await;
    assert_eq!((status, kind(&body)), (409, "VersionConflictException"));
    let (status, _) = patch(json!({"expectedVersion": 1,
        "attributePayload": {"attributes": {"site": "", "floor": "2"}, "merge": true}}))
    .await;
    assert_eq!(status, 200);
    let (_, d) = aws.get("/things/lamp-1", "").await;
    assert_eq!(d["attributes"], json!({"floor": "2"}));
    assert_eq!(d["version"], 2);

    // ListThings: attribute filters, and pages that cover everything once.
    for i in 0..7 {
        aws.post(
            &format!("/things/bulk-{i}"),
            "",
            attrs(json!({"batch": format!("b{}", i % 2)})),
        )
        .await;
    }
    let (_, only) = aws
        .get("/things", "attributeName=batch&attributeValue=b1")
        .await;
    assert_eq!(only["things"].as_array().map(Vec::len), Some(3));
    let (_, prefixed) = aws
        .get(
            "/things",
            "attributeName=batch&attributeValue=b&usePrefixAttributeValue=true",
        )
        .await;
    assert_eq!(prefixed["things"].as_array().map(Vec::len), Some(7));
    let mut seen = Vec::new();
    let mut query = "maxResults=3".to_owned();
    loop {
        let (status, page) = aws.get("/things", &query).await;
        assert_eq!(status, 200, "{page}");
        let items = page["things"].as_array().expect("things");
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|t| t["thingName"].as_str().expect("name").to_owned()),
        );
        match page["nextToken"].as_str() {
            Some(next) => query = format!("maxResults=3&nextToken={}", urlencode(next)),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted.len()), (9, 9), "{seen:?}");
    assert_eq!(aws.get("/things", "maxResults=0").await.0, 400);

    // An exclusive attachment makes the thing the connection's whatever its client id.
    let pem = t.device("lamp-1");
    let id = register(&aws, &pem.cert).await;
    let principal = arn("cert", &id);
    let (status, _) = aws
        .call(
            "PUT",
            "/things/lamp-1/principals",
            "thingPrincipalType=EXCLUSIVE_THING",
            &[("x-amzn-principal", &principal)],
            "",
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = aws
        .call(
            "PUT",
            "/things/lamp-2/principals",
            "",
            &[("x-amzn-principal", &principal)],
            "",
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (400, "InvalidRequestException"),
        "exclusive is the only one"
    );
    let (_, v2) = aws.get("/things/lamp-1/principals-v2", "").await;
    assert_eq!(
        v2["thingPrincipalObjects"],
        json!([{"principal": principal, "thingPrincipalType": "EXCLUSIVE_THING"}])
    );
    let (_, v1) = aws
        .call(
            "GET",
            "/principals/things",
            "",
            &[("x-amzn-principal", &principal)],
            "",
        )
        .await;
    assert_eq!(v1["things"], json!(["lamp-1"]));
    let (status, body) = aws.get("/things/nope/principals", "").await;
    assert_eq!((status, kind(&body)), (404, "ResourceNotFoundException"));
    t.write_policy(
        "own-thing",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:000000000000:client/*","Condition":{"StringEquals":{"iot:Connection.Thing.ThingName":"lamp-1"}}},
           {"Effect":"Allow","Action":["iot:Publish","iot:Subscribe","iot:Receive"],"Resource":"*"}]}"#,
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while aws.get("/policies/own-thing", "").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy file never picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = aws
        .call(
            "PUT",
            "/target-policies/own-thing",
            "",
            &[],
            &json!({ "target": principal }).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let mut raw = Raw::connect(t.addr(), t.tls_config(Some(&pem)))
        .await
        .expect("tls");
    raw.send(&connect_bytes(4, "any-client-id", 30)).await;
    assert_eq!(
        raw.read_n(4).await,
        vec![0x20, 0x02, 0x00, 0x00],
        "thing resolved exclusively"
    );
}

fn urlencode(s: &str) -> String {
    edgegate::http::sigv4::uri_encode(s, false)
}

#[tokio::test]
async fn a_policy_made_through_the_api_governs_a_live_connection_within_a_second() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Connect","iot:Publish","iot:Subscribe","iot:Receive"],"Resource":"*"}]}"#;
    let deny_publish = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Connect","iot:Subscribe","iot:Receive"],"Resource":"*"}]}"#;
    let (status, body) = aws
        .post(
            "/policies/api-made",
            "",
            json!({"policyDocument": "{\"Statement\": 7}"}),
        )
        .await;
    assert_eq!((status, kind(&body)), (400, "MalformedPolicyException"));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Statement"),
        "{body}"
    );
    let (status, made) = aws
        .post("/policies/api-made", "", json!({"policyDocument": allow}))
        .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(
        (made["policyVersionId"].as_str(), made["policyArn"].as_str()),
        (Some("1"), Some(arn("policy", "api-made").as_str()))
    );
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("policies/api-made.json")).expect("file"),
        allow,
        "policies/ stays the source of truth"
    );
    assert_eq!(
        aws.post("/policies/api-made", "", json!({"policyDocument": allow}))
            .await
            .0,
        409
    );
    let pem = t.device("api-dev");
    let id = register(&aws, &pem.cert).await;
    let target = arn("cert", &id);
    let (status, _) = aws
        .call(
            "PUT",
            "/target-policies/api-made",
            "",
            &[],
            &json!({"target": target}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (_, attached) = aws
        .post(
            &format!("/attached-policies/{}", urlencode(&target)),
            "",
            json!({}),
        )
        .await;
    assert_eq!(attached["policies"][0]["policyName"], "api-made");
    let (_, targets) = aws.post("/policy-targets/api-made", "", json!({})).await;
    assert_eq!(targets["targets"], json!([target]));
    let (status, body) = aws.call("DELETE", "/policies/api-made", "", &[], "").await;
    assert_eq!(
        (status, kind(&body)),
        (409, "DeleteConflictException"),
        "attached"
    );

    let mut dev = V4::connect_as(&t, "api-dev", &pem).await;
    dev.subscribe("api/#", rumqttc::QoS::AtLeastOnce).await;
    dev.publish("api/1", rumqttc::QoS::AtLeastOnce, false, b"one")
        .await;
    assert_eq!(&dev.recv().await.payload[..], b"one");

    // A second version, not the default, changes nothing.
    let (status, v2) = aws
        .post(
            "/policies/api-made/version",
            "",
            json!({"policyDocument": deny_publish}),
        )
        .await;
    assert_eq!(
        (
            status,
            v2["policyVersionId"].as_str(),
            v2["isDefaultVersion"].as_bool()
        ),
        (200, Some("2"), Some(false))
    );
    dev.publish("api/2", rumqttc::QoS::AtLeastOnce, false, b"two")
        .await;
    assert_eq!(&dev.recv().await.payload[..], b"two");
    // Made the default, it applies to the live connection: publishing ends it.
    let (status, _) = aws
        .call("PATCH", "/policies/api-made/version/2", "", &[], "")
        .await;
    assert_eq!(status, 200);
    let (_, got) = aws.get("/policies/api-made", "").await;
    assert_eq!(got["defaultVersionId"], "2");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let closed = 'probe: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still allowed after a second"
        );
        dev.publish("api/3", rumqttc::QoS::AtLeastOnce, false, b"three")
            .await;
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, dev.events.recv()).await {
            if let Ev4::Error(e) = ev {
                break 'probe e;
            }
        }
    };
    assert!(
        !closed.is_empty(),
        "a denied publish closes a 3.1.1 connection"
    );
    for id in 3..=5 {
        assert_eq!(
            aws.post(
                "/policies/api-made/version",
                "",
                json!({"policyDocument": allow})
            )
            .await
            .0,
            200,
            "version {id}"
        );
    }
    let (status, body) = aws
        .post(
            "/policies/api-made/version",
            "",
            json!({"policyDocument": allow}),
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (409, "VersionsLimitExceededException")
    );
    let (_, versions) = aws.get("/policies/api-made/version", "").await;
    assert_eq!(versions["policyVersions"].as_array().map(Vec::len), Some(5));
    let (status, body) = aws
        .call("DELETE", "/policies/api-made/version/2", "", &[], "")
        .await;
    assert_eq!(
        (status, kind(&body)),
        (409, "DeleteConflictException"),
        "the default"
    );
    let (_, v1) = aws.get("/policies/api-made/version/1", "").await;
    assert_eq!(
        (
            v1["policyDocument"].as_str(),
            v1["isDefaultVersion"].as_bool()
        ),
        (Some(allow), Some(false))
    );

    // TestAuthorization and GetEffectivePolicies use the same evaluation.
    let body = json!({
        "principal": target,
        "authInfos": [
            {"actionType": "PUBLISH", "resources": [arn("topic", "api/x")]},
            {"actionType": "SUBSCRIBE", "resources": [arn("topicfilter", "api/#")]},
        ],
    });
    let (status, tested) = aws
        .post("/test-authorization", "clientId=api-dev", body)
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["authResults"][0]["authDecision"], "IMPLICIT_DENY");
    assert_eq!(tested["authResults"][1]["authDecision"], "ALLOWED");
    assert_eq!(
        tested["authResults"][1]["allowed"]["policies"][0]["policyName"],
        "api-made"
    );
    let (_, effective) = aws
        .post("/effective-policies", "", json!({"principal": target}))
        .await;
    assert_eq!(
        effective["effectivePolicies"][0]["policyDocument"],
        deny_publish
    );
    let (_, endpoint) = aws.get("/endpoint", "endpointType=iot%3AData-ATS").await;
    assert_eq!(
        endpoint["endpointAddress"],
        format!("localhost:{}", t.addr().port())
    );
    let (_, credentials) = aws
        .get("/endpoint", "endpointType=iot%3ACredentialProvider")
        .await;
    let https = t.server().https.expect("https").port();
    assert_eq!(credentials["endpointAddress"], format!("localhost:{https}"));
    assert_eq!(aws.get("/endpoint", "endpointType=iot%3ANope").await.0, 400);
    // Ten policies at most on one certificate; detaching what is not attached is an error.
    for i in 0..9 {
        let name = format!("extra-{i}");
        assert_eq!(
            aws.post(
                &format!("/policies/{name}"),
                "",
                json!({"policyDocument": allow})
            )
            .await
            .0,
            200
        );
        let (status, _) = aws
            .call(
                "PUT",
                &format!("/target-policies/{name}"),
                "",
                &[],
                &json!({"target": target}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "policy {}", i + 2);
    }
    let (status, body) = aws
        .call(
            "PUT",
            "/target-policies/open",
            "",
            &[],
            &json!({"target": target}).to_string(),
        )
        .await;
    assert_eq!((status, kind(&body)), (410, "LimitExceededException"));
    let (status, body) = aws
        .post("/target-policies/open", "", json!({"target": target}))
        .await;
    assert_eq!(
        (status, kind(&body)),
        (404, "ResourceNotFoundException"),
        "not attached"
    );
    let (status, _) = aws
        .post("/target-policies/extra-8", "", json!({"target": target}))
        .await;
    assert_eq!(status, 200, "detached");
    let mut names = Vec::new();
    let mut query = "pageSize=4&isAscendingOrder=true".to_owned();
    loop {
        let (status, page) = aws.get("/policies", &query).await;
        assert_eq!(status, 200, "{page}");
        names.extend(
            page["policies"]
                .as_array()
                .expect("policies")
                .iter()
                .map(|p| p["policyName"].as_str().expect("name").to_owned()),
        );
        match page["nextMarker"].as_str() {
            Some(m) => query = format!("pageSize=4&isAscendingOrder=true&marker={}", urlencode(m)),
            None => break,
        }
    }
    assert_eq!(
        names.len(),
        11,
        "open, api-made and nine more, each once: {names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("extra-8"),
        "creation order"
    );
}

#[tokio::test]
async fn a_ca_registered_through_the_api_admits_its_devices_without_a_restart() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let fleet = Ca::generate("fleet CA").expect("ca");
    let device = fleet
        .issue_device("fleet-1", KeyKind::EcdsaP256)
        .expect("device");
    let config = client_tls(
        &std::fs::read_to_string(t.dir.path().join("certs/ca.pem")).expect("ca"),
        Some(&device),
    );
    assert!(
        connack_code(&t, config.clone(), "fleet-1").await.is_none(),
        "an unknown CA fails the handshake"
    );
    let (_, code) = aws.get("/registrationcode", "").await;
    let code = code["registrationCode"].as_str().expect("code").to_owned();
    assert_eq!(code.len(), 64);
    assert_eq!(
        aws.get("/registrationcode", "").await.1["registrationCode"],
        code.as_str(),
        "stable"
    );
    let wrong = fleet
        .issue_device("not-the-code", KeyKind::EcdsaP256)
        .expect("v");
    let (status, body) = aws
        .post(
            "/cacertificate",
            "setAsActive=true",
            json!({"caCertificate": fleet.pem.cert, "verificationCertificate": wrong.cert}),
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (400, "RegistrationCodeValidationException")
    );
    let stranger = Ca::generate("other")
        .expect("ca")
        .issue_device(&code, KeyKind::EcdsaP256)
        .expect("v");
    let (status, body) = aws
        .post(
            "/cacertificate",
            "setAsActive=true",
            json!({"caCertificate": fleet.pem.cert, "verificationCertificate": stranger.cert}),
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (400, "CertificateValidationException"),
        "not signed by the CA"
    );
    let verification = fleet.issue_device(&code, KeyKind::EcdsaP256).expect("v");
    let (status, made) = aws
        .post(
            "/cacertificate",
            "setAsActive=true&allowAutoRegistration=true",
            json!({"caCertificate": fleet.pem.cert, "verificationCertificate": verification.cert}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let ca_id = made["certificateId"].as_str().expect("id").to_owned();
    assert_eq!(
        connack_code(&t, config.clone(), "fleet-1").await,
        Some(0),
        "admitted without a restart"
    );
    let (_, by_ca) = aws.get(&format!("/certificates-by-ca/{ca_id}"), "").await;
    assert_eq!(
        by_ca["certificates"].as_array().map(Vec::len),
        Some(1),
        "{by_ca}"
    );
    let (_, d) = aws.get(&format!("/cacertificate/{ca_id}"), "").await;
    assert_eq!(
        d["certificateDescription"]["autoRegistrationStatus"],
        "ENABLE"
    );
    let (status, body) = aws
        .call("DELETE", &format!("/cacertificate/{ca_id}"), "", &[], "")
        .await;
    assert_eq!(
        (status, kind(&body)),
        (406, "CertificateStateException"),
        "still ACTIVE"
    );
    let mut live = V5::connect_with(&t, t.addr().port(), "fleet-1", &device, |_| {}).await;
    let (status, _) = aws
        .call(
            "PUT",
            &format!("/cacertificate/{ca_id}"),
            "newStatus=INACTIVE",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 200);
    let ended = live.ended().await;
    assert!(
        ended.contains("NotAuthorized"),
        "a live connection of the CA's device closes: {ended}"
    );
    assert!(
        connack_code(&t, config.clone(), "fleet-1").await.is_none(),
        "no longer trusted"
    );
    assert_eq!(
        aws.call("DELETE", &format!("/cacertificate/{ca_id}"), "", &[], "")
            .await
            .0,
        200
    );
    let (_, list) = aws.get("/cacertificates", "").await;
    assert_eq!(
        list["certificates"].as_array().map(Vec::len),
        Some(1),
        "the configured CA stays"
    );

    // RegisterCertificate wants the issuer registered, and a real key.
    let (status, body) = aws
        .post(
            "/certificate/register",
            "",
            json!({"certificatePem": device.cert}),
        )
        .await;
    assert!(status == 400 || status == 409, "{body}");
    let orphan = Ca::generate("orphan")
        .expect("ca")
        .issue_device("o", KeyKind::EcdsaP256)
        .expect("o");
    let (status, body) = aws
        .post(
            "/certificate/register",
            "",
            json!({"certificatePem": orphan.cert}),
        )
        .await;
    assert_eq!(
        (status, kind(&body)),
        (400, "CertificateValidationException")
    );
    let (status, _) = aws
        .post(
            "/certificate/register-no-ca",
            "",
            json!({"certificatePem": orphan.cert}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = aws
        .post(
            "/certificate/register-no-ca",
            "",
            json!({"certificatePem": t.device("p").cert, "status": "PENDING_ACTIVATION"}),
        )
        .await;
    assert_eq!((status, kind(&body)), (406, "CertificateStateException"));
}

#[tokio::test]
async fn certificates_issued_by_the_gateway_connect() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let (status, made) = aws
        .post("/keys-and-certificate", "setAsActive=true", json!({}))
        .await;
    assert_eq!(status, 200, "{made}");
    let key = made["keyPair"]["PrivateKey"].as_str().expect("key");
    assert!(
        key.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "PKCS#1 as AWS gives it"
    );
    assert!(
        made["keyPair"]["PublicKey"]
            .as_str()
            .expect("pub")
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    let id = made["certificateId"].as_str().expect("id").to_owned();
    let (_, d) = aws.get(&format!("/certificates/{id}"), "").await;
    assert_eq!(d["certificateDescription"]["status"], "ACTIVE");
    assert_eq!(
        d["certificateDescription"]["validity"]["notAfter"],
        2_524_607_999_i64
    );
    aws.call(
        "PUT",
        "/target-policies/open",
        "",
        &[],
        &json!({"target": arn("cert", &id)}).to_string(),
    )
    .await;
    let pem = edgegate::transport::pki::Pem {
        cert: made["certificatePem"].as_str().expect("pem").to_owned(),
        key: key.to_owned(),
    };
    let mut dev = V4::connect_as(&t, "issued-1", &pem).await;
    dev.subscribe("issued/#", rumqttc::QoS::AtLeastOnce).await;

    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "csr-1");
    let csr = params
        .serialize_request(&key_pair)
        .expect("csr")
        .pem()
        .expect("pem");
    let (status, made) = aws
        .post(
            "/certificates",
            "",
            json!({"certificateSigningRequest": csr}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let (_, d) = aws
        .get(
            &format!(
                "/certificates/{}",
                made["certificateId"].as_str().expect("id")
            ),
            "",
        )
        .await;
    assert_eq!(
        d["certificateDescription"]["status"], "INACTIVE",
        "without setAsActive"
    );
    let (status, body) = aws
        .post(
            "/certificates",
            "",
            json!({"certificateSigningRequest": "not a csr"}),
        )
        .await;
    assert_eq!((status, kind(&body)), (400, "InvalidRequestException"));
}

#[tokio::test]
async fn topic_rules_made_through_the_api_fire_persist_and_leave_config_rules_alone() {
    let mut t = gateway_with(
        &[],
        &[],
        "[[rules]]\nname = \"from_config\"\nsql = \"SELECT * FROM 'cfg/in'\"\nactions = [{ republish = { topic = \"cfg/out\" } }]\n",
    )
    .await;
    let aws = client(&t, "AKIDADMIN");
    let payload = json!({
        "sql": "SELECT temp, topic(2) AS device FROM 'sensors/+' WHERE temp > 50",
        "description": "hot sensors",
        "actions": [{"republish": {"topic": "alerts/${topic(2)}", "qos": 1,
                                    "roleArn": "arn:aws:iam::000000000000:role/unused"}}],
    });
    let (status, body) = aws.post("/rules/hot", "", payload.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = aws.post("/rules/hot", "", payload.clone()).await;
    assert_eq!(
        (status, kind(&body)),
        (409, "ResourceAlreadyExistsException")
    );
    let (status, body) = aws
        .post(
            "/rules/broken",
            "",
            json!({"sql": "SELECT FROM WHERE", "actions": []}),
        )
        .await;
    assert_eq!((status, kind(&body)), (400, "SqlParseException"), "{body}");
    let (status, body) = aws
        .post(
            "/rules/lambda",
            "",
            json!({"sql": "SELECT * FROM 'a'", "actions": [{"lambda": {"functionArn": "f"}}]}),
        )
        .await;
    assert_eq!((status, kind(&body)), (400, "InvalidRequestException"));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("lambda"),
        "{body}"
    );
    for (method, path) in [
        ("PATCH", "/rules/from_config"),
        ("DELETE", "/rules/from_config"),
        ("POST", "/rules/from_config/disable"),
    ] {
        let (status, body) = aws.call(method, path, "", &[], &payload.to_string()).await;
        assert_eq!(
            (status, kind(&body)),
            (409, "ConflictingResourceUpdateException"),
            "{method} {path}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("config.toml")
        );
    }
    let (status, body) = aws.get("/rules/nope", "").await;
    assert_eq!((status, kind(&body)), (401, "UnauthorizedException"));
    let (_, got) = aws.get("/rules/hot", "").await;
    assert_eq!(got["ruleArn"], arn("rule", "hot"));
    assert_eq!(
        got["rule"]["actions"][0]["republish"]["topic"],
        "alerts/${topic(2)}"
    );
    assert_eq!(got["rule"]["ruleDisabled"], false);
    let (_, listed) = aws.get("/rules", "").await;
    let names: Vec<(&str, &str)> = listed["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["ruleName"].as_str().unwrap_or_default(),
                r["topicPattern"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(names, [("from_config", "cfg/in"), ("hot", "sensors/+")]);

    let (topic, payload_out) = fires(&t, WAIT).await.expect("the API rule fires");
    assert_eq!(topic, "alerts/s-1");
    assert_eq!(
        serde_json::from_str::<Value>(&payload_out).expect("json"),
        json!({"temp": 70, "device": "s-1"})
    );
    assert_eq!(aws.post("/rules/hot/disable", "", json!({})).await.0, 200);
    assert!(
        fires(&t, Duration::from_secs(1)).await.is_none(),
        "a disabled rule does not fire"
    );
    assert_eq!(aws.post("/rules/hot/enable", "", json!({})).await.0, 200);

    t.restart().await;
    let aws = client(&t, "AKIDADMIN");
    assert!(
        fires(&t, WAIT).await.is_some(),
        "the rule survives a restart"
    );
    let mut replaced = payload.clone();
    replaced["actions"][0]["republish"]["topic"] = json!("alerts/replaced/${topic(2)}");
    let (status, _) = aws
        .call("PATCH", "/rules/hot", "", &[], &replaced.to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        fires(&t, WAIT).await.map(|(topic, _)| topic).as_deref(),
        Some("alerts/replaced/s-1")
    );
    assert_eq!(aws.call("DELETE", "/rules/hot", "", &[], "").await.0, 200);
    assert!(
        fires(&t, Duration::from_secs(1)).await.is_none(),
        "a deleted rule does not fire"
    );
    let (_, listed) = aws.get("/rules", "").await;
    assert_eq!(listed["rules"].as_array().map(Vec::len), Some(1));
}

/// What the `hot` rule republishes when sensor `s-1` reports 70 degrees
/// (topic and payload), if anything within `wait`.
async fn fires(t: &TestServer, wait: Duration) -> Option<(String, String)> {
    let mut w = V4::connect_as(t, "watch", &t.device("watch")).await;
    w.subscribe("alerts/#", rumqttc::QoS::AtLeastOnce).await;
    let d = V4::connect_as(t, "s-1", &t.device("s-1")).await;
    d.publish(
        "sensors/s-1",
        rumqttc::QoS::AtLeastOnce,
        false,
        br#"{"temp": 70}"#,
    )
    .await;
    let got = tokio::time::timeout(wait, w.recv()).await;
    got.ok()
        .map(|p| (p.topic, String::from_utf8_lossy(&p.payload).into_owned()))
}

/// Every call is answered once its records are on disk: a gateway killed
/// with SIGKILL right after the answers has them all when it comes back.
#[tokio::test]
async fn nothing_the_api_accepts_is_lost_on_kill_9() {
    let section = "[admin]\nlisten = \"127.0.0.1:0\"\naccess_key_id = \"AKIDADMIN\"\nsecret_access_key_env = \"EDGEGATE_KILL_TEST_SECRET\"\n";
    let env = [("EDGEGATE_KILL_TEST_SECRET", "kill-secret")];
    let t = TestServer::prepare(section);
    let pem = t.device("kept-1");
    let (mut child, _, admin) = spawn_binary(&t, section, &env);
    let aws = Aws::new(admin.parse().expect("addr"), "AKIDADMIN", "kill-secret");
    assert_eq!(aws.post("/thing-types/kept", "", json!({})).await.0, 200);
    let attrs = json!({"thingTypeName": "kept", "attributePayload": {"attributes": {"a": "1"}}});
    assert_eq!(aws.post("/things/kept-1", "", attrs).await.0, 200);
    let id = register(&aws, &pem.cert).await;
    let (status, _) = aws
        .call(
            "PUT",
            "/things/kept-1/principals",
            "",
            &[("x-amzn-principal", &arn("cert", &id))],
            "",
        )
        .await;
    assert_eq!(status, 200);
    let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
    assert_eq!(
        aws.post("/policies/kept", "", json!({"policyDocument": allow}))
            .await
            .0,
        200
    );
    assert_eq!(
        aws.post(
            "/policies/kept/version",
            "",
            json!({"policyDocument": allow})
        )
        .await
        .0,
        200
    );
    let (status, _) = aws
        .call(
            "PUT",
            "/target-policies/kept",
            "",
            &[],
            &json!({"target": arn("cert", &id)}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let rule = json!({"sql": "SELECT * FROM 'k'", "actions": [{"republish": {"topic": "k2"}}]});
    assert_eq!(aws.post("/rules/kept", "", rule).await.0, 200);
    let (status, _) = aws
        .call(
            "PUT",
            &format!("/certificates/{id}"),
            "newStatus=REVOKED",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 200);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let (mut child, _, admin) = spawn_binary(&t, section, &env);
    let aws = Aws::new(admin.parse().expect("addr"), "AKIDADMIN", "kill-secret");
    let (_, thing) = aws.get("/things/kept-1", "").await;
    assert_eq!(
        (
            thing["thingTypeName"].as_str(),
            thing["attributes"]["a"].as_str()
        ),
        (Some("kept"), Some("1"))
    );
    let (_, d) = aws.get(&format!("/certificates/{id}"), "").await;
    assert_eq!(d["certificateDescription"]["status"], "REVOKED");
    let (_, things) = aws
        .call(
            "GET",
            "/principals/things",
            "",
            &[("x-amzn-principal", &arn("cert", &id))],
            "",
        )
        .await;
    assert_eq!(things["things"], json!(["kept-1"]));
    let (_, versions) = aws.get("/policies/kept/version", "").await;
    assert_eq!(versions["policyVersions"].as_array().map(Vec::len), Some(2));
    let (_, attached) = aws
        .post(
            &format!("/attached-policies/{}", urlencode(&arn("cert", &id))),
            "",
            json!({}),
        )
        .await;
    assert_eq!(attached["policies"][0]["policyName"], "kept");
    assert_eq!(aws.get("/rules/kept", "").await.0, 200);
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn registry_events_are_published_once_their_type_is_enabled() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    // Every type is listed, and off, until enabled.
    let (status, body) = aws.get("/event-configurations", "").await;
    assert_eq!(status, 200, "{body}");
    let all = body["eventConfigurations"].as_object().expect("a map");
    assert_eq!(all.len(), 11, "{body}");
    assert!(all.values().all(|c| c["Enabled"] == false), "{body}");

    let mut w = t.v4("watcher", true).await;
    for filter in [
        "$aws/events/thing/#",
        "$aws/events/thingType/#",
        "$aws/events/thingTypeAssociation/#",
    ] {
        w.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
    }
    // Made while THING is off: no event (the next one is about lamp-1's type).
    let (status, _) = aws.post("/things/before", "", json!({})).await;
    assert_eq!(status, 200);

    let enable = json!({"eventConfigurations": {
        "THING": {"Enabled": true},
        "THING_TYPE": {"Enabled": true},
        "THING_TYPE_ASSOCIATION": {"Enabled": true}}});
    let (status, body) = aws
        .call(
            "PATCH",
            "/event-configurations",
            "",
            &[],
            &enable.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = aws.get("/event-configurations", "").await;
    assert_eq!(body["eventConfigurations"]["THING"]["Enabled"], true);
    assert_eq!(body["eventConfigurations"]["JOB"]["Enabled"], false);
    let bad = json!({"eventConfigurations": {"THINGS": {"Enabled": true}}});
    let (status, body) = aws
        .call("PATCH", "/event-configurations", "", &[], &bad.to_string())
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, _) = aws.post("/thing-types/Lamp", "", json!({})).await;
    assert_eq!(status, 200);
    let made =
        json!({"thingTypeName": "Lamp", "attributePayload": {"attributes": {"site": "north"}}});
    let (status, thing) = aws.post("/things/lamp-1", "", made).await;
    assert_eq!(status, 200, "{thing}");
    let (status, _) = aws
        .call(
            "PATCH",
            "/things/lamp-1",
            "",
            &[],
            &json!({"removeThingType": true}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = aws.call("DELETE", "/things/before", "", &[], "").await;
    assert_eq!(status, 200);

    let mut seen = Vec::new();
    for _ in 0..6 {
        let p = w.recv().await;
        let doc: Value = serde_json::from_slice(&p.payload).expect("json");
        seen.push((p.topic, doc));
    }
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$aws/events/thingType/Lamp/created",
            "$aws/events/thing/lamp-1/created",
            "$aws/events/thingTypeAssociation/thing/lamp-1/thingType/Lamp/added",
            "$aws/events/thing/lamp-1/updated",
            "$aws/events/thingTypeAssociation/thing/lamp-1/thingType/Lamp/removed",
            "$aws/events/thing/before/deleted",
        ]
    );
    let created = &seen[1].1;
    assert_eq!(created["eventType"], "THING_EVENT");
    assert_eq!(created["operation"], "CREATED");
    assert_eq!(created["accountId"], ACCOUNT);
    assert_eq!(created["thingName"], "lamp-1");
    assert_eq!(created["thingId"], thing["thingId"]);
    assert_eq!(created["versionNumber"], 1);
    assert_eq!(created["thingTypeName"], "Lamp");
    assert_eq!(created["attributes"], json!({"site": "north"}));
    assert!(created["eventId"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(seen[0].1["eventType"], "THING_TYPE_EVENT");
    assert_eq!(seen[0].1["isDeprecated"], false);
    assert_eq!(seen[2].1["eventType"], "THING_TYPE_ASSOCIATION_EVENT");
    assert_eq!(seen[2].1["operation"], "ADDED");
    assert_eq!(seen[3].1["versionNumber"], 2);
    assert_eq!(seen[3].1["thingTypeName"], Value::Null);
    assert_eq!(seen[5].1["operation"], "DELETED");
    let m = t.metrics().await;
    for (kind, n) in [
        ("thing", 3.0),
        ("thing_type", 1.0),
        ("thing_type_association", 2.0),
    ] {
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
async fn certificate_and_policy_events_follow_every_change_once_enabled() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let mut w = watch_events(
        &t,
        &aws,
        &["CERTIFICATE", "POLICY"],
        &["$aws/events/certificates/#", "$aws/events/policy/#"],
    )
    .await;

    let id = register(&aws, &t.device("evented").cert).await;
    let (status, _) = aws
        .call(
            "PUT",
            &format!("/certificates/{id}"),
            "newStatus=INACTIVE",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = aws
        .call("DELETE", &format!("/certificates/{id}"), "", &[], "")
        .await;
    assert_eq!(status, 200);
    let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
    let (status, _) = aws
        .post("/policies/evented", "", json!({"policyDocument": allow}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = aws
        .post(
            "/policies/evented/version",
            "setAsDefault=true",
            json!({"policyDocument": allow.replace("Connect", "Publish")}),
        )
        .await;
    assert_eq!(status, 200);

    let mut seen = Vec::new();
    for _ in 0..5 {
        let p = w.recv().await;
        let doc: Value = serde_json::from_slice(&p.payload).expect("json");
        seen.push((p.topic, doc));
    }
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            format!("$aws/events/certificates/{id}/created").as_str(),
            &format!("$aws/events/certificates/{id}/updated"),
            &format!("$aws/events/certificates/{id}/deleted"),
            "$aws/events/policy/evented/created",
            "$aws/events/policy/evented/updated",
        ]
    );
    let created = &seen[0].1;
    assert_eq!(created["eventType"], "CERTIFICATE_EVENT");
    assert_eq!(created["operation"], "CREATED");
    assert_eq!(created["accountId"], ACCOUNT);
    assert_eq!(created["certificateId"], id.as_str());
    assert_eq!(created["certificateStatus"], "ACTIVE");
    assert_eq!(seen[1].1["certificateStatus"], "INACTIVE");
    assert_eq!(seen[3].1["eventType"], "POLICY_EVENT");
    assert_eq!(
        (
            &seen[3].1["defaultVersionId"],
            &seen[4].1["defaultVersionId"]
        ),
        (&json!("1"), &json!("2"))
    );

    // A policy file written or removed by hand is a change like any other.
    let file = t.dir.path().join("policies/by-hand.json");
    std::fs::write(&file, allow).expect("write");
    let p = w.recv().await;
    assert_eq!(p.topic, "$aws/events/policy/by-hand/created");
    std::fs::remove_file(&file).expect("remove");
    let p = w.recv().await;
    assert_eq!(p.topic, "$aws/events/policy/by-hand/deleted");
    let m = t.metrics().await;
    for (kind, n) in [("certificate", 3.0), ("policy", 4.0)] {
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
async fn thing_groups_nest_hold_things_and_announce_their_changes() {
    let t = gateway(&[], &[]).await;
    let aws = client(&t, "AKIDADMIN");
    let mut w = watch_events(
        &t,
        &aws,
        &[
            "THING_GROUP",
            "THING_GROUP_MEMBERSHIP",
            "THING_GROUP_HIERARCHY",
        ],
        &[
            "$aws/events/thingGroup/#",
            "$aws/events/thingGroupMembership/#",
            "$aws/events/thingGroupHierarchy/#",
        ],
    )
    .await;

    let (status, site) = aws
        .post(
            "/thing-groups/site",
            "",
            json!({"thingGroupProperties": {"thingGroupDescription": "the north site",
                   "attributePayload": {"attributes": {"city": "oslo"}}}}),
        )
        .await;
    assert_eq!(status, 200, "{site}");
    assert_eq!(site["thingGroupArn"], arn("thinggroup", "site"));
    let (status, _) = aws
        .post(
            "/thing-groups/floor-1",
            "",
            json!({"parentGroupName": "site"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, missing) = aws
        .post(
            "/thing-groups/orphan",
            "",
            json!({"parentGroupName": "nowhere"}),
        )
        .await;
    assert_eq!((status, kind(&missing)), (404, "ResourceNotFoundException"));
    for name in ["lamp-1", "lamp-2"] {
        assert_eq!(
            aws.post(&format!("/things/{name}"), "", json!({})).await.0,
            200
        );
    }
    let add = |group: &str, thing: &str| {
        json!({"thingGroupName": group, "thingArn": arn("thing", thing)}).to_string()
    };
    for (group, thing) in [("floor-1", "lamp-1"), ("site", "lamp-2")] {
        let (status, body) = aws
            .call(
                "PUT",
                "/thing-groups/addThingToThingGroup",
                "",
                &[],
                &add(group, thing),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let (_, described) = aws.get("/thing-groups/floor-1", "").await;
    assert_eq!(described["thingGroupMetadata"]["parentGroupName"], "site");
    assert_eq!(
        described["thingGroupMetadata"]["rootToParentThingGroups"],
        json!([{"groupName": "site", "groupArn": arn("thinggroup", "site")}])
    );
    let (_, direct) = aws.get("/thing-groups/site/things", "").await;
    assert_eq!(direct["things"], json!(["lamp-2"]));
    let (_, all) = aws.get("/thing-groups/site/things", "recursive=true").await;
    assert_eq!(all["things"], json!(["lamp-1", "lamp-2"]));
    let (_, of) = aws.get("/things/lamp-1/thing-groups", "").await;
    assert_eq!(of["thingGroups"][0]["groupName"], "floor-1");
    let (_, children) = aws.get("/thing-groups", "parentGroup=site").await;
    assert_eq!(children["thingGroups"][0]["groupName"], "floor-1");

    let update = json!({"thingGroupProperties": {"thingGroupDescription": "north"},
                        "expectedVersion": 7});
    let (status, conflict) = aws
        .call("PATCH", "/thing-groups/site", "", &[], &update.to_string())
        .await;
    assert_eq!((status, kind(&conflict)), (409, "VersionConflictException"));
    let update = json!({"thingGroupProperties": {"thingGroupDescription": "north"},
                        "expectedVersion": 1});
    let (status, updated) = aws
        .call("PATCH", "/thing-groups/site", "", &[], &update.to_string())
        .await;
    assert_eq!((status, &updated["version"]), (200, &json!(2)), "{updated}");

    let (status, body) = aws.call("DELETE", "/thing-groups/site", "", &[], "").await;
    assert_eq!((status, kind(&body)), (400, "InvalidRequestException"));
    let (status, _) = aws
        .call("DELETE", "/thing-groups/floor-1", "", &[], "")
        .await;
    assert_eq!(status, 200);
    let (_, of) = aws.get("/things/lamp-1/thing-groups", "").await;
    assert_eq!(of["thingGroups"], json!([]));

    let mut seen = Vec::new();
    for _ in 0..9 {
        let p = w.recv().await;
        let doc: Value = serde_json::from_slice(&p.payload).expect("json");
        seen.push((p.topic, doc));
    }
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$aws/events/thingGroup/site/created",
            "$aws/events/thingGroup/floor-1/created",
            "$aws/events/thingGroupHierarchy/thingGroup/site/childThingGroup/floor-1/added",
            "$aws/events/thingGroupMembership/thingGroup/floor-1/thing/lamp-1/added",
            "$aws/events/thingGroupMembership/thingGroup/site/thing/lamp-2/added",
            "$aws/events/thingGroup/site/updated",
            "$aws/events/thingGroupMembership/thingGroup/floor-1/thing/lamp-1/removed",
            "$aws/events/thingGroupHierarchy/thingGroup/site/childThingGroup/floor-1/removed",
            "$aws/events/thingGroup/floor-1/deleted",
        ]
    );
    let floor = &seen[1].1;
    assert_eq!(floor["eventType"], "THING_GROUP_EVENT");
    assert_eq!(floor["parentGroupName"], "site");
    assert_eq!(floor["parentGroupId"], site["thingGroupId"]);
    assert_eq!(
        floor["rootToParentThingGroups"],
        json!([{"groupArn": arn("thinggroup", "site"), "groupId": site["thingGroupId"]}])
    );
    let member = &seen[3].1;
    assert_eq!(member["eventType"], "THING_GROUP_MEMBERSHIP_EVENT");
    assert_eq!(member["thingArn"], arn("thing", "lamp-1"));
    assert_eq!(seen[6].1["membershipId"], member["membershipId"]);
    assert_eq!(seen[2].1["childGroupName"], "floor-1");
    assert_eq!(seen[5].1["versionNumber"], 2);
    assert_eq!(seen[5].1["description"], "north");
}
