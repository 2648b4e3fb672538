//! Both tables described as plain data: the single definition that `create_tables` (and so
//! `syncctl init`) builds from and that the test of `template.yaml` compares against. No IO, no
//! SDK types.
//!
//! # `records` (what the user's application reads)
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `pk` | S | table key: `"<entity>#<id>"` (IDs are always strings; entity names never contain `#`) |
//! | `entity`, `id` | S | the parts of the key, for the application |
//! | `delta_us`, `fetched_at_us` | N | the version: the source's delta field and our fetch time (the send time of the request that got it), epoch µs |
//! | `hash` | S | xxh3-128 of the raw JSON, 32 hex digits (`ContentHash::to_hex`) |
//! | `payload` | M | the record as a native DynamoDB value (objects → M, arrays → L, strings → S, numbers → N, booleans → BOOL, null → NULL) |
//! | `payload_z` + `payload_encoding` | B + S | instead of `payload` when it cannot be a native value (see `payload`): zlib-compressed JSON, `"zlib-json"` |
//! | `first_seen_us` | N | our clock at the first write (kept across updates, deletes and restores) |
//! | `last_synced_us` | N | our clock at the last write |
//! | `deleted_at_us` | N | only on soft-deleted items: the deletion's evidence time |
//! | `last_action` | S | `insert`, `update`, `restore`, `delete`, `regressed` or `erased` |
//! | `written_by` | S | the strategy that wrote last (`delta`, `webhook`, `targeted`, `reconcile`, `manual`) |
//! | `gsi_pk`, `gsi_sk` | S | only on live items: `"<entity>#<shard>"` (`model::shard_of`) and the ID |
//! | `erased_us`, `erased_by` | N, S | only on an erasure's suppression marker (`RecordStore::erase`): when and by whom |
//! | `expires_at` | N | only on soft-deleted items, when the stack keeps them for a time (`TombstoneRetentionDays`): the table's TTL attribute, epoch **seconds**, `deleted_at_us` plus the retention; every write that restores the item removes it |
//!
//! An erasure's marker holds `pk`, `entity`, `id`, `erased_us`, `erased_by`, `deleted_at_us`,
//! `first_seen_us` and `last_synced_us` (all three the erasure's time), `last_action = erased`
//! and `written_by = manual`: no payload, no version, not in the live index. Every conditional
//! write of the store requires `attribute_not_exists(erased_us)`, so no path writes the record
//! back until `lift_erasure` deletes the marker.
//!
//! The global secondary index `live_ids` (hash `gsi_pk`, range `gsi_sk`) is sparse: a soft
//! delete REMOVEs both attributes, a restore sets them again. Listing an entity's live IDs is
//! `ID_SHARDS` queries that come back sorted bytewise by ID, with no scan and no hot partition.
//!
//! **Projection `INCLUDE [delta_us]`, not `KEYS_ONLY`** (a deliberate change from issue 2):
//! reconciliation needs the version of every destination ID to find the records the destination
//! holds stale (the seed's "data drift"); with KEYS_ONLY it would need a GetItem per ID (a read
//! unit and a round trip each, millions per run on large entities). Projecting one number costs a
//! few bytes per index entry and keeps the listing a handful of sorted queries.
//!
//! Streams `NEW_AND_OLD_IMAGES`, so the application can react to changes and to soft deletes
//! (seen as an update that sets `deleted_at_us`). On-demand billing; point-in-time recovery.
//!
//! # `control` (cursors, leases, run history, processed event IDs)
//!
//! Key `pk` (S) + `sk` (S); TTL attribute `ttl` (epoch **seconds**). Items:
//! - job state: `pk = "job#<entity>#<kind>"`, `sk = "state"`: `cursor` (S), `cursor_updated_us`,
//!   `lease_holder` (S), `lease_expires_us`, `lease_token` (N, +1 on each acquisition by a new
//!   holder). Cursor and lease share one item so that the fenced cursor write is a single
//!   conditional update.
//! - run history: `pk = "runs#<entity>#<kind>"`, `sk = "<started_us, 20 digits>#<run_id>"`
//!   (sorts by start, then run ID), `ttl` 90 days after the last write; listed newest first with
//!   `ScanIndexForward = false`.
//! - webhook dedup: `pk = "event#<event_id>"`, `sk = "event"`: `event_id`, `status`
//!   (`completed`; `in_progress` on claims an older worker wrote, read as not processed),
//!   `until_us`, `ttl` (= `until_us` in seconds, rounded up). Written once per processed event,
//!   after its work. An expired marker is treated as absent whether or not TTL has removed it
//!   yet (TTL deletion lags by up to days).
//! - the worker's rolling 404 window: `pk = "notfound#<entity>"`, `sk = "window"`: `entity`,
//!   `f_<w>` and `n_<w>` (N: fetches and unexpected 404s of the 10-minute bucket `w`,
//!   `ports::not_found_window`), `ttl` at the end of bucket `w + 1`. Each write adds to the
//!   current bucket and removes the six before the previous one; reads sum `w` and `w - 1`.
//! - the shared rate budget of a source account: `pk = "budget#<account>"`, `sk = "state"`:
//!   `tat_us` (N, the end of the last slice handed out, `core::budget`), `paused_until_us` (a
//!   source's `Retry-After`), `limit_requests` and `limit_per_us` (the limit the source's
//!   headers announced), `ttl` a day after the last slice. One conditional UpdateItem per slice.

