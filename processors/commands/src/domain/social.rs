//! The SOCIAL aggregates: a friend request (aggregate id = request id) or a post with its likes
//! and comments (aggregate id = post id).

use std::collections::{BTreeMap, BTreeSet};

use dietstream_schemas::types::{self, PostKind, PostVisibility, Reaction};
use dietstream_schemas::{Command, Event};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validate::{self, known, non_empty, Check};
use super::{blank_header, Emitter, Rejection, State};

/// A SOCIAL aggregate is one of two things, fixed by the event that created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SocialState {
    /// A friend request.
    FriendRequest(FriendRequestState),
    /// A post.
    Post(PostState),
}

/// Where a friend request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FriendRequestStatus {
    /// Sent, not answered.
    Pending,
    /// Accepted by the recipient.
    Accepted,
    /// Declined by the recipient.
    Declined,
}

/// A friend request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FriendRequestState {
    /// Sender.
    pub from_user_id: String,
    /// Recipient.
    pub to_user_id: String,
    /// Status.
    pub status: FriendRequestStatus,
}

/// A post with its reactions and comments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostState {
    /// Author.
    pub author_user_id: String,
    /// The current reaction of each user who reacted.
    pub reactions: BTreeMap<String, Reaction>,
    /// Ids of the comments (replies must name one of them).
    pub comments: BTreeSet<Uuid>,
}

/// Applies a SOCIAL event; refuses (naming what the aggregate holds) a post event on a friend
/// request or the other way round, leaving the state unchanged.
pub(crate) fn apply(state: &mut State, event: &Event) -> Result<(), &'static str> {
    let is_request = matches!(
        event,
        Event::FriendRequestSent(_)
            | Event::FriendRequestAccepted(_)
            | Event::FriendRequestDeclined(_)
    );
    match (&*state, is_request) {
        (State::Social(SocialState::Post(_)), true) => return Err("a post"),
        (State::Social(SocialState::FriendRequest(_)), false) => return Err("a friend request"),
        _ => {}
    }
    match event {
        Event::FriendRequestSent(e) => {
            *state = request(
                &e.payload.from_user_id,
                &e.payload.to_user_id,
                FriendRequestStatus::Pending,
            );
        }
        Event::FriendRequestAccepted(e) => {
            *state = request(
                &e.payload.from_user_id,
                &e.payload.to_user_id,
                FriendRequestStatus::Accepted,
            );
        }
        Event::FriendRequestDeclined(e) => {
            *state = request(
                &e.payload.from_user_id,
                &e.payload.to_user_id,
                FriendRequestStatus::Declined,
            );
        }
        Event::PostCreated(e) => {
            let (reactions, comments) = match std::mem::take(state) {
                State::Social(SocialState::Post(p)) => (p.reactions, p.comments),
                _ => Default::default(),
            };
            *state = State::Social(SocialState::Post(PostState {
                author_user_id: e.payload.author_user_id.clone(),
                reactions,
                comments,
            }));
        }
        Event::PostLiked(e) => {
            post_mut(state)
                .reactions
                .insert(e.payload.liker_user_id.clone(), e.payload.reaction);
        }
        Event::PostCommented(e) => {
            post_mut(state).comments.insert(e.payload.comment_id);
        }
        _ => {}
    }
    Ok(())
}

fn request(from: &str, to: &str, status: FriendRequestStatus) -> State {
    State::Social(SocialState::FriendRequest(FriendRequestState {
        from_user_id: from.to_owned(),
        to_user_id: to.to_owned(),
        status,
    }))
}

/// The post, created empty (author unknown) when a like or comment comes first, which only a
/// hand-made log can do; that keeps apply total.
fn post_mut(state: &mut State) -> &mut PostState {
    if !matches!(state, State::Social(SocialState::Post(_))) {
        *state = State::Social(SocialState::Post(PostState {
            author_user_id: String::new(),
            reactions: BTreeMap::new(),
            comments: BTreeSet::new(),
        }));
    }
    match state {
        State::Social(SocialState::Post(p)) => p,
        _ => unreachable!("just set to a post"),
    }
}

fn same_id(payload_id: &Uuid, aggregate_id: &str, field: &str) -> Check {
    if payload_id.to_string() == aggregate_id {
        Ok(())
    } else {
        Err(Rejection::validation(
            field,
            format!("{field} {payload_id} is not the aggregate id {aggregate_id:?}"),
        ))
    }
}

