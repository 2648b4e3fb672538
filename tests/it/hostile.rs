//! Hostile sources (issue 11, "The walk checks what it relies on"): the simulator disobeys one
//! parameter at a time (`source_sim::Misbehave`), and the walk must fail loudly, naming the
//! setting to check, with the cursor where it was; never lose records silently, never spin.
//!
//! The pairs (protection -> its negative control, the same scenario with
//! `SourceClient::without_walk_checks`):
//! - delta order (an ignored `order`): `an_ignored_order_fails_the_delta_run_and_keeps_the_cursor`
//!   -> `negative_control_trusting_an_ignored_order_loses_records_for_good`;
//! - keyset ID order (a sort that disagrees with the filter):
//!   `a_reversed_sort_fails_the_keyset_id_listing_naming_id_order` ->
//!   `negative_control_trusting_a_reversed_sort_skips_live_ids`;
//! - the lower bound (an ignored filter): `an_ignored_filter_fails_the_walk_naming_source_filter`
//!   -> `negative_control_an_ignored_filter_rereads_everything_every_run`;
//! - progress inside a tie (an ignored offset): `an_ignored_offset_inside_a_tie_fails_the_run_at_once`
//!   -> `negative_control_an_ignored_offset_inside_a_tie_spins`;
//! - page fingerprints (the last page served past the end):
//!   `a_clamped_last_page_ends_a_page_number_id_listing_and_its_resumption` ->
//!   `negative_control_a_clamped_last_page_never_ends`;
//! - the deadline inside a listing: `a_listing_stops_at_the_deadline_between_its_requests` ->
//!   `negative_control_without_a_deadline_the_listing_reads_on`.
//!
//! The page cap has no failure to control: `the_page_cap_ends_a_backlog_run_partial_and_later_runs_finish_it`
//! shows that a capped run is `partial`, not an error, and that the backlog still completes.

use crate::delta::{store_versions, watermark};
use crate::source_client::client;
use futures::StreamExt;
use shared::SourceError;
use shared::SyncError;
use shared::adapters::local::LocalStore;
use shared::config::{Config, IdOrder, Pagination};
use shared::error::WalkError;
use shared::model::Micros;
use shared::ports::{ControlStore, JobKind, RecordStore, SourceApi};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, RunStatus, run_delta};
use source_sim::{Entity, SimConfig, SimHandle};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::sim::{self, Misbehave, only};

const E: &str = "people";
const SEC: Micros = 1_000_000;
/// `SimConfig::default().base_time_us`.
const BASE: Micros = 1_704_067_200_000_000;

fn local() -> Arc<LocalStore> {
    Arc::new(LocalStore::in_memory().expect("in-memory local store"))
}

/// 300 people; records 5, 50 and 150 updated after all others, so that ID order and delta
/// order differ (as on any source after its first day).
async fn moved_people(m: Misbehave) -> SimHandle {
    let h = sim::misbehaving(sim::people_only(300), m).await;
    for (i, id) in [5u64, 50, 150].into_iter().enumerate() {
        h.sim()
            .update(Entity::People, id, Some(BASE + 1_000 * SEC + i as i64));
    }
    h
}

fn pagination(name: &str) -> Pagination {
    let limit_param = "per_page".to_owned();
    match name {
        "page" => Pagination::Page {
            page_param: "page".into(),
            limit_param,
            first_page: 1,
        },
        "links_next" => Pagination::LinksNext {
            limit_param,
            next_pointer: "/links/next".into(),
        },
        _ => Pagination::Offset {
            offset_param: "offset".into(),
            limit_param,
        },
    }
}

fn walk_error<T: std::fmt::Debug>(r: Result<T, SourceError>) -> WalkError {
    match r {
        Err(SourceError::Walk { source, .. }) => source,
        other => panic!("expected a walk error, got {other:?}"),
    }
}

async fn count(rs: &dyn RecordStore) -> usize {
    store_versions(rs).await.len()
}

