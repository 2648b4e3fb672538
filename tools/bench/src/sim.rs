//! Benchmarks against the simulator running as a separate process (its CPU is not ours).

use crate::measure::{cpu_time, peak_rss_bytes};
use futures::StreamExt;
use shared::adapters::local::LocalStore;
use shared::config::{AuthConfig, Config, RateLimit};
use shared::ports::SourceApi;
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, run_delta};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SourceOp {
    StreamIds,
    ListChanged,
}

/// The simulator binary beside this one, serving `people` records; killed on drop.
pub(crate) struct SimProcess {
    child: Child,
    pub(crate) url: String,
}

impl SimProcess {
    fn start(people: usize) -> SimProcess {
        Self::start_with(people, &[])
    }

    /// With more command-line arguments (`--rate-limit 100/20`, ...).
    pub(crate) fn start_with(people: usize, extra: &[&str]) -> SimProcess {
        let exe = std::env::current_exe().expect("own path");
        let sim = exe.with_file_name("source-sim");
        assert!(
            sim.exists(),
            "build the simulator first: cargo build --profile bench-fast -p source-sim"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(sim)
            .args([
                "--port",
                &port.to_string(),
                "--people",
                &people.to_string(),
                "--donations",
                "0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("simulator starts");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out)
            .read_line(&mut line)
            .expect("simulator prints its URL");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        SimProcess { child, url }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(url: &str) -> SourceClient {
    let mut cfg =
        Config::from_toml_str(shared::config::EMBEDDED, Path::new("bench")).expect("config");
    cfg.source.base_url = url.to_owned();
    cfg.source.auth = AuthConfig::None;
    cfg.source.rate_limit = RateLimit {
        requests: 1_000_000,
        per_seconds: 1.0,
    };
    SourceClient::new(&cfg, None).expect("client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn source_bench(op: SourceOp, records: usize) -> serde_json::Value {
    let sim = SimProcess::start(records);
    let c = client(&sim.url);
    let (c0, t0) = (cpu_time(), Instant::now());
    let n = runtime().block_on(async {
        let mut n = 0usize;
        match op {
            SourceOp::StreamIds => {
                let mut s = c.stream_ids("people");
                while let Some(p) = s.next().await {
                    n += p.expect("page").ids.len();
                }
            }
            SourceOp::ListChanged => {
                let mut s = c.list_changed_since("people", None);
                while let Some(p) = s.next().await {
                    n += p.expect("page").records.len();
                }
            }
        }
        n
    });
    let (cpu, wall) = ((cpu_time() - c0).as_secs_f64(), t0.elapsed().as_secs_f64());
    let calls = c.stats().requests;
    let optimal = records.div_ceil(100) as f64;
    serde_json::json!({
        "bench": "source",
        "op": format!("{op:?}"),
        "records": n,
        "records_per_wall_second": (n as f64 / wall).round(),
        "records_per_cpu_second": (n as f64 / cpu).round(),
        "api_calls": calls,
        "optimal_calls": optimal,
        "calls_over_optimal": ((calls as f64 / optimal) * 1000.0).round() / 1000.0,
        "bytes": c.stats().bytes,
        "peak_rss_bytes": peak_rss_bytes(),
        "wall_seconds": (wall * 10.0).round() / 10.0,
    })
}

pub fn delta_bench(records: usize, db: &Path) -> serde_json::Value {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let sim = SimProcess::start(records);
    let c = client(&sim.url);
    let store = LocalStore::open(db).expect("local store");
    crate::measure::settle();
    let rt = runtime();
    let run = |label: &str| {
        let before = c.stats().requests;
        let (c0, t0) = (cpu_time(), Instant::now());
        let s = rt
            .block_on(run_delta(
                &c,
                &store,
                &store,
                "people",
                &DeltaOptions::default(),
            ))
            .expect("delta run");
        let (cpu, wall) = ((cpu_time() - c0).as_secs_f64(), t0.elapsed().as_secs_f64());
        serde_json::json!({
            "run": label,
            "status": s.status.as_str(),
            "seen": s.seen,
            "written": s.written(),
            "unchanged": s.unchanged,
            "records_per_wall_second": (s.seen as f64 / wall).round(),
            "records_per_cpu_second": (s.seen as f64 / cpu).round(),
            "cpu_us_per_record": ((cpu * 1e6 / s.seen.max(1) as f64) * 100.0).round() / 100.0,
            "api_calls": c.stats().requests - before,
            "optimal_calls": (s.seen as usize).div_ceil(100),
            "wall_seconds": (wall * 10.0).round() / 10.0,
        })
    };
    let first = run("backfill");
    let second = run("re-run, nothing changed (overlap re-read only)");
    serde_json::json!({
        "bench": "delta",
        "store": "local (SQLite, on disk)",
        "records": records,
        "runs": [first, second],
        "peak_rss_bytes": peak_rss_bytes(),
    })
}

/// Counts the DynamoDB requests a client sends (retries included).
#[derive(Debug, Default, Clone)]
pub(crate) struct RequestCounter(pub(crate) std::sync::Arc<std::sync::atomic::AtomicU64>);

impl aws_sdk_dynamodb::config::Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }
    fn read_before_transmit(
        &self,
        _ctx: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Delta sync into DynamoDB Local: what the engine asks of DynamoDB per record (emulator
/// speed says nothing about DynamoDB's, so no throughput is reported).
pub fn delta_dynamodb_bench(records: usize) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let sim = SimProcess::start(records);
    let c = client(&sim.url);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sdk = shared::adapters::aws::sdk_config().await;
        let counter = RequestCounter::default();
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(counter.clone()).build();
        let ddb = aws_sdk_dynamodb::Client::from_conf(conf);
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let (rt_name, ct_name) = (format!("bench-records-{suffix}"), format!("bench-control-{suffix}"));
        shared::adapters::dynamodb::create_tables(&ddb, &rt_name, &ct_name).await.expect("tables");
        let (records_store, control) = shared::adapters::dynamodb::stores(ddb.clone(), &rt_name, &ct_name);
        let mut runs = Vec::new();
        for label in ["backfill", "re-run, nothing changed"] {
            let before = counter.0.load(Relaxed);
            let s = run_delta(&c, &records_store, &control, "people", &DeltaOptions::default()).await.expect("delta run");
            let requests = counter.0.load(Relaxed) - before;
            runs.push(serde_json::json!({
                "run": label,
                "seen": s.seen,
                "written": s.written(),
                "unchanged": s.unchanged,
                "pages": s.pages,
                "dynamodb_requests": requests,
                "requests_per_record_seen": ((requests as f64 / s.seen.max(1) as f64) * 1000.0).round() / 1000.0,
            }));
        }
        let item = ddb.get_item().table_name(&rt_name).key("pk", aws_sdk_dynamodb::types::AttributeValue::S("people#1".into())).send().await.expect("get");
        let item_bytes: usize = item.item().map(|i| i.iter().map(|(k, v)| k.len() + format!("{v:?}").len()).sum()).unwrap_or(0);
        serde_json::json!({
            "bench": "delta-dynamodb",
            "store": "DynamoDB Local (requests counted by an SDK interceptor)",
            "records": records,
            "runs": runs,
            "approx_item_bytes": item_bytes,
            "write_units_per_written_record": "ceil(item size / 1 KB) per UpdateItem (2 for these items); each page adds one BatchGetItem (1 RCU per item up to 4 KB, strongly consistent), so an unchanged record costs no write request and no write unit",
        })
    })
}
