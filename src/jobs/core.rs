//! The jobs and their executions, and AWS's state machine over them (spec
//! aws-iot-device-services.md §4.1). Pure: every change takes the time
//! and reports what it touched in [`Effects`], for the service to store,
//! notify and announce.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Longest job document, as AWS allows.
pub const MAX_DOCUMENT: usize = 32_768;
/// Targets a job may name.
pub const MAX_TARGETS: usize = 100;
/// Jobs not yet completed, canceled or deleted at once (AWS's quotas for
/// snapshot and continuous jobs together).
pub const MAX_ACTIVE_JOBS: usize = 200;
/// Jobs kept, finished ones included; a site deletes old ones to make more.
pub const MAX_JOBS: usize = 10_000;
/// Pending executions a device is told of at once.
pub const MAX_PENDING_LISTED: usize = 10;
/// `statusDetails` pairs.
pub const MAX_DETAILS: usize = 10;
/// Things a minute a rollout may reach, as AWS allows.
pub const MAX_ROLLOUT_PER_MINUTE: u32 = 1_000;
/// Longest step or in-progress timeout: seven days.
pub const MAX_TIMEOUT_MINUTES: u64 = 10_080;

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Executions are queued or running.
    InProgress,
    /// Canceled: nothing new runs.
    Canceled,
    /// Every execution of a snapshot job is terminal.
    Completed,
}

impl JobStatus {
    /// AWS's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Canceled => "CANCELED",
            Self::Completed => "COMPLETED",
        }
    }
}

/// An execution's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecStatus {
    /// Waiting for the device.
    Queued,
    /// The device took it.
    InProgress,
    /// The device finished it.
    Succeeded,
    /// The device failed it.
    Failed,
    /// A timer ran out.
    TimedOut,
    /// The device refused it.
    Rejected,
    /// Its thing left the target group of a continuous job.
    Removed,
    /// Canceled by an operator.
    Canceled,
}

impl ExecStatus {
    /// Every status, in AWS's order.
    pub const ALL: [Self; 8] = [
        Self::Queued,
        Self::InProgress,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Rejected,
        Self::Removed,
        Self::Canceled,
    ];

    /// AWS's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Rejected => "REJECTED",
            Self::Removed => "REMOVED",
            Self::Canceled => "CANCELED",
        }
    }

    /// The status AWS's name names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether nothing changes it any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::InProgress)
    }
}

/// Whether a job's group targets are expanded once or followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Selection {
    /// The things in the target groups when the job was made.
    Snapshot,
    /// Things joining a target group later get the job too.
    Continuous,
}

impl Selection {
    /// AWS's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Snapshot => "SNAPSHOT",
            Self::Continuous => "CONTINUOUS",
        }
    }
}

/// Which failures a retry criterion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureType {
    /// FAILED.
    Failed,
    /// TIMED_OUT.
    TimedOut,
    /// Either.
    All,
}

/// `jobExecutionsRetryConfig.criteriaList[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// What it counts.
    pub failure_type: FailureType,
    /// Retries it allows, 0 to 10.
    pub retries: u32,
}

/// Which ended executions an abort criterion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AbortType {
    /// FAILED.
    Failed,
    /// REJECTED.
    Rejected,
    /// TIMED_OUT.
    TimedOut,
    /// Any of the three.
    All,
}

impl AbortType {
    fn counts(self, status: ExecStatus) -> bool {
        matches!(
            (self, status),
            (Self::Failed | Self::All, ExecStatus::Failed)
                | (Self::Rejected | Self::All, ExecStatus::Rejected)
                | (Self::TimedOut | Self::All, ExecStatus::TimedOut)
        )
    }
}

/// `abortConfig.criteriaList[]` (action CANCEL): the job is canceled once
/// at least `min_executed` executions have ended and the ones counted are
/// at least the threshold's share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// What it counts.
    pub failure_type: AbortType,
    /// `thresholdPercentage`, in hundredths of a percent.
    pub threshold_basis_points: u32,
    /// `minNumberOfExecutedThings`.
    pub min_executed: u64,
}

/// `jobExecutionsRolloutConfig.exponentialRate`: the rate starts at the
/// base and grows by the factor, from the next minute on, each time the
/// criterion is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exponential {
    /// `baseRatePerMinute`.
    pub base_per_minute: u32,
    /// `incrementFactor` in tenths: AWS takes one decimal, 1.1 to 5.0.
    pub factor_tenths: u32,
    /// `rateIncreaseCriteria.numberOfNotifiedThings`.
    pub notified: Option<u64>,
    /// `rateIncreaseCriteria.numberOfSucceededThings`.
    pub succeeded: Option<u64>,
}

/// `jobExecutionsRolloutConfig`: how many things a minute are given the
/// job. A job without one is still given out at AWS's 1,000 a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// `maximumPerMinute`.
    pub maximum_per_minute: u32,
    /// `exponentialRate`.
    pub exponential: Option<Exponential>,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            maximum_per_minute: MAX_ROLLOUT_PER_MINUTE,
            exponential: None,
        }
    }
}

impl Rollout {
    /// The rate a rollout starts at.
    fn start(&self) -> u32 {
        self.exponential.map_or(self.maximum_per_minute, |x| {
            x.base_per_minute.min(self.maximum_per_minute)
        })
    }

    fn check(&self) -> Result<(), Refusal> {
        let per_minute = 1..=MAX_ROLLOUT_PER_MINUTE;
        let fine = per_minute.contains(&self.maximum_per_minute)
            && self.exponential.is_none_or(|x| {
                per_minute.contains(&x.base_per_minute)
                    && (11..=50).contains(&x.factor_tenths)
                    && x.notified.is_none_or(|n| n >= 1)
                    && x.succeeded.is_none_or(|n| n >= 1)
            });
        if fine {
            Ok(())
        } else {
            Err(refuse(
                Code::InvalidRequest,
                format!(
                    "maximumPerMinute and baseRatePerMinute are 1 to {MAX_ROLLOUT_PER_MINUTE}, incrementFactor 1.1 to 5.0 with one decimal, and the rate increase criteria at least 1"
                ),
            ))
        }
    }
}

/// What CreateJob asks for, checked; a job keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The job document (JSON text).
    pub document: String,
    /// `description`.
    pub description: String,
    /// The target ARNs as given.
    pub targets: Vec<String>,
    /// `targetSelection`.
    pub selection: Selection,
    /// `timeoutConfig.inProgressTimeoutInMinutes`.
    pub in_progress_minutes: Option<u64>,
    /// `jobExecutionsRetryConfig.criteriaList`.
    #[serde(default)]
    pub retries: Vec<Retry>,
    /// `abortConfig.criteriaList`.
    #[serde(default)]
    pub aborts: Vec<Abort>,
    /// `jobExecutionsRolloutConfig`, if given.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// Where a job's rollout is: the things still to be given it, and this
/// minute's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pace {
    /// Things still to be given the job, in turn.
    pub waiting: VecDeque<String>,
    /// Things a minute now.
    pub rate: u32,
    /// When this minute began, ms.
    pub window_ms: u64,
    /// Things given the job this minute.
    pub sent: u32,
    /// Things given the job since the rate last grew.
    pub notified: u64,
    /// Executions succeeded since the rate last grew.
    pub succeeded: u64,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            rate: MAX_ROLLOUT_PER_MINUTE,
            window_ms: 0,
            sent: 0,
            notified: 0,
            succeeded: 0,
        }
    }
}

