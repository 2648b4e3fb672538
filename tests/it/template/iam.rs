//! IAM: inline statements without wildcards, every action granted traced to a call the code
//! makes on a resource of this template, and each function's grants covering what it calls.

use super::cfn::*;
use super::code::*;
use serde_yaml::Value;
use shared::adapters::dynamodb::schema;
use std::collections::{BTreeMap, BTreeSet};

/// The SDK calls each S3 action authorises, as `shared/src/adapters/s3.rs` makes them.
const S3_CALLS: [(&str, &[&str]); 4] = [
    ("PutObject", &["PutObject"]),
    ("GetObject", &["GetObject"]),
    ("DeleteObject", &["DeleteObject", "DeleteObjects"]),
    ("ListBucket", &["ListObjectsV2", "ListObjects"]),
];

/// What Lambda's SQS poller calls with the function's execution role (the actions of the managed
/// policy AWSLambdaSQSQueueExecutionRole): granted for an event source mapping, not for a call
/// of our code. ChangeMessageVisibility is not among them: the poller leaves a failed message to
/// its visibility timeout, so that grant would need a call of our own.
pub(super) const POLLER_ACTIONS: [&str; 3] =
    ["ReceiveMessage", "DeleteMessage", "GetQueueAttributes"];

/// Inline statements only (no managed policy, no SAM policy template: both grant more than the
/// code calls), no `*` in an action, no bare `*` resource, no `NotAction` / `NotResource`.
/// A Deny may use wildcards (it only takes away: the TLS-only policies deny `s3:*` on a bucket
/// and its objects); a resource policy (a statement with a Principal) may only deny, but for
/// the one a service needs ([`alarms_publish_to_topic`]).
fn check_iam(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let roles = functions(t)
        .into_iter()
        .chain(resources_of_type(t, STATE_MACHINE));
    for (id, f) in roles {
        let Some(policies) = f["Properties"].get("Policies") else {
            continue;
        };
        for p in strings(policies).into_iter().flat_map(alternatives) {
            if p.get("Statement").is_none() {
                bad.push(format!(
                    "{id}: a policy that is not inline statements: {p:?}"
                ));
            }
        }
    }
    for r in t["Resources"].as_mapping().expect("Resources").values() {
        if let Some(arns) = r["Properties"].get("ManagedPolicyArns") {
            bad.push(format!("a role with managed policies: {arns:?}"));
        }
    }
    for (at, s) in statements(t) {
        for key in ["NotAction", "NotResource", "NotPrincipal"] {
            if s.get(key).is_some() {
                bad.push(format!("{at}: {key}"));
            }
        }
        let principal = s.get("Principal").is_some();
        match s["Effect"].as_str() {
            Some("Deny") => continue,
            Some("Allow") if principal && alarms_publish_to_topic(t, s) => {}
            Some("Allow") if principal => {
                bad.push(format!(
                    "{at}: a resource policy that allows (grants go in roles)"
                ));
            }
            Some("Allow") => {}
            other => bad.push(format!("{at}: Effect {other:?}")),
        }
        for a in s.get("Action").map(strings).unwrap_or_default() {
            match a.as_str() {
                Some(a) if a.contains('*') => bad.push(format!("{at}: action {a}")),
                Some(a) if a.split_once(':').is_none() => {
                    bad.push(format!("{at}: action {a} is not service:Operation"))
                }
                Some(_) => {}
                None => bad.push(format!("{at}: an action that is not a plain string: {a:?}")),
            }
        }
        for r in s.get("Resource").map(strings).unwrap_or_default() {
            // The intrinsic first: serde_yaml's `as_str` sees through a tag (`!Sub "..."`).
            match (intrinsic(r), r.as_str()) {
                (Some((f, arg)), _) if f == "Sub" => {
                    let s = arg.as_str().unwrap_or_default();
                    if s.contains('*') && !s.ends_with("/index/*") && bucket_objects(t, r).is_none()
                    {
                        bad.push(format!("{at}: resource {s}"));
                    }
                }
                (None, Some(r)) if r.contains('*') => bad.push(format!("{at}: resource {r}")),
                _ => {}
            }
        }
        if !principal && s.get("Resource").is_none() {
            bad.push(format!("{at}: no Resource"));
        }
    }
    bad
}

/// The one Allow a resource policy may hold: CloudWatch (the alarms) publishing to an SNS topic
/// of this template, for this account only (`aws:SourceAccount`) and alarms of this stack
/// (`aws:SourceArn`).
fn alarms_publish_to_topic(t: &Value, s: &Value) -> bool {
    s["Principal"] == yaml("{Service: cloudwatch.amazonaws.com}")
        && s["Action"].as_str() == Some("sns:Publish")
        && ref_or_arn_of(&s["Resource"])
            .is_some_and(|r| resource_type(t, &r) == Some("AWS::SNS::Topic"))
        && is_ref_to(
            &s["Condition"]["StringEquals"]["aws:SourceAccount"],
            "AWS::AccountId",
        )
        && s["Condition"]["ArnLike"].get("aws:SourceArn").is_some()
}

