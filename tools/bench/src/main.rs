//! Benchmarks that print JSON figures (never timed tests). Run in release mode:
//! `cargo run --profile bench-fast -p bench -- <parse|source|delta> [...]`.

mod budget;
mod converge;
mod cost;
mod fuzz;
mod measure;
mod reconcile;
mod reconcile_s3;
mod sim;
mod store;
mod webhooks;

use clap::{Parser, Subcommand};
use measure::{cpu_time, peak_rss_bytes};
use shared::core::timefmt::TimestampFormat;
use shared::source::parse::{RecordShape, parse_id_page, parse_record_page, pointer_segments};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Sync Engine benchmarks (JSON on stdout)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Page parsing: records/s per core of CPU time for ~1 KB JSON:API records.
    Parse {
        #[arg(long, default_value_t = 2_000_000)]
        records: usize,
    },
    /// `stream_ids` or `list_changed_since` against the simulator in a separate process.
    Source {
        #[arg(long, value_enum)]
        op: sim::SourceOp,
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
    },
    /// Delta sync of N changed records from the simulator into the local store, then a re-run.
    Delta {
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// The local store's file (deleted first).
        #[arg(long, default_value = "target/bench-delta.sqlite")]
        db: std::path::PathBuf,
    },
    /// The local store alone: a delta sync's writes of N generated records (no source client).
    Store {
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// The local store's file (deleted first).
        #[arg(long, default_value = "target/bench-store.sqlite")]
        db: std::path::PathBuf,
    },
    /// Reconciliation merge + diff: N source against N destination (id, version) pairs in a
    /// spill folder.
    Reconcile(reconcile::ReconcileBenchArgs),
    /// `reconcile` on `S3Spill` against moto (AWS_ENDPOINT_URL_S3, a fresh bucket): S3 requests
    /// per phase and per operation, counted by an SDK interceptor.
    ReconcileS3(reconcile_s3::ReconcileS3Args),
    /// The webhook ingest handler's own work per request (p50, p99; no SQS round trip).
    Ingest {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// The sync worker on the embedded store against the in-process simulator: messages/s,
    /// and get_by_id calls per event when bursts hit a few records.
    Worker {
        #[arg(long, default_value_t = 5_000)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        hot_records: usize,
    },
    /// Source change to visible in the store through `syncctl serve` (separate processes).
    Freshness {
        #[arg(long, default_value_t = 200)]
        changes: usize,
        #[arg(long, default_value = "target/bench-freshness.sqlite")]
        db: std::path::PathBuf,
    },
    /// Zipped size of each function's release binary in `--dir`.
    BinarySizes {
        #[arg(long, default_value = "target/release")]
        dir: std::path::PathBuf,
    },
    /// Property tests of every parser of untrusted input (`shared::fuzz`), N cases per target;
    /// the last line is one JSON object.
    Fuzz(fuzz::FuzzArgs),
    /// Seeded convergence scenarios (issue 13); the last line is one JSON object.
    Converge {
        #[arg(long, default_value_t = 2_000)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
    },
    /// One rate budget shared by a backfill, a listing and the worker, against the simulator's
    /// limit (issue 14): use of the limit, 429s, webhook freshness idle and busy, budget store
    /// calls per source request; the last line is one JSON object.
    Budget(budget::BudgetArgs),
    /// Delta sync into DynamoDB (Local, from AWS_ENDPOINT_URL_DYNAMODB): requests per record.
    DeltaDynamodb {
        #[arg(long, default_value_t = 5_000)]
        records: usize,
    },
    /// AWS requests of each path for ~1 KB records against the emulators, priced at us-east-1
    /// list prices per million records (issue 16); the last line is one JSON object.
    Cost(cost::CostArgs),
}

