//! Server-Sent Events at `GET /api/events`: the signed-in user's realtime events for clients
//! without WebSocket, resumable with `Last-Event-ID`.
//!
//! Each event's `event:` is its seed-000 name, `data:` its payload, `id:` its log position. A
//! stream opens with the events missed since `Last-Event-ID` (as far as the replay window
//! reaches; `realtime:resync` first says when it does not reach far enough), then
//! `realtime:connected` (whose id is where the stream stands), then live events, with keep-alive
//! comments while idle. It ends when its session signs out or expires.

use super::events::RealtimeEvent;
use super::hub::{Delivery, Hub};
use super::pusher::session_live;
use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use uuid::Uuid;

/// Sent first when events after `Last-Event-ID` may be missing from the replay: the client
/// should reload what it shows.
pub const RESYNC: &str = "realtime:resync";
/// Sent once the replay is done; its id is where the stream stands.
pub const CONNECTED: &str = "realtime:connected";

/// Stops the hub delivering to a stream once the client is gone.
struct Detach {
    hub: Arc<Hub>,
    user: Uuid,
    conn: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.hub.unlisten(self.user, self.conn);
    }
}

fn sse_event(e: &RealtimeEvent) -> Event {
    Event::default()
        .event(e.name)
        .id(e.id.to_string())
        .data(&e.data)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || ApiError::field("Last-Event-ID", "must be an event id this stream sent");
    let v = v.to_str().map_err(|_| bad())?.trim();

    // Positions are stored as signed 64-bit integers.
    match v.parse::<u64>() {
        Ok(id) if i64::try_from(id).is_ok() => Ok(Some(id)),
        _ => Err(bad()),
    }
}

enum Step {
    Deliver(Option<Delivery>),
    End,
    Check,
}

/// `GET /api/events`: the caller's realtime events as Server-Sent Events.
#[utoipa::path(get, path = "/api/events", tag = "realtime", security(("bearer" = []), ("cookie" = [])), params(("Last-Event-ID" = Option<u64>, Header, nullable = false, minimum = 0, maximum = 9_223_372_036_854_775_807_u64, description = "The id of the last event received: the stream starts with the events missed since")), responses((status = 200, description = "text/event-stream: `message:sent`, `message:updated`, `message:deleted`, `chat:updated`, `chat:deleted` with seed 000's payloads, `document:updated` `{id, status, chunks, error}`, and the log position as id; `realtime:resync` when missed events are no longer kept; `realtime:connected` once caught up; keep-alive comments", content_type = "text/event-stream"), (status = 400, description = "Last-Event-ID is not an event id", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers)?;
    let realtime = state.realtime.clone();
    let hub = realtime.hub().clone();
    let user = auth.user.id;
    let session = auth.session_id;
    let (conn, mut rx) = hub.connect();
    let attached = hub.attach(user, &conn, last);
    let detach = Detach {
        hub: hub.clone(),
        user,
        conn: conn.id,
    };
    let dropped = conn.dropped.clone();
    let mut closing = hub.closing();
    let db = state.app.db.clone();
    let mut check = tokio::time::interval(realtime.session_check());
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = async_stream::stream! {
        let _detach = detach;
        check.tick().await;
        let mut sent = last.unwrap_or(0);
        if let Some(from) = attached.gap {
            let data = json!({
                "lastEventId": last,
                "keptAfter": from,
                "message": "some events after Last-Event-ID are no longer kept: reload the current state",
            });
            yield Ok::<Event, Infallible>(Event::default().event(RESYNC).data(data.to_string()));
        }
        for e in &attached.replay {
            sent = sent.max(e.id);
            yield Ok(sse_event(e));
        }
        sent = sent.max(attached.position);
        yield Ok(Event::default()
            .event(CONNECTED)
            .id(attached.position.to_string())
            .data(json!({ "position": attached.position }).to_string()));
        loop {
            let step = tokio::select! {
                d = rx.recv() => Step::Deliver(d),
                _ = dropped.notified() => Step::End,
                _ = Hub::closed(&mut closing) => Step::End,
                _ = check.tick() => Step::Check,
            };
            match step {
                Step::Deliver(Some(Delivery::Event(e))) => {
                    if e.id > sent {
                        sent = e.id;
                        yield Ok(sse_event(&e));
                    }
                }
                Step::Deliver(Some(Delivery::Revoked { session: s })) => {
                    if s == session {
                        break;
                    }
                }
                Step::Deliver(Some(Delivery::Erased)) | Step::Deliver(None) | Step::End => break,
                Step::Check => {
                    if let Ok(false) = session_live(&db, session).await {
                        break;
                    }
                }
            }
        }
    };
    let keep_alive = KeepAlive::new()
        .interval(realtime.keepalive())
        .text("keep-alive");
    let mut response = Sse::new(stream).keep_alive(keep_alive).into_response();
    // Proxies that buffer responses would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
