//! What every deployed Lambda builds once per cold start: the configuration, the source client
//! (secret from Secrets Manager / SSM, or the environment, read again after a 401) and the
//! DynamoDB stores (soft-deleted records kept for `TOMBSTONE_RETENTION_DAYS`, their TTL). A
//! missing variable or secret, or a bad value, fails the cold start with an error naming it.

use crate::adapters::aws;
use crate::adapters::dynamodb::{DynamoControl, DynamoRecords, TableNames, stores};
use crate::config::{Config, Env, TombstoneRetention};
use crate::error::ConfigError;
use crate::source::SourceClient;
use std::sync::Arc;

pub struct Deployed {
    pub config: Config,
    pub sdk: aws_config::SdkConfig,
    pub source: Arc<SourceClient>,
    pub records: Arc<DynamoRecords>,
    pub control: Arc<DynamoControl>,
}

pub async fn load() -> Result<Deployed, ConfigError> {
    let config = Config::load()?;
    let tables = TableNames::from_env(Env::process())?;
    let retention = TombstoneRetention::from_env(Env::process())?;
    let sdk = aws::sdk_config().await;
    // The secret read now, and again after a source 401 (a rotation needs no cold start).
    let provider = crate::adapters::secrets::source_provider(&config.source.auth, &sdk);
    let secret = match &provider {
        Some(p) => Some(p.read().await?),
        None => None,
    };
    let (records, control) = stores(aws::dynamodb_client(&sdk), &tables.records, &tables.control);
    let records = records.with_tombstone_retention(retention);
    let control = Arc::new(control);
    // Every function's requests share the account's rate budget in the control table.
    let mut source = SourceClient::new(&config, secret)?.with_budget_in(control.clone());
    if let Some(p) = provider {
        source = source.with_secret_provider(p);
    }
    Ok(Deployed {
        config,
        sdk,
        source: Arc::new(source),
        records: Arc::new(records),
        control,
    })
}

/// Reconciliation's spill store: the bucket named by `SPILL_BUCKET` (keys under the bucket's
/// root; the steps put every object under their own `reconcile/` prefix, which the template's
/// grants and lifecycle rule name).
pub fn spill_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<crate::adapters::s3::S3Spill, ConfigError> {
    let bucket = Env::process().required("SPILL_BUCKET")?;
    Ok(crate::adapters::s3::S3Spill::from_sdk(sdk, bucket, ""))
}

/// The work queue named by `QUEUE_URL` (the sync worker's queue: targeted syncs go there).
pub fn queue_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<crate::adapters::sqs::SqsQueue, ConfigError> {
    crate::adapters::sqs::SqsQueue::from_env_var(sdk, Env::process(), "QUEUE_URL")
}
