//! `bench reconcile`'s phases on `S3Spill` against an S3 emulator (moto, from
//! `AWS_ENDPOINT_URL_S3`): the S3 requests of each phase, per operation, counted by an SDK
//! interceptor. An emulator's speed says nothing about S3's, so requests and bytes are the
//! figures here; times are reported only as what they are.

use crate::reconcile::{OpCount, Probe, Requests, Sizes, bench};
use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextRef,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_sdk_s3::operation;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use shared::adapters::aws::{retry_config, sdk_config};
use shared::adapters::s3::S3Spill;
use shared::ports::SpillStore;
use shared::setdiff::DEFAULT_MAX_FAN_IN;
use std::sync::{Arc, Mutex};

/// Arguments of `bench reconcile-s3` (smaller defaults than `bench reconcile`: an emulator).
#[derive(clap::Args, Debug, Clone)]
pub struct ReconcileS3Args {
    /// `(id, version)` pairs on each side.
    #[arg(long, default_value_t = 200_000)]
    pub pairs: usize,
    /// Pairs per spilled run.
    #[arg(long, default_value_t = 20_000)]
    pub run_size: usize,
    /// Pairs per object of the diff's output lists.
    #[arg(long, default_value_t = 10_000)]
    pub chunk_size: usize,
    /// Merge inputs read at once per side (more are merged first).
    #[arg(long, default_value_t = DEFAULT_MAX_FAN_IN)]
    pub max_fan_in: usize,
}

/// The operation a request belongs to, noted before it is serialised.
#[derive(Debug, Clone, Copy)]
struct OpName(&'static str);

impl Storable for OpName {
    type Storer = StoreReplace<Self>;
}

/// The operation of the context's input, by its type.
fn op_name(ctx: &BeforeSerializationInterceptorContextRef<'_>) -> &'static str {
    let input = ctx.input();
    macro_rules! names {
        ($($module:ident :: $ty:ident => $name:literal),* $(,)?) => {
            $(if input.downcast_ref::<operation::$module::$ty>().is_some() {
                return $name;
            })*
        };
    }
    names! {
        put_object::PutObjectInput => "PutObject",
        get_object::GetObjectInput => "GetObject",
        list_objects_v2::ListObjectsV2Input => "ListObjectsV2",
        delete_objects::DeleteObjectsInput => "DeleteObjects",
        delete_object::DeleteObjectInput => "DeleteObject",
        head_object::HeadObjectInput => "HeadObject",
        create_multipart_upload::CreateMultipartUploadInput => "CreateMultipartUpload",
        upload_part::UploadPartInput => "UploadPart",
        complete_multipart_upload::CompleteMultipartUploadInput => "CompleteMultipartUpload",
        create_bucket::CreateBucketInput => "CreateBucket",
        delete_bucket::DeleteBucketInput => "DeleteBucket",
    }
    "other"
}

/// Counts the S3 requests a client sends (each attempt, retries included), per operation, with
/// their request and response body bytes (`Content-Length`).
#[derive(Debug, Default, Clone)]
struct S3Counter(Arc<Mutex<Requests>>);

impl S3Counter {
    fn add(&self, op: &'static str, f: impl FnOnce(&mut OpCount)) {
        if let Ok(mut m) = self.0.lock() {
            f(m.entry(op).or_default());
        }
    }
}

impl Probe for S3Counter {
    fn take(&self) -> Option<Requests> {
        self.0.lock().ok().map(|mut m| std::mem::take(&mut *m))
    }
}

fn op_of(cfg: &ConfigBag) -> &'static str {
    cfg.load::<OpName>().map_or("unknown", |o| o.0)
}

impl Intercept for S3Counter {
    fn name(&self) -> &'static str {
        "S3Counter"
    }

    fn read_before_execution(
        &self,
        ctx: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let name = op_name(ctx);
        cfg.interceptor_state().store_put(OpName(name));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request();
        let sent = req.body().content_length().or_else(|| {
            req.headers()
                .get("content-length")
                .and_then(|v| v.parse().ok())
        });
        self.add(op_of(cfg), |c| {
            c.requests += 1;
            c.bytes_sent += sent.unwrap_or(0);
        });
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        ctx: &BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let received = ctx
            .response()
            .headers()
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.add(op_of(cfg), |c| c.bytes_received += received);
        Ok(())
    }
}

