//! Every metric the gateway exports, by name, with its description.
//!
//! Nothing else spells a metric name. Each [`Metrics`] owns its own
//! Prometheus recorder instead of the process-global one, so several
//! gateways (as in the tests) never mix their figures, and every handle is
//! registered once up front: the hot path increments a resolved counter and
//! never looks a name up.

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::fmt;

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant,)+ }
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];
            /// The Prometheus label value.
            pub fn label(self) -> &'static str {
                match self { $(Self::$variant => $label,)+ }
            }
        }
    };
}

label_enum!(
    /// Why a message was not delivered to a subscriber.
    DropReason {
        /// A QoS 0 message met a full mailbox.
        QueueFull => "queue_full",
        /// A persistent session already holds its maximum of stored messages.
        SessionFull => "session_full",
        /// The message expired before it could be delivered.
        Expired => "expired",
        /// The encoded message is larger than the client's Maximum Packet Size.
        TooLargeForClient => "too_large_for_client",
        /// A slow consumer was disconnected with messages still queued.
        SlowConsumer => "slow_consumer",
        /// A QoS 0 message met a full rules engine queue.
        RulesBusy => "rules_busy",
        /// A QoS 0 shadow request met a full shadow service queue.
        ShadowsBusy => "shadows_busy",
        /// A QoS 0 provisioning request met a full provisioning service queue.
        ProvisioningBusy => "provisioning_busy",
        /// A QoS 0 jobs request met a full jobs service queue.
        JobsBusy => "jobs_busy",
        /// A shadow answer could not be published (the store stayed busy).
        ShadowAnswer => "shadow_answer",
        /// A jobs notification or event could not be published.
        JobsNotice => "jobs_notice",
        /// A Basic Ingest message named a rule that does not exist or is disabled.
        RuleNotFound => "rule_not_found",
        /// A subscription or registry event met a full events queue.
        EventsBusy => "events_busy",
    }
);

label_enum!(
    /// Why a connection failed before its session started.
    HandshakeFailure {
        /// The handshake plus CONNECT deadline passed.
        Timeout => "timeout",
        /// The client sent no certificate.
        NoCertificate => "no_certificate",
        /// The client certificate does not chain to a trusted CA.
        UnknownCa => "unknown_ca",
        /// The client certificate is expired or not yet valid.
        Expired => "expired",
        /// The client certificate is on a configured revocation list.
        Revoked => "revoked",
        /// The client certificate is otherwise unacceptable.
        BadCertificate => "bad_certificate",
        /// Any other TLS failure (versions, suites, ALPN, alerts).
        Tls => "tls",
        /// The socket failed or closed.
        Io => "io",
        /// The first packet was not a valid CONNECT.
        BadConnect => "bad_connect",
        /// CONNECT was refused (identifier, version, limits).
        Refused => "refused",
        /// The connection limit was reached.
        ConnectionLimit => "connection_limit",
        /// An HTTP request on an MQTT port that is no WebSocket upgrade the
        /// gateway serves.
        BadUpgrade => "bad_upgrade",
        /// A WebSocket upgrade whose SigV4 signature is not good: unknown
        /// key, wrong signature, expired.
        BadSignature => "bad_signature",
        /// A connection to a PROXY protocol listener from an address not
        /// among its trusted proxies.
        UntrustedProxy => "untrusted_proxy",
        /// A PROXY protocol header missing or malformed.
        BadProxyHeader => "bad_proxy_header",
    }
);

label_enum!(
    /// What a custom authorizer decided about a client.
    AuthorizerOutcome {
        /// It authenticated the client.
        Allowed => "allowed",
        /// It said `isAuthenticated: false`.
        NotAuthenticated => "not_authenticated",
        /// Its endpoint failed: down, late, an error, an invalid answer.
        Failed => "failed",
        /// The token's signature did not verify (the endpoint was not asked).
        BadSignature => "bad_signature",
        /// The client named no authorizer there is, and there is no default.
        Unknown => "unknown",
        /// The authorizer is INACTIVE.
        Inactive => "inactive",
    }
);

label_enum!(
    /// What a connection speaks once its transport is up.
    Transport {
        /// MQTT straight over TLS (or the plaintext listener).
        Mqtt => "mqtt",
        /// MQTT over WebSockets.
        WebSocket => "websocket",
        /// The device HTTPS endpoint.
        Https => "https",
    }
);

