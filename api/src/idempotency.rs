//! `Idempotency-Key` on POST routes: a retried request with the same key and the same body gets
//! the first answer again (with `Idempotent-Replayed: true`) and appends nothing new.
//!
//! Keys are scoped to the caller (their session token's hash), the method and the path. The same
//! key with a different body is a 409; a retry while the first request still runs is a 409 too.
//! 5xx answers are not kept, so a retry after a failure runs again; so does a retry after a
//! run that never answered (its process died) once 15 seconds have passed. A request that
//! creates something (a chat, a message, an attachment, a provider) creates it under an id fixed
//! at the key's first use, so a run again finds what an earlier run wrote instead of writing it
//! twice. Sign-up and sign-in are not
//! covered: their answers hold session tokens, which are never stored in the clear. Answers are
//! kept 24 hours; [`purge_periodically`] deletes older ones every hour. The caller is
//! authenticated before the body is read (anonymous requests pass to the route, which answers
//! 401), and a body is buffered only up to the route's own limit. A streamed reply (`POST
//! /api/chat`) is passed through as it streams; its chat is kept, and a replay streams that
//! chat's reply again from its start (409 naming the chat once the reply is no longer held),
//! never asking the model twice.

use crate::auth::AuthUser;
use crate::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use confab_application::accounts::token_hash;
use confab_projections::ReadDb;
use sha2::{Digest, Sha256};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// How long an answer is kept.
const KEEP: Duration = Duration::hours(24);
/// Largest response kept for replay.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a claim may go unanswered before it counts as abandoned (its run's process died)
/// and a retry runs the request again. Runs are bounded well below this: the body is read
/// before the claim, and a write waits at most `CONFAB_WRITE_TIMEOUT_MS` for its read model.
const ABANDONED_AFTER: Duration = Duration::seconds(15);
/// The body limit of routes without their own (axum's default).
const DEFAULT_REQUEST_LIMIT: usize = 2 * 1024 * 1024;

