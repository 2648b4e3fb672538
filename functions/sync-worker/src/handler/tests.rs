//! Every sample in events/sync-worker/ goes through `handle` as Lambda's SQS poller sends it,
//! against the simulator and the embedded store.

use super::*;
use shared::adapters::local::LocalStore;
use shared::model::Strategy;
use std::time::SystemTime;

fn sample(name: &str) -> SqsEvent {
    let text = match name {
        "webhook-batch" => include_str!("../../../../events/sync-worker/webhook-batch.json"),
        "targeted" => include_str!("../../../../events/sync-worker/targeted.json"),
        "poison" => include_str!("../../../../events/sync-worker/poison.json"),
        other => panic!("no sample {other}"),
    };
    serde_json::from_str(text).expect("an SQS event")
}

struct Fixture {
    sim: source_sim::SimHandle,
    store: Arc<LocalStore>,
    deps: Deps,
}

async fn fixture() -> Fixture {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: 20,
        donations: 5,
        ..Default::default()
    })
    .await;
    let mut config = testkit::config::at(&sim.base_url());
    config.source.max_attempts = 1;
    let source = shared::source::SourceClient::new(&config, None).unwrap();
    let store = Arc::new(LocalStore::in_memory().unwrap());
    let deps = Deps {
        source: Arc::new(source),
        records: store.clone(),
        control: store.clone(),
        options: WorkerOptions::default(),
    };
    Fixture { sim, store, deps }
}

fn invoke(ev: SqsEvent) -> LambdaEvent<SqsEvent> {
    let mut ctx = lambda_runtime::Context::default();
    ctx.deadline = (SystemTime::now() + Duration::from_secs(60))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    LambdaEvent::new(ev, ctx)
}

fn failures(r: &SqsBatchResponse) -> Vec<&str> {
    r.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect()
}

#[tokio::test]
async fn a_webhook_batch_coalesces_and_writes() {
    let f = fixture().await;
    let r = handle(&f.deps, invoke(sample("webhook-batch")))
        .await
        .unwrap();
    assert!(failures(&r).is_empty());
    // Two events for person 3 and one for donation 2: two fetches.
    assert_eq!(f.sim.sim().stats().get_requests, 2);
    let p = f.store.get("people", "3").await.unwrap().unwrap();
    assert_eq!(p.written_by, Strategy::Webhook);
    assert!(f.store.get("donations", "2").await.unwrap().is_some());
    // The same batch again (SQS redelivery): every event is a duplicate, no fetch at all.
    f.sim.sim().reset_stats();
    let r = handle(&f.deps, invoke(sample("webhook-batch")))
        .await
        .unwrap();
    assert!(failures(&r).is_empty());
    assert_eq!(f.sim.sim().stats().get_requests, 0);
}

#[tokio::test]
async fn a_targeted_message_syncs_its_record() {
    let f = fixture().await;
    let r = handle(&f.deps, invoke(sample("targeted"))).await.unwrap();
    assert!(failures(&r).is_empty());
    let p = f.store.get("people", "7").await.unwrap().unwrap();
    assert_eq!(p.written_by, Strategy::Targeted);
}

#[tokio::test]
async fn a_poison_message_fails_alone_and_an_all_failed_batch_is_an_error() {
    let f = fixture().await;
    let r = handle(&f.deps, invoke(sample("poison"))).await.unwrap();
    assert_eq!(failures(&r), vec!["d0c0ffee-0000-4000-8000-000000000001"]);
    assert!(f.store.get("people", "8").await.unwrap().is_some());
    // Only the poison message: the invocation fails (SQS redelivers; the DLQ takes it after
    // the redrive count).
    let mut only = sample("poison");
    only.records.truncate(1);
    let e = handle(&f.deps, invoke(only)).await.unwrap_err();
    assert_eq!(e.error_type, "BatchFailed");
}

/// The fixture's worker, the source retrying (quickly) and one fetch at a time, so that the
/// first record of a batch is the one the simulator's next fault hits.
fn retrying(f: &Fixture) -> Deps {
    let config = testkit::config::quick(&f.sim.base_url(), |_| {});
    Deps {
        source: Arc::new(shared::source::SourceClient::new(&config, None).unwrap()),
        records: f.store.clone(),
        control: f.store.clone(),
        options: WorkerOptions {
            concurrency: 1,
            ..WorkerOptions::default()
        },
    }
}

fn invoke_with(ev: SqsEvent, deadline: Option<Duration>) -> LambdaEvent<SqsEvent> {
    let mut ctx = lambda_runtime::Context::default();
    if let Some(left) = deadline {
        ctx.deadline = (SystemTime::now() + left)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
    }
    LambdaEvent::new(ev, ctx)
}

#[tokio::test]
async fn a_retry_after_past_the_stop_fails_its_messages_at_once_for_sqs_to_retry() {
    let f = fixture().await;
    let deps = retrying(&f);
    // A minute's Retry-After on the first fetch (person 3), one second before the stop.
    f.sim.sim().push_fault(source_sim::Fault::RateLimited {
        retry_after_secs: 60,
    });
    let ev = invoke_with(
        sample("webhook-batch"),
        Some(STOP_MARGIN + Duration::from_secs(1)),
    );
    let r = tokio::time::timeout(Duration::from_secs(1), handle(&deps, ev))
        .await
        .expect("answered before the stop")
        .unwrap();
    // Person 3's two messages fail (SQS redelivers them); donation 2 is written.
    assert_eq!(
        failures(&r),
        vec![
            "2e1424d4-f796-459a-8184-9c92662be6da",
            "2e1424d4-f796-459a-8184-9c92662be6db"
        ]
    );
    assert!(f.store.get("people", "3").await.unwrap().is_none());
    assert!(f.store.get("donations", "2").await.unwrap().is_some());
    // The redelivery, with time to spare, processes them (nothing marked them done).
    let r = handle(&deps, invoke(sample("webhook-batch")))
        .await
        .unwrap();
    assert!(failures(&r).is_empty());
    assert!(f.store.get("people", "3").await.unwrap().is_some());
}

#[tokio::test]
async fn negative_control_without_a_deadline_the_worker_sleeps_the_whole_retry_after() {
    let f = fixture().await;
    let deps = retrying(&f);
    f.sim.sim().push_fault(source_sim::Fault::RateLimited {
        retry_after_secs: 60,
    });
    // A local invocation (no deadline): the minute is waited, so a deployed worker would
    // time out with the whole batch.
    let ev = invoke_with(sample("webhook-batch"), None);
    let waited = tokio::time::timeout(Duration::from_secs(1), handle(&deps, ev)).await;
    assert!(
        waited.is_err(),
        "still sleeping on the Retry-After: aborted"
    );
    assert_eq!(f.sim.sim().stats().rate_limited, 1);
}
