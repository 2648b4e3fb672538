//! The guard: whether this run may delete (I4), and the approval request when a person must
//! decide. Also the confirmation helpers `apply` uses again: a candidate is gone only when the
//! source answers a JSON 404.

use super::apply::queue_targeted;
use super::wire::*;
use super::{ReconcileDeps, ReconcileOptions, StepError, renew};
use crate::error::SourceError;
use crate::ports::{JobKind, RunRecord, SourceApi, SpillStore};
use crate::setdiff::{RunReader, SetDiffError};
use futures::StreamExt;

/// Decide whether this run may delete.
pub async fn guard(
    deps: &ReconcileDeps<'_>,
    input: &GuardInput,
    opts: &ReconcileOptions,
) -> Result<GuardOutput, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "guard").await?;
    let (src, d) = (&input.source, &input.diff);
    let candidates = d.to_delete.pairs;
    let mut out = GuardOutput {
        decision: Decision::Nothing,
        candidates,
        recent: 0,
        checked: 0,
        alive: 0,
    };
    let blocked = |reason: String| Decision::Blocked { reason };
    let decision = if !opts.guards() {
        // A negative control's engine: deletes whatever the listing lacks.
        if candidates == 0 {
            Decision::Nothing
        } else {
            Decision::Delete
        }
    } else if !src.ended_normally {
        blocked(format!(
            "the source listing did not end normally: {}",
            src.error.as_deref().unwrap_or("stopped early")
        ))
    } else if d.source.ids == 0 && d.destination.ids > 0 {
        blocked(format!(
            "the source listing is empty while the destination holds {} records",
            d.destination.ids
        ))
    } else if let Some(total) = src
        .total_count
        .filter(|t| d.source.ids + src.rejected_unidentified < *t)
    {
        let unidentified = match src.rejected_unidentified {
            0 => String::new(),
            n => format!(" (and {n} records without a usable ID)"),
        };
        blocked(format!(
            "the listing returned {} IDs{unidentified} but the source reports {total}",
            d.source.ids
        ))
    } else if candidates == 0 {
        Decision::Nothing
    } else if !opts.confirms_deletes() {
        Decision::Delete
    } else {
        // Confirm a sample (the first candidates in ID order) with the source, less those
        // written since the listing started.
        let keys = d.to_delete.keys();
        let sample = read_ids(deps.spill, &keys, opts.max_confirmations as usize).await?;
        let sampled = sample.len() as u64;
        let sample = drop_recent(deps, run, sample, opts).await?;
        out.recent = sampled - sample.len() as u64;
        out.checked = sample.len() as u64;
        let alive = count_alive(deps.source, &run.entity, &sample, opts.concurrency).await?;
        out.alive = alive.len() as u64;
        // Candidates the source has but cannot sync: the listing's records without a usable
        // ID explain as many (the same records, under an ID that does not read there). Never
        // deleted (`apply` confirms each again); more of them than that, the listing missed some.
        let explained = alive.unsyncable.len() as u64 <= src.rejected_unidentified;
        let missed = alive.found.len() + if explained { 0 } else { alive.unsyncable.len() };
        // What is left to delete: exact when the sample held every candidate.
        let candidates = candidates - out.recent;
        let share = candidates as f64 / d.destination.ids.max(1) as f64;
        if !alive.found.is_empty() {
            queue_targeted(
                deps,
                run,
                &alive.found,
                "reconcile: listed as gone, source has it",
            )
            .await?;
        }
        if missed > 0 {
            blocked(format!(
                "{missed} of {} checked candidates still exist at the source: the listing missed them",
                sample.len()
            ))
        } else if candidates == 0 {
            Decision::Nothing
        } else if candidates > opts.max_confirmations {
            Decision::NeedsApproval {
                reason: format!(
                    "{candidates} deletions, more than the {} the guard confirms one by one",
                    opts.max_confirmations
                ),
            }
        } else if candidates > opts.max_delete_count || share > opts.max_delete_share {
            Decision::NeedsApproval {
                reason: format!(
                    "{candidates} deletions ({:.1}% of {}), over the thresholds ({} or {:.1}%)",
                    share * 100.0,
                    d.destination.ids,
                    opts.max_delete_count,
                    opts.max_delete_share * 100.0
                ),
            }
        } else {
            Decision::Delete
        }
    };
    let decision = match decision {
        Decision::NeedsApproval { .. } if run.approved => Decision::Delete,
        other => other,
    };
    out.decision = if run.report_only {
        Decision::ReportOnly {
            would: Box::new(decision),
        }
    } else {
        decision
    };
    if out.decision.tripped() {
        tracing::warn!(entity = %run.entity, run_id = %run.run_id, decision = ?out.decision, "reconciliation guard tripped: nothing deleted");
    }
    Ok(out)
}

