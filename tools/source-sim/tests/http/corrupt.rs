//! Record corruption: the served JSON of one record is broken exactly as asked, in listings and
//! in `GET <path>/<id>`, while the record keeps its place; clearing restores the exact bytes.

use reqwest::Method;
use serde_json::{Value, json};
use source_sim::{Corruption, Entity, Envelope, SimConfig, TimestampFormat};

use crate::common::{Resp, base_ts, client, get, list, people, send, start};

async fn admin(method: Method, url: String, body: Option<Value>) -> Resp {
    let mut req = client().request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    send(req).await
}

/// The raw JSON of the data element at `index` of a listing, cut out of the body by brackets
/// (the corrupted bytes may not parse).
fn nth_record(body: &str, index: usize) -> &str {
    let start = body.find("\"data\":[").expect("a JSON:API page") + "\"data\":[".len();
    let bytes = body.as_bytes();
    let (mut depth, mut in_str, mut esc, mut begin, mut n) = (0, false, false, start, 0);
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => {
                if depth == 0 {
                    begin = i;
                }
                depth += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    if n == index {
                        return &body[begin..=i];
                    }
                    n += 1;
                }
            }
            _ => {}
        }
    }
    panic!("no record {index} in {body}");
}

/// An assertion on the served bytes of the corrupted record.
type Check = Box<dyn Fn(&str)>;

/// The attributes of one record as served (strict JSON).
fn parse(rec: &str) -> Value {
    serde_json::from_str(rec).unwrap_or_else(|e| panic!("{e}: {rec}"))
}

/// Lists people 3..=7 ordered by `updated_at` (record 5 is the third), and GETs record 5.
async fn served(sim: &source_sim::SimHandle) -> (String, String) {
    let lo = sim.format_timestamp(base_ts(3));
    let page = list(
        sim,
        Entity::People,
        &[
            ("where[updated_at][gte]", &lo),
            ("order", "updated_at"),
            ("per_page", "5"),
        ],
    )
    .await;
    assert_eq!(page.status, 200);
    let listed = nth_record(&page.body, 2).to_owned();
    let one = get(&format!("{}/5", sim.url(Entity::People))).await;
    assert_eq!(one.status, 200);
    let start = one.body.find("\"data\":").unwrap() + "\"data\":".len();
    let end = one.body.rfind(",\"included\"").unwrap();
    (listed, one.body[start..end].to_owned())
}