fn main() {
    let cli = Cli::parse();
    let out = match cli.cmd {
        Cmd::Parse { records } => parse_bench(records),
        Cmd::Source { op, records } => sim::source_bench(op, records),
        Cmd::Delta { records, db } => sim::delta_bench(records, &db),
        Cmd::Store { records, db } => store::store_bench(records, &db),
        Cmd::DeltaDynamodb { records } => sim::delta_dynamodb_bench(records),
        Cmd::Reconcile(args) => reconcile::run(&args).unwrap_or_else(|e| {
            eprintln!("reconcile bench failed: {e}");
            std::process::exit(1)
        }),
        Cmd::ReconcileS3(args) => reconcile_s3::run(&args).unwrap_or_else(|e| {
            eprintln!("reconcile-s3 bench failed: {e}");
            std::process::exit(1)
        }),
        Cmd::Ingest { requests } => webhooks::ingest_bench(requests),
        Cmd::Worker {
            messages,
            hot_records,
        } => webhooks::worker_bench(messages, hot_records),
        Cmd::Freshness { changes, db } => webhooks::freshness_bench(changes, &db),
        Cmd::BinarySizes { dir } => webhooks::binary_sizes(&dir),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Converge { seeds, first_seed } => converge::main(seeds, first_seed),
        Cmd::Budget(args) => budget::run(&args),
        Cmd::Cost(args) => cost::main(&args),
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

/// A ~1 KB JSON:API person, shaped like the simulator's.
fn person(i: usize) -> String {
    let notes: String = (0..51).map(|k| format!("note{}-{} ", i % 97, k)).collect();
    format!(
        r#"{{"type":"Person","id":"{i}","attributes":{{"first_name":"First{i}","last_name":"Last{}","email":"person{i}@example.org","phone":"+1-555-{:04}","address":{{"street":"{} Main St","city":"Springfield","zip":"{:05}"}},"birthdate":"1980-0{}-1{}","membership":"member","status":"active","notes":"{notes}","tags":["a","b","c"],"created_at":"2020-01-01T00:00:00Z","updated_at":"2024-05-01T12:{:02}:{:02}.{:06}Z"}},"relationships":{{"households":{{"data":[{{"type":"Household","id":"{}"}}]}}}},"links":{{"self":"https://api.example.org/people/v2/people/{i}"}}}}"#,
        i * 7,
        i % 10_000,
        i % 900,
        i % 99_999,
        1 + i % 9,
        i % 10,
        (i / 60) % 60,
        i % 60,
        i % 1_000_000,
        i / 3
    )
}

fn parse_bench(records: usize) -> serde_json::Value {
    let per_page = 100;
    let pages: Vec<String> = (0..10)
        .map(|p| {
            let recs: Vec<String> = (0..per_page).map(|k| person(p * per_page + k)).collect();
            format!(
                r#"{{"data":[{}],"included":[],"links":{{"next":"https://api.example.org/people/v2/people?offset={}"}},"meta":{{"total_count":1000000,"count":{per_page}}}}}"#,
                recs.join(","),
                (p + 1) * per_page
            )
        })
        .collect();
    let avg_record_bytes = pages.iter().map(String::len).sum::<usize>() / (pages.len() * per_page);
    let shape = RecordShape {
        records_pointer: pointer_segments("/data"),
        id_pointer: pointer_segments("/id"),
        delta_pointer: pointer_segments("/attributes/updated_at"),
        total_count_pointer: Some(pointer_segments("/meta/total_count")),
        next_link_pointer: Some(pointer_segments("/links/next")),
        next_cursor_pointer: None,
        timestamp_format: TimestampFormat::Rfc3339,
        timestamp_offset: None,
    };
    let rounds = records.div_ceil(per_page);
    let (c0, t0) = (cpu_time(), Instant::now());
    let mut checksum = 0u64;
    for r in 0..rounds {
        let page = parse_record_page("people", &pages[r % pages.len()], &shape, 1)
            .expect("bench page parses");
        checksum = checksum
            .wrapping_add(page.records.len() as u64 + (page.records[0].version.hash.0 as u64 & 1));
    }
    let (cpu_full, wall_full) = ((cpu_time() - c0).as_secs_f64(), t0.elapsed().as_secs_f64());
    let (c1, t1) = (cpu_time(), Instant::now());
    for r in 0..rounds {
        let page = parse_id_page(&pages[r % pages.len()], &shape).expect("bench page parses");
        checksum = checksum.wrapping_add(page.ids.len() as u64);
    }
    let (cpu_ids, wall_ids) = ((cpu_time() - c1).as_secs_f64(), t1.elapsed().as_secs_f64());
    let n = (rounds * per_page) as f64;
    serde_json::json!({
        "bench": "parse",
        "records": rounds * per_page,
        "avg_record_bytes": avg_record_bytes,
        "parsed": "records located at /data as raw slices; ID and delta extracted by JSON pointer; xxh3-128 of the raw bytes; payload kept as raw JSON (one copy)",
        "full_records_per_cpu_second": (n / cpu_full).round(),
        "full_records_per_wall_second": (n / wall_full).round(),
        "full_mb_per_cpu_second": ((n * avg_record_bytes as f64) / cpu_full / 1e6 * 10.0).round() / 10.0,
        "id_pairs_per_cpu_second": (n / cpu_ids).round(),
        "id_pairs_per_wall_second": (n / wall_ids).round(),
        "peak_rss_bytes": peak_rss_bytes(),
        "checksum": checksum,
    })
}
