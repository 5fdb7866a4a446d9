//! A session's mailbox: filled by the router, drained by the connection
//! that owns the session, bounded with a named overflow policy
//! ([`Mailbox::push`]): QoS 0 beyond `max_queued_messages` is dropped; QoS
//! 1/2 is kept up to `max_stored_messages`, after which a connected
//! consumer is disconnected as too slow and an offline session drops the
//! message. Every drop is counted by reason.

use super::flow::Pacing;
use super::message::Delivery;
use crate::codec::QoS;
use crate::metrics::{DropReason, Metrics};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;

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
    pub(super) online: AtomicBool,
    /// Whether and for how long its publishers wait for it.
    pub(super) pace: Pacing,
    seq: AtomicU64,
    state: Mutex<Inbox>,
    notify: Notify,
    kick: Notify,
    limits: MailboxLimits,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Delivery>,
    slow: bool,
    /// When the oldest delivery not yet taken began to wait.
    #[cfg(feature = "stage-timing")]
    since: Option<tokio::time::Instant>,
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
            pace: Pacing::default(),
            seq: AtomicU64::new(0),
            state: Mutex::new(Inbox::default()),
            notify: Notify::new(),
            kick: Notify::new(),
            limits,
        }
    }

    /// Whether publishers should wait for this consumer (see [`flow`](super::flow)).
    pub fn is_pressed(&self) -> bool {
        let len = self.state.lock().queue.len();
        self.behind(len)
    }

    fn behind(&self, len: usize) -> bool {
        self.pace
            .behind(len, self.limits, self.online.load(Ordering::Relaxed))
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
            self.pace.reset();
            self.take_slow();
        } else {
            self.pace.relieve();
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

    pub(super) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues a delivery under the overflow policy described in the module docs.
    pub fn push(&self, d: Delivery, metrics: &Metrics) -> Pushed {
        self.push_watched(d, metrics).0
    }

    /// [`Mailbox::push`], also telling how far behind a connected consumer
    /// past its watermark now is, read under the same lock.
    pub(super) fn push_watched(&self, d: Delivery, metrics: &Metrics) -> (Pushed, Option<usize>) {
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
            Pushed::Queued => {
                inbox.queue.push_back(d);
                #[cfg(feature = "stage-timing")]
                if inbox.since.is_none() {
                    inbox.since = Some(tokio::time::Instant::now());
                }
            }
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
        let below = inbox.queue.len() < Pacing::watermark(self.limits);
        #[cfg(feature = "stage-timing")]
        {
            inbox.since = (!inbox.queue.is_empty()).then(tokio::time::Instant::now);
        }
        drop(inbox);
        if below && !out.is_empty() {
            self.pace.drained();
        }
    }

    /// When the oldest delivery not yet taken began to wait.
    #[cfg(feature = "stage-timing")]
    pub fn waiting_since(&self) -> Option<tokio::time::Instant> {
        self.state.lock().since
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
