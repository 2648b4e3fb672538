//! The records table's operator-only writes, behind `syncctl erase` and `syncctl purge`:
//! `PutItem` of an erasure's marker, `DeleteItem` of a marker (a lift) and of a purged
//! tombstone, and the purge's `Scan`. No function calls them, so no function's role is granted
//! these actions (`tests/it/template/iam.rs` reads the calls each grant needs from
//! `records.rs`, the functions' part of the adapter; this file is not it).

use super::*;

impl DynamoRecords {
    pub(super) async fn erase_item(
        &self,
        entity: &str,
        id: &str,
        now_us: Micros,
        erased_by: &str,
    ) -> Result<EraseOutcome, StoreError> {
        let op = "erase record";
        size::check_key(entity, id)?;
        let pk = record_key(entity, id);
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(marker_item(&pk, entity, id, now_us, erased_by)))
            .condition_expression("attribute_not_exists(#erased)")
            .expression_attribute_names("#erased", attr::ERASED_US)
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(if out.attributes().is_some_and(|a| !a.is_empty()) {
                EraseOutcome::Erased
            } else {
                EraseOutcome::Marked
            }),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                PutItemError::ConditionalCheckFailedException(failed) => {
                    let old = failed.item().cloned().unwrap_or_default();
                    decode_erasure(&ItemReader::new(&pk, &old))?
                        .map(EraseOutcome::AlreadyErased)
                        .ok_or_else(|| StoreError::Decode {
                            key: pk.clone(),
                            message: "the erasure's condition failed on an item without \
                                      erased_us"
                                .into(),
                        })
                }
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }

    pub(super) async fn lift_item(
        &self,
        entity: &str,
        id: &str,
    ) -> Result<LiftOutcome, StoreError> {
        let op = "lift erasure";
        if !size::key_fits(entity, id) {
            return Ok(LiftOutcome::NotErased);
        }
        let sent = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(attr::PK, s(record_key(entity, id)))
            .condition_expression("attribute_exists(#erased)")
            .expression_attribute_names("#erased", attr::ERASED_US)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(LiftOutcome::Lifted),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                DeleteItemError::ConditionalCheckFailedException(_) => Ok(LiftOutcome::NotErased),
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }

    pub(super) async fn purge_items(
        &self,
        entity: Option<&str>,
        deleted_before_us: Micros,
        limit: Option<u64>,
        dry_run: bool,
    ) -> Result<PurgeCount, StoreError> {
        let op = "purge deleted records";
        let limit = limit.unwrap_or(u64::MAX);
        let mut filter = String::from(
            "attribute_exists(#deleted_at) AND attribute_not_exists(#erased) \
             AND #deleted_at < :cutoff",
        );
        if entity.is_some() {
            filter.push_str(" AND #entity = :entity");
        }
        let mut count = PurgeCount::default();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression(&filter)
                .projection_expression("#pk, #deleted_at")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_names("#deleted_at", attr::DELETED_AT_US)
                .expression_attribute_names("#erased", attr::ERASED_US)
                .expression_attribute_values(":cutoff", n(deleted_before_us))
                .set_exclusive_start_key(start.take());
            if let Some(e) = entity {
                req = req
                    .expression_attribute_names("#entity", attr::ENTITY)
                    .expression_attribute_values(":entity", s(e));
            }
            let out = req.send().await.map_err(|e| store_error(op, e))?;
            count.scanned += u64::try_from(out.scanned_count()).unwrap_or(0);
            let room = usize::try_from(limit - count.matched).unwrap_or(usize::MAX);
            let mut found = Vec::new();
            for item in out.items().iter().take(room) {
                let r = ItemReader::new("records", item);
                found.push((r.s(attr::PK)?.to_owned(), r.i64(attr::DELETED_AT_US)?));
            }
            count.matched += found.len() as u64;
            if !dry_run {
                // The futures built before the stream, so that the whole future stays `Send`.
                let deletes: Vec<_> = found
                    .iter()
                    .map(|(pk, seen)| self.purge_one(pk, *seen))
                    .collect();
                let deleted: Vec<bool> = futures::stream::iter(deletes)
                    .buffer_unordered(PURGE_CONCURRENCY)
                    .try_collect()
                    .await?;
                let purged = deleted.iter().filter(|d| **d).count() as u64;
                count.purged += purged;
                count.changed += deleted.len() as u64 - purged;
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() && count.matched < limit => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(count)
    }

    /// Delete one soft-deleted item the purge's scan found, only while it is still that copy
    /// (`deleted_at_us` as read, not a marker): `false` when it changed in between.
    async fn purge_one(&self, pk: &str, seen_deleted_at: Micros) -> Result<bool, StoreError> {
        let op = "purge deleted record";
        let sent = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(attr::PK, s(pk))
            .condition_expression("#deleted_at = :seen AND attribute_not_exists(#erased)")
            .expression_attribute_names("#deleted_at", attr::DELETED_AT_US)
            .expression_attribute_names("#erased", attr::ERASED_US)
            .expression_attribute_values(":seen", n(seen_deleted_at))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                DeleteItemError::ConditionalCheckFailedException(_) => Ok(false),
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }
}

/// The marker `erase` puts.
fn marker_item(pk: &str, entity: &str, id: &str, now_us: Micros, erased_by: &str) -> Item {
    HashMap::from([
        (attr::PK.to_owned(), s(pk)),
        (attr::ENTITY.to_owned(), s(entity)),
        (attr::ID.to_owned(), s(id)),
        (attr::ERASED_US.to_owned(), n(now_us)),
        (attr::ERASED_BY.to_owned(), s(erased_by)),
        (attr::DELETED_AT_US.to_owned(), n(now_us)),
        (attr::FIRST_SEEN_US.to_owned(), n(now_us)),
        (attr::LAST_SYNCED_US.to_owned(), n(now_us)),
        (attr::LAST_ACTION.to_owned(), s(LastAction::Erased.as_str())),
        (attr::WRITTEN_BY.to_owned(), s(Strategy::Manual.as_str())),
    ])
}
