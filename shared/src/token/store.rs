//! Where account secrets live: the [`SecretStore`] port, the Secrets Manager adapter and an
//! in-memory fake for unit tests.
//!
//! Reads always ask for the `AWSCURRENT` stage explicitly (harmless on AWS; moto returns a stale
//! version without it after a stage move). Writes carry a `ClientRequestToken`, so a retried
//! write of the same value is a no-op and two different values can never share a version.
//!
//! [`SecretStore::replace`] is a compare-and-swap for the functions' write-backs: the new version
//! is stored under [`PENDING_STAGE`] (not current), and `AWSCURRENT` is moved to it from the
//! version the writer read with `UpdateSecretVersionStage`'s `RemoveFromVersionId`, which fails
//! when `AWSCURRENT` is no longer on that version. A grant stored meanwhile (`mailbridge login`,
//! another instance) therefore stays current.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

/// The current value of a secret and the version it came from.
#[derive(Clone)]
pub struct SecretValue {
    /// The secret string (JSON for account secrets).
    pub value: SecretString,
    /// Secrets Manager version id of `value`.
    pub version_id: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("value", &"[redacted]")
            .field("version_id", &self.version_id)
            .finish()
    }
}

/// A secret store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    /// No such secret (or it has no current version).
    #[error("secret {name} does not exist")]
    NotFound {
        /// Secret name.
        name: String,
    },
    /// `create` of a secret that already exists.
    #[error("secret {name} already exists")]
    AlreadyExists {
        /// Secret name.
        name: String,
    },
    /// The client request token was already used with a different value.
    #[error("secret {name}: a different value was already written with this request token")]
    TokenReused {
        /// Secret name.
        name: String,
    },
    /// [`SecretStore::replace`]: another version became current after the writer read the
    /// secret; nothing was replaced (the newer value stays current).
    #[error("secret {name}: a newer version became current meanwhile; not replaced")]
    Superseded {
        /// Secret name.
        name: String,
    },
    /// The secret is scheduled for deletion (`DeleteSecret` with a recovery window): every
    /// read fails until someone restores it.
    #[error(
        "secret {name} is scheduled for deletion: restore it (`aws secretsmanager restore-secret --secret-id {name}`) before `mailbridge login` can use the name again"
    )]
    ScheduledForDeletion {
        /// Secret name.
        name: String,
    },
    /// Not allowed (IAM) — a deployment problem.
    #[error("secret {name}: access denied: {detail}")]
    AccessDenied {
        /// Secret name.
        name: String,
        /// The service's message.
        detail: String,
    },
    /// Throttled, network, 5xx: try again later.
    #[error("secret {name}: secrets store unavailable: {detail}")]
    Unavailable {
        /// Secret name.
        name: String,
        /// What failed.
        detail: String,
    },
}

impl crate::error::Classify for SecretStoreError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            SecretStoreError::Unavailable { .. } => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// Port: read and write whole secret values.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The current (`AWSCURRENT`) value of `name`.
    async fn get(&self, name: &str) -> Result<SecretValue, SecretStoreError>;

    /// Store `value` as the new current version of `name`. `client_request_token` (32–64
    /// chars) makes the write idempotent. Returns the new version id.
    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
    ) -> Result<String, SecretStoreError>;

    /// Create a new secret `name` with `value` (fails with `AlreadyExists`). Returns the
    /// version id.
    async fn create(&self, name: &str, value: &SecretString) -> Result<String, SecretStoreError>;

    /// Store `value` as the new current version of `name` only while `expected_version` (the
    /// version the caller read and changed) is still current: otherwise
    /// [`SecretStoreError::Superseded`] and the current value stays. `client_request_token` as
    /// for [`SecretStore::put`]. Returns the new version id.
    async fn replace(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
        expected_version: &str,
    ) -> Result<String, SecretStoreError>;
}

/// The staging label of a version [`SecretStore::replace`] wrote and is about to make current
/// (Secrets Manager keeps a version only while it has a label).
pub const PENDING_STAGE: &str = "MAILBRIDGE_PENDING";

/// AWS Secrets Manager adapter.
#[derive(Clone, Debug)]
pub struct SecretsManagerStore {
    client: crate::aws::LazyClient<aws_sdk_secretsmanager::Client>,
}

impl SecretsManagerStore {
    /// Wrap an SDK client (or a [`crate::aws::LazyClient`] built on first use).
    pub fn new(client: impl Into<crate::aws::LazyClient<aws_sdk_secretsmanager::Client>>) -> Self {
        Self {
            client: client.into(),
        }
    }

    /// Build from the shared AWS config ([`crate::aws::load_config`]); the SDK client is built
    /// on the first secret read or write.
    pub fn from_conf(config: &aws_config::SdkConfig) -> Self {
        Self::new(crate::aws::LazyClient::new(
            config,
            aws_sdk_secretsmanager::Client::new,
        ))
    }
}

fn sdk_detail<E>(err: &aws_sdk_secretsmanager::error::SdkError<E>) -> String
where
    E: std::error::Error + 'static,
{
    crate::error::error_chain(err)
}

