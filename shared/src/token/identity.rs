//! Client for the Microsoft identity platform's v2.0 endpoints: refresh-token grant, ROPC
//! (password) bootstrap, the device authorization grant (device code flow), and the redemption
//! of a browser sign-in's authorization code (PKCE).
//!
//! One attempt = one HTTP request. [`IdentityClient::with_retries`] repeats transient failures
//! through the project's one retry loop ([`crate::retry`]): backoff with jitter, a server's
//! `Retry-After` never undercut, and no sleep past the caller's deadline.

use std::future::Future;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::Audience;
use super::oauth_error::{TokenEndpointError, TransientFailure, classify};
use super::secret::AccountSecret;

/// The detail of an attempt the caller's deadline cut short.
const DEADLINE_DURING_ATTEMPT: &str = "deadline reached during an attempt";

/// Grant type of the device authorization grant.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.5: on `slow_down` the interval grows by 5 seconds.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// A successful token response. `Debug` redacts both tokens.
#[derive(Clone)]
pub struct TokenResponse {
    /// The access token (for one resource).
    pub access_token: SecretString,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// The rotated refresh token, when `offline_access` was granted.
    pub refresh_token: Option<SecretString>,
    /// Granted scopes (space separated).
    pub scope: String,
    /// OpenID Connect ID token, when `openid` was requested (sign-in flows).
    pub id_token: Option<String>,
}

impl TokenResponse {
    /// Who signed in, from the ID token's `preferred_username` (or `upn`/`email`).
    ///
    /// The ID token comes straight from the token endpoint over TLS, so its signature is not
    /// checked (OpenID Connect Core §3.1.3.7 allows TLS server validation instead); it is only
    /// used to catch signing in with the wrong account.
    pub fn signed_in_user(&self) -> Option<String> {
        use base64::Engine;
        let payload = self.id_token.as_deref()?.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        ["preferred_username", "upn", "email"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
    }
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    id_token: Option<String>,
}

/// What the user must be told to complete a device code sign-in.
#[derive(Clone, Debug)]
pub struct DeviceCodePrompt {
    /// The code to type at `verification_uri`.
    pub user_code: String,
    /// Where to type it (`https://microsoft.com/devicelogin`).
    pub verification_uri: String,
    /// Microsoft's ready-made instruction text.
    pub message: String,
    /// How long the code is valid.
    pub expires_in: Duration,
    /// Minimum time between polls.
    pub interval: Duration,
}

/// Progress of a device code sign-in, reported to the caller's callback.
#[derive(Clone, Debug)]
pub enum DeviceCodeEvent {
    /// Show this to the user.
    Prompt(DeviceCodePrompt),
    /// The server asked to poll less often; the new interval.
    SlowDown(Duration),
}

#[derive(Deserialize)]
struct RawDeviceCode {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    message: String,
    expires_in: serde_json::Value,
    #[serde(default)]
    interval: Option<serde_json::Value>,
}

/// How a device code sign-in ended without a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceCodeError {
    /// The user declined at the sign-in page.
    #[error("the sign-in was declined")]
    Declined,
    /// The code expired before the user finished.
    #[error("the device code expired before the sign-in was completed")]
    Expired,
    /// Anything else the identity platform refused, or it stayed unavailable.
    #[error("device code sign-in failed: {0:?}")]
    Failed(TokenEndpointError),
}

fn json_u64(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

use crate::error::error_chain;
use crate::retry::RetryPolicy;

/// The identity client's default policy: quick first retries, at most 8 s of backoff (a
/// `Retry-After` may ask for more), as many attempts as the caller's deadline allows.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(8),
        max_attempts: u32::MAX,
        attempt_timeout: Duration::from_secs(30),
    }
}

