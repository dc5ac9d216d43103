//! The stand-in's public model: resources and permissions, apps, users, issued tokens, injected
//! failures, request records, tenant settings.

use super::*;

/// Permissions the stand-in knows on Graph-like resources.
pub(super) const GRAPH_PERMISSIONS: &[&str] = &[
    "Mail.Send",
    "Mail.Send.Shared",
    "Mail.Read",
    "Mail.ReadWrite",
    "Mail.ReadWrite.Shared",
    "User.Read",
];
/// Permissions the stand-in knows on Outlook (Exchange Online) resources.
pub(super) const OUTLOOK_PERMISSIONS: &[&str] = &[
    "IMAP.AccessAsUser.All",
    "POP.AccessAsUser.All",
    "SMTP.Send",
    "IMAP.AccessAsApp",
];
/// The IMAP permission Dovecot logins need.
pub const IMAP_PERMISSION: &str = "IMAP.AccessAsUser.All";
/// Built-in Graph resources (global and national clouds).
pub(super) const GRAPH_RESOURCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
];
/// Built-in Outlook resources.
pub(super) const OUTLOOK_RESOURCES: &[&str] = &[
    "https://outlook.office.com",
    "https://outlook.office365.com",
    "https://outlook.office365.us",
    "https://partner.outlook.cn",
];
pub(super) const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];
/// Where users are told to enter device codes.
pub const DEVICE_LOGIN_URI: &str = "https://microsoft.com/devicelogin";

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

pub(super) fn new_object_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(super) fn yes() -> bool {
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
pub(super) const AUTHORIZATION_CODE_LIFETIME_SECS: i64 = 600;

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

    pub(super) fn matches(&self, r: &RequestRecord) -> bool {
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
