//! An operator's changes to an entity's delta cursor (`syncctl cursor set|reset`): each made
//! under the delta job's lease, so that it never races a run (a run holding it makes the
//! change fail with `SyncError::LeaseHeld`; a run that starts after it reads the new cursor),
//! and recorded in the delta run history with who made it, before and after.

use crate::core::cursor::DeltaCursor;
use crate::core::timefmt::{format_rfc3339, now_us};
use crate::error::SyncError;
use crate::model::Micros;
use crate::ports::{ControlStore, JobKind, LeaseOutcome, RunRecord};
use serde::Serialize;

/// The history status of a cursor set by an operator.
pub const CURSOR_SET: &str = "cursor_set";
/// The history status of a cursor removed by an operator (the next run reads everything).
pub const CURSOR_RESET: &str = "cursor_reset";

/// How far past our clock a cursor may be set: the bound on the skew between us and the
/// source (`DeltaOptions::max_clock_skew_us`' default). Further is a typo that would make
/// every run read nothing until the source's clock got there.
pub const MAX_FUTURE_US: Micros = 300_000_000;

const LEASE_US: Micros = 60_000_000;

/// What a cursor change did: recorded in the run history (`summary`) and printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CursorChange {
    pub entity: String,
    /// `cursor_set` or `cursor_reset`.
    pub action: String,
    pub actor: String,
    /// RFC 3339; `None`: no cursor (the next run reads from the beginning).
    pub before: Option<String>,
    pub after: Option<String>,
    /// The stored cursor before, when it did not read (a change repairs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_before: Option<String>,
    /// The history entry's ID.
    pub change_id: String,
}

/// Set the entity's delta cursor to `to` (`Some`: the next run reads changes at or after it)
/// or remove it (`None`: the next run reads everything, a backfill), as `actor`.
///
/// Moving it later skips what changed in between for delta sync (reconciliation still finds
/// it); moving it earlier reads again (unchanged records cost no write). A time more than
/// [`MAX_FUTURE_US`] past our clock is refused.
pub async fn move_cursor(
    control: &dyn ControlStore,
    entity: &str,
    to: Option<Micros>,
    actor: &str,
) -> Result<CursorChange, SyncError> {
    let now = now_us();
    if let Some(t) = to
        && t > now.saturating_add(MAX_FUTURE_US)
    {
        return Err(SyncError::InvalidChange(format!(
            "cursor {} is in the future (now {}): delta runs would read nothing until then",
            format_rfc3339(t),
            format_rfc3339(now)
        )));
    }
    let change_id = format!("operator-{}", uuid::Uuid::new_v4());
    match control
        .acquire_lease(entity, JobKind::Delta, &change_id, now, LEASE_US)
        .await?
    {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::Held { holder, expires_us } => {
            return Err(SyncError::LeaseHeld {
                scope: format!("the delta sync of {entity}"),
                holder,
                until: format_rfc3339(expires_us),
            });
        }
    }
    let changed = change(control, entity, to, actor, &change_id).await;
    let released = control
        .release_lease(entity, JobKind::Delta, &change_id)
        .await;
    let changed = changed?;
    released?;
    Ok(changed)
}

