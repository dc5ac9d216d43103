//! The grants the token endpoint redeems: password, refresh token, device code,
//! client credentials and authorization code.

use super::*;

pub(super) fn handle_token(
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
            let invalid = AadError::malformed_grant;
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
pub(super) fn client_credentials(
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
pub(super) fn redeem_code(
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
    let invalid = AadError::malformed_grant;
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
