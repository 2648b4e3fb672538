//! Reconciliation's steps one by one, over the in-memory stores (`crate::memory`), a spill
//! folder in the system's temporary folder, a scripted ID listing and a queue that keeps what
//! it is sent. The state machine's paths through them are tested in `tests/it` and by the
//! handler.

use super::*;
use crate::adapters::local::LocalSpill;
use crate::error::{SourceError, StoreError};
use crate::memory::{MemoryControl, MemoryRecords};
use crate::model::{
    ID_SHARDS, IdVersion, Micros, RawJson, Record, RejectReason, Rejected, Strategy,
};
use crate::ports::{IdPage, LeaseOutcome, ReceivedMessage, RecordPage};
use crate::setdiff::{DiffSummary, RunReader, list_runs};
use crate::wire::{MessageKind, QueueEnvelope};
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

const ENTITY: &str = "people";
const HOUR_US: Micros = 3_600_000_000;

/// `p000`, `p001`, ...: IDs whose bytewise order is their number's.
fn id(i: usize) -> String {
    format!("p{i:03}")
}

/// The pairs of the IDs in `r`, version `5_000_000 + i`.
fn ids(r: Range<usize>) -> Vec<IdVersion> {
    r.map(|i| IdVersion {
        id: id(i),
        delta_us: 5_000_000 + i as Micros,
    })
    .collect()
}

fn record(id: &str, delta_us: Micros, fetched_at_us: Micros) -> Record {
    let payload = RawJson::parse(format!("{{\"id\":\"{id}\"}}")).unwrap();
    Record::new(ENTITY, id, delta_us, fetched_at_us, payload)
}

/// The source: an ID listing of scripted pages (page `i` resumes with token `t<i+1>`, the last
/// page with none), failing instead of giving page `fail_at`; `get_by_id` has the IDs in
/// `alive` (and answers 404 for the rest).
#[derive(Default)]
struct Listing {
    pages: Vec<Vec<IdVersion>>,
    /// The records page `i` takes out (none when shorter).
    rejected: Vec<Vec<Rejected>>,
    /// IDs `get_by_id` finds but cannot sync (`SourceError::Rejected`).
    unsyncable: HashSet<String>,
    total_count: Option<u64>,
    fail_at: Option<usize>,
    /// Answers `SourceError::Deadline` instead of this page (the client's stop instant).
    deadline_at: Option<usize>,
    alive: HashSet<String>,
    /// The `resume` of each `stream_ids_from` call.
    resumed_from: Mutex<Vec<Option<String>>>,
    /// The IDs asked for with `get_by_id`.
    confirmed: Mutex<Vec<String>>,
}

impl Listing {
    fn of(pages: Vec<Vec<IdVersion>>) -> Self {
        Listing {
            pages,
            ..Default::default()
        }
    }
}

#[async_trait]
impl SourceApi for Listing {
    fn list_changed_since<'a>(
        &'a self,
        _entity: &'a str,
        _since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>> {
        Box::pin(futures::stream::empty())
    }

    fn stream_ids<'a>(&'a self, entity: &'a str) -> BoxStream<'a, Result<IdPage, SourceError>> {
        self.stream_ids_from(entity, None)
    }

    fn stream_ids_from<'a>(
        &'a self,
        _entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        self.resumed_from
            .lock()
            .unwrap()
            .push(resume.map(str::to_owned));
        let start = resume.map_or(0, |t| t.trim_start_matches('t').parse().unwrap());
        let mut out = Vec::new();
        for i in start..self.pages.len() {
            if self.fail_at == Some(i) {
                out.push(Err(SourceError::Walk {
                    url: format!("page {i}"),
                    source: crate::error::WalkError::Shifted,
                }));
                break;
            }
            if self.deadline_at == Some(i) {
                out.push(Err(SourceError::Deadline {
                    url: format!("page {i}"),
                    wait: std::time::Duration::ZERO,
                    cause: crate::error::WaitCause::StopInstant,
                }));
                break;
            }
            out.push(Ok(IdPage {
                ids: self.pages[i].clone(),
                rejected: self.rejected.get(i).cloned().unwrap_or_default(),
                total_count: self.total_count,
                resume: (i + 1 < self.pages.len()).then(|| format!("t{}", i + 1)),
            }));
        }
        Box::pin(futures::stream::iter(out))
    }

    async fn get_by_id(&self, _entity: &str, id: &str) -> Result<Option<Record>, SourceError> {
        self.confirmed.lock().unwrap().push(id.to_owned());
        if self.unsyncable.contains(id) {
            return Err(SourceError::Rejected {
                url: "u".into(),
                id: id.to_owned(),
                reason: RejectReason::NullDelta,
            });
        }
        Ok(self
            .alive
            .contains(id)
            .then(|| record(id, 9_000_000, crate::core::timefmt::now_us())))
    }
}

/// A queue that keeps every body it is sent.
#[derive(Default)]
struct Sent(Mutex<Vec<String>>);

