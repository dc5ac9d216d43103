//! The error catalogue: Microsoft-shaped OAuth errors (AADSTS codes), what injected failures
//! answer, and the account states that block a sign-in (locked, disabled, MFA).

use super::*;

/// A Microsoft-shaped OAuth error.
pub(super) struct AadError {
    pub(super) status: StatusCode,
    pub(super) error: &'static str,
    pub(super) code: u64,
    pub(super) message: String,
    pub(super) retry_after: Option<u64>,
    /// Entra's `suberror` (what the client should do): `basic_action`, `consent_required`,
    /// `bad_token`, `user_password_expired` ...
    pub(super) suberror: Option<&'static str>,
    /// A claims challenge (JSON text) for the next interactive sign-in, e.g. which Conditional
    /// Access policy asked for MFA.
    pub(super) claims: Option<String>,
}

impl AadError {
    pub(super) fn new(
        status: u16,
        error: &'static str,
        code: u64,
        message: impl Into<String>,
    ) -> Self {
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
    pub(super) fn with_suberror(mut self, suberror: &'static str) -> Self {
        self.suberror = Some(suberror);
        self
    }
    pub(super) fn bad(error: &'static str, code: u64, message: impl Into<String>) -> Self {
        Self::new(400, error, code, message)
    }
    /// AADSTS9002313: an unknown, foreign or malformed refresh token or authorization code
    /// (Entra answers the same for each, so a client learns nothing about which it was).
    pub(super) fn malformed_grant() -> Self {
        Self::bad(
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        )
    }
    pub(super) fn missing(param: &str) -> Self {
        Self::bad(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }
    pub(super) fn into_response(self) -> Response {
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

/// Find and consume the first injected failure matching `tenant` / `user`.
pub(super) fn take_failure(
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

pub(super) fn failure_error(kind: &FailureKind) -> Option<AadError> {
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

pub(super) fn user_blocks(user: &UserAccount, check_password_flags: bool) -> Result<(), AadError> {
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
pub(super) fn mfa_error(resource: &str, silent: bool) -> AadError {
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
