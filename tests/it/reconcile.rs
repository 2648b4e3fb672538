//! Reconciliation end to end (issue 5, "Tests"): the steps of `shared::sync::reconcile` against
//! the simulator, on the embedded store with a spill folder, and once on DynamoDB Local with S3
//! on moto; targeted syncs drained by the real worker.
//!
//! The pairs (invariant test -> its negative control):
//! - a record deleted behind an offset listing's position: `deletions_behind_an_offset_listing_do_not_make_a_live_record_look_deleted`
//!   -> `negative_control_naive_offsets_without_confirmation_delete_a_live_record`;
//! - candidates the source still has: `the_guard_trips_on_candidates_the_source_still_has`
//!   -> `negative_control_delete_on_absence_without_confirmation_loses_live_records`.
//!
//! (Bytewise against numeric order is covered by `shared::setdiff`'s unit tests and their
//! negative control; every test here uses numeric IDs above 9, whose orders differ.)

use crate::harness::{create_bucket, s3_client, scratch};
use futures::StreamExt;
use futures::stream::BoxStream;
use shared::SourceError;
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::adapters::s3::S3Spill;
use shared::config::Config;
use shared::model::Micros;
use shared::ports::{ControlStore, IdPage, Queue, RecordStore, SourceApi, SpillStore};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, run_delta};
use shared::sync::reconcile::{
    ApplyInput, Decision, PlanInput, ReconcileDeps, ReconcileOptions, RunSummary, StepError,
    run_all,
};
use shared::sync::worker::{InMessage, WorkerDeps, WorkerOptions, process_batch};
use source_sim::{Entity, Fault, SimHandle};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use testkit::forward::{Forward, SourceHooks};
use testkit::{TempDir, sim};

const E: &str = "people";

fn config(h: &SimHandle) -> Config {
    testkit::config::quick(&h.base_url(), |c| {
        c.source.max_attempts = 1;
        c.entities.truncate(1);
    })
}

struct Local {
    store: Arc<LocalStore>,
    queue: LocalQueue,
    spill: LocalSpill,
    _folder: TempDir,
}

fn local() -> Local {
    let store = Arc::new(LocalStore::in_memory().unwrap());
    let queue = store.queue("work", QueueOptions::default());
    let folder = scratch("reconcile");
    let spill = LocalSpill::new(folder.path()).unwrap();
    Local {
        store,
        queue,
        spill,
        _folder: folder,
    }
}

/// Backfill the store from the source (delta sync).
async fn sync_all(src: &dyn SourceApi, store: &LocalStore) {
    run_delta(src, store, store, E, &DeltaOptions::default())
        .await
        .expect("delta");
}

/// A simulator of `people`, its configuration and client, and a local store synced from it.
async fn synced(people: usize) -> (SimHandle, Config, SourceClient, Local) {
    let h = sim::people(people).await;
    let cfg = config(&h);
    let src = SourceClient::new(&cfg, None).unwrap();
    let l = local();
    sync_all(&src, &l.store).await;
    (h, cfg, src, l)
}

