//! Raw outgoing messages too large for a queue message travel by reference: `mailbridge
//! sendmail` puts the message into the stack's message bucket and enqueues an [`ObjectRef`]
//! (bucket, key, size, SHA-256); send-notifications reads it back, checks size and hash, and
//! deletes it once the mail is sent. A parked notification keeps its object (the DLQ message
//! is useless without it); the bucket's lifecycle rule removes it with the DLQ's retention.
//!
//! [`MessageStore`] is the port; [`S3MessageStore`] the adapter (path-style addressing when an
//! endpoint override is configured, as moto and other local S3 servers need).

use crate::aws::LazyClient;
use crate::error::{Classify, ErrorClass};
use crate::notification::ObjectRef;
use async_trait::async_trait;
use sha2::Digest as _;

/// Why a stored message could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum MessageStoreError {
    /// The object does not exist (expired, deleted, never written): retrying cannot help.
    #[error("message object s3://{bucket}/{key} does not exist")]
    Missing {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// The object is not what the notification says (size or SHA-256 differ).
    #[error("message object s3://{bucket}/{key} is not the one referenced: {problem}")]
    Mismatch {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What differs.
        problem: String,
    },
    /// S3 could not be reached or refused for now (network, 5xx, throttling, credentials).
    #[error("S3 {operation} s3://{bucket}/{key} failed: {detail}")]
    Unavailable {
        /// `PutObject`, `GetObject`, `DeleteObject`.
        operation: &'static str,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What failed.
        detail: String,
    },
}

impl Classify for MessageStoreError {
    fn class(&self) -> ErrorClass {
        match self {
            MessageStoreError::Missing { .. } | MessageStoreError::Mismatch { .. } => {
                ErrorClass::Permanent
            }
            MessageStoreError::Unavailable { .. } => ErrorClass::Transient,
        }
    }
}

/// Port: where raw messages too large for the queue are kept.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Store `raw` under `bucket`/`key` (encrypted at rest by the bucket) and describe it.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        raw: &[u8],
    ) -> Result<ObjectRef, MessageStoreError>;
    /// Read the object and check its size and SHA-256.
    async fn get(&self, object: &ObjectRef) -> Result<Vec<u8>, MessageStoreError>;
    /// Remove the object (a missing object is no error).
    async fn delete(&self, object: &ObjectRef) -> Result<(), MessageStoreError>;
}

/// The SHA-256 of `raw`, lowercase hex (what [`ObjectRef::sha256`] holds).
pub fn sha256_hex(raw: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(raw))
}

/// Build an S3 client from the shared AWS config. With an endpoint override (moto, a local S3)
/// buckets are addressed by path, since `<bucket>.127.0.0.1` does not resolve.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let builder =
        aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some());
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// The S3 adapter.
#[derive(Clone, Debug)]
pub struct S3MessageStore {
    client: LazyClient<aws_sdk_s3::Client>,
}

impl S3MessageStore {
    /// Use `client` (a client, or a [`LazyClient`] built on first use with [`s3_client`]).
    pub fn new(client: impl Into<LazyClient<aws_sdk_s3::Client>>) -> Self {
        S3MessageStore {
            client: client.into(),
        }
    }
}

fn detail<E: std::error::Error + 'static>(e: E) -> String {
    crate::error::error_chain(&e)
}

#[async_trait]
impl MessageStore for S3MessageStore {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        raw: &[u8],
    ) -> Result<ObjectRef, MessageStoreError> {
        let sha256 = sha256_hex(raw);
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("message/rfc822")
            .body(aws_sdk_s3::primitives::ByteStream::from(raw.to_vec()))
            .send()
            .await
            .map_err(|e| MessageStoreError::Unavailable {
                operation: "PutObject",
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                detail: detail(e),
            })?;
        Ok(ObjectRef {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: raw.len() as u64,
            sha256,
        })
    }

    async fn get(&self, object: &ObjectRef) -> Result<Vec<u8>, MessageStoreError> {
        let unavailable = |detail: String| MessageStoreError::Unavailable {
            operation: "GetObject",
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            detail,
        };
        let out = match self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(MessageStoreError::Missing {
                    bucket: object.bucket.clone(),
                    key: object.key.clone(),
                });
            }
            Err(e) => return Err(unavailable(detail(e))),
        };
        let raw = out
            .body
            .collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .into_bytes()
            .to_vec();
        let mismatch = |problem: String| MessageStoreError::Mismatch {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            problem,
        };
        if raw.len() as u64 != object.size {
            return Err(mismatch(format!(
                "{} bytes, the notification says {}",
                raw.len(),
                object.size
            )));
        }
        let sha256 = sha256_hex(&raw);
        if sha256 != object.sha256 {
            return Err(mismatch(format!(
                "SHA-256 {sha256}, the notification says {}",
                object.sha256
            )));
        }
        Ok(raw)
    }

    async fn delete(&self, object: &ObjectRef) -> Result<(), MessageStoreError> {
        self.client
            .delete_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
            .map_err(|e| MessageStoreError::Unavailable {
                operation: "DeleteObject",
                bucket: object.bucket.clone(),
                key: object.key.clone(),
                detail: detail(e),
            })?;
        Ok(())
    }
}

/// In-memory implementation (unit tests): objects by (bucket, key), checked like S3's.
#[derive(Debug, Default)]
pub struct InMemoryMessageStore {
    objects: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<u8>>>,
}

impl InMemoryMessageStore {
    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.objects.lock().expect("lock").len()
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl MessageStore for InMemoryMessageStore {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        raw: &[u8],
    ) -> Result<ObjectRef, MessageStoreError> {
        self.objects
            .lock()
            .expect("lock")
            .insert((bucket.to_owned(), key.to_owned()), raw.to_vec());
        Ok(ObjectRef {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: raw.len() as u64,
            sha256: sha256_hex(raw),
        })
    }

    async fn get(&self, object: &ObjectRef) -> Result<Vec<u8>, MessageStoreError> {
        let raw = self
            .objects
            .lock()
            .expect("lock")
            .get(&(object.bucket.clone(), object.key.clone()))
            .cloned()
            .ok_or_else(|| MessageStoreError::Missing {
                bucket: object.bucket.clone(),
                key: object.key.clone(),
            })?;
        if raw.len() as u64 != object.size || sha256_hex(&raw) != object.sha256 {
            return Err(MessageStoreError::Mismatch {
                bucket: object.bucket.clone(),
                key: object.key.clone(),
                problem: "size or SHA-256 differ".into(),
            });
        }
        Ok(raw)
    }

    async fn delete(&self, object: &ObjectRef) -> Result<(), MessageStoreError> {
        self.objects
            .lock()
            .expect("lock")
            .remove(&(object.bucket.clone(), object.key.clone()));
        Ok(())
    }
}
