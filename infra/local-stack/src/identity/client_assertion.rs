//! Certificate credentials: checking an app-only client's `client_assertion` JWT.

use super::*;

/// The claims Entra reads from a client assertion.
#[derive(Deserialize)]
pub(super) struct AssertionClaims {
    #[serde(default)]
    pub(super) aud: Option<String>,
    #[serde(default)]
    pub(super) iss: Option<String>,
    #[serde(default)]
    pub(super) sub: Option<String>,
    #[serde(default)]
    pub(super) jti: Option<String>,
    #[serde(default)]
    pub(super) exp: Option<i64>,
    #[serde(default)]
    pub(super) nbf: Option<i64>,
}

/// Clock skew Entra tolerates on a client assertion's `nbf` / `exp` (5 minutes).
pub(super) const ASSERTION_SKEW_SECS: i64 = 300;

/// Check a `client_assertion` (Microsoft's "certificate credentials" reference): type
/// `jwt-bearer`; `alg` RS256 or PS256; the certificate named by `x5t#S256` (or the SHA-1
/// `x5t`) registered on the app and not expired (AADSTS700027); the signature by its key
/// (AADSTS700027); `iss` = `sub` = the client id (AADSTS700021); `aud` = this tenant's token
/// endpoint (AADSTS700023); `nbf` <= now < `exp`, give or take 5 minutes (AADSTS700024); a
/// `jti` (AADSTS50027 without one). Replays are refused in [`handle_token`].
pub(super) fn verify_client_assertion(
    base_url: &str,
    tenant: &str,
    now: DateTime<Utc>,
    app: &AppRegistration,
    form: &HashMap<String, String>,
) -> Result<(), AadError> {
    let malformed = |why: &str| {
        AadError::new(
            401,
            "invalid_client",
            50027,
            format!("JWT token is invalid or malformed: {why}"),
        )
    };
    match form.get("client_assertion_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") => {}
        None => return Err(AadError::missing("client_assertion_type")),
        Some(other) => {
            return Err(malformed(&format!(
                "unsupported client_assertion_type '{other}'"
            )));
        }
    }
    let assertion = &form["client_assertion"];
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed("bad header"))?;
    if !matches!(
        header.alg,
        jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::PS256
    ) {
        return Err(malformed(&format!(
            "algorithm {:?} is not supported for client assertions",
            header.alg
        )));
    }
    let presented = header
        .x5t_s256
        .clone()
        .or_else(|| header.x5t.clone())
        .unwrap_or_default();
    let key_failure = |reason: &str| {
        AadError::new(
            401,
            "invalid_client",
            700027,
            format!(
                "Client assertion failed signature validation. [Reason - {reason}, Thumbprint of key used by client: '{presented}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                app.client_id
            ),
        )
    };
    use base64::Engine as _;
    use sha2::Digest as _;
    let certificate = app.certificates.iter().find_map(|pem_text| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        let matches = match (&header.x5t_s256, &header.x5t) {
            (Some(t), _) => *t == b64(&sha2::Sha256::digest(&pem.contents)),
            (None, Some(t)) => *t == b64(&sha1::Sha1::digest(&pem.contents)),
            (None, None) => false,
        };
        matches.then_some(pem)
    });
    let Some(pem) = certificate else {
        return Err(key_failure("The key was not found."));
    };
    let cert = pem
        .parse_x509()
        .map_err(|_| key_failure("The key was not found."))?;
    if cert.validity().not_after.timestamp() <= now.timestamp() {
        return Err(key_failure("The key used is expired."));
    }
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() else {
        return Err(key_failure("The key was not found."));
    };
    // DER integers carry a leading zero byte when the top bit is set; JWK components do not.
    let unsigned = |b: &[u8]| -> Vec<u8> {
        let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
        b[start..].to_vec()
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_raw_components(
        &unsigned(rsa.modulus),
        &unsigned(rsa.exponent),
    );
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    // Times are checked below against the tenant's clock, with Entra's error codes.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
        .map_err(|_| {
            key_failure("Key was found, but use of the key to verify the signature failed.")
        })?
        .claims;
    if claims.iss.as_deref() != Some(app.client_id.as_str())
        || claims.sub.as_deref() != Some(app.client_id.as_str())
    {
        return Err(AadError::new(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
        ));
    }
    let audiences = [
        format!("{base_url}/{tenant}/oauth2/v2.0/token"),
        format!("{base_url}/{tenant}/oauth2/token"),
    ];
    if !claims.aud.as_ref().is_some_and(|a| audiences.contains(a)) {
        return Err(AadError::new(
            401,
            "invalid_client",
            700023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials . The audience should be '{}'.",
                audiences[0]
            ),
        ));
    }
    let Some(exp) = claims.exp else {
        return Err(malformed("the assertion has no 'exp' claim"));
    };
    let nbf = claims.nbf.unwrap_or(i64::MIN);
    let at = now.timestamp();
    if at + ASSERTION_SKEW_SECS < nbf || at - ASSERTION_SKEW_SECS >= exp {
        return Err(AadError::new(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
                now.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                DateTime::<Utc>::from_timestamp(nbf.max(0), 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                DateTime::<Utc>::from_timestamp(exp.max(0), 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            ),
        ));
    }
    if claims.jti.as_deref().is_none_or(str::is_empty) {
        return Err(malformed("the assertion has no 'jti' claim"));
    }
    Ok(())
}

/// Remember a verified assertion's `jti`; `Err` when it was used before (a replay).
pub(super) fn spend_assertion(
    state: &mut StandInState,
    form: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<(), AadError> {
    let Some(assertion) = form.get("client_assertion") else {
        return Ok(());
    };
    let Ok(data) = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion) else {
        return Ok(());
    };
    let (Some(jti), Some(exp)) = (data.claims.jti, data.claims.exp) else {
        return Ok(());
    };
    state
        .used_assertions
        .retain(|_, e| *e + ASSERTION_SKEW_SECS > now.timestamp());
    if state.used_assertions.insert(jti, exp).is_some() {
        return Err(AadError::new(
            401,
            "invalid_client",
            50027,
            "JWT token is invalid or malformed: the client assertion's 'jti' was already used (an assertion is good for one request).",
        ));
    }
    Ok(())
}
