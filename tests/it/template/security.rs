//! The template's security settings, each checked with a broken copy it must catch:
//! - TLS only: every bucket and every queue of the template has a resource policy that denies
//!   any request over plain HTTP (`aws:SecureTransport` false), and those policies do nothing
//!   else (they allow nothing and deny nothing a TLS caller does);
//! - the webhook API writes access logs to a log group of this template with a retention, in a
//!   JSON format made only of request metadata (no header, query string, path or body);
//! - the delta function's asynchronous invocations are never retried (a retried 15-minute run
//!   would overlap the next scheduled one) and a failed one goes to an on-failure queue of its
//!   own, which its role may send to;
//! - the worker's and the ingest's grants on the control table are limited with
//!   `dynamodb:LeadingKeys` to exactly the key prefixes their code builds, traced through the
//!   `ControlStore` methods they call into `shared/src/adapters/dynamodb/control.rs`;
//! - every checkov suppression sits inside its resource with a reason, and
//!   `scripts/check-template` runs checkov with no blanket skip.

use super::cfn::*;
use super::code::*;
use super::iam::{event_invoke_config, on_failure_destination};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

const BUCKET_POLICY: &str = "AWS::S3::BucketPolicy";
const QUEUE_POLICY: &str = "AWS::SQS::QueuePolicy";
const LOG_GROUP: &str = "AWS::Logs::LogGroup";
const HTTP_API: &str = "AWS::Serverless::HttpApi";

/// The statements of a resource policy's document.
fn policy_statements(r: &Value) -> Vec<&Value> {
    let doc = &r["Properties"]["PolicyDocument"];
    doc.get("Statement")
        .map(strings)
        .unwrap_or_default()
        .into_iter()
        .flat_map(alternatives)
        .collect()
}

/// Denies plain HTTP to everyone: Effect Deny, Principal `*`, every action of the service,
/// condition `Bool: {aws:SecureTransport: false}`. The resources are checked by the caller.
fn denies_plain_http(s: &Value, service: &str) -> bool {
    let everyone = match &s["Principal"] {
        Value::String(p) => p == "*",
        p => strings(&p["AWS"]).iter().any(|a| a.as_str() == Some("*")),
    };
    let every_action = s
        .get("Action")
        .map(strings)
        .unwrap_or_default()
        .iter()
        .any(|a| matches!(a.as_str(), Some(x) if x == "*" || x == format!("{service}:*")));
    let condition = s.get("Condition").and_then(Value::as_mapping);
    let insecure = condition.is_some_and(|c| {
        c.len() == 1
            && c.get("Bool").and_then(Value::as_mapping).is_some_and(|b| {
                let v = b.get("aws:SecureTransport");
                b.len() == 1
                    && (matches!(v, Some(Value::Bool(false)))
                        || v.and_then(Value::as_str) == Some("false"))
            })
    });
    s["Effect"].as_str() == Some("Deny") && everyone && every_action && insecure
}

/// Every bucket and queue of the template denies plain HTTP, with resource policies that do
/// nothing else.
fn check_tls_only(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let bucket_policies = resources_of_type(t, BUCKET_POLICY);
    let queue_policies = resources_of_type(t, QUEUE_POLICY);
    // A bucket: a policy on it (`Bucket: !Ref B`) denying plain HTTP on the bucket and its
    // objects.
    for (b, _) in resources_of_type(t, BUCKET) {
        let on_it: Vec<&Value> = bucket_policies
            .iter()
            .filter(|(_, p)| is_ref_to(&p["Properties"]["Bucket"], &b))
            .map(|(_, p)| *p)
            .collect();
        let objects = yaml(&format!("!Sub '${{{b}.Arn}}/*'"));
        let covered = on_it.iter().flat_map(|p| policy_statements(p)).any(|s| {
            let resources = s.get("Resource").map(strings).unwrap_or_default();
            denies_plain_http(s, "s3")
                && resources
                    .iter()
                    .any(|r| bucket_arn(t, r).as_deref() == Some(b.as_str()))
                && resources.iter().any(|r| **r == objects)
        });
        if !covered {
            bad.push(format!(
                "{b}: no bucket policy denies plain HTTP (aws:SecureTransport false) on the \
                 bucket and its objects"
            ));
        }
    }
    // A queue: a policy listing it (`Queues: [!Ref Q]`) denying plain HTTP on its ARN.
    for (q, _) in resources_of_type(t, QUEUE) {
        let on_it: Vec<&Value> = queue_policies
            .iter()
            .filter(|(_, p)| {
                p["Properties"]
                    .get("Queues")
                    .map(strings)
                    .unwrap_or_default()
                    .iter()
                    .any(|v| is_ref_to(v, &q))
            })
            .map(|(_, p)| *p)
            .collect();
        let covered = on_it.iter().flat_map(|p| policy_statements(p)).any(|s| {
            denies_plain_http(s, "sqs")
                && s.get("Resource")
                    .map(strings)
                    .unwrap_or_default()
                    .iter()
                    .any(|r| queue_arn(t, r).as_deref() == Some(q.as_str()))
        });
        if !covered {
            bad.push(format!(
                "{q}: no queue policy denies plain HTTP (aws:SecureTransport false) on it"
            ));
        }
    }
    // Nothing else: a resource policy here only denies plain HTTP, so it can break no caller
    // that uses TLS (the SDK, Lambda's poller and destinations, SQS redrive) and grants nothing.
    for (id, p) in bucket_policies.iter().chain(&queue_policies) {
        let service = if p["Type"].as_str() == Some(BUCKET_POLICY) {
            "s3"
        } else {
            "sqs"
        };
        for s in policy_statements(p) {
            if !denies_plain_http(s, service) {
                bad.push(format!(
                    "{id}: a statement other than the plain-HTTP deny: {s:?}"
                ));
            }
        }
    }
    bad
}

