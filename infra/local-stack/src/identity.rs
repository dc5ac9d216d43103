//! Microsoft identity platform stand-in: `/{tenant}/oauth2/v2.0/token` (password,
//! refresh_token with rotation, device_code, authorization_code with PKCE),
//! `/{tenant}/oauth2/v2.0/authorize` (a sign-in and consent form a test posts, as a browser
//! would), `/{tenant}/oauth2/v2.0/devicecode`,
//! `/introspect` and `/introspect/mailbox` for Dovecot's oauth2 passdbs, and test controls.
//! Strict, Microsoft-shaped errors.
//!
//! Behaviour modelled on Entra ID, from Microsoft identity platform documentation:
//! - Errors are `{"error", "error_description": "AADSTSnnnnn: … Trace ID: … Correlation ID: …
//!   Timestamp: …", "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}` with
//!   real AADSTS codes: unknown tenant 90002, unknown client 700016, public client flows off
//!   7000218, unknown resource 500011, bad scope 70011, scope spanning two resources 700022,
//!   consent missing 65001, user not found 50034, wrong password 50126, locked 50053, disabled
//!   50057, password expired 50055, Conditional Access 53003, MFA required 50076, revoked grant
//!   50173, refresh token inactive 700082, unknown refresh token 9002313, device code pending
//!   70016 / expired 70019 / bad code 70018.
//! - One access token per resource; its scopes are every permission the app is consented for on
//!   that resource (as Microsoft does). Refresh tokens rotate on every use and the old one stays
//!   valid until revoked (admin revoke, password change) or 90 days after its own issue (the
//!   window setting): using a token does not extend it, only the rotated one starts anew.
//! - `suberror` and `claims` where Entra sends them: MFA on a silent refresh is
//!   `interaction_required` + `basic_action` + a claims challenge (ROPC gets `invalid_grant`),
//!   missing consent `consent_required`, revoked or expired grant `bad_token`, expired password
//!   `user_password_expired`.
//! - Only form-encoded bodies carry parameters (a JSON body fails with AADSTS900144); a device
//!   code polled sooner than its `interval` gets `slow_down`, and its interval grows by 5 s.
//! - Delegated tokens are opaque random strings. App-only (client credentials) access tokens are
//!   JWT-shaped like Entra's: the payload names the app and tenant and carries the application
//!   permissions as `roles` (no `scp`), which a client may read; the signature is random, so
//!   only this stand-in's lookup (as only the resource, for Entra's) can validate one.
//!
//! Test controls are methods on [`IdentityStandIn`], mirrored as JSON endpoints under
//! `/_control/...` (see [`IdentityControl`]) so a stack in another process can be driven.
//! Everything that changes behaviour is scoped to a tenant or a user, never global, because
//! tests share one stand-in and run in parallel. Each tenant has its own clock offset.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Permissions the stand-in knows on Graph-like resources.
const GRAPH_PERMISSIONS: &[&str] = &[
    "Mail.Send",
    "Mail.Send.Shared",
    "Mail.Read",
    "Mail.ReadWrite",
    "Mail.ReadWrite.Shared",
    "User.Read",
];
/// Permissions the stand-in knows on Outlook (Exchange Online) resources.
const OUTLOOK_PERMISSIONS: &[&str] = &[
    "IMAP.AccessAsUser.All",
    "POP.AccessAsUser.All",
    "SMTP.Send",
    "IMAP.AccessAsApp",
];
/// The IMAP permission Dovecot logins need.
pub const IMAP_PERMISSION: &str = "IMAP.AccessAsUser.All";
/// Built-in Graph resources (global and national clouds).
const GRAPH_RESOURCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
];
/// Built-in Outlook resources.
const OUTLOOK_RESOURCES: &[&str] = &[
    "https://outlook.office.com",
    "https://outlook.office365.com",
    "https://outlook.office365.us",
    "https://partner.outlook.cn",
];
const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];
/// Where users are told to enter device codes.
pub const DEVICE_LOGIN_URI: &str = "https://microsoft.com/devicelogin";

/// Handle to a running identity stand-in. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct IdentityStandIn {
    /// e.g. `http://127.0.0.1:41234` (the "authority host" accounts point at).
    pub base_url: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IdentityStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStandIn")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// What the stand-in knows about an access token it issued (for the Graph stand-in and Dovecot).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedAccessToken {
    /// `https://graph.microsoft.com` or `https://outlook.office.com`.
    pub audience: String,
    /// Granted scopes, e.g. `Mail.Send`.
    pub scopes: Vec<String>,
    /// The user principal name the token was issued to (empty for an app-only token).
    pub upn: String,
    /// Expiry.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Application permissions (`roles` claim) of an app-only token, e.g. `Mail.Send`; an
    /// app-only token has no `scp` (`scopes` is empty) and no user.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued by the client credentials grant (no user).
    #[serde(default)]
    pub app_only: bool,
}

/// An app registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppRegistration {
    /// Tenant id (GUID or domain; the `{tenant}` path segment).
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// "Allow public client flows" (ROPC, device code, refresh without a secret).
    #[serde(default = "yes")]
    pub public_client_flows: bool,
    /// Admin-consented delegated permissions, fully qualified
    /// (`https://graph.microsoft.com/Mail.Send`). Their resources become known resources.
    #[serde(default)]
    pub consented_scopes: Vec<String>,
    /// Redirect URIs of the "Mobile and desktop applications" platform. `http://localhost`
    /// matches any port (Microsoft ignores the port of a localhost redirect URI).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Client secrets (a confidential client: the client credentials grant).
    #[serde(default)]
    pub client_secrets: Vec<String>,
    /// Admin-consented application permissions, fully qualified
    /// (`https://graph.microsoft.com/Mail.Send`, `https://outlook.office365.com/IMAP.AccessAsApp`):
    /// the `roles` of its app-only tokens.
    #[serde(default)]
    pub application_permissions: Vec<String>,
    /// Mailboxes its service principal may open over IMAP (Exchange Online
    /// `Add-MailboxPermission -User <service principal> -AccessRights FullAccess`). Counts only
    /// once the service principal is registered in Exchange Online
    /// ([`AppRegistration::exchange_service_principal`]), as in Exchange.
    #[serde(default)]
    pub imap_mailboxes: Vec<String>,
    /// Certificates (PEM) uploaded under "Certificates & secrets": client assertions signed
    /// with their keys authenticate the app (`keyCredentials`).
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Client secrets past their end date: Entra refuses them with AADSTS7000222.
    #[serde(default)]
    pub expired_client_secrets: Vec<String>,
    /// Object id of the app's service principal (its Enterprise application) in the tenant.
    #[serde(default = "new_object_id")]
    pub service_principal_id: String,
    /// The object id given to Exchange Online's `New-ServicePrincipal -AppId <client_id>
    /// -ObjectId <id>`, once run. Exchange takes any id there, but only the Enterprise
    /// application's object id ([`AppRegistration::service_principal_id`]) makes app-only IMAP
    /// work; the app registration's own object id (a classic mistake) does not.
    #[serde(default)]
    pub exchange_service_principal: Option<String>,
    /// Exchange Online RBAC for Applications: `New-ManagementRoleAssignment -App <service
    /// principal> -Role "Application Mail.Send" -CustomResourceScope <scope>`. Grants the
    /// permission on the scope's mailboxes only, without any `roles` in the token; counts
    /// only for a registered service principal, like [`AppRegistration::imap_mailboxes`].
    #[serde(default)]
    pub exchange_role_assignments: Vec<ExchangeAppRoleAssignment>,
}

/// One Exchange Online application role assignment, scoped to a set of mailboxes (the
/// members of its management scope).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExchangeAppRoleAssignment {
    /// `Application Mail.Send`, `Application Mail.ReadWrite`, ...
    pub role: String,
    /// The mailboxes its management scope matches.
    pub mailboxes: Vec<String>,
}

fn new_object_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn yes() -> bool {
    true
}

impl AppRegistration {
    /// A public-client app consented for Graph `Mail.Send` + `Mail.Send.Shared` and Outlook
    /// `IMAP.AccessAsUser.All` (what the deploy guide registers).
    pub fn mailbridge(tenant: &str, client_id: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            public_client_flows: true,
            consented_scopes: vec![
                "https://graph.microsoft.com/Mail.Send".to_owned(),
                "https://graph.microsoft.com/Mail.Send.Shared".to_owned(),
                "https://outlook.office.com/IMAP.AccessAsUser.All".to_owned(),
            ],
            redirect_uris: vec![LOOPBACK_REDIRECT_URI.to_owned()],
            client_secrets: Vec::new(),
            application_permissions: Vec::new(),
            imap_mailboxes: Vec::new(),
            certificates: Vec::new(),
            expired_client_secrets: Vec::new(),
            service_principal_id: new_object_id(),
            exchange_service_principal: None,
            exchange_role_assignments: Vec::new(),
        }
    }

    /// A confidential app for app-only access: `secret`, the application permissions Graph
    /// `Mail.Send` and Exchange Online `IMAP.AccessAsApp`, no delegated permissions, no public
    /// client flows.
    pub fn app_only(tenant: &str, client_id: &str, secret: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            public_client_flows: false,
            consented_scopes: Vec::new(),
            redirect_uris: Vec::new(),
            client_secrets: vec![secret.to_owned()],
            application_permissions: vec![
                "https://graph.microsoft.com/Mail.Send".to_owned(),
                format!("https://outlook.office365.com/{IMAP_APP_PERMISSION}"),
            ],
            imap_mailboxes: Vec::new(),
            certificates: Vec::new(),
            expired_client_secrets: Vec::new(),
            service_principal_id: new_object_id(),
            exchange_service_principal: None,
            exchange_role_assignments: Vec::new(),
        }
    }

    /// The same app authenticating with `certificate_pem` (uploaded under "Certificates &
    /// secrets") instead of a client secret.
    pub fn app_only_with_certificate(tenant: &str, client_id: &str, certificate_pem: &str) -> Self {
        let mut app = Self::app_only(tenant, client_id, "unused");
        app.client_secrets.clear();
        app.certificates.push(certificate_pem.to_owned());
        app
    }

    /// Exchange Online: `New-ServicePrincipal` with the Enterprise application's object id,
    /// then `Add-MailboxPermission -AccessRights FullAccess` on `mailboxes`: what app-only IMAP
    /// needs.
    pub fn with_exchange_mailbox_access(mut self, mailboxes: &[&str]) -> Self {
        self.exchange_service_principal = Some(self.service_principal_id.clone());
        self.imap_mailboxes
            .extend(mailboxes.iter().map(|m| m.to_string()));
        self
    }
}

/// A self-signed RSA certificate (PEM) and its private key (PKCS#8 PEM) for an app-only app,
/// valid until `not_after`, as `New-SelfSignedCertificate` or `openssl req -x509` make them.
pub fn app_certificate(
    common_name: &str,
    not_after: DateTime<Utc>,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let to_offset = |t: DateTime<Utc>| {
        rcgen::date_time_ymd(
            t.format("%Y").to_string().parse().unwrap_or(2030),
            t.format("%m").to_string().parse().unwrap_or(1),
            t.format("%d").to_string().parse().unwrap_or(1),
        )
    };
    params.not_before = to_offset(not_after.min(Utc::now()) - chrono::Duration::days(400));
    params.not_after = to_offset(not_after);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The application permission app-only IMAP logins need.
pub const IMAP_APP_PERMISSION: &str = "IMAP.AccessAsApp";

/// The loopback redirect URI the deploy guide registers for `mailbridge login --browser`.
pub const LOOPBACK_REDIRECT_URI: &str = "http://localhost";
/// Authorization codes expire after about 10 minutes (Microsoft's auth code flow reference).
const AUTHORIZATION_CODE_LIFETIME_SECS: i64 = 600;

/// A user account (registering again updates the flags; refresh tokens survive).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserAccount {
    /// Tenant the user belongs to.
    pub tenant: String,
    /// User principal name (compared case-insensitively).
    pub upn: String,
    /// Password for ROPC.
    pub password: String,
    /// Per-user MFA / CA policy: ROPC and non-MFA refresh tokens get AADSTS50076.
    #[serde(default)]
    pub mfa_required: bool,
    /// AADSTS50053.
    #[serde(default)]
    pub locked: bool,
    /// AADSTS50057.
    #[serde(default)]
    pub disabled: bool,
    /// AADSTS50055 on ROPC.
    #[serde(default)]
    pub password_expired: bool,
    /// Conditional Access blocks every token: AADSTS53003.
    #[serde(default)]
    pub ca_blocked: bool,
}

