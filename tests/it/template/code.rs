//! What the code does, read from its source: the function crates, the production code (tests
//! left out), the SDK calls it makes, and which adapter serves which table.

use super::cfn::*;
use shared::adapters::dynamodb::schema;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates under `functions/` (folders with a Cargo.toml), read now, not listed by hand.
pub(super) fn function_crates() -> BTreeSet<String> {
    let dir = root().join("functions");
    std::fs::read_dir(&dir)
        .expect("read functions/")
        .map(|e| e.expect("a functions/ entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

pub(super) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub(super) fn production_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files whose name is `tests.rs` are test modules (`mod tests;` under `#[cfg(test)]`).
pub(super) fn production_code_under(dirs: &[PathBuf]) -> String {
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
pub(super) fn snake(op: &str) -> String {
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
pub(super) fn calls(code: &str, op: &str) -> bool {
    code.contains(&format!(".{}()", snake(op)))
}

/// Does the code make a call the action authorises? SQS authorises each batch operation by its
/// single action (SendMessageBatch by sqs:SendMessage, DeleteMessageBatch by sqs:DeleteMessage,
/// ChangeMessageVisibilityBatch by sqs:ChangeMessageVisibility).
pub(super) fn uses(code: &str, service: &str, op: &str) -> bool {
    calls(code, op) || (service == "sqs" && calls(code, &format!("{op}Batch")))
}

/// The adapter source of each table: `RECORDS_TABLE` → `shared/src/adapters/dynamodb/records.rs`.
pub(super) fn table_adapters() -> BTreeMap<&'static str, PathBuf> {
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

/// The module paths a piece of code names under `root` (`shared` in a function crate, `crate`
/// inside `shared`), each as its segments: `use shared::sync::worker::{WorkerDeps, process_batch}`
/// and `shared::core::deadline::within(..)` alike, grouped imports expanded
/// (`shared::adapters::{aws, sqs::SqsQueue}` gives `adapters::aws` and `adapters::sqs::SqsQueue`).
pub(super) fn named_paths(code: &str, root: &str) -> Vec<Vec<String>> {
    fn ident(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_'
    }
    /// The text of a `{...}` group starting at `s[0]`, without its braces.
    fn group(s: &str) -> Option<&str> {
        let mut depth = 0usize;
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&s[1..i]);
                    }
                }
                _ => {}
            }
        }
        None
    }
    fn expand(prefix: &[String], item: &str, out: &mut Vec<Vec<String>>) {
        let item = item.trim();
        let (head, rest) = match item.find('{') {
            Some(i) => (&item[..i], Some(&item[i..])),
            // `D as E`: the path is D.
            None => (item.split(" as ").next().unwrap_or_default(), None),
        };
        let mut path = prefix.to_vec();
        path.extend(
            head.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "self" && s.chars().all(ident))
                .map(str::to_owned),
        );
        match rest.and_then(group) {
            Some(inner) => {
                let mut depth = 0usize;
                let mut start = 0;
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            expand(&path, &inner[start..i], out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                expand(&path, &inner[start..], out);
                if prefix.len() < path.len() {
                    out.push(path);
                }
            }
            None if !path.is_empty() => out.push(path),
            None => {}
        }
    }
    let needle = format!("{root}::");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find(&needle) {
        let start = at + i;
        at = start + needle.len();
        if code[..start].chars().next_back().is_some_and(ident) {
            continue;
        }
        // The path: identifiers, `::` and whitespace, then maybe one `{...}` group.
        let rest = &code[at..];
        let end = rest
            .find(|c: char| !(ident(c) || c == ':' || c.is_whitespace()))
            .unwrap_or(rest.len());
        let mut item = rest[..end].to_owned();
        if rest[end..].starts_with('{')
            && let Some(inner) = group(&rest[end..])
        {
            item.push('{');
            item.push_str(inner);
            item.push('}');
        }
        expand(&[], &item, &mut out);
    }
    out
}

