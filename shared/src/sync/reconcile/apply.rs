//! Apply: the deletions the guard allowed (each candidate confirmed again, each delete
//! conditional on the listing's start), and targeted syncs for the missed and stale records, or
//! a rewind of the delta cursor when they are too many.

use super::guard::{Alive, count_alive, read_ids};
use super::wire::*;
use super::{ReconcileDeps, ReconcileOptions, StepError, renew};
use crate::core::cursor::DeltaCursor;
use crate::core::timefmt::now_us;
use crate::error::StoreError;
use crate::model::{DeleteOutcome, Micros, Strategy};
use crate::ports::{JobKind, LeaseOutcome};
use crate::setdiff::RunReader;
use crate::wire::{ENVELOPE_VERSION, MessageKind, QueueEnvelope};
use futures::StreamExt;

/// Delete what the guard allowed (each candidate re-confirmed, each delete conditional), queue
/// targeted syncs for the missed and stale records (or rewind the delta cursor when there are
/// too many). Safe to re-run: a second pass finds the deletions done and the queue idempotent.
pub async fn apply(
    deps: &ReconcileDeps<'_>,
    input: &ApplyInput,
    opts: &ReconcileOptions,
) -> Result<ApplyOutput, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "apply").await?;
    let mut out = ApplyOutput::default();
    if run.report_only {
        return Ok(out);
    }
    let may_delete = match &input.guard.decision {
        Decision::Delete => true,
        Decision::NeedsApproval { .. } => input.approved,
        _ => false,
    };
    if may_delete {
        for key in input.diff.to_delete.keys() {
            let mut reader = RunReader::open(deps.spill, &key).await?;
            let mut batch: Vec<String> = Vec::with_capacity(256);
            loop {
                let next = reader.next().await?.map(|(id, _)| id.to_owned());
                let end = next.is_none();
                if let Some(id) = next {
                    batch.push(id);
                }
                if batch.len() >= 256 || (end && !batch.is_empty()) {
                    delete_batch(deps, run, &std::mem::take(&mut batch), opts, &mut out).await?;
                }
                if end {
                    break;
                }
            }
        }
    }
    let repairs = input.diff.to_fetch.pairs + input.diff.stale.pairs;
    if repairs > opts.targeted_limit {
        out.rewound_to_us = rewind_delta(deps, run, input).await?;
    } else if repairs > 0 {
        for (list, reason) in [
            (
                &input.diff.to_fetch,
                "reconcile: missing at the destination",
            ),
            (&input.diff.stale, "reconcile: stale at the destination"),
        ] {
            for key in list.keys() {
                let ids = read_ids(deps.spill, std::slice::from_ref(&key), usize::MAX).await?;
                out.queued += queue_targeted(deps, run, &ids, reason).await?;
            }
        }
    }
    Ok(out)
}

async fn delete_batch(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    ids: &[String],
    opts: &ReconcileOptions,
    out: &mut ApplyOutput,
) -> Result<(), StepError> {
    let alive = if opts.confirms_deletes() {
        count_alive(deps.source, &run.entity, ids, opts.concurrency).await?
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
