//! Sessions: the table of client ids, takeover of duplicate ids,
//! persistent sessions while their client is away, and wills.
//!
//! A session is either online (owned by exactly one connection task) or
//! offline (held here, still subscribed, its mailbox still filling). The
//! table entry for a client id is the single point of truth; every
//! transition happens under that entry's lock and never across `.await`:
//! - connect: an offline session is taken over directly; an online one is
//!   asked to hand its state over through its control channel, and the new
//!   connection waits (bounded) for the reply;
//! - disconnect: the owning task parks its state offline (persistent) or
//!   discards it, unless it was taken over, in which case it answers the
//!   pending takeover request instead.

pub mod admission;
pub mod authz;
pub mod conn;
pub mod state;

use crate::codec::{Protocol, QoS, SubOptions, Will};
use crate::metrics::Metrics;
use crate::router::{self, Mailbox, MailboxLimits, Message, Origin, Pushed, Router, Subscriber};
use crate::store::{Op, Snapshot, Store};
use crate::topic::Subscription;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long a new connection waits for the old one to hand its session over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Session state that survives the connection.
#[derive(Debug)]
pub struct SessionData {
    /// Where the router queues messages for this session.
    pub mailbox: Arc<Mailbox>,
    /// Subscriptions by filter as sent (with `$share/` prefix if any).
    pub subscriptions: HashMap<String, (SubOptions, Option<u32>)>,
    /// Outbound QoS 1/2 messages awaiting acknowledgement.
    pub inflight: state::outbound::Inflight,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub qos2_in: state::inbound::Received,
    /// Session expiry interval in seconds; 0 ends the session with the connection.
    pub expiry: u32,
    /// Protocol of the connection that created it.
    pub protocol: Protocol,
    /// Whether the store may hold a record of this session.
    pub stored: bool,
    /// A delayed will waiting to be published; send `true` to publish now,
    /// drop to cancel.
    pub pending_will: Option<oneshot::Sender<bool>>,
}

/// Messages from the session table to the connection task owning a session.
#[derive(Debug)]
pub enum Control {
    /// Another connection with the same client id arrived: hand the session over.
    TakeOver(oneshot::Sender<Box<SessionData>>),
}

enum Slot {
    Online {
        conn: u64,
        control: oneshot::Sender<Control>,
    },
    Offline {
        data: Box<SessionData>,
        generation: u64,
        expiry: tokio::task::AbortHandle,
    },
}

/// The stored form of a session.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    protocol: u8,
    expiry: u32,
    /// (filter as sent, QoS, no local, retain as published, retain handling, subscription id)
    subs: Vec<(String, u8, bool, bool, u8, Option<u32>)>,
    /// When the client went away (ms since the epoch); absent while connected.
    disconnected_ms: Option<u64>,
}

/// What `open` found for a client id.
#[derive(Debug)]
pub struct Opened {
    /// The session to use.
    pub data: Box<SessionData>,
    /// Whether it is a resumed one (CONNACK Session Present).
    pub present: bool,
}

/// Every session of the gateway, online or offline.
pub struct Sessions {
    map: DashMap<Arc<str>, Slot>,
    next_id: AtomicU64,
    router: Arc<Router>,
    store: Store,
    metrics: Arc<Metrics>,
    limits: MailboxLimits,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("len", &self.map.len())
            .finish()
    }
}

enum Found {
    Nothing,
    Offline(Box<SessionData>),
    Online(oneshot::Receiver<Box<SessionData>>),
    /// An owner that can no longer answer; its stored state is unknown.
    Gone,
}

impl Sessions {
    /// An empty table.
    pub fn new(
        router: Arc<Router>,
        store: Store,
        metrics: Arc<Metrics>,
        limits: MailboxLimits,
    ) -> Self {
        Self {
            map: DashMap::new(),
            next_id: AtomicU64::new(1),
            router,
            store,
            metrics,
            limits,
        }
    }

