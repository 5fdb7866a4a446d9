//! The jobs service: an internal client of the router with tasks of its
//! own. One lock orders every change to the jobs, whoever asks (a device
//! over MQTT, the control plane, a timer, a thing joining a group); under
//! it each change's records are queued for the store and its
//! notifications published, so that they come in the order the changes
//! were made. A change is answered once its records are durable.

use super::core::{Code, Effects, Event, ExecStatus, Execution, Job, JobStatus, Jobs, Refusal};
use super::documents::Api;
use super::{REQUEST_FILTERS, Request, documents};
use crate::metrics::{DropReason, EventKind, Metrics};
use crate::policy::compile::ArnHead;
use crate::registry::{Change, Registry};
use crate::router::{FilterIndex, Message, Router, Tapped, release};
use crate::store::{Op, Store};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests taken from the tap at once.
const TURN: usize = 32;

const JOB: &str = "job/";
const EXECUTION: &str = "jobexecution/";

/// Why a change did not happen.
#[derive(Debug)]
pub enum Failure {
    /// The state machine refused it.
    Refused(Refusal),
    /// It happened but could not be made durable.
    NotDurable(String),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

/// The wall clock as the tokio clock moves: epoch milliseconds for records
/// and documents, whose timers paused time can drive.
#[derive(Debug)]
struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.wall_ms + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.start + std::time::Duration::from_millis(ms.saturating_sub(self.wall_ms))
    }
}

/// The service: the jobs, and what every change needs.
pub struct Service {
    jobs: Mutex<Jobs>,
    router: Arc<Router>,
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    head: ArnHead,
    clock: Clock,
    /// Wakes the timer task: a deadline may have come nearer.
    timers: Notify,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("jobs::Service")
    }
}

/// The jobs and executions among the stored registry records.
pub fn records(all: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    all.iter()
        .filter(|(k, _)| k.starts_with(JOB) || k.starts_with(EXECUTION))
        .cloned()
        .collect()
}

/// What the service works with besides the router.
#[derive(Debug)]
pub struct Parts {
    /// Things and groups, for targets; its changes, for continuous jobs.
    pub registry: Arc<Registry>,
    /// Where jobs are kept.
    pub store: Store,
    /// Counts and gauges.
    pub metrics: Arc<Metrics>,
    /// For ARNs in events.
    pub head: ArnHead,
}

/// Starts the service on the stored `records` (see [`records`]): the
/// device requests, the timers, and the continuous jobs' groups.
pub fn start(
    router: Arc<Router>,
    Parts {
        registry,
        store,
        metrics,
        head,
    }: Parts,
    records: Vec<(String, Vec<u8>)>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Arc<Service> {
    let mut jobs = Vec::new();
    let mut executions = Vec::new();
    for (key, value) in &records {
        if key.starts_with(JOB) {
            match serde_json::from_slice::<Job>(value) {
                Ok(j) => jobs.push(j),
                Err(e) => tracing::warn!(key = %key, error = %e, "unreadable job record skipped"),
            }
        } else if key.starts_with(EXECUTION) {
            match serde_json::from_slice::<Execution>(value) {
                Ok(e) => executions.push(e),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "unreadable job execution record skipped");
                }
            }
        }
    }
    router.jobs_tap().set_filters(Arc::new(FilterIndex::new(
        REQUEST_FILTERS.into_iter().enumerate(),
    )));
    let service = Arc::new(Service {
        jobs: Mutex::new(Jobs::restore(jobs, executions)),
        router,
        registry,
        store,
        metrics,
        head,
        clock: Clock {
            wall_ms: crate::store::now_ms(),
            start: Instant::now(),
        },
        timers: Notify::new(),
    });
    service.gauges(&service.jobs.lock());
    tracker.spawn(service.clone().devices(shutdown.clone()));
    tracker.spawn(service.clone().timers(shutdown.clone()));
    tracker.spawn(service.clone().groups(shutdown));
    service
}

