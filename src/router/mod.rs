//! Message routing: subscriptions, retained messages, and fan-out into
//! session mailboxes.
//!
//! A publish becomes one [`Message`] behind an `Arc`; every subscriber gets
//! a [`Delivery`] that points at it. The trie is read-mostly behind a
//! `parking_lot` lock held only for the lookup, never across `.await`.
//!
//! Mailboxes are bounded with a named overflow policy ([`Mailbox::push`]):
//! QoS 0 beyond `max_queued_messages` is dropped; QoS 1/2 is kept up to
//! `max_stored_messages`, after which a connected consumer is disconnected
//! as too slow and an offline session drops the message. Every drop is
//! counted by reason.
//!
//! Durability: a QoS 1/2 message for a persistent session is written to the
//! store under the session's next sequence number before the publisher is
//! acknowledged; [`Router::publish`] returns the writes, the caller commits
//! them.

pub mod retained;
pub mod trie;

use crate::codec::{self, ByteStr, Protocol, PublishProperties, QoS, SubOptions};
use crate::metrics::{DropReason, Metrics};
use crate::store::{Commit, Op, Store, StoreError, unix_ms};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, oneshot};
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
        let mut msg = Self::new(
            p.topic,
            p.payload,
            p.qos,
            p.retain,
            p.properties,
            now,
            Origin::gateway(),
        );
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

/// Limits every mailbox obeys.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    /// QoS 0 is dropped beyond this many queued deliveries.
    pub queued: usize,
    /// QoS 1/2 is refused beyond this many.
    pub stored: usize,
}

/// What happened to a pushed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the session.
    Queued,
    /// Dropped for the given reason (already counted).
    Dropped(DropReason),
}

/// A session's inbox: filled by the router, drained by the connection that owns the session.
#[derive(Debug)]
pub struct Mailbox {
    /// Session id (unique for the life of the process).
    pub session_id: u64,
    /// Client identifier.
    pub client_id: Arc<str>,
    persistent: AtomicBool,
    online: AtomicBool,
    /// Set when the consumer made no progress for a whole hold: it paces
    /// nobody until it drains below its watermark again.
    stalled: AtomicBool,
    seq: AtomicU64,
    state: Mutex<Inbox>,
    notify: Notify,
    kick: Notify,
    /// Bumped when a pressed mailbox drains below its watermark (or its
    /// consumer goes away or stalls), so that paced publishers go on. Made
    /// when a publisher first waits: most mailboxes never need one.
    relieved: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
    limits: MailboxLimits,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Delivery>,
    slow: bool,
}

impl Mailbox {
    /// A new, empty mailbox.
    pub fn new(
        session_id: u64,
        client_id: Arc<str>,
        persistent: bool,
        limits: MailboxLimits,
    ) -> Self {
        Self {
            session_id,
            client_id,
            persistent: AtomicBool::new(persistent),
            online: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            state: Mutex::new(Inbox::default()),
            notify: Notify::new(),
            kick: Notify::new(),
            relieved: std::sync::OnceLock::new(),
            limits,
        }
    }

    /// Half the lower bound: past it, a connected consumer is falling
    /// behind, and its publishers are paced (for a bounded time) before it
    /// loses QoS 0 messages or is disconnected as too slow.
    fn watermark(&self) -> usize {
        (self.limits.queued.min(self.limits.stored) / 2).max(1)
    }

    /// Whether publishers should wait for this consumer: it is connected,
    /// past its watermark, and was not found stalled.
    fn behind(&self, len: usize) -> bool {
        len >= self.watermark()
            && self.online.load(Ordering::Relaxed)
            && !self.stalled.load(Ordering::Relaxed)
    }

    /// Whether publishers should still wait for this consumer.
    pub fn is_pressed(&self) -> bool {
        let len = self.state.lock().queue.len();
        self.behind(len)
    }

