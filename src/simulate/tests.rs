//! Unit tests of the generator against a small in-memory model of the command processor.

use std::collections::{BTreeSet, HashMap};

use dietstream_schemas::types::{AggregateType, MealItem, RejectionReason};
use dietstream_schemas::Command;
use uuid::Uuid;

use super::*;

/// Versions per aggregate, checks expected versions, rejects what the simulator marked
/// invalid; enough to play the game without Kafka.
#[derive(Default)]
struct Model {
    versions: HashMap<(AggregateType, String), i64>,
}

impl Model {
    fn answer(&mut self, planned: &Planned) -> CommandOutcome {
        let header = planned.command.header();
        let key = (header.aggregate_type, header.aggregate_id.clone());
        let current = self.versions.get(&key).copied().unwrap_or(0);
        let rejected = |reason, current_version| CommandOutcome::Rejected {
            reason,
            message: String::new(),
            field: None,
            expected_version: header.expected_version,
            current_version,
        };
        if header.expected_version.is_some_and(|v| v != current) {
            return rejected(RejectionReason::ConcurrencyConflict, Some(current));
        }
        if planned.deliberate.is_some() {
            return rejected(RejectionReason::RuleViolation, None);
        }
        self.versions.insert(key, current + 1);
        CommandOutcome::Accepted {
            new_version: current + 1,
            event_ids: Vec::new(),
        }
    }
}

fn drive(config: &GeneratorConfig, rounds: usize) -> Vec<(Planned, CommandOutcome)> {
    let mut model = Model::default();
    let mut users: Vec<UserSim> = (0..config.users).map(|i| UserSim::new(config, i)).collect();
    let mut out = Vec::new();
    for _ in 0..rounds {
        for user in &mut users {
            if let Some(planned) = user.next_command() {
                assert!(
                    user.next_command().is_none(),
                    "a second command while one is in flight"
                );
                let outcome = model.answer(&planned);
                user.observe(&outcome);
                out.push((planned, outcome));
            }
        }
    }
    out
}

fn config(seed: u64, users: u32, invalid_rate: f64) -> GeneratorConfig {
    GeneratorConfig {
        invalid_rate,
        ..GeneratorConfig::new(seed, users)
    }
}

/// Why `command` breaks the limits a command processor validates; empty when it does not.
fn violations(command: &Command) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    let header = command.header();
    check(header.command_type == command.record_type(), "command_type");
    check(
        header.expected_version.is_some_and(|v| v >= 0),
        "expected_version",
    );
    check(
        !command_json(command).to_string().contains("\"UNKNOWN\""),
        "an enum is UNKNOWN",
    );
    let meal = |items: &[MealItem], check: &mut dyn FnMut(bool, &str)| {
        check((1..=20).contains(&items.len()), "items: 1 to 20");
        for item in items {
            check(item.grams > 0.0 && item.grams <= 2000.0, "grams");
            check((0.0..=5000.0).contains(&item.energy_kcal), "energy_kcal");
            for macro_g in [item.protein_g, item.carbohydrate_g, item.fat_g] {
                check(macro_g >= 0.0 && macro_g <= item.grams, "macros");
            }
            for optional in [item.fibre_g, item.sugar_g, item.sodium_mg] {
                check(optional.is_none_or(|v| v >= 0.0), "optional nutrients");
            }
            check(
                !item.food_id.is_empty() && !item.food_name.is_empty(),
                "food",
            );
        }
    };
    match command {
        Command::RegisterUser(c) => {
            check(header.expected_version == Some(0), "register: expected 0");
            check(c.payload.email.contains('@'), "email");
            check(!c.payload.display_name.is_empty(), "display_name");
        }
        Command::LogMeal(c) => {
            meal(&c.payload.items, &mut check);
            check(
                c.payload.eaten_at <= header.issued_at,
                "eaten in the future",
            );
        }
        Command::UpdateMeal(c) => meal(&c.payload.items, &mut check),
        Command::LogWater(c) => {
            check((1..=2000).contains(&c.payload.millilitres), "millilitres");
        }
        Command::SetNutritionGoal(c) => {
            check(
                c.payload.energy_kcal.is_some_and(|v| v > 0.0),
                "energy goal",
            );
            check(c.payload.water_ml.is_some_and(|v| v > 0), "water goal");
        }
        Command::RecordFeedback(c) => check((1..=5).contains(&c.payload.rating), "rating"),
        Command::AwardXp(c) => check(c.payload.xp > 0, "xp"),
        Command::ClaimQuestReward(c) => {
            check(c.payload.xp >= 0, "reward xp");
            check(c.payload.items.iter().all(|i| i.quantity >= 1), "quantity");
        }
        Command::StartQuest(c) => check(c.payload.target > 0.0, "target"),
        Command::ProgressQuest(c) => check(c.payload.progress >= 0.0, "progress"),
        Command::RecordAiQuery(c) => {
            check(!c.payload.prompt.is_empty(), "prompt");
            check(
                usize::try_from(c.payload.prompt_chars).ok()
                    == Some(c.payload.prompt.chars().count()),
                "prompt_chars",
            );
        }
        Command::RecordAiResponse(c) => {
            check(!c.payload.query_id.is_nil(), "response without query");
            check(c.payload.latency_ms > 0, "latency");
        }
        _ => {}
    }
    problems
}

