//! The embedded local store: one SQLite file (rusqlite, bundled) holding the records, the control
//! state (cursors, leases, runs, processed events) and the local work queue, plus a folder for
//! reconciliation's spills. Used by `syncctl` for local runs and the demo, by volume tests and by
//! benchmarks: no AWS account needed.
//!
//! Invariants:
//! - it behaves exactly like the DynamoDB store (the conformance suite in `tests/it` runs the same
//!   bodies against both); every page of records is checked against the size rule
//!   (`core::size`) before anything of it is written, and every record write goes through
//!   `core::decide_upsert` / `core::decide_delete` inside one SQLite transaction
//!   (`BEGIN IMMEDIATE`), so concurrent writers, in this process or another one opening the
//!   same file, are serialised;
//! - blocking SQLite work never runs on the async executor: every call goes through
//!   `tokio::task::spawn_blocking`, and the connection's `std::sync::Mutex` is never held across
//!   an await;
//! - nothing panics on data read from the file: a row that does not decode is a
//!   `StoreError::Decode` naming its key.
//!
//! The schema (`RECORDS_SCHEMA` and `SCHEMA` below) mirrors the DynamoDB items: `records` has
//! one row per item with the same attributes, and one index on the key, covering shard,
//! `delta_us`, `deleted_at_us` and entity, serves both the key lookups and the sparse
//! `live_ids` GSI (read with the deleted rows skipped).
//! - the pk is unique because every write looks it up first inside its IMMEDIATE transaction
//!   (no UNIQUE constraint: see `RECORDS_SCHEMA`).

mod budget;
mod control;
mod queue;
mod records;
mod spill;
#[cfg(test)]
mod tests;

pub use control::RUNS_KEPT;
pub use queue::{DeadLetter, LocalQueue, QueueCounts, QueueOptions};
pub use spill::LocalSpill;

use crate::error::StoreError;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Version of the schema this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Per connection, before the journal mode: page size (new files only), a 16 MiB page cache, no
/// memory map, temporary tables in memory.
///
/// No memory map: through one, every page a statement touches is looked up in the WAL index
/// again (the mapped pages are not kept in the page cache), which cost a delta sync's writes a
/// sixth of their CPU, and every page read stays in this process's resident memory (a re-read
/// of a million records grew it past 1 GB). 16 MiB of cache holds the B-tree paths appends and
/// lookups walk; more measured no faster, and the OS page cache keeps the rest.
const PRAGMAS: &str = "PRAGMA page_size = 8192; PRAGMA cache_size = -16384; \
     PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;";

/// Per connection, in WAL mode: fsync at checkpoints only (a crash loses no committed
/// transaction, a power loss may lose the last ones), checkpoint every 64 MiB of WAL, and trim
/// the WAL file back to that size afterwards.
const PRAGMAS_WAL: &str = "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 8192; \
     PRAGMA journal_size_limit = 67108864;";

/// The columns of the `records` table (a macro, so that the schema and the version 1 migration
/// share one text).
macro_rules! records_columns {
    () => {
        r#"(
    pk             TEXT NOT NULL,              -- "<entity>#<id>", as the DynamoDB key
    entity         TEXT NOT NULL,
    id             TEXT NOT NULL,
    shard          INTEGER NOT NULL,           -- model::shard_of(id)
    delta_us       INTEGER NOT NULL,
    fetched_at_us  INTEGER NOT NULL,
    hash           TEXT NOT NULL,              -- ContentHash::to_hex
    payload        TEXT NOT NULL,              -- the raw JSON as the source sent it
    first_seen_us  INTEGER NOT NULL,
    last_synced_us INTEGER NOT NULL,
    deleted_at_us  INTEGER,                    -- NULL while live
    last_action    TEXT NOT NULL,
    written_by     TEXT NOT NULL,
    erased_us      INTEGER,                    -- an erasure's marker only (RecordStore::erase)
    erased_by      TEXT
)"#
    };
}