/// The access-log variables of an HTTP API that are request metadata: no header
/// (`$request.header.*`: the signature), no query string, no path, no body, no authorizer
/// claims.
const METADATA_VARIABLES: [&str; 20] = [
    "requestId",
    "extendedRequestId",
    "requestTime",
    "requestTimeEpoch",
    "httpMethod",
    "routeKey",
    "status",
    "protocol",
    "responseLength",
    "responseLatency",
    "integrationStatus",
    "integrationLatency",
    "integrationErrorMessage",
    "error.message",
    "error.responseType",
    "identity.sourceIp",
    "identity.userAgent",
    "stage",
    "apiId",
    "domainName",
];

/// Every HTTP API logs each request, as JSON of request metadata only, to a log group of this
/// template that expires its logs.
fn check_access_logs(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let apis = resources_of_type(t, HTTP_API);
    if apis.is_empty() {
        bad.push("no HTTP API".into());
    }
    for (id, api) in apis {
        let Some(settings) = api["Properties"].get("AccessLogSettings") else {
            bad.push(format!("{id}: no AccessLogSettings"));
            continue;
        };
        match ref_or_arn_of(&settings["DestinationArn"]) {
            Some(g) if resource_type(t, &g) == Some(LOG_GROUP) => {
                let retention = &t["Resources"][g.as_str()]["Properties"]["RetentionInDays"];
                if retention.is_null() {
                    bad.push(format!("{g}: no RetentionInDays (logs kept for ever)"));
                }
            }
            _ => bad.push(format!(
                "{id}: DestinationArn {:?} is not a log group of this template",
                settings["DestinationArn"]
            )),
        }
        let Some(format) = settings["Format"].as_str().filter(|_| {
            // A plain string: an intrinsic here would hide what is logged.
            intrinsic(&settings["Format"]).is_none()
        }) else {
            bad.push(format!("{id}: Format is not a literal string"));
            continue;
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(format) else {
            bad.push(format!("{id}: Format is not a JSON object: {format}"));
            continue;
        };
        let mut names = BTreeSet::new();
        for (key, v) in &fields {
            let var = v
                .as_str()
                .and_then(|s| s.strip_prefix("$context."))
                .filter(|s| METADATA_VARIABLES.contains(s));
            match var {
                Some(var) => {
                    names.insert(var);
                }
                None => bad.push(format!(
                    "{id}: access-log field {key:?} is {v}, not one request-metadata variable \
                     ($context.<one of {METADATA_VARIABLES:?}>)"
                )),
            }
        }
        for needed in ["requestId", "status", "routeKey"] {
            if !names.contains(needed) {
                bad.push(format!("{id}: the access log lacks $context.{needed}"));
            }
        }
    }
    bad
}

/// The delta function: no retries of an asynchronous invocation, failures to a queue of their
/// own that its role may send to.
fn check_delta_invoke_config(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let id = function_id(t, "delta-sync");
    let f = function(t, "delta-sync");
    // SAM's own property needs a Type under OnFailure (its translator refuses one without),
    // and with a Type SAM adds a policy of its own: the resource AWS::Lambda::EventInvokeConfig
    // instead, with the grant in the function's statements.
    if f["Properties"].get("EventInvokeConfig").is_some() {
        bad.push(
            "DeltaSync: the function's EventInvokeConfig property (SAM needs a Type under \
             OnFailure there and then adds a policy of its own): use an \
             AWS::Lambda::EventInvokeConfig resource"
                .into(),
        );
    }
    let null = Value::Null;
    let config = event_invoke_config(t, &id).unwrap_or(&null);
    if config["Qualifier"].as_str() != Some("$LATEST") {
        bad.push(format!(
            "DeltaSync: the event invoke config's Qualifier is {:?}, want $LATEST (the schedule \
             invokes the unqualified function)",
            config["Qualifier"]
        ));
    }
    if config["MaximumRetryAttempts"].as_i64() != Some(0) {
        bad.push(format!(
            "DeltaSync: EventInvokeConfig.MaximumRetryAttempts is {:?}, want 0 (a retried run \
             overlaps the next scheduled one)",
            config["MaximumRetryAttempts"]
        ));
    }
    let on_failure = &config["DestinationConfig"]["OnFailure"];
    let Some(q) = on_failure_destination(t, &id) else {
        bad.push(format!(
            "DeltaSync: no on-failure destination on a queue of this template: {on_failure:?}"
        ));
        return bad;
    };
    // Its own queue: an invocation record is no work message (the worker would fail it), and
    // replaying the DLQ into the work queue must not carry them.
    let polled = esm_targets(t).iter().any(|(_, queue)| *queue == q);
    let redrive_target = resources_of_type(t, QUEUE).iter().any(|(_, other)| {
        queue_arn(
            t,
            &other["Properties"]["RedrivePolicy"]["deadLetterTargetArn"],
        )
        .as_deref()
            == Some(q.as_str())
    });
    if polled || redrive_target {
        bad.push(format!(
            "{q}: the delta function's failures share a queue with the work (polled: {polled}, \
             a dead-letter queue: {redrive_target})"
        ));
    }
    let sends = function_statements(f).into_iter().any(|(cond, s)| {
        cond.is_none()
            && s["Effect"].as_str() == Some("Allow")
            && strings(&s["Action"])
                .iter()
                .any(|a| a.as_str() == Some("sqs:SendMessage"))
            && strings(&s["Resource"])
                .iter()
                .any(|r| queue_arn(t, r).as_deref() == Some(q.as_str()))
    });
    if !sends {
        bad.push(format!(
            "DeltaSync: sqs:SendMessage on {q} is not granted (Lambda sends the record with the \
             function's role)"
        ));
    }
    let retention = t["Resources"][q.as_str()]["Properties"]["MessageRetentionPeriod"].as_i64();
    if retention != Some(14 * 24 * 3600) {
        bad.push(format!(
            "{q}: MessageRetentionPeriod {retention:?}, want 14 days"
        ));
    }
    bad
}

/// The logical ID of the control table (the table whose adapter is `control.rs`).
fn control_table() -> String {
    table_adapters()
        .into_iter()
        .find(|(_, path)| path.ends_with("control.rs"))
        .map(|(id, _)| id.to_owned())
        .expect("a table served by control.rs")
}

/// A statement's `ForAllValues:StringLike: {dynamodb:LeadingKeys: [...]}` prefixes (each
/// `<literal>*`), or why it has none.
fn leading_key_prefixes(s: &Value) -> Result<BTreeSet<String>, String> {
    let Some(condition) = s.get("Condition").and_then(Value::as_mapping) else {
        return Err("no Condition".into());
    };
    if condition.len() != 1 {
        return Err(format!(
            "a Condition other than the key prefixes: {condition:?}"
        ));
    }
    let Some(like) = condition
        .get("ForAllValues:StringLike")
        .and_then(Value::as_mapping)
    else {
        return Err(format!(
            "the Condition is not ForAllValues:StringLike (ForAnyValue or a bare StringLike \
             would let a request through on any one key): {condition:?}"
        ));
    };
    let Some(keys) = like.get("dynamodb:LeadingKeys").filter(|_| like.len() == 1) else {
        return Err(format!("not exactly dynamodb:LeadingKeys: {like:?}"));
    };
    let mut out = BTreeSet::new();
    for k in strings(keys) {
        let literal = k
            .as_str()
            .and_then(|k| k.strip_suffix('*'))
            .filter(|p| !p.is_empty() && !p.contains(['*', '?', '$']));
        match literal {
            Some(p) => {
                out.insert(p.to_owned());
            }
            None => return Err(format!("{k:?} is not <literal prefix>*")),
        }
    }
    Ok(out)
}

/// Each of a function's grants on the control table carries `dynamodb:LeadingKeys`, and the
/// prefixes cover exactly what the code needs (`needed`: (operation, prefix) pairs): every
/// prefix granted is one the code builds for an operation of that statement, and every pair
/// the code needs is granted.
fn check_leading_keys(t: &Value, binary: &str, needed: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut bad = Vec::new();
    let table = control_table();
    let f = function(t, binary);
    let mut granted: BTreeSet<(String, String)> = BTreeSet::new();
    for (cond, s) in function_statements(f) {
        let on_table = s
            .get("Resource")
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .any(|r| table_arn(r).is_some_and(|(id, _)| id == table));
        let ops: BTreeSet<String> = s
            .get("Action")
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| a.as_str()?.strip_prefix("dynamodb:").map(str::to_owned))
            .collect();
        if !on_table || ops.is_empty() || s["Effect"].as_str() != Some("Allow") {
            continue;
        }
        let sid = s["Sid"].as_str().unwrap_or("?");
        if needed.is_empty() {
            bad.push(format!(
                "{binary}: {sid} grants {ops:?} on {table} ({cond:?}), but its code touches no \
                 control key"
            ));
            continue;
        }
        match leading_key_prefixes(s) {
            Err(why) => bad.push(format!(
                "{binary}: {sid} on {table} is not limited to key prefixes: {why}"
            )),
            Ok(prefixes) => {
                for p in &prefixes {
                    if !ops
                        .iter()
                        .any(|op| needed.contains(&(op.clone(), p.clone())))
                    {
                        bad.push(format!(
                            "{binary}: {sid} allows keys {p}* for {ops:?}, which its code never \
                             builds for those operations (it builds {needed:?})"
                        ));
                    }
                    for op in &ops {
                        granted.insert((op.clone(), p.clone()));
                    }
                }
            }
        }
    }
    for (op, p) in needed {
        if !granted.contains(&(op.clone(), p.clone())) {
            bad.push(format!(
                "{binary}: its code calls {op} on {table} keys {p}..., but no statement grants \
                 dynamodb:{op} with LeadingKeys {p}*"
            ));
        }
    }
    bad
}