async fn change(
    control: &dyn ControlStore,
    entity: &str,
    to: Option<Micros>,
    actor: &str,
    change_id: &str,
) -> Result<CursorChange, SyncError> {
    let state = control.job_state(entity, JobKind::Delta).await?;
    let (before, unreadable_before) = match state.cursor.as_deref() {
        None => (None, None),
        Some(raw) => match DeltaCursor::decode(raw) {
            Ok(c) => (Some(format_rfc3339(c.watermark_us)), None),
            // The change replaces it: say what it was, rather than refuse the repair.
            Err(e) => (None, Some(format!("{raw:.200} ({e})"))),
        },
    };
    let now = now_us();
    match to {
        Some(t) => {
            control
                .save_cursor(
                    entity,
                    JobKind::Delta,
                    change_id,
                    now,
                    LEASE_US,
                    &DeltaCursor::new(t).encode(),
                )
                .await?
        }
        None => {
            control
                .clear_cursor(entity, JobKind::Delta, change_id, now, LEASE_US)
                .await?
        }
    }
    let out = CursorChange {
        entity: entity.to_owned(),
        action: if to.is_some() {
            CURSOR_SET
        } else {
            CURSOR_RESET
        }
        .to_owned(),
        actor: actor.to_owned(),
        before,
        after: to.map(format_rfc3339),
        unreadable_before,
        change_id: change_id.to_owned(),
    };
    control
        .put_run(&RunRecord {
            entity: entity.to_owned(),
            kind: JobKind::Delta,
            run_id: change_id.to_owned(),
            started_us: now,
            finished_us: Some(now),
            status: out.action.clone(),
            summary: serde_json::to_string(&out).unwrap_or_default(),
        })
        .await?;
    tracing::info!(
        entity,
        actor,
        action = %out.action,
        before = out.before.as_deref().unwrap_or("-"),
        after = out.after.as_deref().unwrap_or("-"),
        "delta cursor changed by an operator"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryControl;

    #[tokio::test]
    async fn set_then_reset_is_recorded_with_the_actor_and_the_lease_is_released() {
        let c = MemoryControl::default();
        let t = 1_700_000_000_000_000;
        let set = move_cursor(&c, "people", Some(t), "ana").await.unwrap();
        assert_eq!(
            (set.before, set.after.as_deref()),
            (None, Some("2023-11-14T22:13:20Z"))
        );
        let state = c.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(
            DeltaCursor::decode(state.cursor.as_deref().unwrap()).unwrap(),
            DeltaCursor::new(t)
        );
        // Released: a delta run can take the lease at once.
        assert!(matches!(
            c.acquire_lease("people", JobKind::Delta, "run", now_us(), 1_000_000)
                .await
                .unwrap(),
            LeaseOutcome::Acquired { .. }
        ));
        c.release_lease("people", JobKind::Delta, "run")
            .await
            .unwrap();

        let reset = move_cursor(&c, "people", None, "bo").await.unwrap();
        assert_eq!(reset.before, set.after);
        assert_eq!(reset.after, None);
        let state = c.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(state.cursor, None);
        let runs = c.list_runs("people", JobKind::Delta, 10).await.unwrap();
        let statuses: Vec<_> = runs.iter().map(|r| r.status.as_str()).collect();
        assert!(
            statuses.contains(&CURSOR_SET) && statuses.contains(&CURSOR_RESET),
            "{statuses:?}"
        );
        let reset_run = runs.iter().find(|r| r.status == CURSOR_RESET).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&reset_run.summary).unwrap();
        assert_eq!(summary["actor"], "bo");
        assert_eq!(summary["before"], "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn a_run_holding_the_lease_makes_the_change_fail_and_changes_nothing() {
        let c = MemoryControl::default();
        c.acquire_lease("people", JobKind::Delta, "run-1", now_us(), 60_000_000)
            .await
            .unwrap();
        let err = move_cursor(&c, "people", Some(1), "ana").await.unwrap_err();
        assert!(
            matches!(err, SyncError::LeaseHeld { ref holder, .. } if holder == "run-1"),
            "{err}"
        );
        let state = c.job_state("people", JobKind::Delta).await.unwrap();
        assert_eq!(
            (state.cursor, state.lease_holder.as_deref()),
            (None, Some("run-1"))
        );
        assert!(
            c.list_runs("people", JobKind::Delta, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_cursor_in_the_future_is_refused_and_an_unreadable_one_is_replaced() {
        let c = MemoryControl::default();
        let err = move_cursor(&c, "people", Some(now_us() + 3_600_000_000), "ana")
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::InvalidChange(_)), "{err}");

        c.acquire_lease("people", JobKind::Delta, "x", now_us(), 60_000_000)
            .await
            .unwrap();
        c.save_cursor(
            "people",
            JobKind::Delta,
            "x",
            now_us(),
            60_000_000,
            "garbage",
        )
        .await
        .unwrap();
        c.release_lease("people", JobKind::Delta, "x")
            .await
            .unwrap();
        let fixed = move_cursor(&c, "people", Some(5), "ana").await.unwrap();
        assert!(fixed.unreadable_before.unwrap().starts_with("garbage"));
    }
}
