//! Domain types shared by every strategy. No IO, no SDK types.

pub use crate::core::json::RawJson;
use std::fmt;

/// Microseconds since the Unix epoch (UTC). Every timestamp we compare is one of these.
pub type Micros = i64;

/// Number of shards of the live-ID index per entity. Fixed: changing it would put existing items
/// in the wrong shard (see ARCHITECTURE.md, "DynamoDB key design").
pub const ID_SHARDS: u16 = 16;

/// The shard of an ID in the live-ID index: a stable hash of its bytes.
pub fn shard_of(id: &str) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(ID_SHARDS)) as u16
}

/// 128-bit hash of a record's JSON as the source sent it (xxh3-128; not a security measure,
/// only "did the content change").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub u128);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(xxhash_rust::xxh3::xxh3_128(bytes))
    }
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(ContentHash)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// The version of one observation of a record: what the version rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The source's delta field (`updated_at`), normalised to epoch microseconds.
    pub delta_us: Micros,
    /// Our clock when the request that got this content was sent (the send time of the
    /// attempt that produced the answer, after every limiter and backoff wait): one clock for
    /// records and 404s alike (`Fetched::sent_us`).
    pub fetched_at_us: Micros,
    /// Hash of the content.
    pub hash: ContentHash,
}

/// A full record as fetched from the source. The payload stays raw JSON: we never rebuild it.
#[derive(Debug, Clone)]
pub struct Record {
    pub entity: String,
    pub id: String,
    pub version: Version,
    pub payload: RawJson,
}

impl Record {
    /// A record as the source sent it: its version's hash is the content hash of the payload's
    /// raw bytes (the one hash rule: the source client and every test build records here).
    pub fn new(
        entity: impl Into<String>,
        id: impl Into<String>,
        delta_us: Micros,
        fetched_at_us: Micros,
        payload: RawJson,
    ) -> Record {
        Record {
            entity: entity.into(),
            id: id.into(),
            version: Version {
                delta_us,
                fetched_at_us,
                hash: ContentHash::of(payload.get().as_bytes()),
            },
            payload,
        }
    }
}

/// What `SourceApi::fetch_by_id` answered: the record (`None` on a JSON 404) and the send time
/// of the attempt that produced the answer (after the rate limiter's and the backoff's waits,
/// immediately before the request went out). A found record's `version.fetched_at_us` is that
/// same instant, so a 404's evidence time and a record's fetch time are read off one clock.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub record: Option<Record>,
    pub sent_us: Micros,
}

/// What a source client sent so far (`SourceApi::usage`): requests (every attempt, retries
/// included) and the 429 answers among them. Cumulative counters read from atomics; an
/// invocation's share is the difference of two readings ([`SourceUsage::since`]), exact because a
/// Lambda instance serves one invocation at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceUsage {
    pub requests: u64,
    pub rate_limited: u64,
}

impl SourceUsage {
    /// What was sent after `before` was read.
    pub fn since(self, before: SourceUsage) -> SourceUsage {
        SourceUsage {
            requests: self.requests.saturating_sub(before.requests),
            rate_limited: self.rate_limited.saturating_sub(before.rate_limited),
        }
    }

    /// One invocation's requests to the source and the 429s among them, as one EMF line with
    /// the `Strategy` dimension (`delta`, `worker`, `reconcile`: the function that sent them).
    /// Each function publishes it once per invocation, zeros included (an idle strategy shows
    /// as 0, not as missing data).
    pub fn metrics(&self, strategy: &str) -> String {
        crate::telemetry::emf(
            &[("Strategy", strategy)],
            &[
                ("SourceRequests", self.requests as f64, "Count"),
                ("SourceRateLimited", self.rate_limited as f64, "Count"),
            ],
        )
    }
}

/// One `(id, version)` pair of an ID listing (reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdVersion {
    pub id: String,
    pub delta_us: Micros,
}

