//! Accounts and sessions: `POST /api/auth/signup`, `/signin`, `/signout`, `GET /api/me`, and
//! the [`AuthUser`] extractor every protected route takes (a session token from
//! `Authorization: Bearer <token>` or the `confab_session` cookie).

use crate::error::ErrorBody;
use crate::extract::ApiJson;
use crate::resources::users::User;
use crate::resources::users::{
    DeleteMeBody, ExportDocument, Session, SignInBody, SignUpBody, UserEnvelope,
};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use confab_application::accounts::{self, SignUp};
use confab_application::{Actor, Problems};
use confab_domain::account::{DisplayName, Email};
use uuid::Uuid;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "confab_session";

/// The request's id (`x-request-id`, set by the outermost layer), recorded on every event it
/// causes.
pub fn correlation_id(headers: &HeaderMap) -> Option<Uuid> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
}

/// The signed-in user of a request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Actor);

impl std::ops::Deref for AuthUser {
    type Target = Actor;

    fn deref(&self) -> &Actor {
        &self.0
    }
}

/// The session token a request carries: `Authorization: Bearer <token>` or the session cookie.
pub(crate) fn bearer_or_cookie(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|t| !t.is_empty());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|t| !t.is_empty())
}

/// The signed-in user of a request with these headers, if its token is live.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<AuthUser>, ApiError> {
    let Some(token) = bearer_or_cookie(headers) else {
        return Ok(None);
    };
    let actor = accounts::authenticate(&state.app, &token, correlation_id(headers)).await?;
    Ok(actor.map(AuthUser))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already resolved for this request (by the per-user rate limit).
        if let Some(found) = parts.extensions.get::<AuthUser>() {
            return Ok(found.clone());
        }
        authenticate(state, &parts.headers)
            .await?
            .ok_or(ApiError::Unauthorized)
    }
}

fn session_cookie(state: &AppState, token: &str) -> HeaderValue {
    let max_age = state.app.session_ttl.num_seconds();
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `Set-Cookie` header of a new session.
type SetCookie = [(HeaderName, HeaderValue); 1];

/// `POST /api/auth/signup` `{email, password, name}` → 201 `{user, token}`.
#[utoipa::path(post, path = "/api/auth/signup", tag = "auth", request_body = SignUpBody,
    responses(
        (status = 201, description = "The new account, signed in; the session cookie is set", body = Session,
            headers(("set-cookie" = String, description = "confab_session=<token>; HttpOnly; Secure; SameSite=Lax"))),
        (status = 409, description = "The email address is taken", body = ErrorBody),
    ))]
pub(crate) async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignUpBody>,
) -> Result<(StatusCode, SetCookie, Json<Session>), ApiError> {
    let mut problems = Problems::new();
    let email = problems.check(Email::parse(&body.email));
    let name = problems.check(DisplayName::parse(&body.name));
    if let Err(reason) = accounts::check_password(&body.password) {
        problems.add("password", reason);
    }
    let (Some(email), Some(name), true) = (email, name, problems.is_empty()) else {
        return Err(problems.into());
    };
    let form = SignUp {
        email,
        name,
        password: body.password,
    };
    let signed_in = accounts::sign_up(&state.app, correlation_id(&headers), form).await?;
    Ok((
        StatusCode::CREATED,
        [(SET_COOKIE, session_cookie(&state, &signed_in.token))],
        Json(Session::from(&signed_in)),
    ))
}

/// `POST /api/auth/signin` `{email, password}` → `{user, token}` and the session cookie.
#[utoipa::path(post, path = "/api/auth/signin", tag = "auth", request_body = SignInBody,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = Session,
            headers(("set-cookie" = String, description = "confab_session=<token>; HttpOnly; Secure; SameSite=Lax"))),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
    ))]
pub(crate) async fn signin(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignInBody>,
) -> Result<(SetCookie, Json<Session>), ApiError> {
    let signed_in = accounts::sign_in(
        &state.app,
        correlation_id(&headers),
        &body.email,
        body.password,
    )
    .await?;
    Ok((
        [(SET_COOKIE, session_cookie(&state, &signed_in.token))],
        Json(Session::from(&signed_in)),
    ))
}

/// `POST /api/auth/signout` → 204; the token stops working at once.
#[utoipa::path(post, path = "/api/auth/signout", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Signed out; the token stops working and the cookie is cleared"),
    ))]
pub(crate) async fn signout(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<(StatusCode, SetCookie), ApiError> {
    accounts::sign_out(&state.app, &auth).await?;
    let clear = HeaderValue::from_static(
        "confab_session=; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=0",
    );
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, clear)]))
}

