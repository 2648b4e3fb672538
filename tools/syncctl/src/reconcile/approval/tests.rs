//! `syncctl reconcile approve|reject`: the command line, finding the run in a local store's
//! run history (records written as `request_approval` and `syncctl reconcile` write them), and
//! the answers through a fake Step Functions. Never the token in what is printed.

use super::*;
use crate::{Cli, Command};
use clap::Parser;
use shared::adapters::aws::AwsError;
use shared::adapters::local::LocalStore;
use shared::core::timefmt::now_us;
use std::sync::Mutex;

const TOKEN: &str = "AAAA-secret-task-token-QQQQ";
const HOUR_US: i64 = 3600 * 1_000_000;

fn parse(argv: &[&str]) -> Result<crate::reconcile::ReconcileArgs, clap::Error> {
    let mut full = vec!["syncctl", "reconcile"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full)?.command {
        Command::Reconcile(a) => Ok(a),
        other => panic!("parsed as {other:?}"),
    }
}

fn no_token(text: &str) {
    assert!(!text.contains(TOKEN), "the token was shown: {text}");
    assert!(!text.contains("secret-task-token"), "{text}");
}

/// What the state machine's `request_approval` records.
fn waiting(run_id: &str, started_us: i64) -> RunRecord {
    RunRecord {
        entity: "people".into(),
        kind: JobKind::Reconcile,
        run_id: run_id.into(),
        started_us,
        finished_us: None,
        status: "awaiting_approval".into(),
        summary: serde_json::json!({
            "reason": "2000 deletions (9.0% of 22000)",
            "candidates": 2000,
            "task_token": TOKEN,
        })
        .to_string(),
    }
}

/// What `syncctl reconcile` records (`finish`): finished, no token.
fn finished(run_id: &str, started_us: i64, status: &str) -> RunRecord {
    RunRecord {
        entity: "people".into(),
        kind: JobKind::Reconcile,
        run_id: run_id.into(),
        started_us,
        finished_us: Some(started_us + 60_000_000),
        status: status.into(),
        summary: serde_json::json!({
            "entity": "people",
            "run_id": run_id,
            "status": status,
            "deleted": 0,
            "guard": {"kind": "needs_approval", "reason": "2000 deletions (9.0% of 22000)"},
        })
        .to_string(),
    }
}

async fn store_with(runs: &[RunRecord]) -> LocalStore {
    let store = LocalStore::in_memory().unwrap();
    for r in runs {
        store.put_run(r).await.unwrap();
    }
    store
}

fn approve() -> Answer {
    Answer::Approve { by: "alice".into() }
}

fn reject(reason: Option<&str>) -> Answer {
    Answer::Reject {
        by: "alice".into(),
        reason: reason.map(str::to_owned),
    }
}

// ---------------------------------------------------------------------------------------------
// the command line
// ---------------------------------------------------------------------------------------------

#[test]
fn approve_and_reject_parse_with_their_flags() {
    let a = parse(&["approve", "--entity", "people"]).expect("parse");
    let Some(ReconcileCommand::Approve(ApproveArgs { target: t })) = a.command.map(|c| *c) else {
        panic!("expected approve")
    };
    assert_eq!((t.entity.as_str(), t.run.as_deref()), ("people", None));
    assert_eq!(t.sfn_endpoint_url, None);
    assert!(!t.store.uses_dynamodb());

    let a = parse(&[
        "reject",
        "--entity",
        "people",
        "--run",
        "rec-1",
        "--reason",
        "not these",
        "--endpoint-url",
        "http://localhost:8000",
        "--control-table",
        "ctl",
        "--sfn-endpoint-url",
        "http://127.0.0.1:5000",
    ])
    .expect("parse");
    let Some(ReconcileCommand::Reject(r)) = a.command.map(|c| *c) else {
        panic!("expected reject")
    };
    assert_eq!(r.reason.as_deref(), Some("not these"));
    assert_eq!(r.target.run.as_deref(), Some("rec-1"));
    assert_eq!(
        r.target.sfn_endpoint_url.as_deref(),
        Some("http://127.0.0.1:5000")
    );
    assert!(r.target.store.uses_dynamodb());
    assert_eq!(r.target.store.control_table, "ctl");

    let a = parse(&["approve", "--entity", "people", "--dynamodb"]).expect("parse");
    let Some(ReconcileCommand::Approve(a)) = a.command.map(|c| *c) else {
        panic!("expected approve")
    };
    assert!(a.target.store.uses_dynamodb());
}

