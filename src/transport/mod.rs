//! How bytes reach a session: listeners, TLS, WebSockets, and client identity.

pub mod pki;
pub mod proxy;
pub mod record;
pub mod stream;
pub mod tls;
pub mod ws;
