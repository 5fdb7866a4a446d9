//! Publishes from the client: whether one may be routed (limits, topic
//! aliases, topics only the gateway publishes on, the policy), QoS 2
//! exactly-once de-duplication, the gateway's Receive Maximum, and the
//! acknowledgement each gets. Pure: the policy is asked through a callback.

use super::aliases;
use super::end::End;
use super::{Judge, Unpublishable, unpublishable};
use crate::codec::{Ack, Packet, Properties, Protocol, Publish, QoS, reason};
use crate::metrics::{AuthzAction, LimitKind};
use crate::store::StoreError;
use crate::topic::TopicError;
use std::collections::HashSet;
use std::sync::Arc;

/// QoS 2 packet identifiers received and not yet released by PUBREL:
/// session state, kept across connections [MQTT-4.3.3-10].
#[derive(Debug, Default)]
pub struct Received {
    ids: HashSet<u16>,
}

impl Received {
    /// How many QoS 2 publishes await their PUBREL.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// A QoS 2 publish was routed: until its PUBREL, a resend of it is
    /// acknowledged and not routed again [MQTT-4.3.3-10].
    pub fn routed(&mut self, pkid: u16) {
        self.ids.insert(pkid);
    }

    /// PUBREL: the PUBCOMP that answers it [MQTT-4.3.3-11], 0x92 if the
    /// identifier is unknown (§3.7.2.1). The identifier is free again
    /// [MQTT-4.3.3-12].
    pub fn release(&mut self, pkid: u16) -> Packet {
        let code = if self.ids.remove(&pkid) {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        Packet::PubComp(Ack::with_code(pkid, code))
    }
}

/// What to do with a publish from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Route it.
    Route,
    /// A QoS 2 resend whose PUBREL has not come: acknowledge it again, and
    /// do not route it again [MQTT-4.3.3-10].
    Duplicate,
    /// Refuse it in its acknowledgement and keep the connection (MQTT 5,
    /// QoS 1/2).
    Refuse {
        /// The reason code for PUBACK or PUBREC.
        code: u8,
        /// Why, for the reason string.
        why: &'static str,
    },
    /// Drop it: an MQTT 5 QoS 0 publish the policy denies has no
    /// acknowledgement to say so in.
    Drop,
}

