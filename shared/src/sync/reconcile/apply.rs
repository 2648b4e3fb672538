//! Apply: targeted syncs for the missed and stale records (or a rewind of the delta cursor when
//! they are too many), then the deletions the guard allowed (each candidate written since the
//! listing started dropped, the rest confirmed again, each delete conditional on the listing's
//! start). Missed records the store holds erased (`RecordStore::erase`) are not queued (a
//! marker is absent from the live listing, so the diff finds them missed every day): counted
//! `suppressed`. Resumable: it stops before the invocation's deadline at a batch boundary and says
//! where it is ([`ApplyOutput::position`]); the state machine invokes it again until `done`.
//! Repairs come first, so that a long deletion never keeps them from being queued.

use super::guard::{Alive, count_alive, drop_recent};
use super::regress::repair_regressions_from;
use super::wire::*;
use super::{ReconcileDeps, ReconcileOptions, StepError, renew};
use crate::core::cursor::DeltaCursor;
use crate::core::timefmt::now_us;
use crate::error::{SourceError, StoreError};
use crate::model::{DeleteOutcome, Micros, Strategy};
use crate::ports::{JobKind, LeaseOutcome, RunRecord};
use crate::setdiff::{ListSummary, RunReader};
use crate::wire::{ENVELOPE_VERSION, MessageKind, QueueEnvelope};
use futures::StreamExt;
use std::time::Instant;

/// IDs per batch: one BatchGetItem round of sync times, one round of confirmations, one
/// round of deletes; the unit of progress.
const DELETE_BATCH: usize = 256;
/// IDs per batch of targeted syncs (SendMessageBatch calls of 10, 8 in flight).
const REPAIR_BATCH: usize = 500;

/// Queue targeted syncs for the missed and stale records (or rewind the delta cursor when there
/// are too many), then delete what the guard allowed (each candidate re-confirmed, each delete
/// conditional), from where `input.progress` left off. Stops at a batch boundary once
/// `opts.stop_at` has passed (after at least one batch, so that every invocation progresses),
/// recording where it is in the run's history. Safe to re-run from any earlier position: the
/// deletes are conditional and the targeted syncs idempotent.
pub async fn apply(
    deps: &ReconcileDeps<'_>,
    input: &ApplyInput,
    opts: &ReconcileOptions,
) -> Result<ApplyOutput, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "apply").await?;
    let mut out = input.progress.clone().unwrap_or_default();
    if out.done {
        return Ok(out);
    }
    out.invocations += 1;
    let may_delete = match &input.guard.decision {
        Decision::Delete => true,
        Decision::NeedsApproval { .. } => input.approved,
        _ => false,
    };
    let mut pos = out.position.take().unwrap_or_default();
    let mut clock = Clock {
        stop_at: opts.stop_at,
        batches: 0,
    };
    let stopped = 'phases: {
        if pos.phase == ApplyPhase::Repair {
            // A report-only run repairs nothing (it only counts the regressions, below).
            if !run.report_only && repair(deps, input, opts, &mut pos, &mut out, &mut clock).await?
            {
                break 'phases true;
            }
            pos = ApplyPosition {
                phase: ApplyPhase::Regress,
                ..Default::default()
            };
        }
        if pos.phase == ApplyPhase::Regress {
            // Every entity's regressions are counted; written only where it opts in.
            let done = regress(deps, input, opts, &mut pos, &mut out, &mut clock).await?;
            if !done {
                break 'phases true;
            }
            pos = ApplyPosition {
                phase: ApplyPhase::Delete,
                ..Default::default()
            };
        }
        if pos.phase == ApplyPhase::Delete && may_delete && !run.report_only {
            let lists = [(&input.diff.to_delete, "")];
            while let Some((key, _)) = object_at(&lists, pos.object) {
                if delete_object(deps, run, &key, opts, &mut pos, &mut out, &mut clock).await? {
                    break 'phases true;
                }
                pos.object += 1;
                pos.offset = 0;
            }
        }
        false
    };
    if stopped {
        out.position = Some(pos);
        record_progress(deps, run, &out).await?;
        tracing::info!(entity = %run.entity, run_id = %run.run_id, invocations = out.invocations, deleted = out.deleted, queued = out.queued, "apply stopped before the deadline; it resumes");
    } else {
        out.done = true;
    }
    Ok(out)
}