impl UserAccount {
    /// A plain user with a password and no restrictions.
    pub fn new(tenant: &str, upn: &str, password: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            upn: upn.to_owned(),
            password: password.to_owned(),
            mfa_required: false,
            locked: false,
            disabled: false,
            password_expired: false,
            ca_blocked: false,
        }
    }
}

/// Who an injected failure applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureScope {
    /// Every token/devicecode request to this tenant.
    Tenant(String),
    /// Token requests for this user (password username, refresh token owner, device code
    /// approver).
    User(String),
}

/// What an injected failure does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FailureKind {
    /// Answer this HTTP status (5xx) with `{"error":"server_error"}`.
    Status {
        /// e.g. 500, 502, 503.
        status: u16,
    },
    /// 429 with `Retry-After` and AADSTS90055 (tenant throttling).
    TooManyRequests {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
    },
    /// 400 `temporarily_unavailable` (AADSTS50033 RetryableError).
    TemporarilyUnavailable,
    /// Delay the response, then answer normally.
    Latency {
        /// Milliseconds.
        millis: u64,
    },
}

/// Which endpoint an injected failure hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureTarget {
    /// `/token` and `/devicecode` (default).
    #[default]
    TokenEndpoint,
    /// `/introspect` (Dovecot's view); the scope's user is the token's owner or the `user`
    /// field, the tenant the token's tenant.
    Introspection,
}

/// A failure to inject into the next `times` matching requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailureInjection {
    /// Who it applies to.
    pub scope: FailureScope,
    /// What it does.
    pub failure: FailureKind,
    /// How many requests it affects.
    pub times: u32,
    /// Which endpoint (default: the token endpoint).
    #[serde(default)]
    pub target: FailureTarget,
}

impl FailureInjection {
    /// `failure` on the next `times` token-endpoint requests for `scope`.
    pub fn token(scope: FailureScope, failure: FailureKind, times: u32) -> Self {
        Self {
            scope,
            failure,
            times,
            target: FailureTarget::TokenEndpoint,
        }
    }
}

/// One request the stand-in answered (for assertions on call counts).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    /// `token`, `devicecode` or `introspect`.
    pub endpoint: String,
    /// Tenant path segment (token/devicecode).
    pub tenant: Option<String>,
    /// `grant_type` (token).
    pub grant_type: Option<String>,
    /// User the request was about, when known (lower case).
    pub user: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// `error` answered, if any.
    pub error: Option<String>,
    /// AADSTS code answered, if any.
    pub error_code: Option<u64>,
    /// `Retry-After` answered (seconds), if any.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// When the answer was decided (wall clock of the stand-in, not a tenant's shifted clock),
    /// so a test can measure the waits between a client's attempts.
    pub answered_at: DateTime<Utc>,
}

/// Filter for [`IdentityStandIn::requests`]; `None` matches anything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestFilter {
    /// `token`, `devicecode`, `introspect`.
    pub endpoint: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// User (case-insensitive).
    pub user: Option<String>,
}

impl RequestFilter {
    /// Token requests (any grant) for `user`.
    pub fn token_requests_for(user: &str) -> Self {
        Self {
            endpoint: Some("token".into()),
            user: Some(user.to_owned()),
            ..Self::default()
        }
    }

    fn matches(&self, r: &RequestRecord) -> bool {
        self.endpoint.as_ref().is_none_or(|e| &r.endpoint == e)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| r.tenant.as_ref() == Some(t))
            && self
                .grant_type
                .as_ref()
                .is_none_or(|g| r.grant_type.as_ref() == Some(g))
            && self
                .user
                .as_ref()
                .is_none_or(|u| r.user.as_deref() == Some(u.to_lowercase().as_str()))
    }
}

/// Per-tenant settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TenantSettings {
    /// Access token lifetime in seconds (default 3599).
    pub access_token_lifetime_secs: Option<u64>,
    /// Device code poll interval in seconds (default 1 here; Microsoft uses 5).
    pub device_code_interval_secs: Option<u64>,
    /// Device code lifetime in seconds (default 900).
    pub device_code_lifetime_secs: Option<u64>,
    /// Refresh-token inactivity window in seconds (default 90 days).
    pub refresh_token_inactivity_secs: Option<u64>,
}

/// A device code the stand-in handed out (for tests and `/_control/device-codes`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceCodeInfo {
    /// The code the user types.
    pub user_code: String,
    /// Tenant.
    pub tenant: String,
    /// Client.
    pub client_id: String,
    /// `pending`, `approved`, `declined`, `redeemed`, `expired`.
    pub state: String,
}

#[derive(Clone, Debug)]
struct Tenant {
    apps: HashMap<String, AppRegistration>,
    users: HashMap<String, UserAccount>,
    settings: TenantSettings,
    clock_offset: chrono::Duration,
    /// Per-user "tokens valid from" (revocation).
    tokens_valid_from: HashMap<String, DateTime<Utc>>,
}

impl Tenant {
    fn new() -> Self {
        Self {
            apps: HashMap::new(),
            users: HashMap::new(),
            settings: TenantSettings::default(),
            clock_offset: chrono::Duration::zero(),
            tokens_valid_from: HashMap::new(),
        }
    }
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }
    fn inactivity_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(
            self.settings
                .refresh_token_inactivity_secs
                .unwrap_or(90 * 24 * 3600) as i64,
        )
    }
}

#[derive(Clone, Debug)]
struct RefreshRecord {
    tenant: String,
    client_id: String,
    upn: String,
    /// Its expiry window (90 days by default) runs from here; using it does not extend it.
    issued_at: DateTime<Utc>,
    /// Obtained with MFA (device code, browser), so MFA policies are satisfied.
    mfa: bool,
}

