//! The identity platform's error taxonomy: parse `error`, `error_description`, `error_codes`
//! and decide what the caller must do — wait for a person (and say why, in words an operator
//! understands), or retry with backoff.
//!
//! Codes and meanings: Microsoft's "Microsoft Entra authentication and authorization error
//! codes" page (learn.microsoft.com/entra/identity-platform/reference-error-codes). Microsoft warns that codes and texts change, so the `error` field decides first and
//! the AADSTS code only refines the explanation and the ROPC-fallback decision.

use std::time::Duration;

use serde::Deserialize;

/// The JSON body of a failed token / devicecode request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct OAuthErrorBody {
    /// `invalid_grant`, `interaction_required`, `temporarily_unavailable`, ...
    #[serde(default)]
    pub error: String,
    /// `AADSTSnnnnn: text. Trace ID: ... Correlation ID: ... Timestamp: ...`
    #[serde(default)]
    pub error_description: Option<String>,
    /// The AADSTS numbers.
    #[serde(default)]
    pub error_codes: Vec<u64>,
    /// Trace id (logged for support cases).
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Correlation id (logged for support cases).
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// e.g. `basic_action`, `consent_required`.
    #[serde(default)]
    pub suberror: Option<String>,
}

impl OAuthErrorBody {
    /// First AADSTS code, from `error_codes` or the description prefix.
    pub fn code(&self) -> Option<u64> {
        self.codes().first().copied()
    }

    /// Every AADSTS code: `error_codes` (older responses list several), else the one at the
    /// start of the description.
    pub fn codes(&self) -> Vec<u64> {
        if !self.error_codes.is_empty() {
            return self.error_codes.clone();
        }
        let from_description = || {
            let d = self.error_description.as_deref()?;
            let rest = d.strip_prefix("AADSTS")?;
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        };
        from_description().into_iter().collect()
    }

    /// The description without the `AADSTSnnnnn: ` prefix and the Trace ID / Timestamp tail,
    /// on one line and at most 300 characters.
    pub fn message(&self) -> String {
        let d = self.error_description.as_deref().unwrap_or("");
        let d = match d.find(": ") {
            Some(i) if d.starts_with("AADSTS") => &d[i + 2..],
            _ => d,
        };
        let d = d.split("Trace ID:").next().unwrap_or(d);
        let one_line = d.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out: String = one_line.chars().take(300).collect();
        if one_line.chars().count() > 300 {
            out.push('…');
        }
        out
    }
}

/// A failure only a person can fix (re-consent, MFA sign-in, new password, admin action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedsPerson {
    /// `AADSTS50076`, or the OAuth `error` when there is no code.
    pub code: String,
    /// What happened and what to do, in operator words.
    pub reason: String,
    /// The stored grant itself is dead (expired / revoked / invalid refresh token): a stored
    /// password may re-bootstrap it with ROPC. False for MFA, consent, locked, etc., where
    /// ROPC would fail the same way.
    pub grant_rejected: bool,
    /// Entra's `suberror` (`basic_action`, `consent_required`, `bad_token` ...), when sent.
    pub suberror: Option<String>,
}

/// Codes whose cause is one resource's permissions or policy (consent, scope, a Conditional
/// Access policy or MFA requirement aimed at one cloud app): the other audience may still work.
const AUDIENCE_SPECIFIC: &[u64] = &[
    65001, 65004, 90094, 90095, 70011, 500011, 53003, 530032, 530035, 53000, 53001, 50076, 50079,
    50072, 50074, 50158,
];

impl NeedsPerson {
    /// Whether only the audience that was asked for is affected (consent, scope, a policy on
    /// one resource), rather than the whole grant or user (revoked or expired refresh token,
    /// disabled or locked user, wrong app registration).
    pub fn audience_specific(&self) -> bool {
        self.code
            .strip_prefix("AADSTS")
            .and_then(|digits| digits.parse::<u64>().ok())
            .is_some_and(|code| AUDIENCE_SPECIFIC.contains(&code))
            || self.code == "consent_required"
            || matches!(
                self.suberror.as_deref(),
                Some("consent_required" | "basic_action")
            )
    }
}

