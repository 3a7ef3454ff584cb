//! Chats and messages (`/api/chats...`, `/api/messages/search`): commands go to the chat
//! aggregate, reads come from the `chats` read model, and every write answers once the same
//! user's next read sees it.

use crate::auth::{AuthUser, metadata, now};
use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use confab_domain::chat::{Chat, ChatCommand, ChatError, ChatEvent};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::aggregate::{ExecuteError, Executed};
use confab_projections::chats::{self, ChatRow, MessageFilter, MessageRow};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Largest page.
const MAX_LIMIT: u32 = 100;
/// Page size when none is asked for.
const DEFAULT_LIMIT: u32 = 50;

fn chat_json(c: &ChatRow) -> Value {
    json!({ "id": c.id, "title": c.title, "createdAt": c.created_at, "updatedAt": c.updated_at })
}

/// The message object of API.md.
pub fn message_json(m: &MessageRow) -> Value {
    json!({
        "id": m.id,
        "chatId": m.chat_id,
        "role": m.role,
        "content": m.content,
        "type": m.kind,
        "userId": m.user_id,
        "createdAt": m.created_at,
        "updatedAt": m.updated_at,
    })
}

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::Internal(e.into())
}

fn chat_error(e: ExecuteError<ChatError>) -> ApiError {
    match e {
        ExecuteError::Domain(ChatError::ChatNotFound) => {
            ApiError::NotFound("chat not found".into())
        }
        ExecuteError::Domain(ChatError::MessageNotFound) => {
            ApiError::NotFound("message not found".into())
        }
        ExecuteError::Domain(ChatError::NotMessageAuthor) => {
            ApiError::Forbidden("only the author may change this message".into())
        }
        ExecuteError::Domain(
            e @ (ChatError::ChatAlreadyExists | ChatError::MessageAlreadyExists),
        ) => ApiError::Conflict(e.to_string()),
        ExecuteError::Domain(ChatError::NothingToChange) => {
            ApiError::field("content", "nothing to change")
        }
        ExecuteError::Store(s) if s.is_conflict() => {
            ApiError::Conflict("too many concurrent changes; retry".into())
        }
        other => ApiError::Internal(anyhow::anyhow!("{other}")),
    }
}

/// Runs a chat command for the caller and waits until its effect is readable.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    auth: &AuthUser,
    chat_id: Uuid,
    command: ChatCommand,
) -> Result<Executed<Chat>, ApiError> {
    let done = state
        .commands
        .execute::<Chat>(&chat_id, command, metadata(headers, Some(auth.user.id)))
        .await
        .map_err(chat_error)?;
    state
        .visible(chats::NAME, done.appended.map(|a| a.last_position))
        .await?;
    Ok(done)
}

async fn owned_chat(state: &AppState, auth: &AuthUser, id: Uuid) -> Result<ChatRow, ApiError> {
    chats::get_chat(&state.db, id, auth.user.id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::NotFound("chat not found".into()))
}

/// Page and limit as asked, validated: page ≥ 1 (default 1), 1 ≤ limit ≤ 100 (default 50).
fn paging(
    page: Option<&str>,
    limit: Option<&str>,
    problems: &mut Map<String, Value>,
) -> (u32, u32) {
    let page = match page.map(str::parse::<u32>) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        Some(_) => {
            problems.insert("page".into(), "must be a whole number of at least 1".into());
            1
        }
    };
    let limit = match limit.map(str::parse::<u32>) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            problems.insert(
                "limit".into(),
                format!("must be between 1 and {MAX_LIMIT}").into(),
            );
            DEFAULT_LIMIT
        }
    };
    (page, limit)
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessagesQuery {
    page: Option<String>,
    limit: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    search: Option<String>,
    q: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
}

