//! What a custom authorizer is asked and what its answer must be (spec
//! aws-iot-device-services.md §5.1, §5.3, §5.4). Pure.

use crate::policy::document::{self, Document};
use crate::sql::eval::base64_encode;
use crate::sql::template::percent_decode;
use serde_json::{Map, Value, json};

/// The header, query or username key naming the authorizer.
pub const NAME_KEY: &str = "x-amz-customauthorizer-name";
/// ... holding the token's signature.
pub const SIGNATURE_KEY: &str = "x-amz-customauthorizer-signature";

/// Keys the Device SDK appends to a username for its own metrics.
const SDK_KEYS: [&str; 3] = ["SDK", "Platform", "Metadata"];

/// Most policy documents an answer may hold, and their longest text.
const MAX_DOCUMENTS: usize = 10;
const MAX_DOCUMENT_CHARS: usize = 2048;

/// AWS's bounds of `disconnectAfterInSeconds` and `refreshAfterInSeconds`.
const SECONDS: std::ops::RangeInclusive<u64> = 300..=86_400;

/// What a client presented for a custom authorizer: the parameters of its
/// MQTT username's query, or of its upgrade's headers and query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presented {
    /// Every parameter, names as sent, values decoded.
    pub params: Vec<(String, String)>,
}

impl Presented {
    /// The parameters of an MQTT username (`user?k=v&...`); none without a
    /// query. The SDK's metrics keys are left out.
    pub fn from_username(username: &str) -> Self {
        let params = username
            .split_once('?')
            .map(|(_, query)| query_params(query))
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !SDK_KEYS.contains(&k.as_str()))
            .collect();
        Self { params }
    }

    /// The headers of an HTTP request, then its query's parameters.
    pub fn from_http(headers: &[(String, String)], query: &str) -> Self {
        let mut params = headers.to_vec();
        params.extend(query_params(query));
        Self { params }
    }

    /// A parameter's value (headers and the AWS keys compare without case).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The authorizer it names, if it names one.
    pub fn authorizer(&self) -> Option<&str> {
        self.get(NAME_KEY)
    }
}

fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// What the authorizer is told of the connection.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The server name of the TLS handshake.
    pub server_name: Option<String>,
    /// The upgrade's headers and query, for MQTT over WebSockets.
    pub http: Option<(Vec<(String, String)>, String)>,
    /// The CONNECT's username, password and client id.
    pub mqtt: Option<(Option<String>, Option<Vec<u8>>, String)>,
    /// The connection's id.
    pub id: String,
}

/// AWS's request document: only what the connection has.
pub fn document(c: &Connection, token: Option<&str>, signature_verified: bool) -> Value {
    let mut protocols = vec!["tls"];
    let mut data = Map::new();
    let mut tls = Map::new();
    if let Some(name) = &c.server_name {
        tls.insert("serverName".into(), name.as_str().into());
    }
    data.insert("tls".into(), Value::Object(tls));
    if let Some((headers, query)) = &c.http {
        protocols.push("http");
        let headers: Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let mut http = json!({ "headers": headers });
        if !query.is_empty() {
            http["queryString"] = format!("?{query}").into();
        }
        data.insert("http".into(), http);
    }
    if let Some((username, password, client_id)) = &c.mqtt {
        protocols.push("mqtt");
        let mut mqtt = json!({ "clientId": client_id });
        if let Some(u) = username {
            mqtt["username"] = u.as_str().into();
        }
        if let Some(p) = password {
            mqtt["password"] = base64_encode(p).into();
        }
        data.insert("mqtt".into(), mqtt);
    }
    let mut doc = json!({
        "signatureVerified": signature_verified,
        "protocols": protocols,
        "protocolData": data,
        "connectionMetadata": { "id": c.id },
    });
    if let Some(token) = token {
        doc["token"] = token.into();
    }
    doc
}

/// An answer that authenticates.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `principalId`.
    pub principal_id: String,
    /// `policyDocuments`, parsed.
    pub documents: Vec<Document>,
    /// ... as text.
    pub texts: Vec<String>,
    /// `disconnectAfterInSeconds`.
    pub disconnect_after: u64,
    /// `refreshAfterInSeconds`.
    pub refresh_after: u64,
}

/// Why an answer does not admit the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// `isAuthenticated` is not true.
    #[error("the authorizer did not authenticate the client")]
    NotAuthenticated,
    /// The answer is not what AWS's rules allow.
    #[error("the authorizer's answer is invalid: {0}")]
    Invalid(String),
}

