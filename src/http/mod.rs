//! HTTP servers of the gateway.

pub mod admin;
pub mod sigv4;