#[test]
fn same_seed_gives_the_same_commands() {
    let a = drive(&config(42, 6, 0.05), 300);
    let b = drive(&config(42, 6, 0.05), 300);
    assert_eq!(a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(x, y)| x.0 == y.0));
}

#[test]
fn different_seeds_give_different_commands() {
    let a = drive(&config(1, 3, 0.02), 50);
    let b = drive(&config(2, 3, 0.02), 50);
    let ids = |run: &[(Planned, CommandOutcome)]| {
        run.iter()
            .map(|(p, _)| p.command.header().command_id)
            .collect::<BTreeSet<_>>()
    };
    assert!(ids(&a).is_disjoint(&ids(&b)));
    assert_ne!(
        a.iter()
            .map(|(p, _)| p.command.record_type())
            .collect::<Vec<_>>(),
        b.iter()
            .map(|(p, _)| p.command.record_type())
            .collect::<Vec<_>>()
    );
}

#[test]
fn valid_commands_are_within_limits_and_carry_exact_versions() {
    let run = drive(&config(7, 8, 0.03), 600);
    for (planned, outcome) in &run {
        let problems = violations(&planned.command);
        match planned.deliberate {
            None => {
                assert!(problems.is_empty(), "{problems:?} in {planned:?}");
                assert!(
                    outcome.is_accepted(),
                    "valid command rejected: {outcome:?} {planned:?}"
                );
            }
            Some(Deliberate::NegativeEnergy | Deliberate::EmptyItems) => {
                assert!(
                    !problems.is_empty(),
                    "deliberately invalid but valid: {planned:?}"
                );
            }
            Some(Deliberate::StaleVersion) => assert_eq!(
                outcome.rejection_reason(),
                Some(RejectionReason::ConcurrencyConflict)
            ),
            Some(_) => {}
        }
    }
}

#[test]
fn every_game_action_is_played() {
    let run = drive(&config(3, 4, 0.02), 1500);
    let types: BTreeSet<&str> = run.iter().map(|(p, _)| p.command.record_type()).collect();
    for expected in [
        "user.register",
        "user.profile.update",
        "user.xp.award",
        "nutrition.goal.set",
        "nutrition.meal.log",
        "nutrition.meal.update",
        "nutrition.meal.delete",
        "nutrition.water.log",
        "quest.start",
        "quest.progress",
        "quest.complete",
        "quest.fail",
        "quest.reward.claim",
        "social.friend.request.send",
        "social.friend.request.accept",
        "social.friend.request.decline",
        "social.post.create",
        "social.post.like",
        "social.post.comment",
        "ai.query.record",
        "ai.response.record",
        "ai.feedback.record",
    ] {
        assert!(types.contains(expected), "{expected} never sent: {types:?}");
    }
    let kinds: BTreeSet<Deliberate> = run.iter().filter_map(|(p, _)| p.deliberate).collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
}

#[test]
fn invalid_fraction_is_respected() {
    let run = drive(&config(11, 10, 0.1), 1000);
    let deliberate = run.iter().filter(|(p, _)| p.deliberate.is_some()).count();
    let fraction = deliberate as f64 / run.len() as f64;
    assert!((0.085..0.115).contains(&fraction), "fraction {fraction}");

    let clean = drive(&config(11, 10, 0.0), 200);
    assert!(clean.iter().all(|(p, _)| p.deliberate.is_none()));
}

#[test]
fn simulated_time_moves_forward_from_the_start_day() {
    let config = config(5, 2, 0.0);
    let run = drive(&config, 400);
    let start = i64::from(config.start_day) * 86_400_000_000;
    let mut last: HashMap<String, i64> = HashMap::new();
    for (planned, _) in &run {
        let header = planned.command.header();
        let user = header.user_id.clone().unwrap_or_default();
        // Local times start at 06:00; UTC offsets are at most 10 hours.
        assert!(header.issued_at >= start - 10 * 3_600_000_000);
        if planned.command.record_type().starts_with("user.")
            || planned.command.record_type().starts_with("nutrition.")
        {
            let previous = last.insert(user, header.issued_at).unwrap_or(i64::MIN);
            assert!(header.issued_at > previous, "time went backwards");
        }
    }
    let days = run
        .iter()
        .map(|(p, _)| p.command.header().issued_at / 86_400_000_000)
        .collect::<BTreeSet<_>>();
    assert!(days.len() > 5, "400 rounds should span days: {days:?}");
}

