//! Given/when/then tests of each figure, bad input, the README's queries, and property tests
//! of the exactly-once contract against an oracle computed from the events.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{Datelike, NaiveDate};
use dietstream_runtime::memory::{MemoryRun, Tables};
use dietstream_runtime::{Origin, Projection, Row};
use dietstream_schemas::types::{
    self, ActivityLevel, AggregateType, EventHeader, MealSource, MealType, PostKind,
    PostVisibility, Reaction, XpSource,
};
use dietstream_schemas::Event;
use proptest::prelude::*;
use scylla::value::CqlValue;
use uuid::Uuid;

use super::*;
use crate::calendar::{cql_date, cql_timestamp};

const USER_TOPIC: &str = "diet.events.user";
const SOCIAL_TOPIC: &str = "diet.events.social";
const MINUTE: i64 = 60_000_000;
const DAY: i64 = 1440 * MINUTE;
/// 2026-11-16, a Monday, as µs since the epoch.
const MONDAY: i64 = 20_773 * DAY;

fn header(event_type: &str, aggregate_id: &str, kind: AggregateType, at: i64) -> EventHeader {
    EventHeader {
        event_id: Uuid::from_u128(at as u128 ^ aggregate_id.len() as u128),
        event_type: event_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        aggregate_type: kind,
        version: 1,
        timestamp: at,
        user_id: None,
        session_id: None,
        correlation_id: None,
        causation_id: None,
        metadata: HashMap::new(),
    }
}

fn in_session(mut event: Event, session: &str) -> Event {
    event.header_mut().session_id = Some(session.to_owned());
    event
}

fn registered(user: &str, at: i64) -> Event {
    Event::UserRegistered(types::UserRegistered {
        header: header("user.registered", user, AggregateType::User, at),
        payload: types::UserRegisteredPayload {
            display_name: user.to_owned(),
            email: format!("{user}@example.org"),
            locale: "en".to_owned(),
            time_zone: "UTC".to_owned(),
            birth_year: None,
            height_cm: None,
            weight_kg: None,
            activity_level: ActivityLevel::Sedentary,
            referral_code: None,
        },
    })
}

fn meal_logged(user: &str, at: i64) -> Event {
    Event::MealLogged(types::MealLogged {
        header: header("nutrition.meal.logged", user, AggregateType::User, at),
        payload: types::MealLoggedPayload {
            meal_id: Uuid::from_u128(at as u128),
            meal_type: MealType::Lunch,
            eaten_at: at,
            items: Vec::new(),
            note: None,
            source: MealSource::Manual,
        },
    })
}

fn meal_updated(user: &str, at: i64) -> Event {
    Event::MealUpdated(types::MealUpdated {
        header: header("nutrition.meal.updated", user, AggregateType::User, at),
        payload: types::MealUpdatedPayload {
            meal_id: Uuid::from_u128(1),
            meal_type: MealType::Dinner,
            eaten_at: at,
            items: Vec::new(),
            note: None,
        },
    })
}

fn meal_deleted(user: &str, at: i64) -> Event {
    Event::MealDeleted(types::MealDeleted {
        header: header("nutrition.meal.deleted", user, AggregateType::User, at),
        payload: types::MealDeletedPayload {
            meal_id: Uuid::from_u128(1),
            reason: types::MealDeletionReason::UserRequest,
        },
    })
}

fn xp_awarded(user: &str, at: i64, xp: i32, total_xp: i64) -> Event {
    Event::UserXpAwarded(types::UserXpAwarded {
        header: header("user.xp.awarded", user, AggregateType::User, at),
        payload: types::UserXpAwardedPayload {
            xp,
            source: XpSource::Quest,
            source_id: None,
            total_xp,
        },
    })
}

fn level_up(user: &str, at: i64, previous_level: i32, new_level: i32, total_xp: i64) -> Event {
    Event::UserLevelUp(types::UserLevelUp {
        header: header("user.level.up", user, AggregateType::User, at),
        payload: types::UserLevelUpPayload {
            previous_level,
            new_level,
            total_xp,
        },
    })
}

fn post_created(post: u128, author: &str, at: i64) -> Event {
    Event::PostCreated(types::PostCreated {
        header: header(
            "social.post.created",
            &post.to_string(),
            AggregateType::Social,
            at,
        ),
        payload: types::PostCreatedPayload {
            post_id: Uuid::from_u128(post),
            author_user_id: author.to_owned(),
            kind: PostKind::Text,
            text: "hello".to_owned(),
            visibility: PostVisibility::Public,
            attachment_ids: Vec::new(),
            shared_ref_id: None,
        },
    })
}

