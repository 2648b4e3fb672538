//! Alarms, traced to the metric names the code publishes (`shared::telemetry`), and the optional
//! topic every alarm notifies.

use super::cfn::*;
use super::code::*;
use serde_yaml::Value;
use shared::telemetry;

/// An Errors alarm on the function: more than 0 in 3 consecutive 5-minute periods.
fn check_errors_alarm(t: &Value, id: &str) -> Vec<String> {
    let found: Vec<&Value> = alarms(t)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| {
            p["Namespace"].as_str() == Some("AWS/Lambda")
                && p["MetricName"].as_str() == Some("Errors")
                && p["Dimensions"].as_sequence().is_some_and(|d| {
                    d.iter().any(|d| {
                        d["Name"].as_str() == Some("FunctionName") && is_ref_to(&d["Value"], id)
                    })
                })
        })
        .collect();
    if found.len() != 1 {
        return vec![format!("{} Errors alarms on {id}, want 1", found.len())];
    }
    let a = found[0];
    let mut bad = Vec::new();
    let want = [
        ("ComparisonOperator", yaml("GreaterThanThreshold")),
        ("Threshold", yaml("0")),
        ("Statistic", yaml("Sum")),
        ("Period", yaml("300")),
        ("EvaluationPeriods", yaml("3")),
    ];
    for (key, v) in want {
        if a.get(key) != Some(&v) {
            bad.push(format!(
                "{id}'s Errors alarm: {key} is {:?}, want {v:?}",
                a.get(key)
            ));
        }
    }
    bad
}

/// Every alarm notifies both optional targets, each only under its condition, and has no
/// actions at all without either (`!If [HasAlarmTarget, [<topic if set>, <email topic if set>],
/// AWS::NoValue]`: never an empty list).
fn check_alarm_topic(t: &Value) -> Vec<String> {
    // `!If [Cond, !Ref X, !Ref AWS::NoValue]`: X under Cond.
    let conditional_ref = |v: &Value, cond: &str, target: &str| {
        matches!(intrinsic(v), Some((f, Value::Sequence(args)))
            if f == "If" && args.len() == 3 && args[0].as_str() == Some(cond)
                && is_ref_to(&args[1], target) && is_no_value(&args[2]))
    };
    let mut bad = Vec::new();
    for (id, a) in alarms(t) {
        for key in ["AlarmActions", "OKActions"] {
            let ok = match intrinsic(&a[key]) {
                Some((f, Value::Sequence(args))) if f == "If" && args.len() == 3 => {
                    let list = args[1].as_sequence().map(Vec::as_slice).unwrap_or_default();
                    args[0].as_str() == Some("HasAlarmTarget")
                        && is_no_value(&args[2])
                        && list.len() == 2
                        && list
                            .iter()
                            .any(|v| conditional_ref(v, "HasAlarmTopic", "AlarmTopicArn"))
                        && list
                            .iter()
                            .any(|v| conditional_ref(v, "HasAlarmEmail", "AlarmEmailTopic"))
                }
                _ => false,
            };
            if !ok {
                bad.push(format!("{id}: {key} is {:?}", a.get(key)));
            }
        }
    }
    // The conditions mean what the actions assume.
    let want = [
        ("HasAlarmTopic", "!Not [!Equals [!Ref AlarmTopicArn, '']]"),
        ("HasAlarmEmail", "!Not [!Equals [!Ref AlarmEmail, '']]"),
        (
            "HasAlarmTarget",
            "!Or [!Condition HasAlarmTopic, !Condition HasAlarmEmail]",
        ),
    ];
    for (cond, text) in want {
        if t["Conditions"][cond] != yaml(text) {
            bad.push(format!("Conditions.{cond} is {:?}", t["Conditions"][cond]));
        }
    }
    bad
}

