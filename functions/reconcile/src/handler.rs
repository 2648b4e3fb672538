//! `{"step": "<name>", ...that step's input}` in → `shared::sync::reconcile::dispatch` → the
//! step's output out. No business rules here: the steps are in `shared`. A step's error becomes
//! the invocation's error with `errorType` = [`StepError::error_type`]
//! (`Reconcile.BadInput|LeaseLost|Retryable|Failed`), which the state machine's Retry and Catch
//! match.
//!
//! [`StepError::error_type`]: shared::sync::reconcile::StepError::error_type

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use shared::Config;
use shared::error::ConfigError;
use shared::model::Micros;
use shared::ports::{ControlStore, Executions, Queue, RecordStore, SourceApi, SpillStore};
use shared::sync::reconcile::{ReconcileDeps, ReconcileOptions, dispatch_with};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Built once per cold start in `main`.
pub struct Deps {
    pub config: Config,
    pub source: Arc<dyn SourceApi>,
    pub records: Arc<dyn RecordStore>,
    pub control: Arc<dyn ControlStore>,
    pub spill: Arc<dyn SpillStore>,
    pub queue: Arc<dyn Queue>,
    /// Starts the execution a long listing continues in (`None` outside Step Functions).
    pub executions: Option<Arc<dyn Executions>>,
    pub options: Options,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub reconcile: ReconcileOptions,
    /// The Source step stops (resumable) this long before the invocation's deadline.
    pub safety_margin: Duration,
}

/// What the lease outlives the approval's timeout by.
const APPROVAL_LEASE_MARGIN: Duration = Duration::from_secs(3600);

/// `RECONCILE_MAX_DELETE_PERCENT` (5), `RECONCILE_MAX_DELETE_COUNT` (1,000),
/// `RECONCILE_MAX_CONFIRMATIONS` (200), `RECONCILE_TARGETED_LIMIT` (10,000),
/// `RECONCILE_RUN_SIZE` (1,000,000 pairs, about 40 MB), `RECONCILE_SAFETY_MARGIN_SECONDS` (30),
/// `RECONCILE_APPROVAL_TIMEOUT_SECONDS` (86,400: the state machine's `ApprovalTimeoutSeconds`);
/// a bad value names its variable.
pub fn options_from_env() -> Result<Options, ConfigError> {
    options_from(|name| std::env::var(name).ok())
}

pub fn options_from(get: impl Fn(&str) -> Option<String>) -> Result<Options, ConfigError> {
    let num = |name: &str, default: u64, min: u64, max: u64| {
        shared::adapters::deploy::num_from(&get, name, default, min, max)
    };
    // A Standard execution lasts at most a year.
    let approval = Duration::from_secs(num(
        "RECONCILE_APPROVAL_TIMEOUT_SECONDS",
        86_400,
        1,
        31_536_000,
    )?);
    let d = ReconcileOptions::default();
    let percent = (d.max_delete_share * 100.0).round() as u64;
    let reconcile = ReconcileOptions {
        max_delete_share: num("RECONCILE_MAX_DELETE_PERCENT", percent, 0, 100)? as f64 / 100.0,
        max_delete_count: num(
            "RECONCILE_MAX_DELETE_COUNT",
            d.max_delete_count,
            0,
            100_000_000,
        )?,
        max_confirmations: num(
            "RECONCILE_MAX_CONFIRMATIONS",
            d.max_confirmations,
            0,
            100_000,
        )?,
        targeted_limit: num("RECONCILE_TARGETED_LIMIT", d.targeted_limit, 0, 100_000_000)?,
        run_size: num("RECONCILE_RUN_SIZE", d.run_size as u64, 1_000, 4_000_000)? as usize,
        approval_lease_ttl_us: (approval + APPROVAL_LEASE_MARGIN).as_micros() as Micros,
        ..d
    };
    let safety_margin = Duration::from_secs(num("RECONCILE_SAFETY_MARGIN_SECONDS", 30, 5, 300)?);
    Ok(Options {
        reconcile,
        safety_margin,
    })
}

pub async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let payload = event.payload;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let step = text(payload.get("step"));
    let entity = text(payload.pointer("/run/entity").or(payload.get("entity")));
    let run_id = text(payload.pointer("/run/run_id"));
    let span = tracing::info_span!("reconcile", step = %step, entity = %entity, run_id = %run_id);

    let mut opts = deps.options.reconcile.clone();
    opts.stop_at =
        shared::core::deadline::stop_instant(event.context.deadline(), deps.options.safety_margin);
    let rdeps = ReconcileDeps {
        config: &deps.config,
        source: deps.source.as_ref(),
        records: deps.records.as_ref(),
        control: deps.control.as_ref(),
        spill: deps.spill.as_ref(),
        queue: deps.queue.as_ref(),
    };
    async move {
        match dispatch_with(&rdeps, deps.executions.as_deref(), payload, &opts).await {
            Ok(out) => Ok(out),
            Err(e) => {
                let error_type = e.error_type();
                if error_type == "Reconcile.Retryable" {
                    tracing::warn!(error = %e, error_type, "reconciliation step failed; the state machine retries it");
                } else {
                    tracing::error!(error = %e, error_type, "reconciliation step failed");
                }
                Err(Diagnostic {
                    error_type: error_type.into(),
                    error_message: e.to_string(),
                })
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests;
