//! The HTTP client used for the identity platform, Graph and the ticket API.
//!
//! One builder so every outbound call has the same safety properties: rustls with certificate
//! verification (the platform verifier: the OS trust store), bounded connect and request
//! timeouts, and **no redirects followed** — a redirect from a token endpoint or an API is a
//! misconfiguration, and following it could carry credentials (form bodies, bearer tokens) to
//! another host.
//!
//! Cold start: the OS trust store is read and parsed on the FIRST TLS handshake, once per process
//! and shared by every client ([`LazyPlatformVerifier`]), not each time a client is built
//! (reqwest's default builds a `rustls-platform-verifier` per client, which reads and parses the
//! whole system CA bundle: several milliseconds per client, three clients per cold start).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

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

/// A server certificate verifier that builds `rustls-platform-verifier`'s verifier (OS trust
/// store, the same verification reqwest does by default) on first use. Signature checks need no
/// trust store and use the crypto provider directly, as the platform verifier does.
#[derive(Debug)]
pub struct LazyPlatformVerifier {
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl LazyPlatformVerifier {
    /// A verifier using `provider`; nothing is loaded until the first certificate check.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            verifier: OnceLock::new(),
        }
    }

    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.verifier
            .get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for LazyPlatformVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The TLS configuration every production client shares: aws-lc-rs, TLS 1.2 and 1.3, ALPN
/// `http/1.1`, certificates verified against the OS trust store by one [`LazyPlatformVerifier`].
fn shared_tls_config() -> Result<rustls::ClientConfig, HttpClientError> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(rustls::ALL_VERSIONS)
                .map_err(|e| format!("TLS versions: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LazyPlatformVerifier::new(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(config)
        })
        .clone()
        .map_err(HttpClientError)
}

/// Build a client: rustls, TLS verification on, timeouts, no redirects, no cookies.
pub fn client(options: &HttpOptions) -> Result<reqwest::Client, HttpClientError> {
    let builder = reqwest::Client::builder();
    let mut builder = if options.extra_root_certs_pem.is_empty() {
        builder.tls_backend_preconfigured(shared_tls_config()?)
    } else {
        builder.tls_backend_rustls()
    };
    builder = builder
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

/// Largest answer body read from Graph, the identity platform or a ticket API. Their real
/// answers are a few KiB (a created draft echoes the message's body, at most a few MiB); a broken
/// or hostile server answering with gigabytes must not take the function's memory.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How much of an error answer is kept for the log and the error message.
pub const MAX_ERROR_EXCERPT_BYTES: usize = 64 * 1024;

/// An answer body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the limit (by its `Content-Length` or as it arrived): reading
    /// stopped there and the connection is dropped.
    #[error("the answer is larger than {limit} bytes: not read (a broken or hostile server)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The connection failed while reading.
    #[error("reading the answer: {0}")]
    Read(String),
}

/// Read `response`'s body, at most `limit` bytes: a longer one is an error as soon as the
/// `Content-Length` or the bytes received pass the limit, never buffered whole.
pub async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(crate::error::error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// [`read_body`] as text (invalid UTF-8 replaced).
pub async fn read_text(response: reqwest::Response, limit: usize) -> Result<String, BodyError> {
    read_body(response, limit)
        .await
        .map(|body| String::from_utf8_lossy(&body).into_owned())
}

/// The first [`MAX_ERROR_EXCERPT_BYTES`] of an (error) answer's body as text, for a message: the
/// rest is not read. Empty when the connection fails.
pub async fn read_excerpt(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_EXCERPT_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
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
    fn the_trust_store_loads_on_the_first_certificate_check_and_garbage_is_refused() {
        let verifier =
            LazyPlatformVerifier::new(Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        assert!(verifier.verifier.get().is_none(), "nothing loaded yet");
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let result = verifier.verify_server_cert(
            &garbage,
            &[],
            &ServerName::try_from("graph.microsoft.com").unwrap(),
            &[],
            UnixTime::now(),
        );
        assert!(result.is_err(), "a garbage certificate must not verify");
        assert!(verifier.verifier.get().is_some(), "loaded on first use");
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