/// The files of the module of `shared` a path names: the longest prefix of it that is a
/// module (`sync::worker::WorkerOptions` → `shared/src/sync/worker.rs` and everything under
/// `shared/src/sync/worker/`).
pub(super) fn shared_module_files(path: &[String]) -> Vec<PathBuf> {
    let src = root().join("shared/src");
    for n in (1..=path.len()).rev() {
        let rel = path[..n].join("/");
        let file = src.join(format!("{rel}.rs"));
        let dir = src.join(&rel);
        if file.is_file() || dir.join("mod.rs").is_file() {
            let mut files = Vec::new();
            if file.is_file() {
                files.push(file);
            }
            rust_files(&dir, &mut files);
            return files;
        }
    }
    Vec::new()
}

/// Top-level modules of `shared` that define or implement the stores rather than use them: the
/// ports (trait definitions and their defaults), the adapters, the in-memory fakes.
const NOT_USERS: [&str; 3] = ["ports", "adapters", "memory"];

/// The production code a function runs that may use a store: its crate, and the modules of
/// `shared` it names, and those they name in turn (`crate::...`), but not [`NOT_USERS`].
pub(super) fn function_logic_code(binary: &str) -> String {
    let crate_code = production_code_under(&[root().join("functions").join(binary).join("src")]);
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut queue: Vec<Vec<String>> = named_paths(&crate_code, "shared");
    let mut code = vec![crate_code];
    while let Some(path) = queue.pop() {
        if path.first().is_none_or(|m| NOT_USERS.contains(&m.as_str())) {
            continue;
        }
        for file in shared_module_files(&path) {
            if file.file_name().is_some_and(|n| n == "tests.rs") || !seen.insert(file.clone()) {
                continue;
            }
            let text = production_code(&file);
            queue.extend(named_paths(&text, "crate"));
            // `super::x` and child modules are covered: a module's files include its folder.
            code.push(text);
        }
    }
    code.join("\n")
}

/// The methods of a trait of `shared/src/ports.rs` (`ControlStore` → `processed_events`, ...).
pub(super) fn port_methods(trait_name: &str) -> BTreeSet<String> {
    let code = production_code(&root().join("shared/src/ports.rs"));
    let start = code
        .find(&format!("pub trait {trait_name}"))
        .unwrap_or_else(|| panic!("shared/src/ports.rs defines {trait_name}"));
    let body = block_at(&code[start..]).unwrap_or_else(|| panic!("the body of {trait_name}"));
    fn_names(body)
}

