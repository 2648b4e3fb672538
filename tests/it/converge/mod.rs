//! The convergence suite (issue 13): fixed seeds of `testkit::converge` schedules (source
//! activity, webhook deliveries dropped, duplicated, delayed, reordered and replayed, source
//! faults, crashes at named points, and delta runs, worker batches and reconciliation steps
//! interleaved), each ending with the source quiet and the store compared with it; zero
//! violations of I1-I6. A failing seed prints its violations, the operation at which each
//! was first seen and the whole schedule: `converge::run(&Scenario::generate(seed), ..)`
//! replays it.
//!
//! The pairs (protection -> its negative control: the same seeds with it switched off):
//! - delta sync's cursor (ceiling from the source's clock, overlap):
//!   `the_ci_seeds_converge_with_no_violation` -> `negative_control_the_wall_clock_cursor_loses_updates` (I1);
//! - delta sync's tie handling: the same -> `negative_control_a_strict_max_seen_cursor_loses_ties` (I1);
//! - the worker's dedup after the work: the same ->
//!   `negative_control_dedup_before_the_work_acknowledges_lost_events` (I5);
//! - the walk's order check on a source ignoring order:
//!   `a_source_ignoring_order_stops_the_runs_and_loses_nothing_silently` (ignored: engine
//!   finding, reduced in `a_delta_run_on_a_source_ignoring_order_never_succeeds_with_a_change_missing`)
//!   -> `negative_control_without_the_order_check_delta_runs_succeed_with_changes_missing` (I1);
//! - reconciliation's delete confirmation on an offset-paged ID listing:
//!   `a_listing_missing_records_deletes_nothing_the_source_has` ->
//!   `negative_control_unconfirmed_deletes_delete_what_the_source_has` (ignored: not yet
//!   provoked by the CI seeds).

use shared::source::SourceClient;
use shared::sync::delta::NaiveCursor;
use shared::sync::worker::DedupMode;
use testkit::converge::{Outcome, Scenario, Settings, run};

/// The CI seeds.
const SEEDS: std::ops::Range<u64> = 1..25;

async fn suite(seeds: std::ops::Range<u64>, settings: &Settings) -> (Vec<Outcome>, String) {
    let mut out = Vec::new();
    let mut report = String::new();
    for seed in seeds {
        let s = Scenario::generate(seed);
        let o = run(&s, settings).await;
        if !o.violations.is_empty() {
            report.push_str(&o.explain(&s));
        }
        out.push(o);
    }
    (out, report)
}

fn total(out: &[Outcome], invariant: &str) -> u64 {
    out.iter().map(|o| o.counts()[invariant]).sum()
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    for seed in [1, 7, 2_000] {
        assert_eq!(Scenario::generate(seed).ops, Scenario::generate(seed).ops);
    }
    assert_ne!(Scenario::generate(1).ops, Scenario::generate(2).ops);
}

#[tokio::test]
async fn the_ci_seeds_converge_with_no_violation() {
    let (out, report) = suite(SEEDS, &Settings::default()).await;
    let ops: usize = out.iter().map(|o| o.operations).sum();
    assert!(ops > 500, "{ops} operations");
    assert!(report.is_empty(), "{report}");
}

/// Delta sync's cursor (ceiling from the source's clock, overlap, ties) -> the seed's rule,
/// the wall clock at the run's end: records changed during a run or stamped just before it
/// are skipped, and the checks after each complete delta run see it (I1).
#[tokio::test]
async fn negative_control_the_wall_clock_cursor_loses_updates() {
    let mut settings = Settings::default();
    settings.delta.naive_cursor = Some(NaiveCursor::WallClock);
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I1") > 0, "no I1 violation found:\n{report}");
}

/// Reconciliation's delete confirmation, on a listing that misses records: the client pages
/// the ID listing by offset (`with_naive_offset_paging`), so a record deleted between two
/// Source invocations shifts the next page and the listing skips a record the source still
/// has (the counts still agree, so the guard passes it). Confirmed with `get_by_id`, nothing
/// the source has is deleted (I4 = 0). Not yet proven to exercise a skip: its negative control
/// below finds no I4 in the CI seeds (a delete rarely lands between two Source invocations).
#[tokio::test]
async fn a_listing_missing_records_deletes_nothing_the_source_has() {
    let settings = Settings {
        client: SourceClient::with_naive_offset_paging,
        ..Settings::default()
    };
    let (out, report) = suite(SEEDS, &settings).await;
    assert_eq!(total(&out, "I4"), 0, "{report}");
}

/// The same listing, confirmation off: reconciliation deletes records the source has (I4).
#[tokio::test]
#[ignore = "no I4 found in the CI seeds yet: the schedules need deletes between Source invocations (next session)"]
async fn negative_control_unconfirmed_deletes_delete_what_the_source_has() {
    let mut settings = Settings {
        client: SourceClient::with_naive_offset_paging,
        ..Settings::default()
    };
    settings.reconcile.confirm_deletes = false;
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I4") > 0, "no I4 violation found:\n{report}");
}

