//! `RecordStore` on the `records` table.

use super::{LocalStore, row_error, sql_error, sql_limit};
use crate::core::size::{self, record_key};
use crate::core::timefmt::now_us;
use crate::core::version::advances_deletion;
use crate::core::{decide_delete, decide_regression, decide_upsert};
use crate::error::StoreError;
use crate::model::{
    ContentHash, DeleteOutcome, EraseOutcome, Erasure, IdVersion, LastAction, LiftOutcome,
    LiveIdPage, Micros, PurgeCount, Record, RegressOutcome, StoredRecord, StoredVersion, Strategy,
    SyncTimes, WriteOutcome, shard_of,
};
use crate::ports::RecordStore;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Statement, TransactionBehavior, params};

const SELECT_VERSION: &str =
    "SELECT delta_us, fetched_at_us, hash, deleted_at_us, erased_us FROM records WHERE pk = ?1";

const INSERT: &str = "INSERT INTO records (pk, entity, id, shard, delta_us, fetched_at_us, hash, \
     payload, first_seen_us, last_synced_us, deleted_at_us, last_action, written_by) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, NULL, ?10, ?11)";

/// An update or a restore: `first_seen_us` kept, `deleted_at_us` cleared (and the erasure's
/// columns, which only the negative control `with_suppression_off` ever finds set here). Bound with `INSERT`'s
/// parameters. `entity`, `id` and `shard` are set too, as DynamoDB's update sets them (they
/// differ from the stored ones only when two (entity, ID) pairs share a key, an entity name
/// holding `#`); the live index entry changes with `delta_us` anyway.
const UPDATE: &str = "UPDATE records SET entity = ?2, id = ?3, shard = ?4, delta_us = ?5, \
     fetched_at_us = ?6, hash = ?7, payload = ?8, last_synced_us = ?9, deleted_at_us = NULL, \
     last_action = ?10, written_by = ?11, erased_us = NULL, erased_by = NULL WHERE pk = ?1";

const SOFT_DELETE: &str = "UPDATE records SET deleted_at_us = ?2, last_action = ?3, \
     written_by = ?4, last_synced_us = ?5 WHERE pk = ?1";

/// A later deletion evidence for an item already soft-deleted (`core::version::advances_deletion`).
const LATER_EVIDENCE: &str =
    "UPDATE records SET deleted_at_us = ?2 WHERE pk = ?1 AND erased_us IS NULL";

const SELECT_SYNC_TIMES: &str =
    "SELECT first_seen_us, last_synced_us, erased_us IS NOT NULL FROM records WHERE pk = ?1";

const SELECT_ITEM: &str = "SELECT entity, id, delta_us, fetched_at_us, hash, deleted_at_us, \
     payload, first_seen_us, last_synced_us, last_action, written_by, erased_us, erased_by \
     FROM records WHERE pk = ?1";

/// An erasure's marker: the key, the erasure, `deleted_at_us` and both times at the erasure,
/// `last_action = erased`; the version columns (NOT NULL) zero and empty, no payload.
const INSERT_MARKER: &str = "INSERT INTO records (pk, entity, id, shard, delta_us, \
     fetched_at_us, hash, payload, first_seen_us, last_synced_us, deleted_at_us, last_action, \
     written_by, erased_us, erased_by) \
     VALUES (?1, ?2, ?3, ?4, 0, 0, '', '', ?5, ?5, ?5, ?6, ?7, ?5, ?8)";

const DELETE_KEY: &str = "DELETE FROM records WHERE pk = ?1";

/// Soft-deleted items (never markers) with evidence before `?1`, of entity `?2` (every entity
/// when NULL), at most `?3`: counted (dry run) or deleted, in one statement.
const COUNT_PURGEABLE: &str = "SELECT count(*) FROM (SELECT 1 FROM records \
     WHERE deleted_at_us < ?1 AND erased_us IS NULL AND (?2 IS NULL OR entity = ?2) LIMIT ?3)";
const PURGE: &str = "DELETE FROM records WHERE rowid IN (SELECT rowid FROM records \
     WHERE deleted_at_us < ?1 AND erased_us IS NULL AND (?2 IS NULL OR entity = ?2) LIMIT ?3)";

