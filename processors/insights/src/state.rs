//! The state of the two kinds of entity: a user's recent diet (from `diet.events.user`), from
//! which insights are drawn, and a user's coaching record (from `diet.events.ai`), from which
//! the acceptance figures come. Both are keyed by the user id, each within its own topic.

use std::collections::BTreeMap;

use dietstream_nutrition::state::{Goal, Nutrients};
use dietstream_runtime::amount::settled;
use dietstream_schemas::types::InsightKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rules::{
    DayTotals, Rule, Window, HISTORY_DAYS, LATE_FROM_MINUTE, LATE_UNTIL_MINUTE, WINDOW_DAYS,
};

/// Days kept before the newest day: the window and the history of the day it ends on.
pub const KEPT_DAYS: i32 = HISTORY_DAYS + 1;

/// Days (by `period_end`) an insight's kind is remembered for its feedback.
pub const FEEDBACK_DAYS: i32 = 90;

/// Minutes in a day.
const MINUTES_PER_DAY: i64 = 24 * 60;

/// A meal as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Meal {
    /// UTC day of `eaten_at`.
    pub day: i32,
    /// Minute of the UTC day of `eaten_at` (0..1440).
    pub minute: i32,
    /// Sum of its items.
    pub nutrients: Nutrients,
    /// The event that logged or last updated it (evidence).
    pub event_id: Uuid,
}

impl Meal {
    /// The meal eaten at `eaten_at` (µs since the epoch, on `day`).
    pub fn new(day: i32, eaten_at: i64, nutrients: Nutrients, event_id: Uuid) -> Meal {
        let minute = eaten_at.rem_euclid(dietstream_nutrition::state::MICROS_PER_DAY) / 60_000_000;
        Meal {
            day,
            minute: i32::try_from(minute.min(MINUTES_PER_DAY - 1)).unwrap_or_default(),
            nutrients,
            event_id,
        }
    }

    /// Eaten late at night, by the meal's own UTC time (22:00 to 04:00).
    pub fn late(&self) -> bool {
        self.minute >= LATE_FROM_MINUTE || self.minute < LATE_UNTIL_MINUTE
    }
}

/// Water of one day.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Water {
    /// Millilitres drunk.
    pub ml: i64,
    /// The `nutrition.water.logged` events (evidence).
    pub event_ids: Vec<Uuid>,
}

/// One user's recent diet (entity on `diet.events.user`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserDiet {
    /// Newest UTC day a meal or water was logged for: this user's game clock.
    pub newest_day: Option<i32>,
    /// Meals of the kept days, by meal id.
    pub meals: BTreeMap<Uuid, Meal>,
    /// Water of the kept days, by day.
    pub water: BTreeMap<i32, Water>,
    /// Goals by first day, ascending.
    pub goals: Vec<Goal>,
    /// Per rule (its name), the last period an insight was sent for.
    pub last_period: BTreeMap<String, i32>,
}

impl UserDiet {
    /// First day kept, given the newest day.
    pub fn kept_from(&self) -> Option<i32> {
        self.newest_day.map(|n| n.saturating_sub(KEPT_DAYS))
    }

    /// True when events of `day` still count.
    pub fn keeps(&self, day: i32) -> bool {
        self.kept_from().is_none_or(|from| day >= from)
    }

    /// Moves the clock to `day` if later; returns the previous newest day when it moved.
    pub fn advance(&mut self, day: i32) -> Option<i32> {
        let before = self.newest_day;
        if before.is_some_and(|n| n >= day) {
            return None;
        }
        self.newest_day = Some(day);
        before
    }

    /// Drops what fell out of the kept days.
    pub fn prune(&mut self) {
        let Some(from) = self.kept_from() else {
            return;
        };
        self.meals.retain(|_, m| m.day >= from);
        self.water.retain(|d, _| *d >= from);
        if let Some(first) = self.goals.iter().rposition(|g| g.effective_from <= from) {
            self.goals.drain(..first);
        }
    }

    /// Sets a goal from its first day on, replacing the goals starting on or after it.
    pub fn set_goal(&mut self, goal: Goal) {
        self.goals
            .retain(|g| g.effective_from < goal.effective_from);
        self.goals.push(goal);
    }