#[derive(Clone, Debug)]
struct AccessRecord {
    tenant: String,
    client_id: String,
    issued: IssuedAccessToken,
    revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DeviceState {
    Pending,
    Approved(String),
    Declined,
    Redeemed,
}

#[derive(Clone, Debug)]
struct DeviceRecord {
    user_code: String,
    tenant: String,
    client_id: String,
    scope: String,
    expires_at: DateTime<Utc>,
    state: DeviceState,
    slow_downs: u32,
    /// The poll interval this code must keep (grows by 5 s with each `slow_down`, RFC 8628
    /// §3.5).
    interval: Duration,
    /// When it was issued or last polled (real time: the interval is wall-clock seconds).
    last_poll: std::time::Instant,
}

/// An `/authorize` request waiting for the user to sign in and consent.
#[derive(Clone, Debug)]
struct AuthorizeFlow {
    tenant: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    /// (method, challenge) when PKCE was used.
    pkce: Option<(String, String)>,
}

/// An authorization code: single use, bound to its client, redirect URI and PKCE challenge.
#[derive(Clone, Debug)]
struct CodeRecord {
    tenant: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    upn: String,
    pkce: Option<(String, String)>,
    expires_at: DateTime<Utc>,
    redeemed: bool,
}

#[derive(Default)]
struct StandInState {
    tenants: HashMap<String, Tenant>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    access_tokens: HashMap<String, AccessRecord>,
    device_codes: HashMap<String, DeviceRecord>,
    /// Browser sign-ins between `/authorize` and the posted sign-in form, by flow id.
    authorize_flows: HashMap<String, AuthorizeFlow>,
    /// Authorization codes handed to redirect URIs.
    authorization_codes: HashMap<String, CodeRecord>,
    failures: Vec<FailureInjection>,
    requests: Vec<RequestRecord>,
    /// (delegate upn, shared mailbox address), lower case.
    mailbox_grants: HashSet<(String, String)>,
    /// `http://127.0.0.1:port`: client assertions must be addressed to its token endpoint.
    base_url: String,
    /// `jti` of client assertions already used, with their `exp` (a replay is refused).
    used_assertions: HashMap<String, i64>,
}

struct Shared {
    state: Mutex<StandInState>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, StandInState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A control call was refused (unknown tenant, user or code).
#[derive(Debug, thiserror::Error)]
#[error("identity stand-in control: {0}")]
pub struct ControlError(String);

fn random_token(bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..9)
        .map(|_| ALPHABET[rand::random::<u8>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// A Microsoft-shaped OAuth error.
struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u64,
    message: String,
    retry_after: Option<u64>,
    /// Entra's `suberror` (what the client should do): `basic_action`, `consent_required`,
    /// `bad_token`, `user_password_expired` ...
    suberror: Option<&'static str>,
    /// A claims challenge (JSON text) for the next interactive sign-in, e.g. which Conditional
    /// Access policy asked for MFA.
    claims: Option<String>,
}

impl AadError {
    fn new(status: u16, error: &'static str, code: u64, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            error,
            code,
            message: message.into(),
            retry_after: None,
            suberror: None,
            claims: None,
        }
    }
    fn with_suberror(mut self, suberror: &'static str) -> Self {
        self.suberror = Some(suberror);
        self
    }
    fn bad(error: &'static str, code: u64, message: impl Into<String>) -> Self {
        Self::new(400, error, code, message)
    }
    fn missing(param: &str) -> Self {
        Self::bad(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        if let Some(suberror) = self.suberror {
            body["suberror"] = json!(suberror);
        }
        if let Some(claims) = &self.claims {
            body["claims"] = json!(claims);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(ra) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&ra.to_string())
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A parsed `scope` parameter.
struct ScopeRequest {
    /// Resources in request order, each with its permission names (`.default` kept as is).
    resources: Vec<(String, Vec<String>)>,
    offline_access: bool,
    openid: bool,
}

fn parse_scope(state: &StandInState, scope: &str) -> Result<ScopeRequest, AadError> {
    let mut resources: Vec<(String, Vec<String>)> = Vec::new();
    let mut offline_access = false;
    let mut openid = false;
    for item in scope.split_whitespace() {
        if OIDC_SCOPES.contains(&item) {
            offline_access |= item == "offline_access";
            openid |= item == "openid";
            continue;
        }
        let (resource, permission) = match item.rfind('/') {
            Some(i) if item.contains("://") => (item[..i].to_owned(), item[i + 1..].to_owned()),
            Some(_) => {
                return Err(AadError::bad(
                    "invalid_scope",
                    70011,
                    format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope '{item}' is not valid."
                    ),
                ));
            }
            None => (GRAPH_RESOURCES[0].to_owned(), item.to_owned()),
        };
        let kind = resource_kind(state, &resource).ok_or_else(|| {
            AadError::bad(
                "invalid_resource",
                500011,
                format!("The resource principal named {resource} was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
            )
        })?;
        if permission != ".default" && !kind.contains(&permission.as_str()) {
            return Err(AadError::bad(
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope '{item}' does not exist."
                ),
            ));
        }
        match resources.iter_mut().find(|(r, _)| *r == resource) {
            Some((_, perms)) => perms.push(permission),
            None => resources.push((resource, vec![permission])),
        }
    }
    if resources.is_empty() {
        return Err(AadError::bad(
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope '{scope}' does not include a resource."
            ),
        ));
    }
    Ok(ScopeRequest {
        resources,
        offline_access,
        openid,
    })
}

/// Which permission list applies to `resource`: built-in ones, or resources some app is
/// consented for (loopback Graph stand-ins) — Outlook-like if any consented permission is.
fn resource_kind(state: &StandInState, resource: &str) -> Option<&'static [&'static str]> {
    if GRAPH_RESOURCES.contains(&resource) {
        return Some(GRAPH_PERMISSIONS);
    }
    if OUTLOOK_RESOURCES.contains(&resource) {
        return Some(OUTLOOK_PERMISSIONS);
    }
    let prefix = format!("{resource}/");
    let mut known = false;
    let mut outlook = false;
    for tenant in state.tenants.values() {
        for app in tenant.apps.values() {
            for s in &app.consented_scopes {
                if let Some(p) = s.strip_prefix(&prefix) {
                    known = true;
                    outlook |= OUTLOOK_PERMISSIONS.contains(&p);
                }
            }
        }
    }
    known.then_some(if outlook {
        OUTLOOK_PERMISSIONS
    } else {
        GRAPH_PERMISSIONS
    })
}

#[derive(Default)]
struct Outcome {
    user: Option<String>,
    grant_type: Option<String>,
}

impl IdentityStandIn {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            state: Mutex::new(StandInState {
                base_url: base_url.clone(),
                ..StandInState::default()
            }),
        });
        let app = router(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "identity stand-in stopped");
            }
        });
        tracing::info!(%base_url, "identity stand-in listening");
        Ok(Self { base_url, shared })
    }

    /// The URL Dovecot's oauth2 passdb posts tokens to (RFC 7662 introspection).
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.base_url)
    }

    /// Look up an access token this stand-in issued (None when unknown, revoked or expired).
    pub fn lookup_access_token(&self, token: &str) -> Option<IssuedAccessToken> {
        let state = self.shared.lock();
        live_access_token(&state, token).map(|r| r.issued.clone())
    }

    /// Exchange Online's answer for an app-only `token` on `mailbox`: the permissions its
    /// service principal holds there through RBAC for Applications (e.g. `Mail.Send`), empty
    /// for a user's token, an unregistered service principal or a mailbox out of scope.
    pub fn exchange_app_permissions(&self, token: &str, mailbox: &str) -> Vec<String> {
        let state = self.shared.lock();
        let Some(record) = live_access_token(&state, token).filter(|r| r.issued.app_only) else {
            return Vec::new();
        };
        let Some(app) = state
            .tenants
            .get(&record.tenant)
            .and_then(|t| t.apps.get(&record.client_id))
        else {
            return Vec::new();
        };
        if app.exchange_service_principal.as_deref() != Some(app.service_principal_id.as_str()) {
            return Vec::new();
        }
        app.exchange_role_assignments
            .iter()
            .filter(|a| a.mailboxes.iter().any(|m| m.eq_ignore_ascii_case(mailbox)))
            .filter_map(|a| a.role.strip_prefix("Application ").map(str::to_owned))
            .collect()
    }

    /// Register (or update) an app registration.
    pub fn register_app(&self, app: AppRegistration) {
        let mut state = self.shared.lock();
        let tenant = state
            .tenants
            .entry(app.tenant.clone())
            .or_insert_with(Tenant::new);
        tenant.apps.insert(app.client_id.clone(), app);
    }

    /// Register (or update) a user. Existing refresh tokens stay valid.
    pub fn register_user(&self, user: UserAccount) {
        let mut state = self.shared.lock();
        let tenant = state
            .tenants
            .entry(user.tenant.clone())
            .or_insert_with(Tenant::new);
        let key = user.upn.to_lowercase();
        let changed = tenant
            .users
            .get(&key)
            .is_some_and(|old| old.password != user.password);
        if changed {
            let now = tenant.now();
            tenant.tokens_valid_from.insert(key.clone(), now);
        }
        tenant.users.insert(key, user);
    }

    /// Change a registered user's flags/password with `edit`. A new password revokes the
    /// user's refresh tokens (Microsoft: a password change revokes password-based tokens).
    pub fn update_user(
        &self,
        upn: &str,
        edit: impl FnOnce(&mut UserAccount),
    ) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        let key = upn.to_lowercase();
        let tenant = state
            .tenants
            .values_mut()
            .find(|t| t.users.contains_key(&key))
            .ok_or_else(|| ControlError(format!("unknown user {upn}")))?;
        let now = tenant.now();
        let user = tenant.users.get_mut(&key).expect("found above");
        let before = user.password.clone();
        edit(user);
        if user.password != before {
            tenant.tokens_valid_from.insert(key, now);
        }
        Ok(())
    }

    /// Change a tenant's settings (access-token lifetime, device code interval...).
    pub fn set_tenant_settings(&self, tenant: &str, settings: TenantSettings) {
        let mut state = self.shared.lock();
        let t = state
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(Tenant::new);
        let s = &mut t.settings;
        s.access_token_lifetime_secs = settings
            .access_token_lifetime_secs
            .or(s.access_token_lifetime_secs);
        s.device_code_interval_secs = settings
            .device_code_interval_secs
            .or(s.device_code_interval_secs);
        s.device_code_lifetime_secs = settings
            .device_code_lifetime_secs
            .or(s.device_code_lifetime_secs);
        s.refresh_token_inactivity_secs = settings
            .refresh_token_inactivity_secs
            .or(s.refresh_token_inactivity_secs);
    }

    /// Move the tenant's clock forward (token expiry, refresh-token inactivity).
    pub fn advance_tenant_clock(&self, tenant: &str, by: chrono::Duration) {
        let mut state = self.shared.lock();
        let t = state
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(Tenant::new);
        t.clock_offset += by;
    }

    /// Revoke all of a user's refresh tokens (admin "revoke sessions" / password reset):
    /// they then fail with AADSTS50173. Access tokens stay valid until they expire.
    pub fn revoke_refresh_tokens(&self, upn: &str) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        let key = upn.to_lowercase();
        let tenant = state
            .tenants
            .values_mut()
            .find(|t| t.users.contains_key(&key))
            .ok_or_else(|| ControlError(format!("unknown user {upn}")))?;
        let now = tenant.now();
        tenant.tokens_valid_from.insert(key, now);
        Ok(())
    }

    /// Make all of a user's refresh tokens inactive for longer than the inactivity window:
    /// they then fail with AADSTS700082.
    pub fn expire_refresh_tokens(&self, upn: &str) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        let key = upn.to_lowercase();
        let mut found = false;
        let windows: HashMap<String, chrono::Duration> = state
            .tenants
            .iter()
            .map(|(k, t)| (k.clone(), t.inactivity_window()))
            .collect();
        for record in state.refresh_tokens.values_mut() {
            if record.upn.to_lowercase() == key {
                let window = windows
                    .get(&record.tenant)
                    .copied()
                    .unwrap_or(chrono::Duration::days(90));
                record.issued_at -= window + chrono::Duration::days(1);
                found = true;
            }
        }
        if found {
            Ok(())
        } else {
            Err(ControlError(format!("user {upn} has no refresh tokens")))
        }
    }

    /// Revoke every access token issued to `upn` (IMAP logins then fail).
    pub fn revoke_access_tokens(&self, upn: &str) {
        let mut state = self.shared.lock();
        let key = upn.to_lowercase();
        for record in state.access_tokens.values_mut() {
            if record.issued.upn.to_lowercase() == key {
                record.revoked = true;
            }
        }
    }

    /// Every access and refresh token value issued to `upn` so far (for tests that search
    /// logs, files and outputs for leaked tokens).
    pub fn issued_token_values(&self, upn: &str) -> Vec<String> {
        let state = self.shared.lock();
        let key = upn.to_lowercase();
        let access = state
            .access_tokens
            .iter()
            .filter(|(_, r)| r.issued.upn.to_lowercase() == key)
            .map(|(t, _)| t.clone());
        let refresh = state
            .refresh_tokens
            .iter()
            .filter(|(_, r)| r.upn.to_lowercase() == key)
            .map(|(t, _)| t.clone());
        access.chain(refresh).collect()
    }

    /// Let `delegate` open the shared mailbox `shared_mailbox` (IMAP `user=` shared address).
    pub fn grant_mailbox_access(&self, delegate: &str, shared_mailbox: &str) {
        self.shared
            .lock()
            .mailbox_grants
            .insert((delegate.to_lowercase(), shared_mailbox.to_lowercase()));
    }

    /// Issue an access token directly (no HTTP): for tests of Graph / IMAP that need a token
    /// without running the token layer.
    pub fn mint_access_token(
        &self,
        tenant: &str,
        client_id: &str,
        upn: &str,
        audience: &str,
        scopes: &[&str],
        lifetime: Duration,
    ) -> String {
        let mut state = self.shared.lock();
        let now = state.tenants.get(tenant).map_or_else(Utc::now, Tenant::now);
        let token = random_token(48);
        state.access_tokens.insert(
            token.clone(),
            AccessRecord {
                tenant: tenant.to_owned(),
                client_id: client_id.to_owned(),
                issued: IssuedAccessToken {
                    audience: audience.to_owned(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    upn: upn.to_owned(),
                    expires_at: now + chrono::Duration::from_std(lifetime).unwrap_or_default(),
                    roles: Vec::new(),
                    app_only: false,
                },
                revoked: false,
            },
        );
        token
    }

    /// Approve a pending device code as `upn` (the user signs in, with MFA).
    pub fn approve_device_code(&self, user_code: &str, upn: &str) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        let record = device_by_user_code(&mut state, user_code)?;
        let tenant = record.tenant.clone();
        let key = upn.to_lowercase();
        if !state
            .tenants
            .get(&tenant)
            .is_some_and(|t| t.users.contains_key(&key))
        {
            return Err(ControlError(format!(
                "user {upn} is not in tenant {tenant}"
            )));
        }
        let record = device_by_user_code(&mut state, user_code)?;
        record.state = DeviceState::Approved(key);
        Ok(())
    }

    /// The user declines at the sign-in page.
    pub fn decline_device_code(&self, user_code: &str) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        device_by_user_code(&mut state, user_code)?.state = DeviceState::Declined;
        Ok(())
    }

    /// Expire a device code now.
    pub fn expire_device_code(&self, user_code: &str) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        device_by_user_code(&mut state, user_code)?.expires_at =
            Utc::now() - chrono::Duration::days(365);
        Ok(())
    }

    /// The next `times` polls of this device code get `slow_down`.
    pub fn slow_down_device_code(&self, user_code: &str, times: u32) -> Result<(), ControlError> {
        let mut state = self.shared.lock();
        device_by_user_code(&mut state, user_code)?.slow_downs += times;
        Ok(())
    }

    /// Device codes handed out for `tenant` (newest last).
    pub fn device_codes(&self, tenant: &str) -> Vec<DeviceCodeInfo> {
        let state = self.shared.lock();
        device_code_infos(&state, tenant)
    }

    /// Inject a scoped failure into the next `times` matching requests.
    pub fn inject_failure(&self, injection: FailureInjection) {
        self.shared.lock().failures.push(injection);
    }

    /// Requests answered so far that match `filter`.
    pub fn requests(&self, filter: &RequestFilter) -> Vec<RequestRecord> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect()
    }

    /// Number of token-endpoint requests concerning `upn`.
    pub fn token_request_count(&self, upn: &str) -> usize {
        self.requests(&RequestFilter::token_requests_for(upn)).len()
    }
}

fn device_code_infos(state: &StandInState, tenant: &str) -> Vec<DeviceCodeInfo> {
    let now = state.tenants.get(tenant).map_or_else(Utc::now, Tenant::now);
    let mut list: Vec<(DateTime<Utc>, DeviceCodeInfo)> = state
        .device_codes
        .values()
        .filter(|d| d.tenant == tenant)
        .map(|d| {
            (
                d.expires_at,
                DeviceCodeInfo {
                    user_code: d.user_code.clone(),
                    tenant: d.tenant.clone(),
                    client_id: d.client_id.clone(),
                    state: match &d.state {
                        _ if d.expires_at <= now => "expired",
                        DeviceState::Pending => "pending",
                        DeviceState::Approved(_) => "approved",
                        DeviceState::Declined => "declined",
                        DeviceState::Redeemed => "redeemed",
                    }
                    .to_owned(),
                },
            )
        })
        .collect();
    list.sort_by_key(|(t, _)| *t);
    list.into_iter().map(|(_, i)| i).collect()
}

