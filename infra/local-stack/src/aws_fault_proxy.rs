//! A fault-injecting HTTP proxy in front of moto, for the AWS JSON protocol (Secrets Manager).
//!
//! Point an SDK client at [`AwsFaultProxy::endpoint_url`] instead of moto: every request is
//! forwarded to moto unchanged (moto does not check SigV4 signatures, so a re-sent request is
//! fine), except the ones a test asked to fail. Faults are **scoped to one secret id** the test
//! owns, per operation (`X-Amz-Target: secretsmanager.<Operation>`), and counted down: "answer
//! the next N `GetSecretValue` calls on secret S with `ThrottlingException`". Every call is
//! recorded (operation, secret id, throttled or not, when), so a test can see the retries and
//! the backoff between them.
//!
//! A second fault loses the answer: the request reaches moto (the write happens), the client
//! gets `InternalServiceError` (HTTP 500) instead of moto's answer, as when a connection drops
//! after the server acted. A client that retries must not write twice.
//!
//! The throttling answer has the real AWS shape (JSON 1.1 protocol): HTTP 400,
//! `Content-Type: application/x-amz-json-1.1`, `x-amzn-RequestId`, and the body
//! `{"__type":"ThrottlingException","message":"Rate exceeded"}`, so the SDK's own error
//! classification (and retry policy) treats it exactly as it would on AWS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct ProxyCall {
    /// The operation (`GetSecretValue`, ...), from `X-Amz-Target`.
    pub operation: String,
    /// `SecretId` of the request body, when it has one.
    pub secret_id: Option<String>,
    /// Answered with `ThrottlingException` instead of forwarded.
    pub throttled: bool,
    /// Forwarded, but moto's answer was replaced by `InternalServiceError`.
    pub answer_lost: bool,
    /// `ClientRequestToken` of the request body, when it has one.
    pub client_request_token: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Faults {
    /// (operation, secret id) → throttled answers left.
    throttle: HashMap<(String, String), u32>,
    /// (operation, secret id) → answers left to lose after forwarding.
    lose_answer: HashMap<(String, String), u32>,
    calls: Vec<ProxyCall>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    faults: Arc<Mutex<Faults>>,
}

/// The running proxy (serves until the process ends).
pub struct AwsFaultProxy {
    /// `http://127.0.0.1:<port>`: use as the SDK's endpoint URL.
    pub endpoint_url: String,
    faults: Arc<Mutex<Faults>>,
}

impl AwsFaultProxy {
    /// Listen on a free 127.0.0.1 port and forward to `upstream` (moto's endpoint URL).
    pub async fn start(upstream: &str) -> anyhow::Result<AwsFaultProxy> {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            faults: faults.clone(),
        };
        let app = axum::Router::new().fallback(proxy).with_state(state);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "aws fault proxy stopped");
            }
        });
        Ok(AwsFaultProxy {
            endpoint_url: format!("http://{addr}"),
            faults,
        })
    }

    /// Answer the next `times` calls of `operation` (e.g. `GetSecretValue`) on `secret_id` with
    /// `ThrottlingException` (`u32::MAX`: until [`AwsFaultProxy::stop_throttling`]).
    pub fn throttle(&self, operation: &str, secret_id: &str, times: u32) {
        self.faults
            .lock()
            .expect("proxy lock")
            .throttle
            .insert((operation.to_string(), secret_id.to_string()), times);
    }

    /// Forward the next `times` calls of `operation` on `secret_id` to moto, but answer the
    /// client `InternalServiceError` instead of moto's answer (the write happened, the client
    /// cannot know).
    pub fn lose_answers(&self, operation: &str, secret_id: &str, times: u32) {
        self.faults
            .lock()
            .expect("proxy lock")
            .lose_answer
            .insert((operation.to_string(), secret_id.to_string()), times);
    }

    /// Forward everything on `secret_id` again.
    pub fn stop_throttling(&self, secret_id: &str) {
        self.faults
            .lock()
            .expect("proxy lock")
            .throttle
            .retain(|(_, id), _| id != secret_id);
        self.faults
            .lock()
            .expect("proxy lock")
            .lose_answer
            .retain(|(_, id), _| id != secret_id);
    }

    /// Every call on `secret_id` so far, oldest first.
    pub fn calls(&self, secret_id: &str) -> Vec<ProxyCall> {
        self.faults
            .lock()
            .expect("proxy lock")
            .calls
            .iter()
            .filter(|c| c.secret_id.as_deref() == Some(secret_id))
            .cloned()
            .collect()
    }

    /// Calls of `operation` on `secret_id`: (total, throttled).
    pub fn count(&self, operation: &str, secret_id: &str) -> (usize, usize) {
        let calls: Vec<_> = self
            .calls(secret_id)
            .into_iter()
            .filter(|c| c.operation == operation)
            .collect();
        let throttled = calls.iter().filter(|c| c.throttled).count();
        (calls.len(), throttled)
    }
}

async fn proxy(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_string();
    let request = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let field = |name: &str| {
        request
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|s| s.as_str())
            .map(str::to_string)
    };
    let secret_id = field("SecretId");
    let client_request_token = field("ClientRequestToken");
    let (throttled, answer_lost) = {
        let mut faults = state.faults.lock().expect("proxy lock");
        let key = secret_id.as_ref().map(|id| (operation.clone(), id.clone()));
        let throttled = key
            .as_ref()
            .and_then(|key| faults.throttle.get_mut(key))
            .is_some_and(take_one);
        let answer_lost = !throttled
            && key
                .as_ref()
                .and_then(|key| faults.lose_answer.get_mut(key))
                .is_some_and(take_one);
        faults.calls.push(ProxyCall {
            operation: operation.clone(),
            secret_id: secret_id.clone(),
            throttled,
            answer_lost,
            client_request_token,
            at: Instant::now(),
        });
        (throttled, answer_lost)
    };
    if throttled {
        tracing::info!(operation, secret_id = ?secret_id, "aws fault proxy: ThrottlingException");
        return (
            StatusCode::BAD_REQUEST,
            [
                ("content-type", "application/x-amz-json-1.1".to_string()),
                ("x-amzn-requestid", uuid::Uuid::new_v4().to_string()),
            ],
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        )
            .into_response();
    }
    let answer = crate::upstream::forward(
        &state.http,
        &state.upstream,
        "aws fault proxy",
        method,
        &uri,
        &headers,
        body,
    )
    .await;
    if answer_lost {
        tracing::info!(operation, secret_id = ?secret_id, status = %answer.status(), "aws fault proxy: answer lost");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [
                ("content-type", "application/x-amz-json-1.1".to_string()),
                ("x-amzn-requestid", uuid::Uuid::new_v4().to_string()),
            ],
            r#"{"__type":"InternalServiceError","message":"An error occurred on the server side."}"#,
        )
            .into_response();
    }
    answer
}

/// Count one use of a fault down; false when none is left (`u32::MAX` never runs out).
fn take_one(left: &mut u32) -> bool {
    if *left == 0 {
        return false;
    }
    if *left != u32::MAX {
        *left -= 1;
    }
    true
}
