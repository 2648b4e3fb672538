//! `syncctl serve`: the webhook ingest and the sync worker in one process, on the embedded
//! store, so that a sender (the simulator, or `curl` with `syncctl sign`) can be pointed at it.
//!
//! - `POST /webhooks` → `shared::webhook::Ingest` (the Lambda's logic) → a `LocalQueue` in the
//!   local store. The body is read up to `max_body_bytes + 1`, so anything larger gets the
//!   ingest's own 413 (never the server's), without reading the rest. `GET /health` answers
//!   the queue's counts.
//! - A worker loop on the same queue: receive up to 10, `shared::sync::worker::process_batch`
//!   (the Lambda's logic) with the source client and the local store, delete what succeeded.
//!   Failed messages come back after the visibility timeout and go to the dead letters after
//!   `max_receives` receives (`syncctl dlq`).
//!
//! [`start`] runs both in the current runtime and returns a [`ServeHandle`]; `demo` and the
//! tests use it in-process. [`run`] is the command: it wires the pieces from the environment,
//! prints the URL and one line per batch, and stops gracefully on Ctrl-C.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use futures::StreamExt;
use shared::Config;
use shared::adapters::local::{LocalQueue, LocalStore, QueueOptions};
use shared::core::timefmt::now_us;
use shared::ports::{Queue, SourceApi};
use shared::source::SourceClient;
use shared::sync::worker::{BatchReport, InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::webhook::Ingest;
use shared::webhook::signature::split_secrets;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Messages per receive (SQS's and the Lambda event source's batch limit).
pub const BATCH_SIZE: usize = 10;
/// How long an empty receive waits. A send from this process wakes it at once, so this only
/// bounds how quickly the loop notices a shutdown.
const RECEIVE_WAIT_MS: u64 = 200;
/// Pause after a failed receive (the store is locked or gone) before trying again.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How long a graceful shutdown waits for requests in flight and the current batch.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3002")]
    pub listen: SocketAddr,
    /// The local store's SQLite file (records, control and the queue).
    #[arg(long, default_value = ".local/sync.sqlite", env = "SYNC_LOCAL_DB")]
    pub db: PathBuf,
    /// Name of the local queue between ingest and worker.
    #[arg(long, default_value = "work")]
    pub queue: String,
    /// How long a received message stays invisible before it is delivered again.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=43_200))]
    pub visibility_timeout_secs: u64,
    /// Receives after which a failing message goes to the dead letters (`syncctl dlq`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_receives: u32,
}

/// Called after each batch (the command prints a line; the demo stays quiet).
pub type BatchHook = Arc<dyn Fn(&BatchReport) + Send + Sync>;

/// Everything [`start`] needs, built by the caller (from the environment, or by a test).
pub struct ServeOptions {
    /// `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// Records and control tables; the queue lives in the same file.
    pub store: LocalStore,
    pub queue: String,
    pub queue_options: QueueOptions,
    /// The `[webhooks]` table (scheme, pointers, body limit) and the entities' event maps.
    pub config: Config,
    /// Webhook signing secrets (more than one during a rotation).
    pub secrets: Vec<String>,
    /// Where the worker fetches records (`get_by_id`).
    pub source: Arc<dyn SourceApi>,
    pub worker: WorkerOptions,
    pub on_batch: Option<BatchHook>,
}

impl ServeOptions {
    /// Defaults for everything but the pieces only the caller has: listen on a free port,
    /// queue `work`, [`QueueOptions::default`] and worker options to match them.
    pub fn new(
        store: LocalStore,
        config: Config,
        secrets: Vec<String>,
        source: Arc<dyn SourceApi>,
    ) -> Self {
        let queue_options = QueueOptions::default();
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            queue: "work".into(),
            worker: WorkerOptions::default(),
            queue_options,
            config,
            secrets,
            source,
            on_batch: None,
        }
    }
}

