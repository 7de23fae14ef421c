//! The pure part of the simulator: one [`UserSim`] per simulated player produces that player's
//! next command from the player's own state and learns from its result.
//!
//! No I/O and no wall clock: randomness comes from a generator seeded with (seed, player
//! index), time is simulated game time that advances per player. A player has at most one
//! command outstanding ([`UserSim::next_command`] refuses a second one), so the expected
//! versions it sends are exact and its command sequence depends on the seed and the results
//! only, never on timing. The social and AI aggregates a player touches are driven by that player's loop too
//! (answers to the player's friend requests, likes and comments on the player's posts are sent
//! on behalf of other players from this loop), so no aggregate is ever written by two loops.

use std::collections::{BTreeMap, HashMap};

use dietstream_schemas::codec::Record;
use dietstream_schemas::types::{
    AcceptFriendRequest, AcceptFriendRequestPayload, ActivityLevel, AggregateType, AiChannel,
    AwardXp, AwardXpPayload, ClaimQuestReward, ClaimQuestRewardPayload, CommandHeader,
    CommentOnPost, CommentOnPostPayload, CompleteQuest, CompleteQuestPayload, CreatePost,
    CreatePostPayload, DeclineFriendRequest, DeclineFriendRequestPayload, DeleteMeal,
    DeleteMealPayload, FailQuest, FailQuestPayload, FeedbackTargetKind, FinishReason, LikePost,
    LikePostPayload, LogMeal, LogMealPayload, LogWater, LogWaterPayload, MealDeletionReason,
    MealItem, MealSource, MealType, PostKind, PostVisibility, ProgressQuest, ProgressQuestPayload,
    QuestFailureReason, Reaction, RecordAiQuery, RecordAiQueryPayload, RecordAiResponse,
    RecordAiResponsePayload, RecordFeedback, RecordFeedbackPayload, RegisterUser,
    RegisterUserPayload, RejectionReason, RewardItem, RewardKind, SendFriendRequest,
    SendFriendRequestPayload, SetNutritionGoal, SetNutritionGoalPayload, StartQuest,
    StartQuestPayload, UpdateMeal, UpdateMealPayload, UpdateProfile, UpdateProfilePayload,
    XpSource,
};
use dietstream_schemas::Command;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::catalog::{self, Food, QuestDefinition};
use crate::bus::CommandOutcome;

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// 2024-01-01 as days since 1970-01-01: the default start day is this plus `seed % 366`.
pub const DEFAULT_START_EPOCH_DAY: i32 = 19_723;

/// The settings every player of one run shares.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// The run's seed: same seed, same command streams.
    pub seed: u64,
    /// Number of players (friends and likers are picked among them).
    pub users: u32,
    /// First simulated day, days since 1970-01-01 (in each player's time zone).
    pub start_day: i32,
    /// Fraction of commands that are deliberately invalid (0.0 to 1.0).
    pub invalid_rate: f64,
    /// Player ids are `<user_prefix>-<index>`.
    pub user_prefix: String,
}

impl GeneratorConfig {
    /// Defaults for `seed`: start day derived from the seed, 2 % invalid commands, player ids
    /// `sim-<seed>-<index>`.
    pub fn new(seed: u64, users: u32) -> GeneratorConfig {
        GeneratorConfig {
            seed,
            users,
            start_day: DEFAULT_START_EPOCH_DAY + i32::try_from(seed % 366).unwrap_or(0),
            invalid_rate: 0.02,
            user_prefix: format!("sim-{seed}"),
        }
    }

    /// The id of player `index`.
    pub fn user_id(&self, index: u32) -> String {
        format!("{}-{index}", self.user_prefix)
    }
}

/// How a deliberately invalid command is broken, and so which rejection it should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliberate {
    /// A valid command with an expected version that is not the aggregate's: expects
    /// `CONCURRENCY_CONFLICT`.
    StaleVersion,
    /// A meal item with negative energy: expects `VALIDATION_ERROR`.
    NegativeEnergy,
    /// A meal without items: expects `VALIDATION_ERROR`.
    EmptyItems,
    /// Update or delete of a meal that was never logged: expects a rejection
    /// (`RULE_VIOLATION` or `VALIDATION_ERROR`).
    UnknownMeal,
    /// Completion of a quest that was never started: expects a rejection.
    NeverStartedQuest,
}

impl Deliberate {
    /// The rejection reason the contract calls for, where exactly one fits.
    pub fn expected_reason(self) -> Option<RejectionReason> {
        match self {
            Deliberate::StaleVersion => Some(RejectionReason::ConcurrencyConflict),
            Deliberate::NegativeEnergy | Deliberate::EmptyItems => {
                Some(RejectionReason::ValidationError)
            }
            Deliberate::UnknownMeal | Deliberate::NeverStartedQuest => None,
        }
    }
}

/// A command chosen by a player, with why it is invalid when it is so on purpose.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The command to send.
    pub command: Command,
    /// `Some` when the command is invalid on purpose.
    pub deliberate: Option<Deliberate>,
    /// How many times this command was refused with `CONCURRENCY_CONFLICT` before and is now
    /// sent again (0 for a first send), with a fresh command id and the version the rejection
    /// reported, as a game client would.
    pub resend: u32,
}

/// How often a player sends a command again after `CONCURRENCY_CONFLICT` rejections before
/// giving it up (another writer, e.g. the quests processor, advanced the aggregate meanwhile).
pub const MAX_RESENDS: u32 = 3;

/// The kinds of aggregate a player writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Agg {
    User,
    Social,
    Ai,
}

