//! The AI insight read-model processor (issue 5): draws insights from rolling windows of each
//! user's meals and water ([`rules`]), stores them per user and sends them as `CreateInsight`
//! commands to the user's AI aggregate, and keeps per-kind acceptance figures from the
//! feedback on them. See `README.md` for the tables, the rules and the clock.
//!
//! Two kinds of entity, both named by the user id:
//! - on `diet.events.user` (the user aggregate: meals, water, goals) the user's recent diet
//!   ([`state::UserDiet`]); it writes `insights_by_user` and sends the commands;
//! - on `diet.events.ai` (the AI aggregate, whose id is the user id: `ai.insight.created`,
//!   `ai.feedback.received`) the user's coaching record ([`state::Coaching`]); it writes the
//!   acceptance tables.
//!
//! The runtime keys state by topic and partition, so the two never share a state, and each
//! entity's events are in one partition, in order.

pub mod rules;
pub mod state;
pub mod tables;

#[cfg(test)]
mod tests;

use dietstream_nutrition::state::{utc_day, Goal, Nutrients};
use dietstream_runtime::{
    caused_command, Effects, Origin, PartialTable, Projection, RuleError, Table,
};
use dietstream_schemas::types::{
    AggregateType, CreateInsight, CreateInsightPayload, EventHeader, FeedbackTargetKind,
    InsightKind, MealItem,
};
use dietstream_schemas::{Command, Event};
use uuid::Uuid;

use crate::rules::{Finding, Rule};
use crate::state::{Coaching, Confirmed, InsightsState, Meal, UserDiet};
use crate::tables::Drawn;
pub use crate::tables::EXAMPLE_QUERIES;

/// The processor's name in the topology.
pub const PROCESSOR: &str = "insights";

/// Namespace of the insight ids this processor derives (UUID v5 of user, rule, period).
const INSIGHT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1a51_6e7c_42d0_4b8f_9e13_c0de_5eed_a11d);

/// The event types it reads.
const EVENT_TYPES: &[&str] = &[
    "nutrition.meal.logged",
    "nutrition.meal.updated",
    "nutrition.meal.deleted",
    "nutrition.water.logged",
    "nutrition.goal.updated",
    "ai.insight.created",
    "ai.feedback.received",
];

/// The insights projection. It has no tunables: the thresholds are in [`rules`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InsightsProjection;

impl InsightsProjection {
    /// The projection.
    pub fn new() -> Self {
        InsightsProjection
    }
}

/// The id of the insight of `rule` for `user` in the period starting `period`: the same
/// whichever event draws it, so the AI aggregate refuses a second one.
pub fn insight_id(user: &str, rule: Rule, period: i32) -> Uuid {
    Uuid::new_v5(
        &INSIGHT_ID_NAMESPACE,
        format!("{user}/{}/{period}", rule.name()).as_bytes(),
    )
}

/// The id of the `CreateInsight` command caused by `event_id` for `insight`.
pub fn command_id(event_id: Uuid, insight: Uuid) -> Uuid {
    Uuid::new_v5(&event_id, format!("insights/create/{insight}").as_bytes())
}

fn rule(message: impl Into<String>) -> RuleError {
    RuleError(message.into())
}

fn day_of(micros: i64) -> i32 {
    // Checked by `dietstream_nutrition::check` before.
    utc_day(micros).unwrap_or_default()
}

fn meal(eaten_at: i64, items: &[MealItem], event: &EventHeader) -> Meal {
    Meal::new(
        day_of(eaten_at),
        eaten_at,
        Nutrients::of_items(items),
        event.event_id,
    )
}

/// What a user-topic event changes.
enum DietChange {
    Meal(Uuid, Meal),
    MealDeleted(Uuid),
    Water(i32, i64),
    Goal(Goal),
}

impl DietChange {
    /// The change, once the event passed the nutrition processor's checks (the same events,
    /// the same rules).
    fn of(event: &Event) -> Result<Option<DietChange>, RuleError> {
        dietstream_nutrition::check(event)?;
        Ok(Some(match event {
            Event::MealLogged(e) => DietChange::Meal(
                e.payload.meal_id,
                meal(e.payload.eaten_at, &e.payload.items, &e.header),
            ),
            Event::MealUpdated(e) => DietChange::Meal(
                e.payload.meal_id,
                meal(e.payload.eaten_at, &e.payload.items, &e.header),
            ),
            Event::MealDeleted(e) => DietChange::MealDeleted(e.payload.meal_id),
            Event::WaterIntakeLogged(e) => {
                DietChange::Water(day_of(e.payload.drunk_at), i64::from(e.payload.millilitres))
            }
            Event::NutritionGoalUpdated(e) => DietChange::Goal(Goal::of(&e.payload)),
            _ => return Ok(None),
        }))
    }

    /// The day this change moves the user's clock to, if it is a meal or water.
    fn day(&self) -> Option<i32> {
        match self {
            DietChange::Meal(_, m) => Some(m.day),
            DietChange::Water(day, _) => Some(*day),
            DietChange::MealDeleted(_) | DietChange::Goal(_) => None,
        }
    }
}

