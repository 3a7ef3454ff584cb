//! Realtime over the real server: seed 000's five events reaching WebSocket (Pusher protocol)
//! and SSE clients, across two instances on one PostgreSQL database and on the embedded
//! default; SSE resumption with `Last-Event-ID`; channel authorisation; sign-out closing
//! connections; the protocol's handshake, pings and errors; and the official `pusher-js`
//! client under Node as the compatibility proof.

use crate::helpers::{
    Db, PASSWORD, TestApp, assert_error, error_message, on_both, parts, spawn_app_on,
    spawn_app_with,
};
use confab::Config;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

on_both!(
    every_event_reaches_websocket_and_sse_clients_with_the_seed_shapes,
    sse_resumes_with_exactly_the_missed_events,
    a_resume_point_older_than_the_window_is_announced,
    channels_of_other_users_are_refused,
    events_about_other_users_chats_never_arrive,
    sign_out_closes_that_sessions_connections,
    erasing_an_account_closes_all_its_connections,
    the_pusher_handshake_ping_and_errors_follow_the_protocol,
    a_documents_status_changes_reach_its_owner_only,
);

const KEY: &str = "confab-test-key";
/// How pusher-js posts to the auth route.
const FORM: &str = "application/x-www-form-urlencoded";
const SECRET: &str = "confab-test-secret";
/// Longest wait for anything a test expects to arrive.
const PATIENCE: Duration = Duration::from_secs(15);

fn pusher_on(c: &mut Config) {
    c.pusher_key = Some(KEY.into());
    c.pusher_secret = Some(SECRET.to_owned().into());
}

/// Pusher's signature of a subscription, computed independently of the server.
fn sign(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    let mut text = format!("{socket_id}:{channel}");
    if let Some(d) = channel_data {
        text = format!("{text}:{d}");
    }
    mac.update(text.as_bytes());
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{KEY}:{sig}")
}

/// `POST /api/realtime/auth` as pusher-js sends it.
async fn authorize(app: &TestApp, token: &str, socket_id: &str, channel: &str) -> (u16, Value) {
    let form = format!("socket_id={socket_id}&channel_name={channel}");
    app.post_raw("/api/realtime/auth", Some(token), FORM, form)
        .await
}

/// The body of a 2xx answer.
#[track_caller]
fn succeeded((status, body): (u16, Value)) -> Value {
    assert!((200..300).contains(&status), "{status} {body}");
    body
}

/// A Pusher protocol client over tokio-tungstenite.
struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    socket_id: String,
}

/// What a connection saw next.
#[derive(Debug)]
enum Seen {
    Frame(Value),
    Closed(Option<u16>),
}

impl Ws {
    fn url(app: &TestApp, key: &str, query: &str) -> String {
        format!("{}/app/{key}{query}", app.base.replacen("http", "ws", 1))
    }

    /// Opens a WebSocket to `url`, reading nothing yet.
    async fn open(url: String) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Ws {
            stream,
            socket_id: String::new(),
        }
    }

    /// Connects and reads `pusher:connection_established`.
    async fn connect(app: &TestApp) -> Ws {
        let mut ws = Ws::open(Ws::url(
            app,
            KEY,
            "?protocol=7&client=rust-test&version=1.0",
        ))
        .await;
        let hello = ws.frame().await;
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        ws.socket_id = hello["data"]["socket_id"].as_str().unwrap().to_owned();
        ws
    }

    async fn next(&mut self) -> Seen {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let mut v: Value = serde_json::from_str(&t).expect("JSON frame");
                    // Pusher sends `data` JSON-encoded in a string; decode it as pusher-js does.
                    if let Some(s) = v["data"].as_str()
                        && let Ok(inner) = serde_json::from_str::<Value>(s)
                    {
                        v["data"] = inner;
                    }
                    return Seen::Frame(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Seen::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    async fn frame(&mut self) -> Value {
        match self.next().await {
            Seen::Frame(v) => v,
            Seen::Closed(code) => panic!("closed ({code:?}) while a frame was expected"),
        }
    }

    async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// Subscribes to `channel` with a signature from the auth route; returns the answer.
    async fn subscribe(&mut self, app: &TestApp, token: &str, channel: &str) -> Value {
        let (status, auth) = authorize(app, token, &self.socket_id, channel).await;
        assert_eq!(status, 200, "{auth}");
        self.send(json!({ "event": "pusher:subscribe", "data": {
            "channel": channel, "auth": auth["auth"], "channel_data": auth["channel_data"],
        }}))
        .await;
        self.frame().await
    }

    /// Subscribes and checks it succeeded.
    async fn subscribed(&mut self, app: &TestApp, token: &str, channel: &str) {
        let answer = self.subscribe(app, token, channel).await;
        assert_eq!(
            answer["event"], "pusher_internal:subscription_succeeded",
            "{answer}"
        );
        assert_eq!(answer["channel"], channel);
    }

    /// Expects the connection to be closed with `code`, after a `pusher:error` saying so.
    async fn expect_closed(&mut self, code: u16) {
        loop {
            match self.next().await {
                Seen::Frame(v) if v["event"] == "pusher:error" => {
                    assert_eq!(v["data"]["code"], code, "{v}");
                }
                Seen::Frame(v) => panic!("expected a close, got {v}"),
                Seen::Closed(got) => {
                    assert_eq!(got, Some(code));
                    return;
                }
            }
        }
    }
}

/// One Server-Sent Event, or a comment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SseFrame {
    pub(crate) event: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) data: String,
    pub(crate) comment: Option<String>,
}

