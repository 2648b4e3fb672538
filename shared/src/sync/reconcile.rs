//! Reconciliation, step by step: each step is one Lambda invocation of the state machine
//! (`infra/reconcile.asl.json`), and `syncctl reconcile` runs the same steps in a row locally.
//! Steps take and return the small wire structs below (counts and keys, never ID sets: a state
//! stays far under Step Functions' 256 KB); the ID sets live in the spill store as sorted runs
//! (`crate::setdiff`).
//!
//! Layout of a run's objects: `<prefix>/<entity>/<run_id>/{source, dest/<shard>, diff/{delete,
//! fetch, stale}}/NNNNNN.run`.
//!
//! Safety (I4): deletions happen only in `apply`, only when `guard` allowed them (or a person
//! approved), each candidate confirmed again right then by a JSON 404 from `get_by_id`, and each
//! soft delete conditional on the record's last sync being before the listing started (a
//! record created or synced during the run is never deleted).

use crate::config::Config;
use crate::core::cursor::DeltaCursor;
use crate::core::timefmt::now_us;
use crate::error::{SourceError, StoreError};
use crate::model::{DeleteOutcome, ID_SHARDS, Micros, Strategy};
use crate::ports::{
    ControlStore, Executions, JobKind, LeaseOutcome, Queue, RecordStore, RunRecord, SourceApi,
    SpillStore,
};
use crate::setdiff::{
    DiffOutputs, DiffSummary, MergeOptions, SetDiffError, RunReader, RunWriter, SortedRunWriter,
    diff_with, list_runs,
};
use crate::wire::{ENVELOPE_VERSION, MessageKind, QueueEnvelope};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Wire version of the step structs.
pub const STEP_VERSION: u32 = 1;

/// One reconciliation run of one entity, carried through every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    pub v: u32,
    pub entity: String,
    pub run_id: String,
    /// When the run (and so the source listing) started: the evidence time of its deletions.
    pub started_us: Micros,
    /// Everything but the deletions and the repairs.
    #[serde(default)]
    pub report_only: bool,
    /// Deletions over the guard's thresholds were approved up front (a re-run with override).
    #[serde(default)]
    pub approved: bool,
    /// The destination index's shards (the Map state iterates them).
    pub shards: Vec<u16>,
}

impl RunRef {
    fn prefix(&self, opts: &ReconcileOptions) -> String {
        format!(
            "{}/{}/{}",
            opts.spill_prefix.trim_end_matches('/'),
            self.entity,
            self.run_id
        )
    }
}

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Key prefix of every run's objects in the spill store.
    pub spill_prefix: String,
    /// Pairs per sorted run (the Source step's memory bound: about 40 bytes a pair).
    pub run_size: usize,
    /// Pairs per object of the diff's lists.
    pub chunk_size: usize,
    /// The reconciliation lease; every step renews it.
    pub lease_ttl_us: Micros,
    /// The lease while a run waits for approval (`request_approval` renews it this long): the
    /// approval's timeout and a margin, so that no scheduled run takes the entity meanwhile.
    pub approval_lease_ttl_us: Micros,
    /// Deletions above this share of the destination need approval.
    pub max_delete_share: f64,
    /// Deletions above this count need approval.
    pub max_delete_count: u64,
    /// The guard confirms at most this many candidates with `get_by_id`; more need approval.
    pub max_confirmations: u64,
    /// Above this many records to fetch or refresh, rewind the delta cursor instead of
    /// queueing a message for each.
    pub targeted_limit: u64,
    /// Source calls and deletes in flight.
    pub concurrency: usize,
    /// The Source step stops (resumable) at this instant: the invocation's deadline less a margin.
    pub stop_at: Option<Instant>,
    /// Negative control for tests: delete on absence, without confirming by `get_by_id`.
    pub confirm_deletes: bool,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            spill_prefix: "reconcile".into(),
            run_size: 1_000_000,
            chunk_size: 100_000,
            lease_ttl_us: 2 * 3600 * 1_000_000,
            approval_lease_ttl_us: 25 * 3600 * 1_000_000,
            max_delete_share: 0.05,
            max_delete_count: 1_000,
            max_confirmations: 200,
            targeted_limit: 10_000,
            concurrency: 8,
            stop_at: None,
            confirm_deletes: true,
        }
    }
}

/// What a step needs.
pub struct ReconcileDeps<'a> {
    pub config: &'a Config,
    pub source: &'a dyn SourceApi,
    pub records: &'a dyn RecordStore,
    pub control: &'a dyn ControlStore,
    pub spill: &'a dyn SpillStore,
    pub queue: &'a dyn Queue,
}

