//! `bench cost` (issue 16, "Cost per million records"): what each path of the engine asks of
//! AWS for ~1 KB records, priced at the us-east-1 list prices of [`prices::PRICES`].
//!
//! Each path runs the library code the functions' handlers run (`run_delta`, `Ingest::handle`,
//! `process_batch`, `reconcile::dispatch_with`), in this process, against the emulators
//! (DynamoDB Local, moto's SQS and S3) through clients built from `shared::adapters::aws`'s SDK
//! configuration with a [`meter::Meter`] interceptor, so the counted requests are the real
//! ones. The simulator runs in the same process on threads of its own.
//!
//! What is modelled rather than counted:
//! - Lambda: one invocation per delta run, per webhook request, per worker batch (the event
//!   source mapping's batches of up to 10), per reconciliation step; each billed for the CPU
//!   time the handler's work took on the thread running it (rounded up to the millisecond, at
//!   least 1 ms) at the function's `MemorySize` from `template.yaml`. Waiting on the network
//!   (DynamoDB, SQS, the source) is not billed here, though Lambda bills it: the emulators'
//!   latency is not AWS's. The source requests per path are reported for that reason.
//! - The event source mapping's ReceiveMessage and DeleteMessageBatch are made here with the
//!   metered SQS client (long polling; the idle polling of an empty queue is a monthly cost, not
//!   a per-record one).
//! - Step Functions: the states one execution enters (checked against
//!   `infra/reconcile.asl.json`), one transition each.
//! - CloudWatch Logs: the tracing lines (counted through the Lambda subscriber's settings), the
//!   EMF lines each handler publishes, Lambda's START/END/REPORT lines, and for webhooks API
//!   Gateway's access-log line (the template's format); 26 bytes per event added.
//! - API Gateway: one HTTP API request per webhook delivery.

mod handlers;
mod infra;
mod logs;
mod meter;
mod paths;
mod prices;
mod report;

use crate::measure::peak_rss_bytes;
use logs::Logs;
use meter::{Meters, Service};
use prices::PRICES;
use report::Env;
use shared::adapters::aws::{AwsError, retry_config, sdk_config};
use shared::adapters::s3::S3Spill;
use shared::ports::SpillStore;
use source_sim::SimConfig;
use std::collections::HashMap;

/// The bound on records per path.
const MAX_RECORDS: u64 = 20_000;

#[derive(clap::Args, Debug, Clone)]
pub struct CostArgs {
    /// Records of the delta paths and of the reconciliation (1,000 to 20,000; the figures are
    /// scaled per million, and agree within 1% from 5,000 to 20,000 records; DynamoDB Local
    /// takes minutes per path past 10,000).
    #[arg(long, default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1_000..=MAX_RECORDS))]
    pub records: u64,
    /// Webhook events of the batched path (a busy queue: the worker takes batches of 10).
    #[arg(long, default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(100..=MAX_RECORDS))]
    pub webhook_events: u64,
    /// Webhook events of the trickle path (each event alone in its worker invocation).
    #[arg(long, default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(100..=MAX_RECORDS))]
    pub trickle_events: u64,
}

const DELTA_FN: &str = "delta-sync";
const INGEST_FN: &str = "webhook-ingest";
const WORKER_FN: &str = "sync-worker";
const RECONCILE_FN: &str = "reconcile";
const FUNCTIONS: [&str; 4] = [DELTA_FN, INGEST_FN, WORKER_FN, RECONCILE_FN];
const ENTITY: &str = "people";
const SECRET: &str = "bench-cost-webhook-secret";

/// Issue 16's targets, in dollars per million records (the reconciliation: per run of an
/// unchanged 1,000,000-record entity).
const TARGET_DELTA: f64 = 2.50;
const TARGET_WEBHOOKS: f64 = 5.00;
const TARGET_RECONCILE_1M: f64 = 0.50;

