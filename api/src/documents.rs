//! Documents for retrieval (seed 003): `POST /api/upload` (multipart field `file`),
//! `GET /api/documents`, `GET` and `DELETE /api/documents/{id}`, and `POST /api/rag` to process
//! one again, and `GET /api/chats/{chatId}/messages/{messageId}/sources`. What is accepted (the kinds, judged by the bytes, and the size) is decided in
//! [`confab_application::documents::upload`]; processing runs in the document worker.

use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::resources::chats::{PageQuery, page_request};
use crate::resources::documents::{
    DocumentForm, DocumentInfo, DocumentPage, MessageSources, RagBody, RagStarted, Uploaded,
};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use confab_application::Problems;
use confab_application::documents;
use uuid::Uuid;

/// The multipart framing allowed around the file, on top of the configured size.
pub const FORM_OVERHEAD_BYTES: usize = 64 * 1024;

/// `POST /api/upload` → `{documentId, filename, status: "processing"}`.
#[utoipa::path(post, path = "/api/upload", tag = "documents", security(("bearer" = []), ("cookie" = [])),
    request_body(content = DocumentForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored; processing has started", body = Uploaded),
        (status = 400, description = "Not a file of an accepted kind (judged by its content), larger than the configured maximum (10 MB by default), an empty file, or a malformed form", body = ErrorBody),
        (status = 413, description = "The request body is beyond the configured maximum and the form's framing", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ErrorBody),
    ))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    auth: AuthUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Uploaded>, ApiError> {
    let max = state.app.documents.max_bytes;
    let mut multipart = multipart.map_err(|r| {
        ApiError::UnsupportedMediaType(format!(
            "send multipart/form-data with a boundary and a file field `file`: {}",
            r.body_text()
        ))
    })?;
    // Over the configured size: 400 naming the field (API.md). A body beyond even the size plus
    // the form's framing is cut off by the body limit: 413.
    let too_large = || ApiError::field("file", format!("must be at most {max} bytes"));
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than the {max}-byte file it may carry"
            ))
        } else {
            ApiError::field(
                "file",
                format!("unreadable multipart body: {}", e.body_text()),
            )
        }
    };
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(bad_form)? {
        if field.name() != Some("file") || file.is_some() {
            return Err(ApiError::field(
                "file",
                "the form holds one file field, `file`, and nothing else",
            ));
        }
        let name = field.file_name().unwrap_or("document").to_owned();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
            if bytes.len() + chunk.len() > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some((name, bytes));
    }
    let (name, bytes) =
        file.ok_or_else(|| ApiError::field("file", "a file field named `file` is required"))?;
    let doc = documents::upload(&state.app, &auth, &name, bytes.into()).await?;
    Ok(Json(doc.into()))
}

/// `GET /api/documents?page&limit` → `{documents, total, page, limit}`, newest first.
#[utoipa::path(get, path = "/api/documents", tag = "documents", security(("bearer" = []), ("cookie" = [])), params(PageQuery),
    responses((status = 200, description = "A page of the caller's documents", body = DocumentPage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<DocumentPage>, ApiError> {
    let mut problems = Problems::new();
    let page = page_request(q.page.as_deref(), q.limit.as_deref(), &mut problems);
    if !problems.is_empty() {
        return Err(problems.into());
    }
    Ok(Json(documents::list(&state.app, &auth, page).await?.into()))
}

/// `GET /api/documents/{id}`.
#[utoipa::path(get, path = "/api/documents/{id}", tag = "documents", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "The document")),
    responses(
        (status = 200, description = "The document", body = DocumentInfo),
        (status = 404, description = "No such document, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<DocumentInfo>, ApiError> {
    Ok(Json(documents::get(&state.app, &auth, id).await?.into()))
}

/// `DELETE /api/documents/{id}` → 204: its chunks leave every index and every later answer.
#[utoipa::path(delete, path = "/api/documents/{id}", tag = "documents", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "The document")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such document, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    documents::delete(&state.app, &auth, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/rag {documentId}` → `{success: true, message}`: processes the document again.
#[utoipa::path(post, path = "/api/rag", tag = "documents", security(("bearer" = []), ("cookie" = [])),
    request_body = RagBody,
    responses(
        (status = 200, description = "Processing started (it runs in the background)", body = RagStarted),
        (status = 400, description = "A missing or malformed `documentId`", body = ErrorBody),
        (status = 403, description = "The document belongs to another user", body = ErrorBody),
        (status = 404, description = "No such document", body = ErrorBody),
    ))]
pub(crate) async fn rag(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<RagBody>,
) -> Result<Json<RagStarted>, ApiError> {
    documents::reprocess(&state.app, &auth, body.document_id).await?;
    Ok(Json(RagStarted {
        success: true,
        message: "Document processing started".into(),
    }))
}

/// `GET /api/chats/{chatId}/messages/{messageId}/sources` → `{model, embeddingModel,
/// sources}`: the provenance of an answer, recorded when the reply was stored.
#[utoipa::path(get, path = "/api/chats/{chatId}/messages/{messageId}/sources", tag = "documents", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), ("messageId" = Uuid, Path, description = "The message")),
    responses(
        (status = 200, description = "The chunks the message was grounded on (none for a message not grounded on documents); a deleted document's chunks are listed, marked deleted, without their text", body = MessageSources),
        (status = 404, description = "No such chat or message, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn sources(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<MessageSources>, ApiError> {
    Ok(Json(
        documents::reply_sources(&state.app, &auth, chat_id, message_id)
            .await?
            .into(),
    ))
}
