//! How bytes reach a session: listeners, TLS, and client identity.

pub mod pki;
pub mod stream;
pub mod tls;
