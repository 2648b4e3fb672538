//! `syncctl delta`: one delta run per entity against any source, on the local store or DynamoDB.

use crate::stores::StoreArgs;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use shared::Config;
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, DeltaSummary, PageHook, run_delta};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct DeltaArgs {
    /// One entity (default: every configured entity).
    #[arg(long)]
    pub entity: Option<String>,
    /// Seconds re-read before the cursor.
    #[arg(long, default_value_t = 120)]
    pub overlap_secs: u64,
    /// Print the summaries as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: DeltaArgs) -> Result<(), String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    let secret = shared::source::secret_from_env(&config.source.auth).map_err(|e| e.to_string())?;
    let source = SourceClient::new(&config, secret)
        .map_err(|e| e.to_string())?
        .with_budget_in(args.store.budget().await?);
    let (records, control) = args.store.open().await?;
    let entities = config.entity_names(args.entity.as_deref()).map_err(|e| {
        format!(
            "entity {e:?} is not configured in {}",
            config.file.display()
        )
    })?;
    let mut summaries = Vec::new();
    for entity in entities {
        let s = run_one(
            &source,
            &*records,
            &*control,
            &entity,
            args.overlap_secs,
            !args.json,
        )
        .await?;
        summaries.push(s);
    }
    if args.json {
        crate::print_json(&summaries)?;
    } else {
        for s in &summaries {
            println!("{}", describe(s));
        }
    }
    Ok(())
}

pub async fn run_one(
    source: &SourceClient,
    records: &dyn shared::ports::RecordStore,
    control: &dyn shared::ports::ControlStore,
    entity: &str,
    overlap_secs: u64,
    progress: bool,
) -> Result<DeltaSummary, String> {
    let bar = if progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(entity.to_owned());
    let b = bar.clone();
    let opts = DeltaOptions {
        overlap_us: overlap_secs as i64 * 1_000_000,
        on_page: Some(PageHook(Arc::new(move |s: &DeltaSummary| {
            b.set_message(format!(
                "{} seen, {} written, cursor {}",
                s.seen,
                s.written(),
                s.cursor_after.as_deref().unwrap_or("-")
            ));
            b.tick();
        }))),
        ..DeltaOptions::default()
    };
    let r = run_delta(source, records, control, entity, &opts).await;
    bar.finish_and_clear();
    r.map_err(|e| format!("{entity}: {e}"))
}

pub fn describe(s: &DeltaSummary) -> String {
    format!(
        "{}: {} — {} seen, {} inserted, {} updated, {} unchanged, {} stale, {} pages, {} ms; cursor {} → {}",
        s.entity,
        s.status.as_str(),
        s.seen,
        s.inserted,
        s.updated,
        s.unchanged,
        s.stale,
        s.pages,
        s.duration_ms,
        s.cursor_before.as_deref().unwrap_or("(none)"),
        s.cursor_after.as_deref().unwrap_or("(none)"),
    ) + &rejected(s)
}

/// The records that cannot be synced, when there were any: counted, skipped, with their IDs
/// and reasons (the first `REJECTED_IDS_KEPT`).
fn rejected(s: &DeltaSummary) -> String {
    if s.rejected == 0 {
        return String::new();
    }
    let shown: Vec<String> = s.rejected_ids.iter().map(ToString::to_string).collect();
    format!(
        "; {} rejected (cannot be synced), skipped: {}",
        s.rejected,
        shown.join(", ")
    )
}
