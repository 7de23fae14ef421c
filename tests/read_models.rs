//! The read-model processors end to end on the real stack: the simulator plays a fixed seed
//! through the command processor while the four read-model processors run (the quests and
//! insights processors' commands advance the players' aggregates, so players resend after
//! concurrency conflicts; the players are shown the insights made for them and rate some),
//! then every table is compared with the oracle computed from the event log
//! (tests/common/oracle.rs, not the projections); then every example query the processors
//! document for analysts runs against those tables. The players play enough game days (about a
//! week) for the insight rules, which need four days with meals in a week. Engagement counts
//! by event times, which the command processor stamps with the wall clock: here every activity
//! falls on the day the test runs, so its day-based figures (streaks, `active_days_28`, the
//! score, cohort weeks, the session gap) are compared on one day only; sessions are cut by the
//! simulated players' session ids, which change with their game day.

mod common;

use common::{oracle, Stack};
use dietstream_schemas::Event;
use dietstream_topology::prefixed;

const PROCESSORS: [&str; 4] = ["nutrition", "engagement", "quests", "insights"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_equals_the_oracle_and_documented_queries_run() {
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
    let mut models = tokio::spawn({
        let config = config.clone();
        async move { dietstream::run::read_models(&config, &PROCESSORS, models_stopped).await }
    });

    let summary = common::simulate_with(
        &config,
        format!("{}-rm", stack.prefix),
        21,
        12,
        2400,
        300.0,
        true,
    )
    .await;
    // The report adds up: every send (resends included) got exactly one answer, and only
    // commands refused for a stale version were sent again.
    assert_eq!(
        summary.sent,
        summary.accepted + summary.rejected_total(),
        "{summary}"
    );
    let conflicts = summary
        .rejected
        .get("CONCURRENCY_CONFLICT")
        .copied()
        .unwrap_or(0);
    assert!(summary.resent <= conflicts, "{summary}");
    assert!(summary.resent_accepted <= summary.resent, "{summary}");
    eprintln!("simulation: {summary}");

    // Every group caught up, and the command processor with the quests' commands, twice in
    // a row (the quests processor's commands add events after it caught up once).
    common::wait_caught_up(
        &config,
        &[&PROCESSORS[..], &["commands"]].concat(),
        2,
        &mut models,
    )
    .await;

    let topic = |name| prefixed(&config.topology.prefix, name);
    let user = common::events_of(&stack, &config, &topic("diet.events.user")).await;
    let social = common::events_of(&stack, &config, &topic("diet.events.social")).await;
    let events: Vec<Event> = user.iter().map(|(_, e)| e.clone()).collect();
    assert!(events.len() > 100, "{} events", events.len());
    let session = config.cql.session().await.expect("session");
    let ks = &config.cql.keyspace;
    oracle::check_nutrition(&session, ks, &events).await;
    let met = oracle::check_goals_met(&events);
    eprintln!("nutrition: {met} goals met checked");
    assert!(met > 0, "no goal met, so none was checked");
    oracle::check_engagement(&session, ks, &user).await;
    let social_rows = oracle::check_engagement_partials(&session, ks, &user, &social).await;
    eprintln!("engagement: {social_rows} social rows checked");
    assert!(
        social_rows > 0,
        "no social activity, so no social row was checked"
    );
    let ai = common::events_of(&stack, &config, &topic("diet.events.ai")).await;
    let ai: Vec<Event> = ai.into_iter().map(|(_, e)| e).collect();
    let insights = oracle::check_insights(&session, ks, &events, &ai).await;
    eprintln!("insights: {insights:?}");
    assert!(
        insights.insights > 0 && insights.feedback > 0 && insights.rederived > 0,
        "nothing to check: {insights:?}"
    );
    let completed = oracle::check_quests(&session, ks, &events).await;
    eprintln!("quests: {completed} completed catalogue quests checked");
    assert!(
        completed > 0,
        "no catalogue quest completed, so no completion was checked"
    );

    // Every query the READMEs give analysts runs on these tables.
    let some_user = events
        .iter()
        .find_map(|e| match e {
            Event::UserRegistered(e) => Some(e.header.aggregate_id.clone()),
            _ => None,
        })
        .expect("a user");
    let queries = dietstream_nutrition::EXAMPLE_QUERIES
        .iter()
        .chain(dietstream_engagement::EXAMPLE_QUERIES)
        .chain(dietstream_quests::EXAMPLE_QUERIES)
        .chain(dietstream_insights::EXAMPLE_QUERIES);
    for query in queries {
        let text = query
            .replace("{keyspace}", ks)
            .replace("'user-1'", &format!("'{some_user}'"))
            .replace("'user-0001'", &format!("'{some_user}'"));
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
