//! The optional customer managed key (`KmsKeyArn`): with it set, every encryptable resource
//! uses it; without it, each keeps the encryption it has without one. Each function is granted,
//! under `HasKmsKey` and on that key only, exactly the `kms:` actions the resources its other
//! statements touch need (derived here, so that a new queue or table grant without its KMS
//! grant fails).

use super::cfn::*;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

const KEY: &str = "HasKmsKey";

/// `v` with every `!If [HasKmsKey, a, b]` replaced by a (`with_key`) or b, and the
/// `AWS::NoValue` that gives removed from mappings and lists (as CloudFormation does).
fn resolve(v: &Value, with_key: bool) -> Option<Value> {
    if let Some((f, Value::Sequence(args))) = intrinsic(v)
        && f == "If"
        && args.len() == 3
        && args[0].as_str() == Some(KEY)
    {
        return resolve(&args[if with_key { 1 } else { 2 }], with_key);
    }
    if is_no_value(v) {
        return None;
    }
    Some(match v {
        Value::Mapping(m) if intrinsic(v).is_none() => Value::Mapping(
            m.iter()
                .filter_map(|(k, x)| Some((k.clone(), resolve(x, with_key)?)))
                .collect(),
        ),
        Value::Sequence(items) => {
            Value::Sequence(items.iter().filter_map(|x| resolve(x, with_key)).collect())
        }
        other => other.clone(),
    })
}

/// The resource types that take a key, and what each must say with and without one.
fn check_encryption(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if t["Conditions"][KEY] != yaml("!Not [!Equals [!Ref KmsKeyArn, '']]") {
        bad.push(format!("Conditions.{KEY} is {:?}", t["Conditions"][KEY]));
    }
    let key = yaml("!Ref KmsKeyArn");
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, r) in t["Resources"].as_mapping().expect("Resources") {
        let id = id.as_str().unwrap_or_default();
        let ty = r["Type"].as_str().unwrap_or_default();
        let (Some(on), Some(off)) = (
            resolve(&r["Properties"], true),
            resolve(&r["Properties"], false),
        ) else {
            continue;
        };
        let mut fail = |what: &str| bad.push(format!("{id} ({ty}): {what}"));
        match ty {
            "AWS::DynamoDB::Table" => {
                if on.get("SSESpecification")
                    != Some(&yaml(
                        "{SSEEnabled: true, SSEType: KMS, KMSMasterKeyId: !Ref KmsKeyArn}",
                    ))
                {
                    fail("with the key, SSESpecification is not KMS with it");
                }
                if off.get("SSESpecification").is_some() {
                    fail("without the key, not DynamoDB's AWS owned key");
                }
            }
            "AWS::SQS::Queue" => {
                if on.get("KmsMasterKeyId") != Some(&key)
                    || on
                        .get("SqsManagedSseEnabled")
                        .is_some_and(|v| v != &yaml("false"))
                {
                    fail("with the key, KmsMasterKeyId is not it alone");
                }
                if off.get("KmsMasterKeyId").is_some()
                    || off.get("SqsManagedSseEnabled") != Some(&yaml("true"))
                {
                    fail("without the key, not SQS-managed encryption");
                }
            }
            "AWS::S3::Bucket" => {
                let rules = |p: &Value| {
                    p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                        .as_sequence()
                        .cloned()
                        .unwrap_or_default()
                };
                let on_rules = rules(&on);
                if on_rules.is_empty()
                    || !on_rules.iter().all(|r| {
                        r["ServerSideEncryptionByDefault"]
                            == yaml("{SSEAlgorithm: 'aws:kms', KMSMasterKeyID: !Ref KmsKeyArn}")
                            && r["BucketKeyEnabled"] == yaml("true")
                    })
                {
                    fail("with the key, not SSE-KMS with it and a bucket key");
                }
                let off_rules = rules(&off);
                if off_rules.is_empty()
                    || !off_rules.iter().all(|r| {
                        r["ServerSideEncryptionByDefault"] == yaml("{SSEAlgorithm: AES256}")
                    })
                {
                    fail("without the key, not SSE-S3");
                }
            }
            "AWS::Logs::LogGroup" | "AWS::SecretsManager::Secret" | "AWS::SNS::Topic" => {
                let prop = if ty == "AWS::SNS::Topic" {
                    "KmsMasterKeyId"
                } else {
                    "KmsKeyId"
                };
                if on.get(prop) != Some(&key) {
                    fail(&format!("with the key, {prop} is not it"));
                }
                if off.get(prop).is_some() {
                    fail(&format!("without the key, {prop} is set"));
                }
            }
            _ => continue,
        }
        *seen.entry(ty).or_default() += 1;
    }
    for ty in [
        "AWS::DynamoDB::Table",
        "AWS::SQS::Queue",
        "AWS::S3::Bucket",
        "AWS::Logs::LogGroup",
        "AWS::SecretsManager::Secret",
        "AWS::SNS::Topic",
    ] {
        if !seen.contains_key(ty) {
            bad.push(format!("no {ty} checked"));
        }
    }
    bad
}

