//! `RecordStore` on the `records` table (layout in [`super::schema`]).

use super::conditional::{self, Attempt};
use super::item::{Item, ItemReader, n, s, ttl_seconds};
use super::payload::{self, StoredPayload};
use super::schema::{LIVE_IDS_INDEX, PAYLOAD_ENCODING_ZLIB_JSON, attr};
use crate::adapters::aws::store_error;
use crate::config::TombstoneRetention;
use crate::core::size;
use crate::core::timefmt::now_us;
use crate::core::version::advances_deletion;
use crate::core::{decide_delete, decide_regression, decide_upsert};
use crate::error::StoreError;
use crate::model::{
    ContentHash, DeleteOutcome, EraseOutcome, Erasure, IdVersion, LastAction, LiftOutcome,
    LiveIdPage, Micros, PurgeCount, Record, RegressOutcome, StoredRecord, StoredVersion, Strategy,
    SyncTimes, Version, WriteOutcome, shard_of,
};
use crate::ports::RecordStore;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};

mod operator;

/// Conditional writes in flight per `upsert_many` (outcomes still come back in input order).
pub const UPSERT_CONCURRENCY: usize = 32;

/// Conditional deletes in flight per page of `purge_deleted`'s scan.
pub const PURGE_CONCURRENCY: usize = 16;

// The key limits and the item key are the size rule of both stores; re-exported here, where
// callers of this store have always found them.
pub use crate::core::size::{MAX_ID_BYTES, MAX_PK_BYTES, record_key};

/// The live-ID index partition of an ID: `"<entity>#<shard>"`.
pub fn live_ids_partition(entity: &str, shard: u16) -> String {
    format!("{entity}#{shard}")
}

/// The `records` table through the AWS SDK.
///
/// # Upserts
///
/// One conditional `UpdateItem` per record (never BatchWriteItem, which takes no condition,
/// nor TransactWriteItems, where one conflict cancels the rest), [`UPSERT_CONCURRENCY`] in
/// flight. The condition is `core::decide_upsert` written on numbers (no timestamp strings):
///
/// ```text
/// attribute_not_exists(pk)                                                      -- Inserted
/// OR (attribute_exists(deleted_at_us) AND deleted_at_us < :fetched)             -- Restored
/// OR (attribute_not_exists(deleted_at_us) AND hash <> :hash
///     AND (delta_us < :delta OR (delta_us = :delta AND fetched_at_us < :fetched))) -- Updated
/// ```
///
/// `last_action` must say which of the three happened, and an update expression cannot branch
/// on the old item. So each attempt sends **one disjunct** as its condition, with the matching
/// `last_action`: a guess first (the kind of the last successful write: inserts during a
/// backfill, updates afterwards), then, when the condition fails, the case that
/// `decide_upsert` picks from the old item (`ReturnValuesOnConditionCheckFailure = ALL_OLD`).
/// Unchanged and Stale come straight from that classification, so the pure function is the
/// single source of truth for every outcome; a written outcome is checked against
/// `decide_upsert` of the replaced item (`ReturnValues = ALL_OLD`). The union of the conditions
/// is the rule above, and a record is written only under its own case's condition, so I2/I3 hold
/// whatever the guess. Cost: one call for Unchanged, Stale and a correct guess, two for a wrong
/// guess or a restore; another attempt only when a concurrent writer changed the item.
///
/// Every written item gets `gsi_pk`/`gsi_sk` (live in the index), loses `deleted_at_us` (a
/// restore), keeps `first_seen_us` (`if_not_exists`), and has exactly one of `payload` and
/// `payload_z` (see [`super::payload`]). Every record of a batch is checked against the size
/// rule (`core::size`) and encoded before the first write, so a `TooLarge` record fails the
/// batch before anything is written.
///
/// # Soft deletes
///
/// `attribute_exists(pk) AND attribute_not_exists(deleted_at_us) AND fetched_at_us < :evidence`:
/// sets `deleted_at_us`, `last_action = delete`, `written_by`, `last_synced_us`, and REMOVEs
/// `gsi_pk`/`gsi_sk` (out of the sparse index); the payload stays. A failed condition is
/// classified by `core::decide_delete` on the old item (none: NotFound). With a tombstone
/// retention (`with_tombstone_retention`, the stack's `TombstoneRetentionDays`) it also sets
/// the TTL attribute `expires_at` to the evidence plus the retention (a later evidence moves
/// it too), and every upsert and regression REMOVEs it, so that a restored record never
/// expires; DynamoDB's TTL then deletes the tombstone (within a few days of that time).
///
/// # Erasures
///
/// `erase` is one `PutItem` of the marker (see [`super::schema`]) under
/// `attribute_not_exists(erased_us)`: whatever the item held is replaced at once (the old
/// image, `ALL_OLD`, says whether there was one), and an existing marker is kept
/// (`AlreadyErased`, from the failed condition's image). Every conditional write above also
/// requires `attribute_not_exists(erased_us)`, and a failed condition's image of a marker is
/// classified `Suppressed` (`Moved` for a regression) by the version rule, so the suppression is
/// checked in the same write as the version, never by a read before it. `lift_erasure` is a
/// `DeleteItem` under `attribute_exists(erased_us)`. `purge_deleted` scans the whole table
/// (a FilterExpression on `deleted_at_us`, markers excluded) and deletes each match under
/// `deleted_at_us = :seen AND attribute_not_exists(erased_us)`, [`PURGE_CONCURRENCY`] in flight.
///
/// # Regressions
///
/// `write_regressed` (reconciliation, entities with `allow_version_regression`) is one
/// `UpdateItem` writing the whole record like an upsert (`last_action = regressed`), under
/// [`REGRESS_CONDITION`]: `core::decide_regression` on numbers, the stored item exactly the copy
/// compared. It is always sent; a failed condition's old image is classified by
/// `decide_regression` (none: `Moved`), as the local store's transaction decides.
///
/// # Reads
///
/// `get` is a consistent GetItem. `list_live_ids` queries the `live_ids` index (eventually
/// consistent, as every GSI: a write shows up in it after a short delay on AWS).
#[derive(Debug)]
pub struct DynamoRecords {
    client: Client,
    table: String,
    /// The kind of the last successful write: the first guess of the next upsert.
    guess: AtomicU8,
    /// How long a soft-deleted item is kept (its `expires_at`); for ever by default.
    retention: TombstoneRetention,
}