impl Judge<'_> {
    /// Judges `p` (its topic alias resolved in place against `aliases`).
    /// `unacked` QoS 1 publishes of this connection await their PUBACK and
    /// `received` QoS 2 ones their PUBREL; `allowed(topic, retain)` asks the
    /// policy. A protocol error, or a refusal MQTT 3.1.1 can only give by
    /// closing, ends the connection.
    pub fn admit(
        &self,
        p: &mut Publish,
        aliases: &mut aliases::Inbound,
        received: &Received,
        unacked: usize,
        allowed: impl FnOnce(&str, bool) -> bool,
    ) -> Result<Admission, End> {
        let limits = &self.config.limits;
        let metrics = self.metrics;
        let v5 = self.protocol == Protocol::V5;
        if p.qos as u8 > limits.max_qos {
            metrics.refused(LimitKind::Qos);
            return Err(End::Protocol(
                reason::QOS_NOT_SUPPORTED,
                "QoS above the maximum",
            ));
        }
        let alias = p.properties.topic_alias.take();
        aliases
            .resolve(&mut p.topic, alias, self.config.mqtt.topic_alias_maximum)
            .map_err(|(code, why)| End::Protocol(code, why))?;
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "client sent a subscription identifier [MQTT-3.3.4-6]",
            ));
        }
        if p.payload.len() > limits.max_payload_bytes {
            metrics.refused(LimitKind::Payload);
            return Err(End::Protocol(reason::PACKET_TOO_LARGE, "payload too large"));
        }
        let topic = p.topic.as_str();
        let refusal = unpublishable(topic, p.retain, limits.topics()).map(|u| match u {
            Unpublishable::Topic(e) => {
                metrics.refused(match e {
                    TopicError::TooDeep(_) => LimitKind::TopicDepth,
                    _ => LimitKind::TopicLength,
                });
                (reason::TOPIC_NAME_INVALID, "topic too long or too deep")
            }
            Unpublishable::GatewayOnly => {
                metrics.denied(AuthzAction::Publish);
                (
                    reason::NOT_AUTHORIZED,
                    "only the gateway publishes lifecycle events and shadow responses",
                )
            }
            Unpublishable::RetainedReserved => {
                (reason::RETAIN_NOT_SUPPORTED, "retain on a reserved topic")
            }
        });
        if let Some((code, why)) = refusal {
            // MQTT 5 refuses a QoS 1/2 publish in its ack and keeps the connection.
            return if v5 && p.qos != QoS::AtMostOnce {
                Ok(Admission::Refuse { code, why })
            } else {
                Err(End::Protocol(code, why))
            };
        }
        if !allowed(topic, p.retain) {
            // MQTT 5 says so in the ack (or drops a QoS 0 publish); 3.1.1 has
            // no way to say it but closing the connection (spec §1.3).
            return match (v5, p.qos) {
                (false, _) => Err(End::NotAuthorized("publish not authorized")),
                (true, QoS::AtMostOnce) => Ok(Admission::Drop),
                (true, _) => Ok(Admission::Refuse {
                    code: reason::NOT_AUTHORIZED,
                    why: "not authorized to publish to this topic",
                }),
            };
        }
        if p.qos == QoS::ExactlyOnce && received.ids.contains(&p.pkid) {
            return Ok(Admission::Duplicate);
        }
        // The client may have no more unacknowledged publishes than the
        // Receive Maximum the gateway announced [MQTT-3.3.4-7]: QoS 1 ones
        // until their PUBACK leaves, QoS 2 ones until their PUBREL.
        if p.qos != QoS::AtMostOnce
            && v5
            && unacked + received.len() >= usize::from(limits.max_inflight)
        {
            metrics.refused(LimitKind::Inflight);
            return Err(End::Protocol(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more unacknowledged publishes than Receive Maximum",
            ));
        }
        Ok(Admission::Route)
    }
}

/// The reason code for the acknowledgement of a publish given to the
/// router, which delivered it to `matched` sessions or refused it: 0x10 No
/// matching subscribers when nobody gets it (MQTT 5, §3.4.2.1).
pub fn routed_code(routed: Result<usize, &StoreError>, protocol: Protocol) -> u8 {
    match routed {
        Ok(0) if protocol == Protocol::V5 => reason::NO_MATCHING_SUBSCRIBERS,
        Ok(_) => reason::SUCCESS,
        Err(e) => store_failure(e),
    }
}

/// The reason code a finished commit puts in its publish's
/// acknowledgement, if it failed; `None` when the store went away without
/// an answer.
pub fn commit_failure(res: Option<&Result<(), Arc<StoreError>>>) -> Option<u8> {
    match res {
        None => Some(reason::UNSPECIFIED_ERROR),
        Some(r) => r.as_ref().err().map(|e| store_failure(e)),
    }
}

/// A bounded queue in front of the store (the rules engine, a spool that
/// refuses new records) that is full is AWS IoT's throttling: 0x97 Quota
/// exceeded; any other failure is 0x80 Unspecified error.
fn store_failure(e: &StoreError) -> u8 {
    match e {
        StoreError::Full(_) => reason::QUOTA_EXCEEDED,
        _ => reason::UNSPECIFIED_ERROR,
    }
}

