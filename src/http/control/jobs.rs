//! Jobs and their executions, as operators manage them. The jobs service
//! runs only with the gateway: against a stopped gateway these operations
//! say so.

use super::things::{optional_str, with_next};
use super::{Call, Control, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::jobs::core::{
    Abort, AbortType, Code, ExecStatus, Execution, Exponential, FailureType, Job, JobChange, Jobs,
    Refusal, Retry, Rollout, Selection, Spec,
};
use crate::jobs::service::{Failure, Service, process_details};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

impl From<Refusal> for AwsError {
    fn from(r: Refusal) -> Self {
        let (status, kind) = match r.code {
            Code::InvalidRequest => (StatusCode::BAD_REQUEST, "InvalidRequestException"),
            Code::NotFound => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
            Code::InvalidStateTransition => {
                (StatusCode::CONFLICT, "InvalidStateTransitionException")
            }
            Code::VersionMismatch => (StatusCode::CONFLICT, "VersionConflictException"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "ResourceAlreadyExistsException"),
            Code::LimitExceeded => (StatusCode::GONE, "LimitExceededException"),
        };
        Self::new(status, kind, r.message)
    }
}

impl From<Failure> for AwsError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Refused(r) => r.into(),
            Failure::NotDurable(e) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailureException",
                format!("the change could not be made durable: {e}"),
            ),
        }
    }
}

fn service(c: &Control) -> Result<&Arc<Service>, AwsError> {
    c.jobs.as_ref().ok_or_else(|| {
        AwsError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "jobs are served by the running gateway; start it first",
        )
    })
}

fn job_arn(c: &Control, id: &str) -> String {
    c.arn("job", id)
}

/// What CreateJob, CancelJob and AssociateTargetsWithJob answer.
fn job_reply(c: &Control, id: &str, description: &str) -> Response {
    ok(json!({
        "jobArn": job_arn(c, id),
        "jobId": id,
        "description": description,
    }))
}

fn description_of(jobs: &Jobs, id: &str) -> String {
    jobs.job(id)
        .map(|j| j.spec.description.clone())
        .unwrap_or_default()
}

/// Configuration AWS has that this gateway does not run: refused, not ignored.
const NOT_SERVED: [&str; 4] = [
    "documentSource",
    "presignedUrlConfig",
    "schedulingConfig",
    "jobTemplateArn",
];

