//! The USER aggregate: profile, XP and level, meals and daily totals, goals, streaks,
//! achievements and quests of one player.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Datelike;
use dietstream_schemas::types::{
    self, ActivityLevel, MealItem, NutritionGoalKind, QuestKind, QuestUnit, StreakKind,
};
use dietstream_schemas::{Command, Event};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::progression::{level_for_xp, ACHIEVEMENTS, STREAK_MILESTONES};
use super::validate::{self, limits, Check};
use super::{blank_header, Emitter, Rejection, State};

/// Days of daily water totals kept, counted back from the newest day any meal or water log
/// fell on. Older days are dropped; a log for a day outside the window still counts as logged.
pub const DAY_WINDOW: i32 = 62;

/// Days from 0001-01-01 to 1970-01-01 (chrono counts from the former).
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// State of one player.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// Profile as registered and updated.
    pub profile: Profile,
    /// Total XP from `user.xp.awarded`, `quest.reward.claimed` and `user.achievement.unlocked`.
    pub total_xp: i64,
    /// Level as last announced by `user.level.up` (1 before any).
    pub level: i32,
    /// Nutrition goals by first day, ascending; the one in force on a day is the last one that
    /// starts on or before it.
    pub goals: Vec<GoalSet>,
    /// Every meal ever logged, by id (deleted ones stay, so an id is never reused).
    pub meals: BTreeMap<Uuid, MealRecord>,
    /// Daily totals of the last [`DAY_WINDOW`] days, by day.
    pub days: BTreeMap<i32, DayTotals>,
    /// Newest day a meal or water log fell on.
    pub newest_day: Option<i32>,
    /// The current DAILY_LOGGING streak.
    pub streak: Option<Streak>,
    /// Number of `nutrition.meal.logged`.
    pub meals_logged: u64,
    /// Every (date, goal) of a `nutrition.goal.met`: a `nutrition.goal.met.record` for one of
    /// them is refused, and their number counts towards achievements. Never pruned: the nutrition
    /// processor may judge any day it still keeps open, and a goal met must stay at most once.
    pub goals_met: BTreeSet<(i32, NutritionGoalKind)>,
    /// Quests by quest id.
    pub quests: BTreeMap<Uuid, QuestRecord>,
    /// Number of `quest.completed`.
    pub quests_completed: u64,
    /// Ids of unlocked achievements.
    pub achievements: BTreeSet<String>,
}

impl Default for UserState {
    fn default() -> UserState {
        UserState {
            profile: Profile::default(),
            total_xp: 0,
            level: 1,
            goals: Vec::new(),
            meals: BTreeMap::new(),
            days: BTreeMap::new(),
            newest_day: None,
            streak: None,
            meals_logged: 0,
            goals_met: BTreeSet::new(),
            quests: BTreeMap::new(),
            quests_completed: 0,
            achievements: BTreeSet::new(),
        }
    }
}

/// The player's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Display name.
    pub display_name: String,
    /// E-mail address.
    pub email: String,
    /// BCP 47 language tag.
    pub locale: String,
    /// IANA time zone; days are counted in it.
    pub time_zone: String,
    /// Year of birth.
    pub birth_year: Option<i32>,
    /// Height in centimetres.
    pub height_cm: Option<f64>,
    /// Weight in kilograms.
    pub weight_kg: Option<f64>,
    /// Activity level.
    pub activity_level: ActivityLevel,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            display_name: String::new(),
            email: String::new(),
            locale: String::new(),
            time_zone: "UTC".to_owned(),
            birth_year: None,
            height_cm: None,
            weight_kg: None,
            activity_level: ActivityLevel::Unknown,
        }
    }
}

/// Sums of the nutrients of meals; a null fibre value counts as 0.
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
    /// Grams of fibre.
    pub fibre_g: f64,
}

impl Nutrients {
    /// The sum over the items of one meal.
    pub fn of_items(items: &[MealItem]) -> Nutrients {
        items.iter().fold(Nutrients::default(), |n, i| Nutrients {
            energy_kcal: n.energy_kcal + i.energy_kcal,
            protein_g: n.protein_g + i.protein_g,
            carbohydrate_g: n.carbohydrate_g + i.carbohydrate_g,
            fat_g: n.fat_g + i.fat_g,
            fibre_g: n.fibre_g + i.fibre_g.unwrap_or(0.0),
        })
    }
}

