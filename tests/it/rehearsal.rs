//! The stack rehearsal: what `tests/it/template/` cannot see, because it reads `template.yaml`
//! as written. Here the template goes the way a deploy takes it:
//!
//! 1. SAM's own translator (aws-sam-translator, pinned in `scripts/requirements-lambda.txt`)
//!    turns it into CloudFormation (`tests/rehearsal/stack.py translate`: local `CodeUri` and
//!    `DefinitionUri` rewritten as SAM CLI's package step would). A template SAM refuses fails
//!    here (it found one: the delta function's `EventInvokeConfig` without a `Type`).
//! 2. What moto's CloudFormation does not create or apply is checked in the translated JSON:
//!    every reference resolves, the HTTP API's one route and its stage (throttling, access
//!    logs), the ingest's invoke permission, TTL, the spill lifecycle, the state machine's
//!    `DefinitionSubstitutions`, the event invoke config, the event source mapping (left out of
//!    the stack: it would consume the test's messages), alarms and policies (their references).
//!    A resource type that is neither created by moto nor checked here fails the test.
//! 3. The stack is created on the moto server, and what it created is checked against the code:
//!    the tables against `schema` (keys, index), the queues (redrive, visibility), the bucket,
//!    the log groups (names, retention), the schedules (targets and inputs: the `events/`
//!    samples), the state machine.
//! 4. Each real function binary runs under cargo-lambda's runtime emulator (`cargo lambda
//!    watch`, one per function, its own port, a debug build as the package alone builds it)
//!    with exactly the environment the translated template gives it, resolved against the
//!    created stack, plus the emulators' endpoints and credentials (nothing else of this
//!    process's environment), and the `events/` samples are invoked through it (`cargo lambda
//!    invoke --data-file`). Each outcome is the one the function's in-process test asserts.
//!    DynamoDB: the functions use DynamoDB Local (AWS's engine, the one the conformance suite
//!    runs on), with tables built from `schema`, which step 3 proved equal to the stack's.

use crate::harness::{dynamodb_client, emulators, s3_client, scratch, sqs_client};
use serde_json::{Value, json};
use shared::adapters::dynamodb::{create_table, create_tables, schema, stores};
use shared::model::Strategy;
use shared::ports::{ControlStore, JobKind, LeaseOutcome, RecordStore};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// (logical ID, package) of every function.
const FUNCTIONS: [(&str, &str); 4] = [
    ("DeltaSyncFunction", "delta-sync"),
    ("WebhookIngestFunction", "webhook-ingest"),
    ("SyncWorkerFunction", "sync-worker"),
    ("ReconcileFunction", "reconcile"),
];

/// What moto's CloudFormation (5.2.5) creates from this template. Every other type is checked
/// in the translated JSON (`check_not_created`), or the test fails.
const CREATED_BY_MOTO: [&str; 10] = [
    "AWS::CloudWatch::Dashboard",
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::S3::Bucket",
    "AWS::Logs::LogGroup",
    "AWS::Lambda::Function",
    "AWS::Lambda::Permission",
    "AWS::IAM::Role",
    "AWS::Events::Rule",
    "AWS::StepFunctions::StateMachine",
];

/// The secret events/webhook-ingest/pco-*.json are signed with (as in the ingest's tests).
const PCO_SECRET: &str = "pco-test-secret";
const PEOPLE: u64 = 20;
const DONATIONS: u64 = 5;
/// The run of the reconcile `step-*` samples.
const SAMPLE_RUN: &str = "rec-0123456789abcdef0123456789abcdef";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn venv_bin(name: &str) -> PathBuf {
    let p = root().join(".tools/lambda-venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: scripts/test installs it (scripts/emulators.sh install-lambda)",
        p.display()
    );
    p
}

fn sample(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join("events").join(path)).expect("a sample");
    serde_json::from_str(&text).expect("a JSON sample")
}

/// `tests/rehearsal/stack.py ARGS` with the emulator environment; its stdout as JSON.
fn stack_py(args: &[String]) -> Value {
    let out = Command::new(venv_bin("python"))
        .arg(root().join("tests/rehearsal/stack.py"))
        .args(args)
        .env("AWS_ENDPOINT_URL", &emulators().moto_url)
        .output()
        .expect("run tests/rehearsal/stack.py");
    assert!(
        out.status.success(),
        "stack.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stack.py prints JSON")
}

