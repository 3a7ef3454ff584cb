//! `PUT /api/profile`: a user's name and email. A new email is claimed before the change is
//! recorded (409 if someone holds it) and the old one is released after, so addresses stay
//! unique across accounts.

use crate::auth::{AuthUser, claim_email, metadata, now};
use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use confab_domain::account::{
    Account, AccountCommand, DisplayName, Email, EmailClaim, EmailClaimCommand,
};
use confab_projections::accounts;
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct ProfileBody {
    name: Option<String>,
    email: Option<String>,
}

/// `PUT /api/profile` `{name, email}` (either or both) → `{user: {name, email, updatedAt}}`.
#[utoipa::path(put, path = "/api/profile", tag = "profile", security(("bearer" = []), ("cookie" = [])), request_body = ProfileBody, responses((status = 200, description = "{user: {name, email, updatedAt}}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 409, description = "Email taken", body = ErrorBody)))]
pub(crate) async fn update_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<Value>, ApiError> {
    if body.name.is_none() && body.email.is_none() {
        return Err(ApiError::field("name", "give name, email or both"));
    }
    let mut problems = Map::new();
    let name = body
        .name
        .as_deref()
        .map(DisplayName::parse)
        .transpose()
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let email = body
        .email
        .as_deref()
        .map(Email::parse)
        .transpose()
        .map_err(|e| problems.insert(e.field.into(), e.reason.into()));
    let (Ok(name), Ok(email)) = (name, email) else {
        return Err(ApiError::invalid(problems));
    };
    let user_id = auth.user.id;
    let meta = metadata(&headers, Some(user_id));
    let new_email = email.filter(|e| e.as_str() != auth.user.email);
    if let Some(e) = &new_email {
        claim_email(&*state.store, &meta, e, user_id).await?;
    }
    let command = AccountCommand::UpdateProfile {
        name,
        email: new_email.clone(),
        at: now(),
    };
    let done = match state
        .commands
        .execute::<Account>(&user_id, command, meta.clone())
        .await
    {
        Ok(done) => done,
        Err(e) => {
            if let Some(claimed) = &new_email {
                release(&state, &meta, claimed, user_id).await;
            }
            return Err(ApiError::Internal(anyhow::anyhow!("{e}")));
        }
    };
    if new_email.is_some()
        && let Ok(old) = Email::parse(&auth.user.email)
    {
        release(&state, &meta, &old, user_id).await;
    }
    state
        .visible(accounts::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let user = accounts::user_by_id(&state.db, user_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(
        json!({ "user": { "name": user.name, "email": user.email, "updatedAt": user.updated_at } }),
    ))
}

/// Gives up a claim; a failure only leaves the address reserved, so it is logged, not returned.
async fn release(
    state: &AppState,
    meta: &confab_eventstore::EventMetadata,
    email: &Email,
    user_id: uuid::Uuid,
) {
    let command = EmailClaimCommand::Release { user_id, at: now() };
    if let Err(e) = state
        .commands
        .execute::<EmailClaim>(&EmailClaim::id_for(email), command, meta.clone())
        .await
    {
        tracing::warn!(error = %e, "could not release an email claim; the address stays reserved");
    }
}
