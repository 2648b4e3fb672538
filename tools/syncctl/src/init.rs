//! `syncctl init`: create the DynamoDB tables (`records`, `control`) from the same definition
//! as `template.yaml` (`shared::adapters::dynamodb::schema`), on AWS or on DynamoDB Local.
//! Idempotent: existing tables are checked against the schema and left as they are.

use clap::Args;
use shared::adapters::aws;
use shared::adapters::dynamodb::{create_tables, schema};

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Name of the records table.
    #[arg(long, env = "RECORDS_TABLE", default_value = schema::RECORDS.default_name)]
    pub records_table: String,
    /// Name of the control table.
    #[arg(long, env = "CONTROL_TABLE", default_value = schema::CONTROL.default_name)]
    pub control_table: String,
    /// DynamoDB endpoint, e.g. DynamoDB Local at http://localhost:8000 (which accepts any
    /// credentials, e.g. AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test). Default: the usual
    /// AWS settings (AWS_ENDPOINT_URL_DYNAMODB, region, profile).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

pub async fn run(args: InitArgs) -> Result<(), String> {
    let client = aws::dynamodb_client_at(&aws::sdk_config().await, args.endpoint_url.as_deref());
    create_tables(&client, &args.records_table, &args.control_table)
        .await
        .map_err(|e| describe(&e))?;
    println!(
        "tables ready: records = {}, control = {}",
        args.records_table, args.control_table
    );
    Ok(())
}

/// The error and its causes on one line.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
