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
