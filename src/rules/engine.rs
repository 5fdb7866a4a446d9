//! The rules engine at run time.
//!
//! - Intake: one task takes messages from the router's [`Tap`] in publish
//!   order, parses each payload once, evaluates every enabled rule whose
//!   FROM matches, renders each action into a [`Job`] and appends it to the
//!   action's spool. A QoS 1/2 publish is told once its own writes and
//!   every job it produced are durable; its acknowledgement waits for that.
//! - Lanes: one task per spool delivers jobs from the head in order, one
//!   batch at a time, and deletes them only once delivered. A failing target
//!   is retried with exponential backoff and jitter; a job that cannot
//!   succeed, or that ages out of or is pushed out of its spool, goes to the
//!   rule's error action with AWS's error document.
//! - Reload swaps the compiled rule set; a spool keeps draining even after
//!   its rule is gone, so nothing accepted is dropped by an edit.
//!
//! [`Tap`]: crate::router::Tap

use super::actions::{self, Context, Deliverer, Failure, Job, Outcome};
use super::{Action, Rule, RuleSet};
use crate::config::{self, Config};
use crate::metrics::{ActionMetrics, DropReason, Metrics, RuleMetrics};
use crate::router::{Router, Tapped};
use crate::spool::{self, Limits, Spool, SpoolError, Throttle};
use crate::sql::{self, Output};
use crate::store::{Commit, Store, StoreError};
use crate::topic;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages evaluated per turn of the intake loop.
const INTAKE_BATCH: usize = 256;

/// Jobs read from a spool's head per delivery turn.
const LANE_BATCH: usize = 64;

/// One spool and what its delivery reports to.
#[derive(Debug)]
struct Lane {
    spool: Arc<Spool>,
    metrics: ActionMetrics,
    /// Whether this is an error action's spool: its failures go nowhere.
    is_error: bool,
    /// Whether the bridge delivers this spool (its records are messages, not jobs).
    external: bool,
    warn: Throttle,
}

impl Lane {
    fn append(&self, job: Job) -> Result<spool::Appended, SpoolError> {
        let appended = self.spool.append(job.into_record(), crate::store::now_ms());
        self.gauges();
        appended
    }

    fn gauges(&self) {
        self.spool.report(&self.metrics);
    }
}

/// The rules in force and the index of their FROM filters, swapped as one.
#[derive(Debug, Default)]
struct LiveSet {
    rules: Vec<LiveRule>,
    /// Shared with the router's tap: one index decides both whether a
    /// message is offered and which rules it selects.
    index: Arc<crate::router::FilterIndex>,
}

/// A rule with its metrics and the lanes of its actions.
#[derive(Debug)]
struct LiveRule {
    rule: Rule,
    metrics: RuleMetrics,
    lanes: Vec<Arc<Lane>>,
    error_lane: Option<Arc<Lane>>,
    warn: Throttle,
}

/// What the engine needs from the gateway's configuration.
#[derive(Debug, Clone)]
struct Settings {
    actions: config::Actions,
    topic_limits: topic::Limits,
    max_payload: usize,
    account: String,
}

/// The running engine; cheap to share.
#[derive(Debug)]
pub struct Engine {
    rules: ArcSwap<LiveSet>,
    lanes: Mutex<HashMap<Arc<str>, Arc<Lane>>>,
    /// Spool records read at startup, handed to each spool when it is made.
    restored: Mutex<HashMap<String, spool::Rows>>,
    router: Arc<Router>,
    store: Store,
    metrics: Arc<Metrics>,
    deliverer: Deliverer,
    settings: Settings,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// What the engine shares with the rest of the gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where messages come from and republishes go.
    pub router: Arc<Router>,
    /// Where spools live.
    pub store: Store,
    /// Where figures go.
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Tracks the engine's tasks.
    pub tracker: TaskTracker,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A rule did not compile.
    #[error("rules: {}", .0.join("; "))]
    Rules(Vec<String>),
    /// The HTTP client could not be made (e.g. `actions.http_ca` unreadable).
    #[error("http actions: {0}")]
    Http(String),
    /// The file root could not be created.
    #[error("actions.file_root {0}")]
    FileRoot(String),
}

