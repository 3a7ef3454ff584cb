//! LLM providers and users' provider keys (seed 002): `POST /chat/llm-providers` (admins),
//! `GET /chat/llm-providers/{id}`, `POST /chat/user-llm-configs`,
//! `GET /chat/user-llm-configs/{user_id}/{provider_id}`.
//!
//! Keys are encrypted with AES-256-GCM before they are recorded and are never returned: only a
//! masked hint. A provider endpoint must be https, with no credentials in it, and must not point
//! at a loopback, private, link-local or otherwise internal address (server-side request
//! forgery), unless its host is on the operator's allow-list.

use crate::auth::{AuthUser, metadata, now};
use crate::conversations::may_act_for;
use crate::extract::ApiPath;
use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use confab_domain::provider::{Provider, RegisterProvider, SetUserKey, UserLlmConfig};
use confab_projections::providers::{self, ProviderRow, UserConfigRow};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use uuid::Uuid;

/// Encrypts and decrypts provider keys with the configured 256-bit key.
#[derive(Clone)]
pub struct KeyCipher(Aes256Gcm);

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher(..)")
    }
}

impl KeyCipher {
    /// A cipher over a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        KeyCipher(Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)))
    }

    /// Encrypts `plain`: base64 of a fresh 96-bit nonce followed by the ciphertext and tag.
    pub fn encrypt(&self, plain: &str) -> Result<String, ApiError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(&nonce, plain.as_bytes())
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("key encryption failed")))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypts what [`KeyCipher::encrypt`] produced.
    pub fn decrypt(&self, sealed: &str) -> Result<String, ApiError> {
        let fail = || ApiError::Internal(anyhow::anyhow!("stored key cannot be decrypted"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| fail())?;
        if bytes.len() < 12 {
            return Err(fail());
        }
        let (nonce, ct) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail())?;
        let plain = self
            .0
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// A masked hint of a key: its first three and last four characters, e.g. `sk-...a1b2`.
pub fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "...".into();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)))
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8))
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