/// Runs the benchmark and prints its JSON as the last line of stdout (compact), then exits.
pub fn main(args: &CostArgs) -> ! {
    match run(args) {
        Ok(out) => {
            println!("{out}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("cost bench failed: {e}");
            std::process::exit(1)
        }
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[cost] {}", msg.as_ref());
}

/// CPU time of the calling thread: the engine's share of this process.
fn thread_cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0.0, |u| {
        let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        s(u.user_time()) + s(u.system_time())
    })
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub fn run(args: &CostArgs) -> Result<serde_json::Value, String> {
    for var in [
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_S3",
    ] {
        if std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
            return Err(format!(
                "{var} is not set: start the emulators (bash scripts/emulators.sh start; \
                 source .tools/emulators.env)"
            ));
        }
    }
    let template = std::fs::read_to_string(infra::TEMPLATE)
        .map_err(|e| format!("{}: {e}", infra::TEMPLATE))?;
    let memory = infra::memory_sizes(&template, &FUNCTIONS)?;
    let machine = infra::StateMachine::parse(
        &std::fs::read_to_string(infra::ASL).map_err(|e| format!("{}: {e}", infra::ASL))?,
    )?;
    let access_log_line = infra::access_log_line(&template)?;
    let schedule = infra::delta_runs_per_month(&template);
    let logs = Logs::install()?;
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("source-sim")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let n = args.records;
    let small = (n / 10).max(100);
    let start = |people: u64| {
        sim_rt.block_on(source_sim::start(SimConfig {
            people: people as usize,
            donations: 0,
            ..SimConfig::default()
        }))
    };
    let sim = start(n).map_err(|e| format!("simulator: {e}"))?;
    let sim_small = start(small).map_err(|e| format!("simulator: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let out = rt.block_on(async {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let names = Names::new(&suffix);
        let meters = Meters::new(HashMap::from([
            (names.records.clone(), "records"),
            (names.records_small.clone(), "records"),
            (names.control.clone(), "control"),
            (names.control_reread.clone(), "control"),
            (names.control_small.clone(), "control"),
        ]));
        let env = Env {
            meters,
            logs,
            memory: &memory,
            machine: &machine,
            access_log_line: &access_log_line,
        };
        let sdk = sdk_config().await;
        let clients = Clients {
            ddb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(&sdk)
                    .retry_config(retry_config())
                    .interceptor(env.meters.meter(Service::Dynamodb))
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(&sdk)
                    .retry_config(retry_config())
                    .interceptor(env.meters.meter(Service::Sqs))
                    .build(),
            ),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .retry_config(retry_config())
                    .force_path_style(true)
                    .interceptor(env.meters.meter(Service::S3))
                    .build(),
            ),
        };
        let region = sdk.region().map(|r| r.as_ref().to_owned());
        let r = paths::paths(
            &env,
            &clients,
            &names,
            region.as_deref(),
            &sim,
            &sim_small,
            args,
        )
        .await;
        progress("cleaning up (tables, queue, bucket)");
        clean_up(&clients, &names).await;
        r
    });
    sim_rt.block_on(async {
        sim.shutdown().await;
        sim_small.shutdown().await;
    });
    let mut out = out?;
    summarise(&mut out, schedule);
    out.insert("functions_memory_mb".into(), serde_json::json!(memory));
    out.insert("prices".into(), PRICES.json());
    out.insert(
        "wall_seconds".into(),
        round(t0.elapsed().as_secs_f64(), 1).into(),
    );
    out.insert("peak_rss_bytes".into(), peak_rss_bytes().into());
    Ok(serde_json::Value::Object(out))
}