/// A job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// `jobId`.
    pub id: String,
    /// What it was created with, as UpdateJob left it.
    #[serde(flatten)]
    pub spec: Spec,
    /// Its status.
    pub status: JobStatus,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it completed or was canceled.
    pub completed_ms: Option<u64>,
    /// Canceled with `force`.
    pub force_canceled: bool,
    /// CancelJob's `reasonCode`.
    pub reason_code: Option<String>,
    /// CancelJob's `comment`.
    pub comment: Option<String>,
    /// The last execution number given to each thing.
    #[serde(default)]
    pub numbers: BTreeMap<String, u64>,
    /// Its rollout.
    #[serde(default)]
    pub pace: Pace,
}

impl Job {
    /// A new minute of the rollout: the rate grows first if an
    /// exponential rollout's criterion was met.
    fn next_minute(&mut self, now: u64) {
        let rollout = self.spec.rollout.unwrap_or_default();
        let p = &mut self.pace;
        if let Some(x) = rollout.exponential {
            let due = x.notified.is_some_and(|n| p.notified >= n)
                || x.succeeded.is_some_and(|n| p.succeeded >= n);
            if due {
                // At least one more: 1.1 times 1 is still 1 rounded down.
                p.rate = (p.rate.saturating_mul(x.factor_tenths).div_ceil(10))
                    .min(rollout.maximum_per_minute);
                p.notified = 0;
                p.succeeded = 0;
            }
        }
        p.window_ms = now;
        p.sent = 0;
    }

    /// When the rollout can go on, if things wait for their minute.
    fn next_minute_at(&self) -> Option<u64> {
        let p = &self.pace;
        (self.status == JobStatus::InProgress && !p.waiting.is_empty() && p.sent >= p.rate)
            .then(|| p.window_ms.saturating_add(60_000))
    }
}

/// One job's execution on one thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The job.
    pub job_id: String,
    /// The thing.
    pub thing: String,
    /// `executionNumber`.
    pub number: u64,
    /// Its status.
    pub status: ExecStatus,
    /// `statusDetails`.
    pub details: BTreeMap<String, String>,
    /// When it was queued, ms.
    pub queued_ms: u64,
    /// When it went IN_PROGRESS.
    pub started_ms: Option<u64>,
    /// When it last changed.
    pub updated_ms: u64,
    /// `versionNumber`: 1 when queued, one more per change.
    pub version: u64,
    /// Retries so far.
    pub retry_attempt: u32,
    /// Canceled with `force` while IN_PROGRESS.
    pub force_canceled: bool,
    /// When the step timer runs out.
    pub step_deadline_ms: Option<u64>,
    /// When the job's in-progress timer runs out.
    pub job_deadline_ms: Option<u64>,
}

impl Execution {
    /// When it times out, if a timer runs.
    pub fn deadline(&self) -> Option<u64> {
        match (self.step_deadline_ms, self.job_deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why a request was refused, with AWS's classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// Not valid as given.
    InvalidRequest,
    /// No such job or execution.
    NotFound,
    /// Not from the current status.
    InvalidStateTransition,
    /// `expectedVersion` is not the current version.
    VersionMismatch,
    /// A job of that id exists.
    AlreadyExists,
    /// A quota is reached.
    LimitExceeded,
}

/// A refusal: its class, its message, and for state and version
/// refusals the execution's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The class.
    pub code: Code,
    /// Why, in words.
    pub message: String,
    /// The execution as it is, for InvalidStateTransition and VersionMismatch.
    pub state: Option<Box<Execution>>,
}

fn refuse(code: Code, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
        state: None,
    }
}

/// What a job-event or execution-event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A job reached `operation` (`completed`, `canceled`, ...).
    Job(String, &'static str),
    /// An execution reached a terminal status (or was deleted: `None`).
    Execution(Execution, Option<ExecStatus>),
}

/// What a change touched.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Jobs whose records changed.
    pub jobs: BTreeSet<String>,
    /// Jobs deleted.
    pub deleted_jobs: BTreeSet<String>,
    /// Executions whose records changed: (thing, job).
    pub executions: BTreeSet<(String, String)>,
    /// Executions deleted.
    pub deleted_executions: BTreeSet<(String, String)>,
    /// Things whose `jobs/notify` is due: an execution was queued or ended.
    pub notify: BTreeSet<String>,
    /// Things whose first pending execution may have changed.
    pub touched: BTreeSet<String>,
    /// Job and execution events.
    pub events: Vec<Event>,
}

impl Effects {
    /// Adds what another change touched.
    pub fn merge(&mut self, other: Effects) {
        self.jobs.extend(other.jobs);
        self.deleted_jobs.extend(other.deleted_jobs);
        self.executions.extend(other.executions);
        self.deleted_executions.extend(other.deleted_executions);
        self.notify.extend(other.notify);
        self.touched.extend(other.touched);
        self.events.extend(other.events);
    }
}

/// A device's update of its execution (UpdateJobExecution).
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// `status`, required.
    pub status: String,
    /// `statusDetails`, merged into the execution's.
    pub details: Option<BTreeMap<String, String>>,
    /// `expectedVersion`.
    pub expected_version: Option<u64>,
    /// `executionNumber`.
    pub execution_number: Option<u64>,
    /// `stepTimeoutInMinutes`; -1 stops the step timer.
    pub step_minutes: Option<i64>,
}

/// What UpdateJob changes; `None` leaves it as it is.
#[derive(Debug, Clone, Default)]
pub struct JobChange {
    /// `description`.
    pub description: Option<String>,
    /// `timeoutConfig.inProgressTimeoutInMinutes`.
    pub in_progress_minutes: Option<u64>,
    /// `jobExecutionsRetryConfig.criteriaList`.
    pub retries: Option<Vec<Retry>>,
    /// `abortConfig.criteriaList`.
    pub aborts: Option<Vec<Abort>>,
    /// `jobExecutionsRolloutConfig`.
    pub rollout: Option<Rollout>,
}

/// Every job and execution.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: BTreeMap<String, Job>,
    /// By (thing, job).
    executions: BTreeMap<(String, String), Execution>,
    /// The first pending execution of each thing as last announced, for
    /// `notify-next`.
    announced: BTreeMap<String, Option<String>>,
}

/// AWS's rule for job ids: 1 to 64 of `[a-zA-Z0-9_-]`.
pub fn valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `statusDetails` as AWS does.
pub fn check_details(details: &BTreeMap<String, String>) -> Result<(), Refusal> {
    if details.len() > MAX_DETAILS {
        return Err(refuse(
            Code::InvalidRequest,
            format!("statusDetails holds at most {MAX_DETAILS} pairs"),
        ));
    }
    for (k, v) in details {
        let key_ok = (1..=128).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b));
        let value_ok =
            !v.is_empty() && v.chars().count() <= 1024 && !v.chars().any(char::is_control);
        if !key_ok || !value_ok {
            return Err(refuse(
                Code::InvalidRequest,
                format!(
                    "statusDetails `{k}`: keys are 1 to 128 of [a-zA-Z0-9:_-], values 1 to 1024 characters without control characters"
                ),
            ));
        }
    }
    Ok(())
}

