//! The store's semantics, checked on SQLite itself (the shared conformance suite in `tests/it`
//! runs the cross-store bodies; these stay as the store's own tests).

use super::testutil::TempDir;
use super::*;
use crate::core::size::{COMPRESSED_PAYLOAD_MAX_BYTES, INLINE_PAYLOAD_MAX_BYTES, MAX_ID_BYTES};
use crate::memory::MemoryRecords;
use crate::model::RawJson;
use crate::model::*;
use crate::ports::*;
use std::collections::{BTreeSet, HashSet};

fn rec(entity: &str, id: &str, delta_us: i64, fetched_at_us: i64, payload: &str) -> Record {
    Record::new(
        entity,
        id,
        delta_us,
        fetched_at_us,
        RawJson::parse(payload).expect("valid JSON"),
    )
}

fn person(id: &str, delta_us: i64, fetched_at_us: i64, name: &str) -> Record {
    rec(
        "people",
        id,
        delta_us,
        fetched_at_us,
        &format!(r#"{{"id":"{id}","name":"{name}"}}"#),
    )
}

async fn get(s: &LocalStore, id: &str) -> StoredRecord {
    s.get("people", id).await.unwrap().expect("stored")
}

#[tokio::test]
async fn insert_then_get_decodes_every_field() {
    let s = LocalStore::in_memory().unwrap();
    let before = crate::core::timefmt::now_us();
    let r = person("1", 10, 100, "Ann");
    assert_eq!(
        s.upsert(&r, Strategy::Delta).await.unwrap(),
        WriteOutcome::Inserted
    );
    let got = get(&s, "1").await;
    assert_eq!(got.entity, "people");
    assert_eq!(got.id, "1");
    assert_eq!(
        got.version,
        StoredVersion {
            delta_us: 10,
            fetched_at_us: 100,
            hash: r.version.hash,
            deleted_at_us: None,
            erased: false,
        }
    );
    assert_eq!(got.payload, serde_json::json!({"id": "1", "name": "Ann"}));
    assert!(got.first_seen_us >= before);
    assert_eq!(got.first_seen_us, got.last_synced_us);
    assert_eq!(got.last_action, LastAction::Insert);
    assert_eq!(got.written_by, Strategy::Delta);
    assert!(!got.is_deleted());
    assert!(s.get("people", "2").await.unwrap().is_none());
    assert!(s.get("donations", "1").await.unwrap().is_none());
}

#[tokio::test]
async fn the_version_rule_decides_every_write() {
    let s = LocalStore::in_memory().unwrap();
    s.upsert(&person("1", 10, 100, "Ann"), Strategy::Delta)
        .await
        .unwrap();
    let first = get(&s, "1").await;

    // Same content again: unchanged, nothing written.
    assert_eq!(
        s.upsert(&person("1", 10, 500, "Ann"), Strategy::Webhook)
            .await
            .unwrap(),
        WriteOutcome::Unchanged
    );
    assert_eq!(get(&s, "1").await, first);

    // Older: stale.
    assert_eq!(
        s.upsert(&person("1", 9, 900, "Old"), Strategy::Webhook)
            .await
            .unwrap(),
        WriteOutcome::Stale
    );
    // Equal delta, other content, fetched at the same time or earlier: stale.
    for fetched in [99, 100] {
        assert_eq!(
            s.upsert(&person("1", 10, fetched, "Tie"), Strategy::Webhook)
                .await
                .unwrap(),
            WriteOutcome::Stale
        );
    }
    assert_eq!(get(&s, "1").await, first);

    // Equal delta, other content, fetched later: updated.
    assert_eq!(
        s.upsert(&person("1", 10, 101, "Tie"), Strategy::Targeted)
            .await
            .unwrap(),
        WriteOutcome::Updated
    );
    let tie = get(&s, "1").await;
    assert_eq!(tie.payload["name"], "Tie");
    assert_eq!(tie.version.fetched_at_us, 101);
    assert_eq!(tie.written_by, Strategy::Targeted);
    assert_eq!(tie.last_action, LastAction::Update);
    assert_eq!(tie.first_seen_us, first.first_seen_us, "first_seen kept");
    assert!(tie.last_synced_us >= first.last_synced_us);

    // Newer delta, even fetched earlier: updated.
    assert_eq!(
        s.upsert(&person("1", 11, 50, "Bea"), Strategy::Webhook)
            .await
            .unwrap(),
        WriteOutcome::Updated
    );
    let newer = get(&s, "1").await;
    assert_eq!(newer.version.delta_us, 11);
    assert_eq!(newer.payload["name"], "Bea");
    assert_eq!(newer.first_seen_us, first.first_seen_us);
}

#[tokio::test]
async fn soft_delete_and_restore() {
    let s = LocalStore::in_memory().unwrap();
    s.upsert(&person("1", 10, 100, "Ann"), Strategy::Delta)
        .await
        .unwrap();
    let first = get(&s, "1").await;
    assert_eq!(
        s.soft_delete("people", "nope", 1_000, Strategy::Reconcile)
            .await
            .unwrap(),
        DeleteOutcome::NotFound
    );
    // Evidence not after the last fetch: the source had it then.
    for evidence in [50, 100] {
        assert_eq!(
            s.soft_delete("people", "1", evidence, Strategy::Reconcile)
                .await
                .unwrap(),
            DeleteOutcome::NewerThanEvidence
        );
    }
    assert_eq!(get(&s, "1").await, first);
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    assert_eq!(
        s.soft_delete("people", "1", 200, Strategy::Reconcile)
            .await
            .unwrap(),
        DeleteOutcome::Deleted
    );
    let deleted = get(&s, "1").await;
    assert_eq!(deleted.version.deleted_at_us, Some(200));
    assert!(
        deleted.last_synced_us > first.last_synced_us,
        "last_synced is the delete's time"
    );
    assert_eq!(deleted.first_seen_us, first.first_seen_us);
    assert_eq!(deleted.last_action, LastAction::Delete);
    assert_eq!(deleted.written_by, Strategy::Reconcile);
    assert_eq!(deleted.payload, first.payload, "payload kept");
    assert_eq!(
        s.soft_delete("people", "1", 300, Strategy::Webhook)
            .await
            .unwrap(),
        DeleteOutcome::AlreadyDeleted
    );
    // Seen without it again, later: the evidence moves (`core::version::advances_deletion`).
    assert_eq!(get(&s, "1").await.version.deleted_at_us, Some(300));
    let page = s
        .list_live_ids("people", shard_of("1"), None, 10)
        .await
        .unwrap();
    assert!(page.items.is_empty(), "deleted is not live");

    // A newer version fetched before the evidence does not resurrect it (I3).
    assert_eq!(
        s.upsert(&person("1", 99, 300, "Zombie"), Strategy::Webhook)
            .await
            .unwrap(),
        WriteOutcome::Stale
    );
    assert!(get(&s, "1").await.is_deleted());
    // Fetched after the evidence, even an older delta: the source has it again.
    assert_eq!(
        s.upsert(&person("1", 5, 301, "Back"), Strategy::Targeted)
            .await
            .unwrap(),
        WriteOutcome::Restored
    );
    let back = get(&s, "1").await;
    assert_eq!(back.version.deleted_at_us, None);
    assert_eq!(back.version.delta_us, 5);
    assert_eq!(back.last_action, LastAction::Restore);
    assert_eq!(back.written_by, Strategy::Targeted);
    assert_eq!(back.payload["name"], "Back");
    assert_eq!(back.first_seen_us, first.first_seen_us);
    let page = s
        .list_live_ids("people", shard_of("1"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        page.items,
        [IdVersion {
            id: "1".into(),
            delta_us: 5
        }]
    );
}

#[tokio::test]
async fn outcomes_in_input_order_with_repeats_inside_a_batch() {
    let s = LocalStore::in_memory().unwrap();
    let out = s
        .upsert_many(
            &[
                person("a", 1, 1, "a1"),
                person("b", 1, 1, "b1"),
                person("a", 2, 2, "a2"),
                person("a", 1, 3, "a1-late"),
                person("b", 1, 1, "b1"),
            ],
            Strategy::Delta,
        )
        .await
        .unwrap();
    use WriteOutcome::*;
    assert_eq!(out, [Inserted, Inserted, Updated, Stale, Unchanged]);
    assert_eq!(get(&s, "a").await.payload["name"], "a2");
    assert!(
        s.upsert_many(&[], Strategy::Delta)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A page longer than one version lookup (several chunks, keys repeated across them, some
/// stored before) is decided record by record, in input order, as the in-memory reference does.
#[tokio::test]
async fn long_pages_with_repeats_agree_with_the_in_memory_reference() {
    let local = LocalStore::in_memory().unwrap();
    let mem = MemoryRecords::default();
    let before: Vec<Record> = (0..300)
        .step_by(3)
        .map(|i| person(&i.to_string(), 5, 5, "old"))
        .collect();
    assert_eq!(
        local.upsert_many(&before, Strategy::Delta).await.unwrap(),
        mem.upsert_many(&before, Strategy::Delta).await.unwrap()
    );
    let mut rng = fastrand::Rng::with_seed(11);
    let page: Vec<Record> = (0..700)
        .map(|k| {
            let id = if k < 600 { k } else { rng.usize(0..600) };
            let delta = rng.i64(3..8);
            person(&id.to_string(), delta, rng.i64(0..10), &format!("v{delta}"))
        })
        .collect();
    let a = local.upsert_many(&page, Strategy::Webhook).await.unwrap();
    let b = mem.upsert_many(&page, Strategy::Webhook).await.unwrap();
    assert_eq!(a, b);
    for id in 0..600 {
        let (a, b) = (
            local.get("people", &id.to_string()).await.unwrap(),
            mem.get("people", &id.to_string()).await.unwrap(),
        );
        let (a, b) = (a.expect("stored"), b.expect("stored"));
        assert_eq!((a.version, a.payload), (b.version, b.payload), "id {id}");
    }
}

/// A row that does not decode fails its page, naming the first such record in input order, and
/// nothing of the page is written.
#[tokio::test]
async fn a_corrupt_row_fails_the_whole_page_in_input_order() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    let s = LocalStore::open(&path).unwrap();
    let recs: Vec<Record> = (0..400)
        .map(|i| person(&i.to_string(), 1, 1, "x"))
        .collect();
    s.upsert_many(&recs, Strategy::Delta).await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "UPDATE records SET hash = 'zz' WHERE id = '300';
             UPDATE records SET delta_us = 'yesterday' WHERE id = '7';",
        )
        .unwrap();
    let page: Vec<Record> = ["new-1", "300", "new-2", "7"]
        .iter()
        .map(|id| person(id, 2, 2, "y"))
        .collect();
    match s.upsert_many(&page, Strategy::Delta).await {
        Err(StoreError::Decode { key, .. }) => assert_eq!(key, "people#300"),
        other => panic!("expected Decode, got {other:?}"),
    }
    assert!(s.get("people", "new-1").await.unwrap().is_none());
}

/// Random operation sequences give the same outcomes and states as the in-memory reference.
#[tokio::test]
async fn agrees_with_the_in_memory_reference() {
    let local = LocalStore::in_memory().unwrap();
    let mem = MemoryRecords::default();
    let mut rng = fastrand::Rng::with_seed(7);
    let strategies = [Strategy::Delta, Strategy::Webhook, Strategy::Targeted];
    for step in 0..3_000 {
        let id = format!("{}", rng.u8(0..20));
        let by = strategies[rng.usize(0..strategies.len())];
        if rng.u8(0..10) < 2 {
            let evidence = rng.i64(0..60);
            let a = local
                .soft_delete("people", &id, evidence, by)
                .await
                .unwrap();
            let b = mem.soft_delete("people", &id, evidence, by).await.unwrap();
            assert_eq!(a, b, "step {step}: delete {id} @ {evidence}");
        } else {
            let batch: Vec<Record> = (0..rng.usize(1..4))
                .map(|_| {
                    let name = format!("v{}", rng.u8(0..3));
                    person(&id, rng.i64(0..6), rng.i64(0..60), &name)
                })
                .collect();
            let a = local.upsert_many(&batch, by).await.unwrap();
            let b = mem.upsert_many(&batch, by).await.unwrap();
            assert_eq!(a, b, "step {step}: upsert {id}");
        }
        let a = local.get("people", &id).await.unwrap();
        let b = mem.get("people", &id).await.unwrap();
        match (a, b) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                assert_eq!(a.version, b.version, "step {step}");
                assert_eq!(a.payload, b.payload, "step {step}");
                assert_eq!(a.last_action, b.last_action, "step {step}");
                assert_eq!(a.written_by, b.written_by, "step {step}");
            }
            (a, b) => panic!("step {step}: local {a:?} vs memory {b:?}"),
        }
    }
    for shard in 0..ID_SHARDS {
        let a = local
            .list_live_ids("people", shard, None, 100)
            .await
            .unwrap();
        let b = mem.list_live_ids("people", shard, None, 100).await.unwrap();
        assert_eq!(a.items, b.items, "shard {shard}");
    }
}

#[tokio::test]
async fn live_ids_page_bytewise_per_shard_and_entity() {
    let s = LocalStore::in_memory().unwrap();
    // Mixed case, digits, non-ASCII and astral characters: bytewise order is not the
    // "natural" one ("B" < "a" < "z" < "~" < "é" < "𐀀").
    let mut ids: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
    ids.extend(
        [
            "a", "B", "z", "~", "é", "É", "𐀀", "a b", "10", "9", "ä", "Z",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let recs: Vec<Record> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| rec("people", id, i as i64, 1, "{}"))
        .collect();
    s.upsert_many(&recs, Strategy::Delta).await.unwrap();
    // Same IDs in another entity, and some deleted ones: neither may show up.
    let other: Vec<Record> = ids
        .iter()
        .map(|id| rec("donations", id, 0, 1, "{}"))
        .collect();
    s.upsert_many(&other, Strategy::Delta).await.unwrap();
    let deleted: BTreeSet<&str> = ["p7", "é", "p100"].into();
    for id in &deleted {
        assert_eq!(
            s.soft_delete("people", id, 2, Strategy::Reconcile)
                .await
                .unwrap(),
            DeleteOutcome::Deleted
        );
    }

    let mut seen = Vec::new();
    for shard in 0..ID_SHARDS {
        let mut after: Option<String> = None;
        let mut shard_ids = Vec::new();
        loop {
            let page = s
                .list_live_ids("people", shard, after.as_deref(), 3)
                .await
                .unwrap();
            assert!(page.items.len() <= 3);
            for item in &page.items {
                assert_eq!(shard_of(&item.id), shard);
                let i = ids.iter().position(|x| *x == item.id).unwrap();
                assert_eq!(item.delta_us, i as i64, "delta_us comes with the ID");
            }
            shard_ids.extend(page.items.iter().map(|i| i.id.clone()));
            match page.next_after {
                Some(n) => {
                    assert_eq!(Some(&n), shard_ids.last(), "next_after is the last ID");
                    after = Some(n);
                }
                None => break,
            }
        }
        let mut sorted = shard_ids.clone();
        sorted.sort(); // String's Ord is bytewise over UTF-8.
        assert_eq!(shard_ids, sorted, "shard {shard} sorted bytewise");
        seen.extend(shard_ids);
    }
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|i| !deleted.contains(i.as_str()))
        .cloned()
        .collect();
    assert_eq!(seen.len(), want.len(), "each live ID once");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);

    // A zero limit still makes progress (a page of one), never a false "end of shard".
    let shard = shard_of("p1");
    let one = s.list_live_ids("people", shard, None, 0).await.unwrap();
    assert_eq!(one.items.len(), 1);
    assert!(one.next_after.is_some());
    assert!(
        s.list_live_ids("nobody", shard, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// Base64 of seeded random bytes: compresses to about 3/4 of its size.
fn incompressible_json(len: usize) -> String {
    use base64::Engine;
    let mut rng = fastrand::Rng::with_seed(1);
    let bytes: Vec<u8> = (0..len * 3 / 4).map(|_| rng.u8(..)).collect();
    let mut s = format!(
        "\"{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    s.truncate(len - 1);
    s.push('"');
    s
}

#[tokio::test]
async fn the_size_limit_matches_the_dynamodb_fallback() {
    let s = LocalStore::in_memory().unwrap();
    // At the inline limit: stored, however incompressible.
    let at_limit = incompressible_json(INLINE_PAYLOAD_MAX_BYTES);
    assert_eq!(at_limit.len(), INLINE_PAYLOAD_MAX_BYTES);
    assert_eq!(
        s.upsert(&rec("people", "edge", 1, 1, &at_limit), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Inserted
    );
    // Far over it but compressible (DynamoDB would store it compressed): stored, and intact.
    let list: Vec<String> = (0..80_000).map(|i| format!("\"item {i}\"")).collect();
    let big = format!("{{\"tags\":[{}]}}", list.join(","));
    assert!(big.len() > 2 * INLINE_PAYLOAD_MAX_BYTES);
    assert_eq!(
        s.upsert(&rec("people", "big", 1, 1, &big), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Inserted
    );
    let got = s.get("people", "big").await.unwrap().unwrap();
    assert_eq!(got.payload["tags"][79_999], "item 79999");

    // Over it and incompressible beyond the compressed limit: rejected, and the whole batch
    // with it (nothing of the call is written).
    let huge = incompressible_json(600 * 1024);
    let batch = [
        rec("people", "ok", 1, 1, "{}"),
        rec("people", "huge", 1, 1, &huge),
    ];
    match s.upsert_many(&batch, Strategy::Delta).await {
        Err(StoreError::TooLarge { key, bytes }) => {
            assert_eq!(key, "people#huge");
            assert!(bytes > COMPRESSED_PAYLOAD_MAX_BYTES, "{bytes}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(s.get("people", "ok").await.unwrap().is_none());
}

#[tokio::test]
async fn ids_beyond_the_key_limit_are_too_large() {
    let s = LocalStore::in_memory().unwrap();
    let longest = "é".repeat(MAX_ID_BYTES / 2);
    assert_eq!(
        s.upsert(&person(&longest, 1, 1, "x"), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Inserted
    );
    let too_long = format!("{longest}x");
    let batch = [person("fine", 1, 1, "x"), person(&too_long, 1, 1, "x")];
    match s.upsert_many(&batch, Strategy::Delta).await {
        Err(StoreError::TooLarge { key, bytes }) => {
            assert_eq!(bytes, MAX_ID_BYTES + 1);
            assert_eq!(key, format!("people#{too_long}"));
        }
        other => panic!("want TooLarge, got {other:?}"),
    }
    assert!(
        s.get("people", "fine").await.unwrap().is_none(),
        "batch refused whole"
    );
    assert!(s.get("people", &too_long).await.unwrap().is_none());
    assert_eq!(
        s.soft_delete("people", &too_long, 5, Strategy::Reconcile)
            .await
            .unwrap(),
        DeleteOutcome::NotFound
    );
}

#[tokio::test]
async fn reopening_the_file_keeps_everything() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    {
        let s = LocalStore::open(&path).unwrap();
        assert_eq!(s.path(), Some(path.as_path()));
        s.upsert_many(
            &[person("1", 10, 100, "Ann"), person("2", 10, 100, "Bob")],
            Strategy::Delta,
        )
        .await
        .unwrap();
        s.soft_delete("people", "2", 200, Strategy::Reconcile)
            .await
            .unwrap();
        s.acquire_lease("people", JobKind::Delta, "run-1", 0, 1_000)
            .await
            .unwrap();
        s.save_cursor("people", JobKind::Delta, "run-1", 10, 1_000, "c-42")
            .await
            .unwrap();
        s.put_run(&run("people", JobKind::Delta, "run-1", 5))
            .await
            .unwrap();
        s.complete_event("evt-1", i64::MAX).await.unwrap();
    }
    let s = LocalStore::open(&path).unwrap();
    assert_eq!(get(&s, "1").await.payload["name"], "Ann");
    assert_eq!(get(&s, "2").await.version.deleted_at_us, Some(200));
    let job = s.job_state("people", JobKind::Delta).await.unwrap();
    assert_eq!(job.cursor.as_deref(), Some("c-42"));
    assert_eq!(job.lease_holder.as_deref(), Some("run-1"));
    assert_eq!(job.lease_token, 1);
    assert_eq!(
        s.list_runs("people", JobKind::Delta, 10).await.unwrap(),
        [run("people", JobKind::Delta, "run-1", 5)]
    );
    assert_eq!(
        s.processed_events(&["evt-1", "evt-2"], 1).await.unwrap(),
        HashSet::from(["evt-1".to_owned()])
    );
    assert_eq!(
        s.upsert(&person("1", 10, 100, "Ann"), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Unchanged
    );
}

#[tokio::test]
async fn a_file_is_in_wal_mode_with_8k_pages() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    let s = LocalStore::open(&path).unwrap();
    s.upsert(&person("1", 1, 1, "x"), Strategy::Delta)
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let page: i64 = raw.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (mode.as_str(), page, version),
        ("wal", 8192, SCHEMA_VERSION)
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = TempDir::new();
    let path = dir.path().join("future.sqlite");
    drop(LocalStore::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    assert!(matches!(
        LocalStore::open(&path),
        Err(StoreError::Decode { .. })
    ));
}

/// The records table as schema version 1 had it (UNIQUE pk and a partial live-ID index).
const RECORDS_V1: &str = r#"
CREATE TABLE records (
    pk TEXT PRIMARY KEY NOT NULL, entity TEXT NOT NULL, id TEXT NOT NULL,
    shard INTEGER NOT NULL, delta_us INTEGER NOT NULL, fetched_at_us INTEGER NOT NULL,
    hash TEXT NOT NULL, payload TEXT NOT NULL, first_seen_us INTEGER NOT NULL,
    last_synced_us INTEGER NOT NULL, deleted_at_us INTEGER, last_action TEXT NOT NULL,
    written_by TEXT NOT NULL
);
CREATE INDEX records_live_ids
    ON records (entity, id, shard, delta_us, deleted_at_us) WHERE deleted_at_us IS NULL;
PRAGMA user_version = 1;
"#;

#[tokio::test]
async fn a_version_1_file_is_migrated_with_its_records() {
    let dir = TempDir::new();
    let path = dir.path().join("v1.sqlite");
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(RECORDS_V1).unwrap();
    let insert = "INSERT INTO records VALUES (?1, 'people', ?2, ?3, ?4, 5, ?5, ?6, 7, 8, ?7, \
                  'insert', 'delta')";
    for (id, deleted) in [("1", None), ("2", Some(99_i64)), ("10", None)] {
        let r = person(id, 4, 5, id);
        raw.execute(
            insert,
            rusqlite::params![
                format!("people#{id}"),
                id,
                shard_of(id),
                4,
                r.version.hash.to_hex(),
                r.payload.get(),
                deleted
            ],
        )
        .unwrap();
    }
    drop(raw);

    let s = LocalStore::open(&path).unwrap();
    assert_eq!(get(&s, "1").await.payload["name"], "1");
    assert_eq!(get(&s, "2").await.version.deleted_at_us, Some(99));
    let mut live = Vec::new();
    for shard in 0..ID_SHARDS {
        let page = s.list_live_ids("people", shard, None, 10).await.unwrap();
        live.extend(page.items.into_iter().map(|i| i.id));
    }
    live.sort();
    assert_eq!(live, ["1", "10"]);
    // The old rows are found by key: an unchanged re-read writes nothing, a change updates.
    assert_eq!(
        s.upsert(&person("10", 4, 5, "10"), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Unchanged
    );
    assert_eq!(
        s.upsert(&person("10", 6, 7, "ten"), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Updated
    );
    drop(s);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let indexes: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let rows: i64 = raw
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (version, indexes, rows),
        (SCHEMA_VERSION, vec!["records_key".to_owned()], 3)
    );
    drop(raw);
    // Opening a migrated file again changes nothing; the erasure's columns came with the
    // rebuilt table.
    let s = LocalStore::open(&path).unwrap();
    assert_eq!(get(&s, "10").await.payload["name"], "ten");
    assert_eq!(
        s.erase("people", "1", 50, "ops").await.unwrap(),
        EraseOutcome::Erased
    );
    assert!(get(&s, "1").await.is_erased());
}

/// Version 2's records table: no erasure columns.
const RECORDS_V2: &str = r#"
CREATE TABLE records (
    pk TEXT NOT NULL, entity TEXT NOT NULL, id TEXT NOT NULL, shard INTEGER NOT NULL,
    delta_us INTEGER NOT NULL, fetched_at_us INTEGER NOT NULL, hash TEXT NOT NULL,
    payload TEXT NOT NULL, first_seen_us INTEGER NOT NULL, last_synced_us INTEGER NOT NULL,
    deleted_at_us INTEGER, last_action TEXT NOT NULL, written_by TEXT NOT NULL
);
CREATE INDEX records_key ON records (pk, shard, delta_us, deleted_at_us, entity);
PRAGMA user_version = 2;
"#;

#[tokio::test]
async fn a_version_2_file_gains_the_erasure_columns_and_keeps_its_records() {
    let dir = TempDir::new();
    let path = dir.path().join("v2.sqlite");
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(RECORDS_V2).unwrap();
    for (id, deleted) in [("1", None), ("2", Some(99_i64))] {
        let r = person(id, 4, 5, id);
        raw.execute(
            "INSERT INTO records VALUES (?1, 'people', ?2, ?3, 4, 5, ?4, ?5, 7, 8, ?6, \
             'insert', 'delta')",
            rusqlite::params![
                format!("people#{id}"),
                id,
                shard_of(id),
                r.version.hash.to_hex(),
                r.payload.get(),
                deleted
            ],
        )
        .unwrap();
    }
    drop(raw);
    let s = LocalStore::open(&path).unwrap();
    let one = get(&s, "1").await;
    assert_eq!(
        (one.payload["name"].as_str(), one.erased),
        (Some("1"), None)
    );
    assert_eq!(get(&s, "2").await.version.deleted_at_us, Some(99));
    assert_eq!(
        s.erase("people", "1", 50, "ops").await.unwrap(),
        EraseOutcome::Erased
    );
    assert_eq!(
        s.upsert(&person("1", 9, 60, "back"), Strategy::Delta)
            .await
            .unwrap(),
        WriteOutcome::Suppressed
    );
    drop(s);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    drop(raw);
    // Opening it again changes nothing (no second ALTER).
    let s = LocalStore::open(&path).unwrap();
    assert!(get(&s, "1").await.is_erased());
}

/// Whether `needle` appears in the database file or its WAL.
fn on_disk(path: &std::path::Path, needle: &str) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.to_path_buf(), std::path::PathBuf::from(wal)]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[tokio::test]
async fn an_erased_record_leaves_no_bytes_of_it_in_the_file() {
    let dir = TempDir::new();
    let path = dir.path().join("erase.sqlite");
    let s = LocalStore::open(&path).unwrap();
    // A small payload (in the row) and a large one (overflow pages), each with a marker text.
    let small = "Zebedee-Quartermaine-small";
    let large = format!("Zebedee-Quartermaine-large-{}", "x".repeat(20_000));
    s.upsert_many(
        &[
            person("1", 1, 1, small),
            person("2", 1, 1, &large),
            person("3", 1, 1, "Kept-Neighbour"),
        ],
        Strategy::Delta,
    )
    .await
    .unwrap();
    // An update too, so that older copies exist in the WAL.
    s.upsert(&person("1", 2, 2, small), Strategy::Delta)
        .await
        .unwrap();
    assert!(on_disk(&path, small) && on_disk(&path, "Zebedee-Quartermaine-large"));
    for id in ["1", "2"] {
        assert_eq!(
            s.erase("people", id, 10, "ops").await.unwrap(),
            EraseOutcome::Erased
        );
    }
    assert!(
        !on_disk(&path, "Zebedee-Quartermaine"),
        "the erased payloads are still in the file or its WAL"
    );
    assert!(on_disk(&path, "Kept-Neighbour"), "the neighbour is intact");
    assert_eq!(get(&s, "3").await.payload["name"], "Kept-Neighbour");
}

#[tokio::test]
async fn negative_control_without_secure_delete_the_erased_bytes_stay_in_the_file() {
    let dir = TempDir::new();
    let path = dir.path().join("plain.sqlite");
    let s = LocalStore::open(&path).unwrap();
    let small = "Zebedee-Quartermaine-small";
    s.upsert(&person("1", 1, 1, small), Strategy::Delta)
        .await
        .unwrap();
    // The same replacement as `erase_one`, without `securely`: a plain delete leaves the bytes.
    s.db()
        .call("erase record", |c| {
            records::erase_one(c, "people", "1", 10, "ops")
        })
        .await
        .unwrap();
    assert!(get(&s, "1").await.is_erased());
    assert!(
        on_disk(&path, small),
        "a delete without secure_delete leaves the bytes (else the test above proves nothing)"
    );
}

#[tokio::test]
async fn purge_removes_old_soft_deleted_rows_only_in_one_statement() {
    let s = LocalStore::in_memory().unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        s.upsert(&rec("people", id, 1, 1, "{}"), Strategy::Delta)
            .await
            .unwrap();
    }
    s.upsert(&rec("donations", "a", 1, 1, "{}"), Strategy::Delta)
        .await
        .unwrap();
    for (entity, id, at) in [
        ("people", "a", 100),
        ("people", "b", 200),
        ("people", "c", 300),
        ("donations", "a", 100),
    ] {
        assert_eq!(
            s.soft_delete(entity, id, at, Strategy::Reconcile)
                .await
                .unwrap(),
            DeleteOutcome::Deleted
        );
    }
    s.erase("people", "d", 50, "ops").await.unwrap();
    // Counting changes nothing.
    let dry = s
        .purge_deleted(Some("people"), 250, None, true)
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.purged), (2, 0));
    let limited = s
        .purge_deleted(Some("people"), 250, Some(1), false)
        .await
        .unwrap();
    assert_eq!((limited.matched, limited.purged), (1, 1));
    let rest = s
        .purge_deleted(Some("people"), 250, None, false)
        .await
        .unwrap();
    assert_eq!((rest.matched, rest.purged), (1, 1));
    assert!(s.get("people", "a").await.unwrap().is_none());
    assert!(s.get("people", "b").await.unwrap().is_none());
    // Newer than the cutoff, another entity, live, erased: kept.
    assert!(get(&s, "c").await.is_deleted());
    assert!(s.get("donations", "a").await.unwrap().is_some());
    assert!(!get(&s, "e").await.is_deleted());
    assert!(get(&s, "d").await.is_erased());
    // Every entity.
    let all = s.purge_deleted(None, 1_000, None, false).await.unwrap();
    assert_eq!(all.purged, 2);
    assert!(get(&s, "d").await.is_erased());
}

#[tokio::test]
async fn live_ids_of_an_entity_stay_apart_from_a_longer_name_sharing_its_prefix() {
    // "a#b" is never a configured name (names are [A-Za-z0-9_-]), but the store keeps its key
    // "a#b#c", which lies in entity "a"'s key range, out of "a"'s live IDs.
    let s = LocalStore::in_memory().unwrap();
    for (entity, id) in [("a", "x"), ("a#b", "c"), ("ab", "y")] {
        s.upsert(&rec(entity, id, 1, 1, "{}"), Strategy::Delta)
            .await
            .unwrap();
    }
    let ids = |entity: &'static str| {
        let s = s.clone();
        async move {
            let mut all = Vec::new();
            for shard in 0..ID_SHARDS {
                let page = s.list_live_ids(entity, shard, None, 10).await.unwrap();
                all.extend(page.items.into_iter().map(|i| i.id));
            }
            all.sort();
            all
        }
    };
    assert_eq!(ids("a").await, ["x"]);
    assert_eq!(ids("a#b").await, ["c"]);
    assert_eq!(ids("ab").await, ["y"]);
}

#[tokio::test]
async fn a_corrupt_row_is_a_decode_error_never_a_panic() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    let s = LocalStore::open(&path).unwrap();
    let ids = ["hash", "payload", "action", "by", "delta"];
    let recs: Vec<Record> = ids.iter().map(|id| person(id, 1, 1, "x")).collect();
    s.upsert_many(&recs, Strategy::Delta).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "UPDATE records SET hash = 'zz' WHERE id = 'hash';
         UPDATE records SET payload = '{not json' WHERE id = 'payload';
         UPDATE records SET last_action = 'explode' WHERE id = 'action';
         UPDATE records SET written_by = 'someone' WHERE id = 'by';
         UPDATE records SET delta_us = 'yesterday' WHERE id = 'delta';",
    )
    .unwrap();
    for id in ids {
        match s.get("people", id).await {
            Err(StoreError::Decode { key, .. }) => assert_eq!(key, format!("people#{id}")),
            other => panic!("{id}: expected Decode, got {other:?}"),
        }
    }
    // The write path reads the version: a bad hash or delta is a Decode error there too.
    for id in ["hash", "delta"] {
        assert!(matches!(
            s.upsert(&person(id, 2, 2, "y"), Strategy::Delta).await,
            Err(StoreError::Decode { .. })
        ));
        assert!(matches!(
            s.soft_delete("people", id, 5, Strategy::Reconcile).await,
            Err(StoreError::Decode { .. })
        ));
    }
    raw.execute_batch(
        "INSERT INTO control_jobs (entity, kind, lease_token) VALUES ('people', 'delta', -1);
         INSERT INTO control_events VALUES ('e', 'limbo', 9223372036854775807);",
    )
    .unwrap();
    assert!(matches!(
        s.job_state("people", JobKind::Delta).await,
        Err(StoreError::Decode { .. })
    ));
    assert!(matches!(
        s.processed_events(&["e"], 0).await,
        Err(StoreError::Decode { .. })
    ));
}

/// Two handles on one file (two connections, as two processes would have): writes serialise,
/// and the newest version wins whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_one_file_keep_the_newest() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    let a = LocalStore::open(&path).unwrap();
    let b = LocalStore::open(&path).unwrap();
    let mut tasks = Vec::new();
    for (i, s) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for v in 0..200i64 {
                // Each writer sends every version of 20 IDs, in opposite orders.
                let delta = if i == 0 { v } else { 199 - v };
                let batch: Vec<Record> = (0..20)
                    .map(|k| person(&k.to_string(), delta, delta, &format!("v{delta}")))
                    .collect();
                s.upsert_many(&batch, Strategy::Delta).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for k in 0..20 {
        let got = get(&a, &k.to_string()).await;
        assert_eq!(got.version.delta_us, 199);
        assert_eq!(got.payload["name"], "v199");
    }
}

fn run(entity: &str, kind: JobKind, run_id: &str, started_us: i64) -> RunRecord {
    RunRecord {
        entity: entity.into(),
        kind,
        run_id: run_id.into(),
        started_us,
        finished_us: None,
        status: "running".into(),
        summary: "{}".into(),
    }
}

#[tokio::test]
async fn leases_tokens_and_fenced_cursors() {
    let s = LocalStore::in_memory().unwrap();
    let (e, k) = ("people", JobKind::Delta);
    assert_eq!(s.job_state(e, k).await.unwrap(), JobState::default());
    assert!(matches!(
        s.save_cursor(e, k, "a", 0, 100, "c0").await,
        Err(StoreError::LeaseLost { .. })
    ));

    assert_eq!(
        s.acquire_lease(e, k, "a", 0, 100).await.unwrap(),
        LeaseOutcome::Acquired {
            token: 1,
            expires_us: 100
        }
    );
    // Same holder again: same token, extended.
    assert_eq!(
        s.acquire_lease(e, k, "a", 50, 100).await.unwrap(),
        LeaseOutcome::Acquired {
            token: 1,
            expires_us: 150
        }
    );
    assert_eq!(
        s.acquire_lease(e, k, "b", 149, 100).await.unwrap(),
        LeaseOutcome::Held {
            holder: "a".into(),
            expires_us: 150
        }
    );
    s.save_cursor(e, k, "a", 120, 100, "c1").await.unwrap();
    let st = s.job_state(e, k).await.unwrap();
    assert_eq!(
        st,
        JobState {
            cursor: Some("c1".into()),
            cursor_updated_us: Some(120),
            lease_holder: Some("a".into()),
            lease_expires_us: Some(220),
            lease_token: 1
        }
    );
    // Someone else cannot move the cursor.
    match s.save_cursor(e, k, "b", 130, 100, "cb").await {
        Err(StoreError::LeaseLost { scope, holder }) => {
            assert_eq!(scope, "people/delta");
            assert_eq!(holder, "b");
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // Expired (at exactly the expiry time too): the holder cannot either, another takes it.
    assert!(matches!(
        s.save_cursor(e, k, "a", 220, 100, "late").await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        s.acquire_lease(e, k, "b", 220, 100).await.unwrap(),
        LeaseOutcome::Acquired {
            token: 2,
            expires_us: 320
        }
    );
    assert!(matches!(
        s.save_cursor(e, k, "a", 221, 100, "late").await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        s.job_state(e, k).await.unwrap().cursor.as_deref(),
        Some("c1")
    );
    // Releasing someone else's lease is a no-op; releasing ours frees it, keeping the cursor.
    s.release_lease(e, k, "a").await.unwrap();
    assert_eq!(
        s.job_state(e, k).await.unwrap().lease_holder.as_deref(),
        Some("b")
    );
    s.release_lease(e, k, "b").await.unwrap();
    let st = s.job_state(e, k).await.unwrap();
    assert_eq!((st.lease_holder, st.lease_expires_us), (None, None));
    assert_eq!(st.cursor.as_deref(), Some("c1"));
    assert_eq!(st.lease_token, 2);
    assert_eq!(
        s.acquire_lease(e, k, "a", 230, 100).await.unwrap(),
        LeaseOutcome::Acquired {
            token: 3,
            expires_us: 330
        }
    );
    // Jobs are independent per (entity, kind).
    assert_eq!(
        s.acquire_lease(e, JobKind::Reconcile, "z", 230, 100)
            .await
            .unwrap(),
        LeaseOutcome::Acquired {
            token: 1,
            expires_us: 330
        }
    );
    assert_eq!(
        s.job_state("donations", k).await.unwrap(),
        JobState::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquires_exactly_one_wins() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    let handles = [
        LocalStore::open(&path).unwrap(),
        LocalStore::open(&path).unwrap(),
    ];
    for round in 0..10 {
        let entity = format!("e{round}");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = handles[i % 2].clone();
            let entity = entity.clone();
            tasks.push(tokio::spawn(async move {
                s.acquire_lease(&entity, JobKind::Delta, &format!("run-{i}"), 0, 1_000)
                    .await
                    .unwrap()
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let LeaseOutcome::Acquired { token, .. } = t.await.unwrap() {
                winners.push(token);
            }
        }
        assert_eq!(winners, [1], "round {round}");
    }
}

#[tokio::test]
async fn runs_newest_first_replaced_by_key_and_pruned() {
    let s = LocalStore::in_memory().unwrap();
    let k = JobKind::Reconcile;
    s.put_run(&run("people", k, "r1", 10)).await.unwrap();
    s.put_run(&run("people", k, "r3", 30)).await.unwrap();
    s.put_run(&run("people", k, "r2", 20)).await.unwrap();
    s.put_run(&run("people", JobKind::Delta, "d1", 99))
        .await
        .unwrap();
    s.put_run(&run("donations", k, "x1", 99)).await.unwrap();
    let ids = |v: Vec<RunRecord>| v.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_runs("people", k, 10).await.unwrap()),
        ["r3", "r2", "r1"]
    );
    assert_eq!(
        ids(s.list_runs("people", k, 2).await.unwrap()),
        ["r3", "r2"]
    );
    // Replace: same (entity, kind, start, run ID).
    let mut done = run("people", k, "r2", 20);
    done.finished_us = Some(25);
    done.status = "succeeded".into();
    done.summary = r#"{"deleted":3}"#.into();
    s.put_run(&done).await.unwrap();
    let runs = s.list_runs("people", k, 10).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[1], done);

    for i in 0..(RUNS_KEPT as i64 + 7) {
        s.put_run(&run("people", k, &format!("n{i:03}"), 1_000 + i))
            .await
            .unwrap();
    }
    let runs = s.list_runs("people", k, 1_000).await.unwrap();
    assert_eq!(runs.len(), RUNS_KEPT);
    assert_eq!(runs[0].started_us, 1_000 + RUNS_KEPT as i64 + 6);
    assert_eq!(runs[RUNS_KEPT - 1].started_us, 1_007);
    // Other jobs untouched by the prune.
    assert_eq!(
        s.list_runs("people", JobKind::Delta, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.list_runs("donations", k, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn events_are_processed_once_completed_until_their_retention_ends() {
    let dir = TempDir::new();
    let path = dir.path().join("events.sqlite");
    let s = LocalStore::open(&path).unwrap();
    let done = |ids: &[&str], now| {
        let s = s.clone();
        let ids: Vec<String> = ids.iter().map(|&i| i.to_owned()).collect();
        async move {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut v: Vec<String> = s
                .processed_events(&refs, now)
                .await
                .unwrap()
                .into_iter()
                .collect();
            v.sort();
            v
        }
    };
    assert!(done(&["e1"], 0).await.is_empty(), "never seen");
    s.complete_event("e1", 1_000).await.unwrap();
    s.complete_event("e2", 50).await.unwrap();
    assert_eq!(done(&["e1", "e2", "e3"], 10).await, ["e1", "e2"]);
    // Past its retention an event is new again, whether or not the row is gone yet.
    assert_eq!(done(&["e1", "e2"], 50).await, ["e1"]);
    assert_eq!(done(&["e1", "e1"], 999).await, ["e1"], "a repeated ID");
    assert!(done(&["e1"], 1_000).await.is_empty());
    // A claim written before one write per event reads as not processed.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO control_events VALUES ('old', 'in_progress', 9223372036854775807);",
        )
        .unwrap();
    assert!(done(&["old"], 0).await.is_empty());
    s.complete_event("old", 100).await.unwrap();
    assert_eq!(
        done(&["old"], 0).await,
        ["old"],
        "completing replaces the claim"
    );

    assert_eq!(s.purge_expired_events(60).await.unwrap(), 1, "e2");
    assert_eq!(done(&["e1", "e2", "old"], 59).await, ["e1", "old"]);
}

/// 100,000 records in batches of 500; the same again writes nothing; every live ID listed once.
#[tokio::test]
async fn volume_100k_records() {
    const N: usize = 100_000;
    let dir = TempDir::new();
    let s = LocalStore::open(dir.path().join("volume.sqlite")).unwrap();
    let payload = |i: usize| {
        format!(
            r#"{{"type":"Person","id":"{i}","attributes":{{"first_name":"Name{i}","last_name":"Family{}","email":"p{i}@example.org","updated_at":"2024-01-01T00:00:00Z"}}}}"#,
            i % 977
        )
    };
    let batch = |start: usize| -> Vec<Record> {
        (start..(start + 500).min(N))
            .map(|i| rec("people", &format!("{i:08}"), i as i64, 1, &payload(i)))
            .collect()
    };
    for start in (0..N).step_by(500) {
        let out = s.upsert_many(&batch(start), Strategy::Delta).await.unwrap();
        assert!(out.iter().all(|o| *o == WriteOutcome::Inserted));
    }
    for start in (0..N).step_by(500) {
        let out = s.upsert_many(&batch(start), Strategy::Delta).await.unwrap();
        assert!(
            out.iter().all(|o| *o == WriteOutcome::Unchanged),
            "batch at {start}"
        );
    }
    let mut all = Vec::with_capacity(N);
    for shard in 0..ID_SHARDS {
        let mut after: Option<String> = None;
        let start = all.len();
        loop {
            let page = s
                .list_live_ids("people", shard, after.as_deref(), 1_000)
                .await
                .unwrap();
            all.extend(page.items.into_iter().map(|i| i.id));
            match page.next_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert!(
            all[start..].windows(2).all(|w| w[0] < w[1]),
            "shard {shard} strictly sorted"
        );
    }
    assert_eq!(all.len(), N);
    all.sort();
    let want: Vec<String> = (0..N).map(|i| format!("{i:08}")).collect();
    assert_eq!(all, want);
}

#[test]
fn hex_of_the_write_path_is_the_model_s() {
    let mut rng = fastrand::Rng::with_seed(3);
    for h in [0, 1, u128::MAX, 0xabc << 64]
        .into_iter()
        .chain((0..100).map(|_| rng.u128(..)))
    {
        let h = ContentHash(h);
        assert_eq!(super::records::hex32(h).as_slice(), h.to_hex().as_bytes());
    }
}

#[tokio::test]
async fn a_page_and_its_cursor_commit_together_and_a_fenced_run_writes_neither() {
    let (e, k) = ("people", JobKind::Delta);
    let s = LocalStore::in_memory().unwrap();
    assert_eq!(s.database_id(), s.clone().database_id());
    let save = |holder, now_us, cursor| {
        Some(CursorSave {
            entity: e,
            kind: k,
            holder,
            now_us,
            ttl_us: 100,
            cursor,
        })
    };
    s.acquire_lease(e, k, "a", 0, 100).await.unwrap();
    let page = [person("1", 10, 1, "Ann"), person("2", 11, 1, "Bob")];
    let out = s
        .upsert_then_save_cursor(&s, &page, Strategy::Delta, save("a", 10, "c1"))
        .await
        .unwrap();
    assert_eq!(out, [WriteOutcome::Inserted, WriteOutcome::Inserted]);
    let st = s.job_state(e, k).await.unwrap();
    assert_eq!(
        (st.cursor.as_deref(), st.lease_expires_us),
        (Some("c1"), Some(110))
    );

    // "a" lost its lease to "b": its next page is refused whole, cursor and records.
    s.acquire_lease(e, k, "b", 200, 100).await.unwrap();
    let late = [person("3", 12, 1, "Cy")];
    let fenced = s
        .upsert_then_save_cursor(&s, &late, Strategy::Delta, save("a", 210, "c2"))
        .await;
    assert!(
        matches!(fenced, Err(StoreError::LeaseLost { .. })),
        "{fenced:?}"
    );
    assert!(
        s.get(e, "3").await.unwrap().is_none(),
        "nothing of the page"
    );
    assert_eq!(
        s.job_state(e, k).await.unwrap().cursor.as_deref(),
        Some("c1")
    );
    // Without a cursor to save, the page alone.
    let out = s
        .upsert_then_save_cursor(&s, &late, Strategy::Delta, None)
        .await
        .unwrap();
    assert_eq!(out, [WriteOutcome::Inserted]);

    // Records in another database: the two steps in turn, so the records land before the
    // fenced save fails.
    let other = LocalStore::in_memory().unwrap();
    assert_ne!(other.database_id(), s.database_id());
    let in_turn = s
        .upsert_then_save_cursor(
            &other,
            &[person("4", 13, 1, "Di")],
            Strategy::Delta,
            save("a", 220, "c3"),
        )
        .await;
    assert!(
        matches!(in_turn, Err(StoreError::LeaseLost { .. })),
        "{in_turn:?}"
    );
    assert!(other.get(e, "4").await.unwrap().is_some());
    assert_eq!(
        s.job_state(e, k).await.unwrap().cursor.as_deref(),
        Some("c1")
    );
}

/// pk has no UNIQUE constraint (see `RECORDS_SCHEMA`): concurrent writers on two connections of
/// one file, with overlapping keys, still leave one row per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_one_row_per_key() {
    let dir = TempDir::new();
    let path = dir.path().join("sync.sqlite");
    let (a, b) = (
        LocalStore::open(&path).unwrap(),
        LocalStore::open(&path).unwrap(),
    );
    let writes = (0..20).map(|w| {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            let page: Vec<Record> = (0..50)
                .map(|i| person(&i.to_string(), w, w, &format!("v{w}")))
                .collect();
            s.upsert_many(&page, Strategy::Delta).await.unwrap()
        })
    });
    let inserted: usize = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|o| {
            o.unwrap()
                .iter()
                .filter(|o| **o == WriteOutcome::Inserted)
                .count()
        })
        .sum();
    assert_eq!(inserted, 50, "each key inserted once");
    let raw = rusqlite::Connection::open(&path).unwrap();
    let (rows, keys): (i64, i64) = raw
        .query_row(
            "SELECT count(*), count(DISTINCT pk) FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, keys), (50, 50));
    assert_eq!(
        get(&a, "7").await.version.delta_us,
        19,
        "the newest write won"
    );
}
