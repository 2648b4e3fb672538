//! Runs and the diff over a real folder-backed spill store (`LocalSpill` in a temp folder).

use super::merge::{Step, classify};
use super::runs::{Encoder, SKIP_ORDER_CHECK};
use super::*;
use crate::adapters::local::LocalSpill;
use crate::adapters::local::testutil::TempDir;
use crate::model::{IdVersion, Micros};
use crate::ports::SpillStore;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

fn spill() -> (TempDir, LocalSpill) {
    let dir = TempDir::new();
    let s = LocalSpill::new(dir.path().join("spill")).expect("spill folder");
    (dir, s)
}

fn outputs(chunk_size: usize) -> DiffOutputs {
    // `diff` merges at most DEFAULT_MAX_FAN_IN inputs per side, the rest first under
    // `out/premerge` (beside the outputs).
    DiffOutputs {
        to_delete: "out/delete".into(),
        to_fetch: "out/fetch".into(),
        stale: "out/stale".into(),
        newer: "out/newer".into(),
        chunk_size,
    }
}

/// Every pair of the runs `keys`, read one reader after another.
async fn read_runs(s: &LocalSpill, keys: &[String]) -> Vec<(String, Micros)> {
    let mut out = Vec::new();
    for k in keys {
        let mut r = RunReader::open(s, k).await.expect("open run");
        while let Some((id, v)) = r.next().await.expect("read run") {
            out.push((id.to_owned(), v));
        }
    }
    out
}

async fn write_unsorted(
    s: &LocalSpill,
    prefix: &str,
    run_size: usize,
    pairs: &[(&str, Micros)],
) -> RunsWritten {
    let mut w = RunWriter::new(s, prefix, run_size).expect("writer");
    for (id, v) in pairs {
        w.push(id, *v).await.expect("push");
    }
    w.finish().await.expect("finish")
}

/// A run object holding `pairs` in the order given, bypassing the writers' sort and checks.
async fn put_raw(s: &LocalSpill, key: &str, pairs: &[(&str, Micros)]) {
    let mut enc = Encoder::new();
    for (id, v) in pairs {
        enc.push(id.as_bytes(), *v);
    }
    s.put(key, enc.finish().0).await.expect("put");
}

fn as_refs(v: &[(String, Micros)]) -> Vec<(&str, Micros)> {
    v.iter().map(|(i, v)| (i.as_str(), *v)).collect()
}

async fn read_list(s: &LocalSpill, list: &ListSummary) -> Vec<(String, Micros)> {
    read_runs(s, &list.keys()).await
}

#[tokio::test]
async fn run_writer_round_trip_sorted_bytewise_in_runs_of_run_size() {
    let (_d, s) = spill();
    let pairs = [
        ("9", 90),
        ("10", 100),
        ("a", 1),
        ("B", 2),
        ("100", -5),
        ("Z", i64::MAX),
        ("é", i64::MIN),
        ("ê", 0),
        ("1", 10),
        ("b", 3),
    ];
    let w = write_unsorted(&s, "run-1/source/", 4, &pairs).await;
    assert_eq!(w.pairs, 10);
    assert_eq!(w.next_index, 3);
    assert_eq!(
        w.runs
            .iter()
            .map(|r| (r.key.as_str(), r.pairs))
            .collect::<Vec<_>>(),
        [
            ("run-1/source/000000.run", 4),
            ("run-1/source/000001.run", 4),
            ("run-1/source/000002.run", 2)
        ]
    );
    assert_eq!(list_runs(&s, "run-1/source").await.unwrap(), w.keys());
    // Each run sorted bytewise on its own; the merge of all of them is the bytewise order.
    let run0 = read_runs(&s, &w.keys()[..1]).await;
    assert_eq!(
        run0,
        [
            ("10".into(), 100),
            ("9".into(), 90),
            ("B".into(), 2),
            ("a".into(), 1)
        ]
    );
    assert_eq!(
        w.sequences().len(),
        3,
        "runs of a RunWriter are merged as separate inputs"
    );
    let mut m = RunMerge::open(&s, &w.sequences()).await.unwrap();
    assert_eq!(m.inputs(), 3);
    let mut merged = Vec::new();
    while let Some((id, v)) = m.next().await.unwrap() {
        merged.push((id.to_owned(), v));
    }
    let ids: Vec<&str> = merged.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, ["1", "10", "100", "9", "B", "Z", "a", "b", "é", "ê"]);
    assert_eq!(merged[5].1, i64::MAX);
    assert_eq!(merged[8].1, i64::MIN);
    assert_eq!(m.next().await.unwrap(), None, "stays at the end");
}

