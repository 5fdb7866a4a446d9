//! Taps: bounded queues from publishers to the internal clients that work
//! outside connection tasks (the rules engine, the shadow service), and the
//! filter index that decides what each is offered.

use super::message::Message;
use super::trie;
use crate::store::{Commit, StoreError};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{Notify, oneshot};

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

/// Lets a publisher's acknowledgement go once its publish is durable: what
/// an internal client does with a [`Tapped`] message it has answered.
pub async fn release(
    durable: Option<Commit>,
    done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
) {
    if let Some(done) = done {
        let written = match durable {
            Some(commit) => commit.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        let _ = done.send(written);
    }
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

    /// The owners of the filters `topic` matches, each once, in ascending
    /// order (a rule owns its FROM filter and its Basic Ingest filter).
    pub fn matching(&self, topic: &str, out: &mut Vec<usize>) {
        out.clear();
        self.trie.for_each_match(topic, &mut |m| {
            if let trie::Match::Plain(Indexed(i)) = m {
                out.push(*i);
            }
        });
        out.sort_unstable();
        out.dedup();
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
    pub(super) fn new() -> Self {
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

    pub(super) fn has_room(&self) -> bool {
        let q = self.queue.lock();
        q.items.len() < TAP_MESSAGES && q.bytes < TAP_BYTES
    }

    pub(super) fn push(&self, t: Tapped) {
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

/// Messages, and payload bytes, waiting for the rules engine.
const TAP_MESSAGES: usize = 16_384;
const TAP_BYTES: usize = 64 * 1024 * 1024;
