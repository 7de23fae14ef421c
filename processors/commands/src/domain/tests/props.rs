//! Property tests: for random command sequences, deciding and applying step by step gives the
//! same aggregate as replaying all produced events from scratch, versions are contiguous from
//! 1, event ids are unique, and the JSON snapshot round-trips.

use std::collections::HashSet;

use dietstream_schemas::types::{FeedbackTargetKind, NutritionGoalKind, Reaction};
use dietstream_schemas::{Command, Event};
use proptest::prelude::*;

use super::harness::*;
use crate::domain::{apply, decide, Aggregate};

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Pacific/Auckland",
    "America/Los_Angeles",
];

/// The goals `nutrition.goal.met.record` accepts.
const GOALS_MET: &[NutritionGoalKind] = &[
    NutritionGoalKind::Energy,
    NutritionGoalKind::Protein,
    NutritionGoalKind::Fibre,
    NutritionGoalKind::Water,
];

fn user_command() -> impl Strategy<Value = Command> {
    // Quantities are whole numbers so that the JSON snapshot round-trip is exact.
    prop_oneof![
        4 => (0u128..8, -3i64..12, 0u32..1500).prop_map(|(m, d, k)| log_meal(m, d, f64::from(k))),
        2 => (0u128..8, -3i64..12, 0u32..1500).prop_map(|(m, d, k)| update_meal(m, d, f64::from(k))),
        1 => (0u128..8).prop_map(delete_meal),
        2 => (1i32..3000, -3i64..12).prop_map(|(ml, d)| log_water(ml, d)),
        1 => (500u32..3000, 500i32..3000, -5i32..12).prop_map(|(k, w, d)| goal(move |g| {
            g.energy_kcal = Some(f64::from(k));
            g.protein_g = Some(30.0);
            g.water_ml = Some(w);
            g.effective_from = DAY0 + d;
        })),
        2 => (-3i32..12, 0usize..GOALS_MET.len(), 1u32..3000, 0u32..500).prop_map(
            |(d, k, t, over)| record_goal_met(d, GOALS_MET[k], f64::from(t), f64::from(t + over))
        ),
        2 => (1i32..400).prop_map(award_xp),
        1 => (0u128..4).prop_map(start_quest),
        1 => (0u128..4, 0u32..10).prop_map(|(q, p)| progress_quest(q, f64::from(p))),
        1 => (0u128..4, 0i32..300).prop_map(|(q, xp)| complete_quest(q, xp)),
        1 => (0u128..4).prop_map(fail_quest),
        1 => (0u128..4, 0i32..300).prop_map(|(q, xp)| claim_reward(q, xp)),
        1 => (0usize..ZONES.len()).prop_map(|z| update_profile(move |p| {
            p.time_zone = Some(ZONES[z].into());
            p.changed_fields = vec!["time_zone".into()];
        })),
    ]
}

fn social_command() -> impl Strategy<Value = Command> {
    let reactions = prop_oneof![
        Just(Reaction::Like),
        Just(Reaction::Love),
        Just(Reaction::Yum)
    ];
    prop_oneof![
        2 => (0usize..3, reactions).prop_map(|(u, r)| like(1, ["bob", "carol", "dan"][u], r)),
        2 => (10u128..16, proptest::option::of(10u128..16)).prop_map(|(c, p)| comment(1, c, p)),
    ]
}

fn ai_command() -> impl Strategy<Value = Command> {
    let kinds = prop_oneof![
        Just(FeedbackTargetKind::Response),
        Just(FeedbackTargetKind::Insight),
        Just(FeedbackTargetKind::Recommendation),
    ];
    prop_oneof![
        (0u128..5).prop_map(ai_query),
        (0u128..5, 10u128..15).prop_map(|(q, r)| ai_response(q, r)),
        (20u128..25).prop_map(insight),
        (30u128..35, proptest::option::of(20u128..25)).prop_map(|(r, i)| recommendation(r, i)),
        (40u128..50, 10u128..35, kinds, 1i32..6).prop_map(|(f, t, k, r)| feedback(f, t, k, r)),
    ]
}

/// Runs the commands step by step and checks the invariants; returns how many were accepted.
fn check(commands: Vec<Command>) -> Result<usize, TestCaseError> {
    let mut stepwise = Aggregate::default();
    let mut log: Vec<Event> = Vec::new();
    let mut accepted = 0;
    for c in &commands {
        let Ok(events) = decide(&stepwise, c, NOW) else {
            continue;
        };
        accepted += 1;
        prop_assert_eq!(
            decide(&stepwise, c, NOW),
            Ok(events.clone()),
            "decide is deterministic"
        );
        for e in events {
            prop_assert_eq!(e.header().version, stepwise.version + 1);
            prop_assert!(apply(&mut stepwise, &e).is_ok());
            log.push(e);
        }
    }
    let mut replayed = Aggregate::default();
    for e in &log {
        prop_assert!(apply(&mut replayed, e).is_ok());
    }
    prop_assert_eq!(&replayed, &stepwise);
    let versions: Vec<i64> = log.iter().map(|e| e.header().version).collect();
    let expected: Vec<i64> = (1..=log.len() as i64).collect();
    prop_assert_eq!(versions, expected);
    let ids: HashSet<_> = log.iter().map(|e| e.header().event_id).collect();
    prop_assert_eq!(ids.len(), log.len());
    let json = serde_json::to_vec(&stepwise).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Aggregate =
        serde_json::from_slice(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back, stepwise);
    Ok(accepted)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn user_decide_apply_equals_replay(zone in 0usize..ZONES.len(), commands in proptest::collection::vec(user_command(), 0..60)) {
        let mut all = vec![register_in(ZONES[zone])];
        all.extend(commands);
        let accepted = check(all)?;
        prop_assert!(accepted >= 1);
    }

    #[test]
    fn social_decide_apply_equals_replay(request in any::<bool>(), commands in proptest::collection::vec(social_command(), 0..30)) {
        let mut all = vec![if request { send_request(1, "ada", "bob") } else { create_post(1, "ada") }];
        all.push(accept(1, Some("bob")));
        all.extend(commands);
        check(all)?;
    }

    #[test]
    fn ai_decide_apply_equals_replay(commands in proptest::collection::vec(ai_command(), 0..40)) {
        check(commands)?;
    }
}

#[test]
fn a_long_user_history_stays_consistent() {
    // Deterministic long run across the day window, so pruning is exercised.
    let mut commands = vec![
        register_in("Europe/Berlin"),
        goal(|g| {
            g.energy_kcal = Some(1000.0);
            g.water_ml = Some(1000);
            g.effective_from = DAY0 - 200;
        }),
    ];
    for d in 0..150i64 {
        let at = T0 - 120 * DAY + d * DAY;
        let mut c = log_meal_items(
            d as u128,
            at,
            vec![item(600.0 + (d % 3) as f64 * 300.0, 20.0)],
        );
        c.header_mut().issued_at = at;
        commands.push(c);
        if d % 4 == 0 {
            let mut w = log_water(1200, 0);
            if let Command::LogWater(l) = &mut w {
                l.payload.drunk_at = at;
            }
            w.header_mut().issued_at = at;
            commands.push(w);
        }
    }
    let accepted = check(commands.clone()).map_err(|e| e.to_string());
    assert_eq!(accepted, Ok(commands.len()));
}
