//! A counting reverse proxy in front of moto, for benchmarks: point a function's
//! `AWS_ENDPOINT_URL` at [`AwsCallCounter::endpoint_url`] and read how many calls it made per
//! operation (`secretsmanager.GetSecretValue`, `DynamoDB_20120810.GetItem`,
//! `AmazonSQS.SendMessage`, ...). The operation is the `X-Amz-Target` header (JSON protocols) or
//! the `Action` form field (query protocol). Requests are forwarded unchanged (moto does not
//! check signatures, so the changed host does not matter).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;

/// Calls per operation.
pub type CallCounts = BTreeMap<String, u64>;

/// The running proxy.
pub struct AwsCallCounter {
    /// `http://127.0.0.1:<port>`.
    pub endpoint_url: String,
    counts: Arc<Mutex<CallCounts>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    counts: Arc<Mutex<CallCounts>>,
}

impl AwsCallCounter {
    /// Serve on a free 127.0.0.1 port, forwarding to `upstream` (moto's endpoint URL).
    pub async fn start(upstream: &str) -> anyhow::Result<AwsCallCounter> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let endpoint_url = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(Mutex::new(CallCounts::new()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            counts: counts.clone(),
        };
        let app = Router::new().fallback(forward).with_state(state);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "AWS call counter stopped");
            }
        });
        Ok(AwsCallCounter {
            endpoint_url,
            counts,
            server,
        })
    }

    /// Calls per operation so far.
    pub fn counts(&self) -> CallCounts {
        self.counts.lock().expect("lock").clone()
    }

    /// Calls per operation made after `before` was taken.
    pub fn since(&self, before: &CallCounts) -> CallCounts {
        self.counts()
            .into_iter()
            .filter_map(|(op, n)| {
                let delta = n - before.get(&op).copied().unwrap_or(0);
                (delta > 0).then_some((op, delta))
            })
            .collect()
    }
}

impl Drop for AwsCallCounter {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `"GetSecretValue×1, GetItem×2"` (service prefixes dropped), or `"none"`.
pub fn summarize(counts: &CallCounts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(op, n)| {
            let short = op.rsplit('.').next().unwrap_or(op);
            format!("{short}×{n}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            url::form_urlencoded::parse(&body)
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| format!("query.{v}"))
        })
        .unwrap_or_else(|| format!("{method} {}", uri.path()));
    *state
        .counts
        .lock()
        .expect("lock")
        .entry(operation)
        .or_default() += 1;
    crate::upstream::forward(
        &state.http,
        &state.upstream,
        "AWS call counter",
        method,
        &uri,
        &headers,
        body,
    )
    .await
}