    /// The consumer made no progress for a whole hold: publishers stop
    /// waiting for it until it drains below its watermark, so that a
    /// consumer that stopped reading cannot slow anyone down for long.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::Relaxed);
        self.relieve();
    }

    /// Changes when the mailbox drains below its watermark or goes offline.
    pub fn relief(&self) -> tokio::sync::watch::Receiver<u64> {
        self.relieved
            .get_or_init(|| tokio::sync::watch::Sender::new(0))
            .subscribe()
    }

    fn relieve(&self) {
        if let Some(tx) = self.relieved.get().filter(|tx| tx.receiver_count() > 0) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Whether QoS 1/2 deliveries are written to the store.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    /// Changes persistence (MQTT 5 DISCONNECT may change the session expiry).
    pub fn set_persistent(&self, p: bool) {
        self.persistent.store(p, Ordering::Relaxed);
    }

    /// Marks whether a connection is draining this mailbox; a new connection
    /// starts with a clean record.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
        if online {
            self.stalled.store(false, Ordering::Relaxed);
            self.take_slow();
        } else {
            self.relieve();
        }
    }

    /// Whether the consumer was found too slow since the last call.
    pub fn take_slow(&self) -> bool {
        std::mem::take(&mut self.state.lock().slow)
    }

    /// Continues sequence numbers after those already stored.
    pub fn resume_seq(&self, last: u64) {
        self.seq.fetch_max(last, Ordering::Relaxed);
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues a delivery under the overflow policy described in the module docs.
    pub fn push(&self, d: Delivery, metrics: &Metrics) -> Pushed {
        self.push_watched(d, metrics).0
    }

    /// [`Mailbox::push`], also telling how far behind a connected consumer
    /// past its watermark now is, read under the same lock.
    fn push_watched(&self, d: Delivery, metrics: &Metrics) -> (Pushed, Option<usize>) {
        let mut inbox = self.state.lock();
        let len = inbox.queue.len();
        let verdict = if d.qos == QoS::AtMostOnce && len >= self.limits.queued {
            Pushed::Dropped(DropReason::QueueFull)
        } else if len >= self.limits.stored {
            if self.online.load(Ordering::Relaxed) {
                inbox.slow = true;
                self.kick.notify_one();
                Pushed::Dropped(DropReason::SlowConsumer)
            } else {
                Pushed::Dropped(DropReason::SessionFull)
            }
        } else {
            Pushed::Queued
        };
        match verdict {
            Pushed::Queued => inbox.queue.push_back(d),
            Pushed::Dropped(reason) => metrics.count_drop(reason),
        }
        let len = inbox.queue.len();
        let behind = self.behind(len).then_some(len);
        drop(inbox);
        self.notify.notify_one();
        (verdict, behind)
    }

    /// Puts deliveries back at the front (a connection ended before sending them).
    pub fn requeue_front(&self, items: impl DoubleEndedIterator<Item = Delivery>) {
        let mut inbox = self.state.lock();
        for d in items.rev() {
            inbox.queue.push_front(d);
        }
    }

    /// Moves up to `max_acked` QoS 1/2 deliveries into `out` (QoS 0 ones do
    /// not count), at most 1024 in all.
    pub fn drain(&self, out: &mut Vec<Delivery>, max_acked: usize) {
        let mut inbox = self.state.lock();
        let mut acked = 0;
        while let Some(front) = inbox.queue.front() {
            if front.qos != QoS::AtMostOnce {
                if acked == max_acked {
                    break;
                }
                acked += 1;
            }
            if let Some(d) = inbox.queue.pop_front() {
                out.push(d);
            }
            if out.len() >= 1024 {
                break;
            }
        }
        let below = inbox.queue.len() < self.watermark();
        drop(inbox);
        if below && !out.is_empty() {
            self.stalled.store(false, Ordering::Relaxed);
            self.relieve();
        }
    }

    /// Number of queued deliveries.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something was pushed since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Resolves when the consumer may have been found too slow (confirm with
    /// [`Mailbox::take_slow`]); wakes a connection even while it is stuck writing.
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    /// Takes every queued delivery (the session is being discarded).
    pub fn clear(&self) -> Vec<Delivery> {
        self.state.lock().queue.drain(..).collect()
    }
}

/// A subscription as the trie holds it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing session's mailbox.
    pub mailbox: Arc<Mailbox>,
    /// Options given in SUBSCRIBE.
    pub options: SubOptions,
    /// MQTT 5 subscription identifier.
    pub sub_id: Option<u32>,
}

