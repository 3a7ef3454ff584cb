//! What the scenarios ask of the API, as a client would: sign up, create chats, post messages
//! with an `Idempotency-Key`, read them back, stream replies, read credits.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// One signed-in user of one server.
#[derive(Clone)]
pub struct User {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// A message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub role: String,
    pub content: String,
    pub created_at: String,
}

/// The outcome of one write attempt: the status, or no answer at all (connection refused,
/// reset, timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    NoAnswer,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Signs `email` up on `base`.
pub async fn sign_up(base: &str, email: &str) -> Result<User> {
    let http = client();
    let r = http
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({"email": email, "password": "reliability suite password", "name": "Reliability"}))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    if !status.is_success() {
        bail!("sign-up answered {status}: {body}");
    }
    Ok(User {
        http,
        base: base.to_owned(),
        token: body["token"].as_str().context("a token")?.to_owned(),
    })
}

impl User {
    /// The same user talking to another server (of the same database).
    pub fn on(&self, base: &str) -> User {
        User {
            http: client(),
            base: base.to_owned(),
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` as JSON, failing on any status but 200.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != 200 {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Creates a chat: its id.
    pub async fn create_chat(&self, title: &str) -> Result<String> {
        let r = self
            .http
            .post(self.url("/api/chats"))
            .bearer_auth(&self.token)
            .json(&json!({ "title": title }))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if status != 201 {
            bail!("creating a chat answered {status}: {body}");
        }
        Ok(body["id"].as_str().context("a chat id")?.to_owned())
    }

    /// Posts `content` to `chat` with `key` as its `Idempotency-Key`.
    pub async fn post_message(&self, chat: &str, content: &str, key: Uuid) -> Outcome {
        let sent = self
            .http
            .post(self.url(&format!("/api/chats/{chat}/messages")))
            .bearer_auth(&self.token)
            .header("idempotency-key", key.to_string())
            .timeout(Duration::from_secs(30))
            .json(&json!({ "content": content, "type": "text" }))
            .send()
            .await;
        match sent {
            // The body is read so that a reset mid-body counts as no answer.
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Ok(_) => Outcome::Status(status),
                    Err(_) => Outcome::NoAnswer,
                }
            }
            Err(_) => Outcome::NoAnswer,
        }
    }

    /// Every message of `chat`, oldest first, page by page.
    pub async fn messages(&self, chat: &str) -> Result<Vec<Message>> {
        let mut all = Vec::new();
        for page in 1.. {
            let body = self
                .get(&format!("/api/chats/{chat}/messages?page={page}&limit=100"))
                .await?;
            let items = body["messages"].as_array().context("messages")?;
            for m in items {
                all.push(Message {
                    id: m["id"].as_str().unwrap_or_default().to_owned(),
                    role: m["role"].as_str().unwrap_or_default().to_owned(),
                    content: m["content"].as_str().unwrap_or_default().to_owned(),
                    created_at: m["createdAt"].as_str().unwrap_or_default().to_owned(),
                });
            }
            let total = body["total"].as_u64().unwrap_or(0) as usize;
            if items.is_empty() || all.len() >= total {
                break;
            }
        }
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(all)
    }

    /// The caller's credit balance (`GET /api/me`).
    pub async fn credits(&self) -> Result<i64> {
        self.get("/api/me").await?["user"]["credits"]
            .as_i64()
            .context("credits in /api/me")
    }

    /// Every credit transaction of the caller, newest first.
    pub async fn credit_history(&self) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        loop {
            let body = self
                .get(&format!(
                    "/api/billing/credit-history?limit=100&offset={}",
                    all.len()
                ))
                .await?;
            let page = body["transactions"].as_array().context("transactions")?;
            all.extend(page.iter().cloned());
            if page.is_empty() || all.len() as u64 >= body["total"].as_u64().unwrap_or(0) {
                return Ok(all);
            }
        }
    }

    /// `POST /api/chat` with one user message, reading the streamed reply to its end (or
    /// until `within` passes): the status, the `x-chat-id`, the text, and whether it ended.
    pub async fn chat(&self, content: &str, within: Duration) -> Result<Streamed> {
        let started = std::time::Instant::now();
        let mut r = self
            .http
            .post(self.url("/api/chat"))
            .bearer_auth(&self.token)
            .timeout(within)
            .json(&json!({"messages": [{"role": "user", "content": content}]}))
            .send()
            .await?;
        let status = r.status().as_u16();
        let chat_id = r
            .headers()
            .get("x-chat-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let ended = loop {
            match r.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        Ok(Streamed {
            status,
            chat_id,
            text: String::from_utf8_lossy(&body).into_owned(),
            ended,
            took: started.elapsed(),
        })
    }
}

/// A streamed reply as the client saw it.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub chat_id: Option<String>,
    pub text: String,
    /// Whether the body ended (rather than the client giving up).
    pub ended: bool,
    pub took: Duration,
}