label_enum!(
    /// Which limit refused an operation.
    LimitKind {
        /// Payload larger than `limits.max_payload_bytes`.
        Payload => "payload",
        /// Packet larger than `limits.max_packet_bytes`.
        Packet => "packet",
        /// Topic longer than `limits.max_topic_bytes`.
        TopicLength => "topic_length",
        /// Topic with more slashes than `limits.max_topic_slashes`.
        TopicDepth => "topic_depth",
        /// More filters in one SUBSCRIBE than allowed.
        FiltersPerSubscribe => "filters_per_subscribe",
        /// More subscriptions on a session than allowed.
        Subscriptions => "subscriptions",
        /// More unacknowledged inbound QoS 1/2 messages than the receive maximum.
        Inflight => "inflight",
        /// QoS above `limits.max_qos`.
        Qos => "qos",
        /// Client id longer than allowed.
        ClientId => "client_id",
        /// More publishes a second than `limits.publishes_per_second`.
        PublishRate => "publish_rate",
        /// More payload bytes a second than `limits.publish_bytes_per_second`.
        ByteRate => "byte_rate",
        /// More subscriptions a second than `limits.subscriptions_per_second`.
        SubscribeRate => "subscribe_rate",
        /// A new persistent session past `limits.max_sessions`.
        Sessions => "sessions",
        /// More CONNECT attempts a second from one client id than allowed.
        ConnectRate => "connect_rate",
        /// More new connections a second from one source address than allowed.
        ConnectionRate => "connection_rate",
        /// More retained messages than `limits.max_retained_messages` (in all
        /// or for one certificate).
        RetainedMessages => "retained_messages",
        /// More retained bytes than `limits.max_retained_bytes` (in all or
        /// for one certificate).
        RetainedBytes => "retained_bytes",
    }
);

label_enum!(
    /// Which policy action refused an operation.
    AuthzAction {
        /// `iot:Connect` (or the will's `iot:Publish`).
        Connect => "connect",
        /// `iot:Publish`.
        Publish => "publish",
        /// `iot:RetainPublish`.
        RetainPublish => "retainpublish",
        /// `iot:Subscribe`.
        Subscribe => "subscribe",
        /// `iot:Receive`.
        Receive => "receive",
        /// `iot:GetThingShadow` (HTTPS).
        GetThingShadow => "getthingshadow",
        /// `iot:UpdateThingShadow` (HTTPS).
        UpdateThingShadow => "updatethingshadow",
        /// `iot:DeleteThingShadow` (HTTPS).
        DeleteThingShadow => "deletethingshadow",
        /// `iot:ListNamedShadowsForThing` (HTTPS).
        ListNamedShadowsForThing => "listnamedshadowsforthing",
        /// `iot:GetRetainedMessage` (HTTPS).
        GetRetainedMessage => "getretainedmessage",
        /// `iot:ListRetainedMessages` (HTTPS).
        ListRetainedMessages => "listretainedmessages",
        /// `iot:DescribeJobExecution` (HTTPS).
        DescribeJobExecution => "describejobexecution",
        /// `iot:GetPendingJobExecutions` (HTTPS).
        GetPendingJobExecutions => "getpendingjobexecutions",
        /// `iot:StartNextPendingJobExecution` (HTTPS).
        StartNextPendingJobExecution => "startnextpendingjobexecution",
        /// `iot:UpdateJobExecution` (HTTPS).
        UpdateJobExecution => "updatejobexecution",
    }
);

label_enum!(
    /// What a shadow request asked, over MQTT or HTTP.
    ShadowOp {
        /// Get a shadow.
        Get => "get",
        /// Update a shadow.
        Update => "update",
        /// Delete a shadow.
        Delete => "delete",
        /// List a thing's named shadows.
        List => "list",
    }
);