/// The checkov suppressions of a template's text: `# checkov:skip=CKV_<id>: <reason>` inside a
/// resource of `Resources` (checkov reads a comment within the resource's lines, not one above
/// its logical ID), each with a reason of a few words, and no check skipped twice.
fn check_suppressions(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut section = String::new();
    let mut resource: Option<String> = None;
    let mut skipped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if !trimmed.starts_with('#') && !trimmed.is_empty() {
            if indent == 0 {
                section = trimmed.trim_end_matches(':').to_owned();
                resource = None;
            } else if indent == 2 && section == "Resources" {
                resource = Some(trimmed.trim_end_matches(':').to_owned());
            }
        }
        let Some(at) = line.find("checkov:skip=") else {
            continue;
        };
        let Some(res) = resource
            .clone()
            .filter(|_| section == "Resources" && indent >= 4)
        else {
            bad.push(format!(
                "line {n}: a checkov suppression outside a resource's lines (checkov ignores it \
                 there): {trimmed}"
            ));
            continue;
        };
        if !trimmed.starts_with("# checkov:skip=") {
            bad.push(format!("line {n}: not a comment of its own: {trimmed}"));
            continue;
        }
        let rest = &line[at + "checkov:skip=".len()..];
        let (id, reason) = rest.split_once(':').unwrap_or((rest, ""));
        let id_ok = id.starts_with("CKV_")
            && id[4..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !id_ok {
            bad.push(format!("line {n}: {id:?} is not a checkov check ID"));
        }
        let words = reason.split_whitespace().count();
        if words < 5 {
            bad.push(format!(
                "line {n}: {res} skips {id} without a reason (want `: <why>`, a few words)"
            ));
        }
        if !skipped
            .entry(res.clone())
            .or_default()
            .insert(id.to_owned())
        {
            bad.push(format!("line {n}: {res} skips {id} twice"));
        }
    }
    bad
}

