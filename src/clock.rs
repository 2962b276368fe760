//! Wall-clock time as herald writes it: unix seconds and milliseconds (records, Redis, signatures) and
//! RFC 3339 (event dates). Durations and deadlines use `Instant`, not these.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};

/// Seconds since the epoch; 0 for a clock set before 1970.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the epoch; 0 for a clock set before 1970.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now in RFC 3339, UTC, to the millisecond (`2026-11-23T10:05:00.123Z`): an event's `date`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_readings_agree() {
        let secs = unix_secs();
        let millis = unix_millis();
        let date = chrono::DateTime::parse_from_rfc3339(&now_rfc3339()).expect("RFC 3339");
        assert!(
            millis / 1000 >= secs && millis / 1000 - secs <= 1,
            "{secs} s, {millis} ms"
        );
        assert!(date.timestamp().abs_diff(secs as i64) <= 1, "{date} vs {secs}");
        assert!(now_rfc3339().ends_with('Z'));
    }
}
