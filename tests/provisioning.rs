//! Fleet provisioning by claim, as a device runs it over MQTT: a claim
//! certificate asks for its own certificate, then for its thing under a
//! template, then connects with what it got.

mod common;

use common::*;
use edgegate::transport::pki::Pem;
use rumqttc::QoS;
use serde_json::{Value, json};
use std::sync::Arc;

/// What a claim certificate may do, as AWS's fleet provisioning guide has it.
const CLAIM_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
  {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": [
    "arn:aws:iot:*:*:topic/$aws/certificates/create/*",
    "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*",
    "arn:aws:iot:*:*:topic/$aws/provisioning-templates/*"]},
  {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [
    "arn:aws:iot:*:*:topicfilter/$aws/certificates/create/*",
    "arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/*",
    "arn:aws:iot:*:*:topicfilter/$aws/provisioning-templates/*"]}]}"#;

const FLEET_TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {
      "ThingName": {"Fn::Join": ["", ["lamp-", {"Ref": "SerialNumber"}]]},
      "AttributePayload": {"serial": {"Ref": "SerialNumber"}}}},
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
      "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
  },
  "DeviceConfiguration": {"greeting": {"Fn::Sub": "hello ${SerialNumber}"}}
}"#;

/// A gateway whose unknown certificates are claim certificates, with the
/// repository's device policy and the `Fleet` template.
async fn gateway() -> TestServer {
    gateway_with("").await
}

/// [`gateway`] with `extra` configuration after the `Fleet` template's
/// table, and an operator `AKIDADMIN` allowed everything should `extra`
/// open the admin listener.
async fn gateway_with(extra: &str) -> TestServer {
    let mut t = TestServer::prepare(&format!(
        "[auth]\nprovisioning = {{ policies = [\"claim\"] }}\n\
         [[provisioning.templates]]\nname = \"Fleet\"\nfile = \"templates/fleet.json\"\n{extra}"
    ));
    t.write_operator_files("secret-of-admin");
    t.write_policy("claim", CLAIM_POLICY);
    let device = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/device.json");
    t.write_policy(
        "device",
        &std::fs::read_to_string(device).expect("device.json"),
    );
    let templates = t.dir.path().join("templates");
    std::fs::create_dir_all(&templates).expect("dir");
    std::fs::write(templates.join("fleet.json"), FLEET_TEMPLATE).expect("template");
    t.boot().await;
    t
}