/// Every action granted (Allow) is a call the code makes: DynamoDB per table, against that
/// table's adapter; an index grant is a `Query`/`Scan` of an adapter that names an index.
fn check_grants_are_used(t: &Value) -> Vec<String> {
    let adapters: BTreeMap<&str, String> = table_adapters()
        .into_iter()
        .map(|(id, path)| (id, production_code(&path)))
        .collect();
    let mut dirs = vec![root().join("shared/src")];
    dirs.extend(
        function_crates()
            .iter()
            .map(|c| root().join("functions").join(c).join("src")),
    );
    let all_code = production_code_under(&dirs);
    let s3_code = production_code(&root().join("shared/src/adapters/s3.rs"));
    let sfn_code = production_code(&root().join("shared/src/adapters/sfn.rs"));
    let mapped = esm_targets(t);
    let mut bad = Vec::new();
    for (at, s) in statements(t) {
        if s.get("Principal").is_some() || s["Effect"].as_str() != Some("Allow") {
            continue;
        }
        let resources = s.get("Resource").map(strings).unwrap_or_default();
        for a in s.get("Action").map(strings).unwrap_or_default() {
            let Some((service, op)) = a.as_str().and_then(|a| a.split_once(':')) else {
                continue;
            };
            if service == "sqs" {
                for r in &resources {
                    let Some(queue) = queue_arn(t, r) else {
                        bad.push(format!(
                            "{at}: {a:?} on {r:?}, which is not a queue of this template"
                        ));
                        continue;
                    };
                    let polled = POLLER_ACTIONS.contains(&op)
                        && mapped.contains(&(owner_of(&at).to_owned(), queue.clone()));
                    // Lambda sends a failed asynchronous invocation's record to the function's
                    // on-failure destination with its role.
                    let destination = op == "SendMessage"
                        && on_failure_destination(t, owner_of(&at)).as_ref() == Some(&queue);
                    if !polled && !destination && !uses(&all_code, service, op) {
                        bad.push(format!(
                            "{at}: sqs:{op} on {queue}, but no .{}() in shared/src or functions/, \
                             and no event source mapping on {queue} invokes {}",
                            snake(op),
                            owner_of(&at)
                        ));
                    }
                }
                continue;
            }
            if service == "s3" {
                let ops = S3_CALLS.iter().find(|(a, _)| *a == op).map(|(_, c)| *c);
                match ops {
                    Some(ops) if ops.iter().any(|c| calls(&s3_code, c)) => {}
                    _ => bad.push(format!(
                        "{at}: s3:{op} granted, but shared/src/adapters/s3.rs makes no call it \
                         authorises"
                    )),
                }
                for r in &resources {
                    let ok = if op == "ListBucket" {
                        bucket_arn(t, r).is_some()
                    } else {
                        bucket_objects(t, r).is_some()
                    };
                    if !ok {
                        bad.push(format!(
                            "{at}: s3:{op} on {r:?}, which is not {} of a bucket of this template",
                            if op == "ListBucket" {
                                "the ARN"
                            } else {
                                "an object prefix"
                            }
                        ));
                    }
                }
                continue;
            }
            if service == "lambda" {
                let owner = owner_of(&at);
                let invoked = invoked_by_state_machine(t, owner);
                for r in &resources {
                    let function =
                        ref_or_arn_of(r).filter(|f| resource_type(t, f) == Some(FUNCTION));
                    let ok = op == "InvokeFunction"
                        && resource_type(t, owner) == Some(STATE_MACHINE)
                        && function.as_ref().is_some_and(|f| invoked.contains(f));
                    if !ok {
                        bad.push(format!(
                            "{at}: lambda:{op} on {r:?}: only a state machine may invoke, and \
                             only a function of this template its definition invokes ({invoked:?})"
                        ));
                    }
                }
                continue;
            }
            if service == "states" {
                // A function starting the next execution of a state machine of this template
                // (a run's continuation) through the Step Functions adapter; nothing else.
                let owner = owner_of(&at);
                if op != "StartExecution" || !calls(&sfn_code, op) {
                    bad.push(format!(
                        "{at}: states:{op} granted: only states:StartExecution, which \
                         shared/src/adapters/sfn.rs calls (.start_execution())"
                    ));
                }
                let builds_adapter = resource_type(t, owner) == Some(FUNCTION)
                    && t["Resources"][owner]["Metadata"]["BuildProperties"]["Binary"]
                        .as_str()
                        .is_some_and(|b| {
                            production_code_under(&[root().join("functions").join(b).join("src")])
                                .contains("StepFunctions")
                        });
                if !builds_adapter {
                    bad.push(format!(
                        "{at}: states:{op} for {owner}: only a function whose code builds the \
                         Step Functions adapter (shared::adapters::sfn::StepFunctions) starts \
                         executions"
                    ));
                }
                for r in &resources {
                    if state_machine_named(t, r).is_none() {
                        bad.push(format!(
                            "{at}: states:{op} on {r:?}, which is not the name-based ARN of a \
                             state machine of this template"
                        ));
                    }
                }
                continue;
            }
            if service == "kms" {
                // No call of our code: the services (DynamoDB, SQS, S3, Secrets Manager,
                // Lambda's poller and destinations) use the stack's key as the caller. Only on
                // that key; which actions each function needs is `kms.rs`'s to check.
                for r in &resources {
                    if !is_ref_to(r, "KmsKeyArn") || !matches!(op, "Decrypt" | "GenerateDataKey") {
                        bad.push(format!(
                            "{at}: kms:{op} on {r:?}: only kms:Decrypt and kms:GenerateDataKey, \
                             on the stack's key (!Ref KmsKeyArn)"
                        ));
                    }
                }
                continue;
            }
            if service != "dynamodb" {
                if !uses(&all_code, service, op) {
                    bad.push(format!(
                        "{at}: {service}:{op} granted, but no .{}() in shared/src or functions/",
                        snake(op)
                    ));
                }
                continue;
            }
            for r in &resources {
                let Some((table, index)) = table_arn(r) else {
                    bad.push(format!(
                        "{at}: {a:?} on {r:?}, which is not a table or index of this template"
                    ));
                    continue;
                };
                let Some(code) = adapters.get(table.as_str()) else {
                    bad.push(format!("{at}: {op} on {table}, which has no adapter"));
                    continue;
                };
                if !calls(code, op) {
                    bad.push(format!(
                        "{at}: dynamodb:{op} on {table}, but its adapter makes no .{}() call",
                        snake(op)
                    ));
                }
                if index.is_some()
                    && (!matches!(op, "Query" | "Scan") || !code.contains(".index_name("))
                {
                    bad.push(format!(
                        "{at}: dynamodb:{op} on an index of {table}, which its adapter does not query"
                    ));
                }
            }
        }
    }
    bad
}

