//! Every sample in events/reconcile/ goes through `handle`: the `step-*` ones as the state
//! machine sends them to the function, the `start-*` ones (the state machine's console inputs)
//! as its Plan state forwards them (`{"step": "plan"}` merged in). Against the simulator, the
//! embedded store, a spill folder and the local queue.

use super::*;
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::ports::{JobKind, LeaseOutcome};
use std::time::{Duration, SystemTime};

fn sample(name: &str) -> Value {
    let text = match name {
        "start-all-entities" => {
            include_str!("../../../../events/reconcile/start-all-entities.json")
        }
        "start-one-entity" => include_str!("../../../../events/reconcile/start-one-entity.json"),
        "step-plan" => include_str!("../../../../events/reconcile/step-plan.json"),
        "step-source" => include_str!("../../../../events/reconcile/step-source.json"),
        "step-destination" => include_str!("../../../../events/reconcile/step-destination.json"),
        "step-diff" => include_str!("../../../../events/reconcile/step-diff.json"),
        "step-finish-failed" => {
            include_str!("../../../../events/reconcile/step-finish-failed.json")
        }
        other => panic!("no sample {other}"),
    };
    serde_json::from_str(text).expect("a JSON sample")
}

/// The run of the `step-*` samples.
const SAMPLE_RUN: &str = "rec-0123456789abcdef0123456789abcdef";

struct Fixture {
    sim: source_sim::SimHandle,
    store: Arc<LocalStore>,
    queue: Arc<LocalQueue>,
    deps: Deps,
    _folder: testkit::TempDir,
}

async fn fixture(people: usize) -> Fixture {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people,
        donations: 3,
        ..Default::default()
    })
    .await;
    let mut config = testkit::config::at(&sim.base_url());
    config.source.max_attempts = 1;
    let source = shared::source::SourceClient::new(&config, None).unwrap();
    let store = Arc::new(LocalStore::in_memory().unwrap());
    let queue = Arc::new(store.queue("work", QueueOptions::default()));
    let folder = testkit::TempDir::new("reconcile-handler-tests");
    let spill = LocalSpill::new(folder.path()).unwrap();
    let deps = Deps {
        config,
        source: Arc::new(source),
        records: store.clone(),
        control: store.clone(),
        spill: Arc::new(spill),
        queue: queue.clone(),
        executions: None,
        options: ReconcileOptions::default(),
    };
    Fixture {
        sim,
        store,
        queue,
        deps,
        _folder: folder,
    }
}

/// An invocation with `left` before the deadline, as Lambda gives.
fn invoke(payload: Value, left: Duration) -> LambdaEvent<Value> {
    let mut ctx = lambda_runtime::Context::default();
    ctx.deadline = (SystemTime::now() + left)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    LambdaEvent::new(payload, ctx)
}

const FIFTEEN_MINUTES: Duration = Duration::from_secs(900);

async fn run(f: &Fixture, payload: Value) -> Result<Value, Diagnostic> {
    handle(&f.deps, invoke(payload, FIFTEEN_MINUTES)).await
}

/// The state machine's Plan state: the console input with `"step": "plan"` merged in.
fn as_plan(mut console_input: Value) -> Value {
    console_input
        .as_object_mut()
        .expect("a console input is an object")
        .insert("step".into(), "plan".into());
    console_input
}