fn device_by_user_code<'a>(
    state: &'a mut StandInState,
    user_code: &str,
) -> Result<&'a mut DeviceRecord, ControlError> {
    state
        .device_codes
        .values_mut()
        .find(|d| d.user_code.eq_ignore_ascii_case(user_code))
        .ok_or_else(|| ControlError(format!("unknown user code {user_code}")))
}

fn live_access_token<'a>(state: &'a StandInState, token: &str) -> Option<&'a AccessRecord> {
    let record = state.access_tokens.get(token)?;
    let now = state
        .tenants
        .get(&record.tenant)
        .map_or_else(Utc::now, Tenant::now);
    (!record.revoked && record.issued.expires_at > now).then_some(record)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .route(
            "/{tenant}/oauth2/v2.0/devicecode",
            post(devicecode_endpoint),
        )
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(authorize_page).post(authorize_submit),
        )
        .route("/introspect", post(introspect_post).get(introspect_get))
        .route("/introspect/mailbox", post(introspect_mailbox_post))
        .route("/_control/apps", post(control_app))
        .route("/_control/users", post(control_user))
        .route("/_control/users/revoke", post(control_revoke))
        .route(
            "/_control/users/change-password",
            post(control_change_password),
        )
        .route(
            "/_control/users/expire-refresh-tokens",
            post(control_expire_rt),
        )
        .route(
            "/_control/users/revoke-access-tokens",
            post(control_revoke_at),
        )
        .route("/_control/tenants/settings", post(control_settings))
        .route(
            "/_control/tenants/advance-clock",
            post(control_advance_clock),
        )
        .route("/_control/mailbox-grants", post(control_grant))
        .route("/_control/device-codes", get(control_list_device_codes))
        .route("/_control/device-codes/{action}", post(control_device_code))
        .route("/_control/failures", post(control_failure))
        .route("/_control/requests", get(control_requests))
        .route("/_control/health", get(|| async { "ok" }))
        .with_state(shared)
}

/// Find and consume the first injected failure matching `tenant` / `user`.
fn take_failure(
    state: &mut StandInState,
    target: FailureTarget,
    tenant: Option<&str>,
    users: &[&str],
) -> Option<FailureKind> {
    let index = state.failures.iter().position(|f| {
        f.target == target
            && match &f.scope {
                FailureScope::Tenant(t) => Some(t.as_str()) == tenant,
                FailureScope::User(u) => users.iter().any(|x| x.eq_ignore_ascii_case(u)),
            }
    })?;
    let failure = state.failures[index].failure.clone();
    state.failures[index].times = state.failures[index].times.saturating_sub(1);
    if state.failures[index].times == 0 {
        state.failures.remove(index);
    }
    Some(failure)
}

fn failure_error(kind: &FailureKind) -> Option<AadError> {
    match kind {
        FailureKind::Status { status } => Some(AadError::new(
            *status,
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        )),
        FailureKind::TooManyRequests { retry_after_secs } => {
            let mut e = AadError::new(
                429,
                "temporarily_unavailable",
                90055,
                "The number of requests from this tenant has exceeded the allowed limit. Retry after some time.",
            );
            e.retry_after = Some(*retry_after_secs);
            Some(e)
        }
        FailureKind::TemporarilyUnavailable => Some(AadError::bad(
            "temporarily_unavailable",
            50033,
            "A transient error has occurred. Please try again.",
        )),
        FailureKind::Latency { .. } => None,
    }
}

fn record(
    state: &mut StandInState,
    endpoint: &str,
    tenant: Option<&str>,
    outcome: &Outcome,
    response: &Result<Response, AadError>,
) {
    let (status, error, error_code, retry_after_secs) = match response {
        Ok(r) => (r.status().as_u16(), None, None, None),
        Err(e) => (
            e.status.as_u16(),
            Some(e.error.to_owned()),
            Some(e.code),
            e.retry_after,
        ),
    };
    state.requests.push(RequestRecord {
        endpoint: endpoint.to_owned(),
        tenant: tenant.map(str::to_owned),
        grant_type: outcome.grant_type.clone(),
        user: outcome.user.as_ref().map(|u| u.to_lowercase()),
        status,
        error,
        error_code,
        retry_after_secs,
        answered_at: Utc::now(),
    });
}

/// Record the request, then turn the result into the HTTP response.
fn respond(
    state: &mut StandInState,
    endpoint: &str,
    tenant: Option<&str>,
    outcome: &Outcome,
    result: Result<Response, AadError>,
) -> Response {
    record(state, endpoint, tenant, outcome, &result);
    result.unwrap_or_else(AadError::into_response)
}

async fn token_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_body(&headers, &body);
    let mut outcome = Outcome {
        grant_type: form.get("grant_type").cloned(),
        ..Outcome::default()
    };
    // Who is this about (for scoped failures and counters)?
    let latency = {
        let mut state = shared.lock();
        outcome.user = request_user(&state, &form);
        let users: Vec<&str> = outcome.user.as_deref().into_iter().collect();
        match take_failure(
            &mut state,
            FailureTarget::TokenEndpoint,
            Some(&tenant),
            &users,
        ) {
            Some(FailureKind::Latency { millis }) => Some(Duration::from_millis(millis)),
            Some(kind) => {
                let err = failure_error(&kind).expect("not latency");
                return respond(&mut state, "token", Some(&tenant), &outcome, Err(err));
            }
            None => None,
        }
    };
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let mut state = shared.lock();
    let result = handle_token(&mut state, &tenant, &form, &mut outcome);
    record(&mut state, "token", Some(&tenant), &outcome, &result);
    result.unwrap_or_else(AadError::into_response)
}

fn request_user(state: &StandInState, form: &HashMap<String, String>) -> Option<String> {
    match form.get("grant_type").map(String::as_str) {
        Some("password") => form.get("username").map(|u| u.to_lowercase()),
        Some("refresh_token") => form
            .get("refresh_token")
            .and_then(|t| state.refresh_tokens.get(t))
            .map(|r| r.upn.to_lowercase()),
        Some("authorization_code") => form
            .get("code")
            .and_then(|c| state.authorization_codes.get(c))
            .map(|c| c.upn.to_lowercase()),
        Some(g) if g.ends_with("device_code") => form
            .get("device_code")
            .and_then(|c| state.device_codes.get(c))
            .and_then(|d| match &d.state {
                DeviceState::Approved(u) => Some(u.clone()),
                _ => None,
            }),
        _ => None,
    }
}

