//! The state machine's wire schema: each step's input and output, as the Lambda receives and
//! returns them (JSON, `STEP_VERSION`), and [`StepOutput`], what `dispatch` answers. Counts and
//! keys only, never ID sets: a state stays far under Step Functions' 256 KB. Beside the summary
//! types, what a handler logs and publishes for them (`telemetry` knows no step type).

use super::ReconcileOptions;
use crate::model::Micros;
use crate::setdiff::DiffSummary;
use crate::sync::rejected::RejectedRecord;
use crate::telemetry::emf;
use serde::{Deserialize, Serialize};

fn is_zero(n: &u32) -> bool {
    *n == 0
}

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
    /// Where the run's objects are in the spill store.
    pub(super) fn prefix(&self, opts: &ReconcileOptions) -> String {
        format!(
            "{}/{}/{}",
            opts.spill_prefix.trim_end_matches('/'),
            self.entity,
            self.run_id
        )
    }
}

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

/// Where the source listing is; passed back into the next Source invocation until `done`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// Continue the listing after this token (`IdPage::resume`).
    #[serde(default)]
    pub resume: Option<String>,
    /// The token's tag (`core::token`, purpose `reconcile-resume`, bound to the run's entity
    /// and ID): the Source step follows no token it did not sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_sig: Option<String>,
    /// Times the listing started again from the beginning because its token was signed under
    /// another key (the signing secret was rotated during the run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
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
    /// Why the last invocation stopped before the end, when not its stop instant: `budget`
    /// (the shared rate budget had no token for reconciliation in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Invocations in a row the budget let read nothing (`listing::MAX_BUDGET_STOPS` ends the
    /// listing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_stops: u32,
    /// Records the listing took out (`IdPage::rejected`): those with a usable ID are in the
    /// source runs as present (version unknown), the others only counted here.
    #[serde(default)]
    pub rejected: u64,
    /// Of them, those without a usable ID: the guard counts them towards the source's total.
    #[serde(default)]
    pub rejected_unidentified: u64,
    /// The first `sync::rejected::REJECTED_IDS_KEPT` of them, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_ids: Vec<RejectedRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInput {
    pub run: RunRef,
    #[serde(default)]
    pub progress: Option<SourceProgress>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffInput {
    pub run: RunRef,
}

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
    /// Sampled candidates written since the listing started (created or synced by another
    /// strategy meanwhile): not candidates, neither checked nor deleted.
    #[serde(default)]
    pub recent: u64,
    /// Candidates checked with `get_by_id` (a sample of at most `max_confirmations`).
    pub checked: u64,
    /// Checked candidates the source still has: the listing missed them.
    pub alive: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub run: RunRef,
    /// Step Functions' task token (`$$.Task.Token`): `syncctl reconcile approve` sends it back.
    pub token: String,
    pub guard: GuardOutput,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyInput {
    pub run: RunRef,
    pub diff: DiffSummary,
    pub guard: GuardOutput,
    /// Set by the approval path: a person approved this run's deletions.
    #[serde(default)]
    pub approved: bool,
    /// The previous invocation's output, until `done` (the state machine loops on Apply).
    #[serde(default)]
    pub progress: Option<ApplyOutput>,
}

/// Which part of Apply a position is in: the repairs come first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyPhase {
    /// Targeted syncs of the fetch list, then the stale list (or the cursor rewind).
    #[default]
    Repair,
    /// The version regressions of the `newer` list (`regress::repair_regressions`).
    Regress,
    /// The deletions.
    Delete,
}

/// Where a stopped Apply resumes: the phase, the object of its lists taken in order, and how
/// many pairs of that object are done (in the regress phase: the last ID done, `after`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPosition {
    pub phase: ApplyPhase,
    pub object: u32,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
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
    /// Missed records the store holds erased (`syncctl erase`): not queued.
    #[serde(default)]
    pub suppressed: u64,
    /// Instead of queueing (over `targeted_limit`): the delta cursor rewound to here.
    #[serde(default)]
    pub rewound_to_us: Option<Micros>,
    /// Candidates written since the listing started (created or synced by another strategy
    /// meanwhile): neither confirmed nor deleted.
    #[serde(default)]
    pub recent: u64,
    /// Every repair and deletion is done; until then the state machine invokes Apply again
    /// with this output as its `progress`.
    #[serde(default)]
    pub done: bool,
    /// Apply invocations so far.
    #[serde(default)]
    pub invocations: u32,
    /// Where the next invocation resumes (set when one stopped before the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<ApplyPosition>,
    /// What `regress::repair_regressions` found and wrote (absent when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regress: Option<RegressOutput>,
}

/// What [`repair_regressions`](super::regress::repair_regressions) did with the diff's `newer`
/// list (IDs whose stored copy is newer than the source's listing), in ID order: counts of this
/// call, and where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegressOutput {
    /// IDs of the list read.
    pub read: u64,
    /// Of them, stored copies fetched before the listing started (so the listing, sent later,
    /// saw an older version): the source's version went backwards (a restore, a clock fix).
    /// The others were written during the run (a listing older than a write), not counted here.
    pub regressions: u64,
    /// Regressions fetched again with `get_by_id` (entities with `allow_version_regression`).
    pub fetched: u64,
    /// Written as the source's copy (`last_action` `regressed`).
    pub regressed: u64,
    /// Fetched again with the stored copy's content: nothing to write.
    pub unchanged: u64,
    /// Fetched again and left alone: gone or unsyncable at the source (the delete and rejection
    /// paths' business), no longer below the stored copy, a fetch not sent after the stored
    /// copy's, or a stored copy that moved meanwhile.
    pub skipped: u64,
    /// The last ID done: a later call continues after it (`after`).
    #[serde(default)]
    pub last_id: Option<String>,
    /// The list is done (`false`: stopped before `stop_at`; call again after `last_id`).
    pub done: bool,
}

