//! The event store and the query bus against the real stack, with the command processor and the
//! indexer running: appends with expected versions go through the processor, reads come back
//! from the CQL index in version order, snapshots are taken on request, and the queries agree
//! with the events.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;
use common::commands::{award_xp, delete_meal, log_meal, log_water, register, update_meal};
use common::{unique_name, Stack};
use dietstream::bus::CommandBus;
use dietstream::query::QueryBus;
use dietstream::store::{AppendError, EventStore};
use dietstream_commands::domain::level_for_xp;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::registry::ConfluentRegistry;
use dietstream_schemas::types::{AggregateType, RejectionReason};
use dietstream_schemas::Event;
use tokio::sync::oneshot;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

/// 2026-01-01T08:00:00Z, breakfast in London.
const BREAKFAST: i64 = common::commands::NEW_YEAR_2026 + 28_800_000_000;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .expect("clock after 1970")
}

/// Polls `read` until `done` holds for its value, or fails after [`TIMEOUT`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn versions(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.header().version).collect()
}

#[tokio::test]
async fn appends_go_through_the_processor_and_reads_and_queries_come_from_the_index() {
    common::init_tracing();
    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = unique_name("ks");
    let started = now_micros();

    // The command processor and the indexer, as `dietstream run` starts them.
    let session = Arc::new(dietstream::run::migrate(&config).await.expect("migrations"));
    let (stop_commands, stopped) = oneshot::channel::<()>();
    let commands = tokio::spawn({
        let config = config.clone();
        async move {
            dietstream::run::commands(&config, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let (stop_indexer, stopped) = oneshot::channel::<()>();
    let indexer = tokio::spawn({
        let config = config.clone();
        async move {
            dietstream::run::indexer(&config, async {
                let _ = stopped.await;
            })
            .await
        }
    });

    let codec: Arc<Codec<ConfluentRegistry>> = Arc::new(
        Codec::new(
            config.schema_registry.registry().expect("registry"),
            &Catalog::embedded().expect("catalog"),
        )
        .expect("codec"),
    );
    let bus = Arc::new(CommandBus::from_config(&config, "test").await.expect("bus"));
    let store = EventStore::new(session, &config.cql.keyspace, Arc::clone(&codec))
        .await
        .expect("event store")
        .appending_through(bus, TIMEOUT);

    // Appends with expected versions; a stale one names both versions.
    let user = format!("{}-ada", stack.prefix);
    let mut appended: Vec<Uuid> = Vec::new();
    let registered = store
        .append(&user, register(&user), Some(0))
        .await
        .expect("registered");
    assert_eq!(registered.new_version, 1);
    appended.extend(&registered.event_ids);
    match store.append(&user, award_xp(&user, 5), Some(0)).await {
        Err(AppendError::Concurrency {
            aggregate_id,
            expected: 0,
            actual: 1,
        }) => assert_eq!(aggregate_id, user),
        other => panic!("expected a concurrency conflict 0 vs 1, got {other:?}"),
    }
    let (porridge, snack) = (Uuid::new_v4(), Uuid::new_v4());
    let mut version = 1;
    for (command, expected) in [
        (log_meal(&user, porridge, BREAKFAST, 400.0), Some(1)),
        (
            log_meal(&user, snack, BREAKFAST + 7_200_000_000, 250.0),
            None,
        ),
        (update_meal(&user, porridge, BREAKFAST, 550.0), None),
        (delete_meal(&user, snack), None),
        (log_water(&user, None, 500), None),
        (log_water(&user, None, 750), None),
        (award_xp(&user, 120), None),
    ] {
        let done = store
            .append(&user, command, expected)
            .await
            .expect("accepted");
        assert!(done.new_version > version, "versions grow");
        assert_eq!(done.new_version - version, done.event_ids.len() as i64);
        version = done.new_version;
        appended.extend(&done.event_ids);
    }
    match store
        .append(
            &user,
            log_meal(&user, Uuid::new_v4(), BREAKFAST, -5.0),
            None,
        )
        .await
    {
        Err(AppendError::Rejected {
            reason: RejectionReason::ValidationError,
            field: Some(field),
            ..
        }) => assert!(field.contains("energy_kcal"), "{field}"),
        other => panic!("expected a validation error, got {other:?}"),
    }

    // A snapshot on request, at the current version; none of an unknown aggregate.
    let snapshot_at = store
        .save_snapshot(AggregateType::User, &user, "test")
        .await
        .expect("snapshot taken");
    assert_eq!(snapshot_at, version);
    match store
        .save_snapshot(AggregateType::User, &format!("{user}-nobody"), "test")
        .await
    {
        Err(AppendError::Rejected {
            reason: RejectionReason::UnknownAggregate,
            ..
        }) => {}
        other => panic!("expected UNKNOWN_AGGREGATE, got {other:?}"),
    }
    // One more event after the snapshot, so the progress query reads both.
    let last = store
        .append(&user, award_xp(&user, 10), Some(version))
        .await
        .expect("accepted");
    version = last.new_version;
    appended.extend(&last.event_ids);

    // Reads from the index: every event, in version order, the ones the appends announced.
    let events = eventually(
        "the index holds every event",
        || store.events(AggregateType::User, &user, 1, i64::MAX),
        |r| r.as_ref().is_ok_and(|e| e.len() as i64 == version),
    )
    .await
    .expect("events");
    assert_eq!(versions(&events), (1..=version).collect::<Vec<_>>());
    let ids: Vec<Uuid> = events.iter().map(|e| e.header().event_id).collect();
    assert_eq!(ids, appended);
    let middle = store
        .events(AggregateType::User, &user, 2, 3)
        .await
        .expect("a version range");
    assert_eq!(versions(&middle), vec![2, 3]);

    let snapshot = eventually(
        "the index holds the snapshot",
        || store.snapshot(AggregateType::User, &user, i64::MAX),
        |r| r.as_ref().is_ok_and(Option::is_some),
    )
    .await
    .expect("snapshot read")
    .expect("a snapshot");
    assert_eq!(snapshot.version, snapshot_at);
    assert_eq!(snapshot.last_event_id, ids[(snapshot_at - 1) as usize]);

    let to = now_micros() + 1;
    let meals = store
        .events_by_type("nutrition.meal.logged", started, to)
        .await
        .expect("events by type");
    let mine: Vec<Uuid> = meals
        .iter()
        .filter(|e| e.header().aggregate_id == user)
        .map(|e| e.header().event_id)
        .collect();
    let logged: Vec<Uuid> = events
        .iter()
        .filter(|e| e.record_type() == "nutrition.meal.logged")
        .map(|e| e.header().event_id)
        .collect();
    assert_eq!(mine, logged);
    assert_eq!(logged.len(), 2);
    let by_user = store
        .events_by_user(&user, started, to)
        .await
        .expect("events by user");
    assert_eq!(
        by_user
            .iter()
            .map(|e| e.header().event_id)
            .collect::<Vec<_>>(),
        ids
    );

    // Queries: the player's progress and nutrition, checked against the events read back.
    let queries = QueryBus::new(Arc::new(store));
    let progress = queries
        .user_progress(&user)
        .await
        .expect("progress")
        .expect("a known user");
    let mut total_xp = 0;
    let mut achievements = Vec::new();
    for event in &events {
        match event {
            Event::UserXpAwarded(e) => total_xp += i64::from(e.payload.xp),
            Event::UserAchievementUnlocked(e) => {
                total_xp += i64::from(e.payload.xp_awarded);
                achievements.push(e.payload.achievement_id.clone());
            }
            _ => {}
        }
    }
    achievements.sort();
    assert_eq!(progress.version, version);
    assert_eq!(progress.total_xp, total_xp);
    assert!(total_xp >= 130, "{total_xp}");
    assert_eq!(progress.level, level_for_xp(total_xp));
    assert_eq!(progress.achievements, achievements);
    assert_eq!(progress.meals_logged, 2);
    assert_eq!(
        queries
            .user_progress(&format!("{user}-nobody"))
            .await
            .expect("query"),
        None
    );

    let new_year = NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date");
    let nutrition = queries
        .nutrition_analytics(&user, new_year, new_year)
        .await
        .expect("nutrition");
    assert_eq!(nutrition.days.len(), 1, "{nutrition:?}");
    let day = &nutrition.days[0];
    assert_eq!(day.date, new_year);
    assert_eq!(day.meals, 1, "the snack was deleted");
    assert!(
        (day.nutrients.energy_kcal - 550.0).abs() < 1e-9,
        "the update counts"
    );
    assert_eq!(day.water_ml, 1_250);
    let next_week = queries
        .nutrition_analytics(
            &user,
            new_year + chrono::Days::new(1),
            new_year + chrono::Days::new(7),
        )
        .await
        .expect("nutrition");
    assert!(next_week.days.is_empty(), "{next_week:?}");

    stop_commands.send(()).expect("processor running");
    stop_indexer.send(()).expect("indexer running");
    commands
        .await
        .expect("task")
        .expect("processor stopped cleanly");
    indexer
        .await
        .expect("task")
        .expect("indexer stopped cleanly");
}
