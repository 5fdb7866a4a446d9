"""The Device Shadow service through the AWS IoT Device SDK v2's own shadow clients."""
import datetime
import queue
import time

import awsiot
from awscrt import mqtt, mqtt_request_response
from awsiot import iotshadow, mqtt5_client_builder, mqtt_connection_builder
import pytest

WAIT = 10
QOS1 = mqtt.QoS.AT_LEAST_ONCE


def connection(gateway, name):
    cert, key = gateway.device(name)
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=gateway.port, cert_filepath=cert, pri_key_filepath=key,
        ca_filepath=gateway.ca, client_id=name, clean_session=True, keep_alive_secs=30,
    )
    conn.connect().result(WAIT)
    return conn


def next_event(events):
    event = events.get(timeout=WAIT)
    # The v1 client hands None to the callback when a payload does not parse
    # into its model (e.g. a timestamp in milliseconds).
    assert event is not None, "the SDK could not parse the payload"
    return event


def assert_epoch_seconds(value):
    assert isinstance(value, int) and abs(value - time.time()) < 600, value


def assert_recent(when):
    assert isinstance(when, datetime.datetime)
    assert abs(when.timestamp() - time.time()) < 600, when


def test_classic_shadow_with_v1_client(gateway):
    thing = "sdk-shadow-1"
    conn = connection(gateway, thing)
    shadow = iotshadow.IotShadowClient(conn)

    got = {}
    for key, subscribe, request in [
        ("get/accepted", shadow.subscribe_to_get_shadow_accepted, iotshadow.GetShadowSubscriptionRequest),
        ("get/rejected", shadow.subscribe_to_get_shadow_rejected, iotshadow.GetShadowSubscriptionRequest),
        ("update/accepted", shadow.subscribe_to_update_shadow_accepted, iotshadow.UpdateShadowSubscriptionRequest),
        ("update/rejected", shadow.subscribe_to_update_shadow_rejected, iotshadow.UpdateShadowSubscriptionRequest),
        ("update/delta", shadow.subscribe_to_shadow_delta_updated_events,
         iotshadow.ShadowDeltaUpdatedSubscriptionRequest),
        ("update/documents", shadow.subscribe_to_shadow_updated_events, iotshadow.ShadowUpdatedSubscriptionRequest),
        ("delete/accepted", shadow.subscribe_to_delete_shadow_accepted, iotshadow.DeleteShadowSubscriptionRequest),
        ("delete/rejected", shadow.subscribe_to_delete_shadow_rejected, iotshadow.DeleteShadowSubscriptionRequest),
    ]:
        got[key] = queue.Queue()
        future, topic = subscribe(request(thing_name=thing), QOS1, got[key].put)
        assert topic == f"$aws/things/{thing}/shadow/{key}"
        assert future.result(WAIT) == QOS1

    def get(token):
        shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing, client_token=token), QOS1).result(WAIT)

    def update(token, version=None, **state):
        request = iotshadow.UpdateShadowRequest(
            thing_name=thing, client_token=token, version=version, state=iotshadow.ShadowState(**state))
        shadow.publish_update_shadow(request, QOS1).result(WAIT)

    def accepted_update(token, version):
        accepted = next_event(got["update/accepted"])
        assert (accepted.version, accepted.client_token) == (version, token)
        assert_recent(accepted.timestamp)
        documents = next_event(got["update/documents"])
        assert documents.current.version == version
        return accepted, documents

    get("get-1")
    missing = next_event(got["get/rejected"])
    assert (missing.code, missing.message) == (404, f"No shadow exists with name: '{thing}'")
    assert missing.client_token == "get-1"

    update("upd-1", reported={"color": "green"})
    accepted, documents = accepted_update("upd-1", 1)
    assert accepted.state.reported == {"color": "green"}
    assert_epoch_seconds(accepted.metadata.reported["color"]["timestamp"])
    assert documents.previous is None
    assert documents.current.state.reported == {"color": "green"}

    update("upd-2", desired={"color": "red"})
    delta = next_event(got["update/delta"])
    # The first delta is this one: the reported-only creation published none.
    assert (delta.state, delta.version, delta.client_token) == ({"color": "red"}, 2, "upd-2")
    assert_epoch_seconds(delta.metadata["color"]["timestamp"])
    accepted, documents = accepted_update("upd-2", 2)
    assert accepted.state.desired == {"color": "red"}
    assert documents.previous.version == 1
    assert documents.current.state.desired == {"color": "red"}
    assert documents.current.state.reported == {"color": "green"}

    update("upd-3", reported={"color": "red"})
    accepted_update("upd-3", 3)

    get("get-2")
    doc = next_event(got["get/accepted"])
    assert doc.client_token == "get-2"
    assert doc.version == 3
    assert doc.state.desired == doc.state.reported == {"color": "red"}
    assert doc.state.delta is None
    assert_epoch_seconds(doc.metadata.reported["color"]["timestamp"])
    assert_epoch_seconds(doc.metadata.desired["color"]["timestamp"])
    assert_recent(doc.timestamp)
    # In sync since version 3: that update published no delta before this answer.
    assert got["update/delta"].empty()

    update("upd-stale", version=1, desired={"color": "blue"})
    conflict = next_event(got["update/rejected"])
    assert (conflict.code, conflict.message, conflict.client_token) == (409, "Version conflict", "upd-stale")

    shadow.publish_delete_shadow(
        iotshadow.DeleteShadowRequest(thing_name=thing, client_token="del-1"), QOS1).result(WAIT)
    deleted = next_event(got["delete/accepted"])
    assert (deleted.version, deleted.client_token) == (3, "del-1")
    assert_recent(deleted.timestamp)

    get("get-3")
    missing = next_event(got["get/rejected"])
    assert (missing.code, missing.client_token) == (404, "get-3")

    # A deleted shadow keeps its version: the next update continues from it.
    update("upd-4", reported={"color": "red"})
    accepted, _ = accepted_update("upd-4", 4)
    assert accepted.state.reported == {"color": "red"}

    assert got["get/accepted"].empty() and got["delete/rejected"].empty() and got["update/rejected"].empty()
    conn.disconnect().result(WAIT)


