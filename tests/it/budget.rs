//! The shared rate budget in the source client (issue 14), against the simulator over HTTP, on
//! the local store. Separate processes sharing it: `tools/syncctl/tests/budget.rs`.
//!
//! - The source's rate-limit headers set the budget:
//!   `a_limit_the_source_announces_replaces_the_configured_one` ->
//!   `negative_control_without_the_header_names_the_configured_limit_meets_429s`.
//! - A short budget stops a run at its checkpoint instead of failing it:
//!   `a_delta_run_the_budget_cannot_serve_stops_partial_with_stopped_by_budget`,
//!   `a_listing_step_the_budget_cannot_serve_stops_and_the_next_invocation_resumes`.

use crate::source_client::client;
use crate::trust::{Local, deps, local, planned, source_step};
use futures::StreamExt;
use shared::adapters::local::LocalStore;
use shared::config::{Config, RateHeaders, RateLimit};
use shared::core::timefmt::now_us;
use shared::ports::{BudgetStore, ControlStore, JobKind, SourceApi};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, RunStatus, run_delta};
use shared::sync::reconcile::{self as r, ReconcileDeps, ReconcileOptions};
use source_sim::{RateLimit as SimLimit, SimConfig, SimHandle};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::sim;

const E: &str = "people";

/// `people` people behind the simulator's limit of `requests` per `secs`.
async fn limited(people: usize, requests: u32, secs: u64) -> SimHandle {
    sim::start(SimConfig {
        rate_limit: Some(SimLimit {
            requests,
            period: Duration::from_secs(secs),
        }),
        ..sim::people_only(people)
    })
    .await
}

fn headers() -> RateHeaders {
    RateHeaders {
        limit: "X-PCO-API-Request-Rate-Limit".into(),
        period: "X-PCO-API-Request-Rate-Period".into(),
    }
}

/// A client configured for 4,000 requests per 2 s (the simulator allows 20), its budget in
/// `store`, pages of 20 IDs; the rate-limit headers read when `learn`.
fn overconfident(h: &SimHandle, store: Arc<LocalStore>, learn: bool) -> SourceClient {
    client(h, |c: &mut Config| {
        c.source.rate_limit = RateLimit {
            requests: 4_000,
            per_seconds: 2.0,
        };
        c.source.rate_headers = learn.then(headers);
        c.source.max_page_size = 20;
    })
    .with_budget_in(store)
}

/// An ID listing of 1,000 people (50 pages): the requests the simulator refused.
async fn listing_refusals(learn: bool) -> (u64, SourceClient) {
    let h = limited(1_000, 20, 2).await;
    let store = Arc::new(LocalStore::in_memory().unwrap());
    let c = overconfident(&h, store, learn);
    let mut pages = c.stream_ids(E);
    let mut ids = 0;
    while let Some(p) = pages.next().await {
        ids += p.expect("a page").ids.len();
    }
    drop(pages);
    assert_eq!(ids, 1_000);
    (h.sim().stats().rate_limited, c)
}

#[tokio::test]
async fn a_limit_the_source_announces_replaces_the_configured_one() {
    let (refused, c) = listing_refusals(true).await;
    // The first slice goes out at the configured pace (6 requests, under the source's 20);
    // the headers of its answers set the plan for every later slice.
    assert_eq!(refused, 0);
    let plan = c.budget().unwrap().plan();
    assert_eq!(
        (plan.limit.requests, plan.limit.per_us),
        (20, 2_000_000),
        "{plan:?}"
    );
}

#[tokio::test]
async fn negative_control_without_the_header_names_the_configured_limit_meets_429s() {
    let (refused, c) = listing_refusals(false).await;
    assert!(refused > 0);
    assert_eq!(c.budget().unwrap().plan().limit.requests, 4_000);
}

