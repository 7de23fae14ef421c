//! One user's nutrition state: the meals, water and goals of the open days, and the day,
//! week and month figures computed from them (never accumulated, so an update or deletion of
//! a meal moves or removes its figures exactly).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, NaiveDate};
use dietstream_runtime::amount::settled;
use dietstream_schemas::types::{
    MealItem, MealType, NutritionGoalKind, NutritionGoalUpdatedPayload,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Microseconds in one UTC day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days from 0001-01-01 (chrono's count) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The UTC day (days since 1970-01-01) of an instant in microseconds since the epoch, or
/// `None` when the instant is not a date chrono can represent.
pub fn utc_day(micros: i64) -> Option<i32> {
    let day = i32::try_from(micros.div_euclid(MICROS_PER_DAY)).ok()?;
    date_of(day).map(|_| day)
}

/// The calendar date of a day number.
pub fn date_of(day: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(day.checked_add(UNIX_EPOCH_DAYS_FROM_CE)?)
}

fn day_of_date(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// The Monday starting the ISO week of `day` (1970-01-01 was a Thursday).
pub fn week_start(day: i32) -> i32 {
    day - (day + 3).rem_euclid(7)
}

/// The first day of the calendar month of `day`.
pub fn month_start(day: i32) -> i32 {
    match date_of(day) {
        Some(date) => day - (date.day0() as i32),
        None => day,
    }
}

/// The last day of the calendar month of `day`.
pub fn month_end(day: i32) -> i32 {
    let Some(date) = date_of(month_start(day)) else {
        return day;
    };
    let next = if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    };
    next.map_or(day, |n| day_of_date(n) - 1)
}

/// Nutrients of a meal or a sum of meals. Fibre, sugar and sodium are null when no food
/// counted had a value (food data may lack them; null is not 0).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Nutrients {
    /// Kilocalories.
    pub energy_kcal: f64,
    /// Grams of protein.
    pub protein_g: f64,
    /// Grams of carbohydrate.
    pub carbohydrate_g: f64,
    /// Grams of fat.
    pub fat_g: f64,
    /// Grams of dietary fibre.
    pub fibre_g: Option<f64>,
    /// Grams of sugars.
    pub sugar_g: Option<f64>,
    /// Milligrams of sodium.
    pub sodium_mg: Option<f64>,
}

fn add_known(sum: Option<f64>, value: Option<f64>) -> Option<f64> {
    match (sum, value) {
        (Some(s), Some(v)) => Some(s + v),
        (s, v) => s.or(v),
    }
}

impl Nutrients {
    /// The sum over the items of one meal.
    pub fn of_items(items: &[MealItem]) -> Nutrients {
        items.iter().fold(Nutrients::default(), |n, i| Nutrients {
            energy_kcal: n.energy_kcal + i.energy_kcal,
            protein_g: n.protein_g + i.protein_g,
            carbohydrate_g: n.carbohydrate_g + i.carbohydrate_g,
            fat_g: n.fat_g + i.fat_g,
            fibre_g: add_known(n.fibre_g, i.fibre_g),
            sugar_g: add_known(n.sugar_g, i.sugar_g),
            sodium_mg: add_known(n.sodium_mg, i.sodium_mg),
        })
    }

    /// Every figure [`settled`]: the same whatever order the meals were added in.
    fn settled(self) -> Nutrients {
        Nutrients {
            energy_kcal: settled(self.energy_kcal),
            protein_g: settled(self.protein_g),
            carbohydrate_g: settled(self.carbohydrate_g),
            fat_g: settled(self.fat_g),
            fibre_g: self.fibre_g.map(settled),
            sugar_g: self.sugar_g.map(settled),
            sodium_mg: self.sodium_mg.map(settled),
        }
    }

    fn add(&mut self, other: &Nutrients) {
        self.energy_kcal += other.energy_kcal;
        self.protein_g += other.protein_g;
        self.carbohydrate_g += other.carbohydrate_g;
        self.fat_g += other.fat_g;
        self.fibre_g = add_known(self.fibre_g, other.fibre_g);
        self.sugar_g = add_known(self.sugar_g, other.sugar_g);
        self.sodium_mg = add_known(self.sodium_mg, other.sodium_mg);
    }
}

/// What the state keeps of a meal: its day, type and nutrients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Meal {
    /// UTC day of `eaten_at` (days since 1970-01-01).
    pub day: i32,
    /// Which meal of the day.
    pub meal_type: MealType,
    /// Sum of its items.
    pub nutrients: Nutrients,
}

