//! `syncctl resync ENTITY`: a full re-sync without downtime (`shared::sync::resync`): the
//! entity's whole listing read again on a cursor and a lease of its own while delta runs and
//! webhooks go on, every page through the version rule (unchanged records cost no write) and
//! checkpointed, then a reconciliation of the entity (deletions). Interrupted, the same command
//! goes on from the checkpoint; `--restart` starts again from the beginning, `--cancel` calls it
//! off. On a deployed stack the delta function runs it (`{"entity": ..., "resync": true}`);
//! this command runs it here, on the local store or DynamoDB.

use crate::reconcile::{ReconcileArgs, Report};
use crate::stores::StoreArgs;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shared::Config;
use shared::core::timefmt::{format_rfc3339, now_us, parse_rfc3339};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, DeltaSummary, PageHook, RunStatus};
use shared::sync::resync::{self, Closing, Phase, Requested};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Args)]
pub struct ResyncArgs {
    pub entity: String,
    /// Start again from the beginning when one is under way (default: go on with it).
    #[arg(long, conflicts_with = "cancel")]
    pub restart: bool,
    /// Call off the re-sync under way and exit.
    #[arg(long)]
    pub cancel: bool,
    /// Who asks (default: the user name locally, the caller's ARN on AWS).
    #[arg(long)]
    pub actor: Option<String>,
    /// Pages per run (a checkpoint after every page either way); runs follow one another until
    /// the listing is read.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub pages_per_run: u64,
    /// Stop after this many runs (the re-sync stays under way: run the command again).
    #[arg(long)]
    pub max_runs: Option<u64>,
    /// The closing reconciliation's spill folder.
    #[arg(long, default_value = ".local/spill")]
    pub spill: PathBuf,
    /// The closing reconciliation's queue for targeted syncs (drained here).
    #[arg(long, default_value = "work")]
    pub queue: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// What the command did, printed as a table or JSON.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub entity: String,
    /// `started` (a new re-sync), `continued` (one under way), `cancelled`, `not_running`.
    pub request: String,
    /// `idle` (done), `reading` (stopped: run again to go on) or `reconcile`.
    pub phase: Phase,
    pub runs: u64,
    pub pages: u64,
    pub seen: u64,
    pub written: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub rejected: u64,
    pub cursor: Option<String>,
    /// The closing reconciliation's report, once it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation: Option<Report>,
}