/// The email topic exists exactly when AlarmEmail is set: the address subscribed by email, a
/// topic policy letting only this account's CloudWatch alarms publish (and denying plain
/// HTTP), encrypted with the stack's key when there is one, and its ARN an output.
fn check_alarm_email(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let r = &t["Resources"];
    let want = [
        ("AlarmEmailTopic", "AWS::SNS::Topic"),
        ("AlarmEmailSubscription", "AWS::SNS::Subscription"),
        ("AlarmEmailTopicPolicy", "AWS::SNS::TopicPolicy"),
    ];
    for (id, ty) in want {
        if r[id]["Type"].as_str() != Some(ty)
            || r[id]["Condition"].as_str() != Some("HasAlarmEmail")
        {
            bad.push(format!("{id}: a {ty} under HasAlarmEmail"));
        }
    }
    let sub = &r["AlarmEmailSubscription"]["Properties"];
    if sub["Protocol"].as_str() != Some("email")
        || !is_ref_to(&sub["Endpoint"], "AlarmEmail")
        || !is_ref_to(&sub["TopicArn"], "AlarmEmailTopic")
    {
        bad.push(format!("AlarmEmailSubscription: {sub:?}"));
    }
    if r["AlarmEmailTopic"]["Properties"]["KmsMasterKeyId"]
        != yaml("!If [HasKmsKey, !Ref KmsKeyArn, !Ref AWS::NoValue]")
    {
        bad.push("AlarmEmailTopic: not under KmsKeyArn's key when set".into());
    }
    let statements = r["AlarmEmailTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    let publish = statements
        .iter()
        .find(|s| s["Effect"].as_str() == Some("Allow"));
    match publish {
        Some(s)
            if s["Principal"] == yaml("{Service: cloudwatch.amazonaws.com}")
                && s["Action"].as_str() == Some("sns:Publish")
                && is_ref_to(&s["Resource"], "AlarmEmailTopic")
                && is_ref_to(
                    &s["Condition"]["StringEquals"]["aws:SourceAccount"],
                    "AWS::AccountId",
                )
                && s["Condition"]["ArnLike"]["aws:SourceArn"]
                    == yaml(
                        "!Sub 'arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${AWS::StackName}-*'",
                    ) => {}
        other => bad.push(format!(
            "AlarmEmailTopicPolicy: CloudWatch of this account and stack may publish: {other:?}"
        )),
    }
    if statements
        .iter()
        .filter(|s| s["Effect"].as_str() == Some("Allow"))
        .count()
        != 1
    {
        bad.push("AlarmEmailTopicPolicy: one Allow only".into());
    }
    let tls = statements.iter().any(|s| {
        s["Effect"].as_str() == Some("Deny")
            && s["Condition"]["Bool"]["aws:SecureTransport"].as_str() == Some("false")
    });
    if !tls {
        bad.push("AlarmEmailTopicPolicy: no deny of plain HTTP".into());
    }
    let out = &t["Outputs"]["AlarmEmailTopicArn"];
    if !is_ref_to(&out["Value"], "AlarmEmailTopic")
        || out["Condition"].as_str() != Some("HasAlarmEmail")
    {
        bad.push(format!("Outputs.AlarmEmailTopicArn: {out:?}"));
    }
    bad
}

#[test]
fn template_alarms_when_a_function_keeps_failing() {
    let t = template();
    for binary in ["delta-sync", "sync-worker"] {
        let id = function_id(&t, binary);
        assert_eq!(
            check_errors_alarm(&t, &id),
            Vec::<String>::new(),
            "{binary}"
        );
    }
    // The ingest function's failures are the API's 5xx (a crash answers 500 too).
    let api = &t["Resources"]["WebhookServerErrorsAlarm"]["Properties"];
    assert_eq!(api["Namespace"].as_str(), Some("AWS/ApiGateway"));
    assert_eq!(api["MetricName"].as_str(), Some("5xx"));
    assert!(is_ref_to(&api["Dimensions"][0]["Value"], "WebhookApi"));
    assert_eq!(api["Dimensions"][0]["Name"].as_str(), Some("ApiId"));

    let mut broken = t.clone();
    let id = function_id(&t, "sync-worker");
    broken["Resources"]["SyncWorkerErrorsAlarm"]["Properties"]["Period"] = yaml("60");
    let found = check_errors_alarm(&broken, &id);
    assert!(found.iter().any(|b| b.contains("Period")), "{found:?}");
    broken["Resources"]
        .as_mapping_mut()
        .expect("Resources")
        .remove("SyncWorkerErrorsAlarm");
    let found = check_errors_alarm(&broken, &id);
    assert!(
        found.iter().any(|b| b.contains("0 Errors alarms")),
        "{found:?}"
    );
}

#[test]
fn template_every_alarm_notifies_the_optional_topic_and_email() {
    let t = template();
    assert!(alarms(&t).len() >= 5, "{:?}", alarms(&t));
    assert_eq!(check_alarm_topic(&t), Vec::<String>::new());
    assert_eq!(check_alarm_email(&t), Vec::<String>::new());

    // The old form, the topic only: the email is missed.
    let mut broken = t.clone();
    broken["Resources"]["DeadLetterQueueAlarm"]["Properties"]["AlarmActions"] =
        yaml("!If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref AWS::NoValue]");
    let found = check_alarm_topic(&broken);
    assert_eq!(
        found,
        [format!(
            "DeadLetterQueueAlarm: AlarmActions is {:?}",
            broken["Resources"]["DeadLetterQueueAlarm"]["Properties"].get("AlarmActions")
        )]
    );
    // An alarm missing the email topic.
    let mut broken = t.clone();
    broken["Resources"]["SyncWorkerErrorsAlarm"]["Properties"]["OKActions"] = yaml(
        "!If [HasAlarmTarget, [!If [HasAlarmTopic, !Ref AlarmTopicArn, !Ref AWS::NoValue]], \
         !Ref AWS::NoValue]",
    );
    let found = check_alarm_topic(&broken);
    assert!(
        found
            .iter()
            .any(|b| b.starts_with("SyncWorkerErrorsAlarm: OKActions")),
        "{found:?}"
    );
    // The email topic unconditionally: a stack without AlarmEmail would fail to deploy.
    let mut broken = t.clone();
    broken["Resources"]["SyncWorkerErrorsAlarm"]["Properties"]["AlarmActions"] = yaml(
        "!If [HasAlarmTarget, [!If [HasAlarmTopic, !Ref AlarmTopicArn, !Ref AWS::NoValue], \
         !Ref AlarmEmailTopic], !Ref AWS::NoValue]",
    );
    assert_eq!(check_alarm_topic(&broken).len(), 1);
    // An empty list when neither is set.
    let mut broken = t.clone();
    broken["Conditions"]["HasAlarmTarget"] = yaml("!Equals [a, a]");
    assert_eq!(
        check_alarm_topic(&broken),
        [format!(
            "Conditions.HasAlarmTarget is {:?}",
            broken["Conditions"]["HasAlarmTarget"]
        )]
    );
    // The topic's policy open to any CloudWatch alarm, of any account.
    let mut broken = t.clone();
    broken["Resources"]["AlarmEmailTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
        ["Condition"] = yaml("{}");
    let found = check_alarm_email(&broken);
    assert!(
        found
            .iter()
            .any(|b| b.contains("CloudWatch of this account")),
        "{found:?}"
    );
    let mut broken = t.clone();
    broken["Resources"]["AlarmEmailSubscription"]["Properties"]["Protocol"] = yaml("sms");
    assert_eq!(check_alarm_email(&broken).len(), 1);
}

/// The DLQ alarm fires on the first dead letter; the 404-ceiling alarm watches the worker's EMF
/// metric, which the code emits under the same name, namespace and no dimensions.
#[test]
fn template_alarms_on_dead_letters_and_404_storms() {
    let t = template();
    let dlq = &t["Resources"]["DeadLetterQueueAlarm"]["Properties"];
    let want = yaml(
        "{Namespace: AWS/SQS, MetricName: ApproximateNumberOfMessagesVisible,
          Statistic: Maximum, Period: 300, EvaluationPeriods: 1, Threshold: 0,
          ComparisonOperator: GreaterThanThreshold}",
    );
    for (k, v) in want.as_mapping().unwrap() {
        assert_eq!(
            dlq.get(k.as_str().unwrap()),
            Some(v),
            "DeadLetterQueueAlarm {k:?}"
        );
    }
    assert_eq!(
        dlq["Dimensions"],
        yaml("[{Name: QueueName, Value: !GetAtt DeadLetterQueue.QueueName}]")
    );
    let redrive = &t["Resources"]["WorkQueue"]["Properties"]["RedrivePolicy"];
    assert_eq!(
        queue_arn(&t, &redrive["deadLetterTargetArn"]).as_deref(),
        Some("DeadLetterQueue"),
        "the alarm watches the work queue's DLQ"
    );

    let nf = &t["Resources"]["NotFoundCeilingAlarm"]["Properties"];
    assert_eq!(nf["Namespace"].as_str(), Some(telemetry::NAMESPACE));
    let want = yaml(
        "{MetricName: NotFoundCeilingTripped, Statistic: Sum, Period: 300, EvaluationPeriods: 1,
          Threshold: 0, ComparisonOperator: GreaterThanThreshold, TreatMissingData: notBreaching}",
    );
    for (k, v) in want.as_mapping().unwrap() {
        assert_eq!(
            nf.get(k.as_str().unwrap()),
            Some(v),
            "NotFoundCeilingAlarm {k:?}"
        );
    }
    assert!(
        nf.get("Dimensions").is_none(),
        "one alarm for every entity: the metric has no dimensions"
    );
    let code = production_code_under(&[
        root().join("shared/src"),
        root().join("functions/sync-worker/src"),
    ]);
    assert!(
        code.contains("\"NotFoundCeilingTripped\""),
        "the worker emits the EMF metric NotFoundCeilingTripped (no dimensions)"
    );
}

