//! send-notifications: the logic, in plain async code behind the shared library's ports. `main.rs` is only Lambda glue.
//!
//! - [`settings`]: typed environment.
//! - [`batch`]: SQS batch → per-message outcome → `SqsBatchResponse` (the heart).
//! - [`ports`]: DLQ parking and message visibility ports with their SQS adapters.
//! - [`metrics`]: the EMF line per invocation.
#![warn(missing_docs)]

pub mod batch;
pub mod metrics;
pub mod ports;
pub mod settings;

pub use batch::{BatchReport, Deps, Outcome, process_batch};

#[cfg(test)]
mod tests;
