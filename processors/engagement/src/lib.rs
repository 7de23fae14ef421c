//! The user engagement read-model processor: active users per day, week and month, streaks,
//! sessions, last activity, XP and level, an engagement score, social activity and
//! registration-week cohorts, from `diet.events.user` and `diet.events.social`.
//!
//! Entities (each within one source partition, DESIGN decision 4):
//! - `user:<id>` on a user partition: the user's own figures ([`USERS`], [`SESSIONS`]);
//! - `social:<id>` on a social partition: that user's social counts there ([`SOCIAL`]);
//!
//! Both kinds also keep the user's recent active days through their source partition, from
//! which they write [`ACTIVE_USER_DAYS`] and report their share of the partial active-user and
//! cohort counts ([`ACTIVE_USERS`], [`COHORTS`]: one row per source partition, summed when
//! read) to the runtime.

mod activity;
mod calendar;
mod social;
mod user;

use dietstream_runtime::{Effects, Origin, PartialTable, Projection, RuleError, Sum, Table};
use dietstream_schemas::Event;
use serde::{Deserialize, Serialize};

use crate::activity::{ActiveDays, Activity};
use crate::calendar::day_of;
use crate::social::{SocialAction, SocialCounts};
use crate::user::{Progress, UserEngagement};

/// The processor's name in the topology.
pub const PROCESSOR: &str = "engagement";

/// One row per user: registration, last activity, XP and level, streak, sessions, score.
pub const USERS: Table = Table {
    name: "engagement_users",
    key: &["user_id"],
    values: &[
        "registered_at",
        "cohort_week",
        "last_activity_at",
        "xp",
        "level",
        "next_level_xp",
        "current_streak_days",
        "streak_started_on",
        "longest_streak_days",
        "last_active_day",
        "active_days_total",
        "active_days_28",
        "sessions_total",
        "engagement_score",
    ],
    set_once: &[],
};

/// One row per session of a user.
pub const SESSIONS: Table = Table {
    name: "engagement_user_sessions",
    key: &["user_id", "started_at"],
    values: &["session_id", "ended_at", "events", "duration_seconds"],
    set_once: &[],
};

/// One row per user and social source partition: the user's social counts there.
pub const SOCIAL: Table = Table {
    name: "engagement_user_social",
    key: &["user_id", "source_partition"],
    values: &[
        "posts",
        "comments",
        "likes",
        "friend_requests_sent",
        "friend_requests_answered",
        "friends_added",
        "last_social_at",
    ],
    set_once: &[],
};

/// Distinct active users of one period in one source partition (a partial count).
pub const ACTIVE_USERS: Table = Table {
    name: "engagement_active_users",
    key: &["period", "period_start", "source", "source_partition"],
    values: &["users"],
    set_once: &[],
};

/// One row per user active on a day through one source partition.
pub const ACTIVE_USER_DAYS: Table = Table {
    name: "engagement_active_user_days",
    key: &["day", "user_id", "source", "source_partition"],
    values: &["first_activity_at"],
    set_once: &[],
};

/// Users of a registration week active in a later week, per source partition.
pub const COHORTS: Table = Table {
    name: "engagement_cohorts",
    key: &["cohort_week", "week_offset", "source_partition"],
    values: &["active_users"],
    set_once: &[],
};

/// The partial tables: one count per key and source partition, summed when read.
const PARTIALS: &[PartialTable] = &[
    PartialTable {
        name: ACTIVE_USERS.name,
        sums: &[Sum::BigInt],
    },
    PartialTable {
        name: COHORTS.name,
        sums: &[Sum::BigInt],
    },
];

const TABLES: &[Table] = &[
    USERS,
    SESSIONS,
    SOCIAL,
    ACTIVE_USERS,
    ACTIVE_USER_DAYS,
    COHORTS,
];

