//! `PUT /api/profile`: a user's name and email (a new email is claimed first, so addresses
//! stay unique across accounts).

use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::ApiJson;
use crate::resources::users::{Profile, ProfileBody, ProfileEnvelope};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use confab_application::{Problems, accounts};
use confab_domain::account::{DisplayName, Email};

/// `PUT /api/profile` `{name, email}` (either or both) → `{user: {name, email, updatedAt}}`.
#[utoipa::path(put, path = "/api/profile", tag = "profile", security(("bearer" = []), ("cookie" = [])), request_body = ProfileBody,
    responses(
        (status = 200, description = "The profile as changed", body = ProfileEnvelope),
        (status = 409, description = "The email address is taken", body = ErrorBody),
    ))]
pub(crate) async fn update_profile(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<ProfileEnvelope>, ApiError> {
    let mut problems = Problems::new();
    let name = body
        .name
        .as_deref()
        .and_then(|n| problems.check(DisplayName::parse(n)));
    let email = body
        .email
        .as_deref()
        .and_then(|e| problems.check(Email::parse(e)));
    if !problems.is_empty() {
        return Err(problems.into());
    }
    let user = accounts::update_profile(&state.app, &auth, name, email).await?;
    Ok(Json(ProfileEnvelope {
        user: Profile {
            name: user.name,
            email: user.email,
            updated_at: user.updated_at,
        },
    }))
}
