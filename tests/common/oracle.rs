//! The read models' oracle: what the tables of nutrition, engagement and quests must hold,
//! computed here from the event log alone (never by calling the projections), and the checks
//! that compare it with the tables as analysts read them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use dietstream::config::Config;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::types::{MealItem, MealType};
use dietstream_schemas::Event;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::value::{CqlDate, CqlTimestamp};
use uuid::Uuid;

use super::Stack;

const TIMEOUT: Duration = Duration::from_secs(120);
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Every record of `topic` that decodes as an event, in log order per partition (records
/// that do not decode are the dead letters of a test, not events).
pub async fn events_of(stack: &Stack, config: &Config, topic: &str) -> Vec<Event> {
    let codec = Codec::new(
        config.schema_registry.registry().expect("registry"),
        &Catalog::embedded().expect("catalog"),
    )
    .expect("codec");
    let consumer: BaseConsumer = stack
        .consumer_config()
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("partition");
        let (_, end) = consumer
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .expect("watermarks");
        ends.insert(partition.id(), end);
    }
    consumer.assign(&list).expect("assign");
    let mut payloads = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let positions = consumer.position().expect("positions");
        let done = positions.elements().iter().all(|e| match e.offset() {
            Offset::Offset(at) => at >= ends[&e.partition()],
            _ => ends[&e.partition()] == 0,
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{topic} not read in time");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("record");
            if let Some(payload) = message.payload() {
                payloads.push(payload.to_vec());
            }
        }
    }
    let mut events = Vec::with_capacity(payloads.len());
    for payload in payloads {
        if let Ok(event) = codec.decode_event(&payload).await {
            events.push(event);
        }
    }
    events
}

/// Rows of a CQL query as JSON objects (`SELECT JSON`).
async fn json_rows(session: &Session, query: String) -> Vec<serde_json::Value> {
    let rows = session
        .query_unpaged(query.as_str(), ())
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .into_rows_result()
        .expect("rows");
    rows.rows::<(String,)>()
        .expect("one text column")
        .map(|row| serde_json::from_str(&row.expect("row").0).expect("JSON row"))
        .collect()
}

