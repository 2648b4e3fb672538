//! The source client against the simulator over real HTTP: every filter and pagination style,
//! the retry policy on each failure kind, JSON vs HTML 404, keyset paging under mutation, ties
//! larger than a page, and one page in memory for `stream_ids`.

use futures::StreamExt;
use shared::SourceError;
use shared::config::{
    AuthConfig, Config, Filter, FilterOp, Pagination, RateLimit, Secret, SecretRef,
};
use shared::core::timefmt::TimestampFormat;
use shared::model::Micros;
use shared::ports::SourceApi;
use shared::source::SourceClient;
use source_sim::{Entity, Envelope, Fault, Granularity, SimConfig, SimHandle};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::{config, sim};

/// The source client on the simulator, with the quick test configuration (`testkit::config::quick`).
pub fn client(sim: &SimHandle, edit: impl FnOnce(&mut Config)) -> SourceClient {
    SourceClient::new(&config::quick(&sim.base_url(), edit), None).expect("client")
}

/// Every record of a listing, in order, as (id, delta).
async fn list_all(
    c: &SourceClient,
    entity: &str,
    since: Option<Micros>,
) -> Result<Vec<(String, Micros)>, SourceError> {
    let mut out = Vec::new();
    let mut s = c.list_changed_since(entity, since);
    while let Some(p) = s.next().await {
        out.extend(p?.records.into_iter().map(|r| (r.id, r.version.delta_us)));
    }
    Ok(out)
}

/// The simulator's set, ordered by (delta, numeric id) as the source orders it.
fn expected(h: &SimHandle, e: Entity, since: Option<Micros>) -> Vec<(String, Micros)> {
    let mut v: Vec<(u64, i64)> = h
        .sim()
        .versions(e)
        .into_iter()
        .filter(|(_, t)| since.is_none_or(|s| *t >= s))
        .collect();
    v.sort_by_key(|(id, t)| (*t, *id));
    v.into_iter().map(|(id, t)| (id.to_string(), t)).collect()
}

fn styles() -> Vec<(&'static str, Pagination)> {
    vec![
        (
            "offset",
            Pagination::Offset {
                offset_param: "offset".into(),
                limit_param: "per_page".into(),
            },
        ),
        (
            "page",
            Pagination::Page {
                page_param: "page".into(),
                limit_param: "per_page".into(),
                first_page: 1,
            },
        ),
        (
            "links_next",
            Pagination::LinksNext {
                limit_param: "per_page".into(),
                next_pointer: "/links/next".into(),
            },
        ),
        (
            "link_header",
            Pagination::LinkHeader {
                limit_param: "per_page".into(),
            },
        ),
        (
            "cursor",
            Pagination::Cursor {
                limit_param: "per_page".into(),
                cursor_param: "cursor".into(),
                next_cursor_pointer: "/meta/next_cursor".into(),
            },
        ),
    ]
}

fn filters() -> Vec<Filter> {
    vec![
        Filter::Bracket {
            ops: vec![FilterOp::Gt, FilterOp::Gte],
        },
        Filter::Bracket {
            ops: vec![FilterOp::Gt],
        },
        Filter::Suffix {
            ops: vec![FilterOp::Gte],
        },
        Filter::Named {
            param: "updated_since".into(),
            op: FilterOp::Gte,
        },
    ]
}

#[tokio::test]
async fn every_pagination_and_filter_style_reads_exactly_the_changed_records() {
    let h = sim::start(SimConfig {
        people: 437,
        step_us: 1_000_000,
        ..Default::default()
    })
    .await;
    let all = expected(&h, Entity::People, None);
    let since = all[180].1;
    for (name, pagination) in styles() {
        for filter in filters() {
            let c = client(&h, |c| {
                c.source.pagination = pagination.clone();
                c.source.filter = filter.clone();
                c.entities[0].page_size = 50;
            });
            let got = list_all(&c, "people", None).await.unwrap();
            assert_eq!(got, all, "{name} {filter:?}: backfill");
            let got = list_all(&c, "people", Some(since)).await.unwrap();
            assert_eq!(
                got,
                expected(&h, Entity::People, Some(since)),
                "{name} {filter:?}: since"
            );
        }
    }
}

