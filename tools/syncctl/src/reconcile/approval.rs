//! `syncctl reconcile approve|reject`: answer the approval a state machine run waits for.
//!
//! The run history (the control table) holds the run: `request_approval` recorded it with the
//! status `awaiting_approval` and the Step Functions task token in its summary. `approve` sends
//! the token back with `{"approved": true, "by": ...}` (SendTaskSuccess: the state machine then
//! applies the deletions); `reject` fails the task with `Reconcile.Rejected` (SendTaskFailure:
//! the run finishes without deleting).
//!
//! - Without `--run`, the entity's newest reconciliation run must be the one waiting: the
//!   state machine holds the entity's lease while it waits, so a newer run means that the
//!   older one no longer waits (an older run still marked waiting is named, for `--run`).
//! - A run `syncctl reconcile` recorded locally has no token: nothing waits on it.
//! - The token approves deletions: it is never printed, and is cut out of the service's error
//!   messages.

use crate::stores::StoreArgs;
use clap::{Args, Subcommand};
use shared::adapters::sfn::{self, REJECTED, StepFunctions};
use shared::core::timefmt::format_rfc3339;
use shared::error::StoreError;
use shared::ports::{ControlStore, JobKind, RunRecord};
use std::fmt;

/// The reconciliation runs looked through (newest first) for `--run`.
pub const RUNS_SEARCHED: usize = 100;

/// `syncctl reconcile`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// Approve the deletions a state machine run waits for: the state machine then applies
    /// them (Step Functions SendTaskSuccess with {"approved": true}).
    Approve(ApproveArgs),
    /// Reject them: the state machine finishes the run without deleting (SendTaskFailure
    /// with the error Reconcile.Rejected).
    Reject(RejectArgs),
}

/// Which run, in which control table, and the Step Functions endpoint.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The entity whose run waits for approval.
    #[arg(long)]
    pub entity: String,
    /// The run (its ID, as `syncctl status` shows it). Default: the entity's newest
    /// reconciliation run, which must be the one waiting.
    #[arg(long = "run", value_name = "RUN_ID")]
    pub run: Option<String>,
    /// Step Functions endpoint, e.g. moto at http://127.0.0.1:5000. Default: the usual AWS
    /// settings (AWS_ENDPOINT_URL_SFN, AWS_ENDPOINT_URL, region, profile). --endpoint-url is
    /// DynamoDB's.
    #[arg(long, value_name = "URL")]
    pub sfn_endpoint_url: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Why (sent as the failure's cause, with who rejected).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// The answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approve { by: String },
    Reject { by: String, reason: Option<String> },
}

impl Answer {
    fn verb(&self) -> &'static str {
        match self {
            Answer::Approve { .. } => "approve",
            Answer::Reject { .. } => "reject",
        }
    }
}

/// A run waiting for approval, with its task token (never shown: `Debug` leaves it out).
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    pub entity: String,
    pub run_id: String,
    pub started_us: i64,
    pub reason: Option<String>,
    pub candidates: Option<u64>,
    token: String,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("entity", &self.entity)
            .field("run_id", &self.run_id)
            .field("started_us", &self.started_us)
            .field("reason", &self.reason)
            .field("candidates", &self.candidates)
            .field("token", &"<not shown>")
            .finish()
    }
}

impl Pending {
    /// The run in a few words: `run R of E (waiting since T: reason; N deletion candidates)`.
    fn describe(&self) -> String {
        let mut why = format!("waiting since {}", format_rfc3339(self.started_us));
        if let Some(r) = &self.reason {
            why.push_str(&format!(": {r}"));
        }
        if let Some(n) = self.candidates {
            why.push_str(&format!("; {n} deletion candidates"));
        }
        format!("run {} of {} ({why})", self.run_id, self.entity)
    }
}

/// Step Functions' two task answers (a fake in the tests).
pub(crate) trait TaskAnswers {
    async fn success(&self, token: &str, output: &serde_json::Value) -> Result<(), StoreError>;
    async fn failure(&self, token: &str, error: &str, cause: &str) -> Result<(), StoreError>;
}

impl TaskAnswers for StepFunctions {
    async fn success(&self, token: &str, output: &serde_json::Value) -> Result<(), StoreError> {
        self.send_task_success(token, output).await
    }
    async fn failure(&self, token: &str, error: &str, cause: &str) -> Result<(), StoreError> {
        self.send_task_failure(token, error, cause).await
    }
}

pub async fn run(command: ReconcileCommand) -> Result<(), String> {
    let by = operator();
    let (target, answer) = match command {
        ReconcileCommand::Approve(a) => (a.target, Answer::Approve { by }),
        ReconcileCommand::Reject(r) => (
            r.target,
            Answer::Reject {
                by,
                reason: r.reason,
            },
        ),
    };
    let (_, control) = target.store.open().await?;
    let pending = find_pending(
        control.as_ref(),
        &target.entity,
        target.run.as_deref(),
        &answer,
    )
    .await?;
    let steps = step_functions(target.sfn_endpoint_url.as_deref()).await;
    let done = send(&steps, &pending, &answer).await?;
    println!("{done}");
    Ok(())
}

