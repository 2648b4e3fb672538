//! `template.yaml`'s functions, checked against the code, offline (no emulator):
//! - every crate under `functions/` is exactly one `AWS::Serverless::Function` built by
//!   cargo-lambda from the workspace root, and every such function is a crate;
//! - IAM (functions and state machines) is inline statements only, with no `*` action and no
//!   `*` resource but an S3 object prefix of a bucket of this template (`${Bucket.Arn}/p/*`);
//! - every action granted is a call the code makes: a DynamoDB action on a table is an SDK call
//!   in that table's adapter (`shared/src/adapters/dynamodb/<table>.rs`), an S3 action one in
//!   `shared/src/adapters/s3.rs` on a bucket of this template (object actions on an object
//!   prefix, `s3:ListBucket` on the bucket; `s3:DeleteObject` authorises DeleteObjects,
//!   `s3:ListBucket` ListObjectsV2), any other action an SDK call somewhere in `shared/src` or
//!   the functions (`sqs:SendMessage` also authorises SendMessageBatch); so a grant the code
//!   stops using fails. SQS actions are on a queue of this template; the actions Lambda's poller
//!   makes with the execution role (ReceiveMessage, DeleteMessage, GetQueueAttributes) are
//!   allowed without a call, but only to the function an event source mapping on that queue
//!   invokes; `lambda:InvokeFunction` only to a state machine, on a function its definition
//!   invokes (a `FunctionName` placeholder its DefinitionSubstitutions map to that function);
//!   `states:StartExecution` (`shared/src/adapters/sfn.rs`) only to a function that builds that
//!   adapter, on a state machine of this template named by its name-based ARN (its explicit
//!   `Name`: a `!Ref` would be a circular dependency), and no other `states:` action;
//! - the delta function: its schedule sends `events/delta-sync/all-entities.json`, its
//!   environment is what the code reads, its grants cover what a run calls, its lease outlives
//!   its longest timeout, and an alarm watches its errors;
//! - webhooks: `POST /webhooks` of an HTTP API reaches the ingest function, which may only send
//!   to the work queue and read its secret; the work queue (standard, SSE, visibility timeout at
//!   least 6 x the worker's timeout for every timeout allowed, a redrive policy to a 14-day DLQ)
//!   feeds the worker through an event source mapping with partial batch responses and a
//!   maximum concurrency; the worker's grants and environment match its code; alarms watch the
//!   DLQ, the 404 ceiling and the worker's errors; the outputs name it all;
//! - reconciliation: a Standard state machine runs `infra/reconcile.asl.json` (every placeholder
//!   substituted, the function's ARN among them) daily with `events/reconcile/start-all-entities.json`
//!   and may only invoke the reconcile function; the function's grants are exactly the steps'
//!   calls (the live_ids index, soft deletes, lease and run history, the spill prefix, the work
//!   queue, the secret, starting the next execution of that one state machine for a long
//!   listing's continuation) and its environment what the code reads, thresholds defaulting to the
//!   code's; the spill bucket is private and encrypted and expires the spill prefix after a week,
//!   longer than an approval may wait; alarms watch failed executions, the guard, pending
//!   approvals and drift (summed over entities by a Metrics Insights query).
//!
//! Each check returns its findings as a list, so that the tests can also show it catching a
//! broken copy of the template (a check that finds nothing anywhere proves nothing).

use serde_yaml::Value;
use shared::adapters::dynamodb::schema;
use shared::adapters::secrets::SecretSource;
use shared::sync::delta::DeltaOptions;
use shared::telemetry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FUNCTION: &str = "AWS::Serverless::Function";
const QUEUE: &str = "AWS::SQS::Queue";
const MAPPING: &str = "AWS::Lambda::EventSourceMapping";
const ALARM: &str = "AWS::CloudWatch::Alarm";
const STATE_MACHINE: &str = "AWS::Serverless::StateMachine";
const BUCKET: &str = "AWS::S3::Bucket";
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
const POLLER_ACTIONS: [&str; 3] = ["ReceiveMessage", "DeleteMessage", "GetQueueAttributes"];
/// SQS deletes a standard queue's message this long after it was first sent, DLQ included.
const FOURTEEN_DAYS: i64 = 14 * 24 * 3600;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template() -> Value {
    let path = root().join("template.yaml");
    let text = std::fs::read_to_string(&path).expect("read template.yaml");
    serde_yaml::from_str(&text).expect("template.yaml is YAML")
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("test YAML")
}

// ---------------------------------------------------------------------------------------------
// CloudFormation values
// ---------------------------------------------------------------------------------------------

/// An intrinsic function, short (`!Ref X`) or long (`{Ref: X}`, `{"Fn::Sub": ...}`) form:
/// its name without `Fn::` and its argument.
fn intrinsic(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, arg) = m.iter().next()?;
            let k = k.as_str()?;
            if k == "Ref" || k == "Condition" {
                Some((k.to_owned(), arg))
            } else {
                k.strip_prefix("Fn::").map(|name| (name.to_owned(), arg))
            }
        }
        _ => None,
    }
}

fn is_ref_to(v: &Value, target: &str) -> bool {
    matches!(intrinsic(v), Some((f, arg)) if f == "Ref" && arg.as_str() == Some(target))
}

fn is_no_value(v: &Value) -> bool {
    is_ref_to(v, "AWS::NoValue")
}

/// The values a property may take: both branches of an `Fn::If` (nested ones too), without
/// `AWS::NoValue`; the value itself otherwise.
fn alternatives(v: &Value) -> Vec<&Value> {
    match intrinsic(v) {
        Some((f, Value::Sequence(args))) if f == "If" && args.len() == 3 => {
            args[1..].iter().flat_map(alternatives).collect()
        }
        _ if is_no_value(v) => Vec::new(),
        _ => vec![v],
    }
}