/// The records table and its index. Every statement is idempotent (`IF NOT EXISTS`), as in
/// `SCHEMA`.
pub const RECORDS_SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS records ",
    records_columns!(),
    ";",
    r#"
-- One index is the key and the sparse live-ID GSI: ordered by pk, which is an entity's IDs in
-- bytewise order (BINARY collation of UTF-8), and covering shard, delta_us, deleted_at_us and
-- entity, so that a shard's page of live IDs is read from the index alone (the other shards',
-- the deleted and another entity's entries skipped: "a#b#c" of an entity "a#b" lies in
-- entity "a"'s key range). pk is unique by construction rather than by a UNIQUE constraint:
-- every write looks its key up and inserts only when absent, inside one IMMEDIATE transaction
-- (writers are serialised, in this process and across processes). A unique pk was a second
-- index on every insert: four more WAL pages per page of 100 records, ~1 us per record.
CREATE INDEX IF NOT EXISTS records_key
    ON records (pk, shard, delta_us, deleted_at_us, entity);
"#
);

/// Schema version 1 had a UNIQUE pk plus a partial live-ID index: the table is rebuilt once
/// (rows kept in their order), then `RECORDS_SCHEMA` adds the index.
const MIGRATE_FROM_V1: &str = concat!(
    "CREATE TABLE records_v2 ",
    records_columns!(),
    ";",
    r#"
INSERT INTO records_v2 (pk, entity, id, shard, delta_us, fetched_at_us, hash, payload,
    first_seen_us, last_synced_us, deleted_at_us, last_action, written_by)
  SELECT pk, entity, id, shard, delta_us, fetched_at_us, hash, payload,
    first_seen_us, last_synced_us, deleted_at_us, last_action, written_by
  FROM records ORDER BY rowid;
DROP TABLE records;
ALTER TABLE records_v2 RENAME TO records;
"#
);

/// Schema version 2 had no erasure columns: added (NULL in every row, no rebuild). A marker
/// fills the NOT NULL version columns with zeros and empty text (it holds no data).
const MIGRATE_FROM_V2: &str = "ALTER TABLE records ADD COLUMN erased_us INTEGER; \
     ALTER TABLE records ADD COLUMN erased_by TEXT;";

/// The control and queue tables. Every statement is idempotent (`IF NOT EXISTS`).
pub const SCHEMA: &str = r#"
-- control: cursor and lease of one job, in one row (the `job#<entity>#<kind>` item).
CREATE TABLE IF NOT EXISTS control_jobs (
    entity            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    cursor            TEXT,
    cursor_updated_us INTEGER,
    lease_holder      TEXT,
    lease_expires_us  INTEGER,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, kind)
) WITHOUT ROWID;

-- control: run history (the `runs#<entity>#<kind>` items), newest 100 kept per job.
CREATE TABLE IF NOT EXISTS control_runs (
    entity      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    started_us  INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    finished_us INTEGER,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    PRIMARY KEY (entity, kind, started_us, run_id)
) WITHOUT ROWID;

-- control: processed event IDs (the `event#<id>` items); until_us is the in-progress expiry or
-- the completed retention.
CREATE TABLE IF NOT EXISTS control_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    state    TEXT NOT NULL,                    -- 'in_progress' | 'completed'
    until_us INTEGER NOT NULL
) WITHOUT ROWID;

-- control: the worker's rolling 404 window (the `notfound#<entity>` item), one row per
-- 10-minute bucket (ports::not_found_window); rows older than the previous bucket are deleted
-- by each write.
CREATE TABLE IF NOT EXISTS control_notfound (
    entity    TEXT NOT NULL,
    window    INTEGER NOT NULL,
    fetched   INTEGER NOT NULL,
    not_found INTEGER NOT NULL,
    PRIMARY KEY (entity, window)
) WITHOUT ROWID;