#[tokio::test]
async fn writers_number_from_starting_at_and_reject_bad_input() {
    let (_d, s) = spill();
    let mut w = RunWriter::new(&s, "p", 2).unwrap().starting_at(5);
    w.push_all(&[
        IdVersion {
            id: "x".into(),
            delta_us: 1,
        },
        IdVersion {
            id: "y".into(),
            delta_us: 2,
        },
        IdVersion {
            id: "z".into(),
            delta_us: 3,
        },
    ])
    .await
    .unwrap();
    assert_eq!(w.buffered(), 1);
    assert!(matches!(
        w.push("", 1).await,
        Err(SetDiffError::BadId { .. })
    ));
    let long = "x".repeat(MAX_ID_BYTES + 1);
    assert!(matches!(
        w.push(&long, 1).await,
        Err(SetDiffError::BadId { .. })
    ));
    let done = w.finish().await.unwrap();
    assert_eq!(done.keys(), ["p/000005.run", "p/000006.run"]);
    assert_eq!(done.next_index, 7);
    assert!(matches!(
        RunWriter::new(&s, "p", 0),
        Err(SetDiffError::InvalidArgument {
            name: "run_size",
            ..
        })
    ));
    assert!(SortedRunWriter::new(&s, "p", 0).is_err());
    // Nothing pushed, nothing written.
    let empty = RunWriter::new(&s, "none", 10)
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(empty, RunsWritten::default());
    assert!(s.list("none/").await.unwrap().is_empty());
    // A byte cap ends a run before the run size does.
    let mut w = RunWriter::new(&s, "capped", 1_000)
        .unwrap()
        .max_buffer_bytes(2_000);
    for i in 0..10 {
        w.push(&format!("{i}{}", "x".repeat(499)), i).await.unwrap();
    }
    let capped = w.finish().await.unwrap();
    assert_eq!(capped.pairs, 10);
    assert!(capped.runs.len() >= 3, "{capped:?}");
    assert!(capped.runs.iter().all(|r| r.pairs <= 4));
}

#[tokio::test]
async fn sorted_writer_checks_order_across_runs_and_continuations() {
    let (_d, s) = spill();
    let mut w = SortedRunWriter::new(&s, "dst/shard-03", 2).unwrap();
    for (id, v) in [("1", 1), ("10", 2), ("10", 3), ("2", 4), ("9", 5)] {
        w.push(id, v).await.unwrap();
    }
    // "10" < "9" bytewise, but "10" after "9" is out of order, across a run boundary too.
    let err = w.push("10", 6).await.unwrap_err();
    assert!(
        matches!(&err, SetDiffError::Unsorted { previous, next, .. } if previous == "9" && next == "10"),
        "{err}"
    );
    assert!(!err.is_retryable());
    let done = w.finish().await.unwrap();
    assert_eq!(done.pairs, 5);
    assert_eq!(
        read_runs(&s, &done.keys()).await,
        [
            ("1".into(), 1),
            ("10".into(), 2),
            ("10".into(), 3),
            ("2".into(), 4),
            ("9".into(), 5)
        ]
    );
    // A numerically sorted input (what a numeric sort at the source would give) is refused.
    let mut w = SortedRunWriter::new(&s, "numeric", 100).unwrap();
    w.push("9", 1).await.unwrap();
    assert!(matches!(
        w.push("10", 1).await,
        Err(SetDiffError::Unsorted { .. })
    ));
    // A continuation checks against the last ID of the previous invocation.
    let mut w = SortedRunWriter::new(&s, "cont", 100)
        .unwrap()
        .starting_at(3, Some("b"));
    assert!(matches!(
        w.push("a", 1).await,
        Err(SetDiffError::Unsorted { .. })
    ));
    w.push("b", 1).await.unwrap();
    assert_eq!(w.finish().await.unwrap().keys(), ["cont/000003.run"]);
}

