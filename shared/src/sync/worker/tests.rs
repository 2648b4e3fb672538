//! `process_batch` over the in-memory stores (`crate::memory`) and a scripted source whose
//! answers and calls the tests can see: dedup, coalescing, poison, the version rule, 404s and
//! their evidence, confirmed deletes, the 404 ceiling and its rolling window, the all-failed
//! rule, the message spans.

use super::*;
use crate::memory::{MemoryControl, MemoryRecords};
use crate::model::{RawJson, StoredRecord};
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Mutex;
use std::time::Duration;

const ENTITY: &str = "people";
/// A long time, in microseconds.
const HOUR_US: Micros = 3_600 * 1_000_000;

/// What the source answers for one ID (an ID it does not know answers a JSON 404).
enum Answer {
    Found(Record),
    /// A 503 after the retry policy gave up.
    Fails,
    /// Found, but it cannot be synced.
    Rejected(crate::model::RejectReason),
}

/// A source whose `fetch_by_id` answers from a table and notes every call (ID, send time).
#[derive(Default)]
struct Source {
    answers: Mutex<HashMap<String, Answer>>,
    calls: Mutex<Vec<(String, Micros)>>,
    /// How long each call waits before its request is sent (a rate limiter's wait).
    wait: Duration,
    /// How long each answer takes after its request was sent.
    delay: Duration,
}

impl Source {
    fn with(records: impl IntoIterator<Item = Record>) -> Self {
        let s = Source::default();
        for r in records {
            s.found(r);
        }
        s
    }
    fn found(&self, r: Record) {
        self.answers
            .lock()
            .expect("poisoned")
            .insert(r.id.clone(), Answer::Found(r));
    }
    fn fails(&self, id: &str) {
        self.answers
            .lock()
            .expect("poisoned")
            .insert(id.to_owned(), Answer::Fails);
    }
    fn called_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .calls
            .lock()
            .expect("poisoned")
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

#[async_trait]
impl SourceApi for Source {
    fn list_changed_since<'a>(
        &'a self,
        _entity: &'a str,
        _since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<crate::ports::RecordPage, SourceError>> {
        Box::pin(futures::stream::empty())
    }

    fn stream_ids<'a>(
        &'a self,
        _entity: &'a str,
    ) -> BoxStream<'a, Result<crate::ports::IdPage, SourceError>> {
        Box::pin(futures::stream::empty())
    }

    async fn get_by_id(&self, entity: &str, id: &str) -> Result<Option<Record>, SourceError> {
        Ok(self.fetch_by_id(entity, id).await?.record)
    }

    async fn fetch_by_id(&self, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        assert_eq!(entity, ENTITY);
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
        let sent_us = now_us();
        self.calls
            .lock()
            .expect("poisoned")
            .push((id.to_owned(), sent_us));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let record = |r: Option<Record>| Fetched { record: r, sent_us };
        match self.answers.lock().expect("poisoned").get(id) {
            Some(Answer::Found(r)) => Ok(record(Some(r.clone()))),
            Some(Answer::Fails) => Err(SourceError::Server {
                status: 503,
                url: format!("https://source.test/{entity}/{id}"),
                attempts: 3,
            }),
            Some(Answer::Rejected(reason)) => Err(SourceError::Rejected {
                url: format!("https://source.test/{entity}/{id}"),
                id: id.to_owned(),
                reason: *reason,
            }),
            None => Ok(record(None)),
        }
    }
}

/// The stores and source of one test.
struct World {
    source: Source,
    records: MemoryRecords,
    control: MemoryControl,
}

impl World {
    fn new(source: Source) -> Self {
        World {
            source,
            records: MemoryRecords::default(),
            control: MemoryControl::default(),
        }
    }

    async fn run(&self, msgs: &[InMessage], opts: &WorkerOptions) -> BatchReport {
        let deps = WorkerDeps {
            source: &self.source,
            records: &self.records,
            control: &self.control,
        };
        process_batch(&deps, msgs, opts).await
    }

    async fn stored(&self, id: &str) -> Option<StoredRecord> {
        self.records.get(ENTITY, id).await.expect("memory get")
    }

    /// Store a live record last fetched at `fetched_at_us`.
    async fn seed(&self, id: &str, delta_us: Micros, fetched_at_us: Micros) {
        let out = self
            .records
            .upsert(&rec(id, delta_us, fetched_at_us, "seeded"), Strategy::Delta)
            .await
            .expect("memory upsert");
        assert_eq!(out, WriteOutcome::Inserted);
    }

