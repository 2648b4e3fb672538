//! `syncctl reconcile` end to end: the simulator as the source, a temporary store file and
//! spill folder, the command line parsed as the binary parses it; drift made behind the
//! engine's back (no delta run, no webhook target).

use super::*;
use crate::demo::{compare, reconcile_leg};
use shared::SourceError;
use shared::model::Record;
use shared::sync::delta::{DeltaOptions, run_delta};
use source_sim::{Entity, SimConfig, SimHandle};
use std::time::Duration;
use testkit::TempDir;
use testkit::config::basic;
use testkit::forward::{Forward, SourceHooks};

/// The simulator with basic auth, as `syncctl demo` runs it.
async fn sim(people: usize, donations: usize) -> SimHandle {
    testkit::sim::start(SimConfig {
        people,
        donations,
        auth: Some(basic::header()),
        ..SimConfig::default()
    })
    .await
}

fn config_for(sim: &SimHandle) -> Config {
    let mut config = testkit::config::at(&sim.base_url());
    config.source.auth = basic::auth();
    config
}

fn client(config: &Config) -> SourceClient {
    SourceClient::new(config, Some(basic::secret())).expect("source client")
}

/// A store file and a spill folder, removed on drop.
struct Dir(TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(TempDir::new("syncctl-reconcile"))
    }
    fn db(&self) -> PathBuf {
        self.0.join("sync.sqlite")
    }
    fn spill(&self) -> PathBuf {
        self.0.join("spill")
    }
    fn store(&self) -> LocalStore {
        LocalStore::open(self.db()).unwrap()
    }
    /// `syncctl reconcile --db <db> --spill <spill> <flags>`, parsed by the real command line.
    fn args(&self, flags: &[&str]) -> ReconcileArgs {
        let db = self.db().display().to_string();
        let spill = self.spill().display().to_string();
        let mut argv = vec!["syncctl", "reconcile", "--db", &db, "--spill", &spill];
        argv.extend_from_slice(flags);
        match <crate::Cli as clap::Parser>::try_parse_from(argv)
            .expect("parse")
            .command
        {
            crate::Command::Reconcile(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }
}

/// Delta sync of every entity into the store: store == source.
async fn backfill(config: &Config, store: &LocalStore, h: &SimHandle) {
    let src = client(config);
    for e in &config.entities {
        run_delta(&src, store, store, &e.name, &DeltaOptions::default())
            .await
            .expect("backfill");
    }
    assert!(compare(store, h, Entity::People).await.unwrap().is_empty());
}

async fn live(store: &LocalStore, id: u64) -> bool {
    store
        .get("people", &id.to_string())
        .await
        .unwrap()
        .is_some_and(|r| !r.is_deleted())
}

#[tokio::test]
async fn deletions_missed_and_stale_records_are_repaired_and_process_queue_fetches_them() {
    let h = sim(60, 0).await;
    let config = config_for(&h);
    let dir = Dir::new();
    backfill(&config, &dir.store(), &h).await;
    // Drift behind the engine's back: 2 deleted, 1 created, 1 updated.
    let s = h.sim();
    assert!(s.delete(Entity::People, 12) && s.delete(Entity::People, 31));
    let created = s.create(Entity::People, None);
    let updated = s.update(Entity::People, 5, None).unwrap();

    let source = client(&config);
    let args = dir.args(&["--entity", "people", "--process-queue"]);
    let report = execute(&args, &config, &source).await.expect("runs");
    assert_eq!(report.runs.len(), 1);
    let r = &report.runs[0];
    assert_eq!(
        (r.entity.as_str(), r.status.as_str()),
        ("people", "succeeded")
    );
    assert_eq!((r.source_count, r.destination_count), (Some(59), Some(60)));
    assert_eq!((r.deleted, r.missed, r.stale, r.queued), (2, 1, 1, 2));
    assert_eq!(r.guard, Some(Decision::Delete));
    assert_eq!((r.error.as_deref(), r.next_step.as_deref()), (None, None));
    let w = report.worker.expect("drained");
    assert_eq!((w.messages, w.fetched, w.written, w.failed), (2, 2, 2, 0));
    assert!(conclude(&report).is_ok());

    let store = dir.store();
    for id in [12, 31] {
        let rec = store.get("people", &id.to_string()).await.unwrap();
        assert!(
            rec.is_some_and(|r| r.is_deleted()),
            "person {id} soft-deleted"
        );
    }
    let got = store.get("people", &created.id.to_string()).await.unwrap();
    assert!(got.is_some_and(|r| r.version.delta_us == created.updated_at_us));
    let got = store.get("people", "5").await.unwrap().unwrap();
    assert_eq!(got.version.delta_us, updated.updated_at_us);
    assert_eq!(
        compare(&store, &h, Entity::People).await.unwrap(),
        Default::default()
    );
    // The run's spill files are gone; the queue is empty.
    let left = shared::ports::SpillStore::list(&LocalSpill::new(dir.spill()).unwrap(), "")
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let c = store
        .queue("work", QueueOptions::default())
        .counts()
        .await
        .unwrap();
    assert_eq!((c.visible, c.in_flight), (0, 0));

    // The table says it; `status` shows the run.
    let text = report.render();
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "people",
                    "succeeded",
                    "59",
                    "60",
                    "2",
                    "1",
                    "1",
                    "2",
                    "delete"
                ]),
        "{text}"
    );
    assert!(text.contains("2 records fetched from the source"), "{text}");
    let rows = crate::status::collect(&config, &store, 3).await.unwrap();
    let people = &rows[0]["reconcile"];
    assert_eq!(people["runs"][0]["status"], "succeeded");
    assert_eq!(people["runs"][0]["run_id"].as_str(), r.run_id.as_deref());
    assert_eq!(people["runs"][0]["summary"]["deleted"], 2);
    assert!(people["awaiting_approval"].is_null());
}

