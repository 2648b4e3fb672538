//! The store contract, as test bodies that run unchanged against every `RecordStore` and
//! `ControlStore` implementation (DynamoDB on DynamoDB Local, the embedded SQLite store).
//!
//! Each body is a plain `pub async fn` over `&dyn RecordStore` / `&dyn ControlStore`; the
//! [`conformance_suite!`] macro expands to one `#[tokio::test]` per body for one store:
//!
//! ```text
//! crate::conformance::conformance_suite!(sqlite, || async {
//!     let s = std::sync::Arc::new(LocalStore::in_memory().expect("open"));
//!     (s.clone() as Arc<dyn RecordStore>, s as Arc<dyn ControlStore>)
//! });
//! ```
//!
//! `$make` is an async factory (a closure or a function path, called as `($make)().await`)
//! returning `(Arc<dyn RecordStore>, Arc<dyn ControlStore>)` on fresh, empty storage (unique
//! tables per test): tests run in parallel and never share state.
//!
//! Limits both stores honour (so both behave the same): a payload up to 350 KiB of JSON is
//! always stored; a larger one is stored when its zlib compression fits in 390 KiB, and is
//! `StoreError::TooLarge` otherwise (DynamoDB's item limit is 400 KB).

use futures::future::join_all;
use serde_json::{Value, json};
use shared::StoreError;
use shared::core::budget::{Limit, SliceAnswer, SliceAsk};
use shared::core::timefmt::now_us;
use shared::model::{
    DeleteOutcome, EraseOutcome, Erasure, ID_SHARDS, IdVersion, LastAction, LiftOutcome, Micros,
    Record, RegressOutcome, Strategy, WriteOutcome, shard_of,
};
use shared::ports::{
    BudgetStore, ControlStore, JobKind, LeaseOutcome, NOT_FOUND_WINDOW_US, NotFoundCounts,
    RecordStore, RunRecord, not_found_window,
};
use std::collections::BTreeSet;

/// Expand to one `#[tokio::test]` per conformance body, in a module `$modname`, each on fresh
/// stores from `$make` (an async factory: `($make)().await` gives
/// `(Arc<dyn RecordStore>, Arc<dyn ControlStore>)`). Items of the calling module are visible to
/// `$make` (the generated module does `use super::*`).
macro_rules! conformance_suite {
    ($modname:ident, $make:expr) => {
        #[allow(unused_imports)]
        mod $modname {
            use super::*;

            macro_rules! records_test {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (records, _control) = ($make)().await;
                        $crate::conformance::$name(&*records).await;
                    }
                };
            }
            macro_rules! control_test {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_records, control) = ($make)().await;
                        $crate::conformance::$name(&*control).await;
                    }
                };
            }

            records_test!(insert_then_get_has_all_metadata);
            records_test!(same_content_is_unchanged_and_writes_nothing);
            records_test!(newer_version_updates_and_keeps_first_seen);
            records_test!(older_version_is_stale_and_keeps_stored);
            records_test!(equal_delta_different_hash_uses_fetch_time);
            records_test!(greater_delta_same_hash_is_unchanged);
            records_test!(soft_delete_keeps_item_and_hides_it_from_live_ids);
            records_test!(soft_delete_outcomes);
            records_test!(no_resurrection_before_evidence_restore_after);
            records_test!(upsert_many_keeps_input_order);
            records_test!(live_ids_cover_all_shards_sorted_bytewise_and_page);
            records_test!(live_ids_after_a_missing_id_and_other_entities);
            records_test!(unusual_ids_round_trip);
            records_test!(payload_types_round_trip);
            records_test!(large_payloads_round_trip);
            records_test!(too_large_payload_is_rejected);
            records_test!(concurrent_conflicting_upserts_keep_the_highest_version);
            records_test!(concurrent_identical_upserts_insert_once);
            records_test!(write_regressed_lowers_the_version_over_the_copy_compared_only);
            records_test!(write_regressed_writes_nothing_unless_the_rule_allows_it);
            records_test!(a_concurrent_newer_write_wins_over_a_regression);
            records_test!(erase_refuses_every_write_path_until_lifted);
            records_test!(erase_of_an_absent_or_deleted_record_still_suppresses);
            records_test!(erase_between_a_read_and_the_write_wins);
            records_test!(erase_racing_concurrent_upserts_always_ends_erased);
            records_test!(purge_removes_only_old_soft_deleted_items);
            control_test!(lease_acquire_hold_renew_and_take_over);
            control_test!(save_cursor_is_fenced_by_the_lease);
            control_test!(release_lets_another_acquire);
            control_test!(concurrent_acquires_have_one_winner);
            control_test!(runs_newest_first_with_limit);
            control_test!(processed_events);
            control_test!(not_found_window_rolls_by_ten_minutes);
        }
    };
}
pub(crate) use conformance_suite;

/// One `#[tokio::test]` per budget body on the store `$make` gives (`Arc<dyn BudgetStore>`).
macro_rules! budget_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            macro_rules! budget_test {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let store = ($make)().await;
                        $crate::conformance::$name(&*store).await;
                    }
                };
            }
            budget_test!(budget_slices_follow_the_schedule);
            budget_test!(budget_pause_holds_every_lane_and_never_shortens);
            budget_test!(budget_learned_limit_comes_back_with_every_answer);
            budget_test!(budget_give_back_only_while_the_slice_is_the_last);
            budget_test!(budget_concurrent_slices_never_overlap);
        }
    };
}
pub(crate) use budget_suite;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

const E: &str = "people";

/// A record whose hash is the hash of its payload (as the source client computes it).
pub fn rec(
    entity: &str,
    id: &str,
    delta_us: Micros,
    fetched_at_us: Micros,
    payload: &Value,
) -> Record {
    let raw = serde_json::to_string(payload).expect("serialise a test payload");
    rec_raw(entity, id, delta_us, fetched_at_us, raw)
}

pub fn rec_raw(
    entity: &str,
    id: &str,
    delta_us: Micros,
    fetched_at_us: Micros,
    raw: String,
) -> Record {
    Record::new(
        entity,
        id,
        delta_us,
        fetched_at_us,
        shared::model::RawJson::parse(raw).expect("valid JSON"),
    )
}

fn person(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "age": 42, "tags": ["a", "b"], "address": {"city": "Bern"}})
}

async fn upsert(s: &dyn RecordStore, r: &Record, by: Strategy) -> WriteOutcome {
    s.upsert(r, by).await.expect("upsert")
}

async fn get(s: &dyn RecordStore, entity: &str, id: &str) -> shared::model::StoredRecord {
    s.get(entity, id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{entity}#{id} is stored"))
}

/// Every live `(id, delta)` of one shard, paging with `limit`; checks that pages are sorted,
/// disjoint and contiguous.
pub async fn all_live(
    s: &dyn RecordStore,
    entity: &str,
    shard: u16,
    limit: usize,
) -> Vec<IdVersion> {
    let mut out: Vec<IdVersion> = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let page = s
            .list_live_ids(entity, shard, after.as_deref(), limit)
            .await
            .expect("list live ids");
        assert!(
            page.items.len() <= limit.max(1),
            "page larger than limit {limit}"
        );
        if let (Some(a), Some(first)) = (&after, page.items.first()) {
            assert!(
                first.id.as_str() > a.as_str(),
                "page starts after {a:?}: {:?}",
                first.id
            );
        }
        out.extend(page.items);
        match page.next_after {
            Some(next) => {
                assert_eq!(
                    out.last().map(|i| i.id.as_str()),
                    Some(next.as_str()),
                    "next_after is the last ID of the page"
                );
                after = Some(next);
            }
            None => return out,
        }
    }
    panic!("list_live_ids did not finish for {entity} shard {shard}");
}

