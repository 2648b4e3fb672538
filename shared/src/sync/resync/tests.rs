//! The re-sync's phases over the in-memory ports: a request clears only its own cursor, runs
//! go on from their checkpoint until the listing is read, the closing reconciliation runs once,
//! and the entity's delta cursor and lease are never touched.

use super::*;
use crate::core::cursor::DeltaCursor;
use crate::memory::{MemoryControl, MemoryRecords, ScriptedSource};
use crate::model::{RawJson, Record, Strategy};
use crate::ports::RecordPage;
use crate::sync::delta::RunStatus;

fn rec(id: &str, delta: Micros, body: &str) -> Record {
    let payload = RawJson::parse(format!("{{\"id\":\"{id}\",\"b\":\"{body}\"}}")).unwrap();
    Record::new("people", id, delta, now_us(), payload)
}

fn page(recs: Vec<Record>) -> Result<RecordPage, crate::SourceError> {
    Ok(RecordPage {
        records: recs,
        rejected: Vec::new(),
        source_date_us: Some(1_000_000_000_000),
    })
}

fn source(listings: Vec<Vec<Result<RecordPage, crate::SourceError>>>) -> ScriptedSource {
    ScriptedSource {
        listings: std::sync::Mutex::new(listings.into()),
        calls: Default::default(),
    }
}

async fn phase(c: &MemoryControl) -> Phase {
    state(c, "people").await.unwrap().phase
}

#[tokio::test]
async fn a_resync_reads_from_the_beginning_on_its_own_cursor_then_closes_with_a_reconciliation() {
    let c = MemoryControl::default();
    let r = MemoryRecords::default();
    // The entity's delta cursor stays where delta sync left it.
    c.acquire_lease("people", JobKind::Delta, "d", now_us(), 60_000_000)
        .await
        .unwrap();
    c.save_cursor(
        "people",
        JobKind::Delta,
        "d",
        now_us(),
        60_000_000,
        &DeltaCursor::new(5_000).encode(),
    )
    .await
    .unwrap();
    c.release_lease("people", JobKind::Delta, "d")
        .await
        .unwrap();
    // One record already stored as delta wrote it: the re-sync finds it unchanged.
    r.upsert(&rec("a", 1_000, "x"), Strategy::Delta)
        .await
        .unwrap();

    assert_eq!(phase(&c).await, Phase::Idle);
    let opts = DeltaOptions {
        max_pages: 1,
        ..DeltaOptions::default()
    };
    // Nothing asked for: no run.
    let src = source(vec![]);
    assert!(run(&src, &r, &c, "people", &opts).await.unwrap().is_none());
    assert!(src.calls.lock().unwrap().is_empty());

    let asked = request(&c, "people", "ana", false).await.unwrap();
    assert!(matches!(asked, Requested::Started { .. }));
    assert_eq!(phase(&c).await, Phase::Reading);
    // Asking again while one is under way changes nothing.
    assert_eq!(
        request(&c, "people", "bo", false).await.unwrap(),
        Requested::AlreadyActive {
            phase: Phase::Reading
        }
    );

    // First run: from the beginning (None), one page (max_pages 1), partial.
    let src = source(vec![vec![
        page(vec![rec("a", 1_000, "x"), rec("b", 2_000, "y")]),
        page(vec![rec("c", 3_000, "z")]),
    ]]);
    let s = run(&src, &r, &c, "people", &opts.next_run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src.calls.lock().unwrap().as_slice(), &[None]);
    assert_eq!(
        (s.status, s.lane, s.inserted, s.unchanged),
        (RunStatus::Partial, Lane::Resync, 1, 1)
    );
    assert_eq!(phase(&c).await, Phase::Reading);
    assert_eq!(
        r.get("people", "b").await.unwrap().unwrap().written_by,
        Strategy::Resync
    );

    // Second run: from the re-sync's checkpoint, reads to the end.
    let src = source(vec![vec![page(vec![
        rec("b", 2_000, "y"),
        rec("c", 3_000, "z"),
    ])]]);
    let s = run(&src, &r, &c, "people", &opts.next_run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src.calls.lock().unwrap().as_slice(), &[Some(2_000)]);
    assert_eq!(
        (s.status, s.inserted, s.unchanged),
        (RunStatus::Succeeded, 1, 1)
    );
    assert_eq!(phase(&c).await, Phase::Reconcile);
    // Read to the end: no more runs until asked again.
    let src = source(vec![]);
    assert!(
        run(&src, &r, &c, "people", &opts.next_run())
            .await
            .unwrap()
            .is_none()
    );

    // The delta cursor and lease were never touched.
    let delta = c.job_state("people", JobKind::Delta).await.unwrap();
    assert_eq!(delta.cursor, Some(DeltaCursor::new(5_000).encode()));
    assert_eq!(delta.lease_holder, None);

    // The closing reconciliation: a failure records nothing (tried again next time) ...
    let failed = reconciled(&c, "people", |_| async {
        Err(SyncError::InvalidChange("boom".into()))
    })
    .await;
    assert!(failed.is_err());
    assert_eq!(phase(&c).await, Phase::Reconcile);
    // ... then it runs once, named after the run that read to the end.
    let calls = std::sync::Mutex::new(Vec::new());
    let done = reconciled(&c, "people", |name| {
        calls.lock().unwrap().push(name.clone());
        async move { Ok(serde_json::json!({ "execution": name })) }
    })
    .await
    .unwrap();
    assert!(matches!(done, Closing::Done(_)));
    assert_eq!(
        calls.lock().unwrap().as_slice(),
        &[format!("resync-{}", s.run_id)]
    );
    assert_eq!(phase(&c).await, Phase::Idle);
    let again = reconciled(&c, "people", |_| async { panic!("not due") })
        .await
        .unwrap();
    assert_eq!(again, Closing::NotDue(Phase::Idle));
}

