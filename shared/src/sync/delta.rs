//! Delta sync (the seed's "fast lane", made safe): one run for one entity under a lease, the
//! cursor rule of `core::cursor`, a checkpoint after every written page, a clean stop before
//! the deadline. A record that cannot be synced (the page's `rejected`, or one the store
//! refuses as too large) is counted and skipped, and the rest of its page written: one bad
//! record never holds the cursor back (`sync::rejected`).

use crate::config::Env;
use crate::core::cursor::{self, DeltaCursor};
use crate::core::timefmt::{format_rfc3339, now_us, parse_rfc3339};
use crate::error::{ConfigError, SourceError, StoreError, SyncError, WaitCause};
use crate::model::{Micros, Record, RejectReason, Rejected, Strategy, WriteOutcome};
use crate::ports::{
    ControlStore, CursorSave, JobKind, LeaseOutcome, RecordStore, RunRecord, SourceApi,
};
use crate::sync::rejected::{RejectedRecord, Tally};
use futures::StreamExt;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How a run behaves. `Default` is the production setting; [`DeltaOptions::from_env`] the
/// deployed one.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    pub run_id: String,
    /// Whose cursor and lease the run uses: the entity's delta sync, or its full re-sync.
    pub lane: Lane,
    /// How late a record can be committed after its timestamp (long transactions, skew between
    /// the source's web and database servers): the cursor stays this far below the source's
    /// clock at the run's start.
    pub overlap_us: Micros,
    /// Used as the ceiling when the source sends no `Date` header: our clock minus this bound on
    /// the skew between us and the source.
    pub max_clock_skew_us: Micros,
    pub lease_ttl_us: Micros,
    /// How long before the invocation's deadline the handler stops a run (the time to save the
    /// checkpoint and answer); it turns the deadline into `stop_at`
    /// (`core::deadline::stop_instant`).
    pub safety_margin: Duration,
    /// Stop cleanly (checkpoint saved) once this instant has passed.
    pub stop_at: Option<Instant>,
    /// Stop cleanly (checkpoint saved, status `partial`) after this many written pages: one
    /// invocation's work is bounded whatever the source serves, and a backlog still
    /// progresses run after run.
    pub max_pages: u64,
    /// Called after every written page with the summary so far (progress bars).
    pub on_page: Option<PageHook>,
    /// Negative controls for tests only: the naive rules this engine exists to avoid.
    #[cfg(any(test, feature = "testing"))]
    pub naive_cursor: Option<NaiveCursor>,
    /// Negative control for tests only: `false` fails a page holding a rejected record, as the
    /// engine did before per-record rejection (the run fails there on every run: a stall).
    #[cfg(any(test, feature = "testing"))]
    pub per_record_rejection: bool,
}

/// Which job a run of the delta loop is. Both read the same listing under the same cursor
/// rule; each has its own cursor, lease and run history (`JobKind`), so a re-sync reads
/// everything from the beginning while the entity's delta runs go on beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    #[default]
    Delta,
    /// A full re-sync (`sync::resync`).
    Resync,
}

impl Lane {
    pub fn kind(self) -> JobKind {
        match self {
            Lane::Delta => JobKind::Delta,
            Lane::Resync => JobKind::Resync,
        }
    }
    /// What the run's writes record as `written_by`, and its metrics' `Strategy`.
    pub fn strategy(self) -> Strategy {
        match self {
            Lane::Delta => Strategy::Delta,
            Lane::Resync => Strategy::Resync,
        }
    }
}

/// A progress callback.
#[derive(Clone)]
pub struct PageHook(pub std::sync::Arc<dyn Fn(&DeltaSummary) + Send + Sync>);

impl std::fmt::Debug for PageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageHook")
    }
}

/// The cursor rules that lose data (kept to prove the tests can see the loss).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NaiveCursor {
    /// The seed's rule: the cursor is our wall clock when the run ends; next run reads `>` it.
    WallClock,
    /// Strict `>` on the highest value seen, no ceiling, no overlap.
    StrictMaxSeen,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            run_id: uuid::Uuid::new_v4().to_string(),
            lane: Lane::Delta,
            overlap_us: 120_000_000,
            max_clock_skew_us: 300_000_000,
            lease_ttl_us: 16 * 60_000_000,
            safety_margin: Duration::from_secs(20),
            stop_at: None,
            max_pages: 10_000,
            on_page: None,
            #[cfg(any(test, feature = "testing"))]
            naive_cursor: None,
            #[cfg(any(test, feature = "testing"))]
            per_record_rejection: true,
        }
    }
}

/// The environment variables [`DeltaOptions::from_env`] reads.
pub const OVERLAP_VAR: &str = "DELTA_OVERLAP_SECONDS";
pub const SAFETY_MARGIN_VAR: &str = "DELTA_SAFETY_MARGIN_SECONDS";
pub const MAX_PAGES_VAR: &str = "DELTA_MAX_PAGES";