    /// A fresh id, unique for the life of the process.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Claims `client_id` for connection `conn`, taking over or resuming any
    /// existing session as the clean-start flag and the old session's expiry say.
    pub async fn open(
        self: &Arc<Self>,
        client_id: Arc<str>,
        clean_start: bool,
        expiry: u32,
        protocol: Protocol,
        conn: u64,
        control: oneshot::Sender<Control>,
    ) -> Opened {
        let found = match self.map.entry(client_id.clone()) {
            Entry::Vacant(v) => {
                v.insert(Slot::Online { conn, control });
                Found::Nothing
            }
            Entry::Occupied(mut o) => match o.insert(Slot::Online { conn, control }) {
                Slot::Offline { data, expiry, .. } => {
                    expiry.abort();
                    Found::Offline(data)
                }
                Slot::Online { control, .. } => {
                    let (tx, rx) = oneshot::channel();
                    match control.send(Control::TakeOver(tx)) {
                        Ok(()) => Found::Online(rx),
                        Err(_) => Found::Gone,
                    }
                }
            },
        };
        let (old, maybe_stored) = match found {
            Found::Nothing => (None, false),
            Found::Gone => (None, true),
            Found::Offline(d) => (Some(d), false),
            Found::Online(rx) => match tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await {
                Ok(Ok(d)) => (Some(d), false),
                _ => (None, true),
            },
        };
        let mut present = false;
        let mut forget = maybe_stored;
        let found = old.as_ref().map(|d| state::takeover::Found {
            protocol: d.protocol,
            expiry: d.expiry,
        });
        let mut data = match old {
            Some(mut d) if state::takeover::resumes(clean_start, found, protocol) => {
                d.pending_will = None;
                present = true;
                d
            }
            Some(d) => {
                forget |= d.stored;
                self.discard(*d);
                self.fresh(client_id.clone(), protocol)
            }
            None => self.fresh(client_id.clone(), protocol),
        };
        data.expiry = expiry;
        data.protocol = protocol;
        data.mailbox.set_persistent(expiry > 0);
        data.mailbox.set_online(true);
        let mut ops = Vec::new();
        if forget || (data.stored && expiry == 0) {
            ops.push(Op::DelSession(client_id.clone()));
        }
        data.stored = expiry > 0;
        if data.stored {
            ops.push(Op::PutSession(client_id.clone(), record(&data, None)));
        }
        if !ops.is_empty() {
            // Under the entry lock, so that store writes for one client id keep their order.
            let _guard = self.map.get(&client_id);
            self.store.enqueue(ops);
        }
        self.metrics.sessions.set(self.map.len() as f64);
        Opened { data, present }
    }

    fn fresh(&self, client_id: Arc<str>, protocol: Protocol) -> Box<SessionData> {
        Box::new(SessionData {
            mailbox: Arc::new(Mailbox::new(self.new_id(), client_id, false, self.limits)),
            subscriptions: HashMap::new(),
            inflight: state::outbound::Inflight::default(),
            qos2_in: state::inbound::Received::default(),
            expiry: 0,
            protocol,
            stored: false,
            pending_will: None,
        })
    }

    /// Stores the session's subscriptions so that they survive a restart.
    pub fn persist(&self, data: &SessionData) {
        if data.expiry > 0 {
            let client_id = &data.mailbox.client_id;
            let _guard = self.map.get(client_id);
            self.store
                .enqueue(vec![Op::PutSession(client_id.clone(), record(data, None))]);
        }
    }

    /// Called by a connection task when its connection ends.
    pub fn close(
        self: &Arc<Self>,
        conn: u64,
        data: Box<SessionData>,
        control: &mut oneshot::Receiver<Control>,
    ) {
        data.mailbox.set_online(false);
        let client_id = data.mailbox.client_id.clone();
        match self.map.entry(client_id.clone()) {
            Entry::Occupied(mut o) if matches!(o.get(), Slot::Online { conn: c, .. } if *c == conn) => {
                if data.expiry == 0 {
                    if data.stored {
                        self.store.enqueue(vec![Op::DelSession(client_id)]);
                    }
                    o.remove();
                    self.discard(*data);
                } else {
                    let generation = self.new_id();
                    let rec = record(&data, Some(crate::store::unix_ms(SystemTime::now())));
                    self.store
                        .enqueue(vec![Op::PutSession(client_id.clone(), rec)]);
                    let after = Duration::from_secs(u64::from(data.expiry));
                    let expiry = self.expire_later(client_id, generation, after);
                    o.insert(Slot::Offline {
                        data,
                        generation,
                        expiry,
                    });
                }
            }
            occupied_or_vacant => {
                drop(occupied_or_vacant);
                // Taken over: the request is already in the channel. The new
                // owner decides what the store keeps, so nothing is deleted here.
                match control.try_recv() {
                    Ok(Control::TakeOver(reply)) => {
                        if let Err(d) = reply.send(data) {
                            self.discard(*d);
                        }
                    }
                    Err(_) => self.discard(*data),
                }
            }
        }
        self.removed();
    }

    /// After sessions left: sets their gauge, and once three quarters of the
    /// table stand empty (a burst of clients gone) gives the room back, which
    /// the table would otherwise keep at its largest for good. Shrinking
    /// halves the room at least, so it is paid for by the removals before it.
    fn removed(&self) {
        /// Below this much room the table is left alone.
        const KEEP: usize = 1024;
        let len = self.map.len();
        self.metrics.sessions.set(len as f64);
        let room = self.map.capacity();
        if room > KEEP && len * 4 < room {
            self.map.shrink_to_fit();
        }
    }

