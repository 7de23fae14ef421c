//! The CQL tables the nutrition processor owns, their migrations, the example queries of the
//! README, and the rows written from a user's state.

use dietstream_runtime::{Partial, PartialTable, Row, Sum, Table};
use scylla::value::{CqlDate, CqlValue};

use crate::state::{month_end, month_start, week_start, DayFigures, PeriodFigures, UserNutrition};

/// One user's figures on one UTC day.
pub const USER_DAILY: &str = "nutrition_user_daily";
/// One user's figures in one ISO week (Monday to Sunday).
pub const USER_WEEKLY: &str = "nutrition_user_weekly";
/// One user's figures in one calendar month.
pub const USER_MONTHLY: &str = "nutrition_user_monthly";
/// The figures of one day across the users of one source partition (a partial row), summed
/// over the partitions when read.
pub const DAILY_ALL_USERS: &str = "nutrition_daily_all_users";

/// The nutrient, water and meal columns shared by every table, in row order.
macro_rules! figure_columns {
    () => {
        [
            "energy_kcal",
            "protein_g",
            "carbohydrate_g",
            "fat_g",
            "fibre_g",
            "sugar_g",
            "sodium_mg",
            "water_ml",
            "meals",
            "breakfasts",
            "lunches",
            "dinners",
            "snacks",
            "other_meals",
        ]
    };
}

const fn concat<const A: usize, const B: usize, const N: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

const DAILY_VALUES: [&str; 21] = concat(
    figure_columns!(),
    [
        "goal_energy_kcal",
        "goal_protein_g",
        "goal_carbohydrate_g",
        "goal_fat_g",
        "goal_fibre_g",
        "goal_water_ml",
        "goal_met",
    ],
);
const PERIOD_VALUES: [&str; 18] = concat(
    ["days_logged"],
    concat::<14, 3, 17>(
        figure_columns!(),
        ["days_with_goal", "days_goal_met", "days_goal_missed"],
    ),
);
const ALL_USERS_VALUES: [&str; 17] = concat(
    ["users_logged"],
    concat::<14, 2, 16>(figure_columns!(), ["users_with_goal", "users_goal_met"]),
);

/// How each column of [`DAILY_ALL_USERS`] is summed, in [`ALL_USERS_VALUES`] order: the
/// nutrients in millionths of their unit, water in ml, the counts as they are.
const ALL_USERS_SUMS: [Sum; 17] = [
    Sum::Int,
    Sum::Millionths,
    Sum::Millionths,
    Sum::Millionths,
    Sum::Millionths,
    Sum::Millionths,
    Sum::Millionths,
    Sum::Millionths,
    Sum::BigInt,
    Sum::Int,
    Sum::Int,
    Sum::Int,
    Sum::Int,
    Sum::Int,
    Sum::Int,
    Sum::Int,
    Sum::Int,
];

/// The tables of partial rows.
pub const PARTIALS: &[PartialTable] = &[PartialTable {
    name: DAILY_ALL_USERS,
    sums: &ALL_USERS_SUMS,
}];

/// The tables, in the order of [`migrations`].
pub const TABLES: &[Table] = &[
    Table {
        name: USER_DAILY,
        key: &["user_id", "day"],
        values: &DAILY_VALUES,
        set_once: &[],
    },
    Table {
        name: USER_WEEKLY,
        key: &["user_id", "week_start"],
        values: &PERIOD_VALUES,
        set_once: &[],
    },
    Table {
        name: USER_MONTHLY,
        key: &["user_id", "month_start"],
        values: &PERIOD_VALUES,
        set_once: &[],
    },
    Table {
        name: DAILY_ALL_USERS,
        key: &["day", "source_partition"],
        values: &ALL_USERS_VALUES,
        set_once: &[],
    },
];

/// The CQL types of the columns of `figure_columns!`, in order.
const FIGURE_COLUMNS_CQL: &str =
    "energy_kcal double, protein_g double, carbohydrate_g double, fat_g double,
        fibre_g double, sugar_g double, sodium_mg double, water_ml bigint,
        meals int, breakfasts int, lunches int, dinners int, snacks int, other_meals int";

