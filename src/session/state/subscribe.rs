//! SUBSCRIBE and UNSUBSCRIBE: which filters are granted and at which QoS,
//! why the others are refused, and whether retained messages follow.

use super::Judge;
use super::end::End;
use crate::codec::{QoS, SubOptions, reason};
use crate::metrics::LimitKind;
use crate::topic::{Subscription, TopicError};

/// What becomes of one filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Subscribed with these options (the QoS granted, §3.9.3).
    Grant(Subscription<'a>, SubOptions),
    /// Refused: the SUBACK code and, for the reason string, why.
    Refuse(u8, String),
}

impl Judge<'_> {
    /// Judges the `index`th filter of a SUBSCRIBE, `raw` as sent with
    /// `opts`, for a session that has `count` subscriptions (`raw` among
    /// them if `exists`); `allowed(raw)` asks the policy, with the filter
    /// exactly as sent, `$share/...` included (spec §1.3).
    pub fn subscription<'r>(
        &self,
        index: usize,
        raw: &'r str,
        opts: &SubOptions,
        (count, exists): (usize, bool),
        allowed: impl FnOnce(&str) -> bool,
    ) -> Result<Decision<'r>, End> {
        let limits = &self.config.limits;
        let parsed = match Subscription::parse(raw) {
            Ok(p) => p,
            // An empty filter has no name to put before the problem.
            Err(_) if raw.is_empty() => {
                return Ok(Decision::Refuse(
                    reason::TOPIC_FILTER_INVALID,
                    "an empty topic filter".to_owned(),
                ));
            }
            Err(e) => {
                return Ok(Decision::Refuse(
                    reason::TOPIC_FILTER_INVALID,
                    format!("{raw}: {e}"),
                ));
            }
        };
        if parsed.share.is_some() && opts.no_local {
            return Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "No Local on a shared subscription [MQTT-3.8.3-4]",
            ));
        }
        if !allowed(raw) {
            return Ok(Decision::Refuse(
                reason::NOT_AUTHORIZED,
                format!("{raw}: not authorized"),
            ));
        }
        let refusal = if index >= limits.max_filters_per_subscribe {
            Some((
                LimitKind::FiltersPerSubscribe,
                reason::QUOTA_EXCEEDED,
                "too many filters in one SUBSCRIBE",
            ))
        } else if let Err(e) = limits.topics().check(parsed.filter) {
            let kind = match e {
                TopicError::TooDeep(_) => LimitKind::TopicDepth,
                _ => LimitKind::TopicLength,
            };
            Some((
                kind,
                reason::TOPIC_FILTER_INVALID,
                "filter too long or too deep",
            ))
        } else if !exists && count >= limits.max_subscriptions_per_connection {
            Some((
                LimitKind::Subscriptions,
                reason::QUOTA_EXCEEDED,
                "too many subscriptions",
            ))
        } else {
            None
        };
        if let Some((kind, code, why)) = refusal {
            self.metrics.refused(kind);
            return Ok(Decision::Refuse(code, format!("{raw}: {why}")));
        }
        let mut granted = *opts;
        granted.qos = QoS::from_u8((opts.qos as u8).min(limits.max_qos)).unwrap_or(QoS::AtMostOnce);
        Ok(Decision::Grant(parsed, granted))
    }
}

/// Whether retained messages follow a granted subscription: as its Retain
/// Handling says [MQTT-3.3.1-9..11], and never for a shared one (§4.8.2).
pub fn sends_retained(granted: &Subscription<'_>, opts: &SubOptions, new: bool) -> bool {
    granted.share.is_none()
        && match opts.retain_handling {
            0 => true,
            1 => new,
            _ => false,
        }
}

