//! Realtime fan-out benchmark (`bench/realtime.sh` runs it against a release server): signs up
//! `USERS` users with one chat each, opens `CONNS` WebSocket connections per user that speak
//! the Pusher protocol and subscribe to their user's private channel through
//! `POST /api/realtime/auth`, then posts a message every `INTERVAL_MS` milliseconds (to the
//! users' chats in turn) for `SECS` seconds and measures, for every delivery of every message,
//! the delay from the write's response to receipt (and, beside it, from the write's request).
//!
//! `CONFAB_BENCH_URL=http://127.0.0.1:18190 CONFAB_PUSHER_KEY=bench-key \
//!  cargo run --release --example ws_fanout` (`USERS`, `CONNS`, `SECS`, `INTERVAL_MS` scale it).

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A signed-up user with one chat.
struct User {
    token: String,
    id: String,
    chat: String,
}

/// When each message was received, by message id, one entry per delivery.
type Receipts = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

async fn sign_up(http: &reqwest::Client, base: &str, run: u64, i: usize) -> anyhow::Result<User> {
    let r: Value = http
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({
            "email": format!("fanout-{run}-{i}@example.com"),
            "password": "benchmark password", "name": "Fan-out",
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = r["token"].as_str().context("token")?.to_owned();
    let id = r["user"]["id"].as_str().context("user id")?.to_owned();
    let chat: Value = http
        .post(format!("{base}/api/chats"))
        .bearer_auth(&token)
        .json(&json!({ "title": "fan-out" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let chat = chat["id"].as_str().context("chat id")?.to_owned();
    Ok(User { token, id, chat })
}

/// What one client connection needs.
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    token: String,
    user_id: String,
    receipts: Receipts,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Opens one Pusher connection for its user, subscribes it, says it is ready, and records
/// every `message:sent` it receives until told to stop.
async fn connection(c: Client) -> anyhow::Result<()> {
    let Client {
        http,
        base,
        key,
        token,
        user_id,
        receipts,
        ready,
        mut stop,
    } = c;
    let url = format!(
        "{}/app/{key}?protocol=7&client=rust-bench&version=1",
        base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = ws.next().await.context("no handshake")??;
    let hello: Value = serde_json::from_str(hello.to_text()?)?;
    let data: Value = serde_json::from_str(hello["data"].as_str().context("handshake data")?)?;
    let socket_id = data["socket_id"].as_str().context("socket id")?.to_owned();
    let channel = format!("private-user-{user_id}");
    let auth: Value = http
        .post(format!("{base}/api/realtime/auth"))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("socket_id={socket_id}&channel_name={channel}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let subscribe = json!({ "event": "pusher:subscribe", "data": {
        "channel": channel, "auth": auth["auth"], "channel_data": auth["channel_data"],
    }});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    let answer = ws.next().await.context("no subscription answer")??;
    if !answer.to_text()?.contains("subscription_succeeded") {
        bail!("subscription refused: {answer}");
    }
    ready.send(()).await?;
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            msg = ws.next() => msg,
        };
        let at = Instant::now();
        let Some(Ok(Message::Text(text))) = msg else {
            if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                bail!("connection closed during the run");
            }
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        if frame["event"] == "message:sent" {
            let data: Value = serde_json::from_str(frame["data"].as_str().unwrap_or("{}"))?;
            if let Some(id) = data["id"].as_str() {
                receipts
                    .lock()
                    .unwrap()
                    .entry(id.to_owned())
                    .or_default()
                    .push(at);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base: String = setting("CONFAB_BENCH_URL", "http://127.0.0.1:18190".to_owned());
    let key: String = setting("CONFAB_PUSHER_KEY", "bench-key".to_owned());
    let users_n: usize = setting("USERS", 100);
    let conns: usize = setting("CONNS", 10);
    let secs: u64 = setting("SECS", 30);
    let interval_ms: u64 = setting("INTERVAL_MS", 10);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let http = reqwest::Client::new();

    let t = Instant::now();
    let users: Vec<User> = futures::stream::iter(0..users_n)
        .map(|i| sign_up(&http, &base, run, i))
        .buffered(8)
        .try_collect()
        .await?;
    eprintln!("{users_n} users signed up in {:.1?}", t.elapsed());

    let receipts: Receipts = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(users_n * conns + 1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    let setup = Arc::new(tokio::sync::Semaphore::new(32));
    for u in &users {
        for _ in 0..conns {
            let permit = setup.clone().acquire_owned().await?;
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            let (token, id) = (u.token.clone(), u.id.clone());
            let (receipts, ready, stop) = (receipts.clone(), ready_tx.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let (signal, mut ready_inner) = tokio::sync::mpsc::channel(1);
                let run = connection(Client {
                    http,
                    base,
                    key,
                    token,
                    user_id: id,
                    receipts,
                    ready: signal,
                    stop,
                });
                tokio::pin!(run);
                // Hold the setup slot until this connection is subscribed.
                tokio::select! {
                    r = &mut run => return r,
                    _ = ready_inner.recv() => {}
                }
                drop(permit);
                let _ = ready.send(()).await;
                run.await
            });
        }
    }
    for _ in 0..users_n * conns {
        tokio::select! {
            _ = ready_rx.recv() => {}
            Some(done) = tasks.join_next() => bail!("a connection failed during setup: {done:?}"),
        }
    }
    eprintln!(
        "{} connections subscribed in {:.1?}",
        users_n * conns,
        t.elapsed()
    );

    // Writes at a fixed rate; each runs on its own so a slow answer does not delay the next.
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0usize;
    while Instant::now() < end {
        ticker.tick().await;
        let u = &users[i % users.len()];
        i += 1;
        let req = http
            .post(format!("{base}/api/chats/{}/messages", u.chat))
            .bearer_auth(&u.token)
            .json(&json!({ "content": format!("fan-out message {i}"), "type": "text" }));
        writes.spawn(async move {
            let sent = Instant::now();
            let r: Value = req.send().await?.error_for_status()?.json().await?;
            let answered = Instant::now();
            let id = r["id"].as_str().context("message id")?.to_owned();
            anyhow::Ok((id, sent, answered))
        });
    }
    let mut done = Vec::new();
    while let Some(w) = writes.join_next().await {
        done.push(w??);
    }
    // Let the last deliveries land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    while let Some(t) = tasks.join_next().await {
        t??;
    }

    let receipts = receipts.lock().unwrap();
    let (mut from_response, mut from_request, mut write_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut missing, mut before_response) = (0usize, 0usize);
    for (id, sent, answered) in &done {
        write_ms.push((*answered - *sent).as_secs_f64() * 1e3);
        let got = receipts.get(id).map(Vec::as_slice).unwrap_or(&[]);
        missing += conns.saturating_sub(got.len());
        for at in got {
            if at < answered {
                before_response += 1;
            }
            from_response.push(at.saturating_duration_since(*answered).as_secs_f64() * 1e3);
            from_request.push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3);
        }
    }
    println!(
        "{} users x {} connections = {} WebSocket clients; {} writes in {secs} s (one every {interval_ms} ms); {} deliveries, {} missing, {} arrived before the write's response",
        users_n,
        conns,
        users_n * conns,
        done.len(),
        from_response.len(),
        missing,
        before_response,
    );
    println!();
    println!("| latency (ms) | samples | p50 | p90 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    summary("write's response → receipt", from_response);
    summary("write's request → receipt", from_request);
    summary("write (POST) itself", write_ms);
    Ok(())
}