/// The weekly or monthly rollup table keyed by the period's first day.
fn period_migration(table: &str, first_day: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {{keyspace}}.{table} (
        user_id text,
        {first_day} date,
        days_logged int,
        {FIGURE_COLUMNS_CQL},
        days_with_goal int, days_goal_met int, days_goal_missed int,
        PRIMARY KEY ((user_id), {first_day})
    ) WITH CLUSTERING ORDER BY ({first_day} ASC)"
    )
}

/// CQL creating the tables, in the order of [`TABLES`], with `{keyspace}` where the keyspace
/// goes.
pub fn migrations() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {{keyspace}}.{USER_DAILY} (
        user_id text,
        day date,
        {FIGURE_COLUMNS_CQL},
        goal_energy_kcal double, goal_protein_g double, goal_carbohydrate_g double,
        goal_fat_g double, goal_fibre_g double, goal_water_ml int, goal_met boolean,
        PRIMARY KEY ((user_id), day)
    ) WITH CLUSTERING ORDER BY (day ASC)"
        ),
        period_migration(USER_WEEKLY, "week_start"),
        period_migration(USER_MONTHLY, "month_start"),
        format!(
            "CREATE TABLE IF NOT EXISTS {{keyspace}}.{DAILY_ALL_USERS} (
        day date,
        source_partition int,
        users_logged int,
        {FIGURE_COLUMNS_CQL},
        users_with_goal int, users_goal_met int,
        PRIMARY KEY ((day), source_partition)
    ) WITH CLUSTERING ORDER BY (source_partition ASC)"
        ),
    ]
}

/// The example queries of the README, verbatim.
pub const EXAMPLE_QUERIES: &[&str] = &[
    "SELECT day, energy_kcal, protein_g, carbohydrate_g, fat_g, fibre_g, sugar_g, sodium_mg, water_ml, meals, goal_energy_kcal, goal_met FROM {keyspace}.nutrition_user_daily WHERE user_id = 'user-1' AND day >= '2026-11-01' AND day <= '2026-11-30'",
    "SELECT week_start, days_logged, energy_kcal, protein_g, water_ml, meals, days_goal_met, days_goal_missed FROM {keyspace}.nutrition_user_weekly WHERE user_id = 'user-1' AND week_start >= '2026-11-02' AND week_start <= '2026-11-30'",
    "SELECT month_start, days_logged, energy_kcal, carbohydrate_g, fat_g, sugar_g, sodium_mg, meals, snacks, days_with_goal, days_goal_met FROM {keyspace}.nutrition_user_monthly WHERE user_id = 'user-1' AND month_start = '2026-11-01'",
    "SELECT SUM(users_logged) AS users_logged, SUM(energy_kcal) AS energy_kcal, SUM(protein_g) AS protein_g, SUM(water_ml) AS water_ml, SUM(meals) AS meals, SUM(users_with_goal) AS users_with_goal, SUM(users_goal_met) AS users_goal_met FROM {keyspace}.nutrition_daily_all_users WHERE day = '2026-11-27'",
];

/// The CQL `date` of a day number (days since 1970-01-01; CQL centres its count on 2^31).
pub fn cql_date(day: i32) -> CqlValue {
    CqlValue::Date(CqlDate((i64::from(day) + (1_i64 << 31)) as u32))
}

fn figure_values(f: &DayFigures) -> Vec<Option<CqlValue>> {
    let n = &f.nutrients;
    let m = &f.meals;
    vec![
        Some(CqlValue::Double(n.energy_kcal)),
        Some(CqlValue::Double(n.protein_g)),
        Some(CqlValue::Double(n.carbohydrate_g)),
        Some(CqlValue::Double(n.fat_g)),
        n.fibre_g.map(CqlValue::Double),
        n.sugar_g.map(CqlValue::Double),
        n.sodium_mg.map(CqlValue::Double),
        Some(CqlValue::BigInt(f.water_ml)),
        Some(CqlValue::Int(m.all)),
        Some(CqlValue::Int(m.breakfasts)),
        Some(CqlValue::Int(m.lunches)),
        Some(CqlValue::Int(m.dinners)),
        Some(CqlValue::Int(m.snacks)),
        Some(CqlValue::Int(m.other)),
    ]
}