/// `abortConfig.criteriaList`, if given.
fn aborts(input: &Value) -> Result<Option<Vec<Abort>>, AwsError> {
    let Some(list) = input["abortConfig"].get("criteriaList") else {
        return Ok(None);
    };
    let list = list
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| AwsError::invalid_request("abortConfig.criteriaList holds criteria"))?;
    list.iter()
        .map(|c| {
            let failure_type = match c["failureType"].as_str() {
                Some("FAILED") => AbortType::Failed,
                Some("REJECTED") => AbortType::Rejected,
                Some("TIMED_OUT") => AbortType::TimedOut,
                Some("ALL") => AbortType::All,
                _ => {
                    return Err(AwsError::invalid_request(
                        "failureType is FAILED, REJECTED, TIMED_OUT or ALL",
                    ));
                }
            };
            if c["action"].as_str() != Some("CANCEL") {
                return Err(AwsError::invalid_request("action is CANCEL"));
            }
            let threshold = c["thresholdPercentage"]
                .as_f64()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| AwsError::invalid_request("thresholdPercentage is 0 to 100"))?;
            let min_executed = c["minNumberOfExecutedThings"]
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    AwsError::invalid_request("minNumberOfExecutedThings is at least 1")
                })?;
            Ok(Abort {
                failure_type,
                // Hundredths of a percent: AWS's two decimals, exactly.
                threshold_basis_points: (threshold * 100.0).round() as u32,
                min_executed,
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `jobExecutionsRolloutConfig`, if given; its ranges are the core's to check.
fn rollout(input: &Value) -> Result<Option<Rollout>, AwsError> {
    let config = &input["jobExecutionsRolloutConfig"];
    if config.is_null() {
        return Ok(None);
    }
    let count = |v: &Value, name: &str| match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| AwsError::invalid_request(format!("{name} is a whole number"))),
    };
    let per_minute = |v: &Value, name: &str| {
        count(v, name).map(|n| n.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
    };
    let maximum_per_minute = per_minute(&config["maximumPerMinute"], "maximumPerMinute")?;
    let exponential = match &config["exponentialRate"] {
        Value::Null => None,
        x => {
            let base = per_minute(&x["baseRatePerMinute"], "baseRatePerMinute")?
                .ok_or_else(|| AwsError::invalid_request("baseRatePerMinute is required"))?;
            let factor = x["incrementFactor"]
                .as_f64()
                .ok_or_else(|| AwsError::invalid_request("incrementFactor is required"))?;
            let tenths = (factor * 10.0).round();
            if (factor * 10.0 - tenths).abs() > 1e-6 {
                return Err(AwsError::invalid_request(
                    "incrementFactor has at most one digit after the decimal point",
                ));
            }
            let criteria = &x["rateIncreaseCriteria"];
            if !criteria.is_object() {
                return Err(AwsError::invalid_request(
                    "rateIncreaseCriteria is required",
                ));
            }
            Some(Exponential {
                base_per_minute: base,
                factor_tenths: tenths.clamp(0.0, f64::from(u32::MAX)) as u32,
                notified: count(
                    &criteria["numberOfNotifiedThings"],
                    "numberOfNotifiedThings",
                )?,
                succeeded: count(
                    &criteria["numberOfSucceededThings"],
                    "numberOfSucceededThings",
                )?,
            })
        }
    };
    Ok(Some(Rollout {
        maximum_per_minute: maximum_per_minute.unwrap_or(Rollout::default().maximum_per_minute),
        exponential,
    }))
}

fn rollout_json(r: &Rollout) -> Value {
    let mut v = json!({ "maximumPerMinute": r.maximum_per_minute });
    if let Some(x) = &r.exponential {
        let mut criteria = json!({});
        if let Some(n) = x.notified {
            criteria["numberOfNotifiedThings"] = n.into();
        }
        if let Some(n) = x.succeeded {
            criteria["numberOfSucceededThings"] = n.into();
        }
        v["exponentialRate"] = json!({
            "baseRatePerMinute": x.base_per_minute,
            "incrementFactor": f64::from(x.factor_tenths) / 10.0,
            "rateIncreaseCriteria": criteria,
        });
    }
    v
}

fn timeout(input: &Value) -> Result<Option<u64>, AwsError> {
    match &input["timeoutConfig"]["inProgressTimeoutInMinutes"] {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or_else(|| {
            AwsError::invalid_request("timeoutConfig.inProgressTimeoutInMinutes is a number")
        }),
    }
}

fn retries(input: &Value) -> Result<Option<Vec<Retry>>, AwsError> {
    let Some(list) = input["jobExecutionsRetryConfig"].get("criteriaList") else {
        return Ok(None);
    };
    let list = list
        .as_array()
        .filter(|l| (1..=2).contains(&l.len()))
        .ok_or_else(|| AwsError::invalid_request("criteriaList holds one or two criteria"))?;
    list.iter()
        .map(|c| {
            let failure_type = match c["failureType"].as_str() {
                Some("FAILED") => FailureType::Failed,
                Some("TIMED_OUT") => FailureType::TimedOut,
                Some("ALL") => FailureType::All,
                _ => {
                    return Err(AwsError::invalid_request(
                        "failureType is FAILED, TIMED_OUT or ALL",
                    ));
                }
            };
            let retries = c["numberOfRetries"]
                .as_u64()
                .filter(|n| *n <= 10)
                .ok_or_else(|| AwsError::invalid_request("numberOfRetries is 0 to 10"))?;
            Ok(Retry {
                failure_type,
                retries: u32::try_from(retries).unwrap_or(10),
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

pub(super) async fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let id = call.label(0).to_owned();
    let input = call.json()?;
    if let Some(key) = NOT_SERVED.iter().find(|k| !input[**k].is_null()) {
        return Err(AwsError::invalid_request(format!(
            "{key} is not supported by this gateway"
        )));
    }
    let document = optional_str(&input, "document")?
        .ok_or_else(|| AwsError::invalid_request("document is required"))?;
    if serde_json::from_str::<Value>(&document).map_or(true, |d| !d.is_object()) {
        return Err(AwsError::invalid_request("document is not a JSON object"));
    }
    let targets = target_list(&input)?;
    let selection = match input["targetSelection"].as_str() {
        None | Some("SNAPSHOT") => Selection::Snapshot,
        Some("CONTINUOUS") => Selection::Continuous,
        Some(other) => {
            return Err(AwsError::invalid_request(format!(
                "targetSelection `{other}` is not SNAPSHOT or CONTINUOUS"
            )));
        }
    };
    let description = optional_str(&input, "description")?.unwrap_or_default();
    let new = Spec {
        document,
        description: description.clone(),
        targets: targets.clone(),
        selection,
        in_progress_minutes: timeout(&input)?,
        retries: retries(&input)?.unwrap_or_default(),
        aborts: aborts(&input)?.unwrap_or_default(),
        rollout: rollout(&input)?,
    };
    let things = jobs.targets(&targets)?;
    jobs.change(|j, now| j.create(&id, new, &things, now).map(|fx| ((), fx)))
        .await?;
    Ok(job_reply(c, &id, &description))
}

fn job_json(c: &Control, j: &Job, details: Value) -> Value {
    let mut v = json!({
        "jobArn": job_arn(c, &j.id),
        "jobId": j.id,
        "targetSelection": j.spec.selection.name(),
        "status": j.status.name(),
        "forceCanceled": j.force_canceled,
        "targets": j.spec.targets,
        "description": j.spec.description,
        "createdAt": secs(j.created_ms),
        "lastUpdatedAt": secs(j.updated_ms),
        "jobProcessDetails": details,
        "presignedUrlConfig": {},
        "jobExecutionsRolloutConfig": {},
        "abortConfig": {},
        "timeoutConfig": {},
        "isConcurrent": false,
    });
    if let Some(r) = &j.spec.rollout {
        v["jobExecutionsRolloutConfig"] = rollout_json(r);
    }
    if let Some(m) = j.spec.in_progress_minutes {
        v["timeoutConfig"] = json!({"inProgressTimeoutInMinutes": m});
    }
    if !j.spec.retries.is_empty() {
        v["jobExecutionsRetryConfig"] = json!({"criteriaList": j.spec.retries.iter().map(|r| json!({
            "failureType": match r.failure_type {
                FailureType::Failed => "FAILED",
                FailureType::TimedOut => "TIMED_OUT",
                FailureType::All => "ALL",
            },
            "numberOfRetries": r.retries,
        })).collect::<Vec<_>>()});
    }
    if !j.spec.aborts.is_empty() {
        v["abortConfig"] = json!({"criteriaList": j.spec.aborts.iter().map(|a| json!({
            "failureType": match a.failure_type {
                AbortType::Failed => "FAILED",
                AbortType::Rejected => "REJECTED",
                AbortType::TimedOut => "TIMED_OUT",
                AbortType::All => "ALL",
            },
            "action": "CANCEL",
            "thresholdPercentage": f64::from(a.threshold_basis_points) / 100.0,
            "minNumberOfExecutedThings": a.min_executed,
        })).collect::<Vec<_>>()});
    }
    if let Some(ms) = j.completed_ms {
        v["completedAt"] = secs(ms).into();
    }
    if let Some(r) = &j.reason_code {
        v["reasonCode"] = r.as_str().into();
    }
    if let Some(cm) = &j.comment {
        v["comment"] = cm.as_str().into();
    }
    v
}

fn no_job(id: &str) -> AwsError {
    AwsError::not_found(format!("Job {id} does not exist"))
}

pub(super) fn describe(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = call.label(0);
    service(c)?.read(|jobs| {
        let j = jobs.job(id).ok_or_else(|| no_job(id))?;
        let mut details = process_details(jobs, id);
        details["processingTargets"] = json!([]);
        Ok(ok(json!({ "job": job_json(c, j, details) })))
    })
}

pub(super) fn document(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = call.label(0);
    service(c)?.read(|jobs| {
        let j = jobs.job(id).ok_or_else(|| no_job(id))?;
        Ok(ok(json!({ "document": j.spec.document })))
    })
}

pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let status = call.query("status");
    let selection = call.query("targetSelection");
    let group = call.query("thingGroupName");
    let listed: Vec<Value> = service(c)?.read(|jobs| {
        jobs.jobs()
            .filter(|j| status.as_deref().is_none_or(|s| s == j.status.name()))
            .filter(|j| {
                selection
                    .as_deref()
                    .is_none_or(|s| s == j.spec.selection.name())
            })
            .filter(|j| {
                group.as_deref().is_none_or(|g| {
                    let arn = c.arn("thinggroup", g);
                    j.spec.targets.contains(&arn)
                })
            })
            .map(|j| {
                let mut v = json!({
                    "jobArn": job_arn(c, &j.id),
                    "jobId": j.id,
                    "targetSelection": j.spec.selection.name(),
                    "status": j.status.name(),
                    "createdAt": secs(j.created_ms),
                    "lastUpdatedAt": secs(j.updated_ms),
                    "isConcurrent": false,
                });
                if let Some(ms) = j.completed_ms {
                    v["completedAt"] = secs(ms).into();
                }
                v
            })
            .collect()
    });
    let page = paginate(
        listed,
        |v| v["jobId"].as_str().unwrap_or_default(),
        call.query("nextToken"),
        call.query("maxResults"),
        100,
    )?;
    Ok(ok(with_next(
        json!({ "jobs": page.items }),
        "nextToken",
        page.next,
    )))
}

/// AssociateTargetsWithJob: more thing groups for a continuous job.
pub(super) async fn associate(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let id = call.label(0).to_owned();
    let input = call.json()?;
    let added = target_list(&input)?;
    let all: Vec<String> = jobs
        .read(|j| j.job(&id).map(|j| j.spec.targets.clone()))
        .ok_or_else(|| no_job(&id))?
        .into_iter()
        .chain(added.iter().cloned())
        .collect();
    let things = jobs.targets(&all)?;
    let description = jobs
        .change(|j, now| {
            let fx = j.associate(&id, added, &things, now)?;
            Ok((description_of(j, &id), fx))
        })
        .await?;
    Ok(job_reply(c, &id, &description))
}

/// `targets`: ARNs.
fn target_list(input: &Value) -> Result<Vec<String>, AwsError> {
    input["targets"]
        .as_array()
        .ok_or_else(|| AwsError::invalid_request("targets is required"))?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_owned)
                .ok_or_else(|| AwsError::invalid_request("targets holds ARNs"))
        })
        .collect()
}

pub(super) async fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let id = call.label(0).to_owned();
    let input = call.json()?;
    if let Some(key) = NOT_SERVED.iter().find(|k| !input[**k].is_null()) {
        return Err(AwsError::invalid_request(format!(
            "{key} is not supported by this gateway"
        )));
    }
    let change = JobChange {
        description: optional_str(&input, "description")?,
        in_progress_minutes: timeout(&input)?,
        retries: retries(&input)?,
        aborts: aborts(&input)?,
        rollout: rollout(&input)?,
    };
    jobs.change(|j, now| j.update_job(&id, change, now).map(|fx| ((), fx)))
        .await?;
    done()
}

