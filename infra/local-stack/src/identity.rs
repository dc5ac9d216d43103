//! Microsoft identity platform stand-in: `/{tenant}/oauth2/v2.0/token` (password,
//! refresh_token with rotation, device_code), `/{tenant}/oauth2/v2.0/devicecode`,
//! `/introspect` for Dovecot's oauth2 passdb, and test controls. Strict, Microsoft-shaped errors.

/// Handle to a running identity stand-in. Cheap to clone; all clones share state.
#[derive(Clone, Debug)]
pub struct IdentityStandIn {
    /// e.g. `http://127.0.0.1:41234` (the "authority host" accounts point at).
    pub base_url: String,
}

/// What the stand-in knows about an access token it issued (for the Graph stand-in and Dovecot).
#[derive(Clone, Debug)]
pub struct IssuedAccessToken {
    /// `https://graph.microsoft.com` or `https://outlook.office.com`.
    pub audience: String,
    /// Granted scopes, e.g. `Mail.Send`.
    pub scopes: Vec<String>,
    /// The user principal name the token was issued to.
    pub upn: String,
    /// Expiry.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl IdentityStandIn {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        anyhow::bail!("identity stand-in not built yet")
    }

    /// The URL Dovecot's oauth2 passdb posts tokens to (RFC 7662 introspection).
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.base_url)
    }

    /// Look up an access token this stand-in issued (None when unknown, revoked or expired).
    pub fn lookup_access_token(&self, _token: &str) -> Option<IssuedAccessToken> {
        None
    }
}