/// Which strategy wrote an item (stored as `written_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    Delta,
    Webhook,
    Targeted,
    Reconcile,
    Manual,
    /// A full re-sync (`sync::resync`).
    Resync,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Delta => "delta",
            Strategy::Webhook => "webhook",
            Strategy::Targeted => "targeted",
            Strategy::Reconcile => "reconcile",
            Strategy::Manual => "manual",
            Strategy::Resync => "resync",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "delta" => Strategy::Delta,
            "webhook" => Strategy::Webhook,
            "targeted" => Strategy::Targeted,
            "reconcile" => Strategy::Reconcile,
            "manual" => Strategy::Manual,
            "resync" => Strategy::Resync,
            _ => return None,
        })
    }
}

/// The last thing done to an item (stored as `last_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastAction {
    Insert,
    Update,
    Restore,
    Delete,
    /// Reconciliation wrote the source's copy over a newer stored one: the source's version
    /// went backwards (an entity with `allow_version_regression`; `core::decide_regression`).
    Regressed,
    /// Erased for a privacy request (`RecordStore::erase`): the item is a suppression marker
    /// holding no data of the record.
    Erased,
}

impl LastAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LastAction::Insert => "insert",
            LastAction::Update => "update",
            LastAction::Restore => "restore",
            LastAction::Delete => "delete",
            LastAction::Regressed => "regressed",
            LastAction::Erased => "erased",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "insert" => LastAction::Insert,
            "update" => LastAction::Update,
            "restore" => LastAction::Restore,
            "delete" => LastAction::Delete,
            "regressed" => LastAction::Regressed,
            "erased" => LastAction::Erased,
            _ => return None,
        })
    }
}

/// What the version rule needs to know of the stored item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVersion {
    pub delta_us: Micros,
    pub fetched_at_us: Micros,
    pub hash: ContentHash,
    /// Evidence time of the soft delete (when the source was seen not to have the record).
    pub deleted_at_us: Option<Micros>,
    /// The item is an erasure's suppression marker (`RecordStore::erase`): no path writes the
    /// record back until the erasure is lifted. Its delta, fetch time and hash are zero (it
    /// holds no version), and `deleted_at_us` is the erasure's time.
    pub erased: bool,
}

impl StoredVersion {
    /// The version of an erasure's suppression marker erased at `erased_us`.
    pub fn erased_marker(erased_us: Micros) -> StoredVersion {
        StoredVersion {
            delta_us: 0,
            fetched_at_us: 0,
            hash: ContentHash(0),
            deleted_at_us: Some(erased_us),
            erased: true,
        }
    }
}

/// When a stored item was first written and last written (live or soft-deleted): what
/// reconciliation reads, strongly consistent, to tell a record synced during its run from one
/// the source no longer has (`RecordStore::sync_times`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTimes {
    pub first_seen_us: Micros,
    pub last_synced_us: Micros,
    /// The item is an erasure's suppression marker (both times are the erasure's then).
    pub erased: bool,
}

impl SyncTimes {
    /// Written at or after `t` (first stored, or synced since).
    pub fn touched_since(&self, t: Micros) -> bool {
        self.first_seen_us >= t || self.last_synced_us >= t
    }
}

/// An item as a store returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub entity: String,
    pub id: String,
    pub version: StoredVersion,
    pub payload: serde_json::Value,
    pub first_seen_us: Micros,
    pub last_synced_us: Micros,
    pub last_action: LastAction,
    pub written_by: Strategy,
    /// Set on an erasure's suppression marker (`RecordStore::erase`), which holds no data of
    /// the record: `payload` is `null`, the version is `StoredVersion::erased_marker`, both
    /// times and `deleted_at_us` are the erasure's, `last_action` is `erased`.
    pub erased: Option<Erasure>,
}

impl StoredRecord {
    /// Soft-deleted, or erased (a marker counts as deleted for every reader).
    pub fn is_deleted(&self) -> bool {
        self.version.deleted_at_us.is_some()
    }

    pub fn is_erased(&self) -> bool {
        self.erased.is_some()
    }

