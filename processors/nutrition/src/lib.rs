//! The nutrition read-model processor (issue 5): per user and UTC day the energy, macros,
//! fibre, sugar, sodium, water and meals by type against the user's goal, weekly and monthly
//! rollups, and the per-day figures across all users as one partial row per source partition,
//! summed when read.
//!
//! It reads the user topic's nutrition events (`nutrition.meal.logged`, `.updated`,
//! `.deleted`, `nutrition.water.logged`, `nutrition.goal.updated`). The entity is the user
//! (the event's aggregate id): all of a user's events are in one source partition, in order.
//! Every row is computed from the user's state ([`state::UserNutrition`]), never accumulated,
//! so a meal updated moves its figures (possibly to another day) and a deleted meal's figures
//! leave. The across-users figures are the runtime's partial rows
//! ([`dietstream_runtime::projection`]): for every day an event touches, the user reports the
//! change of its contribution ([`tables::contribution`], computed from the state before and
//! after the event), which the runtime adds to its partition's row of that day. The tables are
//! in [`tables`] and the README.
//!
//! It sends commands: when an event makes an open day reach a minimum target (energy, protein,
//! fibre, water) of the goal in force, it sends `nutrition.goal.met.record` for that day and
//! target ([`goals_met`]), once per state history; the command processor appends
//! `nutrition.goal.met` and refuses a repeat (after a crash a record may be applied, and its
//! command sent, again).

pub mod state;
pub mod tables;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use dietstream_runtime::{
    caused_command, Effects, Origin, PartialTable, Projection, RuleError, Table,
};
use dietstream_schemas::types::{
    AggregateType, EventHeader, MealItem, MealType, NutritionGoalKind, RecordGoalMet,
    RecordGoalMetPayload,
};
use dietstream_schemas::{Command, Event};
use serde::Deserialize;
use uuid::Uuid;

use state::{month_start, utc_day, week_start, Goal, Meal, Nutrients, UserNutrition};
pub use tables::EXAMPLE_QUERIES;

/// The processor's name as the topology spells it.
pub const PROCESSOR: &str = "nutrition";

/// The event types it reads.
const EVENT_TYPES: &[&str] = &[
    "nutrition.meal.logged",
    "nutrition.meal.updated",
    "nutrition.meal.deleted",
    "nutrition.water.logged",
    "nutrition.goal.updated",
];

/// Tunables of the nutrition projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NutritionConfig {
    /// How far back, in days from the newest event day of a user, events still change that
    /// user's figures. The open period starts on the first day of the month that far back
    /// (so months are whole); older days are closed, their rows final, their meals dropped
    /// from the state. Bounds the state of a user to about `window_days` + 37 days of meals.
    #[serde(default = "default_window_days")]
    pub window_days: i32,
}

/// 62 days: the command processor's window of daily totals (`DAY_WINDOW`), so a late
/// correction it still counts is counted here too (and a goal it reaches is still sent).
const fn default_window_days() -> i32 {
    62
}

impl Default for NutritionConfig {
    fn default() -> Self {
        NutritionConfig {
            window_days: default_window_days(),
        }
    }
}

/// The nutrition analytics projection.
#[derive(Debug, Clone, Default)]
pub struct NutritionProjection {
    config: NutritionConfig,
}

impl NutritionProjection {
    /// The projection with the default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// The projection with this configuration.
    pub fn with_config(config: NutritionConfig) -> Self {
        NutritionProjection { config }
    }
}

/// What one event changes in a user's state, validated.
enum Change {
    /// A meal logged: it replaces any previous version.
    Meal(Uuid, Meal),
    /// A meal's new version, replacing the one the state holds.
    MealUpdated(Uuid, Meal),
    /// A meal deleted.
    MealDeleted(Uuid),
    /// Water drunk on a day, ml.
    Water(i32, i64),
    /// New targets from a day on.
    Goal(Goal),
}

fn rule(message: impl Into<String>) -> RuleError {
    RuleError(message.into())
}

/// The id of the `nutrition.goal.met.record` for `goal` on `day` caused by the event
/// `event_id` (DESIGN decision 3): the same whenever that event is applied again.
pub fn command_id(event_id: Uuid, day: i32, goal: NutritionGoalKind) -> Uuid {
    Uuid::new_v5(
        &event_id,
        format!("nutrition/goal-met/{day}/{goal:?}").as_bytes(),
    )
}