/// The priced paths (under `_runs`) moved to `paths`, the figure of each path in
/// `usd_per_million_records` (null for the idle run, priced per run and month beside it), and
/// the targets checked.
fn summarise(
    out: &mut serde_json::Map<String, serde_json::Value>,
    schedule: Option<(String, f64)>,
) {
    let mut paths = serde_json::Map::new();
    let mut per_million = serde_json::Map::new();
    if let Some(serde_json::Value::Object(runs)) = out.remove("_runs") {
        for (name, mut v) in runs {
            if let Some(usd) = v["usd_per_run"].as_f64() {
                v["usd_per_million_records"] = serde_json::Value::Null;
                let mut idle = serde_json::json!({"usd_per_run": round(usd, 6)});
                if let Some((rate, runs_per_month)) = &schedule {
                    let month = round(usd * runs_per_month, 4);
                    v["usd_per_month_at_the_default_schedule"] = month.into();
                    idle["usd_per_month"] = month.into();
                    idle["schedule"] = serde_json::json!({
                        "template_default": rate, "runs_per_30_day_month": runs_per_month,
                    });
                }
                out.insert(name.clone(), idle);
            }
            per_million.insert(name.clone(), v["usd_per_million_records"].clone());
            paths.insert(name, v);
        }
    }
    let at_most = |name: &str, limit: f64| {
        per_million
            .get(name)
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|v| v <= limit)
    };
    let zero_writes = |name: &str| {
        paths
            .get(name)
            .and_then(|p| p["dynamodb_records_table_write_units"].as_f64())
            == Some(0.0)
    };
    let zero_rereads = [
        "delta_reread_unchanged",
        "delta_idle",
        "reconcile_unchanged",
    ]
    .iter()
    .all(|p| zero_writes(p));
    let meets = serde_json::json!({
        "delta_backfill": at_most("delta_backfill", TARGET_DELTA),
        "delta_incremental": at_most("delta_incremental", TARGET_DELTA),
        "webhooks": at_most("webhooks", TARGET_WEBHOOKS),
        "webhooks_trickle": at_most("webhooks_trickle", TARGET_WEBHOOKS),
        "reconcile_unchanged_1m": at_most("reconcile_unchanged", TARGET_RECONCILE_1M),
        "zero_writes_for_unchanged_rereads": zero_rereads,
    });
    let all = meets
        .as_object()
        .is_some_and(|m| m.values().all(|v| v.as_bool() == Some(true)));
    out.insert("paths".into(), paths.into());
    out.insert("usd_per_million_records".into(), per_million.into());
    out.insert(
        "targets".into(),
        serde_json::json!({
            "delta_backfill_usd_per_million_records_at_most": TARGET_DELTA,
            "delta_incremental_usd_per_million_records_at_most": TARGET_DELTA,
            "webhooks_usd_per_million_events_at_most": TARGET_WEBHOOKS,
            "webhooks_trickle_usd_per_million_events_at_most": TARGET_WEBHOOKS,
            "reconcile_unchanged_1m_record_entity_usd_at_most": TARGET_RECONCILE_1M,
            "zero_writes_for_unchanged_rereads": "records-table write units of delta_reread_unchanged, delta_idle and reconcile_unchanged are 0",
        }),
    );
    out.insert("meets_targets".into(), meets);
    out.insert("meets_all_targets".into(), all.into());
}

struct Names {
    records: String,
    control: String,
    control_reread: String,
    records_small: String,
    control_small: String,
    queue: String,
    bucket: String,
}

impl Names {
    fn new(suffix: &str) -> Self {
        Names {
            records: format!("bench-cost-records-{suffix}"),
            control: format!("bench-cost-control-{suffix}"),
            control_reread: format!("bench-cost-control-reread-{suffix}"),
            records_small: format!("bench-cost-records-small-{suffix}"),
            control_small: format!("bench-cost-control-small-{suffix}"),
            queue: format!("bench-cost-{suffix}"),
            bucket: format!("bench-cost-{suffix}"),
        }
    }
}

struct Clients {
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
}

async fn clean_up(c: &Clients, names: &Names) {
    for t in [
        &names.records,
        &names.control,
        &names.control_reread,
        &names.records_small,
        &names.control_small,
    ] {
        let _ = c.ddb.delete_table().table_name(t).send().await;
    }
    if let Ok(q) = c.sqs.get_queue_url().queue_name(&names.queue).send().await
        && let Some(url) = q.queue_url()
    {
        let _ = c.sqs.delete_queue().queue_url(url).send().await;
    }
    let _ = S3Spill::new(c.s3.clone(), &names.bucket, "")
        .delete_prefix("")
        .await;
    let _ = c.s3.delete_bucket().bucket(&names.bucket).send().await;
}

async fn create_bucket(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    region: Option<&str>,
) -> Result<(), String> {
    let mut create = s3.create_bucket().bucket(bucket);
    if let Some(region) = region.filter(|r| *r != "us-east-1") {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(region.into())
                .build(),
        );
    }
    create
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("create bucket {bucket}: {}", AwsError::new(e)))
}
