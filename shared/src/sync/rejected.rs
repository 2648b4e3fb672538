//! Records a run could not sync (`model::Rejected`: taken out of a page by the source client,
//! or refused by the store as too large), as every strategy counts and reports them: once per
//! ID in a run, a warning each, the first [`REJECTED_IDS_KEPT`] in the run's summary with their
//! reasons. One bad record never stops an entity; this is how it stays visible (the run
//! history, `RecordsRejected`, its alarm).

use crate::model::Rejected;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Rejected records kept (ID and reason) in a run's summary.
pub const REJECTED_IDS_KEPT: usize = 20;

/// One rejected record in a run's summary: `{"id": "7", "reason": "null_delta"}` (the ID
/// `null` when it does not read). Never a value of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub id: Option<String>,
    /// A `model::RejectReason` code.
    pub reason: String,
}

impl std::fmt::Display for RejectedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{id:?} ({})", self.reason),
            None => write!(f, "(no ID) ({})", self.reason),
        }
    }
}

/// A run's tally: which IDs it has counted already (a record re-read at a page boundary, or
/// fetched twice, counts once).
#[derive(Debug, Default)]
pub struct Tally {
    seen: HashSet<String>,
}

impl Tally {
    /// Count `r` into `count` and `kept` (unless its ID was counted already in this run) and
    /// log it; `true` when it was new.
    pub fn note(
        &mut self,
        entity: &str,
        strategy: &str,
        r: &Rejected,
        count: &mut u64,
        kept: &mut Vec<RejectedRecord>,
    ) -> bool {
        if let Some(id) = &r.id
            && !self.seen.insert(id.clone())
        {
            return false;
        }
        tracing::warn!(
            entity,
            strategy,
            id = r.id.as_deref().unwrap_or("-"),
            reason = %r.reason,
            "record cannot be synced: skipped and counted (RecordsRejected)"
        );
        *count += 1;
        if kept.len() < REJECTED_IDS_KEPT {
            kept.push(RejectedRecord {
                id: r.id.clone(),
                reason: r.reason.as_str().to_owned(),
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RejectReason;

    #[test]
    fn each_id_counts_once_the_first_few_are_kept_and_unreadable_ids_always_count() {
        let mut t = Tally::default();
        let (mut n, mut kept) = (0, Vec::new());
        let r = |id: Option<&str>, reason| Rejected {
            id: id.map(str::to_owned),
            reason,
        };
        assert!(t.note(
            "people",
            "delta",
            &r(Some("7"), RejectReason::NullDelta),
            &mut n,
            &mut kept
        ));
        assert!(!t.note(
            "people",
            "delta",
            &r(Some("7"), RejectReason::NullDelta),
            &mut n,
            &mut kept
        ));
        assert!(t.note(
            "people",
            "delta",
            &r(None, RejectReason::MissingId),
            &mut n,
            &mut kept
        ));
        assert!(t.note(
            "people",
            "delta",
            &r(None, RejectReason::MissingId),
            &mut n,
            &mut kept
        ));
        for i in 0..30 {
            t.note(
                "people",
                "delta",
                &r(Some(&i.to_string()), RejectReason::TooLarge),
                &mut n,
                &mut kept,
            );
        }
        assert_eq!(n, 32);
        assert_eq!(kept.len(), REJECTED_IDS_KEPT);
        assert_eq!(
            serde_json::to_string(&kept[..2]).unwrap(),
            r#"[{"id":"7","reason":"null_delta"},{"id":null,"reason":"missing_id"}]"#
        );
    }
}
