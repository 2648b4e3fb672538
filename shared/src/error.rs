//! One error type per layer; `is_retryable` tells the handler edge what to do.

use std::path::PathBuf;
use std::time::Duration;

/// A configuration mistake, found at start-up. Names the file, the entity and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: entity `{entity}`, field `{field}`: {message}")]
    Invalid {
        file: PathBuf,
        entity: String,
        field: String,
        message: String,
    },
    #[error("missing environment variable {0}")]
    MissingEnv(String),
    #[error("environment variable {name}: {message}")]
    BadEnv { name: String, message: String },
    #[error("secret {name} could not be loaded: {message}")]
    Secret { name: String, message: String },
}

/// The source API failed, after the retry policy gave up (or at once, when retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown entity `{0}`")]
    UnknownEntity(String),
    #[error("rejected id {id:?}: {reason}")]
    BadId { id: String, reason: &'static str },
    #[error("rate limited by {url} (retry after {retry_after:?}) after {attempts} attempts")]
    RateLimited {
        url: String,
        retry_after: Option<Duration>,
        attempts: u32,
    },
    #[error("server error {status} from {url} after {attempts} attempts")]
    Server {
        status: u16,
        url: String,
        attempts: u32,
    },
    #[error("client error {status} from {url}")]
    Client { status: u16, url: String },
    #[error(
        "not JSON from {url} (status {status}, content-type {content_type:?}) after {attempts} attempts"
    )]
    NotJson {
        status: u16,
        url: String,
        content_type: Option<String>,
        attempts: u32,
    },
    #[error("cannot decode the answer from {url}: {message}")]
    Decode { url: String, message: String },
    #[error("timed out calling {url} after {attempts} attempts")]
    Timeout { url: String, attempts: u32 },
    #[error("cannot reach {url} after {attempts} attempts: {source}")]
    Connect {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("pagination of {url} did not make progress: {message}")]
    Pagination { url: String, message: String },
}

impl SourceError {
    /// Whether a later attempt (a new invocation, a redelivery) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::RateLimited { .. }
                | SourceError::Server { .. }
                | SourceError::NotJson { .. }
                | SourceError::Timeout { .. }
                | SourceError::Connect { .. }
                | SourceError::Decode { .. }
                | SourceError::Pagination { .. }
        )
    }
}

/// A store (records, control, queue, spill) failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller does not hold the lease it claims: another run took it, or it expired.
    #[error("lease on {scope} is not held by run {holder}")]
    LeaseLost { scope: String, holder: String },
    #[error("throttled by the store: {0}")]
    Throttled(String),
    #[error("cannot decode stored item {key}: {message}")]
    Decode { key: String, message: String },
    #[error("item {key} is too large to store ({bytes} bytes, even compressed)")]
    TooLarge { key: String, bytes: usize },
    #[error("{operation} failed: {source}")]
    Backend {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StoreError {
    pub fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            operation,
            source: Box::new(source),
        }
    }
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Backend { .. })
    }
}

/// A sync run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored state is unreadable: {0}")]
    State(String),
}

impl SyncError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Source(e) => e.is_retryable(),
            SyncError::Store(e) => e.is_retryable(),
            SyncError::State(_) => false,
        }
    }
}
