//! The read models' oracle: what the tables of nutrition, engagement and quests must hold,
//! computed here from the event log alone (never by calling the projections), and the checks
//! that compare it with the tables as analysts read them.

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap};

use dietstream::config::Config;
use dietstream_schemas::types::{
    MealItem, MealType, NutritionGoalKind, NutritionGoalUpdatedPayload,
};
use dietstream_schemas::{Command, Event};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::value::{CqlDate, CqlTimestamp};
use uuid::Uuid;

use super::Stack;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Every record of `topic` that decodes as an event, in log order per partition (records
/// that do not decode are the dead letters of a test, not events).
pub async fn events_of(stack: &Stack, config: &Config, topic: &str) -> Vec<Event> {
    super::records_of(stack, config, topic)
        .await
        .into_iter()
        .filter_map(|(_, event)| event.ok())
        .collect()
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

/// Rows of a CQL query as typed tuples.
async fn typed_rows<R>(session: &Session, query: String) -> Vec<R>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    session
        .query_unpaged(query.as_str(), ())
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .into_rows_result()
        .expect("rows")
        .rows::<R>()
        .expect("typed rows")
        .map(|row| row.expect("row"))
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

/// The keys of either map whose values differ (or that one map lacks), in key order, with
/// `want`'s and `got`'s values.
fn differing<'a, K: Ord, V: PartialEq>(
    want: &'a BTreeMap<K, V>,
    got: &'a BTreeMap<K, V>,
) -> Vec<(&'a K, Option<&'a V>, Option<&'a V>)> {
    want.keys()
        .chain(got.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| (k, want.get(k), got.get(k)))
        .collect()
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
    /// The goal in force that day (a day's figures only).
    goal: Option<Goal>,
    days: i64,
    days_with_goal: i64,
    days_goal_met: i64,
}

fn add_known(sum: &mut Option<f64>, value: Option<f64>) {
    if let Some(v) = value {
        *sum = Some(sum.unwrap_or(0.0) + v);
    }
}

/// A sum of logged amounts as the READMEs say it is compared with a target: taken to the
/// millionth, so the order of its terms does not matter.
fn settled(sum: f64) -> f64 {
    (sum * 1e6).round() / 1e6
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
        } else {
            if row["goal_met"].as_bool() != self.goal_met {
                out.push(format!(
                    "goal_met {} != {:?}",
                    row["goal_met"], self.goal_met
                ));
            }
            // The targets in force that day, null where the goal sets none.
            let goal = self.goal.as_ref();
            for (name, want) in [
                ("goal_energy_kcal", goal.and_then(|g| g.energy)),
                ("goal_protein_g", goal.and_then(|g| g.protein)),
                ("goal_carbohydrate_g", goal.and_then(|g| g.carbohydrate)),
                ("goal_fat_g", goal.and_then(|g| g.fat)),
                ("goal_fibre_g", goal.and_then(|g| g.fibre)),
                ("goal_water_ml", goal.and_then(|g| g.water.map(f64::from))),
            ] {
                if !same(f(name), want) {
                    out.push(format!("{name} {:?} != {want:?}", f(name)));
                }
            }
        }
        out
    }
}

/// A nutrition goal: targets in force from `from` on (minimums: energy, protein, fibre,
/// water; ceilings: carbohydrate, fat).
#[derive(Debug, Clone, PartialEq)]
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
    fn of(p: &NutritionGoalUpdatedPayload) -> Goal {
        Goal {
            from: i64::from(p.effective_from),
            energy: p.energy_kcal,
            protein: p.protein_g,
            carbohydrate: p.carbohydrate_g,
            fat: p.fat_g,
            fibre: p.fibre_g,
            water: p.water_ml,
        }
    }

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

/// Days of the nutrition README's window ("Closed days"): a user's days from the first of the
/// month this many days before the newest day they logged a meal or water for are open.
const NUTRITION_WINDOW_DAYS: i64 = 62;

/// One user's nutrition as the README defines it, event by event: the meals (latest version,
/// not deleted), water and goals of the open days, and the figures the closed days had when
/// they closed (final).
#[derive(Default)]
struct NutritionUser {
    /// The newest day a meal (logged or updated) or water was logged for.
    newest: Option<i64>,
    meals: HashMap<Uuid, (i64, MealType, Vec<MealItem>)>,
    water: BTreeMap<i64, i64>,
    goals: Vec<Goal>,
    closed: BTreeMap<i64, Figures>,
}

impl NutritionUser {
    fn open_from(&self) -> Option<i64> {
        self.newest.map(|n| month_start(n - NUTRITION_WINDOW_DAYS))
    }

    fn is_open(&self, day: i64) -> bool {
        self.open_from().is_none_or(|open| day >= open)
    }

    /// The goal in force on `day`: the last one set whose targets apply from it or earlier.
    fn goal_on(&self, day: i64) -> Option<&Goal> {
        self.goals.iter().rev().find(|g| g.from <= day)
    }

    /// The figures of an open `day` (or of a day closing now); `None` when nothing is logged.
    fn figures(&self, day: i64) -> Option<Figures> {
        let mut figures = Figures::default();
        for (_, meal_type, items) in self.meals.values().filter(|(d, _, _)| *d == day) {
            figures.add_items(*meal_type, items);
        }
        figures.water = self.water.get(&day).copied().unwrap_or(0);
        if figures.meals == 0 && figures.water == 0 {
            return None;
        }
        for x in [
            &mut figures.energy,
            &mut figures.protein,
            &mut figures.carbohydrate,
            &mut figures.fat,
        ] {
            *x = settled(*x);
        }
        for x in [&mut figures.fibre, &mut figures.sugar, &mut figures.sodium] {
            *x = x.map(settled);
        }
        let goal = self.goal_on(day);
        figures.goal_met = goal.and_then(|g| g.judge(&figures));
        figures.goal = goal.cloned();
        Some(figures)
    }

    fn open_days(&self) -> BTreeSet<i64> {
        self.meals
            .values()
            .map(|(day, _, _)| *day)
            .chain(self.water.keys().copied())
            .filter(|day| self.is_open(*day))
            .collect()
    }

    /// A meal or water logged for `day`: the clock moves to it if later, and the days that it
    /// closes keep their figures.
    fn advance(&mut self, day: i64) {
        if self.newest.is_some_and(|newest| newest >= day) {
            return;
        }
        let was_open = self.open_days();
        self.newest = Some(day);
        let closing: Vec<(i64, Figures)> = was_open
            .into_iter()
            .filter(|d| !self.is_open(*d))
            .filter_map(|d| self.figures(d).map(|figures| (d, figures)))
            .collect();
        self.closed.extend(closing);
    }

    /// Applies one event of the user; returns the open days whose figures it may change.
    fn apply(&mut self, event: &Event) -> BTreeSet<i64> {
        let mut touched = BTreeSet::new();
        match event {
            Event::MealLogged(e) => {
                let p = &e.payload;
                return self.meal(p.meal_id, p.eaten_at, p.meal_type, &p.items);
            }
            Event::MealUpdated(e) => {
                let p = &e.payload;
                return self.meal(p.meal_id, p.eaten_at, p.meal_type, &p.items);
            }
            Event::MealDeleted(e) => {
                let id = e.payload.meal_id;
                if let Some(day) = self.meals.get(&id).map(|(day, _, _)| *day) {
                    if self.is_open(day) {
                        self.meals.remove(&id);
                        touched.insert(day);
                    }
                }
            }
            Event::WaterIntakeLogged(e) => {
                let day = day_of(e.payload.drunk_at);
                self.advance(day);
                if self.is_open(day) {
                    *self.water.entry(day).or_default() += i64::from(e.payload.millilitres);
                    touched.insert(day);
                }
            }
            Event::NutritionGoalUpdated(e) => {
                let mut goal = Goal::of(&e.payload);
                // A goal from a closed day applies from the first open day.
                goal.from = goal.from.max(self.open_from().unwrap_or(goal.from));
                let from = goal.from;
                self.goals.push(goal);
                touched.extend(self.open_days().into_iter().filter(|d| *d >= from));
            }
            _ => {}
        }
        touched
    }

