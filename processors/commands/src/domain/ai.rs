//! The AI aggregate: the coaching of one user (aggregate id = the user id). It has no creating
//! command; the first AI command for a user creates it.

use std::collections::BTreeSet;

use dietstream_schemas::types::{
    self, AiChannel, FeedbackTargetKind, FinishReason, InsightKind, RecommendationKind,
};
use dietstream_schemas::{Command, Event};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validate::{self, known, limits, non_empty, Check};
use super::{blank_header, Emitter, Rejection, State};

/// The ids an AI aggregate has seen, so that references can be checked and ids are not reused.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AiState {
    /// Query ids.
    pub queries: BTreeSet<Uuid>,
    /// Response ids.
    pub responses: BTreeSet<Uuid>,
    /// Insight ids.
    pub insights: BTreeSet<Uuid>,
    /// Recommendation ids.
    pub recommendations: BTreeSet<Uuid>,
    /// Feedback ids.
    pub feedback: BTreeSet<Uuid>,
}

pub(crate) fn apply(s: &mut AiState, event: &Event) {
    match event {
        Event::AiQueryReceived(e) => {
            s.queries.insert(e.payload.query_id);
        }
        Event::AiResponseGenerated(e) => {
            s.responses.insert(e.payload.response_id);
        }
        Event::AiInsightCreated(e) => {
            s.insights.insert(e.payload.insight_id);
        }
        Event::AiRecommendationGiven(e) => {
            s.recommendations.insert(e.payload.recommendation_id);
        }
        Event::AiFeedbackReceived(e) => {
            s.feedback.insert(e.payload.feedback_id);
        }
        _ => {}
    }
}

fn fresh(set: &BTreeSet<Uuid>, id: &Uuid, what: &str) -> Check {
    if set.contains(id) {
        Err(Rejection::rule(format!("{what} {id} already exists")))
    } else {
        Ok(())
    }
}

pub(crate) fn decide(em: &mut Emitter<'_>, command: &Command) -> Result<(), Rejection> {
    validate_command(command)?;
    let empty = AiState::default();
    let s = match &em.work.state {
        State::Ai(s) => s,
        _ => &empty,
    };
    let event = match command {
        Command::RecordAiQuery(c) => {
            let p = &c.payload;
            fresh(&s.queries, &p.query_id, "query")?;
            Event::AiQueryReceived(types::AiQueryReceived {
                header: blank_header(),
                payload: types::AiQueryReceivedPayload {
                    query_id: p.query_id,
                    conversation_id: p.conversation_id,
                    channel: p.channel,
                    prompt: p.prompt.clone(),
                    prompt_chars: p.prompt_chars,
                    context_window_days: p.context_window_days,
                },
            })
        }
        Command::RecordAiResponse(c) => {
            let p = &c.payload;
            if !s.queries.contains(&p.query_id) {
                return Err(Rejection::rule(format!("query {} is unknown", p.query_id)));
            }
            fresh(&s.responses, &p.response_id, "response")?;
            Event::AiResponseGenerated(types::AiResponseGenerated {
                header: blank_header(),
                payload: types::AiResponseGeneratedPayload {
                    query_id: p.query_id,
                    response_id: p.response_id,
                    conversation_id: p.conversation_id,
                    text: p.text.clone(),
                    model: p.model.clone(),
                    model_version: p.model_version.clone(),
                    latency_ms: p.latency_ms,
                    prompt_tokens: p.prompt_tokens,
                    completion_tokens: p.completion_tokens,
                    finish_reason: p.finish_reason,
                },
            })
        }
        Command::CreateInsight(c) => {
            let p = &c.payload;
            fresh(&s.insights, &p.insight_id, "insight")?;
            Event::AiInsightCreated(types::AiInsightCreated {
                header: blank_header(),
                payload: types::AiInsightCreatedPayload {
                    insight_id: p.insight_id,
                    insight_kind: p.insight_kind,
                    title: p.title.clone(),
                    body: p.body.clone(),
                    confidence: p.confidence,
                    period_start: p.period_start,
                    period_end: p.period_end,
                    evidence_event_ids: p.evidence_event_ids.clone(),
                },
            })
        }
        Command::GiveRecommendation(c) => {
            let p = &c.payload;
            if let Some(insight) = p.insight_id {
                if !s.insights.contains(&insight) {
                    return Err(Rejection::rule(format!("insight {insight} is unknown")));
                }
            }
            fresh(&s.recommendations, &p.recommendation_id, "recommendation")?;
            Event::AiRecommendationGiven(types::AiRecommendationGiven {
                header: blank_header(),
                payload: types::AiRecommendationGivenPayload {
                    recommendation_id: p.recommendation_id,
                    insight_id: p.insight_id,
                    recommendation_kind: p.recommendation_kind,
                    text: p.text.clone(),
                    confidence: p.confidence,
                    expires_at: p.expires_at,
                },
            })
        }
        Command::RecordFeedback(c) => {
            let p = &c.payload;
            let targets = match p.target_kind {
                FeedbackTargetKind::Response => &s.responses,
                FeedbackTargetKind::Recommendation => &s.recommendations,
                FeedbackTargetKind::Insight => &s.insights,
                // Refused by validation already.
                FeedbackTargetKind::Unknown => &empty.responses,
            };
            if !targets.contains(&p.target_id) {
                return Err(Rejection::rule(format!(
                    "feedback target {:?} {} is unknown",
                    p.target_kind, p.target_id
                )));
            }
            fresh(&s.feedback, &p.feedback_id, "feedback")?;
            Event::AiFeedbackReceived(types::AiFeedbackReceived {
                header: blank_header(),
                payload: types::AiFeedbackReceivedPayload {
                    feedback_id: p.feedback_id,
                    target_id: p.target_id,
                    target_kind: p.target_kind,
                    rating: p.rating,
                    helpful: p.helpful,
                    comment: p.comment.clone(),
                },
            })
        }
        _ => {
            return Err(Rejection::rule(format!(
                "{} is not an AI command",
                command.record_type()
            )))
        }
    };
    em.emit(event)
}

