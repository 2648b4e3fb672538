//! Pagination: every style walks the whole set exactly once on a quiet source; offsets shift
//! under mutations (and lose a record) while cursors do not.

use std::collections::BTreeSet;

use serde_json::Value;
use source_sim::{Entity, Envelope, SimConfig, SimHandle};

use crate::common::{Resp, get, ids, list, people, start};

const N: u64 = 237;

async fn tied(n: usize) -> SimHandle {
    // Groups of 10 share a timestamp, so ties straddle every page boundary of 25.
    start(SimConfig {
        people: n,
        tie_group: 10,
        ..SimConfig::default()
    })
    .await
}

/// Parses `<url>; rel="next"`.
fn link_next(r: &Resp) -> Option<String> {
    let h = r.header("link")?;
    h.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

fn all_ids() -> Vec<u64> {
    (1..=N).collect()
}

#[tokio::test]
async fn offset_and_page_number_walks() {
    let sim = tied(N as usize).await;
    for order in ["id", "updated_at"] {
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let off = offset.to_string();
            let page = list(&sim, Entity::People, &[("order", order), ("offset", &off)])
                .await
                .json();
            let got = ids(&page);
            assert_eq!(page["meta"]["total_count"], N);
            assert_eq!(page["meta"]["count"], got.len());
            offset += got.len();
            seen.extend(got);
            match page["meta"]["next"]["offset"].as_u64() {
                Some(next) => assert_eq!(next as usize, offset),
                None => break,
            }
        }
        assert_eq!(seen, all_ids(), "offset walk, order={order}");

        let mut seen = Vec::new();
        for p in 1.. {
            let pn = p.to_string();
            let page = list(
                &sim,
                Entity::People,
                &[("order", order), ("page", &pn), ("per_page", "20")],
            )
            .await
            .json();
            let got = ids(&page);
            if got.is_empty() {
                break;
            }
            seen.extend(got);
        }
        assert_eq!(seen, all_ids(), "page walk, order={order}");
    }
}

#[tokio::test]
async fn links_next_and_link_header_walks() {
    let sim = tied(N as usize).await;
    for order in ["id", "updated_at"] {
        let mut seen = Vec::new();
        let mut url = format!("{}?order={order}&per_page=30", sim.url(Entity::People));
        let mut pages = 0;
        loop {
            let r = get(&url).await;
            let page = r.json();
            seen.extend(ids(&page));
            pages += 1;
            let body_next = page["links"]["next"].as_str().map(str::to_owned);
            assert_eq!(
                body_next,
                link_next(&r),
                "links.next and the Link header agree"
            );
            assert_eq!(r.header("x-total-count"), Some("237"));
            match body_next {
                Some(n) => {
                    assert!(n.starts_with(&sim.url(Entity::People)), "full URL: {n}");
                    url = n;
                }
                None => break,
            }
        }
        assert_eq!(pages, 8);
        assert_eq!(seen, all_ids(), "links walk, order={order}");
    }
}

#[tokio::test]
async fn cursor_walks_in_both_directions() {
    let sim = tied(N as usize).await;
    for (order, want) in [
        ("id", all_ids()),
        ("updated_at", all_ids()),
        ("-id", all_ids().into_iter().rev().collect()),
        ("-updated_at", all_ids().into_iter().rev().collect()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("order", order), ("per_page", "25")];
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let r = list(&sim, Entity::People, &q).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let page = r.json();
            seen.extend(ids(&page));
            assert_eq!(page["meta"]["total_count"], N);
            if cursor.is_some() {
                assert!(
                    page["meta"].get("next").is_none(),
                    "no offset in cursor mode"
                );
            }
            match page["meta"]["next_cursor"].as_str() {
                Some(c) => {
                    let link = page["links"]["next"].as_str().unwrap();
                    if cursor.is_some() {
                        assert!(link.contains(&format!("cursor={c}")), "{link}");
                    }
                    cursor = Some(c.to_owned());
                }
                None => break,
            }
        }
        assert_eq!(seen, want, "cursor walk, order={order}");
    }
}

