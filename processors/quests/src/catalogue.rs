//! The quests this processor runs, as data: what each measures, its target, the period one
//! instance covers and the XP its reward is worth.

use dietstream_schemas::types::{QuestKind, QuestUnit};

/// What a quest measures, computed by the processor from the user's events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Meals logged (and not deleted) whose `eaten_at` falls in the period.
    MealsLogged,
    /// Millilitres of water drunk (`drunk_at`) in the period.
    WaterMillilitres,
    /// Length in days of the current run of consecutive days with at least one meal logged.
    LoggingStreakDays,
    /// Days of the period whose meals (not deleted) hold at least this much protein, in grams.
    ProteinDays {
        /// Protein of a day that counts, in grams.
        min_grams: f64,
    },
}

impl Goal {
    /// The quest kind sent in `StartQuest`.
    pub fn kind(self) -> QuestKind {
        match self {
            Goal::MealsLogged => QuestKind::MealLogging,
            Goal::WaterMillilitres => QuestKind::Hydration,
            Goal::LoggingStreakDays => QuestKind::Streak,
            Goal::ProteinDays { .. } => QuestKind::ProteinTarget,
        }
    }

    /// The unit of target and progress.
    pub fn unit(self) -> QuestUnit {
        match self {
            Goal::MealsLogged => QuestUnit::Meals,
            Goal::WaterMillilitres => QuestUnit::Millilitres,
            Goal::LoggingStreakDays | Goal::ProteinDays { .. } => QuestUnit::Days,
        }
    }
}

/// The span one instance of a quest covers; days are UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One UTC day; the instance expires at the next midnight UTC.
    Day,
    /// One ISO week (Monday to Sunday, UTC); the instance expires at Monday 00:00 UTC.
    Week,
    /// Once per user, without deadline.
    Once,
}

impl Period {
    /// The first day (days since 1970-01-01) of the period holding `day`; 0 for [`Period::Once`].
    pub fn start(self, day: i32) -> i32 {
        match self {
            Period::Day => day,
            // 1970-01-01 was a Thursday: Monday is 3 days before day 0.
            Period::Week => day - (day + 3).rem_euclid(7),
            Period::Once => 0,
        }
    }

    /// The instant (µs since the epoch) the instance starting on `start` expires, if ever.
    pub fn deadline(self, start: i32) -> Option<i64> {
        match self {
            Period::Day => Some(day_start(start + 1)),
            Period::Week => Some(day_start(start + 7)),
            Period::Once => None,
        }
    }
}

/// One quest definition of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuestDefinition {
    /// Catalogue id, sent as `quest_definition_id`.
    pub id: &'static str,
    /// What the player reads.
    pub title: &'static str,
    /// What progress measures.
    pub goal: Goal,
    /// Progress needed to complete, in the goal's unit.
    pub target: f64,
    /// The span of one instance.
    pub period: Period,
    /// XP of the reward, claimed as soon as the quest is completed.
    pub xp_reward: i32,
}

/// The built-in catalogue; the README lists it.
pub const CATALOGUE: &[QuestDefinition] = &[
    QuestDefinition {
        id: "quests-log-3-meals",
        title: "Log three meals today",
        goal: Goal::MealsLogged,
        target: 3.0,
        period: Period::Day,
        xp_reward: 30,
    },
    QuestDefinition {
        id: "quests-drink-2-litres",
        title: "Drink two litres of water today",
        goal: Goal::WaterMillilitres,
        target: 2000.0,
        period: Period::Day,
        xp_reward: 50,
    },
    QuestDefinition {
        id: "quests-streak-7",
        title: "Log a meal seven days in a row",
        goal: Goal::LoggingStreakDays,
        target: 7.0,
        period: Period::Once,
        xp_reward: 150,
    },
    QuestDefinition {
        id: "quests-protein-100-3-days",
        title: "Eat at least 100 g of protein on three days this week",
        goal: Goal::ProteinDays { min_grams: 100.0 },
        target: 3.0,
        period: Period::Week,
        xp_reward: 120,
    },
];

/// The catalogue entry with this id.
pub fn definition(id: &str) -> Option<&'static QuestDefinition> {
    CATALOGUE.iter().find(|d| d.id == id)
}

/// Microseconds in one day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day (days since 1970-01-01) of an instant in µs.
pub fn day_of(micros: i64) -> i32 {
    i32::try_from(micros.div_euclid(DAY_MICROS)).unwrap_or(i32::MAX)
}

/// Midnight UTC starting `day`, in µs.
pub fn day_start(day: i32) -> i64 {
    i64::from(day) * DAY_MICROS
}