fn post_liked(post: u128, liker: &str, at: i64) -> Event {
    Event::PostLiked(types::PostLiked {
        header: header(
            "social.post.liked",
            &post.to_string(),
            AggregateType::Social,
            at,
        ),
        payload: types::PostLikedPayload {
            post_id: Uuid::from_u128(post),
            liker_user_id: liker.to_owned(),
            reaction: Reaction::Like,
        },
    })
}

fn request_accepted(request: u128, from: &str, to: &str, at: i64) -> Event {
    Event::FriendRequestAccepted(types::FriendRequestAccepted {
        header: header(
            "social.friend.request.accepted",
            &request.to_string(),
            AggregateType::Social,
            at,
        ),
        payload: types::FriendRequestAcceptedPayload {
            request_id: Uuid::from_u128(request),
            from_user_id: from.to_owned(),
            to_user_id: to.to_owned(),
        },
    })
}

fn text(s: &str) -> CqlValue {
    CqlValue::Text(s.to_owned())
}

/// Delivers events (topic, partition) in order, offsets counted per partition, one batch.
fn run(events: &[(&str, i32, Event)]) -> MemoryRun<EngagementState> {
    let projection = EngagementProjection::new();
    let mut memory = MemoryRun::new();
    let mut offsets: HashMap<(&str, i32), i64> = HashMap::new();
    for (topic, partition, event) in events {
        let offset = offsets.entry((topic, *partition)).or_default();
        memory.deliver(&projection, topic, *partition, *offset, event);
        *offset += 1;
    }
    memory.commit();
    memory
}

fn row<'t>(tables: &'t Tables, table: &str, key: &[CqlValue]) -> Option<&'t Vec<Option<CqlValue>>> {
    tables.get(table)?.get(&format!("{key:?}"))
}

fn column(table: &Table, values: &[Option<CqlValue>], name: &str) -> Option<CqlValue> {
    let i = table.values.iter().position(|v| *v == name)?;
    values[i].clone()
}

#[test]
fn a_user_active_on_two_consecutive_days_has_a_two_day_streak() {
    let memory = run(&[
        (USER_TOPIC, 0, registered("ann", MONDAY + 8 * 60 * MINUTE)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 9 * 60 * MINUTE)),
        (
            USER_TOPIC,
            0,
            meal_logged("ann", MONDAY + DAY + 12 * 60 * MINUTE),
        ),
    ]);
    let users = row(memory.tables(), USERS.name, &[text("ann")]).expect("ann's row");
    let get = |name| column(&USERS, users, name);
    assert_eq!(get("current_streak_days"), Some(CqlValue::Int(2)));
    assert_eq!(get("longest_streak_days"), Some(CqlValue::Int(2)));
    assert_eq!(get("streak_started_on"), Some(cql_date(20_773)));
    assert_eq!(get("last_active_day"), Some(cql_date(20_774)));
    assert_eq!(get("active_days_total"), Some(CqlValue::Int(2)));
    assert_eq!(get("active_days_28"), Some(CqlValue::Int(2)));
    assert_eq!(get("sessions_total"), Some(CqlValue::BigInt(3)));
    assert_eq!(get("engagement_score"), Some(CqlValue::Int(3 * 2 + 2 * 2)));
    assert_eq!(get("cohort_week"), Some(cql_date(20_773)));
    assert_eq!(
        get("last_activity_at"),
        Some(cql_timestamp(MONDAY + DAY + 12 * 60 * MINUTE))
    );
}

#[test]
fn a_gap_in_days_restarts_the_streak_and_keeps_the_longest() {
    let memory = run(&[
        (USER_TOPIC, 0, registered("ann", MONDAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + DAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 2 * DAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 5 * DAY)),
    ]);
    let users = row(memory.tables(), USERS.name, &[text("ann")]).expect("ann's row");
    assert_eq!(
        column(&USERS, users, "current_streak_days"),
        Some(CqlValue::Int(1))
    );
    assert_eq!(
        column(&USERS, users, "longest_streak_days"),
        Some(CqlValue::Int(3))
    );
    assert_eq!(
        column(&USERS, users, "streak_started_on"),
        Some(cql_date(20_778))
    );
}

