//! What one player's saved state costs each read-model processor as the player's history
//! grows. No servers: the projections run in memory ([`MemoryRun`]), and each state is encoded
//! as the store saves it (`dietstream_runtime::store::encode_state`).
//!
//! The loop saves every entity a batch changed, whole, once per batch. A player's events are
//! usually minutes apart, so in a live game nearly every event of theirs is a batch of its own
//! for their entity, and costs one write of their whole state: its size is the bytes written
//! to Cassandra per event, and its encoding time is spent per event. The processors bench
//! (`benches/processors.rs`) plays 5 commands per player, so its states stay small; this bench
//! plays days of history.
//!
//! The history: from a goal on day 0, every day three meals of three foods each (fibre, sugar
//! and sodium known), two water logs, and every seventh day one meal updated and one deleted.
//! Event times are the days' own, so the processors' windows (nutrition's open days, insights'
//! 29 days, quests' periods, engagement's 64 days) fill as they would.
//!
//! `cargo bench --bench states` runs `BENCH_STATE_DAYS` days (default 120) and reports after
//! every 30 days and at the end; without `--bench` (as `cargo test --all-targets` runs it) it
//! is a smoke run of 10 days. Each report gives, per processor, the state's bytes, the median
//! encode and decode times over `BENCH_STATE_REPEATS` (default 200) repeats, the same for the
//! JSON states were saved as before the compact form, and checks that the state decodes back
//! to itself from both. Figures are printed and written to
//! `<target dir>/bench/states.json` (`states-smoke.json`). Nothing asserts a timing.

mod common;

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Instant;

use dietstream_engagement::EngagementProjection;
use dietstream_insights::InsightsProjection;
use dietstream_nutrition::NutritionProjection;
use dietstream_quests::QuestsProjection;
use dietstream_runtime::memory::MemoryRun;
use dietstream_runtime::store::{decode_state, StateEncoding};
use dietstream_runtime::{Origin, Projection};
use dietstream_schemas::types::{
    AggregateType, EventHeader, MealDeleted, MealDeletedPayload, MealDeletionReason, MealItem,
    MealLogged, MealLoggedPayload, MealSource, MealType, MealUpdated, MealUpdatedPayload,
    NutritionGoalUpdated, NutritionGoalUpdatedPayload, WaterIntakeLogged, WaterIntakeLoggedPayload,
};
use dietstream_schemas::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use common::{env_or, is_full_run, machine_facts, out_dir, percentile, run_suffix};

const TOPIC: &str = "diet.events.user";
const USER: &str = "user-0000042";
/// 2026-01-05, a Monday.
const FIRST_DAY: i64 = 20_458;
const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

