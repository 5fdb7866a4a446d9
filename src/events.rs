//! Events on `$aws/events/...`: lifecycle events (spec aws-iot-auth.md
//! §4.1), made from what a session decided, and registry events for things
//! and thing types (spec aws-iot-device-services.md §1.4), made from the
//! registry's changes when UpdateEventConfigurations enabled their type;
//! their documents, and the service that publishes them as the gateway.
//!
//! The service is an internal client of the router with its own task and a
//! bounded queue. A connection hands it `connected` and waits until it is
//! routed before the connection reads anything more, so that the event
//! reaches every subscriber before the client's first message;
//! `disconnected` is handed over once the connection's last message has
//! been routed, so it comes after it.

use crate::config;
use crate::metrics::{DropReason, EventKind, Metrics};
use crate::policy::compile::ArnHead;
use crate::policy::versions::{PolicyChange, Versions};
use crate::registry::{Change, Operation, Registry};
use crate::router::{Message, Router};
use serde_json::{Map, Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events waiting to be published.
const QUEUE: usize = 4096;

/// One connection, as its events describe it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client id.
    pub client_id: Arc<str>,
    /// Unique to this connection (`sessionIdentifier`).
    pub session: String,
    /// The principal's id (`principalIdentifier`): its certificate id, or
    /// the operator whose signature admitted it.
    pub principal: Option<Arc<str>>,
    /// The thing the connection is associated with (`thingName`).
    pub thing: Option<String>,
    /// The client's address (`ipAddress`).
    pub ip: IpAddr,
    /// Increases with every connection of a client id; a connection's
    /// `connected` and `disconnected` share it (`versionNumber`).
    pub version: u64,
}

/// One lifecycle event.
#[derive(Debug, Clone)]
pub enum Event {
    /// The session reached CONNACK.
    Connected(Connection),
    /// The connection ended: AWS's `disconnectReason`, and whether the
    /// client ended it.
    Disconnected(Connection, &'static str, bool),
    /// A SUBSCRIBE's granted filters.
    Subscribed(Connection, Vec<String>),
    /// An UNSUBSCRIBE's filters.
    Unsubscribed(Connection, Vec<String>),
}

impl Event {
    /// Its topic and JSON document at `now_ms` (milliseconds since the
    /// epoch); `None` for a client id that cannot be a topic level (one
    /// with `+`, `#` or `/`: AWS publishes no events for those).
    pub fn document(&self, now_ms: u64) -> Option<(String, Vec<u8>)> {
        let (c, kind) = match self {
            Event::Connected(c) => (c, "connected"),
            Event::Disconnected(c, ..) => (c, "disconnected"),
            Event::Subscribed(c, _) => (c, "subscribed"),
            Event::Unsubscribed(c, _) => (c, "unsubscribed"),
        };
        if c.client_id.contains(['+', '#', '/']) || c.client_id.is_empty() {
            return None;
        }
        let mut doc = Map::new();
        doc.insert("clientId".into(), json!(&*c.client_id));
        if let Some(thing) = &c.thing {
            doc.insert("thingName".into(), json!(thing));
        }
        doc.insert("timestamp".into(), json!(now_ms));
        doc.insert("eventType".into(), json!(kind));
        doc.insert("sessionIdentifier".into(), json!(c.session));
        if let Some(p) = &c.principal {
            doc.insert("principalIdentifier".into(), json!(&**p));
        }
        match self {
            Event::Connected(_) => {
                doc.insert("ipAddress".into(), json!(c.ip.to_canonical().to_string()));
                doc.insert("versionNumber".into(), json!(c.version));
            }
            Event::Disconnected(_, reason, by_client) => {
                doc.insert("clientInitiatedDisconnect".into(), json!(by_client));
                doc.insert("disconnectReason".into(), json!(reason));
                doc.insert("versionNumber".into(), json!(c.version));
            }
            Event::Subscribed(_, topics) | Event::Unsubscribed(_, topics) => {
                doc.insert("topics".into(), json!(topics));
            }
        }
        // The family's topic level is its metric label.
        let family = self.kind().label();
        let topic = format!("$aws/events/{family}/{kind}/{}", c.client_id);
        Some((topic, Value::Object(doc).to_string().into_bytes()))
    }