impl RegressOutput {
    /// Add a later call's counts to these (for an apply resumed over several invocations); its
    /// position and `done` replace these.
    pub fn absorb(&mut self, later: RegressOutput) {
        self.read += later.read;
        self.regressions += later.regressions;
        self.fetched += later.fetched;
        self.regressed += later.regressed;
        self.unchanged += later.unchanged;
        self.skipped += later.skipped;
        if later.last_id.is_some() {
            self.last_id = later.last_id;
        }
        self.done = later.done;
    }
}

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

impl FinishInput {
    /// The failure path's input for `run` after the step error `e`, as Step Functions' Catch
    /// builds it (`Error` is the error's type, `Cause` its text).
    pub fn failed(run: RunRef, e: &super::StepError) -> Self {
        FinishInput {
            run,
            source: None,
            diff: None,
            guard: None,
            apply: None,
            error: Some(serde_json::json!({"Error": e.error_type(), "Cause": e.to_string()})),
            approval: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub entity: String,
    pub run_id: String,
    pub status: String,
    pub source_count: Option<u64>,
    pub destination_count: Option<u64>,
    pub deleted: u64,
    /// Records the source has and the destination lacks, less the erased ones (`suppressed`).
    pub missed: u64,
    pub stale: u64,
    pub queued: u64,
    /// Records the source has that are erased here (`syncctl erase`): left erased, not queued.
    #[serde(default)]
    pub suppressed: u64,
    pub guard: Option<Decision>,
    /// Deletion candidates written since the listing started (created or synced by another
    /// strategy meanwhile): not deleted, and no reason to block the run.
    #[serde(default)]
    pub recent: u64,
    pub duration_ms: u64,
    /// Records the source listing held that cannot be synced (never deleted because of it).
    #[serde(default)]
    pub rejected: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_ids: Vec<RejectedRecord>,
    /// IDs the destination holds at a newer version than the source listed (the diff's
    /// `destination_newer`): a listing older than a write, or a source that went backwards.
    #[serde(default)]
    pub destination_newer: u64,
    /// Of them, records whose source version went backwards (`RegressOutput::regressions`).
    #[serde(default)]
    pub regressions: u64,
    /// Regressions written as the source's copy (entities with `allow_version_regression`).
    #[serde(default)]
    pub regressed: u64,
}

/// What `dispatch` answers: one step's output. It serialises as that output alone (each step's
/// wire JSON is its output type's; `request_approval` answers `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StepOutput {
    Plan(PlanOutput),
    Source(SourceProgress),
    Destination(DestinationOutput),
    Diff(DiffSummary),
    Guard(GuardOutput),
    /// The run waits for approval (`request_approval`).
    ApprovalRequested {},
    Apply(ApplyOutput),
    Finish(RunSummary),
    Continue(ContinueOutput),
}

impl StepOutput {
    /// The metrics this output publishes, as one EMF line (`telemetry::publish` sends it): the
    /// guard tripping, a run waiting for approval, a finished run's summary; `None` for the rest.
    pub fn metrics(&self) -> Option<String> {
        match self {
            StepOutput::Guard(g) => g.metrics(),
            StepOutput::ApprovalRequested {} => {
                Some(emf(&[], &[("ReconcileAwaitingApproval", 1.0, "Count")]))
            }
            StepOutput::Finish(s) => Some(s.metrics()),
            _ => None,
        }
    }

    /// Log what the output says for the record: a finished run's summary line.
    pub fn log(&self) {
        if let StepOutput::Finish(s) = self {
            s.log();
        }
    }
}

impl GuardOutput {
    /// `ReconcileGuardTripped` (no dimensions: one alarm watches every entity) when the guard
    /// stopped the deletions or asked for approval.
    pub fn metrics(&self) -> Option<String> {
        self.decision
            .tripped()
            .then(|| emf(&[], &[("ReconcileGuardTripped", 1.0, "Count")]))
    }
}

impl RunSummary {
    /// Log the run's summary (one structured line).
    pub fn log(&self) {
        tracing::info!(
            entity = %self.entity,
            run_id = %self.run_id,
            status = %self.status,
            source_count = ?self.source_count,
            destination_count = ?self.destination_count,
            deleted = self.deleted,
            missed = self.missed,
            stale = self.stale,
            queued = self.queued,
            suppressed = self.suppressed,
            recent = self.recent,
            rejected = self.rejected,
            regressions = self.regressions,
            regressed = self.regressed,
            duration_ms = self.duration_ms,
            "reconciliation finished"
        );
    }

    /// The run's metrics as one EMF line, per entity (`Strategy` = `reconcile`).
    pub fn metrics(&self) -> String {
        let failed = if self.status == "failed" { 1.0 } else { 0.0 };
        emf(
            &[("Entity", &self.entity), ("Strategy", "reconcile")],
            &[
                ("ReconcileMissed", self.missed as f64, "Count"),
                ("ReconcileStale", self.stale as f64, "Count"),
                ("ReconcileDeleted", self.deleted as f64, "Count"),
                ("RecordsRejected", self.rejected as f64, "Count"),
                ("RecordsSuppressed", self.suppressed as f64, "Count"),
                ("ReconcileRegressions", self.regressions as f64, "Count"),
                ("ReconcileRegressed", self.regressed as f64, "Count"),
                ("RunFailed", failed, "Count"),
            ],
        )
    }
}