fn minutes(ms: u64, m: u64) -> u64 {
    ms.saturating_add(m.saturating_mul(60_000))
}

fn check_timeout(m: u64) -> Result<u64, Refusal> {
    if (1..=MAX_TIMEOUT_MINUTES).contains(&m) {
        Ok(m)
    } else {
        Err(refuse(
            Code::InvalidRequest,
            format!("a timeout is 1 to {MAX_TIMEOUT_MINUTES} minutes"),
        ))
    }
}

impl Jobs {
    /// The jobs and executions read from the store.
    pub fn restore(jobs: Vec<Job>, executions: Vec<Execution>) -> Self {
        let mut out = Self {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            executions: executions
                .into_iter()
                .map(|e| ((e.thing.clone(), e.job_id.clone()), e))
                .collect(),
            announced: BTreeMap::new(),
        };
        let things: BTreeSet<String> = out.executions.keys().map(|(t, _)| t.clone()).collect();
        for t in things {
            let first = out.next_pending(&t).map(|e| e.job_id.clone());
            out.announced.insert(t, first);
        }
        out
    }

    /// One job.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// Every job, by id.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// One execution.
    pub fn execution(&self, thing: &str, job: &str) -> Option<&Execution> {
        self.executions.get(&(thing.to_owned(), job.to_owned()))
    }

    /// A job's executions, by thing.
    pub fn executions_of_job<'a>(&'a self, job: &'a str) -> impl Iterator<Item = &'a Execution> {
        self.executions.values().filter(move |e| e.job_id == job)
    }

    /// A thing's executions, by job.
    pub fn executions_of_thing(&self, thing: &str) -> impl Iterator<Item = &Execution> {
        let owned = thing.to_owned();
        self.executions
            .range((owned.clone(), String::new())..)
            .take_while(move |((t, _), _)| *t == owned)
            .map(|(_, e)| e)
    }

    /// A thing's pending executions, IN_PROGRESS first, then QUEUED, each
    /// in the order they were queued.
    pub fn pending(&self, thing: &str) -> Vec<&Execution> {
        let mut out: Vec<&Execution> = self
            .executions_of_thing(thing)
            .filter(|e| !e.status.is_terminal())
            .collect();
        out.sort_by(|a, b| {
            (a.status != ExecStatus::InProgress, a.queued_ms, &a.job_id).cmp(&(
                b.status != ExecStatus::InProgress,
                b.queued_ms,
                &b.job_id,
            ))
        });
        out
    }

    /// The execution StartNext would take.
    pub fn next_pending(&self, thing: &str) -> Option<&Execution> {
        self.pending(thing).into_iter().next()
    }

    /// The things whose first pending execution is not what was last
    /// announced, with it now; they are taken as announced.
    pub fn next_changed(&mut self, touched: &BTreeSet<String>) -> Vec<(String, Option<Execution>)> {
        let mut out = Vec::new();
        for thing in touched {
            let now = self.next_pending(thing).cloned();
            let id = now.as_ref().map(|e| e.job_id.clone());
            let before = self.announced.get(thing).cloned().flatten();
            if before != id {
                self.announced.insert(thing.clone(), id);
                out.push((thing.clone(), now));
            }
        }
        out
    }