    fn event(&self, event_id: &str) -> Option<(bool, Micros)> {
        self.control
            .events
            .lock()
            .expect("poisoned")
            .get(event_id)
            .copied()
    }
}

fn rec(id: &str, delta_us: Micros, fetched_at_us: Micros, name: &str) -> Record {
    let payload = format!(r#"{{"id":"{id}","name":"{name}"}}"#);
    Record::new(
        ENTITY,
        id,
        delta_us,
        fetched_at_us,
        RawJson::parse(payload).expect("valid JSON"),
    )
}

/// A record as the source answers it now.
fn fresh(id: &str, delta_us: Micros, name: &str) -> Record {
    rec(id, delta_us, now_us(), name)
}

fn envelope(
    kind: MessageKind,
    id: &str,
    event_id: Option<&str>,
    action: Option<EnvelopeAction>,
) -> String {
    serde_json::to_string(&QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind,
        entity: ENTITY.into(),
        id: id.into(),
        event_id: event_id.map(str::to_owned),
        action,
        reason: None,
        received_at: now_us(),
    })
    .expect("serialise")
}

fn msg(message_id: &str, body: String) -> InMessage {
    InMessage {
        message_id: message_id.into(),
        body,
    }
}

/// A webhook message: record `id`, event `event_id`, an upsert.
fn webhook(message_id: &str, id: &str, event_id: &str) -> InMessage {
    msg(
        message_id,
        envelope(
            MessageKind::Webhook,
            id,
            Some(event_id),
            Some(EnvelopeAction::Upsert),
        ),
    )
}

/// A webhook delete event for record `id`.
fn delete_event(message_id: &str, id: &str, event_id: &str) -> InMessage {
    msg(
        message_id,
        envelope(
            MessageKind::Webhook,
            id,
            Some(event_id),
            Some(EnvelopeAction::Delete),
        ),
    )
}

/// A targeted message (reconciliation's): no event ID.
fn targeted(message_id: &str, id: &str) -> InMessage {
    msg(message_id, envelope(MessageKind::Targeted, id, None, None))
}

fn opts() -> WorkerOptions {
    WorkerOptions::default()
}

// --- Dedup -------------------------------------------------------------------------------

#[tokio::test]
async fn a_completed_event_is_a_duplicate_and_not_fetched() {
    let w = World::new(Source::with([fresh("1", 10, "Ann")]));
    w.control
        .complete_event("evt-1", now_us() + HOUR_US)
        .await
        .expect("complete");
    let r = w.run(&[webhook("m1", "1", "evt-1")], &opts()).await;
    assert_eq!(r.duplicates, 1);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.get_by_id_calls, 0);
    assert!(w.source.called_ids().is_empty());
    assert!(w.stored("1").await.is_none(), "nothing written");
}

#[tokio::test]
async fn an_unreadable_dedup_fails_the_messages_with_events_and_fetches_nothing_for_them() {
    let w = World::new(Source::with([fresh("1", 10, "Ann"), fresh("2", 10, "Bo")]));
    w.control
        .fail_event_reads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let r = w
        .run(&[webhook("m1", "1", "evt-1"), targeted("m2", "2")], &opts())
        .await;
    assert_eq!(
        r.failed,
        ["m1"],
        "redelivered; the targeted message has no event"
    );
    assert_eq!(w.source.called_ids(), ["2"]);
    assert_eq!(w.event("evt-1"), None);
}

/// The race one write per event accepts: two deliveries of one event in flight at once both
/// fetch (neither sees the other's marker), and the version rule makes the second write a
/// no-op. No message fails, nothing is written twice.
#[tokio::test]
async fn two_deliveries_in_flight_at_once_both_fetch_and_write_once() {
    // Each answer takes a moment, so that both batches have read the markers before either
    // completes its event.
    let w = World::new(Source {
        delay: Duration::from_millis(20),
        ..Source::with([fresh("1", 10, "Ann")])
    });
    let (first, second, o) = (
        [webhook("m1", "1", "evt-1")],
        [webhook("m2", "1", "evt-1")],
        opts(),
    );
    let (a, b) = tokio::join!(w.run(&first, &o), w.run(&second, &o));
    assert!(a.failed.is_empty() && b.failed.is_empty(), "{a:?} {b:?}");
    assert_eq!(a.get_by_id_calls + b.get_by_id_calls, 2);
    assert_eq!(a.written + b.written, 1, "{a:?} {b:?}");
    assert_eq!(a.unchanged + b.unchanged, 1, "{a:?} {b:?}");
    assert_eq!(w.event("evt-1").map(|(done, _)| done), Some(true));
}