impl trie::Entry for Subscriber {
    fn owner(&self) -> u64 {
        self.mailbox.session_id
    }
}

/// The result of routing one publish.
#[derive(Debug)]
pub struct Routed {
    /// Sessions the message was queued for.
    pub matched: usize,
    /// Resolves when the publish is durable; `None` if nothing had to be written.
    pub commit: Option<Commit>,
    /// A connected subscriber this message found past its watermark: the
    /// publisher should wait for it to drain (its acknowledgement at QoS 1/2,
    /// its next read at QoS 0).
    pub pressure: Option<Arc<Mailbox>>,
}

/// A retained message and when it was set (ms since the epoch), which
/// `GetRetainedMessage` reports.
#[derive(Debug, Clone)]
pub struct Kept {
    /// The message.
    pub msg: Arc<Message>,
    /// When it was retained.
    pub modified_ms: u64,
}

/// Marks a retained record that begins with the time it was set. Older
/// records begin with an expiry in milliseconds, whose first byte is 0
/// until the year 2540.
const RETAINED_TIMED: u8 = 0xFF;

/// The stored form of a retained message: the marker, when it was set,
/// then the message's record.
fn retained_record(modified_ms: u64, msg: &Message, now: Instant) -> Vec<u8> {
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

/// Subscriptions and retained messages of the whole gateway.
#[derive(Debug)]
pub struct Router {
    subs: RwLock<trie::Trie<Subscriber>>,
    retained: RwLock<retained::Retained<Kept>>,
    store: Store,
    metrics: Arc<Metrics>,
    tap: Tap,
    shadows: Tap,
}

/// A published message offered to the rules engine or the shadow service.
#[derive(Debug)]
pub struct Tapped {
    /// The message.
    pub msg: Arc<Message>,
    /// What must be durable before this client's own work counts: the
    /// publish's writes, and the client offered the message before it.
    pub durable: Option<Commit>,
    /// For a QoS 1/2 publish: told once the message and everything the
    /// client made of it (rule outputs, a stored shadow)
    /// are durable; the publisher's acknowledgement waits for it.
    pub done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
}

/// Topic filters (the rules' FROM clauses, the shadow service's request
/// topics) in a trie like subscriptions, so that finding the ones a topic
/// matches costs the same for ten filters as for thousands.
#[derive(Debug, Default)]
pub struct FilterIndex {
    trie: trie::Trie<Indexed>,
    /// Whether every filter begins with a `$` level: such filters match only
    /// `$` topics [MQTT-4.7.2-1], so any other topic is answered without a
    /// look-up (every ordinary publish, for the shadow service's index).
    only_dollar: bool,
}

/// The position of a filter's owner (a rule) in the caller's list.
#[derive(Debug)]
struct Indexed(usize);

impl trie::Entry for Indexed {
    fn owner(&self) -> u64 {
        self.0 as u64
    }
}

impl FilterIndex {
    /// Indexes `filters`, each under the position of its owner.
    pub fn new<'a>(filters: impl IntoIterator<Item = (usize, &'a str)>) -> Self {
        let mut trie = trie::Trie::default();
        let mut only_dollar = true;
        for (i, filter) in filters {
            only_dollar &= filter.starts_with('$');
            trie.insert(filter, None, Indexed(i));
        }
        Self { trie, only_dollar }
    }

    /// Whether any filter matches `topic`.
    pub fn matches_any(&self, topic: &str) -> bool {
        if self.trie.is_empty() || (self.only_dollar && !topic.starts_with('$')) {
            return false;
        }
        let mut any = false;
        self.trie.for_each_match(topic, &mut |_| any = true);
        any
    }

    /// The positions of the filters `topic` matches, in ascending order.
    pub fn matching(&self, topic: &str, out: &mut Vec<usize>) {
        out.clear();
        self.trie.for_each_match(topic, &mut |m| {
            if let trie::Match::Plain(Indexed(i)) = m {
                out.push(*i);
            }
        });
        out.sort_unstable();
    }
}

