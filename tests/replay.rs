//! `dietstream replay` on the real stack: a running nutrition processor (generation 0) builds
//! its tables; a rebuild writes generation 1 from the start of the log while it keeps running,
//! shows progress, and ends with tables equal to generation 0 row by row and generation 1
//! active; the running processor then switches by itself, so later events land in the `_g1`
//! tables only, and `query rows` reads them there.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::events::{generations_row, produce, produce_event, table_rows, water, DAY_START, HOUR};
use common::Stack;
use dietstream::replay::{ReplayError, ReplayOptions};
use dietstream_nutrition::NutritionProjection;
use dietstream_runtime::{generation, Projection};
use dietstream_topology::{prefixed, Topology};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `check` every 100 ms until it is true; panics with `what` after [`TIMEOUT`].
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Members of consumer group `group` now.
async fn members(consumer: &Arc<BaseConsumer>, group: &str) -> usize {
    let (consumer, group) = (Arc::clone(consumer), group.to_owned());
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_group_list(Some(&group), TIMEOUT)
            .map(|list| list.groups().iter().map(|g| g.members().len()).sum())
            .unwrap_or(0)
    })
    .await
    .expect("group list task")
}

/// The lines `dietstream <arguments>` prints for `config`'s stack, prefix and keyspace.
async fn dietstream(config: &dietstream::config::Config, arguments: &[&str]) -> Vec<String> {
    let mut command = common::dietstream_command(config);
    command.args(arguments);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("dietstream task")
        .expect("dietstream runs");
    assert!(
        output.status.success(),
        "dietstream {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The lines `dietstream dlq list nutrition <options>` prints.
async fn dlq_list(config: &dietstream::config::Config, options: &[&str]) -> Vec<String> {
    let arguments: Vec<&str> = ["dlq", "list", "nutrition"]
        .into_iter()
        .chain(options.iter().copied())
        .collect();
    dietstream(config, &arguments).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_equals_the_live_tables_and_the_live_processor_switches_to_it() {
    common::init_tracing();
    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = common::unique_name("rp");
    config.metrics.listen = "127.0.0.1:0".parse().expect("address");
    config.processors.generation_check_interval = Duration::from_millis(200);
    let session = dietstream::run::migrate(&config).await.expect("migrate");
    let keyspace = config.cql.keyspace.clone();

    let desired = Topology::embedded()
        .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
        .expect("topology");
    let topic = prefixed(&config.topology.prefix, "diet.events.user");
    let partitions = desired
        .topics
        .iter()
        .find(|t| t.name == topic)
        .expect("user events topic")
        .partitions;
    let group = desired
        .consumers
        .iter()
        .find(|c| c.processor == "nutrition")
        .expect("nutrition consumer")
        .group
        .clone();
    let codec = common::codec_of(&config);
    let producer = stack.producer();
    for u in 0..12 {
        let user = format!("{}-u{u}", stack.prefix);
        for v in 1..=10_i64 {
            let at = DAY_START + (v % 3) * 24 * HOUR + v * HOUR;
            let ml = 100 + 25 * i32::try_from(u + v).expect("small");
            produce_event(
                &producer,
                &codec,
                &topic,
                partitions,
                &water(&user, v, at, ml),
            )
            .await;
        }
    }

    // Bytes that are not the wire format: dead-lettered by every generation.
    let garbage_user = format!("{}-garbage", stack.prefix);
    produce(
        &producer,
        &topic,
        partitions,
        &garbage_user,
        "nutrition.water.logged",
        b"not avro",
    )
    .await;

    // Generation 0: the running processor reads everything.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let live = tokio::spawn({
        let config = config.clone();
        async move {
            dietstream::run::read_models(&config, &["nutrition"], async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let lag = |group: String| {
        let (kafka, reads) = (config.kafka.client_config(), vec![topic.clone()]);
        async move {
            tokio::task::spawn_blocking(move || {
                dietstream::kafka::group_lag(&kafka, &group, &reads, TIMEOUT)
                    .map(|lag| lag.total())
                    .unwrap_or(i64::MAX)
            })
            .await
            .expect("lag task")
        }
    };
    wait_for("generation 0 catching up", || {
        let lag = lag(group.clone());
        async move { lag.await == 0 }
    })
    .await;
    assert!(
        !live.is_finished(),
        "the processor stopped: {:?}",
        live.await
    );

    let listed = dlq_list(&config, &["--json"]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let letter: serde_json::Value = serde_json::from_str(&listed[0]).expect("a JSON line");
    assert_eq!(letter["error_class"], "bad_magic", "{letter}");
    assert_eq!(letter["original_topic"], topic.as_str(), "{letter}");
    assert_eq!(letter["processor"], "nutrition", "{letter}");
    assert_eq!(letter["generation"], 0, "{letter}");
    assert_eq!(letter["redriven"], false, "{letter}");

    // Generation 1, built while generation 0 keeps running.
    let mut lines = Vec::new();
    let options = ReplayOptions {
        progress_interval: Duration::from_millis(200),
        wait_timeout: Some(TIMEOUT),
        request_timeout: Duration::from_secs(30),
        take_over: false,
        interrupt: None,
    };
    let summary =
        dietstream::replay::replay(&config, "nutrition", &options, &mut |line| lines.push(line))
            .await
            .expect("replay");
    assert_eq!((summary.previous, summary.generation), (0, 1));
    assert_eq!(summary.group, format!("{group}.g1"));
    assert_eq!(summary.run.applied, 120, "{summary:?}");
    assert_eq!(summary.run.dead_lettered, 1, "{summary:?}");
    let listed = dlq_list(&config, &["--class", "bad_magic"]).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[1].ends_with("(generation 1)"), "{listed:?}");
    assert!(summary.progress_lines >= 1, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains(&format!("{topic} 121/121"))
            && l.contains("records/s")
            && l.contains("ETA")),
        "{lines:?}"
    );
    let text = summary.to_string();
    assert!(
        text.contains(&format!(
            "DROP TABLE IF EXISTS {keyspace}.nutrition_user_daily;"
        )),
        "{text}"
    );

    let projection = NutritionProjection::new();
    for table in projection.tables() {
        let old = table_rows(&session, &keyspace, table.name).await;
        let new = table_rows(&session, &keyspace, &format!("{}_g1", table.name)).await;
        assert!(!old.is_empty(), "{} is empty", table.name);
        assert_eq!(
            old, new,
            "{} differs between generations 0 and 1",
            table.name
        );
    }
    let (active, building, tables) = generations_row(&session, &keyspace, "nutrition").await;
    assert_eq!((active, building), (Some(1), None));
    let tables = tables.expect("tables recorded");
    assert!(
        tables.contains(&"nutrition_user_daily_g1".to_owned())
            && tables.contains(&"nutrition_state_g1".to_owned()),
        "{tables:?}"
    );

    // The running processor switches: it leaves group 0 and joins group 1.
    let watcher: Arc<BaseConsumer> = Arc::new(stack.consumer_config().create().expect("watcher"));
    let new_group = format!("{group}.g1");
    wait_for("the switch to generation 1", || {
        let watcher = Arc::clone(&watcher);
        let (old, new) = (group.clone(), new_group.clone());
        async move { members(&watcher, &new).await == 1 && members(&watcher, &old).await == 0 }
    })
    .await;
    assert!(
        !live.is_finished(),
        "the processor stopped: {:?}",
        live.await
    );

    // Events after the switch land in generation 1 only.
    let late = format!("{}-late", stack.prefix);
    for v in 1..=3 {
        let event = water(&late, v, DAY_START + v * HOUR, 300);
        produce_event(&producer, &codec, &topic, partitions, &event).await;
    }
    wait_for("the late user's rows in generation 1", || {
        let (session, keyspace, late) = (&session, &keyspace, &late);
        async move {
            dietstream::run::user_rows(session, keyspace, "nutrition_user_daily", late, 10)
                .await
                .is_ok_and(|rows| rows.len() == 1 && rows[0].contains("\"water_ml\": 900"))
        }
    })
    .await;
    let old_rows = session
        .query_unpaged(
            format!("SELECT day FROM {keyspace}.nutrition_user_daily WHERE user_id = ?"),
            (late.as_str(),),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows_num();
    assert_eq!(old_rows, 0, "generation 0 received events after the switch");
    wait_for("generation 1 catching up", || {
        let lag = lag(new_group.clone());
        async move { lag.await == 0 }
    })
    .await;
    assert_eq!(lag(group.clone()).await, 3, "group 0 stopped at the switch");

    let lag = dietstream(&config, &["lag", "--processor", "nutrition"]).await;
    assert!(
        lag.len() == 1
            && lag[0].contains(&format!("{new_group} "))
            && lag[0].contains("lag        0"),
        "{lag:?}"
    );

    stop.send(()).expect("processor running");
    live.await
        .expect("processor task")
        .expect("processor stopped cleanly");
}

/// One rebuild of a processor at a time: a rebuild recorded as running (here one whose process
/// was killed) refuses the next, in the library and on the command line; `--take-over` starts
/// over, and a `lag --wait` started before follows the switch; a rebuild that stops without
/// switching (it gives up, or is interrupted) lets the next one start, above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refuses_to_start_beside_a_running_one_and_takes_over_a_killed_one() {
    common::init_tracing();
    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = common::unique_name("rq");
    let session = dietstream::run::migrate(&config).await.expect("migrate");
    let keyspace = config.cql.keyspace.clone();
    let topic = prefixed(&config.topology.prefix, "diet.events.user");
    let codec = common::codec_of(&config);
    let (producer, user) = (stack.producer(), format!("{}-u", stack.prefix));
    for v in 1..=3 {
        let event = water(&user, v, DAY_START + v * HOUR, 250);
        produce_event(&producer, &codec, &topic, 1, &event).await;
    }
    let load = || generation::load(&session, &keyspace, "nutrition");
    let rebuild = |options: &ReplayOptions| {
        let (config, options) = (config.clone(), options.clone());
        async move { dietstream::replay::replay(&config, "nutrition", &options, &mut |_| {}).await }
    };
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");

    // `lag --wait` started before any rebuild waits on generation 0's group, which nothing
    // consumes (lag 3); its first table shows it has looked.
    let mut lag_wait = common::dietstream_command(&config);
    lag_wait
        .args([
            "lag",
            "--processor",
            "nutrition",
            "--wait",
            "120s",
            "--watch",
            "100ms",
        ])
        .stdout(std::process::Stdio::piped());
    let mut lag_wait = lag_wait.spawn().expect("lag --wait runs");
    let mut lag_lines = std::io::BufRead::lines(std::io::BufReader::new(
        lag_wait.stdout.take().expect("stdout"),
    ));
    let lag_lines = tokio::task::spawn_blocking(move || {
        let first = lag_lines
            .find(|line| line.as_ref().is_ok_and(|l| l.starts_with("nutrition")))
            .expect("a table row")
            .expect("a line");
        let lag = first.split_whitespace().nth(3);
        assert_eq!(
            lag,
            Some("3"),
            "processor, committed, records/s, lag, eta: {first}"
        );
        lag_lines
    })
    .await
    .expect("lag reader");

    // A rebuild whose process was killed: generation 1 is recorded as building since now.
    // Beginning it again from the same read, as a rebuild started at the same moment would,
    // is refused by the condition.
    assert!(
        generation::begin(&session, &keyspace, "nutrition", 1, None, now_ms)
            .await
            .expect("begin")
    );
    assert!(
        !generation::begin(&session, &keyspace, "nutrition", 1, None, now_ms)
            .await
            .expect("begin"),
        "two rebuilds began from the same read"
    );

    let options = ReplayOptions {
        progress_interval: Duration::from_millis(200),
        wait_timeout: Some(TIMEOUT),
        request_timeout: Duration::from_secs(30),
        take_over: false,
        interrupt: None,
    };
    let refused = rebuild(&options)
        .await
        .expect_err("a rebuild is recorded as running");
    assert!(
        matches!(refused, ReplayError::InProgress { generation: 1, .. }),
        "{refused:?}"
    );
    let running = load().await.expect("load");
    assert_eq!((running.active, running.building), (0, Some(1)));
    assert_eq!(running.running_since, Some(now_ms), "nothing changed");

    let mut command = common::dietstream_command(&config);
    command.args(["replay", "nutrition"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("dietstream task")
        .expect("dietstream runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("generation 1 of nutrition is being rebuilt")
            && stderr.contains("--take-over"),
        "{stderr}"
    );

    // Taking over builds generation 2, above the killed one, and makes it active.
    let take_over = ReplayOptions {
        take_over: true,
        ..options.clone()
    };
    let summary = rebuild(&take_over).await.expect("take over");
    assert_eq!((summary.previous, summary.generation), (0, 2));
    assert_eq!(summary.run.applied, 3, "{summary:?}");
    let switched = load().await.expect("load");
    assert_eq!((switched.active, switched.building), (2, None));
    // `lag --wait` follows the processor to generation 2's group, which has caught up.
    let waited = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = lag_lines.map_while(Result::ok).collect();
        (lag_wait.wait().expect("lag --wait ends"), rest)
    })
    .await
    .expect("lag waiter");
    let (status, lines) = waited;
    assert!(
        status.success(),
        "lag --wait did not follow the switch ({status}); its last table: {:?}",
        &lines[lines.len().saturating_sub(2)..]
    );

    // A rebuild that gives up at once is recorded as stopped...
    let hasty = ReplayOptions {
        wait_timeout: Some(Duration::from_millis(1)),
        ..options.clone()
    };
    let gave_up = rebuild(&hasty).await.expect_err("gives up");
    assert!(
        matches!(gave_up, ReplayError::Timeout { generation: 3, .. }),
        "{gave_up:?}"
    );
    let stopped = load().await.expect("load");
    assert_eq!(
        (stopped.active, stopped.building, stopped.running_since),
        (2, Some(3), None)
    );

    // ...and so is one interrupted (what SIGTERM or Ctrl-C do on the command line)...
    let interrupted = ReplayOptions {
        interrupt: Some(futures::future::ready(()).boxed().shared()),
        ..options.clone()
    };
    let stopped_by_signal = rebuild(&interrupted).await.expect_err("interrupted");
    assert!(
        matches!(
            stopped_by_signal,
            ReplayError::Interrupted { generation: 4, .. }
        ),
        "{stopped_by_signal:?}"
    );
    let stopped = load().await.expect("load");
    assert_eq!(
        (stopped.active, stopped.building, stopped.running_since),
        (2, Some(4), None)
    );

    // ...so the next one starts without taking over, and above them.
    let summary = rebuild(&options).await.expect("after a stopped rebuild");
    assert_eq!((summary.previous, summary.generation), (2, 5));
    assert_eq!(summary.run.applied, 3, "{summary:?}");
}
