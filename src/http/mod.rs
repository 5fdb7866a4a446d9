//! HTTP servers of the gateway.

pub mod admin;
