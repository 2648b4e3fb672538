//! `syncctl check-source` as a user runs it: the binary, the embedded configuration pointed at
//! the simulator by `SOURCE_BASE_URL`, the secret from `SOURCE_SECRET`; its exit code and output.

use source_sim::{Entity, Misbehave, SimConfig, SimHandle};
use std::process::{Command, Output};

/// 150 people and donations, records 1..=3 of each updated now (delta order != ID order).
async fn sim() -> SimHandle {
    let sim = testkit::sim::start(SimConfig {
        people: 150,
        donations: 150,
        ..SimConfig::default()
    })
    .await;
    for e in Entity::ALL {
        for id in 1..=3 {
            sim.update(e, id, None);
        }
    }
    sim
}

/// Runs the binary off the runtime's thread (the simulator answers on it meanwhile).
async fn run(cmd: Command) -> Output {
    let mut cmd = cmd;
    tokio::task::spawn_blocking(move || cmd.output().expect("syncctl runs"))
        .await
        .expect("joined")
}

async fn check_source(base_url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncctl"));
    cmd.arg("check-source")
        .args(args)
        .env_remove("SYNC_CONFIG")
        .env("SOURCE_BASE_URL", base_url)
        .env("SOURCE_SECRET", "any");
    run(cmd).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn exit_codes_and_output_follow_the_checks() {
    let sim = sim().await;
    let ok = check_source(&sim.base_url(), &[]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let text = stdout(&ok);
    assert!(
        text.contains("people (") && text.contains("donations ("),
        "{text}"
    );
    assert!(text.contains("Every check passed."), "{text}");

    sim.set_misbehave(Misbehave {
        ignore_filter: true,
        ..Misbehave::default()
    });
    let bad = check_source(&sim.base_url(), &["--entity", "people"]).await;
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    let text = stdout(&bad);
    assert!(text.contains("FAIL         filter"), "{text}");
    assert!(text.contains("fix: source.filter"), "{text}");
    assert!(
        !text.contains("donations ("),
        "--entity limits the probe: {text}"
    );

    let json = check_source(&sim.base_url(), &["--json"]).await;
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    let failed: Vec<(&str, &str)> = v["entities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["ok"] == false)
                .map(|c| (c["name"].as_str().unwrap(), c["field"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(
        failed,
        [("filter", "source.filter"), ("filter", "source.filter")]
    );
}

#[tokio::test]
async fn an_unreachable_source_exits_3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The shipped retries (6 attempts with backoff) would take seconds: one attempt.
    let dir = testkit::TempDir::new("check-source");
    let file = dir.path().join("endpoints.toml");
    let text = shared::config::EMBEDDED.replace("max_attempts = 6", "max_attempts = 1");
    assert_ne!(text, shared::config::EMBEDDED);
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncctl"));
    cmd.arg("check-source")
        .env("SYNC_CONFIG", &file)
        .env("SOURCE_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("SOURCE_SECRET", "any");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be reached"), "{err}");
}