/// The example queries of the README, verbatim.
pub const EXAMPLE_QUERIES: &[&str] = &[
    "SELECT user_id, xp, level, next_level_xp, current_streak_days, longest_streak_days, last_activity_at, engagement_score FROM {keyspace}.engagement_users WHERE user_id = 'user-1';",
    "SELECT started_at, ended_at, session_id, events, duration_seconds FROM {keyspace}.engagement_user_sessions WHERE user_id = 'user-1' ORDER BY started_at DESC LIMIT 10;",
    "SELECT SUM(posts) AS posts, SUM(comments) AS comments, SUM(likes) AS likes, SUM(friends_added) AS friends_added, MAX(last_social_at) AS last_social_at FROM {keyspace}.engagement_user_social WHERE user_id = 'user-1';",
    "SELECT SUM(users) AS daily_active_users FROM {keyspace}.engagement_active_users WHERE period = 'day' AND period_start = '2026-11-20' AND source = 'user';",
    "SELECT source, source_partition, users FROM {keyspace}.engagement_active_users WHERE period = 'week' AND period_start = '2026-11-16';",
    "SELECT SUM(users) AS monthly_active_users FROM {keyspace}.engagement_active_users WHERE period = 'month' AND period_start = '2026-11-01' AND source = 'user';",
    "SELECT user_id, COUNT(*) AS sources FROM {keyspace}.engagement_active_user_days WHERE day = '2026-11-20' GROUP BY user_id;",
    "SELECT user_id, source, source_partition, first_activity_at FROM {keyspace}.engagement_active_user_days WHERE day = '2026-11-20';",
    "SELECT week_offset, SUM(active_users) AS active_users FROM {keyspace}.engagement_cohorts WHERE cohort_week = '2026-11-16' GROUP BY week_offset;",
];

/// Seconds of inactivity that end a session, by default: 30 minutes, the usual web-analytics
/// session timeout.
const fn default_session_gap_seconds() -> i64 {
    30 * 60
}

/// The processor's tunables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngagementConfig {
    /// A user's activity more than this many seconds after the previous one starts a new
    /// session, even with the same session id.
    #[serde(default = "default_session_gap_seconds")]
    pub session_gap_seconds: i64,
}

impl Default for EngagementConfig {
    fn default() -> Self {
        EngagementConfig {
            session_gap_seconds: default_session_gap_seconds(),
        }
    }
}

/// The state of one entity: the part of its kind is set (see the crate docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngagementState {
    /// A `user:<id>` entity's state.
    #[serde(default)]
    user: Option<UserEngagement>,
    /// A `social:<id>` entity's state.
    #[serde(default)]
    social: Option<SocialCounts>,
    /// The user's recent active days through the entity's source partition (both kinds).
    #[serde(default)]
    days: Option<ActiveDays>,
}

/// The engagement projection.
#[derive(Debug, Clone, Default)]
pub struct EngagementProjection {
    config: EngagementConfig,
}

impl EngagementProjection {
    /// A projection with the default tunables.
    pub fn new() -> Self {
        Self::default()
    }

    /// A projection with these tunables.
    pub fn with_config(config: EngagementConfig) -> Self {
        EngagementProjection { config }
    }
}

/// The entity an event that breaks a rule is refused by (once, whatever users it names).
const REFUSED_ENTITY: &str = "refused";
const USER_PREFIX: &str = "user:";
const SOCIAL_PREFIX: &str = "social:";

