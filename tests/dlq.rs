//! Dead letters of a read model on the real stack, with a small projection whose rule can be
//! fixed: a broken rule, an unknown schema id and garbage bytes are dead-lettered by a build;
//! `dlq` reads them with their context; after the fix, the re-drive checks each letter, rebuilds
//! a new generation in which the fixed record is applied at its place, dead-letters the two
//! that still fail again (with the generation that failed them), and marks the old letters
//! re-driven.

mod common;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dead_letters;
use common::events::{generations_row, produce, produce_event, table_rows, water, DAY_START, HOUR};
use common::Stack;
use dietstream::dlq::{self, Filter, Recheck};
use dietstream::kafka::ensure_topic;
use dietstream::replay::{self, ReplayOptions};
use dietstream::run::ReadModelEnv;
use dietstream_runtime::consume::{LoopConfig, ProcessorTopics};
use dietstream_runtime::{Effects, Origin, Projection, Row, RuleError, Table};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::Event;
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};

const TIMEOUT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

/// Water per user, refusing intakes above a limit that the test raises (the "fix").
struct Capped {
    limit: Arc<AtomicI32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Total {
    millilitres: i64,
}

const TABLES: &[Table] = &[Table {
    name: "dl_water",
    key: &["user_id"],
    values: &["millilitres"],
    set_once: &[],
}];

impl Projection for Capped {
    type State = Total;

    fn name(&self) -> &'static str {
        "capped"
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn migrations(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS {keyspace}.dl_water (user_id text PRIMARY KEY, \
             millilitres bigint)"
                .to_owned(),
        ]
    }

    fn wants(&self, event_type: &str) -> bool {
        event_type == "nutrition.water.logged"
    }

    fn entities(&self, event: &Event, _origin: &Origin<'_>) -> Vec<String> {
        vec![event.header().aggregate_id.clone()]
    }

    fn apply(
        &self,
        entity: &str,
        state: &mut Total,
        event: &Event,
        _origin: &Origin<'_>,
    ) -> Result<Effects, RuleError> {
        let Event::WaterIntakeLogged(water) = event else {
            return Ok(Effects::default());
        };
        let millilitres = water.payload.millilitres;
        let limit = self.limit.load(Ordering::SeqCst);
        if millilitres > limit {
            return Err(RuleError(format!("{millilitres} ml is above {limit} ml")));
        }
        state.millilitres += i64::from(millilitres);
        Ok(Effects {
            rows: vec![Row::upsert(
                "dl_water",
                vec![CqlValue::Text(entity.to_owned())],
                vec![Some(CqlValue::BigInt(state.millilitres))],
            )],
            commands: Vec::new(),
            partials: Vec::new(),
        })
    }
}

