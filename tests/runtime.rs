//! The shared consume loop against the real stack, with a small projection of its own (water
//! drunk per user and day, and per source partition): rows equal an oracle computed from the
//! produced events; records the projection does not want are skipped undecoded; garbage bytes,
//! an unknown schema id and a broken rule end in the dead-letter topic with their context; a
//! second group replaying the whole log over the same tables changes nothing; the metrics
//! endpoint shows what happened. The partial rows across users (water per day and source
//! partition) equal the oracle, also after the loop stopped between writing them and saving
//! the users' states and was restarted.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::events::{event_header, water};
use common::Stack;
use dietstream::kafka::ensure_topic;
use dietstream_runtime::consume::{self, LoopConfig, Parts, ProcessorTopics};
use dietstream_runtime::partials::{is_partial_entity, PartialSums};
use dietstream_runtime::store::{StateEncoding, COMPACT_STATE};
use dietstream_runtime::{
    Effects, Origin, Partial, PartialTable, ProcessorMetrics, Projection, Row, RuleError, Store,
    StoreError, Sum, Table,
};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, RECORD_TYPE_HEADER};
use dietstream_schemas::headers::{DLQ_ERROR_CLASS, DLQ_ORIGINAL_OFFSET, DLQ_PROCESSOR};
use dietstream_schemas::registry::ConfluentRegistry;
use dietstream_schemas::types::MealLogged;
use dietstream_schemas::Event;
use dietstream_topology::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::value::{CqlDate, CqlValue};
use serde::{Deserialize, Serialize};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;
/// 2025-11-26T00:00:00Z in microseconds: day 20418.
const DAY_START: i64 = 1_764_115_200_000_000;
const HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * HOUR;

/// Water per user and day, the total per source partition (an entity of its own), and per
/// day the partial rows across users (the runtime's; the partition entity adds the intakes,
/// the user entities the users).
#[derive(Debug, Clone, Copy, Default)]
struct Water {
    /// An intake of this many ml makes the user's effects carry a row its table refuses: the
    /// loop stops with an error after the batch's partial rows were written and saved, before
    /// any user state of the batch is.
    poison: Option<i64>,
    /// An intake of this many ml is written to `rt_water_days` as text, which its `bigint`
    /// column cannot take.
    mistype: Option<i64>,
    /// An intake of this many ml adds to a partial row of `rt_water_partitions`, which is not
    /// declared partial.
    stray_partial: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WaterState {
    /// Day number → (millilitres, logs).
    days: BTreeMap<i64, (i64, i64)>,
}

const TABLES: &[Table] = &[
    Table {
        name: "rt_water_days",
        key: &["user_id", "day"],
        values: &["millilitres", "logs"],
        set_once: &[],
    },
    Table {
        name: "rt_water_partitions",
        key: &["source_partition"],
        values: &["millilitres"],
        set_once: &[],
    },
    Table {
        name: "rt_water_day_partials",
        key: &["day", "source_partition"],
        values: &["millilitres", "users"],
        set_once: &[],
    },
];

const PARTIALS: &[PartialTable] = &[PartialTable {
    name: "rt_water_day_partials",
    sums: &[Sum::BigInt, Sum::Int],
}];

fn cql_date(day: i64) -> CqlValue {
    CqlValue::Date(CqlDate((day + (1_i64 << 31)) as u32))
}

impl Projection for Water {
    type State = WaterState;

    fn name(&self) -> &'static str {
        "water"
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn partials(&self) -> &'static [PartialTable] {
        PARTIALS
    }