#[tokio::test]
async fn plan_samples_take_each_entitys_lease_and_record_a_run() {
    let f = fixture(20).await;
    let out = run(&f, sample("step-plan")).await.unwrap();
    let runs = out["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["entity"], "people");
    assert_eq!(runs[0]["shards"].as_array().unwrap().len(), 16);
    let state = f
        .store
        .job_state("people", JobKind::Reconcile)
        .await
        .unwrap();
    assert_eq!(state.lease_holder.as_deref(), runs[0]["run_id"].as_str());
    let history = f
        .store
        .list_runs("people", JobKind::Reconcile, 10)
        .await
        .unwrap();
    assert_eq!(history[0].status, "running");

    // The console's inputs, as the state machine's Plan state forwards them: people is held
    // by the run above (skipped, saying by whom), donations is free.
    let out = run(&f, as_plan(sample("start-all-entities")))
        .await
        .unwrap();
    let planned: Vec<&str> = out["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["entity"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["donations"]);
    assert_eq!(out["skipped"][0]["entity"], "people");
    assert_eq!(out["skipped"][0]["holder"], runs[0]["run_id"]);
    let out = run(&f, as_plan(sample("start-one-entity"))).await.unwrap();
    assert_eq!(out["runs"], serde_json::json!([]));
    assert_eq!(out["skipped"][0]["entity"], "people");
}

#[tokio::test]
async fn step_samples_run_a_reconciliation_and_the_failure_path_releases_the_lease() {
    let f = fixture(20).await;
    // Without the run's lease, every step refuses: the state machine's Catch sees LeaseLost.
    let e = run(&f, sample("step-source")).await.unwrap_err();
    assert_eq!(e.error_type, "Reconcile.LeaseLost");
    assert!(e.error_message.contains("people"), "{}", e.error_message);

    let now = shared::core::timefmt::now_us();
    let taken = f
        .store
        .acquire_lease("people", JobKind::Reconcile, SAMPLE_RUN, now, 3_600_000_000)
        .await
        .unwrap();
    assert!(matches!(taken, LeaseOutcome::Acquired { .. }));

    let progress = run(&f, sample("step-source")).await.unwrap();
    assert_eq!(progress["done"], true, "{progress}");
    assert_eq!(progress["ended_normally"], true);
    assert_eq!(progress["pairs"], 20);
    assert_eq!(progress["invocations"], 1);
    let dest = run(&f, sample("step-destination")).await.unwrap();
    assert_eq!(
        dest,
        serde_json::json!({"shard": 0, "pairs": 0, "objects": 0})
    );
    let diff = run(&f, sample("step-diff")).await.unwrap();
    assert_eq!(diff["source"]["ids"], 20, "{diff}");
    assert_eq!(
        diff["to_fetch"]["pairs"], 20,
        "nothing stored yet: all missed"
    );
    assert!(
        !f.deps
            .spill
            .list(&format!("reconcile/people/{SAMPLE_RUN}/"))
            .await
            .unwrap()
            .is_empty()
    );

    // The failure path (what the state machine's RecordFailure sends, by hand here).
    let summary = run(&f, sample("step-finish-failed")).await.unwrap();
    assert_eq!(summary["status"], "failed");
    let state = f
        .store
        .job_state("people", JobKind::Reconcile)
        .await
        .unwrap();
    assert_eq!(state.lease_holder, None, "released");
    let history = f
        .store
        .list_runs("people", JobKind::Reconcile, 10)
        .await
        .unwrap();
    assert_eq!(history[0].run_id, SAMPLE_RUN);
    assert_eq!(history[0].status, "failed");
    assert!(
        history[0].summary.contains("Manual"),
        "{}",
        history[0].summary
    );
    assert!(
        f.deps
            .spill
            .list(&format!("reconcile/people/{SAMPLE_RUN}/"))
            .await
            .unwrap()
            .is_empty(),
        "the run's objects are gone"
    );
    assert_eq!(
        f.queue.receive(10, 0).await.unwrap().len(),
        0,
        "no Apply, no queueing"
    );
    let _ = &f.sim;
}

#[tokio::test]
async fn the_source_step_stops_before_the_deadline_and_resumes() {
    let f = fixture(250).await;
    let now = shared::core::timefmt::now_us();
    f.store
        .acquire_lease("people", JobKind::Reconcile, SAMPLE_RUN, now, 3_600_000_000)
        .await
        .unwrap();
    // A deadline inside the safety margin: one page (every invocation reads one), then stop.
    let mut payload = sample("step-source");
    let mut invocations = 0;
    loop {
        let p = handle(&f.deps, invoke(payload.clone(), Duration::from_secs(10)))
            .await
            .unwrap();
        invocations += 1;
        assert_eq!(p["invocations"], invocations);
        if p["done"] == true {
            assert_eq!(p["pairs"], 250);
            assert_eq!(p["ended_normally"], true);
            break;
        }
        assert!(p["resume"].is_string(), "{p}");
        assert!(invocations < 10, "{p}");
        payload["progress"] = p;
    }
    assert_eq!(invocations, 3, "100 IDs a page, one page an invocation");
    // With time left, one invocation reads everything.
    payload["progress"] = Value::Null;
    let p = run(&f, payload).await.unwrap();
    assert_eq!(
        (p["done"].clone(), p["invocations"].clone()),
        (true.into(), 1.into())
    );
}

#[tokio::test]
async fn request_approval_keeps_the_lease_for_the_whole_approval_wait() {
    let f = fixture(5).await;
    let now = shared::core::timefmt::now_us();
    f.store
        .acquire_lease("people", JobKind::Reconcile, SAMPLE_RUN, now, 3_600_000_000)
        .await
        .unwrap();
    let run_ref = sample("step-source")["run"].clone();
    let payload = serde_json::json!({
        "step": "request_approval",
        "run": run_ref,
        "token": "a-task-token",
        "guard": {
            "decision": {"kind": "needs_approval", "reason": "12 deletions (24.0% of 50)"},
            "candidates": 12, "checked": 12, "alive": 0
        }
    });
    assert_eq!(run(&f, payload).await.unwrap(), serde_json::json!({}));
    let state = f
        .store
        .job_state("people", JobKind::Reconcile)
        .await
        .unwrap();
    let expires = state.lease_expires_us.unwrap();
    assert!(
        expires >= now + (86_400 + 3_600) * 1_000_000,
        "the lease outlives the 24 h approval: expires {expires}, now {now}"
    );
    let history = f
        .store
        .list_runs("people", JobKind::Reconcile, 1)
        .await
        .unwrap();
    assert_eq!(history[0].status, "awaiting_approval");
    assert!(history[0].summary.contains("a-task-token"));
}

#[tokio::test]
async fn bad_input_is_a_named_error() {
    let f = fixture(1).await;
    for payload in [
        serde_json::json!({}),
        serde_json::json!({"entity": "people"}),
        serde_json::json!({"step": "plan", "entity": "nope"}),
        serde_json::json!({"step": "plan", "entty": "people"}),
        serde_json::json!({"step": "explode"}),
        serde_json::json!({"step": "destination", "run": sample("step-source")["run"], "shard": 16}),
    ] {
        let e = run(&f, payload.clone()).await.unwrap_err();
        assert_eq!(
            e.error_type, "Reconcile.BadInput",
            "{payload}: {}",
            e.error_message
        );
    }
}
