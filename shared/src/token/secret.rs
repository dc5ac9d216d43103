//! The account secret: one JSON document per Microsoft 365 account in Secrets Manager
//! (`shared/schemas/account-secret.schema.json`, docs/accounts.md).
//!
//! Parsing is strict and every error names the field; fields this version does not know are
//! kept and written back unchanged, so a newer writer's additions survive a write-back.

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use super::app_credential::{AppCertificate, AppCredential};
use super::{Audience, TokenError};
use crate::send_rights::{SHARED_SEND_SCOPE, SharedMailboxRoute};

/// The only schema version this code reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// Default Entra ID authority (global cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Default Microsoft Graph root (global cloud).
pub const DEFAULT_GRAPH_HOST: &str = "https://graph.microsoft.com";
/// Default resource (audience) for Exchange Online IMAP tokens.
pub const DEFAULT_IMAP_RESOURCE: &str = "https://outlook.office.com";
/// Default resource of app-only IMAP tokens (`https://outlook.office365.com/.default`, as
/// Microsoft's app-only IMAP guide asks for them).
pub const DEFAULT_APP_ONLY_IMAP_RESOURCE: &str = "https://outlook.office365.com";
/// Default Exchange Online IMAP server.
pub const DEFAULT_IMAP_HOST: &str = "outlook.office365.com";
/// Default Graph permission names requested for the Graph audience. Microsoft returns every
/// permission already consented for the resource (e.g. `Mail.Send.Shared`) in the token.
pub const DEFAULT_GRAPH_SCOPES: &[&str] = &["Mail.Send"];
/// The smallest `max_message_bytes` an account may set (1 MB: below that even a reply with a
/// logo would not go out).
pub const MIN_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// The largest `max_message_bytes`: 150 MB, the largest `MaxSendSize` Exchange Online allows.
pub const MAX_MAX_MESSAGE_BYTES: usize = crate::notification::MAX_MIME_MESSAGE_BYTES;
/// Permission requested for the IMAP audience.
pub const IMAP_SCOPE: &str = "IMAP.AccessAsUser.All";
/// Graph permission for reading (and moving, flagging, deleting) mail of the user's mailbox.
pub const MAILBOX_READ_SCOPE: &str = "Mail.ReadWrite";
/// Graph permission for the same in a mailbox shared with the user (Full Access).
pub const SHARED_MAILBOX_READ_SCOPE: &str = "Mail.ReadWrite.Shared";

/// Whether the account's grant is usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountState {
    /// Tokens can be minted.
    Ok,
    /// A person must sign in again (`mailbridge login`); functions do not call the token endpoint.
    NeedsReauth,
}

impl AccountState {
    /// The JSON spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountState::Ok => "ok",
            AccountState::NeedsReauth => "needs_reauth",
        }
    }
}

/// `status` of an account secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountStatus {
    /// ok / needs_reauth.
    pub state: AccountState,
    /// Human-readable reason (needs_reauth), e.g. "multi-factor authentication required ...".
    pub reason: Option<String>,
    /// Machine code, e.g. `AADSTS50076` or `invalid_grant`.
    pub code: Option<String>,
    /// When the state was entered.
    pub since: Option<DateTime<Utc>>,
    /// The one audience that needs a person (e.g. IMAP consent missing), or `None`: every
    /// audience (a dead grant, a disabled user; also every status written before audiences).
    pub audience: Option<Audience>,
}

impl AccountStatus {
    /// `{"state":"ok"}`.
    pub fn ok() -> Self {
        Self {
            state: AccountState::Ok,
            reason: None,
            code: None,
            since: None,
            audience: None,
        }
    }

    /// Whether `audience` must wait for a person.
    pub fn applies_to(&self, audience: Audience) -> bool {
        self.state == AccountState::NeedsReauth && self.audience.is_none_or(|only| only == audience)
    }

    /// needs_reauth for `audience` only (`None`: every audience).
    pub fn for_audience(mut self, audience: Option<Audience>) -> Self {
        self.audience = audience;
        self
    }

    /// needs_reauth with a reason and code, since `now`.
    pub fn needs_reauth(
        reason: impl Into<String>,
        code: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            state: AccountState::NeedsReauth,
            reason: Some(reason.into()),
            code: Some(code.into()),
            since: Some(now),
            audience: None,
        }
    }
}

