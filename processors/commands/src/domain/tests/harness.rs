//! Given/when/then harness and command builders for the aggregate tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use dietstream_schemas::types::{self, AggregateType, CommandHeader, RejectionReason};
use dietstream_schemas::{Command, Event};
use uuid::Uuid;

use crate::domain::{apply, decide, limits, Aggregate, Rejection};

/// 2024-03-01T12:00:00Z.
pub(super) const T0: i64 = 1_709_294_400_000_000;
pub(super) const DAY: i64 = limits::DAY_MICROS;
/// When the commands are issued: a month after T0, so meals on the first days are in the past.
pub(super) const ISSUED: i64 = T0 + 30 * DAY;
/// The time the processor stamps on events.
pub(super) const NOW: i64 = ISSUED + 5_000;
pub(super) const USER: &str = "user-1";
/// Day number of T0 (UTC).
pub(super) const DAY0: i32 = (T0 / DAY) as i32;

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh, deterministic-per-process command id.
pub(super) fn next_id() -> Uuid {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Uuid::new_v5(&Uuid::NAMESPACE_OID, &n.to_be_bytes())
}

/// A readable fixed id.
pub(super) fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

pub(super) fn header(t: AggregateType, aggregate_id: &str, command_type: &str) -> CommandHeader {
    CommandHeader {
        command_id: next_id(),
        command_type: command_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        aggregate_type: t,
        expected_version: None,
        issued_at: ISSUED,
        user_id: None,
        session_id: None,
        correlation_id: None,
        causation_id: None,
        metadata: HashMap::new(),
    }
}

fn user_header(command_type: &str) -> CommandHeader {
    header(AggregateType::User, USER, command_type)
}

// ---- USER commands ----

pub(super) fn register_in(time_zone: &str) -> Command {
    Command::RegisterUser(types::RegisterUser {
        header: user_header("user.register"),
        payload: types::RegisterUserPayload {
            display_name: "Ada".into(),
            email: "ada@example.org".into(),
            locale: "en-GB".into(),
            time_zone: time_zone.into(),
            birth_year: Some(1990),
            height_cm: Some(170.0),
            weight_kg: Some(65.0),
            activity_level: types::ActivityLevel::ModeratelyActive,
            referral_code: None,
        },
    })
}

pub(super) fn register() -> Command {
    register_in("UTC")
}

pub(super) fn update_profile(f: impl FnOnce(&mut types::UpdateProfilePayload)) -> Command {
    let mut payload = types::UpdateProfilePayload {
        display_name: None,
        email: None,
        locale: None,
        time_zone: None,
        birth_year: None,
        height_cm: None,
        weight_kg: None,
        activity_level: None,
        changed_fields: Vec::new(),
    };
    f(&mut payload);
    Command::UpdateProfile(types::UpdateProfile {
        header: user_header("user.profile.update"),
        payload,
    })
}

pub(super) fn award_xp(xp: i32) -> Command {
    Command::AwardXp(types::AwardXp {
        header: user_header("user.xp.award"),
        payload: types::AwardXpPayload {
            xp,
            source: types::XpSource::Adjustment,
            source_id: None,
        },
    })
}

pub(super) fn goal(f: impl FnOnce(&mut types::SetNutritionGoalPayload)) -> Command {
    let mut payload = types::SetNutritionGoalPayload {
        energy_kcal: None,
        protein_g: None,
        carbohydrate_g: None,
        fat_g: None,
        fibre_g: None,
        water_ml: None,
        effective_from: 0,
    };
    f(&mut payload);
    Command::SetNutritionGoal(types::SetNutritionGoal {
        header: user_header("nutrition.goal.set"),
        payload,
    })
}

pub(super) fn item(energy_kcal: f64, protein_g: f64) -> types::MealItem {
    types::MealItem {
        food_id: "food-1".into(),
        food_name: "Porridge".into(),
        grams: 250.0,
        energy_kcal,
        protein_g,
        carbohydrate_g: 40.0,
        fat_g: 5.0,
        fibre_g: Some(4.0),
        sugar_g: None,
        sodium_mg: None,
    }
}

/// A meal with one item, eaten `day` days after T0 (same time of day).
pub(super) fn log_meal(meal: u128, day: i64, energy_kcal: f64) -> Command {
    log_meal_items(meal, T0 + day * DAY, vec![item(energy_kcal, 10.0)])
}

pub(super) fn log_meal_items(meal: u128, eaten_at: i64, items: Vec<types::MealItem>) -> Command {
    Command::LogMeal(types::LogMeal {
        header: user_header("nutrition.meal.log"),
        payload: types::LogMealPayload {
            meal_id: id(meal),
            meal_type: types::MealType::Lunch,
            eaten_at,
            items,
            note: None,
            source: types::MealSource::Manual,
        },
    })
}

