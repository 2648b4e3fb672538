//! Timestamps as sources write them, normalised to epoch microseconds, and written back in the
//! source's own format for filters.

use crate::error::ParseError;
use crate::model::Micros;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How a source writes its delta field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.123456+02:00`.
    Rfc3339,
    /// Integer (or numeric string) seconds since the epoch.
    EpochSeconds,
    /// Integer (or numeric string) milliseconds since the epoch.
    EpochMillis,
}

impl TimestampFormat {
    /// The smallest step the format can express, in microseconds. RFC 3339 says nothing about
    /// precision; we assume whole seconds unless configured (over-reading is safe, skipping is not).
    pub fn default_resolution_us(self) -> Micros {
        match self {
            TimestampFormat::Rfc3339 | TimestampFormat::EpochSeconds => 1_000_000,
            TimestampFormat::EpochMillis => 1_000,
        }
    }

    /// Parse a timestamp from its JSON text (a string or a number).
    pub fn parse_json(self, raw: &str) -> Result<Micros, ParseError> {
        let raw = raw.trim();
        if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            return self.parse_str(inner);
        }
        self.parse_str(raw)
    }

    /// Parse a timestamp from its text.
    pub fn parse_str(self, s: &str) -> Result<Micros, ParseError> {
        match self {
            TimestampFormat::Rfc3339 => parse_rfc3339(s),
            TimestampFormat::EpochSeconds => parse_epoch(s, 1_000_000, "seconds"),
            TimestampFormat::EpochMillis => parse_epoch(s, 1_000, "milliseconds"),
        }
    }

    /// Format microseconds as the source writes them (for filters).
    pub fn format(self, us: Micros) -> String {
        match self {
            TimestampFormat::Rfc3339 => format_rfc3339(us),
            TimestampFormat::EpochSeconds => us.div_euclid(1_000_000).to_string(),
            TimestampFormat::EpochMillis => us.div_euclid(1_000).to_string(),
        }
    }
}

fn parse_epoch(s: &str, unit_us: i64, unit: &'static str) -> Result<Micros, ParseError> {
    if let Ok(n) = s.parse::<i64>() {
        return n.checked_mul(unit_us).ok_or(ParseError::OutOfRange);
    }
    // Fractional epoch values ("1714560000.25").
    let f: f64 = s
        .parse()
        .map_err(|source| ParseError::NotEpoch { unit, source })?;
    let us = f * unit_us as f64;
    if !us.is_finite() || us.abs() > 9.0e18 {
        return Err(ParseError::OutOfRange);
    }
    Ok(us.round() as i64)
}

/// Parse RFC 3339 to epoch microseconds (sub-microsecond digits are truncated).
pub fn parse_rfc3339(s: &str) -> Result<Micros, ParseError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(ParseError::NotRfc3339)?;
    let nanos = t.unix_timestamp_nanos();
    i64::try_from(nanos.div_euclid(1_000)).map_err(|_| ParseError::OutOfRange)
}

/// Format epoch microseconds as RFC 3339 in UTC: whole seconds without a fraction, otherwise
/// six fractional digits.
pub fn format_rfc3339(us: Micros) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:06}Z")
    }
}

/// Parse an HTTP `Date` header (IMF-fixdate) to epoch microseconds.
pub fn parse_http_date(s: &str) -> Option<Micros> {
    let t = httpdate::parse_http_date(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_micros()).ok()
}

/// Our clock, in epoch microseconds.
pub fn now_us() -> Micros {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_normalises_offsets() {
        let a = parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
        let b = parse_rfc3339("2024-05-01T14:00:00+02:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, 1_714_564_800_000_000);
        assert_eq!(format_rfc3339(a), "2024-05-01T12:00:00Z");
        let c = parse_rfc3339("2024-05-01T12:00:00.123456Z").unwrap();
        assert_eq!(c - a, 123_456);
        assert_eq!(format_rfc3339(c), "2024-05-01T12:00:00.123456Z");
        assert!(matches!(
            parse_rfc3339("2024-05-01 12:00"),
            Err(ParseError::NotRfc3339(_))
        ));
    }

    #[test]
    fn epoch_formats() {
        let f = TimestampFormat::EpochSeconds;
        assert_eq!(f.parse_json("1714564800").unwrap(), 1_714_564_800_000_000);
        assert_eq!(
            f.parse_json("\"1714564800\"").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(f.format(1_714_564_800_999_999), "1714564800");
        let m = TimestampFormat::EpochMillis;
        assert_eq!(
            m.parse_json("1714564800123").unwrap(),
            1_714_564_800_123_000
        );
        assert_eq!(m.format(1_714_564_800_123_999), "1714564800123");
        assert!(matches!(
            m.parse_json("\"soon\""),
            Err(ParseError::NotEpoch {
                unit: "milliseconds",
                ..
            })
        ));
        assert_eq!(
            TimestampFormat::Rfc3339
                .parse_json("\"2024-05-01T12:00:00Z\"")
                .unwrap(),
            1_714_564_800_000_000
        );
    }

    #[test]
    fn errors_name_the_problem_not_the_text() {
        let f = TimestampFormat::EpochSeconds;
        assert!(matches!(
            f.parse_json("9223372036854775807"),
            Err(ParseError::OutOfRange)
        ));
        assert!(matches!(f.parse_str("1e300"), Err(ParseError::OutOfRange)));
        let e = TimestampFormat::Rfc3339
            .parse_json("\"secret-looking 2024\"")
            .unwrap_err();
        assert!(matches!(e, ParseError::NotRfc3339(_)), "{e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn http_date() {
        assert_eq!(
            parse_http_date("Wed, 01 May 2024 12:00:00 GMT"),
            Some(1_714_564_800_000_000)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
