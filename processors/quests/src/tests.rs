//! Given/when/then tests of the quests projection, its property tests under the runtime's
//! at-least-once delivery, and its refusals.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dietstream_runtime::memory::MemoryRun;
use dietstream_runtime::{Origin, Projection, Row};
use dietstream_schemas::types::{
    AggregateType, EventHeader, MealDeleted, MealDeletedPayload, MealDeletionReason, MealItem,
    MealLogged, MealLoggedPayload, MealSource, MealType, MealUpdated, MealUpdatedPayload,
    QuestCompleted, QuestCompletedPayload, QuestKind, QuestRewardClaimed,
    QuestRewardClaimedPayload, QuestStarted, QuestStartedPayload, QuestUnit, QuestUpdated,
    QuestUpdatedPayload, RewardKind, WaterIntakeLogged, WaterIntakeLoggedPayload,
};
use dietstream_schemas::{Command, Event};
use proptest::prelude::*;
use scylla::value::{CqlTimestamp, CqlValue};
use uuid::Uuid;

use super::*;
use crate::catalogue::{CATALOGUE, DAY_MICROS};
use crate::state::Streak;

const TOPIC: &str = "diet.events.user";
/// 2026-01-01T00:00:00Z (a Thursday), in µs.
const NEW_YEAR: i64 = 1_767_225_600_000_000;
const HOUR: i64 = 3_600_000_000;

fn event_header(user: &str, n: u128, event_type: &str, timestamp: i64) -> EventHeader {
    EventHeader {
        event_id: Uuid::from_u128(0xe000_0000 + n),
        event_type: event_type.to_owned(),
        aggregate_id: user.to_owned(),
        aggregate_type: AggregateType::User,
        version: i64::try_from(n).unwrap_or_default(),
        timestamp,
        user_id: Some(user.to_owned()),
        session_id: None,
        correlation_id: Some(Uuid::from_u128(0xc000_0000 + n)),
        causation_id: None,
        metadata: HashMap::new(),
    }
}

fn items(protein_g: f64) -> Vec<MealItem> {
    vec![MealItem {
        food_id: "eggs".to_owned(),
        food_name: "Eggs".to_owned(),
        grams: 100.0,
        energy_kcal: 150.0,
        protein_g,
        carbohydrate_g: 1.0,
        fat_g: 10.0,
        fibre_g: None,
        sugar_g: None,
        sodium_mg: None,
    }]
}

fn meal_logged(user: &str, n: u128, t: i64, meal: u128, eaten_at: i64, protein_g: f64) -> Event {
    Event::MealLogged(MealLogged {
        header: event_header(user, n, "nutrition.meal.logged", t),
        payload: MealLoggedPayload {
            meal_id: Uuid::from_u128(meal),
            meal_type: MealType::Lunch,
            eaten_at,
            items: items(protein_g),
            note: None,
            source: MealSource::Manual,
        },
    })
}

fn meal_updated(user: &str, n: u128, t: i64, meal: u128, eaten_at: i64, protein_g: f64) -> Event {
    Event::MealUpdated(MealUpdated {
        header: event_header(user, n, "nutrition.meal.updated", t),
        payload: MealUpdatedPayload {
            meal_id: Uuid::from_u128(meal),
            meal_type: MealType::Lunch,
            eaten_at,
            items: items(protein_g),
            note: None,
        },
    })
}

fn meal_deleted(user: &str, n: u128, t: i64, meal: u128) -> Event {
    Event::MealDeleted(MealDeleted {
        header: event_header(user, n, "nutrition.meal.deleted", t),
        payload: MealDeletedPayload {
            meal_id: Uuid::from_u128(meal),
            reason: MealDeletionReason::UserRequest,
        },
    })
}

fn water(user: &str, n: u128, t: i64, millilitres: i32) -> Event {
    Event::WaterIntakeLogged(WaterIntakeLogged {
        header: event_header(user, n, "nutrition.water.logged", t),
        payload: WaterIntakeLoggedPayload {
            intake_id: Uuid::from_u128(0xa000 + n),
            millilitres,
            drunk_at: t,
        },
    })
}

