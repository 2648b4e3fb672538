//! The store conformance suite against the DynamoDB adapter on DynamoDB Local (fresh tables per
//! test, made by `create_tables`), plus what only DynamoDB has: the item layout the
//! application reads (native payload map, compressed fallback, the sparse live-ID index).

use crate::conformance::{self, budget_suite, conformance_suite, rec};
use crate::harness::{dynamodb_client, unique_name};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use shared::StoreError;
use shared::adapters::dynamodb::{
    DynamoRecords, MAX_ID_BYTES, create_tables, record_key, schema, stores,
};
use shared::model::{ID_SHARDS, LastAction, Strategy, WriteOutcome, shard_of};
use shared::ports::{BudgetStore, ControlStore, RecordStore};
use std::collections::HashMap;
use std::sync::Arc;

/// Fresh, uniquely named tables on DynamoDB Local: the raw client and the table names.
pub async fn fresh_tables() -> (aws_sdk_dynamodb::Client, String, String) {
    let client = dynamodb_client().await;
    let records = unique_name("it-records");
    let control = unique_name("it-control");
    create_tables(&client, &records, &control)
        .await
        .expect("create the tables on DynamoDB Local");
    (client, records, control)
}

pub async fn dynamodb_stores() -> (Arc<dyn RecordStore>, Arc<dyn ControlStore>) {
    let (client, records, control) = fresh_tables().await;
    let (r, c) = stores(client, &records, &control);
    (Arc::new(r), Arc::new(c))
}

conformance_suite!(dynamodb, dynamodb_stores);

pub async fn dynamodb_budget() -> Arc<dyn BudgetStore> {
    let (client, records, control) = fresh_tables().await;
    Arc::new(stores(client, &records, &control).1)
}

budget_suite!(dynamodb_budget_store, dynamodb_budget);

async fn raw_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    entity: &str,
    id: &str,
) -> HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(record_key(entity, id)))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item()
        .cloned()
        .expect("the item exists")
}

fn n(v: &AttributeValue) -> i64 {
    v.as_n().expect("a number").parse().expect("an integer")
}

#[tokio::test]
async fn payload_is_a_native_map_the_application_can_read() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    let p = json!({
        "id": "42", "name": "Ann", "age": 42, "score": 1.5, "active": true, "nickname": null,
        "tags": ["a", "b"], "address": {"city": "Bern", "zip": "3000"}
    });
    let r = rec("people", "42", 1_000, 2_000, &p);
    assert_eq!(
        store.upsert(&r, Strategy::Delta).await.expect("upsert"),
        WriteOutcome::Inserted
    );
    let item = raw_item(&client, &table, "people", "42").await;
    let AttributeValue::M(m) = &item["payload"] else {
        panic!("payload is a map: {:?}", item["payload"]);
    };
    assert_eq!(m["name"], AttributeValue::S("Ann".into()));
    assert_eq!(m["age"], AttributeValue::N("42".into()));
    assert_eq!(m["score"], AttributeValue::N("1.5".into()));
    assert_eq!(m["active"], AttributeValue::Bool(true));
    assert_eq!(m["nickname"], AttributeValue::Null(true));
    assert_eq!(
        m["tags"],
        AttributeValue::L(vec![
            AttributeValue::S("a".into()),
            AttributeValue::S("b".into())
        ])
    );
    let AttributeValue::M(addr) = &m["address"] else {
        panic!("nested object is a map");
    };
    assert_eq!(addr["city"], AttributeValue::S("Bern".into()));
    // The metadata beside it, as documented in `schema`.
    assert_eq!(item["pk"], AttributeValue::S("people#42".into()));
    assert_eq!(item["entity"], AttributeValue::S("people".into()));
    assert_eq!(item["id"], AttributeValue::S("42".into()));
    assert_eq!(n(&item["delta_us"]), 1_000);
    assert_eq!(n(&item["fetched_at_us"]), 2_000);
    assert_eq!(item["hash"], AttributeValue::S(r.version.hash.to_hex()));
    assert_eq!(item["last_action"], AttributeValue::S("insert".into()));
    assert_eq!(item["written_by"], AttributeValue::S("delta".into()));
    assert_eq!(n(&item["first_seen_us"]), n(&item["last_synced_us"]));
    assert_eq!(
        item["gsi_pk"],
        AttributeValue::S(format!("people#{}", shard_of("42")))
    );
    assert_eq!(item["gsi_sk"], AttributeValue::S("42".into()));
    for absent in ["payload_z", "payload_encoding", "deleted_at_us"] {
        assert!(!item.contains_key(absent), "{absent} is absent");
    }
}

