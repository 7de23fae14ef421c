//! The insights processor end to end on the real stack: a known history of goals, meals and
//! water for three players goes through the command processor, `run insights` draws the
//! insights it should (and none for the steady player), the command processor appends an
//! `ai.insight.created` for each, the processor restarts with its state from the state table,
//! feedback sent with `RecordFeedback` turns into the acceptance figures per user and summed
//! across users, and every documented query runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::commands::{header, register};
use common::Stack;
use dietstream::bus::{CommandBus, CommandOutcome};
use dietstream::config::Config;
use dietstream_insights::rules::Rule;
use dietstream_schemas::types::{
    AggregateType, CommandHeader, CreateInsight, CreateInsightPayload, FeedbackTargetKind,
    InsightKind, LogMeal, LogMealPayload, LogWater, LogWaterPayload, MealItem, MealSource,
    MealType, RecordFeedback, RecordFeedbackPayload, RejectionReason, SetNutritionGoal,
    SetNutritionGoalPayload,
};
use dietstream_schemas::{Command, Event};
use dietstream_topology::prefixed;
use scylla::client::session::Session;
use scylla::value::CqlDate;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(120);
/// Monday 2026-01-05, as a day number.
const MONDAY: i32 = 20_458;
const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

fn at(day: i32, hour: i64) -> i64 {
    i64::from(day) * DAY + hour * HOUR
}

/// The header, issued when the meal was eaten or the water drunk (the aggregate refuses logs
/// from more than a day after the command).
fn issued_at(mut header: CommandHeader, at: i64) -> CommandHeader {
    header.issued_at = at;
    header
}

/// A one-item meal of these kcal and grams of protein, carbohydrate and fat.
fn meal(user: &str, eaten_at: i64, (kcal, protein, carbs, fat): (f64, f64, f64, f64)) -> Command {
    Command::LogMeal(LogMeal {
        header: issued_at(
            header(user, AggregateType::User, "nutrition.meal.log", None),
            eaten_at,
        ),
        payload: LogMealPayload {
            meal_id: Uuid::new_v4(),
            meal_type: MealType::Dinner,
            eaten_at,
            items: vec![MealItem {
                food_id: "stew".to_owned(),
                food_name: "Stew".to_owned(),
                grams: 400.0,
                energy_kcal: kcal,
                protein_g: protein,
                carbohydrate_g: carbs,
                fat_g: fat,
                fibre_g: None,
                sugar_g: None,
                sodium_mg: None,
            }],
            note: None,
            source: MealSource::Manual,
        },
    })
}

fn water(user: &str, drunk_at: i64, millilitres: i32) -> Command {
    Command::LogWater(LogWater {
        header: issued_at(
            header(user, AggregateType::User, "nutrition.water.log", None),
            drunk_at,
        ),
        payload: LogWaterPayload {
            intake_id: Uuid::new_v4(),
            millilitres,
            drunk_at,
        },
    })
}

fn goal(user: &str, energy_kcal: f64, protein_g: Option<f64>) -> Command {
    Command::SetNutritionGoal(SetNutritionGoal {
        header: header(user, AggregateType::User, "nutrition.goal.set", None),
        payload: SetNutritionGoalPayload {
            energy_kcal: Some(energy_kcal),
            protein_g,
            carbohydrate_g: None,
            fat_g: None,
            fibre_g: None,
            water_ml: None,
            effective_from: MONDAY - 10,
        },
    })
}

fn feedback(user: &str, insight: Uuid, rating: i32, helpful: Option<bool>) -> Command {
    Command::RecordFeedback(RecordFeedback {
        header: header(user, AggregateType::Ai, "ai.feedback.record", None),
        payload: RecordFeedbackPayload {
            feedback_id: Uuid::new_v4(),
            target_id: insight,
            target_kind: FeedbackTargetKind::Insight,
            rating,
            helpful,
            comment: None,
        },
    })
}

/// The three players' histories, Monday 5 to Friday 9 January 2026:
/// - `low`: energy goal 2000 kcal and protein 100 g; a 1500 kcal meal with 50 g protein at
///   noon each day: 25% under the energy goal, 50% short of protein;
/// - `night`: no goal; a 2000 kcal meal at 23:00 and 800 ml of water at 10:00 each day: every
///   meal late, 60% short of the default 2 litres;
/// - `steady`: energy goal 2000; a 2000 kcal meal at noon and 2500 ml of water each day.
///
/// Macros are balanced for all three (16-21% protein, 51-59% carbohydrate, 26-28% fat).
fn history(low: &str, night: &str, steady: &str) -> Vec<Command> {
    let mut commands = vec![
        register(low),
        register(night),
        register(steady),
        goal(low, 2000.0, Some(100.0)),
        goal(steady, 2000.0, None),
    ];
    for d in 0..5 {
        let day = MONDAY + d;
        commands.push(meal(low, at(day, 12), (1500.0, 50.0, 200.0, 40.0)));
        commands.push(water(night, at(day, 10), 800));
        commands.push(meal(night, at(day, 23), (2000.0, 100.0, 250.0, 60.0)));
        commands.push(water(steady, at(day, 9), 2500));
        commands.push(meal(steady, at(day, 12), (2000.0, 100.0, 250.0, 60.0)));
    }
    commands
}