/// Every `Ref`, `GetAtt` and `${...}` of `node`, as the names they reference.
fn references(node: &Value, out: &mut BTreeSet<String>) {
    match node {
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("Ref", Value::String(name)) => {
                        out.insert(name.clone());
                    }
                    ("Fn::GetAtt", Value::Array(a)) => {
                        if let Some(Value::String(name)) = a.first() {
                            out.insert(name.clone());
                        }
                    }
                    ("Fn::Sub", s) => {
                        let (text, extra) = match s {
                            Value::String(t) => (t.as_str(), None),
                            Value::Array(a) => (a[0].as_str().unwrap_or(""), a.get(1)),
                            _ => ("", None),
                        };
                        let local: BTreeSet<&str> = extra
                            .and_then(Value::as_object)
                            .map(|m| m.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        for part in text.split("${").skip(1) {
                            let name = part.split('}').next().unwrap_or("");
                            let name = name.split('.').next().unwrap_or("");
                            if !name.starts_with('!') && !local.contains(name) {
                                out.insert(name.to_owned());
                            }
                        }
                        if let Some(e) = extra {
                            references(e, out);
                        }
                    }
                    _ => references(v, out),
                }
            }
        }
        _ => {}
    }
}

/// The checks of what moto does not create or apply, on the translated template `t`, given the
/// logical IDs moto created.
fn check_not_created(t: &Value, created: &BTreeSet<String>) -> Vec<String> {
    let mut bad = Vec::new();
    let res = t["Resources"].as_object().expect("Resources");
    let params: BTreeSet<&String> = t["Parameters"].as_object().unwrap().keys().collect();
    // Every reference names a resource, a parameter or a pseudo parameter: the translator
    // renames nothing a policy, an alarm or an output points at.
    let mut refs = BTreeSet::new();
    references(&t["Resources"], &mut refs);
    references(&t["Outputs"], &mut refs);
    for r in refs {
        if !res.contains_key(&r) && !params.contains(&r) && !r.starts_with("AWS::") {
            bad.push(format!(
                "a reference to {r}, which the translated template lacks"
            ));
        }
    }
    let ref_to = |v: &Value, id: &str| v == &json!({"Ref": id});
    let att = |v: &Value, id: &str, a: &str| v == &json!({"Fn::GetAtt": [id, a]});
    for (id, r) in res {
        let ty = r["Type"].as_str().unwrap_or("");
        let p = &r["Properties"];
        if created.contains(id) {
            if !CREATED_BY_MOTO.contains(&ty) {
                bad.push(format!(
                    "{id}: moto now creates {ty}: add it to CREATED_BY_MOTO"
                ));
            }
            continue;
        }
        match ty {
            // The one route, POST /webhooks, to the ingest function, payload format 2.0.
            "AWS::ApiGatewayV2::Api" => {
                let paths = p["Body"]["paths"].as_object().cloned().unwrap_or_default();
                let routes: Vec<(&String, Vec<&String>)> = paths
                    .iter()
                    .map(|(k, v)| {
                        (
                            k,
                            v.as_object()
                                .map(|m| m.keys().collect())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                if routes.len() != 1 || routes[0].0 != "/webhooks" || routes[0].1 != ["post"] {
                    bad.push(format!("{id}: routes {routes:?}, want only POST /webhooks"));
                }
                let i = &p["Body"]["paths"]["/webhooks"]["post"]["x-amazon-apigateway-integration"];
                let uri = i["uri"]["Fn::Sub"].as_str().unwrap_or("");
                if i["type"] != "aws_proxy"
                    || i["payloadFormatVersion"] != "2.0"
                    || !uri.contains("${WebhookIngestFunction.Arn}")
                {
                    bad.push(format!("{id}: the route's integration is {i}"));
                }
            }
            "AWS::ApiGatewayV2::Stage" => {
                let s = &p["DefaultRouteSettings"];
                if p["StageName"] != "$default"
                    || p["AutoDeploy"] != true
                    || !ref_to(&s["ThrottlingRateLimit"], "WebhookThrottleRate")
                    || !ref_to(&s["ThrottlingBurstLimit"], "WebhookThrottleBurst")
                    || !att(
                        &p["AccessLogSettings"]["DestinationArn"],
                        "WebhookApiAccessLogGroup",
                        "Arn",
                    )
                {
                    bad.push(format!("{id}: stage {p}"));
                }
            }
            "AWS::Lambda::EventInvokeConfig" => {
                if !ref_to(&p["FunctionName"], "DeltaSyncFunction")
                    || p["Qualifier"] != "$LATEST"
                    || p["MaximumRetryAttempts"] != 0
                    || !att(
                        &p["DestinationConfig"]["OnFailure"]["Destination"],
                        "DeltaFailureQueue",
                        "Arn",
                    )
                {
                    bad.push(format!("{id}: {p}"));
                }
            }
            "AWS::Lambda::EventSourceMapping" => {
                let types = p["FunctionResponseTypes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !att(&p["EventSourceArn"], "WorkQueue", "Arn")
                    || !ref_to(&p["FunctionName"], "SyncWorkerFunction")
                    || !types.contains(&json!("ReportBatchItemFailures"))
                    || p["BatchSize"].as_u64().is_none_or(|n| n > 10)
                {
                    bad.push(format!("{id}: {p}"));
                }
            }
            // The policies deny plain HTTP on their own queue or bucket.
            "AWS::SQS::QueuePolicy" | "AWS::S3::BucketPolicy" => {
                let statements = p["PolicyDocument"]["Statement"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !statements.iter().any(|s| {
                    s["Effect"] == "Deny"
                        && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
                }) {
                    bad.push(format!("{id}: no DenyInsecureTransport statement"));
                }
            }
            // Generated at deploy: the test makes it (a secret of moto's) and names it.
            "AWS::SecretsManager::Secret" => {
                if p["GenerateSecretString"].is_null() {
                    bad.push(format!("{id}: not a generated secret"));
                }
            }
            // Alarms and the alarm topic: their references are checked above,
            // their settings by tests/it/template/ (alarms, dashboard).
            "AWS::CloudWatch::Alarm"
            | "AWS::SNS::Topic"
            | "AWS::SNS::Subscription"
            | "AWS::SNS::TopicPolicy" => {}
            _ => bad.push(format!(
                "{id}: {ty} is neither created by moto nor checked by the rehearsal: add a check"
            )),
        }
    }
    // What moto creates but does not apply: each table's TTL (the records table's since
    // soft deletes expire, `TombstoneRetentionDays`).
    for table in schema::TABLES {
        let ttl = &res[table.logical_id]["Properties"]["TimeToLiveSpecification"];
        if ttl["AttributeName"].as_str() != table.ttl_attribute || ttl["Enabled"] != true {
            bad.push(format!(
                "{}: TTL {ttl}, want {:?}",
                table.logical_id, table.ttl_attribute
            ));
        }
    }
    let rules = res["SpillBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !rules.iter().any(|r| {
        r["Status"] == "Enabled"
            && (r["Prefix"] == "reconcile/" || r["Filter"]["Prefix"] == "reconcile/")
            && r["ExpirationInDays"].as_u64().is_some()
    }) {
        bad.push(format!("SpillBucket: no expiry of reconcile/: {rules:?}"));
    }
    // Every placeholder of the definition is substituted, and every substitution is used.
    let sm = &res["ReconcileStateMachine"]["Properties"];
    let definition: String = sm["DefinitionString"]["Fn::Join"][1]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let placeholders: BTreeSet<&str> = definition
        .split("${")
        .skip(1)
        .filter_map(|p| p.split('}').next())
        .collect();
    let keys: BTreeSet<&str> = sm["DefinitionSubstitutions"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("infra/reconcile.asl.json")).unwrap(),
    )
    .unwrap();
    if serde_json::from_str::<Value>(&definition).ok() != Some(file) {
        bad.push("ReconcileStateMachine: its definition is not infra/reconcile.asl.json".into());
    }
    if definition.is_empty() || placeholders != keys {
        bad.push(format!(
            "ReconcileStateMachine: placeholders {placeholders:?}, substitutions {keys:?}"
        ));
    }
    if !att(
        &sm["DefinitionSubstitutions"]["ReconcileFunctionArn"],
        "ReconcileFunction",
        "Arn",
    ) {
        bad.push("ReconcileStateMachine: ReconcileFunctionArn is not the function's ARN".into());
    }
    // The ingest may be invoked by its API only.
    let perm = &res["WebhookIngestFunctionWebhookPermission"]["Properties"];
    if perm["Principal"] != "apigateway.amazonaws.com"
        || !ref_to(&perm["FunctionName"], "WebhookIngestFunction")
        || !perm["SourceArn"]["Fn::Sub"][1]["__ApiId__"].eq(&json!({"Ref": "WebhookApi"}))
    {
        bad.push(format!("WebhookIngestFunctionWebhookPermission: {perm}"));
    }
    bad
}

/// A created stack.
struct Stack {
    name: String,
    translated: Value,
    created: Value,
}

impl Stack {
    fn physical(&self, id: &str) -> String {
        self.created["resources"][id]["physical"]
            .as_str()
            .unwrap_or_else(|| panic!("the stack has no {id}"))
            .to_owned()
    }
    fn env(&self, id: &str) -> BTreeMap<String, String> {
        serde_json::from_value(self.created["environments"][id].clone()).expect("an environment")
    }
}

/// An empty zip archive: what moto's Lambda keeps as the functions' code (never run).
const EMPTY_ZIP: [u8; 22] = [
    0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

async fn create_secret(name: &str, value: &str) -> String {
    let sdk = crate::harness::sdk_config().await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create a secret on moto")
        .arn()
        .expect("its ARN")
        .to_owned()
}

/// Translate the template for the simulator at `source_url`, check it, create it on moto.
async fn create_stack(source_url: &str) -> Stack {
    let name = crate::harness::unique_name("rh");
    let folder = scratch("rehearsal");
    // What the deploy would be given: the secrets (in moto), the code (moto's S3).
    let webhook = create_secret(&format!("{name}-webhook"), PCO_SECRET).await;
    let source = create_secret(&format!("{name}-source"), testkit::config::basic::SECRET).await;
    let token = create_secret(&format!("{name}-token"), &"k".repeat(64)).await;
    let s3 = s3_client().await;
    let code_bucket = format!("{name}-code");
    s3.create_bucket()
        .bucket(&code_bucket)
        .send()
        .await
        .expect("code bucket");
    for (id, _) in FUNCTIONS {
        s3.put_object()
            .bucket(&code_bucket)
            .key(format!("{id}.zip"))
            .body(EMPTY_ZIP.to_vec().into())
            .send()
            .await
            .expect("code object");
    }
    let params = [
        format!("SourceBaseUrl={source_url}"),
        format!("SourceSecretArn={source}"),
        format!("WebhookSecretArn={webhook}"),
    ];
    let mut args: Vec<String> = vec![
        "translate".into(),
        root().join("template.yaml").display().to_string(),
        "--code-bucket".into(),
        code_bucket,
    ];
    for p in &params {
        args.extend(["--param".into(), p.clone()]);
    }
    let translated = stack_py(&args);
    // The event source mapping stays out: it would consume the test's messages.
    let mut creatable = translated.clone();
    let mapping = creatable["Resources"]
        .as_object_mut()
        .unwrap()
        .remove("SyncWorkerQueueMapping");
    assert!(
        mapping.is_some(),
        "the translated template has SyncWorkerQueueMapping"
    );
    let file = folder.join("translated.json");
    std::fs::write(&file, serde_json::to_vec(&creatable).unwrap()).unwrap();
    let mut args: Vec<String> = vec!["create".into(), name.clone(), file.display().to_string()];
    for p in &params {
        args.extend(["--param".into(), p.clone()]);
    }
    args.extend(["--physical".into(), format!("TokenSigningSecret={token}")]);
    let created = stack_py(&args);
    assert_eq!(
        created["status"], "CREATE_COMPLETE",
        "{}",
        created["reason"]
    );
    Stack {
        name,
        translated,
        created,
    }
}

/// What the stack created, against what the code expects.
async fn check_created(s: &Stack) -> Vec<String> {
    let mut bad = Vec::new();
    let t = &s.translated;
    let default = |p: &str| {
        t["Parameters"][p]["Default"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                t["Parameters"][p]["Default"]
                    .as_u64()
                    .map(|n| n.to_string())
            })
            .unwrap_or_default()
    };
    // Tables: create_table on an existing table checks it matches the schema (keys, index,
    // stream) and fails naming the difference.
    let sdk = crate::harness::sdk_config().await;
    let moto_ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&emulators().moto_url)
            .build(),
    );
    for schema in [schema::RECORDS, schema::CONTROL] {
        if let Err(e) = create_table(&moto_ddb, &schema, &s.physical(schema.logical_id)).await {
            bad.push(format!("{}: {e}", schema.logical_id));
        }
    }
    // Queues.
    let sqs = sqs_client().await;
    let attrs = |url: String| {
        let sqs = sqs.clone();
        async move {
            let got = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .expect("queue attributes");
            got.attributes().cloned().unwrap_or_default()
        }
    };
    use aws_sdk_sqs::types::QueueAttributeName as Q;
    let work = attrs(s.physical("WorkQueue")).await;
    let dlq = attrs(s.physical("DeadLetterQueue")).await;
    let worker_timeout: u64 = default("WorkerTimeoutSeconds").parse().unwrap();
    if work.get(&Q::VisibilityTimeout).map(String::as_str)
        != Some(&(6 * worker_timeout).to_string())
    {
        bad.push(format!(
            "WorkQueue: visibility {:?}, want 6 x {worker_timeout}",
            work.get(&Q::VisibilityTimeout)
        ));
    }
    let redrive: Value = work
        .get(&Q::RedrivePolicy)
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or(Value::Null);
    if redrive["deadLetterTargetArn"].as_str() != dlq.get(&Q::QueueArn).map(String::as_str)
        || redrive["maxReceiveCount"].to_string().trim_matches('"')
            != default("WorkerMaxReceiveCount")
    {
        bad.push(format!("WorkQueue: redrive {redrive}"));
    }
    if dlq.get(&Q::MessageRetentionPeriod).map(String::as_str) != Some("1209600") {
        bad.push("DeadLetterQueue: retention is not 14 days".into());
    }
    // The bucket.
    if let Err(e) = s3_client()
        .await
        .head_bucket()
        .bucket(s.physical("SpillBucket"))
        .send()
        .await
    {
        bad.push(format!("SpillBucket: {e}"));
    }
    // Each function logs to its own group, named after the stack, with the retention asked.
    let retention = default("LogRetentionDays");
    for (id, package) in FUNCTIONS {
        let group = t["Resources"][id]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
            .as_str()
            .unwrap_or("");
        let want = format!("/aws/lambda/{}-{package}", s.name);
        let got = &s.created["log_groups"][&want];
        if s.created["resources"][group]["physical"] != want.as_str()
            || got.as_u64().map(|d| d.to_string()) != Some(retention.clone())
        {
            bad.push(format!("{id}: logs to {group} ({want}: retention {got})"));
        }
    }
    // The schedules send the samples the functions' tests run.
    let rules = &s.created["rules"];
    let target = |rule: &str| &rules[rule]["targets"][0];
    let input = |rule: &str| -> Value {
        serde_json::from_str(target(rule)["input"].as_str().unwrap_or("null"))
            .unwrap_or(Value::Null)
    };
    let delta_arn = &s.created["functions"]["DeltaSyncFunction"]["FunctionArn"];
    if &target("DeltaSyncFunctionEvery")["arn"] != delta_arn
        || input("DeltaSyncFunctionEvery") != sample("delta-sync/all-entities.json")
        || rules["DeltaSyncFunctionEvery"]["schedule"] != default("DeltaSchedule").as_str()
    {
        bad.push(format!(
            "the delta schedule: {}",
            rules["DeltaSyncFunctionEvery"]
        ));
    }
    let machine = s.physical("ReconcileStateMachine");
    if target("ReconcileStateMachineDaily")["arn"] != machine.as_str()
        || input("ReconcileStateMachineDaily") != sample("reconcile/start-all-entities.json")
    {
        bad.push(format!(
            "the reconcile schedule: {}",
            rules["ReconcileStateMachineDaily"]
        ));
    }
    // The state machine: moto's CloudFormation creates it in a Step Functions backend its API
    // does not list once the interpreter is on (scripts/emulators.sh), so its definition is
    // checked in the translated template (check_not_created); tests/it/reconcile_sfn.rs runs
    // that definition on moto.
    bad
}

/// One function under `cargo lambda watch`, killed on drop.
struct Watched {
    package: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a function process gets besides the template's variables: the emulators, test
/// credentials, the region. Nothing else of this process's environment.
fn aws_env() -> Vec<(String, String)> {
    let e = emulators();
    let mut v: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    v.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), e.dynamodb_url.clone()));
    for service in ["SQS", "S3", "SFN", "SECRETS_MANAGER", "SSM"] {
        v.push((format!("AWS_ENDPOINT_URL_{service}"), e.moto_url.clone()));
    }
    v
}