fn confidence(value: f64, field: &str) -> Check {
    let r = limits::CONFIDENCE;
    validate::number(value, *r.start(), false, *r.end(), field)
}

fn non_negative(value: i32, field: &str) -> Check {
    validate::int_range(i64::from(value), 0, i64::from(i32::MAX), field)
}

fn validate_command(command: &Command) -> Check {
    match command {
        Command::RecordAiQuery(c) => {
            let p = &c.payload;
            known(p.channel == AiChannel::Unknown, "payload.channel")?;
            non_negative(p.prompt_chars, "payload.prompt_chars")?;
            validate::int_range(
                i64::from(p.context_window_days),
                0,
                i64::from(limits::MAX_CONTEXT_WINDOW_DAYS),
                "payload.context_window_days",
            )
        }
        Command::RecordAiResponse(c) => {
            let p = &c.payload;
            non_empty(&p.model, "payload.model")?;
            known(
                p.finish_reason == FinishReason::Unknown,
                "payload.finish_reason",
            )?;
            non_negative(p.latency_ms, "payload.latency_ms")?;
            non_negative(p.prompt_tokens, "payload.prompt_tokens")?;
            non_negative(p.completion_tokens, "payload.completion_tokens")
        }
        Command::CreateInsight(c) => {
            let p = &c.payload;
            known(
                p.insight_kind == InsightKind::Unknown,
                "payload.insight_kind",
            )?;
            non_empty(&p.title, "payload.title")?;
            confidence(p.confidence, "payload.confidence")?;
            if p.period_end < p.period_start {
                return Err(Rejection::validation(
                    "payload.period_end",
                    "period_end lies before period_start",
                ));
            }
            Ok(())
        }
        Command::GiveRecommendation(c) => {
            let p = &c.payload;
            known(
                p.recommendation_kind == RecommendationKind::Unknown,
                "payload.recommendation_kind",
            )?;
            non_empty(&p.text, "payload.text")?;
            confidence(p.confidence, "payload.confidence")
        }
        Command::RecordFeedback(c) => {
            let p = &c.payload;
            known(
                p.target_kind == FeedbackTargetKind::Unknown,
                "payload.target_kind",
            )?;
            let r = limits::RATINGS;
            validate::int_range(
                i64::from(p.rating),
                i64::from(*r.start()),
                i64::from(*r.end()),
                "payload.rating",
            )
        }
        _ => Ok(()),
    }
}
