//! The seed-002 routes over the same chat model, with that seed's snake_case fields:
//! `POST /chat/conversations`, `GET /chat/conversations/{id}`, `POST /chat/messages`,
//! `GET /chat/conversations/{id}/messages`. A `user_id` in a body must be the caller's own (403
//! otherwise, unless the caller is an admin).

use crate::auth::{AuthUser, metadata, now};
use crate::extract::ApiPath;
use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use confab_domain::chat::{Chat, ChatCommand, ChatError};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::aggregate::ExecuteError;
use confab_projections::chats::{self, ChatRow, MessageFilter, MessageRow};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Whether `auth` may act for `user_id`.
pub fn may_act_for(auth: &AuthUser, user_id: Uuid) -> Result<(), ApiError> {
    if auth.user.id == user_id || auth.user.role == "admin" {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "user_id must be your own user id".into(),
        ))
    }
}

fn conversation_json(c: &ChatRow) -> Value {
    json!({
        "id": c.id, "user_id": c.owner_id, "title": c.title,
        "created_at": c.created_at, "updated_at": c.updated_at,
    })
}

fn message_json(m: &MessageRow) -> Value {
    json!({
        "id": m.id, "conversation_id": m.chat_id, "user_id": m.user_id, "role": m.role,
        "content": m.content, "type": m.kind, "created_at": m.created_at, "updated_at": m.updated_at,
    })
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}

fn chat_error(e: ExecuteError<ChatError>) -> ApiError {
    match e {
        ExecuteError::Domain(ChatError::ChatNotFound) => {
            ApiError::NotFound("conversation not found".into())
        }
        ExecuteError::Store(s) if s.is_conflict() => {
            ApiError::Conflict("too many concurrent changes; retry".into())
        }
        other => ApiError::Internal(anyhow::anyhow!("{other}")),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewConversation {
    user_id: Uuid,
    title: String,
}

/// `POST /chat/conversations` `{user_id, title}` → 201 conversation.
#[utoipa::path(post, path = "/chat/conversations", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewConversation, responses((status = 201, description = "{id, user_id, title, created_at, updated_at}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "user_id is not the caller's", body = ErrorBody)))]
pub(crate) async fn create_conversation(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewConversation>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    may_act_for(&auth, body.user_id)?;
    let title = ChatTitle::parse(&body.title).map_err(|e| ApiError::field(e.field, e.reason))?;
    let chat_id = Uuid::now_v7();
    let command = ChatCommand::Create {
        chat_id,
        owner: body.user_id,
        title,
        at: now(),
    };
    let done = state
        .commands
        .execute::<Chat>(&chat_id, command, metadata(&headers, Some(auth.user.id)))
        .await
        .map_err(chat_error)?;
    state
        .visible(chats::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let chat = chats::get_chat(&state.db, chat_id, body.user_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(anyhow::anyhow!("created conversation not in read model")))?;
    Ok((StatusCode::CREATED, Json(conversation_json(&chat))))
}

/// `GET /chat/conversations/{id}`.
#[utoipa::path(get, path = "/chat/conversations/{id}", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), params(("id" = Uuid, Path)), responses((status = 200, description = "The conversation"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn get_conversation(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let chat = chats::get_chat(&state.db, id, auth.user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    Ok(Json(conversation_json(&chat)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewMessage {
    conversation_id: Uuid,
    role: String,
    content: String,
}

/// `POST /chat/messages` `{conversation_id, role, content}` → 201 message.
#[utoipa::path(post, path = "/chat/messages", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewMessage, responses((status = 201, description = "The message"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn create_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut problems = Map::new();
    let role =
        Role::parse(&body.role).map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let content = MessageContent::parse(&body.content)
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let (Ok(role), Ok(content)) = (role, content) else {
        return Err(ApiError::invalid(problems));
    };
    let message_id = Uuid::now_v7();
    let command = ChatCommand::SendMessage {
        message_id,
        actor: auth.user.id,
        role,
        content,
        kind: MessageKind::Text,
        at: now(),
    };
    let done = state
        .commands
        .execute::<Chat>(
            &body.conversation_id,
            command,
            metadata(&headers, Some(auth.user.id)),
        )
        .await
        .map_err(chat_error)?;
    state
        .visible(chats::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let m = chats::get_message(&state.db, body.conversation_id, message_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(anyhow::anyhow!("created message not in read model")))?;
    Ok((StatusCode::CREATED, Json(message_json(&m))))
}

/// `GET /chat/conversations/{id}/messages` → every message, oldest first, as an array.
#[utoipa::path(get, path = "/chat/conversations/{id}/messages", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), params(("id" = Uuid, Path)), responses((status = 200, description = "Array of messages"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    chats::get_chat(&state.db, id, auth.user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    let filter = MessageFilter {
        chat_id: Some(id),
        ..MessageFilter::default()
    };
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (rows, total) = chats::find_messages(&state.db, auth.user.id, &filter, 500, offset)
            .await
            .map_err(internal)?;
        offset += rows.len() as u64;
        out.extend(rows.iter().map(message_json));
        if rows.is_empty() || offset >= total {
            return Ok(Json(Value::Array(out)));
        }
    }
}

