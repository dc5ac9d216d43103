//! Browser sign-in for a public client: the OAuth 2.0 authorization code grant with PKCE
//! (RFC 7636, `S256`) and a loopback redirect (RFC 8252 §7.3), as Microsoft's identity platform
//! documents it for desktop apps using the system browser.
//!
//! This module builds the `/authorize` URL (with a fresh `state` and code verifier), checks what
//! came back on the redirect, and says what a person must do when it is an error. Listening for
//! the redirect is the caller's part (the operator CLI binds 127.0.0.1); redeeming the code is
//! [`super::IdentityClient::redeem_authorization_code`].

use std::collections::HashMap;

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Digest as _;

use super::Audience;
use super::oauth_error::explain;
use super::secret::AccountSecret;

/// The redirect URI to register on the app registration ("Mobile and desktop applications"
/// platform). Microsoft ignores the port of a `http://localhost` redirect URI when matching, so
/// one registration covers every port the CLI listens on.
pub const LOOPBACK_REDIRECT_URI: &str = "http://localhost";

/// One sign-in attempt: the URL to open, and what the redirect must carry back. `Debug` never
/// shows the code verifier.
pub struct AuthorizationRequest {
    /// The full `/authorize` URL to open in a browser.
    pub url: String,
    /// `http://localhost:<port>`: where the browser is sent back to.
    pub redirect_uri: String,
    /// The `state` value the redirect must echo (CSRF protection, RFC 6749 §10.12).
    pub state: String,
    /// The PKCE code verifier: proves at the token endpoint that this client asked for the code.
    pub code_verifier: SecretString,
    /// The audience whose permissions the sign-in asks consent for.
    pub audience: Audience,
}

impl std::fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("url", &self.url)
            .field("redirect_uri", &self.redirect_uri)
            .field("state", &self.state)
            .field("code_verifier", &"[redacted]")
            .field("audience", &self.audience)
            .finish()
    }
}

/// 32 random octets, base64url without padding: 43 characters, the length RFC 7636 §4.1
/// recommends for a code verifier (256 bits of entropy); also used for `state`.
fn random_value() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `BASE64URL(SHA256(ASCII(code_verifier)))` (RFC 7636 §4.2, method `S256`).
pub fn code_challenge_s256(code_verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(code_verifier.as_bytes()))
}

impl AuthorizationRequest {
    /// A new sign-in for `secret`'s user asking consent for `audience`'s permissions (plus
    /// `offline_access openid profile`), returning to `redirect_uri`.
    pub fn new(secret: &AccountSecret, audience: Audience, redirect_uri: &str) -> Self {
        let state = random_value();
        let code_verifier = random_value();
        let scope = format!("{} openid profile", secret.scope_for(audience));
        let mut url = url::Url::parse(&format!(
            "{}/{}/oauth2/v2.0/authorize",
            secret.authority_host, secret.tenant_id
        ))
        .expect("authority_host is validated by the secret parser");
        url.query_pairs_mut()
            .append_pair("client_id", &secret.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("response_mode", "query")
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("code_challenge", &code_challenge_s256(&code_verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("login_hint", &secret.username)
            // The account picker: an admin signed in as themselves must be able to choose the
            // mailbox user instead of being signed in silently as the wrong one.
            .append_pair("prompt", "select_account");
        Self {
            url: url.into(),
            redirect_uri: redirect_uri.to_owned(),
            state,
            code_verifier: SecretString::from(code_verifier),
            audience,
        }
    }

    /// Check the query of the redirect: the `state` must be this request's, then either a
    /// `code` or an OAuth error. Returns the code.
    pub fn code_from_redirect(
        &self,
        query: &HashMap<String, String>,
    ) -> Result<SecretString, RedirectError> {
        let state = query.get("state").map(String::as_str).unwrap_or("");
        // Constant-time enough for a one-shot local listener; the point is that it matches.
        if state != self.state {
            return Err(RedirectError::StateMismatch);
        }
        if let Some(error) = query.get("error").filter(|e| !e.is_empty()) {
            return Err(RedirectError::Refused(AuthorizeError::new(
                error,
                query.get("error_subcode").map(String::as_str),
                query.get("error_description").map(String::as_str),
            )));
        }
        match query.get("code").filter(|c| !c.is_empty()) {
            Some(code) => Ok(SecretString::from(code.clone())),
            None => Err(RedirectError::NoCode),
        }
    }

    /// The code verifier, for the token request.
    pub fn code_verifier(&self) -> &str {
        self.code_verifier.expose_secret()
    }
}

/// An error the identity platform sent back to the redirect URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeError {
    /// `access_denied`, `consent_required`, `interaction_required`, `invalid_request` ...
    pub error: String,
    /// Microsoft's `error_subcode` (`cancel` when the user cancelled).
    pub subcode: Option<String>,
    /// The AADSTS code at the start of `error_description`, when there is one.
    pub code: Option<u64>,
    /// `error_description` without its trace tail, on one line.
    pub description: String,
}

impl AuthorizeError {
    fn new(error: &str, subcode: Option<&str>, description: Option<&str>) -> Self {
        let body = super::oauth_error::OAuthErrorBody {
            error: error.to_owned(),
            error_description: description.map(str::to_owned),
            ..Default::default()
        };
        Self {
            error: error.to_owned(),
            subcode: subcode.filter(|s| !s.is_empty()).map(str::to_owned),
            code: body.code(),
            description: body.message(),
        }
    }

    /// What the person at the terminal must do, in one line.
    pub fn fix(&self, client_id: &str) -> String {
        let consent_fix = format!(
            "sign in again and accept the permissions, or have an administrator grant consent for the tenant (Entra admin center → Enterprise applications → the app {client_id} → Permissions → Grant admin consent)"
        );
        match (self.error.as_str(), self.code) {
            (_, Some(65004)) | ("access_denied", _) | ("consent_required", _) => {
                format!("the consent was declined or is missing: {consent_fix}")
            }
            (_, Some(90094 | 90095 | 65001)) => format!(
                "the permissions need an administrator's consent: {consent_fix}"
            ),
            (_, Some(50011)) => redirect_uri_fix(client_id),
            (_, Some(code)) => explain(code)
                .map(str::to_owned)
                .unwrap_or_else(|| "see Microsoft's description above".to_owned()),
            ("interaction_required", None) => {
                "another sign-in step is needed (MFA, terms of use): sign in again and complete every step".to_owned()
            }
            ("server_error" | "temporarily_unavailable", None) => {
                "the identity platform had a temporary problem; sign in again in a minute".to_owned()
            }
            _ => "see Microsoft's description above".to_owned(),
        }
    }
}

/// The fix for AADSTS50011 (the redirect URI is not registered on the app registration).
pub fn redirect_uri_fix(client_id: &str) -> String {
    format!(
        "add the redirect URI {LOOPBACK_REDIRECT_URI} to the app registration {client_id} (Entra admin center → App registrations → Authentication → Add a platform → Mobile and desktop applications), then sign in again"
    )
}

impl std::fmt::Display for AuthorizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(code) = self.code {
            write!(f, " [AADSTS{code}]")?;
        }
        if !self.description.is_empty() {
            write!(f, ": {}", self.description)?;
        }
        Ok(())
    }
}

