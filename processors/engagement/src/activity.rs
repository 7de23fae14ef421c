//! One user's active days through one source partition, kept in that user's entity there
//! (`user:<id>` on a user partition, `social:<id>` on a social one), and what they contribute
//! to the partition's partial active-user and cohort counts.
//!
//! The counts across users are [partial rows](dietstream_runtime::projection#partial-rows):
//! an entity reports +1 for a period the first time its user is active in it, and the runtime
//! keeps the sums per source partition. So no entity holds every user of a partition, and
//! each state stays a few dozen bytes however many users there are.

use dietstream_runtime::{Effects, Partial, Row};
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};

use crate::calendar::{cql_date, cql_timestamp, month_of, week_of};
use crate::{ACTIVE_USERS, ACTIVE_USER_DAYS, COHORTS};

/// Days of activity remembered: a month (at most 31 days) that starts up to [`LATE_DAYS`]
/// before the newest day still fits.
const MASK_DAYS: i32 = 64;

/// An activity more than this many days older than the newest day its user was active
/// through the same source partition changes no count: whether it is a new day, week or
/// month for the user is no longer known.
pub(crate) const LATE_DAYS: i32 = 31;

/// One user's recent activity through one source partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ActiveDays {
    /// The newest day this user was active here.
    last_day: i32,
    /// Bit `i` set: active on `last_day - i`. Zero before the first activity.
    mask: u64,
    /// The Monday of the registration week, once `user.registered` was seen here.
    #[serde(default)]
    cohort_week: Option<i32>,
}

/// One activity of one user, as the entity of that user in the source partition sees it.
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

impl ActiveDays {
    fn active(&self, day: i32) -> bool {
        let back = self.last_day - day;
        (0..MASK_DAYS).contains(&back) && self.mask >> back & 1 == 1
    }

    fn active_between(&self, first: i32, last: i32) -> bool {
        (first..=last).any(|day| self.active(day))
    }

    fn mark(&mut self, day: i32) {
        if self.mask == 0 {
            self.last_day = day;
        } else if day > self.last_day {
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

    /// Counts one activity in `partition` into `effects`: the user's row of the day when the
    /// day is new to them, and a +1 for each period (day, week, month, cohort week) that is.
    pub(crate) fn record(
        &mut self,
        activity: &Activity<'_>,
        partition: i32,
        effects: &mut Effects,
    ) {
        let day = activity.day;
        if self.mask != 0 && day < self.last_day - LATE_DAYS {
            return;
        }
        if activity.registers && self.cohort_week.is_none() {
            self.cohort_week = Some(week_of(day));
        }
        let week = week_of(day);
        let (month, month_end) = month_of(day);
        let new_day = !self.active(day);
        let new_week = !self.active_between(week, week + 6);
        let new_month = !self.active_between(month, month_end);
        self.mark(day);

        let source = activity.source;
        let Effects { rows, partials, .. } = effects;
        if new_day {
            partials.push(one_more_user("day", day, source));
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
            partials.push(one_more_user("week", week, source));
        }
        if new_month {
            partials.push(one_more_user("month", month, source));
        }
        if let Some(cohort_week) = self.cohort_week.filter(|w| new_week && week >= *w) {
            partials.push(Partial {
                table: COHORTS.name,
                key: vec![
                    cql_date(cohort_week),
                    CqlValue::Int((week - cohort_week) / 7),
                ],
                deltas: vec![1],
            });
        }
    }
}

/// One more distinct active user in a period, through `source`.
fn one_more_user(period: &str, start: i32, source: &str) -> Partial {
    Partial {
        table: ACTIVE_USERS.name,
        key: vec![
            CqlValue::Text(period.to_owned()),
            cql_date(start),
            CqlValue::Text(source.to_owned()),
        ],
        deltas: vec![1],
    }
}
