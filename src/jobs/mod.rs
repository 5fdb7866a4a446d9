//! AWS IoT Jobs (spec aws-iot-device-services.md §4): operations that
//! operators send to things and thing groups, and that devices take, report
//! on and finish. `core` (pure) holds the jobs, their executions and AWS's
//! state machine over them.

pub mod core;