#[tokio::test]
async fn large_payloads_switch_between_compressed_and_native() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    let big = json!({"id": "b", "blob": "abc ".repeat(100 * 1024)});
    store
        .upsert(&rec("people", "b", 1, 2, &big), Strategy::Delta)
        .await
        .expect("upsert");
    let item = raw_item(&client, &table, "people", "b").await;
    assert!(!item.contains_key("payload"), "no native payload");
    assert_eq!(
        item["payload_encoding"],
        AttributeValue::S("zlib-json".into())
    );
    let z = item["payload_z"].as_b().expect("payload_z is binary");
    assert!(
        z.as_ref().len() < 20 * 1024,
        "compressed: {}",
        z.as_ref().len()
    );
    assert_eq!(
        store
            .get("people", "b")
            .await
            .expect("get")
            .expect("stored")
            .payload,
        big
    );
    // Back to a small payload: native again, the compressed attributes gone.
    let small = json!({"id": "b", "blob": "short"});
    assert_eq!(
        store
            .upsert(&rec("people", "b", 2, 3, &small), Strategy::Delta)
            .await
            .expect("upsert"),
        WriteOutcome::Updated
    );
    let item = raw_item(&client, &table, "people", "b").await;
    assert!(item["payload"].is_m());
    assert!(!item.contains_key("payload_z") && !item.contains_key("payload_encoding"));
}

#[tokio::test]
async fn soft_deleted_items_leave_the_sparse_index() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    store
        .upsert(
            &rec("people", "7", 1, 2, &json!({"id": 7})),
            Strategy::Delta,
        )
        .await
        .expect("upsert");
    store
        .soft_delete("people", "7", 10, Strategy::Reconcile)
        .await
        .expect("delete");
    let item = raw_item(&client, &table, "people", "7").await;
    assert!(!item.contains_key("gsi_pk") && !item.contains_key("gsi_sk"));
    assert_eq!(n(&item["deleted_at_us"]), 10);
    assert_eq!(item["last_action"], AttributeValue::S("delete".into()));
    assert!(item["payload"].is_m(), "payload kept");
    // The index really has nothing for it (scan of the index itself).
    let scanned = client
        .scan()
        .table_name(&table)
        .index_name(schema::LIVE_IDS_INDEX)
        .send()
        .await
        .expect("scan the index");
    assert_eq!(scanned.count(), 0);
    // Restored: back in the index, with `delta_us` projected.
    assert_eq!(
        store
            .upsert(
                &rec("people", "7", 3, 11, &json!({"id": 7, "v": 2})),
                Strategy::Targeted
            )
            .await
            .expect("upsert"),
        WriteOutcome::Restored
    );
    let item = raw_item(&client, &table, "people", "7").await;
    assert!(!item.contains_key("deleted_at_us"));
    assert_eq!(
        item["gsi_pk"],
        AttributeValue::S(format!("people#{}", shard_of("7")))
    );
    let scanned = client
        .scan()
        .table_name(&table)
        .index_name(schema::LIVE_IDS_INDEX)
        .send()
        .await
        .expect("scan the index");
    assert_eq!(scanned.count(), 1);
    let entry = &scanned.items()[0];
    assert_eq!(n(&entry["delta_us"]), 3, "the index projects delta_us");
    assert!(!entry.contains_key("payload"), "and not the payload");
}

