//! `/introspect` and `/introspect/mailbox`: Dovecot's oauth2 passdbs ask here whether a token
//! opens a mailbox.

use super::*;

pub(super) fn live_access_token<'a>(
    state: &'a StandInState,
    token: &str,
) -> Option<&'a AccessRecord> {
    let record = state.access_tokens.get(token)?;
    let now = state
        .tenants
        .get(&record.tenant)
        .map_or_else(Utc::now, Tenant::now);
    (!record.revoked && record.issued.expires_at > now).then_some(record)
}

/// How an introspection answers a token that may not open the mailbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// RFC 7662: `200 {"active": false}`.
    Inactive,
    /// The password-grant form Dovecot's second oauth2 passdb reads: an answer is a token
    /// response (with `access_token`), a refusal `400 invalid_grant`, which Dovecot counts as a
    /// wrong password (`NO [AUTHENTICATIONFAILED]`), not a server fault.
    InvalidGrant,
}

pub(super) async fn introspect(
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

pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
}

pub(super) async fn introspect_post(
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
pub(super) async fn introspect_mailbox_post(
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

pub(super) async fn introspect_get(
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
