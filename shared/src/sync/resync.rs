//! A full re-sync without downtime: the delta loop (`sync::delta`, [`Lane::Resync`]) reading
//! the entity's whole listing from the beginning on a cursor and a lease of its own
//! (`job#<entity>#resync`), while the entity's delta runs and the webhooks go on beside it.
//! Every page goes through the version rule like any other write (an unchanged record costs
//! no write; a copy older than what a delta run or a webhook wrote meanwhile is stale), a
//! checkpoint follows every page, and a run stopped by its deadline leaves the cursor where it
//! read, so the next run goes on from there (any number of invocations). Reading can only
//! add and update: once the listing is read to the end, a reconciliation of the entity removes
//! what the source no longer has, and the re-sync is done.
//!
//! Where a re-sync stands is read from its run history (`runs#<entity>#resync`, newest
//! first), so that nothing else has to be kept in step with it:
//!
//! | newest entry | phase |
//! |---|---|
//! | none, `reconciled`, `cancelled` | [`Phase::Idle`] |
//! | `requested`, `partial`, `failed` (a run's status) | [`Phase::Reading`]: the next run goes on |
//! | `succeeded` (a run read to the end) | [`Phase::Reconcile`]: its reconciliation is next |
//!
//! A run that finds the lease held is `skipped` and not recorded, so it never hides the phase.

use crate::core::timefmt::{format_rfc3339, now_us};
use crate::error::{StoreError, SyncError};
use crate::model::Micros;
use crate::ports::{ControlStore, JobKind, LeaseOutcome, RecordStore, RunRecord, SourceApi};
use crate::sync::delta::{DeltaOptions, DeltaSummary, Lane, run_delta};
use serde::Serialize;

/// The history status of a request.
pub const REQUESTED: &str = "requested";
/// The history status once the closing reconciliation ran (locally) or started (deployed).
pub const RECONCILED: &str = "reconciled";
/// The history status of a re-sync called off (`syncctl resync --cancel`).
pub const CANCELLED: &str = "cancelled";

/// How long the lease is held to record a request, a cancellation or the end (a few writes).
const BOOKKEEPING_LEASE_US: Micros = 60_000_000;

/// Where an entity's re-sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// None asked for, or the last one finished or was cancelled.
    Idle,
    /// Reading the listing: the next run goes on from the re-sync's cursor.
    Reading,
    /// Read to the end: the closing reconciliation is next.
    Reconcile,
}

/// An entity's re-sync: its phase and the newest entry of its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncState {
    pub phase: Phase,
    pub last: Option<RunRecord>,
}

/// The phase a history status means; `None` for a status no re-sync writes (a typed error
/// from [`state`]: the history was written by something else).
pub fn phase_of(status: Option<&str>) -> Option<Phase> {
    Some(match status {
        None | Some(RECONCILED) | Some(CANCELLED) => Phase::Idle,
        Some(REQUESTED) | Some("partial") | Some("failed") => Phase::Reading,
        Some("succeeded") => Phase::Reconcile,
        Some(_) => return None,
    })
}

/// The entity's re-sync, from the newest entry of its history (one query).
pub async fn state(control: &dyn ControlStore, entity: &str) -> Result<ResyncState, StoreError> {
    let last = control
        .list_runs(entity, JobKind::Resync, 1)
        .await?
        .into_iter()
        .next();
    let phase = phase_of(last.as_ref().map(|r| r.status.as_str())).ok_or_else(|| {
        StoreError::Decode {
            key: format!("runs#{entity}#resync"),
            message: format!(
                "unknown re-sync status {:?} (expected requested, partial, failed, succeeded, reconciled or cancelled)",
                last.as_ref().map(|r| r.status.as_str()).unwrap_or_default()
            ),
        }
    })?;
    Ok(ResyncState { phase, last })
}

/// What [`request`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Requested {
    /// A new re-sync: its cursor cleared, the request in its history.
    Started { request_id: String },
    /// One is already under way (and `restart` was not asked): nothing changed.
    AlreadyActive { phase: Phase },
}

/// Ask for a re-sync of `entity` by `actor`: under the re-sync's lease, clear its cursor (the
/// listing is read from the beginning) and record the request. One already under way is kept
/// (`AlreadyActive`) unless `restart`, which starts it again from the beginning. A re-sync run
/// holding the lease right now fails the request (`SyncError::LeaseHeld`): try again when it
/// stops.
pub async fn request(
    control: &dyn ControlStore,
    entity: &str,
    actor: &str,
    restart: bool,
) -> Result<Requested, SyncError> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let now = now_us();
    with_lease(control, entity, &request_id, now, async {
        let current = state(control, entity).await?;
        if current.phase != Phase::Idle && !restart {
            return Ok(Requested::AlreadyActive {
                phase: current.phase,
            });
        }
        control
            .clear_cursor(
                entity,
                JobKind::Resync,
                &request_id,
                now_us(),
                BOOKKEEPING_LEASE_US,
            )
            .await?;
        let summary = serde_json::json!({ "actor": actor, "restart": restart });
        record(control, entity, &request_id, REQUESTED, summary).await?;
        tracing::info!(entity, actor, restart, "re-sync requested");
        Ok(Requested::Started {
            request_id: request_id.clone(),
        })
    })
    .await
}

