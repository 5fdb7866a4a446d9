//! The durable at-least-once queue between the broker and everything that
//! delivers outside it (rule actions, the upstream bridge).
//!
//! Design:
//! - Records live in the store's `spool` table under (spool name, sequence),
//!   so each spool is one ordered range, and in memory for fast reads from
//!   the head. Memory is bounded by the spool's byte limit.
//! - `append` queues the record's write in the store and returns its
//!   [`Commit`]: a producer that must not acknowledge before the record is
//!   durable (a QoS 1/2 publish) waits for it.
//! - A consumer reads from the head without removing (`peek`), delivers, and
//!   then `ack`s: only then is the record deleted. A crash between delivery
//!   and acknowledgement delivers it again: duplicates are possible, loss is
//!   not.
//! - Bounded by bytes and by age, with a named overflow policy: `DropOldest`
//!   hands the oldest records back to the caller (for an error action) to make
//!   room; `RefuseNew` refuses the new record. Expired records are handed
//!   back the same way.

use crate::store::{Commit, Op, Store, StoreError, now_ms};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The key under which each spool keeps its next sequence number.
const HIGH_WATER: u64 = u64::MAX;

/// 2020-01-01 in ms since the epoch. A record stamped before it was made
/// while the clock was not yet set (an edge box without a real-time clock,
/// before NTP): its age is unknown, and it never expires rather than
/// expiring the moment the clock is set.
const CLOCK_SET_MS: u64 = 1_577_836_800_000;

pub use crate::config::Overflow;

/// A spool's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of records held.
    pub max_bytes: usize,
    /// Oldest a record may get, in milliseconds (0: no limit).
    pub max_age_ms: u64,
    /// What happens when `max_bytes` would be exceeded.
    pub overflow: Overflow,
}

impl Limits {
    /// The bounds `[actions]` sets for every rule action's spool.
    pub fn of_actions(a: &crate::config::Actions) -> Self {
        Self {
            max_bytes: a.spool_max_bytes,
            max_age_ms: a.spool_max_age_secs.saturating_mul(1000),
            overflow: a.spool_overflow,
        }
    }

    /// The bounds `[upstream]` sets for the bridge's spool.
    pub fn of_upstream(u: &crate::config::Upstream) -> Self {
        Self {
            max_bytes: u.spool_max_bytes,
            max_age_ms: u.spool_max_age_secs.saturating_mul(1000),
            overflow: u.spool_overflow,
        }
    }
}

/// Why a record was not appended.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool is full and its policy refuses new records.
    #[error("spool {0} is full")]
    Full(Arc<str>),
    /// The record alone is larger than the spool.
    #[error("record of {size} bytes is larger than spool {name}")]
    TooLarge {
        /// Spool.
        name: Arc<str>,
        /// Record size.
        size: usize,
    },
    /// The store did not take the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One record at the head of a spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, increasing in append order.
    pub seq: u64,
    /// The bytes appended.
    pub data: Arc<[u8]>,
    /// When it was appended, ms since the epoch.
    pub at_ms: u64,
}

/// What an append did.
#[derive(Debug)]
pub struct Appended {
    /// Resolves when the record is durable.
    pub commit: Commit,
    /// Records evicted to make room (policy `DropOldest`), oldest first.
    pub evicted: Vec<Record>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Record>,
    bytes: usize,
    next_seq: u64,
    /// Records below this sequence number are being delivered: eviction
    /// leaves them alone, so a record never reaches both its target and
    /// the error action.
    held_until: u64,
}

