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

pub mod conn;
pub mod state;

use crate::codec::{Protocol, QoS, SubOptions, Will};
use crate::metrics::Metrics;
use crate::router::{self, Delivery, Mailbox, MailboxLimits, Message, Router, Subscriber};
use crate::store::{Op, Snapshot, Store};
use crate::topic::Subscription;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
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
    pub inflight: state::Inflight,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub qos2_in: HashSet<u16>,
    /// Session expiry interval in seconds; 0 ends the session with the connection.
    pub expiry: u32,
    /// Protocol of the connection that created it.
    pub protocol: Protocol,
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
        control: mpsc::Sender<Control>,
    },
    Offline {
        data: Box<SessionData>,
        generation: u64,
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

    /// A fresh session id for internal publishers and new sessions.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Claims `client_id` for connection `conn`, taking over or resuming any
    /// existing session as the clean-start flag says.
    pub async fn open(
        self: &Arc<Self>,
        client_id: Arc<str>,
        clean_start: bool,
        expiry: u32,
        protocol: Protocol,
        conn: u64,
        control: mpsc::Sender<Control>,
    ) -> Opened {
        let found = match self.map.entry(client_id.clone()) {
            Entry::Vacant(v) => {
                v.insert(Slot::Online { conn, control });
                Found::Nothing
            }
            Entry::Occupied(mut o) => {
                let old = o.insert(Slot::Online { conn, control });
                match old {
                    Slot::Offline { data, .. } => Found::Offline(data),
                    Slot::Online { control, .. } => {
                        let (tx, rx) = oneshot::channel();
                        match control.try_send(Control::TakeOver(tx)) {
                            Ok(()) => Found::Online(rx),
                            Err(_) => Found::Nothing,
                        }
                    }
                }
            }
        };
        let old = match found {
            Found::Nothing => None,
            Found::Offline(d) => Some(d),
            Found::Online(rx) => tokio::time::timeout(TAKEOVER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok),
        };
        let mut present = false;
        let data = match old {
            Some(mut d) if !clean_start && d.protocol == protocol => {
                // Reconnecting before the will delay ends cancels the will [MQTT-3.1.3-9].
                d.pending_will = None;
                present = true;
                d
            }
            Some(d) => {
                self.discard(d).await;
                self.fresh(client_id.clone(), protocol)
            }
            None => self.fresh(client_id.clone(), protocol),
        };
        let mut data = data;
        data.expiry = expiry;
        data.protocol = protocol;
        data.mailbox.set_persistent(expiry > 0);
        data.mailbox.set_online(true);
        if expiry > 0 {
            self.store
                .apply(vec![Op::PutSession(client_id, record(&data, None))])
                .await;
        } else if present {
            // The session was persistent and is not any more.
            self.store.apply(vec![Op::DelSession(client_id)]).await;
        }
        self.metrics.sessions.set(self.map.len() as f64);
        Opened { data, present }
    }

    fn fresh(&self, client_id: Arc<str>, protocol: Protocol) -> Box<SessionData> {
        Box::new(SessionData {
            mailbox: Arc::new(Mailbox::new(self.new_id(), client_id, false, self.limits)),
            subscriptions: HashMap::new(),
            inflight: state::Inflight::default(),
            qos2_in: HashSet::new(),
            expiry: 0,
            protocol,
            pending_will: None,
        })
    }

    /// Writes the session's subscriptions so that they survive a restart.
    pub fn persist(&self, data: &SessionData) -> Option<Op> {
        (data.expiry > 0)
            .then(|| Op::PutSession(data.mailbox.client_id.clone(), record(data, None)))
    }

    /// Called by a connection task when its connection ends.
    pub async fn close(
        self: &Arc<Self>,
        conn: u64,
        data: Box<SessionData>,
        control: &mut mpsc::Receiver<Control>,
    ) {
        data.mailbox.set_online(false);
        let client_id = data.mailbox.client_id.clone();
        let mut discard = None;
        let mut park = None;
        match self.map.entry(client_id.clone()) {
            Entry::Occupied(mut o) if matches!(o.get(), Slot::Online { conn: c, .. } if *c == conn) => {
                if data.expiry == 0 {
                    o.remove();
                    discard = Some(data);
                } else {
                    let generation = self.new_id();
                    let expiry = data.expiry;
                    let rec = record(&data, Some(router::unix_ms(SystemTime::now())));
                    o.insert(Slot::Offline { data, generation });
                    park = Some((generation, expiry, rec));
                }
            }
            _ => {
                // Taken over: the request is already in the channel.
                match control.try_recv() {
                    Ok(Control::TakeOver(reply)) => {
                        if let Err(d) = reply.send(data) {
                            discard = Some(d);
                        }
                    }
                    Err(_) => discard = Some(data),
                }
            }
        }
        if let Some(d) = discard {
            self.discard(d).await;
        }
        if let Some((generation, expiry, rec)) = park {
            self.store
                .apply(vec![Op::PutSession(client_id.clone(), rec)])
                .await;
            self.expire_later(
                client_id,
                generation,
                Duration::from_secs(u64::from(expiry)),
            );
        }
        self.metrics.sessions.set(self.map.len() as f64);
    }

    fn expire_later(self: &Arc<Self>, client_id: Arc<str>, generation: u64, after: Duration) {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(sessions) = sessions.upgrade() else {
                return;
            };
            let expired = sessions.map.remove_if(
                &client_id,
                |_, slot| matches!(slot, Slot::Offline { generation: g, .. } if *g == generation),
            );
            if let Some((_, Slot::Offline { data, .. })) = expired {
                sessions.discard(data).await;
                sessions.metrics.sessions.set(sessions.map.len() as f64);
            }
        });
    }

    /// Ends a session for good: unsubscribes, forgets stored state, and
    /// publishes a will that was still waiting for its delay.
    async fn discard(&self, mut data: Box<SessionData>) {
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
        if data.mailbox.is_persistent() || data.expiry > 0 {
            self.store
                .apply(vec![Op::DelSession(data.mailbox.client_id.clone())])
                .await;
        }
    }

    /// Publishes a will now, or after its delay unless the session comes back
    /// first; returns the cancel handle for a delayed one.
    pub fn schedule_will(
        self: &Arc<Self>,
        will: Will,
        origin: u64,
        delay: u32,
    ) -> Option<oneshot::Sender<bool>> {
        let msg = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            expires_at: will
                .properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            properties: will.properties,
            origin,
        });
        if delay == 0 {
            let this = self.clone();
            tokio::spawn(async move { this.publish_internal(&msg).await });
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
                this.publish_internal(&msg).await;
            }
        });
        Some(tx)
    }

    /// Routes a message the gateway itself publishes and makes it durable.
    pub async fn publish_internal(&self, msg: &Arc<Message>) {
        let routed = self.router.publish(msg, Instant::now());
        if !routed.ops.is_empty() {
            self.store.apply(routed.ops).await;
        }
    }

    /// Rebuilds persistent sessions and retained messages from the store.
    pub fn restore(self: &Arc<Self>, snapshot: Snapshot) {
        let now = Instant::now();
        for (_, rec) in snapshot.retained {
            if let Some(m) = Message::from_record(&rec, now) {
                self.router.restore_retained(Arc::new(m));
            }
        }
        let now_ms = router::unix_ms(SystemTime::now());
        for stored in snapshot.sessions {
            let Ok(rec) = serde_json::from_slice::<Record>(&stored.record) else {
                tracing::warn!(client_id = %stored.client_id, "unreadable stored session skipped");
                continue;
            };
            let client_id: Arc<str> = stored.client_id.into();
            let protocol = if rec.protocol == 5 {
                Protocol::V5
            } else {
                Protocol::V4
            };
            let mut data = self.fresh(client_id.clone(), protocol);
            data.expiry = rec.expiry;
            data.mailbox.set_persistent(true);
            for (seq, bytes) in stored.queue {
                data.mailbox.resume_seq(seq);
                if let Some((msg, qos)) = router::queued_from_record(&bytes, now) {
                    data.mailbox.push(
                        Delivery {
                            msg: Arc::new(msg),
                            qos,
                            retain: false,
                            sub_ids: Vec::new(),
                            seq,
                        },
                        &self.metrics,
                    );
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
            let gone_ms = now_ms.saturating_sub(rec.disconnected_ms.unwrap_or(now_ms));
            let left = (u64::from(rec.expiry) * 1000).saturating_sub(gone_ms);
            let generation = self.new_id();
            self.map
                .insert(client_id.clone(), Slot::Offline { data, generation });
            self.expire_later(client_id, generation, Duration::from_millis(left));
        }
        self.metrics.sessions.set(self.map.len() as f64);
    }

    /// Sessions held, online or offline.
    pub fn len(&self) -> usize {
        self.map.len()
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
