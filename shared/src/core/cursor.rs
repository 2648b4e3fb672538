//! The delta cursor rule (I1), pure.
//!
//! The cursor is where the next run starts reading, inclusively (`>=`): a point on the source's
//! clock below which every record has been read at a time when no more could appear there.
//! After each page is written it becomes
//!
//! `min(highest delta written in this run, ceiling − overlap)`
//!
//! (never moving back), where the ceiling is the source's own clock (its `Date` header) when the
//! run started, and the overlap bounds how late a record can be committed after its timestamp
//! (long transactions, skew between the source's web and database clocks).
//!
//! Why each part:
//! - highest delta *written*, not our wall clock: records changed during the run keep their
//!   place, and skew between our clock and the source's cannot lose anything;
//! - `ceiling − overlap`: a record committed before the run started was visible when the run
//!   read its place; one with an older timestamp committed later lands within the overlap of the
//!   ceiling, which the next run reads again;
//! - inclusive start: records sharing the boundary timestamp are read again; unchanged ones
//!   cost no write (content hash);
//! - a run that stops at its deadline still moves the cursor to what it read, so a backlog
//!   larger than one run (a mass update inside the overlap window) cannot stall the cursor.
//!   The one case that can is a single timestamp shared by more records than one run can
//!   read: resuming inside it needs an ID filter at the source (see ARCHITECTURE.md).

use crate::error::ParseError;
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
    pub fn decode(s: &str) -> Result<Self, ParseError> {
        let c: DeltaCursor = serde_json::from_str(s).map_err(ParseError::NotCursor)?;
        if c.v != 1 {
            return Err(ParseError::CursorVersion(c.v));
        }
        Ok(c)
    }
}

/// Where a run's listing starts (inclusive).
pub fn query_start(cursor: Option<&DeltaCursor>) -> Option<Micros> {
    cursor.map(|c| c.watermark_us)
}

/// The cursor after a prefix of the listing is durably written.
///
/// `max_written_us` is the highest delta in the written prefix (the listing is ordered by
/// delta and started at the previous cursor, so everything from there up to it is read);
/// `ceiling_us` the source's clock at the run's start. Never moves backwards.
pub fn advance(
    previous: Option<&DeltaCursor>,
    max_written_us: Micros,
    ceiling_us: Micros,
    overlap_us: Micros,
) -> DeltaCursor {
    let mut next = max_written_us.min(ceiling_us.saturating_sub(overlap_us));
    if let Some(p) = previous {
        next = next.max(p.watermark_us);
    }
    DeltaCursor::new(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_capped_an_overlap_below_the_ceiling_and_never_goes_back() {
        let prev = DeltaCursor::new(100);
        assert_eq!(advance(Some(&prev), 150, 200, 10).watermark_us, 150);
        assert_eq!(advance(Some(&prev), 250, 200, 10).watermark_us, 190);
        assert_eq!(advance(Some(&prev), 50, 200, 10).watermark_us, 100);
        assert_eq!(advance(None, 50, 1_000, 10).watermark_us, 50);
    }

    #[test]
    fn a_partial_run_inside_the_overlap_still_moves_the_cursor() {
        // The previous cursor sits an overlap below the last ceiling; a run that reads only
        // part of the backlog above it still moves it up to what it read.
        let prev = DeltaCursor::new(1_000);
        assert_eq!(advance(Some(&prev), 1_050, 5_000, 120).watermark_us, 1_050);
    }

    #[test]
    fn query_starts_at_the_cursor() {
        assert_eq!(query_start(None), None);
        assert_eq!(query_start(Some(&DeltaCursor::new(100))), Some(100));
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = DeltaCursor::new(1_714_564_800_000_000);
        assert_eq!(DeltaCursor::decode(&c.encode()).unwrap(), c);
        assert!(matches!(
            DeltaCursor::decode("{}"),
            Err(ParseError::NotCursor(_))
        ));
        assert!(matches!(
            DeltaCursor::decode("c0"),
            Err(ParseError::NotCursor(_))
        ));
        assert!(matches!(
            DeltaCursor::decode(r#"{"v":2,"watermark_us":1}"#),
            Err(ParseError::CursorVersion(2))
        ));
    }
}
