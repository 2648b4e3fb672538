//! Plumbing for the tests that talk to the emulators (moto, DynamoDB Local).
//!
//! `scripts/test` starts both on free ports and exports `SYNC_TEST_MOTO_URL`,
//! `SYNC_TEST_DYNAMODB_URL` and the `AWS_*` variables (`AWS_ENDPOINT_URL_DYNAMODB`, `..._SQS`,
//! `..._S3`, `..._SFN`, test credentials, `us-east-1`) that point the SDK at them; by hand:
//! `scripts/emulators.sh start && source .tools/emulators.env`. Without them these tests fail
//! with a message saying so: they are never skipped.
//!
//! Tests run in parallel against one moto and one DynamoDB Local, so every test makes its own
//! resources with [`unique_name`] and never resets an emulator.
//!
//! Also [`scratch`]: temporary folders under cargo's scratch folder. The simulator, the config
//! pointed at it, temporary folders and forwarding stores are `testkit`'s, shared with the
//! other crates' tests.

use aws_sdk_sqs::types::QueueAttributeName;
use std::sync::OnceLock;

/// Where the emulators listen.
#[derive(Debug, Clone)]
pub struct Emulators {
    pub moto_url: String,
    pub dynamodb_url: String,
}

const HOW: &str = "run scripts/test, which starts the emulators (or, by hand: \
                   scripts/emulators.sh start && source .tools/emulators.env)";

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => panic!("{name} is not set: {HOW}"),
    }
}

/// The emulators' addresses; panics, saying how to start them, when the environment lacks them.
pub fn emulators() -> &'static Emulators {
    static EMULATORS: OnceLock<Emulators> = OnceLock::new();
    EMULATORS.get_or_init(|| {
        let e = Emulators {
            moto_url: required_env("SYNC_TEST_MOTO_URL"),
            dynamodb_url: required_env("SYNC_TEST_DYNAMODB_URL"),
        };
        // The SDK finds the emulators through these (the same path the Lambdas take).
        for name in [
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_ENDPOINT_URL_SQS",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            required_env(name);
        }
        e
    })
}

/// A name no other test (nor an earlier run against the same emulators) uses: lowercase ASCII,
/// digits and `-`, valid for queues, buckets and tables alike when `prefix` is short and so.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{}-{}",
        prefix.to_ascii_lowercase(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The SDK configuration the product uses (`shared::adapters::aws::sdk_config`), after checking
/// that the emulator environment is there. Built per test: an SDK client's connection pool is
/// tied to the runtime it first ran on, and each `#[tokio::test]` has its own.
pub async fn sdk_config() -> aws_config::SdkConfig {
    emulators();
    shared::adapters::aws::sdk_config().await
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    shared::adapters::aws::sqs_client(&sdk_config().await)
}

pub async fn s3_client() -> aws_sdk_s3::Client {
    shared::adapters::aws::s3_client(&sdk_config().await)
}

pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    shared::adapters::aws::dynamodb_client(&sdk_config().await)
}

/// How to make a test queue.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// Seconds a received message stays invisible (SQS's default 30 when `None`).
    pub visibility_timeout_s: Option<u32>,
    /// The queue's `MaximumMessageSize` in bytes (moto's default 1 MiB when `None`).
    pub max_message_size: Option<u32>,
    /// With a dead-letter queue, after this many receives (`maxReceiveCount`).
    pub dlq_max_receive_count: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct TestQueue {
    pub name: String,
    pub url: String,
    pub dlq_url: Option<String>,
}

/// Create a uniquely named queue on moto, with a DLQ redrive policy when asked.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, spec: &QueueSpec) -> TestQueue {
    let name = unique_name("it-q");
    let mut dlq_url = None;
    let mut req = sqs.create_queue().queue_name(&name);
    if let Some(v) = spec.visibility_timeout_s {
        req = req.attributes(QueueAttributeName::VisibilityTimeout, v.to_string());
    }
    if let Some(v) = spec.max_message_size {
        req = req.attributes(QueueAttributeName::MaximumMessageSize, v.to_string());
    }
    if let Some(max_receives) = spec.dlq_max_receive_count {
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .expect("create the DLQ on moto");
        let url = dlq
            .queue_url()
            .expect("moto returns the DLQ's URL")
            .to_owned();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("get the DLQ's ARN");
        let arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .expect("moto returns the DLQ's ARN")
            .clone();
        let policy = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": max_receives.to_string(),
        });
        req = req.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        dlq_url = Some(url);
    }
    let out = req.send().await.expect("create the queue on moto");
    TestQueue {
        url: out
            .queue_url()
            .expect("moto returns the queue's URL")
            .to_owned(),
        name,
        dlq_url,
    }
}

/// Messages visible or in flight on a queue (SQS's approximate counters; exact on moto).
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("get the queue's attributes");
    let attrs = out.attributes().cloned().unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|k| {
        attrs
            .get(k)
            .map(|v| v.parse::<u64>().expect("a count"))
            .unwrap_or(0)
    })
    .sum()
}

/// A fresh folder under cargo's scratch folder for integration tests (`<target>/tmp/<label>/`),
/// removed on drop.
pub fn scratch(label: &str) -> testkit::TempDir {
    testkit::TempDir::under(env!("CARGO_TARGET_TMPDIR"), label)
}

/// Create a uniquely named bucket on moto.
pub async fn create_bucket(s3: &aws_sdk_s3::Client) -> String {
    let name = unique_name("it-b");
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create the bucket on moto");
    name
}

/// The harness itself: each endpoint reaches the emulator it names.
#[tokio::test]
async fn smoke_emulators_answer() {
    let e = emulators();
    assert_eq!(
        std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok().as_deref(),
        Some(e.dynamodb_url.as_str()),
        "DynamoDB goes to DynamoDB Local"
    );
    for name in ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"] {
        assert_eq!(
            std::env::var(name).ok().as_deref(),
            Some(e.moto_url.as_str()),
            "{name} goes to moto"
        );
    }
    dynamodb_client()
        .await
        .list_tables()
        .send()
        .await
        .expect("DynamoDB Local answers ListTables");
    let sqs = sqs_client().await;
    let q = create_queue(&sqs, &QueueSpec::default()).await;
    assert!(q.url.contains(&q.name), "{} names {}", q.url, q.name);
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3).await;
    s3.head_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("moto has the bucket");
}

/// The port of the tests' Step Functions proxy (`tests/it/sfn_proxy.rs`): moto was started with
/// `MOTO_PORT` set to it, so its Step Functions interpreter sends its Lambda calls there.
pub fn sfn_proxy_port() -> u16 {
    emulators();
    let port = required_env("SYNC_TEST_SFN_PROXY_PORT");
    port.parse()
        .unwrap_or_else(|e| panic!("SYNC_TEST_SFN_PROXY_PORT={port:?}: {e}"))
}

/// A Step Functions client on moto (`AWS_ENDPOINT_URL_SFN`: moto itself, not the proxy).
pub async fn sfn_client() -> aws_sdk_sfn::Client {
    let sdk = sdk_config().await;
    required_env("AWS_ENDPOINT_URL_SFN");
    let conf = aws_sdk_sfn::config::Builder::from(&sdk)
        .retry_config(shared::adapters::aws::retry_config())
        .build();
    aws_sdk_sfn::Client::from_conf(conf)
}
