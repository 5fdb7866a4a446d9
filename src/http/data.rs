//! The `iot-data` API in AWS's REST-JSON shapes (spec/aws-iot-shadow-rules.md
//! §4): device shadows, Publish and retained messages. The admin listener
//! serves it to SigV4-signed operators, beside the control plane, and the
//! device HTTPS endpoint to devices, each request authorized by the caller's
//! policies with the actions of spec/aws-iot-auth.md §1.2.
//!
//! Paths are matched on their raw segments, each decoded after the split:
//! botocore escapes a topic's `/` as `%2F`, so decoding first would cut the
//! topic apart.

use super::aws::{AwsError, query_param};
use crate::codec::{PublishProperties, QoS};
use crate::policy::eval::{Action, ResourceType};
use crate::router::{Message, Origin, Router};
use crate::session::state::{Unpublishable, unpublishable};
use crate::shadow::ShadowId;
use crate::shadow::document::ShadowError;
use crate::shadow::service::{Call, Handle};
use crate::sql::eval::{base64_decode, base64_encode};
use crate::topic;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::time::Instant;

/// What the data plane works with.
#[derive(Debug, Clone)]
pub struct DataPlane {
    /// The shadow service.
    pub shadows: Handle,
    /// Where publishes go.
    pub router: Arc<Router>,
    /// Topic length and depth, as for MQTT publishes.
    pub topic_limits: topic::Limits,
    /// Largest payload, as for MQTT publishes.
    pub max_payload: usize,
}

impl From<ShadowError> for AwsError {
    fn from(e: ShadowError) -> Self {
        let status =
            StatusCode::from_u16(e.kind.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        AwsError::new(status, e.kind.exception(), e.message)
    }
}

/// Whether the caller may do an action on a resource; a denial is counted
/// and logged by whoever decides.
pub type Allows<'a> = &'a mut (dyn FnMut(Action, ResourceType, &str) -> bool + Send);

/// Who calls: the name the rules engine sees as `principal()`, and what
/// they may do.
pub struct Caller<'a> {
    /// The principal's name.
    pub principal: &'a str,
    /// Decides each action.
    pub allows: Allows<'a>,
}

