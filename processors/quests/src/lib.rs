//! The quests read-model processor (issue 5): runs the quests of [`catalogue::CATALOGUE`] for
//! every user who logs meals or water, sends the quest commands that start, progress,
//! complete, fail and reward them, and keeps a row per user and quest of what the user
//! aggregate confirmed. See `README.md` for the tables and the rules.

pub mod catalogue;
pub mod state;
#[cfg(test)]
mod tests;

use dietstream_runtime::{caused_command, Effects, Origin, Projection, Row, RuleError, Table};
use dietstream_schemas::codec::Record;
use dietstream_schemas::types::{
    AggregateType, ClaimQuestReward, ClaimQuestRewardPayload, CommandHeader, CompleteQuest,
    CompleteQuestPayload, EventHeader, FailQuest, FailQuestPayload, MealItem, ProgressQuest,
    ProgressQuestPayload, QuestFailureReason, RewardKind, StartQuest, StartQuestPayload,
};
use dietstream_schemas::{Command, Event};
use scylla::value::{CqlTimestamp, CqlValue};
use uuid::Uuid;

use crate::catalogue::{day_of, day_start, definition, QuestDefinition, CATALOGUE};
use crate::state::{Meal, Quest, Status, UserQuests};

/// The processor's name in the topology.
pub const PROCESSOR: &str = "quests";

/// Table of one row per user and quest.
pub const QUESTS_BY_USER: &str = "quests_by_user";
/// Table of one row per user with quest totals.
pub const QUESTS_USER_TOTALS: &str = "quests_user_totals";

/// Namespace of the quest ids this processor derives (UUID v5 of user, definition, period).
const QUEST_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1e_7a0b_9c4f_4e21_8a36_0f2b_7c91_e4d3);

/// The example queries of the README, verbatim.
pub const EXAMPLE_QUERIES: &[&str] = &[
    "SELECT quest_id, definition_id, status, progress, target, unit, started_at, completed_at FROM {keyspace}.quests_by_user WHERE user_id = 'user-0001';",
    "SELECT quests_started, quests_completed, quests_failed, rewards_claimed, xp_claimed FROM {keyspace}.quests_user_totals WHERE user_id = 'user-0001';",
];

const TABLES: &[Table] = &[
    Table {
        name: QUESTS_BY_USER,
        key: &["user_id", "quest_id"],
        values: &[
            "definition_id",
            "quest_kind",
            "unit",
            "managed",
            "target",
            "progress",
            "computed_progress",
            "status",
            "period_start",
            "deadline",
            "started_at",
            "completed_at",
            "failed_at",
            "xp_reward",
            "xp_claimed",
        ],
        // Null until the quest reaches them, never null again (a quest does not leave a
        // status it reached, and its period and deadline are fixed at its start).
        set_once: &[
            "computed_progress",
            "period_start",
            "deadline",
            "started_at",
            "completed_at",
            "failed_at",
            "xp_reward",
            "xp_claimed",
        ],
    },
    Table {
        name: QUESTS_USER_TOTALS,
        key: &["user_id"],
        values: &[
            "quests_started",
            "quests_completed",
            "quests_failed",
            "rewards_claimed",
            "xp_claimed",
        ],
        set_once: &[],
    },
];

/// Tunables of the quests processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuestsConfig {
    /// Days of activity kept per user, ending at the newest day seen; must cover the longest
    /// period of the catalogue (a week) so that late edits inside an open week still count.
    pub window_days: i32,
}

impl Default for QuestsConfig {
    fn default() -> Self {
        QuestsConfig {
            window_days: default_window_days(),
        }
    }
}

/// Eight days: one ISO week plus the day before it, the oldest day an open quest can measure.
const fn default_window_days() -> i32 {
    8
}

/// The quests projection.
#[derive(Debug, Clone, Default)]
pub struct QuestsProjection {
    config: QuestsConfig,
}

impl QuestsProjection {
    /// The projection with the default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// The projection with this configuration.
    pub fn with_config(config: QuestsConfig) -> Self {
        QuestsProjection { config }
    }
}

