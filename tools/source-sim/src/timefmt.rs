//! Timestamp formatting (per run configuration) and parsing (any of the three formats).

use std::fmt::Write as _;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{Granularity, TimestampFormat};

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in Unix microseconds: the range RFC 3339
/// can write with four year digits.
const MIN_RFC3339_US: i64 = -62_135_596_800_000_000;
const MAX_RFC3339_US: i64 = 253_402_300_799_999_999;

/// Formats Unix microseconds `us` as the text of the value (no JSON quotes), after flooring it to
/// `granularity`: `2024-01-01T00:00:00.123456Z`, `1704067200` or `1704067200123`.
///
/// This is also the form to put in a filter parameter (`where[updated_at][gt]=...`).
pub fn format_timestamp(us: i64, format: TimestampFormat, granularity: Granularity) -> String {
    let mut out = String::with_capacity(32);
    write_timestamp_text(&mut out, us, format, granularity);
    out
}

/// Appends the JSON value of a timestamp (quoted for RFC 3339, a bare number for the epochs).
pub(crate) fn write_timestamp_json(
    out: &mut String,
    us: i64,
    format: TimestampFormat,
    granularity: Granularity,
) {
    if format == TimestampFormat::Rfc3339 {
        out.push('"');
        write_timestamp_text(out, us, format, granularity);
        out.push('"');
    } else {
        write_timestamp_text(out, us, format, granularity);
    }
}

fn write_timestamp_text(
    out: &mut String,
    us: i64,
    format: TimestampFormat,
    granularity: Granularity,
) {
    let us = granularity.truncate(us);
    match format {
        TimestampFormat::Rfc3339 => write_rfc3339(out, us, granularity),
        TimestampFormat::EpochSeconds => match granularity {
            Granularity::Seconds => {
                let _ = write!(out, "{}", us / 1_000_000);
            }
            Granularity::Millis => write_decimal(out, us / 1_000, 1_000, 3),
            Granularity::Micros => write_decimal(out, us, 1_000_000, 6),
        },
        TimestampFormat::EpochMillis => match granularity {
            Granularity::Seconds | Granularity::Millis => {
                let _ = write!(out, "{}", us / 1_000);
            }
            Granularity::Micros => write_decimal(out, us, 1_000, 3),
        },
    }
}

/// Writes `value / unit` with `digits` fraction digits, exactly (no float rounding).
fn write_decimal(out: &mut String, value: i64, unit: u64, digits: usize) {
    if value < 0 {
        out.push('-');
    }
    let a = value.unsigned_abs();
    let _ = write!(out, "{}.{:0digits$}", a / unit, a % unit);
}

fn write_rfc3339(out: &mut String, us: i64, granularity: Granularity) {
    write_rfc3339_local(out, us, granularity);
    out.push('Z');
}

/// RFC 3339 without an offset (`2024-01-01T00:00:00.123456`, fraction digits per granularity):
/// the naive timestamp of [`crate::Corruption::NaiveTimestamp`].
pub(crate) fn write_rfc3339_local(out: &mut String, us: i64, granularity: Granularity) {
    let us = granularity.truncate(us);
    let us = us.clamp(MIN_RFC3339_US, MAX_RFC3339_US);
    let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000) else {
        // Unreachable after the clamp; write the epoch rather than panic.
        out.push_str("1970-01-01T00:00:00");
        return;
    };
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    match granularity {
        Granularity::Micros => {
            let _ = write!(out, ".{:06}", dt.microsecond());
        }
        Granularity::Millis => {
            let _ = write!(out, ".{:03}", dt.millisecond());
        }
        Granularity::Seconds => {}
    }
}

/// A parsed instant: the floor in microseconds, and whether a sub-microsecond remainder was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Instant {
    pub floor_us: i64,
    pub inexact: bool,
}

/// Parses a filter value in any format: RFC 3339 with any offset (a `+` decoded to a space by
/// form decoding is tolerated), or a Unix epoch number with an optional decimal fraction.
///
/// An epoch number is read in the unit of `hint` when it is an epoch format; with an RFC 3339
/// run format, numbers of at least 100,000,000,000 are milliseconds and smaller ones seconds.
pub fn parse_timestamp(s: &str, hint: TimestampFormat) -> Option<i64> {
    parse_instant(s, hint).map(|i| i.floor_us)
}

pub(crate) fn parse_instant(s: &str, hint: TimestampFormat) -> Option<Instant> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let body = s.strip_prefix('-').unwrap_or(s);
    if body.starts_with(|c: char| c.is_ascii_digit())
        && body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return parse_epoch(s, hint);
    }
    let dt = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&s.replace(' ', "+"), &Rfc3339))
        .ok()?;
    let nanos = dt.unix_timestamp_nanos();
    let floor_us = i64::try_from(nanos.div_euclid(1_000)).ok()?;
    Some(Instant {
        floor_us,
        inexact: nanos.rem_euclid(1_000) != 0,
    })
}

