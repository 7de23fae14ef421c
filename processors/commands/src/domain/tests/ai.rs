//! AI aggregate: implicit creation and references between queries, responses, insights,
//! recommendations and feedback.

use dietstream_schemas::types::FeedbackTargetKind;
use dietstream_schemas::Command;

use super::harness::*;

#[test]
fn any_ai_command_creates_the_aggregate() {
    nothing()
        .when(ai_query(1))
        .then_types(&["ai.query.received"]);
    nothing()
        .when(insight(1))
        .then_types(&["ai.insight.created"]);
    nothing()
        .when(recommendation(1, None))
        .then_types(&["ai.recommendation.given"]);
}

#[test]
fn a_response_needs_a_known_query() {
    nothing().when(ai_response(1, 2)).then_violates();
    let g = given([ai_query(1)]);
    g.when(ai_response(5, 2)).then_violates();
    g.when(ai_response(1, 2))
        .then_types(&["ai.response.generated"]);
}

#[test]
fn a_recommendation_needs_a_known_insight_when_it_names_one() {
    let g = given([ai_query(1)]);
    g.when(recommendation(2, Some(3))).then_violates();
    let g = given([insight(3)]);
    g.when(recommendation(2, Some(3)))
        .then_types(&["ai.recommendation.given"]);
}

#[test]
fn feedback_needs_a_known_target_of_its_kind() {
    let g = given([
        ai_query(1),
        ai_response(1, 2),
        insight(3),
        recommendation(4, Some(3)),
    ]);
    g.when(feedback(9, 2, FeedbackTargetKind::Response, 5))
        .then_types(&["ai.feedback.received"]);
    g.when(feedback(9, 3, FeedbackTargetKind::Insight, 1))
        .then_types(&["ai.feedback.received"]);
    g.when(feedback(9, 4, FeedbackTargetKind::Recommendation, 3))
        .then_types(&["ai.feedback.received"]);
    g.when(feedback(9, 3, FeedbackTargetKind::Response, 5))
        .then_violates();
    g.when(feedback(9, 2, FeedbackTargetKind::Insight, 5))
        .then_violates();
    g.when(feedback(9, 77, FeedbackTargetKind::Recommendation, 5))
        .then_violates();
    nothing()
        .when(feedback(9, 2, FeedbackTargetKind::Response, 5))
        .then_violates();
}

#[test]
fn ids_are_not_reused() {
    let g = given([
        ai_query(1),
        ai_response(1, 2),
        insight(3),
        recommendation(4, None),
        feedback(5, 2, FeedbackTargetKind::Response, 4),
    ]);
    g.when(ai_query(1)).then_violates();
    g.when(ai_response(1, 2)).then_violates();
    g.when(insight(3)).then_violates();
    g.when(recommendation(4, None)).then_violates();
    g.when(feedback(5, 2, FeedbackTargetKind::Response, 4))
        .then_violates();
}

#[test]
fn ai_values_are_validated() {
    let g = given([ai_query(1), ai_response(1, 2)]);
    g.when(feedback(9, 2, FeedbackTargetKind::Response, 0))
        .then_invalid("payload.rating");
    g.when(feedback(9, 2, FeedbackTargetKind::Response, 6))
        .then_invalid("payload.rating");
    g.when(feedback(9, 2, FeedbackTargetKind::Unknown, 3))
        .then_invalid("payload.target_kind");
    let cases: Vec<(&str, Command)> = vec![
        (
            "payload.confidence",
            with(insight(3), |c| {
                if let Command::CreateInsight(i) = c {
                    i.payload.confidence = 1.5;
                }
            }),
        ),
        (
            "payload.confidence",
            with(insight(3), |c| {
                if let Command::CreateInsight(i) = c {
                    i.payload.confidence = f64::NAN;
                }
            }),
        ),
        (
            "payload.period_end",
            with(insight(3), |c| {
                if let Command::CreateInsight(i) = c {
                    i.payload.period_end = i.payload.period_start - 1;
                }
            }),
        ),
        (
            "payload.insight_kind",
            with(insight(3), |c| {
                if let Command::CreateInsight(i) = c {
                    i.payload.insight_kind = dietstream_schemas::types::InsightKind::Unknown;
                }
            }),
        ),
        (
            "payload.confidence",
            with(recommendation(4, None), |c| {
                if let Command::GiveRecommendation(r) = c {
                    r.payload.confidence = -0.1;
                }
            }),
        ),
        (
            "payload.recommendation_kind",
            with(recommendation(4, None), |c| {
                if let Command::GiveRecommendation(r) = c {
                    r.payload.recommendation_kind =
                        dietstream_schemas::types::RecommendationKind::Unknown;
                }
            }),
        ),
        (
            "payload.channel",
            with(ai_query(5), |c| {
                if let Command::RecordAiQuery(q) = c {
                    q.payload.channel = dietstream_schemas::types::AiChannel::Unknown;
                }
            }),
        ),
        (
            "payload.prompt_chars",
            with(ai_query(5), |c| {
                if let Command::RecordAiQuery(q) = c {
                    q.payload.prompt_chars = -1;
                }
            }),
        ),
        (
            "payload.finish_reason",
            with(ai_response(1, 6), |c| {
                if let Command::RecordAiResponse(r) = c {
                    r.payload.finish_reason = dietstream_schemas::types::FinishReason::Unknown;
                }
            }),
        ),
        (
            "payload.latency_ms",
            with(ai_response(1, 6), |c| {
                if let Command::RecordAiResponse(r) = c {
                    r.payload.latency_ms = -1;
                }
            }),
        ),
    ];
    for (field, c) in cases {
        g.when(c).then_invalid(field);
    }
    // The bounds themselves are valid.
    let edge = with(insight(3), |c| {
        if let Command::CreateInsight(i) = c {
            i.payload.confidence = 1.0;
        }
    });
    g.when(edge).then_types(&["ai.insight.created"]);
}
