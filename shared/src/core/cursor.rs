//! The delta cursor rule (I1), pure.
//!
//! The cursor is a point on the source's clock below which everything has been written. After
//! each page is written, the cursor becomes `min(highest delta written in this run, ceiling)`,
//! where the ceiling is the source's own clock (its `Date` header) when the run started. The
//! next query starts `overlap` before the cursor and reads inclusively (`>=`).
//!
//! Why each part:
//! - highest delta *written*, not our wall clock at the end: records changed during the run keep
//!   their place (the wall-clock cursor skips them; so does skew between our clock and theirs);
//! - the ceiling: a record whose transaction commits after we passed its timestamp is still
//!   before the ceiling, so the next run reads it again;
//! - inclusive re-read with an overlap: records that share the boundary timestamp and those
//!   committed late within the overlap are read again; unchanged ones cost no write (hash);
//! - keyset paging within a run (see `source`): nothing shifts past us mid-run.

use crate::model::Micros;
use serde::{Deserialize, Serialize};

/// The persisted cursor (a versioned wire struct; stored as JSON in the control table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCursor {
    pub v: u32,
    /// Everything with a delta strictly below this is written.
    pub watermark_us: Micros,
}

impl DeltaCursor {
    pub fn new(watermark_us: Micros) -> Self {
        DeltaCursor { v: 1, watermark_us }
    }
    pub fn encode(&self) -> String {
        serde_json::json!({ "v": self.v, "watermark_us": self.watermark_us }).to_string()
    }
    pub fn decode(s: &str) -> Result<Self, String> {
        let c: DeltaCursor =
            serde_json::from_str(s).map_err(|e| format!("bad cursor {s:?}: {e}"))?;
        if c.v != 1 {
            return Err(format!("cursor version {} is not supported", c.v));
        }
        Ok(c)
    }
}

/// Where a run's listing starts: `overlap` before the cursor, inclusive.
pub fn query_start(cursor: Option<&DeltaCursor>, overlap_us: Micros) -> Option<Micros> {
    cursor.map(|c| c.watermark_us.saturating_sub(overlap_us))
}

/// The cursor after a prefix of the listing is durably written.
///
/// `max_written_us` is the highest delta in the written prefix (the listing is ordered by
/// delta, so everything below it is written too); `ceiling_us` the source's clock at the run's
/// start. Never moves backwards.
pub fn advance(
    previous: Option<&DeltaCursor>,
    max_written_us: Micros,
    ceiling_us: Option<Micros>,
) -> DeltaCursor {
    let mut next = match ceiling_us {
        Some(c) => max_written_us.min(c),
        None => max_written_us,
    };
    if let Some(p) = previous {
        next = next.max(p.watermark_us);
    }
    DeltaCursor::new(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_capped_by_the_ceiling_and_never_goes_back() {
        let prev = DeltaCursor::new(100);
        assert_eq!(advance(Some(&prev), 150, Some(200)).watermark_us, 150);
        assert_eq!(advance(Some(&prev), 250, Some(200)).watermark_us, 200);
        assert_eq!(advance(Some(&prev), 50, Some(200)).watermark_us, 100);
        assert_eq!(advance(None, 50, None).watermark_us, 50);
    }

    #[test]
    fn query_starts_an_overlap_before_the_cursor() {
        assert_eq!(query_start(None, 10), None);
        assert_eq!(query_start(Some(&DeltaCursor::new(100)), 10), Some(90));
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = DeltaCursor::new(1_714_564_800_000_000);
        assert_eq!(DeltaCursor::decode(&c.encode()).unwrap(), c);
        assert!(DeltaCursor::decode("{}").is_err());
        assert!(DeltaCursor::decode(r#"{"v":2,"watermark_us":1}"#).is_err());
    }
}
