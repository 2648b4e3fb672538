//! Smoke tests of real Step Functions executions: moto's interpreter runs an ASL definition, its
//! Lambda Task states reach our handlers through the proxy (`sfn_proxy`), and the tests check
//! what ran from both sides: the execution's output and history, and the proxy's records.

use crate::harness;
use crate::sfn_proxy::{self, SfnProxy, handler};
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Two Lambda Task states (one in each Resource form), a Retry on a custom error, a Catch to a
/// failure path that runs a Task and ends in a Fail state, and a Map over the input's items.
const PIPELINE: &str = r#"{
  "Comment": "Smoke: Lambda tasks, Retry, Catch, Map",
  "StartAt": "Prepare",
  "States": {
    "Prepare": {
      "Type": "Task",
      "Resource": "${PrepareArn}",
      "ResultPath": "$.prepared",
      "Retry": [
        { "ErrorEquals": ["Smoke.Transient"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1.0 }
      ],
      "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Cleanup" }],
      "Next": "EachItem"
    },
    "EachItem": {
      "Type": "Map",
      "ItemsPath": "$.items",
      "MaxConcurrency": 2,
      "ItemProcessor": {
        "ProcessorConfig": { "Mode": "INLINE" },
        "StartAt": "Item",
        "States": {
          "Item": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": { "FunctionName": "${ItemArn}", "Payload": { "item.$": "$" } },
            "OutputPath": "$.Payload",
            "End": true
          }
        }
      },
      "ResultPath": "$.results",
      "Catch": [{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Cleanup" }],
      "Next": "Summarise"
    },
    "Summarise": { "Type": "Task", "Resource": "${SummariseArn}", "End": true },
    "Cleanup": { "Type": "Task", "Resource": "${CleanupArn}", "ResultPath": "$.cleanup", "Next": "RunFailed" },
    "RunFailed": { "Type": "Fail", "Error": "Smoke.RunFailed", "Cause": "a step failed; cleaned up" }
  }
}"#;

fn err(error_type: &str, message: &str) -> (String, String) {
    (error_type.to_owned(), message.to_owned())
}

/// The pipeline's handlers registered on `proxy`, and the state machine created.
async fn pipeline(proxy: &SfnProxy, sfn: &aws_sdk_sfn::Client) -> String {
    let prepare_calls = Arc::new(AtomicUsize::new(0));
    let prepare = proxy.register(
        "prepare",
        handler(move |input: Value| {
            let attempt = prepare_calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match input["mode"].as_str() {
                    Some("transient") if attempt == 1 => {
                        Err(err("Smoke.Transient", "not yet: try again"))
                    }
                    Some("permanent") => Err(err("Smoke.Permanent", "cannot prepare this run")),
                    _ => Ok(json!({ "attempt": attempt })),
                }
            }
        }),
    );
    let item = proxy.register(
        "item",
        handler(|input: Value| async move {
            let item = input["item"]
                .as_str()
                .ok_or_else(|| err("Smoke.BadInput", &format!("no item in {input}")))?;
            if item == "boom" {
                return Err(err("Smoke.ItemFailed", "item boom blew up"));
            }
            Ok(json!({ "item": item, "upper": item.to_uppercase() }))
        }),
    );
    let summarise = proxy.register(
        "summarise",
        handler(|input: Value| async move {
            let results = input["results"]
                .as_array()
                .ok_or_else(|| err("Smoke.BadInput", &format!("no results in {input}")))?;
            Ok(json!({
                "count": results.len(),
                "uppers": results.iter().map(|r| r["upper"].clone()).collect::<Vec<_>>(),
                "prepared_attempt": input["prepared"]["attempt"],
            }))
        }),
    );
    let cleanup = proxy.register(
        "cleanup",
        handler(|input: Value| async move { Ok(json!({ "cleaned": input["error"]["Error"] })) }),
    );
    sfn_proxy::create_state_machine(
        sfn,
        PIPELINE,
        &[
            ("PrepareArn", &prepare),
            ("ItemArn", &item),
            ("SummariseArn", &summarise),
            ("CleanupArn", &cleanup),
        ],
    )
    .await
}

