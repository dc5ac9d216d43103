//! send-notifications on the local stack: tokens from the identity stand-in (account secrets in
//! moto), Graph stand-in, idempotency records in a state table, message bodies in S3, parking
//! on a dead-letter queue.

use std::sync::Arc;

use mailbridge::graph::GraphClient;
use mailbridge::message_store::S3MessageStore;
use mailbridge::state_table::DynamoIdempotencyStore;
use mailbridge::thread_key::ThreadKey;
use mailbridge::token::AccessTokenSource;
use mailbridge::token::service::{TokenService, TokenServiceConfig};
use mailbridge::token::store::SecretsManagerStore;
use send_notifications::Deps;
use send_notifications::ports::{SqsParking, SqsVisibility};
use send_notifications::settings::BatchSettings;

/// The token service the Lambda runs: account secrets in moto, the identity stand-in.
pub fn stack_tokens() -> Arc<TokenService> {
    let aws = crate::aws_config();
    Arc::new(TokenService::new(
        Arc::new(SecretsManagerStore::from_conf(&aws)),
        mailbridge::token::IdentityClient::new(mailbridge::http::default_client().unwrap()),
        TokenServiceConfig::default(),
    ))
}

/// What sets one test's sender apart.
pub struct Sender<'a> {
    /// Where the tokens come from ([`stack_tokens`] unless the test watches them).
    pub tokens: Arc<dyn AccessTokenSource>,
    /// Graph's `v1.0` URL (the shared stand-in's unless the test has its own).
    pub graph_url: String,
    /// The state table of the idempotency records.
    pub table: &'a str,
    /// Where failed notifications are parked.
    pub dlq_url: &'a str,
    /// The thread-marker key's secret value.
    pub thread_key: &'a str,
}

impl<'a> Sender<'a> {
    /// The sender as the Lambda runs on the local stack: [`stack_tokens`] and the shared Graph
    /// stand-in.
    pub fn on_stack(table: &'a str, dlq_url: &'a str, thread_key: &'a str) -> Self {
        Sender {
            tokens: stack_tokens(),
            graph_url: crate::stack().graph().v1_url(),
            table,
            dlq_url,
            thread_key,
        }
    }

    /// The sender's dependencies, run with `settings`.
    pub fn deps(&self, settings: BatchSettings) -> Deps {
        let aws = crate::aws_config();
        let sqs = aws_sdk_sqs::Client::new(&aws);
        Deps {
            tokens: self.tokens.clone(),
            mail: Arc::new(GraphClient::new(&self.graph_url).expect("graph client")),
            idempotency: Arc::new(DynamoIdempotencyStore::new(
                aws_sdk_dynamodb::Client::new(&aws),
                self.table.to_owned(),
            )),
            messages: Arc::new(S3MessageStore::new(crate::s3())),
            parking: Arc::new(SqsParking::new(sqs.clone(), self.dlq_url.to_owned())),
            visibility: Arc::new(SqsVisibility::new(sqs)),
            thread_key: ThreadKey::from_secret_value(self.thread_key).expect("thread key"),
            settings,
        }
    }
}
