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
//! - the version rule: the same -> `negative_control_the_last_write_wins_replaces_newer_versions`
//!   (I2/I3, from delta runs held mid-page);
//! - reconciliation's delete confirmation: the same ->
//!   `negative_control_without_delete_confirmation_a_record_the_listing_hides_is_deleted` (I4);
//! - the guard: the same -> `negative_control_without_the_guard_an_empty_account_deletes_everything` (I4);
//! - the walk's order checks, on a source ignoring its order parameter:
//!   `the_order_checks_stop_every_run_that_would_skip_on_a_source_ignoring_its_order` ->
//!   `negative_control_without_the_order_checks_a_run_succeeds_with_changes_missing` (I1);
//! - a later deletion evidence, on a hand-written schedule (found by seed 1050):
//!   `a_second_deletion_keeps_a_copy_read_before_it_from_restoring_the_record` ->
//!   `negative_control_keeping_the_first_deletion_evidence_resurrects_the_record` (I3);
//! - the delta lease, every repair a rewind of the cursor:
//!   `the_ci_seeds_converge_when_every_repair_rewinds_the_cursor` ->
//!   `negative_control_without_the_lease_the_ci_seeds_lose_a_rewind` (I1); and on a hand-written
//!   schedule (a rewind while a run is held):
//!   `the_delta_lease_keeps_a_rewind_from_a_run_in_flight` ->
//!   `negative_control_without_the_lease_a_run_in_flight_undoes_the_rewind` (I1).

use shared::source::SourceClient;
use shared::sync::delta::NaiveCursor;
use shared::sync::worker::DedupMode;
use testkit::converge::{Outcome, Scenario, Settings, run};

/// The CI seeds.
const SEEDS: std::ops::Range<u64> = 1..25;

