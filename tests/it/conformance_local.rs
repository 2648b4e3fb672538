//! The store conformance suite against the embedded local store (SQLite), one fresh database
//! file per test. Needs no emulator.

use crate::conformance::{budget_suite, conformance_suite};
use shared::adapters::local::LocalStore;
use shared::ports::{BudgetStore, ControlStore, RecordStore};
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

/// Where the test databases go: cargo's scratch folder for integration tests.
fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance_local")
}

/// Databases of earlier runs (older than an hour, so never one a running test uses) are
/// removed once per run, so that the folder does not grow without bound.
fn sweep_old_databases() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir(folder()) else {
            return;
        };
        let cutoff = SystemTime::now() - Duration::from_secs(3_600);
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    });
}

/// A fresh database file; both ports on the one store.
pub async fn local_stores() -> (Arc<dyn RecordStore>, Arc<dyn ControlStore>) {
    sweep_old_databases();
    let dir = folder();
    std::fs::create_dir_all(&dir).expect("create the test database folder");
    let path = dir.join(format!("{}.sqlite", uuid::Uuid::new_v4()));
    let store = Arc::new(LocalStore::open(&path).expect("open the local store"));
    (store.clone(), store)
}

pub async fn local_budget() -> Arc<dyn BudgetStore> {
    sweep_old_databases();
    std::fs::create_dir_all(folder()).expect("create the test database folder");
    let path = folder().join(format!("{}.sqlite", uuid::Uuid::new_v4()));
    Arc::new(LocalStore::open(&path).expect("open the local store"))
}

budget_suite!(local_budget_store, local_budget);

conformance_suite!(local, local_stores);

/// A second handle on the same file (a second connection, as another process would have) sees
/// and respects what the first wrote: the store is the file, not the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_agree() {
    use futures::future::join_all;
    use shared::model::{Record, Strategy, WriteOutcome};
    use shared::ports::{JobKind, LeaseOutcome};

    sweep_old_databases();
    let dir = folder();
    std::fs::create_dir_all(&dir).expect("create the test database folder");
    let path = dir.join(format!("{}.sqlite", uuid::Uuid::new_v4()));
    let a = LocalStore::open(&path).expect("open");
    let b = LocalStore::open(&path).expect("open again");

    let raw = r#"{"id":"1"}"#.to_owned();
    let r = Record::new(
        "people",
        "1",
        10,
        20,
        shared::model::RawJson::parse(raw).expect("JSON"),
    );
    let outcomes = join_all([a.upsert(&r, Strategy::Delta), b.upsert(&r, Strategy::Delta)]).await;
    let mut outcomes: Vec<WriteOutcome> =
        outcomes.into_iter().map(|o| o.expect("upsert")).collect();
    outcomes.sort_by_key(|o| *o == WriteOutcome::Unchanged);
    assert_eq!(outcomes, [WriteOutcome::Inserted, WriteOutcome::Unchanged]);
    assert_eq!(
        b.get("people", "1")
            .await
            .expect("get")
            .expect("stored")
            .version
            .delta_us,
        10
    );

    let claims = join_all((0..8).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        s.acquire_lease(
            "people",
            JobKind::Delta,
            if i % 2 == 0 { "x" } else { "y" },
            0,
            1_000_000,
        )
    }))
    .await;
    let holders: Vec<String> = claims
        .into_iter()
        .filter_map(|c| match c.expect("acquire") {
            LeaseOutcome::Acquired { .. } => None,
            LeaseOutcome::Held { holder, .. } => Some(holder),
        })
        .collect();
    let st = b.job_state("people", JobKind::Delta).await.expect("state");
    let winner = st.lease_holder.expect("someone holds it");
    assert!(
        holders.iter().all(|h| *h == winner),
        "every loser saw the one winner {winner}: {holders:?}"
    );
    assert_eq!(
        holders.len(),
        4,
        "the other holder's four attempts were refused"
    );
}
