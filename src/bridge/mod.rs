//! The upstream bridge: one MQTT connection over mutual TLS to AWS IoT Core
//! (or any broker), moving messages both ways.
//!
//! - Outbound: rules and `[[upstream.forward]]` mappings append messages to
//!   the `upstream` spool (the spool is the contract; the bridge never sees
//!   the rules engine). The bridge publishes them in spool order and deletes
//!   each only when the upstream's PUBACK arrives, so an outage, a restart or
//!   `kill -9` loses nothing; after a lost link everything unacknowledged is
//!   sent again from the spool's head (counted as possible duplicates). A
//!   message the upstream keeps closing the link on (AWS IoT's answer to an
//!   unauthorized 3.1.1 publish) is isolated and, after three such links,
//!   dropped and counted, so it cannot hold up the rest.
//! - Flow: at most `max_inflight` unacknowledged publishes (and the broker's
//!   Receive Maximum), and at most `max_publishes_per_second` in any one
//!   second (a sliding window, not a fixed tick), as fast as both allow.
//! - Inbound: `[[upstream.subscribe]]` filters are subscribed after every
//!   connect; a message from upstream is published locally under its mapped
//!   topic like any publish (subscribers still need `iot:Receive`), and is
//!   acknowledged upstream once it is durable here. It is never sent back up.
//! - Liveness: one deadline for TCP, TLS and CONNACK; PINGREQ when the link
//!   has been quiet for the keep alive; a link that answers nothing for 1.5
//!   times the keep alive (a half-open connection) is dropped and made again,
//!   with exponential backoff and jitter.

mod link;

use crate::config::{TopicMapping, Upstream};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::spool::{Spool, Throttle};
use crate::sql::Template;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A certificate, key or CA file is unusable.
    #[error("upstream TLS: {0}")]
    Tls(#[from] crate::transport::tls::TlsError),
    /// An inbound topic template does not parse.
    #[error("upstream.subscribe[{index}].topic: position {at}: {message}")]
    Template {
        /// Mapping.
        index: usize,
        /// Byte offset.
        at: usize,
        /// Problem.
        message: String,
    },
}

/// What `/healthz` reports about the link.
#[derive(Debug)]
pub struct Status {
    connected: AtomicBool,
    spool: Arc<Spool>,
}

impl Status {
    /// Whether the link is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// (records, bytes, age of the oldest in ms) waiting to go up.
    pub fn backlog(&self) -> (usize, usize, u64) {
        self.spool.depth(crate::store::now_ms())
    }
}

/// One compiled inbound mapping.
#[derive(Debug)]
struct Mapping {
    filter: String,
    topic: Template,
    qos: u8,
}

/// Starts the bridge's task; it runs until `shutdown`.
pub fn start(
    config: &Upstream,
    router: Arc<Router>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Arc<Status>, BridgeError> {
    let tls = link::tls_config(config)?;
    let mappings = config
        .subscribe
        .iter()
        .enumerate()
        .map(|(index, TopicMapping { filter, topic, qos })| {
            Ok(Mapping {
                filter: filter.clone(),
                topic: Template::parse(topic).map_err(|e| BridgeError::Template {
                    index,
                    at: e.at,
                    message: e.message,
                })?,
                qos: *qos,
            })
        })
        .collect::<Result<Vec<_>, BridgeError>>()?;
    let status = Arc::new(Status {
        connected: AtomicBool::new(false),
        spool: spool.clone(),
    });
    let name = spool.name();
    let bridge = link::Bridge {
        config: config.clone(),
        tls,
        mappings,
        router,
        spool_metrics: metrics.action(name, name, name),
        spool: spool.clone(),
        metrics,
        status: status.clone(),
        shutdown,
        origin: Arc::new(crate::router::Origin {
            client_id: Some(config.client_id.as_str().into()),
            bridged: true,
            ..crate::router::Origin::default()
        }),
        up_warn: Throttle::default(),
        in_warn: Throttle::default(),
    };
    tracker.spawn(bridge.run());
    Ok(status)
}
