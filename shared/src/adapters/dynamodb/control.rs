//! `ControlStore` on the `control` table (layout in [`super::schema`]). Every state change is
//! one conditional write on one item; a failed condition is classified from the item's old
//! image (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), never by a second read.

use super::conditional::{self, Attempt};
use super::item::{Item, ItemReader, Read, batch_get, n, s, ttl_seconds};
use super::schema::attr;
use crate::adapters::aws::store_error;
use crate::core::timefmt::now_us;
use crate::error::StoreError;
use crate::model::Micros;
use crate::ports::{
    ControlStore, JobKind, JobState, LeaseOutcome, NOT_FOUND_STALE_WINDOWS, NOT_FOUND_WINDOW_US,
    NotFoundCounts, RunRecord, not_found_window,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::collections::{HashMap, HashSet};

/// Run-history entries expire this long after their last write (DynamoDB TTL).
pub const RUN_HISTORY_RETENTION_US: Micros = 90 * 24 * 3_600 * 1_000_000;

const STATE_SK: &str = "state";
const EVENT_SK: &str = "event";
const NOT_FOUND_SK: &str = "window";
/// The status of the claims the worker wrote before one write per event: read as not
/// processed (the marker expires; `complete_event` overwrites it).
const LEGACY_IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";

pub fn job_pk(entity: &str, kind: JobKind) -> String {
    format!("job#{entity}#{}", kind.as_str())
}

pub fn runs_pk(entity: &str, kind: JobKind) -> String {
    format!("runs#{entity}#{}", kind.as_str())
}

/// The run-history sort key: the start zero-padded to 20 digits (sorts numerically for any
/// epoch-µs time), then the run ID.
pub fn run_sk(started_us: Micros, run_id: &str) -> String {
    format!("{started_us:020}#{run_id}")
}

pub fn event_pk(event_id: &str) -> String {
    format!("event#{event_id}")
}

/// The rolling 404 window's item of an entity (sort key `window`).
pub fn not_found_pk(entity: &str) -> String {
    format!("notfound#{entity}")
}

/// The attributes of one 10-minute bucket of the 404 window: fetches and unexpected 404s.
fn bucket_names(window: i64) -> (String, String) {
    (format!("f_{window}"), format!("n_{window}"))
}

/// How `LeaseLost` names a job (as the local store does).
fn scope(entity: &str, kind: JobKind) -> String {
    format!("{entity}/{}", kind.as_str())
}

/// The `control` table through the AWS SDK.
///
/// - Leases: `acquire_lease` first tries to *take* the lease
///   (`attribute_not_exists(lease_holder) OR (lease_holder <> :me AND lease_expires_us <= :now)`,
///   `ADD lease_token 1`); when the old image shows we already hold it, it *renews*
///   (`lease_holder = :me`, token unchanged); when another holder's lease is unexpired, it
///   answers `Held` from that image. A lease is expired at its expiry instant.
/// - `save_cursor` is fenced: `lease_holder = :me AND lease_expires_us > :now`, else
///   `StoreError::LeaseLost`; it extends the lease in the same write.
/// - `release_lease`: `lease_holder = :me`, REMOVE holder and expiry (token and cursor kept).
/// - Events: `processed_events` is one eventually consistent BatchGetItem of the markers; a
///   marker counts when `completed` and `until_us > now` (an expired one is absent, exactly
///   like the local store and like TTL will eventually make it). `complete_event` puts the
///   `completed` marker, unconditionally (one write per processed event).
/// - 404 window: `count_not_found` is one UpdateItem on `notfound#<entity>` / `window`:
///   `ADD f_<w> :fetched, n_<w> :not_found` for the current 10-minute window `w`, `REMOVE` the
///   buckets `w-2` to `w-7` in the same expression, `SET ttl` to the end of window `w+1` (an
///   idle entity's item expires), `ReturnValues = ALL_NEW`; the answer sums buckets `w` and
///   `w-1` of the new image.
#[derive(Debug, Clone)]
pub struct DynamoControl {
    pub(super) client: Client,
    pub(super) table: String,
    /// The budget schedule's end as last seen, which picks the first form of a slice's
    /// conditional write (`budget`).
    pub(super) budget_hint: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl DynamoControl {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoControl {
            client,
            table: table.into(),
            budget_hint: Default::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Take a free or expired lease held by someone else (or nobody): a new acquisition.
    async fn take_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        expires_us: Micros,
    ) -> Result<Result<u64, Option<Item>>, StoreError> {
        let op = "acquire lease";
        let pk = job_pk(entity, kind);
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(&pk))
            .key(attr::SK, s(STATE_SK))
            .update_expression(
                "SET #entity = :entity, #kind = :kind, #holder = :me, #expires = :expires \
                 ADD #token :one",
            )
            .condition_expression(
                "attribute_not_exists(#holder) OR (#holder <> :me AND \
                 (attribute_not_exists(#expires) OR #expires <= :now))",
            )
            .expression_attribute_names("#entity", attr::ENTITY)
            .expression_attribute_names("#kind", attr::KIND)
            .expression_attribute_names("#holder", attr::LEASE_HOLDER)
            .expression_attribute_names("#expires", attr::LEASE_EXPIRES_US)
            .expression_attribute_names("#token", attr::LEASE_TOKEN)
            .expression_attribute_values(":entity", s(entity))
            .expression_attribute_values(":kind", s(kind.as_str()))
            .expression_attribute_values(":me", s(holder))
            .expression_attribute_values(":expires", n(expires_us))
            .expression_attribute_values(":now", n(now_us))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Ok(token_of(&pk, out.attributes())?)),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(f) => Ok(Err(f.item().cloned())),
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }

    /// Extend a lease we hold (expired or not): the same acquisition, the same token.
    async fn renew_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        expires_us: Micros,
    ) -> Result<Option<u64>, StoreError> {
        let op = "acquire lease";
        let pk = job_pk(entity, kind);
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(&pk))
            .key(attr::SK, s(STATE_SK))
            .update_expression("SET #expires = :expires")
            .condition_expression("#holder = :me")
            .expression_attribute_names("#holder", attr::LEASE_HOLDER)
            .expression_attribute_names("#expires", attr::LEASE_EXPIRES_US)
            .expression_attribute_values(":me", s(holder))
            .expression_attribute_values(":expires", n(expires_us))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Some(token_of(&pk, out.attributes())?)),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(_) => Ok(None),
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }
}