/// The body limit of the route at `path`: a request is never buffered beyond what the route
/// itself would read.
fn request_limit(state: &AppState, path: &str) -> usize {
    match path {
        "/api/profile/image" => crate::images::MAX_BODY_BYTES,
        "/api/upload" => state
            .app
            .documents
            .max_bytes
            .saturating_add(crate::documents::FORM_OVERHEAD_BYTES),
        _ => DEFAULT_REQUEST_LIMIT,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(sqlx::FromRow)]
struct Stored {
    request_hash: String,
    status: Option<i64>,
    content_type: Option<String>,
    body: Option<Vec<u8>>,
    created_at: chrono::DateTime<Utc>,
}

async fn lookup(db: &ReadDb, scope: &str) -> Result<Option<Stored>, sqlx::Error> {
    confab_projections::query_as!(
        db,
        fetch_optional,
        Stored,
        "SELECT request_hash, status, content_type, body, created_at FROM idempotency_keys \
         WHERE scope = $1",
        scope
    )
}

async fn exec(db: &ReadDb, sql: &'static str, scope: &str) -> Result<u64, sqlx::Error> {
    match db {
        ReadDb::Sqlite(p) => sqlx::query(sql)
            .bind(scope)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
        ReadDb::Postgres(p) => sqlx::query(sql)
            .bind(scope)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
    }
}

/// Deletes the answers older than 24 hours (a key may then be used afresh); returns how many.
pub async fn purge_expired(db: &ReadDb) -> Result<u64, sqlx::Error> {
    let sql = "DELETE FROM idempotency_keys WHERE created_at < $1";
    let cutoff = Utc::now() - KEEP;
    let done = match db {
        ReadDb::Sqlite(p) => sqlx::query(sql)
            .bind(cutoff)
            .execute(p)
            .await?
            .rows_affected(),
        ReadDb::Postgres(p) => sqlx::query(sql)
            .bind(cutoff)
            .execute(p)
            .await?
            .rows_affected(),
    };
    Ok(done)
}

/// Purges expired answers now and then every hour, until `stop` turns true.
pub async fn purge_periodically(db: ReadDb, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match purge_expired(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired idempotency keys failed"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

/// Claims `scope` for a run of the request: the id of what the request creates, fixed at its
/// first claim, or `None` while another run holds the claim. A claim whose run never answered
/// (its process died, or it failed with a 5xx) is taken over by the next run of the same
/// request, with the same id, so that it finds what the first run may have written instead of
/// writing it again.
async fn claim(
    db: &ReadDb,
    scope: &str,
    request_hash: &str,
    user: uuid::Uuid,
) -> Result<Option<uuid::Uuid>, sqlx::Error> {
    // The user is kept so that erasing them (`DELETE /api/me`) deletes their answers too.
    let insert = "INSERT INTO idempotency_keys (scope, request_hash, created_at, resource_id, \
                  user_id) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope) DO NOTHING";
    let take_over = "UPDATE idempotency_keys SET created_at = $3 WHERE scope = $1 \
                     AND request_hash = $2 AND status IS NULL AND created_at < $4 \
                     RETURNING resource_id";
    let now = Utc::now();
    let id = uuid::Uuid::now_v7();
    let abandoned = now - ABANDONED_AFTER;
    let taken: Option<Option<String>> = match db {
        ReadDb::Sqlite(p) => {
            let n = sqlx::query(insert)
                .bind(scope)
                .bind(request_hash)
                .bind(now)
                .bind(id.to_string())
                .bind(user)
                .execute(p)
                .await?
                .rows_affected();
            if n == 1 {
                return Ok(Some(id));
            }
            sqlx::query_scalar(take_over)
                .bind(scope)
                .bind(request_hash)
                .bind(now)
                .bind(abandoned)
                .fetch_optional(p)
                .await?
        }
        ReadDb::Postgres(p) => {
            let n = sqlx::query(insert)
                .bind(scope)
                .bind(request_hash)
                .bind(now)
                .bind(id.to_string())
                .bind(user)
                .execute(p)
                .await?
                .rows_affected();
            if n == 1 {
                return Ok(Some(id));
            }
            sqlx::query_scalar(take_over)
                .bind(scope)
                .bind(request_hash)
                .bind(now)
                .bind(abandoned)
                .fetch_optional(p)
                .await?
        }
    };
    // A claim made before resource ids were kept has none: the run gets a fresh one.
    Ok(taken.map(|kept| {
        kept.and_then(|k| uuid::Uuid::parse_str(&k).ok())
            .unwrap_or(id)
    }))
}

/// Gives a claim up after a run that did not answer (a 5xx): the next run of the request takes
/// it over at once, keeping its resource id (the failed run may have written before failing).
async fn abandon(db: &ReadDb, scope: &str) -> Result<(), sqlx::Error> {
    let sql = "UPDATE idempotency_keys SET created_at = $2 WHERE scope = $1";
    let long_ago = Utc::now() - ABANDONED_AFTER - Duration::seconds(1);
    match db {
        ReadDb::Sqlite(p) => {
            sqlx::query(sql)
                .bind(scope)
                .bind(long_ago)
                .execute(p)
                .await?;
        }
        ReadDb::Postgres(p) => {
            sqlx::query(sql)
                .bind(scope)
                .bind(long_ago)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

async fn keep(
    db: &ReadDb,
    scope: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    let sql =
        "UPDATE idempotency_keys SET status = $2, content_type = $3, body = $4 WHERE scope = $1";
    match db {
        ReadDb::Sqlite(p) => {
            sqlx::query(sql)
                .bind(scope)
                .bind(i64::from(status))
                .bind(content_type)
                .bind(body)
                .execute(p)
                .await?;
        }
        ReadDb::Postgres(p) => {
            sqlx::query(sql)
                .bind(scope)
                .bind(i64::from(status))
                .bind(content_type)
                .bind(body)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

fn principal(req: &Request) -> String {
    let h = req.headers();
    let auth = h
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cookie = h.get(COOKIE).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Hash whatever identifies the caller; an anonymous caller shares the anonymous scope.
    token_hash(&format!("{auth}\u{0}{cookie}"))
}

fn replay(stored: Stored) -> Response {
    let status = stored
        .status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Body::from(stored.body.unwrap_or_default()));
    *resp.status_mut() = status;
    if let Some(ct) = stored
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// The content type recorded for a streamed reply: the kept body is its chat's id.
const STREAMED_REPLY: &str = "application/x-confab-streamed-reply";

/// Replays a streamed reply: the chat's reply from its start, live if it is still being
/// generated; once it is gone from memory, 409 naming the chat (its messages hold the reply).
async fn replay_stream(
    state: &AppState,
    user: &AuthUser,
    stored: Stored,
) -> Result<Response, ApiError> {
    let chat = stored
        .body
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a kept streamed reply has no chat")))?;
    let mut resp = crate::ai::replay_reply(state, user, chat).await?;
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(resp)
}

/// The middleware.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match handle(&state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return Ok(next.run(req).await);
    };
    if req.method() != Method::POST || req.uri().path().starts_with("/api/auth/") {
        return Ok(next.run(req).await);
    }
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?
        .to_owned();
    // Who asks comes first: an anonymous or signed-out caller gets the route's own answer
    // (401) without the body being read, let alone buffered. The user found is handed on to
    // the route.
    let mut req = req;
    if req.extensions().get::<AuthUser>().is_none() {
        match crate::auth::authenticate(state, req.headers()).await? {
            Some(user) => {
                req.extensions_mut().insert(user);
            }
            None => return Ok(next.run(req).await),
        }
    }
    let scope = token_hash(&format!(
        "{}\u{0}{}\u{0}{key}",
        principal(&req),
        req.uri().path()
    ));
    let limit = request_limit(state, req.uri().path());
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("the body is over {limit} bytes")))?;
    let request_hash = hex(&Sha256::digest(&bytes));
    let db = &state.app.db;
    let internal = ApiError::database;

    if let Some(stored) = lookup(db, &scope).await.map_err(internal)? {
        if Utc::now() - stored.created_at > KEEP {
            exec(db, "DELETE FROM idempotency_keys WHERE scope = $1", &scope)
                .await
                .map_err(internal)?;
        } else if stored.request_hash != request_hash {
            return Err(ApiError::conflict(
                "this Idempotency-Key was used with a different request",
            ));
        } else if stored.status.is_none() {
            if Utc::now() - stored.created_at < ABANDONED_AFTER {
                return Err(ApiError::conflict(
                    "a request with this Idempotency-Key is still in progress; retry later",
                ));
            }
            // Abandoned by a run that never answered: taken over below.
        } else if stored.content_type.as_deref() == Some(STREAMED_REPLY) {
            let user = parts
                .extensions
                .get::<AuthUser>()
                .cloned()
                .ok_or(ApiError::Unauthorized)?;
            return replay_stream(state, &user, stored).await;
        } else {
            return Ok(replay(stored));
        }
    }
    let caller = parts
        .extensions
        .get::<AuthUser>()
        .map(|u| u.id())
        .ok_or(ApiError::Unauthorized)?;
    let Some(resource_id) = claim(db, &scope, &request_hash, caller)
        .await
        .map_err(internal)?
    else {
        return Err(ApiError::conflict(
            "a request with this Idempotency-Key is still in progress; retry later",
        ));
    };
    let mut parts = parts;
    if let Some(user) = parts.extensions.get_mut::<AuthUser>() {
        user.0.resource_id = Some(resource_id);
    }
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    // A streamed reply (`POST /api/chat`) passes through as it streams; what is kept is its
    // chat, so that a replay resumes that chat's reply instead of asking the model again.
    if resp.status().is_success()
        && let Some(chat) = resp
            .headers()
            .get(crate::ai::CHAT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
    {
        keep(
            db,
            &scope,
            resp.status().as_u16(),
            Some(STREAMED_REPLY),
            chat.to_string().as_bytes(),
        )
        .await
        .map_err(internal)?;
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let _ = abandon(db, &scope).await;
            return Err(ApiError::Internal(
                anyhow::Error::new(e).context("reading the response body to keep"),
            ));
        }
    };
    if parts.status.is_server_error() {
        abandon(db, &scope).await.map_err(internal)?;
    } else {
        let ct = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        keep(db, &scope, parts.status.as_u16(), ct, &bytes)
            .await
            .map_err(internal)?;
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}
