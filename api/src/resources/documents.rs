//! Documents for retrieval (`/api/upload`, `/api/documents`, `/api/rag`): the upload form, a
//! document, a page of them, and the re-processing request and answer.

use chrono::{DateTime, Utc};
use confab_application::Page;
use confab_projections::documents::DocumentRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The multipart form of `POST /api/upload`: one file field, nothing else.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct DocumentForm {
    /// A PDF, plain text (UTF-8, or UTF-16 with a byte-order mark), Markdown, HTML or DOCX
    /// file, judged by its content; at most the configured size (10 MB by default).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// Where a document is in its processing.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocumentStatus {
    /// Being parsed, chunked or embedded.
    Processing,
    /// Retrievable.
    Ready,
    /// Failed; `error` says why.
    Failed,
}

/// An upload accepted: processing has started.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    /// The new document.
    pub document_id: Uuid,
    /// The name it is kept under.
    pub filename: String,
    /// `processing`.
    #[schema(value_type = DocumentStatus)]
    pub status: String,
}

impl From<DocumentRow> for Uploaded {
    fn from(d: DocumentRow) -> Self {
        Uploaded {
            document_id: d.id,
            filename: d.filename,
            status: d.status,
        }
    }
}

/// A document of the caller's.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentInfo {
    /// Its id.
    pub id: Uuid,
    /// The name it was uploaded under.
    pub filename: String,
    /// Its media type, judged by its content.
    pub content_type: String,
    /// Its size.
    pub bytes: i64,
    /// Where processing is.
    #[schema(value_type = DocumentStatus)]
    pub status: String,
    /// Why processing failed, in words the user can act on; null unless failed.
    pub error: Option<String>,
    /// How many chunks its text was cut into (0 until parsed).
    pub chunks: i32,
    /// The model its vectors were made with; null until ready.
    pub embedding_model: Option<String>,
    /// Uploaded.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<DocumentRow> for DocumentInfo {
    fn from(d: DocumentRow) -> Self {
        DocumentInfo {
            id: d.id,
            filename: d.filename,
            content_type: d.content_type,
            bytes: d.bytes,
            status: d.status,
            error: d.error,
            chunks: d.chunks,
            embedding_model: d.embedding_model,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A page of the caller's documents, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DocumentPage {
    /// The documents of this page.
    pub documents: Vec<DocumentInfo>,
    /// Documents in all.
    pub total: u64,
    /// This page, from 1.
    pub page: u32,
    /// The page size.
    pub limit: u32,
}

impl From<Page<DocumentRow>> for DocumentPage {
    fn from(p: Page<DocumentRow>) -> Self {
        DocumentPage {
            documents: p.items.into_iter().map(DocumentInfo::from).collect(),
            total: p.total,
            page: p.request.page,
            limit: p.request.limit,
        }
    }
}

/// `POST /api/rag`: the document to process again.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RagBody {
    /// The caller's document.
    pub document_id: Uuid,
}

/// Processing has started.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RagStarted {
    /// Always true.
    pub success: bool,
    /// `Document processing started`.
    pub message: String,
}

/// A chunk an answer was grounded on.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    /// Its document.
    pub document_id: Uuid,
    /// The document's name when the answer was given.
    pub filename: String,
    /// Its place in the document, from 0.
    pub chunk_index: u32,
    /// Its retrieval score (reciprocal rank fusion; higher is more relevant).
    pub score: f64,
    /// The text given to the model; null once the document is deleted.
    pub text: Option<String>,
    /// Whether the document has been deleted since.
    pub deleted: bool,
}

/// What an assistant message was grounded on.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageSources {
    /// The model that answered; null for a message not grounded on documents.
    pub model: Option<String>,
    /// The embedding model of the vectors retrieval used; null when none was.
    pub embedding_model: Option<String>,
    /// The chunks, best first; empty for a message not grounded on documents.
    pub sources: Vec<SourceInfo>,
}

impl From<confab_application::documents::ReplyProvenance> for MessageSources {
    fn from(p: confab_application::documents::ReplyProvenance) -> Self {
        MessageSources {
            model: p.model,
            embedding_model: p.embedding_model,
            sources: p
                .sources
                .into_iter()
                .map(|s| SourceInfo {
                    document_id: s.source.document_id,
                    filename: s.source.filename,
                    chunk_index: s.source.chunk_index,
                    score: s.source.score,
                    text: (!s.deleted).then_some(s.source.text),
                    deleted: s.deleted,
                })
                .collect(),
        }
    }
}
