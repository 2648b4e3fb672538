//! Timestamps as sources write them, normalised to epoch microseconds, and written back in the
//! source's own format for filters.

use crate::error::ParseError;
use crate::model::Micros;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

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
        self.parse_json_with(raw, None)
    }

    /// [`Self::parse_json`], an RFC 3339 date and time without an offset read at
    /// `naive_offset` (`source.timestamp_offset`); without one, it is [`ParseError::NoOffset`].
    pub fn parse_json_with(
        self,
        raw: &str,
        naive_offset: Option<UtcOffset>,
    ) -> Result<Micros, ParseError> {
        let raw = raw.trim();
        let text = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(raw);
        match self {
            TimestampFormat::Rfc3339 => parse_rfc3339_at(text, naive_offset),
            other => other.parse_str(text),
        }
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

/// Parse RFC 3339, or an RFC 3339 date and time without its offset
/// (`2024-05-01T12:00:00.5`) read at `naive_offset`: without one, [`ParseError::NoOffset`].
/// Any other text is [`ParseError::NotRfc3339`].
pub fn parse_rfc3339_at(s: &str, naive_offset: Option<UtcOffset>) -> Result<Micros, ParseError> {
    let err = match parse_rfc3339(s) {
        Ok(us) => return Ok(us),
        Err(e) => e,
    };
    // Zone-less when the same text with `Z` after it is RFC 3339 (it then reads as UTC).
    let Ok(as_utc) = parse_rfc3339(&format!("{s}Z")) else {
        return Err(err);
    };
    let offset = naive_offset.ok_or(ParseError::NoOffset)?;
    as_utc
        .checked_sub(i64::from(offset.whole_seconds()) * 1_000_000)
        .ok_or(ParseError::OutOfRange)
}

/// A fixed UTC offset as configured (`source.timestamp_offset`): `+HH:MM` or `-HH:MM`, from
/// `-12:00` to `+14:00` (the offsets in use on Earth). `Err` says what is expected.
pub fn parse_offset(s: &str) -> Result<UtcOffset, String> {
    let expected = || format!("{s:?} is not an offset like \"+01:00\" or \"-05:30\"");
    let b = s.as_bytes();
    let sign = match b.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(expected()),
    };
    if b.len() != 6 || b[3] != b':' || ![1, 2, 4, 5].iter().all(|&i| b[i].is_ascii_digit()) {
        return Err(expected());
    }
    let (h, m) = (
        i32::from(b[1] - b'0') * 10 + i32::from(b[2] - b'0'),
        i32::from(b[4] - b'0') * 10 + i32::from(b[5] - b'0'),
    );
    let minutes = sign * (h * 60 + m);
    if m > 59 || !(-12 * 60..=14 * 60).contains(&minutes) {
        return Err(format!(
            "{s:?} is outside -12:00 to +14:00 (hours and minutes up to 59)"
        ));
    }
    UtcOffset::from_whole_seconds(minutes * 60).map_err(|_| expected())
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
    fn zone_less_timestamps_read_at_the_configured_offset_or_not_at_all() {
        let utc = parse_rfc3339("2024-05-01T12:00:00.5Z").unwrap();
        // Without an offset configured: its own error, naming the setting.
        let e = parse_rfc3339_at("2024-05-01T12:00:00.5", None).unwrap_err();
        assert!(matches!(e, ParseError::NoOffset), "{e:?}");
        assert!(e.to_string().contains("source.timestamp_offset"), "{e}");
        // With one: that wall-clock time at that offset.
        let plus_one = parse_offset("+01:00").unwrap();
        assert_eq!(
            parse_rfc3339_at("2024-05-01T13:00:00.5", Some(plus_one)).unwrap(),
            utc
        );
        let minus = parse_offset("-05:30").unwrap();
        assert_eq!(
            parse_rfc3339_at("2024-05-01T06:30:00.5", Some(minus)).unwrap(),
            utc
        );
        // A timestamp with its own offset ignores the configured one.
        assert_eq!(
            parse_rfc3339_at("2024-05-01T12:00:00.5Z", Some(plus_one)).unwrap(),
            utc
        );
        // Text that is no timestamp stays "not RFC 3339", offset or not.
        for bad in ["yesterday", "2024-05-01", "2024-05-01T25:00:00", ""] {
            assert!(
                matches!(
                    parse_rfc3339_at(bad, Some(plus_one)),
                    Err(ParseError::NotRfc3339(_))
                ),
                "{bad}"
            );
        }
        // Through the JSON entry point; epoch formats never read a naive RFC 3339 text.
        let f = TimestampFormat::Rfc3339;
        assert_eq!(
            f.parse_json_with("\"2024-05-01T13:00:00.5\"", Some(plus_one))
                .unwrap(),
            utc
        );
        assert!(matches!(
            f.parse_json_with("\"2024-05-01T13:00:00.5\"", None),
            Err(ParseError::NoOffset)
        ));
        assert!(matches!(
            TimestampFormat::EpochSeconds
                .parse_json_with("\"2024-05-01T13:00:00\"", Some(plus_one)),
            Err(ParseError::NotEpoch { .. })
        ));
    }

    #[test]
    fn offsets_are_checked_when_configured() {
        assert_eq!(parse_offset("+00:00").unwrap(), UtcOffset::UTC);
        assert_eq!(parse_offset("+14:00").unwrap().whole_seconds(), 14 * 3600);
        assert_eq!(parse_offset("-12:00").unwrap().whole_seconds(), -12 * 3600);
        assert_eq!(
            parse_offset("+05:45").unwrap().whole_seconds(),
            5 * 3600 + 45 * 60
        );
        for bad in [
            "",
            "Z",
            "01:00",
            "+1:00",
            "+0100",
            "+01:00:00",
            "+01:60",
            "+14:01",
            "-12:30",
            "+15:00",
            "+ab:cd",
            " +01:00",
        ] {
            assert!(parse_offset(bad).is_err(), "{bad:?}");
        }
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
