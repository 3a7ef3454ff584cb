//! Background jobs as the use cases see them: the typed payloads they queue, and the
//! [`JobQueue`] port the job workers implement (apalis queues, in `confab_workers`).
//!
//! A use case that hands work to the background (a reply to generate, a Stripe event to apply)
//! pushes a [`Job`]; the worker that takes it calls back into this crate
//! ([`crate::ai::generate_reply`], [`crate::billing::process_stripe_event`]).

use crate::ai::llm::Turn;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Generate the reply `reply_id` in `chat_id` for `user`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateReply {
    /// The reply, its assistant message and its credit reservation share this id.
    pub reply_id: Uuid,
    /// The chat.
    pub chat_id: Uuid,
    /// The chat's owner, who pays.
    pub user: Uuid,
    /// The catalogue's model id.
    pub model: String,
    /// The conversation to answer.
    pub turns: Vec<Turn>,
    /// The request that asked for it.
    pub correlation_id: Option<Uuid>,
    /// The document chunks the context holds, recorded with the reply (none without
    /// `documentIds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<confab_domain::sources::RecordedSource>,
    /// The embedding model retrieval used for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
}

/// Apply Stripe event `event_id`, already recorded in its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStripeEvent {
    /// Stripe's event id (`evt_...`).
    pub event_id: String,
}

/// Which step of a document's processing a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DocumentStep {
    /// Parse the file and record its chunks (then queue [`DocumentStep::Embed`]).
    Parse,
    /// Embed the chunks into the vector index and mark the document ready.
    Embed,
}

/// Run one step of document `document_id`'s processing ([`crate::documents::process`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessDocument {
    /// The document.
    pub document_id: Uuid,
    /// The step.
    pub step: DocumentStep,
    /// A log position the documents read model must reach before the step reads it.
    #[serde(default)]
    pub after: Option<u64>,
    /// The request that caused it.
    #[serde(default)]
    pub correlation_id: Option<Uuid>,
}

/// Work for the background.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// An LLM reply.
    Reply(GenerateReply),
    /// A verified Stripe event.
    StripeEvent(ProcessStripeEvent),
    /// A step of a document's processing.
    Document(ProcessDocument),
}

impl Job {
    /// The queue's stable name, for messages.
    pub fn queue(&self) -> &'static str {
        match self {
            Job::Reply(_) => "generate_reply",
            Job::StripeEvent(_) => "process_stripe_event",
            Job::Document(_) => "process_document",
        }
    }
}

/// A job could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("cannot queue the {queue} job")]
pub struct QueueError {
    /// The queue.
    pub queue: &'static str,
    /// Why.
    #[source]
    pub source: crate::error::BoxError,
}

/// Where use cases queue background work. Implemented by the job workers' queues; a queued
/// job survives the process that queued it.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Queues `job` durably.
    async fn push(&self, job: Job) -> Result<(), QueueError>;

    /// Each queue's unfinished jobs (waiting, running, or failed with attempts left), for
    /// `/metrics`; a queue that cannot be counted right now is left out.
    async fn depths(&self) -> Vec<(&'static str, i64)> {
        Vec::new()
    }
}

impl From<QueueError> for crate::AppError {
    fn from(e: QueueError) -> Self {
        crate::AppError::internal("queuing background work", e)
    }
}
