//! The misbehaviour flags: each one makes the simulator disobey exactly one parameter, and the
//! same request with the flag off is obeyed (the control in every test).

use reqwest::Method;
use serde_json::{Value, json};
use source_sim::{Entity, Misbehave, SimHandle};

use crate::common::{Resp, SEC, base_ts, client, ids, list, people, send};

const N: u64 = 30;

/// 30 people; records 1..=3 moved to the end of the `updated_at` order, so that ID order and
/// delta order differ.
async fn sim() -> SimHandle {
    let sim = people(N as usize).await;
    for id in 1..=3 {
        sim.update(Entity::People, id, Some(base_ts(N) + id as i64 * SEC));
    }
    sim
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

fn set(sim: &SimHandle, m: Misbehave) {
    sim.set_misbehave(m);
}

async fn admin(method: Method, url: String, body: Option<Value>) -> Resp {
    let mut req = client().request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    send(req).await
}

/// The value of `key` in the query of `url`.
fn query_value(url: &str, key: &str) -> Option<String> {
    let parsed = url::Url::parse(url).expect("absolute URL");
    parsed
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn flags_are_off_by_default_and_set_over_http() {
    let sim = sim().await;
    assert_eq!(sim.misbehave(), Misbehave::default());
    let url = format!("{}/__admin/misbehave", sim.base_url());
    let all_off = json!({
        "ignore_filter": false, "ignore_id_filter": false, "ignore_order": false,
        "ignore_offset": false, "ignore_page": false, "ignore_cursor": false,
        "clamp_last_page": false, "ignore_per_page": false, "reverse_order": false,
    });
    let r = admin(Method::GET, url.clone(), None).await;
    assert_eq!((r.status, r.json()), (200, all_off.clone()));

    let r = admin(
        Method::PUT,
        url.clone(),
        Some(json!({"ignore_order": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut want = all_off.clone();
    want["ignore_order"] = json!(true);
    assert_eq!(r.json(), want);
    // A subset leaves the other flags as they are.
    let r = admin(
        Method::PUT,
        url.clone(),
        Some(json!({"clamp_last_page": true, "ignore_per_page": true})),
    )
    .await;
    want["clamp_last_page"] = json!(true);
    want["ignore_per_page"] = json!(true);
    assert_eq!(r.json(), want);
    assert_eq!(
        sim.misbehave(),
        Misbehave {
            ignore_order: true,
            clamp_last_page: true,
            ignore_per_page: true,
            ..Misbehave::default()
        }
    );
    // The flag acts on the API at once.
    let page = list(&sim, Entity::People, &[("order", "updated_at")])
        .await
        .json();
    assert_eq!(ids(&page), range(1, 25));

    let r = admin(
        Method::PUT,
        url.clone(),
        Some(json!({"ignore_orders": true})),
    )
    .await;
    assert_eq!(r.status, 400, "unknown field: {}", r.body);
    let r = admin(Method::PUT, url.clone(), Some(json!({"ignore_order": 1}))).await;
    assert_eq!(r.status, 400, "not a bool: {}", r.body);
    assert!(
        sim.misbehave().ignore_order,
        "a rejected body changes nothing"
    );

    sim.set_misbehave(Misbehave::default());
    let r = admin(Method::GET, url, None).await;
    assert_eq!(r.json(), all_off);
}

#[tokio::test]
async fn ignore_filter_drops_every_delta_filter_style_and_keeps_the_id_filter() {
    let sim = sim().await;
    let t = sim.format_timestamp(base_ts(20));
    let styles = [
        (
            "where[updated_at][gt]",
            range(1, 3).into_iter().chain(21..=N).collect::<Vec<_>>(),
        ),
        (
            "where[updated_at][gte]",
            range(1, 3).into_iter().chain(20..=N).collect(),
        ),
        (
            "updated_at_gt",
            range(1, 3).into_iter().chain(21..=N).collect(),
        ),
        (
            "updated_at_gte",
            range(1, 3).into_iter().chain(20..=N).collect(),
        ),
        (
            "updated_since",
            range(1, 3).into_iter().chain(20..=N).collect(),
        ),
        ("where[updated_at][lt]", range(4, 19)),
        ("updated_at_lte", range(4, 20)),
        ("where[updated_at]", vec![20]),
    ];
    for (param, filtered) in &styles {
        let q = [(*param, t.as_str()), ("per_page", "100")];
        set(&sim, Misbehave::default());
        let page = list(&sim, Entity::People, &q).await.json();
        assert_eq!(&ids(&page), filtered, "control: {param} is obeyed");
        set(
            &sim,
            Misbehave {
                ignore_filter: true,
                ..Misbehave::default()
            },
        );
        let page = list(&sim, Entity::People, &q).await.json();
        assert_eq!(ids(&page), range(1, N), "{param} is ignored");
        assert_eq!(page["meta"]["total_count"], N);
    }
    // Ignored means unknown: not validated either.
    let r = list(&sim, Entity::People, &[("where[updated_at][gt]", "soon")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The ID filter still applies.
    let page = list(
        &sim,
        Entity::People,
        &[("where[id][gt]", "25"), ("where[updated_at][gt]", &t)],
    )
    .await
    .json();
    assert_eq!(ids(&page), range(26, N));
    set(&sim, Misbehave::default());
    let r = list(&sim, Entity::People, &[("where[updated_at][gt]", "soon")]).await;
    assert_eq!(r.status, 400, "control: a bad value is refused");
}

#[tokio::test]
async fn ignore_id_filter_drops_id_filters_and_keeps_the_delta_filter() {
    let sim = sim().await;
    let t = sim.format_timestamp(base_ts(20));
    for (param, value, filtered) in [
        ("where[id][gt]", "25", range(26, N)),
        ("where[id][lte]", "5", range(1, 5)),
        ("where[id]", "7", vec![7]),
        ("id_gte", "28", range(28, N)),
    ] {
        let q = [(param, value), ("per_page", "100")];
        set(&sim, Misbehave::default());
        let page = list(&sim, Entity::People, &q).await.json();
        assert_eq!(ids(&page), filtered, "control: {param} is obeyed");
        set(
            &sim,
            Misbehave {
                ignore_id_filter: true,
                ..Misbehave::default()
            },
        );
        let page = list(&sim, Entity::People, &q).await.json();
        assert_eq!(ids(&page), range(1, N), "{param} is ignored");
    }
    let page = list(
        &sim,
        Entity::People,
        &[("where[id][gt]", "25"), ("where[updated_at][gte]", &t)],
    )
    .await
    .json();
    let want: Vec<u64> = range(1, 3).into_iter().chain(20..=N).collect();
    assert_eq!(ids(&page), want, "the delta filter still applies");
}

#[tokio::test]
async fn ignore_order_serves_ascending_ids_and_its_cursors_walk_id_order() {
    let sim = sim().await;
    let q = [("order", "updated_at"), ("per_page", "100")];
    let page = list(&sim, Entity::People, &q).await.json();
    let by_time: Vec<u64> = range(4, N).into_iter().chain(1..=3).collect();
    assert_eq!(ids(&page), by_time, "control: order=updated_at is obeyed");
    let r = list(&sim, Entity::People, &[("order", "name")]).await;
    assert_eq!(r.status, 400, "control: an unknown order is refused");

    set(
        &sim,
        Misbehave {
            ignore_order: true,
            ..Misbehave::default()
        },
    );
    for order in ["updated_at", "-updated_at", "-id", "name"] {
        let r = list(
            &sim,
            Entity::People,
            &[("order", order), ("per_page", "100")],
        )
        .await;
        assert_eq!(r.status, 200, "order={order}: {}", r.body);
        assert_eq!(ids(&r.json()), range(1, N), "order={order} is ignored");
    }
    // A cursor walk asking for updated_at order gets ID order, page after page, once each.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("order", "updated_at"), ("per_page", "7")];
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let r = list(&sim, Entity::People, &q).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        seen.extend(ids(&page));
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, range(1, N));
}

#[tokio::test]
async fn ignore_offset_serves_the_first_page_with_links_from_the_asked_offset() {
    let sim = sim().await;
    let q = [("offset", "10"), ("per_page", "5")];
    let page = list(&sim, Entity::People, &q).await.json();
    assert_eq!(ids(&page), range(11, 15), "control: the offset is obeyed");

    set(
        &sim,
        Misbehave {
            ignore_offset: true,
            ..Misbehave::default()
        },
    );
    let r = list(&sim, Entity::People, &q).await;
    let page = r.json();
    assert_eq!(ids(&page), range(1, 5), "every page starts at 0");
    assert_eq!(page["meta"]["next"]["offset"], 15);
    let next = page["links"]["next"].as_str().expect("a next link");
    assert_eq!(query_value(next, "offset").as_deref(), Some("15"));
    assert!(r.header("link").unwrap().contains("offset=15"));
    // Near the end: the first page again, and no next page (as for offset 27).
    let r = list(&sim, Entity::People, &[("offset", "27"), ("per_page", "5")]).await;
    let page = r.json();
    assert_eq!(ids(&page), range(1, 5));
    assert!(page["links"].get("next").is_none(), "{page}");
    assert!(page["meta"].get("next").is_none());
    assert!(r.header("link").is_none());
    // Page numbers are not affected.
    let page = list(&sim, Entity::People, &[("page", "3"), ("per_page", "5")])
        .await
        .json();
    assert_eq!(ids(&page), range(11, 15));
}

#[tokio::test]
async fn ignore_page_serves_page_one_with_links_from_the_asked_page() {
    let sim = sim().await;
    let q = [("page", "3"), ("per_page", "5")];
    let page = list(&sim, Entity::People, &q).await.json();
    assert_eq!(ids(&page), range(11, 15), "control: the page is obeyed");

    set(
        &sim,
        Misbehave {
            ignore_page: true,
            ..Misbehave::default()
        },
    );
    let page = list(&sim, Entity::People, &q).await.json();
    assert_eq!(ids(&page), range(1, 5), "page 1 every time");
    let next = page["links"]["next"].as_str().expect("a next link");
    assert_eq!(query_value(next, "page").as_deref(), Some("4"));
    let page = list(&sim, Entity::People, &[("page", "6"), ("per_page", "5")])
        .await
        .json();
    assert_eq!(ids(&page), range(1, 5));
    assert!(page["links"].get("next").is_none(), "page 6 of 6: {page}");
    // Offsets are not affected.
    let page = list(&sim, Entity::People, &[("offset", "10"), ("per_page", "5")])
        .await
        .json();
    assert_eq!(ids(&page), range(11, 15));
}

#[tokio::test]
async fn ignore_cursor_serves_the_first_page_and_the_same_next_cursor() {
    let sim = sim().await;
    let first = list(
        &sim,
        Entity::People,
        &[("order", "updated_at"), ("per_page", "5")],
    )
    .await
    .json();
    let c1 = first["meta"]["next_cursor"].as_str().unwrap().to_owned();
    let q = [("order", "updated_at"), ("per_page", "5"), ("cursor", &c1)];
    let page = list(&sim, Entity::People, &q).await.json();
    assert_eq!(ids(&page), range(9, 13), "control: the cursor is obeyed");

    set(
        &sim,
        Misbehave {
            ignore_cursor: true,
            ..Misbehave::default()
        },
    );
    let r = list(&sim, Entity::People, &q).await;
    let page = r.json();
    assert_eq!(ids(&page), ids(&first), "the first page again");
    assert_eq!(page["meta"]["next_cursor"].as_str(), Some(c1.as_str()));
    let next = page["links"]["next"].as_str().unwrap();
    assert_eq!(query_value(next, "cursor").as_deref(), Some(c1.as_str()));
    // Not validated either.
    let r = list(&sim, Entity::People, &[("cursor", "zz")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.json()), range(1, 25));
    set(&sim, Misbehave::default());
    let r = list(&sim, Entity::People, &[("cursor", "zz")]).await;
    assert_eq!(r.status, 400, "control: a bad cursor is refused");
}

#[tokio::test]
async fn clamp_last_page_serves_the_last_page_past_the_end() {
    let sim = sim().await;
    for q in [
        [("offset", "30"), ("per_page", "7")],
        [("offset", "500"), ("per_page", "7")],
        [("page", "6"), ("per_page", "7")],
    ] {
        set(&sim, Misbehave::default());
        let page = list(&sim, Entity::People, &q).await.json();
        assert_eq!(ids(&page), Vec::<u64>::new(), "control: {q:?} is empty");
        set(
            &sim,
            Misbehave {
                clamp_last_page: true,
                ..Misbehave::default()
            },
        );
        let r = list(&sim, Entity::People, &q).await;
        let page = r.json();
        assert_eq!(ids(&page), [29, 30], "{q:?}: the last page (offset 28)");
        assert!(page["links"].get("next").is_none(), "{page}");
        assert!(page["meta"].get("next").is_none());
        assert!(r.header("link").is_none());
    }
    // Within range nothing changes.
    let page = list(&sim, Entity::People, &[("offset", "21"), ("per_page", "7")])
        .await
        .json();
    assert_eq!(ids(&page), range(22, 28));
    // With a filter: the last page of the filtered set; nothing matches: still empty.
    let t = sim.format_timestamp(base_ts(20));
    let page = list(
        &sim,
        Entity::People,
        &[
            ("where[updated_at][gt]", &t),
            ("order", "updated_at"),
            ("offset", "99"),
            ("per_page", "5"),
        ],
    )
    .await
    .json();
    assert_eq!(
        ids(&page),
        [1, 2, 3],
        "21..=30, 1..=3: the last page starts at 10"
    );
    let late = sim.format_timestamp(base_ts(N) + 100 * SEC);
    let page = list(
        &sim,
        Entity::People,
        &[("where[updated_at][gt]", &late), ("offset", "5")],
    )
    .await
    .json();
    assert_eq!(ids(&page), Vec::<u64>::new());
}

#[tokio::test]
async fn ignore_per_page_serves_the_default_size() {
    let sim = sim().await;
    let page = list(&sim, Entity::People, &[("per_page", "7")])
        .await
        .json();
    assert_eq!(ids(&page), range(1, 7), "control: per_page is obeyed");

    set(
        &sim,
        Misbehave {
            ignore_per_page: true,
            ..Misbehave::default()
        },
    );
    let page = list(&sim, Entity::People, &[("per_page", "7")])
        .await
        .json();
    assert_eq!(ids(&page), range(1, 25), "default_per_page");
    assert_eq!(page["meta"]["next"]["offset"], 25);
    let next = page["links"]["next"].as_str().unwrap();
    assert_eq!(query_value(next, "offset").as_deref(), Some("25"));
    let page = list(&sim, Entity::People, &[("per_page", "7"), ("page", "2")])
        .await
        .json();
    assert_eq!(ids(&page), range(26, N), "page 2 of 25 per page");
    let r = list(&sim, Entity::People, &[("per_page", "0")]).await;
    assert_eq!(r.status, 200, "not validated: {}", r.body);
}

#[tokio::test]
async fn reverse_order_serves_the_opposite_order_and_keeps_the_filter() {
    let sim = sim().await;
    let asked = [("order", "id"), ("where[id][gt]", "20")];
    let page = list(&sim, Entity::People, &asked).await.json();
    assert_eq!(ids(&page), range(21, N), "the control: obeyed");
    set(
        &sim,
        Misbehave {
            reverse_order: true,
            ..Misbehave::default()
        },
    );
    let page = list(&sim, Entity::People, &asked).await.json();
    let mut want = range(21, N);
    want.reverse();
    assert_eq!(ids(&page), want);
}
