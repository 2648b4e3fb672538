//! The shipped functions never compile `shared`'s `testing` feature (the in-memory ports and the
//! negative-control switches). Each Lambda is built on its own (`cargo lambda build -p <name>`,
//! SAM's `Binary: <name>`), so only its normal and build dependencies decide its features: a
//! test crate enabling `testing` cannot pull it in, but a function's own `[dependencies]` could.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages SAM builds: every folder under `functions/` (folder name = package name).
const FUNCTIONS: [&str; 4] = ["delta-sync", "webhook-ingest", "sync-worker", "reconcile"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Dependency edges as in a build of one package alone: dev-dependencies left out.
const SHIPPED: &str = "normal,build,features";

/// `cargo tree` of one package with the features each dependency is built with, along `edges`,
/// offline (Cargo.lock and the local registry cache suffice).
fn feature_tree(package: &str, edges: &str) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--locked",
            "--edges",
            edges,
            "--charset",
            "ascii",
            "--package",
            package,
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `cargo tree` of what a build at the workspace root selects with `selection` (no package:
/// the default members), along the shipped edges.
fn root_tree(selection: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--locked",
            "--edges",
            SHIPPED,
            "--charset",
            "ascii",
        ])
        .args(selection)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The features of `shared` a tree shows (`shared feature "<name>"` lines).
fn shared_features(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split("shared feature \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_function_is_built_with_the_testing_feature_of_shared() {
    let mut on_disk: Vec<String> = std::fs::read_dir(root().join("functions"))
        .expect("read functions/")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut listed = FUNCTIONS.map(str::to_owned).to_vec();
    listed.sort();
    assert_eq!(on_disk, listed, "a function was added or renamed: list it");
    for package in FUNCTIONS {
        let tree = feature_tree(package, SHIPPED);
        let features = shared_features(&tree);
        // Not vacuous: the tree does show shared's features.
        assert!(
            features.iter().any(|f| f == "default"),
            "{package}: no shared feature in the tree:\n{tree}"
        );
        assert!(
            !features.iter().any(|f| f == "testing"),
            "{package} would ship shared's `testing` feature (in-memory stores, negative \
             controls): take it out of [dependencies]; tests enable it in [dev-dependencies]"
        );
    }
}

/// The check can fail: the `tests` package, which enables `testing` in its dev-dependencies,
/// shows it once dev edges are included, and not without them.
#[test]
fn the_feature_check_sees_testing_where_it_is_enabled() {
    let testing = "testing".to_owned();
    assert!(!shared_features(&feature_tree("tests", SHIPPED)).contains(&testing));
    let with_dev = feature_tree("tests", "features");
    assert!(shared_features(&with_dev).contains(&testing), "{with_dev}");
}

/// SAM builds each function at the workspace root with `cargo lambda build --release --bin
/// <Binary>`, no package: cargo resolves features over the selected packages, the workspace's
/// `default-members`. Without them (every member) the bench's and testkit's `shared` features
/// (`testing`, `fuzz`) went into the deployed binaries (found by scripts/check-deploy, which
/// compares SAM's binaries with `cargo lambda build -p`'s).
#[test]
fn a_build_at_the_workspace_root_as_sam_runs_it_leaves_testing_out() {
    let tree = root_tree(&[]);
    let features = shared_features(&tree);
    assert!(features.iter().any(|f| f == "default"), "{tree}");
    for f in ["testing", "fuzz"] {
        assert!(
            !features.iter().any(|g| g == f),
            "a build at the workspace root (SAM's) gets shared's `{f}`: keep default-members \
             in Cargo.toml to functions/*"
        );
    }
    // The check can fail: over every member, as without default-members, they are there.
    let all = shared_features(&root_tree(&["--workspace"]));
    assert!(all.contains(&"testing".to_owned()), "{all:?}");
}
