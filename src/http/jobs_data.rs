//! The `iot-jobs-data` API (spec aws-iot-device-services.md §4.4) on the
//! device HTTPS endpoint: a device's own job executions, as over MQTT but
//! without notifications, client tokens or timestamps, with the job
//! document as a string and AWS's HTTP errors. Each operation is decided
//! by the certificate's policies on `thing/<name>`, with the `iot:` (or
//! `iotjobsdata:`) action of its name.

use super::aws::{AwsError, json_body, ok, query_param};
use super::data::{Allows, forbidden};
use crate::jobs::Request;
use crate::jobs::documents::Api;
use crate::jobs::service::{Answer, Service};
use crate::policy::eval::{Action, ResourceType};
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::json;

/// Answers a jobs data-plane request, or `None` if the path is not one.
pub async fn handle(
    jobs: &Service,
    method: &Method,
    seg: &[&str],
    query: &str,
    body: &Bytes,
    allows: Allows<'_>,
) -> Option<Result<Response, AwsError>> {
    let (thing, request, action) = match (method, seg) {
        (&Method::GET, ["things", thing, "jobs"]) => {
            (*thing, Request::GetPending, Action::GetPendingJobExecutions)
        }
        (&Method::PUT, ["things", thing, "jobs", "$next"]) => (
            *thing,
            Request::StartNext,
            Action::StartNextPendingJobExecution,
        ),
        (&Method::GET, ["things", thing, "jobs", job]) => {
            (*thing, Request::Describe(job), Action::DescribeJobExecution)
        }
        (&Method::POST, ["things", thing, "jobs", job]) => {
            (*thing, Request::Update(job), Action::UpdateJobExecution)
        }
        _ => return None,
    };
    if !allows(action, ResourceType::Thing, thing) {
        return Some(Err(forbidden()));
    }
    Some(answer(jobs, thing, request, query, body).await)
}

async fn answer(
    jobs: &Service,
    thing: &str,
    request: Request<'_>,
    query: &str,
    body: &Bytes,
) -> Result<Response, AwsError> {
    let input = match request {
        // Describe takes its options in the query.
        Request::Describe(_) => {
            let mut input = json!({});
            if let Some(d) = query_param(query, "includeJobDocument") {
                input["includeJobDocument"] = (d == "true").into();
            }
            if let Some(n) = query_param(query, "executionNumber") {
                let n: u64 = n
                    .parse()
                    .map_err(|_| AwsError::invalid_request("executionNumber is a number"))?;
                input["executionNumber"] = n.into();
            }
            input
        }
        _ if body.is_empty() => json!({}),
        _ => json_body(body)?,
    };
    if !input.is_object() {
        return Err(AwsError::invalid_request(
            "the request is not a JSON object",
        ));
    }
    let doc = jobs
        .answer(thing, request, &input, Api::Https)
        .await
        .map_err(http_error)?;
    Ok(ok(doc))
}

/// AWS's HTTP error for a refusal: a version mismatch has no exception of
/// its own in the model and is a state transition refused.
fn http_error(a: Answer) -> AwsError {
    let (status, kind) = match a.code {
        "ResourceNotFound" => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
        "InvalidStateTransition" | "VersionMismatch" => {
            (StatusCode::CONFLICT, "InvalidStateTransitionException")
        }
        "InternalError" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
        ),
        _ => (StatusCode::BAD_REQUEST, "InvalidRequestException"),
    };
    AwsError::new(status, kind, a.message)
}
