//! The scheduled delta Lambda: wiring only, once per cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::adapters::deploy;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let d = deploy::load().await?;
    let deps = handler::Deps {
        config: d.config,
        source: d.source,
        records: d.records,
        control: d.control,
        overlap_us: deploy::env_u64("DELTA_OVERLAP_SECONDS", 120)? as i64 * 1_000_000,
        safety_margin: Duration::from_secs(deploy::env_u64("DELTA_SAFETY_MARGIN_SECONDS", 20)?),
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<serde_json::Value>| async move { handler::handle(deps, ev).await },
    ))
    .await
}