/// Every row of every table in `tables`, as sorted JSON text: two keyspaces written from the
/// same log must give the same dump.
pub async fn dump(session: &Session, keyspace: &str, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for table in tables {
        let mut rows: Vec<String> =
            json_rows(session, format!("SELECT JSON * FROM {keyspace}.{table}"))
                .await
                .into_iter()
                .map(|row| format!("{table} {row}"))
                .collect();
        rows.sort();
        out.extend(rows);
    }
    out
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), as CQL prints dates in JSON.
pub fn date_text(day: i64) -> String {
    // Civil from days (H. Hinnant).
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn day_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

/// The Monday of the ISO week holding `day` (1970-01-01 was a Thursday).
fn week_start(day: i64) -> i64 {
    day - (day + 3).rem_euclid(7)
}

/// The first day of the month holding `day`.
fn month_start(day: i64) -> i64 {
    let text = date_text(day);
    let of_month: i64 = text[8..].parse().expect("day of month");
    day - of_month + 1
}

fn day_number(date: CqlDate) -> i64 {
    i64::from(date.0) - (1_i64 << 31)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

fn same(got: Option<f64>, want: Option<f64>) -> bool {
    match (got, want) {
        (Some(a), Some(b)) => close(a, b),
        (None, None) => true,
        _ => false,
    }
}

// --- nutrition ---------------------------------------------------------------------------

/// A nutrition figure set of one day (or of a week or month: the sums of its days).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    energy: f64,
    protein: f64,
    carbohydrate: f64,
    fat: f64,
    fibre: Option<f64>,
    sugar: Option<f64>,
    sodium: Option<f64>,
    water: i64,
    meals: i64,
    by_type: [i64; 5],
    /// Goal met (Some(true)), missed (Some(false)), no target in force (None); for a day.
    goal_met: Option<bool>,
    days: i64,
    days_with_goal: i64,
    days_goal_met: i64,
}

fn add_known(sum: &mut Option<f64>, value: Option<f64>) {
    if let Some(v) = value {
        *sum = Some(sum.unwrap_or(0.0) + v);
    }
}

impl Figures {
    fn add_items(&mut self, meal_type: MealType, items: &[MealItem]) {
        for item in items {
            self.energy += item.energy_kcal;
            self.protein += item.protein_g;
            self.carbohydrate += item.carbohydrate_g;
            self.fat += item.fat_g;
            add_known(&mut self.fibre, item.fibre_g);
            add_known(&mut self.sugar, item.sugar_g);
            add_known(&mut self.sodium, item.sodium_mg);
        }
        self.meals += 1;
        let slot = match meal_type {
            MealType::Breakfast => 0,
            MealType::Lunch => 1,
            MealType::Dinner => 2,
            MealType::Snack => 3,
            _ => 4,
        };
        self.by_type[slot] += 1;
    }

    fn add_day(&mut self, day: &Figures) {
        self.energy += day.energy;
        self.protein += day.protein;
        self.carbohydrate += day.carbohydrate;
        self.fat += day.fat;
        add_known(&mut self.fibre, day.fibre);
        add_known(&mut self.sugar, day.sugar);
        add_known(&mut self.sodium, day.sodium);
        self.water += day.water;
        self.meals += day.meals;
        for (sum, n) in self.by_type.iter_mut().zip(day.by_type) {
            *sum += n;
        }
        self.days += 1;
        self.days_with_goal += i64::from(day.goal_met.is_some());
        self.days_goal_met += i64::from(day.goal_met == Some(true));
    }

    /// Differences with a table row read as JSON (columns as the README names them).
    fn differences(&self, row: &serde_json::Value, rollup: bool) -> Vec<String> {
        let f = |name: &str| row[name].as_f64();
        let i = |name: &str| row[name].as_i64().unwrap_or(0);
        let mut out = Vec::new();
        for (name, want) in [
            ("energy_kcal", self.energy),
            ("protein_g", self.protein),
            ("carbohydrate_g", self.carbohydrate),
            ("fat_g", self.fat),
        ] {
            if !same(f(name), Some(want)) {
                out.push(format!("{name} {:?} != {want}", f(name)));
            }
        }
        for (name, want) in [
            ("fibre_g", self.fibre),
            ("sugar_g", self.sugar),
            ("sodium_mg", self.sodium),
        ] {
            if !same(f(name), want) {
                out.push(format!("{name} {:?} != {want:?}", f(name)));
            }
        }
        let counts = [
            ("water_ml", self.water),
            ("meals", self.meals),
            ("breakfasts", self.by_type[0]),
            ("lunches", self.by_type[1]),
            ("dinners", self.by_type[2]),
            ("snacks", self.by_type[3]),
            ("other_meals", self.by_type[4]),
        ];
        for (name, want) in counts {
            if i(name) != want {
                out.push(format!("{name} {} != {want}", i(name)));
            }
        }
        if rollup {
            for (name, want) in [
                ("days_logged", self.days),
                ("days_with_goal", self.days_with_goal),
                ("days_goal_met", self.days_goal_met),
                ("days_goal_missed", self.days_with_goal - self.days_goal_met),
            ] {
                if i(name) != want {
                    out.push(format!("{name} {} != {want}", i(name)));
                }
            }
        } else if row["goal_met"].as_bool() != self.goal_met {
            out.push(format!(
                "goal_met {} != {:?}",
                row["goal_met"], self.goal_met
            ));
        }
        out
    }
}

/// A nutrition goal: targets in force from `from` on (minimums: energy, protein, fibre,
/// water; ceilings: carbohydrate, fat).
#[derive(Debug, Clone)]
struct Goal {
    from: i64,
    energy: Option<f64>,
    protein: Option<f64>,
    carbohydrate: Option<f64>,
    fat: Option<f64>,
    fibre: Option<f64>,
    water: Option<i32>,
}

impl Goal {
    fn judge(&self, day: &Figures) -> Option<bool> {
        let minimums = [
            (self.energy, day.energy),
            (self.protein, day.protein),
            (self.fibre, day.fibre.unwrap_or(0.0)),
            (self.water.map(f64::from), day.water as f64),
        ];
        let ceilings = [(self.carbohydrate, day.carbohydrate), (self.fat, day.fat)];
        let mut any = false;
        let mut met = true;
        for (target, value) in minimums {
            if let Some(t) = target {
                any = true;
                met &= value >= t;
            }
        }
        for (target, value) in ceilings {
            if let Some(t) = target {
                any = true;
                met &= value <= t;
            }
        }
        any.then_some(met)
    }
}

/// Per user and UTC day, the figures of the day's meals (latest version of each meal not
/// deleted), water and the goal status.
pub fn nutrition_days(events: &[Event]) -> BTreeMap<(String, i64), Figures> {
    let mut meals: HashMap<Uuid, (String, i64, MealType, Vec<MealItem>)> = HashMap::new();
    let mut water: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut goals: HashMap<String, Vec<Goal>> = HashMap::new();
    for event in events {
        let user = event.header().aggregate_id.clone();
        match event {
            Event::MealLogged(e) => {
                let p = &e.payload;
                let day = day_of(p.eaten_at);
                meals.insert(p.meal_id, (user, day, p.meal_type, p.items.clone()));
            }
            Event::MealUpdated(e) => {
                let p = &e.payload;
                let day = day_of(p.eaten_at);
                meals.insert(p.meal_id, (user, day, p.meal_type, p.items.clone()));
            }
            Event::MealDeleted(e) => {
                meals.remove(&e.payload.meal_id);
            }
            Event::WaterIntakeLogged(e) => {
                let day = day_of(e.payload.drunk_at);
                *water.entry((user, day)).or_default() += i64::from(e.payload.millilitres);
            }
            Event::NutritionGoalUpdated(e) => {
                let p = &e.payload;
                goals.entry(user).or_default().push(Goal {
                    from: i64::from(p.effective_from),
                    energy: p.energy_kcal,
                    protein: p.protein_g,
                    carbohydrate: p.carbohydrate_g,
                    fat: p.fat_g,
                    fibre: p.fibre_g,
                    water: p.water_ml,
                });
            }
            _ => {}
        }
    }
    let mut days: BTreeMap<(String, i64), Figures> = BTreeMap::new();
    for (user, day, meal_type, items) in meals.into_values() {
        days.entry((user, day))
            .or_default()
            .add_items(meal_type, &items);
    }
    for (key, ml) in water {
        days.entry(key).or_default().water = ml;
    }
    for ((user, day), figures) in &mut days {
        // The goal in force: the last one set whose targets apply from this day or earlier.
        let goal = goals
            .get(user)
            .and_then(|g| g.iter().rev().find(|g| g.from <= *day));
        figures.goal_met = goal.and_then(|g| g.judge(figures));
    }
    days
}

/// Compares every nutrition table with the oracle: per user and day, per week and month, and
/// the all-users figures through the documented read query (the sum of the partial rows).
pub async fn check_nutrition(session: &Session, ks: &str, events: &[Event]) {
    let days = nutrition_days(events);
    assert!(!days.is_empty(), "no nutrition in the log");
    let mut weeks: BTreeMap<(String, i64), Figures> = BTreeMap::new();
    let mut months: BTreeMap<(String, i64), Figures> = BTreeMap::new();
    let mut all_users: BTreeMap<i64, (i64, Figures)> = BTreeMap::new();
    for ((user, day), figures) in &days {
        weeks
            .entry((user.clone(), week_start(*day)))
            .or_default()
            .add_day(figures);
        months
            .entry((user.clone(), month_start(*day)))
            .or_default()
            .add_day(figures);
        let all = all_users.entry(*day).or_default();
        all.0 += 1;
        all.1.add_day(figures);
    }
    for (table, column, oracle, rollup) in [
        ("nutrition_user_daily", "day", &days, false),
        ("nutrition_user_weekly", "week_start", &weeks, true),
        ("nutrition_user_monthly", "month_start", &months, true),
    ] {
        let rows = json_rows(session, format!("SELECT JSON * FROM {ks}.{table}")).await;
        let mut seen = BTreeSet::new();
        let mut problems = Vec::new();
        for row in &rows {
            let user = row["user_id"].as_str().expect("user_id").to_owned();
            let date = row[column].as_str().expect("date").to_owned();
            let Some((key, want)) = oracle
                .iter()
                .find(|((u, d), _)| *u == user && date_text(*d) == date)
            else {
                problems.push(format!("{table}: row {user} {date} not in the oracle"));
                continue;
            };
            seen.insert(key.clone());
            for difference in want.differences(row, rollup) {
                problems.push(format!("{table} {user} {date}: {difference}"));
            }
        }
        for key in oracle.keys().filter(|k| !seen.contains(*k)) {
            problems.push(format!(
                "{table}: no row for {} {}",
                key.0,
                date_text(key.1)
            ));
        }
        assert!(
            problems.is_empty(),
            "{} differences:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }

    // The all-users figures as analysts read them: the README's sum over a day's rows.
    for (day, (users, want)) in &all_users {
        let date = date_text(*day);
        let row = &json_rows(
            session,
            format!(
                "SELECT JSON SUM(users_logged) AS users_logged, SUM(energy_kcal) AS energy_kcal, \
                 SUM(protein_g) AS protein_g, SUM(water_ml) AS water_ml, SUM(meals) AS meals, \
                 SUM(users_with_goal) AS users_with_goal, SUM(users_goal_met) AS users_goal_met \
                 FROM {ks}.nutrition_daily_all_users WHERE day = '{date}'"
            ),
        )
        .await[0];
        let got = (
            row["users_logged"].as_i64(),
            row["water_ml"].as_i64(),
            row["meals"].as_i64(),
            row["users_with_goal"].as_i64(),
            row["users_goal_met"].as_i64(),
        );
        assert_eq!(
            got,
            (
                Some(*users),
                Some(want.water),
                Some(want.meals),
                Some(want.days_with_goal),
                Some(want.days_goal_met)
            ),
            "all users on {date}: {row}"
        );
        for (name, value) in [("energy_kcal", want.energy), ("protein_g", want.protein)] {
            assert!(
                same(row[name].as_f64(), Some(value)),
                "all users on {date}: {name} {} != {value}",
                row[name]
            );
        }
    }
}

// --- engagement --------------------------------------------------------------------------

/// What `engagement_users` must hold for one user, from the user's own events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Engagement {
    registered_at: Option<i64>,
    last_activity_ms: Option<i64>,
    xp: i64,
    level: i32,
    days: BTreeSet<i64>,
}

impl Engagement {
    /// (current streak, its first day, longest streak) of the active days.
    fn streaks(&self) -> (i64, Option<i64>, i64) {
        let (mut current, mut started, mut longest) = (0, None, 0);
        let mut previous = None;
        for &day in &self.days {
            if previous == Some(day - 1) {
                current += 1;
            } else {
                current = 1;
                started = Some(day);
            }
            longest = longest.max(current);
            previous = Some(day);
        }
        (current, started, longest)
    }
}

/// Is `event` an activity of the user whose aggregate it belongs to (README list)?
fn own_activity(event: &Event) -> bool {
    matches!(
        event,
        Event::UserRegistered(_)
            | Event::UserProfileUpdated(_)
            | Event::MealLogged(_)
            | Event::MealUpdated(_)
            | Event::MealDeleted(_)
            | Event::WaterIntakeLogged(_)
            | Event::NutritionGoalUpdated(_)
            | Event::QuestStarted(_)
            | Event::QuestRewardClaimed(_)
    )
}

/// Per user, from the events of `diet.events.user`.
pub fn engagement_users(events: &[Event]) -> BTreeMap<String, Engagement> {
    let mut users: BTreeMap<String, Engagement> = BTreeMap::new();
    for event in events {
        let header = event.header();
        let user = users
            .entry(header.aggregate_id.clone())
            .or_insert_with(|| Engagement {
                level: 1,
                ..Engagement::default()
            });
        let at = header.timestamp;
        if own_activity(event) {
            let ms = at.div_euclid(1000);
            user.last_activity_ms = Some(user.last_activity_ms.map_or(ms, |m| m.max(ms)));
            user.days.insert(day_of(at));
        }
        match event {
            Event::UserRegistered(_) => user.registered_at = Some(at.div_euclid(1000)),
            Event::UserXpAwarded(e) => user.xp = e.payload.total_xp,
            Event::UserLevelUp(e) => {
                user.xp = e.payload.total_xp;
                user.level = e.payload.new_level;
            }
            Event::UserAchievementUnlocked(e) => user.xp += i64::from(e.payload.xp_awarded),
            Event::QuestRewardClaimed(e) => user.xp += i64::from(e.payload.xp),
            _ => {}
        }
    }
    users.retain(|_, u| u.last_activity_ms.is_some() || u.xp > 0 || u.registered_at.is_some());
    users
}

/// Compares `engagement_users` (XP, level, last activity, streaks, active days) and the daily
/// active users of the user topic (the README's sum) with the oracle.
pub async fn check_engagement(session: &Session, ks: &str, events: &[Event]) {
    let oracle = engagement_users(events);
    assert!(!oracle.is_empty(), "no users in the log");
    let rows = session
        .query_unpaged(
            format!(
                "SELECT user_id, registered_at, last_activity_at, xp, level, current_streak_days, \
                 streak_started_on, longest_streak_days, last_active_day, active_days_total \
                 FROM {ks}.engagement_users"
            ),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    type UserRow = (
        String,
        Option<CqlTimestamp>,
        Option<CqlTimestamp>,
        Option<i64>,
        Option<i32>,
        Option<i32>,
        Option<CqlDate>,
        Option<i32>,
        Option<CqlDate>,
        Option<i32>,
    );
    let mut got = BTreeMap::new();
    for row in rows.rows::<UserRow>().expect("typed") {
        let r = row.expect("row");
        got.insert(
            r.0,
            (
                r.1.map(|t| t.0),
                r.2.map(|t| t.0),
                r.3.unwrap_or_default(),
                r.4.unwrap_or(1),
                (
                    i64::from(r.5.unwrap_or_default()),
                    r.6.map(day_number),
                    i64::from(r.7.unwrap_or_default()),
                ),
                r.8.map(day_number),
                i64::from(r.9.unwrap_or_default()),
            ),
        );
    }
    let want: BTreeMap<String, _> = oracle
        .iter()
        .map(|(user, e)| {
            (
                user.clone(),
                (
                    e.registered_at,
                    e.last_activity_ms,
                    e.xp,
                    e.level,
                    e.streaks(),
                    e.days.last().copied(),
                    e.days.len() as i64,
                ),
            )
        })
        .collect();
    let problems: Vec<String> = want
        .keys()
        .chain(got.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|user| want.get(*user) != got.get(*user))
        .map(|user| {
            format!(
                "{user}: table {:?} oracle {:?}",
                got.get(user),
                want.get(user)
            )
        })
        .collect();
    assert!(
        problems.is_empty(),
        "engagement_users:\n{}",
        problems.join("\n")
    );

    // Daily active users through their own events: the README's sum over partitions.
    let mut active: BTreeMap<i64, i64> = BTreeMap::new();
    for user in oracle.values() {
        for day in &user.days {
            *active.entry(*day).or_default() += 1;
        }
    }
    for (day, users) in active {
        let date = date_text(day);
        let row = &json_rows(
            session,
            format!(
                "SELECT JSON SUM(users) AS daily_active_users FROM {ks}.engagement_active_users \
                 WHERE period = 'day' AND period_start = '{date}' AND source = 'user'"
            ),
        )
        .await[0];
        assert_eq!(
            row["daily_active_users"].as_i64(),
            Some(users),
            "daily active users on {date}"
        );
    }
}

// --- quests ------------------------------------------------------------------------------

/// One quest instance as the aggregate's quest events tell it.
#[derive(Debug, Clone, Default, PartialEq)]
struct QuestOracle {
    definition: String,
    status: &'static str,
    progress: f64,
    xp_reward: Option<i64>,
    xp_claimed: Option<i64>,
    /// Index in the log of its `quest.completed`.
    completed_at_event: Option<usize>,
}

/// The quests tables against the quest events of the log; each completed catalogue quest's
/// condition checked from the meal and water events logged before its completion (it must
/// have held at some point before it). Returns
/// the number of completed quests checked.
pub async fn check_quests(session: &Session, ks: &str, events: &[Event]) -> usize {
    let mut quests: BTreeMap<(String, Uuid), QuestOracle> = BTreeMap::new();
    let mut totals: BTreeMap<String, [i64; 5]> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let user = event.header().aggregate_id.clone();
        let mut total = |slot: usize, by: i64| {
            totals.entry(user.clone()).or_default()[slot] += by;
        };
        match event {
            Event::QuestStarted(e) => {
                total(0, 1);
                quests.insert(
                    (user.clone(), e.payload.quest_id),
                    QuestOracle {
                        definition: e.payload.quest_definition_id.clone(),
                        status: "ACTIVE",
                        progress: e.payload.progress,
                        ..QuestOracle::default()
                    },
                );
            }
            Event::QuestUpdated(e) => {
                if let Some(q) = quests.get_mut(&(user.clone(), e.payload.quest_id)) {
                    q.progress = e.payload.progress;
                }
            }
            Event::QuestCompleted(e) => {
                total(1, 1);
                if let Some(q) = quests.get_mut(&(user.clone(), e.payload.quest_id)) {
                    q.status = "COMPLETED";
                    q.progress = e.payload.progress;
                    q.xp_reward = Some(i64::from(e.payload.xp_reward));
                    q.completed_at_event = Some(index);
                }
            }
            Event::QuestFailed(e) => {
                total(2, 1);
                if let Some(q) = quests.get_mut(&(user.clone(), e.payload.quest_id)) {
                    q.status = "FAILED";
                    q.progress = e.payload.progress;
                }
            }
            Event::QuestRewardClaimed(e) => {
                total(3, 1);
                total(4, i64::from(e.payload.xp));
                if let Some(q) = quests.get_mut(&(user.clone(), e.payload.quest_id)) {
                    q.status = "REWARD_CLAIMED";
                    q.xp_claimed = Some(i64::from(e.payload.xp));
                }
            }
            _ => {}
        }
    }

    let rows = json_rows(session, format!("SELECT JSON * FROM {ks}.quests_by_user")).await;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut checked = 0;
    for row in &rows {
        let user = row["user_id"].as_str().expect("user_id").to_owned();
        let id: Uuid = row["quest_id"]
            .as_str()
            .expect("quest_id")
            .parse()
            .expect("uuid");
        let status = row["status"].as_str().unwrap_or_default();
        let Some(want) = quests.get(&(user.clone(), id)) else {
            problems.push(format!(
                "{user} {id}: row {status} without quest.started in the log"
            ));
            continue;
        };
        seen.insert((user.clone(), id));
        let got = (
            row["definition_id"].as_str().unwrap_or_default(),
            status,
            row["xp_reward"].as_i64(),
            row["xp_claimed"].as_i64(),
        );
        if got
            != (
                want.definition.as_str(),
                want.status,
                want.xp_reward,
                want.xp_claimed,
            )
            || !close(row["progress"].as_f64().unwrap_or(f64::NAN), want.progress)
        {
            problems.push(format!("{user} {id}: table {row} oracle {want:?}"));
        }
        if let Some(at) = want.completed_at_event {
            if row["managed"].as_bool() == Some(true) {
                let period = row["period_start"].as_str().expect("period_start");
                let period_day = dietstream::simulate::parse_day(&period[..10])
                    .map(i64::from)
                    .unwrap_or_else(|| panic!("period_start {period}"));
                let met = condition_met(&want.definition, &user, period_day, &events[..at]);
                if !met {
                    problems.push(format!(
                        "{user} {id}: {} completed but its condition does not hold in the log",
                        want.definition
                    ));
                }
                checked += 1;
            }
        }
    }
    for key in quests.keys().filter(|k| !seen.contains(*k)) {
        problems.push(format!("no row for the quest {} {}", key.0, key.1));
    }
    assert!(
        problems.is_empty(),
        "quests_by_user:\n{}",
        problems.join("\n")
    );

    let rows = json_rows(
        session,
        format!("SELECT JSON * FROM {ks}.quests_user_totals"),
    )
    .await;
    let got: BTreeMap<String, [i64; 5]> = rows
        .iter()
        .map(|row| {
            let n = |name: &str| row[name].as_i64().unwrap_or(0);
            (
                row["user_id"].as_str().expect("user_id").to_owned(),
                [
                    n("quests_started"),
                    n("quests_completed"),
                    n("quests_failed"),
                    n("rewards_claimed"),
                    n("xp_claimed"),
                ],
            )
        })
        .collect();
    assert_eq!(got, totals, "quests_user_totals");
    checked
}

/// Whether catalogue quest `definition` of `user` for the period starting on `period_day`
/// reached its target at some point of `before` (the events logged before its completion).
/// At some point, not at the end: a player may delete or change a meal between the processor's
/// decision and the completion it sent landing in the log, and the completion stands.
fn condition_met(definition: &str, user: &str, period_day: i64, before: &[Event]) -> bool {
    let mine: Vec<&Event> = before
        .iter()
        .filter(|e| e.header().aggregate_id == user)
        .collect();
    (1..=mine.len()).any(|end| condition_held(definition, period_day, &mine[..end]))
}

/// Whether the condition holds after the user's events `events`.
fn condition_held(definition: &str, period_day: i64, events: &[&Event]) -> bool {
    let mut meals: HashMap<Uuid, (i64, f64)> = HashMap::new();
    let mut logged_days = BTreeSet::new();
    let mut water: HashMap<i64, i64> = HashMap::new();
    for event in events {
        match event {
            Event::MealLogged(e) => {
                let day = day_of(e.payload.eaten_at);
                let protein = e.payload.items.iter().map(|i| i.protein_g).sum();
                meals.insert(e.payload.meal_id, (day, protein));
                logged_days.insert(day);
            }
            Event::MealUpdated(e) => {
                let protein = e.payload.items.iter().map(|i| i.protein_g).sum();
                meals.insert(e.payload.meal_id, (day_of(e.payload.eaten_at), protein));
            }
            Event::MealDeleted(e) => {
                meals.remove(&e.payload.meal_id);
            }
            Event::WaterIntakeLogged(e) => {
                *water.entry(day_of(e.payload.drunk_at)).or_default() +=
                    i64::from(e.payload.millilitres);
            }
            _ => {}
        }
    }
    match definition {
        "quests-log-3-meals" => meals.values().filter(|m| m.0 == period_day).count() >= 3,
        "quests-drink-2-litres" => water.get(&period_day).copied().unwrap_or(0) >= 2000,
        "quests-streak-7" => {
            let mut run = 0;
            let mut best = 0;
            let mut previous = None;
            for &day in &logged_days {
                run = if previous == Some(day - 1) {
                    run + 1
                } else {
                    1
                };
                best = best.max(run);
                previous = Some(day);
            }
            best >= 7
        }
        "quests-protein-100-3-days" => {
            let mut protein: BTreeMap<i64, f64> = BTreeMap::new();
            for (day, grams) in meals.values() {
                if week_start(*day) == period_day {
                    *protein.entry(*day).or_default() += grams;
                }
            }
            protein.values().filter(|g| **g >= 100.0).count() >= 3
        }
        other => panic!("completed quest of an unknown definition {other}"),
    }
}