/// Validates a provider endpoint; returns it normalised, or why it is refused.
pub async fn check_endpoint(raw: &str, allowed_hosts: &[String]) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|_| "must be an absolute URL".to_owned())?;
    let host = url
        .host_str()
        .ok_or("must name a host")?
        .to_ascii_lowercase();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let allowed = allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host));
    match url.scheme() {
        "https" => {}
        "http" if allowed => {}
        _ => return Err("must be an https URL".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if allowed {
        return Ok(url.to_string());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return if is_public(ip) {
            Ok(url.to_string())
        } else {
            Err("must not point at a private, loopback or link-local address".into())
        };
    }
    let internal_suffixes = [".localhost", ".local", ".internal", ".home.arpa", ".lan"];
    if host == "localhost" || internal_suffixes.iter().any(|s| host.ends_with(s)) {
        return Err("must not point at an internal host".into());
    }
    // A name that resolves to an internal address now is refused. One that does not resolve is
    // accepted: the address is checked again when a call is made (DNS can change).
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    if let Ok(Ok(addrs)) = lookup {
        for a in addrs {
            if !is_public(a.ip()) {
                return Err("resolves to a private, loopback or link-local address".into());
            }
        }
    }
    Ok(url.to_string())
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}

fn provider_json(p: &ProviderRow) -> Value {
    json!({ "id": p.id, "name": p.name, "api_endpoint": p.api_endpoint, "created_at": p.created_at })
}

fn config_json(c: &UserConfigRow) -> Value {
    json!({
        "user_id": c.user_id, "provider_id": c.provider_id, "api_key_hint": c.key_hint,
        "created_at": c.created_at, "updated_at": c.updated_at,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewProvider {
    name: String,
    api_endpoint: String,
}

/// `POST /chat/llm-providers` `{name, api_endpoint}` (admins only) → 201 provider.
#[utoipa::path(post, path = "/chat/llm-providers", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewProvider, responses((status = 201, description = "{id, name, api_endpoint, created_at}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Admins only", body = ErrorBody)))]
pub(crate) async fn create_provider(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewProvider>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if auth.user.role != "admin" {
        return Err(ApiError::Forbidden("only admins register providers".into()));
    }
    let mut problems = Map::new();
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        problems.insert("name".into(), "must be 1 to 100 characters".into());
    }
    let endpoint = match check_endpoint(&body.api_endpoint, &state.provider_hosts_allowlist).await {
        Ok(e) => Some(e),
        Err(reason) => {
            problems.insert("api_endpoint".into(), reason.into());
            None
        }
    };
    let Some(api_endpoint) = endpoint.filter(|_| problems.is_empty()) else {
        return Err(ApiError::invalid(problems));
    };
    let provider_id = Uuid::now_v7();
    let command = RegisterProvider {
        provider_id,
        name,
        api_endpoint,
        at: now(),
    };
    let done = state
        .commands
        .execute::<Provider>(
            &provider_id,
            command,
            metadata(&headers, Some(auth.user.id)),
        )
        .await
        .map_err(|e| internal(anyhow::anyhow!("{e}")))?;
    state
        .visible(providers::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let p = providers::get_provider(&state.db, provider_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(anyhow::anyhow!("registered provider not in read model")))?;
    Ok((StatusCode::CREATED, Json(provider_json(&p))))
}

/// `GET /chat/llm-providers/{id}`.
#[utoipa::path(get, path = "/chat/llm-providers/{id}", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), params(("id" = Uuid, Path)), responses((status = 200, description = "The provider"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn get_provider(
    State(state): State<AppState>,
    _auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let p = providers::get_provider(&state.db, id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("provider not found".into()))?;
    Ok(Json(provider_json(&p)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewUserConfig {
    user_id: Uuid,
    provider_id: Uuid,
    api_key: String,
}

/// `POST /chat/user-llm-configs` `{user_id, provider_id, api_key}` → 201 config with a masked
/// hint; posting again replaces the key.
#[utoipa::path(post, path = "/chat/user-llm-configs", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), request_body = NewUserConfig, responses((status = 201, description = "{user_id, provider_id, api_key_hint, created_at, updated_at}; the key itself is never returned"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "user_id is not the caller's", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn set_user_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewUserConfig>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    may_act_for(&auth, body.user_id)?;
    let key = body.api_key.trim();
    if key.is_empty()
        || key.chars().count() > 500
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::field(
            "api_key",
            "must be 1 to 500 characters without spaces",
        ));
    }
    providers::get_provider(&state.db, body.provider_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("provider not found".into()))?;
    let command = SetUserKey {
        user_id: body.user_id,
        provider_id: body.provider_id,
        encrypted_key: state.key_cipher.encrypt(key)?,
        key_hint: key_hint(key),
        at: now(),
    };
    let id = UserLlmConfig::id_for(body.user_id, body.provider_id);
    let done = state
        .commands
        .execute::<UserLlmConfig>(&id, command, metadata(&headers, Some(auth.user.id)))
        .await
        .map_err(|e| internal(anyhow::anyhow!("{e}")))?;
    state
        .visible(providers::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let c = providers::get_user_config(&state.db, body.user_id, body.provider_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(anyhow::anyhow!("config not in read model")))?;
    Ok((StatusCode::CREATED, Json(config_json(&c))))
}

/// `GET /chat/user-llm-configs/{user_id}/{provider_id}`.
#[utoipa::path(get, path = "/chat/user-llm-configs/{user_id}/{provider_id}", tag = "seed-002", security(("bearer" = []), ("cookie" = [])), params(("user_id" = Uuid, Path), ("provider_id" = Uuid, Path)), responses((status = 200, description = "The config, key hint only"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not the caller's", body = ErrorBody), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn get_user_config(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((user_id, provider_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<Value>, ApiError> {
    may_act_for(&auth, user_id)?;
    let c = providers::get_user_config(&state.db, user_id, provider_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound("no key for this provider".into()))?;
    Ok(Json(config_json(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_must_be_public_https() {
        let none: Vec<String> = vec![];
        assert!(check_endpoint("https://8.8.8.8/v1", &none).await.is_ok());
        for bad in [
            "http://8.8.8.8/v1",
            "ftp://example.com",
            "https://127.0.0.1/v1",
            "https://10.1.2.3",
            "https://192.168.0.1",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://localhost:8443",
            "https://db.internal",
            "https://user:pw@example.com",
            "not a url",
        ] {
            assert!(check_endpoint(bad, &none).await.is_err(), "{bad}");
        }
        let allowed = vec!["127.0.0.1".to_owned()];
        assert!(
            check_endpoint("http://127.0.0.1:11434/v1", &allowed)
                .await
                .is_ok()
        );
    }

    #[test]
    fn keys_round_trip_encrypted_and_hints_hide_them() {
        let c = KeyCipher::new(&[7u8; 32]);
        let sealed = c.encrypt("sk-test-1234567890abcd").unwrap();
        assert!(!sealed.contains("1234567890"));
        assert_ne!(
            sealed,
            c.encrypt("sk-test-1234567890abcd").unwrap(),
            "fresh nonce each time"
        );
        assert_eq!(c.decrypt(&sealed).unwrap(), "sk-test-1234567890abcd");
        assert!(KeyCipher::new(&[8u8; 32]).decrypt(&sealed).is_err());
        assert_eq!(key_hint("sk-test-1234567890abcd"), "sk-...abcd");
        assert_eq!(key_hint("short"), "...");
    }
}
