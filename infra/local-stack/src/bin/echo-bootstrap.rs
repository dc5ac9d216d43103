//! `echo-bootstrap`: a tiny Lambda function (real `lambda_runtime`) for checking the Runtime API
//! emulator. It answers `{"echo": <event>}`; `{"fail": "msg"}` returns a function error,
//! `{"sleep_ms": n}` sleeps first, `{"exit": code}` exits the process mid-invocation.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let payload = event.payload;
        if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        if let Some(code) = payload.get("exit").and_then(Value::as_i64) {
            std::process::exit(code as i32);
        }
        if let Some(message) = payload.get("fail").and_then(Value::as_str) {
            return Err(Diagnostic {
                error_type: "EchoFailure".into(),
                error_message: message.into(),
            });
        }
        Ok(json!({ "echo": payload, "request_id": event.context.request_id }))
    }))
    .await
}
