//! The device code flow: `/{tenant}/oauth2/v2.0/devicecode` and the codes a test approves.

use super::*;

pub(super) fn device_code_infos(state: &StandInState, tenant: &str) -> Vec<DeviceCodeInfo> {
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

pub(super) fn device_by_user_code<'a>(
    state: &'a mut StandInState,
    user_code: &str,
) -> Result<&'a mut DeviceRecord, ControlError> {
    state
        .device_codes
        .values_mut()
        .find(|d| d.user_code.eq_ignore_ascii_case(user_code))
        .ok_or_else(|| ControlError(format!("unknown user code {user_code}")))
}

pub(super) async fn devicecode_endpoint(
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
