//! HTTP servers of the gateway.

pub mod admin;
pub mod aws;
pub mod data;
pub mod device;
pub mod sigv4;