fn quest_started(user: &str, n: u128, t: i64, quest: Uuid, definition: &str, target: f64) -> Event {
    Event::QuestStarted(QuestStarted {
        header: event_header(user, n, "quest.started", t),
        payload: QuestStartedPayload {
            quest_id: quest,
            quest_definition_id: definition.to_owned(),
            quest_kind: QuestKind::Hydration,
            target,
            unit: QuestUnit::Millilitres,
            progress: 0.0,
            deadline: Some(t + DAY_MICROS),
        },
    })
}

fn quest_updated(user: &str, n: u128, t: i64, quest: Uuid, previous: f64, progress: f64) -> Event {
    Event::QuestUpdated(QuestUpdated {
        header: event_header(user, n, "quest.updated", t),
        payload: QuestUpdatedPayload {
            quest_id: quest,
            previous_progress: previous,
            progress,
            delta: progress - previous,
            source_event_id: None,
        },
    })
}

fn quest_completed(user: &str, n: u128, t: i64, quest: Uuid, progress: f64, xp: i32) -> Event {
    Event::QuestCompleted(QuestCompleted {
        header: event_header(user, n, "quest.completed", t),
        payload: QuestCompletedPayload {
            quest_id: quest,
            quest_definition_id: "any".to_owned(),
            completed_at: t,
            progress,
            xp_reward: xp,
        },
    })
}

fn reward_claimed(user: &str, n: u128, t: i64, quest: Uuid, xp: i32) -> Event {
    Event::QuestRewardClaimed(QuestRewardClaimed {
        header: event_header(user, n, "quest.reward.claimed", t),
        payload: QuestRewardClaimedPayload {
            quest_id: quest,
            reward_kind: RewardKind::Xp,
            xp,
            items: Vec::new(),
        },
    })
}

fn def(id: &str) -> &'static QuestDefinition {
    definition(id).expect("catalogue entry")
}

/// Applies `events` in order to one user's state (offsets 0, 1, ...), returning the effects.
fn given(events: &[Event]) -> (UserQuests, Vec<Effects>) {
    let projection = QuestsProjection::new();
    let mut state = UserQuests::default();
    let mut all = Vec::new();
    for (offset, event) in events.iter().enumerate() {
        let origin = Origin {
            topic: TOPIC,
            partition: 0,
            offset: offset as i64,
        };
        let user = event.header().aggregate_id.clone();
        all.push(
            projection
                .apply(&user, &mut state, event, &origin)
                .expect("applies"),
        );
    }
    (state, all)
}

fn types(commands: &[Command]) -> Vec<&'static str> {
    commands.iter().map(Command::record_type).collect()
}

fn ts(micros: i64) -> Option<CqlValue> {
    Some(CqlValue::Timestamp(CqlTimestamp(micros / 1_000)))
}

#[test]
fn the_first_activity_starts_the_catalogue_and_water_progresses_and_completes() {
    let (_, effects) = given(&[
        water("u1", 1, NEW_YEAR + 9 * HOUR, 1200),
        water("u1", 2, NEW_YEAR + 15 * HOUR, 900),
    ]);
    let water_id = quest_id("u1", def("quests-drink-2-litres"), 20454);
    assert_eq!(
        types(&effects[0].commands),
        [
            "quest.start",
            "quest.start",
            "quest.start",
            "quest.start",
            "quest.progress"
        ]
    );
    let Command::StartQuest(start) = &effects[0].commands[1] else {
        panic!("a start")
    };
    assert_eq!(start.payload.quest_id, water_id);
    assert_eq!(start.payload.deadline, Some(NEW_YEAR + DAY_MICROS));
    assert_eq!(
        start.header.causation_id,
        Some(Uuid::from_u128(0xe000_0001))
    );
    assert_eq!(
        start.header.correlation_id,
        Some(Uuid::from_u128(0xc000_0001))
    );
    assert_eq!(
        start.header.command_id,
        command_id(Uuid::from_u128(0xe000_0001), "start", water_id)
    );
    assert_eq!(
        types(&effects[1].commands),
        ["quest.progress", "quest.complete", "quest.reward.claim"]
    );
    let Command::ProgressQuest(progress) = &effects[1].commands[0] else {
        panic!("a progress")
    };
    assert_eq!(progress.payload.progress, 2000.0);
    let Command::ClaimQuestReward(claim) = &effects[1].commands[2] else {
        panic!("a claim")
    };
    assert_eq!(
        (claim.payload.xp, claim.payload.reward_kind),
        (50, RewardKind::Xp)
    );
    assert_eq!(
        effects[1].rows,
        [Row::upsert(
            QUESTS_BY_USER,
            vec![CqlValue::Text("u1".to_owned()), CqlValue::Uuid(water_id)],
            vec![
                text("quests-drink-2-litres"),
                text("Hydration"),
                text("Millilitres"),
                Some(CqlValue::Boolean(true)),
                Some(CqlValue::Double(2000.0)),
                Some(CqlValue::Double(0.0)),
                Some(CqlValue::Double(2100.0)),
                text("PENDING"),
                ts(NEW_YEAR),
                ts(NEW_YEAR + DAY_MICROS),
                None,
                None,
                None,
                None,
                None,
            ],
        )]
    );
}

