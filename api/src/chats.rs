//! Chats and messages (`/api/chats...`, `/api/messages/search`): extract, call
//! [`confab_application::chats`], answer with [`crate::resources::chats`].

use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::resources::chats::{
    AsOfQuery, Chat, ChatPage, EditBody, Message, MessageEdit, MessageHistory, MessagePage,
    MessagesQuery, NewChat, PageQuery, SearchWords, SendBody, TitleBody, page_request,
};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use confab_application::Problems;
use confab_application::chats::{self, MessageQuery};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use uuid::Uuid;

/// An ISO date or date-time; a bare date means the whole day (its start, or its end for
/// `end_of_day`), so ranges are inclusive.
fn parse_date(s: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let time = if end_of_day {
        NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999)?
    } else {
        NaiveTime::MIN
    };
    Some(d.and_time(time).and_utc())
}

impl AsOfQuery {
    /// The time asked for, if any; a value that is not an RFC 3339 date-time is a 400.
    fn parse(&self) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.as_of
            .as_deref()
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| Problems::one("asOf", "must be an RFC 3339 date-time").into())
            })
            .transpose()
    }
}

impl MessagesQuery {
    /// The query the application takes, with `search` as the words; every problem by field.
    fn parse(&self, search: Option<String>) -> Result<MessageQuery, ApiError> {
        let mut problems = Problems::new();
        let page = page_request(self.page.as_deref(), self.limit.as_deref(), &mut problems);
        let kind = self
            .kind
            .as_deref()
            .and_then(|k| problems.check(MessageKind::parse(k)));
        let mut date = |field: &str, v: &Option<String>, end: bool| {
            v.as_deref().and_then(|s| {
                parse_date(s, end).or_else(|| {
                    problems.add(field, "must be an ISO 8601 date or date-time");
                    None
                })
            })
        };
        let start = date("startDate", &self.start_date, false);
        let end = date("endDate", &self.end_date, true);
        if !problems.is_empty() {
            return Err(problems.into());
        }
        Ok(MessageQuery {
            kind,
            start,
            end,
            search,
            page,
        }
        .validate()?)
    }
}

/// `POST /api/chats` `{title}` → 201 `{id, title, createdAt}`.
#[utoipa::path(post, path = "/api/chats", tag = "chats", security(("bearer" = []), ("cookie" = [])), request_body = TitleBody,
    responses((status = 201, description = "The new chat", body = NewChat)))]
pub(crate) async fn create_chat(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<TitleBody>,
) -> Result<(StatusCode, Json<NewChat>), ApiError> {
    let title = ChatTitle::parse(&body.title)?;
    let chat = chats::create_chat(&state.app, &auth, auth.id(), title).await?;
    Ok((StatusCode::CREATED, Json(chat.into())))
}

/// `GET /api/chats?page&limit` → `{chats, total, page, limit}`, most recent activity first.
#[utoipa::path(get, path = "/api/chats", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(PageQuery),
    responses((status = 200, description = "A page of the caller's chats", body = ChatPage)))]
pub(crate) async fn list_chats(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ChatPage>, ApiError> {
    let mut problems = Problems::new();
    let page = page_request(q.page.as_deref(), q.limit.as_deref(), &mut problems);
    if !problems.is_empty() {
        return Err(problems.into());
    }
    Ok(Json(
        chats::list_chats(&state.app, &auth, page).await?.into(),
    ))
}

/// `GET /api/chats/{chatId}?asOf`: the chat now, or as it was at `asOf` (from the log).
#[utoipa::path(get, path = "/api/chats/{chatId}", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), AsOfQuery),
    responses(
        (status = 200, description = "The chat (as it was at `asOf`, if given)", body = Chat),
        (status = 400, description = "`asOf` is not an RFC 3339 date-time", body = ErrorBody),
        (status = 404, description = "No such chat (at `asOf`: not yet created, or deleted then), or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn get_chat(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<AsOfQuery>,
) -> Result<Json<Chat>, ApiError> {
    let chat = match q.parse()? {
        Some(as_of) => chats::get_chat_as_of(&state.app, &auth, chat_id, as_of).await?,
        None => chats::get_chat(&state.app, &auth, chat_id).await?,
    };
    Ok(Json(chat.into()))
}

/// `POST /api/chats/{chatId}/restore`: undoes the chat's deletion, with the messages it had.
#[utoipa::path(post, path = "/api/chats/{chatId}/restore", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat")),
    responses(
        (status = 200, description = "The restored chat", body = Chat),
        (status = 404, description = "No such chat, not the caller's, or deleted longer ago than `CONFAB_RESTORE_WINDOW_DAYS`", body = ErrorBody),
        (status = 409, description = "The chat is not deleted", body = ErrorBody),
    ))]