    /// What a store returns for an erasure's marker of `entity`/`id`.
    pub fn erased_marker(entity: &str, id: &str, erasure: Erasure) -> StoredRecord {
        StoredRecord {
            entity: entity.to_owned(),
            id: id.to_owned(),
            version: StoredVersion::erased_marker(erasure.erased_us),
            payload: serde_json::Value::Null,
            first_seen_us: erasure.erased_us,
            last_synced_us: erasure.erased_us,
            last_action: LastAction::Erased,
            written_by: Strategy::Manual,
            erased: Some(erasure),
        }
    }
}

/// Who erased a record and when (the suppression marker's `erased_us`, `erased_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub erased_us: Micros,
    /// The operator named by `syncctl erase --actor` (free text, for the audit trail).
    pub erased_by: String,
}

/// Result of `RecordStore::erase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseOutcome {
    /// A stored record (live or soft-deleted) was replaced by the marker.
    Erased,
    /// Nothing was stored: the marker alone keeps the record out.
    Marked,
    /// Already erased: the earlier marker is kept as it was.
    AlreadyErased(Erasure),
}

/// Result of `RecordStore::lift_erasure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiftOutcome {
    /// The marker is gone: the next sync that sees the record writes it afresh.
    Lifted,
    /// No marker: nothing done (a live or soft-deleted item is left alone).
    NotErased,
}

/// What `RecordStore::purge_deleted` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCount {
    /// Items read to find them (DynamoDB: the Scan's `ScannedCount`; locally the matches).
    pub scanned: u64,
    /// Soft-deleted items older than the cutoff found.
    pub matched: u64,
    /// Of them, removed (zero on a dry run).
    pub purged: u64,
    /// Of them, kept because they changed between the read and the delete (restored, or a
    /// later deletion evidence): the delete is conditional on the copy read.
    pub changed: u64,
}

/// Result of a conditional upsert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Inserted,
    Updated,
    /// Written over a soft-deleted item: the source has it again.
    Restored,
    /// Same version and content: nothing written.
    Unchanged,
    /// Older than what is stored (or an equal version fetched earlier): nothing written.
    Stale,
    /// The record was erased (`RecordStore::erase`): its suppression marker refuses every
    /// write until the erasure is lifted. Nothing written.
    Suppressed,
}

impl WriteOutcome {
    pub fn wrote(self) -> bool {
        matches!(
            self,
            WriteOutcome::Inserted | WriteOutcome::Updated | WriteOutcome::Restored
        )
    }
}

/// Result of reconciliation's conditional write of a record whose source version went
/// backwards (`RecordStore::write_regressed`, `core::decide_regression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegressOutcome {
    /// Written: the stored copy was the one compared, newer than the fetched one, fetched
    /// before it, with other content.
    Regressed,
    /// Same content as the stored copy: nothing written.
    Unchanged,
    /// The fetch was sent at or before the stored copy's: it may predate that copy, so it
    /// proves nothing about the source now. Nothing written.
    FetchedBefore,
    /// The fetched version is not below the stored one: no regression (the ordinary version
    /// rule applies). Nothing written.
    NotNewer,
    /// The stored copy is no longer the one compared (another write or a delete came in
    /// between, or it is gone): that write wins. Nothing written.
    Moved,
}

impl RegressOutcome {
    pub fn wrote(self) -> bool {
        self == RegressOutcome::Regressed
    }
}

/// Result of a conditional soft delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    AlreadyDeleted,
    /// The item was synced at or after the evidence: the source had it then, keep it.
    NewerThanEvidence,
    /// The record was erased: the marker stays as it is.
    Suppressed,
}

/// A page of live `(id, version)` pairs from one shard of the destination, sorted bytewise by ID.
#[derive(Debug, Clone, Default)]
pub struct LiveIdPage {
    pub items: Vec<IdVersion>,
    /// Pass back as `after` to get the next page; `None` at the end of the shard.
    pub next_after: Option<String>,
}

