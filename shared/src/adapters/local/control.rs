//! `ControlStore` on the `control_*` tables: the same item semantics as the DynamoDB `control`
//! table (one row per job holding cursor and lease, run history, processed event IDs).

use super::records::upsert_rows;
use super::{LocalStore, row_error, sql_error, sql_limit};
use crate::error::StoreError;
use crate::model::{Micros, Record, Strategy, WriteOutcome};
use crate::ports::{
    ControlStore, CursorSave, JobKind, JobState, LeaseOutcome, NotFoundCounts, RecordStore,
    RunRecord, not_found_window, upsert_then_save_cursor_in_turn,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::HashSet;

/// Run-history entries kept per `(entity, kind)`; older ones are pruned by `put_run`.
pub const RUNS_KEPT: usize = 100;

/// The state of the claims the worker wrote before one write per event: read as not
/// processed (the row expires; `complete_event` replaces it).
const LEGACY_IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";

const SELECT_JOB: &str = "SELECT cursor, cursor_updated_us, lease_holder, lease_expires_us, \
     lease_token FROM control_jobs WHERE entity = ?1 AND kind = ?2";

fn scope(entity: &str, kind: JobKind) -> String {
    format!("{entity}/{}", kind.as_str())
}

fn read_job(conn: &Connection, entity: &str, kind: JobKind) -> Result<JobState, StoreError> {
    let op = "read job state";
    let mut st = conn
        .prepare_cached(SELECT_JOB)
        .map_err(|e| sql_error(op, e))?;
    let row = st
        .query_row(params![entity, kind.as_str()], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()
        .map_err(|e| row_error(op, &scope(entity, kind), e))?;
    let Some((cursor, cursor_updated_us, lease_holder, lease_expires_us, token)) = row else {
        return Ok(JobState::default());
    };
    let lease_token = u64::try_from(token).map_err(|_| StoreError::Decode {
        key: scope(entity, kind),
        message: format!("negative lease token {token}"),
    })?;
    Ok(JobState {
        cursor,
        cursor_updated_us,
        lease_holder,
        lease_expires_us,
        lease_token,
    })
}

fn write_job(
    conn: &Connection,
    entity: &str,
    kind: JobKind,
    s: &JobState,
) -> Result<(), StoreError> {
    let op = "write job state";
    let token = i64::try_from(s.lease_token).map_err(|_| StoreError::Decode {
        key: scope(entity, kind),
        message: format!("lease token {} out of range", s.lease_token),
    })?;
    conn.prepare_cached(
        "INSERT INTO control_jobs (entity, kind, cursor, cursor_updated_us, lease_holder, \
         lease_expires_us, lease_token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (entity, kind) DO UPDATE SET cursor = excluded.cursor, \
         cursor_updated_us = excluded.cursor_updated_us, lease_holder = excluded.lease_holder, \
         lease_expires_us = excluded.lease_expires_us, lease_token = excluded.lease_token",
    )
    .and_then(|mut st| {
        st.execute(params![
            entity,
            kind.as_str(),
            s.cursor,
            s.cursor_updated_us,
            s.lease_holder,
            s.lease_expires_us,
            token
        ])
    })
    .map_err(|e| sql_error(op, e))?;
    Ok(())
}

/// Run `f` on the job's state inside one immediate transaction; `f` returns the new state to
/// write (or `None` to write nothing) and the answer.
fn with_job<T>(
    conn: &mut Connection,
    op: &'static str,
    entity: &str,
    kind: JobKind,
    f: impl FnOnce(JobState) -> Result<(Option<JobState>, T), StoreError>,
) -> Result<T, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    let (new_state, answer) = f(read_job(&tx, entity, kind)?)?;
    if let Some(s) = new_state {
        write_job(&tx, entity, kind, &s)?;
    }
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(answer)
}

/// A cursor save moved into the blocking task.
struct OwnedSave {
    entity: String,
    kind: JobKind,
    holder: String,
    now_us: Micros,
    ttl_us: Micros,
    /// `None` clears it (`clear_cursor`).
    cursor: Option<String>,
}

impl OwnedSave {
    fn of(c: CursorSave<'_>) -> OwnedSave {
        OwnedSave {
            entity: c.entity.to_owned(),
            kind: c.kind,
            holder: c.holder.to_owned(),
            now_us: c.now_us,
            ttl_us: c.ttl_us,
            cursor: Some(c.cursor.to_owned()),
        }
    }

    /// The job's state with the cursor saved and the lease extended, or `LeaseLost` unless
    /// `holder` holds an unexpired lease.
    fn apply(&self, mut s: JobState) -> Result<JobState, StoreError> {
        let held = s.lease_holder.as_deref() == Some(self.holder.as_str())
            && s.lease_expires_us.is_some_and(|e| e > self.now_us);
        if !held {
            return Err(StoreError::LeaseLost {
                scope: scope(&self.entity, self.kind),
                holder: self.holder.clone(),
            });
        }
        s.cursor = self.cursor.clone();
        s.cursor_updated_us = Some(self.now_us);
        s.lease_expires_us = Some(self.now_us.saturating_add(self.ttl_us));
        Ok(s)
    }
}

fn decode_run(
    entity: &str,
    kind: &str,
    started_us: i64,
    run_id: String,
    finished_us: Option<i64>,
    status: String,
    summary: String,
) -> Result<RunRecord, StoreError> {
    let kind = JobKind::parse(kind).ok_or_else(|| StoreError::Decode {
        key: format!("runs#{entity}#{kind}/{started_us}#{run_id}"),
        message: format!("unknown job kind {kind:?}"),
    })?;
    Ok(RunRecord {
        entity: entity.to_owned(),
        kind,
        run_id,
        started_us,
        finished_us,
        status,
        summary,
    })
}

impl LocalStore {
    /// Delete processed-event markers whose retention (or in-progress expiry) is at or before
    /// `now_us` (DynamoDB's TTL does this on its own); returns how many went.
    pub async fn purge_expired_events(&self, now_us: Micros) -> Result<u64, StoreError> {
        self.db()
            .call("purge expired events", move |c| {
                c.execute(
                    "DELETE FROM control_events WHERE until_us <= ?1",
                    params![now_us],
                )
                .map(|n| n as u64)
                .map_err(|e| sql_error("purge expired events", e))
            })
            .await
    }
}

#[async_trait]
impl ControlStore for LocalStore {
    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, kind = kind.as_str()))]
    async fn job_state(&self, entity: &str, kind: JobKind) -> Result<JobState, StoreError> {
        let entity = entity.to_owned();
        self.db()
            .call("read job state", move |c| read_job(c, &entity, kind))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, kind = kind.as_str()))]
    async fn acquire_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        let (entity, holder) = (entity.to_owned(), holder.to_owned());
        self.db()
            .call("acquire lease", move |c| {
                with_job(c, "acquire lease", &entity, kind, |mut s| {
                    if let (Some(h), Some(exp)) = (&s.lease_holder, s.lease_expires_us)
                        && *h != holder
                        && exp > now_us
                    {
                        let held = LeaseOutcome::Held {
                            holder: h.clone(),
                            expires_us: exp,
                        };
                        return Ok((None, held));
                    }
                    if s.lease_holder.as_deref() != Some(holder.as_str()) {
                        s.lease_token += 1;
                    }
                    let expires_us = now_us.saturating_add(ttl_us);
                    s.lease_holder = Some(holder);
                    s.lease_expires_us = Some(expires_us);
                    let token = s.lease_token;
                    Ok((Some(s), LeaseOutcome::Acquired { token, expires_us }))
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, kind = kind.as_str()))]
    async fn release_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
    ) -> Result<(), StoreError> {
        let (entity, holder) = (entity.to_owned(), holder.to_owned());
        self.db()
            .call("release lease", move |c| {
                with_job(c, "release lease", &entity, kind, |mut s| {
                    if s.lease_holder.as_deref() != Some(holder.as_str()) {
                        return Ok((None, ()));
                    }
                    s.lease_holder = None;
                    s.lease_expires_us = None;
                    Ok((Some(s), ()))
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, kind = kind.as_str()))]
    async fn save_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError> {
        let save = OwnedSave::of(CursorSave {
            entity,
            kind,
            holder,
            now_us,
            ttl_us,
            cursor,
        });
        self.db()
            .call("save cursor", move |c| {
                with_job(c, "save cursor", &save.entity, kind, |s| {
                    Ok((Some(save.apply(s)?), ()))
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, kind = kind.as_str()))]
    async fn clear_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<(), StoreError> {
        let save = OwnedSave {
            entity: entity.to_owned(),
            kind,
            holder: holder.to_owned(),
            now_us,
            ttl_us,
            cursor: None,
        };
        self.db()
            .call("clear cursor", move |c| {
                with_job(c, "clear cursor", &save.entity, kind, |s| {
                    Ok((Some(save.apply(s)?), ()))
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(count = page.len(), by = by.as_str()))]
    async fn upsert_then_save_cursor(
        &self,
        records: &dyn RecordStore,
        page: &[Record],
        by: Strategy,
        save: Option<CursorSave<'_>>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if records.database_id() != Some(self.db().id()) {
            return upsert_then_save_cursor_in_turn(self, records, page, by, save).await;
        }
        // Our own database: the page and the cursor in one transaction, the lease checked
        // first (a run that lost it writes nothing).
        let rows = self.page(page)?;
        let save = save.map(OwnedSave::of);
        self.db()
            .call("upsert records and save cursor", move |c| {
                let op = "upsert records and save cursor";
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error(op, e))?;
                let state = match &save {
                    Some(s) => Some(s.apply(read_job(&tx, &s.entity, s.kind)?)?),
                    None => None,
                };
                let outcomes = upsert_rows(&tx, &rows, by)?;
                if let (Some(s), Some(state)) = (&save, &state) {
                    write_job(&tx, &s.entity, s.kind, state)?;
                }
                tx.commit().map_err(|e| sql_error(op, e))?;
                Ok(outcomes)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %run.entity, kind = run.kind.as_str(), run_id = %run.run_id))]
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let run = run.clone();
        self.db()
            .call("put run", move |c| {
                let op = "put run";
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error(op, e))?;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO control_runs (entity, kind, started_us, run_id, \
                     finished_us, status, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        run.entity,
                        run.kind.as_str(),
                        run.started_us,
                        run.run_id,
                        run.finished_us,
                        run.status,
                        run.summary
                    ])
                })
                .map_err(|e| sql_error(op, e))?;
                // Prune below the RUNS_KEPT-th newest entry (none when there are fewer).
                tx.prepare_cached(
                    "DELETE FROM control_runs WHERE entity = ?1 AND kind = ?2 \
                     AND (started_us, run_id) < (SELECT started_us, run_id FROM control_runs \
                     WHERE entity = ?1 AND kind = ?2 \
                     ORDER BY started_us DESC, run_id DESC LIMIT 1 OFFSET ?3)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        run.entity,
                        run.kind.as_str(),
                        sql_limit(RUNS_KEPT - 1)
                    ])
                })
                .map_err(|e| sql_error(op, e))?;
                tx.commit().map_err(|e| sql_error(op, e))
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, kind = kind.as_str(), limit = limit))]
    async fn list_runs(
        &self,
        entity: &str,
        kind: JobKind,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let entity = entity.to_owned();
        self.db()
            .call("list runs", move |c| {
                let op = "list runs";
                let mut st = c
                    .prepare_cached(
                        "SELECT kind, started_us, run_id, finished_us, status, summary \
                         FROM control_runs WHERE entity = ?1 AND kind = ?2 \
                         ORDER BY started_us DESC, run_id DESC LIMIT ?3",
                    )
                    .map_err(|e| sql_error(op, e))?;
                let rows = st
                    .query_map(params![entity, kind.as_str(), sql_limit(limit)], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    })
                    .map_err(|e| sql_error(op, e))?;
                let mut out = Vec::new();
                for row in rows {
                    let (k, started, run_id, finished, status, summary) = row.map_err(|e| {
                        row_error(op, &format!("runs#{entity}#{}", kind.as_str()), e)
                    })?;
                    out.push(decode_run(
                        &entity, &k, started, run_id, finished, status, summary,
                    )?);
                }
                Ok(out)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(events = event_ids.len()))]
    async fn processed_events(
        &self,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError> {
        let ids: Vec<String> = event_ids.iter().map(|&id| id.to_owned()).collect();
        self.db()
            .call("read processed events", move |c| {
                let op = "read processed events";
                let mut st = c
                    .prepare_cached(
                        "SELECT state, until_us FROM control_events WHERE event_id = ?1",
                    )
                    .map_err(|e| sql_error(op, e))?;
                let mut done = HashSet::new();
                for id in ids {
                    let row = st
                        .query_row([&id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                        .optional()
                        .map_err(|e| row_error(op, &format!("event#{id}"), e))?;
                    let Some((state, until)) = row else { continue };
                    match state.as_str() {
                        COMPLETED if until > now_us => {
                            done.insert(id);
                        }
                        COMPLETED | LEGACY_IN_PROGRESS => {}
                        other => {
                            return Err(StoreError::Decode {
                                key: format!("event#{id}"),
                                message: format!("unknown event state {other:?}"),
                            });
                        }
                    }
                }
                Ok(done)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(event_id = %event_id))]
    async fn complete_event(
        &self,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        let event_id = event_id.to_owned();
        self.db()
            .call("complete event", move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO control_events (event_id, state, until_us) \
                     VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut st| st.execute(params![event_id, COMPLETED, retain_until_us]))
                .map(drop)
                .map_err(|e| sql_error("complete event", e))
            })
            .await
    }

    /// One transaction: add to the current bucket's row, delete the entity's rows older than
    /// the previous bucket, sum the current and the previous bucket.
    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity))]
    async fn count_not_found(
        &self,
        entity: &str,
        now_us: Micros,
        add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError> {
        let entity = entity.to_owned();
        let w = not_found_window(now_us);
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (fetched, not_found) = (as_i64(add.fetched), as_i64(add.not_found));
        self.db()
            .call("count 404s", move |c| {
                let op = "count 404s";
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error(op, e))?;
                tx.prepare_cached(
                    "INSERT INTO control_notfound (entity, window, fetched, not_found) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (entity, window) DO UPDATE SET \
                     fetched = fetched + excluded.fetched, \
                     not_found = not_found + excluded.not_found",
                )
                .and_then(|mut st| st.execute(params![entity, w, fetched, not_found]))
                .map_err(|e| sql_error(op, e))?;
                tx.prepare_cached("DELETE FROM control_notfound WHERE entity = ?1 AND window < ?2")
                    .and_then(|mut st| st.execute(params![entity, w - 1]))
                    .map_err(|e| sql_error(op, e))?;
                let (f, n) = tx
                    .prepare_cached(
                        "SELECT COALESCE(SUM(fetched), 0), COALESCE(SUM(not_found), 0) \
                         FROM control_notfound WHERE entity = ?1 AND window BETWEEN ?2 AND ?3",
                    )
                    .and_then(|mut st| {
                        st.query_row(params![entity, w - 1, w], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                        })
                    })
                    .map_err(|e| row_error(op, &format!("notfound#{entity}"), e))?;
                tx.commit().map_err(|e| sql_error(op, e))?;
                Ok(NotFoundCounts {
                    fetched: u64::try_from(f).unwrap_or_default(),
                    not_found: u64::try_from(n).unwrap_or_default(),
                })
            })
            .await
    }
}