fn is_sorted_bytewise(ids: &[IdVersion]) -> bool {
    ids.windows(2)
        .all(|w| w[0].id.as_bytes() < w[1].id.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// records
// ---------------------------------------------------------------------------------------------

pub async fn insert_then_get_has_all_metadata(s: &dyn RecordStore) {
    assert!(s.get(E, "1").await.expect("get").is_none(), "empty store");
    let p = person("1", "Ann");
    let r = rec(E, "1", 1_000, 2_000, &p);
    let before = now_us();
    assert_eq!(upsert(s, &r, Strategy::Delta).await, WriteOutcome::Inserted);
    let after = now_us();
    let got = get(s, E, "1").await;
    assert_eq!(got.entity, E);
    assert_eq!(got.id, "1");
    assert_eq!(got.version.delta_us, 1_000);
    assert_eq!(got.version.fetched_at_us, 2_000);
    assert_eq!(got.version.hash, r.version.hash);
    assert_eq!(got.version.deleted_at_us, None);
    assert!(!got.is_deleted());
    assert_eq!(got.payload, p);
    assert!(
        (before..=after).contains(&got.first_seen_us),
        "first_seen {} is our clock at the write ({before}..={after})",
        got.first_seen_us
    );
    assert_eq!(got.last_synced_us, got.first_seen_us);
    assert_eq!(got.last_action, LastAction::Insert);
    assert_eq!(got.written_by, Strategy::Delta);
    // Another entity with the same ID is another item.
    assert!(s.get("donations", "1").await.expect("get").is_none());
    let live = all_live(s, E, shard_of("1"), 10).await;
    assert_eq!(
        live,
        vec![IdVersion {
            id: "1".into(),
            delta_us: 1_000
        }]
    );
}

pub async fn same_content_is_unchanged_and_writes_nothing(s: &dyn RecordStore) {
    let p = person("1", "Ann");
    assert_eq!(
        upsert(s, &rec(E, "1", 1_000, 2_000, &p), Strategy::Delta).await,
        WriteOutcome::Inserted
    );
    let first = get(s, E, "1").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // Same version and content, fetched again later (an overlap re-read), by another strategy.
    for fetched in [2_000, 3_000, 1_500] {
        assert_eq!(
            upsert(s, &rec(E, "1", 1_000, fetched, &p), Strategy::Webhook).await,
            WriteOutcome::Unchanged
        );
    }
    assert_eq!(
        get(s, E, "1").await,
        first,
        "nothing changes, last_synced included"
    );
}

pub async fn newer_version_updates_and_keeps_first_seen(s: &dyn RecordStore) {
    upsert(
        s,
        &rec(E, "1", 1_000, 2_000, &person("1", "Ann")),
        Strategy::Delta,
    )
    .await;
    let first = get(s, E, "1").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let p2 = person("1", "Anna");
    let r2 = rec(E, "1", 1_001, 1_500, &p2); // greater delta wins even if fetched earlier
    let before = now_us();
    assert_eq!(
        upsert(s, &r2, Strategy::Webhook).await,
        WriteOutcome::Updated
    );
    let after = now_us();
    let got = get(s, E, "1").await;
    assert_eq!(got.version.delta_us, 1_001);
    assert_eq!(got.version.fetched_at_us, 1_500);
    assert_eq!(got.version.hash, r2.version.hash);
    assert_eq!(got.payload, p2);
    assert_eq!(got.first_seen_us, first.first_seen_us, "first_seen kept");
    assert!(
        (before..=after).contains(&got.last_synced_us),
        "last_synced is the update's time"
    );
    assert!(got.last_synced_us > first.last_synced_us);
    assert_eq!(got.last_action, LastAction::Update);
    assert_eq!(got.written_by, Strategy::Webhook);
    let live = all_live(s, E, shard_of("1"), 10).await;
    assert_eq!(
        live,
        vec![IdVersion {
            id: "1".into(),
            delta_us: 1_001
        }],
        "index has the new version"
    );
}

pub async fn older_version_is_stale_and_keeps_stored(s: &dyn RecordStore) {
    upsert(
        s,
        &rec(E, "1", 1_000, 2_000, &person("1", "New")),
        Strategy::Delta,
    )
    .await;
    let stored = get(s, E, "1").await;
    for (delta, fetched) in [(999, 5_000), (0, 1), (-5, 9_000)] {
        assert_eq!(
            upsert(
                s,
                &rec(E, "1", delta, fetched, &person("1", "Old")),
                Strategy::Webhook
            )
            .await,
            WriteOutcome::Stale,
            "delta {delta}"
        );
    }
    assert_eq!(get(s, E, "1").await, stored);
}

pub async fn equal_delta_different_hash_uses_fetch_time(s: &dyn RecordStore) {
    upsert(
        s,
        &rec(E, "1", 1_000, 2_000, &person("1", "A")),
        Strategy::Delta,
    )
    .await;
    let stored = get(s, E, "1").await;
    // Fetched earlier or at the same time: the stored one is at least as fresh.
    for fetched in [1_999, 2_000] {
        assert_eq!(
            upsert(
                s,
                &rec(E, "1", 1_000, fetched, &person("1", "B")),
                Strategy::Delta
            )
            .await,
            WriteOutcome::Stale,
            "fetched {fetched}"
        );
    }
    assert_eq!(get(s, E, "1").await, stored);
    // Fetched later: the source changed it within the same timestamp.
    let p = person("1", "C");
    assert_eq!(
        upsert(s, &rec(E, "1", 1_000, 2_001, &p), Strategy::Targeted).await,
        WriteOutcome::Updated
    );
    let got = get(s, E, "1").await;
    assert_eq!(got.payload, p);
    assert_eq!(got.version.fetched_at_us, 2_001);
    assert_eq!(got.written_by, Strategy::Targeted);
    assert_eq!(got.last_action, LastAction::Update);
}

pub async fn greater_delta_same_hash_is_unchanged(s: &dyn RecordStore) {
    let p = person("1", "A");
    upsert(s, &rec(E, "1", 1_000, 2_000, &p), Strategy::Delta).await;
    let stored = get(s, E, "1").await;
    assert_eq!(
        upsert(s, &rec(E, "1", 5_000, 6_000, &p), Strategy::Delta).await,
        WriteOutcome::Unchanged
    );
    assert_eq!(get(s, E, "1").await, stored, "same content costs no write");
}

pub async fn soft_delete_keeps_item_and_hides_it_from_live_ids(s: &dyn RecordStore) {
    let p = person("1", "A");
    upsert(s, &rec(E, "1", 1_000, 2_000, &p), Strategy::Delta).await;
    upsert(
        s,
        &rec(E, "2", 1_000, 2_000, &person("2", "B")),
        Strategy::Delta,
    )
    .await;
    let first = get(s, E, "1").await;
    let before = now_us();
    assert_eq!(
        s.soft_delete(E, "1", 3_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::Deleted
    );
    let after = now_us();
    let got = get(s, E, "1").await;
    assert!(got.is_deleted());
    assert_eq!(
        got.version.deleted_at_us,
        Some(3_000),
        "deleted_at is the evidence time"
    );
    assert_eq!(got.version.delta_us, 1_000);
    assert_eq!(got.version.fetched_at_us, 2_000);
    assert_eq!(got.payload, p, "payload kept");
    assert_eq!(got.first_seen_us, first.first_seen_us);
    assert!(
        (before..=after).contains(&got.last_synced_us),
        "last_synced is the delete's time"
    );
    assert_eq!(got.last_action, LastAction::Delete);
    assert_eq!(got.written_by, Strategy::Reconcile);
    for shard in 0..ID_SHARDS {
        let live = all_live(s, E, shard, 100).await;
        assert!(
            live.iter().all(|i| i.id != "1"),
            "deleted ID listed in shard {shard}"
        );
    }
    let live2 = all_live(s, E, shard_of("2"), 100).await;
    assert!(live2.contains(&IdVersion {
        id: "2".into(),
        delta_us: 1_000
    }));
}

pub async fn soft_delete_outcomes(s: &dyn RecordStore) {
    assert_eq!(
        s.soft_delete(E, "missing", 3_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::NotFound
    );
    assert!(
        s.get(E, "missing").await.expect("get").is_none(),
        "NotFound creates nothing"
    );

    upsert(
        s,
        &rec(E, "1", 1_000, 2_000, &person("1", "A")),
        Strategy::Delta,
    )
    .await;
    let stored = get(s, E, "1").await;
    for evidence in [1_000, 1_999, 2_000] {
        assert_eq!(
            s.soft_delete(E, "1", evidence, Strategy::Reconcile)
                .await
                .expect("delete"),
            DeleteOutcome::NewerThanEvidence,
            "evidence {evidence} not after the fetch"
        );
    }
    assert_eq!(get(s, E, "1").await, stored, "still live, untouched");
    assert_eq!(
        s.soft_delete(E, "1", 2_001, Strategy::Webhook)
            .await
            .expect("delete"),
        DeleteOutcome::Deleted
    );
    let deleted = get(s, E, "1").await;
    assert_eq!(deleted.version.deleted_at_us, Some(2_001));
    assert_eq!(deleted.written_by, Strategy::Webhook);
    assert_eq!(
        s.soft_delete(E, "1", 9_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::AlreadyDeleted
    );
    // Seen without it again, later: the evidence moves (who deleted it stays), so that a copy
    // fetched between the two observations (the source re-created the record, then deleted it
    // once more) does not bring it back.
    let again = get(s, E, "1").await;
    assert_eq!(again.version.deleted_at_us, Some(9_000));
    assert_eq!(again.written_by, Strategy::Webhook);
    assert_eq!(
        upsert(
            s,
            &rec(E, "1", 3_000, 5_000, &person("1", "between")),
            Strategy::Delta
        )
        .await,
        WriteOutcome::Stale,
        "fetched after the first deletion, before the second"
    );
    // An earlier evidence moves nothing back.
    assert_eq!(
        s.soft_delete(E, "1", 4_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::AlreadyDeleted
    );
    assert_eq!(get(s, E, "1").await.version.deleted_at_us, Some(9_000));
}

pub async fn no_resurrection_before_evidence_restore_after(s: &dyn RecordStore) {
    upsert(
        s,
        &rec(E, "1", 1_000, 2_000, &person("1", "A")),
        Strategy::Delta,
    )
    .await;
    let first = get(s, E, "1").await;
    assert_eq!(
        s.soft_delete(E, "1", 5_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::Deleted
    );
    let deleted = get(s, E, "1").await;
    // Fetched before (or at) the evidence: a late webhook or delta page, whatever its delta.
    for (delta, fetched) in [(9_000, 4_999), (1_000, 5_000), (99_000, 3_000)] {
        assert_eq!(
            upsert(
                s,
                &rec(E, "1", delta, fetched, &person("1", "late")),
                Strategy::Webhook
            )
            .await,
            WriteOutcome::Stale,
            "fetched {fetched} <= evidence"
        );
    }
    assert_eq!(get(s, E, "1").await, deleted, "no resurrection");
    assert!(all_live(s, E, shard_of("1"), 10).await.is_empty());
    // Fetched after the evidence: the source has it again (even with an older delta).
    let p = person("1", "back");
    assert_eq!(
        upsert(s, &rec(E, "1", 900, 5_001, &p), Strategy::Targeted).await,
        WriteOutcome::Restored
    );
    let got = get(s, E, "1").await;
    assert!(!got.is_deleted());
    assert_eq!(got.version.deleted_at_us, None);
    assert_eq!(got.version.delta_us, 900);
    assert_eq!(got.version.fetched_at_us, 5_001);
    assert_eq!(got.payload, p);
    assert_eq!(
        got.first_seen_us, first.first_seen_us,
        "first_seen kept across delete and restore"
    );
    assert_eq!(got.last_action, LastAction::Restore);
    assert_eq!(got.written_by, Strategy::Targeted);
    assert_eq!(
        all_live(s, E, shard_of("1"), 10).await,
        vec![IdVersion {
            id: "1".into(),
            delta_us: 900
        }],
        "live again"
    );
    // And the normal rule applies again afterwards.
    assert_eq!(
        upsert(
            s,
            &rec(E, "1", 901, 5_002, &person("1", "x")),
            Strategy::Delta
        )
        .await,
        WriteOutcome::Updated
    );
    assert_eq!(get(s, E, "1").await.last_action, LastAction::Update);
}

pub async fn upsert_many_keeps_input_order(s: &dyn RecordStore) {
    // Prepare 120 stored items, 30 of them soft-deleted.
    let seed: Vec<Record> = (0..120)
        .map(|i| {
            rec(
                E,
                &i.to_string(),
                10_000,
                20_000,
                &json!({"id": i, "v": "seed"}),
            )
        })
        .collect();
    let out = s.upsert_many(&seed, Strategy::Delta).await.expect("seed");
    assert_eq!(out, vec![WriteOutcome::Inserted; 120]);
    for i in (0..120).filter(|i| i % 4 == 3) {
        assert_eq!(
            s.soft_delete(E, &i.to_string(), 30_000, Strategy::Reconcile)
                .await
                .expect("delete"),
            DeleteOutcome::Deleted
        );
    }
    // A batch mixing every outcome, in an order that is not sorted by ID.
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for i in (0..300).rev() {
        let id = i.to_string();
        let (r, w) = if i >= 120 {
            (
                rec(E, &id, 10_000, 20_000, &json!({"id": i, "v": "new"})),
                WriteOutcome::Inserted,
            )
        } else {
            match i % 4 {
                0 => (
                    rec(E, &id, 10_000, 25_000, &json!({"id": i, "v": "seed"})),
                    WriteOutcome::Unchanged,
                ),
                1 => (
                    rec(E, &id, 9_999, 25_000, &json!({"id": i, "v": "old"})),
                    WriteOutcome::Stale,
                ),
                2 => (
                    rec(E, &id, 10_001, 25_000, &json!({"id": i, "v": "newer"})),
                    WriteOutcome::Updated,
                ),
                _ if i % 8 == 3 => (
                    rec(E, &id, 10_000, 30_001, &json!({"id": i, "v": "back"})),
                    WriteOutcome::Restored,
                ),
                _ => (
                    rec(E, &id, 10_000, 29_999, &json!({"id": i, "v": "late"})),
                    WriteOutcome::Stale,
                ),
            }
        };
        batch.push(r);
        want.push(w);
    }
    let got = s
        .upsert_many(&batch, Strategy::Delta)
        .await
        .expect("upsert_many");
    assert_eq!(got.len(), batch.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "outcome {i} (id {})", batch[i].id);
    }
    assert_eq!(
        s.upsert_many(&[], Strategy::Delta)
            .await
            .expect("empty batch"),
        vec![]
    );
    // Spot checks that what was written is what the outcome says.
    assert_eq!(get(s, E, "2").await.payload, json!({"id": 2, "v": "newer"}));
    assert_eq!(get(s, E, "2").await.last_action, LastAction::Update);
    assert_eq!(
        get(s, E, "4").await.last_action,
        LastAction::Insert,
        "unchanged: not rewritten"
    );
    assert_eq!(get(s, E, "1").await.payload, json!({"id": 1, "v": "seed"}));
    assert_eq!(get(s, E, "3").await.last_action, LastAction::Restore);
    assert!(get(s, E, "7").await.is_deleted());
    assert_eq!(get(s, E, "299").await.last_action, LastAction::Insert);
}

pub async fn live_ids_cover_all_shards_sorted_bytewise_and_page(s: &dyn RecordStore) {
    let batch: Vec<Record> = (0..300)
        .map(|i| rec(E, &i.to_string(), 1_000 + i, 2_000, &json!({"id": i})))
        .collect();
    let out = s
        .upsert_many(&batch, Strategy::Delta)
        .await
        .expect("upsert_many");
    assert_eq!(out, vec![WriteOutcome::Inserted; 300]);
    // A record of another entity never shows up.
    upsert(
        s,
        &rec("donations", "5", 1, 2, &json!({"id": 5})),
        Strategy::Delta,
    )
    .await;

    let mut seen = BTreeSet::new();
    let mut shards_used = 0;
    for shard in 0..ID_SHARDS {
        let mut want: Vec<IdVersion> = (0..300)
            .filter(|i| shard_of(&i.to_string()) == shard)
            .map(|i| IdVersion {
                id: i.to_string(),
                delta_us: 1_000 + i,
            })
            .collect();
        want.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
        if !want.is_empty() {
            shards_used += 1;
        }
        let one_page = all_live(s, E, shard, 1_000).await;
        assert!(
            is_sorted_bytewise(&one_page),
            "shard {shard} sorted bytewise"
        );
        assert_eq!(one_page, want, "shard {shard}, one page");
        for limit in [1, 7] {
            assert_eq!(
                all_live(s, E, shard, limit).await,
                want,
                "shard {shard}, pages of {limit}"
            );
        }
        for i in &one_page {
            assert!(seen.insert(i.id.clone()), "{} listed twice", i.id);
        }
    }
    assert_eq!(shards_used, ID_SHARDS, "300 IDs spread over every shard");
    assert_eq!(seen.len(), 300, "every ID listed once");
    // Bytewise, not numeric: "10" sorts before "9" wherever both share a shard; check the
    // order directly on a full page of a shard holding a one-digit and a two-digit ID.
    let shard9 = shard_of("9");
    let page = s.list_live_ids(E, shard9, None, 1_000).await.expect("list");
    let ids: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    // Exactly `limit` items left: the page is full and the next one is empty or absent.
    let n = page.items.len();
    let exact = s.list_live_ids(E, shard9, None, n).await.expect("list");
    assert_eq!(exact.items.len(), n);
    if let Some(next) = exact.next_after {
        let rest = s
            .list_live_ids(E, shard9, Some(&next), n)
            .await
            .expect("list");
        assert!(rest.items.is_empty() && rest.next_after.is_none());
    }
}

pub async fn live_ids_after_a_missing_id_and_other_entities(s: &dyn RecordStore) {
    let ids = ["b", "d", "f", "h"];
    // Put all four in one shard's view by listing each ID's own shard below.
    for id in ids {
        upsert(s, &rec(E, id, 1, 2, &json!({"id": id})), Strategy::Delta).await;
    }
    for id in ids {
        let shard = shard_of(id);
        let mut want: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|i| shard_of(i) == shard)
            .collect();
        want.sort();
        // `after` need not be a stored ID: "c" lists what sorts after it.
        let page = s
            .list_live_ids(E, shard, Some("c"), 100)
            .await
            .expect("list");
        let got: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
        let want_after: Vec<&str> = want.iter().copied().filter(|i| *i > "c").collect();
        assert_eq!(got, want_after, "after \"c\" in shard {shard}");
        assert!(page.next_after.is_none());
        // After the last ID: nothing.
        let page = s
            .list_live_ids(E, shard, Some("zzz"), 100)
            .await
            .expect("list");
        assert!(page.items.is_empty() && page.next_after.is_none());
    }
    // An entity with no records: every shard empty.
    for shard in 0..ID_SHARDS {
        let page = s
            .list_live_ids("donations", shard, None, 10)
            .await
            .expect("list");
        assert!(
            page.items.is_empty() && page.next_after.is_none(),
            "shard {shard}"
        );
    }
}

pub async fn unusual_ids_round_trip(s: &dyn RecordStore) {
    let ids = [
        "a/b",
        "ü",
        "with space",
        "x#y",
        "#",
        "%2F",
        "😀",
        "a\"b",
        "tab\there",
        "ä#/ é",
        "10",
        "9",
    ];
    for (n, id) in ids.iter().enumerate() {
        let p = json!({"id": id, "n": n});
        assert_eq!(
            upsert(s, &rec(E, id, 1_000, 2_000, &p), Strategy::Manual).await,
            WriteOutcome::Inserted,
            "{id:?}"
        );
    }
    let mut listed = Vec::new();
    for shard in 0..ID_SHARDS {
        let page = all_live(s, E, shard, 3).await;
        assert!(is_sorted_bytewise(&page), "shard {shard}");
        listed.extend(page.into_iter().map(|i| i.id));
    }
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    for (n, id) in ids.iter().enumerate() {
        let got = get(s, E, id).await;
        assert_eq!(got.id, *id);
        assert_eq!(got.entity, E);
        assert_eq!(got.payload, json!({"id": id, "n": n}));
        assert_eq!(got.written_by, Strategy::Manual);
    }
    // IDs containing '#' stay distinct items (the key is `<entity>#<id>`).
    assert_eq!(
        s.soft_delete(E, "#", 3_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::Deleted
    );
    assert!(!get(s, E, "x#y").await.is_deleted());
    assert!(get(s, E, "#").await.is_deleted());
}

pub async fn payload_types_round_trip(s: &dyn RecordStore) {
    let p = json!({
        "id": "t1",
        "string": "text with \"quotes\" and \\ and ünïcödé 😀",
        "empty_string": "",
        "int": 42,
        "negative": -17,
        "big": 9_007_199_254_740_993_u64,
        "max_u64": u64::MAX,
        "min_i64": i64::MIN,
        "float": 1.5,
        "small": 0.001,
        "neg_float": -2.25,
        "yes": true,
        "no": false,
        "nothing": null,
        "list": [1, "two", null, false, {"three": 3}, [4, [5]]],
        "empty_list": [],
        "empty_object": {},
        "nested": {"a": {"b": {"c": {"d": "deep"}}}},
        "numbers_as_strings": ["001", "1e3", "-0"],
    });
    upsert(s, &rec(E, "t1", 1, 2, &p), Strategy::Delta).await;
    assert_eq!(get(s, E, "t1").await.payload, p);
    // A bare top-level array and a scalar are JSON too.
    for (id, p) in [
        ("arr", json!([1, 2, {"x": "y"}])),
        ("str", json!("just a string")),
        ("num", json!(7)),
    ] {
        upsert(s, &rec(E, id, 1, 2, &p), Strategy::Delta).await;
        assert_eq!(get(s, E, id).await.payload, p, "{id}");
    }
}

/// Compressible text of about `bytes` bytes.
fn prose(bytes: usize) -> String {
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
    ];
    let mut out = String::with_capacity(bytes + 16);
    let mut i = 0usize;
    while out.len() < bytes {
        out.push_str(words[(i * 7 + i / 3) % words.len()]);
        out.push(' ');
        i += 1;
    }
    out
}

/// Text that does not compress much: pseudo-random characters from a 64-symbol alphabet.
fn noise(bytes: usize, mut seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes);
    while out.len() < bytes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.push(ALPHABET[(seed % 64) as usize] as char);
    }
    out
}

pub async fn large_payloads_round_trip(s: &dyn RecordStore) {
    // ~300 KB of many fields: stored as it is (DynamoDB: a native map).
    let fields: serde_json::Map<String, Value> = (0..3_000)
        .map(|i| (format!("field_{i:05}"), json!(prose(80))))
        .collect();
    let p300 = Value::Object(fields);
    // ~380 KB and ~1.5 MB of compressible JSON: over the inline limit, fits compressed.
    let p380 = json!({"id": "big", "blob": prose(380 * 1024), "n": 1});
    let items: Vec<Value> = (0..6_000)
        .map(|i| json!({"i": i, "text": prose(200), "flag": i % 2 == 0}))
        .collect();
    let p1500 = json!({"id": "bigger", "items": items});
    // ~340 KB of small numbers: fine as JSON, but a DynamoDB list of numbers is larger than its
    // JSON text (per-element overhead), so the adapter must fall back rather than fail.
    let p_nums = json!({"id": "nums", "zeros": vec![0; 170 * 1024]});
    for (id, p) in [
        ("p300", &p300),
        ("p380", &p380),
        ("p1500", &p1500),
        ("nums", &p_nums),
    ] {
        let r = rec(E, id, 1_000, 2_000, p);
        assert_eq!(
            upsert(s, &r, Strategy::Delta).await,
            WriteOutcome::Inserted,
            "{id}"
        );
        let got = get(s, E, id).await;
        assert!(got.payload == *p, "{id} round-trips");
        assert_eq!(got.version.hash, r.version.hash);
        // And the version rule still works on large items.
        assert_eq!(
            upsert(s, &r, Strategy::Delta).await,
            WriteOutcome::Unchanged,
            "{id}"
        );
        let small = json!({"id": id, "now": "small"});
        assert_eq!(
            upsert(s, &rec(E, id, 1_001, 2_001, &small), Strategy::Delta).await,
            WriteOutcome::Updated
        );
        assert_eq!(get(s, E, id).await.payload, small, "{id}: large to small");
        assert_eq!(
            upsert(s, &rec(E, id, 1_002, 2_002, p), Strategy::Delta).await,
            WriteOutcome::Updated
        );
        assert!(get(s, E, id).await.payload == *p, "{id}: small to large");
    }
}

pub async fn too_large_payload_is_rejected(s: &dyn RecordStore) {
    let p = json!({"id": "huge", "blob": noise(2_200_000, 0x9E37_79B9_7F4A_7C15)});
    let r = rec(E, "huge", 1_000, 2_000, &p);
    match s.upsert(&r, Strategy::Delta).await {
        Err(StoreError::TooLarge { key, bytes }) => {
            assert!(key.contains("huge"), "the key names the item: {key}");
            assert!(bytes > 390 * 1024, "bytes {bytes} is the compressed size");
        }
        other => panic!("want TooLarge, got {other:?}"),
    }
    assert!(
        s.get(E, "huge").await.expect("get").is_none(),
        "nothing stored"
    );
    // An existing item is not replaced by a too-large version either.
    let small = json!({"id": "huge", "v": 1});
    upsert(s, &rec(E, "huge", 1_000, 2_000, &small), Strategy::Delta).await;
    let r2 = rec(E, "huge", 1_001, 2_001, &p);
    assert!(matches!(
        s.upsert(&r2, Strategy::Delta).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(get(s, E, "huge").await.payload, small);
}

pub async fn concurrent_conflicting_upserts_keep_the_highest_version(s: &dyn RecordStore) {
    // Twenty writers of one ID, each with another version, all at once, in scrambled order.
    let records: Vec<Record> = (1..=20)
        .map(|k: i64| (k * 7) % 20 + 1)
        .map(|v| {
            rec(
                E,
                "hot",
                1_000 + v,
                2_000 + v,
                &json!({"id": "hot", "v": v}),
            )
        })
        .collect();
    let outcomes = join_all(records.iter().map(|r| s.upsert(r, Strategy::Webhook))).await;
    let outcomes: Vec<WriteOutcome> = outcomes.into_iter().map(|o| o.expect("upsert")).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Inserted)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            WriteOutcome::Inserted | WriteOutcome::Updated | WriteOutcome::Stale
        )),
        "{outcomes:?}"
    );
    let top = records
        .iter()
        .position(|r| r.version.delta_us == 1_020)
        .expect("v20");
    assert!(
        outcomes[top].wrote(),
        "the highest version was written: {:?}",
        outcomes[top]
    );
    let got = get(s, E, "hot").await;
    assert_eq!(got.version.delta_us, 1_020);
    assert_eq!(got.payload, json!({"id": "hot", "v": 20}));
    // Many upsert_many batches racing on the same IDs converge the same way.
    let batches: Vec<Vec<Record>> = (1..=8)
        .map(|v: i64| {
            (0..20)
                .map(|i| {
                    rec(
                        E,
                        &format!("k{i}"),
                        100 + v,
                        200 + v,
                        &json!({"i": i, "v": v}),
                    )
                })
                .collect()
        })
        .collect();
    let results = join_all(batches.iter().map(|b| s.upsert_many(b, Strategy::Delta))).await;
    for r in results {
        assert_eq!(r.expect("upsert_many").len(), 20);
    }
    for i in 0..20 {
        let got = get(s, E, &format!("k{i}")).await;
        assert_eq!(got.version.delta_us, 108, "k{i}");
        assert_eq!(got.payload, json!({"i": i, "v": 8}));
    }
}

pub async fn concurrent_identical_upserts_insert_once(s: &dyn RecordStore) {
    let r = rec(E, "same", 1_000, 2_000, &json!({"id": "same"}));
    let outcomes = join_all((0..20).map(|_| s.upsert(&r, Strategy::Delta))).await;
    let outcomes: Vec<WriteOutcome> = outcomes.into_iter().map(|o| o.expect("upsert")).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Inserted)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Unchanged)
            .count(),
        19,
        "{outcomes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// regressions (`write_regressed`, `core::decide_regression`)