impl SseFrame {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("JSON data")
    }
}

/// A Server-Sent Events client over reqwest (the time-travel tests use it too).
pub(crate) struct Sse {
    response: reqwest::Response,
    buf: String,
}

impl Sse {
    pub(crate) async fn open(app: &TestApp, token: &str, last_event_id: Option<&str>) -> Sse {
        let mut r = app.request(Method::GET, "/api/events", Some(token));
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id);
        }
        let response = r.send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            response,
            buf: String::new(),
        }
    }

    /// The next event or comment; `None` once the server ended the stream.
    async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut f = SseFrame::default();
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines().filter(|l| !l.is_empty()) {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "" => f.comment = Some(value.to_owned()),
                        "event" => f.event = Some(value.to_owned()),
                        "id" => f.id = Some(value.to_owned()),
                        "data" => data.push(value),
                        _ => {}
                    }
                }
                f.data = data.join("\n");
                return Some(f);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event in time");
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event, skipping keep-alive comments.
    pub(crate) async fn event(&mut self) -> SseFrame {
        loop {
            let f = self
                .next()
                .await
                .expect("an event, not the end of the stream");
            if f.comment.is_none() {
                return f;
            }
        }
    }

    /// Reads up to `realtime:connected`; returns the events before it and its id.
    pub(crate) async fn until_connected(&mut self) -> (Vec<SseFrame>, String) {
        let mut before = Vec::new();
        loop {
            let f = self.event().await;
            if f.event.as_deref() == Some("realtime:connected") {
                return (before, f.id.expect("an id"));
            }
            before.push(f);
        }
    }

    /// Expects the server to end the stream.
    async fn expect_end(&mut self) {
        while let Some(f) = self.next().await {
            assert!(f.comment.is_some(), "expected the end, got {f:?}");
        }
    }
}