/// The id of the instance of `definition` for `user` in the period starting `period_start`:
/// the same whichever event starts it, so the aggregate refuses a second start.
pub fn quest_id(user: &str, definition: &QuestDefinition, period_start: i32) -> Uuid {
    Uuid::new_v5(
        &QUEST_ID_NAMESPACE,
        format!("{user}/{}/{period_start}", definition.id).as_bytes(),
    )
}

/// The id of a command caused by `event_id` for `purpose` (DESIGN decision 3).
pub fn command_id(event_id: Uuid, purpose: &str, quest: Uuid) -> Uuid {
    Uuid::new_v5(&event_id, format!("quests/{purpose}/{quest}").as_bytes())
}

fn header<T: Record>(event: &EventHeader, user: &str, purpose: &str, quest: Uuid) -> CommandHeader {
    caused_command::<T>(
        event,
        AggregateType::User,
        user,
        command_id(event.event_id, purpose, quest),
    )
}

fn finite(value: f64, what: &str) -> Result<(), RuleError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(RuleError(format!(
            "{what} is {value}, not a finite amount >= 0"
        )))
    }
}

fn protein_of(items: &[MealItem]) -> Result<f64, RuleError> {
    for item in items {
        finite(item.protein_g, "protein_g of a meal item")?;
    }
    Ok(items.iter().map(|i| i.protein_g).sum())
}