/// What the aggregate keeps of a meal: its day and nutrients (for the query bus's daily
/// figures) and whether it was deleted (a meal id is never reused).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MealRecord {
    /// Day of `eaten_at` in the user's time zone when it was logged or last updated.
    pub day: i32,
    /// Nutrients of the meal.
    pub nutrients: Nutrients,
    /// Whether `nutrition.meal.deleted` was applied.
    pub deleted: bool,
}

/// Totals of one day.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DayTotals {
    /// Water drunk, in millilitres.
    pub water_ml: i64,
}

/// Daily targets from a day on (`nutrition.goal.updated`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GoalSet {
    /// First day the targets apply to.
    pub effective_from: i32,
    /// Energy target, a minimum.
    pub energy_kcal: Option<f64>,
    /// Protein target, a minimum.
    pub protein_g: Option<f64>,
    /// Carbohydrate target, a ceiling.
    pub carbohydrate_g: Option<f64>,
    /// Fat target, a ceiling.
    pub fat_g: Option<f64>,
    /// Fibre target, a minimum.
    pub fibre_g: Option<f64>,
    /// Water target, a minimum.
    pub water_ml: Option<i32>,
}

/// A run of consecutive days with at least one meal logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Streak {
    /// First day of the run.
    pub started_on: i32,
    /// Last day of the run.
    pub last_day: i32,
    /// Milestones already announced for this run.
    pub milestones: BTreeSet<i32>,
}

impl Streak {
    /// Length in days.
    pub fn days(&self) -> i32 {
        self.last_day - self.started_on + 1
    }
}

/// Where a quest is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuestStatus {
    /// Started, neither completed nor failed.
    Active,
    /// Completed, reward not claimed yet.
    Completed,
    /// Failed.
    Failed,
    /// Completed and its reward claimed.
    RewardClaimed,
}

/// One quest instance of the player.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestRecord {
    /// Catalogue id of the quest definition.
    pub quest_definition_id: String,
    /// What it measures.
    pub quest_kind: QuestKind,
    /// Progress needed.
    pub target: f64,
    /// Unit of target and progress.
    pub unit: QuestUnit,
    /// Current progress.
    pub progress: f64,
    /// When it expires, if ever.
    pub deadline: Option<i64>,
    /// Life-cycle status.
    pub status: QuestStatus,
    /// XP the reward is worth, from `quest.completed`.
    pub xp_reward: i32,
}

impl UserState {
    /// Day (days since 1970-01-01) of an instant in the user's time zone.
    pub fn day_of(&self, micros: i64) -> i32 {
        day_of(micros, &self.profile.time_zone)
    }

    /// The goals in force on `day`.
    pub fn goal_on(&self, day: i32) -> Option<&GoalSet> {
        self.goals.iter().rev().find(|g| g.effective_from <= day)
    }

    /// Totals of `day`, creating them when the day is inside the window (which may move the
    /// window forward); `None` for a day already outside it.
    fn day_entry(&mut self, day: i32) -> Option<&mut DayTotals> {
        let newest = self.newest_day.map_or(day, |n| n.max(day));
        if self.newest_day != Some(newest) {
            self.newest_day = Some(newest);
            self.prune(newest);
        }
        if day <= newest - DAY_WINDOW {
            return None;
        }
        Some(self.days.entry(day).or_default())
    }

    fn prune(&mut self, newest: i32) {
        let oldest = newest - DAY_WINDOW + 1;
        self.days.retain(|d, _| *d >= oldest);
        // Keep the goal set in force on the oldest tracked day and every later one.
        if let Some(keep_from) = self.goals.iter().rposition(|g| g.effective_from <= oldest) {
            self.goals.drain(..keep_from);
        }
    }

    fn add_meal(&mut self, id: Uuid, day: i32, nutrients: Nutrients) {
        // A meal's day moves the window of daily totals like a drink's.
        self.day_entry(day);
        self.meals.insert(
            id,
            MealRecord {
                day,
                nutrients,
                deleted: false,
            },
        );
    }

    fn remove_meal(&mut self, id: &Uuid) {
        if let Some(m) = self.meals.get_mut(id) {
            m.deleted = true;
        }
    }