/// user → millilitres in `dl_water` of `generation`.
async fn totals(env: &ReadModelEnv, generation: u32) -> Vec<String> {
    let table = dietstream_runtime::generation::table_name("dl_water", generation);
    table_rows(&env.session, &env.keyspace, &table).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_dead_letters_are_applied_in_a_rebuild_and_marked_redriven() {
    common::init_tracing();
    let stack = Stack::get().await;
    let events = stack.topic("diet.events.user");
    let dead_letter = stack.topic("diet.dlq.capped");
    let admin = stack.admin();
    for (topic, partitions) in [(&events, PARTITIONS), (&dead_letter, 1)] {
        ensure_topic(&admin, topic, partitions, &[], TIMEOUT)
            .await
            .expect("topic");
    }
    let (session, keyspace) = stack.keyspace().await;
    let codec = Arc::new(
        Codec::new(
            stack.config.schema_registry.registry().expect("registry"),
            &Catalog::embedded().expect("catalog"),
        )
        .expect("codec"),
    );
    let env = ReadModelEnv {
        kafka: stack.config.kafka.client_config(),
        session: Arc::new(session),
        keyspace,
        codec: Arc::clone(&codec),
        config: LoopConfig {
            batch_size: 5,
            ..LoopConfig::default()
        },
    };
    let topics = ProcessorTopics {
        processor: "capped".to_owned(),
        group_id: common::unique_name("capped"),
        reads: vec![events.clone()],
        dead_letter: dead_letter.clone(),
        commands: None,
    };
    let options = ReplayOptions {
        progress_interval: Duration::from_secs(1),
        wait_timeout: Some(TIMEOUT),
        request_timeout: Duration::from_secs(30),
        take_over: false,
        interrupt: None,
    };
    let limit = Arc::new(AtomicI32::new(1_000));

    let producer = stack.producer();
    let (a, b) = (format!("{}-a", stack.prefix), format!("{}-b", stack.prefix));
    let at = |v: i64| DAY_START + v * HOUR;
    // b's second intake is above the limit: a broken rule until the fix.
    let intakes = [
        (&a, 1, 200),
        (&b, 1, 300),
        (&a, 2, 250),
        (&b, 2, 5_000),
        (&b, 3, 100),
    ];
    let mut big = None;
    for (user, version, ml) in intakes {
        let event = water(user, version, at(version), ml);
        let place = produce_event(&producer, &codec, &events, PARTITIONS, &event).await;
        if ml == 5_000 {
            big = Some(place);
        }
    }
    let (big_partition, big_offset) = big.expect("the big intake was produced");
    // An unknown schema id, then bytes that are not the wire format at all.
    let unreadable: [&[u8]; 2] = [&[0, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3], b"not avro"];
    for bytes in unreadable {
        produce(
            &producer,
            &events,
            PARTITIONS,
            &a,
            "nutrition.water.logged",
            bytes,
        )
        .await;
    }

    // The first build: generation 1 (nothing served before), three dead letters.
    let projection = Arc::new(Capped {
        limit: Arc::clone(&limit),
    });
    let mut lines = Vec::new();
    let first = replay::rebuild(&env, Arc::clone(&projection), &topics, &options, &mut |l| {
        lines.push(l)
    })
    .await
    .expect("first build");
    assert_eq!(
        (first.generation, first.run.dead_lettered),
        (1, 3),
        "{first:?}"
    );
    let a_row = format!("{{\"user_id\": \"{a}\", \"millilitres\": 450}}");
    let mut before = vec![
        a_row.clone(),
        format!("{{\"user_id\": \"{b}\", \"millilitres\": 400}}"),
    ];
    before.sort();
    assert_eq!(totals(&env, 1).await, before);

    let group = dlq::redrive_group(&topics.group_id);
    let read = || dead_letters::read(&env.kafka, &dead_letter, &group);
    let listed = read().await;
    assert_eq!(listed.letters.len(), 3);
    assert_eq!(listed.ends, [(0, 3)]);
    let pending = Filter::default().select(&listed.letters);
    assert_eq!(pending.len(), 3);
    let broken = pending
        .iter()
        .find(|l| l.error_class == "rule_violation")
        .expect("the broken rule is listed");
    assert_eq!(broken.original_topic.as_deref(), Some(events.as_str()));
    assert_eq!(
        (broken.original_partition, broken.original_offset),
        (Some(big_partition), Some(big_offset))
    );
    assert_eq!(broken.processor.as_deref(), Some("capped"));
    assert_eq!(broken.generation, Some(1));
    assert_eq!(broken.event_type.as_deref(), Some("nutrition.water.logged"));
    assert!(broken.error_message.contains("5000 ml is above 1000 ml"));
    assert!(
        broken
            .line()
            .contains(&format!("{events}[{big_partition}]@{big_offset}"))
            && broken.line().contains("rule_violation"),
        "{}",
        broken.line()
    );
    let mut classes: Vec<&str> = pending.iter().map(|l| l.error_class.as_str()).collect();
    classes.sort_unstable();
    assert_eq!(
        classes,
        ["bad_magic", "rule_violation", "unknown_schema_id"]
    );

    // The fix, then the re-drive.
    limit.store(10_000, Ordering::SeqCst);
    let mut report = Vec::new();
    let redriven = dlq::redrive(&env, Arc::clone(&projection), &topics, &options, &mut |l| {
        report.push(l)
    })
    .await
    .expect("re-drive");
    let outcomes: Vec<(&str, &Recheck)> = redriven
        .checked
        .iter()
        .map(|(letter, outcome)| (letter.error_class.as_str(), outcome))
        .collect();
    assert_eq!(outcomes.len(), 3);
    for (class, outcome) in outcomes {
        match class {
            "rule_violation" => assert_eq!(
                outcome,
                &Recheck::Decodes {
                    event_type: "nutrition.water.logged".to_owned(),
                    wanted: true
                }
            ),
            "unknown_schema_id" | "bad_magic" => {
                assert!(
                    matches!(outcome, Recheck::Fails { class: now, .. } if *now == class),
                    "{class}: {outcome:?}"
                )
            }
            other => panic!("unexpected class {other}"),
        }
    }
    assert!(
        report
            .iter()
            .any(|l| l.contains("decodes now as nutrition.water.logged")),
        "{report:?}"
    );
    let rebuilt = redriven.rebuild.expect("a rebuild ran");
    assert_eq!((rebuilt.previous, rebuilt.generation), (1, 2));
    assert_eq!(rebuilt.run.dead_lettered, 2, "{rebuilt:?}");
    let mut after = vec![
        a_row,
        format!("{{\"user_id\": \"{b}\", \"millilitres\": 5400}}"),
    ];
    after.sort();
    assert_eq!(totals(&env, 2).await, after);
    assert_eq!(
        totals(&env, 1).await,
        before,
        "generation 1 is left as it was"
    );
    let (active, building, _) = generations_row(&env.session, &env.keyspace, "capped").await;
    assert_eq!((active, building), (Some(2), None));
    // A rebuild that is no longer the one being built cannot make itself active.
    let stale =
        dietstream_runtime::generation::activate(&env.session, &env.keyspace, "capped", 1, &[], 0)
            .await
            .expect("conditional update answers");
    assert!(!stale);
    let (active, _, _) = generations_row(&env.session, &env.keyspace, "capped").await;
    assert_eq!(active, Some(2));

    // The three old letters are re-driven; the two that still fail wait again.
    let listed = read().await;
    assert_eq!(listed.letters.len(), 5);
    assert!(listed.letters[..3].iter().all(|l| l.redriven));
    let pending = Filter::default().select(&listed.letters);
    let mut again: Vec<(&str, Option<u32>)> = pending
        .iter()
        .map(|l| (l.error_class.as_str(), l.generation))
        .collect();
    again.sort_unstable();
    assert_eq!(
        again,
        [("bad_magic", Some(2)), ("unknown_schema_id", Some(2))]
    );
    let everything = Filter {
        all: true,
        ..Filter::default()
    };
    assert_eq!(everything.select(&listed.letters).len(), 5);
}
