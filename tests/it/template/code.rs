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