#[test]
fn confirmations_set_status_progress_times_and_totals() {
    let water_id = quest_id("u1", def("quests-drink-2-litres"), 20454);
    let t = NEW_YEAR + 9 * HOUR;
    let (state, effects) = given(&[
        water("u1", 1, t, 2500),
        quest_started("u1", 2, t, water_id, "quests-drink-2-litres", 2000.0),
        quest_updated("u1", 3, t, water_id, 0.0, 2000.0),
        quest_completed("u1", 4, t, water_id, 2000.0, 50),
        reward_claimed("u1", 5, t + 1, water_id, 50),
    ]);
    assert!(effects[1..].iter().all(|e| e.commands.is_empty()));
    let q = &state.quests[&water_id];
    assert_eq!(q.status, Status::RewardClaimed);
    assert_eq!(
        (q.progress, q.started_at, q.completed_at),
        (2000.0, Some(t), Some(t))
    );
    assert_eq!((q.xp_reward, q.xp_claimed), (Some(50), Some(50)));
    assert_eq!(
        effects[4].rows.last(),
        Some(&Row::upsert(
            QUESTS_USER_TOTALS,
            vec![CqlValue::Text("u1".to_owned())],
            [1, 1, 0, 1, 50]
                .into_iter()
                .map(|v| Some(CqlValue::BigInt(v)))
                .collect(),
        ))
    );
}

#[test]
fn quests_past_their_deadline_fail_and_the_next_period_starts() {
    let (_, effects) = given(&[
        meal_logged("u1", 1, NEW_YEAR + 9 * HOUR, 1, NEW_YEAR + 8 * HOUR, 20.0),
        meal_logged(
            "u1",
            2,
            NEW_YEAR + DAY_MICROS + HOUR,
            2,
            NEW_YEAR + DAY_MICROS,
            20.0,
        ),
    ]);
    // Day one: meals 1/3, streak 1/7.
    assert_eq!(
        types(&effects[0].commands)[4..],
        ["quest.progress", "quest.progress"]
    );
    // Day two: two day quests start, the streak goes on, the two quests of day one expire.
    let fails: Vec<Uuid> = effects[1]
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::FailQuest(f) => Some(f.payload.quest_id),
            _ => None,
        })
        .collect();
    let mut expected = vec![
        quest_id("u1", def("quests-log-3-meals"), 20454),
        quest_id("u1", def("quests-drink-2-litres"), 20454),
    ];
    expected.sort();
    assert_eq!(fails, expected);
    assert_eq!(
        types(&effects[1].commands)
            .iter()
            .filter(|t| **t == "quest.start")
            .count(),
        2
    );
}