/// The names of the functions defined in some code (`fn name(` / `fn name<`).
pub(super) fn fn_names(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("fn ") {
        let start = at + i;
        at = start + 3;
        if code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = code[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// The text inside the first `{...}` block of `code` (string literals skipped, so that the
/// braces of a `format!` do not count).
pub(super) fn block_at(code: &str) -> Option<&str> {
    let mut depth = 0usize;
    let mut open = None;
    let mut chars = code.char_indices().peekable();
    let mut in_string = false;
    while let Some((i, c)) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => {
                if depth == 0 {
                    open = Some(i + 1);
                }
                depth += 1;
            }
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return Some(&code[open?..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The bodies of the functions a file defines, by name (two of one name are joined).
pub(super) fn fn_bodies(code: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for name in fn_names(code) {
        let needle = format!("fn {name}");
        let mut at = 0;
        while let Some(i) = code[at..].find(&needle) {
            let start = at + i;
            at = start + needle.len();
            let next = code[at..].chars().next();
            if next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            // The signature ends at the body's `{` or, for a declaration, at `;`.
            let rest = &code[at..];
            let brace = rest.find('{');
            if brace.is_none_or(|b| rest.find(';').is_some_and(|s| s < b)) {
                continue;
            }
            if let Some(body) = block_at(rest) {
                out.entry(name.clone()).or_default().push_str(body);
            }
        }
    }
    out
}

/// String literals in some code that start a key with a prefix: `"event#{event_id}"` → `event#`
/// (lower-case word, then `#`).
pub(super) fn key_prefixes(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices('"') {
        let rest = &code[i + 1..];
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !word.is_empty() && rest[word.len()..].starts_with('#') {
            out.insert(format!("{word}#"));
        }
    }
    out
}

/// The DynamoDB operations the control adapter's code calls.
const DYNAMODB_OPS: [&str; 9] = [
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

/// Does `body` call the function `name` (`name(`, `.name(`, `::name(`, not `other_name(`)?
fn calls_fn(body: &str, name: &str) -> bool {
    body.match_indices(&format!("{name}(")).any(|(i, _)| {
        !body[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The functions of `bodies` that `start` reaches, itself included.
fn reached_from(bodies: &BTreeMap<String, String>, start: &str) -> BTreeSet<String> {
    let mut reached = BTreeSet::from([start.to_owned()]);
    let mut todo = vec![start.to_owned()];
    while let Some(f) = todo.pop() {
        for g in bodies.keys() {
            if !reached.contains(g) && calls_fn(&bodies[&f], g) {
                reached.insert(g.clone());
                todo.push(g.clone());
            }
        }
    }
    reached
}

/// What a function does on the control table, traced from its code: the `ControlStore`
/// methods its logic calls ([`function_logic_code`]), each followed into
/// `shared/src/adapters/dynamodb/control.rs` (its body and the functions of that file it calls,
/// such as `event_pk`): the DynamoDB operations there and the key prefixes the literals there
/// build, paired. A method the adapter does not implement is the port's default
/// (`shared/src/ports.rs`): the port methods that default (and the functions of ports.rs it
/// calls) calls are followed the same way. `Err` names a method neither file implements.
pub(super) fn control_keys(binary: &str) -> Result<BTreeSet<(String, String)>, Vec<String>> {
    // The control table's ports: ControlStore, and, for a function whose source client is the
    // deployed one (`adapters::deploy::load` gives it the budget in the control table), the
    // shared rate budget's BudgetStore, which the client calls for every request.
    let mut methods = port_methods("ControlStore");
    let crate_code = production_code_under(&[root().join("functions").join(binary).join("src")]);
    if crate_code.contains("deploy::load(") {
        methods.extend(port_methods("BudgetStore"));
    }
    let logic = function_logic_code(binary);
    let mut todo: Vec<String> = methods
        .iter()
        .filter(|m| logic.contains(&format!(".{m}(")))
        .cloned()
        .collect();
    let mut adapter = fn_bodies(&production_code(
        &root().join("shared/src/adapters/dynamodb/control.rs"),
    ));
    adapter.extend(fn_bodies(&production_code(
        &root().join("shared/src/adapters/dynamodb/budget.rs"),
    )));
    let port = fn_bodies(&production_code(&root().join("shared/src/ports.rs")));
    let mut traced = BTreeSet::new();
    let mut out = BTreeSet::new();
    let mut untraced = Vec::new();
    while let Some(method) = todo.pop() {
        if !traced.insert(method.clone()) {
            continue;
        }
        if !adapter.contains_key(&method) {
            if !port.contains_key(&method) {
                untraced.push(format!(
                    "{binary} calls ControlStore::{method}, which neither control.rs nor the \
                     port's default implements"
                ));
                continue;
            }
            let default: String = reached_from(&port, &method)
                .iter()
                .map(|f| port[f].as_str())
                .collect();
            todo.extend(
                methods
                    .iter()
                    .filter(|m| **m != method && default.contains(&format!(".{m}(")))
                    .cloned(),
            );
            continue;
        }
        let code: String = reached_from(&adapter, &method)
            .iter()
            .map(|f| adapter[f].as_str())
            .collect();
        let prefixes = key_prefixes(&code);
        for op in DYNAMODB_OPS {
            if calls(&code, op) {
                for p in &prefixes {
                    out.insert((op.to_owned(), p.clone()));
                }
            }
        }
    }
    if untraced.is_empty() {
        Ok(out)
    } else {
        Err(untraced)
    }
}
