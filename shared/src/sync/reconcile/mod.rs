//! Reconciliation, step by step: each step is one Lambda invocation of the state machine
//! (`infra/reconcile.asl.json`), and `syncctl reconcile` runs the same steps in a row locally
//! ([`run_all`]). Steps take and return the small wire structs of [`wire`] (counts and keys,
//! never ID sets); the ID sets live in the spill store as sorted runs (`crate::setdiff`).
//!
//! - [`listing`]: plan, source (and continue), destination, diff.
//! - [`guard`]: the guard and the approval request.
//! - [`apply`], [`finish`]: the changes, then the summary and the clean-up.
//! - [`regress`]: records whose source version went backwards (counted; repaired where the
//!   entity opts in).
//! - [`options`], [`error`]: [`ReconcileOptions`] (with `from_env`) and [`StepError`].
//!
//! Layout of a run's objects: `<prefix>/<entity>/<run_id>/{source, dest/<shard>, diff/{delete,
//! fetch, stale}}/NNNNNN.run`.
//!
//! Safety (I4): deletions happen only in `apply`, only when `guard` allowed them (or a person
//! approved), each candidate confirmed again right then by a JSON 404 from `get_by_id`, and each
//! soft delete conditional on the record's last sync being before the listing started (a
//! record created or synced during the run is never deleted).
//!
//! No step publishes metrics: `dispatch` returns a [`StepOutput`] and the Lambda's handler
//! publishes what it carries ([`StepOutput::metrics`]); `run_all`'s callers log its summaries.

pub mod apply;
pub mod error;
pub mod finish;
pub mod guard;
pub mod listing;
pub mod options;
pub mod regress;
pub mod wire;

pub use apply::apply;
pub use error::StepError;
pub use finish::finish;
pub use guard::{guard, request_approval};
pub use listing::{
    MAX_BUDGET_STOPS, continue_in_new_execution, destination, diff_step, plan, source,
};
pub use options::ReconcileOptions;
pub use regress::repair_regressions;
pub use wire::*;

use crate::config::Config;
use crate::core::timefmt::now_us;
use crate::ports::{ControlStore, Executions, JobKind, Queue, RecordStore, SourceApi, SpillStore};
use error::lease_err;

/// What a step needs.
pub struct ReconcileDeps<'a> {
    pub config: &'a Config,
    pub source: &'a dyn SourceApi,
    pub records: &'a dyn RecordStore,
    pub control: &'a dyn ControlStore,
    pub spill: &'a dyn SpillStore,
    pub queue: &'a dyn Queue,
}

/// Renew the run's lease (and record where it is), refusing to go on without it.
async fn renew(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    opts: &ReconcileOptions,
    step: &str,
) -> Result<(), StepError> {
    let ttl = if step == "awaiting_approval" {
        opts.approval_lease_ttl_us.max(opts.lease_ttl_us)
    } else {
        opts.lease_ttl_us
    };
    let state = serde_json::json!({"run_id": run.run_id, "step": step}).to_string();
    deps.control
        .save_cursor(
            &run.entity,
            JobKind::Reconcile,
            &run.run_id,
            now_us(),
            ttl,
            &state,
        )
        .await
        .map_err(lease_err(&run.entity))
}

