//! The real poller over IMAP against the local stack, as the helpdesk tests run it: tokens
//! from the identity stand-in, mail from the shared Dovecot, the state table and sink secrets
//! in moto.

use std::sync::Arc;
use std::time::Duration;

use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::DynamoStateStore;
use mailbridge::token::identity::{IdentityClient, default_retry_policy};
use mailbridge::token::service::{TokenService, TokenServiceConfig};
use mailbridge::token::store::SecretsManagerStore;
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;

/// What sets one test's poller apart.
#[derive(Clone, Debug)]
pub struct ImapPoller<'a> {
    /// The state table.
    pub table: &'a str,
    /// The thread-marker key.
    pub thread_key: &'a [u8],
    /// How many mailboxes one run polls at once.
    pub max_concurrent_mailboxes: usize,
    /// The ticket sinks' retry policy.
    pub sink_retry: RetryPolicy,
}

impl ImapPoller<'_> {
    /// The poller's dependencies (sign-in retries quickly: 50 ms to 400 ms).
    pub fn deps(&self) -> PollDeps {
        let stack = crate::stack();
        let aws = stack.moto().sdk_config();
        let identity = IdentityClient::new(mailbridge::http::default_client().unwrap())
            .with_retry_policy(RetryPolicy {
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(400),
                ..default_retry_policy()
            });
        let tokens = TokenService::new(
            Arc::new(SecretsManagerStore::from_conf(&aws)),
            identity,
            TokenServiceConfig {
                default_timeout: Duration::from_secs(10),
                ..TokenServiceConfig::default()
            },
        );
        let dovecot = stack.dovecot();
        PollDeps {
            tokens: Arc::new(tokens),
            connector: Arc::new(
                ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10)).unwrap(),
            ),
            state: Arc::new(DynamoStateStore::new(crate::dynamodb(), self.table)),
            sinks: Arc::new(SecretsSinkFactory::new(
                reqwest::Client::new(),
                aws_sdk_secretsmanager::Client::new(&aws),
                self.sink_retry.clone(),
            )),
            parse: ParseContext {
                thread_key: Some(self.thread_key.to_vec()),
            },
            max_concurrent_mailboxes: self.max_concurrent_mailboxes,
            deadline_margin: Duration::from_secs(2),
            dedupe_ttl: Duration::from_secs(86_400),
            targets: mailbridge::mailbox::TargetPolicy::local(),
            memory: Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
        }
    }
}
