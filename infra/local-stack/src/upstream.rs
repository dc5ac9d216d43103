//! Forwarding one request to the upstream server (moto) unchanged, for the reverse proxies that sit
//! in front of it (`aws_calls`, `aws_fault_proxy`).

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Hop-by-hop and length headers the proxy must not copy: the HTTP client and axum set their own.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "content-length" | "connection" | "transfer-encoding"
    )
}

/// Sends `method uri` with `headers` and `body` to `upstream` and turns its answer into the
/// proxy's response; an unreachable upstream is a 502 naming `proxy`.
pub(crate) async fn forward(
    http: &reqwest::Client,
    upstream: &str,
    proxy: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = http.request(method, format!("{upstream}{path}")).body(body);
    for (name, value) in headers.iter().filter(|(name, _)| !is_hop_header(name)) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut out = HeaderMap::new();
            for (name, value) in answer.headers().iter().filter(|(n, _)| !is_hop_header(n)) {
                out.insert(name.clone(), value.clone());
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("{proxy}: upstream unreachable: {e}"),
        )
            .into_response(),
    }
}
