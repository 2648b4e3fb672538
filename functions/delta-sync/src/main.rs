//! The scheduled delta Lambda: wiring only, once per cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::adapters::deploy;
use shared::adapters::sfn::StepFunctions;
use shared::config::Env;
use shared::sync::delta::DeltaOptions;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let d = deploy::load().await?;
    let env = Env::process();
    let deps = handler::Deps {
        reconcile_state_machine: env.required(handler::RECONCILE_STATE_MACHINE_VAR)?,
        executions: Arc::new(StepFunctions::from_sdk(&d.sdk)),
        config: d.config,
        source: d.source,
        records: d.records,
        control: d.control,
        options: DeltaOptions::from_env(env)?,
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<serde_json::Value>| async move { handler::handle(deps, ev).await },
    ))
    .await
}