impl Service {
    /// Now, as the service's records and timers count it.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Reads the jobs.
    pub fn read<T>(&self, f: impl FnOnce(&Jobs) -> T) -> T {
        f(&self.jobs.lock())
    }

    /// Makes a change; once its records are durable, what it returned.
    pub async fn change<T>(
        &self,
        f: impl FnOnce(&mut Jobs, u64) -> Result<(T, Effects), Refusal>,
    ) -> Result<T, Failure> {
        let out = {
            let mut jobs = self.jobs.lock();
            let now = self.now_ms();
            let (out, fx) = f(&mut jobs, now)?;
            self.apply(&mut jobs, &fx, now);
            out
        };
        self.timers.notify_one();
        self.store.barrier().await.map_err(|e| {
            tracing::error!(error = %e, "a jobs change is not durable");
            Failure::NotDurable(e)
        })?;
        Ok(out)
    }

    /// The things `targets` name now: things by name, groups with the
    /// groups below them.
    pub fn targets(&self, targets: &[String]) -> Result<BTreeSet<String>, Refusal> {
        let mut out = BTreeSet::new();
        for arn in targets {
            let not_found = |what: &str| Refusal {
                code: Code::NotFound,
                message: format!("{what} {arn} does not exist"),
                state: None,
            };
            if let Some((_, thing)) = arn.rsplit_once(":thing/") {
                self.registry
                    .thing(thing)
                    .ok_or_else(|| not_found("Thing"))?;
                out.insert(thing.to_owned());
            } else if let Some((_, group)) = arn.rsplit_once(":thinggroup/") {
                out.extend(
                    self.registry
                        .things_in_group(group, true)
                        .map_err(|_| not_found("Thing group"))?,
                );
            } else {
                return Err(Refusal {
                    code: Code::InvalidRequest,
                    message: format!("target `{arn}` is not a thing or thing group ARN"),
                    state: None,
                });
            }
        }
        Ok(out)
    }

    /// Under the lock: queues the records a change touched, publishes the
    /// notifications and events it makes, and sets the gauges.
    fn apply(&self, jobs: &mut Jobs, fx: &Effects, now: u64) {
        let mut ops = Vec::new();
        for id in &fx.jobs {
            if let Some(j) = jobs.job(id) {
                ops.push(Op::PutRegistry(
                    format!("{JOB}{id}"),
                    serde_json::to_vec(j).unwrap_or_default(),
                ));
            }
        }
        for id in &fx.deleted_jobs {
            ops.push(Op::DelRegistry(format!("{JOB}{id}")));
        }
        for (thing, job) in &fx.executions {
            if let Some(e) = jobs.execution(thing, job) {
                ops.push(Op::PutRegistry(
                    format!("{EXECUTION}{thing}/{job}"),
                    serde_json::to_vec(e).unwrap_or_default(),
                ));
            }
        }
        for (thing, job) in &fx.deleted_executions {
            ops.push(Op::DelRegistry(format!("{EXECUTION}{thing}/{job}")));
        }
        if !ops.is_empty() {
            self.store.enqueue(ops);
        }
        for thing in &fx.notify {
            let doc = documents::notify(&jobs.pending(thing), now);
            self.publish(&format!("$aws/things/{thing}/jobs/notify"), &doc);
        }
        for (thing, next) in jobs.next_changed(&fx.touched) {
            let next = next
                .as_ref()
                .and_then(|e| jobs.job(&e.job_id).map(|j| (e, j)));
            let doc = documents::notify_next(next, now);
            self.publish(&format!("$aws/things/{thing}/jobs/notify-next"), &doc);
        }
        for event in &fx.events {
            self.event(jobs, event, now);
        }
        self.gauges(jobs);
    }

