//! Creating the tables from [`super::schema`] (what `syncctl init` runs). Idempotent: an
//! existing table is checked against the schema and completed (TTL, point-in-time recovery),
//! never recreated.

use super::schema::{AttrType, Gsi, ProjectionType, TableSchema};
use crate::adapters::aws::store_error;
use crate::error::StoreError;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, Projection, ProjectionType as SdkProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use std::time::{Duration, Instant};

/// How long `create_tables` waits for a table (and its indexes) to become ACTIVE.
pub const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// An existing table does not match the schema, or never became active.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {message}")]
pub struct TableError {
    pub table: String,
    pub message: String,
}

fn table_error(table: &str, message: impl Into<String>) -> StoreError {
    StoreError::backend(
        "create tables",
        TableError {
            table: table.to_owned(),
            message: message.into(),
        },
    )
}

/// Create the `records` and `control` tables under these names (see [`super::schema`]), wait
/// until they are ACTIVE, and enable TTL on `control` and point-in-time recovery on both.
/// Tables that already exist are fine when their keys and indexes match the schema.
pub async fn create_tables(
    client: &Client,
    records_table: &str,
    control_table: &str,
) -> Result<(), StoreError> {
    create_table(client, &super::schema::RECORDS, records_table).await?;
    create_table(client, &super::schema::CONTROL, control_table).await
}

/// Create one table from its schema (idempotent), then wait and complete it.
pub async fn create_table(
    client: &Client,
    schema: &TableSchema,
    name: &str,
) -> Result<(), StoreError> {
    let op = "create table";
    let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::backend(op, e);
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::from(schema.billing_mode));
    for a in schema.attribute_definitions() {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(a.name)
                .attribute_type(scalar(a.ty))
                .build()
                .map_err(build)?,
        );
    }
    for k in key_schema(schema.hash.name, schema.range.map(|r| r.name)) {
        req = req.key_schema(k.map_err(build)?);
    }
    for g in schema.gsis {
        req = req.global_secondary_indexes(gsi(g).map_err(build)?);
    }
    if let Some(view) = schema.stream_view_type {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(view))
                .build()
                .map_err(build)?,
        );
    }
    match req.send().await {
        Ok(_) => {}
        Err(SdkError::ServiceError(ctx))
            if matches!(ctx.err(), CreateTableError::ResourceInUseException(_)) => {}
        Err(e) => return Err(store_error(op, e)),
    }
    let described = wait_active(client, name).await?;
    check_matches(schema, name, &described)?;
    if let Some(ttl_attr) = schema.ttl_attribute {
        enable_ttl(client, name, ttl_attr).await?;
    }
    if schema.point_in_time_recovery {
        let sent = client
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(
                PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(true)
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await;
        match sent {
            Ok(_) => {}
            // DynamoDB Local has no backups: it does not know the operation (AWS always does).
            Err(e) if e.code() == Some("UnknownOperationException") => {
                tracing::warn!(
                    table = name,
                    "point-in-time recovery not enabled: the endpoint does not support it \
                     (an emulator)"
                );
            }
            Err(e) => return Err(store_error("enable point-in-time recovery", e)),
        }
    }
    Ok(())
}

fn scalar(t: AttrType) -> ScalarAttributeType {
    match t {
        AttrType::S => ScalarAttributeType::S,
        AttrType::N => ScalarAttributeType::N,
        AttrType::B => ScalarAttributeType::B,
    }
}

fn key_schema(
    hash: &str,
    range: Option<&str>,
) -> Vec<Result<KeySchemaElement, aws_sdk_dynamodb::error::BuildError>> {
    let mut out = vec![
        KeySchemaElement::builder()
            .attribute_name(hash)
            .key_type(KeyType::Hash)
            .build(),
    ];
    if let Some(r) = range {
        out.push(
            KeySchemaElement::builder()
                .attribute_name(r)
                .key_type(KeyType::Range)
                .build(),
        );
    }
    out
}