#[tokio::test]
async fn a_processed_event_is_completed_and_its_redelivery_is_a_duplicate() {
    let w = World::new(Source::with([fresh("1", 10, "Ann")]));
    let before = now_us();
    let r = w.run(&[webhook("m1", "1", "evt-1")], &opts()).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.written, 1);
    let (completed, until) = w.event("evt-1").expect("marker");
    assert!(completed);
    assert!(
        until >= before + opts().retain_us,
        "kept for the retain time"
    );

    let again = w.run(&[webhook("m2", "1", "evt-1")], &opts()).await;
    assert_eq!(again.duplicates, 1);
    assert_eq!(again.get_by_id_calls, 0);
    assert_eq!(w.source.called_ids(), ["1"], "fetched once in all");
}

#[tokio::test]
async fn a_failed_event_leaves_no_marker_so_the_redelivery_is_processed() {
    let w = World::new(Source::default());
    w.source.fails("1");
    let r = w.run(&[webhook("m1", "1", "evt-1")], &opts()).await;
    assert_eq!(r.failed, ["m1"]);
    assert_eq!(w.event("evt-1"), None, "nothing written before the work");

    w.source.found(fresh("1", 10, "Ann"));
    let again = w.run(&[webhook("m1", "1", "evt-1")], &opts()).await;
    assert!(again.failed.is_empty(), "{:?}", again.failed);
    assert_eq!(again.written, 1);
    assert!(w.stored("1").await.is_some());
}

#[tokio::test]
async fn repeats_inside_a_batch_ride_on_the_first() {
    let w = World::new(Source::with([fresh("1", 10, "Ann")]));
    let batch = [
        webhook("m1", "1", "evt-1"),
        webhook("m2", "1", "evt-1"),
        webhook("m3", "1", "evt-1"),
    ];
    let r = w.run(&batch, &opts()).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.duplicates, 2);
    assert_eq!(r.get_by_id_calls, 1);
    assert_eq!(r.written, 1);

    // When the first fails, its repeats fail with it (and are redelivered with it).
    let w = World::new(Source::default());
    w.source.fails("2");
    let batch = [
        webhook("m1", "2", "evt-2"),
        webhook("m2", "2", "evt-2"),
        webhook("m3", "3", "evt-3"),
    ];
    w.source.found(fresh("3", 10, "Bo"));
    let r = w.run(&batch, &opts()).await;
    assert_eq!(r.failed, ["m1", "m2"]);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.written, 1);
}

// --- Coalescing and poison ---------------------------------------------------------------

#[tokio::test]
async fn one_fetch_per_record_whatever_the_number_of_events() {
    let w = World::new(Source::with([fresh("1", 10, "Ann"), fresh("2", 10, "Bo")]));
    let mut batch: Vec<InMessage> = (0..6)
        .map(|i| webhook(&format!("a{i}"), "1", &format!("evt-a{i}")))
        .collect();
    batch.push(webhook("b0", "2", "evt-b0"));
    batch.push(targeted("b1", "2"));
    batch.push(targeted("b2", "2"));
    let r = w.run(&batch, &opts()).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.messages, 9);
    assert_eq!(r.get_by_id_calls, 2);
    assert_eq!(w.source.called_ids(), ["1", "2"]);
    assert_eq!(r.written, 2, "one write per record");
    // Every event of the coalesced messages is completed.
    for e in ["evt-a0", "evt-a5", "evt-b0"] {
        assert_eq!(w.event(e).map(|(done, _)| done), Some(true), "{e}");
    }
}

#[tokio::test]
async fn poison_bodies_fail_alone() {
    let w = World::new(Source::with([fresh("1", 10, "Ann")]));
    let good = envelope(MessageKind::Targeted, "1", None, None);
    let other_version = good.replacen("\"v\":1", "\"v\":2", 1);
    assert_ne!(other_version, good);
    let unknown_field = good.replacen('{', "{\"extra\":1,", 1);
    let batch = [
        msg("p1", "not json".into()),
        msg("p2", other_version),
        msg("p3", unknown_field),
        msg("p4", envelope(MessageKind::Targeted, "", None, None)),
        msg("p5", envelope(MessageKind::Targeted, "..", None, None)),
        msg("ok", good),
    ];
    let r = w.run(&batch, &opts()).await;
    assert_eq!(r.poison, 5);
    assert_eq!(r.failed, ["p1", "p2", "p3", "p4", "p5"]);
    assert_eq!(w.source.called_ids(), ["1"], "poison is never fetched");
    assert_eq!(r.written, 1);
}

