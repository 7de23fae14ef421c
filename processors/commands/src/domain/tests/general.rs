//! Tests of what all aggregates share: the order of the checks, event headers, apply errors,
//! the command-to-aggregate mapping and the snapshot layout.

use dietstream_schemas::catalog::{Catalog, RecordRole};
use dietstream_schemas::types::{AggregateType, RejectionReason};
use dietstream_schemas::{Command, Event};
use uuid::Uuid;

use super::harness::*;
use crate::domain::{apply, decide, event_id, Aggregate, AggregateKind, ApplyError, State};

#[test]
fn of_command_matches_the_aggregate_type_attribute_of_every_command_record() {
    let catalog = Catalog::embedded().expect("embedded catalogue");
    let mut expected = std::collections::BTreeMap::new();
    for r in catalog.top_level_records() {
        if let RecordRole::Command { aggregate_type, .. } = r.role {
            expected.insert(r.name, aggregate_type);
        }
    }
    let commands = one_of_each();
    assert_eq!(
        commands.len(),
        expected.len(),
        "one builder per command record"
    );
    for c in &commands {
        let Some(kind) = AggregateKind::of_command(c) else {
            panic!("{} names no aggregate", c.full_name());
        };
        let attr = expected.get(c.full_name()).map(String::as_str);
        if attr == Some("") {
            // A command for any aggregate (aggregate.snapshot.take): its header decides.
            assert_eq!(Some(kind), AggregateKind::of(c.header().aggregate_type));
            continue;
        }
        assert_eq!(
            Some(format!("{:?}", kind.aggregate_type()).to_uppercase()).as_deref(),
            attr,
            "{}",
            c.full_name()
        );
        assert_eq!(AggregateKind::of(kind.aggregate_type()), Some(kind));
    }
    assert_eq!(AggregateKind::of(AggregateType::System), None);
    assert_eq!(AggregateKind::of(AggregateType::Unknown), None);
}

#[test]
fn accepted_events_carry_a_complete_header() {
    let mut c = register();
    let session = "session-7".to_owned();
    {
        let h = c.header_mut();
        h.user_id = Some(USER.into());
        h.session_id = Some(session.clone());
        h.metadata.insert("client".into(), "ios".into());
    }
    let command_id = c.header().command_id;
    let then = nothing().when(c);
    let events = then.then_types(&["user.registered"]);
    let h = events[0].header();
    assert_eq!(h.event_id, event_id(command_id, 0));
    assert_eq!(h.event_id, Uuid::new_v5(&command_id, b"0"));
    assert_eq!(h.event_type, "user.registered");
    assert_eq!(h.aggregate_id, USER);
    assert_eq!(h.aggregate_type, AggregateType::User);
    assert_eq!(h.version, 1);
    assert_eq!(h.timestamp, NOW);
    assert_eq!(h.user_id.as_deref(), Some(USER));
    assert_eq!(h.session_id, Some(session));
    assert_eq!(h.metadata.get("client").map(String::as_str), Some("ios"));
    assert_eq!(
        h.correlation_id,
        Some(command_id),
        "command id when the command has none"
    );
    assert_eq!(h.causation_id, Some(command_id));
}

#[test]
fn correlation_id_is_kept_and_versions_and_ids_follow_the_index() {
    let g = given([register()]);
    let correlation = Uuid::from_u128(77);
    let c = with(award_xp(100), |c| {
        c.header_mut().correlation_id = Some(correlation)
    });
    let command_id = c.header().command_id;
    let then = g.when(c);
    let events = then.then_types(&["user.xp.awarded", "user.level.up"]);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.header().correlation_id, Some(correlation));
        assert_eq!(e.header().version, 2 + i as i64);
        assert_eq!(e.header().event_id, event_id(command_id, i));
    }
}

#[test]
fn reprocessing_a_command_yields_identical_events() {
    let g = given([register()]);
    let c = log_meal(1, 0, 700.0);
    let first = decide(&g.aggregate, &c, NOW);
    let second = decide(&g.aggregate, &c, NOW);
    assert_eq!(first, second);
}

#[test]
fn system_aggregate_type_is_unknown_aggregate() {
    let c = with(register(), |c| {
        c.header_mut().aggregate_type = AggregateType::System
    });
    let r = nothing()
        .when(c)
        .then_rejected(RejectionReason::UnknownAggregate)
        .clone();
    assert!(
        r.message.contains("System") && r.message.contains("User"),
        "{}",
        r.message
    );
    assert_eq!(r.current_version, Some(0));
}