/// Why a step failed (the state machine retries retryable ones, then takes its failure path).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("unknown entity `{0}`")]
    UnknownEntity(String),
    #[error("bad step input: {0}")]
    BadInput(String),
    /// This run no longer holds the entity's reconciliation lease.
    #[error("reconciliation lease of `{entity}` lost to another run")]
    LeaseLost { entity: String },
    /// Delta sync holds the entity's lease; the cursor rewind waits for it.
    #[error("delta sync of `{0}` is running; retry the step later")]
    DeltaBusy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spill(#[from] SetDiffError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl StepError {
    /// The error name the state machine's Retry and Catch match on.
    pub fn error_type(&self) -> &'static str {
        match self {
            StepError::UnknownEntity(_) | StepError::BadInput(_) => "Reconcile.BadInput",
            StepError::LeaseLost { .. } => "Reconcile.LeaseLost",
            StepError::DeltaBusy(_) => "Reconcile.Retryable",
            StepError::Store(e) if e.is_retryable() => "Reconcile.Retryable",
            StepError::Spill(e) if e.is_retryable() => "Reconcile.Retryable",
            StepError::Source(e) if e.is_retryable() => "Reconcile.Retryable",
            _ => "Reconcile.Failed",
        }
    }
}

fn lease_err(entity: &str) -> impl Fn(StoreError) -> StepError + '_ {
    move |e| match e {
        StoreError::LeaseLost { .. } => StepError::LeaseLost {
            entity: entity.to_owned(),
        },
        other => StepError::Store(other),
    }
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

// ---------------------------------------------------------------------------------------------
// 1. plan
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    /// One entity, or every configured one.
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default)]
    pub report_only: bool,
    /// Approve deletions over the guard's thresholds up front (after reading a blocked run's
    /// report). The guard's hard conditions (failed or empty listing) still hold.
    #[serde(default)]
    pub approve_deletions: bool,
    /// The state machine's execution name: run IDs derive from it, so that a retried Plan
    /// renews its own leases instead of finding them held.
    #[serde(default)]
    pub execution: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub entity: String,
    pub holder: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOutput {
    pub runs: Vec<RunRef>,
    pub skipped: Vec<Skipped>,
}