#[tokio::test]
async fn without_process_queue_the_fetches_wait_in_the_queue_serve_works_on() {
    let h = sim(30, 0).await;
    let config = config_for(&h);
    let dir = Dir::new();
    backfill(&config, &dir.store(), &h).await;
    let created = h.sim().create(Entity::People, None);

    let source = client(&config);
    let report = execute(&dir.args(&["--entity", "people"]), &config, &source)
        .await
        .unwrap();
    let r = &report.runs[0];
    assert_eq!((r.status.as_str(), r.missed, r.queued), ("succeeded", 1, 1));
    assert!(report.worker.is_none());
    assert!(
        r.next_step
            .as_deref()
            .is_some_and(|s| s.contains("--process-queue")),
        "{r:?}"
    );
    assert!(!live(&dir.store(), created.id).await, "only queued so far");
    let queue = dir.store().queue("work", QueueOptions::default());
    assert_eq!(queue.counts().await.unwrap().visible, 1);

    // `syncctl serve` on the same file fetches it.
    let serve = crate::serve::start(crate::serve::ServeOptions::new(
        dir.store(),
        config.clone(),
        vec!["whsec".into()],
        Arc::new(client(&config)),
    ))
    .await
    .unwrap();
    let store = dir.store();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !live(&store, created.id).await {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not fetch the missed record"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.shutdown().await.unwrap();
    assert!(
        compare(&store, &h, Entity::People)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn over_the_threshold_the_run_waits_for_approval_exits_zero_and_deletes_nothing() {
    let h = sim(50, 0).await;
    let config = config_for(&h);
    let dir = Dir::new();
    backfill(&config, &dir.store(), &h).await;
    for id in 11..=20 {
        assert!(h.sim().delete(Entity::People, id));
    }
    let source = client(&config);
    // 10 of 50 (20%) is over the default 5%.
    let report = execute(&dir.args(&["--entity", "people"]), &config, &source)
        .await
        .unwrap();
    let r = &report.runs[0];
    assert_eq!((r.status.as_str(), r.deleted), ("awaiting_approval", 0));
    assert!(
        matches!(&r.guard, Some(Decision::NeedsApproval { reason }) if reason.contains("10 deletions"))
    );
    assert!(conclude(&report).is_ok(), "not a failure: exit 0");
    let next = r.next_step.as_deref().unwrap_or_default();
    assert!(
        next.contains("syncctl reconcile --entity people --approve-deletions"),
        "{next}"
    );
    let text = report.render();
    assert!(text.contains("people: NOTHING WAS DELETED."), "{text}");
    assert!(
        text.contains("people: guard needs approval: 10 deletions"),
        "{text}"
    );
    for id in 11..=20 {
        assert!(live(&dir.store(), id).await, "person {id} kept");
    }
    // `status` calls the waiting run out.
    let store = dir.store();
    let rows = crate::status::collect(&config, &store, 3).await.unwrap();
    let waiting = &rows[0]["reconcile"]["awaiting_approval"];
    assert_eq!(waiting["run_id"].as_str(), r.run_id.as_deref());
    assert!(waiting["reason"].as_str().unwrap().contains("10 deletions"));
    let table = crate::status::table(&rows);
    assert!(table.contains("awaits approval"), "{table}");
    assert!(table.contains("--approve-deletions"), "{table}");

    // A report-only run changes nothing either; then the approved run deletes.
    let report = execute(
        &dir.args(&["--entity", "people", "--report-only", "--approve-deletions"]),
        &config,
        &source,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.runs[0].status.as_str(), report.runs[0].deleted),
        ("report_only", 0)
    );
    assert!(live(&dir.store(), 11).await);
    let report = execute(
        &dir.args(&["--entity", "people", "--approve-deletions"]),
        &config,
        &source,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.runs[0].status.as_str(), report.runs[0].deleted),
        ("succeeded", 10)
    );
    assert!(
        compare(&store, &h, Entity::People)
            .await
            .unwrap()
            .is_empty()
    );
    let rows = crate::status::collect(&config, &store, 3).await.unwrap();
    assert!(rows[0]["reconcile"]["awaiting_approval"].is_null());
}

#[tokio::test]
async fn an_empty_listing_is_blocked_exits_zero_and_deletes_nothing() {
    let h = sim(40, 0).await;
    let config = config_for(&h);
    let dir = Dir::new();
    backfill(&config, &dir.store(), &h).await;
    // The same engine pointed at an account with no people.
    let empty = sim(0, 0).await;
    let wrong = config_for(&empty);
    let report = execute(
        &dir.args(&["--entity", "people", "--json"]),
        &wrong,
        &client(&wrong),
    )
    .await
    .unwrap();
    let r = &report.runs[0];
    assert_eq!((r.status.as_str(), r.deleted), ("guard_blocked", 0));
    assert_eq!((r.source_count, r.destination_count), (Some(0), Some(40)));
    assert!(
        r.guard_reason()
            .is_some_and(|x| x.contains("listing is empty")),
        "{r:?}"
    );
    assert!(conclude(&report).is_ok());
    assert!(
        report
            .render()
            .contains("people: NOTHING WAS DELETED. Check the source")
    );
    assert_eq!(
        compare(&dir.store(), &h, Entity::People).await.unwrap(),
        Default::default(),
        "every record kept"
    );
}

/// A source's hook: the simulator, except that `get_by_id` fails (a 403): the guard cannot
/// confirm.
struct NoGetById;

#[async_trait::async_trait]
impl<S: SourceApi + ?Sized> SourceHooks<S> for NoGetById {
    async fn get_by_id(
        &self,
        _inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        Err(SourceError::Client {
            status: 403,
            url: format!("{entity}/{id}"),
        })
    }
}

#[tokio::test]
async fn a_failed_run_exits_non_zero_is_recorded_and_does_not_stop_the_other_entities() {
    let h = sim(40, 30).await;
    let config = config_for(&h);
    let dir = Dir::new();
    backfill(&config, &dir.store(), &h).await;
    // People has a candidate to confirm (and the confirmation fails); donations has none.
    assert!(h.sim().delete(Entity::People, 12));
    let source = Forward::new(Arc::new(client(&config)), NoGetById);
    let report = execute(&dir.args(&[]), &config, &source).await.unwrap();
    let by = |e: &str| report.runs.iter().find(|r| r.entity == e).unwrap();
    let people = by("people");
    assert_eq!(people.status, "failed");
    assert!(
        people.error.as_deref().is_some_and(|e| e.contains("403")),
        "{people:?}"
    );
    assert!(people.run_id.is_some());
    assert_eq!(by("donations").status, "succeeded");
    let err = conclude(&report).unwrap_err();
    assert!(err.contains("failed for people"), "{err}");
    assert!(report.render().contains("people: FAILED:"));
    assert!(live(&dir.store(), 12).await);
    // Recorded, and the lease released: the next run with a working source deletes.
    let rows = crate::status::collect(&config, &dir.store(), 3)
        .await
        .unwrap();
    assert_eq!(rows[0]["reconcile"]["runs"][0]["status"], "failed");
    assert!(rows[0]["reconcile"]["lease"].is_null());
    let report = execute(
        &dir.args(&["--entity", "people"]),
        &config,
        &client(&config),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.runs[0].status.as_str(), report.runs[0].deleted),
        ("succeeded", 1)
    );
}