pub(super) async fn cancel(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let id = call.label(0).to_owned();
    let input = call.json()?;
    let reason = optional_str(&input, "reasonCode")?;
    if reason.as_ref().is_some_and(|r| {
        r.len() > 128
            || !r
                .chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
    }) {
        return Err(AwsError::invalid_request(
            "reasonCode is up to 128 of [A-Z0-9_]",
        ));
    }
    let comment = optional_str(&input, "comment")?;
    let force = call.flag("force")?;
    let description = jobs
        .change(|j, now| {
            let fx = j.cancel(&id, force, reason, comment, now)?;
            Ok((description_of(j, &id), fx))
        })
        .await?;
    Ok(job_reply(c, &id, &description))
}

pub(super) async fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let id = call.label(0).to_owned();
    let force = call.flag("force")?;
    jobs.change(|j, _| j.delete(&id, force).map(|fx| ((), fx)))
        .await?;
    done()
}

fn summary(e: &Execution) -> Value {
    let mut v = json!({
        "status": e.status.name(),
        "queuedAt": secs(e.queued_ms),
        "lastUpdatedAt": secs(e.updated_ms),
        "executionNumber": e.number,
        "retryAttempt": e.retry_attempt,
    });
    if let Some(ms) = e.started_ms {
        v["startedAt"] = secs(ms).into();
    }
    v
}