/// Take each entity's reconciliation lease and record a run; entities another run holds are
/// skipped (and say so).
pub async fn plan(
    deps: &ReconcileDeps<'_>,
    input: &PlanInput,
    opts: &ReconcileOptions,
) -> Result<PlanOutput, StepError> {
    let entities = deps
        .config
        .entity_names(input.entity.as_deref())
        .map_err(StepError::UnknownEntity)?;
    let mut out = PlanOutput {
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    for entity in entities {
        let started_us = now_us();
        let run_id = match &input.execution {
            Some(x) => format!("rec-{x}-{entity}"),
            None => format!("rec-{}", uuid::Uuid::new_v4().simple()),
        };
        match deps
            .control
            .acquire_lease(
                &entity,
                JobKind::Reconcile,
                &run_id,
                started_us,
                opts.lease_ttl_us,
            )
            .await?
        {
            LeaseOutcome::Held { holder, .. } => {
                tracing::info!(entity = %entity, holder = %holder, "reconciliation already running; skipped");
                out.skipped.push(Skipped { entity, holder });
                continue;
            }
            LeaseOutcome::Acquired { .. } => {}
        }
        deps.control
            .put_run(&RunRecord {
                entity: entity.clone(),
                kind: JobKind::Reconcile,
                run_id: run_id.clone(),
                started_us,
                finished_us: None,
                status: "running".into(),
                summary: serde_json::json!({"report_only": input.report_only}).to_string(),
            })
            .await?;
        out.runs.push(RunRef {
            v: STEP_VERSION,
            entity,
            run_id,
            started_us,
            report_only: input.report_only,
            approved: input.approve_deletions,
            shards: (0..ID_SHARDS).collect(),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 2. source
// ---------------------------------------------------------------------------------------------

/// Where the source listing is; passed back into the next Source invocation until `done`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// Continue the listing after this token (`IdPage::resume`).
    #[serde(default)]
    pub resume: Option<String>,
    /// Index of the next run object.
    pub next_run: u32,
    pub pairs: u64,
    pub pages: u64,
    pub invocations: u32,
    pub done: bool,
    /// The listing reached its end without an error.
    pub ended_normally: bool,
    /// The source's own total (the last page's), when it reports one.
    #[serde(default)]
    pub total_count: Option<u64>,
    /// Why the listing did not end normally.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInput {
    pub run: RunRef,
    #[serde(default)]
    pub progress: Option<SourceProgress>,
}

/// Stream the source's `(id, version)` pairs into sorted runs, until the listing ends or
/// `stop_at` (then resumable from `progress`). A failing listing ends the step with
/// `ended_normally = false`: the guard then deletes nothing, repairs still apply.
pub async fn source(
    deps: &ReconcileDeps<'_>,
    input: &SourceInput,
    opts: &ReconcileOptions,
) -> Result<SourceProgress, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "source").await?;
    let mut p = input.progress.clone().unwrap_or_default();
    if p.done {
        return Ok(p);
    }
    p.invocations += 1;
    let prefix = format!("{}/source", run.prefix(opts));
    let mut writer = RunWriter::new(deps.spill, &prefix, opts.run_size)?.starting_at(p.next_run);
    let mut stream = deps
        .source
        .stream_ids_from(&run.entity, p.resume.as_deref());
    // Pairs pushed since the last token we may resume from (all pushed ones are flushed below).
    let mut resume = p.resume.clone();
    let mut stopped = false;
    let pages_before = p.pages;
    loop {
        // Every invocation reads at least one page, so that a run always progresses.
        if p.pages > pages_before && opts.stop_at.is_some_and(|t| Instant::now() >= t) {
            stopped = true;
            break;
        }
        match stream.next().await {
            None => {
                p.done = true;
                p.ended_normally = true;
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(entity = %run.entity, error = %e, "source listing failed; no deletions this run");
                p.done = true;
                p.ended_normally = false;
                p.error = Some(e.to_string());
                break;
            }
            Some(Ok(page)) => {
                writer.push_all(&page.ids).await?;
                p.pairs += page.ids.len() as u64;
                p.pages += 1;
                if page.total_count.is_some() {
                    p.total_count = page.total_count;
                }
                resume = page.resume;
            }
        }
    }
    drop(stream);
    let written = writer.finish().await?;
    p.next_run = written.next_index;
    if stopped {
        if resume.is_none() {
            // The page read last was the listing's last: no token follows the end.
            p.done = true;
            p.ended_normally = true;
        }
        p.resume = resume;
    }
    Ok(p)
}

/// A listing that needs more Source invocations than one execution should hold (Standard
/// workflows stop at 25,000 history events) continues in a new execution of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueInput {
    pub run: RunRef,
    pub progress: SourceProgress,
    /// `$$.StateMachine.Id`.
    pub state_machine: String,
    /// `$$.Execution.Id`, recorded in the new execution's input.
    #[serde(default)]
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueOutput {
    /// The new execution's ARN.
    pub execution: String,
}

/// Start the execution that continues this run (same run ID, same lease, the listing's
/// progress), named from the run and the invocation count so that a retried step starts
/// nothing twice. The lease is renewed, not released.
pub async fn continue_in_new_execution(
    deps: &ReconcileDeps<'_>,
    executions: &dyn Executions,
    input: &ContinueInput,
    opts: &ReconcileOptions,
) -> Result<ContinueOutput, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "continue").await?;
    let hash = xxhash_rust::xxh3::xxh3_64(run.run_id.as_bytes());
    let name = format!("rec-{hash:016x}-{}", input.progress.invocations);
    let mut new_input = serde_json::json!({
        "resume": {"run": run, "progress": input.progress},
    });
    if let Some(p) = &input.parent {
        new_input["AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID"] = p.clone().into();
    }
    let execution = executions
        .start(&input.state_machine, &name, &new_input)
        .await?;
    tracing::info!(entity = %run.entity, run_id = %run.run_id, execution = %execution, "reconciliation continues in a new execution");
    Ok(ContinueOutput { execution })
}