/// Start `package` under `cargo lambda watch` with `env` (its env file) on a port of its own.
fn watch(
    package: &'static str,
    env: &BTreeMap<String, String>,
    folder: &Path,
    label: &str,
    timeout_secs: Option<u32>,
) -> Watched {
    let file = folder.join(format!("{label}.env"));
    let mut text = String::new();
    for (k, v) in env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(aws_env())
    {
        assert!(!v.contains('\n'), "{k} has a newline");
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let port = free_port();
    let mut cmd = Command::new(venv_bin("cargo-lambda"));
    cmd.current_dir(root())
        .env_clear()
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--quiet",
            "-p",
            package,
        ])
        .args(["-A", "127.0.0.1", "-P", &port.to_string()])
        .arg("--env-file")
        .arg(&file)
        .args(timeout_secs.map(|t| format!("--timeout={t}")))
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(folder.join(format!("{label}.log"))).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(folder.join(format!("{label}.err.log"))).unwrap(),
        ));
    // What cargo needs to build and run it, and nothing of the AWS or SYNC_ variables.
    for keep in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "TMPDIR",
    ] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let child = cmd.spawn().expect("start cargo lambda watch");
    Watched {
        package,
        port,
        child,
    }
}

/// `cargo lambda invoke PACKAGE --data-file FILE`: Ok(response) or Err(the error's JSON).
fn invoke(w: &Watched, data: &Value, folder: &Path) -> Result<Value, Value> {
    let file = folder.join(format!("{}-payload.json", w.package));
    std::fs::write(&file, serde_json::to_vec(data).unwrap()).unwrap();
    // The emulator may still be starting (its first invocation builds the function).
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let out = Command::new(venv_bin("cargo-lambda"))
            .args([
                "lambda",
                "invoke",
                w.package,
                "-A",
                "127.0.0.1",
                "-P",
                &w.port.to_string(),
            ])
            .args(["--output-format", "json", "--data-file"])
            .arg(&file)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .expect("run cargo lambda invoke");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            return Ok(
                serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
            );
        }
        let refused =
            stderr.contains("Connection refused") || stderr.contains("error sending request");
        if refused && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        // An error the function returned: cargo-lambda prints its errorType and message.
        return Err(json!({"stdout": stdout, "stderr": stderr}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_translated_stack_is_created_on_moto_and_agrees_with_the_code() {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: PEOPLE as usize,
        donations: DONATIONS as usize,
        ..Default::default()
    })
    .await;
    let s = create_stack(&sim.base_url()).await;
    let created: BTreeSet<String> = s.created["resources"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let bad = check_not_created(&s.translated, &created);
    assert!(
        bad.is_empty(),
        "the translated template:\n{}",
        bad.join("\n")
    );
    let bad = check_created(&s).await;
    assert!(bad.is_empty(), "the created stack:\n{}", bad.join("\n"));
}

#[test]
fn negative_control_the_translated_template_checks_catch_each_fault() {
    // A translated template of the real shape, with no emulator: the translation alone.
    let mut args: Vec<String> = vec![
        "translate".into(),
        root().join("template.yaml").display().to_string(),
    ];
    for p in [
        "SourceBaseUrl=https://api.example.com",
        "WebhookSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:w-abcdef",
    ] {
        args.extend(["--param".into(), p.into()]);
    }
    let out = Command::new(venv_bin("python"))
        .arg(root().join("tests/rehearsal/stack.py"))
        .args(&args)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let created: BTreeSet<String> = t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| CREATED_BY_MOTO.contains(&r["Type"].as_str().unwrap()))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(check_not_created(&t, &created), Vec::<String>::new());
    let expect = |edit: &dyn Fn(&mut Value), want: &str| {
        let mut b = t.clone();
        edit(&mut b["Resources"]);
        let bad = check_not_created(&b, &created);
        assert!(
            bad.iter().any(|m| m.contains(want)),
            "want {want:?} in {bad:?}"
        );
    };
    expect(
        &|r| r["WebhookApi"]["Properties"]["Body"]["paths"]["/other"] = json!({"get": {}}),
        "want only POST /webhooks",
    );
    expect(
        &|r| {
            r["WebhookApiApiGatewayDefaultStage"]["Properties"]["DefaultRouteSettings"] = json!({})
        },
        "stage",
    );
    expect(
        &|r| r["DeltaSyncInvokeConfig"]["Properties"]["MaximumRetryAttempts"] = json!(2),
        "DeltaSyncInvokeConfig",
    );
    expect(
        &|r| r["SyncWorkerQueueMapping"]["Properties"]["FunctionResponseTypes"] = json!([]),
        "SyncWorkerQueueMapping",
    );
    expect(
        &|r| r["WorkQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"] = json!([]),
        "DenyInsecureTransport",
    );
    expect(
        &|r| {
            r["ControlTable"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] =
                json!("expires")
        },
        "ControlTable: TTL",
    );
    expect(
        &|r| {
            r["SpillBucket"]["Properties"]
                .as_object_mut()
                .unwrap()
                .remove("LifecycleConfiguration")
                .map(|_| ())
                .unwrap()
        },
        "no expiry of reconcile/",
    );
    expect(
        &|r| {
            r["ReconcileStateMachine"]["Properties"]["DefinitionSubstitutions"]
                .as_object_mut()
                .unwrap()
                .remove("MaxSourceInvocations")
                .map(|_| ())
                .unwrap()
        },
        "placeholders",
    );
    expect(
        &|r| {
            r["DeadLetterQueueAlarm"]["Properties"]["Dimensions"][0]["Value"] =
                json!({"Fn::GetAtt": ["Gone", "QueueName"]})
        },
        "a reference to Gone",
    );
    expect(
        &|r| {
            r["ReconcileStateMachine"]["Properties"]["DefinitionString"]["Fn::Join"][1][1] =
                json!("\"Comment\": \"edited\",")
        },
        "not infra/reconcile.asl.json",
    );
    expect(
        &|r| r["Extra"] = json!({"Type": "AWS::Kinesis::Stream", "Properties": {}}),
        "neither created by moto nor checked",
    );
}

