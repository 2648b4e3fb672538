//! Delta sync end to end (issue 3, "Tests"): `run_delta` over the source client against the
//! simulator, into the local store (SQLite) and DynamoDB Local, compared with the simulator.
//!
//! Every invariant test has a negative control: the same scenario with the naive behaviour
//! switched in (wall-clock cursor, strict `>` on the highest value seen, a growing offset, an
//! unconditional put, no lease) must lose data or break the invariant, and the control asserts
//! that it does, so that each test is shown to see the loss it guards against.
//!
//! The pairs (invariant test -> its negative control):
//! - records updated during a run: `records_updated_during_a_run_are_not_lost` ->
//!   `negative_control_wall_clock_cursor_under_skew_loses_updates` (the seed's cursor) and
//!   `negative_control_growing_offset_loses_untouched_records_for_good` (offset paging);
//! - a tie across a page boundary, stopped mid-tie: `a_tie_across_a_page_boundary_survives_a_deadline_stop`
//!   -> `negative_control_strict_max_seen_drops_the_rest_of_the_tie`;
//! - clock skew both ways, second timestamps: `clock_skew_and_second_timestamps_lose_nothing` ->
//!   `negative_control_naive_cursors_under_skew_and_second_timestamps` (strict `>`, wall clock);
//! - a crash at a write: `a_crash_between_write_and_checkpoint_resumes_without_loss`,
//!   `a_crash_before_a_write_leaves_the_cursor_behind_it`,
//!   `a_failed_checkpoint_keeps_the_cursor_and_a_rerun_converges` ->
//!   `negative_control_wall_clock_checkpoint_moves_past_unwritten_data`;
//! - the lease: `a_concurrent_run_is_refused_and_a_fenced_run_cannot_move_the_cursor_{local,dynamodb}`
//!   -> `negative_control_without_a_lease_both_runs_proceed_and_the_stale_one_moves_the_cursor`;
//! - an older page after a newer write: `an_older_page_after_a_newer_write_does_not_overwrite_it_{local,dynamodb}`
//!   -> `negative_control_unconditional_put_keeps_the_older_page`;
//! - a re-read of unchanged records: `a_reread_of_unchanged_records_writes_nothing` ->
//!   `negative_control_unconditional_put_rewrites_every_reread`.
//!
//! Without a negative control (no naive rule loses data there; the comparison they use is the
//! one the controls above show can see a loss): the backfills (2,000 people on DynamoDB Local,
//! 100,000 on a local store file) and the incremental run that writes exactly the changes; and
//! a record too large for the store, skipped and counted while the rest of its page is written
//! (`a_record_too_large_for_the_store_is_skipped_{local,dynamodb}`).