/// `scripts/check-template` runs checkov on the templates it checks, offline, and skips no
/// check from the command line (suppressions sit at their resources), nor softens failures.
fn check_checkov_invocation(script: &str, requirements: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let runs: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("\"$checkov\""))
        .collect();
    if runs.len() != 1 {
        bad.push(format!("want one checkov run, found {runs:?}"));
    }
    for run in &runs {
        for needed in [
            "--framework cloudformation",
            "--skip-download",
            "\"${templates[@]}\"",
        ] {
            if !run.contains(needed) {
                bad.push(format!("the checkov run lacks {needed}: {run}"));
            }
        }
        for banned in [
            "--skip-check",
            "--soft-fail",
            "--check ",
            "-c ",
            "--baseline",
        ] {
            if run.contains(banned) {
                bad.push(format!("the checkov run has {banned}: {run}"));
            }
        }
    }
    if !requirements
        .lines()
        .any(|l| l.starts_with("checkov==") && l.len() > "checkov==".len())
    {
        bad.push("scripts/requirements-checkov.txt pins no checkov==<version>".into());
    }
    bad
}

/// A copy of the template with a resource removed.
fn without(t: &Value, id: &str) -> Value {
    let mut b = t.clone();
    b["Resources"]
        .as_mapping_mut()
        .expect("Resources")
        .remove(id)
        .unwrap_or_else(|| panic!("{id} is a resource"));
    b
}

