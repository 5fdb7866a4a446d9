//! HTTP servers of the gateway.

pub mod admin;
pub mod aws;
pub mod control;
pub mod data;
pub mod device;
pub mod jobs_data;
pub mod operators;
pub mod sigv4;
pub mod upgrade;