/// A shard's live IDs from the key index alone: an entity's keys are the range
/// `["<entity>#", "<entity>$")` ('$' follows '#'), less other entities' keys in it; the ID is
/// the key after the `#`.
const LIST_LIVE_FIRST: &str = "SELECT pk, delta_us FROM records WHERE pk >= ?1 AND pk < ?2 \
     AND shard = ?3 AND deleted_at_us IS NULL AND entity = ?5 ORDER BY pk LIMIT ?4";
const LIST_LIVE_AFTER: &str = "SELECT pk, delta_us FROM records WHERE pk > ?1 AND pk < ?2 \
     AND shard = ?3 AND deleted_at_us IS NULL AND entity = ?5 ORDER BY pk LIMIT ?4";

/// The stored version of `pk`, if any, read inside the caller's transaction.
fn stored_version(conn: &Connection, pk: &str) -> Result<Option<StoredVersion>, StoreError> {
    let mut st = conn
        .prepare_cached(SELECT_VERSION)
        .map_err(|e| sql_error("read record version", e))?;
    read_version(&mut st, pk)
}

/// `stored_version` with the statement prepared once per page.
fn read_version(st: &mut Statement<'_>, pk: &str) -> Result<Option<StoredVersion>, StoreError> {
    let op = "read record version";
    let row = st
        .query_row([pk], |r| {
            let hash = r.get_ref(2)?.as_str().ok().and_then(ContentHash::from_hex);
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                hash,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()
        .map_err(|e| row_error(op, pk, e))?;
    let Some((delta_us, fetched_at_us, hash, deleted_at_us, erased_us)) = row else {
        return Ok(None);
    };
    if let Some(erased_us) = erased_us {
        return Ok(Some(StoredVersion::erased_marker(erased_us)));
    }
    let hash = hash.ok_or_else(|| StoreError::Decode {
        key: pk.to_owned(),
        message: "hash is not 32 hex digits".into(),
    })?;
    Ok(Some(StoredVersion {
        delta_us,
        fetched_at_us,
        hash,
        deleted_at_us,
        erased: false,
    }))
}

/// A page of records as the blocking task takes it: every key and payload in one buffer, so
/// that handing a page over costs one allocation and one copy of each payload, instead of a
/// clone of every record (four allocations each).
pub(super) struct Page {
    buf: String,
    rows: Vec<PageRow>,
    /// Negative control for tests (`LocalStore::with_last_write_wins`): the version rule off.
    #[cfg(any(test, feature = "testing"))]
    pub(super) last_write_wins: bool,
    /// Negative control for tests (`LocalStore::with_suppression_off`): an erasure's marker
    /// taken for a soft-deleted item.
    #[cfg(any(test, feature = "testing"))]
    pub(super) suppression_off: bool,
}

struct PageRow {
    /// `"<entity>#<id>"` in `buf`; the entity is its first `entity_len` bytes, the ID the rest
    /// after the `#`.
    pk: std::ops::Range<usize>,
    entity_len: usize,
    payload: std::ops::Range<usize>,
    version: crate::model::Version,
}

impl Page {
    /// Checks every record against the size rule (`core::size`, as the DynamoDB store does,
    /// before anything is written) and copies the page.
    pub(super) fn new(records: &[Record]) -> Result<Page, StoreError> {
        let mut bytes = 0;
        for r in records {
            size::check_record(&r.entity, &r.id, r.payload.get())?;
            bytes += r.entity.len() + 1 + r.id.len() + r.payload.get().len();
        }
        let mut buf = String::with_capacity(bytes);
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let start = buf.len();
            buf.push_str(&r.entity);
            buf.push('#');
            buf.push_str(&r.id);
            let pk = start..buf.len();
            buf.push_str(r.payload.get());
            rows.push(PageRow {
                payload: pk.end..buf.len(),
                pk,
                entity_len: r.entity.len(),
                version: r.version,
            });
        }
        Ok(Page {
            buf,
            rows,
            #[cfg(any(test, feature = "testing"))]
            last_write_wins: false,
            #[cfg(any(test, feature = "testing"))]
            suppression_off: false,
        })
    }

    /// `core::decide_upsert`, or a negative control's (last write wins; no suppression).
    fn decide(
        &self,
        stored: Option<&StoredVersion>,
        incoming: &crate::model::Version,
    ) -> WriteOutcome {
        #[cfg(any(test, feature = "testing"))]
        if self.suppression_off && stored.is_some_and(|s| s.erased) {
            let tombstone = stored.map(|s| StoredVersion {
                erased: false,
                ..*s
            });
            return decide_upsert(tombstone.as_ref(), incoming);
        }
        #[cfg(any(test, feature = "testing"))]
        if self.last_write_wins {
            return match stored {
                None => WriteOutcome::Inserted,
                Some(s) if s.deleted_at_us.is_some() => WriteOutcome::Restored,
                Some(s) if s.hash == incoming.hash => WriteOutcome::Unchanged,
                Some(_) => WriteOutcome::Updated,
            };
        }
        decide_upsert(stored, incoming)
    }

    fn pk(&self, r: &PageRow) -> &str {
        &self.buf[r.pk.clone()]
    }
    fn entity(&self, r: &PageRow) -> &str {
        &self.buf[r.pk.start..r.pk.start + r.entity_len]
    }
    fn id(&self, r: &PageRow) -> &str {
        &self.buf[r.pk.start + r.entity_len + 1..r.pk.end]
    }
    fn payload(&self, r: &PageRow) -> &str {
        &self.buf[r.payload.clone()]
    }
}

/// `ContentHash::to_hex` without the formatting machinery.
pub(super) fn hex32(h: ContentHash) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in h.0.to_be_bytes().iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

fn upsert_page(
    conn: &mut Connection,
    page: &Page,
    by: Strategy,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let op = "upsert records";
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    let outcomes = upsert_rows(&tx, page, by)?;
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(outcomes)
}

/// The upserts of a page inside the caller's transaction.
pub(super) fn upsert_rows(
    tx: &Connection,
    page: &Page,
    by: Strategy,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let op = "upsert records";
    let now = now_us();
    let mut outcomes = Vec::with_capacity(page.rows.len());
    let mut select = tx
        .prepare_cached(SELECT_VERSION)
        .map_err(|e| sql_error(op, e))?;
    let mut insert = tx.prepare_cached(INSERT).map_err(|e| sql_error(op, e))?;
    let mut update = tx.prepare_cached(UPDATE).map_err(|e| sql_error(op, e))?;
    for r in &page.rows {
        // One lookup per record, inside the transaction, so that a key repeated in the page is
        // decided against the version written before it. (One `pk IN (...)` query for the whole
        // page measured slower: SQLite sorts the list into a temporary index first, while a
        // missing key's lookup walks cached pages only.)
        let pk = page.pk(r);
        let stored = read_version(&mut select, pk)?;
        let outcome = page.decide(stored.as_ref(), &r.version);
        let (stmt, action) = match outcome {
            WriteOutcome::Inserted => (&mut insert, LastAction::Insert),
            WriteOutcome::Updated => (&mut update, LastAction::Update),
            WriteOutcome::Restored => (&mut update, LastAction::Restore),
            WriteOutcome::Unchanged | WriteOutcome::Stale | WriteOutcome::Suppressed => {
                outcomes.push(outcome);
                continue;
            }
        };
        let id = page.id(r);
        let hex = hex32(r.version.hash);
        stmt.execute(params![
            pk,
            page.entity(r),
            id,
            shard_of(id),
            r.version.delta_us,
            r.version.fetched_at_us,
            std::str::from_utf8(&hex).unwrap_or_default(),
            page.payload(r),
            now,
            action.as_str(),
            by.as_str(),
        ])
        .map_err(|e| sql_error(op, e))?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// `RecordStore::write_regressed`: the stored version read and `core::decide_regression`
/// applied inside one immediate transaction, so that no write comes in between.
fn write_regressed_one(
    conn: &mut Connection,
    page: &Page,
    compared: &StoredVersion,
) -> Result<RegressOutcome, StoreError> {
    let op = "write regressed record";
    let Some(r) = page.rows.first() else {
        return Ok(RegressOutcome::Moved);
    };
    let pk = page.pk(r);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    let outcome = decide_regression(stored_version(&tx, pk)?.as_ref(), compared, &r.version);
    if outcome.wrote() {
        let id = page.id(r);
        let hex = hex32(r.version.hash);
        tx.prepare_cached(UPDATE)
            .and_then(|mut st| {
                st.execute(params![
                    pk,
                    page.entity(r),
                    id,
                    shard_of(id),
                    r.version.delta_us,
                    r.version.fetched_at_us,
                    std::str::from_utf8(&hex).unwrap_or_default(),
                    page.payload(r),
                    now_us(),
                    LastAction::Regressed.as_str(),
                    Strategy::Reconcile.as_str(),
                ])
            })
            .map_err(|e| sql_error(op, e))?;
    }
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(outcome)
}

fn soft_delete_one(
    conn: &mut Connection,
    entity: &str,
    id: &str,
    evidence_us: Micros,
    by: Strategy,
    advance: bool,
) -> Result<DeleteOutcome, StoreError> {
    let op = "soft delete record";
    let pk = record_key(entity, id);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    let stored = stored_version(&tx, &pk)?;
    let outcome = decide_delete(stored.as_ref(), evidence_us);
    if advance && advances_deletion(stored.as_ref(), evidence_us) {
        tx.prepare_cached(LATER_EVIDENCE)
            .and_then(|mut st| st.execute(params![pk, evidence_us]))
            .map_err(|e| sql_error(op, e))?;
    }
    if outcome == DeleteOutcome::Deleted {
        tx.prepare_cached(SOFT_DELETE)
            .and_then(|mut st| {
                st.execute(params![
                    pk,
                    evidence_us,
                    LastAction::Delete.as_str(),
                    by.as_str(),
                    now_us()
                ])
            })
            .map_err(|e| sql_error(op, e))?;
    }
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(outcome)
}

/// Run `f` with SQLite's `secure_delete` on (the bytes of what it deletes are overwritten with
/// zeros in the file, not left in free pages), then checkpoint the WAL and truncate it, so that
/// neither the old pages nor older WAL frames of the deleted rows stay on disk. The checkpoint
/// is best effort: a reader in another process may keep it from finishing (the next automatic
/// checkpoint then writes the zeroed pages).
fn securely<T>(
    conn: &mut Connection,
    op: &'static str,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("PRAGMA secure_delete = ON")
        .map_err(|e| sql_error(op, e))?;
    let out = f(conn);
    let reset = conn
        .execute_batch("PRAGMA secure_delete = OFF")
        .map_err(|e| sql_error(op, e));
    let out = out?;
    reset?;
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    Ok(out)
}

/// `RecordStore::erase`: the stored item (any rows of the key) replaced by the marker inside one
/// immediate transaction, its bytes zeroed in the file (`securely`); an existing marker kept.
pub(super) fn erase_one(
    conn: &mut Connection,
    entity: &str,
    id: &str,
    now_us: Micros,
    erased_by: &str,
) -> Result<EraseOutcome, StoreError> {
    let op = "erase record";
    size::check_key(entity, id)?;
    let pk = record_key(entity, id);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    if let Some(e) = get_one(&tx, &pk)?.and_then(|item| item.erased) {
        return Ok(EraseOutcome::AlreadyErased(e));
    }
    let removed = tx
        .prepare_cached(DELETE_KEY)
        .and_then(|mut st| st.execute([&pk]))
        .map_err(|e| sql_error(op, e))?;
    tx.prepare_cached(INSERT_MARKER)
        .and_then(|mut st| {
            st.execute(params![
                pk,
                entity,
                id,
                shard_of(id),
                now_us,
                LastAction::Erased.as_str(),
                Strategy::Manual.as_str(),
                erased_by,
            ])
        })
        .map_err(|e| sql_error(op, e))?;
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(if removed > 0 {
        EraseOutcome::Erased
    } else {
        EraseOutcome::Marked
    })
}

/// `RecordStore::lift_erasure`: the marker deleted, only a marker.
fn lift_one(conn: &mut Connection, pk: &str) -> Result<LiftOutcome, StoreError> {
    let op = "lift erasure";
    let n = conn
        .prepare_cached("DELETE FROM records WHERE pk = ?1 AND erased_us IS NOT NULL")
        .and_then(|mut st| st.execute([pk]))
        .map_err(|e| sql_error(op, e))?;
    Ok(if n > 0 {
        LiftOutcome::Lifted
    } else {
        LiftOutcome::NotErased
    })
}

/// `RecordStore::purge_deleted`: one statement in one immediate transaction (so nothing
/// restores an item between its selection and its deletion: `changed` is always 0 here).
fn purge(
    conn: &mut Connection,
    entity: Option<&str>,
    deleted_before_us: Micros,
    limit: Option<u64>,
    dry_run: bool,
) -> Result<PurgeCount, StoreError> {
    let op = "purge deleted records";
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    let matched: i64 = tx
        .query_row(
            COUNT_PURGEABLE,
            params![deleted_before_us, entity, limit],
            |r| r.get(0),
        )
        .map_err(|e| sql_error(op, e))?;
    let purged = if dry_run {
        0
    } else {
        tx.execute(PURGE, params![deleted_before_us, entity, limit])
            .map_err(|e| sql_error(op, e))?
    };
    tx.commit().map_err(|e| sql_error(op, e))?;
    let matched = u64::try_from(matched).unwrap_or(0);
    Ok(PurgeCount {
        scanned: matched,
        matched,
        purged: purged as u64,
        changed: 0,
    })
}

/// The columns of one row as SQLite has them, before any decoding that can fail.
struct RawItem {
    entity: String,
    id: String,
    delta_us: i64,
    fetched_at_us: i64,
    hash: String,
    deleted_at_us: Option<i64>,
    payload: String,
    first_seen_us: i64,
    last_synced_us: i64,
    last_action: String,
    written_by: String,
    erased_us: Option<i64>,
    erased_by: Option<String>,
}

impl RawItem {
    fn decode(self, pk: &str) -> Result<StoredRecord, StoreError> {
        if let Some(erased_us) = self.erased_us {
            return Ok(StoredRecord::erased_marker(
                &self.entity,
                &self.id,
                Erasure {
                    erased_us,
                    erased_by: self.erased_by.unwrap_or_default(),
                },
            ));
        }
        let bad = |message: String| StoreError::Decode {
            key: pk.to_owned(),
            message,
        };
        let hash = ContentHash::from_hex(&self.hash)
            .ok_or_else(|| bad(format!("hash {:?} is not 32 hex digits", self.hash)))?;
        let payload = serde_json::from_str(&self.payload)
            .map_err(|e| bad(format!("payload is not JSON: {e}")))?;
        let last_action = LastAction::parse(&self.last_action)
            .ok_or_else(|| bad(format!("unknown last_action {:?}", self.last_action)))?;
        let written_by = Strategy::parse(&self.written_by)
            .ok_or_else(|| bad(format!("unknown written_by {:?}", self.written_by)))?;
        Ok(StoredRecord {
            entity: self.entity,
            id: self.id,
            version: StoredVersion {
                delta_us: self.delta_us,
                fetched_at_us: self.fetched_at_us,
                hash,
                deleted_at_us: self.deleted_at_us,
                erased: false,
            },
            payload,
            first_seen_us: self.first_seen_us,
            last_synced_us: self.last_synced_us,
            last_action,
            written_by,
            erased: None,
        })
    }
}

fn get_one(conn: &Connection, pk: &str) -> Result<Option<StoredRecord>, StoreError> {
    let op = "get record";
    let mut st = conn
        .prepare_cached(SELECT_ITEM)
        .map_err(|e| sql_error(op, e))?;
    let raw = st
        .query_row([pk], |r| {
            Ok(RawItem {
                entity: r.get(0)?,
                id: r.get(1)?,
                delta_us: r.get(2)?,
                fetched_at_us: r.get(3)?,
                hash: r.get(4)?,
                deleted_at_us: r.get(5)?,
                payload: r.get(6)?,
                first_seen_us: r.get(7)?,
                last_synced_us: r.get(8)?,
                last_action: r.get(9)?,
                written_by: r.get(10)?,
                erased_us: r.get(11)?,
                erased_by: r.get(12)?,
            })
        })
        .optional()
        .map_err(|e| row_error(op, pk, e))?;
    raw.map(|raw| raw.decode(pk)).transpose()
}

/// The sync times of the stored ones of `ids`, in one read transaction.
fn sync_times_of(
    conn: &mut Connection,
    entity: &str,
    ids: &[String],
) -> Result<std::collections::HashMap<String, SyncTimes>, StoreError> {
    let op = "read sync times";
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(|e| sql_error(op, e))?;
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    {
        let mut st = tx
            .prepare_cached(SELECT_SYNC_TIMES)
            .map_err(|e| sql_error(op, e))?;
        for id in ids {
            let pk = record_key(entity, id);
            let times = st
                .query_row([&pk], |r| {
                    Ok(SyncTimes {
                        first_seen_us: r.get(0)?,
                        last_synced_us: r.get(1)?,
                        erased: r.get(2)?,
                    })
                })
                .optional()
                .map_err(|e| row_error(op, &pk, e))?;
            if let Some(times) = times {
                out.insert(id.clone(), times);
            }
        }
    }
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(out)
}

fn list_live(
    conn: &Connection,
    entity: &str,
    shard: u16,
    after: Option<&str>,
    limit: usize,
) -> Result<LiveIdPage, StoreError> {
    let op = "list live ids";
    // A zero limit would return an empty page that looks like the end of the shard.
    let limit = limit.max(1);
    let fetch = sql_limit(limit.saturating_add(1));
    let key = format!("{entity}#{shard}");
    let prefix = record_key(entity, "");
    let (lo, hi) = (
        record_key(entity, after.unwrap_or("")),
        format!("{entity}$"),
    );
    let mut st = conn
        .prepare_cached(if after.is_some() {
            LIST_LIVE_AFTER
        } else {
            LIST_LIVE_FIRST
        })
        .map_err(|e| sql_error(op, e))?;
    let map_row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<IdVersion> {
        let pk = r.get_ref(0)?.as_str()?;
        Ok(IdVersion {
            id: pk.get(prefix.len()..).unwrap_or_default().to_owned(),
            delta_us: r.get(1)?,
        })
    };
    let rows = st
        .query_map(params![lo, hi, shard, fetch, entity], map_row)
        .map_err(|e| sql_error(op, e))?;
    let mut items = rows
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| row_error(op, &key, e))?;
    let next_after = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|i| i.id.clone())
    } else {
        None
    };
    Ok(LiveIdPage { items, next_after })
}