// --- Writes under the version rule -------------------------------------------------------

#[tokio::test]
async fn a_found_record_is_upserted_under_the_version_rule() {
    let w = World::new(Source::default());
    let long_ago = now_us() - HOUR_US;
    w.seed("older", 10, long_ago).await;
    w.seed("newer", 30, long_ago).await;
    w.seed("same", 20, long_ago).await;
    // The source answers: a newer delta, an older delta, the same content.
    w.source.found(fresh("older", 20, "changed"));
    w.source.found(fresh("newer", 20, "changed"));
    w.source.found(rec("same", 20, now_us(), "seeded"));
    w.source.found(fresh("new", 5, "Dee"));
    let batch = [
        webhook("m1", "older", "e1"),
        webhook("m2", "newer", "e2"),
        webhook("m3", "same", "e3"),
        targeted("m4", "new"),
    ];
    let r = w.run(&batch, &opts()).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!((r.written, r.stale, r.unchanged), (2, 1, 1));
    // The batch's metrics (no dimensions) say written and unchanged apart.
    let batch_line: serde_json::Value =
        serde_json::from_str(r.metrics().lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            &batch_line["RecordsWritten"],
            &batch_line["RecordsUnchanged"]
        ),
        (&serde_json::json!(2.0), &serde_json::json!(1.0))
    );
    assert_eq!(
        batch_line["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([[]])
    );

    let older = w.stored("older").await.expect("stored");
    assert_eq!(older.version.delta_us, 20);
    assert_eq!(older.payload["name"], "changed");
    assert_eq!(older.written_by, Strategy::Webhook);
    let newer = w.stored("newer").await.expect("stored");
    assert_eq!(
        newer.version.delta_us, 30,
        "never overwritten by an older one"
    );
    assert_eq!(newer.written_by, Strategy::Delta);
    let new = w.stored("new").await.expect("stored");
    assert_eq!(new.written_by, Strategy::Targeted);
    assert_eq!(new.last_action, crate::model::LastAction::Insert);
}

/// One 404 after a 30 ms wait before its request is sent and a 30 ms answer: the batch's
/// start, the request's send time and the stored evidence.
async fn evidence_of_a_404(opts: &WorkerOptions) -> (Micros, Micros, Micros) {
    let w = World::new(Source {
        wait: Duration::from_millis(30),
        delay: Duration::from_millis(30),
        ..Source::default()
    });
    w.seed("gone", 10, now_us() - HOUR_US).await;
    let before = now_us();
    let r = w.run(&[webhook("m1", "gone", "e1")], opts).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!((r.not_found, r.deleted), (1, 1));
    let sent = w.source.calls.lock().expect("poisoned")[0].1;
    let stored = w.stored("gone").await.expect("kept, soft-deleted");
    assert_eq!(stored.written_by, Strategy::Webhook);
    let evidence = stored.version.deleted_at_us.expect("soft-deleted");
    (before, sent, evidence)
}

#[tokio::test]
async fn a_json_404_soft_deletes_with_its_send_time_as_evidence() {
    let (before, sent, evidence) = evidence_of_a_404(&opts()).await;
    // The evidence is when the request was sent: after the wait, before the answer came.
    assert_eq!(evidence, sent, "batch start {before}");
    assert!(
        evidence > before,
        "evidence {evidence}, batch start {before}"
    );
}

#[tokio::test]
async fn negative_control_evidence_before_the_waits_predates_the_request() {
    let o = WorkerOptions {
        evidence_before_waits: true,
        ..opts()
    };
    let (before, sent, evidence) = evidence_of_a_404(&o).await;
    assert!(
        (before..sent).contains(&evidence),
        "the old clock: evidence {evidence} taken before the request was sent at {sent}"
    );
}

#[tokio::test]
async fn a_404_keeps_a_record_fetched_after_the_request_started() {
    let w = World::new(Source::default());
    // Fetched "later" than any request of this batch: the source had it then.
    w.seed("late", 10, now_us() + HOUR_US).await;
    let r = w
        .run(&[targeted("m1", "late"), targeted("m2", "never")], &opts())
        .await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!((r.not_found, r.deleted, r.delete_skipped), (2, 0, 2));
    assert!(!w.stored("late").await.expect("stored").is_deleted());
    assert!(w.stored("never").await.is_none());
}

