//! Interactive sign-in for the operator CLI (`mailbridge login`): the browser (authorization
//! code with PKCE; works with MFA and where Conditional Access blocks the device code flow), the
//! device code flow (headless machines), or ROPC with a password, then store the refresh token in the account secret
//! with status `ok` — creating the secret when it does not exist yet.

use secrecy::{ExposeSecret, SecretString};

use super::authorization_code::AuthorizationRequest;
use super::clock::Clock;
use super::identity::{DeviceCodeError, DeviceCodeEvent, IdentityClient, TokenResponse};
use super::oauth_error::TokenEndpointError;
use super::secret::{AccountSecret, AccountStatus};
use super::store::{SecretStore, SecretStoreError, client_request_token};
use super::{Audience, TokenError};

/// What a successful login stored.
#[derive(Clone, Debug)]
pub struct LoginOutcome {
    /// Secret name written.
    pub secret_name: String,
    /// New version id.
    pub version_id: String,
    /// True when the secret was created.
    pub created: bool,
    /// Scopes granted for the audience used to sign in.
    pub granted_scope: String,
}

/// Why a login did not store anything.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The device code flow ended without a token.
    #[error("sign-in for {account} did not complete: {source}")]
    DeviceCode {
        /// Account secret name.
        account: String,
        /// How it ended.
        #[source]
        source: DeviceCodeError,
    },
    /// The identity platform refused (wrong password, MFA required for ROPC, ...).
    #[error("sign-in for {account} was refused: {reason}")]
    Refused {
        /// Account secret name.
        account: String,
        /// Reason with code.
        reason: String,
    },
    /// Someone other than the account's user signed in; nothing was stored.
    #[error(
        "sign-in for {account} was completed as {signed_in}, but the account's username is {expected}; nothing stored — sign in as {expected}"
    )]
    WrongUser {
        /// Account secret name.
        account: String,
        /// The secret's `username`.
        expected: String,
        /// Who actually signed in.
        signed_in: String,
    },
    /// The identity platform answered without a refresh token (offline_access not granted).
    #[error("sign-in for {account} returned no refresh token (is offline_access allowed?)")]
    NoRefreshToken {
        /// Account secret name.
        account: String,
    },
    /// Token or secret store problem.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl crate::error::Classify for LoginError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            LoginError::Token(t) => t.class(),
            _ => crate::error::ErrorClass::Permanent,
        }
    }
}

fn refused(account: &str, err: TokenEndpointError) -> LoginError {
    match err {
        TokenEndpointError::NeedsPerson(p) => LoginError::Refused {
            account: account.to_owned(),
            reason: format!("{} [{}]", p.reason, p.code),
        },
        TokenEndpointError::Transient(t) => LoginError::Token(TokenError::Transient {
            account: account.to_owned(),
            detail: t.detail,
        }),
        other => LoginError::Refused {
            account: account.to_owned(),
            reason: format!("{other:?}"),
        },
    }
}

/// Device code sign-in for `account` (the secret's identity fields and hosts), then store the
/// grant. `on_event` receives the prompt to show the user.
pub async fn device_code_login(
    store: &dyn SecretStore,
    identity: &IdentityClient,
    secret_name: &str,
    account: AccountSecret,
    clock: &dyn Clock,
    on_event: impl FnMut(DeviceCodeEvent) + Send,
) -> Result<LoginOutcome, LoginError> {
    let tokens = identity
        .device_code_flow(&account, Audience::Graph, on_event)
        .await
        .map_err(|source| match source {
            DeviceCodeError::Failed(e) => refused(secret_name, e),
            source => LoginError::DeviceCode {
                account: secret_name.to_owned(),
                source,
            },
        })?;
    store_login(store, secret_name, account, &tokens, clock).await
}

/// Browser sign-in: redeem the `code` the redirect of `request` carried (same redirect URI,
/// the request's PKCE verifier), then store the grant.
pub async fn authorization_code_login(
    store: &dyn SecretStore,
    identity: &IdentityClient,
    secret_name: &str,
    account: AccountSecret,
    request: &AuthorizationRequest,
    code: &SecretString,
    clock: &dyn Clock,
) -> Result<LoginOutcome, LoginError> {
    let tokens = identity
        .redeem_authorization_code(
            &account,
            request.audience,
            code,
            &request.redirect_uri,
            request.code_verifier(),
        )
        .await
        .map_err(|e| refused(secret_name, e))?;
    store_login(store, secret_name, account, &tokens, clock).await
}

