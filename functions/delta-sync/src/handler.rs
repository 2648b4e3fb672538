//! Event in → `shared::sync::delta` per entity → summaries out. No business rules here.
//!
//! A failed run comes back as the invocation's error with `errorType` `Delta.Retryable` or
//! `Delta.Failed`, from the failures' `is_retryable()` (see `failure`).

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::{Deserialize, Serialize};
use shared::Config;
use shared::error::SyncError;
use shared::ports::{ControlStore, Executions, RecordStore, SourceApi};
use shared::sync::delta::{DeltaOptions, DeltaSummary, RunStatus, run_delta};
use shared::sync::resync::{self, Closing, Phase, Requested};
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
    /// Where a re-sync read to the end starts its closing reconciliation: an execution of the
    /// reconciliation state machine (`RECONCILE_STATE_MACHINE_ARN`) for its entity.
    pub executions: Arc<dyn Executions>,
    pub reconcile_state_machine: String,
}

/// The variable naming the reconciliation state machine a finished re-sync starts.
pub const RECONCILE_STATE_MACHINE_VAR: &str = "RECONCILE_STATE_MACHINE_ARN";

/// The bare input: `{}` (every entity) or `{"entity": "people"}`; with `"resync": true` (one
/// entity), a full re-sync of it is asked for (`shared::sync::resync`, by `actor` when given),
/// and its first run goes now; the scheduled invocations carry it on until it is done.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default)]
    pub resync: bool,
    /// Start a re-sync under way again from the beginning (with `resync`).
    #[serde(default)]
    pub restart: bool,
    /// Who asked, for the re-sync's history (default: the function's input).
    #[serde(default)]
    pub actor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    pub runs: Vec<DeltaSummary>,
    /// The re-sync runs of this invocation (the entities with one under way).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resyncs: Vec<DeltaSummary>,
    /// Re-syncs read to the end whose closing reconciliation this invocation started:
    /// `{"entity": ..., "execution": <ARN>}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reconciliations: Vec<serde_json::Value>,
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
    let input: Input = serde_json::from_value(v).map_err(|e| {
        bad(format!(
            "expected {{}}, {{\"entity\": \"...\"}} or {{\"entity\": \"...\", \"resync\": true}}: {e}"
        ))
    })?;
    if input.resync && input.entity.is_none() {
        return Err(bad(
            "\"resync\": true needs the one entity to re-sync: {\"entity\": \"...\", \"resync\": true}".into(),
        ));
    }
    if (input.restart || input.actor.is_some()) && !input.resync {
        return Err(bad(
            "\"restart\" and \"actor\" go with \"resync\": true".into()
        ));
    }
    Ok(input)
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
    if input.resync {
        // One entity (parse_input): ask, then its first run below, instead of a delta run.
        let entity = &entities[0];
        let actor = input.actor.as_deref().unwrap_or("delta-sync input");
        match resync::request(&*deps.control, entity, actor, input.restart).await {
            Ok(Requested::Started { request_id }) => {
                tracing::info!(%entity, %request_id, "re-sync requested")
            }
            Ok(Requested::AlreadyActive { phase }) => {
                tracing::info!(%entity, ?phase, "a re-sync is already under way; carrying it on")
            }
            Err(e) => {
                return Err(failure(&[(entity.clone(), e)]));
            }
        }
    }
    let runs = if input.resync {
        Vec::new()
    } else {
        futures::future::join_all(entities.iter().map(|entity| {
            let opts = DeltaOptions {
                stop_at,
                ..deps.options.next_run()
            };
            async move {
                let r =
                    run_delta(&*deps.source, &*deps.records, &*deps.control, entity, &opts).await;
                (entity.clone(), r)
            }
        }))
        .await
    };
    // Then each entity's re-sync under way, with the time left (delta runs come first: they
    // keep the copy fresh; a re-sync only has to finish).
    let resyncs = futures::future::join_all(entities.iter().map(|entity| {
        let opts = DeltaOptions {
            stop_at,
            ..deps.options.next_run()
        };
        async move { (entity.clone(), carry_on_resync(deps, entity, &opts).await) }
    }))
    .await;
    // The invocation's requests to the source and its 429s, failed runs' included.
    shared::telemetry::publish(&deps.source.usage().since(before).metrics("delta"));
    let mut out = Vec::new();
    let mut failed = Vec::new();
    let mut resync_runs = Vec::new();
    let mut reconciliations = Vec::new();
    for (entity, r) in resyncs {
        match r {
            Ok((run, closing)) => {
                if let Some(s) = run {
                    s.log();
                    shared::telemetry::publish(&s.metrics());
                    resync_runs.push(s);
                }
                reconciliations.extend(closing);
            }
            Err(e) => {
                tracing::error!(%entity, error = %e, retryable = e.is_retryable(), "re-sync run failed");
                failed.push((entity, e));
            }
        }
    }
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
    Ok(Output {
        runs: out,
        resyncs: resync_runs,
        reconciliations,
    })
}

/// The entity's re-sync, when one is under way: one run (`resync::run`), and once the listing
/// is read to the end, its closing reconciliation started (an execution of the state machine
/// for the entity, named after the re-sync so that a retried start is the same execution).
async fn carry_on_resync(
    deps: &Deps,
    entity: &str,
    opts: &DeltaOptions,
) -> Result<(Option<DeltaSummary>, Option<serde_json::Value>), SyncError> {
    // One read (the newest entry of the re-sync's history) when none is under way.
    let run = match resync::state(&*deps.control, entity).await?.phase {
        Phase::Idle => return Ok((None, None)),
        Phase::Reconcile => None,
        Phase::Reading => {
            match resync::run(&*deps.source, &*deps.records, &*deps.control, entity, opts).await? {
                // Another run holds the lease, or it was cancelled meanwhile.
                None => return Ok((None, None)),
                Some(s) if s.status != RunStatus::Succeeded => return Ok((Some(s), None)),
                Some(s) => Some(s),
            }
        }
    };
    // Read to the end now, or by an earlier invocation that could not start the
    // reconciliation: start it (`NotDue` when there is nothing to close).
    let closing = resync::reconciled(&*deps.control, entity, |name| async move {
        let execution = deps
            .executions
            .start(
                &deps.reconcile_state_machine,
                &name,
                &serde_json::json!({ "entity": entity }),
            )
            .await?;
        Ok(serde_json::json!({ "entity": entity, "execution": execution }))
    })
    .await?;
    Ok(match closing {
        Closing::Done(v) => (run, Some(v)),
        Closing::NotDue(_) => (run, None),
    })
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