// ---------------------------------------------------------------------------------------------

/// The live-ID index's version of `id`.
async fn indexed_version(s: &dyn RecordStore, id: &str) -> Option<Micros> {
    all_live(s, E, shard_of(id), 1_000)
        .await
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.delta_us)
}

pub async fn write_regressed_lowers_the_version_over_the_copy_compared_only(s: &dyn RecordStore) {
    let newer = rec(E, "r1", 2_000, 10_000, &person("r1", "Ann (edited)"));
    assert_eq!(
        upsert(s, &newer, Strategy::Webhook).await,
        WriteOutcome::Inserted
    );
    let before = get(s, E, "r1").await;
    let compared = before.version;
    // The source went back to an older version with other content; fetched later.
    let older = rec(E, "r1", 1_000, 10_001, &person("r1", "Ann"));
    // Every ordinary write path calls it stale (I2)...
    assert_eq!(
        upsert(s, &older, Strategy::Targeted).await,
        WriteOutcome::Stale
    );
    // ...the regression write does not.
    let t0 = now_us();
    assert_eq!(
        s.write_regressed(&older, &compared)
            .await
            .expect("write_regressed"),
        RegressOutcome::Regressed
    );
    let got = get(s, E, "r1").await;
    assert_eq!(got.version.delta_us, 1_000);
    assert_eq!(got.version.fetched_at_us, 10_001);
    assert_eq!(got.version.hash, older.version.hash);
    assert_eq!(got.version.deleted_at_us, None);
    assert_eq!(got.payload, person("r1", "Ann"));
    assert_eq!(got.last_action, LastAction::Regressed);
    assert_eq!(got.written_by, Strategy::Reconcile);
    assert_eq!(got.first_seen_us, before.first_seen_us, "first_seen kept");
    assert!(got.last_synced_us >= t0, "last_synced is the write's");
    assert_eq!(
        indexed_version(s, "r1").await,
        Some(1_000),
        "the index follows"
    );
    // The compared copy is gone now: the same write again changes nothing.
    let again = rec(E, "r1", 500, 10_002, &person("r1", "Ann (older)"));
    assert_eq!(
        s.write_regressed(&again, &compared)
            .await
            .expect("write_regressed"),
        RegressOutcome::Moved
    );
    assert_eq!(get(s, E, "r1").await, got);
    // And the ordinary rule holds from the regressed copy on: a newer version wins again.
    let next = rec(E, "r1", 1_500, 10_003, &person("r1", "Ann (again)"));
    assert_eq!(
        upsert(s, &next, Strategy::Delta).await,
        WriteOutcome::Updated
    );
    assert_eq!(get(s, E, "r1").await.last_action, LastAction::Update);
}

