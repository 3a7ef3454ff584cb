//! Accounts and sessions: `POST /api/auth/signup`, `/signin`, `/signout`, `GET /api/me`, and
//! the [`AuthUser`] extractor every protected route takes.
//!
//! Passwords are hashed with Argon2id (on the blocking pool: it is deliberately slow). A session
//! token is 32 random bytes, given to the client once; only its SHA-256 is recorded, in the
//! `account.session_started` event and the `sessions` read model.

use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, SubsecRound, Utc};
use confab_domain::account::{
    Account, AccountCommand, AccountRole, DisplayName, Email, EmailClaim, EmailClaimCommand,
    EmailClaimError,
};
use confab_domain::session::{Session, SessionCommand, SessionKey};
use confab_eventstore::aggregate::{ExecuteError, execute, load};
use confab_eventstore::{EventMetadata, EventStore};
use confab_projections::accounts::{self, UserRow};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use uuid::Uuid;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "confab_session";

/// A claim older than this whose account never appeared is treated as a crashed sign-up.
const ABANDONED_CLAIM_AFTER: chrono::Duration = chrono::Duration::minutes(1);

/// Now, at the microsecond precision both databases store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Event metadata for a command made by `actor` in the request carrying `headers`.
pub fn metadata(headers: &HeaderMap, actor: Option<Uuid>) -> EventMetadata {
    let correlation_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    EventMetadata {
        actor,
        correlation_id,
        causation_id: None,
    }
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 of a session token, hex: what is stored instead of the token.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(ApiError::Internal)
}

async fn verify_password(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash of a random password, verified against when the email is unknown, so that a wrong
/// email takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(new_token().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The signed-in user of a request: from `Authorization: Bearer <token>` or the session cookie.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user.
    pub user: UserRow,
    /// The session the request came with.
    pub session_id: Uuid,
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

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already resolved for this request (by the per-user rate limit).
        if let Some(found) = parts.extensions.get::<AuthUser>() {
            return Ok(found.clone());
        }
        let token = bearer_or_cookie(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let found = accounts::session_user(&state.db, &token_hash(&token), Utc::now())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .ok_or(ApiError::Unauthorized)?;
        Ok(AuthUser {
            user: found.user,
            session_id: found.session_id,
        })
    }
}

/// `u`'s credit balance: the ledger's, or their tier's starting credits before its first use.
async fn credits(state: &AppState, u: &UserRow) -> Result<i64, ApiError> {
    let balance = confab_projections::credits::balance(&state.db, u.id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(balance.unwrap_or_else(|| state.ai.catalogue.tier(&u.tier).starting_credits))
}

/// The `user` object of API.md.
pub fn user_json(u: &UserRow, credits: i64) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "imageUrl": u.image_url,
        "role": u.role,
        "tier": u.tier,
        "credits": credits,
    })
}

fn session_cookie(state: &AppState, token: &str) -> HeaderValue {
    let max_age = state.session_ttl.num_seconds();
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn store_error<E: std::error::Error + 'static>(e: ExecuteError<E>) -> ApiError {
    match e {
        ExecuteError::Store(s) if s.is_conflict() => {
            ApiError::Conflict("too many concurrent changes; retry".into())
        }
        other => ApiError::Internal(anyhow::anyhow!("{other}")),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct SignUpBody {
    email: String,
    password: String,
    name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct SignInBody {
    email: String,
    password: String,
}

/// Starts a session for `user_id`; returns the token and the position to await.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    user_id: Uuid,
) -> Result<(String, Option<u64>), ApiError> {
    let token = new_token();
    let at = now();
    let session_id = Uuid::now_v7();
    let done = state
        .commands
        .execute::<Session>(
            &SessionKey {
                user_id,
                session_id,
            },
            SessionCommand::Start {
                user_id,
                session_id,
                token_hash: token_hash(&token),
                expires_at: at + state.session_ttl,
                at,
            },
            metadata(headers, Some(user_id)),
        )
        .await
        .map_err(store_error)?;
    Ok((token, done.appended.map(|a| a.last_position)))
}

/// Claims `email` for `user_id`, taking over a claim whose sign-up crashed before registering.
pub async fn claim_email(
    store: &dyn EventStore,
    meta: &EventMetadata,
    email: &Email,
    user_id: Uuid,
) -> Result<(), ApiError> {
    let claim_id = EmailClaim::id_for(email);
    let claim = |abandoned_by| EmailClaimCommand::Claim {
        user_id,
        abandoned_by,
        at: now(),
    };
    let taken = || ApiError::Conflict("email address already in use".into());
    match execute::<EmailClaim>(store, &claim_id, claim(None), meta.clone()).await {
        Ok(_) => Ok(()),
        Err(ExecuteError::Domain(EmailClaimError::Taken { holder })) => {
            let (claim_state, _) = load::<EmailClaim>(store, &claim_id)
                .await
                .map_err(store_error)?;
            let (_, holder_version) = load::<Account>(store, &holder).await.map_err(store_error)?;
            let old = claim_state
                .since
                .is_some_and(|since| now() - since > ABANDONED_CLAIM_AFTER);
            if holder_version > 0 || !old {
                return Err(taken());
            }
            execute::<EmailClaim>(store, &claim_id, claim(Some(holder)), meta.clone())
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    ExecuteError::Domain(_) => taken(),
                    other => store_error(other),
                })
        }
        Err(e) => Err(store_error(e)),
    }
}

