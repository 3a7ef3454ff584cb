//! LLM providers (registered by admins) and each user's own key for a provider. The key arrives
//! here already encrypted by the caller: the domain never sees it in the clear.

use crate::Aggregate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Stable type names.
pub mod event_types {
    /// A provider was registered.
    pub const PROVIDER_REGISTERED: &str = "provider.registered";
    /// A user set their key for a provider.
    pub const USER_KEY_SET: &str = "user_llm_config.key_set";
    /// Both.
    pub const ALL: &[&str] = &[PROVIDER_REGISTERED, USER_KEY_SET];
}

/// A provider was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRegistered {
    /// The provider.
    pub provider_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its API base URL (validated by the caller: https, no private address unless allowed).
    pub api_endpoint: String,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    impl EventSchema for ProviderRegistered = event_types::PROVIDER_REGISTERED, version 1;
}

/// Register a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterProvider {
    /// The new provider's id.
    pub provider_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its validated endpoint.
    pub api_endpoint: String,
    /// Now.
    pub at: DateTime<Utc>,
}

/// Why a provider command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Registered already.
    #[error("provider already registered")]
    AlreadyRegistered,
}

/// The provider aggregate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provider {
    /// Whether it exists.
    pub registered: bool,
}

impl Aggregate for Provider {
    type Id = Uuid;
    type Command = RegisterProvider;
    type Event = ProviderRegistered;
    type Error = ProviderError;

    fn stream_name(id: &Uuid) -> String {
        format!("provider-{id}")
    }

    fn decide(&self, c: RegisterProvider) -> Result<Vec<ProviderRegistered>, ProviderError> {
        if self.registered {
            return Err(ProviderError::AlreadyRegistered);
        }
        Ok(vec![ProviderRegistered {
            provider_id: c.provider_id,
            name: c.name,
            api_endpoint: c.api_endpoint,
            at: c.at,
        }])
    }

    fn evolve(mut self, _: &ProviderRegistered) -> Self {
        self.registered = true;
        self
    }
}

/// A user's key for a provider was set (or replaced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserKeySet {
    /// The user.
    pub user_id: Uuid,
    /// The provider.
    pub provider_id: Uuid,
    /// The key, encrypted (AES-256-GCM, nonce first, base64).
    pub encrypted_key: String,
    /// A masked hint such as `sk-...a1b2`.
    pub key_hint: String,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    impl EventSchema for UserKeySet = event_types::USER_KEY_SET, version 1;
}

/// Set a user's key for a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct SetUserKey {
    /// The user.
    pub user_id: Uuid,
    /// The provider.
    pub provider_id: Uuid,
    /// The encrypted key.
    pub encrypted_key: String,
    /// Its masked hint.
    pub key_hint: String,
    /// Now.
    pub at: DateTime<Utc>,
}

/// Setting a key is never refused once validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user llm config error")]
pub enum UserLlmConfigError {}

/// One user's configuration for one provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserLlmConfig {
    /// Whether a key was ever set.
    pub has_key: bool,
}

impl UserLlmConfig {
    /// The aggregate id of (user, provider): a name-based UUID, stable for the pair.
    pub fn id_for(user_id: Uuid, provider_id: Uuid) -> Uuid {
        Uuid::new_v5(&user_id, provider_id.as_bytes())
    }
}

impl Aggregate for UserLlmConfig {
    type Id = Uuid;
    type Command = SetUserKey;
    type Event = UserKeySet;
    type Error = UserLlmConfigError;

    fn stream_name(id: &Uuid) -> String {
        format!("llmconfig-{id}")
    }

    fn decide(&self, c: SetUserKey) -> Result<Vec<UserKeySet>, UserLlmConfigError> {
        Ok(vec![UserKeySet {
            user_id: c.user_id,
            provider_id: c.provider_id,
            encrypted_key: c.encrypted_key,
            key_hint: c.key_hint,
            at: c.at,
        }])
    }

    fn evolve(mut self, _: &UserKeySet) -> Self {
        self.has_key = true;
        self
    }
}
