//! The real `syncctl` binary, for tests that run it as an operator does.
//!
//! The `it` binary cannot name another package's binary (`CARGO_BIN_EXE_*` is set only for a
//! package's own tests), so [`syncctl_bin`] builds `syncctl` once per run with the cargo that
//! runs the tests, into the same target folder and profile, and runs the result.

use crate::harness::{dynamodb_client, emulators};
use shared::ports::{ControlStore, RecordStore};
use source_sim::SimHandle;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

/// The `syncctl` binary of this checkout, built (or found up to date) once per test run.
pub fn syncctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/it-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a profile folder");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root)
            .args(["build", "--offline", "--quiet", "-p", "syncctl", "--bin"])
            .arg("syncctl")
            .arg("--target-dir")
            .arg(target_dir);
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build -p syncctl failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join(format!("syncctl{}", std::env::consts::EXE_SUFFIX))
    })
}

/// The user name `syncctl` runs as (`USER`), the actor of a change made without `--actor`.
pub const LOCAL_USER: &str = "it-operator";

/// Where a scenario's records live, as `syncctl` flags.
pub enum Target {
    Local(PathBuf),
    Dynamo {
        endpoint: String,
        records: String,
        control: String,
    },
}

impl Target {
    pub fn args(&self) -> Vec<String> {
        match self {
            Target::Local(db) => vec!["--db".into(), db.display().to_string()],
            Target::Dynamo {
                endpoint,
                records,
                control,
            } => vec![
                "--endpoint-url".into(),
                endpoint.clone(),
                "--records-table".into(),
                records.clone(),
                "--control-table".into(),
                control.clone(),
            ],
        }
    }

    /// The same stores, in this process (records and control).
    pub async fn stores(&self) -> (Arc<dyn RecordStore>, Arc<dyn ControlStore>) {
        match self {
            Target::Local(db) => {
                let s = Arc::new(
                    shared::adapters::local::LocalStore::open(db).expect("open the store"),
                );
                (s.clone(), s)
            }
            Target::Dynamo {
                records, control, ..
            } => {
                let (r, c) =
                    shared::adapters::dynamodb::stores(dynamodb_client().await, records, control);
                (Arc::new(r), Arc::new(c))
            }
        }
    }

    /// The control store of the same tables, in this process.
    pub async fn control(&self) -> Arc<dyn ControlStore> {
        self.stores().await.1
    }

    /// The records of the same store, in this process (to soft-delete a record as
    /// reconciliation would).
    pub async fn open(&self) -> Arc<dyn RecordStore> {
        self.stores().await.0
    }
}

/// `syncctl ARGS <store flags>` against the simulator, run off the runtime's thread (the
/// simulator answers on it meanwhile).
pub async fn syncctl(sim: &SimHandle, target: &Target, args: &[&str]) -> Output {
    let bin = tokio::task::spawn_blocking(syncctl_bin)
        .await
        .expect("joined");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .args(target.args())
        .env_remove("SYNC_CONFIG")
        .env_remove("SYNC_LOCAL_DB")
        .env_remove("RECORDS_TABLE")
        .env_remove("CONTROL_TABLE")
        .env("SOURCE_BASE_URL", sim.base_url())
        .env("SOURCE_SECRET", "any")
        // Who an operator's change is recorded as: this user locally, moto's caller on AWS.
        .env("USER", LOCAL_USER)
        .env_remove("LOGNAME")
        .env("AWS_ENDPOINT_URL_STS", &emulators().moto_url)
        .env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || cmd.output().expect("syncctl runs"))
        .await
        .expect("joined")
}

pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}
