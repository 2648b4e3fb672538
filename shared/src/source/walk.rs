//! What a listing's walk checks as it reads each page, because correctness rests on it:
//!
//! - **order**: delta values non-decreasing within a page and across the pages of a walk, none
//!   below the lower bound the query asked for; IDs of a keyset ID listing strictly increasing in
//!   the entity's `id_order`, each page after the ID the filter named;
//! - **progress**: within one pass, a full page must add an ID or a delta value the walk had not
//!   read, and no page may repeat an earlier one exactly (its fingerprint). The tie-group passes
//!   of positional delta listings re-read identical pages by design: each pass is checked on its
//!   own.
//!
//! Pure logic over what a page holds; the paginators in `source` call it and turn a
//! [`WalkError`] into `SourceError::Walk`.

use crate::config::IdOrder;
use crate::core::timefmt::format_rfc3339;
use crate::error::WalkError;
use crate::model::{IdVersion, Micros};
use std::collections::{HashMap, HashSet};

/// A page's fingerprint: its IDs and delta values in the order served.
pub(super) fn fingerprint<'a>(items: impl Iterator<Item = (&'a str, Micros)>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (id, d) in items {
        h.update(&(id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
        h.update(&d.to_le_bytes());
    }
    h.digest()
}

/// The fingerprints of one pass's pages, to recognise a page served again.
#[derive(Debug, Default)]
pub(super) struct Fingerprints {
    seen: HashMap<u64, u64>,
}

impl Fingerprints {
    /// Remember page `page`'s fingerprint; a repeat of an earlier page is an error. Empty pages
    /// are not fingerprinted (they are all alike and end a walk anyway).
    pub(super) fn page(&mut self, fp: Option<u64>, page: u64) -> Result<(), WalkError> {
        let Some(fp) = fp else { return Ok(()) };
        match self.seen.insert(fp, page) {
            Some(first) => Err(WalkError::RepeatedPage { page, first }),
            None => Ok(()),
        }
    }
}

/// Delta values of one page, in the order served: non-decreasing, the first not below `after`
/// (the highest value of the walk's earlier pages, where pages continue each other), none
/// below `bound` (the lower bound the query asked for, inclusive). A value within one
/// timestamp resolution `res` under the bound is allowed: the source compares at its own
/// resolution.
pub(super) fn check_delta_order(
    deltas: impl Iterator<Item = Micros>,
    bound: Option<Micros>,
    res: Micros,
    after: Option<Micros>,
    page: u64,
) -> Result<(), WalkError> {
    let mut previous = after;
    for d in deltas {
        if let Some(b) = bound
            && d.saturating_add(res.max(1)) <= b
        {
            return Err(WalkError::BelowBound {
                page,
                bound: format_rfc3339(b),
                found: format_rfc3339(d),
            });
        }
        if let Some(p) = previous
            && d < p
        {
            return Err(WalkError::DeltaOrder {
                page,
                earlier: format_rfc3339(p),
                later: format_rfc3339(d),
            });
        }
        previous = Some(d);
    }
    Ok(())
}

/// A keyset delta walk moves from page `page` (read with the lower bound `from`, the source
/// counting `total_from` records at or above it) to the next query's bound `to` (the page's
/// highest value; the source now counting `total_to` at or above it). When the source serves
/// the lowest values first, every record in `[from, to)` is on the page, so the two counts
/// differ by at most the page's records below `to` (`served`). Changes between the two requests
/// only make the difference smaller (an update moves a record up, a create lands at the top),
/// except a deletion at or above `to`. More than that: the source ignored the order, served
/// a page that happened to be ascending, and the records between were never served: the walk
/// must not move past them. Without a count from the source there is nothing to compare.
pub(super) fn check_skipped(
    total_from: Option<u64>,
    total_to: Option<u64>,
    served: u64,
    page: u64,
    from: Option<Micros>,
    to: Micros,
) -> Result<(), WalkError> {
    let (Some(a), Some(b)) = (total_from, total_to) else {
        return Ok(());
    };
    let counted = a.saturating_sub(b);
    if counted <= served {
        return Ok(());
    }
    Err(WalkError::Skipped {
        page,
        from: from.map_or_else(|| "the beginning".to_owned(), format_rfc3339),
        to: format_rfc3339(to),
        counted,
        served,
    })
}

/// IDs of one page of a keyset ID listing: strictly increasing in `order`, the first after
/// `after` (the ID the filter named).
pub(super) fn check_id_order(
    ids: &[IdVersion],
    order: IdOrder,
    after: Option<&str>,
    page: u64,
) -> Result<(), WalkError> {
    let not_numeric = |a: &str, b: &str| {
        let bad = [a, b]
            .into_iter()
            .find(|s| s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()))
            .unwrap_or(a);
        WalkError::NotNumeric {
            page,
            id: WalkError::shown(bad),
        }
    };
    if let (Some(a), Some(first)) = (after, ids.first()) {
        match order.compare(a, &first.id) {
            None => return Err(not_numeric(a, &first.id)),
            Some(std::cmp::Ordering::Less) => {}
            Some(_) => {
                return Err(WalkError::IdFilterIgnored {
                    page,
                    after: WalkError::shown(a),
                    first: WalkError::shown(&first.id),
                });
            }
        }
    }
    for w in ids.windows(2) {
        let (a, b) = (&w[0].id, &w[1].id);
        match order.compare(a, b) {
            None => return Err(not_numeric(a, b)),
            Some(std::cmp::Ordering::Less) => {}
            Some(_) => {
                return Err(WalkError::IdOrder {
                    page,
                    order: order.as_str(),
                    earlier: WalkError::shown(a),
                    later: WalkError::shown(b),
                });
            }
        }
    }
    Ok(())
}