impl DynamoRecords {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoRecords {
            client,
            table: table.into(),
            guess: AtomicU8::new(Case::Insert as u8),
            retention: TombstoneRetention::forever(),
        }
    }

    /// Soft deletes set the TTL attribute `expires_at` to their evidence plus `retention`
    /// (none when it is for ever, the default).
    pub fn with_tombstone_retention(mut self, retention: TombstoneRetention) -> Self {
        self.retention = retention;
        self
    }

    /// `SET #expires = :expires` for a deletion with evidence at `evidence_us` (with a leading
    /// `, `), and its value; nothing when soft-deleted items are kept for ever.
    fn expiry(&self, evidence_us: Micros) -> Option<(&'static str, AttributeValue)> {
        self.retention
            .expires_at_us(evidence_us)
            .map(|at| (", #expires = :expires", n(ttl_seconds(at))))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn first_guess(&self) -> Case {
        if self.guess.load(Ordering::Relaxed) == Case::Update as u8 {
            Case::Update
        } else {
            Case::Insert
        }
    }

    /// The stored versions of these keys (absent keys are new), strongly consistent.
    async fn stored_versions(
        &self,
        pks: &[&str],
    ) -> Result<HashMap<String, StoredVersion>, StoreError> {
        let projection = [
            attr::PK,
            attr::DELTA_US,
            attr::FETCHED_AT_US,
            attr::HASH,
            attr::DELETED_AT_US,
            attr::ERASED_US,
        ];
        let mut found = HashMap::with_capacity(pks.len());
        for item in self
            .batch_get(pks, &projection, "read stored versions")
            .await?
        {
            let pk = ItemReader::new("records", &item).s(attr::PK)?.to_owned();
            let v = decode_version(&pk, &item)?;
            found.insert(pk, v);
        }
        Ok(found)
    }

    /// The items of these keys that exist, projected to `projection`, strongly consistent
    /// (`item::batch_get`).
    async fn batch_get(
        &self,
        pks: &[&str],
        projection: &[&str],
        op: &'static str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut unique: Vec<&str> = pks.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let keys = unique
            .iter()
            .map(|pk| HashMap::from([(attr::PK.to_owned(), s(*pk))]))
            .collect();
        super::item::batch_get(
            self.client.batch_get_item(),
            &self.table,
            keys,
            super::item::Read::Strong,
            projection,
            op,
        )
        .await
    }

    async fn upsert_one(
        &self,
        e: &Encoded<'_>,
        by: Strategy,
        now: Micros,
        known: Option<Case>,
    ) -> Result<WriteOutcome, StoreError> {
        let first = known.unwrap_or_else(|| self.first_guess());
        conditional::until_settled("upsert record", &e.pk, first, move |case| {
            self.upsert_attempt(e, case, by, now)
        })
        .await
    }

    /// One conditional write of `e` under `case`'s condition: the outcome, or the case the
    /// failed condition's old image calls for.
    async fn upsert_attempt(
        &self,
        e: &Encoded<'_>,
        case: Case,
        by: Strategy,
        now: Micros,
    ) -> Result<Attempt<WriteOutcome, Case>, StoreError> {
        let op = "upsert record";
        match self.upsert_request(e, case, by, now).send().await {
            Ok(out) => {
                let old = out
                    .attributes()
                    .filter(|a| !a.is_empty())
                    .map(|a| decode_version(&e.pk, a))
                    .transpose()?;
                let decided = decide_upsert(old.as_ref(), &e.version);
                if decided != case.outcome() {
                    return Err(StoreError::Decode {
                        key: e.pk.clone(),
                        message: format!(
                            "written as {:?}, but the version rule says {decided:?} for the \
                             item it replaced ({old:?})",
                            case.outcome()
                        ),
                    });
                }
                if case != Case::Restore {
                    self.guess.store(case as u8, Ordering::Relaxed);
                }
                Ok(Attempt::Done(decided))
            }
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    let old = failed
                        .item()
                        .map(|a| decode_version(&e.pk, a))
                        .transpose()?;
                    let decided = decide_upsert(old.as_ref(), &e.version);
                    Ok(match Case::for_outcome(decided) {
                        None => Attempt::Done(decided),
                        Some(c) => Attempt::Again(c),
                    })
                }
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }

    fn upsert_request(
        &self,
        e: &Encoded<'_>,
        case: Case,
        by: Strategy,
        now: Micros,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.write_request(e, case.condition(), case.action(), by, now)
    }

    /// The conditional UpdateItem that writes `e` whole (an upsert's or a regression's), under
    /// `condition`, with `action` as its `last_action`.
    fn write_request(
        &self,
        e: &Encoded<'_>,
        condition: &'static str,
        action: LastAction,
        by: Strategy,
        now: Micros,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let v = &e.version;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(&e.pk))
            .condition_expression(condition)
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#entity", attr::ENTITY)
            .expression_attribute_names("#id", attr::ID)
            .expression_attribute_names("#delta", attr::DELTA_US)
            .expression_attribute_names("#fetched", attr::FETCHED_AT_US)
            .expression_attribute_names("#hash", attr::HASH)
            .expression_attribute_names("#payload", attr::PAYLOAD)
            .expression_attribute_names("#payload_z", attr::PAYLOAD_Z)
            .expression_attribute_names("#encoding", attr::PAYLOAD_ENCODING)
            .expression_attribute_names("#first_seen", attr::FIRST_SEEN_US)
            .expression_attribute_names("#last_synced", attr::LAST_SYNCED_US)
            .expression_attribute_names("#deleted_at", attr::DELETED_AT_US)
            .expression_attribute_names("#last_action", attr::LAST_ACTION)
            .expression_attribute_names("#written_by", attr::WRITTEN_BY)
            .expression_attribute_names("#gsi_pk", attr::GSI_PK)
            .expression_attribute_names("#gsi_sk", attr::GSI_SK)
            .expression_attribute_names("#erased", attr::ERASED_US)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":entity", s(e.entity))
            .expression_attribute_values(":id", s(e.id))
            .expression_attribute_values(":delta", n(v.delta_us))
            .expression_attribute_values(":fetched", n(v.fetched_at_us))
            .expression_attribute_values(":hash", s(v.hash.to_hex()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":action", s(action.as_str()))
            .expression_attribute_values(":by", s(by.as_str()))
            .expression_attribute_values(":gsi_pk", s(&e.gsi_pk));
        req = match &e.payload {
            StoredPayload::Native(av) => req
                .update_expression(UPSERT_NATIVE)
                .expression_attribute_values(":payload", av.clone()),
            StoredPayload::Compressed(z) => req
                .update_expression(UPSERT_COMPRESSED)
                .expression_attribute_values(":payload_z", AttributeValue::B(Blob::new(z.clone())))
                .expression_attribute_values(":encoding", s(PAYLOAD_ENCODING_ZLIB_JSON)),
        };
        req
    }

    /// One conditional write of a regressed record over exactly `compared`: the outcome, or
    /// `Again` when the item changed between the condition check and its old image.
    async fn regress_attempt(
        &self,
        e: &Encoded<'_>,
        compared: &StoredVersion,
        now: Micros,
    ) -> Result<Attempt<RegressOutcome, ()>, StoreError> {
        let op = "write regressed record";
        let sent = self
            .write_request(
                e,
                REGRESS_CONDITION,
                LastAction::Regressed,
                Strategy::Reconcile,
                now,
            )
            .expression_attribute_values(":cmp_delta", n(compared.delta_us))
            .expression_attribute_values(":cmp_fetched", n(compared.fetched_at_us))
            .expression_attribute_values(":cmp_hash", s(compared.hash.to_hex()))
            .send()
            .await;
        match sent {
            Ok(out) => {
                let old = out
                    .attributes()
                    .filter(|a| !a.is_empty())
                    .map(|a| decode_version(&e.pk, a))
                    .transpose()?;
                let decided = decide_regression(old.as_ref(), compared, &e.version);
                if decided != RegressOutcome::Regressed {
                    return Err(StoreError::Decode {
                        key: e.pk.clone(),
                        message: format!(
                            "written as regressed, but the regression rule says {decided:?} for \
                             the item it replaced ({old:?})"
                        ),
                    });
                }
                Ok(Attempt::Done(decided))
            }
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    let old = failed
                        .item()
                        .map(|a| decode_version(&e.pk, a))
                        .transpose()?;
                    let decided = decide_regression(old.as_ref(), compared, &e.version);
                    Ok(if decided.wrote() {
                        // The item changed between the check and its image: try again.
                        Attempt::Again(())
                    } else {
                        Attempt::Done(decided)
                    })
                }
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }

    async fn soft_delete_one(
        &self,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError> {
        // A key over the limits was never written.
        if !size::key_fits(entity, id) {
            return Ok(DeleteOutcome::NotFound);
        }
        let pk = record_key(entity, id);
        conditional::until_settled("soft delete record", &pk, (), |()| {
            self.soft_delete_attempt(&pk, evidence_us, by)
        })
        .await
    }

    /// Move an already soft-deleted item's deletion evidence later
    /// (`core::version::advances_deletion`), conditionally: still deleted, and with an earlier
    /// evidence (a restore or a later evidence meanwhile wins, and then nothing is written).
    async fn later_evidence(&self, pk: &str, evidence_us: Micros) -> Result<(), StoreError> {
        let expiry = self.expiry(evidence_us);
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(pk))
            .update_expression(format!(
                "SET #deleted_at = :evidence{}",
                expiry.as_ref().map_or("", |e| e.0)
            ));
        if let Some((_, at)) = expiry {
            req = req
                .expression_attribute_names("#expires", attr::EXPIRES_AT)
                .expression_attribute_values(":expires", at);
        }
        let sent = req
            .condition_expression(
                "attribute_exists(#deleted_at) AND #deleted_at < :evidence \
                 AND attribute_not_exists(#erased)",
            )
            .expression_attribute_names("#deleted_at", attr::DELETED_AT_US)
            .expression_attribute_names("#erased", attr::ERASED_US)
            .expression_attribute_values(":evidence", n(evidence_us))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(_) => Ok(()),
                other => Err(store_error("advance deletion evidence", other)),
            },
            Err(other) => Err(store_error("advance deletion evidence", other)),
        }
    }

    /// One conditional soft delete: the outcome, or `Again` when the item changed between the
    /// condition check and its old image.
    async fn soft_delete_attempt(
        &self,
        pk: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<Attempt<DeleteOutcome, ()>, StoreError> {
        let op = "soft delete record";
        let expiry = self.expiry(evidence_us);
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(pk))
            .update_expression(format!(
                "SET #deleted_at = :evidence, #last_action = :delete, #written_by = :by, \
                 #last_synced = :now{} REMOVE #gsi_pk, #gsi_sk",
                expiry.as_ref().map_or("", |e| e.0)
            ));
        if let Some((_, at)) = expiry {
            req = req
                .expression_attribute_names("#expires", attr::EXPIRES_AT)
                .expression_attribute_values(":expires", at);
        }
        let sent = req
            .condition_expression(
                "attribute_exists(#pk) AND attribute_not_exists(#erased) \
                 AND attribute_not_exists(#deleted_at) AND #fetched < :evidence",
            )
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#erased", attr::ERASED_US)
            .expression_attribute_names("#deleted_at", attr::DELETED_AT_US)
            .expression_attribute_names("#fetched", attr::FETCHED_AT_US)
            .expression_attribute_names("#last_action", attr::LAST_ACTION)
            .expression_attribute_names("#written_by", attr::WRITTEN_BY)
            .expression_attribute_names("#last_synced", attr::LAST_SYNCED_US)
            .expression_attribute_names("#gsi_pk", attr::GSI_PK)
            .expression_attribute_names("#gsi_sk", attr::GSI_SK)
            .expression_attribute_values(":evidence", n(evidence_us))
            .expression_attribute_values(":delete", s(LastAction::Delete.as_str()))
            .expression_attribute_values(":by", s(by.as_str()))
            .expression_attribute_values(":now", n(now_us()))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(out) => {
                let old = out
                    .attributes()
                    .filter(|a| !a.is_empty())
                    .map(|a| decode_version(pk, a))
                    .transpose()?;
                let decided = decide_delete(old.as_ref(), evidence_us);
                if decided != DeleteOutcome::Deleted {
                    return Err(StoreError::Decode {
                        key: pk.to_owned(),
                        message: format!(
                            "soft-deleted, but the version rule says {decided:?} for the item \
                             it replaced ({old:?})"
                        ),
                    });
                }
                Ok(Attempt::Done(decided))
            }
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    let old = failed.item().map(|a| decode_version(pk, a)).transpose()?;
                    let decided = decide_delete(old.as_ref(), evidence_us);
                    if advances_deletion(old.as_ref(), evidence_us) {
                        self.later_evidence(pk, evidence_us).await?;
                    }
                    Ok(if decided != DeleteOutcome::Deleted {
                        Attempt::Done(decided)
                    } else {
                        // The item changed between the check and its image: try again.
                        Attempt::Again(())
                    })
                }
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }
}