fn expect(found: Vec<String>, what: &str) {
    assert!(found.iter().any(|b| b.contains(what)), "{what}: {found:?}");
}

#[test]
fn template_denies_plain_http_on_every_bucket_and_queue() {
    let t = template();
    assert_eq!(check_tls_only(&t), Vec::<String>::new());
    let queues: BTreeSet<String> = resources_of_type(&t, QUEUE)
        .into_iter()
        .map(|(q, _)| q)
        .collect();
    for q in ["WorkQueue", "DeadLetterQueue"] {
        assert!(queues.contains(q), "{q} is checked: {queues:?}");
    }
    assert!(resource_type(&t, "SpillBucket") == Some(BUCKET));

    // Negative controls: each protection removed or weakened.
    expect(
        check_tls_only(&without(&t, "SpillBucketPolicy")),
        "SpillBucket: no bucket policy",
    );
    expect(
        check_tls_only(&without(&t, "WorkQueuePolicy")),
        "WorkQueue: no queue policy",
    );
    expect(
        check_tls_only(&without(&t, "DeadLetterQueuePolicy")),
        "DeadLetterQueue: no queue policy",
    );
    let edit = |id: &str, path: &[&str], v: &str| {
        let mut b = t.clone();
        let mut at = &mut b["Resources"][id]["Properties"]["PolicyDocument"]["Statement"][0];
        for key in path {
            at = &mut at[*key];
        }
        *at = yaml(v);
        check_tls_only(&b)
    };
    // The condition the other way round denies TLS callers: caught twice over.
    let found = edit(
        "SpillBucketPolicy",
        &["Condition"],
        "{Bool: {'aws:SecureTransport': 'true'}}",
    );
    expect(
        found.clone(),
        "SpillBucket: no bucket policy denies plain HTTP",
    );
    expect(
        found,
        "SpillBucketPolicy: a statement other than the plain-HTTP deny",
    );
    // The bucket but not its objects.
    expect(
        edit(
            "SpillBucketPolicy",
            &["Resource"],
            "!GetAtt SpillBucket.Arn",
        ),
        "on the bucket and its objects",
    );
    // One action, not all of them.
    expect(
        edit("WorkQueuePolicy", &["Action"], "sqs:SendMessage"),
        "WorkQueue: no queue policy denies plain HTTP",
    );
    // Only some principals.
    expect(
        edit(
            "DeadLetterQueuePolicy",
            &["Principal"],
            "{AWS: !Ref AWS::AccountId}",
        ),
        "DeadLetterQueue: no queue policy denies plain HTTP",
    );
    // The policy of one queue on another's ARN.
    expect(
        edit(
            "WorkQueuePolicy",
            &["Resource"],
            "!GetAtt DeadLetterQueue.Arn",
        ),
        "WorkQueue: no queue policy denies plain HTTP",
    );
    // An Allow slipped into a resource policy.
    let mut b = t.clone();
    b["Resources"]["WorkQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_sequence_mut()
        .unwrap()
        .push(yaml(
            "{Effect: Allow, Principal: '*', Action: sqs:SendMessage, Resource: !GetAtt WorkQueue.Arn}",
        ));
    expect(
        check_tls_only(&b),
        "WorkQueuePolicy: a statement other than",
    );
    // A new queue without a policy.
    let mut b = t.clone();
    b["Resources"].as_mapping_mut().unwrap().insert(
        "Another".into(),
        yaml("{Type: 'AWS::SQS::Queue', Properties: {SqsManagedSseEnabled: true}}"),
    );
    expect(check_tls_only(&b), "Another: no queue policy");
}

#[test]
fn template_webhook_api_writes_metadata_only_access_logs() {
    let t = template();
    assert_eq!(check_access_logs(&t), Vec::<String>::new());
    let api = "WebhookApi";
    let settings = &t["Resources"][api]["Properties"]["AccessLogSettings"];
    let group = ref_or_arn_of(&settings["DestinationArn"]).expect("a log group");
    assert!(
        is_ref_to(
            &t["Resources"][group.as_str()]["Properties"]["RetentionInDays"],
            "LogRetentionDays"
        ),
        "the access logs expire with the functions' logs"
    );
    // Its name sits under /aws/vendedlogs/ (CloudWatch Logs' resource policy stays small).
    let name = serde_yaml::to_string(&t["Resources"][group.as_str()]["Properties"]["LogGroupName"])
        .unwrap();
    assert!(name.contains("/aws/vendedlogs/"), "{name}");
    // The operator finds it among the outputs.
    assert!(
        t["Outputs"]
            .as_mapping()
            .unwrap()
            .values()
            .any(|o| is_ref_to(&o["Value"], &group)),
        "{group} is an output"
    );

    // Negative controls.
    let mut b = t.clone();
    b["Resources"][api]["Properties"]
        .as_mapping_mut()
        .unwrap()
        .remove("AccessLogSettings");
    expect(check_access_logs(&b), "WebhookApi: no AccessLogSettings");
    let with_format = |format: &str| {
        let mut b = t.clone();
        b["Resources"][api]["Properties"]["AccessLogSettings"]["Format"] =
            Value::String(format.to_owned());
        check_access_logs(&b)
    };
    // The signature header, the body, the path (which may carry anything), authorizer claims.
    for (field, var) in [
        ("sig", "$request.header.X-PCO-Webhooks-Authenticity"),
        ("body", "$request.body"),
        ("path", "$context.path"),
        ("query", "$request.querystring.token"),
        ("claims", "$context.authorizer.claims.sub"),
        ("two", "$context.requestId $context.path"),
    ] {
        let format = format!(
            r#"{{"requestId":"$context.requestId","status":"$context.status","routeKey":"$context.routeKey","{field}":"{var}"}}"#
        );
        expect(
            with_format(&format),
            &format!("access-log field \"{field}\""),
        );
    }
    // Not JSON (the Common Log Format).
    expect(
        with_format(
            "$context.identity.sourceIp - - [$context.requestTime] \"$context.httpMethod $context.routeKey $context.protocol\" $context.status",
        ),
        "not a JSON object",
    );
    expect(
        with_format(r#"{"status":"$context.status","routeKey":"$context.routeKey"}"#),
        "lacks $context.requestId",
    );
    let mut b = t.clone();
    b["Resources"][group.as_str()]["Properties"]
        .as_mapping_mut()
        .unwrap()
        .remove("RetentionInDays");
    expect(check_access_logs(&b), "no RetentionInDays");
    let mut b = t.clone();
    b["Resources"][api]["Properties"]["AccessLogSettings"]["DestinationArn"] =
        yaml("'arn:aws:logs:us-east-1:123456789012:log-group:elsewhere'");
    expect(check_access_logs(&b), "not a log group of this template");
}

#[test]
fn template_delta_function_is_not_retried_and_records_failures() {
    let t = template();
    assert_eq!(check_delta_invoke_config(&t), Vec::<String>::new());
    assert_eq!(
        on_failure_destination(&t, &function_id(&t, "delta-sync")).as_deref(),
        Some("DeltaFailureQueue")
    );
    // The operator finds it among the outputs.
    assert!(is_ref_to(
        &t["Outputs"]["DeltaFailureQueueUrl"]["Value"],
        "DeltaFailureQueue"
    ));

    // Negative controls.
    let id = function_id(&t, "delta-sync");
    let (config_id, _) = resources_of_type(&t, "AWS::Lambda::EventInvokeConfig")
        .into_iter()
        .find(|(_, r)| is_ref_to(&r["Properties"]["FunctionName"], &id))
        .expect("the delta function's event invoke config");
    let edit = |e: &dyn Fn(&mut Value)| {
        let mut b = t.clone();
        e(&mut b["Resources"][config_id.as_str()]["Properties"]);
        check_delta_invoke_config(&b)
    };
    let edit_function = |e: &dyn Fn(&mut Value)| {
        let mut b = t.clone();
        e(&mut b["Resources"][id.as_str()]["Properties"]);
        check_delta_invoke_config(&b)
    };
    expect(
        edit(&|p| p["FunctionName"] = yaml("!Ref SyncWorkerFunction")),
        "MaximumRetryAttempts is Null",
    );
    expect(
        edit(&|p| p["MaximumRetryAttempts"] = yaml("2")),
        "MaximumRetryAttempts is Number(2)",
    );
    expect(
        edit(&|p| p["Qualifier"] = yaml("live")),
        "Qualifier is String(\"live\")",
    );
    expect(
        edit(&|p| {
            p.as_mapping_mut().unwrap().remove("DestinationConfig");
        }),
        "no on-failure destination",
    );
    // SAM's property, as the template had it before the rehearsal found SAM refuses it.
    expect(
        edit_function(&|p| {
            p["EventInvokeConfig"] = yaml(
                "{MaximumRetryAttempts: 0, DestinationConfig: {OnFailure: {Destination: \
                 !GetAtt DeltaFailureQueue.Arn}}}",
            )
        }),
        "use an AWS::Lambda::EventInvokeConfig resource",
    );
    // The worker's dead-letter queue (replayed into the work queue) is not the place.
    expect(
        edit(&|p| {
            p["DestinationConfig"]["OnFailure"]["Destination"] = yaml("!GetAtt DeadLetterQueue.Arn")
        }),
        "share a queue with the work",
    );
    expect(
        edit_function(&|p| {
            let list = p["Policies"][0]["Statement"].as_sequence_mut().unwrap();
            list.retain(|s| s["Sid"].as_str() != Some("SendFailedInvocations"));
        }),
        "sqs:SendMessage on DeltaFailureQueue is not granted",
    );
}

/// The worker builds `event#` keys (the batch's read, complete) and its rolling 404 window's
/// `notfound#` key through the control adapter; the ingest touches the control table not at
/// all. The template grants each exactly that.
#[test]
fn template_control_grants_are_limited_to_the_keys_the_code_builds() {
    let t = template();
    let worker = control_keys("sync-worker").expect("the worker's control calls are traced");
    for pair in [
        ("BatchGetItem", "event#"),
        ("PutItem", "event#"),
        ("UpdateItem", "notfound#"),
        ("UpdateItem", "budget#"),
    ] {
        assert!(
            worker.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "the webhook dedup's, the 404 window's and the rate budget's keys are traced: \
             {worker:?}"
        );
    }
    let ingest = control_keys("webhook-ingest").expect("traced");
    assert_eq!(ingest, BTreeSet::new(), "the ingest touches no control key");
    // The tracing tells functions apart: a delta run builds job and run-history keys, no
    // event keys.
    let delta = control_keys("delta-sync").expect("traced");
    let delta_prefixes: BTreeSet<&str> = delta.iter().map(|(_, p)| p.as_str()).collect();
    assert!(
        delta_prefixes.contains("job#") && delta_prefixes.contains("runs#"),
        "{delta:?}"
    );
    assert!(!delta_prefixes.contains("event#"), "{delta:?}");

    assert_eq!(
        check_leading_keys(&t, "sync-worker", &worker),
        Vec::<String>::new()
    );
    assert_eq!(
        check_leading_keys(&t, "webhook-ingest", &ingest),
        Vec::<String>::new()
    );

    // Negative controls.
    let worker_id = function_id(&t, "sync-worker");
    let ingest_id = function_id(&t, "webhook-ingest");
    let edit_dedup = |e: &dyn Fn(&mut Value)| {
        let mut b = t.clone();
        for s in b["Resources"][worker_id.as_str()]["Properties"]["Policies"][0]["Statement"]
            .as_sequence_mut()
            .unwrap()
        {
            if s["Sid"].as_str() == Some("EventDedup") {
                e(s);
            }
        }
        check_leading_keys(&b, "sync-worker", &worker)
    };
    expect(
        edit_dedup(&|s| {
            s.as_mapping_mut().unwrap().remove("Condition");
        }),
        "EventDedup on ControlTable is not limited to key prefixes: no Condition",
    );
    expect(
        edit_dedup(&|s| {
            s["Condition"] = yaml("{'ForAllValues:StringLike': {'dynamodb:LeadingKeys': ['*']}}")
        }),
        "is not <literal prefix>*",
    );
    expect(
        edit_dedup(&|s| {
            s["Condition"] =
                yaml("{'ForAnyValue:StringLike': {'dynamodb:LeadingKeys': ['event#*']}}")
        }),
        "is not ForAllValues:StringLike",
    );
    // A prefix the worker never builds: the leases and cursors.
    expect(
        edit_dedup(&|s| {
            s["Condition"] =
                yaml("{'ForAllValues:StringLike': {'dynamodb:LeadingKeys': ['event#*', 'job#*']}}")
        }),
        "allows keys job#*",
    );
    // A prefix the code builds that the template does not grant: the rolling 404 window's
    // statement removed.
    let mut b = t.clone();
    b["Resources"][worker_id.as_str()]["Properties"]["Policies"][0]["Statement"]
        .as_sequence_mut()
        .unwrap()
        .retain(|s| s["Sid"].as_str() != Some("NotFoundWindow"));
    expect(
        check_leading_keys(&b, "sync-worker", &worker),
        "calls UpdateItem on ControlTable keys notfound#",
    );
    // The ingest given a control-table grant it does not use.
    let mut b = t.clone();
    b["Resources"][ingest_id.as_str()]["Properties"]["Policies"][0]["Statement"]
        .as_sequence_mut()
        .unwrap()
        .push(yaml(
            "{Sid: Dedup, Effect: Allow, Action: dynamodb:PutItem, Resource: !GetAtt ControlTable.Arn, \
             Condition: {'ForAllValues:StringLike': {'dynamodb:LeadingKeys': ['event#*']}}}",
        ));
    expect(
        check_leading_keys(&b, "webhook-ingest", &ingest),
        "its code touches no control key",
    );
}

/// The tracing itself, on code written for it: a method's key builder found through a helper
/// of the adapter, grouped imports followed, a port default reported.
#[test]
fn template_key_tracing_reads_paths_bodies_and_prefixes() {
    let paths = named_paths(
        "use shared::adapters::{aws, sqs::SqsQueue};\nuse shared::sync::worker::{A, b::{C, D as E}};\nlet x = shared::core::deadline::within(1);\nnotshared::x::y;",
        "shared",
    );
    let has = |p: &[&str]| paths.iter().any(|q| q == p);
    assert!(has(&["adapters", "aws"]), "{paths:?}");
    assert!(has(&["adapters", "sqs", "SqsQueue"]), "{paths:?}");
    assert!(has(&["sync", "worker", "b", "D"]), "{paths:?}");
    assert!(has(&["core", "deadline", "within"]), "{paths:?}");
    assert!(
        !paths.iter().any(|q| q.first().is_some_and(|s| s == "x")),
        "{paths:?}"
    );
    assert_eq!(
        shared_module_files(&["sync".into(), "worker".into(), "WorkerOptions".into()])
            .first()
            .map(|p| p.ends_with("shared/src/sync/worker.rs")),
        Some(true)
    );

    let code = r#"
        fn a_pk(x: &str) -> String { format!("alpha#{x}") }
        fn helper(x: &str) -> String { a_pk(x) }
        async fn one(&self) { let k = helper("{"); self.client.put_item().key("pk", s(k)).send().await; }
        async fn two(&self) { self.client.delete_item().key("pk", s(format!("beta#{}", 1))); }
    "#;
    let bodies = fn_bodies(code);
    assert_eq!(
        bodies.keys().cloned().collect::<Vec<_>>(),
        ["a_pk", "helper", "one", "two"]
    );
    assert!(bodies["one"].contains("put_item"), "{bodies:?}");
    assert_eq!(
        key_prefixes(&bodies["a_pk"]),
        BTreeSet::from(["alpha#".to_owned()])
    );
    assert_eq!(
        key_prefixes(&bodies["two"]),
        BTreeSet::from(["beta#".to_owned()])
    );
    assert_eq!(
        key_prefixes("\"{started}#{id}\" \"not a key\""),
        BTreeSet::new()
    );
    let methods = port_methods("ControlStore");
    assert!(
        methods.contains("processed_events") && methods.contains("upsert_then_save_cursor"),
        "{methods:?}"
    );
}

#[test]
fn template_checkov_suppressions_sit_at_their_resources_with_reasons() {
    let text = std::fs::read_to_string(root().join("template.yaml")).expect("read template.yaml");
    assert!(
        text.matches("checkov:skip=").count() >= 10,
        "the template's accepted findings are suppressed here"
    );
    assert_eq!(check_suppressions(&text), Vec::<String>::new());

    // Negative controls: without a reason, above the logical ID (checkov ignores it there),
    // outside Resources, twice.
    let first = text
        .lines()
        .find(|l| l.contains("checkov:skip="))
        .expect("a suppression")
        .to_owned();
    let bare = first
        .split_once(": ")
        .map(|(head, _)| head.to_owned())
        .unwrap();
    expect(
        check_suppressions(&text.replacen(&first, &bare, 1)),
        "without a reason",
    );
    let moved = text.replacen(&first, "", 1).replacen(
        "  DeltaSyncFunction:\n",
        &format!("  {}\n  DeltaSyncFunction:\n", first.trim_start()),
        1,
    );
    expect(check_suppressions(&moved), "outside a resource's lines");
    let in_parameters = text.replacen(
        "Parameters:\n",
        &format!("Parameters:\n    {}\n", first.trim_start()),
        1,
    );
    expect(
        check_suppressions(&in_parameters),
        "outside a resource's lines",
    );
    let twice = text.replacen(&first, &format!("{first}\n{first}"), 1);
    expect(check_suppressions(&twice), "twice");

    let script = std::fs::read_to_string(root().join("scripts/check-template")).expect("read");
    let reqs =
        std::fs::read_to_string(root().join("scripts/requirements-checkov.txt")).expect("read");
    assert_eq!(
        check_checkov_invocation(&script, &reqs),
        Vec::<String>::new()
    );
    let run = script
        .lines()
        .find(|l| l.trim_start().starts_with("\"$checkov\""))
        .unwrap()
        .to_owned();
    expect(
        check_checkov_invocation(
            &script.replacen(&run, &format!("{run} --skip-check CKV_AWS_95"), 1),
            &reqs,
        ),
        "--skip-check",
    );
    expect(
        check_checkov_invocation(
            &script.replacen(&run, &format!("{run} --soft-fail"), 1),
            &reqs,
        ),
        "--soft-fail",
    );
    expect(
        check_checkov_invocation(&script.replacen(&run, "# no checkov", 1), &reqs),
        "want one checkov run",
    );
    expect(
        check_checkov_invocation(&script, &reqs.replace("checkov==", "# checkov==")),
        "pins no checkov",
    );
}
