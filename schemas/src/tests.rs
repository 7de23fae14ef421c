//! The catalog is complete and self-consistent, the generated types fit the schemas, and the
//! compatibility check catches breaking changes.

use std::collections::BTreeSet;

use apache_avro::Schema;
use serde_json::Value;

use crate::catalog::{Catalog, CatalogError, RecordRole, EMBEDDED};
use crate::compat::check_backward_transitive;
use crate::datum::{decode, encode};
use crate::types;

/// The event names of the design sketch (`../shared/seed/`, EVENT_CATEGORIES): a requirement.
/// Event types dietstream adds to the seed's (each says why in its schema's doc).
const ADDED_EVENT_TYPES: [&str; 1] = ["user.xp.awarded"];

const SEED_EVENT_TYPES: [&str; 32] = [
    "user.registered",
    "user.profile.updated",
    "user.level.up",
    "user.achievement.unlocked",
    "user.streak.milestone",
    "nutrition.meal.logged",
    "nutrition.meal.updated",
    "nutrition.meal.deleted",
    "nutrition.goal.met",
    "nutrition.goal.updated",
    "nutrition.water.logged",
    "quest.started",
    "quest.completed",
    "quest.failed",
    "quest.updated",
    "quest.reward.claimed",
    "ai.query.received",
    "ai.response.generated",
    "ai.insight.created",
    "ai.recommendation.given",
    "ai.feedback.received",
    "social.friend.request.sent",
    "social.friend.request.accepted",
    "social.friend.request.declined",
    "social.post.created",
    "social.post.liked",
    "social.post.commented",
    "system.cache.invalidated",
    "system.cache.preloaded",
    "system.database.backup.completed",
    "system.maintenance.started",
    "system.maintenance.completed",
];

fn catalog() -> Catalog {
    Catalog::embedded().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_seed_event_has_exactly_one_record() {
    let mut seen = BTreeSet::new();
    for record in catalog().top_level_records() {
        if let RecordRole::Event { event_type, .. } = record.role {
            assert!(
                seen.insert(event_type.clone()),
                "{event_type} twice ({})",
                record.name
            );
        }
    }
    // The seed's 32 types plus dietstream's own additions (schemas/README.md, "Events").
    let expected: BTreeSet<String> = SEED_EVENT_TYPES
        .iter()
        .chain(ADDED_EVENT_TYPES.iter())
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn records_know_their_name_and_the_type_their_header_carries() {
    use crate::codec::Record;
    assert_eq!(
        types::MealLogged::FULL_NAME,
        "dietstream.events.nutrition.MealLogged"
    );
    assert_eq!(types::MealLogged::RECORD_TYPE, "nutrition.meal.logged");
    assert_eq!(types::LogMeal::RECORD_TYPE, "nutrition.meal.log");
    assert_eq!(types::CommandResult::RECORD_TYPE, "command.result");
}

#[test]
fn events_and_commands_name_their_aggregate_type() {
    let catalog = catalog();
    let mut commands = 0;
    for record in catalog.top_level_records() {
        let aggregate = match &record.role {
            RecordRole::Event { aggregate_type, .. } => aggregate_type,
            RecordRole::Command {
                aggregate_type,
                command_type,
            } => {
                commands += 1;
                if command_type == "aggregate.snapshot.take" {
                    // For any aggregate: the header names it.
                    assert_eq!(aggregate_type, "", "{}", record.name);
                    continue;
                }
                aggregate_type
            }
            RecordRole::CommandResult | RecordRole::Snapshot | RecordRole::Diagnostics => continue,
        };
        assert!(
            ["USER", "SOCIAL", "AI", "SYSTEM"].contains(&aggregate.as_str()),
            "{} has aggregate type {aggregate:?}",
            record.name
        );
    }
    assert_eq!(commands, 26);
}

#[test]
fn every_named_type_expands_to_a_self_contained_schema() {
    let catalog = catalog();
    for name in catalog.names() {
        let text = catalog.expanded(name).expect("expands");
        let schema = Schema::parse_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            schema.name().map(|n| n.fullname(None)).as_deref(),
            Some(name)
        );
    }
}

#[test]
fn file_order_does_not_matter() {
    let reversed = Catalog::from_files(EMBEDDED.iter().rev().copied()).expect("catalog");
    let forward = catalog();
    let name = "dietstream.events.nutrition.MealLogged";
    assert_eq!(
        reversed.expanded(name).expect("expands"),
        forward.expanded(name).expect("expands")
    );
}

#[test]
fn a_missing_reference_and_a_misnamed_file_are_reported() {
    let dangling = r#"{"type": "record", "name": "A", "namespace": "t",
        "fields": [{"name": "b", "type": "t.B"}]}"#;
    let err = Catalog::from_files([("t.A", dangling)]).expect_err("dangling reference");
    assert!(
        matches!(&err, CatalogError::UnknownReference { missing, .. } if missing == "t.B"),
        "{err}"
    );
    let err = Catalog::from_files([("t.Wrong", dangling)]).expect_err("misnamed");
    assert!(matches!(err, CatalogError::Misnamed { .. }), "{err}");
}