fn check_client<'a>(
    state: &'a StandInState,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<(&'a Tenant, &'a AppRegistration), AadError> {
    let t = state.tenants.get(tenant).ok_or_else(|| {
        AadError::bad(
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        )
    })?;
    let client_id = form
        .get("client_id")
        .ok_or_else(|| AadError::missing("client_id"))?;
    let app = t.apps.get(client_id).ok_or_else(|| {
        AadError::bad(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
        )
    })?;
    if form.contains_key("client_assertion")
        && (!app.certificates.is_empty() || !app.public_client_flows)
    {
        // A confidential client authenticating with a certificate.
        verify_client_assertion(&state.base_url, tenant, t.now(), app, form)?;
        return Ok((t, app));
    }
    if let Some(secret) = form.get("client_secret")
        && app.expired_client_secrets.contains(secret)
    {
        return Err(AadError::new(
            401,
            "invalid_client",
            7000222,
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.client_id
            ),
        ));
    }
    if let Some(secret) = form.get("client_secret")
        && !app.client_secrets.is_empty()
    {
        // A confidential client authenticating with one of its secrets.
        if app.client_secrets.contains(secret) {
            return Ok((t, app));
        }
        return Err(AadError::new(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
        ));
    }
    if form.get("grant_type").map(String::as_str) == Some("client_credentials") {
        return Err(AadError::new(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    if form.contains_key("client_secret") || form.contains_key("client_assertion") {
        if app.public_client_flows {
            return Err(AadError::bad(
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            ));
        }
        return Err(AadError::new(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        ));
    }
    // "Allow public client flows" governs ROPC, device code and refresh without a secret; the
    // authorization code grant of a "Mobile and desktop applications" redirect URI is public
    // by its platform and does not need it.
    let code_grant = form.get("grant_type").map(String::as_str) == Some("authorization_code");
    if !app.public_client_flows && !code_grant {
        return Err(AadError::new(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok((t, app))
}

/// The claims Entra reads from a client assertion.
#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    aud: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

/// Clock skew Entra tolerates on a client assertion's `nbf` / `exp` (5 minutes).
const ASSERTION_SKEW_SECS: i64 = 300;

/// Check a `client_assertion` (Microsoft's "certificate credentials" reference): type
/// `jwt-bearer`; `alg` RS256 or PS256; the certificate named by `x5t#S256` (or the SHA-1
/// `x5t`) registered on the app and not expired (AADSTS700027); the signature by its key
/// (AADSTS700027); `iss` = `sub` = the client id (AADSTS700021); `aud` = this tenant's token
/// endpoint (AADSTS700023); `nbf` <= now < `exp`, give or take 5 minutes (AADSTS700024); a
/// `jti` (AADSTS50027 without one). Replays are refused in [`handle_token`].
fn verify_client_assertion(
    base_url: &str,
    tenant: &str,
    now: DateTime<Utc>,
    app: &AppRegistration,
    form: &HashMap<String, String>,
) -> Result<(), AadError> {
    let malformed = |why: &str| {
        AadError::new(
            401,
            "invalid_client",
            50027,
            format!("JWT token is invalid or malformed: {why}"),
        )
    };
    match form.get("client_assertion_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") => {}
        None => return Err(AadError::missing("client_assertion_type")),
        Some(other) => {
            return Err(malformed(&format!(
                "unsupported client_assertion_type '{other}'"
            )));
        }
    }
    let assertion = &form["client_assertion"];
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed("bad header"))?;
    if !matches!(
        header.alg,
        jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::PS256
    ) {
        return Err(malformed(&format!(
            "algorithm {:?} is not supported for client assertions",
            header.alg
        )));
    }
    let presented = header
        .x5t_s256
        .clone()
        .or_else(|| header.x5t.clone())
        .unwrap_or_default();
    let key_failure = |reason: &str| {
        AadError::new(
            401,
            "invalid_client",
            700027,
            format!(
                "Client assertion failed signature validation. [Reason - {reason}, Thumbprint of key used by client: '{presented}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                app.client_id
            ),
        )
    };
    use base64::Engine as _;
    use sha2::Digest as _;
    let certificate = app.certificates.iter().find_map(|pem_text| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        let matches = match (&header.x5t_s256, &header.x5t) {
            (Some(t), _) => *t == b64(&sha2::Sha256::digest(&pem.contents)),
            (None, Some(t)) => *t == b64(&sha1::Sha1::digest(&pem.contents)),
            (None, None) => false,
        };
        matches.then_some(pem)
    });
    let Some(pem) = certificate else {
        return Err(key_failure("The key was not found."));
    };
    let cert = pem
        .parse_x509()
        .map_err(|_| key_failure("The key was not found."))?;
    if cert.validity().not_after.timestamp() <= now.timestamp() {
        return Err(key_failure("The key used is expired."));
    }
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() else {
        return Err(key_failure("The key was not found."));
    };
    // DER integers carry a leading zero byte when the top bit is set; JWK components do not.
    let unsigned = |b: &[u8]| -> Vec<u8> {
        let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
        b[start..].to_vec()
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_raw_components(
        &unsigned(rsa.modulus),
        &unsigned(rsa.exponent),
    );
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    // Times are checked below against the tenant's clock, with Entra's error codes.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
        .map_err(|_| {
            key_failure("Key was found, but use of the key to verify the signature failed.")
        })?
        .claims;
    if claims.iss.as_deref() != Some(app.client_id.as_str())
        || claims.sub.as_deref() != Some(app.client_id.as_str())
    {
        return Err(AadError::new(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
        ));
    }
    let audiences = [
        format!("{base_url}/{tenant}/oauth2/v2.0/token"),
        format!("{base_url}/{tenant}/oauth2/token"),
    ];
    if !claims.aud.as_ref().is_some_and(|a| audiences.contains(a)) {
        return Err(AadError::new(
            401,
            "invalid_client",
            700023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials . The audience should be '{}'.",
                audiences[0]
            ),
        ));
    }
    let Some(exp) = claims.exp else {
        return Err(malformed("the assertion has no 'exp' claim"));
    };
    let nbf = claims.nbf.unwrap_or(i64::MIN);
    let at = now.timestamp();
    if at + ASSERTION_SKEW_SECS < nbf || at - ASSERTION_SKEW_SECS >= exp {
        return Err(AadError::new(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
                now.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                DateTime::<Utc>::from_timestamp(nbf.max(0), 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                DateTime::<Utc>::from_timestamp(exp.max(0), 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            ),
        ));
    }
    if claims.jti.as_deref().is_none_or(str::is_empty) {
        return Err(malformed("the assertion has no 'jti' claim"));
    }
    Ok(())
}

/// Remember a verified assertion's `jti`; `Err` when it was used before (a replay).
fn spend_assertion(
    state: &mut StandInState,
    form: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<(), AadError> {
    let Some(assertion) = form.get("client_assertion") else {
        return Ok(());
    };
    let Ok(data) = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion) else {
        return Ok(());
    };
    let (Some(jti), Some(exp)) = (data.claims.jti, data.claims.exp) else {
        return Ok(());
    };
    state
        .used_assertions
        .retain(|_, e| *e + ASSERTION_SKEW_SECS > now.timestamp());
    if state.used_assertions.insert(jti, exp).is_some() {
        return Err(AadError::new(
            401,
            "invalid_client",
            50027,
            "JWT token is invalid or malformed: the client assertion's 'jti' was already used (an assertion is good for one request).",
        ));
    }
    Ok(())
}

/// The permissions to grant for a single-resource request, after consent checks.
fn grant_scopes(
    app: &AppRegistration,
    request: &ScopeRequest,
) -> Result<(String, Vec<String>), AadError> {
    if request.resources.len() > 1 {
        return Err(AadError::bad(
            "invalid_scope",
            700022,
            "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope specified must belong to a single resource.",
        ));
    }
    let (resource, asked) = &request.resources[0];
    consented_for(app, resource, asked).map(|perms| (resource.clone(), perms))
}

fn consented_for(
    app: &AppRegistration,
    resource: &str,
    asked: &[String],
) -> Result<Vec<String>, AadError> {
    let prefix = format!("{resource}/");
    let consented: BTreeSet<String> = app
        .consented_scopes
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    let missing = asked
        .iter()
        .any(|p| p != ".default" && !consented.contains(p))
        || consented.is_empty();
    if missing {
        return Err(AadError::bad(
            "invalid_grant",
            65001,
            format!(
                "The user or administrator has not consented to use the application with ID '{}'. Send an interactive authorization request for this user and resource.",
                app.client_id
            ),
        )
        .with_suberror("consent_required"));
    }
    Ok(consented.into_iter().collect())
}

fn user_blocks(user: &UserAccount, check_password_flags: bool) -> Result<(), AadError> {
    if user.locked {
        return Err(AadError::bad(
            "invalid_grant",
            50053,
            "Your account is locked because you've tried to sign in too many times with an incorrect user ID or password.",
        ));
    }
    if user.disabled {
        return Err(AadError::bad(
            "invalid_grant",
            50057,
            "The user account is disabled.",
        ));
    }
    if check_password_flags && user.password_expired {
        return Err(
            AadError::bad("invalid_grant", 50055, "The password is expired.")
                .with_suberror("user_password_expired"),
        );
    }
    if user.ca_blocked {
        return Err(AadError::bad(
            "invalid_grant",
            53003,
            "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
        ));
    }
    Ok(())
}

/// MFA required. A password sign-in (ROPC) is refused as `invalid_grant`; a refresh with a
/// token that never passed MFA as `interaction_required` with `suberror: basic_action` and a
/// claims challenge naming the Conditional Access policy, as Entra answers a silent request.
fn mfa_error(resource: &str, silent: bool) -> AadError {
    let mut err = AadError::bad(
        if silent {
            "interaction_required"
        } else {
            "invalid_grant"
        },
        50076,
        format!(
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '{resource}'."
        ),
    );
    if silent {
        err = err.with_suberror("basic_action");
        err.claims = Some(
            json!({"access_token": {"capolids": {"essential": true, "values": [MFA_POLICY_ID]}}})
                .to_string(),
        );
    }
    err
}

/// The Conditional Access policy id the stand-in names in MFA claims challenges.
pub const MFA_POLICY_ID: &str = "9d8c3e5f-0b1a-4c2d-8e7f-6a5b4c3d2e1f";

fn handle_token(
    state: &mut StandInState,
    tenant: &str,
    form: &HashMap<String, String>,
    outcome: &mut Outcome,
) -> Result<Response, AadError> {
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| AadError::missing("grant_type"))?
        .clone();
    let (t, app) = check_client(state, tenant, form)?;
    let app = app.clone();
    let now = t.now();
    match grant_type.as_str() {
        "password" => {
            let username = form
                .get("username")
                .ok_or_else(|| AadError::missing("username"))?;
            let password = form
                .get("password")
                .ok_or_else(|| AadError::missing("password"))?;
            let scope = form
                .get("scope")
                .ok_or_else(|| AadError::missing("scope"))?;
            outcome.user = Some(username.to_lowercase());
            let user = t.users.get(&username.to_lowercase()).ok_or_else(|| {
                AadError::bad(
                    "invalid_grant",
                    50034,
                    format!("The user account {{EUII Hidden}} does not exist in the {tenant} directory. To sign into this application, the account must be added to the directory."),
                )
            })?;
            if user.locked {
                user_blocks(user, true)?;
            }
            if &user.password != password {
                return Err(AadError::bad(
                    "invalid_grant",
                    50126,
                    "Error validating credentials due to invalid username or password.",
                ));
            }
            user_blocks(user, true)?;
            let request = parse_scope(state, scope)?;
            let (resource, perms) = grant_scopes(&app, &request)?;
            if user.mfa_required {
                return Err(mfa_error(&resource, false));
            }
            let upn = user.upn.clone();
            Ok(issue(
                state,
                tenant,
                &app.client_id,
                &upn,
                &resource,
                perms,
                (request.offline_access, request.openid),
                false,
                now,
            ))
        }
        "refresh_token" => {
            let token = form
                .get("refresh_token")
                .ok_or_else(|| AadError::missing("refresh_token"))?;
            let scope = form
                .get("scope")
                .ok_or_else(|| AadError::missing("scope"))?;
            let invalid = || {
                AadError::bad(
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                )
            };
            let record = state
                .refresh_tokens
                .get(token)
                .cloned()
                .ok_or_else(invalid)?;
            outcome.user = Some(record.upn.to_lowercase());
            if record.tenant != tenant || record.client_id != app.client_id {
                return Err(invalid());
            }
            let key = record.upn.to_lowercase();
            let user = t.users.get(&key).ok_or_else(invalid)?;
            if let Some(valid_from) = t.tokens_valid_from.get(&key)
                && record.issued_at < *valid_from
            {
                return Err(AadError::bad(
                    "invalid_grant",
                    50173,
                    format!(
                        "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{}'.",
                        record.issued_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                        valid_from.format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    ),
                )
                .with_suberror("bad_token"));
            }
            // 90 days from the token's own issue, however often it was used: using a refresh
            // token does not extend it; only the rotated token it returns starts a new window.
            let window = t.inactivity_window();
            if now - record.issued_at > window {
                return Err(AadError::bad(
                    "invalid_grant",
                    700082,
                    format!(
                        "The refresh token has expired due to inactivity. The token was issued on {} and was inactive for {}.00:00:00.",
                        record.issued_at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                        window.num_days()
                    ),
                )
                .with_suberror("bad_token"));
            }
            user_blocks(user, false)?;
            let request = parse_scope(state, scope)?;
            let (resource, perms) = grant_scopes(&app, &request)?;
            if user.mfa_required && !record.mfa {
                return Err(mfa_error(&resource, true));
            }
            let upn = record.upn.clone();
            Ok(issue(
                state,
                tenant,
                &app.client_id,
                &upn,
                &resource,
                perms,
                (request.offline_access, request.openid),
                record.mfa,
                now,
            ))
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = form
                .get("device_code")
                .ok_or_else(|| AadError::missing("device_code"))?;
            let record = state.device_codes.get(code).cloned().ok_or_else(|| {
                AadError::bad(
                    "bad_verification_code",
                    70018,
                    "The provided value for the input parameter 'device_code' is not valid.",
                )
            })?;
            if record.tenant != tenant || record.client_id != app.client_id {
                return Err(AadError::bad(
                    "bad_verification_code",
                    70018,
                    "The provided value for the input parameter 'device_code' is not valid.",
                ));
            }
            if record.expires_at <= now {
                return Err(AadError::bad(
                    "expired_token",
                    70019,
                    "Verification code expired.",
                ));
            }
            // A poll sooner than `interval` after the previous one (or the code's issue), or an
            // injected one: `slow_down`, and this code's interval grows by 5 s for good.
            let polled = std::time::Instant::now();
            let too_soon = polled.duration_since(record.last_poll) < record.interval;
            if record.slow_downs > 0 || too_soon {
                if let Some(r) = state.device_codes.get_mut(code) {
                    r.last_poll = polled;
                    r.slow_downs = r.slow_downs.saturating_sub(1);
                    r.interval += Duration::from_secs(5);
                }
                return Err(AadError::bad(
                    "slow_down",
                    70016,
                    "OAuth 2.0 device flow error. Polling too frequently; slow down.",
                ));
            }
            match &record.state {
                DeviceState::Pending => {
                    if let Some(r) = state.device_codes.get_mut(code) {
                        r.last_poll = polled;
                    }
                    Err(AadError::bad(
                        "authorization_pending",
                        70016,
                        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                    ))
                }
                DeviceState::Declined => Err(AadError::bad(
                    "authorization_declined",
                    70000,
                    "The user declined the authorization request.",
                )),
                DeviceState::Redeemed => Err(AadError::bad(
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
                )),
                DeviceState::Approved(upn_key) => {
                    outcome.user = Some(upn_key.clone());
                    let user = t.users.get(upn_key).ok_or_else(|| {
                        AadError::bad(
                            "invalid_grant",
                            50034,
                            "The user account does not exist in the directory.",
                        )
                    })?;
                    user_blocks(user, false)?;
                    let request = parse_scope(state, &record.scope)?;
                    // Consent covers every resource asked for; the token is for the first.
                    for (resource, asked) in &request.resources {
                        consented_for(&app, resource, asked)?;
                    }
                    let (resource, asked) = request.resources[0].clone();
                    let perms = consented_for(&app, &resource, &asked)?;
                    let upn = user.upn.clone();
                    if let Some(r) = state.device_codes.get_mut(code) {
                        r.state = DeviceState::Redeemed;
                    }
                    Ok(issue(
                        state,
                        tenant,
                        &app.client_id,
                        &upn,
                        &resource,
                        perms,
                        (request.offline_access, request.openid),
                        true,
                        now,
                    ))
                }
            }
        }
        "authorization_code" => redeem_code(state, tenant, &app, form, outcome, now),
        "client_credentials" => {
            spend_assertion(state, form, now)?;
            client_credentials(state, tenant, &app, form, now)
        }
        other => Err(AadError::bad(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// `grant_type=client_credentials` (client authenticated by `check_client`): the scope must be
/// one resource's `/.default` (AADSTS1002012 otherwise); the token carries the application
/// permissions consented on that resource as `roles` (none: a token without roles, as Entra
/// issues it), no user, no refresh token.
fn client_credentials(
    state: &mut StandInState,
    tenant: &str,
    app: &AppRegistration,
    form: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Response, AadError> {
    let scope = form
        .get("scope")
        .ok_or_else(|| AadError::missing("scope"))?;
    let items: Vec<&str> = scope.split_whitespace().collect();
    let resource = match items.as_slice() {
        [one] if one.ends_with("/.default") && one.contains("://") => {
            one.trim_end_matches("/.default").to_owned()
        }
        _ => {
            return Err(AadError::bad(
                "invalid_scope",
                1002012,
                format!(
                    "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            ));
        }
    };
    parse_scope(state, &format!("{resource}/.default"))?;
    let prefix = format!("{resource}/");
    let roles: Vec<String> = app
        .application_permissions
        .iter()
        .filter_map(|p| p.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    let lifetime = state
        .tenants
        .get(tenant)
        .and_then(|t| t.settings.access_token_lifetime_secs)
        .unwrap_or(3599);
    // Every app-only token (Graph and Outlook alike) is shaped like Entra's: a JWT whose payload
    // names the app, the tenant and the `roles` (its signature is random: only this stand-in's
    // lookup validates it, as only the resource can validate Entra's). Dovecot introspects it
    // like any token; the mailbox check (`/introspect/mailbox`) gets it through the oauth2
    // passdb's password-grant form, which has no length limit.
    let expires_at = now + chrono::Duration::seconds(lifetime as i64);
    let access_token = {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.{}",
            b64(json!({"typ": "JWT", "alg": "RS256"})),
            b64(json!({
                "aud": resource,
                "iss": format!("https://sts.windows.net/{tenant}/"),
                "appid": app.client_id,
                "oid": app.service_principal_id,
                "sub": app.service_principal_id,
                "tid": tenant,
                "idtyp": "app",
                "roles": roles,
                "iat": now.timestamp(),
                "nbf": now.timestamp(),
                "exp": expires_at.timestamp(),
                "uti": random_token(16),
            })),
            random_token(64)
        )
    };
    state.access_tokens.insert(
        access_token.clone(),
        AccessRecord {
            tenant: tenant.to_owned(),
            client_id: app.client_id.clone(),
            issued: IssuedAccessToken {
                audience: resource,
                scopes: Vec::new(),
                upn: String::new(),
                expires_at: now + chrono::Duration::seconds(lifetime as i64),
                roles,
                app_only: true,
            },
            revoked: false,
        },
    );
    Ok((
        StatusCode::OK,
        Json(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        })),
    )
        .into_response())
}

/// `grant_type=authorization_code`: the code is single use (AADSTS54005 when reused), expires
/// after 10 minutes (AADSTS70008), and is bound to its client, its redirect URI and its PKCE
/// challenge (AADSTS501481 for a missing or wrong `code_verifier`).
fn redeem_code(
    state: &mut StandInState,
    tenant: &str,
    app: &AppRegistration,
    form: &HashMap<String, String>,
    outcome: &mut Outcome,
    now: DateTime<Utc>,
) -> Result<Response, AadError> {
    let code = form.get("code").ok_or_else(|| AadError::missing("code"))?;
    let redirect_uri = form
        .get("redirect_uri")
        .ok_or_else(|| AadError::missing("redirect_uri"))?;
    let invalid = || {
        AadError::bad(
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        )
    };
    let record = state
        .authorization_codes
        .get(code)
        .cloned()
        .ok_or_else(invalid)?;
    outcome.user = Some(record.upn.to_lowercase());
    if record.tenant != tenant || record.client_id != app.client_id {
        return Err(invalid());
    }
    if record.redeemed {
        return Err(AadError::bad(
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        ));
    }
    if record.expires_at <= now {
        return Err(AadError::bad(
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        ));
    }
    if *redirect_uri != record.redirect_uri {
        return Err(AadError::bad(
            "invalid_grant",
            50011,
            format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URI used to obtain the authorization code."
            ),
        ));
    }
    if let Some((method, challenge)) = &record.pkce {
        let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
        let computed = if method == "S256" {
            use sha2::Digest;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()))
        } else {
            verifier.to_owned()
        };
        if verifier.is_empty() || computed != *challenge {
            return Err(AadError::bad(
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            ));
        }
    }
    let t = state.tenants.get(tenant).ok_or_else(invalid)?;
    let user = t
        .users
        .get(&record.upn.to_lowercase())
        .ok_or_else(invalid)?;
    user_blocks(user, false)?;
    let upn = user.upn.clone();
    // The token is for one resource: the `scope` of this request, else the code's first.
    let scope = form.get("scope").cloned().unwrap_or(record.scope.clone());
    let request = parse_scope(state, &scope)?;
    let (resource, perms) = grant_scopes(app, &request)?;
    let authorized = parse_scope(state, &record.scope)?;
    if !authorized.resources.iter().any(|(r, _)| *r == resource) {
        return Err(AadError::bad(
            "invalid_grant",
            70000,
            "The request was denied because one or more scopes requested are unauthorized or expired. The user must first sign in and grant the client application access to the requested scope.",
        ));
    }
    if let Some(r) = state.authorization_codes.get_mut(code) {
        r.redeemed = true;
    }
    Ok(issue(
        state,
        tenant,
        &app.client_id,
        &upn,
        &resource,
        perms,
        (
            authorized.offline_access || request.offline_access,
            request.openid,
        ),
        true,
        now,
    ))
}

/// Whether `asked` matches a registered redirect URI: exactly, or as `http://localhost` /
/// `http://127.0.0.1` with any port and the same path.
fn redirect_uri_registered(app: &AppRegistration, asked: &str) -> bool {
    let Ok(asked_url) = url::Url::parse(asked) else {
        return false;
    };
    app.redirect_uris.iter().any(|registered| {
        if registered == asked {
            return true;
        }
        let Ok(reg) = url::Url::parse(registered) else {
            return false;
        };
        let loopback = matches!(reg.host_str(), Some("localhost" | "127.0.0.1"));
        loopback
            && reg.scheme() == "http"
            && asked_url.scheme() == "http"
            && reg.host_str() == asked_url.host_str()
            && reg.path() == asked_url.path()
            && reg.query() == asked_url.query()
    })
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// An error page the browser shows (no redirect: the redirect URI is not trusted, or the
/// request cannot be tied to an app).
fn error_page(code: u64, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><title>Sign in to your account</title></head><body>\
         <h1>Sorry, but we're having trouble signing you in.</h1>\
         <p id=\"error\">AADSTS{code}: {}</p></body></html>",
        html_escape(message)
    );
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `302` to the redirect URI with `params` (plus `state` when the request had one).
fn redirect_to(redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut url = match url::Url::parse(redirect_uri) {
        Ok(url) => url,
        Err(_) => return error_page(90102, "'redirect_uri' value must be a valid absolute URI."),
    };
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in params {
            pairs.append_pair(k, v);
        }
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
    }
    (StatusCode::FOUND, [("location", url.to_string())]).into_response()
}

fn redirect_error(flow: &AuthorizeFlow, err: &AadError) -> Response {
    redirect_to(
        &flow.redirect_uri,
        &[
            ("error", err.error),
            (
                "error_description",
                &format!("AADSTS{}: {}", err.code, err.message),
            ),
        ],
        flow.state.as_deref(),
    )
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: check the app and the redirect URI (errors here are a
/// page, never a redirect), then the rest (errors redirected), then the sign-in and consent form.
async fn authorize_page(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = parse_form(query.unwrap_or_default().as_bytes());
    let mut state = shared.lock();
    let outcome = Outcome {
        grant_type: Some("authorize".to_owned()),
        ..Outcome::default()
    };
    let page = |state: &mut StandInState, code: u64, message: String| {
        state.requests.push(RequestRecord {
            endpoint: "authorize".into(),
            tenant: Some(tenant.clone()),
            grant_type: outcome.grant_type.clone(),
            user: None,
            status: 400,
            error: Some("error_page".into()),
            error_code: Some(code),
            retry_after_secs: None,
            answered_at: Utc::now(),
        });
        error_page(code, &message)
    };
    let Some(t) = state.tenants.get(&tenant) else {
        let message = format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        );
        return page(&mut state, 90002, message);
    };
    let Some(client_id) = q.get("client_id") else {
        return page(
            &mut state,
            900144,
            "The request body must contain the following parameter: 'client_id'.".into(),
        );
    };
    let Some(app) = t.apps.get(client_id).cloned() else {
        let message = format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
        );
        return page(&mut state, 700016, message);
    };
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return page(
            &mut state,
            900144,
            "The request body must contain the following parameter: 'redirect_uri'.".into(),
        );
    };
    if !redirect_uri_registered(&app, redirect_uri) {
        let message = format!(
            "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this."
        );
        return page(&mut state, 50011, message);
    }
    let mut flow = AuthorizeFlow {
        tenant: tenant.clone(),
        client_id: client_id.clone(),
        redirect_uri: redirect_uri.clone(),
        scope: q.get("scope").cloned().unwrap_or_default(),
        state: q.get("state").cloned(),
        pkce: None,
    };
    let checked: Result<(), AadError> = (|| {
        match q.get("response_type").map(String::as_str) {
            Some("code") => {}
            Some(_) => {
                return Err(AadError::bad(
                    "unsupported_response_type",
                    700054,
                    "response_type is not enabled for the application.",
                ));
            }
            None => return Err(AadError::missing("response_type")),
        }
        if flow.scope.is_empty() {
            return Err(AadError::missing("scope"));
        }
        parse_scope(&state, &flow.scope)?;
        let method = q
            .get("code_challenge_method")
            .cloned()
            .unwrap_or_else(|| "plain".to_owned());
        match (q.get("code_challenge"), method.as_str()) {
            (Some(challenge), "S256" | "plain") => {
                flow.pkce = Some((method.clone(), challenge.clone()));
            }
            (Some(_), other) => {
                return Err(AadError::bad(
                    "invalid_request",
                    501491,
                    format!("Invalid code_challenge_method '{other}'."),
                ));
            }
            (None, _) if q.contains_key("code_challenge_method") => {
                return Err(AadError::missing("code_challenge"));
            }
            (None, _) => {}
        }
        Ok(())
    })();
    if let Err(err) = checked {
        state.requests.push(RequestRecord {
            endpoint: "authorize".into(),
            tenant: Some(tenant.clone()),
            grant_type: outcome.grant_type.clone(),
            user: None,
            status: 302,
            error: Some(err.error.to_owned()),
            error_code: Some(err.code),
            retry_after_secs: None,
            answered_at: Utc::now(),
        });
        return redirect_error(&flow, &err);
    }
    let flow_id = random_token(24);
    let scopes = flow.scope.clone();
    state.authorize_flows.insert(flow_id.clone(), flow);
    state.requests.push(RequestRecord {
        endpoint: "authorize".into(),
        tenant: Some(tenant.clone()),
        grant_type: outcome.grant_type.clone(),
        user: q.get("login_hint").map(|u| u.to_lowercase()),
        status: 200,
        error: None,
        error_code: None,
        retry_after_secs: None,
        answered_at: Utc::now(),
    });
    let hint = q.get("login_hint").cloned().unwrap_or_default();
    let body = format!(
        "<!doctype html><html><head><title>Sign in to your account</title></head><body>\
         <form id=\"signin\" method=\"post\" action=\"/{tenant}/oauth2/v2.0/authorize\">\
         <input type=\"hidden\" name=\"flow\" value=\"{flow_id}\">\
         <label>Email <input name=\"login\" value=\"{hint}\"></label>\
         <label>Password <input type=\"password\" name=\"passwd\"></label>\
         <p>Permissions requested by {client}: <span id=\"scopes\">{scopes}</span></p>\
         <button name=\"consent\" value=\"accept\">Accept</button>\
         <button name=\"consent\" value=\"decline\">Cancel</button>\
         </form></body></html>",
        tenant = html_escape(&tenant),
        hint = html_escape(&hint),
        client = html_escape(client_id),
        scopes = html_escape(&scopes),
    );
    (
        StatusCode::OK,
        [("content-type", "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `POST /{tenant}/oauth2/v2.0/authorize`: the sign-in and consent form (`flow`, `login`,
/// `passwd`, `consent=accept|decline`). An interactive sign-in satisfies MFA. Accept: a code to
/// the redirect URI; decline: `access_denied` (AADSTS65004) to the redirect URI.
async fn authorize_submit(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_form(&headers) {
        return error_page(
            900144,
            "The request body must contain the following parameter: 'flow'.",
        );
    }
    let form = parse_form(&body);
    let mut state = shared.lock();
    let Some(flow) = form
        .get("flow")
        .and_then(|id| state.authorize_flows.get(id))
        .filter(|f| f.tenant == tenant)
        .cloned()
    else {
        return error_page(
            90015,
            "The sign-in session is not valid or has expired. Start the sign-in again.",
        );
    };
    let login = form.get("login").cloned().unwrap_or_default();
    let record = |state: &mut StandInState, status: u16, error: Option<&AadError>| {
        state.requests.push(RequestRecord {
            endpoint: "authorize".into(),
            tenant: Some(tenant.clone()),
            grant_type: Some("authorize_submit".into()),
            user: Some(login.to_lowercase()),
            status,
            error: error.map(|e| e.error.to_owned()),
            error_code: error.map(|e| e.code),
            retry_after_secs: None,
            answered_at: Utc::now(),
        });
    };
    let Some(t) = state.tenants.get(&tenant) else {
        return error_page(90002, "Tenant not found.");
    };
    let now = t.now();
    let Some(user) = t.users.get(&login.to_lowercase()).cloned() else {
        record(&mut state, 400, None);
        return error_page(50034, "The user account does not exist in this directory.");
    };
    if form.get("passwd") != Some(&user.password) {
        record(&mut state, 400, None);
        return error_page(
            50126,
            "Error validating credentials due to invalid username or password.",
        );
    }
    if let Err(err) = user_blocks(&user, true) {
        record(&mut state, 400, Some(&err));
        return error_page(err.code, &err.message);
    }
    if let Some(id) = form.get("flow") {
        state.authorize_flows.remove(id);
    }
    if form.get("consent").map(String::as_str) != Some("accept") {
        let err = AadError::bad(
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        );
        record(&mut state, 302, Some(&err));
        return redirect_to(
            &flow.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_subcode", "cancel"),
                (
                    "error_description",
                    &format!("AADSTS{}: {}", err.code, err.message),
                ),
            ],
            flow.state.as_deref(),
        );
    }
    let code = format!("1.{}", random_token(96));
    state.authorization_codes.insert(
        code.clone(),
        CodeRecord {
            tenant: tenant.clone(),
            client_id: flow.client_id.clone(),
            redirect_uri: flow.redirect_uri.clone(),
            scope: flow.scope.clone(),
            upn: user.upn.clone(),
            pkce: flow.pkce.clone(),
            expires_at: now + chrono::Duration::seconds(AUTHORIZATION_CODE_LIFETIME_SECS),
            redeemed: false,
        },
    );
    record(&mut state, 302, None);
    redirect_to(
        &flow.redirect_uri,
        &[
            ("code", &code),
            ("session_state", &uuid::Uuid::new_v4().to_string()),
        ],
        flow.state.as_deref(),
    )
}

/// The parameters of a token or devicecode request. Only an
/// `application/x-www-form-urlencoded` body carries any: a JSON (or untyped) body reads as no
/// parameters at all, so the request fails with AADSTS900144 naming the first one missing.
fn form_body(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    if is_form(headers) {
        parse_form(body)
    } else {
        HashMap::new()
    }
}

/// The body is `application/x-www-form-urlencoded` (what every OAuth endpoint takes).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

#[allow(clippy::too_many_arguments)]
fn issue(
    state: &mut StandInState,
    tenant: &str,
    client_id: &str,
    upn: &str,
    resource: &str,
    perms: Vec<String>,
    (offline_access, openid): (bool, bool),
    mfa: bool,
    now: DateTime<Utc>,
) -> Response {
    let lifetime = state
        .tenants
        .get(tenant)
        .and_then(|t| t.settings.access_token_lifetime_secs)
        .unwrap_or(3599);
    let access_token = random_token(48);
    state.access_tokens.insert(
        access_token.clone(),
        AccessRecord {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            issued: IssuedAccessToken {
                audience: resource.to_owned(),
                scopes: perms.clone(),
                upn: upn.to_owned(),
                expires_at: now + chrono::Duration::seconds(lifetime as i64),
                roles: Vec::new(),
                app_only: false,
            },
            revoked: false,
        },
    );
    let mut scope: Vec<String> = perms.iter().map(|p| format!("{resource}/{p}")).collect();
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if offline_access {
        scope.push("offline_access".to_owned());
        let refresh_token = format!("1.{}", random_token(64));
        state.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshRecord {
                tenant: tenant.to_owned(),
                client_id: client_id.to_owned(),
                upn: upn.to_owned(),
                issued_at: now,
                mfa,
            },
        );
        body["refresh_token"] = json!(refresh_token);
    }
    if openid {
        scope.insert(0, "openid".to_owned());
        scope.insert(1, "profile".to_owned());
        body["id_token"] = json!(id_token(state, tenant, client_id, upn, now));
    }
    body["scope"] = json!(scope.join(" "));
    (StatusCode::OK, Json(body)).into_response()
}

/// An (unsigned, `alg: none`) OpenID Connect ID token with Entra's v2.0 claim names.
fn id_token(
    state: &StandInState,
    tenant: &str,
    client_id: &str,
    upn: &str,
    now: DateTime<Utc>,
) -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let name = state
        .tenants
        .get(tenant)
        .and_then(|t| t.users.get(&upn.to_lowercase()))
        .map_or(upn, |u| u.upn.as_str());
    let oid = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(upn.to_lowercase().as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    };
    let claims = json!({
        "aud": client_id,
        "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "exp": now.timestamp() + 3600,
        "name": name,
        "preferred_username": name,
        "oid": oid,
        "tid": tenant,
        "ver": "2.0",
    });
    format!(
        "{}.{}.",
        b64(&json!({"typ": "JWT", "alg": "none"})),
        b64(&claims)
    )
}

async fn devicecode_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_body(&headers, &body);
    let outcome = Outcome::default();
    let mut state = shared.lock();
    if let Some(kind) = take_failure(&mut state, FailureTarget::TokenEndpoint, Some(&tenant), &[])
        && let Some(err) = failure_error(&kind)
    {
        return respond(&mut state, "devicecode", Some(&tenant), &outcome, Err(err));
    }
    let result = (|| {
        let (t, app) = check_client(&state, &tenant, &form)?;
        let scope = form
            .get("scope")
            .ok_or_else(|| AadError::missing("scope"))?
            .clone();
        parse_scope(&state, &scope)?;
        let now = t.now();
        let interval = t.settings.device_code_interval_secs.unwrap_or(1);
        let lifetime = t.settings.device_code_lifetime_secs.unwrap_or(900);
        let client_id = app.client_id.clone();
        let device_code = random_token(48);
        let code = user_code();
        state.device_codes.insert(
            device_code.clone(),
            DeviceRecord {
                user_code: code.clone(),
                tenant: tenant.clone(),
                client_id,
                scope,
                expires_at: now + chrono::Duration::seconds(lifetime as i64),
                state: DeviceState::Pending,
                slow_downs: 0,
                interval: Duration::from_secs(interval),
                last_poll: std::time::Instant::now(),
            },
        );
        Ok((StatusCode::OK, Json(json!({
            "user_code": code,
            "device_code": device_code,
            "verification_uri": DEVICE_LOGIN_URI,
            "expires_in": lifetime,
            "interval": interval,
            "message": format!("To sign in, use a web browser to open the page {DEVICE_LOGIN_URI} and enter the code {code} to authenticate."),
        })))
        .into_response())
    })();
    record(&mut state, "devicecode", Some(&tenant), &outcome, &result);
    result.unwrap_or_else(AadError::into_response)
}

/// How an introspection answers a token that may not open the mailbox.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// RFC 7662: `200 {"active": false}`.
    Inactive,
    /// The password-grant form Dovecot's second oauth2 passdb reads: an answer is a token
    /// response (with `access_token`), a refusal `400 invalid_grant`, which Dovecot counts as a
    /// wrong password (`NO [AUTHENTICATIONFAILED]`), not a server fault.
    InvalidGrant,
}

async fn introspect(
    shared: &Shared,
    token: Option<String>,
    user: Option<String>,
    refusal: Refusal,
) -> Response {
    let injected = {
        let mut state = shared.lock();
        let owner = token
            .as_deref()
            .and_then(|t| state.access_tokens.get(t))
            .map(|r| (r.tenant.clone(), r.issued.upn.clone()));
        let mut users: Vec<&str> = Vec::new();
        if let Some((_, upn)) = &owner {
            users.push(upn);
        }
        if let Some(u) = &user {
            users.push(u);
        }
        let tenant = owner.as_ref().map(|(t, _)| t.as_str());
        take_failure(&mut state, FailureTarget::Introspection, tenant, &users)
    };
    match injected {
        Some(FailureKind::Latency { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        Some(kind) => {
            let status = match kind {
                FailureKind::Status { status } => status,
                FailureKind::TooManyRequests { .. } => 429,
                _ => 503,
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut state = shared.lock();
            state.requests.push(RequestRecord {
                endpoint: "introspect".into(),
                tenant: None,
                grant_type: None,
                user: user.as_ref().map(|u| u.to_lowercase()),
                status: status.as_u16(),
                error: Some("injected".into()),
                error_code: None,
                retry_after_secs: None,
                answered_at: Utc::now(),
            });
            return (status, "injected failure").into_response();
        }
        None => {}
    }
    let mut state = shared.lock();
    let answer = token.as_deref().and_then(|token| {
        let record = live_access_token(&state, token)?;
        if record.issued.app_only {
            // App-only IMAP (Exchange Online): the IMAP.AccessAsApp role, an Outlook audience,
            // the service principal registered in Exchange with the Enterprise application's
            // object id (`New-ServicePrincipal`), and a mailbox it was given Full Access to
            // (`Add-MailboxPermission`), named as `user`.
            let mailbox = user.as_deref()?.to_lowercase();
            let app = state
                .tenants
                .get(&record.tenant)?
                .apps
                .get(&record.client_id)?;
            let allowed = record.issued.roles.iter().any(|r| r == IMAP_APP_PERMISSION)
                && OUTLOOK_RESOURCES.contains(&record.issued.audience.trim_end_matches('/'))
                && app.exchange_service_principal.as_deref()
                    == Some(app.service_principal_id.as_str())
                && app
                    .imap_mailboxes
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&mailbox));
            return allowed.then(|| {
                json!({
                    "active": true,
                    "email": mailbox,
                    "sub": record.client_id,
                    "roles": record.issued.roles.join(" "),
                    "client_id": record.client_id,
                    "aud": record.issued.audience,
                    "exp": record.issued.expires_at.timestamp(),
                    "token_type": "Bearer",
                })
            });
        }
        if !record.issued.scopes.iter().any(|s| s == IMAP_PERMISSION) {
            return None;
        }
        let upn = record.issued.upn.clone();
        // With a `user` (shared-mailbox check), echo it back when the token's owner may open it.
        let email = match user.as_deref() {
            Some(u) if u.eq_ignore_ascii_case(&upn) => u.to_owned(),
            Some(u) => {
                let grant = (upn.to_lowercase(), u.to_lowercase());
                if state.mailbox_grants.contains(&grant) {
                    u.to_owned()
                } else {
                    return None;
                }
            }
            None => upn.clone(),
        };
        Some(json!({
            "active": true,
            "email": email,
            "sub": upn,
            "upn": upn,
            "scope": record.issued.scopes.join(" "),
            "client_id": record.client_id,
            "aud": record.issued.audience,
            "exp": record.issued.expires_at.timestamp(),
            "token_type": "Bearer",
        }))
    });
    let outcome = Outcome {
        user: answer
            .as_ref()
            .and_then(|a| a["email"].as_str().map(str::to_owned))
            .or(user),
        grant_type: None,
    };
    let response = match (answer, refusal) {
        (Some(mut body), Refusal::InvalidGrant) => {
            // Dovecot reads the answer as a token response: it needs the `access_token` (the
            // token it sent) beside the introspection fields.
            body["access_token"] = json!(token);
            (StatusCode::OK, Json(body)).into_response()
        }
        (Some(body), Refusal::Inactive) => (StatusCode::OK, Json(body)).into_response(),
        (None, Refusal::Inactive) => {
            (StatusCode::OK, Json(json!({"active": false}))).into_response()
        }
        (None, Refusal::InvalidGrant) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "invalid_grant",
                "error_description": "the token is not valid for this mailbox",
            })),
        )
            .into_response(),
    };
    respond(&mut state, "introspect", None, &outcome, Ok(response))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
}