pub(super) fn update_meal(meal: u128, day: i64, energy_kcal: f64) -> Command {
    Command::UpdateMeal(types::UpdateMeal {
        header: user_header("nutrition.meal.update"),
        payload: types::UpdateMealPayload {
            meal_id: id(meal),
            meal_type: types::MealType::Dinner,
            eaten_at: T0 + day * DAY,
            items: vec![item(energy_kcal, 10.0)],
            note: Some("more".into()),
        },
    })
}

pub(super) fn delete_meal(meal: u128) -> Command {
    Command::DeleteMeal(types::DeleteMeal {
        header: user_header("nutrition.meal.delete"),
        payload: types::DeleteMealPayload {
            meal_id: id(meal),
            reason: types::MealDeletionReason::UserRequest,
        },
    })
}

pub(super) fn log_water(millilitres: i32, day: i64) -> Command {
    Command::LogWater(types::LogWater {
        header: user_header("nutrition.water.log"),
        payload: types::LogWaterPayload {
            intake_id: next_id(),
            millilitres,
            drunk_at: T0 + day * DAY,
        },
    })
}

/// What the nutrition processor sends when day `DAY0 + day` reached `target` of `goal`.
pub(super) fn record_goal_met(
    day: i32,
    goal: types::NutritionGoalKind,
    target: f64,
    achieved: f64,
) -> Command {
    Command::RecordGoalMet(types::RecordGoalMet {
        header: user_header("nutrition.goal.met.record"),
        payload: types::RecordGoalMetPayload {
            date: DAY0 + day,
            goal,
            target,
            achieved,
        },
    })
}

pub(super) fn start_quest(quest: u128) -> Command {
    Command::StartQuest(types::StartQuest {
        header: user_header("quest.start"),
        payload: types::StartQuestPayload {
            quest_id: id(quest),
            quest_definition_id: "hydration-7d".into(),
            quest_kind: types::QuestKind::Hydration,
            target: 7.0,
            unit: types::QuestUnit::Days,
            deadline: None,
        },
    })
}

pub(super) fn progress_quest(quest: u128, progress: f64) -> Command {
    Command::ProgressQuest(types::ProgressQuest {
        header: user_header("quest.progress"),
        payload: types::ProgressQuestPayload {
            quest_id: id(quest),
            progress,
            source_event_id: None,
        },
    })
}

pub(super) fn complete_quest(quest: u128, xp_reward: i32) -> Command {
    Command::CompleteQuest(types::CompleteQuest {
        header: user_header("quest.complete"),
        payload: types::CompleteQuestPayload {
            quest_id: id(quest),
            completed_at: T0,
            xp_reward,
        },
    })
}

pub(super) fn fail_quest(quest: u128) -> Command {
    Command::FailQuest(types::FailQuest {
        header: user_header("quest.fail"),
        payload: types::FailQuestPayload {
            quest_id: id(quest),
            reason: types::QuestFailureReason::Expired,
            failed_at: T0,
        },
    })
}

pub(super) fn claim_reward(quest: u128, xp: i32) -> Command {
    Command::ClaimQuestReward(types::ClaimQuestReward {
        header: user_header("quest.reward.claim"),
        payload: types::ClaimQuestRewardPayload {
            quest_id: id(quest),
            reward_kind: types::RewardKind::Xp,
            xp,
            items: Vec::new(),
        },
    })
}

// ---- SOCIAL commands ----

fn social_header(aggregate: u128, command_type: &str) -> CommandHeader {
    header(
        AggregateType::Social,
        &id(aggregate).to_string(),
        command_type,
    )
}

pub(super) fn send_request(request: u128, from: &str, to: &str) -> Command {
    Command::SendFriendRequest(types::SendFriendRequest {
        header: social_header(request, "social.friend.request.send"),
        payload: types::SendFriendRequestPayload {
            request_id: id(request),
            from_user_id: from.into(),
            to_user_id: to.into(),
        },
    })
}

pub(super) fn accept(request: u128, actor: Option<&str>) -> Command {
    let mut header = social_header(request, "social.friend.request.accept");
    header.user_id = actor.map(str::to_owned);
    Command::AcceptFriendRequest(types::AcceptFriendRequest {
        header,
        payload: types::AcceptFriendRequestPayload {
            request_id: id(request),
        },
    })
}

