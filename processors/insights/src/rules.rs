//! The insight rules, pure: each looks at a window of seven UTC days (and, for unusual days,
//! the days before it) and may find something worth telling the user, with a confidence and
//! an explanation that gives the numbers. Thresholds are constants here and in the README.

use dietstream_nutrition::state::{date_of, week_start, Goal};
use dietstream_schemas::types::InsightKind;

/// Days of the window the averages cover.
pub const WINDOW_DAYS: i32 = 7;
/// Days before the window's last day whose energy is the history of the unusual-day rule.
pub const HISTORY_DAYS: i32 = 28;
/// Days with a meal (or, for hydration, with any log) the window needs before a rule speaks.
pub const MIN_LOGGED_DAYS: usize = 4;
/// Relative distance of the average energy from the goal that is worth an insight.
pub const ENERGY_DEVIATION: f64 = 0.15;
/// Relative shortfall of the average protein below the goal that is worth an insight.
pub const PROTEIN_SHORTFALL: f64 = 0.20;
/// Relative shortfall of the average water below the target that is worth an insight.
pub const WATER_SHORTFALL: f64 = 0.25;
/// Water target when the goal sets none, ml a day.
pub const DEFAULT_WATER_ML: f64 = 2000.0;
/// Healthy shares of energy from protein, carbohydrate and fat (acceptable ranges).
pub const MACRO_RANGES: [(&str, f64, f64); 3] = [
    ("protein", 0.10, 0.35),
    ("carbohydrate", 0.45, 0.65),
    ("fat", 0.20, 0.35),
];
/// How far (in share of energy) outside its range a macro must be to be worth an insight.
pub const MACRO_MARGIN: f64 = 0.05;
/// Meals eaten from this minute of the UTC day on are late (22:00)…
pub const LATE_FROM_MINUTE: i32 = 22 * 60;
/// …and up to this one (04:00).
pub const LATE_UNTIL_MINUTE: i32 = 4 * 60;
/// Late meals in the window worth an insight, at least.
pub const MIN_LATE_MEALS: u32 = 3;
/// Share of the window's meals that must be late.
pub const LATE_SHARE: f64 = 0.25;
/// Days of history with a meal the unusual-day rule needs.
pub const MIN_HISTORY_DAYS: usize = 7;
/// Robust z-score beyond which a day is unusual.
pub const Z_THRESHOLD: f64 = 3.5;
/// Scales the MAD to the standard deviation of a normal distribution (Iglewicz and Hoaglin).
const MAD_SCALE: f64 = 0.6745;

/// One rule; each maps to its own [`InsightKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// Seven-day average energy against the goal.
    EnergyVsGoal,
    /// Seven-day average protein below the goal.
    ProteinVsGoal,
    /// Seven-day average water below the goal (or 2 litres).
    HydrationDeficit,
    /// Share of energy from a macronutrient out of its range over the window.
    MacroImbalance,
    /// Many meals eaten late at night in the window.
    LateNightEating,
    /// A day whose energy is far from the user's usual, by a robust z-score.
    UnusualDay,
}

impl Rule {
    /// Every rule, in the order they are evaluated.
    pub const ALL: [Rule; 6] = [
        Rule::EnergyVsGoal,
        Rule::ProteinVsGoal,
        Rule::HydrationDeficit,
        Rule::MacroImbalance,
        Rule::LateNightEating,
        Rule::UnusualDay,
    ];

    /// The rule's name (the `rule` column).
    pub fn name(self) -> &'static str {
        match self {
            Rule::EnergyVsGoal => "energy_vs_goal",
            Rule::ProteinVsGoal => "protein_vs_goal",
            Rule::HydrationDeficit => "hydration_deficit",
            Rule::MacroImbalance => "macro_imbalance",
            Rule::LateNightEating => "late_night_eating",
            Rule::UnusualDay => "unusual_day",
        }
    }

    /// The insight kind of the schema it is sent as.
    pub fn kind(self) -> InsightKind {
        match self {
            Rule::EnergyVsGoal => InsightKind::GoalProgress,
            Rule::ProteinVsGoal => InsightKind::NutrientGap,
            Rule::HydrationDeficit => InsightKind::Hydration,
            Rule::MacroImbalance => InsightKind::NutrientExcess,
            Rule::LateNightEating => InsightKind::MealTiming,
            Rule::UnusualDay => InsightKind::HabitPattern,
        }
    }

    /// The period of a finding on the window ending on `end`, by its first day: at most one
    /// insight per rule and period. The ISO week of `end`, or the day itself for unusual days.
    pub fn period(self, end: i32) -> i32 {
        match self {
            Rule::UnusualDay => end,
            _ => week_start(end),
        }
    }

    /// First day of the data a finding on the window ending on `end` was drawn from.
    pub fn data_start(self, end: i32) -> i32 {
        match self {
            Rule::UnusualDay => end,
            _ => end - WINDOW_DAYS + 1,
        }
    }
}