pub async fn write_regressed_writes_nothing_unless_the_rule_allows_it(s: &dyn RecordStore) {
    let stored = rec(E, "r2", 2_000, 10_000, &person("r2", "Bo (edited)"));
    assert_eq!(
        upsert(s, &stored, Strategy::Delta).await,
        WriteOutcome::Inserted
    );
    let before = get(s, E, "r2").await;
    let compared = before.version;
    let other = person("r2", "Bo");
    let same = person("r2", "Bo (edited)");
    let mut moved = compared;
    moved.fetched_at_us += 1;
    let mut other_hash = compared;
    other_hash.hash = rec(E, "r2", 2_000, 10_000, &other).version.hash;
    let cases: &[(Record, shared::model::StoredVersion, RegressOutcome)] = &[
        // Sent before, or when, the stored copy's fetch.
        (
            rec(E, "r2", 1_000, 10_000, &other),
            compared,
            RegressOutcome::FetchedBefore,
        ),
        (
            rec(E, "r2", 1_000, 9_999, &other),
            compared,
            RegressOutcome::FetchedBefore,
        ),
        // Same content, only an older version.
        (
            rec(E, "r2", 1_000, 10_001, &same),
            compared,
            RegressOutcome::Unchanged,
        ),
        // Not below the stored version: the ordinary rule's.
        (
            rec(E, "r2", 2_000, 10_001, &other),
            compared,
            RegressOutcome::NotNewer,
        ),
        (
            rec(E, "r2", 3_000, 10_001, &other),
            compared,
            RegressOutcome::NotNewer,
        ),
        // Compared against another copy than the stored one.
        (
            rec(E, "r2", 1_000, 10_001, &other),
            moved,
            RegressOutcome::Moved,
        ),
        (
            rec(E, "r2", 1_000, 10_001, &other),
            other_hash,
            RegressOutcome::Moved,
        ),
    ];
    for (r, cmp, want) in cases {
        assert_eq!(
            s.write_regressed(r, cmp).await.expect("write_regressed"),
            *want,
            "{:?} over {cmp:?}",
            r.version
        );
        assert_eq!(
            get(s, E, "r2").await,
            before,
            "nothing written for {want:?}"
        );
    }
    // Never over a deleted copy, even the one compared; never where nothing is stored.
    assert_eq!(
        s.soft_delete(E, "r2", 20_000, Strategy::Reconcile)
            .await
            .expect("delete"),
        DeleteOutcome::Deleted
    );
    let deleted = get(s, E, "r2").await;
    let r = rec(E, "r2", 1_000, 30_000, &other);
    for cmp in [compared, deleted.version] {
        assert_eq!(
            s.write_regressed(&r, &cmp).await.expect("write_regressed"),
            RegressOutcome::Moved
        );
    }
    assert_eq!(get(s, E, "r2").await, deleted);
    let absent = rec(E, "absent", 1_000, 30_000, &other);
    assert_eq!(
        s.write_regressed(&absent, &compared)
            .await
            .expect("write_regressed"),
        RegressOutcome::Moved
    );
    assert!(s.get(E, "absent").await.expect("get").is_none());
}