fn count(history: &sfn_proxy::ExecutionResult, ty: HistoryEventType) -> usize {
    history.history.iter().filter(|e| *e.r#type() == ty).count()
}

#[tokio::test]
async fn smoke_sfn_tasks_retry_and_map_run_our_handlers() {
    let sfn = harness::sfn_client().await;
    let proxy = SfnProxy::start().await;
    let machine = pipeline(&proxy, &sfn).await;

    let input = json!({ "mode": "transient", "items": ["b", "a", "c"] });
    let run = sfn_proxy::run_execution(&sfn, &machine, &input, EXECUTION_TIMEOUT).await;

    assert_eq!(
        run.succeeded(),
        &json!({ "count": 3, "uppers": ["B", "A", "C"], "prepared_attempt": 2 }),
        "the Map's results, in the items' order, reached Summarise after Prepare's retry"
    );

    // Every Task state ran our code: Prepare twice (the retry), Item per item, Summarise once.
    let prepare = proxy.invocations_of("prepare");
    assert_eq!(
        prepare.len(),
        2,
        "Prepare: one failure, one retry: {prepare:#?}"
    );
    assert_eq!(
        prepare[0].outcome,
        Err(err("Smoke.Transient", "not yet: try again"))
    );
    assert_eq!(prepare[1].outcome, Ok(json!({ "attempt": 2 })));
    assert_eq!(
        prepare[1].input, input,
        "Prepare gets the execution's input"
    );
    assert!(
        prepare[1].started_at
            >= prepare[0].started_at + prepare[0].duration + Duration::from_millis(900),
        "the retry waited IntervalSeconds (1 s) after the failure: {:?} then {:?}",
        prepare[0],
        prepare[1]
    );
    let mut items: Vec<_> = proxy
        .invocations_of("item")
        .iter()
        .map(|i| i.input.clone())
        .collect();
    items.sort_by_key(|v| v.to_string());
    assert_eq!(
        items,
        vec![
            json!({"item": "a"}),
            json!({"item": "b"}),
            json!({"item": "c"})
        ],
        "the Map invoked Item once per item, with the Parameters' payload"
    );
    let summarise = proxy.invocations_of("summarise");
    assert_eq!(summarise.len(), 1);
    assert_eq!(
        summarise[0].input["results"][2],
        json!({"item": "c", "upper": "C"})
    );
    assert!(
        proxy.invocations_of("cleanup").is_empty(),
        "no failure path"
    );

    // The history says the same.
    assert_eq!(count(&run, HistoryEventType::LambdaFunctionFailed), 1);
    assert_eq!(count(&run, HistoryEventType::MapIterationSucceeded), 3);
    let entered = run.entered_states();
    for state in ["Prepare", "EachItem", "Item", "Summarise"] {
        assert!(
            entered.iter().any(|s| s == state),
            "{state} entered: {entered:?}"
        );
    }
    assert!(!entered.iter().any(|s| s == "Cleanup"), "{entered:?}");
    let failed = run
        .history
        .iter()
        .find_map(|e| e.lambda_function_failed_event_details())
        .expect("the first Prepare failed");
    assert_eq!(failed.error(), Some("Smoke.Transient"));
    assert!(
        SfnProxy::unregistered_invocations()
            .iter()
            .all(|f| !f.contains(&proxy.function_name(""))),
        "every function the definition names is registered"
    );
}

#[tokio::test]
async fn smoke_sfn_catch_runs_the_failure_path() {
    let sfn = harness::sfn_client().await;
    let proxy = SfnProxy::start().await;
    let machine = pipeline(&proxy, &sfn).await;

    // A permanent error in the first Task: no retry (the Retry names another error), Catch.
    let run = sfn_proxy::run_execution(
        &sfn,
        &machine,
        &json!({ "mode": "permanent", "items": ["a"] }),
        EXECUTION_TIMEOUT,
    )
    .await;
    assert_eq!(
        run.status,
        ExecutionStatus::Failed,
        "{:?}",
        run.event_types()
    );
    assert_eq!(run.error.as_deref(), Some("Smoke.RunFailed"));
    assert_eq!(run.cause.as_deref(), Some("a step failed; cleaned up"));
    assert_eq!(proxy.invocations_of("prepare").len(), 1, "no retry");
    let cleanup = proxy.invocations_of("cleanup");
    assert_eq!(cleanup.len(), 1);
    assert_eq!(cleanup[0].input["error"]["Error"], "Smoke.Permanent");
    let cause: Value = serde_json::from_str(
        cleanup[0].input["error"]["Cause"]
            .as_str()
            .expect("the Catch's Cause is a string"),
    )
    .expect("the Cause is the function's error payload");
    assert_eq!(cause["errorMessage"], "cannot prepare this run");
    assert_eq!(cause["errorType"], "Smoke.Permanent");
    assert!(proxy.invocations_of("item").is_empty());
    assert!(proxy.invocations_of("summarise").is_empty());

    // An error inside a Map iteration fails the Map, whose Catch runs the same failure path.
    let run = sfn_proxy::run_execution(
        &sfn,
        &machine,
        &json!({ "mode": "ok", "items": ["a", "boom"] }),
        EXECUTION_TIMEOUT,
    )
    .await;
    assert_eq!(
        run.status,
        ExecutionStatus::Failed,
        "{:?}",
        run.event_types()
    );
    assert_eq!(run.error.as_deref(), Some("Smoke.RunFailed"));
    let cleanup = proxy.invocations_of("cleanup");
    assert_eq!(cleanup.len(), 2);
    assert_eq!(cleanup[1].input["error"]["Error"], "Smoke.ItemFailed");
    assert!(
        proxy
            .invocations_of("item")
            .iter()
            .any(|i| i.outcome == Err(err("Smoke.ItemFailed", "item boom blew up")))
    );
    assert!(proxy.invocations_of("summarise").is_empty());
}

#[tokio::test]
async fn smoke_sfn_unregistered_function_fails_its_task() {
    let sfn = harness::sfn_client().await;
    let proxy = SfnProxy::start().await;
    let definition = r#"{
      "StartAt": "Missing",
      "States": {
        "Missing": {
          "Type": "Task",
          "Resource": "arn:aws:states:::lambda:invoke",
          "Parameters": { "FunctionName": "${MissingArn}", "Payload.$": "$" },
          "End": true
        }
      }
    }"#;
    let missing = proxy.function_arn("never-registered");
    let machine =
        sfn_proxy::create_state_machine(&sfn, definition, &[("MissingArn", &missing)]).await;
    let run = sfn_proxy::run_execution(&sfn, &machine, &json!({}), EXECUTION_TIMEOUT).await;
    assert_eq!(
        run.status,
        ExecutionStatus::Failed,
        "{:?}",
        run.event_types()
    );
    assert_eq!(
        run.error.as_deref(),
        Some("Lambda.ResourceNotFoundException"),
        "cause: {:?}",
        run.cause
    );
    assert!(proxy.invocations().is_empty());
    assert!(SfnProxy::unregistered_invocations().contains(&missing));
}