#[tokio::test]
async fn each_corruption_breaks_exactly_the_served_json_and_clears() {
    let sim = people(10).await;
    let (intact, intact_one) = served(&sim).await;
    assert_eq!(
        intact, intact_one,
        "a listing and GET serve the same record"
    );
    let real = parse(&intact);
    assert_eq!(real["id"], "5");
    let real_ts = real["attributes"]["updated_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(real_ts, "2024-01-01T00:00:04.000000Z");

    let cases: Vec<(Corruption, Check)> = vec![
        (
            Corruption::NullDelta,
            Box::new(|rec| {
                assert!(rec.contains("\"updated_at\":null"), "{rec}");
                assert_eq!(parse(rec)["id"], "5");
            }),
        ),
        (
            Corruption::MissingDelta,
            Box::new(|rec| {
                assert!(!rec.contains("\"updated_at\""), "{rec}");
                assert!(parse(rec)["attributes"]["created_at"].is_string());
            }),
        ),
        (
            Corruption::BadDelta,
            Box::new(|rec| {
                assert!(rec.contains("\"updated_at\":\"not a date\""), "{rec}");
            }),
        ),
        (
            Corruption::NaiveTimestamp,
            Box::new(|rec| {
                assert!(
                    rec.contains("\"updated_at\":\"2024-01-01T00:00:04.000000\""),
                    "{rec}"
                );
                assert!(rec.contains("\"created_at\":\"2024-01-01T00:00:04.000000Z\""));
            }),
        ),
        (
            Corruption::EmptyId,
            Box::new(|rec| {
                assert!(
                    rec.starts_with("{\"type\":\"Person\",\"id\":\"\","),
                    "{rec}"
                );
            }),
        ),
        (
            Corruption::LongId(2_000),
            Box::new(|rec| {
                let id = parse(rec)["id"].as_str().unwrap().to_owned();
                assert_eq!(id.len(), 2_000);
                assert!(id.bytes().all(|b| b == b'9'));
            }),
        ),
        (
            Corruption::LoneSurrogate,
            Box::new(|rec| {
                assert!(rec.contains("\"first_name\":\""), "{rec}");
                let at = rec.find("\"first_name\":\"").unwrap();
                let value_end = rec[at + 14..].find('"').unwrap();
                let value = &rec[at + 14..at + 14 + value_end];
                assert!(value.ends_with("\\ud800"), "{value}");
                assert!(
                    serde_json::from_str::<Value>(rec).is_err(),
                    "strict JSON refuses it"
                );
            }),
        ),
    ];
    for (c, check) in cases {
        sim.corrupt(Entity::People, 5, Some(c));
        assert_eq!(sim.corruption(Entity::People, 5), Some(c));
        let (listed, one) = served(&sim).await;
        assert_ne!(listed, intact, "{c:?}");
        check(&listed);
        assert_eq!(listed, one, "{c:?}: GET serves the same broken record");
        // Only record 5 is broken, and it kept its place (third of 3..=7 by updated_at).
        let others: Vec<Value> = others(&sim).await;
        let ids: Vec<&Value> = others.iter().map(|r| &r["id"]).collect();
        assert_eq!(ids, ["3", "4", "6", "7"], "{c:?}");
        sim.corrupt(Entity::People, 5, None);
        assert_eq!(
            served(&sim).await,
            (intact.clone(), intact_one.clone()),
            "{c:?} cleared"
        );
    }
}

/// The other records of the listing of 3..=7 (strict JSON, so intact).
async fn others(sim: &source_sim::SimHandle) -> Vec<Value> {
    let lo = sim.format_timestamp(base_ts(3));
    let page = list(
        sim,
        Entity::People,
        &[
            ("where[updated_at][gte]", &lo),
            ("order", "updated_at"),
            ("per_page", "5"),
        ],
    )
    .await;
    [0, 1, 3, 4]
        .into_iter()
        .map(|i| parse(nth_record(&page.body, i)))
        .collect()
}

#[tokio::test]
async fn corruption_keeps_the_record_in_filters_by_its_stored_time() {
    // A naive or broken timestamp is served, but the record is still filtered by its real one.
    let sim = people(10).await;
    sim.corrupt(Entity::People, 9, Some(Corruption::BadDelta));
    sim.corrupt(Entity::People, 2, Some(Corruption::MissingDelta));
    let lo = sim.format_timestamp(base_ts(8));
    let page = list(&sim, Entity::People, &[("where[updated_at][gt]", &lo)]).await;
    assert_eq!(page.json()["meta"]["total_count"], 2);
    let ids: Vec<Value> = page.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!("9"), json!("10")]);
    let page = list(&sim, Entity::People, &[("where[id][lte]", "3")]).await;
    let body = page.json();
    assert!(body["data"][1]["attributes"].get("updated_at").is_none());
    assert!(body["data"][0]["attributes"]["updated_at"].is_string());
}

