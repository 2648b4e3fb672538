//! The compact record store of one entity and its sorted indexes.
//!
//! Per record the store keeps 24 bytes ([`Rec`]) plus 8 bytes in the ID index and 16 in the
//! `(updated_at, id)` index: about 48 bytes a record, 48 MB for a million. A page is found with
//! binary searches and offset arithmetic on the live indexes (O(log n)); a mutation moves one
//! entry in a sorted `Vec` (an O(n) memmove, fast in practice). Offsets are therefore always
//! relative to the live ordered set at request time, as on a real API.

use std::sync::Mutex;

use crate::config::Granularity;

/// The per-record state; everything else is generated from `(seed, id, mutation)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub updated_us: i64,
    pub created_us: i64,
    pub mutation: u32,
    pub alive: bool,
}

/// The sort key of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortKey {
    Id,
    UpdatedAt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Order {
    pub key: SortKey,
    pub desc: bool,
}

/// Inclusive bounds of the filters; the full range means "no filter".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub ts_lo: i64,
    pub ts_hi: i64,
    pub id_lo: u64,
    pub id_hi: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            ts_lo: i64::MIN,
            ts_hi: i64::MAX,
            id_lo: 0,
            id_hi: u64::MAX,
        }
    }
}

impl Bounds {
    fn ts_filtered(&self) -> bool {
        self.ts_lo != i64::MIN || self.ts_hi != i64::MAX
    }
    fn id_filtered(&self) -> bool {
        self.id_lo != 0 || self.id_hi != u64::MAX
    }
    fn matches(&self, id: u64, ts: i64) -> bool {
        (self.id_lo..=self.id_hi).contains(&id) && (self.ts_lo..=self.ts_hi).contains(&ts)
    }
}

