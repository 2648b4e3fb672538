//! Which stores a command works on: the embedded local store (default) or DynamoDB (AWS, or an
//! emulator through `--endpoint-url`). Same code path either way: only the adapters differ.

use clap::Args;
use shared::adapters::aws;
use shared::adapters::local::LocalStore;
use shared::ports::{BudgetStore, ControlStore, RecordStore};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The local store's SQLite file (used unless --dynamodb or --endpoint-url is given).
    #[arg(long, default_value = ".local/sync.sqlite", env = "SYNC_LOCAL_DB")]
    pub db: PathBuf,
    /// Use DynamoDB (AWS credentials and region from the usual AWS settings).
    #[arg(long)]
    pub dynamodb: bool,
    /// DynamoDB endpoint (DynamoDB Local); implies --dynamodb.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    #[arg(long, env = "RECORDS_TABLE", default_value = "sync-records")]
    pub records_table: String,
    #[arg(long, env = "CONTROL_TABLE", default_value = "sync-control")]
    pub control_table: String,
}

pub type Stores = (Arc<dyn RecordStore>, Arc<dyn ControlStore>);

impl StoreArgs {
    pub fn uses_dynamodb(&self) -> bool {
        self.dynamodb || self.endpoint_url.is_some()
    }

    pub async fn open(&self) -> Result<Stores, String> {
        if self.uses_dynamodb() {
            let sdk = aws::sdk_config().await;
            let client = aws::dynamodb_client_at(&sdk, self.endpoint_url.as_deref());
            let (r, c) = shared::adapters::dynamodb::stores(
                client,
                &self.records_table,
                &self.control_table,
            );
            // Soft deletes made here expire as the stack's do (TOMBSTONE_RETENTION_DAYS, 90).
            let retention =
                shared::config::TombstoneRetention::from_env(shared::config::Env::process())
                    .map_err(|e| e.to_string())?;
            let r = r.with_tombstone_retention(retention);
            return Ok((Arc::new(r), Arc::new(c)));
        }
        let store = Arc::new(self.open_local()?);
        Ok((store.clone(), store))
    }

    /// Where the source account's shared rate budget lives: the same store as the others (a
    /// handle of its own), so that every command and `serve` running at once share it.
    pub async fn budget(&self) -> Result<Arc<dyn BudgetStore>, String> {
        if self.uses_dynamodb() {
            let sdk = aws::sdk_config().await;
            let client = aws::dynamodb_client_at(&sdk, self.endpoint_url.as_deref());
            let (_, c) = shared::adapters::dynamodb::stores(
                client,
                &self.records_table,
                &self.control_table,
            );
            return Ok(Arc::new(c));
        }
        Ok(Arc::new(self.open_local()?))
    }

    /// The embedded store in `--db` (its folder created when missing), whatever the other flags.
    pub fn open_local(&self) -> Result<LocalStore, String> {
        if let Some(dir) = self.db.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        LocalStore::open(&self.db).map_err(|e| format!("{}: {e}", self.db.display()))
    }
}