/// `reconcile` with the default input and options; it must not fail.
async fn reconcile_default(cfg: &Config, src: &dyn SourceApi, l: &Local) -> Vec<RunSummary> {
    reconcile(
        cfg,
        src,
        l,
        PlanInput::default(),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap()
}

async fn reconcile(
    cfg: &Config,
    src: &dyn SourceApi,
    l: &Local,
    input: PlanInput,
    opts: &ReconcileOptions,
) -> Result<Vec<RunSummary>, StepError> {
    let deps = ReconcileDeps {
        config: cfg,
        source: src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
        spill: &l.spill,
        queue: &l.queue,
    };
    run_all(
        &deps,
        &PlanInput {
            entity: Some(E.into()),
            ..input
        },
        opts,
    )
    .await
}

/// Drain the queue through the worker; returns how many messages it processed.
async fn drain(src: &dyn SourceApi, l: &Local) -> usize {
    let deps = WorkerDeps {
        source: src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
    };
    let mut n = 0;
    loop {
        let got = l.queue.receive(10, 0).await.unwrap();
        if got.is_empty() {
            return n;
        }
        let m: Vec<InMessage> = got.iter().map(InMessage::from).collect();
        let r = process_batch(&deps, &m, &WorkerOptions::default()).await;
        assert!(r.failed.is_empty(), "{r:?}");
        for g in &got {
            l.queue.delete(&g.receipt).await.unwrap();
        }
        n += got.len();
    }
}

async fn live(store: &LocalStore, id: u64) -> bool {
    store
        .get(E, &id.to_string())
        .await
        .unwrap()
        .is_some_and(|r| !r.is_deleted())
}

/// Store equals source: every live source record stored at its version, nothing else live.
async fn assert_converged(h: &SimHandle, store: &LocalStore) {
    let src: std::collections::BTreeMap<String, Micros> = h
        .sim()
        .versions(Entity::People)
        .into_iter()
        .map(|(id, v)| (id.to_string(), v))
        .collect();
    let mut dst = std::collections::BTreeMap::new();
    for shard in 0..shared::model::ID_SHARDS {
        let mut after: Option<String> = None;
        loop {
            let p = store
                .list_live_ids(E, shard, after.as_deref(), 1000)
                .await
                .unwrap();
            for i in p.items {
                dst.insert(i.id, i.delta_us);
            }
            match p.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    }
    assert_eq!(src, dst, "the store equals the source");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn deletions_are_confirmed_and_soft_deleted_and_missed_and_stale_records_repaired() {
    let (h, cfg, src, l) = synced(60).await;
    // Drift that delta sync did not see: two deletions, two creations, two updates.
    for id in [12, 31] {
        h.sim().delete(Entity::People, id);
    }
    let created: Vec<u64> = (0..2)
        .map(|_| h.sim().create(Entity::People, None).id)
        .collect();
    for id in [5, 47] {
        h.sim().update(Entity::People, id, None);
    }
    let s = reconcile_default(&cfg, &src, &l).await;
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(s.status, "succeeded");
    assert_eq!((s.deleted, s.missed, s.stale, s.queued), (2, 2, 2, 4));
    assert_eq!((s.source_count, s.destination_count), (Some(60), Some(60)));
    assert!(!live(&l.store, 12).await && !live(&l.store, 31).await);
    assert!(l.store.get(E, "12").await.unwrap().is_some(), "soft delete");
    assert!(!live(&l.store, created[0]).await, "not yet: queued");
    assert_eq!(drain(&src, &l).await, 4);
    assert_converged(&h, &l.store).await;
    // The run's objects are gone and the lease is free.
    assert!(l.spill.list("reconcile/").await.unwrap().is_empty());
    let again = reconcile_default(&cfg, &src, &l).await;
    assert_eq!(
        (again[0].deleted, again[0].missed, again[0].stale),
        (0, 0, 0)
    );
}

/// A source's hook after the `n`-th ID page.
struct HookedIds<F: Fn() + Send + Sync> {
    after_page: usize,
    hook: F,
    pages: AtomicUsize,
    /// Drop every ID page's records with these IDs (a listing that misses live records).
    hide: Vec<String>,
}

impl<S: SourceApi + ?Sized, F: Fn() + Send + Sync> SourceHooks<S> for HookedIds<F> {
    fn stream_ids<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        self.stream_ids_from(inner, entity, None)
    }
    fn stream_ids_from<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        inner
            .stream_ids_from(entity, resume)
            .map(move |p| {
                let n = self.pages.fetch_add(1, Ordering::SeqCst) + 1;
                if n == self.after_page {
                    (self.hook)();
                }
                p.map(|mut p| {
                    if !self.hide.is_empty() {
                        p.ids.retain(|x| !self.hide.contains(&x.id));
                        // A source without totals: only the confirmations can see the gap.
                        p.total_count = None;
                    }
                    p
                })
            })
            .boxed()
    }
}

async fn deletions_behind_the_listing(naive: bool) -> (Vec<RunSummary>, Vec<u64>, Local) {
    let h = sim::people(400).await;
    let cfg = config(&h);
    let l = local();
    sync_all(&SourceClient::new(&cfg, None).unwrap(), &l.store).await;
    let mut inner = SourceClient::new(&cfg, None).unwrap();
    if naive {
        inner = inner.with_naive_offset_paging();
    }
    // After the second page (IDs 1..=200 read), five records the listing passed are deleted.
    let sim = h.sim();
    let src = Forward::new(
        Arc::new(inner),
        HookedIds {
            after_page: 2,
            hook: move || {
                for id in [10, 20, 30, 40, 50] {
                    sim.delete(Entity::People, id);
                }
            },
            pages: AtomicUsize::new(0),
            hide: Vec::new(),
        },
    );
    let opts = ReconcileOptions {
        confirm_deletes: !naive,
        ..Default::default()
    };
    let s = reconcile(&cfg, &src, &l, PlanInput::default(), &opts)
        .await
        .unwrap();
    let live_ids: Vec<u64> = h
        .sim()
        .versions(Entity::People)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut wrongly = Vec::new();
    for id in live_ids {
        if !live(&l.store, id).await {
            wrongly.push(id);
        }
    }
    (s, wrongly, l)
}

#[tokio::test]
async fn deletions_behind_an_offset_listing_do_not_make_a_live_record_look_deleted() {
    let (s, wrongly_deleted, _) = deletions_behind_the_listing(false).await;
    assert!(wrongly_deleted.is_empty(), "{wrongly_deleted:?}");
    // The five deleted behind the listing are seen at the destination only: deleted (confirmed).
    assert_eq!(
        s[0].deleted, 0,
        "they were read before their deletion: nothing to delete yet"
    );
    assert_eq!(s[0].status, "succeeded");
}

#[tokio::test]
async fn negative_control_naive_offsets_without_confirmation_delete_a_live_record() {
    let (_, wrongly_deleted, _) = deletions_behind_the_listing(true).await;
    assert_eq!(
        wrongly_deleted.len(),
        5,
        "five deletions behind a growing offset shift five live records out of the listing: {wrongly_deleted:?}"
    );
}

async fn hidden_candidates(confirm: bool) -> (Vec<RunSummary>, usize, Local, SimHandle) {
    let h = sim::people(100).await;
    let cfg = config(&h);
    let l = local();
    sync_all(&SourceClient::new(&cfg, None).unwrap(), &l.store).await;
    let src = Forward::new(
        Arc::new(SourceClient::new(&cfg, None).unwrap()),
        HookedIds {
            after_page: usize::MAX,
            hook: || {},
            pages: AtomicUsize::new(0),
            hide: vec!["17".into(), "71".into()],
        },
    );
    let opts = ReconcileOptions {
        confirm_deletes: confirm,
        max_delete_count: 10,
        max_delete_share: 0.5,
        ..Default::default()
    };
    let s = reconcile(&cfg, &src, &l, PlanInput::default(), &opts)
        .await
        .unwrap();
    let mut lost = 0;
    for id in [17, 71] {
        lost += usize::from(!live(&l.store, id).await);
    }
    (s, lost, l, h)
}

#[tokio::test]
async fn the_guard_trips_on_candidates_the_source_still_has() {
    let (s, lost, l, h) = hidden_candidates(true).await;
    assert_eq!(lost, 0);
    assert_eq!(s[0].status, "guard_blocked");
    assert!(
        matches!(&s[0].guard, Some(Decision::Blocked { reason }) if reason.contains("still exist"))
    );
    // The live ones it found were queued for a refresh.
    let src = SourceClient::new(&config(&h), None).unwrap();
    assert_eq!(drain(&src, &l).await, 2);
}

#[tokio::test]
async fn negative_control_delete_on_absence_without_confirmation_loses_live_records() {
    let (_, lost, _, _) = hidden_candidates(false).await;
    assert_eq!(
        lost, 2,
        "without confirmation, records missing from the listing are deleted"
    );
}

#[tokio::test]
async fn the_guard_blocks_deletions_on_an_empty_source_and_on_a_failed_listing() {
    // Empty: every record gone at the source (or a wrong path answering an empty list).
    let (h, cfg, src, l) = synced(30).await;
    for id in 1..=30 {
        h.sim().delete(Entity::People, id);
    }
    let s = reconcile_default(&cfg, &src, &l).await;
    assert_eq!(s[0].status, "guard_blocked");
    assert_eq!(s[0].deleted, 0);
    for i in 1..=30 {
        assert!(live(&l.store, i).await, "person {i} kept");
    }

    // An error mid-stream: the third page fails; repairs go on, deletions do not.
    let (h, cfg, _, l) = synced(450).await;
    h.sim().delete(Entity::People, 3);
    let fresh = h.sim().create(Entity::People, None).id;
    let flaky = Forward::new(
        Arc::new(SourceClient::new(&cfg, None).unwrap()),
        HookedIds {
            after_page: 2,
            hook: {
                let s = h.sim();
                move || s.push_fault(Fault::Status(500))
            },
            pages: AtomicUsize::new(0),
            hide: Vec::new(),
        },
    );
    let s = reconcile_default(&cfg, &flaky, &l).await;
    assert_eq!(s[0].status, "guard_blocked");
    assert!(
        matches!(&s[0].guard, Some(Decision::Blocked { reason }) if reason.contains("did not end normally"))
    );
    assert!(live(&l.store, 3).await, "no deletion from a failed listing");
    let _ = fresh;
}

#[tokio::test]
async fn over_the_threshold_deletions_wait_for_approval_then_apply() {
    let (h, cfg, src, l) = synced(50).await;
    for id in 11..=20 {
        h.sim().delete(Entity::People, id);
    }
    // 10 of 50 (20%) is over the default 5%.
    let s = reconcile_default(&cfg, &src, &l).await;
    assert_eq!(s[0].status, "awaiting_approval");
    assert_eq!(s[0].deleted, 0);
    assert!(live(&l.store, 11).await);
    // A report-only run reports and changes nothing.
    let r = reconcile(
        &cfg,
        &src,
        &l,
        PlanInput {
            report_only: true,
            approve_deletions: true,
            ..Default::default()
        },
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r[0].status.as_str(), r[0].deleted), ("report_only", 0));
    assert!(live(&l.store, 11).await);
    // Approved re-run: deleted.
    let s = reconcile(
        &cfg,
        &src,
        &l,
        PlanInput {
            approve_deletions: true,
            ..Default::default()
        },
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((s[0].status.as_str(), s[0].deleted), ("succeeded", 10));
    assert_converged(&h, &l.store).await;
}

/// Three deletions of 40 records (7.5%) need no approval.
fn within_thresholds() -> ReconcileOptions {
    ReconcileOptions {
        max_delete_share: 0.1,
        ..Default::default()
    }
}

/// A busy source: three records deleted at the source before the run, and one created once
/// the listing is done and synced by another strategy before the Destination step (a webhook).
/// The destination has it, the listing does not. With `opts`, the run's summary and the
/// created record's ID.
async fn created_during_the_run(opts: &ReconcileOptions) -> (SimHandle, Local, RunSummary, u64) {
    let h = sim::people(40).await;
    let cfg = config(&h);
    let l = local();
    let plain = SourceClient::new(&cfg, None).unwrap();
    sync_all(&plain, &l.store).await;
    for id in [12, 22, 32] {
        h.sim().delete(Entity::People, id);
    }
    let created = Arc::new(std::sync::Mutex::new(None));
    let store = l.store.clone();
    let sim_h = h.sim();
    let cfg2 = cfg.clone();
    let slot = created.clone();
    let src = Forward::new(
        Arc::new(SourceClient::new(&cfg, None).unwrap()),
        HookedIds {
            after_page: 1,
            hook: move || {
                let id = sim_h.create(Entity::People, None).id;
                let (store, cfg2, slot) = (store.clone(), cfg2.clone(), slot.clone());
                // Synced right away by another strategy (blocking here keeps the order exact).
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let c = SourceClient::new(&cfg2, None).unwrap();
                        let r = c.get_by_id(E, &id.to_string()).await.unwrap().unwrap();
                        store
                            .upsert(&r, shared::model::Strategy::Webhook)
                            .await
                            .unwrap();
                    });
                    *slot.lock().unwrap() = Some(id);
                })
                .join()
                .unwrap();
            },
            pages: AtomicUsize::new(0),
            hide: Vec::new(),
        },
    );
    let s = reconcile(&cfg, &src, &l, PlanInput::default(), opts)
        .await
        .unwrap();
    let id = created
        .lock()
        .unwrap()
        .expect("the record was created during the run");
    (h, l, s.into_iter().next().unwrap(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_and_synced_during_the_run_is_not_deleted_and_does_not_block_the_run() {
    let (h, l, s, created) = created_during_the_run(&within_thresholds()).await;
    assert!(live(&l.store, created).await, "the created record stays");
    // Not a candidate: the run is not blocked, and the real deletions are applied.
    assert_eq!(s.guard, Some(Decision::Delete), "{s:?}");
    assert_eq!(
        (s.status.as_str(), s.deleted, s.recent),
        ("succeeded", 3, 1),
        "{s:?}"
    );
    for id in [12, 22, 32] {
        assert!(!live(&l.store, id).await, "{id} is deleted");
    }
    assert_converged(&h, &l.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_record_synced_during_the_run_blocks_every_deletion_without_the_sync_times()
 {
    let opts = ReconcileOptions {
        skip_recent_candidates: false,
        ..within_thresholds()
    };
    let (_h, l, s, created) = created_during_the_run(&opts).await;
    assert!(live(&l.store, created).await);
    assert!(
        matches!(&s.guard, Some(Decision::Blocked { reason }) if reason.contains("the listing missed them")),
        "{s:?}"
    );
    assert_eq!(
        (s.status.as_str(), s.deleted),
        ("guard_blocked", 0),
        "{s:?}"
    );
    for id in [12, 22, 32] {
        assert!(
            live(&l.store, id).await,
            "{id}: the real deletion was never applied"
        );
    }
}

#[tokio::test]
async fn a_listing_and_an_apply_over_several_invocations_and_objects_and_a_re_run_apply() {
    let (h, cfg, src, l) = synced(700).await;
    for id in [101, 202, 303] {
        h.sim().delete(Entity::People, id);
    }
    // Two records the destination misses (a lost webhook): targeted repairs.
    let missed: Vec<u64> = (0..2)
        .map(|_| h.sim().create(Entity::People, None).id)
        .collect();
    // Every Source and Apply invocation stops after one page or batch (a deadline already
    // passed); runs of 64 pairs and lists of 2 make many objects.
    let opts = ReconcileOptions {
        run_size: 64,
        chunk_size: 2,
        stop_at: Some(std::time::Instant::now()),
        ..Default::default()
    };
    let deps = ReconcileDeps {
        config: &cfg,
        source: &src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
        spill: &l.spill,
        queue: &l.queue,
    };
    use shared::sync::reconcile as r;
    let plan = r::plan(
        &deps,
        &PlanInput {
            entity: Some(E.into()),
            ..Default::default()
        },
        &opts,
    )
    .await
    .unwrap();
    let run = plan.runs[0].clone();
    let mut p = r::SourceProgress::default();
    while !p.done {
        p = r::source(
            &deps,
            &r::SourceInput {
                run: run.clone(),
                progress: Some(p),
            },
            &opts,
        )
        .await
        .unwrap();
    }
    assert!(p.ended_normally);
    assert!(p.invocations >= 3, "{} invocations", p.invocations);
    assert_eq!(p.pairs, 699);
    let objects = l
        .spill
        .list(&format!("reconcile/{E}/{}/source/", run.run_id))
        .await
        .unwrap();
    assert!(objects.len() >= 3, "{objects:?}");
    for &shard in &run.shards {
        r::destination(
            &deps,
            &r::DestinationInput {
                run: run.clone(),
                shard,
            },
            &opts,
        )
        .await
        .unwrap();
    }
    let d = r::diff_step(&deps, &r::DiffInput { run: run.clone() }, &opts)
        .await
        .unwrap();
    assert_eq!(d.to_delete.pairs, 3);
    assert_eq!(d.to_delete.objects, 2, "chunks of 2");
    let g = r::guard(
        &deps,
        &r::GuardInput {
            run: run.clone(),
            source: p.clone(),
            diff: d.clone(),
        },
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(g.decision, Decision::Delete);
    let mut input = ApplyInput {
        run: run.clone(),
        diff: d.clone(),
        guard: g.clone(),
        approved: false,
        progress: None,
    };
    // One batch per invocation, repairs first: the first invocation queues the targeted syncs
    // and deletes nothing; each stop is recorded in the run's history.
    let mut first = r::apply(&deps, &input, &opts).await.unwrap();
    assert_eq!(
        (first.queued, first.deleted, first.done),
        (2, 0, false),
        "{first:?}"
    );
    let sent = l.queue.receive(10, 0).await.unwrap();
    assert_eq!(sent.len(), 2);
    for id in &missed {
        assert!(
            sent.iter()
                .any(|m| m.body.contains(&format!("\"id\":\"{id}\""))),
            "{sent:?}"
        );
    }
    // The worker syncs them.
    let m: Vec<InMessage> = sent.iter().map(InMessage::from).collect();
    let worker = WorkerDeps {
        source: &src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
    };
    let r = process_batch(&worker, &m, &WorkerOptions::default()).await;
    assert!(r.failed.is_empty(), "{r:?}");
    for g in &sent {
        l.queue.delete(&g.receipt).await.unwrap();
    }
    let history = l
        .store
        .list_runs(E, shared::ports::JobKind::Reconcile, 1)
        .await
        .unwrap();
    assert!(
        history[0].summary.contains("\"step\":\"apply\""),
        "{:?}",
        history[0]
    );
    while !first.done {
        input.progress = Some(first);
        first = r::apply(&deps, &input, &opts).await.unwrap();
    }
    assert_eq!(
        (first.queued, first.deleted, first.invocations),
        (2, 3, 3),
        "{first:?}"
    );
    let queued = l.queue.counts().await.unwrap();
    assert_eq!(
        queued.visible + queued.in_flight,
        0,
        "each repair queued once, by the first invocation"
    );
    // A crash after Apply: the state machine runs it again from the start. No double effect.
    input.progress = None;
    let mut second = r::apply(&deps, &input, &opts).await.unwrap();
    while !second.done {
        input.progress = Some(second);
        second = r::apply(&deps, &input, &opts).await.unwrap();
    }
    // Their soft deletes are writes since the listing started: not candidates any more.
    assert_eq!(
        (second.deleted, second.recent, second.delete_skipped),
        (0, 3, 0)
    );
    assert_eq!(drain(&src, &l).await, 2, "the repairs again: harmless");
    let s = r::finish(
        &deps,
        &r::FinishInput {
            run,
            source: Some(p),
            diff: Some(d),
            guard: Some(g),
            apply: Some(first),
            error: None,
            approval: None,
        },
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(s.status, "succeeded");
    assert_converged(&h, &l.store).await;
}

#[tokio::test]
async fn on_dynamodb_local_and_s3() {
    let h = sim::people(120).await;
    let cfg = config(&h);
    let src = SourceClient::new(&cfg, None).unwrap();
    let (records, control) = crate::conformance_dynamodb::dynamodb_stores().await;
    run_delta(
        &src,
        records.as_ref(),
        control.as_ref(),
        E,
        &DeltaOptions::default(),
    )
    .await
    .unwrap();
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3).await;
    let spill = S3Spill::new(s3, &bucket, "spill");
    let store = LocalStore::in_memory().unwrap();
    let queue = store.queue("work", QueueOptions::default());
    for id in [7, 70] {
        h.sim().delete(Entity::People, id);
    }
    h.sim().update(Entity::People, 99, None);
    let deps = ReconcileDeps {
        config: &cfg,
        source: &src,
        records: records.as_ref(),
        control: control.as_ref(),
        spill: &spill,
        queue: &queue,
    };
    let s = run_all(
        &deps,
        &PlanInput {
            entity: Some(E.into()),
            ..Default::default()
        },
        &ReconcileOptions {
            run_size: 50,
            chunk_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((s[0].deleted, s[0].stale, s[0].queued), (2, 1, 1));
    for id in ["7", "70"] {
        assert!(records.get(E, id).await.unwrap().unwrap().is_deleted());
    }
    assert!(
        spill.list("").await.unwrap().is_empty(),
        "the run's objects are removed"
    );
}

#[tokio::test]
async fn over_the_targeted_limit_the_delta_cursor_is_rewound_and_delta_repairs() {
    let (h, cfg, src, l) = synced(50).await;
    // Three records appear at the source with old timestamps, behind delta's cursor (a
    // restore from backup, say): delta sync alone would never read them.
    let cursor = |store: Arc<LocalStore>| async move {
        use shared::ports::{ControlStore, JobKind};
        store
            .job_state(E, JobKind::Delta)
            .await
            .unwrap()
            .cursor
            .map(|c| {
                shared::core::cursor::DeltaCursor::decode(&c)
                    .unwrap()
                    .watermark_us
            })
    };
    let before = cursor(l.store.clone()).await.expect("delta has a cursor");
    let old = before - 3_600_000_000;
    let ids: Vec<u64> = (0..3)
        .map(|k| h.sim().create(Entity::People, Some(old + k * 1_000_000)).id)
        .collect();
    sync_all(&src, &l.store).await;
    for id in &ids {
        assert!(!live(&l.store, *id).await, "delta alone misses {id}");
    }
    let s = reconcile(
        &cfg,
        &src,
        &l,
        PlanInput::default(),
        &ReconcileOptions {
            targeted_limit: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((s[0].missed, s[0].queued), (3, 0), "rewound, not queued");
    assert!(l.queue.receive(10, 0).await.unwrap().is_empty());
    let after = cursor(l.store.clone()).await.unwrap();
    assert!(
        after < old,
        "cursor {after} rewound below the oldest missed {old}"
    );
    sync_all(&src, &l.store).await;
    assert_converged(&h, &l.store).await;
}