/// Call off a re-sync under way (its cursor is kept for the record; the next request clears
/// it). `Ok(false)` when none was.
pub async fn cancel(
    control: &dyn ControlStore,
    entity: &str,
    actor: &str,
) -> Result<bool, SyncError> {
    let id = uuid::Uuid::new_v4().to_string();
    with_lease(control, entity, &id, now_us(), async {
        if state(control, entity).await?.phase == Phase::Idle {
            return Ok(false);
        }
        record(
            control,
            entity,
            &id,
            CANCELLED,
            serde_json::json!({ "actor": actor }),
        )
        .await?;
        tracing::info!(entity, actor, "re-sync cancelled");
        Ok(true)
    })
    .await
}

/// One run of the re-sync of `entity` when it is reading (`None` otherwise): `run_delta` on
/// the re-sync's lane with `opts`' settings. `succeeded` means the listing was read to the end:
/// the closing reconciliation ([`reconciled`]) is next.
pub async fn run(
    source: &dyn SourceApi,
    records: &dyn RecordStore,
    control: &dyn ControlStore,
    entity: &str,
    opts: &DeltaOptions,
) -> Result<Option<DeltaSummary>, SyncError> {
    // The phase is read under the run's own lease (`run_delta` takes it again as the same
    // holder), so that a cancellation or a restart cannot slip in between.
    let now = now_us();
    match control
        .acquire_lease(
            entity,
            JobKind::Resync,
            &opts.run_id,
            now,
            opts.lease_ttl_us,
        )
        .await?
    {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::Held { holder, .. } => {
            tracing::info!(entity, held_by = %holder, "another re-sync run holds the lease");
            return Ok(None);
        }
    }
    let phase = match state(control, entity).await {
        Ok(s) => s.phase,
        Err(e) => {
            let _ = control
                .release_lease(entity, JobKind::Resync, &opts.run_id)
                .await;
            return Err(e.into());
        }
    };
    if phase != Phase::Reading {
        control
            .release_lease(entity, JobKind::Resync, &opts.run_id)
            .await?;
        return Ok(None);
    }
    let opts = DeltaOptions {
        lane: Lane::Resync,
        ..opts.clone()
    };
    run_delta(source, records, control, entity, &opts)
        .await
        .map(Some)
}

/// What a closing reconciliation did, recorded with the re-sync's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Nothing to close: the re-sync is not at its reconciliation (`Idle` or still reading).
    NotDue(Phase),
    /// Recorded as `reconciled` with what `reconcile` answered.
    Done(serde_json::Value),
}

/// The end of a re-sync read to the end: run `reconcile` (a local reconciliation, or the start
/// of the state machine's execution; it is given a name unique to this re-sync, for an
/// idempotent start) under the re-sync's lease, then record `reconciled` with its answer. A
/// failed `reconcile` records nothing: the next call tries again.
pub async fn reconciled<F, Fut>(
    control: &dyn ControlStore,
    entity: &str,
    reconcile: F,
) -> Result<Closing, SyncError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, SyncError>>,
{
    let id = uuid::Uuid::new_v4().to_string();
    with_lease(control, entity, &id, now_us(), async {
        let current = state(control, entity).await?;
        if current.phase != Phase::Reconcile {
            return Ok(Closing::NotDue(current.phase));
        }
        // The run that read to the end names this re-sync's closing.
        let name = current.last.map(|r| r.run_id).unwrap_or_default();
        let answer = reconcile(format!("resync-{name}")).await?;
        record(control, entity, &id, RECONCILED, answer.clone()).await?;
        tracing::info!(entity, "re-sync done: read to the end and reconciled");
        Ok(Closing::Done(answer))
    })
    .await
}

/// Run `f` holding the re-sync's lease as `holder`; the lease released after, whatever `f`
/// answered. A lease held by a re-sync run is `SyncError::LeaseHeld`.
async fn with_lease<T>(
    control: &dyn ControlStore,
    entity: &str,
    holder: &str,
    now: Micros,
    f: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    match control
        .acquire_lease(entity, JobKind::Resync, holder, now, BOOKKEEPING_LEASE_US)
        .await?
    {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::Held { holder, expires_us } => {
            return Err(SyncError::LeaseHeld {
                scope: format!("the re-sync of {entity}"),
                holder,
                until: format_rfc3339(expires_us),
            });
        }
    }
    let out = f.await;
    let released = control.release_lease(entity, JobKind::Resync, holder).await;
    let out = out?;
    released?;
    Ok(out)
}

async fn record(
    control: &dyn ControlStore,
    entity: &str,
    id: &str,
    status: &str,
    summary: serde_json::Value,
) -> Result<(), StoreError> {
    let now = now_us();
    control
        .put_run(&RunRecord {
            entity: entity.to_owned(),
            kind: JobKind::Resync,
            run_id: id.to_owned(),
            started_us: now,
            finished_us: Some(now),
            status: status.to_owned(),
            summary: summary.to_string(),
        })
        .await
}

#[cfg(test)]
mod tests;