impl DeltaOptions {
    /// The deployed settings: `DELTA_OVERLAP_SECONDS` and `DELTA_SAFETY_MARGIN_SECONDS`, whole
    /// seconds, the `Default` when unset; a value out of range or not a number fails, naming
    /// its variable.
    pub fn from_env(env: Env<'_>) -> Result<Self, ConfigError> {
        let d = DeltaOptions::default();
        // Overlap: 0 (a source whose timestamps are commit times) to an hour. Every run reads
        // the overlap again, so an hour is already 12 times the records per 5-minute run; more
        // is a typo (minutes for seconds), not caution.
        let overlap = env.seconds(
            OVERLAP_VAR,
            Duration::from_micros(d.overlap_us.unsigned_abs()),
            0..=3600,
        )?;
        // Margin: at least a second to save the checkpoint and answer; below Lambda's longest
        // timeout (900 s), or a run would stop before its first page.
        let safety_margin = env.seconds(SAFETY_MARGIN_VAR, d.safety_margin, 1..=899)?;
        let max_pages = env.num(MAX_PAGES_VAR, d.max_pages, 1..=1_000_000)?;
        Ok(DeltaOptions {
            max_pages,
            overlap_us: Micros::try_from(overlap.as_micros()).unwrap_or(Micros::MAX),
            safety_margin,
            ..d
        })
    }

    /// The same settings for another run: a new `run_id` (one per run, in the history and
    /// the lease), the rest kept.
    pub fn next_run(&self) -> Self {
        DeltaOptions {
            run_id: uuid::Uuid::new_v4().to_string(),
            ..self.clone()
        }
    }

    /// The first delta value the run asks for (`core::cursor`'s rule, or a negative
    /// control's strict `>`).
    fn query_start(&self, cursor: Option<&DeltaCursor>) -> Option<Micros> {
        #[cfg(any(test, feature = "testing"))]
        if self.naive_cursor.is_some() {
            // Strict `>`: the next microsecond.
            return cursor.map(|c| c.watermark_us + 1);
        }
        cursor::query_start(cursor)
    }

    /// The cursor after writing records up to `max` (`core::cursor`'s rule, or a negative
    /// control's).
    fn advance(&self, cursor: Option<&DeltaCursor>, max: Micros, ceiling: Micros) -> DeltaCursor {
        #[cfg(any(test, feature = "testing"))]
        match self.naive_cursor {
            Some(NaiveCursor::StrictMaxSeen) => return DeltaCursor::new(max),
            Some(NaiveCursor::WallClock) => return DeltaCursor::new(now_us()),
            None => {}
        }
        cursor::advance(cursor, max, ceiling, self.overlap_us)
    }

    /// The seed's rule: the cursor set to our clock when the run ends (a negative control).
    #[cfg(any(test, feature = "testing"))]
    fn wall_clock_at_end(&self) -> bool {
        self.naive_cursor == Some(NaiveCursor::WallClock)
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn wall_clock_at_end(&self) -> bool {
        false
    }

    /// The negative control of per-record rejection: a rejected record fails its page.
    #[cfg(any(test, feature = "testing"))]
    fn fails_on_rejected(&self) -> bool {
        !self.per_record_rejection
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn fails_on_rejected(&self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Read to the end of the listing.
    Succeeded,
    /// Stopped before the deadline with its checkpoint saved; the next run continues.
    Partial,
    /// Another run holds the entity's lease.
    Skipped,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Skipped => "skipped",
            RunStatus::Failed => "failed",
        }
    }
}

/// What one run did: logged, stored in the run history, published as metrics.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeltaSummary {
    pub entity: String,
    pub run_id: String,
    #[serde(skip_serializing_if = "is_delta")]
    pub lane: Lane,
    pub status: RunStatus,
    pub pages: u64,
    pub seen: u64,
    pub inserted: u64,
    pub updated: u64,
    pub restored: u64,
    pub unchanged: u64,
    pub stale: u64,
    /// Records erased here (`syncctl erase`) that the source still lists: refused, unwritten.
    pub suppressed: u64,
    /// Records that cannot be synced, each counted once per run: taken out of their page by
    /// the source client (no usable ID, no readable delta value, an unpaired surrogate escape)
    /// or refused by the store as too large. Skipped, so that one bad record does not stop the
    /// entity's sync; every later run and reconciliation keep reporting them. Not in `seen`.
    pub rejected: u64,
    /// The first `sync::rejected::REJECTED_IDS_KEPT` of them, with their reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_ids: Vec<RejectedRecord>,
    /// Why a `partial` run stopped: `deadline`, `budget` (the shared rate budget had no token
    /// for it before its stop instant) or `page_cap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    pub duration_ms: u64,
    pub cursor_before: Option<String>,
    pub cursor_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Why a failed run failed; for a run `stopped_by` the deadline inside the source client
    /// (`SourceError::Deadline`: a wait that would pass it), what it would have waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DeltaSummary {
    pub fn written(&self) -> u64 {
        self.inserted + self.updated + self.restored
    }
}

