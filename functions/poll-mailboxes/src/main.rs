//! Lambda glue only: build clients once per cold start, then hand each event to the library.
//!
//! Environment: see `poll_mailboxes::settings::Settings` (`MAILBRIDGE_STATE_TABLE`,
//! `MAILBRIDGE_THREAD_KEY_SECRET`, `MAILBRIDGE_MAX_CONCURRENT_MAILBOXES`, ...), the token layer's
//! `MAILBRIDGE_SECRET_PREFIX`, and the standard AWS variables. A missing or invalid variable stops
//! the cold start with an error naming it.
//!
//! No network in init: the thread key (one Secrets Manager read) is loaded by the first
//! invocation and kept; if that read fails the invocation fails with `ThreadKeyUnavailable` and
//! the next one tries again. The AWS SDK clients are built on their first use, once per process
//! (`mailbridge::aws::LazyClient`).

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use mailbridge::aws::LazyClient;
use mailbridge::state_table::DynamoStateStore;
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::graph_adapter::{GraphConnector, ProtocolConnector};
use poll_mailboxes::handler::{HandlerError, handle_event};
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::settings::Settings;
use poll_mailboxes::sinks::SecretsSinkFactory;
use serde_json::Value;

/// A cold-start failure, reported to Lambda as an init error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StartupError(String);

fn startup(e: impl std::fmt::Display) -> StartupError {
    StartupError(e.to_string())
}

/// Everything built in init, and the handler's dependencies once the thread key is loaded.
struct Prepared {
    settings: Settings,
    secrets: LazyClient<aws_sdk_secretsmanager::Client>,
    tokens: Arc<mailbridge::token::TokenService>,
    connector: Arc<ProtocolConnector>,
    state: Arc<DynamoStateStore>,
    sinks: Arc<SecretsSinkFactory>,
    memory: Arc<poll_mailboxes::memory::MemoryBudget>,
    push: Option<poll_mailboxes::push::PushDeps>,
    deps: tokio::sync::OnceCell<PollDeps>,
}

/// Init: settings and clients, no network.
async fn prepare() -> Result<Prepared, StartupError> {
    let settings = Settings::from_lookup(|k| std::env::var(k).ok()).map_err(startup)?;
    let aws = mailbridge::aws::load_config().await.map_err(startup)?;
    // SDK clients are built on first use (`LazyClient`), not in init.
    let secrets = LazyClient::new(&aws, aws_sdk_secretsmanager::Client::new);
    let tokens = mailbridge::token::TokenService::from_env(&aws).map_err(startup)?;
    let connector = ImapConnector::new(settings.imap_ca_file.as_deref(), settings.imap_timeout)
        .map_err(|e| StartupError(format!("MAILBRIDGE_IMAP_CA_FILE: {e}")))?;
    let http = mailbridge::http::default_client().map_err(startup)?;
    let state = Arc::new(DynamoStateStore::new(
        LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
        &settings.state_table,
    ));
    mailbridge::graph::GraphClient::with_http(http.clone(), &settings.graph_url)
        .map_err(|e| StartupError(format!("MAILBRIDGE_GRAPH_URL: {e}")))?;
    let connector = ProtocolConnector {
        imap: Arc::new(connector),
        graph: Arc::new(GraphConnector::new(
            http.clone(),
            &settings.graph_url,
            state.clone(),
            settings.imap_timeout,
        )),
    };
    let memory = match settings.function_memory_mb {
        Some(mb) => poll_mailboxes::memory::MemoryBudget::for_function_memory(mb),
        None => poll_mailboxes::memory::MemoryBudget::unlimited(),
    };
    tracing::info!(
        function_memory_mb = settings.function_memory_mb,
        max_message_bytes = memory.max_message_bytes(),
        "mail larger than max_message_bytes (or a mailbox's own limit) becomes a header-only ticket"
    );
    // Poll requests from Graph change notifications (an SQS event): their gates live in the
    // state table;
    // with MAILBRIDGE_NOTIFICATION_URL also the subscriptions (scheduled runs keep them).
    let push_store = Arc::new(mailbridge::push::DynamoPushStore::new(
        LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
        &settings.state_table,
    ));
    let push = Some(poll_mailboxes::push::PushDeps {
        gate: push_store.clone(),
        subscriptions: settings.notification_url.clone().map(|notification_url| {
            poll_mailboxes::push::SubscriptionDeps {
                store: push_store,
                api: Arc::new(poll_mailboxes::push::GraphSubscriptionApi::new(
                    http.clone(),
                    &settings.graph_url,
                    settings.imap_timeout,
                )),
                notification_url,
            }
        }),
    });
    Ok(Prepared {
        push,
        memory: Arc::new(memory),
        tokens: Arc::new(tokens),
        connector: Arc::new(connector),
        state,
        sinks: Arc::new(SecretsSinkFactory::new(
            http,
            secrets.clone(),
            Default::default(),
        )),
        secrets,
        settings,
        deps: tokio::sync::OnceCell::new(),
    })
}

impl Prepared {
    /// The handler's dependencies; the first call reads the thread key (retried by the next
    /// invocation when it fails).
    async fn deps(&self) -> Result<&PollDeps, StartupError> {
        self.deps
            .get_or_try_init(|| async {
                let thread_key = self.thread_key().await?;
                Ok(PollDeps {
                    tokens: self.tokens.clone(),
                    connector: self.connector.clone(),
                    state: self.state.clone(),
                    sinks: self.sinks.clone(),
                    parse: ParseContext {
                        thread_key: Some(thread_key),
                    },
                    max_concurrent_mailboxes: self.settings.max_concurrent_mailboxes,
                    deadline_margin: self.settings.deadline_margin,
                    dedupe_ttl: self.settings.dedupe_ttl,
                    targets: self.settings.targets.clone(),
                    memory: self.memory.clone(),
                })
            })
            .await
    }

    async fn thread_key(&self) -> Result<Vec<u8>, StartupError> {
        mailbridge::thread_key::load(&self.secrets, &self.settings.thread_key_secret)
            .await
            .map(|key| key.expose().to_vec())
            .map_err(|e| StartupError(e.to_string()))
    }
}

fn diagnostic(e: HandlerError) -> Diagnostic {
    let error_type = match &e {
        HandlerError::Event(_) => "InvalidEvent",
        HandlerError::Store(_) => "StateTableUnavailable",
    };
    Diagnostic {
        error_type: error_type.into(),
        error_message: e.to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailbridge::telemetry::init_json_logging();
    let prepared = match prepare().await {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!(error = %e, "poll-mailboxes cannot start");
            return Err(e.into());
        }
    };
    let prepared = &prepared;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deps = prepared.deps().await.map_err(|e| {
            tracing::error!(error = %e, "poll-mailboxes cannot poll");
            Diagnostic {
                error_type: "ThreadKeyUnavailable".into(),
                error_message: e.to_string(),
            }
        })?;
        let (payload, context) = event.into_parts();
        // Lambda's deadline (epoch ms) → a monotonic instant.
        let remaining_ms = (context.deadline as i64 - chrono::Utc::now().timestamp_millis()).max(0);
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(remaining_ms as u64);
        handle_event(deps, prepared.push.as_ref(), &payload, deadline)
            .await
            .map_err(diagnostic)
    }))
    .await
}