#[tokio::test]
async fn smoke_sfn_proxy_forwards_other_aws_calls_to_moto() {
    let sfn = harness::sfn_client().await;
    let sqs = harness::sqs_client().await;
    let queue = harness::create_queue(&sqs, &harness::QueueSpec::default()).await;
    let proxy = SfnProxy::start().await;
    let definition = r#"{
      "StartAt": "Send",
      "States": {
        "Send": {
          "Type": "Task",
          "Resource": "arn:aws:states:::sqs:sendMessage",
          "Parameters": { "QueueUrl": "${QueueUrl}", "MessageBody.$": "$.body" },
          "End": true
        }
      }
    }"#;
    let machine =
        sfn_proxy::create_state_machine(&sfn, definition, &[("QueueUrl", &queue.url)]).await;
    let run = sfn_proxy::run_execution(
        &sfn,
        &machine,
        &json!({ "body": "through the proxy" }),
        EXECUTION_TIMEOUT,
    )
    .await;
    let output = run.succeeded();
    assert!(output["MessageId"].is_string(), "{output}");
    let got = sqs
        .receive_message()
        .queue_url(&queue.url)
        .wait_time_seconds(5)
        .send()
        .await
        .expect("receive from moto");
    let bodies: Vec<_> = got.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(bodies, ["through the proxy"]);
    assert!(proxy.invocations().is_empty());
}

// ---------------------------------------------------------------------------------------------
// .waitForTaskToken: the approval pattern (moto's interpreter supports it)
// ---------------------------------------------------------------------------------------------

const APPROVAL: &str = r#"{
  "StartAt": "AwaitApproval",
  "States": {
    "AwaitApproval": {
      "Type": "Task",
      "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
      "Parameters": {
        "FunctionName": "${RequestApprovalArn}",
        "Payload": { "token.$": "$$.Task.Token", "deletions.$": "$.deletions" }
      },
      "TimeoutSeconds": ${ApprovalTimeoutSeconds},
      "ResultPath": "$.approval",
      "Catch": [
        { "ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": "Expired" },
        { "ErrorEquals": ["Approval.Rejected"], "ResultPath": "$.error", "Next": "Rejected" }
      ],
      "Next": "Apply"
    },
    "Apply": { "Type": "Task", "Resource": "${ApplyArn}", "End": true },
    "Expired": {
      "Type": "Task",
      "Resource": "${ReportArn}",
      "Parameters": { "outcome": "expired", "error.$": "$.error.Error" },
      "End": true
    },
    "Rejected": {
      "Type": "Task",
      "Resource": "${ReportArn}",
      "Parameters": { "outcome": "rejected", "error.$": "$.error.Error" },
      "End": true
    }
  }
}"#;