/// The `kms:` actions a function needs for what its statements (but its KMS grant) touch:
/// kms:Decrypt for a table of this template (DynamoDB decrypts the table key as the caller),
/// for messages received from a queue and objects read from a bucket, and for a secret of this
/// template; kms:GenerateDataKey and kms:Decrypt for messages sent to a queue (our code's or
/// Lambda's on-failure destination) and objects written to a bucket (SSE-KMS, multipart parts).
fn needed(t: &Value, f: &Value) -> BTreeSet<String> {
    let mut need = BTreeSet::new();
    for (cond, s) in function_statements(f) {
        if cond.as_deref() == Some(KEY) || s["Effect"].as_str() != Some("Allow") {
            continue;
        }
        let resources = s.get("Resource").map(strings).unwrap_or_default();
        for a in s.get("Action").map(strings).unwrap_or_default() {
            let Some((service, op)) = a.as_str().and_then(|a| a.split_once(':')) else {
                continue;
            };
            for r in &resources {
                let table = table_arn(r)
                    .is_some_and(|(id, _)| resource_type(t, &id) == Some("AWS::DynamoDB::Table"));
                let secret = ref_or_arn_of(r)
                    .is_some_and(|id| resource_type(t, &id) == Some("AWS::SecretsManager::Secret"));
                let add: &[&str] = match (service, op) {
                    ("dynamodb", _) if table => &["Decrypt"],
                    ("sqs", "SendMessage") if queue_arn(t, r).is_some() => {
                        &["Decrypt", "GenerateDataKey"]
                    }
                    ("sqs", _) if queue_arn(t, r).is_some() => &["Decrypt"],
                    ("s3", "PutObject") if bucket_objects(t, r).is_some() => {
                        &["Decrypt", "GenerateDataKey"]
                    }
                    ("s3", "GetObject") if bucket_objects(t, r).is_some() => &["Decrypt"],
                    ("secretsmanager", "GetSecretValue") if secret => &["Decrypt"],
                    _ => &[],
                };
                need.extend(add.iter().map(|a| format!("kms:{a}")));
            }
        }
    }
    need
}

/// Each function's KMS grant: under `HasKmsKey` only, on `!Ref KmsKeyArn` only, exactly
/// [`needed`]; no KMS grant for a function that needs none.
fn check_kms_grants(t: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    for (id, f) in functions(t) {
        let mut granted = BTreeSet::new();
        for (cond, s) in function_statements(f) {
            let actions: Vec<String> = s
                .get("Action")
                .map(strings)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .filter(|a| a.starts_with("kms:"))
                .collect();
            if actions.is_empty() {
                continue;
            }
            if cond.as_deref() != Some(KEY) {
                bad.push(format!(
                    "{id}: {actions:?} granted under {cond:?}, want {KEY}"
                ));
            }
            if !is_ref_to(&s["Resource"], "KmsKeyArn") {
                bad.push(format!(
                    "{id}: {actions:?} on {:?}, want !Ref KmsKeyArn",
                    s["Resource"]
                ));
            }
            granted.extend(actions);
        }
        let need = needed(t, f);
        if granted != need {
            bad.push(format!(
                "{id}: kms grants {granted:?}, its resources need {need:?}"
            ));
        }
    }
    bad
}

/// `!If [HasKmsKey, s, !Ref AWS::NoValue]`.
fn if_key(s: Value) -> Value {
    let mut v = yaml("!If [HasKmsKey, s, !Ref AWS::NoValue]");
    if let Value::Tagged(tagged) = &mut v {
        tagged.value[1] = s;
    }
    v
}