/// Who answers: the user's login name, or `syncctl`.
pub fn operator() -> String {
    ["USER", "USERNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "syncctl".into())
}

/// The Step Functions client, at `endpoint` when given. The override is set on the client
/// itself: one on the shared SDK configuration would lose to `AWS_ENDPOINT_URL_SFN`.
async fn step_functions(endpoint: Option<&str>) -> StepFunctions {
    let sdk = shared::adapters::aws::sdk_config().await;
    StepFunctions::new(sfn::sfn_client_at(&sdk, endpoint))
}

/// The run to answer: the named one, or the entity's newest; it must await approval and
/// carry a task token.
pub async fn find_pending(
    control: &dyn ControlStore,
    entity: &str,
    run: Option<&str>,
    answer: &Answer,
) -> Result<Pending, String> {
    let runs = control
        .list_runs(entity, JobKind::Reconcile, RUNS_SEARCHED)
        .await
        .map_err(|e| format!("reading the run history of {entity}: {e}"))?;
    let Some(newest) = runs.first() else {
        return Err(format!(
            "no reconciliation run of {entity} is recorded in this control table, so none \
             awaits approval (check --entity, and the table: --dynamodb, --control-table)"
        ));
    };
    let rec = match run {
        Some(id) => runs.iter().find(|r| r.run_id == id).ok_or_else(|| {
            format!(
                "run {id} is not among the last {} reconciliation runs of {entity} (the newest \
                 is {}, {}; `syncctl status --runs N` lists them)",
                runs.len(),
                newest.run_id,
                ended(newest)
            )
        })?,
        None => newest,
    };
    if rec.status != "awaiting_approval" {
        let mut msg = match run {
            Some(_) => format!(
                "run {} of {entity} does not await approval: it {}",
                rec.run_id,
                ended(rec)
            ),
            None => format!(
                "no reconciliation run of {entity} awaits approval: the last one, {}, {}",
                rec.run_id,
                ended(rec)
            ),
        };
        if run.is_none()
            && let Some(old) = runs
                .iter()
                .skip(1)
                .find(|r| r.status == "awaiting_approval" && token_of(r).is_some())
        {
            msg.push_str(&format!(
                ". An older run, {}, is still recorded as awaiting approval, but a newer run \
                 followed it, so its approval has most likely expired; `--run {}` tries it anyway",
                old.run_id, old.run_id
            ));
        }
        return Err(msg);
    }
    let summary: serde_json::Value = serde_json::from_str(&rec.summary).unwrap_or_default();
    let Some(token) = token_of(rec) else {
        let verb = answer.verb();
        let next = match answer {
            Answer::Approve { .. } => format!(
                "to delete, re-run it with the deletions approved: `syncctl reconcile --entity \
                 {entity} --approve-deletions` (`--report-only` first shows the counts again and \
                 changes nothing)"
            ),
            Answer::Reject { .. } => "nothing to reject: it deleted nothing, and a local run \
                 deletes over the guard's thresholds only when re-run with --approve-deletions"
                .to_owned(),
        };
        return Err(format!(
            "run {} of {entity} was recorded by `syncctl reconcile` (run locally, not by the \
             state machine): it has no task token and no approval waits on it, so there is \
             nothing to {verb}; {next}",
            rec.run_id
        ));
    };
    let reason = summary["reason"]
        .as_str()
        .or_else(|| summary["guard"]["reason"].as_str())
        .map(str::to_owned);
    Ok(Pending {
        entity: entity.to_owned(),
        run_id: rec.run_id.clone(),
        started_us: rec.started_us,
        reason,
        candidates: summary["candidates"].as_u64(),
        token,
    })
}

/// The run's task token (`request_approval` records it in the summary), when it has one.
fn token_of(r: &RunRecord) -> Option<String> {
    let summary: serde_json::Value = serde_json::from_str(&r.summary).ok()?;
    summary["task_token"]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .map(str::to_owned)
}

/// How a run ended: `finished at T with status S`, or that it has not finished.
fn ended(r: &RunRecord) -> String {
    match r.finished_us {
        Some(f) => format!("finished at {} with status {}", format_rfc3339(f), r.status),
        None => format!(
            "started at {}, has status {} and has not finished",
            format_rfc3339(r.started_us),
            r.status
        ),
    }
}

/// Send the answer; the line to print on success.
pub(crate) async fn send(
    steps: &impl TaskAnswers,
    pending: &Pending,
    answer: &Answer,
) -> Result<String, String> {
    let result = match answer {
        Answer::Approve { by } => {
            let output = serde_json::json!({"approved": true, "by": by});
            steps.success(&pending.token, &output).await
        }
        Answer::Reject { by, reason } => {
            let cause = match reason {
                Some(r) => format!("rejected by {by}: {r}"),
                None => format!("rejected by {by}"),
            };
            steps.failure(&pending.token, REJECTED, &cause).await
        }
    };
    let run = pending.describe();
    let verb = answer.verb();
    match result {
        Ok(()) => Ok(match answer {
            Answer::Approve { by } => format!(
                "approved by {by}: {run}. The state machine now applies the deletions; \
                 `syncctl status` shows the run's outcome."
            ),
            Answer::Reject { by, .. } => format!(
                "rejected by {by}: {run}. The state machine finishes the run without deleting \
                 (status approval_rejected in `syncctl status`)."
            ),
        }),
        Err(e) if sfn::is_stale_token(&e) => Err(format!(
            "cannot {verb} {run}: the approval has expired or was already answered (Step \
             Functions: {}), so the state machine no longer waits for it and this changed \
             nothing. `syncctl status` shows how the run ended; if it still shows as waiting, \
             its execution stopped without recording (see the execution's history). Start a \
             new reconciliation if the deletions are still wanted.",
            sfn::error_code(&e).unwrap_or("stale token")
        )),
        Err(e) => Err(format!(
            "cannot {verb} {run}: {}; nothing was answered, and the run still waits (retry, \
             or check --sfn-endpoint-url and the AWS settings)",
            redact(&e.to_string(), &pending.token)
        )),
    }
}

/// `text` without the token (a service's message may quote it).
fn redact(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "<task token>")
    }
}

#[cfg(test)]
mod tests;