/// A player logs every day of a week but forgets the Thursday, and logs its lunch on Sunday
/// night: the week is seven days in a row, and the streak quest completes on that meal.
#[test]
fn a_meal_logged_late_for_a_missing_day_joins_the_streak() {
    let day = |d: i64| NEW_YEAR + d * DAY_MICROS + 12 * HOUR;
    let mut events: Vec<Event> = [0, 1, 2, 4, 5, 6]
        .into_iter()
        .zip(1..)
        .map(|(d, n)| meal_logged("u1", n, day(d), n, day(d), 20.0))
        .collect();
    events.push(meal_logged("u1", 7, day(6) + 9 * HOUR, 7, day(3), 20.0));
    let (state, effects) = given(&events);
    let streak_id = quest_id("u1", def("quests-streak-7"), 0);
    let completes = |effects: &Effects| {
        effects
            .commands
            .iter()
            .any(|c| matches!(c, Command::CompleteQuest(q) if q.payload.quest_id == streak_id))
    };
    assert!(
        !effects[..6].iter().any(completes),
        "no run of seven before"
    );
    assert!(completes(&effects[6]), "{:?}", types(&effects[6].commands));
    assert_eq!(
        state.streak,
        Some(Streak {
            first_day: 20454,
            last_day: 20460
        })
    );
}

#[test]
fn the_streak_keeps_64_days_and_reads_states_saved_before_it_kept_them() {
    let mut state = UserQuests::default();
    let run = |state: &UserQuests| state.streak.map(|s| (s.first_day, s.last_day));
    for day in (100..111).chain(112..130) {
        state.extend_streak(day);
    }
    assert_eq!(run(&state), Some((112, 129)));
    // Day 111 joins the run; day 65 is more than 63 days back, so its place is not kept.
    state.extend_streak(111);
    assert_eq!(run(&state), Some((100, 129)));
    state.extend_streak(65);
    assert_eq!(run(&state), Some((100, 129)));
    // A gap after the newest day starts a new run, and days logged late before the gap do
    // not reach it.
    state.extend_streak(140);
    state.extend_streak(131);
    assert_eq!(run(&state), Some((140, 140)));
    // A run longer than the kept days keeps its start; filling a gap that makes all the kept
    // days one run starts it at least 64 days back.
    for day in 141..300 {
        state.extend_streak(day);
    }
    assert_eq!(run(&state), Some((140, 299)));
    let mut holed = UserQuests::default();
    for day in (200..271).chain(272..300) {
        holed.extend_streak(day);
    }
    assert_eq!(run(&holed), Some((272, 299)));
    holed.extend_streak(271);
    assert_eq!(run(&holed), Some((236, 299)));

    // A state saved before the days were kept: its run's days count as logged.
    let mut old = UserQuests {
        streak: Some(Streak {
            first_day: 50,
            last_day: 54,
        }),
        ..UserQuests::default()
    };
    old.extend_streak(56);
    old.extend_streak(55);
    assert_eq!(run(&old), Some((50, 56)));
}

/// A player drinks 400 ml on New Year's Day and comes back ten days later: the day's water
/// quest expires then, and keeps the 400 ml its day reached, though that day has left the
/// eight-day window by the event that ends it. A day without water shows 0, not -0.
#[test]
fn an_expired_quest_keeps_the_progress_its_period_reached() {
    let back = NEW_YEAR + 10 * DAY_MICROS + 9 * HOUR;
    let (state, _) = given(&[
        water("u1", 1, NEW_YEAR + 9 * HOUR, 400),
        meal_logged("u1", 2, back, 1, back, 20.0),
    ]);
    let computed = |day: i32| {
        let quest = &state.quests[&quest_id("u1", def("quests-drink-2-litres"), day)];
        quest.computed.map(f64::to_bits)
    };
    assert_eq!(computed(20454), Some(400.0_f64.to_bits()));
    assert_eq!(computed(20464), Some(0.0_f64.to_bits()));
    let expired = &state.quests[&quest_id("u1", def("quests-drink-2-litres"), 20454)];
    assert!(expired.sent.is_some_and(|s| s.failed));
}