#[test]
fn template_with_the_key_every_encryptable_resource_uses_it() {
    let t = template();
    assert_eq!(check_encryption(&t), Vec::<String>::new());
    assert_eq!(
        t["Parameters"]["KmsKeyArn"]["Default"],
        yaml("''"),
        "optional"
    );

    let broken = |id: &str, prop: &str, v: Option<&str>| {
        let mut b = t.clone();
        let props = b["Resources"][id]["Properties"].as_mapping_mut().unwrap();
        match v {
            Some(v) => {
                props.insert(prop.into(), yaml(v));
            }
            None => {
                props.remove(prop);
            }
        }
        check_encryption(&b)
    };
    let found = broken("SyncWorkerLogGroup", "KmsKeyId", None);
    assert_eq!(
        found,
        ["SyncWorkerLogGroup (AWS::Logs::LogGroup): with the key, KmsKeyId is not it"]
    );
    // A queue cannot have both: the key, and SQS-managed encryption left on.
    let found = broken("WorkQueue", "SqsManagedSseEnabled", Some("true"));
    assert_eq!(
        found,
        ["WorkQueue (AWS::SQS::Queue): with the key, KmsMasterKeyId is not it alone"]
    );
    // The key always, even when KmsKeyArn is empty.
    let found = broken(
        "ControlTable",
        "SSESpecification",
        Some("{SSEEnabled: true, SSEType: KMS, KMSMasterKeyId: !Ref KmsKeyArn}"),
    );
    assert_eq!(
        found,
        ["ControlTable (AWS::DynamoDB::Table): without the key, not DynamoDB's AWS owned key"]
    );
    let found = broken(
        "SpillBucket",
        "BucketEncryption",
        Some(
            "{ServerSideEncryptionConfiguration: [{ServerSideEncryptionByDefault: {SSEAlgorithm: AES256}}]}",
        ),
    );
    assert_eq!(
        found,
        ["SpillBucket (AWS::S3::Bucket): with the key, not SSE-KMS with it and a bucket key"]
    );
    let found = broken(
        "TokenSigningSecret",
        "KmsKeyId",
        Some("alias/aws/secretsmanager"),
    );
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn template_each_function_gets_exactly_the_kms_grants_its_resources_need() {
    let t = template();
    assert_eq!(check_kms_grants(&t), Vec::<String>::new());
    let want = |binary: &str| needed(&t, function(&t, binary));
    let both = BTreeSet::from(["kms:Decrypt".to_owned(), "kms:GenerateDataKey".to_owned()]);
    assert_eq!(
        want("delta-sync"),
        both,
        "tables, and its failure destination queue"
    );
    assert_eq!(want("webhook-ingest"), both, "sends to the work queue");
    assert_eq!(
        want("sync-worker"),
        BTreeSet::from(["kms:Decrypt".to_owned()]),
        "tables and receiving only"
    );
    assert_eq!(
        want("reconcile"),
        both,
        "spill objects, targeted syncs, tables, its secret"
    );

    // A new queue grant without its KMS grant: the worker sending to the DLQ.
    let mut b = t.clone();
    let id = function_id(&t, "sync-worker");
    b["Resources"][id.as_str()]["Properties"]["Policies"][0]["Statement"]
        .as_sequence_mut()
        .unwrap()
        .push(yaml(
            "{Effect: Allow, Action: sqs:SendMessage, Resource: !GetAtt DeadLetterQueue.Arn}",
        ));
    let found = check_kms_grants(&b);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(&format!("{id}: kms grants")),
        "{found:?}"
    );
    assert!(found[0].contains("GenerateDataKey"), "{found:?}");

    // A function's KMS grant taken away, widened, unconditional or on another key.
    let kms_statement = |b: &mut Value, binary: &str| -> Value {
        let id = function_id(&t, binary);
        let list = b["Resources"][id.as_str()]["Properties"]["Policies"][0]["Statement"]
            .as_sequence_mut()
            .unwrap();
        let i = list
            .iter()
            .position(|s| matches!(intrinsic(s), Some((f, Value::Sequence(a))) if f == "If" && a[0].as_str() == Some(KEY)))
            .expect("a statement under HasKmsKey");
        list.remove(i)
    };
    let mut b = t.clone();
    kms_statement(&mut b, "webhook-ingest");
    let found = check_kms_grants(&b);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("kms grants {}"), "{found:?}");

    let mut b = t.clone();
    let Value::Tagged(s) = kms_statement(&mut b, "sync-worker") else {
        panic!("the grant is a !If");
    };
    let mut grant = s.value[1].clone();
    grant["Action"] = yaml("[kms:Decrypt, kms:Encrypt]");
    let id = function_id(&t, "sync-worker");
    fn list<'a>(b: &'a mut Value, id: &str) -> &'a mut Vec<Value> {
        b["Resources"][id]["Properties"]["Policies"][0]["Statement"]
            .as_sequence_mut()
            .unwrap()
    }
    let mut wide = b.clone();
    list(&mut wide, &id).push(if_key(grant.clone()));
    let found = check_kms_grants(&wide);
    assert!(found.iter().any(|f| f.contains("kms:Encrypt")), "{found:?}");
    let mut always = b.clone();
    let mut exact = grant.clone();
    exact["Action"] = yaml("kms:Decrypt");
    list(&mut always, &id).push(exact.clone());
    let found = check_kms_grants(&always);
    assert!(
        found.iter().any(|f| f.contains("granted under None")),
        "{found:?}"
    );
    let mut other = b.clone();
    exact["Resource"] = yaml("!Sub 'arn:aws:kms:${AWS::Region}:${AWS::AccountId}:key/other'");
    list(&mut other, &id).push(if_key(exact));
    let found = check_kms_grants(&other);
    assert!(
        found.iter().any(|f| f.contains("want !Ref KmsKeyArn")),
        "{found:?}"
    );
}