/// What Entra's `suberror` asks of a person, in operator words (MSAL's suberror classes).
pub fn explain_suberror(suberror: &str) -> Option<&'static str> {
    Some(match suberror {
        "basic_action" => {
            "the user must sign in interactively again (multi-factor authentication or another Conditional Access requirement); run `mailbridge login --browser`"
        }
        "additional_action" => {
            "the user must first complete a step outside the sign-in (register for MFA, accept terms of use, enrol the device), then run `mailbridge login --browser`"
        }
        "message_only" => {
            "no sign-in can fix this now; follow Microsoft's message (an administrator may have to act)"
        }
        "consent_required" => {
            "consent for the requested permissions is missing or was revoked; an administrator must grant it (App registration → API permissions → Grant admin consent), then run `mailbridge login --browser`"
        }
        "user_password_expired" => {
            "the user's password has expired; change it, then run `mailbridge login --browser`"
        }
        "bad_token" => {
            "the stored refresh token is invalid, expired or revoked; run `mailbridge login --browser`"
        }
        "token_expired" => "the stored refresh token has expired; run `mailbridge login --browser`",
        "protection_policy_required" => {
            "an Intune app protection policy is required for this app; an administrator must exempt or configure it"
        }
        _ => return None,
    })
}

/// `suberror` values saying the grant itself is dead (a stored password may re-bootstrap it).
const SUBERROR_GRANT_DEAD: &[&str] = &["bad_token", "token_expired"];
/// `suberror` values saying the grant is fine but a person must act (re-bootstrapping with a
/// stored password would fail the same way).
const SUBERROR_PERSON: &[&str] = &[
    "basic_action",
    "additional_action",
    "message_only",
    "consent_required",
    "user_password_expired",
    "protection_policy_required",
];

/// A failure worth retrying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransientFailure {
    /// What failed (status, error, code).
    pub detail: String,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

/// Every outcome of a failed token-endpoint call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEndpointError {
    /// A person must act.
    NeedsPerson(NeedsPerson),
    /// Retry later.
    Transient(TransientFailure),
    /// Device code: the user has not finished signing in yet.
    AuthorizationPending,
    /// Device code: poll less often (+5 s).
    SlowDown,
    /// Device code: the user declined.
    AuthorizationDeclined,
    /// Device code: the code expired before the user finished.
    ExpiredToken,
    /// Device code: the code is not known (typo, or already redeemed).
    BadVerificationCode,
}

/// Codes meaning "the refresh token (grant) itself is dead": ROPC re-bootstrap may help.
const GRANT_DEAD: &[u64] = &[
    70008, 700082, 700084, 50173, 9002313, 70000, 50089, 70043, 70012,
];

/// Codes Microsoft documents as transient / throttling.
const TRANSIENT_CODES: &[u64] = &[
    50033, 50087, 90024, 90006, 90033, 90090, 90012, 80005, 501621, 90055, 50196,
];

