//! `schemas register` and `schemas check` against the real registry: every subject of the
//! contract registered with a transitive compatibility level, idempotently, and an
//! incompatible change caught by `check` (registry and local check) without changing anything.

mod common;

use common::Stack;
use dietstream::contract::{self, Verdict, DEFAULT_LEVEL};
use dietstream_schemas::catalog::{Catalog, EMBEDDED};
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_topology::{Profile, Topology};

const MEAL_PAYLOAD: &str = "dietstream.events.nutrition.MealLoggedPayload";

fn subjects(stack: &Stack, catalog: &Catalog) -> Vec<contract::Subject> {
    let desired = Topology::embedded()
        .expect("topology")
        .resolve(Profile::Local, &stack.prefix)
        .expect("resolved topology");
    contract::subjects(catalog, &desired).expect("subjects")
}

/// The contract with one change: a new payload field without a default.
fn catalog_with_breaking_change() -> Catalog {
    let changed: String = {
        let (_, text) = EMBEDDED
            .iter()
            .find(|(name, _)| *name == MEAL_PAYLOAD)
            .expect("payload file");
        let mut json: serde_json::Value = serde_json::from_str(text).expect("JSON");
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "mood", "type": "string", "doc": "How it felt."}));
        json.to_string()
    };
    Catalog::from_files(EMBEDDED.iter().map(|(name, text)| {
        if *name == MEAL_PAYLOAD {
            (*name, changed.as_str())
        } else {
            (*name, *text)
        }
    }))
    .expect("changed catalog is valid Avro")
}

#[tokio::test]
async fn register_is_idempotent_and_check_catches_an_incompatible_change() {
    let stack = Stack::get().await;
    let registry = stack.config.schema_registry.registry().expect("registry");
    let catalog = Catalog::embedded().expect("catalog");
    let subjects = subjects(&stack, &catalog);
    assert_eq!(
        subjects.len(),
        33 + 26 + 1 + 4,
        "every event, command, the result, and the snapshot on each of the 4 snapshot topics"
    );
    let meal = subjects
        .iter()
        .find(|s| s.record == "dietstream.events.nutrition.MealLogged")
        .expect("meal subject")
        .clone();
    assert_eq!(
        meal.name,
        format!(
            "{}.diet.events.user-dietstream.events.nutrition.MealLogged",
            stack.prefix
        )
    );

    // Before registration every subject is new.
    let verdicts = contract::check(&registry, &catalog, &subjects)
        .await
        .expect("check");
    assert!(verdicts.iter().all(|(_, v)| *v == Verdict::New));

    let first = contract::register(&registry, &catalog, &subjects, DEFAULT_LEVEL)
        .await
        .expect("register");
    assert!(first.iter().all(|r| r.new_version));
    let again = contract::register(&registry, &catalog, &subjects, DEFAULT_LEVEL)
        .await
        .expect("register again");
    assert!(again.iter().all(|r| !r.new_version), "{again:?}");
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        again.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    assert_eq!(
        registry
            .compatibility(&meal.name)
            .await
            .expect("level")
            .as_deref(),
        Some(DEFAULT_LEVEL)
    );

    let verdicts = contract::check(&registry, &catalog, &subjects)
        .await
        .expect("check");
    assert!(
        verdicts.iter().all(|(_, v)| *v == Verdict::Unchanged),
        "{verdicts:?}"
    );

    // A field without a default is caught, for exactly the subject that embeds the payload,
    // by the registry and by the local check, and nothing is registered.
    let broken = catalog_with_breaking_change();
    let verdicts = contract::check(&registry, &broken, &subjects)
        .await
        .expect("check");
    let failing: Vec<_> = verdicts.iter().filter(|(_, v)| !v.is_ok()).collect();
    assert_eq!(failing.len(), 1, "{failing:?}");
    let (subject, verdict) = failing[0];
    assert_eq!(subject.name, meal.name);
    let Verdict::Incompatible(reasons) = verdict else {
        panic!("expected incompatible, got {verdict:?}");
    };
    assert_eq!(reasons.len(), 2, "registry and local check: {reasons:?}");
    assert!(reasons[0].contains("registry refuses"), "{reasons:?}");
    assert!(
        reasons[1].contains("cannot read data written with version 1"),
        "{reasons:?}"
    );
    assert_eq!(
        registry.versions(&meal.name).await.expect("versions").len(),
        1,
        "check changed the registry"
    );

    // Registering the broken contract is refused by the registry itself.
    let refused = contract::register(
        &registry,
        &broken,
        std::slice::from_ref(&meal),
        DEFAULT_LEVEL,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        registry.versions(&meal.name).await.expect("versions").len(),
        1
    );
}