    fn extend_streak(&mut self, day: i32) {
        match &mut self.streak {
            Some(s) if day == s.last_day + 1 => s.last_day = day,
            Some(s) if day == s.started_on - 1 => s.started_on = day,
            Some(s) if day >= s.started_on && day <= s.last_day => {}
            // An older day that does not touch the run is history, not a new run.
            Some(s) if day < s.started_on => {}
            _ => {
                self.streak = Some(Streak {
                    started_on: day,
                    last_day: day,
                    milestones: BTreeSet::new(),
                })
            }
        }
    }
}

/// Day (days since 1970-01-01) of `micros` in `time_zone`; UTC when the name is not valid
/// (registration refuses such names, so only a hand-made event gets here).
pub(crate) fn day_of(micros: i64, time_zone: &str) -> i32 {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::Tz::UTC);
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.with_timezone(&tz).date_naive().num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE,
        None => micros.div_euclid(limits::DAY_MICROS) as i32,
    }
}

/// Applies a USER event. Non-user events never reach this (checked by the caller).
pub(crate) fn apply(s: &mut UserState, event: &Event) {
    match event {
        Event::UserRegistered(e) => {
            let p = &e.payload;
            s.profile = Profile {
                display_name: p.display_name.clone(),
                email: p.email.clone(),
                locale: p.locale.clone(),
                time_zone: p.time_zone.clone(),
                birth_year: p.birth_year,
                height_cm: p.height_cm,
                weight_kg: p.weight_kg,
                activity_level: p.activity_level,
            };
        }
        Event::UserProfileUpdated(e) => {
            let p = &e.payload;
            for f in &p.changed_fields {
                match f.as_str() {
                    "display_name" => {
                        s.profile.display_name = p.display_name.clone().unwrap_or_default()
                    }
                    "email" => s.profile.email = p.email.clone().unwrap_or_default(),
                    "locale" => s.profile.locale = p.locale.clone().unwrap_or_default(),
                    "time_zone" => {
                        s.profile.time_zone =
                            p.time_zone.clone().unwrap_or_else(|| "UTC".to_owned())
                    }
                    "birth_year" => s.profile.birth_year = p.birth_year,
                    "height_cm" => s.profile.height_cm = p.height_cm,
                    "weight_kg" => s.profile.weight_kg = p.weight_kg,
                    "activity_level" => {
                        s.profile.activity_level =
                            p.activity_level.unwrap_or(ActivityLevel::Unknown)
                    }
                    _ => {}
                }
            }
        }
        Event::UserXpAwarded(e) => s.total_xp = e.payload.total_xp,
        Event::UserLevelUp(e) => s.level = e.payload.new_level,
        Event::UserAchievementUnlocked(e) => {
            s.achievements.insert(e.payload.achievement_id.clone());
            s.total_xp += i64::from(e.payload.xp_awarded);
        }
        Event::UserStreakMilestone(e) if e.payload.streak_kind == StreakKind::DailyLogging => {
            if let Some(streak) = &mut s.streak {
                streak.milestones.insert(e.payload.milestone);
            }
        }
        Event::MealLogged(e) => {
            let p = &e.payload;
            let day = s.day_of(p.eaten_at);
            s.add_meal(p.meal_id, day, Nutrients::of_items(&p.items));
            s.meals_logged += 1;
            s.extend_streak(day);
        }
        Event::MealUpdated(e) => {
            let p = &e.payload;
            s.remove_meal(&p.meal_id);
            let day = s.day_of(p.eaten_at);
            s.add_meal(p.meal_id, day, Nutrients::of_items(&p.items));
        }
        Event::MealDeleted(e) => s.remove_meal(&e.payload.meal_id),
        Event::NutritionGoalMet(e) => {
            s.goals_met.insert((e.payload.date, e.payload.goal));
        }
        Event::NutritionGoalUpdated(e) => {
            let p = &e.payload;
            s.goals.retain(|g| g.effective_from < p.effective_from);
            s.goals.push(GoalSet {
                effective_from: p.effective_from,
                energy_kcal: p.energy_kcal,
                protein_g: p.protein_g,
                carbohydrate_g: p.carbohydrate_g,
                fat_g: p.fat_g,
                fibre_g: p.fibre_g,
                water_ml: p.water_ml,
            });
            if let Some(newest) = s.newest_day {
                s.prune(newest);
            }
        }
        Event::WaterIntakeLogged(e) => {
            let day = s.day_of(e.payload.drunk_at);
            if let Some(d) = s.day_entry(day) {
                d.water_ml += i64::from(e.payload.millilitres);
            }
        }
        Event::QuestStarted(e) => {
            let p = &e.payload;
            s.quests.insert(
                p.quest_id,
                QuestRecord {
                    quest_definition_id: p.quest_definition_id.clone(),
                    quest_kind: p.quest_kind,
                    target: p.target,
                    unit: p.unit,
                    progress: p.progress,
                    deadline: p.deadline,
                    status: QuestStatus::Active,
                    xp_reward: 0,
                },
            );
        }
        Event::QuestUpdated(e) => {
            if let Some(q) = s.quests.get_mut(&e.payload.quest_id) {
                q.progress = e.payload.progress;
            }
        }
        Event::QuestCompleted(e) => {
            s.quests_completed += 1;
            if let Some(q) = s.quests.get_mut(&e.payload.quest_id) {
                q.status = QuestStatus::Completed;
                q.progress = e.payload.progress;
                q.xp_reward = e.payload.xp_reward;
            }
        }
        Event::QuestFailed(e) => {
            if let Some(q) = s.quests.get_mut(&e.payload.quest_id) {
                q.status = QuestStatus::Failed;
                q.progress = e.payload.progress;
            }
        }
        Event::QuestRewardClaimed(e) => {
            s.total_xp += i64::from(e.payload.xp);
            if let Some(q) = s.quests.get_mut(&e.payload.quest_id) {
                q.status = QuestStatus::RewardClaimed;
            }
        }
        _ => {}
    }
}

