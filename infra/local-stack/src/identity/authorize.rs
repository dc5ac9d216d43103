//! `/{tenant}/oauth2/v2.0/authorize`: the browser sign-in and consent form (authorization code
//! flow with PKCE).

use super::*;

/// Whether `asked` matches a registered redirect URI: exactly, or as `http://localhost` /
/// `http://127.0.0.1` with any port and the same path.
pub(super) fn redirect_uri_registered(app: &AppRegistration, asked: &str) -> bool {
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

pub(super) fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// An error page the browser shows (no redirect: the redirect URI is not trusted, or the
/// request cannot be tied to an app).
pub(super) fn error_page(code: u64, message: &str) -> Response {
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
pub(super) fn redirect_to(
    redirect_uri: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
) -> Response {
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

pub(super) fn redirect_error(flow: &AuthorizeFlow, err: &AadError) -> Response {
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
pub(super) async fn authorize_page(
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
pub(super) async fn authorize_submit(
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