/// One disjunct of the version rule's condition, with the `last_action` it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Case {
    Insert = 0,
    Update = 1,
    Restore = 2,
}

impl Case {
    fn outcome(self) -> WriteOutcome {
        match self {
            Case::Insert => WriteOutcome::Inserted,
            Case::Update => WriteOutcome::Updated,
            Case::Restore => WriteOutcome::Restored,
        }
    }

    fn for_outcome(o: WriteOutcome) -> Option<Case> {
        match o {
            WriteOutcome::Inserted => Some(Case::Insert),
            WriteOutcome::Updated => Some(Case::Update),
            WriteOutcome::Restored => Some(Case::Restore),
            WriteOutcome::Unchanged | WriteOutcome::Stale | WriteOutcome::Suppressed => None,
        }
    }

    fn action(self) -> LastAction {
        match self {
            Case::Insert => LastAction::Insert,
            Case::Update => LastAction::Update,
            Case::Restore => LastAction::Restore,
        }
    }

    /// The disjunct of the version rule for this case (every one mentions `#pk` and
    /// `#erased`, so that every request uses the same expression attribute names). Each
    /// refuses an erasure's marker (redundant for an insert, which requires no item at all).
    fn condition(self) -> &'static str {
        match self {
            Case::Insert => "attribute_not_exists(#pk) AND attribute_not_exists(#erased)",
            Case::Update => {
                "attribute_exists(#pk) AND attribute_not_exists(#erased) \
                 AND attribute_not_exists(#deleted_at) \
                 AND #hash <> :hash \
                 AND (#delta < :delta OR (#delta = :delta AND #fetched < :fetched))"
            }
            Case::Restore => {
                "attribute_exists(#pk) AND attribute_not_exists(#erased) \
                 AND attribute_exists(#deleted_at) AND #deleted_at < :fetched"
            }
        }
    }
}

