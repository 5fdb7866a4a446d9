//! The rules engine: AWS IoT SQL over published messages, and the actions
//! that deliver the results.

pub mod sql;
