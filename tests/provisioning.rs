//! Fleet provisioning by claim, as a device runs it over MQTT: a claim
//! certificate asks for its own certificate, then for its thing under a
//! template, then connects with what it got.

mod common;

use common::*;
use edgegate::transport::pki::Pem;
use rumqttc::QoS;
use serde_json::{Value, json};

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
    let mut t = TestServer::prepare(
        "[auth]\nprovisioning = { policies = [\"claim\"] }\n\
         [[provisioning.templates]]\nname = \"Fleet\"\nfile = \"templates/fleet.json\"\n",
    );
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

/// A claim device subscribed to the answers of `requests`.
async fn claim(t: &TestServer, id: &str, requests: &[&str]) -> V4 {
    let mut c = t.v4(id, true).await;
    for r in requests {
        for answer in ["accepted", "rejected"] {
            let codes = c
                .subscribe(&format!("{r}/{answer}"), QoS::AtLeastOnce)
                .await;
            assert!(
                matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
                "{r}: {codes:?}"
            );
        }
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
