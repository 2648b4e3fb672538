//! How events reach the functions and what the stack exposes: the delta function's schedule, the
//! HTTP API, the work queue (its DLQ and event source mapping), the spill bucket, the outputs.

use super::cfn::*;
use super::iam::*;
use serde_yaml::Value;
use std::collections::BTreeMap;

/// SQS deletes a standard queue's message this long after it was first sent, DLQ included.
const FOURTEEN_DAYS: i64 = 14 * 24 * 3600;

/// The queues, their consumers and their dead letters:
/// - every queue is standard (not FIFO: refetch and the version rule make order irrelevant)
///   and encrypted with SQS-managed keys;
/// - no function has a SAM `Events: Type: SQS` (SAM would attach the managed policy
///   AWSLambdaSQSQueueExecutionRole, whose Resource is `*`): event source mappings instead;
/// - each mapping polls a queue of this template for a function of it, with
///   ReportBatchItemFailures, a BatchSize, and a MaximumConcurrency of 2 or more for every value
///   a deployer may choose; the function is granted the poller's actions on that queue;
/// - the polled queue's VisibilityTimeout is at least 6 x the function's timeout (and within
///   SQS's 12 hours), for every timeout a deployer may choose;
/// - the polled queue redrives (maxReceiveCount 1 or more) to a queue of this template that keeps
///   messages 14 days, longer than the polled queue (SQS counts a standard queue's retention from
///   the first send, so the dead letter needs the difference to be replayed).
fn check_queues(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let none = BTreeMap::new();
    let retention = |q: &Value| {
        q["Properties"]
            .get("MessageRetentionPeriod")
            .map_or(Some(345_600), |v| resolve_number(t, v, &none))
    };
    for (id, q) in resources_of_type(t, QUEUE) {
        let p = &q["Properties"];
        if p.get("FifoQueue").and_then(Value::as_bool) == Some(true) {
            bad.push(format!("{id}: a FIFO queue"));
        }
        // Encrypted either way: SQS-managed keys, or the stack's key when KmsKeyArn is set
        // (kms.rs checks what each branch says).
        let sse = p.get("SqsManagedSseEnabled");
        let sqs_managed = sse.and_then(Value::as_bool) == Some(true)
            || sse == Some(&yaml("!If [HasKmsKey, !Ref AWS::NoValue, true]"));
        if !sqs_managed {
            bad.push(format!("{id}: SqsManagedSseEnabled is not true"));
        }
    }
    for (id, f) in functions(t) {
        let events = f["Properties"].get("Events").and_then(Value::as_mapping);
        for (name, ev) in events.into_iter().flatten() {
            if ev["Type"].as_str() == Some("SQS") {
                bad.push(format!(
                    "{id}: event {name:?} is SAM's SQS event (managed policy with Resource *)"
                ));
            }
        }
    }
    let mappings = event_source_mappings(t);
    if mappings.is_empty() {
        bad.push("no event source mapping".into());
    }
    for m in mappings {
        let id = &m.id;
        let (Some(fid), Some(qid)) = (m.function.clone(), m.queue.clone()) else {
            bad.push(format!("{id}: not a function and a queue of this template"));
            continue;
        };
        let f = &t["Resources"][fid.as_str()];
        let q = &t["Resources"][qid.as_str()]["Properties"];
        let p = m.props;
        let responses = p
            .get("FunctionResponseTypes")
            .map(strings)
            .unwrap_or_default();
        if !responses
            .iter()
            .any(|r| r.as_str() == Some("ReportBatchItemFailures"))
        {
            bad.push(format!(
                "{id}: no FunctionResponseTypes [ReportBatchItemFailures]"
            ));
        }
        if p.get("BatchSize").is_none() {
            bad.push(format!("{id}: no BatchSize"));
        }
        match p["ScalingConfig"].get("MaximumConcurrency") {
            None => bad.push(format!("{id}: no ScalingConfig.MaximumConcurrency")),
            Some(mc) => {
                for choice in choices(t, mc) {
                    let assigned: BTreeMap<String, Value> = choice.clone().into_iter().collect();
                    match resolve_number(t, mc, &assigned) {
                        Some(n) if (2..=1000).contains(&n) => {}
                        other => bad.push(format!(
                            "{id}: MaximumConcurrency {other:?} with {choice:?} (Lambda takes 2 to 1000)"
                        )),
                    }
                }
            }
        }
        let granted = sqs_grants(t, f).remove(&qid).unwrap_or_default();
        for op in POLLER_ACTIONS {
            if !granted.contains(op) {
                bad.push(format!(
                    "{fid}: sqs:{op} on {qid} not granted (the poller needs it)"
                ));
            }
        }
        // The visibility timeout against every timeout the function may have.
        let timeout = effective(t, f, "Timeout").cloned().unwrap_or(yaml("3"));
        let visibility = q.get("VisibilityTimeout").cloned().unwrap_or(yaml("30"));
        for choice in choices(t, &timeout) {
            let assigned: BTreeMap<String, Value> = choice.clone().into_iter().collect();
            let (Some(secs), Some(vis)) = (
                resolve_number(t, &timeout, &assigned),
                resolve_number(t, &visibility, &assigned),
            ) else {
                bad.push(format!(
                    "{id}: cannot resolve {fid}'s Timeout {timeout:?} or {qid}'s \
                     VisibilityTimeout {visibility:?} with {choice:?}"
                ));
                continue;
            };
            if vis < 6 * secs || vis > 43_200 {
                bad.push(format!(
                    "{qid}: VisibilityTimeout {vis} with {fid}'s Timeout {secs} ({choice:?}): \
                     want 6 x {secs} = {} to 43200",
                    6 * secs
                ));
            }
        }
        // The dead letters.
        let redrive = &q["RedrivePolicy"];
        let Some(dlq) = redrive
            .get("deadLetterTargetArn")
            .and_then(|v| queue_arn(t, v))
        else {
            bad.push(format!(
                "{qid}: no RedrivePolicy to a queue of this template"
            ));
            continue;
        };
        match redrive
            .get("maxReceiveCount")
            .map(|v| resolve_number(t, v, &none))
        {
            Some(Some(n)) if n >= 1 => {}
            other => bad.push(format!("{qid}: maxReceiveCount {other:?}")),
        }
        let kept = retention(&t["Resources"][dlq.as_str()]);
        if kept != Some(FOURTEEN_DAYS) {
            bad.push(format!(
                "{dlq}: MessageRetentionPeriod {kept:?}, want {FOURTEEN_DAYS}"
            ));
        }
        let source = retention(&t["Resources"][qid.as_str()]);
        if source.is_none_or(|s| s >= FOURTEEN_DAYS) {
            bad.push(format!(
                "{qid}: MessageRetentionPeriod {source:?}, want less than {dlq}'s"
            ));
        }
    }
    bad
}