/// `core::decide_regression` on numbers: the stored item is live and exactly the copy compared
/// (`:cmp_*`), newer than the fetched one, fetched before it, with other content.
const REGRESS_CONDITION: &str = "attribute_exists(#pk) AND attribute_not_exists(#erased) \
     AND attribute_not_exists(#deleted_at) \
     AND #delta = :cmp_delta AND #fetched = :cmp_fetched AND #hash = :cmp_hash \
     AND #delta > :delta AND #fetched < :fetched AND #hash <> :hash";

/// The update of an upsert (or a regression) with a native payload.
const UPSERT_NATIVE: &str = "SET #entity = :entity, #id = :id, #delta = :delta, \
     #fetched = :fetched, #hash = :hash, #payload = :payload, \
     #first_seen = if_not_exists(#first_seen, :now), #last_synced = :now, \
     #last_action = :action, #written_by = :by, #gsi_pk = :gsi_pk, #gsi_sk = :id \
     REMOVE #deleted_at, #payload_z, #encoding, #expires";

/// The update of an upsert with a compressed payload.
const UPSERT_COMPRESSED: &str = "SET #entity = :entity, #id = :id, #delta = :delta, \
     #fetched = :fetched, #hash = :hash, #payload_z = :payload_z, #encoding = :encoding, \
     #first_seen = if_not_exists(#first_seen, :now), #last_synced = :now, \
     #last_action = :action, #written_by = :by, #gsi_pk = :gsi_pk, #gsi_sk = :id \
     REMOVE #deleted_at, #payload, #expires";

