//! The per-user entity `social:<id>` of a `diet.events.social` partition: what one user did
//! socially through the aggregates (friend requests, posts) of that partition. A user's
//! social figures are the sum of these rows over the source partitions.

use dietstream_runtime::Row;
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};

use crate::calendar::cql_timestamp;
use crate::SOCIAL;

/// One social action, seen from one of the users it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocialAction {
    /// Created a post.
    Posted,
    /// Commented on a post.
    Commented,
    /// Reacted to a post.
    Liked,
    /// Sent a friend request.
    RequestSent,
    /// Accepted a friend request sent to them (also a friend added).
    RequestAccepted,
    /// Declined a friend request sent to them.
    RequestDeclined,
    /// Their friend request was accepted: a friend added, not an activity of theirs.
    RequestWasAccepted,
}

impl SocialAction {
    /// True when the user did it (and so was active).
    pub(crate) fn is_activity(self) -> bool {
        self != SocialAction::RequestWasAccepted
    }
}

/// One user's social counts in one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SocialCounts {
    posts: i64,
    comments: i64,
    likes: i64,
    friend_requests_sent: i64,
    friend_requests_answered: i64,
    friends_added: i64,
    last_social_at: Option<i64>,
}

impl SocialCounts {
    /// Counts the action at `at` (µs) and returns the user's row of this partition.
    pub(crate) fn record(
        &mut self,
        user_id: &str,
        partition: i32,
        action: SocialAction,
        at: i64,
    ) -> Row {
        match action {
            SocialAction::Posted => self.posts += 1,
            SocialAction::Commented => self.comments += 1,
            SocialAction::Liked => self.likes += 1,
            SocialAction::RequestSent => self.friend_requests_sent += 1,
            SocialAction::RequestAccepted => {
                self.friend_requests_answered += 1;
                self.friends_added += 1;
            }
            SocialAction::RequestDeclined => self.friend_requests_answered += 1,
            SocialAction::RequestWasAccepted => self.friends_added += 1,
        }
        if action.is_activity() && self.last_social_at.is_none_or(|last| at > last) {
            self.last_social_at = Some(at);
        }
        Row::upsert(
            SOCIAL.name,
            vec![CqlValue::Text(user_id.to_owned()), CqlValue::Int(partition)],
            vec![
                Some(CqlValue::BigInt(self.posts)),
                Some(CqlValue::BigInt(self.comments)),
                Some(CqlValue::BigInt(self.likes)),
                Some(CqlValue::BigInt(self.friend_requests_sent)),
                Some(CqlValue::BigInt(self.friend_requests_answered)),
                Some(CqlValue::BigInt(self.friends_added)),
                self.last_social_at.map(cql_timestamp),
            ],
        )
    }
}