/// Delta sync's tie handling (`>=` on the last value with the IDs seen there, a ceiling) ->
/// strict `>` on the highest value seen: records sharing a timestamp across a page boundary
/// (pages of 3-12, bursts on one timestamp) are skipped (I1).
#[tokio::test]
async fn negative_control_a_strict_max_seen_cursor_loses_ties() {
    let mut settings = Settings::default();
    settings.delta.naive_cursor = Some(NaiveCursor::StrictMaxSeen);
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I1") > 0, "no I1 violation found:\n{report}");
}

/// The worker's dedup after the work (claim in progress, complete once written) -> complete
/// first: a message whose work then fails (an armed record-write crash, a source fault) is
/// redelivered, taken for a duplicate and acknowledged with its change never stored (I5).
#[tokio::test]
async fn negative_control_dedup_before_the_work_acknowledges_lost_events() {
    let mut settings = Settings::default();
    settings.worker.dedup = DedupMode::CompletedFirst;
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I5") > 0, "no I5 violation found:\n{report}");
}

/// The walk's order check, on a source ignoring its order parameter, each delta invocation
/// reading to the end: the runs stop loudly (the final delta runs fail: I6), and no delta run
/// ever reports success with a change missing (I1 = 0). Ignored: seed 2 finds a run that
/// succeeds with a change missing; reduced in
/// `a_delta_run_on_a_source_ignoring_order_never_succeeds_with_a_change_missing`.
#[tokio::test]
#[ignore = "engine finding for the lead (seed 2, op 28): see a_delta_run_on_a_source_ignoring_order_never_succeeds_with_a_change_missing"]
async fn a_source_ignoring_order_stops_the_runs_and_loses_nothing_silently() {
    let settings = Settings {
        misbehave: Some(testkit::sim::only("ignore_order")),
        delta_max_pages: Some(u64::MAX),
        ..Settings::default()
    };
    let (out, report) = suite(1..9, &settings).await;
    assert_eq!(total(&out, "I1"), 0, "{report}");
    assert!(total(&out, "I6") > 0, "the runs did not stop:\n{report}");
}

/// The same source and invocations, the walk checks off: delta runs succeed with changes
/// missing (I1).
#[tokio::test]
async fn negative_control_without_the_order_check_delta_runs_succeed_with_changes_missing() {
    let settings = Settings {
        misbehave: Some(testkit::sim::only("ignore_order")),
        delta_max_pages: Some(u64::MAX),
        client: SourceClient::without_walk_checks,
        ..Settings::default()
    };
    let (out, report) = suite(1..9, &settings).await;
    assert!(total(&out, "I1") > 0, "no I1 violation found:\n{report}");
}

/// Finding of the suite (seed 2 of `a_source_ignoring_order_...`, op 28), reduced: a source
/// that ignores its order parameter serves record 2 (changed later) before record 5 (changed
/// earlier), one record a page. Every page the walk sees is in order and the next query
/// starts at the page's highest value (`gte`), so record 5, below it, is never served: the run
/// reports success with record 5's change missing (I1), and no check fires. Reconciliation
/// repairs it later (stale), but the delta run was silently incomplete.
#[tokio::test]
#[ignore = "engine finding for the lead: the walk's order check misses a source ignoring order when each served page is ascending"]
async fn a_delta_run_on_a_source_ignoring_order_never_succeeds_with_a_change_missing() {
    use shared::adapters::local::LocalStore;
    use shared::ports::RecordStore;
    use shared::sync::delta::{DeltaOptions, RunStatus, run_delta};
    let h = testkit::sim::misbehaving(
        testkit::sim::people_only(6),
        testkit::sim::only("ignore_order"),
    )
    .await;
    let cfg = testkit::config::quick(&h.base_url(), |c| {
        c.entities.truncate(1);
        c.entities[0].page_size = 1;
    });
    let src = SourceClient::new(&cfg, None).unwrap();
    let store = LocalStore::in_memory().unwrap();
    let opts = DeltaOptions::default();
    assert_eq!(
        run_delta(&src, &store, &store, "people", &opts)
            .await
            .unwrap()
            .status,
        RunStatus::Succeeded
    );
    // Record 2 changed later than record 5; in ID order, 2 comes first.
    let sim = h.sim();
    let t = sim.now_us() - 60_000_000;
    sim.update(source_sim::Entity::People, 5, Some(t));
    sim.update(source_sim::Entity::People, 2, Some(t + 1_000_000));
    let r = run_delta(&src, &store, &store, "people", &opts).await;
    let five = store
        .get("people", "5")
        .await
        .unwrap()
        .map(|s| s.version.delta_us);
    let want = sim
        .get(source_sim::Entity::People, 5)
        .unwrap()
        .updated_at_us;
    // Either the run stops loudly, or record 5's change is stored.
    assert!(
        r.as_ref().is_err() || five == Some(want),
        "record 5 stored at {five:?} (source {want}); the run: {:?}",
        r.map(|s| (s.status, s.pages, s.seen))
    );
}
