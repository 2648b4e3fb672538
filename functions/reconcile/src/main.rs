//! The reconciliation Lambda: one function for every step of the state machine
//! (`infra/reconcile.asl.json`), which calls it with `{"step": "<name>", ...}`. Wiring only,
//! once per cold start: a missing variable (`RECORDS_TABLE`, `CONTROL_TABLE`, `SPILL_BUCKET`,
//! `QUEUE_URL`, `TOKEN_SIGNING_SECRET_ID`, ...) or a bad threshold fails the cold start, naming it.

mod handler;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::adapters::{deploy, secrets};
use shared::config::Env;
use shared::sync::reconcile::ReconcileOptions;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let d = deploy::load().await?;
    let deps = handler::Deps {
        spill: Arc::new(deploy::spill_from_env(&d.sdk)?),
        queue: Arc::new(deploy::queue_from_env(&d.sdk)?),
        executions: Some(Arc::new(shared::adapters::sfn::StepFunctions::from_sdk(
            &d.sdk,
        ))),
        options: ReconcileOptions {
            // Resume tokens are signed under the stack's TokenSigningSecret.
            token_key: Arc::new(secrets::token_key(&d.sdk).await?),
            ..ReconcileOptions::from_env(Env::process())?
        },
        config: d.config,
        source: d.source,
        records: d.records,
        control: d.control,
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<serde_json::Value>| async move { handler::handle(deps, ev).await },
    ))
    .await
}
