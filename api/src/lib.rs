//! Confab's HTTP API: the axum router, its state, errors and the operational routes.

pub mod ai;
pub mod auth;
pub mod billing;
pub mod chats;
pub mod conversations;
pub mod error;
pub mod extract;
mod health;
pub mod idempotency;
pub mod images;
pub mod json;
pub mod openapi;
pub mod profile;
pub mod providers;
pub mod ratelimit;
pub mod realtime;
pub mod settings;
pub mod stripe_signature;

pub use error::ApiError;

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use confab_eventstore::EventStore;
use confab_projections::{Engine, ReadDb};
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The event log.
    pub store: Arc<dyn EventStore>,
    /// Runs commands against the event log, one line per aggregate.
    pub commands: Arc<confab_eventstore::aggregate::CommandExecutor>,
    /// The read models.
    pub db: ReadDb,
    /// The projections (status and read-your-writes).
    pub engine: Engine,
    /// Most events a projection may lag behind the log while `/readyz` still says ready.
    pub readiness_max_lag: u64,
    /// How long a sign-in session lasts.
    pub session_ttl: chrono::Duration,
    /// How long a write waits for its effect to become readable before answering.
    pub write_timeout: std::time::Duration,
    /// Encrypts users' provider keys.
    pub key_cipher: providers::KeyCipher,
    /// Hosts a provider endpoint may name even if private, and over http.
    pub provider_hosts_allowlist: Vec<String>,
    /// Where uploaded files (profile images) are kept.
    pub objects: std::sync::Arc<dyn object_store::ObjectStore>,
    /// AI chat: models, providers, live replies.
    pub ai: confab_workers::ai::Ai,
    /// Where reply jobs go.
    pub replies: confab_workers::queue::ReplyQueue,
    /// The secret of the cron route; the route refuses everything while unset.
    pub cron_secret: Option<std::sync::Arc<str>>,
    /// Per-IP and per-user request budgets.
    pub rate_limiter: ratelimit::RateLimiter,
    /// Stripe: the client, the webhook secret, the prices sold, the Stripe job queue.
    pub billing: billing::Billing,
    /// Realtime: the fan-out of live events to WebSocket (Pusher) and SSE clients.
    pub realtime: realtime::Realtime,
}

impl AppState {
    /// Read-your-writes: waits until `projection` has applied position `pos` (nothing to wait
    /// for when the command appended nothing), so the caller's next read sees the write.
    pub async fn visible(&self, projection: &str, pos: Option<u64>) -> Result<(), ApiError> {
        let Some(pos) = pos else {
            return Ok(());
        };
        self.engine
            .positions()
            .wait_for(projection, pos, self.write_timeout)
            .await
            .map_err(|e| ApiError::Internal(e.into()))
    }
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
        .route("/api/me", get(auth::me))
        .route("/api/profile", put(profile::update_profile))
        .route(
            "/api/profile/image",
            post(images::upload).layer(axum::extract::DefaultBodyLimit::max(
                images::MAX_BYTES + 64 * 1024,
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
        .route("/api/messages/search", get(chats::search_messages))
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
