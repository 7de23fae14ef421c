//! USER aggregate: validation, rules, goals met and the derived events (streaks,
//! achievements, levels).

use dietstream_schemas::types::{self, NutritionGoalKind};
use dietstream_schemas::{Command, Event};

use super::harness::*;
use crate::domain::{level_for_xp, xp_for_level, State, UserState, DAY_WINDOW};

fn user(g: &Given) -> &UserState {
    match &g.aggregate.state {
        State::User(s) => s,
        other => panic!("not a user: {other:?}"),
    }
}

fn meal_payload(c: &mut Command) -> &mut types::LogMealPayload {
    match c {
        Command::LogMeal(m) => &mut m.payload,
        _ => panic!("not a LogMeal"),
    }
}

/// A registered user with the first-meal achievement behind them, so later meals derive
/// nothing unless the test sets it up.
fn fed_user() -> Given {
    given([register(), log_meal(100, 0, 100.0)])
}

// ---- validation ----

#[test]
fn registration_values_are_validated() {
    type Change = Box<dyn Fn(&mut types::RegisterUserPayload)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "payload.display_name",
            Box::new(|p| p.display_name = "  ".into()),
        ),
        ("payload.email", Box::new(|p| p.email = String::new())),
        (
            "payload.email",
            Box::new(|p| p.email = "ada.example.org".into()),
        ),
        ("payload.locale", Box::new(|p| p.locale = String::new())),
        (
            "payload.time_zone",
            Box::new(|p| p.time_zone = "Mars/Olympus".into()),
        ),
        (
            "payload.activity_level",
            Box::new(|p| p.activity_level = types::ActivityLevel::Unknown),
        ),
        (
            "payload.birth_year",
            Box::new(|p| p.birth_year = Some(1800)),
        ),
        (
            "payload.height_cm",
            Box::new(|p| p.height_cm = Some(f64::NAN)),
        ),
        ("payload.weight_kg", Box::new(|p| p.weight_kg = Some(-3.0))),
    ];
    for (field, change) in cases {
        let c = with(register(), |c| {
            if let Command::RegisterUser(r) = c {
                change(&mut r.payload);
            }
        });
        nothing().when(c).then_invalid(field);
    }
}

#[test]
fn profile_updates_are_validated() {
    let g = given([register()]);
    g.when(update_profile(|_| {}))
        .then_invalid("payload.changed_fields");
    g.when(update_profile(|p| {
        p.changed_fields = vec!["shoe_size".into()]
    }))
    .then_invalid("payload.changed_fields[0]");
    g.when(update_profile(|p| {
        p.email = Some("x@y".into());
        p.changed_fields = vec!["birth_year".into()];
    }))
    .then_invalid("payload.email");
    g.when(update_profile(|p| {
        p.changed_fields = vec!["display_name".into()]
    }))
    .then_invalid("payload.display_name");
    g.when(update_profile(|p| {
        p.time_zone = Some("Nowhere/City".into());
        p.changed_fields = vec!["time_zone".into()];
    }))
    .then_invalid("payload.time_zone");
    g.when(update_profile(|p| {
        p.email = Some("no-at-sign".into());
        p.changed_fields = vec!["email".into()];
    }))
    .then_invalid("payload.email");
    g.when(update_profile(|p| {
        p.activity_level = Some(types::ActivityLevel::Unknown);
        p.changed_fields = vec!["activity_level".into()];
    }))
    .then_invalid("payload.activity_level");
}

#[test]
fn profile_update_sets_and_clears_listed_fields_only() {
    let mut g = given([register()]);
    g.run(update_profile(|p| {
        p.time_zone = Some("Asia/Tokyo".into());
        p.changed_fields = vec!["time_zone".into(), "weight_kg".into()];
    }));
    let s = user(&g);
    assert_eq!(s.profile.time_zone, "Asia/Tokyo");
    assert_eq!(s.profile.weight_kg, None, "listed and null: cleared");
    assert_eq!(s.profile.height_cm, Some(170.0), "not listed: unchanged");
}

