//! `syncctl reconcile`: the reconciliation steps (`shared::sync::reconcile::run_all`, the code
//! the state machine's Lambda runs step by step) in a row, on the local store or DynamoDB, with
//! a spill folder for the sorted `(id, version)` runs.
//!
//! - One `run_all` per entity, so that one entity's failure neither stops nor leaves a lease on
//!   the others.
//! - Targeted syncs for missed and stale records go to the local queue (`--queue`, in the same
//!   file `syncctl serve` uses, so a running `serve` fetches them); `--process-queue` drains the
//!   queue through the worker (`shared::sync::worker::process_batch`) right here. On DynamoDB
//!   the queue is in memory and always drained here: `serve` writes to the local store only.
//! - Exit status: non-zero when a run failed (or a queued fetch failed); a run the guard blocked
//!   or that waits for approval exits 0, and says that nothing was deleted and what to do.
//! - `syncctl reconcile approve|reject` (module [`approval`]) answer a state machine run that
//!   waits for approval; the flat `syncctl reconcile [flags]` runs a reconciliation.

use crate::stores::StoreArgs;
use clap::Args;
use serde::Serialize;
use shared::Config;
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::ports::{ControlStore, JobKind, Queue, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::sync::reconcile::{
    Decision, PlanInput, ReconcileDeps, ReconcileOptions, RunSummary, run_all,
};
use shared::sync::worker::{InMessage, WorkerDeps, process_batch};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReconcileArgs {
    /// Answer a state machine run's approval instead of reconciling here.
    #[command(subcommand)]
    pub command: Option<Box<approval::ReconcileCommand>>,
    /// One entity (default: every configured entity, one run each).
    #[arg(long)]
    pub entity: Option<String>,
    /// Run every step but Apply: report what would be deleted and repaired; change nothing.
    #[arg(long)]
    pub report_only: bool,
    /// Approve deletions over the guard's thresholds (after reading a run's report). The guard
    /// still deletes nothing after a failed or empty listing, or when the source still has a
    /// candidate.
    #[arg(long)]
    pub approve_deletions: bool,
    /// Folder of the runs' sorted (id, version) files; each run removes its own at the end.
    #[arg(long, default_value = ".local/spill")]
    pub spill: PathBuf,
    /// The local queue the targeted syncs go to (`syncctl serve`'s worker reads it).
    #[arg(long, default_value = "work")]
    pub queue: String,
    /// Drain the queue through the worker now, in this process (every message in it, not only
    /// this run's), and print how many records were fetched.
    #[arg(long)]
    pub process_queue: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// One entity's run, as printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub entity: String,
    /// `succeeded`, `report_only`, `guard_blocked`, `awaiting_approval`, `failed`, or `skipped`
    /// (another reconciliation of the entity holds its lease).
    pub status: String,
    pub run_id: Option<String>,
    pub source_count: Option<u64>,
    pub destination_count: Option<u64>,
    pub deleted: u64,
    pub missed: u64,
    pub stale: u64,
    /// Targeted syncs queued for the missed and stale records.
    pub queued: u64,
    /// `{"kind": "delete" | "nothing" | "blocked" | "needs_approval" | "report_only", ...}`.
    pub guard: Option<Decision>,
    pub duration_ms: Option<u64>,
    /// Why the run failed.
    pub error: Option<String>,
    /// The holder of the lease, for a skipped run.
    pub held_by: Option<String>,
    /// What to do next, when there is something to do.
    pub next_step: Option<String>,
}

impl RunRow {
    fn from_summary(s: RunSummary) -> RunRow {
        let mut row = RunRow {
            entity: s.entity,
            status: s.status,
            run_id: Some(s.run_id),
            source_count: s.source_count,
            destination_count: s.destination_count,
            deleted: s.deleted,
            missed: s.missed,
            stale: s.stale,
            queued: s.queued,
            guard: s.guard,
            duration_ms: Some(s.duration_ms),
            error: None,
            held_by: None,
            next_step: None,
        };
        row.next_step = row.advice();
        row
    }

    fn empty(entity: &str, status: &str) -> RunRow {
        RunRow {
            entity: entity.to_owned(),
            status: status.to_owned(),
            run_id: None,
            source_count: None,
            destination_count: None,
            deleted: 0,
            missed: 0,
            stale: 0,
            queued: 0,
            guard: None,
            duration_ms: None,
            error: None,
            held_by: None,
            next_step: None,
        }
    }

    pub fn failed(&self) -> bool {
        self.status == "failed"
    }

    /// Whether deletions were held back (blocked, waiting for approval, or report only).
    pub fn nothing_deleted_by_guard(&self) -> bool {
        matches!(
            self.status.as_str(),
            "guard_blocked" | "awaiting_approval" | "report_only"
        )
    }

    /// The guard's reason, when it gave one.
    pub fn guard_reason(&self) -> Option<&str> {
        self.guard.as_ref().and_then(reason)
    }

    fn advice(&self) -> Option<String> {
        let only = format!(" --entity {}", self.entity);
        match self.status.as_str() {
            "awaiting_approval" => Some(format!(
                "Read the counts above (`syncctl reconcile{only} --report-only` shows them again \
                 and changes nothing), then run `syncctl reconcile{only} --approve-deletions` to \
                 delete."
            )),
            "guard_blocked" => Some(format!(
                "Check the source (base URL, credentials, the entity's path), then run \
                 `syncctl reconcile{only}` again.{}",
                if self.queued > 0 {
                    " The missed and stale records were queued all the same."
                } else {
                    ""
                }
            )),
            "report_only" => Some("Report only: nothing queued either.".into()),
            _ => None,
        }
    }
}

/// The reason a decision carries (the inner one of a report-only run).
fn reason(d: &Decision) -> Option<&str> {
    match d {
        Decision::Blocked { reason } | Decision::NeedsApproval { reason } => Some(reason),
        Decision::ReportOnly { would } => reason(would),
        Decision::Delete | Decision::Nothing => None,
    }
}

/// A decision in a few words.
pub fn decision_label(d: &Decision) -> String {
    match d {
        Decision::Delete => "delete".into(),
        Decision::Nothing => "nothing to delete".into(),
        Decision::Blocked { .. } => "blocked".into(),
        Decision::NeedsApproval { .. } => "needs approval".into(),
        Decision::ReportOnly { would } => format!("report only ({})", decision_label(would)),
    }
}

/// What the in-process worker did with the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Drained {
    pub messages: usize,
    pub failed: usize,
    /// Records fetched from the source (`get_by_id`).
    pub fetched: usize,
    pub written: usize,
    pub unchanged: usize,
    pub stale: usize,
    pub deleted: usize,
    pub not_found: usize,
}

