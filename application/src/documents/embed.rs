//! Calls to an OpenAI-compatible embeddings endpoint through async-openai: a batch of texts in,
//! one vector each out, with retries and exponential backoff on 429, 5xx and unreachable
//! servers (async-openai's own retry layer is off, as for chat replies).

use crate::ai::llm::{CallPolicy, Endpoint};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use std::time::Duration;

/// Why a batch could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// The provider refused the request (a 4xx other than 429): retrying will not help.
    #[error("the embeddings provider refused the request: {0}")]
    Refused(String),
    /// The provider was unavailable or busy through every retry.
    #[error("the embeddings provider is unavailable: {0}")]
    Unavailable(String),
}

/// Vectors of one batch, in input order, and the tokens the provider counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Prompt tokens reported.
    pub tokens: u64,
}

fn client(endpoint: &Endpoint, policy: &CallPolicy) -> Result<Client<OpenAIConfig>, EmbedError> {
    let config = OpenAIConfig::new()
        .with_api_base(endpoint.base_url.trim_end_matches('/'))
        .with_api_key(endpoint.api_key.clone().unwrap_or_default());
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(policy.first_token_timeout)
        .build()
        .map_err(|e| EmbedError::Unavailable(format!("HTTP client: {e}")))?;
    Ok(Client::with_config(config).with_http_service(ReqwestService::new(http)))
}

/// Embeds `inputs` with `model` at `endpoint`, retrying transient failures per `policy`.
#[tracing::instrument(skip_all, fields(model = model, inputs = inputs.len()))]
pub async fn embed(
    endpoint: &Endpoint,
    policy: &CallPolicy,
    model: &str,
    inputs: &[String],
) -> Result<Embedded, EmbedError> {
    let client = client(endpoint, policy)?;
    let request = CreateEmbeddingRequest {
        model: model.to_owned(),
        input: EmbeddingInput::StringArray(inputs.to_vec()),
        ..Default::default()
    };
    let mut attempt = 0u32;
    loop {
        let (retry, message) = match client.embeddings().create(request.clone()).await {
            Ok(response) => {
                let mut data = response.data;
                data.sort_by_key(|e| e.index);
                if data.len() != inputs.len() {
                    return Err(EmbedError::Refused(format!(
                        "it sent {} vectors for {} inputs",
                        data.len(),
                        inputs.len()
                    )));
                }
                return Ok(Embedded {
                    vectors: data.into_iter().map(|e| e.embedding).collect(),
                    tokens: u64::from(response.usage.prompt_tokens),
                });
            }
            Err(OpenAIError::ApiError(r)) => {
                let status = r.status_code.as_u16();
                (
                    status == 429 || status >= 500,
                    format!("it answered {status}: {}", r.api_error.message),
                )
            }
            Err(OpenAIError::Reqwest(e)) => (true, format!("it could not be reached: {e}")),
            Err(other) => (false, other.to_string()),
        };
        if !retry {
            return Err(EmbedError::Refused(message));
        }
        if attempt >= policy.retries {
            return Err(EmbedError::Unavailable(message));
        }
        let delay = policy.backoff * 2u32.saturating_pow(attempt);
        tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, %message, "retrying the embeddings call");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Cosine similarity of two vectors (0 when either is zero or they differ in length).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// A stored vector (little-endian f32s) read back.
pub fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_the_angle_and_stored_vectors_read_back() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
        let v = vec![0.5f32, -1.25, 3.0];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(from_bytes(&bytes), v);
    }
}
