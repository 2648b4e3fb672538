//! Big deliveries (issue 11, requirement 7): events per delivery capped by
//! `[webhooks] max_events` (413 after the signature, nothing queued), SendMessageBatch calls
//! concurrent (bounded), and a 503 at the stop instant when the queue is slower than the
//! invocation: on moto's SQS, on the local queue (a full 1,000-event delivery: moto's SQS
//! spends time in proportion to the queue's depth on every message, about 20 s for 1,000 on
//! this machine, so on moto the cap is set to 200), and on an SQS endpoint that never answers.
//!
//! The pairs (protection -> its negative control):
//! - the cap: `over_max_events_is_413_and_queues_nothing_at_the_cap_all_are_queued_concurrently`
//!   -> `negative_control_with_the_cap_lifted_the_big_delivery_is_queued` (the same delivery
//!   queued in full: the 413 is the cap's doing);
//! - concurrent sends: the same test (8 calls in flight) ->
//!   `negative_control_one_send_at_a_time_never_overlaps` (the gauge sees one);
//! - the deadline: `a_queue_slower_than_the_invocation_is_503_at_the_stop` ->
//!   `negative_control_ignoring_the_deadline_waits_for_the_queue_past_the_stop`.

use crate::harness::{QueueSpec, create_queue, queue_depth, sdk_config, sqs_client};
use shared::adapters::local::{LocalStore, QueueOptions};
use shared::adapters::sqs::{SEND_CONCURRENCY, SqsQueue};
use shared::config::Config;
use shared::core::deadline;
use shared::core::timefmt::now_us;
use shared::webhook::Ingest;
use shared::webhook::ingest::{Answer, Outcome};
use shared::webhook::signature::sign;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "it-delivery-secret";

/// The embedded configuration (its `[webhooks]` table: Planning Center's hex HMAC), with
/// `max_events` when given.
fn config(max_events: Option<usize>) -> Config {
    let mut cfg = testkit::config::at("http://127.0.0.1:9");
    if let (Some(n), Some(w)) = (max_events, cfg.webhooks.as_mut()) {
        w.max_events = n;
    }
    cfg
}

/// A Planning Center delivery of `n` person updates.
fn delivery(n: usize) -> String {
    let data: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("ev-{i}"), "type": "EventDelivery", "attributes": {
                "name": "people.v2.events.person.updated",
                "payload": serde_json::json!({"data": {"id": (i + 1).to_string()}}).to_string()
            }})
        })
        .collect();
    serde_json::json!({ "data": data }).to_string()
}

async fn deliver(ingest: &Ingest, body: &str) -> Answer {
    let pairs = sign(ingest.scheme(), SECRET, body.as_bytes(), "", 0).unwrap();
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    ingest.handle(&h, body.as_bytes(), now_us()).await
}

/// A fresh moto queue, the adapter on it, and the ingest in front.
async fn on_moto(
    max_events: Option<usize>,
    edit: impl FnOnce(SqsQueue) -> SqsQueue,
) -> (aws_sdk_sqs::Client, String, SqsQueue, Ingest) {
    let sqs = sqs_client().await;
    let q = create_queue(&sqs, &QueueSpec::default()).await;
    let queue = edit(SqsQueue::new(sqs.clone(), &q.url));
    let ingest = Ingest::new(&config(max_events), &[SECRET], Arc::new(queue.clone())).unwrap();
    (sqs, q.url, queue, ingest)
}

