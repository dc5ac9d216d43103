//! Lambda glue only: build clients once per cold start, then hand each event to the library.
//!
//! Environment: see `poll_mailboxes::settings::Settings` (`MAILBRIDGE_STATE_TABLE`,
//! `MAILBRIDGE_THREAD_KEY_SECRET`, `MAILBRIDGE_MAX_CONCURRENT_MAILBOXES`, ...), the token layer's
//! `MAILBRIDGE_SECRET_PREFIX`, and the standard AWS variables. A missing or invalid variable stops
//! the cold start with an error naming it. No network in init; the thread key is read by the
//! first invocation (`mailbridge::lambda`, which also gives the error shapes).

use std::sync::Arc;

use lambda_runtime::LambdaEvent;
use mailbridge::aws::LazyClient;
use mailbridge::lambda::{Function, FunctionError, WithThreadKey};
use mailbridge::state_table::DynamoStateStore;
use poll_mailboxes::graph_adapter::{GraphConnector, ProtocolConnector};
use poll_mailboxes::handler::{HandlerError, handle_event};
use poll_mailboxes::memory::MemoryBudget;
use poll_mailboxes::push::PushDeps;
use poll_mailboxes::{PollDeps, convert::ParseContext, settings::Settings};

/// What init builds: the poll loop's dependencies (complete once the thread key is read) and
/// the poll-request gates of Graph change notifications (SQS events).
struct Poller {
    deps: WithThreadKey<PollDeps>,
    push: PushDeps,
}

/// Init: settings and clients, no network.
async fn prepare() -> Result<Poller, FunctionError> {
    let settings = Settings::from_env().map_err(FunctionError::configuration)?;
    let aws = mailbridge::aws::load_config()
        .await
        .map_err(FunctionError::configuration)?;
    let secrets = LazyClient::new(&aws, aws_sdk_secretsmanager::Client::new);
    let tokens = mailbridge::token::TokenService::production(&aws, settings.tokens.clone())
        .map_err(FunctionError::configuration)?;
    let imap = poll_mailboxes::imap_adapter::ImapConnector::new(
        settings.imap_ca_file.as_deref(),
        settings.imap_timeout,
    )
    .map_err(|e| FunctionError::configuration(format!("MAILBRIDGE_IMAP_CA_FILE: {e}")))?;
    let http = mailbridge::http::default_client().map_err(FunctionError::configuration)?;
    mailbridge::graph::GraphClient::with_http(http.clone(), &settings.graph_url)
        .map_err(|e| FunctionError::configuration(format!("MAILBRIDGE_GRAPH_URL: {e}")))?;
    let state = Arc::new(DynamoStateStore::new(
        LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
        &settings.state_table,
    ));
    let graph = GraphConnector::new(
        http.clone(),
        &settings.graph_url,
        state.clone(),
        settings.imap_timeout,
    );
    let sinks = poll_mailboxes::sinks::SecretsSinkFactory::new(
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
        LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
        &settings.state_table,
    ));
    let push = PushDeps {
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
    };
    let deps = WithThreadKey::new(secrets, settings.thread_key_secret, move |key| PollDeps {
        parse: ParseContext {
            thread_key: Some(key.expose().to_vec()),
        },
        ..deps.clone()
    });
    Ok(Poller { deps, push })
}

async fn poll(
    poller: &Poller,
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, FunctionError> {
    let deadline = mailbridge::lambda::deadline(&event.context);
    let deps = poller.deps.get().await?;
    let answer = handle_event(deps, Some(&poller.push), &event.payload, deadline)
        .await
        .map_err(|e| match e {
            HandlerError::Event(_) => FunctionError::new("InvalidEvent", e),
            HandlerError::Store(_) => FunctionError::new("StateTableUnavailable", e),
        });
    let expiries = deps.tokens.credential_expiries();
    if let Some(line) =
        mailbridge::token::expiry::emf_line("poll-mailboxes", &expiries, chrono::Utc::now())
    {
        println!("{line}");
    }
    answer
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Function {
        name: "poll-mailboxes",
        doing: "poll",
    };
    mailbridge::lambda::run(function, prepare(), poll).await
}