pub async fn run(args: ResyncArgs) -> Result<(), String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    crate::cursor::check_entity(&config, &args.entity)?;
    let actor = crate::actor::resolve(args.actor.as_deref(), &args.store).await?;
    let (records, control) = args.store.open().await?;
    let entity = args.entity.as_str();
    let mut out = Outcome {
        entity: entity.to_owned(),
        request: String::new(),
        phase: Phase::Idle,
        runs: 0,
        pages: 0,
        seen: 0,
        written: 0,
        unchanged: 0,
        stale: 0,
        rejected: 0,
        cursor: None,
        reconciliation: None,
    };
    let fail = |e: shared::error::SyncError| format!("{entity}: {e}");
    if args.cancel {
        let cancelled = resync::cancel(&*control, entity, &actor)
            .await
            .map_err(fail)?;
        out.request = if cancelled {
            "cancelled"
        } else {
            "not_running"
        }
        .into();
        return print(&out, args.json);
    }
    out.request = match resync::request(&*control, entity, &actor, args.restart)
        .await
        .map_err(fail)?
    {
        Requested::Started { .. } => "started",
        Requested::AlreadyActive { .. } => "continued",
    }
    .into();

    let secret = shared::source::secret_from_env(&config.source.auth).map_err(|e| e.to_string())?;
    let source = SourceClient::new(&config, secret)
        .map_err(|e| e.to_string())?
        .with_budget_in(args.store.budget().await?);

    let bar = Progress::new(entity, !args.json);
    let progress = bar.clone();
    let base = DeltaOptions {
        max_pages: args.pages_per_run,
        on_page: Some(PageHook(Arc::new(move |s: &DeltaSummary| progress.page(s)))),
        ..DeltaOptions::default()
    };
    loop {
        let phase = resync::state(&*control, entity)
            .await
            .map_err(|e| format!("{entity}: {e}"))?
            .phase;
        out.phase = phase;
        if phase != Phase::Reading || args.max_runs.is_some_and(|m| out.runs >= m) {
            break;
        }
        let opts = base.next_run();
        let Some(s) = resync::run(&source, &*records, &*control, entity, &opts)
            .await
            .map_err(|e| {
                bar.finish();
                format!("{entity}: re-sync run failed (run the command again to go on from its checkpoint): {e}")
            })?
        else {
            bar.finish();
            return Err(format!(
                "{entity}: another re-sync run holds its lease (the delta function, or another syncctl); \
                 `syncctl cursor show {entity}` shows it"
            ));
        };
        bar.done_run(&s);
        out.runs += 1;
        out.pages += s.pages;
        out.seen += s.seen;
        out.written += s.written();
        out.unchanged += s.unchanged;
        out.stale += s.stale;
        out.rejected += s.rejected;
        out.cursor = s.cursor_after.clone();
        if s.status == RunStatus::Partial && s.stopped_by.as_deref() == Some("budget") {
            // The shared budget is busy with delta and webhooks: give them room.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    bar.finish();

    if out.phase == Phase::Reconcile {
        let rargs = ReconcileArgs {
            command: None,
            entity: Some(entity.to_owned()),
            report_only: false,
            approve_deletions: false,
            spill: args.spill.clone(),
            queue: args.queue.clone(),
            process_queue: true,
            json: args.json,
            store: args.store.clone(),
        };
        let report: Mutex<Option<Report>> = Mutex::new(None);
        let closing = resync::reconciled(&*control, entity, |_name| async {
            let r = crate::reconcile::execute(&rargs, &config, &source)
                .await
                .map_err(shared::error::SyncError::InvalidChange)?;
            crate::reconcile::conclude(&r).map_err(shared::error::SyncError::InvalidChange)?;
            let v = serde_json::to_value(&r).unwrap_or_default();
            *report.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            Ok(v)
        })
        .await
        .map_err(|e| format!("{entity}: the closing reconciliation failed (run the command again to retry it): {e}"))?;
        if let Closing::Done(_) = closing {
            out.phase = Phase::Idle;
        }
        out.reconciliation = report.into_inner().unwrap_or_else(|p| p.into_inner());
    }
    print(&out, args.json)
}

fn print(out: &Outcome, json: bool) -> Result<(), String> {
    if json {
        crate::print_json(out)?;
        return Ok(());
    }
    let e = &out.entity;
    match out.request.as_str() {
        "cancelled" => println!("{e}: re-sync cancelled (recorded in its history)"),
        "not_running" => println!("{e}: no re-sync under way"),
        _ => {
            println!(
                "{e}: re-sync {}: {} runs, {} pages, {} records read, {} written, {} unchanged, {} stale, {} rejected; cursor {}",
                out.request,
                out.runs,
                out.pages,
                out.seen,
                out.written,
                out.unchanged,
                out.stale,
                out.rejected,
                out.cursor.as_deref().unwrap_or("-")
            );
            match out.phase {
                Phase::Idle => println!("{e}: re-sync done (read to the end and reconciled)"),
                Phase::Reading => println!(
                    "{e}: re-sync under way: run `syncctl resync {e}` again to go on from its checkpoint"
                ),
                Phase::Reconcile => println!(
                    "{e}: read to the end; its reconciliation is still to run: `syncctl resync {e}` again"
                ),
            }
            if let Some(r) = &out.reconciliation {
                print!("{}", r.render());
            }
        }
    }
    Ok(())
}

/// The progress bar: how far the re-sync's cursor has come from the first record it read to
/// the time the command started (the listing is ordered by the delta field), and the counts.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
    start_us: Arc<Mutex<Option<i64>>>,
    end_us: i64,
    before: Arc<Mutex<(u64, u64, u64)>>,
}

impl Progress {
    fn new(entity: &str, shown: bool) -> Progress {
        let bar = if shown {
            ProgressBar::new(1_000)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix}: [{bar:30}] {percent:>3}% {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(entity.to_owned());
        Progress {
            bar,
            start_us: Arc::new(Mutex::new(None)),
            end_us: now_us(),
            before: Arc::new(Mutex::new((0, 0, 0))),
        }
    }

    /// After each page of a run: `s` counts from the run's start.
    fn page(&self, s: &DeltaSummary) {
        let at = s
            .cursor_after
            .as_deref()
            .and_then(|c| parse_rfc3339(c).ok());
        if let Some(at) = at {
            let mut start = self.start_us.lock().unwrap_or_else(|p| p.into_inner());
            let first = *start.get_or_insert(at);
            let span = (self.end_us - first).max(1) as f64;
            let done = ((at - first).max(0) as f64 / span * 1_000.0).min(1_000.0);
            self.bar.set_position(done as u64);
        }
        let (seen, written, unchanged) = *self.before.lock().unwrap_or_else(|p| p.into_inner());
        self.bar.set_message(format!(
            "{} read, {} written, {} unchanged; cursor {}",
            seen + s.seen,
            written + s.written(),
            unchanged + s.unchanged,
            at.map(format_rfc3339).unwrap_or_else(|| "-".into())
        ));
    }

    fn done_run(&self, s: &DeltaSummary) {
        let mut b = self.before.lock().unwrap_or_else(|p| p.into_inner());
        b.0 += s.seen;
        b.1 += s.written();
        b.2 += s.unchanged;
        if s.status == RunStatus::Succeeded {
            self.bar.set_position(1_000);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
