//! The DynamoDB adapter: [`DynamoRecords`] (`RecordStore` on the `records` table) and
//! [`DynamoControl`] (`ControlStore` on the `control` table), plus [`create_tables`].
//!
//! - [`schema`]: both tables as plain data (keys, index, projection, streams, TTL, billing),
//!   the one definition `create_tables`, `syncctl init` and the check of `template.yaml` share;
//!   its doc is the item layout.
//! - [`payload`]: a record's JSON ↔ a native DynamoDB map, or compressed JSON near the item
//!   size limit.
//! - `records`, `control`: the two stores. Every write is a conditional `UpdateItem`/`PutItem`;
//!   a failed condition becomes a domain outcome through the pure functions of `core`, never an
//!   error string. Which records fit is `core::size`, the rule both stores share.
//! - `conditional`: the retry loop those writes share (an attempt that finds the item changed
//!   under it tries again, at most 16 times, then a retryable `Contention`).
//!
//! Two structs rather than one: each table has its own name and its own trait, a function
//! needing only one of them gets only that one, and [`stores`] builds both from one client
//! (clients are cheap to clone and share a connection pool).
//!
//! Table names come from the caller. The Lambdas read them from the environment variables
//! `RECORDS_TABLE` and `CONTROL_TABLE` ([`TableNames::from_env`]).
//!
//! Errors: throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`,
//! `RequestLimitExceeded`, ...) surfaces as `StoreError::Throttled` once the SDK's own retries
//! (`adapters::aws::retry_config`) are spent; any other SDK failure is `StoreError::Backend`
//! naming the operation; an item the adapter cannot read is `StoreError::Decode`.

mod budget;
mod conditional;
mod control;
mod item;
pub mod payload;
mod records;
pub mod schema;
mod tables;

pub use budget::budget_pk;
pub use control::{DynamoControl, RUN_HISTORY_RETENTION_US, event_pk, job_pk, run_sk, runs_pk};
pub use records::{
    DynamoRecords, MAX_ID_BYTES, MAX_PK_BYTES, UPSERT_CONCURRENCY, live_ids_partition, record_key,
};
pub use tables::{ACTIVE_TIMEOUT, TableError, create_table, create_tables};

use crate::config::Env;
use crate::error::ConfigError;

/// Both stores on one client.
pub fn stores(
    client: aws_sdk_dynamodb::Client,
    records_table: &str,
    control_table: &str,
) -> (DynamoRecords, DynamoControl) {
    (
        DynamoRecords::new(client.clone(), records_table),
        DynamoControl::new(client, control_table),
    )
}

/// The two tables' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    pub records: String,
    pub control: String,
}

impl TableNames {
    /// From `RECORDS_TABLE` and `CONTROL_TABLE` (set by the template): a Lambda fails at cold
    /// start, naming the variable, when one is missing or empty.
    pub fn from_env(env: Env<'_>) -> Result<Self, ConfigError> {
        Ok(TableNames {
            records: env.required(schema::RECORDS.env_var)?,
            control: env.required(schema::CONTROL.env_var)?,
        })
    }
}

#[cfg(test)]
mod table_names_tests {
    use super::*;
    use crate::config::env::with;

    #[test]
    fn table_names_come_from_their_variables_named_when_missing_or_blank() {
        let names = with(&[("RECORDS_TABLE", "r"), ("CONTROL_TABLE", " c ")], |env| {
            TableNames::from_env(env).unwrap()
        });
        assert_eq!((names.records.as_str(), names.control.as_str()), ("r", "c"));
        let e = with(&[("RECORDS_TABLE", "r")], |env| {
            TableNames::from_env(env).unwrap_err()
        });
        assert!(
            matches!(&e, ConfigError::MissingEnv(n) if n == "CONTROL_TABLE"),
            "{e}"
        );
        let e = with(&[("RECORDS_TABLE", " "), ("CONTROL_TABLE", "c")], |env| {
            TableNames::from_env(env).unwrap_err()
        });
        assert!(
            matches!(&e, ConfigError::BadEnv { name, .. } if name == "RECORDS_TABLE"),
            "{e}"
        );
    }
}

/// A conditional write kept failing because other writers kept changing the item.
#[derive(Debug, thiserror::Error)]
#[error("{key}: the item kept changing under {attempts} conditional writes")]
pub struct Contention {
    pub key: String,
    pub attempts: usize,
}