fn state<'e>(em: &'e Emitter<'_>) -> Option<&'e UserState> {
    match &em.work.state {
        State::User(s) => Some(s),
        _ => None,
    }
}

pub(crate) fn decide(em: &mut Emitter<'_>, command: &Command) -> Result<(), Rejection> {
    validate_command(command)?;
    let empty = UserState::default();
    let s = state(em).unwrap_or(&empty);
    let main = match command {
        Command::RegisterUser(c) => {
            let p = &c.payload;
            Event::UserRegistered(types::UserRegistered {
                header: blank_header(),
                payload: types::UserRegisteredPayload {
                    display_name: p.display_name.clone(),
                    email: p.email.clone(),
                    locale: p.locale.clone(),
                    time_zone: p.time_zone.clone(),
                    birth_year: p.birth_year,
                    height_cm: p.height_cm,
                    weight_kg: p.weight_kg,
                    activity_level: p.activity_level,
                    referral_code: p.referral_code.clone(),
                },
            })
        }
        Command::UpdateProfile(c) => {
            let p = &c.payload;
            Event::UserProfileUpdated(types::UserProfileUpdated {
                header: blank_header(),
                payload: types::UserProfileUpdatedPayload {
                    display_name: p.display_name.clone(),
                    email: p.email.clone(),
                    locale: p.locale.clone(),
                    time_zone: p.time_zone.clone(),
                    birth_year: p.birth_year,
                    height_cm: p.height_cm,
                    weight_kg: p.weight_kg,
                    activity_level: p.activity_level,
                    changed_fields: p.changed_fields.clone(),
                },
            })
        }
        Command::AwardXp(c) => {
            let p = &c.payload;
            Event::UserXpAwarded(types::UserXpAwarded {
                header: blank_header(),
                payload: types::UserXpAwardedPayload {
                    xp: p.xp,
                    source: p.source,
                    source_id: p.source_id.clone(),
                    total_xp: s.total_xp + i64::from(p.xp),
                },
            })
        }
        Command::SetNutritionGoal(c) => {
            let p = &c.payload;
            Event::NutritionGoalUpdated(types::NutritionGoalUpdated {
                header: blank_header(),
                payload: types::NutritionGoalUpdatedPayload {
                    energy_kcal: p.energy_kcal,
                    protein_g: p.protein_g,
                    carbohydrate_g: p.carbohydrate_g,
                    fat_g: p.fat_g,
                    fibre_g: p.fibre_g,
                    water_ml: p.water_ml,
                    effective_from: p.effective_from,
                },
            })
        }
        Command::LogMeal(c) => {
            let p = &c.payload;
            if s.meals.contains_key(&p.meal_id) {
                return Err(Rejection::rule(format!(
                    "meal {} was already logged (meal ids are never reused)",
                    p.meal_id
                )));
            }
            Event::MealLogged(types::MealLogged {
                header: blank_header(),
                payload: types::MealLoggedPayload {
                    meal_id: p.meal_id,
                    meal_type: p.meal_type,
                    eaten_at: p.eaten_at,
                    items: p.items.clone(),
                    note: p.note.clone(),
                    source: p.source,
                },
            })
        }
        Command::UpdateMeal(c) => {
            let p = &c.payload;
            live_meal(s, &p.meal_id, "updated")?;
            Event::MealUpdated(types::MealUpdated {
                header: blank_header(),
                payload: types::MealUpdatedPayload {
                    meal_id: p.meal_id,
                    meal_type: p.meal_type,
                    eaten_at: p.eaten_at,
                    items: p.items.clone(),
                    note: p.note.clone(),
                },
            })
        }
        Command::DeleteMeal(c) => {
            let p = &c.payload;
            live_meal(s, &p.meal_id, "deleted")?;
            Event::MealDeleted(types::MealDeleted {
                header: blank_header(),
                payload: types::MealDeletedPayload {
                    meal_id: p.meal_id,
                    reason: p.reason,
                },
            })
        }
        Command::LogWater(c) => {
            let p = &c.payload;
            Event::WaterIntakeLogged(types::WaterIntakeLogged {
                header: blank_header(),
                payload: types::WaterIntakeLoggedPayload {
                    intake_id: p.intake_id,
                    millilitres: p.millilitres,
                    drunk_at: p.drunk_at,
                },
            })
        }
        Command::RecordGoalMet(c) => {
            let p = &c.payload;
            if s.goals_met.contains(&(p.date, p.goal)) {
                return Err(Rejection::rule(format!(
                    "goal {:?} was already met on day {}",
                    p.goal, p.date
                )));
            }
            Event::NutritionGoalMet(types::NutritionGoalMet {
                header: blank_header(),
                payload: types::NutritionGoalMetPayload {
                    date: p.date,
                    goal: p.goal,
                    target: p.target,
                    achieved: p.achieved,
                },
            })
        }
        Command::StartQuest(c) => {
            let p = &c.payload;
            if s.quests.contains_key(&p.quest_id) {
                return Err(Rejection::rule(format!(
                    "quest {} was already started",
                    p.quest_id
                )));
            }
            Event::QuestStarted(types::QuestStarted {
                header: blank_header(),
                payload: types::QuestStartedPayload {
                    quest_id: p.quest_id,
                    quest_definition_id: p.quest_definition_id.clone(),
                    quest_kind: p.quest_kind,
                    target: p.target,
                    unit: p.unit,
                    progress: 0.0,
                    deadline: p.deadline,
                },
            })
        }
        Command::ProgressQuest(c) => {
            let p = &c.payload;
            let q = active_quest(s, &p.quest_id, "progressed")?;
            if q.progress == p.progress {
                // Progress is absolute: a repeat changes nothing and appends nothing.
                return Ok(());
            }
            Event::QuestUpdated(types::QuestUpdated {
                header: blank_header(),
                payload: types::QuestUpdatedPayload {
                    quest_id: p.quest_id,
                    previous_progress: q.progress,
                    progress: p.progress,
                    delta: p.progress - q.progress,
                    source_event_id: p.source_event_id,
                },
            })
        }
        Command::CompleteQuest(c) => {
            let p = &c.payload;
            let q = active_quest(s, &p.quest_id, "completed")?;
            Event::QuestCompleted(types::QuestCompleted {
                header: blank_header(),
                payload: types::QuestCompletedPayload {
                    quest_id: p.quest_id,
                    quest_definition_id: q.quest_definition_id.clone(),
                    completed_at: p.completed_at,
                    progress: q.progress,
                    xp_reward: p.xp_reward,
                },
            })
        }
        Command::FailQuest(c) => {
            let p = &c.payload;
            let q = active_quest(s, &p.quest_id, "failed")?;
            Event::QuestFailed(types::QuestFailed {
                header: blank_header(),
                payload: types::QuestFailedPayload {
                    quest_id: p.quest_id,
                    quest_definition_id: q.quest_definition_id.clone(),
                    reason: p.reason,
                    failed_at: p.failed_at,
                    progress: q.progress,
                },
            })
        }
        Command::ClaimQuestReward(c) => {
            let p = &c.payload;
            match s.quests.get(&p.quest_id).map(|q| q.status) {
                Some(QuestStatus::Completed) => {}
                Some(QuestStatus::RewardClaimed) => {
                    return Err(Rejection::rule(format!(
                        "the reward of quest {} was already claimed",
                        p.quest_id
                    )))
                }
                Some(QuestStatus::Active | QuestStatus::Failed) => {
                    return Err(Rejection::rule(format!(
                        "quest {} is not completed; only a completed quest has a reward",
                        p.quest_id
                    )))
                }
                None => {
                    return Err(Rejection::rule(format!(
                        "quest {} was never started",
                        p.quest_id
                    )))
                }
            }
            Event::QuestRewardClaimed(types::QuestRewardClaimed {
                header: blank_header(),
                payload: types::QuestRewardClaimedPayload {
                    quest_id: p.quest_id,
                    reward_kind: p.reward_kind,
                    xp: p.xp,
                    items: p.items.clone(),
                },
            })
        }
        _ => {
            return Err(Rejection::rule(format!(
                "{} is not a USER command",
                command.record_type()
            )))
        }
    };
    em.emit(main)?;
    derive(em)
}