/// `GET /api/me` → `{user}`.
#[utoipa::path(get, path = "/api/me", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "The caller", body = UserEnvelope)))]
pub(crate) async fn me(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<UserEnvelope>, ApiError> {
    let (user, credits) = accounts::me(&state.app, &auth).await?;
    Ok(Json(UserEnvelope {
        user: User::new(&user, credits),
    }))
}

/// `DELETE /api/me` `{password}` → 204: the account and its personal data are erased
/// (crypto-shredding): the data key is destroyed, every read model purges the user, their
/// sessions end and their email may sign up again.
#[utoipa::path(delete, path = "/api/me", tag = "auth", request_body = DeleteMeBody,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Erased; the token no longer works"),
        (status = 403, description = "The password is wrong", body = ErrorBody),
    ))]
pub(crate) async fn delete_me(
    State(state): State<AppState>,
    auth: AuthUser,
    body: axum::body::Bytes,
) -> Result<(StatusCode, SetCookie), ApiError> {
    // A DELETE often comes without a body (and without a content type): that is a missing
    // password, 400, not an unsupported media type.
    let required = || ApiError::field("password", "required: send {\"password\": \"...\"}");
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(required());
    }
    let body: DeleteMeBody = serde_json::from_slice(&body).map_err(|_| required())?;
    confab_application::privacy::erase_me(&state.app, &auth, body.password).await?;
    let clear = HeaderValue::from_static(
        "confab_session=; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=0",
    );
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, clear)]))
}

/// `GET /api/me/export` → every piece of data Confab holds about the caller, as one JSON
/// document, streamed (the chats one at a time, last).
#[utoipa::path(get, path = "/api/me/export", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "The caller's data", body = ExportDocument,
        headers(("content-disposition" = String, description = "attachment; filename=\"confab-export.json\"")))))]
pub(crate) async fn export(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<axum::response::Response, ApiError> {
    use crate::resources::users::ExportedChat;
    use axum::response::IntoResponse;
    let data = confab_application::privacy::export(&state.app, &auth).await?;
    let chats = data.chats;
    let head = ExportDocument {
        exported_at: chrono::Utc::now(),
        user: User::new(&data.user, data.credits),
        settings: data.settings.into(),
        documents: data.documents.into_iter().map(Into::into).collect(),
        credit_history: data.credit_history.into_iter().map(Into::into).collect(),
        invoices: data.invoices.into_iter().map(Into::into).collect(),
        chats: Vec::new(),
    };
    // The head, serialised with no chats, ends `"chats":[]}`: the chats stream in between.
    let mut head =
        serde_json::to_vec(&head).map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    if !head.ends_with(b"[]}") {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "the export's head does not end with its chats"
        )));
    }
    head.truncate(head.len() - 2);
    let app = state.app.clone();
    let actor = auth.0.clone();
    let body = async_stream::stream! {
        yield Ok::<_, std::io::Error>(bytes::Bytes::from(head));
        for (i, chat) in chats.into_iter().enumerate() {
            let messages = confab_application::privacy::export_messages(&app, &actor, chat.id)
                .await;
            let messages = match messages {
                Ok(m) => m,
                // Deleted since the export began: left out.
                Err(confab_application::AppError::NotFound(_)) => continue,
                Err(e) => {
                    // The status is sent: cut the body short, so the client sees it broken.
                    tracing::error!(error = %e, "export: cannot read a chat's messages");
                    yield Err(std::io::Error::other("the export failed"));
                    return;
                }
            };
            let entry = ExportedChat {
                chat: chat.into(),
                messages: messages.into_iter().map(Into::into).collect(),
            };
            let mut piece = if i == 0 { Vec::new() } else { b",".to_vec() };
            match serde_json::to_writer(&mut piece, &entry) {
                Ok(()) => yield Ok(bytes::Bytes::from(piece)),
                Err(e) => {
                    tracing::error!(error = %e, "export: cannot serialise a chat");
                    yield Err(std::io::Error::other("the export failed"));
                    return;
                }
            }
        }
        yield Ok(bytes::Bytes::from_static(b"]}"));
    };
    let mut r = axum::body::Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        axum::http::header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"confab-export.json\""),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_bearer_or_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("x=1; confab_session=abc; y=2"),
        );
        assert_eq!(bearer_or_cookie(&h).as_deref(), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok"));
        assert_eq!(bearer_or_cookie(&h).as_deref(), Some("tok"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic Zm9v"));
        assert_eq!(bearer_or_cookie(&h), None);
    }
}
