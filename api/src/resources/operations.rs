//! Operations and realtime: health, readiness, and the Pusher channel authorization.

use serde::Serialize;
use utoipa::ToSchema;

/// `{status: "ok"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// One projection's progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectionProgress {
    /// The projection.
    pub name: String,
    /// The last position it applied.
    pub position: u64,
    /// The head of the log.
    pub head: u64,
    /// Events it has yet to apply.
    pub lag: u64,
}

/// `{status: "ready", projections}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// Each projection's progress.
    pub projections: Vec<ProjectionProgress>,
}

/// What `POST /api/realtime/auth` answers: pass both in `pusher:subscribe`, as pusher-js does.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelAuth {
    /// `key:signature`.
    pub auth: String,
    /// The user and session the subscription is bound to, as JSON text.
    pub channel_data: String,
}