    /// A meal logged, or its new version: the clock moves to its day; nothing else changes
    /// when its current version is on a closed day; otherwise it leaves its day and joins the
    /// day it was eaten on, where it counts if that day is open. (A meal kept on a closed day
    /// counts nowhere, and a later version of it changes nothing.)
    fn meal(
        &mut self,
        id: Uuid,
        eaten_at: i64,
        meal_type: MealType,
        items: &[MealItem],
    ) -> BTreeSet<i64> {
        let meal = (day_of(eaten_at), meal_type, items.to_vec());
        self.advance(meal.0);
        let mut touched = BTreeSet::new();
        if let Some(old) = self.meals.get(&id).map(|(day, _, _)| *day) {
            if !self.is_open(old) {
                return touched;
            }
            touched.insert(old);
        }
        if self.is_open(meal.0) {
            touched.insert(meal.0);
        }
        self.meals.insert(id, meal);
        touched
    }

    /// The figures of every day with a row: the closed days as they closed, the open ones now.
    fn days(&self) -> BTreeMap<i64, Figures> {
        let mut days = self.closed.clone();
        for day in self.open_days() {
            if let Some(figures) = self.figures(day) {
                days.insert(day, figures);
            }
        }
        days
    }
}

/// Per user and UTC day, the figures of the day's meals (latest version of each meal not
/// deleted), water and the goal status, with the README's closed days: events for a day
/// before the open period change nothing, and a goal from a closed day applies from the first
/// open day.
pub fn nutrition_days(events: &[Event]) -> BTreeMap<(String, i64), Figures> {
    let mut users: BTreeMap<String, NutritionUser> = BTreeMap::new();
    for event in events {
        users
            .entry(event.header().aggregate_id.clone())
            .or_default()
            .apply(event);
    }
    users
        .into_iter()
        .flat_map(|(user, log)| {
            log.days()
                .into_iter()
                .map(move |(day, figures)| ((user.clone(), day), figures))
        })
        .collect()
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

/// The minimum targets (energy, protein, fibre, water; above 0) each user's UTC days ever
/// reached while open, judged after every event of the user in log order against the goal in
/// force then: (user, day, goal) → the target. A day that drops below a target later still
/// reached it; a closed day reaches nothing more.
pub fn goals_reached(events: &[Event]) -> BTreeMap<(String, i64, NutritionGoalKind), f64> {
    let mut users: HashMap<String, NutritionUser> = HashMap::new();
    let mut reached = BTreeMap::new();
    for event in events {
        let user = event.header().aggregate_id.clone();
        let log = users.entry(user.clone()).or_default();
        for day in log.apply(event) {
            let (Some(goal), Some(figures)) = (log.goal_on(day), log.figures(day)) else {
                continue;
            };
            for (kind, target, total) in [
                (NutritionGoalKind::Energy, goal.energy, figures.energy),
                (NutritionGoalKind::Protein, goal.protein, figures.protein),
                (
                    NutritionGoalKind::Fibre,
                    goal.fibre,
                    figures.fibre.unwrap_or(0.0),
                ),
                (
                    NutritionGoalKind::Water,
                    goal.water.map(f64::from),
                    figures.water as f64,
                ),
            ] {
                if let Some(target) = target.filter(|t| *t > 0.0 && total >= *t) {
                    reached.entry((user.clone(), day, kind)).or_insert(target);
                }
            }
        }
    }
    reached
}

/// Checks that the log holds exactly one `nutrition.goal.met` per (user, UTC day, minimum
/// target) that [`goals_reached`] finds, with that target and a total at least that high, and
/// no other: the nutrition processor sent them, and its repeats were refused. Returns how many.
pub fn check_goals_met(events: &[Event]) -> usize {
    let mut got = GoalsMet::new();
    for event in events {
        if let Event::NutritionGoalMet(e) = event {
            let p = &e.payload;
            got.entry((e.header.aggregate_id.clone(), i64::from(p.date), p.goal))
                .or_default()
                .push((p.target, p.achieved));
        }
    }
    compare_goals_met(events, &got, "nutrition.goal.met")
}

/// (user, day, goal) → (target, achieved) of each record saying it was met.
type GoalsMet = BTreeMap<(String, i64, NutritionGoalKind), Vec<(f64, f64)>>;

/// [`check_goals_met`] on the `nutrition.goal.met.record` commands the nutrition processor
/// sent (when no command processor turned them into events): exactly one per (user, UTC day,
/// minimum target) that [`goals_reached`] finds in `events`. Returns how many.
pub fn check_goals_met_sent(events: &[Event], commands: &[Command]) -> usize {
    let mut got = GoalsMet::new();
    for command in commands {
        if let Command::RecordGoalMet(c) = command {
            let p = &c.payload;
            got.entry((c.header.aggregate_id.clone(), i64::from(p.date), p.goal))
                .or_default()
                .push((p.target, p.achieved));
        }
    }
    compare_goals_met(events, &got, "nutrition.goal.met.record")
}

fn compare_goals_met(events: &[Event], got: &GoalsMet, what: &str) -> usize {
    let want = goals_reached(events);
    let mut problems = Vec::new();
    for (key, met) in got {
        match (want.get(key), met.as_slice()) {
            (None, _) => problems.push(format!("{key:?}: met {met:?}, never reached")),
            (Some(target), [(t, achieved)]) if close(*t, *target) && achieved >= t => {}
            (Some(target), _) => problems.push(format!("{key:?}: met {met:?}, target {target}")),
        }
    }
    for key in want.keys().filter(|k| !got.contains_key(*k)) {
        problems.push(format!("{key:?}: reached, no {what}"));
    }
    assert!(
        problems.is_empty(),
        "goals met: {} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
    want.len()
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
    sessions: Vec<SessionOracle>,
}

/// One session of a user (README: a run of the user's own activities, cut by a new session id
/// or by more than `SESSION_GAP` without activity); times in µs.
#[derive(Debug, Clone, PartialEq)]
struct SessionOracle {
    started_at: i64,
    session_id: Option<String>,
    ended_at: i64,
    events: i64,
}

/// The README's `session_gap_seconds` default, in µs.
const SESSION_GAP: i64 = 1800 * 1_000_000;

impl SessionOracle {
    /// Whether an activity at `at` with `id` belongs to this session. An activity without a
    /// session id, or a session that has none yet, only looks at the gap (the README's
    /// definition leaves the second case open; the processor's code joins them).
    fn continues(&self, at: i64, id: Option<&str>) -> bool {
        let same_id = match (self.session_id.as_deref(), id) {
            (Some(current), Some(id)) => current == id,
            _ => true,
        };
        same_id && at - self.ended_at <= SESSION_GAP
    }
}

impl Engagement {
    /// Active days among the 28 days ending on the last active day.
    fn active_days_28(&self) -> i64 {
        self.days
            .last()
            .map_or(0, |last| self.days.range(last - 27..=*last).count() as i64)
    }

    /// The README's columns derived from the days, the registration, the level and the
    /// sessions: (cohort week, next level XP, active days of 28, sessions, engagement score).
    fn derived(&self) -> (Option<String>, i64, i64, i64, i64) {
        let cohort = self
            .registered_at
            .map(|ms| date_text(week_start(ms.div_euclid(MICROS_PER_DAY / 1000))));
        let next = i64::from(self.level) + 1;
        let (streak, _, _) = self.streaks();
        (
            cohort,
            50 * next * (next - 1),
            self.active_days_28(),
            self.sessions.len() as i64,
            3 * self.active_days_28() + 2 * streak.min(8),
        )
    }

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
            let id = header.session_id.as_deref();
            match user.sessions.last_mut() {
                Some(current) if current.continues(at, id) => {
                    current.events += 1;
                    current.ended_at = current.ended_at.max(at);
                    if current.session_id.is_none() {
                        current.session_id = id.map(str::to_owned);
                    }
                }
                _ => user.sessions.push(SessionOracle {
                    started_at: at,
                    session_id: id.map(str::to_owned),
                    ended_at: at,
                    events: 1,
                }),
            }
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
/// active users of the user topic (the README's sum) with the oracle. `user`: the user topic's
/// events with their partitions, in log order per partition (the late rule needs both).
pub async fn check_engagement(session: &Session, ks: &str, user: &[(i32, Event)]) {
    let events: Vec<Event> = user.iter().map(|(_, e)| e.clone()).collect();
    let oracle = engagement_users(&events);
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
    let problems: Vec<String> = differing(&want, &got)
        .into_iter()
        .map(|(user, want, got)| format!("{user}: table {got:?} oracle {want:?}"))
        .collect();
    assert!(
        problems.is_empty(),
        "engagement_users:\n{}",
        problems.join("\n")
    );

    let rows = json_rows(
        session,
        format!(
            "SELECT JSON user_id, cohort_week, next_level_xp, active_days_28, sessions_total, \
             engagement_score FROM {ks}.engagement_users"
        ),
    )
    .await;
    let got: BTreeMap<String, _> = rows
        .iter()
        .map(|row| {
            let n = |name: &str| row[name].as_i64().unwrap_or(-1);
            (
                row["user_id"].as_str().expect("user_id").to_owned(),
                (
                    row["cohort_week"].as_str().map(str::to_owned),
                    n("next_level_xp"),
                    n("active_days_28"),
                    n("sessions_total"),
                    n("engagement_score"),
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, _> = oracle
        .iter()
        .map(|(user, e)| (user.clone(), e.derived()))
        .collect();
    assert_eq!(
        got, want,
        "engagement_users: cohort_week, next_level_xp, active_days_28, sessions_total, \
         engagement_score"
    );
    check_sessions(session, ks, &oracle).await;

    // Daily active users through their own events: the README's sum over partitions, of the
    // activities the late rule keeps (a late one still counts for the user's own row above).
    let mut active: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for activity in counted_activities(user, &[]) {
        active
            .entry(day_of(activity.at))
            .or_default()
            .insert(activity.user);
    }
    for (day, users) in active {
        let users = i64::try_from(users.len()).expect("a count");
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

/// Compares `engagement_user_sessions` with the sessions of the oracle, every row.
async fn check_sessions(session: &Session, ks: &str, oracle: &BTreeMap<String, Engagement>) {
    type SessionRow = (
        String,
        CqlTimestamp,
        Option<String>,
        Option<CqlTimestamp>,
        Option<i32>,
        Option<i64>,
    );
    let rows: Vec<SessionRow> = typed_rows(
        session,
        format!(
            "SELECT user_id, started_at, session_id, ended_at, events, duration_seconds \
             FROM {ks}.engagement_user_sessions"
        ),
    )
    .await;
    // (user, started at ms, session id, ended at ms, events, duration s)
    let got: BTreeSet<_> = rows
        .into_iter()
        .map(|r| (r.0, r.1 .0, r.2, r.3.map(|t| t.0), r.4.map(i64::from), r.5))
        .collect();
    let want: BTreeSet<_> = oracle
        .iter()
        .flat_map(|(user, e)| {
            e.sessions.iter().map(move |s| {
                (
                    user.clone(),
                    s.started_at.div_euclid(1000),
                    s.session_id.clone(),
                    Some(s.ended_at.div_euclid(1000)),
                    Some(s.events),
                    Some((s.ended_at - s.started_at) / 1_000_000),
                )
            })
        })
        .collect();
    assert!(!want.is_empty(), "no sessions in the log");
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "engagement_user_sessions: oracle rows not in the table {missing:#?}\n\
         table rows not in the oracle {extra:#?}"
    );
}

/// An activity as the README lists them: the active user, when, through which topic
/// (`user` or `social`) and source partition.
struct Activity {
    user: String,
    at: i64,
    source: &'static str,
    partition: i32,
    registers: bool,
}

/// The user an event of `diet.events.social` makes active, if any (README: the author, the
/// commenter, the liker, the sender, the receiver answering).
fn social_actor(event: &Event) -> Option<&str> {
    match event {
        Event::PostCreated(e) => Some(&e.payload.author_user_id),
        Event::PostCommented(e) => Some(&e.payload.commenter_user_id),
        Event::PostLiked(e) => Some(&e.payload.liker_user_id),
        Event::FriendRequestSent(e) => Some(&e.payload.from_user_id),
        Event::FriendRequestAccepted(e) => Some(&e.payload.to_user_id),
        Event::FriendRequestDeclined(e) => Some(&e.payload.to_user_id),
        _ => None,
    }
}

/// How many of the user topic's own activities (`user`: partition and event, in log order per
/// partition) reached their partition more than 31 days after a newer activity of another
/// user: a history synced late. They count like any other (README, "Late events": the rule is
/// per user).
pub fn synced_late(user: &[(i32, Event)]) -> usize {
    let mut newest: HashMap<i32, i64> = HashMap::new();
    user.iter()
        .filter(|(_, e)| own_activity(e))
        .filter(|(partition, e)| {
            let day = day_of(e.header().timestamp);
            let newest = newest.entry(*partition).or_insert(day);
            *newest = (*newest).max(day);
            day < *newest - 31
        })
        .count()
}

/// The activities that count for the active-user and cohort tables, in log order per source
/// partition: all but those more than 31 days older than the newest day their user was
/// already active through that source partition (README, "Late events").
fn counted_activities(user: &[(i32, Event)], social: &[(i32, Event)]) -> Vec<Activity> {
    let own = user
        .iter()
        .filter(|(_, e)| own_activity(e))
        .map(|(p, e)| Activity {
            user: e.header().aggregate_id.clone(),
            at: e.header().timestamp,
            source: "user",
            partition: *p,
            registers: matches!(e, Event::UserRegistered(_)),
        });
    let others = social.iter().filter_map(|(p, e)| {
        social_actor(e).map(|actor| Activity {
            user: actor.to_owned(),
            at: e.header().timestamp,
            source: "social",
            partition: *p,
            registers: false,
        })
    });
    let mut newest: HashMap<(&'static str, i32, String), i64> = HashMap::new();
    own.chain(others)
        .filter(|a| {
            let day = day_of(a.at);
            let newest = newest
                .entry((a.source, a.partition, a.user.clone()))
                .or_insert(day);
            *newest = (*newest).max(day);
            day >= *newest - 31
        })
        .collect()
}

/// Per user and social source partition: posts, comments, likes, requests sent, requests
/// answered, friends added, newest social activity (µs).
type SocialOracle = BTreeMap<(String, i32), ([i64; 6], Option<i64>)>;

fn social_counts(social: &[(i32, Event)]) -> SocialOracle {
    let mut counts = SocialOracle::new();
    for (partition, event) in social {
        let at = event.header().timestamp;
        let mut count = |user: &str, slot: Option<usize>, friend: bool, active: bool| {
            let (n, last) = counts.entry((user.to_owned(), *partition)).or_default();
            if let Some(slot) = slot {
                n[slot] += 1;
            }
            if friend {
                n[5] += 1;
            }
            if active {
                *last = Some(last.map_or(at, |l| l.max(at)));
            }
        };
        match event {
            Event::PostCreated(e) => count(&e.payload.author_user_id, Some(0), false, true),
            Event::PostCommented(e) => count(&e.payload.commenter_user_id, Some(1), false, true),
            Event::PostLiked(e) => count(&e.payload.liker_user_id, Some(2), false, true),
            Event::FriendRequestSent(e) => count(&e.payload.from_user_id, Some(3), false, true),
            Event::FriendRequestAccepted(e) => {
                count(&e.payload.to_user_id, Some(4), true, true);
                count(&e.payload.from_user_id, None, true, false);
            }
            Event::FriendRequestDeclined(e) => count(&e.payload.to_user_id, Some(4), false, true),
            _ => {}
        }
    }
    counts
}

/// Compares the tables engagement builds from activities across users and from social
/// events with the oracle, row by row (each row is one source partition's partial):
/// `engagement_user_social`, `engagement_active_users`, `engagement_active_user_days` and
/// `engagement_cohorts`. `user` and `social` are the events of `diet.events.user` and
/// `diet.events.social` with their partitions. Returns the number of social rows checked.
pub async fn check_engagement_partials(
    session: &Session,
    ks: &str,
    user: &[(i32, Event)],
    social: &[(i32, Event)],
) -> usize {
    let want_social = social_counts(social);
    type SocialRow = (
        String,
        i32,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<CqlTimestamp>,
    );
    let rows: Vec<SocialRow> = typed_rows(
        session,
        format!(
            "SELECT user_id, source_partition, posts, comments, likes, friend_requests_sent, \
             friend_requests_answered, friends_added, last_social_at \
             FROM {ks}.engagement_user_social"
        ),
    )
    .await;
    let got_social: SocialOracle = rows
        .into_iter()
        .map(|r| {
            let n = [r.2, r.3, r.4, r.5, r.6, r.7].map(|v| v.unwrap_or(-1));
            ((r.0, r.1), (n, r.8.map(|t| t.0)))
        })
        .collect();
    let want_ms: SocialOracle = want_social
        .iter()
        .map(|(k, (n, last))| (k.clone(), (*n, last.map(|at| at.div_euclid(1000)))))
        .collect();
    assert_eq!(got_social, want_ms, "engagement_user_social");

    let activities = counted_activities(user, social);
    let mut active: BTreeMap<(&str, String, &str, i32), BTreeSet<&str>> = BTreeMap::new();
    let mut first: BTreeMap<(String, String, String, i32), i64> = BTreeMap::new();
    let mut registered: HashMap<&str, i64> = HashMap::new();
    for a in &activities {
        let day = day_of(a.at);
        for (period, start) in [
            ("day", day),
            ("week", week_start(day)),
            ("month", month_start(day)),
        ] {
            active
                .entry((period, date_text(start), a.source, a.partition))
                .or_default()
                .insert(&a.user);
        }
        // The first activity of the day in log order (the README's "first" read as the code
        // reads it: the one the processor saw first).
        first
            .entry((
                date_text(day),
                a.user.clone(),
                a.source.to_owned(),
                a.partition,
            ))
            .or_insert(a.at.div_euclid(1000));
        if a.registers {
            registered.entry(&a.user).or_insert(week_start(day));
        }
    }
    let want: BTreeMap<(String, String, String, i32), i64> = active
        .iter()
        .map(|((period, start, source, partition), users)| {
            (
                (
                    (*period).to_owned(),
                    start.clone(),
                    (*source).to_owned(),
                    *partition,
                ),
                users.len() as i64,
            )
        })
        .collect();
    let got: BTreeMap<(String, String, String, i32), i64> = json_rows(
        session,
        format!("SELECT JSON * FROM {ks}.engagement_active_users"),
    )
    .await
    .iter()
    .map(|row| {
        (
            (
                row["period"].as_str().unwrap_or_default().to_owned(),
                row["period_start"].as_str().unwrap_or_default().to_owned(),
                row["source"].as_str().unwrap_or_default().to_owned(),
                row["source_partition"].as_i64().unwrap_or(-1) as i32,
            ),
            row["users"].as_i64().unwrap_or(-1),
        )
    })
    .collect();
    assert_eq!(got, want, "engagement_active_users");

    let rows: Vec<(CqlDate, String, String, i32, Option<CqlTimestamp>)> = typed_rows(
        session,
        format!(
            "SELECT day, user_id, source, source_partition, first_activity_at \
             FROM {ks}.engagement_active_user_days"
        ),
    )
    .await;
    let got_days: BTreeMap<_, _> = rows
        .into_iter()
        .map(|r| {
            (
                (date_text(day_number(r.0)), r.1, r.2, r.3),
                r.4.map_or(-1, |t| t.0),
            )
        })
        .collect();
    assert_eq!(got_days, first, "engagement_active_user_days");

    // Cohorts: the users registered in a week, active through their own events k weeks later.
    let mut cohorts: BTreeMap<(String, i64, i32), BTreeSet<&str>> = BTreeMap::new();
    for a in activities.iter().filter(|a| a.source == "user") {
        let Some(cohort) = registered.get(a.user.as_str()) else {
            continue;
        };
        let week = week_start(day_of(a.at));
        if week >= *cohort {
            cohorts
                .entry((date_text(*cohort), (week - cohort) / 7, a.partition))
                .or_default()
                .insert(&a.user);
        }
    }
    let want: BTreeMap<(String, i64, i32), i64> = cohorts
        .into_iter()
        .map(|(k, users)| (k, users.len() as i64))
        .collect();
    let got: BTreeMap<(String, i64, i32), i64> = json_rows(
        session,
        format!("SELECT JSON * FROM {ks}.engagement_cohorts"),
    )
    .await
    .iter()
    .map(|row| {
        (
            (
                row["cohort_week"].as_str().unwrap_or_default().to_owned(),
                row["week_offset"].as_i64().unwrap_or(-1),
                row["source_partition"].as_i64().unwrap_or(-1) as i32,
            ),
            row["active_users"].as_i64().unwrap_or(-1),
        )
    })
    .collect();
    assert!(!want.is_empty(), "no cohort in the log");
    assert_eq!(got, want, "engagement_cohorts");
    want_social.len()
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
            protein.values().filter(|g| settled(**g) >= 100.0).count() >= 3
        }
        other => panic!("completed quest of an unknown definition {other}"),
    }
}

/// A catalogue quest as the quests README gives it: id, period, target, XP.
struct CatalogueQuest {
    id: &'static str,
    period: QuestPeriod,
    target: f64,
    xp: i32,
}

#[derive(Clone, Copy)]
enum QuestPeriod {
    Day,
    Week,
    Once,
}

const QUEST_CATALOGUE: [CatalogueQuest; 4] = [
    CatalogueQuest {
        id: "quests-log-3-meals",
        period: QuestPeriod::Day,
        target: 3.0,
        xp: 30,
    },
    CatalogueQuest {
        id: "quests-drink-2-litres",
        period: QuestPeriod::Day,
        target: 2000.0,
        xp: 50,
    },
    CatalogueQuest {
        id: "quests-streak-7",
        period: QuestPeriod::Once,
        target: 7.0,
        xp: 150,
    },
    CatalogueQuest {
        id: "quests-protein-100-3-days",
        period: QuestPeriod::Week,
        target: 3.0,
        xp: 120,
    },
];

/// The ids of the catalogue's quests.
pub fn catalogue_quests() -> impl Iterator<Item = &'static str> {
    QUEST_CATALOGUE.iter().map(|q| q.id)
}

impl QuestPeriod {
    /// First day of the instance holding `day` (0 for the one instance of a `once` quest).
    fn start(self, day: i64) -> i64 {
        match self {
            QuestPeriod::Day => day,
            QuestPeriod::Week => week_start(day),
            QuestPeriod::Once => 0,
        }
    }

    /// When the instance starting on `start` expires (µs), if ever.
    fn deadline(self, start: i64) -> Option<i64> {
        match self {
            QuestPeriod::Day => Some((start + 1) * MICROS_PER_DAY),
            QuestPeriod::Week => Some((start + 7) * MICROS_PER_DAY),
            QuestPeriod::Once => None,
        }
    }
}

/// A quest instance the quests processor runs, as its commands name it: user, definition and
/// deadline (the period's end; none for a `once` quest).
pub type QuestInstance = (String, String, Option<i64>);

/// The quest commands of a run: for each instance, the id of the event that caused the
/// command (its `causation_id`), so that a command sent on another event than the rules say
/// (a completion found late, say) differs too.
#[derive(Debug, Default, PartialEq)]
pub struct QuestCommands {
    /// `StartQuest`.
    pub started: BTreeMap<QuestInstance, Uuid>,
    /// `CompleteQuest`, each followed by its `ClaimQuestReward` of the quest's XP.
    pub completed: BTreeMap<QuestInstance, Uuid>,
    /// `FailQuest` (expired).
    pub failed: BTreeMap<QuestInstance, Uuid>,
    /// `ProgressQuest`, in order: the progress sent (capped at the target) and its cause.
    pub progressed: BTreeMap<QuestInstance, Vec<(f64, Uuid)>>,
}

/// One user's activity as the quests count it.
#[derive(Default)]
struct QuestPlayer {
    /// Meals not deleted: id → (day eaten, protein in g).
    meals: HashMap<Uuid, (i64, f64)>,
    water: HashMap<i64, i64>,
    /// Days with a meal logged (`nutrition.meal.logged`; deletions and updates do not count).
    logged: BTreeSet<i64>,
    /// The game day: the newest day of a meal's `eaten_at` or a water log's `drunk_at`.
    today: Option<i64>,
    /// Instances started: (catalogue index, period start) → still open, and the last
    /// progress sent.
    instances: BTreeMap<(usize, i64), (bool, f64)>,
}

impl QuestPlayer {
    fn progress(&self, quest: &CatalogueQuest, start: i64) -> f64 {
        let in_period = |day: i64| quest.period.start(day) == start;
        match quest.id {
            "quests-log-3-meals" => self.meals.values().filter(|m| in_period(m.0)).count() as f64,
            "quests-drink-2-litres" => self.water.get(&start).copied().unwrap_or(0) as f64,
            "quests-protein-100-3-days" => {
                let mut protein: HashMap<i64, f64> = HashMap::new();
                for (day, grams) in self.meals.values().filter(|m| in_period(m.0)) {
                    *protein.entry(*day).or_default() += grams;
                }
                protein.values().filter(|g| settled(**g) >= 100.0).count() as f64
            }
            // The run of consecutive logged days that ends on the newest logged day: a meal
            // logged late for a missing day joins the runs on either side of it.
            "quests-streak-7" => {
                let Some(&newest) = self.logged.last() else {
                    return 0.0;
                };
                (0..)
                    .take_while(|back| self.logged.contains(&(newest - back)))
                    .count() as f64
            }
            other => panic!("no catalogue quest {other}"),
        }
    }
}

/// What the quests processor must have sent for the user events `events` when no command
/// processor answers it (tests/read_models_history.rs), by the quests README's rules, in log
/// order per user: every catalogue quest of the period holding the game day is started; after
/// each event, an open instance fails once the game day starts at or after its deadline, or
/// else sends its progress (capped at the target) when that changed, and completes once it
/// reaches the target. Also the `computed_progress` each instance's row must show: its
/// progress (uncapped) after the last event of its period that found it open.
pub fn quest_commands_expected(events: &[Event]) -> (QuestCommands, BTreeMap<QuestInstance, f64>) {
    let mut players: BTreeMap<String, QuestPlayer> = BTreeMap::new();
    let mut expected = QuestCommands::default();
    let mut computed = BTreeMap::new();
    for event in events {
        let (user, cause) = (&event.header().aggregate_id, event.header().event_id);
        let player = players.entry(user.clone()).or_default();
        let protein = |items: &[MealItem]| items.iter().map(|i| i.protein_g).sum::<f64>();
        let activity = match event {
            Event::MealLogged(e) => {
                let day = day_of(e.payload.eaten_at);
                player
                    .meals
                    .insert(e.payload.meal_id, (day, protein(&e.payload.items)));
                player.logged.insert(day);
                Some(day)
            }
            Event::MealUpdated(e) => {
                let day = day_of(e.payload.eaten_at);
                player
                    .meals
                    .insert(e.payload.meal_id, (day, protein(&e.payload.items)));
                Some(day)
            }
            Event::MealDeleted(e) => {
                player.meals.remove(&e.payload.meal_id);
                None
            }
            Event::WaterIntakeLogged(e) => {
                let day = day_of(e.payload.drunk_at);
                *player.water.entry(day).or_default() += i64::from(e.payload.millilitres);
                Some(day)
            }
            _ => continue,
        };
        let instance = |index: usize, start: i64| {
            let quest = &QUEST_CATALOGUE[index];
            (
                user.clone(),
                quest.id.to_owned(),
                quest.period.deadline(start),
            )
        };
        if let Some(day) = activity {
            let today = player.today.map_or(day, |t| t.max(day));
            player.today = Some(today);
            for (index, quest) in QUEST_CATALOGUE.iter().enumerate() {
                let start = quest.period.start(today);
                if let btree_map::Entry::Vacant(slot) = player.instances.entry((index, start)) {
                    slot.insert((true, 0.0));
                    expected.started.insert(instance(index, start), cause);
                }
            }
        }
        let Some(today) = player.today else {
            continue;
        };
        let open: Vec<(usize, i64)> = player
            .instances
            .iter()
            .filter(|(_, (open, _))| *open)
            .map(|(key, _)| *key)
            .collect();
        for (index, start) in open {
            let quest = &QUEST_CATALOGUE[index];
            let key = instance(index, start);
            let progress = player.progress(quest, start);
            let (open, sent) = player
                .instances
                .get_mut(&(index, start))
                .expect("an instance started");
            if quest
                .period
                .deadline(start)
                .is_some_and(|d| today * MICROS_PER_DAY >= d)
            {
                // Ended by an event of a later period: its progress stays what it was.
                expected.failed.insert(key, cause);
                *open = false;
                continue;
            }
            computed.insert(key.clone(), progress);
            let capped = progress.min(quest.target);
            if capped != *sent {
                let progressed = expected.progressed.entry(key.clone()).or_default();
                progressed.push((capped, cause));
                *sent = capped;
            }
            if capped >= quest.target {
                expected.completed.insert(key, cause);
                *open = false;
            }
        }
    }
    (expected, computed)
}

/// The quest commands the quests processor sent, by instance; panics on a command for a
/// quest it did not start, one sent again on another event, or a reward other than the
/// quest's XP or not after its completion.
pub fn quest_commands_sent(commands: &[Command]) -> QuestCommands {
    let mut instances: HashMap<Uuid, QuestInstance> = HashMap::new();
    let mut sent = QuestCommands::default();
    let mut claimed = BTreeMap::new();
    let once = |to: &mut BTreeMap<QuestInstance, Uuid>,
                instance: QuestInstance,
                cause: Option<Uuid>| {
        let cause = cause.unwrap_or_else(|| panic!("{instance:?}: a command without its cause"));
        if let Some(before) = to.insert(instance.clone(), cause) {
            assert_eq!(before, cause, "{instance:?} sent on two events");
        }
    };
    for command in commands {
        let find = |id: &Uuid| {
            instances
                .get(id)
                .cloned()
                .unwrap_or_else(|| panic!("a command for quest {id}, never started"))
        };
        match command {
            Command::StartQuest(c) => {
                let instance = (
                    c.header.aggregate_id.clone(),
                    c.payload.quest_definition_id.clone(),
                    c.payload.deadline,
                );
                instances.insert(c.payload.quest_id, instance.clone());
                once(&mut sent.started, instance, c.header.causation_id);
            }
            Command::CompleteQuest(c) => {
                let instance = find(&c.payload.quest_id);
                once(&mut sent.completed, instance, c.header.causation_id);
            }
            Command::FailQuest(c) => {
                let instance = find(&c.payload.quest_id);
                once(&mut sent.failed, instance, c.header.causation_id);
            }
            Command::ProgressQuest(c) => {
                let instance = find(&c.payload.quest_id);
                let cause = c.header.causation_id.expect("a progress with its cause");
                let progressed = sent.progressed.entry(instance).or_default();
                progressed.push((c.payload.progress, cause));
            }
            Command::ClaimQuestReward(c) => {
                let instance = find(&c.payload.quest_id);
                let quest = QUEST_CATALOGUE
                    .iter()
                    .find(|q| q.id == instance.1)
                    .expect("a catalogue quest");
                assert_eq!(c.payload.xp, quest.xp, "reward of {instance:?}");
                assert!(
                    sent.completed.contains_key(&instance),
                    "{instance:?} claimed before its completion was sent"
                );
                once(&mut claimed, instance, c.header.causation_id);
            }
            _ => {}
        }
    }
    assert_eq!(claimed, sent.completed, "one claim per completion");
    sent
}

/// Panics with the instances whose `want` and `got` differ.
fn assert_same_per_instance<V: PartialEq + std::fmt::Debug>(
    what: &str,
    want: &BTreeMap<QuestInstance, V>,
    got: &BTreeMap<QuestInstance, V>,
) {
    let differ = differing(want, got);
    assert!(
        differ.is_empty(),
        "quests {what}: {} expected, {} sent; (instance, expected, sent) differing: {differ:?}",
        want.len(),
        got.len()
    );
}

/// The quest commands of a run without a command processor against
/// [`quest_commands_expected`], and `quests_by_user`: one `PENDING` row per instance started
/// (no `quest.started` ever confirms one), with its `computed_progress`. Returns the expected
/// commands.
pub async fn check_quest_commands(
    session: &Session,
    ks: &str,
    events: &[Event],
    commands: &[Command],
) -> QuestCommands {
    let (expected, computed) = quest_commands_expected(events);
    let sent = quest_commands_sent(commands);
    assert_same_per_instance("started", &expected.started, &sent.started);
    assert_same_per_instance("completed", &expected.completed, &sent.completed);
    assert_same_per_instance("failed", &expected.failed, &sent.failed);
    assert_same_per_instance("progressed", &expected.progressed, &sent.progressed);
    let rows = json_rows(session, format!("SELECT JSON * FROM {ks}.quests_by_user")).await;
    let mut pending = BTreeMap::new();
    for row in &rows {
        assert_eq!(row["managed"].as_bool(), Some(true), "{row}");
        assert_eq!(row["status"].as_str(), Some("PENDING"), "{row}");
        let deadline = row["deadline"].as_str().map(|text| {
            let day = dietstream::simulate::parse_day(&text[..10]).expect("deadline day");
            i64::from(day) * MICROS_PER_DAY
        });
        let instance = (
            row["user_id"].as_str().expect("user_id").to_owned(),
            row["definition_id"]
                .as_str()
                .expect("definition_id")
                .to_owned(),
            deadline,
        );
        let progress = row["computed_progress"].as_f64();
        assert!(
            progress.is_none_or(|p| !(p == 0.0 && p.is_sign_negative())),
            "computed_progress -0 in {row}"
        );
        pending.insert(instance, progress);
    }
    let started: BTreeMap<QuestInstance, Option<f64>> = expected
        .started
        .keys()
        .map(|instance| (instance.clone(), computed.get(instance).copied()))
        .collect();
    assert_same_per_instance("rows (computed_progress)", &started, &pending);
    expected
}

// --- insights ----------------------------------------------------------------------------

/// Days (by `period_end`, before the newest insight's) the insights processor remembers an
/// insight's kind for the feedback on it (README "Feedback and acceptance").
const INSIGHT_FEEDBACK_DAYS: i64 = 90;

/// What [`check_insights`] checked.
#[derive(Debug, Clone, Default)]
pub struct InsightsChecked {
    /// Insights (rows of `insights_by_user`, each with its `ai.insight.created`).
    pub insights: usize,
    /// Pieces of feedback on insights counted into the acceptance tables.
    pub feedback: usize,
    /// Insights re-derived from the meals, water and goals of the log (all of them).
    pub rederived: usize,
    /// The re-derived insights by rule.
    pub by_rule: BTreeMap<String, usize>,
}

fn kind_text<T: serde::Serialize>(kind: &T) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The insight tables against the log: (a) every `insights_by_user` row has exactly one
/// `ai.insight.created` with its id, user and kind, and there is no other; (b) the acceptance
/// tables equal the counts of the feedback events on insights (README "Feedback and
/// acceptance"), across users through the README's sum; (c) the insights are exactly those
/// the README's six rules draw from the user's meals, water and goals, judged when the
/// user's game clock closes a day: same user, rule and period.
pub async fn check_insights(
    session: &Session,
    ks: &str,
    user_events: &[Event],
    ai_events: &[Event],
) -> InsightsChecked {
    let mut created = Created::new();
    for event in ai_events {
        if let Event::AiInsightCreated(e) = event {
            created
                .entry(e.payload.insight_id.to_string())
                .or_default()
                .push((
                    e.header.aggregate_id.clone(),
                    kind_text(&e.payload.insight_kind),
                ));
        }
    }
    check_insights_against(
        session,
        ks,
        user_events,
        ai_events,
        &created,
        "ai.insight.created",
    )
    .await
}

/// The insights a log says were made: insight id → the (user, kind) of each record of it.
pub type Created = BTreeMap<String, Vec<(String, String)>>;

/// The `CreateInsight` commands of `commands` as [`Created`].
pub fn insights_asked(commands: &[Command]) -> Created {
    let mut asked = Created::new();
    for command in commands {
        if let Command::CreateInsight(c) = command {
            asked
                .entry(c.payload.insight_id.to_string())
                .or_default()
                .push((
                    c.header.aggregate_id.clone(),
                    kind_text(&c.payload.insight_kind),
                ));
        }
    }
    asked
}

/// [`check_insights`] with (a) against `created`, the records (`what`: the events or the
/// commands) that say which insights were made, and (b) from the acceptance events of
/// `ai_events` alone.
pub async fn check_insights_against(
    session: &Session,
    ks: &str,
    user_events: &[Event],
    ai_events: &[Event],
    created: &Created,
    what: &str,
) -> InsightsChecked {
    let mut checked = InsightsChecked::default();

    // (a) rows and records, one to one.
    let rows = json_rows(
        session,
        format!(
            "SELECT JSON user_id, insight_id, insight_kind, rule, period_start, period_end, \
             confidence FROM {ks}.insights_by_user"
        ),
    )
    .await;
    let mut problems = Vec::new();
    let mut row_ids = BTreeSet::new();
    let mut drawn = BTreeMap::new();
    for row in &rows {
        let text = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
        let (user, id, kind) = (text("user_id"), text("insight_id"), text("insight_kind"));
        if !row_ids.insert(id.clone()) {
            problems.push(format!("insight {id} has two rows"));
        }
        match created.get(&id).map(Vec::as_slice) {
            Some([only]) if *only == (user.clone(), kind.clone()) => {}
            other => problems.push(format!("row {user} {kind} {id}: {what} {other:?}")),
        }
        let key = (user, text("rule"), text("period_start"), text("period_end"));
        drawn.insert(key, row["confidence"].as_f64());
    }
    for id in created.keys().filter(|id| !row_ids.contains(*id)) {
        problems.push(format!("{what} {id} without a row"));
    }
    assert!(
        problems.is_empty(),
        "insights_by_user:\n{}",
        problems.join("\n")
    );
    checked.insights = rows.len();

    // (b) acceptance per user and kind: shown, feedback, accepted, rejected, rating sum.
    // Per user: the kind and period end of each insight, and the newest period end.
    type Remembered = (HashMap<Uuid, (String, i64)>, i64);
    let mut kinds: HashMap<String, Remembered> = HashMap::new();
    let mut acceptance: BTreeMap<(String, String), [i64; 5]> = BTreeMap::new();
    for event in ai_events {
        let user = event.header().aggregate_id.clone();
        let (insights, newest) = kinds
            .entry(user.clone())
            .or_insert((HashMap::new(), i64::MIN));
        match event {
            Event::AiInsightCreated(e) => {
                let kind = kind_text(&e.payload.insight_kind);
                let end = i64::from(e.payload.period_end);
                *newest = (*newest).max(end);
                insights.insert(e.payload.insight_id, (kind.clone(), end));
                acceptance.entry((user, kind)).or_default()[0] += 1;
            }
            Event::AiFeedbackReceived(e) if kind_text(&e.payload.target_kind) == "INSIGHT" => {
                let p = &e.payload;
                // The kind of an insight whose period ended more than FEEDBACK_DAYS before the
                // newest insight's is forgotten (README "Feedback and acceptance").
                let kind = insights
                    .get(&p.target_id)
                    .filter(|(_, end)| *end >= *newest - INSIGHT_FEEDBACK_DAYS)
                    .map_or_else(|| "UNKNOWN".to_owned(), |(kind, _)| kind.clone());
                let accepts = p.helpful == Some(true) || (p.helpful.is_none() && p.rating >= 4);
                let rejects = p.helpful == Some(false) || (p.helpful.is_none() && p.rating <= 2);
                let counts = acceptance.entry((user, kind)).or_default();
                counts[1] += 1;
                counts[2] += i64::from(accepts);
                counts[3] += i64::from(rejects);
                counts[4] += i64::from(p.rating);
                checked.feedback += 1;
            }
            _ => {}
        }
    }
    let rows = json_rows(
        session,
        format!("SELECT JSON * FROM {ks}.insight_acceptance_by_user"),
    )
    .await;
    let mut got = BTreeMap::new();
    for row in &rows {
        let n = |name: &str| row[name].as_i64().unwrap_or(-1);
        let counts = [
            n("shown"),
            n("feedback"),
            n("accepted"),
            n("rejected"),
            n("rating_sum"),
        ];
        let rate = row["acceptance_rate"].as_f64();
        let want_rate =
            (counts[2] + counts[3] > 0).then(|| counts[2] as f64 / (counts[2] + counts[3]) as f64);
        assert!(
            same(rate, want_rate),
            "insight_acceptance_by_user: acceptance_rate {rate:?} of {row}"
        );
        got.insert(
            (
                row["user_id"].as_str().unwrap_or_default().to_owned(),
                row["insight_kind"].as_str().unwrap_or_default().to_owned(),
            ),
            counts,
        );
    }
    assert_eq!(got, acceptance, "insight_acceptance_by_user");
    let mut by_kind: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for ((_, kind), counts) in &acceptance {
        let sum = by_kind.entry(kind).or_default();
        for (s, n) in sum.iter_mut().zip(counts) {
            *s += n;
        }
    }
    for (kind, want) in by_kind {
        let row = &json_rows(
            session,
            format!(
                "SELECT JSON SUM(shown) AS shown, SUM(feedback) AS feedback, \
                 SUM(accepted) AS accepted, SUM(rejected) AS rejected, \
                 SUM(rating_sum) AS rating_sum FROM {ks}.insight_acceptance_all_users \
                 WHERE insight_kind = '{kind}'"
            ),
        )
        .await[0];
        let n = |name: &str| row[name].as_i64().unwrap_or(-1);
        let got = [
            n("shown"),
            n("feedback"),
            n("accepted"),
            n("rejected"),
            n("rating_sum"),
        ];
        assert_eq!(got, want, "insight_acceptance_all_users, {kind}: {row}");
    }

    // (c) the simpler rules, re-derived.
    let want = rederived_insights(user_events);
    let missing: Vec<_> = want.keys().filter(|k| !drawn.contains_key(*k)).collect();
    let extra: Vec<_> = drawn.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "insights: drawn by the rules but not in the table {missing:#?}\n\
         in the table but not drawn by the rules {extra:#?}"
    );
    // The confidence, rounded to two decimals in the table.
    let wrong: Vec<String> = want
        .iter()
        .filter(|(key, confidence)| {
            drawn[*key].is_none_or(|got| (got - **confidence).abs() > 0.005 + 1e-9)
        })
        .map(|(key, confidence)| format!("{key:?}: table {:?}, rules {confidence}", drawn[key]))
        .collect();
    assert!(
        wrong.is_empty(),
        "insight confidence:\n{}",
        wrong.join("\n")
    );
    checked.rederived = want.len();
    for (_, rule, _, _) in want.keys() {
        *checked.by_rule.entry(rule.clone()).or_default() += 1;
    }
    checked
}

/// An insight as the oracle names it: user, rule, period start and end.
type InsightKey = (String, String, String, String);

/// What one meal counts for in the insight rules: its UTC day, energy, grams of protein,
/// carbohydrate and fat, and whether it was eaten late (22:00 to 04:00 UTC).
#[derive(Debug, Clone, Copy)]
struct MealFacts {
    day: i64,
    kcal: f64,
    protein: f64,
    carbohydrate: f64,
    fat: f64,
    late: bool,
}

impl MealFacts {
    fn of(eaten_at: i64, items: &[MealItem]) -> MealFacts {
        // From 22:00 (included) to 04:00 (excluded): the README says "from 22:00 to 04:00";
        // the code documents the bounds the same way (`LATE_FROM_MINUTE`, `LATE_UNTIL_MINUTE`).
        let minute = eaten_at.rem_euclid(MICROS_PER_DAY) / 60_000_000;
        let mut facts = MealFacts {
            day: day_of(eaten_at),
            kcal: 0.0,
            protein: 0.0,
            carbohydrate: 0.0,
            fat: 0.0,
            late: !(4 * 60..22 * 60).contains(&minute),
        };
        for item in items {
            facts.kcal += item.energy_kcal;
            facts.protein += item.protein_g;
            facts.carbohydrate += item.carbohydrate_g;
            facts.fat += item.fat_g;
        }
        facts
    }
}

/// One user's data as the insight processor's user entity holds it: the meals (latest
/// version, not deleted), the water logs by day, the goals, the game clock and the last
/// period each rule sent an insight for.
#[derive(Default)]
struct InsightUser {
    meals: HashMap<Uuid, MealFacts>,
    water: Vec<(i64, i64)>,
    goals: Vec<Goal>,
    clock: Option<i64>,
    sent: HashMap<&'static str, i64>,
}

/// Every insight the README's rules draw from the user events: (user, rule, period start,
/// period end), dates as `YYYY-MM-DD`, with its confidence before rounding.
fn rederived_insights(events: &[Event]) -> BTreeMap<InsightKey, f64> {
    let mut users: BTreeMap<String, InsightUser> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for event in events {
        let name = &event.header().aggregate_id;
        let user = users.entry(name.clone()).or_default();
        // A meal or water log on a later day than the clock closes the clock's day first (the
        // log itself is on a later day, outside what the closed day's rules look at).
        let logged_day = match event {
            Event::MealLogged(e) => Some(day_of(e.payload.eaten_at)),
            Event::WaterIntakeLogged(e) => Some(day_of(e.payload.drunk_at)),
            _ => None,
        };
        if let Some(day) = logged_day {
            match user.clock {
                Some(clock) if day > clock => {
                    for (rule, first, last, confidence) in judge(user, clock) {
                        let key = (
                            name.clone(),
                            rule.to_owned(),
                            date_text(first),
                            date_text(last),
                        );
                        out.insert(key, confidence);
                    }
                    user.clock = Some(day);
                }
                None => user.clock = Some(day),
                Some(_) => {}
            }
        }
        match event {
            Event::MealLogged(e) => {
                let p = &e.payload;
                user.meals
                    .insert(p.meal_id, MealFacts::of(p.eaten_at, &p.items));
            }
            Event::MealUpdated(e) => {
                let p = &e.payload;
                user.meals
                    .insert(p.meal_id, MealFacts::of(p.eaten_at, &p.items));
            }
            Event::MealDeleted(e) => {
                user.meals.remove(&e.payload.meal_id);
            }
            Event::WaterIntakeLogged(e) => user
                .water
                .push((day_of(e.payload.drunk_at), i64::from(e.payload.millilitres))),
            Event::NutritionGoalUpdated(e) => {
                user.goals.push(Goal::of(&e.payload));
            }
            _ => {}
        }
    }
    out
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The rules that fire when `day` closes, each with the days it was drawn from, and that have
/// not sent an insight for their period yet (the ISO week of `day`, or `day` itself for
/// `unusual_day`), which they then have.
fn judge(user: &mut InsightUser, day: i64) -> Vec<(&'static str, i64, i64, f64)> {
    let window = day - 6..=day;
    // Per day with meals: energy, protein.
    let mut meal_days: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    let in_window: Vec<&MealFacts> = user
        .meals
        .values()
        .filter(|m| window.contains(&m.day))
        .collect();
    for meal in &in_window {
        let totals = meal_days.entry(meal.day).or_default();
        totals.0 += meal.kcal;
        totals.1 += meal.protein;
    }
    for totals in meal_days.values_mut() {
        *totals = (settled(totals.0), settled(totals.1));
    }
    let water: Vec<&(i64, i64)> = user
        .water
        .iter()
        .filter(|(d, _)| window.contains(d))
        .collect();
    let active_days: BTreeSet<i64> = meal_days
        .keys()
        .copied()
        .chain(water.iter().map(|(d, _)| *d))
        .collect();
    let goal = user.goals.iter().rev().find(|g| g.from <= day);
    let logged = meal_days.len() as f64;
    let average =
        |figure: fn(&(f64, f64)) -> f64| meal_days.values().map(figure).sum::<f64>() / logged;

    // Each rule that fires, with its confidence: coverage × (0.5 + 0.5 × strength), both
    // clamped to 0..1 (the README's table; rounded to two decimals in the table).
    let confidence = |coverage: f64, strength: f64| {
        coverage.clamp(0.0, 1.0) * (0.5 + 0.5 * strength.clamp(0.0, 1.0))
    };
    let meal_coverage = logged / 7.0;
    let mut fired = Vec::new();
    if meal_days.len() >= 4 {
        if let Some(target) = goal.and_then(|g| g.energy).filter(|t| *t > 0.0) {
            let deviation = ((average(|t| t.0) - target) / target).abs();
            if deviation >= 0.15 {
                let strength = (deviation - 0.15) / 0.35;
                fired.push(("energy_vs_goal", confidence(meal_coverage, strength)));
            }
        }
        if let Some(target) = goal.and_then(|g| g.protein).filter(|t| *t > 0.0) {
            let shortfall = (target - average(|t| t.1)) / target;
            if shortfall >= 0.20 {
                let strength = (shortfall - 0.20) / 0.40;
                fired.push(("protein_vs_goal", confidence(meal_coverage, strength)));
            }
        }
        // Shares of macronutrient energy over the window's meals against their ranges.
        let kcal = [
            4.0 * in_window.iter().map(|m| m.protein).sum::<f64>(),
            4.0 * in_window.iter().map(|m| m.carbohydrate).sum::<f64>(),
            9.0 * in_window.iter().map(|m| m.fat).sum::<f64>(),
        ];
        let total: f64 = kcal.iter().sum();
        let ranges = [(0.10, 0.35), (0.45, 0.65), (0.20, 0.35)];
        if total > 0.0 {
            let worst = kcal
                .iter()
                .zip(ranges)
                .map(|(k, (low, high))| (low - k / total).max(k / total - high))
                .fold(f64::NEG_INFINITY, f64::max);
            if worst >= 0.05 {
                let strength = (worst - 0.05) / 0.15;
                fired.push(("macro_imbalance", confidence(meal_coverage, strength)));
            }
        }
        let late = in_window.iter().filter(|m| m.late).count();
        let share = late as f64 / in_window.len() as f64;
        if late >= 3 && share >= 0.25 {
            let strength = (share - 0.25) / 0.50;
            fired.push(("late_night_eating", confidence(meal_coverage, strength)));
        }
    }
    if active_days.len() >= 4 && !water.is_empty() {
        let target = goal.and_then(|g| g.water).map_or(2000.0, f64::from);
        let per_day =
            water.iter().map(|(_, ml)| *ml).sum::<i64>() as f64 / active_days.len() as f64;
        let shortfall = (target - per_day) / target;
        if shortfall >= 0.25 {
            let coverage = active_days.len() as f64 / 7.0;
            let strength = (shortfall - 0.25) / 0.50;
            fired.push(("hydration_deficit", confidence(coverage, strength)));
        }
    }
    let week = week_start(day);
    let mut out: Vec<(&'static str, i64, i64, f64)> = fired
        .into_iter()
        .filter(|(rule, _)| user.sent.insert(rule, week) != Some(week))
        .map(|(rule, confidence)| (rule, day - 6, day, confidence))
        .collect();

    // The day against the days with meals among the 28 before it: robust z-score. The README
    // asks 4 days with meals of every rule; for this one the code documents none beyond its
    // own (the day has meals, 7 days of history), which is what is checked here.
    if let Some(energy) = meal_days.get(&day).map(|t| t.0) {
        let mut history: BTreeMap<i64, f64> = BTreeMap::new();
        for meal in user
            .meals
            .values()
            .filter(|m| (day - 28..day).contains(&m.day))
        {
            *history.entry(meal.day).or_default() += meal.kcal;
        }
        let mut values: Vec<f64> = history.into_values().collect();
        if values.len() >= 7 {
            let center = median(&mut values).unwrap_or_default();
            let mut deviations: Vec<f64> = values.iter().map(|v| (v - center).abs()).collect();
            let mad = median(&mut deviations).unwrap_or_default();
            let z = if mad > 0.0 {
                (0.6745 * (energy - center) / mad).abs()
            } else {
                0.0
            };
            if z > 3.5 && user.sent.insert("unusual_day", day) != Some(day) {
                let coverage = values.len() as f64 / 14.0;
                out.push((
                    "unusual_day",
                    day,
                    day,
                    confidence(coverage, (z - 3.5) / 3.5),
                ));
            }
        }
    }
    out
}