#[test]
fn sessions_end_on_a_new_session_id_or_half_an_hour_of_silence() {
    let memory = run(&[
        (USER_TOPIC, 0, in_session(registered("ann", MONDAY), "s1")),
        (
            USER_TOPIC,
            0,
            in_session(meal_logged("ann", MONDAY + 10 * MINUTE), "s1"),
        ),
        (
            USER_TOPIC,
            0,
            in_session(meal_logged("ann", MONDAY + 50 * MINUTE), "s1"),
        ),
        (
            USER_TOPIC,
            0,
            in_session(meal_logged("ann", MONDAY + 55 * MINUTE), "s2"),
        ),
    ]);
    let sessions = &memory.tables()[SESSIONS.name];
    assert_eq!(sessions.len(), 3);
    let first = row(
        memory.tables(),
        SESSIONS.name,
        &[text("ann"), cql_timestamp(MONDAY)],
    )
    .expect("first session");
    assert_eq!(
        first,
        &vec![
            Some(text("s1")),
            Some(cql_timestamp(MONDAY + 10 * MINUTE)),
            Some(CqlValue::Int(2)),
            Some(CqlValue::BigInt(600)),
        ]
    );
    let third = row(
        memory.tables(),
        SESSIONS.name,
        &[text("ann"), cql_timestamp(MONDAY + 55 * MINUTE)],
    )
    .expect("third session");
    assert_eq!(third[0], Some(text("s2")));
}

#[test]
fn xp_and_level_follow_the_user_aggregate() {
    let memory = run(&[
        (USER_TOPIC, 1, registered("bob", MONDAY)),
        (USER_TOPIC, 1, xp_awarded("bob", MONDAY + MINUTE, 150, 150)),
        (USER_TOPIC, 1, level_up("bob", MONDAY + MINUTE, 1, 2, 150)),
        (
            USER_TOPIC,
            1,
            Event::UserAchievementUnlocked(types::UserAchievementUnlocked {
                header: header(
                    "user.achievement.unlocked",
                    "bob",
                    AggregateType::User,
                    MONDAY + 2 * MINUTE,
                ),
                payload: types::UserAchievementUnlockedPayload {
                    achievement_id: "first-meal".to_owned(),
                    achievement_name: "First meal".to_owned(),
                    tier: types::AchievementTier::Bronze,
                    xp_awarded: 50,
                },
            }),
        ),
    ]);
    let users = row(memory.tables(), USERS.name, &[text("bob")]).expect("bob's row");
    assert_eq!(column(&USERS, users, "xp"), Some(CqlValue::BigInt(200)));
    assert_eq!(column(&USERS, users, "level"), Some(CqlValue::Int(2)));
    assert_eq!(
        column(&USERS, users, "next_level_xp"),
        Some(CqlValue::BigInt(300))
    );
    // XP events are not activity: one active day, one session.
    assert_eq!(
        column(&USERS, users, "sessions_total"),
        Some(CqlValue::BigInt(1))
    );
}

#[test]
fn active_users_are_counted_once_per_period_and_partition() {
    let memory = run(&[
        (USER_TOPIC, 0, registered("ann", MONDAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + MINUTE)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + DAY)),
        (USER_TOPIC, 2, registered("cat", MONDAY + DAY)),
        (USER_TOPIC, 0, registered("dan", MONDAY + DAY)),
    ]);
    let tables = memory.tables();
    let users = |period: &str, day: i32, partition: i32| {
        row(
            tables,
            ACTIVE_USERS.name,
            &[
                text(period),
                cql_date(day),
                text("user"),
                CqlValue::Int(partition),
            ],
        )
        .map(|v| v[0].clone())
    };
    let big = |n| Some(Some(CqlValue::BigInt(n)));
    assert_eq!(users("day", 20_773, 0), big(1));
    assert_eq!(users("day", 20_774, 0), big(2));
    assert_eq!(users("day", 20_774, 2), big(1));
    assert_eq!(users("week", 20_773, 0), big(2));
    assert_eq!(users("week", 20_773, 2), big(1));
    // November 2026 starts on day 20_758.
    assert_eq!(users("month", 20_758, 0), big(2));
    assert_eq!(tables[ACTIVE_USER_DAYS.name].len(), 4);
    assert_eq!(
        row(
            tables,
            ACTIVE_USER_DAYS.name,
            &[
                cql_date(20_773),
                text("ann"),
                text("user"),
                CqlValue::Int(0)
            ],
        ),
        Some(&vec![Some(cql_timestamp(MONDAY))])
    );
}

#[test]
fn cohorts_count_registered_users_active_in_later_weeks() {
    let memory = run(&[
        (USER_TOPIC, 0, registered("ann", MONDAY)),
        (USER_TOPIC, 0, registered("dan", MONDAY + DAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 8 * DAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 9 * DAY)),
        (USER_TOPIC, 0, meal_deleted("ann", MONDAY + 22 * DAY)),
    ]);
    let cohort = |offset: i32| {
        row(
            memory.tables(),
            COHORTS.name,
            &[cql_date(20_773), CqlValue::Int(offset), CqlValue::Int(0)],
        )
        .map(|v| v[0].clone())
    };
    assert_eq!(cohort(0), Some(Some(CqlValue::BigInt(2))));
    assert_eq!(cohort(1), Some(Some(CqlValue::BigInt(1))));
    assert_eq!(cohort(2), None);
    assert_eq!(cohort(3), Some(Some(CqlValue::BigInt(1))));
}