impl Sent {
    fn envelopes(&self) -> Vec<QueueEnvelope> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

#[async_trait]
impl Queue for Sent {
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<usize>, StoreError> {
        self.0.lock().unwrap().extend(bodies.iter().cloned());
        Ok(Vec::new())
    }
    async fn receive(
        &self,
        _max: usize,
        _wait_ms: u64,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A spill folder, removed on drop.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fx {
    config: Config,
    source: Listing,
    records: MemoryRecords,
    control: MemoryControl,
    spill: LocalSpill,
    queue: Sent,
    _folder: Folder,
}

impl Fx {
    fn new(source: Listing) -> Fx {
        let config =
            Config::from_toml_str(crate::config::EMBEDDED, std::path::Path::new("test")).unwrap();
        let folder = Folder(
            std::env::temp_dir()
                .join("shared-reconcile-steps")
                .join(uuid::Uuid::new_v4().simple().to_string()),
        );
        Fx {
            config,
            source,
            records: MemoryRecords::default(),
            control: MemoryControl::default(),
            spill: LocalSpill::new(&folder.0).unwrap(),
            queue: Sent::default(),
            _folder: folder,
        }
    }

    /// The destination holds the IDs in `dest` (versions as `ids`), fetched long ago; the
    /// source lists the IDs in `listed`, one page.
    async fn with(dest: Range<usize>, listed: Range<usize>) -> Fx {
        let fx = Fx::new(Listing::of(vec![ids(listed)]));
        fx.store(&ids(dest), 1).await;
        fx
    }

    async fn store(&self, pairs: &[IdVersion], fetched_at_us: Micros) {
        let recs: Vec<Record> = pairs
            .iter()
            .map(|p| record(&p.id, p.delta_us, fetched_at_us))
            .collect();
        self.records
            .upsert_many(&recs, Strategy::Delta)
            .await
            .unwrap();
    }

    fn deps(&self) -> ReconcileDeps<'_> {
        ReconcileDeps {
            config: &self.config,
            source: &self.source,
            records: &self.records,
            control: &self.control,
            spill: &self.spill,
            queue: &self.queue,
        }
    }

    /// A run of `people` that holds its lease, started now.
    async fn run(&self) -> RunRef {
        let run = RunRef {
            v: STEP_VERSION,
            entity: ENTITY.into(),
            run_id: "rec-test".into(),
            started_us: crate::core::timefmt::now_us(),
            report_only: false,
            approved: false,
            shards: (0..ID_SHARDS).collect(),
        };
        let now = crate::core::timefmt::now_us();
        let taken = self
            .control
            .acquire_lease(ENTITY, JobKind::Reconcile, &run.run_id, now, HOUR_US)
            .await
            .unwrap();
        assert!(matches!(taken, LeaseOutcome::Acquired { .. }));
        run
    }

    /// Source (to its end), every destination shard and the diff, as the state machine runs
    /// them.
    async fn listed(&self, run: &RunRef, opts: &ReconcileOptions) -> (SourceProgress, DiffSummary) {
        let mut progress = SourceProgress::default();
        while !progress.done {
            let input = SourceInput {
                run: run.clone(),
                progress: Some(progress),
            };
            progress = source(&self.deps(), &input, opts).await.unwrap();
        }
        for &shard in &run.shards {
            let input = DestinationInput {
                run: run.clone(),
                shard,
            };
            destination(&self.deps(), &input, opts).await.unwrap();
        }
        let input = DiffInput { run: run.clone() };
        let diff = diff_step(&self.deps(), &input, opts).await.unwrap();
        (progress, diff)
    }

    async fn live(&self, id: &str) -> bool {
        let r = self.records.get(ENTITY, id).await.unwrap();
        r.is_some_and(|r| !r.is_deleted())
    }
}

/// Every pair in the runs under `prefix`, in key then run order.
async fn spilled(spill: &LocalSpill, prefix: &str) -> Vec<IdVersion> {
    let mut out = Vec::new();
    for key in list_runs(spill, prefix).await.unwrap() {
        let mut r = RunReader::open(spill, &key).await.unwrap();
        while let Some((id, delta_us)) = r.next().await.unwrap() {
            out.push(IdVersion {
                id: id.to_owned(),
                delta_us,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// plan, source
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plan_skips_a_held_lease_and_renews_its_own_on_retry() {
    let fx = Fx::new(Listing::default());
    let now = crate::core::timefmt::now_us();
    fx.control
        .acquire_lease(ENTITY, JobKind::Reconcile, "someone-else", now, HOUR_US)
        .await
        .unwrap();
    let opts = ReconcileOptions::default();
    let input = |execution: &str| PlanInput {
        execution: Some(execution.into()),
        ..PlanInput::default()
    };
    let runs = |out: &PlanOutput| -> Vec<(String, String)> {
        out.runs
            .iter()
            .map(|r| (r.entity.clone(), r.run_id.clone()))
            .collect()
    };
    let held_by_other = vec![Skipped {
        entity: ENTITY.into(),
        holder: "someone-else".into(),
    }];

    let first = plan(&fx.deps(), &input("x1"), &opts).await.unwrap();
    let want = vec![("donations".to_owned(), "rec-x1-donations".to_owned())];
    assert_eq!(runs(&first), want);
    assert_eq!(first.skipped, held_by_other);
    assert_eq!(first.runs[0].shards.len(), ID_SHARDS as usize);
    let recorded = fx
        .control
        .list_runs("donations", JobKind::Reconcile, 10)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, "running");

    // A retried Plan of the same execution renews its own lease instead of finding it held.
    let retried = plan(&fx.deps(), &input("x1"), &opts).await.unwrap();
    assert_eq!(runs(&retried), want);
    assert_eq!(retried.skipped, held_by_other);

    // Another execution finds both held.
    let other = plan(&fx.deps(), &input("x2"), &opts).await.unwrap();
    assert!(other.runs.is_empty(), "{other:?}");
    let holders: Vec<&str> = other.skipped.iter().map(|s| s.holder.as_str()).collect();
    assert_eq!(holders, ["someone-else", "rec-x1-donations"]);
}

#[tokio::test]
async fn source_resumes_from_its_token_and_stops_at_stop_at_after_one_page() {
    let fx = Fx::new(Listing::of(vec![ids(0..3), ids(3..6), ids(6..8)]));
    let run = fx.run().await;
    // Already past: every invocation still reads one page, then stops.
    let opts = ReconcileOptions {
        stop_at: Some(Instant::now()),
        ..ReconcileOptions::default()
    };
    let mut progress: Option<SourceProgress> = None;
    let mut steps = Vec::new();
    for n in 1..=3u32 {
        let input = SourceInput {
            run: run.clone(),
            progress: progress.clone(),
        };
        let p = source(&fx.deps(), &input, &opts).await.unwrap();
        assert_eq!((p.invocations, p.pages), (n, n as u64), "{p:?}");
        steps.push((p.resume.clone(), p.done));
        progress = Some(p);
    }
    assert_eq!(
        steps,
        [
            (Some("t1".to_owned()), false),
            (Some("t2".to_owned()), false),
            (None, true)
        ]
    );
    assert_eq!(
        *fx.source.resumed_from.lock().unwrap(),
        [None, Some("t1".to_owned()), Some("t2".to_owned())],
        "each invocation continues after the last page read"
    );
    let p = progress.unwrap();
    assert!(p.ended_normally);
    assert_eq!((p.pairs, p.next_run), (8, 3));
    let prefix = format!("reconcile/{ENTITY}/{}/source", run.run_id);
    assert_eq!(spilled(&fx.spill, &prefix).await, ids(0..8));

    // A finished listing is not read again.
    let input = SourceInput {
        run: run.clone(),
        progress: Some(p.clone()),
    };
    assert_eq!(source(&fx.deps(), &input, &opts).await.unwrap(), p);
    assert_eq!(fx.source.resumed_from.lock().unwrap().len(), 3);

    // With time left, one invocation reads the whole listing.
    let input = SourceInput {
        run: run.clone(),
        progress: None,
    };
    let p = source(&fx.deps(), &input, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!((p.done, p.invocations, p.pages), (true, 1, 3));
}

#[tokio::test]
async fn the_page_cap_and_the_clients_deadline_hand_the_listing_to_the_next_invocation() {
    let fx = Fx::new(Listing::of(vec![ids(0..3), ids(3..6), ids(6..8)]));
    let run = fx.run().await;
    let capped = ReconcileOptions {
        max_source_pages: 2,
        ..ReconcileOptions::default()
    };
    let input = SourceInput {
        run: run.clone(),
        progress: None,
    };
    let p = source(&fx.deps(), &input, &capped).await.unwrap();
    assert_eq!(
        (p.pages, p.done, p.resume.as_deref()),
        (2, false, Some("t2"))
    );
    let input = SourceInput {
        run: run.clone(),
        progress: Some(p),
    };
    let p = source(&fx.deps(), &input, &capped).await.unwrap();
    assert_eq!((p.pages, p.done, p.ended_normally), (3, true, true));

    // The client stops at the deadline after a page: resumable, not a failed listing.
    let fx = Fx::new(Listing {
        deadline_at: Some(1),
        ..Listing::of(vec![ids(0..3), ids(3..6), ids(6..8)])
    });
    let input = SourceInput {
        run: fx.run().await,
        progress: None,
    };
    let p = source(&fx.deps(), &input, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (p.pages, p.done, p.resume.as_deref()),
        (1, false, Some("t1"))
    );
    assert!(p.error.is_none(), "{p:?}");

    // Before any page, it is a listing that did not progress: failed, no deletions.
    let fx = Fx::new(Listing {
        deadline_at: Some(0),
        ..Listing::of(vec![ids(0..3)])
    });
    let input = SourceInput {
        run: fx.run().await,
        progress: None,
    };
    let p = source(&fx.deps(), &input, &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(p.done && !p.ended_normally, "{p:?}");
}

#[tokio::test]
async fn a_broken_listing_ends_the_source_step_not_normally() {
    let fx = Fx::new(Listing {
        fail_at: Some(1),
        ..Listing::of(vec![ids(0..3), ids(3..6)])
    });
    let run = fx.run().await;
    let input = SourceInput {
        run,
        progress: None,
    };
    let p = source(&fx.deps(), &input, &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(p.done && !p.ended_normally, "{p:?}");
    assert_eq!(p.pairs, 3);
    assert!(p.error.as_deref().unwrap().contains("shifted"), "{p:?}");
}

#[tokio::test]
async fn steps_refuse_to_go_on_without_the_runs_lease() {
    let fx = Fx::with(0..3, 0..3).await;
    let run = fx.run().await;
    fx.control
        .release_lease(ENTITY, JobKind::Reconcile, &run.run_id)
        .await
        .unwrap();
    let input = SourceInput {
        run,
        progress: None,
    };
    let e = source(&fx.deps(), &input, &ReconcileOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StepError::LeaseLost { entity } if entity == ENTITY),
        "{e}"
    );
    assert_eq!(e.error_type(), "Reconcile.LeaseLost");
    assert!(fx.source.resumed_from.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// guard
// ---------------------------------------------------------------------------------------------

/// The guard's output for a destination of `dest` IDs and a listing of `listed`, after `tweak`
/// (of the source, before the run; of the guard's input after the listing).
async fn guard_of(
    dest: Range<usize>,
    listed: Range<usize>,
    opts: ReconcileOptions,
    source_tweak: impl FnOnce(&mut Listing),
    input_tweak: impl FnOnce(&mut GuardInput),
) -> (GuardOutput, Fx) {
    let mut source = Listing::of(vec![ids(listed)]);
    source_tweak(&mut source);
    let fx = Fx::new(source);
    fx.store(&ids(dest), 1).await;
    let run = fx.run().await;
    let (progress, diff) = fx.listed(&run, &opts).await;
    let mut input = GuardInput {
        run,
        source: progress,
        diff,
    };
    input_tweak(&mut input);
    let out = guard(&fx.deps(), &input, &opts).await.unwrap();
    (out, fx)
}

fn reason(d: &Decision) -> &str {
    match d {
        Decision::Blocked { reason } | Decision::NeedsApproval { reason } => reason,
        other => panic!("no reason in {other:?}"),
    }
}

#[tokio::test]
async fn guard_blocks_a_listing_that_did_not_end_normally() {
    let (out, _fx) = guard_of(
        0..10,
        0..5,
        ReconcileOptions::default(),
        |_| {},
        |i| {
            i.source.ended_normally = false;
            i.source.error = Some("HTTP 500".into());
        },
    )
    .await;
    assert!(matches!(out.decision, Decision::Blocked { .. }), "{out:?}");
    assert!(reason(&out.decision).contains("did not end normally: HTTP 500"));
    assert_eq!(out.checked, 0, "nothing confirmed when nothing may go");
}

#[tokio::test]
async fn guard_blocks_an_empty_listing_of_a_full_destination() {
    let (out, fx) = guard_of(0..10, 0..0, ReconcileOptions::default(), |_| {}, |_| {}).await;
    assert!(matches!(out.decision, Decision::Blocked { .. }), "{out:?}");
    assert!(reason(&out.decision).contains("empty while the destination holds 10"));
    assert_eq!(out.candidates, 10);
    assert!(fx.source.confirmed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn guard_blocks_a_listing_shorter_than_the_sources_total() {
    let (out, _fx) = guard_of(
        0..10,
        0..8,
        ReconcileOptions::default(),
        |s| s.total_count = Some(10),
        |_| {},
    )
    .await;
    assert!(matches!(out.decision, Decision::Blocked { .. }), "{out:?}");
    assert!(
        reason(&out.decision).contains("returned 8 IDs but the source reports 10"),
        "{out:?}"
    );
    // The total agreeing with the listing lets it through.
    let (out, _fx) = guard_of(
        0..100,
        0..98,
        ReconcileOptions::default(),
        |s| s.total_count = Some(98),
        |_| {},
    )
    .await;
    assert_eq!(out.decision, Decision::Delete);
}

#[tokio::test]
async fn guard_blocks_when_a_candidate_is_alive_and_queues_it() {
    let opts = ReconcileOptions {
        max_delete_share: 1.0,
        ..ReconcileOptions::default()
    };
    let (out, fx) = guard_of(
        0..10,
        0..7,
        opts,
        |s| {
            s.alive.insert(id(8));
        },
        |i| i.run.approved = true,
    )
    .await;
    assert!(matches!(out.decision, Decision::Blocked { .. }), "{out:?}");
    assert!(reason(&out.decision).contains("1 of 3 checked candidates still exist"));
    assert_eq!((out.candidates, out.checked, out.alive), (3, 3, 1));
    let sent = fx.queue.envelopes();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].id.as_str(), sent[0].kind),
        ("p008", MessageKind::Targeted)
    );
    assert_eq!(
        sent[0].reason.as_deref(),
        Some("reconcile: listed as gone, source has it")
    );
    assert!(fx.live(&id(8)).await, "the guard deletes nothing");
}

#[tokio::test]
async fn guard_asks_for_approval_over_max_confirmations_having_checked_only_that_many() {
    let opts = ReconcileOptions {
        max_confirmations: 2,
        max_delete_share: 1.0,
        ..ReconcileOptions::default()
    };
    let (out, fx) = guard_of(0..10, 0..7, opts, |_| {}, |_| {}).await;
    assert!(
        matches!(out.decision, Decision::NeedsApproval { .. }),
        "{out:?}"
    );
    assert!(reason(&out.decision).contains("more than the 2 the guard confirms"));
    assert_eq!((out.candidates, out.checked), (3, 2));
    assert_eq!(
        *fx.source.confirmed.lock().unwrap(),
        [id(7), id(8)],
        "the first candidates in ID order"
    );
}

#[tokio::test]
async fn guard_asks_for_approval_over_the_count_or_the_share() {
    // 3 of 100: under the share (5%), over the count.
    let opts = ReconcileOptions {
        max_delete_count: 2,
        ..ReconcileOptions::default()
    };
    let (out, _fx) = guard_of(0..100, 0..97, opts, |_| {}, |_| {}).await;
    assert!(
        matches!(out.decision, Decision::NeedsApproval { .. }),
        "{out:?}"
    );
    assert!(
        reason(&out.decision).contains("3 deletions (3.0% of 100)"),
        "{out:?}"
    );
    // 10 of 100: under the count (1,000), over the share.
    let (out, _fx) = guard_of(0..100, 0..90, ReconcileOptions::default(), |_| {}, |_| {}).await;
    assert!(
        matches!(out.decision, Decision::NeedsApproval { .. }),
        "{out:?}"
    );
    assert!(
        reason(&out.decision).contains("10 deletions (10.0% of 100)"),
        "{out:?}"
    );
    assert!(
        out.metrics()
            .unwrap()
            .contains("\"ReconcileGuardTripped\":1.0")
    );
    // At the thresholds exactly: allowed.
    let opts = ReconcileOptions {
        max_delete_count: 10,
        max_delete_share: 0.10,
        ..ReconcileOptions::default()
    };
    let (out, _fx) = guard_of(0..100, 0..90, opts, |_| {}, |_| {}).await;
    assert_eq!(out.decision, Decision::Delete);
}

#[tokio::test]
async fn guard_allows_confirmed_deletions_within_the_thresholds_or_approved() {
    let (out, fx) = guard_of(0..100, 0..98, ReconcileOptions::default(), |_| {}, |_| {}).await;
    assert_eq!(out.decision, Decision::Delete);
    assert_eq!((out.candidates, out.checked, out.alive), (2, 2, 0));
    assert_eq!(*fx.source.confirmed.lock().unwrap(), [id(98), id(99)]);
    assert!(fx.queue.envelopes().is_empty());
    assert_eq!(out.metrics(), None, "nothing tripped");

    // Over the share, approved up front: allowed.
    let (out, _fx) = guard_of(
        0..100,
        0..90,
        ReconcileOptions::default(),
        |_| {},
        |i| {
            i.run.approved = true;
        },
    )
    .await;
    assert_eq!(out.decision, Decision::Delete);

    // Nothing to delete.
    let (out, fx) = guard_of(0..10, 0..10, ReconcileOptions::default(), |_| {}, |_| {}).await;
    assert_eq!((out.decision, out.checked), (Decision::Nothing, 0));
    assert!(fx.source.confirmed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn guard_of_a_report_only_run_says_what_it_would_have_decided() {
    let (out, _fx) = guard_of(
        0..100,
        0..98,
        ReconcileOptions::default(),
        |_| {},
        |i| {
            i.run.report_only = true;
        },
    )
    .await;
    assert_eq!(
        out.decision,
        Decision::ReportOnly {
            would: Box::new(Decision::Delete)
        }
    );
    assert!(!out.decision.tripped());
    let (out, _fx) = guard_of(
        0..100,
        0..90,
        ReconcileOptions::default(),
        |_| {},
        |i| {
            i.run.report_only = true;
        },
    )
    .await;
    assert!(
        matches!(&out.decision, Decision::ReportOnly { would } if matches!(**would, Decision::NeedsApproval { .. })),
        "{out:?}"
    );
    assert!(out.decision.tripped());
}

#[tokio::test]
async fn guard_without_confirmation_is_the_negative_control() {
    let opts = ReconcileOptions {
        confirm_deletes: false,
        ..ReconcileOptions::default()
    };
    // 8 of 10 gone: over every threshold, and nothing confirmed.
    let (out, fx) = guard_of(0..10, 0..2, opts, |_| {}, |_| {}).await;
    assert_eq!((out.decision, out.checked), (Decision::Delete, 0));
    assert!(fx.source.confirmed.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// apply
// ---------------------------------------------------------------------------------------------

/// A listed run of `people` and its guard's input for apply, with `decision`.
async fn apply_input(fx: &Fx, decision: Decision, opts: &ReconcileOptions) -> ApplyInput {
    let run = fx.run().await;
    let (_, diff) = fx.listed(&run, opts).await;
    ApplyInput {
        run,
        guard: GuardOutput {
            decision,
            candidates: diff.to_delete.pairs,
            recent: 0,
            checked: 0,
            alive: 0,
        },
        diff,
        approved: false,
        progress: None,
    }
}

#[tokio::test]
async fn apply_deletes_only_confirmed_candidates_not_synced_since_the_listing() {
    // Candidates p006..p009; p007 is alive at the source; p008 is synced during the run.
    let fx = Fx::with(0..10, 0..6).await;
    let opts = ReconcileOptions::default();
    let input = apply_input(&fx, Decision::Delete, &opts).await;
    assert_eq!(input.diff.to_delete.pairs, 4);
    let fx = Fx {
        source: Listing {
            alive: [id(7)].into_iter().collect(),
            ..Listing::default()
        },
        ..fx
    };
    // A change synced by the worker during the run: a new version, fetched after the listing.
    let payload = RawJson::parse(format!("{{\"id\":\"{}\",\"v\":2}}", id(8))).unwrap();
    let changed = Record::new(
        ENTITY,
        id(8),
        6_000_000,
        crate::core::timefmt::now_us(),
        payload,
    );
    let wrote = fx
        .records
        .upsert(&changed, Strategy::Targeted)
        .await
        .unwrap();
    assert!(wrote.wrote(), "{wrote:?}");

    // The conditional delete alone (the sync times unread) skips it too; with them read, it is
    // not a candidate at all: neither confirmed at the source nor deleted.
    let unread = ReconcileOptions {
        skip_recent_candidates: false,
        ..opts.clone()
    };
    let out = apply(&fx.deps(), &input, &unread).await.unwrap();
    assert_eq!(
        (out.deleted, out.alive, out.recent, out.delete_skipped),
        (2, 1, 0, 1),
        "{out:?}"
    );
    fx.queue.0.lock().unwrap().clear();
    fx.source.confirmed.lock().unwrap().clear();
    let out = apply(&fx.deps(), &input, &opts).await.unwrap();
    assert_eq!(
        (
            out.deleted,
            out.alive,
            out.recent,
            out.delete_skipped,
            out.queued
        ),
        (0, 1, 1, 2, 0),
        "{out:?}"
    );
    assert!(
        !fx.source.confirmed.lock().unwrap().contains(&id(8)),
        "a candidate written since the listing is not confirmed"
    );
    for (i, live) in [(5, true), (6, false), (7, true), (8, true), (9, false)] {
        assert_eq!(fx.live(&id(i)).await, live, "{}", id(i));
    }
    let sent = fx.queue.envelopes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, id(7));
    assert_eq!(
        sent[0].reason.as_deref(),
        Some("reconcile: listed as gone, source has it")
    );
    let deleted = fx.records.get(ENTITY, &id(6)).await.unwrap().unwrap();
    assert_eq!(deleted.version.deleted_at_us, Some(input.run.started_us));
}

/// What one Apply invocation that did nothing answers.
fn finished() -> ApplyOutput {
    ApplyOutput {
        done: true,
        invocations: 1,
        regress: Some(RegressOutput {
            done: true,
            ..RegressOutput::default()
        }),
        ..ApplyOutput::default()
    }
}

#[tokio::test]
async fn apply_deletes_nothing_the_guard_did_not_allow() {
    let refused = [
        Decision::Nothing,
        Decision::Blocked {
            reason: "no".into(),
        },
        Decision::NeedsApproval {
            reason: "many".into(),
        },
        Decision::ReportOnly {
            would: Box::new(Decision::Delete),
        },
    ];
    let opts = ReconcileOptions::default();
    for decision in refused {
        let fx = Fx::with(0..10, 0..8).await;
        let input = apply_input(&fx, decision.clone(), &opts).await;
        let out = apply(&fx.deps(), &input, &opts).await.unwrap();
        assert_eq!(out, finished(), "{decision:?}");
        assert!(fx.live(&id(9)).await, "{decision:?}");
        assert!(fx.source.confirmed.lock().unwrap().is_empty());
    }
    // Approval, given through the approval path, lets the waiting deletions go.
    let fx = Fx::with(0..10, 0..8).await;
    let needs = Decision::NeedsApproval {
        reason: "many".into(),
    };
    let mut input = apply_input(&fx, needs, &opts).await;
    input.approved = true;
    assert_eq!(apply(&fx.deps(), &input, &opts).await.unwrap().deleted, 2);
    // A report-only run changes nothing, whatever the guard said.
    let fx = Fx::with(0..10, 2..12).await;
    let mut input = apply_input(&fx, Decision::Delete, &opts).await;
    assert_eq!(
        (input.diff.to_delete.pairs, input.diff.to_fetch.pairs),
        (2, 2)
    );
    input.run.report_only = true;
    assert_eq!(apply(&fx.deps(), &input, &opts).await.unwrap(), finished());
    assert!(fx.live(&id(0)).await);
    assert!(fx.queue.envelopes().is_empty(), "no repairs either");
}

#[tokio::test]
async fn apply_queues_a_targeted_sync_for_each_missed_and_stale_record() {
    // p000..p004 stored, p002 at an older version; p000..p006 listed.
    let fx = Fx::new(Listing::of(vec![ids(0..7)]));
    let mut stored = ids(0..5);
    stored[2].delta_us -= 10;
    fx.store(&stored, 1).await;
    let opts = ReconcileOptions::default();
    let input = apply_input(&fx, Decision::Nothing, &opts).await;
    assert_eq!((input.diff.to_fetch.pairs, input.diff.stale.pairs), (2, 1));
    let out = apply(&fx.deps(), &input, &opts).await.unwrap();
    assert_eq!((out.queued, out.rewound_to_us), (3, None));
    let mut sent: Vec<(String, String)> = fx
        .queue
        .envelopes()
        .into_iter()
        .map(|e| {
            assert_eq!((e.kind, e.entity.as_str()), (MessageKind::Targeted, ENTITY));
            (e.id, e.reason.unwrap())
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (id(2), "reconcile: stale at the destination".to_owned()),
            (id(5), "reconcile: missing at the destination".to_owned()),
            (id(6), "reconcile: missing at the destination".to_owned()),
        ]
    );
}

/// Set `people`'s delta cursor, as a delta run would.
async fn delta_cursor_at(fx: &Fx, watermark_us: Micros) {
    let now = crate::core::timefmt::now_us();
    fx.control
        .acquire_lease(ENTITY, JobKind::Delta, "delta", now, HOUR_US)
        .await
        .unwrap();
    let cursor = crate::core::cursor::DeltaCursor::new(watermark_us).encode();
    fx.control
        .save_cursor(ENTITY, JobKind::Delta, "delta", now, HOUR_US, &cursor)
        .await
        .unwrap();
}

#[tokio::test]
async fn apply_rewinds_the_delta_cursor_instead_over_the_targeted_limit() {
    // p005 and p006 missed: over a limit of 1, the cursor goes back before the older one.
    let fx = Fx::with(0..5, 0..7).await;
    delta_cursor_at(&fx, 9_000_000).await;
    let opts = ReconcileOptions {
        targeted_limit: 1,
        ..ReconcileOptions::default()
    };
    let input = apply_input(&fx, Decision::Nothing, &opts).await;
    // Delta sync is running: the rewind waits (a retryable error).
    let e = apply(&fx.deps(), &input, &opts).await.unwrap_err();
    assert!(matches!(e, StepError::DeltaBusy(_)), "{e}");
    assert_eq!(e.error_type(), "Reconcile.Retryable");

    fx.control
        .release_lease(ENTITY, JobKind::Delta, "delta")
        .await
        .unwrap();
    let out = apply(&fx.deps(), &input, &opts).await.unwrap();
    let target = 5_000_005 - 1_000_000;
    assert_eq!((out.queued, out.rewound_to_us), (0, Some(target)));
    assert!(fx.queue.envelopes().is_empty());
    let state = fx.control.job_state(ENTITY, JobKind::Delta).await.unwrap();
    let cursor = crate::core::cursor::DeltaCursor::decode(state.cursor.as_deref().unwrap());
    assert_eq!(cursor.unwrap().watermark_us, target);
    assert_eq!(state.lease_holder, None, "the rewind's lease is released");

    // A cursor already further back stays where it is.
    let fx = Fx::with(0..5, 0..7).await;
    delta_cursor_at(&fx, 1_000).await;
    fx.control
        .release_lease(ENTITY, JobKind::Delta, "delta")
        .await
        .unwrap();
    let input = apply_input(&fx, Decision::Nothing, &opts).await;
    let out = apply(&fx.deps(), &input, &opts).await.unwrap();
    assert_eq!(out.rewound_to_us, Some(1_000));
}

// ---------------------------------------------------------------------------------------------
// rejected records: reported, never deleted
// ---------------------------------------------------------------------------------------------

fn rejected(id: Option<&str>, reason: RejectReason) -> Rejected {
    Rejected {
        id: id.map(str::to_owned),
        reason,
    }
}

/// The destination holds p000..p009; the source lists p000..p007 and, on the same page, takes
/// out p008 (null delta: a usable ID) and a record without a usable ID; p009 is gone. The
/// source reports 10 records; `get_by_id` of p008 answers `Rejected`.
async fn run_with_rejected(opts: &ReconcileOptions) -> (RunSummary, Fx) {
    let source = Listing {
        rejected: vec![vec![
            rejected(Some(&id(8)), RejectReason::NullDelta),
            rejected(Some(""), RejectReason::EmptyId),
        ]],
        unsyncable: [id(8)].into_iter().collect(),
        total_count: Some(10),
        ..Listing::of(vec![ids(0..8)])
    };
    let fx = Fx::new(source);
    fx.store(&ids(0..10), 1).await;
    let input = PlanInput {
        entity: Some(ENTITY.into()),
        ..PlanInput::default()
    };
    let mut summaries = run_all(&fx.deps(), &input, opts).await.unwrap();
    (summaries.remove(0), fx)
}

#[tokio::test]
async fn a_rejected_record_is_reported_counted_present_and_never_deleted() {
    let opts = ReconcileOptions {
        max_delete_share: 1.0,
        ..ReconcileOptions::default()
    };
    let (s, fx) = run_with_rejected(&opts).await;
    assert_eq!(s.status, "succeeded", "{s:?}");
    assert!(fx.live(&id(8)).await, "listed as present: not a candidate");
    assert!(!fx.live(&id(9)).await, "the record really gone is deleted");
    assert_eq!(s.deleted, 1);
    assert_eq!(s.rejected, 2);
    let reasons: Vec<(Option<&str>, &str)> = s
        .rejected_ids
        .iter()
        .map(|r| (r.id.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [(Some("p008"), "null_delta"), (Some(""), "empty_id")]
    );
    assert_eq!(
        s.source_count,
        Some(9),
        "p008 counts as present (unknown version)"
    );
    assert_eq!(
        (s.missed, s.stale),
        (0, 0),
        "an unknown version is never stale"
    );
    let line: serde_json::Value = serde_json::from_str(&s.metrics()).unwrap();
    assert_eq!(line["RecordsRejected"], 2.0);
    let run = fx
        .control
        .list_runs(ENTITY, JobKind::Reconcile, 1)
        .await
        .unwrap();
    assert!(
        run[0]
            .summary
            .contains(r#"{"id":"p008","reason":"null_delta"}"#),
        "{}",
        run[0].summary
    );
}

#[tokio::test]
async fn negative_control_a_rejected_record_failing_the_listing_blocks_every_deletion() {
    let opts = ReconcileOptions {
        max_delete_share: 1.0,
        per_record_rejection: false,
        ..ReconcileOptions::default()
    };
    let (s, fx) = run_with_rejected(&opts).await;
    assert_eq!(s.status, "guard_blocked", "{s:?}");
    assert!(
        fx.live(&id(9)).await,
        "the record really gone stays: the listing never ends normally (a stall)"
    );
}

#[tokio::test]
async fn a_rejected_candidate_is_alive_at_the_source_never_gone() {
    // Not listed at all, but get_by_id finds it (unsyncable): confirmed alive, not deleted.
    let opts = ReconcileOptions {
        max_delete_share: 1.0,
        ..ReconcileOptions::default()
    };
    let (out, fx) = guard_of(
        0..5,
        0..4,
        opts,
        |s| {
            s.unsyncable.insert(id(4));
        },
        |_| {},
    )
    .await;
    assert!(matches!(out.decision, Decision::Blocked { .. }), "{out:?}");
    assert_eq!(out.alive, 1);
    assert!(fx.live(&id(4)).await);
    assert!(
        fx.queue.envelopes().is_empty(),
        "nothing to sync: it would be rejected"
    );
}

#[tokio::test]
async fn an_unsyncable_candidate_explained_by_an_unreadable_id_in_the_listing_is_kept_not_blocking()
{
    // p004's ID does not read in the listing (empty there); get_by_id(p004) finds it
    // unsyncable. p005 is really gone: deleted; p004 stays.
    let source = Listing {
        rejected: vec![vec![rejected(Some(""), RejectReason::EmptyId)]],
        unsyncable: [id(4)].into_iter().collect(),
        total_count: Some(5),
        ..Listing::of(vec![ids(0..4)])
    };
    let fx = Fx::new(source);
    fx.store(&ids(0..6), 1).await;
    let opts = ReconcileOptions {
        max_delete_share: 1.0,
        ..ReconcileOptions::default()
    };
    let input = PlanInput {
        entity: Some(ENTITY.into()),
        ..PlanInput::default()
    };
    let s = run_all(&fx.deps(), &input, &opts).await.unwrap().remove(0);
    assert_eq!(
        (s.status.as_str(), s.deleted, s.rejected),
        ("succeeded", 1, 1),
        "{s:?}"
    );
    assert!(fx.live(&id(4)).await);
    assert!(!fx.live(&id(5)).await);
}

#[tokio::test]
async fn records_without_a_usable_id_count_towards_the_sources_total() {
    let opts = ReconcileOptions {
        max_delete_share: 1.0,
        ..ReconcileOptions::default()
    };
    // 8 listed, 2 rejected without an ID, the source says 10: not a short listing.
    let (out, _fx) = guard_of(
        0..9,
        0..8,
        opts.clone(),
        |s| {
            s.total_count = Some(10);
            s.rejected = vec![vec![
                rejected(None, RejectReason::MissingId),
                rejected(Some(&"9".repeat(1025)), RejectReason::LongId),
            ]];
        },
        |_| {},
    )
    .await;
    assert_eq!(out.decision, Decision::Delete, "{out:?}");
    // One short of the total is still a short listing.
    let (out, _fx) = guard_of(
        0..9,
        0..8,
        opts,
        |s| {
            s.total_count = Some(11);
            s.rejected = vec![vec![rejected(None, RejectReason::MissingId)]];
        },
        |_| {},
    )
    .await;
    assert!(
        reason(&out.decision).contains("returned 8 IDs (and 1 records without a usable ID)"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_rejected_record_missing_at_the_destination_is_queued_but_never_rewinds_delta() {
    // p005 rejected (usable ID) and missing at the destination: a targeted sync is queued.
    let source = Listing {
        rejected: vec![vec![rejected(Some(&id(5)), RejectReason::BadDelta)]],
        ..Listing::of(vec![ids(0..5)])
    };
    let fx = Fx::new(source);
    fx.store(&ids(0..5), 1).await;
    let opts = ReconcileOptions::default();
    let input = apply_input(&fx, Decision::Nothing, &opts).await;
    let out = apply(&fx.deps(), &input, &opts).await.unwrap();
    assert_eq!(out.queued, 1);
    assert_eq!(fx.queue.envelopes()[0].id, id(5));
    // Over the targeted limit, its unknown version moves no cursor.
    delta_cursor_at(&fx, 9_000_000).await;
    fx.control
        .release_lease(ENTITY, JobKind::Delta, "delta")
        .await
        .unwrap();
    let opts = ReconcileOptions {
        targeted_limit: 0,
        ..ReconcileOptions::default()
    };
    let out = apply(&fx.deps(), &input, &opts).await.unwrap();
    assert_eq!(out.rewound_to_us, None);
    let state = fx.control.job_state(ENTITY, JobKind::Delta).await.unwrap();
    let cursor = crate::core::cursor::DeltaCursor::decode(state.cursor.as_deref().unwrap());
    assert_eq!(cursor.unwrap().watermark_us, 9_000_000);
}

// ---------------------------------------------------------------------------------------------
// finish, dispatch
// ---------------------------------------------------------------------------------------------

fn guarded(decision: Decision) -> Option<GuardOutput> {
    Some(GuardOutput {
        decision,
        candidates: 0,
        recent: 0,
        checked: 0,
        alive: 0,
    })
}

/// The guard's output, the failure path's error, the approval's answer and whether the run was
/// approved up front; the status they make.
type FinishCase<'a> = (
    Option<GuardOutput>,
    Option<serde_json::Value>,
    Option<&'a str>,
    bool,
    &'a str,
);

#[tokio::test]
async fn finish_maps_the_runs_outcome_to_its_status() {
    let blocked = Decision::Blocked {
        reason: "no".into(),
    };
    let needs = Decision::NeedsApproval {
        reason: "many".into(),
    };
    let failed = Some(serde_json::json!({"Error": "Reconcile.Failed", "Cause": "boom"}));
    // (guard, error, approval, run approved up front) → status
    let cases: Vec<FinishCase<'_>> = vec![
        (
            guarded(Decision::Delete),
            failed.clone(),
            None,
            false,
            "failed",
        ),
        (
            guarded(needs.clone()),
            None,
            Some("rejected"),
            false,
            "approval_rejected",
        ),
        (
            guarded(needs.clone()),
            None,
            Some("expired"),
            false,
            "approval_expired",
        ),
        (guarded(blocked), None, None, false, "guard_blocked"),
        (
            guarded(needs.clone()),
            None,
            None,
            false,
            "awaiting_approval",
        ),
        (guarded(needs), None, None, true, "succeeded"),
        (
            guarded(Decision::ReportOnly {
                would: Box::new(Decision::Delete),
            }),
            None,
            None,
            false,
            "report_only",
        ),
        (guarded(Decision::Delete), None, None, false, "succeeded"),
        (guarded(Decision::Nothing), None, None, false, "succeeded"),
        (None, None, None, false, "succeeded"),
    ];
    let opts = ReconcileOptions::default();
    for (guard, error, approval, approved, want) in cases {
        let fx = Fx::with(0..3, 0..3).await;
        let mut run = fx.run().await;
        run.approved = approved;
        fx.listed(&run, &opts).await;
        let input = FinishInput {
            run: run.clone(),
            source: None,
            diff: None,
            guard: guard.clone(),
            apply: None,
            error: error.clone(),
            approval: approval.map(str::to_owned),
        };
        let summary = finish(&fx.deps(), &input, &opts).await.unwrap();
        let case = format!("{guard:?} {error:?} {approval:?} approved={approved}");
        assert_eq!(summary.status, want, "{case}");
        let recorded = fx
            .control
            .list_runs(ENTITY, JobKind::Reconcile, 1)
            .await
            .unwrap();
        assert_eq!(recorded[0].status, want, "{case}");
        assert!(recorded[0].finished_us.is_some(), "{case}");
        let state = fx
            .control
            .job_state(ENTITY, JobKind::Reconcile)
            .await
            .unwrap();
        assert_eq!(state.lease_holder, None, "{case}: the lease is released");
        let left = fx
            .spill
            .list(&format!("reconcile/{ENTITY}/"))
            .await
            .unwrap();
        assert!(
            left.is_empty(),
            "{case}: the run's objects are removed: {left:?}"
        );
        let failed = if want == "failed" { 1.0 } else { 0.0 };
        let metrics: serde_json::Value = serde_json::from_str(&summary.metrics()).unwrap();
        assert_eq!(metrics["RunFailed"], failed, "{case}");
    }
}

#[tokio::test]
async fn finish_summarises_the_diff_and_the_deletions() {
    let fx = Fx::with(0..10, 2..12).await;
    let opts = ReconcileOptions::default();
    let run = fx.run().await;
    let (progress, diff) = fx.listed(&run, &opts).await;
    let applied = ApplyOutput {
        deleted: 2,
        queued: 2,
        ..ApplyOutput::default()
    };
    let input = FinishInput {
        run: run.clone(),
        source: Some(progress),
        diff: Some(diff),
        guard: guarded(Decision::Delete),
        apply: Some(applied),
        error: None,
        approval: None,
    };
    let s = finish(&fx.deps(), &input, &opts).await.unwrap();
    assert_eq!(
        (
            s.source_count,
            s.destination_count,
            s.deleted,
            s.missed,
            s.stale,
            s.queued
        ),
        (Some(10), Some(10), 2, 2, 0, 2)
    );
    let m: serde_json::Value = serde_json::from_str(&s.metrics()).unwrap();
    assert_eq!(
        (m["Entity"].as_str(), m["Strategy"].as_str()),
        (Some(ENTITY), Some("reconcile"))
    );
    assert_eq!(
        (
            m["ReconcileMissed"].as_f64(),
            m["ReconcileDeleted"].as_f64()
        ),
        (Some(2.0), Some(2.0))
    );
    let recorded = fx
        .control
        .list_runs(ENTITY, JobKind::Reconcile, 1)
        .await
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&recorded[0].summary).unwrap();
    assert_eq!(detail["missed"], 2);
}

#[tokio::test]
async fn dispatch_answers_each_steps_wire_json_and_the_metrics_to_publish() {
    let fx = Fx::with(0..3, 0..3).await;
    let opts = ReconcileOptions::default();
    let run = fx.run().await;
    let guard_output = GuardOutput {
        decision: Decision::NeedsApproval {
            reason: "12 deletions".into(),
        },
        candidates: 12,
        recent: 0,
        checked: 12,
        alive: 0,
    };
    let out = dispatch(
        &fx.deps(),
        serde_json::json!({"step": "request_approval", "run": run, "token": "tok", "guard": guard_output}),
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(out, StepOutput::ApprovalRequested {});
    assert_eq!(serde_json::to_value(&out).unwrap(), serde_json::json!({}));
    let metrics: serde_json::Value = serde_json::from_str(&out.metrics().unwrap()).unwrap();
    assert_eq!(metrics["ReconcileAwaitingApproval"], 1.0);

    let out = dispatch(
        &fx.deps(),
        serde_json::json!({"step": "destination", "run": run, "shard": 0}),
        &opts,
    )
    .await
    .unwrap();
    assert!(matches!(out, StepOutput::Destination(_)), "{out:?}");
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(
        json["shard"], 0,
        "the step's output itself, untagged: {json}"
    );
    assert_eq!(out.metrics(), None);

    let tripped = StepOutput::Guard(GuardOutput {
        decision: Decision::Blocked {
            reason: "no".into(),
        },
        candidates: 1,
        recent: 0,
        checked: 0,
        alive: 0,
    });
    let metrics: serde_json::Value = serde_json::from_str(&tripped.metrics().unwrap()).unwrap();
    assert_eq!(metrics["ReconcileGuardTripped"], 1.0);
    assert_eq!(
        metrics["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([[]]),
        "no dimensions: one alarm for every entity"
    );

    for bad in [
        serde_json::json!({"run": run}),
        serde_json::json!({"step": "explode"}),
        serde_json::json!({"step": "continue", "run": run, "progress": SourceProgress::default(), "state_machine": "sm"}),
    ] {
        let e = dispatch(&fx.deps(), bad.clone(), &opts).await.unwrap_err();
        assert_eq!(e.error_type(), "Reconcile.BadInput", "{bad}: {e}");
    }
}