#[tokio::test]
async fn five_hundred_item_batch_is_written_without_throttling() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    let batch: Vec<_> = (0..500)
        .map(|i| {
            rec(
                "donations",
                &format!("d{i:04}"),
                1_000 + i,
                2_000,
                &json!({"id": i, "amount": i * 10}),
            )
        })
        .collect();
    let out = store
        .upsert_many(&batch, Strategy::Delta)
        .await
        .expect("upsert_many");
    assert_eq!(out, vec![WriteOutcome::Inserted; 500]);
    // And again: all unchanged, nothing rewritten.
    let out = store
        .upsert_many(&batch, Strategy::Delta)
        .await
        .expect("upsert_many");
    assert_eq!(out, vec![WriteOutcome::Unchanged; 500]);
    let mut total = 0;
    for shard in 0..ID_SHARDS {
        total += conformance::all_live(&store, "donations", shard, 1_000)
            .await
            .len();
    }
    assert_eq!(total, 500);
    let got = store
        .get("donations", "d0499")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(got.payload, json!({"id": 499, "amount": 4990}));
    assert_eq!(got.last_action, LastAction::Insert);
}

#[tokio::test]
async fn a_corrupt_item_is_a_decode_error_not_a_panic() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    let put = |id: &str, hash: &str, delta: AttributeValue| {
        client
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(record_key("people", id)))
            .item("entity", AttributeValue::S("people".into()))
            .item("id", AttributeValue::S(id.into()))
            .item("delta_us", delta)
            .item("fetched_at_us", AttributeValue::N("2".into()))
            .item("hash", AttributeValue::S(hash.into()))
            .item("payload", AttributeValue::M(HashMap::new()))
            .item("first_seen_us", AttributeValue::N("1".into()))
            .item("last_synced_us", AttributeValue::N("1".into()))
            .item("last_action", AttributeValue::S("insert".into()))
            .item("written_by", AttributeValue::S("delta".into()))
            .item(
                "gsi_pk",
                AttributeValue::S(format!("people#{}", shard_of(id))),
            )
            .item("gsi_sk", AttributeValue::S(id.into()))
            .send()
    };
    put("bad-hash", "not-hex", AttributeValue::N("1".into()))
        .await
        .expect("put");
    put(
        "bad-delta",
        &"0".repeat(32),
        AttributeValue::S("yesterday".into()),
    )
    .await
    .expect("put");
    for id in ["bad-hash", "bad-delta"] {
        match store.get("people", id).await {
            Err(StoreError::Decode { key, message }) => {
                assert_eq!(key, format!("people#{id}"));
                assert!(!message.is_empty());
            }
            other => panic!("{id}: want Decode, got {other:?}"),
        }
        // A write over it needs the old version: a Decode error too.
        let r = rec("people", id, 5, 6, &json!({"id": id}));
        assert!(
            matches!(
                store.upsert(&r, Strategy::Delta).await,
                Err(StoreError::Decode { .. })
            ),
            "{id}"
        );
    }
    // The index projects the corrupt delta: listing that shard is a Decode error as well.
    let listed = store
        .list_live_ids("people", shard_of("bad-delta"), None, 10)
        .await;
    assert!(
        matches!(listed, Err(StoreError::Decode { .. })),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_missing_table_is_a_backend_error() {
    let client = dynamodb_client().await;
    let store = DynamoRecords::new(client, unique_name("it-no-such-table"));
    match store.get("people", "1").await {
        Err(e @ StoreError::Backend { .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("get record"), "{e}");
        }
        other => panic!("want Backend, got {other:?}"),
    }
}

/// What DynamoDB cannot hold as a native value (checked against DynamoDB Local's real
/// validation) is stored compressed, and everything round-trips.
#[tokio::test]
async fn payloads_dynamodb_cannot_hold_natively_fall_back() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    let nest = |levels: usize| {
        let mut v = json!("leaf");
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    };
    let cases = [
        ("empty-key", json!({"": "x", "a": 1}), false),
        ("huge-number", json!({"n": 1e200}), false),
        ("tiny-number", json!({"n": -1e-200}), false),
        ("nested-32", nest(32), false),
        ("nested-31", nest(31), true),
        ("many-zeros", json!({"z": vec![0; 170 * 1024]}), false),
    ];
    for (id, p, native) in cases {
        let r = rec("people", id, 1, 2, &p);
        assert_eq!(
            store.upsert(&r, Strategy::Delta).await.expect(id),
            WriteOutcome::Inserted,
            "{id}"
        );
        let item = raw_item(&client, &table, "people", id).await;
        assert_eq!(item.contains_key("payload"), native, "{id} native");
        assert_eq!(item.contains_key("payload_z"), !native, "{id} compressed");
        let got = store.get("people", id).await.expect("get").expect("stored");
        assert!(got.payload == p, "{id} round-trips");
    }
}