fn create_insight(
    event: &EventHeader,
    user: &str,
    id: Uuid,
    period: (i32, i32),
    finding: &Finding,
    evidence: Vec<Uuid>,
) -> Command {
    Command::CreateInsight(CreateInsight {
        header: caused_command::<CreateInsight>(
            event,
            AggregateType::Ai,
            user,
            command_id(event.event_id, id),
        ),
        payload: CreateInsightPayload {
            insight_id: id,
            insight_kind: finding.rule.kind(),
            title: finding.title.clone(),
            body: finding.explanation.clone(),
            confidence: finding.confidence,
            period_start: period.0,
            period_end: period.1,
            evidence_event_ids: evidence,
        },
    })
}

/// A user-topic event: the diet changes; when it moves the clock past a day, the window
/// ending on that day is judged and what the rules find (once per rule and period) is stored
/// and sent.
fn apply_diet(user: &str, diet: &mut UserDiet, event: &Event) -> Result<Effects, RuleError> {
    // Everything is checked before the state changes: on Err it is untouched.
    let Some(change) = DietChange::of(event)? else {
        return Ok(Effects::default());
    };
    let closed = change.day().and_then(|day| diet.advance(day));
    match change {
        DietChange::Meal(id, meal) => {
            diet.meals.remove(&id);
            if diet.keeps(meal.day) {
                diet.meals.insert(id, meal);
            }
        }
        DietChange::MealDeleted(id) => {
            diet.meals.remove(&id);
        }
        DietChange::Water(day, ml) => {
            if diet.keeps(day) {
                let water = diet.water.entry(day).or_default();
                water.ml += ml;
                water.event_ids.push(event.header().event_id);
            }
        }
        DietChange::Goal(goal) => diet.set_goal(goal),
    }
    let mut effects = Effects::default();
    if let Some(end) = closed {
        let header = event.header();
        for finding in rules::evaluate(&diet.window(end)) {
            let rule = finding.rule;
            let period = rule.period(end);
            if diet
                .last_period
                .get(rule.name())
                .is_some_and(|p| *p >= period)
            {
                continue;
            }
            diet.last_period.insert(rule.name().to_owned(), period);
            let id = insight_id(user, rule, period);
            let span = (rule.data_start(end), end);
            let evidence = diet.evidence(rule, end);
            let drawn = Drawn {
                user,
                insight_id: id,
                period: span,
                created_at: header.timestamp,
                evidence: &evidence,
            };
            effects.rows.push(tables::insight_row(&drawn, &finding));
            effects
                .commands
                .push(create_insight(header, user, id, span, &finding, evidence));
        }
    }
    diet.prune();
    Ok(effects)
}

/// An AI-topic event: a confirmed insight is shown, feedback on an insight counts for its
/// kind (`UNKNOWN` when the insight is older than the record keeps).
fn apply_coaching(
    user: &str,
    coaching: &mut Coaching,
    event: &Event,
) -> Result<Effects, RuleError> {
    // The user's figures before, for the change of its share of the kind's partial row.
    let before = coaching.acceptance.clone();
    // Each arm checks the event before it changes the state: on Err it is untouched.
    let kind = match event {
        Event::AiInsightCreated(e) => {
            let p = &e.payload;
            if !(0.0..=1.0).contains(&p.confidence) {
                return Err(rule(format!(
                    "confidence must be within 0..1, got {}",
                    p.confidence
                )));
            }
            coaching.insights.insert(
                p.insight_id,
                Confirmed {
                    kind: p.insight_kind,
                    period_end: p.period_end,
                },
            );
            coaching.acceptance.entry(p.insight_kind).or_default().shown += 1;
            coaching.prune();
            p.insight_kind
        }
        Event::AiFeedbackReceived(e) => {
            let p = &e.payload;
            if p.target_kind != FeedbackTargetKind::Insight {
                return Ok(Effects::default());
            }
            if !(1..=5).contains(&p.rating) {
                return Err(rule(format!("rating must be 1 to 5, got {}", p.rating)));
            }
            let kind = coaching
                .insights
                .get(&p.target_id)
                .map_or(InsightKind::Unknown, |i| i.kind);
            let figures = coaching.acceptance.entry(kind).or_default();
            figures.feedback += 1;
            figures.rating_sum += i64::from(p.rating);
            let accepted = p.helpful.unwrap_or(p.rating >= 4);
            let rejected = !p.helpful.unwrap_or(p.rating > 2);
            figures.accepted += i64::from(accepted);
            figures.rejected += i64::from(rejected);
            kind
        }
        _ => return Ok(Effects::default()),
    };
    let Some(after) = coaching.acceptance.get(&kind) else {
        return Ok(Effects::default());
    };
    let old = before.get(&kind).copied().unwrap_or_default();
    Ok(Effects {
        rows: vec![tables::acceptance_row(user, kind, after)],
        commands: Vec::new(),
        partials: tables::acceptance_partial(kind, &old, after)
            .into_iter()
            .collect(),
    })
}

impl Projection for InsightsProjection {
    type State = InsightsState;

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
        state: &mut InsightsState,
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
        match event {
            Event::AiInsightCreated(_) | Event::AiFeedbackReceived(_) => {
                apply_coaching(entity, &mut state.coaching, event)
            }
            _ => apply_diet(entity, &mut state.diet, event),
        }
    }
}
