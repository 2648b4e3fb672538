//! `bench budget`: one shared rate budget under a backfill (issue 14). The simulator runs as a
//! separate process with Planning Center's limit (`--rate-limit 100/20` by default, one
//! fixed window for every client) and its rate-limit headers. Three source clients stand for
//! the three functions, each with its own `Budget` on its own connection to one store file:
//! a delta backfill, a reconciliation listing, and the worker (`process_batch`, the deployed
//! worker's code) fetching after each webhook.
//!
//! Two phases: *idle* (webhooks only) and *busy* (the same webhooks during the backfill and
//! the listing). A webhook's freshness is the time from the change at the source to the record
//! written by the worker (the ingest and the queue, the same in both phases, are left out).
//! Budget store calls are counted by a wrapper on the local store (each one transaction), or,
//! with `--dynamodb`, the budget lives in DynamoDB Local and an SDK interceptor counts its real
//! requests (a slice whose first form guess is wrong costs two).

use crate::sim::SimProcess;
use async_trait::async_trait;
use futures::StreamExt;
use shared::adapters::local::LocalStore;
use shared::config::{AuthConfig, Config, RateLimit};
use shared::core::budget::{Limit, SliceAnswer, SliceAsk};
use shared::core::timefmt::now_us;
use shared::error::StoreError;
use shared::model::Micros;
use shared::ports::{BudgetStore, SourceApi};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, run_delta};
use shared::sync::worker::{InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BudgetArgs {
    /// The source's limit, requests per window (Planning Center: 100).
    #[arg(long, default_value_t = 100)]
    pub requests: u32,
    /// The window in seconds (Planning Center: 20).
    #[arg(long, default_value_t = 20)]
    pub window_secs: u64,
    /// Webhooks per phase.
    #[arg(long, default_value_t = 120)]
    pub webhooks: usize,
    /// Time between two webhooks, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub gap_ms: u64,
    /// People at the source (the backfill's size; more than the busy phase can read).
    #[arg(long, default_value_t = 60_000)]
    pub people: usize,
    /// The store file (deleted first).
    #[arg(long, default_value = "target/bench-budget.sqlite")]
    pub db: PathBuf,
    /// Largest background slice (`[source.rate_budget] background_slice`; default the
    /// configuration's).
    #[arg(long)]
    pub background_slice: Option<u32>,
    /// Keep the budget in DynamoDB (Local, from AWS_ENDPOINT_URL_DYNAMODB; fresh tables) and
    /// count its real requests (an SDK interceptor: conditional failures and retries
    /// included) instead of the local store's calls.
    #[arg(long)]
    pub dynamodb: bool,
}

/// Counts the calls to a budget store.
struct Counted {
    inner: LocalStore,
    calls: Arc<AtomicU64>,
}

#[async_trait]
impl BudgetStore for Counted {
    async fn take_slice(&self, account: &str, ask: SliceAsk) -> Result<SliceAnswer, StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.inner.take_slice(account, ask).await
    }
    async fn pause_budget(&self, account: &str, until_us: Micros) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.inner.pause_budget(account, until_us).await
    }
    async fn learn_limit(&self, account: &str, limit: Limit) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.inner.learn_limit(account, limit).await
    }
    async fn give_back(
        &self,
        account: &str,
        end: Micros,
        back: Micros,
    ) -> Result<bool, StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.inner.give_back(account, end, back).await
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

async fn sim_stats(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let text = http
        .get(format!("{url}/__admin/stats"))
        .send()
        .await
        .expect("stats")
        .text()
        .await
        .expect("stats body");
    serde_json::from_str(&text).expect("stats JSON")
}

