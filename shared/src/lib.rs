//! mailbridge's shared library: everything both Lambdas (and the operator CLI) use.
//!
//! Ports and adapters: the functions' logic talks to small traits (token source, mail sender,
//! ticket sink, mailbox, state store); this crate holds those traits, the real adapters
//! (Secrets Manager, Microsoft identity platform, Graph, IMAP, ticket API, DynamoDB), the
//! mail → ticket parser, and the error taxonomy (permanent vs transient vs needs-a-person).
#![warn(missing_docs)]

pub mod aws;
pub mod config;
pub mod error;
pub mod graph;
pub mod http;
pub mod imap;
pub mod mail;
pub mod notification;
pub mod state;
pub mod telemetry;
pub mod ticket_api;
pub mod token;