fn is_delta(lane: &Lane) -> bool {
    *lane == Lane::Delta
}

fn show(c: Option<&DeltaCursor>) -> Option<String> {
    c.map(|c| format_rfc3339(c.watermark_us))
}

/// Run delta sync for one entity. A run that finds the lease held returns `Skipped`; a failure
/// is recorded in the run history, the lease released, and the error returned (the cursor
/// stays at the last checkpoint, so nothing is lost).
pub async fn run_delta(
    source: &dyn SourceApi,
    records: &dyn RecordStore,
    control: &dyn ControlStore,
    entity: &str,
    opts: &DeltaOptions,
) -> Result<DeltaSummary, SyncError> {
    let clock = Instant::now();
    let started_us = now_us();
    let mut summary = DeltaSummary {
        entity: entity.to_owned(),
        run_id: opts.run_id.clone(),
        lane: opts.lane,
        status: RunStatus::Succeeded,
        pages: 0,
        seen: 0,
        inserted: 0,
        updated: 0,
        restored: 0,
        unchanged: 0,
        stale: 0,
        suppressed: 0,
        rejected: 0,
        rejected_ids: Vec::new(),
        stopped_by: None,
        duration_ms: 0,
        cursor_before: None,
        cursor_after: None,
        held_by: None,
        error: None,
    };
    match control
        .acquire_lease(
            entity,
            opts.lane.kind(),
            &opts.run_id,
            started_us,
            opts.lease_ttl_us,
        )
        .await?
    {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::Held { holder, expires_us } => {
            tracing::info!(entity, held_by = %holder, until = %format_rfc3339(expires_us), "another delta run holds the lease; exiting");
            summary.status = RunStatus::Skipped;
            summary.held_by = Some(holder);
            return Ok(summary);
        }
    }
    // Every wait of the source client inside the page loop is capped at `stop_at`.
    let result = crate::core::deadline::within(
        opts.stop_at,
        sync_pages(source, records, control, entity, opts, &mut summary),
    )
    .await;
    source.release_budget().await;
    summary.duration_ms = clock.elapsed().as_millis() as u64;
    if let Err(e) = &result {
        summary.status = RunStatus::Failed;
        summary.error = Some(e.to_string());
    }
    let run = RunRecord {
        entity: entity.to_owned(),
        kind: opts.lane.kind(),
        run_id: opts.run_id.clone(),
        started_us,
        finished_us: Some(now_us()),
        status: summary.status.as_str().to_owned(),
        summary: serde_json::to_string(&summary).unwrap_or_default(),
    };
    // History and release are best effort after a failure: the error that matters is the run's.
    let history = control.put_run(&run).await;
    let release = control
        .release_lease(entity, opts.lane.kind(), &opts.run_id)
        .await;
    result?;
    history?;
    release?;
    Ok(summary)
}