/// One player's history, day by day, each day's events in log order as the command processor
/// would have written them.
fn history(days: i64) -> Vec<Vec<Event>> {
    let mut history = Vec::new();
    let mut version = 0;
    let mut header = |event_type: &str, time: i64| {
        version += 1;
        EventHeader {
            event_id: Uuid::from_u128(0xe7e7_0000_0000 + version as u128),
            event_type: event_type.to_owned(),
            aggregate_id: USER.to_owned(),
            aggregate_type: AggregateType::User,
            version,
            timestamp: time,
            user_id: Some(USER.to_owned()),
            session_id: None,
            correlation_id: None,
            causation_id: None,
            metadata: HashMap::new(),
        }
    };
    let items = |day: i64, meal: i64| -> Vec<MealItem> {
        (0..3)
            .map(|i| {
                let x = ((day * 7 + meal * 3 + i) % 11) as f64;
                MealItem {
                    food_id: format!("food-{:05}", (day * 9 + meal * 3 + i) % 400),
                    food_name: "Wholemeal bread, toasted".to_owned(),
                    grams: 80.0 + x * 10.0,
                    energy_kcal: 150.0 + x * 23.7,
                    protein_g: 6.0 + x * 1.3,
                    carbohydrate_g: 20.0 + x * 2.9,
                    fat_g: 4.0 + x * 0.7,
                    fibre_g: Some(2.0 + x * 0.3),
                    sugar_g: Some(3.0 + x * 0.9),
                    sodium_mg: Some(150.0 + x * 17.0),
                }
            })
            .collect()
    };
    let meal_id = |day: i64, meal: i64| Uuid::from_u128(0x3ea1_0000 + (day * 3 + meal) as u128);
    let start = FIRST_DAY * DAY;
    let mut events = vec![Event::NutritionGoalUpdated(NutritionGoalUpdated {
        header: header("nutrition.goal.updated", start + 7 * HOUR),
        payload: NutritionGoalUpdatedPayload {
            energy_kcal: Some(2_100.0),
            protein_g: Some(90.0),
            carbohydrate_g: Some(260.0),
            fat_g: Some(70.0),
            fibre_g: Some(30.0),
            water_ml: Some(2_000),
            effective_from: FIRST_DAY as i32,
        },
    })];
    for day in 0..days {
        let midnight = (FIRST_DAY + day) * DAY;
        for (meal, (hour, meal_type)) in [
            (8, MealType::Breakfast),
            (13, MealType::Lunch),
            (19, MealType::Dinner),
        ]
        .into_iter()
        .enumerate()
        {
            let meal = meal as i64;
            let at = midnight + hour * HOUR;
            events.push(Event::MealLogged(MealLogged {
                header: header("nutrition.meal.logged", at),
                payload: MealLoggedPayload {
                    meal_id: meal_id(day, meal),
                    meal_type,
                    eaten_at: at,
                    items: items(day, meal),
                    note: None,
                    source: MealSource::Manual,
                },
            }));
        }
        for (n, hour) in [10, 16].into_iter().enumerate() {
            let at = midnight + hour * HOUR;
            events.push(Event::WaterIntakeLogged(WaterIntakeLogged {
                header: header("nutrition.water.logged", at),
                payload: WaterIntakeLoggedPayload {
                    intake_id: Uuid::from_u128(0x3a7e_0000 + (day * 2) as u128 + n as u128),
                    millilitres: 750,
                    drunk_at: at,
                },
            }));
        }
        if day % 7 == 6 {
            let at = midnight + 21 * HOUR;
            events.push(Event::MealUpdated(MealUpdated {
                header: header("nutrition.meal.updated", at),
                payload: MealUpdatedPayload {
                    meal_id: meal_id(day, 1),
                    meal_type: MealType::Lunch,
                    eaten_at: midnight + 13 * HOUR,
                    items: items(day + 1, 1),
                    note: Some("smaller portion".to_owned()),
                },
            }));
            events.push(Event::MealDeleted(MealDeleted {
                header: header("nutrition.meal.deleted", at + HOUR / 2),
                payload: MealDeletedPayload {
                    meal_id: meal_id(day, 0),
                    reason: MealDeletionReason::UserRequest,
                },
            }));
        }
        history.push(std::mem::take(&mut events));
    }
    history
}

/// One processor's state for the player, in memory.
struct Player<P: Projection> {
    projection: P,
    run: MemoryRun<P::State>,
    /// The player's entity, from the first event the projection applies to them.
    entity: Option<String>,
    offset: i64,
}