/// The properties of the `AWS::Lambda::EventInvokeConfig` resource of function `id` (its
/// `FunctionName` a `!Ref` to it).
pub(super) fn event_invoke_config<'a>(t: &'a Value, id: &str) -> Option<&'a Value> {
    resources_of_type(t, "AWS::Lambda::EventInvokeConfig")
        .into_iter()
        .map(|(_, r)| &r["Properties"])
        .find(|p| is_ref_to(&p["FunctionName"], id))
}

/// The queue of this template a function's event invoke config sends failed invocations to.
pub(super) fn on_failure_destination(t: &Value, id: &str) -> Option<String> {
    let dest = &event_invoke_config(t, id)?["DestinationConfig"]["OnFailure"];
    queue_arn(t, &dest["Destination"])
}

/// The DynamoDB actions a function is granted: `(table, index?) → actions`.
pub(super) fn dynamodb_grants(f: &Value) -> BTreeMap<(String, Option<String>), BTreeSet<String>> {
    let mut out: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    let mut wrapper = serde_yaml::Mapping::new();
    wrapper.insert("Policies".into(), f["Properties"]["Policies"].clone());
    let fake = {
        let mut m = serde_yaml::Mapping::new();
        m.insert("Resources".into(), Value::Mapping(wrapper));
        Value::Mapping(m)
    };
    for (_, s) in statements(&fake) {
        let resources: Vec<_> = s
            .get("Resource")
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .filter_map(table_arn)
            .collect();
        for a in s.get("Action").map(strings).unwrap_or_default() {
            if let Some(op) = a.as_str().and_then(|a| a.strip_prefix("dynamodb:")) {
                for r in &resources {
                    out.entry(r.clone()).or_default().insert(op.to_owned());
                }
            }
        }
    }
    out
}

/// The SQS actions a function is granted: queue → actions.
pub(super) fn sqs_grants(t: &Value, f: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, s) in function_statements(f) {
        let queues: Vec<String> = s
            .get("Resource")
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| queue_arn(t, r))
            .collect();
        for a in s.get("Action").map(strings).unwrap_or_default() {
            if let Some(op) = a.as_str().and_then(|a| a.strip_prefix("sqs:")) {
                for q in &queues {
                    out.entry(q.clone()).or_default().insert(op.to_owned());
                }
            }
        }
    }
    out
}

