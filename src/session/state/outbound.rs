//! Messages to the client at QoS 1 and 2: packet identifiers, the window
//! the client's Receive Maximum allows, the acknowledgements that move it,
//! and whether a delivery may go out at all. Pure; time is passed in.

use crate::codec::{self, Ack, Packet, Protocol, PublishView, QoS, reason};
use crate::metrics::DropReason;
use crate::router::Delivery;
use std::collections::VecDeque;
use tokio::time::Instant;

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

/// Which acknowledgement a client sent for a message of the gateway's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAck {
    /// PUBACK (QoS 1).
    PubAck,
    /// PUBREC (QoS 2, first half).
    PubRec,
    /// PUBCOMP (QoS 2, second half).
    PubComp,
}

impl Inflight {
    /// The client acknowledged `a`: what that did to the window, and the
    /// PUBREL that answers a PUBREC. A PUBREC with a failure code ends the
    /// exchange (MQTT 5 §4.3.3); one for an unknown identifier is answered
    /// with 0x92 Packet Identifier not found (§3.6.2.1).
    pub fn acknowledged(&mut self, kind: ClientAck, a: &Ack) -> (Acked, Option<Packet>) {
        match kind {
            ClientAck::PubRec if a.code < 0x80 => match self.release(a.pkid) {
                Acked::Released => (Acked::Released, Some(Packet::PubRel(Ack::ok(a.pkid)))),
                acked => (
                    acked,
                    Some(Packet::PubRel(Ack::with_code(
                        a.pkid,
                        reason::PACKET_IDENTIFIER_NOT_FOUND,
                    ))),
                ),
            },
            ClientAck::PubAck | ClientAck::PubRec | ClientAck::PubComp => {
                (self.complete(a.pkid), None)
            }
        }
    }

    /// How many new messages may be sent under `window`, the client's
    /// Receive Maximum [MQTT-3.3.4-9].
    pub fn room(&self, window: usize) -> usize {
        window.saturating_sub(self.len())
    }

    /// Whether a message from an earlier connection may be sent again,
    /// `resending` of those in flight not being sent again yet: they wait
    /// for room under `window` like any other message [MQTT-3.3.4-9].
    pub fn has_room(&self, window: usize, resending: usize) -> bool {
        self.len().saturating_sub(resending) < window
    }
}

/// Whether `d` may go out at `now` to a client that takes packets of at
/// most `client_max_packet` bytes: the Message Expiry Interval it carries
/// [MQTT-3.3.2-6], or why it is dropped: expired [MQTT-3.3.2-5], or too big
/// for the client, discarded as if sent [MQTT-3.1.2-25].
pub fn deliverable(
    d: &Delivery,
    now: Instant,
    protocol: Protocol,
    client_max_packet: usize,
) -> Result<Option<u32>, DropReason> {
    let remaining = d.msg.remaining(now).ok_or(DropReason::Expired)?;
    if codec::publish_len(&view(d, 0, false, remaining), protocol) > client_max_packet {
        return Err(DropReason::TooLargeForClient);
    }
    Ok(remaining)
}

/// The PUBLISH for `d` under `pkid`; `remaining` is its Message Expiry
/// Interval. DUP is set only on a resent QoS 1/2 message [MQTT-3.3.1-2].
pub fn view(d: &Delivery, pkid: u16, dup: bool, remaining: Option<u32>) -> PublishView<'_> {
    PublishView {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.as_bytes(),
        pkid,
        properties: &d.msg.properties,
        message_expiry_interval: remaining,
        topic_alias: None,
        subscription_identifiers: &d.sub_ids,
        payload: &d.msg.payload,
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

    #[test]
    fn acknowledgements_from_the_client() {
        let ack = |pkid, code| Ack::with_code(pkid, code);
        let mut f = Inflight::default();
        let one = f.send(delivery(7)).expect("room").pkid;
        let two = f.send(delivery(8)).expect("room").pkid;
        // (statement, ack, what it did, reply)
        let cases = [
            (
                "MQTT-4.3.3-4: a PUBREC below 0x80 is answered with PUBREL",
                (ClientAck::PubRec, ack(one, 0)),
                Acked::Released,
                Some(Packet::PubRel(Ack::ok(one))),
            ),
            (
                "MQTT-4.3.3-5: the PUBREL stays unacknowledged; a resent PUBREC gets it again",
                (ClientAck::PubRec, ack(one, 0)),
                Acked::Released,
                Some(Packet::PubRel(Ack::ok(one))),
            ),
            (
                "MQTT-4.3.3-5: PUBCOMP completes the message; its store record goes",
                (ClientAck::PubComp, ack(one, 0)),
                Acked::Done(7),
                None,
            ),
            (
                "§3.6.2.1: PUBREC for an unknown id gets PUBREL 0x92",
                (ClientAck::PubRec, ack(one, 0)),
                Acked::Unknown,
                Some(Packet::PubRel(ack(
                    one,
                    reason::PACKET_IDENTIFIER_NOT_FOUND,
                ))),
            ),
            (
                "§4.3.3: a PUBREC with a failure code ends the exchange",
                (ClientAck::PubRec, ack(two, reason::QUOTA_EXCEEDED)),
                Acked::Done(8),
                None,
            ),
            (
                "MQTT-4.3.2-3: only a PUBACK for a message in flight completes one",
                (ClientAck::PubAck, ack(two, 0)),
                Acked::Unknown,
                None,
            ),
        ];
        for (statement, (kind, a), acked, reply) in cases {
            assert_eq!(f.acknowledged(kind, &a), (acked, reply), "{statement}");
        }
        assert!(f.is_empty());
    }

    #[test]
    fn receive_maximum_of_the_client() {
        let mut f = Inflight::default();
        for seq in 0..3 {
            f.send(delivery(seq)).expect("room");
        }
        // MQTT-3.3.4-9: no more unacknowledged PUBLISHes than the client's Receive Maximum.
        assert!(!f.has_room(3, 0));
        assert_eq!((f.room(3), f.room(5)), (0, 2));
        assert!(f.has_room(4, 0));
        // Messages from an earlier connection, not yet sent again, wait for room too.
        assert!(f.has_room(3, 1));
    }

    #[test]
    fn what_may_be_delivered() {
        let now = Instant::now();
        let mut d = delivery(0);
        assert_eq!(deliverable(&d, now, Protocol::V5, usize::MAX), Ok(None));
        let len = codec::publish_len(&view(&d, 0, false, None), Protocol::V5);
        assert_eq!(
            deliverable(&d, now, Protocol::V5, len - 1),
            Err(DropReason::TooLargeForClient),
            "MQTT-3.1.2-25: nothing larger than the client's Maximum Packet Size"
        );
        let msg = Arc::make_mut(&mut d.msg);
        msg.expires_at = Some(now + std::time::Duration::from_secs(10));
        assert_eq!(
            deliverable(
                &d,
                now + std::time::Duration::from_secs(4),
                Protocol::V5,
                usize::MAX
            ),
            Ok(Some(6)),
            "MQTT-3.3.2-6: the expiry interval sent is what is left of it"
        );
        assert_eq!(
            deliverable(
                &d,
                now + std::time::Duration::from_secs(10),
                Protocol::V5,
                usize::MAX
            ),
            Err(DropReason::Expired),
            "MQTT-3.3.2-5: an expired message is not delivered"
        );
        assert!(
            view(&delivery(0), 1, true, None).dup,
            "MQTT-3.3.1-1: DUP on a resend"
        );
    }
}