/// A scalar attribute type, as key schemas and attribute definitions spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrType {
    S,
    N,
    B,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::S => "S",
            AttrType::N => "N",
            AttrType::B => "B",
        }
    }
}

/// A key attribute: its name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyAttr {
    pub name: &'static str,
    pub ty: AttrType,
}

/// What an index projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionType {
    All,
    KeysOnly,
    Include,
}

impl ProjectionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionType::All => "ALL",
            ProjectionType::KeysOnly => "KEYS_ONLY",
            ProjectionType::Include => "INCLUDE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub kind: ProjectionType,
    /// The non-key attributes of an `INCLUDE` projection.
    pub non_key_attributes: &'static [&'static str],
}

/// A global secondary index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gsi {
    pub name: &'static str,
    pub hash: KeyAttr,
    pub range: Option<KeyAttr>,
    pub projection: Projection,
}

/// One table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSchema {
    /// The table's logical ID in `template.yaml`.
    pub logical_id: &'static str,
    /// The environment variable that gives the Lambdas the table's name.
    pub env_var: &'static str,
    /// The name `syncctl init` uses when neither a flag nor the environment gives one.
    pub default_name: &'static str,
    pub hash: KeyAttr,
    pub range: Option<KeyAttr>,
    pub gsis: &'static [Gsi],
    /// `PAY_PER_REQUEST` (on-demand).
    pub billing_mode: &'static str,
    /// Stream view type, when streams are enabled.
    pub stream_view_type: Option<&'static str>,
    /// The TTL attribute (epoch seconds), when TTL is enabled.
    pub ttl_attribute: Option<&'static str>,
    pub point_in_time_recovery: bool,
}

impl TableSchema {
    /// Every key attribute of the table and its indexes, once each, sorted by name: the
    /// table's `AttributeDefinitions`.
    pub fn attribute_definitions(&self) -> Vec<KeyAttr> {
        let mut all = vec![self.hash];
        all.extend(self.range);
        for g in self.gsis {
            all.push(g.hash);
            all.extend(g.range);
        }
        all.sort();
        all.dedup();
        all
    }
}

