//! Test controls as methods on [`IdentityStandIn`] (register apps and users, revoke, advance the
//! clock, inject failures, read the request log).

use super::*;

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
