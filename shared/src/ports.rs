//! The ports: small traits the sync logic depends on. Adapters implement them (`adapters::*`):
//! DynamoDB/SQS/S3 when deployed, SQLite and a folder locally, in-memory fakes in unit tests.
//! No SDK type crosses these signatures.

use crate::core::budget::{Limit, SliceAnswer, SliceAsk};
use crate::error::{SourceError, StoreError};
use crate::model::{
    DeleteOutcome, EraseOutcome, Fetched, IdVersion, LiftOutcome, LiveIdPage, Micros, PurgeCount,
    Record, RegressOutcome, Rejected, SourceUsage, StoredRecord, StoredVersion, Strategy,
    SyncTimes, WriteOutcome,
};
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::collections::HashSet;
use tokio::io::AsyncRead;

/// The synced records (the `records` table).
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Conditional upserts, each under the version rule (`core::decide_upsert`), many in flight.
    /// Outcomes come back in input order. An error means some items may not have been written
    /// (those that were are correct: the caller retries the whole batch).
    async fn upsert_many(
        &self,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError>;

    async fn upsert(&self, record: &Record, by: Strategy) -> Result<WriteOutcome, StoreError> {
        let mut out = self.upsert_many(std::slice::from_ref(record), by).await?;
        out.pop().ok_or_else(|| StoreError::Decode {
            key: format!("{}#{}", record.entity, record.id),
            message: "store returned no outcome".into(),
        })
    }

    /// Conditional soft delete (`core::decide_delete`): only a live item last fetched strictly
    /// before `evidence_us`.
    async fn soft_delete(
        &self,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError>;

    /// Reconciliation's repair of a record whose source version went backwards (an entity with
    /// `allow_version_regression`), and the only write that may lower `delta_us`: writes
    /// `record` (`last_action` `regressed`, `written_by` `reconcile`) only when
    /// `core::decide_regression` says `Regressed` for the stored copy at the time of the write,
    /// which must still be exactly `compared` (a DynamoDB condition; a check inside the SQLite
    /// transaction), so that a concurrent write or delete wins. Every other outcome writes
    /// nothing.
    async fn write_regressed(
        &self,
        record: &Record,
        compared: &StoredVersion,
    ) -> Result<RegressOutcome, StoreError>;

    /// The item, live, soft-deleted or an erasure's marker (`StoredRecord::erased`).
    async fn get(&self, entity: &str, id: &str) -> Result<Option<StoredRecord>, StoreError>;

    /// Erase our copy of one record (a privacy request): the item, whatever it holds, is
    /// replaced in one write by a suppression marker holding the key, `erased_us = now_us`,
    /// `erased_by` and nothing of the record (no payload, no version, out of the live index),
    /// also when nothing was stored. Every write path refuses an erased record
    /// (`core::version`: `Suppressed`) until `lift_erasure`. Erasing again keeps the first
    /// marker (`AlreadyErased`).
    async fn erase(
        &self,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError>;

    /// Remove an erasure's marker (only a marker: a live or soft-deleted item is left alone),
    /// after which the next sync that sees the record writes it afresh.
    async fn lift_erasure(&self, entity: &str, id: &str) -> Result<LiftOutcome, StoreError>;

    /// Remove soft-deleted items (of `entity`, or every entity) whose deletion evidence
    /// (`deleted_at_us`) is before `deleted_before_us`, at most `limit` of them; never an
    /// erasure's marker. Each delete is conditional on the item still being the soft-deleted
    /// copy read (a restore or a later deletion meanwhile wins: `changed`). `dry_run` counts
    /// them and removes nothing. An operator's command: on DynamoDB it scans the whole table.
    async fn purge_deleted(
        &self,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError>;

    /// The sync times of these IDs (live or soft-deleted), strongly consistent, in as few
    /// requests as the store allows (DynamoDB: BatchGetItem of 100 keys, projected to the two
    /// attributes). IDs not stored are absent from the map.
    async fn sync_times(
        &self,
        entity: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, SyncTimes>, StoreError>;

    /// One page of live IDs of one shard (`model::shard_of`), sorted bytewise, after `after`.
    async fn list_live_ids(
        &self,
        entity: &str,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LiveIdPage, StoreError>;

    /// The database behind this store, when a control store's adapter can join its
    /// transactions (`ControlStore::upsert_then_save_cursor`); `None` otherwise.
    fn database_id(&self) -> Option<usize> {
        None
    }
}

/// Which job a lease and cursor belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    Delta,
    Reconcile,
    /// A full re-sync (`sync::resync`): a delta listing from the beginning on a cursor and a
    /// lease of its own, beside the entity's delta runs.
    Resync,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Delta => "delta",
            JobKind::Reconcile => "reconcile",
            JobKind::Resync => "resync",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delta" => Some(JobKind::Delta),
            "reconcile" => Some(JobKind::Reconcile),
            "resync" => Some(JobKind::Resync),
            _ => None,
        }
    }
}

/// Result of trying to take a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Taken (or re-taken by the same holder); `token` grows with every acquisition.
    Acquired { token: u64, expires_us: Micros },
    /// Another run holds it until `expires_us`.
    Held { holder: String, expires_us: Micros },
}

/// A job's persisted state: cursor and lease live in one item per `(entity, kind)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobState {
    pub cursor: Option<String>,
    pub cursor_updated_us: Option<Micros>,
    pub lease_holder: Option<String>,
    pub lease_expires_us: Option<Micros>,
    pub lease_token: u64,
}