/// DynamoDB indexes at most 1024 bytes of sort key: a longer ID is `TooLarge` (not a retryable
/// backend error), and reads of such an ID find nothing without asking.
#[tokio::test]
async fn ids_beyond_the_index_key_limit_are_too_large() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client, &table);
    let longest = "é".repeat(MAX_ID_BYTES / 2);
    let r = rec("people", &longest, 1, 2, &json!({"id": "long"}));
    assert_eq!(
        store
            .upsert(&r, Strategy::Delta)
            .await
            .expect("1024 bytes fit"),
        WriteOutcome::Inserted
    );
    assert_eq!(
        store
            .get("people", &longest)
            .await
            .expect("get")
            .expect("stored")
            .id,
        longest
    );
    let too_long = format!("{longest}x");
    let r = rec("people", &too_long, 1, 2, &json!({"id": "longer"}));
    match store.upsert_many(&[r], Strategy::Delta).await {
        Err(StoreError::TooLarge { bytes, .. }) => assert_eq!(bytes, MAX_ID_BYTES + 1),
        other => panic!("want TooLarge, got {other:?}"),
    }
    assert!(store.get("people", &too_long).await.expect("get").is_none());
    assert_eq!(
        store
            .soft_delete("people", &too_long, 5, Strategy::Reconcile)
            .await
            .expect("delete"),
        shared::model::DeleteOutcome::NotFound
    );
}

