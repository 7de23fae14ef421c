//! One user's quest state: the activity the quests measure (bounded to a window of days), the
//! quest instances with what the processor sent and what the user aggregate confirmed, and
//! the user's quest totals.

use std::collections::BTreeMap;

use dietstream_runtime::amount::settled;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalogue::{Goal, Period, QuestDefinition};

/// A meal as the quests see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Meal {
    /// UTC day of `eaten_at`.
    pub day: i32,
    /// Protein of its items, in grams.
    pub protein_g: f64,
}

/// A run of consecutive UTC days with at least one meal logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    /// First day of the run.
    pub first_day: i32,
    /// Last day of the run.
    pub last_day: i32,
}

/// Where a quest is, as the user aggregate confirmed it (or `Pending` before it did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// `StartQuest` sent, `quest.started` not seen yet.
    Pending,
    /// `quest.started` seen.
    Active,
    /// `quest.completed` seen.
    Completed,
    /// `quest.failed` seen.
    Failed,
    /// `quest.reward.claimed` seen.
    RewardClaimed,
}

impl Status {
    /// The value of the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Active => "ACTIVE",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::RewardClaimed => "REWARD_CLAIMED",
        }
    }

    /// True when the aggregate accepts no progress for it any more.
    pub fn finished(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::RewardClaimed
        )
    }
}

/// What the processor has sent for a quest it runs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sent {
    /// The last progress sent (0 at start).
    pub progress: f64,
    /// `CompleteQuest` and `ClaimQuestReward` sent.
    pub completed: bool,
    /// `FailQuest` sent.
    pub failed: bool,
}

/// One quest instance of the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quest {
    /// Catalogue id (`quest_definition_id`).
    pub definition_id: String,
    /// Quest kind, as the Avro enum's Rust name (`MealLogging`).
    pub kind: String,
    /// Unit of target and progress, as the Avro enum's Rust name (`Meals`).
    pub unit: String,
    /// Progress needed.
    pub target: f64,
    /// When it expires (µs), if ever.
    pub deadline: Option<i64>,
    /// First day of its period, for a quest this processor runs.
    pub period_start: Option<i32>,
    /// Progress computed by this processor (only for quests it runs).
    pub computed: Option<f64>,
    /// What this processor sent (only for quests it runs).
    pub sent: Option<Sent>,
    /// Status as confirmed by the aggregate.
    pub status: Status,
    /// Progress as confirmed by the aggregate.
    pub progress: f64,
    /// `quest.started` time (µs).
    pub started_at: Option<i64>,
    /// `completed_at` of `quest.completed` (µs).
    pub completed_at: Option<i64>,
    /// `failed_at` of `quest.failed` (µs).
    pub failed_at: Option<i64>,
    /// XP reward confirmed by `quest.completed`.
    pub xp_reward: Option<i32>,
    /// XP confirmed by `quest.reward.claimed`.
    pub xp_claimed: Option<i32>,
}

impl Quest {
    /// A quest this processor starts for `definition` in the period starting `period_start`.
    pub fn run_by_processor(definition: &QuestDefinition, period_start: i32) -> Quest {
        Quest {
            definition_id: definition.id.to_owned(),
            kind: format!("{:?}", definition.goal.kind()),
            unit: format!("{:?}", definition.goal.unit()),
            target: definition.target,
            deadline: definition.period.deadline(period_start),
            period_start: Some(period_start),
            computed: Some(0.0),
            sent: Some(Sent::default()),
            status: Status::Pending,
            progress: 0.0,
            started_at: None,
            completed_at: None,
            failed_at: None,
            xp_reward: None,
            xp_claimed: None,
        }
    }
}

/// The user's quest totals, from the aggregate's quest events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// `quest.started` seen.
    pub started: i64,
    /// `quest.completed` seen.
    pub completed: i64,
    /// `quest.failed` seen.
    pub failed: i64,
    /// `quest.reward.claimed` seen.
    pub rewards_claimed: i64,
    /// XP of those rewards.
    pub xp_claimed: i64,
}

