//! `bench fuzz`: the property targets of `shared::fuzz` (the ones `cargo test` runs with a short
//! budget) with many more cases. One JSON line per target as it finishes, then, as the last
//! line, one JSON object: cases per target, failures, seconds, the seed. Exits 1 on a failure;
//! a failure holds its minimal input (proptest stops a target at its first failure and shrinks
//! it), and `--seed` with the same `--cases` replays it.

use serde_json::{Map, Value, json};
use shared::fuzz::{Budget, TARGETS};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Cases per target.
    #[arg(long, default_value_t = 10_000)]
    pub cases: u32,
    /// The generator's seed (default: from the clock; printed, so that a failure replays).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run only these targets (repeatable): webhook_verify, webhook_extract, config,
    /// json_scan, run_reader, envelope, step_input.
    #[arg(long)]
    pub target: Vec<String>,
}

/// Run the targets, print the figures, and exit (1 on any failure or unknown target).
pub fn run(args: &FuzzArgs) -> ! {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    if let Some(unknown) = args
        .target
        .iter()
        .find(|t| !TARGETS.iter().any(|x| x.name == t.as_str()))
    {
        eprintln!("unknown --target {unknown}");
        std::process::exit(2);
    }
    let started = Instant::now();
    let (mut cases, mut failed) = (Map::new(), Map::new());
    for t in TARGETS
        .iter()
        .filter(|t| args.target.is_empty() || args.target.iter().any(|x| x == t.name))
    {
        let start = Instant::now();
        let outcome = (t.run)(Budget {
            cases: args.cases,
            seed,
        });
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({"target": t.name, "cases": outcome.cases, "seconds": seconds,
                "failure": outcome.failure})
        );
        cases.insert(t.name.into(), outcome.cases.into());
        if let Some(f) = outcome.failure {
            failed.insert(t.name.into(), Value::from(f));
        }
    }
    let failures = failed.len();
    println!(
        "{}",
        json!({"seed": seed, "cases": cases, "failures": failures, "failed": failed,
            "seconds": started.elapsed().as_secs_f64()})
    );
    std::process::exit(if failures == 0 { 0 } else { 1 })
}
