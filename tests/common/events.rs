//! Events the read-model tests produce straight to an event topic (not through the command
//! processor), encoded with the registry as the command processor would, and read-model tables
//! dumped for comparison.

use std::time::Duration;

use dietstream_schemas::codec::{Codec, RECORD_TYPE_HEADER};
use dietstream_schemas::registry::ConfluentRegistry;
use dietstream_schemas::types::{
    AiFeedbackReceived, AiInsightCreated, MealDeleted, MealItem, MealLogged, MealUpdated,
    NutritionGoalUpdated, UserLevelUp, UserRegistered, UserXpAwarded, WaterIntakeLogged,
};
use dietstream_schemas::Event;
use dietstream_topology::partition_for;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use scylla::client::session::Session;
use serde::de::DeserializeOwned;
use serde_json::json;

/// 2025-11-26T00:00:00Z in microseconds.
pub const DAY_START: i64 = 1_764_115_200_000_000;
/// An hour in microseconds.
pub const HOUR: i64 = 3_600_000_000;

/// The JSON of an event header of `user` (also its aggregate) at `version` and `timestamp`.
pub fn event_header(
    event_type: &str,
    user: &str,
    version: i64,
    timestamp: i64,
) -> serde_json::Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "aggregate_id": user,
        "aggregate_type": "USER",
        "version": version,
        "timestamp": timestamp,
        "user_id": user,
        "session_id": null,
        "correlation_id": null,
        "causation_id": null,
        "metadata": {}
    })
}

/// A `nutrition.water.logged` event of `user` at `version`, drunk at `timestamp` (µs).
pub fn water(user: &str, version: i64, timestamp: i64, millilitres: i32) -> Event {
    Stamp::new(user, version, timestamp).water(timestamp, millilitres)
}

/// Where and when an event is written: its aggregate (a user id; the user's AI aggregate has
/// the same id), the aggregate's version, the header `timestamp` (µs) and the session.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// The aggregate id, also the event's user.
    pub aggregate: &'a str,
    /// The aggregate's version after the event.
    pub version: i64,
    /// The header timestamp, µs.
    pub at: i64,
    /// The header's session id.
    pub session: Option<&'a str>,
}

fn typed<T: DeserializeOwned>(header: serde_json::Value, payload: serde_json::Value) -> T {
    serde_json::from_value(json!({ "header": header, "payload": payload }))
        .expect("the event fits its generated type")
}

/// One item of a meal: its energy and grams of protein, carbohydrate and fat, with fibre,
/// sugar and sodium where the food data has them.
pub fn meal_item(kcal: f64, macros: (f64, f64, f64), extras: [Option<f64>; 3]) -> MealItem {
    let (protein, carbohydrate, fat) = macros;
    MealItem {
        food_id: "food".to_owned(),
        food_name: "Food".to_owned(),
        grams: 100.0,
        energy_kcal: kcal,
        protein_g: protein,
        carbohydrate_g: carbohydrate,
        fat_g: fat,
        fibre_g: extras[0],
        sugar_g: extras[1],
        sodium_mg: extras[2],
    }
}