#[test]
fn template_schedules_delta_sync_with_the_all_entities_sample() {
    let t = template();
    let f = function(&t, "delta-sync");
    let events = f["Properties"]["Events"].as_mapping().expect("Events");
    assert_eq!(events.len(), 1, "one event: the schedule");
    let ev = events.values().next().unwrap();
    let kind = ev["Type"].as_str();
    assert!(matches!(kind, Some("Schedule" | "ScheduleV2")), "{kind:?}");
    let p = &ev["Properties"];
    let expr = if kind == Some("Schedule") {
        &p["Schedule"]
    } else {
        &p["ScheduleExpression"]
    };
    assert!(is_ref_to(expr, "DeltaSchedule"), "{expr:?}");
    assert_eq!(
        t["Parameters"]["DeltaSchedule"]["Default"].as_str(),
        Some("rate(5 minutes)")
    );
    if let Some(state) = p.get("State") {
        assert_eq!(state.as_str(), Some("ENABLED"));
    }
    let input: serde_json::Value =
        serde_json::from_str(p["Input"].as_str().expect("Input is a JSON string")).expect("JSON");
    let sample_path = root().join("events/delta-sync/all-entities.json");
    let sample: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sample_path).expect("read the sample"))
            .expect("the sample is JSON");
    assert_eq!(
        input, sample,
        "the schedule sends events/delta-sync/all-entities.json"
    );
}