    fn migrations(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS {keyspace}.rt_water_days (user_id text, day date, \
             millilitres bigint, logs bigint, PRIMARY KEY ((user_id), day))"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS {keyspace}.rt_water_partitions (source_partition int \
             PRIMARY KEY, millilitres bigint)"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS {keyspace}.rt_water_day_partials (day date, \
             source_partition int, millilitres bigint, users int, \
             PRIMARY KEY ((day), source_partition))"
                .to_owned(),
        ]
    }

    fn wants(&self, event_type: &str) -> bool {
        event_type == "nutrition.water.logged"
    }

    fn entities(&self, event: &Event, _origin: &Origin<'_>) -> Vec<String> {
        let user = event.header().user_id.clone().unwrap_or_default();
        vec![format!("user/{user}"), "partition".to_owned()]
    }

    fn apply(
        &self,
        entity: &str,
        state: &mut WaterState,
        event: &Event,
        origin: &Origin<'_>,
    ) -> Result<Effects, RuleError> {
        let Event::WaterIntakeLogged(water) = event else {
            return Ok(Effects::default());
        };
        let millilitres = i64::from(water.payload.millilitres);
        if millilitres <= 0 {
            return Err(RuleError(format!("{millilitres} ml is not an intake")));
        }
        let day = water.payload.drunk_at.div_euclid(MICROS_PER_DAY);
        let mut partials = Vec::new();
        let mut poisoned = None;
        let row = if entity == "partition" {
            // Two entities of one record add to one partial row: the partition entity the
            // intake, the user entity the user.
            partials.push(Partial {
                table: "rt_water_day_partials",
                key: vec![cql_date(day)],
                deltas: vec![millilitres, 0],
            });
            let total = state.days.entry(0).or_default();
            total.0 += millilitres;
            Row::upsert(
                "rt_water_partitions",
                vec![CqlValue::Int(origin.partition)],
                vec![Some(CqlValue::BigInt(total.0))],
            )
        } else {
            let figures = state.days.entry(day).or_default();
            // One more user in the day's partial row on the user's first intake of the day.
            partials.push(Partial {
                table: "rt_water_day_partials",
                key: vec![cql_date(day)],
                deltas: vec![0, i64::from(figures.1 == 0)],
            });
            figures.0 += millilitres;
            figures.1 += 1;
            if self.stray_partial == Some(millilitres) {
                partials.push(Partial {
                    table: "rt_water_partitions",
                    key: Vec::new(),
                    deltas: vec![millilitres],
                });
            }
            if self.poison == Some(millilitres) {
                poisoned = Some(Row::upsert(
                    "rt_water_days",
                    vec![CqlValue::Text(entity.to_owned()), cql_date(day)],
                    Vec::new(),
                ));
            }
            Row::upsert(
                "rt_water_days",
                vec![
                    CqlValue::Text(entity.trim_start_matches("user/").to_owned()),
                    cql_date(day),
                ],
                vec![
                    Some(if self.mistype == Some(millilitres) {
                        CqlValue::Text(figures.0.to_string())
                    } else {
                        CqlValue::BigInt(figures.0)
                    }),
                    Some(CqlValue::BigInt(figures.1)),
                ],
            )
        };
        Ok(Effects {
            rows: [row].into_iter().chain(poisoned).collect(),
            commands: Vec::new(),
            partials,
        })
    }
}

fn meal(user: &str, version: i64, timestamp: i64) -> Event {
    Event::MealLogged(
        serde_json::from_value::<MealLogged>(json!({
            "header": event_header("nutrition.meal.logged", user, version, timestamp),
            "payload": {
                "meal_id": uuid::Uuid::new_v4().to_string(),
                "meal_type": "LUNCH",
                "eaten_at": timestamp,
                "items": [],
                "note": null,
                "source": "MANUAL"
            }
        }))
        .expect("meal fits the generated type"),
    )
}

struct Fixture {
    stack: Stack,
    session: Arc<Session>,
    keyspace: String,
    codec: Arc<Codec<ConfluentRegistry>>,
    events: String,
    dead_letter: String,
    producer: FutureProducer,
}

impl Fixture {
    async fn new() -> Fixture {
        let stack = Stack::get().await;
        let events = stack.topic("diet.events.user");
        let dead_letter = stack.topic("diet.dlq.water");
        let admin = stack.admin();
        for (topic, partitions) in [(&events, PARTITIONS), (&dead_letter, 1)] {
            ensure_topic(&admin, topic, partitions, &[], TIMEOUT)
                .await
                .expect("topic");
        }
        let (session, keyspace) = stack.keyspace().await;
        for _ in 0..2 {
            dietstream_runtime::store::migrate(&session, &Water::default(), &keyspace)
                .await
                .expect("migrate");
        }
        let registry = stack.config.schema_registry.registry().expect("registry");
        let codec = Codec::new(registry, &Catalog::embedded().expect("catalog")).expect("codec");
        let producer = stack.producer();
        Fixture {
            stack,
            session: Arc::new(session),
            keyspace,
            codec: Arc::new(codec),
            events,
            dead_letter,
            producer,
        }
    }