/// The bounded queue from publishers to an internal client that works
/// outside connection tasks: the rules engine (topics some rule's FROM
/// filter matches) or the shadow service (its request topics).
#[derive(Debug)]
pub struct Tap {
    filters: ArcSwap<FilterIndex>,
    queue: Mutex<TapQueue>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct TapQueue {
    items: VecDeque<Tapped>,
    /// Payload bytes queued.
    bytes: usize,
}

impl Tap {
    fn new() -> Self {
        Self {
            filters: ArcSwap::default(),
            queue: Mutex::default(),
            notify: Notify::new(),
        }
    }

    /// Sets the filters whose messages are offered (the rules' FROM clauses,
    /// or the shadow service's request topics).
    pub fn set_filters(&self, filters: Arc<FilterIndex>) {
        self.filters.store(filters);
    }

    /// Whether a message on `topic` is to be offered.
    pub fn wants(&self, topic: &str) -> bool {
        self.filters.load().matches_any(topic)
    }

    fn has_room(&self) -> bool {
        let q = self.queue.lock();
        q.items.len() < TAP_MESSAGES && q.bytes < TAP_BYTES
    }

    fn push(&self, t: Tapped) {
        let mut q = self.queue.lock();
        q.bytes += t.msg.payload.len();
        q.items.push_back(t);
        drop(q);
        self.notify.notify_one();
    }

    /// Moves up to `max` offered messages into `out`, oldest first.
    pub fn take(&self, out: &mut Vec<Tapped>, max: usize) {
        let mut q = self.queue.lock();
        let n = q.items.len().min(max);
        let start = out.len();
        out.extend(q.items.drain(..n));
        q.bytes -= out[start..]
            .iter()
            .map(|t| t.msg.payload.len())
            .sum::<usize>();
    }