fn not_found(name: &str) -> SecretStoreError {
    SecretStoreError::NotFound {
        name: name.to_owned(),
    }
}

/// Maps a Secrets Manager SDK error (of any operation) to the store's error, by error code.
fn classify_sdk_error<E>(
    name: &str,
    err: &aws_sdk_secretsmanager::error::SdkError<E>,
) -> SecretStoreError
where
    E: std::error::Error + aws_sdk_secretsmanager::error::ProvideErrorMetadata + 'static,
{
    let name = name.to_owned();
    match err.as_service_error().and_then(|e| e.code()) {
        Some("ResourceNotFoundException") => SecretStoreError::NotFound { name },
        Some("ResourceExistsException") => SecretStoreError::TokenReused { name },
        // AWS: "...because it was marked for deletion."; moto: "...currently marked deleted."
        Some("InvalidRequestException")
            if err
                .as_service_error()
                .and_then(|e| e.message())
                .is_some_and(|m| {
                    m.contains("marked for deletion") || m.contains("marked deleted")
                }) =>
        {
            SecretStoreError::ScheduledForDeletion { name }
        }
        Some("AccessDeniedException") => SecretStoreError::AccessDenied {
            name,
            detail: sdk_detail(err),
        },
        _ => SecretStoreError::Unavailable {
            name,
            detail: sdk_detail(err),
        },
    }
}
#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn get(&self, name: &str) -> Result<SecretValue, SecretStoreError> {
        let result = self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .send()
            .await;
        match result {
            Ok(out) => {
                let value = out.secret_string.ok_or_else(|| not_found(name))?;
                Ok(SecretValue {
                    value: SecretString::from(value),
                    version_id: out.version_id.unwrap_or_default(),
                })
            }
            Err(err) => Err(classify_sdk_error(name, &err)),
        }
    }

    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
    ) -> Result<String, SecretStoreError> {
        let result = self
            .put_value(name, value, client_request_token)
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.version_id.unwrap_or_default()),
            Err(err) => Err(classify_sdk_error(name, &err)),
        }
    }

    async fn create(&self, name: &str, value: &SecretString) -> Result<String, SecretStoreError> {
        self.create_secret(name, value).await
    }

    async fn replace(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
        expected_version: &str,
    ) -> Result<String, SecretStoreError> {
        let written = self
            .put_value(name, value, client_request_token)
            .version_stages(PENDING_STAGE)
            .send()
            .await
            .map_err(|err| classify_sdk_error(name, &err))?
            .version_id
            .unwrap_or_default();
        let moved = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .remove_from_version_id(expected_version)
            .move_to_version_id(&written)
            .send()
            .await;
        match moved {
            Ok(_) => Ok(written),
            // `AWSCURRENT` is not on `expected_version` (any more): ours already (a retry of
            // this write), or someone else's.
            Err(err) => match self.get(name).await {
                Ok(current) if current.version_id == written => Ok(written),
                Ok(current) if current.version_id != expected_version => {
                    Err(SecretStoreError::Superseded {
                        name: name.to_owned(),
                    })
                }
                _ => Err(classify_sdk_error(name, &err)),
            },
        }
    }
}

impl SecretsManagerStore {
    /// A `PutSecretValue` of `value` whose retries `client_request_token` makes idempotent.
    fn put_value(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
    ) -> aws_sdk_secretsmanager::operation::put_secret_value::builders::PutSecretValueFluentBuilder
    {
        self.client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.expose_secret())
            .client_request_token(client_request_token)
    }

    /// Create a secret (used by the operator CLI's login).
    async fn create_secret(
        &self,
        name: &str,
        value: &SecretString,
    ) -> Result<String, SecretStoreError> {
        let result = self
            .client
            .create_secret()
            .name(name)
            .secret_string(value.expose_secret())
            .description("mailbridge account: Microsoft 365 OAuth2 grant (see docs/accounts.md)")
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.version_id.unwrap_or_default()),
            Err(err) => {
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception())
                {
                    Err(SecretStoreError::AlreadyExists {
                        name: name.to_owned(),
                    })
                } else {
                    Err(SecretStoreError::Unavailable {
                        name: name.to_owned(),
                        detail: sdk_detail(&err),
                    })
                }
            }
        }
    }
}

#[derive(Default)]
struct MemorySecret {
    /// (version id, value, client request token), oldest first; the last is AWSCURRENT.
    versions: Vec<(String, String, String)>,
}

/// In-memory [`SecretStore`] with Secrets Manager's idempotency rules, for unit tests.
#[derive(Default)]
pub struct InMemorySecretStore {
    secrets: Mutex<HashMap<String, MemorySecret>>,
    puts: Mutex<u64>,
}