#[test]
fn approve_needs_an_entity_and_takes_no_reconcile_flags() {
    assert!(parse(&["approve"]).is_err());
    assert!(parse(&["reject", "--run", "r"]).is_err());
    assert!(parse(&["approve", "--entity", "people", "--approve-deletions"]).is_err());
    assert!(parse(&["approve", "--entity", "people", "--reason", "x"]).is_err());
    // The flat command's flags conflict with the subcommands.
    assert!(parse(&["--report-only", "approve", "--entity", "people"]).is_err());
    assert!(parse(&["--entity", "people", "approve"]).is_err());
}

#[test]
fn the_flat_reconcile_command_still_parses() {
    let a = parse(&[]).expect("parse");
    assert!(a.command.is_none());
    let a = parse(&["--entity", "people", "--approve-deletions", "--json"]).expect("parse");
    assert!(a.command.is_none());
    assert_eq!(a.entity.as_deref(), Some("people"));
    assert!(a.approve_deletions && a.json);
}

// ---------------------------------------------------------------------------------------------
// finding the run
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_entity_without_runs_has_nothing_awaiting() {
    let store = store_with(&[]).await;
    let e = find_pending(&store, "people", None, &approve())
        .await
        .unwrap_err();
    assert!(
        e.contains("no reconciliation run of people is recorded"),
        "{e}"
    );
}

#[tokio::test]
async fn no_run_awaiting_says_when_the_last_run_finished_and_how() {
    let t = now_us() - 5 * HOUR_US;
    let store = store_with(&[
        finished("rec-old", t - HOUR_US, "succeeded"),
        finished("rec-last", t, "approval_expired"),
    ])
    .await;
    let e = find_pending(&store, "people", None, &approve())
        .await
        .unwrap_err();
    assert!(
        e.contains("no reconciliation run of people awaits approval"),
        "{e}"
    );
    assert!(e.contains("the last one, rec-last"), "{e}");
    assert!(
        e.contains(&format!(
            "finished at {} with status approval_expired",
            format_rfc3339(t + 60_000_000)
        )),
        "{e}"
    );
    // A run still going.
    let mut running = finished("rec-now", now_us(), "running");
    running.finished_us = None;
    store.put_run(&running).await.unwrap();
    let e = find_pending(&store, "people", None, &reject(None))
        .await
        .unwrap_err();
    assert!(
        e.contains("rec-now") && e.contains("has status running and has not finished"),
        "{e}"
    );
}

#[tokio::test]
async fn an_older_run_still_marked_waiting_behind_a_newer_one_is_named_not_used() {
    let t = now_us() - 30 * HOUR_US;
    let store = store_with(&[
        waiting("rec-sfn", t),
        finished("rec-new", t + 26 * HOUR_US, "succeeded"),
    ])
    .await;
    let e = find_pending(&store, "people", None, &approve())
        .await
        .unwrap_err();
    assert!(e.contains("the last one, rec-new"), "{e}");
    assert!(e.contains("rec-sfn") && e.contains("--run rec-sfn"), "{e}");
    no_token(&e);
    // Named, it is the one.
    let p = find_pending(&store, "people", Some("rec-sfn"), &approve())
        .await
        .unwrap();
    assert_eq!(p.run_id, "rec-sfn");
}

#[tokio::test]
async fn a_local_run_has_no_token_and_says_to_re_run_with_approve_deletions() {
    let t = now_us() - HOUR_US;
    let store = store_with(&[finished("rec-local", t, "awaiting_approval")]).await;
    let e = find_pending(&store, "people", None, &approve())
        .await
        .unwrap_err();
    assert!(
        e.contains("run rec-local of people was recorded by `syncctl reconcile`"),
        "{e}"
    );
    assert!(e.contains("no approval waits on it"), "{e}");
    assert!(
        e.contains("syncctl reconcile --entity people --approve-deletions"),
        "{e}"
    );
    let e = find_pending(&store, "people", Some("rec-local"), &reject(None))
        .await
        .unwrap_err();
    assert!(e.contains("nothing to reject"), "{e}");
}