#[test]
fn meal_values_are_validated() {
    let g = given([register()]);
    type Change = Box<dyn Fn(&mut types::LogMealPayload)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "payload.meal_type",
            Box::new(|p| p.meal_type = types::MealType::Unknown),
        ),
        (
            "payload.source",
            Box::new(|p| p.source = types::MealSource::Unknown),
        ),
        ("payload.items", Box::new(|p| p.items.clear())),
        (
            "payload.items[0].grams",
            Box::new(|p| p.items[0].grams = 0.0),
        ),
        (
            "payload.items[0].grams",
            Box::new(|p| p.items[0].grams = 5000.5),
        ),
        (
            "payload.items[0].grams",
            Box::new(|p| p.items[0].grams = f64::NAN),
        ),
        (
            "payload.items[0].energy_kcal",
            Box::new(|p| p.items[0].energy_kcal = -1.0),
        ),
        (
            "payload.items[0].energy_kcal",
            Box::new(|p| p.items[0].energy_kcal = 10_001.0),
        ),
        (
            "payload.items[0].energy_kcal",
            Box::new(|p| p.items[0].energy_kcal = f64::INFINITY),
        ),
        (
            "payload.items[0].protein_g",
            Box::new(|p| p.items[0].protein_g = -0.1),
        ),
        (
            "payload.items[0].carbohydrate_g",
            Box::new(|p| p.items[0].carbohydrate_g = f64::NAN),
        ),
        (
            "payload.items[0].fat_g",
            Box::new(|p| p.items[0].fat_g = -1.0),
        ),
        (
            "payload.items[0].fibre_g",
            Box::new(|p| p.items[0].fibre_g = Some(-1.0)),
        ),
        (
            "payload.items[0].sugar_g",
            Box::new(|p| p.items[0].sugar_g = Some(f64::NEG_INFINITY)),
        ),
        (
            "payload.items[0].sodium_mg",
            Box::new(|p| p.items[0].sodium_mg = Some(-5.0)),
        ),
        (
            "payload.items[0].food_id",
            Box::new(|p| p.items[0].food_id = String::new()),
        ),
        (
            "payload.items[1].grams",
            Box::new(|p| {
                let mut second = p.items[0].clone();
                second.grams = -2.0;
                p.items.push(second);
            }),
        ),
        (
            "payload.eaten_at",
            Box::new(|p| p.eaten_at = ISSUED + DAY + 1),
        ),
    ];
    for (field, change) in cases {
        let mut c = log_meal(1, 0, 500.0);
        change(meal_payload(&mut c));
        g.when(c).then_invalid(field);
    }
    // Exactly one day ahead is still fine (time zones, clock skew).
    let mut c = log_meal(1, 0, 500.0);
    meal_payload(&mut c).eaten_at = ISSUED + DAY;
    g.when(c)
        .then_types(&["nutrition.meal.logged", "user.achievement.unlocked"]);
}

#[test]
fn update_meal_values_are_validated() {
    let g = fed_user();
    let c = with(update_meal(100, 0, 100.0), |c| {
        if let Command::UpdateMeal(m) = c {
            m.payload.items[0].energy_kcal = -3.0;
        }
    });
    g.when(c).then_invalid("payload.items[0].energy_kcal");
    let c = with(update_meal(100, 0, 100.0), |c| {
        if let Command::UpdateMeal(m) = c {
            m.payload.meal_type = types::MealType::Unknown;
        }
    });
    g.when(c).then_invalid("payload.meal_type");
    let c = with(delete_meal(100), |c| {
        if let Command::DeleteMeal(m) = c {
            m.payload.reason = types::MealDeletionReason::Unknown;
        }
    });
    g.when(c).then_invalid("payload.reason");
}

#[test]
fn water_is_between_1_and_5000_ml() {
    let g = given([register()]);
    g.when(log_water(0, 0)).then_invalid("payload.millilitres");
    g.when(log_water(5001, 0))
        .then_invalid("payload.millilitres");
    g.when(log_water(1, 0))
        .then_types(&["nutrition.water.logged"]);
    g.when(log_water(5000, 0))
        .then_types(&["nutrition.water.logged"]);
    g.when(log_water(250, 32)).then_invalid("payload.drunk_at");
}

#[test]
fn xp_award_is_at_least_1_with_a_known_source() {
    let g = given([register()]);
    g.when(award_xp(0)).then_invalid("payload.xp");
    g.when(award_xp(-5)).then_invalid("payload.xp");
    let c = with(award_xp(5), |c| {
        if let Command::AwardXp(a) = c {
            a.payload.source = types::XpSource::Unknown;
        }
    });
    g.when(c).then_invalid("payload.source");
}