/// Reads and checks an answer as AWS does.
pub fn answer(body: &[u8]) -> Result<Answer, AnswerError> {
    let invalid = |why: &str| AnswerError::Invalid(why.to_owned());
    let doc: Value = serde_json::from_slice(body).map_err(|_| invalid("not JSON"))?;
    if doc["isAuthenticated"] != Value::Bool(true) {
        return Err(AnswerError::NotAuthenticated);
    }
    let principal_id = doc["principalId"]
        .as_str()
        .filter(|p| (1..=128).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| invalid("principalId is 1 to 128 letters and digits"))?
        .to_owned();
    let seconds = |key: &str| {
        doc[key]
            .as_u64()
            .filter(|s| SECONDS.contains(s))
            .ok_or_else(|| AnswerError::Invalid(format!("{key} is 300 to 86400")))
    };
    let disconnect_after = seconds("disconnectAfterInSeconds")?;
    let refresh_after = seconds("refreshAfterInSeconds")?;
    // The Lambda returns objects; TestInvokeAuthorizer shows strings.
    let list = doc["policyDocuments"]
        .as_array()
        .filter(|l| l.len() <= MAX_DOCUMENTS)
        .ok_or_else(|| invalid("policyDocuments is a list of at most 10"))?;
    let texts: Vec<String> = list
        .iter()
        .map(|d| match d {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let documents = texts
        .iter()
        .map(|text| {
            if text.chars().count() > MAX_DOCUMENT_CHARS {
                return Err(invalid("a policy document is longer than 2048 characters"));
            }
            document::parse(text).map_err(|e| {
                let first = e.first().map(ToString::to_string).unwrap_or_default();
                AnswerError::Invalid(format!("a policy document is invalid: {first}"))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Answer {
        principal_id,
        documents,
        texts,
        disconnect_after,
        refresh_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdks_username_gives_its_parameters_without_its_metrics() {
        let p = Presented::from_username(
            "devuser?x-amz-customauthorizer-name=MyAuth&x-amz-customauthorizer-signature=abc%2B/def%3D%3D&tok=TOKENVALUE&SDK=IoTDeviceSDK/Python&Platform=Unix&Metadata=(CRTVersion=0.36.1)",
        );
        assert_eq!(p.authorizer(), Some("MyAuth"));
        assert_eq!(p.get(SIGNATURE_KEY), Some("abc+/def=="));
        assert_eq!(p.get("tok"), Some("TOKENVALUE"));
        assert_eq!(p.get("SDK"), None);
        assert_eq!(Presented::from_username("plain"), Presented::default());
    }

    #[test]
    fn the_request_holds_only_what_the_connection_has() {
        let doc = document(
            &Connection {
                server_name: Some("gw.example.com".into()),
                mqtt: Some((Some("u?x=1".into()), Some(b"secret".to_vec()), "c1".into())),
                id: "id-1".into(),
                ..Connection::default()
            },
            Some("t"),
            true,
        );
        assert_eq!(
            doc,
            json!({"token": "t", "signatureVerified": true, "protocols": ["tls", "mqtt"],
                   "protocolData": {"tls": {"serverName": "gw.example.com"},
                                    "mqtt": {"username": "u?x=1", "password": "c2VjcmV0", "clientId": "c1"}},
                   "connectionMetadata": {"id": "id-1"}})
        );
    }

    #[test]
    fn answers_are_checked_as_aws_checks_them() {
        let good = json!({"isAuthenticated": true, "principalId": "TEST123",
            "disconnectAfterInSeconds": 3600, "refreshAfterInSeconds": 300,
            "policyDocuments": [{"Version": "2012-10-17", "Statement": [{"Action": "iot:Connect",
                "Effect": "Allow", "Resource": "*"}]},
                "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Action\":\"iot:Publish\",\"Effect\":\"Allow\",\"Resource\":\"*\"}]}"]});
        let a = answer(good.to_string().as_bytes()).expect("good");
        assert_eq!((a.principal_id.as_str(), a.documents.len()), ("TEST123", 2));
        assert_eq!(
            answer(br#"{"isAuthenticated": false}"#),
            Err(AnswerError::NotAuthenticated)
        );
        for (key, bad) in [
            ("principalId", json!("not-alnum")),
            ("disconnectAfterInSeconds", json!(60)),
            ("refreshAfterInSeconds", json!(100_000)),
            ("policyDocuments", json!([{"Version": "2012-10-17"}])),
            ("policyDocuments", json!(vec![json!({}); 11])),
        ] {
            let mut doc = good.clone();
            doc[key] = bad;
            assert!(
                matches!(
                    answer(doc.to_string().as_bytes()),
                    Err(AnswerError::Invalid(_))
                ),
                "{key}"
            );
        }
        assert!(matches!(answer(b"garbage"), Err(AnswerError::Invalid(_))));
    }
}
