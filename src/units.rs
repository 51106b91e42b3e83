//! Byte sizes, durations and timestamps as people write and read them: `6MiB`, `30s`, RFC 3339.
//! A leaf: it imports no other faasd module, so every layer may use it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A text that is not a size or a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The number part is missing or not a whole number.
    #[error("{text:?} is not a size such as 6MiB")]
    NotASize {
        /// The text given.
        text: String,
    },
    /// The suffix is not one of B, K, KB, KiB, M, MB, MiB, G, GB, GiB.
    #[error(
        "unknown size unit {unit:?} in {text:?}: use a whole number with B, K, M, G, T (×1000) or KiB, MiB, GiB, TiB (×1024)"
    )]
    UnknownUnit {
        /// The suffix given.
        unit: String,
        /// The text given.
        text: String,
    },
    /// The size does not fit in this machine's `usize`.
    #[error("{text:?} is too large")]
    TooLarge {
        /// The text given.
        text: String,
    },
    /// Not a duration such as `30s` or `1m 30s` (the message is the parser's alone, as clap
    /// already names the flag and the value).
    #[error("{reason}")]
    NotADuration {
        /// The text given.
        text: String,
        /// What the duration parser said.
        reason: String,
    },
}

/// Parses a byte size: a number with an optional K, M, G, T (×1000) or KiB, MiB, GiB, TiB (×1024)
/// suffix.
pub fn parse_bytes(text: &str) -> Result<usize, ParseError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| ParseError::NotASize {
        text: text.to_string(),
    })?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        other => {
            return Err(ParseError::UnknownUnit {
                unit: other.to_string(),
                text: text.to_string(),
            });
        }
    };
    n.checked_mul(mult).ok_or_else(|| ParseError::TooLarge {
        text: text.to_string(),
    })
}

/// Parses a duration such as `10` (seconds), `1.5` (seconds), `30s`, `500ms`, `2m` or `1m 30s`:
/// the one duration parser of every command-line flag and every API field.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let t = text.trim();
    let not_a_duration = |reason: String| ParseError::NotADuration {
        text: text.to_string(),
        reason,
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = t
            .parse()
            .map_err(|_| not_a_duration("not a number of seconds".into()))?;
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| not_a_duration("too many seconds".into()));
    }
    humantime::parse_duration(t)
        .map_err(|e| not_a_duration(format!("not a duration such as 10, 10s, 500ms or 2m ({e})")))
}

/// Checks a duration text with [`parse_duration`] and gives it back unchanged (a clap value
/// parser for flags whose text travels on to the server).
pub fn duration_text(text: &str) -> Result<String, ParseError> {
    parse_duration(text).map(|_| text.trim().to_string())
}

/// Formats a duration for people: `1m 30s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Formats Unix milliseconds as RFC 3339 with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_suffixes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("512B"), Ok(512));
        assert_eq!(parse_bytes("6K"), Ok(6_000));
        assert_eq!(parse_bytes("6KB"), Ok(6_000));
        assert_eq!(parse_bytes("6KiB"), Ok(6 << 10));
        assert_eq!(parse_bytes("6MiB"), Ok(6 << 20));
        assert_eq!(parse_bytes("6 MB"), Ok(6_000_000));
        assert_eq!(parse_bytes(" 2GiB "), Ok(2 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        assert_eq!(parse_bytes("2TB"), Ok(2_000_000_000_000));
    }

    #[test]
    fn sizes_refuse_what_they_cannot_read() {
        assert!(matches!(parse_bytes(""), Err(ParseError::NotASize { .. })));
        assert!(matches!(
            parse_bytes("MiB"),
            Err(ParseError::NotASize { .. })
        ));
        assert!(matches!(
            parse_bytes("-1"),
            Err(ParseError::NotASize { .. })
        ));
        assert!(matches!(
            parse_bytes("1.5MiB"),
            Err(ParseError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_bytes("6mib"),
            Err(ParseError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_bytes("99999999999999999999GiB"),
            Err(ParseError::NotASize { .. })
        ));
        assert!(matches!(
            parse_bytes(&format!("{}GiB", usize::MAX / 2)),
            Err(ParseError::TooLarge { .. })
        ));
    }

    #[test]
    fn size_errors_say_what_was_given() {
        let err = parse_bytes("6XB").map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown size unit \"XB\" in \"6XB\": use a whole number with B, K, M, G, T (×1000) or KiB, MiB, GiB, TiB (×1024)"
        );
    }

    #[test]
    fn durations_read_and_print_as_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration_text(" 10 "), Ok("10".to_string()));
        for bad in ["", "soon", "10x", "1.2.3", "."] {
            assert!(
                matches!(parse_duration(bad), Err(ParseError::NotADuration { .. })),
                "{bad:?}"
            );
        }
        let err = parse_duration("10x").map(|_| ()).unwrap_err().to_string();
        assert!(err.starts_with("not a duration such as 10, 10s"), "{err}");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        let before = now_ms();
        assert!(before > 1_700_000_000_000, "the clock reads {before}");
        assert!(now_ms() >= before);
    }
}