#[tokio::test]
async fn a_delete_event_is_confirmed_by_the_fetch() {
    let w = World::new(Source::with([fresh("back", 20, "re-created")]));
    let long_ago = now_us() - HOUR_US;
    w.seed("back", 10, long_ago).await;
    w.seed("gone", 10, long_ago).await;
    let batch = [
        delete_event("m1", "back", "e1"),
        delete_event("m2", "gone", "e2"),
    ];
    let r = w.run(&batch, &opts()).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(w.source.called_ids(), ["back", "gone"], "both asked");
    // The source still has one: a delete that raced a re-create writes the live data.
    let back = w.stored("back").await.expect("stored");
    assert!(!back.is_deleted());
    assert_eq!(back.version.delta_us, 20);
    assert_eq!(back.payload["name"], "re-created");
    // The other is confirmed gone.
    assert!(w.stored("gone").await.expect("stored").is_deleted());
    assert_eq!((r.written, r.deleted), (1, 1));
}

// --- The 404 ceiling ---------------------------------------------------------------------

/// One ceiling case: `unexpected` records answering 404 with no delete event, `announced`
/// answering 404 to a delete event, `found` answering with data.
struct CeilingCase {
    unexpected: usize,
    announced: usize,
    found: usize,
    tripped: bool,
}

#[tokio::test]
async fn the_404_ceiling_at_and_around_its_limits() {
    let opts = WorkerOptions {
        not_found_min: 3,
        not_found_ceiling: 0.5,
        ..WorkerOptions::default()
    };
    let case = |unexpected, announced, found, tripped| CeilingCase {
        unexpected,
        announced,
        found,
        tripped,
    };
    let cases = [
        // At the minimum count and exactly at the share (3 of 6): tripped.
        case(3, 0, 3, true),
        // Over both: tripped.
        case(4, 0, 2, true),
        // Below the minimum count, whatever the share (2 of 2): deletes.
        case(2, 0, 0, false),
        // At the minimum count, just under the share (3 of 7): deletes.
        case(3, 0, 4, false),
        // Announced deletes are expected 404s: not counted (2 unexpected < 3).
        case(2, 3, 0, false),
        // ...but when the ceiling trips, they are not deleted either.
        case(3, 2, 1, true),
    ];
    for c in cases {
        let label = format!(
            "{} unexpected, {} announced, {} found",
            c.unexpected, c.announced, c.found
        );
        let w = World::new(Source::default());
        let long_ago = now_us() - HOUR_US;
        let mut batch = Vec::new();
        let mut not_found_msgs = Vec::new();
        for i in 0..c.unexpected {
            let id = format!("u{i}");
            w.seed(&id, 10, long_ago).await;
            batch.push(targeted(&format!("m-{id}"), &id));
            not_found_msgs.push(format!("m-{id}"));
        }
        for i in 0..c.announced {
            let id = format!("a{i}");
            w.seed(&id, 10, long_ago).await;
            batch.push(delete_event(&format!("m-{id}"), &id, &format!("e-{id}")));
            not_found_msgs.push(format!("m-{id}"));
        }
        for i in 0..c.found {
            let id = format!("f{i}");
            w.source.found(fresh(&id, 10, "here"));
            batch.push(targeted(&format!("m-{id}"), &id));
        }
        let r = w.run(&batch, &opts).await;
        assert_eq!(r.ceiling_tripped, c.tripped, "{label}");
        assert_eq!(r.not_found, c.unexpected + c.announced, "{label}");
        assert_eq!(
            r.written, c.found,
            "{label}: found records are written anyway"
        );
        let mut live = 0;
        for id in (0..c.unexpected)
            .map(|i| format!("u{i}"))
            .chain((0..c.announced).map(|i| format!("a{i}")))
        {
            if !w.stored(&id).await.expect("seeded").is_deleted() {
                live += 1;
            }
        }
        if c.tripped {
            assert_eq!(r.deleted, 0, "{label}");
            assert_eq!(live, c.unexpected + c.announced, "{label}: nothing deleted");
            not_found_msgs.sort();
            assert_eq!(r.failed, not_found_msgs, "{label}: the 404s fail");
            // Their events are released, so that a redelivery is processed again.
            for i in 0..c.announced {
                assert_eq!(w.event(&format!("e-a{i}")), None, "{label}");
            }
        } else {
            assert_eq!(r.deleted, c.unexpected + c.announced, "{label}");
            assert_eq!(live, 0, "{label}");
            assert!(r.failed.is_empty(), "{label}: {:?}", r.failed);
        }
    }
}