/// A record ready to write.
struct Encoded<'a> {
    pk: String,
    entity: &'a str,
    id: &'a str,
    version: Version,
    payload: StoredPayload,
    gsi_pk: String,
}

fn encode(r: &Record) -> Result<Encoded<'_>, StoreError> {
    size::check_key(&r.entity, &r.id)?;
    let pk = record_key(&r.entity, &r.id);
    let gsi_pk = live_ids_partition(&r.entity, shard_of(&r.id));
    // Attribute names (~120 bytes), numbers, hash, action and strategy, plus the key strings.
    let other_bytes = 256 + 2 * pk.len() + gsi_pk.len() + 2 * r.id.len();
    let payload = payload::encode(&pk, r.payload.get(), other_bytes)?;
    Ok(Encoded {
        pk,
        entity: &r.entity,
        id: &r.id,
        version: r.version,
        payload,
        gsi_pk,
    })
}

fn decode_version(key: &str, item: &Item) -> Result<StoredVersion, StoreError> {
    let r = ItemReader::new(key, item);
    if let Some(erased_us) = r.opt_i64(attr::ERASED_US)? {
        return Ok(StoredVersion::erased_marker(erased_us));
    }
    let hash_hex = r.s(attr::HASH)?;
    let hash = ContentHash::from_hex(hash_hex)
        .ok_or_else(|| r.error(format!("hash {hash_hex:?} is not 32 hex digits")))?;
    Ok(StoredVersion {
        delta_us: r.i64(attr::DELTA_US)?,
        fetched_at_us: r.i64(attr::FETCHED_AT_US)?,
        hash,
        deleted_at_us: r.opt_i64(attr::DELETED_AT_US)?,
        erased: false,
    })
}

