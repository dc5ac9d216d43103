//! `/{tenant}/oauth2/v2.0/token`: the endpoint, client authentication, request records, and the
//! token responses it issues.

use super::*;

#[derive(Default)]
pub(super) struct Outcome {
    pub(super) user: Option<String>,
    pub(super) grant_type: Option<String>,
}

pub(super) fn record(
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
pub(super) fn respond(
    state: &mut StandInState,
    endpoint: &str,
    tenant: Option<&str>,
    outcome: &Outcome,
    result: Result<Response, AadError>,
) -> Response {
    record(state, endpoint, tenant, outcome, &result);
    result.unwrap_or_else(AadError::into_response)
}

pub(super) async fn token_endpoint(
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

pub(super) fn request_user(state: &StandInState, form: &HashMap<String, String>) -> Option<String> {
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

pub(super) fn check_client<'a>(
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

/// The parameters of a token or devicecode request. Only an
/// `application/x-www-form-urlencoded` body carries any: a JSON (or untyped) body reads as no
/// parameters at all, so the request fails with AADSTS900144 naming the first one missing.
pub(super) fn form_body(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    if is_form(headers) {
        parse_form(body)
    } else {
        HashMap::new()
    }
}

/// The body is `application/x-www-form-urlencoded` (what every OAuth endpoint takes).
pub(super) fn is_form(headers: &HeaderMap) -> bool {
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
pub(super) fn issue(
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
pub(super) fn id_token(
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
