//! A source whose version of a record went backwards (issue 12, requirement 3): reconciliation's
//! `repair_regressions` against the simulator, on the embedded store with a spill folder, the
//! steps run as the state machine runs them, with the regression repair called where apply
//! calls it.
//!
//! The pairs (protection -> its negative control):
//! - the fetched-after condition of the regression rule:
//!   `a_regression_fetch_sent_before_the_stored_copys_never_overwrites_it`
//!   -> `negative_control_without_fetched_after_an_older_fetch_overwrites_a_newer_copy`;
//! - the opt-in (`allow_version_regression`): `with_the_flag_a_source_that_went_back_is_written_as_regressed`
//!   -> `without_the_flag_a_regression_is_counted_and_surfaced_but_not_written` (every write path
//!   then calls the source's copy stale, as before).

use crate::harness::scratch;
use shared::SourceError;
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::config::Config;
use shared::model::{LastAction, Micros, Record, Strategy, WriteOutcome};
use shared::ports::{RecordStore, SourceApi};
use shared::setdiff::DiffSummary;
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, run_delta};
use shared::sync::reconcile::{
    DestinationInput, DiffInput, FinishInput, GuardInput, PlanInput, ReconcileDeps,
    ReconcileOptions, RegressOutput, RunSummary, SourceInput, SourceProgress, apply, destination,
    diff_step, finish, guard, plan, repair_regressions, source,
};
use source_sim::{Entity, SimHandle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use testkit::forward::{Forward, SourceHooks};
use testkit::{TempDir, sim};

const E: &str = "people";
const HOUR_US: Micros = 3_600_000_000;

fn config(h: &SimHandle, allow_version_regression: bool) -> Config {
    testkit::config::quick(&h.base_url(), |c| {
        c.source.max_attempts = 1;
        c.entities.truncate(1);
        c.entities[0].allow_version_regression = allow_version_regression;
    })
}

struct Local {
    store: Arc<LocalStore>,
    queue: LocalQueue,
    spill: LocalSpill,
    _folder: TempDir,
}

/// A simulator of `people`, a store backfilled from it by delta sync.
async fn synced(people: usize) -> (SimHandle, Local) {
    let h = sim::people(people).await;
    let src = SourceClient::new(&config(&h, false), None).unwrap();
    let store = Arc::new(LocalStore::in_memory().unwrap());
    run_delta(&src, &*store, &*store, E, &DeltaOptions::default())
        .await
        .expect("delta");
    let folder = scratch("regress");
    let l = Local {
        queue: store.queue("work", QueueOptions::default()),
        spill: LocalSpill::new(folder.path()).unwrap(),
        store,
        _folder: folder,
    };
    (h, l)
}

/// The source's record `id` goes back in time by an hour, with new content (a restore of an
/// older copy that differs from the one we stored); returns its new version.
fn goes_back(h: &SimHandle, id: u64) -> Micros {
    let now = h.sim().get(Entity::People, id).expect("live").updated_at_us;
    h.sim()
        .update(Entity::People, id, Some(now - HOUR_US))
        .expect("live")
        .updated_at_us
}

/// What one reconciliation did.
struct Reconciled {
    summary: RunSummary,
    diff: DiffSummary,
    regress: RegressOutput,
}

/// One reconciliation of `people`, step by step as the state machine runs them, with the
/// regression repair as apply's (`ApplyOutput::regress`); `during` runs after the
/// source listing and before the destination's (a write the listing is older than).
async fn reconcile(
    cfg: &Config,
    src: &dyn SourceApi,
    l: &Local,
    opts: &ReconcileOptions,
    during: impl AsyncFnOnce(),
) -> Reconciled {
    let deps = ReconcileDeps {
        config: cfg,
        source: src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
        spill: &l.spill,
        queue: &l.queue,
    };
    let input = PlanInput {
        entity: Some(E.into()),
        ..PlanInput::default()
    };
    let run = plan(&deps, &input, opts).await.unwrap().runs.remove(0);
    let mut progress = SourceProgress::default();
    while !progress.done {
        let input = SourceInput {
            run: run.clone(),
            progress: Some(progress),
        };
        progress = source(&deps, &input, opts).await.unwrap();
    }
    during().await;
    for &shard in &run.shards {
        let input = DestinationInput {
            run: run.clone(),
            shard,
        };
        destination(&deps, &input, opts).await.unwrap();
    }
    let diff = diff_step(&deps, &DiffInput { run: run.clone() }, opts)
        .await
        .unwrap();
    let g = guard(
        &deps,
        &GuardInput {
            run: run.clone(),
            source: progress.clone(),
            diff: diff.clone(),
        },
        opts,
    )
    .await
    .unwrap();
    let mut input = shared::sync::reconcile::ApplyInput {
        run: run.clone(),
        diff: diff.clone(),
        guard: g.clone(),
        approved: false,
        progress: None,
    };
    let mut a = apply(&deps, &input, opts).await.unwrap();
    while !a.done {
        input.progress = Some(a);
        a = apply(&deps, &input, opts).await.unwrap();
    }
    // Apply runs the repair after the targeted syncs and before the deletions.
    let regress = a.regress.clone().expect("apply ran the regression repair");
    let summary = finish(
        &deps,
        &FinishInput {
            run,
            source: Some(progress),
            diff: Some(diff.clone()),
            guard: Some(g),
            apply: Some(a),
            error: None,
            approval: None,
        },
        opts,
    )
    .await
    .unwrap();
    Reconciled {
        summary,
        diff,
        regress,
    }
}

/// The value of `metric` in a summary's EMF line.
fn metric(s: &RunSummary, metric: &str) -> f64 {
    let emf: serde_json::Value = serde_json::from_str(&s.metrics()).unwrap();
    emf[metric]
        .as_f64()
        .unwrap_or_else(|| panic!("{metric} in {emf}"))
}

/// The source's copy of `id` now (its version's hash and delta).
async fn at_source(src: &dyn SourceApi, id: u64) -> Record {
    src.get_by_id(E, &id.to_string())
        .await
        .unwrap()
        .expect("live")
}

#[tokio::test]
async fn with_the_flag_a_source_that_went_back_is_written_as_regressed() {
    let (h, l) = synced(30).await;
    let cfg = config(&h, true);
    let src = SourceClient::new(&cfg, None).unwrap();
    let before = l.store.get(E, "12").await.unwrap().unwrap();
    let back = goes_back(&h, 12);
    assert!(back < before.version.delta_us);
    // Every ordinary write path calls the source's copy stale (I2): a targeted sync, say.
    let now = at_source(&src, 12).await;
    assert_eq!(now.version.delta_us, back);
    assert_eq!(
        l.store.upsert(&now, Strategy::Targeted).await.unwrap(),
        WriteOutcome::Stale
    );

    let r = reconcile(&cfg, &src, &l, &ReconcileOptions::default(), async || {}).await;
    assert_eq!(r.diff.destination_newer, 1);
    assert_eq!(r.diff.newer.pairs, 1);
    assert_eq!(
        (
            r.regress.read,
            r.regress.regressions,
            r.regress.fetched,
            r.regress.regressed,
            r.regress.done
        ),
        (1, 1, 1, 1, true)
    );
    assert_eq!(r.regress.last_id.as_deref(), Some("12"));
    let got = l.store.get(E, "12").await.unwrap().unwrap();
    assert_eq!(got.version.delta_us, back, "the source's older version");
    assert_eq!(got.version.hash, now.version.hash, "the source's content");
    assert_eq!(got.last_action, LastAction::Regressed);
    assert_eq!(got.written_by, Strategy::Reconcile);
    assert_eq!(got.first_seen_us, before.first_seen_us);
    // Surfaced: the summary and its metrics.
    assert_eq!(
        (
            r.summary.destination_newer,
            r.summary.regressions,
            r.summary.regressed
        ),
        (1, 1, 1)
    );
    assert_eq!(metric(&r.summary, "ReconcileRegressions"), 1.0);
    assert_eq!(metric(&r.summary, "ReconcileRegressed"), 1.0);
    // The run history holds them (what `syncctl status` reads).
    use shared::ports::{ControlStore, JobKind};
    let runs = l.store.list_runs(E, JobKind::Reconcile, 1).await.unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&runs[0].summary).unwrap();
    assert_eq!(
        (
            recorded["regressions"].as_u64(),
            recorded["regressed"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Converged: the next run finds nothing newer at the destination and writes nothing.
    let again = reconcile(&cfg, &src, &l, &ReconcileOptions::default(), async || {}).await;
    assert_eq!(again.diff.destination_newer, 0);
    assert_eq!(again.summary.regressions, 0);
    assert_eq!(l.store.get(E, "12").await.unwrap().unwrap(), got);
}

#[tokio::test]
async fn without_the_flag_a_regression_is_counted_and_surfaced_but_not_written() {
    let (h, l) = synced(30).await;
    let cfg = config(&h, false);
    let src = SourceClient::new(&cfg, None).unwrap();
    let before = l.store.get(E, "12").await.unwrap().unwrap();
    goes_back(&h, 12);
    let store = l.store.clone();
    let (sim_during, src_during) = (h.sim(), &src);
    // Record 20 changes at the source after the listing passed it, and a webhook syncs it:
    // the destination is newer than the listing, but the source did not go back.
    let written_during_the_run = async || {
        sim_during.update(Entity::People, 20, None).expect("live");
        let r = at_source(src_during, 20).await;
        assert_eq!(
            store.upsert(&r, Strategy::Webhook).await.unwrap(),
            WriteOutcome::Updated
        );
    };
    let r = reconcile(
        &cfg,
        &src,
        &l,
        &ReconcileOptions::default(),
        written_during_the_run,
    )
    .await;
    assert_eq!(r.diff.destination_newer, 2, "12 and 20");
    assert_eq!(
        (
            r.regress.read,
            r.regress.regressions,
            r.regress.fetched,
            r.regress.regressed,
            r.regress.done
        ),
        (2, 1, 0, 0, true),
        "only 12 went back; nothing fetched or written without the flag"
    );
    assert_eq!(
        l.store.get(E, "12").await.unwrap().unwrap(),
        before,
        "the stored copy stays"
    );
    assert_eq!(
        (
            r.summary.destination_newer,
            r.summary.regressions,
            r.summary.regressed
        ),
        (2, 1, 0)
    );
    assert_eq!(metric(&r.summary, "ReconcileRegressions"), 1.0);
    assert_eq!(metric(&r.summary, "ReconcileRegressed"), 0.0);
    // And it stays surfaced run after run until someone looks.
    let again = reconcile(&cfg, &src, &l, &ReconcileOptions::default(), async || {}).await;
    assert_eq!(again.summary.regressions, 1);
}

/// A source whose `get_by_id` of `id` races a webhook: its answer is taken first (the record
/// as it went back), then the record changes at the source and a webhook's fetch (sent later)
/// writes that newer copy, then the first answer is returned.
struct RacedByAWebhook {
    id: String,
    sim: source_sim::Sim,
    store: Arc<LocalStore>,
    raced: AtomicBool,
}

#[async_trait::async_trait]
impl SourceHooks<SourceClient> for RacedByAWebhook {
    async fn get_by_id(
        &self,
        inner: &SourceClient,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        let answer = inner.get_by_id(entity, id).await;
        if id == self.id && !self.raced.swap(true, Ordering::SeqCst) {
            let n: u64 = id.parse().unwrap();
            self.sim.update(Entity::People, n, None).expect("live");
            let newer = inner.get_by_id(entity, id).await?.expect("live");
            let wrote = self.store.upsert(&newer, Strategy::Webhook).await;
            assert_eq!(wrote.expect("the webhook's write"), WriteOutcome::Updated);
        }
        answer
    }
}

/// The race above on record 12 after it went back; returns what the repair did, the stored
/// copy after the run, the version the source went back to and the webhook's (newest).
async fn raced_regression(
    opts: &ReconcileOptions,
) -> (RegressOutput, shared::model::StoredRecord, Micros, Micros) {
    let (h, l) = synced(30).await;
    let cfg = config(&h, true);
    let inner = Arc::new(SourceClient::new(&cfg, None).unwrap());
    let back = goes_back(&h, 12);
    let src = Forward::new(
        inner,
        RacedByAWebhook {
            id: "12".into(),
            sim: h.sim(),
            store: l.store.clone(),
            raced: AtomicBool::new(false),
        },
    );
    let r = reconcile(&cfg, &src, &l, opts, async || {}).await;
    let newest = h.sim().get(Entity::People, 12).unwrap().updated_at_us;
    assert!(newest > back);
    let stored = l.store.get(E, "12").await.unwrap().unwrap();
    (r.regress, stored, back, newest)
}

#[tokio::test]
async fn a_regression_fetch_sent_before_the_stored_copys_never_overwrites_it() {
    let (regress, stored, _, newest) = raced_regression(&ReconcileOptions::default()).await;
    assert_eq!(
        (
            regress.regressions,
            regress.fetched,
            regress.regressed,
            regress.skipped
        ),
        (1, 1, 0, 1),
        "the fetch was sent before the webhook's: it proves nothing"
    );
    assert_eq!(
        stored.version.delta_us, newest,
        "the webhook's newer copy stays"
    );
    assert_eq!(stored.written_by, Strategy::Webhook);
    assert_eq!(stored.last_action, LastAction::Update);
}

#[tokio::test]
async fn negative_control_without_fetched_after_an_older_fetch_overwrites_a_newer_copy() {
    let opts = ReconcileOptions {
        regression_fetched_after: false,
        ..ReconcileOptions::default()
    };
    let (regress, stored, back, newest) = raced_regression(&opts).await;
    assert_eq!(regress.regressed, 1, "{regress:?}");
    assert_eq!(
        stored.version.delta_us, back,
        "the older answer overwrote the webhook's newer copy (delta {newest})"
    );
    assert_eq!(stored.last_action, LastAction::Regressed);
}

/// The same through `run_all` (what `syncctl reconcile` and the state machine run), once apply
/// calls `repair_regressions` and puts its output in `ApplyOutput::regress`.
#[tokio::test]
async fn run_all_writes_a_regression_where_the_entity_opts_in() {
    let (h, l) = synced(30).await;
    let cfg = config(&h, true);
    let src = SourceClient::new(&cfg, None).unwrap();
    let back = goes_back(&h, 12);
    let deps = ReconcileDeps {
        config: &cfg,
        source: &src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
        spill: &l.spill,
        queue: &l.queue,
    };
    let input = PlanInput {
        entity: Some(E.into()),
        ..PlanInput::default()
    };
    let summaries = shared::sync::reconcile::run_all(&deps, &input, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (summaries[0].regressions, summaries[0].regressed),
        (1, 1),
        "{:?}",
        summaries[0]
    );
    let got = l.store.get(E, "12").await.unwrap().unwrap();
    assert_eq!(
        (got.version.delta_us, got.last_action),
        (back, LastAction::Regressed)
    );
}

/// Fails `get_by_id` of one ID once with `SourceError::Deadline`, as the client does when the
/// step's stop instant passes before that request.
struct DeadlineAt {
    id: String,
    hit: AtomicBool,
}

#[async_trait::async_trait]
impl SourceHooks<SourceClient> for DeadlineAt {
    async fn get_by_id(
        &self,
        inner: &SourceClient,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        if id == self.id && !self.hit.swap(true, Ordering::SeqCst) {
            return Err(SourceError::Deadline {
                url: format!("{entity}/{id}"),
                wait: std::time::Duration::ZERO,
                cause: shared::error::WaitCause::StopInstant,
            });
        }
        inner.get_by_id(entity, id).await
    }
}

#[tokio::test]
async fn the_repair_stops_at_its_stop_instant_and_resumes_after_last_id() {
    let (h, l) = synced(30).await;
    let cfg = config(&h, true);
    let inner = Arc::new(SourceClient::new(&cfg, None).unwrap());
    let back: Vec<Micros> = (11..=15).map(|id| goes_back(&h, id)).collect();
    let src = Forward::new(
        inner,
        DeadlineAt {
            id: "13".into(),
            hit: AtomicBool::new(false),
        },
    );
    let deps = ReconcileDeps {
        config: &cfg,
        source: &src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
        spill: &l.spill,
        queue: &l.queue,
    };
    let opts = ReconcileOptions::default();
    let input = PlanInput {
        entity: Some(E.into()),
        ..PlanInput::default()
    };
    let run = plan(&deps, &input, &opts).await.unwrap().runs.remove(0);
    let mut progress = SourceProgress::default();
    while !progress.done {
        let input = SourceInput {
            run: run.clone(),
            progress: Some(progress),
        };
        progress = source(&deps, &input, &opts).await.unwrap();
    }
    for &shard in &run.shards {
        let input = DestinationInput {
            run: run.clone(),
            shard,
        };
        destination(&deps, &input, &opts).await.unwrap();
    }
    let diff = diff_step(&deps, &DiffInput { run: run.clone() }, &opts)
        .await
        .unwrap();
    assert_eq!(diff.newer.pairs, 5);

    // Past the stop instant before the first batch: nothing done, nothing lost.
    let past = ReconcileOptions {
        stop_at: Some(std::time::Instant::now()),
        ..ReconcileOptions::default()
    };
    let none = repair_regressions(&deps, &run, &diff, None, &past)
        .await
        .unwrap();
    assert_eq!((none.read, none.done, none.last_id), (0, false, None));

    // The stop instant reached at 13: 11 and 12 done, nothing after written.
    let mut first = repair_regressions(&deps, &run, &diff, None, &opts)
        .await
        .unwrap();
    assert_eq!(
        (first.regressed, first.done, first.last_id.as_deref()),
        (2, false, Some("12"))
    );
    let delta = async |id: u64| {
        l.store
            .get(E, &id.to_string())
            .await
            .unwrap()
            .unwrap()
            .version
            .delta_us
    };
    assert_eq!((delta(11).await, delta(12).await), (back[0], back[1]));
    for id in 13..=15 {
        assert!(
            delta(id).await > back[(id - 11) as usize],
            "{id} not written yet"
        );
    }
    // Resumed after last_id: the rest, each once.
    let rest = repair_regressions(&deps, &run, &diff, first.last_id.as_deref(), &opts)
        .await
        .unwrap();
    assert_eq!((rest.read, rest.regressed, rest.done), (3, 3, true));
    first.absorb(rest);
    assert_eq!(
        (first.read, first.regressions, first.regressed, first.done),
        (5, 5, 5, true)
    );
    assert_eq!(first.last_id.as_deref(), Some("15"));
    for id in 11..=15 {
        assert_eq!(delta(id).await, back[(id - 11) as usize], "{id}");
    }
}