// --- The rolling 404 window --------------------------------------------------------------

/// A trickle of `batches` batches of one targeted message each, for records the store holds
/// and the source answers 404 for (a wrong base path). The reports and how many records are
/// still live.
async fn trickle_of_404s(opts: &WorkerOptions, batches: usize) -> (Vec<BatchReport>, usize) {
    let w = World::new(Source::default());
    let long_ago = now_us() - HOUR_US;
    let mut reports = Vec::new();
    for i in 0..batches {
        let id = format!("p{i}");
        w.seed(&id, 10, long_ago).await;
        reports.push(w.run(&[targeted(&format!("m{i}"), &id)], opts).await);
    }
    let mut live = 0;
    for i in 0..batches {
        live += usize::from(
            !w.stored(&format!("p{i}"))
                .await
                .expect("seeded")
                .is_deleted(),
        );
    }
    (reports, live)
}

fn window_opts() -> WorkerOptions {
    WorkerOptions {
        not_found_min: 3,
        not_found_ceiling: 0.5,
        ..opts()
    }
}

#[tokio::test]
async fn a_trickle_of_404s_trips_the_window_and_stops_deleting() {
    let (reports, live) = trickle_of_404s(&window_opts(), 8).await;
    for (i, r) in reports.iter().enumerate() {
        assert!(
            !r.ceiling_tripped,
            "batch {i}: one 404 never trips the batch"
        );
        if i < 2 {
            // Under the minimum count: a lone 404 deletes.
            assert!(r.window_tripped.is_empty(), "batch {i}");
            assert_eq!((r.deleted, r.failed.len()), (1, 0), "batch {i}");
        } else {
            assert_eq!(r.window_tripped, [ENTITY], "batch {i}");
            assert_eq!(r.deleted, 0, "batch {i}");
            assert_eq!(
                r.failed,
                [format!("m{i}")],
                "batch {i}: fails, to be retried"
            );
        }
    }
    assert_eq!(live, 6, "only the first two were deleted");
    // The metrics tell the window from the batch's ceiling.
    let m = reports[2].metrics();
    assert!(m.contains(r#""NotFoundWindowTripped":1"#), "{m}");
    assert!(m.contains(r#""NotFoundCeilingTripped":1"#), "{m}");
    let m = reports[0].metrics();
    assert!(
        !m.contains("NotFoundWindowTripped"),
        "a zero count is left out: {m}"
    );
    assert!(m.contains(r#""MessagesProcessed":"#), "{m}");
}

#[tokio::test]
async fn negative_control_without_the_window_a_trickle_of_404s_deletes_them_one_by_one() {
    let o = WorkerOptions {
        not_found_window: false,
        ..window_opts()
    };
    let (reports, live) = trickle_of_404s(&o, 8).await;
    assert!(
        reports
            .iter()
            .all(|r| r.deleted == 1 && !r.ceiling_tripped && r.window_tripped.is_empty())
    );
    assert_eq!(live, 0, "every record deleted, one batch at a time");
}

#[tokio::test]
async fn found_records_keep_the_window_under_the_ceiling() {
    // A real deletion now and then among healthy fetches: the share stays under the ceiling.
    let w = World::new(Source::default());
    let o = window_opts();
    let long_ago = now_us() - HOUR_US;
    for i in 0..6 {
        let gone = format!("gone{i}");
        w.seed(&gone, 10, long_ago).await;
        let (here, twin) = (format!("here{i}"), format!("twin{i}"));
        w.source.found(fresh(&here, 10, "x"));
        w.source.found(fresh(&twin, 10, "y"));
        let batch = [
            targeted(&format!("m{i}"), &gone),
            targeted(&format!("n{i}"), &here),
            targeted(&format!("o{i}"), &twin),
        ];
        let r = w.run(&batch, &o).await;
        assert!(
            r.window_tripped.is_empty(),
            "batch {i}: 1 in 3 is under 50%"
        );
        assert_eq!(r.deleted, 1, "batch {i}");
    }
    let total = w
        .control
        .not_found
        .lock()
        .expect("poisoned")
        .values()
        .fold((0, 0), |(f, n), c| (f + c.fetched, n + c.not_found));
    assert_eq!(
        total,
        (18, 6),
        "every fetch and every unexpected 404 counted"
    );
}

// --- The batch's verdict -----------------------------------------------------------------

#[tokio::test]
async fn all_failed_only_when_every_message_failed() {
    let w = World::new(Source::with([fresh("1", 10, "Ann")]));
    w.source.fails("2");
    let r = w
        .run(&[targeted("m1", "2"), msg("m2", "{}".into())], &opts())
        .await;
    assert_eq!(r.failed, ["m1", "m2"]);
    assert!(r.all_failed());

    let r = w
        .run(&[targeted("m1", "2"), targeted("m2", "1")], &opts())
        .await;
    assert_eq!(r.failed, ["m1"]);
    assert!(!r.all_failed());

    let r = w.run(&[], &opts()).await;
    assert_eq!(r.messages, 0);
    assert!(!r.all_failed(), "an empty batch did not fail");
}

// --- One span per message ----------------------------------------------------------------

mod spans {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record as Values};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    type Fields = BTreeMap<String, String>;
    /// Each span's ID, name and fields, in creation order.
    type Spans = Vec<(Id, &'static str, Fields)>;
    /// Each event's fields, with the message ID of the span it was logged in.
    type Events = Vec<(Option<String>, Fields)>;

    /// Every span's name and fields, and every event's fields with its span's message ID.
    #[derive(Default, Clone)]
    struct Capture {
        spans: Arc<Mutex<Spans>>,
        events: Arc<Mutex<Events>>,
    }

    struct Collect<'a>(&'a mut Fields);

    impl Visit for Collect<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl Capture {
        fn fields_of(&self, id: &Id) -> Option<Fields> {
            let spans = self.spans.lock().expect("poisoned");
            spans
                .iter()
                .rev()
                .find(|(i, _, _)| i == id)
                .map(|(_, _, f)| f.clone())
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            self.spans.lock().expect("poisoned").push((
                id.clone(),
                attrs.metadata().name(),
                fields,
            ));
        }

        fn on_record(&self, id: &Id, values: &Values<'_>, _ctx: Context<'_, S>) {
            let mut spans = self.spans.lock().expect("poisoned");
            if let Some((_, _, fields)) = spans.iter_mut().rev().find(|(i, _, _)| i == id) {
                values.record(&mut Collect(fields));
            }
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let mut fields = Fields::new();
            event.record(&mut Collect(&mut fields));
            let in_message = ctx
                .event_span(event)
                .and_then(|s| self.fields_of(&s.id()))
                .and_then(|f| f.get("message_id").cloned());
            self.events
                .lock()
                .expect("poisoned")
                .push((in_message, fields));
        }
    }

    #[tokio::test]
    async fn each_message_has_a_span_with_its_ids_and_never_its_body() {
        const MARKER: &str = "body-only-marker";
        let capture = Capture::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

        let w = World::new(Source::with([fresh("1", 10, "Ann")]));
        w.source.fails("2");
        let mut with_reason: QueueEnvelope = serde_json::from_str(&envelope(
            MessageKind::Webhook,
            "1",
            Some("evt-1"),
            Some(EnvelopeAction::Upsert),
        ))
        .expect("envelope");
        with_reason.reason = Some(MARKER.into());
        let batch = [
            msg("m1", serde_json::to_string(&with_reason).expect("json")),
            webhook("m2", "2", "evt-2"),
            msg("m3", format!("{{\"secret\":\"{MARKER}\"}}")),
        ];
        let r = w.run(&batch, &opts()).await;
        assert_eq!(r.failed, ["m2", "m3"]);

        let spans = capture.spans.lock().expect("poisoned").clone();
        let messages: BTreeMap<String, Fields> = spans
            .iter()
            .filter(|(_, name, _)| *name == "message")
            .map(|(_, _, f)| (f["message_id"].clone(), f.clone()))
            .collect();
        assert_eq!(
            messages.keys().collect::<Vec<_>>(),
            ["m1", "m2", "m3"],
            "one span per message"
        );
        let m1 = &messages["m1"];
        assert_eq!(m1["event_id"], "evt-1");
        assert_eq!(m1["entity"], ENTITY);
        assert_eq!(m1["record_id"], "1");
        assert_eq!(messages["m2"]["event_id"], "evt-2");
        assert_eq!(messages["m2"]["record_id"], "2");
        // Poison: its ID only.
        assert!(!messages["m3"].contains_key("record_id"));

        // Each failure is logged inside its own message's span.
        let events = capture.events.lock().expect("poisoned").clone();
        let mut failures: Vec<Option<String>> = events
            .iter()
            .filter(|(_, f)| {
                f.get("message")
                    .is_some_and(|m| m.contains("message failed"))
            })
            .map(|(span, _)| span.clone())
            .collect();
        failures.sort();
        assert_eq!(
            failures,
            [Some("m2".to_owned()), Some("m3".to_owned())],
            "{events:?}"
        );

        // Nothing of a body reaches a span or an event.
        for (_, name, fields) in &spans {
            assert!(
                !fields.values().any(|v| v.contains(MARKER)),
                "span {name}: {fields:?}"
            );
        }
        for (_, fields) in &events {
            assert!(
                !fields.values().any(|v| v.contains(MARKER)),
                "event {fields:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// records that cannot be synced
// ---------------------------------------------------------------------------------------------

/// Record 1 found, record 2 found but unsyncable (null delta), record 3 deleted at the source
/// and announced, with record 2 also announced deleted; record 2 is stored.
async fn batch_with_an_unsyncable_record(opts: &WorkerOptions) -> (World, BatchReport) {
    let w = World::new(Source::with([fresh("1", 10, "a")]));
    w.source.answers.lock().unwrap().insert(
        "2".into(),
        Answer::Rejected(crate::model::RejectReason::NullDelta),
    );
    w.seed("2", 5, 1).await;
    let delete = |m: &str, id: &str, ev: &str| {
        msg(
            m,
            envelope(
                MessageKind::Webhook,
                id,
                Some(ev),
                Some(EnvelopeAction::Delete),
            ),
        )
    };
    let msgs = [
        webhook("m1", "1", "e1"),
        webhook("m2", "2", "e2"),
        delete("m3", "2", "e3"),
        msg("m4", envelope(MessageKind::Targeted, "2", None, None)),
    ];
    let r = w.run(&msgs, opts).await;
    (w, r)
}

#[tokio::test]
async fn an_unsyncable_record_is_counted_its_messages_done_and_never_deleted() {
    let (w, r) = batch_with_an_unsyncable_record(&WorkerOptions::default()).await;
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.rejected.get(ENTITY), Some(&1), "one record, counted once");
    assert_eq!((r.written, r.deleted), (1, 0));
    let kept = w.stored("2").await.expect("kept");
    assert!(
        !kept.is_deleted(),
        "an announced delete of a record the source has"
    );
    // Its events are done: a redelivery is a duplicate, not a retry for ever.
    assert!(w.event("e2").is_some_and(|(done, _)| done));
    let lines: Vec<serde_json::Value> = r
        .metrics()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            &lines[1]["Entity"],
            &lines[1]["Strategy"],
            &lines[1]["RecordsRejected"]
        ),
        (
            &serde_json::json!("people"),
            &serde_json::json!("worker"),
            &serde_json::json!(1.0)
        )
    );
}

#[tokio::test]
async fn negative_control_an_unsyncable_record_failing_its_messages_retries_them_for_ever() {
    let opts = WorkerOptions {
        per_record_rejection: false,
        ..WorkerOptions::default()
    };
    let (w, r) = batch_with_an_unsyncable_record(&opts).await;
    assert_eq!(r.failed, ["m2", "m3", "m4"], "{r:?}");
    assert!(r.rejected.is_empty());
    assert!(
        w.event("e2").is_none(),
        "released: redelivered, and failing again"
    );
}

#[tokio::test]
async fn a_record_too_large_for_the_store_is_counted_and_the_others_written() {
    let store = crate::adapters::local::LocalStore::in_memory().unwrap();
    let big = format!(
        r#"{{"id":"2","n":"{}"}}"#,
        crate::core::size::noise(600 * 1024)
    );
    let huge = Record::new(ENTITY, "2", 10, now_us(), RawJson::parse(big).unwrap());
    let source = Source::with([fresh("1", 10, "a"), huge, fresh("3", 10, "c")]);
    let deps = WorkerDeps {
        source: &source,
        records: &store,
        control: &store,
    };
    let msgs = [
        webhook("m1", "1", "e1"),
        webhook("m2", "2", "e2"),
        webhook("m3", "3", "e3"),
    ];
    let r = process_batch(&deps, &msgs, &WorkerOptions::default()).await;
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!((r.written, r.rejected.get(ENTITY)), (2, Some(&1)));
    assert!(store.get(ENTITY, "3").await.unwrap().is_some());
    assert!(store.get(ENTITY, "2").await.unwrap().is_none());
}