/// ROPC sign-in (accounts without MFA). The password is stored too only if `keep_password`.
pub async fn password_login(
    store: &dyn SecretStore,
    identity: &IdentityClient,
    secret_name: &str,
    mut account: AccountSecret,
    password: SecretString,
    keep_password: bool,
    clock: &dyn Clock,
) -> Result<LoginOutcome, LoginError> {
    let tokens = identity
        .password(&account, Audience::Graph, &password)
        .await
        .map_err(|e| refused(secret_name, e))?;
    account.password = keep_password.then_some(password);
    store_login(store, secret_name, account, &tokens, clock).await
}

/// Store an app-only account (its credential checked by the caller) with status ok: creates the
/// secret if missing, otherwise replaces the stored value on top of the version just read,
/// keeping only stored fields this version does not know.
pub async fn store_account(
    store: &dyn SecretStore,
    secret_name: &str,
    mut account: AccountSecret,
) -> Result<LoginOutcome, LoginError> {
    account.status = AccountStatus::ok();
    write_account(store, secret_name, account, String::new()).await
}

/// Store a fresh grant: refresh token, stored-at, status ok. Refuses (`WrongUser`) when the
/// ID token says another user signed in. Creates the secret if missing;
/// otherwise `account` replaces the stored value, keeping only stored fields this version does not
/// know (read the existing secret first to keep e.g. its password).
pub async fn store_login(
    store: &dyn SecretStore,
    secret_name: &str,
    mut account: AccountSecret,
    tokens: &TokenResponse,
    clock: &dyn Clock,
) -> Result<LoginOutcome, LoginError> {
    if let Some(signed_in) = tokens.signed_in_user()
        && !signed_in.eq_ignore_ascii_case(&account.username)
    {
        return Err(LoginError::WrongUser {
            account: secret_name.to_owned(),
            expected: account.username.clone(),
            signed_in,
        });
    }
    let refresh_token = tokens
        .refresh_token
        .clone()
        .ok_or_else(|| LoginError::NoRefreshToken {
            account: secret_name.to_owned(),
        })?;
    account.refresh_token = Some(refresh_token);
    account.refresh_token_stored_at = Some(clock.now());
    account.status = AccountStatus::ok();
    write_account(store, secret_name, account, tokens.scope.clone()).await
}

/// Write `account` (create, or replace on top of the version just read).
async fn write_account(
    store: &dyn SecretStore,
    secret_name: &str,
    account: AccountSecret,
    granted_scope: String,
) -> Result<LoginOutcome, LoginError> {
    let store_err = |e: SecretStoreError| {
        LoginError::Token(TokenError::Transient {
            account: secret_name.to_owned(),
            detail: e.to_string(),
        })
    };
    // The operator's new grant wins, but is written on top of the version just read (keeping
    // the fields others stored there): when another writer slips in between, read again.
    let mut attempts = 0;
    let current = loop {
        attempts += 1;
        let current = match store.get(secret_name).await {
            Ok(current) => current,
            Err(e) => break Err(e),
        };
        let mut merged = account.clone();
        if let Ok(existing) = AccountSecret::parse(secret_name, current.value.expose_secret()) {
            for (k, v) in existing.extra {
                merged.extra.entry(k).or_insert(v);
            }
        }
        let value = SecretString::from(merged.to_json());
        let token = client_request_token(secret_name, &current.version_id, &value);
        match store
            .replace(secret_name, &value, &token, &current.version_id)
            .await
        {
            Err(SecretStoreError::Superseded { .. }) if attempts < 3 => continue,
            written => break Ok(written),
        }
    };
    match current {
        Ok(written) => {
            let version_id = written.map_err(store_err)?;
            Ok(LoginOutcome {
                secret_name: secret_name.to_owned(),
                version_id,
                created: false,
                granted_scope: granted_scope.clone(),
            })
        }
        Err(SecretStoreError::NotFound { .. }) => {
            let value = SecretString::from(account.to_json());
            let version_id = store.create(secret_name, &value).await.map_err(store_err)?;
            Ok(LoginOutcome {
                secret_name: secret_name.to_owned(),
                version_id,
                created: true,
                granted_scope,
            })
        }
        Err(e) => Err(store_err(e)),
    }
}