#[tokio::test]
async fn epoch_millis_bare_arrays_and_link_headers() {
    let h = sim::start(SimConfig {
        people: 130,
        envelope: Envelope::Bare,
        timestamp_format: source_sim::TimestampFormat::EpochMillis,
        granularity: Granularity::Millis,
        step_us: 1_500,
        ..Default::default()
    })
    .await;
    let c = client(&h, |c| {
        c.source.records_pointer = String::new();
        c.source.total_count_pointer = None;
        c.source.timestamp_format = TimestampFormat::EpochMillis;
        c.source.pagination = Pagination::LinkHeader {
            limit_param: "per_page".into(),
        };
        c.entities[0].delta_pointer = "/updated_at".into();
        c.entities[0].page_size = 40;
    });
    let all = expected(&h, Entity::People, None);
    assert_eq!(list_all(&c, "people", None).await.unwrap(), all);
    let since = all[77].1;
    assert_eq!(
        list_all(&c, "people", Some(since)).await.unwrap(),
        expected(&h, Entity::People, Some(since))
    );
    let one = c.get_by_id("people", "5").await.unwrap().unwrap();
    assert_eq!(one.id, "5");
}

/// Read a 300-record listing in pages of 50; after the second page, move three records of the
/// pages already read to the end and delete one. Returns how often each ID was read.
async fn read_while_records_move(naive: bool) -> (Vec<(String, Micros)>, BTreeMap<String, u32>) {
    let h = sim::start(SimConfig {
        people: 300,
        ..Default::default()
    })
    .await;
    let mut c = client(&h, |c| c.entities[0].page_size = 50);
    if naive {
        c = c.with_naive_offset_paging();
    }
    let before = expected(&h, Entity::People, None);
    let mut seen = BTreeMap::new();
    let mut pages = 0;
    let mut s = c.list_changed_since("people", None);
    while let Some(p) = s.next().await {
        for r in p.unwrap().records {
            *seen.entry(r.id).or_insert(0) += 1;
        }
        pages += 1;
        if pages == 2 {
            for id in [3, 17, 42] {
                h.sim().update(Entity::People, id, None);
            }
            h.sim().delete(Entity::People, 60);
        }
    }
    (before, seen)
}

#[tokio::test]
async fn keyset_paging_loses_nothing_when_records_move_mid_scan() {
    let (before, seen) = read_while_records_move(false).await;
    for (id, _) in before.iter().filter(|(id, _)| id != "60") {
        assert!(seen.contains_key(id), "record {id} was skipped");
    }
    for id in ["3", "17", "42"] {
        assert_eq!(
            seen[id], 2,
            "an updated record is read again at its new place"
        );
    }
}

#[tokio::test]
async fn negative_control_a_growing_offset_skips_untouched_records() {
    let (before, seen) = read_while_records_move(true).await;
    let skipped: Vec<&String> = before
        .iter()
        .map(|(id, _)| id)
        .filter(|id| *id != "60" && !seen.contains_key(*id))
        .collect();
    assert_eq!(
        skipped.len(),
        4,
        "three moved and one deleted record shift four untouched ones past the offset: {skipped:?}"
    );
}

#[tokio::test]
async fn a_tie_larger_than_a_page_is_read_once_without_looping() {
    let h = sim::start(SimConfig {
        people: 20,
        ..Default::default()
    })
    .await;
    let t = h.sim().now_us() / 1_000_000 * 1_000_000;
    h.sim().create_many(Entity::People, 250, Some(t));
    h.sim().create(Entity::People, Some(t + 1_000_000));
    for (name, pagination) in styles() {
        for filter in [
            Filter::Bracket {
                ops: vec![FilterOp::Gt, FilterOp::Gte],
            },
            Filter::Named {
                param: "updated_since".into(),
                op: FilterOp::Gte,
            },
        ] {
            let c = client(&h, |c| {
                c.source.pagination = pagination.clone();
                c.source.filter = filter.clone();
                c.source.timestamp_resolution_us = Some(1_000_000);
            });
            let got = list_all(&c, "people", None).await.unwrap();
            assert_eq!(got, expected(&h, Entity::People, None), "{name} {filter:?}");
            let got = list_all(&c, "people", Some(t)).await.unwrap();
            assert_eq!(
                got.len(),
                251,
                "{name} {filter:?}: the whole tie and the record after it"
            );
        }
    }
}

