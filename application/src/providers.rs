//! LLM providers and users' own provider keys (seed 002): registering a provider (admins),
//! reading one, setting and reading a user's key.
//!
//! Keys are encrypted with AES-256-GCM before they are recorded, bound to their user and
//! provider and tagged with the id of the master key ([`KeyCipher`]), and are never returned:
//! only a masked hint. A provider endpoint must be https, with no credentials in it, and must not point
//! at a loopback, private, link-local or otherwise internal address (server-side request
//! forgery), unless its host is on the operator's allow-list.

use crate::{Actor, AppError, Problems, Services, now};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use confab_domain::provider::{Provider, RegisterProvider, SetUserKey, UserLlmConfig};
use confab_projections::providers::{self, ProviderRow, UserConfigRow};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use uuid::Uuid;

/// A key could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// Encryption failed.
    #[error("key encryption failed")]
    Encrypt,
    /// The stored key was sealed under a master key this process does not hold (the
    /// configured `CONFAB_ENCRYPTION_KEY` changed, or another instance uses another one).
    #[error(
        "a stored key was sealed under encryption key id {kid}, which is not configured \
         (the current key id is {current})"
    )]
    UnknownKey {
        /// The key id the ciphertext names.
        kid: String,
        /// The key id of the configured key.
        current: String,
    },
    /// The stored key does not open: damaged, or sealed for another user or provider.
    #[error("a stored key cannot be decrypted (damaged, or sealed for another user or provider)")]
    Decrypt,
}

impl From<CipherError> for AppError {
    fn from(e: CipherError) -> Self {
        AppError::internal("sealing or opening a provider key", e)
    }
}

/// What a sealed provider key is bound to, as associated data: a ciphertext copied to another
/// user's or another provider's configuration does not open there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyScope {
    /// The user who owns the key.
    pub user: Uuid,
    /// The registered provider it is for (by id: provider names need not be unique).
    pub provider: Uuid,
}

impl KeyScope {
    /// The canonical associated data: a fixed label and the two ids' 16 bytes each, so no two
    /// scopes share an encoding.
    fn aad(&self) -> [u8; AAD_LABEL.len() + 32] {
        let mut out = [0u8; AAD_LABEL.len() + 32];
        out[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
        out[AAD_LABEL.len()..AAD_LABEL.len() + 16].copy_from_slice(self.user.as_bytes());
        out[AAD_LABEL.len() + 16..].copy_from_slice(self.provider.as_bytes());
        out
    }
}

const AAD_LABEL: &[u8] = b"confab/user-provider-key/v2\0";
const V2_PREFIX: &str = "v2:";

/// The id of a master key (shared with the event store's payload encryption, so one master key
/// has one id everywhere): it names the key in ciphertexts and logs without revealing it.
pub fn key_id(key: &[u8; 32]) -> String {
    confab_eventstore::sealed::master_key_id(key)
}

/// Encrypts and decrypts users' provider keys with AES-256-GCM under a small keyring of master
/// keys by id, one of them current (the one new keys are sealed with).
///
/// A sealed key reads `v2:<kid>:<base64(nonce || ciphertext+tag)>`, bound to its
/// [`KeyScope`] as associated data. Keys sealed before key ids existed (plain base64, no
/// associated data) still open with the current key.
#[derive(Clone)]
pub struct KeyCipher {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCipher(current: {})", self.current)
    }
}

impl KeyCipher {
    /// A keyring holding one 32-byte master key, which is current.
    pub fn new(key: &[u8; 32]) -> Self {
        let current = key_id(key);
        let keys = HashMap::from([(
            current.clone(),
            Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
        )]);
        KeyCipher { current, keys }
    }

    /// The keyring with `previous` too: keys sealed under it still open (after a master key
    /// rotation, until `confab keys rotate` has resealed them under the current one).
    pub fn with_previous(mut self, previous: &[u8; 32]) -> Self {
        self.keys
            .entry(key_id(previous))
            .or_insert_with(|| Aes256Gcm::new(&Key::<Aes256Gcm>::from(*previous)));
        self
    }

