//! Per-session protocol state that outlives a connection: packet
//! identifiers and the outbound inflight window; and which topics a client
//! may publish on, over MQTT or HTTPS. Pure.
//!
//! - [`connect`]: what a CONNECT negotiates (or why it is refused).
//! - [`aliases`]: MQTT 5 topic aliases, both ways.

pub mod aliases;
pub mod connect;

use crate::router::Delivery;
use crate::topic::{self, TopicError};
use std::collections::VecDeque;

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
    } else if crate::shadow::is_gateway_only(topic) {
        Some(Unpublishable::GatewayOnly)
    } else if retain && topic::is_reserved(topic) {
        Some(Unpublishable::RetainedReserved)
    } else {
        None
    }
}

/// An outbound QoS 1/2 message not yet fully acknowledged.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Packet identifier it was sent with.
    pub pkid: u16,
    /// What was sent.
    pub delivery: Delivery,
    /// PUBREC arrived; waiting for PUBCOMP (QoS 2).
    pub released: bool,
}

/// Outbound messages awaiting acknowledgement, in the order they were sent.
///
/// The window is small (the client's Receive Maximum, at most
/// `limits.max_inflight`), so a deque with linear search beats a map.
#[derive(Debug, Default)]
pub struct Inflight {
    entries: VecDeque<Pending>,
    last_id: u16,
}

/// What an acknowledgement did to the window.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// The message is complete; its store sequence (0 if not durable).
    Done(u64),
    /// PUBREC: answer with PUBREL.
    Released,
    /// No such packet identifier is in flight.
    Unknown,
}

impl Inflight {
    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a message about to be sent under a fresh packet identifier;
    /// gives it back if all 65,535 identifiers are in use.
    pub fn send(&mut self, delivery: Delivery) -> Result<&Pending, Delivery> {
        let Some(pkid) = self.next_id() else {
            return Err(delivery);
        };
        self.entries.push_back(Pending {
            pkid,
            delivery,
            released: false,
        });
        self.entries
            .back()
            .ok_or_else(|| unreachable!("just pushed"))
    }

    fn next_id(&mut self) -> Option<u16> {
        if self.entries.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            self.last_id = self.last_id.wrapping_add(1).max(1);
            if !self.entries.iter().any(|p| p.pkid == self.last_id) {
                return Some(self.last_id);
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2).
    pub fn complete(&mut self, pkid: u16) -> Acked {
        match self.entries.iter().position(|p| p.pkid == pkid) {
            Some(i) => {
                let seq = self.entries.remove(i).map_or(0, |p| p.delivery.seq);
                Acked::Done(seq)
            }
            None => Acked::Unknown,
        }
    }

    /// PUBREC (QoS 2).
    pub fn release(&mut self, pkid: u16) -> Acked {
        match self.entries.iter_mut().find(|p| p.pkid == pkid) {
            Some(p) => {
                p.released = true;
                Acked::Released
            }
            None => Acked::Unknown,
        }
    }

    /// The message in flight under `pkid`.
    pub fn get(&self, pkid: u16) -> Option<&Pending> {
        self.entries.iter().find(|p| p.pkid == pkid)
    }

    /// Everything in flight, oldest first, for resending after a reconnect.
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{PublishProperties, QoS};
    use crate::router::Message;
    use std::sync::Arc;

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: bytes::Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: PublishProperties::default(),
                expires_at: None,
                origin: crate::router::Origin::gateway(),
            }),
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: vec![],
            seq,
        }
    }

    #[test]
    fn ids_are_unique_nonzero_and_wrap() {
        let mut f = Inflight {
            last_id: u16::MAX - 1,
            ..Default::default()
        };
        let a = f.send(delivery(1)).expect("room").pkid;
        let b = f.send(delivery(2)).expect("room").pkid;
        assert_eq!((a, b), (u16::MAX, 1), "0 is skipped [MQTT-2.2.1-3]");
        assert_eq!(f.release(1), Acked::Released);
        assert_eq!(f.complete(1), Acked::Done(2));
        assert_eq!(f.complete(1), Acked::Unknown);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn ids_in_use_are_skipped() {
        let mut f = Inflight::default();
        let first = f.send(delivery(0)).expect("room").pkid;
        f.last_id = 0;
        assert_ne!(f.send(delivery(0)).expect("room").pkid, first);
    }
}