/// The 404 window's item: `notfound#<entity>` / `window`, one pair of bucket attributes per
/// 10-minute window (`f_<w>`, `n_<w>`), the ones two or more windows back removed by the same
/// UpdateItem, and a `ttl` (epoch seconds) at the end of the next window, so that an idle
/// entity's item expires.
#[tokio::test]
async fn the_not_found_window_is_one_item_with_a_ttl_and_two_live_buckets() {
    use shared::core::timefmt::now_us;
    use shared::ports::{NOT_FOUND_WINDOW_US, NotFoundCounts, not_found_window};
    let (client, records, control) = fresh_tables().await;
    let (_, c) = stores(client.clone(), &records, &control);
    let w = not_found_window(now_us());
    let add = |k: i64, n: u64| {
        let c = &c;
        async move {
            c.count_not_found(
                "people",
                (w + k) * NOT_FOUND_WINDOW_US,
                NotFoundCounts {
                    fetched: 3,
                    not_found: n,
                },
            )
            .await
            .expect("count")
        }
    };
    add(0, 1).await;
    add(1, 2).await;
    add(2, 0).await;
    let item = client
        .get_item()
        .table_name(&control)
        .key("pk", AttributeValue::S("notfound#people".into()))
        .key("sk", AttributeValue::S("window".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item()
        .cloned()
        .expect("the item exists");
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort();
    let (f1, n1, f2, n2) = (
        format!("f_{}", w + 1),
        format!("n_{}", w + 1),
        format!("f_{}", w + 2),
        format!("n_{}", w + 2),
    );
    let mut want = vec!["entity", "pk", "sk", "ttl", &f1, &n1, &f2, &n2];
    want.sort();
    assert_eq!(names, want, "window {w} removed");
    assert_eq!(n(&item[&n1]), 2);
    assert_eq!(n(&item[&f2]), 3);
    assert_eq!(n(&item["ttl"]), (w + 4) * NOT_FOUND_WINDOW_US / 1_000_000);
}

/// A slice asked exactly when the stored schedule ends (`tat_us == now`) by a caller whose
/// last sight of the schedule is older: its first form (idle, `tat_us < :now`) fails, and the
/// old image must send it to the other form, not the same one sixteen times.
#[tokio::test]
async fn a_slice_asked_exactly_at_the_schedule_end_settles() {
    use shared::core::budget::{SliceAnswer, SliceAsk};
    use shared::core::timefmt::now_us;
    let (client, records, control) = fresh_tables().await;
    let a = stores(client.clone(), &records, &control).1;
    let b = stores(client, &records, &control).1;
    let now = now_us();
    let ask = |now_us, tokens| SliceAsk {
        now_us,
        tokens,
        interval_us: 10,
        lookahead_us: 0,
    };
    assert!(matches!(
        a.take_slice("acct", ask(now, 4)).await.unwrap(),
        SliceAnswer::Granted { first_us, .. } if first_us == now
    ));
    match b.take_slice("acct", ask(now + 40, 1)).await {
        Ok(SliceAnswer::Granted { first_us, .. }) => assert_eq!(first_us, now + 40),
        other => panic!("want a slice at the schedule's end, got {other:?}"),
    }
}

/// An erasure's marker as the application reads the item: the key, who and when, deleted;
/// nothing of the record (no payload in either form, no version, no hash), out of the index.
#[tokio::test]
async fn an_erased_item_holds_no_data_of_the_record() {
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table);
    let big = json!({"id": "7", "blob": "z".repeat(400 * 1024)});
    for (id, payload) in [("6", json!({"id": "6", "name": "Ann"})), ("7", big)] {
        let r = rec("people", id, 1_000, 2_000, &payload);
        store.upsert(&r, Strategy::Delta).await.expect("upsert");
        assert_eq!(
            store
                .erase("people", id, 9_000, "dpo")
                .await
                .expect("erase"),
            shared::model::EraseOutcome::Erased
        );
        let item = raw_item(&client, &table, "people", id).await;
        let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "deleted_at_us",
                "entity",
                "erased_by",
                "erased_us",
                "first_seen_us",
                "id",
                "last_action",
                "last_synced_us",
                "pk",
                "written_by"
            ],
            "{id}: only the key, the erasure and its times"
        );
        assert_eq!(n(&item["erased_us"]), 9_000);
        assert_eq!(n(&item["deleted_at_us"]), 9_000);
        assert_eq!(item["erased_by"].as_s().expect("a string"), "dpo");
        assert_eq!(item["last_action"].as_s().expect("a string"), "erased");
    }
}

/// Erases `id` (on its own client and runtime) just before the first `UpdateItem` of `id`'s
/// item goes out: an erasure landing between `upsert_many`'s read of the stored versions (or a
/// soft delete's decision) and its conditional write.
#[derive(Debug, Clone)]
struct EraseBeforeWrite {
    armed: Arc<std::sync::atomic::AtomicBool>,
    table: String,
    id: String,
}