#[test]
fn a_refused_registration_stops_the_player() {
    let config = config(9, 1, 0.0);
    let mut user = UserSim::new(&config, 0);
    let planned = user.next_command().expect("register");
    assert_eq!(planned.command.record_type(), "user.register");
    user.observe(&CommandOutcome::Rejected {
        reason: RejectionReason::ConcurrencyConflict,
        message: "exists".to_owned(),
        field: None,
        expected_version: Some(0),
        current_version: Some(12),
    });
    assert!(user.is_stopped());
    assert!(user.next_command().is_none());
}

/// The body of a command without its id and expected version: what a resend must keep.
fn without_id_and_version(command: &Command) -> serde_json::Value {
    let mut command = command.clone();
    let header = command.header_mut();
    header.command_id = uuid::Uuid::nil();
    header.expected_version = None;
    command_json(&command)
}

#[test]
fn a_concurrency_conflict_is_resent_with_the_current_version_at_most_three_times() {
    let config = config(13, 1, 0.0);
    let mut model = Model::default();
    let mut user = UserSim::new(&config, 0);
    for _ in 0..2 {
        let planned = user.next_command().expect("register, then goal");
        let outcome = model.answer(&planned);
        assert!(outcome.is_accepted(), "{outcome:?}");
        user.observe(&outcome);
    }
    let first = user.next_command().expect("a game command");
    let header = first.command.header();
    let key = (header.aggregate_type, header.aggregate_id.clone());
    let mut previous = first.clone();
    for attempt in 1..=MAX_RESENDS {
        // Another writer (the quests processor) advanced the aggregate meanwhile.
        *model.versions.entry(key.clone()).or_default() += 1;
        let outcome = model.answer(&previous);
        assert_eq!(
            outcome.rejection_reason(),
            Some(RejectionReason::ConcurrencyConflict)
        );
        user.observe(&outcome);
        let resend = user.next_command().expect("the resend");
        assert_eq!(resend.resend, attempt);
        assert_eq!(resend.deliberate, None);
        assert_ne!(
            resend.command.header().command_id,
            previous.command.header().command_id
        );
        assert_eq!(
            resend.command.header().expected_version,
            model.versions.get(&key).copied()
        );
        assert_eq!(
            without_id_and_version(&resend.command),
            without_id_and_version(&first.command)
        );
        previous = resend;
    }
    // A fourth conflict: the player gives the command up and plays on.
    *model.versions.entry(key.clone()).or_default() += 1;
    let outcome = model.answer(&previous);
    user.observe(&outcome);
    let next = user.next_command().expect("the next command");
    assert_eq!(next.resend, 0);
    assert_ne!(
        without_id_and_version(&next.command),
        without_id_and_version(&first.command)
    );
    assert!(model.answer(&next).is_accepted());
}

#[test]
fn a_resend_after_one_conflict_is_accepted_and_applied() {
    let config = config(17, 1, 0.0);
    let mut model = Model::default();
    let mut user = UserSim::new(&config, 0);
    let mut resent = 0;
    for round in 0..300 {
        let planned = user.next_command().expect("a command");
        let header = planned.command.header();
        let key = (header.aggregate_type, header.aggregate_id.clone());
        if round % 7 == 6 && planned.resend == 0 {
            *model.versions.entry(key).or_default() += 1;
        }
        let outcome = model.answer(&planned);
        if planned.resend > 0 {
            resent += 1;
            assert!(outcome.is_accepted(), "resend refused: {outcome:?}");
        }
        user.observe(&outcome);
    }
    assert!(resent >= 300 / 8, "only {resent} resends");
}

#[test]
fn a_player_rates_each_insight_shown_once_and_only_those() {
    let config = config(5, 1, 0.0);
    let mut model = Model::default();
    let mut user = UserSim::new(&config, 0);
    let shown = [Uuid::new_v4(), Uuid::new_v4()];
    let mut rated = Vec::new();
    for round in 0..600 {
        if round == 50 {
            for insight in shown {
                user.insight_shown(insight);
            }
            // Shown twice (a feed read again): still one rating.
            user.insight_shown(shown[0]);
        }
        let planned = user.next_command().expect("a command");
        if let Command::RecordFeedback(c) = &planned.command {
            if c.payload.target_kind == dietstream_schemas::types::FeedbackTargetKind::Insight {
                assert!((1..=5).contains(&c.payload.rating), "{c:?}");
                rated.push(c.payload.target_id);
            }
        }
        let outcome = model.answer(&planned);
        user.observe(&outcome);
    }
    assert_eq!(rated, shown, "each insight rated once, oldest first");
}

#[test]
fn days_parse_as_days_since_the_epoch() {
    assert_eq!(parse_day("1970-01-01"), Some(0));
    assert_eq!(parse_day("2024-01-01"), Some(19_723));
    assert_eq!(parse_day("2000-03-01"), Some(11_017));
    assert_eq!(parse_day("2024-13-01"), None);
    assert_eq!(parse_day("yesterday"), None);
}