/// The `nutrition.goal.met.record` commands for the minimum targets the `days` of `user` now
/// reach and that were not sent yet, caused by the event `cause`; they are marked as sent.
pub fn goals_met(
    user: &str,
    state: &mut UserNutrition,
    days: &BTreeSet<i32>,
    cause: &EventHeader,
) -> Vec<Command> {
    let mut commands = Vec::new();
    for &day in days {
        let Some(goal) = state.goal_on(day).copied() else {
            continue;
        };
        for (kind, target, achieved) in goal.minimums_reached(&state.day(day)) {
            if !state.goals_sent.insert((day, kind)) {
                continue;
            }
            commands.push(Command::RecordGoalMet(RecordGoalMet {
                header: caused_command::<RecordGoalMet>(
                    cause,
                    AggregateType::User,
                    user,
                    command_id(cause.event_id, day, kind),
                ),
                payload: RecordGoalMetPayload {
                    date: day,
                    goal: kind,
                    target,
                    achieved,
                },
            }));
        }
    }
    commands
}

fn day_of(micros: i64, field: &str) -> Result<i32, RuleError> {
    utc_day(micros).ok_or_else(|| rule(format!("{field} {micros} is not a representable time")))
}

fn amount(value: f64, field: &str) -> Result<(), RuleError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(rule(format!(
            "{field} must be a finite amount >= 0, got {value}"
        )))
    }
}

fn check_items(items: &[MealItem]) -> Result<(), RuleError> {
    if items.is_empty() {
        return Err(rule("a meal has at least one item"));
    }
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| format!("items[{i}].{name}");
        amount(item.grams, &field("grams"))?;
        amount(item.energy_kcal, &field("energy_kcal"))?;
        amount(item.protein_g, &field("protein_g"))?;
        amount(item.carbohydrate_g, &field("carbohydrate_g"))?;
        amount(item.fat_g, &field("fat_g"))?;
        for (name, value) in [
            ("fibre_g", item.fibre_g),
            ("sugar_g", item.sugar_g),
            ("sodium_mg", item.sodium_mg),
        ] {
            if let Some(value) = value {
                amount(value, &field(name))?;
            }
        }
    }
    Ok(())
}

impl Change {
    /// A meal logged or updated, validated.
    fn meal(meal_type: MealType, eaten_at: i64, items: &[MealItem]) -> Result<Meal, RuleError> {
        check_items(items)?;
        Ok(Meal {
            day: day_of(eaten_at, "eaten_at")?,
            meal_type,
            nutrients: Nutrients::of_items(items),
        })
    }

    /// The change an event makes, or the rule it breaks; `None` for an event it ignores.
    fn of(event: &Event) -> Result<Option<Change>, RuleError> {
        let change = match event {
            Event::MealLogged(e) => {
                let p = &e.payload;
                Change::Meal(p.meal_id, Change::meal(p.meal_type, p.eaten_at, &p.items)?)
            }
            Event::MealUpdated(e) => {
                let p = &e.payload;
                Change::MealUpdated(p.meal_id, Change::meal(p.meal_type, p.eaten_at, &p.items)?)
            }
            Event::MealDeleted(e) => Change::MealDeleted(e.payload.meal_id),
            Event::WaterIntakeLogged(e) => {
                let p = &e.payload;
                if p.millilitres <= 0 {
                    return Err(rule(format!(
                        "millilitres must be > 0, got {}",
                        p.millilitres
                    )));
                }
                Change::Water(day_of(p.drunk_at, "drunk_at")?, i64::from(p.millilitres))
            }
            Event::NutritionGoalUpdated(e) => {
                let p = &e.payload;
                for (name, value) in [
                    ("energy_kcal", p.energy_kcal),
                    ("protein_g", p.protein_g),
                    ("carbohydrate_g", p.carbohydrate_g),
                    ("fat_g", p.fat_g),
                    ("fibre_g", p.fibre_g),
                    ("water_ml", p.water_ml.map(f64::from)),
                ] {
                    if let Some(value) = value {
                        amount(value, name)?;
                    }
                }
                if state::date_of(p.effective_from).is_none() {
                    return Err(rule(format!(
                        "effective_from {} is not a representable date",
                        p.effective_from
                    )));
                }
                Change::Goal(Goal::of(p))
            }
            _ => return Ok(None),
        };
        Ok(Some(change))
    }
}

/// Checks a nutrition event (`nutrition.meal.logged`, `.updated`, `.deleted`,
/// `nutrition.water.logged`, `nutrition.goal.updated`) against the rules this processor
/// applies: finite non-negative amounts, at least one item, positive water, representable
/// times and dates. Other events pass. For processors that read the same events.
pub fn check(event: &Event) -> Result<(), RuleError> {
    Change::of(event).map(|_| ())
}

impl Projection for NutritionProjection {
    type State = UserNutrition;