/// Meal counts by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MealCounts {
    /// Every meal.
    pub all: i32,
    /// BREAKFAST.
    pub breakfasts: i32,
    /// LUNCH.
    pub lunches: i32,
    /// DINNER.
    pub dinners: i32,
    /// SNACK.
    pub snacks: i32,
    /// A type this schema version does not know (UNKNOWN).
    pub other: i32,
}

impl MealCounts {
    fn count(&mut self, meal_type: MealType) {
        self.all += 1;
        match meal_type {
            MealType::Breakfast => self.breakfasts += 1,
            MealType::Lunch => self.lunches += 1,
            MealType::Dinner => self.dinners += 1,
            MealType::Snack => self.snacks += 1,
            MealType::Unknown => self.other += 1,
        }
    }

    fn add(&mut self, other: &MealCounts) {
        self.all += other.all;
        self.breakfasts += other.breakfasts;
        self.lunches += other.lunches;
        self.dinners += other.dinners;
        self.snacks += other.snacks;
        self.other += other.other;
    }
}

/// Daily targets from a day on (`nutrition.goal.updated`). Energy, protein, fibre and water
/// are minimums (met when the day's total is at least the target; reaching one sends
/// `nutrition.goal.met.record`); carbohydrate and fat are ceilings (met when the total is at
/// most the target).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// First day the targets apply to.
    pub effective_from: i32,
    /// Energy minimum, kcal.
    pub energy_kcal: Option<f64>,
    /// Protein minimum, g.
    pub protein_g: Option<f64>,
    /// Carbohydrate ceiling, g.
    pub carbohydrate_g: Option<f64>,
    /// Fat ceiling, g.
    pub fat_g: Option<f64>,
    /// Fibre minimum, g.
    pub fibre_g: Option<f64>,
    /// Water minimum, ml.
    pub water_ml: Option<i32>,
}

impl Goal {
    /// The goal of a `nutrition.goal.updated` payload.
    pub fn of(p: &NutritionGoalUpdatedPayload) -> Goal {
        Goal {
            effective_from: p.effective_from,
            energy_kcal: p.energy_kcal,
            protein_g: p.protein_g,
            carbohydrate_g: p.carbohydrate_g,
            fat_g: p.fat_g,
            fibre_g: p.fibre_g,
            water_ml: p.water_ml,
        }
    }

    /// Whether a day with these totals meets every target set; `None` when no target is set.
    pub fn met_by(&self, day: &DayFigures) -> Option<bool> {
        let n = &day.nutrients;
        let floor = |target: Option<f64>, total: f64| target.map(|t| total >= t);
        let ceiling = |target: Option<f64>, total: f64| target.map(|t| total <= t);
        let checks = [
            floor(self.energy_kcal, n.energy_kcal),
            floor(self.protein_g, n.protein_g),
            ceiling(self.carbohydrate_g, n.carbohydrate_g),
            ceiling(self.fat_g, n.fat_g),
            floor(self.fibre_g, n.fibre_g.unwrap_or(0.0)),
            floor(self.water_ml.map(f64::from), day.water_ml as f64),
        ];
        checks.into_iter().flatten().reduce(|all, met| all && met)
    }

    /// The minimum targets set (more than 0) that a day with these totals reaches, each with
    /// the target and the day's total, in the order energy, protein, fibre, water.
    pub fn minimums_reached(&self, day: &DayFigures) -> Vec<(NutritionGoalKind, f64, f64)> {
        let n = &day.nutrients;
        [
            (NutritionGoalKind::Energy, self.energy_kcal, n.energy_kcal),
            (NutritionGoalKind::Protein, self.protein_g, n.protein_g),
            (
                NutritionGoalKind::Fibre,
                self.fibre_g,
                n.fibre_g.unwrap_or(0.0),
            ),
            (
                NutritionGoalKind::Water,
                self.water_ml.map(f64::from),
                day.water_ml as f64,
            ),
        ]
        .into_iter()
        .filter_map(|(kind, target, total)| {
            // A target of 0 is met by nothing logged at all: no day "reaches" it.
            target
                .filter(|t| *t > 0.0 && total >= *t)
                .map(|t| (kind, t, total))
        })
        .collect()
    }
}

/// One user-day's figures, computed from the state.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DayFigures {
    /// Sum of the day's meals.
    pub nutrients: Nutrients,
    /// Water drunk, ml.
    pub water_ml: i64,
    /// The day's meals by type.
    pub meals: MealCounts,
}

impl DayFigures {
    /// True when nothing was logged that day (its rows are deleted).
    pub fn is_empty(&self) -> bool {
        self.meals.all == 0 && self.water_ml == 0
    }
}

/// A week's or a month's figures: sums over its logged days.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeriodFigures {
    /// Days with at least one meal or water log.
    pub days_logged: i32,
    /// Sum of the days' figures.
    pub total: DayFigures,
    /// Logged days with a goal in force.
    pub days_with_goal: i32,
    /// Logged days that met their goal.
    pub days_goal_met: i32,
}

