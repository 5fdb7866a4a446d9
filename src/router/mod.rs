//! Message routing: subscriptions, retained messages, and fan-out into
//! session mailboxes.
//!
//! A publish becomes one [`Message`] behind an `Arc`; every subscriber gets
//! a [`Delivery`] that points at it. The trie is read-mostly behind a
//! `parking_lot` lock held only for the lookup, never across `.await`.
//!
//! Durability: a QoS 1/2 message for a persistent session is written to the
//! store under the session's next sequence number before the publisher is
//! acknowledged; [`Router::publish`] returns the writes, the caller commits
//! them.
//!
//! - [`message`]: the message and its record encodings.
//! - [`mailbox`]: a session's mailbox and its overflow policy.
//! - [`flow`]: pacing publishers to their subscribers, both sides.
//! - [`tap`]: what the rules engine and the shadow service are offered.
//! - [`trie`], [`retained`]: subscriptions and retained messages by topic.

pub mod flow;
pub mod mailbox;
pub mod message;
pub mod retained;
pub mod tap;
pub mod trie;

pub use mailbox::{Mailbox, MailboxLimits, Pushed};
pub use message::{Delivery, Message, Origin, delivery_from_record, read_retained_record};
pub use tap::{FilterIndex, Tap, Tapped, release};

use crate::codec::{QoS, SubOptions};
use crate::metrics::{DropReason, LimitKind, Metrics};
use crate::store::{Commit, Op, Store, StoreError, unix_ms};
use message::{queued_record, retained_record};
use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

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

/// Subscriptions and retained messages of the whole gateway.
#[derive(Debug)]
pub struct Router {
    subs: RwLock<trie::Trie<Subscriber>>,
    retained: RwLock<RetainedSet>,
    retain_quota: retained::Quota,
    store: Store,
    metrics: Arc<Metrics>,
    tap: Tap,
    shadows: Tap,
    provisioning: Tap,
    jobs: Tap,
}

/// Retained messages and what they hold, under one lock.
#[derive(Debug, Default)]
struct RetainedSet {
    tree: retained::Retained<Kept>,
    usage: retained::Usage,
}

/// What a retained message counts against its quota: its topic and payload.
fn held(msg: &Message) -> retained::Held<'_> {
    (
        msg.origin.principal.as_deref(),
        msg.topic.len() + msg.payload.len(),
    )
}

impl RetainedSet {
    fn put(&mut self, topic: &str, kept: Kept) {
        self.usage
            .add(kept.msg.origin.principal.as_ref(), held(&kept.msg).1);
        if let Some(old) = self.tree.insert(topic, kept) {
            let (owner, bytes) = held(&old.msg);
            self.usage.remove(owner, bytes);
        }
    }

    fn delete(&mut self, topic: &str) {
        if let Some(old) = self.tree.remove(topic) {
            let (owner, bytes) = held(&old.msg);
            self.usage.remove(owner, bytes);
        }
    }
}

