//! The read-model processors end to end on the real stack: the simulator plays a fixed seed
//! through the command processor, `dietstream run` of nutrition and engagement builds their
//! tables, and the tables are compared with an oracle computed here from the event log (not
//! by calling the projections); then every example query the processors document for
//! analysts runs against those tables, and the metrics endpoint serves their metrics.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Stack;
use dietstream::bus::CommandBus;
use dietstream::config::Config;
use dietstream::simulate::{GeneratorConfig, SimulateOptions};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::Event;
use dietstream_topology::{prefixed, Topology};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use scylla::value::CqlDate;

const TIMEOUT: Duration = Duration::from_secs(120);
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Every event of `topic`, decoded, in log order per partition.
async fn events_of(stack: &Stack, config: &Config, topic: &str) -> Vec<Event> {
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
        events.push(codec.decode_event(&payload).await.expect("event decodes"));
    }
    events
}

/// Per user and UTC day: energy (kcal), meals and water (ml), from the events alone.
fn nutrition_oracle(events: &[Event]) -> BTreeMap<(String, i64), (f64, i32, i64)> {
    // Meal id → (user, day, energy): the latest figures of every meal not deleted.
    let mut meals: HashMap<uuid::Uuid, (String, i64, f64)> = HashMap::new();
    let mut water: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for event in events {
        let user = event.header().aggregate_id.clone();
        match event {
            Event::MealLogged(e) => {
                let energy = e.payload.items.iter().map(|i| i.energy_kcal).sum();
                let day = e.payload.eaten_at.div_euclid(MICROS_PER_DAY);
                meals.insert(e.payload.meal_id, (user, day, energy));
            }
            Event::MealUpdated(e) => {
                let energy = e.payload.items.iter().map(|i| i.energy_kcal).sum();
                let day = e.payload.eaten_at.div_euclid(MICROS_PER_DAY);
                meals.insert(e.payload.meal_id, (user, day, energy));
            }
            Event::MealDeleted(e) => {
                meals.remove(&e.payload.meal_id);
            }
            Event::WaterIntakeLogged(e) => {
                let day = e.payload.drunk_at.div_euclid(MICROS_PER_DAY);
                *water.entry((user, day)).or_default() += i64::from(e.payload.millilitres);
            }
            _ => {}
        }
    }
    let mut days: BTreeMap<(String, i64), (f64, i32, i64)> = BTreeMap::new();
    for (user, day, energy) in meals.into_values() {
        let figures = days.entry((user, day)).or_default();
        figures.0 += energy;
        figures.1 += 1;
    }
    for (key, ml) in water {
        days.entry(key).or_default().2 = ml;
    }
    days
}

/// Registered users and the level of each (the last level-up, 1 before any).
fn engagement_oracle(events: &[Event]) -> BTreeMap<String, i32> {
    let mut levels = BTreeMap::new();
    for event in events {
        let user = event.header().aggregate_id.clone();
        match event {
            Event::UserRegistered(_) => {
                levels.entry(user).or_insert(1);
            }
            Event::UserLevelUp(e) => {
                levels.insert(user, e.payload.new_level);
            }
            _ => {}
        }
    }
    levels
}