#[test]
fn join_steps_compare_bytewise() {
    let b = |s: &'static str| Some(s.as_bytes());
    assert_eq!(classify(b("10"), b("9")), Step::SourceOnly);
    assert_eq!(classify(b("9"), b("10")), Step::DestinationOnly);
    assert_eq!(classify(b("B"), b("a")), Step::SourceOnly);
    assert_eq!(classify(b("a"), b("a")), Step::Both);
    assert_eq!(classify(b("a"), None), Step::SourceOnly);
    assert_eq!(classify(None, b("a")), Step::DestinationOnly);
    assert_eq!(classify(None, None), Step::Done);
}

/// Negative control: the same IDs at both sides, one side sorted numerically. An unchecked merge
/// would report spurious deletions and fetches; the order check turns it into an error.
#[tokio::test]
async fn numeric_sort_on_one_side_is_caught_not_diffed() {
    let (_d, s) = spill();
    let ids = ["1", "2", "9", "10", "11", "20", "100"];
    let pairs: Vec<(&str, Micros)> = ids.iter().map(|i| (*i, 7)).collect();
    let src = write_unsorted(&s, "src", 100, &pairs).await;
    put_raw(&s, "dst/000000.run", &pairs).await; // numeric order: 9 before 10
    let dst = vec!["dst/000000.run".to_owned()];

    // With the check off (test-only switch), the merge join goes wrong.
    SKIP_ORDER_CHECK.with(|c| c.set(true));
    let wrong = diff(&s, &src.keys(), &dst, &outputs(100)).await;
    SKIP_ORDER_CHECK.with(|c| c.set(false));
    let wrong = wrong.expect("unchecked diff runs");
    assert!(
        wrong.to_delete.pairs > 0 && wrong.to_fetch.pairs > 0,
        "a numeric side makes spurious differences: {wrong:?}"
    );
    s.delete_prefix("out/").await.unwrap();

    // With the check on (always, outside tests), the run is refused.
    let err = diff(&s, &src.keys(), &dst, &outputs(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SetDiffError::Unsorted { previous, next, .. } if previous == "9" && next == "10"),
        "{err}"
    );
    // And the same IDs sorted bytewise on both sides agree entirely.
    let dst_ok = write_unsorted(&s, "dst-ok", 3, &pairs).await;
    let right = diff(&s, &src.keys(), &dst_ok.keys(), &outputs(100))
        .await
        .unwrap();
    assert_eq!(
        (right.in_sync, right.to_delete.pairs, right.to_fetch.pairs),
        (7, 0, 0)
    );
}

