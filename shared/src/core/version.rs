//! The one version rule (I2, I3). Every write path uses it: the SQLite store calls it inside its
//! transaction, the DynamoDB store encodes the same rule as a ConditionExpression and calls it to
//! classify a failed condition. The conformance suite checks the two agree.
//!
//! Its one exception, [`decide_regression`], is reconciliation's repair of a source whose
//! version went backwards, for entities that opt in (`allow_version_regression`): the only rule
//! under which a write may lower `delta_us`, and only over the exact stored copy it compared.
//!
//! Above every case: an erased record (`StoredVersion::erased`, the suppression marker of
//! `RecordStore::erase`) refuses every write. `decide_upsert` answers `Suppressed`,
//! `decide_delete` `Suppressed`, `decide_regression` `Moved`, `advances_deletion` `false`, until
//! `RecordStore::lift_erasure` removes the marker.

use crate::model::{DeleteOutcome, Micros, RegressOutcome, StoredVersion, Version, WriteOutcome};

/// Decide what an upsert of `incoming` over `stored` does.
///
/// - erased: suppressed, whatever the version (the marker holds none);
/// - nothing stored: insert;
/// - stored is soft-deleted: write only when fetched after the deletion's evidence (the source
///   really has it again), else stale;
/// - greater delta: update; smaller: stale;
/// - equal delta: same hash is unchanged; a different hash is written only when fetched later.
pub fn decide_upsert(stored: Option<&StoredVersion>, incoming: &Version) -> WriteOutcome {
    let Some(s) = stored else {
        return WriteOutcome::Inserted;
    };
    if s.erased {
        return WriteOutcome::Suppressed;
    }
    if let Some(deleted_at) = s.deleted_at_us {
        return if incoming.fetched_at_us > deleted_at {
            WriteOutcome::Restored
        } else {
            WriteOutcome::Stale
        };
    }
    use std::cmp::Ordering::*;
    match incoming.delta_us.cmp(&s.delta_us) {
        Greater if incoming.hash == s.hash => WriteOutcome::Unchanged,
        Greater => WriteOutcome::Updated,
        Less => WriteOutcome::Stale,
        Equal if incoming.hash == s.hash => WriteOutcome::Unchanged,
        Equal if incoming.fetched_at_us > s.fetched_at_us => WriteOutcome::Updated,
        Equal => WriteOutcome::Stale,
    }
}

/// Decide what a soft delete with evidence observed at `evidence_us` does: delete only a live
/// item whose last fetch is strictly before the evidence (I3, I4). An erased record's marker
/// stays as it is (`Suppressed`).
pub fn decide_delete(stored: Option<&StoredVersion>, evidence_us: Micros) -> DeleteOutcome {
    match stored {
        None => DeleteOutcome::NotFound,
        Some(s) if s.erased => DeleteOutcome::Suppressed,
        Some(s) if s.deleted_at_us.is_some() => DeleteOutcome::AlreadyDeleted,
        Some(s) if s.fetched_at_us >= evidence_us => DeleteOutcome::NewerThanEvidence,
        Some(_) => DeleteOutcome::Deleted,
    }
}

/// Whether a soft delete with evidence at `evidence_us` of an item already soft-deleted moves its
/// deletion evidence later (`deleted_at_us`): the source was seen without it again, later. A copy
/// fetched between the two observations must not restore it (the source deleted it once more,
/// after re-creating it): `decide_upsert` restores only what was fetched after the latest.
/// Never an erased record's marker (its `deleted_at_us` is the erasure's time).
pub fn advances_deletion(stored: Option<&StoredVersion>, evidence_us: Micros) -> bool {
    stored
        .filter(|s| !s.erased)
        .and_then(|s| s.deleted_at_us)
        .is_some_and(|d| evidence_us > d)
}