/// The row of one user-day (deleted when nothing is logged that day any more).
pub fn day_rows(user: &str, state: &UserNutrition, day: i32) -> Vec<Row> {
    let daily_key = vec![CqlValue::Text(user.to_owned()), cql_date(day)];
    let figures = state.day(day);
    if figures.is_empty() {
        return vec![Row::Delete {
            table: USER_DAILY,
            key: daily_key,
        }];
    }
    let goal = state.goal_on(day);
    let met = state.goal_met(day, &figures);
    let mut daily = figure_values(&figures);
    daily.extend([
        goal.and_then(|g| g.energy_kcal).map(CqlValue::Double),
        goal.and_then(|g| g.protein_g).map(CqlValue::Double),
        goal.and_then(|g| g.carbohydrate_g).map(CqlValue::Double),
        goal.and_then(|g| g.fat_g).map(CqlValue::Double),
        goal.and_then(|g| g.fibre_g).map(CqlValue::Double),
        goal.and_then(|g| g.water_ml).map(CqlValue::Int),
        met.map(CqlValue::Boolean),
    ]);
    vec![Row::upsert(USER_DAILY, daily_key, daily)]
}

/// A user's contribution to the across-users figures of one day, in the order and units of
/// [`DAILY_ALL_USERS`]'s columns: all zero when nothing is logged that day.
pub type Contribution = [i64; ALL_USERS_VALUES.len()];

/// The user's contribution to the figures of `day` across users, as the state has it.
pub fn contribution(state: &UserNutrition, day: i32) -> Contribution {
    let f = state.day(day);
    if f.is_empty() {
        return [0; ALL_USERS_VALUES.len()];
    }
    let met = state.goal_met(day, &f);
    let (n, m) = (&f.nutrients, &f.meals);
    let fraction = |v: Option<f64>| v.map_or(0, Sum::millionths);
    [
        1,
        Sum::millionths(n.energy_kcal),
        Sum::millionths(n.protein_g),
        Sum::millionths(n.carbohydrate_g),
        Sum::millionths(n.fat_g),
        fraction(n.fibre_g),
        fraction(n.sugar_g),
        fraction(n.sodium_mg),
        f.water_ml,
        i64::from(m.all),
        i64::from(m.breakfasts),
        i64::from(m.lunches),
        i64::from(m.dinners),
        i64::from(m.snacks),
        i64::from(m.other),
        i64::from(met.is_some()),
        i64::from(met == Some(true)),
    ]
}

/// The change of a user's share of `day`'s partial row from `old` to `new`; `None` when
/// nothing changes.
pub fn day_partial(day: i32, old: &Contribution, new: &Contribution) -> Option<Partial> {
    Partial::between(DAILY_ALL_USERS, vec![cql_date(day)], old, new)
}

fn period_row(table: &'static str, user: &str, first: i32, period: &PeriodFigures) -> Row {
    let key = vec![CqlValue::Text(user.to_owned()), cql_date(first)];
    if period.days_logged == 0 {
        return Row::Delete { table, key };
    }
    let mut values = vec![Some(CqlValue::Int(period.days_logged))];
    values.extend(figure_values(&period.total));
    values.extend([
        Some(CqlValue::Int(period.days_with_goal)),
        Some(CqlValue::Int(period.days_goal_met)),
        Some(CqlValue::Int(period.days_with_goal - period.days_goal_met)),
    ]);
    Row::upsert(table, key, values)
}

/// The weekly row of the ISO week of `day`.
pub fn week_row(user: &str, state: &UserNutrition, day: i32) -> Row {
    let first = week_start(day);
    period_row(USER_WEEKLY, user, first, &state.period(first, first + 6))
}

/// The monthly row of the calendar month of `day`.
pub fn month_row(user: &str, state: &UserNutrition, day: i32) -> Row {
    let first = month_start(day);
    period_row(
        USER_MONTHLY,
        user,
        first,
        &state.period(first, month_end(day)),
    )
}