struct Target {
    mailbox: Arc<Mailbox>,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    seq: u64,
}

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
    /// An empty router writing durable state to `store`, keeping retained
    /// messages within `retain_quota`.
    pub fn new(store: Store, metrics: Arc<Metrics>, retain_quota: retained::Quota) -> Self {
        Self {
            subs: RwLock::new(trie::Trie::default()),
            retained: RwLock::new(RetainedSet::default()),
            retain_quota,
            store,
            metrics,
            tap: Tap::new(),
            shadows: Tap::new(),
            provisioning: Tap::new(),
            jobs: Tap::new(),
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

    /// The fleet provisioning service's queue: requests on its reserved topics.
    pub fn provisioning_tap(&self) -> &Tap {
        &self.provisioning
    }

    /// The jobs service's queue: device requests on its reserved topics.
    pub fn jobs_tap(&self) -> &Tap {
        &self.jobs
    }

    /// Delivers `msg` to one session alone, through those of its
    /// subscriptions that match: the answer to a request that is the
    /// requester's only (a new certificate's private key). Nothing is
    /// stored for it: a session gone meanwhile asks again. Whether it was
    /// delivered.
    pub fn answer(&self, msg: &Arc<Message>, session_id: u64) -> bool {
        let mut targets = Vec::new();
        self.subs
            .read()
            .for_each_match(msg.topic.as_str(), &mut |m| {
                if let trie::Match::Plain(s) = m
                    && s.mailbox.session_id == session_id
                {
                    add_plain(&mut targets, s, msg);
                }
            });
        let mut delivered = false;
        for t in targets {
            let d = Delivery {
                msg: msg.clone(),
                qos: t.qos,
                retain: t.retain,
                sub_ids: t.sub_ids,
                seq: 0,
            };
            delivered |= matches!(t.mailbox.push(d, &self.metrics), Pushed::Queued);
        }
        delivered
    }

    /// Whether `tap` is to be offered this message: a QoS 1/2 message it has
    /// no room for refuses the publish before anything changes, a QoS 0 one
    /// is dropped for it. Concurrent publishers may each take the last slot,
    /// so a queue can exceed its bound by one message per publishing thread.
    fn offers(
        &self,
        tap: &Tap,
        wanted: bool,
        msg: &Message,
        name: &str,
        busy: DropReason,
    ) -> Result<bool, StoreError> {
        if !wanted {
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
            .tree
            .for_each_match(filter, &mut |k| out.push(k.msg.clone()));
        out
    }

    /// The retained message of `topic`, if any.
    pub fn retained_message(&self, topic: &str) -> Option<Kept> {
        self.retained.read().tree.get(topic).cloned()
    }

    /// Every retained message, by topic.
    pub fn retained_messages(&self) -> Vec<Kept> {
        let mut out = Vec::new();
        self.retained
            .read()
            .tree
            .for_each(&mut |k| out.push(k.clone()));
        out.sort_unstable_by(|a, b| a.msg.topic.as_str().cmp(b.msg.topic.as_str()));
        out
    }

    /// Loads a retained message read from the store at startup.
    pub fn restore_retained(&self, msg: Arc<Message>, modified_ms: u64) {
        let mut r = self.retained.write();
        let topic = msg.topic.clone();
        r.put(topic.as_str(), Kept { msg, modified_ms });
        self.metrics.retained.set(r.tree.len() as f64);
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
        // Basic Ingest goes to its rule alone: no subscriber, nothing retained.
        let ingest = crate::topic::basic_ingest(topic).is_some();
        // A retained message past its quota refuses the publish before
        // anything changes; the lock, taken first, orders retained publishes.
        let mut retained = (msg.retain && !ingest).then(|| self.retained.write());
        if let Some(r) = retained.as_ref()
            && !msg.payload.is_empty()
        {
            let old = r.tree.get(topic).map(|k| held(&k.msg));
            if let Err(e) = r.usage.admits(&self.retain_quota, held(msg), old) {
                self.metrics.refused(match e {
                    retained::Exceeded::Messages => LimitKind::RetainedMessages,
                    retained::Exceeded::Bytes => LimitKind::RetainedBytes,
                });
                return Err(StoreError::Full("the retained messages' quota".into()));
            }
        }
        // Decide on the internal clients first, so that one without room
        // refuses the publish before anything changes. (A spool that
        // refuses the rule output later refuses the publish through its
        // commit, after subscribers may have it: the publisher sends it
        // again, and duplicates are allowed where loss is not.)
        // Basic Ingest always goes to the engine, which finds its rule (or
        // counts and logs that there is none).
        let ruled = self.offers(
            &self.tap,
            ingest || self.tap.wants(topic),
            msg,
            "the rules engine queue",
            DropReason::RulesBusy,
        )?;
        // The services answer only reserved topics: an ordinary one asks none.
        let reserved = topic.starts_with("$aws/");
        let shadowed = self.offers(
            &self.shadows,
            reserved && self.shadows.wants(topic),
            msg,
            "the shadow service queue",
            DropReason::ShadowsBusy,
        )?;
        let provisioned = self.offers(
            &self.provisioning,
            reserved && self.provisioning.wants(topic),
            msg,
            "the provisioning service queue",
            DropReason::ProvisioningBusy,
        )?;
        let jobbed = self.offers(
            &self.jobs,
            reserved && self.jobs.wants(topic),
            msg,
            "the jobs service queue",
            DropReason::JobsBusy,
        )?;
        // The clock is read before the lock is taken, and only for a retain.
        let modified_ms = if msg.retain {
            unix_ms(SystemTime::now())
        } else {
            0
        };
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
            if !ingest {
                self.subs.read().for_each_match(topic, &mut |m| match m {
                    trie::Match::Plain(s) => add_plain(targets, s, msg),
                    trie::Match::Group(g) => add_shared(targets, g, msg),
                });
            }
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
                    r.delete(topic);
                } else {
                    r.put(
                        topic,
                        Kept {
                            msg: msg.clone(),
                            modified_ms,
                        },
                    );
                }
                self.metrics.retained.set(r.tree.len() as f64);
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
            for (tap, offered) in [
                (&self.tap, ruled),
                (&self.shadows, shadowed),
                (&self.provisioning, provisioned),
                (&self.jobs, jobbed),
            ] {
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

/// A router over a fresh store in `dir`, with that store and the metrics
/// both count in: what every test of the router and its clients starts from.
#[cfg(test)]
pub(crate) fn on_fresh_store(dir: &std::path::Path) -> (Arc<Router>, Store, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (store, _) = Store::open(&dir.join("store.redb"), false, metrics.clone()).expect("store");
    let router = Router::new(store.clone(), metrics.clone(), retained::Quota::default());
    (Arc::new(router), store, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PublishProperties;
    use bytes::Bytes;
    use message::RETAINED_TIMED;
    use std::time::Duration;

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

    fn router(dir: &tempfile::TempDir) -> Arc<Router> {
        on_fresh_store(dir.path()).0
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
        b.pace.stall();
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
