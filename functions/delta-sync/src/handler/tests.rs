use super::*;
use std::time::{Duration, SystemTime};

#[test]
fn sample_events_parse() {
    let bare: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../events/delta-sync/all-entities.json"
    ))
    .unwrap();
    assert_eq!(parse_input(bare).unwrap(), Input::default());
    let one: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../events/delta-sync/one-entity.json"
    ))
    .unwrap();
    assert_eq!(
        parse_input(one).unwrap(),
        Input {
            entity: Some("people".into()),
            ..Input::default()
        }
    );
    let sched: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../events/delta-sync/scheduled-event.json"
    ))
    .unwrap();
    assert_eq!(parse_input(sched).unwrap(), Input::default());
    assert!(parse_input(serde_json::json!({"entity": 3})).is_err());
    assert!(parse_input(serde_json::json!({"entty": "people"})).is_err());
    let resync: serde_json::Value =
        serde_json::from_str(include_str!("../../../../events/delta-sync/resync.json")).unwrap();
    assert_eq!(
        parse_input(resync).unwrap(),
        Input {
            entity: Some("people".into()),
            resync: true,
            ..Input::default()
        }
    );
    // A re-sync of every entity at once is not a typo the input lets through.
    let e = parse_input(serde_json::json!({"resync": true})).unwrap_err();
    assert!(
        e.error_message.contains("needs the one entity"),
        "{}",
        e.error_message
    );
    assert!(parse_input(serde_json::json!({"entity": "people", "restart": true})).is_err());
    assert!(parse_input(serde_json::json!({"entity": "people", "actor": "me"})).is_err());
}

fn sample(name: &str) -> serde_json::Value {
    let text = match name {
        "all-entities" => include_str!("../../../../events/delta-sync/all-entities.json"),
        "one-entity" => include_str!("../../../../events/delta-sync/one-entity.json"),
        "resync" => include_str!("../../../../events/delta-sync/resync.json"),
        _ => include_str!("../../../../events/delta-sync/scheduled-event.json"),
    };
    serde_json::from_str(text).unwrap()
}

async fn deps(sim: &source_sim::SimHandle) -> Deps {
    deps_and_executions(sim).await.0
}

async fn deps_and_executions(sim: &source_sim::SimHandle) -> (Deps, Arc<Started>) {
    let started = Arc::new(Started::default());
    let config = testkit::config::at(&sim.base_url());
    let source = shared::source::SourceClient::new(&config, None).unwrap();
    let store = Arc::new(shared::adapters::local::LocalStore::in_memory().unwrap());
    let deps = Deps {
        config,
        source: Arc::new(source),
        records: store.clone(),
        control: store,
        options: DeltaOptions::default(),
        executions: started.clone(),
        reconcile_state_machine: "arn:aws:states:us-east-1:123456789012:stateMachine:s-reconcile"
            .into(),
    };
    (deps, started)
}

/// The executions a handler started (an in-memory `Executions`, for these tests only).
#[derive(Default)]
struct Started(std::sync::Mutex<Vec<(String, String, serde_json::Value)>>);