impl Engine {
    /// Compiles the configured rules, restores every spool found in the
    /// store (including those of rules no longer configured, so they
    /// drain), and starts the intake and one lane per spool. Must run
    /// inside the runtime; tasks are tracked by `tracker` and stop with
    /// `shutdown`, the intake only after evaluating what was offered.
    pub fn start(
        config: &Config,
        rules: &[config::Rule],
        gateway: Gateway,
        spools: HashMap<String, spool::Rows>,
        upstream: Option<Arc<Spool>>,
    ) -> Result<Arc<Self>, EngineError> {
        let Gateway {
            router,
            store,
            metrics,
            shutdown,
            tracker,
        } = gateway;
        let set = RuleSet::compile_parts(rules, &config.actions, config.upstream.as_ref())
            .map_err(EngineError::Rules)?;
        let a = &config.actions;
        std::fs::create_dir_all(&a.file_root)
            .map_err(|e| EngineError::FileRoot(format!("{}: {e}", a.file_root.display())))?;
        let http = actions::http::client(a.http_ca.as_deref()).map_err(EngineError::Http)?;
        let deliverer = Deliverer {
            router: router.clone(),
            http,
            files: actions::file::Files::new(a),
        };
        let restored: HashMap<_, _> = spools
            .into_iter()
            .filter(|(name, _)| name.starts_with("rules/"))
            .collect();
        let engine = Arc::new(Self {
            rules: ArcSwap::default(),
            lanes: Mutex::new(HashMap::new()),
            restored: Mutex::new(restored),
            router,
            store,
            metrics,
            deliverer,
            settings: Settings {
                actions: a.clone(),
                topic_limits: config.limits.topics(),
                max_payload: config.limits.max_payload_bytes,
                account: config.aws.account_id.clone(),
            },
            runtime: tokio::runtime::Handle::current(),
            shutdown,
            tracker,
        });
        if let Some(spool) = upstream {
            let name: Arc<str> = spool.name().into();
            let lane = Lane {
                metrics: engine.metrics.action(&name, &name, &name),
                spool,
                is_error: false,
                external: true,
                warn: Throttle::default(),
            };
            lane.gauges();
            engine.lanes.lock().insert(name, Arc::new(lane));
        }
        engine.install(set);
        // Spools of rules or actions no longer configured: those with jobs
        // drain; empty ones are forgotten.
        let orphans: Vec<(String, bool)> = engine
            .restored
            .lock()
            .iter()
            .map(|(name, rows)| (name.clone(), spool::has_records(rows)))
            .collect();
        for (name, pending) in orphans {
            if pending {
                engine.lane(&name);
            } else {
                engine.restored.lock().remove(&name);
                spool::forget(&engine.store, &name);
            }
        }
        let e = engine.clone();
        engine
            .runtime
            .spawn(engine.tracker.track_future(async move { e.intake().await }));
        Ok(engine)
    }

    /// Puts a compiled rule set in force: new messages see it at once.
    pub fn install(self: &Arc<Self>, set: RuleSet) {
        let index = Arc::new(set.filters());
        let live: Vec<LiveRule> = set
            .rules
            .into_iter()
            .map(|rule| {
                let lane = |a: &Action| self.lane(&a.spool);
                LiveRule {
                    metrics: self.metrics.rule(&rule.name),
                    lanes: rule.actions.iter().map(lane).collect(),
                    error_lane: rule.error_action.as_ref().map(lane),
                    warn: Throttle::default(),
                    rule,
                }
            })
            .collect();
        self.rules.store(Arc::new(LiveSet {
            rules: live,
            index: index.clone(),
        }));
        self.router.tap().set_filters(index);
    }

    /// The lane of a spool, made (and its delivery started) on first use.
    fn lane(self: &Arc<Self>, name: &str) -> Arc<Lane> {
        let mut lanes = self.lanes.lock();
        if let Some(l) = lanes.get(name) {
            return l.clone();
        }
        // Spool names are `rules/<rule>/<action>`.
        let mut parts = name.splitn(3, '/').skip(1);
        let (rule, action) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let a = &self.settings.actions;
        let restored = self.restored.lock().remove(name).unwrap_or_default();
        let lane = Arc::new(Lane {
            spool: Arc::new(Spool::new(
                name,
                self.store.clone(),
                Limits::of_actions(a),
                restored,
            )),
            metrics: self.metrics.action(rule, action, name),
            is_error: action == "error",
            external: false,
            warn: Throttle::default(),
        });
        lane.gauges();
        lanes.insert(name.into(), lane.clone());
        let (engine, l) = (self.clone(), lane.clone());
        self.runtime.spawn(
            self.tracker
                .track_future(async move { engine.deliver(&l).await }),
        );
        lane
    }

