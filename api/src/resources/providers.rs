//! LLM providers and users' own provider keys (seed 002, snake_case).

use chrono::{DateTime, Utc};
use confab_projections::providers::{ProviderRow, UserConfigRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A provider.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Provider {
    /// The provider's id.
    pub id: Uuid,
    /// Its name, which models' `provider` refers to.
    pub name: String,
    /// Its OpenAI-compatible API base URL.
    pub api_endpoint: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl From<ProviderRow> for Provider {
    fn from(p: ProviderRow) -> Self {
        Provider {
            id: p.id,
            name: p.name,
            api_endpoint: p.api_endpoint,
            created_at: p.created_at,
        }
    }
}

/// A user's key for a provider: never the key, only a hint of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserLlmConfig {
    /// The user.
    pub user_id: Uuid,
    /// The provider.
    pub provider_id: Uuid,
    /// A masked hint such as `sk-...a1b2`.
    pub api_key_hint: String,
    /// When a key was first set.
    pub created_at: DateTime<Utc>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

impl From<UserConfigRow> for UserLlmConfig {
    fn from(c: UserConfigRow) -> Self {
        UserLlmConfig {
            user_id: c.user_id,
            provider_id: c.provider_id,
            api_key_hint: c.key_hint,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A provider to register (admins only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewProvider {
    /// 1 to 100 characters, trimmed; no control characters.
    #[schema(max_length = 100, pattern = "patterns::TRIMMED_LINE")]
    pub name: String,
    /// An https URL of a public host (http and private hosts only when the operator allows
    /// the host), without credentials.
    pub api_endpoint: String,
}

/// A user's key to set (or replace).
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUserConfig {
    /// The caller's own id (any user's, for an admin).
    pub user_id: Uuid,
    /// The provider.
    pub provider_id: Uuid,
    /// The key: 1 to 500 characters, no whitespace. Stored encrypted; never returned.
    #[schema(max_length = 500, pattern = "patterns::TOKEN")]
    pub api_key: String,
}
