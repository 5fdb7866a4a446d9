//! The pre-provisioning hook: before RegisterThing provisions a device, the
//! template's endpoint is sent AWS's request document and must answer
//! `allowProvisioning: true` within AWS's 5 seconds. Anything else (a
//! refusal, an error status, garbage, silence) refuses the device: the hook
//! fails closed.

use super::catalog::Hook;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the endpoint has to answer, as AWS gives its Lambda function.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Longest answer read: AWS's is a flag and a few parameters.
const MAX_ANSWER: usize = 64 * 1024;

/// What the hook is told of one RegisterThing.
#[derive(Debug, Clone)]
pub struct Asked<'a> {
    /// The certificate the device connected with.
    pub claim_certificate_id: &'a str,
    /// The certificate being provisioned.
    pub certificate_id: &'a str,
    /// ... in PEM.
    pub certificate_pem: &'a str,
    /// `arn:...:provisioningtemplate/<name>`.
    pub template_arn: &'a str,
    /// The device's MQTT client id.
    pub client_id: &'a str,
    /// The request's parameters.
    pub parameters: &'a BTreeMap<String, String>,
}

/// AWS's request document.
pub fn request(a: &Asked<'_>) -> Value {
    json!({
        "claimCertificateId": a.claim_certificate_id,
        "certificateId": a.certificate_id,
        "certificatePem": a.certificate_pem,
        "templateArn": a.template_arn,
        "clientId": a.client_id,
        "parameters": a.parameters,
    })
}

/// Reads the endpoint's answer: the parameters it overrides when it allows
/// provisioning, or why not.
pub fn answer(body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| "the hook's answer is not JSON".to_owned())?;
    if doc["allowProvisioning"] != Value::Bool(true) {
        return Err("the pre-provisioning hook did not allow provisioning".into());
    }
    match &doc["parameterOverrides"] {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("the hook's parameterOverrides.{k} is not a string")),
            })
            .collect(),
        _ => Err("the hook's parameterOverrides is not an object".into()),
    }
}

/// Asks `hook` about one device.
pub async fn ask(
    client: &reqwest::Client,
    hook: &Hook,
    asked: &Asked<'_>,
) -> Result<BTreeMap<String, String>, String> {
    let body = crate::rules::actions::http::call_json(
        client,
        &hook.target,
        request(asked).to_string(),
        (MAX_ANSWER, DEADLINE),
        "pre-provisioning hook",
    )
    .await?;
    answer(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_allow_provisions() {
        assert_eq!(
            answer(br#"{"allowProvisioning": true}"#),
            Ok(BTreeMap::new())
        );
        assert_eq!(
            answer(br#"{"allowProvisioning": true, "parameterOverrides": {"Site": "b"}}"#),
            Ok(BTreeMap::from([("Site".into(), "b".into())]))
        );
        for refused in [
            &br#"{"allowProvisioning": false}"#[..],
            br#"{"allowProvisioning": "true"}"#,
            br#"{}"#,
            b"yes",
            br#"{"allowProvisioning": true, "parameterOverrides": {"n": 1}}"#,
            br#"{"allowProvisioning": true, "parameterOverrides": []}"#,
        ] {
            assert!(
                answer(refused).is_err(),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn the_request_is_awss_document() {
        let parameters = BTreeMap::from([("SerialNumber".to_owned(), "7".to_owned())]);
        let doc = request(&Asked {
            claim_certificate_id: "claim",
            certificate_id: "new",
            certificate_pem: "PEM",
            template_arn: "arn:aws:iot:us-east-1:1:provisioningtemplate/Fleet",
            client_id: "lamp-7",
            parameters: &parameters,
        });
        assert_eq!(
            doc,
            json!({"claimCertificateId": "claim", "certificateId": "new",
                   "certificatePem": "PEM",
                   "templateArn": "arn:aws:iot:us-east-1:1:provisioningtemplate/Fleet",
                   "clientId": "lamp-7", "parameters": {"SerialNumber": "7"}})
        );
    }
}
