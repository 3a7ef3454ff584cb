//! Pusher Channels compatibility: the WebSocket protocol (version 7) at `/app/{key}`, so that
//! the official `pusher-js` client connects unchanged, and `POST /api/realtime/auth`, which
//! signs a private channel subscription for the signed-in user as Pusher specifies.
//!
//! Channels: `private-user-{userId}` (every event of the user's chats) and
//! `private-chat-{chatId}` (the events of one chat). A subscription's `auth` is
//! `key:hex(HMAC-SHA256(secret, "socket_id:channel_name[:channel_data]"))`. The auth route also
//! answers a `channel_data` naming the user and the session that asked, which `pusher-js`
//! passes back when it subscribes and which the signature covers: that is how a connection
//! knows which session to close it with when the session signs out.

use super::Realtime;
use super::events::RealtimeEvent;
use super::hub::{ConnHandle, Delivery, Hub};
use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::{ApiPath, ApiQuery};
use crate::{ApiError, AppState};
use axum::Form;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use confab_projections::ReadDb;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Seconds of silence after which either side pings (told to the client on connection).
pub const ACTIVITY_TIMEOUT_SECS: u64 = 120;
/// How long the server waits for any answer to its ping before closing with 4201.
const PONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Most channels one connection may subscribe to.
const MAX_SUBSCRIPTIONS: usize = 100;
/// Largest message a client may send.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The Pusher app this server is: its public key and the secret that signs subscriptions.
pub struct PusherApp {
    key: String,
    secret: SecretString,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl PusherApp {
    /// The app with this key and secret.
    pub fn new(key: String, secret: SecretString) -> PusherApp {
        PusherApp { key, secret }
    }

    /// The public app key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn mac(&self, socket_id: &str, channel: &str, channel_data: Option<&str>) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(socket_id.as_bytes());
        mac.update(b":");
        mac.update(channel.as_bytes());
        if let Some(data) = channel_data {
            mac.update(b":");
            mac.update(data.as_bytes());
        }
        mac
    }

    /// `key:signature` for a subscription of `socket_id` to `channel`.
    pub fn sign(&self, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
        let sig = self
            .mac(socket_id, channel, channel_data)
            .finalize()
            .into_bytes();
        format!("{}:{}", self.key, hex(&sig))
    }

    /// Whether `auth` is this app's signature of the subscription (compared in constant time).
    pub fn verify(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
        auth: &str,
    ) -> bool {
        let Some((key, sig)) = auth.split_once(':') else {
            return false;
        };
        let Some(sig) = unhex(sig) else {
            return false;
        };
        key == self.key
            && self
                .mac(socket_id, channel, channel_data)
                .verify_slice(&sig)
                .is_ok()
    }
}

/// A private channel this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `private-user-{userId}`: every event of the user's chats.
    User(Uuid),
    /// `private-chat-{chatId}`: the events of one chat.
    Chat(Uuid),
}

impl Channel {
    /// Parses a channel name; ids must be in their canonical (hyphenated, lower-case) form.
    pub fn parse(name: &str) -> Option<Channel> {
        let canonical = |s: &str| Uuid::parse_str(s).ok().filter(|u| u.to_string() == s);
        if let Some(id) = name.strip_prefix("private-user-") {
            return canonical(id).map(Channel::User);
        }
        if let Some(id) = name.strip_prefix("private-chat-") {
            return canonical(id).map(Channel::Chat);
        }
        None
    }
}

/// Whether `id` has the shape of a socket id this server hands out: digits, a dot, digits.
pub fn valid_socket_id(id: &str) -> bool {
    let Some((a, b)) = id.split_once('.') else {
        return false;
    };
    let digits = |s: &str| (1..=20).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b)
}

fn new_socket_id() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    // Unguessable, since a signature is only good for the socket it names.
    let a = OsRng.next_u64() % 1_000_000_000_000_000;
    let b = OsRng.next_u64() % 1_000_000_000_000_000;
    format!("{a}.{b}")
}

/// What the auth route signs into `channel_data`, and a subscription is then bound to.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
struct Binding {
    user_id: Uuid,
    session_id: Uuid,
}

/// The form `pusher-js` posts to its channel authorization endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct AuthForm {
    /// The connection's socket id, as the server gave it in `pusher:connection_established`.
    #[schema(pattern = "^[0-9]{1,20}\\.[0-9]{1,20}$")]
    socket_id: String,
    /// `private-user-{userId}` or `private-chat-{chatId}`, the id a lower-case UUID.
    #[schema(
        pattern = "^private-(user|chat)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    channel_name: String,
}