// ---------------------------------------------------------------------------------------------
// 3. destination
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationInput {
    pub run: RunRef,
    pub shard: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationOutput {
    pub shard: u16,
    pub pairs: u64,
    pub objects: u32,
}

/// One shard of the destination's live-ID index, already sorted, into runs.
pub async fn destination(
    deps: &ReconcileDeps<'_>,
    input: &DestinationInput,
    opts: &ReconcileOptions,
) -> Result<DestinationOutput, StepError> {
    let run = &input.run;
    if input.shard >= ID_SHARDS {
        return Err(StepError::BadInput(format!(
            "shard {} (there are {ID_SHARDS})",
            input.shard
        )));
    }
    renew(deps, run, opts, "destination").await?;
    let prefix = format!("{}/dest/{:02}", run.prefix(opts), input.shard);
    let mut writer = SortedRunWriter::new(deps.spill, &prefix, opts.run_size)?;
    let mut after: Option<String> = None;
    loop {
        let page = deps
            .records
            .list_live_ids(&run.entity, input.shard, after.as_deref(), 1_000)
            .await?;
        writer.push_all(&page.items).await?;
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    let w = writer.finish().await?;
    Ok(DestinationOutput {
        shard: input.shard,
        pairs: w.pairs,
        objects: w.next_index,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. diff
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffInput {
    pub run: RunRef,
}

/// Merge every source run against every destination run; three lists out, counts back.
pub async fn diff_step(
    deps: &ReconcileDeps<'_>,
    input: &DiffInput,
    opts: &ReconcileOptions,
) -> Result<DiffSummary, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "diff").await?;
    let base = run.prefix(opts);
    // Each source run is sorted on its own; each shard's runs are one sorted sequence.
    let source_runs: Vec<Vec<String>> = list_runs(deps.spill, &format!("{base}/source"))
        .await?
        .into_iter()
        .map(|k| vec![k])
        .collect();
    let mut dest_runs: Vec<Vec<String>> = Vec::new();
    for shard in &run.shards {
        let keys = list_runs(deps.spill, &format!("{base}/dest/{shard:02}")).await?;
        if !keys.is_empty() {
            dest_runs.push(keys);
        }
    }
    // A retried diff starts its outputs afresh.
    deps.spill.delete_prefix(&format!("{base}/diff/")).await?;
    let outputs = DiffOutputs {
        to_delete: format!("{base}/diff/delete"),
        to_fetch: format!("{base}/diff/fetch"),
        stale: format!("{base}/diff/stale"),
        chunk_size: opts.chunk_size,
    };
    let merge = MergeOptions::beside(&outputs);
    Ok(diff_with(deps.spill, &source_runs, &dest_runs, &outputs, &merge).await?)
}

// ---------------------------------------------------------------------------------------------
// 5. guard
// ---------------------------------------------------------------------------------------------

/// What may be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Delete the confirmed candidates.
    Delete,
    /// Nothing to delete.
    Nothing,
    /// Delete nothing this run (the listing cannot be trusted).
    Blocked { reason: String },
    /// Over a threshold: wait for a person (or a re-run with `approve_deletions`).
    NeedsApproval { reason: String },
    /// Report-only run: what the decision would have been.
    ReportOnly { would: Box<Decision> },
}

impl Decision {
    pub fn tripped(&self) -> bool {
        match self {
            Decision::Blocked { .. } | Decision::NeedsApproval { .. } => true,
            Decision::ReportOnly { would } => would.tripped(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardInput {
    pub run: RunRef,
    pub source: SourceProgress,
    pub diff: DiffSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardOutput {
    pub decision: Decision,
    pub candidates: u64,
    /// Candidates checked with `get_by_id` (a sample of at most `max_confirmations`).
    pub checked: u64,
    /// Checked candidates the source still has: the listing missed them.
    pub alive: u64,
}

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
        checked: 0,
        alive: 0,
    };
    let blocked = |reason: String| Decision::Blocked { reason };
    let decision = if !src.ended_normally {
        blocked(format!(
            "the source listing did not end normally: {}",
            src.error.as_deref().unwrap_or("stopped early")
        ))
    } else if d.source.ids == 0 && d.destination.ids > 0 {
        blocked(format!(
            "the source listing is empty while the destination holds {} records",
            d.destination.ids
        ))
    } else if let Some(total) = src.total_count.filter(|t| d.source.ids < *t) {
        blocked(format!(
            "the listing returned {} IDs but the source reports {total}",
            d.source.ids
        ))
    } else if candidates == 0 {
        Decision::Nothing
    } else if !opts.confirm_deletes {
        Decision::Delete
    } else {
        // Confirm a sample (the first candidates in ID order) with the source.
        let keys = d.to_delete.keys();
        let sample = read_ids(deps.spill, &keys, opts.max_confirmations as usize).await?;
        out.checked = sample.len() as u64;
        let alive = count_alive(deps.source, &run.entity, &sample, opts.concurrency).await?;
        out.alive = alive.len() as u64;
        let share = candidates as f64 / d.destination.ids.max(1) as f64;
        if !alive.is_empty() {
            queue_targeted(
                deps,
                run,
                &alive,
                "reconcile: listed as gone, source has it",
            )
            .await?;
            blocked(format!(
                "{} of {} checked candidates still exist at the source: the listing missed them",
                alive.len(),
                sample.len()
            ))
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
        crate::telemetry::publish(&crate::telemetry::emf(
            &[],
            &[("ReconcileGuardTripped", 1.0, "Count")],
        ));
    }
    Ok(out)
}

/// At most `limit` IDs from the lists `keys`, in order.
async fn read_ids(
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

/// The IDs the source still has: those `get_by_id` answers with the record. A JSON 404 means
/// gone; any error fails the step.
async fn count_alive(
    source: &dyn SourceApi,
    entity: &str,
    ids: &[String],
    concurrency: usize,
) -> Result<Vec<String>, SourceError> {
    let results: Vec<Result<Option<String>, SourceError>> = futures::stream::iter(ids)
        .map(|id| async move { Ok(source.get_by_id(entity, id).await?.map(|_| id.clone())) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut alive = Vec::new();
    for r in results {
        if let Some(id) = r? {
            alive.push(id);
        }
    }
    Ok(alive)
}

async fn queue_targeted(
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
                serde_json::to_string(&QueueEnvelope {
                    v: ENVELOPE_VERSION,
                    kind: MessageKind::Targeted,
                    entity: run.entity.clone(),
                    id: id.clone(),
                    event_id: None,
                    action: None,
                    reason: Some(reason.to_owned()),
                    received_at: now,
                })
                .expect("an envelope serialises")
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

// ---------------------------------------------------------------------------------------------
// 5b. request approval (the state machine waits on its task token)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub run: RunRef,
    /// Step Functions' task token (`$$.Task.Token`): `syncctl reconcile approve` sends it back.
    pub token: String,
    pub guard: GuardOutput,
}

/// Record that the run waits for approval (the token in its run history), log it and raise
/// the metric an alarm watches. The state machine's `TimeoutSeconds` is the approval's expiry.
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
    crate::telemetry::publish(&crate::telemetry::emf(
        &[],
        &[("ReconcileAwaitingApproval", 1.0, "Count")],
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. apply
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyInput {
    pub run: RunRef,
    pub diff: DiffSummary,
    pub guard: GuardOutput,
    /// Set by the approval path: a person approved this run's deletions.
    #[serde(default)]
    pub approved: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutput {
    pub deleted: u64,
    /// Candidates not deleted: already deleted, or synced since the listing started.
    pub delete_skipped: u64,
    /// Candidates the source still had when re-checked (queued for a targeted sync).
    pub alive: u64,
    /// Targeted syncs queued for missed and stale records.
    pub queued: u64,
    /// Instead of queueing (over `targeted_limit`): the delta cursor rewound to here.
    #[serde(default)]
    pub rewound_to_us: Option<Micros>,
}

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
        out.rewound_to_us = Some(rewind_delta(deps, run, input).await?);
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
    let alive = if opts.confirm_deletes {
        count_alive(deps.source, &run.entity, ids, opts.concurrency).await?
    } else {
        Vec::new()
    };
    if !alive.is_empty() {
        out.alive += alive.len() as u64;
        queue_targeted(
            deps,
            run,
            &alive,
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
/// sync re-reads them (cheaper than one message each when there are many).
async fn rewind_delta(
    deps: &ReconcileDeps<'_>,
    run: &RunRef,
    input: &ApplyInput,
) -> Result<Micros, StepError> {
    let mut oldest = Micros::MAX;
    for list in [&input.diff.to_fetch, &input.diff.stale] {
        for key in list.keys() {
            let mut r = RunReader::open(deps.spill, &key).await?;
            while let Some((_, v)) = r.next().await? {
                oldest = oldest.min(v);
            }
        }
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
    Ok(result?)
}

// ---------------------------------------------------------------------------------------------
// 7. finish (success or failure)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishInput {
    pub run: RunRef,
    #[serde(default)]
    pub source: Option<SourceProgress>,
    #[serde(default)]
    pub diff: Option<DiffSummary>,
    #[serde(default)]
    pub guard: Option<GuardOutput>,
    #[serde(default)]
    pub apply: Option<ApplyOutput>,
    /// The failure path's error (Step Functions' Catch output: `Error` and `Cause`).
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    /// Why no deletion happened when approval was asked for and did not come.
    #[serde(default)]
    pub approval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub entity: String,
    pub run_id: String,
    pub status: String,
    pub source_count: Option<u64>,
    pub destination_count: Option<u64>,
    pub deleted: u64,
    pub missed: u64,
    pub stale: u64,
    pub queued: u64,
    pub guard: Option<Decision>,
    pub duration_ms: u64,
}

/// Record the run's summary, publish its metrics, remove its objects and release the lease.
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
        missed: input.diff.as_ref().map_or(0, |d| d.to_fetch.pairs),
        stale: input.diff.as_ref().map_or(0, |d| d.stale.pairs),
        queued: apply.queued,
        guard: input.guard.as_ref().map(|g| g.decision.clone()),
        duration_ms: ((now - run.started_us).max(0) / 1000) as u64,
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
    crate::telemetry::reconcile_run(&summary);
    deps.spill
        .delete_prefix(&format!("{}/", run.prefix(opts)))
        .await?;
    deps.control
        .release_lease(&run.entity, JobKind::Reconcile, &run.run_id)
        .await?;
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// every step in a row (syncctl reconcile, tests)
// ---------------------------------------------------------------------------------------------

/// Run every step in order, as the state machine does, without the approval wait: a run whose
/// deletions need approval finishes as `awaiting_approval` (re-run with `approve_deletions`).
/// A step's error runs that run's failure path (`finish` with the error); the other runs go on,
/// and the first error is returned at the end.
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
                let fail = FinishInput {
                    run: run.clone(),
                    source: None,
                    diff: None,
                    guard: None,
                    apply: None,
                    error: Some(
                        serde_json::json!({"Error": e.error_type(), "Cause": e.to_string()}),
                    ),
                    approval: None,
                };
                tracing::error!(entity = %run.entity, error = %e, "reconciliation failed");
                if let Err(f) = finish(deps, &fail, opts).await {
                    tracing::error!(error = %f, "reconciliation failure path failed");
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
    let a = apply(
        deps,
        &ApplyInput {
            run: run.clone(),
            diff: d.clone(),
            guard: g.clone(),
            approved: false,
        },
        opts,
    )
    .await?;
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
/// Returns the step's output as JSON. The Lambda and the tests' Step Functions proxy both call
/// this, so the state machine runs exactly the code `syncctl reconcile` runs.
pub async fn dispatch(
    deps: &ReconcileDeps<'_>,
    input: serde_json::Value,
    opts: &ReconcileOptions,
) -> Result<serde_json::Value, StepError> {
    dispatch_with(deps, None, input, opts).await
}

/// `dispatch`, with the state machine's executions for the `continue` step.
pub async fn dispatch_with(
    deps: &ReconcileDeps<'_>,
    executions: Option<&dyn Executions>,
    input: serde_json::Value,
    opts: &ReconcileOptions,
) -> Result<serde_json::Value, StepError> {
    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, StepError> {
        serde_json::from_value(v).map_err(|e| StepError::BadInput(e.to_string()))
    }
    fn out<T: Serialize>(t: &T) -> Result<serde_json::Value, StepError> {
        serde_json::to_value(t).map_err(|e| StepError::BadInput(e.to_string()))
    }
    let mut input = input;
    let step = input
        .as_object_mut()
        .and_then(|o| o.remove("step"))
        .and_then(|s| s.as_str().map(str::to_owned))
        .ok_or_else(|| StepError::BadInput("no \"step\" in the input".into()))?;
    match step.as_str() {
        "plan" => out(&plan(deps, &parse(input)?, opts).await?),
        "source" => out(&source(deps, &parse(input)?, opts).await?),
        "destination" => out(&destination(deps, &parse(input)?, opts).await?),
        "diff" => out(&diff_step(deps, &parse(input)?, opts).await?),
        "guard" => out(&guard(deps, &parse(input)?, opts).await?),
        "request_approval" => {
            request_approval(deps, &parse(input)?, opts).await?;
            Ok(serde_json::json!({}))
        }
        "apply" => out(&apply(deps, &parse(input)?, opts).await?),
        "finish" => out(&finish(deps, &parse(input)?, opts).await?),
        "continue" => {
            let ex = executions.ok_or_else(|| {
                StepError::BadInput("no state machine to continue in (run locally)".into())
            })?;
            out(&continue_in_new_execution(deps, ex, &parse(input)?, opts).await?)
        }
        other => Err(StepError::BadInput(format!(
            "unknown step {other:?} (plan, source, destination, diff, guard, request_approval, apply, finish, continue)"
        ))),
    }
}
