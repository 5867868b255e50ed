//! Calendar dates of UNIX times (UTC) without a date crate: the Beanstalk release names and
//! the lifecycle runner's log timestamps.

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(civil_from_days(20_088), (2024, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        // Every day from 1900 to 2100 follows the one before it.
        let mut prev = civil_from_days(-25_567);
        assert_eq!(prev, (1900, 1, 1));
        for d in -25_566..47_482 {
            let (y, m, day) = civil_from_days(d);
            let next_ok = (y, m, day) == (prev.0, prev.1, prev.2 + 1)
                || (day == 1 && ((y, m) == (prev.0, prev.1 + 1) || (y, m, prev.1) == (prev.0 + 1, 1, 12)));
            assert!(next_ok, "{prev:?} -> {:?}", (y, m, day));
            prev = (y, m, day);
        }
        assert_eq!(prev, (2099, 12, 31));
    }
}