#[test]
fn aggregate_type_not_matching_the_command_is_unknown_aggregate() {
    let g = given([register()]);
    let c = with(log_meal(1, 0, 100.0), |c| {
        c.header_mut().aggregate_type = AggregateType::Social
    });
    let r = g
        .when(c)
        .then_rejected(RejectionReason::UnknownAggregate)
        .clone();
    assert!(
        r.message.contains("Social") && r.message.contains("User"),
        "{}",
        r.message
    );
    assert_eq!(r.current_version, Some(1));
}

#[test]
fn aggregate_type_check_comes_before_the_version_check() {
    let c = with(register(), |c| {
        c.header_mut().aggregate_type = AggregateType::Ai;
        c.header_mut().expected_version = Some(5);
    });
    nothing()
        .when(c)
        .then_rejected(RejectionReason::UnknownAggregate);
}

#[test]
fn stale_expected_version_is_a_concurrency_conflict() {
    let g = given([register(), award_xp(5)]);
    let c = with(award_xp(5), |c| c.header_mut().expected_version = Some(1));
    let r = g
        .when(c)
        .then_rejected(RejectionReason::ConcurrencyConflict)
        .clone();
    assert_eq!((r.expected_version, r.current_version), (Some(1), Some(2)));
    let rec = r.into_record();
    assert_eq!(rec.reason, RejectionReason::ConcurrencyConflict);
    assert_eq!(
        (rec.expected_version, rec.current_version),
        (Some(1), Some(2))
    );
}

#[test]
fn expected_version_zero_means_must_not_exist() {
    let ok = with(register(), |c| c.header_mut().expected_version = Some(0));
    nothing().when(ok).then_types(&["user.registered"]);
    let g = given([register()]);
    let again = with(register(), |c| c.header_mut().expected_version = Some(0));
    let r = g
        .when(again)
        .then_rejected(RejectionReason::ConcurrencyConflict)
        .clone();
    assert_eq!((r.expected_version, r.current_version), (Some(0), Some(1)));
}

#[test]
fn matching_or_absent_expected_version_passes() {
    let g = given([register()]);
    g.when(with(award_xp(5), |c| {
        c.header_mut().expected_version = Some(1)
    }))
    .then_types(&["user.xp.awarded"]);
    g.when(award_xp(5)).then_types(&["user.xp.awarded"]);
}

#[test]
fn non_creating_command_on_a_missing_aggregate_is_unknown_aggregate() {
    for c in [
        log_meal(1, 0, 100.0),
        award_xp(1),
        accept(1, None),
        like(2, "bob", dietstream_schemas::types::Reaction::Like),
    ] {
        let r = nothing()
            .when(c)
            .then_rejected(RejectionReason::UnknownAggregate)
            .clone();
        assert_eq!(r.current_version, Some(0));
    }
}

#[test]
fn creating_command_on_an_existing_aggregate_is_a_rule_violation() {
    given([register()]).when(register()).then_violates();
    given([send_request(1, "ada", "bob")])
        .when(send_request(1, "ada", "bob"))
        .then_violates();
    given([create_post(2, "ada")])
        .when(create_post(2, "ada"))
        .then_violates();
    // A post id reused for a friend request and the other way round.
    given([create_post(1, "ada")])
        .when(send_request(1, "ada", "bob"))
        .then_violates();
}

#[test]
fn existence_check_comes_before_validation() {
    let c = with(log_meal(1, 0, 100.0), |c| {
        if let Command::LogMeal(m) = c {
            m.payload.items.clear();
        }
    });
    nothing()
        .when(c)
        .then_rejected(RejectionReason::UnknownAggregate);
}

#[test]
fn header_command_type_must_match_the_record() {
    let c = with(register(), |c| {
        c.header_mut().command_type = "user.xp.award".into()
    });
    nothing().when(c).then_invalid("header.command_type");
}

#[test]
fn empty_aggregate_id_is_invalid() {
    let c = with(create_post(2, "ada"), |c| {
        c.header_mut().aggregate_id = String::new()
    });
    nothing().when(c).then_invalid("header.aggregate_id");
}

