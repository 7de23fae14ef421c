//! The read models over many days, against the oracle. The command processor stamps events
//! with its wall clock, so the simulator's runs (tests/read_models.rs) only ever show the
//! processors one day of event times; here a seeded synthetic log of 24 players over 120 days
//! (late November to late March) is produced straight to fresh event topics, with event times
//! spread over those days, and the nutrition, engagement, insights and quests processors run
//! to its end. Then every table of theirs is compared with the oracle (tests/common/oracle.rs,
//! computed from the events, never by calling the projections), so the rules that span days
//! are checked on real data: streaks broken by gaps, active days of 28, weekly and monthly
//! active users, cohorts by registration week, the engagement score; nutrition's closed days
//! (late meals, updates, deletions, water and goals for days before the open period), weekly
//! and monthly rollups across months, goal met per day; the insight rules' seven-day windows
//! and 28-day histories (which the processor's 29 kept days must hold), and the 90 days an
//! insight's kind is remembered for the feedback on it; the quests started, completed and
//! failed day by day and week by week, and the seven-day logging streak.
//!
//! As the command processor writes them, each aggregate's events are in time order, a meal is
//! updated or deleted only after it was logged, and `user.registered` comes first. One
//! player's events all come after everyone else's, months behind the newest of their
//! partition (the command processor's clock would not produce that), its first two days before
//! anyone else's: engagement's rule for late activities is per user, so that history counts in
//! the active-user tables like any other, also on the days only that player was active. The
//! AI topic's insights and feedback are made up by the generator (the AI aggregate's events, as
//! any client's insights would be); no command processor runs, so the commands the processors
//! send stay in `diet.commands`, where the test reads them: the goals met, one `CreateInsight`
//! per insight drawn, and the quests' commands, each on the event the rules say (no quest is
//! ever confirmed, so every quest row stays `PENDING`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::events::{meal_item, produce_all, Stamp, DAY_START};
use common::{oracle, Stack};
use dietstream_schemas::types::MealItem;
use dietstream_schemas::Event;
use dietstream_topology::prefixed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(120);
const PROCESSORS: [&str; 4] = ["nutrition", "engagement", "insights", "quests"];
const SEED: u64 = 0x5eed_2026;
const USERS: usize = 24;
/// The player whose whole history reaches the log after everyone else's (a client that synced
/// four months late, or a topic restored out of order): most of its activities are more than 31
/// days older than the newest of their partition, and still count (engagement's "Late events"
/// rule compares a user's activities with that user's own newest only).
const LATE_PLAYER: usize = 5;
/// Days of the history, from [`DAY_START`] (Wednesday 2025-11-26) on: into March 2026.
const DAYS: i64 = 120;
const DAY: i64 = 86_400_000_000;
const MINUTE: i64 = 60_000_000;
const INSIGHT_KINDS: [&str; 7] = [
    "NUTRIENT_GAP",
    "NUTRIENT_EXCESS",
    "HYDRATION",
    "MEAL_TIMING",
    "GOAL_PROGRESS",
    "HABIT_PATTERN",
    "STREAK_RISK",
];

/// One event of the history before its aggregate's version is known.
struct Draft {
    at: i64,
    user: usize,
    /// On the user's AI aggregate (`diet.events.ai`) rather than the user's own.
    ai: bool,
    session: Option<String>,
    what: What,
}