/// The error type in `cargo lambda invoke`'s report of a function error.
fn error_type(e: &Value) -> String {
    let text = format!(
        "{}{}",
        e["stdout"].as_str().unwrap_or(""),
        e["stderr"].as_str().unwrap_or("")
    );
    ["Reconcile.LeaseLost", "BatchFailed", "UnknownEntity"]
        .into_iter()
        .find(|t| text.contains(t))
        .map(str::to_owned)
        .unwrap_or(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_binary_runs_its_samples_with_the_templates_environment() {
    let sim = testkit::sim::start(source_sim::SimConfig {
        people: PEOPLE as usize,
        donations: DONATIONS as usize,
        auth: Some(testkit::config::basic::header()),
        ..Default::default()
    })
    .await;
    let s = create_stack(&sim.base_url()).await;
    let folder = scratch("rehearsal-functions");
    // The functions' DynamoDB: DynamoDB Local, tables named as the stack's, built from the
    // schema the stack's tables were checked against.
    let records_table = s.physical("RecordsTable");
    let control_table = s.physical("ControlTable");
    let ddb = dynamodb_client().await;
    create_tables(&ddb, &records_table, &control_table)
        .await
        .expect("the tables in DynamoDB Local");
    let (records, control) = stores(ddb, &records_table, &control_table);
    let env: BTreeMap<&str, BTreeMap<String, String>> =
        FUNCTIONS.iter().map(|(id, _)| (*id, s.env(id))).collect();
    // Every function's environment came from the template, names resolved to the stack.
    assert_eq!(env["DeltaSyncFunction"]["RECORDS_TABLE"], records_table);
    assert_eq!(
        env["WebhookIngestFunction"]["QUEUE_URL"],
        s.physical("WorkQueue")
    );
    let [delta, ingest, worker, reconcile] =
        FUNCTIONS.map(|(id, package)| watch(package, &env[id], folder.path(), package, None));

    // Reconciliation first, on an empty destination (as its in-process test): without the
    // run's lease every step refuses.
    let e = invoke(
        &reconcile,
        &sample("reconcile/step-source.json"),
        folder.path(),
    )
    .unwrap_err();
    assert_eq!(error_type(&e), "Reconcile.LeaseLost", "{e}");
    let now = shared::core::timefmt::now_us();
    let taken = control
        .acquire_lease("people", JobKind::Reconcile, SAMPLE_RUN, now, 3_600_000_000)
        .await
        .unwrap();
    assert!(matches!(taken, LeaseOutcome::Acquired { .. }));
    let progress = invoke(
        &reconcile,
        &sample("reconcile/step-source.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(progress["done"], true, "{progress}");
    assert_eq!(progress["pairs"], PEOPLE, "{progress}");
    let dest = invoke(
        &reconcile,
        &sample("reconcile/step-destination.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(dest, json!({"shard": 0, "pairs": 0, "objects": 0}));
    let diff = invoke(
        &reconcile,
        &sample("reconcile/step-diff.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(diff["source"]["ids"], PEOPLE, "{diff}");
    assert_eq!(diff["to_fetch"]["pairs"], PEOPLE, "{diff}");
    let summary = invoke(
        &reconcile,
        &sample("reconcile/step-finish-failed.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(summary["status"], "failed", "{summary}");
    let state = control
        .job_state("people", JobKind::Reconcile)
        .await
        .unwrap();
    assert_eq!(state.lease_holder, None, "released");

    // The worker: the samples as Lambda's poller sends them.
    let r = invoke(
        &worker,
        &sample("sync-worker/webhook-batch.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(r["batchItemFailures"], json!([]), "{r}");
    let p = records
        .get("people", "3")
        .await
        .unwrap()
        .expect("people/3 written");
    assert_eq!(p.written_by, Strategy::Webhook);
    assert!(records.get("donations", "2").await.unwrap().is_some());
    let r = invoke(&worker, &sample("sync-worker/targeted.json"), folder.path()).unwrap();
    assert_eq!(r["batchItemFailures"], json!([]), "{r}");
    let p = records
        .get("people", "7")
        .await
        .unwrap()
        .expect("people/7 written");
    assert_eq!(p.written_by, Strategy::Targeted);
    let r = invoke(&worker, &sample("sync-worker/poison.json"), folder.path()).unwrap();
    assert_eq!(
        r["batchItemFailures"],
        json!([{"itemIdentifier": "d0c0ffee-0000-4000-8000-000000000001"}]),
        "{r}"
    );
    assert!(records.get("people", "8").await.unwrap().is_some());

    // The ingest: signed deliveries are queued on the stack's work queue, a bad one is 401.
    let r = invoke(
        &ingest,
        &sample("webhook-ingest/pco-person-updated.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    let r = invoke(
        &ingest,
        &sample("webhook-ingest/pco-batch.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"queued": 3, "ignored": 1}));
    let r = invoke(
        &ingest,
        &sample("webhook-ingest/bad-signature.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(r["statusCode"], 401, "{r}");
    let sqs = sqs_client().await;
    let mut queued = BTreeSet::new();
    for _ in 0..5 {
        let got = sqs
            .receive_message()
            .queue_url(s.physical("WorkQueue"))
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            let e: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            queued.insert(format!(
                "{}/{}",
                e["entity"].as_str().unwrap(),
                e["id"].as_str().unwrap()
            ));
        }
        if queued.len() >= 4 {
            break;
        }
    }
    let want: BTreeSet<String> = ["people/3", "people/4", "people/5", "donations/2"]
        .map(String::from)
        .into();
    assert_eq!(queued, want);

    // Delta last: it finds what the worker wrote, and inserts the rest.
    let out = invoke(&delta, &sample("delta-sync/one-entity.json"), folder.path()).unwrap();
    let runs = out["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{out}");
    assert_eq!(runs[0]["entity"], "people");
    assert_eq!(runs[0]["seen"], PEOPLE, "{out}");
    // people 3, 7 and 8 came from the worker.
    assert_eq!(runs[0]["inserted"], PEOPLE - 3, "{out}");
    let out = invoke(
        &delta,
        &sample("delta-sync/all-entities.json"),
        folder.path(),
    )
    .unwrap();
    let by: Vec<(String, u64)> = out["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entity"].as_str().unwrap().to_owned(),
                r["inserted"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by,
        vec![("people".into(), 0), ("donations".into(), DONATIONS - 1)]
    );
    let out = invoke(
        &delta,
        &sample("delta-sync/scheduled-event.json"),
        folder.path(),
    )
    .unwrap();
    assert_eq!(out["runs"].as_array().unwrap().len(), 2, "{out}");
    assert!(
        out["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "succeeded"),
        "{out}"
    );
    assert_eq!(
        control
            .job_state("people", JobKind::Delta)
            .await
            .unwrap()
            .lease_holder,
        None
    );

    // The re-sync sample: everything read again on the re-sync's own cursor (nothing written:
    // unchanged), then its closing reconciliation started on the state machine the template
    // names in RECONCILE_STATE_MACHINE_ARN. moto's CloudFormation makes the state machine where
    // its Step Functions API does not list it, so the test creates one by the same name: the
    // ARN moto answers must be the one the template built, or the start below fails.
    let named = &env["DeltaSyncFunction"]["RECONCILE_STATE_MACHINE_ARN"];
    let name = named.rsplit(':').next().expect("a name");
    let sfn = crate::harness::sfn_client().await;
    let made = sfn
        .create_state_machine()
        .name(name)
        .definition(r#"{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}"#)
        .role_arn("arn:aws:iam::123456789012:role/rehearsal")
        .send()
        .await
        .expect("a state machine by the template's name");
    assert_eq!(made.state_machine_arn(), named.as_str());
    let out = invoke(&delta, &sample("delta-sync/resync.json"), folder.path()).unwrap();
    assert_eq!(out["runs"], json!([]), "no delta run: {out}");
    let run = &out["resyncs"][0];
    assert_eq!(
        (&run["lane"], &run["status"], &run["seen"], &run["inserted"]),
        (
            &json!("resync"),
            &json!("succeeded"),
            &json!(PEOPLE),
            &json!(0)
        ),
        "{out}"
    );
    let execution = out["reconciliations"][0]["execution"]
        .as_str()
        .unwrap_or_else(|| panic!("a reconciliation started: {out}"));
    let started = sfn
        .describe_execution()
        .execution_arn(execution)
        .send()
        .await
        .expect("the execution the re-sync started");
    assert_eq!(
        serde_json::from_str::<Value>(started.input().unwrap_or_default()).unwrap(),
        json!({"entity": "people"})
    );
    assert!(
        started.name().unwrap_or_default().starts_with("resync-"),
        "{started:?}"
    );

    // Negative control: the same binary without one variable the template sets fails its cold
    // start, naming it (so the environment above is what made it work).
    drop(ingest);
    let mut missing = env["WebhookIngestFunction"].clone();
    missing.remove("QUEUE_URL");
    let broken = watch(
        "webhook-ingest",
        &missing,
        folder.path(),
        "broken",
        Some(30),
    );
    let e = invoke(
        &broken,
        &sample("webhook-ingest/pco-person-updated.json"),
        folder.path(),
    )
    .unwrap_err();
    // The invocation times out (10 s); the cold start's error is in the emulator's log.
    let mut log = String::new();
    for _ in 0..120 {
        log = std::fs::read_to_string(folder.join("broken.err.log")).unwrap();
        if log.contains("MissingEnv") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(log.contains("MissingEnv(\"QUEUE_URL\")"), "{e}\n{log}");
}
