//! `syncctl`: the operator CLI of the Sync Engine. Each subcommand lives in its own module;
//! this file only parses the command line and reports errors.

mod actor;
mod check_source;
mod cursor;
mod delta;
mod demo;
mod dlq;
mod erase;
mod get;
mod init;
mod purge;
mod reconcile;
mod resync;
mod serve;
mod sign;
mod status;
mod stores;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "syncctl", version, about = "Operate the Sync Engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the DynamoDB tables (records, control) on AWS or DynamoDB Local; idempotent.
    Init(init::InitArgs),
    /// The whole cycle locally: simulator, backfill, changes, delta, store == source.
    Demo(demo::DemoArgs),
    /// Run delta sync (every entity, or --entity) on the local store or DynamoDB.
    Delta(delta::DeltaArgs),
    /// Reconcile the store with the source (deletions, missed and stale records), locally;
    /// `approve`/`reject` answer a state machine run that waits for approval.
    Reconcile(reconcile::ReconcileArgs),
    /// Show each entity's cursor, lag, lease and last runs (delta and reconciliation).
    Status(status::StatusArgs),
    /// Webhook ingest (POST /webhooks) and the sync worker locally, on the embedded store.
    Serve(serve::ServeArgs),
    /// List or replay the work queue's dead letters (local store, or SQS).
    Dlq(dlq::DlqArgs),
    /// Print the signature headers (and a curl command) for a webhook body.
    Sign(sign::SignArgs),
    /// Probe the configured source: does it honour the filter, order, page size, pagination,
    /// ID filter, get_by_id and JSON 404s? Run after every edit of infra/endpoints.toml.
    /// Exit 0: all passed; 1: a check failed; 3: unreachable; 4: some undecided.
    CheckSource(check_source::CheckSourceArgs),
    /// Show an entity's delta cursor, or move it (`set --to TIME`, `reset`) under its lease,
    /// recorded in the run history with --actor.
    Cursor(cursor::CursorArgs),
    /// Re-sync an entity without downtime: its whole listing read again on a cursor of its own
    /// while delta and webhooks go on, then a reconciliation; resumes where it stopped.
    Resync(resync::ResyncArgs),
    /// One record: the stored copy beside the source's live record (fetched now), the verdict
    /// of the version rule and the field-level difference of the payloads.
    /// Exit 0: in sync (or deleted on both sides); 1: error; 3: out of sync; 4: found nowhere.
    Get(get::GetArgs),
    /// Remove our copy of one record (a privacy request) and keep it out: a suppression
    /// marker no delta run, webhook or reconciliation writes over, until `--lift`. Erase it at
    /// the source too; DynamoDB's point-in-time backups and stream keep copies for their
    /// retention.
    Erase(erase::EraseArgs),
    /// Remove soft-deleted records older than the retention (TOMBSTONE_RETENTION_DAYS, 90) or
    /// --older-than; never erased markers. On DynamoDB: a Scan of the whole records table.
    Purge(purge::PurgeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init();
    let result = match Cli::parse().command {
        Command::Init(args) => init::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Delta(args) => delta::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Sign(args) => sign::run(args),
        Command::CheckSource(args) => return check_source::run(args).await,
        Command::Cursor(args) => cursor::run(args).await,
        Command::Resync(args) => resync::run(args).await,
        Command::Get(args) => return get::run(args).await,
        Command::Erase(args) => erase::run(args).await,
        Command::Purge(args) => purge::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command's `--json` output: pretty JSON on stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn init_takes_table_names_and_an_endpoint() {
        let cli = Cli::try_parse_from([
            "syncctl",
            "init",
            "--records-table",
            "r",
            "--control-table",
            "c",
            "--endpoint-url",
            "http://localhost:8000",
        ])
        .expect("parse");
        let Command::Init(args) = cli.command else {
            panic!("expected init")
        };
        assert_eq!(args.records_table, "r");
        assert_eq!(args.control_table, "c");
        assert_eq!(args.endpoint_url.as_deref(), Some("http://localhost:8000"));
    }

    #[test]
    fn serve_has_local_defaults() {
        let cli = Cli::try_parse_from(["syncctl", "serve"]).expect("parse");
        let Command::Serve(a) = cli.command else {
            panic!("expected serve")
        };
        assert_eq!(a.listen.to_string(), "127.0.0.1:3002");
        assert_eq!(a.queue, "work");
        assert_eq!((a.visibility_timeout_secs, a.max_receives), (30, 5));
        assert!(Cli::try_parse_from(["syncctl", "serve", "--max-receives", "0"]).is_err());
    }

    #[test]
    fn reconcile_has_local_defaults_and_takes_its_flags() {
        let cli = Cli::try_parse_from(["syncctl", "reconcile"]).expect("parse");
        let Command::Reconcile(a) = cli.command else {
            panic!("expected reconcile")
        };
        assert_eq!(a.entity, None);
        assert!(!a.report_only && !a.approve_deletions && !a.process_queue && !a.json);
        assert_eq!(a.spill.to_str(), Some(".local/spill"));
        assert_eq!(a.queue, "work");
        assert!(!a.store.uses_dynamodb());
        let cli = Cli::try_parse_from([
            "syncctl",
            "reconcile",
            "--entity",
            "people",
            "--report-only",
            "--approve-deletions",
            "--process-queue",
            "--json",
            "--spill",
            "/tmp/s",
            "--queue",
            "q",
            "--endpoint-url",
            "http://localhost:8000",
        ])
        .expect("parse");
        let Command::Reconcile(a) = cli.command else {
            panic!("expected reconcile")
        };
        assert_eq!(a.entity.as_deref(), Some("people"));
        assert!(a.report_only && a.approve_deletions && a.process_queue && a.json);
        assert_eq!((a.spill.to_str(), a.queue.as_str()), (Some("/tmp/s"), "q"));
        assert!(a.store.uses_dynamodb());
    }

    #[test]
    fn dlq_replay_needs_all_or_ids() {
        assert!(Cli::try_parse_from(["syncctl", "dlq", "replay"]).is_err());
        assert!(Cli::try_parse_from(["syncctl", "dlq", "replay", "--all", "--id", "x"]).is_err());
        let cli = Cli::try_parse_from(["syncctl", "dlq", "replay", "--id", "a", "--id", "b"])
            .expect("parse");
        let Command::Dlq(dlq::DlqArgs {
            command: dlq::DlqCommand::Replay(r),
        }) = cli.command
        else {
            panic!("expected dlq replay")
        };
        assert_eq!(r.id, ["a", "b"]);
        assert!(!r.all);
    }

    #[test]
    fn check_source_takes_an_entity_and_json() {
        let cli = Cli::try_parse_from(["syncctl", "check-source", "--entity", "people", "--json"])
            .expect("parse");
        let Command::CheckSource(a) = cli.command else {
            panic!("expected check-source")
        };
        assert_eq!(a.entity.as_deref(), Some("people"));
        assert!(a.json);
    }

    #[test]
    fn get_takes_an_entity_an_id_and_its_flags() {
        let cli = Cli::try_parse_from(["syncctl", "get", "people", "42"]).expect("parse");
        let Command::Get(a) = cli.command else {
            panic!("expected get")
        };
        assert_eq!((a.entity.as_str(), a.id.as_str()), ("people", "42"));
        assert!(!a.json && !a.store.uses_dynamodb());
        assert_eq!(a.max_diffs, 50);
        let cli = Cli::try_parse_from([
            "syncctl",
            "get",
            "people",
            "42",
            "--json",
            "--max-diffs",
            "5",
            "--endpoint-url",
            "http://localhost:8000",
        ])
        .expect("parse");
        let Command::Get(a) = cli.command else {
            panic!("expected get")
        };
        assert!(a.json && a.store.uses_dynamodb());
        assert_eq!(a.max_diffs, 5);
        assert!(Cli::try_parse_from(["syncctl", "get", "people"]).is_err());
    }

    #[test]
    fn cursor_and_resync_take_an_entity_and_their_flags() {
        let cli = Cli::try_parse_from([
            "syncctl",
            "cursor",
            "set",
            "people",
            "--to",
            "2026-11-30T00:00:00Z",
            "--actor",
            "ana",
        ])
        .expect("parse");
        let Command::Cursor(cursor::CursorArgs {
            command: cursor::CursorCommand::Set(a),
        }) = cli.command
        else {
            panic!("expected cursor set")
        };
        assert_eq!(
            (a.entity.as_str(), a.to.as_str()),
            ("people", "2026-11-30T00:00:00Z")
        );
        assert_eq!(a.actor.as_deref(), Some("ana"));
        assert!(Cli::try_parse_from(["syncctl", "cursor", "set", "people"]).is_err());
        assert!(Cli::try_parse_from(["syncctl", "cursor", "reset"]).is_err());
        let cli = Cli::try_parse_from(["syncctl", "resync", "people", "--restart"]).expect("parse");
        let Command::Resync(a) = cli.command else {
            panic!("expected resync")
        };
        assert!(a.restart && !a.cancel);
        assert_eq!(a.pages_per_run, 1_000);
        assert!(
            Cli::try_parse_from(["syncctl", "resync", "people", "--restart", "--cancel"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["syncctl", "resync", "people", "--pages-per-run", "0"]).is_err()
        );
    }

    #[test]
    fn erase_and_purge_take_their_flags() {
        let cli = Cli::try_parse_from([
            "syncctl", "erase", "people", "42", "--actor", "dpo", "--json",
        ])
        .expect("parse");
        let Command::Erase(a) = cli.command else {
            panic!("expected erase")
        };
        assert_eq!((a.entity.as_str(), a.id.as_str()), ("people", "42"));
        assert_eq!(a.actor.as_deref(), Some("dpo"));
        assert!(a.json && !a.lift && !a.store.uses_dynamodb());
        let cli = Cli::try_parse_from(["syncctl", "erase", "--lift", "people", "42", "--dynamodb"])
            .expect("parse");
        let Command::Erase(a) = cli.command else {
            panic!("expected erase")
        };
        assert!(a.lift && a.store.uses_dynamodb());
        assert!(Cli::try_parse_from(["syncctl", "erase", "people"]).is_err());
        let cli = Cli::try_parse_from([
            "syncctl",
            "purge",
            "--older-than",
            "30d",
            "--entity",
            "people",
            "--dry-run",
            "--limit",
            "5",
        ])
        .expect("parse");
        let Command::Purge(a) = cli.command else {
            panic!("expected purge")
        };
        assert_eq!(a.older_than, Some(30 * 86_400 * 1_000_000));
        assert_eq!((a.entity.as_deref(), a.limit), (Some("people"), Some(5)));
        assert!(a.dry_run && !a.json);
        let cli = Cli::try_parse_from(["syncctl", "purge"]).expect("parse");
        let Command::Purge(a) = cli.command else {
            panic!("expected purge")
        };
        assert_eq!((a.older_than, a.dry_run), (None, false));
        assert!(Cli::try_parse_from(["syncctl", "purge", "--older-than", "1w"]).is_err());
    }

    #[test]
    fn sign_takes_a_scheme_and_a_body_file() {
        let cli = Cli::try_parse_from([
            "syncctl", "sign", "--secret", "s", "--scheme", "standard", "-",
        ])
        .expect("parse");
        let Command::Sign(a) = cli.command else {
            panic!("expected sign")
        };
        assert_eq!(a.scheme, sign::Scheme::Standard);
        assert_eq!(a.body.to_str(), Some("-"));
        assert!(
            Cli::try_parse_from(["syncctl", "sign", "--secret", "s", "--scheme", "md5", "f"])
                .is_err()
        );
    }
}
