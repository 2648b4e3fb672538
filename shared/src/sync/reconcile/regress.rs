//! Records whose source version went backwards (a restore from a backup, a clock fix at the
//! source): the diff's `newer` list holds the IDs whose stored copy is newer than the source
//! listed. Every write path calls the source's copy stale (I2), so without this such a record
//! keeps the destination's copy for ever, unseen.
//!
//! [`repair_regressions`] reads the list in ID order and tells the two causes apart by the
//! stored copy: one fetched before the listing started was seen newer *before* the source (asked
//! later) answered older, so the source went backwards (`regressions`, always counted: the run
//! summary, the `ReconcileRegressions` metric and its alarm, `syncctl status`); one
//! written since was only a listing older than a write. Where the entity opts in
//! (`allow_version_regression = true`), each regression is fetched again and the source's copy
//! written under `core::decide_regression` through `RecordStore::write_regressed`, the one write
//! that may lower `delta_us`: only when that fetch was sent after the stored copy's, its content
//! differs, and the stored copy is still exactly the one compared (a concurrent write wins).

use super::wire::{RegressOutput, RunRef};
use super::{ReconcileDeps, ReconcileOptions, StepError};
use crate::core::deadline::within;
use crate::core::decide_regression;
use crate::error::SourceError;
use crate::model::{Record, RegressOutcome, StoredRecord};
use crate::setdiff::{DiffSummary, RunReader};
use futures::StreamExt;
use std::time::Instant;

/// IDs looked at per batch; the stop instant is checked before each.
const BATCH: usize = 64;

/// Go through `diff.newer` after `after` (bytewise; `None`: from the start), in ID order:
/// count the regressions, and where the entity opts in (`allow_version_regression`, and the run
/// is not report-only) fetch each again (`opts.concurrency` in flight) and write the ones the
/// regression rule allows. Stops before `opts.stop_at` (checked before each batch of 64; the
/// fetches run under it, `core::deadline::within`) with `done = false` and `last_id`: call
/// again with `after = last_id` and add the counts (`RegressOutput::absorb`). Every ID up to
/// `last_id` is done, none after it written. Safe to repeat: a written regression is no longer
/// below the source's version.
pub async fn repair_regressions(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    diff: &DiffSummary,
    after: Option<&str>,
    opts: &ReconcileOptions,
) -> Result<RegressOutput, StepError> {
    repair_regressions_from(deps, run, diff, after, opts, false).await
}

/// [`repair_regressions`]; with `must_progress`, its first batch runs whatever the stop
/// instant (Apply's first unit of work in an invocation: every invocation progresses).
pub(super) async fn repair_regressions_from(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    diff: &DiffSummary,
    after: Option<&str>,
    opts: &ReconcileOptions,
    must_progress: bool,
) -> Result<RegressOutput, StepError> {
    let mut first = must_progress;
    let entity = deps
        .config
        .entity(&run.entity)
        .ok_or_else(|| StepError::UnknownEntity(run.entity.clone()))?;
    let repair = entity.allow_version_regression && !run.report_only;
    let mut out = RegressOutput::default();
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    for key in diff.newer.keys() {
        let mut reader = RunReader::open(deps.spill, &key).await?;
        while let Some((id, _)) = reader.next().await? {
            if after.is_some_and(|a| id.as_bytes() <= a.as_bytes()) {
                continue;
            }
            batch.push(id.to_owned());
            if batch.len() == BATCH {
                let went_on = run_batch(
                    deps,
                    run,
                    &batch,
                    repair,
                    opts,
                    std::mem::take(&mut first),
                    &mut out,
                )
                .await?;
                batch.clear();
                if !went_on {
                    return Ok(stopped(run, out));
                }
            }
        }
    }
    if !batch.is_empty() && !run_batch(deps, run, &batch, repair, opts, first, &mut out).await? {
        return Ok(stopped(run, out));
    }
    out.done = true;
    if out.regressions > 0 {
        tracing::warn!(
            entity = %run.entity,
            run_id = %run.run_id,
            regressions = out.regressions,
            regressed = out.regressed,
            repair,
            "source versions went backwards (older than the stored copies); \
             repaired only with allow_version_regression"
        );
    }
    Ok(out)
}

