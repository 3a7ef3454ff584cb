//! The `providers` projection: LLM providers and users' (encrypted) keys for them.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::provider::{ProviderRegistered, UserKeySet, event_types};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds `llm_providers` and `user_llm_configs`.
pub struct ProvidersProjection;

/// The projection's name.
pub const NAME: &str = "providers";

#[async_trait]
impl Projection for ProvidersProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == event_types::PROVIDER_REGISTERED
            || event_type == event_types::USER_KEY_SET
            || event_type == confab_domain::account::event_types::USER_ERASED
    }

    async fn apply(&self, tx: &mut Tx, e: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(e) {
            crate::privacy::purge_providers(tx, user).await?;
            return Ok(());
        }
        if e.event_type == event_types::PROVIDER_REGISTERED {
            let p = ProviderRegistered::from_stored(
                &e.event_type,
                e.schema_version,
                e.payload.clone(),
            )?;
            execute!(
                tx,
                "INSERT INTO llm_providers (id, name, api_endpoint, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                p.provider_id,
                p.name,
                p.api_endpoint,
                p.at
            )?;
        } else {
            let k = UserKeySet::from_stored(&e.event_type, e.schema_version, e.payload.clone())?;
            execute!(
                tx,
                "INSERT INTO user_llm_configs (user_id, provider_id, encrypted_key, key_hint, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (user_id, provider_id) DO UPDATE SET \
                 encrypted_key = EXCLUDED.encrypted_key, key_hint = EXCLUDED.key_hint, \
                 updated_at = EXCLUDED.updated_at",
                k.user_id,
                k.provider_id,
                k.encrypted_key,
                k.key_hint,
                k.at
            )?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM user_llm_configs")?;
        execute!(tx, "DELETE FROM llm_providers")?;
        Ok(())
    }
}

/// A provider as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProviderRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// API base URL.
    pub api_endpoint: String,
    /// Registered.
    pub created_at: DateTime<Utc>,
}

/// Provider `id`.
pub async fn get_provider(db: &ReadDb, id: Uuid) -> Result<Option<ProviderRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        ProviderRow,
        "SELECT id, name, api_endpoint, created_at FROM llm_providers WHERE id = $1",
        id
    )
}

/// A user's configuration for a provider, as read (the key stays encrypted).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserConfigRow {
    /// The user.
    pub user_id: Uuid,
    /// The provider.
    pub provider_id: Uuid,
    /// The encrypted key (for the workers that call the provider).
    pub encrypted_key: String,
    /// The masked hint.
    pub key_hint: String,
    /// First set.
    pub created_at: DateTime<Utc>,
    /// Last set.
    pub updated_at: DateTime<Utc>,
}

/// `user`'s configuration for `provider`.
pub async fn get_user_config(
    db: &ReadDb,
    user: Uuid,
    provider: Uuid,
) -> Result<Option<UserConfigRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        UserConfigRow,
        "SELECT user_id, provider_id, encrypted_key, key_hint, created_at, updated_at \
         FROM user_llm_configs WHERE user_id = $1 AND provider_id = $2",
        user,
        provider
    )
}

/// Every user's configuration after `after` (by user, then provider), `limit` at most: the
/// pages `confab keys rotate` walks to reseal every stored key.
pub async fn user_configs_after(
    db: &ReadDb,
    after: Option<(Uuid, Uuid)>,
    limit: u32,
) -> Result<Vec<UserConfigRow>, sqlx::Error> {
    let (user, provider) = after.unwrap_or((Uuid::nil(), Uuid::nil()));
    query_as!(
        db,
        fetch_all,
        UserConfigRow,
        "SELECT user_id, provider_id, encrypted_key, key_hint, created_at, updated_at \
         FROM user_llm_configs WHERE (user_id > $1 OR (user_id = $1 AND provider_id > $2)) \
         ORDER BY user_id, provider_id LIMIT $3",
        user,
        provider,
        i64::from(limit)
    )
}

/// `user`'s own key for the provider named `provider_name` (case-insensitive), with that
/// provider's id and endpoint: the newest if several providers share the name.
pub async fn user_key_by_provider_name(
    db: &ReadDb,
    user: Uuid,
    provider_name: &str,
) -> Result<Option<UserProviderKey>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        UserProviderKey,
        "SELECT c.provider_id, p.api_endpoint, c.encrypted_key FROM user_llm_configs c \
         JOIN llm_providers p ON p.id = c.provider_id \
         WHERE c.user_id = $1 AND lower(p.name) = lower($2) \
         ORDER BY c.updated_at DESC LIMIT 1",
        user,
        provider_name
    )
}

/// A user's sealed key for a provider, with where that provider is.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserProviderKey {
    /// The provider's id (what the key is bound to).
    pub provider_id: Uuid,
    /// The provider's API base URL.
    pub api_endpoint: String,
    /// The sealed key.
    pub encrypted_key: String,
}
