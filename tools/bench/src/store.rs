//! The local store alone: the writes of a delta sync (a page of upserts and its cursor save, per
//! page) without the source client, so that the store's own cost per record shows.

use crate::measure::{cpu_time, peak_rss_bytes};
use shared::adapters::local::LocalStore;
use shared::model::{Record, Strategy};
use shared::ports::{ControlStore, CursorSave, JobKind};
use std::path::Path;
use std::time::Instant;

/// Pages of `per_page` records with IDs `first..`, `delta_us` growing with the ID.
fn page(first: usize, per_page: usize, fetched_at_us: i64) -> Vec<Record> {
    (first..first + per_page)
        .map(|i| {
            let json = crate::person(i);
            Record::new(
                "people",
                i.to_string(),
                1_704_067_200_000_000 + i as i64 * 1_000_000,
                fetched_at_us,
                shared::model::RawJson::parse(json).expect("valid JSON"),
            )
        })
        .collect()
}

pub fn store_bench(records: usize, db: &Path) -> serde_json::Value {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let per_page = 100;
    let store = LocalStore::open(db).expect("local store");
    crate::measure::settle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (holder, ttl) = ("bench", 600_000_000);
    rt.block_on(store.acquire_lease("people", JobKind::Delta, holder, 1, ttl))
        .expect("lease");
    let run = |label: &str, fetched_at_us: i64| {
        let (mut cpu, mut written, mut seen) = (0.0, 0usize, 0usize);
        let t0 = Instant::now();
        for p in 0..records.div_ceil(per_page) {
            let recs = page(1 + p * per_page, per_page, fetched_at_us);
            let c0 = cpu_time();
            let cursor = format!("{p}");
            let save = CursorSave {
                entity: "people",
                kind: JobKind::Delta,
                holder,
                now_us: fetched_at_us,
                ttl_us: ttl,
                cursor: &cursor,
            };
            // As the delta sync writes a page: the records and the cursor in one call.
            let outcomes = rt
                .block_on(store.upsert_then_save_cursor(&store, &recs, Strategy::Delta, Some(save)))
                .expect("upsert and save cursor");
            cpu += (cpu_time() - c0).as_secs_f64();
            seen += recs.len();
            written += outcomes.iter().filter(|o| o.wrote()).count();
        }
        serde_json::json!({
            "run": label,
            "seen": seen,
            "written": written,
            "records_per_cpu_second": (seen as f64 / cpu).round(),
            "cpu_us_per_record": ((cpu * 1e6 / seen.max(1) as f64) * 100.0).round() / 100.0,
            "wall_seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    };
    let first = run("insert", 10);
    let second = run("unchanged", 20);
    serde_json::json!({
        "bench": "store",
        "records": records,
        "runs": [first, second],
        "peak_rss_bytes": peak_rss_bytes(),
        "db_bytes": std::fs::metadata(db).map(|m| m.len()).unwrap_or(0),
    })
}
