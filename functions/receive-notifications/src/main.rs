//! Lambda glue only: the Function URL event → [`Receiver::receive`] → the Function URL answer,
//! plus one EMF metrics line per request.
//!
//! Environment: `MAILBRIDGE_STATE_TABLE`, `MAILBRIDGE_POLL_REQUEST_QUEUE_URL`,
//! `MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS` (see [`Settings`]) and the standard AWS variables.
//! No network in init; the SDK clients are built on first use.

use std::sync::Arc;

use aws_lambda_events::event::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use base64::Engine as _;
use lambda_runtime::LambdaEvent;
use mailbridge::aws::LazyClient;
use mailbridge::lambda::{Function, FunctionError};
use mailbridge::state_table::DynamoStateStore;
use receive_notifications::{Receiver, Request, Settings, SqsPollQueue, emf_line};

async fn prepare() -> Result<Receiver, FunctionError> {
    let settings = Settings::from_env().map_err(FunctionError::configuration)?;
    let aws = mailbridge::aws::load_config()
        .await
        .map_err(FunctionError::configuration)?;
    let store = Arc::new(DynamoStateStore::new(
        LazyClient::new(&aws, aws_sdk_dynamodb::Client::new),
        &settings.state_table,
    ));
    Ok(Receiver {
        subscriptions: store.clone(),
        gate: store,
        queue: Arc::new(SqsPollQueue::new(
            LazyClient::new(&aws, aws_sdk_sqs::Client::new),
            &settings.poll_request_queue_url,
        )),
        poll_delay: settings.poll_delay,
    })
}

/// The Function URL event as a plain request. A body over the limit is not decoded.
fn request_from(event: LambdaFunctionUrlRequest) -> Request {
    let method = event
        .request_context
        .http
        .method
        .clone()
        .unwrap_or_default();
    let raw_query = event.raw_query_string.clone().unwrap_or_default();
    let body = event.body.unwrap_or_default();
    let body = if event.is_base64_encoded
        && body.len() <= receive_notifications::MAX_BODY_BYTES / 3 * 4 + 4
    {
        base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .unwrap_or_else(|_| body.into_bytes())
    } else {
        body.into_bytes()
    };
    Request {
        method,
        raw_query,
        body,
    }
}

async fn receive(
    receiver: &Receiver,
    event: LambdaEvent<LambdaFunctionUrlRequest>,
) -> Result<LambdaFunctionUrlResponse, FunctionError> {
    let request = request_from(event.payload);
    let (response, outcome) = receiver.receive(&request).await;
    println!(
        "{}",
        emf_line(
            &outcome,
            response.status,
            chrono::Utc::now().timestamp_millis()
        )
    );
    let mut headers = aws_lambda_events::http::HeaderMap::new();
    headers.insert(
        "content-type",
        aws_lambda_events::http::HeaderValue::from_static(response.content_type),
    );
    // the echoed token is never rendered as anything but text
    headers.insert(
        "x-content-type-options",
        aws_lambda_events::http::HeaderValue::from_static("nosniff"),
    );
    let mut answer = LambdaFunctionUrlResponse::default();
    answer.status_code = i64::from(response.status);
    answer.headers = headers;
    answer.body = Some(response.body);
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Function {
        name: "receive-notifications",
        doing: "answer",
    };
    mailbridge::lambda::run(function, prepare(), receive).await
}