impl Agg {
    fn avro(self) -> AggregateType {
        match self {
            Agg::User => AggregateType::User,
            Agg::Social => AggregateType::Social,
            Agg::Ai => AggregateType::Ai,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Meal {
    id: Uuid,
    meal_type: MealType,
    eaten_at: i64,
    items: Vec<MealItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuestState {
    Active,
    Completed,
}

#[derive(Debug, Clone, PartialEq)]
struct Quest {
    id: Uuid,
    definition: QuestDefinition,
    progress: f64,
    state: QuestState,
    deadline: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Social {
    FriendRequest { to: String },
    Post { comments: Vec<Uuid> },
}

/// What an accepted command changes in the player's state.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Registered,
    GoalSet,
    Nothing,
    MealLogged(Meal),
    MealUpdated(Meal),
    MealDeleted(Uuid),
    Water(i32),
    QuestStarted(Quest),
    QuestProgressed(Uuid, f64),
    QuestCompleted(Uuid),
    QuestEnded(Uuid),
    Weight(f64),
    SocialCreated(Uuid, Social),
    RequestAnswered(Uuid),
    Commented(Uuid, Uuid),
    QueryOpened(Uuid, Uuid),
    Responded(Uuid),
}

#[derive(Debug, Clone, PartialEq)]
struct InFlight {
    key: (Agg, String),
    effect: Effect,
    deliberate: bool,
    /// The command as sent, kept to send it again after a concurrency conflict.
    command: Command,
    /// Times it was already sent again.
    resends: u32,
}

/// Actions a player can take; chosen by weight from the player's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Meal,
    Snack,
    Water,
    UpdateMeal,
    DeleteMeal,
    StartQuest,
    ProgressQuest,
    CompleteQuest,
    ClaimReward,
    FailQuest,
    SendRequest,
    AnswerRequest,
    CreatePost,
    LikePost,
    Comment,
    AskCoach,
    CoachAnswers,
    Feedback,
    RateInsight,
    UpdateProfile,
    DailyLogin,
}

/// One simulated player: state, random source and simulated clock.
#[derive(Debug, Clone)]
pub struct UserSim {
    config: GeneratorConfig,
    index: u32,
    user_id: String,
    rng: StdRng,
    /// Local wall time of the player, microseconds since the epoch as if it were UTC.
    clock: i64,
    utc_offset: i64,
    locale: usize,
    session: String,
    versions: BTreeMap<(Agg, String), i64>,
    registered: bool,
    goal_set: bool,
    stopped: bool,
    weight_kg: f64,
    day: i64,
    meals: Vec<Meal>,
    water_today: i32,
    quests: Vec<Quest>,
    social: Vec<(Uuid, Social)>,
    open_query: Option<(Uuid, Uuid)>,
    responses: Vec<Uuid>,
    /// Insights the player was shown and has not rated yet, oldest first.
    insights: Vec<Uuid>,
    in_flight: Option<InFlight>,
    /// A command refused for a stale version, to send again before anything else.
    resend: Option<InFlight>,
    /// Day of the last daily-login XP award.
    login_day: i64,
}

impl UserSim {
    /// Player `index` of a run.
    pub fn new(config: &GeneratorConfig, index: u32) -> UserSim {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&config.seed.to_le_bytes());
        seed[8..12].copy_from_slice(&index.to_le_bytes());
        // Constant tail bytes keep the seed from being mostly zero for small seeds.
        seed[12..].copy_from_slice(b"dietstream-simulator");
        let mut rng = StdRng::from_seed(seed);
        let locale = rng.random_range(0..catalog::LOCALES.len());
        let start = i64::from(config.start_day) * MICROS_PER_DAY
            + 6 * MICROS_PER_HOUR
            + rng.random_range(0..180) * MICROS_PER_MINUTE;
        let weight_kg = round1(rng.random_range(50.0..110.0));
        UserSim {
            config: config.clone(),
            index,
            user_id: config.user_id(index),
            utc_offset: catalog::LOCALES[locale].2 * MICROS_PER_HOUR,
            locale,
            session: String::new(),
            clock: start,
            day: start.div_euclid(MICROS_PER_DAY),
            rng,
            versions: BTreeMap::new(),
            registered: false,
            goal_set: false,
            stopped: false,
            weight_kg,
            meals: Vec::new(),
            water_today: 0,
            quests: Vec::new(),
            social: Vec::new(),
            open_query: None,
            responses: Vec::new(),
            insights: Vec::new(),
            in_flight: None,
            resend: None,
            login_day: i64::MIN,
        }
    }

    /// The player's id (the USER and AI aggregate id).
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// True once the player gave up (registration refused, or a command without result).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The player's current simulated day, days since 1970-01-01 in the player's time zone.
    pub fn day(&self) -> i32 {
        i32::try_from(self.day).unwrap_or(i32::MAX)
    }

    /// The next command, or `None` when the player stopped or still waits for the result of
    /// the previous one.
    pub fn next_command(&mut self) -> Option<Planned> {
        if self.stopped || self.in_flight.is_some() {
            return None;
        }
        if let Some(flight) = self.resend.take() {
            // The same action at the same simulated time: the clock does not move.
            let planned = Planned {
                command: flight.command.clone(),
                deliberate: None,
                resend: flight.resends,
            };
            self.in_flight = Some(flight);
            return Some(planned);
        }
        self.advance_clock();
        let planned = if !self.registered {
            self.register()
        } else if !self.goal_set {
            self.set_goal()
        } else if self
            .rng
            .random_bool(self.config.invalid_rate.clamp(0.0, 1.0))
        {
            self.deliberate()
        } else {
            let action = self.choose();
            self.act(action)
        };
        Some(planned)
    }

    /// Shows the player an insight the AI coach made for them (`ai.insight.created` on their AI
    /// aggregate); the player may rate it later. Only the five newest unrated ones are kept.
    pub fn insight_shown(&mut self, insight_id: Uuid) {
        if !self.insights.contains(&insight_id) {
            self.insights.push(insight_id);
            if self.insights.len() > 5 {
                self.insights.remove(0);
            }
        }
    }

    /// Learns the result of the command returned by the last [`UserSim::next_command`].
    pub fn observe(&mut self, outcome: &CommandOutcome) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        match outcome {
            CommandOutcome::Accepted { new_version, .. } => {
                // Adopt the version even for a deliberately invalid command the processor
                // accepted: the next expected version must match the log.
                self.versions.insert(flight.key, *new_version);
                if !flight.deliberate {
                    self.apply(flight.effect);
                }
            }
            CommandOutcome::Rejected {
                reason,
                current_version,
                ..
            } => {
                if flight.deliberate {
                    return;
                }
                if flight.effect == Effect::Registered {
                    // The id is taken (an earlier run with the same seed): this player cannot
                    // play.
                    self.stopped = true;
                } else if *reason == RejectionReason::ConcurrencyConflict {
                    if let Some(current) = current_version {
                        self.versions.insert(flight.key.clone(), *current);
                        if flight.resends < MAX_RESENDS {
                            self.resend_later(flight, *current);
                        }
                    }
                }
            }
        }
    }

    /// Prepares `flight` to be sent again with a new command id and `current` as the expected
    /// version; [`UserSim::next_command`] returns it next.
    fn resend_later(&mut self, mut flight: InFlight, current: i64) {
        let command_id = self.uuid();
        let header = flight.command.header_mut();
        header.command_id = command_id;
        header.expected_version = Some(current);
        flight.resends += 1;
        self.resend = Some(flight);
    }

    /// The command returned by the last [`UserSim::next_command`] got no result (timeout, send
    /// error): the player's state is unknown from here on, so the player stops.
    pub fn lost(&mut self) {
        self.in_flight = None;
        self.stopped = true;
    }

    // --- time --------------------------------------------------------------------------

    fn advance_clock(&mut self) {
        self.clock += self.rng.random_range(5..=90) * MICROS_PER_MINUTE;
        let hour = self.clock.rem_euclid(MICROS_PER_DAY) / MICROS_PER_HOUR;
        if !(6..22).contains(&hour) {
            let next_day = if hour >= 22 {
                self.clock.div_euclid(MICROS_PER_DAY) + 1
            } else {
                self.clock.div_euclid(MICROS_PER_DAY)
            };
            self.clock = next_day * MICROS_PER_DAY
                + 6 * MICROS_PER_HOUR
                + self.rng.random_range(0..120) * MICROS_PER_MINUTE;
        }
        let day = self.clock.div_euclid(MICROS_PER_DAY);
        if day != self.day || self.session.is_empty() {
            self.day = day;
            self.meals.clear();
            self.water_today = 0;
            self.session = self.uuid().to_string();
        }
    }

    /// The simulated now in UTC microseconds.
    fn now(&self) -> i64 {
        self.clock - self.utc_offset
    }

    fn hour(&self) -> i64 {
        self.clock.rem_euclid(MICROS_PER_DAY) / MICROS_PER_HOUR
    }

    // --- helpers -----------------------------------------------------------------------

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn version(&self, agg: Agg, id: &str) -> i64 {
        self.versions
            .get(&(agg, id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn other_user(&mut self) -> String {
        let users = self.config.users.max(2);
        let mut other = self.rng.random_range(0..users - 1);
        if other >= self.index {
            other += 1;
        }
        self.config.user_id(other)
    }

    fn header<T: Record>(&mut self, agg: Agg, aggregate_id: &str, actor: &str) -> CommandHeader {
        CommandHeader {
            command_id: self.uuid(),
            command_type: T::RECORD_TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            aggregate_type: agg.avro(),
            expected_version: Some(self.version(agg, aggregate_id)),
            issued_at: self.now(),
            user_id: Some(actor.to_owned()),
            session_id: Some(self.session.clone()),
            correlation_id: None,
            causation_id: None,
            metadata: HashMap::new(),
        }
    }

    /// Registers `command` as the one in flight and wraps it.
    fn plan(&mut self, command: Command, agg: Agg, effect: Effect) -> Planned {
        let key = (agg, command.header().aggregate_id.clone());
        self.in_flight = Some(InFlight {
            key,
            effect,
            deliberate: false,
            command: command.clone(),
            resends: 0,
        });
        Planned {
            command,
            deliberate: None,
            resend: 0,
        }
    }

    fn user_command<T: Record>(&mut self) -> CommandHeader {
        let id = self.user_id.clone();
        self.header::<T>(Agg::User, &id, &id)
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Registered => self.registered = true,
            Effect::GoalSet => self.goal_set = true,
            Effect::Nothing => {}
            Effect::MealLogged(meal) => self.meals.push(meal),
            Effect::MealUpdated(meal) => {
                if let Some(m) = self.meals.iter_mut().find(|m| m.id == meal.id) {
                    *m = meal;
                }
            }
            Effect::MealDeleted(id) => self.meals.retain(|m| m.id != id),
            Effect::Water(ml) => self.water_today += ml,
            Effect::QuestStarted(quest) => self.quests.push(quest),
            Effect::QuestProgressed(id, progress) => {
                if let Some(q) = self.quests.iter_mut().find(|q| q.id == id) {
                    q.progress = progress;
                }
            }
            Effect::QuestCompleted(id) => {
                if let Some(q) = self.quests.iter_mut().find(|q| q.id == id) {
                    q.state = QuestState::Completed;
                }
            }
            Effect::QuestEnded(id) => self.quests.retain(|q| q.id != id),
            Effect::Weight(kg) => self.weight_kg = kg,
            Effect::SocialCreated(id, social) => self.social.push((id, social)),
            Effect::RequestAnswered(id) => self.social.retain(|(s, _)| *s != id),
            Effect::Commented(post, comment) => {
                if let Some((_, Social::Post { comments })) =
                    self.social.iter_mut().find(|(s, _)| *s == post)
                {
                    comments.push(comment);
                }
            }
            Effect::QueryOpened(query, conversation) => {
                self.open_query = Some((query, conversation));
            }
            Effect::Responded(response) => {
                self.open_query = None;
                self.responses.push(response);
                if self.responses.len() > 5 {
                    self.responses.remove(0);
                }
            }
        }
    }

    // --- choosing ----------------------------------------------------------------------

    fn choose(&mut self) -> Action {
        let hour = self.hour();
        let has = |t: MealType| self.meals.iter().any(|m| m.meal_type == t);
        let meal_due = (6..10).contains(&hour) && !has(MealType::Breakfast)
            || (11..15).contains(&hour) && !has(MealType::Lunch)
            || (17..21).contains(&hour) && !has(MealType::Dinner);
        let snacks = self
            .meals
            .iter()
            .filter(|m| m.meal_type == MealType::Snack)
            .count();
        let active = self
            .quests
            .iter()
            .filter(|q| q.state == QuestState::Active)
            .count();
        let reached = self
            .quests
            .iter()
            .any(|q| q.state == QuestState::Active && q.progress >= q.definition.target);
        let progressing = self
            .quests
            .iter()
            .any(|q| q.state == QuestState::Active && q.progress < q.definition.target);
        let completed = self.quests.iter().any(|q| q.state == QuestState::Completed);
        let pending_request = self
            .social
            .iter()
            .any(|(_, s)| matches!(s, Social::FriendRequest { .. }));
        let posts = self
            .social
            .iter()
            .any(|(_, s)| matches!(s, Social::Post { .. }));
        let meals = !self.meals.is_empty();
        let w = |cond: bool, weight: f64| if cond { weight } else { 0.0 };
        let weights = [
            (Action::Meal, w(meal_due, 40.0)),
            (Action::Snack, w(snacks < 2, 6.0)),
            (Action::Water, w(self.water_today < 3500, 12.0)),
            (Action::UpdateMeal, w(meals, 3.0)),
            (Action::DeleteMeal, w(meals, 1.0)),
            (Action::StartQuest, w(active < 2, 4.0)),
            (Action::ProgressQuest, w(progressing, 8.0)),
            (Action::CompleteQuest, w(reached, 25.0)),
            (Action::ClaimReward, w(completed, 25.0)),
            (Action::FailQuest, w(active > 0, 0.5)),
            (Action::SendRequest, w(self.config.users > 1, 2.0)),
            (Action::AnswerRequest, w(pending_request, 6.0)),
            (Action::CreatePost, 2.0),
            (Action::LikePost, w(posts, 4.0)),
            (Action::Comment, w(posts, 3.0)),
            (Action::AskCoach, w(self.open_query.is_none(), 3.0)),
            (Action::CoachAnswers, w(self.open_query.is_some(), 40.0)),
            (Action::Feedback, w(!self.responses.is_empty(), 3.0)),
            (Action::RateInsight, w(!self.insights.is_empty(), 10.0)),
            (Action::UpdateProfile, 1.0),
            (Action::DailyLogin, w(self.login_day != self.day, 30.0)),
        ];
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        let mut at = self.rng.random_range(0.0..total);
        for (action, weight) in weights {
            if at < weight {
                return action;
            }
            at -= weight;
        }
        Action::Water
    }

    fn act(&mut self, action: Action) -> Planned {
        match action {
            Action::Meal => {
                let meal_type = match self.hour() {
                    6..=10 => MealType::Breakfast,
                    11..=15 => MealType::Lunch,
                    17..=21 => MealType::Dinner,
                    _ => MealType::Snack,
                };
                self.log_meal(meal_type)
            }
            Action::Snack => self.log_meal(MealType::Snack),
            Action::Water => self.log_water(),
            Action::UpdateMeal => self.update_meal(),
            Action::DeleteMeal => self.delete_meal(),
            Action::StartQuest => self.start_quest(),
            Action::ProgressQuest => self.progress_quest(),
            Action::CompleteQuest => self.complete_quest(),
            Action::ClaimReward => self.claim_reward(),
            Action::FailQuest => self.fail_quest(),
            Action::SendRequest => self.send_request(),
            Action::AnswerRequest => self.answer_request(),
            Action::CreatePost => self.create_post(),
            Action::LikePost => self.like_post(),
            Action::Comment => self.comment(),
            Action::AskCoach => self.ask_coach(),
            Action::CoachAnswers => self.coach_answers(),
            Action::Feedback => self.feedback(),
            Action::RateInsight => self.rate_insight(),
            Action::UpdateProfile => self.update_profile(),
            Action::DailyLogin => self.daily_login(),
        }
    }

    // --- commands ----------------------------------------------------------------------

    fn register(&mut self) -> Planned {
        let header = self.user_command::<RegisterUser>();
        let (locale, zone, _) = catalog::LOCALES[self.locale];
        let name = self.pick(catalog::FIRST_NAMES);
        let activity = self.pick(&[
            ActivityLevel::Sedentary,
            ActivityLevel::LightlyActive,
            ActivityLevel::ModeratelyActive,
            ActivityLevel::VeryActive,
            ActivityLevel::ExtraActive,
        ]);
        let payload = RegisterUserPayload {
            display_name: format!("{name} {}", self.index),
            email: format!("{}@sim.dietstream.invalid", self.user_id),
            locale: locale.to_owned(),
            time_zone: zone.to_owned(),
            birth_year: Some(self.rng.random_range(1950..=2008)),
            height_cm: Some(round1(self.rng.random_range(150.0..200.0))),
            weight_kg: Some(self.weight_kg),
            activity_level: activity,
            referral_code: self
                .rng
                .random_bool(0.1)
                .then(|| format!("REF{:04}", self.index % 10_000)),
        };
        let command = Command::RegisterUser(RegisterUser { header, payload });
        self.plan(command, Agg::User, Effect::Registered)
    }

    fn set_goal(&mut self) -> Planned {
        let header = self.user_command::<SetNutritionGoal>();
        let energy = f64::from(self.rng.random_range(32..=56)) * 50.0;
        let payload = SetNutritionGoalPayload {
            energy_kcal: Some(energy),
            protein_g: Some(f64::from(self.rng.random_range(12..=32)) * 5.0),
            carbohydrate_g: Some(f64::from(self.rng.random_range(15..=35)) * 10.0),
            fat_g: Some(f64::from(self.rng.random_range(10..=20)) * 5.0),
            fibre_g: self
                .rng
                .random_bool(0.8)
                .then(|| f64::from(self.rng.random_range(25..=35))),
            water_ml: Some(self.rng.random_range(6..=12) * 250),
            effective_from: self.day(),
        };
        let command = Command::SetNutritionGoal(SetNutritionGoal { header, payload });
        self.plan(command, Agg::User, Effect::GoalSet)
    }

    fn items(&mut self, meal_type: MealType) -> Vec<MealItem> {
        let foods: Vec<&Food> = catalog::FOODS
            .iter()
            .filter(|f| f.meals.contains(&meal_type))
            .collect();
        let count = if meal_type == MealType::Snack {
            self.rng.random_range(1..=2)
        } else {
            self.rng.random_range(1..=4)
        };
        (0..count)
            .map(|_| {
                let food = *foods[self.rng.random_range(0..foods.len())];
                let portion = self.pick(catalog::PORTIONS);
                item(&food, portion)
            })
            .collect()
    }

    fn log_meal(&mut self, meal_type: MealType) -> Planned {
        let header = self.user_command::<LogMeal>();
        let meal = Meal {
            id: self.uuid(),
            meal_type,
            eaten_at: self.now() - self.rng.random_range(0..30) * MICROS_PER_MINUTE,
            items: self.items(meal_type),
        };
        let note = self
            .rng
            .random_bool(0.15)
            .then(|| self.pick(catalog::MEAL_NOTES).to_owned());
        let source = self.pick(&[
            MealSource::Manual,
            MealSource::Manual,
            MealSource::Barcode,
            MealSource::Photo,
            MealSource::Recipe,
        ]);
        let payload = LogMealPayload {
            meal_id: meal.id,
            meal_type,
            eaten_at: meal.eaten_at,
            items: meal.items.clone(),
            note,
            source,
        };
        let command = Command::LogMeal(LogMeal { header, payload });
        self.plan(command, Agg::User, Effect::MealLogged(meal))
    }

    fn log_water(&mut self) -> Planned {
        let header = self.user_command::<LogWater>();
        let millilitres = self.pick(&[150, 200, 250, 250, 330, 500]);
        let payload = LogWaterPayload {
            intake_id: self.uuid(),
            millilitres,
            drunk_at: self.now(),
        };
        let command = Command::LogWater(LogWater { header, payload });
        self.plan(command, Agg::User, Effect::Water(millilitres))
    }

    fn update_meal(&mut self) -> Planned {
        let header = self.user_command::<UpdateMeal>();
        let index = self.rng.random_range(0..self.meals.len());
        let mut meal = self.meals[index].clone();
        // A typical correction: another portion size of one item, or one item more.
        if self.rng.random_bool(0.5) || meal.items.len() >= 6 {
            let i = self.rng.random_range(0..meal.items.len());
            let food = catalog::FOODS
                .iter()
                .find(|f| f.id == meal.items[i].food_id)
                .copied()
                .unwrap_or(catalog::FOODS[0]);
            let portion = self.pick(catalog::PORTIONS);
            meal.items[i] = item(&food, portion);
        } else {
            let extra = self.items(meal.meal_type);
            meal.items.extend(extra.into_iter().take(1));
        }
        let payload = UpdateMealPayload {
            meal_id: meal.id,
            meal_type: meal.meal_type,
            eaten_at: meal.eaten_at,
            items: meal.items.clone(),
            note: None,
        };
        let command = Command::UpdateMeal(UpdateMeal { header, payload });
        self.plan(command, Agg::User, Effect::MealUpdated(meal))
    }

    fn delete_meal(&mut self) -> Planned {
        let header = self.user_command::<DeleteMeal>();
        let meal_id = self.meals[self.rng.random_range(0..self.meals.len())].id;
        let reason = self.pick(&[
            MealDeletionReason::UserRequest,
            MealDeletionReason::Duplicate,
            MealDeletionReason::WrongEntry,
        ]);
        let command = Command::DeleteMeal(DeleteMeal {
            header,
            payload: DeleteMealPayload { meal_id, reason },
        });
        self.plan(command, Agg::User, Effect::MealDeleted(meal_id))
    }

    fn start_quest(&mut self) -> Planned {
        let header = self.user_command::<StartQuest>();
        let definition = self.pick(catalog::QUESTS);
        let quest = Quest {
            id: self.uuid(),
            definition,
            progress: 0.0,
            state: QuestState::Active,
            deadline: self.now() + definition.days * MICROS_PER_DAY,
        };
        let payload = StartQuestPayload {
            quest_id: quest.id,
            quest_definition_id: definition.id.to_owned(),
            quest_kind: definition.kind,
            target: definition.target,
            unit: definition.unit,
            deadline: Some(quest.deadline),
        };
        let command = Command::StartQuest(StartQuest { header, payload });
        self.plan(command, Agg::User, Effect::QuestStarted(quest))
    }

    fn active_quest(&mut self, pred: impl Fn(&Quest) -> bool) -> Quest {
        let candidates: Vec<Quest> = self.quests.iter().filter(|q| pred(q)).cloned().collect();
        candidates[self.rng.random_range(0..candidates.len())].clone()
    }

    fn progress_quest(&mut self) -> Planned {
        let header = self.user_command::<ProgressQuest>();
        let quest = self
            .active_quest(|q| q.state == QuestState::Active && q.progress < q.definition.target);
        let target = quest.definition.target;
        let step = (target / f64::from(self.rng.random_range(2..=5))).max(1.0);
        let progress = round1((quest.progress + step).min(target));
        let command = Command::ProgressQuest(ProgressQuest {
            header,
            payload: ProgressQuestPayload {
                quest_id: quest.id,
                progress,
                source_event_id: None,
            },
        });
        self.plan(
            command,
            Agg::User,
            Effect::QuestProgressed(quest.id, progress),
        )
    }

    fn complete_quest(&mut self) -> Planned {
        let header = self.user_command::<CompleteQuest>();
        let quest = self
            .active_quest(|q| q.state == QuestState::Active && q.progress >= q.definition.target);
        let command = Command::CompleteQuest(CompleteQuest {
            header,
            payload: CompleteQuestPayload {
                quest_id: quest.id,
                completed_at: self.now(),
                xp_reward: quest.definition.xp,
            },
        });
        self.plan(command, Agg::User, Effect::QuestCompleted(quest.id))
    }

    fn claim_reward(&mut self) -> Planned {
        let header = self.user_command::<ClaimQuestReward>();
        let quest = self.active_quest(|q| q.state == QuestState::Completed);
        let items = match quest.definition.reward {
            RewardKind::Badge => vec![RewardItem {
                item_id: format!("badge-{}", quest.definition.id),
                quantity: 1,
            }],
            RewardKind::Item | RewardKind::Bundle => vec![RewardItem {
                item_id: "power-up-double-xp".to_owned(),
                quantity: self.rng.random_range(1..=3),
            }],
            _ => Vec::new(),
        };
        let command = Command::ClaimQuestReward(ClaimQuestReward {
            header,
            payload: ClaimQuestRewardPayload {
                quest_id: quest.id,
                reward_kind: quest.definition.reward,
                xp: quest.definition.xp,
                items,
            },
        });
        self.plan(command, Agg::User, Effect::QuestEnded(quest.id))
    }

    fn fail_quest(&mut self) -> Planned {
        let header = self.user_command::<FailQuest>();
        let quest = self.active_quest(|q| q.state == QuestState::Active);
        let expired = quest.deadline <= self.now();
        let command = Command::FailQuest(FailQuest {
            header,
            payload: FailQuestPayload {
                quest_id: quest.id,
                reason: if expired {
                    QuestFailureReason::Expired
                } else {
                    QuestFailureReason::Abandoned
                },
                failed_at: if expired { quest.deadline } else { self.now() },
            },
        });
        self.plan(command, Agg::User, Effect::QuestEnded(quest.id))
    }

    fn send_request(&mut self) -> Planned {
        let request_id = self.uuid();
        let to = self.other_user();
        let user = self.user_id.clone();
        let header = self.header::<SendFriendRequest>(Agg::Social, &request_id.to_string(), &user);
        let command = Command::SendFriendRequest(SendFriendRequest {
            header,
            payload: SendFriendRequestPayload {
                request_id,
                from_user_id: user,
                to_user_id: to.clone(),
            },
        });
        self.plan(
            command,
            Agg::Social,
            Effect::SocialCreated(request_id, Social::FriendRequest { to }),
        )
    }

    fn answer_request(&mut self) -> Planned {
        let requests: Vec<(Uuid, String)> = self
            .social
            .iter()
            .filter_map(|(id, s)| match s {
                Social::FriendRequest { to } => Some((*id, to.clone())),
                Social::Post { .. } => None,
            })
            .collect();
        let (request_id, to) = requests[self.rng.random_range(0..requests.len())].clone();
        // The recipient answers; this player's loop sends it on the recipient's behalf.
        let command = if self.rng.random_bool(0.75) {
            let header =
                self.header::<AcceptFriendRequest>(Agg::Social, &request_id.to_string(), &to);
            Command::AcceptFriendRequest(AcceptFriendRequest {
                header,
                payload: AcceptFriendRequestPayload { request_id },
            })
        } else {
            let header =
                self.header::<DeclineFriendRequest>(Agg::Social, &request_id.to_string(), &to);
            let reason = self.rng.random_bool(0.3).then(|| "not now".to_owned());
            Command::DeclineFriendRequest(DeclineFriendRequest {
                header,
                payload: DeclineFriendRequestPayload { request_id, reason },
            })
        };
        self.plan(command, Agg::Social, Effect::RequestAnswered(request_id))
    }

    fn create_post(&mut self) -> Planned {
        let post_id = self.uuid();
        let user = self.user_id.clone();
        let header = self.header::<CreatePost>(Agg::Social, &post_id.to_string(), &user);
        let (kind, shared) = match self.meals.last() {
            Some(meal) if self.rng.random_bool(0.4) => {
                (PostKind::MealShare, Some(meal.id.to_string()))
            }
            _ => (PostKind::Text, None),
        };
        let visibility = self.pick(&[
            PostVisibility::Public,
            PostVisibility::Friends,
            PostVisibility::Friends,
            PostVisibility::Private,
        ]);
        let command = Command::CreatePost(CreatePost {
            header,
            payload: CreatePostPayload {
                post_id,
                author_user_id: user,
                kind,
                text: self.pick(catalog::POSTS).to_owned(),
                visibility,
                attachment_ids: Vec::new(),
                shared_ref_id: shared,
            },
        });
        self.plan(
            command,
            Agg::Social,
            Effect::SocialCreated(
                post_id,
                Social::Post {
                    comments: Vec::new(),
                },
            ),
        )
    }

    fn post(&mut self) -> (Uuid, Vec<Uuid>) {
        let posts: Vec<(Uuid, Vec<Uuid>)> = self
            .social
            .iter()
            .filter_map(|(id, s)| match s {
                Social::Post { comments } => Some((*id, comments.clone())),
                Social::FriendRequest { .. } => None,
            })
            .collect();
        posts[self.rng.random_range(0..posts.len())].clone()
    }

    fn like_post(&mut self) -> Planned {
        let (post_id, _) = self.post();
        let liker = self.other_user();
        let header = self.header::<LikePost>(Agg::Social, &post_id.to_string(), &liker);
        let reaction = self.pick(&[
            Reaction::Like,
            Reaction::Like,
            Reaction::Love,
            Reaction::Cheer,
            Reaction::Yum,
            Reaction::Strong,
        ]);
        let command = Command::LikePost(LikePost {
            header,
            payload: LikePostPayload {
                post_id,
                liker_user_id: liker,
                reaction,
            },
        });
        self.plan(command, Agg::Social, Effect::Nothing)
    }

    fn comment(&mut self) -> Planned {
        let (post_id, comments) = self.post();
        let commenter = self.other_user();
        let header = self.header::<CommentOnPost>(Agg::Social, &post_id.to_string(), &commenter);
        let comment_id = self.uuid();
        let parent = if !comments.is_empty() && self.rng.random_bool(0.3) {
            Some(self.pick(&comments))
        } else {
            None
        };
        let command = Command::CommentOnPost(CommentOnPost {
            header,
            payload: CommentOnPostPayload {
                post_id,
                comment_id,
                commenter_user_id: commenter,
                text: self.pick(catalog::COMMENTS).to_owned(),
                parent_comment_id: parent,
            },
        });
        self.plan(command, Agg::Social, Effect::Commented(post_id, comment_id))
    }

    fn ai_header<T: Record>(&mut self) -> CommandHeader {
        let id = self.user_id.clone();
        self.header::<T>(Agg::Ai, &id, &id)
    }

    fn ask_coach(&mut self) -> Planned {
        let header = self.ai_header::<RecordAiQuery>();
        let prompt = self.pick(catalog::PROMPTS);
        let query_id = self.uuid();
        let conversation_id = self.uuid();
        let channel = self.pick(&[
            AiChannel::InAppChat,
            AiChannel::InAppChat,
            AiChannel::Voice,
            AiChannel::MealReview,
        ]);
        let command = Command::RecordAiQuery(RecordAiQuery {
            header,
            payload: RecordAiQueryPayload {
                query_id,
                conversation_id,
                channel,
                prompt: prompt.to_owned(),
                prompt_chars: i32::try_from(prompt.chars().count()).unwrap_or(i32::MAX),
                context_window_days: self.pick(&[7, 14, 30]),
            },
        });
        self.plan(
            command,
            Agg::Ai,
            Effect::QueryOpened(query_id, conversation_id),
        )
    }

    fn coach_answers(&mut self) -> Planned {
        let header = self.ai_header::<RecordAiResponse>();
        let (query_id, conversation_id) = self.open_query.unwrap_or_default();
        let response_id = self.uuid();
        let finish_reason = if self.rng.random_bool(0.95) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        let command = Command::RecordAiResponse(RecordAiResponse {
            header,
            payload: RecordAiResponsePayload {
                query_id,
                response_id,
                conversation_id,
                text: self.pick(catalog::RESPONSES).to_owned(),
                model: "coach-large".to_owned(),
                model_version: "2024-06".to_owned(),
                latency_ms: self.rng.random_range(300..4000),
                prompt_tokens: self.rng.random_range(200..1500),
                completion_tokens: self.rng.random_range(50..400),
                finish_reason,
            },
        });
        self.plan(command, Agg::Ai, Effect::Responded(response_id))
    }

    fn feedback(&mut self) -> Planned {
        let header = self.ai_header::<RecordFeedback>();
        let target_id = self.pick(&self.responses.clone());
        self.rate(header, target_id, FeedbackTargetKind::Response)
    }

    /// Rates the oldest insight not rated yet; it is rated once, whatever the outcome.
    fn rate_insight(&mut self) -> Planned {
        if self.insights.is_empty() {
            // Not chosen without an insight to rate; water is always a valid action.
            return self.log_water();
        }
        let header = self.ai_header::<RecordFeedback>();
        let target_id = self.insights.remove(0);
        self.rate(header, target_id, FeedbackTargetKind::Insight)
    }

    /// A rating from 1 to 5 of `target_id`, with a helpful / not helpful answer 70 % of the
    /// time.
    fn rate(
        &mut self,
        header: CommandHeader,
        target_id: Uuid,
        target_kind: FeedbackTargetKind,
    ) -> Planned {
        let rating = self.rng.random_range(1..=5);
        let command = Command::RecordFeedback(RecordFeedback {
            header,
            payload: RecordFeedbackPayload {
                feedback_id: self.uuid(),
                target_id,
                target_kind,
                rating,
                helpful: self.rng.random_bool(0.7).then_some(rating >= 3),
                comment: (rating <= 2).then(|| "too generic".to_owned()),
            },
        });
        self.plan(command, Agg::Ai, Effect::Nothing)
    }

    fn update_profile(&mut self) -> Planned {
        let header = self.user_command::<UpdateProfile>();
        let weight = round1((self.weight_kg + self.rng.random_range(-0.8..0.8)).clamp(40.0, 200.0));
        let command = Command::UpdateProfile(UpdateProfile {
            header,
            payload: UpdateProfilePayload {
                display_name: None,
                email: None,
                locale: None,
                time_zone: None,
                birth_year: None,
                height_cm: None,
                weight_kg: Some(weight),
                activity_level: None,
                changed_fields: vec!["weight_kg".to_owned()],
            },
        });
        self.plan(command, Agg::User, Effect::Weight(weight))
    }

    fn daily_login(&mut self) -> Planned {
        self.login_day = self.day;
        let header = self.user_command::<AwardXp>();
        let command = Command::AwardXp(AwardXp {
            header,
            payload: AwardXpPayload {
                xp: 10,
                source: XpSource::DailyLogin,
                source_id: None,
            },
        });
        self.plan(command, Agg::User, Effect::Nothing)
    }

    // --- deliberately invalid commands -------------------------------------------------

    fn deliberate(&mut self) -> Planned {
        let kinds = [
            Deliberate::StaleVersion,
            Deliberate::StaleVersion,
            Deliberate::NegativeEnergy,
            Deliberate::EmptyItems,
            Deliberate::UnknownMeal,
            Deliberate::NeverStartedQuest,
        ];
        let kind = self.pick(&kinds);
        let mut planned = match kind {
            Deliberate::StaleVersion => {
                let action = self.choose();
                let mut planned = self.act(action);
                let header = planned.command.header_mut();
                let current = header.expected_version.unwrap_or(0);
                header.expected_version = Some(if current > 0 { current - 1 } else { 1 });
                planned
            }
            Deliberate::NegativeEnergy => {
                let mut planned = self.log_meal(MealType::Snack);
                if let Command::LogMeal(meal) = &mut planned.command {
                    if let Some(item) = meal.payload.items.first_mut() {
                        item.energy_kcal = -item.energy_kcal.abs().max(1.0);
                    }
                }
                planned
            }
            Deliberate::EmptyItems => {
                let mut planned = self.log_meal(MealType::Snack);
                if let Command::LogMeal(meal) = &mut planned.command {
                    meal.payload.items.clear();
                }
                planned
            }
            Deliberate::UnknownMeal => {
                let header = self.user_command::<DeleteMeal>();
                let meal_id = self.uuid();
                let command = Command::DeleteMeal(DeleteMeal {
                    header,
                    payload: DeleteMealPayload {
                        meal_id,
                        reason: MealDeletionReason::UserRequest,
                    },
                });
                self.plan(command, Agg::User, Effect::Nothing)
            }
            Deliberate::NeverStartedQuest => {
                let header = self.user_command::<CompleteQuest>();
                let quest_id = self.uuid();
                let command = Command::CompleteQuest(CompleteQuest {
                    header,
                    payload: CompleteQuestPayload {
                        quest_id,
                        completed_at: self.now(),
                        xp_reward: 50,
                    },
                });
                self.plan(command, Agg::User, Effect::Nothing)
            }
        };
        if let Some(flight) = &mut self.in_flight {
            flight.deliberate = true;
        }
        planned.deliberate = Some(kind);
        planned
    }
}

/// A catalogue food at `portion` times its standard portion, rounded to 0.1.
fn item(food: &Food, portion: f64) -> MealItem {
    MealItem {
        food_id: food.id.to_owned(),
        food_name: food.name.to_owned(),
        grams: round1(food.grams * portion),
        energy_kcal: round1(food.kcal * portion),
        protein_g: round1(food.protein_g * portion),
        carbohydrate_g: round1(food.carbohydrate_g * portion),
        fat_g: round1(food.fat_g * portion),
        fibre_g: food.fibre_g.map(|v| round1(v * portion)),
        sugar_g: food.sugar_g.map(|v| round1(v * portion)),
        sodium_mg: food.sodium_mg.map(|v| round1(v * portion)),
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