/// The five events a client sees while a chat is used, and what their payloads must be.
struct Script {
    expected: Vec<(&'static str, Value)>,
}

/// Sends, edits and deletes a message, renames and deletes the chat on `app`, and returns the
/// events and payloads seed 000 says they produce.
async fn run_script(app: &TestApp, token: &str, chat: &str) -> Script {
    let m = app.send_message(token, chat, "fn main() {}", "code").await;
    let id = m["id"].as_str().unwrap().to_owned();
    let sent = json!({
        "id": m["id"], "content": m["content"], "type": m["type"],
        "userId": m["userId"], "createdAt": m["createdAt"],
    });
    let path = format!("/api/chats/{chat}/messages/{id}");
    succeeded(app.put(&path, token, &json!({ "content": "edited" })).await);
    assert_eq!(app.delete(&path, token).await, 204);
    let path = format!("/api/chats/{chat}");
    let renamed = succeeded(app.put(&path, token, &json!({ "title": "Renamed" })).await);
    assert_eq!(app.delete(&path, token).await, 204);
    Script {
        expected: vec![
            ("message:sent", sent),
            (
                "message:updated",
                json!({ "id": id, "updates": { "content": "edited" } }),
            ),
            ("message:deleted", json!(id)),
            (
                "chat:updated",
                json!({
                    "id": chat, "title": "Renamed",
                    "createdAt": renamed["createdAt"], "updatedAt": renamed["updatedAt"],
                }),
            ),
            ("chat:deleted", json!(chat)),
        ],
    }
}

/// A user's live clients on one instance: a WebSocket subscribed to their channel and a chat's,
/// and an SSE stream.
struct Watcher {
    ws: Ws,
    sse: Sse,
    user_channel: String,
    chat_channel: String,
}

impl Watcher {
    /// Connects both to `app` as `token` (the user `uid`) and waits until they are live.
    async fn start(app: &TestApp, token: &str, uid: &str, chat: &str) -> Watcher {
        let (user_channel, chat_channel) = (
            format!("private-user-{uid}"),
            format!("private-chat-{chat}"),
        );
        let mut ws = Ws::connect(app).await;
        ws.subscribed(app, token, &user_channel).await;
        ws.subscribed(app, token, &chat_channel).await;
        let mut sse = Sse::open(app, token, None).await;
        sse.until_connected().await;
        Watcher {
            ws,
            sse,
            user_channel,
            chat_channel,
        }
    }
}

/// Checks the watcher's WebSocket gets every event on both channels, in order, with exactly
/// the expected payloads; and its SSE stream gets each once. Returns the id of the last SSE
/// event.
async fn check_delivery(watcher: &mut Watcher, script: &Script) -> u64 {
    let Watcher {
        ws,
        sse,
        user_channel,
        chat_channel,
    } = watcher;
    let mut last_id = 0u64;
    for (name, payload) in &script.expected {
        for _ in 0..2 {
            let f = ws.frame().await;
            assert_eq!(f["event"], *name, "{f}");
            assert_eq!(f["data"], *payload, "{name}");
            assert!(
                f["channel"] == *user_channel || f["channel"] == *chat_channel,
                "{f}"
            );
        }
        let e = sse.event().await;
        assert_eq!(e.event.as_deref(), Some(*name));
        assert_eq!(e.json(), *payload, "{name}");
        let id: u64 = e.id.expect("an id").parse().expect("a position");
        assert!(id > last_id, "ids increase");
        last_id = id;
    }
    last_id
}

async fn every_event_reaches_websocket_and_sse_clients_with_the_seed_shapes(db: Db) {
    let app = spawn_app_with(db, pusher_on).await;
    let (token, user) = app.sign_up("rt-single@example.com").await;
    let uid = user["id"].as_str().unwrap();
    let chat = app.new_chat(&token, "Live").await;
    let mut watcher = Watcher::start(&app, &token, uid, &chat).await;
    let script = run_script(&app, &token, &chat).await;
    check_delivery(&mut watcher, &script).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_clients_of_another_and_sign_out_there_closes_them() {
    let a = spawn_app_with(Db::Postgres, pusher_on).await;
    let b = spawn_app_on(a.database_url.clone(), pusher_on).await;
    let (token, user) = a.sign_up("rt-two@example.com").await;
    let uid = user["id"].as_str().unwrap();
    let chat = a.new_chat(&token, "Across").await;
    let mut watcher = Watcher::start(&b, &token, uid, &chat).await;
    let script = run_script(&a, &token, &chat).await;
    let last = check_delivery(&mut watcher, &script).await;
    let Watcher {
        mut ws,
        sse,
        user_channel,
        ..
    } = watcher;
    // Ids are log positions, the same on every instance: a client of B that reconnects to A
    // gets from A exactly what it missed.
    drop(sse);
    let chat = a.new_chat(&token, "Resumed elsewhere").await;
    let missed = [
        b.send_message(&token, &chat, "one", "code").await["id"].clone(),
        a.send_message(&token, &chat, "two", "code").await["id"].clone(),
    ];
    let mut resumed = Sse::open(&a, &token, Some(&last.to_string())).await;
    let (replayed, _) = resumed.until_connected().await;
    let got: Vec<Value> = replayed.iter().map(|f| f.json()["id"].clone()).collect();
    assert_eq!(got, missed);
    // A connection to B from the last event seen: B's tailer may not have reached that event
    // yet when this opens, and a stream without Last-Event-ID would then rightly deliver it.
    let seen = replayed.last().and_then(|f| f.id.clone());
    let mut sse = Sse::open(&b, &token, seen.as_deref()).await;
    sse.until_connected().await;
    // The WebSocket on B got them live, on the user channel (the chat channel was another's).
    for id in &missed {
        let f = ws.frame().await;
        assert_eq!(
            (&f["channel"], &f["data"]["id"]),
            (&json!(user_channel), id)
        );
    }
    // Signing out on A closes the session's connections on B (and A).
    assert_eq!(a.sign_out(&token).await, 204);
    ws.expect_closed(4009).await;
    sse.expect_end().await;
    resumed.expect_end().await;
    b.shutdown().await;
    a.shutdown().await;
}

async fn sse_resumes_with_exactly_the_missed_events(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let (token, _, chat) = app
        .sign_up_with_chat("rt-resume@example.com", "Resume")
        .await;
    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    let first = app.send_message(&token, &chat, "one", "code").await;
    let seen = sse.event().await;
    assert_eq!(seen.json()["id"], first["id"]);
    let last_id = seen.id.clone().unwrap();
    drop(sse);
    let mut missed = Vec::new();
    for text in ["two", "three", "four"] {
        missed.push(app.send_message(&token, &chat, text, "code").await["id"].clone());
    }
    let mut sse = Sse::open(&app, &token, Some(&last_id)).await;
    let (replayed, at) = sse.until_connected().await;
    let got: Vec<Value> = replayed.iter().map(|f| f.json()["id"].clone()).collect();
    assert_eq!(got, missed, "exactly the missed events, in order");
    assert!(
        replayed
            .iter()
            .all(|f| f.event.as_deref() == Some("message:sent"))
    );
    let ids: HashSet<&str> = replayed.iter().filter_map(|f| f.id.as_deref()).collect();
    assert_eq!(ids.len(), 3);
    // Then live events, none of the replayed ones again.
    let live = app.send_message(&token, &chat, "five", "code").await;
    let next = sse.event().await;
    assert_eq!(next.json()["id"], live["id"]);
    drop(sse);
    // Resuming from where the stream stood replays nothing twice.
    let mut sse = Sse::open(&app, &token, next.id.as_deref()).await;
    let (replayed, _) = sse.until_connected().await;
    assert!(replayed.is_empty(), "{replayed:?}");
    drop(sse);
    let mut sse = Sse::open(&app, &token, Some(&at)).await;
    let (replayed, _) = sse.until_connected().await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].json()["id"], live["id"]);
    // A Last-Event-ID that is not an id is refused with the error body.
    let (status, body) = parts(
        app.request(Method::GET, "/api/events", Some(&token))
            .header("last-event-id", "yesterday")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    let (status, body) = app.get("/api/events", None).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    app.shutdown().await;
}

async fn a_resume_point_older_than_the_window_is_announced(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.realtime_replay_window = 2;
        c.realtime_keepalive_secs = 1;
    })
    .await;
    let (token, _, chat) = app
        .sign_up_with_chat("rt-window@example.com", "Window")
        .await;
    let mut sse = Sse::open(&app, &token, None).await;
    let (_, start) = sse.until_connected().await;
    // Idle streams carry keep-alive comments.
    let comment = sse.next().await.expect("a keep-alive");
    assert_eq!(
        comment.comment.as_deref(),
        Some("keep-alive"),
        "{comment:?}"
    );
    drop(sse);
    let mut ids = Vec::new();
    for text in ["a", "b", "c", "d"] {
        ids.push(app.send_message(&token, &chat, text, "code").await["id"].clone());
    }
    let mut sse = Sse::open(&app, &token, Some(&start)).await;
    let (replayed, _) = sse.until_connected().await;
    assert_eq!(
        replayed[0].event.as_deref(),
        Some("realtime:resync"),
        "{replayed:?}"
    );
    assert!(
        replayed[0].id.is_none(),
        "the notice does not move the resume point"
    );
    let got: Vec<Value> = replayed[1..]
        .iter()
        .map(|f| f.json()["id"].clone())
        .collect();
    assert_eq!(got, ids[2..].to_vec(), "what the window still holds");
    app.shutdown().await;
}