/// One entry of a job's run history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub entity: String,
    pub kind: JobKind,
    pub run_id: String,
    pub started_us: Micros,
    pub finished_us: Option<Micros>,
    /// `running`, `succeeded`, `partial`, `failed`, `skipped`, ...
    pub status: String,
    /// A JSON object with the run's counts (written by the strategy; opaque to the store).
    pub summary: String,
}

/// `ControlStore::upsert_then_save_cursor` as two calls: the upserts, then the save.
pub async fn upsert_then_save_cursor_in_turn<C: ControlStore + ?Sized>(
    control: &C,
    records: &dyn RecordStore,
    page: &[Record],
    by: Strategy,
    save: Option<CursorSave<'_>>,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let outcomes = records.upsert_many(page, by).await?;
    if let Some(c) = save {
        control
            .save_cursor(c.entity, c.kind, c.holder, c.now_us, c.ttl_us, c.cursor)
            .await?;
    }
    Ok(outcomes)
}

/// `ControlStore::save_cursor`'s arguments, for a save that follows a page's writes.
#[derive(Debug, Clone, Copy)]
pub struct CursorSave<'a> {
    pub entity: &'a str,
    pub kind: JobKind,
    pub holder: &'a str,
    pub now_us: Micros,
    pub ttl_us: Micros,
    pub cursor: &'a str,
}

/// Cursors, leases, run history and processed event IDs (the `control` table).
#[async_trait]
pub trait ControlStore: Send + Sync {
    async fn job_state(&self, entity: &str, kind: JobKind) -> Result<JobState, StoreError>;

    /// Take the lease when free, expired, or already ours.
    async fn acquire_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError>;