#[test]
fn protein_days_follow_updates_and_deletions() {
    let t = NEW_YEAR + 20 * HOUR;
    let (state, _) = given(&[
        meal_logged("u1", 1, t, 1, NEW_YEAR + HOUR, 60.0),
        meal_logged("u1", 2, t, 2, NEW_YEAR + 2 * HOUR, 50.0),
        meal_logged("u1", 3, t, 3, NEW_YEAR - DAY_MICROS, 120.0),
        meal_updated("u1", 4, t, 2, NEW_YEAR + 2 * HOUR, 30.0),
        meal_deleted("u1", 5, t, 9),
    ]);
    let protein = def("quests-protein-100-3-days");
    // Week of Monday 2025-12-29 (day 20451): Dec 31 has 120 g, Jan 1 has 90 g.
    let id = quest_id("u1", protein, 20451);
    assert_eq!(state.quests[&id].computed, Some(1.0));
    assert_eq!(state.quests[&id].sent.map(|s| s.progress), Some(1.0));
    let meals = quest_id("u1", def("quests-log-3-meals"), 20454);
    assert_eq!(state.quests[&meals].computed, Some(2.0));
}

#[test]
fn a_day_whose_meals_add_up_to_exactly_the_minimum_counts() {
    let t = NEW_YEAR + 20 * HOUR;
    // In meal-id order (the state's) these add up to 99.999 999 999 999 99 g.
    let grams = [17.0, 30.3, 20.9, 31.8];
    assert!(grams.iter().sum::<f64>() < 100.0);
    let events: Vec<Event> = (1..)
        .zip(grams)
        .map(|(n, g)| meal_logged("u1", n, t, n, NEW_YEAR + HOUR, g))
        .collect();
    let (state, _) = given(&events);
    let id = quest_id("u1", def("quests-protein-100-3-days"), 20451);
    assert_eq!(state.quests[&id].computed, Some(1.0));
}

#[test]
fn quests_the_user_started_are_mirrored_without_commands() {
    let quest = Uuid::from_u128(77);
    let (state, effects) = given(&[
        quest_started("u1", 1, NEW_YEAR, quest, "hydration-day", 2000.0),
        quest_updated("u1", 2, NEW_YEAR, quest, 0.0, 500.0),
    ]);
    assert!(effects.iter().all(|e| e.commands.is_empty()));
    let q = &state.quests[&quest];
    assert_eq!(
        (q.status, q.progress, q.sent),
        (Status::Active, 500.0, None)
    );
    let Row::Upsert { values, .. } = &effects[1].rows[0] else {
        panic!("an upsert")
    };
    assert_eq!(values[3], Some(CqlValue::Boolean(false)));
}

#[test]
fn a_repeated_event_sends_the_same_commands_with_the_same_ids() {
    let event = water("u1", 1, NEW_YEAR, 2500);
    let (_, first) = given(std::slice::from_ref(&event));
    let (_, again) = given(std::slice::from_ref(&event));
    assert_eq!(first, again);
    let mut run = MemoryRun::new();
    let projection = QuestsProjection::new();
    run.deliver(&projection, TOPIC, 0, 0, &event);
    run.deliver(&projection, TOPIC, 0, 0, &event);
    assert_eq!(run.commands(), first[0].commands.as_slice());
}

#[test]
fn broken_rules_are_refused_and_leave_the_state_unchanged() {
    let projection = QuestsProjection::new();
    let (mut state, _) = given(&[water("u1", 1, NEW_YEAR, 300)]);
    let before = state.clone();
    let origin = Origin {
        topic: TOPIC,
        partition: 0,
        offset: 5,
    };
    for bad in [
        water("u1", 2, NEW_YEAR, 0),
        meal_logged("u1", 3, NEW_YEAR, 1, NEW_YEAR, -5.0),
        meal_updated("u1", 4, NEW_YEAR, 1, NEW_YEAR, f64::NAN),
        quest_updated("u1", 5, NEW_YEAR, Uuid::from_u128(1), 0.0, -1.0),
        reward_claimed("u1", 6, NEW_YEAR, Uuid::from_u128(1), -10),
    ] {
        assert!(projection.apply("u1", &mut state, &bad, &origin).is_err());
        assert_eq!(state, before);
    }
}

#[test]
fn example_queries_are_the_readme_ones() {
    let readme = include_str!("../README.md");
    for query in EXAMPLE_QUERIES {
        assert!(readme.contains(query), "{query} is not in README.md");
        assert!(query.contains("WHERE user_id = "));
    }
    for table in QuestsProjection::new().tables() {
        assert!(readme.contains(&format!("{{keyspace}}.{}", table.name)));
    }
}