#[tokio::test]
async fn bare_envelope_and_epoch_runs_break_the_same_members() {
    let sim = start(SimConfig {
        people: 5,
        donations: 5,
        envelope: Envelope::Bare,
        timestamp_format: TimestampFormat::EpochMillis,
        ..SimConfig::default()
    })
    .await;
    let url = sim.url(Entity::Donations);
    let intact = get(&format!("{url}/2")).await.json();
    assert!(intact["updated_at"].is_number(), "{intact}");
    for (c, want) in [
        (Corruption::NullDelta, "\"updated_at\":null"),
        (Corruption::BadDelta, "\"updated_at\":\"not a date\""),
        // Naive timestamps are RFC 3339 text whatever the run's format.
        (
            Corruption::NaiveTimestamp,
            "\"updated_at\":\"2024-01-01T00:00:01.000000\"",
        ),
        (Corruption::EmptyId, "{\"id\":\"\","),
        (Corruption::LongId(3), "{\"id\":\"999\","),
        (
            Corruption::LoneSurrogate,
            "\"amount_currency\":\"USD\\ud800\"",
        ),
    ] {
        sim.corrupt(Entity::Donations, 2, Some(c));
        let one = get(&format!("{url}/2")).await;
        assert!(one.body.contains(want), "{c:?}: {}", one.body);
        let page = get(&url).await;
        assert!(page.body.starts_with("[{\"id\":\"1\","), "{}", page.body);
        assert!(page.body.contains(want), "{c:?} listed: {}", page.body);
        assert_eq!(page.body.matches(want).count(), 1, "{c:?}: one record only");
    }
    sim.corrupt(Entity::Donations, 2, Some(Corruption::MissingDelta));
    let one = get(&format!("{url}/2")).await;
    assert!(!one.body.contains("\"updated_at\""), "{}", one.body);
    assert!(one.json()["received_at"].is_number());
    sim.corrupt(Entity::Donations, 2, None);
    assert_eq!(get(&format!("{url}/2")).await.json(), intact);
}

#[tokio::test]
async fn corruption_is_set_and_cleared_over_http() {
    let sim = people(5).await;
    let base = format!("{}/__admin/people/records/3/corrupt", sim.base_url());
    for (body, want) in [
        (json!({"kind": "null_delta"}), Corruption::NullDelta),
        (json!({"kind": "missing_delta"}), Corruption::MissingDelta),
        (json!({"kind": "bad_delta"}), Corruption::BadDelta),
        (
            json!({"kind": "naive_timestamp"}),
            Corruption::NaiveTimestamp,
        ),
        (json!({"kind": "empty_id"}), Corruption::EmptyId),
        (
            json!({"kind": "long_id", "bytes": 600}),
            Corruption::LongId(600),
        ),
        (json!({"kind": "lone_surrogate"}), Corruption::LoneSurrogate),
    ] {
        let r = admin(Method::PUT, base.clone(), Some(body.clone())).await;
        assert_eq!(r.status, 200, "{body}: {}", r.body);
        let mut echo = json!({"id": 3});
        echo["kind"] = body["kind"].clone();
        if let Some(b) = body.get("bytes") {
            echo["bytes"] = b.clone();
        }
        assert_eq!(r.json(), echo);
        assert_eq!(sim.corruption(Entity::People, 3), Some(want));
    }
    // The admin view of the record is what GET serves.
    let r = admin(
        Method::GET,
        format!("{}/__admin/people/records/3", sim.base_url()),
        None,
    )
    .await;
    assert!(r.body.contains("\\ud800"), "{}", r.body);

    for bad in [
        json!({"kind": "null"}),
        json!({"kind": "long_id"}),
        json!({"kind": "empty_id", "bytes": 3}),
        json!({"kind": "empty_id", "extra": 1}),
    ] {
        let r = admin(Method::PUT, base.clone(), Some(bad.clone())).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    assert_eq!(
        sim.corruption(Entity::People, 3),
        Some(Corruption::LoneSurrogate),
        "a refused body changes nothing"
    );
    let r = admin(Method::DELETE, base, None).await;
    assert_eq!(r.status, 204);
    assert_eq!(sim.corruption(Entity::People, 3), None);
    let r = get(&format!("{}/3", sim.url(Entity::People))).await;
    assert!(r.json()["data"]["attributes"]["updated_at"].is_string());
}
