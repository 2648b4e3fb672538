//! In-memory ports for pure-logic unit tests only (never used by a binary). Their state can be
//! asserted directly; they apply the same version rule as the real stores. Compiled only for
//! `shared`'s own tests and with the `testing` feature, which test crates and the bench enable.

use crate::core::{decide_delete, decide_regression, decide_upsert};
use crate::error::{SourceError, StoreError};
use crate::model::*;
use crate::ports::*;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryRecords {
    pub items: Mutex<BTreeMap<(String, String), StoredRecord>>,
}

#[async_trait]
impl RecordStore for MemoryRecords {
    async fn upsert_many(
        &self,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut items = self.items.lock().expect("poisoned");
        let now = crate::core::timefmt::now_us();
        Ok(records
            .iter()
            .map(|r| {
                let key = (r.entity.clone(), r.id.clone());
                let old = items.get(&key);
                let out = decide_upsert(old.map(|o| &o.version), &r.version);
                if out.wrote() {
                    let first_seen = old.map_or(now, |o| o.first_seen_us);
                    let payload =
                        serde_json::from_str(r.payload.get()).unwrap_or(serde_json::Value::Null);
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
                            payload,
                            first_seen_us: first_seen,
                            last_synced_us: now,
                            last_action: match out {
                                WriteOutcome::Inserted => LastAction::Insert,
                                WriteOutcome::Restored => LastAction::Restore,
                                _ => LastAction::Update,
                            },
                            written_by: by,
                            erased: None,
                        },
                    );
                }
                out
            })
            .collect())
    }

    async fn soft_delete(
        &self,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError> {
        let mut items = self.items.lock().expect("poisoned");
        let key = (entity.to_owned(), id.to_owned());
        let out = decide_delete(items.get(&key).map(|o| &o.version), evidence_us);
        if crate::core::version::advances_deletion(items.get(&key).map(|o| &o.version), evidence_us)
            && let Some(item) = items.get_mut(&key)
        {
            item.version.deleted_at_us = Some(evidence_us);
        }
        if out == DeleteOutcome::Deleted
            && let Some(item) = items.get_mut(&key)
        {
            item.version.deleted_at_us = Some(evidence_us);
            item.last_action = LastAction::Delete;
            item.written_by = by;
        }
        Ok(out)
    }

    async fn write_regressed(
        &self,
        record: &Record,
        compared: &StoredVersion,
    ) -> Result<RegressOutcome, StoreError> {
        let mut items = self.items.lock().expect("poisoned");
        let key = (record.entity.clone(), record.id.clone());
        let out = decide_regression(
            items.get(&key).map(|o| &o.version),
            compared,
            &record.version,
        );
        if out.wrote()
            && let Some(item) = items.get_mut(&key)
        {
            item.version = StoredVersion {
                delta_us: record.version.delta_us,
                fetched_at_us: record.version.fetched_at_us,
                hash: record.version.hash,
                deleted_at_us: None,
                erased: false,
            };
            item.payload =
                serde_json::from_str(record.payload.get()).unwrap_or(serde_json::Value::Null);
            item.last_synced_us = crate::core::timefmt::now_us();
            item.last_action = LastAction::Regressed;
            item.written_by = Strategy::Reconcile;
        }
        Ok(out)
    }

    async fn get(&self, entity: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self
            .items
            .lock()
            .expect("poisoned")
            .get(&(entity.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn erase(
        &self,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError> {
        let mut items = self.items.lock().expect("poisoned");
        let key = (entity.to_owned(), id.to_owned());
        if let Some(e) = items.get(&key).and_then(|o| o.erased.clone()) {
            return Ok(EraseOutcome::AlreadyErased(e));
        }
        let marker = StoredRecord::erased_marker(
            entity,
            id,
            Erasure {
                erased_us: now_us,
                erased_by: erased_by.to_owned(),
            },
        );
        Ok(match items.insert(key, marker) {
            Some(_) => EraseOutcome::Erased,
            None => EraseOutcome::Marked,
        })
    }

    async fn lift_erasure(&self, entity: &str, id: &str) -> Result<LiftOutcome, StoreError> {
        let mut items = self.items.lock().expect("poisoned");
        let key = (entity.to_owned(), id.to_owned());
        if items.get(&key).is_some_and(StoredRecord::is_erased) {
            items.remove(&key);
            return Ok(LiftOutcome::Lifted);
        }
        Ok(LiftOutcome::NotErased)
    }

    async fn purge_deleted(
        &self,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError> {
        let mut items = self.items.lock().expect("poisoned");
        let old: Vec<(String, String)> = items
            .iter()
            .filter(|(_, r)| entity.is_none_or(|e| r.entity == e) && !r.is_erased())
            .filter(|(_, r)| {
                r.version
                    .deleted_at_us
                    .is_some_and(|d| d < deleted_before_us)
            })
            .map(|(k, _)| k.clone())
            .take(usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX))
            .collect();
        let n = old.len() as u64;
        if !dry_run {
            for k in &old {
                items.remove(k);
            }
        }
        Ok(PurgeCount {
            scanned: n,
            matched: n,
            purged: if dry_run { 0 } else { n },
            changed: 0,
        })
    }

    async fn sync_times(
        &self,
        entity: &str,
        ids: &[String],
    ) -> Result<HashMap<String, SyncTimes>, StoreError> {
        let items = self.items.lock().expect("poisoned");
        Ok(ids
            .iter()
            .filter_map(|id| {
                let item = items.get(&(entity.to_owned(), id.clone()))?;
                Some((
                    id.clone(),
                    SyncTimes {
                        first_seen_us: item.first_seen_us,
                        last_synced_us: item.last_synced_us,
                        erased: item.is_erased(),
                    },
                ))
            })
            .collect())
    }

    async fn list_live_ids(
        &self,
        entity: &str,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LiveIdPage, StoreError> {
        let items = self.items.lock().expect("poisoned");
        let mut ids: Vec<IdVersion> = items
            .values()
            .filter(|r| r.entity == entity && !r.is_deleted() && shard_of(&r.id) == shard)
            .filter(|r| after.is_none_or(|a| r.id.as_str() > a))
            .map(|r| IdVersion {
                id: r.id.clone(),
                delta_us: r.version.delta_us,
            })
            .collect();
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next_after = if more {
            ids.last().map(|i| i.id.clone())
        } else {
            None
        };
        Ok(LiveIdPage {
            items: ids,
            next_after,
        })
    }
}

#[derive(Default)]
pub struct MemoryControl {
    pub jobs: Mutex<HashMap<(String, JobKind), JobState>>,
    pub runs: Mutex<Vec<RunRecord>>,
    pub events: Mutex<HashMap<String, (bool, Micros)>>,
    /// The 404 window's buckets: `(entity, window) -> counts`.
    pub not_found: Mutex<BTreeMap<(String, i64), NotFoundCounts>>,
    /// `processed_events` fails while set (a control table that cannot be read).
    pub fail_event_reads: std::sync::atomic::AtomicBool,
}

impl MemoryControl {
    fn set_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut jobs = self.jobs.lock().expect("poisoned");
        let s = jobs.entry((entity.to_owned(), kind)).or_default();
        if s.lease_holder.as_deref() != Some(holder)
            || s.lease_expires_us.is_none_or(|e| e <= now_us)
        {
            return Err(StoreError::LeaseLost {
                scope: format!("{entity}/{}", kind.as_str()),
                holder: holder.to_owned(),
            });
        }
        s.cursor = cursor.map(str::to_owned);
        s.cursor_updated_us = Some(now_us);
        s.lease_expires_us = Some(now_us + ttl_us);
        Ok(())
    }
}

#[async_trait]
impl ControlStore for MemoryControl {
    async fn job_state(&self, entity: &str, kind: JobKind) -> Result<JobState, StoreError> {
        Ok(self
            .jobs
            .lock()
            .expect("poisoned")
            .get(&(entity.to_owned(), kind))
            .cloned()
            .unwrap_or_default())
    }

    async fn acquire_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        let mut jobs = self.jobs.lock().expect("poisoned");
        let s = jobs.entry((entity.to_owned(), kind)).or_default();
        match (&s.lease_holder, s.lease_expires_us) {
            (Some(h), Some(exp)) if h != holder && exp > now_us => Ok(LeaseOutcome::Held {
                holder: h.clone(),
                expires_us: exp,
            }),
            _ => {
                if s.lease_holder.as_deref() != Some(holder) {
                    s.lease_token += 1;
                }
                s.lease_holder = Some(holder.to_owned());
                s.lease_expires_us = Some(now_us + ttl_us);
                Ok(LeaseOutcome::Acquired {
                    token: s.lease_token,
                    expires_us: now_us + ttl_us,
                })
            }
        }
    }

    async fn release_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
    ) -> Result<(), StoreError> {
        let mut jobs = self.jobs.lock().expect("poisoned");
        if let Some(s) = jobs.get_mut(&(entity.to_owned(), kind))
            && s.lease_holder.as_deref() == Some(holder)
        {
            s.lease_holder = None;
            s.lease_expires_us = None;
        }
        Ok(())
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
        self.set_cursor(entity, kind, holder, now_us, ttl_us, Some(cursor))
    }

    async fn clear_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<(), StoreError> {
        self.set_cursor(entity, kind, holder, now_us, ttl_us, None)
    }

    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let mut runs = self.runs.lock().expect("poisoned");
        runs.retain(|r| {
            !(r.entity == run.entity
                && r.kind == run.kind
                && r.run_id == run.run_id
                && r.started_us == run.started_us)
        });
        runs.push(run.clone());
        Ok(())
    }

    async fn list_runs(
        &self,
        entity: &str,
        kind: JobKind,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let runs = self.runs.lock().expect("poisoned");
        let mut out: Vec<RunRecord> = runs
            .iter()
            .filter(|r| r.entity == entity && r.kind == kind)
            .cloned()
            .collect();
        out.sort_by(|a, b| (b.started_us, &b.run_id).cmp(&(a.started_us, &a.run_id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn processed_events(
        &self,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError> {
        if self
            .fail_event_reads
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StoreError::backend(
                "read processed events",
                std::io::Error::other("control table unreachable"),
            ));
        }
        let ev = self.events.lock().expect("poisoned");
        Ok(event_ids
            .iter()
            .filter(|id| matches!(ev.get(**id), Some((true, until)) if *until > now_us))
            .map(|id| (*id).to_owned())
            .collect())
    }

    async fn complete_event(
        &self,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        self.events
            .lock()
            .expect("poisoned")
            .insert(event_id.to_owned(), (true, retain_until_us));
        Ok(())
    }

    async fn count_not_found(
        &self,
        entity: &str,
        now_us: Micros,
        add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError> {
        let w = not_found_window(now_us);
        let mut buckets = self.not_found.lock().expect("poisoned");
        let b = buckets.entry((entity.to_owned(), w)).or_default();
        b.fetched += add.fetched;
        b.not_found += add.not_found;
        buckets.retain(|(e, win), _| e != entity || *win >= w - 1);
        Ok(buckets
            .iter()
            .filter(|((e, win), _)| e == entity && (w - 1..=w).contains(win))
            .fold(NotFoundCounts::default(), |acc, (_, b)| NotFoundCounts {
                fetched: acc.fetched + b.fetched,
                not_found: acc.not_found + b.not_found,
            }))
    }
}

/// A scripted source for unit tests: each call of `list_changed_since` yields the next script
/// entry's pages (filtered by `since`), so a test can shape exactly what a run sees.
#[derive(Default)]
pub struct ScriptedSource {
    pub listings: Mutex<std::collections::VecDeque<Vec<Result<RecordPage, SourceError>>>>,
    pub calls: Mutex<Vec<Option<Micros>>>,
}

#[async_trait]
impl SourceApi for ScriptedSource {
    fn list_changed_since<'a>(
        &'a self,
        _entity: &'a str,
        since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>> {
        self.calls.lock().expect("poisoned").push(since_us);
        let pages = self
            .listings
            .lock()
            .expect("poisoned")
            .pop_front()
            .unwrap_or_default();
        let pages: Vec<_> = pages
            .into_iter()
            .map(|p| {
                p.map(|mut p| {
                    p.records
                        .retain(|r| since_us.is_none_or(|s| r.version.delta_us >= s));
                    p
                })
            })
            .collect();
        Box::pin(futures::stream::iter(pages))
    }

    fn stream_ids<'a>(&'a self, _entity: &'a str) -> BoxStream<'a, Result<IdPage, SourceError>> {
        Box::pin(futures::stream::empty())
    }

    async fn get_by_id(&self, _entity: &str, _id: &str) -> Result<Option<Record>, SourceError> {
        Ok(None)
    }
}