/// `!GetAtt T.Arn`, `!GetAtt [T, Arn]`, `!Sub "${T.Arn}"`, `!Sub "${T.Arn}/index/..."`:
/// the table's logical ID and the index part (`None` for the table itself).
fn table_arn(v: &Value) -> Option<(String, Option<String>)> {
    let (f, arg) = intrinsic(v)?;
    match f.as_str() {
        "GetAtt" => {
            let (res, attr) = match arg {
                Value::String(s) => s.split_once('.')?,
                Value::Sequence(parts) if parts.len() == 2 => {
                    (parts[0].as_str()?, parts[1].as_str()?)
                }
                _ => return None,
            };
            (attr == "Arn").then(|| (res.to_owned(), None))
        }
        "Sub" => {
            let s = arg.as_str()?;
            let rest = s.strip_prefix("${")?;
            let (inner, tail) = rest.split_once('}')?;
            let res = inner.strip_suffix(".Arn")?;
            match tail {
                "" => Some((res.to_owned(), None)),
                t => t
                    .strip_prefix("/index/")
                    .map(|index| (res.to_owned(), Some(index.to_owned()))),
            }
        }
        _ => None,
    }
}

/// A property of a function, or else its `Globals.Function` value.
fn effective<'a>(t: &'a Value, f: &'a Value, prop: &str) -> Option<&'a Value> {
    f["Properties"]
        .get(prop)
        .or_else(|| t["Globals"]["Function"].get(prop))
}

/// The serverless functions: `(logical ID, resource)`.
fn functions(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(FUNCTION))
        .map(|(k, r)| (k.as_str().expect("logical IDs are strings").to_owned(), r))
        .collect()
}

fn function<'a>(t: &'a Value, binary: &str) -> &'a Value {
    functions(t)
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("a function whose Binary is {binary}"))
}

/// The logical ID of the function whose `Binary` is `binary`.
fn function_id(t: &Value, binary: &str) -> String {
    functions(t)
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("a function whose Binary is {binary}"))
}

fn resource_type<'a>(t: &'a Value, id: &str) -> Option<&'a str> {
    t["Resources"].get(id)?["Type"].as_str()
}

fn resources_of_type<'a>(t: &'a Value, ty: &str) -> Vec<(String, &'a Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(ty))
        .map(|(k, r)| (k.as_str().expect("logical IDs are strings").to_owned(), r))
        .collect()
}

/// `!Ref X` or `!GetAtt X.Arn`: X.
fn ref_or_arn_of(v: &Value) -> Option<String> {
    match intrinsic(v) {
        Some((f, arg)) if f == "Ref" => arg.as_str().map(str::to_owned),
        _ => match table_arn(v) {
            Some((id, None)) => Some(id),
            _ => None,
        },
    }
}

/// A queue's ARN (`!GetAtt Q.Arn`, `!Sub "${Q.Arn}"`) where Q is a queue of the template.
fn queue_arn(t: &Value, v: &Value) -> Option<String> {
    match table_arn(v) {
        Some((id, None)) if resource_type(t, &id) == Some(QUEUE) => Some(id),
        _ => None,
    }
}

/// A bucket's ARN (`!GetAtt B.Arn`) where B is a bucket of the template.
fn bucket_arn(t: &Value, v: &Value) -> Option<String> {
    match table_arn(v) {
        Some((id, None)) if resource_type(t, &id) == Some(BUCKET) => Some(id),
        _ => None,
    }
}

/// The objects under a key prefix of a bucket of the template: `!Sub "${B.Arn}/<prefix>/*"`
/// with a literal, non-empty prefix: `(B, "<prefix>/")`.
fn bucket_objects(t: &Value, v: &Value) -> Option<(String, String)> {
    let (f, arg) = intrinsic(v)?;
    if f != "Sub" {
        return None;
    }
    let rest = arg.as_str()?.strip_prefix("${")?;
    let (inner, tail) = rest.split_once('}')?;
    let bucket = inner.strip_suffix(".Arn")?;
    let prefix = tail.strip_prefix('/')?.strip_suffix('*')?;
    let literal = prefix.len() > 1
        && prefix.ends_with('/')
        && !prefix.contains(['*', '?', '$', '{', '}'])
        && !prefix.starts_with('/');
    (literal && resource_type(t, bucket) == Some(BUCKET))
        .then(|| (bucket.to_owned(), prefix.to_owned()))
}

/// The state machine of this template a name-based ARN names:
/// `!Sub "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:<name>"`,
/// where `<name>` (no wildcard) is the state machine's `Name` (`!Sub "<name>"` or a literal).
fn state_machine_named(t: &Value, v: &Value) -> Option<String> {
    let (f, arg) = intrinsic(v)?;
    if f != "Sub" {
        return None;
    }
    let name = arg.as_str()?.strip_prefix(
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:",
    )?;
    // The name's literal part (without `${...}` placeholders): no wildcard, no ARN suffix.
    let mut literal = String::new();
    let mut rest = name;
    while let Some(i) = rest.find("${") {
        literal.push_str(&rest[..i]);
        rest = &rest[i..][rest[i..].find('}')? + 1..];
    }
    literal.push_str(rest);
    if name.is_empty() || literal.contains(['*', '?', ':', '/']) {
        return None;
    }
    resources_of_type(t, STATE_MACHINE)
        .into_iter()
        .find(|(_, sm)| {
            let n = &sm["Properties"]["Name"];
            match intrinsic(n) {
                Some((f, arg)) => f == "Sub" && arg.as_str() == Some(name),
                None => n.as_str() == Some(name) && !name.contains("${"),
            }
        })
        .map(|(id, _)| id)
}