-- control: one source account's shared rate budget (the `budget#<account>` item):
-- core::budget's schedule end, a Retry-After pause, the limit learned from the source.
CREATE TABLE IF NOT EXISTS control_budget (
    account         TEXT PRIMARY KEY NOT NULL,
    tat_us          INTEGER,
    paused_until_us INTEGER,
    limit_requests  INTEGER,
    limit_per_us    INTEGER
) WITHOUT ROWID;

-- The local work queue (SQS locally); several named queues may share the table.
CREATE TABLE IF NOT EXISTS queue_messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    message_id    TEXT NOT NULL UNIQUE,
    body          TEXT NOT NULL,
    sent_us       INTEGER NOT NULL,
    visible_at_us INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_messages_visible
    ON queue_messages (queue, visible_at_us, seq);

-- Messages received more than max_receives times without being deleted.
CREATE TABLE IF NOT EXISTS queue_dead_letters (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    message_id    TEXT NOT NULL UNIQUE,
    body          TEXT NOT NULL,
    sent_us       INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at_us    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_dead_letters_queue ON queue_dead_letters (queue, seq);
"#;

/// The records and control tables in one SQLite file. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct LocalStore {
    db: Db,
    /// Negative control for tests (`with_last_write_wins`).
    #[cfg(any(test, feature = "testing"))]
    last_write_wins: bool,
    /// Negative control for tests (`with_first_deletion_evidence`).
    #[cfg(any(test, feature = "testing"))]
    first_deletion_evidence: bool,
    /// Negative control for tests (`with_suppression_off`).
    #[cfg(any(test, feature = "testing"))]
    suppression_off: bool,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl LocalStore {
    /// Open (creating when missing) the database file at `path`; its folder must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(LocalStore {
            db: Db::open(path.as_ref())?,
            #[cfg(any(test, feature = "testing"))]
            last_write_wins: false,
            #[cfg(any(test, feature = "testing"))]
            first_deletion_evidence: false,
            #[cfg(any(test, feature = "testing"))]
            suppression_off: false,
        })
    }

    /// A private database in memory, gone when the last clone is dropped.
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(LocalStore {
            db: Db::in_memory()?,
            #[cfg(any(test, feature = "testing"))]
            last_write_wins: false,
            #[cfg(any(test, feature = "testing"))]
            first_deletion_evidence: false,
            #[cfg(any(test, feature = "testing"))]
            suppression_off: false,
        })
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.db.path()
    }

    /// The queue called `name` in this database (sharing this store's connection).
    pub fn queue(&self, name: &str, options: QueueOptions) -> LocalQueue {
        LocalQueue::from_db(self.db.clone(), name, options)
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Negative control for tests only: upserts without the version rule (`core::version`),
    /// the last write wins: an older version replaces a newer one (I2) and a deleted record
    /// comes back from any copy (I3). Deletions keep their rule.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_last_write_wins(mut self) -> Self {
        self.last_write_wins = true;
        self
    }

    /// Negative control for tests only: a soft delete of a record already deleted keeps its
    /// first evidence, as before `core::version::advances_deletion`: a copy fetched between two
    /// deletions (the source re-created the record, then deleted it again) restores it (I3).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_first_deletion_evidence(mut self) -> Self {
        self.first_deletion_evidence = true;
        self
    }

    /// Negative control for tests only: upserts without the erasure's suppression check, an
    /// erased record's marker taken for an ordinary soft-deleted item of the erasure's time,
    /// so that any copy fetched after the erasure writes the record back (delta, webhook,
    /// reconciliation alike).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_suppression_off(mut self) -> Self {
        self.suppression_off = true;
        self
    }

    /// Whether a later deletion evidence moves `deleted_at_us` (always, without `testing`).
    fn advances_evidence(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return !self.first_deletion_evidence;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// A page to upsert, checked against the size rule, under this store's version rule.
    fn page(&self, records: &[crate::model::Record]) -> Result<records::Page, StoreError> {
        #[allow(unused_mut)]
        let mut page = records::Page::new(records)?;
        #[cfg(any(test, feature = "testing"))]
        {
            page.last_write_wins = self.last_write_wins;
            page.suppression_off = self.suppression_off;
        }
        Ok(page)
    }
}

