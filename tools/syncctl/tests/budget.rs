//! One rate budget shared by separate processes, as deployed functions share the control
//! table: `syncctl serve` (webhook ingest and worker: targeted fetches), `syncctl delta` (a
//! backfill) and `syncctl reconcile` (a listing) run at once on one local store file against
//! one simulator that enforces one limit across all its clients and sends Planning Center's
//! rate-limit headers.
//!
//! - `three_processes_share_one_budget_every_lane_progresses_and_no_request_is_refused` ->
//!   `negative_control_with_each_process_limiting_itself_the_source_refuses_requests`
//!   (`[source.rate_budget] shared = false`: the in-memory limiters alone, as before).
//! - `a_429_pauses_every_process_not_only_the_one_that_got_it` ->
//!   `negative_control_without_the_shared_budget_a_429_pauses_only_its_own_process`.

use shared::adapters::local::LocalStore;
use shared::ports::RecordStore;
use source_sim::{
    Entity, PcoEncoding, RateLimit, RetrySchedule, SimConfig, SimHandle, WebhookScheme,
    WebhookTarget,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WEBHOOK_SECRET: &str = "budget-test-secret";
const PEOPLE: usize = 3_000;
const WEBHOOKS: u64 = 20;
/// The simulator's limit, and the configured one: 30 requests per 3 seconds.
const LIMIT: (u32, u64) = (30, 3);

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("budget")
        .join(format!("{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// The embedded configuration with the test's limit, and `extra` lines under `[source]`.
fn config_file(dir: &Path, extra: &str) -> PathBuf {
    let text = shared::config::EMBEDDED.replace(
        "rate_limit = { requests = 100, per_seconds = 20 }",
        &format!(
            "rate_limit = {{ requests = {}, per_seconds = {} }}\n{extra}",
            LIMIT.0, LIMIT.1
        ),
    );
    assert!(text.contains(&format!("requests = {}", LIMIT.0)));
    let path = dir.join("endpoints.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

fn syncctl(sim: &SimHandle, config: &Path, db: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncctl"));
    cmd.args(args)
        .arg("--db")
        .arg(db)
        .env("SYNC_CONFIG", config)
        .env("SOURCE_BASE_URL", sim.base_url())
        .env("SOURCE_SECRET", "any")
        .env("WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn wait_output(child: Child, what: &str) -> Output {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("joined")
        .expect("the process ran");
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills `serve` when the test ends, however it ends.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    /// Requests the source refused with a 429.
    refused: u64,
    requests: u64,
    delta_pages: u64,
    listed: u64,
    webhooks_synced: u64,
}

/// The simulator: `PEOPLE` people, one limit for every client.
async fn limited_sim() -> SimHandle {
    testkit::sim::start(SimConfig {
        people: PEOPLE,
        donations: 0,
        rate_limit: Some(RateLimit {
            requests: LIMIT.0,
            period: Duration::from_secs(LIMIT.1),
        }),
        ..SimConfig::default()
    })
    .await
}

/// `syncctl delta` (a backfill of the people) and `syncctl reconcile --report-only` (their
/// listing) started at once on `db`, the listing's spill under `dir`.
fn start_backfill_and_listing(
    sim: &SimHandle,
    config: &Path,
    db: &Path,
    dir: &Path,
) -> (Child, Child) {
    let spill = dir.join("spill");
    let delta = syncctl(sim, config, db, &["delta", "--entity", "people", "--json"])
        .spawn()
        .expect("delta starts");
    let reconcile = syncctl(
        sim,
        config,
        db,
        &[
            "reconcile",
            "--entity",
            "people",
            "--report-only",
            "--json",
            "--spill",
            &spill.to_string_lossy(),
        ],
    )
    .spawn()
    .expect("reconcile starts");
    (delta, reconcile)
}

/// The three processes at once; `extra` goes under `[source]` of their configuration.
async fn three_processes(extra: &str) -> Run {
    let sim = limited_sim().await;
    let dir = scratch("three");
    let config = config_file(&dir, extra);
    let db = dir.join("sync.sqlite");
    let store = LocalStore::open(&db).expect("the store file");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _serve = Serve(
        syncctl(&sim, &config, &db, &["serve", "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let up = Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "serve never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.set_webhook_target(Some(
        WebhookTarget::new(
            format!("http://{listen}/webhooks"),
            WebhookScheme::Pco {
                encoding: PcoEncoding::Hex,
            },
            WEBHOOK_SECRET,
        )
        .with_retry(RetrySchedule::fast()),
    ))
    .expect("webhook target");

    let (delta, reconcile) = start_backfill_and_listing(&sim, &config, &db, &dir);

    // A burst of webhooks while the backfill and the listing run.
    let mut versions = Vec::new();
    for id in 1..=WEBHOOKS {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = sim
            .sim()
            .update(Entity::People, id * 50, None)
            .expect("a person");
        versions.push((id * 50, v.updated_at_us));
    }

    let delta = wait_output(delta, "syncctl delta").await;
    let summaries: serde_json::Value = serde_json::from_slice(&delta.stdout).expect("delta JSON");
    let delta_pages = summaries[0]["pages"].as_u64().expect("pages");
    let reconcile = wait_output(reconcile, "syncctl reconcile").await;
    let report: serde_json::Value =
        serde_json::from_slice(&reconcile.stdout).expect("reconcile JSON");
    let listed = report["runs"][0]["source_count"].as_u64().unwrap_or(0);

    // Every webhook's record reaches the store at its version.
    let until = Instant::now() + Duration::from_secs(60);
    let mut webhooks_synced = 0;
    while Instant::now() < until {
        webhooks_synced = 0;
        for (id, v) in &versions {
            if let Some(r) = store.get("people", &id.to_string()).await.expect("get")
                && r.version.delta_us >= *v
            {
                webhooks_synced += 1;
            }
        }
        if webhooks_synced == WEBHOOKS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = sim.sim().stats();
    eprintln!(
        "{extra:?}: {} requests ({} lists, {} gets), {} refused; delta {delta_pages} pages, \
         {listed} listed, {webhooks_synced} webhooks synced",
        stats.requests, stats.list_requests, stats.get_requests, stats.rate_limited
    );
    Run {
        refused: stats.rate_limited,
        requests: stats.requests,
        delta_pages,
        listed,
        webhooks_synced,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_budget_every_lane_progresses_and_no_request_is_refused() {
    let r = three_processes("").await;
    assert_eq!(r.refused, 0, "{} requests", r.requests);
    // Every lane made progress: the backfill read every page, the listing every ID, and every
    // webhook's fetch was written.
    assert!(r.delta_pages >= (PEOPLE / 100) as u64, "{}", r.delta_pages);
    assert_eq!(r.listed, PEOPLE as u64);
    assert_eq!(r.webhooks_synced, WEBHOOKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_with_each_process_limiting_itself_the_source_refuses_requests() {
    let r = three_processes("rate_budget = { shared = false }").await;
    assert!(r.refused > 0, "{} requests, none refused", r.requests);
}

/// A backfill and a listing in two processes; once both are running, the source answers one
/// request (whichever comes next) 429 with `Retry-After: 4`. Answers the requests the source
/// received in the 3.5 s after that 429.
async fn requests_during_a_retry_after(extra: &str) -> u64 {
    let sim = limited_sim().await;
    let dir = scratch("pause");
    let config = config_file(&dir, extra);
    let db = dir.join("sync.sqlite");
    let (delta, reconcile) = start_backfill_and_listing(&sim, &config, &db, &dir);
    let s = sim.sim();
    let started = Instant::now();
    while s.stats().list_requests < 6 {
        assert!(started.elapsed() < Duration::from_secs(60), "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.push_fault(source_sim::Fault::RateLimited {
        retry_after_secs: 4,
    });
    while s.stats().rate_limited == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no 429 served");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let at_429 = s.stats().requests;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let during = s.stats().requests - at_429;
    wait_output(delta, "syncctl delta").await;
    wait_output(reconcile, "syncctl reconcile").await;
    eprintln!("{extra:?}: {during} requests during the pause");
    during
}

/// What a process may still send after another's 429: the unspent tokens of the slice in its
/// hand (a background slice is at most 6 tokens at the test's limit).
const IN_HAND: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_process_not_only_the_one_that_got_it() {
    let during = requests_during_a_retry_after("").await;
    assert!(during <= IN_HAND, "{during} requests during the pause");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_the_shared_budget_a_429_pauses_only_its_own_process() {
    let during = requests_during_a_retry_after("rate_budget = { shared = false }").await;
    assert!(during > IN_HAND * 2, "{during} requests during the pause");
}

/// Processes started together on a new store file all open it (SQLite refuses some of the
/// locks of a new file's first opening at once, without its busy handler; the store tries
/// again). Twelve `syncctl status` at once, twenty times: without the retry, one round in a
/// dozen or so failed with `initialise database: database is locked`.
#[test]
fn processes_opening_a_new_store_file_together_all_succeed() {
    for round in 0..20 {
        let dir = scratch("open");
        let db = dir.join("sync.sqlite");
        let children: Vec<Child> = (0..12)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_syncctl"))
                    .args(["status", "--db"])
                    .arg(&db)
                    .env_remove("SYNC_CONFIG")
                    .env("SOURCE_SECRET", "any")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("syncctl starts")
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().expect("ran");
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