/// `POST /webhooks` of an HTTP API (payload 2.0) invokes the ingest function, the only function
/// behind an API; the default stage is throttled by the two parameters; the output WebhookUrl
/// is that route's URL.
#[test]
fn template_webhook_api_routes_post_webhooks_to_ingest() {
    let t = template();
    let f = function(&t, "webhook-ingest");
    let events = f["Properties"]["Events"].as_mapping().expect("Events");
    assert_eq!(events.len(), 1, "one event: the route");
    let ev = events.values().next().unwrap();
    assert_eq!(ev["Type"].as_str(), Some("HttpApi"));
    let p = &ev["Properties"];
    assert_eq!(
        p["Method"].as_str().map(str::to_ascii_uppercase).as_deref(),
        Some("POST")
    );
    assert_eq!(p["Path"].as_str(), Some("/webhooks"));
    assert_eq!(p["PayloadFormatVersion"].as_str(), Some("2.0"));
    let api = ref_or_arn_of(&p["ApiId"]).expect("ApiId: !Ref <the HTTP API>");
    assert_eq!(resource_type(&t, &api), Some("AWS::Serverless::HttpApi"));

    // No other function is reachable from the internet.
    for (id, other) in functions(&t) {
        let kinds: Vec<&str> = other["Properties"]
            .get("Events")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(_, e)| e["Type"].as_str())
            .filter(|k| matches!(*k, "Api" | "HttpApi"))
            .collect();
        if other != f {
            assert!(kinds.is_empty(), "{id} has API events {kinds:?}");
        }
    }
    let throttling = &t["Resources"][api.as_str()]["Properties"]["DefaultRouteSettings"];
    for (key, param, default) in [
        ("ThrottlingRateLimit", "WebhookThrottleRate", 50),
        ("ThrottlingBurstLimit", "WebhookThrottleBurst", 100),
    ] {
        assert!(is_ref_to(&throttling[key], param), "{key}: {throttling:?}");
        assert_eq!(
            t["Parameters"][param]["Default"].as_i64(),
            Some(default),
            "{param}"
        );
        assert!(
            t["Parameters"][param]["MinValue"].as_i64() >= Some(1),
            "{param}"
        );
    }
    let url = &t["Outputs"]["WebhookUrl"]["Value"];
    assert_eq!(
        url,
        &yaml(&format!(
            "!Sub 'https://${{{api}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/webhooks'"
        ))
    );
    // The integration answers within API Gateway's 30 s.
    let timeout = effective(&t, f, "Timeout").and_then(Value::as_i64);
    assert!(timeout.is_some_and(|s| s <= 29), "{timeout:?}");
}

