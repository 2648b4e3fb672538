//! Forwarding stores and sources: [`Forward`] passes every call to an inner store (or
//! source) through a hook whose methods all forward by default, so that a test double states
//! only the calls it changes:
//!
//! ```ignore
//! struct FailSecondGet(AtomicUsize);
//! #[async_trait]
//! impl RecordHooks<dyn RecordStore> for FailSecondGet {
//!     async fn get(&self, inner: &dyn RecordStore, entity: &str, id: &str) -> ... {
//!         if self.0.fetch_add(1, SeqCst) == 1 { return Err(..) }
//!         inner.get(entity, id).await
//!     }
//! }
//! let store = Forward::new(inner, FailSecondGet(AtomicUsize::new(0)));
//! ```
//!
//! Which calls pass the hook: every required method of `RecordStore` and `ControlStore`,
//! and all five of `SourceApi` (a source's resume token is the inner source's own).
//! `SourceApi::fetch_by_id` passes the hook's `fetch_by_id`, whose default calls the hook's
//! `get_by_id` (so that a hook overriding only `get_by_id` changes what the worker sees too)
//! and answers the time before that call as `sent_us` (never later than the inner send):
//! a hook that needs the inner source's send time overrides `fetch_by_id`. The stores'
//! provided methods keep the port's defaults, built on the wrapper's own methods, so that every
//! write passes the hook: `RecordStore::upsert` goes through the hook's `upsert_many`,
//! `ControlStore::upsert_then_save_cursor` writes through the wrapper and then calls its
//! `save_cursor`, and `database_id` stays `None` (forwarded, it would let the local store write
//! a page in its own transaction, past the hook).