/// The name of an insight kind as the schema spells it (the `insight_kind` column).
pub fn kind_name(kind: InsightKind) -> &'static str {
    match kind {
        InsightKind::Unknown => "UNKNOWN",
        InsightKind::NutrientGap => "NUTRIENT_GAP",
        InsightKind::NutrientExcess => "NUTRIENT_EXCESS",
        InsightKind::Hydration => "HYDRATION",
        InsightKind::MealTiming => "MEAL_TIMING",
        InsightKind::StreakRisk => "STREAK_RISK",
        InsightKind::GoalProgress => "GOAL_PROGRESS",
        InsightKind::HabitPattern => "HABIT_PATTERN",
    }
}

/// One day's totals.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DayTotals {
    /// kcal of its meals.
    pub energy_kcal: f64,
    /// Grams of protein.
    pub protein_g: f64,
    /// Grams of carbohydrate.
    pub carbohydrate_g: f64,
    /// Grams of fat.
    pub fat_g: f64,
    /// Millilitres of water.
    pub water_ml: i64,
    /// Meals.
    pub meals: u32,
    /// Meals eaten late (see [`LATE_FROM_MINUTE`]).
    pub late_meals: u32,
}

/// What the rules look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Last day of the window.
    pub end: i32,
    /// The window's days, oldest first ([`WINDOW_DAYS`] of them, empty days included).
    pub days: Vec<DayTotals>,
    /// The goal in force on the last day.
    pub goal: Option<Goal>,
    /// Energy of each day with a meal among the [`HISTORY_DAYS`] before the last day.
    pub history: Vec<f64>,
}

/// An insight found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The rule that found it.
    pub rule: Rule,
    /// 0..1, from the amount of evidence and how far past the threshold it is.
    pub confidence: f64,
    /// Headline.
    pub title: String,
    /// The explanation, with the numbers.
    pub explanation: String,
    /// The numbers, by name.
    pub figures: Vec<(&'static str, f64)>,
}

/// `coverage` (share of the evidence a rule could have) times a half plus half the
/// `strength` (how far past its threshold, 0..1), to two decimals.
pub fn confidence(coverage: f64, strength: f64) -> f64 {
    let c = coverage.clamp(0.0, 1.0) * (0.5 + 0.5 * strength.clamp(0.0, 1.0));
    (c * 100.0).round() / 100.0
}

/// The calendar date of a day, for explanations.
pub fn date(day: i32) -> String {
    date_of(day).map_or_else(|| day.to_string(), |d| d.to_string())
}

/// Median of values (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Robust z-score of `value` against `history` (median and median absolute deviation);
/// `None` when the history is empty or its MAD is 0.
pub fn robust_z(value: f64, history: &[f64]) -> Option<f64> {
    let med = median(history)?;
    let deviations: Vec<f64> = history.iter().map(|v| (v - med).abs()).collect();
    let mad = median(&deviations)?;
    (mad > 0.0).then(|| MAD_SCALE * (value - med) / mad)
}

impl Window {
    fn meal_days(&self) -> impl Iterator<Item = &DayTotals> {
        self.days.iter().filter(|d| d.meals > 0)
    }

    fn span(&self) -> String {
        format!(
            "the {WINDOW_DAYS} days {} to {}",
            date(self.end - WINDOW_DAYS + 1),
            date(self.end)
        )
    }

    /// Days with a meal, and the per-day average of `figure` over them.
    fn meal_average(&self, figure: impl Fn(&DayTotals) -> f64) -> Option<(usize, f64)> {
        let days: Vec<&DayTotals> = self.meal_days().collect();
        (days.len() >= MIN_LOGGED_DAYS).then(|| {
            let sum: f64 = days.iter().map(|d| figure(d)).sum();
            (days.len(), sum / days.len() as f64)
        })
    }

    fn coverage(days: usize) -> f64 {
        days as f64 / f64::from(WINDOW_DAYS)
    }
}