#[test]
fn social_actions_count_for_the_actor_in_the_social_partition() {
    let memory = run(&[
        (SOCIAL_TOPIC, 1, post_created(7, "ann", MONDAY)),
        (SOCIAL_TOPIC, 1, post_liked(7, "bob", MONDAY + MINUTE)),
        (
            SOCIAL_TOPIC,
            2,
            request_accepted(9, "ann", "bob", MONDAY + 2 * MINUTE),
        ),
    ]);
    let tables = memory.tables();
    let social = |user: &str, partition: i32| {
        row(tables, SOCIAL.name, &[text(user), CqlValue::Int(partition)]).cloned()
    };
    let n = |v| Some(CqlValue::BigInt(v));
    assert_eq!(
        social("ann", 1),
        Some(vec![
            n(1),
            n(0),
            n(0),
            n(0),
            n(0),
            n(0),
            Some(cql_timestamp(MONDAY))
        ])
    );
    assert_eq!(
        social("bob", 2),
        Some(vec![
            n(0),
            n(0),
            n(0),
            n(0),
            n(1),
            n(1),
            Some(cql_timestamp(MONDAY + 2 * MINUTE))
        ])
    );
    // Ann's request was accepted: a friend added, but no activity of hers.
    assert_eq!(
        social("ann", 2),
        Some(vec![n(0), n(0), n(0), n(0), n(0), n(1), None])
    );
    let daily = |partition: i32| {
        row(
            tables,
            ACTIVE_USERS.name,
            &[
                text("day"),
                cql_date(20_773),
                text("social"),
                CqlValue::Int(partition),
            ],
        )
        .map(|v| v[0].clone())
    };
    assert_eq!(daily(1), Some(Some(CqlValue::BigInt(2))));
    assert_eq!(daily(2), Some(Some(CqlValue::BigInt(1))));
}

#[test]
fn each_state_holds_one_user_however_many_share_the_partition() {
    let ann = |others: i64| {
        let mut events = vec![(USER_TOPIC, 0, registered("ann", MONDAY))];
        events.extend((1..200).map(|d| (USER_TOPIC, 0, meal_logged("ann", MONDAY + d * DAY))));
        events.extend((0..others).map(|u| {
            (
                USER_TOPIC,
                0,
                registered(&format!("v{u}"), MONDAY + 199 * DAY + u * MINUTE),
            )
        }));
        let memory = run(&events);
        let state = memory
            .state(USER_TOPIC, 0, "user:ann")
            .expect("ann's state");
        let bytes = dietstream_runtime::store::encode_state(state).expect("encodes");
        let day = 20_773 + 199;
        let active = row(
            memory.tables(),
            ACTIVE_USERS.name,
            &[text("day"), cql_date(day), text("user"), CqlValue::Int(0)],
        )
        .cloned();
        (bytes, active)
    };
    let (alone, active_alone) = ann(0);
    let (beside, active_beside) = ann(500);
    // Streak, session, XP and a 64-day mask: after 200 days, and the same beside 500 other
    // users of the partition, who are counted all the same.
    assert!(alone.len() < 1024, "ann's state is {} bytes", alone.len());
    assert_eq!(alone, beside);
    assert_eq!(active_alone, Some(vec![Some(CqlValue::BigInt(1))]));
    assert_eq!(active_beside, Some(vec![Some(CqlValue::BigInt(501))]));
}

