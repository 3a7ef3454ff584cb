//! The AI chat benchmark: time to the first byte of reply text of `POST /api/chat` (user message
//! stored, credits reserved, job queued, worker picks it up, calls the provider, relays the
//! first token), against the same provider call made directly from a bare axum handler, in the
//! same run. The difference is what the queue and the rest of the route add.
//!
//! `cargo run --release --example ttfb -- [requests, default 500]`
//!
//! Everything runs on this machine: a local upstream that speaks OpenAI's chat-completions
//! streaming format and answers at once, Confab on the embedded default (a fresh SQLite data
//! directory, jobs in apalis-sqlite), and the reference handler. Requests are sequential and
//! alternate between the two, so both see the same machine noise.

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use confab::{Application, Config};
use confab_application::ai::llm::{self, CallPolicy, Endpoint, Turn};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A stream that answers at once: two pieces of text, the usage, the end.
async fn completions() -> Response {
    let chunk = |delta: Value, usage: Value| {
        let v = json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": if delta.is_null() { json!([]) } else {
                json!([{ "index": 0, "delta": delta, "finish_reason": null }])
            },
            "usage": usage,
        });
        format!("data: {v}\n\n")
    };
    let body = [
        chunk(
            json!({ "role": "assistant", "content": "Hello" }),
            Value::Null,
        ),
        chunk(json!({ "content": ", world" }), Value::Null),
        chunk(
            Value::Null,
            json!({ "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15 }),
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn serve(router: Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

/// The reference: the provider called straight from the handler, its text streamed back.
async fn direct(State(endpoint): State<Endpoint>, body: axum::Json<Value>) -> Response {
    let content = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let turns = [Turn {
            role: "user".into(),
            content,
        }];
        let _ = llm::stream_reply(
            &endpoint,
            &CallPolicy::default(),
            "gpt-4o-mini",
            4096,
            &turns,
            |t| {
                let _ = tx.send(t.to_owned());
            },
        )
        .await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|t| (Ok::<_, std::convert::Infallible>(Bytes::from(t)), rx))
    });
    Body::from_stream(stream).into_response()
}

/// Times from sending the request to its response headers and to the first byte of reply
/// text; reads the rest so the next request starts on an idle server.
async fn first_text(request: reqwest::RequestBuilder) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut r = request.send().await?;
    let headers = started.elapsed();
    anyhow::ensure!(r.status().is_success(), "answered {}", r.status());
    let first = r.chunk().await?.context("an empty reply")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(!first.is_empty(), "an empty first chunk");
    while r.chunk().await?.is_some() {}
    Ok((headers, elapsed))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("the argument is the number of requests")?
        .unwrap_or(500);
    let upstream = serve(Router::new().route("/v1/chat/completions", post(completions))).await?;
    let reference = serve(
        Router::new()
            .route("/direct", post(direct))
            .with_state(Endpoint {
                base_url: format!("{upstream}/v1"),
                api_key: Some("bench".into()),
                guard: None,
            }),
    )
    .await?;

    let dir = tempfile::tempdir()?;
    let mut config = Config {
        bind: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("data"),
        openai_base_url: Some(format!("{upstream}/v1")),
        openai_api_key: Some("bench".to_owned().into()),
        rate_limit_enabled: false,
        ..Config::default()
    };
    for tier in &mut config.catalogue.tiers {
        tier.starting_credits = 1_000_000_000;
    }
    let app = Application::build(config).await?;
    let confab = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));

    let http = reqwest::Client::new();
    let signup: Value = http
        .post(format!("{confab}/api/auth/signup"))
        .json(&json!({ "email": "bench@example.com", "password": "correct horse battery", "name": "Bench" }))
        .send()
        .await?
        .json()
        .await?;
    let token = signup["token"]
        .as_str()
        .context("a session token")?
        .to_owned();
    let ask = |chat: Option<&str>| {
        let mut body = json!({ "messages": [{ "role": "user", "content": "Say hello" }] });
        if let Some(c) = chat {
            body["chatId"] = json!(c);
        }
        body
    };
    // One conversation, as a user has it.
    let r = http
        .post(format!("{confab}/api/chat"))
        .bearer_auth(&token)
        .json(&ask(None))
        .send()
        .await?;
    let chat = r.headers()["x-chat-id"].to_str()?.to_owned();
    r.bytes().await?;

    let ours_req = || {
        http.post(format!("{confab}/api/chat"))
            .bearer_auth(&token)
            .json(&ask(Some(&chat)))
    };
    let ref_req = || http.post(format!("{reference}/direct")).json(&ask(None));
    eprintln!("warming up ...");
    for _ in 0..50 {
        first_text(ours_req()).await?;
        first_text(ref_req()).await?;
    }
    eprintln!("measuring {requests} requests each ...");
    let (mut ours, mut bare, mut handler) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..requests {
        let (ours_first, bare_first) = if i % 2 == 0 {
            let o = first_text(ours_req()).await?;
            (o, first_text(ref_req()).await?)
        } else {
            let b = first_text(ref_req()).await?;
            (first_text(ours_req()).await?, b)
        };
        handler.push(ours_first.0);
        ours.push(ours_first.1);
        bare.push(bare_first.1);
    }
    ours.sort();
    bare.sort();
    handler.sort();
    println!("| | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, v) in [
        ("POST /api/chat: response headers (handler done)", &handler),
        ("POST /api/chat: first text (queued job)", &ours),
        ("direct call from a bare handler", &bare),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.9)),
            ms(percentile(v, 0.99)),
            ms(percentile(v, 1.0)),
        );
    }
    println!(
        "| overhead (difference) | {:.2} | {:.2} | {:.2} | |",
        ms(percentile(&ours, 0.5)) - ms(percentile(&bare, 0.5)),
        ms(percentile(&ours, 0.9)) - ms(percentile(&bare, 0.9)),
        ms(percentile(&ours, 0.99)) - ms(percentile(&bare, 0.99)),
    );
    Ok(())
}