async fn sync_pages(
    source: &dyn SourceApi,
    records: &dyn RecordStore,
    control: &dyn ControlStore,
    entity: &str,
    opts: &DeltaOptions,
    summary: &mut DeltaSummary,
) -> Result<(), SyncError> {
    let state = control.job_state(entity, opts.lane.kind()).await?;
    let mut cursor = match state.cursor.as_deref() {
        Some(s) => Some(DeltaCursor::decode(s).map_err(|source| SyncError::State {
            entity: entity.to_owned(),
            source,
        })?),
        None => None,
    };
    summary.cursor_before = show(cursor.as_ref());
    summary.cursor_after = summary.cursor_before.clone();
    let since = opts.query_start(cursor.as_ref());
    let mut ceiling: Option<Micros> = None; // set from the first answer
    let mut max_written: Option<Micros> = None;
    let mut tally = Tally::default();
    let mut pages = source.list_changed_since(entity, since);
    while let Some(page) = pages.next().await {
        let page = match page {
            // The source would make us wait past the deadline: stop at the last checkpoint,
            // as at the deadline below; the run record says why.
            Err(e @ SourceError::Deadline { cause, .. }) => {
                tracing::info!(entity, error = %e, "stopping before the deadline; the next run continues from the checkpoint");
                summary.status = RunStatus::Partial;
                // A budget spoken for by higher lanes (or paused by a 429) is not a deadline
                // problem: the run record says which it was.
                summary.stopped_by = Some(
                    match cause {
                        WaitCause::Budget => "budget",
                        _ => "deadline",
                    }
                    .to_owned(),
                );
                summary.error = Some(e.to_string());
                return Ok(());
            }
            page => page?,
        };
        if opts.fails_on_rejected()
            && let Some(r) = page.rejected.first()
        {
            return Err(SyncError::Source(SourceError::Rejected {
                url: entity.to_owned(),
                id: r.id.clone().unwrap_or_default(),
                reason: r.reason,
            }));
        }
        for r in &page.rejected {
            tally.note(
                entity,
                "delta",
                r,
                &mut summary.rejected,
                &mut summary.rejected_ids,
            );
        }
        if ceiling.is_none() {
            ceiling = Some(
                page.source_date_us
                    .unwrap_or_else(|| now_us() - opts.max_clock_skew_us),
            );
        }
        // The cursor this page moves to, saved with the page's writes (after them, or in the
        // same transaction where the store can).
        let page_max = page.records.iter().map(|r| r.version.delta_us).max();
        let next = max_written
            .max(page_max)
            .map(|max| opts.advance(cursor.as_ref(), max, ceiling.unwrap_or(max)));
        let next = next.filter(|n| Some(n) != cursor.as_ref());
        let encoded = next.as_ref().map(DeltaCursor::encode);
        let save = encoded.as_deref().map(|c| CursorSave {
            entity,
            kind: opts.lane.kind(),
            holder: &opts.run_id,
            now_us: now_us(),
            ttl_us: opts.lease_ttl_us,
            cursor: c,
        });
        let outcomes = write_page(
            records,
            control,
            opts.lane.strategy(),
            entity,
            &page.records,
            save,
            summary,
            &mut tally,
        )
        .await?;
        max_written = max_written.max(page_max);
        summary.pages += 1;
        summary.seen += page.records.len() as u64;
        for o in &outcomes {
            match o {
                WriteOutcome::Inserted => summary.inserted += 1,
                WriteOutcome::Updated => summary.updated += 1,
                WriteOutcome::Restored => summary.restored += 1,
                WriteOutcome::Unchanged => summary.unchanged += 1,
                WriteOutcome::Stale => summary.stale += 1,
                WriteOutcome::Suppressed => summary.suppressed += 1,
            }
        }
        if next.is_some() {
            cursor = next;
            summary.cursor_after = show(cursor.as_ref());
        }
        if let Some(hook) = &opts.on_page {
            (hook.0)(summary);
        }
        let stop = if opts.stop_at.is_some_and(|t| Instant::now() >= t) {
            Some("deadline")
        } else if summary.pages >= opts.max_pages {
            // A re-sync must learn that it has read to the end (its closing reconciliation
            // depends on it), and the page that would tell is the next: a run that stopped at
            // the cap would otherwise read the last boundary again, and stop again, for ever.
            // So it asks for the next page (one request per capped run) and stops only when
            // there is one (not written: the next run reads it again). Delta runs never end.
            if opts.lane == Lane::Resync && !more_pages(&mut pages).await {
                break;
            }
            Some("page_cap")
        } else {
            None
        };
        if let Some(reason) = stop {
            tracing::info!(
                entity,
                reason,
                "stopping (deadline or page cap); the next run continues from the checkpoint"
            );
            summary.status = RunStatus::Partial;
            summary.stopped_by = Some(reason.to_owned());
            return Ok(());
        }
    }
    if opts.wall_clock_at_end() {
        let next = DeltaCursor::new(now_us());
        checkpoint(control, entity, opts, &next).await?;
        summary.cursor_after = show(Some(&next));
    }
    Ok(())
}

/// Whether the listing has another page: asked for and dropped unwritten (an error counts as
/// more, for the next run to meet).
async fn more_pages(
    pages: &mut futures::stream::BoxStream<'_, Result<crate::ports::RecordPage, SourceError>>,
) -> bool {
    pages.next().await.is_some()
}

/// IDs of refused records kept in a run's summary.
pub use crate::sync::rejected::REJECTED_IDS_KEPT;

/// A page's writes and checkpoint. A record the store refuses as too large (both stores check
/// every record before writing any) is taken out of the page, counted and logged, and the rest
/// written: one oversized record must not hold the entity's cursor back for ever.
#[allow(clippy::too_many_arguments)]
async fn write_page(
    records: &dyn RecordStore,
    control: &dyn ControlStore,
    by: Strategy,
    entity: &str,
    page: &[Record],
    save: Option<CursorSave<'_>>,
    summary: &mut DeltaSummary,
    tally: &mut Tally,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut rows = std::borrow::Cow::Borrowed(page);
    loop {
        match control
            .upsert_then_save_cursor(records, &rows, by, save)
            .await
        {
            Err(StoreError::TooLarge { key, bytes }) => {
                // The key names the record: "<entity>#<id>", as both stores write it.
                let Some(i) = rows
                    .iter()
                    .position(|r| key == format!("{}#{}", r.entity, r.id))
                else {
                    return Err(StoreError::TooLarge { key, bytes });
                };
                let r = rows.to_mut().remove(i);
                tracing::debug!(entity, id = %r.id, bytes, "record too large for the store");
                tally.note(
                    entity,
                    "delta",
                    &Rejected {
                        id: Some(r.id),
                        reason: RejectReason::TooLarge,
                    },
                    &mut summary.rejected,
                    &mut summary.rejected_ids,
                );
            }
            other => return other,
        }
    }
}

