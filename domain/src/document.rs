//! The document aggregate: a file a user uploaded for retrieval, and what was made of it.
//!
//! The log records the upload (where the bytes are kept and their hash), the chunks the text
//! was cut into (each chunk's text and hash, so the log says exactly what was indexed), and how
//! processing ended (ready with an embedding model, or failed with a reason the user can act
//! on). Vectors are not recorded: they are a derived index keyed by (chunk hash, model).
//!
//! Rules: only the owner sees or acts on a document (anyone else is told it does not exist); a
//! deleted document accepts nothing more; chunks are recorded once, so a retried job records
//! nothing twice.

use crate::Aggregate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most bytes of chunk text one `document.chunks_recorded` event holds; a document's chunks are
/// spread over as many events as needed, appended together.
pub const MAX_CHUNK_BYTES_PER_EVENT: usize = 256 * 1024;

/// A document was uploaded: its bytes are in the object store under `object_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentUploaded {
    /// The document.
    pub document_id: Uuid,
    /// Who uploaded it, and owns it.
    pub owner: Uuid,
    /// The name it was uploaded under.
    pub filename: String,
    /// Its media type, judged from the bytes.
    pub content_type: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub content_hash: String,
    /// Where the bytes are kept.
    pub object_key: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One piece of a document's text, as indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chunk {
    /// Its place in the document, from 0.
    pub index: u32,
    /// The text.
    pub text: String,
    /// SHA-256 of the text, lower-case hex: the key of its vectors.
    pub hash: String,
}

/// Some of a document's chunks were recorded (a document's chunks may span several events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunksRecorded {
    /// The document.
    pub document_id: Uuid,
    /// How many chunks the document has in all.
    pub total: u32,
    /// These chunks, in order.
    pub chunks: Vec<Chunk>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The document's chunks are embedded: it can be retrieved from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReady {
    /// The document.
    pub document_id: Uuid,
    /// The model its vectors were made with.
    pub embedding_model: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Processing failed for a reason the user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentFailed {
    /// The document.
    pub document_id: Uuid,
    /// Why, in words for the user.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The owner asked for the document to be processed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingRequested {
    /// The document.
    pub document_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

/// The document was deleted: its chunks leave every index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentDeleted {
    /// The document.
    pub document_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of document events.
    pub mod event_types;

    /// Everything a document records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum DocumentEvent {
        /// Uploaded.
        #[event(UPLOADED = "document.uploaded", version = 1)]
        Uploaded(DocumentUploaded),
        /// Chunks recorded.
        #[event(CHUNKS_RECORDED = "document.chunks_recorded", version = 1)]
        ChunksRecorded(ChunksRecorded),
        /// Ready for retrieval.
        #[event(READY = "document.ready", version = 1)]
        Ready(DocumentReady),
        /// Failed.
        #[event(FAILED = "document.failed", version = 1)]
        Failed(DocumentFailed),
        /// Asked to be processed again.
        #[event(PROCESSING_REQUESTED = "document.processing_requested", version = 1)]
        ProcessingRequested(ProcessingRequested),
        /// Deleted.
        #[event(DELETED = "document.deleted", version = 1)]
        Deleted(DocumentDeleted),
    }
}

/// Where a document is in its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// Being parsed, chunked or embedded.
    #[default]
    Processing,
    /// Retrievable.
    Ready,
    /// Failed; see the reason.
    Failed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Processing => "processing",
            Status::Ready => "ready",
            Status::Failed => "failed",
        }
    }
}