#[tokio::test]
async fn a_named_run_must_exist_and_be_waiting() {
    let t = now_us() - 3 * HOUR_US;
    let store = store_with(&[
        finished("rec-a", t, "approval_rejected"),
        waiting("rec-b", t + HOUR_US),
    ])
    .await;
    let e = find_pending(&store, "people", Some("rec-zzz"), &approve())
        .await
        .unwrap_err();
    assert!(
        e.contains("run rec-zzz is not among the last 2 reconciliation runs of people"),
        "{e}"
    );
    assert!(e.contains("the newest is rec-b"), "{e}");
    let e = find_pending(&store, "people", Some("rec-a"), &approve())
        .await
        .unwrap_err();
    assert!(
        e.contains("run rec-a of people does not await approval")
            && e.contains("with status approval_rejected"),
        "{e}"
    );
    // Another entity's runs are not this one's.
    let e = find_pending(&store, "donations", None, &approve())
        .await
        .unwrap_err();
    assert!(e.contains("no reconciliation run of donations"), "{e}");
}

#[tokio::test]
async fn the_state_machine_run_is_found_and_its_debug_hides_the_token() {
    let t = now_us() - HOUR_US;
    let store = store_with(&[
        finished("rec-0", t - HOUR_US, "succeeded"),
        waiting("rec-sfn", t),
    ])
    .await;
    let p = find_pending(&store, "people", None, &approve())
        .await
        .unwrap();
    assert_eq!(
        (p.entity.as_str(), p.run_id.as_str()),
        ("people", "rec-sfn")
    );
    assert_eq!(p.started_us, t);
    assert_eq!(p.reason.as_deref(), Some("2000 deletions (9.0% of 22000)"));
    assert_eq!(p.candidates, Some(2000));
    assert_eq!(p.token, TOKEN);
    no_token(&format!("{p:?}"));
    no_token(&p.describe());
}

// ---------------------------------------------------------------------------------------------
// the answers
// ---------------------------------------------------------------------------------------------

/// Step Functions as a recorder; fails with `fail` when set.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<serde_json::Value>>,
    fail: Option<(&'static str, String)>,
}

impl Fake {
    fn failing(code: &'static str, message: String) -> Fake {
        Fake {
            fail: Some((code, message)),
            ..Fake::default()
        }
    }
    fn result(&self, operation: &'static str) -> Result<(), StoreError> {
        match &self.fail {
            None => Ok(()),
            Some((code, message)) => Err(StoreError::backend(
                operation,
                AwsError::new(
                    aws_sdk_sfn::error::ErrorMetadata::builder()
                        .code(*code)
                        .message(message)
                        .build(),
                ),
            )),
        }
    }
}

impl TaskAnswers for Fake {
    async fn success(&self, token: &str, output: &serde_json::Value) -> Result<(), StoreError> {
        self.calls.lock().unwrap().push(serde_json::json!({
            "call": "success", "token": token, "output": output,
        }));
        self.result("states:SendTaskSuccess")
    }
    async fn failure(&self, token: &str, error: &str, cause: &str) -> Result<(), StoreError> {
        self.calls.lock().unwrap().push(serde_json::json!({
            "call": "failure", "token": token, "error": error, "cause": cause,
        }));
        self.result("states:SendTaskFailure")
    }
}

async fn pending() -> Pending {
    let store = store_with(&[waiting("rec-sfn", now_us() - HOUR_US)]).await;
    find_pending(&store, "people", None, &approve())
        .await
        .unwrap()
}