    fn name(&self) -> &'static str {
        PROCESSOR
    }

    fn tables(&self) -> &'static [Table] {
        tables::TABLES
    }

    fn partials(&self) -> &'static [PartialTable] {
        tables::PARTIALS
    }

    fn migrations(&self) -> Vec<String> {
        tables::migrations()
    }

    fn wants(&self, event_type: &str) -> bool {
        EVENT_TYPES.contains(&event_type)
    }

    fn entities(&self, event: &Event, _origin: &Origin<'_>) -> Vec<String> {
        if self.wants(&event.header().event_type) {
            vec![event.header().aggregate_id.clone()]
        } else {
            Vec::new()
        }
    }

    fn apply(
        &self,
        entity: &str,
        state: &mut UserNutrition,
        event: &Event,
        _origin: &Origin<'_>,
    ) -> Result<Effects, RuleError> {
        let header = event.header();
        if header.aggregate_id.is_empty() || header.aggregate_id != entity {
            return Err(rule(format!(
                "event of aggregate {:?} applied to user {entity:?}",
                header.aggregate_id
            )));
        }
        // Everything is checked before the state changes: on Err it is untouched.
        let Some(change) = Change::of(event)? else {
            return Ok(Effects::default());
        };
        let window = self.config.window_days;
        // The stream's clock is the newest day a meal or a drink is logged for, as in the
        // command processor's window: the game's days, not the time the event was written.
        match &change {
            Change::Meal(_, meal) | Change::MealUpdated(_, meal) => state.advance(meal.day, window),
            Change::Water(day, _) => state.advance(*day, window),
            Change::MealDeleted(_) | Change::Goal(_) => {}
        }
        // The user's share of the across-users rows of every day the change may touch, before
        // it: the partial rows take the difference.
        let candidates: Vec<i32> = match &change {
            Change::Meal(id, meal) | Change::MealUpdated(id, meal) => state
                .meals
                .get(id)
                .map(|old| old.day)
                .into_iter()
                .chain([meal.day])
                .collect(),
            Change::MealDeleted(id) => state.meals.get(id).map(|old| old.day).into_iter().collect(),
            Change::Water(day, _) => vec![*day],
            Change::Goal(_) => state.logged_days(),
        };
        let before: BTreeMap<i32, tables::Contribution> = candidates
            .into_iter()
            .map(|day| (day, tables::contribution(state, day)))
            .collect();
        let mut touched = BTreeSet::new();
        match change {
            // The user aggregate updates only meals logged and not deleted, and the state holds
            // every such meal of the open days: a meal it does not hold is on a closed day
            // (logged for one, moved to one, or dropped with one), and is final.
            Change::MealUpdated(id, _) if !state.meals.contains_key(&id) => {
                return Ok(Effects::default());
            }
            Change::Meal(id, meal) | Change::MealUpdated(id, meal) => {
                if let Some(old) = state.meals.get(&id) {
                    // A meal of a closed day is final.
                    if !state.is_open(old.day, window) {
                        return Ok(Effects::default());
                    }
                    touched.insert(old.day);
                    state.meals.remove(&id);
                }
                if state.is_open(meal.day, window) {
                    touched.insert(meal.day);
                    state.meals.insert(id, meal);
                }
            }
            Change::MealDeleted(id) => {
                if let Some(old) = state.meals.get(&id).copied() {
                    if state.is_open(old.day, window) {
                        touched.insert(old.day);
                        state.meals.remove(&id);
                    }
                }
            }
            Change::Water(day, ml) => {
                if state.is_open(day, window) {
                    touched.insert(day);
                    *state.water_ml.entry(day).or_default() += ml;
                }
            }
            Change::Goal(mut goal) => {
                // Closed days keep the goal they were judged against.
                let open = state.open_from(window).unwrap_or(goal.effective_from);
                goal.effective_from = goal.effective_from.max(open);
                state.set_goal(goal);
                touched.extend(
                    state
                        .logged_days()
                        .into_iter()
                        .filter(|d| *d >= goal.effective_from),
                );
            }
        }
        let partials = touched
            .iter()
            .filter_map(|day| {
                let old = before.get(day).copied().unwrap_or_default();
                tables::day_partial(*day, &old, &tables::contribution(state, *day))
            })
            .collect();
        // Touched days are open: a closed day sends nothing.
        let commands = goals_met(entity, state, &touched, header);
        Ok(Effects {
            rows: rows(entity, state, &touched),
            commands,
            partials,
        })
    }
}

/// The rows of the touched days, then of their weeks and months.
fn rows(
    user: &str,
    state: &UserNutrition,
    touched: &BTreeSet<i32>,
) -> Vec<dietstream_runtime::Row> {
    let mut rows = Vec::new();
    for day in touched {
        rows.extend(tables::day_rows(user, state, *day));
    }
    let weeks: BTreeSet<i32> = touched.iter().map(|d| week_start(*d)).collect();
    rows.extend(weeks.iter().map(|w| tables::week_row(user, state, *w)));
    let months: BTreeSet<i32> = touched.iter().map(|d| month_start(*d)).collect();
    rows.extend(months.iter().map(|m| tables::month_row(user, state, *m)));
    rows
}
