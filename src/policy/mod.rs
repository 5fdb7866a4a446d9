//! AWS IoT policies: documents, compilation per connection, evaluation.
//!
//! Parse, compile, evaluate: [`document`] turns JSON into a validated
//! model, [`compile`] specialises every document that applies to one
//! connection (variables, conditions, ARN heads), and [`eval`] decides
//! requests against the result without allocating.

pub mod compile;
pub mod document;
pub mod eval;