/// The benchmark on a fresh bucket of the emulator (deleted after); `Err` names what failed.
pub fn run(args: &ReconcileS3Args) -> Result<serde_json::Value, String> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or("AWS_ENDPOINT_URL_S3 is not set: start the emulators (bash scripts/emulators.sh start; source .tools/emulators.env)")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let sdk = sdk_config().await;
        let counter = S3Counter::default();
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .retry_config(retry_config())
            .force_path_style(true)
            .interceptor(counter.clone())
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        let bucket = format!("bench-reconcile-{}", uuid::Uuid::new_v4().simple());
        let mut create = client.create_bucket().bucket(&bucket);
        if let Some(region) = sdk.region().filter(|r| r.as_ref() != "us-east-1") {
            let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(region.as_ref().into())
                .build();
            create = create.create_bucket_configuration(location);
        }
        create
            .send()
            .await
            .map_err(|e| format!("create bucket {bucket}: {e:?}"))?;
        let spill = S3Spill::new(client.clone(), &bucket, "reconcile");
        let sizes = Sizes {
            pairs: args.pairs,
            run_size: args.run_size,
            chunk_size: args.chunk_size,
            max_fan_in: args.max_fan_in,
        };
        let out = bench(&spill, &sizes, &counter).await;
        if out.is_err() {
            let _ = spill.delete_prefix("").await;
        }
        let _ = client.delete_bucket().bucket(&bucket).send().await;
        let mut out = out?;
        if let Some(o) = out.as_object_mut() {
            o.insert("bench".into(), "reconcile-s3".into());
            o.insert(
                "store".into(),
                format!(
                    "S3Spill on moto at {endpoint} (bucket {bucket}, prefix reconcile/); \
                     requests counted per attempt by an SDK interceptor; bytes are HTTP body \
                     Content-Lengths; times are the emulator's, not S3's"
                )
                .into(),
            );
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against moto when `AWS_ENDPOINT_URL_S3` names it (`source .tools/emulators.env`).
    #[test]
    fn counts_every_request_of_a_small_run() {
        // Never skipped: scripts/test starts moto and exports its endpoint (by hand:
        // scripts/emulators.sh start && source .tools/emulators.env).
        assert!(
            std::env::var("AWS_ENDPOINT_URL_S3").is_ok(),
            "AWS_ENDPOINT_URL_S3 is not set: run scripts/test, which starts moto"
        );
        let out = run(&ReconcileS3Args {
            pairs: 2_000,
            run_size: 200,
            chunk_size: 16,
            max_fan_in: 4,
        })
        .expect("bench runs");
        assert_eq!(out["diff"]["to_fetch"], 20);
        let ops = &out["requests"]["by_operation"];
        let objects = out["objects_in_spill"].as_u64().unwrap_or(0);
        assert!(objects > 0, "{out}");
        let written = ["write_source", "write_destination"]
            .iter()
            .map(|p| out[p]["runs"].as_u64().unwrap_or(0))
            .sum::<u64>()
            + out["merge_diff"]["objects_written"].as_u64().unwrap_or(0);
        assert_eq!(
            ops["PutObject"]["requests"].as_u64(),
            Some(written),
            "{out}"
        );
        assert!(out["merge_diff"]["premerges"].as_u64() > Some(0), "{out}");
        assert_eq!(out["cleanup"]["objects_deleted"].as_u64(), Some(objects));
        assert_eq!(
            out["cleanup"]["requests"]["by_operation"]["DeleteObjects"]["requests"],
            1
        );
        assert_eq!(
            ops["PutObject"]["bytes_sent"], ops["GetObject"]["bytes_received"],
            "every object read back once: {out}"
        );
    }
}
