//! Lambda glue only: build clients once per cold start, then hand each event to the library.
//!
//! Cold start (init): settings from the environment (a missing or invalid variable fails init),
//! the AWS config, the Graph client, the token service (Secrets Manager + identity platform,
//! with its access-token cache), the idempotency store, the DLQ and visibility adapters. No
//! network in init: the thread key is read by the first invocation (`mailbridge::lambda`); when
//! that fails the batch goes back to the queue. A warm invocation with a live cached token
//! touches neither Secrets Manager nor the token endpoint. The AWS SDK clients are built once
//! per process, on their first use (`mailbridge::aws::LazyClient`): building one parses that
//! service's copy of the AWS partitions table, which a cold start should pay only for the
//! services it calls.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use mailbridge::aws::LazyClient;
use mailbridge::lambda::{Function, FunctionError, WithThreadKey};
use send_notifications::ports::{SqsParking, SqsVisibility};
use send_notifications::settings::Settings;
use send_notifications::{Deps, process_batch};

const FUNCTION: Function = Function {
    name: "send-notifications",
    doing: "handle the batch",
};

/// Init: settings and clients, no network.
async fn prepare() -> Result<WithThreadKey<Deps>, FunctionError> {
    let settings = Settings::from_env().map_err(FunctionError::configuration)?;
    let aws = mailbridge::aws::load_config()
        .await
        .map_err(FunctionError::configuration)?;
    let tokens = mailbridge::token::TokenService::production(&aws, settings.tokens.clone())
        .map_err(|e| FunctionError::configuration(format!("token service: {e}")))?;
    let graph = mailbridge::graph::GraphClient::new(&settings.graph_url)
        .map_err(|e| FunctionError::configuration(format!("MAILBRIDGE_GRAPH_URL: {e}")))?;
    // SQS is used only when a message is parked or its visibility changed; S3 only for MIME
    // notifications sent by reference.
    let sqs = LazyClient::new(&aws, aws_sdk_sqs::Client::new);
    let tokens = Arc::new(tokens);
    let mail = Arc::new(graph);
    let idempotency = Arc::new(mailbridge::state_table::DynamoIdempotencyStore::new(
        LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
        settings.state_table.clone(),
    ));
    let messages = Arc::new(mailbridge::message_store::S3MessageStore::new(
        LazyClient::new(&aws, mailbridge::message_store::s3_client),
    ));
    let parking = Arc::new(SqsParking::new(sqs.clone(), settings.dlq_url.clone()));
    let visibility = Arc::new(SqsVisibility::new(sqs));
    let secrets = LazyClient::new(&aws, aws_sdk_secretsmanager::Client::new);
    let batch = settings.batch;
    Ok(WithThreadKey::new(
        secrets,
        settings.thread_key_secret,
        move |thread_key| Deps {
            tokens: tokens.clone(),
            mail: mail.clone(),
            idempotency: idempotency.clone(),
            messages: messages.clone(),
            parking: parking.clone(),
            visibility: visibility.clone(),
            thread_key,
            settings: batch.clone(),
        },
    ))
}

async fn send(
    deps: &WithThreadKey<Deps>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, FunctionError> {
    let deps = deps.get().await?;
    // Without every messageId no partial failure can be reported: SQS retries the whole batch.
    if let Some(index) = event
        .payload
        .records
        .iter()
        .position(|r| r.message_id.is_none())
    {
        return Err(FunctionError::new(
            "MalformedEvent",
            format!("SQS record {index} has no messageId; cannot report partial failures"),
        ));
    }
    let deadline = mailbridge::lambda::deadline(&event.context);
    let report = process_batch(event.payload, deadline, deps).await;
    println!("{}", report.metrics.emf(FUNCTION.name));
    let expiries = deps.tokens.credential_expiries();
    if let Some(line) =
        mailbridge::token::expiry::emf_line(FUNCTION.name, &expiries, chrono::Utc::now())
    {
        println!("{line}");
    }
    Ok(report.response)
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailbridge::lambda::run(FUNCTION, prepare(), send).await
}