/// What a state machine's definition invokes: the functions of this template whose ARN a
/// `DefinitionSubstitutions` placeholder gives, where the definition (its `DefinitionUri`) uses
/// that placeholder as a Task's `FunctionName`.
fn invoked_by_state_machine(t: &Value, id: &str) -> BTreeSet<String> {
    let sm = &t["Resources"][id]["Properties"];
    let Some(uri) = sm["DefinitionUri"].as_str() else {
        return BTreeSet::new();
    };
    let Ok(text) = std::fs::read_to_string(root().join(uri)) else {
        return BTreeSet::new();
    };
    let Ok(definition) = serde_json::from_str::<serde_json::Value>(&text) else {
        return BTreeSet::new();
    };
    let mut names = BTreeSet::new();
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    if k == "FunctionName"
                        && let Some(name) = child
                            .as_str()
                            .and_then(|s| s.strip_prefix("${"))
                            .and_then(|s| s.strip_suffix('}'))
                    {
                        out.insert(name.to_owned());
                    }
                    walk(child, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(&definition, &mut names);
    names
        .iter()
        .filter_map(|n| {
            let f = table_arn(sm["DefinitionSubstitutions"].get(n.as_str())?)?;
            (f.1.is_none() && resource_type(t, &f.0) == Some(FUNCTION)).then_some(f.0)
        })
        .collect()
}

/// The logical ID of the resource a policy statement belongs to, from its place
/// (`Resources.<ID>.Properties.Policies[0].Statement[1]`).
fn owner_of(at: &str) -> &str {
    at.split('.').nth(1).unwrap_or_default()
}

/// A parameter's value when deployed with `assigned` (else its default), as a string (what
/// `!Ref` gives and `Fn::FindInMap` looks up).
fn parameter_value(t: &Value, name: &str, assigned: &BTreeMap<String, Value>) -> Option<String> {
    let v = assigned
        .get(name)
        .or_else(|| t["Parameters"].get(name)?.get("Default"))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number as CloudFormation resolves it: a literal, a `!Ref` to a parameter (its value in
/// `assigned`, else its default), or `!FindInMap [Map, <literal or !Ref>, Key]`.
fn resolve_number(t: &Value, v: &Value, assigned: &BTreeMap<String, Value>) -> Option<i64> {
    let as_string = |v: &Value| -> Option<String> {
        match (v, intrinsic(v)) {
            (Value::String(s), _) => Some(s.clone()),
            (Value::Number(n), _) => Some(n.to_string()),
            (_, Some((f, arg))) if f == "Ref" => parameter_value(t, arg.as_str()?, assigned),
            _ => None,
        }
    };
    match (v, intrinsic(v)) {
        (Value::Number(n), _) => n.as_i64(),
        (Value::String(s), _) => s.parse().ok(),
        (_, Some((f, arg))) if f == "Ref" => {
            parameter_value(t, arg.as_str()?, assigned)?.parse().ok()
        }
        (_, Some((f, Value::Sequence(args)))) if f == "FindInMap" && args.len() == 3 => {
            let (map, key, attr) = (
                as_string(&args[0])?,
                as_string(&args[1])?,
                as_string(&args[2])?,
            );
            resolve_number(
                t,
                &t["Mappings"][map.as_str()][key.as_str()][attr.as_str()],
                assigned,
            )
        }
        _ => None,
    }
}

/// The values a deployer may give a parameter that a property refers to: its AllowedValues, or
/// its default and bounds. `[None]` when the property is no parameter (nothing to vary).
fn choices(t: &Value, prop: &Value) -> Vec<Option<(String, Value)>> {
    let Some(name) = intrinsic(prop)
        .filter(|(f, _)| f == "Ref")
        .and_then(|(_, a)| a.as_str().map(str::to_owned))
        .filter(|n| t["Parameters"].get(n.as_str()).is_some())
    else {
        return vec![None];
    };
    let p = &t["Parameters"][name.as_str()];
    let values: Vec<Value> = match p.get("AllowedValues").and_then(Value::as_sequence) {
        Some(allowed) => allowed.clone(),
        None => ["Default", "MinValue", "MaxValue"]
            .iter()
            .filter_map(|k| p.get(*k).cloned())
            .collect(),
    };
    values
        .into_iter()
        .map(|v| Some((name.clone(), v)))
        .collect()
}

/// An event source mapping of the template: its ID, the function it invokes, the queue it
/// polls (when the source is a queue of the template) and its properties.
struct Esm<'a> {
    id: String,
    function: Option<String>,
    queue: Option<String>,
    props: &'a Value,
}

fn event_source_mappings(t: &Value) -> Vec<Esm<'_>> {
    resources_of_type(t, MAPPING)
        .into_iter()
        .map(|(id, r)| {
            let props = &r["Properties"];
            Esm {
                id,
                function: ref_or_arn_of(&props["FunctionName"])
                    .filter(|f| resource_type(t, f) == Some(FUNCTION)),
                queue: queue_arn(t, &props["EventSourceArn"]),
                props,
            }
        })
        .collect()
}

/// `(function, queue)` pairs joined by an event source mapping.
fn esm_targets(t: &Value) -> BTreeSet<(String, String)> {
    event_source_mappings(t)
        .into_iter()
        .filter_map(|m| Some((m.function?, m.queue?)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The code
// ---------------------------------------------------------------------------------------------

/// The crates under `functions/` (folders with a Cargo.toml), read now, not listed by hand.
fn function_crates() -> BTreeSet<String> {
    let dir = root().join("functions");
    std::fs::read_dir(&dir)
        .expect("read functions/")
        .map(|e| e.expect("a functions/ entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A source file as the deployed binary has it: no test module (by convention the file's
/// tail, from `#[cfg(test)]`) and no comment lines, so that neither counts as a use.
fn production_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files whose name is `tests.rs` are test modules (`mod tests;` under `#[cfg(test)]`).
fn production_code_under(dirs: &[PathBuf]) -> String {
    let mut files = Vec::new();
    for d in dirs {
        rust_files(d, &mut files);
    }
    files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|p| production_code(p))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `UpdateItem` → `update_item`: the AWS SDK for Rust's name for an API operation.
fn snake(op: &str) -> String {
    let mut s = String::new();
    for (i, c) in op.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

/// Does the code call the operation (`.update_item()` on an SDK client)?
fn calls(code: &str, op: &str) -> bool {
    code.contains(&format!(".{}()", snake(op)))
}

/// Does the code make a call the action authorises? SQS authorises each batch operation by its
/// single action (SendMessageBatch by sqs:SendMessage, DeleteMessageBatch by sqs:DeleteMessage,
/// ChangeMessageVisibilityBatch by sqs:ChangeMessageVisibility).
fn uses(code: &str, service: &str, op: &str) -> bool {
    calls(code, op) || (service == "sqs" && calls(code, &format!("{op}Batch")))
}

/// The adapter source of each table: `RECORDS_TABLE` → `shared/src/adapters/dynamodb/records.rs`.
fn table_adapters() -> BTreeMap<&'static str, PathBuf> {
    schema::TABLES
        .iter()
        .map(|s| {
            let stem = s
                .env_var
                .strip_suffix("_TABLE")
                .expect("table variables end in _TABLE")
                .to_ascii_lowercase();
            let path = root().join(format!("shared/src/adapters/dynamodb/{stem}.rs"));
            assert!(
                path.is_file(),
                "{} has an adapter at {}",
                s.logical_id,
                path.display()
            );
            (s.logical_id, path)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checks (each returns what it found wrong)
// ---------------------------------------------------------------------------------------------

fn check_functions_match_crates(t: &Value, crates: &BTreeSet<String>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut by_binary: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, f) in functions(t) {
        let meta = &f["Metadata"];
        if meta["BuildMethod"].as_str() != Some("rust-cargolambda") {
            bad.push(format!(
                "{id}: Metadata.BuildMethod is not rust-cargolambda"
            ));
        }
        match meta["BuildProperties"]["Binary"].as_str() {
            Some(b) => by_binary.entry(b.to_owned()).or_default().push(id.clone()),
            None => bad.push(format!("{id}: no Metadata.BuildProperties.Binary")),
        }
        let expect = [
            ("CodeUri", yaml(".")),
            ("Runtime", yaml("provided.al2023")),
            ("Handler", yaml("bootstrap")),
            ("Architectures", yaml("[arm64]")),
        ];
        for (prop, want) in expect {
            let got = effective(t, f, prop);
            if got != Some(&want) {
                bad.push(format!("{id}: {prop} is {got:?}, want {want:?}"));
            }
        }
    }
    for (binary, ids) in &by_binary {
        if !crates.contains(binary) {
            bad.push(format!(
                "{ids:?}: Binary {binary} is no crate under functions/"
            ));
        }
        if ids.len() > 1 {
            bad.push(format!("{ids:?}: {} functions build {binary}", ids.len()));
        }
    }
    for c in crates {
        if !by_binary.contains_key(c) {
            bad.push(format!("functions/{c}: no {FUNCTION} with Binary {c}"));
        }
    }
    bad
}

/// A crate's binary is what `BuildProperties.Binary` names: its package name is its folder's,
/// and it has `src/main.rs`.
fn check_crate_builds_its_folder_name(name: &str) -> Vec<String> {
    let dir = root().join("functions").join(name);
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("read Cargo.toml");
    let package = manifest
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
        });
    let mut bad = Vec::new();
    if package.as_deref() != Some(name) {
        bad.push(format!("functions/{name}: package name is {package:?}"));
    }
    if !dir.join("src/main.rs").is_file() {
        bad.push(format!("functions/{name}: no src/main.rs"));
    }
    bad
}

/// Every policy statement of the template, with where it is. Statements under `Fn::If` count
/// on both branches.
fn statements(t: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a Value)>) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    let key = k.as_str().unwrap_or("?");
                    let here = format!("{at}.{key}");
                    if key == "Statement" {
                        let list: Vec<&Value> = match child {
                            Value::Sequence(items) => items.iter().flat_map(alternatives).collect(),
                            other => alternatives(other),
                        };
                        for (i, s) in list.into_iter().enumerate() {
                            out.push((format!("{here}[{i}]"), s));
                        }
                    } else {
                        walk(child, &here, out);
                    }
                }
            }
            Value::Sequence(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}[{i}]"), out);
                }
            }
            Value::Tagged(tagged) => walk(&tagged.value, at, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&t["Resources"], "Resources", &mut out);
    out
}

fn strings(v: &Value) -> Vec<&Value> {
    match v {
        Value::Sequence(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// Inline statements only (no managed policy, no SAM policy template: both grant more than the
/// code calls), no `*` in an action, no bare `*` resource, no `NotAction` / `NotResource`.
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
        let principal = s.get("Principal").is_some();
        if !principal && s.get("Resource").is_none() {
            bad.push(format!("{at}: no Resource"));
        }
    }
    bad
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
                    if !polled && !uses(&all_code, service, op) {
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

/// The DynamoDB actions a function is granted: `(table, index?) → actions`.
fn dynamodb_grants(f: &Value) -> BTreeMap<(String, Option<String>), BTreeSet<String>> {
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

/// A function's policy statements, each with the condition it is granted under (`Fn::If`:
/// `Some("Cond")` for the first branch, `Some("!Cond")` for the second; `AWS::NoValue` left out).
fn function_statements(f: &Value) -> Vec<(Option<String>, &Value)> {
    let mut out = Vec::new();
    let policies = f["Properties"]
        .get("Policies")
        .map(strings)
        .unwrap_or_default();
    for p in policies {
        for s in p.get("Statement").map(strings).unwrap_or_default() {
            match intrinsic(s) {
                Some((f, Value::Sequence(args))) if f == "If" && args.len() == 3 => {
                    let cond = args[0].as_str().unwrap_or("?");
                    if !is_no_value(&args[1]) {
                        out.push((Some(cond.to_owned()), &args[1]));
                    }
                    if !is_no_value(&args[2]) {
                        out.push((Some(format!("!{cond}")), &args[2]));
                    }
                }
                _ => out.push((None, s)),
            }
        }
    }
    out
}

/// The SQS actions a function is granted: queue → actions.
fn sqs_grants(t: &Value, f: &Value) -> BTreeMap<String, BTreeSet<String>> {
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
fn granted_actions(f: &Value) -> BTreeSet<String> {
    function_statements(f)
        .into_iter()
        .flat_map(|(_, s)| s.get("Action").map(strings).unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// A secret read the way `shared::adapters::secrets` does (the ARN, or `ssm:<name>`) is granted
/// once per store, each only when its parameter is set (condition `Has<Parameter>`), on exactly
/// that secret or parameter; and nothing else is granted under a condition.
fn check_secret_grants(t: &Value, f: &Value, arn_param: &str, name_param: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let conditional: Vec<(String, &Value)> = function_statements(f)
        .into_iter()
        .filter_map(|(c, s)| Some((c?, s)))
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

/// A function's environment (Globals merged in).
fn environment(t: &Value, f: &Value) -> BTreeMap<String, Value> {
    let mut vars = BTreeMap::new();
    for scope in [&t["Globals"]["Function"], &f["Properties"]] {
        if let Some(m) = scope["Environment"]["Variables"].as_mapping() {
            for (k, v) in m {
                vars.insert(k.as_str().expect("a name").to_owned(), v.clone());
            }
        }
    }
    vars
}

/// Every variable the template sets is one the code of `shared` or of the crate reads (a
/// misspelt name would silently be ignored). RUST_LOG is read by tracing-subscriber's
/// EnvFilter::try_from_default_env.
fn check_environment_is_read(vars: &BTreeMap<String, Value>, krate: &str) -> Vec<String> {
    let dir = root().join("functions").join(krate);
    if !dir.join("src").is_dir() {
        return vec![format!("functions/{krate}/src does not exist (yet)")];
    }
    let code = production_code_under(&[root().join("shared/src"), dir.join("src")]);
    vars.keys()
        .filter(|name| *name != "RUST_LOG" && !code.contains(&format!("\"{name}\"")))
        .map(|name| format!("{name} is set but never read by shared/ or functions/{krate}/"))
        .collect()
}

/// The parameter a property refers to (`!Ref P`), with P's definition.
fn parameter_of<'a>(t: &'a Value, prop: &Value) -> Option<(String, &'a Value)> {
    let (f, arg) = intrinsic(prop)?;
    let name = arg.as_str().filter(|_| f == "Ref")?;
    Some((name.to_owned(), t["Parameters"].get(name)?))
}

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
        if p.get("SqsManagedSseEnabled").and_then(Value::as_bool) != Some(true) {
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

fn alarms(t: &Value) -> Vec<(String, &Value)> {
    resources_of_type(t, ALARM)
        .into_iter()
        .map(|(id, r)| (id, &r["Properties"]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn template_functions_match_the_function_crates() {
    let t = template();
    let crates = function_crates();
    assert!(crates.contains("delta-sync"), "functions/: {crates:?}");
    assert_eq!(
        check_functions_match_crates(&t, &crates),
        Vec::<String>::new()
    );
    for c in &crates {
        assert_eq!(check_crate_builds_its_folder_name(c), Vec::<String>::new());
    }

    // The check sees a crate without a function, a function without a crate, a duplicate and
    // a wrong CodeUri.
    let mut more = crates.clone();
    more.insert("no-such-function".into());
    let found = check_functions_match_crates(&t, &more);
    assert!(
        found
            .iter()
            .any(|b| b.contains("functions/no-such-function")),
        "{found:?}"
    );

    let mut broken = t.clone();
    broken["Resources"]["DeltaSyncFunction"]["Metadata"]["BuildProperties"]["Binary"] =
        "delta".into();
    let found = check_functions_match_crates(&broken, &crates);
    assert!(found.iter().any(|b| b.contains("is no crate")), "{found:?}");
    assert!(
        found.iter().any(|b| b.contains("functions/delta-sync")),
        "{found:?}"
    );

    let mut twice = t.clone();
    let copy = twice["Resources"]["DeltaSyncFunction"].clone();
    twice["Resources"]["DeltaSyncFunctionCopy"] = copy;
    let found = check_functions_match_crates(&twice, &crates);
    assert!(
        found
            .iter()
            .any(|b| b.contains("2 functions build delta-sync")),
        "{found:?}"
    );

    let mut elsewhere = t.clone();
    elsewhere["Resources"]["DeltaSyncFunction"]["Properties"]["CodeUri"] =
        "functions/delta-sync".into();
    let found = check_functions_match_crates(&elsewhere, &crates);
    assert!(found.iter().any(|b| b.contains("CodeUri")), "{found:?}");
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
    // No adapter scans.
    let found = with("{Effect: Allow, Action: dynamodb:Scan, Resource: !GetAtt RecordsTable.Arn}");
    assert!(
        found
            .iter()
            .any(|b| b.contains("dynamodb:Scan on RecordsTable")),
        "{found:?}"
    );
    // The control adapter deletes items, the records adapter never does: per table.
    let found =
        with("{Effect: Allow, Action: dynamodb:DeleteItem, Resource: !GetAtt RecordsTable.Arn}");
    assert!(
        found
            .iter()
            .any(|b| b.contains("dynamodb:DeleteItem on RecordsTable")),
        "{found:?}"
    );
    let found =
        with("{Effect: Allow, Action: dynamodb:DeleteItem, Resource: !GetAtt ControlTable.Arn}");
    assert_eq!(
        found,
        Vec::<String>::new(),
        "the control adapter does call DeleteItem"
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
    let mut broken = t.clone();
    let mut list = statements_of(&mut broken);
    let n = list.len();
    list[n - 2] = yaml(
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
    list.pop();
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

/// Every variable the template sets is one the code reads (a misspelt name would silently be
/// ignored), the numbers parse, the secret's `ssm:` prefix is the one the code recognises, and
/// the lease outlives the longest run.
#[test]
fn template_delta_sync_environment_is_what_the_code_reads() {
    let t = template();
    let f = function(&t, "delta-sync");
    let mut vars: BTreeMap<String, Value> = BTreeMap::new();
    for scope in [&t["Globals"]["Function"], &f["Properties"]] {
        if let Some(m) = scope["Environment"]["Variables"].as_mapping() {
            for (k, v) in m {
                vars.insert(k.as_str().expect("a name").to_owned(), v.clone());
            }
        }
    }
    let code = production_code_under(&[
        root().join("shared/src"),
        root().join("functions/delta-sync/src"),
    ]);
    for name in vars.keys() {
        // RUST_LOG is read by tracing-subscriber's EnvFilter::try_from_default_env.
        if name != "RUST_LOG" {
            assert!(
                code.contains(&format!("\"{name}\"")),
                "{name} is set but never read"
            );
        }
    }
    for s in schema::TABLES {
        assert!(is_ref_to(&vars[s.env_var], s.logical_id), "{}", s.env_var);
    }
    assert!(is_ref_to(&vars["SOURCE_BASE_URL"], "SourceBaseUrl"));
    let numbers: BTreeMap<&str, u64> = ["DELTA_OVERLAP_SECONDS", "DELTA_SAFETY_MARGIN_SECONDS"]
        .into_iter()
        .map(|n| {
            let v = vars[n]
                .as_str()
                .unwrap_or_else(|| panic!("{n} is a string"));
            (
                n,
                v.parse()
                    .unwrap_or_else(|_| panic!("{n}={v} is a whole number")),
            )
        })
        .collect();
    assert_eq!(numbers["DELTA_OVERLAP_SECONDS"], 120);
    assert_eq!(numbers["DELTA_SAFETY_MARGIN_SECONDS"], 20);

    // SOURCE_SECRET_ID: the ARN, or "ssm:<name>", or empty (auth none / local secret).
    let ids = alternatives(&vars["SOURCE_SECRET_ID"]);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(is_ref_to(ids[0], "SourceSecretArn"));
    let ssm = intrinsic(ids[1]).and_then(|(f, a)| (f == "Sub").then_some(a));
    let ssm = ssm.and_then(Value::as_str).expect("!Sub ssm:...");
    let example = ssm.replace("${SourceSecretParameter}", "/sync-engine/source-secret");
    assert_eq!(
        SecretSource::parse(&example),
        SecretSource::Ssm("/sync-engine/source-secret".into())
    );
    assert_eq!(ids[2].as_str(), Some(""));

    // Timeout: the parameter, whose range keeps a run longer than the safety margin and
    // shorter than the lease (so an overlapping run is refused, never racing the first).
    assert!(is_ref_to(
        &f["Properties"]["Timeout"],
        "DeltaTimeoutSeconds"
    ));
    let timeout = &t["Parameters"]["DeltaTimeoutSeconds"];
    let min = timeout["MinValue"].as_u64().expect("MinValue");
    let max = timeout["MaxValue"].as_u64().expect("MaxValue");
    assert!(min > numbers["DELTA_SAFETY_MARGIN_SECONDS"], "{min}");
    assert!(max <= 900, "Lambda's limit");
    let lease_us = DeltaOptions::default().lease_ttl_us;
    assert!(
        lease_us > (max as i64) * 1_000_000,
        "the lease ({lease_us} µs) outlives the longest run ({max} s)"
    );
    assert!(
        f["Properties"]
            .get("ReservedConcurrentExecutions")
            .is_none(),
        "leases keep runs apart; reserved concurrency would only take from the account's pool"
    );
}

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

/// Every alarm notifies the optional topic, and only when there is one.
fn check_alarm_topic(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    for (id, a) in alarms(t) {
        for key in ["AlarmActions", "OKActions"] {
            let topics = alternatives(&a[key]);
            let ok = matches!(intrinsic(&a[key]), Some((f, Value::Sequence(args)))
                if f == "If" && args[0].as_str() == Some("HasAlarmTopic") && is_no_value(&args[2]))
                && topics.len() == 1
                && topics[0].as_sequence().is_some_and(|s| s.len() == 1)
                && is_ref_to(&topics[0][0], "AlarmTopicArn");
            if !ok {
                bad.push(format!("{id}: {key} is {:?}", a.get(key)));
            }
        }
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
fn template_every_alarm_notifies_the_optional_topic() {
    let t = template();
    assert!(alarms(&t).len() >= 5, "{:?}", alarms(&t));
    assert_eq!(check_alarm_topic(&t), Vec::<String>::new());
    let cond = &t["Conditions"]["HasAlarmTopic"];
    assert_eq!(cond, &yaml("!Not [!Equals [!Ref AlarmTopicArn, '']]"));

    let mut broken = t.clone();
    broken["Resources"]["DeadLetterQueueAlarm"]["Properties"]["AlarmActions"] =
        yaml("[!Ref AlarmTopicArn]");
    let found = check_alarm_topic(&broken);
    assert!(
        found
            .iter()
            .any(|b| b.contains("DeadLetterQueueAlarm: AlarmActions")),
        "{found:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks: the HTTP API, the ingest function, the queues, the worker
// ---------------------------------------------------------------------------------------------

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

/// The ingest function sends to the work queue and reads its secret, nothing else; its
/// environment is what the code reads; exactly one webhook secret must be given.
#[test]
fn template_webhook_ingest_environment_and_grants() {
    let t = template();
    let f = function(&t, "webhook-ingest");
    let vars = environment(&t, f);
    assert!(is_ref_to(&vars["QUEUE_URL"], "WorkQueue"), "{vars:?}");
    assert_eq!(resource_type(&t, "WorkQueue"), Some(QUEUE));
    // WEBHOOK_SECRET_ID: the ARN or "ssm:<name>"; never empty (webhooks are always verified).
    let ids = alternatives(&vars["WEBHOOK_SECRET_ID"]);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(is_ref_to(ids[0], "WebhookSecretArn"), "{ids:?}");
    let ssm = intrinsic(ids[1]).and_then(|(f, a)| (f == "Sub").then_some(a));
    let ssm = ssm.and_then(Value::as_str).expect("!Sub ssm:...");
    let example = ssm.replace("${WebhookSecretParameter}", "/sync-engine/webhook-secret");
    assert_eq!(
        SecretSource::parse(&example),
        SecretSource::Ssm("/sync-engine/webhook-secret".into())
    );
    // Both secret parameters take what the source secret's do.
    for (webhook, source) in [
        ("WebhookSecretArn", "SourceSecretArn"),
        ("WebhookSecretParameter", "SourceSecretParameter"),
    ] {
        assert_eq!(
            t["Parameters"][webhook]["AllowedPattern"], t["Parameters"][source]["AllowedPattern"],
            "{webhook}"
        );
    }
    // The rule: one of them, not both.
    let assertions = t["Rules"]["OneWebhookSecret"]["Assertions"]
        .as_sequence()
        .expect("Rules.OneWebhookSecret");
    assert_eq!(
        assertions
            .iter()
            .map(|a| a["Assert"].clone())
            .collect::<Vec<_>>(),
        vec![
            yaml(
                "!Or [!Not [!Equals [!Ref WebhookSecretArn, '']], !Not [!Equals [!Ref WebhookSecretParameter, '']]]"
            ),
            yaml(
                "!Or [!Equals [!Ref WebhookSecretArn, ''], !Equals [!Ref WebhookSecretParameter, '']]"
            ),
        ]
    );

    // Grants: SendMessage on the work queue, the secret, nothing more.
    let sqs = sqs_grants(&t, f);
    assert_eq!(
        sqs,
        BTreeMap::from([(
            "WorkQueue".to_owned(),
            BTreeSet::from(["SendMessage".to_owned()])
        )])
    );
    assert_eq!(
        check_secret_grants(&t, f, "WebhookSecretArn", "WebhookSecretParameter"),
        Vec::<String>::new()
    );
    assert_eq!(
        granted_actions(f),
        BTreeSet::from(
            [
                "sqs:SendMessage",
                "secretsmanager:GetSecretValue",
                "ssm:GetParameter"
            ]
            .map(str::to_owned)
        )
    );
    assert!(
        dynamodb_grants(f).is_empty(),
        "the worker deduplicates, not the ingest"
    );

    assert_eq!(
        check_environment_is_read(&vars, "webhook-ingest"),
        Vec::<String>::new()
    );
    let mut misspelt = vars.clone();
    misspelt.insert("QUEUE_ULR".into(), yaml("x"));
    let found = check_environment_is_read(&misspelt, "webhook-ingest");
    assert!(found.iter().any(|b| b.contains("QUEUE_ULR")), "{found:?}");
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

/// What a batch calls (`sync-worker` through the DynamoDB adapter): records BatchGetItem and
/// UpdateItem (upsert_many, soft_delete); control PutItem (claim_event, complete_event) and
/// DeleteItem (release_event). Exactly these, the poller's SQS actions on the work queue, and the
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
                set(&["PutItem", "DeleteItem"])
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
        set(&["dynamodb", "secretsmanager", "sqs", "ssm"]),
        "nothing beyond the tables, the queue and the secret"
    );
}

/// The worker's environment is what the code reads, with the issue's figures.
#[test]
fn template_sync_worker_environment_is_what_the_code_reads() {
    let t = template();
    let f = function(&t, "sync-worker");
    let vars = environment(&t, f);
    for s in schema::TABLES {
        assert!(is_ref_to(&vars[s.env_var], s.logical_id), "{}", s.env_var);
    }
    assert!(is_ref_to(&vars["SOURCE_BASE_URL"], "SourceBaseUrl"));
    let delta = environment(&t, function(&t, "delta-sync"));
    assert_eq!(
        vars["SOURCE_SECRET_ID"], delta["SOURCE_SECRET_ID"],
        "the same secret as delta sync"
    );
    for (var, param, default, min, max) in [
        (
            "NOT_FOUND_CEILING_PERCENT",
            "NotFoundCeilingPercent",
            50,
            1,
            Some(100),
        ),
        ("NOT_FOUND_MIN_COUNT", "NotFoundMinCount", 5, 1, None),
    ] {
        let (name, p) = parameter_of(&t, &vars[var]).unwrap_or_else(|| panic!("{var}"));
        assert_eq!(name, param);
        assert_eq!(p["Default"].as_i64(), Some(default), "{param}");
        assert_eq!(p["MinValue"].as_i64(), Some(min), "{param}");
        assert_eq!(p["MaxValue"].as_i64(), max, "{param}");
    }
    // Completed event IDs outlive the senders' retries: Planning Center's about 5 days.
    let days: u64 = vars["EVENT_RETENTION_DAYS"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("EVENT_RETENTION_DAYS is a whole number in a string");
    assert_eq!(days, 8);
    assert!(days > 5);
    assert!(
        f["Properties"]
            .get("ReservedConcurrentExecutions")
            .is_none(),
        "the mapping's MaximumConcurrency caps the worker; reserved concurrency would throttle \
         the poller's invocations"
    );
    assert_eq!(
        check_environment_is_read(&vars, "sync-worker"),
        Vec::<String>::new()
    );
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

// ---------------------------------------------------------------------------------------------
// Reconciliation
// ---------------------------------------------------------------------------------------------

/// The logical ID of the (one) state machine.
fn state_machine_id(t: &Value) -> String {
    let machines = resources_of_type(t, STATE_MACHINE);
    assert_eq!(machines.len(), 1, "one state machine");
    machines[0].0.clone()
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

/// What the steps call (`shared::sync::reconcile` through the adapters), exactly: records
/// Query on the live_ids index (destination) and UpdateItem (soft_delete); control GetItem
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
            (("RecordsTable".to_owned(), None), set(&["UpdateItem"])),
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
        set(&["dynamodb", "s3", "secretsmanager", "sqs", "ssm", "states"]),
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

/// Every variable is read by the code; the tables, bucket and queue are this stack's; the
/// thresholds default to the code's defaults; the approval's timeout is the state machine's.
#[test]
fn template_reconcile_environment_is_what_the_code_reads() {
    use shared::sync::reconcile::ReconcileOptions;
    let t = template();
    let f = function(&t, "reconcile");
    let vars = environment(&t, f);
    assert_eq!(
        check_environment_is_read(&vars, "reconcile"),
        Vec::<String>::new()
    );
    for s in schema::TABLES {
        assert!(is_ref_to(&vars[s.env_var], s.logical_id), "{}", s.env_var);
    }
    assert!(is_ref_to(&vars["SOURCE_BASE_URL"], "SourceBaseUrl"));
    assert!(is_ref_to(&vars["SPILL_BUCKET"], "SpillBucket"));
    assert_eq!(resource_type(&t, "SpillBucket"), Some(BUCKET));
    assert!(
        is_ref_to(&vars["QUEUE_URL"], "WorkQueue"),
        "the worker's queue"
    );
    let delta = environment(&t, function(&t, "delta-sync"));
    assert_eq!(vars["SOURCE_SECRET_ID"], delta["SOURCE_SECRET_ID"]);

    let d = ReconcileOptions::default();
    for (var, param, default) in [
        (
            "RECONCILE_MAX_DELETE_PERCENT",
            "ReconcileMaxDeletePercent",
            (d.max_delete_share * 100.0).round() as u64,
        ),
        (
            "RECONCILE_MAX_DELETE_COUNT",
            "ReconcileMaxDeleteCount",
            d.max_delete_count,
        ),
        (
            "RECONCILE_MAX_CONFIRMATIONS",
            "ReconcileMaxConfirmations",
            d.max_confirmations,
        ),
        (
            "RECONCILE_TARGETED_LIMIT",
            "ReconcileTargetedLimit",
            d.targeted_limit,
        ),
        ("RECONCILE_RUN_SIZE", "ReconcileRunSize", d.run_size as u64),
    ] {
        let (name, p) = parameter_of(&t, &vars[var]).unwrap_or_else(|| panic!("{var}"));
        assert_eq!(name, param, "{var}");
        assert_eq!(
            p["Default"].as_u64(),
            Some(default),
            "{param}'s default is the code's"
        );
        assert!(
            p["MinValue"].as_u64().is_some() && p["MaxValue"].as_u64().is_some(),
            "{param}"
        );
    }
    let (name, _) =
        parameter_of(&t, &vars["RECONCILE_APPROVAL_TIMEOUT_SECONDS"]).expect("a parameter");
    let sm = state_machine_id(&t);
    let subs = &t["Resources"][sm.as_str()]["Properties"]["DefinitionSubstitutions"];
    assert!(
        is_ref_to(&subs["ApprovalTimeoutSeconds"], &name),
        "the lease kept during the wait and the wait are one parameter"
    );
    let margin: u64 = vars["RECONCILE_SAFETY_MARGIN_SECONDS"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a whole number");

    // The longest step fits the function, and the lease outlives a step.
    let timeout = f["Properties"]["Timeout"]
        .as_u64()
        .expect("a literal Timeout");
    assert_eq!(timeout, 900);
    assert!(margin > 0 && margin < timeout / 10, "{margin}");
    assert!(f["Properties"]["MemorySize"].as_u64() >= Some(512));
    assert!(
        d.lease_ttl_us > timeout as i64 * 1_000_000,
        "the reconciliation lease outlives one step"
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
    assert_eq!(
        b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            ["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
            .as_str(),
        Some("AES256")
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
fn template_alarms_on_records_too_large_for_the_store() {
    let t = template();
    let code = production_code_under(&[root().join("shared/src")]);
    // Records too large for the store: skipped by delta sync, summed over every entity.
    let a = &t["Resources"]["RecordsRejectedAlarm"]["Properties"];
    let q = a["Metrics"][0]["Expression"].as_str().expect("a query");
    assert!(
        q.contains("SUM(RecordsRejected)")
            && q.contains(&format!(
                "SCHEMA(\"{}\", Entity, Strategy)",
                telemetry::NAMESPACE
            ))
            && q.contains("Strategy = 'delta'")
            && !q.contains('*'),
        "{q}"
    );
    assert!(code.contains("(\"Strategy\", \"delta\")"));
    assert!(code.contains("(\"RecordsRejected\", "), "the code emits it");
    assert_eq!(a["Threshold"].as_i64(), Some(0));
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
