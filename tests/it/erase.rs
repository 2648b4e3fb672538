//! Erasure and purge end to end (issue 16): an erased record stays erased through every path
//! that writes records (a delta run over a source that still has it, a webhook through the
//! worker, a reconciliation and its targeted syncs), on the embedded store and on DynamoDB
//! Local, until the erasure is lifted; `syncctl erase` and `syncctl purge` as an operator runs
//! them (the real binary, `crate::cli`).
//!
//! The pair (invariant test -> its negative control, the suppression check switched off):
//! - `an_erased_record_stays_erased_through_delta_webhook_and_reconciliation_locally` (and
//!   `..._on_dynamodb_local`) -> `negative_control_without_the_suppression_check_delta_writes_the_erased_record_back`.

use crate::cli::{LOCAL_USER, Target, syncctl, text};
use crate::conformance_dynamodb::dynamodb_stores;
use crate::harness::{emulators, scratch, unique_name};
use serde_json::Value;
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::config::Config;
use shared::core::timefmt::now_us;
use shared::model::{EraseOutcome, LiftOutcome, Strategy};
use shared::ports::{ControlStore, Queue, RecordStore};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, DeltaSummary, run_delta};
use shared::sync::reconcile::{PlanInput, ReconcileDeps, ReconcileOptions, run_all};
use shared::sync::worker::{InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use source_sim::{Entity, SimHandle};
use std::sync::Arc;
use testkit::TempDir;

const E: &str = "people";

/// A store under test, the simulator synced into it, and what a reconciliation needs beside
/// the records (a queue and a spill folder of the embedded store: the records are the point).
struct Fx {
    sim: SimHandle,
    cfg: Config,
    src: SourceClient,
    records: Arc<dyn RecordStore>,
    control: Arc<dyn ControlStore>,
    queue: LocalQueue,
    spill: LocalSpill,
    _dirs: Vec<TempDir>,
}

impl Fx {
    async fn new(records: Arc<dyn RecordStore>, control: Arc<dyn ControlStore>) -> Fx {
        let sim = testkit::sim::people(5).await;
        let cfg = testkit::config::quick(&sim.base_url(), |c| {
            c.source.max_attempts = 1;
            c.entities.truncate(1);
        });
        let src = SourceClient::new(&cfg, None).expect("client");
        let spill_dir = scratch("erase-spill");
        let spill = LocalSpill::new(spill_dir.path()).expect("spill");
        let queue = LocalStore::in_memory()
            .expect("queue store")
            .queue("work", QueueOptions::default());
        let fx = Fx {
            sim,
            cfg,
            src,
            records,
            control,
            queue,
            spill,
            _dirs: vec![spill_dir],
        };
        let s = fx.delta().await;
        assert_eq!(s.inserted, 5, "backfill: {s:?}");
        fx
    }

    async fn delta(&self) -> DeltaSummary {
        run_delta(
            &self.src,
            self.records.as_ref(),
            self.control.as_ref(),
            E,
            &DeltaOptions::default(),
        )
        .await
        .expect("delta run")
    }

    /// A webhook event for `id` through the worker (fetch, upsert), as SQS would deliver it.
    async fn webhook(&self, id: &str, event: &str) -> shared::sync::worker::BatchReport {
        let body = QueueEnvelope {
            v: ENVELOPE_VERSION,
            kind: MessageKind::Webhook,
            entity: E.into(),
            id: id.into(),
            event_id: Some(event.into()),
            action: Some(EnvelopeAction::Upsert),
            reason: Some("person.updated".into()),
            received_at: now_us(),
        }
        .to_body();
        let report = process_batch(
            &WorkerDeps {
                source: &self.src,
                records: self.records.as_ref(),
                control: self.control.as_ref(),
            },
            &[InMessage {
                message_id: format!("m-{event}"),
                body,
            }],
            &WorkerOptions::default(),
        )
        .await;
        assert!(report.failed.is_empty(), "{report:?}");
        report
    }

    /// A whole reconciliation of the entity, then its targeted syncs drained by the worker.
    async fn reconcile(&self) -> shared::sync::reconcile::RunSummary {
        let deps = ReconcileDeps {
            config: &self.cfg,
            source: &self.src,
            records: self.records.as_ref(),
            control: self.control.as_ref(),
            spill: &self.spill,
            queue: &self.queue,
        };
        let mut runs = run_all(
            &deps,
            &PlanInput {
                entity: Some(E.into()),
                ..PlanInput::default()
            },
            &ReconcileOptions::default(),
        )
        .await
        .expect("reconciliation");
        let worker = WorkerDeps {
            source: &self.src,
            records: self.records.as_ref(),
            control: self.control.as_ref(),
        };
        loop {
            let got = self.queue.receive(10, 0).await.expect("receive");
            if got.is_empty() {
                break;
            }
            let m: Vec<InMessage> = got.iter().map(InMessage::from).collect();
            let r = process_batch(&worker, &m, &WorkerOptions::default()).await;
            assert!(r.failed.is_empty(), "{r:?}");
            for g in &got {
                self.queue.delete(&g.receipt).await.expect("delete");
            }
        }
        runs.pop().expect("one run")
    }

    /// The first person's ID (the one the scenario erases).
    fn victim(&self) -> String {
        let id = (1..100)
            .find(|i| self.sim.sim().get(Entity::People, *i).is_some())
            .expect("a person");
        id.to_string()
    }

    async fn is_erased(&self, id: &str) -> bool {
        self.records
            .get(E, id)
            .await
            .expect("get")
            .is_some_and(|r| r.is_erased() && r.payload.is_null())
    }

    async fn is_live(&self, id: &str) -> bool {
        self.records
            .get(E, id)
            .await
            .expect("get")
            .is_some_and(|r| !r.is_deleted() && r.payload["id"].is_string())
    }
}

/// Erase one record the source keeps changing, then run every path over it.
async fn scenario(fx: Fx) {
    let id = fx.victim();
    assert!(fx.is_live(&id).await);
    assert_eq!(
        fx.records
            .erase(E, &id, now_us(), "it-dpo")
            .await
            .expect("erase"),
        EraseOutcome::Erased
    );
    // The source still has it, and changes it: a delta run reads it again.
    let n: u64 = id.parse().expect("a numeric ID");
    fx.sim
        .sim()
        .update(Entity::People, n, None)
        .expect("update");
    let s = fx.delta().await;
    assert_eq!((s.suppressed, s.written()), (1, 0), "delta: {s:?}");
    assert_eq!(emf(&s.metrics())["RecordsSuppressed"], 1.0);
    assert!(fx.is_erased(&id).await, "after the delta run");
    // A webhook for it: the worker fetches it, the store refuses it.
    let r = fx.webhook(&id, "evt-erased-1").await;
    assert_eq!((r.suppressed, r.written), (1, 0), "worker: {r:?}");
    assert_eq!(emf(&r.metrics())["RecordsSuppressed"], 1.0);
    assert!(fx.is_erased(&id).await, "after the webhook");
    // Reconciliation: the source lists it, the destination's live listing lacks it. Not queued
    // (nothing the worker could write), not counted missed.
    let s = fx.reconcile().await;
    assert_eq!(
        (s.suppressed, s.missed, s.queued, s.deleted),
        (1, 0, 0, 0),
        "reconciliation: {s:?}"
    );
    assert_eq!(emf(&s.metrics())["RecordsSuppressed"], 1.0);
    assert!(fx.is_erased(&id).await, "after the reconciliation");
    // Lifted: the next delta run writes it afresh (it changed within the re-read overlap).
    assert_eq!(
        fx.records.lift_erasure(E, &id).await.expect("lift"),
        LiftOutcome::Lifted
    );
    let s = fx.delta().await;
    assert_eq!(
        (s.inserted, s.suppressed),
        (1, 0),
        "delta after the lift: {s:?}"
    );
    assert!(fx.is_live(&id).await, "written again after the lift");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_record_stays_erased_through_delta_webhook_and_reconciliation_locally() {
    let dir = scratch("erase-local");
    let store = Arc::new(LocalStore::open(dir.path().join("sync.sqlite")).expect("open"));
    let mut fx = Fx::new(store.clone(), store).await;
    fx._dirs.push(dir);
    scenario(fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_record_stays_erased_through_delta_webhook_and_reconciliation_on_dynamodb_local()
{
    let (records, control) = dynamodb_stores().await;
    scenario(Fx::new(records, control).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_the_suppression_check_delta_writes_the_erased_record_back() {
    let dir = scratch("erase-negative");
    let store = Arc::new(
        LocalStore::open(dir.path().join("sync.sqlite"))
            .expect("open")
            .with_suppression_off(),
    );
    let fx = Fx::new(store.clone(), store).await;
    let id = fx.victim();
    fx.records
        .erase(E, &id, now_us(), "it-dpo")
        .await
        .expect("erase");
    assert!(fx.is_erased(&id).await);
    let n: u64 = id.parse().expect("a numeric ID");
    fx.sim
        .sim()
        .update(Entity::People, n, None)
        .expect("update");
    let s = fx.delta().await;
    assert_eq!(s.suppressed, 0, "{s:?}");
    assert!(
        fx.is_live(&id).await,
        "without the check the delta run writes the erased record back (else the test above \
         proves nothing)"
    );
    // And a webhook alone does too: erase again, fetch it through the worker.
    let store_again = fx.records.clone();
    store_again.lift_erasure(E, &id).await.expect("lift");
    assert_eq!(
        fx.records
            .erase(E, &id, now_us(), "it-dpo")
            .await
            .expect("erase again"),
        EraseOutcome::Erased
    );
    fx.sim
        .sim()
        .update(Entity::People, n, None)
        .expect("update");
    let r = fx.webhook(&id, "evt-negative").await;
    assert_eq!((r.suppressed, r.written), (0, 1), "{r:?}");
    assert!(fx.is_live(&id).await);
}

/// No function's code erases, lifts or purges: those are `syncctl`'s (the functions' roles are
/// granted neither PutItem nor DeleteItem nor Scan on the records table for them).
#[test]
fn only_syncctl_erases_lifts_or_purges() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let mut dirs = vec![
        root.join("shared/src/sync"),
        root.join("shared/src/webhook"),
    ];
    for f in ["delta-sync", "sync-worker", "reconcile", "webhook-ingest"] {
        dirs.push(root.join("functions").join(f).join("src"));
    }
    let mut found = Vec::new();
    let mut stack = dirs;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("a source folder").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let code = std::fs::read_to_string(&p).expect("read");
                for call in [".erase(", ".lift_erasure(", ".purge_deleted("] {
                    if code.contains(call) {
                        found.push(format!("{} calls {call}", p.display()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:?}");
}

// ---------------------------------------------------------------------------------------------
// the real binary
// ---------------------------------------------------------------------------------------------

fn json_of(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

/// `syncctl erase`, `delta`, `erase --lift` and `purge` on one store; `default_actor` says
/// whether an `erased_by` is who `syncctl` says made the change without `--actor` (the user
/// locally, the caller's ARN on AWS).
async fn operator_scenario(target: Target, default_actor: &dyn Fn(&str) -> bool) {
    let sim = testkit::sim::people(4).await;
    let d = json_of(
        &syncctl(&sim, &target, &["delta", "--entity", E, "--json"]).await,
        "backfill",
    );
    assert_eq!(d[0]["inserted"], 4, "{d}");
    let store = target.open().await;
    let (x, y, z) = ("1", "2", "3");
    assert!(store.get(E, x).await.expect("get").is_some());

    // Erase: the table, then JSON of a second erasure (the first marker kept).
    let out = syncctl(&sim, &target, &["erase", E, x]).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(
        table.contains("RESULT") && table.contains("erased"),
        "{table}"
    );
    assert!(table.contains("at the source too"), "{table}");
    let again = json_of(
        &syncctl(
            &sim,
            &target,
            &["erase", E, x, "--actor", "someone", "--json"],
        )
        .await,
        "erase again",
    );
    assert_eq!(again["result"], "already_erased", "{again}");
    let by = again["erased_by"].as_str().expect("erased_by");
    assert!(
        default_actor(by),
        "the first erasure's default actor is kept: {by}"
    );
    assert!(table.contains(by), "{table}");
    let got = store.get(E, x).await.expect("get").expect("the marker");
    assert!(got.is_erased() && got.payload.is_null());
    // A record never stored: marked.
    let ghost = json_of(
        &syncctl(&sim, &target, &["erase", E, "999", "--json"]).await,
        "erase a record never stored",
    );
    assert_eq!(ghost["result"], "marked", "{ghost}");

    // The source changes it; delta reads it and writes nothing.
    sim.sim().update(Entity::People, 1, None).expect("update");
    let d = json_of(
        &syncctl(&sim, &target, &["delta", "--entity", E, "--json"]).await,
        "delta after the erasure",
    );
    assert_eq!(d[0]["suppressed"], 1, "{d}");
    assert!(
        store
            .get(E, x)
            .await
            .expect("get")
            .expect("marker")
            .is_erased()
    );

    // Lifted: the next delta writes it again.
    let lifted = json_of(
        &syncctl(&sim, &target, &["erase", "--lift", E, x, "--json"]).await,
        "lift",
    );
    assert_eq!(lifted["result"], "lifted", "{lifted}");
    let d = json_of(
        &syncctl(&sim, &target, &["delta", "--entity", E, "--json"]).await,
        "delta after the lift",
    );
    assert_eq!(
        (d[0]["inserted"].as_u64(), d[0]["suppressed"].as_u64()),
        (Some(1), Some(0)),
        "{d}"
    );
    let back = store.get(E, x).await.expect("get").expect("stored");
    assert!(!back.is_deleted() && back.erased.is_none());
    let not = json_of(
        &syncctl(&sim, &target, &["erase", "--lift", E, x, "--json"]).await,
        "lift of a live record",
    );
    assert_eq!(not["result"], "not_erased", "{not}");

    // Purge: y soft-deleted now, z erased; after a second only y is older than one second.
    let deleted = store
        .soft_delete(E, y, now_us(), Strategy::Reconcile)
        .await
        .expect("soft delete");
    assert_eq!(deleted, shared::model::DeleteOutcome::Deleted);
    store
        .erase(E, z, now_us() - 5_000_000, "it")
        .await
        .expect("erase");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let by_default = json_of(
        &syncctl(&sim, &target, &["purge", "--json"]).await,
        "purge at the default retention",
    );
    assert_eq!(
        (
            by_default["matched"].as_u64(),
            by_default["purged"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let dry = json_of(
        &syncctl(
            &sim,
            &target,
            &["purge", "--older-than", "1s", "--dry-run", "--json"],
        )
        .await,
        "dry run",
    );
    assert_eq!(
        (dry["matched"].as_u64(), dry["purged"].as_u64()),
        (Some(1), Some(0)),
        "{dry}"
    );
    assert!(store.get(E, y).await.expect("get").is_some());
    let out = syncctl(
        &sim,
        &target,
        &["purge", "--older-than", "1s", "--entity", E],
    )
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(
        table.contains("PURGED") && table.contains("people"),
        "{table}"
    );
    assert!(store.get(E, y).await.expect("get").is_none(), "purged");
    assert!(
        store
            .get(E, z)
            .await
            .expect("get")
            .expect("marker")
            .is_erased()
    );
    assert!(
        !store
            .get(E, "4")
            .await
            .expect("get")
            .expect("live")
            .is_deleted()
    );

    // Mistakes are refused, naming what is wrong.
    let out = syncctl(&sim, &target, &["erase", "nobody", "1"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not configured"),
        "{}",
        text(&out.stderr)
    );
    let out = syncctl(&sim, &target, &["purge", "--older-than", "1w"]).await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncctl_erase_and_purge_on_the_local_store() {
    let dir = scratch("syncctl-erase");
    operator_scenario(Target::Local(dir.join("sync.sqlite")), &|a| a == LOCAL_USER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncctl_erase_and_purge_on_dynamodb_local() {
    let target = Target::Dynamo {
        endpoint: emulators().dynamodb_url.clone(),
        records: unique_name("it-erase-records"),
        control: unique_name("it-erase-control"),
    };
    let sim = testkit::sim::people(1).await;
    let out = syncctl(&sim, &target, &["init"]).await;
    assert!(
        out.status.success(),
        "init: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    operator_scenario(target, &|a| a.starts_with("arn:aws:")).await;
}

/// The first EMF line of a summary's metrics.
fn emf(lines: &str) -> serde_json::Value {
    serde_json::from_str(lines.lines().next().expect("an EMF line")).expect("EMF JSON")
}