async fn channels_of_other_users_are_refused(db: Db) {
    let app = spawn_app_with(db, pusher_on).await;
    let (alice, alice_user) = app.sign_up("rt-alice@example.com").await;
    let (bob, _) = app.sign_up("rt-bob@example.com").await;
    let alice_id = alice_user["id"].as_str().unwrap();
    let alice_chat = app.new_chat(&alice, "Alice's").await;
    let mut ws = Ws::connect(&app).await;
    let sid = ws.socket_id.clone();
    for channel in [
        format!("private-user-{alice_id}"),
        format!("private-chat-{alice_chat}"),
    ] {
        let (status, body) = authorize(&app, &bob, &sid, &channel).await;
        assert_eq!(status, 403, "{channel}: {body}");
        assert_error(&body, "forbidden");
    }
    let missing = format!("private-chat-{}", uuid::Uuid::now_v7());
    assert_eq!(authorize(&app, &bob, &sid, &missing).await.0, 403);
    let (status, body) = authorize(&app, &bob, &sid, "presence-room").await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    assert!(
        body["error"]["details"]["channel_name"].is_string(),
        "{body}"
    );
    let (status, body) = authorize(&app, &bob, "not-a-socket", &missing).await;
    assert_eq!(status, 400);
    assert!(body["error"]["details"]["socket_id"].is_string(), "{body}");
    let form = format!("socket_id={sid}&channel_name=private-user-{alice_id}");
    let (status, body) = app.post_raw("/api/realtime/auth", None, FORM, form).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    let (status, body) = app
        .post(
            "/api/realtime/auth",
            Some(&alice),
            &json!({ "socket_id": sid, "channel_name": format!("private-user-{alice_id}") }),
        )
        .await;
    assert_eq!(status, 415);
    assert_error(&body, "unsupported_media_type");

    // Forged, borrowed and missing signatures are refused on the socket.
    let channel = format!("private-user-{alice_id}");
    let refused = |v: &Value, status: u64| {
        assert_eq!(v["event"], "pusher:subscription_error", "{v}");
        assert_eq!(v["channel"], channel.as_str(), "{v}");
        assert_eq!(v["data"]["type"], "AuthError", "{v}");
        assert_eq!(v["data"]["status"], status, "{v}");
    };
    let forged = format!("{KEY}:{}", "ab".repeat(32));
    ws.send(json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": forged } }))
        .await;
    refused(&ws.frame().await, 401);
    let (_, good) = authorize(&app, &alice, &sid, &channel).await;
    let mut other = Ws::connect(&app).await;
    other
        .send(json!({ "event": "pusher:subscribe", "data": {
            "channel": channel, "auth": good["auth"], "channel_data": good["channel_data"],
        }}))
        .await;
    refused(&other.frame().await, 401);
    ws.send(json!({ "event": "pusher:subscribe", "data": { "channel": channel } }))
        .await;
    refused(&ws.frame().await, 401);
    // Bob's signed binding on Alice's channel: the signature is right, the user is not.
    let bob_data =
        json!({ "user_id": uuid::Uuid::now_v7(), "session_id": uuid::Uuid::now_v7() }).to_string();
    ws.send(json!({ "event": "pusher:subscribe", "data": {
        "channel": channel, "auth": sign(&sid, &channel, Some(&bob_data)), "channel_data": bob_data,
    }}))
    .await;
    refused(&ws.frame().await, 403);
    // A signature made with the secret the standard way (no channel data) is accepted.
    ws.send(json!({ "event": "pusher:subscribe", "data": {
        "channel": channel, "auth": sign(&sid, &channel, None),
    }}))
    .await;
    assert_eq!(
        ws.frame().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    app.shutdown().await;
}

async fn events_about_other_users_chats_never_arrive(db: Db) {
    let app = spawn_app_with(db, pusher_on).await;
    let (alice, alice_user) = app.sign_up("rt-a2@example.com").await;
    let (bob, bob_user) = app.sign_up("rt-b2@example.com").await;
    let alice_chat = app.new_chat(&alice, "Alice's").await;
    let bob_chat = app.new_chat(&bob, "Bob's").await;
    let mut ws = Ws::connect(&app).await;
    let bob_channel = format!("private-user-{}", bob_user["id"].as_str().unwrap());
    ws.subscribed(&app, &bob, &bob_channel).await;
    let mut sse = Sse::open(&app, &bob, None).await;
    sse.until_connected().await;
    // Alice's activity, then Bob's: Bob's clients see only their own, first.
    app.send_message(&alice, &alice_chat, "secret", "code")
        .await;
    let alice_uid = alice_user["id"].as_str().unwrap();
    let mut alice_ws = Ws::connect(&app).await;
    alice_ws
        .subscribed(&app, &alice, &format!("private-user-{alice_uid}"))
        .await;
    app.send_message(&alice, &alice_chat, "more", "code").await;
    let own = app.send_message(&bob, &bob_chat, "mine", "code").await;
    let f = ws.frame().await;
    assert_eq!(f["data"]["id"], own["id"], "{f}");
    assert_eq!(sse.event().await.json()["id"], own["id"]);
    // Alice's own client did get hers.
    assert_eq!(alice_ws.frame().await["data"]["content"], "more");
    app.shutdown().await;
}

async fn erasing_an_account_closes_all_its_connections(db: Db) {
    let app = spawn_app_with(db, pusher_on).await;
    let (token, user) = app.sign_up("rt-erased@example.com").await;
    let (stays, stays_user) = app.sign_up("rt-stays@example.com").await;
    let channel = |u: &Value| format!("private-user-{}", u["id"].as_str().unwrap());
    let mut ws = Ws::connect(&app).await;
    ws.subscribed(&app, &token, &channel(&user)).await;
    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    let mut ws_other = Ws::connect(&app).await;
    ws_other
        .subscribed(&app, &stays, &channel(&stays_user))
        .await;
    let r = app
        .request(Method::DELETE, "/api/me", Some(&token))
        .json(&serde_json::json!({ "password": PASSWORD }))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    ws.expect_closed(4009).await;
    sse.expect_end().await;
    // Another user's connection goes on.
    let chat = app.new_chat(&stays, "Still here").await;
    let m = app.send_message(&stays, &chat, "hi", "text").await;
    assert_eq!(ws_other.frame().await["data"]["id"], m["id"]);
    app.shutdown().await;
}

async fn sign_out_closes_that_sessions_connections(db: Db) {
    let app = spawn_app_with(db, pusher_on).await;
    let (token, user) = app.sign_up("rt-out@example.com").await;
    let uid = user["id"].as_str().unwrap();
    let (other_token, _) = app.sign_in("rt-out@example.com", PASSWORD).await;
    let channel = format!("private-user-{uid}");
    let mut ws = Ws::connect(&app).await;
    ws.subscribed(&app, &token, &channel).await;
    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    // The same user's other session keeps its connections.
    let mut ws_other = Ws::connect(&app).await;
    ws_other.subscribed(&app, &other_token, &channel).await;
    let mut sse_other = Sse::open(&app, &other_token, None).await;
    sse_other.until_connected().await;
    assert_eq!(app.sign_out(&token).await, 204);
    ws.expect_closed(4009).await;
    sse.expect_end().await;
    let chat = app.new_chat(&other_token, "Still here").await;
    let m = app.send_message(&other_token, &chat, "hi", "code").await;
    assert_eq!(ws_other.frame().await["data"]["id"], m["id"]);
    assert_eq!(sse_other.event().await.json()["id"], m["id"]);
    // The signed-out token opens nothing any more.
    assert_eq!(app.get("/api/events", Some(&token)).await.0, 401);
    assert_eq!(
        authorize(&app, &token, &ws_other.socket_id, &channel)
            .await
            .0,
        401
    );
    app.shutdown().await;
}

async fn the_pusher_handshake_ping_and_errors_follow_the_protocol(db: Db) {
    let app = spawn_app_with(db, pusher_on).await;
    let (token, user) = app.sign_up("rt-proto@example.com").await;
    let uid = user["id"].as_str().unwrap();
    let url = Ws::url(&app, KEY, "?protocol=7&client=js&version=8.4.0&flash=false");
    let mut ws = Ws::open(url).await;
    let hello = ws.frame().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let sid = hello["data"]["socket_id"].as_str().unwrap();
    let (a, b) = sid.split_once('.').expect("digits.digits");
    assert!(!a.is_empty() && !b.is_empty());
    assert!(
        a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()),
        "{sid}"
    );
    assert_eq!(hello["data"]["activity_timeout"], 120);
    ws.socket_id = sid.to_owned();

    ws.send(json!({ "event": "pusher:ping", "data": {} })).await;
    assert_eq!(ws.frame().await["event"], "pusher:pong");
    ws.send(json!({ "event": "client-typing", "channel": "x", "data": {} }))
        .await;
    let e = ws.frame().await;
    assert_eq!(e["event"], "pusher:error", "{e}");
    ws.stream
        .send(Message::Text("not json".into()))
        .await
        .unwrap();
    assert_eq!(ws.frame().await["event"], "pusher:error");
    ws.send(json!({ "event": "pusher:subscribe", "data": { "channel": "public-news" } }))
        .await;
    assert_eq!(ws.frame().await["event"], "pusher:subscription_error");

    // Subscribe, receive, unsubscribe, receive nothing more.
    let chat = app.new_chat(&token, "Proto").await;
    let channel = format!("private-chat-{chat}");
    ws.subscribed(&app, &token, &channel).await;
    // Subscribing twice is answered, not doubled.
    ws.subscribed(&app, &token, &channel).await;
    let m = app.send_message(&token, &chat, "one", "code").await;
    let f = ws.frame().await;
    assert_eq!(
        (&f["event"], &f["channel"]),
        (&json!("message:sent"), &json!(channel))
    );
    assert_eq!(f["data"]["id"], m["id"]);
    ws.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }))
        .await;
    ws.subscribed(&app, &token, &format!("private-user-{uid}"))
        .await;
    let m2 = app.send_message(&token, &chat, "two", "code").await;
    let f = ws.frame().await;
    assert_eq!(
        f["channel"],
        format!("private-user-{uid}"),
        "only the user channel now"
    );
    assert_eq!(f["data"]["id"], m2["id"]);

    // A wrong key, or no protocol version, is refused with Pusher's codes.
    for (key, query, code) in [
        ("wrong-key", "?protocol=7", 4001),
        (KEY, "", 4008),
        (KEY, "?protocol=2", 4007),
    ] {
        let mut refused = Ws::open(Ws::url(&app, key, query)).await;
        refused.expect_closed(code).await;
    }
    // Not a WebSocket upgrade: the error body.
    let (status, body) = app.get(&format!("/app/{KEY}?protocol=7"), None).await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pusher_settings_websocket_is_off_and_sse_still_works() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let (token, user) = app.sign_up("rt-off@example.com").await;
    let (status, body) = app.get("/app/any?protocol=7", None).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    assert!(error_message(&body).contains("CONFAB_PUSHER_KEY"));
    let channel = format!("private-user-{}", user["id"].as_str().unwrap());
    let (status, body) = authorize(&app, &token, "1.2", &channel).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (_, doc) = app.get("/openapi.json", None).await;
    for path in ["/api/realtime/auth", "/api/events"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    let chat = app.new_chat(&token, "SSE only").await;
    app.send_message(&token, &chat, "hello", "code").await;
    assert_eq!(sse.event().await.event.as_deref(), Some("message:sent"));
    // Shutting down ends open streams instead of waiting on them.
    app.shutdown().await;
    assert!(sse.next().await.is_none_or(|f| f.comment.is_some()));
}