/// Everything the command prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub runs: Vec<RunRow>,
    /// Where the targeted syncs went.
    pub queue: String,
    /// The queue drained in this process (`--process-queue`, or always on DynamoDB).
    pub worker: Option<Drained>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut lines = vec![
            [
                "ENTITY", "STATUS", "SOURCE", "DEST", "DELETED", "MISSED", "STALE", "QUEUED",
                "GUARD",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        let n = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
        for r in &self.runs {
            lines.push(vec![
                r.entity.clone(),
                r.status.clone(),
                n(r.source_count),
                n(r.destination_count),
                r.deleted.to_string(),
                r.missed.to_string(),
                r.stale.to_string(),
                r.queued.to_string(),
                r.guard.as_ref().map_or_else(|| "-".into(), decision_label),
            ]);
        }
        let mut out = crate::status::render_table(&lines);
        for r in &self.runs {
            let e = &r.entity;
            if let (Some(d), Some(reason)) = (&r.guard, r.guard_reason()) {
                out.push_str(&format!("{e}: guard {}: {reason}\n", decision_label(d)));
            }
            if let Some(err) = &r.error {
                out.push_str(&format!("{e}: FAILED: {err}\n"));
            }
            if let Some(h) = &r.held_by {
                out.push_str(&format!(
                    "{e}: skipped: another reconciliation ({h}) holds the lease\n"
                ));
            }
            match (r.nothing_deleted_by_guard(), &r.next_step) {
                (true, Some(next)) => out.push_str(&format!("{e}: NOTHING WAS DELETED. {next}\n")),
                (true, None) => out.push_str(&format!("{e}: NOTHING WAS DELETED.\n")),
                (false, Some(next)) => out.push_str(&format!("{e}: {next}\n")),
                (false, None) => {}
            }
        }
        if let Some(w) = &self.worker {
            out.push_str(&format!("worker: {}\n", describe_drained(w)));
        }
        out
    }
}

