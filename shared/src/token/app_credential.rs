//! App-only accounts: the application's own credential (client credentials grant, no user, no
//! refresh token).
//!
//! Two kinds, as the Microsoft identity platform knows them:
//! - a **client secret** (`client_secret`), sent as is; its end date (`client_secret_expires_at`)
//!   is stored alongside because nothing in the secret itself says when Entra stops taking it;
//! - a **certificate** (`certificate` + `private_key`, PEM): each token request carries a
//!   client assertion, a JWT signed with the private key whose header names the certificate by
//!   its SHA-256 thumbprint (`x5t#S256`). Microsoft's "certificate credentials" reference: `alg`
//!   PS256 (RSA-PSS; RS256 is accepted too), claims `aud` = the token endpoint, `iss` = `sub` =
//!   the client id, a fresh `jti`, `nbf`/`iat` now and `exp` 5–10 minutes later.
//!
//! Either way the expiry is known ([`AppCredential::expires_at`]: the certificate's `notAfter`,
//! the secret's stored end date), so the functions can warn well before sign-in stops working.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// `client_assertion_type` of a JWT client assertion.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a client assertion is valid (Microsoft: "5-10 minutes after nbf at most").
pub const ASSERTION_LIFETIME_SECS: i64 = 600;

/// The certificate an app-only account signs its client assertions with.
#[derive(Clone)]
pub struct AppCertificate {
    /// The certificate as stored (PEM).
    pub certificate_pem: String,
    /// The RSA private key (PEM, PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    pub private_key_pem: SecretString,
    /// Base64url SHA-256 of the certificate's DER (the `x5t#S256` header).
    pub thumbprint_sha256: String,
    /// Hex SHA-1 of the DER: the thumbprint the Entra admin center shows.
    pub thumbprint_sha1_hex: String,
    /// The certificate's `notAfter`: Entra refuses assertions signed with it from then on.
    pub not_after: DateTime<Utc>,
    key: jsonwebtoken::EncodingKey,
}

/// An app-only account's credential.
#[derive(Clone)]
pub enum AppCredential {
    /// A client secret and, when known, the end date set when it was created.
    ClientSecret {
        /// The secret value (not its id).
        secret: SecretString,
        /// When Entra stops accepting it (`client_secret_expires_at`).
        expires_at: Option<DateTime<Utc>>,
    },
    /// A certificate with its private key.
    Certificate(Box<AppCertificate>),
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppCredential::ClientSecret { expires_at, .. } => f
                .debug_struct("ClientSecret")
                .field("secret", &"[redacted]")
                .field("expires_at", expires_at)
                .finish(),
            AppCredential::Certificate(c) => f
                .debug_struct("Certificate")
                .field("thumbprint_sha256", &c.thumbprint_sha256)
                .field("not_after", &c.not_after)
                .field("private_key", &"[redacted]")
                .finish(),
        }
    }
}

impl AppCredential {
    /// When the credential stops working (`None`: a client secret stored without its end date).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            AppCredential::ClientSecret { expires_at, .. } => *expires_at,
            AppCredential::Certificate(c) => Some(c.not_after),
        }
    }

    /// What it is, for operators (`client secret`, `certificate <SHA-1 thumbprint>`).
    pub fn describe(&self) -> String {
        match self {
            AppCredential::ClientSecret { .. } => "client secret".to_owned(),
            AppCredential::Certificate(c) => {
                format!("certificate {}", c.thumbprint_sha1_hex.to_uppercase())
            }
        }
    }

    /// The form fields that authenticate the client at `token_endpoint`: `client_secret`, or
    /// `client_assertion_type` + a freshly signed `client_assertion`.
    pub fn client_auth(
        &self,
        client_id: &str,
        token_endpoint: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(&'static str, SecretString)>, String> {
        match self {
            AppCredential::ClientSecret { secret, .. } => {
                Ok(vec![("client_secret", secret.clone())])
            }
            AppCredential::Certificate(c) => {
                let assertion = c.client_assertion(client_id, token_endpoint, now)?;
                Ok(vec![
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE.into()),
                    ("client_assertion", assertion),
                ])
            }
        }
    }
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl AppCertificate {
    /// Parse the certificate and key (PEM). The error says which of the two is wrong; the key
    /// must be RSA and belong to the certificate.
    pub fn from_pem(certificate_pem: &str, private_key_pem: SecretString) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
            .map_err(|e| format!("certificate: not a PEM certificate ({e})"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!(
                "certificate: expected a \"BEGIN CERTIFICATE\" block, got \"BEGIN {}\"",
                pem.label
            ));
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("certificate: not an X.509 certificate ({e})"))?;
        let not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0)
            .ok_or("certificate: notAfter out of range")?;
        let public_key = match cert.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa,
            _ => {
                return Err(
                    "certificate: Entra client assertions need an RSA certificate".to_owned(),
                );
            }
        };
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
                .map_err(|e| format!("private_key: not an RSA private key in PEM ({e})"))?;
        // The key must belong to the certificate: sign a probe and check it with the
        // certificate's public key (a mismatch would otherwise show only as AADSTS700027).
        let probe = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256),
            &serde_json::json!({"probe": true}),
            &key,
        )
        .map_err(|e| format!("private_key: cannot sign with it ({e})"))?;
        let verify = jsonwebtoken::DecodingKey::from_rsa_raw_components(
            unsigned(public_key.modulus),
            unsigned(public_key.exponent),
        );
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(&probe, &verify, &validation).map_err(|_| {
            "private_key: does not belong to the certificate (its signature does not verify with the certificate's public key)".to_owned()
        })?;
        use base64::Engine as _;
        let thumbprint_sha256 =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&pem.contents));
        // SHA-1 only because it is the thumbprint the Entra admin center displays.
        let thumbprint_sha1_hex = hex::encode(sha1::Sha1::digest(&pem.contents));
        Ok(Self {
            certificate_pem: certificate_pem.to_owned(),
            private_key_pem,
            thumbprint_sha256,
            thumbprint_sha1_hex,
            not_after,
            key,
        })
    }

    /// A client assertion for `token_endpoint`: PS256, `x5t#S256`, valid for 10 minutes from
    /// `now`.
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_endpoint: &str,
        now: DateTime<Utc>,
    ) -> Result<SecretString, String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
        header.x5t_s256 = Some(self.thumbprint_sha256.clone());
        let claims = AssertionClaims {
            aud: token_endpoint,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            exp: now.timestamp() + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|e| format!("cannot sign the client assertion: {e}"))
    }
}

/// A DER integer without its sign byte (the big-endian magnitude a JWK-style key takes).
fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The application permissions (`roles` claim) of an app-only access token, when the token is
/// a readable JWT. Microsoft asks clients not to depend on access token contents, so this is
/// only a diagnostic (which permission is missing); `None` when the token is opaque.
pub fn token_roles(access_token: &str) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Claims {
        #[serde(default)]
        roles: Vec<String>,
    }
    let data = jsonwebtoken::dangerous::insecure_decode::<Claims>(access_token).ok()?;
    Some(data.claims.roles)
}