#[async_trait]
impl RecordStore for LocalStore {
    #[tracing::instrument(level = "debug", skip_all, fields(count = records.len(), by = by.as_str()))]
    async fn upsert_many(
        &self,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let page = self.page(records)?;
        self.db()
            .call("upsert records", move |c| upsert_page(c, &page, by))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, id = %id))]
    async fn soft_delete(
        &self,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError> {
        let (entity, id) = (entity.to_owned(), id.to_owned());
        let advance = self.advances_evidence();
        self.db()
            .call("soft delete record", move |c| {
                soft_delete_one(c, &entity, &id, evidence_us, by, advance)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %record.entity, id = %record.id))]
    async fn write_regressed(
        &self,
        record: &Record,
        compared: &StoredVersion,
    ) -> Result<RegressOutcome, StoreError> {
        let page = Page::new(std::slice::from_ref(record))?;
        let compared = *compared;
        self.db()
            .call("write regressed record", move |c| {
                write_regressed_one(c, &page, &compared)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, id = %id))]
    async fn get(&self, entity: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        let pk = record_key(entity, id);
        self.db().call("get record", move |c| get_one(c, &pk)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, id = %id))]
    async fn erase(
        &self,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError> {
        let (entity, id, by) = (entity.to_owned(), id.to_owned(), erased_by.to_owned());
        self.db()
            .call("erase record", move |c| {
                securely(c, "erase record", |c| {
                    erase_one(c, &entity, &id, now_us, &by)
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, id = %id))]
    async fn lift_erasure(&self, entity: &str, id: &str) -> Result<LiftOutcome, StoreError> {
        let pk = record_key(entity, id);
        self.db()
            .call("lift erasure", move |c| lift_one(c, &pk))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = ?entity, before = deleted_before_us, dry_run))]
    async fn purge_deleted(
        &self,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError> {
        let entity = entity.map(str::to_owned);
        self.db()
            .call("purge deleted records", move |c| {
                securely(c, "purge deleted records", |c| {
                    purge(c, entity.as_deref(), deleted_before_us, limit, dry_run)
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, count = ids.len()))]
    async fn sync_times(
        &self,
        entity: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, SyncTimes>, StoreError> {
        let (entity, ids) = (entity.to_owned(), ids.to_vec());
        self.db()
            .call("read sync times", move |c| sync_times_of(c, &entity, &ids))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(entity = %entity, shard = shard, limit = limit))]
    async fn list_live_ids(
        &self,
        entity: &str,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LiveIdPage, StoreError> {
        let entity = entity.to_owned();
        let after = after.map(str::to_owned);
        self.db()
            .call("list live ids", move |c| {
                list_live(c, &entity, shard, after.as_deref(), limit)
            })
            .await
    }

    fn database_id(&self) -> Option<usize> {
        Some(self.db().id())
    }
}