async fn introspect_post(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let query = parse_form(query.unwrap_or_default().as_bytes());
    let token = form
        .get("token")
        .cloned()
        .filter(|t| !t.is_empty())
        .or_else(|| query.get("token").cloned().filter(|t| !t.is_empty()))
        .or_else(|| bearer(&headers));
    let user = form
        .get("user")
        .or_else(|| query.get("user"))
        .cloned()
        .filter(|u| !u.is_empty());
    introspect(&shared, token, user, Refusal::Inactive).await
}

/// `POST /introspect/mailbox`: the token and the mailbox being opened, as Dovecot's oauth2 passdb
/// sends them in its password-grant mode (`grant_type=password&username=<login user>&password=
/// <token>`). Used for the logins the token-only introspection cannot answer: a shared mailbox
/// opened with a delegate's token, and an app-only token opening a mailbox it was granted.
async fn introspect_mailbox_post(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form_encoded = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = parse_form(&body);
    let field = |name: &str| form.get(name).cloned().filter(|v| !v.is_empty());
    if !form_encoded || field("grant_type").as_deref() != Some("password") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "invalid_request",
                "error_description": "expected a form-encoded grant_type=password with username and password",
            })),
        )
            .into_response();
    }
    introspect(
        &shared,
        field("password"),
        field("username"),
        Refusal::InvalidGrant,
    )
    .await
}