/// The state of one user (the entity, keyed by user id).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserQuests {
    /// Meals whose day is inside the window, by meal id.
    pub meals: BTreeMap<Uuid, Meal>,
    /// Water drunk per UTC day inside the window, in ml.
    pub water_ml: BTreeMap<i32, i64>,
    /// The latest run of logging days.
    pub streak: Option<Streak>,
    /// The newest activity day seen: the window ends there.
    pub newest_day: Option<i32>,
    /// Quest instances by quest id.
    pub quests: BTreeMap<Uuid, Quest>,
    /// Quest totals.
    pub totals: Totals,
    /// Bit `i` set: a meal was logged on the streak's `last_day - i` (the newest day with a
    /// meal logged). Zero in states saved before it existed, which [`UserQuests::extend_streak`]
    /// fills from the streak's run.
    #[serde(default)]
    pub logged_days: u64,
}

impl UserQuests {
    /// Records a meal (a new one or the new version of an updated one).
    pub fn add_meal(&mut self, id: Uuid, meal: Meal) {
        self.meals.insert(id, meal);
    }

    /// Records a meal logged for `day` in the logging streak: the run of consecutive days with
    /// a meal logged that ends on the newest such day. A later day extends the run or starts
    /// a new one; an earlier day (a meal logged late) fills its place among the last 64 days
    /// and joins the runs on either side of it when it closes the gap.
    pub fn extend_streak(&mut self, day: i32) {
        let Some(mut streak) = self.streak else {
            self.streak = Some(Streak {
                first_day: day,
                last_day: day,
            });
            self.logged_days = 1;
            return;
        };
        if self.logged_days == 0 {
            // Saved before the days were kept: the run's days are the ones known.
            let run = streak.last_day - streak.first_day + 1;
            self.logged_days = u64::MAX >> (64 - run.clamp(1, 64));
        }
        if day > streak.last_day {
            let shift = u32::try_from(day - streak.last_day).unwrap_or(u32::MAX);
            self.logged_days = self.logged_days.checked_shl(shift).unwrap_or(0) | 1;
            streak.last_day = day;
        } else if let Ok(back @ 0..64) = u32::try_from(streak.last_day - day) {
            self.logged_days |= 1 << back;
        }
        // The run ending on the newest day. One as long as the kept days may be longer: it
        // starts where it was known to, or 64 days back if that is earlier.
        let run = self.logged_days.trailing_ones().cast_signed();
        streak.first_day = if run < 64 {
            streak.last_day - run + 1
        } else {
            streak.first_day.min(streak.last_day - 63)
        };
        self.streak = Some(streak);
    }

    /// Moves the window to end at `day` (if newer) and drops what fell out of it: activity of
    /// days older than `window_days`, and ended quests whose deadline is that old.
    pub fn advance(&mut self, day: i32, window_days: i32) {
        let newest = self.newest_day.map_or(day, |n| n.max(day));
        self.newest_day = Some(newest);
        let oldest = newest - window_days + 1;
        self.meals.retain(|_, m| m.day >= oldest);
        self.water_ml.retain(|d, _| *d >= oldest);
        let horizon = crate::catalogue::day_start(oldest);
        // A quest whose end was sent but never confirmed (its start refused) goes too.
        self.quests.retain(|_, q| {
            let ended = q.status.finished() || q.sent.is_some_and(|s| s.completed || s.failed);
            !(ended && q.deadline.is_some_and(|d| d < horizon))
        });
    }

    /// Progress of `definition` in the period starting `period_start`, from the activity held.
    pub fn progress(&self, definition: &QuestDefinition, period_start: i32) -> f64 {
        let in_period = |day: i32| match definition.period {
            Period::Once => true,
            Period::Day | Period::Week => definition.period.start(day) == period_start,
        };
        match definition.goal {
            Goal::MealsLogged => self.meals.values().filter(|m| in_period(m.day)).count() as f64,
            Goal::WaterMillilitres => self
                .water_ml
                .iter()
                .filter(|(d, _)| in_period(**d))
                .map(|(_, ml)| *ml as f64)
                // An empty float sum is -0.0, which the row would show as such.
                .fold(0.0, |total, ml| total + ml),
            Goal::LoggingStreakDays => self
                .streak
                .map_or(0.0, |s| f64::from(s.last_day - s.first_day + 1)),
            Goal::ProteinDays { min_grams } => {
                let mut per_day: BTreeMap<i32, f64> = BTreeMap::new();
                for m in self.meals.values().filter(|m| in_period(m.day)) {
                    *per_day.entry(m.day).or_default() += m.protein_g;
                }
                // Settled: a day whose meals add up to exactly the minimum counts.
                per_day
                    .values()
                    .filter(|g| settled(**g) >= min_grams)
                    .count() as f64
            }
        }
    }
}