#[tokio::test]
async fn bare_envelope_pages_through_the_link_header_only() {
    let sim = start(SimConfig {
        people: 0,
        donations: 57,
        envelope: Envelope::Bare,
        ..SimConfig::default()
    })
    .await;
    let mut url = format!(
        "{}?per_page=10&order=updated_at",
        sim.url(Entity::Donations)
    );
    let mut seen = Vec::new();
    loop {
        let r = get(&url).await;
        let arr: Vec<Value> = serde_json::from_str(&r.body).expect("a bare array");
        for rec in &arr {
            assert!(rec.get("attributes").is_none());
            assert!(rec["updated_at"].is_string());
            seen.push(rec["id"].as_str().unwrap().parse::<u64>().unwrap());
        }
        match link_next(&r) {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(seen, (1..=57).collect::<Vec<_>>());
}

#[tokio::test]
async fn per_page_defaults_to_25_and_clamps_to_100() {
    let sim = tied(150).await;
    let page = list(&sim, Entity::People, &[]).await.json();
    assert_eq!(page["meta"]["count"], 25);
    assert_eq!(page["meta"]["next"]["offset"], 25);
    let page = list(&sim, Entity::People, &[("per_page", "1000")])
        .await
        .json();
    assert_eq!(page["meta"]["count"], 100);
    let page = list(
        &sim,
        Entity::People,
        &[("per_page", "100"), ("offset", "100")],
    )
    .await
    .json();
    assert_eq!(ids(&page), (101..=150).collect::<Vec<_>>());
    assert!(
        page["links"].get("next").is_none(),
        "no next on the last page"
    );
    assert!(page["meta"].get("next").is_none());
    assert!(page["meta"].get("next_cursor").is_none());
    let page = list(&sim, Entity::People, &[("offset", "1000")])
        .await
        .json();
    assert_eq!(page["data"], serde_json::json!([]));
    assert_eq!(page["meta"]["total_count"], 150);
}

/// The classic loss: a client pages by a growing offset over `order=updated_at`; a record on an
/// earlier page is updated mid-scan, moves to the end, and every later record shifts up by one,
/// so one untouched record is never seen. Walking by cursor over the same scenario loses none.
#[tokio::test]
async fn naive_offset_client_loses_a_record_that_a_cursor_walk_keeps() {
    let total = 50;
    let per_page = "10";

    // Naive offset client.
    let sim = people(total).await;
    let mut seen = BTreeSet::new();
    let mut offset = 0;
    let mut first = true;
    loop {
        let off = offset.to_string();
        let page = list(
            &sim,
            Entity::People,
            &[
                ("order", "updated_at"),
                ("per_page", per_page),
                ("offset", &off),
            ],
        )
        .await
        .json();
        let got = ids(&page);
        if got.is_empty() {
            break;
        }
        offset += got.len();
        seen.extend(got);
        if first {
            // Record 5 (already read on page 1) is updated between page 1 and page 2.
            assert!(sim.update(Entity::People, 5, None).is_some());
            first = false;
        }
    }
    let missing: Vec<u64> = (1..=total as u64).filter(|id| !seen.contains(id)).collect();
    assert_eq!(
        missing,
        [11],
        "the record that slid back onto page 1 is skipped"
    );
    assert!(
        sim.get(Entity::People, 11).is_some(),
        "and it still exists at the source"
    );

    // Cursor client, same scenario.
    let sim = people(total).await;
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut first = true;
    loop {
        let mut q = vec![("order", "updated_at"), ("per_page", per_page)];
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let page = list(&sim, Entity::People, &q).await.json();
        seen.extend(ids(&page));
        if first {
            assert!(sim.update(Entity::People, 5, None).is_some());
            first = false;
        }
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (1..=total as u64).collect::<BTreeSet<_>>(),
        "cursor walk loses nothing"
    );
}