#[async_trait::async_trait]
impl Executions for Started {
    async fn start(
        &self,
        state_machine: &str,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<String, shared::error::StoreError> {
        self.0
            .lock()
            .unwrap()
            .push((state_machine.into(), name.into(), input.clone()));
        Ok(format!("{state_machine}:{name}"))
    }
}

impl Started {
    fn calls(&self) -> Vec<(String, String, serde_json::Value)> {
        self.0.lock().unwrap().clone()
    }
}

fn deadline_in(secs: u64) -> lambda_runtime::Context {
    let mut ctx = lambda_runtime::Context::default();
    ctx.deadline = (SystemTime::now() + Duration::from_secs(secs))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ctx
}

#[tokio::test]
async fn the_resync_sample_reads_everything_on_its_own_cursor_and_starts_one_reconciliation() {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: 250,
        donations: 10,
        ..Default::default()
    })
    .await;
    let (mut d, started) = deps_and_executions(&sim).await;
    // Delta first, as the schedule does: its cursor must not move because of the re-sync.
    let out = handle(
        &d,
        LambdaEvent::new(sample("scheduled-event"), deadline_in(900)),
    )
    .await
    .unwrap();
    assert!(out.resyncs.is_empty() && out.reconciliations.is_empty());
    assert_eq!(out.runs[0].inserted, 250);
    // Then a page per run: the re-sync needs several invocations (people: 100 per page).
    d.options.max_pages = 1;
    let delta_cursor = || async {
        d.control
            .job_state("people", shared::ports::JobKind::Delta)
            .await
            .unwrap()
            .cursor
    };
    let before = delta_cursor().await;

    let out = handle(&d, LambdaEvent::new(sample("resync"), deadline_in(900)))
        .await
        .unwrap();
    // No delta run in that invocation: the re-sync's first run, from the beginning.
    assert!(out.runs.is_empty());
    assert_eq!(out.resyncs.len(), 1);
    let first = &out.resyncs[0];
    assert_eq!(
        (first.entity.as_str(), first.status),
        ("people", RunStatus::Partial)
    );
    assert_eq!(
        (first.seen, first.unchanged, first.cursor_before.as_deref()),
        (100, 100, None)
    );

    // The schedule carries it on, beside the delta runs, until it has read everything.
    let mut seen = first.seen;
    let mut invocations = 0;
    let closing = loop {
        invocations += 1;
        assert!(invocations < 10, "the re-sync did not finish");
        let out = handle(
            &d,
            LambdaEvent::new(sample("all-entities"), deadline_in(900)),
        )
        .await
        .unwrap();
        assert_eq!(out.runs.len(), 2, "delta runs go on");
        seen += out.resyncs.iter().map(|s| s.seen).sum::<u64>();
        if !out.reconciliations.is_empty() {
            break out;
        }
    };
    assert_eq!(closing.resyncs.last().unwrap().status, RunStatus::Succeeded);
    // Every record read again (the inclusive cursor reads a boundary twice at most), none
    // written: they were unchanged.
    assert!(seen >= 250, "{seen}");
    assert!(closing.resyncs.iter().all(|s| s.written() == 0));
    assert_eq!(delta_cursor().await, before);
    let calls = started.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, d.reconcile_state_machine);
    assert_eq!(
        calls[0].1,
        format!("resync-{}", closing.resyncs.last().unwrap().run_id)
    );
    assert_eq!(calls[0].2, serde_json::json!({"entity": "people"}));
    // Done: later invocations run delta only.
    let out = handle(
        &d,
        LambdaEvent::new(sample("all-entities"), deadline_in(900)),
    )
    .await
    .unwrap();
    assert!(out.resyncs.is_empty() && out.reconciliations.is_empty());
    assert_eq!(started.calls().len(), 1);
}

#[tokio::test]
async fn each_sample_event_runs_its_entities() {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: 120,
        donations: 30,
        ..Default::default()
    })
    .await;
    let d = deps(&sim).await;
    let run = |name: &'static str| {
        let mut ctx = lambda_runtime::Context::default();
        // A deadline 15 minutes away, as Lambda gives.
        ctx.deadline = (SystemTime::now() + Duration::from_secs(900))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        handle(&d, LambdaEvent::new(sample(name), ctx))
    };
    let out = run("one-entity").await.unwrap();
    assert_eq!(out.runs.len(), 1);
    assert_eq!(
        (out.runs[0].entity.as_str(), out.runs[0].inserted),
        ("people", 120)
    );
    let out = run("all-entities").await.unwrap();
    let by: Vec<(&str, u64)> = out
        .runs
        .iter()
        .map(|s| (s.entity.as_str(), s.inserted))
        .collect();
    assert_eq!(by, vec![("people", 0), ("donations", 30)]);
    let out = run("scheduled-event").await.unwrap();
    assert_eq!(out.runs.len(), 2);
    assert!(
        out.runs
            .iter()
            .all(|s| s.written() == 0 && s.status == RunStatus::Succeeded)
    );
}

#[tokio::test]
async fn an_unknown_entity_and_a_failing_source_are_errors() {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: 5,
        donations: 0,
        ..Default::default()
    })
    .await;
    let mut d = deps(&sim).await;
    let e = handle(
        &d,
        LambdaEvent::new(
            serde_json::json!({"entity": "nope"}),
            lambda_runtime::Context::default(),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error_type, "UnknownEntity");
    d.config.source.max_attempts = 1;
    d.source = Arc::new(shared::source::SourceClient::new(&d.config, None).unwrap());
    sim.sim().push_fault(source_sim::Fault::Status(503));
    let e = handle(
        &d,
        LambdaEvent::new(
            serde_json::json!({"entity": "people"}),
            lambda_runtime::Context::default(),
        ),
    )
    .await
    .unwrap_err();
    // A 503 may heal on a retry.
    assert_eq!(e.error_type, "Delta.Retryable");
    assert!(e.error_message.contains("people"), "{}", e.error_message);
    assert!(e.error_message.contains("503"), "{}", e.error_message);
}

