//! Flow control between publishers and subscribers, one module for both
//! sides. A connected subscriber whose mailbox passes its watermark paces
//! its publishers: a QoS 1/2 publisher's acknowledgement, or a QoS 0
//! publisher's next read, waits until the subscriber drains or [`HOLD`]
//! passes. Within it, publishers slow down to what their subscribers take
//! (with Receive Maximum, QoS 1/2 publishers cannot run ahead); past it, the
//! publisher goes on, and a subscriber that still cannot keep up loses QoS 0
//! messages and meets the slow-consumer bound: a publisher is paced, never
//! blocked.

use super::mailbox::{Mailbox, MailboxLimits};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest a publisher waits for a subscriber that is falling behind.
pub const HOLD: Duration = Duration::from_secs(1);

/// The subscriber's side, part of every mailbox: whether its publishers
/// should wait, and the signal that lets them go on.
#[derive(Debug, Default)]
pub struct Pacing {
    /// Set when the consumer made no progress for a whole hold: it paces
    /// nobody until it drains below its watermark again.
    stalled: AtomicBool,
    /// Bumped when a pressed mailbox drains below its watermark (or its
    /// consumer goes away or stalls), so that paced publishers go on. Made
    /// when a publisher first waits: most mailboxes never need one.
    relieved: OnceLock<watch::Sender<u64>>,
}

impl Pacing {
    /// Half the lower bound: past it, a connected consumer is falling
    /// behind, and its publishers are paced (for a bounded time) before it
    /// loses QoS 0 messages or is disconnected as too slow.
    pub fn watermark(limits: MailboxLimits) -> usize {
        (limits.queued.min(limits.stored) / 2).max(1)
    }

    /// Whether publishers should wait for a consumer with `len` deliveries
    /// queued: it is `online`, past its watermark, and was not found stalled.
    pub fn behind(&self, len: usize, limits: MailboxLimits, online: bool) -> bool {
        len >= Self::watermark(limits) && online && !self.stalled.load(Ordering::Relaxed)
    }

    /// The consumer made no progress for a whole hold: publishers stop
    /// waiting for it until it drains below its watermark, so that a
    /// consumer that stopped reading cannot slow anyone down for long.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::Relaxed);
        self.relieve();
    }

    /// The consumer drained below its watermark: it paces again when it
    /// falls behind again, and whoever waits for it goes on.
    pub fn drained(&self) {
        self.stalled.store(false, Ordering::Relaxed);
        self.relieve();
    }

    /// A new connection drains the mailbox: it starts with a clean record.
    pub fn reset(&self) {
        self.stalled.store(false, Ordering::Relaxed);
    }

    /// Changes when the consumer drains, goes offline or stalls.
    pub fn relief(&self) -> watch::Receiver<u64> {
        self.relieved
            .get_or_init(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Lets whoever waits go on.
    pub fn relieve(&self) {
        if let Some(tx) = self.relieved.get().filter(|tx| tx.receiver_count() > 0) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// The publisher's side: the subscriber it waits for, and until when at most.
pub struct Held {
    mailbox: Arc<Mailbox>,
    until: Instant,
    /// Taken at once, so that a drain before the wait begins is not missed.
    relief: Option<watch::Receiver<u64>>,
    /// The wait for relief or for `until`, boxed when first polled and
    /// handing the receiver back when done.
    wait: Option<Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("session", &self.mailbox.session_id)
            .field("until", &self.until)
            .finish()
    }
}

impl Held {
    /// Waits for `mailbox` from `now`, for at most [`HOLD`].
    pub fn new(mailbox: Arc<Mailbox>, now: Instant) -> Self {
        Self {
            relief: Some(mailbox.pace.relief()),
            mailbox,
            until: now + HOLD,
            wait: None,
        }
    }

    /// Ready when the wait may be over (confirm with [`Held::is_over`]).
    pub fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let wait = match (&mut self.wait, self.relief.take()) {
            (Some(wait), _) => wait,
            (wait, relief) => {
                let mut relief = relief.unwrap_or_else(|| self.mailbox.pace.relief());
                let until = self.until;
                wait.insert(Box::pin(async move {
                    tokio::select! {
                        _ = relief.changed() => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                    relief
                }))
            }
        };
        let relief = ready!(wait.as_mut().poll(cx));
        self.wait = None;
        self.relief = Some(relief);
        Poll::Ready(())
    }

    /// Whether the publisher may go on at `now`: the subscriber drained, or
    /// the hold ran out, and then the subscriber, which made no progress
    /// for a whole hold, paces nobody until it catches up.
    pub fn is_over(&self, now: Instant) -> bool {
        if !self.mailbox.is_pressed() {
            return true;
        }
        if now < self.until {
            return false;
        }
        self.mailbox.pace.stall();
        true
    }
}