/// The work queue feeds the worker: the figures the issue asks for, then the generic check and
/// broken copies it must catch.
#[test]
fn template_work_queue_feeds_the_worker_with_a_dead_letter_queue() {
    let t = template();
    assert_eq!(check_queues(&t), Vec::<String>::new());

    let worker = function_id(&t, "sync-worker");
    let mappings = event_source_mappings(&t);
    assert_eq!(mappings.len(), 1, "one mapping");
    let m = &mappings[0];
    assert_eq!(m.function.as_deref(), Some(worker.as_str()));
    assert_eq!(m.queue.as_deref(), Some("WorkQueue"));
    let p = m.props;
    assert_eq!(p["BatchSize"].as_i64(), Some(10));
    assert_eq!(p["MaximumBatchingWindowInSeconds"].as_i64(), Some(1));
    if let Some(enabled) = p.get("Enabled") {
        assert_eq!(enabled.as_bool(), Some(true));
    }
    let (name, param) = parameter_of(&t, &p["ScalingConfig"]["MaximumConcurrency"])
        .expect("MaximumConcurrency is a parameter");
    assert_eq!(name, "WorkerMaxConcurrency");
    assert_eq!(param["Default"].as_i64(), Some(2));
    assert_eq!(param["MinValue"].as_i64(), Some(2), "Lambda's minimum");

    let f = function(&t, "sync-worker");
    let (name, param) = parameter_of(&t, &f["Properties"]["Timeout"]).expect("a parameter");
    assert_eq!(name, "WorkerTimeoutSeconds");
    assert_eq!(param["Default"].as_i64(), Some(60));
    let q = &t["Resources"]["WorkQueue"]["Properties"];
    assert!(q["MessageRetentionPeriod"].as_i64() >= Some(4 * 24 * 3600));
    let (name, param) =
        parameter_of(&t, &q["RedrivePolicy"]["maxReceiveCount"]).expect("a parameter");
    assert_eq!(name, "WorkerMaxReceiveCount");
    assert_eq!(param["Default"].as_i64(), Some(5));
    assert!(
        queue_arn(&t, &q["RedrivePolicy"]["deadLetterTargetArn"]) == Some("DeadLetterQueue".into())
    );

    // Broken copies.
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut b = t.clone();
        edit(&mut b);
        check_queues(&b)
    };
    let esm = m.id.clone();
    let expect = |found: Vec<String>, what: &str| {
        assert!(found.iter().any(|b| b.contains(what)), "{what}: {found:?}");
    };
    // One row of the mapping below 6 x its timeout.
    expect(
        broken(&|b| b["Mappings"]["WorkerTimeout"]["900"]["QueueVisibilityTimeout"] = yaml("900")),
        "VisibilityTimeout 900 with SyncWorkerFunction's Timeout 900",
    );
    // A visibility timeout that ignores the timeout's parameter.
    expect(
        broken(&|b| b["Resources"]["WorkQueue"]["Properties"]["VisibilityTimeout"] = yaml("360")),
        "VisibilityTimeout 360 with SyncWorkerFunction's Timeout 120",
    );
    expect(
        broken(&|b| {
            b["Resources"][esm.as_str()]["Properties"]
                .as_mapping_mut()
                .unwrap()
                .remove("FunctionResponseTypes");
        }),
        "ReportBatchItemFailures",
    );
    expect(
        broken(&|b| {
            b["Resources"][esm.as_str()]["Properties"]
                .as_mapping_mut()
                .unwrap()
                .remove("ScalingConfig");
        }),
        "MaximumConcurrency",
    );
    expect(
        broken(&|b| b["Parameters"]["WorkerMaxConcurrency"]["MinValue"] = yaml("1")),
        "MaximumConcurrency Some(1)",
    );
    expect(
        broken(&|b| {
            b["Resources"]["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] =
                yaml("345600")
        }),
        "DeadLetterQueue: MessageRetentionPeriod",
    );
    expect(
        broken(&|b| {
            b["Resources"]["WorkQueue"]["Properties"]["MessageRetentionPeriod"] = yaml("1209600")
        }),
        "want less than DeadLetterQueue's",
    );
    expect(
        broken(&|b| {
            b["Resources"]["WorkQueue"]["Properties"]
                .as_mapping_mut()
                .unwrap()
                .remove("RedrivePolicy");
        }),
        "no RedrivePolicy",
    );
    expect(
        broken(&|b| b["Resources"]["WorkQueue"]["Properties"]["FifoQueue"] = yaml("true")),
        "WorkQueue: a FIFO queue",
    );
    expect(
        broken(&|b| {
            b["Resources"]["DeadLetterQueue"]["Properties"]
                .as_mapping_mut()
                .unwrap()
                .remove("SqsManagedSseEnabled");
        }),
        "DeadLetterQueue: SqsManagedSseEnabled",
    );
    expect(
        broken(&|b| {
            b["Resources"][worker.as_str()]["Properties"]["Events"] =
                yaml("{Work: {Type: SQS, Properties: {Queue: !GetAtt WorkQueue.Arn}}}")
        }),
        "SAM's SQS event",
    );
    expect(
        broken(&|b| {
            let stmts = b["Resources"][worker.as_str()]["Properties"]["Policies"][0]["Statement"]
                .as_sequence_mut()
                .unwrap();
            for s in stmts.iter_mut() {
                if s["Sid"].as_str() == Some("ConsumeWorkQueue") {
                    s["Action"] = yaml("[sqs:ReceiveMessage, sqs:DeleteMessage]");
                }
            }
        }),
        "sqs:GetQueueAttributes on WorkQueue not granted",
    );
}