    /// The totals of one day, [settled](dietstream_runtime::amount).
    pub fn day(&self, day: i32) -> DayTotals {
        let mut totals = DayTotals {
            water_ml: self.water.get(&day).map_or(0, |w| w.ml),
            ..DayTotals::default()
        };
        for meal in self.meals.values().filter(|m| m.day == day) {
            let n = &meal.nutrients;
            totals.energy_kcal += n.energy_kcal;
            totals.protein_g += n.protein_g;
            totals.carbohydrate_g += n.carbohydrate_g;
            totals.fat_g += n.fat_g;
            totals.meals += 1;
            totals.late_meals += u32::from(meal.late());
        }
        // Settled as nutrition's day figures are: a rule's threshold is met or not whatever
        // order the meals are held in.
        for figure in [
            &mut totals.energy_kcal,
            &mut totals.protein_g,
            &mut totals.carbohydrate_g,
            &mut totals.fat_g,
        ] {
            *figure = settled(*figure);
        }
        totals
    }

    /// The window of [`WINDOW_DAYS`] days ending on `end`, with the history before it.
    pub fn window(&self, end: i32) -> Window {
        let days = (end - WINDOW_DAYS + 1..=end)
            .map(|d| self.day(d))
            .collect::<Vec<_>>();
        let history = (end - HISTORY_DAYS..end)
            .map(|d| self.day(d))
            .filter(|t| t.meals > 0)
            .map(|t| t.energy_kcal)
            .collect();
        Window {
            end,
            days,
            goal: self
                .goals
                .iter()
                .rev()
                .find(|g| g.effective_from <= end)
                .copied(),
            history,
        }
    }

    /// Event ids behind an insight of `rule` drawn from the window ending on `end`.
    pub fn evidence(&self, rule: Rule, end: i32) -> Vec<Uuid> {
        let in_window = |d: i32| d > end - WINDOW_DAYS && d <= end;
        let meals = |keep: &dyn Fn(&Meal) -> bool| {
            let mut ids: Vec<Uuid> = self
                .meals
                .values()
                .filter(|m| keep(m))
                .map(|m| m.event_id)
                .collect();
            ids.sort_unstable();
            ids
        };
        match rule {
            Rule::EnergyVsGoal | Rule::ProteinVsGoal | Rule::MacroImbalance => {
                meals(&|m| in_window(m.day))
            }
            Rule::LateNightEating => meals(&|m| in_window(m.day) && m.late()),
            Rule::UnusualDay => meals(&|m| m.day == end),
            Rule::HydrationDeficit => self
                .water
                .range(end - WINDOW_DAYS + 1..=end)
                .flat_map(|(_, w)| w.event_ids.iter().copied())
                .collect(),
        }
    }
}

/// Feedback figures of one insight kind for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Acceptance {
    /// `ai.insight.created` of the kind.
    pub shown: i64,
    /// `ai.feedback.received` about insights of the kind.
    pub feedback: i64,
    /// Feedback that accepted the insight (helpful, or no answer and a rating of 4 or 5).
    pub accepted: i64,
    /// Feedback that rejected it (not helpful, or no answer and a rating of 1 or 2).
    pub rejected: i64,
    /// Sum of the ratings (1 to 5) of that feedback.
    pub rating_sum: i64,
}

impl Acceptance {
    /// Accepted out of accepted and rejected; `None` before any verdict.
    pub fn rate(&self) -> Option<f64> {
        let verdicts = self.accepted + self.rejected;
        (verdicts > 0).then(|| self.accepted as f64 / verdicts as f64)
    }
}

/// An insight the AI aggregate confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    /// Its kind.
    pub kind: InsightKind,
    /// Last day of the period it covers.
    pub period_end: i32,
}

/// One user's coaching record (entity on `diet.events.ai`, the AI aggregate of the user).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Coaching {
    /// Insights created in the last [`FEEDBACK_DAYS`] (by `period_end`), by id.
    pub insights: BTreeMap<Uuid, Confirmed>,
    /// Figures per kind.
    pub acceptance: BTreeMap<InsightKind, Acceptance>,
}

impl Coaching {
    /// Drops insights whose period ended [`FEEDBACK_DAYS`] before the newest one's.
    pub fn prune(&mut self) {
        if let Some(newest) = self.insights.values().map(|i| i.period_end).max() {
            let from = newest.saturating_sub(FEEDBACK_DAYS);
            self.insights.retain(|_, i| i.period_end >= from);
        }
    }
}

/// The state of an entity: a diet on the user topic, a coaching record on the AI topic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InsightsState {
    /// Filled for an entity of `diet.events.user`.
    #[serde(default)]
    pub diet: UserDiet,
    /// Filled for an entity of `diet.events.ai`.
    #[serde(default)]
    pub coaching: Coaching,
}