impl<P> Player<P>
where
    P: Projection,
    P::State: Serialize + DeserializeOwned + PartialEq + Debug,
{
    fn new(projection: P) -> Self {
        Player {
            projection,
            run: MemoryRun::new(),
            entity: None,
            offset: 0,
        }
    }

    fn deliver(&mut self, event: &Event) {
        let origin = Origin {
            topic: TOPIC,
            partition: 0,
            offset: self.offset,
        };
        if self.entity.is_none() && self.projection.wants(event.record_type()) {
            self.entity = self.projection.entities(event, &origin).into_iter().next();
        }
        // Applied only when wanted, as the loop does.
        self.run
            .deliver(&self.projection, TOPIC, 0, self.offset, event);
        self.run.commit();
        self.offset += 1;
    }

    /// Bytes, median encode and decode times, in the form the store saves and in the JSON
    /// states were saved as before it (which still loads); panics when the state does not
    /// decode back to itself from either.
    fn measure(&self, repeats: usize) -> serde_json::Value {
        let entity = self.entity.as_deref().expect("the player has an entity");
        let state = self
            .run
            .state(TOPIC, 0, entity)
            .expect("the player has a state");
        let median_us = |f: &dyn Fn()| {
            let mut times: Vec<f64> = (0..repeats)
                .map(|_| {
                    let started = Instant::now();
                    f();
                    started.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            times.sort_by(f64::total_cmp);
            percentile(&times, 0.5).unwrap_or_default()
        };
        // The figures' prefix and each encoding the store can save in; `decode_state` reads
        // both.
        let forms = [("", StateEncoding::Compact), ("json_", StateEncoding::Json)];
        let mut figures = json!({ "processor": self.projection.name(), "entity": entity });
        for (form, encoding) in forms {
            let bytes = &encoding.encode(state).expect("encodes");
            let back: P::State = decode_state(bytes).expect("decodes");
            assert_eq!(
                &back,
                state,
                "{}: the state decodes to itself from its {form}bytes",
                self.projection.name()
            );
            let encode = median_us(&|| {
                let bytes = encoding.encode(std::hint::black_box(state));
                std::hint::black_box(bytes.expect("encodes"));
            });
            let decode = median_us(&|| {
                let state: P::State = decode_state(std::hint::black_box(bytes)).expect("decodes");
                std::hint::black_box(state);
            });
            figures[format!("{form}bytes")] = json!(bytes.len());
            figures[format!("{form}encode_us")] = json!(encode);
            figures[format!("{form}decode_us")] = json!(decode);
        }
        figures
    }
}

fn main() {
    let full = is_full_run();
    let days: i64 = if full {
        env_or("BENCH_STATE_DAYS", 120)
    } else {
        10
    };
    let repeats: usize = env_or("BENCH_STATE_REPEATS", if full { 200 } else { 5 }).max(1);
    let history = history(days);
    let total: usize = history.iter().map(Vec::len).sum();
    println!("bench: one player's state after days of history: {days} days, {total} events");
    let mut nutrition = Player::new(NutritionProjection::new());
    let mut insights = Player::new(InsightsProjection::new());
    let mut quests = Player::new(QuestsProjection::new());
    let mut engagement = Player::new(EngagementProjection::new());
    let mut reports = Vec::new();
    let mut played = 0;
    for (day, events) in (1..).zip(&history) {
        for event in events {
            nutrition.deliver(event);
            insights.deliver(event);
            quests.deliver(event);
            engagement.deliver(event);
        }
        played += events.len();
        if day % 30 != 0 && day != days {
            continue;
        }
        let figures = vec![
            nutrition.measure(repeats),
            insights.measure(repeats),
            quests.measure(repeats),
            engagement.measure(repeats),
        ];
        println!("\nafter {day} days ({played} events):");
        println!(
            "  {:<12} {:>9} {:>10} {:>10}   {:>10} {:>10} {:>10}",
            "processor", "bytes", "encode µs", "decode µs", "JSON bytes", "encode µs", "decode µs"
        );
        for f in &figures {
            let number = |key: &str| f[key].as_f64().unwrap_or_default();
            println!(
                "  {:<12} {:>9} {:>10.1} {:>10.1}   {:>10} {:>10.1} {:>10.1}",
                f["processor"].as_str().unwrap_or_default(),
                number("bytes"),
                number("encode_us"),
                number("decode_us"),
                number("json_bytes"),
                number("json_encode_us"),
                number("json_decode_us")
            );
        }
        reports.push(json!({ "days": day, "events": played, "states": figures }));
    }
    let path = out_dir().join(format!("states{}.json", run_suffix(full)));
    let report = json!({
        "bench": "states",
        "full": full,
        "days": days,
        "repeats": repeats,
        "machine": machine_facts(),
        "reports": reports,
        "note": "bytes: the state column's size when the store saves the player's entity; json_bytes: the same state as JSON, as states were saved before the compact form; encode/decode: median over the repeats, one thread",
    });
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).expect("report serialises"),
    )
    .expect("report written");
    println!("\nreport: {}", path.display());
}
