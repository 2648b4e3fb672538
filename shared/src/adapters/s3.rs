//! [`SpillStore`] on Amazon S3: reconciliation's sorted runs, under one prefix of one bucket.
//!
//! Keys given to and returned by this store are relative to its prefix: `S3Spill` with prefix
//! `spill` stores key `run-1/src-0001` at `s3://bucket/spill/run-1/src-0001`.
//! Objects are read as streams (`GetObject`'s body, never buffered whole); listings are paged
//! (1,000 keys a page); deletions go in `DeleteObjects` calls of at most 1,000 keys, one page at a
//! time, and any key S3 failed to delete is reported.

use crate::adapters::aws::{AwsError, s3_client, sdk_config, store_error};
use crate::error::StoreError;
use crate::ports::SpillStore;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use std::fmt;
use tokio::io::AsyncRead;

/// Keys per DeleteObjects call (S3's limit).
pub const MAX_DELETE_KEYS: usize = 1000;

#[derive(Debug, Clone)]
pub struct S3Spill {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Without leading or trailing `/`; may be empty.
    prefix: String,
}

impl S3Spill {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>, prefix: &str) -> Self {
        S3Spill {
            client,
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    /// A client built from a shared SDK configuration (one per cold start).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, bucket: impl Into<String>, prefix: &str) -> Self {
        Self::new(s3_client(sdk), bucket, prefix)
    }

    /// Region, credentials and endpoint from the usual AWS settings
    /// (`AWS_ENDPOINT_URL_S3` for an emulator, with path-style addressing).
    pub async fn from_env(bucket: impl Into<String>, prefix: &str) -> Self {
        Self::from_sdk(&sdk_config().await, bucket, prefix)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    fn relative_key<'k>(&self, object_key: &'k str) -> Result<&'k str, StoreError> {
        if self.prefix.is_empty() {
            return Ok(object_key);
        }
        object_key
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StoreError::Decode {
                key: self.location(object_key),
                message: format!("listed outside the prefix {:?}", self.prefix),
            })
    }

    fn location(&self, object_key: &str) -> String {
        format!("s3://{}/{}", self.bucket, object_key)
    }

    /// One page of object keys (absolute) under `object_prefix`.
    async fn list_page(
        &self,
        object_prefix: &str,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(object_prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| store_error("s3:ListObjectsV2", e))?;
        let mut keys = Vec::with_capacity(out.contents().len());
        for object in out.contents() {
            let key = object.key().ok_or_else(|| StoreError::Decode {
                key: self.location(object_prefix),
                message: "a listed object has no key".into(),
            })?;
            keys.push(key.to_owned());
        }
        let next = if out.is_truncated() == Some(true) {
            match out.next_continuation_token() {
                Some(t) if !t.is_empty() => Some(t.to_owned()),
                _ => {
                    return Err(StoreError::Decode {
                        key: self.location(object_prefix),
                        message: "truncated listing without a continuation token".into(),
                    });
                }
            }
        } else {
            None
        };
        Ok((keys, next))
    }
}

/// Keys S3 did not delete, with its reasons.
#[derive(Debug)]
pub struct DeleteErrors {
    pub deleted: u64,
    /// `(key, code, message)`, keys relative to the bucket.
    pub failed: Vec<(String, String, String)>,
}

impl fmt::Display for DeleteErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} objects not deleted ({} deleted)",
            self.failed.len(),
            self.deleted
        )?;
        for (key, code, message) in self.failed.iter().take(5) {
            write!(f, "; {key}: {code} {message}")?;
        }
        if self.failed.len() > 5 {
            write!(f, "; ...")?;
        }
        Ok(())
    }
}

impl std::error::Error for DeleteErrors {}

#[async_trait]
impl SpillStore for S3Spill {
    #[tracing::instrument(level = "debug", skip_all, fields(bucket = %self.bucket, key = %key, bytes = body.len()))]
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .content_type("application/octet-stream")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| store_error("s3:PutObject", e))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(bucket = %self.bucket, key = %key))]
    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError> {
        let object_key = self.object_key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    // Not retryable: the object is not coming back.
                    StoreError::Decode {
                        key: self.location(&object_key),
                        message: format!("no such spill object (NoSuchKey: {})", AwsError::new(e)),
                    }
                } else {
                    store_error("s3:GetObject", e)
                }
            })?;
        Ok(Box::new(Box::pin(out.body.into_async_read())))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(bucket = %self.bucket, prefix = %prefix))]
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let object_prefix = self.object_key(prefix);
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = self.list_page(&object_prefix, token).await?;
            for key in page {
                keys.push(self.relative_key(&key)?.to_owned());
            }
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(bucket = %self.bucket, prefix = %prefix))]
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let object_prefix = self.object_key(prefix);
        let mut deleted = 0u64;
        let mut failed = Vec::new();
        let mut token = None;
        loop {
            // Continuation tokens are key-based: deleting a listed page does not shift the next.
            let (page, next) = self.list_page(&object_prefix, token).await?;
            for chunk in page.chunks(MAX_DELETE_KEYS) {
                let mut objects = Vec::with_capacity(chunk.len());
                for key in chunk {
                    let id = ObjectIdentifier::builder()
                        .key(key)
                        .build()
                        .map_err(|e| StoreError::backend("s3:DeleteObjects", e))?;
                    objects.push(id);
                }
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| StoreError::backend("s3:DeleteObjects", e))?;
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| store_error("s3:DeleteObjects", e))?;
                let errors = out.errors();
                deleted += (chunk.len() - errors.len().min(chunk.len())) as u64;
                failed.extend(errors.iter().map(|e| {
                    (
                        e.key().unwrap_or_default().to_owned(),
                        e.code().unwrap_or_default().to_owned(),
                        e.message().unwrap_or_default().to_owned(),
                    )
                }));
            }
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if failed.is_empty() {
            Ok(deleted)
        } else {
            Err(StoreError::backend(
                "s3:DeleteObjects",
                DeleteErrors { deleted, failed },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(prefix: &str) -> S3Spill {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        S3Spill::new(aws_sdk_s3::Client::from_conf(conf), "b", prefix)
    }

    #[test]
    fn keys_are_relative_to_the_prefix() {
        let s = spill("/spill/");
        assert_eq!(s.prefix(), "spill");
        assert_eq!(s.object_key("run-1/a"), "spill/run-1/a");
        assert_eq!(s.relative_key("spill/run-1/a").ok(), Some("run-1/a"));
        assert!(s.relative_key("spillover/x").is_err());
        assert!(s.relative_key("other/x").is_err());
        let root = spill("");
        assert_eq!(root.object_key("a"), "a");
        assert_eq!(root.relative_key("a").ok(), Some("a"));
    }

    #[test]
    fn delete_errors_are_summarised() {
        let e = DeleteErrors {
            deleted: 3,
            failed: vec![("k".into(), "AccessDenied".into(), "no".into())],
        };
        assert_eq!(
            e.to_string(),
            "1 objects not deleted (3 deleted); k: AccessDenied no"
        );
    }
}
