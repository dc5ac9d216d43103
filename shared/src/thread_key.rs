//! The HMAC key that signs thread markers (`[ref:<ticket>.<hmac16>]`): one loader and one rule for
//! both functions, so a key that send-notifications refuses is never accepted by
//! poll-mailboxes (and the other way round).
//!
//! The key is the `AWSCURRENT` string value of the secret named by `MAILBRIDGE_THREAD_KEY_SECRET`,
//! its bytes as they are, at least [`MIN_THREAD_KEY_BYTES`] long. The stack generates a
//! 64-character one; for a key of your own use `openssl rand -hex 32`.

use secrecy::{ExposeSecret as _, SecretSlice};

/// Shortest accepted key, in bytes.
pub const MIN_THREAD_KEY_BYTES: usize = 16;

/// The HMAC key for thread references.
#[derive(Clone)]
pub struct ThreadKey(SecretSlice<u8>);

impl std::fmt::Debug for ThreadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadKey([redacted])")
    }
}

impl ThreadKey {
    /// Wrap key bytes (tests; production keys come through [`ThreadKey::from_secret_value`]).
    pub fn new(bytes: Vec<u8>) -> Self {
        ThreadKey(SecretSlice::from(bytes))
    }

    /// The key from a secret's string value: the string's bytes as they are, at least
    /// [`MIN_THREAD_KEY_BYTES`] long.
    pub fn from_secret_value(value: &str) -> Result<Self, String> {
        if value.len() >= MIN_THREAD_KEY_BYTES {
            Ok(ThreadKey::new(value.as_bytes().to_vec()))
        } else {
            Err(format!(
                "must be at least {MIN_THREAD_KEY_BYTES} bytes (got {}); e.g. `openssl rand -hex 32`",
                value.len()
            ))
        }
    }

    /// The key bytes (only for the HMAC).
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// The thread key could not be loaded; the function cannot sign or verify markers.
#[derive(Debug, thiserror::Error)]
#[error("MAILBRIDGE_THREAD_KEY_SECRET {secret}: {problem}")]
pub struct ThreadKeyError {
    /// The secret's name.
    pub secret: String,
    /// What is wrong (never the value).
    pub problem: String,
}

impl crate::error::Classify for ThreadKeyError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Transient
    }
}

/// Read the current (`AWSCURRENT`) version of secret `name` as a [`ThreadKey`].
pub async fn load(
    secrets: &aws_sdk_secretsmanager::Client,
    name: &str,
) -> Result<ThreadKey, ThreadKeyError> {
    let err = |problem: String| ThreadKeyError {
        secret: name.to_owned(),
        problem,
    };
    let value = secrets
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| err(format!("cannot read it: {}", crate::error::error_chain(&e))))?;
    let text = value
        .secret_string()
        .ok_or_else(|| err("has no string value (SecretString)".into()))?;
    ThreadKey::from_secret_value(text).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_shorter_than_sixteen_bytes_are_refused_and_never_printed() {
        let err = ThreadKey::from_secret_value("fifteen-bytes!!").unwrap_err();
        assert!(err.contains("at least 16 bytes (got 15)"), "{err}");
        assert!(!err.contains("fifteen"), "{err}");
        let key = ThreadKey::from_secret_value("sixteen-bytes!!!").unwrap();
        assert_eq!(key.expose(), b"sixteen-bytes!!!");
        assert_eq!(format!("{key:?}"), "ThreadKey([redacted])");
    }
}