    /// Resolves when something was offered since the last call.
    pub async fn offered(&self) {
        self.notify.notified().await;
    }
}

struct Target {
    mailbox: Arc<Mailbox>,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    seq: u64,
}

/// Messages, and payload bytes, waiting for the rules engine.
const TAP_MESSAGES: usize = 16_384;
const TAP_BYTES: usize = 64 * 1024 * 1024;

thread_local! {
    /// Matches of the publish being routed, reused so routing does not allocate.
    static TARGETS: std::cell::RefCell<Vec<Target>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn add_plain(targets: &mut Vec<Target>, s: &Subscriber, msg: &Message) {
    if s.options.no_local && s.mailbox.session_id == msg.origin.session {
        return;
    }
    let qos = msg.qos.min(s.options.qos);
    let retain = s.options.retain_as_published && msg.retain;
    // Overlapping subscriptions of one session get one delivery at the
    // highest QoS with every identifier [MQTT-3.3.4-2, MQTT-3.3.4-3].
    if let Some(t) = targets
        .iter_mut()
        .find(|t| t.mailbox.session_id == s.mailbox.session_id)
    {
        t.qos = t.qos.max(qos);
        t.retain |= retain;
        t.sub_ids.extend(s.sub_id);
        return;
    }
    targets.push(Target {
        mailbox: s.mailbox.clone(),
        qos,
        retain,
        sub_ids: s.sub_id.into_iter().collect(),
        seq: 0,
    });
}

/// Picks one member of a shared group, round robin, preferring one that is online.
fn add_shared(targets: &mut Vec<Target>, g: &trie::Group<Subscriber>, msg: &Message) {
    let n = g.members.len();
    if n == 0 {
        return;
    }
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    let pick = (0..n)
        .map(|i| &g.members[(start + i) % n])
        .find(|m| m.mailbox.online.load(Ordering::Relaxed))
        .unwrap_or(&g.members[start % n]);
    targets.push(Target {
        mailbox: pick.mailbox.clone(),
        qos: msg.qos.min(pick.options.qos),
        retain: false,
        sub_ids: pick.sub_id.into_iter().collect(),
        seq: 0,
    });
}

impl Router {
    /// An empty router writing durable state to `store`.
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        Self {
            subs: RwLock::new(trie::Trie::default()),
            retained: RwLock::new(retained::Retained::default()),
            store,
            metrics,
            tap: Tap::new(),
            shadows: Tap::new(),
        }
    }

    /// The rules engine's queue.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The shadow service's queue: requests on its reserved topics.
    pub fn shadow_tap(&self) -> &Tap {
        &self.shadows
    }

    /// Whether `tap` is to be offered this message: a QoS 1/2 message it has
    /// no room for refuses the publish before anything changes, a QoS 0 one
    /// is dropped for it. Concurrent publishers may each take the last slot,
    /// so a queue can exceed its bound by one message per publishing thread.
    fn offers(
        &self,
        tap: &Tap,
        msg: &Message,
        name: &str,
        busy: DropReason,
    ) -> Result<bool, StoreError> {
        if !tap.wants(msg.topic.as_str()) {
            return Ok(false);
        }
        if tap.has_room() {
            return Ok(true);
        }
        if msg.qos != QoS::AtMostOnce {
            return Err(StoreError::Full(name.into()));
        }
        self.metrics.count_drop(busy);
        Ok(false)
    }

    /// Adds or replaces a subscription; returns true if it is new.
    pub fn subscribe(&self, filter: &str, share: Option<&str>, sub: Subscriber) -> bool {
        let mut subs = self.subs.write();
        let new = subs.insert(filter, share, sub);
        self.metrics.subscriptions.set(subs.len() as f64);
        new
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, share: Option<&str>, session_id: u64) -> bool {
        let mut subs = self.subs.write();
        let existed = subs.remove(filter, share, session_id);
        self.metrics.subscriptions.set(subs.len() as f64);
        existed
    }

    /// Whether a message on `topic` would reach anyone: a subscriber or a
    /// rule (the bridge's forwards are rules too).
    pub fn is_heard(&self, topic: &str) -> bool {
        if self.tap.wants(topic) {
            return true;
        }
        let mut any = false;
        self.subs.read().for_each_match(topic, &mut |_| any = true);
        any
    }

    /// Retained messages matching `filter`.
    pub fn retained(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.retained
            .read()
            .for_each_match(filter, &mut |k| out.push(k.msg.clone()));
        out
    }

    /// The retained message of `topic`, if any.
    pub fn retained_message(&self, topic: &str) -> Option<Kept> {
        self.retained.read().get(topic).cloned()
    }

    /// Every retained message, by topic.
    pub fn retained_messages(&self) -> Vec<Kept> {
        let mut out = Vec::new();
        self.retained.read().for_each(&mut |k| out.push(k.clone()));
        out.sort_unstable_by(|a, b| a.msg.topic.as_str().cmp(b.msg.topic.as_str()));
        out
    }

    /// Loads a retained message read from the store at startup.
    pub fn restore_retained(&self, msg: Arc<Message>, modified_ms: u64) {
        let mut r = self.retained.write();
        let topic = msg.topic.clone();
        r.insert(topic.as_str(), Kept { msg, modified_ms });
        self.metrics.retained.set(r.len() as f64);
    }

    /// Updates retained state and queues the message for every matching session.
    ///
    /// Durable writes (the retained message, the message for each persistent
    /// session at QoS 1/2) are queued in the store before any memory changes
    /// and before any subscriber can see the message, so a delivery's
    /// deletion can never reach the store ahead of its insertion, and the
    /// retained lock orders concurrent retained publishes the same way in
    /// memory and in the store. If the store cannot take the writes, nothing
    /// changes and the error is returned.
    pub fn publish(&self, msg: &Arc<Message>, now: Instant) -> Result<Routed, StoreError> {
        let topic = msg.topic.as_str();
        // Decide on the internal clients first, so that one without room
        // refuses the publish before anything changes. (A spool that
        // refuses the rule output later refuses the publish through its
        // commit, after subscribers may have it: the publisher sends it
        // again, and duplicates are allowed where loss is not.)
        let ruled = self.offers(
            &self.tap,
            msg,
            "the rules engine queue",
            DropReason::RulesBusy,
        )?;
        let shadowed = self.offers(
            &self.shadows,
            msg,
            "the shadow service queue",
            DropReason::ShadowsBusy,
        )?;
        // The clock is read before the lock is taken, and only for a retain.
        let modified_ms = if msg.retain {
            unix_ms(SystemTime::now())
        } else {
            0
        };
        let mut retained = msg.retain.then(|| self.retained.write());
        let mut ops = Vec::new();
        if retained.is_some() {
            ops.push(if msg.payload.is_empty() {
                Op::DelRetained(topic.to_owned())
            } else {
                Op::PutRetained(topic.to_owned(), retained_record(modified_ms, msg, now))
            });
        }
        TARGETS.with_borrow_mut(|targets| {
            targets.clear();
            self.subs.read().for_each_match(topic, &mut |m| match m {
                trie::Match::Plain(s) => add_plain(targets, s, msg),
                trie::Match::Group(g) => add_shared(targets, g, msg),
            });
            let mut record = None;
            for t in targets.iter_mut() {
                if t.qos != QoS::AtMostOnce && t.mailbox.is_persistent() {
                    t.seq = t.mailbox.next_seq();
                    let record = record.get_or_insert_with(|| msg.to_record(now));
                    ops.push(Op::PutQueued(
                        t.mailbox.client_id.clone(),
                        t.seq,
                        queued_record(record, t.qos, t.retain, &t.sub_ids).into(),
                    ));
                }
            }
            let mut commit = if ops.is_empty() {
                None
            } else {
                Some(self.store.try_submit(ops)?)
            };
            if let Some(r) = retained.as_mut() {
                if msg.payload.is_empty() {
                    r.remove(topic);
                } else {
                    r.insert(
                        topic,
                        Kept {
                            msg: msg.clone(),
                            modified_ms,
                        },
                    );
                }
                self.metrics.retained.set(r.len() as f64);
            }
            drop(retained);
            let mut matched = 0;
            // The subscriber furthest behind, so that a paced publisher waits
            // for the slowest (never for its own session).
            let mut pressure: Option<(usize, Arc<Mailbox>)> = None;
            for t in targets.drain(..) {
                let (mailbox, seq) = (t.mailbox, t.seq);
                let delivery = Delivery {
                    msg: msg.clone(),
                    qos: t.qos,
                    retain: t.retain,
                    sub_ids: t.sub_ids,
                    seq,
                };
                match mailbox.push_watched(delivery, &self.metrics) {
                    (Pushed::Queued, behind) => {
                        matched += 1;
                        if let Some(len) = behind
                            && mailbox.session_id != msg.origin.session
                            && pressure.as_ref().is_none_or(|(most, _)| len > *most)
                        {
                            pressure = Some((len, mailbox));
                        }
                    }
                    (Pushed::Dropped(_), _) if seq != 0 => {
                        self.store
                            .enqueue(vec![Op::DelQueued(mailbox.client_id.clone(), seq)]);
                    }
                    (Pushed::Dropped(_), _) => {}
                }
            }
            // Each internal client waits for what came before it (the
            // publish's own writes, then the other client) and the
            // acknowledgement waits for the last.
            for (tap, offered) in [(&self.tap, ruled), (&self.shadows, shadowed)] {
                if !offered {
                    continue;
                }
                matched += 1;
                let mut t = Tapped {
                    msg: msg.clone(),
                    durable: None,
                    done: None,
                };
                if msg.qos != QoS::AtMostOnce {
                    let (tx, rx) = oneshot::channel();
                    t.durable = commit.replace(rx);
                    t.done = Some(tx);
                }
                tap.push(t);
            }
            Ok(Routed {
                matched,
                commit,
                pressure: pressure.map(|(_, mailbox)| mailbox),
            })
        })
    }
}

/// A queued message as stored: how it is to be delivered, then the message.
fn queued_record(message: &[u8], qos: QoS, retain: bool, sub_ids: &[u32]) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_records_keep_their_time_and_older_ones_still_read() {
        let record = [0u8, 0, 1, 0x8f, 0, 0, 0, 0, 0x30, 0x00];
        assert_eq!(read_retained_record(&record), (None, &record[..]));
        let msg = message("t", QoS::AtLeastOnce, true, 1);
        let now = Instant::now();
        let timed = retained_record(1_700_000_000_000, &msg, now);
        let (modified, rest) = read_retained_record(&timed);
        assert_eq!(modified, Some(1_700_000_000_000));
        assert_eq!(
            Message::from_record(rest, now).map(|m| m.topic),
            Some(msg.topic.clone())
        );
        assert_eq!(read_retained_record(&[RETAINED_TIMED, 1]).1, &[] as &[u8]);
    }