pub(crate) fn decide(em: &mut Emitter<'_>, command: &Command) -> Result<(), Rejection> {
    let header = em.command();
    let aggregate_id = header.aggregate_id.as_str();
    validate_command(command, aggregate_id)?;
    let (request_state, post_state) = match &em.work.state {
        State::Social(SocialState::FriendRequest(r)) => (Some(r), None),
        State::Social(SocialState::Post(p)) => (None, Some(p)),
        _ => (None, None),
    };
    let answer = |verb: &str| -> Result<&FriendRequestState, Rejection> {
        let Some(r) = request_state else {
            return Err(Rejection::rule(format!(
                "aggregate {aggregate_id:?} is a post, not a friend request"
            )));
        };
        if r.status != FriendRequestStatus::Pending {
            return Err(Rejection::rule(format!(
                "friend request {aggregate_id} was already {:?}; it cannot be {verb}",
                r.status
            )));
        }
        if let Some(actor) = &header.user_id {
            if *actor != r.to_user_id {
                return Err(Rejection::rule(format!(
                    "only the recipient {:?} can answer friend request {aggregate_id}, not {actor:?}",
                    r.to_user_id
                )));
            }
        }
        Ok(r)
    };
    let post = || -> Result<&PostState, Rejection> {
        post_state.ok_or_else(|| {
            Rejection::rule(format!(
                "aggregate {aggregate_id:?} is a friend request, not a post"
            ))
        })
    };
    let event = match command {
        Command::SendFriendRequest(c) => {
            let p = &c.payload;
            if p.from_user_id == p.to_user_id {
                return Err(Rejection::rule(
                    "a user cannot send a friend request to themselves",
                ));
            }
            Event::FriendRequestSent(types::FriendRequestSent {
                header: blank_header(),
                payload: types::FriendRequestSentPayload {
                    request_id: p.request_id,
                    from_user_id: p.from_user_id.clone(),
                    to_user_id: p.to_user_id.clone(),
                },
            })
        }
        Command::AcceptFriendRequest(c) => {
            let r = answer("accepted")?;
            Event::FriendRequestAccepted(types::FriendRequestAccepted {
                header: blank_header(),
                payload: types::FriendRequestAcceptedPayload {
                    request_id: c.payload.request_id,
                    from_user_id: r.from_user_id.clone(),
                    to_user_id: r.to_user_id.clone(),
                },
            })
        }
        Command::DeclineFriendRequest(c) => {
            let r = answer("declined")?;
            Event::FriendRequestDeclined(types::FriendRequestDeclined {
                header: blank_header(),
                payload: types::FriendRequestDeclinedPayload {
                    request_id: c.payload.request_id,
                    from_user_id: r.from_user_id.clone(),
                    to_user_id: r.to_user_id.clone(),
                    reason: c.payload.reason.clone(),
                },
            })
        }
        Command::CreatePost(c) => {
            let p = &c.payload;
            Event::PostCreated(types::PostCreated {
                header: blank_header(),
                payload: types::PostCreatedPayload {
                    post_id: p.post_id,
                    author_user_id: p.author_user_id.clone(),
                    kind: p.kind,
                    text: p.text.clone(),
                    visibility: p.visibility,
                    attachment_ids: p.attachment_ids.clone(),
                    shared_ref_id: p.shared_ref_id.clone(),
                },
            })
        }
        Command::LikePost(c) => {
            let p = &c.payload;
            if post()?.reactions.get(&p.liker_user_id) == Some(&p.reaction) {
                // The same reaction again changes nothing.
                return Ok(());
            }
            Event::PostLiked(types::PostLiked {
                header: blank_header(),
                payload: types::PostLikedPayload {
                    post_id: p.post_id,
                    liker_user_id: p.liker_user_id.clone(),
                    reaction: p.reaction,
                },
            })
        }
        Command::CommentOnPost(c) => {
            let p = &c.payload;
            let post = post()?;
            if post.comments.contains(&p.comment_id) {
                return Err(Rejection::rule(format!(
                    "comment {} already exists",
                    p.comment_id
                )));
            }
            if let Some(parent) = p.parent_comment_id {
                if !post.comments.contains(&parent) {
                    return Err(Rejection::rule(format!(
                        "parent comment {parent} does not exist on post {aggregate_id}"
                    )));
                }
            }
            Event::PostCommented(types::PostCommented {
                header: blank_header(),
                payload: types::PostCommentedPayload {
                    post_id: p.post_id,
                    comment_id: p.comment_id,
                    commenter_user_id: p.commenter_user_id.clone(),
                    text: p.text.clone(),
                    parent_comment_id: p.parent_comment_id,
                },
            })
        }
        _ => {
            return Err(Rejection::rule(format!(
                "{} is not a SOCIAL command",
                command.record_type()
            )))
        }
    };
    em.emit(event)
}

fn validate_command(command: &Command, aggregate_id: &str) -> Check {
    match command {
        Command::SendFriendRequest(c) => {
            let p = &c.payload;
            same_id(&p.request_id, aggregate_id, "payload.request_id")?;
            non_empty(&p.from_user_id, "payload.from_user_id")?;
            non_empty(&p.to_user_id, "payload.to_user_id")
        }
        Command::AcceptFriendRequest(c) => {
            same_id(&c.payload.request_id, aggregate_id, "payload.request_id")
        }
        Command::DeclineFriendRequest(c) => {
            same_id(&c.payload.request_id, aggregate_id, "payload.request_id")
        }
        Command::CreatePost(c) => {
            let p = &c.payload;
            same_id(&p.post_id, aggregate_id, "payload.post_id")?;
            non_empty(&p.author_user_id, "payload.author_user_id")?;
            known(p.kind == PostKind::Unknown, "payload.kind")?;
            known(
                p.visibility == PostVisibility::Unknown,
                "payload.visibility",
            )?;
            if p.kind == PostKind::Text {
                non_empty(&p.text, "payload.text")?;
            } else {
                match &p.shared_ref_id {
                    Some(r) => non_empty(r, "payload.shared_ref_id")?,
                    None => {
                        return Err(Rejection::validation(
                            "payload.shared_ref_id",
                            format!("a {:?} post must name what it shares", p.kind),
                        ))
                    }
                }
            }
            for (i, a) in p.attachment_ids.iter().enumerate() {
                non_empty(a, &format!("payload.attachment_ids[{i}]"))?;
            }
            Ok(())
        }
        Command::LikePost(c) => {
            let p = &c.payload;
            same_id(&p.post_id, aggregate_id, "payload.post_id")?;
            non_empty(&p.liker_user_id, "payload.liker_user_id")?;
            known(p.reaction == Reaction::Unknown, "payload.reaction")
        }
        Command::CommentOnPost(c) => {
            let p = &c.payload;
            same_id(&p.post_id, aggregate_id, "payload.post_id")?;
            non_empty(&p.commenter_user_id, "payload.commenter_user_id")?;
            validate::non_empty(&p.text, "payload.text")
        }
        _ => Ok(()),
    }
}