/// Run every step in order, as the state machine does, without the approval wait: a run whose
/// deletions need approval finishes as `awaiting_approval` (re-run with `approve_deletions`).
/// A step's error runs that run's failure path (`finish` with the error); the other runs go on,
/// and the first error is returned at the end. The caller logs the summaries
/// ([`RunSummary::log`]).
pub async fn run_all(
    deps: &ReconcileDeps<'_>,
    input: &PlanInput,
    opts: &ReconcileOptions,
) -> Result<Vec<RunSummary>, StepError> {
    let planned = plan(deps, input, opts).await?;
    let mut out = Vec::new();
    let mut first_error = None;
    // Every planned run ends (each holds a lease): a failure does not stop the others.
    for run in planned.runs {
        match run_one(deps, &run, opts).await {
            Ok(s) => out.push(s),
            Err(e) => {
                let fail = FinishInput::failed(run.clone(), &e);
                tracing::error!(entity = %run.entity, error = %e, "reconciliation failed");
                // The caller sees the error, not this summary: log it here.
                match finish(deps, &fail, opts).await {
                    Ok(s) => s.log(),
                    Err(f) => tracing::error!(error = %f, "reconciliation failure path failed"),
                }
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

async fn run_one(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    opts: &ReconcileOptions,
) -> Result<RunSummary, StepError> {
    let mut progress = SourceProgress::default();
    while !progress.done {
        progress = source(
            deps,
            &SourceInput {
                run: run.clone(),
                progress: Some(progress),
            },
            opts,
        )
        .await?;
    }
    for &shard in &run.shards {
        destination(
            deps,
            &DestinationInput {
                run: run.clone(),
                shard,
            },
            opts,
        )
        .await?;
    }
    let d = diff_step(deps, &DiffInput { run: run.clone() }, opts).await?;
    let g = guard(
        deps,
        &GuardInput {
            run: run.clone(),
            source: progress.clone(),
            diff: d.clone(),
        },
        opts,
    )
    .await?;
    let mut a = ApplyOutput::default();
    while !a.done {
        a = apply(
            deps,
            &ApplyInput {
                run: run.clone(),
                diff: d.clone(),
                guard: g.clone(),
                approved: false,
                progress: Some(a),
            },
            opts,
        )
        .await?;
    }
    finish(
        deps,
        &FinishInput {
            run: run.clone(),
            source: Some(progress),
            diff: Some(d),
            guard: Some(g),
            apply: Some(a),
            error: None,
            approval: None,
        },
        opts,
    )
    .await
}

/// One Lambda invocation of the state machine: `{"step": "<name>", ...that step's input}`.
/// Returns the step's output ([`StepOutput`]: its JSON is the step's wire output; the handler
/// publishes its metrics). The Lambda and the tests' Step Functions proxy both call this, so the
/// state machine runs exactly the code `syncctl reconcile` runs.
pub async fn dispatch(
    deps: &ReconcileDeps<'_>,
    input: serde_json::Value,
    opts: &ReconcileOptions,
) -> Result<StepOutput, StepError> {
    dispatch_with(deps, None, input, opts).await
}

/// `dispatch`, with the state machine's executions for the `continue` step.
pub async fn dispatch_with(
    deps: &ReconcileDeps<'_>,
    executions: Option<&dyn Executions>,
    input: serde_json::Value,
    opts: &ReconcileOptions,
) -> Result<StepOutput, StepError> {
    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, StepError> {
        serde_json::from_value(v).map_err(|e| StepError::BadInput(e.to_string()))
    }
    let mut input = input;
    let step = input
        .as_object_mut()
        .and_then(|o| o.remove("step"))
        .and_then(|s| s.as_str().map(str::to_owned))
        .ok_or_else(|| StepError::BadInput("no \"step\" in the input".into()))?;
    Ok(match step.as_str() {
        "plan" => StepOutput::Plan(plan(deps, &parse(input)?, opts).await?),
        "source" => StepOutput::Source(source(deps, &parse(input)?, opts).await?),
        "destination" => StepOutput::Destination(destination(deps, &parse(input)?, opts).await?),
        "diff" => StepOutput::Diff(diff_step(deps, &parse(input)?, opts).await?),
        "guard" => StepOutput::Guard(guard(deps, &parse(input)?, opts).await?),
        "request_approval" => {
            request_approval(deps, &parse(input)?, opts).await?;
            StepOutput::ApprovalRequested {}
        }
        "apply" => StepOutput::Apply(apply(deps, &parse(input)?, opts).await?),
        "finish" => StepOutput::Finish(finish(deps, &parse(input)?, opts).await?),
        "continue" => {
            let ex = executions.ok_or_else(|| {
                StepError::BadInput("no state machine to continue in (run locally)".into())
            })?;
            StepOutput::Continue(continue_in_new_execution(deps, ex, &parse(input)?, opts).await?)
        }
        other => {
            return Err(StepError::BadInput(format!(
                "unknown step {other:?} (plan, source, destination, diff, guard, request_approval, apply, finish, continue)"
            )));
        }
    })
}

#[cfg(test)]
mod tests;