/// What an event means to this processor.
enum Meaning<'e> {
    /// A user acted through their own aggregate.
    Acted {
        user_id: &'e str,
        registers: bool,
        progress: Option<Progress>,
    },
    /// The user's XP or level changed without an action of theirs.
    Progressed {
        user_id: &'e str,
        progress: Progress,
    },
    /// Social actions, one per user concerned (the actor first).
    Social(Vec<(&'e str, SocialAction)>),
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), RuleError> {
    if ok {
        Ok(())
    } else {
        Err(RuleError(message()))
    }
}

/// Reads the event; what breaks a rule of this processor is a [`RuleError`].
fn meaning(event: &Event) -> Result<Option<Meaning<'_>>, RuleError> {
    let header = event.header();
    check(header.timestamp >= 0, || {
        format!("{} has a negative timestamp", header.event_type)
    })?;
    let own = header.aggregate_id.as_str();
    let acted = |registers| Meaning::Acted {
        user_id: own,
        registers,
        progress: None,
    };
    let meaning = match event {
        Event::UserRegistered(_) => acted(true),
        Event::UserProfileUpdated(_)
        | Event::MealLogged(_)
        | Event::MealUpdated(_)
        | Event::MealDeleted(_)
        | Event::WaterIntakeLogged(_)
        | Event::NutritionGoalUpdated(_)
        | Event::QuestStarted(_) => acted(false),
        Event::QuestRewardClaimed(e) => {
            let xp = e.payload.xp;
            check(xp >= 0, || {
                format!("quest.reward.claimed with negative xp {xp}")
            })?;
            Meaning::Acted {
                user_id: own,
                registers: false,
                progress: Some(Progress::Added(xp.into())),
            }
        }
        Event::UserXpAwarded(e) => {
            let p = &e.payload;
            check(p.xp >= 0 && p.total_xp >= 0, || {
                format!(
                    "user.xp.awarded with negative xp {} or total {}",
                    p.xp, p.total_xp
                )
            })?;
            Meaning::Progressed {
                user_id: own,
                progress: Progress::Total(p.total_xp),
            }
        }
        Event::UserAchievementUnlocked(e) => {
            let xp = e.payload.xp_awarded;
            check(xp >= 0, || {
                format!("user.achievement.unlocked with negative xp {xp}")
            })?;
            Meaning::Progressed {
                user_id: own,
                progress: Progress::Added(xp.into()),
            }
        }
        Event::UserLevelUp(e) => {
            let p = &e.payload;
            check(
                p.new_level > p.previous_level && p.previous_level >= 1 && p.total_xp >= 0,
                || {
                    format!(
                        "user.level.up from {} to {} with total {}",
                        p.previous_level, p.new_level, p.total_xp
                    )
                },
            )?;
            Meaning::Progressed {
                user_id: own,
                progress: Progress::Level(p.new_level, p.total_xp),
            }
        }
        Event::PostCreated(e) => Meaning::Social(vec![(
            e.payload.author_user_id.as_str(),
            SocialAction::Posted,
        )]),
        Event::PostCommented(e) => Meaning::Social(vec![(
            e.payload.commenter_user_id.as_str(),
            SocialAction::Commented,
        )]),
        Event::PostLiked(e) => Meaning::Social(vec![(
            e.payload.liker_user_id.as_str(),
            SocialAction::Liked,
        )]),
        Event::FriendRequestSent(e) => {
            friends_differ(&e.payload.from_user_id, &e.payload.to_user_id)?;
            Meaning::Social(vec![(
                e.payload.from_user_id.as_str(),
                SocialAction::RequestSent,
            )])
        }
        Event::FriendRequestAccepted(e) => {
            friends_differ(&e.payload.from_user_id, &e.payload.to_user_id)?;
            Meaning::Social(vec![
                (e.payload.to_user_id.as_str(), SocialAction::RequestAccepted),
                (
                    e.payload.from_user_id.as_str(),
                    SocialAction::RequestWasAccepted,
                ),
            ])
        }
        Event::FriendRequestDeclined(e) => {
            friends_differ(&e.payload.from_user_id, &e.payload.to_user_id)?;
            Meaning::Social(vec![(
                e.payload.to_user_id.as_str(),
                SocialAction::RequestDeclined,
            )])
        }
        _ => return Ok(None),
    };
    match &meaning {
        Meaning::Acted { user_id, .. } | Meaning::Progressed { user_id, .. } => {
            check(!user_id.is_empty(), || {
                format!("{} has an empty aggregate id", header.event_type)
            })?;
        }
        Meaning::Social(users) => {
            check(users.iter().all(|(u, _)| !u.is_empty()), || {
                format!("{} names an empty user id", header.event_type)
            })?;
        }
    }
    Ok(Some(meaning))
}

fn friends_differ(from: &str, to: &str) -> Result<(), RuleError> {
    check(from != to, || {
        format!("a friend request from {from} to themselves")
    })
}

/// Event types this processor reads; every other record is skipped undecoded.
const WANTED: &[&str] = &[
    "user.registered",
    "user.profile.updated",
    "user.xp.awarded",
    "user.level.up",
    "user.achievement.unlocked",
    "nutrition.meal.logged",
    "nutrition.meal.updated",
    "nutrition.meal.deleted",
    "nutrition.water.logged",
    "nutrition.goal.updated",
    "quest.started",
    "quest.reward.claimed",
    "social.post.created",
    "social.post.commented",
    "social.post.liked",
    "social.friend.request.sent",
    "social.friend.request.accepted",
    "social.friend.request.declined",
];

impl Projection for EngagementProjection {
    type State = EngagementState;

