//! Jobs and executions as the device APIs show them (spec
//! aws-iot-device-services.md §4.2, §4.3): over MQTT every time is whole
//! epoch seconds (the Python SDK reads them with `fromtimestamp`) and the
//! job document is an object. Pure.

use super::core::{Code, ExecStatus, Execution, Job, MAX_PENDING_LISTED};
use serde_json::{Map, Value, json};

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// A job's document as JSON (it was checked to be JSON when made).
pub fn document(job: &Job) -> Value {
    serde_json::from_str(&job.spec.document)
        .unwrap_or_else(|_| Value::String(job.spec.document.clone()))
}

/// `JobExecutionSummary`.
pub fn summary(e: &Execution) -> Value {
    let mut v = json!({
        "jobId": e.job_id,
        "queuedAt": secs(e.queued_ms),
        "lastUpdatedAt": secs(e.updated_ms),
        "versionNumber": e.version,
        "executionNumber": e.number,
    });
    if let Some(s) = e.started_ms {
        v["startedAt"] = secs(s).into();
    }
    v
}

/// Which device API a document is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// MQTT: the job document is an object.
    Mqtt,
    /// `iot-jobs-data` over HTTPS: the document is a string, and the thing
    /// is named.
    Https,
}

/// `JobExecution`, with the job's document when `job` is given.
pub fn execution(e: &Execution, job: Option<&Job>, api: Api) -> Value {
    let mut v = summary(e);
    v["status"] = e.status.name().into();
    if !e.details.is_empty() {
        v["statusDetails"] = json!(e.details);
    }
    if let Some(job) = job {
        v["jobDocument"] = job_document(job, api);
    }
    if api == Api::Https {
        v["thingName"] = e.thing.as_str().into();
    }
    v
}

/// A job's document as `api` carries it.
pub fn job_document(job: &Job, api: Api) -> Value {
    match api {
        Api::Mqtt => document(job),
        Api::Https => job.spec.document.as_str().into(),
    }
}

/// `JobExecutionState`.
pub fn state(e: &Execution) -> Value {
    let mut v = json!({"status": e.status.name(), "versionNumber": e.version});
    if !e.details.is_empty() {
        v["statusDetails"] = json!(e.details);
    }
    v
}

/// GetPendingJobExecutions' lists: (IN_PROGRESS, QUEUED) summaries, at
/// most ten in all, from pending executions in order.
pub fn pending_lists(pending: &[&Execution]) -> (Vec<Value>, Vec<Value>) {
    let mut running = Vec::new();
    let mut queued = Vec::new();
    for e in pending.iter().take(MAX_PENDING_LISTED) {
        if e.status == ExecStatus::InProgress {
            running.push(summary(e));
        } else {
            queued.push(summary(e));
        }
    }
    (running, queued)
}

/// `jobs/notify`: the pending executions by status; a status with none is
/// left out.
pub fn notify(pending: &[&Execution], now_ms: u64) -> Value {
    let (running, queued) = pending_lists(pending);
    let mut jobs = Map::new();
    if !running.is_empty() {
        jobs.insert("IN_PROGRESS".into(), running.into());
    }
    if !queued.is_empty() {
        jobs.insert("QUEUED".into(), queued.into());
    }
    json!({"timestamp": secs(now_ms), "jobs": jobs})
}

/// `jobs/notify-next`: the next pending execution with its document, or
/// none.
pub fn notify_next(next: Option<(&Execution, &Job)>, now_ms: u64) -> Value {
    let mut v = json!({"timestamp": secs(now_ms)});
    if let Some((e, job)) = next {
        v["execution"] = execution(e, Some(job), Api::Mqtt);
    }
    v
}

/// The MQTT error code of a refusal.
pub fn code(c: &Code) -> &'static str {
    match c {
        Code::InvalidRequest | Code::AlreadyExists | Code::LimitExceeded => "InvalidRequest",
        Code::NotFound => "ResourceNotFound",
        Code::InvalidStateTransition => "InvalidStateTransition",
        Code::VersionMismatch => "VersionMismatch",
    }
}

/// A `/rejected` document.
pub fn rejected(
    code: &str,
    message: &str,
    client_token: Option<&str>,
    state_of: Option<&Execution>,
    now_ms: u64,
) -> Value {
    let mut v = json!({"code": code, "message": message, "timestamp": secs(now_ms)});
    if let Some(t) = client_token {
        v["clientToken"] = t.into();
    }
    if let Some(e) = state_of {
        v["executionState"] = state(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn exec(job: &str, status: ExecStatus, queued_ms: u64) -> Execution {
        Execution {
            job_id: job.into(),
            thing: "lamp".into(),
            number: 1,
            status,
            details: BTreeMap::new(),
            queued_ms,
            started_ms: (status == ExecStatus::InProgress).then_some(queued_ms + 1_500),
            updated_ms: queued_ms + 1_500,
            version: 1,
            retry_attempt: 0,
            force_canceled: false,
            step_deadline_ms: None,
            job_deadline_ms: None,
        }
    }

    #[test]
    fn notify_lists_what_is_pending_in_seconds_and_leaves_out_empty_lists() {
        let running = exec("job1", ExecStatus::InProgress, 1_517_016_947_000);
        let queued = exec("job2", ExecStatus::Queued, 1_517_017_191_000);
        let doc = notify(&[&running, &queued], 1_517_017_906_123);
        assert_eq!(doc["timestamp"], 1_517_017_906);
        assert_eq!(doc["jobs"]["IN_PROGRESS"][0]["startedAt"], 1_517_016_948);
        assert_eq!(doc["jobs"]["QUEUED"][0]["jobId"], "job2");
        assert!(doc["jobs"]["QUEUED"][0].get("startedAt").is_none());
        assert_eq!(notify(&[], 0), json!({"timestamp": 0, "jobs": {}}));
        assert_eq!(notify_next(None, 5_000), json!({"timestamp": 5}));
    }

    #[test]
    fn a_refusal_carries_the_state_only_when_given() {
        let e = exec("job1", ExecStatus::Succeeded, 0);
        let doc = rejected("VersionMismatch", "stale", Some("t-1"), Some(&e), 9_000);
        assert_eq!(
            doc,
            json!({"code": "VersionMismatch", "message": "stale", "clientToken": "t-1",
                   "timestamp": 9, "executionState": {"status": "SUCCEEDED", "versionNumber": 1}})
        );
        assert!(
            rejected("InvalidJson", "x", None, None, 0)
                .get("executionState")
                .is_none()
        );
    }
}