#[tokio::test]
async fn a_run_skipped_for_a_held_lease_says_who_holds_it() {
    let h = sim(10, 0).await;
    let config = config_for(&h);
    let dir = Dir::new();
    let store = dir.store();
    let now = shared::core::timefmt::now_us();
    store
        .acquire_lease("people", JobKind::Reconcile, "rec-other", now, 60_000_000)
        .await
        .unwrap();
    let report = execute(
        &dir.args(&["--entity", "people"]),
        &config,
        &client(&config),
    )
    .await
    .unwrap();
    let r = &report.runs[0];
    assert_eq!(
        (r.status.as_str(), r.held_by.as_deref()),
        ("skipped", Some("rec-other"))
    );
    assert!(conclude(&report).is_ok());
    assert!(
        report
            .render()
            .contains("another reconciliation (rec-other) holds the lease")
    );
}

#[tokio::test]
async fn an_unknown_entity_is_an_error_naming_it() {
    let h = sim(1, 0).await;
    let config = config_for(&h);
    let dir = Dir::new();
    let e = execute(&dir.args(&["--entity", "nope"]), &config, &client(&config))
        .await
        .unwrap_err();
    assert!(e.contains("\"nope\" is not configured"), "{e}");
}

#[test]
fn the_json_report_has_a_stable_shape() {
    let report = Report {
        runs: vec![
            RunRow::from_summary(RunSummary {
                entity: "people".into(),
                run_id: "rec-1".into(),
                status: "awaiting_approval".into(),
                source_count: Some(40),
                destination_count: Some(50),
                deleted: 0,
                missed: 0,
                stale: 1,
                queued: 1,
                suppressed: 0,
                guard: Some(Decision::NeedsApproval {
                    reason: "10 deletions".into(),
                }),
                recent: 0,
                duration_ms: 12,
                rejected: 0,
                rejected_ids: Vec::new(),
                destination_newer: 0,
                regressions: 0,
                regressed: 0,
            }),
            RunRow::empty("donations", "skipped"),
        ],
        queue: "work in .local/sync.sqlite".into(),
        worker: Some(Drained {
            messages: 1,
            fetched: 1,
            written: 1,
            ..Drained::default()
        }),
    };
    let v = serde_json::to_value(&report).unwrap();
    let keys = |o: &serde_json::Value| {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&v), ["queue", "runs", "worker"]);
    assert_eq!(
        keys(&v["runs"][0]),
        [
            "deleted",
            "destination_count",
            "duration_ms",
            "entity",
            "error",
            "guard",
            "held_by",
            "missed",
            "next_step",
            "queued",
            "run_id",
            "source_count",
            "stale",
            "status"
        ]
    );
    assert_eq!(
        v["runs"][0]["guard"],
        serde_json::json!({"kind": "needs_approval", "reason": "10 deletions"})
    );
    assert_eq!(v["runs"][0]["status"], "awaiting_approval");
    assert_eq!(
        (
            v["runs"][0]["source_count"].as_u64(),
            v["runs"][0]["stale"].as_u64()
        ),
        (Some(40), Some(1))
    );
    assert!(
        v["runs"][0]["next_step"]
            .as_str()
            .unwrap()
            .contains("--approve-deletions")
    );
    assert!(v["runs"][1]["guard"].is_null() && v["runs"][1]["source_count"].is_null());
    assert_eq!(
        keys(&v["worker"]),
        [
            "deleted",
            "failed",
            "fetched",
            "messages",
            "not_found",
            "stale",
            "unchanged",
            "written"
        ]
    );
    assert_eq!(v["worker"]["fetched"], 1);
    // And a failed fetch makes the exit status non-zero.
    assert!(conclude(&report).is_ok());
    let mut bad = report.clone();
    bad.worker = Some(Drained {
        failed: 1,
        ..Drained::default()
    });
    assert!(
        conclude(&bad)
            .unwrap_err()
            .contains("1 queued fetches failed")
    );
}