/// Decide whether reconciliation may write `fetched` (a fresh `get_by_id` of a record the
/// destination holds at a newer version than the source lists) over the stored copy it compared,
/// `compared`, now that the store holds `stored`. The exception to [`decide_upsert`]'s "never
/// lower `delta_us`", for entities with `allow_version_regression` only:
///
/// - the store must still hold exactly the copy compared (live; its delta, `fetched_at` and
///   hash unchanged), else `Moved`: a write, a delete or an erasure in between wins;
/// - `fetched` must be below it (else `NotNewer`: the ordinary rule applies);
/// - `fetched` must have been requested after the stored copy was (`fetched_at_us` is the send
///   time of the request), else `FetchedBefore`: an answer older than the stored copy proves
///   nothing about the source now;
/// - and its content must differ (else `Unchanged`: nothing to write).
///
/// Then `Regressed`: the source's copy is written.
pub fn decide_regression(
    stored: Option<&StoredVersion>,
    compared: &StoredVersion,
    fetched: &Version,
) -> RegressOutcome {
    match stored {
        Some(s) if s.deleted_at_us.is_none() && !s.erased && s == compared => {}
        _ => return RegressOutcome::Moved,
    }
    if fetched.delta_us >= compared.delta_us {
        RegressOutcome::NotNewer
    } else if fetched.fetched_at_us <= compared.fetched_at_us {
        RegressOutcome::FetchedBefore
    } else if fetched.hash == compared.hash {
        RegressOutcome::Unchanged
    } else {
        RegressOutcome::Regressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContentHash;

    fn v(delta: i64, fetched: i64, hash: u128) -> Version {
        Version {
            delta_us: delta,
            fetched_at_us: fetched,
            hash: ContentHash(hash),
        }
    }
    fn s(delta: i64, fetched: i64, hash: u128, deleted: Option<i64>) -> StoredVersion {
        StoredVersion {
            delta_us: delta,
            fetched_at_us: fetched,
            hash: ContentHash(hash),
            deleted_at_us: deleted,
            erased: false,
        }
    }

    #[test]
    fn upsert_table() {
        use WriteOutcome::*;
        let cases: &[(Option<StoredVersion>, Version, WriteOutcome)] = &[
            (None, v(10, 100, 1), Inserted),
            (Some(s(10, 100, 1, None)), v(11, 50, 2), Updated),
            (Some(s(10, 100, 1, None)), v(9, 500, 2), Stale),
            (Some(s(10, 100, 1, None)), v(10, 500, 1), Unchanged),
            (Some(s(10, 100, 1, None)), v(10, 101, 2), Updated),
            (Some(s(10, 100, 1, None)), v(10, 100, 2), Stale),
            (Some(s(10, 100, 1, None)), v(10, 99, 2), Stale),
            (Some(s(10, 100, 1, None)), v(11, 101, 1), Unchanged),
            (Some(s(10, 100, 1, Some(200))), v(5, 201, 1), Restored),
            (Some(s(10, 100, 1, Some(200))), v(99, 200, 3), Stale),
            (Some(s(10, 100, 1, Some(200))), v(99, 150, 3), Stale),
        ];
        for (stored, incoming, want) in cases {
            assert_eq!(
                decide_upsert(stored.as_ref(), incoming),
                *want,
                "{stored:?} <- {incoming:?}"
            );
        }
    }

    #[test]
    fn regression_table() {
        use RegressOutcome::*;
        // Stored: delta 10, fetched at 100, hash 1.
        let cmp = s(10, 100, 1, None);
        let cases: &[(Option<StoredVersion>, Version, RegressOutcome)] = &[
            (Some(cmp), v(5, 101, 2), Regressed),
            (Some(cmp), v(9, 500, 2), Regressed),
            // The fetch was sent before (or when) the stored copy's was.
            (Some(cmp), v(5, 100, 2), FetchedBefore),
            (Some(cmp), v(5, 99, 2), FetchedBefore),
            (Some(cmp), v(5, 101, 1), Unchanged),
            // Not below: the ordinary rule's business.
            (Some(cmp), v(10, 101, 2), NotNewer),
            (Some(cmp), v(11, 101, 2), NotNewer),
            // The store moved since the comparison: a newer write, a re-fetch, a delete, gone.
            (Some(s(12, 150, 3, None)), v(5, 200, 2), Moved),
            (Some(s(10, 150, 1, None)), v(5, 200, 2), Moved),
            (Some(s(10, 100, 3, None)), v(5, 200, 2), Moved),
            (Some(s(10, 100, 1, Some(120))), v(5, 200, 2), Moved),
            (None, v(5, 200, 2), Moved),
        ];
        for (stored, fetched, want) in cases {
            assert_eq!(
                decide_regression(stored.as_ref(), &cmp, fetched),
                *want,
                "{stored:?} <- {fetched:?}"
            );
        }
        // A deleted copy is never the one to regress, even when it was compared.
        let deleted = s(10, 100, 1, Some(120));
        assert_eq!(
            decide_regression(Some(&deleted), &deleted, &v(5, 200, 2)),
            Moved
        );
    }

    #[test]
    fn delete_table() {
        use DeleteOutcome::*;
        assert_eq!(decide_delete(None, 10), NotFound);
        assert_eq!(decide_delete(Some(&s(1, 5, 1, None)), 10), Deleted);
        assert_eq!(
            decide_delete(Some(&s(1, 10, 1, None)), 10),
            NewerThanEvidence
        );
        assert_eq!(
            decide_delete(Some(&s(1, 11, 1, None)), 10),
            NewerThanEvidence
        );
        assert_eq!(
            decide_delete(Some(&s(1, 5, 1, Some(7))), 10),
            AlreadyDeleted
        );
    }

    #[test]
    fn an_erased_record_refuses_every_write_whatever_the_version() {
        let erased = StoredVersion::erased_marker(500);
        // Any version, fetched before or after the erasure, newer or older: suppressed.
        for incoming in [
            v(0, 0, 0),
            v(10, 100, 1),
            v(999, 501, 7),
            v(i64::MAX, i64::MAX, 9),
        ] {
            assert_eq!(
                decide_upsert(Some(&erased), &incoming),
                WriteOutcome::Suppressed,
                "{incoming:?}"
            );
        }
        // A delete, with any evidence, leaves the marker as it is (and never moves its time).
        for evidence in [0, 499, 500, 501, i64::MAX] {
            assert_eq!(
                decide_delete(Some(&erased), evidence),
                DeleteOutcome::Suppressed
            );
            assert!(!advances_deletion(Some(&erased), evidence));
        }
        // A regression never writes over it: neither over the marker it did not compare...
        let live = s(10, 100, 1, None);
        assert_eq!(
            decide_regression(Some(&erased), &live, &v(5, 200, 2)),
            RegressOutcome::Moved
        );
        // ...nor when the marker itself is what was compared.
        assert_eq!(
            decide_regression(Some(&erased), &erased, &v(-1, 600, 2)),
            RegressOutcome::Moved
        );
        // The same marker, not erased (a soft-deleted tombstone of the same time), restores
        // from a copy fetched later: the suppression is the `erased` flag alone.
        let tombstone = StoredVersion {
            erased: false,
            ..erased
        };
        assert_eq!(
            decide_upsert(Some(&tombstone), &v(10, 501, 1)),
            WriteOutcome::Restored
        );
    }
}
