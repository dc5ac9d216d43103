//! A mailbox to poll, as the state table describes it: what both the poller and the operator CLI
//! read and write.
//!
//! - [`config`]: the typed [`MailboxConfig`] (protocol, folders, after-action, quotas, sink),
//!   validated field by field from a `mailbox#<name>` item.
//! - [`targets`]: the IMAP and ticket API hosts a configuration may point at ([`TargetPolicy`]).
//!
//! Storing and listing configurations is [`crate::state_table`]'s.

pub mod config;
pub mod targets;

pub use config::{AfterAction, ConfigError, ListMail, MailboxConfig, Protocol};
pub use targets::TargetPolicy;
