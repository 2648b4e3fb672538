//! `source-sim`: serve the third-party API simulator until Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use source_sim::{
    Envelope, Granularity, Misbehave, RateLimit, RetrySchedule, SimConfig, TimestampFormat,
    WebhookFaults, WebhookScheme, WebhookTarget, parse_timestamp,
};

/// A Planning Center-like JSON:API simulator (people, donations) with faults and an admin API
/// under /__admin/.
#[derive(Debug, Parser)]
#[command(name = "source-sim", version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080, env = "SOURCE_SIM_PORT")]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Seed of the generated content and of the chaos RNG.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Initial number of people.
    #[arg(long, default_value_t = 1_000)]
    people: usize,
    /// Initial number of donations.
    #[arg(long, default_value_t = 1_000)]
    donations: usize,
    /// Timestamp of record 1 (RFC 3339 or epoch seconds).
    #[arg(long, default_value = "2024-01-01T00:00:00Z")]
    base_time: String,
    /// Microseconds between consecutive timestamp groups.
    #[arg(long, default_value_t = 1_000_000)]
    step_us: i64,
    /// Consecutive records sharing one timestamp.
    #[arg(long, default_value_t = 1)]
    tie_group: usize,
    /// Stored timestamp precision: micros, millis or seconds.
    #[arg(long, default_value = "micros", value_parser = str::parse::<Granularity>)]
    granularity: Granularity,
    /// Timestamp format in records: rfc3339, epoch_seconds or epoch_millis.
    #[arg(long, default_value = "rfc3339", value_parser = str::parse::<TimestampFormat>)]
    format: TimestampFormat,
    /// Document shape: jsonapi or bare.
    #[arg(long, default_value = "jsonapi", value_parser = str::parse::<Envelope>)]
    envelope: Envelope,
    /// Rate limit as REQUESTS/SECONDS, e.g. 100/20 (Planning Center's).
    #[arg(long, value_parser = str::parse::<RateLimit>)]
    rate_limit: Option<RateLimit>,
    /// Expected Authorization header value (e.g. "Bearer abc"); anything else gets a 401.
    #[arg(long, env = "SOURCE_SIM_AUTH")]
    auth: Option<String>,
    /// Probability of a random JSON 5xx per request.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Probability of a random HTML 502 page per request.
    #[arg(long, default_value_t = 0.0)]
    html_rate: f64,
    /// Probability of a random truncated 200 body per request.
    #[arg(long, default_value_t = 0.0)]
    truncate_rate: f64,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Signed clock skew of the simulator, in milliseconds.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_ms: i64,
    /// Misbehaviour flags to switch on, comma-separated: ignore_filter, ignore_id_filter,
    /// ignore_order, ignore_offset, ignore_page, ignore_cursor, clamp_last_page, ignore_per_page,
    /// reverse_order (hostile-source tests; `PUT /__admin/misbehave` changes them at run time).
    #[arg(long, default_value = "", value_parser = str::parse::<Misbehave>)]
    misbehave: Misbehave,
    /// Deliver every change as a signed webhook (a POST) to this URL.
    #[arg(long, requires = "webhook_secret", env = "SOURCE_SIM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Webhook signing secret (whsec_<base64> for the standard scheme).
    #[arg(long, env = "SOURCE_SIM_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Webhook signature scheme: pco-hex, pco-base64 or standard (Standard Webhooks).
    #[arg(long, default_value = "pco-hex", value_parser = str::parse::<WebhookScheme>)]
    webhook_scheme: WebhookScheme,
    /// Waits before webhook retries: pco (16 attempts over ~5 days), fast, none, or ms list
    /// like 50,100,200.
    #[arg(long, default_value = "pco", value_parser = str::parse::<RetrySchedule>)]
    webhook_retry: RetrySchedule,
    /// Events per webhook body, at most (Planning Center batches).
    #[arg(long, default_value_t = 1)]
    webhook_batch: usize,
    /// Probability that a webhook delivery is never sent.
    #[arg(long, default_value_t = 0.0)]
    webhook_drop_rate: f64,
    /// Probability that a webhook delivery is sent twice (same ID).
    #[arg(long, default_value_t = 0.0)]
    webhook_duplicate_rate: f64,
    /// Probability that a webhook delivery is sent after the next one.
    #[arg(long, default_value_t = 0.0)]
    webhook_reorder_rate: f64,
    /// Fixed delay before each webhook delivery, in milliseconds.
    #[arg(long, default_value_t = 0)]
    webhook_delay_ms: u64,
    /// Further random delay (0..=N ms) before each webhook delivery.
    #[arg(long, default_value_t = 0)]
    webhook_jitter_ms: u64,
    /// Serve every person as exactly this many bytes of JSON, by sizing its notes (optional
    /// parts left out when even the shortest notes are too long; below about 970 bytes some
    /// people stay longer); unset: natural sizes, about 1,100 bytes.
    #[arg(long)]
    record_bytes: Option<usize>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let Some(base_time_us) = parse_timestamp(&args.base_time, TimestampFormat::EpochSeconds) else {
        eprintln!(
            "source-sim: --base-time {:?} is not a timestamp",
            args.base_time
        );
        return ExitCode::from(2);
    };
    let webhook = args.webhook_url.map(|url| {
        WebhookTarget::new(
            url,
            args.webhook_scheme,
            args.webhook_secret.unwrap_or_default(),
        )
        .with_retry(args.webhook_retry)
        .with_max_events_per_delivery(args.webhook_batch)
        .with_faults(WebhookFaults {
            drop_rate: args.webhook_drop_rate,
            duplicate_rate: args.webhook_duplicate_rate,
            reorder_rate: args.webhook_reorder_rate,
            delay: Duration::from_millis(args.webhook_delay_ms),
            jitter: Duration::from_millis(args.webhook_jitter_ms),
        })
    });
    let cfg = SimConfig {
        seed: args.seed,
        people: args.people,
        donations: args.donations,
        base_time_us,
        step_us: args.step_us,
        tie_group: args.tie_group,
        granularity: args.granularity,
        timestamp_format: args.format,
        envelope: args.envelope,
        rate_limit: args.rate_limit,
        auth: args.auth,
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        html_rate: args.html_rate,
        truncate_rate: args.truncate_rate,
        clock_skew_ms: args.clock_skew_ms,
        addr: Some(SocketAddr::new(args.host, args.port)),
        webhook,
        record_bytes: args.record_bytes,
        ..SimConfig::default()
    };
    let sim = match source_sim::start(cfg).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("source-sim: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    sim.set_misbehave(args.misbehave);
    println!("listening on {}", sim.base_url());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("source-sim: cannot wait for Ctrl-C: {e}");
    }
    sim.shutdown().await;
    ExitCode::SUCCESS
}
