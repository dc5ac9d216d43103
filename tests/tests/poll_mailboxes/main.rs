//! poll-mailboxes against real servers: the ticket API stand-in (webhook client), moto
//! (DynamoDB state table), Dovecot with XOAUTH2 (the identity stand-in introspects tokens), and
//! the real `bootstrap` binary under the Lambda Runtime API emulator. One module per subject:
//!
//! - `webhook_sink`: the webhook ticket sink against the stand-in (keys, auth, retries);
//! - `state_records`: mailbox configurations, dedupe and status records in the state table;
//! - `tickets`: mail becomes exactly one ticket (TNEF, reused Message-IDs, malformed and
//!   oversize mail, a reply after its original, `since`);
//! - `machine_mail`: auto-replies, bounces and list mail set aside; floods held;
//! - `after_actions`: `mark_seen`, `delete`, and a server without `MOVE`;
//! - `sign_in`: revoked grants and access, a shared mailbox;
//! - `heartbeat`: a stuck mailbox ages the heartbeat;
//! - `ticket_api_failures`: the ticket API down, failing on one mail, refusing or rejecting;
//! - `dedupe_and_crashes`: overlapping runs, the deadline, a restarted server, a new
//!   UIDVALIDITY, a mail that killed the process;
//! - `bootstrap`: the real binary on scheduled and manual events;
//! - `memory_bound`: the real binary reading a 27 MB mail within 256 MB and 128 MB;
//! - `support`: the mails the tests deliver and how they read a report. The poller itself
//!   (`mailbridge_tests::poller::Poller`) and the measured run of generated mails
//!   (`mailbridge_tests::measured_poll`, also the benchmark's: tests/tests/bench_poll.rs) are in
//!   the test library.

use std::sync::Arc;
use std::time::Duration;

use mailbridge::error::{Classify as _, ErrorClass};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::{DedupeRecord, MailboxStatus, StateStore};
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::ticket_sink::{
    TICKET_PAYLOAD_SCHEMA, TicketPayload, TicketSink, TicketSinkError, WebhookAuth,
    WebhookTicketSink,
};
use mailbridge_tests::poller::{Poller, fast_retry};
use mailbridge_tests::{dynamodb, stack, unique, unique_user};
use poll_mailboxes::sinks::SecretsSinkFactory;
use tokio::time::Instant;

mod after_actions;
mod bootstrap;
mod dedupe_and_crashes;
mod heartbeat;
mod machine_mail;
mod memory_bound;
mod sign_in;
mod state_records;
mod support;
mod ticket_api_failures;
mod tickets;
mod webhook_sink;

use support::*;