/// Every ID of a listing (or its error), reading at most `max_pages` pages.
async fn ids(
    c: &SourceClient,
    resume: Option<&str>,
    max_pages: usize,
) -> (Vec<String>, usize, Result<(), SourceError>) {
    let mut s = c.stream_ids_from(E, resume);
    let (mut out, mut pages) = (Vec::new(), 0);
    while pages < max_pages {
        match s.next().await {
            None => return (out, pages, Ok(())),
            Some(Err(e)) => return (out, pages, Err(e)),
            Some(Ok(p)) => {
                pages += 1;
                out.extend(p.ids.into_iter().map(|x| x.id));
            }
        }
    }
    (out, pages, Ok(()))
}

// ---------------------------------------------------------------------------------------------
// order
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_ignored_order_fails_the_delta_run_and_keeps_the_cursor() {
    let h = moved_people(only("ignore_order")).await;
    let c = client(&h, |_| {});
    let s = local();
    let err = run_delta(&c, s.as_ref(), s.as_ref(), E, &DeltaOptions::default())
        .await
        .expect_err("the run fails");
    let shown = err.to_string();
    assert!(
        matches!(
            &err,
            SyncError::Source(SourceError::Walk {
                source: WalkError::DeltaOrder { page: 1, .. },
                ..
            })
        ),
        "{err:?}"
    );
    assert!(shown.contains("source.order_param"), "{shown}");
    assert!(
        !err.is_retryable(),
        "a wrong order is not healed by retrying"
    );
    assert_eq!(watermark(s.as_ref()).await, None, "the cursor did not move");
    let runs = s.list_runs(E, JobKind::Delta, 5).await.unwrap();
    assert_eq!(runs[0].status, "failed");
    assert!(
        runs[0].summary.contains("source.order_param"),
        "{}",
        runs[0].summary
    );

    // Fixed at the source (or in the config), the next run reads everything.
    h.sim().set_misbehave(Misbehave::default());
    let r = run_delta(&c, s.as_ref(), s.as_ref(), E, &DeltaOptions::default())
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(count(s.as_ref()).await, 300);
}

#[tokio::test]
async fn negative_control_trusting_an_ignored_order_loses_records_for_good() {
    let h = moved_people(only("ignore_order")).await;
    let c = client(&h, |_| {}).without_walk_checks();
    let s = local();
    for _ in 0..2 {
        let r = run_delta(&c, s.as_ref(), s.as_ref(), E, &DeltaOptions::default())
            .await
            .expect("the unchecked run reports success");
        assert_eq!(r.status, RunStatus::Succeeded);
    }
    let n = count(s.as_ref()).await;
    assert!(n < 300, "records lost: only {n} of 300 synced");
    assert!(
        watermark(s.as_ref()).await.unwrap() > BASE + 900 * SEC,
        "and the cursor moved past the rest"
    );
}

/// 300 people, pages of 10, record 10 updated after all others: a source ignoring the order
/// (ascending IDs) serves a first page that happens to be ascending (records 1-10, record 10
/// last and newest), so the order check cannot see it; the next query (at record 10's value)
/// would skip records 11-300.
async fn an_ascending_first_page_from_a_source_ignoring_the_order() -> (SimHandle, SourceClient) {
    let h = sim::misbehaving(sim::people_only(300), only("ignore_order")).await;
    h.sim().update(Entity::People, 10, Some(BASE + 1_000 * SEC));
    let c = client(&h, |c| c.entities[0].page_size = 10);
    (h, c)
}

