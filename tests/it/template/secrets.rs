//! The token signing secret (issue 12, requirement 6) and the alarm on a refused source
//! credential (requirement 7): the template against the code that reads and emits them.

use super::cfn::*;
use super::code::*;
use serde_yaml::Value;
use shared::adapters::secrets::TOKEN_SIGNING_SECRET_ID;
use shared::core::token::MIN_KEY_BYTES;
use shared::telemetry;

/// The stack generates the key (long enough for `core::token`), the reconcile function gets
/// its ARN in `TOKEN_SIGNING_SECRET_ID` and may read exactly it, unconditionally; no other
/// function may read it.
fn check_token_secret(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let s = &t["Resources"]["TokenSigningSecret"];
    if s["Type"].as_str() != Some("AWS::SecretsManager::Secret") {
        bad.push(format!("TokenSigningSecret is {:?}", s["Type"]));
    }
    let g = &s["Properties"]["GenerateSecretString"];
    let long_enough = g["PasswordLength"]
        .as_u64()
        .is_some_and(|n| n as usize >= MIN_KEY_BYTES);
    if !long_enough {
        bad.push(format!(
            "a generated value of at least {MIN_KEY_BYTES} characters: {g:?}"
        ));
    }
    let f = function(t, "reconcile");
    if !environment(t, f)
        .get(TOKEN_SIGNING_SECRET_ID)
        .is_some_and(|v| is_ref_to(v, "TokenSigningSecret"))
    {
        bad.push(format!(
            "the reconcile function's {TOKEN_SIGNING_SECRET_ID}"
        ));
    }
    let reads = |f: &Value| -> Vec<(Option<String>, Value)> {
        function_statements(f)
            .into_iter()
            .filter(|(_, s)| is_ref_to(&s["Resource"], "TokenSigningSecret"))
            .map(|(c, s)| (c, s["Action"].clone()))
            .collect()
    };
    let want = vec![(None, yaml("secretsmanager:GetSecretValue"))];
    if reads(f) != want {
        bad.push(format!(
            "the reconcile function's grant on it: {:?}",
            reads(f)
        ));
    }
    for (id, other) in functions(t) {
        if id != function_id(t, "reconcile") && !reads(other).is_empty() {
            bad.push(format!("{id} may read the token signing secret"));
        }
    }
    bad
}

#[test]
fn template_token_signing_secret_is_generated_and_read_by_the_reconcile_function_only() {
    let t = template();
    assert_eq!(check_token_secret(&t), Vec::<String>::new());
    let code = production_code_under(&[root().join("shared/src")]);
    assert!(code.contains(&format!("\"{TOKEN_SIGNING_SECRET_ID}\"")));
    let main = production_code_under(&[root().join("functions/reconcile/src")]);
    assert!(
        main.contains("secrets::token_key("),
        "the function reads the key at cold start"
    );

    // The check sees a missing grant, a missing variable and another reader.
    let id = function_id(&t, "reconcile");
    let mut broken = t.clone();
    let props = &mut broken["Resources"][id.as_str()]["Properties"];
    let list = props["Policies"][0]["Statement"]
        .as_sequence_mut()
        .expect("a statement list");
    list.retain(|s| s["Sid"].as_str() != Some("ReadTokenSigningSecret"));
    props["Environment"]["Variables"]
        .as_mapping_mut()
        .expect("variables")
        .remove(TOKEN_SIGNING_SECRET_ID);
    let found = check_token_secret(&broken);
    assert!(found.iter().any(|b| b.contains("grant")), "{found:?}");
    assert!(
        found.iter().any(|b| b.contains(TOKEN_SIGNING_SECRET_ID)),
        "{found:?}"
    );
    let mut broken = t.clone();
    let worker = function_id(&t, "sync-worker");
    broken["Resources"][worker.as_str()]["Properties"]["Policies"][0]["Statement"]
        .as_sequence_mut()
        .expect("a statement list")
        .push(yaml(
            "{Effect: Allow, Action: secretsmanager:GetSecretValue, Resource: !Ref TokenSigningSecret}",
        ));
    let found = check_token_secret(&broken);
    assert!(found.iter().any(|b| b.contains(&worker)), "{found:?}");
}

#[test]
fn template_alarms_when_the_source_refuses_the_credential() {
    let t = template();
    let a = &t["Resources"]["SourceUnauthorizedAlarm"]["Properties"];
    assert_eq!(a["Namespace"].as_str(), Some(telemetry::NAMESPACE));
    let want = yaml(
        "{MetricName: SourceUnauthorized, Statistic: Sum, Period: 300, EvaluationPeriods: 1,
          Threshold: 0, ComparisonOperator: GreaterThanThreshold, TreatMissingData: notBreaching}",
    );
    for (k, v) in want.as_mapping().unwrap() {
        assert_eq!(
            a.get(k.as_str().unwrap()),
            Some(v),
            "SourceUnauthorizedAlarm {k:?}"
        );
    }
    assert!(
        a.get("Dimensions").is_none(),
        "one alarm for every function and entity"
    );
    let code = production_code_under(&[root().join("shared/src/source")]);
    assert!(
        code.contains("(\"SourceUnauthorized\", 1.0, \"Count\")"),
        "the source client emits SourceUnauthorized"
    );
}