/// Why a record was taken out of a page (or a single-record answer) instead of failing it:
/// one bad record must not stop an entity's sync. Says what is wrong, never echoes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No ID (absent, or `null`) at the entity's `id_pointer`.
    MissingId,
    /// The ID is neither a string nor an integer, or a string whose escapes do not decode.
    BadId,
    EmptyId,
    /// Longer than the store takes ([`crate::core::size::MAX_ID_BYTES`]).
    LongId,
    /// No delta value at the entity's `delta_pointer`.
    MissingDelta,
    /// The delta value is `null`.
    NullDelta,
    /// The delta value does not read in `source.timestamp_format`.
    BadDelta,
    /// An RFC 3339 timestamp without a UTC offset, and no `source.timestamp_offset` configured.
    NaiveTimestamp,
    /// A string of the record holds a `\u` escape of an unpaired UTF-16 surrogate: no JSON
    /// reader that decodes strings (serde_json, DynamoDB's, the application's) can read it.
    LoneSurrogate,
    /// The store refused it (`StoreError::TooLarge`): over the payload or the key limits.
    TooLarge,
}

impl RejectReason {
    /// The reason's code, as the run history and the logs carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingId => "missing_id",
            RejectReason::BadId => "bad_id",
            RejectReason::EmptyId => "empty_id",
            RejectReason::LongId => "long_id",
            RejectReason::MissingDelta => "missing_delta",
            RejectReason::NullDelta => "null_delta",
            RejectReason::BadDelta => "bad_delta",
            RejectReason::NaiveTimestamp => "naive_timestamp",
            RejectReason::LoneSurrogate => "lone_surrogate",
            RejectReason::TooLarge => "too_large",
        }
    }

    /// Whether a record rejected for this reason still has an ID the store could hold (then
    /// reconciliation counts it as present at the source).
    pub fn id_usable(self) -> bool {
        !matches!(
            self,
            RejectReason::MissingId
                | RejectReason::BadId
                | RejectReason::EmptyId
                | RejectReason::LongId
        )
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            RejectReason::MissingId => "no ID at the entity's id_pointer",
            RejectReason::BadId => "the ID is neither a string nor an integer",
            RejectReason::EmptyId => "the ID is empty",
            RejectReason::LongId => {
                return write!(
                    f,
                    "{} (the ID is longer than the {} bytes the store takes)",
                    self.as_str(),
                    crate::core::size::MAX_ID_BYTES
                );
            }
            RejectReason::MissingDelta => "no delta value at the entity's delta_pointer",
            RejectReason::NullDelta => "the delta value is null",
            RejectReason::BadDelta => "the delta value does not read in source.timestamp_format",
            RejectReason::NaiveTimestamp => {
                "the delta value has no UTC offset (set source.timestamp_offset)"
            }
            RejectReason::LoneSurrogate => "a string holds an unpaired surrogate escape",
            RejectReason::TooLarge => "too large for the store",
        };
        write!(f, "{} ({what})", self.as_str())
    }
}

/// A record taken out of a page: its ID when that reads, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The ID as the source wrote it (for a [`RejectReason::LongId`], its first 64
    /// characters and `…`); `None` when it does not read.
    pub id: Option<String>,
    pub reason: RejectReason,
}

impl Rejected {
    /// The ID when the store could hold it: what reconciliation counts as present at the source.
    pub fn usable_id(&self) -> Option<&str> {
        self.id.as_deref().filter(|_| self.reason.id_usable())
    }
}

#[cfg(test)]
mod tests {
    use super::SourceUsage;

    #[test]
    fn source_usage_is_the_invocations_share_as_one_emf_line_per_strategy() {
        let before = SourceUsage {
            requests: 40,
            rate_limited: 2,
        };
        let after = SourceUsage {
            requests: 47,
            rate_limited: 5,
        };
        let used = after.since(before);
        assert_eq!(
            used,
            SourceUsage {
                requests: 7,
                rate_limited: 3
            }
        );
        let v: serde_json::Value = serde_json::from_str(&used.metrics("worker")).unwrap();
        assert_eq!(v["Strategy"], "worker");
        assert_eq!(v["SourceRequests"], 7.0);
        assert_eq!(v["SourceRateLimited"], 3.0);
        let m = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Dimensions"], serde_json::json!([["Strategy"]]));
        let names: Vec<&str> = m["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["SourceRequests", "SourceRateLimited"]);
        // A reading older than `before` (a client replaced) never goes negative.
        assert_eq!(before.since(after), SourceUsage::default());
    }
}