#[test]
fn a_shared_type_is_defined_once_then_referenced() {
    let text = catalog()
        .expanded("dietstream.events.nutrition.MealLogged")
        .expect("expands");
    assert_eq!(text.matches(r#""name":"EventHeader""#).count(), 1, "{text}");
    assert_eq!(text.matches(r#""name":"MealItem""#).count(), 1, "{text}");
}

fn sample_meal_logged() -> types::MealLogged {
    let mut value = serde_json::json!({
        "header": {
            "event_id": "7f1f8f0e-2a7e-4d1b-9a4e-2f6a4c1d9b10",
            "event_type": "nutrition.meal.logged",
            "aggregate_id": "user-42",
            "aggregate_type": "USER",
            "version": 7,
            "timestamp": 1_764_160_000_000_000_i64,
            "user_id": "user-42",
            "session_id": null,
            "correlation_id": "0b6f3c3a-9d35-4d8e-8a43-5f2f1a9e7c21",
            "causation_id": null,
            "metadata": {"client": "ios"}
        }
    });
    let payload = minimal_payload("dietstream.events.nutrition.MealLoggedPayload");
    value["payload"] = payload;
    serde_json::from_value(value).expect("sample matches the generated type")
}

/// A JSON value for `name` with every field at a plausible value, built from the schema so the
/// sample follows the schema as it evolves.
fn minimal_payload(name: &str) -> Value {
    let catalog = catalog();
    let schema: Value =
        serde_json::from_str(&catalog.expanded(name).expect("expands")).expect("expanded JSON");
    sample_of(&schema)
}

fn sample_of(schema: &Value) -> Value {
    match schema {
        Value::String(t) => match t.as_str() {
            "string" => Value::String("x".to_owned()),
            "int" | "long" => Value::from(1),
            "float" | "double" => Value::from(1.5),
            "boolean" => Value::Bool(true),
            _ => Value::Null,
        },
        Value::Array(branches) => branches
            .iter()
            .find(|b| b.as_str() != Some("null"))
            .map(sample_of)
            .unwrap_or(Value::Null),
        Value::Object(object) => match object.get("logicalType").and_then(Value::as_str) {
            Some("uuid") => Value::String("3d2f3c1e-1b7a-4a8e-9a35-0c7e5d2b6f11".to_owned()),
            _ => match object.get("type").and_then(Value::as_str) {
                Some("record") => Value::Object(
                    object["fields"]
                        .as_array()
                        .expect("fields")
                        .iter()
                        .map(|f| {
                            (
                                f["name"].as_str().expect("name").to_owned(),
                                sample_of(&f["type"]),
                            )
                        })
                        .collect(),
                ),
                Some("enum") => object["symbols"][1].clone(),
                Some("array") => Value::Array(vec![sample_of(&object["items"])]),
                Some("map") => Value::Object(
                    [("k".to_owned(), sample_of(&object["values"]))]
                        .into_iter()
                        .collect(),
                ),
                _ => sample_of(&object["type"]),
            },
        },
        _ => Value::Null,
    }
}

#[test]
fn generated_type_round_trips_through_its_schema() {
    let schema = catalog()
        .schema("dietstream.events.nutrition.MealLogged")
        .expect("schema");
    let event = sample_meal_logged();
    let bytes = encode(&schema, &event).expect("encode");
    let back: types::MealLogged = decode(&schema, &schema, &bytes).expect("decode");
    assert_eq!(back, event);
}

/// `MealLoggedPayload` as JSON, changed by `change`, as a new schema version.
fn evolved_meal_payload(change: impl FnOnce(&mut Value)) -> (Schema, Schema) {
    let catalog = catalog();
    let original = catalog
        .expanded("dietstream.events.nutrition.MealLoggedPayload")
        .expect("expands");
    let mut json: Value = serde_json::from_str(&original).expect("JSON");
    change(&mut json);
    (
        Schema::parse_str(&original).expect("original"),
        Schema::parse_str(&json.to_string()).expect("changed schema is valid Avro"),
    )
}

#[test]
fn adding_a_field_without_default_is_incompatible_and_with_default_is_not() {
    let (old, breaking) = evolved_meal_payload(|json| {
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "mood", "type": "string"}));
    });
    let err = check_backward_transitive(std::slice::from_ref(&old), &breaking)
        .expect_err("a new field without default must be caught");
    assert_eq!(err.version, 1);
    assert!(err.reason.contains("mood"), "{err}");

    let (old, fine) = evolved_meal_payload(|json| {
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "mood", "type": ["null", "string"], "default": null}));
    });
    check_backward_transitive(&[old], &fine).expect("an optional new field is compatible");
}