#[tokio::test]
async fn a_record_leaving_a_large_tie_mid_read_does_not_hide_another() {
    let h = sim::start(SimConfig {
        people: 0,
        ..Default::default()
    })
    .await;
    let t = h.sim().now_us() / 1_000_000 * 1_000_000 - 60_000_000;
    let created = h.sim().create_many(Entity::People, 250, Some(t));
    let c = client(&h, |c| c.entities[0].page_size = 100);
    let mut ids = std::collections::BTreeSet::new();
    let mut s = c.list_changed_since("people", None);
    let mut pages = 0;
    while let Some(p) = s.next().await {
        ids.extend(p.unwrap().records.into_iter().map(|r| r.id));
        pages += 1;
        if pages == 2 {
            // The first record of the tie leaves it: every later position shifts back one.
            h.sim().update(Entity::People, created[0].id, None);
        }
    }
    for r in &created {
        assert!(ids.contains(&r.id.to_string()), "record {} skipped", r.id);
    }
}

#[tokio::test]
async fn stream_ids_asks_for_ids_only_and_holds_one_page() {
    let h = sim::start(SimConfig {
        people: 1_050,
        ..Default::default()
    })
    .await;
    let c = client(&h, |_| {});
    let mut s = c.stream_ids("people");
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.ids.len(), 100, "largest page size");
    assert_eq!(first.total_count, Some(1_050));
    assert_eq!(
        h.sim().stats().list_requests,
        1,
        "lazy: one request per page consumed"
    );
    let mut n = first.ids.len();
    while let Some(p) = s.next().await {
        n += p.unwrap().ids.len();
    }
    assert_eq!(n, 1_050);
    assert_eq!(h.sim().stats().list_requests, 11, "⌈1050/100⌉ calls");
    let bytes_per_id = c.stats().bytes / 1_050;
    assert!(
        bytes_per_id < 300,
        "sparse fieldset: {bytes_per_id} bytes per ID"
    );
}

#[tokio::test]
async fn delta_listing_costs_at_most_the_optimal_calls_plus_overlap() {
    let h = sim::start(SimConfig {
        people: 2_000,
        ..Default::default()
    })
    .await;
    let c = client(&h, |_| {});
    assert_eq!(list_all(&c, "people", None).await.unwrap().len(), 2_000);
    let calls = h.sim().stats().list_requests;
    // Keyset re-reads one boundary record per page: 2000 / 99 pages, +1 for the last.
    assert!(calls <= 2_000u64.div_ceil(99) + 1, "{calls} calls");
}

#[tokio::test]
async fn retries_each_transient_failure_then_succeeds() {
    let h = sim::start(SimConfig {
        people: 10,
        ..Default::default()
    })
    .await;
    let c = client(&h, |c| c.source.timeout_ms = 300);
    h.sim().push_faults([
        Fault::Status(503),
        Fault::Html(502),
        Fault::Truncate,
        Fault::Delay(Duration::from_millis(900)),
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    ]);
    let r = c.get_by_id("people", "3").await.unwrap().unwrap();
    assert_eq!(r.id, "3");
    let st = c.stats();
    assert_eq!(
        (st.requests, st.retries, st.rate_limited),
        (6, 5, 1),
        "{st:?}"
    );
    assert_eq!(h.sim().pending_faults(), 0);
}

#[tokio::test]
async fn failures_surface_as_typed_errors_after_the_attempts() {
    let h = sim::start(SimConfig {
        people: 10,
        ..Default::default()
    })
    .await;
    let c = client(&h, |c| c.source.max_attempts = 3);
    h.sim()
        .push_faults([Fault::Status(500), Fault::Status(500), Fault::Status(500)]);
    assert!(matches!(
        c.get_by_id("people", "1").await,
        Err(SourceError::Server {
            status: 500,
            attempts: 3,
            ..
        })
    ));
    h.sim()
        .push_faults([Fault::Html(502), Fault::Html(502), Fault::Html(502)]);
    let e = c.get_by_id("people", "1").await.unwrap_err();
    assert!(
        matches!(e, SourceError::NotJson { status: 502, .. }),
        "{e:?}"
    );
    h.sim()
        .push_faults([Fault::Truncate, Fault::Truncate, Fault::Truncate]);
    assert!(matches!(
        c.get_by_id("people", "1").await,
        Err(SourceError::Decode {
            source: shared::error::ParseError::Json(_),
            ..
        })
    ));
    h.sim().push_faults([Fault::RateLimited {
        retry_after_secs: 600,
    }]);
    let e = c.get_by_id("people", "1").await.unwrap_err();
    assert!(
        matches!(e, SourceError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(600)),
        "{e:?}"
    );
    // A listing fails the same way: its error reaches the stream's consumer.
    h.sim()
        .push_faults([Fault::Status(500), Fault::Status(500), Fault::Status(500)]);
    assert!(list_all(&c, "people", None).await.is_err());
}