/// One entity, with a source that gives up after one attempt.
async fn one_attempt(sim: &source_sim::SimHandle) -> Deps {
    let mut d = deps(sim).await;
    d.config.source.max_attempts = 1;
    d.source = Arc::new(shared::source::SourceClient::new(&d.config, None).unwrap());
    d
}

async fn invoke(d: &Deps, input: serde_json::Value) -> Result<Output, Diagnostic> {
    handle(
        d,
        LambdaEvent::new(input, lambda_runtime::Context::default()),
    )
    .await
}

/// Store a cursor that does not decode, as a broken deployment or a hand edit would leave it.
async fn corrupt_cursor(d: &Deps, entity: &str) {
    use shared::ports::JobKind;
    let now = shared::core::timefmt::now_us();
    let lease = d
        .control
        .acquire_lease(entity, JobKind::Delta, "test", now, 60_000_000)
        .await
        .unwrap();
    assert!(
        matches!(lease, shared::ports::LeaseOutcome::Acquired { .. }),
        "{lease:?}"
    );
    d.control
        .save_cursor(
            entity,
            JobKind::Delta,
            "test",
            now,
            60_000_000,
            "not a cursor",
        )
        .await
        .unwrap();
    d.control
        .release_lease(entity, JobKind::Delta, "test")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failure_that_retrying_cannot_heal_is_not_retryable() {
    let sim = source_sim::start(source_sim::SimConfig {
        people: 5,
        donations: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let d = one_attempt(&sim).await;
    // A 4xx: the request itself is wrong.
    sim.sim().push_fault(source_sim::Fault::Status(400));
    let e = invoke(&d, serde_json::json!({"entity": "people"}))
        .await
        .unwrap_err();
    assert_eq!(e.error_type, "Delta.Failed");
    assert!(
        e.error_message.contains("client error 400"),
        "{}",
        e.error_message
    );
    // An unreadable cursor: no request is made, and no retry reads it better.
    corrupt_cursor(&d, "people").await;
    let e = invoke(&d, serde_json::json!({"entity": "people"}))
        .await
        .unwrap_err();
    assert_eq!(e.error_type, "Delta.Failed");
    assert!(
        e.error_message
            .contains("stored state of `people` is unreadable"),
        "{}",
        e.error_message
    );
}

#[tokio::test]
async fn one_retryable_failure_makes_the_invocation_retryable() {
    let sim = source_sim::start(source_sim::SimConfig {
        people: 5,
        donations: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let d = one_attempt(&sim).await;
    // Donations fails before any request (its cursor does not read); people meets the 503.
    corrupt_cursor(&d, "donations").await;
    sim.sim().push_fault(source_sim::Fault::Status(503));
    let e = invoke(&d, serde_json::json!({})).await.unwrap_err();
    assert_eq!(e.error_type, "Delta.Retryable");
    assert!(e.error_message.contains("people: "), "{}", e.error_message);
    assert!(
        e.error_message.contains("donations: "),
        "{}",
        e.error_message
    );
    // Once the source is healthy, only the cursor's failure is left: not retryable.
    let e = invoke(&d, serde_json::json!({})).await.unwrap_err();
    assert_eq!(e.error_type, "Delta.Failed");
    assert!(!e.error_message.contains("people"), "{}", e.error_message);
}

/// The source client counts every request it sends and every 429 among them: what the handler
/// publishes per invocation as `SourceRequests` and `SourceRateLimited` (`Strategy` = `delta`).
#[tokio::test]
async fn an_invocations_source_requests_and_429s_are_counted() {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: 5,
        donations: 0,
        ..Default::default()
    })
    .await;
    let d = deps(&sim).await;
    let invoke = || {
        handle(
            &d,
            LambdaEvent::new(
                serde_json::json!({"entity": "people"}),
                lambda_runtime::Context::default(),
            ),
        )
    };
    invoke().await.unwrap();
    let before = d.source.usage();
    sim.sim().push_fault(source_sim::Fault::RateLimited {
        retry_after_secs: 0,
    });
    invoke().await.unwrap();
    let used = d.source.usage().since(before);
    let served = sim.sim().stats().list_requests;
    assert_eq!(used.rate_limited, 1, "{used:?}");
    assert!(used.requests >= 2, "the 429 and its retry: {used:?}");
    assert!(served >= 1, "{served}");
    let line: serde_json::Value = serde_json::from_str(&used.metrics("delta")).unwrap();
    assert_eq!(line["Strategy"], "delta");
    assert_eq!(line["SourceRateLimited"], 1.0);
    assert_eq!(line["SourceRequests"], used.requests as f64);
}
