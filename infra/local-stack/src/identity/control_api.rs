//! HTTP test controls under `/_control/...` (mirror the methods; JSON in, JSON out) and
//! [`IdentityControl`], the client a stack in another process drives them with.

use super::*;

// ---------------------------------------------------------------------------------------------
// HTTP test controls (mirror the methods; JSON in, JSON out)

pub(super) fn control_result(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({"ok": true}))).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(json!({"ok": false, "error": e.to_string()})),
        )
            .into_response(),
    }
}

pub(super) fn handle(shared: &Arc<Shared>) -> IdentityStandIn {
    IdentityStandIn {
        base_url: String::new(),
        shared: shared.clone(),
    }
}

pub(super) async fn control_app(
    State(shared): State<Arc<Shared>>,
    Json(app): Json<AppRegistration>,
) -> Response {
    handle(&shared).register_app(app);
    control_result(Ok(()))
}

pub(super) async fn control_user(
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

pub(super) async fn control_revoke(
    State(shared): State<Arc<Shared>>,
    Json(user): Json<UserRef>,
) -> Response {
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

pub(super) async fn control_change_password(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<PasswordChange>,
) -> Response {
    control_result(handle(&shared).update_user(&req.upn, |u| u.password = req.password.clone()))
}

pub(super) async fn control_expire_rt(
    State(shared): State<Arc<Shared>>,
    Json(user): Json<UserRef>,
) -> Response {
    control_result(handle(&shared).expire_refresh_tokens(&user.upn))
}

pub(super) async fn control_revoke_at(
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

pub(super) async fn control_settings(
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

pub(super) async fn control_advance_clock(
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

pub(super) async fn control_grant(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<MailboxGrant>,
) -> Response {
    handle(&shared).grant_mailbox_access(&req.delegate, &req.shared_mailbox);
    control_result(Ok(()))
}

#[derive(Deserialize)]
pub(super) struct TenantQuery {
    pub(super) tenant: String,
}

pub(super) async fn control_list_device_codes(
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

pub(super) async fn control_device_code(
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

pub(super) async fn control_failure(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<FailureInjection>,
) -> Response {
    handle(&shared).inject_failure(req);
    control_result(Ok(()))
}

pub(super) async fn control_requests(
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
    pub(super) http: reqwest::Client,
}

impl IdentityControl {
    /// Control the stand-in at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub(super) async fn post<T: Serialize>(&self, path: &str, body: &T) -> anyhow::Result<()> {
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
