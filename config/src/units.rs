//! Human-readable durations (`500ms`, `40s`, `1m30s`) and sizes (`64KiB`, `1MB`, `4096`).
//!
//! Formatting is the inverse of parsing: `parse_duration(&format_duration(d)) == Ok(d)` and
//! `parse_size(&format_size(n)) == Ok(n)` for every value.

use std::time::Duration;

use crate::error::ParseError;

const DURATION_UNITS: &str = "h, m, s, ms, us or ns";
const WHOLE_NUMBERS: &str =
    "expected whole numbers each followed by a unit, e.g. \"500ms\", \"40s\" or \"1m30s\"";
const SIZE_UNITS: &str = "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB";

/// Parses a duration written as one or more `<integer><unit>` parts, e.g. `500ms`, `40s`,
/// `2m`, `1h` or `1m30s`. Units: `h`, `m`, `s`, `ms`, `us` (or `µs`), `ns`. `0s` is zero.
///
/// A bare number is rejected: `40` could mean seconds or milliseconds, so the unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let invalid = |why: &str| ParseError::new(format!("invalid duration \"{text}\": {why}"));
    let s = text.trim();
    if s.is_empty() {
        return Err(invalid("empty; write e.g. \"40s\""));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(&format!("write a unit, e.g. \"{s}s\"")));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(invalid(WHOLE_NUMBERS));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.len() - rest.trim_start_matches(|c: char| c.is_alphabetic()).len();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let part = match unit {
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(number)),
            "ms" => Some(Duration::from_millis(number)),
            "us" | "µs" => Some(Duration::from_micros(number)),
            "ns" => Some(Duration::from_nanos(number)),
            // "1m30": the last number lacks its unit.
            "" if rest.is_empty() => {
                let why = format!("\"{number}\" has no unit (use {DURATION_UNITS})");
                return Err(invalid(&why));
            }
            // "1.5s", "1 m": something other than a unit follows the number.
            "" => return Err(invalid(WHOLE_NUMBERS)),
            other => {
                let why = format!("unknown unit \"{other}\" (use {DURATION_UNITS})");
                return Err(invalid(&why));
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| invalid("too large"))?;
    }
    Ok(total)
}

/// Formats a duration in the shortest exact form [`parse_duration`] reads back:
/// `0s`, `500ms`, `40s`, `1m30s`, `2h`, `1s250us`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs();
    let nanos = u64::from(d.subsec_nanos());
    let parts = [
        (secs / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
        (nanos / 1_000_000, "ms"),
        (nanos / 1_000 % 1_000, "us"),
        (nanos % 1_000, "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

/// Size units, largest first; binary before decimal of the same magnitude (used by
/// [`format_size`] to pick the most natural exact form).
const SIZES: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses a byte size: a plain integer (bytes) or an integer with a unit, e.g. `512B`,
/// `64KiB`, `1MiB`, `1GiB` (powers of 1024) or `1KB`, `1MB` (powers of 1000). Units are
/// case-insensitive; a space between number and unit is allowed.
pub fn parse_size(text: &str) -> Result<u64, ParseError> {
    let invalid = |why: &str| ParseError::new(format!("invalid size \"{text}\": {why}"));
    let s = text.trim();
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(invalid(
            "expected a whole number of bytes or a number with a unit, e.g. \"1MiB\"",
        ));
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| invalid("number too large"))?;
    let unit = s[digits..].trim();
    let multiplier = if unit.is_empty() {
        1
    } else {
        SIZES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|&(_, m)| m)
            .ok_or_else(|| invalid(&format!("unknown unit \"{unit}\" (use {SIZE_UNITS})")))?
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| invalid("too large"))
}

/// Formats a byte size with the largest unit that divides it exactly: `1MiB`, `64KiB`,
/// `1MB`, `1000B`. `0` is `0B`.
pub fn format_size(bytes: u64) -> String {
    let (unit, multiplier) = SIZES
        .iter()
        .find(|&&(_, m)| bytes != 0 && bytes.is_multiple_of(m))
        .copied()
        .unwrap_or(("B", 1));
    format!("{}{unit}", bytes / multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("40s"), Duration::from_secs(40));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
    }

    #[test]
    fn bad_durations() {
        let err = |s: &str| parse_duration(s).unwrap_err().to_string();
        assert_eq!(
            err("40"),
            r#"invalid duration "40": write a unit, e.g. "40s""#
        );
        assert_eq!(
            err("5x"),
            r#"invalid duration "5x": unknown unit "x" (use h, m, s, ms, us or ns)"#
        );
        assert!(err("").contains("empty"));
        assert!(err("1.5s").contains("whole numbers"));
        assert!(err("s").contains("whole numbers"));
        assert!(err("-1s").contains("whole numbers"));
        assert!(err("99999999999999999999s").contains("too large"));
        assert!(err("9999999999999999999h").contains("too large"));
    }

    #[test]
    fn duration_formats() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn sizes() {
        let ok = |s: &str| parse_size(s).unwrap();
        assert_eq!(ok("1MiB"), 1 << 20);
        assert_eq!(ok("64KiB"), 64 << 10);
        assert_eq!(ok("1GiB"), 1 << 30);
        assert_eq!(ok("1MB"), 1_000_000);
        assert_eq!(ok("1KB"), 1_000);
        assert_eq!(ok("1kb"), 1_000);
        assert_eq!(ok("512B"), 512);
        assert_eq!(ok("4096"), 4096);
        assert_eq!(ok("16 KiB"), 16 << 10);
    }

    #[test]
    fn bad_sizes() {
        let err = |s: &str| parse_size(s).unwrap_err().to_string();
        assert_eq!(
            err("12XB"),
            r#"invalid size "12XB": unknown unit "XB" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"#
        );
        assert!(err("MiB").contains("expected a whole number"));
        assert!(err("-1").contains("expected a whole number"));
        assert!(err("1.5MiB").contains("unknown unit"));
        assert!(err("99999999TiB").contains("too large"));
    }

    #[test]
    fn size_formats() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(16 << 10), "16KiB");
        assert_eq!(format_size(1_000_000), "1MB");
        assert_eq!(format_size(1001), "1001B");
    }

    proptest! {
        #[test]
        fn any_duration_round_trips(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn any_size_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
        }
    }
}
