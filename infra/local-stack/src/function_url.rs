//! A Lambda Function URL in front of a function run by [`crate::runtime_api::RuntimeApi`]: each
//! HTTP request on 127.0.0.1 becomes a Function URL event (payload format 2.0) handed to the
//! real bootstrap, and its answer (`statusCode`, `headers`, `body`, `isBase64Encoded`) becomes
//! the HTTP answer, as Lambda's Function URL service does. Requests queue for the one sandbox
//! like invocations of one warm Lambda instance. A function error or timeout is a 502, as
//! Lambda answers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::runtime_api::{InvocationResult, RuntimeApi};

/// How long one request may run (the function's timeout).
pub const INVOCATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Function URL.
#[derive(Clone, Debug)]
pub struct FunctionUrl {
    /// e.g. `http://127.0.0.1:41236/`.
    pub url: String,
}

impl FunctionUrl {
    /// Serve `api`'s function on 127.0.0.1 (a free port) on the current tokio runtime.
    pub async fn start(api: Arc<RuntimeApi>) -> anyhow::Result<FunctionUrl> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let app = Router::new().fallback(forward).with_state(api);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "function URL stopped");
            }
        });
        Ok(FunctionUrl { url })
    }
}

async fn forward(
    State(api): State<Arc<RuntimeApi>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut header_json = serde_json::Map::new();
    for (name, value) in &headers {
        if let Ok(v) = value.to_str() {
            header_json.insert(name.as_str().to_owned(), v.into());
        }
    }
    let text = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/") || ct.contains("json") || ct.contains("xml"));
    let (body, base64) = match (body.is_empty(), text, std::str::from_utf8(&body)) {
        (true, _, _) => (serde_json::Value::Null, false),
        (false, true, Ok(s)) => (s.into(), false),
        _ => (
            base64::engine::general_purpose::STANDARD
                .encode(&body)
                .into(),
            true,
        ),
    };
    let query: serde_json::Map<String, serde_json::Value> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned().into()))
            .collect();
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": uri.path(),
        "rawQueryString": uri.query().unwrap_or(""),
        "headers": header_json,
        "queryStringParameters": if query.is_empty() { serde_json::Value::Null } else { query.into() },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": "127.0.0.1",
            "domainPrefix": "local",
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": chrono::Utc::now().timestamp_millis(),
            "http": {
                "method": method.as_str(),
                "path": uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
            },
        },
        "body": body,
        "isBase64Encoded": base64,
    });
    let outcome = match api.invoke(event, INVOCATION_TIMEOUT).await {
        Ok(outcome) => outcome,
        Err(e) => return bad_gateway(&e.to_string()),
    };
    let answer = match outcome.result {
        InvocationResult::Response(answer) => answer,
        other => return bad_gateway(&format!("{other:?}")),
    };
    let status = answer["statusCode"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let body = match answer["body"].as_str() {
        Some(b) if answer["isBase64Encoded"] == true => base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default(),
        Some(b) => b.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let mut response = (status, body).into_response();
    if let Some(h) = answer["headers"].as_object() {
        for (name, value) in h {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

fn bad_gateway(detail: &str) -> Response {
    tracing::warn!(detail, "function URL: the invocation failed");
    (
        StatusCode::BAD_GATEWAY,
        [("content-type", "application/json")],
        r#"{"Message":"Internal Server Error"}"#,
    )
        .into_response()
}
