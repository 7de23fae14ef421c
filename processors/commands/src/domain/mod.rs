//! The aggregates of the command processor as pure code: [`decide`] turns a command into
//! events or a [`Rejection`], [`apply`] folds one event into an [`Aggregate`].
//!
//! Nothing here does I/O, reads a clock or draws random numbers: the processor passes the time
//! to stamp on events, and event ids are derived from the command id ([`event_id`]), so
//! reprocessing a command after a crash produces byte-identical events.
//!
//! # Order of the checks in [`decide`]
//!
//! 1. `header.aggregate_type` must be USER, SOCIAL or AI and match the aggregate the command
//!    type belongs to, else `UNKNOWN_AGGREGATE`.
//! 2. `header.expected_version` (when set) must equal the current version, else
//!    `CONCURRENCY_CONFLICT`.
//! 3. Existence: a non-creating command on a missing aggregate is `UNKNOWN_AGGREGATE`, a
//!    creating command on an existing one is `RULE_VIOLATION`. Creating commands are
//!    `RegisterUser`, `SendFriendRequest` and `CreatePost`. **AI aggregates are created
//!    implicitly**: there is no "register coaching" command, so whichever AI command comes first
//!    for a user creates the aggregate, and no AI command is ever refused for (non-)existence.
//! 4. Values (`VALIDATION_ERROR`, with `field` as a dotted path).
//! 5. Domain rules (`RULE_VIOLATION`).
//!
//! Derived user events (`user.streak.milestone`, `user.achievement.unlocked`,
//! `user.level.up`) are appended by [`decide`] after the main event, in that order, and carry
//! everything [`apply`] needs: state is always rebuildable from the events alone.
//! `nutrition.goal.met` is not derived: the nutrition processor, which judges the days, sends
//! `nutrition.goal.met.record` (the aggregate refuses a repeat for the same day and goal).

mod ai;
mod progression;
mod social;
mod user;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use dietstream_schemas::types::{self, AggregateType, CommandHeader, EventHeader};
use dietstream_schemas::{Command, Event};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use ai::AiState;
pub use progression::{
    level_for_xp, xp_for_level, Achievement, AchievementRule, ACHIEVEMENTS, STREAK_MILESTONES,
};
pub use social::{FriendRequestState, FriendRequestStatus, PostState, SocialState};
pub use user::{
    DayTotals, GoalSet, MealRecord, Nutrients, Profile, QuestRecord, QuestStatus, Streak,
    UserState, DAY_WINDOW,
};
pub use validate::limits;

/// The aggregate kinds the command processor owns (SYSTEM has no commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AggregateKind {
    /// A player: profile, XP, nutrition and quests (`diet.events.user`).
    User,
    /// A friend request or a post (`diet.events.social`).
    Social,
    /// The AI coaching of one user (`diet.events.ai`).
    Ai,
}

impl AggregateKind {
    /// The kind of an Avro aggregate type: USER, SOCIAL and AI; `None` for SYSTEM and UNKNOWN.
    pub fn of(t: AggregateType) -> Option<AggregateKind> {
        match t {
            AggregateType::User => Some(AggregateKind::User),
            AggregateType::Social => Some(AggregateKind::Social),
            AggregateType::Ai => Some(AggregateKind::Ai),
            AggregateType::System | AggregateType::Unknown => None,
        }
    }

    /// The Avro aggregate type of this kind.
    pub fn aggregate_type(self) -> AggregateType {
        match self {
            AggregateKind::User => AggregateType::User,
            AggregateKind::Social => AggregateType::Social,
            AggregateKind::Ai => AggregateType::Ai,
        }
    }

    /// The aggregate a command targets: for the typed commands the record's
    /// `dietstream.aggregate_type` attribute (a test checks this match against the schema
    /// catalogue); for `aggregate.snapshot.take`, which any aggregate accepts, its
    /// header's aggregate type. `None` when that names no aggregate of the command processor.
    pub fn of_command(c: &Command) -> Option<AggregateKind> {
        let kind = match c {
            Command::TakeSnapshot(c) => return AggregateKind::of(c.header.aggregate_type),
            Command::RegisterUser(_)
            | Command::UpdateProfile(_)
            | Command::AwardXp(_)
            | Command::SetNutritionGoal(_)
            | Command::LogMeal(_)
            | Command::UpdateMeal(_)
            | Command::DeleteMeal(_)
            | Command::LogWater(_)
            | Command::RecordGoalMet(_)
            | Command::StartQuest(_)
            | Command::ProgressQuest(_)
            | Command::CompleteQuest(_)
            | Command::FailQuest(_)
            | Command::ClaimQuestReward(_) => AggregateKind::User,
            Command::SendFriendRequest(_)
            | Command::AcceptFriendRequest(_)
            | Command::DeclineFriendRequest(_)
            | Command::CreatePost(_)
            | Command::LikePost(_)
            | Command::CommentOnPost(_) => AggregateKind::Social,
            Command::RecordAiQuery(_)
            | Command::RecordAiResponse(_)
            | Command::CreateInsight(_)
            | Command::GiveRecommendation(_)
            | Command::RecordFeedback(_) => AggregateKind::Ai,
        };
        Some(kind)
    }