#[test]
fn template_alarms_watch_reconciliation() {
    let t = template();
    let sm = state_machine_id(&t);
    let a = &t["Resources"]["ReconcileFailedAlarm"]["Properties"];
    assert_eq!(a["Namespace"].as_str(), Some("AWS/States"));
    assert_eq!(a["MetricName"].as_str(), Some("ExecutionsFailed"));
    assert_eq!(a["Dimensions"][0]["Name"].as_str(), Some("StateMachineArn"));
    assert!(
        is_ref_to(&a["Dimensions"][0]["Value"], &sm),
        "Ref of a state machine is its ARN"
    );

    let code = production_code_under(&[
        root().join("shared/src"),
        root().join("functions/reconcile/src"),
    ]);
    for (alarm, metric) in [
        ("ReconcileGuardTrippedAlarm", "ReconcileGuardTripped"),
        (
            "ReconcileAwaitingApprovalAlarm",
            "ReconcileAwaitingApproval",
        ),
    ] {
        let a = &t["Resources"][alarm]["Properties"];
        assert_eq!(
            a["Namespace"].as_str(),
            Some(telemetry::NAMESPACE),
            "{alarm}"
        );
        assert_eq!(a["MetricName"].as_str(), Some(metric), "{alarm}");
        assert!(
            a.get("Dimensions").is_none(),
            "{alarm}: one alarm for every entity"
        );
        assert_eq!(a["Threshold"].as_i64(), Some(0), "{alarm}");
        assert!(
            code.contains(&format!("(\"{metric}\", 1.0, \"Count\")")),
            "the code emits {metric}"
        );
    }
    // Drift: the per-entity metrics summed by one query, no entity named, no wildcard.
    assert!(
        code.contains("(\"Strategy\", \"reconcile\")"),
        "the dimension the queries filter on"
    );
    for (alarm, metric) in [
        ("ReconcileMissedAlarm", "ReconcileMissed"),
        ("ReconcileStaleAlarm", "ReconcileStale"),
        ("ReconcileRegressionsAlarm", "ReconcileRegressions"),
    ] {
        let a = &t["Resources"][alarm]["Properties"];
        let q = a["Metrics"][0]["Expression"].as_str().expect("a query");
        assert!(
            q.contains(&format!("SUM({metric})"))
                && q.contains(&format!(
                    "SCHEMA(\"{}\", Entity, Strategy)",
                    telemetry::NAMESPACE
                ))
                && q.contains("Strategy = 'reconcile'"),
            "{alarm}: {q}"
        );
        assert!(!q.contains('*'), "{alarm}: {q}");
        assert!(
            code.contains(&format!("(\"{metric}\", ")),
            "the code emits {metric}"
        );
        assert!(
            is_ref_to(&a["Threshold"], "ReconcileDriftAlarmThreshold"),
            "{alarm}"
        );
    }
    assert_eq!(check_alarm_topic(&t), Vec::<String>::new());
}

#[test]
fn template_alarms_on_records_that_cannot_be_synced() {
    let t = template();
    let code = production_code_under(&[root().join("shared/src")]);
    // Records that cannot be synced: skipped by every strategy, summed over every entity and
    // strategy (delta, reconcile, worker all emit it under Entity and Strategy).
    let a = &t["Resources"]["RecordsRejectedAlarm"]["Properties"];
    let q = a["Metrics"][0]["Expression"].as_str().expect("a query");
    assert!(
        q.contains("SUM(RecordsRejected)")
            && q.contains(&format!(
                "SCHEMA(\"{}\", Entity, Strategy)",
                telemetry::NAMESPACE
            ))
            && !q.contains("WHERE")
            && !q.contains('*'),
        "{q}"
    );
    for strategy in ["delta", "reconcile", "worker"] {
        assert!(
            code.contains(&format!("(\"Strategy\", \"{strategy}\")")),
            "{strategy}"
        );
    }
    assert!(code.contains("(\"RecordsRejected\", "), "the code emits it");
    assert_eq!(a["Threshold"].as_i64(), Some(0));
}