impl InMemorySecretStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Create or overwrite `name` with `value` (no idempotency token; test setup).
    pub fn insert(&self, name: &str, value: &str) {
        let mut secrets = self.secrets.lock().expect("store lock");
        let entry = secrets.entry(name.to_owned()).or_default();
        let version = uuid::Uuid::new_v4().to_string();
        entry
            .versions
            .push((version.clone(), value.to_owned(), version));
    }

    /// Current value (test inspection).
    pub fn current(&self, name: &str) -> Option<String> {
        let secrets = self.secrets.lock().expect("store lock");
        secrets
            .get(name)
            .and_then(|s| s.versions.last().map(|v| v.1.clone()))
    }

    /// Number of `put` calls that created a new version.
    pub fn put_count(&self) -> u64 {
        *self.puts.lock().expect("store lock")
    }
}

#[async_trait]
impl SecretStore for InMemorySecretStore {
    async fn get(&self, name: &str) -> Result<SecretValue, SecretStoreError> {
        let secrets = self.secrets.lock().expect("store lock");
        let (version_id, value, _) = secrets
            .get(name)
            .and_then(|s| s.versions.last())
            .ok_or_else(|| not_found(name))?;
        Ok(SecretValue {
            value: SecretString::from(value.clone()),
            version_id: version_id.clone(),
        })
    }

    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
    ) -> Result<String, SecretStoreError> {
        let mut secrets = self.secrets.lock().expect("store lock");
        let secret = secrets.get_mut(name).ok_or_else(|| not_found(name))?;
        if let Some((version, existing, _)) = secret
            .versions
            .iter()
            .find(|(_, _, token)| token == client_request_token)
        {
            return if existing == value.expose_secret() {
                Ok(version.clone())
            } else {
                Err(SecretStoreError::TokenReused {
                    name: name.to_owned(),
                })
            };
        }
        let version = uuid::Uuid::new_v4().to_string();
        secret.versions.push((
            version.clone(),
            value.expose_secret().to_owned(),
            client_request_token.to_owned(),
        ));
        *self.puts.lock().expect("store lock") += 1;
        Ok(version)
    }

    async fn create(&self, name: &str, value: &SecretString) -> Result<String, SecretStoreError> {
        let mut secrets = self.secrets.lock().expect("store lock");
        if secrets.contains_key(name) {
            return Err(SecretStoreError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        let version = uuid::Uuid::new_v4().to_string();
        secrets.entry(name.to_owned()).or_default().versions.push((
            version.clone(),
            value.expose_secret().to_owned(),
            version.clone(),
        ));
        Ok(version)
    }

    async fn replace(
        &self,
        name: &str,
        value: &SecretString,
        client_request_token: &str,
        expected_version: &str,
    ) -> Result<String, SecretStoreError> {
        {
            let secrets = self.secrets.lock().expect("store lock");
            let secret = secrets.get(name).ok_or_else(|| not_found(name))?;
            let current = secret.versions.last().map(|v| v.0.as_str());
            let ours = secret
                .versions
                .iter()
                .find(|(_, _, token)| token == client_request_token)
                .map(|v| v.0.as_str());
            if current != Some(expected_version) && (ours.is_none() || ours != current) {
                return Err(SecretStoreError::Superseded {
                    name: name.to_owned(),
                });
            }
        }
        self.put(name, value, client_request_token).await
    }
}

/// A deterministic client request token for writing `value` on top of `base_version`: a
/// retry of the same write reuses it (no duplicate version), a different value gets another.
pub fn client_request_token(secret_name: &str, base_version: &str, value: &SecretString) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(secret_name.as_bytes());
    hasher.update([0]);
    hasher.update(base_version.as_bytes());
    hasher.update([0]);
    hasher.update(value.expose_secret().as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_follows_secrets_manager_idempotency() {
        let store = InMemorySecretStore::new();
        store.insert("a", "v1");
        let v2: SecretString = "v2".into();
        let token = client_request_token("a", "base", &v2);
        assert_eq!(token.len(), 36);
        let first = store.put("a", &v2, &token).await.unwrap();
        let again = store.put("a", &v2, &token).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(store.put_count(), 1);
        let other: SecretString = "v3".into();
        assert!(matches!(
            store.put("a", &other, &token).await,
            Err(SecretStoreError::TokenReused { .. })
        ));
        assert!(matches!(
            store.get("missing").await,
            Err(SecretStoreError::NotFound { .. })
        ));
        assert_ne!(token, client_request_token("a", "base", &other));
    }

    #[tokio::test]
    async fn memory_store_replaces_only_the_version_it_was_given() {
        let store = InMemorySecretStore::new();
        store.insert("a", "v1");
        let read = store.get("a").await.unwrap().version_id;
        let mine: SecretString = "mine".into();
        let theirs: SecretString = "theirs".into();
        store
            .replace("a", &mine, &client_request_token("a", &read, &mine), &read)
            .await
            .unwrap();
        assert!(matches!(
            store
                .replace(
                    "a",
                    &theirs,
                    &client_request_token("a", &read, &theirs),
                    &read
                )
                .await,
            Err(SecretStoreError::Superseded { .. })
        ));
        assert_eq!(store.current("a").as_deref(), Some("mine"));
    }
}