#[tokio::test]
async fn diff_finds_deletions_fetches_and_stale_records() {
    let (_d, s) = spill();
    let src = write_unsorted(
        &s,
        "src",
        2,
        &[
            ("10", 5),
            ("9", 5),
            ("a", 9),
            ("B", 3),
            ("new", 1),
            ("same", 4),
        ],
    )
    .await;
    let mut w = SortedRunWriter::new(&s, "dst", 100).unwrap();
    for (id, v) in [
        ("10", 5),
        ("9", 2),
        ("B", 8),
        ("a", 4),
        ("gone", 1),
        ("same", 4),
    ] {
        w.push(id, v).await.unwrap();
    }
    let dst = w.finish().await.unwrap();
    let sum = diff(&s, &src.keys(), &dst.keys(), &outputs(100))
        .await
        .unwrap();
    assert_eq!(read_list(&s, &sum.to_delete).await, [("gone".into(), 1)]);
    assert_eq!(read_list(&s, &sum.to_fetch).await, [("new".into(), 1)]);
    assert_eq!(
        read_list(&s, &sum.stale).await,
        [("9".into(), 5), ("a".into(), 9)]
    );
    assert_eq!(sum.stale_max_lag_us, 5);
    assert_eq!(sum.in_sync, 2, "10 and same");
    assert_eq!(sum.destination_newer, 1, "B");
    assert_eq!(
        read_list(&s, &sum.newer).await,
        [("B".into(), 3)],
        "with the source's version"
    );
    assert_eq!(
        sum.source,
        SideCounts {
            runs: 3,
            premerges: 0,
            pairs: 6,
            ids: 6,
            duplicates: 0
        }
    );
    assert_eq!(
        sum.destination,
        SideCounts {
            runs: 1,
            premerges: 0,
            pairs: 6,
            ids: 6,
            duplicates: 0
        }
    );
    // Small and serialisable for a Step Functions state.
    let json = serde_json::to_string(&sum).unwrap();
    assert!(json.len() < 1_000, "{json}");
    assert_eq!(serde_json::from_str::<DiffSummary>(&json).unwrap(), sum);
}

#[tokio::test]
async fn the_newer_list_holds_known_source_versions_below_the_destinations_in_chunks() {
    use crate::setdiff::UNKNOWN_VERSION;
    let (_d, s) = spill();
    let src = write_unsorted(
        &s,
        "src",
        10,
        &[
            ("a", UNKNOWN_VERSION),
            ("b", 3),
            ("c", 7),
            ("d", 1),
            ("e", 2),
        ],
    )
    .await;
    let mut w = SortedRunWriter::new(&s, "dst", 100).unwrap();
    for (id, v) in [("a", 5), ("b", 4), ("c", 7), ("d", 9), ("e", 9)] {
        w.push(id, v).await.unwrap();
    }
    let dst = w.finish().await.unwrap();
    let sum = diff(&s, &src.keys(), &dst.keys(), &outputs(2))
        .await
        .unwrap();
    // `a` is counted as today, but a record the listing could not read is no regression.
    assert_eq!(sum.destination_newer, 4);
    assert_eq!(sum.newer.pairs, 3);
    assert_eq!(sum.newer.objects, 2, "chunks of 2");
    assert_eq!(
        read_list(&s, &sum.newer).await,
        [("b".into(), 3), ("d".into(), 1), ("e".into(), 2)]
    );
    assert_eq!(sum.in_sync, 1);
    assert_eq!(sum.stale.pairs, 0);
}

#[test]
fn a_diff_summary_written_before_the_newer_list_reads_with_an_empty_one() {
    let mut old = serde_json::to_value(DiffSummary::default()).unwrap();
    old.as_object_mut().unwrap().remove("newer");
    let back: DiffSummary = serde_json::from_value(old).unwrap();
    assert_eq!(back.newer.pairs, 0);
    assert!(back.newer.keys().is_empty());
}

#[tokio::test]
async fn duplicates_keep_the_highest_version_and_are_counted() {
    let (_d, s) = spill();
    // "7" three times across runs and within one, "x" twice in one run.
    let src = write_unsorted(
        &s,
        "src",
        3,
        &[("7", 1), ("x", 2), ("x", 9), ("7", 30), ("8", 1), ("7", 20)],
    )
    .await;
    let dst = write_unsorted(&s, "dst", 10, &[("7", 25), ("x", 9), ("8", 1), ("8", 0)]).await;
    let sum = diff(&s, &src.keys(), &dst.keys(), &outputs(10))
        .await
        .unwrap();
    assert_eq!(
        sum.source,
        SideCounts {
            runs: 2,
            premerges: 0,
            pairs: 6,
            ids: 3,
            duplicates: 3
        }
    );
    assert_eq!(
        sum.destination,
        SideCounts {
            runs: 1,
            premerges: 0,
            pairs: 4,
            ids: 3,
            duplicates: 1
        }
    );
    assert_eq!(read_list(&s, &sum.stale).await, [("7".into(), 30)]);
    assert_eq!(sum.in_sync, 2, "x at 9, 8 at 1");
    assert_eq!(sum.to_delete.pairs + sum.to_fetch.pairs, 0);
}