#[test]
fn an_activity_over_31_days_before_the_users_newest_counts_for_their_own_row_only() {
    let memory = run(&[
        (USER_TOPIC, 0, registered("ann", MONDAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 40 * DAY)),
        // 32 days before her newest: late. 31 days before: still counted.
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 8 * DAY)),
        (USER_TOPIC, 0, meal_logged("ann", MONDAY + 9 * DAY)),
        // Bob's whole history reaches the partition after Ann's newest day: it is in his
        // own order, so none of it is late.
        (USER_TOPIC, 0, registered("bob", MONDAY + DAY)),
        (USER_TOPIC, 0, meal_logged("bob", MONDAY + 8 * DAY)),
    ]);
    let tables = memory.tables();
    let users = |day: i32| {
        row(
            tables,
            ACTIVE_USERS.name,
            &[text("day"), cql_date(day), text("user"), CqlValue::Int(0)],
        )
        .map(|v| v[0].clone())
    };
    let seen = |day: i32, user: &str| {
        row(
            tables,
            ACTIVE_USER_DAYS.name,
            &[cql_date(day), text(user), text("user"), CqlValue::Int(0)],
        )
        .is_some()
    };
    let big = |n| Some(Some(CqlValue::BigInt(n)));
    assert!(!seen(20_773 + 8, "ann"));
    assert_eq!(users(20_773 + 8), big(1), "Bob only on day 8");
    assert!(seen(20_773 + 9, "ann"));
    assert_eq!(users(20_773 + 9), big(1));
    assert!(seen(20_773 + 1, "bob"));
    // The cohort of that week: Ann and Bob registered, Ann's week 1 activity was late, Bob's
    // was not.
    let cohort = |offset: i32| {
        row(
            tables,
            COHORTS.name,
            &[cql_date(20_773), CqlValue::Int(offset), CqlValue::Int(0)],
        )
        .map(|v| v[0].clone())
    };
    assert_eq!(cohort(0), big(2));
    assert_eq!(cohort(1), big(2), "Ann's day 9 and Bob's day 8");
    // Her own row counts the late meal: the newest activity is still day 40's.
    let ann = row(tables, USERS.name, &[text("ann")]).expect("ann's row");
    assert_eq!(
        column(&USERS, ann, "last_activity_at"),
        Some(cql_timestamp(MONDAY + 40 * DAY))
    );
}

#[test]
fn a_broken_rule_is_refused_and_leaves_the_state_unchanged() {
    let projection = EngagementProjection::new();
    let origin = Origin {
        topic: USER_TOPIC,
        partition: 0,
        offset: 5,
    };
    let mut state = EngagementState::default();
    projection
        .apply("user:bob", &mut state, &registered("bob", MONDAY), &origin)
        .expect("registration applies");
    let before = state.clone();
    let bad = [
        level_up("bob", MONDAY + MINUTE, 2, 2, 150),
        xp_awarded("bob", MONDAY + MINUTE, -5, 10),
        request_accepted(9, "bob", "bob", MONDAY + MINUTE),
        meal_logged("", MONDAY + MINUTE),
        meal_logged("bob", -1),
    ];
    for event in &bad {
        for entity in projection.entities(event, &origin) {
            assert!(projection
                .apply(&entity, &mut state, event, &origin)
                .is_err());
        }
        assert!(projection
            .apply("user:bob", &mut state, event, &origin)
            .is_err());
        assert_eq!(state, before);
    }
    let mut memory = MemoryRun::new();
    memory.deliver(&projection, USER_TOPIC, 0, 0, &bad[0]);
    assert_eq!(memory.rejected().len(), 1);
    assert!(memory.tables().is_empty());
}

#[test]
fn events_of_other_kinds_are_not_wanted() {
    let projection = EngagementProjection::new();
    assert!(projection.wants("nutrition.meal.logged"));
    assert!(projection.wants("social.friend.request.accepted"));
    assert!(!projection.wants("user.streak.milestone"));
    assert!(!projection.wants("ai.query.received"));
}

#[test]
fn every_example_query_is_in_the_readme() {
    let readme = include_str!("../README.md");
    for query in EXAMPLE_QUERIES {
        assert!(readme.contains(query), "missing from README.md: {query}");
        assert!(!query.contains("ALLOW FILTERING"));
    }
}

#[test]
fn tables_and_migrations_agree() {
    let projection = EngagementProjection::new();
    let migrations = projection.migrations();
    assert_eq!(migrations.len(), projection.tables().len());
    for (table, migration) in projection.tables().iter().zip(&migrations) {
        assert!(migration.contains(&format!("{{keyspace}}.{} (", table.name)));
        for column in table.key.iter().chain(table.values) {
            assert!(
                migration.contains(&format!("\n        {column} ")),
                "{column}"
            );
        }
    }
}

// ---- Property tests -------------------------------------------------------------------------

const PARTITIONS: i32 = 3;

/// One generated step: a user, what they do, and minutes since the previous step.
#[derive(Debug, Clone)]
struct Step {
    user: usize,
    action: u8,
    minutes: i64,
    partition: i32,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0usize..6,
            0u8..11,
            prop_oneof![0i64..20, 20i64..90, 600i64..3000],
            0..PARTITIONS,
        )
            .prop_map(|(user, action, minutes, partition)| Step {
                user,
                action,
                minutes,
                partition,
            }),
        1..60,
    )
}