fn live_meal(s: &UserState, id: &Uuid, verb: &str) -> Check {
    match s.meals.get(id) {
        Some(m) if !m.deleted => Ok(()),
        Some(_) => Err(Rejection::rule(format!(
            "meal {id} was deleted and cannot be {verb}"
        ))),
        None => Err(Rejection::rule(format!(
            "meal {id} was never logged and cannot be {verb}"
        ))),
    }
}

fn active_quest<'s>(s: &'s UserState, id: &Uuid, verb: &str) -> Result<&'s QuestRecord, Rejection> {
    match s.quests.get(id) {
        Some(q) if q.status == QuestStatus::Active => Ok(q),
        Some(q) => Err(Rejection::rule(format!(
            "quest {id} is already finished ({:?}) and cannot be {verb}",
            q.status
        ))),
        None => Err(Rejection::rule(format!(
            "quest {id} was never started and cannot be {verb}"
        ))),
    }
}

/// Appends the derived events, each applied before the next is computed: streak milestones,
/// achievements, and last one level-up covering all XP the command brought.
fn derive(em: &mut Emitter<'_>) -> Result<(), Rejection> {
    if let Some(streak) = state(em).and_then(|s| s.streak.clone()) {
        let days = streak.days();
        for &m in STREAK_MILESTONES {
            if m <= days && !streak.milestones.contains(&m) {
                em.emit(Event::UserStreakMilestone(types::UserStreakMilestone {
                    header: blank_header(),
                    payload: types::UserStreakMilestonePayload {
                        streak_kind: StreakKind::DailyLogging,
                        days,
                        milestone: m,
                        streak_started_on: streak.started_on,
                    },
                }))?;
            }
        }
    }
    for a in ACHIEVEMENTS {
        let due = state(em).is_some_and(|s| !s.achievements.contains(a.id) && a.holds(s));
        if due {
            em.emit(Event::UserAchievementUnlocked(
                types::UserAchievementUnlocked {
                    header: blank_header(),
                    payload: types::UserAchievementUnlockedPayload {
                        achievement_id: a.id.to_owned(),
                        achievement_name: a.name.to_owned(),
                        tier: a.tier,
                        xp_awarded: a.xp,
                    },
                },
            ))?;
        }
    }
    if let Some(s) = state(em) {
        let new_level = level_for_xp(s.total_xp);
        if new_level > s.level {
            let payload = types::UserLevelUpPayload {
                previous_level: s.level,
                new_level,
                total_xp: s.total_xp,
            };
            em.emit(Event::UserLevelUp(types::UserLevelUp {
                header: blank_header(),
                payload,
            }))?;
        }
    }
    Ok(())
}

