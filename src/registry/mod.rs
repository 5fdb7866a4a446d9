//! The registry of principals: certificates and the identities read from them.

pub mod identity;

pub use identity::ClientIdentity;
