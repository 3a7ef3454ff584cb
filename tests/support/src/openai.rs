//! A local server that speaks OpenAI's chat-completions wire format: `POST /v1/chat/completions`
//! answered with server-sent event chunks and the usage in the last one, or with a scripted
//! failure (an error status, a hang before the first token, a connection broken mid-stream).
//! It records every request's `Authorization` header and body.
//!
//! `POST /v1/embeddings` answers each input with a deterministic bag-of-words vector (each word,
//! lower-cased, hashed into one of [`EMBEDDING_DIMENSIONS`] buckets), so texts sharing words
//! are close and texts sharing none are orthogonal; scripted statuses (429, 500, ...) can be
//! queued before it ([`OpenAiStandIn::embeddings_then`]). Its requests are recorded apart.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the stand-in does with a request.
#[derive(Debug, Clone)]
pub enum Act {
    /// Streams these pieces, `gap` apart, then the usage (prompt, completion tokens) and `[DONE]`.
    Reply {
        /// The reply's text, one chunk a piece.
        pieces: Vec<String>,
        /// Prompt and completion tokens, reported in the last chunk.
        usage: (u64, u64),
        /// The pause before each piece.
        gap: Duration,
    },
    /// Answers this status (500, 429, ...) with an OpenAI error body.
    Status(u16),
    /// Never answers: not even the headers, so no first token ever comes.
    Hang,
    /// Streams these pieces, then breaks the connection.
    Break(Vec<String>),
    /// Streams these pieces, then keeps the connection open without sending anything more.
    Stall(Vec<String>),
}

impl Act {
    /// [`Act::Reply`] with `pieces`.
    pub fn reply(pieces: &[&str], usage: (u64, u64), gap: Duration) -> Act {
        Act::Reply {
            pieces: pieces.iter().map(|p| (*p).to_owned()).collect(),
            usage,
            gap,
        }
    }