#[tokio::test]
async fn a_request_clears_only_the_resync_cursor_and_a_restart_reads_from_the_beginning_again() {
    let c = MemoryControl::default();
    let r = MemoryRecords::default();
    request(&c, "people", "ana", false).await.unwrap();
    let opts = DeltaOptions {
        max_pages: 1,
        ..DeltaOptions::default()
    };
    let src = source(vec![vec![page(vec![rec("a", 1_000, "x")]), page(vec![])]]);
    run(&src, &r, &c, "people", &opts).await.unwrap().unwrap();
    assert!(
        c.job_state("people", JobKind::Resync)
            .await
            .unwrap()
            .cursor
            .is_some()
    );

    let restarted = request(&c, "people", "bo", true).await.unwrap();
    assert!(matches!(restarted, Requested::Started { .. }));
    assert_eq!(
        c.job_state("people", JobKind::Resync).await.unwrap().cursor,
        None
    );
    let src = source(vec![vec![page(vec![rec("a", 1_000, "x")])]]);
    run(&src, &r, &c, "people", &opts.next_run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src.calls.lock().unwrap().as_slice(), &[None]);
    let runs = c.list_runs("people", JobKind::Resync, 10).await.unwrap();
    let request = runs.iter().find(|r| r.status == REQUESTED).unwrap();
    assert!(
        request.summary.contains("\"actor\":\"bo\""),
        "{}",
        request.summary
    );
}

#[tokio::test]
async fn a_run_holding_the_lease_blocks_requests_and_cancellation_stops_the_runs() {
    let c = MemoryControl::default();
    let r = MemoryRecords::default();
    request(&c, "people", "ana", false).await.unwrap();
    c.acquire_lease("people", JobKind::Resync, "run-9", now_us(), 60_000_000)
        .await
        .unwrap();
    let err = request(&c, "people", "bo", true).await.unwrap_err();
    assert!(
        matches!(err, SyncError::LeaseHeld { ref holder, .. } if holder == "run-9"),
        "{err}"
    );
    assert!(cancel(&c, "people", "bo").await.is_err());
    // Another run holds it: this one does nothing.
    let src = source(vec![]);
    assert!(
        run(&src, &r, &c, "people", &DeltaOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    c.release_lease("people", JobKind::Resync, "run-9")
        .await
        .unwrap();

    assert!(cancel(&c, "people", "bo").await.unwrap());
    assert_eq!(phase(&c).await, Phase::Idle);
    assert!(
        run(&src, &r, &c, "people", &DeltaOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!cancel(&c, "people", "bo").await.unwrap());
}

#[tokio::test]
async fn a_failed_run_keeps_the_resync_reading_and_an_unknown_status_is_a_typed_error() {
    let c = MemoryControl::default();
    let r = MemoryRecords::default();
    request(&c, "people", "ana", false).await.unwrap();
    let src = source(vec![vec![Err(crate::SourceError::Server {
        status: 500,
        url: "u".into(),
        attempts: 3,
    })]]);
    assert!(
        run(&src, &r, &c, "people", &DeltaOptions::default())
            .await
            .is_err()
    );
    assert_eq!(phase(&c).await, Phase::Reading);

    c.put_run(&RunRecord {
        entity: "people".into(),
        kind: JobKind::Resync,
        run_id: "x".into(),
        started_us: now_us() + 1_000_000,
        finished_us: None,
        status: "weird".into(),
        summary: "{}".into(),
    })
    .await
    .unwrap();
    let err = state(&c, "people").await.unwrap_err();
    assert!(
        err.to_string().contains("unknown re-sync status \"weird\""),
        "{err}"
    );
}

#[test]
fn every_status_a_resync_writes_has_a_phase() {
    for (s, p) in [
        (None, Phase::Idle),
        (Some(REQUESTED), Phase::Reading),
        (Some(RunStatus::Partial.as_str()), Phase::Reading),
        (Some(RunStatus::Failed.as_str()), Phase::Reading),
        (Some(RunStatus::Succeeded.as_str()), Phase::Reconcile),
        (Some(RECONCILED), Phase::Idle),
        (Some(CANCELLED), Phase::Idle),
    ] {
        assert_eq!(phase_of(s), Some(p), "{s:?}");
    }
    assert_eq!(phase_of(Some(RunStatus::Skipped.as_str())), None);
}