pub(super) fn decline(request: u128, actor: Option<&str>) -> Command {
    let mut header = social_header(request, "social.friend.request.decline");
    header.user_id = actor.map(str::to_owned);
    Command::DeclineFriendRequest(types::DeclineFriendRequest {
        header,
        payload: types::DeclineFriendRequestPayload {
            request_id: id(request),
            reason: None,
        },
    })
}

pub(super) fn create_post(post: u128, author: &str) -> Command {
    Command::CreatePost(types::CreatePost {
        header: social_header(post, "social.post.create"),
        payload: types::CreatePostPayload {
            post_id: id(post),
            author_user_id: author.into(),
            kind: types::PostKind::Text,
            text: "Salad day".into(),
            visibility: types::PostVisibility::Friends,
            attachment_ids: Vec::new(),
            shared_ref_id: None,
        },
    })
}

pub(super) fn like(post: u128, liker: &str, reaction: types::Reaction) -> Command {
    Command::LikePost(types::LikePost {
        header: social_header(post, "social.post.like"),
        payload: types::LikePostPayload {
            post_id: id(post),
            liker_user_id: liker.into(),
            reaction,
        },
    })
}

pub(super) fn comment(post: u128, comment: u128, parent: Option<u128>) -> Command {
    Command::CommentOnPost(types::CommentOnPost {
        header: social_header(post, "social.post.comment"),
        payload: types::CommentOnPostPayload {
            post_id: id(post),
            comment_id: id(comment),
            commenter_user_id: "bob".into(),
            text: "Looks good".into(),
            parent_comment_id: parent.map(id),
        },
    })
}

// ---- AI commands ----

fn ai_header(command_type: &str) -> CommandHeader {
    header(AggregateType::Ai, USER, command_type)
}

pub(super) fn ai_query(query: u128) -> Command {
    Command::RecordAiQuery(types::RecordAiQuery {
        header: ai_header("ai.query.record"),
        payload: types::RecordAiQueryPayload {
            query_id: id(query),
            conversation_id: id(9_999),
            channel: types::AiChannel::InAppChat,
            prompt: "What should I eat?".into(),
            prompt_chars: 18,
            context_window_days: 7,
        },
    })
}

pub(super) fn ai_response(query: u128, response: u128) -> Command {
    Command::RecordAiResponse(types::RecordAiResponse {
        header: ai_header("ai.response.record"),
        payload: types::RecordAiResponsePayload {
            query_id: id(query),
            response_id: id(response),
            conversation_id: id(9_999),
            text: "Oats.".into(),
            model: "coach-large".into(),
            model_version: "1".into(),
            latency_ms: 800,
            prompt_tokens: 100,
            completion_tokens: 20,
            finish_reason: types::FinishReason::Stop,
        },
    })
}

pub(super) fn insight(insight: u128) -> Command {
    Command::CreateInsight(types::CreateInsight {
        header: ai_header("ai.insight.create"),
        payload: types::CreateInsightPayload {
            insight_id: id(insight),
            insight_kind: types::InsightKind::NutrientGap,
            title: "Low fibre".into(),
            body: "Eat more beans.".into(),
            confidence: 0.8,
            period_start: DAY0,
            period_end: DAY0 + 6,
            evidence_event_ids: Vec::new(),
        },
    })
}

pub(super) fn recommendation(recommendation: u128, insight: Option<u128>) -> Command {
    Command::GiveRecommendation(types::GiveRecommendation {
        header: ai_header("ai.recommendation.give"),
        payload: types::GiveRecommendationPayload {
            recommendation_id: id(recommendation),
            insight_id: insight.map(id),
            recommendation_kind: types::RecommendationKind::Recipe,
            text: "Try lentil soup.".into(),
            confidence: 0.7,
            expires_at: None,
        },
    })
}

pub(super) fn feedback(
    feedback: u128,
    target: u128,
    kind: types::FeedbackTargetKind,
    rating: i32,
) -> Command {
    Command::RecordFeedback(types::RecordFeedback {
        header: ai_header("ai.feedback.record"),
        payload: types::RecordFeedbackPayload {
            feedback_id: id(feedback),
            target_id: id(target),
            target_kind: kind,
            rating,
            helpful: Some(true),
            comment: None,
        },
    })
}

/// `aggregate.snapshot.take` for the aggregate `aggregate_id` of type `t`.
pub(super) fn take_snapshot(t: AggregateType, aggregate_id: &str) -> Command {
    Command::TakeSnapshot(types::TakeSnapshot {
        header: header(t, aggregate_id, "aggregate.snapshot.take"),
        payload: types::TakeSnapshotPayload {
            reason: "test".into(),
        },
    })
}