impl aws_sdk_dynamodb::config::Intercept for EraseBeforeWrite {
    fn name(&self) -> &'static str {
        "EraseBeforeWrite"
    }

    fn read_before_transmit(
        &self,
        ctx: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let update = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".UpdateItem"));
        if !update || !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let (table, id) = (self.table.clone(), self.id.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let store = DynamoRecords::new(dynamodb_client().await, &table);
                store.erase("people", &id, 5_000, "race").await
            })
        })
        .join()
        .expect("the erasing thread")
        .expect("erase");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_between_the_version_read_and_the_conditional_write_wins() {
    use shared::model::{DeleteOutcome, WriteOutcome};
    let (client, table, _) = fresh_tables().await;
    let plain = DynamoRecords::new(client, &table);
    let sdk = crate::harness::sdk_config().await;
    for (id, case) in [("u", "update"), ("r", "restore"), ("d", "delete")] {
        let first = rec("people", id, 1_000, 1_000, &json!({"id": id, "v": 1}));
        plain.upsert(&first, Strategy::Delta).await.expect("insert");
        if case == "restore" {
            plain
                .soft_delete("people", id, 2_000, Strategy::Reconcile)
                .await
                .expect("soft delete");
        }
        let hook = EraseBeforeWrite {
            armed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            table: table.clone(),
            id: id.to_owned(),
        };
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(hook.clone())
            .build();
        let store = DynamoRecords::new(aws_sdk_dynamodb::Client::from_conf(conf), &table);
        if case == "delete" {
            assert_eq!(
                store
                    .soft_delete("people", id, 3_000, Strategy::Webhook)
                    .await
                    .expect("soft delete"),
                DeleteOutcome::Suppressed,
                "{case}"
            );
        } else {
            // Read as an update (newer) or a restore (fetched after the deletion), then erased.
            let next = rec("people", id, 2_000, 3_000, &json!({"id": id, "v": 2}));
            assert_eq!(
                store
                    .upsert_many(&[next], Strategy::Webhook)
                    .await
                    .expect("upsert"),
                [WriteOutcome::Suppressed],
                "{case}"
            );
        }
        assert!(
            !hook.armed.load(std::sync::atomic::Ordering::SeqCst),
            "{case}: the erasure ran between the read and the write"
        );
        let got = plain.get("people", id).await.expect("get").expect("stored");
        assert_eq!(
            got.erased.map(|e| (e.erased_us, e.erased_by)),
            Some((5_000, "race".to_owned())),
            "{case}"
        );
    }
}

/// With a tombstone retention (the stack's `TombstoneRetentionDays`), a soft delete sets the
/// TTL attribute `expires_at` (epoch seconds, rounded up) to its evidence plus the retention,
/// a later evidence moves it, and a restore removes it; a live item, an erasure's marker and a
/// store keeping tombstones for ever never carry one.
#[tokio::test]
async fn soft_deletes_expire_after_the_retention_and_a_restore_keeps_the_record() {
    use shared::config::TombstoneRetention;
    use shared::core::timefmt::now_us;
    use shared::model::{DeleteOutcome, WriteOutcome};
    const DAY_S: i64 = 86_400;
    let (client, table, _) = fresh_tables().await;
    let store = DynamoRecords::new(client.clone(), &table)
        .with_tombstone_retention(TombstoneRetention::days(7));
    let t0 = now_us();
    let r = rec("people", "t1", 1_000, t0, &json!({"id": "t1"}));
    assert_eq!(
        store.upsert(&r, Strategy::Delta).await.expect("insert"),
        WriteOutcome::Inserted
    );
    let expires = |item: &HashMap<String, AttributeValue>| item.get("expires_at").map(n);
    assert_eq!(
        expires(&raw_item(&client, &table, "people", "t1").await),
        None
    );
    let e1 = t0 + 1_500_000;
    assert_eq!(
        store
            .soft_delete("people", "t1", e1, Strategy::Webhook)
            .await
            .expect("soft delete"),
        DeleteOutcome::Deleted
    );
    let at = |evidence: i64| (evidence + 999_999).div_euclid(1_000_000) + 7 * DAY_S;
    assert_eq!(
        expires(&raw_item(&client, &table, "people", "t1").await),
        Some(at(e1))
    );
    // The source was seen without it again, later: the expiry moves with the evidence.
    let e2 = e1 + 60_000_000;
    assert_eq!(
        store
            .soft_delete("people", "t1", e2, Strategy::Reconcile)
            .await
            .expect("soft delete again"),
        DeleteOutcome::AlreadyDeleted
    );
    assert_eq!(
        expires(&raw_item(&client, &table, "people", "t1").await),
        Some(at(e2))
    );
    // Restored: the record stays.
    let back = rec("people", "t1", 2_000, e2 + 1, &json!({"id": "t1", "v": 2}));
    assert_eq!(
        store
            .upsert(&back, Strategy::Targeted)
            .await
            .expect("restore"),
        WriteOutcome::Restored
    );
    assert_eq!(
        expires(&raw_item(&client, &table, "people", "t1").await),
        None
    );
    // Deleted again, then erased: the marker never expires.
    store
        .soft_delete("people", "t1", e2 + 10, Strategy::Webhook)
        .await
        .expect("soft delete");
    assert!(expires(&raw_item(&client, &table, "people", "t1").await).is_some());
    store
        .erase("people", "t1", e2 + 20, "ops")
        .await
        .expect("erase");
    assert_eq!(
        expires(&raw_item(&client, &table, "people", "t1").await),
        None
    );
    // Kept for ever (the default, and TombstoneRetentionDays = 0): no expiry.
    let forever = DynamoRecords::new(client.clone(), &table);
    let r = rec("people", "t2", 1_000, t0, &json!({"id": "t2"}));
    forever.upsert(&r, Strategy::Delta).await.expect("insert");
    forever
        .soft_delete("people", "t2", e1, Strategy::Webhook)
        .await
        .expect("soft delete");
    assert_eq!(
        expires(&raw_item(&client, &table, "people", "t2").await),
        None
    );
    // The table's TTL is on that attribute (create_tables, as the template's).
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("DescribeTimeToLive");
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expires_at")
    );
}