#[test]
fn migrations_create_every_table_with_its_columns() {
    let projection = QuestsProjection::new();
    let migrations = projection.migrations().join("\n");
    for table in projection.tables() {
        assert!(migrations.contains(&format!("{{keyspace}}.{} (", table.name)));
        for column in table.key.iter().chain(table.values) {
            assert!(migrations.contains(&format!("{column} ")), "{column}");
        }
    }
}

/// One generated step of a user's life.
#[derive(Debug, Clone)]
enum Step {
    Meal { backdate_hours: i64, protein_g: f64 },
    Update { meal: usize, protein_g: f64 },
    Delete { meal: usize },
    Water { millilitres: i32 },
    UserQuest { quest: u8, stage: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0i64..30, 0.0f64..80.0).prop_map(|(b, p)| Step::Meal { backdate_hours: b, protein_g: p }),
        1 => (0usize..8, 0.0f64..80.0).prop_map(|(m, p)| Step::Update { meal: m, protein_g: p }),
        1 => (0usize..8).prop_map(|m| Step::Delete { meal: m }),
        3 => (100i32..1200).prop_map(|ml| Step::Water { millilitres: ml }),
        2 => (0u8..3, 0u8..4).prop_map(|(q, s)| Step::UserQuest { quest: q, stage: s }),
    ]
}

/// The generated records: (partition, offset, event), in delivery order.
fn records(steps: &[(usize, i64, Step)]) -> Vec<(i32, i64, Event)> {
    let users = ["u0", "u1", "u2", "u3"];
    let mut offsets = [0i64; 3];
    let mut meals: HashMap<usize, Vec<u128>> = HashMap::new();
    let mut quest_stage: HashMap<(usize, u8), u8> = HashMap::new();
    let mut t = [NEW_YEAR; 4];
    let mut out = Vec::new();
    for (n, (u, gap_hours, step)) in steps.iter().enumerate() {
        let n = n as u128 + 1;
        let user = users[*u];
        t[*u] += gap_hours * HOUR;
        let now = t[*u];
        let event = match step {
            Step::Meal {
                backdate_hours,
                protein_g,
            } => {
                meals.entry(*u).or_default().push(n);
                meal_logged(user, n, now, n, now - backdate_hours * HOUR, *protein_g)
            }
            Step::Update { meal, protein_g } => match meals.get(u).and_then(|m| m.get(*meal)) {
                Some(id) => meal_updated(user, n, now, *id, now - HOUR, *protein_g),
                None => water(user, n, now, 100),
            },
            Step::Delete { meal } => match meals.get(u).and_then(|m| m.get(*meal)) {
                Some(id) => meal_deleted(user, n, now, *id),
                None => water(user, n, now, 150),
            },
            Step::Water { millilitres } => water(user, n, now, *millilitres),
            Step::UserQuest { quest, stage } => {
                let id = Uuid::from_u128(0x9000 + (*u as u128) * 16 + u128::from(*quest));
                let at = quest_stage.entry((*u, *quest)).or_insert(0);
                let event = match (*at, stage) {
                    (0, _) => quest_started(user, n, now, id, "user-quest", 10.0),
                    (1, 0 | 1) => quest_updated(user, n, now, id, 0.0, f64::from(*stage) + 1.0),
                    (1, _) => quest_completed(user, n, now, id, 5.0, 20),
                    (2, _) => reward_claimed(user, n, now, id, 20),
                    _ => water(user, n, now, 200),
                };
                if *at == 0 || (*at == 1 && *stage >= 2) || *at == 2 {
                    *at += 1;
                }
                event
            }
        };
        let partition = (*u % 3) as i32;
        let p = partition as usize;
        out.push((partition, offsets[p], event));
        offsets[p] += 1;
    }
    out
}

fn clean(records: &[(i32, i64, Event)]) -> MemoryRun<UserQuests> {
    let projection = QuestsProjection::new();
    let mut run = MemoryRun::new();
    for (partition, offset, event) in records {
        run.deliver(&projection, TOPIC, *partition, *offset, event);
    }
    run.commit();
    run
}

