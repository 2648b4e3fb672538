//! The functions' handlers, replayed in this process: the same library calls, the same log
//! lines and metrics, each invocation's CPU time measured.

use super::logs::LogCount;
use super::report::{Env, PathRun, Window};
use super::{DELTA_FN, ENTITY, INGEST_FN, RECONCILE_FN, SECRET, WORKER_FN, thread_cpu};
use shared::adapters::aws::AwsError;
use shared::adapters::dynamodb::{DynamoControl, DynamoRecords};
use shared::config::{Config, RateLimit};
use shared::core::timefmt::now_us;
use shared::ports::SourceApi;
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, DeltaSummary, run_delta};
use shared::sync::reconcile::{
    ApplyInput, ApplyOutput, Decision, DestinationInput, DiffInput, FinishInput, GuardInput,
    PlanInput, ReconcileDeps, ReconcileOptions, SourceInput, StepOutput, dispatch_with,
};
use shared::sync::worker::{BatchReport, InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::webhook::Ingest;
use source_sim::{Entity, SimHandle};
use std::sync::Arc;

/// The source client pointed at a simulator, with the deployed shared rate budget in
/// `control` (as `deploy::load` builds it) and a limit high enough not to wait.
pub(super) fn source_client(
    sim: &SimHandle,
    control: &Arc<DynamoControl>,
) -> Result<(Config, SourceClient), String> {
    let mut cfg = testkit::config::at(&sim.base_url());
    cfg.source.rate_limit = RateLimit {
        requests: 1_000_000,
        per_seconds: 1.0,
    };
    let client = SourceClient::new(&cfg, None)
        .map_err(|e| format!("source client: {e}"))?
        .with_budget_in(control.clone());
    Ok((cfg, client))
}

/// One delta-sync invocation for the entity, as its handler runs it.
pub(super) async fn delta_invocation(
    env: &Env<'_>,
    w: &mut Window,
    source: &SourceClient,
    records: &DynamoRecords,
    control: &DynamoControl,
) -> Result<DeltaSummary, String> {
    let c0 = thread_cpu();
    let before = source.usage();
    let opts = DeltaOptions::default().next_run();
    let r = run_delta(source, records, control, ENTITY, &opts).await;
    let usage_line = source.usage().since(before).metrics("delta");
    let s = r.map_err(|e| format!("delta run: {e}"))?;
    s.log();
    let metrics = s.metrics();
    w.tally
        .invoked(DELTA_FN, env.mb(DELTA_FN), thread_cpu() - c0);
    w.tally.published(&usage_line);
    w.tally.published(&metrics);
    Ok(s)
}

pub(super) fn delta_facts(s: &DeltaSummary) -> serde_json::Value {
    serde_json::json!({
        "status": s.status.as_str(), "pages": s.pages, "seen": s.seen,
        "written": s.written(), "unchanged": s.unchanged,
    })
}

/// The webhook delivery Planning Center sends for one change: one event, the record as a JSON
/// string (the simulator's document), signed.
pub(super) fn delivery(
    sim: &SimHandle,
    id: u64,
    ingest: &Ingest,
) -> Result<(http::HeaderMap, String), String> {
    let doc = sim
        .sim()
        .record_json(Entity::People, id)
        .ok_or_else(|| format!("record {id} is missing"))?;
    let body = serde_json::json!({"data": [{
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "EventDelivery",
        "attributes": {"name": "people.v2.events.person.updated", "attempt": 1, "payload": doc},
    }]})
    .to_string();
    let mut headers = http::HeaderMap::new();
    for (k, v) in shared::webhook::signature::sign(ingest.scheme(), SECRET, body.as_bytes(), "", 0)
        .map_err(|e| format!("sign: {e}"))?
    {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
            v.parse()
                .map_err(|e: http::header::InvalidHeaderValue| e.to_string())?,
        );
    }
    Ok((headers, body))
}

/// One API Gateway request to the ingest function, as its handler answers it.
pub(super) async fn ingest_invocation(
    env: &Env<'_>,
    w: &mut Window,
    ingest: &Ingest,
    headers: &http::HeaderMap,
    body: &str,
) -> Result<(), String> {
    let c0 = thread_cpu();
    let answer = ingest.handle(headers, body.as_bytes(), now_us()).await;
    let metrics = answer.metrics();
    w.tally
        .invoked(INGEST_FN, env.mb(INGEST_FN), thread_cpu() - c0);
    w.tally.published(&metrics);
    w.tally.apigw_requests += 1;
    w.tally
        .access_logs
        .add(LogCount::line(env.access_log_line.len()));
    if answer.status != 200 {
        return Err(format!(
            "ingest answered {}: {}",
            answer.status, answer.body
        ));
    }
    Ok(())
}