/// Counters since [`start`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Webhook requests answered, by class.
    pub requests: u64,
    pub accepted: u64,
    pub unauthorized: u64,
    pub too_large: u64,
    pub malformed: u64,
    pub queue_failed: u64,
    /// Events put on the queue.
    pub events_queued: u64,
    pub batches: u64,
    pub messages: u64,
    pub messages_failed: u64,
    pub get_by_id_calls: u64,
    pub written: u64,
    pub deleted: u64,
    pub receive_errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    unauthorized: AtomicU64,
    too_large: AtomicU64,
    malformed: AtomicU64,
    queue_failed: AtomicU64,
    events_queued: AtomicU64,
    batches: AtomicU64,
    messages: AtomicU64,
    messages_failed: AtomicU64,
    get_by_id_calls: AtomicU64,
    written: AtomicU64,
    deleted: AtomicU64,
    receive_errors: AtomicU64,
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ServeStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServeStats {
            requests: l(&self.requests),
            accepted: l(&self.accepted),
            unauthorized: l(&self.unauthorized),
            too_large: l(&self.too_large),
            malformed: l(&self.malformed),
            queue_failed: l(&self.queue_failed),
            events_queued: l(&self.events_queued),
            batches: l(&self.batches),
            messages: l(&self.messages),
            messages_failed: l(&self.messages_failed),
            get_by_id_calls: l(&self.get_by_id_calls),
            written: l(&self.written),
            deleted: l(&self.deleted),
            receive_errors: l(&self.receive_errors),
        }
    }

    fn answer(&self, outcome: &shared::webhook::Outcome) {
        use shared::webhook::Outcome;
        add(&self.requests, 1);
        match outcome {
            Outcome::Queued { queued, .. } => {
                add(&self.accepted, 1);
                add(&self.events_queued, *queued);
            }
            Outcome::TooLarge { .. } | Outcome::TooManyEvents { .. } => add(&self.too_large, 1),
            Outcome::Unauthorized(_) => add(&self.unauthorized, 1),
            Outcome::Malformed { queued, .. } => {
                add(&self.malformed, 1);
                add(&self.events_queued, *queued);
            }
            Outcome::QueueFailed { .. } | Outcome::QueueTimedOut { .. } => {
                add(&self.queue_failed, 1)
            }
        }
    }

    fn batch(&self, r: &BatchReport) {
        add(&self.batches, 1);
        add(&self.messages, r.messages);
        add(&self.messages_failed, r.failed.len());
        add(&self.get_by_id_calls, r.get_by_id_calls);
        add(&self.written, r.written);
        add(&self.deleted, r.deleted);
    }
}

/// A running server and worker. Dropping it asks both to stop without waiting;
/// [`ServeHandle::shutdown`] stops them and waits.
pub struct ServeHandle {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    /// `{url}/webhooks`: where a sender posts.
    pub webhook_url: String,
    /// The queue between ingest and worker (for counts and dead letters).
    pub queue: LocalQueue,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeHandle")
            .field("url", &self.url)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl ServeHandle {
    pub fn stats(&self) -> ServeStats {
        self.counters.snapshot()
    }

    /// Stop accepting, let requests in flight and the worker's current batch finish (at most
    /// 10 seconds each), then return the final counters.
    pub async fn shutdown(mut self) -> Result<ServeStats, String> {
        let _ = self.stop.send(true);
        let mut problems = Vec::new();
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => problems.push(format!("server: {e}")),
                Ok(Err(e)) => problems.push(format!("server task: {e}")),
                Err(_) => problems.push("server: requests still running after 10 s".into()),
            }
        }
        if let Some(worker) = self.worker.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, worker).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("worker task: {e}")),
                Err(_) => problems.push("worker: batch still running after 10 s".into()),
            }
        }
        if problems.is_empty() {
            Ok(self.counters.snapshot())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct App {
    ingest: Ingest,
    queue: LocalQueue,
    counters: Arc<Counters>,
}

/// Bind, then serve webhooks and run the worker in background tasks of the current runtime.
pub async fn start(opts: ServeOptions) -> Result<ServeHandle, String> {
    let queue = opts.store.queue(&opts.queue, opts.queue_options.clone());
    let secrets: Vec<&str> = opts.secrets.iter().map(String::as_str).collect();
    let ingest =
        Ingest::new(&opts.config, &secrets, Arc::new(queue.clone())).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);

    let app = Arc::new(App {
        ingest,
        queue: queue.clone(),
        counters: counters.clone(),
    });
    let router = Router::new()
        .route("/webhooks", post(webhook))
        .route("/health", get(health))
        .with_state(app);
    let mut server_stop = stopped.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let worker = tokio::spawn(worker_loop(Worker {
        queue: queue.clone(),
        store: opts.store,
        source: opts.source,
        options: opts.worker,
        counters: counters.clone(),
        on_batch: opts.on_batch,
        stopped,
    }));

    let url = format!("http://{addr}");
    Ok(ServeHandle {
        webhook_url: format!("{url}/webhooks"),
        url,
        queue,
        counters,
        stop,
        server: Some(server),
        worker: Some(worker),
    })
}