/// Why a redirect did not carry a usable code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// The `state` is not the one this sign-in sent: the redirect belongs to another sign-in
    /// (or was forged). Nothing is redeemed.
    #[error(
        "the redirect's state does not match this sign-in (a different or forged sign-in response); nothing was stored"
    )]
    StateMismatch,
    /// The identity platform sent an error instead of a code.
    #[error("the sign-in was refused: {0}")]
    Refused(AuthorizeError),
    /// Neither a code nor an error.
    #[error("the redirect carried neither a code nor an error")]
    NoCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s256_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            code_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn request() -> AuthorizationRequest {
        let secret = AccountSecret::new("contoso.onmicrosoft.com", "app-1", "helpdesk@contoso.com");
        AuthorizationRequest::new(&secret, Audience::Graph, "http://localhost:4711")
    }

    #[test]
    fn the_url_carries_pkce_state_and_the_loopback_redirect() {
        let r = request();
        let url = url::Url::parse(&r.url).unwrap();
        assert_eq!(url.path(), "/contoso.onmicrosoft.com/oauth2/v2.0/authorize");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "http://localhost:4711");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"], code_challenge_s256(r.code_verifier()));
        assert_eq!(q["state"], r.state);
        assert_eq!(q["login_hint"], "helpdesk@contoso.com");
        assert!(q["scope"].contains("https://graph.microsoft.com/Mail.Send"));
        assert!(q["scope"].contains("offline_access"));
        assert!(!r.url.contains(r.code_verifier()));
        assert_eq!(r.code_verifier().len(), 43);
        assert_ne!(r.state, request().state);
        assert!(!format!("{r:?}").contains(r.code_verifier()));
    }

    #[test]
    fn the_redirect_must_carry_this_state() {
        let r = request();
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let code = r
            .code_from_redirect(&q(&[("code", "c-1"), ("state", &r.state)]))
            .unwrap();
        assert_eq!(code.expose_secret(), "c-1");
        assert_eq!(
            r.code_from_redirect(&q(&[("code", "c-1"), ("state", "other")]))
                .unwrap_err(),
            RedirectError::StateMismatch
        );
        assert_eq!(
            r.code_from_redirect(&q(&[("code", "c-1")])).unwrap_err(),
            RedirectError::StateMismatch
        );
        let declined = r
            .code_from_redirect(&q(&[
                ("error", "access_denied"),
                ("error_subcode", "cancel"),
                (
                    "error_description",
                    "AADSTS65004: User declined to consent to access the app. Trace ID: x",
                ),
                ("state", &r.state),
            ]))
            .unwrap_err();
        let RedirectError::Refused(e) = declined else {
            panic!("{declined:?}")
        };
        assert_eq!(e.code, Some(65004));
        assert_eq!(e.subcode.as_deref(), Some("cancel"));
        assert!(!e.description.contains("Trace ID"));
        assert!(
            e.fix("app-1").contains("Grant admin consent"),
            "{}",
            e.fix("app-1")
        );
        assert!(
            AuthorizeError::new(
                "invalid_request",
                None,
                Some("AADSTS50011: The redirect URI")
            )
            .fix("app-1")
            .contains("http://localhost")
        );
    }
}