use crate::conformance_dynamodb::dynamodb_stores;
use crate::harness::scratch;
use crate::source_client::client;
use futures::StreamExt;
use futures::stream::BoxStream;
use shared::adapters::local::LocalStore;
use shared::core::cursor::DeltaCursor;
use shared::core::timefmt::{format_rfc3339, now_us};
use shared::memory::{MemoryControl, MemoryRecords};
use shared::model::{
    ID_SHARDS, LastAction, Micros, RawJson, Record, StoredRecord, StoredVersion, Strategy,
    WriteOutcome,
};
use shared::ports::{ControlStore, JobKind, LeaseOutcome, RecordPage, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::sync::delta::{
    DeltaOptions, DeltaSummary, NaiveCursor, PageHook, RunStatus, run_delta,
};
use shared::{SourceError, StoreError, SyncError};
use source_sim::{Entity, Granularity, Sim, SimConfig, SimHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use testkit::forward::{ControlHooks, Forward, RecordHooks, SourceHooks};
use testkit::{TempDir, sim};

const E: &str = "people";
const SEC: Micros = 1_000_000;
/// `SimConfig::default().base_time_us`: record `i` of a generated set is at `BASE + (i-1) s`.
const BASE: Micros = 1_704_067_200_000_000;

type Records = Arc<dyn RecordStore>;
type Control = Arc<dyn ControlStore>;
/// What a page hook records, read by the test afterwards.
type Shared<T> = Arc<Mutex<T>>;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// The source client on the simulator's people, `page_size` per page.
fn people_client(h: &SimHandle, page_size: u32) -> SourceClient {
    client(h, |c| c.entities[0].page_size = page_size)
}

fn local() -> (Records, Control) {
    let s = Arc::new(LocalStore::in_memory().expect("in-memory local store"));
    (s.clone(), s)
}

/// A database file in a scratch folder, removed (with its journal files) on drop.
struct DbFile(TempDir);

impl DbFile {
    fn new() -> Self {
        DbFile(scratch("delta"))
    }
    fn open(&self) -> Arc<LocalStore> {
        Arc::new(LocalStore::open(self.0.join("store.sqlite")).expect("open the local store file"))
    }
}

fn opts() -> DeltaOptions {
    DeltaOptions::default()
}

async fn run(src: &dyn SourceApi, rs: &Records, cs: &Control, o: &DeltaOptions) -> DeltaSummary {
    run_delta(src, rs.as_ref(), cs.as_ref(), E, o)
        .await
        .expect("delta run")
}

/// The delta cursor's watermark of the people entity, if it has one.
pub(crate) async fn watermark(cs: &dyn ControlStore) -> Option<Micros> {
    let st = cs.job_state(E, JobKind::Delta).await.expect("job state");
    st.cursor
        .map(|c| DeltaCursor::decode(&c).expect("cursor").watermark_us)
}

/// Every live `(id, delta)` of the store, over all shards.
pub(crate) async fn store_versions(rs: &dyn RecordStore) -> BTreeMap<String, Micros> {
    let mut out = BTreeMap::new();
    for shard in 0..ID_SHARDS {
        let mut after: Option<String> = None;
        loop {
            let page = rs
                .list_live_ids(E, shard, after.as_deref(), 5_000)
                .await
                .expect("list live ids");
            for i in page.items {
                assert!(out.insert(i.id, i.delta_us).is_none(), "ID listed twice");
            }
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    }
    out
}

/// How the store differs from the source.
#[derive(Debug, Default)]
struct Diff {
    /// At the source, not live in the store.
    missing: Vec<u64>,
    /// In both, but the store holds another `updated_at`, or (with `content`) other content.
    stale: Vec<u64>,
    /// Live in the store, not at the source.
    extra: Vec<String>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.stale.is_empty() && self.extra.is_empty()
    }
    /// Source records whose current version the store lacks.
    fn lost(&self) -> BTreeSet<u64> {
        self.missing.iter().chain(&self.stale).copied().collect()
    }
}

/// The revision a people record's content carries (`attributes.notes` starts with it).
fn revision(r: &StoredRecord) -> Option<u32> {
    let notes = r.payload.pointer("/attributes/notes")?.as_str()?;
    notes
        .strip_prefix("Revision ")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Compare the store with the simulator: IDs and delta versions, and with `content` also the
/// stored content's revision (which changes with every update, even within one second).
async fn diff(s: &Sim, rs: &dyn RecordStore, content: bool) -> Diff {
    let source: BTreeMap<u64, Micros> = s.versions(Entity::People).into_iter().collect();
    let store = store_versions(rs).await;
    let mut d = Diff::default();
    for (id, t) in &source {
        match store.get(&id.to_string()) {
            None => d.missing.push(*id),
            Some(st) if st != t => d.stale.push(*id),
            Some(_) => {}
        }
    }
    d.extra = store
        .keys()
        .filter(|k| !k.parse::<u64>().is_ok_and(|id| source.contains_key(&id)))
        .cloned()
        .collect();
    if content {
        let same: Vec<u64> = source
            .keys()
            .filter(|id| !d.missing.contains(id) && !d.stale.contains(id))
            .copied()
            .collect();
        let got: Vec<(u64, Option<u32>)> = futures::stream::iter(same)
            .map(|id| async move {
                let r = rs
                    .get(E, &id.to_string())
                    .await
                    .expect("get")
                    .expect("a live record");
                (id, revision(&r))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (id, rev) in got {
            let want = s.get(Entity::People, id).map(|v| v.mutation);
            if rev != want {
                d.stale.push(id);
            }
        }
        d.stale.sort_unstable();
    }
    d
}

async fn assert_converged(s: &Sim, rs: &dyn RecordStore, content: bool, what: &str) {
    let d = diff(s, rs, content).await;
    assert!(
        d.is_empty(),
        "{what}: the store differs from the source: {} missing {:?}, {} stale {:?}, {} extra {:?}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(20)],
        d.stale.len(),
        &d.stale[..d.stale.len().min(20)],
        d.extra.len(),
        &d.extra[..d.extra.len().min(20)],
    );
}

/// Source records below `watermark` whose current version the store lacks: what a cursor at
/// `watermark` would never read again.
fn lost_below(s: &Sim, d: &Diff, watermark: Micros) -> Vec<u64> {
    let lost = d.lost();
    s.versions(Entity::People)
        .into_iter()
        .filter(|(id, t)| *t < watermark && lost.contains(id))
        .map(|(id, _)| id)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// test doubles: fault injection and the naive stores
// ---------------------------------------------------------------------------------------------

/// A record store's hook that fails on the `crash_at`-th write: after writing the page when
/// `write_first` (a crash between the write and the checkpoint), else before writing any of it.
struct Crash {
    calls: AtomicUsize,
    crash_at: usize,
    write_first: bool,
}

#[async_trait::async_trait]
impl<S: RecordStore + ?Sized> RecordHooks<S> for Crash {
    async fn upsert_many(
        &self,
        inner: &S,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let crash = self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.crash_at;
        if crash && !self.write_first {
            return Err(StoreError::backend(
                "upsert records",
                std::io::Error::other("injected crash before the write"),
            ));
        }
        let out = inner.upsert_many(records, by).await?;
        if crash {
            return Err(StoreError::backend(
                "upsert records",
                std::io::Error::other("injected crash after the write"),
            ));
        }
        Ok(out)
    }
}

/// The naive record store: every write overwrites, whatever the versions (an unconditional
/// put). Over the in-memory store, whose reads it keeps.
pub(crate) type BlindStore = Forward<MemoryRecords, Blind>;

#[derive(Default)]
pub(crate) struct Blind;

#[async_trait::async_trait]
impl RecordHooks<MemoryRecords> for Blind {
    async fn upsert_many(
        &self,
        inner: &MemoryRecords,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut items = inner.items.lock().expect("poisoned");
        let now = now_us();
        Ok(records
            .iter()
            .map(|r| {
                let key = (r.entity.clone(), r.id.clone());
                let existed = items.contains_key(&key);
                items.insert(
                    key,
                    StoredRecord {
                        entity: r.entity.clone(),
                        id: r.id.clone(),
                        version: StoredVersion {
                            delta_us: r.version.delta_us,
                            fetched_at_us: r.version.fetched_at_us,
                            hash: r.version.hash,
                            deleted_at_us: None,
                            erased: false,
                        },
                        payload: serde_json::from_str(r.payload.get()).expect("JSON"),
                        first_seen_us: now,
                        last_synced_us: now,
                        last_action: if existed {
                            LastAction::Update
                        } else {
                            LastAction::Insert
                        },
                        written_by: by,
                        erased: None,
                    },
                );
                if existed {
                    WriteOutcome::Updated
                } else {
                    WriteOutcome::Inserted
                }
            })
            .collect())
    }
}

/// What a control-store wrapper does on the `nth` call of `save_cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnSave {
    /// Fail without saving (a crash, or the store unreachable, between write and checkpoint).
    Fail,
    /// First let run `run-b` take the lease over, as it would once ours expired (a paused
    /// Lambda), then save as asked.
    TakeOver,
}

const TAKER: &str = "run-b";

/// A control store's hook that does `action` on the `nth` call of `save_cursor`.
struct Interpose {
    calls: AtomicUsize,
    nth: usize,
    action: OnSave,
}

#[async_trait::async_trait]
impl<S: ControlStore + ?Sized> ControlHooks<S> for Interpose {
    async fn save_cursor(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            match self.action {
                OnSave::Fail => {
                    return Err(StoreError::backend(
                        "save cursor",
                        std::io::Error::other("injected failure before the checkpoint"),
                    ));
                }
                OnSave::TakeOver => {
                    let st = inner.job_state(entity, kind).await?;
                    let expired = st.lease_expires_us.expect("a lease is held");
                    let out = inner
                        .acquire_lease(entity, kind, TAKER, expired + 1, 3_600 * SEC)
                        .await?;
                    assert!(
                        matches!(out, LeaseOutcome::Acquired { .. }),
                        "run B takes the expired lease: {out:?}"
                    );
                }
            }
        }
        inner
            .save_cursor(entity, kind, holder, now_us, ttl_us, cursor)
            .await
    }
}

/// The naive control store: no lease at all (every run "acquires", every cursor write lands).
/// Keeps a log of who saved which cursor, in order (`hook.saves`).
type NoLeaseControl = Forward<MemoryControl, NoLease>;

#[derive(Default)]
struct NoLease {
    saves: Mutex<Vec<(String, Micros)>>,
}

#[async_trait::async_trait]
impl ControlHooks<MemoryControl> for NoLease {
    async fn acquire_lease(
        &self,
        _inner: &MemoryControl,
        _entity: &str,
        _kind: JobKind,
        _holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        Ok(LeaseOutcome::Acquired {
            token: 1,
            expires_us: now_us + ttl_us,
        })
    }

    async fn release_lease(
        &self,
        _inner: &MemoryControl,
        _entity: &str,
        _kind: JobKind,
        _holder: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn save_cursor(
        &self,
        inner: &MemoryControl,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        _ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError> {
        let mut jobs = inner.jobs.lock().expect("poisoned");
        let st = jobs.entry((entity.to_owned(), kind)).or_default();
        st.cursor = Some(cursor.to_owned());
        st.cursor_updated_us = Some(now_us);
        let w = DeltaCursor::decode(cursor).expect("cursor").watermark_us;
        self.saves
            .lock()
            .expect("poisoned")
            .push((holder.to_owned(), w));
        Ok(())
    }
}

/// A source's hook: a webhook racing the first delta page. Once the page has been fetched
/// (holding `id` at its old version) and before the engine writes it, the record is updated
/// at the source and the webhook worker writes the newer version (`get_by_id`, then upsert).
struct WebhookRace {
    sim: Sim,
    store: Records,
    id: u64,
    fired: AtomicBool,
}

impl<S: SourceApi + ?Sized> SourceHooks<S> for WebhookRace {
    fn list_changed_since<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
        since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>> {
        inner
            .list_changed_since(entity, since_us)
            .then(move |page| async move {
                if page.is_ok() && !self.fired.swap(true, Ordering::SeqCst) {
                    self.sim.update(Entity::People, self.id, None);
                    let newer = inner
                        .get_by_id(entity, &self.id.to_string())
                        .await?
                        .expect("the source has the record");
                    let out = self
                        .store
                        .upsert(&newer, Strategy::Webhook)
                        .await
                        .expect("webhook upsert");
                    assert!(out.wrote(), "the webhook writes the newer version: {out:?}");
                }
                page
            })
            .boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. backfill
// ---------------------------------------------------------------------------------------------

async fn backfill_equals_the_source(n: usize, rs: Records, cs: Control, content: bool) {
    let h = sim::people(n).await;
    let c = people_client(&h, 100);
    let s = run(&c, &rs, &cs, &opts()).await;
    assert_eq!(s.status, RunStatus::Succeeded);
    assert_eq!(
        (s.seen, s.inserted, s.written()),
        (n as u64, n as u64, n as u64)
    );
    // Keyset paging re-reads the last record of each page (`>=` its delta): at most one extra
    // call per 99 records.
    assert!(
        (n.div_ceil(100)..=n.div_ceil(99)).contains(&(s.pages as usize)),
        "{} pages",
        s.pages
    );
    assert_eq!(
        watermark(cs.as_ref()).await,
        Some(BASE + (n as i64 - 1) * SEC),
        "the cursor is the highest delta written (the source's clock is far ahead of it)"
    );
    assert_converged(&h.sim(), rs.as_ref(), content, "after the backfill").await;
    // The application reads full records, not only versions.
    let last = rs
        .get(E, &n.to_string())
        .await
        .expect("get")
        .expect("the last record is stored");
    assert_eq!(revision(&last), Some(0));
    assert_eq!(last.payload["id"], serde_json::json!(n.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_of_2000_people_on_dynamodb_local_equals_the_source() {
    let (rs, cs) = dynamodb_stores().await;
    backfill_equals_the_source(2_000, rs, cs, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_of_100000_people_on_the_local_store_equals_the_source() {
    let file = DbFile::new();
    let s = file.open();
    backfill_equals_the_source(100_000, s.clone(), s, false).await;
}

// ---------------------------------------------------------------------------------------------
// 2. incremental run, 9. re-read of unchanged records
// ---------------------------------------------------------------------------------------------

async fn incremental_run_writes_exactly_the_changes(rs: Records, cs: Control) {
    let h = sim::people(300).await;
    let c = people_client(&h, 100);
    run(&c, &rs, &cs, &opts()).await;
    let s = h.sim();
    let updated = [3, 42, 77, 150, 201, 250, 299];
    for id in updated {
        s.update(Entity::People, id, None)
            .expect("the record exists");
    }
    s.create_many(Entity::People, 2, None);
    s.create(Entity::People, None);
    s.create_many(Entity::People, 2, None);

    let second = run(&c, &rs, &cs, &opts()).await;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(
        (
            second.inserted,
            second.updated,
            second.restored,
            second.stale
        ),
        (5, 7, 0, 0),
        "{second:?}"
    );
    assert_eq!(
        second.unchanged,
        second.seen - 12,
        "only re-reads of the overlap are unchanged: {second:?}"
    );
    assert_converged(&s, rs.as_ref(), true, "after the incremental run").await;

    let third = run(&c, &rs, &cs, &opts()).await;
    assert_eq!(third.written(), 0, "{third:?}");
    assert_eq!(third.unchanged, third.seen, "{third:?}");
    assert!(
        third.seen >= 12,
        "the overlap re-reads the last changes: {third:?}"
    );
    assert_converged(&s, rs.as_ref(), true, "after a quiet run").await;
}

#[tokio::test]
async fn incremental_run_writes_exactly_the_changes_local() {
    let (rs, cs) = local();
    incremental_run_writes_exactly_the_changes(rs, cs).await;
}

#[tokio::test]
async fn incremental_run_writes_exactly_the_changes_dynamodb() {
    let (rs, cs) = dynamodb_stores().await;
    incremental_run_writes_exactly_the_changes(rs, cs).await;
}

/// Two runs with an overlap of ten years (the cursor stays ten years below the source's clock),
/// so the second re-reads everything; returns its summary.
async fn reread_everything(rs: Records, cs: Control) -> DeltaSummary {
    let h = sim::people(300).await;
    let c = people_client(&h, 100);
    let again = DeltaOptions {
        overlap_us: 10 * 365 * 86_400 * SEC,
        ..Default::default()
    };
    run(&c, &rs, &cs, &again).await;
    let s = run(&c, &rs, &cs, &again).await;
    assert_eq!(s.seen, 300, "the overlap covers every record: {s:?}");
    assert_converged(&h.sim(), rs.as_ref(), true, "after the re-read").await;
    s
}

#[tokio::test]
async fn a_reread_of_unchanged_records_writes_nothing() {
    let (rs, cs) = local();
    let s = reread_everything(rs, cs).await;
    assert_eq!(s.written(), 0, "{s:?}");
    assert_eq!(s.unchanged, s.seen, "{s:?}");
}

#[tokio::test]
async fn negative_control_unconditional_put_rewrites_every_reread() {
    let (_, cs) = local();
    let s = reread_everything(Arc::new(BlindStore::default()), cs).await;
    assert_eq!(
        s.written(),
        300,
        "an unconditional put rewrites each unchanged record: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. records updated during a run, 11. growing offset at the delta level
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DuringRun {
    /// The engine as shipped.
    Shipped,
    /// The seed's cursor: our wall clock at the end of the run.
    WallClock,
    /// The shipped cursor rule over a client that pages by a growing offset.
    GrowingOffset,
}

struct DuringRunOutcome {
    /// The updates the hook made, per page: `(page, ids)`.
    updates: Vec<(u64, Vec<u64>)>,
    /// IDs no hook ever touched.
    untouched: BTreeSet<u64>,
    after_run: Diff,
    after_next_run: Diff,
}

/// 350 people, pages of 100, the source's clock five minutes behind ours. After every page
/// written, the source changes: a record of page 1 (already read) and one of a page not yet
/// read are updated. The updates after the last page come after the listing's end (the next run
/// must find them); the earlier ones move records behind the reader's position.
async fn records_updated_during_a_run(variant: DuringRun) -> DuringRunOutcome {
    let h = sim::start(SimConfig {
        clock_skew_ms: -300_000,
        ..sim::people_only(350)
    })
    .await;
    let s = h.sim();
    let mut c = people_client(&h, 100);
    if variant == DuringRun::GrowingOffset {
        c = c.with_naive_offset_paging();
    }
    let (rs, cs) = local();
    let updates: Shared<Vec<(u64, Vec<u64>)>> = Arc::default();
    let hook = {
        let (s, updates) = (s.clone(), updates.clone());
        PageHook(Arc::new(move |sum: &DeltaSummary| {
            let p = sum.pages;
            let ids: Vec<u64> = [p, 100 * p + 50]
                .into_iter()
                .filter(|id| s.update(Entity::People, *id, None).is_some())
                .collect();
            updates.lock().expect("poisoned").push((p, ids));
        }))
    };
    let first = DeltaOptions {
        on_page: Some(hook),
        naive_cursor: (variant == DuringRun::WallClock).then_some(NaiveCursor::WallClock),
        ..Default::default()
    };
    let sum = run(&c, &rs, &cs, &first).await;
    assert_eq!(sum.status, RunStatus::Succeeded);
    let after_run = diff(&s, rs.as_ref(), true).await;
    let next = DeltaOptions {
        naive_cursor: first.naive_cursor,
        ..Default::default()
    };
    run(&c, &rs, &cs, &next).await;
    let after_next_run = diff(&s, rs.as_ref(), true).await;
    let updates = updates.lock().expect("poisoned").clone();
    let touched: BTreeSet<u64> = updates.iter().flat_map(|(_, ids)| ids.clone()).collect();
    let untouched = (1..=350).filter(|id| !touched.contains(id)).collect();
    DuringRunOutcome {
        updates,
        untouched,
        after_run,
        after_next_run,
    }
}

#[tokio::test]
async fn records_updated_during_a_run_are_not_lost() {
    let o = records_updated_during_a_run(DuringRun::Shipped).await;
    assert!(
        o.updates.len() >= 4,
        "updates between pages: {:?}",
        o.updates
    );
    // After the run, only the updates made after the listing's last page was read may be
    // missing: everything updated between pages (behind the reader and ahead of it) was read
    // at its new place. A full page is handed over once the next page's count has verified it
    // (`walk::check_skipped`), so the last page is read before the last two pages are written:
    // the updates after those two writes come after the listing's end.
    let last: Vec<u64> = o
        .updates
        .iter()
        .rev()
        .take(2)
        .flat_map(|(_, ids)| ids.clone())
        .collect();
    assert!(
        o.after_run.lost().iter().all(|id| last.contains(id)),
        "lost during the run: {:?} (last updates {last:?})",
        o.after_run
    );
    assert!(o.after_run.missing.is_empty() && o.after_run.extra.is_empty());
    assert!(
        o.after_next_run.is_empty(),
        "after the next run: {:?}",
        o.after_next_run
    );
}

#[tokio::test]
async fn negative_control_wall_clock_cursor_under_skew_loses_updates() {
    let o = records_updated_during_a_run(DuringRun::WallClock).await;
    let (_, last) = o.updates.last().expect("pages");
    let lost = o.after_next_run.lost();
    assert!(
        !lost.is_empty(),
        "the wall-clock cursor must lose the updates after the run's listing"
    );
    assert!(
        last.iter().all(|id| lost.contains(id)),
        "the last updates {last:?} are lost for good: {lost:?}"
    );
}

#[tokio::test]
async fn negative_control_growing_offset_loses_untouched_records_for_good() {
    let o = records_updated_during_a_run(DuringRun::GrowingOffset).await;
    let skipped: Vec<u64> = o
        .after_run
        .missing
        .iter()
        .filter(|id| o.untouched.contains(id))
        .copied()
        .collect();
    assert!(
        !skipped.is_empty(),
        "a growing offset skips records nobody touched: {:?}",
        o.after_run
    );
    // Untouched records keep their old timestamps, far behind the cursor: the next run never
    // reads them again.
    for id in &skipped {
        assert!(
            o.after_next_run.missing.contains(id),
            "record {id} is still missing after the next run"
        );
    }
    let shipped = records_updated_during_a_run(DuringRun::Shipped).await;
    assert!(
        shipped.after_run.missing.is_empty(),
        "keyset paging skips nothing in the same scenario: {:?}",
        shipped.after_run
    );
}

// ---------------------------------------------------------------------------------------------
// 4. a tie across a page boundary, stopped by the deadline in the middle of it
// ---------------------------------------------------------------------------------------------

struct TieOutcome {
    tie: Vec<u64>,
    first: DeltaSummary,
    first_watermark: Option<Micros>,
    second: DeltaSummary,
    after: Diff,
}

/// 30 old records, then 250 sharing one second-aligned timestamp `t`, then one at `t + 1 s`.
/// Pages of 100: the first page holds 30 + 70 of the tie; the run stops at the deadline right
/// after it. The next run continues.
async fn tie_stopped_by_the_deadline(rule: Option<NaiveCursor>) -> TieOutcome {
    let h = sim::people(30).await;
    let s = h.sim();
    let t = s.now_us() / SEC * SEC - 60 * SEC;
    let tie: Vec<u64> = s
        .create_many(Entity::People, 250, Some(t))
        .into_iter()
        .map(|v| v.id)
        .collect();
    s.create(Entity::People, Some(t + SEC));
    let c = people_client(&h, 100);
    let (rs, cs) = local();
    let first = run(
        &c,
        &rs,
        &cs,
        &DeltaOptions {
            stop_at: Some(Instant::now()),
            naive_cursor: rule,
            ..Default::default()
        },
    )
    .await;
    let first_watermark = watermark(cs.as_ref()).await;
    let second = run(
        &c,
        &rs,
        &cs,
        &DeltaOptions {
            naive_cursor: rule,
            ..Default::default()
        },
    )
    .await;
    let after = diff(&s, rs.as_ref(), true).await;
    TieOutcome {
        tie,
        first,
        first_watermark,
        second,
        after,
    }
}

#[tokio::test]
async fn a_tie_across_a_page_boundary_survives_a_deadline_stop() {
    let o = tie_stopped_by_the_deadline(None).await;
    assert_eq!(
        (o.first.status, o.first.pages, o.first.seen),
        (RunStatus::Partial, 1, 100),
        "{:?}",
        o.first
    );
    let t = o.first_watermark.expect("a checkpoint");
    assert_eq!(o.second.status, RunStatus::Succeeded);
    assert_eq!(
        o.second.inserted, 181,
        "the rest of the tie and the record after it: {:?}",
        o.second
    );
    assert!(o.after.is_empty(), "all 250 present: {:?}", o.after);
    assert!(o.tie.len() == 250 && t > BASE);
}

#[tokio::test]
async fn negative_control_strict_max_seen_drops_the_rest_of_the_tie() {
    let o = tie_stopped_by_the_deadline(Some(NaiveCursor::StrictMaxSeen)).await;
    assert_eq!(o.first.status, RunStatus::Partial);
    assert_eq!(
        o.second.inserted, 1,
        "only the record after the tie: {:?}",
        o.second
    );
    let lost = o.after.lost();
    assert_eq!(lost.len(), 180, "{:?}", o.after);
    assert!(lost.iter().all(|id| o.tie.contains(id)));
}

// ---------------------------------------------------------------------------------------------
// 5. clock skew (both directions) and second-granularity timestamps
// ---------------------------------------------------------------------------------------------

/// A source with whole-second timestamps and its clock `skew_ms` off ours. Before the first
/// run, three records are updated (at the source's now, second `S`); the run reads them. After
/// it, in that same second `S`: one of those three is updated again and two more records are;
/// then one more update and two creates at the source's now. Returns the store's difference
/// from the source after the second run, and the IDs updated in second `S` after the first run.
async fn skew_and_seconds(skew_ms: i64, rule: Option<NaiveCursor>) -> (Diff, Vec<u64>) {
    let h = sim::start(SimConfig {
        granularity: Granularity::Seconds,
        clock_skew_ms: skew_ms,
        ..sim::people_only(200)
    })
    .await;
    let s = h.sim();
    let c = client(&h, |c| {
        c.entities[0].page_size = 100;
        c.source.timestamp_resolution_us = Some(SEC);
    });
    let (rs, cs) = local();
    let o = DeltaOptions {
        naive_cursor: rule,
        ..Default::default()
    };
    let at = [10, 20, 30].map(|id| {
        s.update(Entity::People, id, None)
            .expect("exists")
            .updated_at_us
    });
    let first = run(&c, &rs, &cs, &o).await;
    assert_eq!((first.status, first.seen), (RunStatus::Succeeded, 200));
    assert_converged(&s, rs.as_ref(), true, "after the first run").await;
    let second_s = *at.iter().max().expect("three");
    assert!(
        (second_s - (now_us() + skew_ms * 1_000)).abs() < 60 * SEC,
        "timestamps follow the skewed clock"
    );
    let same_second = vec![30, 40, 50];
    for id in &same_second {
        s.update(Entity::People, *id, Some(second_s))
            .expect("exists");
    }
    s.update(Entity::People, 60, None).expect("exists");
    s.create_many(Entity::People, 2, None);
    run(&c, &rs, &cs, &o).await;
    (diff(&s, rs.as_ref(), true).await, same_second)
}

#[tokio::test]
async fn clock_skew_and_second_timestamps_lose_nothing() {
    for skew_ms in [-300_000, 300_000] {
        let (d, _) = skew_and_seconds(skew_ms, None).await;
        assert!(d.is_empty(), "skew {skew_ms} ms: {d:?}");
    }
}

#[tokio::test]
async fn negative_control_naive_cursors_under_skew_and_second_timestamps() {
    for skew_ms in [-300_000, 300_000] {
        // Strict `>` on the highest second seen: the same-second updates never come back.
        let (d, same_second) = skew_and_seconds(skew_ms, Some(NaiveCursor::StrictMaxSeen)).await;
        let lost = d.lost();
        assert!(
            same_second.iter().all(|id| lost.contains(id)),
            "skew {skew_ms} ms, strict >: {d:?}"
        );
        // Record 30 keeps its timestamp and changes content only: seen by the content check.
        assert!(d.stale.contains(&30));
    }
    // Our wall clock as the cursor, the source's clock behind it: every later change is lost.
    let (d, same_second) = skew_and_seconds(-300_000, Some(NaiveCursor::WallClock)).await;
    let lost = d.lost();
    assert!(
        same_second.iter().all(|id| lost.contains(id)) && lost.contains(&60),
        "wall clock, source behind: {d:?}"
    );
    assert_eq!(d.missing.len(), 2, "both creates are lost: {d:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. a crash between a write and the checkpoint
// ---------------------------------------------------------------------------------------------

/// What a run that crashed left, and what resuming it did.
struct CrashOutcome {
    sim: Sim,
    error: SyncError,
    /// The cursor the crashed run left.
    watermark: Micros,
    /// The cursor each written page reported (pages before the crash).
    checkpoints: Vec<Option<String>>,
    /// The highest delta the store held after the crash.
    max_stored: Micros,
    after_crash: Diff,
    lease_holder_after_crash: Option<String>,
    resumed: DeltaSummary,
    after_resume: Diff,
}

/// 500 people in pages of 100; the run crashes at the third page's write, after writing it
/// (`write_first`) or before. The run resumes on a reopened store file (a new process).
async fn crash_at_the_third_write(rule: Option<NaiveCursor>, write_first: bool) -> CrashOutcome {
    let h = sim::people(500).await;
    let s = h.sim();
    let c = people_client(&h, 100);
    let file = DbFile::new();
    let checkpoints: Shared<Vec<Option<String>>> = Arc::default();
    let hook = {
        let checkpoints = checkpoints.clone();
        PageHook(Arc::new(move |sum: &DeltaSummary| {
            checkpoints
                .lock()
                .expect("poisoned")
                .push(sum.cursor_after.clone());
        }))
    };
    let o = DeltaOptions {
        naive_cursor: rule,
        on_page: Some(hook),
        ..Default::default()
    };
    let (error, watermark, max_stored, after_crash, lease_holder_after_crash) = {
        let store = file.open();
        let crashing: Records = Arc::new(Forward::new(
            store.clone(),
            Crash {
                calls: AtomicUsize::new(0),
                crash_at: 3,
                write_first,
            },
        ));
        let cs: Control = store;
        let error = run_delta(&c, crashing.as_ref(), cs.as_ref(), E, &o)
            .await
            .expect_err("the injected crash fails the run");
        let st = cs.job_state(E, JobKind::Delta).await.expect("job state");
        let w = watermark(cs.as_ref())
            .await
            .expect("a checkpoint before the crash");
        let max_stored = *store_versions(crashing.as_ref())
            .await
            .values()
            .max()
            .expect("pages were written");
        (
            error,
            w,
            max_stored,
            diff(&s, crashing.as_ref(), false).await,
            st.lease_holder,
        )
    };
    let checkpoints = std::mem::take(&mut *checkpoints.lock().expect("poisoned"));
    let store = file.open();
    let (rs, cs): (Records, Control) = (store.clone(), store);
    let resume = DeltaOptions {
        naive_cursor: rule,
        ..Default::default()
    };
    let resumed = run(&c, &rs, &cs, &resume).await;
    let after_resume = diff(&s, rs.as_ref(), true).await;
    CrashOutcome {
        sim: s,
        error,
        watermark,
        checkpoints,
        max_stored,
        after_crash,
        lease_holder_after_crash,
        resumed,
        after_resume,
    }
}

#[tokio::test]
async fn a_crash_between_write_and_checkpoint_resumes_without_loss() {
    let o = crash_at_the_third_write(None, true).await;
    assert!(
        matches!(o.error, SyncError::Store(StoreError::Backend { .. })),
        "{:?}",
        o.error
    );
    assert_eq!(
        o.checkpoints.len(),
        2,
        "two pages completed before the crash"
    );
    assert_eq!(
        o.checkpoints.last().cloned().flatten(),
        Some(format_rfc3339(o.watermark)),
        "the cursor is the second page's checkpoint"
    );
    assert!(
        o.max_stored > o.watermark,
        "the third page was written, past the checkpoint"
    );
    assert!(
        !o.after_crash.missing.is_empty(),
        "the last pages were never written"
    );
    assert!(
        lost_below(&o.sim, &o.after_crash, o.watermark).is_empty(),
        "the cursor never moved past unwritten data: {:?}",
        o.after_crash
    );
    assert_eq!(o.lease_holder_after_crash, None, "the failed run let go");
    assert_eq!(o.resumed.status, RunStatus::Succeeded);
    assert_eq!(
        o.resumed.inserted as usize,
        o.after_crash.missing.len(),
        "the resumed run writes what was missing, nothing else: {:?}",
        o.resumed
    );
    assert_eq!(o.resumed.updated, 0);
    assert!(o.after_resume.is_empty(), "{:?}", o.after_resume);
}

#[tokio::test]
async fn a_crash_before_a_write_leaves_the_cursor_behind_it() {
    let o = crash_at_the_third_write(None, false).await;
    assert_eq!(o.checkpoints.len(), 2);
    assert_eq!(
        o.checkpoints.last().cloned().flatten(),
        Some(format_rfc3339(o.watermark))
    );
    assert_eq!(
        o.max_stored, o.watermark,
        "nothing past the checkpoint was written"
    );
    assert!(
        lost_below(&o.sim, &o.after_crash, o.watermark).is_empty(),
        "the cursor never moved past unwritten data: {:?}",
        o.after_crash
    );
    assert_eq!(
        o.resumed.inserted as usize,
        o.after_crash.missing.len(),
        "{:?}",
        o.resumed
    );
    assert!(o.after_resume.is_empty(), "{:?}", o.after_resume);
}

#[tokio::test]
async fn a_failed_checkpoint_keeps_the_cursor_and_a_rerun_converges() {
    let h = sim::people(400).await;
    let s = h.sim();
    let c = people_client(&h, 100);
    let (rs, inner) = local();
    let cs: Control = Arc::new(Forward::new(
        inner.clone(),
        Interpose {
            calls: AtomicUsize::new(0),
            nth: 2,
            action: OnSave::Fail,
        },
    ));
    let err = run_delta(&c, rs.as_ref(), cs.as_ref(), E, &opts())
        .await
        .expect_err("the checkpoint fails");
    assert!(err.is_retryable(), "{err:?}");
    let w = watermark(inner.as_ref())
        .await
        .expect("the first checkpoint");
    assert_eq!(w, BASE + 99 * SEC, "the cursor stays at page 1");
    let stored = store_versions(rs.as_ref()).await;
    assert!(
        stored.len() > 100 && stored.values().any(|t| *t > w),
        "page 2 is written, not checkpointed"
    );
    let d = diff(&s, rs.as_ref(), false).await;
    assert!(lost_below(&s, &d, w).is_empty(), "{d:?}");
    let runs = inner.list_runs(E, JobKind::Delta, 1).await.expect("runs");
    assert_eq!(runs[0].status, "failed");
    let again = run(&c, &rs, &cs, &opts()).await;
    assert_eq!(again.status, RunStatus::Succeeded);
    assert_eq!(again.inserted as usize, d.missing.len(), "{again:?}");
    assert_converged(&s, rs.as_ref(), true, "after the rerun").await;
}

#[tokio::test]
async fn negative_control_wall_clock_checkpoint_moves_past_unwritten_data() {
    let o = crash_at_the_third_write(Some(NaiveCursor::WallClock), true).await;
    assert!(!o.after_crash.missing.is_empty());
    let past = lost_below(&o.sim, &o.after_crash, o.watermark);
    assert_eq!(
        past.len(),
        o.after_crash.missing.len(),
        "the wall-clock checkpoint jumped past every unwritten record"
    );
    assert_eq!(o.resumed.inserted, 0, "{:?}", o.resumed);
    assert_eq!(
        o.after_resume.missing, o.after_crash.missing,
        "lost for good: {:?}",
        o.after_resume
    );
}

// ---------------------------------------------------------------------------------------------
// 7. the lease: a concurrent run is refused, a fenced-off run cannot move the cursor
// ---------------------------------------------------------------------------------------------

/// Run A (pages of 100 over 300 people) starts run B of the same entity while it holds the
/// lease (from its page hook, run to completion there). Returns A's and B's summaries.
async fn concurrent_runs(rs: Records, cs: Control) -> (DeltaSummary, DeltaSummary, Sim) {
    let h = sim::people(300).await;
    let a = people_client(&h, 100);
    let b = Arc::new(people_client(&h, 100));
    let second: Shared<Option<Result<DeltaSummary, String>>> = Arc::default();
    let hook = {
        let (rs, cs, b, second) = (rs.clone(), cs.clone(), b.clone(), second.clone());
        PageHook(Arc::new(move |sum: &DeltaSummary| {
            if sum.pages != 1 {
                return;
            }
            let o = DeltaOptions {
                run_id: TAKER.into(),
                ..Default::default()
            };
            let out = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(run_delta(
                    b.as_ref(),
                    rs.as_ref(),
                    cs.as_ref(),
                    E,
                    &o,
                ))
            });
            *second.lock().expect("poisoned") = Some(out.map_err(|e| e.to_string()));
        }))
    };
    let first = DeltaOptions {
        run_id: "run-a".into(),
        on_page: Some(hook),
        ..Default::default()
    };
    let sa = run(&a, &rs, &cs, &first).await;
    let sb = second
        .lock()
        .expect("poisoned")
        .take()
        .expect("run B ran")
        .expect("run B");
    (sa, sb, h.sim())
}

/// Run A checkpoints page 1; before its second checkpoint, run B takes the lease over (A's
/// lease expired, say A was paused). A's cursor write is refused and A fails; B then runs to
/// the end.
async fn fenced_off_run(rs: Records, inner: Control) {
    let h = sim::people(300).await;
    let s = h.sim();
    let c = people_client(&h, 100);
    let cs: Control = Arc::new(Forward::new(
        inner.clone(),
        Interpose {
            calls: AtomicUsize::new(0),
            nth: 2,
            action: OnSave::TakeOver,
        },
    ));
    let a = DeltaOptions {
        run_id: "run-a".into(),
        ..Default::default()
    };
    let err = run_delta(&c, rs.as_ref(), cs.as_ref(), E, &a)
        .await
        .expect_err("run A lost its lease");
    match &err {
        SyncError::Store(StoreError::LeaseLost { holder, .. }) => assert_eq!(holder, "run-a"),
        other => panic!("want LeaseLost, got {other:?}"),
    }
    let st = inner.job_state(E, JobKind::Delta).await.expect("state");
    assert_eq!(
        st.cursor
            .as_deref()
            .map(|c| DeltaCursor::decode(c).expect("cursor").watermark_us),
        Some(BASE + 99 * SEC),
        "A's refused write did not move the cursor"
    );
    assert_eq!(
        st.lease_holder.as_deref(),
        Some(TAKER),
        "A's failure did not release B's lease"
    );
    // The port itself refuses A.
    let direct = inner
        .save_cursor(
            E,
            JobKind::Delta,
            "run-a",
            now_us(),
            60 * SEC,
            &DeltaCursor::new(BASE + 299 * SEC).encode(),
        )
        .await
        .expect_err("fenced");
    assert!(matches!(direct, StoreError::LeaseLost { .. }), "{direct:?}");
    // B, holding the lease, runs to the end.
    let b = DeltaOptions {
        run_id: TAKER.into(),
        ..Default::default()
    };
    let sb = run_delta(&c, rs.as_ref(), inner.as_ref(), E, &b)
        .await
        .expect("run B");
    assert_eq!(sb.status, RunStatus::Succeeded);
    assert_converged(&s, rs.as_ref(), true, "after run B").await;
}

async fn lease_scenarios(rs: Records, cs: Control) {
    let (sa, sb, s) = concurrent_runs(rs.clone(), cs.clone()).await;
    assert_eq!(
        (sb.status, sb.held_by.as_deref()),
        (RunStatus::Skipped, Some("run-a")),
        "{sb:?}"
    );
    assert_eq!((sb.seen, sb.written()), (0, 0));
    assert_eq!(sa.status, RunStatus::Succeeded);
    assert_converged(&s, rs.as_ref(), false, "after run A").await;
    let st = cs.job_state(E, JobKind::Delta).await.expect("state");
    assert_eq!(st.lease_holder, None, "run A let go at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_run_is_refused_and_a_fenced_run_cannot_move_the_cursor_local() {
    let (rs, cs) = local();
    lease_scenarios(rs, cs).await;
    let (rs, cs) = local();
    fenced_off_run(rs, cs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_run_is_refused_and_a_fenced_run_cannot_move_the_cursor_dynamodb() {
    let (rs, cs) = dynamodb_stores().await;
    lease_scenarios(rs, cs).await;
    let (rs, cs) = dynamodb_stores().await;
    fenced_off_run(rs, cs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn negative_control_without_a_lease_both_runs_proceed_and_the_stale_one_moves_the_cursor() {
    let (rs, _) = local();
    let naive = Arc::new(NoLeaseControl::default());
    let (_, sb, _) = concurrent_runs(rs.clone(), naive.clone()).await;
    assert_eq!(
        sb.status,
        RunStatus::Succeeded,
        "without a lease the second run is not refused: {sb:?}"
    );
    // After B finished, the overtaken run A still writes its cursor: backwards, behind B's.
    let saves = naive.hook.saves.lock().expect("poisoned").clone();
    let b_last = saves
        .iter()
        .rposition(|(h, _)| h == TAKER)
        .expect("B saved");
    let b_watermark = saves[b_last].1;
    assert!(
        saves[b_last + 1..]
            .iter()
            .any(|(h, w)| h == "run-a" && *w < b_watermark),
        "the overtaken run A moved the cursor back behind B's: {saves:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. an older page arriving after a newer write
// ---------------------------------------------------------------------------------------------

/// 50 people, one page. Between the page's fetch and its write, record 7 is updated and the
/// webhook writes the newer version; then the page (holding the older one) is written.
async fn older_page_after_newer_write(rs: Records, cs: Control) -> (DeltaSummary, Sim, Diff) {
    let h = sim::people(50).await;
    let s = h.sim();
    let src = Forward::new(
        Arc::new(people_client(&h, 100)),
        WebhookRace {
            sim: s.clone(),
            store: rs.clone(),
            id: 7,
            fired: AtomicBool::new(false),
        },
    );
    let sum = run(&src, &rs, &cs, &opts()).await;
    assert_eq!(sum.pages, 1, "one page: the newer version is not re-read");
    let d = diff(&s, rs.as_ref(), true).await;
    (sum, s, d)
}

async fn an_older_page_after_a_newer_write_does_not_overwrite_it(rs: Records, cs: Control) {
    let (sum, s, d) = older_page_after_newer_write(rs.clone(), cs).await;
    assert_eq!((sum.inserted, sum.stale), (49, 1), "{sum:?}");
    assert!(d.is_empty(), "{d:?}");
    let kept = rs.get(E, "7").await.expect("get").expect("stored");
    let newer = s.get(Entity::People, 7).expect("exists");
    assert_eq!(kept.version.delta_us, newer.updated_at_us);
    assert_eq!(revision(&kept), Some(1));
    assert_eq!(kept.written_by, Strategy::Webhook);
}

#[tokio::test]
async fn an_older_page_after_a_newer_write_does_not_overwrite_it_local() {
    let (rs, cs) = local();
    an_older_page_after_a_newer_write_does_not_overwrite_it(rs, cs).await;
}

#[tokio::test]
async fn an_older_page_after_a_newer_write_does_not_overwrite_it_dynamodb() {
    let (rs, cs) = dynamodb_stores().await;
    an_older_page_after_a_newer_write_does_not_overwrite_it(rs, cs).await;
}

#[tokio::test]
async fn negative_control_unconditional_put_keeps_the_older_page() {
    let (_, cs) = local();
    let rs: Records = Arc::new(BlindStore::default());
    let (sum, s, d) = older_page_after_newer_write(rs.clone(), cs).await;
    assert_eq!(sum.stale, 0);
    assert_eq!(d.lost(), BTreeSet::from([7]), "{d:?}");
    let kept = rs.get(E, "7").await.expect("get").expect("stored");
    assert_eq!(
        revision(&kept),
        Some(0),
        "the older version overwrote the newer"
    );
    assert!(kept.version.delta_us < s.get(Entity::People, 7).expect("exists").updated_at_us);
}

/// A backlog inside the overlap window larger than one run can read (a mass update within the
/// last two minutes, each run stopped by its deadline after one page) still makes progress:
/// the cursor moves to what each run read, so a few runs converge (the old rule, "start an
/// overlap before min(max written, ceiling)", re-read the same first page for ever).
#[tokio::test]
async fn a_backlog_inside_the_overlap_larger_than_a_run_still_progresses() {
    let h = sim::people(0).await;
    let now = h.sim().now_us();
    for i in 0..450 {
        h.sim()
            .create(Entity::People, Some(now - 60_000_000 + i * 10_000));
    }
    let c = people_client(&h, 100);
    let (rs, cs) = local();
    let partial = DeltaOptions {
        stop_at: Some(std::time::Instant::now()),
        ..Default::default()
    };
    let mut marks = Vec::new();
    for k in 0..6 {
        // The schedule: five minutes of the source's clock between runs.
        h.sim().set_clock_skew_ms(k * 300_000);
        let s = run(&c, &rs, &cs, &partial).await;
        assert_eq!(s.status, RunStatus::Partial, "{s:?}");
        marks.push(watermark(cs.as_ref()).await.expect("cursor saved"));
    }
    assert!(
        marks.windows(2).all(|w| w[1] > w[0]),
        "every partial run moves the cursor: {marks:?}"
    );
    assert_converged(&h.sim(), rs.as_ref(), true, "after six one-page runs").await;
}

/// A record too large for either store (JSON over 350 KiB, still over 390 KiB compressed) is
/// taken out of its page and counted; the rest of the page and the next page are written and
/// the cursor moves on, on both stores (the local one in one transaction, DynamoDB in turn).
async fn a_record_too_large_for_the_store_is_skipped(rs: Records, cs: Control) {
    let record = |id: &str, delta_us: Micros, body: &str| {
        let payload = RawJson::parse(format!(r#"{{"id":"{id}","notes":"{body}"}}"#)).expect("JSON");
        Record::new(E, id, delta_us, now_us(), payload)
    };
    // 800,000 random letters: zlib gets them to about 490 KB, over the 390 KiB limit.
    let mut x: u64 = 7;
    let noise: String = (0..800_000)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect();
    let src = shared::memory::ScriptedSource::default();
    let date = now_us();
    let page = |records| {
        Ok(RecordPage {
            records,
            rejected: Vec::new(),
            source_date_us: Some(date),
        })
    };
    src.listings.lock().expect("listings").push_back(vec![
        page(vec![
            record("1", 100, "a"),
            record("2", 200, &noise),
            record("3", 200, "c"),
        ]),
        page(vec![record("4", 300, "d")]),
    ]);
    let s = run(&src, &rs, &cs, &opts()).await;
    assert_eq!(
        (s.status, s.seen, s.inserted, s.rejected),
        (RunStatus::Succeeded, 4, 3, 1),
        "{s:?}"
    );
    let ids: Vec<(Option<&str>, &str)> = s
        .rejected_ids
        .iter()
        .map(|r| (r.id.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(ids, [(Some("2"), "too_large")]);
    assert!(rs.get(E, "2").await.expect("get").is_none());
    for id in ["1", "3", "4"] {
        assert!(rs.get(E, id).await.expect("get").is_some(), "{id}");
    }
    assert_eq!(
        watermark(cs.as_ref()).await,
        Some(300),
        "the cursor moved past the refused record"
    );
}

#[tokio::test]
async fn a_record_too_large_for_the_store_is_skipped_local() {
    let (rs, cs) = local();
    a_record_too_large_for_the_store_is_skipped(rs, cs).await;
}

#[tokio::test]
async fn a_record_too_large_for_the_store_is_skipped_dynamodb() {
    let (rs, cs) = dynamodb_stores().await;
    a_record_too_large_for_the_store_is_skipped(rs, cs).await;
}