fn stopped(run: &RunRef, out: RegressOutput) -> RegressOutput {
    tracing::info!(entity = %run.entity, run_id = %run.run_id, last_id = ?out.last_id, "regression repair stopped at its stop instant; continues after last_id");
    out
}

/// What one ID of the list came to, before any write.
enum Look {
    /// No regression: the stored copy was written since the listing started, or is deleted or
    /// gone.
    Raced,
    /// A regression, not to be repaired here (the entity does not opt in, or report only).
    Counted,
    /// A regression fetched again.
    Fetched(Box<Refetched>),
}

/// A regression fetched again: the source's answer (`None`: gone, or a record that cannot be
/// synced), then the stored copy read after that fetch.
struct Refetched {
    fetched: Option<Record>,
    stored: Option<StoredRecord>,
}

/// Whether the stored copy counts as a regression: live, and fetched before the listing (sent
/// later) answered with an older version.
fn is_regression(stored: Option<&StoredRecord>, run: &RunRef) -> bool {
    stored.is_some_and(|s| !s.is_deleted() && s.version.fetched_at_us < run.started_us)
}

async fn look(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    id: &str,
    repair: bool,
) -> Result<Look, StepError> {
    let stored = deps.records.get(&run.entity, id).await?;
    if !is_regression(stored.as_ref(), run) {
        return Ok(Look::Raced);
    }
    if !repair {
        return Ok(Look::Counted);
    }
    let fetched = match deps.source.get_by_id(&run.entity, id).await {
        Ok(r) => r,
        Err(SourceError::Rejected { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    // Read again after the fetch: the copy to compare is the one the write will replace.
    let stored = deps.records.get(&run.entity, id).await?;
    Ok(Look::Fetched(Box::new(Refetched { fetched, stored })))
}

/// One batch: the looks concurrently, then the writes in ID order. `false` when it stopped at
/// the stop instant (the IDs before the first one that could not be looked at are done).
/// `unbounded`: run it whatever the stop instant.
async fn run_batch(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    ids: &[String],
    repair: bool,
    opts: &ReconcileOptions,
    unbounded: bool,
    out: &mut RegressOutput,
) -> Result<bool, StepError> {
    let stop_at = if unbounded { None } else { opts.stop_at };
    if stop_at.is_some_and(|t| Instant::now() >= t) {
        return Ok(false);
    }
    let looks: Vec<Result<Look, StepError>> = within(
        stop_at,
        futures::stream::iter(ids)
            .map(|id| look(deps, run, id, repair))
            .buffered(opts.concurrency.max(1))
            .collect(),
    )
    .await;
    for (id, l) in ids.iter().zip(looks) {
        let l = match l {
            Ok(l) => l,
            Err(StepError::Source(SourceError::Deadline { .. })) => return Ok(false),
            Err(e) => return Err(e),
        };
        out.read += 1;
        match l {
            Look::Raced => {}
            Look::Counted => out.regressions += 1,
            Look::Fetched(f) => {
                out.regressions += 1;
                out.fetched += 1;
                match write(deps, *f, opts).await? {
                    RegressOutcome::Regressed => {
                        tracing::info!(entity = %run.entity, id = %id, "wrote the source's older version (regressed)");
                        out.regressed += 1;
                    }
                    RegressOutcome::Unchanged => out.unchanged += 1,
                    RegressOutcome::FetchedBefore
                    | RegressOutcome::NotNewer
                    | RegressOutcome::Moved => out.skipped += 1,
                }
            }
        }
        out.last_id = Some(id.clone());
    }
    Ok(true)
}

/// Write the fetched record over the stored copy when the regression rule allows it.
async fn write(
    deps: &ReconcileDeps<'_>,
    f: Refetched,
    opts: &ReconcileOptions,
) -> Result<RegressOutcome, StepError> {
    let (Some(mut record), Some(stored)) = (f.fetched, f.stored) else {
        // Gone at the source (the delete path's business) or at the destination.
        return Ok(RegressOutcome::Moved);
    };
    if !opts.regression_fetched_after() {
        // The negative control: stamped with the write's clock, as if the fetch were newer.
        record.version.fetched_at_us = crate::core::timefmt::now_us();
    }
    let compared = stored.version;
    let decided = decide_regression(Some(&compared), &compared, &record.version);
    if !decided.wrote() {
        return Ok(decided);
    }
    Ok(deps.records.write_regressed(&record, &compared).await?)
}
