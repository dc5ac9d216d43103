//! The stand-in's internal state: tenants, the grants and codes it issued, and the lock around them.

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Tenant {
    pub(super) apps: HashMap<String, AppRegistration>,
    pub(super) users: HashMap<String, UserAccount>,
    pub(super) settings: TenantSettings,
    pub(super) clock_offset: chrono::Duration,
    /// Per-user "tokens valid from" (revocation).
    pub(super) tokens_valid_from: HashMap<String, DateTime<Utc>>,
}

impl Tenant {
    pub(super) fn new() -> Self {
        Self {
            apps: HashMap::new(),
            users: HashMap::new(),
            settings: TenantSettings::default(),
            clock_offset: chrono::Duration::zero(),
            tokens_valid_from: HashMap::new(),
        }
    }
    pub(super) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }
    pub(super) fn inactivity_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(
            self.settings
                .refresh_token_inactivity_secs
                .unwrap_or(90 * 24 * 3600) as i64,
        )
    }
}

#[derive(Clone, Debug)]
pub(super) struct RefreshRecord {
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) upn: String,
    /// Its expiry window (90 days by default) runs from here; using it does not extend it.
    pub(super) issued_at: DateTime<Utc>,
    /// Obtained with MFA (device code, browser), so MFA policies are satisfied.
    pub(super) mfa: bool,
}

#[derive(Clone, Debug)]
pub(super) struct AccessRecord {
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) issued: IssuedAccessToken,
    pub(super) revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DeviceState {
    Pending,
    Approved(String),
    Declined,
    Redeemed,
}

#[derive(Clone, Debug)]
pub(super) struct DeviceRecord {
    pub(super) user_code: String,
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) scope: String,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) state: DeviceState,
    pub(super) slow_downs: u32,
    /// The poll interval this code must keep (grows by 5 s with each `slow_down`, RFC 8628
    /// §3.5).
    pub(super) interval: Duration,
    /// When it was issued or last polled (real time: the interval is wall-clock seconds).
    pub(super) last_poll: std::time::Instant,
}

/// An `/authorize` request waiting for the user to sign in and consent.
#[derive(Clone, Debug)]
pub(super) struct AuthorizeFlow {
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) scope: String,
    pub(super) state: Option<String>,
    /// (method, challenge) when PKCE was used.
    pub(super) pkce: Option<(String, String)>,
}

/// An authorization code: single use, bound to its client, redirect URI and PKCE challenge.
#[derive(Clone, Debug)]
pub(super) struct CodeRecord {
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) scope: String,
    pub(super) upn: String,
    pub(super) pkce: Option<(String, String)>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) redeemed: bool,
}

#[derive(Default)]
pub(super) struct StandInState {
    pub(super) tenants: HashMap<String, Tenant>,
    pub(super) refresh_tokens: HashMap<String, RefreshRecord>,
    pub(super) access_tokens: HashMap<String, AccessRecord>,
    pub(super) device_codes: HashMap<String, DeviceRecord>,
    /// Browser sign-ins between `/authorize` and the posted sign-in form, by flow id.
    pub(super) authorize_flows: HashMap<String, AuthorizeFlow>,
    /// Authorization codes handed to redirect URIs.
    pub(super) authorization_codes: HashMap<String, CodeRecord>,
    pub(super) failures: Vec<FailureInjection>,
    pub(super) requests: Vec<RequestRecord>,
    /// (delegate upn, shared mailbox address), lower case.
    pub(super) mailbox_grants: HashSet<(String, String)>,
    /// `http://127.0.0.1:port`: client assertions must be addressed to its token endpoint.
    pub(super) base_url: String,
    /// `jti` of client assertions already used, with their `exp` (a replay is refused).
    pub(super) used_assertions: HashMap<String, i64>,
}

pub(super) struct Shared {
    pub(super) state: Mutex<StandInState>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StandInState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A control call was refused (unknown tenant, user or code).
#[derive(Debug, thiserror::Error)]
#[error("identity stand-in control: {0}")]
pub struct ControlError(pub(super) String);

pub(super) fn random_token(bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub(super) fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..9)
        .map(|_| ALPHABET[rand::random::<u8>() as usize % ALPHABET.len()] as char)
        .collect()
}
