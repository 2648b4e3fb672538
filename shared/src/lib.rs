//! The common crate of the workspace: the domain model, the one version rule, the ports the sync
//! logic depends on, the source-API client and the adapters (AWS and the embedded local store).
//!
//! Invariant: `core` is pure (no IO, no SDK types); `aws_sdk_*` types appear only under
//! `adapters::{aws, dynamodb, sqs, s3, secrets}`.

pub mod adapters;
pub mod config;
pub mod core;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod model;
pub mod ports;
pub mod setdiff;
pub mod source;
pub mod sync;
pub mod telemetry;
pub mod webhook;
pub mod wire;

pub use config::{Config, EntityConfig, SourceConfig};
pub use error::{ConfigError, SourceError, StoreError, SyncError};
pub use model::{ContentHash, Record, Strategy, Version};
