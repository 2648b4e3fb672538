//! The webhook ingest Lambda (API Gateway HTTP API, `POST /webhooks`): wiring only, once per
//! cold start. A missing queue URL, `[webhooks]` table or secret fails the cold start, named.
//! The secrets are read again when a signature matches none of them (at most once a minute).

mod handler;

use lambda_http::{Error, Request, service_fn};
use shared::adapters::{aws, secrets, sqs::SqsQueue};
use shared::config::Env;
use shared::webhook::{Ingest, signature::split_secrets};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config = shared::Config::load()?;
    let sdk = aws::sdk_config().await;
    let secret = secrets::resolve_webhook_secrets(config.webhooks()?, &sdk).await?;
    let queue = Arc::new(SqsQueue::from_env_var(&sdk, Env::process(), "QUEUE_URL")?);
    // Read again when a signature matches none of them (a rotation needs no cold start).
    let ingest = Ingest::new(&config, &split_secrets(secret.expose()), queue)?
        .with_secret_provider(secrets::webhook_provider(config.webhooks()?, &sdk));
    let ingest = &ingest;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(handler::handle(ingest, req, shared::core::timefmt::now_us()).await)
    }))
    .await
}
