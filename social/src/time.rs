//! Times: stored as microseconds since the Unix epoch (UTC), shown as ISO-8601 local date-times.
//!
//! The contract's date-time format is `YYYY-MM-DDTHH:MM:SS[.ffffff]` with no zone and trailing zeros
//! of the fraction dropped (what Jackson prints for a `LocalDateTime`). We print UTC wall time, which is
//! what the original printed in its default container time zone.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000).unwrap_or(i64::MAX)
}

/// Formats stored microseconds as `YYYY-MM-DDTHH:MM:SS[.ffffff]` (UTC, no zone, fraction trimmed).
/// Every chat message and alarm carries one, so the digits are written directly rather than
/// through `format!`.
pub fn format_micros(micros: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000) else {
        return String::from("1970-01-01T00:00:00");
    };
    let mut out = String::with_capacity(26);
    let year = t.year();
    if (0..=9999).contains(&year) {
        push_digits(&mut out, u32::try_from(year).unwrap_or(0), 4);
    } else {
        // Outside four digits (not a time this service stores): as `{:04}` writes it.
        out.push_str(&format!("{year:04}"));
    }
    out.push('-');
    push_digits(&mut out, u32::from(u8::from(t.month())), 2);
    out.push('-');
    push_digits(&mut out, u32::from(t.day()), 2);
    out.push('T');
    push_digits(&mut out, u32::from(t.hour()), 2);
    out.push(':');
    push_digits(&mut out, u32::from(t.minute()), 2);
    out.push(':');
    push_digits(&mut out, u32::from(t.second()), 2);
    let mut frac = t.microsecond();
    if frac != 0 {
        let mut width = 6;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        out.push('.');
        push_digits(&mut out, frac, width);
    }
    out
}

/// Appends `v` as exactly `width` decimal digits (zero-padded; `v` must fit).
fn push_digits(out: &mut String, v: u32, width: u32) {
    let mut div = 10u32.pow(width.saturating_sub(1));
    while div > 0 {
        let d = (v / div) % 10;
        out.push(char::from(b'0' + u8::try_from(d).unwrap_or(0)));
        div /= 10;
    }
}

/// Parses a client-sent time: RFC 3339 with a zone (`2025-01-14T01:28:51.123Z`, what the frontend
/// sends), or a zone-less local date-time taken as UTC. Returns microseconds since the epoch.
pub fn parse_client_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000).ok();
    }
    let with_zone = format!("{s}Z");
    OffsetDateTime::parse(&with_zone, &Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000).ok())
}

/// Serialises an `i64` of stored microseconds as the contract's date-time string.
pub fn serialize_micros<S: serde::Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_micros(*micros))
}

/// Like [`serialize_micros`] for an optional time (`null` when absent).
pub fn serialize_opt_micros<S: serde::Serializer>(
    micros: &Option<i64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match micros {
        Some(m) => s.serialize_str(&format_micros(*m)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_jackson_local_date_time() {
        assert_eq!(format_micros(0), "1970-01-01T00:00:00");
        // 2025-01-14T10:28:51.123456Z
        let t = 1_736_850_531_123_456;
        assert_eq!(format_micros(t), "2025-01-14T10:28:51.123456");
        assert_eq!(format_micros(t - 456), "2025-01-14T10:28:51.123");
        assert_eq!(format_micros(t - 123_456), "2025-01-14T10:28:51");
    }

    /// The hand-written digits match `format!` over the whole range the `time` crate takes.
    #[test]
    fn formats_like_format_over_random_times() {
        fn reference(micros: i64) -> String {
            let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            else {
                return String::from("1970-01-01T00:00:00");
            };
            let mut out = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            let frac = t.microsecond();
            if frac != 0 {
                out.push('.');
                out.push_str(format!("{frac:06}").trim_end_matches('0'));
            }
            out
        }
        // A fixed-seed xorshift: the same cases every run, spread over +-10,000 years, plus the
        // edges and every trimmed fraction length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut cases: Vec<i64> = vec![0, -1, 1, i64::MIN, i64::MAX, 253_402_300_799_999_999];
        for digits in 0..7 {
            cases.push(1_736_850_531_000_000 + 10i64.pow(digits));
        }
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let span = 2 * 315_569_520_000_000_000i64;
            cases.push(i64::try_from(x % u64::try_from(span).unwrap()).unwrap() - span / 2);
        }
        for m in cases {
            assert_eq!(format_micros(m), reference(m), "{m}");
        }
    }

    #[test]
    fn parses_what_the_frontend_sends() {
        assert_eq!(
            parse_client_time("2025-01-14T10:28:51.123Z"),
            Some(1_736_850_531_123_000)
        );
        assert_eq!(
            parse_client_time("2025-01-14T10:28:51.123"),
            Some(1_736_850_531_123_000)
        );
        assert_eq!(
            parse_client_time("2025-01-14T19:28:51.123+09:00"),
            Some(1_736_850_531_123_000)
        );
        assert_eq!(parse_client_time("yesterday"), None);
    }
}
