//! Time spans as systemd writes them (`systemd.time(7)`), so a duration in deploy.yml or on
//! the command line reads like the `TimeoutStopSec=` it becomes: `500ms`, `90s`, `2min`,
//! `1min 30s`, `1h`, `1.5s`, or a bare number of seconds.
//!
//! A span is a sequence of `<number>[<unit>]`, spaces allowed between and inside them; the
//! parts add up. A unit is matched the way systemd's `parse_time()` does: the first entry of
//! its table that the rest of the text starts with (`ms` before `m`, `min` before `m`).

use std::time::Duration;

use anyhow::{Result, bail};

/// systemd's unit table, in its order, with each unit's length in microseconds.
const UNITS: &[(&str, u64)] = &[
    ("seconds", SEC),
    ("second", SEC),
    ("sec", SEC),
    ("s", SEC),
    ("minutes", MIN),
    ("minute", MIN),
    ("min", MIN),
    ("months", MONTH),
    ("month", MONTH),
    ("M", MONTH),
    ("msec", 1_000),
    ("ms", 1_000),
    ("m", MIN),
    ("hours", HOUR),
    ("hour", HOUR),
    ("hr", HOUR),
    ("h", HOUR),
    ("days", DAY),
    ("day", DAY),
    ("d", DAY),
    ("weeks", 7 * DAY),
    ("week", 7 * DAY),
    ("w", 7 * DAY),
    ("years", YEAR),
    ("year", YEAR),
    ("y", YEAR),
    ("usec", 1),
    ("us", 1),
    ("µs", 1),
    ("μs", 1),
];
const SEC: u64 = 1_000_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
// systemd's own lengths: a year of 365.25 days, a month of a twelfth of that.
const YEAR: u64 = 31_557_600 * SEC;
const MONTH: u64 = YEAR / 12;

/// Parses a systemd time span; the error shows what to write.
pub fn parse(text: &str) -> Result<Duration> {
    let hint = || {
        format!(
            "'{text}' is not a time span; write e.g. 500ms, 90s, 2min, 1min 30s or 1h (systemd's units: us, ms, s, \
             min, h, d, w)"
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        bail!(hint());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() || number.matches('.').count() > 1 || number == "." {
            bail!(hint());
        }
        let value: f64 = number.parse().map_err(|_| anyhow::anyhow!(hint()))?;
        let after = after.trim_start();
        let (unit, after) = match UNITS.iter().find(|(name, _)| after.starts_with(name)) {
            Some((name, micros)) => (*micros, &after[name.len()..]),
            // A number without a unit counts seconds; anything else after it is a mistake.
            None if after.is_empty() || after.starts_with(|c: char| c.is_ascii_digit()) => (SEC, after),
            None => bail!(hint()),
        };
        total += value * unit as f64;
        rest = after.trim_start();
    }
    Ok(Duration::from_micros(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_systemd_writes() {
        let ok = |t: &str| parse(t).unwrap_or_else(|e| panic!("{t}: {e:#}"));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("1min 30s"), Duration::from_secs(90));
        assert_eq!(ok("1min30s"), Duration::from_secs(90));
        assert_eq!(ok(" 1 h "), Duration::from_secs(3600));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("2 minutes 5 seconds"), Duration::from_secs(125));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("5msec"), Duration::from_millis(5));
        for bad in ["", "fast", "1x", "-5s", "1.2.3s", "s", "1 min and 2 s"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("is not a time span; write e.g. 500ms, 90s, 2min, 1min 30s or 1h"),
                "{bad}: {e}"
            );
        }
    }
}