    /// Publishes a job or execution event, if its type is enabled.
    fn event(&self, jobs: &Jobs, event: &Event, now: u64) {
        let id = crate::registry::identity::uuid_v4();
        let (kind, enabled, topic, doc) = match event {
            Event::Job(job, operation) => {
                let mut doc = json!({
                    "eventType": "JOB",
                    "eventId": id,
                    "timestamp": now / 1000,
                    "operation": operation,
                    "jobId": job,
                    "status": operation.to_ascii_uppercase(),
                });
                if let Some(j) = jobs.job(job) {
                    doc["targetSelection"] = j.spec.selection.name().into();
                    doc["targets"] = json!(j.spec.targets);
                    doc["description"] = j.spec.description.clone().into();
                    doc["createdAt"] = j.created_ms.into();
                    doc["lastUpdatedAt"] = j.updated_ms.into();
                    if *operation == "completed" {
                        doc["completedAt"] = j.completed_ms.into();
                        doc["jobProcessDetails"] = process_details(jobs, job);
                    } else if let Some(c) = &j.comment {
                        doc["comment"] = c.clone().into();
                    }
                }
                (
                    EventKind::Job,
                    "JOB",
                    format!("$aws/events/job/{job}/{operation}"),
                    doc,
                )
            }
            Event::Execution(e, status) => {
                let operation =
                    status.map_or("deleted".to_owned(), |s| s.name().to_ascii_lowercase());
                let mut doc = json!({
                    "eventType": "JOB_EXECUTION",
                    "eventId": id,
                    "timestamp": now / 1000,
                    "operation": operation,
                    "jobId": e.job_id,
                    "thingArn": self.head.arn("thing", &e.thing),
                    "status": status.unwrap_or(e.status).name(),
                });
                if !e.details.is_empty() {
                    doc["statusDetails"] = json!(e.details);
                }
                (
                    EventKind::JobExecution,
                    "JOB_EXECUTION",
                    format!("$aws/events/jobExecution/{}/{operation}", e.job_id),
                    doc,
                )
            }
        };
        if self.registry.event_enabled(enabled) {
            self.publish(&topic, &doc);
            self.metrics.event_published(kind);
        }
    }

    /// Publishes as the gateway, at QoS 1.
    fn publish(&self, topic: &str, doc: &Value) {
        let msg = Message::from_gateway(topic.to_owned(), doc.to_string().into_bytes());
        if let Err(e) = self.router.publish(&msg, Instant::now()) {
            self.metrics.count_drop(DropReason::JobsNotice);
            tracing::warn!(topic, error = %e, "a jobs notification was not published");
        }
    }

    fn gauges(&self, jobs: &Jobs) {
        let mut by_job = BTreeMap::new();
        for j in jobs.jobs() {
            *by_job.entry(j.status.name()).or_insert(0usize) += 1;
        }
        for status in [
            JobStatus::InProgress,
            JobStatus::Canceled,
            JobStatus::Completed,
        ] {
            let n = by_job.get(status.name()).copied().unwrap_or(0);
            self.metrics.jobs_in(status.name(), n);
        }
        let counts = jobs.counts_all();
        for status in ExecStatus::ALL {
            let n = counts.get(&status).copied().unwrap_or(0);
            self.metrics.job_executions_in(status.name(), n);
        }
    }

    /// Answers device requests from the tap.
    async fn devices(self: Arc<Self>, shutdown: CancellationToken) {
        let router = self.router.clone();
        let tap = router.jobs_tap();
        let mut batch = Vec::with_capacity(TURN);
        loop {
            tap.take(&mut batch, TURN);
            if batch.is_empty() {
                tokio::select! {
                    () = tap.offered() => continue,
                    () = shutdown.cancelled() => {
                        tap.take(&mut batch, usize::MAX);
                        for t in batch.drain(..) {
                            self.device_request(t).await;
                        }
                        return;
                    }
                }
            }
            for t in batch.drain(..) {
                self.device_request(t).await;
            }
        }
    }

