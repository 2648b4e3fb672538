//! The tables have one definition, `shared::adapters::dynamodb::schema`: `template.yaml` must
//! declare exactly those tables, and `create_tables` (what `syncctl init` runs) must create
//! them, as DescribeTable on DynamoDB Local shows.

use super::cfn::{is_ref_to, template};
use crate::harness::{dynamodb_client, unique_name};
use aws_sdk_dynamodb::types::{KeyType, ScalarAttributeType};
use serde_yaml::Value;
use shared::adapters::dynamodb::schema::{self, Gsi, KeyAttr, TableSchema};
use shared::adapters::dynamodb::{create_table, create_tables};
use std::collections::BTreeSet;

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is a list: {v:?}"))
}

/// `[(name, HASH|RANGE)]` as the template spells a key schema.
fn template_keys(v: &Value, what: &str) -> Vec<(String, String)> {
    seq(v, what)
        .iter()
        .map(|k| {
            (
                str_of(&k["AttributeName"], what).to_owned(),
                str_of(&k["KeyType"], what).to_owned(),
            )
        })
        .collect()
}

fn schema_keys(hash: KeyAttr, range: Option<KeyAttr>) -> Vec<(String, String)> {
    let mut v = vec![(hash.name.to_owned(), "HASH".to_owned())];
    v.extend(range.map(|r| (r.name.to_owned(), "RANGE".to_owned())));
    v
}

fn schema_attribute_definitions(t: &TableSchema) -> BTreeSet<(String, String)> {
    t.attribute_definitions()
        .iter()
        .map(|a| (a.name.to_owned(), a.ty.as_str().to_owned()))
        .collect()
}

fn check_gsi(g: &Gsi, found: &Value, table: &str) {
    let what = format!("{table}.{}", g.name);
    assert_eq!(
        template_keys(&found["KeySchema"], &what),
        schema_keys(g.hash, g.range),
        "{what} key schema"
    );
    let projection = &found["Projection"];
    assert_eq!(
        str_of(&projection["ProjectionType"], &what),
        g.projection.kind.as_str(),
        "{what} projection"
    );
    let non_key: BTreeSet<&str> = match projection.get("NonKeyAttributes") {
        Some(v) => seq(v, &what).iter().map(|a| str_of(a, &what)).collect(),
        None => BTreeSet::new(),
    };
    let want: BTreeSet<&str> = g.projection.non_key_attributes.iter().copied().collect();
    assert_eq!(non_key, want, "{what} projected attributes");
}

#[test]
fn template_tables_match_the_schema() {
    let t = template();
    assert_eq!(
        t["Transform"].as_str(),
        Some("AWS::Serverless-2016-10-31"),
        "a SAM template"
    );
    let resources = t["Resources"].as_mapping().expect("Resources");
    let tables: BTreeSet<&str> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::DynamoDB::Table"))
        .map(|(k, _)| k.as_str().expect("logical IDs are strings"))
        .collect();
    let want: BTreeSet<&str> = schema::TABLES.iter().map(|s| s.logical_id).collect();
    assert_eq!(
        tables, want,
        "the template declares exactly the schema's tables"
    );

    for s in schema::TABLES {
        let id = s.logical_id;
        let r = &t["Resources"][id];
        assert_eq!(r["DeletionPolicy"].as_str(), Some("Retain"), "{id}");
        assert_eq!(r["UpdateReplacePolicy"].as_str(), Some("Retain"), "{id}");
        let p = &r["Properties"];
        assert_eq!(
            str_of(&p["BillingMode"], id),
            s.billing_mode,
            "{id} billing"
        );
        assert_eq!(
            template_keys(&p["KeySchema"], id),
            schema_keys(s.hash, s.range),
            "{id} key schema"
        );
        let defs: BTreeSet<(String, String)> = seq(&p["AttributeDefinitions"], id)
            .iter()
            .map(|a| {
                (
                    str_of(&a["AttributeName"], id).to_owned(),
                    str_of(&a["AttributeType"], id).to_owned(),
                )
            })
            .collect();
        assert_eq!(
            defs,
            schema_attribute_definitions(s),
            "{id} attribute definitions"
        );
        let gsis: &[Value] = match p.get("GlobalSecondaryIndexes") {
            Some(v) => seq(v, id),
            None => &[],
        };
        assert_eq!(gsis.len(), s.gsis.len(), "{id} indexes");
        for g in s.gsis {
            let found = gsis
                .iter()
                .find(|v| v["IndexName"].as_str() == Some(g.name))
                .unwrap_or_else(|| panic!("{id} has index {}", g.name));
            check_gsi(g, found, id);
        }
        assert_eq!(
            p.get("StreamSpecification")
                .map(|v| str_of(&v["StreamViewType"], id)),
            s.stream_view_type,
            "{id} stream"
        );
        match s.ttl_attribute {
            Some(attr) => {
                let ttl = &p["TimeToLiveSpecification"];
                assert_eq!(str_of(&ttl["AttributeName"], id), attr, "{id} TTL");
                assert_eq!(ttl["Enabled"].as_bool(), Some(true), "{id} TTL enabled");
            }
            None => assert!(p.get("TimeToLiveSpecification").is_none(), "{id} no TTL"),
        }
        assert_eq!(
            p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
            Some(s.point_in_time_recovery),
            "{id} point-in-time recovery"
        );
    }
}

