//! The per-user entity `user:<id>` of a `diet.events.user` partition: streak, sessions, last
//! activity, XP and level, and the engagement score of one user, from the user's own events.

use dietstream_commands::domain::xp_for_level;
use dietstream_runtime::Row;
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};

use crate::calendar::{cql_date, cql_timestamp, day_of, week_of};
use crate::{EngagementConfig, SESSIONS, USERS};

/// Days of the window the engagement score looks at, ending on the last active day.
pub(crate) const SCORE_DAYS: i32 = 28;

/// The current session: consecutive activities with one session id and no long gap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    id: Option<String>,
    started_at: i64,
    last_at: i64,
    events: i32,
}

/// One user's engagement state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct UserEngagement {
    registered_at: Option<i64>,
    last_activity_at: Option<i64>,
    /// The newest UTC day with activity.
    last_day: Option<i32>,
    /// Bit `i` set: active on `last_day - i`, for `i < SCORE_DAYS`.
    recent_days: u32,
    active_days_total: i32,
    streak_started_on: i32,
    current_streak: i32,
    longest_streak: i32,
    session: Option<Session>,
    sessions_total: i64,
    xp: i64,
    level: i32,
}

impl Default for UserEngagement {
    fn default() -> Self {
        UserEngagement {
            registered_at: None,
            last_activity_at: None,
            last_day: None,
            recent_days: 0,
            active_days_total: 0,
            streak_started_on: 0,
            current_streak: 0,
            longest_streak: 0,
            session: None,
            sessions_total: 0,
            xp: 0,
            level: 1,
        }
    }
}

/// What changed the user's XP or level.
pub(crate) enum Progress {
    /// `user.xp.awarded`: the new total.
    Total(i64),
    /// `user.achievement.unlocked` and `quest.reward.claimed`: XP added.
    Added(i64),
    /// `user.level.up`: the new level and total.
    Level(i32, i64),
}

impl UserEngagement {
    /// Records one activity of the user at `at` (µs), with the event's session id.
    pub(crate) fn record_activity(
        &mut self,
        user_id: &str,
        at: i64,
        day: i32,
        session_id: Option<&str>,
        registers: bool,
        config: &EngagementConfig,
    ) -> Vec<Row> {
        if registers && self.registered_at.is_none() {
            self.registered_at = Some(at);
        }
        if self.last_activity_at.is_none_or(|last| at > last) {
            self.last_activity_at = Some(at);
        }
        self.mark_day(day);
        let session = self.session_row(user_id, at, session_id, config);
        vec![session, self.user_row(user_id)]
    }

    /// Applies an XP or level change.
    pub(crate) fn progress(&mut self, user_id: &str, progress: Progress) -> Vec<Row> {
        match progress {
            Progress::Total(total) => self.xp = total,
            Progress::Added(xp) => self.xp += xp,
            Progress::Level(level, total) => {
                self.level = level;
                self.xp = total;
            }
        }
        vec![self.user_row(user_id)]
    }

    fn mark_day(&mut self, day: i32) {
        let Some(last) = self.last_day else {
            self.last_day = Some(day);
            self.recent_days = 1;
            self.active_days_total = 1;
            self.streak_started_on = day;
            self.current_streak = 1;
            self.longest_streak = 1;
            return;
        };
        let back = last - day;
        if back >= 0 {
            // The same day, or a late event: the streak runs on the newest day only.
            if back < SCORE_DAYS && self.recent_days >> back & 1 == 0 {
                self.recent_days |= 1 << back;
                self.active_days_total += 1;
            }
            return;
        }
        let ahead = day - last;
        self.recent_days = if ahead >= SCORE_DAYS {
            1
        } else {
            (self.recent_days << ahead | 1) & ((1 << SCORE_DAYS) - 1)
        };
        self.active_days_total += 1;
        self.last_day = Some(day);
        if ahead == 1 {
            self.current_streak += 1;
        } else {
            self.streak_started_on = day;
            self.current_streak = 1;
        }
        self.longest_streak = self.longest_streak.max(self.current_streak);
    }

    fn session_row(
        &mut self,
        user_id: &str,
        at: i64,
        session_id: Option<&str>,
        config: &EngagementConfig,
    ) -> Row {
        let gap = config.session_gap_seconds.saturating_mul(1_000_000);
        let continues = self.session.as_ref().is_some_and(|s| {
            let same_id = match (&s.id, session_id) {
                (Some(current), Some(id)) => current == id,
                _ => true,
            };
            same_id && at - s.last_at <= gap
        });
        let s = match &mut self.session {
            Some(s) if continues => {
                s.events += 1;
                s.last_at = s.last_at.max(at);
                if s.id.is_none() {
                    s.id = session_id.map(str::to_owned);
                }
                s
            }
            _ => {
                self.sessions_total += 1;
                self.session.insert(Session {
                    id: session_id.map(str::to_owned),
                    started_at: at,
                    last_at: at,
                    events: 1,
                })
            }
        };
        Row::upsert(
            SESSIONS.name,
            vec![
                CqlValue::Text(user_id.to_owned()),
                cql_timestamp(s.started_at),
            ],
            vec![
                s.id.clone().map(CqlValue::Text),
                Some(cql_timestamp(s.last_at)),
                Some(CqlValue::Int(s.events)),
                Some(CqlValue::BigInt((s.last_at - s.started_at) / 1_000_000)),
            ],
        )
    }

    /// Active days among the [`SCORE_DAYS`] days ending on the last active day.
    fn active_days_recent(&self) -> i32 {
        self.recent_days.count_ones() as i32
    }

    /// `3 × active days of the last 28 + 2 × min(current streak, 8)`, from 0 to 100, as of
    /// the last active day.
    pub(crate) fn score(&self) -> i32 {
        3 * self.active_days_recent() + 2 * self.current_streak.min(8)
    }

    fn user_row(&self, user_id: &str) -> Row {
        Row::upsert(
            USERS.name,
            vec![CqlValue::Text(user_id.to_owned())],
            vec![
                self.registered_at.map(cql_timestamp),
                self.registered_at.map(|at| cql_date(week_of(day_of(at)))),
                self.last_activity_at.map(cql_timestamp),
                Some(CqlValue::BigInt(self.xp)),
                Some(CqlValue::Int(self.level)),
                Some(CqlValue::BigInt(xp_for_level(self.level.saturating_add(1)))),
                Some(CqlValue::Int(self.current_streak)),
                self.last_day.map(|_| cql_date(self.streak_started_on)),
                Some(CqlValue::Int(self.longest_streak)),
                self.last_day.map(cql_date),
                Some(CqlValue::Int(self.active_days_total)),
                Some(CqlValue::Int(self.active_days_recent())),
                Some(CqlValue::BigInt(self.sessions_total)),
                Some(CqlValue::Int(self.score())),
            ],
        )
    }
}