fn energy_vs_goal(w: &Window) -> Option<Finding> {
    let goal = w.goal?.energy_kcal.filter(|g| *g > 0.0)?;
    let (days, avg) = w.meal_average(|d| d.energy_kcal)?;
    let deviation = (avg - goal) / goal;
    if deviation.abs() < ENERGY_DEVIATION {
        return None;
    }
    let (title, side) = if deviation < 0.0 {
        ("Eating less than your energy goal", "below")
    } else {
        ("Eating more than your energy goal", "above")
    };
    Some(Finding {
        rule: Rule::EnergyVsGoal,
        confidence: confidence(
            Window::coverage(days),
            (deviation.abs() - ENERGY_DEVIATION) / 0.35,
        ),
        title: title.to_owned(),
        explanation: format!(
            "Over {} you logged meals on {days} days and ate {avg:.0} kcal a day on average, \
             {:.0}% {side} your goal of {goal:.0} kcal.",
            w.span(),
            deviation.abs() * 100.0
        ),
        figures: vec![
            ("average_energy_kcal", avg),
            ("goal_energy_kcal", goal),
            ("deviation", deviation),
            ("days_logged", days as f64),
        ],
    })
}

fn protein_vs_goal(w: &Window) -> Option<Finding> {
    let goal = w.goal?.protein_g.filter(|g| *g > 0.0)?;
    let (days, avg) = w.meal_average(|d| d.protein_g)?;
    // (goal − average) / goal, not 1 − average / goal: the latter rounds an exact 20% (72 g of
    // 90 g) to just under 0.2, and "at least 20% short" would not fire.
    let shortfall = (goal - avg) / goal;
    if shortfall < PROTEIN_SHORTFALL {
        return None;
    }
    Some(Finding {
        rule: Rule::ProteinVsGoal,
        confidence: confidence(
            Window::coverage(days),
            (shortfall - PROTEIN_SHORTFALL) / 0.4,
        ),
        title: "Not enough protein".to_owned(),
        explanation: format!(
            "Over {} you logged meals on {days} days with {avg:.0} g of protein a day on \
             average, {:.0}% short of your goal of {goal:.0} g.",
            w.span(),
            shortfall * 100.0
        ),
        figures: vec![
            ("average_protein_g", avg),
            ("goal_protein_g", goal),
            ("shortfall", shortfall),
            ("days_logged", days as f64),
        ],
    })
}

fn hydration_deficit(w: &Window) -> Option<Finding> {
    let active: Vec<&DayTotals> = w
        .days
        .iter()
        .filter(|d| d.meals > 0 || d.water_ml > 0)
        .collect();
    let water_days = w.days.iter().filter(|d| d.water_ml > 0).count();
    if active.len() < MIN_LOGGED_DAYS || water_days == 0 {
        return None;
    }
    let target = w
        .goal
        .and_then(|g| g.water_ml)
        .filter(|t| *t > 0)
        .map_or(DEFAULT_WATER_ML, f64::from);
    let avg = active.iter().map(|d| d.water_ml as f64).sum::<f64>() / active.len() as f64;
    // As for protein: the shortfall's exact value decides at the threshold.
    let shortfall = (target - avg) / target;
    if shortfall < WATER_SHORTFALL {
        return None;
    }
    Some(Finding {
        rule: Rule::HydrationDeficit,
        confidence: confidence(
            Window::coverage(active.len()),
            (shortfall - WATER_SHORTFALL) / 0.5,
        ),
        title: "Drinking too little water".to_owned(),
        explanation: format!(
            "Over {} you drank {avg:.0} ml a day on average on the {} days you logged \
             anything (water on {water_days}), {:.0}% short of your target of {target:.0} ml.",
            w.span(),
            active.len(),
            shortfall * 100.0
        ),
        figures: vec![
            ("average_water_ml", avg),
            ("target_water_ml", target),
            ("shortfall", shortfall),
            ("days_logged", active.len() as f64),
            ("days_with_water", water_days as f64),
        ],
    })
}

