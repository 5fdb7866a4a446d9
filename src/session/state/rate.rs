//! Rate limits, AWS IoT's quotas by default (spec aws-iot-auth.md §5.2):
//! per connection, publishes, payload bytes and subscriptions per second;
//! per client id, CONNECT attempts per second; per source address, new
//! connections per second, in a bounded table. A client over a limit is refused (an MQTT
//! 5 publish or subscription, with its reason code) or slowed (its socket
//! is not read for a while), never able to slow anyone else. Pure: time is
//! passed in.

use crate::codec::{Protocol, QoS, reason};
use crate::config::Limits;
use crate::metrics::LimitKind;
use std::time::Duration;
use tokio::time::Instant;

/// A token bucket refilled at `rate` a second up to `burst` tokens (a
/// connection's buckets hold one second's worth); `tokens` may go below
/// zero for bytes, which are delayed rather than refused.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// Takes `n` if there are that many.
    fn take(&mut self, now: Instant, n: f64, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        let enough = self.tokens >= n;
        if enough {
            self.tokens -= n;
        }
        enough
    }

    /// Takes `n` whatever is there; when the balance is negative, the
    /// instant it is back to zero.
    fn owe(&mut self, now: Instant, n: f64, rate: f64) -> Option<Instant> {
        self.refill(now, rate, rate);
        self.tokens -= n;
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / rate))
    }

    /// Whether it would be full again at `now`: nothing to remember.
    fn is_full_at(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate >= burst
    }
}

/// The buckets of one connection, made at its first publish or subscribe,
/// so that an idle connection holds none.
#[derive(Debug, Clone)]
pub struct Rates {
    publishes: Bucket,
    bytes: Bucket,
    subscriptions: Bucket,
}

/// What the publish rate says of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Route it.
    Pass,
    /// Route it, then read nothing more from the client until then: its
    /// bytes per second are over the limit (AWS delays the excess), or, on
    /// MQTT 3.1.1, which cannot refuse, its publishes per second.
    Slow(Instant),
    /// Refuse it in its acknowledgement (MQTT 5, QoS 1/2): 0x97 Quota
    /// exceeded, as AWS IoT answers (PUBACK has no 0x96 Message rate too
    /// high, §3.4.2.1).
    Refuse(u8),
    /// Drop it (MQTT 5, QoS 0, over the publish rate: AWS discards the
    /// excess).
    Drop,
}

impl Rates {
    /// Full buckets at `now`.
    pub fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            publishes: Bucket::full(f64::from(limits.publishes_per_second), now),
            bytes: Bucket::full(limits.publish_bytes_per_second as f64, now),
            subscriptions: Bucket::full(f64::from(limits.subscriptions_per_second), now),
        }
    }

    /// One publish of `bytes` payload bytes at `now`; the limit that acted,
    /// if one did, for the metrics. A limit of 0 is no limit.
    pub fn publish(
        &mut self,
        now: Instant,
        bytes: usize,
        qos: QoS,
        protocol: Protocol,
        limits: &Limits,
    ) -> (Publish, Option<LimitKind>) {
        let rate = f64::from(limits.publishes_per_second);
        if rate > 0.0 && !self.publishes.take(now, 1.0, rate, rate) {
            return match (protocol, qos) {
                (Protocol::V5, QoS::AtMostOnce) => (Publish::Drop, Some(LimitKind::PublishRate)),
                (Protocol::V5, _) => (
                    Publish::Refuse(reason::QUOTA_EXCEEDED),
                    Some(LimitKind::PublishRate),
                ),
                // 3.1.1 cannot refuse: the publish goes, the next waits.
                (Protocol::V4, _) => {
                    let wait = Duration::from_secs_f64((1.0 - self.publishes.tokens) / rate);
                    self.publishes.tokens -= 1.0;
                    (Publish::Slow(now + wait), Some(LimitKind::PublishRate))
                }
            };
        }
        let rate = limits.publish_bytes_per_second as f64;
        if rate > 0.0
            && let Some(until) = self.bytes.owe(now, bytes as f64, rate)
        {
            return (Publish::Slow(until), Some(LimitKind::ByteRate));
        }
        (Publish::Pass, None)
    }

    /// Whether one more subscription may be made at `now`.
    pub fn subscribe(&mut self, now: Instant, limits: &Limits) -> bool {
        let rate = f64::from(limits.subscriptions_per_second);
        rate == 0.0 || self.subscriptions.take(now, 1.0, rate, rate)
    }
}

/// Token buckets by key (a client id, a source address), at most `cap`
/// of them: a botnet-sized set of keys cannot grow it. Keys whose bucket
/// would be full again are forgotten (at most once a second, so that a
/// full table costs one scan a second); when every key is busy, new keys
/// share one bucket, so that a flood of new keys is limited as one key is.
#[derive(Debug)]
pub struct Table {
    buckets: std::collections::HashMap<Box<str>, Bucket>,
    overflow: Option<Bucket>,
    cap: usize,
    pruned: Option<Instant>,
}

