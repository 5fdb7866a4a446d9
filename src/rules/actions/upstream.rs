//! `upstream`: the rule output sent through the `[upstream]` bridge. The
//! action only appends to the bridge's spool (a router message record); the
//! bridge delivers it. Anything the upstream would refuse for good (AWS
//! IoT's payload, topic length and depth limits) fails here, at once, so
//! that it goes to the error action instead of blocking the link.

use super::Context;
use crate::codec::{PublishProperties, QoS};
use crate::config::{Upstream as UpstreamConfig, UpstreamAction};
use crate::router::{Message, Origin};
use crate::sql::Template;
use crate::topic;
use tokio::time::Instant;

/// A compiled upstream action.
#[derive(Debug)]
pub struct Upstream {
    topic: Template,
    qos: QoS,
    limits: topic::Limits,
    max_payload: usize,
}

impl Upstream {
    /// Checks and compiles the configuration; `bridge` is `[upstream]`.
    pub fn compile(a: &UpstreamAction, bridge: Option<&UpstreamConfig>) -> Result<Self, String> {
        let bridge = bridge.ok_or("there is no [upstream] section to send through")?;
        let qos = match a.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            n => return Err(format!("qos {n}: upstream takes 0 or 1")),
        };
        let topic = Template::parse(&a.topic)
            .map_err(|e| format!("topic: position {}: {}", e.at, e.message))?;
        let limits = bridge.topics();
        if let Some(t) = topic.literal() {
            topic::validate_name(&t)
                .and_then(|()| limits.check(&t))
                .map_err(|e| format!("topic `{t}`: {e}"))?;
        }
        Ok(Self {
            topic,
            qos,
            limits,
            max_payload: bridge.max_payload_bytes,
        })
    }

    /// Whether the topic template reads the payload (else the payload of a
    /// forwarded message need not be parsed).
    pub fn reads_payload(&self) -> bool {
        self.topic.reads_payload()
    }

    /// The topic, for error documents of failed renders.
    pub fn resource(&self, cx: &Context<'_>) -> String {
        self.topic.render(cx.msg, cx.vars)
    }

    /// The spool record: the message as the bridge will publish it.
    pub fn render(&self, cx: &Context<'_>, payload: &[u8]) -> Result<Vec<u8>, String> {
        let topic = super::publish_topic(
            &self.topic,
            cx,
            self.limits,
            payload.len(),
            (self.max_payload, "upstream.max_payload_bytes"),
        )?;
        let properties = match cx.properties {
            Some(p) => PublishProperties {
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                ..p.clone()
            },
            _ => PublishProperties::default(),
        };
        let now = Instant::now();
        let msg = Message::new(
            topic.into(),
            payload.to_vec().into(),
            self.qos,
            false,
            properties,
            now,
            Origin::gateway(),
        );
        Ok(msg.to_record(now))
    }
}
