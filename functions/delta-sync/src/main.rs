//! The scheduled delta Lambda: wiring only, once per cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::adapters::deploy;
use shared::config::Env;
use shared::sync::delta::DeltaOptions;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let d = deploy::load().await?;
    let deps = handler::Deps {
        config: d.config,
        source: d.source,
        records: d.records,
        control: d.control,
        options: DeltaOptions::from_env(Env::process())?,
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<serde_json::Value>| async move { handler::handle(deps, ev).await },
    ))
    .await
}