pub async fn a_concurrent_newer_write_wins_over_a_regression(s: &dyn RecordStore) {
    // Each ID: a regression and a newer write race; whichever lands first, the newer write is
    // what stays (the regression is conditional on the copy it compared).
    let ids: Vec<String> = (0..12).map(|i| format!("race{i}")).collect();
    for id in &ids {
        let r = rec(E, id, 2_000, 10_000, &json!({"id": id, "v": "stored"}));
        assert_eq!(upsert(s, &r, Strategy::Delta).await, WriteOutcome::Inserted);
    }
    let mut compared = Vec::new();
    for id in &ids {
        compared.push(get(s, E, id).await.version);
    }
    let older: Vec<Record> = ids
        .iter()
        .map(|id| rec(E, id, 1_000, 20_000, &json!({"id": id, "v": "older"})))
        .collect();
    let newest: Vec<Record> = ids
        .iter()
        .map(|id| rec(E, id, 3_000, 20_001, &json!({"id": id, "v": "newest"})))
        .collect();
    let (regressions, writes) = futures::future::join(
        join_all(
            older
                .iter()
                .zip(&compared)
                .map(|(r, c)| s.write_regressed(r, c)),
        ),
        join_all(newest.iter().map(|r| s.upsert(r, Strategy::Webhook))),
    )
    .await;
    for (id, (reg, w)) in ids.iter().zip(regressions.into_iter().zip(writes)) {
        let (reg, w) = (reg.expect("write_regressed"), w.expect("upsert"));
        assert!(
            matches!(reg, RegressOutcome::Regressed | RegressOutcome::Moved),
            "{id}: {reg:?}"
        );
        assert_eq!(w, WriteOutcome::Updated, "{id}");
        let got = get(s, E, id).await;
        assert_eq!(got.version.delta_us, 3_000, "{id}");
        assert_eq!(got.payload, json!({"id": id, "v": "newest"}), "{id}");
    }
}

// ---------------------------------------------------------------------------------------------
// erasure and purge
// ---------------------------------------------------------------------------------------------

/// What an erased record looks like to every reader: a marker holding nothing of the record,
/// deleted, out of the live index, `erased` in its sync times.
async fn assert_erased(s: &dyn RecordStore, id: &str, erased_us: Micros, by: &str) {
    let got = get(s, E, id).await;
    assert_eq!(
        got.erased,
        Some(Erasure {
            erased_us,
            erased_by: by.to_owned()
        }),
        "{id} is erased"
    );
    assert!(got.is_erased() && got.is_deleted());
    assert_eq!((got.entity.as_str(), got.id.as_str()), (E, id));
    assert_eq!(got.payload, Value::Null, "no data of the record");
    assert_eq!(
        got.version,
        shared::model::StoredVersion::erased_marker(erased_us)
    );
    assert_eq!(got.version.deleted_at_us, Some(erased_us));
    assert_eq!(got.last_action, LastAction::Erased);
    assert_eq!(got.written_by, Strategy::Manual);
    assert_eq!(
        (got.first_seen_us, got.last_synced_us),
        (erased_us, erased_us)
    );
    assert_eq!(indexed_version(s, id).await, None, "not live");
    let times = s.sync_times(E, &[id.to_owned()]).await.expect("sync_times");
    assert!(times[id].erased, "sync_times says erased");
}

pub async fn erase_refuses_every_write_path_until_lifted(s: &dyn RecordStore) {
    let first = rec(E, "e1", 1_000, 10_000, &person("e1", "Eve"));
    assert_eq!(
        upsert(s, &first, Strategy::Delta).await,
        WriteOutcome::Inserted
    );
    let compared = get(s, E, "e1").await.version;
    assert_eq!(
        s.erase(E, "e1", 20_000, "dpo@example.org")
            .await
            .expect("erase"),
        EraseOutcome::Erased
    );
    assert_erased(s, "e1", 20_000, "dpo@example.org").await;
    // Every write path refuses it, whatever the version or the fetch time.
    for (delta, fetched) in [(2_000, 30_000), (500, 30_000), (1_000, 10_000), (9_999, 5)] {
        let r = rec(E, "e1", delta, fetched, &person("e1", "Eve (again)"));
        for by in [Strategy::Delta, Strategy::Webhook, Strategy::Targeted] {
            assert_eq!(upsert(s, &r, by).await, WriteOutcome::Suppressed);
        }
        // In a batch beside other records, too: the others are written.
        let other = rec(
            E,
            &format!("n{delta}"),
            delta,
            fetched,
            &json!({"n": delta}),
        );
        assert_eq!(
            s.upsert_many(&[other, r.clone()], Strategy::Delta)
                .await
                .expect("upsert_many"),
            [WriteOutcome::Inserted, WriteOutcome::Suppressed]
        );
    }
    for evidence in [5, 20_000, 40_000] {
        assert_eq!(
            s.soft_delete(E, "e1", evidence, Strategy::Webhook)
                .await
                .expect("soft delete"),
            DeleteOutcome::Suppressed
        );
    }
    let older = rec(E, "e1", 500, 50_000, &person("e1", "Eve (old)"));
    assert_eq!(
        s.write_regressed(&older, &compared)
            .await
            .expect("write_regressed"),
        RegressOutcome::Moved
    );
    let marker = get(s, E, "e1").await.version;
    assert_eq!(
        s.write_regressed(&older, &marker)
            .await
            .expect("write_regressed over the marker"),
        RegressOutcome::Moved
    );
    assert_erased(s, "e1", 20_000, "dpo@example.org").await;
    // Erasing again keeps the first marker.
    assert_eq!(
        s.erase(E, "e1", 60_000, "someone else")
            .await
            .expect("erase again"),
        EraseOutcome::AlreadyErased(Erasure {
            erased_us: 20_000,
            erased_by: "dpo@example.org".into()
        })
    );
    assert_erased(s, "e1", 20_000, "dpo@example.org").await;
    // Lifted: the marker is gone, and the next sync writes the record afresh.
    assert_eq!(
        s.lift_erasure(E, "e1").await.expect("lift"),
        LiftOutcome::Lifted
    );
    assert!(s.get(E, "e1").await.expect("get").is_none());
    assert_eq!(
        s.lift_erasure(E, "e1").await.expect("lift again"),
        LiftOutcome::NotErased
    );
    let back = rec(E, "e1", 500, 70_000, &person("e1", "Eve (back)"));
    assert_eq!(
        upsert(s, &back, Strategy::Delta).await,
        WriteOutcome::Inserted
    );
    let got = get(s, E, "e1").await;
    assert_eq!(
        (got.erased, got.payload),
        (None, person("e1", "Eve (back)"))
    );
    assert_eq!(indexed_version(s, "e1").await, Some(500));
    // Lifting leaves a live or a soft-deleted item alone.
    assert_eq!(
        s.lift_erasure(E, "e1").await.expect("lift a live item"),
        LiftOutcome::NotErased
    );
    assert_eq!(get(s, E, "e1").await.payload, person("e1", "Eve (back)"));
}