fn pusher_off() -> ApiError {
    ApiError::NotFound(
        "realtime over WebSocket is off: set CONFAB_PUSHER_KEY and CONFAB_PUSHER_SECRET".into(),
    )
}

/// `POST /api/realtime/auth` (form: `socket_id`, `channel_name`) → `{auth, channel_data}`.
#[utoipa::path(post, path = "/api/realtime/auth", tag = "realtime", security(("bearer" = []), ("cookie" = [])), request_body(content = AuthForm, content_type = "application/x-www-form-urlencoded", description = "What pusher-js sends"), responses((status = 200, description = "Pass both in pusher:subscribe, as pusher-js does", body = crate::resources::operations::ChannelAuth), (status = 400, description = "Invalid socket id or channel name", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Another user's channel, or a chat the caller does not own", body = ErrorBody), (status = 404, description = "Realtime over WebSocket is not configured", body = ErrorBody), (status = 415, description = "Not a form", body = ErrorBody)))]
pub(crate) async fn authorize(
    State(state): State<AppState>,
    auth: AuthUser,
    form: Result<Form<AuthForm>, FormRejection>,
) -> Result<Json<crate::resources::operations::ChannelAuth>, ApiError> {
    let Some(app) = state.realtime.pusher() else {
        return Err(pusher_off());
    };
    let Form(form) = form.map_err(|r| match r {
        FormRejection::InvalidFormContentType(_) => ApiError::UnsupportedMediaType(
            "send application/x-www-form-urlencoded, as pusher-js does".into(),
        ),
        other => ApiError::Validation {
            message: "expected the form fields socket_id and channel_name".into(),
            details: json!({ "body": other.body_text() }),
        },
    })?;
    let mut problems = serde_json::Map::new();
    if !valid_socket_id(&form.socket_id) {
        problems.insert(
            "socket_id".into(),
            "must be the socket id the server gave (digits.digits)".into(),
        );
    }
    let channel = Channel::parse(&form.channel_name);
    if channel.is_none() {
        problems.insert(
            "channel_name".into(),
            "must be private-user-{userId} or private-chat-{chatId}".into(),
        );
    }
    let Some(channel) = channel.filter(|_| problems.is_empty()) else {
        return Err(ApiError::invalid(problems));
    };
    match channel {
        Channel::User(u) if u != auth.user.id => {
            return Err(ApiError::Forbidden("another user's channel".into()));
        }
        Channel::User(_) => {}
        Channel::Chat(c) => {
            let owned = confab_projections::chats::get_chat(&state.app.db, c, auth.user.id)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            if owned.is_none() {
                return Err(ApiError::Forbidden("not a chat of yours".into()));
            }
        }
    }
    let channel_data = serde_json::to_string(&Binding {
        user_id: auth.user.id,
        session_id: auth.session_id,
    })
    .map_err(|e| ApiError::Internal(e.into()))?;
    let signature = app.sign(&form.socket_id, &form.channel_name, Some(&channel_data));
    Ok(Json(crate::resources::operations::ChannelAuth {
        auth: signature,
        channel_data,
    }))
}

