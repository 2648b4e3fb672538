//! Finish (success or failure): the run's summary recorded, its objects removed, its lease
//! released.

use super::wire::*;
use super::{ReconcileDeps, ReconcileOptions, StepError};
use crate::core::timefmt::now_us;
use crate::ports::{JobKind, RunRecord};

/// Record the run's summary, remove its objects and release the lease. The summary is returned
/// for the caller to log and publish (`RunSummary::{log, metrics}`).
pub async fn finish(
    deps: &ReconcileDeps<'_>,
    input: &FinishInput,
    opts: &ReconcileOptions,
) -> Result<RunSummary, StepError> {
    let run = &input.run;
    let now = now_us();
    let status = if input.error.is_some() {
        "failed"
    } else if let Some(a) = &input.approval {
        if a == "rejected" {
            "approval_rejected"
        } else {
            "approval_expired"
        }
    } else {
        match input.guard.as_ref().map(|g| &g.decision) {
            Some(Decision::Blocked { .. }) => "guard_blocked",
            Some(Decision::NeedsApproval { .. }) if !run.approved => "awaiting_approval",
            Some(Decision::ReportOnly { .. }) => "report_only",
            _ => "succeeded",
        }
    };
    let apply = input.apply.clone().unwrap_or_default();
    let summary = RunSummary {
        entity: run.entity.clone(),
        run_id: run.run_id.clone(),
        status: status.into(),
        source_count: input.diff.as_ref().map(|d| d.source.ids),
        destination_count: input.diff.as_ref().map(|d| d.destination.ids),
        deleted: apply.deleted,
        missed: input
            .diff
            .as_ref()
            .map_or(0, |d| d.to_fetch.pairs.saturating_sub(apply.suppressed)),
        stale: input.diff.as_ref().map_or(0, |d| d.stale.pairs),
        queued: apply.queued,
        suppressed: apply.suppressed,
        guard: input.guard.as_ref().map(|g| g.decision.clone()),
        recent: apply
            .recent
            .max(input.guard.as_ref().map_or(0, |g| g.recent)),
        duration_ms: ((now - run.started_us).max(0) / 1000) as u64,
        rejected: input.source.as_ref().map_or(0, |s| s.rejected),
        rejected_ids: input
            .source
            .as_ref()
            .map(|s| s.rejected_ids.clone())
            .unwrap_or_default(),
        destination_newer: input.diff.as_ref().map_or(0, |d| d.destination_newer),
        regressions: apply.regress.as_ref().map_or(0, |r| r.regressions),
        regressed: apply.regress.as_ref().map_or(0, |r| r.regressed),
    };
    let mut detail = serde_json::to_value(&summary).unwrap_or_default();
    if let Some(e) = &input.error {
        detail["error"] = e.clone();
    }
    if let Some(a) = &input.approval {
        detail["approval"] = a.clone().into();
    }
    deps.control
        .put_run(&RunRecord {
            entity: run.entity.clone(),
            kind: JobKind::Reconcile,
            run_id: run.run_id.clone(),
            started_us: run.started_us,
            finished_us: Some(now),
            status: status.into(),
            summary: detail.to_string(),
        })
        .await?;
    deps.spill
        .delete_prefix(&format!("{}/", run.prefix(opts)))
        .await?;
    deps.control
        .release_lease(&run.entity, JobKind::Reconcile, &run.run_id)
        .await?;
    Ok(summary)
}