pub async fn erase_of_an_absent_or_deleted_record_still_suppresses(s: &dyn RecordStore) {
    // Never stored: the marker alone keeps it out.
    assert_eq!(
        s.erase(E, "ghost", 1_000, "ops").await.expect("erase"),
        EraseOutcome::Marked
    );
    assert_erased(s, "ghost", 1_000, "ops").await;
    let r = rec(E, "ghost", 5_000, 9_000, &person("ghost", "Gus"));
    assert_eq!(
        upsert(s, &r, Strategy::Webhook).await,
        WriteOutcome::Suppressed
    );
    assert_eq!(
        s.soft_delete(E, "ghost", 9_000, Strategy::Webhook)
            .await
            .expect("soft delete"),
        DeleteOutcome::Suppressed
    );
    // Soft-deleted, then erased: a copy fetched after the deletion would restore a tombstone,
    // never a marker.
    let d = rec(E, "del", 1_000, 1_000, &person("del", "Dee"));
    assert_eq!(upsert(s, &d, Strategy::Delta).await, WriteOutcome::Inserted);
    assert_eq!(
        s.soft_delete(E, "del", 2_000, Strategy::Reconcile)
            .await
            .expect("soft delete"),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        s.erase(E, "del", 3_000, "ops").await.expect("erase"),
        EraseOutcome::Erased
    );
    let later = rec(E, "del", 1_000, 4_000, &person("del", "Dee"));
    assert_eq!(
        upsert(s, &later, Strategy::Targeted).await,
        WriteOutcome::Suppressed
    );
    assert_erased(s, "del", 3_000, "ops").await;
    // After the lift the record comes from the next sync.
    assert_eq!(
        s.lift_erasure(E, "ghost").await.expect("lift"),
        LiftOutcome::Lifted
    );
    assert_eq!(
        upsert(s, &r, Strategy::Webhook).await,
        WriteOutcome::Inserted
    );
    // Other entities and IDs are untouched by a marker.
    let other = rec("donations", "ghost", 1, 1, &json!({"amount": 1}));
    assert_eq!(
        upsert(s, &other, Strategy::Delta).await,
        WriteOutcome::Inserted
    );
}

pub async fn erase_between_a_read_and_the_write_wins(s: &dyn RecordStore) {
    // What each writer read first: the record live at version 1.
    let v1 = rec(E, "rw", 1_000, 1_000, &person("rw", "Rae"));
    assert_eq!(
        upsert(s, &v1, Strategy::Delta).await,
        WriteOutcome::Inserted
    );
    let read = get(s, E, "rw").await;
    // The erasure lands after the read...
    assert_eq!(
        s.erase(E, "rw", 2_000, "ops").await.expect("erase"),
        EraseOutcome::Erased
    );
    // ...and each write, decided on the earlier read (an update, a restore-worthy fetch, a
    // delete, a regression of the copy read), is refused in the write itself.
    let v2 = rec(E, "rw", 3_000, 3_000, &person("rw", "Rae v2"));
    assert_eq!(
        upsert(s, &v2, Strategy::Delta).await,
        WriteOutcome::Suppressed
    );
    assert_eq!(
        s.soft_delete(E, "rw", 4_000, Strategy::Webhook)
            .await
            .expect("soft delete"),
        DeleteOutcome::Suppressed
    );
    let older = rec(E, "rw", 500, 5_000, &person("rw", "Rae v0"));
    assert_eq!(
        s.write_regressed(&older, &read.version)
            .await
            .expect("write_regressed"),
        RegressOutcome::Moved
    );
    assert_erased(s, "rw", 2_000, "ops").await;
}

pub async fn erase_racing_concurrent_upserts_always_ends_erased(s: &dyn RecordStore) {
    // Writers race an erasure on each ID; whichever lands first, the record ends erased: a write
    // before it is replaced, a write after it refused.
    let ids: Vec<String> = (0..8).map(|i| format!("er{i}")).collect();
    let writes = ids.iter().flat_map(|id| {
        (1..=6).map(move |v| {
            let r = rec(E, id, v * 1_000, v * 1_000, &json!({"id": id, "v": v}));
            async move { s.upsert(&r, Strategy::Webhook).await.expect("upsert") }
        })
    });
    let erases = ids
        .iter()
        .map(|id| async move { s.erase(E, id, 3_500, "ops").await.expect("erase") });
    let (written, erased) = tokio::join!(join_all(writes), join_all(erases));
    assert!(
        written.iter().all(|o| matches!(
            o,
            WriteOutcome::Inserted
                | WriteOutcome::Updated
                | WriteOutcome::Stale
                | WriteOutcome::Suppressed
        )),
        "{written:?}"
    );
    assert!(
        erased
            .iter()
            .all(|o| matches!(o, EraseOutcome::Erased | EraseOutcome::Marked)),
        "{erased:?}"
    );
    for id in &ids {
        assert_erased(s, id, 3_500, "ops").await;
    }
}

pub async fn purge_removes_only_old_soft_deleted_items(s: &dyn RecordStore) {
    for id in ["old", "old2", "new", "live", "restored", "erased"] {
        let r = rec(E, id, 1_000, 1_000, &person(id, id));
        assert_eq!(upsert(s, &r, Strategy::Delta).await, WriteOutcome::Inserted);
    }
    let d = rec("donations", "old", 1_000, 1_000, &json!({"amount": 1}));
    assert_eq!(upsert(s, &d, Strategy::Delta).await, WriteOutcome::Inserted);
    for (entity, id, evidence) in [
        (E, "old", 10_000),
        (E, "old2", 11_000),
        (E, "new", 90_000),
        (E, "restored", 10_000),
        ("donations", "old", 10_000),
    ] {
        assert_eq!(
            s.soft_delete(entity, id, evidence, Strategy::Reconcile)
                .await
                .expect("soft delete"),
            DeleteOutcome::Deleted
        );
    }
    // The source had it again: restored before the purge.
    let back = rec(E, "restored", 1_000, 20_000, &person("restored", "back"));
    assert_eq!(
        upsert(s, &back, Strategy::Targeted).await,
        WriteOutcome::Restored
    );
    // An erasure older than the cutoff: a marker, never purged.
    assert_eq!(
        s.erase(E, "erased", 5_000, "ops").await.expect("erase"),
        EraseOutcome::Erased
    );
    let cutoff = 50_000;
    // A dry run counts and removes nothing.
    let dry = s
        .purge_deleted(Some(E), cutoff, None, true)
        .await
        .expect("dry run");
    assert_eq!((dry.matched, dry.purged, dry.changed), (2, 0, 0));
    assert!(dry.scanned >= dry.matched);
    assert!(get(s, E, "old").await.is_deleted());
    // A limit stops after that many.
    let one = s
        .purge_deleted(Some(E), cutoff, Some(1), false)
        .await
        .expect("purge one");
    assert_eq!((one.matched, one.purged), (1, 1));
    let rest = s
        .purge_deleted(Some(E), cutoff, None, false)
        .await
        .expect("purge the rest");
    assert_eq!((rest.matched, rest.purged, rest.changed), (1, 1, 0));
    for gone in ["old", "old2"] {
        assert!(
            s.get(E, gone).await.expect("get").is_none(),
            "{gone} purged"
        );
    }
    // Kept: deleted after the cutoff, live, restored, erased, another entity's.
    assert!(get(s, E, "new").await.is_deleted());
    assert!(!get(s, E, "live").await.is_deleted());
    assert_eq!(
        get(s, E, "restored").await.payload,
        person("restored", "back")
    );
    assert_erased(s, "erased", 5_000, "ops").await;
    assert!(get(s, "donations", "old").await.is_deleted());
    // Nothing left to purge of the entity; then every entity's.
    let none = s
        .purge_deleted(Some(E), cutoff, None, false)
        .await
        .expect("purge again");
    assert_eq!((none.matched, none.purged), (0, 0));
    let all = s
        .purge_deleted(None, cutoff, None, false)
        .await
        .expect("purge every entity");
    assert_eq!((all.matched, all.purged), (1, 1));
    assert!(s.get("donations", "old").await.expect("get").is_none());
    // A purged record is simply absent: the next sync inserts it afresh.
    let again = rec(E, "old", 2_000, 100_000, &person("old", "again"));
    assert_eq!(
        upsert(s, &again, Strategy::Delta).await,
        WriteOutcome::Inserted
    );
}

// ---------------------------------------------------------------------------------------------
// control
// ---------------------------------------------------------------------------------------------

const SEC: Micros = 1_000_000;