pub fn describe_drained(w: &Drained) -> String {
    format!(
        "{} messages from the queue, {} records fetched from the source, {} written, {} unchanged, {} stale, {} deleted, {} not found, {} failed",
        w.messages, w.fetched, w.written, w.unchanged, w.stale, w.deleted, w.not_found, w.failed
    )
}

pub async fn run(mut args: ReconcileArgs) -> Result<(), String> {
    if let Some(command) = args.command.take() {
        return approval::run(*command).await;
    }
    let config = Config::load().map_err(|e| e.to_string())?;
    let secret = shared::source::secret_from_env(&config.source.auth).map_err(|e| e.to_string())?;
    let source = SourceClient::new(&config, secret)
        .map_err(|e| e.to_string())?
        .with_budget_in(args.store.budget().await?);
    run_with(&args, &config, &source).await
}

/// The command with its configuration and source given: print, then `Err` (exit non-zero)
/// when a run failed.
pub async fn run_with(
    args: &ReconcileArgs,
    config: &Config,
    source: &dyn SourceApi,
) -> Result<(), String> {
    let report = execute(args, config, source).await?;
    if args.json {
        crate::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    conclude(&report)
}

/// The exit status of a report: `Err` when a run failed or a queued fetch did. A run the guard
/// blocked, or that waits for approval, is not a failure: it did what it should.
pub fn conclude(report: &Report) -> Result<(), String> {
    let failed: Vec<&str> = report
        .runs
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.entity.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "reconciliation failed for {} (recorded in the run history: syncctl status)",
            failed.join(", ")
        ));
    }
    if let Some(w) = report.worker.filter(|w| w.failed > 0) {
        return Err(format!(
            "{} queued fetches failed: they come back after the visibility timeout (syncctl serve, or --process-queue again), and go to the dead letters after 5 receives (syncctl dlq list)",
            w.failed
        ));
    }
    Ok(())
}

/// Open the stores, run the reconciliation of each entity, drain the queue when asked.
pub async fn execute(
    args: &ReconcileArgs,
    config: &Config,
    source: &dyn SourceApi,
) -> Result<Report, String> {
    let entities = config.entity_names(args.entity.as_deref()).map_err(|e| {
        format!(
            "entity {e:?} is not configured in {}",
            config.file.display()
        )
    })?;
    let spill = LocalSpill::new(&args.spill)
        .map_err(|e| format!("spill folder {}: {e}", args.spill.display()))?;
    let queue_options = QueueOptions::default();
    let (records, control, queue, queue_at, drain): (
        Arc<dyn RecordStore>,
        Arc<dyn ControlStore>,
        LocalQueue,
        String,
        bool,
    ) = if args.store.uses_dynamodb() {
        let (r, c) = args.store.open().await?;
        let memory = LocalStore::in_memory().map_err(|e| e.to_string())?;
        (
            r,
            c,
            memory.queue(&args.queue, queue_options.clone()),
            format!(
                "{} (in memory: drained here, since serve writes to the local store only)",
                args.queue
            ),
            true,
        )
    } else {
        let store = Arc::new(args.store.open_local()?);
        let q = store.queue(&args.queue, queue_options.clone());
        (
            store.clone(),
            store,
            q,
            format!("{} in {}", args.queue, args.store.db.display()),
            args.process_queue,
        )
    };
    let deps = ReconcileDeps {
        config,
        source,
        records: records.as_ref(),
        control: control.as_ref(),
        spill: &spill,
        queue: &queue,
    };
    let input = PlanInput {
        entity: None,
        report_only: args.report_only,
        approve_deletions: args.approve_deletions,
        ..PlanInput::default()
    };
    let mut runs = reconcile_entities(&deps, &entities, &input, &ReconcileOptions::default()).await;
    let worker = if drain {
        let wdeps = WorkerDeps {
            source,
            records: records.as_ref(),
            control: control.as_ref(),
        };
        Some(drain_queue(&queue, &wdeps).await?)
    } else {
        let waiting: u64 = runs.iter().map(|r| r.queued).sum();
        if waiting > 0 {
            for r in runs.iter_mut().filter(|r| r.queued > 0) {
                let tail = format!(
                    "{} targeted syncs wait in queue {queue_at}: a running `syncctl serve` fetches them, or add --process-queue.",
                    r.queued
                );
                r.next_step = Some(match r.next_step.take() {
                    Some(s) => format!("{s} {tail}"),
                    None => tail,
                });
            }
        }
        None
    };
    Ok(Report {
        runs,
        queue: queue_at,
        worker,
    })
}

