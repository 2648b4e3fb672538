//! The HTTP admin interface and the in-process mutation API.

use serde_json::{Value, json};
use source_sim::{ChangeKind, Entity};

use crate::common::{Resp, get, ids, list, people, send};

async fn admin(method: reqwest::Method, url: String, body: Option<Value>) -> Resp {
    let mut req = crate::common::client().request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    send(req).await
}

#[tokio::test]
async fn records_are_created_updated_and_deleted_over_http() {
    let sim = people(5).await;
    let base = format!("{}/__admin/people/records", sim.base_url());
    use reqwest::Method;

    let r = admin(
        Method::POST,
        base.clone(),
        Some(json!({"count": 3, "updated_at_us": 1_800_000_000_000_000_i64})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json()["records"].clone();
    assert_eq!(created.as_array().unwrap().len(), 3);
    assert_eq!(created[0]["id"], 6);
    assert!(
        created
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["updated_at_us"] == 1_800_000_000_000_000_i64),
        "one shared timestamp"
    );

    let r = admin(
        Method::POST,
        base.clone(),
        Some(json!({"updated_at_us": 1_900_000_000_000_000_i64})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["records"][0]["id"], 9);

    let r = admin(
        Method::PATCH,
        format!("{base}/2"),
        Some(json!({"updated_at": "2030-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"id": 2, "updated_at_us": 1_893_456_000_000_000_i64, "mutation": 1})
    );
    let r = admin(Method::PATCH, format!("{base}/99"), None).await;
    assert_eq!(r.status, 404);
    let r = admin(
        Method::PATCH,
        format!("{base}/2"),
        Some(json!({"updated_at": "soon"})),
    )
    .await;
    assert_eq!(r.status, 400);

    assert_eq!(
        admin(Method::DELETE, format!("{base}/3"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        admin(Method::DELETE, format!("{base}/3"), None)
            .await
            .status,
        404
    );

    let r = get(&base).await;
    let listing = r.json();
    assert_eq!(listing["count"], 8);
    assert_eq!(listing["records"][1], json!([2, 1_893_456_000_000_000_i64]));
    let want: Vec<Value> = sim
        .versions(Entity::People)
        .into_iter()
        .map(|(id, us)| json!([id, us]))
        .collect();
    assert_eq!(listing["records"], Value::Array(want));

    let r = get(&format!("{base}/2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["attributes"]["updated_at"],
        "2030-01-01T00:00:00.000000Z"
    );
    assert_eq!(get(&format!("{base}/3")).await.status, 404);
    assert_eq!(
        get(&format!("{}/__admin/widgets/records", sim.base_url()))
            .await
            .status,
        404
    );

    // The API sees the same thing.
    let page = list(&sim, Entity::People, &[("order", "updated_at")])
        .await
        .json();
    assert_eq!(ids(&page), [1, 4, 5, 6, 7, 8, 2, 9]);
    // None of that was counted as API traffic.
    assert_eq!(sim.stats().requests, 1);
}

#[tokio::test]
async fn faults_clock_chaos_rate_limit_and_stats_over_http() {
    let sim = people(5).await;
    let a = |p: &str| format!("{}/__admin/{p}", sim.base_url());
    use reqwest::Method;

    let r = admin(Method::POST, a("faults"), Some(json!([{"status": 503}, "truncate", {"delay_ms": 1}, {"rate_limited": {"retry_after_secs": 3}}, {"html": 504}]))).await;
    assert_eq!(r.json()["pending"], 5);
    let r = admin(Method::POST, a("faults"), Some(json!({"status": 500}))).await;
    assert_eq!(r.json()["pending"], 6);
    assert_eq!(
        admin(Method::POST, a("faults"), Some(json!([{"explode": 1}])))
            .await
            .status,
        400
    );
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 503);
    assert_eq!(admin(Method::DELETE, a("faults"), None).await.status, 204);
    assert_eq!(get(&a("faults")).await.json()["pending"], 0);

    let r = admin(Method::PUT, a("clock"), Some(json!({"skew_ms": -5000}))).await;
    assert_eq!(r.json()["skew_ms"], -5000);
    assert_eq!(sim.clock_skew_ms(), -5000);

    let r = admin(Method::PUT, a("chaos"), Some(json!({"error_rate": 1.0}))).await;
    assert_eq!(r.json()["error_rate"], 1.0);
    assert!(list(&sim, Entity::People, &[]).await.status >= 500);
    assert_eq!(
        admin(Method::PUT, a("chaos"), Some(json!({"html_rate": 0.5})))
            .await
            .status,
        400,
        "rates sum over 1"
    );
    admin(Method::PUT, a("chaos"), Some(json!({"error_rate": 0.0}))).await;
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);

    let r = admin(
        Method::PUT,
        a("rate-limit"),
        Some(json!({"requests": 1, "period_ms": 60000})),
    )
    .await;
    assert_eq!(r.json(), json!({"requests": 1, "period_ms": 60000}));
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 429);
    assert_eq!(
        admin(Method::POST, a("rate-limit/reset"), None)
            .await
            .status,
        204
    );
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
    admin(Method::PUT, a("rate-limit"), Some(Value::Null)).await;
    assert_eq!(get(&a("rate-limit")).await.json(), Value::Null);

    let stats = get(&a("stats")).await.json();
    assert_eq!(stats["requests"], 6);
    assert_eq!(stats["list_requests"], 6);
    assert_eq!(stats["rate_limited"], 1);
    assert_eq!(stats["faults_served"], 2);
    assert_eq!(
        admin(Method::POST, a("stats/reset"), None).await.status,
        204
    );
    assert_eq!(sim.stats().requests, 0);
    // Unknown admin routes are JSON 404s and not API traffic.
    let r = get(&a("nope")).await;
    assert_eq!((r.status, r.content_type()), (404, "application/json"));
    assert_eq!(sim.stats().requests, 0);
}

#[tokio::test]
async fn mutations_publish_changes() {
    let sim = people(5).await;
    let mut rx = sim.subscribe_changes();
    let c = sim.create(Entity::Donations, Some(42));
    sim.update(Entity::People, 1, None);
    sim.delete(Entity::People, 2);
    assert!(!sim.delete(Entity::People, 2), "a second delete is a no-op");
    let got: Vec<_> = (0..3).map(|_| rx.try_recv().expect("a change")).collect();
    assert_eq!(
        (got[0].entity, got[0].id, got[0].kind, got[0].updated_at_us),
        (Entity::Donations, c.id, ChangeKind::Created, 42)
    );
    assert_eq!((got[1].id, got[1].kind), (1, ChangeKind::Updated));
    assert_eq!((got[2].id, got[2].kind), (2, ChangeKind::Deleted));
    assert!(rx.try_recv().is_err(), "nothing for the failed delete");
}
