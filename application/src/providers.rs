//! LLM providers and users' own provider keys (seed 002): registering a provider (admins),
//! reading one, setting and reading a user's key.
//!
//! Keys are encrypted with AES-256-GCM before they are recorded and are never returned: only a
//! masked hint. A provider endpoint must be https, with no credentials in it, and must not point
//! at a loopback, private, link-local or otherwise internal address (server-side request
//! forgery), unless its host is on the operator's allow-list.

use crate::{Actor, AppError, Problems, Services, now};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use confab_domain::provider::{Provider, RegisterProvider, SetUserKey, UserLlmConfig};
use confab_projections::providers::{self, ProviderRow, UserConfigRow};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use uuid::Uuid;

/// A key could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// Encryption failed.
    #[error("key encryption failed")]
    Encrypt,
    /// The stored key is not one this cipher sealed (another key, or damaged).
    #[error("a stored key cannot be decrypted")]
    Decrypt,
}

impl From<CipherError> for AppError {
    fn from(e: CipherError) -> Self {
        AppError::internal("sealing or opening a provider key", e)
    }
}

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
    pub fn encrypt(&self, plain: &str) -> Result<String, CipherError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(&nonce, plain.as_bytes())
            .map_err(|_| CipherError::Encrypt)?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypts what [`KeyCipher::encrypt`] produced.
    pub fn decrypt(&self, sealed: &str) -> Result<String, CipherError> {
        let fail = || CipherError::Decrypt;
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

/// Longest provider name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest provider key, in characters.
pub const MAX_KEY_CHARS: usize = 500;

/// Registers a provider named `name` at `api_endpoint` (admins only).
pub async fn register_provider(
    svc: &Services,
    actor: &Actor,
    name: &str,
    api_endpoint: &str,
) -> Result<ProviderRow, AppError> {
    if !actor.is_admin() {
        return Err(AppError::Forbidden("only admins register providers".into()));
    }
    let mut problems = Problems::new();
    let name = name.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        problems.add("name", "must be 1 to 100 characters");
    }
    let endpoint = match check_endpoint(api_endpoint, &svc.provider_hosts_allowlist).await {
        Ok(e) => Some(e),
        Err(reason) => {
            problems.add("api_endpoint", reason);
            None
        }
    };
    let Some(api_endpoint) = endpoint.filter(|_| problems.is_empty()) else {
        return Err(problems.into());
    };
    let provider_id = Uuid::now_v7();
    let command = RegisterProvider {
        provider_id,
        name,
        api_endpoint,
        at: now(),
    };
    let done = svc
        .commands
        .execute::<Provider>(&provider_id, command, actor.metadata())
        .await?;
    svc.visible(providers::NAME, done.appended.map(|a| a.last_position))
        .await?;
    providers::get_provider(&svc.db, provider_id)
        .await?
        .ok_or(AppError::bug(
            "a registered provider is missing from the read model",
        ))
}

/// Provider `id` (every signed-in user may read providers).
pub async fn get_provider(svc: &Services, id: Uuid) -> Result<ProviderRow, AppError> {
    providers::get_provider(&svc.db, id)
        .await?
        .ok_or(AppError::NotFound("provider"))
}

/// Sets (or replaces) `user_id`'s key for provider `provider_id`: encrypted, with a hint.
pub async fn set_user_key(
    svc: &Services,
    actor: &Actor,
    user_id: Uuid,
    provider_id: Uuid,
    api_key: &str,
) -> Result<UserConfigRow, AppError> {
    actor.may_act_for(user_id)?;
    if api_key.is_empty()
        || api_key.chars().count() > MAX_KEY_CHARS
        || api_key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AppError::invalid(
            "api_key",
            "must be 1 to 500 characters without spaces",
        ));
    }
    get_provider(svc, provider_id).await?;
    let command = SetUserKey {
        user_id,
        provider_id,
        encrypted_key: svc.cipher.encrypt(api_key)?,
        key_hint: key_hint(api_key),
        at: now(),
    };
    let id = UserLlmConfig::id_for(user_id, provider_id);
    let done = svc
        .commands
        .execute::<UserLlmConfig>(&id, command, actor.metadata())
        .await?;
    svc.visible(providers::NAME, done.appended.map(|a| a.last_position))
        .await?;
    providers::get_user_config(&svc.db, user_id, provider_id)
        .await?
        .ok_or(AppError::bug("a set key is missing from the read model"))
}

/// `user_id`'s configuration for provider `provider_id` (the key stays sealed).
pub async fn get_user_key(
    svc: &Services,
    actor: &Actor,
    user_id: Uuid,
    provider_id: Uuid,
) -> Result<UserConfigRow, AppError> {
    actor.may_act_for(user_id)?;
    providers::get_user_config(&svc.db, user_id, provider_id)
        .await?
        .ok_or(AppError::NotFound("provider key"))
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