/// Progress of a delta walk that continues by link or cursor: order across its pages, the
/// IDs read at the highest value so far (a tie), the fingerprints of its pages.
#[derive(Debug)]
pub(super) struct DeltaWalk {
    bound: Option<Micros>,
    res: Micros,
    pages: u64,
    max: Option<Micros>,
    at_max: HashSet<String>,
    fingerprints: Fingerprints,
}

impl DeltaWalk {
    pub(super) fn new(bound: Option<Micros>, res: Micros) -> Self {
        DeltaWalk {
            bound,
            res,
            pages: 0,
            max: None,
            at_max: HashSet::new(),
            fingerprints: Fingerprints::default(),
        }
    }

    /// Check the next page (`(id, delta)` in the order served; `more`: the source says another
    /// page follows).
    pub(super) fn page<'a>(
        &mut self,
        items: impl Iterator<Item = (&'a str, Micros)> + Clone,
        more: bool,
    ) -> Result<(), WalkError> {
        self.pages += 1;
        let page = self.pages;
        // A page served again first: it would otherwise read as values going backwards.
        let fp = items
            .clone()
            .next()
            .is_some()
            .then(|| fingerprint(items.clone()));
        self.fingerprints.page(fp, page)?;
        check_delta_order(
            items.clone().map(|x| x.1),
            self.bound,
            self.res,
            self.max,
            page,
        )?;
        let mut any = false;
        let mut progressed = false;
        for (id, d) in items.clone() {
            any = true;
            if self.max.is_none_or(|m| d > m) {
                self.max = Some(d);
                self.at_max.clear();
                progressed = true;
            }
            if Some(d) == self.max && !self.at_max.contains(id) {
                self.at_max.insert(id.to_owned());
                progressed = true;
            }
        }
        if more && any && !progressed {
            return Err(WalkError::NoProgress { page });
        }
        Ok(())
    }
}

/// Progress of one pass over an ID listing that is not a keyset walk (offsets, page numbers,
/// links): a full page must hold an ID the previous page did not, and no page may repeat one of
/// the pass.
#[derive(Debug, Default)]
pub(super) struct IdPass {
    pages: u64,
    previous: HashSet<String>,
    fingerprints: Fingerprints,
}

impl IdPass {
    /// A pass resumed after a page with fingerprint `last` (from the resume token).
    pub(super) fn resumed(last: Option<u64>) -> Self {
        let mut p = IdPass::default();
        if let Some(fp) = last {
            p.fingerprints.seen.insert(fp, 0);
        }
        p
    }