/// Operator-facing explanation of an AADSTS code.
pub fn explain(code: u64) -> Option<&'static str> {
    Some(match code {
        50076 => {
            "multi-factor authentication is required for this account; sign in with `mailbridge login --browser` (or the device code flow)"
        }
        50079 | 50072 => {
            "the user must register for multi-factor authentication, then sign in with `mailbridge login`"
        }
        50074 => {
            "the multi-factor challenge was not completed; sign in again with `mailbridge login`"
        }
        50126 => {
            "wrong user name or password (ROPC bootstrap); fix the password or use `mailbridge login`"
        }
        50053 => {
            "the account is locked (too many failed sign-ins or a blocked IP); unlock it, then `mailbridge login`"
        }
        50055 | 50144 => "the user's password has expired; change it, then `mailbridge login`",
        50057 => "the user account is disabled in Entra ID",
        50034 => "the user account does not exist in this tenant",
        50173 => {
            "the refresh token was revoked (password change/reset or sessions revoked); run `mailbridge login`"
        }
        70008 => "the refresh token expired or was revoked; run `mailbridge login`",
        700082 => "the refresh token expired after 90 days without use; run `mailbridge login`",
        700084 => "the refresh token reached its maximum lifetime; run `mailbridge login`",
        70043 | 50089 => {
            "a Conditional Access sign-in frequency policy requires a new sign-in; run `mailbridge login`"
        }
        9002313 | 70000 | 70012 => "the stored refresh token is invalid; run `mailbridge login`",
        65001 => {
            "the application has not been granted consent for the requested permissions; an admin must grant consent"
        }
        65004 => {
            "the user declined consent to the application; sign in again and accept, or have an administrator grant consent"
        }
        50011 => {
            "the redirect URI is not registered: add http://localhost to the app registration (Authentication → Mobile and desktop applications)"
        }
        54005 => {
            "the authorization code was already redeemed; sign in again (`mailbridge login --browser`)"
        }
        501481 => {
            "the PKCE code verifier does not match the sign-in that issued the code; sign in again"
        }
        90094 | 90095 => "admin consent is required for the requested permissions",
        53003 | 530032 | 530035 => "sign-in blocked by Conditional Access / security policy",
        53000 | 53001 => "Conditional Access requires a compliant or domain-joined device",
        700016 | 700011 => "the application (client_id) is not registered in this tenant",
        7000218 => {
            "public client flows are disabled: set \"Allow public client flows\" = Yes in the app registration"
        }
        700025 => {
            "the app registration is a public client, so it cannot use app-only credentials: use an app registration with a certificate or client secret (Certificates & secrets)"
        }
        7000215 => {
            "the client secret is wrong: store the secret's Value (not its Secret ID) with `mailbridge login --app`"
        }
        7000222 => {
            "the client secret has expired: add a new one (App registration → Certificates & secrets) and store it with `mailbridge login --app`"
        }
        700027 => {
            "the client assertion was refused: the certificate is not registered on the app (upload it under Certificates & secrets), has expired, or the key does not match it; then `mailbridge login --app`"
        }
        700024 => {
            "the client assertion is outside its valid time range: check this machine's clock (NTP)"
        }
        700021 | 700023 => {
            "the client assertion names the wrong client or token endpoint (check client_id, tenant_id and authority_host)"
        }
        1002012 => "client credential requests need a /.default scope (mailbridge bug)",
        50027 => "the client assertion is malformed (mailbridge bug, or a damaged certificate/key)",
        700022 => "the requested scope spans more than one resource (mailbridge bug)",
        70011 => {
            "the requested scope is not valid (check graph_host / imap_resource for your cloud)"
        }
        90002 => "the tenant does not exist (check tenant_id and authority_host)",
        50194 => "the application is single-tenant and cannot use the /common endpoint",
        9001023 | 90124 | 90130 => {
            "this grant is not supported on the /common or /consumers endpoint"
        }
        _ => return None,
    })
}