/// Talks to `{authority}/{tenant}/oauth2/v2.0/{token,devicecode}`.
#[derive(Clone, Debug)]
pub struct IdentityClient {
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl IdentityClient {
    /// Use `http` (build it with [`crate::http::client`]).
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            retry: default_retry_policy(),
        }
    }

    /// Change the backoff policy (see [`default_retry_policy`]).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, Option<Duration>, String), TokenEndpointError> {
        let response = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                TokenEndpointError::Transient(TransientFailure {
                    detail: format!("{kind}: {url}: {}", error_chain(&e)),
                    retry_after: None,
                })
            })?;
        let status = response.status().as_u16();
        let after = crate::retry::retry_after(response.headers());
        let body = crate::http::read_text(response, crate::http::MAX_ANSWER_BYTES)
            .await
            .map_err(|e| {
                TokenEndpointError::Transient(TransientFailure {
                    detail: format!("{url}: {e}"),
                    retry_after: None,
                })
            })?;
        Ok((status, after, body))
    }

    /// One token request (no retries).
    pub async fn token_request(
        &self,
        token_endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenEndpointError> {
        let (status, after, body) = self.post_form(token_endpoint, form).await?;
        if !(200..300).contains(&status) {
            return Err(classify(status, after, &body));
        }
        let raw: RawTokenResponse = serde_json::from_str(&body).map_err(|e| {
            TokenEndpointError::Transient(TransientFailure {
                detail: format!("malformed token response from {token_endpoint}: {e}"),
                retry_after: None,
            })
        })?;
        Ok(TokenResponse {
            access_token: SecretString::from(raw.access_token),
            expires_in: raw.expires_in.as_ref().and_then(json_u64).unwrap_or(3599),
            refresh_token: raw.refresh_token.map(SecretString::from),
            scope: raw.scope,
            id_token: raw.id_token,
        })
    }

    /// `grant_type=refresh_token` for `audience`.
    pub async fn refresh(
        &self,
        secret: &AccountSecret,
        audience: Audience,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, TokenEndpointError> {
        let scope = secret.scope_for(audience);
        self.token_request(
            &secret.token_endpoint(),
            &[
                ("client_id", secret.client_id.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
                ("scope", scope.as_str()),
            ],
        )
        .await
    }

    /// `grant_type=client_credentials` for `audience` of an app-only account: scope
    /// `{resource}/.default`, the client authenticated with its client secret or a client
    /// assertion signed with its certificate (fresh for every request). No refresh token.
    pub async fn client_credentials(
        &self,
        secret: &AccountSecret,
        audience: Audience,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<TokenResponse, TokenEndpointError> {
        let credential = secret.app_only.as_ref().ok_or_else(|| {
            TokenEndpointError::NeedsPerson(super::oauth_error::NeedsPerson {
                code: "not_app_only".to_owned(),
                reason: "the account is not in app_only mode".to_owned(),
                grant_rejected: false,
                suberror: None,
            })
        })?;
        let endpoint = secret.token_endpoint();
        let auth = credential
            .client_auth(&secret.client_id, &endpoint, now)
            .map_err(|problem| {
                TokenEndpointError::NeedsPerson(super::oauth_error::NeedsPerson {
                    code: "bad_credential".to_owned(),
                    reason: problem,
                    grant_rejected: false,
                    suberror: None,
                })
            })?;
        let scope = secret.scope_for(audience);
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", secret.client_id.as_str()),
            ("grant_type", "client_credentials"),
            ("scope", scope.as_str()),
        ];
        form.extend(auth.iter().map(|(k, v)| (*k, v.expose_secret())));
        self.token_request(&endpoint, &form).await
    }

    /// `grant_type=password` (ROPC) for `audience`. Not for MFA accounts.
    pub async fn password(
        &self,
        secret: &AccountSecret,
        audience: Audience,
        password: &SecretString,
    ) -> Result<TokenResponse, TokenEndpointError> {
        let scope = secret.scope_for(audience);
        self.token_request(
            &secret.token_endpoint(),
            &[
                ("client_id", secret.client_id.as_str()),
                ("grant_type", "password"),
                ("username", secret.username.as_str()),
                ("password", password.expose_secret()),
                ("scope", scope.as_str()),
            ],
        )
        .await
    }

    /// `grant_type=authorization_code` for a public client: the code from the browser
    /// redirect, the same `redirect_uri`, and the PKCE `code_verifier` (no client secret:
    /// Microsoft refuses one from a public client). Scope: `audience`'s permissions plus
    /// `offline_access openid profile`, so the answer names who signed in.
    pub async fn redeem_authorization_code(
        &self,
        secret: &AccountSecret,
        audience: Audience,
        code: &SecretString,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, TokenEndpointError> {
        let scope = format!("{} openid profile", secret.scope_for(audience));
        self.token_request(
            &secret.token_endpoint(),
            &[
                ("client_id", secret.client_id.as_str()),
                ("grant_type", "authorization_code"),
                ("code", code.expose_secret()),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
                ("scope", scope.as_str()),
            ],
        )
        .await
    }

    /// Run `attempt` until it succeeds, fails for a non-transient reason, or the next backoff
    /// would end after `deadline`. Each attempt is itself cut off at the deadline.
    pub async fn with_retries<T, F, Fut>(
        &self,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, TokenEndpointError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, TokenEndpointError>>,
    {
        use crate::retry::{Failure, GaveUpBecause, Verdict};
        let result = crate::retry::retry(
            &self.retry,
            deadline,
            || {
                let attempt = attempt();
                async move {
                    match tokio::time::timeout_at(deadline, attempt).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(TokenEndpointError::Transient(TransientFailure {
                            detail: DEADLINE_DURING_ATTEMPT.to_owned(),
                            retry_after: None,
                        })),
                    }
                }
            },
            |e| match e {
                TokenEndpointError::Transient(failure) => Verdict::Retry {
                    after: failure.retry_after,
                },
                _ => Verdict::Stop,
            },
        )
        .await;
        let Failure {
            error,
            previous,
            attempts,
            because,
        } = match result {
            Ok((value, _)) => return Ok(value),
            Err(failure) => failure,
        };
        let TokenEndpointError::Transient(failure) = error else {
            return Err(error);
        };
        if because == GaveUpBecause::NotRetryable {
            return Err(TokenEndpointError::Transient(failure));
        }
        // When the deadline cut an attempt short, what the attempt before said is the cause a
        // person needs (a TLS or DNS failure), not "deadline reached".
        let detail = match previous {
            Some(TokenEndpointError::Transient(before))
                if failure.detail == DEADLINE_DURING_ATTEMPT =>
            {
                format!(
                    "deadline reached during attempt {attempts}; the attempt before failed: {}",
                    before.detail
                )
            }
            _ if failure.detail == DEADLINE_DURING_ATTEMPT => {
                format!("deadline reached during attempt {attempts}")
            }
            _ => format!("{} (gave up after {attempts} attempts)", failure.detail),
        };
        Err(TokenEndpointError::Transient(TransientFailure {
            detail,
            retry_after: failure.retry_after,
        }))
    }

    /// Start a device code sign-in: `POST /devicecode` with `scope`.
    pub async fn start_device_code(
        &self,
        secret: &AccountSecret,
        scope: &str,
    ) -> Result<(String, DeviceCodePrompt), TokenEndpointError> {
        let url = secret.device_code_endpoint();
        let (status, after, body) = self
            .post_form(
                &url,
                &[("client_id", secret.client_id.as_str()), ("scope", scope)],
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(classify(status, after, &body));
        }
        let raw: RawDeviceCode = serde_json::from_str(&body).map_err(|e| {
            TokenEndpointError::Transient(TransientFailure {
                detail: format!("malformed devicecode response from {url}: {e}"),
                retry_after: None,
            })
        })?;
        let prompt = DeviceCodePrompt {
            message: if raw.message.is_empty() {
                format!(
                    "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
                    raw.verification_uri, raw.user_code
                )
            } else {
                raw.message
            },
            user_code: raw.user_code,
            verification_uri: raw.verification_uri,
            expires_in: Duration::from_secs(json_u64(&raw.expires_in).unwrap_or(900)),
            interval: Duration::from_secs(raw.interval.as_ref().and_then(json_u64).unwrap_or(5)),
        };
        Ok((raw.device_code, prompt))
    }

    /// The whole device code flow for `audience` (plus `offline_access openid profile`): request a code, hand
    /// the prompt to `on_event`, poll at `interval` (+5 s on `slow_down`) until the user
    /// approves, declines or the code expires. Transient poll failures are retried until the
    /// code's own expiry.
    pub async fn device_code_flow(
        &self,
        secret: &AccountSecret,
        audience: Audience,
        mut on_event: impl FnMut(DeviceCodeEvent) + Send,
    ) -> Result<TokenResponse, DeviceCodeError> {
        // `openid profile` adds an ID token saying who signed in (checked by the login).
        let scope = format!("{} openid profile", secret.scope_for(audience));
        let start_deadline = Instant::now() + Duration::from_secs(60);
        let (device_code, prompt) = self
            .with_retries(start_deadline, || self.start_device_code(secret, &scope))
            .await
            .map_err(DeviceCodeError::Failed)?;
        let expires_at = Instant::now() + prompt.expires_in;
        let mut interval = prompt.interval;
        on_event(DeviceCodeEvent::Prompt(prompt));
        let endpoint = secret.token_endpoint();
        loop {
            if Instant::now() + interval >= expires_at {
                tokio::time::sleep_until(expires_at).await;
            } else {
                tokio::time::sleep(interval).await;
            }
            let poll = self
                .token_request(
                    &endpoint,
                    &[
                        ("client_id", secret.client_id.as_str()),
                        ("grant_type", DEVICE_CODE_GRANT),
                        ("device_code", device_code.as_str()),
                    ],
                )
                .await;
            match poll {
                Ok(tokens) => return Ok(tokens),
                Err(TokenEndpointError::AuthorizationPending) => {}
                Err(TokenEndpointError::SlowDown) => {
                    interval += SLOW_DOWN_STEP;
                    on_event(DeviceCodeEvent::SlowDown(interval));
                }
                Err(TokenEndpointError::AuthorizationDeclined) => {
                    return Err(DeviceCodeError::Declined);
                }
                Err(TokenEndpointError::ExpiredToken) => return Err(DeviceCodeError::Expired),
                Err(TokenEndpointError::Transient(t)) => {
                    tracing::warn!(detail = %t.detail, "device code poll failed; polling again");
                    // the server's wait in full, never past the code's expiry (then: expired)
                    if let Some(ra) = t.retry_after {
                        if crate::retry::wait_fits(ra, expires_at) {
                            tokio::time::sleep(ra).await;
                        } else {
                            tokio::time::sleep_until(expires_at).await;
                        }
                    }
                }
                Err(other) => return Err(DeviceCodeError::Failed(other)),
            }
            if Instant::now() >= expires_at {
                return Err(DeviceCodeError::Expired);
            }
        }
    }
}
