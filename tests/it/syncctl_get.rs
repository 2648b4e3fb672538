//! `syncctl get ENTITY ID` as an operator runs it: the real binary, the embedded configuration
//! pointed at the simulator (`SOURCE_BASE_URL`), on the embedded store and on DynamoDB Local
//! (tables made by `syncctl init`). One scenario per store: a delta run, then the simulator
//! changed record by record, each `get` checked for its verdict, its exit code, what a sync
//! would do and the payload difference, in the table and in `--json`.
//!
//! The binary and the store flags: `crate::cli`.

use crate::cli::{Target, syncctl, text};
use crate::harness::{dynamodb_client, emulators, scratch, unique_name};
use serde_json::Value;
use shared::core::timefmt::now_us;
use shared::model::{DeleteOutcome, Strategy};
use source_sim::{Corruption, Entity, SimConfig, SimHandle};

/// `syncctl get people ID` in the table and in JSON: the exit code (the same for both), the
/// table and the JSON object.
async fn get(sim: &SimHandle, target: &Target, id: &str) -> (i32, String, Value) {
    let table = syncctl(sim, target, &["get", "people", id]).await;
    let json = syncctl(sim, target, &["get", "people", id, "--json"]).await;
    let code = table.status.code().expect("an exit code");
    assert_eq!(
        json.status.code(),
        Some(code),
        "the same exit code with --json: {}{}",
        text(&json.stdout),
        text(&json.stderr)
    );
    let v: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints one JSON object ({e}): {}{}",
            text(&json.stdout),
            text(&json.stderr)
        )
    });
    (code, text(&table.stdout), v)
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// A simulator of six people, and `syncctl delta` of them into `target`.
async fn synced(target: &Target) -> SimHandle {
    let sim = testkit::sim::start(SimConfig {
        people: 6,
        donations: 0,
        ..SimConfig::default()
    })
    .await;
    let out = syncctl(&sim, target, &["delta", "--entity", "people", "--json"]).await;
    assert!(
        out.status.success(),
        "delta: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    sim
}

/// The whole scenario on one store.
async fn scenario(target: Target) {
    let sim = synced(&target).await;

    // In sync after the delta run: exit 0, the same version on both sides, no difference.
    let (code, table, v) = get(&sim, &target, "1").await;
    assert_eq!(code, 0, "{table}");
    assert!(
        table.starts_with("people 1: in sync") && table.contains("payloads: no difference"),
        "{table}"
    );
    assert!(
        table.contains("a sync would write nothing: unchanged"),
        "{table}"
    );
    assert_eq!(
        keys(&v),
        [
            "diff",
            "entity",
            "id",
            "in_sync",
            "source",
            "store",
            "sync_would",
            "verdict"
        ]
    );
    assert_eq!(
        keys(&v["store"]),
        [
            "deleted_at",
            "deleted_at_us",
            "delta",
            "delta_us",
            "fetched_at",
            "fetched_at_us",
            "first_seen",
            "first_seen_us",
            "hash",
            "last_action",
            "last_synced",
            "last_synced_us",
            "status",
            "written_by"
        ]
    );
    assert_eq!(
        keys(&v["source"]),
        [
            "delta",
            "delta_us",
            "fetched_at",
            "fetched_at_us",
            "hash",
            "status"
        ]
    );
    assert_eq!(
        (&v["entity"], &v["id"], &v["verdict"], &v["in_sync"]),
        (
            &Value::from("people"),
            &Value::from("1"),
            &Value::from("in_sync"),
            &Value::from(true)
        )
    );
    assert_eq!(v["sync_would"], "unchanged");
    assert_eq!(v["store"]["hash"], v["source"]["hash"]);
    assert_eq!(v["store"]["delta_us"], v["source"]["delta_us"]);
    let version = sim.sim().get(Entity::People, 1).expect("person 1");
    assert_eq!(v["store"]["delta_us"], version.updated_at_us);
    assert_eq!(
        (
            &v["store"]["status"],
            &v["store"]["last_action"],
            &v["store"]["written_by"]
        ),
        (
            &Value::from("live"),
            &Value::from("insert"),
            &Value::from("delta")
        )
    );
    assert!(v["store"]["deleted_at"].is_null());
    // The source's copy was fetched now, after the delta run's.
    assert!(
        v["source"]["fetched_at_us"].as_i64() > v["store"]["fetched_at_us"].as_i64(),
        "{v}"
    );
    assert_eq!(
        v["diff"],
        serde_json::json!({"total": 0, "added": 0, "removed": 0, "changed": 0, "listed": 0,
                           "differences": []})
    );

    // Changed at the source since: source newer, the changed field in the difference.
    let before = sim.sim().get(Entity::People, 2).expect("person 2");
    let after = sim
        .sim()
        .update(Entity::People, 2, Some(before.updated_at_us + 60_000_000))
        .expect("updated");
    let (code, table, v) = get(&sim, &target, "2").await;
    assert_eq!(code, 3, "{table}");
    assert!(
        table.starts_with("people 2: source newer")
            && table.contains("a sync would write: updated"),
        "{table}"
    );
    assert!(table.contains("changed  /attributes/updated_at"), "{table}");
    assert_eq!(
        (&v["verdict"], &v["in_sync"], &v["sync_would"]),
        (
            &Value::from("source_newer"),
            &Value::from(false),
            &Value::from("updated")
        )
    );
    assert_eq!(v["store"]["delta_us"], before.updated_at_us);
    assert_eq!(v["source"]["delta_us"], after.updated_at_us);
    assert_ne!(v["store"]["hash"], v["source"]["hash"]);
    let changed = v["diff"]["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .find(|d| d["pointer"] == "/attributes/updated_at")
        .unwrap_or_else(|| panic!("updated_at in the difference: {v}"));
    assert_eq!(
        changed,
        &serde_json::json!({
            "change": "changed",
            "pointer": "/attributes/updated_at",
            "store": sim.sim().format_timestamp(before.updated_at_us),
            "source": sim.sim().format_timestamp(after.updated_at_us),
        })
    );
    let total = v["diff"]["total"].as_u64().expect("total");
    assert!(total >= 1 && v["diff"]["listed"] == total, "{v}");
    // --max-diffs bounds the list, never the count.
    let out = syncctl(
        &sim,
        &target,
        &["get", "people", "2", "--json", "--max-diffs", "0"],
    )
    .await;
    let bounded: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (&bounded["diff"]["total"], &bounded["diff"]["listed"]),
        (&Value::from(total), &Value::from(0))
    );
    assert_eq!(bounded["diff"]["differences"], serde_json::json!([]));

    // Deleted at the source (a JSON 404): gone at source; a targeted sync would soft-delete.
    assert!(sim.sim().delete(Entity::People, 3));
    let (code, table, v) = get(&sim, &target, "3").await;
    assert_eq!(code, 3, "{table}");
    assert!(
        table.starts_with("people 3: gone at source") && table.contains("404 (gone)"),
        "{table}"
    );
    assert_eq!(
        (&v["verdict"], &v["sync_would"], &v["source"]["status"]),
        (
            &Value::from("gone_at_source"),
            &Value::from("deleted"),
            &Value::from("gone")
        )
    );
    assert!(v["diff"].is_null() && v["store"]["status"] == "live", "{v}");

    // Soft-deleted here as well (as reconciliation would): deleted on both sides, exit 0.
    let store = target.open().await;
    let deleted = store
        .soft_delete("people", "3", now_us(), Strategy::Reconcile)
        .await
        .expect("soft delete");
    assert_eq!(deleted, DeleteOutcome::Deleted);
    let (code, table, v) = get(&sim, &target, "3").await;
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        (&v["verdict"], &v["sync_would"], &v["store"]["status"]),
        (
            &Value::from("deleted_both"),
            &Value::from("nothing"),
            &Value::from("deleted")
        )
    );
    assert!(v["store"]["deleted_at_us"].as_i64().is_some(), "{v}");
    assert_eq!(
        (&v["store"]["last_action"], &v["store"]["written_by"]),
        (&Value::from("delete"), &Value::from("reconcile"))
    );

    // Soft-deleted here, live at the source: a sync would restore it.
    store
        .soft_delete("people", "4", now_us(), Strategy::Reconcile)
        .await
        .expect("soft delete");
    let (code, table, v) = get(&sim, &target, "4").await;
    assert_eq!(code, 3, "{table}");
    assert!(
        table.contains("soft-deleted here but live at the source"),
        "{table}"
    );
    assert_eq!(
        (&v["verdict"], &v["sync_would"]),
        (
            &Value::from("deleted_here_live_there"),
            &Value::from("restored")
        )
    );
    assert_eq!(v["diff"]["total"], 0, "the same content: {v}");

    // Created at the source after the delta run: missing in store.
    let created = sim.sim().create(Entity::People, None);
    let id = created.id.to_string();
    let (code, table, v) = get(&sim, &target, &id).await;
    assert_eq!(code, 3, "{table}");
    assert_eq!(
        (&v["verdict"], &v["sync_would"], &v["store"]),
        (
            &Value::from("missing_in_store"),
            &Value::from("inserted"),
            &Value::Null
        )
    );
    assert!(v["diff"].is_null());

    // An ID neither side has: exit 4.
    let (code, table, v) = get(&sim, &target, "999999").await;
    assert_eq!(code, 4, "{table}");
    assert!(table.starts_with("people 999999: not found"), "{table}");
    assert_eq!(
        (&v["verdict"], &v["store"], &v["source"]["status"]),
        (&Value::from("nowhere"), &Value::Null, &Value::from("gone"))
    );

    // The source has it but it cannot be synced (a null delta value): reported, not a crash.
    sim.sim()
        .corrupt(Entity::People, 5, Some(Corruption::NullDelta));
    let (code, table, v) = get(&sim, &target, "5").await;
    assert_eq!(code, 3, "{table}");
    assert!(table.contains("cannot be synced"), "{table}");
    assert_eq!(
        (&v["verdict"], &v["sync_would"], &v["source"]),
        (
            &Value::from("rejected_at_source"),
            &Value::from("rejected"),
            &serde_json::json!({"status": "rejected", "reason": "null_delta"})
        )
    );
    assert_eq!(v["store"]["status"], "live");

    // Errors: exit 1, nothing on stdout, the reason on stderr.
    let out = syncctl(&sim, &target, &["get", "nobody", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("\"nobody\" is not configured")
            && err.contains("configured: people, donations"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = syncctl(&sim, &target, &["get", "people", ".."]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("dot segment"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn syncctl_get_on_the_local_store() {
    let dir = scratch("syncctl-get");
    scenario(Target::Local(dir.join("sync.sqlite"))).await;
}

#[tokio::test]
async fn syncctl_get_on_dynamodb_local() {
    let target = Target::Dynamo {
        endpoint: emulators().dynamodb_url.clone(),
        records: unique_name("it-get-records"),
        control: unique_name("it-get-control"),
    };
    let sim = testkit::sim::people(1).await;
    let out = syncctl(&sim, &target, &["init"]).await;
    // `init` takes --endpoint-url and the table names, not --db: `args()` fits it.
    assert!(
        out.status.success(),
        "init: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    scenario(target).await;
}

/// `get` takes its request from the shared rate budget (the control table's `budget#` item),
/// as every other caller of the source does: on fresh tables, one `get` and nothing else.
#[tokio::test]
async fn syncctl_get_spends_from_the_shared_budget() {
    let records = unique_name("it-get-records");
    let control = unique_name("it-get-control");
    let target = Target::Dynamo {
        endpoint: emulators().dynamodb_url.clone(),
        records: records.clone(),
        control: control.clone(),
    };
    let sim = testkit::sim::people(1).await;
    let out = syncctl(&sim, &target, &["init"]).await;
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let budget_items = || async {
        dynamodb_client()
            .await
            .scan()
            .table_name(&control)
            .send()
            .await
            .expect("scan control")
            .items()
            .iter()
            .filter(|i| {
                i.get("pk")
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|pk| pk.starts_with("budget#"))
            })
            .count()
    };
    assert_eq!(budget_items().await, 0);
    let (code, table, _) = get(&sim, &target, "1").await;
    assert_eq!(code, 3, "nothing stored yet: {table}");
    assert!(table.starts_with("people 1: missing in store"), "{table}");
    assert_eq!(budget_items().await, 1, "the budget item the get wrote");
}
