//! Lambda glue only: build clients once per cold start, then hand each event to the library.
//!
//! Cold start (init): settings from the environment (a missing or invalid variable fails init),
//! the AWS config, the Graph client, the token service (Secrets Manager + identity platform,
//! with its access-token cache), the idempotency store, the DLQ and visibility adapters. No
//! network in init: the thread key (one Secrets Manager read) is loaded by the first invocation
//! and kept; if that read fails the invocation fails with `ThreadKeyUnavailable` (the batch goes
//! back to the queue) and the next invocation tries again. A warm invocation with a live cached
//! token touches neither Secrets Manager nor the token endpoint. The AWS SDK clients are built
//! once per process too, but on their first use (`mailbridge::aws::LazyClient`): building one
//! parses that service's copy of the AWS partitions table, which a cold start should pay only
//! for the services it calls.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use mailbridge::aws::LazyClient;
use send_notifications::ports::{SqsParking, SqsVisibility};
use send_notifications::settings::Settings;
use send_notifications::{Deps, process_batch};

/// Startup failures, with a stable `errorType` for CloudWatch and the Lambda console.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error(transparent)]
    Settings(#[from] send_notifications::settings::SettingsError),
    #[error(transparent)]
    Aws(#[from] mailbridge::aws::AwsConfigError),
    #[error("token service: {0}")]
    Tokens(String),
    #[error(transparent)]
    ThreadKey(#[from] mailbridge::thread_key::ThreadKeyError),
}

impl From<StartupError> for Diagnostic {
    fn from(e: StartupError) -> Diagnostic {
        let error_type = match e {
            StartupError::Settings(_) | StartupError::Aws(_) => "ConfigurationError",
            StartupError::Tokens(_) => "ConfigurationError",
            StartupError::ThreadKey(_) => "ThreadKeyUnavailable",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

/// Invocation failures (the whole batch is retried by SQS).
#[derive(Debug, thiserror::Error)]
enum InvocationError {
    #[error("SQS record {index} has no messageId; cannot report partial failures")]
    MissingMessageId { index: usize },
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Diagnostic {
        Diagnostic {
            error_type: "MalformedEvent".into(),
            error_message: e.to_string(),
        }
    }
}

const FUNCTION_NAME: &str = "send-notifications";

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailbridge::telemetry::init_json_logging();
    let prepared = match prepare().await {
        Ok(prepared) => Arc::new(prepared),
        Err(e) => {
            tracing::error!(error = %e, "send-notifications cannot start");
            return Err(e.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let prepared = prepared.clone();
        async move {
            let deps = prepared.deps().await.map_err(|e| {
                tracing::error!(error = %e, "send-notifications cannot handle the batch");
                Diagnostic::from(e)
            })?;
            handle(event, deps).await.map_err(Diagnostic::from)
        }
    }))
    .await
}

/// Everything built in init, and the handler's dependencies once the thread key is loaded.
struct Prepared {
    tokens: Arc<mailbridge::token::TokenService>,
    graph: Arc<mailbridge::graph::GraphClient>,
    idempotency: Arc<mailbridge::state_table::DynamoIdempotencyStore>,
    messages: Arc<mailbridge::message_store::S3MessageStore>,
    parking: Arc<SqsParking>,
    visibility: Arc<SqsVisibility>,
    secrets: LazyClient<aws_sdk_secretsmanager::Client>,
    settings: Settings,
    deps: tokio::sync::OnceCell<Deps>,
}

impl Prepared {
    /// The handler's dependencies; the first call reads the thread key (retried by the next
    /// invocation when it fails).
    async fn deps(&self) -> Result<&Deps, StartupError> {
        self.deps
            .get_or_try_init(|| async {
                let thread_key =
                    mailbridge::thread_key::load(&self.secrets, &self.settings.thread_key_secret)
                        .await?;
                Ok(Deps {
                    tokens: self.tokens.clone(),
                    mail: self.graph.clone(),
                    idempotency: self.idempotency.clone(),
                    messages: self.messages.clone(),
                    parking: self.parking.clone(),
                    visibility: self.visibility.clone(),
                    thread_key,
                    settings: self.settings.batch.clone(),
                })
            })
            .await
    }
}

/// Init: settings and clients, no network.
async fn prepare() -> Result<Prepared, StartupError> {
    let settings = Settings::from_env()?;
    let aws = mailbridge::aws::load_config().await?;
    let tokens = mailbridge::token::TokenService::from_env(&aws)
        .map_err(|e| StartupError::Tokens(e.to_string()))?;
    let graph = mailbridge::graph::GraphClient::new(&settings.graph_url)
        .map_err(|e| StartupError::Tokens(e.to_string()))?;
    // SDK clients are built on first use (`LazyClient`): the SQS one only when a message is
    // parked or its visibility changed, which most cold starts never need.
    let sqs = LazyClient::new(&aws, aws_sdk_sqs::Client::new);
    Ok(Prepared {
        tokens: Arc::new(tokens),
        graph: Arc::new(graph),
        idempotency: Arc::new(mailbridge::state_table::DynamoIdempotencyStore::new(
            LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
            settings.state_table.clone(),
        )),
        // only MIME notifications sent by S3 reference build the S3 client
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            LazyClient::new(&aws, mailbridge::message_store::s3_client),
        )),
        parking: Arc::new(SqsParking::new(sqs.clone(), settings.dlq_url.clone())),
        visibility: Arc::new(SqsVisibility::new(sqs)),
        secrets: LazyClient::new(&aws, aws_sdk_secretsmanager::Client::new),
        settings,
        deps: tokio::sync::OnceCell::new(),
    })
}

async fn handle(
    event: LambdaEvent<SqsEvent>,
    deps: &Deps,
) -> Result<SqsBatchResponse, InvocationError> {
    let LambdaEvent {
        payload: event,
        context,
    } = event;
    if let Some(index) = event.records.iter().position(|r| r.message_id.is_none()) {
        return Err(InvocationError::MissingMessageId { index });
    }
    // Context::deadline is epoch milliseconds; turn it into a monotonic instant.
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let left = std::time::Duration::from_millis(context.deadline.saturating_sub(now_ms));
    let deadline = tokio::time::Instant::now() + left;
    let report = process_batch(event, deadline, deps).await;
    println!("{}", report.metrics.emf(FUNCTION_NAME));
    Ok(report.response)
}