/// Makes an enabled template through the control plane.
async fn enabled_template(aws: &Aws, name: &str, body: &str) {
    let (status, made) = aws
        .post(
            "/provisioning-templates",
            "",
            json!({"templateName": name, "templateBody": body, "enabled": true,
                   "provisioningRoleArn": "arn:aws:iam::000000000000:role/Provisioning"}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
}

/// Subscribes `c` to the answers of `request`.
async fn hear(c: &mut V4, request: &str) {
    for answer in ["accepted", "rejected"] {
        let codes = c
            .subscribe(&format!("{request}/{answer}"), QoS::AtLeastOnce)
            .await;
        assert!(
            matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
            "{request}: {codes:?}"
        );
    }
}

/// A claim device subscribed to the answers of `requests`.
async fn claim(t: &TestServer, id: &str, requests: &[&str]) -> V4 {
    claim_as(t, id, &t.device(id), requests).await
}

/// [`claim`] with the claim certificate `pem`.
async fn claim_as(t: &TestServer, id: &str, pem: &Pem, requests: &[&str]) -> V4 {
    let mut c = V4::connect_as(t, id, pem).await;
    for r in requests {
        hear(&mut c, r).await;
    }
    c
}

/// Publishes `request` and returns the answer's topic and document.
async fn ask(c: &mut V4, request: &str, body: Value) -> (String, Value) {
    c.publish(
        request,
        QoS::AtLeastOnce,
        false,
        body.to_string().as_bytes(),
    )
    .await;
    let p = c.recv().await;
    (p.topic, serde_json::from_slice(&p.payload).expect("JSON"))
}

const CREATE: &str = "$aws/certificates/create/json";
const FROM_CSR: &str = "$aws/certificates/create-from-csr/json";
const PROVISION: &str = "$aws/provisioning-templates/Fleet/provision/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_certificate_gets_a_certificate_and_a_thing_then_connects_with_them() {
    let t = gateway().await;
    let mut other = claim(&t, "claim-2", &[CREATE]).await;
    let mut c = claim(&t, "claim-1", &[CREATE, PROVISION]).await;

    let (topic, created) = ask(&mut c, CREATE, json!({})).await;
    assert_eq!(topic, format!("{CREATE}/accepted"), "{created}");
    let id = created["certificateId"].as_str().expect("certificateId");
    assert_eq!(id.len(), 64);
    let token = created["certificateOwnershipToken"]
        .as_str()
        .expect("token");
    let cert = created["certificatePem"].as_str().expect("certificatePem");
    let key = created["privateKey"].as_str().expect("privateKey");
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{key}");
    assert_eq!(
        t.server().registry.certificate(id).map(|c| c.status.name()),
        Some("PENDING_ACTIVATION")
    );

    let (topic, registered) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "0042"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/accepted"), "{registered}");
    assert_eq!(
        registered,
        json!({"thingName": "lamp-0042", "deviceConfiguration": {"greeting": "hello 0042"}})
    );
    let registry = &t.server().registry;
    let made = registry.certificate(id).expect("registered");
    assert_eq!(made.status.name(), "ACTIVE");
    assert_eq!(made.policies, ["device"]);
    assert_eq!(made.things, ["lamp-0042"]);
    assert_eq!(
        registry.thing("lamp-0042").map(|t| t.attributes),
        Some([("serial".to_owned(), "0042".to_owned())].into())
    );

    // Each request is in the audit log, with the claim certificate as its
    // principal and what it made as resources.
    let line = audit_line(&t, |l| {
        l.contains("\"RegisterThing\"") && l.contains("\"status\":200")
    })
    .await;
    let entry: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(entry["decision"], "allow");
    assert_eq!(
        entry["resources"],
        json!([
            "arn:aws:iot:us-east-1:000000000000:provisioningtemplate/Fleet",
            format!("arn:aws:iot:us-east-1:000000000000:cert/{id}"),
            "arn:aws:iot:us-east-1:000000000000:thing/lamp-0042"
        ])
    );
    let claim_principal = entry["principal"].as_str().expect("principal");
    assert_eq!(claim_principal.len(), 64, "{entry}");
    let line = audit_line(&t, |l| l.contains("CreateKeysAndCertificate")).await;
    assert!(line.contains(&format!("cert/{id}")), "{line}");

    // The token is used up.
    let (topic, again) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "0043"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/rejected"));
    assert_eq!(
        again,
        json!({"statusCode": 400, "errorCode": "InvalidCertificateOwnershipToken",
               "errorMessage": "Certificate ownership token is invalid."})
    );
    let (_, empty) = ask(&mut c, PROVISION, json!({"parameters": {}})).await;
    assert_eq!(
        empty["errorMessage"],
        "Certificate ownership token cannot be empty."
    );
    audit_line(&t, |l| {
        l.contains("\"RegisterThing\"")
            && l.contains("\"error\":\"InvalidCertificateOwnershipToken\"")
    })
    .await;

    // The other claim device, subscribed to the same answers, saw none of
    // them: the private key went to its requester alone.
    other
        .nothing_for(std::time::Duration::from_millis(200))
        .await;

    // The device connects with its new certificate, as its thing, under
    // the device policy.
    let pem = Pem {
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    let mut lamp =
        V4::connect_with(&t, t.addr().port(), "lamp-0042", &pem, true, None, |_| {}).await;
    lamp.subscribe("things/lamp-0042/#", QoS::AtLeastOnce).await;
    lamp.publish("things/lamp-0042/hello", QoS::AtLeastOnce, false, b"hi")
        .await;
    assert_eq!(lamp.recv().await.payload.as_ref(), b"hi");

    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_provisioning_requests_total{outcome=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "edgegate_provisioning_requests_total{outcome=\"rejected\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn a_device_may_bring_its_own_key_in_a_csr() {
    let t = gateway().await;
    let mut c = claim(&t, "claim-csr", &[FROM_CSR, PROVISION]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (topic, created) = ask(&mut c, FROM_CSR, json!({"certificateSigningRequest": csr})).await;
    assert_eq!(topic, format!("{FROM_CSR}/accepted"), "{created}");
    assert!(created.get("privateKey").is_none(), "{created}");
    let token = created["certificateOwnershipToken"]
        .as_str()
        .expect("token");
    let (topic, registered) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "7"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/accepted"), "{registered}");
    let pem = Pem {
        cert: created["certificatePem"].as_str().expect("pem").to_owned(),
        key: key.serialize_pem(),
    };
    V4::connect_with(&t, t.addr().port(), "lamp-7", &pem, true, None, |_| {})
        .await
        .disconnect()
        .await;

    let (topic, bad) = ask(
        &mut c,
        FROM_CSR,
        json!({"certificateSigningRequest": "nonsense"}),
    )
    .await;
    assert_eq!(topic, format!("{FROM_CSR}/rejected"));
    assert_eq!(bad["errorCode"], "InvalidCsr", "{bad}");
}

#[tokio::test]
async fn what_cannot_be_provisioned_is_rejected_with_aws_errors() {
    let t = gateway().await;
    let nope = "$aws/provisioning-templates/Nope/provision/json";
    let mut c = claim(&t, "claim-3", &[CREATE, PROVISION, nope]).await;
    let (topic, missing) = ask(&mut c, nope, json!({"certificateOwnershipToken": "x"})).await;
    assert_eq!(topic, format!("{nope}/rejected"));
    assert_eq!(missing["statusCode"], 404, "{missing}");
    assert_eq!(missing["errorCode"], "ResourceNotFound");

    let (_, created) = ask(&mut c, CREATE, json!({})).await;
    let token = created["certificateOwnershipToken"]
        .as_str()
        .expect("token");
    // The template needs SerialNumber.
    let (topic, unresolved) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/rejected"));
    assert_eq!(unresolved["errorCode"], "InvalidParameters", "{unresolved}");
    assert_eq!(
        unresolved["errorMessage"],
        "Cannot resolve reference value: SerialNumber"
    );
    // A refused request leaves the token good.
    let (topic, _) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "9"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/accepted"));

    // Nobody may answer in the service's place.
    let mut forger = t.v5("forger").await;
    assert_eq!(
        forger
            .publish_qos1(&format!("{CREATE}/accepted"), false, "{}")
            .await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
}

#[test]
fn a_broken_template_stops_the_gateway_from_starting_with_its_name() {
    let t = TestServer::prepare(
        "[[provisioning.templates]]\nname = \"Broken\"\nfile = \"templates/broken.json\"\n",
    );
    let templates = t.dir.path().join("templates");
    std::fs::create_dir_all(&templates).expect("dir");
    std::fs::write(
        templates.join("broken.json"),
        r#"{"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Fn::If": []}}}}}"#,
    )
    .expect("template");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(["serve", "--config"])
        .arg(t.config_file())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("provisioning template Broken") && err.contains("Fn::If is not supported"),
        "{err}"
    );
}

/// What a pre-provisioning hook endpoint was asked, and how it answers:
/// by the device's `SerialNumber`.
#[derive(Clone, Default)]
struct HookEndpoint {
    asked: Arc<parking_lot::Mutex<Vec<Value>>>,
}

async fn hook_answer(
    axum::extract::State(hook): axum::extract::State<HookEndpoint>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let doc: Value = serde_json::from_slice(&body).expect("the hook is sent JSON");
    hook.asked.lock().push(doc.clone());
    let serial = doc["parameters"]["SerialNumber"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match serial.as_str() {
        "deny" => json!({"allowProvisioning": false})
            .to_string()
            .into_response(),
        "garbage" => "allow!".into_response(),
        "broken" => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "silent" => std::future::pending().await,
        _ => json!({
            "allowProvisioning": true,
            "parameterOverrides": {"SerialNumber": format!("{serial}-checked")}
        })
        .to_string()
        .into_response(),
    }
}

/// A hook endpoint on 127.0.0.1; its URL.
async fn hook_endpoint() -> (HookEndpoint, String) {
    let hook = HookEndpoint::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook_answer))
        .with_state(hook.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hook, format!("http://{addr}/hook"))
}

/// A URL on 127.0.0.1 where nothing listens.
async fn nothing_listens() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    format!("http://{}/hook", listener.local_addr().expect("addr"))
}

/// Creates keys and a certificate; the ownership token.
async fn token(c: &mut V4) -> String {
    let (topic, created) = ask(c, CREATE, json!({})).await;
    assert_eq!(topic, format!("{CREATE}/accepted"), "{created}");
    created["certificateOwnershipToken"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_provisioning_hook_decides_and_may_override_parameters() {
    let (hook, url) = hook_endpoint().await;
    let down = nothing_listens().await;
    let t = gateway_with(&format!(
        "hook = \"{url}\"\n\
         [[provisioning.templates]]\nname = \"Down\"\nfile = \"templates/fleet.json\"\nhook = \"{down}\"\n"
    ))
    .await;
    let down_topic = "$aws/provisioning-templates/Down/provision/json";
    let claim_pem = t.device("claim-hooked");
    let mut c = claim_as(
        &t,
        "claim-hooked",
        &claim_pem,
        &[CREATE, PROVISION, down_topic],
    )
    .await;
    let claim_id = edgegate::registry::ClientIdentity::from_der(
        pem::parse(&claim_pem.cert).expect("PEM").contents(),
    )
    .expect("identity")
    .certificate_id;

    // Allowed, with the serial number the hook chose.
    let token_1 = token(&mut c).await;
    let (topic, registered) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token_1, "parameters": {"SerialNumber": "1"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/accepted"), "{registered}");
    assert_eq!(registered["thingName"], "lamp-1-checked");
    let asked = hook.asked.lock()[0].clone();
    assert_eq!(asked["claimCertificateId"], claim_id.as_str());
    assert_eq!(asked["clientId"], "claim-hooked");
    assert_eq!(
        asked["templateArn"],
        "arn:aws:iot:us-east-1:000000000000:provisioningtemplate/Fleet"
    );
    assert_eq!(asked["parameters"], json!({"SerialNumber": "1"}));
    let certificate_id = asked["certificateId"].as_str().expect("certificateId");
    let certificate = t
        .server()
        .registry
        .certificate(certificate_id)
        .expect("the certificate asked about");
    assert_eq!(asked["certificatePem"], certificate.pem.as_str());
    assert_eq!(certificate.things, ["lamp-1-checked"]);

    // Refused, and refused by an answer that is not an explicit allow,
    // by an error status and by an endpoint that is down: AccessDenied,
    // nothing made, the token still good.
    let token_2 = token(&mut c).await;
    for (topic, serial) in [
        (PROVISION, "deny"),
        (PROVISION, "garbage"),
        (PROVISION, "broken"),
        (down_topic, "2"),
    ] {
        let (answer, refused) = ask(
            &mut c,
            topic,
            json!({"certificateOwnershipToken": token_2, "parameters": {"SerialNumber": serial}}),
        )
        .await;
        assert_eq!(answer, format!("{topic}/rejected"), "{serial}: {refused}");
        assert_eq!(refused["statusCode"], 403, "{refused}");
        assert_eq!(refused["errorCode"], "AccessDenied", "{refused}");
        assert!(
            t.server()
                .registry
                .thing(&format!("lamp-{serial}"))
                .is_none()
        );
    }
    let (topic, _) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token_2, "parameters": {"SerialNumber": "2"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/accepted"));

    // A hook that never answers refuses the device after AWS's 5 seconds;
    // other devices are answered meanwhile.
    let token_3 = token(&mut c).await;
    c.publish(
        PROVISION,
        QoS::AtLeastOnce,
        false,
        json!({"certificateOwnershipToken": token_3, "parameters": {"SerialNumber": "silent"}})
            .to_string()
            .as_bytes(),
    )
    .await;
    let mut other = claim(&t, "claim-other", &[CREATE]).await;
    token(&mut other).await;
    let started = tokio::time::Instant::now();
    let p = c.recv().await;
    assert_eq!(p.topic, format!("{PROVISION}/rejected"));
    let refused: Value = serde_json::from_slice(&p.payload).expect("JSON");
    assert_eq!(refused["errorCode"], "AccessDenied", "{refused}");
    assert!(
        refused["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("5 s")),
        "{refused}"
    );
    assert!(started.elapsed() < WAIT);
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edgegate_provisioning_requests_total{outcome=\"rejected\"}"
        ),
        5.0
    );
}

/// The admin listener and its one operator.
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\npolicies_dir = \"operator-policies\"\n\
    [[admin.users]]\naccess_key_id = \"admin\"\nsecret_file = \"admin.secret\"\npolicies = [\"Everything\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_made_through_the_api_provision_devices_and_persist() {
    let mut t = gateway_with(ADMIN).await;
    let aws = Aws::new(t.admin(), "admin", "secret-of-admin");
    let (status, made) = aws
        .post(
            "/provisioning-templates",
            "",
            json!({
                "templateName": "Lamps",
                "description": "lamps of the first floor",
                "templateBody": FLEET_TEMPLATE,
                "provisioningRoleArn": "arn:aws:iam::000000000000:role/Provisioning",
                "enabled": true,
            }),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(
        made,
        json!({"templateArn": "arn:aws:iot:us-east-1:000000000000:provisioningtemplate/Lamps",
               "templateName": "Lamps", "defaultVersionId": 1})
    );
    let lamps = "$aws/provisioning-templates/Lamps/provision/json";
    let mut c = claim(&t, "claim-api", &[CREATE, lamps]).await;
    let token_now = token(&mut c).await;
    let (topic, registered) = ask(
        &mut c,
        lamps,
        json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": "8"}}),
    )
    .await;
    assert_eq!(topic, format!("{lamps}/accepted"), "{registered}");
    assert_eq!(registered["thingName"], "lamp-8");

    // A second version, made the default, names things otherwise.
    let second = FLEET_TEMPLATE.replace("lamp-", "floor1-");
    let (status, version) = aws
        .post(
            "/provisioning-templates/Lamps/versions",
            "setAsDefault=true",
            json!({ "templateBody": second }),
        )
        .await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(
        (&version["versionId"], &version["isDefaultVersion"]),
        (&json!(2), &json!(true))
    );
    let token_now = token(&mut c).await;
    let (_, registered) = ask(
        &mut c,
        lamps,
        json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": "9"}}),
    )
    .await;
    assert_eq!(registered["thingName"], "floor1-9", "{registered}");

    let (status, described) = aws
        .get("/provisioning-templates/Lamps/versions/2", "")
        .await;
    assert_eq!(status, 200, "{described}");
    assert_eq!(
        (&described["templateBody"], &described["isDefaultVersion"]),
        (&json!(second), &json!(true))
    );
    let (status, missing) = aws
        .get("/provisioning-templates/Lamps/versions/9", "")
        .await;
    assert_eq!(status, 404, "{missing}");

    // The default version cannot go; another can.
    let (status, conflict) = aws
        .call(
            "DELETE",
            "/provisioning-templates/Lamps/versions/2",
            "",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    let (_, versions) = aws.get("/provisioning-templates/Lamps/versions", "").await;
    assert_eq!(
        versions["versions"].as_array().map(|v| v
            .iter()
            .map(|v| v["isDefaultVersion"].clone())
            .collect::<Vec<_>>()),
        Some(vec![json!(false), json!(true)])
    );
    let (status, _) = aws
        .call(
            "DELETE",
            "/provisioning-templates/Lamps/versions/1",
            "",
            &[],
            "",
        )
        .await;
    assert_eq!(status, 200);

    // A broken body is refused with AWS's error and changes nothing.
    let (status, broken) = aws
        .post(
            "/provisioning-templates/Lamps/versions",
            "setAsDefault=true",
            json!({ "templateBody": "{\"Resources\": []}" }),
        )
        .await;
    assert_eq!(status, 400, "{broken}");

    // Disabled, it provisions nothing.
    let (status, _) = aws
        .call(
            "PATCH",
            "/provisioning-templates/Lamps",
            "",
            &[],
            &json!({"enabled": false}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let token_now = token(&mut c).await;
    let (topic, refused) = ask(
        &mut c,
        lamps,
        json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": "10"}}),
    )
    .await;
    assert_eq!(topic, format!("{lamps}/rejected"), "{refused}");

    // A template that fails half-way leaves nothing behind: the policy it
    // attached before its thing's type turned out missing is detached.
    let typed = FLEET_TEMPLATE.replace(
        "\"ThingName\"",
        "\"ThingTypeName\": \"no-such-type\", \"ThingName\"",
    );
    enabled_template(&aws, "Typed", &typed).await;
    let typed_topic = "$aws/provisioning-templates/Typed/provision/json";
    let mut d = claim(&t, "claim-typed", &[CREATE, typed_topic]).await;
    let (_, created) = ask(&mut d, CREATE, json!({})).await;
    let (topic, refused) = ask(
        &mut d,
        typed_topic,
        json!({"certificateOwnershipToken": created["certificateOwnershipToken"],
               "parameters": {"SerialNumber": "11"}}),
    )
    .await;
    assert_eq!(topic, format!("{typed_topic}/rejected"), "{refused}");
    let left = t
        .server()
        .registry
        .certificate(created["certificateId"].as_str().expect("id"))
        .expect("still registered, waiting for its token");
    assert!(
        left.policies.is_empty() && left.things.is_empty(),
        "{left:?}"
    );
    assert_eq!(left.status.name(), "PENDING_ACTIVATION");
    assert!(t.server().registry.thing("lamp-11").is_none());

    // The template of config.toml is listed, and changed only there.
    let (_, listed) = aws.get("/provisioning-templates", "").await;
    let names: Vec<&str> = listed["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["templateName"].as_str())
        .collect();
    assert_eq!(names, ["Fleet", "Lamps", "Typed"]);
    let (status, fixed) = aws
        .call("DELETE", "/provisioning-templates/Fleet", "", &[], "")
        .await;
    assert_eq!(status, 409, "{fixed}");

    // What the API made outlives a restart.
    t.restart().await;
    let aws = Aws::new(t.admin(), "admin", "secret-of-admin");
    let (status, described) = aws.get("/provisioning-templates/Lamps", "").await;
    assert_eq!(status, 200, "{described}");
    assert_eq!(described["defaultVersionId"], 2);
    assert_eq!(described["enabled"], false);
    assert_eq!(described["description"], "lamps of the first floor");
    assert_eq!(described["templateBody"], second.as_str());

    let (status, _) = aws
        .call("DELETE", "/provisioning-templates/Lamps", "", &[], "")
        .await;
    assert_eq!(status, 200);
    let (status, gone) = aws.get("/provisioning-templates/Lamps", "").await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["__type"], "ResourceNotFoundException", "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_may_bring_its_policy_as_a_document() {
    let t = gateway_with(ADMIN).await;
    let aws = Aws::new(t.admin(), "admin", "secret-of-admin");
    // AWS's fleet examples write the document as an object; its policy
    // variables stay for the connection to fill.
    let template = json!({
        "Parameters": {"SerialNumber": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": {"Fn::Join": ["", ["doc-", {"Ref": "SerialNumber"}]]}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "iot:Connect",
                     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
                    {"Effect": "Allow", "Action": "iot:Publish",
                     "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"}]}}}
        }
    });
    enabled_template(&aws, "Documented", &template.to_string()).await;
    let topic = "$aws/provisioning-templates/Documented/provision/json";
    let mut c = claim(&t, "claim-doc", &[CREATE, topic]).await;
    let (_, created) = ask(&mut c, CREATE, json!({})).await;
    for serial in ["5", "6"] {
        let (_, created) = if serial == "5" {
            (String::new(), created.clone())
        } else {
            ask(&mut c, CREATE, json!({})).await
        };
        let (answer, registered) = ask(
            &mut c,
            topic,
            json!({"certificateOwnershipToken": created["certificateOwnershipToken"],
                   "parameters": {"SerialNumber": serial}}),
        )
        .await;
        assert_eq!(answer, format!("{topic}/accepted"), "{registered}");
        let id = created["certificateId"].as_str().expect("id");
        let policies = t.server().registry.certificate(id).expect("cert").policies;
        assert_eq!(
            policies.len(),
            1,
            "one policy, named by its document's hash"
        );
        // Both devices share the one policy the document made.
        let (status, policy) = aws.get(&format!("/policies/{}", policies[0]), "").await;
        assert_eq!(status, 200, "{policy}");

        // In force as soon as the device is provisioned: it may publish
        // under its own thing's name only.
        let pem = Pem {
            cert: created["certificatePem"].as_str().expect("pem").to_owned(),
            key: created["privateKey"].as_str().expect("key").to_owned(),
        };
        let name = format!("doc-{serial}");
        let mut device = V5::connect_with(&t, t.addr().port(), &name, &pem, |_| {}).await;
        // Accepted; nobody listens there.
        assert_eq!(
            device
                .publish_qos1(&format!("things/{name}/hello"), false, "hi")
                .await,
            rumqttc::v5::mqttbytes::v5::PubAckReason::NoMatchingSubscribers
        );
        assert_eq!(
            device
                .publish_qos1("things/doc-other/hello", false, "hi")
                .await,
            rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
        );
    }
    let (_, listed) = aws.get("/policies", "").await;
    let made: Vec<&Value> = listed["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter(|p| p["policyName"].as_str().is_some_and(|n| n.len() == 64))
        .collect();
    assert_eq!(made.len(), 1, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_settings_decide_what_becomes_of_an_existing_thing() {
    let t = gateway_with(ADMIN).await;
    let aws = Aws::new(t.admin(), "admin", "secret-of-admin");
    let (status, _) = aws
        .post(
            "/things/shared",
            "",
            json!({"attributePayload": {"attributes": {"site": "north"}}}),
        )
        .await;
    assert_eq!(status, 200);
    let mut c = claim(&t, "claim-override", &[CREATE]).await;
    for (name, setting, outcome, attributes) in [
        (
            "Merging",
            "MERGE",
            "accepted",
            json!({"site": "north", "serial": "1"}),
        ),
        (
            "Leaving",
            "DO_NOTHING",
            "accepted",
            json!({"site": "north", "serial": "1"}),
        ),
        ("Replacing", "REPLACE", "accepted", json!({"serial": "3"})),
        ("Failing", "FAIL", "rejected", json!({"serial": "3"})),
    ] {
        let template = json!({
            "Parameters": {"SerialNumber": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing",
                          "Properties": {"ThingName": "shared",
                                         "AttributePayload": {"serial": {"Ref": "SerialNumber"}}},
                          "OverrideSettings": {"AttributePayload": setting}},
                "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}
            }
        });
        enabled_template(&aws, name, &template.to_string()).await;
        let topic = format!("$aws/provisioning-templates/{name}/provision/json");
        hear(&mut c, &topic).await;
        let token_now = token(&mut c).await;
        let serial = match setting {
            "MERGE" => "1",
            "DO_NOTHING" => "2",
            _ => "3",
        };
        let (answer, body) = ask(
            &mut c,
            &topic,
            json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": serial}}),
        )
        .await;
        assert_eq!(answer, format!("{topic}/{outcome}"), "{setting}: {body}");
        if outcome == "rejected" {
            assert_eq!(
                (&body["statusCode"], &body["errorCode"]),
                (&json!(409), &json!("ResourceConflict")),
                "{body}"
            );
        }
        let (_, thing) = aws.get("/things/shared", "").await;
        assert_eq!(thing["attributes"], attributes, "{setting}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_of_config_toml_reload_with_it_whole_or_not_at_all() {
    let mut t = gateway().await;
    let second = "$aws/provisioning-templates/Second/provision/json";
    let mut c = claim(&t, "claim-reload", &[CREATE, PROVISION, second]).await;
    std::fs::write(
        t.dir.path().join("templates/second.json"),
        FLEET_TEMPLATE.replace("lamp-", "second-"),
    )
    .expect("template");
    let auth = "[auth]\nprovisioning = { policies = [\"claim\"] }\n";
    t.extra_toml = format!(
        "{auth}[[provisioning.templates]]\nname = \"Fleet\"\nfile = \"templates/fleet.json\"\nenabled = false\n\
         [[provisioning.templates]]\nname = \"Second\"\nfile = \"templates/second.json\"\n"
    );
    t.config_file();
    // Applied once the watcher has seen the file: Second answers.
    let deadline = tokio::time::Instant::now() + WAIT;
    let registered = loop {
        let token_now = token(&mut c).await;
        let (topic, body) = ask(
            &mut c,
            second,
            json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": "1"}}),
        )
        .await;
        if topic.ends_with("/accepted") {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reloaded: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(registered["thingName"], "second-1");
    let token_now = token(&mut c).await;
    let (topic, disabled) = ask(
        &mut c,
        PROVISION,
        json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": "2"}}),
    )
    .await;
    assert_eq!(topic, format!("{PROVISION}/rejected"), "{disabled}");

    // A template file that cannot be read fails the reload: what runs stays.
    let failures = metric(&t.metrics().await, "edgegate_reload_failures_total");
    t.extra_toml = format!(
        "{auth}[[provisioning.templates]]\nname = \"Second\"\nfile = \"templates/missing.json\"\n"
    );
    t.config_file();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&t.metrics().await, "edgegate_reload_failures_total") <= failures {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broken edit not reported"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let token_now = token(&mut c).await;
    let (topic, body) = ask(
        &mut c,
        second,
        json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": "3"}}),
    )
    .await;
    assert_eq!(topic, format!("{second}/accepted"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_puts_its_thing_in_thing_groups() {
    let t = gateway_with(ADMIN).await;
    let aws = Aws::new(t.admin(), "admin", "secret-of-admin");
    assert_eq!(
        aws.post("/thing-groups/floor-1", "", json!({})).await.0,
        200
    );
    let template = |groups: Value| {
        json!({
            "Parameters": {"SerialNumber": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                    "ThingName": {"Fn::Join": ["", ["grouped-", {"Ref": "SerialNumber"}]]},
                    "ThingGroups": groups}},
                "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}
            }
        })
        .to_string()
    };
    let mut c = claim(&t, "claim-grouped", &[CREATE]).await;
    for (name, groups, serial, outcome) in [
        ("Grouped", json!(["floor-1"]), "1", "accepted"),
        (
            "Stray",
            json!(["floor-1", "no-such-group"]),
            "2",
            "rejected",
        ),
    ] {
        enabled_template(&aws, name, &template(groups)).await;
        let topic = format!("$aws/provisioning-templates/{name}/provision/json");
        hear(&mut c, &topic).await;
        let token_now = token(&mut c).await;
        let (answer, body) = ask(
            &mut c,
            &topic,
            json!({"certificateOwnershipToken": token_now, "parameters": {"SerialNumber": serial}}),
        )
        .await;
        assert_eq!(answer, format!("{topic}/{outcome}"), "{body}");
    }
    let (_, members) = aws.get("/thing-groups/floor-1/things", "").await;
    // The stray device joined floor-1 before its second group turned out
    // missing, and was taken out again with its thing.
    assert_eq!(members["things"], json!(["grouped-1"]));
    assert!(t.server().registry.thing("grouped-2").is_none());
}
