//! `hello-lambda`: the floor for the init-time benchmark (`infra/bench/init-time.sh`).
//!
//! The smallest useful Lambda function on the same `lambda_runtime` and tokio as the real
//! bootstraps, built with the same profile: whatever the real functions take longer than this
//! to reach their first `GET /runtime/invocation/next` is their own init work.

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<_, lambda_runtime::Error>(json!({ "hello": event.payload }))
    }))
    .await
}