    /// Its family, for the topic and the metrics.
    fn kind(&self) -> EventKind {
        match self {
            Event::Connected(_) | Event::Disconnected(..) => EventKind::Presence,
            Event::Subscribed(..) | Event::Unsubscribed(..) => EventKind::Subscriptions,
        }
    }
}

/// The registry event type that enables events of a change, and its kind.
pub fn event_type(change: &Change) -> (&'static str, EventKind) {
    match change {
        Change::Thing(..) => ("THING", EventKind::Thing),
        Change::ThingType(..) => ("THING_TYPE", EventKind::ThingType),
        Change::TypeAssociation(..) => ("THING_TYPE_ASSOCIATION", EventKind::ThingTypeAssociation),
        Change::Certificate(..) => ("CERTIFICATE", EventKind::Certificate),
        Change::ThingGroup(..) => ("THING_GROUP", EventKind::ThingGroup),
        Change::GroupMembership(..) => ("THING_GROUP_MEMBERSHIP", EventKind::ThingGroupMembership),
        Change::GroupHierarchy(..) => ("THING_GROUP_HIERARCHY", EventKind::ThingGroupHierarchy),
    }
}

fn added(yes: bool) -> &'static str {
    if yes { "added" } else { "removed" }
}

fn operation(op: Operation) -> &'static str {
    match op {
        Operation::Created => "created",
        Operation::Updated => "updated",
        Operation::Deleted => "deleted",
    }
}

/// A policy change's topic and document at `now_ms`. AWS names a `POLICY`
/// event type but documents no topic or fields for it: these follow its
/// registry events (`$aws/events/<resource>/<name>/<operation>`,
/// `eventType`, `eventId`, `operation`, `accountId`).
pub fn policy_document(
    change: &PolicyChange,
    head: &ArnHead,
    event_id: &str,
    now_ms: u64,
) -> (String, Vec<u8>) {
    let op = operation(change.operation);
    let doc = json!({
        "eventType": "POLICY_EVENT",
        "eventId": event_id,
        "timestamp": now_ms,
        "operation": op.to_ascii_uppercase(),
        "accountId": head.account,
        "policyName": change.name,
        "defaultVersionId": change.default_version.to_string(),
    });
    (
        format!("$aws/events/policy/{}/{op}", change.name),
        doc.to_string().into_bytes(),
    )
}

/// A registry change's topic and document at `now_ms`, with AWS's fields.
pub fn registry_document(
    change: &Change,
    head: &ArnHead,
    event_id: &str,
    now_ms: u64,
) -> (String, Vec<u8>) {
    let (topic, doc) = match change {
        Change::Thing(op, t) => (
            format!("$aws/events/thing/{}/{}", t.name, operation(*op)),
            json!({
                "eventType": "THING_EVENT",
                "eventId": event_id,
                "timestamp": now_ms,
                "operation": operation(*op).to_ascii_uppercase(),
                "accountId": head.account,
                "thingId": t.id,
                "thingName": t.name,
                "versionNumber": t.version,
                "thingTypeName": t.thing_type,
                "attributes": t.attributes,
            }),
        ),
        Change::ThingType(op, t) => (
            format!("$aws/events/thingType/{}/{}", t.name, operation(*op)),
            json!({
                "eventType": "THING_TYPE_EVENT",
                "eventId": event_id,
                "timestamp": now_ms,
                "operation": operation(*op).to_ascii_uppercase(),
                "accountId": head.account,
                "thingTypeId": t.id,
                "thingTypeName": t.name,
                "isDeprecated": t.deprecated_ms.is_some(),
                "deprecationDate": t.deprecated_ms.map(|ms| ms / 1000),
                "searchableAttributes": t.searchable_attributes,
                "description": t.description,
            }),
        ),
        Change::TypeAssociation(yes, t, ty) => {
            let op = added(*yes);
            (
                format!(
                    "$aws/events/thingTypeAssociation/thing/{}/thingType/{ty}/{op}",
                    t.name
                ),
                json!({
                    "eventId": event_id,
                    "eventType": "THING_TYPE_ASSOCIATION_EVENT",
                    "operation": op.to_ascii_uppercase(),
                    "thingId": t.id,
                    "thingName": t.name,
                    "thingTypeName": ty,
                    "timestamp": now_ms,
                }),
            )
        }
        Change::ThingGroup(op, v) => {
            let g = &v.group;
            let parent = v.ancestors.last();
            (
                format!("$aws/events/thingGroup/{}/{}", g.name, operation(*op)),
                json!({
                    "eventType": "THING_GROUP_EVENT",
                    "eventId": event_id,
                    "timestamp": now_ms,
                    "operation": operation(*op).to_ascii_uppercase(),
                    "accountId": head.account,
                    "thingGroupId": g.id,
                    "thingGroupName": g.name,
                    "versionNumber": g.version,
                    "parentGroupName": parent.map(|(n, _)| n),
                    "parentGroupId": parent.map(|(_, id)| id),
                    "description": g.description,
                    "rootToParentThingGroups": v.ancestors.iter().map(|(n, id)| json!({
                        "groupArn": head.arn("thinggroup", n),
                        "groupId": id,
                    })).collect::<Vec<_>>(),
                    "attributes": g.attributes,
                    "dynamicGroupMappingId": null,
                }),
            )
        }
        Change::GroupMembership(yes, g, t) => (
            format!(
                "$aws/events/thingGroupMembership/thingGroup/{}/thing/{}/{}",
                g.name,
                t.name,
                added(*yes)
            ),
            json!({
                "eventType": "THING_GROUP_MEMBERSHIP_EVENT",
                "eventId": event_id,
                "timestamp": now_ms,
                "operation": added(*yes).to_ascii_uppercase(),
                "accountId": head.account,
                "groupArn": head.arn("thinggroup", &g.name),
                "groupId": g.id,
                "thingArn": head.arn("thing", &t.name),
                "thingId": t.id,
                // One id per (group, thing) relation: the same whenever
                // the thing joins that group.
                "membershipId": crate::registry::identity::hex(
                    &ring::digest::digest(
                        &ring::digest::SHA256,
                        format!("{}/{}", g.id, t.id).as_bytes(),
                    )
                    .as_ref()[..16],
                ),
            }),
        ),
        Change::GroupHierarchy(yes, parent, child) => (
            format!(
                "$aws/events/thingGroupHierarchy/thingGroup/{}/childThingGroup/{}/{}",
                parent.name,
                child.name,
                added(*yes)
            ),
            json!({
                "eventType": "THING_GROUP_HIERARCHY_EVENT",
                "eventId": event_id,
                "timestamp": now_ms,
                "operation": added(*yes).to_ascii_uppercase(),
                "accountId": head.account,
                "thingGroupId": parent.id,
                "thingGroupName": parent.name,
                "childGroupId": child.id,
                "childGroupName": child.name,
            }),
        ),
        // AWS names a CERTIFICATE event type but documents no topic or
        // fields for it: these follow its registry events, under the
        // `certificates` level of its JITR event.
        Change::Certificate(op, c) => (
            format!("$aws/events/certificates/{}/{}", c.id, operation(*op)),
            json!({
                "eventType": "CERTIFICATE_EVENT",
                "eventId": event_id,
                "timestamp": now_ms,
                "operation": operation(*op).to_ascii_uppercase(),
                "accountId": head.account,
                "certificateId": c.id,
                "certificateStatus": c.status.name(),
                "caCertificateId": c.ca_id,
                "versionNumber": c.version,
            }),
        ),
    };
    (topic, doc.to_string().into_bytes())
}

