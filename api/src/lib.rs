//! Confab's HTTP API: the axum router, its state, the one mapping of errors to HTTP, and the
//! operational routes.
//!
//! A handler extracts its input ([`extract`], [`auth::AuthUser`]), parses it into the domain's
//! validated types, calls the application layer ([`confab_application`]) and answers with a
//! typed resource ([`resources`]), from which `/openapi.json` is generated. Cross-cutting
//! layers: rate limiting ([`ratelimit`]), idempotency keys ([`idempotency`]), request ids and
//! tracing. Realtime (Pusher over WebSocket, SSE) lives in [`realtime`].

pub mod ai;
pub mod auth;
pub mod billing;
pub mod chats;
pub mod conversations;
pub mod documents;
pub mod error;
pub mod extract;
mod health;
pub mod idempotency;
pub mod images;
mod observe;
pub mod openapi;
pub mod profile;
pub mod providers;
pub mod ratelimit;
pub mod realtime;
pub mod resources;
pub mod settings;
pub mod stripe_signature;

pub use error::ApiError;

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use confab_projections::Engine;
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// What every handler can reach: the application's services and what only the edge needs.
#[derive(Clone)]
pub struct AppState {
    /// The use cases' services.
    pub app: confab_application::Services,
    /// The projections (status for `/readyz` and `/metrics`).
    pub engine: Engine,
    /// Most events a projection may lag behind the log while `/readyz` still says ready.
    pub readiness_max_lag: u64,
    /// The secret of the cron route; the route refuses everything while unset.
    pub cron_secret: Option<Arc<str>>,
    /// The signing secret of the Stripe webhook; the webhook answers 503 while unset.
    pub stripe_webhook_secret: Option<Arc<secrecy::SecretString>>,
    /// Per-IP and per-user request budgets.
    pub rate_limiter: ratelimit::RateLimiter,
    /// Realtime: the fan-out of live events to WebSocket (Pusher) and SSE clients.
    pub realtime: realtime::Realtime,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    // Counters recorded before the recorder exists would be lost.
    health::prometheus();
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs))
        .route("/api/auth/signup", post(auth::signup))
        .route("/api/auth/signin", post(auth::signin))
        .route("/api/auth/signout", post(auth::signout))
        .route("/api/me", get(auth::me).delete(auth::delete_me))
        .route("/api/me/export", get(auth::export))
        .route("/api/profile", put(profile::update_profile))
        .route(
            "/api/profile/image",
            post(images::upload).layer(axum::extract::DefaultBodyLimit::max(
                images::MAX_BODY_BYTES,
            )),
        )
        .route("/api/profile/image/{user_id}/{file}", get(images::serve))
        .route("/api/chats", post(chats::create_chat).get(chats::list_chats))
        .route(
            "/api/chats/{chat_id}",
            get(chats::get_chat)
                .put(chats::rename_chat)
                .delete(chats::delete_chat),
        )
        .route(
            "/api/chats/{chat_id}/messages",
            get(chats::list_messages).post(chats::send_message),
        )
        .route(
            "/api/chats/{chat_id}/messages/{message_id}",
            put(chats::edit_message).delete(chats::delete_message),
        )
        .route("/api/chats/{chat_id}/restore", post(chats::restore_chat))
        .route(
            "/api/chats/{chat_id}/messages/{message_id}/restore",
            post(chats::restore_message),
        )
        .route(
            "/api/chats/{chat_id}/messages/{message_id}/history",
            get(chats::message_history),
        )
        .route("/api/messages/search", get(chats::search_messages))
        .route(
            "/api/upload",
            post(documents::upload).layer(axum::extract::DefaultBodyLimit::max(
                state
                    .app
                    .documents
                    .max_bytes
                    .saturating_add(documents::FORM_OVERHEAD_BYTES),
            )),
        )
        .route("/api/documents", get(documents::list))
        .route(
            "/api/documents/{id}",
            get(documents::get).delete(documents::delete),
        )
        .route("/api/rag", post(documents::rag))
        .route(
            "/api/chats/{chat_id}/messages/{message_id}/sources",
            get(documents::sources),
        )
        .route("/api/chat", get(ai::health).post(ai::post_chat))
        .route("/api/chat/{chat_id}/stream", get(ai::resume))
        .route("/api/models", get(ai::models))
        .route("/api/billing/credit-history", get(ai::credit_history))
        .route("/api/billing/checkout", post(billing::checkout))
        .route("/api/billing/portal", post(billing::portal))
        .route("/api/billing/invoices", get(billing::invoices))
        .route("/api/webhooks/stripe", post(billing::webhook))
        .route("/api/cron/reset-credits", get(ai::reset_credits))
        .route("/chat/conversations", post(conversations::create_conversation))
        .route("/chat/conversations/{id}", get(conversations::get_conversation))
        .route(
            "/chat/conversations/{id}/messages",
            get(conversations::list_messages),
        )
        .route("/chat/messages", post(conversations::create_message))
        .route("/chat/attachments", post(conversations::create_attachment))
        .route(
            "/chat/messages/{id}/attachments",
            get(conversations::list_attachments),
        )
        .route("/chat/llm-providers", post(providers::create_provider))
        .route("/chat/llm-providers/{id}", get(providers::get_provider))
        .route("/chat/user-llm-configs", post(providers::set_user_config))
        .route(
            "/chat/user-llm-configs/{user_id}/{provider_id}",
            get(providers::get_user_config),
        )
        .route(
            "/api/settings",
            get(settings::get_settings).put(settings::put_settings),
        )
        .route("/app/{key}", get(realtime::pusher::websocket))
        .route("/api/realtime/auth", post(realtime::pusher::authorize))
        .route("/api/events", get(realtime::sse::events))
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::layer,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn(observe::layer))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
