//! Every sample in events/webhook-ingest/ goes through `handle` as API Gateway sends it.
//! Samples are signed with the test secrets below; the clock is injected.

use super::*;
use async_trait::async_trait;
use shared::Config;
use shared::adapters::local::{LocalQueue, LocalStore, QueueOptions};
use shared::error::StoreError;
use shared::ports::{Queue, ReceivedMessage};
use shared::wire::{EnvelopeAction, MessageKind, QueueEnvelope};
use std::sync::Arc;

/// The secret events/webhook-ingest/pco-*.json are signed with.
const PCO_SECRET: &str = "pco-test-secret";
/// The secret events/webhook-ingest/standard-webhooks.json is signed with.
const STANDARD_SECRET: &str = "whsec_c3RhbmRhcmQtdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OSE=";
/// Its `webhook-timestamp` (seconds).
const STANDARD_TS: i64 = 1_764_118_800;

fn sample(name: &str) -> Request {
    let text = match name {
        "pco-person-updated" => {
            include_str!("../../../../events/webhook-ingest/pco-person-updated.json")
        }
        "pco-batch" => include_str!("../../../../events/webhook-ingest/pco-batch.json"),
        "bad-signature" => include_str!("../../../../events/webhook-ingest/bad-signature.json"),
        "standard-webhooks" => {
            include_str!("../../../../events/webhook-ingest/standard-webhooks.json")
        }
        other => panic!("no sample {other}"),
    };
    lambda_http::request::from_str(text).expect("an API Gateway v2 request")
}

fn config(standard: bool) -> Config {
    let mut text = shared::config::EMBEDDED.to_owned();
    if standard {
        text = text.replace(
            r#"scheme = { kind = "hmac_header", header = "X-PCO-Webhooks-Authenticity", encoding = "hex" }"#,
            r#"scheme = { kind = "standard_webhooks", tolerance_seconds = 300 }"#,
        );
    }
    text = text.replace("max_body_bytes = 1048576", "max_body_bytes = 4096");
    Config::from_toml_str(&text, std::path::Path::new("test.toml")).unwrap()
}

fn local_queue() -> Arc<LocalQueue> {
    let store = LocalStore::in_memory().unwrap();
    Arc::new(store.queue("work", QueueOptions::default()))
}

fn pco_ingest(queue: Arc<dyn Queue>) -> Ingest {
    Ingest::new(&config(false), &["old-secret", PCO_SECRET], queue).unwrap()
}

async fn drain(q: &LocalQueue) -> Vec<QueueEnvelope> {
    let msgs = q.receive(100, 0).await.unwrap();
    msgs.iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect()
}

fn body_json(r: &Response<Body>) -> serde_json::Value {
    match r.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("not a text body: {other:?}"),
    }
}

fn with_body(mut req: Request, body: &str, headers: &[(String, String)]) -> Request {
    *req.body_mut() = Body::Text(body.to_owned());
    for (k, v) in headers {
        req.headers_mut().insert(
            lambda_http::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

const NOW: Micros = 1_764_118_800_000_000;

#[tokio::test]
async fn a_signed_planning_center_delivery_is_queued() {
    let q = local_queue();
    let ingest = pco_ingest(q.clone());
    let r = handle(&ingest, sample("pco-person-updated"), NOW).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(&r)["queued"], 1);
    let got = drain(&q).await;
    assert_eq!(
        got,
        vec![QueueEnvelope {
            v: 1,
            kind: MessageKind::Webhook,
            entity: "people".into(),
            id: "3".into(),
            event_id: Some("9d7c4a1e-0001-4f4e-9a55-000000000001".into()),
            action: Some(EnvelopeAction::Upsert),
            reason: Some("people.v2.events.person.updated".into()),
            received_at: NOW,
        }]
    );
}

#[tokio::test]
async fn a_batched_delivery_queues_each_event_and_ignores_unknown_ones() {
    let q = local_queue();
    let ingest = pco_ingest(q.clone());
    let r = handle(&ingest, sample("pco-batch"), NOW).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        body_json(&r),
        serde_json::json!({"queued": 3, "ignored": 1})
    );
    let mut got: Vec<(String, String, Option<EnvelopeAction>)> = drain(&q)
        .await
        .into_iter()
        .map(|e| (e.entity, e.id, e.action))
        .collect();
    got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        got,
        vec![
            ("donations".into(), "2".into(), Some(EnvelopeAction::Upsert)),
            ("people".into(), "4".into(), Some(EnvelopeAction::Upsert)),
            ("people".into(), "5".into(), Some(EnvelopeAction::Delete)),
        ]
    );
}

