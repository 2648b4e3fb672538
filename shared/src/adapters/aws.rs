//! The AWS SDK's configuration and clients, built once per cold start, and the mapping of SDK
//! errors to [`StoreError`].
//!
//! Endpoints come from the SDK's own settings: `AWS_ENDPOINT_URL` or a per-service
//! `AWS_ENDPOINT_URL_<SERVICE>` (`..._DYNAMODB`, `..._SQS`, `..._S3`, `..._SFN`) point a client at
//! an emulator (DynamoDB Local, moto) with no code change; unset, the clients talk to AWS.

use crate::error::StoreError;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Attempts per SDK call (the first included) before a throttled or transient failure surfaces.
pub const MAX_ATTEMPTS: u32 = 8;

/// Standard retry mode (exponential backoff with jitter, a client-side retry quota), with more
/// attempts than the SDK's default 3: DynamoDB and SQS throttle under bursts, and a throttled
/// write retried a little later is cheaper than a failed run.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(10))
}

/// The shared SDK configuration: region, credentials and endpoints from the usual AWS
/// settings (environment, profile, the Lambda role), with [`retry_config`].
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry_config())
        .load()
        .await
}

/// Who the SDK's credentials are (STS GetCallerIdentity): the ARN an operator's change is
/// recorded with on AWS (`syncctl cursor`, `resync`). `AWS_ENDPOINT_URL_STS` points it at an
/// emulator.
pub async fn caller_arn(sdk: &aws_config::SdkConfig) -> Result<String, StoreError> {
    let client = aws_sdk_sts::Client::new(sdk);
    let who = client
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| store_error("sts:GetCallerIdentity", e))?;
    who.arn()
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Decode {
            key: "sts:GetCallerIdentity".into(),
            message: "the answer has no Arn".into(),
        })
}

pub fn dynamodb_client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    dynamodb_client_at(sdk, None)
}

/// The DynamoDB client, with an explicit endpoint (DynamoDB Local, `--endpoint-url`) when given.
/// The override is set on the client's own configuration: one on the shared SDK configuration
/// would lose to `AWS_ENDPOINT_URL_DYNAMODB`.
pub fn dynamodb_client_at(
    sdk: &aws_config::SdkConfig,
    endpoint: Option<&str>,
) -> aws_sdk_dynamodb::Client {
    let mut conf = aws_sdk_dynamodb::config::Builder::from(sdk).retry_config(retry_config());
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_dynamodb::Client::from_conf(conf.build())
}

pub fn sqs_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    sqs_client_at(sdk, None)
}

/// The SQS client, with an explicit endpoint (an emulator, `--endpoint-url`) when given.
pub fn sqs_client_at(sdk: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_sqs::Client {
    let mut conf = aws_sdk_sqs::config::Builder::from(sdk).retry_config(retry_config());
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_sqs::Client::from_conf(conf.build())
}

/// The S3 client. With an endpoint override (an emulator such as moto), path-style addressing
/// (`http://host/bucket/key`), since `bucket.127.0.0.1` does not resolve.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .retry_config(retry_config())
        .force_path_style(s3_endpoint_overridden(sdk))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn s3_endpoint_overridden(sdk: &aws_config::SdkConfig) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let ignored = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    sdk.endpoint_url().is_some()
        || (!ignored && (set("AWS_ENDPOINT_URL_S3") || set("AWS_ENDPOINT_URL")))
}

/// Error codes AWS services use for throttling (the SDK's own list, plus S3's `SlowDown`).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "KMS.ThrottlingException",
];

pub(crate) fn is_throttling_code(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

/// An SDK call failed: the service's code and message (or the transport failure), with the SDK
/// error kept as the source.
#[derive(Debug)]
pub struct AwsError {
    code: Option<String>,
    summary: String,
    source: Box<dyn StdError + Send + Sync + 'static>,
}

impl AwsError {
    pub fn new<E>(err: E) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_owned);
        let summary = match (err.code(), err.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
        };
        AwsError {
            code,
            summary,
            source: Box::new(err),
        }
    }

    /// The service's error code (`QueueDoesNotExist`, `NoSuchKey`, ...), when it answered.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

impl StdError for AwsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Map an SDK error: throttling (after the SDK's own retries) to [`StoreError::Throttled`],
/// anything else to [`StoreError::Backend`] naming the operation and keeping the source.
pub(crate) fn store_error<E>(operation: &'static str, err: E) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let err = AwsError::new(err);
    match err.code() {
        Some(code) if is_throttling_code(code) => StoreError::throttled(operation, err),
        _ => StoreError::backend(operation, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_recognised() {
        assert!(is_throttling_code("ThrottlingException"));
        assert!(is_throttling_code("SlowDown"));
        assert!(is_throttling_code("RequestThrottled"));
        assert!(!is_throttling_code("QueueDoesNotExist"));
        assert!(!is_throttling_code("NoSuchKey"));
    }

    #[test]
    fn retry_config_is_standard_with_more_attempts() {
        let rc = retry_config();
        assert_eq!(rc.max_attempts(), MAX_ATTEMPTS);
        assert_eq!(rc.mode(), aws_smithy_types::retry::RetryMode::Standard);
    }
}
