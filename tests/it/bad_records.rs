//! One bad record never stops an entity (issue 11, requirements 4 and 5), against the simulator
//! serving one record broken (`source_sim::Corruption`: a null, missing or unreadable delta
//! value, a timestamp without an offset, an empty or over-long ID, an unpaired surrogate
//! escape), and IDs SQS would refuse raw, through moto's SQS.
//!
//! The pairs (protection -> its negative control, the same scenario with the protection off):
//! - delta takes the bad record out of its page, writes the rest, counts it and moves the
//!   cursor past it: `delta_skips_counts_and_moves_past_each_bad_record` ->
//!   `negative_control_a_bad_record_failing_its_page_stalls_delta` (`DeltaOptions::
//!   per_record_rejection` off: the run fails at that page on every run, the cursor never moves);
//! - reconciliation deletes nothing because of it (listed as present, or explained by the
//!   listing's records without a usable ID), and deletes what is really gone:
//!   `reconciliation_reports_each_bad_record_and_deletes_only_what_is_gone` ->
//!   `negative_control_a_bad_record_failing_the_listing_blocks_every_deletion`;
//! - the worker counts it and never deletes it, even on a delete event:
//!   `the_worker_counts_each_bad_record_and_never_deletes_it` ->
//!   `negative_control_the_worker_retries_a_bad_record_for_ever`;
//! - `source.timestamp_offset` reads zone-less timestamps:
//!   `a_zone_less_timestamp_is_read_at_the_configured_offset` (unset, the same record is
//!   rejected as `naive_timestamp`: the first pair);
//! - queue envelopes in printable ASCII:
//!   `an_id_sqs_refuses_raw_goes_through_ingest_worker_and_reconciliation_queueing`. moto does
//!   not check message characters (it took a raw U+FFFE body when this was written), so the
//!   negative control is `shared::wire`'s unit test against SQS's documented character set
//!   (`negative_control_serde_json_bodies_hold_characters_sqs_refuses`).