#[tokio::test]
async fn empty_sides() {
    let (_d, s) = spill();
    let none: Vec<String> = Vec::new();
    let sum = diff(&s, &none, &none, &outputs(10)).await.unwrap();
    assert_eq!(
        sum,
        DiffSummary {
            to_delete: ListSummary {
                prefix: "out/delete".into(),
                ..ListSummary::default()
            },
            to_fetch: ListSummary {
                prefix: "out/fetch".into(),
                ..ListSummary::default()
            },
            stale: ListSummary {
                prefix: "out/stale".into(),
                ..ListSummary::default()
            },
            newer: ListSummary {
                prefix: "out/newer".into(),
                ..ListSummary::default()
            },
            ..DiffSummary::default()
        }
    );
    assert!(s.list("out/").await.unwrap().is_empty(), "no empty objects");

    let some = write_unsorted(&s, "some", 10, &[("b", 1), ("a", 2)]).await;
    // An empty run object (a shard with no live IDs written anyway) is a side with nothing.
    let empty_run = {
        let mut enc = Encoder::new();
        s.put("empty/000000.run", enc.finish().0).await.unwrap();
        vec!["empty/000000.run".to_owned()]
    };
    let sum = diff(&s, &empty_run, &some.keys(), &outputs(10))
        .await
        .unwrap();
    assert_eq!((sum.to_delete.pairs, sum.to_fetch.pairs), (2, 0));
    assert_eq!(
        read_list(&s, &sum.to_delete).await,
        [("a".into(), 2), ("b".into(), 1)]
    );
    s.delete_prefix("out/").await.unwrap();
    let sum = diff(&s, &some.keys(), &none, &outputs(10)).await.unwrap();
    assert_eq!(
        (
            sum.to_delete.pairs,
            sum.to_fetch.pairs,
            sum.destination.runs
        ),
        (0, 2, 0)
    );
}

