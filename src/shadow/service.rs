//! The shadow service: an internal client of the router, with its own task.
//!
//! - Intake: requests published on the reserved topics reach the service
//!   through the router's shadow tap (bounded), REST calls through a
//!   bounded channel ([`Handle`]); a full queue refuses a QoS 1 request's
//!   publish (0x97) and a REST call (429). A connection's requests past 10
//!   in one turn get 429, as AWS IoT answers more than 10 in flight.
//! - One turn takes what is waiting, applies it in order to the shadows in
//!   memory, writes every changed shadow in one store batch and waits for
//!   the commit. Only then are responses published and calls answered, and
//!   only then may a request's PUBACK go out: nothing is answered that a
//!   crash could take back. If the commit fails, the turn's changes are
//!   undone and what read or wrote a shadow they touched is answered 500.
//! - Responses are ordinary messages published by the gateway at QoS 1, so
//!   subscribers need `iot:Receive`, and rules and the bridge see them as
//!   on AWS. A response carries its request's republish count, so a rule
//!   that answers a shadow response with another request is bounded.
//! - Every shadow is held in memory (the store is read once, at start);
//!   the store is written, never read, while the gateway runs. Deleted
//!   shadows are kept 48 hours for their version, then swept.

use super::document::{self, ErrorKind, Limits, Shadow, ShadowError};
use super::{Op, ShadowId};
use crate::codec::{PublishProperties, QoS};
use crate::metrics::{DropReason, Metrics, ShadowOp};
use crate::router::{Message, Origin, Router, Tapped};
use crate::spool::Throttle;
use crate::store::{Commit, Op as StoreOp, Store, StoreError};
use bytes::Bytes;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests taken per turn, from each of the two queues.
const TURN: usize = 256;

/// REST calls waiting for the service.
const CALLS: usize = 1024;

/// Page size of ListNamedShadowsForThing when the caller gives none.
const DEFAULT_PAGE: usize = 25;

/// Requests one connection may have waiting; more are answered 429, as on
/// AWS IoT (spec §1.10), so one device cannot crowd the others out.
const INFLIGHT_PER_CONNECTION: usize = 10;

/// How long a turn's answers may wait, in all, for a full queue in front of
/// the store, and how long apart they try again.
const ANSWER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
const ANSWER_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// How often tombstones past their 48 hours are forgotten.
const SWEEP: std::time::Duration = std::time::Duration::from_secs(3600);

/// What bounds the shadows.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Size and depth of a document.
    pub limits: Limits,
    /// Named shadows one thing may have.
    pub max_named_per_thing: usize,
    /// Shadows held in all, tombstones included.
    pub max_shadows: usize,
}

/// A REST call on a shadow.
#[derive(Debug)]
pub enum Call {
    /// GetThingShadow.
    Get(ShadowId),
    /// UpdateThingShadow, with the request document.
    Update(ShadowId, Bytes),
    /// DeleteThingShadow.
    Delete(ShadowId),
    /// ListNamedShadowsForThing.
    List {
        /// The thing.
        thing: String,
        /// Names per page (1 to 100).
        page_size: Option<usize>,
        /// Where the previous page ended.
        next_token: Option<String>,
    },
}

