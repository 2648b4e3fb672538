//! `syncctl`: the operator CLI of the Sync Engine. Each subcommand lives in its own module;
//! this file only parses the command line and reports errors.

mod delta;
mod demo;
mod init;
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
    /// Show each entity's cursor, lag, lease and last runs.
    Status(status::StatusArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init();
    let result = match Cli::parse().command {
        Command::Init(args) => init::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Delta(args) => delta::run(args).await,
        Command::Status(args) => status::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
}