pub async fn lease_acquire_hold_renew_and_take_over(c: &dyn ControlStore) {
    let t = now_us();
    let fresh = c.job_state(E, JobKind::Delta).await.expect("state");
    assert_eq!(
        fresh,
        shared::ports::JobState::default(),
        "unknown job: empty state"
    );

    let a = c
        .acquire_lease(E, JobKind::Delta, "run-a", t, 60 * SEC)
        .await
        .expect("acquire");
    let LeaseOutcome::Acquired {
        token: ta,
        expires_us,
    } = a
    else {
        panic!("a free lease is acquired: {a:?}");
    };
    assert_eq!(expires_us, t + 60 * SEC);
    assert!(ta >= 1);
    // Another run while it is held.
    let b = c
        .acquire_lease(E, JobKind::Delta, "run-b", t + 10 * SEC, 60 * SEC)
        .await
        .expect("acquire");
    assert_eq!(
        b,
        LeaseOutcome::Held {
            holder: "run-a".into(),
            expires_us: t + 60 * SEC
        }
    );
    // Leases are per (entity, kind).
    assert!(matches!(
        c.acquire_lease(E, JobKind::Reconcile, "run-b", t, 60 * SEC)
            .await
            .expect("acquire"),
        LeaseOutcome::Acquired { .. }
    ));
    assert!(matches!(
        c.acquire_lease("donations", JobKind::Delta, "run-b", t, 60 * SEC)
            .await
            .expect("acquire"),
        LeaseOutcome::Acquired { .. }
    ));
    // The same holder again: re-acquired (extended), same token.
    let a2 = c
        .acquire_lease(E, JobKind::Delta, "run-a", t + 20 * SEC, 60 * SEC)
        .await
        .expect("acquire");
    assert_eq!(
        a2,
        LeaseOutcome::Acquired {
            token: ta,
            expires_us: t + 80 * SEC
        }
    );
    let st = c.job_state(E, JobKind::Delta).await.expect("state");
    assert_eq!(st.lease_holder.as_deref(), Some("run-a"));
    assert_eq!(st.lease_expires_us, Some(t + 80 * SEC));
    assert_eq!(st.lease_token, ta);
    // Still held just before expiry, free at it.
    assert!(matches!(
        c.acquire_lease(E, JobKind::Delta, "run-b", t + 80 * SEC - 1, 60 * SEC)
            .await
            .expect("acquire"),
        LeaseOutcome::Held { .. }
    ));
    let b2 = c
        .acquire_lease(E, JobKind::Delta, "run-b", t + 80 * SEC, 60 * SEC)
        .await
        .expect("acquire");
    let LeaseOutcome::Acquired {
        token: tb,
        expires_us,
    } = b2
    else {
        panic!("an expired lease is taken over: {b2:?}");
    };
    assert!(tb > ta, "a new holder gets a greater token ({tb} > {ta})");
    assert_eq!(expires_us, t + 140 * SEC);
    let st = c.job_state(E, JobKind::Delta).await.expect("state");
    assert_eq!(st.lease_holder.as_deref(), Some("run-b"));
    assert_eq!(st.lease_token, tb);
    // The old holder is now the other one.
    assert_eq!(
        c.acquire_lease(E, JobKind::Delta, "run-a", t + 90 * SEC, 60 * SEC)
            .await
            .expect("acquire"),
        LeaseOutcome::Held {
            holder: "run-b".into(),
            expires_us: t + 140 * SEC
        }
    );
}

pub async fn save_cursor_is_fenced_by_the_lease(c: &dyn ControlStore) {
    let t = now_us();
    let k = JobKind::Delta;
    // No lease at all.
    let err = c
        .save_cursor(E, k, "run-a", t, 60 * SEC, "c0")
        .await
        .expect_err("no lease");
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");

    let LeaseOutcome::Acquired { token, .. } = c
        .acquire_lease(E, k, "run-a", t, 60 * SEC)
        .await
        .expect("acquire")
    else {
        panic!("acquired");
    };
    c.save_cursor(E, k, "run-a", t + 5 * SEC, 60 * SEC, "cursor-1")
        .await
        .expect("holder saves");
    let st = c.job_state(E, k).await.expect("state");
    assert_eq!(st.cursor.as_deref(), Some("cursor-1"));
    assert_eq!(st.cursor_updated_us, Some(t + 5 * SEC));
    assert_eq!(st.lease_holder.as_deref(), Some("run-a"));
    assert_eq!(
        st.lease_expires_us,
        Some(t + 65 * SEC),
        "saving extends the lease"
    );
    assert_eq!(st.lease_token, token);
    // Another run cannot move it.
    let err = c
        .save_cursor(E, k, "run-b", t + 6 * SEC, 60 * SEC, "evil")
        .await
        .expect_err("not holder");
    match err {
        StoreError::LeaseLost { holder, .. } => assert_eq!(holder, "run-b"),
        other => panic!("want LeaseLost, got {other:?}"),
    }
    // The holder after its lease expired cannot either (at expiry counts as expired).
    let err = c
        .save_cursor(E, k, "run-a", t + 65 * SEC, 60 * SEC, "late")
        .await
        .expect_err("expired");
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert_eq!(
        c.job_state(E, k).await.expect("state").cursor.as_deref(),
        Some("cursor-1")
    );
    // Taken over: the new holder saves, the old one is fenced off even before it notices.
    assert!(matches!(
        c.acquire_lease(E, k, "run-b", t + 66 * SEC, 60 * SEC)
            .await
            .expect("acquire"),
        LeaseOutcome::Acquired { .. }
    ));
    c.save_cursor(E, k, "run-b", t + 67 * SEC, 60 * SEC, "cursor-2")
        .await
        .expect("new holder saves");
    let err = c
        .save_cursor(E, k, "run-a", t + 68 * SEC, 600 * SEC, "stale")
        .await
        .expect_err("fenced");
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let st = c.job_state(E, k).await.expect("state");
    assert_eq!(st.cursor.as_deref(), Some("cursor-2"));
    assert_eq!(st.cursor_updated_us, Some(t + 67 * SEC));
    assert_eq!(st.lease_holder.as_deref(), Some("run-b"));
    assert_eq!(st.lease_expires_us, Some(t + 127 * SEC));
    // The cursor of another kind is another item.
    assert_eq!(
        c.job_state(E, JobKind::Reconcile)
            .await
            .expect("state")
            .cursor,
        None
    );
}

pub async fn release_lets_another_acquire(c: &dyn ControlStore) {
    let t = now_us();
    let k = JobKind::Reconcile;
    // Releasing what was never taken is a no-op.
    c.release_lease(E, k, "nobody")
        .await
        .expect("release nothing");
    let LeaseOutcome::Acquired { token: ta, .. } = c
        .acquire_lease(E, k, "run-a", t, 60 * SEC)
        .await
        .expect("acquire")
    else {
        panic!("acquired");
    };
    c.save_cursor(E, k, "run-a", t, 60 * SEC, "kept")
        .await
        .expect("save");
    // Someone else's release changes nothing.
    c.release_lease(E, k, "run-b")
        .await
        .expect("release by non-holder");
    assert!(matches!(
        c.acquire_lease(E, k, "run-b", t + SEC, 60 * SEC)
            .await
            .expect("acquire"),
        LeaseOutcome::Held { .. }
    ));
    c.release_lease(E, k, "run-a").await.expect("release");
    let st = c.job_state(E, k).await.expect("state");
    assert_eq!(st.lease_holder, None);
    assert_eq!(st.lease_expires_us, None);
    assert_eq!(
        st.cursor.as_deref(),
        Some("kept"),
        "release keeps the cursor"
    );
    // Released: the old holder can no longer save.
    assert!(matches!(
        c.save_cursor(E, k, "run-a", t + SEC, 60 * SEC, "x").await,
        Err(StoreError::LeaseLost { .. })
    ));
    // Long before the old expiry, another run takes it, with a greater token.
    let b = c
        .acquire_lease(E, k, "run-b", t + 2 * SEC, 60 * SEC)
        .await
        .expect("acquire");
    let LeaseOutcome::Acquired { token: tb, .. } = b else {
        panic!("a released lease is free: {b:?}");
    };
    assert!(tb > ta);
    c.release_lease(E, k, "run-a")
        .await
        .expect("late release by the old holder");
    assert_eq!(
        c.job_state(E, k)
            .await
            .expect("state")
            .lease_holder
            .as_deref(),
        Some("run-b")
    );
}

pub async fn concurrent_acquires_have_one_winner(c: &dyn ControlStore) {
    let t = now_us();
    let holders: Vec<String> = (0..10).map(|i| format!("run-{i}")).collect();
    let results = join_all(
        holders
            .iter()
            .map(|h| c.acquire_lease(E, JobKind::Delta, h, t, 60 * SEC)),
    )
    .await;
    let results: Vec<LeaseOutcome> = results.into_iter().map(|r| r.expect("acquire")).collect();
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, LeaseOutcome::Acquired { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = &holders[winners[0]];
    for r in &results {
        if let LeaseOutcome::Held { holder, expires_us } = r {
            assert_eq!(holder, winner);
            assert_eq!(*expires_us, t + 60 * SEC);
        }
    }
    let st = c.job_state(E, JobKind::Delta).await.expect("state");
    assert_eq!(st.lease_holder.as_ref(), Some(winner));
    // Two runs racing for an expired lease: again exactly one.
    let later = t + 61 * SEC;
    let results = join_all(
        ["late-1", "late-2"].map(|h| c.acquire_lease(E, JobKind::Delta, h, later, 60 * SEC)),
    )
    .await;
    let acquired = results
        .into_iter()
        .map(|r| r.expect("acquire"))
        .filter(|r| matches!(r, LeaseOutcome::Acquired { .. }))
        .count();
    assert_eq!(acquired, 1);
}

pub async fn runs_newest_first_with_limit(c: &dyn ControlStore) {
    assert!(
        c.list_runs(E, JobKind::Delta, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let t = now_us();
    let run = |i: i64, id: &str| RunRecord {
        entity: E.into(),
        kind: JobKind::Delta,
        run_id: id.into(),
        started_us: t + i * SEC,
        finished_us: None,
        status: "running".into(),
        summary: json!({"i": i}).to_string(),
    };
    // Out of order, one start shared by two runs, one start with fewer digits.
    for (i, id) in [
        (3, "r3"),
        (1, "r1"),
        (5, "r5b"),
        (5, "r5a"),
        (2, "r2"),
        (4, "r4"),
    ] {
        c.put_run(&run(i, id)).await.expect("put run");
    }
    let mut early = run(0, "r0");
    early.started_us = 7;
    c.put_run(&early).await.expect("put run");
    // Another kind and another entity are separate histories.
    let mut other = run(9, "other");
    other.kind = JobKind::Reconcile;
    c.put_run(&other).await.expect("put run");
    other.kind = JobKind::Delta;
    other.entity = "donations".into();
    c.put_run(&other).await.expect("put run");

    let got = c.list_runs(E, JobKind::Delta, 3).await.expect("list");
    let ids: Vec<&str> = got.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        ["r5b", "r5a", "r4"],
        "newest first, ties by run ID descending"
    );
    assert_eq!(got[2], run(4, "r4"), "every field round-trips");
    let all = c.list_runs(E, JobKind::Delta, 100).await.expect("list");
    let ids: Vec<&str> = all.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["r5b", "r5a", "r4", "r3", "r2", "r1", "r0"]);
    assert_eq!(all[6], early);
    // put_run replaces the entry with the same key (a run finishing).
    let mut done = run(4, "r4");
    done.finished_us = Some(t + 4 * SEC + 123);
    done.status = "succeeded".into();
    done.summary = json!({"seen": 10, "inserted": 3}).to_string();
    c.put_run(&done).await.expect("put run");
    let got = c.list_runs(E, JobKind::Delta, 100).await.expect("list");
    assert_eq!(got.len(), 7, "replaced, not added");
    assert_eq!(got[2], done);
    let r = c.list_runs(E, JobKind::Reconcile, 100).await.expect("list");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].kind, JobKind::Reconcile);
    assert_eq!(
        c.list_runs("donations", JobKind::Delta, 100)
            .await
            .expect("list")
            .len(),
        1
    );
}

