//! `GET /api/settings` and `PUT /api/settings`: a user's preferences, with defaults for a new
//! user and `isPremium` derived from the billing tier (never set by the user).

use crate::auth::AuthUser;
use crate::extract::ApiJson;
use crate::resources::settings::{SettingsBody, SettingsEnvelope, SettingsFields};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use confab_application::{Problems, settings};
use confab_domain::ValidationError;
use confab_domain::settings::{ResponseStyle, SettingsChange, Theme, bounded_text};

/// Longest model id, in characters.
const MAX_MODEL_CHARS: usize = 100;

/// `GET /api/settings`.
#[utoipa::path(get, path = "/api/settings", tag = "settings", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "The caller's settings (defaults for a new user)", body = SettingsEnvelope)))]
pub(crate) async fn get_settings(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<SettingsEnvelope>, ApiError> {
    let settings = settings::get(&state.app, &auth).await?.into();
    Ok(Json(SettingsEnvelope { settings }))
}

/// The change the fields ask for, every problem by field.
fn validate(f: SettingsFields) -> Result<SettingsChange, Problems> {
    let mut problems = Problems::new();
    let model = f.model.as_deref().and_then(|m| {
        let parsed = if m.trim().is_empty() {
            Err(ValidationError::new("model", "must not be empty"))
        } else {
            bounded_text("model", m, MAX_MODEL_CHARS).map(|_| m.trim().to_owned())
        };
        problems.check(parsed)
    });
    let theme = f
        .theme
        .as_deref()
        .and_then(|t| problems.check(Theme::parse(t)));
    let context = f
        .context
        .as_deref()
        .and_then(|c| problems.check(bounded_text("context", c, 10_000)));
    let runtime = f
        .runtime
        .as_deref()
        .and_then(|r| problems.check(bounded_text("runtime", r, 100)));
    let response_style = f
        .response_style
        .as_deref()
        .and_then(|s| problems.check(ResponseStyle::parse(s)));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(SettingsChange {
        model,
        theme,
        context,
        runtime,
        response_style,
        always_show_code: f.always_show_code,
    })
}

/// `PUT /api/settings` `{settings: {...}}` (any subset) → the same shape as GET.
#[utoipa::path(put, path = "/api/settings", tag = "settings", security(("bearer" = []), ("cookie" = [])), request_body = SettingsBody,
    responses((status = 200, description = "The settings as changed", body = SettingsEnvelope)))]
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<SettingsEnvelope>, ApiError> {
    let change = validate(body.settings)?;
    let settings = settings::update(&state.app, &auth, change).await?.into();
    Ok(Json(SettingsEnvelope { settings }))
}