    /// Check the next page as served (before any overlap is cut); returns its fingerprint.
    pub(super) fn page(&mut self, ids: &[IdVersion], full: bool) -> Result<Option<u64>, WalkError> {
        self.pages += 1;
        let page = self.pages;
        let fp =
            (!ids.is_empty()).then(|| fingerprint(ids.iter().map(|x| (x.id.as_str(), x.delta_us))));
        self.fingerprints.page(fp, page)?;
        let new = ids.iter().any(|x| !self.previous.contains(&x.id));
        if full && !new {
            return Err(WalkError::NoProgress { page });
        }
        self.previous = ids.iter().map(|x| x.id.clone()).collect();
        Ok(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(id: &str, d: Micros) -> IdVersion {
        IdVersion {
            id: id.into(),
            delta_us: d,
        }
    }

    #[test]
    fn a_count_gap_between_two_keyset_queries_is_a_skip() {
        // 10 records at or above `from`; the page served 3 below its highest value (and the
        // highest), 7 at or above it: nothing skipped.
        assert!(check_skipped(Some(10), Some(7), 3, 1, Some(100), 200).is_ok());
        // Changes between the requests (an update moving a record up): fewer, still fine.
        assert!(check_skipped(Some(10), Some(8), 3, 1, Some(100), 200).is_ok());
        // 5 records below 200 by the counts, 3 served: 2 skipped.
        match check_skipped(Some(10), Some(5), 3, 2, None, 200) {
            Err(WalkError::Skipped {
                page: 2,
                counted: 5,
                served: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // No count from the source: nothing to compare.
        assert!(check_skipped(None, Some(5), 3, 1, None, 200).is_ok());
        assert!(check_skipped(Some(10), None, 3, 1, None, 200).is_ok());
    }

    #[test]
    fn delta_order_within_across_and_against_the_bound() {
        let ok = check_delta_order([5, 5, 7].into_iter(), Some(5), 1, Some(5), 1);
        assert!(ok.is_ok());
        assert!(matches!(
            check_delta_order([5, 4].into_iter(), None, 1, None, 2),
            Err(WalkError::DeltaOrder { page: 2, .. })
        ));
        assert!(matches!(
            check_delta_order([4].into_iter(), None, 1, Some(5), 3),
            Err(WalkError::DeltaOrder { page: 3, .. })
        ));
        assert!(matches!(
            check_delta_order([4].into_iter(), Some(5), 1, None, 1),
            Err(WalkError::BelowBound { .. })
        ));
        // Within one resolution of the bound: the source compares at its own resolution.
        assert!(
            check_delta_order([4_000_001].into_iter(), Some(5_000_000), 1_000_000, None, 1).is_ok()
        );
        assert!(
            check_delta_order([4_000_000].into_iter(), Some(5_000_000), 1_000_000, None, 1)
                .is_err()
        );
    }

    #[test]
    fn id_order_in_each_order_and_after_the_filter() {
        let page = [iv("9", 0), iv("10", 0), iv("11", 0)];
        assert!(check_id_order(&page, IdOrder::Numeric, Some("8"), 1).is_ok());
        assert!(matches!(
            check_id_order(&page, IdOrder::Bytewise, None, 1),
            Err(WalkError::IdOrder {
                order: "bytewise",
                ..
            })
        ));
        assert!(matches!(
            check_id_order(&page, IdOrder::Numeric, Some("9"), 2),
            Err(WalkError::IdFilterIgnored { page: 2, .. })
        ));
        assert!(matches!(
            check_id_order(&[iv("1", 0), iv("1", 0)], IdOrder::Numeric, None, 1),
            Err(WalkError::IdOrder { .. })
        ));
        match check_id_order(&[iv("1", 0), iv("x2", 0)], IdOrder::Numeric, None, 1) {
            Err(WalkError::NotNumeric { id, .. }) => assert_eq!(id, "x2"),
            other => panic!("{other:?}"),
        }
        assert!(check_id_order(&[iv("a", 0), iv("b", 0)], IdOrder::Bytewise, Some("0"), 1).is_ok());
    }

    #[test]
    fn a_delta_walk_needs_progress_on_every_page_with_a_next() {
        let mut w = DeltaWalk::new(None, 1);
        w.page([("1", 1), ("2", 2)].into_iter(), true).unwrap();
        // The same tie value with a new ID is progress.
        w.page([("2", 2), ("3", 2)].into_iter(), true).unwrap();
        // Only records already read, at the same value: none.
        assert!(matches!(
            w.page([("3", 2), ("2", 2)].into_iter(), true),
            Err(WalkError::NoProgress { page: 3 })
        ));
        let mut w = DeltaWalk::new(None, 1);
        w.page([("1", 1)].into_iter(), true).unwrap();
        w.page([("2", 2)].into_iter(), true).unwrap();
        assert!(matches!(
            w.page([("2", 2)].into_iter(), false),
            Err(WalkError::RepeatedPage { page: 3, first: 2 })
        ));
    }

    #[test]
    fn an_id_pass_refuses_a_full_page_of_known_ids_and_any_repeat() {
        let mut p = IdPass::default();
        let a = [iv("1", 0), iv("2", 0)];
        let fp = p.page(&a, true).unwrap();
        assert!(matches!(
            p.page(&[iv("2", 0), iv("1", 0)], true),
            Err(WalkError::NoProgress { page: 2 })
        ));
        let mut p = IdPass::resumed(fp);
        assert!(matches!(
            p.page(&a, true),
            Err(WalkError::RepeatedPage { page: 1, first: 0 })
        ));
        // A short page of known IDs ends the listing: not a failure of progress.
        let mut p = IdPass::default();
        p.page(&a, true).unwrap();
        p.page(&[iv("2", 0)], false).unwrap();
    }
}