/// Classify an HTTP error response from the token or devicecode endpoint.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> TokenEndpointError {
    let parsed: Option<OAuthErrorBody> = serde_json::from_str(body).ok();
    let transient = |detail: String| {
        TokenEndpointError::Transient(TransientFailure {
            detail,
            retry_after,
        })
    };
    let Some(err) = parsed.filter(|b| !b.error.is_empty()) else {
        return if status == 429 || status == 408 || status >= 500 {
            transient(format!("HTTP {status} from the identity platform"))
        } else {
            TokenEndpointError::NeedsPerson(NeedsPerson {
                code: format!("http_{status}"),
                reason: format!(
                    "the token endpoint answered HTTP {status} without an OAuth error (check authority_host)"
                ),
                grant_rejected: false,
                suberror: None,
            })
        };
    };
    let codes = err.codes();
    // The code that names the fix: the first one of the list this module can explain.
    let code = codes
        .iter()
        .copied()
        .find(|c| explain(*c).is_some())
        .or_else(|| codes.first().copied());
    let suberror = err.suberror.clone().filter(|s| !s.is_empty());
    let code_text = code.map(|c| format!("AADSTS{c}"));
    let with_code = |s: &str| match &code_text {
        Some(c) => format!("{s} [{c}]"),
        None => format!("{s} [{}]", err.error),
    };
    match err.error.as_str() {
        "authorization_pending" => return TokenEndpointError::AuthorizationPending,
        "slow_down" => return TokenEndpointError::SlowDown,
        "authorization_declined" => return TokenEndpointError::AuthorizationDeclined,
        "expired_token" => return TokenEndpointError::ExpiredToken,
        "bad_verification_code" => return TokenEndpointError::BadVerificationCode,
        "temporarily_unavailable" | "server_error" => {
            return transient(with_code(&format!("HTTP {status} {}", err.error)));
        }
        _ => {}
    }
    if status == 429 || status >= 500 || code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
        return transient(with_code(&format!("HTTP {status} {}", err.error)));
    }
    // The fix: `message_only` says no sign-in helps, whatever the code; otherwise the first
    // explained code, then the suberror, then the OAuth error.
    let by_suberror = suberror.as_deref().and_then(explain_suberror);
    let explanation = (suberror.as_deref() == Some("message_only"))
        .then_some(by_suberror)
        .flatten()
        .or_else(|| code.and_then(explain))
        .or(by_suberror)
        .map(str::to_owned)
        .unwrap_or_else(|| match err.error.as_str() {
            "interaction_required" => {
                "the identity platform requires an interactive sign-in; run `mailbridge login`"
                    .to_owned()
            }
            "consent_required" => "consent is required for the requested permissions".to_owned(),
            "invalid_client" | "unauthorized_client" => {
                "the app registration rejects this client (check client_id and public client flows)"
                    .to_owned()
            }
            "invalid_grant" => "the stored grant was rejected; run `mailbridge login`".to_owned(),
            other => format!("the identity platform refused the request ({other})"),
        });
    let message = err.message();
    let reason = if message.is_empty() {
        explanation
    } else {
        format!("{explanation}. Microsoft said: {message}")
    };
    let grant_rejected = match suberror.as_deref() {
        Some(s) if SUBERROR_PERSON.contains(&s) => false,
        Some(s) if SUBERROR_GRANT_DEAD.contains(&s) => true,
        _ if codes.is_empty() => err.error == "invalid_grant",
        _ => codes.iter().any(|c| GRANT_DEAD.contains(c)),
    };
    TokenEndpointError::NeedsPerson(NeedsPerson {
        code: code_text.unwrap_or_else(|| err.error.clone()),
        reason,
        grant_rejected,
        suberror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &str, code: u64) -> String {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: Something happened.\r\nTrace ID: abc\r\nCorrelation ID: def\r\nTimestamp: 2026-11-28 10:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-11-28 10:00:00Z",
            "trace_id": "abc",
            "correlation_id": "def",
        })
        .to_string()
    }

    fn person(status: u16, error: &str, code: u64) -> NeedsPerson {
        match classify(status, None, &body(error, code)) {
            TokenEndpointError::NeedsPerson(p) => p,
            other => panic!("{error}/{code}: expected NeedsPerson, got {other:?}"),
        }
    }

    #[test]
    fn needs_person_codes_carry_code_and_reason() {
        for (error, code, dead) in [
            ("invalid_grant", 50076, false),
            ("invalid_grant", 50079, false),
            ("invalid_grant", 50126, false),
            ("invalid_grant", 50055, false),
            ("invalid_grant", 50053, false),
            ("invalid_grant", 50057, false),
            ("invalid_grant", 70008, true),
            ("invalid_grant", 700082, true),
            ("invalid_grant", 50173, true),
            ("invalid_grant", 700084, true),
            ("invalid_grant", 65001, false),
            ("invalid_grant", 53003, false),
            ("interaction_required", 50158, false),
            ("invalid_client", 7000218, false),
            ("unauthorized_client", 700016, false),
            ("invalid_request", 90002, false),
            ("invalid_scope", 70011, false),
        ] {
            let p = person(400, error, code);
            assert_eq!(p.code, format!("AADSTS{code}"));
            assert_eq!(p.grant_rejected, dead, "{code}");
            assert!(p.reason.contains("Something happened."), "{}", p.reason);
            assert!(!p.reason.contains("Trace ID"), "{}", p.reason);
        }
        assert!(
            person(400, "invalid_grant", 50076)
                .reason
                .contains("multi-factor")
        );
        assert!(
            person(401, "invalid_client", 7000218)
                .reason
                .contains("public client flows")
        );
    }

    #[test]
    fn the_fix_comes_from_the_suberror_and_every_code() {
        let classify_json = |v: serde_json::Value| match classify(400, None, &v.to_string()) {
            TokenEndpointError::NeedsPerson(p) => p,
            other => panic!("{other:?}"),
        };
        // MFA on a silent refresh: interaction_required + basic_action; the grant is fine.
        let mfa = classify_json(serde_json::json!({
            "error": "interaction_required",
            "error_description": "AADSTS50076: Due to a configuration change ... Trace ID: x",
            "error_codes": [50076],
            "suberror": "basic_action",
            "claims": "{\"access_token\":{\"capolids\":{\"essential\":true,\"values\":[\"p\"]}}}",
        }));
        assert_eq!(mfa.code, "AADSTS50076");
        assert!(mfa.reason.contains("multi-factor"), "{}", mfa.reason);
        assert!(!mfa.grant_rejected);
        assert!(mfa.audience_specific());
        assert_eq!(mfa.suberror.as_deref(), Some("basic_action"));
        // An unknown first code: the second, known one names the fix.
        let listed = classify_json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS9999999: new text",
            "error_codes": [9999999, 50173],
        }));
        assert_eq!(listed.code, "AADSTS50173");
        assert!(listed.reason.contains("revoked"), "{}", listed.reason);
        assert!(listed.grant_rejected);
        // Only the suberror is known: it names the fix and decides the grant is dead.
        let bad_token = classify_json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS9999998: new text",
            "error_codes": [9999998],
            "suberror": "bad_token",
        }));
        assert!(
            bad_token.reason.contains("refresh token is invalid"),
            "{}",
            bad_token.reason
        );
        assert!(bad_token.grant_rejected);
        // consent_required: audience-specific, not a dead grant, even with an unknown code.
        let consent = classify_json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS9999997: new text",
            "error_codes": [9999997],
            "suberror": "consent_required",
        }));
        assert!(
            consent.reason.contains("Grant admin consent"),
            "{}",
            consent.reason
        );
        assert!(consent.audience_specific() && !consent.grant_rejected);
        // message_only: no sign-in helps, whatever the code says.
        let message_only = classify_json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS50173: text",
            "error_codes": [50173],
            "suberror": "message_only",
        }));
        assert!(
            message_only
                .reason
                .starts_with("no sign-in can fix this now"),
            "{}",
            message_only.reason
        );
        assert!(!message_only.grant_rejected);
    }

    #[test]
    fn transient_errors_are_retryable() {
        for (status, error, code) in [
            (503, "temporarily_unavailable", 50033),
            (500, "server_error", 90033),
            (429, "invalid_request", 90055),
            (400, "invalid_request", 90024),
        ] {
            assert!(
                matches!(
                    classify(status, None, &body(error, code)),
                    TokenEndpointError::Transient(_)
                ),
                "{status} {error} {code}"
            );
        }
        let t = classify(
            502,
            Some(Duration::from_secs(3)),
            "<html>bad gateway</html>",
        );
        assert_eq!(
            t,
            TokenEndpointError::Transient(TransientFailure {
                detail: "HTTP 502 from the identity platform".into(),
                retry_after: Some(Duration::from_secs(3)),
            })
        );
    }

    #[test]
    fn device_code_states_are_recognised() {
        assert_eq!(
            classify(400, None, &body("authorization_pending", 70016)),
            TokenEndpointError::AuthorizationPending
        );
        assert_eq!(
            classify(400, None, &body("slow_down", 70016)),
            TokenEndpointError::SlowDown
        );
        assert_eq!(
            classify(400, None, &body("authorization_declined", 70000)),
            TokenEndpointError::AuthorizationDeclined
        );
        assert_eq!(
            classify(400, None, &body("expired_token", 70019)),
            TokenEndpointError::ExpiredToken
        );
    }

    #[test]
    fn code_falls_back_to_the_description_prefix() {
        let b = serde_json::json!({"error": "invalid_grant", "error_description": "AADSTS50126: Error validating credentials."}).to_string();
        let TokenEndpointError::NeedsPerson(p) = classify(400, None, &b) else {
            panic!()
        };
        assert_eq!(p.code, "AADSTS50126");
    }
}