    fn name(&self) -> &'static str {
        PROCESSOR
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn partials(&self) -> &'static [PartialTable] {
        PARTIALS
    }

    fn migrations(&self) -> Vec<String> {
        MIGRATIONS.iter().map(|m| (*m).to_owned()).collect()
    }

    fn wants(&self, event_type: &str) -> bool {
        WANTED.contains(&event_type)
    }

    fn entities(&self, event: &Event, _origin: &Origin<'_>) -> Vec<String> {
        match meaning(event) {
            Ok(Some(Meaning::Acted { user_id, .. } | Meaning::Progressed { user_id, .. })) => {
                vec![format!("{USER_PREFIX}{user_id}")]
            }
            Ok(Some(Meaning::Social(users))) => users
                .iter()
                .map(|(u, _)| format!("{SOCIAL_PREFIX}{u}"))
                .collect(),
            Ok(None) => Vec::new(),
            // One entity, so that `apply` reports the broken rule once.
            Err(_) => vec![REFUSED_ENTITY.to_owned()],
        }
    }

    fn apply(
        &self,
        entity: &str,
        state: &mut EngagementState,
        event: &Event,
        origin: &Origin<'_>,
    ) -> Result<Effects, RuleError> {
        let Some(meaning) = meaning(event)? else {
            return Ok(Effects::default());
        };
        let header = event.header();
        let at = header.timestamp;
        let day = day_of(at);
        let mut effects = Effects::default();
        if let Some(user_id) = entity.strip_prefix(USER_PREFIX) {
            let user = state.user.get_or_insert_with(Default::default);
            match meaning {
                Meaning::Acted {
                    registers,
                    progress,
                    ..
                } => {
                    let session_id = header.session_id.as_deref();
                    effects.rows =
                        user.record_activity(user_id, at, day, session_id, registers, &self.config);
                    if let Some(progress) = progress {
                        effects.rows.extend(user.progress(user_id, progress));
                    }
                    let activity = Activity {
                        user_id,
                        source: "user",
                        at,
                        day,
                        registers,
                    };
                    state.days.get_or_insert_with(ActiveDays::default).record(
                        &activity,
                        origin.partition,
                        &mut effects,
                    );
                }
                Meaning::Progressed { progress, .. } => {
                    effects.rows = user.progress(user_id, progress);
                }
                Meaning::Social(_) => {}
            }
        } else if let Some(user_id) = entity.strip_prefix(SOCIAL_PREFIX) {
            let Meaning::Social(users) = meaning else {
                return Ok(effects);
            };
            let counts = state.social.get_or_insert_with(Default::default);
            effects.rows = users
                .iter()
                .filter(|(u, _)| *u == user_id)
                .map(|(_, action)| counts.record(user_id, origin.partition, *action, at))
                .collect();
            // The first user named is the one who acted.
            if users.first().is_some_and(|(actor, _)| *actor == user_id) {
                let activity = Activity {
                    user_id,
                    source: "social",
                    at,
                    day,
                    registers: false,
                };
                state.days.get_or_insert_with(ActiveDays::default).record(
                    &activity,
                    origin.partition,
                    &mut effects,
                );
            }
        }
        Ok(effects)
    }
}

/// The CQL tables, created idempotently.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {keyspace}.engagement_users (
        user_id text PRIMARY KEY,
        registered_at timestamp,
        cohort_week date,
        last_activity_at timestamp,
        xp bigint,
        level int,
        next_level_xp bigint,
        current_streak_days int,
        streak_started_on date,
        longest_streak_days int,
        last_active_day date,
        active_days_total int,
        active_days_28 int,
        sessions_total bigint,
        engagement_score int)",
    "CREATE TABLE IF NOT EXISTS {keyspace}.engagement_user_sessions (
        user_id text,
        started_at timestamp,
        session_id text,
        ended_at timestamp,
        events int,
        duration_seconds bigint,
        PRIMARY KEY ((user_id), started_at)) WITH CLUSTERING ORDER BY (started_at DESC)",
    "CREATE TABLE IF NOT EXISTS {keyspace}.engagement_user_social (
        user_id text,
        source_partition int,
        posts bigint,
        comments bigint,
        likes bigint,
        friend_requests_sent bigint,
        friend_requests_answered bigint,
        friends_added bigint,
        last_social_at timestamp,
        PRIMARY KEY ((user_id), source_partition))",
    "CREATE TABLE IF NOT EXISTS {keyspace}.engagement_active_users (
        period text,
        period_start date,
        source text,
        source_partition int,
        users bigint,
        PRIMARY KEY ((period, period_start), source, source_partition))",
    "CREATE TABLE IF NOT EXISTS {keyspace}.engagement_active_user_days (
        day date,
        user_id text,
        source text,
        source_partition int,
        first_activity_at timestamp,
        PRIMARY KEY ((day), user_id, source, source_partition))",
    "CREATE TABLE IF NOT EXISTS {keyspace}.engagement_cohorts (
        cohort_week date,
        week_offset int,
        source_partition int,
        active_users bigint,
        PRIMARY KEY ((cohort_week), week_offset, source_partition))",
];

#[cfg(test)]
mod tests;