/// The UNSUBACK code for one filter (§3.11.3).
pub fn unsubscribed(valid: bool, existed: bool) -> u8 {
    match (valid, existed) {
        (false, _) => reason::TOPIC_FILTER_INVALID,
        (true, true) => reason::SUCCESS,
        (true, false) => reason::NO_SUBSCRIPTION_EXISTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Protocol;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn opts(qos: QoS) -> SubOptions {
        SubOptions::qos(qos)
    }

    #[test]
    fn filters() {
        let mut config = Config::embedded(std::path::Path::new(".")).expect("config");
        config.limits.max_qos = 1;
        let metrics = Metrics::new();
        let judge = Judge {
            protocol: Protocol::V5,
            config: &config,
            metrics: &metrics,
        };
        let max_subs = config.limits.max_subscriptions_per_connection;
        let max_filters = config.limits.max_filters_per_subscribe;
        let deep = "a/".repeat(config.limits.max_topic_slashes + 1) + "#";
        let grant = |filter, qos| {
            Ok(Decision::Grant(
                Subscription::parse(filter).expect("valid"),
                opts(qos),
            ))
        };
        let refuse = |code, why: &str| Ok(Decision::Refuse(code, why.to_owned()));
        // (statement, index, filter, QoS asked, (subscriptions, exists), decision)
        let cases = [
            (
                "§3.9.3: a filter is granted",
                0,
                "a/+",
                QoS::AtMostOnce,
                (0, false),
                grant("a/+", QoS::AtMostOnce),
            ),
            (
                "§3.8.4: the QoS granted is at most the gateway's Maximum QoS",
                0,
                "a/#",
                QoS::ExactlyOnce,
                (0, false),
                grant("a/#", QoS::AtLeastOnce),
            ),
            (
                "§4.7.3: an invalid filter is refused with 0x8F and says why",
                0,
                "a/#/b",
                QoS::AtMostOnce,
                (0, false),
                refuse(
                    reason::TOPIC_FILTER_INVALID,
                    "a/#/b: wildcard is not alone in its level or `#` is not last",
                ),
            ),
            (
                "§4.7.3: an empty filter says so without a stray prefix",
                0,
                "",
                QoS::AtMostOnce,
                (0, false),
                refuse(reason::TOPIC_FILTER_INVALID, "an empty topic filter"),
            ),
            (
                "AWS IoT: iot:Subscribe is asked for the filter as sent",
                0,
                "denied/#",
                QoS::AtMostOnce,
                (0, false),
                refuse(reason::NOT_AUTHORIZED, "denied/#: not authorized"),
            ),
            (
                "AWS IoT: at most 8 filters per SUBSCRIBE",
                max_filters,
                "a",
                QoS::AtMostOnce,
                (0, false),
                refuse(
                    reason::QUOTA_EXCEEDED,
                    "a: too many filters in one SUBSCRIBE",
                ),
            ),
            (
                "AWS IoT: at most 50 subscriptions per connection",
                0,
                "new",
                QoS::AtMostOnce,
                (max_subs, false),
                refuse(reason::QUOTA_EXCEEDED, "new: too many subscriptions"),
            ),
            (
                "MQTT-3.8.4-3: subscribing again replaces the subscription, within the quota",
                0,
                "old",
                QoS::AtMostOnce,
                (max_subs, true),
                grant("old", QoS::AtMostOnce),
            ),
            (
                "AWS IoT: at most 7 slashes in a filter",
                0,
                deep.as_str(),
                QoS::AtMostOnce,
                (0, false),
                Ok(Decision::Refuse(
                    reason::TOPIC_FILTER_INVALID,
                    format!("{deep}: filter too long or too deep"),
                )),
            ),
        ];
        for (statement, index, filter, qos, session, decision) in cases {
            let got = judge.subscription(index, filter, &opts(qos), session, |f| {
                !f.starts_with("denied/")
            });
            assert_eq!(got, decision, "{statement}");
        }
        let mut no_local = opts(QoS::AtMostOnce);
        no_local.no_local = true;
        assert_eq!(
            judge
                .subscription(0, "$share/g/a", &no_local, (0, false), |_| true)
                .map_err(|e| e.reason_code()),
            Err(Some(reason::PROTOCOL_ERROR)),
            "MQTT-3.8.3-4: No Local on a shared subscription is a protocol error"
        );
    }

    #[test]
    fn retained_messages_and_unsubscribe() {
        let plain = Subscription::parse("a/#").expect("valid");
        let shared = Subscription::parse("$share/g/a/#").expect("valid");
        let handling = |retain_handling| SubOptions {
            retain_handling,
            ..opts(QoS::AtMostOnce)
        };
        // (statement, subscription, retain handling, new, sent)
        let cases = [
            (
                "MQTT-3.3.1-9: 0 sends retained messages",
                &plain,
                0,
                false,
                true,
            ),
            (
                "MQTT-3.3.1-10: 1 sends them for a new subscription",
                &plain,
                1,
                true,
                true,
            ),
            (
                "MQTT-3.3.1-10: 1 does not for an existing one",
                &plain,
                1,
                false,
                false,
            ),
            ("MQTT-3.3.1-11: 2 never sends them", &plain, 2, true, false),
            (
                "§4.8.2: a shared subscription gets none",
                &shared,
                0,
                true,
                false,
            ),
        ];
        for (statement, sub, rh, new, sent) in cases {
            assert_eq!(sends_retained(sub, &handling(rh), new), sent, "{statement}");
        }
        assert_eq!(unsubscribed(true, true), reason::SUCCESS);
        assert_eq!(
            unsubscribed(true, false),
            reason::NO_SUBSCRIPTION_EXISTED,
            "§3.11.3: 0x11 No subscription existed"
        );
        assert_eq!(unsubscribed(false, false), reason::TOPIC_FILTER_INVALID);
    }
}