/// One webhook: a change at the source, then the worker's batch of its one message; the
/// latency from the change to the record written.
async fn webhook(
    http: &reqwest::Client,
    url: &str,
    deps: &WorkerDeps<'_>,
    id: usize,
    n: usize,
) -> Result<f64, String> {
    let t0 = Instant::now();
    let resp = http
        .patch(format!("{url}/__admin/people/records/{id}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let want = v["updated_at_us"].as_i64().ok_or("no updated_at_us")?;
    let body = QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind: MessageKind::Webhook,
        entity: "people".into(),
        id: id.to_string(),
        event_id: Some(format!("bench-{n}")),
        action: Some(EnvelopeAction::Upsert),
        reason: None,
        received_at: now_us(),
    }
    .to_body();
    let msg = [InMessage {
        message_id: format!("m-{n}"),
        body,
    }];
    let rep = process_batch(deps, &msg, &WorkerOptions::default()).await;
    if !rep.failed.is_empty() {
        return Err(format!("webhook {n} failed"));
    }
    let got = deps
        .records
        .get("people", &id.to_string())
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.version.delta_us);
    if got < Some(want) {
        return Err(format!("people {id}: {got:?} < {want}"));
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// `count` webhooks, one every `gap`; latencies in ms and failures.
async fn webhooks(
    http: &reqwest::Client,
    url: &str,
    deps: &WorkerDeps<'_>,
    count: usize,
    gap: Duration,
    first: usize,
) -> (Vec<f64>, usize) {
    let mut lat = Vec::with_capacity(count);
    let mut failed = 0;
    let mut next = Instant::now();
    for n in first..first + count {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        match webhook(http, url, deps, 1 + (n * 7919) % 50_000, n).await {
            Ok(ms) => lat.push(ms),
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, failed)
}

pub fn run(a: &BudgetArgs) -> serde_json::Value {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = a.db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let limit = format!("{}/{}", a.requests, a.window_secs);
    let sim = SimProcess::start_with(a.people, &["--rate-limit", &limit]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut cfg =
            Config::from_toml_str(shared::config::EMBEDDED, Path::new("bench")).expect("config");
        cfg.source.base_url = sim.url.clone();
        cfg.source.auth = AuthConfig::None;
        cfg.source.rate_limit = RateLimit {
            requests: a.requests,
            per_seconds: a.window_secs as f64,
        };
        if let Some(k) = a.background_slice {
            cfg.source.rate_budget.background_slice = k;
        }
        // Three "processes": a client, a budget and a store connection each.
        let calls = Arc::new(AtomicU64::new(0));
        let dynamo = if a.dynamodb {
            let sdk = shared::adapters::aws::sdk_config().await;
            let counter = crate::sim::RequestCounter(calls.clone());
            let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
                .interceptor(counter)
                .build();
            let ddb = aws_sdk_dynamodb::Client::from_conf(conf);
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            let (r, c) = (
                format!("bench-records-{suffix}"),
                format!("bench-control-{suffix}"),
            );
            shared::adapters::dynamodb::create_tables(&ddb, &r, &c)
                .await
                .expect("tables on DynamoDB Local (AWS_ENDPOINT_URL_DYNAMODB)");
            calls.store(0, Relaxed);
            Some((ddb, r, c))
        } else {
            None
        };
        let open = || {
            let store = LocalStore::open(&a.db).expect("the store file");
            let budget: Arc<dyn BudgetStore> = match &dynamo {
                Some((ddb, r, c)) => Arc::new(shared::adapters::dynamodb::stores(ddb.clone(), r, c).1),
                None => Arc::new(Counted {
                    inner: store.clone(),
                    calls: calls.clone(),
                }),
            };
            let client = SourceClient::new(&cfg, None)
                .expect("client")
                .with_budget_in(budget);
            (store, client)
        };
        let (delta_store, delta_client) = open();
        let (_recon_store, recon_client) = open();
        let (worker_store, worker_client) = open();
        let worker = WorkerDeps {
            source: &worker_client,
            records: &worker_store,
            control: &worker_store,
        };
        let http = reqwest::Client::new();
        let gap = Duration::from_millis(a.gap_ms);

        // Idle: webhooks only.
        let (idle, idle_failed) = webhooks(&http, &sim.url, &worker, a.webhooks, gap, 0).await;
        let idle_stats = sim_stats(&http, &sim.url).await;
        let idle_calls = calls.load(Relaxed);

        // Busy: the same webhooks during a backfill and a listing.
        let t0 = Instant::now();
        let backfill = async {
            let opts = DeltaOptions::default();
            let _ = run_delta(&delta_client, &delta_store, &delta_store, "people", &opts).await;
        };
        let listing = async {
            let mut pages = recon_client.stream_ids("people");
            let mut n = 0u64;
            while let Some(p) = pages.next().await {
                if p.is_err() {
                    break;
                }
                n += 1;
            }
            n
        };
        let hooks = webhooks(&http, &sim.url, &worker, a.webhooks, gap, a.webhooks);
        let ((busy, busy_failed), busy_stats) = tokio::select! {
            out = hooks => (out, sim_stats(&http, &sim.url).await),
            _ = backfill => panic!("the backfill ended before the webhooks: raise --people"),
            _ = listing => panic!("the listing ended before the webhooks: raise --people"),
        };
        let busy_secs = t0.elapsed().as_secs_f64();
        let total_calls = calls.load(Relaxed);
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let busy_requests = n(&busy_stats, "requests") - n(&idle_stats, "requests");
        let all_requests = n(&busy_stats, "requests");
        let busy_429 = n(&busy_stats, "rate_limited") - n(&idle_stats, "rate_limited");
        let per_window = busy_requests as f64 / busy_secs * a.window_secs as f64;
        let lane = |c: &SourceClient| {
            c.budget()
                .map(|b| serde_json::to_value(b.stats()).unwrap_or_default())
                .unwrap_or_default()
        };
        let plan = delta_client.budget().map(|b| b.plan());
        serde_json::json!({
            "limit": {"requests": a.requests, "window_secs": a.window_secs},
            "plan": plan.map(|p| serde_json::json!({
                "interval_ms": round(p.interval_us as f64 / 1e3, 1),
                "background_slice": p.background_slice,
                "targeted_slice": p.targeted_slice,
                "lateness_ms": p.lateness_us / 1000,
                "steady_requests_per_window": round(p.steady_requests(), 1),
                "worst_window": p.worst_window(),
            })),
            "busy_secs": round(busy_secs, 1),
            "source_requests_busy": busy_requests,
            "requests_per_window_busy": round(per_window, 1),
            "use_of_limit": round(per_window / f64::from(a.requests), 3),
            "rate_limited_busy": busy_429,
            "rate_limited_total": n(&busy_stats, "rate_limited"),
            "freshness_ms": {
                "idle": {"p50": round(percentile(&idle, 0.5), 1), "p99": round(percentile(&idle, 0.99), 1), "n": idle.len(), "failed": idle_failed},
                "busy": {"p50": round(percentile(&busy, 0.5), 1), "p99": round(percentile(&busy, 0.99), 1), "n": busy.len(), "failed": busy_failed},
                "p99_busy_over_idle": round(percentile(&busy, 0.99) / percentile(&idle, 0.99), 2),
            },
            "budget_store": if a.dynamodb { "dynamodb (requests counted by an SDK interceptor)" } else { "local (calls counted)" },
            "budget_store_calls": {"idle": idle_calls, "total": total_calls},
            "dynamodb_requests_per_source_request": round(total_calls as f64 / all_requests.max(1) as f64, 3),
            "dynamodb_requests_per_source_request_busy": round((total_calls - idle_calls) as f64 / busy_requests.max(1) as f64, 3),
            "lanes": {
                "delta": lane(&delta_client),
                "reconcile": lane(&recon_client),
                "worker": lane(&worker_client),
            },
            "note": "freshness: change at the source to written by the worker's process_batch (ingest and queue left out, the same in both phases); store calls: one conditional UpdateItem each on DynamoDB",
        })
    })
}