#[test]
fn transitive_check_compares_with_every_earlier_version() {
    let (v1, v2) = evolved_meal_payload(|json| {
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "mood", "type": ["null", "string"], "default": null}));
    });
    // v3 drops the default again: it reads v2 (which always writes mood) but not v1.
    let (_, v3) = evolved_meal_payload(|json| {
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "mood", "type": ["null", "string"]}));
    });
    check_backward_transitive(std::slice::from_ref(&v2), &v3).expect("v3 reads v2");
    let err = check_backward_transitive(&[v1, v2], &v3).expect_err("v3 cannot read v1");
    assert_eq!(err.version, 1);
}

#[test]
fn a_value_written_by_a_newer_schema_reads_with_the_older_type_and_vice_versa() {
    let (old, new) = evolved_meal_payload(|json| {
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "mood", "type": ["null", "string"], "default": null}));
    });
    let payload: types::MealLoggedPayload = serde_json::from_value(minimal_payload(
        "dietstream.events.nutrition.MealLoggedPayload",
    ))
    .expect("payload");
    // Old writer, new reader: the reader's default fills the missing field.
    let bytes = encode(&old, &payload).expect("encode with v1");
    let read: serde_json::Map<String, Value> = decode(&old, &new, &bytes).expect("read with v2");
    assert_eq!(read.get("mood"), Some(&Value::Null));
    // New writer, old reader (the generated type): the unknown field is skipped.
    let mut newer = apache_avro::reader::datum::GenericDatumReader::builder(&old)
        .reader_schema(&new)
        .build()
        .expect("reader")
        .read_value(&mut bytes.as_slice())
        .expect("v1 bytes as a v2 value");
    let apache_avro::types::Value::Record(fields) = &mut newer else {
        panic!("not a record: {newer:?}");
    };
    for (name, value) in fields.iter_mut() {
        if name == "mood" {
            *value = apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::String("happy".to_owned())),
            );
        }
    }
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&new)
        .build()
        .expect("writer")
        .write_value_to_vec(newer)
        .expect("encode with v2");
    let back: types::MealLoggedPayload = decode(&new, &old, &bytes).expect("read with v1");
    assert_eq!(back, payload);
}

#[test]
fn a_record_holding_a_union_of_records_round_trips() {
    use crate::codec::{Codec, Record};
    use crate::registry::InMemoryRegistry;
    let codec = Codec::new(InMemoryRegistry::default(), &catalog()).expect("codec");
    let result = types::CommandResult {
        command_id: apache_avro::Uuid::from_u128(7),
        command_type: "nutrition.meal.log".to_owned(),
        aggregate_id: "u1".to_owned(),
        correlation_id: None,
        processed_at: 1,
        outcome: types::UnionAcceptedRejected::Rejected(types::Rejected {
            reason: types::RejectionReason::ConcurrencyConflict,
            message: "stale".to_owned(),
            field: None,
            expected_version: Some(1),
            current_version: Some(2),
        }),
    };
    let runtime = tokio_free_block_on(codec.encode("t", &result)).expect("encodes");
    let back: types::CommandResult =
        tokio_free_block_on(codec.decode(&runtime)).expect("decodes into the generated type");
    assert_eq!(back, result);
    assert_eq!(
        types::CommandResult::FULL_NAME,
        "dietstream.commands.CommandResult"
    );
}

/// Drives a future that never waits (the in-memory registry answers at once).
fn tokio_free_block_on<F: std::future::Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}
