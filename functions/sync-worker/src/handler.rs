//! SQS batch in → `shared::sync::worker` → the failed message IDs out (partial batch failure).
//! No business rules here.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Diagnostic, LambdaEvent};
use shared::ports::{ControlStore, RecordStore, SourceApi};
use shared::sync::worker::{BatchReport, InMessage, WorkerDeps, WorkerOptions, process_batch};
use std::sync::Arc;
use std::time::Duration;

/// Built once per cold start in `main`.
pub struct Deps {
    pub source: Arc<dyn SourceApi>,
    pub records: Arc<dyn RecordStore>,
    pub control: Arc<dyn ControlStore>,
    pub options: WorkerOptions,
}

/// The fetches stop this long before the invocation's deadline (a request already sent, the
/// writes and the processed events' markers fit in it; the source's request timeout is 10 s by default):
/// a `Retry-After` or a backoff that would pass the stop fails its message for SQS to retry.
const STOP_MARGIN: Duration = Duration::from_secs(15);

pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Diagnostic> {
    let msgs: Vec<InMessage> = event
        .payload
        .records
        .into_iter()
        .enumerate()
        .map(|(i, m)| InMessage {
            message_id: m.message_id.unwrap_or_else(|| format!("#{i}")),
            body: m.body.unwrap_or_default(),
        })
        .collect();
    let mut options = deps.options.clone();
    let deadline = event.context.deadline();
    options.stop_at = shared::core::deadline::stop_instant(deadline, STOP_MARGIN);
    let before = deps.source.usage();
    let report = process_batch(
        &WorkerDeps {
            source: deps.source.as_ref(),
            records: deps.records.as_ref(),
            control: deps.control.as_ref(),
        },
        &msgs,
        &options,
    )
    .await;
    report.log();
    shared::telemetry::publish(&report.metrics());
    shared::telemetry::publish(&deps.source.usage().since(before).metrics("worker"));
    if report.all_failed() {
        return Err(Diagnostic {
            error_type: "BatchFailed".into(),
            error_message: format!(
                "all {} messages failed; they will be redelivered",
                report.messages
            ),
        });
    }
    Ok(response(&report))
}

fn response(report: &BatchReport) -> SqsBatchResponse {
    let mut r = SqsBatchResponse::default();
    r.batch_item_failures = report
        .failed
        .iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id.clone();
            f
        })
        .collect();
    r
}

#[cfg(test)]
mod tests;