/// Creates an account: claims the email, hashes the password, records the registration.
/// Returns the new user's id and the position to await. Used by sign-up and by operators
/// creating admins.
pub async fn register(
    store: &dyn EventStore,
    meta: &EventMetadata,
    email: Email,
    name: DisplayName,
    password: String,
    role: AccountRole,
) -> Result<(Uuid, u64), ApiError> {
    let password_hash = hash_password(password).await?;
    let user_id = Uuid::now_v7();
    let meta = EventMetadata {
        actor: meta.actor.or(Some(user_id)),
        ..meta.clone()
    };
    claim_email(store, &meta, &email, user_id).await?;
    let done = execute::<Account>(
        store,
        &user_id,
        AccountCommand::Register {
            user_id,
            email,
            name,
            password_hash,
            role,
            at: now(),
        },
        meta,
    )
    .await
    .map_err(store_error)?;
    Ok((user_id, done.appended.map(|a| a.last_position).unwrap_or(0)))
}

/// Validates a password's length: 8 to 128 characters.
pub fn check_password(p: &str) -> Result<(), String> {
    match p.chars().count() {
        n if n < 8 => Err("must be at least 8 characters".into()),
        n if n > 128 => Err("must be at most 128 characters".into()),
        _ => Ok(()),
    }
}

/// `POST /api/auth/signup` `{email, password, name}` → 201 `{user, token}`.
#[utoipa::path(post, path = "/api/auth/signup", tag = "auth", request_body = SignUpBody, responses((status = 201, description = "{user, token} and the session cookie"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 409, description = "Email taken", body = ErrorBody)))]
pub(crate) async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignUpBody>,
) -> Result<
    (
        StatusCode,
        [(axum::http::HeaderName, HeaderValue); 1],
        Json<Value>,
    ),
    ApiError,
> {
    let mut problems = serde_json::Map::new();
    let email =
        Email::parse(&body.email).map_err(|e| problems.insert("email".into(), e.reason.into()));
    let name =
        DisplayName::parse(&body.name).map_err(|e| problems.insert("name".into(), e.reason.into()));
    if let Err(reason) = check_password(&body.password) {
        problems.insert("password".into(), reason.into());
    }
    let (Ok(email), Ok(name)) = (email, name) else {
        return Err(ApiError::invalid(problems));
    };
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let (user_id, _) = register(
        &*state.store,
        &metadata(&headers, None),
        email,
        name,
        body.password,
        AccountRole::User,
    )
    .await?;
    let (token, pos) = start_session(&state, &headers, user_id).await?;
    state.visible(accounts::NAME, pos).await?;
    let user = accounts::user_by_id(&state.db, user_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("registered user not in read model")))?;
    Ok((
        StatusCode::CREATED,
        [(SET_COOKIE, session_cookie(&state, &token))],
        Json(json!({ "user": user_json(&user, credits(&state, &user).await?), "token": token })),
    ))
}

/// `POST /api/auth/signin` `{email, password}` → `{user, token}` and the session cookie.
#[utoipa::path(post, path = "/api/auth/signin", tag = "auth", request_body = SignInBody, responses((status = 200, description = "{user, token} and the session cookie"), (status = 401, description = "Wrong email or password", body = ErrorBody)))]
pub(crate) async fn signin(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignInBody>,
) -> Result<([(axum::http::HeaderName, HeaderValue); 1], Json<Value>), ApiError> {
    let refused = || ApiError::Unauthorized;
    let user = match Email::parse(&body.email) {
        Ok(email) => accounts::user_by_email(&state.db, email.as_str())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?,
        Err(_) => None,
    };
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let ok = verify_password(body.password, phc).await;
    let Some(user) = user.filter(|_| ok) else {
        return Err(refused());
    };
    let (token, pos) = start_session(&state, &headers, user.id).await?;
    state.visible(accounts::NAME, pos).await?;
    Ok((
        [(SET_COOKIE, session_cookie(&state, &token))],
        Json(json!({ "user": user_json(&user, credits(&state, &user).await?), "token": token })),
    ))
}

/// `POST /api/auth/signout` → 204; the token stops working at once.
#[utoipa::path(post, path = "/api/auth/signout", tag = "auth", security(("bearer" = []), ("cookie" = [])), responses((status = 204, description = "Signed out; the token stops working"), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn signout(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
) -> Result<(StatusCode, [(axum::http::HeaderName, HeaderValue); 1]), ApiError> {
    let done = state
        .commands
        .execute::<Session>(
            &SessionKey {
                user_id: auth.user.id,
                session_id: auth.session_id,
            },
            SessionCommand::Revoke {
                session_id: auth.session_id,
                at: now(),
            },
            metadata(&headers, Some(auth.user.id)),
        )
        .await
        .map_err(store_error)?;
    state
        .visible(accounts::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let clear = HeaderValue::from_static(
        "confab_session=; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=0",
    );
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, clear)]))
}

/// `GET /api/me` → `{user}`.
#[utoipa::path(get, path = "/api/me", tag = "auth", security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "{user: {id, email, name, imageUrl, role, tier, credits}}"), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn me(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "user": user_json(&auth.user, credits(&state, &auth.user).await?) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }

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

    #[tokio::test]
    async fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), h.clone()).await);
        assert!(!verify_password("wrong horse".into(), h).await);
        assert!(!verify_password("x".into(), "not a hash".into()).await);
    }
}