fn attachment_json(a: &chats::AttachmentRow) -> Value {
    json!({
        "id": a.id, "message_id": a.message_id, "file_type": a.file_type,
        "file_path": a.file_path, "created_at": a.created_at,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewAttachment {
    message_id: Uuid,
    file_type: String,
    file_path: String,
}

fn check_attachment(file_type: &str, file_path: &str) -> Result<(), ApiError> {
    let mut problems = Map::new();
    let t = file_type.trim();
    if t.is_empty() || t.len() > 100 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problems.insert(
            "file_type".into(),
            "must be 1 to 100 characters without spaces".into(),
        );
    }
    if file_path.is_empty()
        || file_path.chars().count() > 1024
        || file_path.chars().any(char::is_control)
        || file_path.split(['/', '\\']).any(|seg| seg == "..")
    {
        problems.insert(
            "file_path".into(),
            "must be 1 to 1024 characters, without control characters or `..` segments".into(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(problems))
    }
}

/// `POST /chat/attachments` `{message_id, file_type, file_path}` → 201 attachment.
#[utoipa::path(post, path = "/chat/attachments", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewAttachment, responses((status = 201, description = "{id, message_id, file_type, file_path, created_at}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn create_attachment(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewAttachment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_attachment(&body.file_type, &body.file_path)?;
    let chat_id = chats::chat_of_message(&state.db, body.message_id, auth.user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("message not found".into()))?;
    let attachment_id = Uuid::now_v7();
    let command = ChatCommand::AddAttachment {
        message_id: body.message_id,
        attachment_id,
        actor: auth.user.id,
        file_type: body.file_type.trim().to_owned(),
        file_path: body.file_path,
        at: now(),
    };
    let done = state
        .commands
        .execute::<Chat>(&chat_id, command, metadata(&headers, Some(auth.user.id)))
        .await
        .map_err(|e| match e {
            ExecuteError::Domain(ChatError::MessageNotFound | ChatError::ChatNotFound) => {
                ApiError::NotFound("message not found".into())
            }
            ExecuteError::Domain(ChatError::NotMessageAuthor) => {
                ApiError::Forbidden("only the author may attach files to this message".into())
            }
            other => chat_error(other),
        })?;
    state
        .visible(chats::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let a = chats::get_attachment(&state.db, attachment_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(anyhow::anyhow!("attachment not in read model")))?;
    Ok((StatusCode::CREATED, Json(attachment_json(&a))))
}

/// `GET /chat/messages/{id}/attachments` → the message's attachments as an array.
#[utoipa::path(get, path = "/chat/messages/{id}/attachments", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), params(("id" = Uuid, Path)), responses((status = 200, description = "Array of attachments"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn list_attachments(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    chats::chat_of_message(&state.db, id, auth.user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("message not found".into()))?;
    let rows = chats::list_attachments(&state.db, id)
        .await
        .map_err(internal)?;
    Ok(Json(Value::Array(
        rows.iter().map(attachment_json).collect(),
    )))
}
