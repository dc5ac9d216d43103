//! [`TokenService`]: the production [`AccessTokenSource`].
//!
//! - Access tokens are cached in memory per (account, audience) across warm invocations and
//!   refreshed `expiry_skew` before they expire.
//! - Single flight: one refresh per account at a time; concurrent callers wait for it and take
//!   the cached result, so N concurrent callers cause exactly one token request.
//! - Refresh with the newest refresh token known (the rotated one in memory, or the stored one
//!   when it is newer — e.g. after `mailbridge login`). When the grant is dead (expired,
//!   revoked) and a password is stored, re-bootstrap with ROPC.
//! - Write-back of the rotated refresh token only when the stored one is older than
//!   `write_back_interval` (default 24 h; AWS advises against writing a secret more than about
//!   once per 10 minutes). The secret is re-read first; a newer token written by a concurrent
//!   instance is never overwritten: the write is conditional on the version just re-read
//!   ([`SecretStore::replace`]), so one stored between the re-read and the write is kept too;
//!   the write carries a deterministic `ClientRequestToken`.
//!   Microsoft does not revoke old refresh tokens on rotation, so a skipped or failed write-back
//!   loses nothing, and the stored token is never older than the interval plus the gap between
//!   two runs — far inside the 90-day inactivity window.
//! - Needs-a-person failures set the secret's `status` to `needs_reauth` once (re-read, then
//!   write), are logged at error level (never a token), and stop token requests until the
//!   status is `ok` again (re-checked from the secret at most every `reauth_recheck_interval`).
//!   A failure of one resource's permissions or policy (consent, scope, Conditional Access on
//!   one app) holds only that audience (`status.audience`): a missing IMAP consent never holds
//!   Graph sends. A dead grant or user holds every audience.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio::time::Instant;

use super::clock::{Clock, SystemClock};
use super::identity::{IdentityClient, TokenResponse};
use super::oauth_error::{NeedsPerson, TokenEndpointError};
use super::secret::{AccountSecret, AccountState, AccountStatus};
use super::store::{SecretStore, SecretStoreError, SecretValue, client_request_token};
use super::{AccessToken, AccessTokenSource, Audience, TokenError};
use crate::config::ConfigError;

/// Environment variable: seconds between refresh-token write-backs (default 86400).
pub const WRITE_BACK_INTERVAL_ENV: &str = "MAILBRIDGE_TOKEN_WRITE_BACK_SECONDS";
/// Environment variable: prefix of account secret names (default `mailbridge/`).
pub const SECRET_PREFIX_ENV: &str = "MAILBRIDGE_SECRET_PREFIX";
/// Shortest allowed write-back interval (AWS: at most one PutSecretValue per ~10 minutes).
pub const MIN_WRITE_BACK_INTERVAL: Duration = Duration::from_secs(600);
/// Longest allowed write-back interval: a third of Microsoft's 90-day inactivity window.
pub const MAX_WRITE_BACK_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Tunables of [`TokenService`].
#[derive(Clone, Debug)]
pub struct TokenServiceConfig {
    /// Account secret names are `{secret_prefix}{account}` (an account that already starts
    /// with the prefix is used as is).
    pub secret_prefix: String,
    /// Deadline for [`AccessTokenSource::access_token`] (retries included).
    pub default_timeout: Duration,
    /// Refresh this long before the access token expires.
    pub expiry_skew: Duration,
    /// Persist a rotated refresh token only when the stored one is at least this old.
    pub write_back_interval: Duration,
    /// While an account needs re-auth, re-read its secret at most this often to notice a fix.
    pub reauth_recheck_interval: Duration,
}

impl Default for TokenServiceConfig {
    fn default() -> Self {
        Self {
            secret_prefix: "mailbridge/".to_owned(),
            default_timeout: Duration::from_secs(20),
            expiry_skew: Duration::from_secs(300),
            write_back_interval: Duration::from_secs(24 * 3600),
            reauth_recheck_interval: Duration::from_secs(300),
        }
    }
}