async fn checkpoint(
    control: &dyn ControlStore,
    entity: &str,
    opts: &DeltaOptions,
    c: &DeltaCursor,
) -> Result<(), StoreError> {
    control
        .save_cursor(
            entity,
            opts.lane.kind(),
            &opts.run_id,
            now_us(),
            opts.lease_ttl_us,
            &c.encode(),
        )
        .await
}

/// What a delta run tells the operator: its log line and its metrics (the handler publishes
/// them with `telemetry::publish`).
impl DeltaSummary {
    /// Log the run's summary (one structured line).
    pub fn log(&self) {
        tracing::info!(
            entity = %self.entity,
            run_id = %self.run_id,
            status = self.status.as_str(),
            pages = self.pages,
            seen = self.seen,
            written = self.written(),
            unchanged = self.unchanged,
            stale = self.stale,
            rejected = self.rejected,
            duration_ms = self.duration_ms,
            cursor_before = self.cursor_before.as_deref().unwrap_or("-"),
            cursor_after = self.cursor_after.as_deref().unwrap_or("-"),
            lane = self.lane.strategy().as_str(),
            "delta run finished"
        );
    }

    /// The run's metrics as one EMF line, per entity (`Strategy` = `delta`). With a cursor,
    /// `CursorLagSeconds`: how far behind now the entity's cursor is at the end of the run
    /// (what a change at the source may wait before a run reads it); none without one.
    pub fn metrics(&self) -> String {
        self.metrics_at(now_us())
    }

    fn metrics_at(&self, now: Micros) -> String {
        let failed = if self.status == RunStatus::Failed {
            1.0
        } else {
            0.0
        };
        // A run the shared rate budget could not serve: seen on every run, the callers of the
        // account want more than the source allows.
        let budget_short = if self.stopped_by.as_deref() == Some("budget") {
            1.0
        } else {
            0.0
        };
        let mut metrics = vec![
            ("RecordsSeen", self.seen as f64, "Count"),
            ("RecordsWritten", self.written() as f64, "Count"),
            ("RecordsUnchanged", self.unchanged as f64, "Count"),
            ("RecordsStale", self.stale as f64, "Count"),
            ("RecordsRejected", self.rejected as f64, "Count"),
            // Read again at the source but erased here (`syncctl erase`): not written.
            ("RecordsSuppressed", self.suppressed as f64, "Count"),
            ("ApiPages", self.pages as f64, "Count"),
            ("RunFailed", failed, "Count"),
            ("RunStoppedByBudget", budget_short, "Count"),
            ("RunDuration", self.duration_ms as f64, "Milliseconds"),
        ];
        // The cursor as the summary shows it (`show`, RFC 3339 to the microsecond). A
        // re-sync's cursor is meant to lag (it reads from the beginning): no lag for it.
        if self.lane == Lane::Delta
            && let Some(at) = self
                .cursor_after
                .as_deref()
                .and_then(|c| parse_rfc3339(c).ok())
        {
            let lag_s = (now - at).max(0) as f64 / 1e6;
            metrics.push(("CursorLagSeconds", lag_s, "Seconds"));
        }
        crate::telemetry::emf(
            &[
                ("Entity", &self.entity),
                ("Strategy", self.lane.strategy().as_str()),
            ],
            &metrics,
        )
    }
}