const PROFILE_FIELDS: &[&str] = &[
    "display_name",
    "email",
    "locale",
    "time_zone",
    "birth_year",
    "height_cm",
    "weight_kg",
    "activity_level",
];

/// Fields a profile must always have: they may be changed but not cleared.
const REQUIRED_PROFILE_FIELDS: &[&str] = &[
    "display_name",
    "email",
    "locale",
    "time_zone",
    "activity_level",
];

fn body(birth_year: Option<i32>, height_cm: Option<f64>, weight_kg: Option<f64>) -> Check {
    if let Some(y) = birth_year {
        let r = limits::BIRTH_YEARS;
        validate::int_range(
            i64::from(y),
            i64::from(*r.start()),
            i64::from(*r.end()),
            "payload.birth_year",
        )?;
    }
    if let Some(h) = height_cm {
        let r = limits::HEIGHT_CM;
        validate::number(h, *r.start(), false, *r.end(), "payload.height_cm")?;
    }
    if let Some(w) = weight_kg {
        let r = limits::WEIGHT_KG;
        validate::number(w, *r.start(), false, *r.end(), "payload.weight_kg")?;
    }
    Ok(())
}

fn validate_command(command: &Command) -> Check {
    use validate::{known, non_empty, number};
    let issued_at = command.header().issued_at;
    match command {
        Command::RegisterUser(c) => {
            let p = &c.payload;
            non_empty(&p.display_name, "payload.display_name")?;
            validate::email(&p.email, "payload.email")?;
            non_empty(&p.locale, "payload.locale")?;
            validate::time_zone(&p.time_zone, "payload.time_zone")?;
            known(
                p.activity_level == ActivityLevel::Unknown,
                "payload.activity_level",
            )?;
            body(p.birth_year, p.height_cm, p.weight_kg)
        }
        Command::UpdateProfile(c) => {
            let p = &c.payload;
            if p.changed_fields.is_empty() {
                return Err(Rejection::validation(
                    "payload.changed_fields",
                    "changed_fields must list at least one field",
                ));
            }
            for (i, f) in p.changed_fields.iter().enumerate() {
                if !PROFILE_FIELDS.contains(&f.as_str()) {
                    return Err(Rejection::validation(
                        format!("payload.changed_fields[{i}]"),
                        format!("{f:?} is not a profile field"),
                    ));
                }
            }
            let listed = |f: &str| p.changed_fields.iter().any(|c| c == f);
            let present = [
                ("display_name", p.display_name.is_some()),
                ("email", p.email.is_some()),
                ("locale", p.locale.is_some()),
                ("time_zone", p.time_zone.is_some()),
                ("birth_year", p.birth_year.is_some()),
                ("height_cm", p.height_cm.is_some()),
                ("weight_kg", p.weight_kg.is_some()),
                ("activity_level", p.activity_level.is_some()),
            ];
            for (f, is_set) in present {
                if is_set && !listed(f) {
                    return Err(Rejection::validation(
                        format!("payload.{f}"),
                        format!("{f} is set but not listed in changed_fields"),
                    ));
                }
                if !is_set && listed(f) && REQUIRED_PROFILE_FIELDS.contains(&f) {
                    return Err(Rejection::validation(
                        format!("payload.{f}"),
                        format!("{f} cannot be cleared"),
                    ));
                }
            }
            if let Some(v) = &p.display_name {
                non_empty(v, "payload.display_name")?;
            }
            if let Some(v) = &p.email {
                validate::email(v, "payload.email")?;
            }
            if let Some(v) = &p.locale {
                non_empty(v, "payload.locale")?;
            }
            if let Some(v) = &p.time_zone {
                validate::time_zone(v, "payload.time_zone")?;
            }
            if let Some(v) = p.activity_level {
                known(v == ActivityLevel::Unknown, "payload.activity_level")?;
            }
            body(p.birth_year, p.height_cm, p.weight_kg)
        }
        Command::AwardXp(c) => {
            let p = &c.payload;
            validate::int_range(
                i64::from(p.xp),
                1,
                i64::from(limits::MAX_XP_AWARD),
                "payload.xp",
            )?;
            known(p.source == types::XpSource::Unknown, "payload.source")
        }
        Command::SetNutritionGoal(c) => {
            let p = &c.payload;
            let g = limits::MAX_GOAL_NUTRIENT_G;
            let checks = [
                (
                    p.energy_kcal,
                    limits::MAX_GOAL_ENERGY_KCAL,
                    "payload.energy_kcal",
                ),
                (p.protein_g, g, "payload.protein_g"),
                (p.carbohydrate_g, g, "payload.carbohydrate_g"),
                (p.fat_g, g, "payload.fat_g"),
                (p.fibre_g, g, "payload.fibre_g"),
            ];
            for (v, max, field) in checks {
                if let Some(v) = v {
                    number(v, 0.0, true, max, field)?;
                }
            }
            if let Some(w) = p.water_ml {
                validate::int_range(
                    i64::from(w),
                    1,
                    i64::from(limits::MAX_GOAL_WATER_ML),
                    "payload.water_ml",
                )?;
            }
            Ok(())
        }
        Command::LogMeal(c) => {
            let p = &c.payload;
            known(p.meal_type == types::MealType::Unknown, "payload.meal_type")?;
            known(p.source == types::MealSource::Unknown, "payload.source")?;
            validate::reported_instant(p.eaten_at, issued_at, "payload.eaten_at")?;
            validate::meal_items(&p.items)
        }
        Command::UpdateMeal(c) => {
            let p = &c.payload;
            known(p.meal_type == types::MealType::Unknown, "payload.meal_type")?;
            validate::reported_instant(p.eaten_at, issued_at, "payload.eaten_at")?;
            validate::meal_items(&p.items)
        }
        Command::DeleteMeal(c) => known(
            c.payload.reason == types::MealDeletionReason::Unknown,
            "payload.reason",
        ),
        Command::RecordGoalMet(c) => {
            let p = &c.payload;
            let max_target = match p.goal {
                NutritionGoalKind::Energy => limits::MAX_GOAL_ENERGY_KCAL,
                NutritionGoalKind::Protein | NutritionGoalKind::Fibre => {
                    limits::MAX_GOAL_NUTRIENT_G
                }
                NutritionGoalKind::Water => f64::from(limits::MAX_GOAL_WATER_ML),
                NutritionGoalKind::Unknown => return known(true, "payload.goal"),
                NutritionGoalKind::Carbohydrate | NutritionGoalKind::Fat => {
                    return Err(Rejection::validation(
                        "payload.goal",
                        format!(
                            "payload.goal is {:?}, a ceiling; only a minimum (ENERGY, PROTEIN, \
                             FIBRE, WATER) is met",
                            p.goal
                        ),
                    ))
                }
            };
            number(p.target, 0.0, true, max_target, "payload.target")?;
            // Anything at or above the target: a day's total has no upper bound of its own.
            number(p.achieved, p.target, false, f64::MAX, "payload.achieved")
        }
        Command::LogWater(c) => {
            let p = &c.payload;
            validate::int_range(
                i64::from(p.millilitres),
                1,
                i64::from(limits::MAX_WATER_ML),
                "payload.millilitres",
            )?;
            validate::reported_instant(p.drunk_at, issued_at, "payload.drunk_at")
        }
        Command::StartQuest(c) => {
            let p = &c.payload;
            non_empty(&p.quest_definition_id, "payload.quest_definition_id")?;
            known(p.quest_kind == QuestKind::Unknown, "payload.quest_kind")?;
            known(p.unit == QuestUnit::Unknown, "payload.unit")?;
            number(
                p.target,
                0.0,
                true,
                limits::MAX_QUEST_TARGET,
                "payload.target",
            )
        }
        Command::ProgressQuest(c) => number(
            c.payload.progress,
            0.0,
            false,
            limits::MAX_QUEST_TARGET * 10.0,
            "payload.progress",
        ),
        Command::CompleteQuest(c) => validate::int_range(
            i64::from(c.payload.xp_reward),
            0,
            i64::from(limits::MAX_QUEST_XP),
            "payload.xp_reward",
        ),
        Command::FailQuest(c) => known(
            c.payload.reason == types::QuestFailureReason::Unknown,
            "payload.reason",
        ),
        Command::ClaimQuestReward(c) => {
            let p = &c.payload;
            known(
                p.reward_kind == types::RewardKind::Unknown,
                "payload.reward_kind",
            )?;
            validate::int_range(
                i64::from(p.xp),
                0,
                i64::from(limits::MAX_QUEST_XP),
                "payload.xp",
            )?;
            for (i, item) in p.items.iter().enumerate() {
                non_empty(&item.item_id, &format!("payload.items[{i}].item_id"))?;
                validate::int_range(
                    i64::from(item.quantity),
                    1,
                    i64::from(i32::MAX),
                    &format!("payload.items[{i}].quantity"),
                )?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