#[tokio::test]
async fn approve_sends_the_token_with_approved_true_and_who() {
    let fake = Fake::default();
    let out = send(&fake, &pending().await, &approve()).await.unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [serde_json::json!({
            "call": "success",
            "token": TOKEN,
            "output": {"approved": true, "by": "alice"},
        })]
    );
    assert!(
        out.starts_with("approved by alice: run rec-sfn of people"),
        "{out}"
    );
    assert!(out.contains("2000 deletions (9.0% of 22000)"), "{out}");
    no_token(&out);
}

#[tokio::test]
async fn reject_fails_the_task_with_the_rejected_error_and_the_reason() {
    let fake = Fake::default();
    let out = send(
        &fake,
        &pending().await,
        &reject(Some("checked, not wanted")),
    )
    .await
    .unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["call"], "failure");
    assert_eq!(calls[0]["token"], TOKEN);
    assert_eq!(calls[0]["error"], REJECTED);
    assert_eq!(calls[0]["cause"], "rejected by alice: checked, not wanted");
    assert!(
        out.starts_with("rejected by alice: run rec-sfn of people"),
        "{out}"
    );
    no_token(&out);
    let fake = Fake::default();
    send(&fake, &pending().await, &reject(None)).await.unwrap();
    assert_eq!(fake.calls.lock().unwrap()[0]["cause"], "rejected by alice");
}

#[tokio::test]
async fn a_stale_token_says_the_approval_expired_or_was_answered_without_the_token() {
    for code in ["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"] {
        let fake = Fake::failing(code, format!("Invalid token: '{TOKEN}'"));
        for answer in [approve(), reject(None)] {
            let e = send(&fake, &pending().await, &answer).await.unwrap_err();
            assert!(
                e.contains("the approval has expired or was already answered"),
                "{e}"
            );
            assert!(e.contains(code) && e.contains("rec-sfn"), "{e}");
            no_token(&e);
        }
    }
}

#[tokio::test]
async fn another_failure_is_reported_with_the_token_cut_out() {
    let fake = Fake::failing(
        "AccessDeniedException",
        format!("not authorized to use {TOKEN} here"),
    );
    let e = send(&fake, &pending().await, &approve()).await.unwrap_err();
    assert!(e.contains("AccessDeniedException"), "{e}");
    assert!(
        e.contains("<task token>") && e.contains("still waits"),
        "{e}"
    );
    no_token(&e);
}

// ---------------------------------------------------------------------------------------------
// the whole command on a local store (errors come before any Step Functions call)
// ---------------------------------------------------------------------------------------------

/// A store file, removed on drop.
struct Db(testkit::TempDir);

impl Db {
    async fn with(runs: &[RunRecord]) -> Db {
        let dir = testkit::TempDir::new("syncctl-approval");
        let store = LocalStore::open(dir.join("sync.sqlite")).unwrap();
        for r in runs {
            store.put_run(r).await.unwrap();
        }
        Db(dir)
    }
    async fn run(&self, argv: &[&str]) -> Result<(), String> {
        let db = self.0.join("sync.sqlite").display().to_string();
        let mut full = argv.to_vec();
        full.extend_from_slice(&["--db", &db]);
        crate::reconcile::run(parse(&full).expect("parse")).await
    }
}

#[tokio::test]
async fn the_command_refuses_when_nothing_awaits_and_for_a_local_run() {
    let t = now_us() - 2 * HOUR_US;
    let db = Db::with(&[finished("rec-done", t, "succeeded")]).await;
    let e = db
        .run(&["approve", "--entity", "people"])
        .await
        .unwrap_err();
    assert!(
        e.contains("no reconciliation run of people awaits approval")
            && e.contains("rec-done")
            && e.contains("with status succeeded"),
        "{e}"
    );

    let db = Db::with(&[
        waiting("rec-sfn", t - HOUR_US),
        finished("rec-local", t, "awaiting_approval"),
    ])
    .await;
    let e = db
        .run(&["approve", "--entity", "people"])
        .await
        .unwrap_err();
    assert!(
        e.contains("rec-local") && e.contains("--approve-deletions"),
        "{e}"
    );
    no_token(&e);
    let e = db
        .run(&["reject", "--entity", "people", "--reason", "no"])
        .await
        .unwrap_err();
    assert!(e.contains("nothing to reject"), "{e}");
    no_token(&e);
}