    /// The id of the key new ciphertexts are sealed with.
    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    /// Whether `sealed` is sealed under the current key in the current format.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .strip_prefix(V2_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(kid, _)| kid == self.current)
    }

    fn current_cipher(&self) -> &Aes256Gcm {
        // `new` puts the current key in the map, and nothing removes it.
        &self.keys[&self.current]
    }

    /// Seals `plain` for `scope` under the current key, with a fresh 96-bit nonce.
    pub fn encrypt(&self, plain: &str, scope: KeyScope) -> Result<String, CipherError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = scope.aad();
        let sealed = self
            .current_cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Encrypt)?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(format!(
            "{V2_PREFIX}{}:{}",
            self.current,
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens what [`KeyCipher::encrypt`] sealed for `scope`, or a key sealed in the format
    /// before key ids (base64 without a prefix; the base64 alphabet has no `:`).
    pub fn decrypt(&self, sealed: &str, scope: KeyScope) -> Result<String, CipherError> {
        let Some(rest) = sealed.strip_prefix(V2_PREFIX) else {
            // The first format: no key id, no associated data, sealed with the only key there
            // was: today's current key, or a previous one if the master key has rotated since.
            return std::iter::once(self.current_cipher())
                .chain(
                    self.keys
                        .iter()
                        .filter(|(id, _)| **id != self.current)
                        .map(|(_, c)| c),
                )
                .find_map(|c| open(c, sealed, b"").ok())
                .ok_or(CipherError::Decrypt);
        };
        let (kid, body) = rest.split_once(':').ok_or(CipherError::Decrypt)?;
        let cipher = self.keys.get(kid).ok_or_else(|| CipherError::UnknownKey {
            kid: kid.to_owned(),
            current: self.current.clone(),
        })?;
        open(cipher, body, &scope.aad())
    }
}

fn open(cipher: &Aes256Gcm, body: &str, aad: &[u8]) -> Result<String, CipherError> {
    let fail = || CipherError::Decrypt;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| fail())?;
    if bytes.len() < 12 {
        return Err(fail());
    }
    let (nonce, ct) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail())?;
    let plain = cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .map_err(|_| fail())?;
    String::from_utf8(plain).map_err(|_| fail())
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
        || ip.is_link_local() // 169.254.0.0/16, with the cloud metadata service
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || o[0] >= 240 // reserved
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared (CGNAT), Alibaba's metadata
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
        || o == [168, 63, 129, 16]) // Azure's host services
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || s[..6] == [0; 6] // IPv4-compatible (deprecated), ::/96
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64, 64:ff9b::/96 and 64:ff9b:1::/48
        || s[0] == 0x2002 // 6to4, 2002::/16
        || (s[0] == 0x2001 && s[1] == 0) // Teredo, 2001::/32
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local, fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
}

/// Resolves provider hosts for the HTTP client and refuses, at connect time, a name that
/// resolves to an address that is not public (unless the host is allowlisted): the check at
/// registration alone would let a name re-pointed later (DNS rebinding) reach the inside.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allowed_hosts: Vec<String>,
}

impl GuardedResolver {
    /// A resolver that lets `allowed_hosts` resolve to anything.
    pub fn new(allowed_hosts: Vec<String>) -> Self {
        GuardedResolver { allowed_hosts }
    }