fn parse_epoch(s: &str, hint: TimestampFormat) -> Option<Instant> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int_part.is_empty() || frac_part.contains('.') {
        return None;
    }
    let int: i64 = int_part.parse().ok()?;
    let unit_digits: usize = match hint {
        TimestampFormat::EpochSeconds => 6,
        TimestampFormat::EpochMillis => 3,
        TimestampFormat::Rfc3339 => {
            if int >= 100_000_000_000 {
                3
            } else {
                6
            }
        }
    };
    let unit: i64 = 10_i64.pow(unit_digits as u32);
    // Fraction digits beyond microseconds are cut (and remembered as a remainder).
    let kept: String = frac_part.chars().take(unit_digits).collect();
    let inexact = frac_part.chars().skip(unit_digits).any(|c| c != '0');
    let frac: i64 = if kept.is_empty() {
        0
    } else {
        let v: i64 = kept.parse().ok()?;
        v * 10_i64.pow((unit_digits - kept.len()) as u32)
    };
    let magnitude = int.checked_mul(unit)?.checked_add(frac)?;
    if neg {
        // -(m + r) with a remainder r in (0, 1) floors to -m - 1.
        let floor = if inexact {
            magnitude.checked_neg()?.checked_sub(1)?
        } else {
            magnitude.checked_neg()?
        };
        Some(Instant {
            floor_us: floor,
            inexact,
        })
    } else {
        Some(Instant {
            floor_us: magnitude,
            inexact,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_704_067_200_123_456; // 2024-01-01T00:00:00.123456Z

    #[test]
    fn rfc3339_fraction_digits_follow_granularity() {
        let f = TimestampFormat::Rfc3339;
        assert_eq!(
            format_timestamp(T, f, Granularity::Micros),
            "2024-01-01T00:00:00.123456Z"
        );
        assert_eq!(
            format_timestamp(T, f, Granularity::Millis),
            "2024-01-01T00:00:00.123Z"
        );
        assert_eq!(
            format_timestamp(T, f, Granularity::Seconds),
            "2024-01-01T00:00:00Z"
        );
    }

    #[test]
    fn epoch_formats_are_exact() {
        use Granularity::*;
        let s = TimestampFormat::EpochSeconds;
        let m = TimestampFormat::EpochMillis;
        assert_eq!(format_timestamp(T, s, Seconds), "1704067200");
        assert_eq!(format_timestamp(T, s, Millis), "1704067200.123");
        assert_eq!(format_timestamp(T, s, Micros), "1704067200.123456");
        assert_eq!(format_timestamp(T, m, Seconds), "1704067200000");
        assert_eq!(format_timestamp(T, m, Millis), "1704067200123");
        assert_eq!(format_timestamp(T, m, Micros), "1704067200123.456");
        assert_eq!(format_timestamp(-1_500_000, s, Micros), "-1.500000");
    }

    #[test]
    fn json_value_quotes_only_rfc3339() {
        let mut out = String::new();
        write_timestamp_json(&mut out, T, TimestampFormat::Rfc3339, Granularity::Seconds);
        assert_eq!(out, "\"2024-01-01T00:00:00Z\"");
        out.clear();
        write_timestamp_json(
            &mut out,
            T,
            TimestampFormat::EpochMillis,
            Granularity::Millis,
        );
        assert_eq!(out, "1704067200123");
    }

    #[test]
    fn parses_every_format_back() {
        use TimestampFormat::*;
        for g in [
            Granularity::Micros,
            Granularity::Millis,
            Granularity::Seconds,
        ] {
            for f in [Rfc3339, EpochSeconds, EpochMillis] {
                let text = format_timestamp(T, f, g);
                assert_eq!(parse_timestamp(&text, f), Some(g.truncate(T)), "{text}");
            }
        }
    }

    #[test]
    fn parses_offsets_and_form_decoded_plus() {
        let h = TimestampFormat::Rfc3339;
        let want = Some(1_704_067_200_000_000);
        assert_eq!(parse_timestamp("2024-01-01T02:00:00+02:00", h), want);
        assert_eq!(parse_timestamp("2024-01-01T02:00:00 02:00", h), want);
        assert_eq!(parse_timestamp("2023-12-31T19:00:00-05:00", h), want);
    }

    #[test]
    fn epoch_numbers_use_hint_or_magnitude() {
        use TimestampFormat::*;
        assert_eq!(
            parse_timestamp("1704067200", Rfc3339),
            Some(1_704_067_200_000_000)
        );
        assert_eq!(
            parse_timestamp("1704067200000", Rfc3339),
            Some(1_704_067_200_000_000)
        );
        assert_eq!(parse_timestamp("5", EpochMillis), Some(5_000));
        assert_eq!(parse_timestamp("5", EpochSeconds), Some(5_000_000));
        assert_eq!(parse_timestamp("1.5", EpochSeconds), Some(1_500_000));
    }

    #[test]
    fn sub_microsecond_remainders_floor() {
        let i = parse_instant("2024-01-01T00:00:00.0000015Z", TimestampFormat::Rfc3339).unwrap();
        assert_eq!(i.floor_us, 1_704_067_200_000_001);
        assert!(i.inexact);
        let i = parse_instant("-0.0000005", TimestampFormat::EpochSeconds).unwrap();
        assert_eq!(i.floor_us, -1);
        assert!(i.inexact);
    }

    #[test]
    fn rejects_garbage() {
        use TimestampFormat::*;
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "1.2.3",
            "-",
            "12abc",
            "99999999999999999999",
        ] {
            assert_eq!(parse_timestamp(bad, Rfc3339), None, "{bad:?}");
        }
    }
}