async fn webhook(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    // One byte over the limit is enough for the ingest to answer its 413.
    let cap = app.ingest.max_body_bytes().saturating_add(1);
    let bytes = match read_at_most(body, cap).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "webhook: could not read the body");
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"could not read the body"}"#.into(),
            );
        }
    };
    let answer = app.ingest.handle(&headers, &bytes, now_us()).await;
    app.counters.answer(&answer.outcome);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, answer.body)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.queue.counts().await {
        Ok(c) => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "queue": app.queue.name(),
                "visible": c.visible,
                "in_flight": c.in_flight,
                "dead_letters": c.dead,
            })
            .to_string(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "health: cannot count the queue");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"store unavailable"}"#.into(),
            )
        }
    }
}

/// The body's first `cap` bytes; the rest is never read.
async fn read_at_most(body: Body, cap: usize) -> Result<Vec<u8>, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    Ok(buf)
}

fn json(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

struct Worker {
    queue: LocalQueue,
    store: LocalStore,
    source: Arc<dyn SourceApi>,
    options: WorkerOptions,
    counters: Arc<Counters>,
    on_batch: Option<BatchHook>,
    stopped: watch::Receiver<bool>,
}

/// Receive, process, delete what succeeded; until asked to stop (between batches, so that a
/// batch is never cut in the middle).
async fn worker_loop(mut w: Worker) {
    while !*w.stopped.borrow() {
        let got = match w.queue.receive(BATCH_SIZE, RECEIVE_WAIT_MS).await {
            Ok(got) => got,
            Err(e) => {
                add(&w.counters.receive_errors, 1);
                tracing::error!(error = %e, queue = w.queue.name(), "worker: receive failed");
                let _ = tokio::time::timeout(RECEIVE_ERROR_PAUSE, w.stopped.wait_for(|s| *s)).await;
                continue;
            }
        };
        if got.is_empty() {
            continue;
        }
        let msgs: Vec<InMessage> = got.iter().map(InMessage::from).collect();
        let deps = WorkerDeps {
            source: w.source.as_ref(),
            records: &w.store,
            control: &w.store,
        };
        let report = process_batch(&deps, &msgs, &w.options).await;
        let failed: HashSet<&str> = report.failed.iter().map(String::as_str).collect();
        for m in got
            .iter()
            .filter(|m| !failed.contains(m.message_id.as_str()))
        {
            // Not deleted: it comes back after the visibility timeout, and dedup absorbs it.
            if let Err(e) = w.queue.delete(&m.receipt).await {
                tracing::warn!(error = %e, message_id = %m.message_id, "worker: delete failed");
            }
        }
        w.counters.batch(&report);
        if let Some(hook) = &w.on_batch {
            hook(&report);
        }
    }
}

/// One line per batch: what the command prints.
pub fn describe_batch(r: &BatchReport) -> String {
    let mut line = format!(
        "batch: {} messages, {} done, {} failed — {} get_by_id, {} written, {} deleted, {} unchanged, {} stale, {} duplicates",
        r.messages,
        r.messages - r.failed.len(),
        r.failed.len(),
        r.get_by_id_calls,
        r.written,
        r.deleted,
        r.unchanged,
        r.stale,
        r.duplicates,
    );
    if r.poison > 0 {
        line.push_str(&format!(", {} undecodable", r.poison));
    }
    if r.ceiling_tripped {
        line.push_str(" — 404 ceiling tripped: nothing deleted");
    }
    line
}

/// The webhook signing secrets from the variable the `[webhooks]` table names
/// (`WEBHOOK_SECRETS` by default), or an error naming it.
pub fn webhook_secrets_from_env(config: &Config) -> Result<Vec<String>, String> {
    let w = config
        .webhooks()
        .map_err(|e| format!("{e}: serve needs the signature scheme and event pointers"))?;
    let var = &w.secrets.env;
    let value = shared::config::Env::process()
        .optional(var)
        .unwrap_or_default();
    let secrets: Vec<String> = split_secrets(&value)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if secrets.is_empty() {
        return Err(format!(
            "{var} is not set: export the webhook signing secret(s) in {var} (several, separated \
             by spaces or commas, during a rotation), e.g. {var}=dev-secret, and give the sender \
             the same one"
        ));
    }
    Ok(secrets)
}

pub async fn run(args: ServeArgs) -> Result<(), String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    let secrets = webhook_secrets_from_env(&config)?;
    let secret_count = secrets.len();
    let source_secret =
        shared::source::secret_from_env(&config.source.auth).map_err(|e| e.to_string())?;
    if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let store = LocalStore::open(&args.db).map_err(|e| format!("{}: {e}", args.db.display()))?;
    // The worker's fetches share the account's budget with delta and reconciliation runs on
    // the same file.
    let source = SourceClient::new(&config, source_secret)
        .map_err(|e| e.to_string())?
        .with_budget_in(Arc::new(store.clone()));
    let queue_options = QueueOptions {
        visibility_timeout: Duration::from_secs(args.visibility_timeout_secs),
        max_receives: Some(args.max_receives),
    };
    let scheme = match config.webhooks.as_ref().map(|w| &w.scheme) {
        Some(shared::config::SignatureScheme::HmacHeader { header, encoding }) => {
            let encoding = match encoding {
                shared::config::SignatureEncoding::Hex => "hex",
                shared::config::SignatureEncoding::Base64 => "base64",
            };
            format!("HMAC-SHA256 {encoding} in {header}")
        }
        Some(shared::config::SignatureScheme::StandardWebhooks { .. }) => {
            "standard webhooks".to_owned()
        }
        None => "-".to_owned(),
    };
    let source_url = config.source.base_url.clone();
    let handle = start(ServeOptions {
        listen: args.listen,
        queue: args.queue.clone(),
        worker: WorkerOptions::default(),
        queue_options,
        on_batch: Some(Arc::new(|r: &BatchReport| {
            println!("{}", describe_batch(r))
        })),
        ..ServeOptions::new(store, config, secrets, Arc::new(source))
    })
    .await?;
    println!("listening on {}", handle.url);
    println!(
        "  POST {} (signature: {scheme}; {} secret(s))",
        handle.webhook_url, secret_count
    );
    println!(
        "  worker: queue {:?} in {}, records from {source_url}; a failing message is retried after {} s, \
         and after {} receives goes to the dead letters (syncctl dlq list)",
        args.queue,
        args.db.display(),
        args.visibility_timeout_secs,
        args.max_receives
    );
    println!("  Ctrl-C stops");
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    println!("stopping: finishing requests in flight and the current batch");
    let s = handle.shutdown().await?;
    println!(
        "stopped: {} requests ({} accepted, {} unauthorized, {} too large, {} malformed), {} events queued; \
         {} batches, {} messages, {} failed, {} get_by_id, {} written, {} deleted",
        s.requests,
        s.accepted,
        s.unauthorized,
        s.too_large,
        s.malformed,
        s.events_queued,
        s.batches,
        s.messages,
        s.messages_failed,
        s.get_by_id_calls,
        s.written,
        s.deleted
    );
    Ok(())
}

#[cfg(test)]
mod tests;