/// Start an approval run; returns the execution's ARN and the task token the approval request
/// handler received (the execution then waits for it).
async fn approval_run(
    proxy: &SfnProxy,
    sfn: &aws_sdk_sfn::Client,
    timeout_seconds: u32,
) -> (String, String) {
    let request = proxy.register(
        "request-approval",
        handler(|_input: Value| async move { Ok(json!({ "requested": true })) }),
    );
    let apply = proxy.register(
        "apply",
        handler(|input: Value| async move {
            Ok(json!({ "applied": input["deletions"], "approval": input["approval"] }))
        }),
    );
    let report = proxy.register("report", handler(|input: Value| async move { Ok(input) }));
    let timeout = timeout_seconds.to_string();
    let machine = sfn_proxy::create_state_machine(
        sfn,
        APPROVAL,
        &[
            ("RequestApprovalArn", &request),
            ("ApplyArn", &apply),
            ("ReportArn", &report),
            ("ApprovalTimeoutSeconds", &timeout),
        ],
    )
    .await;
    let execution = sfn_proxy::start_execution(sfn, &machine, &json!({ "deletions": 42 })).await;
    let asked = proxy
        .wait_for_invocations("request-approval", 1, EXECUTION_TIMEOUT)
        .await;
    assert_eq!(asked[0].input["deletions"], 42);
    let token = asked[0].input["token"]
        .as_str()
        .expect("the payload carries $$.Task.Token")
        .to_owned();
    (execution, token)
}

async fn status(sfn: &aws_sdk_sfn::Client, execution: &str) -> ExecutionStatus {
    sfn.describe_execution()
        .execution_arn(execution)
        .send()
        .await
        .expect("describe the execution")
        .status()
        .clone()
}

#[tokio::test]
async fn smoke_sfn_wait_for_task_token_then_send_task_success() {
    let sfn = harness::sfn_client().await;
    let proxy = SfnProxy::start().await;
    let (execution, token) = approval_run(&proxy, &sfn, 300).await;
    assert_eq!(
        status(&sfn, &execution).await,
        ExecutionStatus::Running,
        "the request handler returned, the execution waits for its token"
    );
    assert!(proxy.invocations_of("apply").is_empty());

    sfn.send_task_success()
        .task_token(&token)
        .output(json!({ "approved_by": "ops" }).to_string())
        .send()
        .await
        .expect("SendTaskSuccess");
    let run = sfn_proxy::wait_for_execution(&sfn, &execution, EXECUTION_TIMEOUT).await;
    assert_eq!(
        run.succeeded(),
        &json!({ "applied": 42, "approval": { "approved_by": "ops" } })
    );
    assert_eq!(proxy.invocations_of("apply").len(), 1);
    assert!(proxy.invocations_of("report").is_empty());

    // A token is good once.
    let again = sfn
        .send_task_success()
        .task_token(&token)
        .output("{}")
        .send()
        .await
        .expect_err("a used token is refused");
    assert!(
        again
            .as_service_error()
            .is_some_and(|e| e.is_invalid_token()),
        "{}",
        aws_sdk_sfn::error::DisplayErrorContext(&again)
    );
}

#[tokio::test]
async fn smoke_sfn_wait_for_task_token_rejected_with_send_task_failure() {
    let sfn = harness::sfn_client().await;
    let proxy = SfnProxy::start().await;
    let (execution, token) = approval_run(&proxy, &sfn, 300).await;
    sfn.send_task_failure()
        .task_token(&token)
        .error("Approval.Rejected")
        .cause("too many deletions")
        .send()
        .await
        .expect("SendTaskFailure");
    let run = sfn_proxy::wait_for_execution(&sfn, &execution, EXECUTION_TIMEOUT).await;
    assert_eq!(
        run.succeeded(),
        &json!({ "outcome": "rejected", "error": "Approval.Rejected" })
    );
    assert!(proxy.invocations_of("apply").is_empty());
}

#[tokio::test]
async fn smoke_sfn_wait_for_task_token_expires() {
    let sfn = harness::sfn_client().await;
    let proxy = SfnProxy::start().await;
    let (execution, token) = approval_run(&proxy, &sfn, 1).await;
    let run = sfn_proxy::wait_for_execution(&sfn, &execution, EXECUTION_TIMEOUT).await;
    assert_eq!(
        run.succeeded(),
        &json!({ "outcome": "expired", "error": "States.Timeout" })
    );
    assert_eq!(count(&run, HistoryEventType::TaskTimedOut), 1);
    assert!(proxy.invocations_of("apply").is_empty());
    // An approval after the expiry changes nothing.
    let late = sfn
        .send_task_success()
        .task_token(&token)
        .output("{}")
        .send()
        .await;
    assert!(late.is_err(), "a late approval is refused");
    assert_eq!(status(&sfn, &execution).await, ExecutionStatus::Succeeded);
}