/// One user's state (the entity is the user id).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserNutrition {
    /// Newest UTC day a meal or water intake was logged for: the clock of this user's stream.
    pub newest_day: Option<i32>,
    /// Meals of the kept days, by meal id.
    pub meals: BTreeMap<Uuid, Meal>,
    /// Water of the kept days, ml by day.
    pub water_ml: BTreeMap<i32, i64>,
    /// Goals by first day, ascending; the one in force on a day is the last one starting on or
    /// before it.
    pub goals: Vec<Goal>,
    /// The (day, minimum target) pairs of the kept days already reached, for which
    /// `nutrition.goal.met.record` was sent: each is sent once per state history. Absent from
    /// states stored before it existed, then empty (a target reached again is sent again, and
    /// the command processor refuses the repeat).
    #[serde(default)]
    pub goals_sent: BTreeSet<(i32, NutritionGoalKind)>,
}

impl UserNutrition {
    /// First open day: days before it are closed (their rows are final and events for them
    /// change nothing). It is the first day of the month `window_days` before the newest day,
    /// so every month with an open day is kept whole.
    pub fn open_from(&self, window_days: i32) -> Option<i32> {
        self.newest_day
            .map(|newest| month_start(newest.saturating_sub(window_days)))
    }

    /// True when events may still change `day`.
    pub fn is_open(&self, day: i32, window_days: i32) -> bool {
        self.open_from(window_days).is_none_or(|open| day >= open)
    }

    /// Moves the stream's clock to `day` (if later) and drops what no event can change any
    /// more: meals, water and goals of days before the week of the first open day (kept so
    /// that the week of the first open day is whole).
    pub fn advance(&mut self, day: i32, window_days: i32) {
        if self.newest_day.is_some_and(|n| n >= day) {
            return;
        }
        self.newest_day = Some(day);
        let Some(open) = self.open_from(window_days) else {
            return;
        };
        let kept_from = week_start(open);
        self.meals.retain(|_, m| m.day >= kept_from);
        self.water_ml.retain(|d, _| *d >= kept_from);
        self.goals_sent.retain(|(d, _)| *d >= kept_from);
        if let Some(first) = self
            .goals
            .iter()
            .rposition(|g| g.effective_from <= kept_from)
        {
            self.goals.drain(..first);
        }
    }

    /// Sets a goal from its first day on, replacing the goals starting on or after that day.
    pub fn set_goal(&mut self, goal: Goal) {
        self.goals
            .retain(|g| g.effective_from < goal.effective_from);
        self.goals.push(goal);
    }

    /// The goal in force on `day`.
    pub fn goal_on(&self, day: i32) -> Option<&Goal> {
        self.goals.iter().rev().find(|g| g.effective_from <= day)
    }

    /// Whether `day` met its goal; `None` when no goal (or no target) is in force.
    pub fn goal_met(&self, day: i32, figures: &DayFigures) -> Option<bool> {
        self.goal_on(day).and_then(|g| g.met_by(figures))
    }

    /// The figures of one day, [settled](dietstream_runtime::amount) (so a target the meals
    /// reach is reached whatever their order).
    pub fn day(&self, day: i32) -> DayFigures {
        let mut figures = DayFigures {
            water_ml: self.water_ml.get(&day).copied().unwrap_or(0),
            ..DayFigures::default()
        };
        for meal in self.meals.values().filter(|m| m.day == day) {
            figures.nutrients.add(&meal.nutrients);
            figures.meals.count(meal.meal_type);
        }
        figures.nutrients = figures.nutrients.settled();
        figures
    }

    /// The figures of the days `first..=last`, settled like a day's.
    pub fn period(&self, first: i32, last: i32) -> PeriodFigures {
        let mut period = PeriodFigures::default();
        for day in first..=last {
            let figures = self.day(day);
            if figures.is_empty() {
                continue;
            }
            period.days_logged += 1;
            period.total.nutrients.add(&figures.nutrients);
            period.total.water_ml += figures.water_ml;
            period.total.meals.add(&figures.meals);
            if let Some(met) = self.goal_met(day, &figures) {
                period.days_with_goal += 1;
                period.days_goal_met += i32::from(met);
            }
        }
        period.total.nutrients = period.total.nutrients.settled();
        period
    }

    /// Days with a meal or water log, ascending.
    pub fn logged_days(&self) -> Vec<i32> {
        let mut days: Vec<i32> = self.meals.values().map(|m| m.day).collect();
        days.extend(self.water_ml.keys().copied());
        days.sort_unstable();
        days.dedup();
        days
    }
}