/// When a resumable loop stops: at a batch boundary once `stop_at` has passed, never before
/// the invocation's first batch.
struct Clock {
    stop_at: Option<Instant>,
    batches: u32,
}

impl Clock {
    fn must_stop(&self) -> bool {
        self.batches > 0 && self.stop_at.is_some_and(|t| Instant::now() >= t)
    }

    /// Run one batch: the first without the deadline (the invocation must progress), the
    /// others under it (`core::deadline::within`), where a source wait or request that would
    /// pass it ends the batch with `None` (redone by the next invocation).
    async fn batch<T>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, StepError>>,
    ) -> Result<Option<T>, StepError> {
        let r = if self.batches == 0 {
            work.await
        } else {
            crate::core::deadline::within(self.stop_at, work).await
        };
        self.batches += 1;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(StepError::Source(SourceError::Deadline { .. })) if self.batches > 1 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The key of object `index` of the lists taken in order, and its list's tag.
fn object_at<'a>(lists: &[(&ListSummary, &'a str)], index: u32) -> Option<(String, &'a str)> {
    let mut i = index;
    for (list, tag) in lists {
        if i < list.objects {
            return Some((list.keys().swap_remove(i as usize), tag));
        }
        i -= list.objects;
    }
    None
}

/// The repairs: a cursor rewind when they are too many, else targeted syncs. `true` when it
/// stopped before the end.
async fn repair(
    deps: &ReconcileDeps<'_>,
    input: &ApplyInput,
    opts: &ReconcileOptions,
    pos: &mut ApplyPosition,
    out: &mut ApplyOutput,
    clock: &mut Clock,
) -> Result<bool, StepError> {
    let run = &input.run;
    let repairs = input.diff.to_fetch.pairs + input.diff.stale.pairs;
    if repairs > opts.targeted_limit {
        if out.rewound_to_us.is_none() {
            out.rewound_to_us = rewind_delta(deps, run, input).await?;
        }
        return Ok(false);
    }
    let lists = [
        (
            &input.diff.to_fetch,
            "reconcile: missing at the destination",
        ),
        (&input.diff.stale, "reconcile: stale at the destination"),
    ];
    while let Some((key, reason)) = object_at(&lists, pos.object) {
        let missed = pos.object < input.diff.to_fetch.objects;
        let mut reader = RunReader::open(deps.spill, &key).await?;
        skip(&mut reader, pos.offset).await?;
        loop {
            let mut ids = next_ids(&mut reader, REPAIR_BATCH).await?;
            if ids.is_empty() {
                break;
            }
            if clock.must_stop() {
                return Ok(true);
            }
            let n = ids.len() as u64;
            if missed {
                let before = ids.len();
                ids = drop_erased(deps, run, ids).await?;
                out.suppressed += (before - ids.len()) as u64;
            }
            let queued = clock.batch(queue_targeted(deps, run, &ids, reason)).await?;
            let Some(queued) = queued else {
                return Ok(true);
            };
            out.queued += queued;
            pos.offset += n;
        }
        pos.object += 1;
        pos.offset = 0;
    }
    Ok(false)
}

/// `ids` less those the store holds erased: a suppression marker, which no targeted sync could
/// write over (one strongly consistent read of the batch's sync times).
async fn drop_erased(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    ids: Vec<String>,
) -> Result<Vec<String>, StepError> {
    let times = deps.records.sync_times(&run.entity, &ids).await?;
    Ok(ids
        .into_iter()
        .filter(|id| !times.get(id).is_some_and(|t| t.erased))
        .collect())
}

