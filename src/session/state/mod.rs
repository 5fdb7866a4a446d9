//! The MQTT session protocol, pure: no IO, no `.await`, time passed in.
//! The connection task feeds it decoded packets, the time and what the
//! router and the policies said, and carries out what it returns: packets
//! to send, messages to route, subscriptions to change, or how the
//! connection ends.
//!
//! - [`connect`]: what a CONNECT negotiates (or why it is refused).
//! - [`keep_alive`]: when a silent client is gone.
//! - [`aliases`]: MQTT 5 topic aliases, both ways.
//! - [`inbound`]: publishes from the client: admission, QoS 2 exactly once,
//!   the gateway's Receive Maximum, acknowledgements.
//! - [`outbound`]: publishes to the client: packet identifiers, the
//!   client's Receive Maximum and Maximum Packet Size, its acknowledgements.
//! - [`subscribe`]: SUBSCRIBE and UNSUBSCRIBE, subscription options.
//! - [`rate`]: publishes, bytes and subscriptions per second.
//! - [`will`]: whether and when the will is published.
//! - [`takeover`]: whether a connection resumes the session it finds.
//! - [`end`]: how a connection ends, and its reason code.
//!
//! Also which topics a client may publish on, over MQTT or HTTPS.

pub mod aliases;
pub mod connect;
pub mod end;
pub mod inbound;
pub mod keep_alive;
pub mod outbound;
pub mod rate;
pub mod subscribe;
pub mod takeover;
pub mod will;

use crate::codec::Protocol;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::topic::{self, TopicError};

/// What a connection's packets are judged under.
#[derive(Debug, Clone, Copy)]
pub struct Judge<'a> {
    /// The connection's protocol.
    pub protocol: Protocol,
    /// Limits and what the gateway announced in CONNACK.
    pub config: &'a Config,
    /// Where refusals are counted.
    pub metrics: &'a Metrics,
}

/// Why a client's publish may not be routed, before any policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpublishable {
    /// The topic is longer or deeper than the limits allow.
    Topic(TopicError),
    /// Only the gateway publishes there: lifecycle events, shadow responses.
    GatewayOnly,
    /// A message on a reserved (`$`) topic cannot be retained.
    RetainedReserved,
}

/// Checks a client's publish on `topic`, in the order the refusals are given.
pub fn unpublishable(topic: &str, retain: bool, limits: topic::Limits) -> Option<Unpublishable> {
    if let Err(e) = limits.check(topic) {
        Some(Unpublishable::Topic(e))
    } else if crate::shadow::is_gateway_only(topic)
        || crate::provisioning::is_response_topic(topic)
        || crate::jobs::is_response_topic(topic)
    {
        Some(Unpublishable::GatewayOnly)
    } else if retain && topic::is_reserved(topic) {
        Some(Unpublishable::RetainedReserved)
    } else {
        None
    }
}
