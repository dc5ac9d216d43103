//! mailbridge's shared library: everything both Lambdas (and the operator CLI) use.
//!
//! Ports and adapters: the functions' logic talks to small traits (token source, mail sender,
//! ticket sink, mailbox, state store); this crate holds those traits, the real adapters
//! (Secrets Manager, Microsoft identity platform, Graph, IMAP, ticket API, DynamoDB), the
//! mail → ticket parser, and the error taxonomy (permanent vs transient vs needs-a-person).
//!
//! Cargo features: `mail` (the parser) and `services` (every adapter that does I/O), both on by
//! default; `error` and `notification` are always built. The fuzz crate builds with
//! `default-features = false, features = ["mail"]`, so the mail parser builds without the AWS
//! SDKs, reqwest or IMAP.
#![warn(missing_docs)]

#[cfg(feature = "services")]
pub mod aws;
#[cfg(feature = "services")]
pub mod config;
pub mod error;
#[cfg(feature = "services")]
pub mod graph;
#[cfg(feature = "services")]
pub mod graph_draft;
/// Reading a mailbox through Graph: delta sync, MIME, after-actions, folders.
#[cfg(feature = "services")]
pub mod graph_mail;
#[cfg(feature = "services")]
pub mod graph_subscriptions;
#[cfg(feature = "services")]
pub mod http;
#[cfg(feature = "services")]
pub mod imap;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "mail")]
pub mod mail;
#[cfg(all(feature = "services", feature = "mail"))]
pub mod mailbox;
#[cfg(feature = "services")]
pub mod message_store;
pub mod notification;
#[cfg(all(feature = "services", feature = "mail"))]
pub mod push;
#[cfg(feature = "services")]
pub mod retry;
#[cfg(feature = "services")]
pub mod send_rights;
#[cfg(all(feature = "services", feature = "mail"))]
pub mod state_table;
#[cfg(feature = "services")]
pub mod telemetry;
#[cfg(feature = "services")]
pub mod thread_key;
#[cfg(all(feature = "services", feature = "mail"))]
pub mod thread_stamp;
#[cfg(all(feature = "services", feature = "mail"))]
pub mod ticket_sink;
#[cfg(feature = "services")]
pub mod token;