    /// CreateJob: queues an execution for each of `things` (the targets,
    /// groups expanded), as fast as the rollout allows.
    pub fn create(
        &mut self,
        id: &str,
        new: Spec,
        things: &BTreeSet<String>,
        now: u64,
    ) -> Result<Effects, Refusal> {
        if !valid_job_id(id) {
            return Err(refuse(
                Code::InvalidRequest,
                format!("jobId `{id}` is not 1 to 64 of [a-zA-Z0-9_-]"),
            ));
        }
        if self.jobs.contains_key(id) {
            return Err(refuse(
                Code::AlreadyExists,
                format!("Job with id {id} already exists"),
            ));
        }
        if new.document.len() > MAX_DOCUMENT {
            return Err(refuse(
                Code::InvalidRequest,
                format!("the job document is longer than {MAX_DOCUMENT} bytes"),
            ));
        }
        if new.targets.is_empty() || new.targets.len() > MAX_TARGETS {
            return Err(refuse(
                Code::InvalidRequest,
                format!("a job has 1 to {MAX_TARGETS} targets"),
            ));
        }
        if let Some(m) = new.in_progress_minutes {
            check_timeout(m)?;
        }
        if let Some(r) = &new.rollout {
            r.check()?;
        }
        let active = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::InProgress)
            .count();
        if active >= MAX_ACTIVE_JOBS || self.jobs.len() >= MAX_JOBS {
            return Err(refuse(
                Code::LimitExceeded,
                format!(
                    "at most {MAX_ACTIVE_JOBS} jobs in progress and {MAX_JOBS} in all; delete finished jobs to make more"
                ),
            ));
        }
        let pace = Pace {
            waiting: things.iter().cloned().collect(),
            rate: new.rollout.unwrap_or_default().start(),
            window_ms: now,
            ..Pace::default()
        };
        let job = Job {
            id: id.to_owned(),
            spec: new,
            status: JobStatus::InProgress,
            created_ms: now,
            updated_ms: now,
            completed_ms: None,
            force_canceled: false,
            reason_code: None,
            comment: None,
            numbers: BTreeMap::new(),
            pace,
        };
        self.jobs.insert(id.to_owned(), job);
        let mut fx = Effects::default();
        fx.jobs.insert(id.to_owned());
        self.roll_out(id, now, &mut fx);
        self.complete_if_done(id, now, &mut fx);
        Ok(fx)
    }

    /// Gives waiting things the job, as many as this minute allows.
    fn roll_out(&mut self, job: &str, now: u64, fx: &mut Effects) {
        while let Some(j) = self
            .jobs
            .get_mut(job)
            .filter(|j| j.status == JobStatus::InProgress)
        {
            if now >= j.pace.window_ms.saturating_add(60_000) {
                j.next_minute(now);
            }
            if j.pace.sent >= j.pace.rate {
                return;
            }
            let Some(thing) = j.pace.waiting.pop_front() else {
                return;
            };
            j.pace.sent += 1;
            j.pace.notified += 1;
            self.queue(job, &thing, now, fx);
        }
    }

    /// A new execution of `job` on `thing` (its number one more than the last).
    fn queue(&mut self, job: &str, thing: &str, now: u64, fx: &mut Effects) {
        let Some(j) = self.jobs.get_mut(job) else {
            return;
        };
        let number = j.numbers.get(thing).copied().unwrap_or(0) + 1;
        j.numbers.insert(thing.to_owned(), number);
        fx.jobs.insert(job.to_owned());
        let e = Execution {
            job_id: job.to_owned(),
            thing: thing.to_owned(),
            number,
            status: ExecStatus::Queued,
            details: BTreeMap::new(),
            queued_ms: now,
            started_ms: None,
            updated_ms: now,
            version: 1,
            retry_attempt: 0,
            force_canceled: false,
            step_deadline_ms: None,
            job_deadline_ms: None,
        };
        let key = (thing.to_owned(), job.to_owned());
        self.executions.insert(key.clone(), e);
        fx.executions.insert(key);
        fx.notify.insert(thing.to_owned());
        fx.touched.insert(thing.to_owned());
    }

    /// A snapshot job whose executions are all terminal is COMPLETED.
    fn complete_if_done(&mut self, job: &str, now: u64, fx: &mut Effects) {
        let done = self.executions_of_job(job).all(|e| e.status.is_terminal());
        if let Some(j) = self.jobs.get_mut(job)
            && j.status == JobStatus::InProgress
            && j.spec.selection == Selection::Snapshot
            && j.pace.waiting.is_empty()
            && done
        {
            j.status = JobStatus::Completed;
            j.completed_ms = Some(now);
            j.updated_ms = now;
            fx.jobs.insert(job.to_owned());
            fx.events.push(Event::Job(job.to_owned(), "completed"));
        }
    }

    /// Moves an execution to `status`, and what follows: events, retries,
    /// the job's completion.
    fn set_status(
        &mut self,
        key: &(String, String),
        status: ExecStatus,
        now: u64,
        fx: &mut Effects,
    ) {
        let Some(e) = self.executions.get_mut(key) else {
            return;
        };
        e.status = status;
        e.updated_ms = now;
        e.version += 1;
        if status == ExecStatus::InProgress {
            if e.started_ms.is_none() {
                e.started_ms = Some(now);
            }
        } else {
            e.step_deadline_ms = None;
        }
        if status.is_terminal() {
            e.job_deadline_ms = None;
            fx.events.push(Event::Execution(e.clone(), Some(status)));
            fx.notify.insert(key.0.clone());
        }
        fx.executions.insert(key.clone());
        fx.touched.insert(key.0.clone());
        if status == ExecStatus::Succeeded
            && let Some(j) = self.jobs.get_mut(&key.1)
        {
            j.pace.succeeded += 1;
            fx.jobs.insert(key.1.clone());
        }
        self.retry_if_allowed(key, now, fx);
        self.abort_if_due(&key.1, now, fx);
        self.complete_if_done(&key.1, now, fx);
    }

    /// Cancels a job in progress whose abort criteria are met, as AWS
    /// does (without force: executions in progress run on).
    fn abort_if_due(&mut self, job: &str, now: u64, fx: &mut Effects) {
        let Some(j) = self
            .jobs
            .get(job)
            .filter(|j| j.status == JobStatus::InProgress)
        else {
            return;
        };
        let ended: Vec<ExecStatus> = self
            .executions_of_job(job)
            .map(|e| e.status)
            .filter(|s| s.is_terminal())
            .collect();
        let due = j.spec.aborts.iter().find(|a| {
            let counted = ended.iter().filter(|s| a.failure_type.counts(**s)).count() as u64;
            let executed = ended.len() as u64;
            executed >= a.min_executed.max(1)
                && counted * 10_000 >= u64::from(a.threshold_basis_points) * executed
        });
        if due.is_none() {
            return;
        }
        let comment = "The job was canceled because its abort criteria were met".to_owned();
        if let Ok(more) = self.cancel(job, false, Some("ABORTED".into()), Some(comment), now) {
            fx.merge(more);
        }
    }

    /// Queues a FAILED or TIMED_OUT execution again if the job's retry
    /// criteria allow (REJECTED never is).
    fn retry_if_allowed(&mut self, key: &(String, String), now: u64, fx: &mut Effects) {
        let Some(e) = self.executions.get(key) else {
            return;
        };
        let Some(job) = self.jobs.get(&key.1) else {
            return;
        };
        if job.status != JobStatus::InProgress {
            return;
        }
        let allowed: u32 = job
            .spec
            .retries
            .iter()
            .filter(|r| {
                matches!(
                    (r.failure_type, e.status),
                    (FailureType::All, ExecStatus::Failed | ExecStatus::TimedOut)
                        | (FailureType::Failed, ExecStatus::Failed)
                        | (FailureType::TimedOut, ExecStatus::TimedOut)
                )
            })
            .map(|r| r.retries)
            .sum();
        if e.retry_attempt >= allowed.min(10) {
            return;
        }
        if let Some(e) = self.executions.get_mut(key) {
            e.status = ExecStatus::Queued;
            e.retry_attempt += 1;
            e.started_ms = None;
            e.queued_ms = now;
            e.updated_ms = now;
            e.version += 1;
            fx.notify.insert(key.0.clone());
        }
    }

    /// StartNextPendingJobExecution: the thing's next execution, moved to
    /// IN_PROGRESS if it was QUEUED; none if nothing is pending.
    pub fn start_next(
        &mut self,
        thing: &str,
        details: Option<BTreeMap<String, String>>,
        step_minutes: Option<u64>,
        now: u64,
    ) -> Result<(Option<Execution>, Effects), Refusal> {
        if let Some(d) = &details {
            check_details(d)?;
        }
        if let Some(m) = step_minutes {
            check_timeout(m)?;
        }
        let mut fx = Effects::default();
        let Some(next) = self.next_pending(thing) else {
            return Ok((None, fx));
        };
        if next.status == ExecStatus::InProgress {
            return Ok((Some(next.clone()), fx));
        }
        let key = (thing.to_owned(), next.job_id.clone());
        let job_minutes = self
            .jobs
            .get(&key.1)
            .and_then(|j| j.spec.in_progress_minutes);
        if let Some(e) = self.executions.get_mut(&key) {
            if let Some(d) = details {
                e.details = d;
            }
            e.job_deadline_ms = job_minutes.map(|m| minutes(now, m));
            e.step_deadline_ms = step_minutes.map(|m| minutes(now, m));
        }
        self.set_status(&key, ExecStatus::InProgress, now, &mut fx);
        Ok((self.executions.get(&key).cloned(), fx))
    }

    /// UpdateJobExecution by the device.
    pub fn update(
        &mut self,
        thing: &str,
        job: &str,
        u: Update,
        now: u64,
    ) -> Result<Effects, Refusal> {
        let key = (thing.to_owned(), job.to_owned());
        let e = self
            .executions
            .get(&key)
            .ok_or_else(|| no_execution(thing, job))?;
        let status = match ExecStatus::parse(&u.status) {
            Some(
                s @ (ExecStatus::InProgress
                | ExecStatus::Succeeded
                | ExecStatus::Failed
                | ExecStatus::Rejected),
            ) => s,
            _ => {
                return Err(refuse(
                    Code::InvalidRequest,
                    format!(
                        "status `{}` is not one a device sets: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED",
                        u.status
                    ),
                ));
            }
        };
        let details = match u.details {
            Some(d) => {
                let mut merged = e.details.clone();
                merged.extend(d);
                check_details(&merged)?;
                Some(merged)
            }
            None => None,
        };
        if u.execution_number.is_some_and(|n| n != e.number) {
            return Err(no_execution(thing, job));
        }
        if u.expected_version.is_some_and(|v| v != e.version) {
            return Err(Refusal {
                code: Code::VersionMismatch,
                message:
                    "The expected version does not match the current version of the job execution."
                        .into(),
                state: Some(Box::new(e.clone())),
            });
        }
        if e.status.is_terminal() {
            return Err(Refusal {
                code: Code::InvalidStateTransition,
                message: format!(
                    "Job execution {job} on {thing} is {} and cannot become {}",
                    e.status.name(),
                    status.name()
                ),
                state: Some(Box::new(e.clone())),
            });
        }
        let step = match u.step_minutes {
            None => None,
            Some(-1) => Some(None),
            Some(m) => Some(Some(check_timeout(u64::try_from(m).unwrap_or(0))?)),
        };
        let job_minutes = self.jobs.get(job).and_then(|j| j.spec.in_progress_minutes);
        let mut fx = Effects::default();
        if let Some(e) = self.executions.get_mut(&key) {
            if let Some(d) = details {
                e.details = d;
            }
            if e.status == ExecStatus::Queued && status == ExecStatus::InProgress {
                e.job_deadline_ms = job_minutes.map(|m| minutes(now, m));
            }
            // A step timer never runs past the job's in-progress timer.
            match step {
                Some(Some(m)) => e.step_deadline_ms = Some(minutes(now, m)),
                Some(None) => e.step_deadline_ms = None,
                None => {}
            }
        }
        self.set_status(&key, status, now, &mut fx);
        Ok(fx)
    }

    /// UpdateJob: the description, the retry, abort and rollout criteria,
    /// and the in-progress timeout until an execution has started.
    pub fn update_job(&mut self, job: &str, c: JobChange, now: u64) -> Result<Effects, Refusal> {
        if let Some(m) = c.in_progress_minutes {
            check_timeout(m)?;
            if self.executions_of_job(job).any(|e| e.started_ms.is_some()) {
                return Err(refuse(
                    Code::InvalidRequest,
                    format!("Job {job} has started executions; its timeout can no longer change"),
                ));
            }
        }
        if let Some(r) = &c.rollout {
            r.check()?;
        }
        let j = self.jobs.get_mut(job).ok_or_else(|| no_job(job))?;
        if let Some(d) = c.description {
            j.spec.description = d;
        }
        if c.in_progress_minutes.is_some() {
            j.spec.in_progress_minutes = c.in_progress_minutes;
        }
        if let Some(r) = c.retries {
            j.spec.retries = r;
        }
        if let Some(a) = c.aborts {
            j.spec.aborts = a;
        }
        if let Some(r) = c.rollout {
            // The rollout goes on at the new configuration's rate.
            j.spec.rollout = Some(r);
            j.pace.rate = r.start();
        }
        j.updated_ms = now;
        let mut fx = Effects::default();
        fx.jobs.insert(job.to_owned());
        self.roll_out(job, now, &mut fx);
        self.abort_if_due(job, now, &mut fx);
        Ok(fx)
    }

    /// CancelJob: QUEUED executions are canceled, IN_PROGRESS ones too with
    /// `force`.
    pub fn cancel(
        &mut self,
        job: &str,
        force: bool,
        reason_code: Option<String>,
        comment: Option<String>,
        now: u64,
    ) -> Result<Effects, Refusal> {
        let j = self.jobs.get_mut(job).ok_or_else(|| no_job(job))?;
        match j.status {
            JobStatus::InProgress => {}
            JobStatus::Canceled if force && !j.force_canceled => {}
            s => {
                return Err(refuse(
                    Code::InvalidStateTransition,
                    format!("Job {job} is {} and cannot be canceled", s.name()),
                ));
            }
        }
        j.status = JobStatus::Canceled;
        j.pace.waiting.clear();
        j.force_canceled |= force;
        j.reason_code = reason_code.or(j.reason_code.take());
        j.comment = comment.or(j.comment.take());
        j.updated_ms = now;
        j.completed_ms = Some(now);
        let mut fx = Effects::default();
        fx.jobs.insert(job.to_owned());
        fx.events
            .push(Event::Job(job.to_owned(), "cancellation_in_progress"));
        let keys: Vec<(String, String)> = self
            .executions_of_job(job)
            .filter(|e| {
                e.status == ExecStatus::Queued || (force && e.status == ExecStatus::InProgress)
            })
            .map(|e| (e.thing.clone(), e.job_id.clone()))
            .collect();
        for key in keys {
            if let Some(e) = self.executions.get_mut(&key) {
                e.force_canceled = e.status == ExecStatus::InProgress;
            }
            self.set_status(&key, ExecStatus::Canceled, now, &mut fx);
        }
        fx.events.push(Event::Job(job.to_owned(), "canceled"));
        Ok(fx)
    }

    /// DeleteJob: a finished job, or with `force` any, and its executions.
    pub fn delete(&mut self, job: &str, force: bool) -> Result<Effects, Refusal> {
        let j = self.jobs.get(job).ok_or_else(|| no_job(job))?;
        if j.status == JobStatus::InProgress && !force {
            return Err(refuse(
                Code::InvalidStateTransition,
                format!("Job {job} is IN_PROGRESS; cancel it first or delete it with force"),
            ));
        }
        let running = self
            .executions_of_job(job)
            .any(|e| e.status == ExecStatus::InProgress);
        if running && !force {
            return Err(refuse(
                Code::InvalidStateTransition,
                format!("Job {job} has executions in progress; delete it with force"),
            ));
        }
        let mut fx = Effects::default();
        fx.events
            .push(Event::Job(job.to_owned(), "deletion_in_progress"));
        let keys: Vec<(String, String)> = self
            .executions_of_job(job)
            .map(|e| (e.thing.clone(), e.job_id.clone()))
            .collect();
        for key in keys {
            self.remove_execution(&key, &mut fx);
        }
        self.jobs.remove(job);
        fx.deleted_jobs.insert(job.to_owned());
        fx.events.push(Event::Job(job.to_owned(), "deleted"));
        Ok(fx)
    }

    fn remove_execution(&mut self, key: &(String, String), fx: &mut Effects) {
        if let Some(e) = self.executions.remove(key) {
            if !e.status.is_terminal() {
                fx.notify.insert(key.0.clone());
            }
            fx.events.push(Event::Execution(e, None));
            fx.deleted_executions.insert(key.clone());
            fx.executions.remove(key);
            fx.touched.insert(key.0.clone());
        }
    }

    /// CancelJobExecution.
    pub fn cancel_execution(
        &mut self,
        thing: &str,
        job: &str,
        force: bool,
        expected_version: Option<u64>,
        details: Option<BTreeMap<String, String>>,
        now: u64,
    ) -> Result<Effects, Refusal> {
        let key = (thing.to_owned(), job.to_owned());
        let e = self
            .executions
            .get(&key)
            .ok_or_else(|| no_execution(thing, job))?;
        if let Some(d) = &details {
            check_details(d)?;
        }
        if expected_version.is_some_and(|v| v != e.version) {
            return Err(Refusal {
                code: Code::VersionMismatch,
                message: format!(
                    "The version of job execution {job} on {thing} is not the expected one"
                ),
                state: Some(Box::new(e.clone())),
            });
        }
        let allowed =
            e.status == ExecStatus::Queued || (force && e.status == ExecStatus::InProgress);
        if !allowed {
            return Err(Refusal {
                code: Code::InvalidStateTransition,
                message: format!(
                    "Job execution {job} on {thing} is {}{}",
                    e.status.name(),
                    if e.status == ExecStatus::InProgress {
                        "; cancel it with force"
                    } else {
                        " and cannot be canceled"
                    }
                ),
                state: Some(Box::new(e.clone())),
            });
        }
        let mut fx = Effects::default();
        if let Some(e) = self.executions.get_mut(&key) {
            e.force_canceled = e.status == ExecStatus::InProgress;
            if let Some(d) = details {
                e.details.extend(d);
            }
        }
        self.set_status(&key, ExecStatus::Canceled, now, &mut fx);
        Ok(fx)
    }

    /// DeleteJobExecution: a QUEUED or terminal one, or with `force` any.
    pub fn delete_execution(
        &mut self,
        thing: &str,
        job: &str,
        number: u64,
        force: bool,
        now: u64,
    ) -> Result<Effects, Refusal> {
        let key = (thing.to_owned(), job.to_owned());
        let e = self
            .executions
            .get(&key)
            .filter(|e| e.number == number)
            .ok_or_else(|| no_execution(thing, job))?;
        if e.status == ExecStatus::InProgress && !force {
            return Err(Refusal {
                code: Code::InvalidStateTransition,
                message: format!(
                    "Job execution {job} on {thing} is IN_PROGRESS; delete it with force"
                ),
                state: Some(Box::new(e.clone())),
            });
        }
        let mut fx = Effects::default();
        self.remove_execution(&key, &mut fx);
        self.complete_if_done(job, now, &mut fx);
        Ok(fx)
    }

    /// The earliest timer of any execution, or minute of a rollout.
    pub fn next_deadline(&self) -> Option<u64> {
        let executions = self
            .executions
            .values()
            .filter(|e| e.status == ExecStatus::InProgress)
            .filter_map(Execution::deadline);
        let rollouts = self.jobs.values().filter_map(Job::next_minute_at);
        executions.chain(rollouts).min()
    }

    /// Times out every IN_PROGRESS execution whose timer ran out by `now`,
    /// and goes on with the rollouts whose next minute has come.
    pub fn expire(&mut self, now: u64) -> Effects {
        let keys: Vec<(String, String)> = self
            .executions
            .iter()
            .filter(|(_, e)| e.status == ExecStatus::InProgress)
            .filter(|(_, e)| e.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut fx = Effects::default();
        for key in keys {
            self.set_status(&key, ExecStatus::TimedOut, now, &mut fx);
        }
        let due: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.next_minute_at().is_some_and(|at| at <= now))
            .map(|j| j.id.clone())
            .collect();
        for job in due {
            self.roll_out(&job, now, &mut fx);
        }
        fx
    }

    /// For a continuous job in progress: `things` are its targets now.
    /// Those new to it are given the job in turn; those that left have
    /// their pending execution REMOVED, or are given it no more.
    pub fn reconcile(&mut self, job: &str, things: &BTreeSet<String>, now: u64) -> Effects {
        let mut fx = Effects::default();
        let have: BTreeMap<String, ExecStatus> = self
            .executions_of_job(job)
            .map(|e| (e.thing.clone(), e.status))
            .collect();
        let Some(j) = self.jobs.get_mut(job) else {
            return fx;
        };
        if j.spec.selection != Selection::Continuous || j.status != JobStatus::InProgress {
            return fx;
        }
        let before = j.pace.waiting.len();
        j.pace.waiting.retain(|t| things.contains(t));
        let waiting: BTreeSet<&String> = j.pace.waiting.iter().collect();
        let new: Vec<String> = things
            .iter()
            .filter(|t| !have.contains_key(*t) && !waiting.contains(t))
            .cloned()
            .collect();
        if before != j.pace.waiting.len() || !new.is_empty() {
            fx.jobs.insert(job.to_owned());
        }
        j.pace.waiting.extend(new);
        self.roll_out(job, now, &mut fx);
        for (thing, status) in &have {
            if !things.contains(thing) && !status.is_terminal() {
                self.set_status(
                    &(thing.clone(), job.to_owned()),
                    ExecStatus::Removed,
                    now,
                    &mut fx,
                );
            }
        }
        fx
    }

    /// AssociateTargetsWithJob: a continuous job in progress gains
    /// `targets`; `things` are all its targets' things now.
    pub fn associate(
        &mut self,
        job: &str,
        targets: Vec<String>,
        things: &BTreeSet<String>,
        now: u64,
    ) -> Result<Effects, Refusal> {
        let j = self.jobs.get_mut(job).ok_or_else(|| no_job(job))?;
        if j.spec.selection != Selection::Continuous || j.status != JobStatus::InProgress {
            return Err(refuse(
                Code::InvalidRequest,
                format!("Job {job} is not a continuous job in progress"),
            ));
        }
        let mut added: Vec<String> = targets
            .into_iter()
            .filter(|t| !j.spec.targets.contains(t))
            .collect();
        added.dedup();
        if j.spec.targets.len() + added.len() > MAX_TARGETS {
            return Err(refuse(
                Code::LimitExceeded,
                format!("a job has at most {MAX_TARGETS} targets"),
            ));
        }
        j.spec.targets.extend(added);
        j.updated_ms = now;
        let mut fx = self.reconcile(job, things, now);
        fx.jobs.insert(job.to_owned());
        Ok(fx)
    }

    /// How many executions are in each status.
    pub fn counts_all(&self) -> BTreeMap<ExecStatus, usize> {
        let mut out = BTreeMap::new();
        for e in self.executions.values() {
            *out.entry(e.status).or_insert(0) += 1;
        }
        out
    }

    /// How many of a job's executions are in each status.
    pub fn counts(&self, job: &str) -> BTreeMap<ExecStatus, usize> {
        let mut out = BTreeMap::new();
        for e in self.executions_of_job(job) {
            *out.entry(e.status).or_insert(0) += 1;
        }
        out
    }
}