#[tokio::test]
async fn a_delta_run_the_budget_cannot_serve_stops_partial_with_stopped_by_budget() {
    let h = sim::people(30).await;
    let store = Arc::new(LocalStore::in_memory().unwrap());
    let c = client(&h, |c| c.entities[0].page_size = 10).with_budget_in(store.clone());
    let account = c.budget().unwrap().account().to_owned();
    // Another caller met a 429 asking for a minute.
    store
        .pause_budget(&account, now_us() + 60_000_000)
        .await
        .unwrap();
    let opts = DeltaOptions {
        stop_at: Some(Instant::now() + Duration::from_secs(2)),
        ..DeltaOptions::default()
    };
    let started = Instant::now();
    let s = run_delta(&c, &*store, &*store, E, &opts).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(s.status, RunStatus::Partial);
    assert_eq!(s.stopped_by.as_deref(), Some("budget"), "{s:?}");
    assert!(s.error.as_deref().is_some_and(|e| e.contains("budget")));
    assert_eq!((s.pages, h.sim().stats().requests), (0, 0));
    assert_eq!(
        store.job_state(E, JobKind::Delta).await.unwrap().cursor,
        None
    );
    let emf: serde_json::Value = serde_json::from_str(&s.metrics()).unwrap();
    assert_eq!(emf["RunStoppedByBudget"], 1.0);
    assert_eq!(emf["RunFailed"], 0.0);
    // The run record says why.
    let runs = store.list_runs(E, JobKind::Delta, 1).await.unwrap();
    assert_eq!(runs[0].status, "partial");
    assert!(runs[0].summary.contains(r#""stopped_by":"budget""#));
}

#[tokio::test]
async fn a_listing_step_the_budget_cannot_serve_stops_and_the_next_invocation_resumes() {
    let f = Paused::listing(250, 2_500_000).await;
    let (h, d, run) = (&f.sim, f.deps(), f.run.clone());
    let short = ReconcileOptions {
        stop_at: Some(Instant::now() + Duration::from_millis(500)),
        ..ReconcileOptions::default()
    };
    let p = source_step(&d, &run, None, &short).await.unwrap();
    // Not done, not failed: nothing read, the reason kept, nothing asked of the source.
    assert!(!p.done && !p.ended_normally, "{p:?}");
    assert_eq!(p.error, None);
    assert_eq!(p.stopped_by.as_deref(), Some("budget"));
    assert_eq!((p.pages, h.sim().stats().requests), (0, 0));
    // Once the pause is over, the next invocation lists everything.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let p = source_step(&d, &run, Some(p), &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(p.done && p.ended_normally, "{p:?}");
    assert_eq!((p.pairs, p.stopped_by, p.budget_stops), (250, None, 0));
}

/// A budget that never lets the listing read a page does not make it loop for ever: after
/// `MAX_BUDGET_STOPS` invocations in a row that read nothing, the listing ends, not normally
/// (the guard then deletes nothing), and says why.
#[tokio::test]
async fn a_listing_the_budget_never_serves_ends_after_a_few_empty_invocations() {
    let f = Paused::listing(50, 600_000_000).await;
    let (h, d, run) = (&f.sim, f.deps(), f.run.clone());
    let short = || ReconcileOptions {
        stop_at: Some(Instant::now() + Duration::from_millis(200)),
        ..ReconcileOptions::default()
    };
    let mut p = None;
    for i in 1..=r::MAX_BUDGET_STOPS {
        let got = source_step(&d, &run, p, &short()).await.unwrap();
        assert_eq!(got.budget_stops, i);
        assert_eq!(got.done, i == r::MAX_BUDGET_STOPS, "{got:?}");
        p = Some(got);
    }
    let p = p.unwrap();
    assert!(!p.ended_normally);
    assert!(
        p.error
            .as_deref()
            .is_some_and(|e| e.contains("rate budget")),
        "{p:?}"
    );
    assert_eq!(h.sim().stats().requests, 0);
}

/// A reconciliation run planned over `people` people, its budget paused for `pause_us`.
struct Paused {
    sim: SimHandle,
    local: Local,
    src: SourceClient,
    cfg: Config,
    run: r::RunRef,
}

impl Paused {
    async fn listing(people: usize, pause_us: i64) -> Paused {
        let sim = sim::people(people).await;
        let local = local();
        let src =
            client(&sim, |c| c.source.max_page_size = 100).with_budget_in(local.store.clone());
        let cfg = testkit::config::quick(&sim.base_url(), |c| c.source.max_page_size = 100);
        let run = planned(&deps(&cfg, &src, &local), &ReconcileOptions::default()).await;
        let account = src.budget().unwrap().account().to_owned();
        local
            .store
            .pause_budget(&account, now_us() + pause_us)
            .await
            .unwrap();
        Paused {
            sim,
            local,
            src,
            cfg,
            run,
        }
    }

    fn deps(&self) -> ReconcileDeps<'_> {
        deps(&self.cfg, &self.src, &self.local)
    }
}