impl TokenServiceConfig {
    /// Defaults overridden by `MAILBRIDGE_SECRET_PREFIX` and
    /// `MAILBRIDGE_TOKEN_WRITE_BACK_SECONDS` (problems are noted in `env`).
    pub fn from_env_reader<F: Fn(&str) -> Option<String>>(
        env: &mut crate::config::EnvReader<F>,
    ) -> Self {
        let defaults = Self::default();
        let config = Self {
            secret_prefix: env
                .get(SECRET_PREFIX_ENV)
                .unwrap_or_else(|| defaults.secret_prefix.clone()),
            write_back_interval: env.seconds(
                WRITE_BACK_INTERVAL_ENV,
                defaults.write_back_interval,
                0..=u64::MAX,
            ),
            ..defaults
        };
        match config.validate(WRITE_BACK_INTERVAL_ENV) {
            Ok(()) => config,
            Err(ConfigError { field, problem }) => {
                env.problem(&field, problem);
                Self::default()
            }
        }
    }

    /// [`TokenServiceConfig::from_env_reader`] over the process environment.
    pub fn from_env() -> Result<Self, crate::config::SettingsError> {
        let mut env = crate::config::EnvReader::new(|k: &str| std::env::var(k).ok());
        let config = Self::from_env_reader(&mut env);
        env.finish(config)
    }

    /// Check the write-back interval is inside [10 min, 30 days].
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.write_back_interval < MIN_WRITE_BACK_INTERVAL
            || self.write_back_interval > MAX_WRITE_BACK_INTERVAL
        {
            return Err(ConfigError {
                field: field.to_owned(),
                problem: format!(
                    "{} s is outside [{} s, {} s]: Secrets Manager should not be written more than \
                     about once per 10 minutes, and the refresh token must be persisted well inside \
                     Microsoft's 90-day inactivity window",
                    self.write_back_interval.as_secs(),
                    MIN_WRITE_BACK_INTERVAL.as_secs(),
                    MAX_WRITE_BACK_INTERVAL.as_secs()
                ),
            });
        }
        Ok(())
    }

    /// The secret name for `account`.
    pub fn secret_name(&self, account: &str) -> String {
        if account.starts_with(&self.secret_prefix) {
            account.to_owned()
        } else {
            format!("{}{account}", self.secret_prefix)
        }
    }
}

struct Blocked {
    reason: String,
    checked_at: Instant,
}

#[derive(Default)]
struct AccountRuntime {
    /// The newest refresh token this instance received, and when.
    newest_refresh_token: Option<(SecretString, DateTime<Utc>)>,
    /// Negative cache per audience while it needs a person.
    blocked: HashMap<Audience, Blocked>,
}

struct Inner {
    store: Arc<dyn SecretStore>,
    identity: IdentityClient,
    config: TokenServiceConfig,
    clock: Arc<dyn Clock>,
    tokens: Mutex<HashMap<(String, Audience), AccessToken>>,
    /// End dates of the app-only credentials tokens were minted with, by account.
    expiries: Mutex<HashMap<String, super::expiry::CredentialExpiry>>,
    accounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<AccountRuntime>>>>,
}

/// Access tokens from account secrets and the identity platform. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn store_error(account: &str, err: SecretStoreError) -> TokenError {
    match err {
        SecretStoreError::NotFound { name } => TokenError::BadSecret {
            secret: name,
            problem: "the secret does not exist (create it with `mailbridge login`)".to_owned(),
        },
        SecretStoreError::ScheduledForDeletion { name } => TokenError::BadSecret {
            problem: format!(
                "the secret is scheduled for deletion: restore it (`aws secretsmanager restore-secret --secret-id {name}`) before `mailbridge login` can use the name again"
            ),
            secret: name,
        },
        SecretStoreError::AccessDenied { name, detail } => TokenError::BadSecret {
            secret: name,
            problem: format!("access denied ({detail})"),
        },
        other => TokenError::Transient {
            account: account.to_owned(),
            detail: other.to_string(),
        },
    }
}

impl TokenService {
    /// A service over `store` and `identity`.
    pub fn new(
        store: Arc<dyn SecretStore>,
        identity: IdentityClient,
        config: TokenServiceConfig,
    ) -> Self {
        Self::with_clock(store, identity, config, Arc::new(SystemClock))
    }