/// `GET /app/{key}?protocol=7`: the Pusher WebSocket endpoint.
#[utoipa::path(get, path = "/app/{key}", tag = "realtime",
    params(
        ("key" = String, Path, description = "The Pusher app key (CONFAB_PUSHER_KEY); another key is refused with close code 4001"),
        ("protocol" = Option<String>, Query, description = "The Pusher protocol version: 5 to 7 are served; another is refused with close code 4007, none with 4008 (after the upgrade, as Pusher does)"),
        ("Connection" = String, Header, description = "Names `Upgrade` (any case, among other tokens): this is a WebSocket handshake", pattern = "^(.*,)?[ \t]*[Uu][Pp][Gg][Rr][Aa][Dd][Ee][ \t]*(,.*)?$"),
        ("Upgrade" = String, Header, description = "`websocket` (any case)", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`", pattern = "^13$"),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64", pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: Pusher Channels protocol 7 (pusher:connection_established, subscribe, ping/pong; close codes 4001, 4007, 4008, 4009, 4100, 4200, 4201)"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 404, description = "Realtime over WebSocket is not configured", body = ErrorBody),
    ))]
pub(crate) async fn websocket(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(app) = state.realtime.pusher() else {
        return pusher_off().into_response();
    };
    // RFC 6455: the key is 16 random bytes, base64.
    let key_ok = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .is_some_and(|k| k.len() == 16);
    let upgrade = match upgrade {
        Ok(_) if !key_ok => {
            return ApiError::field("Sec-WebSocket-Key", "must be 16 bytes, base64 (RFC 6455)")
                .into_response();
        }
        Ok(u) => u,
        Err(r) => {
            return ApiError::Validation {
                message: "expected a WebSocket upgrade".into(),
                details: json!({ "upgrade": r.body_text() }),
            }
            .into_response();
        }
    };
    // Pusher accepts the connection and then refuses it with a code the client understands.
    let refusal = if key != app.key() {
        Some((4001, format!("App key {key} not in this cluster")))
    } else {
        match query.get("protocol").map(|p| p.parse::<u32>()) {
            None => Some((4008, "No protocol version supplied".to_owned())),
            Some(Ok(5..=7)) => None,
            Some(_) => Some((4007, "Unsupported protocol version".to_owned())),
        }
    };
    let realtime = state.realtime.clone();
    let db = state.app.db.clone();
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            match refusal {
                Some((code, message)) => refuse(socket, code, &message).await,
                None => Connection::open(socket, realtime, app, db).await,
            }
        })
}

fn error_frame(code: Option<u16>, message: &str) -> String {
    json!({ "event": "pusher:error", "data": { "code": code, "message": message } }).to_string()
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn refuse(mut socket: WebSocket, code: u16, message: &str) {
    let _ = socket
        .send(Message::Text(error_frame(Some(code), message).into()))
        .await;
    let _ = socket.send(close_message(code, message)).await;
}

fn subscription_error(channel: &str, status: u16, error: &str) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": "AuthError", "error": error, "status": status },
    })
    .to_string()
}

fn event_frame(channel: &str, event: &RealtimeEvent) -> String {
    json!({ "event": event.name, "channel": channel, "data": event.data }).to_string()
}

/// One subscription of a connection.
#[derive(Debug, Clone, Copy)]
struct Subscription {
    /// Whose events it receives.
    user: Uuid,
    /// Only this chat's, for a chat channel.
    chat: Option<Uuid>,
    /// The session that authorised it, if the signature named one.
    session: Option<Uuid>,
}

impl Subscription {
    fn wants(&self, e: &RealtimeEvent) -> bool {
        e.user == self.user && self.chat.is_none_or(|c| c == e.chat)
    }
}

#[derive(Debug, Deserialize)]
struct ClientMessage {
    event: String,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

/// Why a connection ends.
enum End {
    /// The client went away.
    Gone,
    /// The server closes it with this Pusher code and reason.
    Close(u16, &'static str),
}

/// One client's WebSocket connection.
struct Connection {
    socket: WebSocket,
    realtime: Realtime,
    app: Arc<PusherApp>,
    db: ReadDb,
    socket_id: String,
    conn: ConnHandle,
    subscriptions: HashMap<String, Subscription>,
    /// Subscriptions per user, to listen to the hub for each user once.
    per_user: HashMap<Uuid, usize>,
}

impl Connection {
    async fn open(socket: WebSocket, realtime: Realtime, app: Arc<PusherApp>, db: ReadDb) {
        let (conn, rx) = realtime.hub().connect();
        let mut c = Connection {
            socket,
            realtime,
            app,
            db,
            socket_id: new_socket_id(),
            conn,
            subscriptions: HashMap::new(),
            per_user: HashMap::new(),
        };
        let end = c.run(rx).await;
        for user in c.per_user.keys() {
            c.realtime.hub().unlisten(*user, c.conn.id);
        }
        if let End::Close(code, reason) = end {
            let _ = c
                .socket
                .send(Message::Text(error_frame(Some(code), reason).into()))
                .await;
            let _ = c.socket.send(close_message(code, reason)).await;
        }
    }

    async fn send(&mut self, text: String) -> Result<(), End> {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| End::Gone)
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Delivery>) -> End {
        let established = json!({
            "socket_id": self.socket_id,
            "activity_timeout": ACTIVITY_TIMEOUT_SECS,
        });
        let hello = json!({
            "event": "pusher:connection_established",
            "data": established.to_string(),
        });
        if let Err(end) = self.send(hello.to_string()).await {
            return end;
        }
        let mut closing = self.realtime.hub().closing();
        let dropped = self.conn.dropped.clone();
        let mut session_check = tokio::time::interval(self.realtime.session_check());
        session_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        session_check.tick().await;
        let mut activity = tokio::time::interval(Duration::from_secs(5));
        activity.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let mut pinged: Option<Instant> = None;
        loop {
            let step = tokio::select! {
                msg = self.socket.recv() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Err(End::Gone),
                    Some(Ok(Message::Text(text))) => {
                        last_seen = Instant::now();
                        pinged = None;
                        self.on_message(text.as_str()).await
                    }
                    Some(Ok(_)) => {
                        last_seen = Instant::now();
                        pinged = None;
                        Ok(())
                    }
                },
                delivery = rx.recv() => match delivery {
                    Some(d) => self.on_delivery(d).await,
                    None => Err(End::Close(4200, "Server restarting")),
                },
                _ = dropped.notified() => Err(End::Close(4100, "Over capacity: too slow to keep up")),
                _ = Hub::closed(&mut closing) => Err(End::Close(4200, "Server shutting down")),
                _ = session_check.tick() => self.check_sessions().await,
                _ = activity.tick() => {
                    let idle = last_seen.elapsed();
                    match pinged {
                        Some(at) if at.elapsed() > PONG_TIMEOUT => Err(End::Close(4201, "Pong reply not received")),
                        Some(_) => Ok(()),
                        None if idle > Duration::from_secs(ACTIVITY_TIMEOUT_SECS) => {
                            pinged = Some(Instant::now());
                            self.send(json!({ "event": "pusher:ping", "data": "{}" }).to_string()).await
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_message(&mut self, text: &str) -> Result<(), End> {
        let Ok(msg) = serde_json::from_str::<ClientMessage>(text) else {
            return self
                .send(error_frame(
                    None,
                    "Invalid message: expected JSON with an event",
                ))
                .await;
        };
        // pusher-js sends `data` as an object; other clients send it JSON-encoded.
        let data = match msg.data {
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
            other => other,
        };
        match msg.event.as_str() {
            "pusher:ping" => {
                self.send(json!({ "event": "pusher:pong", "data": "{}" }).to_string())
                    .await
            }
            "pusher:pong" => Ok(()),
            "pusher:subscribe" => {
                let frame = self.subscribe(data).await;
                self.send(frame).await
            }
            "pusher:unsubscribe" => {
                if let Some(channel) = data.get("channel").and_then(Value::as_str) {
                    self.unsubscribe(channel);
                }
                Ok(())
            }
            e if e.starts_with("client-") => {
                self.send(error_frame(None, "Client events are not enabled"))
                    .await
            }
            e => {
                let message = format!(
                    "Unsupported event {}",
                    e.chars().take(64).collect::<String>()
                );
                self.send(error_frame(None, &message)).await
            }
        }
    }

    /// Checks a subscription request; answers the frame to send back.
    async fn subscribe(&mut self, data: Value) -> String {
        let Ok(req) = serde_json::from_value::<SubscribeData>(data) else {
            return error_frame(None, "pusher:subscribe needs data.channel");
        };
        let name = req.channel;
        if self.subscriptions.contains_key(&name) {
            return succeeded(&name);
        }
        let Some(channel) = Channel::parse(&name) else {
            return subscription_error(
                &name,
                404,
                "No such channel: subscribe to private-user-{userId} or private-chat-{chatId}",
            );
        };
        let Some(auth) = req.auth.filter(|a| !a.is_empty()) else {
            return subscription_error(&name, 401, "Auth info required to subscribe");
        };
        let data = req.channel_data.as_deref();
        if !self.app.verify(&self.socket_id, &name, data, &auth) {
            return subscription_error(&name, 401, "Invalid signature");
        }
        let binding = match data.map(serde_json::from_str::<Binding>) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(_)) => return subscription_error(&name, 400, "Invalid channel_data"),
        };
        let (user, chat) = match channel {
            Channel::User(u) => (u, None),
            Channel::Chat(c) => match self.realtime.owners().get(c).await {
                Ok(Some(info)) => (info.owner, Some(c)),
                Ok(None) => return subscription_error(&name, 404, "No such chat"),
                Err(e) => {
                    tracing::warn!(error = %e, "realtime: reading a chat's owner failed");
                    return subscription_error(&name, 503, "Try again");
                }
            },
        };
        if let Some(b) = binding {
            if b.user_id != user {
                return subscription_error(&name, 403, "Not your channel");
            }
            match session_live(&self.db, b.session_id).await {
                Ok(true) => {}
                Ok(false) => {
                    return subscription_error(&name, 401, "Session signed out or expired");
                }
                Err(()) => return subscription_error(&name, 503, "Try again"),
            }
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return subscription_error(&name, 400, "Too many subscriptions on this connection");
        }
        let count = self.per_user.entry(user).or_insert(0);
        if *count == 0 {
            self.realtime.hub().listen(user, &self.conn);
        }
        *count += 1;
        self.subscriptions.insert(
            name.clone(),
            Subscription {
                user,
                chat,
                session: binding.map(|b| b.session_id),
            },
        );
        succeeded(&name)
    }

    fn unsubscribe(&mut self, channel: &str) {
        let Some(sub) = self.subscriptions.remove(channel) else {
            return;
        };
        if let Some(count) = self.per_user.get_mut(&sub.user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&sub.user);
                self.realtime.hub().unlisten(sub.user, self.conn.id);
            }
        }
    }

    async fn on_delivery(&mut self, d: Delivery) -> Result<(), End> {
        match d {
            Delivery::Event(e) => {
                let frames: Vec<String> = self
                    .subscriptions
                    .iter()
                    .filter(|(_, s)| s.wants(&e))
                    .map(|(name, _)| event_frame(name, &e))
                    .collect();
                for f in frames {
                    self.send(f).await?;
                }
                Ok(())
            }
            Delivery::Revoked { session } => {
                if self
                    .subscriptions
                    .values()
                    .any(|s| s.session == Some(session))
                {
                    Err(End::Close(
                        4009,
                        "Connection is unauthorized: session signed out",
                    ))
                } else {
                    Ok(())
                }
            }
            Delivery::Erased => Err(End::Close(
                4009,
                "Connection is unauthorized: account erased",
            )),
        }
    }

    /// Closes the connection if a session one of its subscriptions came from has ended (a
    /// backstop for expiry, and for a revocation this process did not see).
    async fn check_sessions(&mut self) -> Result<(), End> {
        let mut sessions: Vec<Uuid> = self
            .subscriptions
            .values()
            .filter_map(|s| s.session)
            .collect();
        sessions.sort();
        sessions.dedup();
        for s in sessions {
            if let Ok(false) = session_live(&self.db, s).await {
                return Err(End::Close(
                    4009,
                    "Connection is unauthorized: session ended",
                ));
            }
        }
        Ok(())
    }
}

fn succeeded(channel: &str) -> String {
    json!({ "event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}" })
        .to_string()
}

/// Whether the session is live; `Err` when the read model could not be read (logged here).
pub(crate) async fn session_live(db: &ReadDb, session: Uuid) -> Result<bool, ()> {
    confab_projections::accounts::session_live(db, session, chrono::Utc::now())
        .await
        .map_err(|e| tracing::warn!(error = %e, "realtime: checking a session failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp::new(
            "278d425bdf160c739803".into(),
            SecretString::from("7ad3773142a6692b25b8"),
        )
    }

    #[test]
    fn signatures_follow_pushers_definition() {
        // The worked example of Pusher's "authentication signatures" documentation.
        let a = app();
        let s = a.sign("1234.1234", "private-foobar", None);
        assert_eq!(
            s,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(a.verify("1234.1234", "private-foobar", None, &s));
        assert!(!a.verify("1234.1235", "private-foobar", None, &s));
        assert!(!a.verify("1234.1234", "private-foobar", Some("{}"), &s));
        assert!(!a.verify("1234.1234", "private-foobar", None, "other:58df"));
        assert!(!a.verify(
            "1234.1234",
            "private-foobar",
            None,
            "278d425bdf160c739803:zz"
        ));
        assert!(!a.verify("1234.1234", "private-foobar", None, "garbage"));
        let with_data = a.sign("1.2", "private-user-x", Some("{\"a\":1}"));
        assert!(a.verify("1.2", "private-user-x", Some("{\"a\":1}"), &with_data));
        assert!(!a.verify("1.2", "private-user-x", Some("{\"a\":2}"), &with_data));
    }

    #[test]
    fn the_secret_never_prints() {
        assert!(!format!("{:?}", app()).contains("7ad3773142a6692b25b8"));
    }

    #[test]
    fn only_the_two_private_channel_kinds_parse() {
        let id = Uuid::now_v7();
        assert_eq!(
            Channel::parse(&format!("private-user-{id}")),
            Some(Channel::User(id))
        );
        assert_eq!(
            Channel::parse(&format!("private-chat-{id}")),
            Some(Channel::Chat(id))
        );
        assert_eq!(
            Channel::parse(&format!("private-chat-{}", id.simple())),
            None
        );
        assert_eq!(Channel::parse(&format!("presence-user-{id}")), None);
        assert_eq!(Channel::parse("private-user-"), None);
        assert_eq!(Channel::parse("my-channel"), None);
    }

    #[test]
    fn socket_ids_are_digits_dot_digits() {
        let id = new_socket_id();
        assert!(valid_socket_id(&id), "{id}");
        assert_ne!(id, new_socket_id());
        assert!(valid_socket_id("123.456"));
        for bad in ["123", "123.", ".1", "1.2.3", "a.1", "1.2 ", ""] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }
}
