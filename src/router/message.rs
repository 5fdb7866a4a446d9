//! The message: one publish behind an `Arc`, shared by every delivery of
//! it, and its record encodings (stored retained and queued messages).

use crate::codec::{self, ByteStr, Protocol, PublishProperties, QoS};
use crate::store::unix_ms;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// One published message, shared by every delivery of it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag it was published with.
    pub retain: bool,
    /// Properties to forward (no topic alias, no subscription identifiers).
    pub properties: PublishProperties,
    /// When it expires (MQTT 5 message expiry).
    pub expires_at: Option<Instant>,
    /// Who published it.
    pub origin: Arc<Origin>,
}

/// Who published a message: No Local and the rules engine's `clientid()`,
/// `principal()` and loop bound need to know. One per connection, shared by
/// its messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Session that published it; 0 for the gateway itself.
    pub session: u64,
    /// Client identifier of the publisher.
    pub client_id: Option<Arc<str>>,
    /// Certificate id of the publisher.
    pub principal: Option<Arc<str>>,
    /// How many rule republishes led to this message.
    pub hops: u8,
    /// Whether it came from the upstream broker: it is never sent back.
    pub bridged: bool,
}

impl Origin {
    /// The gateway itself (events, stored messages).
    pub fn gateway() -> Arc<Self> {
        static GATEWAY: std::sync::OnceLock<Arc<Origin>> = std::sync::OnceLock::new();
        GATEWAY.get_or_init(Default::default).clone()
    }
}

impl Message {
    /// What the gateway's own services publish: QoS 1, not retained, from
    /// the gateway, now.
    pub fn from_gateway(topic: String, payload: Vec<u8>) -> Arc<Self> {
        Arc::new(Self::new(
            topic.into(),
            payload.into(),
            QoS::AtLeastOnce,
            false,
            PublishProperties::default(),
            Instant::now(),
            Origin::gateway(),
        ))
    }

    /// A message as published now by `origin`; its expiry counts from now.
    pub fn new(
        topic: ByteStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
        now: Instant,
        origin: Arc<Origin>,
    ) -> Self {
        Self {
            expires_at: properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            topic,
            payload,
            qos,
            retain,
            properties,
            origin,
        }
    }

    /// A PUBLISH as a message, published now by `origin`.
    pub fn published(p: codec::Publish, now: Instant, origin: Arc<Origin>) -> Self {
        Self::new(
            p.topic,
            p.payload,
            p.qos,
            p.retain,
            p.properties,
            now,
            origin,
        )
    }

    /// Seconds left to live: `None` if expired, `Some(None)` if it never expires.
    pub fn remaining(&self, now: Instant) -> Option<Option<u32>> {
        match self.expires_at {
            None => Some(None),
            Some(at) if at <= now => None,
            Some(at) => {
                let secs = (at - now).as_secs_f64().ceil() as u32;
                Some(Some(secs.max(1)))
            }
        }
    }

    /// Serializes for the store: wall-clock expiry, then the message as an MQTT 5 PUBLISH.
    pub fn to_record(&self, now: Instant) -> Vec<u8> {
        self.record_after(&[], now)
    }

    /// The record of [`Message::to_record`] behind `head`, in one buffer.
    fn record_after(&self, head: &[u8], now: Instant) -> Vec<u8> {
        let expiry_ms = self.expires_at.map_or(0, |at| {
            let left = at.saturating_duration_since(now);
            unix_ms(SystemTime::now() + left)
        });
        let view = codec::PublishView {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.as_bytes(),
            pkid: 1,
            properties: &self.properties,
            message_expiry_interval: None,
            topic_alias: None,
            subscription_identifiers: &[],
            payload: &self.payload,
        };
        let mut buf =
            BytesMut::with_capacity(head.len() + 8 + codec::publish_len(&view, Protocol::V5));
        buf.extend_from_slice(head);
        buf.extend_from_slice(&expiry_ms.to_be_bytes());
        codec::encode_publish(&view, Protocol::V5, &mut buf);
        buf.into()
    }

    /// Reads a stored record; `None` if it is unreadable or has expired.
    pub fn from_record(record: &[u8], now: Instant) -> Option<Self> {
        let (expiry, packet) = record.split_at_checked(8)?;
        let expiry_ms = u64::from_be_bytes(expiry.try_into().ok()?);
        let mut buf = BytesMut::from(packet);
        let Ok(Some(codec::Packet::Publish(p))) = codec::decode(&mut buf, Protocol::V5, usize::MAX)
        else {
            return None;
        };
        let expires_at = if expiry_ms == 0 {
            None
        } else {
            let left = expiry_ms.checked_sub(unix_ms(SystemTime::now()))?;
            Some(now + Duration::from_millis(left))
        };
        let mut msg = Self::published(p, now, Origin::gateway());
        msg.expires_at = expires_at;
        Some(msg)
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS of this delivery: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    /// Store sequence number when the delivery is durable, else 0.
    pub seq: u64,
}

/// Marks a retained record that begins with the time it was set. Older
/// records begin with an expiry in milliseconds, whose first byte is 0
/// until the year 2540.
pub(super) const RETAINED_TIMED: u8 = 0xFF;

/// The stored form of a retained message: the marker, when it was set,
/// then the message's record.
pub(super) fn retained_record(modified_ms: u64, msg: &Message, now: Instant) -> Vec<u8> {
    let mut head = [RETAINED_TIMED; 9];
    head[1..].copy_from_slice(&modified_ms.to_be_bytes());
    msg.record_after(&head, now)
}

/// Splits a stored retained record into when it was set (unknown for
/// records stored before that was kept) and the message's record.
pub fn read_retained_record(r: &[u8]) -> (Option<u64>, &[u8]) {
    match r.split_first() {
        Some((&RETAINED_TIMED, rest)) => match rest.split_first_chunk::<8>() {
            Some((ms, record)) => (Some(u64::from_be_bytes(*ms)), record),
            None => (None, &[]),
        },
        _ => (None, r),
    }
}

/// A queued message as stored: how it is to be delivered, then the message.
pub(super) fn queued_record(message: &[u8], qos: QoS, retain: bool, sub_ids: &[u32]) -> Vec<u8> {
    let mut r = Vec::with_capacity(3 + 4 * sub_ids.len() + message.len());
    r.push(qos as u8);
    r.push(u8::from(retain));
    r.push(sub_ids.len().min(255) as u8);
    for id in sub_ids.iter().take(255) {
        r.extend_from_slice(&id.to_be_bytes());
    }
    r.extend_from_slice(message);
    r
}

/// Reads a stored queued message back into a delivery with sequence `seq`;
/// `None` if it is unreadable or expired.
pub fn delivery_from_record(record: &[u8], seq: u64, now: Instant) -> Option<Delivery> {
    let (&[qos, retain, n], rest) = record.split_first_chunk::<3>()?;
    let (ids, message) = rest.split_at_checked(4 * usize::from(n))?;
    Some(Delivery {
        msg: Arc::new(Message::from_record(message, now)?),
        qos: QoS::from_u8(qos)?,
        retain: retain == 1,
        sub_ids: ids
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        seq,
    })
}