fn no_job(job: &str) -> Refusal {
    refuse(Code::NotFound, format!("Job {job} does not exist"))
}

fn no_execution(thing: &str, job: &str) -> Refusal {
    refuse(
        Code::NotFound,
        format!("Job execution {job} on thing {thing} does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(selection: Selection) -> Spec {
        Spec {
            document: r#"{"operation": "reboot"}"#.into(),
            description: String::new(),
            targets: vec!["arn:aws:iot:us-east-1:1:thing/lamp".into()],
            selection,
            in_progress_minutes: None,
            retries: Vec::new(),
            aborts: Vec::new(),
            rollout: None,
        }
    }

    fn things(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn update(status: &str) -> Update {
        Update {
            status: status.into(),
            ..Update::default()
        }
    }

    #[test]
    fn a_device_takes_its_jobs_in_order_and_finishes_them() {
        let mut j = Jobs::default();
        let fx = j
            .create("one", new(Selection::Snapshot), &things(&["lamp"]), 1_000)
            .expect("create");
        assert_eq!(fx.notify, things(&["lamp"]));
        assert_eq!(
            j.next_changed(&fx.touched),
            [("lamp".to_owned(), j.execution("lamp", "one").cloned())]
        );
        let fx = j
            .create("two", new(Selection::Snapshot), &things(&["lamp"]), 2_000)
            .expect("create");
        assert!(j.next_changed(&fx.touched).is_empty(), "one is still first");

        let (started, fx) = j.start_next("lamp", None, Some(5), 3_000).expect("start");
        let started = started.expect("an execution");
        assert_eq!(
            (
                started.job_id.as_str(),
                started.status,
                started.version,
                started.started_ms
            ),
            ("one", ExecStatus::InProgress, 2, Some(3_000))
        );
        assert!(
            fx.notify.is_empty(),
            "QUEUED to IN_PROGRESS notifies nobody"
        );
        // Again: the same execution, unchanged.
        let (again, _) = j.start_next("lamp", None, None, 3_500).expect("start");
        assert_eq!(again.as_ref(), Some(&started));

        let conflict = j
            .update(
                "lamp",
                "one",
                Update {
                    expected_version: Some(1),
                    ..update("SUCCEEDED")
                },
                4_000,
            )
            .expect_err("stale version");
        assert_eq!(conflict.code, Code::VersionMismatch);
        assert_eq!(conflict.state.map(|s| s.version), Some(2));

        let fx = j
            .update("lamp", "one", update("SUCCEEDED"), 4_000)
            .expect("done");
        assert_eq!(fx.notify, things(&["lamp"]));
        assert!(fx.jobs.contains("one"), "the job completed");
        assert_eq!(j.job("one").map(|j| j.status), Some(JobStatus::Completed));
        assert_eq!(
            j.next_changed(&fx.touched)
                .into_iter()
                .map(|(_, e)| e.map(|e| e.job_id))
                .collect::<Vec<_>>(),
            [Some("two".to_owned())]
        );
        let refused = j
            .update("lamp", "one", update("IN_PROGRESS"), 5_000)
            .expect_err("terminal");
        assert_eq!(refused.code, Code::InvalidStateTransition);
        assert!(refused.state.is_some());
        for status in ["QUEUED", "CANCELED", "TIMED_OUT", "DONE"] {
            assert_eq!(
                j.update("lamp", "two", update(status), 5_000)
                    .expect_err(status)
                    .code,
                Code::InvalidRequest
            );
        }
        // QUEUED straight to REJECTED, and nothing is left.
        j.update("lamp", "two", update("REJECTED"), 6_000)
            .expect("reject");
        let fx = Effects {
            touched: things(&["lamp"]),
            ..Effects::default()
        };
        assert_eq!(j.next_changed(&fx.touched), [("lamp".to_owned(), None)]);
        assert_eq!(
            j.start_next("lamp", None, None, 7_000).expect("none").0,
            None
        );
    }

    #[test]
    fn timers_time_out_and_a_step_never_outlasts_the_job_timer() {
        let mut j = Jobs::default();
        let mut timed = new(Selection::Snapshot);
        timed.in_progress_minutes = Some(20);
        j.create("t", timed, &things(&["lamp"]), 0).expect("create");
        j.start_next("lamp", None, None, 0).expect("start");
        let minute = 60_000;
        // A step of 9 minutes at 13 minutes: the job timer at 20 comes first.
        j.update(
            "lamp",
            "t",
            Update {
                step_minutes: Some(9),
                ..update("IN_PROGRESS")
            },
            13 * minute,
        )
        .expect("step");
        assert_eq!(j.next_deadline(), Some(20 * minute));
        assert!(j.expire(20 * minute - 1).executions.is_empty());
        let fx = j.expire(20 * minute);
        assert_eq!(
            j.execution("lamp", "t").map(|e| e.status),
            Some(ExecStatus::TimedOut)
        );
        assert!(matches!(
            &fx.events[0],
            Event::Execution(e, Some(ExecStatus::TimedOut)) if e.thing == "lamp"
        ));
        assert_eq!(j.next_deadline(), None);
        // -1 stops a step timer.
        j.create("s", new(Selection::Snapshot), &things(&["fan"]), 0)
            .expect("create");
        j.start_next("fan", None, Some(1), 0).expect("start");
        j.update(
            "fan",
            "s",
            Update {
                step_minutes: Some(-1),
                ..update("IN_PROGRESS")
            },
            1,
        )
        .expect("stop the timer");
        assert_eq!(j.next_deadline(), None);
    }

    #[test]
    fn failures_are_retried_as_the_job_allows() {
        let mut j = Jobs::default();
        let mut retried = new(Selection::Snapshot);
        retried.retries = vec![Retry {
            failure_type: FailureType::Failed,
            retries: 1,
        }];
        j.create("r", retried, &things(&["lamp"]), 0)
            .expect("create");
        j.start_next("lamp", None, None, 1).expect("start");
        j.update("lamp", "r", update("FAILED"), 2).expect("fail");
        let e = j.execution("lamp", "r").expect("execution");
        assert_eq!(
            (e.status, e.retry_attempt, e.number),
            (ExecStatus::Queued, 1, 1)
        );
        j.start_next("lamp", None, None, 3).expect("start");
        j.update("lamp", "r", update("FAILED"), 4).expect("fail");
        assert_eq!(
            j.execution("lamp", "r").map(|e| e.status),
            Some(ExecStatus::Failed)
        );
        assert_eq!(j.job("r").map(|j| j.status), Some(JobStatus::Completed));
    }

    #[test]
    fn cancel_and_delete_follow_awss_rules() {
        let mut j = Jobs::default();
        j.create("c", new(Selection::Snapshot), &things(&["a", "b", "c"]), 0)
            .expect("create");
        j.start_next("a", None, None, 1).expect("start");
        j.update("c", "c", update("SUCCEEDED"), 1).expect("done");
        assert_eq!(
            j.delete("c", false).expect_err("in progress").code,
            Code::InvalidStateTransition
        );
        assert_eq!(
            j.cancel_execution("a", "c", false, None, None, 2)
                .expect_err("needs force")
                .code,
            Code::InvalidStateTransition
        );
        j.cancel("c", false, Some("BAD_BUILD".into()), None, 2)
            .expect("cancel");
        let status = |j: &Jobs, t: &str| j.execution(t, "c").map(|e| e.status);
        assert_eq!(
            (status(&j, "a"), status(&j, "b"), status(&j, "c")),
            (
                Some(ExecStatus::InProgress),
                Some(ExecStatus::Canceled),
                Some(ExecStatus::Succeeded)
            )
        );
        assert_eq!(
            j.update("b", "c", update("IN_PROGRESS"), 3)
                .expect_err("canceled")
                .code,
            Code::InvalidStateTransition
        );
        let fx = j.cancel("c", true, None, None, 3).expect("force");
        assert_eq!(status(&j, "a"), Some(ExecStatus::Canceled));
        assert!(j.execution("a", "c").is_some_and(|e| e.force_canceled));
        assert_eq!(fx.notify, things(&["a"]));
        assert_eq!(
            j.cancel("c", true, None, None, 4)
                .expect_err("already")
                .code,
            Code::InvalidStateTransition
        );
        let fx = j.delete("c", false).expect("a canceled job goes");
        assert_eq!(fx.deleted_executions.len(), 3);
        assert!(j.job("c").is_none() && j.execution("b", "c").is_none());
        // The id may be used again.
        j.create("c", new(Selection::Snapshot), &things(&["a"]), 5)
            .expect("again");
    }

    #[test]
    fn a_continuous_job_follows_its_groups() {
        let mut j = Jobs::default();
        j.create("k", new(Selection::Continuous), &things(&["a"]), 0)
            .expect("create");
        let fx = j.reconcile("k", &things(&["a", "b"]), 1);
        assert_eq!(fx.notify, things(&["b"]));
        j.update("a", "k", update("SUCCEEDED"), 2).expect("done");
        assert_eq!(
            j.job("k").map(|j| j.status),
            Some(JobStatus::InProgress),
            "never completes"
        );
        j.reconcile("k", &things(&["a"]), 3);
        assert_eq!(
            j.execution("b", "k").map(|e| e.status),
            Some(ExecStatus::Removed)
        );
        assert_eq!(
            j.execution("a", "k").map(|e| e.status),
            Some(ExecStatus::Succeeded)
        );
        // A snapshot job does not follow.
        j.create("s", new(Selection::Snapshot), &things(&["a"]), 4)
            .expect("create");
        assert!(
            j.reconcile("s", &things(&["a", "z"]), 5)
                .executions
                .is_empty()
        );
    }

    #[test]
    fn details_and_ids_are_checked() {
        let big: BTreeMap<String, String> =
            (0..11).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(check_details(&big).is_err());
        assert!(check_details(&BTreeMap::from([("k".into(), String::new())])).is_err());
        assert!(check_details(&BTreeMap::from([("bad key".into(), "v".into())])).is_err());
        assert!(check_details(&BTreeMap::from([("step".into(), "2 of 3".into())])).is_ok());
        assert!(!valid_job_id("has space") && !valid_job_id("") && valid_job_id("update-2_a"));
    }

    #[test]
    fn a_job_whose_failures_pass_its_threshold_is_canceled() {
        let mut j = Jobs::default();
        let mut aborted = new(Selection::Snapshot);
        aborted.aborts = vec![Abort {
            failure_type: AbortType::Failed,
            threshold_basis_points: 5_000,
            min_executed: 2,
        }];
        j.create("a", aborted, &things(&["t1", "t2", "t3", "t4"]), 0)
            .expect("create");
        let fx = j.update("t1", "a", update("FAILED"), 1).expect("fail");
        assert_eq!(
            j.job("a").map(|j| j.status),
            Some(JobStatus::InProgress),
            "one ended: below the minimum"
        );
        assert!(fx.events.iter().all(|e| !matches!(e, Event::Job(..))));
        j.start_next("t4", None, None, 2).expect("start");
        let fx = j
            .update("t2", "a", update("SUCCEEDED"), 3)
            .expect("succeed");
        // Two ended, one failed: 50 %, the threshold.
        let job = j.job("a").expect("job");
        assert_eq!(
            (job.status, job.reason_code.as_deref()),
            (JobStatus::Canceled, Some("ABORTED"))
        );
        assert!(fx.events.contains(&Event::Job("a".into(), "canceled")));
        assert_eq!(
            j.execution("t3", "a").map(|e| e.status),
            Some(ExecStatus::Canceled)
        );
        assert_eq!(
            j.execution("t4", "a").map(|e| e.status),
            Some(ExecStatus::InProgress),
            "not forced"
        );
    }

    fn queued(j: &Jobs, job: &str) -> usize {
        j.executions_of_job(job).count()
    }

    #[test]
    fn a_rollout_gives_the_job_to_so_many_things_a_minute() {
        let mut j = Jobs::default();
        let mut paced = new(Selection::Snapshot);
        paced.rollout = Some(Rollout {
            maximum_per_minute: 2,
            exponential: None,
        });
        let five = things(&["a", "b", "c", "d", "e"]);
        let fx = j.create("r", paced, &five, 0).expect("create");
        assert_eq!(fx.notify, things(&["a", "b"]), "two this minute");
        assert_eq!(j.next_deadline(), Some(60_000));
        assert!(
            j.expire(59_999).executions.is_empty(),
            "not before its minute"
        );
        let fx = j.expire(60_000);
        assert_eq!(fx.notify, things(&["c", "d"]));
        // Finishing early does not complete a job whose rollout goes on.
        for t in ["a", "b", "c", "d"] {
            j.update(t, "r", update("SUCCEEDED"), 61_000).expect("done");
        }
        assert_eq!(j.job("r").map(|j| j.status), Some(JobStatus::InProgress));
        j.expire(120_000);
        j.update("e", "r", update("SUCCEEDED"), 121_000)
            .expect("done");
        assert_eq!(j.job("r").map(|j| j.status), Some(JobStatus::Completed));
        assert_eq!(j.next_deadline(), None);
    }

    #[test]
    fn an_exponential_rollout_grows_each_minute_its_criterion_is_met() {
        let mut j = Jobs::default();
        let mut paced = new(Selection::Snapshot);
        paced.rollout = Some(Rollout {
            maximum_per_minute: 5,
            exponential: Some(Exponential {
                base_per_minute: 1,
                factor_tenths: 20,
                notified: None,
                succeeded: Some(1),
            }),
        });
        let names: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
        let all: BTreeSet<String> = names.iter().cloned().collect();
        j.create("x", paced, &all, 0).expect("create");
        assert_eq!(queued(&j, "x"), 1, "the base rate");
        // Nothing succeeded: the rate stays.
        j.expire(60_000);
        assert_eq!(queued(&j, "x"), 2);
        j.update("t00", "x", update("SUCCEEDED"), 61_000)
            .expect("done");
        j.expire(120_000);
        assert_eq!(queued(&j, "x"), 4, "doubled");
        j.update("t01", "x", update("SUCCEEDED"), 121_000)
            .expect("done");
        j.expire(180_000);
        assert_eq!(queued(&j, "x"), 8, "doubled again");
        j.update("t02", "x", update("SUCCEEDED"), 181_000)
            .expect("done");
        j.expire(240_000);
        assert_eq!(queued(&j, "x"), 13, "never past the maximum");
        // Canceled, the rest are never given the job.
        j.cancel("x", false, None, None, 241_000).expect("cancel");
        assert_eq!(j.next_deadline(), None);
        j.expire(300_000);
        assert_eq!(queued(&j, "x"), 13);
    }

    #[test]
    fn rollouts_are_checked_and_can_change() {
        let mut j = Jobs::default();
        let mut bad = new(Selection::Snapshot);
        bad.rollout = Some(Rollout {
            maximum_per_minute: 1_001,
            exponential: None,
        });
        let refused = j
            .create("b", bad, &things(&["a"]), 0)
            .expect_err("too fast");
        assert_eq!(refused.code, Code::InvalidRequest);
        let mut slow = new(Selection::Continuous);
        slow.rollout = Some(Rollout {
            maximum_per_minute: 1,
            exponential: None,
        });
        j.create("c", slow, &things(&["a", "b", "c"]), 0)
            .expect("create");
        // A thing that leaves its group while it waits is never given the job.
        j.reconcile("c", &things(&["a", "c"]), 1);
        let faster = JobChange {
            rollout: Some(Rollout {
                maximum_per_minute: 10,
                exponential: None,
            }),
            ..JobChange::default()
        };
        let fx = j.update_job("c", faster, 2).expect("update");
        assert_eq!(fx.notify, things(&["c"]), "at once, within this minute");
        assert!(j.execution("b", "c").is_none());
    }

    #[test]
    fn a_job_stored_before_rollouts_reads_back_at_the_default_rate() {
        let stored = r#"{"id":"old","document":"{}","description":"","targets":["arn:aws:iot:us-east-1:1:thing/a"],
            "selection":"CONTINUOUS","status":"IN_PROGRESS","in_progress_minutes":null,"retries":[],
            "created_ms":0,"updated_ms":0,"completed_ms":null,"force_canceled":false,
            "reason_code":null,"comment":null}"#;
        let job: Job = serde_json::from_str(stored).expect("reads");
        assert_eq!(job.spec.rollout, None);
        assert_eq!(job.pace.rate, MAX_ROLLOUT_PER_MINUTE);
        let again: Job =
            serde_json::from_slice(&serde_json::to_vec(&job).expect("writes")).expect("reads back");
        assert_eq!(again, job);
    }
}
