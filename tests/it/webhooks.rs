//! Webhooks end to end (issue 4, "Tests"): the ingest logic on moto's SQS, the worker on
//! DynamoDB Local against the simulator, and the simulator's own signed deliveries through a
//! local HTTP server.
//!
//! The pairs (invariant test -> its negative control, the naive behaviour switched in):
//! - an older response after a newer write: `an_older_fetch_after_a_newer_write_leaves_the_newer`
//!   -> `negative_control_unconditional_write_keeps_the_older_fetch`;
//! - a delete racing a re-create: `a_delete_event_for_a_record_the_source_has_keeps_it`
//!   -> `negative_control_delete_without_confirmation_loses_a_live_record`;
//! - a failure mid-batch: `a_failure_mid_batch_loses_nothing_and_retries_only_the_failed`
//!   -> `negative_control_dedup_marker_before_the_work_loses_the_failed_message`;
//! - a 404 storm: `a_404_storm_deletes_nothing` -> `negative_control_without_a_ceiling_a_404_storm_deletes_live_records`.

use crate::conformance_dynamodb::dynamodb_stores;
use crate::delta::BlindStore;
use crate::harness::{QueueSpec, create_queue, queue_depth, sqs_client};
use shared::SourceError;
use shared::adapters::sqs::{SqsQueue, peek_dead_letters, redrive_dead_letters};
use shared::config::{Config, SignatureScheme};
use shared::core::timefmt::now_us;
use shared::model::{Micros, Record, Strategy};
use shared::ports::{Queue, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::sync::worker::{
    BatchReport, DedupMode, InMessage, WorkerDeps, WorkerOptions, process_batch,
};
use shared::webhook::Ingest;
use shared::webhook::signature::sign;
use shared::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use source_sim::{
    Entity, Fault, PcoEncoding, RetrySchedule, SimHandle, WebhookFaults, WebhookScheme,
    WebhookTarget,
};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use testkit::forward::{Forward, SourceHooks};
use testkit::sim;

const E: &str = "people";
const SECRET: &str = "it-webhook-secret";

type Records = Arc<dyn RecordStore>;
type Control = Arc<dyn shared::ports::ControlStore>;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn config(h: &SimHandle) -> Config {
    testkit::config::quick(&h.base_url(), |c| c.source.max_attempts = 1)
}

fn client(h: &SimHandle) -> SourceClient {
    SourceClient::new(&config(h), None).expect("client")
}

fn envelope(id: &str, event_id: Option<&str>, action: EnvelopeAction) -> String {
    serde_json::to_string(&QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind: if event_id.is_some() {
            MessageKind::Webhook
        } else {
            MessageKind::Targeted
        },
        entity: E.into(),
        id: id.into(),
        event_id: event_id.map(str::to_owned),
        action: Some(action),
        reason: None,
        received_at: now_us(),
    })
    .unwrap()
}

/// Messages named `m<i>`.
fn msgs(bodies: Vec<String>) -> Vec<InMessage> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| InMessage {
            message_id: format!("m{i}"),
            body,
        })
        .collect()
}

async fn work(
    src: &dyn SourceApi,
    rs: &Records,
    cs: &Control,
    m: &[InMessage],
    o: &WorkerOptions,
) -> BatchReport {
    process_batch(
        &WorkerDeps {
            source: src,
            records: rs.as_ref(),
            control: cs.as_ref(),
        },
        m,
        o,
    )
    .await
}

fn opts() -> WorkerOptions {
    WorkerOptions::default()
}

/// Sync `ids` into the store as a targeted message would.
async fn seed(src: &dyn SourceApi, rs: &Records, cs: &Control, ids: &[u64]) {
    let m = msgs(
        ids.iter()
            .map(|i| envelope(&i.to_string(), None, EnvelopeAction::Upsert))
            .collect(),
    );
    let r = work(src, rs, cs, &m, &opts()).await;
    assert!(r.failed.is_empty(), "{r:?}");
}

async fn is_live(rs: &Records, id: u64) -> bool {
    rs.get(E, &id.to_string())
        .await
        .unwrap()
        .is_some_and(|r| !r.is_deleted())
}

