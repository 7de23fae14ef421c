//! The query bus (the seed's `QueryBus`): the game's read questions, answered from the event
//! store.
//!
//! Until the processors of the read models exist (user engagement for progress, nutrition
//! analytics for the daily figures), each query rebuilds the user aggregate from the event
//! store's index tables with the command processor's own `apply`, so an answer is exactly what
//! the command processor knows, as of the indexer's position (see [`crate::store`] for how far
//! behind Kafka that may be). `user_progress` starts from the latest snapshot; the nutrition
//! figures read the user's events from version 1, because the aggregate keeps daily water
//! totals for a window of [`DAY_WINDOW`] days only. Both cost one CQL partition read, linear in
//! the user's history: fine for a player's screen, not for analysts (they get the read models).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use dietstream_commands::domain::{
    apply, xp_for_level, Aggregate, ApplyError, DayTotals, GoalSet, Nutrients, State, UserState,
    DAY_WINDOW, STATE_FORMAT,
};
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_schemas::types::{AggregateType, NutritionGoalKind};
use dietstream_schemas::Event;

use crate::store::{EventStore, StoreError};

/// Days since 1970-01-01 of 1970-01-01 counted from 0001-01-01 (chrono's day numbering).
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The event store could not be read. See [`StoreError::is_retryable`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The indexed events do not replay: a gap (the index is being rebuilt, or events were
    /// erased) or an event of another aggregate kind. Retry later; if it persists, rebuild
    /// the index.
    #[error("the events of user {user_id} do not replay: {source}")]
    Replay {
        /// The user.
        user_id: String,
        /// What `apply` said.
        source: ApplyError,
    },
    /// The date range is empty or reversed.
    #[error("invalid date range {from} to {to}: `from` must not be after `to`")]
    Range {
        /// First day asked for.
        from: NaiveDate,
        /// Last day asked for.
        to: NaiveDate,
    },
}

/// A player's progression.
#[derive(Debug, Clone, PartialEq)]
pub struct UserProgress {
    /// The user.
    pub user_id: String,
    /// The aggregate version the answer reflects.
    pub version: i64,
    /// Display name.
    pub display_name: String,
    /// Total XP.
    pub total_xp: i64,
    /// Current level.
    pub level: i32,
    /// Total XP at which the next level starts.
    pub next_level_xp: i64,
    /// Days of the current daily-logging streak (0 without one).
    pub streak_days: i32,
    /// Ids of the unlocked achievements, sorted.
    pub achievements: Vec<String>,
    /// Quests completed.
    pub quests_completed: u64,
    /// Meals logged (deleted ones included).
    pub meals_logged: u64,
    /// Daily goals met.
    pub goals_met: u64,
}

/// One day of a user's nutrition (in the user's time zone).
#[derive(Debug, Clone, PartialEq)]
pub struct DayNutrition {
    /// The day.
    pub date: NaiveDate,
    /// Meals eaten that day and not deleted.
    pub meals: u32,
    /// Their summed nutrients (as last updated).
    pub nutrients: Nutrients,
    /// Water drunk, in millilitres.
    pub water_ml: i64,
    /// The goals in force that day, if any.
    pub goal: Option<GoalSet>,
    /// The goals announced as met for this date (`nutrition.goal.met`), sorted. Their date is
    /// the UTC day the nutrition processor judged, not a day in the user's time zone.
    pub goals_met: Vec<NutritionGoalKind>,
}

/// A user's nutrition over a date range: one entry per day with a meal, water or a met goal.
#[derive(Debug, Clone, PartialEq)]
pub struct NutritionAnalytics {
    /// The user.
    pub user_id: String,
    /// The aggregate version the answer reflects.
    pub version: i64,
    /// The days, ascending.
    pub days: Vec<DayNutrition>,
}

impl NutritionAnalytics {
    /// Mean daily energy over the days listed (0 without days).
    pub fn mean_energy_kcal(&self) -> f64 {
        if self.days.is_empty() {
            return 0.0;
        }
        self.days
            .iter()
            .map(|d| d.nutrients.energy_kcal)
            .sum::<f64>()
            / self.days.len() as f64
    }
}

/// Answers the game's queries. Cheap to share: hold it in an `Arc`.
pub struct QueryBus<R> {
    store: Arc<EventStore<R>>,
}

impl<R: SchemaRegistry> QueryBus<R> {
    /// Queries over `store`.
    pub fn new(store: Arc<EventStore<R>>) -> Self {
        QueryBus { store }
    }

    /// The player's XP, level, streak and achievements; `None` for an unknown user.
    pub async fn user_progress(&self, user_id: &str) -> Result<Option<UserProgress>, QueryError> {
        let mut aggregate = self
            .store
            .snapshot(AggregateType::User, user_id, i64::MAX)
            .await?
            .filter(|s| s.state_format == STATE_FORMAT)
            .and_then(|s| serde_json::from_slice::<Aggregate>(&s.state).ok())
            .unwrap_or_default();
        let events = self
            .store
            .events(
                AggregateType::User,
                user_id,
                aggregate.version + 1,
                i64::MAX,
            )
            .await?;
        replay(user_id, &mut aggregate, &events, |_| {})?;
        let State::User(user) = &aggregate.state else {
            return Ok(None);
        };
        Ok(Some(UserProgress {
            user_id: user_id.to_owned(),
            version: aggregate.version,
            display_name: user.profile.display_name.clone(),
            total_xp: user.total_xp,
            level: user.level,
            next_level_xp: xp_for_level(user.level.saturating_add(1)),
            streak_days: user.streak.as_ref().map_or(0, |s| s.days()),
            achievements: user.achievements.iter().cloned().collect(),
            quests_completed: user.quests_completed,
            meals_logged: user.meals_logged,
            goals_met: user.goals_met.len() as u64,
        }))
    }

    /// The player's daily nutrition from `from` to `to` (both included, days in the user's
    /// time zone), against the goals in force each day. Reflects meal updates and deletions.
    /// An unknown user has no days.
    pub async fn nutrition_analytics(
        &self,
        user_id: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<NutritionAnalytics, QueryError> {
        if from > to {
            return Err(QueryError::Range { from, to });
        }
        let events = self
            .store
            .events(AggregateType::User, user_id, 1, i64::MAX)
            .await?;
        let mut aggregate = Aggregate::default();
        // The aggregate keeps day totals for its last DAY_WINDOW days; each day's last state
        // before it left the window is kept here.
        let mut history: BTreeMap<i32, DayTotals> = BTreeMap::new();
        replay(user_id, &mut aggregate, &events, |user| {
            if let Some(newest) = user.newest_day {
                for (day, totals) in user.days.range(newest - DAY_WINDOW..) {
                    history.insert(*day, totals.clone());
                }
            }
        })?;
        let State::User(user) = &aggregate.state else {
            return Ok(NutritionAnalytics {
                user_id: user_id.to_owned(),
                version: aggregate.version,
                days: Vec::new(),
            });
        };
        let (first, last) = (day_number(from), day_number(to));
        let mut days: BTreeMap<i32, DayNutrition> = BTreeMap::new();
        fn entry<'a>(
            days: &'a mut BTreeMap<i32, DayNutrition>,
            user: &UserState,
            day: i32,
        ) -> &'a mut DayNutrition {
            days.entry(day).or_insert_with(|| DayNutrition {
                date: date_of(day),
                meals: 0,
                nutrients: Nutrients::default(),
                water_ml: 0,
                goal: user.goal_on(day).copied(),
                goals_met: Vec::new(),
            })
        }
        for meal in user.meals.values() {
            if meal.deleted || !(first..=last).contains(&meal.day) {
                continue;
            }
            let d = entry(&mut days, user, meal.day);
            d.meals += 1;
            let n = &mut d.nutrients;
            n.energy_kcal += meal.nutrients.energy_kcal;
            n.protein_g += meal.nutrients.protein_g;
            n.carbohydrate_g += meal.nutrients.carbohydrate_g;
            n.fat_g += meal.nutrients.fat_g;
            n.fibre_g += meal.nutrients.fibre_g;
        }
        for (day, totals) in history.range(first..=last) {
            if totals.water_ml == 0 && !days.contains_key(day) {
                continue;
            }
            entry(&mut days, user, *day).water_ml = totals.water_ml;
        }
        // Sorted by (date, goal), so each day's goals come sorted.
        for (day, goal) in &user.goals_met {
            if (first..=last).contains(day) {
                entry(&mut days, user, *day).goals_met.push(*goal);
            }
        }
        Ok(NutritionAnalytics {
            user_id: user_id.to_owned(),
            version: aggregate.version,
            days: days.into_values().collect(),
        })
    }
}

