//! edgegate: an MQTT gateway for the edge that devices talk to exactly as
//! they talk to AWS IoT Core.
//!
//! Layout, in dependency order: a module imports only modules listed above
//! it, except [`server`], which wires them together. (P) marks pure modules:
//! no IO, time passed in.
//! - [`topic`] (P): topic names and filters, validation and matching.
//! - [`metrics`]: every metric name; a private Prometheus recorder per gateway.
//! - [`oplog`]: the operator's log: escaped text or JSON, and the gate that
//!   lets every refusal through at most once a second per principal.
//! - [`audit`]: the audit log of what changes identities and configuration:
//!   control-plane calls and fleet provisioning requests.
//! - [`config`]: `config.toml`, defaults, validation reporting every problem.
//! - [`transport`]: TLS configuration, the server's TLS stream, MQTT over
//!   WebSocket frames, and certificate generation; it imports only
//!   [`config`] and [`metrics`].
//! - [`codec`] (P): MQTT 3.1.1 and 5.0 packets to and from bytes.
//! - [`store`]: the redb database and its group-commit writer.
//! - [`spool`]: the durable at-least-once queue for rule actions and the bridge.
//! - [`policy`]: AWS IoT policy documents, compilation and evaluation.
//! - [`registry`]: principals: certificates, CAs, things and thing types,
//!   and the identities read from certificates.
//! - [`sql`] (P): AWS IoT SQL and substitution templates, shared by the
//!   rules engine and the bridge.
//! - [`router`]: subscriptions, retained messages, fan-out into mailboxes.
//! - [`rules`]: the rules engine: compiled rules, actions, and the
//!   engine that evaluates tapped messages and delivers spooled jobs.
//! - [`bridge`]: the upstream connection; it drains the upstream spool and
//!   publishes what the upstream sends. It shares the pure SQL templates
//!   with rules, never the engine: rules and bridge meet at the spool.
//! - [`shadow`]: device shadows: the document (pure) and the service that
//!   answers the reserved topics and the REST calls.
//! - [`provisioning`]: fleet provisioning by claim: templates (pure),
//!   ownership tokens (pure), and the service that answers devices.
//! - [`jobs`]: AWS IoT Jobs: jobs, executions and their state machine (pure).
//! - [`events`]: lifecycle events: their documents and the service that
//!   publishes them on `$aws/events/...`.
//! - [`authorizers`]: custom authorizers: tokens, their signatures, the
//!   endpoints that decide, and their answers as a connection's policies.
//! - [`session`]: the session table, wills, and the connection task.
//! - [`http`]: the admin listener and socket, the AWS IoT control plane
//!   with operators, the `iot-data` API, the device endpoint.
//! - [`server`]: binds everything, then serves; owns shutdown.
//! - [`loadgen`]: the load tool (`edgegate bench`), a client of any broker;
//!   it uses only [`codec`].

pub mod audit;
pub mod authorizers;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod events;
pub mod http;
pub mod jobs;
pub mod loadgen;
pub mod metrics;
pub mod oplog;
pub mod policy;
pub mod provisioning;
pub mod registry;
pub mod router;
pub mod rules;
pub mod server;
pub mod session;
pub mod shadow;
pub mod spool;
pub mod sql;
pub mod store;
pub mod topic;
pub mod transport;