/// Applies the event's own change to the state (activity or a confirmation).
fn record(state: &mut UserQuests, event: &Event) -> Result<(), RuleError> {
    match event {
        Event::MealLogged(e) => {
            let day = day_of(e.payload.eaten_at);
            let protein_g = protein_of(&e.payload.items)?;
            state.add_meal(e.payload.meal_id, Meal { day, protein_g });
            state.extend_streak(day);
        }
        Event::MealUpdated(e) => {
            let day = day_of(e.payload.eaten_at);
            let protein_g = protein_of(&e.payload.items)?;
            state.add_meal(e.payload.meal_id, Meal { day, protein_g });
        }
        Event::MealDeleted(e) => {
            state.meals.remove(&e.payload.meal_id);
        }
        Event::WaterIntakeLogged(e) => {
            if e.payload.millilitres <= 0 {
                return Err(RuleError(format!(
                    "water intake of {} ml is not positive",
                    e.payload.millilitres
                )));
            }
            *state
                .water_ml
                .entry(day_of(e.payload.drunk_at))
                .or_default() += i64::from(e.payload.millilitres);
        }
        Event::QuestStarted(e) => {
            let p = &e.payload;
            finite(p.target, "quest target")?;
            finite(p.progress, "quest progress")?;
            state.totals.started += 1;
            let quest = state.quests.entry(p.quest_id).or_insert_with(|| Quest {
                definition_id: p.quest_definition_id.clone(),
                kind: format!("{:?}", p.quest_kind),
                unit: format!("{:?}", p.unit),
                target: p.target,
                deadline: p.deadline,
                period_start: None,
                computed: None,
                sent: None,
                status: Status::Pending,
                progress: 0.0,
                started_at: None,
                completed_at: None,
                failed_at: None,
                xp_reward: None,
                xp_claimed: None,
            });
            quest.status = Status::Active;
            quest.progress = p.progress;
            quest.target = p.target;
            quest.deadline = p.deadline;
            quest.started_at = Some(e.header.timestamp);
        }
        Event::QuestUpdated(e) => {
            finite(e.payload.progress, "quest progress")?;
            if let Some(q) = state.quests.get_mut(&e.payload.quest_id) {
                q.progress = e.payload.progress;
            }
        }
        Event::QuestCompleted(e) => {
            finite(e.payload.progress, "quest progress")?;
            state.totals.completed += 1;
            if let Some(q) = state.quests.get_mut(&e.payload.quest_id) {
                q.status = Status::Completed;
                q.progress = e.payload.progress;
                q.completed_at = Some(e.payload.completed_at);
                q.xp_reward = Some(e.payload.xp_reward);
            }
        }
        Event::QuestFailed(e) => {
            state.totals.failed += 1;
            if let Some(q) = state.quests.get_mut(&e.payload.quest_id) {
                q.status = Status::Failed;
                q.progress = e.payload.progress;
                q.failed_at = Some(e.payload.failed_at);
            }
        }
        Event::QuestRewardClaimed(e) => {
            if e.payload.xp < 0 {
                return Err(RuleError(format!(
                    "quest reward of {} XP is negative",
                    e.payload.xp
                )));
            }
            state.totals.rewards_claimed += 1;
            state.totals.xp_claimed += i64::from(e.payload.xp);
            if let Some(q) = state.quests.get_mut(&e.payload.quest_id) {
                q.status = Status::RewardClaimed;
                q.xp_claimed = Some(e.payload.xp);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The activity day an event moves the window to, if it is activity.
fn activity_day(event: &Event) -> Option<i32> {
    match event {
        Event::MealLogged(e) => Some(day_of(e.payload.eaten_at)),
        Event::MealUpdated(e) => Some(day_of(e.payload.eaten_at)),
        Event::WaterIntakeLogged(e) => Some(day_of(e.payload.drunk_at)),
        _ => None,
    }
}

/// Starts the catalogue quests of the period holding the user's game day (the newest day of
/// activity, the clock the quests count by) that the user does not have yet.
fn start_quests(state: &mut UserQuests, user: &str, event: &EventHeader) -> Vec<Command> {
    let Some(today) = state.newest_day else {
        return Vec::new();
    };
    let mut commands = Vec::new();
    for definition in CATALOGUE {
        let period_start = definition.period.start(today);
        let id = quest_id(user, definition, period_start);
        if state.quests.contains_key(&id) {
            continue;
        }
        let quest = Quest::run_by_processor(definition, period_start);
        commands.push(Command::StartQuest(StartQuest {
            header: header::<StartQuest>(event, user, "start", id),
            payload: StartQuestPayload {
                quest_id: id,
                quest_definition_id: definition.id.to_owned(),
                quest_kind: definition.goal.kind(),
                target: definition.target,
                unit: definition.goal.unit(),
                deadline: quest.deadline,
            },
        }));
        state.quests.insert(id, quest);
    }
    commands
}

/// Recomputes the quests this processor runs and sends what changed: progress, completion
/// with its reward, or failure once the deadline has passed.
fn drive_quests(state: &mut UserQuests, user: &str, event: &EventHeader) -> Vec<Command> {
    let mut commands = Vec::new();
    let ids: Vec<Uuid> = state.quests.keys().copied().collect();
    for id in ids {
        let Some(quest) = state.quests.get(&id) else {
            continue;
        };
        let (Some(sent), Some(period_start), Some(definition)) = (
            quest.sent,
            quest.period_start,
            definition(&quest.definition_id),
        ) else {
            continue;
        };
        if sent.completed || sent.failed || quest.status.finished() {
            continue;
        }
        let mut sent = sent;
        let computed = state.progress(definition, period_start);
        // A period has passed once the user's game day starts at or after its deadline.
        let passed = |deadline: &i64| state.newest_day.is_some_and(|n| day_start(n) >= *deadline);
        if let Some(deadline) = quest.deadline.filter(passed) {
            commands.push(Command::FailQuest(FailQuest {
                header: header::<FailQuest>(event, user, "fail", id),
                payload: FailQuestPayload {
                    quest_id: id,
                    reason: QuestFailureReason::Expired,
                    failed_at: deadline,
                },
            }));
            sent.failed = true;
        } else {
            let progress = computed.min(definition.target);
            if progress != sent.progress {
                commands.push(Command::ProgressQuest(ProgressQuest {
                    header: header::<ProgressQuest>(event, user, "progress", id),
                    payload: ProgressQuestPayload {
                        quest_id: id,
                        progress,
                        source_event_id: Some(event.event_id),
                    },
                }));
                sent.progress = progress;
            }
            if progress >= definition.target {
                commands.push(Command::CompleteQuest(CompleteQuest {
                    header: header::<CompleteQuest>(event, user, "complete", id),
                    payload: CompleteQuestPayload {
                        quest_id: id,
                        completed_at: event.timestamp,
                        xp_reward: definition.xp_reward,
                    },
                }));
                commands.push(Command::ClaimQuestReward(ClaimQuestReward {
                    header: header::<ClaimQuestReward>(event, user, "claim", id),
                    payload: ClaimQuestRewardPayload {
                        quest_id: id,
                        reward_kind: RewardKind::Xp,
                        xp: definition.xp_reward,
                        items: Vec::new(),
                    },
                }));
                sent.completed = true;
            }
        }
        if let Some(quest) = state.quests.get_mut(&id) {
            // An expired quest keeps the progress its period reached: the event that ends it
            // is of a later period, by which the period's oldest days may have left the window.
            if !sent.failed {
                quest.computed = Some(computed);
            }
            quest.sent = Some(sent);
        }
    }
    commands
}

fn text(value: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(value.to_owned()))
}

fn timestamp(micros: Option<i64>) -> Option<CqlValue> {
    micros.map(|m| CqlValue::Timestamp(CqlTimestamp(m.div_euclid(1_000))))
}

fn quest_row(user: &str, id: Uuid, q: &Quest) -> Row {
    Row::upsert(
        QUESTS_BY_USER,
        vec![CqlValue::Text(user.to_owned()), CqlValue::Uuid(id)],
        vec![
            text(&q.definition_id),
            text(&q.kind),
            text(&q.unit),
            Some(CqlValue::Boolean(q.sent.is_some())),
            Some(CqlValue::Double(q.target)),
            Some(CqlValue::Double(q.progress)),
            q.computed.map(CqlValue::Double),
            text(q.status.as_str()),
            q.period_start
                .map(|d| CqlValue::Timestamp(CqlTimestamp(catalogue::day_start(d) / 1_000))),
            timestamp(q.deadline),
            timestamp(q.started_at),
            timestamp(q.completed_at),
            timestamp(q.failed_at),
            q.xp_reward.map(CqlValue::Int),
            q.xp_claimed.map(CqlValue::Int),
        ],
    )
}

fn totals_row(user: &str, state: &UserQuests) -> Row {
    let t = state.totals;
    Row::upsert(
        QUESTS_USER_TOTALS,
        vec![CqlValue::Text(user.to_owned())],
        [
            t.started,
            t.completed,
            t.failed,
            t.rewards_claimed,
            t.xp_claimed,
        ]
        .into_iter()
        .map(|v| Some(CqlValue::BigInt(v)))
        .collect(),
    )
}

impl Projection for QuestsProjection {
    type State = UserQuests;

    fn name(&self) -> &'static str {
        PROCESSOR
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn migrations(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS {keyspace}.quests_by_user (\
             user_id text, quest_id uuid, definition_id text, quest_kind text, unit text, \
             managed boolean, target double, progress double, computed_progress double, \
             status text, period_start timestamp, deadline timestamp, started_at timestamp, \
             completed_at timestamp, failed_at timestamp, xp_reward int, xp_claimed int, \
             PRIMARY KEY ((user_id), quest_id))"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS {keyspace}.quests_user_totals (\
             user_id text PRIMARY KEY, quests_started bigint, quests_completed bigint, \
             quests_failed bigint, rewards_claimed bigint, xp_claimed bigint)"
                .to_owned(),
        ]
    }

    fn wants(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "nutrition.meal.logged"
                | "nutrition.meal.updated"
                | "nutrition.meal.deleted"
                | "nutrition.water.logged"
                | "quest.started"
                | "quest.updated"
                | "quest.completed"
                | "quest.failed"
                | "quest.reward.claimed"
        )
    }

    fn entities(&self, event: &Event, _origin: &Origin<'_>) -> Vec<String> {
        vec![event.header().aggregate_id.clone()]
    }

    fn apply(
        &self,
        entity: &str,
        state: &mut UserQuests,
        event: &Event,
        _origin: &Origin<'_>,
    ) -> Result<Effects, RuleError> {
        let header = event.header();
        let mut next = state.clone();
        record(&mut next, event)?;
        let mut commands = Vec::new();
        if let Some(day) = activity_day(event) {
            next.advance(day, self.config.window_days);
            commands.extend(start_quests(&mut next, entity, header));
        }
        commands.extend(drive_quests(&mut next, entity, header));

        let mut rows: Vec<Row> = next
            .quests
            .iter()
            .filter(|(id, q)| state.quests.get(id) != Some(q))
            .map(|(id, q)| quest_row(entity, *id, q))
            .collect();
        if next.totals != state.totals {
            rows.push(totals_row(entity, &next));
        }
        *state = next;
        Ok(Effects {
            rows,
            commands,
            partials: Vec::new(),
        })
    }
}
