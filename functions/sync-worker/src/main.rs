//! The sync worker Lambda (SQS event source, `ReportBatchItemFailures`): wiring only, once per
//! cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::adapters::deploy;
use shared::config::Env;
use shared::sync::worker::WorkerOptions;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let d = deploy::load().await?;
    let deps = handler::Deps {
        source: d.source,
        records: d.records,
        control: d.control,
        options: WorkerOptions::from_env(Env::process())?,
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| async move {
            handler::handle(deps, ev).await
        },
    ))
    .await
}