/// A parsed account secret. `Debug` redacts the password and refresh token.
#[derive(Clone)]
pub struct AccountSecret {
    /// Entra tenant id (GUID) or verified domain name. Not `common`/`consumers`.
    pub tenant_id: String,
    /// Application (client) id of the public-client app registration.
    pub client_id: String,
    /// User principal name the refresh token belongs to (the sending / IMAP login user).
    pub username: String,
    /// Optional password, only for ROPC bootstrap (accounts without MFA).
    pub password: Option<SecretString>,
    /// Current refresh token (absent before the first login; never in app-only mode).
    pub refresh_token: Option<SecretString>,
    /// When `refresh_token` was stored.
    pub refresh_token_stored_at: Option<DateTime<Utc>>,
    /// Entra authority, e.g. `https://login.microsoftonline.com` (sovereign clouds differ).
    pub authority_host: String,
    /// Graph root, e.g. `https://graph.microsoft.com`.
    pub graph_host: String,
    /// Graph permission names requested for the Graph audience.
    pub graph_scopes: Vec<String>,
    /// How mail from a shared mailbox is sent (`shared_mailbox_route`, default `send_as`).
    pub shared_mailbox_route: SharedMailboxRoute,
    /// The largest message this account's mailbox may send, in bytes (`max_message_bytes`:
    /// its Exchange `MaxSendSize`, when the tenant changed it from the 35 MB default). Overrides
    /// send-notifications' `MAILBRIDGE_MAX_MESSAGE_BYTES` for this account.
    pub max_message_bytes: Option<usize>,
    /// Resource whose `IMAP.AccessAsUser.All` permission IMAP tokens carry.
    pub imap_resource: String,
    /// IMAP server host (optionally `host:port`).
    pub imap_host: String,
    /// ok / needs_reauth.
    pub status: AccountStatus,
    /// `mode: app_only`: the application's own credential (client credentials grant, no user,
    /// no refresh token; `username` is then the mailbox it sends as and reads). `None`:
    /// `mode: delegated`, a user's grant.
    pub app_only: Option<AppCredential>,
    /// Fields this version does not know; written back unchanged.
    pub extra: Map<String, Value>,
}

impl std::fmt::Debug for AccountSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSecret")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_token_stored_at", &self.refresh_token_stored_at)
            .field("authority_host", &self.authority_host)
            .field("graph_host", &self.graph_host)
            .field("graph_scopes", &self.graph_scopes)
            .field("shared_mailbox_route", &self.shared_mailbox_route)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("imap_resource", &self.imap_resource)
            .field("imap_host", &self.imap_host)
            .field("status", &self.status)
            .field("app_only", &self.app_only)
            .finish_non_exhaustive()
    }
}

struct FieldReader<'a> {
    secret: &'a str,
    object: Map<String, Value>,
}