/// Record that the run waits for approval (the token in its run history) and log it; the
/// handler raises the metric an alarm watches ([`StepOutput::metrics`]). The state machine's
/// `TimeoutSeconds` is the approval's expiry.
pub async fn request_approval(
    deps: &ReconcileDeps<'_>,
    input: &ApprovalRequest,
    opts: &ReconcileOptions,
) -> Result<(), StepError> {
    let run = &input.run;
    renew(deps, run, opts, "awaiting_approval").await?;
    let reason = match &input.guard.decision {
        Decision::NeedsApproval { reason } => reason.clone(),
        other => format!("{other:?}"),
    };
    deps.control
        .put_run(&RunRecord {
            entity: run.entity.clone(),
            kind: JobKind::Reconcile,
            run_id: run.run_id.clone(),
            started_us: run.started_us,
            finished_us: None,
            status: "awaiting_approval".into(),
            summary: serde_json::json!({
                "reason": reason,
                "candidates": input.guard.candidates,
                "task_token": input.token,
            })
            .to_string(),
        })
        .await?;
    tracing::warn!(
        entity = %run.entity,
        run_id = %run.run_id,
        reason = %reason,
        "reconciliation deletions wait for approval: syncctl reconcile approve --entity {} --run {}",
        run.entity,
        run.run_id
    );
    Ok(())
}

/// `ids` less those written since the listing started: first stored or synced at or after
/// `run.started_us` (read strongly consistent, `RecordStore::sync_times`). The listing may have
/// passed their position before they existed (a record created and synced by a webhook or delta
/// meanwhile), so their absence from it is no evidence; the next run lists them. IDs the store
/// no longer holds stay (the soft delete finds nothing to do).
pub(super) async fn drop_recent(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    ids: Vec<String>,
    opts: &ReconcileOptions,
) -> Result<Vec<String>, StepError> {
    if !opts.skips_recent_candidates() || ids.is_empty() {
        return Ok(ids);
    }
    let times = deps.records.sync_times(&run.entity, &ids).await?;
    Ok(ids
        .into_iter()
        .filter(|id| {
            !times
                .get(id)
                .is_some_and(|t| t.touched_since(run.started_us))
        })
        .collect())
}

/// At most `limit` IDs from the lists `keys`, in order.
pub(super) async fn read_ids(
    spill: &dyn SpillStore,
    keys: &[String],
    limit: usize,
) -> Result<Vec<String>, SetDiffError> {
    let mut out = Vec::new();
    for k in keys {
        let mut r = RunReader::open(spill, k).await?;
        while out.len() < limit {
            match r.next().await? {
                Some((id, _)) => out.push(id.to_owned()),
                None => break,
            }
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The candidates the source still has, by how it answered `get_by_id`.
#[derive(Debug, Default)]
pub(super) struct Alive {
    /// With the record.
    pub found: Vec<String>,
    /// With one it cannot sync (`SourceError::Rejected`): the source has it, so it is not gone.
    pub unsyncable: Vec<String>,
}

impl Alive {
    pub fn len(&self) -> usize {
        self.found.len() + self.unsyncable.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.found.iter().chain(&self.unsyncable).any(|a| a == id)
    }
}

/// Which of `ids` the source still has. A JSON 404 means gone; any error other than
/// `SourceError::Rejected` fails the step.
pub(super) async fn count_alive(
    source: &dyn SourceApi,
    entity: &str,
    ids: &[String],
    concurrency: usize,
) -> Result<Alive, SourceError> {
    /// How the source answered for one ID: `Some(true)` found, `Some(false)` unsyncable,
    /// `None` gone.
    type Answer = Option<bool>;
    let results: Vec<(&String, Result<Answer, SourceError>)> = futures::stream::iter(ids)
        .map(|id| async move {
            let answer = match source.get_by_id(entity, id).await {
                Ok(found) => Ok(found.map(|_| true)),
                Err(SourceError::Rejected { .. }) => Ok(Some(false)),
                Err(e) => Err(e),
            };
            (id, answer)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut alive = Alive::default();
    for (id, r) in results {
        match r? {
            Some(true) => alive.found.push(id.clone()),
            Some(false) => alive.unsyncable.push(id.clone()),
            None => {}
        }
    }
    Ok(alive)
}