enum What {
    Registered,
    Meal(Uuid, &'static str, i64, Vec<MealItem>),
    Update(Uuid, &'static str, i64, Vec<MealItem>),
    Delete(Uuid),
    Water(i64, i32),
    Goal(Option<f64>, Option<f64>, Option<f64>, Option<i32>, i64),
    Xp(i32, i64),
    LevelUp(i32, i64),
    Insight(Uuid, &'static str, (i64, i64)),
    Feedback(Uuid, &'static str, i32, Option<bool>),
}

/// The edge cases the history holds, counted as the generator makes them, so that the test
/// fails when a change of the generator leaves one out.
#[derive(Debug, Default)]
struct Edges {
    /// Meals logged for a day before the open period (the first of the month 62 days back).
    late_meals_closed: usize,
    /// Meals logged a few days late, for open days.
    late_meals_open: usize,
    /// Updates and deletions of meals on closed days.
    closed_meal_changes: usize,
    /// Water logged for a closed day.
    late_water_closed: usize,
    /// Goals whose first day is closed.
    goals_from_closed_days: usize,
    /// Meals moved to another day.
    meals_moved: usize,
    /// Meals of closed days moved to an open day (which changes nothing).
    closed_meals_moved: usize,
    /// Players idle for more than 29 and more than 90 days in a row.
    idle_over_29: usize,
    idle_over_90: usize,
    /// Feedback on insights whose period ended more than 90 days before the newest one.
    feedback_forgotten: usize,
    /// A day missing from a player's first week, logged late on its last day: the week is
    /// seven days in a row only through that meal (the quests' streak).
    streak_day_logged_late: usize,
}

/// The first day of the month holding `day` (days since 1970-01-01).
fn month_start(day: i64) -> i64 {
    let date = oracle::date_text(day);
    let of_month: i64 = date[8..].parse().expect("day of month");
    day - of_month + 1
}

/// A meal of about `kcal` in one to three items, with balanced macros (or `fatty`: about
/// half the energy from fat) and fibre, sugar and sodium where the food data has them.
fn items(rng: &mut StdRng, kcal: f64, fatty: bool) -> Vec<MealItem> {
    let n = rng.random_range(1..=3);
    let fat = if fatty { 0.40..0.55 } else { 0.20..0.38 };
    (0..n)
        .map(|_| {
            let e = (kcal / f64::from(n) * rng.random_range(0.7..1.3)).round();
            let macros = (
                (e * rng.random_range(0.12..0.30) / 4.0).round(),
                (e * rng.random_range(0.40..0.60) / 4.0).round(),
                (e * rng.random_range(fat.clone()) / 9.0).round(),
            );
            let known = |rng: &mut StdRng, v: f64| rng.random_bool(0.7).then_some(v);
            let extras = [
                known(rng, (e / 100.0).round()),
                known(rng, (e / 40.0).round()),
                known(rng, (e * 0.8).round()),
            ];
            meal_item(e, macros, extras)
        })
        .collect()
}

/// The history of player `u`: registration, then days of meals, water, goals and XP, with
/// gaps, late logs, updates and deletions, and insights with feedback on the AI aggregate.
fn player(rng: &mut StdRng, u: usize, first_day: i64, edges: &mut Edges) -> Vec<Draft> {
    let mut out = Vec::new();
    // Registrations in the first five weeks (different ISO weeks, across a month's end).
    // The late player registers two days before anyone else: the activity of those days is
    // theirs alone, and reaches the log months after the newest of their partition.
    let registered = match u {
        0 => first_day,
        LATE_PLAYER => first_day - 2,
        _ => first_day + rng.random_range(0..35),
    };
    // Player 0 stops for 95 days, players 1 and 2 for 35 days, the others only for a day or
    // a few now and then (breaking their streaks).
    let idle = match u {
        0 => registered + 10..registered + 105,
        1 | 2 => registered + 20..registered + 55,
        _ => 0..0,
    };
    match idle.end - idle.start {
        0 => {}
        d if d > 90 => edges.idle_over_90 += 1,
        _ => edges.idle_over_29 += 1,
    }
    let keen = rng.random_range(0.6..0.97);
    // Player 4 logs every day of their first week but the fourth, whose lunch they log late
    // on the seventh.
    let forgotten = (u == 4).then_some(registered + 3);
    let fatty = u % 6 == 3;
    let sessions = u % 5 != 4;
    let session = |day: i64, part: &str| sessions.then(|| format!("s-{u}-{day}-{part}"));
    let draft = |out: &mut Vec<Draft>, at: i64, session: Option<String>, what: What| {
        out.push(Draft {
            at,
            user: u,
            ai: false,
            session,
            what,
        });
    };
    // `user.registered` is the aggregate's first event (at 06:00, before the day's meals).
    draft(
        &mut out,
        registered * DAY + 6 * 60 * MINUTE,
        session(registered, "a"),
        What::Registered,
    );
    draft(
        &mut out,
        registered * DAY + 6 * 60 * MINUTE + MINUTE,
        session(registered, "a"),
        What::Goal(
            Some(2000.0),
            Some(rng.random_range(70.0..110.0_f64).round()),
            u.is_multiple_of(3).then_some(80.0),
            u.is_multiple_of(2).then_some(2000),
            registered,
        ),
    );
    // (meal id, day, type, items) of every meal logged and not deleted.
    let mut meals: Vec<(Uuid, i64, &'static str, Vec<MealItem>)> = Vec::new();
    let (mut xp, mut level) = (0_i64, 1_i32);
    let mut insights: Vec<(Uuid, i64)> = Vec::new();
    for day in registered..first_day + DAYS {
        let first_week = forgotten.is_some_and(|f| (f - 3..f + 4).contains(&day));
        if Some(day) == forgotten
            || idle.contains(&day)
            || (day > registered && !first_week && !rng.random_bool(keen))
        {
            continue;
        }
        let at = |hour: i64, minute: i64| day * DAY + hour * 60 * MINUTE + minute * MINUTE;
        let unusual = rng.random_bool(0.04);
        let mut plan = vec![
            ("BREAKFAST", at(7, rng.random_range(0..90)), 450.0),
            ("LUNCH", at(12, rng.random_range(0..60)), 700.0),
            ("DINNER", at(18, rng.random_range(0..90)), 750.0),
        ];
        if unusual {
            plan.push(("DINNER", at(20, 0), 2500.0));
        }
        if u % 4 == 1 || rng.random_bool(0.2) {
            // Late-night snacks for some players (22:00 to 23:29 UTC).
            plan.push(("SNACK", at(22, rng.random_range(0..90)), 300.0));
        }
        for (i, (meal_type, eaten_at, kcal)) in plan.into_iter().enumerate() {
            if i > 0 && rng.random_bool(0.15) {
                continue;
            }
            let id = Uuid::from_u128(rng.random());
            let items = items(rng, kcal, fatty);
            let part = if eaten_at < at(15, 0) { "a" } else { "b" };
            draft(
                &mut out,
                eaten_at + 5 * MINUTE,
                session(day, part),
                What::Meal(id, meal_type, eaten_at, items.clone()),
            );
            meals.push((id, day, meal_type, items));
        }
        for _ in 0..rng.random_range(0..=3) {
            let drunk_at = at(rng.random_range(9..17), rng.random_range(0..60));
            let ml = rng.random_range(2..=8) * 100;
            draft(
                &mut out,
                drunk_at,
                session(day, "a"),
                What::Water(drunk_at, ml),
            );
        }
        // After the day's own logs (the clock is on this day already, and the meals changed
        // are logged): late logs, updates, deletions, goal changes, all in an evening session
        // from 23:35 on.
        let evening = |step: i64| at(23, 35) + step * MINUTE / 4;
        let open_from = month_start(day - 62);
        // A lunch of about `kcal` eaten at `hour` on `eaten`, logged late: step `step` of the
        // evening session.
        let late_lunch =
            |out: &mut Vec<Draft>,
             meals: &mut Vec<(Uuid, i64, &'static str, Vec<MealItem>)>,
             rng: &mut StdRng,
             (step, eaten, hour, kcal): (i64, i64, i64, f64)| {
                let id = Uuid::from_u128(rng.random());
                let items = items(rng, kcal, fatty);
                let eaten_at = eaten * DAY + hour * 60 * MINUTE;
                let what = What::Meal(id, "LUNCH", eaten_at, items.clone());
                draft(out, evening(step), session(day, "b"), what);
                meals.push((id, eaten, "LUNCH", items));
            };
        if let Some(f) = forgotten.filter(|f| day == f + 3) {
            late_lunch(&mut out, &mut meals, rng, (0, f, 13, 500.0));
            edges.streak_day_logged_late += 1;
        }
        if rng.random_bool(0.06) {
            let back = rng.random_range(1..=5);
            late_lunch(&mut out, &mut meals, rng, (1, day - back, 13, 500.0));
            edges.late_meals_open += 1;
        }
        if day - registered > 70 && rng.random_bool(0.05) {
            let back = rng.random_range(66..=(day - registered).min(100));
            late_lunch(&mut out, &mut meals, rng, (2, day - back, 12, 600.0));
            if day - back < open_from {
                edges.late_meals_closed += 1;
            }
        }
        if day - registered > 70 && rng.random_bool(0.03) {
            let back = rng.random_range(66..=(day - registered).min(100));
            draft(
                &mut out,
                evening(3),
                session(day, "b"),
                What::Water((day - back) * DAY + 10 * 60 * MINUTE, 700),
            );
            edges.late_water_closed += usize::from(day - back < open_from);
        }
        // Change a meal of today, of the last days (maybe moving it), or an old one.
        if !meals.is_empty() && rng.random_bool(0.25) {
            let pick = match rng.random_range(0..10) {
                0..=4 => meals.iter().rposition(|m| m.1 == day),
                5..=7 => meals.iter().rposition(|m| (day - 5..day).contains(&m.1)),
                _ => meals.iter().position(|m| day - m.1 > 64),
            };
            if let Some(index) = pick {
                let (id, meal_day, meal_type, _) = meals[index].clone();
                let closed = meal_day < open_from;
                if rng.random_bool(0.3) {
                    draft(&mut out, evening(10), session(day, "b"), What::Delete(id));
                    meals.remove(index);
                } else {
                    // Meals sometimes move to another recent day (never later than today: an
                    // update does not move the clock here), old ones to today.
                    let new_day = if rng.random_bool(0.4) {
                        edges.meals_moved += 1;
                        edges.closed_meals_moved += usize::from(closed);
                        day - rng.random_range(0..=2)
                    } else {
                        meal_day
                    };
                    let items = items(rng, 600.0, fatty);
                    let eaten_at = new_day * DAY + 15 * 60 * MINUTE;
                    draft(
                        &mut out,
                        evening(10),
                        session(day, "b"),
                        What::Update(id, meal_type, eaten_at, items.clone()),
                    );
                    if !closed {
                        meals[index] = (id, new_day, meal_type, items);
                    }
                }
                edges.closed_meal_changes += usize::from(closed);
            }
        }
        if rng.random_bool(0.03) {
            // A new goal, from a few days back or from a closed day (95 days back is before
            // the first of the month 62 days back).
            let from = if rng.random_bool(0.4) {
                edges.goals_from_closed_days += 1;
                day - 95
            } else {
                day - rng.random_range(0..5)
            };
            draft(
                &mut out,
                evening(20),
                session(day, "b"),
                What::Goal(
                    Some(rng.random_range(1800.0..2600.0_f64).round()),
                    rng.random_bool(0.7).then_some(90.0),
                    rng.random_bool(0.3).then_some(70.0),
                    rng.random_bool(0.5).then_some(1500),
                    from,
                ),
            );
        }
        if rng.random_bool(0.3) {
            let gained = rng.random_range(10..60);
            xp += i64::from(gained);
            draft(&mut out, evening(30), None, What::Xp(gained, xp));
            while xp >= 50 * i64::from(level + 1) * i64::from(level) {
                level += 1;
                draft(&mut out, evening(31), None, What::LevelUp(level, xp));
            }
        }
        // The coach: an insight about the last week now and then, feedback on some, and now
        // and then on one from long ago (forgotten after 90 days), on one never seen, or on a
        // response (not an insight).
        let ai = |out: &mut Vec<Draft>, minute: i64, what: What| {
            out.push(Draft {
                at: at(23, 50 + minute),
                user: u,
                ai: true,
                session: None,
                what,
            });
        };
        if rng.random_bool(0.12) {
            let id = Uuid::from_u128(rng.random());
            let kind = INSIGHT_KINDS[rng.random_range(0..INSIGHT_KINDS.len())];
            ai(&mut out, 1, What::Insight(id, kind, (day - 7, day - 1)));
            insights.push((id, day - 1));
        }
        if !insights.is_empty() && rng.random_bool(0.15) {
            let (id, end) = if rng.random_bool(0.3) {
                insights[0]
            } else {
                insights[insights.len() - 1]
            };
            let newest = insights.iter().map(|i| i.1).max().unwrap_or(end);
            edges.feedback_forgotten += usize::from(end < newest - 90);
            let rating = rng.random_range(1..=5);
            let helpful = match rng.random_range(0..3) {
                0 => None,
                1 => Some(true),
                _ => Some(false),
            };
            ai(&mut out, 2, What::Feedback(id, "INSIGHT", rating, helpful));
        }
        if rng.random_bool(0.01) {
            let unknown = Uuid::from_u128(rng.random());
            ai(&mut out, 3, What::Feedback(unknown, "INSIGHT", 4, None));
            ai(&mut out, 4, What::Feedback(unknown, "RESPONSE", 2, None));
        }
    }
    out
}

/// The whole history in event-time order, with each aggregate's versions from 1 on: the user
/// topic's events and the AI topic's. The events of [`LATE_PLAYER`] come after everyone
/// else's.
fn history(edges: &mut Edges) -> (Vec<Event>, Vec<Event>) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let first_day = DAY_START.div_euclid(DAY);
    let mut drafts: Vec<Draft> = (0..USERS)
        .flat_map(|u| player(&mut rng, u, first_day, edges))
        .collect();
    // Stable: a player's events of the same instant keep their order.
    drafts.sort_by_key(|d| d.at);
    let (late, mut drafts): (Vec<Draft>, Vec<Draft>) =
        drafts.into_iter().partition(|d| d.user == LATE_PLAYER);
    drafts.extend(late);
    let names: Vec<String> = (0..USERS).map(|u| format!("hist-{u:02}")).collect();
    let mut versions: BTreeMap<(usize, bool), i64> = BTreeMap::new();
    let (mut user_events, mut ai_events) = (Vec::new(), Vec::new());
    for d in &drafts {
        let version = versions.entry((d.user, d.ai)).or_default();
        *version += 1;
        let stamp = Stamp {
            aggregate: &names[d.user],
            version: *version,
            at: d.at,
            session: d.session.as_deref(),
        };
        let day = |day: i64| i32::try_from(day).expect("a day");
        let event = match &d.what {
            What::Registered => stamp.registered(),
            What::Meal(id, meal_type, eaten_at, items) => {
                stamp.meal_logged(*id, meal_type, *eaten_at, items)
            }
            What::Update(id, meal_type, eaten_at, items) => {
                stamp.meal_updated(*id, meal_type, *eaten_at, items)
            }
            What::Delete(id) => stamp.meal_deleted(*id),
            What::Water(drunk_at, ml) => stamp.water(*drunk_at, *ml),
            What::Goal(energy, protein, fat, water, from) => {
                stamp.goal_updated(*energy, *protein, *fat, *water, day(*from))
            }
            What::Xp(xp, total) => stamp.xp_awarded(*xp, *total),
            What::LevelUp(level, total) => stamp.level_up(*level, *total),
            What::Insight(id, kind, (first, last)) => {
                stamp.insight_created(*id, kind, (day(*first), day(*last)))
            }
            What::Feedback(target, kind, rating, helpful) => {
                stamp.feedback(*target, kind, *rating, *helpful)
            }
        };
        if d.ai {
            ai_events.push(event);
        } else {
            user_events.push(event);
        }
    }
    (user_events, ai_events)
}

fn partitions_of(stack: &Stack, topic: &str) -> i32 {
    let consumer: BaseConsumer = stack.consumer_config().create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    i32::try_from(metadata.topics()[0].partitions().len()).expect("partitions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_over_four_months_equals_the_oracle() {
    common::init_tracing();
    let mut edges = Edges::default();
    let (user_events, ai_events) = history(&mut edges);
    eprintln!(
        "history: {} user events, {} AI events; {edges:?}",
        user_events.len(),
        ai_events.len()
    );
    assert!(
        edges.late_meals_closed > 0
            && edges.late_meals_open > 0
            && edges.closed_meal_changes > 0
            && edges.late_water_closed > 0
            && edges.goals_from_closed_days > 0
            && edges.meals_moved > 0
            && edges.closed_meals_moved > 0
            && edges.idle_over_29 > 0
            && edges.idle_over_90 > 0
            && edges.feedback_forgotten > 0
            && edges.streak_day_logged_late > 0,
        "an edge case is missing from the history: {edges:?}"
    );

    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = common::unique_name("hist");
    config.metrics.listen = "127.0.0.1:0".parse().expect("address");
    let topic = |name| prefixed(&config.topology.prefix, name);
    let codec = dietstream_schemas::codec::Codec::new(
        config.schema_registry.registry().expect("registry"),
        &dietstream_schemas::catalog::Catalog::embedded().expect("catalog"),
    )
    .expect("codec");
    let producer: FutureProducer = config
        .kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (name, events) in [
        ("diet.events.user", &user_events),
        ("diet.events.ai", &ai_events),
    ] {
        let topic = topic(name);
        let partitions = partitions_of(&stack, &topic);
        produce_all(&producer, &codec, &topic, partitions, events).await;
    }

    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut models = tokio::spawn({
        let config = config.clone();
        async move {
            dietstream::run::read_models(&config, &PROCESSORS, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    common::wait_caught_up(&config, &PROCESSORS, 1, &mut models).await;
    eprintln!("processors caught up in {:?}", started.elapsed());

    let session = config.cql.session().await.expect("session");
    let ks = &config.cql.keyspace;
    let user = common::events_of(&stack, &config, &topic("diet.events.user")).await;
    let events: Vec<Event> = user.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        events.len(),
        user_events.len(),
        "the user topic holds the history"
    );
    let commands = common::commands_of(&stack, &config, &topic("diet.commands")).await;

    oracle::check_nutrition(&session, ks, &events).await;
    let met = oracle::check_goals_met_sent(&events, &commands);
    eprintln!("nutrition: {met} goals met checked");
    assert!(met > 0, "no goal met, so none was checked");

    let late = oracle::synced_late(&user);
    // Days whose only events are the late player's: their active-user rows exist only if the
    // late activities count.
    let mut users_of_day: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    for event in &events {
        let header = event.header();
        users_of_day
            .entry(header.timestamp.div_euclid(DAY))
            .or_default()
            .insert(&header.aggregate_id);
    }
    let late_player = format!("hist-{LATE_PLAYER:02}");
    let alone = users_of_day
        .values()
        .filter(|users| users.len() == 1 && users.contains(late_player.as_str()))
        .count();
    eprintln!(
        "engagement: {late} activities more than 31 days behind their partition, on {alone} \
         days of no other player's"
    );
    assert!(
        late > 0 && alone > 0,
        "no history reaches its partition late"
    );
    oracle::check_engagement(&session, ks, &user).await;
    oracle::check_engagement_partials(&session, ks, &user, &[]).await;

    let insights = oracle::check_insights_against(
        &session,
        ks,
        &events,
        &ai_events,
        &oracle::insights_asked(&commands),
        "CreateInsight",
    )
    .await;
    eprintln!("insights: {insights:?}");
    assert!(
        insights.insights > 0 && insights.feedback > 0 && insights.by_rule.len() == 6,
        "too little to check: {insights:?}"
    );

    let quests = oracle::check_quest_commands(&session, ks, &events, &commands).await;
    eprintln!(
        "quests: {} started, {} completed, {} failed, {} progress commands",
        quests.started.len(),
        quests.completed.len(),
        quests.failed.len(),
        quests.progressed.values().map(Vec::len).sum::<usize>()
    );
    for definition in oracle::catalogue_quests() {
        let of = |sent: &BTreeMap<oracle::QuestInstance, Uuid>| {
            sent.keys().filter(|q| q.1 == definition).count()
        };
        let failed_too = definition == "quests-streak-7" || of(&quests.failed) > 0;
        assert!(
            of(&quests.completed) > 0 && failed_too,
            "too little of {definition} to check: {quests:?}"
        );
    }

    // Quest rows are written whole at each change; their columns that stay null until the
    // quest reaches them (none is reached here: no command processor runs) are written
    // unset, not null, so that reading the table meets no tombstone.
    let (rows, tombstones) =
        common::rows_and_tombstones_read(&session, &format!("SELECT * FROM {ks}.quests_by_user"))
            .await;
    eprintln!("quests_by_user: {rows} live rows and {tombstones} tombstone cells read");
    assert!(rows > 0, "no quest row read");
    assert_eq!(tombstones, 0, "quest rows wrote null cells");

    stop.send(()).expect("processors running");
    models
        .await
        .expect("processors task")
        .expect("processors stopped cleanly");
}
