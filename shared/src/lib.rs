//! The common crate of the workspace: the domain model, the one version rule, the ports the sync
//! logic depends on, the source-API client and the adapters (AWS and the embedded local store).
//!
//! Invariants: `core` is pure (no IO, no SDK types; the clock only in `timefmt::now_us` and
//! `deadline`); `aws_sdk_*` types appear only under `adapters::{aws, dynamodb, sqs, s3, secrets,
//! sfn}`; a module never imports one above it (`telemetry` knows no strategy); `memory` and the
//! negative-control switches exist only with the `testing` feature, which no function ships.

pub mod adapters;
pub mod config;
pub mod core;
pub mod error;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
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