/// A whole item as a `StoredRecord`.
pub(crate) fn decode_record(key: &str, item: &Item) -> Result<StoredRecord, StoreError> {
    let r = ItemReader::new(key, item);
    if let Some(erasure) = decode_erasure(&r)? {
        return Ok(StoredRecord::erased_marker(
            r.s(attr::ENTITY)?,
            r.s(attr::ID)?,
            erasure,
        ));
    }
    let version = decode_version(key, item)?;
    let compressed = match r.get(attr::PAYLOAD_Z) {
        None => None,
        Some(AttributeValue::B(b)) => Some(b),
        Some(_) => return Err(r.error("payload_z is not binary")),
    };
    let payload = payload::decode(
        r.get(attr::PAYLOAD),
        compressed,
        r.opt_s(attr::PAYLOAD_ENCODING)?,
    )
    .map_err(|m| r.error(m))?;
    let action = r.s(attr::LAST_ACTION)?;
    let by = r.s(attr::WRITTEN_BY)?;
    Ok(StoredRecord {
        entity: r.s(attr::ENTITY)?.to_owned(),
        id: r.s(attr::ID)?.to_owned(),
        version,
        payload,
        first_seen_us: r.i64(attr::FIRST_SEEN_US)?,
        last_synced_us: r.i64(attr::LAST_SYNCED_US)?,
        last_action: LastAction::parse(action)
            .ok_or_else(|| r.error(format!("unknown last_action {action:?}")))?,
        written_by: Strategy::parse(by)
            .ok_or_else(|| r.error(format!("unknown written_by {by:?}")))?,
        erased: None,
    })
}