    /// Release our lease; a no-op when we no longer hold it.
    async fn release_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
    ) -> Result<(), StoreError>;

    /// Save the cursor and extend the lease, only while `holder` holds an unexpired lease:
    /// otherwise `StoreError::LeaseLost` (fencing: a run that lost its lease cannot move it).
    async fn save_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError>;

    /// Remove the cursor (the next run reads from the beginning) and extend the lease, under
    /// the same fencing as `save_cursor`: `StoreError::LeaseLost` unless `holder` holds an
    /// unexpired lease.
    async fn clear_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<(), StoreError>;

    /// Upsert a page through `records`, then save the cursor (as `save_cursor`) once every
    /// record of it is written. The default does the two in turn; the local store, when
    /// `records` is its own database, does both in one transaction (one commit per page), and
    /// then a lost lease writes nothing of the page. Either way a failure leaves the cursor
    /// where it was, and whatever was written obeys the version rule.
    async fn upsert_then_save_cursor(
        &self,
        records: &dyn RecordStore,
        page: &[Record],
        by: Strategy,
        save: Option<CursorSave<'_>>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        upsert_then_save_cursor_in_turn(self, records, page, by, save).await
    }

    /// Insert or replace a run-history entry (keyed by entity, kind, start, run ID).
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError>;

    /// Newest first.
    async fn list_runs(
        &self,
        entity: &str,
        kind: JobKind,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Which of `event_ids` were processed: marked by `complete_event` with a retention
    /// still running at `now_us` (an expired marker counts as absent, whether or not the
    /// store has removed it yet). One read for the lot; it may be eventually consistent: a
    /// marker written a moment ago and missed costs a second fetch of the record, never a
    /// wrong write (the version rule decides every write).
    async fn processed_events(
        &self,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError>;

    /// Mark processed, kept until `retain_until_us` (at least the sender's retry horizon).
    /// Written only after the event's work succeeded: a failure or a crash before it leaves
    /// nothing behind, so the redelivery does the work again.
    async fn complete_event(
        &self,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError>;

    /// Add one worker batch's fetches and unexpected 404s of `entity` to its rolling 404
    /// window (the `notfound#<entity>` item) and answer the window's totals after the addition:
    /// the bucket of `now_us`'s window ([`not_found_window`]) plus the one before it. Buckets
    /// older than that are dropped in the same write. One write per call (one UpdateItem).
    async fn count_not_found(
        &self,
        entity: &str,
        now_us: Micros,
        add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError>;
}

/// One source account's shared rate budget (`core::budget`): the `budget#<account>` item of
/// the control table, the `control_budget` row locally. Every call is one write.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Take a slice of `ask.tokens` tokens when the schedule allows it (`core::budget::decide`),
    /// or answer when to ask again.
    async fn take_slice(&self, account: &str, ask: SliceAsk) -> Result<SliceAnswer, StoreError>;

    /// Hold every caller until `until_us` (a source's `Retry-After`); never shortens a pause.
    async fn pause_budget(&self, account: &str, until_us: Micros) -> Result<(), StoreError>;

    /// Record the limit the source announced in its rate-limit headers.
    async fn learn_limit(&self, account: &str, limit: Limit) -> Result<(), StoreError>;

    /// Hand back the unspent tail of a slice: the schedule moves from `end_us` back to
    /// `back_to_us`, only while it still ends at `end_us` (no later slice was cut after it).
    /// `Ok(false)` when it was; those tokens then expire unspent.
    async fn give_back(
        &self,
        account: &str,
        end_us: Micros,
        back_to_us: Micros,
    ) -> Result<bool, StoreError>;
}

/// Fetches and unexpected 404s (a 404 no delete event announced) of an entity, counted by the
/// worker into its rolling 404 window (`ControlStore::count_not_found`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotFoundCounts {
    pub fetched: u64,
    pub not_found: u64,
}

/// The length of one bucket of the rolling 404 window: 10 minutes. The window the worker
/// trips on is the current bucket plus the previous one (10 to 20 minutes of history).
pub const NOT_FOUND_WINDOW_US: Micros = 10 * 60 * 1_000_000;

/// The index of the 10-minute bucket holding `now_us` (the same in every store).
pub fn not_found_window(now_us: Micros) -> i64 {
    now_us.div_euclid(NOT_FOUND_WINDOW_US)
}

/// Buckets older than the previous one that a store drops in each write (the DynamoDB item's
/// `REMOVE` list: windows `w-2` to `w-7`, the last hour; an item idle longer than that has
/// expired by its `ttl`, and a leftover bucket is never read).
pub const NOT_FOUND_STALE_WINDOWS: i64 = 6;

/// A message received from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// Handle to delete it (SQS receipt handle; the local queue's row ID).
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

/// A work queue (SQS; a table locally). Bodies are `wire::QueueEnvelope` JSON.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Send bodies (batched by the adapter); returns the indices that could not be sent.
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<usize>, StoreError>;
    async fn receive(&self, max: usize, wait_ms: u64) -> Result<Vec<ReceivedMessage>, StoreError>;
    async fn delete(&self, receipt: &str) -> Result<(), StoreError>;
}

/// Objects of reconciliation's spilled runs (S3; a folder locally).
#[async_trait]
pub trait SpillStore: Send + Sync {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError>;
    /// A streaming reader over the object: never the whole object in memory.
    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Delete everything under `prefix`; returns how many objects went.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;
}

