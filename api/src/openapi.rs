//! The OpenAPI 3.1 document, generated from the handlers' annotations, at `/openapi.json`, and
//! a docs page at `/docs` that renders it.

use axum::Json;
use axum::response::Html;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error body every route answers with.
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside the error body.
#[derive(Debug, ToSchema)]
pub struct ErrorDetail {
    /// Human-readable; never internals.
    pub message: String,
    /// unauthorized, forbidden, not_found, validation_error, rate_limited,
    /// insufficient_credits, conflict, payload_too_large, unsupported_media_type, bad_gateway,
    /// unavailable, internal_error.
    pub code: String,
    /// For validation errors, each offending field and why.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("confab_session"))),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Confab", description = "The backend of an AI chat product."),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
        crate::auth::signup,
        crate::auth::signin,
        crate::auth::signout,
        crate::auth::me,
        crate::profile::update_profile,
        crate::images::upload,
        crate::images::serve,
        crate::settings::get_settings,
        crate::settings::put_settings,
        crate::ai::health,
        crate::ai::post_chat,
        crate::ai::resume,
        crate::ai::models,
        crate::ai::credit_history,
        crate::ai::reset_credits,
        crate::billing::checkout,
        crate::billing::portal,
        crate::billing::invoices,
        crate::billing::webhook,
        crate::chats::create_chat,
        crate::chats::list_chats,
        crate::chats::get_chat,
        crate::chats::rename_chat,
        crate::chats::delete_chat,
        crate::chats::list_messages,
        crate::chats::send_message,
        crate::chats::edit_message,
        crate::chats::delete_message,
        crate::chats::search_messages,
        crate::conversations::create_conversation,
        crate::conversations::get_conversation,
        crate::conversations::create_message,
        crate::conversations::list_messages,
        crate::conversations::create_attachment,
        crate::conversations::list_attachments,
        crate::providers::create_provider,
        crate::providers::get_provider,
        crate::providers::set_user_config,
        crate::providers::get_user_config,
        crate::realtime::pusher::authorize,
        crate::realtime::sse::events,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "profile", description = "Name, email and image"),
        (name = "settings", description = "Preferences"),
        (name = "chats", description = "Chats, messages and search"),
        (name = "seed-002", description = "Conversations, attachments and LLM providers (snake_case)"),
        (name = "operations", description = "Health and readiness"),
        (name = "ai", description = "AI chat and models"),
        (name = "billing", description = "Stripe checkout and portal, invoices, credits, the Stripe webhook"),
        (name = "realtime", description = "Live events: Pusher channel authorization and Server-Sent Events"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// `GET /docs`: renders `/openapi.json` in the browser (the viewer's script comes from a CDN,
/// fetched by the browser, not the server).
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Confab API</title></head>
<body><script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script></body></html>"#,
    )
}
