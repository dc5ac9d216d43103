//! Fault-matrix rows not covered by the function helpers' tests (see RELIABILITY.md), one module
//! per subject:
//!
//! - `cold_start`: poll-mailboxes' cold start with a missing or invalid variable, send-notifications'
//!   with an empty endpoint or an unreachable Secrets Manager;
//! - `secrets`: Secrets Manager throttling (through `local_stack::aws_fault_proxy`), a malformed or
//!   missing ticket API secret, an account secret deleted while the poller runs;
//! - `dead_letter_queue`: the DLQ unavailable while a message must be parked;
//! - `graph_answers`: Graph 503s and connection resets inside a batch, a sending quota, a full
//!   sender mailbox;
//! - `send_crashes`: crashes and ambiguous answers on the send path (after the claim, after Graph
//!   accepted, a timeout after acceptance);
//! - `imap_inbound`: a UIDVALIDITY change with already-ticketed mail restored, a configured folder
//!   that does not exist, the IMAP connection cut mid-FETCH and mid-MOVE;
//! - `tls`: an IMAP server or HTTPS endpoint whose certificate is not trusted or names another host;
//! - `support`: what they share (accounts, a poller, SQS events, the crash-injecting ports).
//!
//! Each test owns its queue, table, tenant, IMAP user and ticket sink path, so they run in
//! parallel on the shared stack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use mailbridge::graph::GraphClient;
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::DynamoIdempotencyStore;
use mailbridge::state_table::MailboxStatus;
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::thread_key::ThreadKey;
use mailbridge::token::{
    AccountSecret, IdentityClient, SecretsManagerStore, TokenService, TokenServiceConfig,
};
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, dynamodb, put_secret, sqs, stack, unique,
};
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use poll_mailboxes::{PollDeps, PollReport};
use send_notifications::ports::{SqsParking, SqsVisibility};
use send_notifications::settings::BatchSettings;
use send_notifications::{Deps, Outcome, process_batch};
use serde_json::json;
use tokio::time::Instant;

mod cold_start;
mod dead_letter_queue;
mod graph_answers;
mod imap_inbound;
mod secrets;
mod send_crashes;
mod support;
mod tls;

use support::*;