fn status_filter(call: &Call<'_>) -> Result<Option<ExecStatus>, AwsError> {
    call.query("status")
        .map(|s| {
            ExecStatus::parse(&s).ok_or_else(|| {
                AwsError::invalid_request(format!("status `{s}` is not a job execution status"))
            })
        })
        .transpose()
}

pub(super) fn executions_of_job(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = call.label(0);
    let status = status_filter(call)?;
    let listed: Vec<(String, Value)> = service(c)?.read(|jobs| {
        jobs.job(id).ok_or_else(|| no_job(id))?;
        Ok::<_, AwsError>(
            jobs.executions_of_job(id)
                .filter(|e| status.is_none_or(|s| s == e.status))
                .map(|e| {
                    (
                        e.thing.clone(),
                        json!({"thingArn": c.arn("thing", &e.thing), "jobExecutionSummary": summary(e)}),
                    )
                })
                .collect(),
        )
    })?;
    summaries_page(call, listed)
}

pub(super) fn executions_of_thing(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let thing = call.label(0);
    let status = status_filter(call)?;
    let job = call.query("jobId");
    let listed: Vec<(String, Value)> = service(c)?.read(|jobs| {
        jobs.executions_of_thing(thing)
            .filter(|e| status.is_none_or(|s| s == e.status))
            .filter(|e| job.as_deref().is_none_or(|j| j == e.job_id))
            .map(|e| {
                (
                    e.job_id.clone(),
                    json!({"jobId": e.job_id, "jobExecutionSummary": summary(e)}),
                )
            })
            .collect()
    });
    summaries_page(call, listed)
}