pub(crate) async fn restore_chat(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
) -> Result<Json<Chat>, ApiError> {
    Ok(Json(
        chats::restore_chat(&state.app, &auth, chat_id)
            .await?
            .into(),
    ))
}

/// `POST /api/chats/{chatId}/messages/{messageId}/restore`: undoes the message's deletion.
#[utoipa::path(post, path = "/api/chats/{chatId}/messages/{messageId}/restore", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), ("messageId" = Uuid, Path, description = "The message")),
    responses(
        (status = 200, description = "The restored message", body = Message),
        (status = 403, description = "Not the message's author", body = ErrorBody),
        (status = 404, description = "No such chat or message, not the caller's, or deleted longer ago than `CONFAB_RESTORE_WINDOW_DAYS`", body = ErrorBody),
        (status = 409, description = "The message is not deleted", body = ErrorBody),
    ))]
pub(crate) async fn restore_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<Message>, ApiError> {
    Ok(Json(
        chats::restore_message(&state.app, &auth, chat_id, message_id)
            .await?
            .into(),
    ))
}

/// `GET /api/chats/{chatId}/messages/{messageId}/history`: every version, oldest first.
#[utoipa::path(get, path = "/api/chats/{chatId}/messages/{messageId}/history", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), ("messageId" = Uuid, Path, description = "The message")),
    responses(
        (status = 200, description = "The message's versions, oldest first", body = MessageHistory),
        (status = 404, description = "No such chat or message, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn message_history(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<MessageHistory>, ApiError> {
    let versions = chats::message_history(&state.app, &auth, chat_id, message_id).await?;
    Ok(Json(MessageHistory {
        message_id,
        versions: versions.into_iter().map(Into::into).collect(),
    }))
}

/// `PUT /api/chats/{chatId}` `{title}`.
#[utoipa::path(put, path = "/api/chats/{chatId}", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat")), request_body = TitleBody,
    responses(
        (status = 200, description = "The renamed chat", body = Chat),
        (status = 404, description = "No such chat, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn rename_chat(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<TitleBody>,
) -> Result<Json<Chat>, ApiError> {
    let title = ChatTitle::parse(&body.title)?;
    Ok(Json(
        chats::rename_chat(&state.app, &auth, chat_id, title)
            .await?
            .into(),
    ))
}

/// `DELETE /api/chats/{chatId}` → 204; its messages vanish from every read.
#[utoipa::path(delete, path = "/api/chats/{chatId}", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat")),
    responses(
        (status = 204, description = "Deleted, with its messages"),
        (status = 404, description = "No such chat, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn delete_chat(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    chats::delete_chat(&state.app, &auth, chat_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/chats/{chatId}/messages?page&limit&type&search&startDate&endDate&asOf`.
#[utoipa::path(get, path = "/api/chats/{chatId}/messages", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), MessagesQuery, AsOfQuery),
    responses(
        (status = 200, description = "A page of the chat's messages (as they were at `asOf`, if given: oldest first, a search included)", body = MessagePage),
        (status = 400, description = "A filter, the page or `asOf` is invalid", body = ErrorBody),
        (status = 404, description = "No such chat (at `asOf`: not yet created, or deleted then), or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
    ApiQuery(at): ApiQuery<AsOfQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let as_of = at.parse()?;
    let query = q.parse(q.search.clone())?;
    let page = match as_of {
        Some(as_of) => {
            chats::list_messages_as_of(&state.app, &auth, chat_id, as_of, &query).await?
        }
        None => chats::list_messages(&state.app, &auth, chat_id, &query).await?,
    };
    Ok(Json(page.into()))
}

/// `GET /api/messages/search?q&page&limit&type&startDate&endDate`: across all the caller's chats.
#[utoipa::path(get, path = "/api/messages/search", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(SearchWords, MessagesQuery),
    responses((status = 200, description = "A page of the caller's messages that match, most relevant first", body = MessagePage)))]
pub(crate) async fn search_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let query = q.parse(q.q.clone().or_else(|| q.search.clone()))?;
    Ok(Json(
        chats::search_messages(&state.app, &auth, &query)
            .await?
            .into(),
    ))
}

/// `POST /api/chats/{chatId}/messages` `{content, type}` → 201 message.
#[utoipa::path(post, path = "/api/chats/{chatId}/messages", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat")), request_body = SendBody,
    responses(
        (status = 201, description = "The message", body = Message),
        (status = 404, description = "No such chat, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn send_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let mut problems = Problems::new();
    let content = problems.check(MessageContent::parse(&body.content));
    let kind = problems.check(MessageKind::parse(body.kind.as_deref().unwrap_or("text")));
    let (Some(content), Some(kind)) = (content, kind) else {
        return Err(problems.into());
    };
    let m = chats::send_message(&state.app, &auth, chat_id, Role::User, content, kind).await?;
    Ok((StatusCode::CREATED, Json(m.into())))
}

/// `PUT /api/chats/{chatId}/messages/{messageId}` `{content?, type?}` → `{id, content, type,
/// updatedAt}`.
#[utoipa::path(put, path = "/api/chats/{chatId}/messages/{messageId}", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), ("messageId" = Uuid, Path, description = "The message")),
    request_body = EditBody,
    responses(
        (status = 200, description = "The message as edited", body = MessageEdit),
        (status = 403, description = "Not the message's author", body = ErrorBody),
        (status = 404, description = "No such chat or message, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn edit_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<EditBody>,
) -> Result<Json<MessageEdit>, ApiError> {
    let mut problems = Problems::new();
    let content = body
        .content
        .as_deref()
        .and_then(|c| problems.check(MessageContent::parse(c)));
    let kind = body
        .kind
        .as_deref()
        .and_then(|k| problems.check(MessageKind::parse(k)));
    if !problems.is_empty() {
        return Err(problems.into());
    }
    let edited = chats::edit_message(&state.app, &auth, chat_id, message_id, content, kind).await?;
    Ok(Json(edited.into()))
}

/// `DELETE /api/chats/{chatId}/messages/{messageId}` → 204.
#[utoipa::path(delete, path = "/api/chats/{chatId}/messages/{messageId}", tag = "chats", security(("bearer" = []), ("cookie" = [])),
    params(("chatId" = Uuid, Path, description = "The chat"), ("messageId" = Uuid, Path, description = "The message")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the message's author", body = ErrorBody),
        (status = 404, description = "No such chat or message, or not the caller's", body = ErrorBody),
    ))]
pub(crate) async fn delete_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    chats::delete_message(&state.app, &auth, chat_id, message_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_may_be_days_or_instants_and_days_are_inclusive() {
        let s = parse_date("2026-03-01", false).unwrap();
        let e = parse_date("2026-03-01", true).unwrap();
        assert_eq!(s.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert!(e > s && e.to_rfc3339().starts_with("2026-03-01T23:59:59"));
        assert!(parse_date("2026-03-01T10:00:00+02:00", false).is_some());
        assert!(parse_date("yesterday", false).is_none());
    }
}