/// Applies `events` to `aggregate` in order, calling `observe` with the user state after each.
fn replay(
    user_id: &str,
    aggregate: &mut Aggregate,
    events: &[Event],
    mut observe: impl FnMut(&UserState),
) -> Result<(), QueryError> {
    for event in events {
        apply(aggregate, event).map_err(|source| QueryError::Replay {
            user_id: user_id.to_owned(),
            source,
        })?;
        if let State::User(user) = &aggregate.state {
            observe(user);
        }
    }
    Ok(())
}

/// Days since 1970-01-01 of `date`.
pub fn day_number(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// The date `day` days after 1970-01-01 (clamped to chrono's range).
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day.saturating_add(UNIX_EPOCH_DAYS_FROM_CE)).unwrap_or(
        if day < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_count_from_the_unix_epoch_and_round_trip() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
        assert_eq!(day_number(epoch), 0);
        let leap = NaiveDate::from_ymd_opt(2024, 2, 29).expect("a date");
        assert_eq!(day_number(leap), 19_782);
        assert_eq!(
            Some(day_number(leap)),
            crate::simulate::parse_day("2024-02-29")
        );
        for day in [-1, 0, 1, 19_782, 40_000] {
            assert_eq!(day_number(date_of(day)), day);
        }
    }
}