    async fn produce(&self, user: &str, key: &str, event_type: &str, value: &[u8]) {
        let headers = OwnedHeaders::new().insert(Header {
            key: RECORD_TYPE_HEADER,
            value: Some(event_type),
        });
        let record = FutureRecord::<str, [u8]>::to(&self.events)
            .key(key)
            .partition(partition_for(user, PARTITIONS))
            .headers(headers)
            .payload(value);
        self.producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    async fn produce_event(&self, event: &Event) {
        let bytes = event
            .encode(&self.codec, &self.events)
            .await
            .expect("encode");
        let h = event.header();
        let key = format!("{}/{}", h.aggregate_id, h.version);
        self.produce(&h.aggregate_id, &key, event.record_type(), &bytes)
            .await;
    }

    fn topics(&self, group_id: &str) -> ProcessorTopics {
        ProcessorTopics {
            processor: "water".to_owned(),
            group_id: group_id.to_owned(),
            reads: vec![self.events.clone()],
            dead_letter: self.dead_letter.clone(),
            commands: None,
        }
    }

    /// Runs the loop in `group_id` until its committed offsets reach the end of every
    /// partition, then stops it; returns the metrics it reported, as scraped text.
    async fn run_until_caught_up(&self, group_id: &str) -> String {
        self.run(group_id, Water::default()).await
    }

    /// Starts the loop of `projection` in `group_id`, with small batches.
    async fn start(
        &self,
        group_id: &str,
        projection: Water,
    ) -> (
        tokio::task::JoinHandle<Result<consume::LoopSummary, dietstream_runtime::RuntimeError>>,
        tokio::sync::oneshot::Sender<()>,
        prometheus::Registry,
        rdkafka::ClientConfig,
    ) {
        self.start_with(group_id, projection, small_batches()).await
    }

    /// Starts the loop of `projection` in `group_id` with `config`.
    async fn start_with(
        &self,
        group_id: &str,
        projection: Water,
        config: LoopConfig,
    ) -> (
        tokio::task::JoinHandle<Result<consume::LoopSummary, dietstream_runtime::RuntimeError>>,
        tokio::sync::oneshot::Sender<()>,
        prometheus::Registry,
        rdkafka::ClientConfig,
    ) {
        let mut kafka = self.stack.config.kafka.client_config();
        kafka.set("auto.commit.interval.ms", "100");
        let registry = prometheus::Registry::new();
        let metrics = ProcessorMetrics::new("water", &registry).expect("metrics");
        let store = Store::prepare(Arc::clone(&self.session), &projection, &self.keyspace)
            .await
            .expect("prepare");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let topics = self.topics(group_id);
        let codec = Arc::clone(&self.codec);
        let processor = tokio::spawn({
            let kafka = kafka.clone();
            async move {
                let parts = Parts {
                    projection: Arc::new(projection),
                    topics,
                    store,
                    codec,
                    config,
                    metrics,
                };
                consume::run(parts, &kafka, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        (processor, stop, registry, kafka)
    }

    /// [`Fixture::run_until_caught_up`] with this projection.
    async fn run(&self, group_id: &str, projection: Water) -> String {
        self.run_with(group_id, projection, small_batches()).await
    }

    /// [`Fixture::run`] with `config`.
    async fn run_with(&self, group_id: &str, projection: Water, config: LoopConfig) -> String {
        let (processor, stop, registry, kafka) =
            self.start_with(group_id, projection, config).await;
        let watcher: BaseConsumer = kafka
            .clone()
            .set("group.id", group_id)
            .create()
            .expect("offset watcher");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(
                !processor.is_finished(),
                "the processor stopped early: {:?}",
                processor.await
            );
            let (w, topic) = (&watcher, &self.events);
            if tokio::task::block_in_place(move || caught_up(w, topic)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the processor did not catch up within {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.send(()).expect("processor still running");
        let summary = processor
            .await
            .expect("processor task")
            .expect("processor stopped cleanly");
        assert!(summary.records > 0, "{summary:?}");
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("metrics text")
    }

    /// Every row of a query (`{ks}` where the keyspace goes).
    async fn select<T>(&self, cql: &str) -> Vec<T>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.session
            .query_unpaged(cql.replace("{ks}", &self.keyspace), ())
            .await
            .expect("select")
            .into_rows_result()
            .expect("rows")
            .rows::<T>()
            .expect("typed rows")
            .map(|row| row.expect("row"))
            .collect()
    }

    async fn water_days(&self) -> BTreeMap<(String, i64), (i64, i64)> {
        let rows: Vec<(String, CqlDate, i64, i64)> = self
            .select("SELECT user_id, day, millilitres, logs FROM {ks}.rt_water_days")
            .await;
        rows.into_iter()
            .map(|(user, day, ml, logs)| ((user, i64::from(day.0) - (1_i64 << 31)), (ml, logs)))
            .collect()
    }

    async fn partition_totals(&self) -> i64 {
        let rows: Vec<(i64,)> = self
            .select("SELECT millilitres FROM {ks}.rt_water_partitions")
            .await;
        rows.into_iter().map(|(ml,)| ml).sum()
    }

    /// The partial rows: (day, source partition) → (millilitres, users).
    async fn day_partials(&self) -> BTreeMap<(i64, i32), (i64, i32)> {
        let rows: Vec<(CqlDate, i32, i64, i32)> = self
            .select(
                "SELECT day, source_partition, millilitres, users FROM {ks}.rt_water_day_partials",
            )
            .await;
        rows.into_iter()
            .map(|(day, partition, ml, users)| {
                ((i64::from(day.0) - (1_i64 << 31), partition), (ml, users))
            })
            .collect()
    }

    /// The offset a user entity's saved state has applied, if it has one.
    async fn user_offset(&self, user: &str) -> Option<i64> {
        let source = format!("{}/{}", self.events, partition_for(user, PARTITIONS));
        let rows = self
            .session
            .query_unpaged(
                format!(
                    "SELECT applied_offset FROM {}.water_state WHERE source = ? AND entity = ?",
                    self.keyspace
                ),
                (source, format!("user/{user}")),
            )
            .await
            .expect("select")
            .into_rows_result()
            .expect("rows");
        rows.maybe_first_row::<(i64,)>()
            .expect("typed row")
            .map(|(offset,)| offset)
    }

    /// The dead letters: (error class, original offset, processor), in order.
    fn dead_letters(&self) -> Vec<(String, String, String)> {
        let consumer: BaseConsumer = self
            .stack
            .consumer_config()
            .set("group.id", common::unique_name("dlq"))
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.dead_letter, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&list).expect("assign");
        let (_, end) = consumer
            .fetch_watermarks(&self.dead_letter, 0, TIMEOUT)
            .expect("watermarks");
        let mut letters = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while (letters.len() as i64) < end {
            assert!(Instant::now() < deadline, "dead letters not read in time");
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("dead letter");
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            letters.push((
                header(DLQ_ERROR_CLASS),
                header(DLQ_ORIGINAL_OFFSET),
                header(DLQ_PROCESSOR),
            ));
        }
        letters
    }
}

/// The partial rows the per-user oracle implies: per day and the user's partition, the sum of
/// the millilitres and the number of users.
fn partials_of(days: &BTreeMap<(String, i64), (i64, i64)>) -> BTreeMap<(i64, i32), (i64, i32)> {
    let mut out: BTreeMap<(i64, i32), (i64, i32)> = BTreeMap::new();
    for ((user, day), (ml, _)) in days {
        let sums = out
            .entry((*day, partition_for(user, PARTITIONS)))
            .or_default();
        sums.0 += ml;
        sums.1 += 1;
    }
    out
}

/// True when the group's committed offset equals the end of every partition of `topic`.
fn caught_up(watcher: &BaseConsumer, topic: &str) -> bool {
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let (_, high) = watcher
            .fetch_watermarks(topic, partition, TIMEOUT)
            .expect("watermarks");
        list.add_partition(topic, partition);
        ends.insert(partition, high);
    }
    let committed = watcher
        .committed_offsets(list, TIMEOUT)
        .expect("committed offsets");
    committed.elements().iter().all(|e| match e.offset() {
        Offset::Offset(offset) => offset >= ends[&e.partition()],
        _ => ends[&e.partition()] == 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_writes_the_oracle_dead_letters_bad_records_and_replays_identically() {
    common::init_tracing();
    let fixture = Fixture::new().await;
    let mut oracle: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut total = 0;
    for u in 0..6 {
        let user = format!("user-{u}");
        for v in 1..=8_i64 {
            // Two days, a few intakes each; every third version a meal the loop must skip.
            let at = DAY_START + (v % 2) * MICROS_PER_DAY + v * HOUR;
            if v % 3 == 0 {
                fixture.produce_event(&meal(&user, v, at)).await;
                continue;
            }
            let ml = 100 + 10 * i32::try_from(v + u).expect("small");
            fixture.produce_event(&water(&user, v, at, ml)).await;
            let day = oracle
                .entry((user.clone(), at.div_euclid(MICROS_PER_DAY)))
                .or_default();
            day.0 += i64::from(ml);
            day.1 += 1;
            total += i64::from(ml);
        }
    }
    // Garbage, an unknown schema id, a broken rule: each dead-lettered, the rest goes on.
    fixture
        .produce(
            "user-0",
            "user-0/90",
            "nutrition.water.logged",
            b"not avro at all",
        )
        .await;
    fixture
        .produce(
            "user-1",
            "user-1/91",
            "nutrition.water.logged",
            &[0, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3],
        )
        .await;
    fixture
        .produce_event(&water("user-2", 92, DAY_START + HOUR, -5))
        .await;
    let after = water("user-2", 93, DAY_START + 2 * HOUR, 250);
    fixture.produce_event(&after).await;
    let day = oracle
        .entry(("user-2".to_owned(), DAY_START.div_euclid(MICROS_PER_DAY)))
        .or_default();
    day.0 += 250;
    day.1 += 1;
    total += 250;

    let metrics = fixture
        .run_until_caught_up(&common::unique_name("water"))
        .await;
    assert_eq!(fixture.water_days().await, oracle);
    assert_eq!(fixture.partition_totals().await, total);
    assert_eq!(fixture.day_partials().await, partials_of(&oracle));
    let mut classes: Vec<String> = fixture
        .dead_letters()
        .into_iter()
        .map(|(class, offset, processor)| {
            assert_eq!(processor, "water");
            assert!(offset.parse::<i64>().is_ok(), "offset header {offset:?}");
            class
        })
        .collect();
    classes.sort();
    assert_eq!(
        classes,
        ["bad_magic", "rule_violation", "unknown_schema_id"]
    );
    let line = |needle: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{metrics}"))
            .to_owned()
    };
    assert!(
        line("dietstream_records_skipped_total{").ends_with(" 12"),
        "{metrics}"
    );
    assert!(line("dietstream_freshness_seconds_count{").contains("processor=\"water\""));
    let dead: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dietstream_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead, 3.0, "{metrics}");

    // A second group replays the whole log over the same tables and state: nothing changes,
    // and nothing more is dead-lettered than the same three records again.
    fixture
        .run_until_caught_up(&common::unique_name("water"))
        .await;
    assert_eq!(fixture.water_days().await, oracle);
    assert_eq!(fixture.partition_totals().await, total);
    assert_eq!(fixture.day_partials().await, partials_of(&oracle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_between_the_partial_rows_and_the_users_states_counts_nothing_twice() {
    common::init_tracing();
    let fixture = Fixture::new().await;
    let mut oracle: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut log = |user: &str, at: i64, ml: i32| {
        let day = oracle
            .entry((user.to_owned(), at.div_euclid(MICROS_PER_DAY)))
            .or_default();
        day.0 += i64::from(ml);
        day.1 += 1;
    };
    for u in 0..5 {
        let user = format!("user-{u}");
        for v in 1..=6_i64 {
            let at = DAY_START + (v % 2) * MICROS_PER_DAY + v * HOUR;
            let ml = 100 + 10 * i32::try_from(v + u).expect("small");
            fixture.produce_event(&water(&user, v, at, ml)).await;
            log(&user, at, ml);
        }
    }
    // The last record of user-0's partition: 777 ml, which the poisoned projection cannot
    // write for the user.
    let poisoned_at = DAY_START + 20 * HOUR;
    fixture
        .produce_event(&water("user-0", 7, poisoned_at, 777))
        .await;
    log("user-0", poisoned_at, 777);
    let partition = partition_for("user-0", PARTITIONS);

    let group = common::unique_name("water");
    let poisoned = Water {
        poison: Some(777),
        ..Water::default()
    };
    let (processor, _stop, _, _) = fixture.start(&group, poisoned).await;
    let stopped = tokio::time::timeout(TIMEOUT, processor)
        .await
        .expect("the poisoned loop stops within the timeout")
        .expect("processor task");
    let error = stopped.expect_err("the poisoned loop stops on the row its table refuses");
    assert!(error.to_string().contains("rt_water_days"), "{error}");
    // Stopped between the two halves of that batch: the partial rows of user-0's partition
    // already hold the poisoned intake (and everything before it in that partition), while
    // user-0's saved state has not reached it.
    let want = partials_of(&oracle);
    let got = fixture.day_partials().await;
    for (key, sums) in want.iter().filter(|((_, p), _)| *p == partition) {
        assert_eq!(
            got.get(key),
            Some(sums),
            "partial row {key:?} before the restart"
        );
    }
    let (_, end) = fixture
        .stack
        .consumer_config()
        .create::<BaseConsumer>()
        .expect("consumer")
        .fetch_watermarks(&fixture.events, partition, TIMEOUT)
        .expect("watermarks");
    let saved = fixture.user_offset("user-0").await.expect("user-0 saved");
    assert!(
        saved < end - 1,
        "user-0 saved at {saved}, the poisoned record is {}",
        end - 1
    );

    // Restarted in the same group without the poison: the users apply the batch again and
    // emit the same deltas, which the partial rows skip.
    fixture.run(&group, Water::default()).await;
    assert_eq!(fixture.water_days().await, oracle);
    assert_eq!(fixture.day_partials().await, partials_of(&oracle));
    assert_eq!(fixture.user_offset("user-0").await, Some(end - 1));
}

/// Runs `projection` over one intake of `millilitres`, which it gets wrong, and requires the
/// loop to stop on it at once with [`StoreError::BadRow`] naming `table`, without a retry and
/// without the user's row: a bug in the projection, which no retry mends.
async fn a_projection_bug_stops_the_loop(projection: Water, millilitres: i32, table: &str) {
    common::init_tracing();
    let fixture = Fixture::new().await;
    fixture
        .produce_event(&water("user-0", 1, DAY_START + HOUR, millilitres))
        .await;
    let group = common::unique_name("water");
    let (processor, _stop, registry, _) = fixture.start(&group, projection).await;
    let stopped = tokio::time::timeout(TIMEOUT, processor)
        .await
        .expect("the loop stops within the timeout")
        .expect("processor task");
    let error = stopped.expect_err("the loop stops on the projection's bug");
    assert!(
        matches!(
            &error,
            dietstream_runtime::RuntimeError::Store(StoreError::BadRow { table: named, .. })
                if named == table
        ),
        "{error}"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics text");
    assert!(
        !text.contains("dietstream_retries_total{"),
        "no retry expected:\n{text}"
    );
    assert_eq!(fixture.water_days().await, BTreeMap::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_its_column_cannot_take_stops_the_loop_without_retries() {
    let mistyped = Water {
        mistype: Some(555),
        ..Water::default()
    };
    a_projection_bug_stops_the_loop(mistyped, 555, "rt_water_days").await;
}

/// Its sums' column types are unknown: they were written as `bigint` before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_row_of_a_table_not_declared_partial_stops_the_loop() {
    let stray = Water {
        stray_partial: Some(556),
        ..Water::default()
    };
    a_projection_bug_stops_the_loop(stray, 556, "rt_water_partitions").await;
}

/// The loop's settings in these tests: small batches.
fn small_batches() -> LoopConfig {
    LoopConfig {
        batch_size: 5,
        max_in_flight: 4,
        ..LoopConfig::default()
    }
}

/// Every state row of the water processor: (source, entity, state bytes).
async fn saved_states(fixture: &Fixture) -> Vec<(String, String, Vec<u8>)> {
    fixture
        .select("SELECT source, entity, state FROM {ks}.water_state")
        .await
}

/// A state table written before states were saved compact holds JSON, as does one written
/// with `state_encoding = "json"` (the first step of a rolling upgrade): the loop loads it,
/// goes on from it with the same sums as one pass, and saves the states it changes compact,
/// leaving the others as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_saved_as_json_load_and_are_saved_compact_when_changed() {
    common::init_tracing();
    let fixture = Fixture::new().await;
    let mut oracle: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut produce = async |user: &str, v: i64| {
        let at = DAY_START + (v % 3) * MICROS_PER_DAY + v * HOUR;
        let ml = 150 + i32::try_from(v).expect("small");
        fixture.produce_event(&water(user, v, at, ml)).await;
        let day = oracle
            .entry((user.to_owned(), at.div_euclid(MICROS_PER_DAY)))
            .or_default();
        day.0 += i64::from(ml);
        day.1 += 1;
    };
    let users: Vec<String> = (0..6).map(|u| format!("user-{u}")).collect();
    for user in &users {
        for v in 1..=5 {
            produce(user, v).await;
        }
    }
    let group = common::unique_name("water");
    let json = LoopConfig {
        state_encoding: StateEncoding::Json,
        ..small_batches()
    };
    fixture.run_with(&group, Water::default(), json).await;

    // Every state, the partial rows' sums included, saved as JSON that the earlier version
    // reads: plain `serde_json` of the state types.
    let states = saved_states(&fixture).await;
    assert!(states.len() > users.len(), "{} states", states.len());
    for (_, entity, bytes) in &states {
        assert_eq!(bytes.first(), Some(&b'{'), "{entity} saved as JSON");
        if is_partial_entity(entity) {
            serde_json::from_slice::<PartialSums>(bytes).expect("partial sums as JSON");
        } else {
            serde_json::from_slice::<WaterState>(bytes).expect("a water state as JSON");
        }
    }

    // Two users go on; the restarted loop reads every state of their partitions as JSON.
    let (going_on, idle) = users.split_at(2);
    for user in going_on {
        for v in 6..=9 {
            produce(user, v).await;
        }
    }
    fixture.run(&group, Water::default()).await;
    assert_eq!(fixture.water_days().await, oracle);
    assert_eq!(fixture.day_partials().await, partials_of(&oracle));
    let total: i64 = oracle.values().map(|(ml, _)| ml).sum();
    assert_eq!(fixture.partition_totals().await, total);
    let states: BTreeMap<String, Vec<u8>> = saved_states(&fixture)
        .await
        .into_iter()
        .map(|(_, entity, bytes)| (entity, bytes))
        .collect();
    for user in going_on {
        let bytes = &states[&format!("user/{user}")];
        assert_eq!(
            bytes.first(),
            Some(&COMPACT_STATE),
            "{user} changed: compact"
        );
    }
    for user in idle {
        let bytes = &states[&format!("user/{user}")];
        assert_eq!(bytes.first(), Some(&b'{'), "{user} unchanged: still JSON");
    }
}

/// A cluster holding the earlier shape of an all-users table (one row per user, `user_id` in
/// the key): the migrations leave it alone (`IF NOT EXISTS`) and the processor cannot start,
/// its write of the partial rows refused while preparing, naming the table; the README says
/// to rebuild with `dietstream replay`, whose next generation has the new shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_users_table_of_the_earlier_shape_stops_the_start() {
    common::init_tracing();
    let stack = Stack::get().await;
    let (session, keyspace) = stack.keyspace().await;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {keyspace}.nutrition_daily_all_users (day date, \
                 source_partition int, user_id text, energy_kcal double, protein_g double, \
                 carbohydrate_g double, fat_g double, fibre_g double, sugar_g double, \
                 sodium_mg double, water_ml bigint, meals int, breakfasts int, lunches int, \
                 dinners int, snacks int, other_meals int, users_with_goal int, \
                 users_goal_met int, PRIMARY KEY ((day), source_partition, user_id))"
            ),
            (),
        )
        .await
        .expect("the earlier table");
    let projection = dietstream_nutrition::NutritionProjection::new();
    dietstream_runtime::store::migrate(&session, &projection, &keyspace)
        .await
        .expect("the migrations leave the earlier table alone");
    let session = Arc::new(session);
    let refused = Store::prepare(Arc::clone(&session), &projection, &keyspace)
        .await
        .err()
        .expect("the partial rows' write is refused");
    assert!(
        refused.to_string().contains("nutrition_daily_all_users"),
        "{refused}"
    );
    // The next generation, as a rebuild makes it, has the new shape and prepares.
    dietstream_runtime::store::migrate_generation(&session, &projection, &keyspace, 1)
        .await
        .expect("generation 1");
    Store::prepare_generation(session, &projection, &keyspace, 1)
        .await
        .expect("generation 1 prepares");
}

/// `Store::write_all` and `Store::save_all` batch writes that share a CQL partition key: with a
/// budget that lets many rows share a batch, with one that sends each alone, and with rows of
/// several users and tables mixed, every row and every state lands, deletes included, and
/// each write is observed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_batches_writes_that_share_a_partition_key_and_loses_none() {
    common::init_tracing();
    let fixture = Fixture::new().await;
    let store = Store::prepare(
        Arc::clone(&fixture.session),
        &Water::default(),
        &fixture.keyspace,
    )
    .await
    .expect("prepare");
    for (round, budget) in [(0_i64, 32 * 1024), (1, 1), (2, 200)] {
        let mut rows = Vec::new();
        let mut expected = BTreeMap::new();
        // Three users with 40 days each (one partition per user), interleaved, and one row
        // per source partition (partitions of their own).
        for day in 0..40 {
            for user in ["u1", "u2", "u3"] {
                let figures = (round * 1000 + day, day + 1);
                rows.push(Row::upsert(
                    "rt_water_days",
                    vec![CqlValue::Text(user.to_owned()), cql_date(day)],
                    vec![
                        Some(CqlValue::BigInt(figures.0)),
                        Some(CqlValue::BigInt(figures.1)),
                    ],
                ));
                expected.insert((user.to_owned(), day), figures);
            }
        }
        // Rows written by an earlier round and deleted now.
        for day in 40..45 {
            rows.push(Row::Delete {
                table: "rt_water_days",
                key: vec![CqlValue::Text("u2".to_owned()), cql_date(day)],
            });
            if round == 0 {
                expected.insert(("u2".to_owned(), day), (day, day));
            }
        }
        for partition in 0..3 {
            rows.push(Row::upsert(
                "rt_water_partitions",
                vec![CqlValue::Int(partition)],
                vec![Some(CqlValue::BigInt(round))],
            ));
        }
        if round == 0 {
            // Written alone first, so that this round's deletes have rows to delete.
            for day in 40..45 {
                store
                    .write(&Row::upsert(
                        "rt_water_days",
                        vec![CqlValue::Text("u2".to_owned()), cql_date(day)],
                        vec![Some(CqlValue::BigInt(day)), Some(CqlValue::BigInt(day))],
                    ))
                    .await
                    .expect("single write");
            }
            assert_eq!(fixture.water_days().await.len(), 5, "the rows to delete");
        }
        let observed = std::sync::Mutex::new(BTreeMap::<&str, usize>::new());
        store
            .write_all(&rows, 4, budget, |table, _| {
                *observed.lock().expect("lock").entry(table).or_default() += 1;
            })
            .await
            .unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        expected.retain(|(user, day), _| !(user == "u2" && (40..45).contains(day)));
        assert_eq!(fixture.water_days().await, expected, "budget {budget}");
        assert_eq!(
            fixture.partition_totals().await,
            3 * round,
            "budget {budget}"
        );
        assert_eq!(
            observed.into_inner().expect("lock"),
            BTreeMap::from([("rt_water_days", 125), ("rt_water_partitions", 3)]),
            "budget {budget}: each row observed once"
        );

        let source = format!("batch-test/{round}");
        let states: Vec<(String, dietstream_runtime::Stored<WaterState>)> = (0..300)
            .map(|i| {
                let state = WaterState {
                    days: (0..(i % 7)).map(|d| (d, (i * 10 + d, 1))).collect(),
                };
                (
                    format!("user/{i}"),
                    dietstream_runtime::Stored {
                        state,
                        applied_offset: i + round,
                    },
                )
            })
            .collect();
        let saved = std::sync::atomic::AtomicUsize::new(0);
        store
            .save_all(
                &source,
                &states,
                StateEncoding::Compact,
                (8, budget),
                |_| {
                    saved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                },
            )
            .await
            .unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        assert_eq!(saved.into_inner(), states.len(), "each state observed once");
        let loaded = store
            .load::<WaterState>(&source)
            .await
            .expect("load states");
        assert_eq!(loaded.len(), states.len(), "budget {budget}");
        for (entity, stored) in &states {
            let back = &loaded[entity];
            assert_eq!(back.applied_offset, stored.applied_offset, "{entity}");
            assert_eq!(back.state.days, stored.state.days, "{entity}");
        }
    }
}

/// Batches of the loop: (count, records in all).
fn batches(registry: &prometheus::Registry) -> (u64, f64) {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "dietstream_batch_records")
        .flat_map(|f| f.get_metric())
        .map(|m| {
            let h = m.get_histogram();
            (h.get_sample_count(), h.get_sample_sum())
        })
        .fold((0, 0.0), |(n, r), (c, s)| (n + c, r + s))
}

/// Produces `logs` water logs of one user one after the other (each acknowledged before the
/// next) into a running loop with `flush_interval`, and returns the loop's batches once all
/// are written.
async fn batches_of_a_trickle(fixture: &Fixture, flush_interval: Duration, logs: i64) -> u64 {
    let group = common::unique_name("flush");
    let config = LoopConfig {
        batch_size: 100,
        flush_interval,
        ..LoopConfig::default()
    };
    let (processor, stop, registry, _) = fixture.start_with(&group, Water::default(), config).await;
    let deadline = Instant::now() + TIMEOUT;
    let written = |records: f64| {
        let (processor, registry) = (&processor, &registry);
        async move {
            while batches(registry).1 < records {
                assert!(
                    !processor.is_finished() && Instant::now() < deadline,
                    "{records} records not written within {TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The loop is reading (assigned, its positions found) once a first record is written:
    // records produced before that would arrive all at once.
    let (user, first) = (common::unique_name("trickle"), common::unique_name("first"));
    let (_, written_before) = batches(&registry);
    fixture
        .produce_event(&water(&first, 1, DAY_START, 100))
        .await;
    written(written_before + 1.0).await;
    let (before, written_before) = batches(&registry);
    for v in 1..=logs {
        fixture
            .produce_event(&water(&user, v, DAY_START + v * HOUR, 100))
            .await;
    }
    written(written_before + logs as f64).await;
    stop.send(()).expect("processor still running");
    processor
        .await
        .expect("processor task")
        .expect("processor stopped cleanly");
    batches(&registry).0 - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_interval_gathers_a_trickle_into_one_batch() {
    common::init_tracing();
    let fixture = Fixture::new().await;
    // Without a flush interval the first record is written as soon as it arrives, before
    // the next is even produced; with 5 s, the five logs of the trickle (produced within
    // milliseconds of each other) wait for each other and go in one batch.
    let at_once = batches_of_a_trickle(&fixture, Duration::ZERO, 5).await;
    assert!(at_once >= 2, "{at_once} batches without a flush interval");
    let gathered = batches_of_a_trickle(&fixture, Duration::from_secs(5), 5).await;
    assert_eq!(gathered, 1, "batches with a 5 s flush interval");
}