impl<'a> Stamp<'a> {
    /// An event of `aggregate` at `version`, written at `at`, without a session.
    pub fn new(aggregate: &'a str, version: i64, at: i64) -> Stamp<'a> {
        Stamp {
            aggregate,
            version,
            at,
            session: None,
        }
    }

    fn header(&self, event_type: &str, aggregate_type: &str) -> serde_json::Value {
        let mut header = event_header(event_type, self.aggregate, self.version, self.at);
        header["aggregate_type"] = json!(aggregate_type);
        header["session_id"] = json!(self.session);
        header
    }

    fn user(&self, event_type: &str) -> serde_json::Value {
        self.header(event_type, "USER")
    }

    /// `user.registered`.
    pub fn registered(&self) -> Event {
        Event::UserRegistered(typed::<UserRegistered>(
            self.user("user.registered"),
            json!({
                "display_name": format!("Player {}", self.aggregate),
                "email": format!("{}@example.com", self.aggregate),
                "locale": "en-GB",
                "time_zone": "UTC",
                "birth_year": null,
                "height_cm": null,
                "weight_kg": null,
                "activity_level": "MODERATELY_ACTIVE",
                "referral_code": null
            }),
        ))
    }

    fn meal_payload(
        meal: uuid::Uuid,
        meal_type: &str,
        eaten_at: i64,
        items: &[MealItem],
    ) -> serde_json::Value {
        json!({
            "meal_id": meal.to_string(),
            "meal_type": meal_type,
            "eaten_at": eaten_at,
            "items": serde_json::to_value(items).expect("items as JSON"),
            "note": null,
            "source": "MANUAL"
        })
    }

    /// `nutrition.meal.logged` of a meal of `meal_type` (`BREAKFAST`, `LUNCH`, …) eaten at
    /// `eaten_at` (µs).
    pub fn meal_logged(
        &self,
        meal: uuid::Uuid,
        meal_type: &str,
        eaten_at: i64,
        items: &[MealItem],
    ) -> Event {
        Event::MealLogged(typed::<MealLogged>(
            self.user("nutrition.meal.logged"),
            Self::meal_payload(meal, meal_type, eaten_at, items),
        ))
    }

    /// `nutrition.meal.updated`: the meal's new version.
    pub fn meal_updated(
        &self,
        meal: uuid::Uuid,
        meal_type: &str,
        eaten_at: i64,
        items: &[MealItem],
    ) -> Event {
        let mut payload = Self::meal_payload(meal, meal_type, eaten_at, items);
        payload.as_object_mut().expect("an object").remove("source");
        Event::MealUpdated(typed::<MealUpdated>(
            self.user("nutrition.meal.updated"),
            payload,
        ))
    }

    /// `nutrition.meal.deleted`.
    pub fn meal_deleted(&self, meal: uuid::Uuid) -> Event {
        Event::MealDeleted(typed::<MealDeleted>(
            self.user("nutrition.meal.deleted"),
            json!({ "meal_id": meal.to_string(), "reason": "USER_REQUEST" }),
        ))
    }

    /// `nutrition.water.logged`, drunk at `drunk_at` (µs).
    pub fn water(&self, drunk_at: i64, millilitres: i32) -> Event {
        Event::WaterIntakeLogged(typed::<WaterIntakeLogged>(
            self.user("nutrition.water.logged"),
            json!({
                "intake_id": uuid::Uuid::new_v4().to_string(),
                "millilitres": millilitres,
                "drunk_at": drunk_at
            }),
        ))
    }

    /// `nutrition.goal.updated`: energy and protein minimums, a fat ceiling and a water
    /// minimum (each where given) from the day `effective_from` (days since 1970-01-01) on.
    pub fn goal_updated(
        &self,
        energy_kcal: Option<f64>,
        protein_g: Option<f64>,
        fat_g: Option<f64>,
        water_ml: Option<i32>,
        effective_from: i32,
    ) -> Event {
        Event::NutritionGoalUpdated(typed::<NutritionGoalUpdated>(
            self.user("nutrition.goal.updated"),
            json!({
                "energy_kcal": energy_kcal,
                "protein_g": protein_g,
                "carbohydrate_g": null,
                "fat_g": fat_g,
                "fibre_g": null,
                "water_ml": water_ml,
                "effective_from": effective_from
            }),
        ))
    }

    /// `user.xp.awarded` of `xp` bringing the total to `total_xp`.
    pub fn xp_awarded(&self, xp: i32, total_xp: i64) -> Event {
        Event::UserXpAwarded(typed::<UserXpAwarded>(
            self.user("user.xp.awarded"),
            json!({ "xp": xp, "source": "DAILY_LOGIN", "source_id": null, "total_xp": total_xp }),
        ))
    }

    /// `user.level.up` to `new_level` at `total_xp`.
    pub fn level_up(&self, new_level: i32, total_xp: i64) -> Event {
        Event::UserLevelUp(typed::<UserLevelUp>(
            self.user("user.level.up"),
            json!({
                "previous_level": new_level - 1,
                "new_level": new_level,
                "total_xp": total_xp
            }),
        ))
    }

    /// `ai.insight.created` on the user's AI aggregate: an insight of `kind` (`HYDRATION`, …)
    /// about the days `period` (first, last; days since 1970-01-01).
    pub fn insight_created(&self, insight: uuid::Uuid, kind: &str, period: (i32, i32)) -> Event {
        Event::AiInsightCreated(typed::<AiInsightCreated>(
            self.header("ai.insight.created", "AI"),
            json!({
                "insight_id": insight.to_string(),
                "insight_kind": kind,
                "title": "Insight",
                "body": "An insight.",
                "confidence": 0.5,
                "period_start": period.0,
                "period_end": period.1,
                "evidence_event_ids": []
            }),
        ))
    }

    /// `ai.feedback.received` on the user's AI aggregate about `target` of `target_kind`
    /// (`INSIGHT`, `RESPONSE`, …).
    pub fn feedback(
        &self,
        target: uuid::Uuid,
        target_kind: &str,
        rating: i32,
        helpful: Option<bool>,
    ) -> Event {
        Event::AiFeedbackReceived(typed::<AiFeedbackReceived>(
            self.header("ai.feedback.received", "AI"),
            json!({
                "feedback_id": uuid::Uuid::new_v4().to_string(),
                "target_id": target.to_string(),
                "target_kind": target_kind,
                "rating": rating,
                "helpful": helpful,
                "comment": null
            }),
        ))
    }
}

/// Produces `value` to `topic` in the partition of `user`, with an `event_type` header;
/// returns its (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    user: &str,
    event_type: &str,
    value: &[u8],
) -> (i32, i64) {
    let record = FutureRecord::<str, [u8]>::to(topic)
        .key(user)
        .partition(partition_for(user, partitions))
        .headers(type_header(event_type))
        .payload(value);
    let delivered = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    (delivered.partition, delivered.offset)
}