#[tokio::test]
async fn outputs_are_chunked_into_several_objects() {
    let (_d, s) = spill();
    let ids: Vec<String> = (0..10).map(|i| format!("id{i}")).collect();
    let pairs: Vec<(&str, Micros)> = ids.iter().map(|i| (i.as_str(), 1)).collect();
    let dst = write_unsorted(&s, "dst", 4, &pairs).await;
    let sum = diff(&s, &[], &dst.keys(), &outputs(3)).await.unwrap();
    assert_eq!((sum.to_delete.pairs, sum.to_delete.objects), (10, 4));
    assert_eq!(
        sum.to_delete.keys(),
        list_runs(&s, "out/delete").await.unwrap()
    );
    let back = read_list(&s, &sum.to_delete).await;
    assert_eq!(
        back.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
        ids
    );
    assert!(matches!(
        diff(&s, &[], &dst.keys(), &outputs(0)).await,
        Err(SetDiffError::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn many_runs_random_input_matches_a_model() {
    let (_d, s) = spill();
    let mut rng = fastrand::Rng::with_seed(5);
    let id = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
        0 => rng.u32(0..3_000).to_string(),
        1 => format!("{}{}", rng.alphabetic(), rng.u16(0..200)),
        2 => format!("é{}", rng.u8(0..50)),
        _ => rng.u64(..).to_string(),
    };
    let source: Vec<(String, Micros)> =
        (0..2_000).map(|_| (id(&mut rng), rng.i64(0..20))).collect();
    let destination: Vec<(String, Micros)> =
        (0..2_000).map(|_| (id(&mut rng), rng.i64(0..20))).collect();
    let src = write_unsorted(&s, "src", 13, &as_refs(&source)).await; // 154 runs
    let dst = write_unsorted(&s, "dst", 17, &as_refs(&destination)).await; // 118 runs
    assert!(src.runs.len() > 100 && dst.runs.len() > 100);

    let model = |v: &[(String, Micros)]| {
        let mut m = BTreeMap::<String, Micros>::new();
        for (i, ver) in v {
            let e = m.entry(i.clone()).or_insert(*ver);
            *e = (*e).max(*ver);
        }
        m
    };
    let (ms, md) = (model(&source), model(&destination));
    let sum = diff(&s, &src.keys(), &dst.keys(), &outputs(50))
        .await
        .unwrap();
    let want_fetch: Vec<(String, Micros)> = ms
        .iter()
        .filter(|(i, _)| !md.contains_key(*i))
        .map(|(i, v)| (i.clone(), *v))
        .collect();
    let want_delete: Vec<(String, Micros)> = md
        .iter()
        .filter(|(i, _)| !ms.contains_key(*i))
        .map(|(i, v)| (i.clone(), *v))
        .collect();
    let want_stale: Vec<(String, Micros)> = ms
        .iter()
        .filter(|(i, v)| md.get(*i).is_some_and(|d| *v > d))
        .map(|(i, v)| (i.clone(), *v))
        .collect();
    assert_eq!(read_list(&s, &sum.to_fetch).await, want_fetch);
    assert_eq!(read_list(&s, &sum.to_delete).await, want_delete);
    assert_eq!(read_list(&s, &sum.stale).await, want_stale);
    assert_eq!(sum.source.ids, ms.len() as u64);
    assert_eq!(sum.source.duplicates, (source.len() - ms.len()) as u64);
    assert_eq!(sum.destination.runs, dst.runs.len() as u64);
    assert!(sum.to_fetch.objects > 1 || want_fetch.len() <= 50);
    // 154 inputs: 64 merged into one (91 left), then 28 (64 left); 118: 55 merged into one.
    assert_eq!((sum.source.premerges, sum.destination.premerges), (2, 1));
    assert!(
        s.list("out/premerge/").await.unwrap().is_empty(),
        "scratch removed"
    );

    // The same with at most 4 inputs per side: several rounds of intermediate merges into
    // chained runs, then the same answer, and the scratch space cleaned up.
    s.delete_prefix("out/").await.unwrap();
    let merge = MergeOptions {
        max_fan_in: 4,
        scratch: "scratch".into(),
    };
    let bounded = diff_with(&s, &src.sequences(), &dst.sequences(), &outputs(50), &merge)
        .await
        .unwrap();
    assert!(bounded.source.premerges > 1 && bounded.destination.premerges > 1);
    assert_eq!(bounded.source.duplicates, sum.source.duplicates);
    assert_eq!(read_list(&s, &bounded.to_fetch).await, want_fetch);
    assert_eq!(read_list(&s, &bounded.to_delete).await, want_delete);
    assert_eq!(read_list(&s, &bounded.stale).await, want_stale);
    assert!(s.list("scratch/").await.unwrap().is_empty());

    // The merge alone: every pair, in the order of a bytewise sort (stable by run).
    let mut m = RunMerge::open(&s, &src.sequences()).await.unwrap();
    let mut prev: Option<String> = None;
    let mut n = 0;
    while let Some((id, _)) = m.next().await.unwrap() {
        assert!(prev.as_deref() <= Some(id));
        prev = Some(id.to_owned());
        n += 1;
    }
    assert_eq!(n, source.len());
}

/// A reader that hands out one byte per read: every pair straddles a refill.
struct OneByte(Vec<u8>, usize);

impl AsyncRead for OneByte {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.1 < self.0.len() && buf.remaining() > 0 {
            let b = self.0[self.1];
            buf.put_slice(&[b]);
            self.1 += 1;
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn reader_handles_byte_by_byte_streams() {
    let mut enc = Encoder::new();
    let long = "z".repeat(MAX_ID_BYTES);
    for (id, v) in [("a", 1), ("ab", -1), ("abc", 1 << 60), (long.as_str(), 0)] {
        enc.push(id.as_bytes(), v);
    }
    let (body, n) = enc.finish();
    assert_eq!(n, 4);
    let mut r = RunReader::from_reader("bytes", Box::new(OneByte(body, 0)))
        .await
        .unwrap();
    assert_eq!(r.pairs(), 4);
    let mut got = Vec::new();
    while let Some((id, v)) = r.next().await.unwrap() {
        got.push((id.len(), v));
    }
    assert_eq!(got, [(1, 1), (2, -1), (3, 1 << 60), (MAX_ID_BYTES, 0)]);
}

/// Reads a whole object as a run; the error if any.
async fn read_whole(s: &LocalSpill, key: &str) -> Result<u64, SetDiffError> {
    let mut r = RunReader::open(s, key).await?;
    let mut n = 0;
    while r.next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[tokio::test]
async fn truncated_or_corrupt_objects_are_typed_errors() {
    let (_d, s) = spill();
    let w = write_unsorted(&s, "good", 100, &[("1", 1), ("10", 2), ("9", 3), ("é", 4)]).await;
    let key = &w.keys()[0];
    let body = {
        let mut r = s.open(key).await.unwrap();
        let mut b = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut b)
            .await
            .unwrap();
        b
    };
    assert_eq!(read_whole(&s, key).await.unwrap(), 4);

    // Every cut is noticed as a truncation.
    for len in 0..body.len() {
        s.put("cut", body[..len].to_vec()).await.unwrap();
        let err = read_whole(&s, "cut").await.unwrap_err();
        assert!(
            matches!(err, SetDiffError::Truncated { .. }),
            "cut at {len}: {err}"
        );
        assert!(!err.is_retryable());
    }
    // Every flipped byte is an error (never a panic, never a silent success).
    for i in 0..body.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = body.clone();
            bad[i] ^= bit;
            s.put("flip", bad).await.unwrap();
            assert!(
                read_whole(&s, "flip").await.is_err(),
                "byte {i} bit {bit:#x}"
            );
        }
    }
    // Bytes after the trailer.
    let mut longer = body.clone();
    longer.push(0);
    s.put("longer", longer).await.unwrap();
    assert!(matches!(
        read_whole(&s, "longer").await,
        Err(SetDiffError::Corrupt { .. })
    ));
    // Not a run at all; another format version.
    s.put("text", b"1\t100\n2\t200\n".repeat(3)).await.unwrap();
    assert!(matches!(
        read_whole(&s, "text").await,
        Err(SetDiffError::Corrupt { .. })
    ));
    let mut v2 = body.clone();
    v2[7] = 2;
    s.put("v2", v2).await.unwrap();
    assert!(matches!(
        read_whole(&s, "v2").await,
        Err(SetDiffError::UnsupportedFormat {
            found: 2,
            expected: 1,
            ..
        })
    ));
    // A missing object is the store's error; a diff over a bad run fails as a whole.
    assert!(matches!(
        read_whole(&s, "missing").await,
        Err(SetDiffError::Store(_))
    ));
    s.put("cut", body[..body.len() - 3].to_vec()).await.unwrap();
    let err = diff(&s, &w.keys(), &["cut".to_owned()], &outputs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, SetDiffError::Truncated { .. }), "{err}");
}

#[test]
fn run_keys_and_errors_read_well() {
    assert_eq!(run_key("a/b", 7), "a/b/000007.run");
    assert_eq!(run_key("a/b/", 1_234_567), "a/b/1234567.run");
    let e = SetDiffError::Unsorted {
        context: "run x".into(),
        previous: "9".into(),
        next: "10".into(),
    };
    assert_eq!(
        e.to_string(),
        r#"run x: IDs out of bytewise order: "9" came before "10""#
    );
}

#[tokio::test]
async fn sequences_are_read_as_one_input_with_the_order_checked_across_runs() {
    let (_d, s) = spill();
    // One shard in runs of 3: one sequence, one open reader at a time.
    let mut w = SortedRunWriter::new(&s, "dst/07", 3).unwrap();
    for i in 10..20 {
        w.push(&i.to_string(), i).await.unwrap();
    }
    let shard = w.finish().await.unwrap();
    assert!(shard.chained);
    assert_eq!(shard.sequences(), vec![shard.keys()]);
    assert_eq!(shard.runs.len(), 4);
    let mut m = RunMerge::open(&s, &shard.sequences()).await.unwrap();
    assert_eq!(m.inputs(), 1);
    let mut n = 0;
    while m.next().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 10);
    // Two runs each sorted, but not in order as a sequence.
    put_raw(&s, "bad/000000.run", &[("2", 1), ("3", 1)]).await;
    put_raw(&s, "bad/000001.run", &[("1", 1)]).await;
    let keys = list_runs(&s, "bad").await.unwrap();
    let mut m = RunMerge::open(&s, std::slice::from_ref(&keys))
        .await
        .unwrap();
    let mut got = Vec::new();
    let err = loop {
        match m.next().await {
            Ok(Some((id, _))) => got.push(id.to_owned()),
            Ok(None) => panic!("sequence out of order went unnoticed"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, ["2", "3"]);
    assert!(matches!(err, SetDiffError::Unsorted { .. }), "{err}");
    // As separate inputs they merge fine.
    let alone: Vec<Vec<String>> = keys.iter().map(|k| vec![k.clone()]).collect();
    let mut m = RunMerge::open(&s, &alone).await.unwrap();
    let mut got = Vec::new();
    while let Some((id, _)) = m.next().await.unwrap() {
        got.push(id.to_owned());
    }
    assert_eq!(got, ["1", "2", "3"]);
    // An empty sequence, and an empty run inside one, are nothing.
    put_raw(&s, "gap/000000.run", &[("a", 1)]).await;
    put_raw(&s, "gap/000001.run", &[]).await;
    put_raw(&s, "gap/000002.run", &[("b", 1)]).await;
    let gap = list_runs(&s, "gap").await.unwrap();
    let mut m = RunMerge::open(&s, &[gap, Vec::new()]).await.unwrap();
    let mut got = Vec::new();
    while let Some((id, _)) = m.next().await.unwrap() {
        got.push(id.to_owned());
    }
    assert_eq!(got, ["a", "b"]);
}

#[tokio::test]
async fn merge_options_and_fan_in_limits() {
    let (_d, s) = spill();
    assert_eq!(
        MergeOptions::beside(&outputs(10)),
        MergeOptions {
            max_fan_in: DEFAULT_MAX_FAN_IN,
            scratch: "out/premerge".into()
        }
    );
    let merge = MergeOptions {
        max_fan_in: 1,
        scratch: "x".into(),
    };
    assert!(matches!(
        diff_with(&s, &[], &[], &outputs(10), &merge).await,
        Err(SetDiffError::InvalidArgument {
            name: "max_fan_in",
            ..
        })
    ));
    // merge_runs: many inputs into one chained sequence, duplicates kept.
    let w = write_unsorted(
        &s,
        "in",
        2,
        &[("b", 1), ("a", 1), ("b", 2), ("c", 0), ("a", 3)],
    )
    .await;
    let merged = merge_runs(&s, &w.sequences(), "merged", 2).await.unwrap();
    assert!(merged.chained);
    assert_eq!(merged.pairs, 5);
    assert_eq!(
        read_runs(&s, &merged.keys()).await,
        [
            ("a".into(), 1),
            ("a".into(), 3),
            ("b".into(), 1),
            ("b".into(), 2),
            ("c".into(), 0)
        ]
    );
}