fn token_of(key: &str, attrs: Option<&Item>) -> Result<u64, StoreError> {
    let empty = Item::new();
    let r = ItemReader::new(key, attrs.unwrap_or(&empty));
    r.opt_u64(attr::LEASE_TOKEN)?
        .ok_or_else(|| r.error("lease_token is missing after an acquisition"))
}

fn decode_job(key: &str, item: &Item) -> Result<JobState, StoreError> {
    let r = ItemReader::new(key, item);
    Ok(JobState {
        cursor: r.opt_s(attr::CURSOR)?.map(str::to_owned),
        cursor_updated_us: r.opt_i64(attr::CURSOR_UPDATED_US)?,
        lease_holder: r.opt_s(attr::LEASE_HOLDER)?.map(str::to_owned),
        lease_expires_us: r.opt_i64(attr::LEASE_EXPIRES_US)?,
        lease_token: r.opt_u64(attr::LEASE_TOKEN)?.unwrap_or(0),
    })
}

fn decode_run(key: &str, item: &Item) -> Result<RunRecord, StoreError> {
    let r = ItemReader::new(key, item);
    let kind = r.s(attr::KIND)?;
    Ok(RunRecord {
        entity: r.s(attr::ENTITY)?.to_owned(),
        kind: JobKind::parse(kind).ok_or_else(|| r.error(format!("unknown job kind {kind:?}")))?,
        run_id: r.s(attr::RUN_ID)?.to_owned(),
        started_us: r.i64(attr::STARTED_US)?,
        finished_us: r.opt_i64(attr::FINISHED_US)?,
        status: r.s(attr::STATUS)?.to_owned(),
        summary: r.s(attr::SUMMARY)?.to_owned(),
    })
}