/// Starts executions of a state machine (a reconciliation run continuing in a new execution).
#[async_trait]
pub trait Executions: Send + Sync {
    /// Start `state_machine` with `input`, named `name`; the execution's ARN. Starting the same
    /// name again (a retried step) answers the same execution.
    async fn start(
        &self,
        state_machine: &str,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<String, StoreError>;
}

/// A page of full records from a delta listing.
#[derive(Debug, Clone)]
pub struct RecordPage {
    pub records: Vec<Record>,
    /// Records of the page that cannot be synced (`source::parse`), taken out: the caller
    /// counts and reports them, and goes on.
    pub rejected: Vec<Rejected>,
    /// The source's clock (`Date` header) when it answered.
    pub source_date_us: Option<Micros>,
}

/// A page of `(id, version)` pairs from an ID listing.
#[derive(Debug, Clone)]
pub struct IdPage {
    pub ids: Vec<IdVersion>,
    /// Records of the page that cannot be synced, taken out (reconciliation counts those with
    /// a usable ID as present at the source).
    pub rejected: Vec<Rejected>,
    /// The listing's total, when the source reports one (checked by reconciliation).
    pub total_count: Option<u64>,
    /// Opaque token that continues the listing after this page (`stream_ids_from`), so that a
    /// listing longer than one invocation resumes in the next; `None` when it cannot resume.
    pub resume: Option<String>,
}

/// The third-party API: the seed's three operations.
#[async_trait]
pub trait SourceApi: Send + Sync {
    /// Full records whose delta is at or after `since_us` (all when `None`: a backfill),
    /// ordered by (delta, ID), lazily, one page in memory. Inclusive on purpose: re-reading the
    /// boundary costs no writes (unchanged records are skipped by hash) and loses nothing.
    /// Each record is yielded once per call, ties at a page boundary included.
    fn list_changed_since<'a>(
        &'a self,
        entity: &'a str,
        since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>>;

    /// Every `(id, version)` pair, ordered by ID at the source, lazily, one page in memory.
    /// A live record is never skipped because others were deleted or created mid-scan (keyset
    /// by ID where the source filters on it; otherwise overlapping offset pages checked for
    /// continuity, failing rather than skipping).
    fn stream_ids<'a>(&'a self, entity: &'a str) -> BoxStream<'a, Result<IdPage, SourceError>>;

    /// `stream_ids` continued after the page whose `resume` token is given (`None`: from the
    /// start). Sources that cannot resume fail on a token.
    fn stream_ids_from<'a>(
        &'a self,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        match resume {
            None => self.stream_ids(entity),
            Some(_) => Box::pin(futures::stream::once(async move {
                Err(SourceError::Walk {
                    url: entity.to_owned(),
                    source: crate::error::WalkError::CannotResume,
                })
            })),
        }
    }

    /// One record; `None` only when the source answers a JSON 404. A record the source has but
    /// that cannot be synced is `SourceError::Rejected` (never `None`: it is not gone).
    async fn get_by_id(&self, entity: &str, id: &str) -> Result<Option<Record>, SourceError>;

    /// `get_by_id` with the send time of the attempt that produced the answer (`Fetched`):
    /// a 404's evidence time on the same clock as a found record's `fetched_at_us`. The
    /// source client overrides it; this default, for sources that send nothing themselves
    /// (test doubles), takes the time before the call, which is never later than any send.
    async fn fetch_by_id(&self, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        let before = crate::core::timefmt::now_us();
        let record = self.get_by_id(entity, id).await?;
        Ok(Fetched {
            record,
            sent_us: before,
        })
    }

    /// The end of a run, a step or a batch: hand back the shared rate budget's unspent tokens
    /// for other callers (the source client); nothing for sources without a budget.
    async fn release_budget(&self) {}

    /// Requests sent so far and the 429s among them (cumulative: the handlers publish the
    /// difference over an invocation, `SourceUsage::since`). Zero for sources that send
    /// nothing themselves (test doubles).
    fn usage(&self) -> SourceUsage {
        SourceUsage::default()
    }
}
