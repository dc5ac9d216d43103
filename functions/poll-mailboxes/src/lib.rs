//! poll-mailboxes: the logic, in plain async code behind the shared library's ports. `main.rs` is only Lambda glue.
//!
//! - [`settings`]: the function's settings. Mailbox configurations (`mailbridge::mailbox`) and
//!   the state table (`mailbridge::state_table`) are the shared library's: the operator CLI
//!   reads and writes them too.
//! - [`ports`]: the small traits the loop runs on (mailbox, sink factory).
//! - [`poll`]: one tick, [`poll::poll_once`], over every mailbox; in its folder one mailbox's run
//!   ([`poll::poll_mailbox`]) and its stages: windows of mail, payloads, POSTs, after-actions
//!   (the map in `poll/mod.rs`).
//! - [`dedupe`]: which mails are the same mail; [`conversation`]: which mails of a window are one
//!   conversation (posted in order, other conversations beside them).
//! - [`machine_mail`]: which machine mail is set aside instead of posted.
//! - [`convert`]: raw mail → ticket draft and attachment contents.
//! - [`imap_adapter`], [`graph_adapter`], [`sinks`]: the real adapters (IMAP, Microsoft Graph,
//!   ticket sinks).
//! - [`memory`]: how large a mail may be read whole, from the function's memory.
//! - [`handler`]: the Lambda event → tick → response + metrics; [`production`]: the real
//!   adapters built from the settings at cold start (what `main.rs` runs them with).
//! - [`push`]: poll requests from Graph change notifications (the poll-request queue).

pub mod conversation;
pub mod convert;
pub mod dedupe;
pub mod graph_adapter;
pub mod handler;
pub mod imap_adapter;
pub mod machine_mail;
pub mod memory;
pub mod poll;
pub mod ports;
pub mod production;
pub mod push;
pub mod settings;
pub mod sinks;

#[cfg(test)]
mod tests;

pub use poll::{PollDeps, PollOutcome, PollReport, poll_once};
