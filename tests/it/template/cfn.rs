//! A small CloudFormation query over `template.yaml`: loading it, finding resources and functions,
//! resolving `!Ref`, `!GetAtt`, `!Sub` and `Fn::If` alternatives, parameters and their defaults,
//! and reading the IAM statements, environments and alarms of a resource.

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub(super) const FUNCTION: &str = "AWS::Serverless::Function";

pub(super) const QUEUE: &str = "AWS::SQS::Queue";

pub(super) const MAPPING: &str = "AWS::Lambda::EventSourceMapping";

pub(super) const ALARM: &str = "AWS::CloudWatch::Alarm";

pub(super) const STATE_MACHINE: &str = "AWS::Serverless::StateMachine";

pub(super) const BUCKET: &str = "AWS::S3::Bucket";

pub(super) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(super) fn template() -> Value {
    let path = root().join("template.yaml");
    let text = std::fs::read_to_string(&path).expect("read template.yaml");
    serde_yaml::from_str(&text).expect("template.yaml is YAML")
}

pub(super) fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("test YAML")
}

/// An intrinsic function, short (`!Ref X`) or long (`{Ref: X}`, `{"Fn::Sub": ...}`) form:
/// its name without `Fn::` and its argument.
pub(super) fn intrinsic(v: &Value) -> Option<(String, &Value)> {
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

pub(super) fn is_ref_to(v: &Value, target: &str) -> bool {
    matches!(intrinsic(v), Some((f, arg)) if f == "Ref" && arg.as_str() == Some(target))
}

pub(super) fn is_no_value(v: &Value) -> bool {
    is_ref_to(v, "AWS::NoValue")
}

/// The values a property may take: both branches of an `Fn::If` (nested ones too), without
/// `AWS::NoValue`; the value itself otherwise.
pub(super) fn alternatives(v: &Value) -> Vec<&Value> {
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
pub(super) fn table_arn(v: &Value) -> Option<(String, Option<String>)> {
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
pub(super) fn effective<'a>(t: &'a Value, f: &'a Value, prop: &str) -> Option<&'a Value> {
    f["Properties"]
        .get(prop)
        .or_else(|| t["Globals"]["Function"].get(prop))
}

/// The serverless functions: `(logical ID, resource)`.
pub(super) fn functions(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(FUNCTION))
        .map(|(k, r)| (k.as_str().expect("logical IDs are strings").to_owned(), r))
        .collect()
}

pub(super) fn function<'a>(t: &'a Value, binary: &str) -> &'a Value {
    functions(t)
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("a function whose Binary is {binary}"))
}

/// The logical ID of the function whose `Binary` is `binary`.
pub(super) fn function_id(t: &Value, binary: &str) -> String {
    functions(t)
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("a function whose Binary is {binary}"))
}

pub(super) fn resource_type<'a>(t: &'a Value, id: &str) -> Option<&'a str> {
    t["Resources"].get(id)?["Type"].as_str()
}

pub(super) fn resources_of_type<'a>(t: &'a Value, ty: &str) -> Vec<(String, &'a Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(ty))
        .map(|(k, r)| (k.as_str().expect("logical IDs are strings").to_owned(), r))
        .collect()
}

/// `!Ref X` or `!GetAtt X.Arn`: X.
pub(super) fn ref_or_arn_of(v: &Value) -> Option<String> {
    match intrinsic(v) {
        Some((f, arg)) if f == "Ref" => arg.as_str().map(str::to_owned),
        _ => match table_arn(v) {
            Some((id, None)) => Some(id),
            _ => None,
        },
    }
}

/// A queue's ARN (`!GetAtt Q.Arn`, `!Sub "${Q.Arn}"`) where Q is a queue of the template.
pub(super) fn queue_arn(t: &Value, v: &Value) -> Option<String> {
    match table_arn(v) {
        Some((id, None)) if resource_type(t, &id) == Some(QUEUE) => Some(id),
        _ => None,
    }
}

/// A bucket's ARN (`!GetAtt B.Arn`) where B is a bucket of the template.
pub(super) fn bucket_arn(t: &Value, v: &Value) -> Option<String> {
    match table_arn(v) {
        Some((id, None)) if resource_type(t, &id) == Some(BUCKET) => Some(id),
        _ => None,
    }
}

/// The objects under a key prefix of a bucket of the template: `!Sub "${B.Arn}/<prefix>/*"`
/// with a literal, non-empty prefix: `(B, "<prefix>/")`.
pub(super) fn bucket_objects(t: &Value, v: &Value) -> Option<(String, String)> {
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
pub(super) fn state_machine_named(t: &Value, v: &Value) -> Option<String> {
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
pub(super) fn invoked_by_state_machine(t: &Value, id: &str) -> BTreeSet<String> {
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
pub(super) fn owner_of(at: &str) -> &str {
    at.split('.').nth(1).unwrap_or_default()
}

/// A parameter's value when deployed with `assigned` (else its default), as a string (what
/// `!Ref` gives and `Fn::FindInMap` looks up).
pub(super) fn parameter_value(
    t: &Value,
    name: &str,
    assigned: &BTreeMap<String, Value>,
) -> Option<String> {
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
pub(super) fn resolve_number(
    t: &Value,
    v: &Value,
    assigned: &BTreeMap<String, Value>,
) -> Option<i64> {
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
pub(super) fn choices(t: &Value, prop: &Value) -> Vec<Option<(String, Value)>> {
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
pub(super) struct Esm<'a> {
    pub(super) id: String,
    pub(super) function: Option<String>,
    pub(super) queue: Option<String>,
    pub(super) props: &'a Value,
}

pub(super) fn event_source_mappings(t: &Value) -> Vec<Esm<'_>> {
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
pub(super) fn esm_targets(t: &Value) -> BTreeSet<(String, String)> {
    event_source_mappings(t)
        .into_iter()
        .filter_map(|m| Some((m.function?, m.queue?)))
        .collect()
}

/// Every policy statement of the template, with where it is. Statements under `Fn::If` count
/// on both branches.
pub(super) fn statements(t: &Value) -> Vec<(String, &Value)> {
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

pub(super) fn strings(v: &Value) -> Vec<&Value> {
    match v {
        Value::Sequence(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// A function's policy statements, each with the condition it is granted under (`Fn::If`:
/// `Some("Cond")` for the first branch, `Some("!Cond")` for the second; `AWS::NoValue` left out).
pub(super) fn function_statements(f: &Value) -> Vec<(Option<String>, &Value)> {
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

/// A function's environment (Globals merged in).
pub(super) fn environment(t: &Value, f: &Value) -> BTreeMap<String, Value> {
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

/// The parameter a property refers to (`!Ref P`), with P's definition.
pub(super) fn parameter_of<'a>(t: &'a Value, prop: &Value) -> Option<(String, &'a Value)> {
    let (f, arg) = intrinsic(prop)?;
    let name = arg.as_str().filter(|_| f == "Ref")?;
    Some((name.to_owned(), t["Parameters"].get(name)?))
}

pub(super) fn alarms(t: &Value) -> Vec<(String, &Value)> {
    resources_of_type(t, ALARM)
        .into_iter()
        .map(|(id, r)| (id, &r["Properties"]))
        .collect()
}

/// The logical ID of the (one) state machine.
pub(super) fn state_machine_id(t: &Value) -> String {
    let machines = resources_of_type(t, STATE_MACHINE);
    assert_eq!(machines.len(), 1, "one state machine");
    machines[0].0.clone()
}