/// Attribute names of both tables.
pub mod attr {
    pub const PK: &str = "pk";
    pub const SK: &str = "sk";
    // records
    pub const ENTITY: &str = "entity";
    pub const ID: &str = "id";
    pub const DELTA_US: &str = "delta_us";
    pub const FETCHED_AT_US: &str = "fetched_at_us";
    pub const HASH: &str = "hash";
    pub const PAYLOAD: &str = "payload";
    pub const PAYLOAD_Z: &str = "payload_z";
    pub const PAYLOAD_ENCODING: &str = "payload_encoding";
    pub const FIRST_SEEN_US: &str = "first_seen_us";
    pub const LAST_SYNCED_US: &str = "last_synced_us";
    pub const DELETED_AT_US: &str = "deleted_at_us";
    pub const LAST_ACTION: &str = "last_action";
    pub const WRITTEN_BY: &str = "written_by";
    pub const GSI_PK: &str = "gsi_pk";
    pub const GSI_SK: &str = "gsi_sk";
    pub const ERASED_US: &str = "erased_us";
    pub const ERASED_BY: &str = "erased_by";
    pub const EXPIRES_AT: &str = "expires_at";
    // control
    pub const KIND: &str = "kind";
    pub const CURSOR: &str = "cursor";
    pub const CURSOR_UPDATED_US: &str = "cursor_updated_us";
    pub const LEASE_HOLDER: &str = "lease_holder";
    pub const LEASE_EXPIRES_US: &str = "lease_expires_us";
    pub const LEASE_TOKEN: &str = "lease_token";
    pub const RUN_ID: &str = "run_id";
    pub const STARTED_US: &str = "started_us";
    pub const FINISHED_US: &str = "finished_us";
    pub const STATUS: &str = "status";
    pub const SUMMARY: &str = "summary";
    pub const EVENT_ID: &str = "event_id";
    pub const UNTIL_US: &str = "until_us";
    pub const TTL: &str = "ttl";
    pub const TAT_US: &str = "tat_us";
    pub const PAUSED_UNTIL_US: &str = "paused_until_us";
    pub const LIMIT_REQUESTS: &str = "limit_requests";
    pub const LIMIT_PER_US: &str = "limit_per_us";
}

/// The value of `payload_encoding` beside `payload_z`.
pub const PAYLOAD_ENCODING_ZLIB_JSON: &str = "zlib-json";

/// The sparse live-ID index of `records`.
pub const LIVE_IDS_INDEX: &str = "live_ids";

pub const PAY_PER_REQUEST: &str = "PAY_PER_REQUEST";
pub const NEW_AND_OLD_IMAGES: &str = "NEW_AND_OLD_IMAGES";

pub const RECORDS: TableSchema = TableSchema {
    logical_id: "RecordsTable",
    env_var: "RECORDS_TABLE",
    default_name: "sync-records",
    hash: KeyAttr {
        name: attr::PK,
        ty: AttrType::S,
    },
    range: None,
    gsis: &[Gsi {
        name: LIVE_IDS_INDEX,
        hash: KeyAttr {
            name: attr::GSI_PK,
            ty: AttrType::S,
        },
        range: Some(KeyAttr {
            name: attr::GSI_SK,
            ty: AttrType::S,
        }),
        projection: Projection {
            kind: ProjectionType::Include,
            non_key_attributes: &[attr::DELTA_US],
        },
    }],
    billing_mode: PAY_PER_REQUEST,
    stream_view_type: Some(NEW_AND_OLD_IMAGES),
    ttl_attribute: Some(attr::EXPIRES_AT),
    point_in_time_recovery: true,
};

pub const CONTROL: TableSchema = TableSchema {
    logical_id: "ControlTable",
    env_var: "CONTROL_TABLE",
    default_name: "sync-control",
    hash: KeyAttr {
        name: attr::PK,
        ty: AttrType::S,
    },
    range: Some(KeyAttr {
        name: attr::SK,
        ty: AttrType::S,
    }),
    gsis: &[],
    billing_mode: PAY_PER_REQUEST,
    stream_view_type: Some(NEW_AND_OLD_IMAGES),
    ttl_attribute: Some(attr::TTL),
    point_in_time_recovery: true,
};

/// Both tables.
pub const TABLES: [&TableSchema; 2] = [&RECORDS, &CONTROL];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_definitions_cover_every_key_once() {
        let names: Vec<&str> = RECORDS
            .attribute_definitions()
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["gsi_pk", "gsi_sk", "pk"]);
        let names: Vec<&str> = CONTROL
            .attribute_definitions()
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["pk", "sk"]);
    }
}