#[tokio::test]
async fn a_page_that_happens_to_be_ascending_is_caught_by_the_counts() {
    let (_h, c) = an_ascending_first_page_from_a_source_ignoring_the_order().await;
    let s = local();
    let err = run_delta(&c, s.as_ref(), s.as_ref(), E, &DeltaOptions::default())
        .await
        .expect_err("the run fails");
    match &err {
        SyncError::Source(SourceError::Walk {
            source:
                WalkError::Skipped {
                    page: 1,
                    counted,
                    served: 9,
                    ..
                },
            ..
        }) => assert_eq!(*counted, 299, "{err}"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("source.order_param"), "{err}");
    assert_eq!(count(s.as_ref()).await, 0, "the page was not written");
    assert_eq!(watermark(s.as_ref()).await, None, "the cursor did not move");
}

#[tokio::test]
async fn negative_control_without_the_count_check_the_ascending_page_skips_the_rest() {
    let (_h, c) = an_ascending_first_page_from_a_source_ignoring_the_order().await;
    let c = c.without_walk_checks();
    let s = local();
    let r = run_delta(&c, s.as_ref(), s.as_ref(), E, &DeltaOptions::default())
        .await
        .expect("the unchecked run reports success");
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(count(s.as_ref()).await, 10, "records 11-300 skipped");
}

/// 300 people listed by keyset on the ID (`id_filter`), `order` in `order`.
fn keyset(h: &SimHandle, order: Option<IdOrder>) -> SourceClient {
    client(h, |c: &mut Config| {
        c.entities[0].id_filter = true;
        c.entities[0].id_order = order;
    })
}

#[tokio::test]
async fn a_reversed_sort_fails_the_keyset_id_listing_naming_id_order() {
    let h = sim::misbehaving(sim::people_only(300), only("reverse_order")).await;
    let (_, pages, r) = ids(&keyset(&h, None), None, 100).await;
    let e = walk_error(r);
    assert!(matches!(e, WalkError::IdOrder { page: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("`id_order`"), "{e}");
    assert_eq!(pages, 0, "no page of a misordered listing is used");

    // A declared order the source does not use fails too; the right one passes.
    h.sim().set_misbehave(Misbehave::default());
    let (_, _, r) = ids(&keyset(&h, Some(IdOrder::Bytewise)), None, 100).await;
    assert!(matches!(
        walk_error(r),
        WalkError::IdOrder {
            order: "bytewise",
            ..
        }
    ));
    let (read, _, r) = ids(&keyset(&h, Some(IdOrder::Numeric)), None, 100).await;
    r.unwrap();
    assert_eq!(read.len(), 300);
}

#[tokio::test]
async fn negative_control_trusting_a_reversed_sort_skips_live_ids() {
    let h = sim::misbehaving(sim::people_only(300), only("reverse_order")).await;
    let c = keyset(&h, None).without_walk_checks();
    let (read, _, r) = ids(&c, None, 100).await;
    r.expect("the unchecked listing ends normally");
    let mut unique = read.clone();
    unique.sort();
    unique.dedup();
    assert!(
        unique.len() < 300,
        "live IDs missing from the listing: {} of 300 (reconciliation would take the rest for deletions)",
        unique.len()
    );
}

// ---------------------------------------------------------------------------------------------
// the filter
// ---------------------------------------------------------------------------------------------

/// Read a listing from record 251's time; `Ok(n)` records.
async fn since_251(c: &SourceClient) -> Result<usize, SourceError> {
    let mut s = c.list_changed_since(E, Some(BASE + 250 * SEC));
    let mut n = 0;
    while let Some(p) = s.next().await {
        n += p?.records.len();
    }
    Ok(n)
}

#[tokio::test]
async fn an_ignored_filter_fails_the_walk_naming_source_filter() {
    let h = sim::misbehaving(sim::people_only(300), only("ignore_filter")).await;
    for style in ["offset", "links_next"] {
        let c = client(&h, |c| c.source.pagination = pagination(style));
        let e = walk_error(since_251(&c).await);
        assert!(
            matches!(e, WalkError::BelowBound { page: 1, .. }),
            "{style}: {e:?}"
        );
        assert!(e.to_string().contains("`source.filter`"), "{e}");
    }
    h.sim().set_misbehave(Misbehave::default());
    let c = client(&h, |c| c.source.pagination = pagination("links_next"));
    assert_eq!(since_251(&c).await.unwrap(), 50);
}

#[tokio::test]
async fn negative_control_an_ignored_filter_rereads_everything_every_run() {
    let h = sim::misbehaving(sim::people_only(300), only("ignore_filter")).await;
    let c = client(&h, |c| c.source.pagination = pagination("links_next")).without_walk_checks();
    assert_eq!(
        since_251(&c)
            .await
            .expect("the unchecked walk ends normally"),
        300,
        "every run reads the whole collection instead of the 50 changed records"
    );
}

// ---------------------------------------------------------------------------------------------
// progress
// ---------------------------------------------------------------------------------------------

/// 250 people sharing one timestamp: a tie larger than a page (read by position).
async fn one_big_tie(m: Misbehave) -> SimHandle {
    sim::misbehaving(
        SimConfig {
            tie_group: 250,
            ..sim::people_only(250)
        },
        m,
    )
    .await
}

#[tokio::test]
async fn an_ignored_offset_inside_a_tie_fails_the_run_at_once() {
    let h = one_big_tie(only("ignore_offset")).await;
    let c = client(&h, |_| {});
    let s = local();
    let err = run_delta(&c, s.as_ref(), s.as_ref(), E, &DeltaOptions::default())
        .await
        .expect_err("the run fails");
    assert!(
        matches!(
            &err,
            SyncError::Source(SourceError::Walk {
                source: WalkError::RepeatedPage { .. } | WalkError::NoProgress { .. },
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`source.pagination`"), "{err}");
    assert!(h.sim().stats().requests < 10, "{:?}", h.sim().stats());
    let runs = s.list_runs(E, JobKind::Delta, 5).await.unwrap();
    assert_eq!(
        runs[0].status, "failed",
        "the failure is in the run history"
    );
}

#[tokio::test]
async fn negative_control_an_ignored_offset_inside_a_tie_spins() {
    let h = one_big_tie(only("ignore_offset")).await;
    let c = client(&h, |_| {}).without_walk_checks();
    let s = local();
    let o = DeltaOptions::default();
    let run = run_delta(&c, s.as_ref(), s.as_ref(), E, &o);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .is_err(),
        "the unchecked run never ends"
    );
    assert!(h.sim().stats().requests > 50, "{:?}", h.sim().stats());
}

/// 300 people in pages of 100 by page number: the last page is full, and the simulator serves
/// it again for page 4.
async fn clamped() -> (SimHandle, SourceClient) {
    let h = sim::misbehaving(sim::people_only(300), only("clamp_last_page")).await;
    let c = client(&h, |c| c.source.pagination = pagination("page"));
    (h, c)
}

#[tokio::test]
async fn a_clamped_last_page_ends_a_page_number_id_listing_and_its_resumption() {
    let (_h, c) = clamped().await;
    let mut s = c.stream_ids(E);
    let mut tokens = Vec::new();
    let mut read = 0;
    let end = loop {
        match s.next().await {
            Some(Ok(p)) => {
                read += p.ids.len();
                tokens.push(p.resume);
            }
            other => break other,
        }
    };
    assert_eq!(read, 300, "the three real pages are read");
    let e = walk_error(end.expect("an error ends the listing").map(|_| ()));
    assert!(
        matches!(e, WalkError::RepeatedPage { page: 4, first: 3 }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    // The next invocation, resumed after page 3, recognises page 3 served again at once.
    let token = tokens[2]
        .clone()
        .expect("page 3 is full: a token follows it");
    let (_, pages, r) = ids(&c, Some(&token), 10).await;
    assert_eq!(pages, 0);
    assert!(matches!(
        walk_error(r),
        WalkError::RepeatedPage { page: 1, first: 0 }
    ));
}

#[tokio::test]
async fn negative_control_a_clamped_last_page_never_ends() {
    let (_h, c) = clamped().await;
    let c = c.without_walk_checks();
    let (_, pages, r) = ids(&c, None, 20).await;
    r.unwrap();
    assert_eq!(pages, 20, "the unchecked listing goes on past its 3 pages");
}

/// Every other way of ignoring the position ends the listing with a walk error naming
/// `source.pagination` (or the ID filter), never a spin: delta and ID listings, each style.
#[tokio::test]
async fn every_ignored_position_ends_the_listing_with_a_walk_error() {
    let cases: [(&str, &str, bool); 6] = [
        ("ignore_cursor", "cursor", false),
        ("ignore_cursor", "cursor", true),
        ("ignore_page", "page", false),
        ("ignore_page", "page", true),
        ("ignore_offset", "offset", true),
        ("ignore_id_filter", "keyset", true),
    ];
    for (flag, style, id_listing) in cases {
        let h = sim::start(SimConfig {
            tie_group: 250,
            ..sim::people_only(300)
        })
        .await;
        h.sim().set_misbehave(only(flag));
        let c = client(&h, |c| {
            c.entities[0].id_filter = style == "keyset";
            c.source.pagination = match style {
                "cursor" => Pagination::Cursor {
                    limit_param: "per_page".into(),
                    cursor_param: "cursor".into(),
                    next_cursor_pointer: "/meta/next_cursor".into(),
                },
                s => pagination(s),
            };
        });
        let read = async {
            if id_listing {
                ids(&c, None, 1_000).await.2
            } else {
                let mut s = c.list_changed_since(E, None);
                while let Some(p) = s.next().await {
                    p?;
                }
                Ok(())
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("{flag} ({style}, ids: {id_listing}) spins"));
        let e = walk_error(r);
        let shown = e.to_string();
        assert!(
            shown.contains("`source.pagination`") || shown.contains("`id_filter`"),
            "{flag} ({style}, ids: {id_listing}): {shown}"
        );
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// the deadline and the page cap
// ---------------------------------------------------------------------------------------------

/// 500 people served 100 per page, each answer 100 ms late.
async fn slow() -> (SimHandle, SourceClient) {
    let h = sim::start(SimConfig {
        latency: Duration::from_millis(100),
        ..sim::people_only(500)
    })
    .await;
    let c = client(&h, |_| {});
    (h, c)
}

#[tokio::test]
async fn a_listing_stops_at_the_deadline_between_its_requests() {
    let (_h, c) = slow().await;
    let stop = Instant::now() + Duration::from_millis(150);
    let (_, pages, r) = shared::core::deadline::within(Some(stop), ids(&c, None, 100)).await;
    assert!(
        matches!(r, Err(SourceError::Deadline { .. })),
        "{r:?} after {pages} pages"
    );
    assert!((1..5).contains(&pages), "{pages} pages");
}

#[tokio::test]
async fn negative_control_without_a_deadline_the_listing_reads_on() {
    let (_h, c) = slow().await;
    let (read, _, r) = ids(&c, None, 100).await;
    r.unwrap();
    assert_eq!(read.len(), 500);
}

#[tokio::test]
async fn the_page_cap_ends_a_backlog_run_partial_and_later_runs_finish_it() {
    let h = sim::people(300).await;
    let c = client(&h, |c| c.entities[0].page_size = 50);
    let s = local();
    let o = DeltaOptions {
        max_pages: 2,
        ..DeltaOptions::default()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = run_delta(&c, s.as_ref(), s.as_ref(), E, &o.next_run())
            .await
            .expect("a capped run is not an error");
        statuses.push((r.status, r.stopped_by.clone()));
        if r.status == RunStatus::Succeeded {
            break;
        }
    }
    assert_eq!(
        statuses[0],
        (RunStatus::Partial, Some("page_cap".to_owned()))
    );
    assert_eq!(
        statuses.last().unwrap().0,
        RunStatus::Succeeded,
        "{statuses:?}"
    );
    assert_eq!(count(s.as_ref()).await, 300);
}