impl Table {
    /// An empty table of at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Self {
            buckets: std::collections::HashMap::new(),
            overflow: None,
            cap,
            pruned: None,
        }
    }

    /// One attempt of `key` at `now`, at most `rate` a second after a burst
    /// of `burst`; whether it may go on. A rate of 0 is no limit.
    pub fn admit(&mut self, now: Instant, key: &str, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst.max(1)));
        if let Some(b) = self.buckets.get_mut(key) {
            return b.take(now, 1.0, rate, burst);
        }
        if self.buckets.len() >= self.cap {
            self.prune(now, rate, burst);
        }
        if self.buckets.len() >= self.cap {
            let shared = self.overflow.get_or_insert(Bucket::full(burst, now));
            return shared.take(now, 1.0, rate, burst);
        }
        let mut fresh = Bucket::full(burst, now);
        let ok = fresh.take(now, 1.0, rate, burst);
        self.buckets.insert(key.into(), fresh);
        ok
    }

    fn prune(&mut self, now: Instant, rate: f64, burst: f64) {
        if self
            .pruned
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.pruned = Some(now);
        self.buckets.retain(|_, b| !b.is_full_at(now, rate, burst));
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            publishes_per_second: 10,
            publish_bytes_per_second: 1000,
            subscriptions_per_second: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn publishes_per_second() {
        let t0 = Instant::now();
        let l = limits();
        // (statement, protocol, QoS, verdict once the second's ten are used)
        let cases = [
            (
                "MQTT 5 refuses a QoS 1 publish over the rate with 0x97, as AWS IoT does",
                Protocol::V5,
                QoS::AtLeastOnce,
                Publish::Refuse(reason::QUOTA_EXCEEDED),
            ),
            (
                "AWS IoT discards QoS 0 over the rate",
                Protocol::V5,
                QoS::AtMostOnce,
                Publish::Drop,
            ),
        ];
        for (statement, protocol, qos, over) in cases {
            let mut r = Rates::new(&l, t0);
            for _ in 0..10 {
                assert_eq!(
                    r.publish(t0, 1, qos, protocol, &l).0,
                    Publish::Pass,
                    "{statement}"
                );
            }
            assert_eq!(
                r.publish(t0, 1, qos, protocol, &l),
                (over, Some(LimitKind::PublishRate)),
                "{statement}"
            );
            assert_eq!(
                r.publish(t0 + Duration::from_millis(100), 1, qos, protocol, &l)
                    .0,
                Publish::Pass,
                "{statement}: a tenth of a second later there is room for one"
            );
        }
        let mut r = Rates::new(&l, t0);
        for _ in 0..10 {
            r.publish(t0, 1, QoS::AtLeastOnce, Protocol::V4, &l);
        }
        assert_eq!(
            r.publish(t0, 1, QoS::AtLeastOnce, Protocol::V4, &l).0,
            Publish::Slow(t0 + Duration::from_millis(100)),
            "3.1.1 cannot refuse: the client is slowed to the rate"
        );
    }

    #[test]
    fn bytes_per_second_are_delayed_not_refused() {
        let t0 = Instant::now();
        let l = limits();
        let mut r = Rates::new(&l, t0);
        assert_eq!(
            r.publish(t0, 600, QoS::AtMostOnce, Protocol::V5, &l).0,
            Publish::Pass
        );
        assert_eq!(
            r.publish(t0, 900, QoS::AtMostOnce, Protocol::V5, &l),
            (
                Publish::Slow(t0 + Duration::from_millis(500)),
                Some(LimitKind::ByteRate)
            ),
            "AWS IoT delays the excess: 500 bytes owed at 1000 a second"
        );
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            r.publish(later, 10, QoS::AtMostOnce, Protocol::V5, &l).0,
            Publish::Slow(later + Duration::from_millis(10))
        );
    }

    #[test]
    fn attempts_per_key_in_a_bounded_table() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut table = Table::new(3);
        // AWS IoT: one CONNECT a second per client id, after a small burst.
        assert!(table.admit(t0, "dev-1", 1, 2) && table.admit(t0, "dev-1", 1, 2));
        assert!(
            !table.admit(t0, "dev-1", 1, 2),
            "a reconnect storm of one id"
        );
        assert!(table.admit(t0, "dev-2", 1, 2), "does not starve the others");
        assert!(
            table.admit(t0 + ms(1000), "dev-1", 1, 2),
            "a second later, one more"
        );
        // A botnet-sized set of keys: the table stays at its bound, and
        // the keys beyond it share one bucket.
        for i in 0..1000 {
            table.admit(t0 + ms(1000), &format!("10.0.0.{i}"), 1, 2);
        }
        assert!(table.len() <= 3, "{} keys", table.len());
        assert!(
            !table.admit(t0 + ms(1000), "10.9.9.9", 1, 2),
            "the overflow bucket is spent"
        );
        // Keys whose buckets are full again are forgotten.
        assert!(table.admit(t0 + ms(5000), "late", 1, 2));
        assert!(table.admit(t0, "any", 0, 0), "0 is no limit");
    }

    #[test]
    fn subscriptions_and_no_limit() {
        let t0 = Instant::now();
        let l = limits();
        let mut r = Rates::new(&l, t0);
        assert!(r.subscribe(t0, &l) && r.subscribe(t0, &l));
        assert!(!r.subscribe(t0, &l), "a third in the same second");
        let off = Limits {
            publishes_per_second: 0,
            publish_bytes_per_second: 0,
            subscriptions_per_second: 0,
            ..Limits::default()
        };
        let mut r = Rates::new(&off, t0);
        for _ in 0..10_000 {
            assert_eq!(
                r.publish(t0, 1 << 20, QoS::AtLeastOnce, Protocol::V5, &off)
                    .0,
                Publish::Pass
            );
            assert!(r.subscribe(t0, &off));
        }
    }
}