async fn introspect_get(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = parse_form(query.unwrap_or_default().as_bytes());
    let token = query
        .get("token")
        .cloned()
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&headers));
    let user = query.get("user").cloned().filter(|u| !u.is_empty());
    introspect(&shared, token, user, Refusal::Inactive).await
}

// ---------------------------------------------------------------------------------------------
// HTTP test controls (mirror the methods; JSON in, JSON out)

fn control_result(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({"ok": true}))).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(json!({"ok": false, "error": e.to_string()})),
        )
            .into_response(),
    }
}

fn handle(shared: &Arc<Shared>) -> IdentityStandIn {
    IdentityStandIn {
        base_url: String::new(),
        shared: shared.clone(),
    }
}

async fn control_app(
    State(shared): State<Arc<Shared>>,
    Json(app): Json<AppRegistration>,
) -> Response {
    handle(&shared).register_app(app);
    control_result(Ok(()))
}

async fn control_user(
    State(shared): State<Arc<Shared>>,
    Json(user): Json<UserAccount>,
) -> Response {
    handle(&shared).register_user(user);
    control_result(Ok(()))
}

/// Body of the per-user control endpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRef {
    /// User principal name.
    pub upn: String,
}

async fn control_revoke(State(shared): State<Arc<Shared>>, Json(user): Json<UserRef>) -> Response {
    control_result(handle(&shared).revoke_refresh_tokens(&user.upn))
}