#[test]
fn goal_values_are_validated() {
    let g = given([register()]);
    g.when(goal(|g| g.energy_kcal = Some(0.0)))
        .then_invalid("payload.energy_kcal");
    g.when(goal(|g| g.protein_g = Some(f64::NAN)))
        .then_invalid("payload.protein_g");
    g.when(goal(|g| g.fat_g = Some(-1.0)))
        .then_invalid("payload.fat_g");
    g.when(goal(|g| g.water_ml = Some(0)))
        .then_invalid("payload.water_ml");
    g.when(goal(|_| {})).then_types(&["nutrition.goal.updated"]);
}

#[test]
fn quest_values_are_validated() {
    let g = given([register(), start_quest(1)]);
    let c = with(start_quest(2), |c| {
        if let Command::StartQuest(q) = c {
            q.payload.quest_kind = types::QuestKind::Unknown;
        }
    });
    g.when(c).then_invalid("payload.quest_kind");
    let c = with(start_quest(2), |c| {
        if let Command::StartQuest(q) = c {
            q.payload.unit = types::QuestUnit::Unknown;
        }
    });
    g.when(c).then_invalid("payload.unit");
    let c = with(start_quest(2), |c| {
        if let Command::StartQuest(q) = c {
            q.payload.target = 0.0;
        }
    });
    g.when(c).then_invalid("payload.target");
    g.when(progress_quest(1, -1.0))
        .then_invalid("payload.progress");
    g.when(progress_quest(1, f64::NAN))
        .then_invalid("payload.progress");
    g.when(complete_quest(1, -1))
        .then_invalid("payload.xp_reward");
    let c = with(fail_quest(1), |c| {
        if let Command::FailQuest(q) = c {
            q.payload.reason = types::QuestFailureReason::Unknown;
        }
    });
    g.when(c).then_invalid("payload.reason");
    let c = with(claim_reward(1, 5), |c| {
        if let Command::ClaimQuestReward(q) = c {
            q.payload.reward_kind = types::RewardKind::Unknown;
        }
    });
    g.when(c).then_invalid("payload.reward_kind");
    let c = with(claim_reward(1, 5), |c| {
        if let Command::ClaimQuestReward(q) = c {
            q.payload.items.push(types::RewardItem {
                item_id: "hat".into(),
                quantity: 0,
            });
        }
    });
    g.when(c).then_invalid("payload.items[0].quantity");
}

// ---- meal rules ----

#[test]
fn logging_a_meal_id_twice_is_a_rule_violation_even_after_deletion() {
    let mut g = fed_user();
    g.when(log_meal(100, 1, 100.0)).then_violates();
    g.run(delete_meal(100));
    g.when(log_meal(100, 1, 100.0)).then_violates();
}

#[test]
fn updating_or_deleting_a_meal_never_logged_is_a_rule_violation() {
    let g = fed_user();
    g.when(update_meal(5, 0, 100.0)).then_violates();
    g.when(delete_meal(5)).then_violates();
}

#[test]
fn updating_or_deleting_a_deleted_meal_is_a_rule_violation() {
    let mut g = fed_user();
    g.run(delete_meal(100));
    g.when(update_meal(100, 0, 100.0)).then_violates();
    g.when(delete_meal(100)).then_violates();
}

#[test]
fn update_and_delete_move_and_mark_the_meal() {
    let mut g = fed_user();
    g.run(log_meal(1, 0, 400.0));
    assert_eq!(user(&g).meals[&id(1)].day, DAY0);
    g.run(update_meal(1, 1, 300.0));
    let meal = user(&g).meals[&id(1)];
    assert_eq!((meal.day, meal.nutrients.energy_kcal), (DAY0 + 1, 300.0));
    g.run(delete_meal(1));
    assert!(user(&g).meals[&id(1)].deleted);
}

// ---- quest rules ----

#[test]
fn quest_commands_on_a_quest_never_started_are_rule_violations() {
    let g = given([register()]);
    g.when(progress_quest(1, 1.0)).then_violates();
    g.when(complete_quest(1, 10)).then_violates();
    g.when(fail_quest(1)).then_violates();
    g.when(claim_reward(1, 10)).then_violates();
}