    /// The aggregate an event record belongs to; `None` for system events.
    pub fn of_event(e: &Event) -> Option<AggregateKind> {
        match e {
            Event::UserRegistered(_)
            | Event::UserProfileUpdated(_)
            | Event::UserLevelUp(_)
            | Event::UserAchievementUnlocked(_)
            | Event::UserStreakMilestone(_)
            | Event::UserXpAwarded(_)
            | Event::MealLogged(_)
            | Event::MealUpdated(_)
            | Event::MealDeleted(_)
            | Event::NutritionGoalMet(_)
            | Event::NutritionGoalUpdated(_)
            | Event::WaterIntakeLogged(_)
            | Event::QuestStarted(_)
            | Event::QuestCompleted(_)
            | Event::QuestFailed(_)
            | Event::QuestUpdated(_)
            | Event::QuestRewardClaimed(_) => Some(AggregateKind::User),
            Event::FriendRequestSent(_)
            | Event::FriendRequestAccepted(_)
            | Event::FriendRequestDeclined(_)
            | Event::PostCreated(_)
            | Event::PostLiked(_)
            | Event::PostCommented(_) => Some(AggregateKind::Social),
            Event::AiQueryReceived(_)
            | Event::AiResponseGenerated(_)
            | Event::AiInsightCreated(_)
            | Event::AiRecommendationGiven(_)
            | Event::AiFeedbackReceived(_) => Some(AggregateKind::Ai),
            Event::CacheInvalidated(_)
            | Event::CachePreloaded(_)
            | Event::DatabaseBackupCompleted(_)
            | Event::SystemMaintenanceStarted(_)
            | Event::SystemMaintenanceCompleted(_) => None,
        }
    }
}

/// One aggregate's state as the processor keeps it and snapshots it (serde JSON is the
/// snapshot layout, named by [`STATE_FORMAT`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Aggregate {
    /// Version after the last applied event; 0 = the aggregate does not exist.
    pub version: i64,
    /// `event_id` of the event at `version`; `None` while the aggregate does not exist.
    pub last_event_id: Option<Uuid>,
    /// The state built from the events.
    pub state: State,
}

/// The state of one aggregate, by kind.
// One value per aggregate held in a map; boxing the user state would only add an indirection
// and change the shape the processor matches on.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum State {
    /// No event applied yet.
    #[default]
    Empty,
    /// A player.
    User(UserState),
    /// A friend request or a post.
    Social(SocialState),
    /// The AI coaching of one user.
    Ai(AiState),
}

/// Name of the snapshot layout (serde JSON of [`Aggregate`]); bump when [`State`] changes
/// shape, so that old snapshots are ignored and the aggregate is rebuilt from its events.
pub const STATE_FORMAT: &str = "json/aggregate/2";

/// Why a command was refused; maps 1:1 onto [`types::Rejected`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The reason class.
    pub reason: types::RejectionReason,
    /// Human-readable explanation (English), not for parsing.
    pub message: String,
    /// Dotted path of the offending field, e.g. `payload.items[0].grams`; validation errors only.
    pub field: Option<String>,
    /// The command's expected version; concurrency conflicts only.
    pub expected_version: Option<i64>,
    /// The aggregate's current version; concurrency conflicts and unknown aggregates.
    pub current_version: Option<i64>,
}

impl Rejection {
    /// The Avro record for the command result.
    pub fn into_record(self) -> types::Rejected {
        types::Rejected {
            reason: self.reason,
            message: self.message,
            field: self.field,
            expected_version: self.expected_version,
            current_version: self.current_version,
        }
    }