    /// Same, with an explicit clock (tests simulate days passing).
    pub fn with_clock(
        store: Arc<dyn SecretStore>,
        identity: IdentityClient,
        config: TokenServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                identity,
                config,
                clock,
                tokens: Mutex::new(HashMap::new()),
                expiries: Mutex::new(HashMap::new()),
                accounts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Production wiring: Secrets Manager from `aws`, the default HTTP client, `config` (read
    /// with the function's settings: [`TokenServiceConfig::from_env_reader`]).
    pub fn production(
        aws: &aws_config::SdkConfig,
        config: TokenServiceConfig,
    ) -> Result<Self, ConfigError> {
        let http = crate::http::default_client().map_err(|e| ConfigError {
            field: "http client".to_owned(),
            problem: e.to_string(),
        })?;
        Ok(Self::new(
            Arc::new(super::store::SecretsManagerStore::from_conf(aws)),
            IdentityClient::new(http),
            config,
        ))
    }

    /// The configuration in use.
    pub fn config(&self) -> &TokenServiceConfig {
        &self.inner.config
    }

    /// The end dates of the app-only credentials this instance minted tokens with (for the
    /// invocation's [`super::expiry::METRIC`]).
    pub fn app_credential_expiries(&self) -> Vec<super::expiry::CredentialExpiry> {
        self.inner
            .expiries
            .lock()
            .expect("expiry lock")
            .values()
            .cloned()
            .collect()
    }

    fn cached(&self, name: &str, audience: Audience) -> Option<AccessToken> {
        let tokens = self.inner.tokens.lock().expect("token cache lock");
        let token = tokens.get(&(name.to_owned(), audience))?;
        let skew = chrono::Duration::from_std(self.inner.config.expiry_skew).unwrap_or_default();
        (token.expires_at - skew > self.inner.clock.now()).then(|| token.clone())
    }

    fn account_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<AccountRuntime>> {
        self.inner
            .accounts
            .lock()
            .expect("account map lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// A live access token for `account` and `audience`, giving up (with
    /// [`TokenError::Transient`]) at `deadline`.
    pub async fn access_token_until(
        &self,
        account: &str,
        audience: Audience,
        deadline: Instant,
    ) -> Result<AccessToken, TokenError> {
        let name = self.inner.config.secret_name(account);
        if let Some(token) = self.cached(&name, audience) {
            return Ok(token);
        }
        let lock = self.account_lock(&name);
        let mut state = tokio::time::timeout_at(deadline, lock.lock())
            .await
            .map_err(|_| TokenError::Transient {
                account: name.clone(),
                detail: "deadline reached while waiting for a concurrent refresh".to_owned(),
            })?;
        // Single flight: whoever held the lock may have refreshed already.
        if let Some(token) = self.cached(&name, audience) {
            return Ok(token);
        }
        if let Some(blocked) = state.blocked.get(&audience)
            && blocked.checked_at.elapsed() < self.inner.config.reauth_recheck_interval
        {
            return Err(TokenError::NeedsReauth {
                account: name,
                reason: blocked.reason.clone(),
            });
        }
        let stored = tokio::time::timeout_at(deadline, self.inner.store.get(&name))
            .await
            .map_err(|_| TokenError::Transient {
                account: name.clone(),
                detail: "deadline reached while reading the account secret".to_owned(),
            })?
            .map_err(|e| store_error(&name, e))?;
        let secret =
            AccountSecret::parse(&name, secrecy::ExposeSecret::expose_secret(&stored.value))?;
        if secret.status.applies_to(audience) {
            let reason = status_reason(&secret.status);
            state.blocked.insert(
                audience,
                Blocked {
                    reason: reason.clone(),
                    checked_at: Instant::now(),
                },
            );
            return Err(TokenError::NeedsReauth {
                account: name,
                reason,
            });
        }
        state.blocked.remove(&audience);
        self.refresh_locked(&name, audience, deadline, &mut state, &stored, &secret)
            .await
    }

    async fn refresh_locked(
        &self,
        name: &str,
        audience: Audience,
        deadline: Instant,
        state: &mut AccountRuntime,
        stored: &SecretValue,
        secret: &AccountSecret,
    ) -> Result<AccessToken, TokenError> {
        let identity = &self.inner.identity;
        // The newest refresh token we know of: ours if it is newer than the stored one.
        let refresh_token = match (&state.newest_refresh_token, &secret.refresh_token) {
            (Some((ours, at)), Some(_)) if Some(*at) > secret.refresh_token_stored_at => {
                Some(ours.clone())
            }
            (_, stored_rt) => stored_rt.clone(),
        };
        let mut bootstrapped = false;
        let outcome: Result<TokenResponse, TokenEndpointError> = if secret.app_only.is_some() {
            // App-only: the application's own credential, no refresh token to keep.
            let clock = &self.inner.clock;
            identity
                .with_retries(deadline, || {
                    identity.client_credentials(secret, audience, clock.now())
                })
                .await
        } else {
            match (&refresh_token, &secret.password) {
                (Some(rt), password) => {
                    let refreshed = identity
                        .with_retries(deadline, || identity.refresh(secret, audience, rt))
                        .await;
                    match (refreshed, password) {
                        (Err(TokenEndpointError::NeedsPerson(p)), Some(password))
                            if p.grant_rejected =>
                        {
                            tracing::warn!(
                                account = name,
                                code = %p.code,
                                "refresh token rejected; re-bootstrapping with the stored password (ROPC)"
                            );
                            bootstrapped = true;
                            identity
                                .with_retries(deadline, || {
                                    identity.password(secret, audience, password)
                                })
                                .await
                        }
                        (other, _) => other,
                    }
                }
                (None, Some(password)) => {
                    tracing::info!(
                        account = name,
                        "no refresh token stored; bootstrapping with ROPC"
                    );
                    bootstrapped = true;
                    identity
                        .with_retries(deadline, || identity.password(secret, audience, password))
                        .await
                }
                (None, None) => Err(TokenEndpointError::NeedsPerson(NeedsPerson {
                    code: "no_refresh_token".to_owned(),
                    reason:
                        "the account has no refresh token and no password; run `mailbridge login`"
                            .to_owned(),
                    grant_rejected: false,
                    suberror: None,
                })),
            }
        };
        let response = match outcome {
            Ok(response) => response,
            Err(TokenEndpointError::NeedsPerson(person)) => {
                return Err(self
                    .mark_needs_reauth(name, audience, state, secret, &person)
                    .await);
            }
            Err(TokenEndpointError::Transient(t)) => {
                tracing::warn!(account = name, ?audience, detail = %t.detail, "token refresh failed (transient)");
                return Err(TokenError::Transient {
                    account: name.to_owned(),
                    detail: t.detail,
                });
            }
            Err(other) => {
                return Err(TokenError::Transient {
                    account: name.to_owned(),
                    detail: format!("unexpected token endpoint answer: {other:?}"),
                });
            }
        };
        let now = self.inner.clock.now();
        let token = AccessToken {
            secret: response.access_token.clone(),
            expires_at: now + chrono::Duration::seconds(response.expires_in as i64),
            audience,
            scopes: match &secret.app_only {
                // the `roles` claim, when the token is a readable JWT (diagnostics only)
                Some(_) => super::app_credential::token_roles(
                    secrecy::ExposeSecret::expose_secret(&response.access_token),
                )
                .unwrap_or_default(),
                None => granted_permissions(&response.scope),
            },
            shared_mailbox_route: secret.shared_mailbox_route,
            max_message_bytes: secret.max_message_bytes,
            app_only_mailbox: secret
                .app_only
                .as_ref()
                .map(|_| secret.username.to_ascii_lowercase()),
        };
        self.inner
            .tokens
            .lock()
            .expect("token cache lock")
            .insert((name.to_owned(), audience), token.clone());
        if let Some(expires_at) = secret.app_only.as_ref().and_then(|c| c.expires_at()) {
            let expiry = super::expiry::CredentialExpiry {
                account: name.to_owned(),
                credential: secret
                    .app_only
                    .as_ref()
                    .map(|c| c.describe())
                    .unwrap_or_default(),
                expires_at,
            };
            if let Some(warning) = expiry.warning(now) {
                tracing::warn!(account = name, %expires_at, "{warning}");
            }
            self.inner
                .expiries
                .lock()
                .expect("expiry lock")
                .insert(name.to_owned(), expiry);
        }
        tracing::info!(
            account = name,
            ?audience,
            expires_in = response.expires_in,
            bootstrapped,
            "access token refreshed"
        );
        if let Some(rotated) = &response.refresh_token {
            state.newest_refresh_token = Some((rotated.clone(), now));
            let interval = chrono::Duration::from_std(self.inner.config.write_back_interval)
                .unwrap_or(chrono::Duration::days(1));
            let due = bootstrapped
                || secret
                    .refresh_token_stored_at
                    .is_none_or(|stored_at| now - stored_at >= interval);
            if due {
                self.write_back(name, audience, stored, secret, rotated, now)
                    .await;
            }
        }
        Ok(token)
    }

    /// Persist `rotated` unless a concurrent writer got there first. Never fails the caller.
    async fn write_back(
        &self,
        name: &str,
        audience: Audience,
        base: &SecretValue,
        base_secret: &AccountSecret,
        rotated: &SecretString,
        now: DateTime<Utc>,
    ) {
        let store = &self.inner.store;
        let current = match store.get(name).await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(account = name, error = %e, "refresh token write-back skipped: cannot re-read the secret");
                return;
            }
        };
        let mut secret = match AccountSecret::parse(
            name,
            secrecy::ExposeSecret::expose_secret(&current.value),
        ) {
            Ok(secret) => secret,
            Err(e) => {
                tracing::warn!(account = name, error = %e, "refresh token write-back skipped: secret became unreadable");
                return;
            }
        };
        if current.version_id != base.version_id
            && secret.refresh_token_stored_at > base_secret.refresh_token_stored_at
        {
            tracing::info!(
                account = name,
                "refresh token write-back skipped: a newer one was written concurrently"
            );
            return;
        }
        if secret.status.applies_to(audience) {
            tracing::info!(
                account = name,
                "refresh token write-back skipped: status changed concurrently"
            );
            return;
        }
        let previous_age_hours = secret
            .refresh_token_stored_at
            .map(|t| (now - t).num_minutes() as f64 / 60.0);
        secret.refresh_token = Some(rotated.clone());
        secret.refresh_token_stored_at = Some(now);
        let value = SecretString::from(secret.to_json());
        let request_token = client_request_token(name, &current.version_id, &value);
        // Conditional: only on top of the version just read, so a grant stored after that read
        // (`mailbridge login`, another instance) is never overwritten.
        match store
            .replace(name, &value, &request_token, &current.version_id)
            .await
        {
            Ok(version) => tracing::info!(
                account = name,
                version,
                previous_age_hours,
                "rotated refresh token written back"
            ),
            Err(SecretStoreError::Superseded { .. }) => tracing::info!(
                account = name,
                "refresh token write-back skipped: the secret changed concurrently"
            ),
            Err(e) => tracing::warn!(
                account = name,
                error = %e,
                "refresh token write-back failed; the stored token stays valid, will retry on a later refresh"
            ),
        }
    }

    /// Record that a person must act: status `needs_reauth` (once) for `audience` or for every
    /// audience, an error log, the negative cache. Returns the error for the caller.
    async fn mark_needs_reauth(
        &self,
        name: &str,
        audience: Audience,
        state: &mut AccountRuntime,
        used: &AccountSecret,
        person: &NeedsPerson,
    ) -> TokenError {
        let store = &self.inner.store;
        let now = self.inner.clock.now();
        let reason = format!("{} [{}]", person.reason, person.code);
        let only = person.audience_specific().then_some(audience);
        match store.get(name).await {
            Ok(current) => {
                match AccountSecret::parse(
                    name,
                    secrecy::ExposeSecret::expose_secret(&current.value),
                ) {
                    Ok(mut secret) => {
                        if secret.refresh_token_stored_at > used.refresh_token_stored_at {
                            // Someone (mailbridge login, another instance after ROPC) stored a
                            // new grant while we were failing with the old one: don't block it.
                            state.newest_refresh_token = None;
                            return TokenError::Transient {
                                account: name.to_owned(),
                                detail: "the account secret changed during the refresh; retry"
                                    .to_owned(),
                            };
                        }
                        let already = secret.status.applies_to(audience)
                            && (only.is_some() || secret.status.audience.is_none());
                        if already {
                            tracing::info!(
                                account = name,
                                ?audience,
                                "account already marked needs_reauth"
                            );
                        } else {
                            secret.status = merged_status(&secret.status, person, only, now);
                            let value = SecretString::from(secret.to_json());
                            let request_token =
                                client_request_token(name, &current.version_id, &value);
                            if let Err(e) = store
                                .replace(name, &value, &request_token, &current.version_id)
                                .await
                            {
                                tracing::warn!(account = name, error = %e, "could not record needs_reauth status in the secret");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(account = name, error = %e, "could not record needs_reauth: secret unreadable");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(account = name, error = %e, "could not record needs_reauth: secret unavailable");
            }
        }
        tracing::error!(
            account = name,
            audience = only.map_or("all", Audience::as_str),
            code = %person.code,
            reason = %person.reason,
            "account needs re-authentication by a person; token requests stopped until `mailbridge login`"
        );
        let held: &[Audience] = match only {
            Some(_) => std::slice::from_ref(&audience),
            None => {
                state.newest_refresh_token = None;
                &Audience::ALL
            }
        };
        for held in held {
            state.blocked.insert(
                *held,
                Blocked {
                    reason: reason.clone(),
                    checked_at: Instant::now(),
                },
            );
        }
        TokenError::NeedsReauth {
            account: name.to_owned(),
            reason,
        }
    }
}

/// The status after `person` failed for `only` (or every audience), given the stored one: an
/// audience-specific failure on top of the other audience's holds every audience, and keeps
/// both reasons.
fn merged_status(
    stored: &AccountStatus,
    person: &NeedsPerson,
    only: Option<Audience>,
    now: DateTime<Utc>,
) -> AccountStatus {
    let fresh = AccountStatus::needs_reauth(person.reason.clone(), person.code.clone(), now)
        .for_audience(only);
    match (
        stored.state == AccountState::NeedsReauth,
        stored.audience,
        only,
    ) {
        (true, Some(other), Some(this)) if other != this => {
            let earlier = format!("{}: {}", other.label(), status_reason(stored));
            AccountStatus::needs_reauth(
                format!("{earlier}; {}: {}", this.label(), person.reason),
                person.code.clone(),
                now,
            )
        }
        _ => fresh,
    }
}

fn status_reason(status: &AccountStatus) -> String {
    let reason = status
        .reason
        .clone()
        .unwrap_or_else(|| "marked needs_reauth".to_owned());
    match &status.code {
        Some(code) => format!("{reason} [{code}]"),
        None => reason,
    }
}

#[async_trait]
impl AccessTokenSource for TokenService {
    async fn access_token(
        &self,
        account: &str,
        audience: Audience,
    ) -> Result<AccessToken, TokenError> {
        let deadline = Instant::now() + self.inner.config.default_timeout;
        self.access_token_until(account, audience, deadline).await
    }

    fn credential_expiries(&self) -> Vec<super::expiry::CredentialExpiry> {
        self.app_credential_expiries()
    }

    fn invalidate(&self, account: &str, audience: Audience) {
        let name = self.inner.config.secret_name(account);
        self.inner
            .tokens
            .lock()
            .expect("token cache lock")
            .remove(&(name, audience));
    }
}

/// The permission names in a token response's `scope` (`https://graph.microsoft.com/Mail.Send
/// offline_access` → `Mail.Send`); OpenID scopes are not permissions of the resource.
fn granted_permissions(scope: &str) -> Vec<String> {
    scope
        .split_whitespace()
        .filter(|s| !matches!(*s, "offline_access" | "openid" | "profile" | "email"))
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_owned())
        .collect()
}