// ---- pusher-js under Node: the compatibility proof ----

/// `tests/realtime`, with pusher-js installed in it. Panics, so the compatibility test fails
/// instead of passing unseen, when Node.js or the client is missing (`.ci/run` installs both).
async fn pusher_js_client_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realtime");
    let node = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await;
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the pusher-js compatibility test needs Node.js: install it (`apt-get install -y nodejs \
         npm`), then run `npm ci` in tests/realtime, or run .ci/run, which does both"
    );
    assert!(
        dir.join("node_modules/pusher-js/package.json").exists(),
        "pusher-js is not installed in {}: run `npm ci` there (.ci/run does)",
        dir.display()
    );
    dir
}

/// A pusher-js client running under Node, read line by line.
struct PusherJs {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PusherJs {
    async fn start(dir: &std::path::Path, app: &TestApp, token: &str, channels: &[String]) -> Self {
        let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
        let settings = json!({
            "key": KEY, "host": "127.0.0.1", "port": port,
            "authEndpoint": format!("{}/api/realtime/auth", app.base),
            "token": token, "channels": channels, "timeoutMs": 120_000,
        });
        let mut child = tokio::process::Command::new("node")
            .arg("client.js")
            .current_dir(dir)
            .env("CONFAB_PUSHER_TEST", settings.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node client.js");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        PusherJs { child, lines }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("pusher-js said something in time")
            .expect("read")
            .expect("pusher-js still running");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    /// The next line of `type`, skipping connection state changes.
    async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
            assert_eq!(v["type"], "state", "expected {ty}, got {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_receives_every_event_from_another_instance_and_is_closed_on_sign_out() {
    let dir = pusher_js_client_dir().await;
    let a = spawn_app_with(Db::Postgres, pusher_on).await;
    let b = spawn_app_on(a.database_url.clone(), pusher_on).await;
    let (token, user) = a.sign_up("rt-pusherjs@example.com").await;
    let (bob, bob_user) = a.sign_up("rt-pusherjs-bob@example.com").await;
    let uid = user["id"].as_str().unwrap();
    let chat = a.new_chat(&token, "pusher-js").await;
    let channels = vec![
        format!("private-user-{uid}"),
        format!("private-chat-{chat}"),
    ];
    let mut client = PusherJs::start(&dir, &b, &token, &channels).await;
    let mut subscribed = HashSet::new();
    while subscribed.len() < 2 {
        let v = client.next_of("subscribed").await;
        subscribed.insert(v["channel"].as_str().unwrap().to_owned());
    }
    // A channel of another user: pusher-js reports the auth route's 403.
    let bob_channels = vec![format!("private-user-{uid}")];
    let mut intruder = PusherJs::start(&dir, &b, &bob, &bob_channels).await;
    let refused = intruder.next_of("subscription_error").await;
    assert_eq!(refused["error"]["status"], 403, "{refused}");
    drop(intruder);
    let _ = bob_user;

    let script = run_script(&a, &token, &chat).await;
    for (name, payload) in &script.expected {
        let mut channels_seen = HashSet::new();
        for _ in 0..2 {
            let v = client.next_of("event").await;
            assert_eq!(v["event"], *name, "{v}");
            assert_eq!(v["data"], *payload, "{name}: {v}");
            channels_seen.insert(v["channel"].as_str().unwrap().to_owned());
        }
        assert_eq!(channels_seen.len(), 2, "once on each channel");
    }
    assert_eq!(a.sign_out(&token).await, 204);
    // pusher-js is told it is unauthorised (Pusher's 4009) and disconnects for good.
    let mut codes = Vec::new();
    loop {
        let v = client.next().await;
        if v["type"] == "state" && v["current"] == "disconnected" {
            break;
        }
        assert_eq!(v["type"], "connection_error", "{v}");
        codes.push(v["error"]["code"].clone());
    }
    assert!(codes.contains(&json!(4009)), "{codes:?}");
    let after = tokio::time::timeout(Duration::from_secs(3), client.lines.next_line()).await;
    assert!(after.is_err(), "no reconnection: {after:?}");
    let _ = client.child.kill().await;
    b.shutdown().await;
    a.shutdown().await;
}

/// The next `document:updated` of the stream, skipping other events.
async fn document_update(sse: &mut Sse) -> Value {
    loop {
        let f = sse.event().await;
        if f.event.as_deref() == Some("document:updated") {
            assert!(f.id.is_some());
            return f.json();
        }
    }
}

async fn a_documents_status_changes_reach_its_owner_only(db: Db) {
    let up = confab_testkit::openai::OpenAiStandIn::start().await;
    up.embeddings_then(400);
    let app = spawn_app_with(db, |c| {
        c.openai_base_url = Some(up.base_url().to_owned());
        c.llm_backoff_ms = 20;
    })
    .await;
    let (token, _) = app.sign_up("rt-doc@example.com").await;
    let (other, _) = app.sign_up("rt-doc-other@example.com").await;
    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    let mut theirs = Sse::open(&app, &other, None).await;
    theirs.until_connected().await;

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"live status words".to_vec()).file_name("a.txt"),
    );
    let (status, body) = parts(
        app.request(Method::POST, "/api/upload", Some(&token))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["documentId"].clone();
    // Uploaded, then failed (the provider refuses the first embedding), then processing and
    // ready again after POST /api/rag.
    assert_eq!(
        document_update(&mut sse).await,
        json!({ "id": id, "status": "processing", "chunks": 0, "error": null })
    );
    let failed = document_update(&mut sse).await;
    assert_eq!(
        (failed["status"].clone(), failed["chunks"].clone()),
        (json!("failed"), json!(1))
    );
    assert!(
        failed["error"].as_str().unwrap().contains("refused"),
        "{failed}"
    );
    let (status, _) = app
        .post("/api/rag", Some(&token), &json!({ "documentId": id }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        document_update(&mut sse).await,
        json!({ "id": id, "status": "processing", "chunks": 1, "error": null })
    );
    assert_eq!(
        document_update(&mut sse).await,
        json!({ "id": id, "status": "ready", "chunks": 1, "error": null })
    );
    // The other user heard nothing of it.
    let quiet = tokio::time::timeout(Duration::from_millis(300), theirs.next()).await;
    if let Ok(Some(f)) = quiet {
        assert!(f.comment.is_some(), "another user's client got {f:?}");
    }
    app.shutdown().await;
}