/// The events service's handle.
#[derive(Debug)]
pub struct Events {
    tx: mpsc::Sender<(Event, Option<oneshot::Sender<()>>)>,
    config: config::Events,
    metrics: Arc<Metrics>,
    /// Random at start: with a connection's number, a session identifier
    /// no other run of the gateway gives.
    nonce: u64,
}

/// Where registry events come from.
#[derive(Debug)]
pub struct Sources {
    /// Things, thing types and certificates.
    pub registry: Arc<Registry>,
    /// Policies.
    pub policies: Arc<Versions>,
}

impl Events {
    /// Starts the service; it stops at `shutdown` after publishing what
    /// was queued.
    pub fn start(
        router: Arc<Router>,
        Sources { registry, policies }: Sources,
        metrics: Arc<Metrics>,
        config: config::Events,
        head: ArnHead,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Self> {
        use ring::rand::SecureRandom;
        let (tx, rx) = mpsc::channel(QUEUE);
        let service = Service {
            changes: registry.changes(),
            policy_changes: policies.changes(),
            _policies: policies,
            registry,
            router,
            metrics: metrics.clone(),
            head,
        };
        tracker.spawn(service.run(rx, shutdown));
        let mut nonce = [0u8; 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
        Arc::new(Self {
            tx,
            config,
            metrics,
            nonce: u64::from_be_bytes(nonce),
        })
    }

    /// Whether `connected` and `disconnected` are published.
    pub fn presence(&self) -> bool {
        self.config.presence
    }

    /// Whether `subscribed` and `unsubscribed` are published.
    pub fn subscriptions(&self) -> bool {
        self.config.subscriptions
    }

    /// A session identifier for connection number `conn`.
    pub fn session_identifier(&self, conn: u64) -> String {
        format!("{:016x}{conn:016x}", self.nonce)
    }

    /// Publishes `event` and returns once it is routed (or the service has
    /// stopped): what the caller routes afterwards comes after it.
    pub async fn announce(&self, event: Event) {
        let (done, routed) = oneshot::channel();
        if self.tx.send((event, Some(done))).await.is_ok() {
            let _ = routed.await;
        }
    }

    /// Queues `event` for publication, waiting for room.
    pub async fn send(&self, event: Event) {
        let _ = self.tx.send((event, None)).await;
    }

    /// Queues `event` if there is room now; else it is counted as dropped.
    pub fn post(&self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send((event, None)) {
            self.metrics.count_drop(DropReason::EventsBusy);
        }
    }
}

/// The service's task: lifecycle events from connections, registry
/// events from the registry's changes.
struct Service {
    router: Arc<Router>,
    registry: Arc<Registry>,
    changes: broadcast::Receiver<Change>,
    policy_changes: broadcast::Receiver<PolicyChange>,
    /// Held so that the senders of both feeds live as long as the
    /// service: neither receiver ever finds its feed closed.
    _policies: Arc<Versions>,
    metrics: Arc<Metrics>,
    head: ArnHead,
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<(Event, Option<oneshot::Sender<()>>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                change = self.changes.recv() => {
                    if let Some(change) = self.received(change) {
                        let (event_type, kind) = event_type(&change);
                        self.registry_event(event_type, kind, |head, id, now| {
                            registry_document(&change, head, id, now)
                        });
                    }
                    continue;
                }
                change = self.policy_changes.recv() => {
                    if let Some(change) = self.received(change) {
                        self.registry_event("POLICY", EventKind::Policy, |head, id, now| {
                            policy_document(&change, head, id, now)
                        });
                    }
                    continue;
                }
                () = shutdown.cancelled() => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some((event, done)) = next else { return };
            if let Some((topic, payload)) = event.document(crate::store::now_ms()) {
                self.publish(event.kind(), topic, payload);
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }

    /// A change, or none when changes were missed (counted) or their
    /// source is gone.
    fn received<T>(&self, change: Result<T, broadcast::error::RecvError>) -> Option<T> {
        match change {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.metrics.count_drops(DropReason::EventsBusy, missed);
                None
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Publishes the event `document` makes, if UpdateEventConfigurations
    /// enabled `event_type`.
    fn registry_event(
        &self,
        event_type: &str,
        kind: EventKind,
        document: impl FnOnce(&ArnHead, &str, u64) -> (String, Vec<u8>),
    ) {
        if self.registry.event_enabled(event_type) {
            let id = crate::registry::identity::uuid_v4();
            let (topic, payload) = document(&self.head, &id, crate::store::now_ms());
            self.publish(kind, topic, payload);
        }
    }

    /// Routes one event as the gateway, at QoS 1, like AWS's.
    fn publish(&self, kind: EventKind, topic: String, payload: Vec<u8>) {
        let msg = Message::from_gateway(topic, payload);
        match self.router.publish(&msg, Instant::now()) {
            Ok(_) => self.metrics.event_published(kind),
            Err(e) => tracing::warn!(topic = %msg.topic, error = %e, "event not published"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(client_id: &str) -> Connection {
        Connection {
            client_id: client_id.into(),
            session: "00000000000000010000000000000007".into(),
            principal: Some("3f2a".into()),
            thing: Some("lamp-1".into()),
            ip: "::ffff:192.0.2.10".parse().expect("ip"),
            version: 7,
        }
    }

    fn doc(e: &Event) -> (String, Value) {
        let (topic, payload) = e.document(1_573_002_230_757).expect("an event");
        (topic, serde_json::from_slice(&payload).expect("json"))
    }

    #[test]
    fn documents_have_aws_fields_and_topics() {
        let c = connection("lamp-1");
        let (topic, d) = doc(&Event::Connected(c.clone()));
        assert_eq!(topic, "$aws/events/presence/connected/lamp-1");
        assert_eq!(
            d,
            json!({"clientId": "lamp-1", "thingName": "lamp-1", "timestamp": 1_573_002_230_757u64,
                   "eventType": "connected", "sessionIdentifier": "00000000000000010000000000000007",
                   "principalIdentifier": "3f2a", "ipAddress": "192.0.2.10", "versionNumber": 7})
        );
        let (topic, d) = doc(&Event::Disconnected(
            c.clone(),
            "CLIENT_INITIATED_DISCONNECT",
            true,
        ));
        assert_eq!(topic, "$aws/events/presence/disconnected/lamp-1");
        assert_eq!(d["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
        assert_eq!(d["clientInitiatedDisconnect"], true);
        assert_eq!(d["versionNumber"], 7);
        assert!(
            d.get("ipAddress").is_none(),
            "only connected has the address"
        );
        let (topic, d) = doc(&Event::Subscribed(c.clone(), vec!["a/+".into()]));
        assert_eq!(topic, "$aws/events/subscriptions/subscribed/lamp-1");
        assert_eq!(d["topics"], json!(["a/+"]));
        assert!(d.get("versionNumber").is_none());
        let (topic, _) = doc(&Event::Unsubscribed(c, vec!["a/+".into()]));
        assert_eq!(topic, "$aws/events/subscriptions/unsubscribed/lamp-1");
    }

    #[test]
    fn client_ids_that_are_not_topic_levels_have_no_events() {
        for id in ["a+b", "a#", "a/b", ""] {
            assert!(
                Event::Connected(connection(id)).document(0).is_none(),
                "{id}"
            );
        }
    }
}