/// A position in a sort order: the key of the last record a client saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Id(u64),
    Ts(i64, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Skip this many matching records (offset paging, on the live set).
    Offset(usize),
    /// Start strictly after this key in the listing's direction (keyset paging).
    After(Key),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PageReq {
    pub order: Order,
    pub bounds: Bounds,
    pub start: Start,
    pub limit: usize,
}

#[derive(Debug)]
pub(crate) struct PageOut {
    pub rows: Vec<(u64, Rec)>,
    pub total: usize,
    pub has_next: bool,
}

impl PageOut {
    /// The key of the last row, for `meta.next_cursor`.
    pub(crate) fn last_key(&self, key: SortKey) -> Option<Key> {
        self.rows.last().map(|(id, r)| match key {
            SortKey::Id => Key::Id(*id),
            SortKey::UpdatedAt => Key::Ts(r.updated_us, *id),
        })
    }
}

/// Listing signature for the scan cache (used only when a filter is not on the sort key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScanSig {
    order: Order,
    bounds: Bounds,
    generation: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct ScanCache {
    total: Option<(ScanSig, usize)>,
    /// After `matched` matches, the scan stood at step `step` (steps count from the start of
    /// the filtered window in the listing's direction).
    resume: Option<(ScanSig, usize, usize)>,
}

/// The store of one entity.
#[derive(Debug)]
pub(crate) struct Table {
    /// Indexed by `id - 1`; deleted records stay with `alive = false` (IDs are never reused).
    recs: Vec<Rec>,
    /// Live IDs, ascending.
    by_id: Vec<u64>,
    /// Live `(updated_at, id)`, ascending.
    by_ts: Vec<(i64, u64)>,
    /// Bumped by every mutation; invalidates the scan cache.
    generation: u64,
    cache: Mutex<ScanCache>,
}

impl Table {
    /// `n` records; record `i` (1-based) at `base + ((i - 1) / tie) * step`, floored to `gran`.
    pub(crate) fn generate(n: usize, base: i64, step: i64, tie: usize, gran: Granularity) -> Table {
        let tie = tie.max(1);
        let mut recs = Vec::with_capacity(n);
        let mut by_id = Vec::with_capacity(n);
        let mut by_ts = Vec::with_capacity(n);
        for i in 0..n {
            let group = i64::try_from(i / tie).unwrap_or(i64::MAX);
            let ts = gran.truncate(base.saturating_add(group.saturating_mul(step)));
            let id = i as u64 + 1;
            recs.push(Rec {
                updated_us: ts,
                created_us: ts,
                mutation: 0,
                alive: true,
            });
            by_id.push(id);
            by_ts.push((ts, id));
        }
        if !by_ts.is_sorted() {
            by_ts.sort_unstable();
        }
        Table {
            recs,
            by_id,
            by_ts,
            generation: 0,
            cache: Mutex::new(ScanCache::default()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The next ID `insert` will use.
    pub(crate) fn next_id(&self) -> u64 {
        self.recs.len() as u64 + 1
    }

    /// Bytes held by the store (capacities of its vectors).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.recs.capacity() * size_of::<Rec>()
            + self.by_id.capacity() * size_of::<u64>()
            + self.by_ts.capacity() * size_of::<(i64, u64)>()
    }

    pub(crate) fn get(&self, id: u64) -> Option<Rec> {
        let idx = usize::try_from(id.checked_sub(1)?).ok()?;
        self.recs.get(idx).copied().filter(|r| r.alive)
    }

    /// A record, deleted or not.
    pub(crate) fn get_any(&self, id: u64) -> Option<Rec> {
        let idx = usize::try_from(id.checked_sub(1)?).ok()?;
        self.recs.get(idx).copied()
    }

    /// Adds a record at `ts` (already truncated) and returns its ID.
    pub(crate) fn insert(&mut self, ts: i64) -> u64 {
        let id = self.next_id();
        self.recs.push(Rec {
            updated_us: ts,
            created_us: ts,
            mutation: 0,
            alive: true,
        });
        self.by_id.push(id);
        let pos = self.by_ts.partition_point(|&k| k < (ts, id));
        self.by_ts.insert(pos, (ts, id));
        self.generation += 1;
        id
    }

    /// Moves a live record to `ts` and bumps its mutation counter.
    pub(crate) fn update(&mut self, id: u64, ts: i64) -> Option<Rec> {
        let idx = usize::try_from(id.checked_sub(1)?).ok()?;
        let rec = self.recs.get_mut(idx).filter(|r| r.alive)?;
        let old = (rec.updated_us, id);
        rec.updated_us = ts;
        rec.mutation = rec.mutation.wrapping_add(1);
        let out = *rec;
        if let Ok(pos) = self.by_ts.binary_search(&old) {
            self.by_ts.remove(pos);
        }
        let pos = self.by_ts.partition_point(|&k| k < (ts, id));
        self.by_ts.insert(pos, (ts, id));
        self.generation += 1;
        Some(out)
    }

    /// Brings a deleted record back under its ID at `ts` (a record re-created with the ID it had,
    /// as sources that reuse IDs or restore from a trash do), bumping its mutation counter.
    pub(crate) fn revive(&mut self, id: u64, ts: i64) -> Option<Rec> {
        let idx = usize::try_from(id.checked_sub(1)?).ok()?;
        let rec = self.recs.get_mut(idx).filter(|r| !r.alive)?;
        rec.alive = true;
        rec.updated_us = ts;
        rec.created_us = ts;
        rec.mutation = rec.mutation.wrapping_add(1);
        let out = *rec;
        let pos = self.by_id.partition_point(|&k| k < id);
        self.by_id.insert(pos, id);
        let pos = self.by_ts.partition_point(|&k| k < (ts, id));
        self.by_ts.insert(pos, (ts, id));
        self.generation += 1;
        Some(out)
    }

    pub(crate) fn delete(&mut self, id: u64) -> bool {
        let Some(idx) = id.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        let Some(rec) = self.recs.get_mut(idx).filter(|r| r.alive) else {
            return false;
        };
        rec.alive = false;
        let key = (rec.updated_us, id);
        if let Ok(pos) = self.by_id.binary_search(&id) {
            self.by_id.remove(pos);
        }
        if let Ok(pos) = self.by_ts.binary_search(&key) {
            self.by_ts.remove(pos);
        }
        self.generation += 1;
        true
    }

    /// Every live `(id, updated_at_us)`, by ID.
    pub(crate) fn versions(&self) -> Vec<(u64, i64)> {
        self.by_id
            .iter()
            .map(|&id| (id, self.recs[(id - 1) as usize].updated_us))
            .collect()
    }

    fn rec(&self, id: u64) -> Rec {
        self.recs[(id - 1) as usize]
    }

    /// `(id, updated_at)` at raw position `p` of the index for `key`.
    fn at(&self, key: SortKey, p: usize) -> (u64, i64) {
        match key {
            SortKey::Id => {
                let id = self.by_id[p];
                (id, self.rec(id).updated_us)
            }
            SortKey::UpdatedAt => {
                let (ts, id) = self.by_ts[p];
                (id, ts)
            }
        }
    }

    /// The raw range `[lo, hi)` of the index for `key` that the filter on that key allows.
    fn aligned_range(&self, key: SortKey, b: &Bounds) -> (usize, usize) {
        match key {
            SortKey::Id => {
                let lo = self.by_id.partition_point(|&x| x < b.id_lo);
                let hi = self.by_id.partition_point(|&x| x <= b.id_hi);
                (lo, hi.max(lo))
            }
            SortKey::UpdatedAt => {
                let lo = self.by_ts.partition_point(|&(t, _)| t < b.ts_lo);
                let hi = self.by_ts.partition_point(|&(t, _)| t <= b.ts_hi);
                (lo, hi.max(lo))
            }
        }
    }

    /// Raw index position of the first entry strictly greater than `k` (ascending).
    fn pos_after(&self, k: Key) -> usize {
        match k {
            Key::Id(id) => self.by_id.partition_point(|&x| x <= id),
            Key::Ts(ts, id) => self.by_ts.partition_point(|&e| e <= (ts, id)),
        }
    }

    /// Raw index position of the first entry not less than `k` (ascending).
    fn pos_before(&self, k: Key) -> usize {
        match k {
            Key::Id(id) => self.by_id.partition_point(|&x| x < id),
            Key::Ts(ts, id) => self.by_ts.partition_point(|&e| e < (ts, id)),
        }
    }

    /// One page of a listing. `req.start` as `After(key)` must carry a key of `req.order.key`
    /// (the caller checks; a mismatched key yields an empty page).
    pub(crate) fn page(&self, req: &PageReq) -> PageOut {
        let key = req.order.key;
        let desc = req.order.desc;
        let b = req.bounds;
        let empty = PageOut {
            rows: Vec::new(),
            total: 0,
            has_next: false,
        };
        if b.ts_lo > b.ts_hi || b.id_lo > b.id_hi {
            return empty;
        }
        let (lo, hi) = self.aligned_range(key, &b);
        let cross = match key {
            SortKey::Id => b.ts_filtered(),
            SortKey::UpdatedAt => b.id_filtered(),
        };
        // Window in raw positions, narrowed by a cursor.
        let (wlo, whi) = match req.start {
            Start::Offset(_) => (lo, hi),
            Start::After(k) => {
                let key_ok = matches!(
                    (key, k),
                    (SortKey::Id, Key::Id(_)) | (SortKey::UpdatedAt, Key::Ts(..))
                );
                if !key_ok {
                    return empty;
                }
                if desc {
                    let p = self.pos_before(k);
                    (lo, hi.min(p).max(lo))
                } else {
                    let p = self.pos_after(k);
                    (lo.max(p).min(hi), hi)
                }
            }
        };
        let raw = |step: usize| if desc { whi - 1 - step } else { wlo + step };
        let wlen = whi - wlo;

        if !cross {
            let total = hi - lo;
            let skip = match req.start {
                Start::Offset(o) => o,
                Start::After(_) => 0,
            };
            let first = skip.min(wlen);
            let last = skip.saturating_add(req.limit).min(wlen);
            let rows = (first..last)
                .map(|s| {
                    let (id, _) = self.at(key, raw(s));
                    (id, self.rec(id))
                })
                .collect();
            return PageOut {
                rows,
                total,
                has_next: last < wlen,
            };
        }

        // A filter on the other key: scan the window, with a cache that makes sequential offset
        // paging on an unchanged store linear overall.
        let sig = ScanSig {
            order: req.order,
            bounds: b,
            generation: self.generation,
        };
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let total = match cache.total {
            Some((s, t)) if s == sig => t,
            _ => {
                let t = (lo..hi)
                    .filter(|&p| {
                        let (id, ts) = self.at(key, p);
                        b.matches(id, ts)
                    })
                    .count();
                cache.total = Some((sig, t));
                t
            }
        };
        let (mut matched, mut step, skip) = match req.start {
            Start::After(_) => (0, 0, 0),
            Start::Offset(o) => match cache.resume {
                Some((s, m, st)) if s == sig && m <= o => (m, st, o),
                _ => (0, 0, o),
            },
        };
        let mut rows = Vec::with_capacity(req.limit.min(1024));
        let mut has_next = false;
        let mut resume_at = None;
        while step < wlen {
            let (id, ts) = self.at(key, raw(step));
            step += 1;
            if !b.matches(id, ts) {
                continue;
            }
            matched += 1;
            if matched <= skip {
                continue;
            }
            if rows.len() == req.limit {
                has_next = true;
                break;
            }
            rows.push((id, self.rec(id)));
            if rows.len() == req.limit {
                resume_at = Some((matched, step));
            }
        }
        if let (Start::Offset(_), Some((m, st))) = (req.start, resume_at) {
            cache.resume = Some((sig, m, st));
        }
        PageOut {
            rows,
            total,
            has_next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASC_TS: Order = Order {
        key: SortKey::UpdatedAt,
        desc: false,
    };
    const ASC_ID: Order = Order {
        key: SortKey::Id,
        desc: false,
    };

    fn ids(p: &PageOut) -> Vec<u64> {
        p.rows.iter().map(|(id, _)| *id).collect()
    }

    fn req(order: Order, bounds: Bounds, start: Start, limit: usize) -> PageReq {
        PageReq {
            order,
            bounds,
            start,
            limit,
        }
    }

    #[test]
    fn ties_get_one_timestamp_per_group() {
        let t = Table::generate(7, 100, 10, 3, Granularity::Micros);
        let v = t.versions();
        assert_eq!(
            v,
            [
                (1, 100),
                (2, 100),
                (3, 100),
                (4, 110),
                (5, 110),
                (6, 110),
                (7, 120)
            ]
        );
    }

    #[test]
    fn offset_pages_shift_with_live_mutations() {
        let mut t = Table::generate(10, 0, 10, 1, Granularity::Micros);
        let p1 = t.page(&req(ASC_TS, Bounds::default(), Start::Offset(0), 3));
        assert_eq!(ids(&p1), [1, 2, 3]);
        t.update(2, 1_000);
        let p2 = t.page(&req(ASC_TS, Bounds::default(), Start::Offset(3), 3));
        assert_eq!(
            ids(&p2),
            [5, 6, 7],
            "record 4 is skipped by the naive offset"
        );
        let p2c = t.page(&req(
            ASC_TS,
            Bounds::default(),
            Start::After(Key::Ts(20, 3)),
            3,
        ));
        assert_eq!(ids(&p2c), [4, 5, 6], "keyset paging loses nothing");
    }

    #[test]
    fn descending_and_cursor_in_both_directions() {
        let t = Table::generate(5, 0, 10, 1, Granularity::Micros);
        let desc = Order {
            key: SortKey::Id,
            desc: true,
        };
        let p = t.page(&req(desc, Bounds::default(), Start::Offset(1), 2));
        assert_eq!(ids(&p), [4, 3]);
        assert!(p.has_next);
        let p = t.page(&req(desc, Bounds::default(), Start::After(Key::Id(3)), 5));
        assert_eq!(ids(&p), [2, 1]);
        assert!(!p.has_next);
        let p = t.page(&req(ASC_ID, Bounds::default(), Start::After(Key::Id(3)), 5));
        assert_eq!(ids(&p), [4, 5]);
    }

    #[test]
    fn cross_filters_scan_and_count() {
        let mut t = Table::generate(20, 0, 10, 1, Granularity::Micros);
        // Even IDs get a late timestamp.
        for id in (2..=20).step_by(2) {
            t.update(id, 1_000 + id as i64);
        }
        let b = Bounds {
            ts_lo: 1_000,
            ..Bounds::default()
        };
        let mut seen = Vec::new();
        let mut off = 0;
        loop {
            let p = t.page(&req(ASC_ID, b, Start::Offset(off), 3));
            assert_eq!(p.total, 10);
            seen.extend(ids(&p));
            off += p.rows.len();
            if !p.has_next {
                break;
            }
        }
        assert_eq!(seen, (2..=20).step_by(2).collect::<Vec<_>>());
        // Out-of-order offsets still work (cache miss path).
        let p = t.page(&req(ASC_ID, b, Start::Offset(1), 2));
        assert_eq!(ids(&p), [4, 6]);
        // A mutation invalidates the cached total.
        t.delete(4);
        let p = t.page(&req(ASC_ID, b, Start::Offset(0), 2));
        assert_eq!((p.total, ids(&p)), (9, vec![2, 6]));
        // Cursor with a cross filter.
        let p = t.page(&req(ASC_ID, b, Start::After(Key::Id(6)), 2));
        assert_eq!(ids(&p), [8, 10]);
        // Ordered by time with an ID filter.
        let bi = Bounds {
            id_lo: 15,
            ..Bounds::default()
        };
        let p = t.page(&req(ASC_TS, bi, Start::Offset(0), 10));
        assert_eq!(ids(&p), [15, 17, 19, 16, 18, 20]);
    }

    #[test]
    fn delete_and_insert_keep_indexes_sorted() {
        let mut t = Table::generate(5, 0, 10, 1, Granularity::Micros);
        assert!(t.delete(3));
        assert!(!t.delete(3));
        assert!(!t.delete(0));
        assert!(t.get(3).is_none());
        let id = t.insert(5);
        assert_eq!(id, 6);
        assert_eq!(t.len(), 5);
        let p = t.page(&req(ASC_TS, Bounds::default(), Start::Offset(0), 10));
        assert_eq!(ids(&p), [1, 6, 2, 4, 5]);
        assert!(t.update(3, 1).is_none());
        assert_eq!(t.update(6, 100).map(|r| r.mutation), Some(1));
    }

    #[test]
    fn a_deleted_record_comes_back_under_its_id() {
        let mut t = Table::generate(5, 0, 10, 1, Granularity::Micros);
        assert!(t.revive(3, 7).is_none(), "a live record is not revived");
        assert!(t.revive(9, 7).is_none(), "an ID never used is not revived");
        assert!(t.delete(3));
        let r = t.revive(3, 7).expect("revived");
        assert_eq!((r.updated_us, r.mutation, r.alive), (7, 1, true));
        assert_eq!(t.get(3).map(|r| r.updated_us), Some(7));
        assert_eq!(t.len(), 5);
        let p = t.page(&req(ASC_ID, Bounds::default(), Start::Offset(0), 10));
        assert_eq!(ids(&p), [1, 2, 3, 4, 5]);
        let p = t.page(&req(ASC_TS, Bounds::default(), Start::Offset(0), 10));
        assert_eq!(ids(&p), [1, 3, 2, 4, 5]);
    }

    #[test]
    fn empty_bounds_give_empty_pages() {
        let t = Table::generate(5, 0, 10, 1, Granularity::Micros);
        let b = Bounds {
            ts_lo: 30,
            ts_hi: 10,
            ..Bounds::default()
        };
        let p = t.page(&req(ASC_ID, b, Start::Offset(0), 10));
        assert_eq!((p.total, p.rows.len(), p.has_next), (0, 0, false));
    }
}