/// The stored delta of `id` (`None`: absent or deleted).
async fn stored_delta(rs: &Records, id: u64) -> Option<Micros> {
    rs.get(E, &id.to_string())
        .await
        .unwrap()
        .filter(|r| !r.is_deleted())
        .map(|r| r.version.delta_us)
}

fn sim_delta(h: &SimHandle, id: u64) -> Option<Micros> {
    h.sim().get(Entity::People, id).map(|v| v.updated_at_us)
}

/// A source's hook that answers `get_by_id` of one record with a response captured earlier (a
/// slow fetch overtaken by a newer one), once.
struct StaleOnce {
    stale: Mutex<Option<Record>>,
}

#[async_trait::async_trait]
impl<S: SourceApi + ?Sized> SourceHooks<S> for StaleOnce {
    async fn get_by_id(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        if let Some(r) = self.stale.lock().unwrap().take() {
            return Ok(Some(r));
        }
        inner.get_by_id(entity, id).await
    }
}

/// A source's hook whose 404 for a record races a concurrent writer: between the request and
/// the answer, the record changes at the source and another strategy syncs the newer version,
/// then the (older) 404 arrives.
struct RacingNotFound {
    sim: source_sim::Sim,
    store: Records,
}

#[async_trait::async_trait]
impl<S: SourceApi + ?Sized> SourceHooks<S> for RacingNotFound {
    async fn get_by_id(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.sim
            .update(Entity::People, id.parse().expect("numeric"), None);
        let fresh = inner.get_by_id(entity, id).await?.expect("present");
        let out = self
            .store
            .upsert(&fresh, Strategy::Delta)
            .await
            .expect("concurrent write");
        assert!(
            out.wrote(),
            "the concurrent writer stores the newer version"
        );
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// ingest on moto's SQS: every answer
// ---------------------------------------------------------------------------------------------

fn pco_body(events: &[(&str, &str, &str)]) -> String {
    let data: Vec<serde_json::Value> = events
        .iter()
        .map(|(event_id, name, record_id)| {
            serde_json::json!({"id": event_id, "type": "EventDelivery", "attributes": {
                "name": name, "attempt": 1,
                "payload": serde_json::json!({"data": {"id": record_id, "type": "Person"}}).to_string()
            }})
        })
        .collect();
    serde_json::json!({ "data": data }).to_string()
}

fn headers(pairs: Vec<(String, String)>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn signed(ingest: &Ingest, secret: &str, body: &str, id: &str, ts: i64) -> http::HeaderMap {
    headers(sign(ingest.scheme(), secret, body.as_bytes(), id, ts).unwrap())
}

#[tokio::test]
async fn ingest_answers_each_case_with_its_status_on_sqs() {
    let h = sim::people(1).await;
    let sqs = sqs_client().await;
    let q = create_queue(&sqs, &QueueSpec::default()).await;
    let queue = Arc::new(SqsQueue::new(sqs.clone(), &q.url));
    let ingest = Ingest::new(&config(&h), &["rotated-out", SECRET], queue).unwrap();
    let now = now_us();
    let send = |body: String, hm: http::HeaderMap| {
        let ingest = &ingest;
        async move { ingest.handle(&hm, body.as_bytes(), now).await.status }
    };

    // 200, queued: three events in one delivery, one of them unknown (ignored, counted).
    let body = pco_body(&[
        ("e1", "people.v2.events.person.updated", "1"),
        ("e2", "people.v2.events.person.destroyed", "2"),
        ("e3", "people.v2.events.household.created", "3"),
    ]);
    assert_eq!(
        send(body.clone(), signed(&ingest, SECRET, &body, "", 0)).await,
        200
    );
    assert_eq!(queue_depth(&sqs, &q.url).await, 2);
    // The rotated-out secret is still accepted.
    assert_eq!(
        send(body.clone(), signed(&ingest, "rotated-out", &body, "", 0)).await,
        200
    );
    assert_eq!(queue_depth(&sqs, &q.url).await, 4);
    // 401: a stranger's signature, or none.
    assert_eq!(
        send(body.clone(), signed(&ingest, "stranger", &body, "", 0)).await,
        401
    );
    assert_eq!(send(body.clone(), http::HeaderMap::new()).await, 401);
    // 400: signed, not JSON.
    let bad = "[1,2".to_owned();
    assert_eq!(
        send(bad.clone(), signed(&ingest, SECRET, &bad, "", 0)).await,
        400
    );
    // 413: over the limit.
    let big = "x".repeat(ingest.max_body_bytes() + 1);
    assert_eq!(
        send(big.clone(), signed(&ingest, SECRET, &big, "", 0)).await,
        413
    );
    // 200 and nothing queued: only unknown events.
    let unknown = pco_body(&[("e4", "people.v2.events.household.created", "3")]);
    assert_eq!(
        send(unknown.clone(), signed(&ingest, SECRET, &unknown, "", 0)).await,
        200
    );
    assert_eq!(
        queue_depth(&sqs, &q.url).await,
        4,
        "refused or ignored deliveries queue nothing"
    );

    // 503: the queue is gone, so the sender must retry.
    let gone = Arc::new(SqsQueue::new(sqs.clone(), format!("{}-missing", q.url)));
    let ingest_gone = Ingest::new(&config(&h), &[SECRET], gone).unwrap();
    let a = ingest_gone
        .handle(&signed(&ingest, SECRET, &body, "", 0), body.as_bytes(), now)
        .await;
    assert_eq!(a.status, 503);
}

#[tokio::test]
async fn standard_webhooks_replays_outside_the_window_are_refused_and_retries_deduplicated() {
    let h = sim::people(3).await;
    let mut cfg = config(&h);
    let w = cfg.webhooks.as_mut().unwrap();
    w.scheme = SignatureScheme::StandardWebhooks {
        tolerance_seconds: 300,
    };
    let (rs, cs) = dynamodb_stores().await;
    let store = shared::adapters::local::LocalStore::in_memory().unwrap();
    let q = Arc::new(store.queue("work", Default::default()));
    let secret = "whsec_aXQtc3RhbmRhcmQtd2ViaG9vay1zZWNyZXQ=";
    let ingest = Ingest::new(&cfg, &[secret], q.clone()).unwrap();
    let body = pco_body(&[("ignored-by-header", "people.v2.events.person.updated", "1")]);
    let sent_s = now_us() / 1_000_000;
    let hm = signed(&ingest, secret, &body, "msg_retry_1", sent_s);
    // The sender retries twice within the window; a replay an hour later is refused.
    for at in [sent_s, sent_s + 60] {
        assert_eq!(
            ingest
                .handle(&hm, body.as_bytes(), at * 1_000_000)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        ingest
            .handle(&hm, body.as_bytes(), (sent_s + 3600) * 1_000_000)
            .await
            .status,
        401
    );
    // Both copies carry the webhook-id: the worker fetches once and deduplicates the other.
    let received = q.receive(10, 0).await.unwrap();
    assert_eq!(received.len(), 2);
    let m: Vec<InMessage> = received.iter().map(InMessage::from).collect();
    let src = client(&h);
    let first = work(&src, &rs, &cs, &m[..1], &opts()).await;
    let second = work(&src, &rs, &cs, &m[1..], &opts()).await;
    assert_eq!((first.written, first.get_by_id_calls), (1, 1));
    assert_eq!((second.duplicates, second.get_by_id_calls), (1, 0));
}

// ---------------------------------------------------------------------------------------------
// the worker on DynamoDB Local
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_duplicate_delivery_is_processed_once() {
    let h = sim::people(5).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    let m = msgs(vec![
        envelope("1", Some("evt-dup"), EnvelopeAction::Upsert),
        envelope("1", Some("evt-dup"), EnvelopeAction::Upsert),
    ]);
    // Both copies in one batch, then a redelivery of the batch.
    let r1 = work(&src, &rs, &cs, &m, &opts()).await;
    assert_eq!((r1.get_by_id_calls, r1.written, r1.duplicates), (1, 1, 1));
    h.sim().update(Entity::People, 1, None);
    let r2 = work(&src, &rs, &cs, &m, &opts()).await;
    assert_eq!((r2.get_by_id_calls, r2.written, r2.duplicates), (0, 0, 2));
    assert!(r1.failed.is_empty() && r2.failed.is_empty());
}

async fn older_fetch_after_newer(rs: Records, cs: Control) -> (Option<Micros>, Option<Micros>) {
    let h = sim::people(3).await;
    let src = client(&h);
    // A fetch of the record as it was, delayed until after the newer write.
    let old = src.get_by_id(E, "1").await.unwrap().unwrap();
    h.sim().update(Entity::People, 1, None);
    let newer = sim_delta(&h, 1);
    let fresh = work(
        &src,
        &rs,
        &cs,
        &msgs(vec![envelope("1", Some("evt-new"), EnvelopeAction::Upsert)]),
        &opts(),
    )
    .await;
    assert_eq!(fresh.written, 1);
    let late = Forward::new(
        Arc::new(client(&h)),
        StaleOnce {
            stale: Mutex::new(Some(old)),
        },
    );
    let r = work(
        &late,
        &rs,
        &cs,
        &msgs(vec![envelope("1", Some("evt-old"), EnvelopeAction::Upsert)]),
        &opts(),
    )
    .await;
    assert!(r.failed.is_empty());
    (stored_delta(&rs, 1).await, newer)
}

#[tokio::test]
async fn an_older_fetch_after_a_newer_write_leaves_the_newer() {
    let (rs, cs) = dynamodb_stores().await;
    let (stored, newer) = older_fetch_after_newer(rs, cs).await;
    assert_eq!(stored, newer);
}

#[tokio::test]
async fn negative_control_unconditional_write_keeps_the_older_fetch() {
    let (_, cs) = dynamodb_stores().await;
    let rs: Records = Arc::new(BlindStore::default());
    let (stored, newer) = older_fetch_after_newer(rs, cs).await;
    assert!(
        stored < newer,
        "the unconditional write must keep the older version"
    );
}

#[tokio::test]
async fn a_delete_then_a_late_update_does_not_resurrect() {
    let h = sim::people(5).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    seed(&src, &rs, &cs, &[2]).await;
    assert!(h.sim().delete(Entity::People, 2));
    let del = work(
        &src,
        &rs,
        &cs,
        &msgs(vec![envelope("2", Some("evt-del"), EnvelopeAction::Delete)]),
        &opts(),
    )
    .await;
    assert_eq!(del.deleted, 1);
    // The update event sent before the delete arrives now.
    let late = work(
        &src,
        &rs,
        &cs,
        &msgs(vec![envelope("2", Some("evt-upd"), EnvelopeAction::Upsert)]),
        &opts(),
    )
    .await;
    assert!(late.failed.is_empty());
    assert_eq!((late.written, late.delete_skipped), (0, 1));
    assert!(!is_live(&rs, 2).await, "a late update must not resurrect");
    assert!(
        rs.get(E, "2").await.unwrap().is_some(),
        "soft delete keeps the item"
    );
}

async fn delete_event_for_a_live_record(confirm_deletes: bool) -> bool {
    let h = sim::people(5).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    seed(&src, &rs, &cs, &[3]).await;
    // The delete event raced a re-create (or was reordered after it): the source has the record.
    let o = WorkerOptions {
        confirm_deletes,
        ..opts()
    };
    let r = work(
        &src,
        &rs,
        &cs,
        &msgs(vec![envelope(
            "3",
            Some("evt-del-3"),
            EnvelopeAction::Delete,
        )]),
        &o,
    )
    .await;
    assert!(r.failed.is_empty());
    is_live(&rs, 3).await
}

#[tokio::test]
async fn a_delete_event_for_a_record_the_source_has_keeps_it() {
    assert!(delete_event_for_a_live_record(true).await);
}

#[tokio::test]
async fn negative_control_delete_without_confirmation_loses_a_live_record() {
    assert!(!delete_event_for_a_live_record(false).await);
}

#[tokio::test]
async fn a_404_does_not_delete_a_record_synced_after_the_request() {
    let h = sim::people(5).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    seed(&src, &rs, &cs, &[4]).await;
    let racing = Forward::new(
        Arc::new(client(&h)),
        RacingNotFound {
            sim: h.sim(),
            store: rs.clone(),
        },
    );
    let r = work(
        &racing,
        &rs,
        &cs,
        &msgs(vec![envelope(
            "4",
            Some("evt-del-4"),
            EnvelopeAction::Delete,
        )]),
        &opts(),
    )
    .await;
    assert!(r.failed.is_empty());
    assert_eq!((r.deleted, r.delete_skipped), (0, 1));
    assert!(is_live(&rs, 4).await);
}

async fn failure_mid_batch(dedup: DedupMode) -> (BatchReport, BatchReport, usize) {
    let h = sim::people(10).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    let o = WorkerOptions {
        dedup,
        concurrency: 1,
        ..opts()
    };
    let bodies: Vec<String> = (1..=5)
        .map(|i| {
            envelope(
                &i.to_string(),
                Some(&format!("evt-mid-{i}")),
                EnvelopeAction::Upsert,
            )
        })
        .collect();
    let m = msgs(bodies);
    // The third fetch fails (the client does not retry: max_attempts 1).
    h.sim().push_faults([
        Fault::Delay(Duration::ZERO),
        Fault::Delay(Duration::ZERO),
        Fault::Status(503),
    ]);
    let first = work(&src, &rs, &cs, &m, &o).await;
    // SQS redelivers only the failed messages.
    let retry: Vec<InMessage> = m
        .iter()
        .filter(|x| first.failed.contains(&x.message_id))
        .cloned()
        .collect();
    let second = work(&src, &rs, &cs, &retry, &o).await;
    let mut live = 0;
    for i in 1..=5 {
        live += usize::from(is_live(&rs, i).await);
    }
    (first, second, live)
}

#[tokio::test]
async fn a_failure_mid_batch_loses_nothing_and_retries_only_the_failed() {
    let (first, second, live) = failure_mid_batch(DedupMode::CompletedAfter).await;
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert_eq!(first.written, 4);
    assert_eq!((second.written, second.failed.len()), (1, 0));
    assert_eq!(live, 5);
}

#[tokio::test]
async fn negative_control_dedup_marker_before_the_work_loses_the_failed_message() {
    let (first, second, live) = failure_mid_batch(DedupMode::CompletedFirst).await;
    assert_eq!(first.failed.len(), 1);
    assert_eq!(
        second.duplicates, 1,
        "the redelivery is taken for a duplicate"
    );
    assert_eq!(live, 4, "and its record is never synced");
}

async fn storm(ceiling: f64) -> (BatchReport, usize) {
    let h = sim::people(12).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    let ids: Vec<u64> = (1..=10).collect();
    seed(&src, &rs, &cs, &ids).await;
    // A wrong base path or an API change: every fetch answers a JSON 404.
    h.sim().push_faults((0..10).map(|_| Fault::Status(404)));
    let o = WorkerOptions {
        not_found_ceiling: ceiling,
        ..opts()
    };
    let m = msgs(
        ids.iter()
            .map(|i| {
                envelope(
                    &i.to_string(),
                    Some(&format!("evt-storm-{i}")),
                    EnvelopeAction::Upsert,
                )
            })
            .collect(),
    );
    let r = work(&src, &rs, &cs, &m, &o).await;
    let mut live = 0;
    for i in &ids {
        live += usize::from(is_live(&rs, *i).await);
    }
    (r, live)
}

#[tokio::test]
async fn a_404_storm_deletes_nothing() {
    let (r, live) = storm(0.5).await;
    assert!(r.ceiling_tripped);
    assert_eq!(r.failed.len(), 10, "the messages fail, to be retried");
    assert_eq!((r.deleted, live), (0, 10));
}

#[tokio::test]
async fn negative_control_without_a_ceiling_a_404_storm_deletes_live_records() {
    let (r, live) = storm(f64::INFINITY).await;
    assert!(!r.ceiling_tripped);
    assert_eq!((r.deleted, live), (10, 0));
}

#[tokio::test]
async fn announced_deletes_are_not_a_storm() {
    let h = sim::people(12).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    let ids: Vec<u64> = (1..=10).collect();
    seed(&src, &rs, &cs, &ids).await;
    for i in &ids {
        h.sim().delete(Entity::People, *i);
    }
    let m = msgs(
        ids.iter()
            .map(|i| {
                envelope(
                    &i.to_string(),
                    Some(&format!("evt-gone-{i}")),
                    EnvelopeAction::Delete,
                )
            })
            .collect(),
    );
    let r = work(&src, &rs, &cs, &m, &opts()).await;
    assert!(!r.ceiling_tripped && r.failed.is_empty());
    assert_eq!(r.deleted, 10);
}

// ---------------------------------------------------------------------------------------------
// through SQS: bursts, poison, the DLQ
// ---------------------------------------------------------------------------------------------

/// Receive, process and delete until the queue is empty; returns the batch reports.
async fn drain(
    queue: &dyn Queue,
    src: &dyn SourceApi,
    rs: &Records,
    cs: &Control,
    o: &WorkerOptions,
) -> Vec<BatchReport> {
    let mut reports = Vec::new();
    loop {
        let got = queue.receive(10, 0).await.unwrap();
        if got.is_empty() {
            return reports;
        }
        let m: Vec<InMessage> = got.iter().map(InMessage::from).collect();
        let report = work(src, rs, cs, &m, o).await;
        for r in &got {
            if !report.failed.contains(&r.message_id) {
                queue.delete(&r.receipt).await.unwrap();
            }
        }
        reports.push(report);
    }
}

#[tokio::test]
async fn a_burst_of_100_events_for_one_record_costs_one_get_by_id_per_batch() {
    let h = sim::people(3).await;
    let (rs, cs) = dynamodb_stores().await;
    let sqs = sqs_client().await;
    let q = create_queue(&sqs, &QueueSpec::default()).await;
    let queue = SqsQueue::new(sqs.clone(), &q.url);
    let bodies: Vec<String> = (0..100)
        .map(|i| envelope("1", Some(&format!("evt-burst-{i}")), EnvelopeAction::Upsert))
        .collect();
    assert!(queue.send_batch(&bodies).await.unwrap().is_empty());
    h.sim().reset_stats();
    let src = client(&h);
    let reports = drain(&queue, &src, &rs, &cs, &opts()).await;
    let batches = reports.len() as u64;
    assert!((10..=100).contains(&batches), "{batches} batches");
    assert_eq!(h.sim().stats().get_requests, batches, "one fetch per batch");
    assert_eq!(reports.iter().map(|r| r.written).sum::<usize>(), 1);
    assert!(reports.iter().all(|r| r.failed.is_empty()));
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dlq_and_a_replay_after_recovery_processes_the_rest() {
    let h = sim::people(5).await;
    let (rs, cs) = dynamodb_stores().await;
    let sqs = sqs_client().await;
    let q = create_queue(
        &sqs,
        &QueueSpec {
            visibility_timeout_s: Some(1),
            dlq_max_receive_count: Some(2),
            ..Default::default()
        },
    )
    .await;
    let queue = SqsQueue::new(sqs.clone(), &q.url);
    let dlq = SqsQueue::new(sqs.clone(), q.dlq_url.clone().unwrap());
    // A poison message, and one that fails while the source is down.
    let bodies = vec![
        r#"{"v":1,"kind":"webhook"}"#.to_owned(),
        envelope("5", Some("evt-outage"), EnvelopeAction::Upsert),
    ];
    assert!(queue.send_batch(&bodies).await.unwrap().is_empty());
    let src = client(&h);
    let mut receives = 0;
    // Keep failing until SQS's redrive moves both to the DLQ.
    for _ in 0..20 {
        h.sim().push_faults((0..3).map(|_| Fault::Status(503)));
        let got = queue.receive(10, 1_500).await.unwrap();
        receives += got.len();
        if got.is_empty() && queue_depth(&sqs, &q.url).await == 0 {
            break;
        }
        let m: Vec<InMessage> = got.iter().map(InMessage::from).collect();
        let r = work(&src, &rs, &cs, &m, &opts()).await;
        assert_eq!(
            r.failed.len(),
            got.len(),
            "everything fails during the outage"
        );
    }
    h.sim().clear_faults();
    assert_eq!(
        receives, 4,
        "each message was received maxReceiveCount times"
    );
    assert_eq!(queue_depth(&sqs, q.dlq_url.as_ref().unwrap()).await, 2);
    assert!(!is_live(&rs, 5).await);
    // `syncctl dlq list` leaves them there; `syncctl dlq replay --id` moves the named one.
    let seen = peek_dead_letters(&dlq, 10).await.unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(queue_depth(&sqs, q.dlq_url.as_ref().unwrap()).await, 2);
    let outage = seen
        .iter()
        .find(|m| m.body.contains("evt-outage"))
        .unwrap()
        .message_id
        .clone();
    let one = redrive_dead_letters(&queue, &dlq, Some(&[outage, "no-such-id".into()]))
        .await
        .unwrap();
    assert_eq!((one.moved, one.failed), (1, 0));
    assert_eq!(one.not_found, vec!["no-such-id".to_owned()]);
    assert_eq!(queue_depth(&sqs, q.dlq_url.as_ref().unwrap()).await, 1);
    let rest = redrive_dead_letters(&queue, &dlq, None).await.unwrap();
    assert_eq!(rest.moved, 1);
    assert_eq!(queue_depth(&sqs, q.dlq_url.as_ref().unwrap()).await, 0);
    let reports = drain(&queue, &src, &rs, &cs, &opts()).await;
    assert!(is_live(&rs, 5).await, "the replayed message is processed");
    assert_eq!(reports.iter().map(|r| r.poison).sum::<usize>(), 1);
}

// ---------------------------------------------------------------------------------------------
// the simulator's own deliveries, through a local HTTP endpoint, SQS and the worker
// ---------------------------------------------------------------------------------------------

/// `POST /webhooks` → `Ingest` (what API Gateway and the ingest Lambda do).
async fn serve_ingest(ingest: Arc<Ingest>) -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/webhooks",
            post(
                |axum::extract::State(ingest): axum::extract::State<Arc<Ingest>>,
                 hm: http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let a = ingest.handle(&hm, &body, now_us()).await;
                    (http::StatusCode::from_u16(a.status).unwrap(), a.body)
                },
            ),
        )
        .with_state(ingest);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/webhooks")
}

#[tokio::test]
async fn simulator_deliveries_with_duplicates_and_reordering_converge() {
    let h = sim::people(40).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    seed(&src, &rs, &cs, &(1..=40).collect::<Vec<_>>()).await;
    let sqs = sqs_client().await;
    let q = create_queue(&sqs, &QueueSpec::default()).await;
    let queue = Arc::new(SqsQueue::new(sqs.clone(), &q.url));
    let ingest = Arc::new(Ingest::new(&config(&h), &[SECRET], queue.clone()).unwrap());
    let url = serve_ingest(ingest).await;
    h.sim()
        .set_webhook_target(Some(
            WebhookTarget::new(
                url,
                WebhookScheme::Pco {
                    encoding: PcoEncoding::Hex,
                },
                SECRET,
            )
            .with_retry(RetrySchedule::fast())
            .with_faults(WebhookFaults {
                duplicate_rate: 0.3,
                reorder_rate: 0.3,
                ..Default::default()
            }),
        ))
        .unwrap();
    // Updates (some twice), deletes and creates.
    let s = h.sim();
    for i in 1..=20 {
        s.update(Entity::People, i, None);
    }
    for i in 1..=5 {
        s.update(Entity::People, i, None);
    }
    for i in 21..=25 {
        s.delete(Entity::People, i);
    }
    let created: Vec<u64> = (0..5).map(|_| s.create(Entity::People, None).id).collect();
    let changes = 20 + 5 + 5 + 5;
    let stats = s
        .wait_webhooks(Duration::from_secs(20), |st| {
            st.changes >= changes && st.pending == 0 && st.delivered >= changes
        })
        .await
        .expect("every change delivered");
    assert!(stats.duplicated > 0, "the duplicate fault fired: {stats:?}");
    assert_eq!(stats.non_200, 0, "{stats:?}");
    let reports = drain(queue.as_ref(), &src, &rs, &cs, &opts()).await;
    assert!(reports.iter().all(|r| r.failed.is_empty()));
    assert!(reports.iter().map(|r| r.duplicates).sum::<usize>() > 0);
    // The store equals the source for every touched record.
    for i in (1..=25).chain(created.iter().copied()) {
        assert_eq!(stored_delta(&rs, i).await, sim_delta(&h, i), "person {i}");
    }
}
