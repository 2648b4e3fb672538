//! Waits capped at the invocation's stop instant (issue 11, requirement 6): a `Retry-After` or
//! a rate-limit wait that would outlast the invocation ends the call at once with
//! `SourceError::Deadline`; delta then ends `partial` at its checkpoint, and the worker fails
//! the message for SQS to redeliver, deleting nothing. Against the simulator's scripted 429
//! (`Fault::RateLimited`), over real HTTP.
//!
//! The pairs (protection -> its negative control, `http::uncapped_waits`: the waits slept in
//! full, as before):
//! - delta: `a_minute_retry_after_ends_a_delta_run_partial_at_its_checkpoint` ->
//!   `negative_control_uncapped_a_delta_run_sleeps_past_its_stop`;
//! - worker: `a_minute_retry_after_fails_the_worker_message_promptly_and_deletes_nothing` ->
//!   `negative_control_uncapped_the_worker_sleeps_past_its_stop`;
//! - the rate limiter: `a_rate_limit_wait_past_the_stop_is_refused_at_once` ->
//!   `negative_control_uncapped_the_rate_limiter_waits_past_the_stop`.

use crate::conformance_dynamodb::dynamodb_stores;
use crate::source_client::client;
use shared::SourceError;
use shared::adapters::local::LocalStore;
use shared::config::RateLimit;
use shared::core::cursor::DeltaCursor;
use shared::core::deadline;
use shared::core::timefmt::{format_rfc3339, now_us};
use shared::ports::{ControlStore, JobKind, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::source::http::uncapped_waits;
use shared::sync::delta::{DeltaOptions, DeltaSummary, RunStatus, run_delta};
use shared::sync::worker::{InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use source_sim::{Fault, SimHandle};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::sim;

const E: &str = "people";
/// The `Retry-After` the simulator answers: a minute, longer than the time left.
const MINUTE: Fault = Fault::RateLimited {
    retry_after_secs: 60,
};

/// The instant `d` from now.
fn stop_in(d: Duration) -> Instant {
    Instant::now() + d
}

/// Awaits `work` until `stop` and half a second more: `None` when it was still running then
/// (it is dropped, so the test never sleeps the whole wait).
async fn by<T>(stop: Instant, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at((stop + Duration::from_millis(500)).into(), work)
        .await
        .ok()
}

// ---------------------------------------------------------------------------------------------
// delta
// ---------------------------------------------------------------------------------------------

/// 30 people in pages of 10; the first page is served, the second answered 429 with a minute's
/// Retry-After.
async fn delta_scenario() -> (SimHandle, SourceClient, Arc<LocalStore>) {
    let h = sim::people(30).await;
    let c = client(&h, |c| c.entities[0].page_size = 10);
    h.sim().push_faults([Fault::Delay(Duration::ZERO), MINUTE]);
    (h, c, Arc::new(LocalStore::in_memory().unwrap()))
}

async fn delta(c: &SourceClient, s: &LocalStore, stop: Option<Instant>) -> DeltaSummary {
    let opts = DeltaOptions {
        stop_at: stop,
        ..DeltaOptions::default()
    };
    run_delta(c, s, s, E, &opts).await.expect("delta run")
}

#[tokio::test]
async fn a_minute_retry_after_ends_a_delta_run_partial_at_its_checkpoint() {
    let (h, c, store) = delta_scenario().await;
    let stop = stop_in(Duration::from_secs(3));
    let s = tokio::time::timeout_at(stop.into(), delta(&c, &store, Some(stop)))
        .await
        .expect("the run ends before its stop instant");
    assert_eq!(
        (s.status, s.pages, s.seen, s.inserted),
        (RunStatus::Partial, 1, 10, 10),
        "{s:?}"
    );
    assert_eq!(s.stopped_by.as_deref(), Some("deadline"));
    assert!(
        s.error
            .as_deref()
            .is_some_and(|e| e.contains("before the invocation's deadline")),
        "the summary says why: {s:?}"
    );
    assert_eq!(h.sim().stats().rate_limited, 1);
    // The cursor is the first page's checkpoint: the highest delta written.
    let state = store.job_state(E, JobKind::Delta).await.unwrap();
    let watermark = DeltaCursor::decode(state.cursor.as_deref().expect("a checkpoint"))
        .unwrap()
        .watermark_us;
    let mut written = Vec::new();
    for id in 1..=30 {
        if let Some(r) = store.get(E, &id.to_string()).await.unwrap() {
            written.push((id, r.version.delta_us));
        }
    }
    assert_eq!(
        written.iter().map(|w| w.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(Some(watermark), written.iter().map(|w| w.1).max());
    assert_eq!(s.cursor_after, Some(format_rfc3339(watermark)));
    assert_eq!(state.lease_holder, None, "lease released");
    // The run record says partial, and why.
    let runs = store.list_runs(E, JobKind::Delta, 1).await.unwrap();
    assert_eq!(runs[0].status, "partial");
    assert!(runs[0].summary.contains("deadline"), "{}", runs[0].summary);
    // The next run continues from the checkpoint and reads the rest.
    let next = delta(&c, &store, None).await;
    assert_eq!(
        (next.status, next.inserted),
        (RunStatus::Succeeded, 20),
        "{next:?}"
    );
}

#[tokio::test]
async fn negative_control_uncapped_a_delta_run_sleeps_past_its_stop() {
    let (h, c, store) = delta_scenario().await;
    let stop = stop_in(Duration::from_secs(1));
    let run = by(stop, uncapped_waits(delta(&c, &store, Some(stop)))).await;
    assert!(
        run.is_none(),
        "still sleeping on the Retry-After after the stop: {run:?}"
    );
    assert_eq!(h.sim().stats().rate_limited, 1);
}

// ---------------------------------------------------------------------------------------------
// worker
// ---------------------------------------------------------------------------------------------

fn message(n: usize, id: &str, action: EnvelopeAction) -> InMessage {
    let env = QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind: MessageKind::Webhook,
        entity: E.into(),
        id: id.into(),
        event_id: Some(format!("ev-{n}-{}", uuid::Uuid::new_v4().simple())),
        action: Some(action),
        reason: None,
        received_at: now_us(),
    };
    InMessage {
        message_id: format!("m{n}"),
        body: serde_json::to_string(&env).unwrap(),
    }
}

/// Person 1 stored; then a batch: a delete event for person 1 (whose fetch meets a minute's
/// Retry-After) and an update of person 2. One fetch at a time, in message order.
async fn worker_scenario() -> (
    SimHandle,
    SourceClient,
    Arc<dyn RecordStore>,
    Arc<dyn ControlStore>,
    Vec<InMessage>,
) {
    let h = sim::people(5).await;
    let c = client(&h, |_| {});
    let (rs, cs) = dynamodb_stores().await;
    let seeded = c.get_by_id(E, "1").await.unwrap().expect("person 1");
    rs.upsert_many(&[seeded], shared::model::Strategy::Targeted)
        .await
        .unwrap();
    h.sim().push_fault(MINUTE);
    let batch = vec![
        message(0, "1", EnvelopeAction::Delete),
        message(1, "2", EnvelopeAction::Upsert),
    ];
    (h, c, rs, cs, batch)
}

fn worker_opts(stop: Instant) -> WorkerOptions {
    WorkerOptions {
        concurrency: 1,
        stop_at: Some(stop),
        ..WorkerOptions::default()
    }
}

#[tokio::test]
async fn a_minute_retry_after_fails_the_worker_message_promptly_and_deletes_nothing() {
    let (_h, c, rs, cs, batch) = worker_scenario().await;
    let deps = WorkerDeps {
        source: &c,
        records: rs.as_ref(),
        control: cs.as_ref(),
    };
    let stop = stop_in(Duration::from_secs(3));
    let report = tokio::time::timeout_at(
        stop.into(),
        process_batch(&deps, &batch, &worker_opts(stop)),
    )
    .await
    .expect("the batch ends before its stop instant");
    assert_eq!(report.failed, ["m0"], "{report:?}");
    assert_eq!((report.deleted, report.written), (0, 1), "{report:?}");
    let one = rs.get(E, "1").await.unwrap().expect("person 1");
    assert!(!one.is_deleted(), "nothing deleted on a fetch cut short");
    assert!(rs.get(E, "2").await.unwrap().is_some());
    // SQS redelivers m0: nothing marked its event done, so it is processed (the source still has
    // person 1, so the delete is not confirmed and the record stays).
    let again = process_batch(
        &deps,
        &batch[..1],
        &worker_opts(stop_in(Duration::from_secs(30))),
    )
    .await;
    assert!(again.failed.is_empty(), "{again:?}");
    assert_eq!(again.duplicates, 0);
    assert!(!rs.get(E, "1").await.unwrap().unwrap().is_deleted());
}

#[tokio::test]
async fn negative_control_uncapped_the_worker_sleeps_past_its_stop() {
    let (h, c, rs, cs, batch) = worker_scenario().await;
    let deps = WorkerDeps {
        source: &c,
        records: rs.as_ref(),
        control: cs.as_ref(),
    };
    let stop = stop_in(Duration::from_secs(1));
    let report = by(
        stop,
        uncapped_waits(process_batch(&deps, &batch, &worker_opts(stop))),
    )
    .await;
    assert!(
        report.is_none(),
        "still sleeping on the Retry-After after the stop: {report:?}"
    );
    assert_eq!(h.sim().stats().rate_limited, 1);
}

// ---------------------------------------------------------------------------------------------
// the client's own rate limiter
// ---------------------------------------------------------------------------------------------

/// One request a minute: the second call must wait about a minute.
fn one_a_minute(h: &SimHandle) -> SourceClient {
    client(h, |c| {
        c.source.rate_limit = RateLimit {
            requests: 1,
            per_seconds: 60.0,
        }
    })
}

#[tokio::test]
async fn a_rate_limit_wait_past_the_stop_is_refused_at_once() {
    let h = sim::people(3).await;
    let c = one_a_minute(&h);
    let stop = stop_in(Duration::from_secs(3));
    let second = tokio::time::timeout_at(
        stop.into(),
        deadline::within(Some(stop), async {
            c.get_by_id(E, "1").await.expect("the first fits");
            c.get_by_id(E, "2").await
        }),
    )
    .await
    .expect("answered before the stop instant");
    match second {
        Err(SourceError::Deadline { wait, .. }) => {
            assert!(wait > Duration::from_secs(50), "{wait:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.sim().stats().get_requests, 1, "the second was never sent");
}

#[tokio::test]
async fn negative_control_uncapped_the_rate_limiter_waits_past_the_stop() {
    let h = sim::people(3).await;
    let c = one_a_minute(&h);
    let stop = stop_in(Duration::from_secs(1));
    let second = by(
        stop,
        uncapped_waits(deadline::within(Some(stop), async {
            c.get_by_id(E, "1").await.expect("the first fits");
            c.get_by_id(E, "2").await
        })),
    )
    .await;
    assert!(second.is_none(), "still waiting for the window: {second:?}");
}