/// The event ID of a marker that says processed at `now_us` (completed, retention running).
fn decode_event<'a>(
    key: &'a str,
    item: &'a Item,
    now_us: Micros,
) -> Result<Option<&'a str>, StoreError> {
    let r = ItemReader::new(key, item);
    let completed = match r.s(attr::STATUS)? {
        COMPLETED => true,
        LEGACY_IN_PROGRESS => false,
        other => return Err(r.error(format!("unknown event status {other:?}"))),
    };
    let until_us = r.i64(attr::UNTIL_US)?;
    if completed && until_us > now_us {
        Ok(Some(r.s(attr::EVENT_ID)?))
    } else {
        Ok(None)
    }
}

impl DynamoControl {
    /// `save_cursor` (`Some`) and `clear_cursor` (`None`): one conditional UpdateItem, only
    /// while `holder` holds an unexpired lease (else `LeaseLost`), the lease extended.
    async fn write_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: Option<&str>,
    ) -> Result<(), StoreError> {
        let (update, op) = match cursor {
            Some(_) => (
                "SET #cursor = :cursor, #cursor_updated = :now, #expires = :expires",
                "save cursor",
            ),
            None => (
                "REMOVE #cursor SET #cursor_updated = :now, #expires = :expires",
                "clear cursor",
            ),
        };
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(job_pk(entity, kind)))
            .key(attr::SK, s(STATE_SK))
            .update_expression(update)
            .condition_expression("#holder = :me AND #expires > :now")
            .expression_attribute_names("#cursor", attr::CURSOR)
            .expression_attribute_names("#cursor_updated", attr::CURSOR_UPDATED_US)
            .expression_attribute_names("#holder", attr::LEASE_HOLDER)
            .expression_attribute_names("#expires", attr::LEASE_EXPIRES_US)
            .expression_attribute_values(":now", n(now_us))
            .expression_attribute_values(":expires", n(now_us.saturating_add(ttl_us)))
            .expression_attribute_values(":me", s(holder));
        let sent = match cursor {
            Some(c) => sent.expression_attribute_values(":cursor", s(c)),
            None => sent,
        }
        .send()
        .await;
        match sent {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(_) => Err(StoreError::LeaseLost {
                    scope: scope(entity, kind),
                    holder: holder.to_owned(),
                }),
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }
}