/// Every place the template sets `RECORDS_TABLE` / `CONTROL_TABLE` (functions, Globals) points
/// at the right table; the outputs name both tables.
#[test]
fn template_wires_table_names_to_their_tables() {
    let t = template();
    let mut envs: Vec<(String, &Value)> = Vec::new();
    if let Some(vars) = t["Globals"]["Function"]["Environment"]["Variables"].as_mapping() {
        envs.push((
            "Globals".into(),
            &t["Globals"]["Function"]["Environment"]["Variables"],
        ));
        assert!(!vars.is_empty());
    }
    for (k, r) in t["Resources"].as_mapping().expect("Resources") {
        let vars = &r["Properties"]["Environment"]["Variables"];
        if vars.is_mapping() {
            envs.push((k.as_str().unwrap_or("?").to_owned(), vars));
        }
    }
    for (owner, vars) in envs {
        for s in schema::TABLES {
            if let Some(v) = vars.get(s.env_var) {
                assert!(
                    is_ref_to(v, s.logical_id),
                    "{owner}: {} should be !Ref {}, is {v:?}",
                    s.env_var,
                    s.logical_id
                );
            }
        }
    }
    let outputs = &t["Outputs"];
    assert!(is_ref_to(
        &outputs["RecordsTableName"]["Value"],
        "RecordsTable"
    ));
    assert!(is_ref_to(
        &outputs["ControlTableName"]["Value"],
        "ControlTable"
    ));
}

/// DescribeTable (and DescribeTimeToLive) of a created table, compared with its schema.
async fn assert_created_as_schema(client: &aws_sdk_dynamodb::Client, s: &TableSchema, name: &str) {
    let out = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .expect("DescribeTable");
    let t = out.table().expect("a table");
    let keys = |ks: &[aws_sdk_dynamodb::types::KeySchemaElement]| -> Vec<(String, String)> {
        ks.iter()
            .map(|k| {
                (
                    k.attribute_name().to_owned(),
                    match k.key_type() {
                        KeyType::Hash => "HASH".to_owned(),
                        KeyType::Range => "RANGE".to_owned(),
                        other => panic!("unexpected key type {other:?}"),
                    },
                )
            })
            .collect()
    };
    assert_eq!(
        keys(t.key_schema()),
        schema_keys(s.hash, s.range),
        "{name} keys"
    );
    let defs: BTreeSet<(String, String)> = t
        .attribute_definitions()
        .iter()
        .map(|a| {
            let ty = match a.attribute_type() {
                ScalarAttributeType::S => "S",
                ScalarAttributeType::N => "N",
                ScalarAttributeType::B => "B",
                other => panic!("unexpected type {other:?}"),
            };
            (a.attribute_name().to_owned(), ty.to_owned())
        })
        .collect();
    assert_eq!(defs, schema_attribute_definitions(s), "{name} definitions");
    assert_eq!(
        t.global_secondary_indexes().len(),
        s.gsis.len(),
        "{name} indexes"
    );
    for g in s.gsis {
        let found = t
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(g.name))
            .unwrap_or_else(|| panic!("{name} has index {}", g.name));
        assert_eq!(
            keys(found.key_schema()),
            schema_keys(g.hash, g.range),
            "{} keys",
            g.name
        );
        let p = found.projection().expect("a projection");
        assert_eq!(
            p.projection_type().map(|t| t.as_str()),
            Some(g.projection.kind.as_str())
        );
        let non_key: BTreeSet<&str> = p.non_key_attributes().iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = g.projection.non_key_attributes.iter().copied().collect();
        assert_eq!(non_key, want, "{} projected attributes", g.name);
    }
    let stream = t.stream_specification();
    assert_eq!(
        stream.map(|st| st.stream_enabled()).unwrap_or(false),
        s.stream_view_type.is_some(),
        "{name} stream enabled"
    );
    assert_eq!(
        stream
            .and_then(|st| st.stream_view_type())
            .map(|v| v.as_str()),
        s.stream_view_type,
        "{name} stream view"
    );
    assert_eq!(
        t.billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|b| b.as_str()),
        Some(s.billing_mode),
        "{name} billing"
    );
    let ttl = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .expect("DescribeTimeToLive");
    let d = ttl.time_to_live_description();
    match s.ttl_attribute {
        Some(attr) => {
            assert_eq!(d.and_then(|d| d.attribute_name()), Some(attr), "{name} TTL");
            assert_eq!(
                d.and_then(|d| d.time_to_live_status()).map(|s| s.as_str()),
                Some("ENABLED"),
                "{name} TTL status"
            );
        }
        None => assert_ne!(
            d.and_then(|d| d.time_to_live_status()).map(|s| s.as_str()),
            Some("ENABLED"),
            "{name} has no TTL"
        ),
    }
}

#[tokio::test]
async fn create_tables_builds_the_schema_and_is_idempotent() {
    let client = dynamodb_client().await;
    let records = unique_name("it-init-records");
    let control = unique_name("it-init-control");
    create_tables(&client, &records, &control)
        .await
        .expect("create the tables");
    assert_created_as_schema(&client, &schema::RECORDS, &records).await;
    assert_created_as_schema(&client, &schema::CONTROL, &control).await;
    // Again: existing tables are fine, and unchanged.
    create_tables(&client, &records, &control)
        .await
        .expect("create the tables again");
    assert_created_as_schema(&client, &schema::RECORDS, &records).await;
    assert_created_as_schema(&client, &schema::CONTROL, &control).await;
}

#[tokio::test]
async fn an_existing_table_with_another_schema_is_an_error() {
    let client = dynamodb_client().await;
    let name = unique_name("it-init-wrong");
    // A control-shaped table (pk + sk) where the records table should be.
    create_table(&client, &schema::CONTROL, &name)
        .await
        .expect("create a control table");
    let err = create_table(&client, &schema::RECORDS, &name)
        .await
        .expect_err("a records table needs another key schema");
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(text.contains("key schema"), "{text}");
}