#[test]
fn starting_a_quest_id_twice_is_a_rule_violation() {
    given([register(), start_quest(1)])
        .when(start_quest(1))
        .then_violates();
}

#[test]
fn finished_quests_cannot_progress_complete_or_fail() {
    let completed = given([register(), start_quest(1), complete_quest(1, 0)]);
    let failed = given([register(), start_quest(1), fail_quest(1)]);
    for g in [&completed, &failed] {
        g.when(progress_quest(1, 2.0)).then_violates();
        g.when(complete_quest(1, 10)).then_violates();
        g.when(fail_quest(1)).then_violates();
    }
}

#[test]
fn reward_needs_a_completed_quest_and_is_claimed_once() {
    given([register(), start_quest(1)])
        .when(claim_reward(1, 10))
        .then_violates();
    given([register(), start_quest(1), fail_quest(1)])
        .when(claim_reward(1, 10))
        .then_violates();
    let mut g = given([register(), start_quest(1), complete_quest(1, 0)]);
    g.run(claim_reward(1, 10));
    g.when(claim_reward(1, 10)).then_violates();
}

#[test]
fn progress_is_absolute_and_a_repeat_appends_nothing() {
    let mut g = given([register(), start_quest(1)]);
    let events = g.run(progress_quest(1, 3.0));
    match &events[0] {
        Event::QuestUpdated(e) => {
            assert_eq!(
                (
                    e.payload.previous_progress,
                    e.payload.progress,
                    e.payload.delta
                ),
                (0.0, 3.0, 3.0)
            );
        }
        other => panic!("{other:?}"),
    }
    g.when(progress_quest(1, 3.0)).then_types(&[]);
    let events = g.run(progress_quest(1, 2.0));
    match &events[0] {
        Event::QuestUpdated(e) => assert_eq!(e.payload.delta, -1.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn completion_carries_the_progress_and_definition() {
    let mut g = given([register(), start_quest(1), progress_quest(1, 7.0)]);
    let events = g.run(complete_quest(1, 0));
    match &events[0] {
        Event::QuestCompleted(e) => {
            assert_eq!(e.payload.progress, 7.0);
            assert_eq!(e.payload.quest_definition_id, "hydration-7d");
        }
        other => panic!("{other:?}"),
    }
}

// ---- goals met ----

fn with_goals() -> Given {
    given([
        register(),
        log_meal(100, -40, 10.0),
        goal(|g| {
            g.energy_kcal = Some(2000.0);
            g.protein_g = Some(50.0);
            g.water_ml = Some(2000);
            g.effective_from = DAY0;
        }),
    ])
}

fn goal_met(e: &Event) -> (i32, NutritionGoalKind, f64, f64) {
    match e {
        Event::NutritionGoalMet(g) => (
            g.payload.date,
            g.payload.goal,
            g.payload.target,
            g.payload.achieved,
        ),
        other => panic!("not a goal met: {other:?}"),
    }
}

#[test]
fn logs_that_reach_a_target_no_longer_append_goal_met() {
    // The nutrition processor judges the days and sends nutrition.goal.met.record.
    let mut g = with_goals();
    g.when(log_meal_items(1, T0, vec![item(2100.0, 60.0)]))
        .then_types(&["nutrition.meal.logged"]);
    g.run(log_meal(2, 0, 1000.0));
    g.when(update_meal(2, 0, 2200.0))
        .then_types(&["nutrition.meal.updated"]);
    g.when(log_water(2500, 0))
        .then_types(&["nutrition.water.logged"]);
    assert!(user(&g).goals_met.is_empty());
}

#[test]
fn a_recorded_goal_met_appends_the_event_with_its_values_and_unlocks_the_first_achievement() {
    let mut g = with_goals();
    let events = g
        .when(record_goal_met(
            0,
            NutritionGoalKind::Energy,
            2000.0,
            2100.0,
        ))
        .then_types(&["nutrition.goal.met", "user.achievement.unlocked"])
        .to_vec();
    assert_eq!(
        goal_met(&events[0]),
        (DAY0, NutritionGoalKind::Energy, 2000.0, 2100.0)
    );
    g.run(record_goal_met(
        0,
        NutritionGoalKind::Energy,
        2000.0,
        2100.0,
    ));
    let s = user(&g);
    assert!(s.achievements.contains("first-goal-met"));
    assert_eq!(
        s.goals_met.iter().copied().collect::<Vec<_>>(),
        [(DAY0, NutritionGoalKind::Energy)]
    );
}

#[test]
fn a_goal_met_again_for_the_same_day_and_goal_is_a_rule_violation() {
    let mut g = with_goals();
    g.run(record_goal_met(0, NutritionGoalKind::Water, 2000.0, 2000.0));
    // A resent command (or one with other figures) for the same day and goal changes nothing.
    g.when(record_goal_met(0, NutritionGoalKind::Water, 2000.0, 2000.0))
        .then_violates();
    g.when(record_goal_met(0, NutritionGoalKind::Water, 1500.0, 3000.0))
        .then_violates();
    // Another goal of that day, or the same goal on another day, is new.
    g.when(record_goal_met(0, NutritionGoalKind::Protein, 50.0, 60.0))
        .then_types(&["nutrition.goal.met"]);
    g.when(record_goal_met(1, NutritionGoalKind::Water, 2000.0, 2100.0))
        .then_types(&["nutrition.goal.met"]);
}

#[test]
fn a_goal_met_is_recorded_whatever_the_aggregate_knows_of_that_day() {
    // The day is the nutrition processor's (UTC) and so are its figures: the aggregate does
    // not judge them again, with or without a goal or a meal of its own.
    given([register()])
        .when(record_goal_met(-500, NutritionGoalKind::Fibre, 25.0, 30.0))
        .then_types(&["nutrition.goal.met", "user.achievement.unlocked"]);
}

#[test]
fn a_goal_met_for_an_unknown_user_is_refused() {
    nothing()
        .when(record_goal_met(
            0,
            NutritionGoalKind::Energy,
            2000.0,
            2100.0,
        ))
        .then_rejected(types::RejectionReason::UnknownAggregate);
}

#[test]
fn goal_met_values_are_validated() {
    use NutritionGoalKind::{Carbohydrate, Energy, Fat, Protein, Unknown, Water};
    let g = given([register()]);
    let cases = [
        ("payload.goal", Unknown, 100.0, 100.0),
        ("payload.goal", Carbohydrate, 200.0, 150.0),
        ("payload.goal", Fat, 70.0, 70.0),
        ("payload.target", Energy, 0.0, 10.0),
        ("payload.target", Protein, -5.0, 10.0),
        ("payload.target", Energy, f64::NAN, 10.0),
        ("payload.target", Energy, 20_001.0, 30_000.0),
        ("payload.target", Water, 20_001.0, 30_000.0),
        ("payload.achieved", Energy, 2000.0, 1999.5),
        ("payload.achieved", Water, 2000.0, f64::NAN),
        ("payload.achieved", Water, 2000.0, f64::INFINITY),
    ];
    for (field, kind, target, achieved) in cases {
        g.when(record_goal_met(0, kind, target, achieved))
            .then_invalid(field);
    }
    g.when(record_goal_met(0, Energy, 2000.0, 2000.0))
        .then_types(&["nutrition.goal.met", "user.achievement.unlocked"]);
}

#[test]
fn meal_days_count_in_the_users_time_zone() {
    // 2024-03-01T12:00Z is already 2024-03-02 01:00 in Auckland (UTC+13).
    let mut g = given([register_in("Pacific/Auckland")]);
    g.run(log_meal(1, 0, 1000.0));
    assert_eq!(user(&g).meals[&id(1)].day, DAY0 + 1);
    let mut g = given([register_in("America/Los_Angeles")]);
    g.run(log_meal(1, 0, 10.0));
    assert!(
        user(&g).days.contains_key(&DAY0),
        "04:00 the same day in Los Angeles"
    );
}

#[test]
fn only_recent_days_are_kept() {
    let mut g = with_goals();
    g.run(log_water(500, 0));
    g.run(with(log_meal(2, i64::from(DAY_WINDOW) + 5, 10.0), |c| {
        c.header_mut().issued_at = T0 + 100 * DAY;
    }));
    let s = user(&g);
    assert!(!s.days.contains_key(&DAY0), "pruned");
    assert!(s.days.len() <= DAY_WINDOW as usize);
    // The goals met are not pruned with the days: an old day cannot be met twice.
    let mut g = with_goals();
    g.run(record_goal_met(
        0,
        NutritionGoalKind::Energy,
        2000.0,
        2000.0,
    ));
    g.run(with(log_meal(2, i64::from(DAY_WINDOW) + 5, 10.0), |c| {
        c.header_mut().issued_at = T0 + 100 * DAY;
    }));
    g.when(record_goal_met(
        0,
        NutritionGoalKind::Energy,
        2000.0,
        2000.0,
    ))
    .then_violates();
}

// ---- streaks ----

fn milestone(e: &Event) -> (i32, i32, i32) {
    match e {
        Event::UserStreakMilestone(m) => (
            m.payload.days,
            m.payload.milestone,
            m.payload.streak_started_on,
        ),
        other => panic!("not a milestone: {other:?}"),
    }
}

#[test]
fn three_consecutive_days_reach_the_first_milestone() {
    let mut g = fed_user();
    g.run(log_meal(1, 1, 100.0));
    let events = g
        .when(log_meal(2, 2, 100.0))
        .then_types(&["nutrition.meal.logged", "user.streak.milestone"])
        .to_vec();
    assert_eq!(milestone(&events[1]), (3, 3, DAY0));
    g.run(log_meal(2, 2, 100.0));
    // A second meal on the same day does not repeat it.
    g.when(log_meal(3, 2, 100.0))
        .then_types(&["nutrition.meal.logged"]);
}

#[test]
fn seven_days_reach_a_milestone_and_the_streak_achievement() {
    let mut g = fed_user();
    for d in 1..6 {
        g.run(log_meal(d as u128, d, 100.0));
    }
    let events = g
        .when(log_meal(6, 6, 100.0))
        .then_types(&[
            "nutrition.meal.logged",
            "user.streak.milestone",
            "user.achievement.unlocked",
        ])
        .to_vec();
    assert_eq!(milestone(&events[1]), (7, 7, DAY0));
}

#[test]
fn a_gap_starts_a_new_streak_whose_milestones_come_again() {
    let mut g = fed_user();
    g.run(log_meal(1, 1, 100.0));
    g.run(log_meal(2, 2, 100.0));
    g.run(log_meal(3, 4, 100.0));
    g.run(log_meal(4, 5, 100.0));
    let events = g
        .when(log_meal(5, 6, 100.0))
        .then_types(&["nutrition.meal.logged", "user.streak.milestone"])
        .to_vec();
    assert_eq!(milestone(&events[1]), (3, 3, DAY0 + 4));
}

#[test]
fn a_backfilled_day_extends_the_streak_at_its_start() {
    let mut g = given([register(), log_meal(1, 5, 100.0)]);
    g.run(log_meal(2, 6, 100.0));
    let events = g
        .when(log_meal(3, 4, 100.0))
        .then_types(&["nutrition.meal.logged", "user.streak.milestone"])
        .to_vec();
    assert_eq!(milestone(&events[1]), (3, 3, DAY0 + 4));
}

// ---- achievements and levels ----

#[test]
fn first_meal_unlocks_an_achievement_with_xp() {
    let mut g = given([register()]);
    let events = g.run(log_meal(1, 0, 100.0));
    match &events[1] {
        Event::UserAchievementUnlocked(a) => {
            assert_eq!(a.payload.achievement_id, "first-meal");
            assert_eq!(a.payload.xp_awarded, 10);
            assert_eq!(a.payload.tier, types::AchievementTier::Bronze);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(user(&g).total_xp, 10);
}

#[test]
fn hundred_meals_unlock_centurion_once() {
    let mut g = given([register()]);
    let mut unlocked = Vec::new();
    for m in 0..101u128 {
        for e in g.run(log_meal(m, -40 + (m as i64 % 2), 10.0)) {
            if let Event::UserAchievementUnlocked(a) = e {
                unlocked.push(a.payload.achievement_id);
            }
        }
    }
    assert_eq!(unlocked, ["first-meal", "meals-100"]);
}

#[test]
fn completing_quests_unlocks_achievements() {
    let mut g = given([register()]);
    g.run(start_quest(1));
    g.when(complete_quest(1, 10))
        .then_types(&["quest.completed", "user.achievement.unlocked"]);
    g.run(complete_quest(1, 10));
    for q in 2..10 {
        g.run(start_quest(q));
        g.run(complete_quest(q, 10));
    }
    g.run(start_quest(10));
    let events = g
        .when(complete_quest(10, 10))
        .then_types(&[
            "quest.completed",
            "user.achievement.unlocked",
            "user.level.up",
        ])
        .to_vec();
    match &events[1] {
        Event::UserAchievementUnlocked(a) => assert_eq!(a.payload.achievement_id, "quests-10"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn award_xp_appends_the_total_and_a_level_up_when_crossed() {
    let mut g = given([register()]);
    let events = g
        .when(award_xp(99))
        .then_types(&["user.xp.awarded"])
        .to_vec();
    match &events[0] {
        Event::UserXpAwarded(e) => assert_eq!(e.payload.total_xp, 99),
        other => panic!("{other:?}"),
    }
    g.run(award_xp(99));
    let events = g
        .when(award_xp(1))
        .then_types(&["user.xp.awarded", "user.level.up"])
        .to_vec();
    match &events[1] {
        Event::UserLevelUp(e) => {
            assert_eq!(
                (
                    e.payload.previous_level,
                    e.payload.new_level,
                    e.payload.total_xp
                ),
                (1, 2, 100)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_award_can_cross_several_levels() {
    let events = given([register()])
        .when(award_xp(1000))
        .then_types(&["user.xp.awarded", "user.level.up"])
        .to_vec();
    match &events[1] {
        Event::UserLevelUp(e) => {
            assert_eq!((e.payload.previous_level, e.payload.new_level), (1, 5))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn claimed_reward_xp_counts_towards_the_level() {
    let mut g = given([register(), start_quest(1)]);
    g.run(complete_quest(1, 300)); // first-quest: 20 XP
    let events = g
        .when(claim_reward(1, 300))
        .then_types(&["quest.reward.claimed", "user.level.up"])
        .to_vec();
    match &events[1] {
        Event::UserLevelUp(e) => assert_eq!((e.payload.new_level, e.payload.total_xp), (3, 320)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn achievement_xp_can_level_up_and_the_level_up_comes_last() {
    let mut g = given([register(), award_xp(95)]);
    let events = g.run(log_meal(1, 0, 100.0));
    let types: Vec<_> = events.iter().map(Event::record_type).collect();
    assert_eq!(
        types,
        [
            "nutrition.meal.logged",
            "user.achievement.unlocked",
            "user.level.up"
        ]
    );
    assert_eq!(user(&g).level, 2);
    assert_eq!(user(&g).total_xp, 105);
}

#[test]
fn level_curve() {
    assert_eq!(xp_for_level(1), 0);
    assert_eq!(xp_for_level(2), 100);
    assert_eq!(xp_for_level(5), 1000);
    for (xp, level) in [
        (-5, 1),
        (0, 1),
        (99, 1),
        (100, 2),
        (299, 2),
        (300, 3),
        (599, 3),
        (600, 4),
        (1000, 5),
    ] {
        assert_eq!(level_for_xp(xp), level, "{xp} XP");
    }
    for level in [10, 1000, 100_000, 400_000_000] {
        let xp = xp_for_level(level);
        assert_eq!(level_for_xp(xp), level);
        assert_eq!(level_for_xp(xp - 1), level - 1);
    }
    assert!(level_for_xp(i64::MAX) > 0);
}

#[test]
fn replaying_the_events_of_a_rich_history_gives_the_same_state() {
    let mut g = with_goals();
    let mut events = Vec::new();
    let mut history = nothing();
    for c in [
        register(),
        log_meal(100, -40, 10.0),
        goal(|g| {
            g.energy_kcal = Some(2000.0);
            g.protein_g = Some(50.0);
            g.water_ml = Some(2000);
            g.effective_from = DAY0;
        }),
    ] {
        events.extend(history.run(c));
    }
    for c in [
        log_meal(1, 0, 2100.0),
        log_water(2500, 0),
        log_meal(2, 1, 100.0),
        log_meal(3, 2, 100.0),
        update_meal(3, 2, 2500.0),
        award_xp(500),
        start_quest(1),
        complete_quest(1, 100),
        claim_reward(1, 100),
    ] {
        g.run(c.clone());
        events.extend(history.run(c));
    }
    assert_eq!(given_events(&events).aggregate, history.aggregate);
    assert_eq!(g.aggregate.state, history.aggregate.state);
}