#[async_trait]
impl ControlStore for DynamoControl {
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, kind = kind.as_str()))]
    async fn job_state(&self, entity: &str, kind: JobKind) -> Result<JobState, StoreError> {
        let pk = job_pk(entity, kind);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, s(&pk))
            .key(attr::SK, s(STATE_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("read job state", e))?;
        match out.item() {
            Some(item) => decode_job(&pk, item),
            None => Ok(JobState::default()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, kind = kind.as_str()))]
    async fn acquire_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        let expires_us = now_us.saturating_add(ttl_us);
        let pk = &job_pk(entity, kind);
        conditional::until_settled("acquire lease", pk, (), move |()| async move {
            let old = match self
                .take_lease(entity, kind, holder, now_us, expires_us)
                .await?
            {
                Ok(token) => {
                    return Ok(Attempt::Done(LeaseOutcome::Acquired { token, expires_us }));
                }
                Err(old) => old,
            };
            let state = match &old {
                Some(item) => decode_job(pk, item)?,
                None => JobState::default(),
            };
            match (state.lease_holder, state.lease_expires_us) {
                (Some(h), _) if h == holder => {
                    if let Some(token) = self.renew_lease(entity, kind, holder, expires_us).await? {
                        return Ok(Attempt::Done(LeaseOutcome::Acquired { token, expires_us }));
                    }
                    // Released or taken over in between: try again.
                    Ok(Attempt::Again(()))
                }
                (Some(h), Some(exp)) if exp > now_us => Ok(Attempt::Done(LeaseOutcome::Held {
                    holder: h,
                    expires_us: exp,
                })),
                // Released or expired in between: try again.
                _ => Ok(Attempt::Again(())),
            }
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, kind = kind.as_str()))]
    async fn release_lease(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
    ) -> Result<(), StoreError> {
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(job_pk(entity, kind)))
            .key(attr::SK, s(STATE_SK))
            .update_expression("REMOVE #holder, #expires")
            .condition_expression("#holder = :me")
            .expression_attribute_names("#holder", attr::LEASE_HOLDER)
            .expression_attribute_names("#expires", attr::LEASE_EXPIRES_US)
            .expression_attribute_values(":me", s(holder))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                // Not ours (any more): nothing to release.
                UpdateItemError::ConditionalCheckFailedException(_) => Ok(()),
                other => Err(store_error("release lease", other)),
            },
            Err(other) => Err(store_error("release lease", other)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, kind = kind.as_str()))]
    async fn save_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError> {
        self.write_cursor(entity, kind, holder, now_us, ttl_us, Some(cursor))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, kind = kind.as_str()))]
    async fn clear_cursor(
        &self,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<(), StoreError> {
        self.write_cursor(entity, kind, holder, now_us, ttl_us, None)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %run.entity, kind = run.kind.as_str(), run_id = %run.run_id))]
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let ttl = ttl_seconds(now_us().saturating_add(RUN_HISTORY_RETENTION_US));
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(attr::PK, s(runs_pk(&run.entity, run.kind)))
            .item(attr::SK, s(run_sk(run.started_us, &run.run_id)))
            .item(attr::ENTITY, s(&run.entity))
            .item(attr::KIND, s(run.kind.as_str()))
            .item(attr::RUN_ID, s(&run.run_id))
            .item(attr::STARTED_US, n(run.started_us))
            .item(attr::STATUS, s(&run.status))
            .item(attr::SUMMARY, s(&run.summary))
            .item(attr::TTL, n(ttl));
        if let Some(f) = run.finished_us {
            req = req.item(attr::FINISHED_US, n(f));
        }
        req.send()
            .await
            .map(drop)
            .map_err(|e| store_error("put run", e))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity, kind = kind.as_str(), limit = limit))]
    async fn list_runs(
        &self,
        entity: &str,
        kind: JobKind,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let pk = runs_pk(entity, kind);
        let mut out: Vec<RunRecord> = Vec::new();
        let mut start: Option<Item> = None;
        while out.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_values(":pk", s(&pk))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("list runs", e))?;
            for item in page.items() {
                out.push(decode_run(&pk, item)?);
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// One BatchGetItem, eventually consistent (half a read unit per marker).
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, events = event_ids.len()))]
    async fn processed_events(
        &self,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError> {
        let mut unique: Vec<&str> = event_ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let keys = unique
            .iter()
            .map(|id| {
                HashMap::from([
                    (attr::PK.to_owned(), s(event_pk(id))),
                    (attr::SK.to_owned(), s(EVENT_SK)),
                ])
            })
            .collect();
        let items = batch_get(
            self.client.batch_get_item(),
            &self.table,
            keys,
            Read::Eventual,
            &[attr::PK, attr::EVENT_ID, attr::STATUS, attr::UNTIL_US],
            "read processed events",
        )
        .await?;
        let mut done = HashSet::with_capacity(items.len());
        for item in &items {
            let key = ItemReader::new("event", item).s(attr::PK)?;
            if let Some(event_id) = decode_event(key, item, now_us)? {
                done.insert(event_id.to_owned());
            }
        }
        Ok(done)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, event_id = %event_id))]
    async fn complete_event(
        &self,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(attr::PK, s(event_pk(event_id)))
            .item(attr::SK, s(EVENT_SK))
            .item(attr::EVENT_ID, s(event_id))
            .item(attr::STATUS, s(COMPLETED))
            .item(attr::UNTIL_US, n(retain_until_us))
            .item(attr::TTL, n(ttl_seconds(retain_until_us)))
            .send()
            .await
            .map(drop)
            .map_err(|e| store_error("complete event", e))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, entity = %entity))]
    async fn count_not_found(
        &self,
        entity: &str,
        now_us: Micros,
        add: NotFoundCounts,
    ) -> Result<NotFoundCounts, StoreError> {
        let pk = not_found_pk(entity);
        let w = not_found_window(now_us);
        let (f_now, n_now) = bucket_names(w);
        let (f_prev, n_prev) = bucket_names(w - 1);
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(&pk))
            .key(attr::SK, s(NOT_FOUND_SK))
            .expression_attribute_names("#entity", attr::ENTITY)
            .expression_attribute_names("#ttl", attr::TTL)
            .expression_attribute_names("#f", &f_now)
            .expression_attribute_names("#n", &n_now)
            .expression_attribute_values(":entity", s(entity))
            .expression_attribute_values(
                ":ttl",
                n(ttl_seconds((w + 2).saturating_mul(NOT_FOUND_WINDOW_US))),
            )
            .expression_attribute_values(":f", n(add.fetched))
            .expression_attribute_values(":n", n(add.not_found));
        let mut remove = Vec::new();
        for k in 2..2 + NOT_FOUND_STALE_WINDOWS {
            let (f_old, n_old) = bucket_names(w - k);
            req = req
                .expression_attribute_names(format!("#f{k}"), f_old)
                .expression_attribute_names(format!("#n{k}"), n_old);
            remove.push(format!("#f{k}, #n{k}"));
        }
        let out = req
            .update_expression(format!(
                "SET #entity = :entity, #ttl = :ttl REMOVE {} ADD #f :f, #n :n",
                remove.join(", ")
            ))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| store_error("count 404s", e))?;
        let empty = Item::new();
        let r = ItemReader::new(&pk, out.attributes().unwrap_or(&empty));
        let count = |name: &str| r.opt_u64(name).map(Option::unwrap_or_default);
        Ok(NotFoundCounts {
            fetched: count(&f_now)? + count(&f_prev)?,
            not_found: count(&n_now)? + count(&n_prev)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_sort_by_start_then_run_id() {
        let mut keys = [
            run_sk(10, "b"),
            run_sk(9, "z"),
            run_sk(1_700_000_000_000_000, "a"),
            run_sk(10, "a"),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                run_sk(9, "z"),
                run_sk(10, "a"),
                run_sk(10, "b"),
                run_sk(1_700_000_000_000_000, "a")
            ]
        );
        assert_eq!(run_sk(7, "r"), "00000000000000000007#r");
    }

    #[test]
    fn event_markers_decode_by_status_and_retention() {
        let marker = |status: &str| {
            Item::from([
                (attr::EVENT_ID.to_owned(), s("x")),
                (attr::STATUS.to_owned(), s(status)),
                (attr::UNTIL_US.to_owned(), n(5)),
            ])
        };
        let completed = marker(COMPLETED);
        assert_eq!(decode_event("event#x", &completed, 4).unwrap(), Some("x"));
        assert_eq!(
            decode_event("event#x", &completed, 5).unwrap(),
            None,
            "expired"
        );
        let legacy = marker(LEGACY_IN_PROGRESS);
        assert_eq!(decode_event("event#x", &legacy, 0).unwrap(), None);
        assert!(matches!(
            decode_event("event#x", &marker("weird"), 0),
            Err(StoreError::Decode { .. })
        ));
        let item = Item::from([(attr::STATUS.to_owned(), s(COMPLETED))]);
        assert!(matches!(
            decode_event("event#x", &item, 0),
            Err(StoreError::Decode { .. })
        ));
    }
}