fn macro_imbalance(w: &Window) -> Option<Finding> {
    let days = w.meal_days().count();
    if days < MIN_LOGGED_DAYS {
        return None;
    }
    let grams = |f: fn(&DayTotals) -> f64| w.days.iter().map(f).sum::<f64>();
    let kcal = [
        4.0 * grams(|d| d.protein_g),
        4.0 * grams(|d| d.carbohydrate_g),
        9.0 * grams(|d| d.fat_g),
    ];
    let total: f64 = kcal.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let shares = kcal.map(|k| k / total);
    let mut worst: Option<(usize, f64)> = None;
    for (i, (share, (_, low, high))) in shares.iter().zip(MACRO_RANGES).enumerate() {
        let outside = (low - share).max(share - high);
        if outside >= MACRO_MARGIN && worst.is_none_or(|(_, w)| outside > w) {
            worst = Some((i, outside));
        }
    }
    let (i, outside) = worst?;
    let (name, low, high) = MACRO_RANGES[i];
    let side = if shares[i] > high { "above" } else { "below" };
    Some(Finding {
        rule: Rule::MacroImbalance,
        confidence: confidence(Window::coverage(days), (outside - MACRO_MARGIN) / 0.15),
        title: format!(
            "Too {} {name}",
            if side == "above" { "much" } else { "little" }
        ),
        explanation: format!(
            "Over {} ({days} days with meals) {:.0}% of your energy from macronutrients came \
             from protein, {:.0}% from carbohydrate and {:.0}% from fat; {name} is {side} the \
             healthy range of {:.0}-{:.0}%.",
            w.span(),
            shares[0] * 100.0,
            shares[1] * 100.0,
            shares[2] * 100.0,
            low * 100.0,
            high * 100.0
        ),
        figures: vec![
            ("protein_share", shares[0]),
            ("carbohydrate_share", shares[1]),
            ("fat_share", shares[2]),
            ("days_logged", days as f64),
        ],
    })
}

fn late_night_eating(w: &Window) -> Option<Finding> {
    let days = w.meal_days().count();
    let meals: u32 = w.days.iter().map(|d| d.meals).sum();
    let late: u32 = w.days.iter().map(|d| d.late_meals).sum();
    if days < MIN_LOGGED_DAYS || late < MIN_LATE_MEALS {
        return None;
    }
    let share = f64::from(late) / f64::from(meals);
    if share < LATE_SHARE {
        return None;
    }
    let late_days = w.days.iter().filter(|d| d.late_meals > 0).count();
    Some(Finding {
        rule: Rule::LateNightEating,
        confidence: confidence(Window::coverage(days), (share - LATE_SHARE) / 0.5),
        title: "Eating late at night".to_owned(),
        explanation: format!(
            "Over {} you ate {late} of your {meals} meals between 22:00 and 04:00 (UTC), on \
             {late_days} different days: {:.0}% of your meals.",
            w.span(),
            share * 100.0
        ),
        figures: vec![
            ("late_meals", f64::from(late)),
            ("meals", f64::from(meals)),
            ("late_share", share),
            ("days_logged", days as f64),
        ],
    })
}

fn unusual_day(w: &Window) -> Option<Finding> {
    let day = w.days.last().filter(|d| d.meals > 0)?;
    if w.history.len() < MIN_HISTORY_DAYS {
        return None;
    }
    let z = robust_z(day.energy_kcal, &w.history)?;
    if z.abs() <= Z_THRESHOLD {
        return None;
    }
    let usual = median(&w.history)?;
    let side = if z > 0.0 { "more" } else { "less" };
    Some(Finding {
        rule: Rule::UnusualDay,
        confidence: confidence(
            w.history.len() as f64 / 14.0,
            (z.abs() - Z_THRESHOLD) / Z_THRESHOLD,
        ),
        title: format!("An unusual day: much {side} energy than usual"),
        explanation: format!(
            "On {} you ate {:.0} kcal; on the {} days with meals before it (up to {HISTORY_DAYS} \
             days back) your median was {usual:.0} kcal. Its robust z-score is {z:.1} (unusual \
             beyond {Z_THRESHOLD}).",
            date(w.end),
            day.energy_kcal,
            w.history.len()
        ),
        figures: vec![
            ("energy_kcal", day.energy_kcal),
            ("median_energy_kcal", usual),
            ("robust_z", z),
            ("history_days", w.history.len() as f64),
        ],
    })
}

/// Everything the rules find in the window, in [`Rule::ALL`] order.
pub fn evaluate(w: &Window) -> Vec<Finding> {
    Rule::ALL
        .iter()
        .filter_map(|rule| match rule {
            Rule::EnergyVsGoal => energy_vs_goal(w),
            Rule::ProteinVsGoal => protein_vs_goal(w),
            Rule::HydrationDeficit => hydration_deficit(w),
            Rule::MacroImbalance => macro_imbalance(w),
            Rule::LateNightEating => late_night_eating(w),
            Rule::UnusualDay => unusual_day(w),
        })
        .collect()
}