/// Every action a function is granted, with its service (`sqs:SendMessage`).
pub(super) fn granted_actions(f: &Value) -> BTreeSet<String> {
    function_statements(f)
        .into_iter()
        .flat_map(|(_, s)| s.get("Action").map(strings).unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// A secret read the way `shared::adapters::secrets` does (the ARN, or `ssm:<name>`) is granted
/// once per store, each only when its parameter is set (condition `Has<Parameter>`), on exactly
/// that secret or parameter; and nothing else is granted under a condition but the stack key's
/// grant (`HasKmsKey`, checked by `kms.rs`).
pub(super) fn check_secret_grants(
    t: &Value,
    f: &Value,
    arn_param: &str,
    name_param: &str,
) -> Vec<String> {
    let mut bad = Vec::new();
    let conditional: Vec<(String, &Value)> = function_statements(f)
        .into_iter()
        .filter_map(|(c, s)| Some((c?, s)))
        .filter(|(c, _)| c != "HasKmsKey")
        .collect();
    let mut by_action: BTreeMap<&str, (String, &Value)> = BTreeMap::new();
    for (cond, s) in &conditional {
        match s["Action"].as_str() {
            Some(a) => {
                by_action.insert(a, (cond.clone(), &s["Resource"]));
            }
            None => bad.push(format!("{cond}: one action per conditional grant: {s:?}")),
        }
    }
    let want: [(&str, &str, Value); 2] = [
        (
            "secretsmanager:GetSecretValue",
            arn_param,
            yaml(&format!("!Ref {arn_param}")),
        ),
        (
            "ssm:GetParameter",
            name_param,
            yaml(&format!(
                "!Sub 'arn:${{AWS::Partition}}:ssm:${{AWS::Region}}:${{AWS::AccountId}}:parameter${{{name_param}}}'"
            )),
        ),
    ];
    for (action, param, resource) in &want {
        let cond = format!("Has{param}");
        match by_action.get(action) {
            None => bad.push(format!("{action} is not granted under {cond}")),
            Some((c, r)) => {
                if *c != cond {
                    bad.push(format!("{action} is granted under {c}, want {cond}"));
                }
                if *r != resource {
                    bad.push(format!("{action} on {r:?}, want {resource:?}"));
                }
            }
        }
        let defined = &t["Conditions"][cond.as_str()];
        if defined != &yaml(&format!("!Not [!Equals [!Ref {param}, '']]")) {
            bad.push(format!("Conditions.{cond} is {defined:?}"));
        }
    }
    if by_action.len() != want.len() || conditional.len() != want.len() {
        bad.push(format!(
            "conditional grants other than the secret's: {by_action:?}"
        ));
    }
    bad
}

/// A statement pushed onto a resource's first policy.
fn with_statement(t: &Value, id: &str, text: &str) -> Value {
    let mut broken = t.clone();
    broken["Resources"][id]["Properties"]["Policies"][0]["Statement"]
        .as_sequence_mut()
        .expect("a statement list")
        .push(yaml(text));
    broken
}

/// The S3 actions a function is granted: resource (as written) → actions, with conditions.
fn s3_statements(f: &Value) -> Vec<(BTreeSet<String>, Value, Value)> {
    function_statements(f)
        .into_iter()
        .filter_map(|(_, s)| {
            let actions: BTreeSet<String> = s
                .get("Action")
                .map(strings)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| a.as_str()?.strip_prefix("s3:").map(str::to_owned))
                .collect();
            (!actions.is_empty()).then(|| {
                (
                    actions,
                    s["Resource"].clone(),
                    s.get("Condition").cloned().unwrap_or(Value::Null),
                )
            })
        })
        .collect()
}

#[test]
fn template_iam_is_inline_statements_without_wildcards() {
    let t = template();
    assert!(
        statements(&t).len() >= 2,
        "the template has policy statements to check"
    );
    assert_eq!(check_iam(&t), Vec::<String>::new());

    let statement = |text: &str| {
        let mut broken = t.clone();
        broken["Resources"]["DeltaSyncFunction"]["Properties"]["Policies"][0]["Statement"]
            .as_sequence_mut()
            .expect("the delta function's first policy is a statement list")
            .push(yaml(text));
        check_iam(&broken)
    };
    let found =
        statement("{Effect: Allow, Action: 'dynamodb:*', Resource: !GetAtt RecordsTable.Arn}");
    assert!(
        found.iter().any(|b| b.contains("action dynamodb:*")),
        "{found:?}"
    );
    let found =
        statement("{Effect: Allow, Action: 'dynamodb:Get*', Resource: !GetAtt RecordsTable.Arn}");
    assert!(
        found.iter().any(|b| b.contains("action dynamodb:Get*")),
        "{found:?}"
    );
    let found = statement("{Effect: Allow, Action: ['sqs:SendMessage'], Resource: ['*']}");
    assert!(found.iter().any(|b| b.contains("resource *")), "{found:?}");
    // A Deny may be broad (it only takes away); a resource policy may not allow.
    let mut b = t.clone();
    let policy = "{Type: 'AWS::SQS::QueuePolicy', Properties: {Queues: [!Ref WorkQueue], \
                  PolicyDocument: {Statement: [{Effect: Deny, Principal: '*', Action: 'sqs:*', \
                  Resource: '*'}]}}}";
    b["Resources"]["P"] = yaml(policy);
    assert_eq!(check_iam(&b), Vec::<String>::new(), "a broad Deny is fine");
    b["Resources"]["P"] = yaml(&policy.replace("Deny", "Allow"));
    let found = check_iam(&b);
    assert!(
        found
            .iter()
            .any(|b| b.contains("a resource policy that allows")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|b| b.contains("action sqs:*")),
        "{found:?}"
    );
    // The alarms' publish to the email topic is the one Allow a resource policy may hold; the
    // same open to every principal, or to CloudWatch without the account condition, is not.
    let topic_policy = |f: &dyn Fn(&mut Value)| {
        let mut b = t.clone();
        f(
            &mut b["Resources"]["AlarmEmailTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                [0],
        );
        check_iam(&b)
    };
    assert_eq!(topic_policy(&|_| {}), Vec::<String>::new());
    for tamper in [
        &(|s: &mut Value| s["Principal"] = yaml("'*'")) as &dyn Fn(&mut Value),
        &|s: &mut Value| s["Condition"] = yaml("{ArnLike: {aws:SourceArn: x}}"),
        &|s: &mut Value| s["Resource"] = yaml("!Ref AlarmTopicArn"),
        &|s: &mut Value| s["Action"] = yaml("sns:Subscribe"),
    ] {
        let found = topic_policy(tamper);
        assert!(
            found
                .iter()
                .any(|b| b.contains("a resource policy that allows")),
            "{found:?}"
        );
    }
    // Under an Fn::If too.
    let found = statement(
        "!If [HasAlarmTopic, {Effect: Allow, Action: 'sns:Publish', Resource: '*'}, !Ref AWS::NoValue]",
    );
    assert!(found.iter().any(|b| b.contains("resource *")), "{found:?}");

    for policy in [
        "AmazonDynamoDBFullAccess",
        "{DynamoDBCrudPolicy: {TableName: !Ref RecordsTable}}",
    ] {
        let mut broken = t.clone();
        broken["Resources"]["DeltaSyncFunction"]["Properties"]["Policies"]
            .as_sequence_mut()
            .expect("Policies is a list")
            .push(yaml(policy));
        let found = check_iam(&broken);
        assert!(
            found.iter().any(|b| b.contains("not inline statements")),
            "{policy}: {found:?}"
        );
    }
}

#[test]
fn template_grants_only_calls_the_code_makes() {
    let t = template();
    assert_eq!(check_grants_are_used(&t), Vec::<String>::new());

    let with = |text: &str| {
        let mut broken = t.clone();
        broken["Resources"]["DeltaSyncFunction"]["Properties"]["Policies"][0]["Statement"]
            .as_sequence_mut()
            .expect("a statement list")
            .push(yaml(text));
        check_grants_are_used(&broken)
    };
    // KMS: the two actions the services use, on the stack's key only.
    let found = with("{Effect: Allow, Action: kms:Encrypt, Resource: !Ref KmsKeyArn}");
    assert!(
        found.iter().any(|b| b.contains("kms:Encrypt on")),
        "{found:?}"
    );
    let found = with(
        "{Effect: Allow, Action: kms:Decrypt, Resource: !Sub 'arn:aws:kms:${AWS::Region}:1:key/x'}",
    );
    assert!(
        found.iter().any(|b| b.contains("kms:Decrypt on")),
        "{found:?}"
    );
    // No adapter scans.
    let found = with("{Effect: Allow, Action: dynamodb:Scan, Resource: !GetAtt RecordsTable.Arn}");
    assert!(
        found
            .iter()
            .any(|b| b.contains("dynamodb:Scan on RecordsTable")),
        "{found:?}"
    );
    // The control adapter puts items, the records adapter never does: per table.
    let found =
        with("{Effect: Allow, Action: dynamodb:PutItem, Resource: !GetAtt RecordsTable.Arn}");
    assert!(
        found
            .iter()
            .any(|b| b.contains("dynamodb:PutItem on RecordsTable")),
        "{found:?}"
    );
    let found =
        with("{Effect: Allow, Action: dynamodb:PutItem, Resource: !GetAtt ControlTable.Arn}");
    assert_eq!(
        found,
        Vec::<String>::new(),
        "the control adapter does call PutItem"
    );
    // The control table has no index to query.
    let found = with(
        "{Effect: Allow, Action: dynamodb:Query, Resource: !Sub '${ControlTable.Arn}/index/*'}",
    );
    assert!(
        found.iter().any(|b| b.contains("index of ControlTable")),
        "{found:?}"
    );
    let found = with(
        "{Effect: Allow, Action: dynamodb:Query, Resource: !Sub '${RecordsTable.Arn}/index/*'}",
    );
    assert_eq!(
        found,
        Vec::<String>::new(),
        "the records adapter queries live_ids"
    );
    // A table the check cannot place.
    let found = with(
        "{Effect: Allow, Action: dynamodb:GetItem, Resource: 'arn:aws:dynamodb:us-east-1:1:table/x'}",
    );
    assert!(
        found.iter().any(|b| b.contains("not a table or index")),
        "{found:?}"
    );
    // Other services: an SDK call somewhere.
    let found =
        with("{Effect: Allow, Action: kms:Decrypt, Resource: 'arn:aws:kms:us-east-1:1:key/k'}");
    assert!(found.iter().any(|b| b.contains("kms:Decrypt")), "{found:?}");

    // SQS: a queue of this template; the poller's actions only for the mapped function and
    // queue; anything else a call of the code (SendMessageBatch counts for SendMessage).
    let grant = |id: &str, text: &str| {
        let mut broken = t.clone();
        broken["Resources"][id]["Properties"]["Policies"][0]["Statement"]
            .as_sequence_mut()
            .expect("a statement list")
            .push(yaml(text));
        check_grants_are_used(&broken)
    };
    let ingest = function_id(&t, "webhook-ingest");
    let worker = function_id(&t, "sync-worker");
    let found = grant(
        &ingest,
        "{Effect: Allow, Action: sqs:SendMessage, Resource: 'arn:aws:sqs:us-east-1:1:q'}",
    );
    assert!(
        found
            .iter()
            .any(|b| b.contains("not a queue of this template")),
        "{found:?}"
    );
    let found = grant(
        &ingest,
        "{Effect: Allow, Action: sqs:SendMessage, Resource: !GetAtt DeadLetterQueue.Arn}",
    );
    assert_eq!(
        found,
        Vec::<String>::new(),
        "the code sends (SendMessageBatch)"
    );
    for (id, text) in [
        // The poller's action, but the ingest function is no mapping's target.
        (
            &ingest,
            "{Effect: Allow, Action: sqs:GetQueueAttributes, Resource: !GetAtt WorkQueue.Arn}",
        ),
        // The worker's mapping polls the work queue, not the DLQ.
        (
            &worker,
            "{Effect: Allow, Action: sqs:GetQueueAttributes, Resource: !GetAtt DeadLetterQueue.Arn}",
        ),
        // Not the poller's, and no call.
        (
            &worker,
            "{Effect: Allow, Action: sqs:PurgeQueue, Resource: !GetAtt WorkQueue.Arn}",
        ),
    ] {
        let found = grant(id, text);
        assert!(
            found.iter().any(|b| b.contains("no event source mapping")),
            "{text}: {found:?}"
        );
    }
    let mut unmapped = t.clone();
    let esm = event_source_mappings(&t)
        .into_iter()
        .next()
        .expect("a mapping")
        .id;
    unmapped["Resources"]
        .as_mapping_mut()
        .expect("Resources")
        .remove(esm.as_str());
    let found = check_grants_are_used(&unmapped);
    assert!(
        found
            .iter()
            .any(|b| b.contains("sqs:GetQueueAttributes on WorkQueue")),
        "without the mapping the poller's grants are unused: {found:?}"
    );
}

#[test]
fn template_iam_checks_state_machines_and_s3_object_prefixes() {
    let t = template();
    let sm = state_machine_id(&t);
    let rec = function_id(&t, "reconcile");
    assert_eq!(check_iam(&t), Vec::<String>::new());
    // A SAM policy template on the state machine (LambdaInvokePolicy grants function:*).
    let mut broken = t.clone();
    broken["Resources"][sm.as_str()]["Properties"]["Policies"]
        .as_sequence_mut()
        .unwrap()
        .push(yaml(
            "{LambdaInvokePolicy: {FunctionName: !Ref ReconcileFunction}}",
        ));
    let found = check_iam(&broken);
    assert!(
        found
            .iter()
            .any(|b| b.contains(&format!("{sm}: a policy that is not inline"))),
        "{found:?}"
    );
    // Object wildcards: only under a literal prefix of a bucket of this template.
    for resource in [
        "!Sub '${SpillBucket.Arn}/*'",
        "!Sub '${SpillBucket.Arn}/reconcile*'",
        "!Sub '${SpillBucket.Arn}/re*/x/*'",
        "!Sub '${WorkQueue.Arn}/reconcile/*'",
        "'arn:aws:s3:::some-bucket/reconcile/*'",
    ] {
        let b = with_statement(
            &t,
            &rec,
            &format!("{{Effect: Allow, Action: s3:GetObject, Resource: {resource}}}"),
        );
        let found = check_iam(&b);
        assert!(
            found.iter().any(|f| f.contains("resource")),
            "{resource}: {found:?}"
        );
    }
    let b = with_statement(
        &t,
        &rec,
        "{Effect: Allow, Action: s3:GetObject, Resource: !Sub '${SpillBucket.Arn}/other/*'}",
    );
    assert_eq!(
        check_iam(&b),
        Vec::<String>::new(),
        "a literal prefix is fine for check_iam"
    );
}

#[test]
fn template_grants_trace_s3_to_its_adapter_and_invokes_to_the_definition() {
    let t = template();
    let sm = state_machine_id(&t);
    let rec = function_id(&t, "reconcile");
    let worker = function_id(&t, "sync-worker");
    assert_eq!(
        invoked_by_state_machine(&t, &sm),
        BTreeSet::from([rec.clone()]),
        "the definition invokes the reconcile function"
    );
    let found_with = |id: &str, text: &str| check_grants_are_used(&with_statement(&t, id, text));
    for (id, text, want) in [
        // No call of the S3 adapter needs it.
        (
            rec.as_str(),
            "{Effect: Allow, Action: s3:PutObjectAcl, Resource: !Sub '${SpillBucket.Arn}/reconcile/*'}",
            "s3:PutObjectAcl granted",
        ),
        // Object actions on objects, ListBucket on the bucket.
        (
            rec.as_str(),
            "{Effect: Allow, Action: s3:GetObject, Resource: !GetAtt SpillBucket.Arn}",
            "not an object prefix",
        ),
        (
            rec.as_str(),
            "{Effect: Allow, Action: s3:ListBucket, Resource: !Sub '${SpillBucket.Arn}/reconcile/*'}",
            "not the ARN",
        ),
        (
            rec.as_str(),
            "{Effect: Allow, Action: s3:GetObject, Resource: 'arn:aws:s3:::elsewhere/reconcile/x'}",
            "not an object prefix",
        ),
        // Functions invoke nothing; the state machine only what its definition invokes.
        (
            worker.as_str(),
            "{Effect: Allow, Action: lambda:InvokeFunction, Resource: !GetAtt ReconcileFunction.Arn}",
            "only a state machine may invoke",
        ),
        (
            sm.as_str(),
            "{Effect: Allow, Action: lambda:InvokeFunction, Resource: !GetAtt SyncWorkerFunction.Arn}",
            "only a state machine may invoke",
        ),
        (
            sm.as_str(),
            "{Effect: Allow, Action: lambda:UpdateFunctionCode, Resource: !GetAtt ReconcileFunction.Arn}",
            "lambda:UpdateFunctionCode",
        ),
        // Starting executions: the function that builds the Step Functions adapter, on a state
        // machine of this template by its name-based ARN; nothing else of states:.
        (
            rec.as_str(),
            "{Effect: Allow, Action: states:StartExecution, Resource: !Ref ReconcileStateMachine}",
            "not the name-based ARN",
        ),
        (
            rec.as_str(),
            "{Effect: Allow, Action: states:StartExecution, Resource: !Sub 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}-other'}",
            "not the name-based ARN",
        ),
        (
            rec.as_str(),
            "{Effect: Allow, Action: states:StopExecution, Resource: !Sub 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}-reconcile'}",
            "only states:StartExecution",
        ),
        (
            worker.as_str(),
            "{Effect: Allow, Action: states:StartExecution, Resource: !Sub 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}-reconcile'}",
            "only a function whose code builds the Step Functions adapter",
        ),
        (
            sm.as_str(),
            "{Effect: Allow, Action: states:StartExecution, Resource: !Sub 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}-reconcile'}",
            "only a function whose code builds the Step Functions adapter",
        ),
    ] {
        let found = found_with(id, text);
        assert!(found.iter().any(|b| b.contains(want)), "{text}: {found:?}");
    }
    // The substitution is what ties the grant to the definition.
    let mut broken = t.clone();
    broken["Resources"][sm.as_str()]["Properties"]["DefinitionSubstitutions"]["ReconcileFunctionArn"] =
        yaml("!GetAtt SyncWorkerFunction.Arn");
    let found = check_grants_are_used(&broken);
    assert!(
        found.iter().any(|b| b.contains("lambda:InvokeFunction")),
        "{found:?}"
    );
    // The state machine's Name is what ties the function's grant to it.
    let mut unnamed = t.clone();
    unnamed["Resources"][sm.as_str()]["Properties"]
        .as_mapping_mut()
        .expect("Properties")
        .remove("Name");
    let found = check_grants_are_used(&unnamed);
    assert!(
        found
            .iter()
            .any(|b| b.contains("states:StartExecution") && b.contains("name-based ARN")),
        "{found:?}"
    );
    // And a wildcard state machine is a wildcard.
    let found = check_iam(&with_statement(
        &t,
        &rec,
        "{Effect: Allow, Action: states:StartExecution, Resource: !Sub 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:*'}",
    ));
    assert!(found.iter().any(|b| b.contains("resource")), "{found:?}");
}

/// What a delta run calls (`shared::sync::delta::run_delta` through the DynamoDB adapter) is
/// granted: records BatchGetItem and UpdateItem (upsert_many); control GetItem (job_state), UpdateItem
/// (acquire/renew/release lease, save_cursor), PutItem (put_run).
#[test]
fn template_delta_sync_grants_cover_a_run() {
    let t = template();
    let grants = dynamodb_grants(function(&t, "delta-sync"));
    let want: [(&str, &[&str]); 2] = [
        ("RecordsTable", &["BatchGetItem", "UpdateItem"]),
        ("ControlTable", &["GetItem", "UpdateItem", "PutItem"]),
    ];
    for (table, ops) in want {
        let got = grants
            .get(&(table.to_owned(), None))
            .cloned()
            .unwrap_or_default();
        for op in ops {
            assert!(
                got.contains(*op),
                "delta-sync needs dynamodb:{op} on {table}: {grants:?}"
            );
        }
    }
    // The secret: one grant per store, each only when its parameter is set, on exactly it.
    let f = function(&t, "delta-sync");
    assert_eq!(
        check_secret_grants(&t, f, "SourceSecretArn", "SourceSecretParameter"),
        Vec::<String>::new()
    );
    // The check sees a grant on another secret, an unconditional one and a missing one.
    let id = function_id(&t, "delta-sync");
    let statements_of = |t: &mut Value| -> Vec<Value> {
        t["Resources"][id.as_str()]["Properties"]["Policies"][0]["Statement"]
            .as_sequence()
            .expect("a statement list")
            .clone()
    };
    // The statement granted under a condition (not by its place: the stack key's grant is
    // conditional too).
    let under = |list: &[Value], cond: &str| {
        list.iter()
            .position(|s| {
                matches!(intrinsic(s), Some((f, Value::Sequence(a)))
                    if f == "If" && a[0].as_str() == Some(cond))
            })
            .unwrap_or_else(|| panic!("a statement under {cond}"))
    };
    let mut broken = t.clone();
    let mut list = statements_of(&mut broken);
    let i = under(&list, "HasSourceSecretArn");
    list[i] = yaml(
        "!If [HasSourceSecretArn, {Effect: Allow, Action: secretsmanager:GetSecretValue, \
         Resource: !Ref WebhookSecretArn}, !Ref AWS::NoValue]",
    );
    broken["Resources"][id.as_str()]["Properties"]["Policies"][0]["Statement"] =
        Value::Sequence(list);
    let found = check_secret_grants(
        &broken,
        &broken["Resources"][id.as_str()],
        "SourceSecretArn",
        "SourceSecretParameter",
    );
    assert!(
        found.iter().any(|b| b.contains("WebhookSecretArn")),
        "{found:?}"
    );
    let mut broken = t.clone();
    let mut list = statements_of(&mut broken);
    let i = under(&list, "HasSourceSecretParameter");
    list.remove(i);
    broken["Resources"][id.as_str()]["Properties"]["Policies"][0]["Statement"] =
        Value::Sequence(list);
    let found = check_secret_grants(
        &broken,
        &broken["Resources"][id.as_str()],
        "SourceSecretArn",
        "SourceSecretParameter",
    );
    assert!(
        found
            .iter()
            .any(|b| b.contains("ssm:GetParameter is not granted")),
        "{found:?}"
    );
}

/// What a batch calls (`sync-worker` through the DynamoDB adapter): records BatchGetItem and
/// UpdateItem (upsert_many, soft_delete); control BatchGetItem (processed_events), PutItem
/// (complete_event) and UpdateItem (count_not_found, the rolling 404 window, and the rate
/// budget). Exactly these, the poller's SQS actions on the work queue, and the
/// source secret as the delta function reads it.
#[test]
fn template_sync_worker_grants_cover_a_batch() {
    let t = template();
    let f = function(&t, "sync-worker");
    let set = |ops: &[&str]| ops.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        dynamodb_grants(f),
        BTreeMap::from([
            (
                ("RecordsTable".to_owned(), None),
                set(&["BatchGetItem", "UpdateItem"])
            ),
            (
                ("ControlTable".to_owned(), None),
                set(&["BatchGetItem", "PutItem", "UpdateItem"])
            ),
        ])
    );
    assert_eq!(
        sqs_grants(&t, f),
        BTreeMap::from([("WorkQueue".to_owned(), set(&POLLER_ACTIONS))])
    );
    assert_eq!(
        check_secret_grants(&t, f, "SourceSecretArn", "SourceSecretParameter"),
        Vec::<String>::new()
    );
    let services: BTreeSet<String> = granted_actions(f)
        .into_iter()
        .filter_map(|a| a.split_once(':').map(|(s, _)| s.to_owned()))
        .collect();
    assert_eq!(
        services,
        set(&["dynamodb", "kms", "secretsmanager", "sqs", "ssm"]),
        "nothing beyond the tables, the queue, the secret and the stack's key (kms.rs)"
    );
}

/// What the steps call (`shared::sync::reconcile` through the adapters), exactly: records
/// Query on the live_ids index (destination), BatchGetItem (the guard's and apply's
/// `sync_times`, traced below to the adapter's call) and UpdateItem (soft_delete); control GetItem
/// (the delta job's state for a cursor rewind), UpdateItem (acquire/renew/release the lease),
/// PutItem (put_run); S3 Put/Get/DeleteObject under the spill prefix and ListBucket limited to
/// it; SendMessage on the work queue; the source secret; StartExecution (continue, through
/// `shared::adapters::sfn`) on the reconciliation state machine only, by its name-based ARN.
#[test]
fn template_reconcile_function_grants_cover_the_steps() {
    let t = template();
    let f = function(&t, "reconcile");
    let set = |ops: &[&str]| ops.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        dynamodb_grants(f),
        BTreeMap::from([
            (
                ("RecordsTable".to_owned(), None),
                set(&["BatchGetItem", "UpdateItem"])
            ),
            (
                ("RecordsTable".to_owned(), Some("live_ids".to_owned())),
                set(&["Query"])
            ),
            (
                ("ControlTable".to_owned(), None),
                set(&["GetItem", "UpdateItem", "PutItem"])
            ),
        ])
    );
    let index = schema::TABLES
        .iter()
        .flat_map(|s| s.gsis.iter())
        .map(|g| g.name)
        .collect::<Vec<_>>();
    assert!(index.contains(&"live_ids"), "the schema's index: {index:?}");
    // The BatchGetItem grant, traced to its call: the guard and apply read the candidates' sync
    // times through the port, whose DynamoDB adapter reads them with a strongly consistent
    // BatchGetItem.
    let steps = production_code_under(&[root().join("shared/src/sync/reconcile")]);
    assert!(steps.contains(".sync_times("), "the steps read sync times");
    let records = production_code(&root().join("shared/src/adapters/dynamodb/records.rs"));
    let body = |name: &str| {
        let start = records
            .find(&format!("async fn {name}("))
            .unwrap_or_else(|| panic!("records adapter: no fn {name}"));
        let rest = &records[start..];
        let end = rest[1..].find("async fn ").map_or(rest.len(), |e| e + 1);
        rest[..end].to_owned()
    };
    assert!(
        body("sync_times").contains(".batch_get("),
        "sync_times reads by batch_get"
    );
    let batch_get = body("batch_get");
    assert!(
        calls(&batch_get, "BatchGetItem") && batch_get.contains("Read::Strong"),
        "batch_get: a strongly consistent BatchGetItem"
    );

    let prefix = format!(
        "{}/",
        shared::sync::reconcile::ReconcileOptions::default()
            .spill_prefix
            .trim_end_matches('/')
    );
    let s3 = s3_statements(f);
    assert_eq!(s3.len(), 2, "{s3:?}");
    let objects = s3
        .iter()
        .find(|(a, _, _)| !a.contains("ListBucket"))
        .expect("object grants");
    assert_eq!(objects.0, set(&["PutObject", "GetObject", "DeleteObject"]));
    assert_eq!(
        bucket_objects(&t, &objects.1),
        Some(("SpillBucket".to_owned(), prefix.clone())),
        "objects under the steps' spill prefix only"
    );
    assert_eq!(objects.2, Value::Null);
    let list = s3
        .iter()
        .find(|(a, _, _)| a.contains("ListBucket"))
        .expect("a ListBucket grant");
    assert_eq!(list.0, set(&["ListBucket"]));
    assert_eq!(bucket_arn(&t, &list.1).as_deref(), Some("SpillBucket"));
    assert_eq!(
        list.2,
        yaml(&format!("{{StringLike: {{'s3:prefix': '{prefix}*'}}}}")),
        "listing only under the spill prefix"
    );

    assert_eq!(
        sqs_grants(&t, f),
        BTreeMap::from([("WorkQueue".to_owned(), set(&["SendMessage"]))])
    );
    assert_eq!(
        check_secret_grants(&t, f, "SourceSecretArn", "SourceSecretParameter"),
        Vec::<String>::new()
    );
    let services: BTreeSet<String> = granted_actions(f)
        .into_iter()
        .filter_map(|a| a.split_once(':').map(|(s, _)| s.to_owned()))
        .collect();
    assert_eq!(
        services,
        set(&[
            "dynamodb",
            "kms",
            "s3",
            "secretsmanager",
            "sqs",
            "ssm",
            "states"
        ]),
    );
    // states: exactly StartExecution on the reconciliation state machine (a long listing's
    // continuation, shared::adapters::sfn::StepFunctions::start_execution); approvals are sent
    // by the operator (syncctl), not the function.
    let sm = state_machine_id(&t);
    let states: Vec<(BTreeSet<String>, Value)> = function_statements(f)
        .into_iter()
        .filter_map(|(cond, s)| {
            let actions: BTreeSet<String> = s
                .get("Action")
                .map(strings)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| a.as_str()?.strip_prefix("states:").map(str::to_owned))
                .collect();
            (!actions.is_empty()).then(|| {
                assert_eq!(cond, None, "unconditional");
                (actions, s["Resource"].clone())
            })
        })
        .collect();
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].0, set(&["StartExecution"]));
    assert_eq!(
        states[0].1,
        yaml(
            "!Sub 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}-reconcile'"
        ),
        "one resource, no wildcard"
    );
    assert_eq!(state_machine_named(&t, &states[0].1), Some(sm.clone()));
    assert_eq!(
        t["Resources"][sm.as_str()]["Properties"]["Name"],
        yaml("!Sub '${AWS::StackName}-reconcile'")
    );
    let sfn_code = production_code(&root().join("shared/src/adapters/sfn.rs"));
    assert!(calls(&sfn_code, "StartExecution"), "traced to the adapter");
    let main = production_code_under(&[root().join("functions/reconcile/src")]);
    assert!(
        main.contains("StepFunctions::from_sdk"),
        "the function gives the continue step the adapter"
    );
    // No circular reference: the function's properties name the state machine by name only.
    let text = serde_yaml::to_string(f).unwrap();
    assert!(
        !text.contains(sm.as_str()),
        "the function does not reference {sm}"
    );
}
