"""AWS IoT Jobs end to end with unchanged clients: boto3 makes a job for two
things; on each device the AWS IoT Device SDK v2's `IotJobsClient` is told of
it, starts the next pending execution, reports progress and succeeds; boto3
then sees both executions SUCCEEDED and the job COMPLETED."""
import json
import queue

from awscrt import mqtt
from awsiot import iotjobs

from conftest import operator_client, sdk_connect, sdk_subscribed

WAIT = 10
QOS1 = mqtt.QoS.AT_LEAST_ONCE
JOB = "sdk-update-1"
DOCUMENT = {"operation": "update", "version": "2"}


class Device:
    """One device's jobs client, subscribed as the SDK's jobs sample does."""

    def __init__(self, gateway, thing):
        self.thing = thing
        self.conn = sdk_connect(gateway, thing, *gateway.device(thing))
        self.jobs = iotjobs.IotJobsClient(self.conn)
        self.next = queue.Queue()
        future, _ = self.jobs.subscribe_to_next_job_execution_changed_events(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS1, self.next.put)
        future.result(WAIT)
        self.started = sdk_subscribed(
            (self.jobs.subscribe_to_start_next_pending_job_execution_accepted,
             self.jobs.subscribe_to_start_next_pending_job_execution_rejected),
            iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), QOS1)
        self.updated = sdk_subscribed(
            (self.jobs.subscribe_to_update_job_execution_accepted,
             self.jobs.subscribe_to_update_job_execution_rejected),
            iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id=JOB), QOS1)

    def start_next(self, details):
        self.jobs.publish_start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(
                thing_name=self.thing, status_details=details), QOS1).result(WAIT)
        accepted, rejected = self.started
        started = accepted.get(timeout=WAIT)
        assert rejected.empty()
        return started.execution

    def update(self, status, details, expected_version):
        self.jobs.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
            thing_name=self.thing, job_id=JOB, status=status, status_details=details,
            expected_version=expected_version, include_job_execution_state=True), QOS1).result(WAIT)
        accepted, rejected = self.updated
        updated = accepted.get(timeout=WAIT)
        assert rejected.empty()
        return updated.execution_state


def test_boto3_makes_a_job_and_the_device_sdk_runs_it_on_two_things(gateway):
    iot = operator_client(gateway, "iot")
    things = ["sdk-lamp-1", "sdk-lamp-2"]
    arns = [iot.create_thing(thingName=t)["thingArn"] for t in things]
    devices = [Device(gateway, t) for t in things]

    made = iot.create_job(jobId=JOB, targets=arns, document=json.dumps(DOCUMENT),
                          description="firmware 2")
    assert made["jobArn"].endswith(f":job/{JOB}")

    for d in devices:
        told = d.next.get(timeout=WAIT).execution
        assert (told.job_id, told.status, told.job_document) == (JOB, "QUEUED", DOCUMENT)

        started = d.start_next({"step": "downloading"})
        assert (started.job_id, started.status, started.version_number) == (JOB, "IN_PROGRESS", 2)
        assert started.status_details == {"step": "downloading"}
        assert started.started_at is not None

        state = d.update("IN_PROGRESS", {"step": "installing"}, 2)
        assert (state.status, state.version_number) == ("IN_PROGRESS", 3)
        state = d.update("SUCCEEDED", {"step": "done"}, 3)
        assert state.status == "SUCCEEDED"

        # Nothing is pending any more: notify-next carries no execution.
        assert d.next.get(timeout=WAIT).execution is None
        d.conn.disconnect().result(WAIT)

    executions = iot.list_job_executions_for_job(jobId=JOB)["executionSummaries"]
    assert sorted(e["thingArn"] for e in executions) == sorted(arns)
    assert {e["jobExecutionSummary"]["status"] for e in executions} == {"SUCCEEDED"}
    job = iot.describe_job(jobId=JOB)["job"]
    assert job["status"] == "COMPLETED"
    assert job["jobProcessDetails"]["numberOfSucceededThings"] == 2
    execution = iot.describe_job_execution(jobId=JOB, thingName=things[0])["execution"]
    assert execution["statusDetails"]["detailsMap"] == {"step": "done"}
    assert json.loads(iot.get_job_document(jobId=JOB)["document"]) == DOCUMENT