impl Call {
    fn op(&self) -> ShadowOp {
        match self {
            Self::Get(_) => ShadowOp::Get,
            Self::Update(..) => ShadowOp::Update,
            Self::Delete(_) => ShadowOp::Delete,
            Self::List { .. } => ShadowOp::List,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<u8>, ShadowError>>;

/// The way in for REST calls; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<(Call, Reply)>,
    metrics: Arc<Metrics>,
}

impl Handle {
    /// Asks the service and waits for its answer: the response body, or
    /// AWS's error.
    pub async fn call(&self, call: Call) -> Result<Vec<u8>, ShadowError> {
        let op = call.op();
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.try_send((call, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ShadowError::new(ErrorKind::Throttled, "Too Many Requests")
            }
            mpsc::error::TrySendError::Closed(_) => internal(),
        });
        if let Err(e) = sent {
            self.metrics.shadow_request(op, Some(e.kind.code()));
            return Err(e);
        }
        answer.await.unwrap_or_else(|_| Err(internal()))
    }
}

fn internal() -> ShadowError {
    ShadowError::new(ErrorKind::Internal, "Internal service failure")
}

/// Starts the service on the shadows read from the store.
pub fn start(
    router: Arc<Router>,
    store: Store,
    metrics: Arc<Metrics>,
    settings: Settings,
    restored: Vec<(String, Vec<u8>)>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Handle {
    router
        .shadow_tap()
        .set_filters(Arc::new(crate::router::FilterIndex::new(
            super::REQUEST_FILTERS.iter().copied().enumerate(),
        )));
    let (tx, rx) = mpsc::channel(CALLS);
    let mut service = Service {
        shadows: BTreeMap::new(),
        router,
        store,
        metrics: metrics.clone(),
        settings,
        warn: Throttle::default(),
        count: 0,
        bytes: 0,
    };
    for (key, record) in restored {
        match (ShadowId::from_key(&key), Shadow::from_record(&record)) {
            (Some(id), Some(s)) => {
                service.put(id, Some(s));
            }
            _ => tracing::error!(key = %key.replace('\0', "/"), "unreadable shadow record skipped"),
        }
    }
    service.gauges();
    tracker.spawn(service.run(rx, shutdown));
    Handle { tx, metrics }
}

struct Service {
    shadows: BTreeMap<ShadowId, Shadow>,
    router: Arc<Router>,
    store: Store,
    metrics: Arc<Metrics>,
    settings: Settings,
    warn: Throttle,
    /// Shadows that exist, and the bytes of their state, for the gauges.
    count: usize,
    bytes: usize,
}

/// Where a request came from, and so how it is answered.
enum Source {
    /// A publish: answered on `.../accepted` or `.../rejected`; its
    /// acknowledgement waits for `done`.
    Mqtt {
        durable: Option<Commit>,
        done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
        /// The request's republish count and whether it came from upstream,
        /// carried into its answers.
        hops: u8,
        bridged: bool,
    },
    /// A REST call: answered with the body or the error, never on `/rejected`.
    Rest(Reply),
}

/// One request's answer, held until the turn's writes are durable.
struct Answer {
    from: Source,
    op: ShadowOp,
    /// The response topic prefix (`P/<op>`), if the request named a shadow.
    topic: String,
    client_token: Option<String>,
    /// The shadow it read or wrote, if any.
    shadow: Option<ShadowId>,
    result: Result<Done, ShadowError>,
}

/// What an accepted request returns and publishes.
struct Done {
    body: Vec<u8>,
    /// Published before `accepted` (`update/delta`, and `update/documents`
    /// when anyone listens: it is the largest answer), as
    /// AWS's own local service does, so a client that sees `accepted` has
    /// them queued already.
    before: Vec<(String, Vec<u8>)>,
    /// Whether `P/<op>/accepted` is published (not for REST reads).
    publish: bool,
}

impl Service {
    async fn run(mut self, mut calls: mpsc::Receiver<(Call, Reply)>, shutdown: CancellationToken) {
        let router = self.router.clone();
        let tap = router.shadow_tap();
        let mut tapped = Vec::with_capacity(TURN);
        let mut rest = Vec::with_capacity(TURN);
        let mut next_sweep = Instant::now();
        loop {
            // Swept on a clock, not only when idle, so that tombstones past
            // their time leave even under steady load.
            if Instant::now() >= next_sweep {
                self.sweep(unix_secs());
                next_sweep = Instant::now() + SWEEP;
            }
            tap.take(&mut tapped, TURN);
            while rest.len() < TURN {
                match calls.try_recv() {
                    Ok(c) => rest.push(c),
                    Err(_) => break,
                }
            }
            if tapped.is_empty() && rest.is_empty() {
                tokio::select! {
                    _ = tap.offered() => continue,
                    _ = tokio::time::sleep_until(next_sweep) => continue,
                    c = calls.recv() => match c {
                        Some(c) => rest.push(c),
                        None => return,
                    },
                    _ = shutdown.cancelled() => {
                        // Answer what was offered before the end, so that no
                        // publisher waits for an acknowledgement forever.
                        tap.take(&mut tapped, usize::MAX);
                        while let Ok(c) = calls.try_recv() {
                            rest.push(c);
                        }
                        self.turn(&mut tapped, &mut rest).await;
                        return;
                    }
                }
            }
            self.turn(&mut tapped, &mut rest).await;
        }
    }

    async fn turn(&mut self, tapped: &mut Vec<Tapped>, calls: &mut Vec<(Call, Reply)>) {
        let now = unix_secs();
        let mut ops = Vec::new();
        // The first state of every shadow this turn changes, to undo it.
        let mut undo: BTreeMap<ShadowId, Option<Shadow>> = BTreeMap::new();
        let mut answers = Vec::with_capacity(tapped.len() + calls.len());
        let mut waiting: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for t in tapped.drain(..) {
            let session = t.msg.origin.session;
            let throttled = session != 0 && {
                let n = waiting.entry(session).or_default();
                *n += 1;
                *n > INFLIGHT_PER_CONNECTION
            };
            let from = Source::Mqtt {
                durable: t.durable,
                done: t.done,
                hops: t.msg.origin.hops,
                bridged: t.msg.origin.bridged,
            };
            let topic = t.msg.topic.as_str();
            // Refused before it names a shadow: too many waiting, or a
            // name the filters matched but AWS does not allow.
            let refused = |from, error| Answer {
                op: topic
                    .rsplit('/')
                    .next()
                    .and_then(Op::parse)
                    .map_or(ShadowOp::Update, ShadowOp::from),
                topic: topic.to_owned(),
                client_token: document::client_token(&t.msg.payload),
                shadow: None,
                result: Err(error),
                from,
            };
            let parsed = super::parse_request(topic);
            let (id, op) = match parsed {
                _ if throttled => {
                    answers.push(refused(
                        from,
                        ShadowError::new(ErrorKind::Throttled, "Too Many Requests"),
                    ));
                    continue;
                }
                None => {
                    answers.push(refused(
                        from,
                        ShadowError::new(
                            ErrorKind::InvalidRequest,
                            "Invalid thing name or shadow name",
                        ),
                    ));
                    continue;
                }
                Some(p) => p,
            };
            // A get or delete carries only its token; an update's is read
            // with the rest of its document.
            let (call, token) = match op {
                Op::Get => (Call::Get(id), document::client_token(&t.msg.payload)),
                Op::Update => (Call::Update(id, t.msg.payload.clone()), None),
                Op::Delete => (Call::Delete(id), document::client_token(&t.msg.payload)),
            };
            answers.push(self.apply(call, from, token, now, &mut ops, &mut undo));
        }
        for (call, reply) in calls.drain(..) {
            answers.push(self.apply(call, Source::Rest(reply), None, now, &mut ops, &mut undo));
        }
        if !ops.is_empty() {
            let committed = match self.store.try_submit(ops) {
                Ok(commit) => commit.await.unwrap_or(Err(Arc::new(StoreError::Closed))),
                Err(e) => Err(Arc::new(e)),
            };
            if let Err(e) = committed {
                if self.warn.allow() {
                    tracing::error!(error = %e, "shadow changes not stored; their requests are answered 500");
                }
                // What read or wrote a shadow changed in this turn (and any
                // listing, which may have seen one) is answered 500; the rest
                // stands.
                for a in &mut answers {
                    let touched = match &a.shadow {
                        Some(id) => undo.contains_key(id),
                        None => a.op == ShadowOp::List,
                    };
                    if touched {
                        a.result = Err(internal());
                    }
                }
                for (id, before) in undo {
                    self.put(id, before);
                }
            }
            self.gauges();
        }
        let patience = Instant::now() + ANSWER_PATIENCE;
        for a in answers {
            self.answer(a, now, patience).await;
        }
    }

    /// Works out one request against the shadows in memory, queueing the
    /// store write it makes.
    fn apply(
        &mut self,
        call: Call,
        from: Source,
        mut client_token: Option<String>,
        now: u64,
        ops: &mut Vec<StoreOp>,
        undo: &mut BTreeMap<ShadowId, Option<Shadow>>,
    ) -> Answer {
        let op = call.op();
        let rest = matches!(from, Source::Rest(_));
        let shadow = match &call {
            Call::Get(id) | Call::Update(id, _) | Call::Delete(id) => Some(id.clone()),
            Call::List { .. } => None,
        };
        let (topic, result) = match call {
            Call::Get(id) => {
                let body = self
                    .shadows
                    .get(&id)
                    .and_then(|s| s.get(client_token.as_deref(), now))
                    .ok_or_else(|| ShadowError::no_shadow(id.display_name()));
                let topic = format!("{}/get", id.prefix());
                (
                    topic,
                    body.map(|body| Done {
                        body,
                        before: Vec::new(),
                        publish: !rest,
                    }),
                )
            }
            Call::Delete(id) => {
                let topic = format!("{}/delete", id.prefix());
                let result = match self
                    .shadows
                    .get(&id)
                    .and_then(|s| s.delete(client_token.as_deref(), now))
                {
                    None => Err(ShadowError::no_shadow(id.display_name())),
                    Some((tombstone, body)) => {
                        self.write(id, tombstone, ops, undo);
                        Ok(Done {
                            body,
                            before: Vec::new(),
                            publish: true,
                        })
                    }
                };
                (topic, result)
            }
            Call::Update(id, body) => {
                let topic = format!("{}/update", id.prefix());
                let result = match document::parse_update(&body, &self.settings.limits) {
                    Err(r) => {
                        client_token = r.client_token;
                        Err(r.error)
                    }
                    Ok(update) => {
                        client_token.clone_from(&update.client_token);
                        self.update(&id, &update, now).map(|u| {
                            let prefix = id.prefix();
                            let mut before = Vec::with_capacity(2);
                            if let Some(delta) = u.delta {
                                before.push((format!("{prefix}/update/delta"), delta));
                            }
                            let documents = format!("{prefix}/update/documents");
                            if self.router.is_heard(&documents) {
                                let token = update.client_token.as_deref();
                                let body = self
                                    .shadows
                                    .get(&id)
                                    .unwrap_or(&Shadow::default())
                                    .documents(&u.shadow, token, now);
                                before.push((documents, body));
                            }
                            self.write(id, u.shadow, ops, undo);
                            Done {
                                body: u.accepted,
                                before,
                                publish: true,
                            }
                        })
                    }
                };
                (topic, result)
            }
            Call::List {
                thing,
                page_size,
                next_token,
            } => (
                String::new(),
                self.list(&thing, page_size, next_token.as_deref(), now),
            ),
        };
        Answer {
            from,
            op,
            topic,
            client_token,
            shadow,
            result,
        }
    }

    /// Forgets tombstones past their 48 hours, in memory and in the store.
    fn sweep(&mut self, now: u64) {
        let expired: Vec<ShadowId> = self
            .shadows
            .iter()
            .filter(|(_, s)| s.is_expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        let ops = expired
            .iter()
            .map(|id| StoreOp::DelShadow(id.key()))
            .collect();
        self.store.enqueue(ops);
        for id in expired {
            self.put(id, None);
        }
    }

    fn update(
        &self,
        id: &ShadowId,
        update: &document::Update,
        now: u64,
    ) -> Result<document::Updated, ShadowError> {
        let current = self.shadows.get(id);
        if current.is_none() && self.shadows.len() >= self.settings.max_shadows {
            return Err(ShadowError::new(
                ErrorKind::Unavailable,
                format!(
                    "The gateway already holds the most shadows allowed ({})",
                    self.settings.max_shadows
                ),
            ));
        }
        if current.is_none() && !id.is_classic() {
            // Deleted names count until their 48 hours are over, so that a
            // device creating and deleting names fills its own thing's
            // allowance, not the gateway's.
            let named = self
                .named(&id.thing)
                .filter(|(_, s)| !s.is_expired(now))
                .count();
            if named >= self.settings.max_named_per_thing {
                return Err(ShadowError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "Thing {} already has the most named shadows allowed ({named})",
                        id.thing
                    ),
                ));
            }
        }
        current
            .unwrap_or(&Shadow::default())
            .update(update, now, &self.settings.limits)
    }

    /// The thing's named shadows, tombstones included, in name order.
    fn named<'a>(&'a self, thing: &'a str) -> impl Iterator<Item = (&'a str, &'a Shadow)> + 'a {
        let from = ShadowId {
            thing: thing.to_owned(),
            name: String::new(),
        };
        self.shadows
            .range(from..)
            .take_while(move |(id, _)| id.thing == thing)
            .filter(|(id, _)| !id.is_classic())
            .map(|(id, s)| (id.name.as_str(), s))
    }

    fn list(
        &self,
        thing: &str,
        page_size: Option<usize>,
        after: Option<&str>,
        now: u64,
    ) -> Result<Done, ShadowError> {
        let size = page_size.unwrap_or(DEFAULT_PAGE);
        if !(1..=100).contains(&size) {
            return Err(ShadowError::new(
                ErrorKind::InvalidRequest,
                "pageSize must be between 1 and 100",
            ));
        }
        let mut names = self
            .named(thing)
            .filter(|(n, s)| s.exists && after.is_none_or(|a| *n > a))
            .map(|(n, _)| n);
        let page: Vec<&str> = names.by_ref().take(size).collect();
        let mut body = json!({ "results": page, "timestamp": now });
        if names.next().is_some()
            && let Some(last) = page.last()
        {
            body["nextToken"] = (*last).into();
        }
        Ok(Done {
            body: body.to_string().into_bytes(),
            before: Vec::new(),
            publish: false,
        })
    }

    fn write(
        &mut self,
        id: ShadowId,
        shadow: Shadow,
        ops: &mut Vec<StoreOp>,
        undo: &mut BTreeMap<ShadowId, Option<Shadow>>,
    ) {
        ops.push(StoreOp::PutShadow(id.key(), shadow.to_record()));
        let before = self.put(id.clone(), Some(shadow));
        undo.entry(id).or_insert(before);
    }

    /// Sets (or removes) a shadow in memory, keeping the gauges' figures.
    fn put(&mut self, id: ShadowId, shadow: Option<Shadow>) -> Option<Shadow> {
        let size = |s: &Shadow| {
            if s.exists {
                (1, s.state_bytes())
            } else {
                (0, 0)
            }
        };
        if let Some((n, b)) = shadow.as_ref().map(size) {
            self.count += n;
            self.bytes += b;
        }
        let before = match shadow {
            Some(s) => self.shadows.insert(id, s),
            None => self.shadows.remove(&id),
        };
        if let Some((n, b)) = before.as_ref().map(size) {
            self.count -= n;
            self.bytes -= b;
        }
        before
    }

    async fn answer(&self, a: Answer, now: u64, patience: Instant) {
        self.metrics
            .shadow_request(a.op, a.result.as_ref().err().map(|e| e.kind.code()));
        if let Err(e) = &a.result
            && self.warn.allow()
        {
            tracing::info!(request = %a.topic, code = e.kind.code(), error = %e, "shadow request rejected");
        }
        let (hops, bridged) = match &a.from {
            Source::Mqtt { hops, bridged, .. } => (*hops, *bridged),
            Source::Rest(_) => (0, false),
        };
        match &a.result {
            Ok(done) => {
                for (topic, body) in &done.before {
                    self.publish(topic, body, (hops, bridged), patience).await;
                }
                if done.publish {
                    self.publish(
                        &format!("{}/accepted", a.topic),
                        &done.body,
                        (hops, bridged),
                        patience,
                    )
                    .await;
                }
            }
            Err(e) if matches!(a.from, Source::Mqtt { .. }) => {
                self.publish(
                    &format!("{}/rejected", a.topic),
                    &e.document(a.client_token.as_deref(), now),
                    (hops, bridged),
                    patience,
                )
                .await;
            }
            Err(_) => {}
        }
        match a.from {
            Source::Rest(reply) => {
                let _ = reply.send(a.result.map(|d| d.body));
            }
            Source::Mqtt { durable, done, .. } => {
                if let Some(done) = done {
                    acknowledge(done, durable, &a.result);
                }
            }
        }
    }

    /// Publishes a response as the gateway, with its request's republish
    /// count and upstream flag. A queue in front of the store that is full
    /// (the rules engine's, the writer's) is waited out until `patience`,
    /// holding every shadow back meanwhile, as an overloaded gateway should;
    /// past that, or on any other failure, the answer is dropped, counted
    /// and logged: the request itself is already stored.
    async fn publish(
        &self,
        topic: &str,
        body: &[u8],
        (hops, bridged): (u8, bool),
        patience: Instant,
    ) {
        let origin = if hops == 0 && !bridged {
            Origin::gateway()
        } else {
            Arc::new(Origin {
                hops,
                bridged,
                ..Origin::default()
            })
        };
        let msg = Arc::new(Message::new(
            topic.into(),
            Bytes::copy_from_slice(body),
            QoS::AtLeastOnce,
            false,
            PublishProperties::default(),
            Instant::now(),
            origin,
        ));
        loop {
            match self.router.publish(&msg, Instant::now()) {
                Ok(_) => return,
                Err(StoreError::Full(_) | StoreError::Busy) if Instant::now() < patience => {
                    tokio::time::sleep(ANSWER_PAUSE).await;
                }
                Err(e) => {
                    self.metrics.count_drop(DropReason::ShadowAnswer);
                    if self.warn.allow() {
                        tracing::warn!(topic, error = %e, "shadow response not published");
                    }
                    return;
                }
            }
        }
    }

    fn gauges(&self) {
        self.metrics.shadow_documents.set(self.count as f64);
        self.metrics.shadow_bytes.set(self.bytes as f64);
    }
}

/// Lets a request's acknowledgement go: refused if the service could not
/// store it, so that its publisher sends it again. The publish's own writes
/// (and the rules engine's, when a rule matched the request) are waited for
/// apart from the service's turns, so a slow engine never holds shadows
/// up; if they fail, the publisher sends the request again and it applies
/// twice: at least once, as everywhere else.
fn acknowledge(
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
    durable: Option<Commit>,
    result: &Result<Done, ShadowError>,
) {
    let ours = match result {
        Err(e) if e.kind == ErrorKind::Internal => {
            Err(Arc::new(StoreError::Transaction(e.message.clone())))
        }
        _ => Ok(()),
    };
    match durable {
        None => {
            let _ = done.send(ours);
        }
        Some(commit) => {
            tokio::spawn(async move {
                let theirs = commit.await.unwrap_or(Err(Arc::new(StoreError::Closed)));
                let _ = done.send(theirs.and(ours));
            });
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
