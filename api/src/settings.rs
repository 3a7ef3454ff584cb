//! `GET /api/settings` and `PUT /api/settings`: a user's preferences, with defaults for a new
//! user and `isPremium` derived from the billing tier (never set by the user).

use crate::auth::{AuthUser, metadata, now};
use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use confab_domain::settings::{
    ResponseStyle, Settings, SettingsChange, Theme, UpdateSettings, bounded_text,
};
use confab_projections::settings::{self, DEFAULTS};
use serde::Deserialize;
use serde_json::{Map, Value, json};

async fn current(state: &AppState, auth: &AuthUser) -> Result<Json<Value>, ApiError> {
    let row = settings::get(&state.db, auth.user.id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let (model, theme, context, runtime, style, code) = DEFAULTS;
    let body = match row {
        Some(s) => json!({
            "model": s.model, "theme": s.theme, "context": s.context, "runtime": s.runtime,
            "responseStyle": s.response_style, "alwaysShowCode": s.always_show_code,
            "updatedAt": s.updated_at,
        }),
        None => json!({
            "model": model, "theme": theme, "context": context, "runtime": runtime,
            "responseStyle": style, "alwaysShowCode": code, "updatedAt": auth.user.created_at,
        }),
    };
    let mut body = body;
    // Premium is any tier above the catalogue's lowest (an unknown tier counts as the lowest).
    let catalogue = &state.ai.catalogue;
    let lowest = catalogue.tiers.first().map(|t| t.name.as_str());
    body["isPremium"] = json!(Some(catalogue.tier(&auth.user.tier).name.as_str()) != lowest);
    Ok(Json(json!({ "settings": body })))
}

/// `GET /api/settings`.
#[utoipa::path(get, path = "/api/settings", tag = "settings", security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "{settings: {model, theme, context, runtime, isPremium, responseStyle, alwaysShowCode, updatedAt}}"), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn get_settings(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<Value>, ApiError> {
    current(&state, &auth).await
}

/// The fields a user may set; `isPremium` and `updatedAt` are read-only and ignored if sent back.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SettingsFields {
    model: Option<String>,
    theme: Option<String>,
    context: Option<String>,
    runtime: Option<String>,
    response_style: Option<String>,
    always_show_code: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct SettingsBody {
    settings: SettingsFields,
}

fn validate(f: SettingsFields) -> Result<SettingsChange, ApiError> {
    let mut problems = Map::new();
    let mut note = |e: confab_domain::ValidationError| {
        problems.insert(e.field.into(), e.reason.into());
    };
    let model = match f.model.as_deref().map(str::trim) {
        Some("") => {
            note(confab_domain::ValidationError::new(
                "model",
                "must not be empty",
            ));
            None
        }
        Some(m) => bounded_text("model", m, 100).map_err(&mut note).ok(),
        None => None,
    };
    let theme = f
        .theme
        .as_deref()
        .map(Theme::parse)
        .transpose()
        .map_err(&mut note)
        .ok()
        .flatten();
    let context = f
        .context
        .as_deref()
        .map(|c| bounded_text("context", c, 10_000))
        .transpose()
        .map_err(&mut note)
        .ok()
        .flatten();
    let runtime = f
        .runtime
        .as_deref()
        .map(|r| bounded_text("runtime", r, 100))
        .transpose()
        .map_err(&mut note)
        .ok()
        .flatten();
    let response_style = f
        .response_style
        .as_deref()
        .map(ResponseStyle::parse)
        .transpose()
        .map_err(&mut note)
        .ok()
        .flatten();
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
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
#[utoipa::path(put, path = "/api/settings", tag = "settings", security(("bearer" = []), ("cookie" = [])), request_body = SettingsBody, responses((status = 200, description = "Same as GET"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<Value>, ApiError> {
    let change = validate(body.settings)?;
    let done = state
        .commands
        .execute::<Settings>(
            &auth.user.id,
            UpdateSettings {
                user_id: auth.user.id,
                change,
                at: now(),
            },
            metadata(&headers, Some(auth.user.id)),
        )
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    state
        .visible(settings::NAME, done.appended.map(|a| a.last_position))
        .await?;
    current(&state, &auth).await
}
