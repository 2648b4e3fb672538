//! The reconciliation state machine runs the checked definition (`infra/reconcile.asl.json`),
//! every placeholder substituted.

use super::cfn::*;
use serde_yaml::Value;
use std::collections::BTreeSet;

/// The state machine: Standard, the checked definition with every placeholder substituted,
/// the daily schedule sending the console's all-entities sample, and a role that may only
/// invoke the reconcile function (the function starts a continuing run's next execution).
#[test]
fn template_reconcile_state_machine_runs_the_checked_definition() {
    let t = template();
    let sm = state_machine_id(&t);
    let p = &t["Resources"][sm.as_str()]["Properties"];
    assert_eq!(
        p["Type"].as_str(),
        Some("STANDARD"),
        "task tokens, no 5-minute limit"
    );
    let uri = p["DefinitionUri"].as_str().expect("DefinitionUri");
    assert_eq!(uri, "infra/reconcile.asl.json");
    let text = std::fs::read_to_string(root().join(uri)).expect("read the definition");
    serde_json::from_str::<serde_json::Value>(&text).expect("the definition is JSON as it is");
    let mut placeholders = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').expect("a closed placeholder");
        placeholders.insert(rest[i + 2..i + end].to_owned());
        rest = &rest[i + end..];
    }
    let subs = p["DefinitionSubstitutions"]
        .as_mapping()
        .expect("DefinitionSubstitutions");
    let keys: BTreeSet<String> = subs
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        placeholders, keys,
        "every placeholder substituted, nothing else"
    );
    assert!(is_ref_to(
        &subs[&yaml("ApprovalTimeoutSeconds")],
        "ApprovalTimeoutSeconds"
    ));
    assert!(is_ref_to(
        &subs[&yaml("MaxSourceInvocations")],
        "ReconcileMaxSourceInvocations"
    ));
    let loops = &t["Parameters"]["ReconcileMaxSourceInvocations"];
    assert!(
        loops["MaxValue"].as_i64().is_some_and(|m| m * 7 < 25_000),
        "the loop stays under Step Functions' 25,000 history events"
    );
    assert_eq!(
        table_arn(&subs[&yaml("ReconcileFunctionArn")]),
        Some((function_id(&t, "reconcile"), None))
    );

    // Named: the reconcile function's StartExecution grant names its ARN.
    assert_eq!(p["Name"], yaml("!Sub '${AWS::StackName}-reconcile'"));
    // The role: invoke the function, nothing else.
    let statements: Vec<&Value> = p["Policies"]
        .as_sequence()
        .expect("Policies")
        .iter()
        .flat_map(|pol| pol["Statement"].as_sequence().into_iter().flatten())
        .collect();
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(
        statements[0]["Action"].as_str(),
        Some("lambda:InvokeFunction")
    );
    assert!(table_arn(&statements[0]["Resource"]) == Some((function_id(&t, "reconcile"), None)));

    // One schedule, the console's sample as its input.
    let events = p["Events"].as_mapping().expect("Events");
    assert_eq!(events.len(), 1);
    let ev = events.values().next().unwrap();
    assert!(matches!(
        ev["Type"].as_str(),
        Some("Schedule" | "ScheduleV2")
    ));
    let e = &ev["Properties"];
    let expr = e
        .get("Schedule")
        .or_else(|| e.get("ScheduleExpression"))
        .unwrap();
    assert!(is_ref_to(expr, "ReconcileSchedule"));
    assert_eq!(
        t["Parameters"]["ReconcileSchedule"]["Default"].as_str(),
        Some("cron(0 3 * * ? *)")
    );
    let input: serde_json::Value =
        serde_json::from_str(e["Input"].as_str().expect("Input")).expect("JSON");
    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("events/reconcile/start-all-entities.json"))
            .expect("the sample"),
    )
    .unwrap();
    assert_eq!(input, sample);
}