#[test]
fn template_spill_bucket_is_private_and_expires_the_runs() {
    let t = template();
    let b = &t["Resources"]["SpillBucket"]["Properties"];
    for key in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(
            b["PublicAccessBlockConfiguration"][key].as_bool(),
            Some(true),
            "{key}"
        );
    }
    // SSE-S3, or SSE-KMS with the stack's key when KmsKeyArn is set (kms.rs).
    assert_eq!(
        b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"],
        yaml(
            "!If [HasKmsKey, {SSEAlgorithm: 'aws:kms', KMSMasterKeyID: !Ref KmsKeyArn}, \
             {SSEAlgorithm: AES256}]"
        )
    );
    assert_eq!(
        b["OwnershipControls"]["Rules"][0]["ObjectOwnership"].as_str(),
        Some("BucketOwnerEnforced")
    );
    let prefix = format!(
        "{}/",
        shared::sync::reconcile::ReconcileOptions::default().spill_prefix
    );
    let rules = b["LifecycleConfiguration"]["Rules"]
        .as_sequence()
        .expect("rules");
    let rule = rules
        .iter()
        .find(|r| r["Prefix"].as_str() == Some(prefix.as_str()))
        .unwrap_or_else(|| panic!("a lifecycle rule on {prefix}: {rules:?}"));
    assert_eq!(rule["Status"].as_str(), Some("Enabled"));
    let days = rule["ExpirationInDays"].as_i64().expect("ExpirationInDays");
    assert_eq!(days, 7);
    // A run waiting for approval still has its lists when the approval comes.
    let approval = &t["Parameters"]["ApprovalTimeoutSeconds"];
    let longest = approval["MaxValue"].as_i64().expect("MaxValue");
    assert!(
        longest + 2 * 3600 < days * 86_400,
        "the longest approval wait ({longest} s) and the run around it end before the objects expire"
    );
    assert_eq!(approval["Default"].as_i64(), Some(86_400));
}

/// The outputs name what an operator needs: the URL to give the sender, the queues to replay
/// between, the functions, their logs and the alarms.
#[test]
fn template_outputs_name_the_webhook_pieces() {
    let t = template();
    let o = &t["Outputs"];
    let refs = [
        ("WorkQueueUrl", "WorkQueue"),
        ("DeadLetterQueueUrl", "DeadLetterQueue"),
        ("WebhookIngestFunctionName", "WebhookIngestFunction"),
        ("SyncWorkerFunctionName", "SyncWorkerFunction"),
        ("WebhookIngestLogGroupName", "WebhookIngestLogGroup"),
        ("SyncWorkerLogGroupName", "SyncWorkerLogGroup"),
        ("DeadLetterQueueAlarmName", "DeadLetterQueueAlarm"),
        ("NotFoundCeilingAlarmName", "NotFoundCeilingAlarm"),
        ("SyncWorkerErrorsAlarmName", "SyncWorkerErrorsAlarm"),
        ("WebhookServerErrorsAlarmName", "WebhookServerErrorsAlarm"),
    ];
    for (output, resource) in refs {
        assert!(is_ref_to(&o[output]["Value"], resource), "{output}");
        assert!(o[output]["Description"].as_str().is_some(), "{output}");
    }
    assert!(
        intrinsic(&o["WebhookUrl"]["Value"]).is_some_and(|(f, _)| f == "Sub"),
        "WebhookUrl (checked with the route)"
    );
    let dlq = o["DeadLetterQueueUrl"]["Description"].as_str().unwrap();
    assert!(dlq.contains("syncctl dlq replay --queue-url"), "{dlq}");
    // Every function's and every log group's name is an output.
    for (id, f) in functions(&t) {
        assert!(
            o.as_mapping()
                .unwrap()
                .values()
                .any(|v| is_ref_to(&v["Value"], &id)),
            "{id} has an output"
        );
        let group = f["Properties"]["LoggingConfig"]["LogGroup"].clone();
        let group = ref_or_arn_of(&group).unwrap_or_else(|| panic!("{id}: LoggingConfig.LogGroup"));
        assert!(
            o.as_mapping()
                .unwrap()
                .values()
                .any(|v| is_ref_to(&v["Value"], &group)),
            "{group} has an output"
        );
    }
}

#[test]
fn template_outputs_name_the_reconciliation_pieces() {
    let t = template();
    let o = &t["Outputs"];
    for (output, resource) in [
        ("ReconcileStateMachineArn", "ReconcileStateMachine"),
        ("ReconcileFunctionName", "ReconcileFunction"),
        ("ReconcileLogGroupName", "ReconcileLogGroup"),
        ("SpillBucketName", "SpillBucket"),
        ("ReconcileFailedAlarmName", "ReconcileFailedAlarm"),
        (
            "ReconcileGuardTrippedAlarmName",
            "ReconcileGuardTrippedAlarm",
        ),
        (
            "ReconcileAwaitingApprovalAlarmName",
            "ReconcileAwaitingApprovalAlarm",
        ),
    ] {
        assert!(is_ref_to(&o[output]["Value"], resource), "{output}");
        assert!(o[output]["Description"].as_str().is_some(), "{output}");
    }
}
