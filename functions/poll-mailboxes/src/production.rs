//! The production dependencies: real clients built from the function's [`Settings`], once per
//! cold start, without touching the network (the thread key is read by the first invocation).

use std::sync::Arc;

use mailbridge::aws::LazyClient;
use mailbridge::lambda::{FunctionError, WithThreadKey};
use mailbridge::state_table::DynamoStateStore;

use crate::PollDeps;
use crate::convert::ParseContext;
use crate::graph_adapter::{GraphConnector, ProtocolConnector};
use crate::memory::MemoryBudget;
use crate::push::PushDeps;
use crate::settings::Settings;

/// What init builds: the poll loop's dependencies (complete once the thread key is read) and
/// the poll-request gates of Graph change notifications (SQS events).
pub struct Poller {
    /// The poll loop's dependencies.
    pub deps: WithThreadKey<PollDeps>,
    /// Poll requests and subscriptions.
    pub push: PushDeps,
}

impl Poller {
    /// The real adapters for `settings`, with AWS clients from `aws`.
    pub fn production(
        settings: Settings,
        aws: &mailbridge::aws::SdkConfig,
    ) -> Result<Self, FunctionError> {
        let secrets = LazyClient::new(aws, aws_sdk_secretsmanager::Client::new);
        let tokens = mailbridge::token::TokenService::production(aws, settings.tokens.clone())
            .map_err(FunctionError::configuration)?;
        let imap = crate::imap_adapter::ImapConnector::new(
            settings.imap_ca_file.as_deref(),
            settings.imap_timeout,
        )
        .map_err(|e| FunctionError::configuration(format!("MAILBRIDGE_IMAP_CA_FILE: {e}")))?;
        let http = mailbridge::http::default_client().map_err(FunctionError::configuration)?;
        mailbridge::graph::GraphClient::with_http(http.clone(), &settings.graph_url)
            .map_err(|e| FunctionError::configuration(format!("MAILBRIDGE_GRAPH_URL: {e}")))?;
        let state = Arc::new(DynamoStateStore::new(
            LazyClient::new(aws, aws_sdk_dynamodb::Client::new),
            &settings.state_table,
        ));
        let graph = GraphConnector::new(
            http.clone(),
            &settings.graph_url,
            state.clone(),
            settings.imap_timeout,
        );
        let sinks = crate::sinks::SecretsSinkFactory::new(
            http.clone(),
            secrets.clone(),
            Default::default(),
        );
        let deps = PollDeps {
            tokens: Arc::new(tokens),
            connector: Arc::new(ProtocolConnector {
                imap: Arc::new(imap),
                graph: Arc::new(graph),
            }),
            state,
            sinks: Arc::new(sinks),
            parse: ParseContext { thread_key: None },
            max_concurrent_mailboxes: settings.max_concurrent_mailboxes,
            deadline_margin: settings.deadline_margin,
            dedupe_ttl: settings.dedupe_ttl,
            targets: settings.targets,
            memory: Arc::new(MemoryBudget::for_function(settings.function_memory_mb)),
        };
        // Poll requests from Graph change notifications (an SQS event): their gates live in the
        // state table; with MAILBRIDGE_NOTIFICATION_URL also the subscriptions (scheduled runs
        // keep them).
        let push_store = Arc::new(mailbridge::state_table::DynamoStateStore::new(
            LazyClient::new(aws, aws_sdk_dynamodb::Client::new),
            &settings.state_table,
        ));
        let push = PushDeps {
            gate: push_store.clone(),
            subscriptions: settings.notification_url.clone().map(|notification_url| {
                crate::push::SubscriptionDeps {
                    store: push_store,
                    api: Arc::new(crate::push::GraphSubscriptionApi::new(
                        http.clone(),
                        &settings.graph_url,
                        settings.imap_timeout,
                    )),
                    notification_url,
                }
            }),
        };
        let deps = WithThreadKey::new(secrets, settings.thread_key_secret, move |key| PollDeps {
            parse: ParseContext {
                thread_key: Some(key.expose().to_vec()),
            },
            ..deps.clone()
        });
        Ok(Poller { deps, push })
    }
}
