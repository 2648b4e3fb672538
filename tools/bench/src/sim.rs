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
struct SimProcess {
    child: Child,
    url: String,
}

impl SimProcess {
    fn start(people: usize) -> SimProcess {
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