/// The regressions of the `newer` list after `pos.after` (`regress::repair_regressions`, which
/// stops before `stop_at` by itself); its counts added to `out.regress`. `true` when the list is
/// done.
async fn regress(
    deps: &ReconcileDeps<'_>,
    input: &ApplyInput,
    opts: &ReconcileOptions,
    pos: &mut ApplyPosition,
    out: &mut ApplyOutput,
    clock: &mut Clock,
) -> Result<bool, StepError> {
    if input.diff.newer.pairs == 0 {
        out.regress.get_or_insert_with(|| RegressOutput {
            done: true,
            ..Default::default()
        });
        return Ok(true);
    }
    if clock.must_stop() {
        return Ok(false);
    }
    // The first work of an invocation must progress: its first batch runs whatever the
    // deadline, as every phase's first batch.
    let later = repair_regressions_from(
        deps,
        &input.run,
        &input.diff,
        pos.after.as_deref(),
        opts,
        clock.batches == 0,
    )
    .await?;
    clock.batches += 1;
    let done = later.done;
    if let Some(id) = &later.last_id {
        pos.after = Some(id.clone());
    }
    match &mut out.regress {
        Some(r) => r.absorb(later),
        None => out.regress = Some(later),
    }
    Ok(done)
}

/// The deletions of one object of the delete list, from `pos.offset`. `true` when it stopped
/// before the end.
async fn delete_object(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    key: &str,
    opts: &ReconcileOptions,
    pos: &mut ApplyPosition,
    out: &mut ApplyOutput,
    clock: &mut Clock,
) -> Result<bool, StepError> {
    let mut reader = RunReader::open(deps.spill, key).await?;
    skip(&mut reader, pos.offset).await?;
    loop {
        let ids = next_ids(&mut reader, DELETE_BATCH).await?;
        if ids.is_empty() {
            return Ok(false);
        }
        if clock.must_stop() {
            return Ok(true);
        }
        let n = ids.len() as u64;
        let mut batch = ApplyOutput::default();
        if clock
            .batch(delete_batch(deps, run, ids, opts, &mut batch))
            .await?
            .is_none()
        {
            return Ok(true);
        }
        out.deleted += batch.deleted;
        out.delete_skipped += batch.delete_skipped;
        out.alive += batch.alive;
        out.recent += batch.recent;
        pos.offset += n;
    }
}

/// Read past the first `n` pairs of a run.
async fn skip(reader: &mut RunReader, n: u64) -> Result<(), StepError> {
    for _ in 0..n {
        if reader.next().await?.is_none() {
            break;
        }
    }
    Ok(())
}

/// The next at most `limit` IDs of a run.
async fn next_ids(reader: &mut RunReader, limit: usize) -> Result<Vec<String>, StepError> {
    let mut ids = Vec::with_capacity(limit.min(1024));
    while ids.len() < limit {
        match reader.next().await? {
            Some((id, _)) => ids.push(id.to_owned()),
            None => break,
        }
    }
    Ok(ids)
}

/// Record where Apply is in the run's history (`syncctl status` shows it).
async fn record_progress(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    out: &ApplyOutput,
) -> Result<(), StepError> {
    deps.control
        .put_run(&RunRecord {
            entity: run.entity.clone(),
            kind: JobKind::Reconcile,
            run_id: run.run_id.clone(),
            started_us: run.started_us,
            finished_us: None,
            status: "running".into(),
            summary: serde_json::json!({
                "step": "apply",
                "report_only": run.report_only,
                "apply": out,
            })
            .to_string(),
        })
        .await?;
    Ok(())
}