impl FieldReader<'_> {
    fn bad(&self, field: &str, problem: impl std::fmt::Display) -> TokenError {
        TokenError::BadSecret {
            secret: self.secret.to_owned(),
            problem: format!("field `{field}`: {problem}"),
        }
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        match self.object.remove(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn opt_string(&mut self, field: &str) -> Result<Option<String>, TokenError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.bad(field, "must not be empty (omit it instead)"))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.bad(field, format!("expected a string, got {}", kind(&other)))),
        }
    }

    /// The app-only credential: `client_secret` (+ `client_secret_expires_at`), or
    /// `certificate` + `private_key`.
    fn app_credential(&mut self) -> Result<AppCredential, TokenError> {
        let client_secret = self.opt_string("client_secret")?;
        let secret_expires = self.opt_time("client_secret_expires_at")?;
        let certificate = self.opt_string("certificate")?;
        let private_key = self.opt_string("private_key")?;
        match (client_secret, certificate, private_key) {
            (Some(secret), None, None) => Ok(AppCredential::ClientSecret {
                secret: SecretString::from(secret),
                expires_at: secret_expires,
            }),
            (None, Some(certificate), Some(key)) => {
                if secret_expires.is_some() {
                    return Err(self.bad(
                        "client_secret_expires_at",
                        "belongs to a client secret; a certificate's end date is its notAfter",
                    ));
                }
                AppCertificate::from_pem(&certificate, SecretString::from(key))
                    .map(|c| AppCredential::Certificate(Box::new(c)))
                    .map_err(|problem| {
                        let field = if problem.starts_with("private_key") {
                            "private_key"
                        } else {
                            "certificate"
                        };
                        self.bad(field, problem)
                    })
            }
            (None, Some(_), None) => Err(self.bad(
                "private_key",
                "is required with `certificate` (the PEM private key the client assertion is signed with)",
            )),
            (None, None, Some(_)) => Err(self.bad(
                "certificate",
                "is required with `private_key` (the PEM certificate registered on the app)",
            )),
            (Some(_), Some(_), _) | (Some(_), None, Some(_)) => Err(self.bad(
                "client_secret",
                "give either `client_secret` or `certificate` + `private_key`, not both",
            )),
            (None, None, None) => Err(self.bad(
                "client_secret",
                "app_only mode needs a credential: `client_secret` (with `client_secret_expires_at`), or `certificate` + `private_key` (PEM)",
            )),
        }
    }

    fn req_string(&mut self, field: &str) -> Result<String, TokenError> {
        self.opt_string(field)?
            .ok_or_else(|| self.bad(field, "is required but missing"))
    }

    fn opt_time(&mut self, field: &str) -> Result<Option<DateTime<Utc>>, TokenError> {
        match self.opt_string(field)? {
            None => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| {
                    self.bad(
                        field,
                        format!("expected an RFC 3339 timestamp, got {s:?} ({e})"),
                    )
                }),
        }
    }

    fn opt_url(&mut self, field: &str, default: &str) -> Result<String, TokenError> {
        let raw = self
            .opt_string(field)?
            .unwrap_or_else(|| default.to_owned());
        crate::config::service_base_url(&raw, field).map_err(|e| self.bad(field, e.problem))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl AccountSecret {
    /// Parse the JSON stored in secret `secret_name`. Errors are [`TokenError::BadSecret`]
    /// naming the secret and the field.
    pub fn parse(secret_name: &str, json: &str) -> Result<Self, TokenError> {
        let value: Value = serde_json::from_str(json).map_err(|e| TokenError::BadSecret {
            secret: secret_name.to_owned(),
            // serde_json's message names the position, never the content.
            problem: format!("not valid JSON: {e}"),
        })?;
        let Value::Object(object) = value else {
            return Err(TokenError::BadSecret {
                secret: secret_name.to_owned(),
                problem: format!("expected a JSON object, got {}", kind(&value)),
            });
        };
        let mut r = FieldReader {
            secret: secret_name,
            object,
        };
        match r.take("schema_version") {
            None => return Err(r.bad("schema_version", "is required but missing")),
            Some(Value::Number(n)) if n.as_u64() == Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(r.bad(
                    "schema_version",
                    format!("unsupported value {other}; this version reads {SCHEMA_VERSION}"),
                ));
            }
        }
        let tenant_id = r.req_string("tenant_id")?;
        if ["common", "consumers"].contains(&tenant_id.to_ascii_lowercase().as_str()) {
            return Err(r.bad(
                "tenant_id",
                format!("{tenant_id:?} cannot be used here; use the tenant id or domain"),
            ));
        }
        if tenant_id.contains('/') || tenant_id.contains(char::is_whitespace) {
            return Err(r.bad("tenant_id", "must be a tenant GUID or domain name"));
        }
        let client_id = r.req_string("client_id")?;
        let app_only_mode = match r.opt_string("mode")?.as_deref() {
            None | Some("delegated") => false,
            Some("app_only") => true,
            Some(other) => {
                return Err(r.bad(
                    "mode",
                    format!("expected \"delegated\" (a user's sign-in) or \"app_only\" (the application's own certificate or client secret), got {other:?}"),
                ));
            }
        };
        let username = r.req_string("username")?;
        if !username.contains('@') {
            return Err(r.bad(
                "username",
                "expected a user principal name like user@contoso.com",
            ));
        }
        let password = r.opt_string("password")?.map(SecretString::from);
        let refresh_token = r.opt_string("refresh_token")?.map(SecretString::from);
        let refresh_token_stored_at = r.opt_time("refresh_token_stored_at")?;
        let app_only = if app_only_mode {
            for field in ["password", "refresh_token"] {
                let present = match field {
                    "password" => password.is_some(),
                    _ => refresh_token.is_some(),
                };
                if present {
                    return Err(r.bad(
                        field,
                        "must not be set in app_only mode (no user signs in; the application's certificate or client secret gets the tokens)",
                    ));
                }
            }
            Some(r.app_credential()?)
        } else {
            for field in [
                "client_secret",
                "client_secret_expires_at",
                "certificate",
                "private_key",
            ] {
                if r.object.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(r.bad(
                        field,
                        "belongs to mode \"app_only\"; set `mode` to \"app_only\" or remove it",
                    ));
                }
            }
            None
        };
        if refresh_token.is_some() && refresh_token_stored_at.is_none() {
            return Err(r.bad(
                "refresh_token_stored_at",
                "is required when refresh_token is present",
            ));
        }
        let authority_host = r.opt_url("authority_host", DEFAULT_AUTHORITY_HOST)?;
        let graph_host = r.opt_url("graph_host", DEFAULT_GRAPH_HOST)?;
        let graph_scopes = match r.take("graph_scopes") {
            None => DEFAULT_GRAPH_SCOPES.iter().map(|s| s.to_string()).collect(),
            Some(Value::Array(items)) => {
                let mut scopes = Vec::new();
                for item in items {
                    match item {
                        Value::String(s)
                            if !s.is_empty()
                                && !s.contains(char::is_whitespace)
                                && !s.contains('/') =>
                        {
                            scopes.push(s)
                        }
                        other => {
                            return Err(r.bad(
                                "graph_scopes",
                                format!(
                                    "expected permission names like \"Mail.Send\", got {other}"
                                ),
                            ));
                        }
                    }
                }
                if scopes.is_empty() {
                    return Err(r.bad("graph_scopes", "must not be empty"));
                }
                scopes
            }
            Some(other) => {
                return Err(r.bad(
                    "graph_scopes",
                    format!("expected an array, got {}", kind(&other)),
                ));
            }
        };
        let shared_mailbox_route = match r.opt_string("shared_mailbox_route")? {
            None => SharedMailboxRoute::default(),
            Some(value) => SharedMailboxRoute::parse(&value)
                .map_err(|problem| r.bad("shared_mailbox_route", problem))?,
        };
        let max_message_bytes = match r.take("max_message_bytes") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_u64() {
                Some(n)
                    if (MIN_MAX_MESSAGE_BYTES as u64..=MAX_MAX_MESSAGE_BYTES as u64)
                        .contains(&n) =>
                {
                    Some(n as usize)
                }
                _ => {
                    return Err(r.bad(
                        "max_message_bytes",
                        format!(
                            "expected bytes from {MIN_MAX_MESSAGE_BYTES} to {MAX_MAX_MESSAGE_BYTES} (the largest MaxSendSize Exchange Online allows), got {value}"
                        ),
                    ));
                }
            },
        };
        let imap_resource = r.opt_string("imap_resource")?.unwrap_or_else(|| {
            if app_only.is_some() {
                DEFAULT_APP_ONLY_IMAP_RESOURCE
            } else {
                DEFAULT_IMAP_RESOURCE
            }
            .to_owned()
        });
        match url::Url::parse(&imap_resource) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            _ => {
                return Err(r.bad(
                    "imap_resource",
                    format!("expected an https resource URI like {DEFAULT_IMAP_RESOURCE}, got {imap_resource:?}"),
                ));
            }
        }
        let imap_resource = imap_resource.trim_end_matches('/').to_owned();
        let imap_host = r
            .opt_string("imap_host")?
            .unwrap_or_else(|| DEFAULT_IMAP_HOST.to_owned());
        let status = match r.take("status") {
            None => AccountStatus::ok(),
            Some(Value::Object(status)) => {
                let mut s = FieldReader {
                    secret: secret_name,
                    object: status,
                };
                let state = match s.opt_string("state")?.as_deref() {
                    Some("ok") => AccountState::Ok,
                    Some("needs_reauth") => AccountState::NeedsReauth,
                    None => return Err(r.bad("status.state", "is required but missing")),
                    Some(other) => {
                        return Err(r.bad(
                            "status.state",
                            format!("expected \"ok\" or \"needs_reauth\", got {other:?}"),
                        ));
                    }
                };
                let reason = s
                    .opt_string("reason")
                    .map_err(|_| r.bad("status.reason", "expected a string"))?;
                let code = s
                    .opt_string("code")
                    .map_err(|_| r.bad("status.code", "expected a string"))?;
                let since = s
                    .opt_time("since")
                    .map_err(|_| r.bad("status.since", "expected an RFC 3339 timestamp"))?;
                let audience = match s
                    .opt_string("audience")
                    .map_err(|_| r.bad("status.audience", "expected a string"))?
                    .as_deref()
                {
                    None => None,
                    Some(value) => match Audience::parse(value) {
                        Some(audience) => Some(audience),
                        None => {
                            return Err(r.bad(
                                "status.audience",
                                format!(
                                    "expected \"graph\", \"imap\", \"graph_mailbox\" or \"graph_shared_mailbox\", got {value:?}"
                                ),
                            ));
                        }
                    },
                };
                AccountStatus {
                    state,
                    reason,
                    code,
                    since,
                    audience,
                }
            }
            Some(other) => {
                return Err(r.bad(
                    "status",
                    format!("expected an object, got {}", kind(&other)),
                ));
            }
        };
        Ok(Self {
            tenant_id,
            client_id,
            username,
            password,
            refresh_token,
            refresh_token_stored_at,
            authority_host,
            graph_host,
            graph_scopes,
            shared_mailbox_route,
            max_message_bytes,
            imap_resource,
            imap_host,
            status,
            app_only,
            extra: r.object,
        })
    }

    /// A new secret with defaults for everything but the identity of the account.
    pub fn new(tenant_id: &str, client_id: &str, username: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            username: username.to_owned(),
            password: None,
            refresh_token: None,
            refresh_token_stored_at: None,
            authority_host: DEFAULT_AUTHORITY_HOST.to_owned(),
            graph_host: DEFAULT_GRAPH_HOST.to_owned(),
            graph_scopes: DEFAULT_GRAPH_SCOPES.iter().map(|s| s.to_string()).collect(),
            shared_mailbox_route: SharedMailboxRoute::default(),
            max_message_bytes: None,
            imap_resource: DEFAULT_IMAP_RESOURCE.to_owned(),
            imap_host: DEFAULT_IMAP_HOST.to_owned(),
            status: AccountStatus::ok(),
            app_only: None,
            extra: Map::new(),
        }
    }

    /// A new app-only account: `mailbox` is the mailbox it sends as and reads.
    pub fn new_app_only(
        tenant_id: &str,
        client_id: &str,
        mailbox: &str,
        credential: AppCredential,
    ) -> Self {
        Self {
            app_only: Some(credential),
            imap_resource: DEFAULT_APP_ONLY_IMAP_RESOURCE.to_owned(),
            ..Self::new(tenant_id, client_id, mailbox)
        }
    }

    /// Serialise to the stored JSON (this is the only place secrets are exposed for writing).
    pub fn to_json(&self) -> String {
        let mut o = self.extra.clone();
        o.insert("schema_version".into(), Value::from(SCHEMA_VERSION));
        o.insert("tenant_id".into(), Value::from(self.tenant_id.clone()));
        o.insert("client_id".into(), Value::from(self.client_id.clone()));
        o.insert("username".into(), Value::from(self.username.clone()));
        match &self.app_only {
            None => {}
            Some(AppCredential::ClientSecret { secret, expires_at }) => {
                o.insert("mode".into(), Value::from("app_only"));
                o.insert("client_secret".into(), Value::from(secret.expose_secret()));
                if let Some(at) = expires_at {
                    o.insert("client_secret_expires_at".into(), Value::from(rfc3339(*at)));
                }
            }
            Some(AppCredential::Certificate(c)) => {
                o.insert("mode".into(), Value::from("app_only"));
                o.insert("certificate".into(), Value::from(c.certificate_pem.clone()));
                o.insert(
                    "private_key".into(),
                    Value::from(c.private_key_pem.expose_secret()),
                );
            }
        }
        if let Some(p) = &self.password {
            o.insert("password".into(), Value::from(p.expose_secret()));
        }
        if let Some(t) = &self.refresh_token {
            o.insert("refresh_token".into(), Value::from(t.expose_secret()));
        }
        if let Some(t) = self.refresh_token_stored_at {
            o.insert("refresh_token_stored_at".into(), Value::from(rfc3339(t)));
        }
        o.insert(
            "authority_host".into(),
            Value::from(self.authority_host.clone()),
        );
        o.insert("graph_host".into(), Value::from(self.graph_host.clone()));
        o.insert(
            "graph_scopes".into(),
            Value::from(self.graph_scopes.clone()),
        );
        if self.shared_mailbox_route != SharedMailboxRoute::default() {
            o.insert(
                "shared_mailbox_route".into(),
                Value::from(self.shared_mailbox_route.as_str()),
            );
        }
        if let Some(bytes) = self.max_message_bytes {
            o.insert("max_message_bytes".into(), Value::from(bytes));
        }
        o.insert(
            "imap_resource".into(),
            Value::from(self.imap_resource.clone()),
        );
        o.insert("imap_host".into(), Value::from(self.imap_host.clone()));
        let mut status = Map::new();
        status.insert("state".into(), Value::from(self.status.state.as_str()));
        if let Some(r) = &self.status.reason {
            status.insert("reason".into(), Value::from(r.clone()));
        }
        if let Some(c) = &self.status.code {
            status.insert("code".into(), Value::from(c.clone()));
        }
        if let Some(s) = self.status.since {
            status.insert("since".into(), Value::from(rfc3339(s)));
        }
        if let Some(a) = self.status.audience {
            status.insert("audience".into(), Value::from(a.as_str()));
        }
        o.insert("status".into(), Value::Object(status));
        Value::Object(o).to_string()
    }

    /// The resource (audience URI) tokens for `audience` are minted for.
    pub fn resource(&self, audience: Audience) -> &str {
        match audience {
            Audience::Graph | Audience::GraphMailbox | Audience::GraphSharedMailbox => {
                &self.graph_host
            }
            Audience::Imap => &self.imap_resource,
        }
    }

    /// The Graph permission names a token request asks for: `graph_scopes`, plus
    /// `Mail.Send.Shared` when the shared mailbox route needs it (and only then).
    pub fn graph_permissions(&self) -> Vec<String> {
        let mut permissions = self.graph_scopes.clone();
        if self.shared_mailbox_route.needs_shared_scope()
            && !permissions
                .iter()
                .any(|p| p.eq_ignore_ascii_case(SHARED_SEND_SCOPE))
        {
            permissions.push(SHARED_SEND_SCOPE.to_owned());
        }
        permissions
    }

    /// The `scope` parameter for a token request for `audience`: fully-qualified permissions
    /// of ONE resource plus `offline_access` (so a refresh token comes back). App-only:
    /// `{resource}/.default` (the client credentials grant takes nothing else; the token
    /// carries every application permission consented on the resource).
    pub fn scope_for(&self, audience: Audience) -> String {
        let resource = self.resource(audience);
        if self.app_only.is_some() {
            return format!("{resource}/.default");
        }
        let mut parts: Vec<String> = match audience {
            Audience::Graph => self
                .graph_permissions()
                .iter()
                .map(|p| format!("{resource}/{p}"))
                .collect(),
            Audience::Imap => vec![format!("{resource}/{IMAP_SCOPE}")],
            Audience::GraphMailbox => vec![format!("{resource}/{MAILBOX_READ_SCOPE}")],
            Audience::GraphSharedMailbox => vec![
                format!("{resource}/{MAILBOX_READ_SCOPE}"),
                format!("{resource}/{SHARED_MAILBOX_READ_SCOPE}"),
            ],
        };
        parts.push("offline_access".to_owned());
        parts.join(" ")
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host, self.tenant_id
        )
    }

    /// `{authority}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_endpoint(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/devicecode",
            self.authority_host, self.tenant_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_mailbox_audiences_ask_for_mail_read_write_and_shared_only_when_shared() {
        let s = AccountSecret::new("contoso.com", "client", "agent@contoso.com");
        assert_eq!(
            s.scope_for(Audience::GraphMailbox),
            "https://graph.microsoft.com/Mail.ReadWrite offline_access"
        );
        assert_eq!(
            s.scope_for(Audience::GraphSharedMailbox),
            "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.ReadWrite.Shared offline_access"
        );
        assert!(!s.scope_for(Audience::Graph).contains("ReadWrite"));
        for audience in Audience::ALL {
            assert_eq!(Audience::parse(audience.as_str()), Some(audience));
        }
    }

    fn minimal() -> Value {
        serde_json::json!({
            "schema_version": 1,
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": "11111111-2222-3333-4444-555555555555",
            "username": "helpdesk@contoso.com",
        })
    }

    #[test]
    fn defaults_apply_and_round_trip_keeps_unknown_fields() {
        let mut v = minimal();
        v["future_field"] = serde_json::json!({"x": 1});
        v["refresh_token"] = "rt-1".into();
        v["refresh_token_stored_at"] = "2026-11-01T10:00:00Z".into();
        let s = AccountSecret::parse("mailbridge/contoso", &v.to_string()).unwrap();
        assert_eq!(s.authority_host, DEFAULT_AUTHORITY_HOST);
        assert_eq!(s.graph_host, DEFAULT_GRAPH_HOST);
        assert_eq!(s.imap_resource, DEFAULT_IMAP_RESOURCE);
        assert_eq!(s.imap_host, DEFAULT_IMAP_HOST);
        assert_eq!(s.status, AccountStatus::ok());
        assert_eq!(
            s.scope_for(Audience::Graph),
            "https://graph.microsoft.com/Mail.Send offline_access"
        );
        assert_eq!(
            s.scope_for(Audience::Imap),
            "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
        );
        let again = AccountSecret::parse("x", &s.to_json()).unwrap();
        assert_eq!(again.extra["future_field"], serde_json::json!({"x": 1}));
        assert_eq!(again.refresh_token.unwrap().expose_secret(), "rt-1");
    }

    #[test]
    fn max_message_bytes_is_kept_and_checked_against_exchanges_range() {
        let s = AccountSecret::parse("x", &minimal().to_string()).unwrap();
        assert_eq!(s.max_message_bytes, None);
        assert!(!s.to_json().contains("max_message_bytes"));
        let mut v = minimal();
        v["max_message_bytes"] = 26_214_400.into();
        let s = AccountSecret::parse("x", &v.to_string()).unwrap();
        assert_eq!(s.max_message_bytes, Some(26_214_400));
        let again = AccountSecret::parse("x", &s.to_json()).unwrap();
        assert_eq!(again.max_message_bytes, Some(26_214_400));
        for bad in [
            serde_json::json!(999_999),
            serde_json::json!(157_286_401u64),
            serde_json::json!("35MB"),
            serde_json::json!(-1),
        ] {
            v["max_message_bytes"] = bad.clone();
            let e = AccountSecret::parse("mailbridge/contoso", &v.to_string())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("field `max_message_bytes`") && e.contains("157286400"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_shared_mailbox_route_decides_whether_mail_send_shared_is_asked_for() {
        let s = AccountSecret::parse("x", &minimal().to_string()).unwrap();
        assert_eq!(s.shared_mailbox_route, SharedMailboxRoute::SendAs);
        assert!(!s.scope_for(Audience::Graph).contains("Mail.Send.Shared"));
        assert!(!s.to_json().contains("shared_mailbox_route"));
        let mut v = minimal();
        v["shared_mailbox_route"] = "full_access".into();
        let s = AccountSecret::parse("x", &v.to_string()).unwrap();
        assert_eq!(
            s.scope_for(Audience::Graph),
            "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.Send.Shared offline_access"
        );
        assert_eq!(
            s.scope_for(Audience::Imap),
            "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
        );
        let again = AccountSecret::parse("x", &s.to_json()).unwrap();
        assert_eq!(again.shared_mailbox_route, SharedMailboxRoute::FullAccess);
        v["shared_mailbox_route"] = "users".into();
        let e = AccountSecret::parse("mailbridge/contoso", &v.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mailbridge/contoso")
                && e.contains("field `shared_mailbox_route`")
                && e.contains("\"send_as\"")
                && e.contains("\"full_access\""),
            "{e}"
        );
    }

    #[test]
    fn debug_redacts_password_and_refresh_token() {
        let mut s = AccountSecret::new("t", "c", "u@x.com");
        s.password = Some("hunter2-password".into());
        s.refresh_token = Some("0.ARt-secret-refresh".into());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("secret-refresh"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn errors_name_the_secret_and_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (serde_json::json!({"tenant_id": "t"}), "schema_version"),
            (
                {
                    let mut v = minimal();
                    v["schema_version"] = 2.into();
                    v
                },
                "schema_version",
            ),
            (
                {
                    let mut v = minimal();
                    v.as_object_mut().unwrap().remove("tenant_id");
                    v
                },
                "tenant_id",
            ),
            (
                {
                    let mut v = minimal();
                    v["client_id"] = 5.into();
                    v
                },
                "client_id",
            ),
            (
                {
                    let mut v = minimal();
                    v["username"] = "nobody".into();
                    v
                },
                "username",
            ),
            (
                {
                    let mut v = minimal();
                    v["refresh_token"] = "rt".into();
                    v
                },
                "refresh_token_stored_at",
            ),
            (
                {
                    let mut v = minimal();
                    v["refresh_token"] = "rt".into();
                    v["refresh_token_stored_at"] = "yesterday".into();
                    v
                },
                "refresh_token_stored_at",
            ),
            (
                {
                    let mut v = minimal();
                    v["authority_host"] = "http://login.example.com".into();
                    v
                },
                "authority_host",
            ),
            (
                {
                    let mut v = minimal();
                    v["graph_host"] = "ftp://x".into();
                    v
                },
                "graph_host",
            ),
            (
                {
                    let mut v = minimal();
                    v["graph_scopes"] = serde_json::json!([]);
                    v
                },
                "graph_scopes",
            ),
            (
                {
                    let mut v = minimal();
                    v["status"] = serde_json::json!({"state": "broken"});
                    v
                },
                "status.state",
            ),
            (
                {
                    let mut v = minimal();
                    v["tenant_id"] = "common".into();
                    v
                },
                "tenant_id",
            ),
        ];
        for (json, field) in cases {
            let err = AccountSecret::parse("mailbridge/acme", &json.to_string()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("mailbridge/acme"), "{text}");
            assert!(
                text.contains(&format!("`{field}`")),
                "expected field {field}: {text}"
            );
        }
        let err = AccountSecret::parse("mailbridge/acme", "{not json").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = AccountSecret::parse("mailbridge/acme", "[1]").unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    #[test]
    fn a_status_names_its_audience_and_one_without_applies_to_all() {
        let mut v = minimal();
        v["status"] = serde_json::json!({"state": "needs_reauth", "code": "AADSTS65001"});
        let old = AccountSecret::parse("a", &v.to_string()).unwrap();
        assert!(old.status.applies_to(Audience::Graph));
        assert!(old.status.applies_to(Audience::Imap));
        v["status"]["audience"] = "imap".into();
        let imap = AccountSecret::parse("a", &v.to_string()).unwrap();
        assert_eq!(imap.status.audience, Some(Audience::Imap));
        assert!(imap.status.applies_to(Audience::Imap));
        assert!(!imap.status.applies_to(Audience::Graph));
        let again = AccountSecret::parse("a", &imap.to_json()).unwrap();
        assert_eq!(again.status, imap.status);
        v["status"]["audience"] = "smtp".into();
        let err = AccountSecret::parse("a", &v.to_string()).unwrap_err();
        assert!(err.to_string().contains("`status.audience`"), "{err}");
        assert!(!AccountStatus::ok().applies_to(Audience::Graph));
    }

    #[test]
    fn sovereign_cloud_hosts_shape_the_scopes() {
        let mut v = minimal();
        v["authority_host"] = "https://login.microsoftonline.us".into();
        v["graph_host"] = "https://graph.microsoft.us/".into();
        v["imap_resource"] = "https://outlook.office365.us".into();
        v["graph_scopes"] = serde_json::json!(["Mail.Send", "Mail.Send.Shared"]);
        let s = AccountSecret::parse("gov", &v.to_string()).unwrap();
        assert_eq!(
            s.token_endpoint(),
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            s.scope_for(Audience::Graph),
            "https://graph.microsoft.us/Mail.Send https://graph.microsoft.us/Mail.Send.Shared offline_access"
        );
        assert_eq!(
            s.scope_for(Audience::Imap),
            "https://outlook.office365.us/IMAP.AccessAsUser.All offline_access"
        );
    }
}
