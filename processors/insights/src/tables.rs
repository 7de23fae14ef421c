//! The CQL tables the insights processor owns, their migrations, the example queries of the
//! README, and the rows written from an entity's state.

use dietstream_nutrition::tables::cql_date;
use dietstream_runtime::{Partial, PartialTable, Row, Sum, Table};
use dietstream_schemas::types::InsightKind;
use scylla::value::{CqlTimestamp, CqlValue};
use uuid::Uuid;

use crate::rules::{kind_name, Finding};
use crate::state::Acceptance;

/// One row per insight the processor drew for a user.
pub const INSIGHTS_BY_USER: &str = "insights_by_user";
/// One row per user and insight kind: the feedback figures.
pub const ACCEPTANCE_BY_USER: &str = "insight_acceptance_by_user";
/// The figures of a kind across the users of one source partition of `diet.events.ai` (a
/// partial row), summed over the partitions when read.
pub const ACCEPTANCE_ALL_USERS: &str = "insight_acceptance_all_users";

/// The feedback figures, in row order.
const ACCEPTANCE_VALUES: [&str; 5] = ["shown", "feedback", "accepted", "rejected", "rating_sum"];

/// The tables, in the order of [`migrations`].
pub const TABLES: &[Table] = &[
    Table {
        name: INSIGHTS_BY_USER,
        key: &["user_id", "period_end", "insight_kind"],
        values: &[
            "insight_id",
            "rule",
            "confidence",
            "title",
            "explanation",
            "period_start",
            "figures",
            "evidence_event_ids",
            "created_at",
        ],
        set_once: &[],
    },
    Table {
        name: ACCEPTANCE_BY_USER,
        key: &["user_id", "insight_kind"],
        values: &[
            "shown",
            "feedback",
            "accepted",
            "rejected",
            "rating_sum",
            "acceptance_rate",
        ],
        set_once: &[],
    },
    Table {
        name: ACCEPTANCE_ALL_USERS,
        key: &["insight_kind", "source_partition"],
        values: &ACCEPTANCE_VALUES,
        set_once: &[],
    },
];

/// The tables of partial rows: every figure a plain count.
pub const PARTIALS: &[PartialTable] = &[PartialTable {
    name: ACCEPTANCE_ALL_USERS,
    sums: &[Sum::BigInt; ACCEPTANCE_VALUES.len()],
}];

/// CQL creating the tables, in the order of [`TABLES`], with `{keyspace}` where it goes.
pub fn migrations() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {{keyspace}}.{INSIGHTS_BY_USER} (
        user_id text, period_end date, insight_kind text,
        insight_id uuid, rule text, confidence double, title text, explanation text,
        period_start date, figures map<text, double>, evidence_event_ids list<uuid>,
        created_at timestamp,
        PRIMARY KEY ((user_id), period_end, insight_kind)
    ) WITH CLUSTERING ORDER BY (period_end DESC, insight_kind ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {{keyspace}}.{ACCEPTANCE_BY_USER} (
        user_id text, insight_kind text,
        shown bigint, feedback bigint, accepted bigint, rejected bigint, rating_sum bigint,
        acceptance_rate double,
        PRIMARY KEY ((user_id), insight_kind)
    )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {{keyspace}}.{ACCEPTANCE_ALL_USERS} (
        insight_kind text, source_partition int,
        shown bigint, feedback bigint, accepted bigint, rejected bigint, rating_sum bigint,
        PRIMARY KEY ((insight_kind), source_partition)
    ) WITH CLUSTERING ORDER BY (source_partition ASC)"
        ),
    ]
}

/// The example queries of the README, verbatim.
pub const EXAMPLE_QUERIES: &[&str] = &[
    "SELECT period_end, insight_kind, rule, confidence, title, explanation, insight_id FROM {keyspace}.insights_by_user WHERE user_id = 'user-1' AND period_end >= '2026-11-01' LIMIT 20",
    "SELECT insight_kind, shown, feedback, accepted, rejected, rating_sum, acceptance_rate FROM {keyspace}.insight_acceptance_by_user WHERE user_id = 'user-1'",
    "SELECT SUM(shown) AS shown, SUM(feedback) AS feedback, SUM(accepted) AS accepted, SUM(rejected) AS rejected, SUM(rating_sum) AS rating_sum FROM {keyspace}.insight_acceptance_all_users WHERE insight_kind = 'HYDRATION'",
];

/// What an insight row needs beyond the finding.
#[derive(Debug, Clone, Copy)]
pub struct Drawn<'a> {
    /// The user.
    pub user: &'a str,
    /// The insight's id.
    pub insight_id: Uuid,
    /// First and last day of the data it was drawn from.
    pub period: (i32, i32),
    /// The time of the event that closed the window (µs).
    pub created_at: i64,
    /// The events it is based on.
    pub evidence: &'a [Uuid],
}

fn text(value: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(value.to_owned()))
}

/// The row of a drawn insight.
pub fn insight_row(drawn: &Drawn<'_>, finding: &Finding) -> Row {
    let (start, end) = drawn.period;
    Row::upsert(
        INSIGHTS_BY_USER,
        vec![
            CqlValue::Text(drawn.user.to_owned()),
            cql_date(end),
            CqlValue::Text(kind_name(finding.rule.kind()).to_owned()),
        ],
        vec![
            Some(CqlValue::Uuid(drawn.insight_id)),
            text(finding.rule.name()),
            Some(CqlValue::Double(finding.confidence)),
            text(&finding.title),
            text(&finding.explanation),
            Some(cql_date(start)),
            Some(CqlValue::Map(
                finding
                    .figures
                    .iter()
                    .map(|(name, value)| {
                        (CqlValue::Text((*name).to_owned()), CqlValue::Double(*value))
                    })
                    .collect(),
            )),
            Some(CqlValue::List(
                drawn
                    .evidence
                    .iter()
                    .map(|id| CqlValue::Uuid(*id))
                    .collect(),
            )),
            Some(CqlValue::Timestamp(CqlTimestamp(
                drawn.created_at.div_euclid(1_000),
            ))),
        ],
    )
}

fn figures(a: &Acceptance) -> Vec<Option<CqlValue>> {
    [a.shown, a.feedback, a.accepted, a.rejected, a.rating_sum]
        .into_iter()
        .map(|v| Some(CqlValue::BigInt(v)))
        .collect()
}

/// The row of one user's figures of one kind.
pub fn acceptance_row(user: &str, kind: InsightKind, a: &Acceptance) -> Row {
    let mut per_user = figures(a);
    per_user.push(a.rate().map(CqlValue::Double));
    Row::upsert(
        ACCEPTANCE_BY_USER,
        vec![
            CqlValue::Text(user.to_owned()),
            CqlValue::Text(kind_name(kind).to_owned()),
        ],
        per_user,
    )
}

/// The change of a user's share of a kind's partial row from `old` to `new`; `None` when
/// nothing changes.
pub fn acceptance_partial(
    kind: InsightKind,
    old: &Acceptance,
    new: &Acceptance,
) -> Option<Partial> {
    let sums = |a: &Acceptance| [a.shown, a.feedback, a.accepted, a.rejected, a.rating_sum];
    Partial::between(
        ACCEPTANCE_ALL_USERS,
        vec![CqlValue::Text(kind_name(kind).to_owned())],
        &sums(old),
        &sums(new),
    )
}