fn day_number(date: CqlDate) -> i64 {
    i64::from(date.0) - (1_i64 << 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nutrition_and_engagement_tables_equal_the_oracle_and_documented_queries_run() {
    common::init_tracing();
    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = common::unique_name("rm");
    config.metrics.listen = "127.0.0.1:0".parse().expect("address");
    let shutdown = || {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        (stop, async move {
            let _ = stopped.await;
        })
    };
    dietstream::run::migrate(&config).await.expect("migrate");

    let (stop_commands, commands_stopped) = shutdown();
    let commands = tokio::spawn({
        let config = config.clone();
        async move { dietstream::run::commands(&config, commands_stopped).await }
    });
    let (stop_models, models_stopped) = shutdown();
    let models = tokio::spawn({
        let config = config.clone();
        async move {
            dietstream::run::read_models(&config, &["nutrition", "engagement"], models_stopped)
                .await
        }
    });

    let bus = Arc::new(
        CommandBus::from_config(&config, "simulator")
            .await
            .expect("bus"),
    );
    let mut generator = GeneratorConfig::new(21, 30);
    generator.user_prefix = format!("{}-rm", stack.prefix);
    let summary = dietstream::simulate::run(
        bus,
        SimulateOptions {
            generator,
            rate: 300.0,
            duration: None,
            max_commands: Some(900),
            timeout: TIMEOUT,
            record: None,
            progress: false,
        },
        std::future::pending(),
    )
    .await
    .expect("simulation runs");
    assert_eq!((summary.timeouts, summary.errors), (0, 0), "{summary:?}");

    // Both groups caught up with the user events (engagement also with the social ones).
    let desired = Topology::embedded()
        .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
        .expect("topology");
    let deadline = Instant::now() + TIMEOUT;
    for processor in ["nutrition", "engagement"] {
        let consumer = desired
            .consumers
            .iter()
            .find(|c| c.processor == processor)
            .expect("consumer");
        loop {
            let kafka = config.kafka.client_config();
            let (group, reads) = (consumer.group.clone(), consumer.reads.clone());
            let lag = tokio::task::spawn_blocking(move || {
                dietstream::kafka::group_lag(&kafka, &group, &reads, TIMEOUT)
            })
            .await
            .expect("lag task")
            .expect("lag");
            if lag.total() == 0 {
                break;
            }
            assert!(
                !models.is_finished(),
                "the processors stopped: {:?}",
                models.await
            );
            assert!(Instant::now() < deadline, "{processor} lags: {lag:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let user_topic = prefixed(&config.topology.prefix, "diet.events.user");
    let events = events_of(&stack, &config, &user_topic).await;
    assert!(events.len() > 100, "{} events", events.len());
    let session = config.cql.session().await.expect("session");
    let ks = &config.cql.keyspace;

    // Nutrition: per user and day.
    let rows = session
        .query_unpaged(
            format!(
                "SELECT user_id, day, energy_kcal, meals, water_ml FROM {ks}.nutrition_user_daily"
            ),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let mut tables: BTreeMap<(String, i64), (f64, i32, i64)> = BTreeMap::new();
    for row in rows
        .rows::<(String, CqlDate, Option<f64>, Option<i32>, Option<i64>)>()
        .expect("typed")
    {
        let (user, day, energy, meals, water) = row.expect("row");
        tables.insert(
            (user, day_number(day)),
            (
                energy.unwrap_or_default(),
                meals.unwrap_or_default(),
                water.unwrap_or_default(),
            ),
        );
    }
    let oracle = nutrition_oracle(&events);
    assert!(!oracle.is_empty());
    assert_eq!(
        tables.keys().collect::<Vec<_>>(),
        oracle.keys().collect::<Vec<_>>()
    );
    for (key, (energy, meals, water)) in &oracle {
        let got = tables[key];
        assert!(
            (got.0 - energy).abs() < 1e-6,
            "{key:?}: energy {} != {energy}",
            got.0
        );
        assert_eq!((got.1, got.2), (*meals, *water), "{key:?}");
    }

    // Engagement: one row per registered user, at the level of its last level-up.
    let rows = session
        .query_unpaged(
            format!("SELECT user_id, level FROM {ks}.engagement_users"),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let levels: BTreeMap<String, i32> = rows
        .rows::<(String, Option<i32>)>()
        .expect("typed")
        .map(|row| {
            let (user, level) = row.expect("row");
            (user, level.unwrap_or_default())
        })
        .collect();
    assert_eq!(levels, engagement_oracle(&events));

    // Every query the READMEs give analysts runs on these tables.
    let queries: Vec<&str> = dietstream_nutrition::EXAMPLE_QUERIES
        .iter()
        .chain(dietstream_engagement::EXAMPLE_QUERIES)
        .copied()
        .collect();
    let users: BTreeSet<&String> = levels.keys().collect();
    let some_user = users.iter().next().expect("a user");
    for query in queries {
        let text = query
            .replace("{keyspace}", ks)
            .replace("'user-1'", &format!("'{some_user}'"));
        session
            .query_unpaged(text.as_str(), ())
            .await
            .unwrap_or_else(|e| panic!("documented query fails: {text}: {e}"));
    }

    stop_models.send(()).expect("processors running");
    models
        .await
        .expect("processors task")
        .expect("processors stopped cleanly");
    stop_commands.send(()).expect("command processor running");
    commands
        .await
        .expect("command processor task")
        .expect("command processor stopped cleanly");
}
