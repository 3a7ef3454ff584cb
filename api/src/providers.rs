//! LLM providers and users' provider keys (seed 002): `POST /chat/llm-providers` (admins),
//! `GET /chat/llm-providers/{id}`, `POST /chat/user-llm-configs`,
//! `GET /chat/user-llm-configs/{user_id}/{provider_id}`. The rules (https, public hosts,
//! encrypted keys, hints only) are [`confab_application::providers`]'.

use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::{ApiJson, ApiPath};
use crate::resources::providers::{NewProvider, NewUserConfig, Provider, UserLlmConfig};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use confab_application::providers;
use uuid::Uuid;

/// `POST /chat/llm-providers` `{name, api_endpoint}` (admins only) → 201 provider.
#[utoipa::path(post, path = "/chat/llm-providers", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewProvider,
    responses(
        (status = 201, description = "The provider", body = Provider),
        (status = 403, description = "Admins only", body = ErrorBody),
    ))]
pub(crate) async fn create_provider(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewProvider>,
) -> Result<(StatusCode, Json<Provider>), ApiError> {
    let p = providers::register_provider(&state.app, &auth, &body.name, &body.api_endpoint).await?;
    Ok((StatusCode::CREATED, Json(p.into())))
}

/// `GET /chat/llm-providers/{id}`.
#[utoipa::path(get, path = "/chat/llm-providers/{id}", tag = "seed-002", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "The provider")),
    responses(
        (status = 200, description = "The provider", body = Provider),
        (status = 404, description = "No such provider", body = ErrorBody),
    ))]
pub(crate) async fn get_provider(
    State(state): State<AppState>,
    _auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Provider>, ApiError> {
    Ok(Json(providers::get_provider(&state.app, id).await?.into()))
}

/// `POST /chat/user-llm-configs` `{user_id, provider_id, api_key}` → 201 config with a masked
/// hint; posting again replaces the key.
#[utoipa::path(post, path = "/chat/user-llm-configs", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewUserConfig,
    responses(
        (status = 201, description = "The config; the key itself is never returned", body = UserLlmConfig),
        (status = 403, description = "user_id is not the caller's", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
    ))]
pub(crate) async fn set_user_config(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewUserConfig>,
) -> Result<(StatusCode, Json<UserLlmConfig>), ApiError> {
    let c = providers::set_user_key(
        &state.app,
        &auth,
        body.user_id,
        body.provider_id,
        &body.api_key,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(c.into())))
}

/// `GET /chat/user-llm-configs/{user_id}/{provider_id}`.
#[utoipa::path(get, path = "/chat/user-llm-configs/{user_id}/{provider_id}", tag = "seed-002", security(("bearer" = []), ("cookie" = [])),
    params(("user_id" = Uuid, Path, description = "The user (the caller, unless an admin)"), ("provider_id" = Uuid, Path, description = "The provider")),
    responses(
        (status = 200, description = "The config, key hint only", body = UserLlmConfig),
        (status = 403, description = "Not the caller's", body = ErrorBody),
        (status = 404, description = "No key for this provider", body = ErrorBody),
    ))]
pub(crate) async fn get_user_config(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((user_id, provider_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<UserLlmConfig>, ApiError> {
    let c = providers::get_user_key(&state.app, &auth, user_id, provider_id).await?;
    Ok(Json(c.into()))
}
