//! Accounts and sessions: `POST /api/auth/signup`, `/signin`, `/signout`, `GET /api/me`, and
//! the [`AuthUser`] extractor every protected route takes (a session token from
//! `Authorization: Bearer <token>` or the `confab_session` cookie).

use crate::error::ErrorBody;
use crate::extract::ApiJson;
use crate::resources::users::User;
use crate::resources::users::{Session, SignInBody, SignUpBody, UserEnvelope};
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
