//! An HTTP proxy in front of a real helpdesk that breaks chosen calls, for the failures a real
//! server cannot be asked to produce on cue:
//!
//! - [`HttpFault::DropAnswer`]: forward the request, let the helpdesk finish it (the ticket is
//!   created), then close the client's connection without an answer: "the helpdesk accepted the
//!   ticket, the answer was lost" (a timeout, a crash of the caller between the two).
//! - [`HttpFault::Status`]: answer with this status without forwarding (a 5xx from a proxy in
//!   front of the helpdesk).
//!
//! Every other request passes through unchanged (method, path, query, headers, body; the
//! answer's status, headers and body). A rule matches a method and an exact path and fires a
//! given number of times. Each proxy forwards to one upstream and is owned by one test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// What to do to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFault {
    /// Forward it, wait for the whole answer, then close the connection without answering.
    DropAnswer,
    /// Answer with this status (and a short text body) without forwarding.
    Status(u16),
}

#[derive(Clone, Debug)]
struct Rule {
    method: Method,
    path: String,
    fault: HttpFault,
    remaining: u32,
}

/// One request that went to the upstream, and how long the upstream took to answer it in full.
#[derive(Clone, Debug)]
pub struct UpstreamCall {
    /// e.g. `POST`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The upstream's status.
    pub status: u16,
    /// From sending the request to the last byte of the answer.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Shared {
    rules: Vec<Rule>,
    log: Vec<String>,
    calls: Vec<UpstreamCall>,
}

#[derive(Clone)]
struct AppState {
    upstream: String,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

/// The running proxy (serves until the runtime that started it ends).
pub struct HttpFaultProxy {
    /// `http://127.0.0.1:<port>`: use it instead of the upstream's base URL.
    pub base_url: String,
    shared: Arc<Mutex<Shared>>,
}

impl HttpFaultProxy {
    /// Listen on a free 127.0.0.1 port, forwarding to `upstream` (e.g. `http://127.0.0.1:8000`).
    pub async fn start(upstream: &str) -> anyhow::Result<HttpFaultProxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = AppState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            shared: shared.clone(),
        };
        let app = Router::new()
            .fallback(forward)
            .layer(DefaultBodyLimit::disable())
            .with_state(state);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP fault proxy stopped");
            }
        });
        Ok(HttpFaultProxy { base_url, shared })
    }

    /// Apply `fault` to the next `times` requests `method path` (exact path, query ignored).
    pub fn arm(&self, method: &str, path: &str, fault: HttpFault, times: u32) {
        let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        self.shared.lock().expect("proxy lock").rules.push(Rule {
            method,
            path: path.to_string(),
            fault,
            remaining: times,
        });
    }

    /// True while a rule still has requests to break.
    pub fn armed(&self) -> bool {
        self.shared
            .lock()
            .expect("proxy lock")
            .rules
            .iter()
            .any(|r| r.remaining > 0)
    }

    /// Every request seen, as `"<METHOD> <path>?<query> -> <status or fault>"`.
    pub fn log(&self) -> Vec<String> {
        self.shared.lock().expect("proxy lock").log.clone()
    }

    /// Every request forwarded, with the upstream's time (for benchmarks: the helpdesk's share).
    pub fn upstream_calls(&self) -> Vec<UpstreamCall> {
        self.shared.lock().expect("proxy lock").calls.clone()
    }
}

fn take_fault(shared: &Mutex<Shared>, method: &Method, path: &str) -> Option<HttpFault> {
    let mut shared = shared.lock().expect("proxy lock");
    let rule = shared
        .rules
        .iter_mut()
        .find(|r| r.remaining > 0 && r.method == *method && r.path == path)?;
    rule.remaining -= 1;
    Some(rule.fault)
}

async fn forward(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let fault = take_fault(&state.shared, &method, uri.path());
    let record = |outcome: String| {
        state
            .shared
            .lock()
            .expect("proxy lock")
            .log
            .push(format!("{method} {path_and_query} -> {outcome}"));
    };
    if let Some(HttpFault::Status(status)) = fault {
        record(format!("{status} (injected)"));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return (status, "injected by the HTTP fault proxy").into_response();
    }
    let mut request = state
        .http
        .request(
            method.clone(),
            format!("{}{path_and_query}", state.upstream),
        )
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" && name != "connection" {
            request = request.header(name, value);
        }
    }
    let started = Instant::now();
    let upstream = match request.send().await {
        Ok(resp) => resp,
        Err(e) => {
            record(format!("502 ({e})"));
            return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response();
        }
    };
    let status = upstream.status();
    let upstream_headers = upstream.headers().clone();
    let answer = upstream.bytes().await.unwrap_or_default();
    state
        .shared
        .lock()
        .expect("proxy lock")
        .calls
        .push(UpstreamCall {
            method: method.to_string(),
            path: uri.path().to_string(),
            status: status.as_u16(),
            elapsed: started.elapsed(),
        });
    if fault == Some(HttpFault::DropAnswer) {
        record(format!("{status} dropped"));
        // Unwind the connection task without the panic hook: hyper drops the connection, the
        // client sees it closed with no answer at all.
        std::panic::resume_unwind(Box::new("the HTTP fault proxy drops this answer"));
    }
    record(status.as_u16().to_string());
    let mut response = Response::new(Body::from(answer));
    *response.status_mut() = status;
    for (name, value) in &upstream_headers {
        if name != "transfer-encoding" && name != "connection" && name != "content-length" {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}