use async_trait::async_trait;
use futures::stream::BoxStream;
use shared::model::{
    DeleteOutcome, EraseOutcome, Fetched, LiftOutcome, LiveIdPage, Micros, PurgeCount, Record,
    RegressOutcome, StoredRecord, StoredVersion, Strategy, SyncTimes, WriteOutcome,
};
use shared::ports::{
    ControlStore, IdPage, JobKind, JobState, LeaseOutcome, NotFoundCounts, RecordPage, RecordStore,
    RunRecord, SourceApi,
};
use shared::{SourceError, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// `inner`, with every call passed through `hook` (see the module doc).
pub struct Forward<S: ?Sized, H> {
    pub inner: Arc<S>,
    pub hook: H,
}

impl<S: ?Sized, H> Forward<S, H> {
    pub fn new(inner: Arc<S>, hook: H) -> Self {
        Forward { inner, hook }
    }
}

impl<S: Default, H: Default> Default for Forward<S, H> {
    fn default() -> Self {
        Forward::new(Arc::new(S::default()), H::default())
    }
}

/// What a [`Forward`] record store does on each call; each method forwards unless overridden.
#[async_trait]
pub trait RecordHooks<S: RecordStore + ?Sized>: Send + Sync {
    async fn upsert_many(
        &self,
        inner: &S,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        inner.upsert_many(records, by).await
    }

    async fn soft_delete(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError> {
        inner.soft_delete(entity, id, evidence_us, by).await
    }

    async fn write_regressed(
        &self,
        inner: &S,
        record: &Record,
        compared: &StoredVersion,
    ) -> Result<RegressOutcome, StoreError> {
        inner.write_regressed(record, compared).await
    }

    async fn get(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        inner.get(entity, id).await
    }

    async fn erase(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError> {
        inner.erase(entity, id, now_us, erased_by).await
    }

    async fn lift_erasure(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<LiftOutcome, StoreError> {
        inner.lift_erasure(entity, id).await
    }

    async fn purge_deleted(
        &self,
        inner: &S,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError> {
        inner
            .purge_deleted(entity, deleted_before_us, limit, dry_run)
            .await
    }

    async fn sync_times(
        &self,
        inner: &S,
        entity: &str,
        ids: &[String],
    ) -> Result<HashMap<String, SyncTimes>, StoreError> {
        inner.sync_times(entity, ids).await
    }

    async fn list_live_ids(
        &self,
        inner: &S,
        entity: &str,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LiveIdPage, StoreError> {
        inner.list_live_ids(entity, shard, after, limit).await
    }
}

#[async_trait]
impl<S: RecordStore + ?Sized, H: RecordHooks<S>> RecordStore for Forward<S, H> {
    async fn upsert_many(
        &self,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.hook.upsert_many(&self.inner, records, by).await
    }

    async fn soft_delete(
        &self,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError> {
        self.hook
            .soft_delete(&self.inner, entity, id, evidence_us, by)
            .await
    }

    async fn write_regressed(
        &self,
        record: &Record,
        compared: &StoredVersion,
    ) -> Result<RegressOutcome, StoreError> {
        self.hook
            .write_regressed(&self.inner, record, compared)
            .await
    }

    async fn get(&self, entity: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        self.hook.get(&self.inner, entity, id).await
    }

    async fn erase(
        &self,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError> {
        self.hook
            .erase(&self.inner, entity, id, now_us, erased_by)
            .await
    }

    async fn lift_erasure(&self, entity: &str, id: &str) -> Result<LiftOutcome, StoreError> {
        self.hook.lift_erasure(&self.inner, entity, id).await
    }

    async fn purge_deleted(
        &self,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError> {
        self.hook
            .purge_deleted(&self.inner, entity, deleted_before_us, limit, dry_run)
            .await
    }

    async fn sync_times(
        &self,
        entity: &str,
        ids: &[String],
    ) -> Result<HashMap<String, SyncTimes>, StoreError> {
        self.hook.sync_times(&self.inner, entity, ids).await
    }

    async fn list_live_ids(
        &self,
        entity: &str,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LiveIdPage, StoreError> {
        self.hook
            .list_live_ids(&self.inner, entity, shard, after, limit)
            .await
    }
}

/// What a [`Forward`] control store does on each call; each method forwards unless overridden.
#[async_trait]
pub trait ControlHooks<S: ControlStore + ?Sized>: Send + Sync {
    async fn job_state(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
    ) -> Result<JobState, StoreError> {
        inner.job_state(entity, kind).await
    }

    async fn acquire_lease(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        inner
            .acquire_lease(entity, kind, holder, now_us, ttl_us)
            .await
    }

    async fn release_lease(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        holder: &str,
    ) -> Result<(), StoreError> {
        inner.release_lease(entity, kind, holder).await
    }

    #[allow(clippy::too_many_arguments)]
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
        inner
            .save_cursor(entity, kind, holder, now_us, ttl_us, cursor)
            .await
    }

    async fn clear_cursor(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<(), StoreError> {
        inner
            .clear_cursor(entity, kind, holder, now_us, ttl_us)
            .await
    }

    async fn put_run(&self, inner: &S, run: &RunRecord) -> Result<(), StoreError> {
        inner.put_run(run).await
    }

    async fn list_runs(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        inner.list_runs(entity, kind, limit).await
    }

    async fn processed_events(
        &self,
        inner: &S,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError> {
        inner.processed_events(event_ids, now_us).await
    }

    async fn complete_event(
        &self,
        inner: &S,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        inner.complete_event(event_id, retain_until_us).await
    }

    async fn count_not_found(
        &self,
        inner: &S,
        entity: &str,
        now_us: Micros,
        add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError> {
        inner.count_not_found(entity, now_us, add).await
    }
}

#[async_trait]
impl<S: ControlStore + ?Sized, H: ControlHooks<S>> ControlStore for Forward<S, H> {
    async fn job_state(&self, entity: &str, kind: JobKind) -> Result<JobState, StoreError> {
        self.hook.job_state(&self.inner, entity, kind).await
    }

    async fn acquire_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        self.hook
            .acquire_lease(&self.inner, entity, kind, holder, now_us, ttl_us)
            .await
    }

    async fn release_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.hook
            .release_lease(&self.inner, entity, kind, holder)
            .await
    }

    async fn save_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError> {
        self.hook
            .save_cursor(&self.inner, entity, kind, holder, now_us, ttl_us, cursor)
            .await
    }

    async fn clear_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<(), StoreError> {
        self.hook
            .clear_cursor(&self.inner, entity, kind, holder, now_us, ttl_us)
            .await
    }

    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.hook.put_run(&self.inner, run).await
    }

    async fn list_runs(
        &self,
        entity: &str,
        kind: JobKind,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.hook.list_runs(&self.inner, entity, kind, limit).await
    }

    async fn processed_events(
        &self,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError> {
        self.hook
            .processed_events(&self.inner, event_ids, now_us)
            .await
    }

    async fn complete_event(
        &self,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        self.hook
            .complete_event(&self.inner, event_id, retain_until_us)
            .await
    }

    async fn count_not_found(
        &self,
        entity: &str,
        now_us: Micros,
        add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError> {
        self.hook
            .count_not_found(&self.inner, entity, now_us, add)
            .await
    }
}

/// What a [`Forward`] source does on each call; each method forwards unless overridden.
#[async_trait]
pub trait SourceHooks<S: SourceApi + ?Sized>: Send + Sync {
    fn list_changed_since<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
        since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>> {
        inner.list_changed_since(entity, since_us)
    }

    fn stream_ids<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        inner.stream_ids(entity)
    }

    fn stream_ids_from<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        inner.stream_ids_from(entity, resume)
    }

    async fn get_by_id(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        inner.get_by_id(entity, id).await
    }

    /// See the module doc: through the hook's `get_by_id`, stamped with the time before it.
    async fn fetch_by_id(&self, inner: &S, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        let before = shared::core::timefmt::now_us();
        let record = self.get_by_id(inner, entity, id).await?;
        Ok(Fetched {
            record,
            sent_us: before,
        })
    }
}

#[async_trait]
impl<S: SourceApi + ?Sized, H: SourceHooks<S>> SourceApi for Forward<S, H> {
    fn list_changed_since<'a>(
        &'a self,
        entity: &'a str,
        since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>> {
        self.hook.list_changed_since(&self.inner, entity, since_us)
    }

    fn stream_ids<'a>(&'a self, entity: &'a str) -> BoxStream<'a, Result<IdPage, SourceError>> {
        self.hook.stream_ids(&self.inner, entity)
    }

    fn stream_ids_from<'a>(
        &'a self,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        self.hook.stream_ids_from(&self.inner, entity, resume)
    }

    async fn get_by_id(&self, entity: &str, id: &str) -> Result<Option<Record>, SourceError> {
        self.hook.get_by_id(&self.inner, entity, id).await
    }

    async fn fetch_by_id(&self, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        self.hook.fetch_by_id(&self.inner, entity, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::adapters::local::LocalStore;
    use shared::model::RawJson;
    use shared::ports::CursorSave;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the writes and cursor saves that pass it; changes nothing.
    #[derive(Default)]
    struct Count {
        writes: AtomicUsize,
        saves: AtomicUsize,
    }

    #[async_trait]
    impl<S: RecordStore + ?Sized> RecordHooks<S> for Count {
        async fn upsert_many(
            &self,
            inner: &S,
            records: &[Record],
            by: Strategy,
        ) -> Result<Vec<WriteOutcome>, StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            inner.upsert_many(records, by).await
        }
    }

    #[async_trait]
    impl<S: ControlStore + ?Sized> ControlHooks<S> for Count {
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
            self.saves.fetch_add(1, Ordering::SeqCst);
            inner
                .save_cursor(entity, kind, holder, now_us, ttl_us, cursor)
                .await
        }
    }

    fn record(id: &str) -> Record {
        let payload = RawJson::parse(format!(r#"{{"id":"{id}"}}"#)).expect("JSON");
        Record::new("people", id, 1_000, 2_000, payload)
    }

    #[tokio::test]
    async fn every_write_passes_the_hook_and_the_rest_reaches_the_inner_store() {
        let store = Arc::new(LocalStore::in_memory().expect("in-memory store"));
        let records = Forward::new(store.clone(), Count::default());
        let control = Forward::new(store.clone(), Count::default());
        assert!(store.database_id().is_some());
        assert_eq!(
            records.database_id(),
            None,
            "the local store must not write past the hook in its own transaction"
        );

        // The provided `upsert` goes through the hook's `upsert_many`; `get` is forwarded.
        assert!(
            records
                .upsert(&record("1"), Strategy::Delta)
                .await
                .unwrap()
                .wrote()
        );
        assert_eq!(records.hook.writes.load(Ordering::SeqCst), 1);
        assert!(records.get("people", "1").await.unwrap().is_some());

        // Both halves of `upsert_then_save_cursor` pass the hooks.
        let now = 5_000;
        let lease = control
            .acquire_lease("people", JobKind::Delta, "run-a", now, 60_000_000)
            .await
            .unwrap();
        assert!(matches!(lease, LeaseOutcome::Acquired { .. }), "{lease:?}");
        control
            .upsert_then_save_cursor(
                &records,
                &[record("2")],
                Strategy::Delta,
                Some(CursorSave {
                    entity: "people",
                    kind: JobKind::Delta,
                    holder: "run-a",
                    now_us: now,
                    ttl_us: 60_000_000,
                    cursor: "c1",
                }),
            )
            .await
            .unwrap();
        assert_eq!(records.hook.writes.load(Ordering::SeqCst), 2);
        assert_eq!(control.hook.saves.load(Ordering::SeqCst), 1);
        let st = store.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(st.cursor.as_deref(), Some("c1"));
        assert!(store.get("people", "2").await.unwrap().is_some());
    }
}