def mqtt5_client(gateway, name):
    cert, key = gateway.device(name)
    connected, stopped = queue.Queue(), queue.Queue()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="localhost", port=gateway.port, cert_filepath=cert, pri_key_filepath=key,
        ca_filepath=gateway.ca, client_id=name,
        on_lifecycle_connection_success=lambda data: connected.put(None),
        on_lifecycle_connection_failure=lambda data: connected.put(data.exception),
        on_lifecycle_stopped=lambda data: stopped.put(None),
    )
    client.start()
    assert connected.get(timeout=WAIT) is None
    return client, stopped


def open_stream(create, request):
    """Opens a V2 stream; returns the stream (keep it referenced) and its events."""
    events, status = queue.Queue(), queue.Queue()
    stream = create(request, awsiot.ServiceStreamOptions(
        incoming_event_listener=events.put,
        subscription_status_listener=status.put,
        deserialization_failure_listener=lambda failure: events.put(failure.payload),
    ))
    stream.open()
    established = status.get(timeout=WAIT)
    assert established.type == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED
    return stream, events


def test_named_shadow_with_v2_client_over_mqtt5(gateway):
    thing, name = "sdk-shadow-2", "cfg"
    client, stopped = mqtt5_client(gateway, thing)
    shadow = iotshadow.IotShadowClientV2(client, mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=2, max_streaming_subscriptions=2, operation_timeout_in_seconds=WAIT))

    def get():
        return shadow.get_named_shadow(iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name=name))

    # The V2 client surfaces a /rejected answer as an exception carrying the error document.
    with pytest.raises(awsiot.V2ServiceException) as missing:
        get().result(WAIT)
    assert isinstance(missing.value.modeled_error, iotshadow.V2ErrorResponse)
    assert missing.value.modeled_error.code == 404
    assert missing.value.modeled_error.message == f"No shadow exists with name: '{name}'"

    delta_stream, deltas = open_stream(
        shadow.create_named_shadow_delta_updated_stream,
        iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(thing_name=thing, shadow_name=name))
    updated_stream, updates = open_stream(
        shadow.create_named_shadow_updated_stream,
        iotshadow.NamedShadowUpdatedSubscriptionRequest(thing_name=thing, shadow_name=name))

    def update(**state):
        return shadow.update_named_shadow(iotshadow.UpdateNamedShadowRequest(
            thing_name=thing, shadow_name=name, state=iotshadow.ShadowState(**state))).result(WAIT)

    accepted = update(desired={"temp": 21})
    assert accepted.version == 1
    assert accepted.state.desired == {"temp": 21}
    delta = deltas.get(timeout=WAIT)
    assert isinstance(delta, iotshadow.ShadowDeltaUpdatedEvent), delta
    assert (delta.state, delta.version) == ({"temp": 21}, 1)
    documents = updates.get(timeout=WAIT)
    assert isinstance(documents, iotshadow.ShadowUpdatedEvent), documents
    assert documents.previous is None
    assert documents.current.version == 1
    assert documents.current.state.desired == {"temp": 21}

    doc = get().result(WAIT)
    assert doc.version == 1
    assert doc.state.desired == {"temp": 21}
    assert doc.state.delta == {"temp": 21}
    assert doc.state.reported is None

    accepted = update(reported={"temp": 21})
    assert accepted.version == 2
    documents = updates.get(timeout=WAIT)
    assert (documents.previous.version, documents.current.version) == (1, 2)
    assert documents.current.state.reported == {"temp": 21}

    deleted = shadow.delete_named_shadow(
        iotshadow.DeleteNamedShadowRequest(thing_name=thing, shadow_name=name)).result(WAIT)
    assert deleted.version == 2
    with pytest.raises(awsiot.V2ServiceException) as missing:
        get().result(WAIT)
    assert missing.value.modeled_error.code == 404
    # Back in sync at version 2, so version 1's delta was the only one.
    assert deltas.empty()

    client.stop()
    stopped.get(timeout=WAIT)
