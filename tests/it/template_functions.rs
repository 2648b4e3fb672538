//! `template.yaml`'s functions, checked against the code, offline (no emulator):
//! - every crate under `functions/` is exactly one `AWS::Serverless::Function` built by
//!   cargo-lambda from the workspace root, and every such function is a crate;
//! - IAM is inline statements only, with no `*` action and no `*` resource;
//! - every action granted is a call the code makes: a DynamoDB action on a table is an SDK call
//!   in that table's adapter (`shared/src/adapters/dynamodb/<table>.rs`), any other action an SDK
//!   call somewhere in `shared/src` or the functions; so a grant the code stops using fails;
//! - the delta function: its schedule sends `events/delta-sync/all-entities.json`, its
//!   environment is what the code reads, its grants cover what a run calls, its lease outlives
//!   its longest timeout, and an alarm watches its errors.
//!
//! Each check returns its findings as a list, so that the tests can also show it catching a
//! broken copy of the template (a check that finds nothing anywhere proves nothing).

use serde_yaml::Value;
use shared::adapters::dynamodb::schema;
use shared::adapters::secrets::SecretSource;
use shared::sync::delta::DeltaOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FUNCTION: &str = "AWS::Serverless::Function";

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
    for (id, f) in functions(t) {
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
            match (r.as_str(), intrinsic(r)) {
                (Some(r), _) if r.contains('*') => bad.push(format!("{at}: resource {r}")),
                (_, Some((f, arg))) if f == "Sub" => {
                    let s = arg.as_str().unwrap_or_default();
                    if s.contains('*') && !s.ends_with("/index/*") {
                        bad.push(format!("{at}: resource {s}"));
                    }
                }
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
            if service != "dynamodb" {
                if !calls(&all_code, op) {
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
    more.insert("webhook-ingest".into());
    let found = check_functions_match_crates(&t, &more);
    assert!(
        found.iter().any(|b| b.contains("functions/webhook-ingest")),
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
    let stmts = &function(&t, "delta-sync")["Properties"]["Policies"][0]["Statement"];
    let conditional: Vec<(&str, &Value)> = stmts
        .as_sequence()
        .expect("a statement list")
        .iter()
        .filter_map(|s| match intrinsic(s) {
            Some((f, Value::Sequence(args))) if f == "If" => {
                assert!(
                    is_no_value(&args[2]),
                    "{s:?}: granted only when its parameter is set"
                );
                Some((args[0].as_str().expect("a condition name"), &args[1]))
            }
            _ => None,
        })
        .collect();
    let by_action: BTreeMap<&str, (&str, &Value)> = conditional
        .iter()
        .map(|(cond, s)| {
            (
                s["Action"].as_str().expect("one action"),
                (*cond, &s["Resource"]),
            )
        })
        .collect();
    let (cond, res) = by_action["secretsmanager:GetSecretValue"];
    assert_eq!(cond, "HasSourceSecretArn");
    assert!(is_ref_to(res, "SourceSecretArn"), "{res:?}");
    let (cond, res) = by_action["ssm:GetParameter"];
    assert_eq!(cond, "HasSourceSecretParameter");
    let sub = intrinsic(res).and_then(|(f, a)| (f == "Sub").then_some(a));
    assert_eq!(
        sub.and_then(Value::as_str),
        Some(
            "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${SourceSecretParameter}"
        )
    );
    assert_eq!(by_action.len(), 2, "{by_action:?}");
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

#[test]
fn template_alarms_when_delta_sync_keeps_failing() {
    let t = template();
    let id = functions(&t)
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some("delta-sync"))
        .map(|(id, _)| id)
        .expect("the delta function");
    let alarms: Vec<&Value> = t["Resources"]
        .as_mapping()
        .expect("Resources")
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|r| &r["Properties"])
        .filter(|p| {
            p["Namespace"].as_str() == Some("AWS/Lambda")
                && p["MetricName"].as_str() == Some("Errors")
                && p["Dimensions"].as_sequence().is_some_and(|d| {
                    d.iter().any(|d| {
                        d["Name"].as_str() == Some("FunctionName") && is_ref_to(&d["Value"], &id)
                    })
                })
        })
        .collect();
    assert_eq!(alarms.len(), 1, "one Errors alarm on {id}");
    let a = alarms[0];
    assert_eq!(
        a["ComparisonOperator"].as_str(),
        Some("GreaterThanThreshold")
    );
    assert_eq!(a["Threshold"].as_f64(), Some(0.0));
    assert_eq!(a["Statistic"].as_str(), Some("Sum"));
    assert_eq!(a["Period"].as_u64(), Some(300));
    assert_eq!(a["EvaluationPeriods"].as_u64(), Some(3));
    // Notifies the optional topic, and only when there is one.
    for key in ["AlarmActions", "OKActions"] {
        let topics = alternatives(&a[key]);
        assert_eq!(topics.len(), 1, "{key}: {topics:?}");
        assert!(is_ref_to(&topics[0][0], "AlarmTopicArn"), "{key}");
    }
    let cond = &t["Conditions"]["HasAlarmTopic"];
    assert_eq!(cond, &yaml("!Not [!Equals [!Ref AlarmTopicArn, '']]"));
}
