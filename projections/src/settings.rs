//! The `settings` projection: each user's effective settings.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::settings::{DEFAULT_MODEL, SETTINGS_UPDATED, SettingsUpdated};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds the `settings` table.
pub struct SettingsProjection;

/// The projection's name.
pub const NAME: &str = "settings";

/// Defaults for a user who never changed a setting.
pub const DEFAULTS: (&str, &str, &str, &str, &str, bool) =
    (DEFAULT_MODEL, "system", "", "", "concise", false);

#[async_trait]
impl Projection for SettingsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == SETTINGS_UPDATED
            || event_type == confab_domain::account::event_types::USER_ERASED
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(event) {
            crate::privacy::purge_settings(tx, user).await?;
            return Ok(());
        }
        let e = SettingsUpdated::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload.clone(),
        )?;
        let c = e.change;
        let (model, theme, context, runtime, style, code) = DEFAULTS;
        execute!(
            tx,
            "INSERT INTO settings (user_id, model, theme, context, runtime, response_style, \
             always_show_code, updated_at) VALUES ($1, COALESCE($2, $9), COALESCE($3, $10), \
             COALESCE($4, $11), COALESCE($5, $12), COALESCE($6, $13), COALESCE($7, $14), $8) \
             ON CONFLICT (user_id) DO UPDATE SET model = COALESCE($2, settings.model), \
             theme = COALESCE($3, settings.theme), context = COALESCE($4, settings.context), \
             runtime = COALESCE($5, settings.runtime), \
             response_style = COALESCE($6, settings.response_style), \
             always_show_code = COALESCE($7, settings.always_show_code), updated_at = $8",
            e.user_id,
            c.model,
            c.theme.map(|t| t.as_str()),
            c.context,
            c.runtime,
            c.response_style.map(|s| s.as_str()),
            c.always_show_code,
            e.at,
            model,
            theme,
            context,
            runtime,
            style,
            code
        )?;
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM settings")?;
        Ok(())
    }
}

/// A user's stored settings.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SettingsRow {
    /// Model id.
    pub model: String,
    /// light, dark or system.
    pub theme: String,
    /// Standing context.
    pub context: String,
    /// Preferred runtime.
    pub runtime: String,
    /// concise or detailed.
    pub response_style: String,
    /// Whether code is always shown.
    pub always_show_code: bool,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// `user`'s settings, if they ever changed one.
pub async fn get(db: &ReadDb, user: Uuid) -> Result<Option<SettingsRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        SettingsRow,
        "SELECT model, theme, context, runtime, response_style, always_show_code, updated_at \
         FROM settings WHERE user_id = $1",
        user
    )
}