/// One command of every type, for tests that must cover them all.
pub(super) fn one_of_each() -> Vec<Command> {
    vec![
        register(),
        update_profile(|p| {
            p.locale = Some("de-DE".into());
            p.changed_fields = vec!["locale".into()];
        }),
        award_xp(5),
        goal(|g| g.energy_kcal = Some(2000.0)),
        log_meal(1, 0, 500.0),
        update_meal(1, 0, 600.0),
        delete_meal(1),
        log_water(250, 0),
        record_goal_met(0, types::NutritionGoalKind::Water, 250.0, 250.0),
        start_quest(1),
        progress_quest(1, 1.0),
        complete_quest(1, 10),
        fail_quest(1),
        claim_reward(1, 10),
        send_request(1, "ada", "bob"),
        accept(1, None),
        decline(1, None),
        create_post(2, "ada"),
        like(2, "bob", types::Reaction::Like),
        comment(2, 3, None),
        ai_query(1),
        ai_response(1, 2),
        insight(3),
        recommendation(4, None),
        feedback(5, 2, types::FeedbackTargetKind::Response, 5),
        take_snapshot(AggregateType::User, USER),
    ]
}

// ---- given / when / then ----

/// An aggregate built from earlier history.
pub(super) struct Given {
    pub(super) aggregate: Aggregate,
}

/// Starts from nothing.
pub(super) fn nothing() -> Given {
    Given {
        aggregate: Aggregate::default(),
    }
}

/// History given as commands, each of which must be accepted.
pub(super) fn given(commands: impl IntoIterator<Item = Command>) -> Given {
    let mut g = nothing();
    for c in commands {
        g.run(c);
    }
    g
}

/// History given as events.
pub(super) fn given_events(events: &[Event]) -> Given {
    let mut aggregate = Aggregate::default();
    for e in events {
        if let Err(err) = apply(&mut aggregate, e) {
            panic!("given event {} not applicable: {err}", e.record_type());
        }
    }
    Given { aggregate }
}

impl Given {
    /// Decides and applies one more command of the history; returns its events.
    pub(super) fn run(&mut self, command: Command) -> Vec<Event> {
        match decide(&self.aggregate, &command, NOW) {
            Ok(events) => {
                for e in &events {
                    if let Err(err) = apply(&mut self.aggregate, e) {
                        panic!(
                            "event {} of {} not applicable: {err}",
                            e.record_type(),
                            command.record_type()
                        );
                    }
                }
                events
            }
            Err(r) => panic!("given command {} rejected: {r}", command.record_type()),
        }
    }

    pub(super) fn when(&self, command: Command) -> Then {
        Then {
            result: decide(&self.aggregate, &command, NOW),
            command,
        }
    }
}

/// The outcome of one command.
pub(super) struct Then {
    pub(super) command: Command,
    pub(super) result: Result<Vec<Event>, Rejection>,
}

impl Then {
    /// Asserts acceptance with events of exactly these dotted types; returns the events.
    pub(super) fn then_types(&self, expected: &[&str]) -> &[Event] {
        match &self.result {
            Ok(events) => {
                let types: Vec<&str> = events.iter().map(Event::record_type).collect();
                assert_eq!(types, expected, "events of {}", self.command.record_type());
                events
            }
            Err(r) => panic!(
                "{} rejected ({r}), expected events {expected:?}",
                self.command.record_type()
            ),
        }
    }

    /// Asserts a rejection for `reason`; returns it.
    pub(super) fn then_rejected(&self, reason: RejectionReason) -> &Rejection {
        match &self.result {
            Err(r) => {
                assert_eq!(
                    r.reason,
                    reason,
                    "rejection of {}: {r}",
                    self.command.record_type()
                );
                r
            }
            Ok(events) => panic!(
                "{} accepted with {:?}, expected {reason:?}",
                self.command.record_type(),
                events.iter().map(Event::record_type).collect::<Vec<_>>()
            ),
        }
    }

    /// Asserts a validation error on `field`.
    pub(super) fn then_invalid(&self, field: &str) -> &Rejection {
        let r = self.then_rejected(RejectionReason::ValidationError);
        assert_eq!(r.field.as_deref(), Some(field), "{r}");
        r
    }

    /// Asserts a rule violation.
    pub(super) fn then_violates(&self) -> &Rejection {
        self.then_rejected(RejectionReason::RuleViolation)
    }
}

/// Changes a command in place (header or payload) for a negative test.
pub(super) fn with(mut command: Command, f: impl FnOnce(&mut Command)) -> Command {
    f(&mut command);
    command
}