#[tokio::test]
async fn over_max_events_is_413_and_queues_nothing_at_the_cap_all_are_queued_concurrently() {
    let (sqs, url, queue, ingest) = on_moto(None, |q| q).await;
    // 1,001 events, one over the default cap: 413, saying why, and nothing on the queue.
    let a = deliver(&ingest, &delivery(1_001)).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(
        a.outcome,
        Outcome::TooManyEvents {
            events: 1_001,
            limit: 1_000
        }
    );
    assert!(a.body.contains("too many events"), "{}", a.body);
    assert_eq!(queue_depth(&sqs, &url).await, 0);
    assert_eq!(queue.max_sends_in_flight(), 0, "no call at all");
    // 1,000 events, at the cap: accepted and every one queued (on the local queue; on moto,
    // the same below with a cap of 200).
    let local = Arc::new(
        LocalStore::in_memory()
            .unwrap()
            .queue("work", QueueOptions::default()),
    );
    let on_local = Ingest::new(&config(None), &[SECRET], local.clone()).unwrap();
    let a = deliver(&on_local, &delivery(1_000)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(local.counts().await.unwrap().visible, 1_000);
    // On moto's SQS: 201 events over a cap of 200 refused, 200 queued in 20
    // SendMessageBatch calls, eight of them in flight at once.
    let (sqs, url, queue, ingest) = on_moto(Some(200), |q| q).await;
    assert_eq!(deliver(&ingest, &delivery(201)).await.status, 413);
    assert_eq!(queue_depth(&sqs, &url).await, 0);
    let a = deliver(&ingest, &delivery(200)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.outcome,
        Outcome::Queued {
            queued: 200,
            ignored: 0
        }
    );
    assert_eq!(queue_depth(&sqs, &url).await, 200);
    assert_eq!(queue.max_sends_in_flight(), SEND_CONCURRENCY);
}

#[tokio::test]
async fn negative_control_with_the_cap_lifted_the_big_delivery_is_queued() {
    let local = Arc::new(
        LocalStore::in_memory()
            .unwrap()
            .queue("work", QueueOptions::default()),
    );
    let ingest = Ingest::new(&config(Some(10_000)), &[SECRET], local.clone()).unwrap();
    let a = deliver(&ingest, &delivery(1_001)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(local.counts().await.unwrap().visible, 1_001);
    let (sqs, url, _queue, ingest) = on_moto(Some(10_000), |q| q).await;
    let a = deliver(&ingest, &delivery(201)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(queue_depth(&sqs, &url).await, 201);
}

#[tokio::test]
async fn negative_control_one_send_at_a_time_never_overlaps() {
    let (sqs, url, queue, ingest) = on_moto(None, |q| q.with_send_concurrency(1)).await;
    let a = deliver(&ingest, &delivery(100)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(queue_depth(&sqs, &url).await, 100);
    assert_eq!(queue.max_sends_in_flight(), 1);
}

/// An SQS endpoint that accepts connections and never answers.
async fn hanging_sqs() -> SqsQueue {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let conf = aws_sdk_sqs::config::Builder::from(&sdk_config().await)
        .endpoint_url(format!("http://{addr}"))
        .build();
    SqsQueue::new(
        aws_sdk_sqs::Client::from_conf(conf),
        format!("http://{addr}/000000000000/hangs"),
    )
}

#[tokio::test]
async fn a_queue_slower_than_the_invocation_is_503_at_the_stop() {
    let ingest = Ingest::new(&config(None), &[SECRET], Arc::new(hanging_sqs().await)).unwrap();
    let stop = Instant::now() + Duration::from_millis(500);
    let body = delivery(3);
    let a = tokio::time::timeout_at(
        (stop + Duration::from_millis(500)).into(),
        deadline::within(Some(stop), deliver(&ingest, &body)),
    )
    .await
    .expect("answered at the stop, not after");
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.outcome, Outcome::QueueTimedOut { of: 3 });
}

#[tokio::test]
async fn negative_control_ignoring_the_deadline_waits_for_the_queue_past_the_stop() {
    let ingest = Ingest::new(&config(None), &[SECRET], Arc::new(hanging_sqs().await))
        .unwrap()
        .ignoring_deadline();
    let stop = Instant::now() + Duration::from_millis(500);
    let body = delivery(3);
    let a = tokio::time::timeout_at(
        (stop + Duration::from_millis(500)).into(),
        deadline::within(Some(stop), deliver(&ingest, &body)),
    )
    .await;
    assert!(
        a.is_err(),
        "still waiting for the queue after the stop: {a:?}"
    );
}