    /// Evaluates what publishers offer, in order, until shutdown; then
    /// evaluates what is still queued, so it reaches the spools.
    async fn intake(self: Arc<Self>) {
        let tap = self.router.tap();
        let mut batch = Vec::with_capacity(INTAKE_BATCH);
        // Which rules a message selects, reused from message to message.
        let mut matched = Vec::new();
        loop {
            tap.take(&mut batch, INTAKE_BATCH);
            if batch.is_empty() {
                tokio::select! {
                    _ = tap.offered() => continue,
                    _ = self.shutdown.cancelled() => {
                        tap.take(&mut batch, usize::MAX);
                        for t in batch.drain(..) {
                            self.evaluate(t, &mut matched);
                        }
                        return;
                    }
                }
            }
            for t in batch.drain(..) {
                self.evaluate(t, &mut matched);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Runs every matching rule over one message and spools the jobs.
    fn evaluate(&self, t: Tapped, matched: &mut Vec<usize>) {
        let Tapped { msg, durable, done } = t;
        let set = self.rules.load();
        let published = msg.topic.as_str();
        // Basic Ingest runs the rule it names, whatever its FROM, and the
        // rule sees the topic without the `$aws/rules/<name>/` prefix.
        let ingest = topic::basic_ingest(published);
        let topic = ingest.map_or(published, |(_, inner)| inner);
        let origin = &msg.origin;
        let now_ms = crate::store::now_ms();
        let mut parsed = None;
        let mut original = None;
        let mut commits: Vec<Commit> = durable.into_iter().collect();
        let mut refused = None;
        set.index.matching(published, matched);
        if let Some((name, _)) = ingest {
            matched.retain(|&i| set.rules.get(i).is_some_and(|r| *r.rule.name == *name));
            if matched.is_empty() {
                self.metrics.count_drop(DropReason::RuleNotFound);
                crate::refusal!(
                    origin.principal.as_deref().unwrap_or("gateway"),
                    "rule_not_found",
                    topic = published,
                    "Basic Ingest names a rule that does not exist or is disabled"
                );
            }
        }
        for live in matched.iter().filter_map(|&i| set.rules.get(i)) {
            live.metrics.matched.increment(1);
            if origin.hops >= self.settings.actions.max_hops {
                live.metrics.failed.increment(1);
                if live.warn.allow() {
                    tracing::warn!(rule = %live.rule.name, topic = published, hops = origin.hops, "message republished actions.max_hops times; rules skip it");
                }
                continue;
            }
            let json = if live.rule.reads_payload() {
                parsed
                    .get_or_insert_with(|| sql::Message::parse_payload(&msg.payload))
                    .as_ref()
            } else {
                None
            };
            let m = sql::Message {
                topic,
                payload: &msg.payload,
                json,
                client_id: origin.client_id.as_deref(),
                principal: origin.principal.as_deref(),
                timestamp_ms: now_ms as i64,
                account: &self.settings.account,
            };
            let ev = if live.rule.verbatim {
                sql::Evaluation {
                    output: Some(Output::Raw(msg.payload.to_vec())),
                    variables: sql::Variables::new(),
                }
            } else {
                sql::evaluate(&live.rule.stmt, &m)
            };
            let Some(output) = ev.output else { continue };
            if matches!(output, Output::Nothing) {
                continue;
            }
            live.metrics.evaluated.increment(1);
            let bytes = output.to_bytes();
            let cx = Context {
                msg: &m,
                vars: &ev.variables,
                hops: origin.hops,
                bridged: origin.bridged,
                properties: live.rule.verbatim.then_some(&msg.properties),
                topic_limits: self.settings.topic_limits,
                max_payload: self.settings.max_payload,
            };
            // Only an error document needs the original payload.
            let original: &str = if live.rule.error_action.is_some() {
                original.get_or_insert_with(|| actions::original(&msg.payload))
            } else {
                ""
            };
            let mut failures = Vec::new();
            for (action, lane) in live.rule.actions.iter().zip(&live.lanes) {
                // What came from upstream never goes back up.
                if origin.bridged && lane.external {
                    continue;
                }
                let target = match action.kind.render(&cx, &output, &bytes) {
                    Ok(t) => t,
                    Err(f) => {
                        lane.metrics.failed.increment(1);
                        failures.push(f);
                        continue;
                    }
                };
                let job = Job {
                    rule: live.rule.name.to_string(),
                    topic: published.to_owned(),
                    client_id: origin.client_id.as_deref().map(str::to_owned),
                    hops: origin.hops,
                    bridged: origin.bridged,
                    original: original.to_owned(),
                    target,
                };
                match lane.append(job) {
                    Ok(appended) => {
                        commits.push(appended.commit);
                        for r in appended.evicted {
                            self.give_up(lane, &r.data, "pushed out of a full spool");
                        }
                    }
                    Err(SpoolError::TooLarge { .. }) => {
                        lane.metrics.failed.increment(1);
                        failures.push(
                            action
                                .kind
                                .failure(&cx, "larger than actions.spool_max_bytes".into()),
                        );
                    }
                    // A client's publish is refused; a republish is not, or a
                    // republish lane could wait forever on its own full spool.
                    // The bridge's spool drains by itself: a republish waits for it.
                    Err(SpoolError::Full(name)) if origin.hops == 0 || lane.external => {
                        lane.metrics.failed.increment(1);
                        refused = Some(StoreError::Full(format!("spool {name}")));
                    }
                    Err(SpoolError::Full(_)) => {
                        lane.metrics.failed.increment(1);
                        failures.push(action.kind.failure(&cx, "its spool is full".into()));
                    }
                    Err(SpoolError::Store(e)) => refused = Some(e),
                }
            }
            if !failures.is_empty() {
                live.metrics.failed.increment(1);
                let doc = actions::error_document(
                    &live.rule.name,
                    published,
                    origin.client_id.as_deref(),
                    original,
                    &failures,
                );
                commits.extend(self.to_error_action(live, doc, origin.hops, origin.bridged));
            }
        }
        let Some(done) = done else { return };
        if let Some(e) = refused {
            let _ = done.send(Err(Arc::new(e)));
            return;
        }
        if commits.is_empty() {
            let _ = done.send(Ok(()));
            return;
        }
        self.runtime.spawn(async move {
            for c in commits {
                match c.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = done.send(Err(Arc::new(StoreError::Closed)));
                        return;
                    }
                }
            }
            let _ = done.send(Ok(()));
        });
    }

    /// Sends an error document to a rule's error action, if it has one.
    /// `hops` are those of the message that failed: an error action that
    /// republishes into its own rule is bounded like any other republish.
    fn to_error_action(
        &self,
        live: &LiveRule,
        doc: serde_json::Value,
        hops: u8,
        bridged: bool,
    ) -> Option<Commit> {
        if bridged && live.error_lane.as_ref().is_some_and(|l| l.external) {
            return None;
        }
        let (Some(action), Some(lane)) = (&live.rule.error_action, &live.error_lane) else {
            if live.warn.allow() {
                tracing::warn!(rule = %live.rule.name, failures = %doc["failures"], "rule action failed; the rule has no error action");
            }
            return None;
        };
        let topic = doc["topic"].as_str().unwrap_or_default().to_owned();
        let client_id = doc["clientId"].as_str().map(str::to_owned);
        let payload = doc.to_string();
        let m = sql::Message {
            topic: &topic,
            payload: payload.as_bytes(),
            json: Some(&doc),
            client_id: client_id.as_deref(),
            principal: None,
            timestamp_ms: crate::store::now_ms() as i64,
            account: &self.settings.account,
        };
        let vars = sql::Variables::new();
        let cx = Context {
            msg: &m,
            vars: &vars,
            hops,
            bridged,
            properties: None,
            topic_limits: self.settings.topic_limits,
            max_payload: self.settings.max_payload,
        };
        let output = Output::Json(doc.clone());
        let target = match action.kind.render(&cx, &output, &output.to_bytes()) {
            Ok(t) => t,
            Err(f) => {
                lane.metrics.failed.increment(1);
                if lane.warn.allow() {
                    tracing::warn!(rule = %live.rule.name, error = %f.error_message, "error action could not be rendered");
                }
                return None;
            }
        };
        let job = Job {
            rule: live.rule.name.to_string(),
            topic,
            client_id,
            hops,
            bridged,
            original: String::new(),
            target,
        };
        match lane.append(job) {
            Ok(appended) => {
                for r in appended.evicted {
                    self.give_up(lane, &r.data, "pushed out of a full spool");
                }
                Some(appended.commit)
            }
            Err(e) => {
                lane.metrics.failed.increment(1);
                if lane.warn.allow() {
                    tracing::warn!(rule = %live.rule.name, error = %e, "error action refused an error document");
                }
                None
            }
        }
    }

    /// A job its action will never deliver: counted, and sent to its rule's
    /// error action (an error action's own failures are only logged).
    fn give_up(&self, lane: &Lane, record: &[u8], why: &str) {
        lane.metrics.failed.increment(1);
        if lane.external {
            if lane.warn.allow() {
                tracing::warn!(
                    spool = lane.spool.name(),
                    error = why,
                    "message for the upstream dropped"
                );
            }
            return;
        }
        let Ok(job) = serde_json::from_slice::<Job>(record) else {
            tracing::error!(spool = lane.spool.name(), "unreadable spool record dropped");
            return;
        };
        if lane.is_error {
            if lane.warn.allow() {
                tracing::warn!(spool = lane.spool.name(), rule = %job.rule, error = why, "error action gave up on an error document");
            }
            return;
        }
        let set = self.rules.load();
        let Some(live) = set.rules.iter().find(|r| *r.rule.name == *job.rule) else {
            if lane.warn.allow() {
                tracing::warn!(spool = lane.spool.name(), rule = %job.rule, error = why, "action gave up; its rule is no longer configured");
            }
            return;
        };
        let failure = Failure {
            failed_action: job.target.aws_name(),
            failed_resource: job.target.resource().to_owned(),
            error_message: why.to_owned(),
        };
        let doc = actions::error_document(
            &job.rule,
            &job.topic,
            job.client_id.as_deref(),
            &job.original,
            &[failure],
        );
        // Queued before the job's deletion, so a crash in between repeats
        // the error document rather than losing it.
        drop(self.to_error_action(live, doc, job.hops, job.bridged));
    }

    /// Delivers one spool from its head, in order, until shutdown.
    async fn deliver(self: Arc<Self>, lane: &Lane) {
        let a = &self.settings.actions;
        let mut backoff = spool::Backoff::new(a.retry_initial_ms, a.retry_max_ms);
        loop {
            for r in lane.spool.expire(crate::store::now_ms()) {
                self.give_up(
                    lane,
                    &r.data,
                    "expired in its spool (actions.spool_max_age_secs)",
                );
            }
            lane.gauges();
            let head = lane.spool.peek(LANE_BATCH);
            if head.is_empty() {
                tokio::select! {
                    _ = lane.spool.appended() => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            let Ok(first) = serde_json::from_slice::<Job>(&head[0].data) else {
                // Nothing will ever deliver a record that does not decode.
                self.give_up(lane, &head[0].data, "unreadable");
                lane.spool.ack(head[0].seq);
                continue;
            };
            let jobs = actions::batch(first, head[1..].iter().map(|r| &r.data[..]));
            let n = jobs.len();
            if !lane.spool.hold(head[0].seq, head[n - 1].seq) {
                // Pushed out of a full spool since it was read: the error
                // action has it.
                continue;
            }
            let outcome = tokio::select! {
                o = self.deliverer.deliver(&jobs) => o,
                _ = self.shutdown.cancelled() => return,
            };
            match outcome {
                Outcome::Delivered => {
                    lane.metrics.delivered.increment(n as u64);
                    backoff.reset();
                }
                Outcome::Failed(why) => {
                    if lane.warn.allow() {
                        tracing::warn!(spool = lane.spool.name(), error = %why, "rule action failed");
                    }
                    for r in &head[..n] {
                        self.give_up(lane, &r.data, &why);
                    }
                }
                Outcome::Retry(why) => {
                    lane.metrics.retried.increment(1);
                    if backoff.is_first() && lane.warn.allow() {
                        tracing::warn!(spool = lane.spool.name(), error = %why, "rule action failed; retrying with backoff");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
            for r in &head[..n] {
                lane.spool.ack(r.seq);
            }
        }
    }
}