/// Restores a soft-deleted record (on its own client and runtime) just before the first
/// `DeleteItem` goes out: a restore landing between the purge's scan and its delete.
#[derive(Debug, Clone)]
struct RestoreBeforeDelete {
    armed: Arc<std::sync::atomic::AtomicBool>,
    table: String,
    record: shared::model::Record,
}

impl aws_sdk_dynamodb::config::Intercept for RestoreBeforeDelete {
    fn name(&self) -> &'static str {
        "RestoreBeforeDelete"
    }

    fn read_before_transmit(
        &self,
        ctx: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let delete = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".DeleteItem"));
        if !delete || !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let (table, record) = (self.table.clone(), self.record.clone());
        let restored = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let store = DynamoRecords::new(dynamodb_client().await, &table);
                store.upsert(&record, Strategy::Targeted).await
            })
        })
        .join()
        .expect("the restoring thread")
        .expect("restore");
        assert_eq!(restored, WriteOutcome::Restored);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_between_the_purge_scan_and_its_delete_wins() {
    let (client, table, _) = fresh_tables().await;
    let plain = DynamoRecords::new(client, &table);
    let r = rec("people", "p1", 1_000, 1_000, &json!({"id": "p1"}));
    plain.upsert(&r, Strategy::Delta).await.expect("insert");
    plain
        .soft_delete("people", "p1", 2_000, Strategy::Reconcile)
        .await
        .expect("soft delete");
    let hook = RestoreBeforeDelete {
        armed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        table: table.clone(),
        record: rec(
            "people",
            "p1",
            1_000,
            3_000,
            &json!({"id": "p1", "back": true}),
        ),
    };
    let sdk = crate::harness::sdk_config().await;
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(hook.clone())
        .build();
    let store = DynamoRecords::new(aws_sdk_dynamodb::Client::from_conf(conf), &table);
    let count = store
        .purge_deleted(Some("people"), 10_000, None, false)
        .await
        .expect("purge");
    assert!(
        !hook.armed.load(std::sync::atomic::Ordering::SeqCst),
        "the restore ran"
    );
    assert_eq!((count.matched, count.purged, count.changed), (1, 0, 1));
    let got = plain.get("people", "p1").await.expect("get").expect("kept");
    assert!(!got.is_deleted());
    assert_eq!(got.payload, json!({"id": "p1", "back": true}));
}