#[tokio::test]
async fn json_404_is_gone_html_404_is_an_error() {
    let h = sim::start(SimConfig {
        people: 10,
        ..Default::default()
    })
    .await;
    let c = client(&h, |_| {});
    assert!(c.get_by_id("people", "999").await.unwrap().is_none());
    // A wrong base path answers the web server's HTML 404: never a deletion.
    let wrong = client(&h, |c| c.entities[0].path = "/people/v9/people".into());
    let e = wrong.get_by_id("people", "3").await.unwrap_err();
    assert!(
        matches!(e, SourceError::Client { status: 404, .. }),
        "{e:?}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn ids_that_would_change_the_path_are_encoded_or_rejected() {
    let h = sim::start(SimConfig {
        people: 10,
        ..Default::default()
    })
    .await;
    let c = client(&h, |_| {});
    // Encoded: the source sees one (unknown) ID segment, answers its JSON 404.
    assert!(c.get_by_id("people", "3/../4").await.unwrap().is_none());
    assert!(c.get_by_id("people", "3?x=1").await.unwrap().is_none());
    assert!(matches!(
        c.get_by_id("people", "..").await,
        Err(SourceError::BadId { .. })
    ));
    assert!(matches!(
        c.get_by_id("people", "").await,
        Err(SourceError::BadId { .. })
    ));
}

#[tokio::test]
async fn auth_header_is_sent_and_a_wrong_secret_is_a_client_error() {
    let h = sim::start(SimConfig {
        people: 10,
        auth: Some("Bearer s3cret".into()),
        ..Default::default()
    })
    .await;
    let bearer = |c: &mut Config| {
        c.source.auth = AuthConfig::Bearer {
            secret: SecretRef {
                env: "UNUSED".into(),
            },
        }
    };
    let cfg = config::quick(&h.base_url(), bearer);
    let good = SourceClient::new(&cfg, Some(Secret::new("s3cret"))).unwrap();
    assert!(good.get_by_id("people", "1").await.unwrap().is_some());
    let bad = SourceClient::new(&cfg, Some(Secret::new("nope"))).unwrap();
    assert!(matches!(
        bad.get_by_id("people", "1").await,
        Err(SourceError::Unauthorized { reread: false, .. })
    ));
    assert!(!format!("{good:?}").contains("s3cret"));
}

#[tokio::test]
async fn the_client_rate_limit_keeps_the_source_free_of_429s() {
    let h = sim::start(SimConfig {
        people: 10,
        rate_limit: Some(source_sim::RateLimit {
            requests: 5,
            period: Duration::from_millis(500),
        }),
        ..Default::default()
    })
    .await;
    let c = client(&h, |c| {
        c.source.rate_limit = RateLimit {
            requests: 5,
            per_seconds: 0.5,
        }
    });
    for i in 0..16 {
        c.get_by_id("people", &(1 + i % 10).to_string())
            .await
            .unwrap();
    }
    assert_eq!(h.sim().stats().rate_limited, 0);
    assert_eq!(c.stats().rate_limited, 0);
}

/// List 1,000 IDs in pages of 100; after the third page, delete `deletions` records the listing
/// already passed. Returns the IDs read (with repeats) and the live IDs at the end.
async fn ids_while_earlier_records_go(
    id_filter: bool,
    naive: bool,
    deletions: u64,
) -> (Result<Vec<String>, SourceError>, Vec<String>) {
    let h = sim::start(SimConfig {
        people: 1_000,
        ..Default::default()
    })
    .await;
    let mut c = client(&h, |c| c.entities[0].id_filter = id_filter);
    if naive {
        c = c.with_naive_offset_paging();
    }
    let mut read = Vec::new();
    let mut pages = 0;
    let mut s = c.stream_ids("people");
    let result = loop {
        match s.next().await {
            None => break Ok(read),
            Some(Err(e)) => break Err(e),
            Some(Ok(p)) => {
                read.extend(p.ids.into_iter().map(|x| x.id));
                pages += 1;
                if pages == 3 {
                    for id in 1..=deletions {
                        h.sim().delete(Entity::People, id * 2);
                    }
                }
            }
        }
    };
    let live = h
        .sim()
        .versions(Entity::People)
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    (result, live)
}

fn missing(read: &[String], live: &[String]) -> Vec<String> {
    let seen: std::collections::HashSet<&String> = read.iter().collect();
    live.iter()
        .filter(|id| !seen.contains(id))
        .cloned()
        .collect()
}

#[tokio::test]
async fn stream_ids_skips_no_live_record_when_earlier_ones_are_deleted_mid_scan() {
    for id_filter in [false, true] {
        let (read, live) = ids_while_earlier_records_go(id_filter, false, 20).await;
        let read = read.expect("the listing completes");
        assert!(
            missing(&read, &live).is_empty(),
            "id_filter={id_filter}: {:?}",
            missing(&read, &live)
        );
        let unique: std::collections::HashSet<&String> = read.iter().collect();
        assert_eq!(unique.len(), read.len(), "no ID is yielded twice");
    }
}

#[tokio::test]
async fn negative_control_a_growing_offset_id_listing_skips_live_records() {
    let (read, live) = ids_while_earlier_records_go(false, true, 20).await;
    assert_eq!(
        missing(&read.unwrap(), &live).len(),
        20,
        "twenty deletions behind the offset shift twenty live records past it"
    );
}

#[tokio::test]
async fn a_shift_larger_than_a_page_fails_the_listing_instead_of_skipping() {
    let (read, _) = ids_while_earlier_records_go(false, false, 150).await;
    assert!(
        matches!(
            read,
            Err(SourceError::Walk {
                source: shared::error::WalkError::Shifted,
                ..
            })
        ),
        "{read:?}"
    );
}

#[tokio::test]
async fn an_id_listing_resumes_from_a_token_in_every_style() {
    for (style, pagination) in styles() {
        for id_filter in [false, true] {
            let h = sim::start(SimConfig {
                people: 450,
                ..Default::default()
            })
            .await;
            let c = client(&h, |c| {
                c.source.pagination = pagination.clone();
                c.entities[0].id_filter = id_filter;
            });
            let mut s = c.stream_ids("people");
            let mut read: Vec<String> = Vec::new();
            let mut token = None;
            for _ in 0..2 {
                let p = s.next().await.unwrap().unwrap();
                read.extend(p.ids.into_iter().map(|x| x.id));
                token = p.resume;
            }
            drop(s);
            let token = token.unwrap_or_else(|| panic!("{style}: a resume token"));
            let mut rest = c.stream_ids_from("people", Some(&token));
            while let Some(p) = rest.next().await {
                read.extend(p.unwrap().ids.into_iter().map(|x| x.id));
            }
            let mut sorted = read.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), read.len(), "{style}/{id_filter}: no repeats");
            assert_eq!(read.len(), 450, "{style}/{id_filter}: every ID");
        }
    }
}

#[tokio::test]
async fn an_id_listing_costs_at_most_1_02_times_the_optimal_calls_plus_one() {
    for id_filter in [false, true] {
        let h = sim::start(SimConfig {
            people: 10_000,
            ..Default::default()
        })
        .await;
        let c = client(&h, |c| c.entities[0].id_filter = id_filter);
        let mut s = c.stream_ids("people");
        let mut n = 0;
        while let Some(p) = s.next().await {
            n += p.unwrap().ids.len();
        }
        assert_eq!(n, 10_000);
        let calls = h.sim().stats().list_requests as f64;
        assert!(
            calls <= 1.02 * 100.0 + 1.0,
            "id_filter={id_filter}: {calls} calls"
        );
    }
}