/// A page of execution summaries, each under its sort key.
fn summaries_page(call: &Call<'_>, listed: Vec<(String, Value)>) -> Result<Response, AwsError> {
    let page = paginate(
        listed,
        |(k, _)| k,
        call.query("nextToken"),
        call.query("maxResults"),
        100,
    )?;
    let items: Vec<&Value> = page.items.iter().map(|(_, v)| v).collect();
    Ok(ok(with_next(
        json!({ "executionSummaries": items }),
        "nextToken",
        page.next,
    )))
}

pub(super) fn describe_execution(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let (thing, id) = (call.label(0), call.label(1));
    let number = call.number("executionNumber")?;
    let jobs = service(c)?;
    let now = jobs.now_ms();
    jobs.read(|j| {
        let e = j
            .execution(thing, id)
            .filter(|e| number.is_none_or(|n| n == e.number))
            .ok_or_else(|| {
                AwsError::not_found(format!(
                    "Job execution {id} on thing {thing} does not exist"
                ))
            })?;
        let mut v = json!({
            "jobId": e.job_id,
            "status": e.status.name(),
            "forceCanceled": e.force_canceled,
            "statusDetails": {"detailsMap": e.details},
            "thingArn": c.arn("thing", &e.thing),
            "queuedAt": secs(e.queued_ms),
            "lastUpdatedAt": secs(e.updated_ms),
            "executionNumber": e.number,
            "versionNumber": e.version,
        });
        if let Some(ms) = e.started_ms {
            v["startedAt"] = secs(ms).into();
        }
        if let Some(d) = e.deadline().filter(|_| !e.status.is_terminal()) {
            v["approximateSecondsBeforeTimedOut"] = (d.saturating_sub(now) / 1000).into();
        }
        Ok(ok(json!({ "execution": v })))
    })
}

pub(super) async fn cancel_execution(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let (thing, id) = (call.label(0).to_owned(), call.label(1).to_owned());
    let input = call.json()?;
    let force = call.flag("force")?;
    let expected = match &input["expectedVersion"] {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .ok_or_else(|| AwsError::invalid_request("expectedVersion is a number"))?,
        ),
    };
    let details: Option<BTreeMap<String, String>> = match &input["statusDetails"] {
        Value::Null => None,
        Value::Object(m) => Some(
            m.iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.clone(), v.to_owned()))
                        .ok_or_else(|| {
                            AwsError::invalid_request("statusDetails values are strings")
                        })
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(AwsError::invalid_request("statusDetails is an object")),
    };
    jobs.change(|j, now| {
        j.cancel_execution(&thing, &id, force, expected, details, now)
            .map(|fx| ((), fx))
    })
    .await?;
    done()
}

pub(super) async fn delete_execution(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let jobs = service(c)?;
    let (thing, id) = (call.label(0).to_owned(), call.label(1).to_owned());
    let number: u64 = call
        .label(2)
        .parse()
        .map_err(|_| AwsError::invalid_request("executionNumber must be a number"))?;
    let force = call.flag("force")?;
    jobs.change(|j, now| {
        j.delete_execution(&thing, &id, number, force, now)
            .map(|fx| ((), fx))
    })
    .await?;
    done()
}
