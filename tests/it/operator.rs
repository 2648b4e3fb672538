//! The operator's cursor and re-sync commands as an operator runs them: the real `syncctl`
//! binary against the simulator, on the embedded store and on DynamoDB Local (tables made by
//! `syncctl init`; the caller's ARN from moto's STS).
//!
//! - `cursor show|set|reset`: a delta run reads from where the cursor was put; each change is
//!   in the run history with its actor; a run holding the lease makes a change fail and change
//!   nothing; a cursor in the future is refused.
//! - `resync`: a record the source committed late with an old timestamp (behind the delta
//!   cursor, so delta never reads it) and a record deleted at the source while no webhook said
//!   so. An interrupted re-sync (`--max-runs`) leaves the entity's delta cursor alone and goes
//!   on from its checkpoint; a delta run between writes what changed meanwhile; the end reads
//!   everything (unchanged records cost no write), then the reconciliation deletes what the
//!   source no longer has.

use crate::cli::{Target, syncctl, text};
use crate::harness::{emulators, scratch, unique_name};
use serde_json::Value;
use shared::core::cursor::DeltaCursor;
use shared::core::timefmt::{now_us, parse_rfc3339};
use shared::model::Strategy;
use shared::ports::{JobKind, LeaseOutcome};
use source_sim::{Entity, SimConfig, SimHandle};
use std::process::Output;

/// The people's timestamps: the simulator's first record is at this instant, one a second.
const T0: &str = "2024-01-01T00:00:00Z";

async fn run(sim: &SimHandle, target: &Target, args: &[&str]) -> Output {
    syncctl(sim, target, args).await
}

fn ok(o: &Output, what: &str) -> Value {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{what}: --json prints JSON ({e}): {}", text(&o.stdout)))
}

/// A delta run of people: its summary.
async fn delta(sim: &SimHandle, target: &Target) -> Value {
    let v = ok(
        &run(sim, target, &["delta", "--entity", "people", "--json"]).await,
        "delta",
    );
    v[0].clone()
}

async fn delta_seen(sim: &SimHandle, target: &Target) -> u64 {
    delta(sim, target).await["seen"].as_u64().expect("seen")
}

async fn dynamo_target(sim: &SimHandle, label: &str) -> Target {
    let target = Target::Dynamo {
        endpoint: emulators().dynamodb_url.clone(),
        records: unique_name(&format!("it-{label}-records")),
        control: unique_name(&format!("it-{label}-control")),
    };
    let out = run(sim, &target, &["init"]).await;
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    target
}