async fn suite(seeds: std::ops::Range<u64>, settings: &Settings) -> (Vec<Outcome>, String) {
    let mut out = Vec::new();
    let mut report = String::new();
    for seed in seeds.clone() {
        let s = Scenario::generate(seed);
        let o = run(&s, settings).await;
        if !o.violations.is_empty() {
            report.push_str(&o.explain(&s));
        }
        out.push(o);
    }
    let counts: Vec<(&str, u64)> = testkit::converge::INVARIANTS
        .iter()
        .map(|i| (*i, total(&out, i)))
        .collect();
    eprintln!("seeds {seeds:?}: violations {counts:?}");
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
    // The seeds exercise what they claim to: late changes (a late commit, a clock gone back),
    // records created again under their ID, delta runs held mid-page. (Regressions repaired
    // after the clock went back are rarer: a handful in 24 seeds, `bench converge` counts
    // them over thousands; `tests/it/regress.rs` proves the repair itself.)
    for what in ["late", "recreated", "held"] {
        let n: u64 = out.iter().map(|o| o.exercised[what]).sum();
        eprintln!("{what}: {n}");
        assert!(n > 0, "nothing {what} in the CI seeds");
    }
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
/// the source has is deleted (I4 = 0). Not yet proven to exercise a skip: with confirmation
/// off the CI seeds find no I4 either (a delete rarely lands between two Source invocations).
#[tokio::test]
async fn a_listing_missing_records_deletes_nothing_the_source_has() {
    let settings = Settings {
        client: SourceClient::with_naive_offset_paging,
        ..Settings::default()
    };
    let (out, report) = suite(SEEDS, &settings).await;
    assert_eq!(total(&out, "I4"), 0, "{report}");
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

/// The worker's dedup after the work (marked done once written) -> marked first: a message whose work then fails (an armed record-write crash, a source fault) is
/// redelivered, taken for a duplicate and acknowledged with its change never stored (I5).
#[tokio::test]
async fn negative_control_dedup_before_the_work_acknowledges_lost_events() {
    let mut settings = Settings::default();
    settings.worker.dedup = DedupMode::CompletedFirst;
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I5") > 0, "no I5 violation found:\n{report}");
}

/// The version rule (`core::version`, in the store's write) -> the last write wins: a delta
/// run held between reading a page and writing it (`Op::DeltaHeld`) while a webhook's worker
/// or another path writes a newer version, then writing its older copy over it (I2), or a
/// page read before a deletion writing the record back (I3).
#[tokio::test]
async fn negative_control_the_last_write_wins_replaces_newer_versions() {
    let settings = Settings {
        last_write_wins: true,
        ..Settings::default()
    };
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(
        total(&out, "I2") + total(&out, "I3") > 0,
        "no I2 or I3 violation found:\n{report}"
    );
}

/// Reconciliation's delete confirmation (`get_by_id` of each candidate) -> deletion on absence:
/// a listing that leaves out a record the source has, and counts one fewer
/// (`FaultKind::ListingHidesOne`), passes the guard's count check, and the record is deleted
/// (I4). Confirmed, the guard finds it alive, blocks the run and queues its sync.
#[tokio::test]
async fn negative_control_without_delete_confirmation_a_record_the_listing_hides_is_deleted() {
    let mut settings = Settings::default();
    settings.reconcile.confirm_deletes = false;
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I4") > 0, "no I4 violation found:\n{report}");
}

/// The guard (listing ended normally, not empty, as many IDs as the source counts, a sample
/// confirmed, thresholds) -> none: an API key that reads an empty account
/// (`FaultKind::SourceEmptied`: an empty listing, and 404 for every `get_by_id`, so that
/// confirmation agrees) deletes every record (I4). Guarded, the run is blocked.
#[tokio::test]
async fn negative_control_without_the_guard_an_empty_account_deletes_everything() {
    let mut settings = Settings::default();
    settings.reconcile.guard = false;
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I4") > 0, "no I4 violation found:\n{report}");
}

fn ignoring_the_order() -> Settings {
    Settings {
        misbehave: Some(source_sim::Misbehave {
            ignore_order: true,
            ..source_sim::Misbehave::default()
        }),
        ..Settings::default()
    }
}

/// The walk's order checks on a source that ignores its order parameter (ascending ID order
/// instead of delta order): within and across pages, and the count check
/// (`walk::check_skipped`) for a page that happens to be ascending while records below its
/// highest value were never served. Every delta run that would move past an unread record
/// stops loudly (`WalkError::DeltaOrder` or `Skipped`); no run succeeds with a change missing
/// (I1), and reconciliation's targeted syncs bring the store to the source (I6).
#[tokio::test]
async fn the_order_checks_stop_every_run_that_would_skip_on_a_source_ignoring_its_order() {
    let (out, report) = suite(SEEDS, &ignoring_the_order()).await;
    let refused: u64 = out.iter().map(|o| o.refused).sum();
    assert!(refused > 0, "no delta run stopped by the order checks");
    assert!(report.is_empty(), "{report}");
}

/// -> the same source with the walk's checks off (`SourceClient::without_walk_checks`):
/// delta runs succeed with changes missing (I1).
#[tokio::test]
async fn negative_control_without_the_order_checks_a_run_succeeds_with_changes_missing() {
    let settings = Settings {
        client: SourceClient::without_walk_checks,
        ..ignoring_the_order()
    };
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I1") > 0, "no I1 violation found:\n{report}");
}

/// A hand-written schedule (the seeds rarely land a rewind inside a held run): a change
/// committed ten minutes late (below the cursor; the source's clock then 5 s ahead, so that
/// the held run's cursor moves past the first one's), then a delta run held mid-page while a
/// reconciliation finds the record stale and, over `targeted_limit` (0 here), rewinds the
/// delta cursor to it; the held run then goes on, and a delta run after it.
fn rewind_during_a_held_run() -> (Scenario, Settings) {
    use source_sim::Entity::People;
    use testkit::converge::{Fate, Op};
    let mut ops = vec![
        Op::Update {
            entity: People,
            pick: 1,
            fate: Fate::Drop,
        },
        Op::DeltaRun {
            entity: People,
            max_pages: 10,
        },
        // A later ceiling for the held run than the first run's: its cursor moves.
        Op::ClockStep { ms: 5_000 },
        Op::LateCommit {
            entity: People,
            pick: 0,
            fate: Fate::Drop,
        },
        Op::Update {
            entity: People,
            pick: 2,
            fate: Fate::Drop,
        },
        Op::DeltaHeld {
            entity: People,
            max_pages: 3,
            hold: 8,
        },
    ];
    ops.extend(std::iter::repeat_n(
        Op::ReconcileStep { entity: People },
        11,
    ));
    ops.push(Op::DeltaRun {
        entity: People,
        max_pages: 10,
    });
    let scenario = Scenario {
        seed: 1,
        people: 12,
        donations: 8,
        page_size: 3,
        clock_skew_ms: 0,
        ops,
    };
    let mut settings = Settings::default();
    settings.reconcile.targeted_limit = 0;
    (scenario, settings)
}

/// Every repair a rewind of the delta cursor (`targeted_limit = 0`): the seeds' reconciliations
/// under a held delta run (`schedule`: a late change, a delta run held for eight reconciliation
/// steps, a delta run) rewind it while the run is in flight only when the lease lets them.
fn rewinding() -> Settings {
    let mut settings = Settings::default();
    settings.reconcile.targeted_limit = 0;
    settings
}

#[tokio::test]
async fn the_ci_seeds_converge_when_every_repair_rewinds_the_cursor() {
    let (_, report) = suite(SEEDS, &rewinding()).await;
    assert!(report.is_empty(), "{report}");
}

/// -> no leases: a rewind lands while a delta run is held, the held run saves its later cursor
/// over it, and the next delta run never reads the late change (I1).
#[tokio::test]
async fn negative_control_without_the_lease_the_ci_seeds_lose_a_rewind() {
    let settings = Settings {
        leases: false,
        ..rewinding()
    };
    let (out, report) = suite(SEEDS, &settings).await;
    assert!(total(&out, "I1") > 0, "no I1 violation found:\n{report}");
}

/// The delta lease, which the rewind takes too: while the held run holds it, the rewind waits
/// (`StepError::DeltaBusy`, retried); the final reconciliation's rewind and the delta run after
/// it bring the late commit. No violation.
#[tokio::test]
async fn the_delta_lease_keeps_a_rewind_from_a_run_in_flight() {
    let (scenario, settings) = rewind_during_a_held_run();
    let o = run(&scenario, &settings).await;
    assert!(o.violations.is_empty(), "{}", o.explain(&scenario));
    // The rewind waited for the held run, then happened within the schedule.
    let waited = o
        .notes
        .iter()
        .position(|n| n.contains("step failed") && n.contains("delta"));
    let rewound = o.notes.iter().position(|n| n.contains("rewound to Some"));
    assert!(
        waited.is_some() && rewound > waited,
        "{}",
        o.explain(&scenario)
    );
}

/// -> no leases (`Settings::leases = false`: every lease taken over): the rewind lands while
/// the held run is in flight, the held run then saves its own, later cursor over it, and the
/// next delta run never reads the late commit (I1: the rewind was lost).
#[tokio::test]
async fn negative_control_without_the_lease_a_run_in_flight_undoes_the_rewind() {
    let (scenario, mut settings) = rewind_during_a_held_run();
    settings.leases = false;
    let o = run(&scenario, &settings).await;
    assert!(
        o.counts()["I1"] > 0,
        "no I1 violation found:\n{}",
        o.explain(&scenario)
    );
}

/// Found by seed 1050 of `bench converge`: a record deleted (the worker's 404), created again
/// under its ID, read by a delta run that is then held, deleted once more (the worker's 404
/// finds it already deleted); the held run then writes the copy it read. The second deletion
/// moves the evidence later (`core::version::advances_deletion`), so that copy, fetched before
/// it, is stale.
fn deleted_again_while_a_run_holds_the_re_created_record() -> Scenario {
    use source_sim::Entity::People;
    use testkit::converge::{Fate, Op};
    Scenario {
        seed: 1,
        people: 12,
        donations: 8,
        page_size: 3,
        clock_skew_ms: 0,
        ops: vec![
            Op::Delete {
                entity: People,
                pick: 0,
                fate: Fate::Deliver,
            },
            Op::WorkerBatch { max: 10 },
            Op::Recreate {
                entity: People,
                pick: 0,
                fate: Fate::Drop,
            },
            Op::DeltaHeld {
                entity: People,
                max_pages: 3,
                hold: 3,
            },
            Op::Delete {
                entity: People,
                pick: 0,
                fate: Fate::Deliver,
            },
            Op::WorkerBatch { max: 10 },
        ],
    }
}

#[tokio::test]
async fn a_second_deletion_keeps_a_copy_read_before_it_from_restoring_the_record() {
    let scenario = deleted_again_while_a_run_holds_the_re_created_record();
    let o = run(&scenario, &Settings::default()).await;
    assert!(o.violations.is_empty(), "{}", o.explain(&scenario));
    assert_eq!(o.exercised["recreated"], 1, "{}", o.explain(&scenario));
    assert_eq!(o.exercised["held"], 1, "{}", o.explain(&scenario));
}

/// -> the first deletion's evidence kept (`LocalStore::with_first_deletion_evidence`): the
/// held copy, fetched after the first deletion, restores a record the source has deleted (I3).
#[tokio::test]
async fn negative_control_keeping_the_first_deletion_evidence_resurrects_the_record() {
    let scenario = deleted_again_while_a_run_holds_the_re_created_record();
    let settings = Settings {
        first_deletion_evidence: true,
        ..Settings::default()
    };
    let o = run(&scenario, &settings).await;
    assert!(
        o.counts()["I3"] > 0,
        "no I3 violation found:\n{}",
        o.explain(&scenario)
    );
}
