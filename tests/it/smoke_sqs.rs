//! `adapters::sqs::SqsQueue` (the real SDK) against moto's SQS.

use crate::harness::{self, QueueSpec};
use shared::StoreError;
use shared::adapters::sqs::SqsQueue;
use shared::ports::{Queue, ReceivedMessage};
use std::collections::BTreeMap;
use std::time::Duration;

async fn queue(spec: &QueueSpec) -> (SqsQueue, harness::TestQueue, aws_sdk_sqs::Client) {
    let sqs = harness::sqs_client().await;
    let q = harness::create_queue(&sqs, spec).await;
    (SqsQueue::new(sqs.clone(), &q.url), q, sqs)
}

/// Receive until `n` messages have come (or the attempts run out).
async fn receive_n(queue: &impl Queue, n: usize) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    for _ in 0..30 {
        if got.len() >= n {
            break;
        }
        got.extend(queue.receive(10, 1000).await.expect("receive"));
    }
    got
}

#[tokio::test]
async fn smoke_sqs_send_receive_delete() {
    let (q, tq, sqs) = queue(&QueueSpec {
        visibility_timeout_s: Some(1),
        ..QueueSpec::default()
    })
    .await;
    // 25 bodies: three SendMessageBatch calls (10, 10, 5).
    let bodies: Vec<String> = (0..25)
        .map(|i| format!(r#"{{"v":1,"entity":"people","id":"{i}"}}"#))
        .collect();
    let failed = q.send_batch(&bodies).await.expect("send");
    assert_eq!(failed, Vec::<usize>::new());

    let got = receive_n(&q, 25).await;
    assert_eq!(got.len(), 25, "every message arrives once");
    let mut received: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    received.sort();
    let mut expected = bodies.clone();
    expected.sort();
    assert_eq!(received, expected);
    for m in &got {
        assert_eq!(m.receive_count, 1, "first delivery of {}", m.message_id);
        assert!(!m.receipt.is_empty());
    }

    for m in &got {
        q.delete(&m.receipt).await.expect("delete");
    }
    assert_eq!(harness::queue_depth(&sqs, &tq.url).await, 0);
    // Past the visibility timeout nothing comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.receive(10, 1000).await.expect("receive").is_empty());
}

#[tokio::test]
async fn smoke_sqs_receive_count_grows_on_redelivery() {
    let (q, tq, sqs) = queue(&QueueSpec {
        visibility_timeout_s: Some(0),
        ..QueueSpec::default()
    })
    .await;
    assert!(
        q.send_batch(&["again".to_owned()])
            .await
            .expect("send")
            .is_empty()
    );
    let mut last = None;
    for expected in 1..=3u32 {
        let got = receive_n(&q, 1).await;
        assert_eq!(got.len(), 1, "delivery {expected}");
        assert_eq!(got[0].body, "again");
        assert_eq!(got[0].receive_count, expected, "ApproximateReceiveCount");
        last = Some(got[0].clone());
    }
    let last = last.expect("three deliveries");
    q.delete(&last.receipt)
        .await
        .expect("delete the latest receipt");
    assert_eq!(harness::queue_depth(&sqs, &tq.url).await, 0);
    // `max` is clamped to SQS's 10, and 0 asks for nothing.
    assert!(q.receive(0, 0).await.expect("receive 0").is_empty());
    assert!(q.receive(1000, 0).await.expect("receive 1000").is_empty());
}

#[tokio::test]
async fn smoke_sqs_redrive_to_dlq_after_max_receives() {
    let (q, tq, _sqs) = queue(&QueueSpec {
        visibility_timeout_s: Some(0),
        dlq_max_receive_count: Some(2),
        ..QueueSpec::default()
    })
    .await;
    q.send_batch(&["poison".to_owned()]).await.expect("send");
    for _ in 0..2 {
        assert_eq!(receive_n(&q, 1).await.len(), 1);
    }
    // The third receive finds it gone to the dead-letter queue, where it can be replayed from.
    assert!(q.receive(10, 1000).await.expect("receive").is_empty());
    let dlq = SqsQueue::new(
        harness::sqs_client().await,
        tq.dlq_url.expect("a DLQ was asked for"),
    );
    let dead = receive_n(&dlq, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
}

#[tokio::test]
async fn smoke_sqs_oversize_entry_is_a_failed_index() {
    // The classic SQS limit (256 KiB) on this queue: moto refuses the whole batch call for the
    // one oversize body, and the adapter narrows it down to that entry.
    let (q, _tq, _sqs) = queue(&QueueSpec {
        max_message_size: Some(256 * 1024),
        visibility_timeout_s: Some(30),
        ..QueueSpec::default()
    })
    .await;
    let q = q.with_entry_backoff(Duration::from_millis(10));
    let mut bodies: Vec<String> = (0..15).map(|i| format!("small-{i}")).collect();
    bodies[4] = "x".repeat(300 * 1024);
    let failed = q.send_batch(&bodies).await.expect("send");
    assert_eq!(failed, vec![4]);

    let got = receive_n(&q, 14).await;
    let mut received: BTreeMap<String, u32> = BTreeMap::new();
    for m in &got {
        *received.entry(m.body.clone()).or_default() += 1;
    }
    let expected: BTreeMap<String, u32> = bodies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, b)| (b.clone(), 1))
        .collect();
    assert_eq!(received, expected, "the 14 good bodies, each once");
}

#[tokio::test]
async fn smoke_sqs_missing_queue_is_an_error() {
    let sqs = harness::sqs_client().await;
    let url = format!(
        "{}/123456789012/{}",
        harness::emulators().moto_url,
        harness::unique_name("it-missing")
    );
    let q = SqsQueue::new(sqs, url);
    let bodies = vec!["a".to_owned(); 12];
    match q.send_batch(&bodies).await {
        Err(StoreError::Backend { operation, .. }) => {
            assert_eq!(operation, "sqs:SendMessageBatch")
        }
        other => panic!("expected a backend error, nothing sent; got {other:?}"),
    }
    assert!(matches!(
        q.receive(1, 0).await,
        Err(StoreError::Backend { .. })
    ));
    assert!(q.send_batch(&[]).await.expect("nothing to send").is_empty());
}