/// AWS's answer to a request a policy or the registry denies.
pub fn forbidden() -> AwsError {
    AwsError::new(StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden")
}

/// Answers an `iot-data` request, or `None` if the path is not one of its
/// operations.
pub async fn handle(
    dp: &DataPlane,
    method: &Method,
    seg: &[&str],
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
    caller: Caller<'_>,
) -> Option<Result<Response, AwsError>> {
    if let (&Method::POST, ["topics", topic]) = (method, seg) {
        return Some(publish(dp, topic, query, headers, body, caller).await);
    }
    let allows = caller.allows;
    // A shadow's resource is its thing, or `thing/shadow` for a named one.
    let mut shadow = |thing: &str, action: Action| -> Result<ShadowId, AwsError> {
        let name = query_param(query, "name").unwrap_or_default();
        let id = ShadowId::new(thing, &name).ok_or_else(|| {
            AwsError::invalid_request(format!(
                "thing name `{thing}` or shadow name `{name}` is not valid"
            ))
        })?;
        let resource = if id.is_classic() {
            id.thing.clone()
        } else {
            format!("{}/{}", id.thing, id.name)
        };
        if allows(action, ResourceType::Thing, &resource) {
            Ok(id)
        } else {
            Err(forbidden())
        }
    };
    let call = match (method, seg) {
        (&Method::GET, ["things", thing, "shadow"]) => {
            shadow(thing, Action::GetThingShadow).map(Call::Get)
        }
        (&Method::POST, ["things", thing, "shadow"]) => {
            shadow(thing, Action::UpdateThingShadow).map(|id| Call::Update(id, body.clone()))
        }
        (&Method::DELETE, ["things", thing, "shadow"]) => {
            shadow(thing, Action::DeleteThingShadow).map(Call::Delete)
        }
        (&Method::GET, ["api", "things", "shadow", "ListNamedShadowsForThing", thing]) => {
            if ShadowId::new(thing, "").is_none() {
                return Some(Err(AwsError::invalid_request(format!(
                    "thing name `{thing}` is not valid"
                ))));
            }
            if !allows(Action::ListNamedShadowsForThing, ResourceType::Thing, thing) {
                return Some(Err(forbidden()));
            }
            let page_size = match query_param(query, "pageSize").map(|s| s.parse::<usize>()) {
                None => Ok(None),
                Some(Ok(n)) => Ok(Some(n)),
                Some(Err(_)) => Err(AwsError::invalid_request("pageSize must be a number")),
            };
            page_size.map(|page_size| Call::List {
                thing: (*thing).to_owned(),
                page_size,
                next_token: query_param(query, "nextToken"),
            })
        }
        // AWS names no resource for listing: a policy allows it on `*`.
        (&Method::GET, ["retainedMessage"]) => {
            return Some(
                if allows(Action::ListRetainedMessages, ResourceType::Topic, "*") {
                    list_retained(dp, query)
                } else {
                    Err(forbidden())
                },
            );
        }
        (&Method::GET, ["retainedMessage", topic]) => {
            return Some(
                if allows(Action::GetRetainedMessage, ResourceType::Topic, topic) {
                    get_retained(dp, topic)
                } else {
                    Err(forbidden())
                },
            );
        }
        _ => return None,
    };
    Some(match call {
        Ok(call) => dp
            .shadows
            .call(call)
            .await
            .map(json_response)
            .map_err(AwsError::from),
        Err(e) => Err(e),
    })
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Publish: the message goes to subscribers, rules and the shadow service
/// like an MQTT publish; at QoS 1 the answer waits until it is durable.
async fn publish(
    dp: &DataPlane,
    topic: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
    caller: Caller<'_>,
) -> Result<Response, AwsError> {
    let Caller { principal, allows } = caller;
    let qos = match query_param(query, "qos").as_deref() {
        None | Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some(other) => {
            return Err(AwsError::invalid_request(format!(
                "qos `{other}` is not 0 or 1"
            )));
        }
    };
    let retain = match query_param(query, "retain").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(AwsError::invalid_request(format!(
                "retain `{other}` is not true or false"
            )));
        }
    };
    topic::validate_name(topic)
        .map_err(|e| AwsError::invalid_request(format!("topic `{topic}`: {e}")))?;
    // The same topics are refused as to an MQTT client.
    match unpublishable(topic, retain, dp.topic_limits) {
        None => {}
        Some(Unpublishable::Topic(e)) => {
            return Err(AwsError::invalid_request(format!("topic `{topic}`: {e}")));
        }
        Some(Unpublishable::GatewayOnly) => {
            return Err(AwsError::new(
                StatusCode::FORBIDDEN,
                "ForbiddenException",
                format!("`{topic}` is published by the gateway only"),
            ));
        }
        Some(Unpublishable::RetainedReserved) => {
            return Err(AwsError::invalid_request(
                "messages on reserved topics cannot be retained",
            ));
        }
    }
    if !allows(Action::Publish, ResourceType::Topic, topic)
        || (retain && !allows(Action::RetainPublish, ResourceType::Topic, topic))
    {
        return Err(forbidden());
    }
    if body.len() > dp.max_payload {
        return Err(AwsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!("the payload exceeds {} bytes", dp.max_payload),
        ));
    }
    let properties = properties(query, headers)?;
    let origin = Arc::new(Origin {
        principal: Some(principal.into()),
        ..Origin::default()
    });
    let now = Instant::now();
    let msg = Arc::new(Message::new(
        topic.into(),
        body,
        qos,
        retain,
        properties,
        now,
        origin,
    ));
    let routed = dp.router.publish(&msg, now).map_err(unavailable)?;
    if let Some(commit) = routed.commit {
        commit
            .await
            .map_err(|_| unavailable(crate::store::StoreError::Closed))?
            .map_err(|e| unavailable(&*e))?;
    }
    Ok(super::aws::ok(json!({"message": "OK"})))
}

/// ListRetainedMessages: topics in order, without payloads; `nextToken` is
/// the last topic of the page.
fn list_retained(dp: &DataPlane, query: &str) -> Result<Response, AwsError> {
    let max = match query_param(query, "maxResults") {
        None => 50,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| AwsError::invalid_request("maxResults must be between 1 and 200"))?,
    };
    let after = query_param(query, "nextToken");
    let now = Instant::now();
    let mut kept = dp
        .router
        .retained_messages()
        .into_iter()
        .filter(|k| after.as_deref().is_none_or(|a| k.msg.topic.as_str() > a))
        .filter(|k| k.msg.remaining(now).is_some());
    let page: Vec<Value> = kept
        .by_ref()
        .take(max)
        .map(|k| {
            json!({
                "topic": k.msg.topic.as_str(),
                "payloadSize": k.msg.payload.len(),
                "qos": k.msg.qos as u8,
                "lastModifiedTime": k.modified_ms,
            })
        })
        .collect();
    let mut body = json!({ "retainedTopics": page });
    if kept.next().is_some()
        && let Some(last) = page.last()
    {
        body["nextToken"] = last["topic"].clone();
    }
    Ok(super::aws::ok(body))
}