/// Distinct commands by id; panics when one id carries two different commands.
fn by_id(commands: &[Command]) -> BTreeMap<Uuid, Command> {
    let mut out = BTreeMap::new();
    for c in commands {
        let id = c.header().command_id;
        if let Some(previous) = out.insert(id, c.clone()) {
            assert_eq!(&previous, c, "one command id, two commands");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn duplicates_replays_and_crashes_change_nothing(
        steps in prop::collection::vec((0usize..4, 0i64..9, step()), 1..80),
        plan in prop::collection::vec((1usize..7, any::<bool>(), 0usize..4), 1..40),
    ) {
        let records = records(&steps);
        let once = clean(&records);
        let projection = QuestsProjection::new();
        let mut chaos = MemoryRun::new();
        let mut committed = 0;
        let mut plan = plan.into_iter().cycle();
        while committed < records.len() {
            let (size, crash, replay) = plan.next().unwrap_or((1, false, 0));
            let end = (committed + size).min(records.len());
            // A few already committed records come again before the batch.
            for (partition, offset, event) in &records[committed.saturating_sub(replay)..end] {
                chaos.deliver(&projection, TOPIC, *partition, *offset, event);
            }
            if crash {
                // The restarted loop delivers the batch again from the last committed point.
                chaos.crash();
                for (partition, offset, event) in &records[committed..end] {
                    chaos.deliver(&projection, TOPIC, *partition, *offset, event);
                }
            }
            chaos.commit();
            committed = end;
        }
        prop_assert_eq!(once.tables(), chaos.tables());
        prop_assert!(once.rejected().is_empty());
        let clean_ids: Vec<Uuid> = once.commands().iter().map(|c| c.header().command_id).collect();
        let distinct: BTreeSet<Uuid> = clean_ids.iter().copied().collect();
        prop_assert_eq!(clean_ids.len(), distinct.len(), "a command sent twice in one pass");
        prop_assert_eq!(by_id(once.commands()), by_id(chaos.commands()));
    }

    #[test]
    fn rows_and_commands_match_an_oracle(
        steps in prop::collection::vec((0usize..4, 0i64..9, step()), 1..80),
    ) {
        let records = records(&steps);
        let run = clean(&records);

        // Totals and mirrored quests, straight from the quest events.
        let mut totals: BTreeMap<String, [i64; 5]> = BTreeMap::new();
        let mut mirrored: BTreeMap<(String, Uuid), (String, f64)> = BTreeMap::new();
        // Water per user and game day; the game days each user reached (the newest day of
        // activity, by the meals' and water's own times, is the quests' clock).
        let mut water_ml: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut active_days: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut newest: BTreeMap<String, i32> = BTreeMap::new();
        for (_, _, event) in &records {
            let user = event.header().aggregate_id.clone();
            let activity = match event {
                Event::MealLogged(e) => Some(e.payload.eaten_at),
                Event::MealUpdated(e) => Some(e.payload.eaten_at),
                Event::WaterIntakeLogged(e) => Some(e.payload.drunk_at),
                _ => None,
            };
            let day = activity.map_or(0, |at| at.div_euclid(DAY_MICROS) as i32);
            if activity.is_some() {
                let reached = newest.entry(user.clone()).or_insert(day);
                *reached = (*reached).max(day);
                active_days.insert((user.clone(), *reached));
            }
            match event {
                Event::QuestStarted(e) => {
                    totals.entry(user.clone()).or_default()[0] += 1;
                    mirrored.insert((user, e.payload.quest_id), ("ACTIVE".to_owned(), 0.0));
                }
                Event::QuestUpdated(e) => {
                    if let Some(m) = mirrored.get_mut(&(user, e.payload.quest_id)) {
                        m.1 = e.payload.progress;
                    }
                }
                Event::QuestCompleted(e) => {
                    totals.entry(user.clone()).or_default()[1] += 1;
                    if let Some(m) = mirrored.get_mut(&(user, e.payload.quest_id)) {
                        *m = ("COMPLETED".to_owned(), e.payload.progress);
                    }
                }
                Event::QuestRewardClaimed(e) => {
                    let t = totals.entry(user.clone()).or_default();
                    t[3] += 1;
                    t[4] += i64::from(e.payload.xp);
                    if let Some(m) = mirrored.get_mut(&(user, e.payload.quest_id)) {
                        m.0 = "REWARD_CLAIMED".to_owned();
                    }
                }
                Event::WaterIntakeLogged(e) => {
                    *water_ml.entry((user, day)).or_default() += i64::from(e.payload.millilitres);
                }
                _ => {}
            }
        }
        let tables = run.tables();
        let empty = BTreeMap::new();
        let total_rows = tables.get(QUESTS_USER_TOTALS).unwrap_or(&empty);
        prop_assert_eq!(total_rows.len(), totals.len());
        for (user, t) in &totals {
            let key = format!("{:?}", [CqlValue::Text(user.clone())]);
            let expected: Vec<Option<CqlValue>> = t.iter().map(|v| Some(CqlValue::BigInt(*v))).collect();
            prop_assert_eq!(total_rows.get(&key), Some(&expected));
        }
        let quest_rows = tables.get(QUESTS_BY_USER).unwrap_or(&empty);
        for ((user, id), (status, progress)) in &mirrored {
            let key = format!("{:?}", [CqlValue::Text(user.clone()), CqlValue::Uuid(*id)]);
            let row = quest_rows.get(&key).expect("a mirrored quest row");
            prop_assert_eq!(&row[7], &text(status));
            prop_assert_eq!(&row[5], &Some(CqlValue::Double(*progress)));
        }

        // Every catalogue quest of every game day reached is started once, and a water quest
        // is completed exactly on the days with at least two litres.
        let mut starts: BTreeSet<(String, Uuid)> = BTreeSet::new();
        for (user, day) in &active_days {
            for d in CATALOGUE {
                starts.insert((user.clone(), quest_id(user, d, d.period.start(*day))));
            }
        }
        let sent: Vec<(String, Uuid)> = run.commands().iter().filter_map(|c| match c {
            Command::StartQuest(s) => Some((s.header.aggregate_id.clone(), s.payload.quest_id)),
            _ => None,
        }).collect();
        prop_assert_eq!(sent.len(), starts.len());
        prop_assert_eq!(sent.into_iter().collect::<BTreeSet<_>>(), starts);
        let completed: BTreeSet<(String, Uuid)> = run.commands().iter().filter_map(|c| match c {
            Command::CompleteQuest(s) => Some((s.header.aggregate_id.clone(), s.payload.quest_id)),
            _ => None,
        }).collect();
        let drink = def("quests-drink-2-litres");
        for ((user, day), ml) in &water_ml {
            let id = quest_id(user, drink, *day);
            prop_assert_eq!(completed.contains(&(user.clone(), id)), *ml >= 2000, "{} day {}", user, day);
        }
    }
}

#[test]
fn state_keeps_only_the_window_and_open_quests() {
    let later = NEW_YEAR + 10 * DAY_MICROS;
    let (state, _) = given(&[
        meal_logged("u1", 1, NEW_YEAR, 1, NEW_YEAR, 30.0),
        water("u1", 2, NEW_YEAR, 500),
        water("u1", 3, later, 500),
        water("u1", 4, later + 1, 500),
    ]);
    assert!(state.meals.is_empty());
    assert_eq!(state.water_ml.keys().copied().collect::<Vec<_>>(), [20464]);
    // Day one's quests ended (failure sent) and fell out of the window; its week's quest ended
    // too but its deadline (Monday 5 January) is still inside; the streak quest, today's and
    // this week's remain.
    let mut left: Vec<&str> = state
        .quests
        .values()
        .map(|q| q.definition_id.as_str())
        .collect();
    left.sort_unstable();
    assert_eq!(
        left,
        [
            "quests-drink-2-litres",
            "quests-log-3-meals",
            "quests-protein-100-3-days",
            "quests-protein-100-3-days",
            "quests-streak-7"
        ]
    );
}