async fn delete_batch(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    ids: Vec<String>,
    opts: &ReconcileOptions,
    out: &mut ApplyOutput,
) -> Result<(), StepError> {
    let total = ids.len() as u64;
    let ids = drop_recent(deps, run, ids, opts).await?;
    out.recent += total - ids.len() as u64;
    let alive = if opts.confirms_deletes() {
        count_alive(deps.source, &run.entity, &ids, opts.concurrency).await?
    } else {
        Alive::default()
    };
    out.alive += alive.len() as u64;
    if !alive.found.is_empty() {
        queue_targeted(
            deps,
            run,
            &alive.found,
            "reconcile: listed as gone, source has it",
        )
        .await?;
    }
    let gone: Vec<&String> = ids.iter().filter(|id| !alive.contains(id)).collect();
    let results: Vec<Result<DeleteOutcome, StoreError>> = futures::stream::iter(gone)
        .map(|id| {
            deps.records
                .soft_delete(&run.entity, id, run.started_us, Strategy::Reconcile)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    for r in results {
        match r? {
            DeleteOutcome::Deleted => out.deleted += 1,
            _ => out.delete_skipped += 1,
        }
    }
    Ok(())
}

/// Move the delta cursor back to just before the oldest missed or stale version, so that delta
/// sync re-reads them (cheaper than one message each when there are many). Rejected records'
/// unknown versions (`listing::UNKNOWN_VERSION`) move nothing: with no other version, the
/// cursor stays.
async fn rewind_delta(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    input: &ApplyInput,
) -> Result<Option<Micros>, StepError> {
    let mut oldest = Micros::MAX;
    for list in [&input.diff.to_fetch, &input.diff.stale] {
        for key in list.keys() {
            let mut r = RunReader::open(deps.spill, &key).await?;
            while let Some((_, v)) = r.next().await? {
                if v != super::listing::UNKNOWN_VERSION {
                    oldest = oldest.min(v);
                }
            }
        }
    }
    if oldest == Micros::MAX {
        return Ok(None);
    }
    let target = oldest.saturating_sub(1_000_000);
    let holder = format!("{}-rewind", run.run_id);
    let now = now_us();
    match deps
        .control
        .acquire_lease(&run.entity, JobKind::Delta, &holder, now, 60_000_000)
        .await?
    {
        LeaseOutcome::Held { .. } => return Err(StepError::DeltaBusy(run.entity.clone())),
        LeaseOutcome::Acquired { .. } => {}
    }
    let result = async {
        let state = deps.control.job_state(&run.entity, JobKind::Delta).await?;
        let current = state
            .cursor
            .as_deref()
            .and_then(|c| DeltaCursor::decode(c).ok())
            .map(|c| c.watermark_us);
        let new = current.map_or(target, |c| c.min(target));
        deps.control
            .save_cursor(
                &run.entity,
                JobKind::Delta,
                &holder,
                now_us(),
                60_000_000,
                &DeltaCursor::new(new).encode(),
            )
            .await?;
        Ok::<Micros, StoreError>(new)
    }
    .await;
    deps.control
        .release_lease(&run.entity, JobKind::Delta, &holder)
        .await?;
    Ok(Some(result?))
}

/// Queue one targeted sync per ID (500 a batch), `reason` in each message.
pub(super) async fn queue_targeted(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    ids: &[String],
    reason: &str,
) -> Result<u64, StepError> {
    let now = now_us();
    let mut queued = 0;
    for chunk in ids.chunks(500) {
        let bodies: Vec<String> = chunk
            .iter()
            .map(|id| {
                QueueEnvelope {
                    v: ENVELOPE_VERSION,
                    kind: MessageKind::Targeted,
                    entity: run.entity.clone(),
                    id: id.clone(),
                    event_id: None,
                    action: None,
                    reason: Some(reason.to_owned()),
                    received_at: now,
                }
                .to_body()
            })
            .collect();
        let failed = deps.queue.send_batch(&bodies).await?;
        if !failed.is_empty() {
            return Err(StepError::Store(StoreError::Decode {
                key: format!(
                    "queue ({} of {} targeted messages)",
                    failed.len(),
                    bodies.len()
                ),
                message: "refused by the queue; the step is retried (duplicates are harmless)"
                    .into(),
            }));
        }
        queued += bodies.len() as u64;
    }
    Ok(queued)
}