    pub(crate) fn validation(field: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            reason: types::RejectionReason::ValidationError,
            message: message.into(),
            field: Some(field.into()),
            expected_version: None,
            current_version: None,
        }
    }

    pub(crate) fn rule(message: impl Into<String>) -> Rejection {
        Rejection {
            reason: types::RejectionReason::RuleViolation,
            message: message.into(),
            field: None,
            expected_version: None,
            current_version: None,
        }
    }

    pub(crate) fn unknown_aggregate(message: impl Into<String>, current_version: i64) -> Rejection {
        Rejection {
            reason: types::RejectionReason::UnknownAggregate,
            message: message.into(),
            field: None,
            expected_version: None,
            current_version: Some(current_version),
        }
    }

    fn conflict(expected: i64, current: i64) -> Rejection {
        Rejection {
            reason: types::RejectionReason::ConcurrencyConflict,
            message: format!(
                "expected version {expected}, but the aggregate is at version {current}"
            ),
            field: None,
            expected_version: Some(expected),
            current_version: Some(current),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.reason, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " ({field})")?;
        }
        Ok(())
    }
}

/// Why [`apply`] refused an event. Events come from [`decide`] or from the log, so either is a
/// bug or a corrupt log, never a user error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The event's version is not the aggregate's version + 1.
    #[error("version gap: expected an event at version {expected}, found version {found}")]
    VersionGap {
        /// aggregate.version + 1.
        expected: i64,
        /// The event's header.version.
        found: i64,
    },
    /// The event belongs to another kind of aggregate than the state holds.
    #[error("event {event_type} cannot be applied to {state}")]
    WrongKind {
        /// Dotted type of the event.
        event_type: String,
        /// What the aggregate holds, e.g. `a USER aggregate` or `a friend request`.
        state: String,
    },
}

/// The id of the event at `index` (0-based) in the result of the command `command_id`: a uuid v5
/// with the command id as namespace and the decimal index as name, so that reprocessing a
/// command yields the same event ids.
pub fn event_id(command_id: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&command_id, index.to_string().as_bytes())
}

/// Decides a command against the current state. Pure. `now_micros` is only used for event
/// timestamps. Returns the complete events to append (possibly none, when the command changes
/// nothing, e.g. a repeated absolute quest progress) or why the command is refused.
pub fn decide(
    aggregate: &Aggregate,
    command: &Command,
    now_micros: i64,
) -> Result<Vec<Event>, Rejection> {
    let header = command.header();
    let current = aggregate.version;
    let kind = match AggregateKind::of_command(command) {
        Some(kind) if AggregateKind::of(header.aggregate_type) == Some(kind) => kind,
        kind => {
            return Err(Rejection::unknown_aggregate(
                format!(
                    "command {} targets {} aggregates, but header.aggregate_type is {:?}",
                    command.record_type(),
                    kind.map_or("USER, SOCIAL or AI".to_owned(), |k| format!(
                        "{:?}",
                        k.aggregate_type()
                    )),
                    header.aggregate_type
                ),
                current,
            ))
        }
    };

    if let Some(expected) = header.expected_version {
        if expected != current {
            return Err(Rejection::conflict(expected, current));
        }
    }

    let exists = current > 0;
    let creating = matches!(
        command,
        Command::RegisterUser(_) | Command::SendFriendRequest(_) | Command::CreatePost(_)
    );
    if kind != AggregateKind::Ai {
        if !exists && !creating {
            return Err(Rejection::unknown_aggregate(
                format!(
                    "{:?} aggregate {:?} does not exist; {} cannot create it",
                    kind.aggregate_type(),
                    header.aggregate_id,
                    command.record_type()
                ),
                current,
            ));
        }
        if exists && creating {
            return Err(Rejection::rule(format!(
                "{:?} aggregate {:?} already exists (version {current}); {} creates a new one",
                kind.aggregate_type(),
                header.aggregate_id,
                command.record_type()
            )));
        }
    }
    let state_kind = match &aggregate.state {
        State::Empty => None,
        State::User(_) => Some(AggregateKind::User),
        State::Social(_) => Some(AggregateKind::Social),
        State::Ai(_) => Some(AggregateKind::Ai),
    };
    if state_kind.is_some_and(|k| k != kind) {
        return Err(Rejection::unknown_aggregate(
            format!(
                "aggregate {:?} holds {:?} state, not {:?}",
                header.aggregate_id,
                state_kind,
                kind.aggregate_type()
            ),
            current,
        ));
    }

    validate::header(command)?;
    if let Command::TakeSnapshot(_) = command {
        // No events: the processor writes the snapshot of the aggregate as it stands.
        return if exists {
            Ok(Vec::new())
        } else {
            Err(Rejection::unknown_aggregate(
                format!(
                    "{:?} aggregate {:?} has no events; there is nothing to snapshot",
                    kind.aggregate_type(),
                    header.aggregate_id
                ),
                current,
            ))
        };
    }
    let mut emitter = Emitter::new(aggregate, header, now_micros);
    match kind {
        AggregateKind::User => user::decide(&mut emitter, command)?,
        AggregateKind::Social => social::decide(&mut emitter, command)?,
        AggregateKind::Ai => ai::decide(&mut emitter, command)?,
    }
    Ok(emitter.events)
}

