//! A million records: generated at once, small in memory, and served correctly at the far end.

use source_sim::{Entity, SimConfig};

use crate::common::{SEC, ids, list, start};

#[tokio::test]
async fn a_million_people() {
    const N: usize = 1_000_000;
    let sim = start(SimConfig {
        people: N,
        donations: 0,
        tie_group: 3,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(sim.len(Entity::People), N);
    let bytes = sim.memory_bytes();
    assert!(bytes <= 64 * N, "about 48 bytes a record, got {bytes}");

    let page = list(
        &sim,
        Entity::People,
        &[("per_page", "100"), ("offset", "999900")],
    )
    .await
    .json();
    assert_eq!(page["meta"]["total_count"], N);
    assert_eq!(ids(&page), (999_901..=1_000_000).collect::<Vec<_>>());
    assert!(page["links"].get("next").is_none());

    let page = list(
        &sim,
        Entity::People,
        &[
            ("per_page", "100"),
            ("page", "10000"),
            ("order", "updated_at"),
        ],
    )
    .await
    .json();
    assert_eq!(ids(&page).last(), Some(&1_000_000));
    assert!(page["meta"].get("next_cursor").is_none());

    // A delta near the end: the last 50 records (ties of 3 straddle the bound).
    let base = SimConfig::default().base_time_us;
    let t = sim.format_timestamp(base + (999_950 / 3) * SEC);
    let page = list(
        &sim,
        Entity::People,
        &[
            ("where[updated_at][gte]", &t),
            ("order", "updated_at"),
            ("per_page", "100"),
        ],
    )
    .await
    .json();
    let got = ids(&page);
    assert_eq!(
        got.first(),
        Some(&999_949),
        "the whole tie group of 999_950"
    );
    assert_eq!(got.len(), 52);
    assert_eq!(page["meta"]["total_count"], 52);

    // A mutation in a million-record store moves one record to the end.
    sim.update(Entity::People, 17, None);
    let page = list(
        &sim,
        Entity::People,
        &[("order", "-updated_at"), ("per_page", "1")],
    )
    .await
    .json();
    assert_eq!(ids(&page), [17]);
    assert_eq!(sim.versions(Entity::People).len(), N);
}