/// A realistic log: each user registers first; their events go to their own partition of
/// the user topic; social events to the partition of their post or request.
fn log_of(steps: &[Step]) -> Vec<(String, i32, i64, Event)> {
    let mut at = MONDAY;
    let mut registered_users = BTreeSet::new();
    let mut xp: HashMap<usize, i64> = HashMap::new();
    let mut offsets: HashMap<(&str, i32), i64> = HashMap::new();
    let mut log = Vec::new();
    let mut push = |topic: &'static str, partition: i32, event: Event| {
        let offset = offsets.entry((topic, partition)).or_default();
        log.push((topic.to_owned(), partition, *offset, event));
        *offset += 1;
    };
    for (i, step) in steps.iter().enumerate() {
        at += step.minutes * MINUTE;
        let user = format!("u{}", step.user);
        let home = (step.user % PARTITIONS as usize) as i32;
        let session = format!("s{}-{}", step.user, step.action % 2);
        if registered_users.insert(step.user) {
            push(
                USER_TOPIC,
                home,
                in_session(registered(&user, at), &session),
            );
            continue;
        }
        let other = format!("u{}", (step.user + 1) % 6);
        let id = i as u128 + 100;
        match step.action {
            0..=2 => push(
                USER_TOPIC,
                home,
                in_session(meal_logged(&user, at), &session),
            ),
            3 => push(USER_TOPIC, home, meal_deleted(&user, at)),
            4 => {
                let total = xp.entry(step.user).or_default();
                let before = *total;
                *total += 120;
                push(USER_TOPIC, home, xp_awarded(&user, at, 120, *total));
                let (old, new) = (
                    dietstream_commands::domain::level_for_xp(before),
                    dietstream_commands::domain::level_for_xp(*total),
                );
                if new > old {
                    push(USER_TOPIC, home, level_up(&user, at, old, new, *total));
                }
            }
            5 | 6 => push(SOCIAL_TOPIC, step.partition, post_created(id, &user, at)),
            7 => push(SOCIAL_TOPIC, step.partition, post_liked(id, &user, at)),
            8 => push(
                SOCIAL_TOPIC,
                step.partition,
                request_accepted(id, &other, &user, at),
            ),
            9 => push(SOCIAL_TOPIC, step.partition, meal_logged("", at)),
            _ => push(
                USER_TOPIC,
                home,
                in_session(meal_updated(&user, at), &session),
            ),
        }
    }
    log
}

/// How a faulty run goes: batch sizes, then for each batch whether it crashes, whether its
/// records are delivered twice, and how long a prefix is replayed after it.
type Faults = Vec<(usize, bool, bool, usize)>;

fn faults() -> impl Strategy<Value = Faults> {
    prop::collection::vec((1usize..8, any::<bool>(), any::<bool>(), 0usize..10), 0..40)
}

fn clean_run(log: &[(String, i32, i64, Event)]) -> MemoryRun<EngagementState> {
    let projection = EngagementProjection::new();
    let mut memory = MemoryRun::new();
    for (topic, partition, offset, event) in log {
        memory.deliver(&projection, topic, *partition, *offset, event);
    }
    memory.commit();
    memory
}

fn faulty_run(log: &[(String, i32, i64, Event)], faults: &Faults) -> MemoryRun<EngagementState> {
    let projection = EngagementProjection::new();
    let mut memory = MemoryRun::new();
    let deliver = |memory: &mut MemoryRun<EngagementState>, i: usize| {
        let (topic, partition, offset, event) = &log[i];
        memory.deliver(&projection, topic, *partition, *offset, event);
    };
    let (mut next, mut committed) = (0, 0);
    for &(size, crash, twice, replay) in faults {
        let end = (next + size).min(log.len());
        for i in next..end {
            deliver(&mut memory, i);
            if twice {
                deliver(&mut memory, i);
            }
        }
        if crash {
            memory.crash();
            next = committed;
        } else {
            memory.commit();
            (next, committed) = (end, end);
        }
        for i in 0..replay.min(next) {
            deliver(&mut memory, i);
        }
    }
    for i in next..log.len() {
        deliver(&mut memory, i);
    }
    memory.commit();
    memory
}

fn date(day: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::Duration::days(day)
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - date(0)).num_days() as i32
}