async fn cursor_scenario(target: Target, default_actor: &dyn Fn(&str) -> bool) {
    let sim = testkit::sim::people(30).await;
    assert_eq!(delta_seen(&sim, &target).await, 30);
    let shown = ok(
        &run(&sim, &target, &["cursor", "show", "people", "--json"]).await,
        "show",
    );
    let synced_cursor = shown["cursor"].as_str().expect("a cursor").to_owned();
    assert_eq!(shown["changes"], serde_json::json!([]));
    assert_eq!(shown["resync"]["phase"], "idle");

    // Set: the next run reads from there (people 11 to 30: 20 records).
    let t = parse_rfc3339(T0).unwrap() + 10_000_000;
    let to = shared::core::timefmt::format_rfc3339(t);
    let set = ok(
        &run(
            &sim,
            &target,
            &[
                "cursor", "set", "people", "--to", &to, "--actor", "ana", "--json",
            ],
        )
        .await,
        "set",
    );
    assert_eq!(set["before"], synced_cursor.as_str());
    assert_eq!(set["after"], to.as_str());
    assert_eq!(delta_seen(&sim, &target).await, 20);

    // Reset, by the default actor: the next run reads everything again, and writes nothing.
    let reset = ok(
        &run(&sim, &target, &["cursor", "reset", "people", "--json"]).await,
        "reset",
    );
    let actor = reset["actor"].as_str().expect("an actor");
    assert!(default_actor(actor), "{actor}");
    assert_eq!(reset["after"], Value::Null);
    assert_eq!(delta_seen(&sim, &target).await, 30);

    // Both changes in the history, newest first, with who made them.
    let shown = ok(
        &run(&sim, &target, &["cursor", "show", "people", "--json"]).await,
        "show",
    );
    let changes = shown["changes"].as_array().expect("changes");
    let by: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c["action"].as_str().unwrap(), c["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(by, [("cursor_reset", actor), ("cursor_set", "ana")]);
    let table = run(&sim, &target, &["cursor", "show", "people"]).await;
    assert!(
        text(&table.stdout).contains("cursor_set"),
        "{}",
        text(&table.stdout)
    );

    // A run holding the lease: the change fails, naming it, and changes nothing.
    let control = target.control().await;
    let before = control.job_state("people", JobKind::Delta).await.unwrap();
    assert!(matches!(
        control
            .acquire_lease("people", JobKind::Delta, "busy-run", now_us(), 60_000_000)
            .await
            .unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
    let refused = run(
        &sim,
        &target,
        &["cursor", "reset", "people", "--actor", "bo"],
    )
    .await;
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("busy-run") && err.contains("try again"),
        "{err}"
    );
    let after = control.job_state("people", JobKind::Delta).await.unwrap();
    assert_eq!(after.cursor, before.cursor);
    control
        .release_lease("people", JobKind::Delta, "busy-run")
        .await
        .unwrap();

    // A cursor in the future would make every run read nothing: refused.
    let refused = run(
        &sim,
        &target,
        &[
            "cursor",
            "set",
            "people",
            "--to",
            "2999-01-01T00:00:00Z",
            "--actor",
            "bo",
        ],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("in the future"),
        "{}",
        text(&refused.stderr)
    );
}

#[tokio::test]
async fn syncctl_cursor_on_the_local_store() {
    let dir = scratch("cursor");
    cursor_scenario(Target::Local(dir.join("sync.sqlite")), &|a| {
        a == crate::cli::LOCAL_USER
    })
    .await;
}

#[tokio::test]
async fn syncctl_cursor_on_dynamodb_local_records_the_callers_arn() {
    let sim = testkit::sim::people(1).await;
    let target = dynamo_target(&sim, "cursor").await;
    drop(sim);
    // moto's STS answers GetCallerIdentity (AWS_ENDPOINT_URL_STS, set by `cli::syncctl`).
    cursor_scenario(target, &|a| a.starts_with("arn:aws:")).await;
}

async fn resync_scenario(target: Target, spill: &std::path::Path) {
    let spill = spill.display().to_string();
    let sim = testkit::sim::start(SimConfig {
        people: 250,
        donations: 0,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(delta_seen(&sim, &target).await, 250);
    let records = target.open().await;
    let control = target.control().await;
    let delta_cursor = control
        .job_state("people", JobKind::Delta)
        .await
        .unwrap()
        .cursor;

    // Committed late with an old timestamp: behind the delta cursor, delta never reads it.
    let late = sim
        .sim()
        .create(Entity::People, Some(parse_rfc3339(T0).unwrap() + 5_500_000));
    // (It reads the boundary record again, unchanged; nothing else.)
    let d = delta(&sim, &target).await;
    assert_eq!(
        (d["inserted"].as_u64(), d["unchanged"].as_u64()),
        (Some(0), Some(1)),
        "{d}"
    );
    assert!(
        records
            .get("people", &late.id.to_string())
            .await
            .unwrap()
            .is_none()
    );
    // Deleted at the source with no webhook: still live here.
    assert!(sim.sim().delete(Entity::People, 3));

    // Interrupted: one run of one page.
    let first = ok(
        &run(
            &sim,
            &target,
            &[
                "resync",
                "people",
                "--actor",
                "ana",
                "--pages-per-run",
                "1",
                "--max-runs",
                "1",
                "--spill",
                &spill,
                "--json",
            ],
        )
        .await,
        "resync (interrupted)",
    );
    assert_eq!(
        (first["request"].as_str(), first["phase"].as_str()),
        (Some("started"), Some("reading"))
    );
    assert_eq!(
        (first["runs"].as_u64(), first["seen"].as_u64()),
        (Some(1), Some(100))
    );
    // The late record was on that first page: written, by the re-sync.
    let got = records
        .get("people", &late.id.to_string())
        .await
        .unwrap()
        .expect("written");
    assert_eq!(got.written_by, Strategy::Resync);
    let shown = ok(
        &run(&sim, &target, &["cursor", "show", "people", "--json"]).await,
        "show",
    );
    assert_eq!(shown["resync"]["phase"], "reading");
    assert!(shown["resync"]["cursor"].is_string(), "{shown}");

    // Delta goes on meanwhile: a change at the source is written by it, not held back.
    let _ = sim.sim().update(Entity::People, 200, None);
    let d = delta(&sim, &target).await;
    assert_eq!(d["updated"], 1, "{d}");
    let changed = records.get("people", "200").await.unwrap().unwrap();
    assert_eq!(changed.written_by, Strategy::Delta);

    // Run again: goes on from its checkpoint to the end, then reconciles.
    let done = ok(
        &run(
            &sim,
            &target,
            &[
                "resync", "people", "--actor", "ana", "--spill", &spill, "--json",
            ],
        )
        .await,
        "resync",
    );
    assert_eq!(
        (done["request"].as_str(), done["phase"].as_str()),
        (Some("continued"), Some("idle"))
    );
    let seen = done["seen"].as_u64().unwrap();
    // From the checkpoint (inclusive): the other 150 live records and the boundary again.
    assert!((150..=152).contains(&seen), "{done}");
    // Nothing else changed: zero writes for what was read again.
    assert_eq!(done["written"], 0, "{done}");
    let rec = &done["reconciliation"]["runs"][0];
    assert_eq!(
        (rec["status"].as_str(), rec["deleted"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{done}"
    );
    let gone = records
        .get("people", "3")
        .await
        .unwrap()
        .expect("kept, soft-deleted");
    assert!(gone.is_deleted());
    // The entity's delta cursor: only delta moved it.
    let watermark = |c: Option<String>| {
        DeltaCursor::decode(&c.expect("a cursor"))
            .expect("readable")
            .watermark_us
    };
    let after = control
        .job_state("people", JobKind::Delta)
        .await
        .unwrap()
        .cursor;
    assert!(watermark(after) >= watermark(delta_cursor));

    // Done: asking to go on finds nothing under way and starts a new one only when asked.
    let history = control
        .list_runs("people", JobKind::Resync, 20)
        .await
        .unwrap();
    let statuses: Vec<&str> = history.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses.first(), Some(&"reconciled"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"requested"), "{statuses:?}");
    let cancelled = ok(
        &run(
            &sim,
            &target,
            &["resync", "people", "--cancel", "--actor", "ana", "--json"],
        )
        .await,
        "cancel",
    );
    assert_eq!(cancelled["request"], "not_running");
}

#[tokio::test]
async fn syncctl_resync_on_the_local_store() {
    let dir = scratch("resync");
    resync_scenario(Target::Local(dir.join("sync.sqlite")), &dir.join("spill")).await;
}

#[tokio::test]
async fn syncctl_resync_on_dynamodb_local() {
    let sim = testkit::sim::people(1).await;
    let target = dynamo_target(&sim, "resync").await;
    drop(sim);
    let dir = scratch("resync-dynamodb");
    resync_scenario(target, &dir.join("spill")).await;
}
