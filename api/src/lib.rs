//! Confab's HTTP API: the axum router, its state, errors and the operational routes.

pub mod auth;
pub mod error;
mod health;
pub mod json;

pub use error::ApiError;

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
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
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/auth/signup", post(auth::signup))
        .route("/api/auth/signin", post(auth::signin))
        .route("/api/auth/signout", post(auth::signout))
        .route("/api/me", get(auth::me))
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
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
