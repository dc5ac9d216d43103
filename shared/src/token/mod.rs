//! OAuth2 token layer: account secrets in Secrets Manager, the Microsoft identity platform
//! client (refresh, ROPC bootstrap, device code, browser sign-in with PKCE), a per-(account, audience) access-token cache
//! with single-flight refresh, and rate-limited write-back of rotated refresh tokens.

pub mod app_credential;
pub mod authorization_code;
pub mod clock;
pub mod expiry;
pub mod identity;
pub mod login;
pub mod oauth_error;
pub mod scripted;
pub mod secret;
pub mod service;
pub mod store;

pub use clock::{Clock, OffsetClock, SystemClock};
pub use identity::{DeviceCodeEvent, DeviceCodePrompt, IdentityClient, TokenResponse};
pub use scripted::ScriptedTokens;
pub use secret::{AccountSecret, AccountState, AccountStatus};
pub use service::{TokenService, TokenServiceConfig};
pub use store::{InMemorySecretStore, SecretStore, SecretStoreError, SecretsManagerStore};

use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The resource an access token is minted for. One refresh token mints both; an access token
/// is only ever valid for one audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Microsoft Graph (`https://graph.microsoft.com/Mail.Send`).
    Graph,
    /// Exchange Online IMAP (`https://outlook.office.com/IMAP.AccessAsUser.All`).
    Imap,
    /// Microsoft Graph for reading the user's own mailbox (`Mail.ReadWrite`): mailboxes polled
    /// with `protocol: graph`. Asked for only by the poller of such a mailbox, so an account
    /// that only sends never needs the consent.
    GraphMailbox,
    /// Microsoft Graph for reading a shared mailbox through a delegate with Full Access
    /// (`Mail.ReadWrite` and `Mail.ReadWrite.Shared`).
    GraphSharedMailbox,
}

impl Audience {
    /// Every audience.
    pub const ALL: [Audience; 4] = [
        Audience::Graph,
        Audience::Imap,
        Audience::GraphMailbox,
        Audience::GraphSharedMailbox,
    ];

    /// The JSON spelling (`graph`, `imap`, `graph_mailbox`, `graph_shared_mailbox`).
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Graph => "graph",
            Audience::Imap => "imap",
            Audience::GraphMailbox => "graph_mailbox",
            Audience::GraphSharedMailbox => "graph_shared_mailbox",
        }
    }

    /// The audience of a JSON spelling.
    pub fn parse(value: &str) -> Option<Audience> {
        Audience::ALL.into_iter().find(|a| a.as_str() == value)
    }

    /// How operators read it (`Graph`, `IMAP`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Audience::Graph => "Graph",
            Audience::Imap => "IMAP",
            Audience::GraphMailbox => "Graph mailbox reading",
            Audience::GraphSharedMailbox => "Graph shared mailbox reading",
        }
    }
}

/// A bearer token for one audience. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token itself.
    pub secret: SecretString,
    /// When the identity platform says it expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// What it is for.
    pub audience: Audience,
    /// The permissions the identity platform granted (names without the resource, e.g.
    /// `Mail.Send`; empty when unknown).
    pub scopes: Vec<String>,
    /// The account's route for mail from a shared mailbox (its secret's `shared_mailbox_route`).
    pub shared_mailbox_route: crate::send_rights::SharedMailboxRoute,
    /// The account's send size limit in bytes (its secret's `max_message_bytes`), when set.
    pub max_message_bytes: Option<usize>,
    /// An app-only account's mailbox (its secret's `username`): such a token has no user, so
    /// there is no `/me`; mail goes through `/users/{mailbox}`. `None`: a user's token.
    pub app_only_mailbox: Option<String>,
}

impl AccessToken {
    /// A token with no recorded scopes, for the default route (tests and fakes).
    pub fn new(
        secret: SecretString,
        expires_at: chrono::DateTime<chrono::Utc>,
        audience: Audience,
    ) -> Self {
        AccessToken {
            secret,
            expires_at,
            audience,
            scopes: Vec::new(),
            shared_mailbox_route: Default::default(),
            max_message_bytes: None,
            app_only_mailbox: None,
        }
    }

    /// The sendMail / drafts endpoint for mail from `from` (`None`: the account's own
    /// mailbox). A user's token follows the shared mailbox route; an app-only token always
    /// names the mailbox (`/users/{from or the account's mailbox}`), with its application
    /// permission `Mail.Send`.
    pub fn send_endpoint(&self, from: Option<&str>) -> crate::graph::SendAs {
        match &self.app_only_mailbox {
            Some(mailbox) => crate::graph::SendAs::User(from.unwrap_or(mailbox).to_owned()),
            None => self.shared_mailbox_route.endpoint(from),
        }
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("shared_mailbox_route", &self.shared_mailbox_route)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("app_only_mailbox", &self.app_only_mailbox)
            .finish()
    }
}

/// Port: where the functions get access tokens from. The real adapter caches per
/// (account, audience) and refreshes through the identity platform; tests may use a fake.
#[async_trait]
pub trait AccessTokenSource: Send + Sync {
    /// A live access token for `account` (the account secret's name) and `audience`.
    async fn access_token(
        &self,
        account: &str,
        audience: Audience,
    ) -> Result<AccessToken, TokenError>;

    /// Forget the cached token (after a 401), so the next call refreshes.
    fn invalidate(&self, account: &str, audience: Audience);

    /// End dates of the app-only credentials tokens were minted with (for the invocation's
    /// [`expiry::METRIC`]); none by default.
    fn credential_expiries(&self) -> Vec<expiry::CredentialExpiry> {
        Vec::new()
    }
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A person must act (re-consent, MFA, new password...). The account status says why.
    #[error("account {account} needs re-authentication: {reason}")]
    NeedsReauth {
        /// Account secret name.
        account: String,
        /// Human-readable reason with the AADSTS code when there is one.
        reason: String,
    },
    /// Identity platform or Secrets Manager unavailable; retry later.
    #[error("token for account {account} temporarily unavailable: {detail}")]
    Transient {
        /// Account secret name.
        account: String,
        /// What failed.
        detail: String,
    },
    /// The account secret is missing or malformed.
    #[error("account secret {secret}: {problem}")]
    BadSecret {
        /// Secret name.
        secret: String,
        /// Which field and what is wrong with it.
        problem: String,
    },
}

impl crate::error::Classify for TokenError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            TokenError::NeedsReauth { .. } => ErrorClass::NeedsReauth,
            TokenError::Transient { .. } => ErrorClass::Transient,
            TokenError::BadSecret { .. } => ErrorClass::Permanent,
        }
    }
}
