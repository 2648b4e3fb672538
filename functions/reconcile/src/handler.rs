//! `{"step": "<name>", ...that step's input}` in → `shared::sync::reconcile::dispatch` → the
//! step's output out, its log line and metrics published here. No business rules here: the
//! steps are in `shared`. A step's error becomes the invocation's error with `errorType` =
//! [`StepError::error_type`] (`Reconcile.BadInput|LeaseLost|Retryable|Failed`), which the state
//! machine's Retry and Catch match.
//!
//! [`StepError::error_type`]: shared::sync::reconcile::StepError::error_type

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use shared::Config;
use shared::ports::{ControlStore, Executions, Queue, RecordStore, SourceApi, SpillStore};
use shared::sync::reconcile::{ReconcileDeps, ReconcileOptions, StepError, dispatch_with};
use std::sync::Arc;
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
    /// Read once in `main` (`ReconcileOptions::from_env`).
    pub options: ReconcileOptions,
}

pub async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let payload = event.payload;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let step = text(payload.get("step"));
    let entity = text(payload.pointer("/run/entity").or(payload.get("entity")));
    let run_id = text(payload.pointer("/run/run_id"));
    let span = tracing::info_span!("reconcile", step = %step, entity = %entity, run_id = %run_id);

    let mut opts = deps.options.clone();
    opts.stop_at =
        shared::core::deadline::stop_instant(event.context.deadline(), opts.safety_margin);
    let rdeps = ReconcileDeps {
        config: &deps.config,
        source: deps.source.as_ref(),
        records: deps.records.as_ref(),
        control: deps.control.as_ref(),
        spill: deps.spill.as_ref(),
        queue: deps.queue.as_ref(),
    };
    async move {
        let before = deps.source.usage();
        let result = dispatch_with(&rdeps, deps.executions.as_deref(), payload, &opts).await;
        // The step's requests to the source and its 429s, a failed step's included.
        shared::telemetry::publish(&deps.source.usage().since(before).metrics("reconcile"));
        let result = result.and_then(|out| {
                // The step's metrics (the guard tripping, an approval asked for, a run's
                // summary) are this function's to publish.
                out.log();
                if let Some(line) = out.metrics() {
                    shared::telemetry::publish(&line);
                }
                serde_json::to_value(&out).map_err(|e| StepError::BadInput(e.to_string()))
            });
        match result {
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