    fn message(topic: &str, qos: QoS, retain: bool, session: u64) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"p"),
            qos,
            retain,
            properties: PublishProperties::default(),
            expires_at: None,
            origin: Arc::new(Origin {
                session,
                ..Origin::default()
            }),
        })
    }

    fn mailbox(id: u64, persistent: bool) -> Arc<Mailbox> {
        Arc::new(Mailbox::new(
            id,
            format!("c{id}").into(),
            persistent,
            MailboxLimits {
                queued: 2,
                stored: 3,
            },
        ))
    }

    fn sub(mb: &Arc<Mailbox>, qos: QoS, id: Option<u32>) -> Subscriber {
        Subscriber {
            mailbox: mb.clone(),
            options: SubOptions::qos(qos),
            sub_id: id,
        }
    }

    fn router(dir: &tempfile::TempDir) -> Router {
        let metrics = Arc::new(Metrics::new());
        let (store, _) =
            Store::open(&dir.path().join("db"), false, metrics.clone()).expect("store");
        Router::new(store, metrics)
    }

    #[test]
    fn publishers_wait_for_the_subscriber_furthest_behind_never_for_themselves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = router(&dir);
        let (a, b, own) = (mailbox(1, false), mailbox(2, false), mailbox(3, false));
        for mb in [&a, &b, &own] {
            mb.set_online(true);
            r.subscribe("t", None, sub(mb, QoS::AtMostOnce, None));
        }
        r.subscribe("u", None, sub(&b, QoS::AtMostOnce, None));
        let now = Instant::now();
        let publish = |topic: &str, from: u64| {
            r.publish(&message(topic, QoS::AtMostOnce, false, from), now)
                .expect("publish")
                .pressure
        };
        assert!(publish("u", 9).is_some_and(|p| Arc::ptr_eq(&p, &b)));
        // b holds two, a and the publisher's own session one each.
        assert!(publish("t", 3).is_some_and(|p| Arc::ptr_eq(&p, &b)));
        let mut out = Vec::new();
        for mb in [&a, &b, &own] {
            mb.drain(&mut out, 10);
        }
        publish("u", 9);
        // b is furthest behind, but it is the publisher.
        assert!(publish("t", 2).is_some_and(|p| !Arc::ptr_eq(&p, &b)));
        // A stalled subscriber paces nobody until it drains.
        b.stall();
        assert!(!b.is_pressed());
        b.drain(&mut out, 10);
        publish("u", 9);
        assert!(b.is_pressed());
        // Nor does one that is offline.
        b.set_online(false);
        assert!(!b.is_pressed());
    }

    #[test]
    fn filter_index_finds_every_matching_filter_in_order() {
        let index = FilterIndex::new([
            (0, "a/+"),
            (1, "#"),
            (3, "a/b"),
            (4, "$aws/things/+/shadow/update"),
            (5, "a/b"),
        ]);
        let mut out = Vec::new();
        index.matching("a/b", &mut out);
        assert_eq!(out, [0, 1, 3, 5]);
        index.matching("c", &mut out);
        assert_eq!(out, [1]);
        // Wildcards at the first level never match `$` topics.
        index.matching("$aws/things/t1/shadow/update", &mut out);
        assert_eq!(out, [4]);
        assert!(!FilterIndex::new([(0, "x/#")]).matches_any("y"));
        assert!(!FilterIndex::default().matches_any("a"));
    }

    #[test]
    fn overlapping_subscriptions_give_one_delivery_at_max_qos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = router(&dir);
        let mb = mailbox(1, false);
        r.subscribe("a/+", None, sub(&mb, QoS::AtMostOnce, Some(1)));
        r.subscribe("a/#", None, sub(&mb, QoS::AtLeastOnce, Some(2)));
        let routed = r
            .publish(&message("a/b", QoS::ExactlyOnce, false, 0), Instant::now())
            .expect("routed");
        assert_eq!(routed.matched, 1);
        assert!(routed.commit.is_none(), "nothing durable to write");
        let mut out = Vec::new();
        mb.drain(&mut out, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].qos, QoS::AtLeastOnce);
        let mut ids = out[0].sub_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
    }

    #[tokio::test]
    async fn persistent_sessions_get_durable_writes_and_no_local_is_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = router(&dir);
        let durable = mailbox(1, true);
        let own = mailbox(2, false);
        r.subscribe("t", None, sub(&durable, QoS::AtLeastOnce, Some(9)));
        let mut nl = sub(&own, QoS::AtLeastOnce, None);
        nl.options.no_local = true;
        r.subscribe("t", None, nl);
        let now = Instant::now();
        let routed = r
            .publish(&message("t", QoS::AtLeastOnce, true, 2), now)
            .expect("routed");
        assert_eq!(routed.matched, 1);
        let commit = routed.commit.expect("durable writes");
        commit.await.expect("sent").expect("written");
        assert!(own.is_empty());
        assert_eq!(r.retained("t").len(), 1);
        let clear = message("t", QoS::AtMostOnce, true, 0);
        let clear = Arc::new(Message {
            payload: Bytes::new(),
            ..Arc::unwrap_or_clone(clear)
        });
        r.publish(&clear, now).expect("routed");
        assert!(r.retained("t").is_empty());
        r.store.close().await;
        let (_, snap) =
            Store::open(&dir.path().join("db"), false, Arc::new(Metrics::new())).expect("reopen");
        assert!(snap.retained.is_empty(), "the clear reached the store too");
    }

    #[test]
    fn queued_records_keep_how_they_are_delivered() {
        let now = Instant::now();
        let msg = message("q", QoS::ExactlyOnce, true, 0);
        let rec = queued_record(&msg.to_record(now), QoS::AtLeastOnce, true, &[3, 70_000]);
        let d = delivery_from_record(&rec, 5, now).expect("readable");
        assert_eq!((d.qos, d.retain, d.seq), (QoS::AtLeastOnce, true, 5));
        assert_eq!(d.sub_ids, vec![3, 70_000]);
        assert_eq!(d.msg.topic.as_str(), "q");
        assert!(delivery_from_record(&rec[..5], 5, now).is_none());
    }

    #[test]
    fn overflow_policy() {
        let metrics = Metrics::new();
        let mb = mailbox(1, false);
        let d = |qos| Delivery {
            msg: message("t", qos, false, 0),
            qos,
            retain: false,
            sub_ids: vec![],
            seq: 0,
        };
        assert_eq!(mb.push(d(QoS::AtMostOnce), &metrics), Pushed::Queued);
        assert_eq!(mb.push(d(QoS::AtMostOnce), &metrics), Pushed::Queued);
        assert_eq!(
            mb.push(d(QoS::AtMostOnce), &metrics),
            Pushed::Dropped(DropReason::QueueFull)
        );
        assert_eq!(mb.push(d(QoS::AtLeastOnce), &metrics), Pushed::Queued);
        assert_eq!(
            mb.push(d(QoS::AtLeastOnce), &metrics),
            Pushed::Dropped(DropReason::SessionFull)
        );
        mb.set_online(true);
        assert_eq!(
            mb.push(d(QoS::AtLeastOnce), &metrics),
            Pushed::Dropped(DropReason::SlowConsumer)
        );
        let mut out = Vec::new();
        assert!(mb.take_slow(), "slow consumer is reported");
        assert!(!mb.take_slow(), "once");
        mb.drain(&mut out, 10);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn records_roundtrip_with_expiry() {
        let now = Instant::now();
        let mut m = Arc::unwrap_or_clone(message("a/b", QoS::AtLeastOnce, true, 0));
        m.expires_at = Some(now + Duration::from_secs(60));
        m.properties.user_properties.push(("k".into(), "v".into()));
        let rec = m.to_record(now);
        let back = Message::from_record(&rec, now).expect("readable");
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.properties, m.properties);
        let left = back.remaining(now).expect("not expired").expect("expires");
        assert!((58..=60).contains(&left), "{left}");
        assert!(Message::from_record(b"junk", now).is_none());
    }
}
