//! Document shapes: single records, 404s, sparse fieldsets, total_count, bare records.

use serde_json::Value;
use source_sim::{Entity, Envelope, SimConfig};

use crate::common::{base_ts, get, ids, list, people, send, start};

fn attr_keys(rec: &Value) -> Vec<String> {
    let mut keys: Vec<String> = rec["attributes"]
        .as_object()
        .expect("attributes object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn page_document_has_the_json_api_shape() {
    let sim = people(30).await;
    let r = list(&sim, Entity::People, &[("per_page", "10")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/json");
    let page = r.json();
    assert_eq!(page["included"], serde_json::json!([]));
    assert_eq!(
        page["links"]["self"],
        format!("{}?per_page=10", sim.url(Entity::People))
    );
    assert_eq!(
        page["links"]["next"],
        format!("{}?per_page=10&offset=10", sim.url(Entity::People))
    );
    assert_eq!(page["meta"]["total_count"], 30);
    assert_eq!(page["meta"]["count"], 10);
    assert_eq!(page["meta"]["next"]["offset"], 10);
    let rec = &page["data"][0];
    assert_eq!(rec["type"], "Person");
    assert_eq!(rec["id"], "1");
    assert_eq!(
        rec["attributes"]["updated_at"],
        sim.format_timestamp(base_ts(1))
    );
    for k in [
        "first_name",
        "last_name",
        "emails",
        "addresses",
        "notes",
        "created_at",
    ] {
        assert!(rec["attributes"].get(k).is_some(), "missing {k}");
    }
    let size = serde_json::to_string(rec).unwrap().len();
    assert!(
        (700..=1500).contains(&size),
        "a person is about 1 KB, got {size}"
    );
}

#[tokio::test]
async fn single_record_and_json_404_versus_html_404() {
    let sim = people(30).await;
    let r = get(&format!("{}/12", sim.url(Entity::People))).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["data"]["id"], "12");
    assert_eq!(doc["data"]["type"], "Person");
    assert_eq!(
        Some(r.body.clone()),
        sim.record_json(Entity::People, 12),
        "admin JSON = served JSON"
    );

    for missing in ["31", "0", "012", "abc", "1%2F2"] {
        let r = get(&format!("{}/{missing}", sim.url(Entity::People))).await;
        assert_eq!(r.status, 404, "{missing}");
        assert_eq!(r.content_type(), "application/json", "{missing}");
        assert_eq!(
            r.json(),
            serde_json::json!({"errors":[{"status":"404","title":"Not Found"}]})
        );
    }
    assert!(sim.delete(Entity::People, 12));
    let r = get(&format!("{}/12", sim.url(Entity::People))).await;
    assert_eq!((r.status, r.content_type()), (404, "application/json"));

    for wrong in [
        "/people/v2/peoples",
        "/people/v1/people",
        "/people/v2/people/1/emails",
        "/",
        "/giving/v2",
    ] {
        let r = get(&format!("{}{wrong}", sim.base_url())).await;
        assert_eq!(r.status, 404, "{wrong}");
        assert!(
            r.content_type().starts_with("text/html"),
            "{wrong}: {}",
            r.content_type()
        );
        assert!(r.body.contains("<html>"));
        assert!(serde_json::from_str::<Value>(&r.body).is_err());
    }
    let s = sim.stats();
    assert_eq!((s.not_found, s.unknown_path, s.get_requests), (6, 5, 7));
}

#[tokio::test]
async fn only_get_is_allowed_on_api_paths() {
    let sim = people(3).await;
    let r = send(crate::common::client().post(sim.url(Entity::People))).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(r.json()["errors"][0]["status"], "405");
}

#[tokio::test]
async fn sparse_fieldsets_keep_only_the_listed_attributes() {
    let sim = people(5).await;
    for key in ["fields[Person]", "fields[people]"] {
        let page = list(&sim, Entity::People, &[(key, "updated_at")])
            .await
            .json();
        for rec in page["data"].as_array().unwrap() {
            assert_eq!(attr_keys(rec), ["updated_at"], "{key}");
            assert!(rec["id"].is_string() && rec["type"] == "Person");
        }
    }
    let page = list(&sim, Entity::People, &[("fields[Person]", "id")])
        .await
        .json();
    assert_eq!(
        attr_keys(&page["data"][0]),
        Vec::<String>::new(),
        "ID-only streaming"
    );
    let page = list(
        &sim,
        Entity::Donations,
        &[("fields[Donation]", "amount_cents,updated_at")],
    )
    .await
    .json();
    assert_eq!(attr_keys(&page["data"][0]), ["amount_cents", "updated_at"]);
    assert!(page["data"][0].get("relationships").is_none());
    // Fields for another type leave this one whole.
    let page = list(&sim, Entity::Donations, &[("fields[Person]", "updated_at")])
        .await
        .json();
    assert!(attr_keys(&page["data"][0]).len() > 10);
    assert_eq!(
        page["data"][0]["relationships"]["person"]["data"]["type"],
        "Person"
    );
    // Single records honour fields too.
    let doc = get(&format!(
        "{}/2?fields[Person]=first_name",
        sim.url(Entity::People)
    ))
    .await
    .json();
    assert_eq!(attr_keys(&doc["data"]), ["first_name"]);
}

#[tokio::test]
async fn total_count_is_the_filtered_count_and_follows_mutations() {
    let sim = people(40).await;
    let t = sim.format_timestamp(base_ts(31));
    let page = list(&sim, Entity::People, &[("updated_at_gte", &t)])
        .await
        .json();
    assert_eq!(page["meta"]["total_count"], 10);
    sim.update(Entity::People, 3, None);
    sim.delete(Entity::People, 35);
    sim.create(Entity::People, None);
    let page = list(&sim, Entity::People, &[("updated_at_gte", &t)])
        .await
        .json();
    assert_eq!(page["meta"]["total_count"], 11);
    let got = ids(&page);
    assert!(
        got.contains(&3) && got.contains(&41) && !got.contains(&35),
        "{got:?}"
    );
    let page = list(&sim, Entity::People, &[]).await.json();
    assert_eq!(page["meta"]["total_count"], 40);
}

#[tokio::test]
async fn bare_single_records_are_flat_objects() {
    let sim = start(SimConfig {
        people: 3,
        envelope: Envelope::Bare,
        ..SimConfig::default()
    })
    .await;
    let r = get(&format!("{}/2", sim.url(Entity::People))).await;
    let obj = r.json();
    assert_eq!(obj["id"], "2");
    assert!(obj["first_name"].is_string());
    assert!(obj.get("data").is_none());
    let r = list(&sim, Entity::People, &[("fields[Person]", "updated_at")]).await;
    let arr = r.json();
    assert_eq!(
        arr[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "updated_at"]
    );
    assert_eq!(r.header("x-total-count"), Some("3"));
    assert!(r.header("link").is_none(), "one page only");
}