#[tokio::test]
async fn the_demo_leg_fails_when_the_store_does_not_converge() {
    let h = sim(300, 30).await;
    let config = config_for(&h);
    let store = LocalStore::in_memory().unwrap();
    backfill(&config, &store, &h).await;
    let dir = Dir::new();
    // Without the worker the missed and stale records stay queued: the final check must fail.
    let e = reconcile_leg(&config, &store, &h, basic::SECRET, &dir.spill(), false)
        .await
        .unwrap_err();
    assert!(
        e.starts_with("after reconciliation the store differs from the source"),
        "{e}"
    );
    assert!(
        e.contains("missing: [\"301\"]") && e.contains("stale: [\"2\"]"),
        "{e}"
    );
}

#[tokio::test]
async fn the_demo_leg_holds_on_a_fresh_store() {
    let h = sim(300, 30).await;
    let config = config_for(&h);
    let store = LocalStore::in_memory().unwrap();
    backfill(&config, &store, &h).await;
    let dir = Dir::new();
    reconcile_leg(&config, &store, &h, basic::SECRET, &dir.spill(), true)
        .await
        .expect("the leg's expectations hold");
    assert!(
        compare(&store, &h, Entity::People)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn status_shows_a_state_machine_run_awaiting_approval_without_its_task_token() {
    let h = sim(1, 0).await;
    let config = config_for(&h);
    let store = LocalStore::in_memory().unwrap();
    // What the state machine's `request_approval` step records.
    store
        .put_run(&shared::ports::RunRecord {
            entity: "people".into(),
            kind: JobKind::Reconcile,
            run_id: "rec-sfn".into(),
            started_us: shared::core::timefmt::now_us(),
            finished_us: None,
            status: "awaiting_approval".into(),
            summary: serde_json::json!({
                "reason": "2000 deletions (9.0% of 22000)",
                "candidates": 2000,
                "task_token": "SECRET-TOKEN",
            })
            .to_string(),
        })
        .await
        .unwrap();
    let rows = crate::status::collect(&config, &store, 3).await.unwrap();
    let rec = &rows[0]["reconcile"];
    assert_eq!(rec["awaiting_approval"]["run_id"], "rec-sfn");
    assert_eq!(
        rec["awaiting_approval"]["reason"],
        "2000 deletions (9.0% of 22000)"
    );
    assert!(
        rec["awaiting_approval"]["next_step"]
            .as_str()
            .unwrap()
            .contains("state machine")
    );
    assert_eq!(rec["runs"][0]["summary"]["candidates"], 2000);
    let json = serde_json::to_string(&rows).unwrap();
    assert!(
        !json.contains("SECRET-TOKEN") && !json.contains("task_token"),
        "{json}"
    );
    let table = crate::status::table(&rows);
    assert!(!table.contains("SECRET-TOKEN"));
    assert!(
        table.contains("people: reconciliation rec-sfn awaits approval since"),
        "{table}"
    );
    // Donations has no reconciliation yet.
    assert!(rows[1]["reconcile"]["runs"].as_array().unwrap().is_empty());
}
