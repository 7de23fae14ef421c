//! UTC calendar arithmetic on days since the Unix epoch: the periods the engagement figures
//! are counted in (day, ISO week starting on Monday, calendar month).

use chrono::{Datelike, NaiveDate};
use scylla::value::{CqlDate, CqlTimestamp, CqlValue};

/// Microseconds in one UTC day.
const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day (days since 1970-01-01) of a timestamp in microseconds since the epoch.
pub(crate) fn day_of(micros: i64) -> i32 {
    i32::try_from(micros.div_euclid(DAY_MICROS)).unwrap_or(i32::MAX)
}

/// The Monday starting the ISO week of `day` (1970-01-01 was a Thursday).
pub(crate) fn week_of(day: i32) -> i32 {
    day - (day + 3).rem_euclid(7)
}

/// The first day of the calendar month of `day`, and its last day.
pub(crate) fn month_of(day: i32) -> (i32, i32) {
    let Some(date) = date_of(day) else {
        return (day, day);
    };
    let first = date.with_day(1).unwrap_or(date);
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    let start = day - (date - first).num_days() as i32;
    let end = next.map_or(day, |n| start + (n - first).num_days() as i32 - 1);
    (start, end)
}

fn date_of(day: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::days(day.into()))
}

/// A day as a CQL `date` (days since the epoch, centred on 2^31).
pub(crate) fn cql_date(day: i32) -> CqlValue {
    CqlValue::Date(CqlDate((i64::from(day) + (1 << 31)) as u32))
}

/// A timestamp in microseconds as a CQL `timestamp` (milliseconds).
pub(crate) fn cql_timestamp(micros: i64) -> CqlValue {
    CqlValue::Timestamp(CqlTimestamp(micros.div_euclid(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        // 2026-11-27 is a Friday: day 20_784.
        let friday = 20_784;
        assert_eq!(date_of(friday), NaiveDate::from_ymd_opt(2026, 11, 27));
        assert_eq!(
            date_of(week_of(friday)),
            NaiveDate::from_ymd_opt(2026, 11, 23)
        );
        assert_eq!(week_of(week_of(friday)), week_of(friday));
        let (start, end) = month_of(friday);
        assert_eq!(date_of(start), NaiveDate::from_ymd_opt(2026, 11, 1));
        assert_eq!(date_of(end), NaiveDate::from_ymd_opt(2026, 11, 30));
        let (start, end) = month_of(day_of(-1));
        assert_eq!(date_of(start), NaiveDate::from_ymd_opt(1969, 12, 1));
        assert_eq!(date_of(end), NaiveDate::from_ymd_opt(1969, 12, 31));
    }
}