    fn allows(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether a URL's host may be called: a literal address must be public (or allowlisted);
    /// a name is checked when it is resolved.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let url = url::Url::parse(url).map_err(|_| "not an absolute URL".to_owned())?;
        let host = url.host_str().ok_or("no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) if !is_public(ip) && !self.allows(bare) => Err(format!(
                "the provider endpoint {bare} is not a public address"
            )),
            _ => Ok(()),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allowed = self.allows(&host);
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(format!(
                    "{host} resolves to {}, which is not a public address",
                    bad.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
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
    // A name must resolve, and only to public addresses. The address is checked again at each
    // connection ([`GuardedResolver`]): DNS can change.
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let addrs: Vec<_> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => return Err("does not resolve".into()),
    };
    if addrs.is_empty() {
        return Err("does not resolve".into());
    }
    if addrs.iter().any(|a| !is_public(a.ip())) {
        return Err("resolves to a private, loopback or link-local address".into());
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
    let provider_id = actor.new_id();
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
        encrypted_key: svc.cipher.encrypt(
            api_key,
            KeyScope {
                user: user_id,
                provider: provider_id,
            },
        )?,
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

/// What [`reseal_user_keys`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// Keys resealed under the current master key (one `UserKeySet` event each).
    pub resealed: usize,
    /// Keys already under it.
    pub current: usize,
    /// (user, provider) of keys that open under no key of the ring: left as they are.
    pub failed: Vec<(Uuid, Uuid)>,
}

/// Reseals every user's provider key that is not under the current master key (sealed under
/// a previous one, or in the format before key ids) with the current one, each recorded as a
/// `UserKeySet` event with the same hint, so the log and the read model both hold the new
/// ciphertext and the previous master key can be retired. `progress` is told each page's
/// count. The read model of providers must be current.
pub async fn reseal_user_keys(
    commands: &std::sync::Arc<confab_eventstore::aggregate::CommandExecutor>,
    db: &confab_projections::ReadDb,
    cipher: &KeyCipher,
    mut progress: impl FnMut(usize),
) -> Result<Resealed, AppError> {
    let mut out = Resealed::default();
    let mut after = None;
    loop {
        let page = providers::user_configs_after(db, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.user_id, last.provider_id));
        for row in &page {
            if cipher.is_current(&row.encrypted_key) {
                out.current += 1;
                continue;
            }
            let scope = KeyScope {
                user: row.user_id,
                provider: row.provider_id,
            };
            let Ok(plain) = cipher.decrypt(&row.encrypted_key, scope) else {
                out.failed.push((row.user_id, row.provider_id));
                continue;
            };
            let command = SetUserKey {
                user_id: row.user_id,
                provider_id: row.provider_id,
                encrypted_key: cipher.encrypt(&plain, scope)?,
                key_hint: row.key_hint.clone(),
                at: now(),
            };
            let id = UserLlmConfig::id_for(row.user_id, row.provider_id);
            commands
                .execute::<UserLlmConfig>(&id, command, crate::metadata(None, None))
                .await?;
            out.resealed += 1;
        }
        progress(page.len());
    }
    Ok(out)
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
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:a9fe:a9fe::1]/",
            "https://[fec0::1]/",
            "https://[::10.0.0.1]/",
            "https://[2001:0:4136:e378::1]/",
            "https://100.100.100.200/",
            "https://168.63.129.16/",
            "https://240.0.0.1/",
            "https://no-such-host.invalid/v1",
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