/// The erasure of a marker; `None` for any other item.
fn decode_erasure(r: &ItemReader<'_>) -> Result<Option<Erasure>, StoreError> {
    let Some(erased_us) = r.opt_i64(attr::ERASED_US)? else {
        return Ok(None);
    };
    Ok(Some(Erasure {
        erased_us,
        erased_by: r.opt_s(attr::ERASED_BY)?.unwrap_or_default().to_owned(),
    }))
}

#[async_trait]
impl RecordStore for DynamoRecords {
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, count = records.len(), by = by.as_str()))]
    async fn upsert_many(
        &self,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let encoded = records.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        // Read the page's stored versions first (one BatchGetItem per 100, strongly consistent):
        // an unchanged or older record then costs a fraction of a read unit and no write
        // request at all; the conditional write still guards every write against races.
        let pks: Vec<&str> = encoded.iter().map(|e| e.pk.as_str()).collect();
        let stored = self.stored_versions(&pks).await?;
        let now = now_us();
        let mut outcomes: Vec<Option<WriteOutcome>> = Vec::with_capacity(encoded.len());
        // The futures are built before the stream (not in a closure inside it) so that the
        // whole future stays `Send` for `async_trait`.
        let mut writes = Vec::new();
        for e in &encoded {
            let decided = decide_upsert(stored.get(&e.pk), &e.version);
            match Case::for_outcome(decided) {
                None => outcomes.push(Some(decided)),
                Some(case) => {
                    outcomes.push(None);
                    writes.push(self.upsert_one(e, by, now, Some(case)));
                }
            }
        }
        let written: Vec<WriteOutcome> = futures::stream::iter(writes)
            .buffered(UPSERT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut written = written.into_iter();
        outcomes
            .into_iter()
            .map(|o| {
                o.or_else(|| written.next())
                    .ok_or_else(|| StoreError::Decode {
                        key: "records".into(),
                        message: "fewer write outcomes than writes".into(),
                    })
            })
            .collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, id = %id))]
    async fn soft_delete(
        &self,
        entity: &str,
        id: &str,
        evidence_us: Micros,
        by: Strategy,
    ) -> Result<DeleteOutcome, StoreError> {
        self.soft_delete_one(entity, id, evidence_us, by).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %record.entity, id = %record.id))]
    async fn write_regressed(
        &self,
        record: &Record,
        compared: &StoredVersion,
    ) -> Result<RegressOutcome, StoreError> {
        let e = encode(record)?;
        let now = now_us();
        // Always sent: a failed condition's old image classifies the outcome exactly as the
        // local store's transaction does (a moved item is `Moved`, whatever the arguments).
        conditional::until_settled("write regressed record", &e.pk, (), |()| {
            self.regress_attempt(&e, compared, now)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, id = %id))]
    async fn get(&self, entity: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        if !size::key_fits(entity, id) {
            return Ok(None);
        }
        let pk = record_key(entity, id);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, s(&pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("get record", e))?;
        out.item().map(|item| decode_record(&pk, item)).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, id = %id))]
    async fn erase(
        &self,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError> {
        self.erase_item(entity, id, now_us, erased_by).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, id = %id))]
    async fn lift_erasure(&self, entity: &str, id: &str) -> Result<LiftOutcome, StoreError> {
        self.lift_item(entity, id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = ?entity, before = deleted_before_us, dry_run))]
    async fn purge_deleted(
        &self,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError> {
        self.purge_items(entity, deleted_before_us, limit, dry_run)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, count = ids.len()))]
    async fn sync_times(
        &self,
        entity: &str,
        ids: &[String],
    ) -> Result<HashMap<String, SyncTimes>, StoreError> {
        // A key over the limits cannot be stored: absent, like any ID never stored.
        let pks: Vec<String> = ids
            .iter()
            .filter(|id| size::key_fits(entity, id))
            .map(|id| record_key(entity, id))
            .collect();
        let refs: Vec<&str> = pks.iter().map(String::as_str).collect();
        let projection = [
            attr::ID,
            attr::FIRST_SEEN_US,
            attr::LAST_SYNCED_US,
            attr::ERASED_US,
        ];
        let mut out = HashMap::with_capacity(ids.len());
        for item in self
            .batch_get(&refs, &projection, "read sync times")
            .await?
        {
            let r = ItemReader::new("records", &item);
            out.insert(
                r.s(attr::ID)?.to_owned(),
                SyncTimes {
                    first_seen_us: r.i64(attr::FIRST_SEEN_US)?,
                    last_synced_us: r.i64(attr::LAST_SYNCED_US)?,
                    erased: r.get(attr::ERASED_US).is_some(),
                },
            );
        }
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, shard = shard, limit = limit))]
    async fn list_live_ids(
        &self,
        entity: &str,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LiveIdPage, StoreError> {
        let op = "list live ids";
        // A zero limit would return an empty page that looks like the end of the shard.
        let limit = limit.max(1);
        // One more than asked, to know whether another page follows (as the local store does).
        let want = limit.saturating_add(1);
        let partition = live_ids_partition(entity, shard);
        // Every ID sorts after "", which is not a valid key value: no start key then.
        let mut start: Option<Item> = after.filter(|a| !a.is_empty()).map(|a| {
            HashMap::from([
                (attr::GSI_PK.to_owned(), s(&partition)),
                (attr::GSI_SK.to_owned(), s(a)),
                (attr::PK.to_owned(), s(record_key(entity, a))),
            ])
        });
        let mut items: Vec<IdVersion> = Vec::new();
        loop {
            let page_limit = i32::try_from(want - items.len()).unwrap_or(i32::MAX);
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(LIVE_IDS_INDEX)
                .key_condition_expression("#gsi_pk = :partition")
                .projection_expression("#gsi_sk, #delta")
                .expression_attribute_names("#gsi_pk", attr::GSI_PK)
                .expression_attribute_names("#gsi_sk", attr::GSI_SK)
                .expression_attribute_names("#delta", attr::DELTA_US)
                .expression_attribute_values(":partition", s(&partition))
                .limit(page_limit)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error(op, e))?;
            for item in out.items() {
                let r = ItemReader::new(&partition, item);
                items.push(IdVersion {
                    id: r.s(attr::GSI_SK)?.to_owned(),
                    delta_us: r.i64(attr::DELTA_US)?,
                });
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() && items.len() < want => start = Some(k.clone()),
                _ => break,
            }
        }
        let next_after = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|i| i.id.clone())
        } else {
            None
        };
        Ok(LiveIdPage { items, next_after })
    }
}