    fn expire_later(
        self: &Arc<Self>,
        client_id: Arc<str>,
        generation: u64,
        after: Duration,
    ) -> tokio::task::AbortHandle {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(sessions) = sessions.upgrade() else {
                return;
            };
            let Entry::Occupied(o) = sessions.map.entry(client_id.clone()) else {
                return;
            };
            if !matches!(o.get(), Slot::Offline { generation: g, .. } if *g == generation) {
                return;
            }
            sessions.store.enqueue(vec![Op::DelSession(client_id)]);
            if let Slot::Offline { data, .. } = o.remove() {
                sessions.discard(*data);
            }
            sessions.removed();
        })
        .abort_handle()
    }

    /// Ends a session in memory: unsubscribes, drops what was queued, and
    /// publishes a will that was still waiting for its delay. What the store
    /// holds is the caller's business.
    fn discard(&self, mut data: SessionData) {
        for filter in data.subscriptions.keys() {
            if let Ok(s) = Subscription::parse(filter) {
                self.router
                    .unsubscribe(s.filter, s.share, data.mailbox.session_id);
            }
        }
        data.mailbox.clear();
        if let Some(will) = data.pending_will.take() {
            let _ = will.send(true);
        }
    }

    /// Publishes a will now, or after its delay unless the session comes back
    /// first; returns the cancel handle for a delayed one. Message expiry
    /// counts from when the will is published.
    pub fn schedule_will(
        self: &Arc<Self>,
        will: Will,
        origin: Arc<Origin>,
        delay: u32,
    ) -> Option<oneshot::Sender<bool>> {
        if delay == 0 {
            self.publish_will(will, origin);
            return None;
        }
        let (tx, rx) = oneshot::channel::<bool>();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let publish = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => true,
                now = rx => now.unwrap_or(false),
            };
            if let (true, Some(this)) = (publish, this.upgrade()) {
                this.publish_will(will, origin);
            }
        });
        Some(tx)
    }

    /// Publishes an event of the gateway's own (`$aws/events/...`), at QoS 1.
    pub fn publish_event(&self, topic: &str, payload: String) {
        let msg = Arc::new(Message::new(
            topic.into(),
            payload.into(),
            QoS::AtLeastOnce,
            false,
            Default::default(),
            Instant::now(),
            Origin::gateway(),
        ));
        if let Err(e) = self.router.publish(&msg, Instant::now()) {
            tracing::warn!(topic, error = %e, "event not published");
        }
    }

    fn publish_will(&self, will: Will, origin: Arc<Origin>) {
        let now = Instant::now();
        let msg = Arc::new(Message::new(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            will.properties,
            now,
            origin,
        ));
        if let Err(e) = self.router.publish(&msg, now) {
            tracing::warn!(topic = %msg.topic, error = %e, "will not published");
        }
    }

    /// Rebuilds persistent sessions and retained messages from the store;
    /// expired records are deleted on the way.
    pub fn restore(self: &Arc<Self>, snapshot: Snapshot) {
        let now = Instant::now();
        let mut cleanup = Vec::new();
        let now_ms = crate::store::unix_ms(SystemTime::now());
        for (topic, rec) in snapshot.retained {
            let (modified_ms, rec) = router::read_retained_record(&rec);
            match Message::from_record(rec, now) {
                Some(m) => self
                    .router
                    .restore_retained(Arc::new(m), modified_ms.unwrap_or(now_ms)),
                None => cleanup.push(Op::DelRetained(topic)),
            }
        }
        for stored in snapshot.sessions {
            let client_id: Arc<str> = stored.client_id.into();
            let Ok(rec) = serde_json::from_slice::<Record>(&stored.record) else {
                tracing::warn!(%client_id, "unreadable stored session dropped");
                cleanup.push(Op::DelSession(client_id));
                continue;
            };
            let gone_ms = now_ms.saturating_sub(rec.disconnected_ms.unwrap_or(now_ms));
            let Some(left) = (u64::from(rec.expiry) * 1000).checked_sub(gone_ms) else {
                cleanup.push(Op::DelSession(client_id));
                continue;
            };
            let protocol = if rec.protocol == 5 {
                Protocol::V5
            } else {
                Protocol::V4
            };
            let mut data = self.fresh(client_id.clone(), protocol);
            data.expiry = rec.expiry;
            data.stored = true;
            data.mailbox.set_persistent(true);
            for (seq, bytes) in stored.queue {
                data.mailbox.resume_seq(seq);
                match router::delivery_from_record(&bytes, seq, now) {
                    Some(d) => {
                        if data.mailbox.push(d, &self.metrics) != Pushed::Queued {
                            cleanup.push(Op::DelQueued(client_id.clone(), seq));
                        }
                    }
                    None => cleanup.push(Op::DelQueued(client_id.clone(), seq)),
                }
            }
            for (filter, qos, no_local, rap, rh, sub_id) in rec.subs {
                let Ok(s) = Subscription::parse(&filter) else {
                    continue;
                };
                let options = SubOptions {
                    qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
                    no_local,
                    retain_as_published: rap,
                    retain_handling: rh,
                };
                self.router.subscribe(
                    s.filter,
                    s.share,
                    Subscriber {
                        mailbox: data.mailbox.clone(),
                        options,
                        sub_id,
                    },
                );
                data.subscriptions.insert(filter, (options, sub_id));
            }
            let generation = self.new_id();
            let expiry =
                self.expire_later(client_id.clone(), generation, Duration::from_millis(left));
            self.map.insert(
                client_id,
                Slot::Offline {
                    data,
                    generation,
                    expiry,
                },
            );
        }
        if !cleanup.is_empty() {
            self.store.enqueue(cleanup);
        }
        self.metrics.sessions.set(self.map.len() as f64);
    }

    /// Sessions held, online or offline.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a session is held for `client_id`.
    pub fn holds(&self, client_id: &str) -> bool {
        self.map.contains_key(client_id)
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn record(data: &SessionData, disconnected_ms: Option<u64>) -> Vec<u8> {
    let rec = Record {
        protocol: data.protocol.level(),
        expiry: data.expiry,
        subs: data
            .subscriptions
            .iter()
            .map(|(f, (o, id))| {
                (
                    f.clone(),
                    o.qos as u8,
                    o.no_local,
                    o.retain_as_published,
                    o.retain_handling,
                    *id,
                )
            })
            .collect(),
        disconnected_ms,
    };
    serde_json::to_vec(&rec).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(dir: &tempfile::TempDir) -> Arc<Sessions> {
        let (router, store, metrics) = router::on_fresh_store(dir.path());
        let limits = MailboxLimits {
            queued: 10,
            stored: 10,
        };
        Arc::new(Sessions::new(router, store, metrics, limits))
    }

    /// A session opened for `client_id` by a new connection, as that
    /// connection holds it.
    async fn connect(
        sessions: &Arc<Sessions>,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
    ) -> (u64, Opened, oneshot::Receiver<Control>) {
        let (tx, rx) = oneshot::channel();
        let conn = sessions.new_id();
        let opened = sessions
            .open(
                client_id.into(),
                clean_start,
                expiry,
                Protocol::V4,
                conn,
                tx,
            )
            .await;
        (conn, opened, rx)
    }

    /// Opens `n` clean sessions and closes them all.
    async fn burst(sessions: &Arc<Sessions>, n: usize) {
        let mut open = Vec::new();
        for i in 0..n {
            open.push(connect(sessions, &format!("burst-{i}"), true, 0).await);
        }
        for (conn, opened, mut rx) in open {
            sessions.close(conn, opened.data, &mut rx);
        }
    }

    #[tokio::test]
    async fn sessions_gone_after_a_burst_give_the_table_room_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sessions = sessions(&dir);
        // One stays: the table shrinks around what is left, not to nothing.
        let (conn, opened, mut rx) = connect(&sessions, "stays", true, 0).await;
        let mut open = Vec::new();
        for i in 0..4999 {
            open.push(connect(&sessions, &format!("c{i}"), true, 0).await);
        }
        let busy = sessions.map.capacity();
        for (conn, opened, mut rx) in open {
            sessions.close(conn, opened.data, &mut rx);
        }
        assert_eq!(sessions.map.len(), 1);
        assert!(
            sessions.map.capacity() * 8 < busy,
            "room for {} sessions kept of {busy}",
            sessions.map.capacity()
        );
        sessions.close(conn, opened.data, &mut rx);
        assert_eq!(sessions.map.len(), 0);
    }

    #[tokio::test]
    async fn an_offline_session_resumes_after_the_table_gave_room_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sessions = sessions(&dir);
        let (conn, opened, mut rx) = connect(&sessions, "device-1", false, 3600).await;
        assert!(!opened.present);
        sessions.close(conn, opened.data, &mut rx);
        burst(&sessions, 5000).await;
        assert!(sessions.map.capacity() < 1024, "the table gave room back");
        let (_, resumed, _rx) = connect(&sessions, "device-1", false, 3600).await;
        assert!(resumed.present, "the offline session survived the shrink");
    }
}
