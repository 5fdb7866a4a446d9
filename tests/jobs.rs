//! AWS IoT Jobs as an operator and devices run them: jobs made through the
//! control plane, taken, reported on and finished by devices over MQTT.

mod common;

use common::*;
use rumqttc::QoS;
use serde_json::{Value, json};

/// A gateway with an operator of full access (`AKIDADMIN`).
async fn gateway() -> TestServer {
    gateway_with("", &[]).await
}

/// [`gateway`] with `extra` configuration and device `policies`.
async fn gateway_with(extra: &str, policies: &[(&str, &str)]) -> TestServer {
    let mut t = TestServer::prepare_with_operator(extra);
    for (name, text) in policies {
        t.write_policy(name, text);
    }
    t.boot().await;
    t
}

/// Adds `thing` to `group` or removes it (`operation` is the path's last
/// segment: `addThingToThingGroup`, `removeThingFromThingGroup`).
async fn membership(aws: &Aws, operation: &str, group: &str, thing: &str) {
    let (status, body) = aws
        .call(
            "PUT",
            &format!("/thing-groups/{operation}"),
            "",
            &[],
            &json!({"thingGroupName": group, "thingName": thing}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn arn(kind: &str, name: &str) -> String {
    format!("arn:aws:iot:us-east-1:000000000000:{kind}/{name}")
}

/// A device connected as its thing, and what it received that no wait
/// has taken yet.
struct Device {
    c: V4,
    seen: Vec<(String, Value)>,
}

/// A device connected as its thing, subscribed to its jobs topics.
async fn device(t: &TestServer, thing: &str) -> Device {
    let mut d = t.v4(thing, true).await;
    for filter in [
        "notify",
        "notify-next",
        "get/+",
        "start-next/+",
        "+/get/+",
        "+/update/+",
    ] {
        d.subscribe(
            &format!("$aws/things/{thing}/jobs/{filter}"),
            QoS::AtLeastOnce,
        )
        .await;
    }
    Device {
        c: d,
        seen: Vec::new(),
    }
}

/// The next message on a topic `pick` accepts, with its topic, as JSON;
/// others are kept for later waits.
async fn next_where(d: &mut Device, pick: impl Fn(&str) -> bool) -> (String, Value) {
    if let Some(i) = d.seen.iter().position(|(t, _)| pick(t)) {
        return d.seen.remove(i);
    }
    loop {
        let p = d.c.recv().await;
        let doc = serde_json::from_slice(&p.payload).expect("JSON");
        if pick(&p.topic) {
            return (p.topic, doc);
        }
        d.seen.push((p.topic, doc));
    }
}

/// The next message on `topic`, as JSON.
async fn next_on(d: &mut Device, topic: &str) -> Value {
    next_where(d, |t| t == topic).await.1
}

/// Publishes `request` on `$aws/things/<thing>/jobs/<what>` and returns
/// the answer's suffix (`accepted` or `rejected`) and document.
async fn ask(d: &mut Device, thing: &str, what: &str, request: Value) -> (String, Value) {
    let topic = format!("$aws/things/{thing}/jobs/{what}");
    d.c.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        request.to_string().as_bytes(),
    )
    .await;
    let prefix = format!("{topic}/");
    let (answer, doc) = next_where(d, |t| t.starts_with(&prefix)).await;
    (answer[prefix.len()..].to_owned(), doc)
}

async fn create_job(aws: &Aws, id: &str, body: Value) -> (u16, Value) {
    aws.call("PUT", &format!("/jobs/{id}"), "", &[], &body.to_string())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_take_report_and_finish_a_job_for_a_thing_and_a_group() {
    let t = gateway().await;
    let aws = t.operator();
    for thing in ["lamp-1", "lamp-2"] {
        assert_eq!(
            aws.post(&format!("/things/{thing}"), "", json!({})).await.0,
            200
        );
    }
    assert_eq!(aws.post("/thing-groups/floor", "", json!({})).await.0, 200);
    membership(&aws, "addThingToThingGroup", "floor", "lamp-2").await;
    let mut one = device(&t, "lamp-1").await;
    let mut two = device(&t, "lamp-2").await;

    let (status, made) = create_job(
        &aws,
        "reboot-1",
        json!({"targets": [arn("thing", "lamp-1"), arn("thinggroup", "floor")],
               "document": "{\"operation\": \"reboot\"}", "description": "reboot the lamps"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["jobArn"], arn("job", "reboot-1"));

    for (d, thing) in [(&mut one, "lamp-1"), (&mut two, "lamp-2")] {
        let notified = next_on(d, &format!("$aws/things/{thing}/jobs/notify-next")).await;
        let e = &notified["execution"];
        assert_eq!(
            (&e["jobId"], &e["status"], &e["versionNumber"]),
            (&json!("reboot-1"), &json!("QUEUED"), &json!(1))
        );
        assert_eq!(e["jobDocument"], json!({"operation": "reboot"}));
        assert!(
            notified["timestamp"]
                .as_u64()
                .is_some_and(|s| s < 10_000_000_000),
            "seconds: {notified}"
        );

        let (answer, pending) = ask(d, thing, "get", json!({"clientToken": "t-1"})).await;
        assert_eq!(answer, "accepted", "{pending}");
        assert_eq!(pending["clientToken"], "t-1");
        assert_eq!(pending["queuedJobs"][0]["jobId"], "reboot-1");

        let (answer, started) = ask(
            d,
            thing,
            "start-next",
            json!({"statusDetails": {"step": "1"}, "clientToken": "t-2"}),
        )
        .await;
        assert_eq!(answer, "accepted", "{started}");
        let e = &started["execution"];
        assert_eq!(
            (&e["status"], &e["versionNumber"], &e["statusDetails"]),
            (&json!("IN_PROGRESS"), &json!(2), &json!({"step": "1"}))
        );
        assert!(e["startedAt"].is_u64());

        let (answer, stale) = ask(
            d,
            thing,
            "reboot-1/update",
            json!({"status": "SUCCEEDED", "expectedVersion": 1, "clientToken": "t-3"}),
        )
        .await;
        assert_eq!(answer, "rejected");
        assert_eq!(stale["code"], "VersionMismatch", "{stale}");
        assert_eq!(stale["clientToken"], "t-3");
        assert_eq!(stale["executionState"]["versionNumber"], 2);

        let (answer, updated) = ask(
            d,
            thing,
            "reboot-1/update",
            json!({"status": "SUCCEEDED", "expectedVersion": 2,
                   "includeJobExecutionState": true, "statusDetails": {"step": "2"}}),
        )
        .await;
        assert_eq!(answer, "accepted", "{updated}");
        assert_eq!(
            updated["executionState"],
            json!({"status": "SUCCEEDED", "versionNumber": 3, "statusDetails": {"step": "2"}})
        );
        // Nothing is pending any more.
        let next = next_on(d, &format!("$aws/things/{thing}/jobs/notify-next")).await;
        assert!(next.get("execution").is_none(), "{next}");
        let (answer, terminal) = ask(
            d,
            thing,
            "reboot-1/update",
            json!({"status": "IN_PROGRESS"}),
        )
        .await;
        assert_eq!(answer, "rejected");
        assert_eq!(terminal["code"], "InvalidStateTransition", "{terminal}");
    }

    let (status, described) = aws.get("/jobs/reboot-1", "").await;
    assert_eq!(status, 200, "{described}");
    let job = &described["job"];
    assert_eq!(job["status"], "COMPLETED");
    assert_eq!(job["jobProcessDetails"]["numberOfSucceededThings"], 2);
    let (_, executions) = aws.get("/jobs/reboot-1/things", "").await;
    let statuses: Vec<&Value> = executions["executionSummaries"]
        .as_array()
        .expect("summaries")
        .iter()
        .map(|s| &s["jobExecutionSummary"]["status"])
        .collect();
    assert_eq!(statuses, [&json!("SUCCEEDED"), &json!("SUCCEEDED")]);
    let (_, execution) = aws.get("/things/lamp-1/jobs/reboot-1", "").await;
    assert_eq!(
        execution["execution"]["statusDetails"],
        json!({"detailsMap": {"step": "2"}})
    );
    let m = t.metrics().await;
    assert_eq!(metric(&m, "edgegate_jobs{status=\"COMPLETED\"}"), 1.0);
    assert_eq!(
        metric(&m, "edgegate_job_executions{status=\"SUCCEEDED\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "edgegate_job_rejections_total{code=\"VersionMismatch\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_job_reaches_things_that_join_its_group_later() {
    let t = gateway().await;
    let aws = t.operator();
    assert_eq!(aws.post("/things/fan-1", "", json!({})).await.0, 200);
    assert_eq!(aws.post("/thing-groups/fans", "", json!({})).await.0, 200);
    let mut fan = device(&t, "fan-1").await;
    let (status, made) = create_job(
        &aws,
        "tune",
        json!({"targets": [arn("thinggroup", "fans")], "document": "{\"speed\": 2}",
               "targetSelection": "CONTINUOUS"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    membership(&aws, "addThingToThingGroup", "fans", "fan-1").await;
    let next = next_on(&mut fan, "$aws/things/fan-1/jobs/notify-next").await;
    assert_eq!(next["execution"]["jobId"], "tune", "{next}");
    membership(&aws, "removeThingFromThingGroup", "fans", "fan-1").await;
    let next = next_on(&mut fan, "$aws/things/fan-1/jobs/notify-next").await;
    assert!(next.get("execution").is_none(), "{next}");
    let (_, execution) = aws.get("/things/fan-1/jobs/tune", "").await;
    assert_eq!(execution["execution"]["status"], "REMOVED");
    let (_, job) = aws.get("/jobs/tune", "").await;
    assert_eq!(
        job["job"]["status"], "IN_PROGRESS",
        "a continuous job never completes"
    );

    // Another group associated later brings its things in too.
    assert_eq!(aws.post("/things/heater-1", "", json!({})).await.0, 200);
    assert_eq!(
        aws.post("/thing-groups/heaters", "", json!({})).await.0,
        200
    );
    membership(&aws, "addThingToThingGroup", "heaters", "heater-1").await;
    let (status, associated) = aws
        .post(
            "/jobs/tune/targets",
            "",
            json!({"targets": [arn("thinggroup", "heaters")]}),
        )
        .await;
    assert_eq!(status, 200, "{associated}");
    let (_, execution) = aws.get("/things/heater-1/jobs/tune", "").await;
    assert_eq!(execution["execution"]["status"], "QUEUED");
    let (_, job) = aws.get("/jobs/tune", "").await;
    assert_eq!(job["job"]["targets"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_needs_force_for_running_executions_and_delete_needs_a_finished_job() {
    let mut t = gateway().await;
    let aws = t.operator();
    for thing in ["a", "b"] {
        assert_eq!(
            aws.post(&format!("/things/{thing}"), "", json!({})).await.0,
            200
        );
    }
    let mut a = device(&t, "a").await;
    let (status, _) = create_job(
        &aws,
        "long",
        json!({"targets": [arn("thing", "a"), arn("thing", "b")], "document": "{}"}),
    )
    .await;
    assert_eq!(status, 200);
    let (answer, _) = ask(&mut a, "a", "start-next", json!({})).await;
    assert_eq!(answer, "accepted");

    let (status, body) = aws.call("DELETE", "/jobs/long", "", &[], "").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["__type"], "InvalidStateTransitionException");
    let (status, body) = aws
        .call("PUT", "/things/a/jobs/long/cancel", "", &[], "{}")
        .await;
    assert_eq!(
        (status, &body["__type"]),
        (409, &json!("InvalidStateTransitionException"))
    );

    let (status, _) = aws
        .call(
            "PUT",
            "/jobs/long/cancel",
            "",
            &[],
            &json!({"reasonCode": "WRONG_BUILD", "comment": "stop"}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let status_of = |body: &Value| body["execution"]["status"].clone();
    assert_eq!(
        status_of(&aws.get("/things/a/jobs/long", "").await.1),
        "IN_PROGRESS"
    );
    assert_eq!(
        status_of(&aws.get("/things/b/jobs/long", "").await.1),
        "CANCELED"
    );

    // What was made survives a restart.
    t.restart().await;
    let aws = t.operator();
    let (_, job) = aws.get("/jobs/long", "").await;
    assert_eq!(
        (&job["job"]["status"], &job["job"]["reasonCode"]),
        (&json!("CANCELED"), &json!("WRONG_BUILD"))
    );
    let (status, _) = aws
        .call("PUT", "/jobs/long/cancel", "force=true", &[], "{}")
        .await;
    assert_eq!(status, 200);
    let (_, execution) = aws.get("/things/a/jobs/long", "").await;
    assert_eq!(execution["execution"]["status"], "CANCELED");
    assert_eq!(execution["execution"]["forceCanceled"], true);
    let (status, _) = aws.call("DELETE", "/jobs/long", "", &[], "").await;
    assert_eq!(status, 200);
    let (status, gone) = aws.get("/jobs/long", "").await;
    assert_eq!(status, 404, "{gone}");
}

#[tokio::test]
async fn devices_cannot_answer_for_the_service_and_bad_requests_are_refused() {
    let t = gateway().await;
    let mut d = device(&t, "lamp").await;
    let (answer, missing) = ask(&mut d, "lamp", "nope/get", json!({})).await;
    assert_eq!(answer, "rejected");
    assert_eq!(missing["code"], "ResourceNotFound", "{missing}");
    let (answer, next) = ask(&mut d, "lamp", "$next/get", json!({})).await;
    assert_eq!(answer, "accepted");
    assert!(next.get("execution").is_none(), "{next}");
    let (answer, bad) = ask(
        &mut d,
        "lamp",
        "start-next",
        json!({"stepTimeoutInMinutes": 0}),
    )
    .await;
    assert_eq!(answer, "rejected");
    assert_eq!(bad["code"], "InvalidRequest", "{bad}");
    d.c.publish(
        "$aws/things/lamp/jobs/get",
        QoS::AtLeastOnce,
        false,
        b"not json",
    )
    .await;
    let refused = next_on(&mut d, "$aws/things/lamp/jobs/get/rejected").await;
    assert_eq!(refused["code"], "InvalidJson");

    let mut forger = t.v5("forger").await;
    for topic in [
        "$aws/things/lamp/jobs/notify-next",
        "$aws/things/lamp/jobs/start-next/accepted",
    ] {
        assert_eq!(
            forger.publish_qos1(topic, false, "{}").await,
            rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_runs_its_job_over_https_with_its_certificate() {
    let t = gateway_with(
        "[auth]\nprovisioning = { policies = [\"jobsdata\"] }\n",
        &[(
            "jobsdata",
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":"iotjobsdata:*",
                 "Resource":"arn:aws:iot:*:*:thing/${iot:Certificate.Subject.CommonName}"}]}"#,
        )],
    )
    .await;
    let aws = t.operator();
    for thing in ["web-lamp", "other"] {
        assert_eq!(
            aws.post(&format!("/things/{thing}"), "", json!({})).await.0,
            200
        );
    }
    let (status, _) = create_job(
        &aws,
        "web-1",
        json!({"targets": [arn("thing", "web-lamp"), arn("thing", "other")],
               "document": "{\"step\": \"flash\"}"}),
    )
    .await;
    assert_eq!(status, 200);
    let addr = t.server().https.expect("the device HTTPS listener");
    let pem = t.device("web-lamp");
    let call = |method: &'static str, target: String, body: Value| {
        let (t, pem) = (&t, &pem);
        async move {
            let (status, body) = https(
                t,
                addr,
                Some(pem),
                method,
                &target,
                body.to_string().as_bytes(),
            )
            .await
            .expect("served");
            let doc: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).expect("JSON")
            };
            (status, doc)
        }
    };
    let (status, pending) = call("GET", "/things/web-lamp/jobs".into(), json!({})).await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["queuedJobs"][0]["jobId"], "web-1");
    assert!(pending.get("timestamp").is_none());

    let (status, started) = call(
        "PUT",
        "/things/web-lamp/jobs/$next".into(),
        json!({"statusDetails": {"at": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let e = &started["execution"];
    assert_eq!(
        (&e["status"], &e["thingName"]),
        (&json!("IN_PROGRESS"), &json!("web-lamp"))
    );
    assert_eq!(
        e["jobDocument"], "{\"step\": \"flash\"}",
        "a string over HTTPS"
    );

    let (status, stale) = call(
        "POST",
        "/things/web-lamp/jobs/web-1".into(),
        json!({"status": "SUCCEEDED", "expectedVersion": 1}),
    )
    .await;
    assert_eq!(
        (status, &stale["__type"]),
        (409, &json!("InvalidStateTransitionException"))
    );
    let (status, done) = call(
        "POST",
        "/things/web-lamp/jobs/web-1".into(),
        json!({"status": "SUCCEEDED", "expectedVersion": 2, "includeJobExecutionState": true}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["executionState"]["status"], "SUCCEEDED");
    let (status, described) = call(
        "GET",
        "/things/web-lamp/jobs/web-1?includeJobDocument=false".into(),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{described}");
    assert_eq!(described["execution"]["status"], "SUCCEEDED");
    assert!(described["execution"].get("jobDocument").is_none());
    let (status, missing) = call("GET", "/things/web-lamp/jobs/nope".into(), json!({})).await;
    assert_eq!(
        (status, &missing["__type"]),
        (404, &json!("ResourceNotFoundException"))
    );

    // Another thing's jobs are not this certificate's.
    let (status, _) = call("GET", "/things/other/jobs".into(), json!({})).await;
    assert_eq!(status, 403);
}

/// Every accepted change is answered once durable: a gateway killed with
/// SIGKILL in the middle of an execution has every transition it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answered_transition_is_lost_on_kill_9() {
    let section = "[admin]\nlisten = \"127.0.0.1:0\"\naccess_key_id = \"AKIDADMIN\"\nsecret_access_key_env = \"EDGEGATE_JOBS_KILL_SECRET\"\n";
    let env = [("EDGEGATE_JOBS_KILL_SECRET", "kill-secret")];
    let t = TestServer::prepare(section);
    let (mut child, port, admin) = spawn_binary(&t, section, &env);
    let aws = Aws::new(admin.parse().expect("addr"), "AKIDADMIN", "kill-secret");
    assert_eq!(aws.post("/things/kept", "", json!({})).await.0, 200);
    let (status, _) = create_job(
        &aws,
        "kept-job",
        json!({"targets": [arn("thing", "kept")], "document": "{}"}),
    )
    .await;
    assert_eq!(status, 200);
    let c = V4::connect_to(&t, port, "kept", true, None, |_| {}).await;
    let mut d = Device {
        c,
        seen: Vec::new(),
    };
    d.c.subscribe("$aws/things/kept/jobs/+/+", QoS::AtLeastOnce)
        .await;
    d.c.subscribe("$aws/things/kept/jobs/+/+/+", QoS::AtLeastOnce)
        .await;
    let (answer, _) = ask(&mut d, "kept", "start-next", json!({})).await;
    assert_eq!(answer, "accepted");
    let (answer, _) = ask(
        &mut d,
        "kept",
        "kept-job/update",
        json!({"status": "IN_PROGRESS", "statusDetails": {"progress": "40"}}),
    )
    .await;
    assert_eq!(answer, "accepted");
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let (mut child, _, admin) = spawn_binary(&t, section, &env);
    let aws = Aws::new(admin.parse().expect("addr"), "AKIDADMIN", "kill-secret");
    let (status, execution) = aws.get("/things/kept/jobs/kept-job", "").await;
    assert_eq!(status, 200, "{execution}");
    let e = &execution["execution"];
    assert_eq!(
        (&e["status"], &e["versionNumber"], &e["statusDetails"]),
        (
            &json!("IN_PROGRESS"),
            &json!(3),
            &json!({"detailsMap": {"progress": "40"}})
        )
    );
    let (_, job) = aws.get("/jobs/kept-job", "").await;
    assert_eq!(job["job"]["status"], "IN_PROGRESS");
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_execution_events_are_published_once_enabled() {
    let t = gateway().await;
    let aws = t.operator();
    assert_eq!(aws.post("/things/ev", "", json!({})).await.0, 200);
    let mut w = watch_events(
        &t,
        &aws,
        &["JOB", "JOB_EXECUTION"],
        &["$aws/events/job/#", "$aws/events/jobExecution/#"],
    )
    .await;
    let mut d = device(&t, "ev").await;
    let (status, _) = create_job(
        &aws,
        "evented",
        json!({"targets": [arn("thing", "ev")], "document": "{}", "description": "watched"}),
    )
    .await;
    assert_eq!(status, 200);
    ask(&mut d, "ev", "start-next", json!({})).await;
    let (answer, _) = ask(
        &mut d,
        "ev",
        "evented/update",
        json!({"status": "SUCCEEDED", "statusDetails": {"result": "ok"}}),
    )
    .await;
    assert_eq!(answer, "accepted");
    let (status, _) = aws.call("DELETE", "/jobs/evented", "", &[], "").await;
    assert_eq!(status, 200);

    let mut seen = Vec::new();
    for _ in 0..5 {
        let p = w.recv().await;
        let doc: Value = serde_json::from_slice(&p.payload).expect("JSON");
        seen.push((p.topic, doc));
    }
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$aws/events/jobExecution/evented/succeeded",
            "$aws/events/job/evented/completed",
            "$aws/events/job/evented/deletion_in_progress",
            "$aws/events/jobExecution/evented/deleted",
            "$aws/events/job/evented/deleted",
        ]
    );
    let succeeded = &seen[0].1;
    assert_eq!(succeeded["eventType"], "JOB_EXECUTION");
    assert_eq!(succeeded["status"], "SUCCEEDED");
    assert_eq!(succeeded["thingArn"], arn("thing", "ev"));
    assert_eq!(succeeded["statusDetails"], json!({"result": "ok"}));
    let completed = &seen[1].1;
    assert_eq!(
        (
            &completed["eventType"],
            &completed["status"],
            &completed["description"]
        ),
        (&json!("JOB"), &json!("COMPLETED"), &json!("watched"))
    );
    assert_eq!(completed["jobProcessDetails"]["numberOfSucceededThings"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_aborted_when_its_failures_pass_the_threshold() {
    let t = gateway().await;
    let aws = t.operator();
    for thing in ["f1", "f2"] {
        assert_eq!(
            aws.post(&format!("/things/{thing}"), "", json!({})).await.0,
            200
        );
    }
    let abort = json!({"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                                          "thresholdPercentage": 50.0,
                                          "minNumberOfExecutedThings": 1}]});
    let (status, made) = create_job(
        &aws,
        "risky",
        json!({"targets": [arn("thing", "f1"), arn("thing", "f2")], "document": "{}",
               "abortConfig": abort}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let mut d = device(&t, "f1").await;
    let (answer, _) = ask(&mut d, "f1", "risky/update", json!({"status": "FAILED"})).await;
    assert_eq!(answer, "accepted");
    let (_, described) = aws.get("/jobs/risky", "").await;
    let job = &described["job"];
    assert_eq!(
        (&job["status"], &job["reasonCode"]),
        (&json!("CANCELED"), &json!("ABORTED"))
    );
    assert_eq!(job["abortConfig"], abort);
    let (_, other) = aws.get("/things/f2/jobs/risky", "").await;
    assert_eq!(other["execution"]["status"], "CANCELED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_gives_the_job_to_no_more_things_a_minute_than_it_allows() {
    let t = gateway().await;
    let aws = t.operator();
    for thing in ["r1", "r2", "r3"] {
        assert_eq!(
            aws.post(&format!("/things/{thing}"), "", json!({})).await.0,
            200
        );
    }
    let targets = json!([arn("thing", "r1"), arn("thing", "r2"), arn("thing", "r3")]);
    let (status, refused) = create_job(
        &aws,
        "hasty",
        json!({"targets": targets, "document": "{}",
               "jobExecutionsRolloutConfig": {"exponentialRate": {
                   "baseRatePerMinute": 1, "incrementFactor": 1.55,
                   "rateIncreaseCriteria": {"numberOfSucceededThings": 1}}}}),
    )
    .await;
    assert_eq!(
        (status, &refused["__type"]),
        (400, &json!("InvalidRequestException")),
        "{refused}"
    );
    let rollout = json!({"maximumPerMinute": 2, "exponentialRate": {
        "baseRatePerMinute": 1, "incrementFactor": 2.0,
        "rateIncreaseCriteria": {"numberOfSucceededThings": 1}}});
    let (status, made) = create_job(
        &aws,
        "staged",
        json!({"targets": targets, "document": "{}", "jobExecutionsRolloutConfig": rollout}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let (_, described) = aws.get("/jobs/staged", "").await;
    assert_eq!(described["job"]["jobExecutionsRolloutConfig"], rollout);
    assert_eq!(
        described["job"]["jobProcessDetails"]["numberOfQueuedThings"], 1,
        "one thing in the first minute: {described}"
    );
    // Things are given the job in turn: r1 now, the others later.
    let (_, listed) = aws.get("/jobs/staged/things", "").await;
    let summaries = listed["executionSummaries"].as_array().expect("list");
    assert_eq!(summaries.len(), 1, "{listed}");
    assert_eq!(summaries[0]["thingArn"], arn("thing", "r1"));
    let mut d = device(&t, "r1").await;
    let (answer, doc) = ask(&mut d, "r1", "start-next", json!({})).await;
    assert_eq!(answer, "accepted");
    assert_eq!(doc["execution"]["jobId"], "staged");
    let mut waiting = device(&t, "r2").await;
    let (answer, doc) = ask(&mut waiting, "r2", "get", json!({})).await;
    assert_eq!(answer, "accepted");
    assert_eq!(
        (&doc["queuedJobs"], &doc["inProgressJobs"]),
        (&json!([]), &json!([])),
        "{doc}"
    );
    // Slower still through UpdateJob; shown as changed.
    let slower = json!({"maximumPerMinute": 1});
    let (status, _) = aws
        .call(
            "PATCH",
            "/jobs/staged",
            "",
            &[],
            &json!({"jobExecutionsRolloutConfig": slower}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (_, described) = aws.get("/jobs/staged", "").await;
    assert_eq!(described["job"]["jobExecutionsRolloutConfig"], slower);
    assert_eq!(described["job"]["status"], "IN_PROGRESS");
}