fn gsi(g: &Gsi) -> Result<GlobalSecondaryIndex, aws_sdk_dynamodb::error::BuildError> {
    let mut projection = Projection::builder().projection_type(match g.projection.kind {
        ProjectionType::All => SdkProjectionType::All,
        ProjectionType::KeysOnly => SdkProjectionType::KeysOnly,
        ProjectionType::Include => SdkProjectionType::Include,
    });
    for a in g.projection.non_key_attributes {
        projection = projection.non_key_attributes(*a);
    }
    let mut b = GlobalSecondaryIndex::builder()
        .index_name(g.name)
        .projection(projection.build());
    for k in key_schema(g.hash.name, g.range.map(|r| r.name)) {
        b = b.key_schema(k?);
    }
    b.build()
}

/// Poll DescribeTable until the table and its indexes are ACTIVE.
async fn wait_active(client: &Client, name: &str) -> Result<DescribeTableOutput, StoreError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| store_error("describe table", e))?;
        let t = out.table();
        let table_active = t.and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let indexes_active = t
            .map(|t| {
                t.global_secondary_indexes()
                    .iter()
                    .all(|g| g.index_status() == Some(&IndexStatus::Active))
            })
            .unwrap_or(false);
        if table_active && indexes_active {
            return Ok(out);
        }
        if started.elapsed() > ACTIVE_TIMEOUT {
            return Err(table_error(
                name,
                format!("not ACTIVE after {} s", ACTIVE_TIMEOUT.as_secs()),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// An existing table must have the schema's keys and indexes: anything else is an error
/// rather than a table the adapters would misuse.
fn check_matches(
    schema: &TableSchema,
    name: &str,
    out: &DescribeTableOutput,
) -> Result<(), StoreError> {
    let Some(t) = out.table() else {
        return Err(table_error(name, "DescribeTable returned no table"));
    };
    let keys = |ks: &[KeySchemaElement]| -> Vec<(String, String)> {
        ks.iter()
            .map(|k| {
                (
                    k.attribute_name().to_owned(),
                    k.key_type().as_str().to_owned(),
                )
            })
            .collect()
    };
    let want_keys = |hash: &str, range: Option<&str>| -> Vec<(String, String)> {
        let mut v = vec![(hash.to_owned(), "HASH".to_owned())];
        v.extend(range.map(|r| (r.to_owned(), "RANGE".to_owned())));
        v
    };
    let have = keys(t.key_schema());
    let want = want_keys(schema.hash.name, schema.range.map(|r| r.name));
    if have != want {
        return Err(table_error(
            name,
            format!("key schema is {have:?}, want {want:?}"),
        ));
    }
    for g in schema.gsis {
        let Some(found) = t
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(g.name))
        else {
            return Err(table_error(name, format!("index {} is missing", g.name)));
        };
        let have = keys(found.key_schema());
        let want = want_keys(g.hash.name, g.range.map(|r| r.name));
        if have != want {
            return Err(table_error(
                name,
                format!("index {} keys are {have:?}, want {want:?}", g.name),
            ));
        }
        let kind = found
            .projection()
            .and_then(|p| p.projection_type())
            .map(|p| p.as_str());
        if kind != Some(g.projection.kind.as_str()) {
            return Err(table_error(
                name,
                format!(
                    "index {} projects {kind:?}, want {}",
                    g.name,
                    g.projection.kind.as_str()
                ),
            ));
        }
    }
    Ok(())
}

async fn enable_ttl(client: &Client, name: &str, attribute: &str) -> Result<(), StoreError> {
    let out = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(|e| store_error("describe time to live", e))?;
    let desc = out.time_to_live_description();
    let status = desc.and_then(|d| d.time_to_live_status());
    let current = desc.and_then(|d| d.attribute_name());
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return if current == Some(attribute) {
            Ok(())
        } else {
            Err(table_error(
                name,
                format!("TTL is on {current:?}, want {attribute}"),
            ))
        };
    }
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(attribute)
                .build()
                .map_err(|e| StoreError::backend("enable time to live", e))?,
        )
        .send()
        .await
        .map(drop)
        .map_err(|e| store_error("enable time to live", e))
}