#[test]
fn apply_refuses_a_version_gap_and_leaves_the_aggregate_unchanged() {
    let mut g = given([register()]);
    let events = nothing()
        .when(register())
        .then_types(&["user.registered"])
        .to_vec();
    let before = g.aggregate.clone();
    let err = apply(&mut g.aggregate, &events[0]).expect_err("version 1 on version 1");
    assert_eq!(
        err,
        ApplyError::VersionGap {
            expected: 2,
            found: 1
        }
    );
    assert_eq!(g.aggregate, before);
}

#[test]
fn apply_refuses_events_of_another_kind() {
    let user_event = nothing().when(register()).then_types(&["user.registered"])[0].clone();
    let mut social = given([create_post(2, "ada")]).aggregate;
    let mut e = user_event.clone();
    e.header_mut().version = 2;
    let before = social.clone();
    assert!(matches!(
        apply(&mut social, &e),
        Err(ApplyError::WrongKind { .. })
    ));
    assert_eq!(social, before);

    // A post event on a friend request.
    let like_event = given([create_post(2, "ada")])
        .when(like(2, "bob", dietstream_schemas::types::Reaction::Yum))
        .then_types(&["social.post.liked"])[0]
        .clone();
    let mut request = given([send_request(1, "ada", "bob")]).aggregate;
    assert!(matches!(
        apply(&mut request, &like_event),
        Err(ApplyError::WrongKind { .. })
    ));

    // System events have no aggregate here.
    let system = Event::CacheInvalidated(dietstream_schemas::types::CacheInvalidated {
        header: crate::domain::blank_header(),
        payload: dietstream_schemas::types::CacheInvalidatedPayload {
            cache_name: "foods".into(),
            keys_count: 1,
            reason: "test".into(),
        },
    });
    let mut system = system;
    system.header_mut().version = 1;
    assert!(matches!(
        apply(&mut Aggregate::default(), &system),
        Err(ApplyError::WrongKind { .. })
    ));
}

#[test]
fn apply_on_an_empty_aggregate_creates_the_state_of_the_event_kind() {
    let events = nothing()
        .when(ai_query(1))
        .then_types(&["ai.query.received"])
        .to_vec();
    let g = given_events(&events);
    assert!(matches!(g.aggregate.state, State::Ai(_)));
    assert_eq!(g.aggregate.version, 1);
    assert_eq!(g.aggregate.last_event_id, Some(events[0].header().event_id));
}

#[test]
fn snapshot_json_round_trips() {
    let mut g = given([
        register_in("Europe/Berlin"),
        goal(|g| {
            g.energy_kcal = Some(1000.0);
            g.effective_from = DAY0;
        }),
    ]);
    g.run(log_meal(1, 0, 1200.5));
    g.run(start_quest(1));
    g.run(complete_quest(1, 50));
    let json = serde_json::to_vec(&g.aggregate).expect("serialise");
    let back: Aggregate = serde_json::from_slice(&json).expect("deserialise");
    assert_eq!(back, g.aggregate);
    for agg in [
        given([create_post(2, "ada")]).aggregate,
        given([ai_query(1)]).aggregate,
        Aggregate::default(),
    ] {
        let json = serde_json::to_vec(&agg).expect("serialise");
        assert_eq!(
            serde_json::from_slice::<Aggregate>(&json).expect("deserialise"),
            agg
        );
    }
}

#[test]
fn a_snapshot_is_taken_of_an_existing_aggregate_at_its_version_without_events() {
    let g = given([register(), award_xp(5)]);
    let then = g.when(take_snapshot(AggregateType::User, USER));
    then.then_types(&[]);
    let stale = with(take_snapshot(AggregateType::User, USER), |c| {
        c.header_mut().expected_version = Some(1)
    });
    let r = g
        .when(stale)
        .then_rejected(RejectionReason::ConcurrencyConflict)
        .clone();
    assert_eq!(
        (r.expected_version, r.current_version),
        (Some(1), Some(g.aggregate.version))
    );
}

#[test]
fn a_snapshot_of_nothing_or_of_a_foreign_aggregate_type_is_refused() {
    nothing()
        .when(take_snapshot(AggregateType::User, USER))
        .then_rejected(RejectionReason::UnknownAggregate);
    given([register()])
        .when(take_snapshot(AggregateType::System, USER))
        .then_rejected(RejectionReason::UnknownAggregate);
    given([register()])
        .when(take_snapshot(AggregateType::Social, USER))
        .then_rejected(RejectionReason::UnknownAggregate);
}