/// One named spool.
#[derive(Debug)]
pub struct Spool {
    name: Arc<str>,
    store: Store,
    limits: Limits,
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Spool {
    /// A spool holding `restored` (its records from the store snapshot, in order).
    pub fn new(name: &str, store: Store, limits: Limits, restored: Vec<(u64, Vec<u8>)>) -> Self {
        let mut inner = Inner::default();
        for (seq, data) in restored {
            // The high-water mark (see `append`).
            if seq == HIGH_WATER {
                let mark = data
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                inner.next_seq = inner.next_seq.max(mark.unwrap_or(0));
                continue;
            }
            // Each stored record is its append time (8 bytes), then its data.
            let Some((at, data)) = data.split_first_chunk::<8>() else {
                continue;
            };
            inner.bytes += data.len();
            inner.next_seq = inner.next_seq.max(seq + 1);
            inner.queue.push_back(Record {
                seq,
                data: data.into(),
                at_ms: u64::from_be_bytes(*at),
            });
        }
        Self {
            name: name.into(),
            store,
            limits,
            inner: Mutex::new(inner),
            notify: Notify::new(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends a record under the overflow policy.
    pub fn append(&self, data: Vec<u8>, now_ms: u64) -> Result<Appended, SpoolError> {
        let size = data.len();
        if size > self.limits.max_bytes {
            return Err(SpoolError::TooLarge {
                name: self.name.clone(),
                size,
            });
        }
        let mut inner = self.inner.lock();
        // Decide what must go before changing anything: if the store refuses
        // the write, memory stays as it was and nothing is lost.
        // Records are in sequence order: those out for delivery come first.
        let held_until = inner.held_until;
        let held = inner.queue.partition_point(|r| r.seq < held_until);
        let mut freed = 0;
        let mut evict = 0;
        while inner.bytes - freed + size > self.limits.max_bytes {
            if self.limits.overflow == Overflow::RefuseNew {
                return Err(SpoolError::Full(self.name.clone()));
            }
            let Some(old) = inner.queue.get(held + evict) else {
                break;
            };
            freed += old.data.len();
            evict += 1;
        }
        let seq = inner.next_seq;
        let data: Arc<[u8]> = data.into();
        let mut ops: Vec<Op> = inner
            .queue
            .range(held..held + evict)
            .map(|r| Op::DelSpool(self.name.clone(), r.seq))
            .collect();
        let mut stored = Vec::with_capacity(8 + size);
        stored.extend_from_slice(&now_ms.to_be_bytes());
        stored.extend_from_slice(&data);
        ops.push(Op::PutSpool(self.name.clone(), seq, stored.into()));
        // Sequence numbers are never reused, even after a restart that finds
        // the spool empty, so a late deletion can never hit a newer record.
        ops.push(Op::PutSpool(
            self.name.clone(),
            HIGH_WATER,
            Arc::from(&(seq + 1).to_be_bytes()[..]),
        ));
        // Queued under the lock, so the store sees appends in sequence order.
        let commit = self.store.try_submit(ops)?;
        let evicted: Vec<Record> = inner.queue.drain(held..held + evict).collect();
        inner.bytes -= freed;
        inner.next_seq += 1;
        inner.bytes += size;
        inner.queue.push_back(Record {
            seq,
            data,
            at_ms: now_ms,
        });
        drop(inner);
        self.notify.notify_one();
        Ok(Appended { commit, evicted })
    }

    /// Up to `max` records from the head, not removed.
    pub fn peek(&self, max: usize) -> Vec<Record> {
        self.inner.lock().queue.iter().take(max).cloned().collect()
    }

    /// Up to `max` records from sequence `from` on, marked as being
    /// delivered (see [`Spool::hold`]): a consumer with many records in
    /// flight (the bridge) reads past the ones it already sent.
    pub fn take_from(&self, from: u64, max: usize) -> Vec<Record> {
        let mut inner = self.inner.lock();
        let start = inner.queue.partition_point(|r| r.seq < from);
        let out: Vec<Record> = inner.queue.range(start..).take(max).cloned().collect();
        if let Some(last) = out.last() {
            inner.held_until = inner.held_until.max(last.seq + 1);
        }
        out
    }

    /// Marks the head records up to `last` as being delivered, so that
    /// eviction passes them by until they are acknowledged; false if the
    /// head is no longer `first` (it was evicted since it was read).
    pub fn hold(&self, first: u64, last: u64) -> bool {
        let mut inner = self.inner.lock();
        if inner.queue.front().map(|r| r.seq) != Some(first) {
            return false;
        }
        inner.held_until = inner.held_until.max(last + 1);
        true
    }

    /// Removes a delivered record.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.inner.lock();
        let i = inner.queue.partition_point(|r| r.seq < seq);
        if inner.queue.get(i).is_some_and(|r| r.seq == seq)
            && let Some(r) = inner.queue.remove(i)
        {
            inner.bytes -= r.data.len();
            self.store
                .enqueue(vec![Op::DelSpool(self.name.clone(), seq)]);
        }
    }

    /// Removes and returns the records older than the age limit.
    pub fn expire(&self, now_ms: u64) -> Vec<Record> {
        if self.limits.max_age_ms == 0 {
            return Vec::new();
        }
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while inner.queue.front().is_some_and(|r| {
            r.at_ms >= CLOCK_SET_MS && now_ms.saturating_sub(r.at_ms) > self.limits.max_age_ms
        }) {
            if let Some(r) = inner.queue.pop_front() {
                inner.bytes -= r.data.len();
                out.push(r);
            }
        }
        if !out.is_empty() {
            self.store.enqueue(
                out.iter()
                    .map(|r| Op::DelSpool(self.name.clone(), r.seq))
                    .collect(),
            );
        }
        out
    }

    /// (records, bytes, age of the oldest in ms) for the metrics.
    pub fn depth(&self, now_ms: u64) -> (usize, usize, u64) {
        let inner = self.inner.lock();
        let oldest = inner
            .queue
            .front()
            .map_or(0, |r| now_ms.saturating_sub(r.at_ms));
        (inner.queue.len(), inner.bytes, oldest)
    }

    /// Sets a spool's gauges (records, bytes, age of the oldest) to now.
    pub fn report(&self, m: &crate::metrics::ActionMetrics) {
        let (records, bytes, oldest_ms) = self.depth(now_ms());
        m.depth.set(records as f64);
        m.bytes.set(bytes as f64);
        m.oldest.set(oldest_ms as f64 / 1000.0);
    }

    /// Resolves when something was appended since the last call.
    pub async fn appended(&self) {
        self.notify.notified().await;
    }
}

/// Warnings about what a client can cause are logged at most this often
/// per rule, spool or kind; the counters count every one.
const WARN_EVERY_MS: u64 = 10_000;

/// Lets a warning through at most once per [`WARN_EVERY_MS`].
#[derive(Debug, Default)]
pub struct Throttle(AtomicU64);

impl Throttle {
    /// Whether this warning may be logged now.
    pub fn allow(&self) -> bool {
        let now = now_ms();
        let last = self.0.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Exponential backoff with jitter for a consumer whose target fails: each
/// delay is between half and all of the current step, so consumers failing
/// together do not retry together, and the step doubles up to a maximum.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps from `initial_ms` up to `max_ms`.
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        let initial = Duration::from_millis(initial_ms);
        Self {
            initial,
            max: Duration::from_millis(max_ms).max(initial),
            step: initial,
        }
    }

    /// The next delay; the step after it is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 4];
        let r = ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_or(0.5, |()| {
                f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX)
            });
        let d = self.step.mul_f64(0.5 + r / 2.0);
        self.step = (self.step * 2).min(self.max);
        d
    }

    /// Whether no delay was taken since the last success.
    pub fn is_first(&self) -> bool {
        self.step == self.initial
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// The bridge's spool, which every upstream action appends to: the one
/// contract between the rules engine and the bridge.
pub const UPSTREAM: &str = "upstream";

/// A spool's rows as the store snapshot holds them: (sequence, record).
pub type Rows = Vec<(u64, Vec<u8>)>;

/// Whether a spool's stored rows hold any record (not just its high-water mark).
pub fn has_records(rows: &Rows) -> bool {
    rows.iter().any(|(seq, _)| *seq != HIGH_WATER)
}

/// Deletes what an empty spool left in the store (its high-water mark), for
/// a spool no longer in use.
pub fn forget(store: &Store, name: &str) {
    store.enqueue(vec![Op::DelSpool(name.into(), HIGH_WATER)]);
}

/// Groups a snapshot's spool records by spool name.
pub fn by_name(records: Vec<(String, u64, Vec<u8>)>) -> std::collections::HashMap<String, Rows> {
    let mut out: std::collections::HashMap<String, Rows> = Default::default();
    for (name, seq, data) in records {
        out.entry(name).or_default().push((seq, data));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Action {
        Append(u8),
        AckHead,
        AckNth(usize),
        Reopen,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => (1u8..40).prop_map(Action::Append),
            2 => Just(Action::AckHead),
            1 => (0usize..5).prop_map(Action::AckNth),
            1 => Just(Action::Reopen),
        ]
    }

    fn open(path: &std::path::Path, limits: Limits) -> (Store, Spool) {
        let (store, snap) = Store::open(path, false, Arc::new(Metrics::new())).expect("store");
        let restored = by_name(snap.spools).remove("s").unwrap_or_default();
        let spool = Spool::new("s", store.clone(), limits, restored);
        (store, spool)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// The spool agrees with an in-memory model, across reopenings.
        #[test]
        fn agrees_with_a_model(actions in proptest::collection::vec(action(), 1..40), refuse in any::<bool>()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("db");
                let limits = Limits {
                    max_bytes: 100,
                    max_age_ms: 0,
                    overflow: if refuse { Overflow::RefuseNew } else { Overflow::DropOldest },
                };
                let (mut store, mut spool) = open(&path, limits);
                let mut model: VecDeque<Vec<u8>> = VecDeque::new();
                let mut last_seq = None::<u64>;
                for a in actions {
                    match a {
                        Action::Append(n) => {
                            let data = vec![n; usize::from(n)];
                            let used: usize = model.iter().map(Vec::len).sum();
                            match spool.append(data.clone(), 0) {
                                Ok(appended) => {
                                    appended.commit.await.expect("sent").expect("durable");
                                    let mut room = used;
                                    for e in &appended.evicted {
                                        let d = model.pop_front().expect("evicted from the model too");
                                        assert_eq!(&*e.data, &d[..]);
                                        room -= d.len();
                                    }
                                    assert!(room + data.len() <= 100);
                                    model.push_back(data);
                                    // A new record's number was never used before, reopenings included.
                                    let seq = spool.peek(usize::MAX).last().map(|r| r.seq).expect("appended");
                                    assert!(last_seq.is_none_or(|l| seq > l), "{seq} after {last_seq:?}");
                                    last_seq = Some(seq);
                                }
                                Err(SpoolError::Full(_)) => {
                                    assert!(refuse && used + data.len() > 100);
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        Action::AckHead => {
                            if let Some(r) = spool.peek(1).first() {
                                spool.ack(r.seq);
                                model.pop_front();
                            }
                        }
                        Action::AckNth(i) => {
                            if let Some(r) = spool.peek(i + 1).get(i) {
                                spool.ack(r.seq);
                                model.remove(i);
                            }
                        }
                        Action::Reopen => {
                            store.close().await;
                            (store, spool) = open(&path, limits);
                        }
                    }
                    let records = spool.peek(usize::MAX);
                    let got: Vec<Vec<u8>> = records.iter().map(|r| r.data.to_vec()).collect();
                    assert_eq!(got, model.iter().cloned().collect::<Vec<_>>());
                    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
                    let (n, bytes, _) = spool.depth(0);
                    assert_eq!(n, model.len());
                    assert_eq!(bytes, model.iter().map(Vec::len).sum::<usize>());
                }
                store.close().await;
            });
        }
    }

    #[tokio::test]
    async fn old_records_expire_and_oversize_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_bytes: 10,
            max_age_ms: 1000,
            overflow: Overflow::DropOldest,
        };
        let path = dir.path().join("db");
        let (store, spool) = open(&path, limits);
        const T: u64 = 1_700_000_000_000;
        spool.append(b"a".to_vec(), T).expect("append");
        let last = spool.append(b"b".to_vec(), T + 1500).expect("append");
        last.commit.await.expect("sent").expect("durable");
        // Ages survive a restart.
        store.close().await;
        let (_store, spool) = open(&path, limits);
        let expired = spool.expire(T + 2000);
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired[0].data, b"a");
        assert_eq!(spool.peek(10).len(), 1);
        assert!(matches!(
            spool.append(vec![0; 11], 0),
            Err(SpoolError::TooLarge { size: 11, .. })
        ));
    }

    #[tokio::test]
    async fn records_made_before_the_clock_was_set_do_not_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_bytes: 100,
            max_age_ms: 1000,
            overflow: Overflow::DropOldest,
        };
        let (_store, spool) = open(&dir.path().join("db"), limits);
        // Appended at boot, in 1970; NTP then sets the clock.
        spool.append(b"a".to_vec(), 5_000).expect("append");
        assert!(spool.expire(1_700_000_000_000).is_empty());
        assert_eq!(spool.peek(10).len(), 1);
    }

    #[tokio::test]
    async fn eviction_passes_by_records_being_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_bytes: 3,
            max_age_ms: 0,
            overflow: Overflow::DropOldest,
        };
        let (_store, spool) = open(&dir.path().join("db"), limits);
        for b in [b"a", b"b", b"c"] {
            spool.append(b.to_vec(), 0).expect("append");
        }
        let head = spool.peek(1);
        assert!(spool.hold(head[0].seq, head[0].seq));
        let evicted = spool.append(b"d".to_vec(), 0).expect("append").evicted;
        assert_eq!(&*evicted[0].data, b"b", "the held head stays");
        spool.ack(head[0].seq);
        let left: Vec<_> = spool.peek(10).iter().map(|r| r.data[0]).collect();
        assert_eq!(left, b"cd");
        // A head that was evicted since it was read is not held.
        let stale = spool.peek(1)[0].seq;
        spool.append(b"e".to_vec(), 0).expect("append");
        spool.append(b"f".to_vec(), 0).expect("append");
        assert!(!spool.hold(stale, stale));
    }
}