/// GetRetainedMessage: the payload and user properties travel as base64.
fn get_retained(dp: &DataPlane, topic: &str) -> Result<Response, AwsError> {
    let k = dp
        .router
        .retained_message(topic)
        .filter(|k| k.msg.remaining(Instant::now()).is_some())
        .ok_or_else(|| AwsError::not_found(format!("No retained message on topic {topic}")))?;
    let mut body = json!({
        "topic": topic,
        "payload": base64_encode(&k.msg.payload),
        "qos": k.msg.qos as u8,
        "lastModifiedTime": k.modified_ms,
    });
    let props = &k.msg.properties.user_properties;
    if !props.is_empty() {
        let list: Vec<Value> = props.iter().map(|(key, v)| json!({ key: v })).collect();
        body["userProperties"] = base64_encode(Value::Array(list).to_string().as_bytes()).into();
    }
    Ok(super::aws::ok(body))
}

fn unavailable(e: impl std::fmt::Display) -> AwsError {
    AwsError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailableException",
        format!("the message was not accepted: {e}"),
    )
}

/// The MQTT 5 properties of a Publish, from its query and headers (spec §4.2).
fn properties(query: &str, headers: &HeaderMap) -> Result<PublishProperties, AwsError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut p = PublishProperties {
        content_type: query_param(query, "contentType"),
        response_topic: query_param(query, "responseTopic"),
        ..PublishProperties::default()
    };
    if let Some(t) = &p.response_topic {
        topic::validate_name(t)
            .map_err(|e| AwsError::invalid_request(format!("responseTopic `{t}`: {e}")))?;
    }
    if let Some(s) = query_param(query, "messageExpiry") {
        let secs: u64 = s
            .parse()
            .map_err(|_| AwsError::invalid_request("messageExpiry must be a number of seconds"))?;
        p.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    p.payload_format_indicator = match header("x-amz-mqtt5-payload-format-indicator") {
        None => None,
        Some("UNSPECIFIED_BYTES") => Some(0),
        Some("UTF8_DATA") => Some(1),
        Some(other) => {
            return Err(AwsError::invalid_request(format!(
                "payloadFormatIndicator `{other}` is not UNSPECIFIED_BYTES or UTF8_DATA"
            )));
        }
    };
    if let Some(c) = header("x-amz-mqtt5-correlation-data") {
        let data = base64_decode(c)
            .ok_or_else(|| AwsError::invalid_request("correlationData is not base64"))?;
        p.correlation_data = Some(data.into());
    }
    if let Some(u) = header("x-amz-mqtt5-user-properties") {
        p.user_properties = user_properties(u).ok_or_else(|| {
            AwsError::invalid_request(
                "userProperties must be a JSON array of objects of string values",
            )
        })?;
    }
    Ok(p)
}

/// Reads `x-amz-mqtt5-user-properties`: base64 of a JSON array of
/// one-key objects, which botocore encodes once more as a JSON string when
/// given a string (as AWS's documentation shows), so a string is read twice.
fn user_properties(header: &str) -> Option<Vec<(String, String)>> {
    let json = base64_decode(header)?;
    let mut value: Value = serde_json::from_slice(&json).ok()?;
    if let Value::String(s) = &value {
        value = serde_json::from_str(s).ok()?;
    }
    let mut out = Vec::new();
    for item in value.as_array()? {
        for (k, v) in item.as_object()? {
            out.push((k.clone(), v.as_str()?.to_owned()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_are_read_as_botocore_sends_them() {
        // What botocore sends for the string AWS's documentation shows.
        let wire = "Ilt7XCJkZXZpY2VOYW1lXCI6IFwiYWxwaGFcIn0sIHtcImRldmljZUNudFwiOiBcIjQ1XCJ9XSI=";
        assert_eq!(
            user_properties(wire),
            Some(vec![
                ("deviceName".into(), "alpha".into()),
                ("deviceCnt".into(), "45".into())
            ])
        );
        // And for a list, encoded once; keys may repeat.
        let once = base64_encode(br#"[{"k":"1"},{"k":"2"}]"#);
        assert_eq!(
            user_properties(&once),
            Some(vec![("k".into(), "1".into()), ("k".into(), "2".into())])
        );
        assert_eq!(user_properties(&base64_encode(br#"[{"k":1}]"#)), None);
        assert_eq!(user_properties("not base64!"), None);
    }
}
