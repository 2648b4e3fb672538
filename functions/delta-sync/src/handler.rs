//! Event in → `shared::sync::delta` per entity → summaries out. No business rules here.
//!
//! A failed run comes back as the invocation's error with `errorType` `Delta.Retryable` or
//! `Delta.Failed`, from the failures' `is_retryable()` (see `failure`).

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::{Deserialize, Serialize};
use shared::Config;
use shared::error::SyncError;
use shared::ports::{ControlStore, RecordStore, SourceApi};
use shared::sync::delta::{DeltaOptions, DeltaSummary, RunStatus, run_delta};
use std::sync::Arc;

/// Built once per cold start in `main`.
pub struct Deps {
    pub config: Config,
    pub source: Arc<dyn SourceApi>,
    pub records: Arc<dyn RecordStore>,
    pub control: Arc<dyn ControlStore>,
    /// Every run's settings (`DeltaOptions::from_env`); each run gets its own `run_id` and the
    /// invocation's `stop_at`.
    pub options: DeltaOptions,
}

/// The bare input: `{}` (every entity) or `{"entity": "people"}`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default)]
    pub entity: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    pub runs: Vec<DeltaSummary>,
}

/// Accept the bare input and the EventBridge Scheduled Event envelope (whose `detail` may
/// carry the same fields).
pub fn parse_input(v: serde_json::Value) -> Result<Input, Diagnostic> {
    let bad = |m: String| Diagnostic {
        error_type: "InvalidInput".into(),
        error_message: m,
    };
    if v.get("detail-type").is_some() {
        let ev: CloudWatchEvent<serde_json::Value> =
            serde_json::from_value(v).map_err(|e| bad(format!("not a scheduled event: {e}")))?;
        return match ev.detail {
            None | Some(serde_json::Value::Null) => Ok(Input::default()),
            Some(d) => {
                serde_json::from_value(d).map_err(|e| bad(format!("scheduled event detail: {e}")))
            }
        };
    }
    serde_json::from_value(v)
        .map_err(|e| bad(format!("expected {{}} or {{\"entity\": \"...\"}}: {e}")))
}

pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<serde_json::Value>,
) -> Result<Output, Diagnostic> {
    let input = parse_input(event.payload)?;
    let entities = deps
        .config
        .entity_names(input.entity.as_deref())
        .map_err(|e| Diagnostic {
            error_type: "UnknownEntity".into(),
            error_message: format!("entity {e:?} is not configured"),
        })?;
    let stop_at =
        shared::core::deadline::stop_instant(event.context.deadline(), deps.options.safety_margin);
    let before = deps.source.usage();
    let runs = futures::future::join_all(entities.iter().map(|entity| {
        let opts = DeltaOptions {
            stop_at,
            ..deps.options.next_run()
        };
        async move {
            let r = run_delta(&*deps.source, &*deps.records, &*deps.control, entity, &opts).await;
            (entity.clone(), r)
        }
    }))
    .await;
    // The invocation's requests to the source and its 429s, failed runs' included.
    shared::telemetry::publish(&deps.source.usage().since(before).metrics("delta"));
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for (entity, r) in runs {
        match r {
            Ok(s) => {
                s.log();
                shared::telemetry::publish(&s.metrics());
                out.push(s);
            }
            Err(e) => {
                tracing::error!(%entity, error = %e, retryable = e.is_retryable(), "delta run failed");
                shared::telemetry::publish(&shared::sync::delta::failed_run_metrics(&entity));
                failed.push((entity, e));
            }
        }
    }
    if !failed.is_empty() {
        return Err(failure(&failed));
    }
    debug_assert!(out.iter().all(|s| s.status != RunStatus::Failed));
    Ok(Output { runs: out })
}

/// The invocation's error for the entities whose runs failed: `Delta.Retryable` when any of
/// the failures may heal on a retry (throttling, a 5xx, a timeout), else `Delta.Failed` (a
/// 4xx, an unreadable cursor). One retryable failure makes the whole invocation retryable: a
/// retry re-runs every entity, but a run whose failure cannot heal by retrying only costs API
/// calls (and the entities that succeeded read little, their cursors having moved), while a
/// skipped retry of a healable failure leaves that entity behind until the next schedule.
fn failure(failed: &[(String, SyncError)]) -> Diagnostic {
    let retryable = failed.iter().any(|(_, e)| e.is_retryable());
    Diagnostic {
        error_type: if retryable {
            "Delta.Retryable"
        } else {
            "Delta.Failed"
        }
        .into(),
        error_message: failed
            .iter()
            .map(|(entity, e)| format!("{entity}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[cfg(test)]
mod tests;