/// A message as the event source mapping receives it: what the handler gets, and the receipt
/// it deletes the message with.
pub(super) struct Received {
    pub(super) message: InMessage,
    pub(super) receipt: String,
}

/// The event source mapping's receive (long polling, up to `max` messages).
pub(super) async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    max: i32,
) -> Result<Vec<Received>, String> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(1)
        .send()
        .await
        .map_err(|e| format!("receive: {}", AwsError::new(e)))?;
    Ok(out
        .messages()
        .iter()
        .map(|m| Received {
            message: InMessage {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
            },
            receipt: m.receipt_handle().unwrap_or_default().to_owned(),
        })
        .collect())
}

/// The event source mapping's DeleteMessageBatch of the messages that did not fail.
pub(super) async fn delete_done(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    receipts: &[String],
) -> Result<(), String> {
    if receipts.is_empty() {
        return Ok(());
    }
    let entries = receipts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = sqs
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| format!("delete: {}", AwsError::new(e)))?;
    if !out.failed().is_empty() {
        return Err(format!("{} deletions failed", out.failed().len()));
    }
    Ok(())
}

/// One sync-worker invocation for a batch, as its handler runs it; then the event source
/// mapping deletes what did not fail.
pub(super) async fn worker_invocation(
    env: &Env<'_>,
    w: &mut Window,
    deps: &WorkerDeps<'_>,
    source: &SourceClient,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    received: Vec<Received>,
) -> Result<BatchReport, String> {
    let (msgs, receipts): (Vec<InMessage>, Vec<String>) =
        received.into_iter().map(|r| (r.message, r.receipt)).unzip();
    let c0 = thread_cpu();
    let options = WorkerOptions::default();
    let before = source.usage();
    let report = process_batch(deps, &msgs, &options).await;
    report.log();
    let metrics = report.metrics();
    let usage_line = source.usage().since(before).metrics("worker");
    w.tally
        .invoked(WORKER_FN, env.mb(WORKER_FN), thread_cpu() - c0);
    w.tally.published(&metrics);
    w.tally.published(&usage_line);
    if !report.failed.is_empty() {
        return Err(format!(
            "the worker failed {} messages",
            report.failed.len()
        ));
    }
    delete_done(sqs, url, &receipts).await?;
    Ok(report)
}

/// One reconcile invocation: the step's input as the state machine passes it, through the
/// function's dispatch, its output serialised back.
pub(super) async fn reconcile_step(
    env: &Env<'_>,
    w: &mut Window,
    deps: &ReconcileDeps<'_>,
    opts: &ReconcileOptions,
    step: &str,
    input: impl serde::Serialize,
) -> Result<StepOutput, String> {
    let c0 = thread_cpu();
    let mut v = serde_json::to_value(input).map_err(|e| e.to_string())?;
    v["step"] = step.into();
    let before = deps.source.usage();
    let out = dispatch_with(deps, None, v, opts).await;
    let usage_line = deps.source.usage().since(before).metrics("reconcile");
    let out = out.map_err(|e| format!("reconcile {step}: {e}"))?;
    out.log();
    let metrics = out.metrics();
    let _wire = serde_json::to_string(&out).map_err(|e| e.to_string())?;
    w.tally
        .invoked(RECONCILE_FN, env.mb(RECONCILE_FN), thread_cpu() - c0);
    w.tally.published(&usage_line);
    if let Some(m) = metrics {
        w.tally.published(&m);
    }
    Ok(out)
}