use crate::conformance_dynamodb::dynamodb_stores;
use crate::delta::{store_versions, watermark};
use crate::harness::{QueueSpec, create_queue, scratch, sqs_client};
use futures::StreamExt;
use futures::stream::BoxStream;
use shared::SourceError;
use shared::adapters::local::{LocalSpill, LocalStore};
use shared::adapters::sqs::SqsQueue;
use shared::config::Config;
use shared::core::timefmt::{now_us, parse_offset};
use shared::model::{IdVersion, RawJson, Record, Strategy};
use shared::ports::{ControlStore, IdPage, JobKind, Queue, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, RunStatus, run_delta};
use shared::sync::reconcile::{PlanInput, ReconcileDeps, ReconcileOptions, RunSummary, run_all};
use shared::sync::rejected::RejectedRecord;
use shared::sync::worker::{InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::webhook::Ingest;
use shared::webhook::signature::sign;
use shared::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use source_sim::{Corruption, Entity, SimHandle};
use std::sync::Arc;
use testkit::forward::{Forward, SourceHooks};
use testkit::sim;

const E: &str = "people";
/// Longer than the 1024 bytes the stores take.
const LONG: usize = 1025;

const ALL: [Corruption; 7] = [
    Corruption::NullDelta,
    Corruption::MissingDelta,
    Corruption::BadDelta,
    Corruption::NaiveTimestamp,
    Corruption::EmptyId,
    Corruption::LongId(LONG),
    Corruption::LoneSurrogate,
];

fn config(h: &SimHandle, edit: impl FnOnce(&mut Config)) -> Config {
    testkit::config::quick(&h.base_url(), |c| {
        c.source.max_attempts = 1;
        c.entities.truncate(1);
        edit(c);
    })
}

fn client(h: &SimHandle) -> SourceClient {
    SourceClient::new(&config(h, |_| {}), None).expect("client")
}

/// What the run's summary says of the record broken as `c` (its ID `id` at the source).
fn expected(c: Corruption, id: u64) -> RejectedRecord {
    let (shown, reason) = match c {
        Corruption::NullDelta => (Some(id.to_string()), "null_delta"),
        Corruption::MissingDelta => (Some(id.to_string()), "missing_delta"),
        Corruption::BadDelta => (Some(id.to_string()), "bad_delta"),
        Corruption::NaiveTimestamp => (Some(id.to_string()), "naive_timestamp"),
        Corruption::EmptyId => (Some(String::new()), "empty_id"),
        Corruption::LongId(_) => (Some(format!("{}…", "9".repeat(64))), "long_id"),
        Corruption::LoneSurrogate => (Some(id.to_string()), "lone_surrogate"),
    };
    RejectedRecord {
        id: shown,
        reason: reason.into(),
    }
}

/// 250 people (three pages of 100), the first in delta order served broken as `c`: it sits
/// on the first page, 249 records after it. Returns the simulator and the broken record's ID.
async fn with_first_broken(c: Corruption) -> (SimHandle, u64) {
    let h = sim::people(250).await;
    let (bad, _) = h
        .sim()
        .versions(Entity::People)
        .into_iter()
        .min_by_key(|&(id, v)| (v, id))
        .expect("records");
    h.sim().corrupt(Entity::People, bad, Some(c));
    (h, bad)
}

async fn live_count(rs: &dyn RecordStore) -> usize {
    store_versions(rs).await.len()
}

async fn live(rs: &dyn RecordStore, id: &str) -> bool {
    rs.get(E, id)
        .await
        .expect("get")
        .is_some_and(|r| !r.is_deleted())
}

// ---------------------------------------------------------------------------------------------
// delta
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delta_skips_counts_and_moves_past_each_bad_record() {
    for c in ALL {
        let (h, bad) = with_first_broken(c).await;
        let store = LocalStore::in_memory().expect("store");
        let s = run_delta(&client(&h), &store, &store, E, &DeltaOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert_eq!(
            (s.status, s.seen, s.inserted, s.rejected),
            (RunStatus::Succeeded, 249, 249, 1),
            "{c:?}: {s:?}"
        );
        assert_eq!(s.rejected_ids, [expected(c, bad)], "{c:?}");
        assert_eq!(live_count(&store).await, 249, "{c:?}: every other record");
        assert!(!live(&store, &bad.to_string()).await, "{c:?}");
        // The cursor is past the bad record, at the last record written.
        let versions = h.sim().versions(Entity::People);
        let bad_at = versions.iter().find(|(id, _)| *id == bad).expect("bad").1;
        let last = versions.iter().map(|&(_, v)| v).max().expect("records");
        let at = watermark(&store).await.expect("a cursor");
        assert!(at > bad_at, "{c:?}");
        assert_eq!(at, last, "{c:?}");
        // The run history says which and why; never a value of the record.
        let runs = store.list_runs(E, JobKind::Delta, 1).await.expect("runs");
        let reason = &expected(c, bad).reason;
        assert!(
            runs[0]
                .summary
                .contains(&format!("\"reason\":\"{reason}\"")),
            "{c:?}: {}",
            runs[0].summary
        );
        let line: serde_json::Value = serde_json::from_str(&s.metrics()).expect("EMF");
        assert_eq!(line["RecordsRejected"], 1.0, "{c:?}");
    }
}

#[tokio::test]
async fn negative_control_a_bad_record_failing_its_page_stalls_delta() {
    let opts = DeltaOptions {
        per_record_rejection: false,
        ..DeltaOptions::default()
    };
    for c in ALL {
        let (h, _) = with_first_broken(c).await;
        let store = LocalStore::in_memory().expect("store");
        for run in 1..=2 {
            let e = run_delta(&client(&h), &store, &store, E, &opts.next_run())
                .await
                .expect_err("the page with the bad record fails the run");
            assert!(!e.is_retryable(), "{c:?}: {e}");
            assert_eq!(watermark(&store).await, None, "{c:?}: run {run}: stalled");
            assert_eq!(live_count(&store).await, 0, "{c:?}: run {run}");
        }
    }
}

#[tokio::test]
async fn a_zone_less_timestamp_is_read_at_the_configured_offset() {
    let (h, bad) = with_first_broken(Corruption::NaiveTimestamp).await;
    // The simulator writes UTC without the `Z`; a source an hour ahead would mean the same
    // wall-clock text an hour earlier.
    let cfg = config(&h, |c| {
        c.source.timestamp_offset = Some(parse_offset("+01:00").expect("offset"))
    });
    let src = SourceClient::new(&cfg, None).expect("client");
    let store = LocalStore::in_memory().expect("store");
    let s = run_delta(&src, &store, &store, E, &DeltaOptions::default())
        .await
        .expect("delta");
    assert_eq!((s.rejected, s.inserted), (0, 250), "{s:?}");
    let sim_at = h
        .sim()
        .get(Entity::People, bad)
        .expect("record")
        .updated_at_us;
    let stored = store
        .get(E, &bad.to_string())
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.version.delta_us, sim_at - 3_600_000_000);
}

// ---------------------------------------------------------------------------------------------
// reconciliation
// ---------------------------------------------------------------------------------------------

/// 60 people synced clean into a local store; then record 10 is served broken as `c` and
/// record 20 deleted at the source. Reconciliation's summary and the store.
async fn reconcile_after(c: Corruption, opts: &ReconcileOptions) -> (RunSummary, LocalStore) {
    let h = sim::people(60).await;
    let cfg = config(&h, |_| {});
    let src = SourceClient::new(&cfg, None).expect("client");
    let store = LocalStore::in_memory().expect("store");
    run_delta(&src, &store, &store, E, &DeltaOptions::default())
        .await
        .expect("backfill");
    h.sim().corrupt(Entity::People, 10, Some(c));
    assert!(h.sim().delete(Entity::People, 20));
    let queue = store.queue("work", Default::default());
    let folder = scratch("bad-records");
    let spill = LocalSpill::new(folder.path()).expect("spill");
    let deps = ReconcileDeps {
        config: &cfg,
        source: &src,
        records: &store,
        control: &store,
        spill: &spill,
        queue: &queue,
    };
    let input = PlanInput {
        entity: Some(E.into()),
        ..PlanInput::default()
    };
    let mut s = run_all(&deps, &input, opts).await.expect("reconcile");
    (s.remove(0), store)
}

#[tokio::test]
async fn reconciliation_reports_each_bad_record_and_deletes_only_what_is_gone() {
    for c in ALL {
        let (s, store) = reconcile_after(c, &ReconcileOptions::default()).await;
        assert_eq!(
            (s.status.as_str(), s.deleted),
            ("succeeded", 1),
            "{c:?}: {s:?}"
        );
        assert!(
            live(&store, "10").await,
            "{c:?}: never deleted because of it"
        );
        assert!(!live(&store, "20").await, "{c:?}: what is gone is deleted");
        if c == Corruption::LoneSurrogate {
            // The ID listing asks for the delta value only (a sparse fieldset): the broken
            // attribute is not in it, and the record lists as it is.
            assert_eq!(s.rejected, 0, "{s:?}");
        } else {
            assert_eq!(s.rejected_ids, [expected(c, 10)], "{c:?}");
        }
    }
}

#[tokio::test]
async fn negative_control_a_bad_record_failing_the_listing_blocks_every_deletion() {
    let opts = ReconcileOptions {
        per_record_rejection: false,
        ..ReconcileOptions::default()
    };
    for c in ALL.into_iter().filter(|&c| c != Corruption::LoneSurrogate) {
        let (s, store) = reconcile_after(c, &opts).await;
        assert_eq!(s.status, "guard_blocked", "{c:?}: {s:?}");
        assert!(
            live(&store, "20").await,
            "{c:?}: the record really gone stays, run after run"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the worker
// ---------------------------------------------------------------------------------------------

fn envelope(id: &str, event_id: &str, action: EnvelopeAction) -> String {
    QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind: MessageKind::Webhook,
        entity: E.into(),
        id: id.into(),
        event_id: Some(event_id.into()),
        action: Some(action),
        reason: None,
        received_at: now_us(),
    }
    .to_body()
}

/// 20 people synced clean; record 10 served broken as `c`, record 11 updated. A batch: a
/// delete event and an upsert event for record 10, an upsert event for record 11.
async fn worker_batch(
    c: Corruption,
    opts: &WorkerOptions,
) -> (shared::sync::worker::BatchReport, LocalStore) {
    let h = sim::people(20).await;
    let src = client(&h);
    let store = LocalStore::in_memory().expect("store");
    run_delta(&src, &store, &store, E, &DeltaOptions::default())
        .await
        .expect("backfill");
    h.sim().corrupt(Entity::People, 10, Some(c));
    h.sim().update(Entity::People, 11, None);
    let msgs = [
        ("m1", envelope("10", "e1", EnvelopeAction::Delete)),
        ("m2", envelope("10", "e2", EnvelopeAction::Upsert)),
        ("m3", envelope("11", "e3", EnvelopeAction::Upsert)),
    ]
    .map(|(m, body)| InMessage {
        message_id: m.into(),
        body,
    });
    let deps = WorkerDeps {
        source: &src,
        records: &store,
        control: &store,
    };
    (process_batch(&deps, &msgs, opts).await, store)
}

#[tokio::test]
async fn the_worker_counts_each_bad_record_and_never_deletes_it() {
    for c in ALL {
        let (r, store) = worker_batch(c, &WorkerOptions::default()).await;
        assert!(r.failed.is_empty(), "{c:?}: {r:?}");
        assert_eq!(r.rejected.get(E), Some(&1), "{c:?}");
        assert_eq!((r.written, r.deleted), (1, 0), "{c:?}");
        assert!(
            live(&store, "10").await,
            "{c:?}: a delete event is not proof"
        );
        assert!(
            r.metrics().contains("\"Strategy\":\"worker\""),
            "{c:?}: counted under the alarm's dimensions"
        );
    }
}

#[tokio::test]
async fn negative_control_the_worker_retries_a_bad_record_for_ever() {
    let opts = WorkerOptions {
        per_record_rejection: false,
        ..WorkerOptions::default()
    };
    for c in ALL {
        let (r, _) = worker_batch(c, &opts).await;
        assert_eq!(r.failed, ["m1", "m2"], "{c:?}: redelivered until the DLQ");
    }
}

// ---------------------------------------------------------------------------------------------
// IDs SQS refuses raw
// ---------------------------------------------------------------------------------------------

/// A noncharacter, a control character and an astral one: SQS refuses the first two raw.
const HOSTILE: &str = "\u{fffe}\u{1}😀-7";
/// Another, that only the source listing has.
const HOSTILE_LISTED: &str = "\u{ffff}\u{1f}é-8";
const SECRET: &str = "it-webhook-secret";

fn printable_ascii(body: &str) -> bool {
    body.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The source with one more ID in its listing (`HOSTILE_LISTED`) and `get_by_id(HOSTILE)`
/// finding a record: a candidate the Guard step queues, and a record the Apply step queues.
struct Hostile;

#[async_trait::async_trait]
impl SourceHooks<SourceClient> for Hostile {
    fn stream_ids_from<'a>(
        &'a self,
        inner: &'a SourceClient,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        let extra = IdPage {
            ids: vec![IdVersion {
                id: HOSTILE_LISTED.into(),
                delta_us: 1,
            }],
            rejected: Vec::new(),
            total_count: None,
            resume: None,
        };
        Box::pin(
            inner
                .stream_ids_from(entity, resume)
                .chain(futures::stream::iter([Ok(extra)])),
        )
    }

    async fn get_by_id(
        &self,
        inner: &SourceClient,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        if id == HOSTILE {
            let payload = RawJson::parse(r#"{"id":"hostile"}"#).expect("JSON");
            return Ok(Some(Record::new(E, id, 5, now_us(), payload)));
        }
        inner.get_by_id(entity, id).await
    }
}

#[tokio::test]
async fn an_id_sqs_refuses_raw_goes_through_ingest_worker_and_reconciliation_queueing() {
    let h = sim::people(3).await;
    let cfg = config(&h, |_| {});
    let src = SourceClient::new(&cfg, None).expect("client");
    let (rs, cs) = dynamodb_stores().await;
    let sqs = sqs_client().await;
    let q = create_queue(&sqs, &QueueSpec::default()).await;
    let queue = Arc::new(SqsQueue::new(sqs.clone(), &q.url));

    // DynamoDB takes the ID.
    let payload = RawJson::parse(r#"{"id":"hostile"}"#).expect("JSON");
    let rec = Record::new(E, HOSTILE, 1, 1, payload);
    assert!(
        rs.upsert(&rec, Strategy::Delta)
            .await
            .expect("upsert")
            .wrote()
    );

    // The ingest queues a signed delivery announcing its deletion (200, not 503).
    let ingest = Ingest::new(&cfg, &[SECRET], queue.clone()).expect("ingest");
    let payload = serde_json::json!({"data": {"id": HOSTILE, "type": "Person"}}).to_string();
    let body = serde_json::json!({"data": [{"id": "evt-hostile", "type": "EventDelivery",
        "attributes": {"name": "people.v2.events.person.destroyed", "attempt": 1, "payload": payload}}]})
    .to_string();
    let mut headers = http::HeaderMap::new();
    for (k, v) in sign(ingest.scheme(), SECRET, body.as_bytes(), "", 0).expect("sign") {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header"),
            v.parse().expect("value"),
        );
    }
    let answer = ingest.handle(&headers, body.as_bytes(), now_us()).await;
    assert_eq!(answer.status, 200);

    // On the queue: printable ASCII, read back to the same ID.
    let got = queue.receive(10, 0).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert!(printable_ascii(&got[0].body), "{}", got[0].body);
    let env: QueueEnvelope = serde_json::from_str(&got[0].body).expect("envelope");
    assert_eq!(env.id, HOSTILE);

    // The worker: the source answers a JSON 404 for it, so the delete is confirmed and lands
    // on exactly that ID.
    let deps = WorkerDeps {
        source: &src,
        records: rs.as_ref(),
        control: cs.as_ref(),
    };
    let m: Vec<InMessage> = got.iter().map(InMessage::from).collect();
    let r = process_batch(&deps, &m, &WorkerOptions::default()).await;
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.deleted, 1);
    assert!(!live(rs.as_ref(), HOSTILE).await);
    queue.delete(&got[0].receipt).await.expect("delete");

    // Reconciliation: the store holds the source's three and HOSTILE (live again); the
    // listing has the three and HOSTILE_LISTED. The Guard step queues HOSTILE (a candidate
    // the source still has), the Apply step HOSTILE_LISTED (missing at the destination).
    let store = LocalStore::in_memory().expect("store");
    run_delta(&src, &store, &store, E, &DeltaOptions::default())
        .await
        .expect("backfill");
    let payload = RawJson::parse(r#"{"id":"hostile"}"#).expect("JSON");
    store
        .upsert(&Record::new(E, HOSTILE, 1, 1, payload), Strategy::Delta)
        .await
        .expect("upsert");
    let hooked = Forward::new(Arc::new(src), Hostile);
    let folder = scratch("bad-records-ids");
    let spill = LocalSpill::new(folder.path()).expect("spill");
    let deps = ReconcileDeps {
        config: &cfg,
        source: &hooked,
        records: &store,
        control: &store,
        spill: &spill,
        queue: queue.as_ref(),
    };
    let input = PlanInput {
        entity: Some(E.into()),
        ..PlanInput::default()
    };
    let s = run_all(&deps, &input, &ReconcileOptions::default())
        .await
        .expect("reconcile: the Guard and Apply steps queue");
    assert_eq!(
        (s[0].status.as_str(), s[0].queued),
        ("guard_blocked", 1),
        "{s:?}"
    );
    let got = queue.receive(10, 0).await.expect("receive");
    let mut ids: Vec<String> = got
        .iter()
        .map(|m| {
            assert!(printable_ascii(&m.body), "{}", m.body);
            serde_json::from_str::<QueueEnvelope>(&m.body)
                .expect("envelope")
                .id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [HOSTILE, HOSTILE_LISTED]);
    // And the worker takes both.
    let deps = WorkerDeps {
        source: &hooked,
        records: &store,
        control: &store,
    };
    let m: Vec<InMessage> = got.iter().map(InMessage::from).collect();
    let r = process_batch(&deps, &m, &WorkerOptions::default()).await;
    assert!(r.failed.is_empty(), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// check-source
// ---------------------------------------------------------------------------------------------

async fn listing_check(cfg: &Config) -> shared::source::probe::Check {
    let p = SourceClient::new(cfg, None)
        .expect("client")
        .probe(E)
        .await
        .expect("probed");
    p.check("listing").expect("a listing check").clone()
}

#[tokio::test]
async fn check_source_names_the_field_when_no_record_of_a_page_reads() {
    use shared::source::probe::Verdict;
    // A wrong delta pointer: every record is rejected (`missing_delta`).
    let h = sim::people(30).await;
    let c = listing_check(&config(&h, |c| {
        c.entities[0].delta_pointer = "/attributes/changed_at".into()
    }))
    .await;
    assert_eq!(
        (c.verdict, c.field.as_deref()),
        (Verdict::Fail, Some("delta_pointer")),
        "{c:?}"
    );
    // Zone-less timestamps everywhere: the offset to set; set, the listing reads.
    for id in 1..=30 {
        h.sim()
            .corrupt(Entity::People, id, Some(Corruption::NaiveTimestamp));
    }
    let c = listing_check(&config(&h, |_| {})).await;
    assert_eq!(
        (c.verdict, c.field.as_deref()),
        (Verdict::Fail, Some("source.timestamp_offset")),
        "{c:?}"
    );
    let c = listing_check(&config(&h, |c| {
        c.source.timestamp_offset = Some(parse_offset("+00:00").expect("offset"))
    }))
    .await;
    assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
    // One bad record among readable ones is the source's data: a pass that names it.
    for id in 2..=30 {
        h.sim().corrupt(Entity::People, id, None);
    }
    let c = listing_check(&config(&h, |_| {})).await;
    assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
    assert!(
        c.detail.contains("1 of its 30 record(s) cannot be synced"),
        "{c:?}"
    );
}

/// A bad record on a probed page still counts as served: the page-size and pagination checks
/// of a correct configuration pass (counting only readable records made the first page look
/// short: a false "the source caps pages").
#[tokio::test]
async fn check_source_counts_a_bad_record_as_served() {
    use shared::source::probe::Verdict;
    let h = sim::people(250).await;
    h.sim()
        .corrupt(Entity::People, 3, Some(Corruption::BadDelta));
    let p = SourceClient::new(&config(&h, |_| {}), None)
        .expect("client")
        .probe(E)
        .await
        .expect("probed");
    for name in ["page_size", "pagination"] {
        let c = p.check(name).expect("the check ran");
        assert_eq!(c.verdict, Verdict::Pass, "{name}: {c:?}");
    }
}