/// What can be asked of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentCommand {
    /// Record an upload.
    Upload(DocumentUploaded),
    /// Record the chunks the text was cut into (nothing if they already are).
    RecordChunks {
        /// Every chunk, in order.
        chunks: Vec<Chunk>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Every chunk is embedded with `embedding_model`.
    MarkReady {
        /// The model.
        embedding_model: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Processing failed.
    Fail {
        /// Why, in words for the user.
        reason: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Process it again (the owner asked).
    RequestProcessing {
        /// Who asks.
        actor: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Delete it.
    Delete {
        /// Who asks.
        actor: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why a document command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// No such document, it was deleted, or it is not the actor's.
    #[error("document not found")]
    NotFound,
    /// A document with this id was already uploaded.
    #[error("a document with this id already exists")]
    AlreadyExists,
    /// A document has no chunks to be ready with.
    #[error("the document has no chunks")]
    NoChunks,
}

/// The document aggregate's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    /// The upload, once recorded.
    pub uploaded: Option<DocumentUploaded>,
    /// How many chunks are recorded (0 before chunking).
    pub chunks: u32,
    /// Whether the chunks are recorded.
    pub chunked: bool,
    /// Where processing is.
    pub status: Status,
    /// The model of the vectors, once ready.
    pub embedding_model: Option<String>,
    /// The failure's reason, while failed.
    pub error: Option<String>,
    /// Whether it was deleted.
    pub deleted: bool,
}

impl Document {
    /// The owner, for a live (uploaded, not deleted) document.
    fn live_owner(&self) -> Result<Uuid, DocumentError> {
        match &self.uploaded {
            Some(u) if !self.deleted => Ok(u.owner),
            _ => Err(DocumentError::NotFound),
        }
    }
}

/// Splits `chunks` into runs of at most [`MAX_CHUNK_BYTES_PER_EVENT`] bytes of text (a chunk
/// larger than that travels alone).
fn batches(chunks: Vec<Chunk>) -> Vec<Vec<Chunk>> {
    let mut out: Vec<Vec<Chunk>> = Vec::new();
    let mut size = 0usize;
    for c in chunks {
        let n = c.text.len() + c.hash.len();
        match out.last_mut() {
            Some(run) if size + n <= MAX_CHUNK_BYTES_PER_EVENT => {
                size += n;
                run.push(c);
            }
            _ => {
                size = n;
                out.push(vec![c]);
            }
        }
    }
    out
}

impl Aggregate for Document {
    type Id = Uuid;
    type Command = DocumentCommand;
    type Event = DocumentEvent;
    type Error = DocumentError;

    fn stream_name(id: &Uuid) -> String {
        format!("document-{id}")
    }

    fn decide(&self, command: DocumentCommand) -> Result<Vec<DocumentEvent>, DocumentError> {
        use DocumentCommand as C;
        use DocumentEvent as E;
        match command {
            C::Upload(u) => {
                if self.uploaded.is_some() {
                    return Err(DocumentError::AlreadyExists);
                }
                Ok(vec![E::Uploaded(u)])
            }
            C::RecordChunks { chunks, at } => {
                self.live_owner()?;
                if self.chunked {
                    return Ok(vec![]);
                }
                let document_id = self.uploaded.as_ref().map(|u| u.document_id);
                let document_id = document_id.ok_or(DocumentError::NotFound)?;
                let total = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
                if chunks.is_empty() {
                    return Err(DocumentError::NoChunks);
                }
                Ok(batches(chunks)
                    .into_iter()
                    .map(|chunks| {
                        E::ChunksRecorded(ChunksRecorded {
                            document_id,
                            total,
                            chunks,
                            at,
                        })
                    })
                    .collect())
            }
            C::MarkReady {
                embedding_model,
                at,
            } => {
                self.live_owner()?;
                if !self.chunked {
                    return Err(DocumentError::NoChunks);
                }
                if self.status == Status::Ready
                    && self.embedding_model.as_deref() == Some(embedding_model.as_str())
                {
                    return Ok(vec![]);
                }
                Ok(vec![E::Ready(DocumentReady {
                    document_id: self.id(),
                    embedding_model,
                    at,
                })])
            }
            C::Fail { reason, at } => {
                self.live_owner()?;
                if self.status == Status::Failed && self.error.as_deref() == Some(reason.as_str()) {
                    return Ok(vec![]);
                }
                Ok(vec![E::Failed(DocumentFailed {
                    document_id: self.id(),
                    reason,
                    at,
                })])
            }
            C::RequestProcessing { actor, at } => {
                if self.live_owner()? != actor {
                    return Err(DocumentError::NotFound);
                }
                Ok(vec![E::ProcessingRequested(ProcessingRequested {
                    document_id: self.id(),
                    at,
                })])
            }
            C::Delete { actor, at } => {
                if self.live_owner()? != actor {
                    return Err(DocumentError::NotFound);
                }
                Ok(vec![E::Deleted(DocumentDeleted {
                    document_id: self.id(),
                    at,
                })])
            }
        }
    }

    fn evolve(mut self, event: &DocumentEvent) -> Self {
        match event {
            DocumentEvent::Uploaded(u) => {
                self.uploaded = Some(u.clone());
                self.status = Status::Processing;
            }
            DocumentEvent::ChunksRecorded(c) => {
                self.chunked = true;
                self.chunks = c.total;
            }
            DocumentEvent::Ready(r) => {
                self.status = Status::Ready;
                self.embedding_model = Some(r.embedding_model.clone());
                self.error = None;
            }
            DocumentEvent::Failed(f) => {
                self.status = Status::Failed;
                self.error = Some(f.reason.clone());
            }
            DocumentEvent::ProcessingRequested(_) => {
                self.status = Status::Processing;
                self.error = None;
            }
            DocumentEvent::Deleted(_) => self.deleted = true,
        }
        self
    }
}

impl Document {
    /// The document's id (nil before the upload).
    pub fn id(&self) -> Uuid {
        self.uploaded
            .as_ref()
            .map(|u| u.document_id)
            .unwrap_or_default()
    }

    /// The owner, if uploaded.
    pub fn owner(&self) -> Option<Uuid> {
        self.uploaded.as_ref().map(|u| u.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn uploaded() -> DocumentEvent {
        DocumentEvent::Uploaded(DocumentUploaded {
            document_id: Uuid::from_u128(1),
            owner: Uuid::from_u128(7),
            filename: "a.txt".into(),
            content_type: "text/plain".into(),
            bytes: 3,
            content_hash: "h".into(),
            object_key: "documents/7/1".into(),
            at: at(),
        })
    }

    fn chunk(index: u32, text: &str) -> Chunk {
        Chunk {
            index,
            text: text.into(),
            hash: format!("h{index}"),
        }
    }

    fn recorded() -> DocumentEvent {
        DocumentEvent::ChunksRecorded(ChunksRecorded {
            document_id: Uuid::from_u128(1),
            total: 1,
            chunks: vec![chunk(0, "abc")],
            at: at(),
        })
    }

    #[test]
    fn chunks_are_recorded_once() {
        given::<Document>([uploaded()])
            .when(DocumentCommand::RecordChunks {
                chunks: vec![chunk(0, "abc")],
                at: at(),
            })
            .then([recorded()]);
        given::<Document>([uploaded(), recorded()])
            .when(DocumentCommand::RecordChunks {
                chunks: vec![chunk(0, "abc")],
                at: at(),
            })
            .then([]);
    }

    #[test]
    fn many_chunks_spread_over_several_events_that_each_know_the_total() {
        let big = "x".repeat(100 * 1024);
        let chunks: Vec<Chunk> = (0..5).map(|i| chunk(i, &big)).collect();
        let doc = Document::replay(&[uploaded()]);
        let events = doc
            .decide(DocumentCommand::RecordChunks { chunks, at: at() })
            .unwrap();
        assert_eq!(events.len(), 3);
        let mut indexes = Vec::new();
        for e in &events {
            let DocumentEvent::ChunksRecorded(c) = e else {
                panic!("{e:?}")
            };
            assert_eq!(c.total, 5);
            indexes.extend(c.chunks.iter().map(|c| c.index));
        }
        assert_eq!(indexes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn only_the_owner_deletes_and_a_deleted_document_accepts_nothing() {
        given::<Document>([uploaded()])
            .when(DocumentCommand::Delete {
                actor: Uuid::from_u128(8),
                at: at(),
            })
            .then_error(DocumentError::NotFound);
        let deleted = DocumentEvent::Deleted(DocumentDeleted {
            document_id: Uuid::from_u128(1),
            at: at(),
        });
        given::<Document>([uploaded(), deleted.clone()])
            .when(DocumentCommand::MarkReady {
                embedding_model: "m".into(),
                at: at(),
            })
            .then_error(DocumentError::NotFound);
        given::<Document>([uploaded(), deleted])
            .when(DocumentCommand::RequestProcessing {
                actor: Uuid::from_u128(7),
                at: at(),
            })
            .then_error(DocumentError::NotFound);
    }

    #[test]
    fn ready_needs_chunks_and_is_recorded_once_per_model() {
        given::<Document>([uploaded()])
            .when(DocumentCommand::MarkReady {
                embedding_model: "m".into(),
                at: at(),
            })
            .then_error(DocumentError::NoChunks);
        let ready = DocumentEvent::Ready(DocumentReady {
            document_id: Uuid::from_u128(1),
            embedding_model: "m".into(),
            at: at(),
        });
        given::<Document>([uploaded(), recorded()])
            .when(DocumentCommand::MarkReady {
                embedding_model: "m".into(),
                at: at(),
            })
            .then([ready.clone()]);
        given::<Document>([uploaded(), recorded(), ready])
            .when(DocumentCommand::MarkReady {
                embedding_model: "m".into(),
                at: at(),
            })
            .then([]);
    }

    #[test]
    fn a_second_upload_with_the_same_id_is_refused() {
        let DocumentEvent::Uploaded(u) = uploaded() else {
            unreachable!()
        };
        given::<Document>([uploaded()])
            .when(DocumentCommand::Upload(u))
            .then_error(DocumentError::AlreadyExists);
    }
}
