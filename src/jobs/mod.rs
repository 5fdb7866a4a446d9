//! AWS IoT Jobs (spec aws-iot-device-services.md §4): operations that
//! operators send to things and thing groups, and that devices take, report
//! on and finish. `core` (pure) holds the jobs, their executions and AWS's
//! state machine over them; `documents` (pure) renders them as the device
//! APIs show them; `service` stores every change, answers devices over
//! MQTT, notifies them, runs the timers and follows thing groups. This file
//! names the device API's topics.

pub mod core;
pub mod documents;
pub mod service;

/// The request topics, for the router to offer to the service.
pub const REQUEST_FILTERS: [&str; 4] = [
    "$aws/things/+/jobs/get",
    "$aws/things/+/jobs/start-next",
    "$aws/things/+/jobs/+/get",
    "$aws/things/+/jobs/+/update",
];

/// What a device asks on a request topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `jobs/get`: GetPendingJobExecutions.
    GetPending,
    /// `jobs/start-next`: StartNextPendingJobExecution.
    StartNext,
    /// `jobs/<jobId>/get` (`$next` too): DescribeJobExecution.
    Describe(&'a str),
    /// `jobs/<jobId>/update`: UpdateJobExecution.
    Update(&'a str),
}

/// The thing and the request a topic names; `Err` with the thing for a
/// topic under a thing's `jobs/` that names no request.
pub fn parse(topic: &str) -> Option<Result<(&str, Request<'_>), &str>> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once("/jobs/")?;
    if thing.is_empty() || thing.contains('/') {
        return None;
    }
    let request = match rest.split('/').collect::<Vec<_>>()[..] {
        ["get"] => Some(Request::GetPending),
        ["start-next"] => Some(Request::StartNext),
        [job, "get"] if !job.is_empty() => Some(Request::Describe(job)),
        [job, "update"] if !job.is_empty() => Some(Request::Update(job)),
        _ => None,
    };
    Some(request.map(|r| (thing, r)).ok_or(thing))
}

/// Whether only the gateway publishes on `topic`: the notifications and
/// every answer under a thing's `jobs/`.
pub fn is_response_topic(topic: &str) -> bool {
    let Some(rest) = topic
        .strip_prefix("$aws/things/")
        .and_then(|r| r.split_once("/jobs/"))
        .map(|(_, rest)| rest)
    else {
        return false;
    };
    rest == "notify"
        || rest == "notify-next"
        || rest.ends_with("/accepted")
        || rest.ends_with("/rejected")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_requests_and_answers() {
        assert_eq!(
            parse("$aws/things/lamp/jobs/get"),
            Some(Ok(("lamp", Request::GetPending)))
        );
        assert_eq!(
            parse("$aws/things/lamp/jobs/start-next"),
            Some(Ok(("lamp", Request::StartNext)))
        );
        assert_eq!(
            parse("$aws/things/lamp/jobs/$next/get"),
            Some(Ok(("lamp", Request::Describe("$next"))))
        );
        assert_eq!(
            parse("$aws/things/lamp/jobs/j1/update"),
            Some(Ok(("lamp", Request::Update("j1"))))
        );
        assert_eq!(parse("$aws/things/lamp/jobs/j1/delete"), Some(Err("lamp")));
        assert_eq!(parse("$aws/things/lamp/shadow/get"), None);
        for answer in [
            "$aws/things/lamp/jobs/notify",
            "$aws/things/lamp/jobs/notify-next",
            "$aws/things/lamp/jobs/get/accepted",
            "$aws/things/lamp/jobs/j1/update/rejected",
        ] {
            assert!(is_response_topic(answer), "{answer}");
        }
        assert!(!is_response_topic("$aws/things/lamp/jobs/j1/update"));
        assert!(!is_response_topic("things/lamp/jobs/notify"));
    }
}
