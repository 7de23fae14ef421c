//! Game progression as data: the level curve, the streak milestones and the achievement
//! catalogue the user aggregate derives events from.

use dietstream_schemas::types::AchievementTier;

use super::UserState;

/// Total XP needed to reach `level`: `50 * L * (L - 1)`, so level 1 at 0 XP, 2 at 100, 3 at
/// 300, 4 at 600, 5 at 1000 (each level costs 100 XP more than the one before).
pub fn xp_for_level(level: i32) -> i64 {
    i64::try_from(xp_for_level_wide(level)).unwrap_or(i64::MAX)
}

fn xp_for_level_wide(level: i32) -> i128 {
    let l = i128::from(level.max(1));
    50 * l * (l - 1)
}

/// The level a player with `total_xp` has: the highest `L >= 1` with
/// [`xp_for_level`]`(L) <= total_xp`.
pub fn level_for_xp(total_xp: i64) -> i32 {
    if total_xp <= 0 {
        return 1;
    }
    // Closed form of 50 L (L - 1) <= xp, corrected for float rounding below.
    let estimate = (1.0 + (1.0 + 0.08 * total_xp as f64).sqrt()) / 2.0;
    let mut level = (estimate.floor() as i32).max(1);
    let xp = i128::from(total_xp);
    while level > 1 && xp_for_level_wide(level) > xp {
        level -= 1;
    }
    while xp_for_level_wide(level + 1) <= xp {
        level += 1;
    }
    level
}

/// Lengths (in days) of a DAILY_LOGGING streak that emit `user.streak.milestone`, each once per
/// streak.
pub const STREAK_MILESTONES: &[i32] = &[3, 7, 14, 30, 60, 100, 180, 365];

/// What unlocks an achievement; evaluated on the user state after every event of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AchievementRule {
    /// At least this many `nutrition.meal.logged` ever (deletions do not count back).
    MealsLogged(u64),
    /// At least this many `quest.completed`.
    QuestsCompleted(u64),
    /// A current DAILY_LOGGING streak of at least this many days.
    StreakDays(i32),
    /// At least this many `nutrition.goal.met`.
    GoalsMet(u64),
}

/// One entry of the achievement catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Achievement {
    /// Catalogue id, the `achievement_id` of `user.achievement.unlocked`.
    pub id: &'static str,
    /// Name shown when unlocked.
    pub name: &'static str,
    /// Tier.
    pub tier: AchievementTier,
    /// XP granted with it; counts towards the level.
    pub xp: i32,
    /// The condition.
    pub rule: AchievementRule,
}

impl Achievement {
    /// Whether the condition holds for `state` (regardless of whether it is already unlocked).
    pub fn holds(&self, state: &UserState) -> bool {
        match self.rule {
            AchievementRule::MealsLogged(n) => state.meals_logged >= n,
            AchievementRule::QuestsCompleted(n) => state.quests_completed >= n,
            AchievementRule::StreakDays(n) => state.streak.as_ref().is_some_and(|s| s.days() >= n),
            AchievementRule::GoalsMet(n) => state.goals_met.len() as u64 >= n,
        }
    }
}

/// The achievement catalogue, each unlocked at most once per user, in this order when one
/// command unlocks several.
pub const ACHIEVEMENTS: &[Achievement] = &[
    Achievement {
        id: "first-meal",
        name: "First Bite",
        tier: AchievementTier::Bronze,
        xp: 10,
        rule: AchievementRule::MealsLogged(1),
    },
    Achievement {
        id: "meals-100",
        name: "Centurion",
        tier: AchievementTier::Gold,
        xp: 200,
        rule: AchievementRule::MealsLogged(100),
    },
    Achievement {
        id: "first-goal-met",
        name: "On Target",
        tier: AchievementTier::Bronze,
        xp: 10,
        rule: AchievementRule::GoalsMet(1),
    },
    Achievement {
        id: "first-quest",
        name: "Quest Beginner",
        tier: AchievementTier::Bronze,
        xp: 20,
        rule: AchievementRule::QuestsCompleted(1),
    },
    Achievement {
        id: "quests-10",
        name: "Seasoned Adventurer",
        tier: AchievementTier::Silver,
        xp: 100,
        rule: AchievementRule::QuestsCompleted(10),
    },
    Achievement {
        id: "streak-7",
        name: "One Week Strong",
        tier: AchievementTier::Silver,
        xp: 50,
        rule: AchievementRule::StreakDays(7),
    },
    Achievement {
        id: "streak-30",
        name: "Habit Formed",
        tier: AchievementTier::Gold,
        xp: 150,
        rule: AchievementRule::StreakDays(30),
    },
];