impl MessagesQuery {
    fn filter(
        &self,
        chat_id: Option<Uuid>,
        search: Option<String>,
    ) -> Result<(MessageFilter, u32, u32), ApiError> {
        let mut problems = Map::new();
        let (page, limit) = paging(self.page.as_deref(), self.limit.as_deref(), &mut problems);
        let kind = match self.kind.as_deref().map(MessageKind::parse) {
            None => None,
            Some(Ok(k)) => Some(k.as_str().to_owned()),
            Some(Err(e)) => {
                problems.insert("type".into(), e.reason.into());
                None
            }
        };
        let mut date = |field: &str, v: &Option<String>, end: bool| match v {
            None => None,
            Some(s) => parse_date(s, end).or_else(|| {
                problems.insert(field.into(), "must be an ISO 8601 date or date-time".into());
                None
            }),
        };
        let start = date("startDate", &self.start_date, false);
        let end = date("endDate", &self.end_date, true);
        if let (Some(s), Some(e)) = (start, end)
            && s > e
        {
            problems.insert("endDate".into(), "must not be before startDate".into());
        }
        if !problems.is_empty() {
            return Err(ApiError::invalid(problems));
        }
        let search = search.filter(|s| !s.trim().is_empty());
        Ok((
            MessageFilter {
                chat_id,
                kind,
                start,
                end,
                search,
            },
            page,
            limit,
        ))
    }
}

