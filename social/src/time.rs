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
pub fn format_micros(micros: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000) else {
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
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out
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