/// One `run_all` per entity (`input.entity` is ignored): a failure is that entity's row, and
/// the others still run.
pub async fn reconcile_entities(
    deps: &ReconcileDeps<'_>,
    entities: &[String],
    input: &PlanInput,
    opts: &ReconcileOptions,
) -> Vec<RunRow> {
    let mut rows = Vec::new();
    for entity in entities {
        let one = PlanInput {
            entity: Some(entity.clone()),
            ..input.clone()
        };
        let row = match run_all(deps, &one, opts).await {
            Ok(mut summaries) if !summaries.is_empty() => {
                let summary = summaries.remove(0);
                summary.log();
                RunRow::from_summary(summary)
            }
            Ok(_) => {
                let mut row = RunRow::empty(entity, "skipped");
                row.held_by = deps
                    .control
                    .job_state(entity, JobKind::Reconcile)
                    .await
                    .ok()
                    .and_then(|s| s.lease_holder);
                row.next_step = Some("run it again once the other reconciliation has finished (syncctl status shows the lease).".into());
                row
            }
            Err(e) => {
                let mut row = RunRow::empty(entity, "failed");
                row.error = Some(e.to_string());
                // The failure path recorded the run: its ID.
                row.run_id = deps
                    .control
                    .list_runs(entity, JobKind::Reconcile, 1)
                    .await
                    .ok()
                    .and_then(|r| r.into_iter().next())
                    .filter(|r| r.status == "failed")
                    .map(|r| r.run_id);
                row
            }
        };
        rows.push(row);
    }
    rows
}

/// Receive and process until the queue shows nothing visible: what succeeded is deleted; what
/// failed comes back after the visibility timeout (for `serve`, or the next drain).
pub async fn drain_queue(queue: &LocalQueue, deps: &WorkerDeps<'_>) -> Result<Drained, String> {
    let options = shared::sync::worker::WorkerOptions::default();
    let mut d = Drained::default();
    loop {
        let got = queue
            .receive(crate::serve::BATCH_SIZE, 0)
            .await
            .map_err(|e| format!("queue {}: {e}", queue.name()))?;
        if got.is_empty() {
            return Ok(d);
        }
        let msgs: Vec<InMessage> = got.iter().map(InMessage::from).collect();
        let r = process_batch(deps, &msgs, &options).await;
        let failed: HashSet<&str> = r.failed.iter().map(String::as_str).collect();
        for m in got
            .iter()
            .filter(|m| !failed.contains(m.message_id.as_str()))
        {
            queue
                .delete(&m.receipt)
                .await
                .map_err(|e| format!("queue {}: {e}", queue.name()))?;
        }
        d.messages += r.messages;
        d.failed += r.failed.len();
        d.fetched += r.get_by_id_calls;
        d.written += r.written;
        d.unchanged += r.unchanged;
        d.stale += r.stale;
        d.deleted += r.deleted;
        d.not_found += r.not_found;
    }
}

pub mod approval;

#[cfg(test)]
mod tests;
