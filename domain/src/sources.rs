//! The sources of a reply: which chunks of which documents an assistant message was grounded
//! on, recorded once when the reply is stored (stream `reply-sources-{messageId}`), so the
//! provenance of an answer survives the deletion of its documents.

use crate::Aggregate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One chunk a reply was grounded on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedSource {
    /// Its document.
    pub document_id: Uuid,
    /// The document's name then.
    pub filename: String,
    /// Its place in the document.
    pub chunk_index: u32,
    /// Its retrieval score (reciprocal rank fusion).
    pub score: f64,
    /// The text given to the model.
    pub text: String,
}

/// The sources of an assistant message were recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourcesRecorded {
    /// The assistant message (the reply's id).
    pub message_id: Uuid,
    /// Its chat.
    pub chat_id: Uuid,
    /// The chat's owner.
    pub owner: Uuid,
    /// The model that answered.
    pub model: String,
    /// The embedding model of the vectors retrieval used, if any.
    pub embedding_model: Option<String>,
    /// The chunks, best first.
    pub sources: Vec<RecordedSource>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Stable type name of the sources event.
pub const SOURCES_RECORDED: &str = "reply.sources_recorded";

crate::schema::event_schema! {
    impl EventSchema for SourcesRecorded = SOURCES_RECORDED, version 1;
}

/// Sources commands are never refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reply sources error")]
pub enum SourcesError {}

/// A reply's recorded sources, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplySources {
    /// What was recorded.
    pub recorded: Option<SourcesRecorded>,
}

impl Aggregate for ReplySources {
    type Id = Uuid;
    type Command = SourcesRecorded;
    type Event = SourcesRecorded;
    type Error = SourcesError;

    fn stream_name(id: &Uuid) -> String {
        format!("reply-sources-{id}")
    }

    /// Recorded once: a re-run reply job records nothing more.
    fn decide(&self, c: SourcesRecorded) -> Result<Vec<SourcesRecorded>, SourcesError> {
        if self.recorded.is_some() {
            return Ok(vec![]);
        }
        Ok(vec![c])
    }

    fn evolve(mut self, e: &SourcesRecorded) -> Self {
        self.recorded = Some(e.clone());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn recorded() -> SourcesRecorded {
        SourcesRecorded {
            message_id: Uuid::from_u128(1),
            chat_id: Uuid::from_u128(2),
            owner: Uuid::from_u128(3),
            model: "m".into(),
            embedding_model: Some("e".into()),
            sources: vec![RecordedSource {
                document_id: Uuid::from_u128(4),
                filename: "a.md".into(),
                chunk_index: 0,
                score: 0.5,
                text: "t".into(),
            }],
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn sources_are_recorded_once() {
        given::<ReplySources>([])
            .when(recorded())
            .then([recorded()]);
        given::<ReplySources>([recorded()])
            .when(recorded())
            .then([]);
    }
}
