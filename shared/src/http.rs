//! The HTTP client used for the identity platform, Graph and the ticket API.
//!
//! One builder so every outbound call has the same safety properties: rustls with certificate
//! verification (the platform verifier: the OS trust store), bounded connect and request
//! timeouts, and **no redirects followed** — a redirect from a token endpoint or an API is a
//! misconfiguration, and following it could carry credentials (form bodies, bearer tokens) to
//! another host.

use std::time::Duration;

/// Default TCP + TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default whole-request timeout (connect, send, wait for and read the response).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `User-Agent` sent on every request.
pub const USER_AGENT: &str = concat!("mailbridge/", env!("CARGO_PKG_VERSION"));

/// Options for [`client`]; `Default` gives the production settings.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Extra PEM CA certificates to trust in addition to the OS store (a corporate proxy CA).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            extra_root_certs_pem: Vec::new(),
        }
    }
}

/// The HTTP client could not be built (bad extra CA certificate, TLS backend failure).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct HttpClientError(String);

impl crate::error::Classify for HttpClientError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Permanent
    }
}

/// A client with the production settings ([`HttpOptions::default`]).
pub fn default_client() -> Result<reqwest::Client, HttpClientError> {
    client(&HttpOptions::default())
}

/// Build a client: rustls, TLS verification on, timeouts, no redirects, no cookies.
pub fn client(options: &HttpOptions) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(50));
    if !options.extra_root_certs_pem.is_empty() {
        let mut certs = Vec::new();
        for (i, pem) in options.extra_root_certs_pem.iter().enumerate() {
            let bundle = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| HttpClientError(format!("extra CA certificate #{i}: {e}")))?;
            if bundle.is_empty() {
                return Err(HttpClientError(format!(
                    "extra CA certificate #{i}: no PEM certificate found"
                )));
            }
            certs.extend(bundle);
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| HttpClientError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
        });
        let response = default_client()
            .unwrap()
            .get(format!("http://{addr}/token"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 302);
    }

    #[test]
    fn a_bad_extra_ca_is_a_clear_error() {
        let options = HttpOptions {
            extra_root_certs_pem: vec![b"not a pem".to_vec()],
            ..HttpOptions::default()
        };
        let err = client(&options).expect_err("garbage CA must be refused");
        assert!(err.to_string().contains("extra CA certificate"), "{err}");
    }
}