/// The metrics of a failed delta run, as one EMF line (it has no summary: the caller logs the
/// error).
pub fn failed_run_metrics(entity: &str) -> String {
    crate::telemetry::emf(
        &[("Entity", entity), ("Strategy", "delta")],
        &[("RunFailed", 1.0, "Count")],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::with;
    use crate::memory::{MemoryControl, MemoryRecords, ScriptedSource};
    use crate::model::Record;
    use crate::ports::RecordPage;

    fn rec(id: &str, delta: Micros, body: &str) -> Record {
        let payload =
            crate::model::RawJson::parse(format!("{{\"id\":\"{id}\",\"b\":\"{body}\"}}")).unwrap();
        Record::new("people", id, delta, now_us(), payload)
    }

    fn page(recs: Vec<Record>, date: Micros) -> Result<RecordPage, crate::SourceError> {
        Ok(RecordPage {
            records: recs,
            rejected: Vec::new(),
            source_date_us: Some(date),
        })
    }

    fn rejected(id: Option<&str>, reason: RejectReason) -> Rejected {
        Rejected {
            id: id.map(str::to_owned),
            reason,
        }
    }

    #[test]
    fn options_from_the_environment_default_and_range_check_naming_the_variable() {
        let o = with(&[], |env| DeltaOptions::from_env(env).unwrap());
        let d = DeltaOptions::default();
        assert_eq!(
            (o.overlap_us, o.safety_margin),
            (d.overlap_us, d.safety_margin)
        );
        let o = with(&[(OVERLAP_VAR, " 0 "), (SAFETY_MARGIN_VAR, "45")], |env| {
            DeltaOptions::from_env(env).unwrap()
        });
        assert_eq!(
            (o.overlap_us, o.safety_margin),
            (0, Duration::from_secs(45))
        );
        let o = with(
            &[
                (OVERLAP_VAR, "3600"),
                (SAFETY_MARGIN_VAR, "899"),
                (MAX_PAGES_VAR, "1"),
            ],
            |env| DeltaOptions::from_env(env).unwrap(),
        );
        assert_eq!(
            (o.overlap_us, o.safety_margin, o.max_pages),
            (3_600_000_000, Duration::from_secs(899), 1)
        );
        assert_eq!(d.max_pages, 10_000);
        for (name, bad) in [
            (OVERLAP_VAR, "3601"),
            (OVERLAP_VAR, "-1"),
            (OVERLAP_VAR, "2m"),
            (SAFETY_MARGIN_VAR, "0"),
            (SAFETY_MARGIN_VAR, "900"),
            (SAFETY_MARGIN_VAR, "twenty"),
            (MAX_PAGES_VAR, "0"),
            (MAX_PAGES_VAR, "1000001"),
        ] {
            let e = with(&[(name, bad)], |env| {
                DeltaOptions::from_env(env).unwrap_err()
            });
            assert!(
                matches!(&e, ConfigError::BadEnv { name: n, .. } if n == name),
                "{name}={bad}: {e}"
            );
        }
    }

    #[test]
    fn next_run_keeps_the_settings_under_a_new_run_id() {
        let o = DeltaOptions {
            overlap_us: 7,
            safety_margin: Duration::from_secs(3),
            ..DeltaOptions::default()
        };
        let n = o.next_run();
        assert_ne!(n.run_id, o.run_id);
        assert_eq!((n.overlap_us, n.safety_margin), (7, Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn cursor_advances_to_min_of_max_written_and_ceiling_and_reruns_overlap() {
        let src = ScriptedSource::default();
        let (rs, cs) = (MemoryRecords::default(), MemoryControl::default());
        // Run 1: two pages, one record newer than the source's clock at the start (updated
        // during the run).
        src.listings.lock().unwrap().push_back(vec![
            page(vec![rec("1", 100, "a"), rec("2", 200, "a")], 1_000),
            page(vec![rec("3", 1_500, "a")], 1_600),
        ]);
        let s = run_delta(
            &src,
            &rs,
            &cs,
            "people",
            &DeltaOptions {
                overlap_us: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (s.status, s.inserted, s.pages),
            (RunStatus::Succeeded, 3, 2)
        );
        let state = cs.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(
            DeltaCursor::decode(state.cursor.as_deref().unwrap())
                .unwrap()
                .watermark_us,
            950,
            "min(max written, ceiling - overlap)"
        );
        assert_eq!(state.lease_holder, None, "lease released");
        // Run 2 starts an overlap before the cursor; a re-read of unchanged records writes nothing.
        src.listings
            .lock()
            .unwrap()
            .push_back(vec![page(vec![rec("3", 1_500, "a")], 2_000)]);
        let s = run_delta(
            &src,
            &rs,
            &cs,
            "people",
            &DeltaOptions {
                overlap_us: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(src.calls.lock().unwrap().clone(), vec![None, Some(950)]);
        assert_eq!((s.unchanged, s.written()), (1, 0));
        let runs = cs.list_runs("people", JobKind::Delta, 10).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs[0].summary.contains("\"unchanged\":1"));
    }

    #[tokio::test]
    async fn a_record_too_large_for_the_store_is_skipped_counted_and_the_rest_written() {
        let store = crate::adapters::local::LocalStore::in_memory().unwrap();
        let src = ScriptedSource::default();
        // ~700 KB of random letters: over the inline limit and over 390 KB zlib-compressed.
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: String = (0..700_000).map(|_| rng.alphanumeric()).collect();
        src.listings.lock().unwrap().push_back(vec![
            page(vec![rec("1", 100, "a"), rec("2", 200, &noise)], 1_000),
            page(vec![rec("3", 300, "a")], 1_000),
        ]);
        let s = run_delta(&src, &store, &store, "people", &DeltaOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (s.status, s.seen, s.inserted, s.rejected),
            (RunStatus::Succeeded, 3, 2, 1)
        );
        assert_eq!(
            s.rejected_ids,
            [RejectedRecord {
                id: Some("2".into()),
                reason: "too_large".into()
            }]
        );
        assert!(store.get("people", "2").await.unwrap().is_none());
        assert!(store.get("people", "3").await.unwrap().is_some());
        let state = store.job_state("people", JobKind::Delta).await.unwrap();
        assert!(
            state.cursor.is_some(),
            "the cursor moved past the refused record"
        );
        let runs = store.list_runs("people", JobKind::Delta, 1).await.unwrap();
        assert!(
            runs[0]
                .summary
                .contains(r#""rejected_ids":[{"id":"2","reason":"too_large"}]"#),
            "{}",
            runs[0].summary
        );
    }

    /// Two pages, the first holding two rejected records (one of them again on the second
    /// page, re-read at the boundary); the run's summary and cursor.
    async fn run_with_rejected(
        per_record_rejection: bool,
    ) -> (Result<DeltaSummary, SyncError>, Option<Micros>, usize) {
        let src = ScriptedSource::default();
        let (rs, cs) = (MemoryRecords::default(), MemoryControl::default());
        let mut first = page(vec![rec("1", 100, "a"), rec("3", 300, "a")], 1_000).unwrap();
        first.rejected = vec![
            rejected(Some("2"), RejectReason::NullDelta),
            rejected(None, RejectReason::MissingId),
        ];
        let mut second = page(vec![rec("4", 400, "a")], 1_000).unwrap();
        second.rejected = vec![rejected(Some("2"), RejectReason::NullDelta)];
        src.listings
            .lock()
            .unwrap()
            .push_back(vec![Ok(first), Ok(second)]);
        let opts = DeltaOptions {
            overlap_us: 0,
            per_record_rejection,
            ..Default::default()
        };
        let s = run_delta(&src, &rs, &cs, "people", &opts).await;
        let cursor = cs
            .job_state("people", JobKind::Delta)
            .await
            .unwrap()
            .cursor
            .map(|c| DeltaCursor::decode(&c).unwrap().watermark_us);
        let stored = rs.items.lock().unwrap().len();
        (s, cursor, stored)
    }

    #[tokio::test]
    async fn rejected_records_are_counted_once_with_their_reason_and_the_rest_written() {
        let (s, cursor, stored) = run_with_rejected(true).await;
        let s = s.unwrap();
        assert_eq!(
            (s.status, s.seen, s.inserted, s.rejected),
            (RunStatus::Succeeded, 3, 3, 2)
        );
        assert_eq!(
            s.rejected_ids,
            [
                RejectedRecord {
                    id: Some("2".into()),
                    reason: "null_delta".into()
                },
                RejectedRecord {
                    id: None,
                    reason: "missing_id".into()
                }
            ]
        );
        assert_eq!(
            (cursor, stored),
            (Some(400), 3),
            "the cursor moved past them"
        );
        let line: serde_json::Value = serde_json::from_str(&s.metrics()).unwrap();
        assert_eq!(line["RecordsRejected"], 2.0);
    }

    /// `CursorLagSeconds`: now minus the cursor the run ended at (here 400 µs after the
    /// epoch), per entity under `Strategy` = `delta`; a run without a cursor has none.
    #[tokio::test]
    async fn the_runs_metrics_say_how_far_behind_now_its_cursor_is() {
        let (s, cursor, _) = run_with_rejected(true).await;
        let s = s.unwrap();
        assert_eq!(cursor, Some(400));
        let line: serde_json::Value =
            serde_json::from_str(&s.metrics_at(400 + 90_500_000)).unwrap();
        assert_eq!(line["CursorLagSeconds"], 90.5);
        assert_eq!(
            (&line["Entity"], &line["Strategy"]),
            (&"people".into(), &"delta".into())
        );
        let defs = &line["_aws"]["CloudWatchMetrics"][0]["Metrics"];
        assert!(
            defs.as_array()
                .unwrap()
                .iter()
                .any(|d| d["Name"] == "CursorLagSeconds" && d["Unit"] == "Seconds"),
            "{defs}"
        );
        // The real clock: the cursor is decades behind.
        let now: serde_json::Value = serde_json::from_str(&s.metrics()).unwrap();
        assert!(now["CursorLagSeconds"].as_f64().unwrap() > 1.5e9, "{now}");

        // A run that never had a cursor (the lease was held) publishes no lag at all, rather
        // than a lag of 0 that would read as fresh.
        let skipped = DeltaSummary {
            status: RunStatus::Skipped,
            cursor_before: None,
            cursor_after: None,
            ..s
        };
        let line: serde_json::Value = serde_json::from_str(&skipped.metrics()).unwrap();
        assert!(line.get("CursorLagSeconds").is_none(), "{line}");
    }

    #[tokio::test]
    async fn negative_control_a_rejected_record_failing_its_page_stalls_the_entity() {
        let (s, cursor, stored) = run_with_rejected(false).await;
        let e = s.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("null_delta"), "{e}");
        assert_eq!(
            (cursor, stored),
            (None, 0),
            "nothing written, the cursor never moves"
        );
    }

    #[tokio::test]
    async fn a_held_lease_skips_and_a_failure_keeps_the_checkpoint() {
        let src = ScriptedSource::default();
        let (rs, cs) = (MemoryRecords::default(), MemoryControl::default());
        cs.acquire_lease("people", JobKind::Delta, "other", now_us(), 60_000_000)
            .await
            .unwrap();
        let s = run_delta(&src, &rs, &cs, "people", &DeltaOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (s.status, s.held_by.as_deref()),
            (RunStatus::Skipped, Some("other"))
        );
        cs.release_lease("people", JobKind::Delta, "other")
            .await
            .unwrap();

        src.listings.lock().unwrap().push_back(vec![
            page(vec![rec("1", 100, "a")], 1_000),
            Err(crate::SourceError::Timeout {
                url: "u".into(),
                attempts: 6,
            }),
        ]);
        let err = run_delta(
            &src,
            &rs,
            &cs,
            "people",
            &DeltaOptions {
                overlap_us: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable());
        let state = cs.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(
            DeltaCursor::decode(state.cursor.as_deref().unwrap())
                .unwrap()
                .watermark_us,
            100
        );
        assert_eq!(state.lease_holder, None);
        let runs = cs.list_runs("people", JobKind::Delta, 1).await.unwrap();
        assert_eq!(runs[0].status, "failed");
    }

    #[tokio::test]
    async fn stops_at_the_deadline_after_a_checkpoint() {
        let src = ScriptedSource::default();
        let (rs, cs) = (MemoryRecords::default(), MemoryControl::default());
        src.listings.lock().unwrap().push_back(vec![
            page(vec![rec("1", 100, "a")], 1_000),
            page(vec![rec("2", 200, "a")], 1_000),
        ]);
        let opts = DeltaOptions {
            stop_at: Some(Instant::now()),
            overlap_us: 50,
            ..Default::default()
        };
        let s = run_delta(&src, &rs, &cs, "people", &opts).await.unwrap();
        assert_eq!((s.status, s.pages), (RunStatus::Partial, 1));
        assert!(rs.get("people", "2").await.unwrap().is_none());
        let state = cs.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(
            DeltaCursor::decode(state.cursor.as_deref().unwrap())
                .unwrap()
                .watermark_us,
            100
        );
    }

    #[tokio::test]
    async fn the_page_cap_ends_a_run_partial_at_its_checkpoint_and_the_next_run_goes_on() {
        let src = ScriptedSource::default();
        let (rs, cs) = (MemoryRecords::default(), MemoryControl::default());
        let pages = || {
            (1..=3)
                .map(|i| page(vec![rec(&i.to_string(), i * 100, "a")], 10_000))
                .collect::<Vec<_>>()
        };
        src.listings.lock().unwrap().push_back(pages());
        let opts = DeltaOptions {
            max_pages: 2,
            overlap_us: 50,
            ..Default::default()
        };
        let s = run_delta(&src, &rs, &cs, "people", &opts).await.unwrap();
        assert_eq!(
            (s.status, s.pages, s.stopped_by.as_deref()),
            (RunStatus::Partial, 2, Some("page_cap"))
        );
        assert!(rs.get("people", "3").await.unwrap().is_none());
        async fn cursor(cs: &MemoryControl) -> Micros {
            let state = cs.job_state("people", JobKind::Delta).await.unwrap();
            DeltaCursor::decode(state.cursor.as_deref().unwrap())
                .unwrap()
                .watermark_us
        }
        assert_eq!(cursor(&cs).await, 200);
        // The next run reads on from the checkpoint and ends the backlog.
        src.listings
            .lock()
            .unwrap()
            .push_back(vec![page(vec![rec("3", 300, "a")], 10_000)]);
        let s = run_delta(&src, &rs, &cs, "people", &opts.next_run())
            .await
            .unwrap();
        assert_eq!((s.status, s.stopped_by), (RunStatus::Succeeded, None));
        assert!(rs.get("people", "3").await.unwrap().is_some());
        assert_eq!(cursor(&cs).await, 300);
    }

    #[tokio::test]
    async fn an_unreadable_cursor_is_a_state_error_that_retrying_cannot_heal() {
        let src = ScriptedSource::default();
        let (rs, cs) = (MemoryRecords::default(), MemoryControl::default());
        cs.acquire_lease("people", JobKind::Delta, "hand", 0, i64::MAX / 2)
            .await
            .unwrap();
        cs.save_cursor(
            "people",
            JobKind::Delta,
            "hand",
            0,
            i64::MAX / 2,
            r#"{"v":7,"watermark_us":1}"#,
        )
        .await
        .unwrap();
        cs.release_lease("people", JobKind::Delta, "hand")
            .await
            .unwrap();
        let err = run_delta(&src, &rs, &cs, "people", &DeltaOptions::default())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        match &err {
            SyncError::State { entity, source } => {
                assert_eq!(entity, "people");
                assert!(
                    matches!(source, crate::error::ParseError::CursorVersion(7)),
                    "{source:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let runs = cs.list_runs("people", JobKind::Delta, 1).await.unwrap();
        assert_eq!(runs[0].status, "failed");
    }
}
