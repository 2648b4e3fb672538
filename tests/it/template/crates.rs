//! Every crate under `functions/` is exactly one `AWS::Serverless::Function` built by cargo-lambda
//! from the workspace root, and every such function is a crate.

use super::cfn::*;
use super::code::*;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

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
