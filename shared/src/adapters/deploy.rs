//! What every deployed Lambda builds once per cold start: the configuration, the source client
//! (secret from Secrets Manager / SSM, or the environment) and the DynamoDB stores. A missing
//! variable or secret fails the cold start with an error naming it.

use crate::adapters::aws;
use crate::adapters::dynamodb::{DynamoControl, DynamoRecords, TableNames, stores};
use crate::config::Config;
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
    let tables = TableNames::from_env()?;
    let sdk = aws::sdk_config().await;
    let secret = crate::adapters::secrets::resolve(&config.source.auth, &sdk).await?;
    let source = SourceClient::new(&config, secret)?;
    let (records, control) = stores(aws::dynamodb_client(&sdk), &tables.records, &tables.control);
    Ok(Deployed {
        config,
        sdk,
        source: Arc::new(source),
        records: Arc::new(records),
        control: Arc::new(control),
    })
}

/// An optional numeric environment variable; a bad value names the variable.
pub fn env_u64(name: &str, default: u64) -> Result<u64, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| ConfigError::BadEnv {
            name: name.to_owned(),
            message: format!("{v:?} is not a whole number"),
        }),
        _ => Ok(default),
    }
}

/// A required environment variable, trimmed; missing or empty fails the cold start, naming it.
pub fn required_env(name: &str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        Ok(_) => Err(ConfigError::BadEnv {
            name: name.to_owned(),
            message: "is empty".into(),
        }),
        Err(_) => Err(ConfigError::MissingEnv(name.to_owned())),
    }
}

/// Reconciliation's spill store: the bucket named by `SPILL_BUCKET` (keys under the bucket's
/// root; the steps put every object under their own `reconcile/` prefix, which the template's
/// grants and lifecycle rule name).
pub fn spill_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<crate::adapters::s3::S3Spill, ConfigError> {
    let bucket = required_env("SPILL_BUCKET")?;
    Ok(crate::adapters::s3::S3Spill::from_sdk(sdk, bucket, ""))
}

/// The work queue named by `QUEUE_URL` (the sync worker's queue: targeted syncs go there).
pub fn queue_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<crate::adapters::sqs::SqsQueue, ConfigError> {
    crate::adapters::sqs::SqsQueue::from_env_var(sdk, "QUEUE_URL")
}

/// A whole number in `min..=max` from `get(name)` (an environment lookup), `default` when unset
/// or blank; a bad value names the variable.
pub fn num_from(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = match get(name) {
        Some(v) if !v.trim().is_empty() => v,
        _ => return Ok(default),
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::BadEnv {
            name: name.to_owned(),
            message: format!("{v:?} is not a whole number between {min} and {max}"),
        }),
    }
}
