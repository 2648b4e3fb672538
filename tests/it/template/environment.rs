//! Each function's environment is what its code reads (names, and values defaulting to the
//! code's); the ingest function's grants are checked with its environment.

use super::cfn::*;
use super::code::*;
use super::iam::*;
use serde_yaml::Value;
use shared::adapters::dynamodb::schema;
use shared::adapters::secrets::SecretSource;
use shared::sync::delta::DeltaOptions;
use std::collections::{BTreeMap, BTreeSet};

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
                "ssm:GetParameter",
                // The stack's key, when set (kms.rs): sending to an encrypted queue.
                "kms:Decrypt",
                "kms:GenerateDataKey"
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

/// The worker's environment is what the code reads, with the figures.
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

/// `TombstoneRetentionDays` reaches every function that builds the records store
/// (`adapters::deploy::load`: delta, worker, reconcile) as `TOMBSTONE_RETENTION_DAYS`, with the
/// code's default and range, and the records table's TTL attribute is the one soft deletes set.
#[test]
fn template_tombstone_retention_reaches_every_function_that_writes_records() {
    use shared::config::retention::{
        DEFAULT_TOMBSTONE_RETENTION_DAYS, MAX_TOMBSTONE_RETENTION_DAYS, TOMBSTONE_RETENTION_VAR,
    };
    let t = template();
    let p = &t["Parameters"]["TombstoneRetentionDays"];
    let num = |v: &Value| -> u64 {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("{v:?} is a whole number"))
    };
    assert_eq!(num(&p["Default"]), DEFAULT_TOMBSTONE_RETENTION_DAYS);
    assert_eq!(
        num(&p["MinValue"]),
        0,
        "0 keeps soft-deleted records for ever"
    );
    assert_eq!(num(&p["MaxValue"]), MAX_TOMBSTONE_RETENTION_DAYS);
    for krate in ["delta-sync", "sync-worker", "reconcile"] {
        let f = function(&t, krate);
        let vars = &f["Properties"]["Environment"]["Variables"];
        assert!(
            is_ref_to(&vars[TOMBSTONE_RETENTION_VAR], "TombstoneRetentionDays"),
            "{krate} gets {TOMBSTONE_RETENTION_VAR}"
        );
    }
    let ingest = function(&t, "webhook-ingest");
    assert!(
        ingest["Properties"]["Environment"]["Variables"]
            .get(TOMBSTONE_RETENTION_VAR)
            .is_none(),
        "the ingest writes no records"
    );
    assert_eq!(schema::RECORDS.ttl_attribute, Some("expires_at"));
}