    #[tokio::test]
    async fn the_resolver_refuses_internal_addresses_at_connect_time() {
        use reqwest::dns::Resolve;
        let guard = GuardedResolver::new(vec!["127.0.0.1".to_owned()]);
        let name = |h: &str| h.parse::<reqwest::dns::Name>().unwrap();
        // `localhost` resolves to loopback: refused when the call is made.
        let err = match guard.resolve(name("localhost")).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("not a public address"), "{err}");
        // An allowlisted host resolves to what it is.
        let ok = GuardedResolver::new(vec!["localhost".to_owned()]);
        assert!(ok.resolve(name("localhost")).await.is_ok());
        // Literal addresses never reach a resolver: they are checked on the URL.
        assert!(guard.check_url("https://10.0.0.1/v1").is_err());
        assert!(guard.check_url("https://[64:ff9b::7f00:1]/v1").is_err());
        assert!(guard.check_url("http://127.0.0.1:9/v1").is_ok());
        assert!(guard.check_url("https://8.8.8.8/v1").is_ok());
    }

    fn scope(user: u128, provider: u128) -> KeyScope {
        KeyScope {
            user: Uuid::from_u128(user),
            provider: Uuid::from_u128(provider),
        }
    }

    #[test]
    fn keys_round_trip_encrypted_and_hints_hide_them() {
        let c = KeyCipher::new(&[7u8; 32]);
        let sealed = c.encrypt("sk-test-1234567890abcd", scope(1, 2)).unwrap();
        assert!(!sealed.contains("1234567890"));
        assert_ne!(
            sealed,
            c.encrypt("sk-test-1234567890abcd", scope(1, 2)).unwrap(),
            "fresh nonce each time"
        );
        assert_eq!(
            c.decrypt(&sealed, scope(1, 2)).unwrap(),
            "sk-test-1234567890abcd"
        );
        assert_eq!(key_hint("sk-test-1234567890abcd"), "sk-...abcd");
        assert_eq!(key_hint("short"), "...");
    }

    #[test]
    fn a_sealed_key_names_its_master_key_id() {
        let c = KeyCipher::new(&[7u8; 32]);
        // SHA-256("confab/key-id/v1\0" || key), first 4 bytes: computed independently.
        assert_eq!(c.current_key_id(), "af448592");
        assert_eq!(key_id(&[7u8; 32]), "af448592");
        assert_ne!(key_id(&[8u8; 32]), "af448592");
        let sealed = c.encrypt("sk-test-1234567890abcd", scope(1, 2)).unwrap();
        assert!(sealed.starts_with("v2:af448592:"), "{sealed}");
        assert!(!format!("{c:?}").contains("[7"), "the key never prints");
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_user_and_provider() {
        let c = KeyCipher::new(&[7u8; 32]);
        let sealed = c.encrypt("sk-test-1234567890abcd", scope(1, 2)).unwrap();
        assert_eq!(c.decrypt(&sealed, scope(3, 2)), Err(CipherError::Decrypt));
        assert_eq!(c.decrypt(&sealed, scope(1, 3)), Err(CipherError::Decrypt));
        // The ids are not interchangeable: (user, provider) is ordered.
        assert_eq!(c.decrypt(&sealed, scope(2, 1)), Err(CipherError::Decrypt));
        // A key id forged onto the ciphertext does not help, nor does damage.
        let body = sealed.rsplit_once(':').unwrap().1;
        assert_eq!(c.decrypt(body, scope(1, 2)), Err(CipherError::Decrypt));
        assert_eq!(
            c.decrypt("v2:af448592:not base64!", scope(1, 2)),
            Err(CipherError::Decrypt)
        );
        assert_eq!(
            c.decrypt("v2:af448592", scope(1, 2)),
            Err(CipherError::Decrypt)
        );
    }

    #[test]
    fn after_a_rotation_keys_sealed_under_the_previous_master_key_still_open() {
        let old = KeyCipher::new(&[8u8; 32]);
        let sealed = old.encrypt("sk-test-1234567890abcd", scope(1, 2)).unwrap();
        let legacy = {
            // The format before key ids: nonce || ciphertext, base64, no associated data.
            let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
            let mut out = nonce.to_vec();
            out.extend(
                Aes256Gcm::new(&Key::<Aes256Gcm>::from([8u8; 32]))
                    .encrypt(&nonce, b"sk-legacy-1234567890".as_slice())
                    .unwrap(),
            );
            base64::engine::general_purpose::STANDARD.encode(out)
        };
        let ring = KeyCipher::new(&[7u8; 32]).with_previous(&[8u8; 32]);
        assert_eq!(
            ring.current_key_id(),
            "af448592",
            "the new key stays current"
        );
        assert!(!ring.is_current(&sealed) && !ring.is_current(&legacy));
        assert_eq!(
            ring.decrypt(&sealed, scope(1, 2)).unwrap(),
            "sk-test-1234567890abcd"
        );
        assert_eq!(
            ring.decrypt(&legacy, scope(1, 2)).unwrap(),
            "sk-legacy-1234567890"
        );
        let resealed = ring.encrypt("sk-test-1234567890abcd", scope(1, 2)).unwrap();
        assert!(ring.is_current(&resealed));
        assert!(old.decrypt(&resealed, scope(1, 2)).is_err());
        // Without the previous key, neither opens.
        let alone = KeyCipher::new(&[7u8; 32]);
        assert!(alone.decrypt(&sealed, scope(1, 2)).is_err());
        assert_eq!(
            alone.decrypt(&legacy, scope(1, 2)),
            Err(CipherError::Decrypt)
        );
    }

    #[test]
    fn a_key_sealed_under_another_master_key_is_an_error_naming_its_key_id() {
        let sealed = KeyCipher::new(&[8u8; 32])
            .encrypt("sk-test-1234567890abcd", scope(1, 2))
            .unwrap();
        let err = KeyCipher::new(&[7u8; 32])
            .decrypt(&sealed, scope(1, 2))
            .unwrap_err();
        let kid = key_id(&[8u8; 32]);
        assert_eq!(
            err,
            CipherError::UnknownKey {
                kid: kid.clone(),
                current: "af448592".into()
            }
        );
        let text = err.to_string();
        assert!(text.contains(&kid) && text.contains("af448592"), "{text}");
    }

    #[test]
    fn keys_sealed_in_the_first_format_still_open() {
        // Sealed by the format before key ids: base64(nonce || ciphertext+tag) under [7; 32],
        // no associated data (made with Python's `cryptography`, nonce 00..0b).
        let old = "AAECAwQFBgcICQoLa+rEHHhuuCoOn9Wt0GtYz9cLjrdvGg5LC4t1/TqgQJWgXbfS/p+MHA==";
        let c = KeyCipher::new(&[7u8; 32]);
        assert_eq!(
            c.decrypt(old, scope(1, 2)).unwrap(),
            "sk-legacy-0123456789wxyz"
        );
        // Under another master key it does not open (and names no key id: it has none).
        assert_eq!(
            KeyCipher::new(&[8u8; 32]).decrypt(old, scope(1, 2)),
            Err(CipherError::Decrypt)
        );
    }
}