#[tokio::test]
async fn a_bad_or_missing_signature_is_401_and_queues_nothing() {
    let q = local_queue();
    let ingest = pco_ingest(q.clone());
    let r = handle(&ingest, sample("bad-signature"), NOW).await;
    assert_eq!(r.status(), 401);
    let mut unsigned = sample("pco-person-updated");
    unsigned.headers_mut().remove("x-pco-webhooks-authenticity");
    assert_eq!(handle(&ingest, unsigned, NOW).await.status(), 401);
    // Only the rotated-out secret is configured: the new signature does not verify.
    let old_only = Ingest::new(&config(false), &["old-secret"], q.clone()).unwrap();
    assert_eq!(
        handle(&old_only, sample("pco-person-updated"), NOW)
            .await
            .status(),
        401
    );
    assert!(drain(&q).await.is_empty());
}

#[tokio::test]
async fn standard_webhooks_tolerance_and_retries() {
    let q = local_queue();
    let ingest = Ingest::new(&config(true), &[STANDARD_SECRET], q.clone()).unwrap();
    let at = |s: i64| s * 1_000_000;
    // Inside the window (either side), twice: a sender's retry is answered 200 and queued again
    // with the same event ID, which the worker deduplicates.
    for now in [STANDARD_TS + 10, STANDARD_TS - 10, STANDARD_TS + 300] {
        assert_eq!(
            handle(&ingest, sample("standard-webhooks"), at(now))
                .await
                .status(),
            200
        );
    }
    // Outside the window: a replay.
    for now in [STANDARD_TS + 301, STANDARD_TS - 301, STANDARD_TS + 86_400] {
        assert_eq!(
            handle(&ingest, sample("standard-webhooks"), at(now))
                .await
                .status(),
            401
        );
    }
    let got = drain(&q).await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|e| e.event_id.as_deref() == Some("msg_2Yk7Qf3sW9nLm0pB4xZc8Rt1") && e.id == "6")
    );
}

