//! SOCIAL aggregates: friend requests and posts.

use dietstream_schemas::types::{self, RejectionReason};
use dietstream_schemas::{Command, Event};

use super::harness::*;

#[test]
fn a_friend_request_is_sent_accepted_with_both_users_in_the_event() {
    let g = given([send_request(1, "ada", "bob")]);
    let events = g
        .when(accept(1, Some("bob")))
        .then_types(&["social.friend.request.accepted"])
        .to_vec();
    match &events[0] {
        Event::FriendRequestAccepted(e) => {
            assert_eq!(
                (
                    e.payload.from_user_id.as_str(),
                    e.payload.to_user_id.as_str()
                ),
                ("ada", "bob")
            );
            assert_eq!(e.header.version, 2);
        }
        other => panic!("{other:?}"),
    }
    g.when(decline(1, None))
        .then_types(&["social.friend.request.declined"]);
}

#[test]
fn sending_a_friend_request_to_oneself_is_a_rule_violation() {
    nothing()
        .when(send_request(1, "ada", "ada"))
        .then_violates();
}

#[test]
fn friend_request_values_are_validated() {
    let c = with(send_request(1, "ada", "bob"), |c| {
        if let Command::SendFriendRequest(r) = c {
            r.payload.request_id = id(2);
        }
    });
    nothing().when(c).then_invalid("payload.request_id");
    nothing()
        .when(send_request(1, "", "bob"))
        .then_invalid("payload.from_user_id");
    nothing()
        .when(send_request(1, "ada", " "))
        .then_invalid("payload.to_user_id");
}

#[test]
fn accepting_or_declining_twice_or_after_the_other_is_a_rule_violation() {
    let mut accepted = given([send_request(1, "ada", "bob")]);
    accepted.run(accept(1, None));
    accepted.when(accept(1, None)).then_violates();
    accepted.when(decline(1, None)).then_violates();
    let mut declined = given([send_request(1, "ada", "bob")]);
    declined.run(decline(1, None));
    declined.when(decline(1, None)).then_violates();
    declined.when(accept(1, None)).then_violates();
}

#[test]
fn only_the_recipient_may_answer_when_the_actor_is_known() {
    let g = given([send_request(1, "ada", "bob")]);
    let r = g.when(accept(1, Some("ada"))).then_violates().clone();
    assert!(r.message.contains("bob"), "{}", r.message);
    g.when(accept(1, Some("carol"))).then_violates();
    g.when(decline(1, Some("ada"))).then_violates();
    g.when(accept(1, None))
        .then_types(&["social.friend.request.accepted"]);
}

#[test]
fn answering_with_another_request_id_is_invalid() {
    let g = given([send_request(1, "ada", "bob")]);
    let c = with(accept(1, None), |c| {
        if let Command::AcceptFriendRequest(a) = c {
            a.payload.request_id = id(3);
        }
    });
    g.when(c).then_invalid("payload.request_id");
}

#[test]
fn answering_a_post_is_a_rule_violation() {
    given([create_post(1, "ada")])
        .when(accept(1, None))
        .then_violates();
}

#[test]
fn post_values_are_validated() {
    type Change = Box<dyn Fn(&mut types::CreatePostPayload)>;
    let cases: Vec<(&str, Change)> = vec![
        ("payload.post_id", Box::new(|p| p.post_id = id(99))),
        (
            "payload.author_user_id",
            Box::new(|p| p.author_user_id = String::new()),
        ),
        (
            "payload.kind",
            Box::new(|p| p.kind = types::PostKind::Unknown),
        ),
        (
            "payload.visibility",
            Box::new(|p| p.visibility = types::PostVisibility::Unknown),
        ),
        ("payload.text", Box::new(|p| p.text = String::new())),
        (
            "payload.shared_ref_id",
            Box::new(|p| p.kind = types::PostKind::MealShare),
        ),
        (
            "payload.attachment_ids[1]",
            Box::new(|p| p.attachment_ids = vec!["a".into(), String::new()]),
        ),
    ];
    for (field, change) in cases {
        let c = with(create_post(2, "ada"), |c| {
            if let Command::CreatePost(p) = c {
                change(&mut p.payload);
            }
        });
        nothing().when(c).then_invalid(field);
    }
    let share = with(create_post(2, "ada"), |c| {
        if let Command::CreatePost(p) = c {
            p.payload.kind = types::PostKind::MealShare;
            p.payload.text = String::new();
            p.payload.shared_ref_id = Some(id(5).to_string());
        }
    });
    nothing().when(share).then_types(&["social.post.created"]);
}

#[test]
fn likes_are_per_user_and_a_repeated_reaction_appends_nothing() {
    let mut g = given([create_post(2, "ada")]);
    g.run(like(2, "bob", types::Reaction::Like));
    g.when(like(2, "bob", types::Reaction::Like))
        .then_types(&[]);
    g.when(like(2, "bob", types::Reaction::Love))
        .then_types(&["social.post.liked"]);
    g.when(like(2, "carol", types::Reaction::Like))
        .then_types(&["social.post.liked"]);
}

#[test]
fn liking_or_commenting_a_missing_post_is_unknown_aggregate() {
    nothing()
        .when(like(2, "bob", types::Reaction::Like))
        .then_rejected(RejectionReason::UnknownAggregate);
    nothing()
        .when(comment(2, 3, None))
        .then_rejected(RejectionReason::UnknownAggregate);
}

#[test]
fn liking_or_commenting_a_friend_request_is_a_rule_violation() {
    let g = given([send_request(2, "ada", "bob")]);
    g.when(like(2, "bob", types::Reaction::Like))
        .then_violates();
    g.when(comment(2, 3, None)).then_violates();
}

#[test]
fn like_and_comment_values_are_validated() {
    let g = given([create_post(2, "ada")]);
    g.when(like(2, "bob", types::Reaction::Unknown))
        .then_invalid("payload.reaction");
    g.when(like(2, "", types::Reaction::Like))
        .then_invalid("payload.liker_user_id");
    let c = with(like(2, "bob", types::Reaction::Like), |c| {
        if let Command::LikePost(l) = c {
            l.payload.post_id = id(7);
        }
    });
    g.when(c).then_invalid("payload.post_id");
    let c = with(comment(2, 3, None), |c| {
        if let Command::CommentOnPost(m) = c {
            m.payload.text = " ".into();
        }
    });
    g.when(c).then_invalid("payload.text");
}

#[test]
fn replies_need_a_known_parent_and_comment_ids_are_unique() {
    let mut g = given([create_post(2, "ada")]);
    g.when(comment(2, 4, Some(3))).then_violates();
    g.run(comment(2, 3, None));
    g.when(comment(2, 4, Some(3)))
        .then_types(&["social.post.commented"]);
    g.when(comment(2, 3, None)).then_violates();
}