/// Webhook dedup (`processed_events`, `complete_event`): an event is processed once completed,
/// until its retention ends; one read answers for many IDs (more than one BatchGetItem's 100
/// keys, repeated IDs, unusual characters).
pub async fn processed_events(c: &dyn ControlStore) {
    let t = now_us();
    let done = |ids: Vec<String>, now: i64| async move {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut v: Vec<String> = c
            .processed_events(&refs, now)
            .await
            .expect("processed events")
            .into_iter()
            .collect();
        v.sort();
        v
    };
    let ids = |names: &[&str]| names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>();
    assert!(done(ids(&["evt-1"]), t).await.is_empty(), "never seen");
    assert!(done(Vec::new(), t).await.is_empty(), "no IDs");
    let retain = t + 7 * 24 * 3_600 * SEC;
    c.complete_event("evt-1", retain).await.expect("complete");
    c.complete_event("evt-2", t + SEC).await.expect("complete");
    assert_eq!(
        done(ids(&["evt-1", "evt-2", "evt-3", "evt-1"]), t).await,
        ["evt-1", "evt-2"]
    );
    // Past its retention an event is new again (whether or not TTL has removed it).
    assert_eq!(done(ids(&["evt-1", "evt-2"]), t + SEC).await, ["evt-1"]);
    assert!(done(ids(&["evt-1"]), retain).await.is_empty());
    // Completing again extends the retention.
    c.complete_event("evt-2", retain).await.expect("complete");
    assert_eq!(done(ids(&["evt-2"]), t + SEC).await, ["evt-2"]);
    // IDs with unusual characters.
    c.complete_event("msg#1/ü", retain).await.expect("complete");
    assert_eq!(done(ids(&["msg#1/ü", "msg#1"]), t).await, ["msg#1/ü"]);
    // 150 IDs in one read, 120 of them processed (two BatchGetItem calls on DynamoDB).
    let many: Vec<String> = (0..150).map(|i| format!("bulk-{i:03}")).collect();
    for id in &many[..120] {
        c.complete_event(id, retain).await.expect("complete");
    }
    assert_eq!(done(many.clone(), t).await, many[..120].to_vec());
}

/// The rolling 404 window (`count_not_found`): counts add up within a 10-minute bucket, the
/// answer is the current bucket plus the previous one, older buckets drop out, entities are
/// independent, and concurrent batches lose no count.
pub async fn not_found_window_rolls_by_ten_minutes(c: &dyn ControlStore) {
    let counts = |fetched, not_found| NotFoundCounts { fetched, not_found };
    let w = not_found_window(now_us());
    // The start of bucket `w + k`.
    let at = |k: i64| (w + k) * NOT_FOUND_WINDOW_US;
    let add = |entity: &'static str, t: Micros, f: u64, n: u64| async move {
        c.count_not_found(entity, t, counts(f, n))
            .await
            .expect("count 404s")
    };
    assert_eq!(add(E, at(0), 1, 1).await, counts(1, 1));
    assert_eq!(add(E, at(0) + 599 * SEC, 2, 0).await, counts(3, 1));
    // Another entity is independent.
    assert_eq!(add("donations", at(0), 4, 4).await, counts(4, 4));
    // The next bucket: this one plus the previous.
    assert_eq!(add(E, at(1), 1, 1).await, counts(4, 2));
    // Two buckets on: the first has dropped out.
    assert_eq!(add(E, at(2) + SEC, 1, 0).await, counts(2, 1));
    // After a long gap, only what is new.
    assert_eq!(add(E, at(12), 1, 1).await, counts(1, 1));
    assert_eq!(
        add(E, at(12), 0, 0).await,
        counts(1, 1),
        "adding nothing reads"
    );
    // Concurrent batches: every count lands.
    let all = join_all((0..10).map(|_| c.count_not_found(E, at(12) + SEC, counts(2, 1)))).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(add(E, at(12) + 2 * SEC, 0, 0).await, counts(21, 11));
    assert_eq!(add("donations", at(1), 0, 0).await, counts(4, 4));
}

// ---------------------------------------------------------------------------------------------
// the shared rate budget (`BudgetStore`), run by `conformance_local` and `conformance_dynamodb`
// ---------------------------------------------------------------------------------------------

fn ask(now_us: Micros, tokens: u32, lookahead_us: Micros) -> SliceAsk {
    SliceAsk {
        now_us,
        tokens,
        interval_us: 10,
        lookahead_us,
    }
}

fn first_of(a: SliceAnswer) -> Micros {
    match a {
        SliceAnswer::Granted { first_us, .. } => first_us,
        other => panic!("want a slice, got {other:?}"),
    }
}

pub async fn budget_slices_follow_the_schedule(b: &dyn BudgetStore) {
    let now = now_us();
    // Idle: the slice starts now and the schedule ends 4 tokens later.
    assert_eq!(
        first_of(b.take_slice("a", ask(now, 4, 0)).await.unwrap()),
        now
    );
    // Ahead of now by 40: a lane without lookahead waits until then...
    match b.take_slice("a", ask(now, 4, 0)).await.unwrap() {
        SliceAnswer::Wait {
            until_us, paused, ..
        } => assert_eq!((until_us, paused), (now + 40, false)),
        other => panic!("want a wait, got {other:?}"),
    }
    // ... a lane that may look 40 ahead starts where the last slice ended.
    assert_eq!(
        first_of(b.take_slice("a", ask(now, 2, 40)).await.unwrap()),
        now + 40
    );
    // Accounts are independent.
    assert_eq!(
        first_of(b.take_slice("b", ask(now, 4, 0)).await.unwrap()),
        now
    );
    // Once now has passed the schedule, the next slice starts at now again.
    assert_eq!(
        first_of(b.take_slice("a", ask(now + 1_000, 1, 0)).await.unwrap()),
        now + 1_000
    );
}

pub async fn budget_pause_holds_every_lane_and_never_shortens(b: &dyn BudgetStore) {
    let now = now_us();
    b.pause_budget("a", now + 500).await.unwrap();
    b.pause_budget("a", now + 200).await.unwrap();
    for lookahead in [0, 10_000] {
        match b.take_slice("a", ask(now, 1, lookahead)).await.unwrap() {
            SliceAnswer::Wait {
                until_us, paused, ..
            } => assert_eq!((until_us, paused), (now + 500, true)),
            other => panic!("want the pause, got {other:?}"),
        }
    }
    assert_eq!(
        first_of(b.take_slice("a", ask(now + 500, 1, 0)).await.unwrap()),
        now + 500
    );
}

pub async fn budget_learned_limit_comes_back_with_every_answer(b: &dyn BudgetStore) {
    let now = now_us();
    let limit = Limit {
        requests: 75,
        per_us: 20_000_000,
    };
    match b.take_slice("a", ask(now, 1, 0)).await.unwrap() {
        SliceAnswer::Granted { learned, .. } => assert_eq!(learned, None),
        other => panic!("{other:?}"),
    }
    b.learn_limit("a", limit).await.unwrap();
    match b.take_slice("a", ask(now, 1, 100)).await.unwrap() {
        SliceAnswer::Granted { learned, .. } => assert_eq!(learned, Some(limit)),
        other => panic!("{other:?}"),
    }
    match b.take_slice("a", ask(now, 1, 0)).await.unwrap() {
        SliceAnswer::Wait { learned, .. } => assert_eq!(learned, Some(limit)),
        other => panic!("{other:?}"),
    }
}

pub async fn budget_give_back_only_while_the_slice_is_the_last(b: &dyn BudgetStore) {
    let now = now_us();
    let first = first_of(b.take_slice("a", ask(now, 5, 0)).await.unwrap());
    let second = first_of(b.take_slice("a", ask(now, 5, 100)).await.unwrap());
    assert_eq!((first, second), (now, now + 50));
    // The first slice is no longer the last: its tail cannot come back.
    assert!(!b.give_back("a", now + 50, now + 10).await.unwrap());
    // The second's can: the schedule moves back, and the next slice starts there.
    assert!(b.give_back("a", now + 100, now + 60).await.unwrap());
    assert_eq!(
        first_of(b.take_slice("a", ask(now, 1, 100)).await.unwrap()),
        now + 60
    );
}

/// Callers racing for slices each get their own span of the schedule: no two overlap.
pub async fn budget_concurrent_slices_never_overlap(b: &dyn BudgetStore) {
    let now = now_us();
    let answers = join_all((0..16).map(|_| b.take_slice("a", ask(now, 3, 10_000)))).await;
    let mut firsts: Vec<Micros> = answers.into_iter().map(|a| first_of(a.unwrap())).collect();
    firsts.sort_unstable();
    let want: Vec<Micros> = (0..16).map(|i| now + i * 30).collect();
    assert_eq!(firsts, want);
}