/// The acknowledgement of an admitted publish, once what it made durable is
/// committed, with `code` from the router or the store. A QoS 2 identifier
/// whose publish failed is free at once [MQTT-4.3.3-9]; MQTT 3.1.1 has no
/// failure acknowledgement, so the connection closes unacknowledged and the
/// client sends the publish again.
pub fn acknowledgement(
    pkid: u16,
    qos2: bool,
    code: u8,
    protocol: Protocol,
    received: &mut Received,
) -> Result<Packet, End> {
    if code >= 0x80 {
        if qos2 {
            received.ids.remove(&pkid);
        }
        if protocol == Protocol::V4 {
            return Err(End::Store);
        }
    }
    let ack = Ack::with_code(pkid, code);
    Ok(if qos2 {
        Packet::PubRec(ack)
    } else {
        Packet::PubAck(ack)
    })
}

/// The acknowledgement that refuses a QoS 1/2 publish (MQTT 5), with the
/// reason string when the client takes them.
pub fn refusal(pkid: u16, qos: QoS, code: u8, reason_string: Option<String>) -> Packet {
    let ack = Ack {
        pkid,
        code: reason::puback(code),
        properties: Properties {
            reason_string,
            ..Properties::default()
        },
    };
    if qos == QoS::ExactlyOnce {
        Packet::PubRec(ack)
    } else {
        Packet::PubAck(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ByteStr, PublishProperties};
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn cfg() -> Config {
        Config::embedded(std::path::Path::new(".")).expect("embedded config")
    }

    fn publish(topic: &str, qos: QoS, pkid: u16) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteStr::from(topic),
            pkid,
            properties: PublishProperties::default(),
            payload: bytes::Bytes::from_static(b"{}"),
        }
    }

    /// Judges `p` on a fresh connection whose policy allows everything but `denied/#`.
    fn judge(
        protocol: Protocol,
        p: &mut Publish,
        received: &Received,
        unacked: usize,
    ) -> Result<Admission, End> {
        let config = cfg();
        let metrics = Metrics::new();
        let judge = Judge {
            protocol,
            config: &config,
            metrics: &metrics,
        };
        let mut aliases = aliases::Inbound::default();
        judge.admit(p, &mut aliases, received, unacked, |t, _| {
            !t.starts_with("denied/")
        })
    }

    #[test]
    fn refusals_by_protocol_and_qos() {
        let none = Received::default();
        let gateway_only = "$aws/things/t/shadow/get/accepted";
        let refuse = |code, why| Ok(Admission::Refuse { code, why });
        // (statement, protocol, topic, QoS, admission)
        let cases = [
            (
                "a publish the policy allows is routed",
                Protocol::V5,
                "a/b",
                QoS::AtLeastOnce,
                Ok(Admission::Route),
            ),
            (
                "§3.4.2.1: MQTT 5 refuses a denied QoS 1 publish in its PUBACK",
                Protocol::V5,
                "denied/x",
                QoS::AtLeastOnce,
                refuse(
                    reason::NOT_AUTHORIZED,
                    "not authorized to publish to this topic",
                ),
            ),
            (
                "§3.3.4: a denied QoS 0 publish has no ack to refuse it in",
                Protocol::V5,
                "denied/x",
                QoS::AtMostOnce,
                Ok(Admission::Drop),
            ),
            (
                "AWS IoT: 3.1.1 has no failure ack, a denied publish closes the connection",
                Protocol::V4,
                "denied/x",
                QoS::AtLeastOnce,
                Err(End::NotAuthorized("publish not authorized")),
            ),
            (
                "only the gateway publishes shadow responses (MQTT 5: in the ack)",
                Protocol::V5,
                gateway_only,
                QoS::AtLeastOnce,
                refuse(
                    reason::NOT_AUTHORIZED,
                    "only the gateway publishes lifecycle events and shadow responses",
                ),
            ),
            (
                "only the gateway publishes shadow responses (3.1.1: closed)",
                Protocol::V4,
                gateway_only,
                QoS::AtLeastOnce,
                Err(End::Protocol(
                    reason::NOT_AUTHORIZED,
                    "only the gateway publishes lifecycle events and shadow responses",
                )),
            ),
        ];
        for (statement, protocol, topic, qos, admission) in cases {
            let mut p = publish(topic, qos, 1);
            assert_eq!(judge(protocol, &mut p, &none, 0), admission, "{statement}");
        }
    }

    #[test]
    fn protocol_errors() {
        let none = Received::default();
        let cfg = cfg();
        let code = |protocol, mut p: Publish| {
            judge(protocol, &mut p, &none, 0).map_err(|e| e.reason_code())
        };
        let mut p = publish("a", QoS::AtMostOnce, 0);
        p.properties.subscription_identifiers = vec![1];
        assert_eq!(
            code(Protocol::V5, p),
            Err(Some(reason::PROTOCOL_ERROR)),
            "MQTT-3.3.4-6"
        );
        let mut p = publish("a", QoS::AtMostOnce, 0);
        p.properties.topic_alias = Some(1);
        p.topic = ByteStr::from("");
        assert_eq!(
            code(Protocol::V5, p),
            Err(Some(reason::PROTOCOL_ERROR)),
            "§3.3.2.3.4: an alias never set up is a protocol error"
        );
        let mut capped = cfg.clone();
        capped.limits.max_qos = 1;
        let metrics = Metrics::new();
        let judge = Judge {
            protocol: Protocol::V5,
            config: &capped,
            metrics: &metrics,
        };
        assert_eq!(
            judge
                .admit(
                    &mut publish("a", QoS::ExactlyOnce, 1),
                    &mut aliases::Inbound::default(),
                    &none,
                    0,
                    |_, _| true,
                )
                .map_err(|e| e.reason_code()),
            Err(Some(reason::QOS_NOT_SUPPORTED)),
            "MQTT-3.2.2-11, §3.2.2.3.4: a QoS above the Maximum QoS is 0x9B"
        );
        let mut p = publish("a", QoS::AtMostOnce, 0);
        p.properties.topic_alias = Some(cfg.mqtt.topic_alias_maximum + 1);
        assert_eq!(
            code(Protocol::V5, p),
            Err(Some(reason::TOPIC_ALIAS_INVALID)),
            "MQTT-3.3.2-9"
        );
        let mut p = publish("a", QoS::AtLeastOnce, 1);
        p.payload = vec![0; cfg.limits.max_payload_bytes + 1].into();
        assert_eq!(
            code(Protocol::V5, p),
            Err(Some(reason::PACKET_TOO_LARGE)),
            "AWS IoT: a payload over the limit is refused"
        );
        let mut p = publish("$aws/x", QoS::AtLeastOnce, 1);
        p.retain = true;
        assert_eq!(
            code(Protocol::V5, p),
            Ok(Admission::Refuse {
                code: reason::RETAIN_NOT_SUPPORTED,
                why: "retain on a reserved topic"
            }),
            "AWS IoT: no retained messages on reserved topics"
        );
        let deep = "a/".repeat(cfg.limits.max_topic_slashes + 1);
        assert_eq!(
            code(Protocol::V4, publish(&deep, QoS::AtMostOnce, 0)),
            Err(Some(reason::TOPIC_NAME_INVALID)),
            "AWS IoT: at most 7 slashes in a topic"
        );
    }

    #[test]
    fn exactly_once_and_receive_maximum() {
        let cfg = cfg();
        let max = usize::from(cfg.limits.max_inflight);
        let mut received = Received::default();
        received.routed(9);
        let mut resend = publish("a", QoS::ExactlyOnce, 9);
        resend.dup = true;
        assert_eq!(
            judge(Protocol::V5, &mut resend, &received, 0),
            Ok(Admission::Duplicate),
            "MQTT-4.3.3-10: a resend before PUBREL is acknowledged, not routed again"
        );
        assert_eq!(
            received.release(9),
            Packet::PubComp(Ack::ok(9)),
            "MQTT-4.3.3-11"
        );
        assert_eq!(
            judge(Protocol::V5, &mut resend, &received, 0),
            Ok(Admission::Route),
            "MQTT-4.3.3-12: after PUBCOMP the identifier is a new message"
        );
        assert_eq!(
            received.release(9),
            Packet::PubComp(Ack::with_code(9, reason::PACKET_IDENTIFIER_NOT_FOUND)),
            "§3.7.2.1: PUBREL for an unknown identifier"
        );
        let mut p = publish("a", QoS::AtLeastOnce, 1);
        assert_eq!(
            judge(Protocol::V5, &mut p, &received, max).map_err(|e| e.reason_code()),
            Err(Some(reason::RECEIVE_MAXIMUM_EXCEEDED)),
            "MQTT-3.3.4-7: no more than the Receive Maximum unacknowledged"
        );
        received.routed(1);
        assert!(
            judge(Protocol::V5, &mut p, &received, max - 1).is_err(),
            "MQTT-3.3.4-7: QoS 2 publishes count until their exchange completes"
        );
        assert_eq!(
            judge(
                Protocol::V5,
                &mut publish("a", QoS::AtMostOnce, 0),
                &received,
                max
            ),
            Ok(Admission::Route),
            "QoS 0 publishes do not count"
        );
    }

    #[test]
    fn acknowledgements() {
        let full = StoreError::Full("the rules engine's queue".into());
        // (statement, routed, protocol, code)
        let cases = [
            (
                "§3.4.2.1: 0x10 when nobody subscribes",
                Ok(0),
                Protocol::V5,
                reason::NO_MATCHING_SUBSCRIBERS,
            ),
            (
                "3.1.1 has no such code",
                Ok(0),
                Protocol::V4,
                reason::SUCCESS,
            ),
            ("delivered", Ok(2), Protocol::V5, reason::SUCCESS),
            (
                "AWS IoT: a full queue is throttling, 0x97",
                Err(&full),
                Protocol::V5,
                reason::QUOTA_EXCEEDED,
            ),
            (
                "a store that failed is 0x80",
                Err(&StoreError::Busy),
                Protocol::V5,
                reason::UNSPECIFIED_ERROR,
            ),
        ];
        for (statement, routed, protocol, code) in cases {
            assert_eq!(routed_code(routed, protocol), code, "{statement}");
        }
        assert_eq!(
            commit_failure(None),
            Some(reason::UNSPECIFIED_ERROR),
            "the store went away"
        );
        assert_eq!(commit_failure(Some(&Ok(()))), None);
        assert_eq!(
            commit_failure(Some(&Err(Arc::new(full)))),
            Some(reason::QUOTA_EXCEEDED)
        );
        let mut received = Received::default();
        received.routed(4);
        assert_eq!(
            acknowledgement(
                3,
                false,
                reason::NO_MATCHING_SUBSCRIBERS,
                Protocol::V5,
                &mut received
            ),
            Ok(Packet::PubAck(Ack::with_code(
                3,
                reason::NO_MATCHING_SUBSCRIBERS
            )))
        );
        assert_eq!(
            acknowledgement(4, true, reason::QUOTA_EXCEEDED, Protocol::V5, &mut received),
            Ok(Packet::PubRec(Ack::with_code(4, reason::QUOTA_EXCEEDED))),
            "MQTT-4.3.3-8: PUBREC with the reason"
        );
        assert!(
            received.is_empty(),
            "MQTT-4.3.3-9: a refused identifier is a new message next time"
        );
        assert_eq!(
            acknowledgement(
                5,
                false,
                reason::UNSPECIFIED_ERROR,
                Protocol::V4,
                &mut received
            ),
            Err(End::Store),
            "3.1.1 has no failure ack: closed unacknowledged, the client resends"
        );
        assert_eq!(
            refusal(6, QoS::AtLeastOnce, reason::RETAIN_NOT_SUPPORTED, None),
            Packet::PubAck(Ack::with_code(6, reason::IMPLEMENTATION_SPECIFIC_ERROR)),
            "§3.4.2.1: PUBACK has no 0x9A; the nearest code it has"
        );
    }
}
