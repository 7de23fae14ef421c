//! The per-partition entity `activity`: which users were active on which recent days in one
//! source partition, and the partial active-user and cohort counts of that partition.

use std::collections::BTreeMap;

use dietstream_runtime::Row;
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};

use crate::calendar::{cql_date, cql_timestamp, month_of, week_of};
use crate::{ACTIVE_USERS, ACTIVE_USER_DAYS, COHORTS};

/// Days of activity remembered per user: a month (at most 31 days) that starts up to
/// [`LATE_DAYS`] before the newest day still fits.
const MASK_DAYS: i32 = 64;

/// An activity event more than this many days older than the newest day seen in its partition
/// changes no count (its period may already be pruned).
pub(crate) const LATE_DAYS: i32 = 31;

/// One user's recent activity in this partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct UserDays {
    /// The newest day this user was active here.
    last_day: i32,
    /// Bit `i` set: active on `last_day - i`.
    mask: u64,
    /// The Monday of the registration week, for users registered through this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cohort_week: Option<i32>,
}

impl UserDays {
    fn active(&self, day: i32) -> bool {
        let back = self.last_day - day;
        (0..MASK_DAYS).contains(&back) && self.mask >> back & 1 == 1
    }

    fn active_between(&self, first: i32, last: i32) -> bool {
        (first..=last).any(|day| self.active(day))
    }

    fn mark(&mut self, day: i32) {
        if day > self.last_day {
            let shift = day - self.last_day;
            self.mask = if shift >= MASK_DAYS {
                0
            } else {
                self.mask << shift
            };
            self.last_day = day;
        }
        self.mask |= 1 << (self.last_day - day);
    }
}

/// What the partition entity keeps: recent days per user and the partial counts that can
/// still change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartitionActivity {
    /// The newest activity day seen in this partition.
    newest_day: Option<i32>,
    users: BTreeMap<String, UserDays>,
    /// Distinct active users per day, week (Monday) and month (first day), in this partition.
    daily: BTreeMap<i32, i64>,
    weekly: BTreeMap<i32, i64>,
    monthly: BTreeMap<i32, i64>,
    /// Registration week -> weeks since -> distinct users of that cohort active that week.
    cohorts: BTreeMap<i32, BTreeMap<i32, i64>>,
}

/// One activity of one user, as the partition entity sees it.
pub(crate) struct Activity<'a> {
    /// The active user.
    pub(crate) user_id: &'a str,
    /// `user` or `social`: which topic the activity came from.
    pub(crate) source: &'static str,
    /// When it happened (µs since the epoch).
    pub(crate) at: i64,
    /// Its UTC day.
    pub(crate) day: i32,
    /// True for `user.registered`: the user joins the cohort of this week.
    pub(crate) registers: bool,
}

impl PartitionActivity {
    /// Counts one activity; returns the rows whose values changed.
    pub(crate) fn record(&mut self, activity: &Activity<'_>, partition: i32) -> Vec<Row> {
        let day = activity.day;
        let newest = self.newest_day.map_or(day, |n| n.max(day));
        if day < newest - LATE_DAYS {
            return Vec::new();
        }
        self.newest_day = Some(newest);
        let user = self.users.entry(activity.user_id.to_owned()).or_default();
        if user.mask == 0 {
            user.last_day = day;
        }
        if activity.registers && user.cohort_week.is_none() {
            user.cohort_week = Some(week_of(day));
        }
        let week = week_of(day);
        let (month, month_end) = month_of(day);
        let new_day = !user.active(day);
        let new_week = !user.active_between(week, week + 6);
        let new_month = !user.active_between(month, month_end);
        user.mark(day);
        let cohort = user.cohort_week.filter(|w| new_week && week >= *w);

        let mut rows = Vec::new();
        let source = activity.source;
        if new_day {
            rows.push(bump(&mut self.daily, "day", day, source, partition));
            rows.push(Row::upsert(
                ACTIVE_USER_DAYS.name,
                vec![
                    cql_date(day),
                    CqlValue::Text(activity.user_id.to_owned()),
                    CqlValue::Text(source.to_owned()),
                    CqlValue::Int(partition),
                ],
                vec![Some(cql_timestamp(activity.at))],
            ));
        }
        if new_week {
            rows.push(bump(&mut self.weekly, "week", week, source, partition));
        }
        if new_month {
            rows.push(bump(&mut self.monthly, "month", month, source, partition));
        }
        if let Some(cohort_week) = cohort {
            let offset = (week - cohort_week) / 7;
            let count = self
                .cohorts
                .entry(cohort_week)
                .or_default()
                .entry(offset)
                .or_default();
            *count += 1;
            rows.push(Row::upsert(
                COHORTS.name,
                vec![
                    cql_date(cohort_week),
                    CqlValue::Int(offset),
                    CqlValue::Int(partition),
                ],
                vec![Some(CqlValue::BigInt(*count))],
            ));
        }
        self.prune(newest);
        rows
    }

    /// Drops what no accepted event can change any more: periods that start before the
    /// oldest day still counted, and unregistered users idle longer than the mask.
    fn prune(&mut self, newest: i32) {
        let oldest_start = month_of(newest - LATE_DAYS)
            .0
            .min(week_of(newest - LATE_DAYS));
        for counts in [&mut self.daily, &mut self.weekly, &mut self.monthly] {
            *counts = counts.split_off(&oldest_start);
        }
        self.users
            .retain(|_, u| u.cohort_week.is_some() || u.last_day > newest - MASK_DAYS);
    }
}

fn bump(
    counts: &mut BTreeMap<i32, i64>,
    period: &str,
    start: i32,
    source: &str,
    partition: i32,
) -> Row {
    let count = counts.entry(start).or_default();
    *count += 1;
    Row::upsert(
        ACTIVE_USERS.name,
        vec![
            CqlValue::Text(period.to_owned()),
            cql_date(start),
            CqlValue::Text(source.to_owned()),
            CqlValue::Int(partition),
        ],
        vec![Some(CqlValue::BigInt(*count))],
    )
}