#[tokio::test]
async fn malformed_too_large_and_wrong_method() {
    let q = local_queue();
    let ingest = pco_ingest(q.clone());
    let sign = |body: &str| {
        shared::webhook::signature::sign(ingest.scheme(), PCO_SECRET, body.as_bytes(), "", 0)
            .unwrap()
    };
    // Signed but not JSON: 400.
    let body = "{not json";
    let r = handle(
        &ingest,
        with_body(sample("pco-person-updated"), body, &sign(body)),
        NOW,
    )
    .await;
    assert_eq!(r.status(), 400);
    // Signed, one good event and one without a record ID: the good one is queued, 400 tells
    // the sender.
    let body = serde_json::json!({"data": [
        {"id": "e1", "attributes": {"name": "people.v2.events.person.updated", "payload": "{\"data\":{\"id\":\"1\"}}"}},
        {"id": "e2", "attributes": {"name": "people.v2.events.person.updated", "payload": "{\"data\":{}}"}}
    ]})
    .to_string();
    let r = handle(
        &ingest,
        with_body(sample("pco-person-updated"), &body, &sign(&body)),
        NOW,
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(body_json(&r)["queued"], 1);
    assert_eq!(drain(&q).await.len(), 1);
    // Too large (the test config allows 4 KiB): 413 before any signature work.
    let big = "x".repeat(4097);
    let r = handle(
        &ingest,
        with_body(sample("pco-person-updated"), &big, &sign(&big)),
        NOW,
    )
    .await;
    assert_eq!(r.status(), 413);
    // A GET is not a delivery.
    let mut get = sample("pco-person-updated");
    *get.method_mut() = Method::GET;
    assert_eq!(handle(&ingest, get, NOW).await.status(), 405);
}

/// A queue that refuses some entries (as SQS can, after the adapter's own retries).
struct RefusingQueue {
    refuse_all: bool,
}

#[async_trait]
impl Queue for RefusingQueue {
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<usize>, StoreError> {
        if self.refuse_all {
            return Err(StoreError::backend(
                "SendMessageBatch",
                std::io::Error::other("unavailable"),
            ));
        }
        Ok((0..bodies.len()).filter(|i| i % 2 == 1).collect())
    }
    async fn receive(&self, _: usize, _: u64) -> Result<Vec<ReceivedMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_queue_failure_is_503_so_the_sender_retries_and_never_410() {
    for refuse_all in [false, true] {
        let ingest = pco_ingest(Arc::new(RefusingQueue { refuse_all }));
        let r = handle(&ingest, sample("pco-batch"), NOW).await;
        assert_eq!(r.status(), 503, "refuse_all={refuse_all}");
    }
    // And no answer of any kind above is ever 410 ("unsubscribe").
    let ingest = pco_ingest(local_queue());
    for name in [
        "pco-person-updated",
        "pco-batch",
        "bad-signature",
        "standard-webhooks",
    ] {
        assert_ne!(handle(&ingest, sample(name), NOW).await.status(), 410);
    }
}

#[tokio::test]
async fn each_answer_carries_the_metrics_the_handler_publishes() {
    let queue = local_queue();
    let ingest = pco_ingest(queue.clone());
    let metric = |line: &str, name: &str| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v[name].as_f64().unwrap()
    };
    let ok = ingest
        .handle(
            sample("pco-batch").headers(),
            &body_bytes(sample("pco-batch")),
            NOW,
        )
        .await;
    let line = ok.metrics();
    assert_eq!(ok.status, 200);
    assert!(metric(&line, "WebhookEventsQueued") >= 1.0, "{line}");
    assert!(
        !line.contains("WebhookUnauthorized"),
        "a zero count is left out: {line}"
    );
    let refused = ingest
        .handle(
            sample("bad-signature").headers(),
            &body_bytes(sample("bad-signature")),
            NOW,
        )
        .await;
    let line = refused.metrics();
    assert_eq!(refused.status, 401);
    assert_eq!(metric(&line, "WebhookUnauthorized"), 1.0, "{line}");
    assert!(!line.contains("WebhookEventsQueued"), "{line}");
}

fn body_bytes(req: Request) -> Vec<u8> {
    match req.into_body() {
        Body::Text(t) => t.into_bytes(),
        Body::Binary(b) => b,
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn more_events_than_max_events_is_413_after_the_signature_and_queues_nothing() {
    let text = shared::config::EMBEDDED.replace(
        "max_body_bytes = 1048576",
        "max_body_bytes = 4096\nmax_events = 3",
    );
    let config = Config::from_toml_str(&text, std::path::Path::new("test.toml")).unwrap();
    let q = local_queue();
    let ingest = Ingest::new(&config, &[PCO_SECRET], q.clone()).unwrap();
    // pco-batch holds four events (one of them ignored): over the cap of three.
    let r = handle(&ingest, sample("pco-batch"), NOW).await;
    assert_eq!(r.status(), 413);
    let b = body_json(&r);
    assert_eq!(
        (b["events"].as_u64(), b["limit_events"].as_u64()),
        (Some(4), Some(3))
    );
    assert!(
        b["error"].as_str().unwrap().contains("too many events"),
        "{b}"
    );
    // The signature is checked first: a stranger learns nothing about the cap.
    let mut unsigned = sample("pco-batch");
    unsigned.headers_mut().remove("x-pco-webhooks-authenticity");
    assert_eq!(handle(&ingest, unsigned, NOW).await.status(), 401);
    assert!(drain(&q).await.is_empty(), "nothing queued");
    // At the cap: queued.
    let config = Config::from_toml_str(
        &text.replace("max_events = 3", "max_events = 4"),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let ingest = Ingest::new(&config, &[PCO_SECRET], q.clone()).unwrap();
    assert_eq!(
        handle(&ingest, sample("pco-batch"), NOW).await.status(),
        200
    );
    assert_eq!(drain(&q).await.len(), 3);
}

/// A queue that never answers (an SQS endpoint that hangs).
struct HangingQueue;

#[async_trait]
impl Queue for HangingQueue {
    async fn send_batch(&self, _: &[String]) -> Result<Vec<usize>, StoreError> {
        std::future::pending().await
    }
    async fn receive(&self, _: usize, _: u64) -> Result<Vec<ReceivedMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A Lambda context whose deadline is `left` from now.
fn context(left: Duration) -> lambda_http::Context {
    let mut ctx = lambda_http::Context::default();
    ctx.deadline = (std::time::SystemTime::now() + left)
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ctx
}

#[tokio::test]
async fn a_queue_slower_than_the_deadline_is_503_before_it() {
    let ingest = pco_ingest(Arc::new(HangingQueue));
    // The Lambda's deadline is the margin and 300 ms away: the answer comes at the stop,
    // well before the deadline.
    let req =
        sample("pco-batch").with_lambda_context(context(STOP_MARGIN + Duration::from_millis(300)));
    let r = tokio::time::timeout(STOP_MARGIN, handle(&ingest, req, NOW))
        .await
        .expect("answered before the deadline");
    assert_eq!(r.status(), 503);
    assert!(body_json(&r)["error"].as_str().unwrap().contains("retry"));
}

#[tokio::test]
async fn negative_control_without_a_deadline_a_slow_queue_holds_the_answer_past_the_stop() {
    // The same queue; a local invocation's context (no deadline): the handler waits for the
    // queue however long it takes, so deployed it would time out (and the sender retry later).
    let ingest = pco_ingest(Arc::new(HangingQueue));
    let req = sample("pco-batch").with_lambda_context(lambda_http::Context::default());
    let waited = tokio::time::timeout(Duration::from_millis(500), handle(&ingest, req, NOW)).await;
    assert!(waited.is_err(), "still waiting for the queue: aborted");
}