/// A reconciliation of the entity, step by step as one execution of the state machine runs
/// it; the execution's path of states is checked against the definition.
pub(super) async fn reconcile_path(
    env: &Env<'_>,
    deps: &ReconcileDeps<'_>,
    records_in_entity: u64,
) -> Result<PathRun, String> {
    let source = deps.source;
    let opts = ReconcileOptions::default();
    let mut w = env.open(source);
    let plan = PlanInput {
        entity: Some(ENTITY.into()),
        execution: Some(format!("bench-cost-{}", uuid::Uuid::new_v4().simple())),
        ..PlanInput::default()
    };
    let StepOutput::Plan(planned) = reconcile_step(env, &mut w, deps, &opts, "plan", &plan).await?
    else {
        return Err("plan: unexpected output".into());
    };
    let run = planned
        .runs
        .first()
        .cloned()
        .ok_or("plan: no run (lease held?)")?;
    let mut path: Vec<&str> = vec!["Start", "Resuming", "Plan", "Runs"];
    let mut progress = None;
    loop {
        let input = SourceInput {
            run: run.clone(),
            progress: progress.clone(),
        };
        let StepOutput::Source(p) =
            reconcile_step(env, &mut w, deps, &opts, "source", &input).await?
        else {
            return Err("source: unexpected output".into());
        };
        path.extend(["Source", "SourceDone"]);
        let done = p.done;
        progress = Some(p);
        if done {
            break;
        }
    }
    let progress = progress.unwrap_or_default();
    path.push("Destinations");
    for &shard in &run.shards {
        let input = DestinationInput {
            run: run.clone(),
            shard,
        };
        reconcile_step(env, &mut w, deps, &opts, "destination", &input).await?;
        path.push("Destination");
    }
    let StepOutput::Diff(diff) = reconcile_step(
        env,
        &mut w,
        deps,
        &opts,
        "diff",
        &DiffInput { run: run.clone() },
    )
    .await?
    else {
        return Err("diff: unexpected output".into());
    };
    let input = GuardInput {
        run: run.clone(),
        source: progress.clone(),
        diff: diff.clone(),
    };
    let StepOutput::Guard(guard) =
        reconcile_step(env, &mut w, deps, &opts, "guard", &input).await?
    else {
        return Err("guard: unexpected output".into());
    };
    path.extend(["Diff", "Guard", "NeedsApproval"]);
    if matches!(guard.decision, Decision::NeedsApproval { .. }) {
        return Err(format!("an unchanged entity needs approval: {guard:?}"));
    }
    let mut apply: Option<ApplyOutput> = None;
    loop {
        let input = ApplyInput {
            run: run.clone(),
            diff: diff.clone(),
            guard: guard.clone(),
            approved: false,
            progress: apply.clone(),
        };
        let StepOutput::Apply(a) =
            reconcile_step(env, &mut w, deps, &opts, "apply", &input).await?
        else {
            return Err("apply: unexpected output".into());
        };
        path.extend(["Apply", "ApplyDone"]);
        let done = a.done;
        apply = Some(a);
        if done {
            break;
        }
    }
    let input = FinishInput {
        run: run.clone(),
        source: Some(progress),
        diff: Some(diff),
        guard: Some(guard),
        apply,
        error: None,
        approval: None,
    };
    let StepOutput::Finish(summary) =
        reconcile_step(env, &mut w, deps, &opts, "finish", &input).await?
    else {
        return Err("finish: unexpected output".into());
    };
    path.extend([
        "Finish",
        "AnyRuns",
        "CheckRuns",
        "Summarise",
        "AnyRunFailed",
        "Done",
    ]);
    let (transitions, lambda_tasks) = env.machine.walk(&path)?;
    let invoked = w.tally.lambdas.get(RECONCILE_FN).map_or(0, |i| i.count);
    if lambda_tasks != invoked {
        return Err(format!(
            "the state machine's path invokes the function {lambda_tasks} times, the run did {invoked}"
        ));
    }
    w.tally.sfn_transitions += transitions;
    if summary.missed + summary.stale + summary.deleted + summary.queued > 0 {
        return Err(format!("the entity was not unchanged: {summary:?}"));
    }
    let facts = serde_json::json!({
        "status": summary.status,
        "source_count": summary.source_count,
        "destination_count": summary.destination_count,
        "missed": summary.missed, "stale": summary.stale, "deleted": summary.deleted,
        "state_transitions": transitions,
        "states_entered": path.len(),
        "shards": run.shards.len(),
    });
    Ok(env.close(
        w,
        source,
        "a reconciliation of an unchanged entity: one execution of the state machine (plan, \
         source, 16 destination shards, diff, guard, apply, finish)",
        records_in_entity,
        facts,
    ))
}
