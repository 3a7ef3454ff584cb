//! The seed-002 routes over the same chat model, in that seed's snake_case
//! ([`Snake`] of the `/api` resources): conversations, their messages, and attachments. A
//! `user_id` in a body must be the caller's own (403 otherwise, unless the caller is an admin).

use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::{ApiJson, ApiPath};
use crate::resources::Snake;
use crate::resources::chats::{
    Attachment, Chat, Conversation, ConversationMessage, Message, NewAttachment, NewConversation,
    NewMessage,
};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use confab_application::{Problems, chats};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use uuid::Uuid;

/// `POST /chat/conversations` `{user_id, title}` → 201 conversation.
#[utoipa::path(post, path = "/chat/conversations", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewConversation,
    responses(
        (status = 201, description = "The conversation", body = Conversation),
        (status = 403, description = "user_id is not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn create_conversation(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewConversation>,
) -> Result<(StatusCode, Json<Snake<Chat>>), ApiError> {
    auth.may_act_for(body.user_id)?;
    let title = ChatTitle::parse(&body.title)?;
    let chat = chats::create_chat(&state.app, &auth, body.user_id, title).await?;
    Ok((StatusCode::CREATED, Json(Snake(chat.into()))))
}

/// `GET /chat/conversations/{id}`.
#[utoipa::path(get, path = "/chat/conversations/{id}", tag = "seed-002", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "The conversation")),
    responses(
        (status = 200, description = "The conversation", body = Conversation),
        (status = 404, description = "No such conversation, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn get_conversation(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Snake<Chat>>, ApiError> {
    Ok(Json(Snake(
        chats::get_chat(&state.app, &auth, id).await?.into(),
    )))
}

/// `POST /chat/messages` `{conversation_id, role, content}` → 201 message.
#[utoipa::path(post, path = "/chat/messages", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewMessage,
    responses(
        (status = 201, description = "The message", body = ConversationMessage),
        (status = 404, description = "No such conversation, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn create_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<Snake<Message>>), ApiError> {
    let mut problems = Problems::new();
    let role = problems.check(Role::parse(&body.role));
    let content = problems.check(MessageContent::parse(&body.content));
    let (Some(role), Some(content)) = (role, content) else {
        return Err(problems.into());
    };
    let m = chats::send_message(
        &state.app,
        &auth,
        body.conversation_id,
        role,
        content,
        MessageKind::Text,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Snake(m.into()))))
}

/// `GET /chat/conversations/{id}/messages` → every message, oldest first, as an array.
#[utoipa::path(get, path = "/chat/conversations/{id}/messages", tag = "seed-002", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "The conversation")),
    responses(
        (status = 200, description = "Every message, oldest first", body = Vec<ConversationMessage>),
        (status = 404, description = "No such conversation, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Vec<Snake<Message>>>, ApiError> {
    let rows = chats::all_messages(&state.app, &auth, id).await?;
    Ok(Json(rows.into_iter().map(|m| Snake(m.into())).collect()))
}

/// `POST /chat/attachments` `{message_id, file_type, file_path}` → 201 attachment.
#[utoipa::path(post, path = "/chat/attachments", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewAttachment,
    responses(
        (status = 201, description = "The attachment", body = Attachment),
        (status = 403, description = "Not the message's author", body = ErrorBody),
        (status = 404, description = "No such message, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn create_attachment(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewAttachment>,
) -> Result<(StatusCode, Json<Attachment>), ApiError> {
    let a = chats::add_attachment(
        &state.app,
        &auth,
        body.message_id,
        body.file_type,
        body.file_path,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(a.into())))
}

/// `GET /chat/messages/{id}/attachments` → the message's attachments as an array.
#[utoipa::path(get, path = "/chat/messages/{id}/attachments", tag = "seed-002", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "The message")),
    responses(
        (status = 200, description = "The message's attachments", body = Vec<Attachment>),
        (status = 404, description = "No such message, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn list_attachments(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Vec<Attachment>>, ApiError> {
    let rows = chats::list_attachments(&state.app, &auth, id).await?;
    Ok(Json(rows.into_iter().map(Attachment::from).collect()))
}