async fn page_of_messages(
    state: &AppState,
    auth: &AuthUser,
    filter: MessageFilter,
    page: u32,
    limit: u32,
) -> Result<Json<Value>, ApiError> {
    let offset = u64::from(page - 1) * u64::from(limit);
    let (rows, total) = chats::find_messages(&state.db, auth.user.id, &filter, limit, offset)
        .await
        .map_err(db_error)?;
    let messages: Vec<Value> = rows.iter().map(message_json).collect();
    Ok(Json(
        json!({ "messages": messages, "total": total, "page": page, "limit": limit }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct TitleBody {
    title: String,
}

/// `POST /api/chats` `{title}` → 201 `{id, title, createdAt}`.
#[utoipa::path(post, path = "/api/chats", tag = "chats", security(("bearer" = []), ("cookie" = [])), request_body = TitleBody, responses((status = 201, description = "{id, title, createdAt}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn create_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<TitleBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let title = ChatTitle::parse(&body.title).map_err(|e| ApiError::field(e.field, e.reason))?;
    let chat_id = Uuid::now_v7();
    let command = ChatCommand::Create {
        chat_id,
        owner: auth.user.id,
        title,
        at: now(),
    };
    run(&state, &headers, &auth, chat_id, command).await?;
    let chat = owned_chat(&state, &auth, chat_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": chat.id, "title": chat.title, "createdAt": chat.created_at })),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    page: Option<String>,
    limit: Option<String>,
}

/// `GET /api/chats` → `{chats, total, page, limit}`, most recent activity first.
#[utoipa::path(get, path = "/api/chats", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("page" = Option<u32>, Query, description = "Page, from 1"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100, default 50")), responses((status = 200, description = "{chats, total, page, limit}, most recent activity first"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn list_chats(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut problems = Map::new();
    let (page, limit) = paging(q.page.as_deref(), q.limit.as_deref(), &mut problems);
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let offset = u64::from(page - 1) * u64::from(limit);
    let (rows, total) = chats::list_chats(&state.db, auth.user.id, limit, offset)
        .await
        .map_err(db_error)?;
    let list: Vec<Value> = rows.iter().map(chat_json).collect();
    Ok(Json(
        json!({ "chats": list, "total": total, "page": page, "limit": limit }),
    ))
}

/// `GET /api/chats/{chatId}`.
#[utoipa::path(get, path = "/api/chats/{chatId}", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path)), responses((status = 200, description = "{id, title, createdAt, updatedAt}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn get_chat(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(chat_json(&owned_chat(&state, &auth, chat_id).await?)))
}

/// `PUT /api/chats/{chatId}` `{title}`.
#[utoipa::path(put, path = "/api/chats/{chatId}", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path)), request_body = TitleBody, responses((status = 200, description = "The chat"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn rename_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<TitleBody>,
) -> Result<Json<Value>, ApiError> {
    let title = ChatTitle::parse(&body.title).map_err(|e| ApiError::field(e.field, e.reason))?;
    let command = ChatCommand::Rename {
        actor: auth.user.id,
        title,
        at: now(),
    };
    run(&state, &headers, &auth, chat_id, command).await?;
    Ok(Json(chat_json(&owned_chat(&state, &auth, chat_id).await?)))
}

/// `DELETE /api/chats/{chatId}` → 204; its messages vanish from every read.
#[utoipa::path(delete, path = "/api/chats/{chatId}", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path)), responses((status = 204, description = "Deleted, with its messages"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn delete_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let command = ChatCommand::Delete {
        actor: auth.user.id,
        at: now(),
    };
    run(&state, &headers, &auth, chat_id, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/chats/{chatId}/messages?page&limit&type&search&startDate&endDate`.
#[utoipa::path(get, path = "/api/chats/{chatId}/messages", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path), ("page" = Option<u32>, Query, description = "Page, from 1"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100, default 50"), ("type" = Option<String>, Query, description = "text, code or image"), ("startDate" = Option<String>, Query, description = "ISO date or date-time, inclusive"), ("endDate" = Option<String>, Query, description = "ISO date or date-time, inclusive"), ("search" = Option<String>, Query, description = "Full-text: every word, any order, case and accents ignored; ranked")), responses((status = 200, description = "{messages, total, page, limit}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<Value>, ApiError> {
    let (filter, page, limit) = q.filter(Some(chat_id), q.search.clone())?;
    let found = page_of_messages(&state, &auth, filter, page, limit).await?;
    // The page is read for the caller's chats only, so a match proves the chat is theirs; only
    // when nothing matched must it be told apart from another's or a missing chat (404).
    if found["total"] == 0 {
        owned_chat(&state, &auth, chat_id).await?;
    }
    Ok(found)
}

/// `GET /api/messages/search?q&page&limit&type&startDate&endDate`: across all the caller's chats.
#[utoipa::path(get, path = "/api/messages/search", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("q" = String, Query, description = "Words to find"), ("page" = Option<u32>, Query, description = "Page, from 1"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100, default 50"), ("type" = Option<String>, Query, description = "text, code or image"), ("startDate" = Option<String>, Query, description = "ISO date or date-time, inclusive"), ("endDate" = Option<String>, Query, description = "ISO date or date-time, inclusive")), responses((status = 200, description = "{messages, total, page, limit} across the caller's chats, ranked"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn search_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<Value>, ApiError> {
    let words = q.q.clone().or_else(|| q.search.clone());
    if words.as_deref().is_none_or(|w| w.trim().is_empty()) {
        return Err(ApiError::field("q", "must not be empty"));
    }
    let (filter, page, limit) = q.filter(None, words)?;
    page_of_messages(&state, &auth, filter, page, limit).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct SendBody {
    content: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /api/chats/{chatId}/messages` `{content, type}` → 201 message.
#[utoipa::path(post, path = "/api/chats/{chatId}/messages", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path)), request_body = SendBody, responses((status = 201, description = "The message"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn send_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiPath(chat_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut problems = Map::new();
    let content = MessageContent::parse(&body.content)
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let kind = MessageKind::parse(body.kind.as_deref().unwrap_or("text"))
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let (Ok(content), Ok(kind)) = (content, kind) else {
        return Err(ApiError::invalid(problems));
    };
    let message_id = Uuid::now_v7();
    let command = ChatCommand::SendMessage {
        message_id,
        actor: auth.user.id,
        role: Role::User,
        content,
        kind,
        at: now(),
    };
    let done = run(&state, &headers, &auth, chat_id, command).await?;
    // The event holds the whole new row, and the read model holds it too by now: answer from
    // the event rather than reading it back.
    let sent = done
        .events
        .iter()
        .find_map(|e| match e {
            ChatEvent::MessageSent(m) if m.message_id == message_id => Some(m),
            _ => None,
        })
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("send produced no MessageSent")))?;
    Ok((
        StatusCode::CREATED,
        Json(message_json(&chats::MessageRow::from(sent))),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct EditBody {
    content: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `PUT /api/chats/{chatId}/messages/{messageId}` `{content?, type?}` → `{id, content, type,
/// updatedAt}`.
#[utoipa::path(put, path = "/api/chats/{chatId}/messages/{messageId}", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path), ("messageId" = Uuid, Path)), request_body = EditBody, responses((status = 200, description = "{id, content, type, updatedAt}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not the author", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn edit_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<EditBody>,
) -> Result<Json<Value>, ApiError> {
    let mut problems = Map::new();
    if body.content.is_none() && body.kind.is_none() {
        return Err(ApiError::field("content", "give content, type or both"));
    }
    let content = body
        .content
        .as_deref()
        .map(MessageContent::parse)
        .transpose()
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let kind = body
        .kind
        .as_deref()
        .map(MessageKind::parse)
        .transpose()
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let (Ok(content), Ok(kind)) = (content, kind) else {
        return Err(ApiError::invalid(problems));
    };
    let command = ChatCommand::EditMessage {
        message_id,
        actor: auth.user.id,
        content,
        kind,
        at: now(),
    };
    // The answer is the message as this edit left it, even if a concurrent edit follows at once.
    let edited = state
        .commands
        .execute_then::<Chat, _>(
            &chat_id,
            command,
            metadata(&headers, Some(auth.user.id)),
            move |chat: &Chat| {
                chat.messages
                    .get(&message_id)
                    .map(|m| (m.content.clone(), m.kind))
            },
        )
        .await;
    match edited {
        Ok((done, Some((content, kind)))) => {
            state
                .visible(chats::NAME, done.appended.map(|a| a.last_position))
                .await?;
            let at = done.events.iter().find_map(|e| match e {
                ChatEvent::MessageEdited(m) => Some(m.at),
                _ => None,
            });
            if let Some(at) = at {
                return Ok(Json(json!({
                    "id": message_id,
                    "content": content.as_str(),
                    "type": kind.as_str(),
                    "updatedAt": at,
                })));
            }
        }
        Ok((_, None)) => return Err(ApiError::NotFound("message not found".into())),
        // Asking for what is already there changes nothing and is not an error.
        Err(ExecuteError::Domain(ChatError::NothingToChange)) => {}
        Err(e) => return Err(chat_error(e)),
    }
    let m = chats::get_message(&state.db, chat_id, message_id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::NotFound("message not found".into()))?;
    Ok(Json(
        json!({ "id": m.id, "content": m.content, "type": m.kind, "updatedAt": m.updated_at }),
    ))
}

/// `DELETE /api/chats/{chatId}/messages/{messageId}` → 204.
#[utoipa::path(delete, path = "/api/chats/{chatId}/messages/{messageId}", tag = "chats", security(("bearer" = []), ("cookie" = [])), params(("chatId" = Uuid, Path), ("messageId" = Uuid, Path)), responses((status = 204, description = "Deleted"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn delete_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let command = ChatCommand::DeleteMessage {
        message_id,
        actor: auth.user.id,
        at: now(),
    };
    run(&state, &headers, &auth, chat_id, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_dates_cover_the_whole_day() {
        let s = parse_date("2026-03-01", false).unwrap();
        let e = parse_date("2026-03-01", true).unwrap();
        assert_eq!(s.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert!(e > s && e.to_rfc3339().starts_with("2026-03-01T23:59:59"));
        assert!(parse_date("2026-03-01T10:00:00+02:00", false).is_some());
        assert!(parse_date("yesterday", false).is_none());
    }

    #[test]
    fn paging_defaults_and_bounds() {
        let mut p = Map::new();
        assert_eq!(paging(None, None, &mut p), (1, 50));
        assert_eq!(paging(Some("3"), Some("100"), &mut p), (3, 100));
        assert!(p.is_empty());
        paging(Some("0"), Some("101"), &mut p);
        assert!(p.contains_key("page") && p.contains_key("limit"));
    }
}