/// The HTTP status codes a shadow request is refused with (spec
/// aws-iot-shadow-rules.md §1.4), with their labels; anything else counts
/// as the last, 500.
const SHADOW_CODES: [(u16, &str); 9] = [
    (400, "400"),
    (403, "403"),
    (404, "404"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (503, "503"),
    (500, "500"),
];

label_enum!(
    /// An MQTT control packet type, in the order of its type number.
    PacketType {
        /// 0 (not a packet).
        Reserved => "reserved",
        /// 1
        Connect => "connect",
        /// 2
        ConnAck => "connack",
        /// 3
        Publish => "publish",
        /// 4
        PubAck => "puback",
        /// 5
        PubRec => "pubrec",
        /// 6
        PubRel => "pubrel",
        /// 7
        PubComp => "pubcomp",
        /// 8
        Subscribe => "subscribe",
        /// 9
        SubAck => "suback",
        /// 10
        Unsubscribe => "unsubscribe",
        /// 11
        UnsubAck => "unsuback",
        /// 12
        PingReq => "pingreq",
        /// 13
        PingResp => "pingresp",
        /// 14
        Disconnect => "disconnect",
        /// 15
        Auth => "auth",
    }
);

impl PacketType {
    /// The type with MQTT's type number `n` (the fixed header's high nibble).
    pub fn numbered(n: u8) -> Self {
        Self::ALL
            .get(usize::from(n))
            .copied()
            .unwrap_or(Self::Reserved)
    }
}

label_enum!(
    /// A message's QoS, as a label.
    QosLabel {
        /// At most once.
        Zero => "0",
        /// At least once.
        One => "1",
        /// Exactly once.
        Two => "2",
    }
);

impl QosLabel {
    /// The label of QoS `n` (0, 1 or 2).
    pub fn of(n: u8) -> Self {
        Self::ALL.get(usize::from(n)).copied().unwrap_or(Self::Two)
    }
}

#[cfg(feature = "stage-timing")]
label_enum!(
    /// A stage of a message's way through the gateway, timed only in builds
    /// with the `stage-timing` feature (profiling, not production).
    Stage {
        /// From the read that brought a PUBLISH to the end of its handling:
        /// decoded, authorized, routed and queued in every mailbox.
        Route => "route",
        /// From a delivery queued in an empty mailbox to the subscriber's
        /// connection taking it: the wake-up and hand-off between tasks.
        Handoff => "handoff",
        /// From the first delivery taken for a write to that write done:
        /// encoding, TLS and the socket.
        Write => "write",
    }
);

/// A counter per value of a label enum.
pub struct Family(Vec<Counter>);

impl Family {
    /// The counter for one label value.
    pub fn get(&self, index: usize) -> &Counter {
        &self.0[index.min(self.0.len() - 1)]
    }
}

/// Counters of one rule.
#[derive(Debug, Clone)]
pub struct RuleMetrics {
    /// `edgegate_rule_matched_total{rule}`: messages its FROM filter matched.
    pub matched: Counter,
    /// `edgegate_rule_evaluated_total{rule}`: messages its WHERE held for.
    pub evaluated: Counter,
    /// `edgegate_rule_evaluation_failures_total{rule}`: messages past the
    /// republish depth limit, or whose actions could not be rendered.
    pub failed: Counter,
}

/// Counters and gauges of one rule action and its spool.
#[derive(Debug, Clone)]
pub struct ActionMetrics {
    /// `edgegate_action_delivered_total{rule,action}`.
    pub delivered: Counter,
    /// `edgegate_action_retries_total{rule,action}`: failed attempts that will be retried.
    pub retried: Counter,
    /// `edgegate_action_failures_total{rule,action}`: jobs given up (to the error action).
    pub failed: Counter,
    /// `edgegate_spool_records{spool}`.
    pub depth: Gauge,
    /// `edgegate_spool_bytes{spool}`.
    pub bytes: Gauge,
    /// `edgegate_spool_oldest_age_seconds{spool}`.
    pub oldest: Gauge,
}

/// Resolved handles of every metric, plus the renderer.
pub struct Metrics {
    handle: PrometheusHandle,
    /// Kept to register the series of rules, which come and go with reloads.
    recorder: PrometheusRecorder,
    /// `edgegate_stage_seconds{stage}`, in `stage-timing` builds.
    #[cfg(feature = "stage-timing")]
    stages: Vec<metrics::Histogram>,
    /// `edgegate_connections`: open MQTT connections with a session.
    pub connections: Gauge,
    /// `edgegate_connections_total`: sessions started.
    pub connections_total: Counter,
    /// `edgegate_handshake_failures_total{reason}`.
    pub handshake_failures: Family,
    /// `edgegate_transport_connections_total{transport}`.
    transports: Family,
    /// `edgegate_authorizer_decisions_total{outcome}`.
    authorizer_decisions: Family,
    /// `edgegate_packets_received_total{type}`.
    packets_in: Family,
    /// `edgegate_packets_sent_total{type}`.
    packets_out: Family,
    /// `edgegate_messages_received_total{qos}`: PUBLISH accepted from clients.
    messages_in: Family,
    /// `edgegate_messages_sent_total{qos}`: PUBLISH written to clients.
    messages_out: Family,
    /// `edgegate_bytes_received_total`.
    pub bytes_in: Counter,
    /// `edgegate_bytes_sent_total`.
    pub bytes_out: Counter,
    /// `edgegate_messages_dropped_total{reason}`.
    pub dropped: Family,
    /// `edgegate_limit_refusals_total{limit}`.
    pub limit_refusals: Family,
    /// `edgegate_authz_denied_total{action}`.
    pub authz_denied: Family,
    /// `edgegate_connections_refused_total{reason}`: certificates refused by the registry.
    principal_refused: Family,
    /// `edgegate_protocol_errors_total`: connections closed for a protocol error.
    pub protocol_errors: Counter,
    /// `edgegate_reload_failures_total`: files that failed to load or reload.
    pub reload_failures: Counter,
    /// `edgegate_retained_messages`.
    pub retained: Gauge,
    /// `edgegate_sessions`: sessions held, online or offline.
    pub sessions: Gauge,
    /// `edgegate_subscriptions`.
    pub subscriptions: Gauge,
    /// `edgegate_store_commits_total`: group commits written.
    pub store_commits: Counter,
    /// `edgegate_store_errors_total`: failed store transactions.
    pub store_errors: Counter,
    /// `edgegate_upstream_connected`: 1 while the bridge's link is up.
    pub upstream_connected: Gauge,
    /// `edgegate_upstream_reconnects_total`: links lost or never made.
    pub upstream_reconnects: Counter,
    /// `edgegate_upstream_forwarded_total`: messages the upstream acknowledged.
    pub upstream_forwarded: Counter,
    /// `edgegate_upstream_resent_total`: messages sent again after a lost link (possible duplicates).
    pub upstream_resent: Counter,
    /// `edgegate_upstream_received_total`: messages from upstream published here.
    pub upstream_received: Counter,
    /// `edgegate_upstream_failed_total`: messages dropped either way (refused, expired, unmapped).
    pub upstream_failed: Counter,
    /// `edgegate_shadow_requests_total{op,result}`: accepted then rejected, per [`ShadowOp`].
    shadow_requests: Vec<[Counter; 2]>,
    /// `edgegate_shadow_rejections_total{code}`.
    shadow_rejections: Family,
    /// `edgegate_shadow_documents`: shadows that exist.
    pub shadow_documents: Gauge,
    /// `edgegate_shadow_bytes`: bytes of shadow state held.
    pub shadow_bytes: Gauge,
    /// `edgegate_control_calls_total{outcome}`: control-plane calls, by [`ControlOutcome`].
    pub control_calls: Family,
    /// `edgegate_audit_dropped_total`: audit lines lost because the writer fell behind or failed.
    pub audit_dropped: Counter,
    /// `edgegate_events_published_total{type}`, by [`EventKind`].
    events_published: Family,
    /// `edgegate_provisioning_requests_total{outcome}`, by [`ProvisioningOutcome`].
    provisioning_requests: Family,
    /// `edgegate_jobs{status}`.
    jobs: Vec<(&'static str, Gauge)>,
    /// `edgegate_job_executions{status}`.
    job_executions: Vec<(&'static str, Gauge)>,
    /// `edgegate_job_rejections_total{code}`, by [`JOB_REJECTION_CODES`].
    job_rejections: Family,
}

/// The `code`s of refused device jobs requests, as AWS names them.
pub const JOB_REJECTION_CODES: [&str; 7] = [
    "InvalidTopic",
    "InvalidJson",
    "InvalidRequest",
    "InvalidStateTransition",
    "ResourceNotFound",
    "VersionMismatch",
    "InternalError",
];

label_enum!(
    /// The kinds of `$aws/events/...` messages, for `edgegate_events_published_total`.
    EventKind {
        /// Presence: connected, disconnected.
        Presence => "presence",
        /// Subscriptions: subscribed, unsubscribed.
        Subscriptions => "subscriptions",
        /// THING: a thing created, updated or deleted.
        Thing => "thing",
        /// THING_TYPE: a thing type created, updated or deleted.
        ThingType => "thing_type",
        /// THING_TYPE_ASSOCIATION: a thing gained or lost its type.
        ThingTypeAssociation => "thing_type_association",
        /// CERTIFICATE: a certificate registered, changed or deleted.
        Certificate => "certificate",
        /// POLICY: a policy created, changed or deleted.
        Policy => "policy",
        /// THING_GROUP: a thing group created, updated or deleted.
        ThingGroup => "thing_group",
        /// THING_GROUP_MEMBERSHIP: a thing joined or left a group.
        ThingGroupMembership => "thing_group_membership",
        /// THING_GROUP_HIERARCHY: a group made or deleted below another.
        ThingGroupHierarchy => "thing_group_hierarchy",
        /// JOB: a job completed, canceled or deleted.
        Job => "job",
        /// JOB_EXECUTION: an execution ended or was deleted.
        JobExecution => "job_execution",
    }
);

label_enum!(
    /// How a fleet provisioning request ended, for
    /// `edgegate_provisioning_requests_total`.
    ProvisioningOutcome {
        /// Answered on `.../accepted`.
        Accepted => "accepted",
        /// Answered on `.../rejected`.
        Rejected => "rejected",
    }
);

label_enum!(
    /// How a control-plane call ended, for `edgegate_control_calls_total`.
    ControlOutcome {
        /// Done.
        Ok => "ok",
        /// Refused by the operation itself (not found, conflict, invalid).
        Error => "error",
        /// Refused by the operator's policies.
        Denied => "denied",
        /// No valid signature.
        Unauthenticated => "unauthenticated",
    }
);

label_enum!(
    /// Why the registry refused a certificate, for `edgegate_connections_refused_total`.
    Refused {
        /// Not registered, and the registration mode does not add it.
        Unknown => "unknown",
        /// Registered INACTIVE.
        Inactive => "inactive",
        /// Revoked.
        Revoked => "revoked",
        /// Registered by JITR, waiting for an operator.
        PendingActivation => "pending_activation",
        /// Its CA is INACTIVE.
        CaInactive => "ca_inactive",
        /// A configured revocation list names it.
        Listed => "revocation_list",
        /// No certificate, on a listener where it is optional, and no
        /// other credentials.
        Unauthenticated => "unauthenticated",
    }
);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(feature = "stage-timing")]
const STAGE_SECONDS: &str = "edgegate_stage_seconds";

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// Creates a private recorder and registers every metric in it.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // Buckets 20% apart from 1 us to about 56 ms: quantiles within a
        // bucket's width, computed from counts of every sample (a summary
        // keeps only a recent window).
        #[cfg(feature = "stage-timing")]
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(STAGE_SECONDS.into()),
                &(0..=60).map(|k| 1e-6 * 1.2f64.powi(k)).collect::<Vec<_>>(),
            )
            .expect("the stage buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let counter = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, help.into());
            r.register_counter(&Key::from_static_name(name), &META)
        };
        let gauge = |name: &'static str, help: &'static str| {
            r.describe_gauge(name.into(), None, help.into());
            r.register_gauge(&Key::from_static_name(name), &META)
        };
        let family = |name: &'static str,
                      help: &'static str,
                      label: &'static str,
                      values: &[&'static str]| {
            r.describe_counter(name.into(), Some(Unit::Count), help.into());
            Family(
                values
                    .iter()
                    .map(|v| {
                        let key = Key::from_parts(name, vec![Label::from_static_parts(label, v)]);
                        r.register_counter(&key, &META)
                    })
                    .collect(),
            )
        };
        let gauges = |name: &'static str, help: &'static str, values: &[&'static str]| {
            r.describe_gauge(name.into(), None, help.into());
            values
                .iter()
                .map(|v| {
                    let key = Key::from_parts(name, vec![Label::from_static_parts("status", v)]);
                    (*v, r.register_gauge(&key, &META))
                })
                .collect::<Vec<_>>()
        };
        for (name, help) in [
            (
                "edgegate_rule_matched_total",
                "Messages a rule's FROM filter matched.",
            ),
            (
                "edgegate_rule_evaluated_total",
                "Messages a rule's WHERE held for.",
            ),
            (
                "edgegate_rule_evaluation_failures_total",
                "Messages past the republish depth limit or whose actions could not be rendered.",
            ),
            (
                "edgegate_action_delivered_total",
                "Jobs a rule action delivered.",
            ),
            (
                "edgegate_action_retries_total",
                "Failed delivery attempts of a rule action that will be retried.",
            ),
            (
                "edgegate_action_failures_total",
                "Jobs a rule action gave up on (they go to the error action).",
            ),
        ] {
            r.describe_counter(name.into(), None, help.into());
        }
        for (name, help) in [
            ("edgegate_spool_records", "Records waiting in a spool."),
            ("edgegate_spool_bytes", "Bytes waiting in a spool."),
            (
                "edgegate_spool_oldest_age_seconds",
                "Age of the oldest record in a spool.",
            ),
        ] {
            r.describe_gauge(name.into(), None, help.into());
        }
        let qos: Vec<&str> = QosLabel::ALL.iter().map(|v| v.label()).collect();
        Self {
            connections: gauge(
                "edgegate_connections",
                "Open MQTT connections with a session.",
            ),
            connections_total: counter("edgegate_connections_total", "MQTT sessions started."),
            handshake_failures: family(
                "edgegate_handshake_failures_total",
                "Connections that failed before their session started, by reason.",
                "reason",
                &HandshakeFailure::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            authorizer_decisions: family(
                "edgegate_authorizer_decisions_total",
                "Custom authorizer decisions about clients, by outcome.",
                "outcome",
                &AuthorizerOutcome::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            transports: family(
                "edgegate_transport_connections_total",
                "Connections routed to a protocol once TLS was up, by what they speak.",
                "transport",
                &Transport::ALL.iter().map(|v| v.label()).collect::<Vec<_>>(),
            ),
            packets_in: family(
                "edgegate_packets_received_total",
                "MQTT packets received, by type.",
                "type",
                &PacketType::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            packets_out: family(
                "edgegate_packets_sent_total",
                "MQTT packets sent, by type.",
                "type",
                &PacketType::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            messages_in: family(
                "edgegate_messages_received_total",
                "PUBLISH messages accepted from clients, by QoS.",
                "qos",
                &qos,
            ),
            messages_out: family(
                "edgegate_messages_sent_total",
                "PUBLISH messages written to clients, by QoS.",
                "qos",
                &qos,
            ),
            bytes_in: counter(
                "edgegate_bytes_received_total",
                "Bytes read from MQTT clients.",
            ),
            bytes_out: counter(
                "edgegate_bytes_sent_total",
                "Bytes written to MQTT clients.",
            ),
            dropped: family(
                "edgegate_messages_dropped_total",
                "Messages not delivered to a subscriber, by reason.",
                "reason",
                &DropReason::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            limit_refusals: family(
                "edgegate_limit_refusals_total",
                "Operations refused by a configured limit, by limit.",
                "limit",
                &LimitKind::ALL.iter().map(|v| v.label()).collect::<Vec<_>>(),
            ),
            authz_denied: family(
                "edgegate_authz_denied_total",
                "Operations refused by policy, by action.",
                "action",
                &AuthzAction::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            principal_refused: family(
                "edgegate_connections_refused_total",
                "Connections refused because of their certificate's registration, by reason.",
                "reason",
                &Refused::ALL.iter().map(|v| v.label()).collect::<Vec<_>>(),
            ),
            protocol_errors: counter(
                "edgegate_protocol_errors_total",
                "Connections closed because the client broke the MQTT protocol.",
            ),
            reload_failures: counter(
                "edgegate_reload_failures_total",
                "Policy files that failed to load or reload (the last good version stays).",
            ),
            retained: gauge("edgegate_retained_messages", "Retained messages held."),
            sessions: gauge("edgegate_sessions", "Sessions held, online or offline."),
            subscriptions: gauge("edgegate_subscriptions", "Subscriptions held."),
            store_commits: counter(
                "edgegate_store_commits_total",
                "Group commits written to the store.",
            ),
            store_errors: counter(
                "edgegate_store_errors_total",
                "Store transactions that failed.",
            ),
            upstream_connected: gauge(
                "edgegate_upstream_connected",
                "1 while the bridge's link to the upstream broker is up.",
            ),
            upstream_reconnects: counter(
                "edgegate_upstream_reconnects_total",
                "Upstream links lost or attempts that failed.",
            ),
            upstream_forwarded: counter(
                "edgegate_upstream_forwarded_total",
                "Messages the upstream broker acknowledged.",
            ),
            upstream_resent: counter(
                "edgegate_upstream_resent_total",
                "Messages sent upstream again after a lost link (possible duplicates).",
            ),
            upstream_received: counter(
                "edgegate_upstream_received_total",
                "Messages from the upstream broker published here.",
            ),
            upstream_failed: counter(
                "edgegate_upstream_failed_total",
                "Messages dropped on the way up or down (refused, expired, unmapped).",
            ),
            shadow_requests: {
                r.describe_counter(
                    "edgegate_shadow_requests_total".into(),
                    None,
                    "Device shadow requests (MQTT and HTTP), by operation and result.".into(),
                );
                ShadowOp::ALL
                    .iter()
                    .map(|op| {
                        ["accepted", "rejected"].map(|result| {
                            let key = Key::from_parts(
                                "edgegate_shadow_requests_total",
                                vec![
                                    Label::from_static_parts("op", op.label()),
                                    Label::from_static_parts("result", result),
                                ],
                            );
                            r.register_counter(&key, &META)
                        })
                    })
                    .collect()
            },
            shadow_rejections: family(
                "edgegate_shadow_rejections_total",
                "Device shadow requests refused, by the HTTP status code AWS IoT gives.",
                "code",
                &SHADOW_CODES.map(|(_, label)| label),
            ),
            shadow_documents: gauge("edgegate_shadow_documents", "Device shadows that exist."),
            control_calls: family(
                "edgegate_control_calls_total",
                "Control-plane calls, by outcome (ok, error, denied by operator policy, unauthenticated).",
                "outcome",
                &ControlOutcome::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            audit_dropped: counter(
                "edgegate_audit_dropped_total",
                "Audit log lines lost because the audit writer fell behind or could not write.",
            ),
            provisioning_requests: family(
                "edgegate_provisioning_requests_total",
                "Fleet provisioning requests, by outcome (accepted, rejected).",
                "outcome",
                &ProvisioningOutcome::ALL
                    .iter()
                    .map(|v| v.label())
                    .collect::<Vec<_>>(),
            ),
            events_published: family(
                "edgegate_events_published_total",
                "Events the gateway published on $aws/events/..., by type.",
                "type",
                &EventKind::ALL.iter().map(|v| v.label()).collect::<Vec<_>>(),
            ),
            shadow_bytes: gauge(
                "edgegate_shadow_bytes",
                "Bytes of device shadow state (desired and reported) held.",
            ),
            jobs: gauges(
                "edgegate_jobs",
                "Jobs, by status.",
                &["IN_PROGRESS", "CANCELED", "COMPLETED"],
            ),
            job_executions: gauges(
                "edgegate_job_executions",
                "Job executions, by status.",
                &[
                    "QUEUED",
                    "IN_PROGRESS",
                    "SUCCEEDED",
                    "FAILED",
                    "TIMED_OUT",
                    "REJECTED",
                    "REMOVED",
                    "CANCELED",
                ],
            ),
            job_rejections: family(
                "edgegate_job_rejections_total",
                "Device jobs requests refused, by AWS's error code.",
                "code",
                &JOB_REJECTION_CODES,
            ),
            #[cfg(feature = "stage-timing")]
            stages: {
                let name = STAGE_SECONDS;
                r.describe_histogram(
                    name.into(),
                    Some(Unit::Seconds),
                    "Time a message spends in each stage of its way (stage-timing builds only)."
                        .into(),
                );
                Stage::ALL
                    .iter()
                    .map(|s| {
                        let key = Key::from_parts(
                            name,
                            vec![Label::from_static_parts("stage", s.label())],
                        );
                        r.register_histogram(&key, &META)
                    })
                    .collect()
            },
            handle,
            recorder,
        }
    }

    /// Counts a shadow request; a refusal also by its status `code`.
    pub fn shadow_request(&self, op: ShadowOp, refused: Option<u16>) {
        self.shadow_requests[op as usize][usize::from(refused.is_some())].increment(1);
        if let Some(code) = refused {
            let i = SHADOW_CODES
                .iter()
                .position(|(c, _)| *c == code)
                .unwrap_or(SHADOW_CODES.len() - 1);
            self.shadow_rejections.get(i).increment(1);
        }
    }

    /// Sets how many jobs are in `status`.
    pub fn jobs_in(&self, status: &str, n: usize) {
        if let Some((_, g)) = self.jobs.iter().find(|(s, _)| *s == status) {
            g.set(n as f64);
        }
    }

    /// Sets how many job executions are in `status`.
    pub fn job_executions_in(&self, status: &str, n: usize) {
        if let Some((_, g)) = self.job_executions.iter().find(|(s, _)| *s == status) {
            g.set(n as f64);
        }
    }

    /// Counts a refused device jobs request by its `code`.
    pub fn job_rejection(&self, code: &str) {
        let i = JOB_REJECTION_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(JOB_REJECTION_CODES.len() - 1);
        self.job_rejections.get(i).increment(1);
    }

    /// Counts a fleet provisioning request.
    pub fn provisioning_request(&self, outcome: ProvisioningOutcome) {
        self.provisioning_requests
            .get(outcome as usize)
            .increment(1);
    }

    /// Counts an event published.
    pub fn event_published(&self, kind: EventKind) {
        self.events_published.get(kind as usize).increment(1);
    }

    /// Counts a control-plane call.
    pub fn control_call(&self, outcome: ControlOutcome) {
        self.control_calls.get(outcome as usize).increment(1);
    }

    /// Counts a packet received.
    pub fn packet_in(&self, t: PacketType) {
        self.packets_in.get(t as usize).increment(1);
    }

    /// Counts a packet sent.
    pub fn packet_out(&self, t: PacketType) {
        self.packets_out.get(t as usize).increment(1);
    }

    /// Counts a PUBLISH accepted from a client.
    pub fn message_in(&self, qos: QosLabel) {
        self.messages_in.get(qos as usize).increment(1);
    }

    /// Counts a PUBLISH written to a client.
    pub fn message_out(&self, qos: QosLabel) {
        self.messages_out.get(qos as usize).increment(1);
    }

    /// Counts a certificate the registry refused.
    pub fn principal_refused(&self, why: Refused) {
        self.principal_refused.get(why as usize).increment(1);
    }

    fn labelled(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    /// The counters of a rule; the same handles however often it is asked.
    pub fn rule(&self, rule: &str) -> RuleMetrics {
        let c = |name| {
            self.recorder
                .register_counter(&self.labelled(name, &[("rule", rule)]), &META)
        };
        RuleMetrics {
            matched: c("edgegate_rule_matched_total"),
            evaluated: c("edgegate_rule_evaluated_total"),
            failed: c("edgegate_rule_evaluation_failures_total"),
        }
    }

    /// The series of one action and its spool.
    pub fn action(&self, rule: &str, action: &str, spool: &str) -> ActionMetrics {
        let c = |name| {
            self.recorder.register_counter(
                &self.labelled(name, &[("rule", rule), ("action", action)]),
                &META,
            )
        };
        let g = |name| {
            self.recorder
                .register_gauge(&self.labelled(name, &[("spool", spool)]), &META)
        };
        ActionMetrics {
            delivered: c("edgegate_action_delivered_total"),
            retried: c("edgegate_action_retries_total"),
            failed: c("edgegate_action_failures_total"),
            depth: g("edgegate_spool_records"),
            bytes: g("edgegate_spool_bytes"),
            oldest: g("edgegate_spool_oldest_age_seconds"),
        }
    }

    /// Counts a handshake failure.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures.get(reason as usize).increment(1);
    }

    /// Counts a custom authorizer's decision.
    pub fn authorizer_decided(&self, outcome: AuthorizerOutcome) {
        self.authorizer_decisions.get(outcome as usize).increment(1);
    }

    /// Counts a connection routed to what it speaks.
    pub fn routed(&self, transport: Transport) {
        self.transports.get(transport as usize).increment(1);
    }

    /// Records how long a message spent in one stage.
    #[cfg(feature = "stage-timing")]
    pub fn stage(&self, stage: Stage, took: std::time::Duration) {
        self.stages[stage as usize].record(took.as_secs_f64());
    }

    /// Counts a dropped message.
    pub fn count_drop(&self, reason: DropReason) {
        self.count_drops(reason, 1);
    }

    /// Counts `n` dropped messages.
    pub fn count_drops(&self, reason: DropReason, n: u64) {
        self.dropped.get(reason as usize).increment(n);
    }

    /// Counts a policy denial.
    pub fn denied(&self, action: AuthzAction) {
        self.authz_denied.get(action as usize).increment(1);
    }

    /// Counts a limit refusal.
    pub fn refused(&self, limit: LimitKind) {
        self.limit_refusals.get(limit as usize).increment(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