    /// [`Act::Break`] after `pieces`.
    pub fn broken(pieces: &[&str]) -> Act {
        Act::Break(pieces.iter().map(|p| (*p).to_owned()).collect())
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The `Authorization` header (empty if none).
    pub authorization: String,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

impl Request {
    /// What a call brought: its `Authorization` header and its body, parsed.
    fn of(headers: &HeaderMap, body: &str) -> Request {
        Request {
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }
}

#[derive(Default)]
struct Script {
    next: Mutex<VecDeque<Act>>,
    /// What to do once `next` is empty.
    fallback: Mutex<Option<Act>>,
    seen: Mutex<Vec<Request>>,
    /// Statuses the next embeddings requests answer with, before vectors.
    embedding_statuses: Mutex<VecDeque<u16>>,
    embedding_seen: Mutex<Vec<Request>>,
    /// The length of embedding vectors (0: [`EMBEDDING_DIMENSIONS`]).
    dimensions: std::sync::atomic::AtomicUsize,
}

/// The length of the stand-in's embedding vectors.
pub const EMBEDDING_DIMENSIONS: usize = 256;

/// The stand-in's vector of `text`: word counts hashed into buckets (FNV-1a), normalised.
pub fn embedding_of(text: &str) -> Vec<f32> {
    embedding_of_size(text, EMBEDDING_DIMENSIONS)
}

/// [`embedding_of`] with `dimensions` buckets.
pub fn embedding_of_size(text: &str, dimensions: usize) -> Vec<f32> {
    let dimensions = dimensions.max(1);
    let mut v = vec![0f32; dimensions];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.to_lowercase().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % dimensions as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// A running stand-in; clones share it. It stops with the Tokio runtime that started it.
#[derive(Clone)]
pub struct OpenAiStandIn {
    script: Arc<Script>,
    base_url: String,
}

impl OpenAiStandIn {
    /// Starts one on a free port of 127.0.0.1.
    pub async fn start() -> OpenAiStandIn {
        Self::start_on(([127, 0, 0, 1], 0).into())
            .await
            .expect("a free port for the OpenAI stand-in")
    }

    /// Starts one on `addr` (port 0: a free one; [`Self::base_url`] says which).
    pub async fn start_on(addr: std::net::SocketAddr) -> std::io::Result<OpenAiStandIn> {
        let script = Arc::new(Script::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(OpenAiStandIn { script, base_url })
    }

    /// `http://127.0.0.1:<port>/v1`, what an OpenAI client takes as its base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Queues `act` for the next request not yet scripted.
    pub fn then(&self, act: Act) -> &Self {
        lock(&self.script.next).push_back(act);
        self
    }

    /// Does `act` for every request once the queue is empty.
    pub fn always(&self, act: Act) {
        *lock(&self.script.fallback) = Some(act);
    }

    /// Makes embedding vectors `n` long from now on (the default is
    /// [`EMBEDDING_DIMENSIONS`]).
    pub fn embedding_dimensions(&self, n: usize) -> &Self {
        self.script
            .dimensions
            .store(n, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Every chat-completions request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.script.seen).clone()
    }

    /// Answers the next embeddings request not yet scripted with `status` (429, 500, 400...;
    /// 200 answers it normally, 0 never answers it at all).
    pub fn embeddings_then(&self, status: u16) -> &Self {
        lock(&self.script.embedding_statuses).push_back(status);
        self
    }

    /// Every embeddings request so far, oldest first.
    pub fn embedding_requests(&self) -> Vec<Request> {
        lock(&self.script.embedding_seen).clone()
    }
}

/// A test that failed while holding a lock must not hide its failure behind a poisoned one.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One `chat.completion.chunk` event.
fn chunk(content: Option<&str>, usage: Option<(u64, u64)>) -> String {
    let choices = match content {
        Some(c) => json!([{ "index": 0, "delta": { "content": c }, "finish_reason": null }]),
        None => json!([]),
    };
    let mut v = json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "test-model", "choices": choices,
    });
    if let Some((i, o)) = usage {
        v["usage"] = json!({ "prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o });
    }
    format!("data: {v}\n\n")
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } });
    (status, axum::Json(body)).into_response()
}

fn sse(events: BoxStream<'static, Result<String, std::io::Error>>) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(events))
        .expect("an SSE response")
}

async fn completions(
    State(script): State<Arc<Script>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    lock(&script.seen).push(Request::of(&headers, &body));
    let next = lock(&script.next).pop_front();
    let Some(act) = next.or_else(|| lock(&script.fallback).clone()) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the stand-in has no act scripted for this request",
        );
    };
    match act {
        Act::Status(code) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "scripted failure",
        ),
        Act::Hang => std::future::pending().await,
        Act::Reply { pieces, usage, gap } => sse(Box::pin(async_stream::stream! {
            yield Ok(chunk(Some(""), None));
            for p in pieces {
                tokio::time::sleep(gap).await;
                yield Ok(chunk(Some(&p), None));
            }
            yield Ok(chunk(None, Some(usage)));
            yield Ok("data: [DONE]\n\n".to_owned());
        })),
        Act::Break(pieces) => sse(Box::pin(async_stream::stream! {
            for p in pieces {
                yield Ok(chunk(Some(&p), None));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            yield Err(std::io::Error::other("connection broken"));
        })),
        Act::Stall(pieces) => sse(Box::pin(async_stream::stream! {
            for p in pieces {
                yield Ok(chunk(Some(&p), None));
            }
            std::future::pending::<()>().await;
        })),
    }
}

async fn embeddings(
    State(script): State<Arc<Script>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let seen = Request::of(&headers, &body);
    let body = seen.body.clone();
    lock(&script.embedding_seen).push(seen);
    let scripted = lock(&script.embedding_statuses).pop_front();
    if scripted == Some(0) {
        return std::future::pending().await;
    }
    if let Some(code) = scripted.filter(|c| *c != 200) {
        return error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "scripted failure",
        );
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or("").to_owned())
            .collect(),
        _ => return error(StatusCode::BAD_REQUEST, "input must be a string or strings"),
    };
    let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
    let dims = match script.dimensions.load(std::sync::atomic::Ordering::Relaxed) {
        0 => EMBEDDING_DIMENSIONS,
        n => n,
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({ "object": "embedding", "index": i, "embedding": embedding_of_size(text, dims) }))
        .collect();
    axum::Json(json!({
        "object": "list",
        "model": body["model"],
        "data": data,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response()
}