async fn execute(bus: &CommandBus, command: Command) -> CommandOutcome {
    bus.execute(command, TIMEOUT).await.expect("a result")
}

/// One row of `insights_by_user`.
#[derive(Debug, Clone, PartialEq)]
struct InsightRow {
    period_end: i32,
    insight_id: Uuid,
    rule: String,
    confidence: f64,
    title: String,
    explanation: String,
}

/// The insights stored for `user`, by kind.
async fn insights(session: &Session, ks: &str, user: &str) -> BTreeMap<String, InsightRow> {
    let rows = session
        .query_unpaged(
            format!(
                "SELECT insight_kind, period_end, insight_id, rule, confidence, title, explanation \
                 FROM {ks}.insights_by_user WHERE user_id = ?"
            ),
            (user,),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    type Columns = (String, CqlDate, Uuid, String, f64, String, String);
    rows.rows::<Columns>()
        .expect("typed")
        .map(|row| {
            let (kind, end, insight_id, rule, confidence, title, explanation) = row.expect("row");
            let period_end = i32::try_from(i64::from(end.0) - (1_i64 << 31)).expect("a day");
            let row = InsightRow {
                period_end,
                insight_id,
                rule,
                confidence,
                title,
                explanation,
            };
            (kind, row)
        })
        .collect()
}

/// Shown, feedback, accepted, rejected, rating sum and acceptance rate per user and kind.
type Acceptance = BTreeMap<(String, String), ([i64; 5], Option<f64>)>;

async fn acceptance(session: &Session, ks: &str) -> Acceptance {
    let rows = session
        .query_unpaged(
            format!(
                "SELECT user_id, insight_kind, shown, feedback, accepted, rejected, rating_sum, \
                 acceptance_rate FROM {ks}.insight_acceptance_by_user"
            ),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    type Columns = (String, String, i64, i64, i64, i64, i64, Option<f64>);
    rows.rows::<Columns>()
        .expect("typed")
        .map(|row| {
            let (user, kind, shown, fb, acc, rej, sum, rate) = row.expect("row");
            ((user, kind), ([shown, fb, acc, rej, sum], rate))
        })
        .collect()
}

/// Polls `check` until it is true, failing after [`TIMEOUT`] with `what`.
async fn until<F, Fut>(
    what: &str,
    models: &tokio::task::JoinHandle<Result<(), dietstream::run::RunError>>,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !check().await {
        assert!(!models.is_finished(), "the insights processor stopped");
        assert!(Instant::now() < deadline, "{what}: not reached in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insights_are_drawn_sent_confirmed_and_rated() {
    common::init_tracing();
    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = common::unique_name("ins");
    config.metrics.listen = "127.0.0.1:0".parse().expect("address");
    let shutdown = || {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        (stop, async move {
            let _ = stopped.await;
        })
    };
    let session = dietstream::run::migrate(&config).await.expect("migrate");
    let ks = config.cql.keyspace.clone();

    let (stop_commands, commands_stopped) = shutdown();
    let commands = tokio::spawn({
        let config = config.clone();
        async move { dietstream::run::commands(&config, commands_stopped).await }
    });
    let start_insights = |config: Config| {
        let (stop, stopped) = shutdown();
        let task = tokio::spawn(async move {
            dietstream::run::read_models(&config, &["insights"], stopped).await
        });
        (stop, task)
    };
    let (stop_models, models) = start_insights(config.clone());

    let bus = CommandBus::from_config(&config, "test").await.expect("bus");
    let low = format!("{}-low", stack.prefix);
    let night = format!("{}-night", stack.prefix);
    let steady = format!("{}-steady", stack.prefix);
    for command in history(&low, &night, &steady) {
        let outcome = execute(&bus, command).await;
        assert!(outcome.is_accepted(), "{outcome:?}");
    }

    // Friday's logs closed Thursday: four days with meals in the window Friday 2 to
    // Thursday 8 January, each player's first insights of the week of Monday 5 January.
    let expected: BTreeMap<(&str, &str), Rule> = [
        ((low.as_str(), "GOAL_PROGRESS"), Rule::EnergyVsGoal),
        ((low.as_str(), "NUTRIENT_GAP"), Rule::ProteinVsGoal),
        ((night.as_str(), "MEAL_TIMING"), Rule::LateNightEating),
        ((night.as_str(), "HYDRATION"), Rule::HydrationDeficit),
    ]
    .into_iter()
    .collect();
    // Every insight stored (the runtime sends a batch's commands before it writes its rows),
    // confirmed by the AI aggregate and counted as shown.
    until("four insights stored and shown", &models, || async {
        let mut stored = 0;
        for user in [&low, &night, &steady] {
            stored += insights(&session, &ks, user).await.len();
        }
        let shown: i64 = acceptance(&session, &ks)
            .await
            .values()
            .map(|(f, _)| f[0])
            .sum();
        stored == 4 && shown == 4
    })
    .await;

    let mut stored: BTreeMap<(String, String), InsightRow> = BTreeMap::new();
    for user in [&low, &night, &steady] {
        for (kind, row) in insights(&session, &ks, user).await {
            stored.insert((user.clone(), kind), row);
        }
    }
    assert_eq!(
        stored
            .keys()
            .map(|(u, k)| (u.as_str(), k.as_str()))
            .collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>()
    );
    for ((user, kind), rule) in &expected {
        let row = &stored[&((*user).to_owned(), (*kind).to_owned())];
        assert_eq!(row.rule, rule.name());
        assert_eq!(row.period_end, MONDAY + 3);
        assert_eq!(
            row.insight_id,
            dietstream_insights::insight_id(user, *rule, MONDAY)
        );
    }
    let low_energy = &stored[&(low.clone(), "GOAL_PROGRESS".to_owned())];
    // Coverage 4/7, strength (0.25 - 0.15) / 0.35.
    assert_eq!(low_energy.confidence, 0.37);
    assert!(
        low_energy
            .explanation
            .contains("1500 kcal a day on average, 25% below your goal of 2000 kcal"),
        "{}",
        low_energy.explanation
    );
    let low_protein = &stored[&(low.clone(), "NUTRIENT_GAP".to_owned())];
    assert!(low_protein
        .explanation
        .contains("50% short of your goal of 100 g"));
    let late = &stored[&(night.clone(), "MEAL_TIMING".to_owned())];
    assert!(
        late.explanation.contains("4 of your 4 meals"),
        "{}",
        late.explanation
    );
    // Coverage 4/7, share 1.0: strength 1.
    assert_eq!(late.confidence, 0.57);
    let dry = &stored[&(night.clone(), "HYDRATION".to_owned())];
    assert!(
        dry.explanation.contains("800 ml a day"),
        "{}",
        dry.explanation
    );

    // The event log holds one ai.insight.created per stored insight, as stored.
    let ai_topic = prefixed(&config.topology.prefix, "diet.events.ai");
    let events = common::events_of(&stack, &config, &ai_topic).await;
    let mut created: BTreeMap<(String, String), Uuid> = BTreeMap::new();
    let mut ai_partition: BTreeMap<String, i32> = BTreeMap::new();
    for (partition, event) in &events {
        if let Event::AiInsightCreated(e) = event {
            let p = &e.payload;
            let kind = dietstream_insights::rules::kind_name(p.insight_kind).to_owned();
            let key = (e.header.aggregate_id.clone(), kind);
            let row = &stored[&key];
            assert_eq!(
                (p.insight_id, p.confidence, &p.title, &p.body, p.period_end),
                (
                    row.insight_id,
                    row.confidence,
                    &row.title,
                    &row.explanation,
                    row.period_end
                )
            );
            assert!(
                e.header.causation_id.is_some(),
                "caused by the closing event"
            );
            assert!(
                created.insert(key, p.insight_id).is_none(),
                "one event per insight"
            );
            ai_partition.insert(e.header.aggregate_id.clone(), *partition);
        }
    }
    assert_eq!(created.len(), 4);

    // A repeat of an insight (what a replay sends) is refused by the aggregate.
    let (user, kind) = (&low, "GOAL_PROGRESS");
    let repeat = Command::CreateInsight(CreateInsight {
        header: header(user, AggregateType::Ai, "ai.insight.create", None),
        payload: CreateInsightPayload {
            insight_id: created[&(user.clone(), kind.to_owned())],
            insight_kind: InsightKind::GoalProgress,
            title: "again".to_owned(),
            body: String::new(),
            confidence: 0.5,
            period_start: MONDAY,
            period_end: MONDAY,
            evidence_event_ids: Vec::new(),
        },
    });
    let outcome = execute(&bus, repeat).await;
    assert_eq!(
        outcome.rejection_reason(),
        Some(RejectionReason::RuleViolation),
        "{outcome:?}"
    );

    // The processor restarts: its entities' state comes back from the state table, so the
    // feedback below adds to the figures instead of starting them again.
    stop_models.send(()).expect("processor running");
    models
        .await
        .expect("processor task")
        .expect("processor stopped cleanly");
    let (stop_models, models) = start_insights(config.clone());

    // Feedback: accepted (a 5), rejected (not helpful), accepted (helpful) then rejected (a
    // 1), neither (a 3 without an answer).
    let id = |user: &str, kind: &str| created[&(user.to_owned(), kind.to_owned())];
    for command in [
        feedback(&low, id(&low, "GOAL_PROGRESS"), 5, None),
        feedback(&low, id(&low, "NUTRIENT_GAP"), 4, Some(false)),
        feedback(&night, id(&night, "HYDRATION"), 4, Some(true)),
        feedback(&night, id(&night, "HYDRATION"), 1, None),
        feedback(&night, id(&night, "MEAL_TIMING"), 3, None),
    ] {
        let outcome = execute(&bus, command).await;
        assert!(outcome.is_accepted(), "{outcome:?}");
    }
    // Feedback on an insight the aggregate does not know is refused.
    let outcome = execute(&bus, feedback(&steady, Uuid::new_v4(), 5, None)).await;
    assert_eq!(
        outcome.rejection_reason(),
        Some(RejectionReason::RuleViolation)
    );

    until("five pieces of feedback counted", &models, || async {
        let fb: i64 = acceptance(&session, &ks)
            .await
            .values()
            .map(|(f, _)| f[1])
            .sum();
        fb == 5
    })
    .await;
    let figures = acceptance(&session, &ks).await;
    let want: Acceptance = [
        (
            (low.clone(), "GOAL_PROGRESS".to_owned()),
            ([1, 1, 1, 0, 5], Some(1.0)),
        ),
        (
            (low.clone(), "NUTRIENT_GAP".to_owned()),
            ([1, 1, 0, 1, 4], Some(0.0)),
        ),
        (
            (night.clone(), "HYDRATION".to_owned()),
            ([1, 2, 1, 1, 5], Some(0.5)),
        ),
        (
            (night.clone(), "MEAL_TIMING".to_owned()),
            ([1, 1, 0, 0, 3], None),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(figures, want);

    // Across users: one partial row per kind and partition of diet.events.ai that has users
    // with figures of that kind, and they sum to the figures per kind.
    let rows = session
        .query_unpaged(
            format!("SELECT insight_kind, source_partition FROM {ks}.insight_acceptance_all_users"),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let mut partial = BTreeSet::new();
    for row in rows.rows::<(String, i32)>().expect("typed") {
        assert!(
            partial.insert(row.expect("row")),
            "one row per kind and partition"
        );
    }
    let expected: BTreeSet<(String, i32)> = want
        .keys()
        .map(|(user, kind)| (kind.clone(), ai_partition[user]))
        .collect();
    assert_eq!(partial, expected);
    for kind in ["GOAL_PROGRESS", "NUTRIENT_GAP", "HYDRATION", "MEAL_TIMING"] {
        let summed = session
            .query_unpaged(
                format!(
                    "SELECT SUM(shown), SUM(feedback), SUM(accepted), SUM(rejected), SUM(rating_sum) \
                     FROM {ks}.insight_acceptance_all_users WHERE insight_kind = ?"
                ),
                (kind,),
            )
            .await
            .expect("select")
            .into_rows_result()
            .expect("rows")
            .single_row::<(i64, i64, i64, i64, i64)>()
            .expect("one row");
        let mut expected = [0_i64; 5];
        for ((_, k), (f, _)) in &want {
            if k == kind {
                for (sum, v) in expected.iter_mut().zip(f) {
                    *sum += v;
                }
            }
        }
        let (a, b, c, d, e) = summed;
        assert_eq!([a, b, c, d, e], expected, "{kind}");
    }

    // Every query the README gives analysts runs on these tables.
    for query in dietstream_insights::EXAMPLE_QUERIES {
        let text = query
            .replace("{keyspace}", &ks)
            .replace("'user-1'", &format!("'{low}'"))
            .replace("'2026-11-01'", "'2026-01-01'");
        let result = session
            .query_unpaged(text.as_str(), ())
            .await
            .unwrap_or_else(|e| panic!("documented query fails: {text}: {e}"))
            .into_rows_result()
            .expect("rows");
        assert!(result.rows_num() > 0, "no rows: {text}");
    }

    stop_models.send(()).expect("processor running");
    models
        .await
        .expect("processor task")
        .expect("processor stopped cleanly");
    stop_commands.send(()).expect("command processor running");
    commands
        .await
        .expect("command processor task")
        .expect("command processor stopped cleanly");
}
