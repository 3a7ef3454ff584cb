//! Calls to LLM providers: any OpenAI-compatible chat-completions endpoint (OpenAI, Anthropic's
//! OpenAI-compatible API, Ollama, vLLM, llama.cpp server), streamed through async-openai.
//!
//! Failures before the first token (a timeout, 429, 5xx, a refused connection) are retried with
//! exponential backoff; async-openai's own retry layer is off so that retries happen once, here,
//! under the first-token deadline. After the first token there is no retry: the reply so far is
//! kept and the failure reported.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A configured provider.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProviderSpec {
    /// The name models refer to (`openai`, `anthropic`, `ollama`, ...).
    pub name: String,
    /// Base URL of its OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    /// Its API key; none for a local server that needs none.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Time limits and retries of provider calls.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// Longest wait for the first token of one attempt.
    pub first_token_timeout: Duration,
    /// Longest silence between two chunks once streaming.
    pub idle_timeout: Duration,
    /// Retries after a failed first attempt (before any token).
    pub retries: u32,
    /// Delay before the first retry; doubled each time.
    pub backoff: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Where one call goes.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL, up to and including `/v1`.
    pub base_url: String,
    /// The key to send.
    pub api_key: Option<String>,
    /// For an endpoint a user or admin registered (not the operator's configuration): every
    /// connection is checked to reach a public address, allowlisted hosts excepted.
    pub guard: Option<crate::providers::GuardedResolver>,
}

/// One message of the conversation sent to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// user, assistant or system.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Tokens the provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
}

/// Why a call did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nothing was produced (after the retries, or a failure not worth retrying).
    #[error("{0}")]
    BeforeFirstToken(String),
    /// The stream broke after some text; that text was delivered.
    #[error("{0}")]
    AfterFirstToken(String),
}

/// Whether a failure before the first token is worth another attempt, and how to describe it.
fn classify(e: &OpenAIError) -> (bool, String) {
    match e {
        OpenAIError::ApiError(r) => {
            let status = r.status_code.as_u16();
            let retry = status == 429 || status >= 500;
            (
                retry,
                format!("the provider answered {status}: {}", r.api_error.message),
            )
        }
        OpenAIError::Reqwest(e) if e.is_timeout() => {
            (true, "the provider sent nothing in time".into())
        }
        OpenAIError::Reqwest(e) => (true, format!("the provider could not be reached: {e}")),
        OpenAIError::StreamError(e) => (true, format!("the provider's stream failed: {e}")),
        OpenAIError::Boxed(e) => (true, format!("the provider call failed: {e}")),
        other => (false, format!("the provider call failed: {other}")),
    }
}

/// The provider client of one endpoint, with async-openai's own retries off.
fn client(endpoint: &Endpoint, policy: &CallPolicy) -> Result<Client<OpenAIConfig>, CallError> {
    let config = OpenAIConfig::new()
        .with_api_base(endpoint.base_url.trim_end_matches('/'))
        .with_api_key(endpoint.api_key.clone().unwrap_or_default());
    // No redirects: a registered endpoint could otherwise bounce the call (with the user's
    // key) to an internal address.
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A safety net: the idle limit between chunks is enforced (and explained) above it.
        .read_timeout(policy.idle_timeout + Duration::from_secs(1))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(guard) = &endpoint.guard {
        guard
            .check_url(&endpoint.base_url)
            .map_err(CallError::BeforeFirstToken)?;
        http = http.dns_resolver(std::sync::Arc::new(guard.clone()));
    }
    let http = http
        .build()
        .map_err(|e| CallError::BeforeFirstToken(format!("HTTP client: {e}")))?;
    Ok(Client::with_config(config).with_http_service(ReqwestService::new(http)))
}

fn request_messages(turns: &[Turn]) -> Vec<ChatCompletionRequestMessage> {
    turns
        .iter()
        .map(|t| match t.role.as_str() {
            "system" => ChatCompletionRequestSystemMessage::from(t.content.as_str()).into(),
            "assistant" => ChatCompletionRequestAssistantMessage::from(t.content.as_str()).into(),
            _ => ChatCompletionRequestUserMessage::from(t.content.as_str()).into(),
        })
        .collect()
}

/// Streams a reply of `model` to `turns` from `endpoint`, handing each piece of text to
/// `on_text` as it arrives; returns the provider's token counts, if it reported them.
pub async fn stream_reply(
    endpoint: &Endpoint,
    policy: &CallPolicy,
    model: &str,
    max_output_tokens: u32,
    turns: &[Turn],
    mut on_text: impl FnMut(&str) + Send,
) -> Result<Option<Usage>, CallError> {
    let client = client(endpoint, policy)?;
    #[allow(deprecated)] // `max_tokens` is what every OpenAI-compatible server understands.
    let request = CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages(request_messages(turns))
        .max_tokens(max_output_tokens)
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        })
        .build()
        .map_err(|e| CallError::BeforeFirstToken(e.to_string()))?;
    let mut attempt = 0;
    loop {
        // One attempt: open the stream and wait for its first text, within the deadline.
        let opened = tokio::time::timeout(policy.first_token_timeout, async {
            let mut stream = client.chat().create_stream(request.clone()).await?;
            let mut usage = None;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if let Some(u) = &chunk.usage {
                    usage = Some(Usage {
                        input: u64::from(u.prompt_tokens),
                        output: u64::from(u.completion_tokens),
                    });
                }
                let text: String = chunk
                    .choices
                    .iter()
                    .filter_map(|c| c.delta.content.as_deref())
                    .collect();
                if !text.is_empty() {
                    return Ok((Some(text), Some(stream), usage));
                }
            }
            Ok::<_, OpenAIError>((None, None, usage))
        })
        .await;
        let failure = match opened {
            Ok(Ok((first, stream, mut usage))) => {
                let Some(mut stream) = stream else {
                    // The stream ended without any text: an empty reply.
                    return Ok(usage);
                };
                if let Some(first) = first {
                    on_text(&first);
                }
                loop {
                    let next = tokio::time::timeout(policy.idle_timeout, stream.next()).await;
                    let Ok(next) = next else {
                        return Err(CallError::AfterFirstToken(format!(
                            "the provider sent nothing for {} ms",
                            policy.idle_timeout.as_millis()
                        )));
                    };
                    let Some(chunk) = next else { break };
                    let chunk = chunk.map_err(|e| {
                        CallError::AfterFirstToken(format!("the provider's stream broke: {e}"))
                    })?;
                    if let Some(u) = &chunk.usage {
                        usage = Some(Usage {
                            input: u64::from(u.prompt_tokens),
                            output: u64::from(u.completion_tokens),
                        });
                    }
                    for c in &chunk.choices {
                        if let Some(t) = c.delta.content.as_deref() {
                            on_text(t);
                        }
                    }
                }
                return Ok(usage);
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => (
                true,
                format!(
                    "the provider sent nothing within {} ms",
                    policy.first_token_timeout.as_millis()
                ),
            ),
        };
        let (retry, message) = failure;
        if !retry || attempt >= policy.retries {
            return Err(CallError::BeforeFirstToken(message));
        }
        let delay = policy.backoff * 2u32.saturating_pow(attempt);
        tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, %message, "retrying the provider call");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}
