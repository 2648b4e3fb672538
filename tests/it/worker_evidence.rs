//! The worker's evidence (issue 12, requirements 4 and 5), on DynamoDB Local against the
//! simulator through the real source client.
//!
//! The pairs (protection -> its negative control, the old behaviour switched in):
//! - one clock, a 404's evidence is its send time:
//!   `a_404_sent_after_a_deletion_deletes_a_record_read_before_it`
//!   -> `negative_control_evidence_before_the_waits_keeps_a_deleted_record_live`;
//! - one clock, a record's fetch time is its request's send time:
//!   `a_record_and_a_page_are_stamped_with_their_send_time`
//!   -> `negative_control_stamped_at_the_response_end`;
//! - the rolling 404 window: `a_trickle_of_404s_trips_the_window_within_a_few_batches`
//!   -> `negative_control_without_the_window_a_trickle_of_404s_deletes_every_record`.

use crate::conformance_dynamodb::dynamodb_stores;
use futures::StreamExt;
use shared::core::timefmt::now_us;
use shared::model::{Fetched, Micros, Strategy};
use shared::ports::{ControlStore, NotFoundCounts, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::source::http::stamped_at_response_end;
use shared::sync::worker::{BatchReport, InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use shared::{SourceError, StoreError};
use source_sim::{Chaos, Entity, Fault, SimHandle};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::forward::{ControlHooks, Forward, SourceHooks};
use testkit::sim;
use tokio::sync::oneshot;

const E: &str = "people";

type Records = Arc<dyn RecordStore>;
type Control = Arc<dyn ControlStore>;

fn client(h: &SimHandle) -> SourceClient {
    let cfg = testkit::config::quick(&h.base_url(), |c| c.source.max_attempts = 1);
    SourceClient::new(&cfg, None).expect("client")
}

/// A webhook `person.updated` for `id` (an unexpected 404 if the source answers one).
fn updated(i: usize, id: u64) -> InMessage {
    let body = serde_json::to_string(&QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind: MessageKind::Webhook,
        entity: E.into(),
        id: id.to_string(),
        event_id: Some(format!("evt-{i}-{id}")),
        action: Some(EnvelopeAction::Upsert),
        reason: None,
        received_at: now_us(),
    })
    .expect("serialise");
    InMessage {
        message_id: format!("m{i}"),
        body,
    }
}

async fn work(
    src: &dyn SourceApi,
    rs: &Records,
    cs: &Control,
    m: &[InMessage],
    o: &WorkerOptions,
) -> BatchReport {
    let deps = WorkerDeps {
        source: src,
        records: rs.as_ref(),
        control: cs.as_ref(),
    };
    process_batch(&deps, m, o).await
}

async fn is_live(rs: &Records, id: u64) -> bool {
    rs.get(E, &id.to_string())
        .await
        .expect("get")
        .is_some_and(|r| !r.is_deleted())
}

/// Sync `id` from the source as delta would (`Strategy::Delta`), asserting it was written.
async fn sync_by_delta(src: &SourceClient, rs: &Records, id: u64) -> Micros {
    let rec = src
        .get_by_id(E, &id.to_string())
        .await
        .expect("fetch")
        .expect("present");
    let out = rs.upsert(&rec, Strategy::Delta).await.expect("upsert");
    assert!(out.wrote(), "{out:?}");
    rec.version.fetched_at_us
}

// ---------------------------------------------------------------------------------------------
// one clock
// ---------------------------------------------------------------------------------------------

/// A source's hook that holds the worker's fetch before its request is sent (standing in for
/// the rate limiter's wait: deterministic), tells the test it is held, and sends it when the
/// test says so, through the real client.
struct HeldBeforeSend {
    held: Mutex<Option<oneshot::Sender<()>>>,
    go: Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl<S: SourceApi + ?Sized> SourceHooks<S> for HeldBeforeSend {
    async fn fetch_by_id(&self, inner: &S, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        let held = self.held.lock().expect("poisoned").take();
        let go = self.go.lock().expect("poisoned").take();
        if let (Some(held), Some(go)) = (held, go) {
            held.send(()).expect("the test waits");
            go.await.expect("the test lets it go");
        }
        inner.fetch_by_id(entity, id).await
    }
}

/// The worker's fetch of record 3 waits (before its request is sent) while delta reads a newer
/// version of it (its fetch time: after the worker's fetch began) and the source then deletes
/// it; the worker's request goes out after the deletion and answers 404. Whether the record is
/// still live afterwards.
async fn fetch_overlapping_a_delete(o: &WorkerOptions) -> bool {
    let h = sim::people(5).await;
    let (rs, cs) = dynamodb_stores().await;
    let delta = client(&h);
    sync_by_delta(&delta, &rs, 3).await;

    let (held_tx, held_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let worker_source = Forward::new(
        Arc::new(client(&h)),
        HeldBeforeSend {
            held: Mutex::new(Some(held_tx)),
            go: Mutex::new(Some(go_rx)),
        },
    );
    let m = [updated(0, 3)];
    let batch = work(&worker_source, &rs, &cs, &m, o);
    let meanwhile = async {
        held_rx.await.expect("the worker's fetch is held");
        // The record changes, delta reads and stores it, then the source deletes it.
        h.sim().update(Entity::People, 3, None).expect("live");
        sync_by_delta(&delta, &rs, 3).await;
        assert!(h.sim().delete(Entity::People, 3));
        go_tx.send(()).expect("the worker waits");
    };
    let (r, ()) = tokio::join!(batch, meanwhile);
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.not_found, 1, "{r:?}");
    is_live(&rs, 3).await
}

#[tokio::test]
async fn a_404_sent_after_a_deletion_deletes_a_record_read_before_it() {
    assert!(
        !fetch_overlapping_a_delete(&WorkerOptions::default()).await,
        "the 404 was sent after delta's read: it outranks it"
    );
}

#[tokio::test]
async fn negative_control_evidence_before_the_waits_keeps_a_deleted_record_live() {
    let o = WorkerOptions {
        evidence_before_waits: true,
        ..WorkerOptions::default()
    };
    assert!(
        fetch_overlapping_a_delete(&o).await,
        "the old clock dates the 404 before delta's read: the deleted record stays live"
    );
}

/// With 300 ms of latency at the source: how long before the end of each call its answer was
/// stamped, for a record (`get_by_id`), a page of records (`list_changed_since`) and a 404.
async fn stamp_lead_times(stamp_at_end: bool) -> [Duration; 3] {
    let latency = Duration::from_millis(300);
    let h = sim::people(3).await;
    h.sim()
        .set_chaos(Chaos {
            latency,
            ..Chaos::default()
        })
        .expect("chaos");
    let src = client(&h);
    let calls = async {
        let rec = src
            .get_by_id(E, "1")
            .await
            .expect("fetch")
            .expect("present");
        let after = now_us();
        let one = after - rec.version.fetched_at_us;
        let page = src
            .list_changed_since(E, None)
            .next()
            .await
            .expect("a page")
            .expect("read");
        let after = now_us();
        let first = page.records.first().expect("records");
        assert!(
            page.records
                .iter()
                .all(|r| r.version.fetched_at_us == first.version.fetched_at_us),
            "one stamp per answer"
        );
        let paged = after - first.version.fetched_at_us;
        let gone = src.fetch_by_id(E, "999").await.expect("a JSON 404");
        assert!(gone.record.is_none());
        let missing = now_us() - gone.sent_us;
        [one, paged, missing].map(|us| Duration::from_micros(us.max(0) as u64))
    };
    let leads = if stamp_at_end {
        stamped_at_response_end(calls).await
    } else {
        calls.await
    };
    for lead in leads {
        // Causality, not timing: the source slept 300 ms after receiving each request.
        if !stamp_at_end {
            assert!(lead >= latency, "stamped {lead:?} before the end");
        }
    }
    leads
}

#[tokio::test]
async fn a_record_and_a_page_are_stamped_with_their_send_time() {
    stamp_lead_times(false).await;
}

#[tokio::test]
async fn negative_control_stamped_at_the_response_end() {
    let leads = stamp_lead_times(true).await;
    assert!(
        leads.iter().all(|l| *l < Duration::from_millis(300)),
        "the old clock stamps after the source's 300 ms: {leads:?}"
    );
}

#[tokio::test]
async fn a_404s_send_time_comes_after_the_rate_limiters_wait() {
    let h = sim::people(3).await;
    let cfg = testkit::config::quick(&h.base_url(), |c| {
        c.source.max_attempts = 1;
        c.source.rate_limit = shared::config::RateLimit {
            requests: 1,
            per_seconds: 0.4,
        };
    });
    let src = SourceClient::new(&cfg, None).expect("client");
    let first = src.fetch_by_id(E, "1").await.expect("fetch");
    assert!(first.record.is_some());
    let asked = now_us();
    let gone = src.fetch_by_id(E, "999").await.expect("a JSON 404");
    assert!(gone.record.is_none());
    // The limiter let the second request go no sooner than 0.4 s after the first: its send
    // time is after that wait, not when it was asked for.
    assert!(
        gone.sent_us >= first.sent_us + 400_000,
        "sent {} µs after the first",
        gone.sent_us - first.sent_us
    );
    assert!(gone.sent_us > asked);
}

// ---------------------------------------------------------------------------------------------
// the rolling 404 window
// ---------------------------------------------------------------------------------------------

/// Eight batches of one webhook each, for records the store holds, while the source answers a
/// JSON 404 to every fetch (a wrong base path behind a JSON error handler). The reports and
/// how many of the eight records are still live.
async fn trickle(o: &WorkerOptions) -> (Vec<BatchReport>, usize) {
    let h = sim::people(10).await;
    let (rs, cs) = dynamodb_stores().await;
    let src = client(&h);
    let ids: Vec<u64> = (1..=8).collect();
    for id in &ids {
        sync_by_delta(&src, &rs, *id).await;
    }
    let mut reports = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        h.sim().push_faults([Fault::Status(404)]);
        reports.push(work(&src, &rs, &cs, &[updated(i, *id)], o).await);
    }
    let mut live = 0;
    for id in &ids {
        live += usize::from(is_live(&rs, *id).await);
    }
    (reports, live)
}

#[tokio::test]
async fn a_trickle_of_404s_trips_the_window_within_a_few_batches() {
    let o = WorkerOptions::default();
    assert_eq!((o.not_found_min, o.not_found_ceiling), (5, 0.5));
    let (reports, live) = trickle(&o).await;
    let first_tripped = reports
        .iter()
        .position(|r| !r.window_tripped.is_empty())
        .expect("the window trips");
    assert_eq!(
        first_tripped, 4,
        "at the fifth unexpected 404 (NOT_FOUND_MIN_COUNT)"
    );
    for (i, r) in reports.iter().enumerate() {
        assert!(
            !r.ceiling_tripped,
            "batch {i}: one message never trips the batch"
        );
        if i >= first_tripped {
            assert_eq!(r.window_tripped, [E], "batch {i}");
            assert_eq!(
                (r.deleted, r.failed.len()),
                (0, 1),
                "batch {i}: fails, retried"
            );
        }
    }
    assert_eq!(live, 4, "the window stopped the deletions after four");
}

#[tokio::test]
async fn negative_control_without_the_window_a_trickle_of_404s_deletes_every_record() {
    let o = WorkerOptions {
        not_found_window: false,
        ..WorkerOptions::default()
    };
    let (reports, live) = trickle(&o).await;
    assert!(
        reports
            .iter()
            .all(|r| r.deleted == 1 && r.failed.is_empty())
    );
    assert_eq!(
        live, 0,
        "every webhook-touched record soft-deleted, one at a time"
    );
}

/// A control store whose 404 window cannot be counted (throttled).
struct WindowDown;

#[async_trait::async_trait]
impl<S: ControlStore + ?Sized> ControlHooks<S> for WindowDown {
    async fn count_not_found(
        &self,
        _inner: &S,
        _entity: &str,
        _now_us: Micros,
        _add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError> {
        Err(StoreError::Throttled {
            operation: "count 404s",
            source: "throttled".into(),
        })
    }
}

#[tokio::test]
async fn a_window_that_cannot_be_counted_deletes_nothing_and_the_message_is_retried() {
    let h = sim::people(3).await;
    let (rs, inner) = dynamodb_stores().await;
    let src = client(&h);
    sync_by_delta(&src, &rs, 2).await;
    sync_by_delta(&src, &rs, 3).await;
    assert!(h.sim().delete(Entity::People, 2));
    let cs: Control = Arc::new(Forward::new(inner, WindowDown));
    let r = work(
        &src,
        &rs,
        &cs,
        &[updated(0, 2), updated(1, 3)],
        &WorkerOptions::default(),
    )
    .await;
    assert_eq!(r.failed, ["m0"], "the 404 waits for a window it can check");
    assert_eq!((r.deleted, r.unchanged), (0, 1), "{r:?}");
    assert!(is_live(&rs, 2).await);
}
