//! edgegate: an MQTT gateway for the edge that devices talk to exactly as
//! they talk to AWS IoT Core.
//!
//! Layout (a module imports only modules above it; `server` wires them):
//! - [`topic`]: topic names and filters, validation and matching (pure).
//! - [`codec`]: MQTT 3.1.1 and 5.0 packets to and from bytes (pure).

pub mod codec;
pub mod config;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod topic;
pub mod transport;
