//! Ordering: numeric IDs, (updated_at, id) with ties, descending orders.

use source_sim::{Entity, Granularity, SimConfig};

use crate::common::{SEC, ids, list, start};

#[tokio::test]
async fn default_order_is_numeric_id() {
    let sim = start(SimConfig {
        people: 12,
        // Descending timestamps: the ID order must not come from time.
        step_us: -SEC,
        ..SimConfig::default()
    })
    .await;
    let page = list(&sim, Entity::People, &[]).await.json();
    assert_eq!(
        ids(&page),
        (1..=12).collect::<Vec<_>>(),
        "9 < 10 numerically"
    );
    let page = list(&sim, Entity::People, &[("order", "updated_at")])
        .await
        .json();
    assert_eq!(ids(&page), (1..=12).rev().collect::<Vec<_>>());
    let page = list(&sim, Entity::People, &[("order", "-id")]).await.json();
    assert_eq!(ids(&page), (1..=12).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn updated_at_order_breaks_ties_by_id() {
    let sim = start(SimConfig {
        people: 12,
        tie_group: 4,
        ..SimConfig::default()
    })
    .await;
    let t0 = sim.get(Entity::People, 1).map(|v| v.updated_at_us);
    let t2 = sim.get(Entity::People, 9).map(|v| v.updated_at_us);
    assert_eq!(
        sim.get(Entity::People, 4).map(|v| v.updated_at_us),
        t0,
        "groups of 4 share a timestamp"
    );
    sim.update(Entity::People, 11, t0);
    sim.update(Entity::People, 2, t2);
    let want = vec![1, 3, 4, 11, 5, 6, 7, 8, 2, 9, 10, 12];
    let page = list(&sim, Entity::People, &[("order", "updated_at")])
        .await
        .json();
    assert_eq!(ids(&page), want);
    let page = list(&sim, Entity::People, &[("order", "-updated_at")])
        .await
        .json();
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(ids(&page), rev);
    // Timestamps in the page really are non-decreasing.
    let page = list(&sim, Entity::People, &[("order", "updated_at")])
        .await
        .json();
    let stamps: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attributes"]["updated_at"].as_str().unwrap().to_owned())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
}

#[tokio::test]
async fn second_granularity_makes_ties_broken_by_id() {
    let sim = start(SimConfig {
        people: 10,
        step_us: 300_000,
        granularity: Granularity::Seconds,
        ..SimConfig::default()
    })
    .await;
    let v = sim.versions(Entity::People);
    // 0.0, 0.3, 0.6, 0.9 | 1.2, 1.5, 1.8 | 2.1, 2.4, 2.7 seconds.
    let secs: Vec<i64> = v.iter().map(|(_, us)| (us - v[0].1) / 1_000_000).collect();
    assert_eq!(secs, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
    sim.update(Entity::People, 2, Some(v[9].1));
    let page = list(&sim, Entity::People, &[("order", "updated_at")])
        .await
        .json();
    assert_eq!(ids(&page), [1, 3, 4, 5, 6, 7, 2, 8, 9, 10]);
    assert_eq!(
        page["data"][0]["attributes"]["updated_at"],
        "2024-01-01T00:00:00Z"
    );
}