/// The tables computed straight from the log, without the projection's code.
fn oracle(log: &[(String, i32, i64, Event)]) -> Tables {
    let mut tables = Tables::new();
    let mut put = |table: &'static str, key: Vec<CqlValue>, values: Vec<Option<CqlValue>>| {
        tables
            .entry(table)
            .or_default()
            .insert(format!("{key:?}"), values);
    };
    // (user, source, partition) -> activity times; (user) -> own activity times.
    let mut activity: BTreeMap<(String, &str, i32), Vec<i64>> = BTreeMap::new();
    let mut registered_at: BTreeMap<String, i64> = BTreeMap::new();
    let mut own: BTreeMap<String, Vec<(i64, Option<String>)>> = BTreeMap::new();
    let mut xp: BTreeMap<String, (i64, i32)> = BTreeMap::new();
    let mut social: BTreeMap<(String, i32), [i64; 6]> = BTreeMap::new();
    let mut last_social: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (_, partition, _, event) in log {
        let h = event.header();
        let (user, at) = (h.aggregate_id.clone(), h.timestamp);
        match event {
            Event::UserRegistered(_)
            | Event::MealLogged(_)
            | Event::MealUpdated(_)
            | Event::MealDeleted(_) => {
                if user.is_empty() || at < 0 {
                    continue;
                }
                if matches!(event, Event::UserRegistered(_)) {
                    registered_at.insert(user.clone(), at);
                }
                activity
                    .entry((user.clone(), "user", *partition))
                    .or_default()
                    .push(at);
                own.entry(user.clone())
                    .or_default()
                    .push((at, h.session_id.clone()));
                xp.entry(user).or_insert((0, 1));
            }
            Event::UserXpAwarded(e) => xp.entry(user).or_insert((0, 1)).0 = e.payload.total_xp,
            Event::UserLevelUp(e) => {
                *xp.entry(user).or_insert((0, 1)) = (e.payload.total_xp, e.payload.new_level)
            }
            Event::PostCreated(e) => {
                let actor = e.payload.author_user_id.clone();
                social.entry((actor.clone(), *partition)).or_default()[0] += 1;
                last_social.insert((actor.clone(), *partition), at);
                activity
                    .entry((actor, "social", *partition))
                    .or_default()
                    .push(at);
            }
            Event::PostLiked(e) => {
                let actor = e.payload.liker_user_id.clone();
                social.entry((actor.clone(), *partition)).or_default()[2] += 1;
                last_social.insert((actor.clone(), *partition), at);
                activity
                    .entry((actor, "social", *partition))
                    .or_default()
                    .push(at);
            }
            Event::FriendRequestAccepted(e) => {
                let (from, to) = (e.payload.from_user_id.clone(), e.payload.to_user_id.clone());
                let counts = social.entry((to.clone(), *partition)).or_default();
                counts[4] += 1;
                counts[5] += 1;
                social.entry((from, *partition)).or_default()[5] += 1;
                last_social.insert((to.clone(), *partition), at);
                activity
                    .entry((to, "social", *partition))
                    .or_default()
                    .push(at);
            }
            _ => {}
        }
    }
    let day = |at: i64| at.div_euclid(DAY);
    let monday = |d: i64| d - i64::from(date(d).weekday().num_days_from_monday());
    let first_of_month = |d: i64| {
        let x = date(d);
        days_since_epoch(NaiveDate::from_ymd_opt(x.year(), x.month(), 1).expect("first")) as i64
    };
    let mut periods: BTreeMap<(&str, i64, &str, i32), i64> = BTreeMap::new();
    let mut cohorts: BTreeMap<(i64, i64, i32), i64> = BTreeMap::new();
    for ((user, source, partition), times) in &activity {
        let days: BTreeSet<i64> = times.iter().map(|&t| day(t)).collect();
        for &d in &days {
            let first = times
                .iter()
                .copied()
                .filter(|&t| day(t) == d)
                .min()
                .expect("a time");
            put(
                ACTIVE_USER_DAYS.name,
                vec![
                    cql_date(d as i32),
                    text(user),
                    text(source),
                    CqlValue::Int(*partition),
                ],
                vec![Some(cql_timestamp(first))],
            );
            *periods.entry(("day", d, source, *partition)).or_default() += 1;
        }
        let weeks: BTreeSet<i64> = days.iter().map(|&d| monday(d)).collect();
        for &w in &weeks {
            *periods.entry(("week", w, source, *partition)).or_default() += 1;
            if let (Some(reg), "user") = (registered_at.get(user), *source) {
                let cohort = monday(day(*reg));
                *cohorts
                    .entry((cohort, (w - cohort) / 7, *partition))
                    .or_default() += 1;
            }
        }
        let months: BTreeSet<i64> = days.iter().map(|&d| first_of_month(d)).collect();
        for &m in &months {
            *periods.entry(("month", m, source, *partition)).or_default() += 1;
        }
    }
    for ((period, start, source, partition), n) in periods {
        put(
            ACTIVE_USERS.name,
            vec![
                text(period),
                cql_date(start as i32),
                text(source),
                CqlValue::Int(partition),
            ],
            vec![Some(CqlValue::BigInt(n))],
        );
    }
    for ((cohort, offset, partition), n) in cohorts {
        put(
            COHORTS.name,
            vec![
                cql_date(cohort as i32),
                CqlValue::Int(offset as i32),
                CqlValue::Int(partition),
            ],
            vec![Some(CqlValue::BigInt(n))],
        );
    }
    for ((user, partition), c) in social {
        let last = last_social
            .get(&(user.clone(), partition))
            .map(|&t| cql_timestamp(t));
        let mut values: Vec<Option<CqlValue>> =
            c.iter().map(|&n| Some(CqlValue::BigInt(n))).collect();
        values.push(last);
        put(
            SOCIAL.name,
            vec![text(&user), CqlValue::Int(partition)],
            values,
        );
    }
    let gap = 30 * MINUTE;
    for (user, (total_xp, level)) in &xp {
        let Some(times) = own.get(user) else { continue };
        // Sessions: a new session id or more than 30 minutes of silence starts one.
        let mut sessions: Vec<(i64, i64, Option<String>, i32)> = Vec::new();
        for (at, id) in times {
            match sessions.last_mut() {
                Some(s) if *at - s.1 <= gap && (s.2.is_none() || id.is_none() || s.2 == *id) => {
                    s.1 = *at;
                    s.3 += 1;
                    if s.2.is_none() {
                        s.2 = id.clone();
                    }
                }
                _ => sessions.push((*at, *at, id.clone(), 1)),
            }
        }
        for (start, end, id, events) in &sessions {
            put(
                SESSIONS.name,
                vec![text(user), cql_timestamp(*start)],
                vec![
                    id.clone().map(CqlValue::Text),
                    Some(cql_timestamp(*end)),
                    Some(CqlValue::Int(*events)),
                    Some(CqlValue::BigInt((end - start) / 1_000_000)),
                ],
            );
        }
        let days: Vec<i64> = times
            .iter()
            .map(|(t, _)| day(*t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let last = *days.last().expect("active");
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for &d in &days {
            match runs.last_mut() {
                Some(r) if r.1 + 1 == d => r.1 = d,
                _ => runs.push((d, d)),
            }
        }
        let (start, end) = *runs.last().expect("a run");
        let current = (end - start + 1) as i32;
        let longest = runs.iter().map(|r| r.1 - r.0 + 1).max().expect("a run") as i32;
        let recent = days.iter().filter(|&&d| d > last - 28).count() as i32;
        let reg = registered_at.get(user).copied();
        let last_at = times.iter().map(|(t, _)| *t).max();
        let next_level = i64::from(*level + 1);
        put(
            USERS.name,
            vec![text(user)],
            vec![
                reg.map(cql_timestamp),
                reg.map(|r| cql_date(monday(day(r)) as i32)),
                last_at.map(cql_timestamp),
                Some(CqlValue::BigInt(*total_xp)),
                Some(CqlValue::Int(*level)),
                Some(CqlValue::BigInt(50 * next_level * (next_level - 1))),
                Some(CqlValue::Int(current)),
                Some(cql_date(start as i32)),
                Some(CqlValue::Int(longest)),
                Some(cql_date(last as i32)),
                Some(CqlValue::Int(days.len() as i32)),
                Some(CqlValue::Int(recent)),
                Some(CqlValue::BigInt(sessions.len() as i64)),
                Some(CqlValue::Int(3 * recent + 2 * current.min(8))),
            ],
        );
    }
    tables
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn duplicates_replays_and_crashes_leave_the_tables_of_one_pass(
        steps in steps(),
        faults in faults(),
    ) {
        let log = log_of(&steps);
        let once = clean_run(&log);
        let faulty = faulty_run(&log, &faults);
        prop_assert_eq!(once.tables(), faulty.tables());
    }

    #[test]
    fn the_tables_equal_the_oracle(steps in steps()) {
        let log = log_of(&steps);
        let once = clean_run(&log);
        prop_assert_eq!(once.tables(), &oracle(&log));
    }
}

#[test]
fn rows_are_upserts_of_the_declared_tables() {
    let projection = EngagementProjection::new();
    let origin = Origin {
        topic: USER_TOPIC,
        partition: 0,
        offset: 0,
    };
    let event = registered("ann", MONDAY);
    for entity in projection.entities(&event, &origin) {
        let mut state = EngagementState::default();
        let effects = projection
            .apply(&entity, &mut state, &event, &origin)
            .expect("applies");
        for row in effects.rows {
            let Row::Upsert { table, key, values } = row else {
                panic!("no deletes expected");
            };
            let declared = TABLES.iter().find(|t| t.name == table).expect("declared");
            assert_eq!(declared.key.len(), key.len());
            assert_eq!(declared.values.len(), values.len());
        }
    }
}
