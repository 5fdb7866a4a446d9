//! `republish`: the rule output published to a topic of this gateway
//! (spec §3.2), as the gateway itself: no policy applies to the publish,
//! `iot:Receive` still applies to every subscriber.

use super::Context;
use crate::codec::{PublishProperties, QoS};
use crate::config::{MqttHeaders, RepublishAction};
use crate::router::{Message, Origin, Router};
use crate::sql::Template;
use crate::sql::eval::{base64_decode, base64_encode};
use crate::topic;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::time::Instant;

/// AWS's limit on user properties.
const MAX_USER_PROPERTIES: usize = 100;

/// A compiled republish action.
#[derive(Debug)]
pub struct Republish {
    topic: Template,
    qos: QoS,
    retain: bool,
    content_type: Option<Template>,
    payload_format: Option<Template>,
    response_topic: Option<Template>,
    correlation_data: Option<Template>,
    message_expiry: Option<Template>,
    user_properties: Vec<(String, Template)>,
}

/// One message to republish, as spooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Topic after substitution.
    pub topic: String,
    qos: u8,
    retain: bool,
    /// Payload, base64.
    payload: String,
    /// Republishes that led here, counting this one.
    hops: u8,
    /// Whether the message this came from arrived from upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    bridged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_format: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_expiry: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
}

fn template(field: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| format!("{field}: position {}: {}", e.at, e.message))
}

fn optional(field: &str, text: Option<&String>) -> Result<Option<Template>, String> {
    text.map(|t| template(field, t)).transpose()
}

impl Republish {
    /// Checks and compiles the configuration.
    pub fn compile(a: &RepublishAction) -> Result<Self, String> {
        let qos = match a.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            n => return Err(format!("qos {n}: republish takes 0 or 1")),
        };
        let topic = template("topic", &a.topic)?;
        if let Some(t) = topic.literal() {
            topic::validate_name(&t).map_err(|e| format!("topic `{t}`: {e}"))?;
        }
        let MqttHeaders {
            content_type,
            payload_format_indicator,
            response_topic,
            correlation_data,
            message_expiry,
            user_properties,
        } = &a.headers;
        if user_properties.len() > MAX_USER_PROPERTIES {
            return Err(format!(
                "headers: more than {MAX_USER_PROPERTIES} user properties"
            ));
        }
        let r = Self {
            topic,
            qos,
            retain: a.retain,
            content_type: optional("headers.content_type", content_type.as_ref())?,
            payload_format: optional(
                "headers.payload_format_indicator",
                payload_format_indicator.as_ref(),
            )?,
            response_topic: optional("headers.response_topic", response_topic.as_ref())?,
            correlation_data: optional("headers.correlation_data", correlation_data.as_ref())?,
            message_expiry: optional("headers.message_expiry", message_expiry.as_ref())?,
            user_properties: user_properties
                .iter()
                .map(|kv| {
                    Ok((
                        kv.key.clone(),
                        template("headers.user_properties", &kv.value)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        };
        if let Some(t) = r.payload_format.as_ref().and_then(Template::literal) {
            payload_format(&t)?;
        }
        Ok(r)
    }

    /// The topic as configured, for error documents of failed renders.
    pub fn resource(&self, cx: &Context<'_>) -> String {
        self.topic.render(cx.msg, cx.vars)
    }

    /// Substitutes the templates for one message.
    pub fn render(&self, cx: &Context<'_>, payload: &[u8]) -> Result<Request, String> {
        let render = |t: &Template| t.render(cx.msg, cx.vars);
        let topic = super::publish_topic(
            &self.topic,
            cx,
            cx.topic_limits,
            payload.len(),
            (cx.max_payload, "limits.max_payload_bytes"),
        )?;
        let correlation_data = match self.correlation_data.as_ref().map(render) {
            Some(b64) if base64_decode(&b64).is_none() => {
                return Err("headers.correlation_data is not base64".into());
            }
            other => other,
        };
        let message_expiry =
            match self.message_expiry.as_ref().map(render) {
                Some(s) => Some(s.trim().parse::<u32>().map_err(|_| {
                    format!("headers.message_expiry `{s}` is not a number of seconds")
                })?),
                None => None,
            };
        Ok(Request {
            topic,
            qos: self.qos as u8,
            retain: self.retain,
            payload: base64_encode(payload),
            hops: cx.hops.saturating_add(1),
            bridged: cx.bridged,
            content_type: self.content_type.as_ref().map(render),
            payload_format: self
                .payload_format
                .as_ref()
                .map(|t| payload_format(&render(t)))
                .transpose()?,
            response_topic: self.response_topic.as_ref().map(render),
            correlation_data,
            message_expiry,
            user_properties: self
                .user_properties
                .iter()
                .map(|(k, v)| (k.clone(), render(v)))
                .collect(),
        })
    }
}

fn payload_format(text: &str) -> Result<u8, String> {
    match text {
        "UTF8_DATA" => Ok(1),
        "UNSPECIFIED_BYTES" => Ok(0),
        other => Err(format!(
            "headers.payload_format_indicator `{other}`: UTF8_DATA or UNSPECIFIED_BYTES"
        )),
    }
}

/// Publishes through the router and waits until the publish is durable.
/// A store that cannot take it now is worth a retry; a record that does not
/// decode never will be.
pub async fn deliver(router: &Router, r: &Request) -> super::Outcome {
    use super::Outcome;
    let Some(payload) = base64_decode(&r.payload) else {
        return Outcome::Failed("spooled payload is not base64".into());
    };
    let properties = PublishProperties {
        payload_format_indicator: r.payload_format,
        message_expiry_interval: r.message_expiry,
        content_type: r.content_type.clone(),
        response_topic: r.response_topic.clone(),
        correlation_data: r
            .correlation_data
            .as_deref()
            .and_then(base64_decode)
            .map(Into::into),
        user_properties: r.user_properties.clone(),
        ..PublishProperties::default()
    };
    let now = Instant::now();
    let msg = Arc::new(Message::new(
        r.topic.as_str().into(),
        payload.into(),
        QoS::from_u8(r.qos).unwrap_or(QoS::AtLeastOnce),
        r.retain,
        properties,
        now,
        Arc::new(Origin {
            hops: r.hops,
            bridged: r.bridged,
            ..Origin::default()
        }),
    ));
    match router.publish(&msg, now) {
        Err(e) => Outcome::Retry(e.to_string()),
        Ok(routed) => match routed.commit {
            None => Outcome::Delivered,
            Some(c) => match c.await {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err(e)) => Outcome::Retry(e.to_string()),
                Err(_) => Outcome::Retry("the store stopped".into()),
            },
        },
    }
}