    /// Answers one device request on `<topic>/accepted` or `/rejected`, to
    /// the requester alone, once what it changed is durable.
    async fn device_request(&self, t: Tapped) {
        let Tapped { msg, durable, done } = t;
        let topic = msg.topic.as_str();
        let request: Result<Value, (&'static str, String)> =
            serde_json::from_slice::<Value>(&msg.payload)
                .ok()
                .filter(Value::is_object)
                .ok_or(("InvalidJson", "the request is not a JSON object".to_owned()));
        let client_token = request
            .as_ref()
            .ok()
            .and_then(|r| r["clientToken"].as_str())
            .map(str::to_owned);
        let answer = match (super::parse(topic), request) {
            (Some(Ok((thing, r))), Ok(body)) => self.answer(thing, r, &body, Api::Mqtt).await,
            (Some(Err(_)), _) | (None, _) => Err(Answer::refused(
                "InvalidTopic",
                "the topic names no jobs request",
            )),
            (_, Err((code, message))) => Err(Answer::refused(code, &message)),
        };
        let now = self.now_ms();
        let (suffix, mut doc) = match answer {
            Ok(mut doc) => {
                doc["timestamp"] = (now / 1000).into();
                ("accepted", doc)
            }
            Err(a) => {
                self.metrics.job_rejection(a.code);
                crate::refusal!(
                    msg.origin.principal.as_deref().unwrap_or("gateway"),
                    "job_request_rejected",
                    topic,
                    code = a.code,
                    why = %a.message,
                    "jobs request rejected"
                );
                let doc = documents::rejected(a.code, &a.message, None, a.state.as_deref(), now);
                ("rejected", doc)
            }
        };
        if let Some(token) = client_token {
            doc["clientToken"] = token.into();
        }
        let reply =
            Message::from_gateway(format!("{topic}/{suffix}"), doc.to_string().into_bytes());
        self.router.answer(&reply, msg.origin.session);
        release(durable, done).await;
    }

    /// The accepted document of one device request (over MQTT, or the
    /// same over HTTPS), or why not.
    pub async fn answer(
        &self,
        thing: &str,
        request: Request<'_>,
        body: &Value,
        api: Api,
    ) -> Result<Value, Answer> {
        match request {
            Request::GetPending => Ok(self.read(|jobs| {
                let (running, queued) = documents::pending_lists(&jobs.pending(thing));
                json!({"inProgressJobs": running, "queuedJobs": queued})
            })),
            Request::StartNext => {
                let details = details(body)?;
                let step = minutes(body)?
                    .map(|m| {
                        u64::try_from(m)
                            .map_err(|_| Answer::invalid("stepTimeoutInMinutes is 1 to 10080"))
                    })
                    .transpose()?;
                let started = self
                    .change(|jobs, now| jobs.start_next(thing, details, step, now))
                    .await?;
                Ok(self.read(|jobs| match started {
                    Some(e) => {
                        json!({"execution": documents::execution(&e, jobs.job(&e.job_id), api)})
                    }
                    None => json!({}),
                }))
            }
            Request::Describe(job) => {
                let number = body["executionNumber"].as_u64();
                let with_document = body["includeJobDocument"].as_bool().unwrap_or(true);
                self.read(|jobs| {
                    let e = if job == "$next" {
                        jobs.next_pending(thing)
                    } else {
                        let e = jobs
                            .execution(thing, job)
                            .filter(|e| number.is_none_or(|n| n == e.number));
                        Some(e.ok_or_else(|| Answer::from(not_found(thing, job)))?)
                    };
                    Ok(match e {
                        Some(e) => {
                            let j = jobs.job(&e.job_id).filter(|_| with_document);
                            json!({"execution": documents::execution(e, j, api)})
                        }
                        None => json!({}),
                    })
                })
            }
            Request::Update(job) => {
                let update = super::core::Update {
                    status: body["status"].as_str().unwrap_or_default().to_owned(),
                    details: details(body)?,
                    expected_version: body["expectedVersion"].as_u64(),
                    execution_number: body["executionNumber"].as_u64(),
                    step_minutes: minutes(body)?,
                };
                let with_state = body["includeJobExecutionState"].as_bool().unwrap_or(false);
                let with_document = body["includeJobDocument"].as_bool().unwrap_or(false);
                self.change(|jobs, now| jobs.update(thing, job, update, now).map(|fx| ((), fx)))
                    .await?;
                Ok(self.read(|jobs| {
                    let mut doc = json!({});
                    if let Some(e) = jobs.execution(thing, job) {
                        if with_state {
                            doc["executionState"] = documents::state(e);
                        }
                        if let Some(j) = jobs.job(job).filter(|_| with_document) {
                            doc["jobDocument"] = documents::job_document(j, api);
                        }
                    }
                    doc
                }))
            }
        }
    }

    /// Times out executions as their timers run out.
    async fn timers(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.read(Jobs::next_deadline);
            let wait = async {
                match next {
                    Some(ms) => tokio::time::sleep_until(self.clock.instant(ms)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait => {
                    // A change that is not durable is logged where it fails.
                    let _ = self.change(|jobs, now| Ok(((), jobs.expire(now)))).await;
                }
                () = self.timers.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Follows the continuous jobs' groups: a thing that joins a target
    /// group gets the job; one that leaves has its execution REMOVED.
    async fn groups(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.registry.changes();
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                () = shutdown.cancelled() => return,
            };
            match change {
                Ok(Change::GroupMembership(..) | Change::ThingGroup(..)) => {}
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "registry changes missed; continuous jobs are reconciled whole"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            let continuous: Vec<(String, Vec<String>)> = self.read(|jobs| {
                jobs.jobs()
                    .filter(|j| {
                        j.spec.selection == super::core::Selection::Continuous
                            && j.status == JobStatus::InProgress
                    })
                    .map(|j| (j.id.clone(), j.spec.targets.clone()))
                    .collect()
            });
            for (job, targets) in continuous {
                let things = self.reachable(&targets);
                let _ = self
                    .change(|jobs, now| Ok(((), jobs.reconcile(&job, &things, now))))
                    .await;
            }
        }
    }

    /// The things `targets` name now, leaving out targets that no longer
    /// exist.
    fn reachable(&self, targets: &[String]) -> BTreeSet<String> {
        targets
            .iter()
            .filter_map(|t| self.targets(std::slice::from_ref(t)).ok())
            .flatten()
            .collect()
    }
}

/// `jobProcessDetails`'s counters.
pub fn process_details(jobs: &Jobs, job: &str) -> Value {
    let counts = jobs.counts(job);
    let n = |s: ExecStatus| counts.get(&s).copied().unwrap_or(0);
    json!({
        "numberOfCanceledThings": n(ExecStatus::Canceled),
        "numberOfSucceededThings": n(ExecStatus::Succeeded),
        "numberOfFailedThings": n(ExecStatus::Failed),
        "numberOfRejectedThings": n(ExecStatus::Rejected),
        "numberOfQueuedThings": n(ExecStatus::Queued),
        "numberOfInProgressThings": n(ExecStatus::InProgress),
        "numberOfRemovedThings": n(ExecStatus::Removed),
        "numberOfTimedOutThings": n(ExecStatus::TimedOut),
    })
}

/// A refusal of a device request, as `/rejected` says it.
#[derive(Debug)]
pub struct Answer {
    /// AWS's MQTT error code (`VersionMismatch`, ...).
    pub code: &'static str,
    /// Why, in words.
    pub message: String,
    /// The execution, for InvalidStateTransition and VersionMismatch.
    pub state: Option<Box<Execution>>,
}

impl Answer {
    fn refused(code: &'static str, message: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
            state: None,
        }
    }

    fn invalid(message: &str) -> Self {
        Self::refused("InvalidRequest", message)
    }
}

impl From<Refusal> for Answer {
    fn from(r: Refusal) -> Self {
        Self {
            code: documents::code(&r.code),
            message: r.message,
            state: r.state,
        }
    }
}

impl From<Failure> for Answer {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Refused(r) => r.into(),
            Failure::NotDurable(_) => {
                Self::refused("InternalError", "the change could not be made durable")
            }
        }
    }
}

fn not_found(thing: &str, job: &str) -> Refusal {
    Refusal {
        code: Code::NotFound,
        message: format!("Job execution {job} on thing {thing} does not exist"),
        state: None,
    }
}

/// `statusDetails`, a map of strings, if given.
fn details(body: &Value) -> Result<Option<BTreeMap<String, String>>, Answer> {
    match &body["statusDetails"] {
        Value::Null => Ok(None),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(Answer::invalid("statusDetails values are strings")),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        _ => Err(Answer::invalid("statusDetails is an object")),
    }
}

/// `stepTimeoutInMinutes`, if given.
fn minutes(body: &Value) -> Result<Option<i64>, Answer> {
    match &body["stepTimeoutInMinutes"] {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Answer::invalid("stepTimeoutInMinutes is a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::core::{Rollout, Selection, Spec};
    use std::time::Duration;

    /// A jobs service over a fresh store and registry, with `things`.
    fn started(
        things: &[&str],
    ) -> (
        Arc<Service>,
        CancellationToken,
        TaskTracker,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let (router, store, metrics) = crate::router::on_fresh_store(dir.path());
        let registry = Arc::new(Registry::new(store.clone(), Vec::new(), Vec::new(), false));
        for t in things {
            registry
                .create_thing(t, None, BTreeMap::new())
                .expect("thing");
        }
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        let service = start(
            router,
            Parts {
                registry,
                store,
                metrics,
                head: ArnHead::new("us-east-1", "000000000000"),
            },
            Vec::new(),
            shutdown.clone(),
            &tracker,
        );
        (service, shutdown, tracker, dir)
    }

    fn job(things: &[&str]) -> Spec {
        Spec {
            document: "{}".into(),
            description: String::new(),
            targets: things
                .iter()
                .map(|t| format!("arn:aws:iot:us-east-1:000000000000:thing/{t}"))
                .collect(),
            selection: Selection::Snapshot,
            in_progress_minutes: None,
            retries: Vec::new(),
            aborts: Vec::new(),
            rollout: None,
        }
    }

    async fn stop(shutdown: CancellationToken, tracker: TaskTracker) {
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_execution_times_out_on_the_tokio_clock_when_its_timer_runs_out() {
        let (service, shutdown, tracker, _dir) = started(&["lamp"]);
        let mut job = job(&["lamp"]);
        job.in_progress_minutes = Some(20);
        let things = BTreeSet::from(["lamp".to_owned()]);
        service
            .change(|j, now| j.create("t", job, &things, now).map(|fx| ((), fx)))
            .await
            .expect("created");
        // A step of 30 minutes cannot outlast the job's 20.
        service
            .change(|j, now| j.start_next("lamp", None, Some(30), now))
            .await
            .expect("started");
        tokio::time::sleep(Duration::from_secs(21 * 60)).await;
        let e = service
            .read(|j| j.execution("lamp", "t").cloned())
            .expect("execution");
        assert_eq!(e.status, ExecStatus::TimedOut);
        let started = e.started_ms.expect("started");
        assert_eq!(e.updated_ms - started, 20 * 60_000, "at the job's deadline");
        stop(shutdown, tracker).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollout_goes_on_each_minute_on_the_tokio_clock() {
        let names = ["a", "b", "c"];
        let (service, shutdown, tracker, _dir) = started(&names);
        let mut job = job(&names);
        job.rollout = Some(Rollout {
            maximum_per_minute: 1,
            exponential: None,
        });
        let things: BTreeSet<String> = names.iter().map(|t| (*t).to_owned()).collect();
        service
            .change(|j, now| j.create("r", job, &things, now).map(|fx| ((), fx)))
            .await
            .expect("created");
        // Paused time moves on by itself while the store syncs, so the test
        // steps until all were given the job, then reads when each was.
        let queued = || {
            service.read(|j| {
                let mut at: Vec<u64> = j.executions_of_job("r").map(|e| e.queued_ms).collect();
                at.sort_unstable();
                at
            })
        };
        for _ in 0..100_000 {
            if queued().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let queued = queued();
        assert_eq!(queued.len(), 3);
        // A minute at least: the service may come late, never early.
        assert!(
            queued[1] - queued[0] >= 60_000 && queued[2] - queued[1] >= 60_000,
            "one a minute: {queued:?}"
        );
        stop(shutdown, tracker).await;
    }
}