/// One connection, shared by every handle made from it, plus a wake-up for queue receivers in
/// this process.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    conn: Mutex<Connection>,
    sent: Notify,
    path: Option<PathBuf>,
}

impl Db {
    /// Opens and initialises the file. Processes starting together on a new file (`syncctl
    /// serve`, `delta` and `reconcile` sharing one budget) meet locks SQLite refuses at once,
    /// without its busy handler (switching a new file to WAL, a WAL recovery): the opening is
    /// tried again on a fresh connection for up to `BUSY_TIMEOUT`.
    fn open(path: &Path) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let conn = Connection::open(path).map_err(|e| sql_error("open database", e))?;
            match Self::init(conn, Some(path.to_path_buf())) {
                Err(StoreError::Throttled { .. }) if started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(pause.mul_f64(0.5 + fastrand::f64()));
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| sql_error("open database", e))?;
        Self::init(conn, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        let op = "initialise database";
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error(op, e))?;
        // Page size takes effect only on a new file, before WAL is switched on. 8 KiB measured
        // best for ~1 KB records (fewer WAL frames than 4 KiB on inserts, less rewrite than
        // 16 KiB on scattered updates).
        conn.execute_batch(PRAGMAS).map_err(|e| sql_error(op, e))?;
        // `journal_mode` answers with the mode in force ("memory" for an in-memory database).
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| sql_error(op, e))?;
        conn.execute_batch(PRAGMAS_WAL)
            .map_err(|e| sql_error(op, e))?;
        conn.set_prepared_statement_cache_capacity(64);

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(op, e))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sql_error(op, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Decode {
                key: path
                    .as_deref()
                    .map_or_else(|| ":memory:".into(), |p| p.display().to_string()),
                message: format!(
                    "schema version {version} is newer than this build's ({SCHEMA_VERSION})"
                ),
            });
        }
        if version == 1 {
            // The rebuilt table has every column of this version.
            tx.execute_batch(MIGRATE_FROM_V1)
                .map_err(|e| sql_error(op, e))?;
        }
        if version == 2 {
            tx.execute_batch(MIGRATE_FROM_V2)
                .map_err(|e| sql_error(op, e))?;
        }
        tx.execute_batch(RECORDS_SCHEMA)
            .map_err(|e| sql_error(op, e))?;
        tx.execute_batch(SCHEMA).map_err(|e| sql_error(op, e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| sql_error(op, e))?;
        tx.commit().map_err(|e| sql_error(op, e))?;

        Ok(Db {
            inner: Arc::new(DbInner {
                conn: Mutex::new(conn),
                sent: Notify::new(),
                path,
            }),
        })
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Identity of this connection (shared by every clone): `RecordStore::database_id`.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Wakes receivers of this process's queues.
    pub(crate) fn sent(&self) -> &Notify {
        &self.inner.sent
    }

    /// Run `f` on the connection, on the blocking pool.
    pub(crate) async fn call<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` unwinds through its `Transaction`, whose drop rolls back: the
            // connection is consistent again, so a poisoned lock is safe to take over.
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::backend(operation, e))?
    }
}

/// Classify a SQLite error: a lock still busy after the timeout is throttling (retryable), a
/// value of the wrong type is a decode error, anything else a backend failure.
pub(crate) fn sql_error(operation: &'static str, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::throttled(operation, e)
        }
        _ => StoreError::backend(operation, e),
    }
}

/// Like `sql_error`, but a column that does not convert is a `Decode` error naming `key`.
pub(crate) fn row_error(operation: &'static str, key: &str, e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Decode {
            key: key.to_owned(),
            message: e.to_string(),
        },
        e => sql_error(operation, e),
    }
}

/// Clamp a caller's count to what SQLite's `LIMIT` takes.
pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    /// A folder under the system temp folder, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            let p = std::env::temp_dir().join(format!("sync-local-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