/// The `event_type` header the processors skip records by.
fn type_header(event_type: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: RECORD_TYPE_HEADER,
        value: Some(event_type),
    })
}

/// Encodes `events` for `topic` and produces them in this order, each in the partition of its
/// aggregate and keyed `<aggregate id>/<version>` like the command processor's events; returns
/// when every one is delivered. The producer should be idempotent, so that a retry cannot
/// reorder a partition.
pub async fn produce_all(
    producer: &FutureProducer,
    codec: &Codec<ConfluentRegistry>,
    topic: &str,
    partitions: i32,
    events: &[Event],
) {
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(events.len());
    for event in events {
        let bytes = event.encode(codec, topic).await.expect("encode");
        let header = event.header();
        let key = format!("{}/{}", header.aggregate_id, header.version);
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(&key)
            .partition(partition_for(&header.aggregate_id, partitions))
            .headers(type_header(event.record_type()))
            .payload(&bytes);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue");
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        delivery
            .await
            .expect("delivery reported")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

/// Encodes `event` for `topic` and produces it, keyed `<aggregate id>/<version>` like the
/// command processor's events; returns its (partition, offset).
pub async fn produce_event(
    producer: &FutureProducer,
    codec: &Codec<ConfluentRegistry>,
    topic: &str,
    partitions: i32,
    event: &Event,
) -> (i32, i64) {
    let bytes = event.encode(codec, topic).await.expect("encode");
    let user = event.header().aggregate_id.clone();
    produce(
        producer,
        topic,
        partitions,
        &user,
        event.record_type(),
        &bytes,
    )
    .await
}

/// Every row of `keyspace.table` as JSON text, sorted.
pub async fn table_rows(session: &Session, keyspace: &str, table: &str) -> Vec<String> {
    let rows = session
        .query_unpaged(format!("SELECT JSON * FROM {keyspace}.{table}"), ())
        .await
        .unwrap_or_else(|e| panic!("select from {table}: {e}"))
        .into_rows_result()
        .expect("rows");
    let mut rows: Vec<String> = rows
        .rows::<(String,)>()
        .expect("typed rows")
        .map(|row| row.expect("row").0)
        .collect();
    rows.sort();
    rows
}

/// The (active, building, tables) row of `processor` in the generations table.
pub async fn generations_row(
    session: &Session,
    keyspace: &str,
    processor: &str,
) -> (Option<i32>, Option<i32>, Option<Vec<String>>) {
    session
        .query_unpaged(
            format!(
                "SELECT active, building, tables FROM {keyspace}.read_model_generations \
                 WHERE processor = ?"
            ),
            (processor,),
        )
        .await
        .expect("select generations")
        .into_rows_result()
        .expect("rows")
        .single_row::<(Option<i32>, Option<i32>, Option<Vec<String>>)>()
        .expect("one row per processor")
}