/// Body of `/_control/users/change-password`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PasswordChange {
    /// User principal name.
    pub upn: String,
    /// The new password.
    pub password: String,
}

async fn control_change_password(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<PasswordChange>,
) -> Response {
    control_result(handle(&shared).update_user(&req.upn, |u| u.password = req.password.clone()))
}

async fn control_expire_rt(
    State(shared): State<Arc<Shared>>,
    Json(user): Json<UserRef>,
) -> Response {
    control_result(handle(&shared).expire_refresh_tokens(&user.upn))
}

async fn control_revoke_at(
    State(shared): State<Arc<Shared>>,
    Json(user): Json<UserRef>,
) -> Response {
    handle(&shared).revoke_access_tokens(&user.upn);
    control_result(Ok(()))
}

/// Body of `/_control/tenants/settings`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TenantSettingsRequest {
    /// Tenant.
    pub tenant: String,
    /// Settings to change (absent fields unchanged).
    #[serde(flatten)]
    pub settings: TenantSettings,
}

async fn control_settings(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<TenantSettingsRequest>,
) -> Response {
    handle(&shared).set_tenant_settings(&req.tenant, req.settings);
    control_result(Ok(()))
}

/// Body of `/_control/tenants/advance-clock`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdvanceClockRequest {
    /// Tenant.
    pub tenant: String,
    /// Seconds to move forward.
    pub seconds: i64,
}

async fn control_advance_clock(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<AdvanceClockRequest>,
) -> Response {
    handle(&shared).advance_tenant_clock(&req.tenant, chrono::Duration::seconds(req.seconds));
    control_result(Ok(()))
}

/// Body of `/_control/mailbox-grants`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MailboxGrant {
    /// The user whose token is used.
    pub delegate: String,
    /// The shared mailbox address used as IMAP `user=`.
    pub shared_mailbox: String,
}

async fn control_grant(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<MailboxGrant>,
) -> Response {
    handle(&shared).grant_mailbox_access(&req.delegate, &req.shared_mailbox);
    control_result(Ok(()))
}

#[derive(Deserialize)]
struct TenantQuery {
    tenant: String,
}

async fn control_list_device_codes(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<TenantQuery>,
) -> Response {
    let state = shared.lock();
    Json(device_code_infos(&state, &q.tenant)).into_response()
}

/// Body of `/_control/device-codes/{approve,decline,expire,slow-down}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceCodeAction {
    /// The user code shown to the user.
    pub user_code: String,
    /// approve: who signs in.
    #[serde(default)]
    pub upn: Option<String>,
    /// slow-down: how many polls (default 1).
    #[serde(default)]
    pub times: Option<u32>,
}

async fn control_device_code(
    State(shared): State<Arc<Shared>>,
    Path(action): Path<String>,
    Json(req): Json<DeviceCodeAction>,
) -> Response {
    let h = handle(&shared);
    let result = match action.as_str() {
        "approve" => match &req.upn {
            Some(upn) => h.approve_device_code(&req.user_code, upn),
            None => Err(ControlError("approve needs upn".into())),
        },
        "decline" => h.decline_device_code(&req.user_code),
        "expire" => h.expire_device_code(&req.user_code),
        "slow-down" => h.slow_down_device_code(&req.user_code, req.times.unwrap_or(1)),
        other => Err(ControlError(format!("unknown device code action {other}"))),
    };
    control_result(result)
}

async fn control_failure(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<FailureInjection>,
) -> Response {
    handle(&shared).inject_failure(req);
    control_result(Ok(()))
}

async fn control_requests(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(filter): axum::extract::Query<RequestFilter>,
) -> Response {
    Json(handle(&shared).requests(&filter)).into_response()
}

/// Drives an identity stand-in over HTTP (`/_control/...`), for a stack in another process
/// (the demo, CLI tests).
#[derive(Clone, Debug)]
pub struct IdentityControl {
    /// The stand-in's base URL.
    pub base_url: String,
    http: reqwest::Client,
}

impl IdentityControl {
    /// Control the stand-in at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn post<T: Serialize>(&self, path: &str, body: &T) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/_control/{path}", self.base_url))
            .json(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "{path}: HTTP {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// See [`IdentityStandIn::register_app`].
    pub async fn register_app(&self, app: &AppRegistration) -> anyhow::Result<()> {
        self.post("apps", app).await
    }
    /// See [`IdentityStandIn::register_user`].
    pub async fn register_user(&self, user: &UserAccount) -> anyhow::Result<()> {
        self.post("users", user).await
    }
    /// See [`IdentityStandIn::revoke_refresh_tokens`].
    pub async fn revoke_refresh_tokens(&self, upn: &str) -> anyhow::Result<()> {
        self.post("users/revoke", &UserRef { upn: upn.into() })
            .await
    }
    /// The user changes their password (revokes their refresh tokens); see
    /// [`IdentityStandIn::update_user`].
    pub async fn change_password(&self, upn: &str, password: &str) -> anyhow::Result<()> {
        self.post(
            "users/change-password",
            &PasswordChange {
                upn: upn.into(),
                password: password.into(),
            },
        )
        .await
    }
    /// See [`IdentityStandIn::advance_tenant_clock`].
    pub async fn advance_tenant_clock(
        &self,
        tenant: &str,
        by: chrono::Duration,
    ) -> anyhow::Result<()> {
        self.post(
            "tenants/advance-clock",
            &AdvanceClockRequest {
                tenant: tenant.into(),
                seconds: by.num_seconds(),
            },
        )
        .await
    }
    /// See [`IdentityStandIn::expire_refresh_tokens`].
    pub async fn expire_refresh_tokens(&self, upn: &str) -> anyhow::Result<()> {
        self.post("users/expire-refresh-tokens", &UserRef { upn: upn.into() })
            .await
    }
    /// See [`IdentityStandIn::grant_mailbox_access`].
    pub async fn grant_mailbox_access(
        &self,
        delegate: &str,
        shared_mailbox: &str,
    ) -> anyhow::Result<()> {
        self.post(
            "mailbox-grants",
            &MailboxGrant {
                delegate: delegate.into(),
                shared_mailbox: shared_mailbox.into(),
            },
        )
        .await
    }
    /// See [`IdentityStandIn::approve_device_code`].
    pub async fn approve_device_code(&self, user_code: &str, upn: &str) -> anyhow::Result<()> {
        self.post(
            "device-codes/approve",
            &DeviceCodeAction {
                user_code: user_code.into(),
                upn: Some(upn.into()),
                times: None,
            },
        )
        .await
    }
    /// See [`IdentityStandIn::decline_device_code`].
    pub async fn decline_device_code(&self, user_code: &str) -> anyhow::Result<()> {
        self.post(
            "device-codes/decline",
            &DeviceCodeAction {
                user_code: user_code.into(),
                upn: None,
                times: None,
            },
        )
        .await
    }
    /// See [`IdentityStandIn::device_codes`].
    pub async fn device_codes(&self, tenant: &str) -> anyhow::Result<Vec<DeviceCodeInfo>> {
        Ok(self
            .http
            .get(format!("{}/_control/device-codes", self.base_url))
            .query(&[("tenant", tenant)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
    /// See [`IdentityStandIn::inject_failure`].
    pub async fn inject_failure(&self, injection: &FailureInjection) -> anyhow::Result<()> {
        self.post("failures", injection).await
    }
    /// See [`IdentityStandIn::requests`].
    pub async fn requests(&self, filter: &RequestFilter) -> anyhow::Result<Vec<RequestRecord>> {
        Ok(self
            .http
            .get(format!("{}/_control/requests", self.base_url))
            .query(filter)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
