//! An HTTPS endpoint on 127.0.0.1 with a certificate a test chooses, to check that the HTTP
//! clients (ticket API, Graph, identity) verify TLS: a certificate from a CA the client does not
//! trust, or one from a trusted CA but for another host name.
//!
//! [`TlsEndpoint::start`] generates a fresh CA and a leaf certificate for `names` (DNS names,
//! or IP addresses written as such) signed by it. The endpoint answers every request that gets
//! through the handshake with `503 Service Unavailable` (a positive control: a client that
//! trusts [`TlsEndpoint::ca_pem`] and uses a matching name gets an HTTP answer, not a TLS
//! error). It counts handshakes and requests so a test can show that nothing was sent over a
//! refused connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The running endpoint (serves until the process ends).
pub struct TlsEndpoint {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// PEM of the CA that signed the server certificate (trust it to get past verification).
    pub ca_pem: String,
    handshakes: Arc<AtomicU32>,
    requests: Arc<AtomicU32>,
}

impl TlsEndpoint {
    /// Serve HTTPS with a certificate for `names` (e.g. `["localhost", "127.0.0.1"]`, or
    /// `["wrong.example"]` for a host-name mismatch) signed by a new CA.
    pub async fn start(names: &[&str]) -> anyhow::Result<TlsEndpoint> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailbridge test CA (tls_endpoint)");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            leaf.subject_alt_names
                .push(match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*name).try_into()?),
                });
        }
        leaf.distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("none"));
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let port = listener.local_addr()?.port();
        let handshakes = Arc::new(AtomicU32::new(0));
        let requests = Arc::new(AtomicU32::new(0));
        let (h, r) = (handshakes.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (h, r) = (h.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return; // the client refused the certificate
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(TlsEndpoint {
            port,
            ca_pem: ca_cert.pem(),
            handshakes,
            requests,
        })
    }

    /// `https://<host>:<port>` for a host name the client should use (`localhost`, `127.0.0.1`).
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    /// Completed TLS handshakes (the client accepted the certificate).
    pub fn handshakes(&self) -> u32 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// HTTP requests received over a completed handshake.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }
}
