//! poll-mailboxes: the logic, in plain async code behind the shared library's ports. `main.rs` is only Lambda glue.
//!
//! - [`config`]: mailbox configuration (validated per field) and the function's settings.
//! - [`ports`]: the small traits the loop runs on (mailbox, state store, sink factory).
//! - [`poll`]: one tick, [`poll::poll_once`], and the per-mailbox loop.
//! - [`dedupe`]: which mails are the same mail.
//! - [`convert`]: raw mail → ticket draft and attachment contents.
//! - [`dynamo`], [`imap_adapter`], [`graph_adapter`], [`sinks`]: the real adapters (DynamoDB,
//!   IMAP, Microsoft Graph, webhook).
//! - [`targets`]: the IMAP and ticket API hosts a mailbox configuration may point at.
//! - [`memory`]: how large a mail may be read whole, from the function's memory.
//! - [`handler`]: the Lambda event → tick → response + metrics.
//! - [`push`]: poll requests from Graph change notifications (the poll-request queue).

pub mod config;
pub mod convert;
pub mod dedupe;
pub mod dynamo;
pub mod graph_adapter;
pub mod handler;
pub mod imap_adapter;
pub mod memory;
pub mod poll;
pub mod ports;
pub mod push;
pub mod sinks;
pub mod targets;

#[cfg(test)]
mod fakes;

pub use poll::{PollDeps, PollOutcome, PollReport, poll_once};