/// Applies one event; the event's version must be `aggregate.version + 1`. Total over the
/// event types of the aggregate's kind: an event on an empty aggregate creates the state.
/// On error the aggregate is unchanged.
pub fn apply(aggregate: &mut Aggregate, event: &Event) -> Result<(), ApplyError> {
    let header = event.header();
    let expected = aggregate.version + 1;
    if header.version != expected {
        return Err(ApplyError::VersionGap {
            expected,
            found: header.version,
        });
    }
    let wrong = |state: &str| ApplyError::WrongKind {
        event_type: event.record_type().to_owned(),
        state: state.to_owned(),
    };
    let Some(kind) = AggregateKind::of_event(event) else {
        return Err(wrong("an aggregate of the command processor"));
    };
    match (kind, &mut aggregate.state) {
        (AggregateKind::User, State::User(s)) => user::apply(s, event),
        (AggregateKind::User, state @ State::Empty) => {
            let mut s = UserState::default();
            user::apply(&mut s, event);
            *state = State::User(s);
        }
        (AggregateKind::Social, state @ (State::Social(_) | State::Empty)) => {
            social::apply(state, event).map_err(wrong)?;
        }
        (AggregateKind::Ai, State::Ai(s)) => ai::apply(s, event),
        (AggregateKind::Ai, state @ State::Empty) => {
            let mut s = AiState::default();
            ai::apply(&mut s, event);
            *state = State::Ai(s);
        }
        (_, State::User(_)) => return Err(wrong("a USER aggregate")),
        (_, State::Social(_)) => return Err(wrong("a SOCIAL aggregate")),
        (_, State::Ai(_)) => return Err(wrong("an AI aggregate")),
    }
    aggregate.version = header.version;
    aggregate.last_event_id = Some(header.event_id);
    Ok(())
}

/// Collects the events of one command: stamps each header and applies it to a working copy,
/// so that derived events are computed from the state the earlier events produce, exactly as
/// a replay will see it.
pub(crate) struct Emitter<'a> {
    command: &'a CommandHeader,
    now_micros: i64,
    pub(crate) work: Aggregate,
    pub(crate) events: Vec<Event>,
}

impl<'a> Emitter<'a> {
    fn new(aggregate: &Aggregate, command: &'a CommandHeader, now_micros: i64) -> Emitter<'a> {
        Emitter {
            command,
            now_micros,
            work: aggregate.clone(),
            events: Vec::new(),
        }
    }

    pub(crate) fn command(&self) -> &'a CommandHeader {
        self.command
    }

    pub(crate) fn emit(&mut self, mut event: Event) -> Result<(), Rejection> {
        let index = self.events.len();
        let event_type = event.record_type().to_owned();
        let c = self.command;
        *event.header_mut() = EventHeader {
            event_id: event_id(c.command_id, index),
            event_type,
            aggregate_id: c.aggregate_id.clone(),
            aggregate_type: c.aggregate_type,
            version: self.work.version + 1,
            timestamp: self.now_micros,
            user_id: c.user_id.clone(),
            session_id: c.session_id.clone(),
            correlation_id: Some(c.correlation_id.unwrap_or(c.command_id)),
            causation_id: Some(c.command_id),
            metadata: c.metadata.clone(),
        };
        apply(&mut self.work, &event)
            .map_err(|e| Rejection::rule(format!("internal error, event not applicable: {e}")))?;
        self.events.push(event);
        Ok(())
    }
}

/// A header to be overwritten by [`Emitter::emit`].
pub(crate) fn blank_header() -> EventHeader {
    EventHeader {
        event_id: Uuid::nil(),
        event_type: String::new(),
        aggregate_id: String::new(),
        aggregate_type: AggregateType::Unknown,
        version: 0,
        timestamp: 0,
        user_id: None,
        session_id: None,
        correlation_id: None,
        causation_id: None,
        metadata: HashMap::new(),
    }
}
