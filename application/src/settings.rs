//! A user's preferences: defaults for a new user, partial updates that merge, and `isPremium`
//! derived from the billing tier (never set by the user).

use crate::{Actor, AppError, Services, now};
use chrono::{DateTime, Utc};
use confab_domain::settings::{Settings, SettingsChange, UpdateSettings};
use confab_projections::settings::{self, DEFAULTS};

/// A user's effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveSettings {
    /// Model id.
    pub model: String,
    /// light, dark or system.
    pub theme: String,
    /// Standing context given to the model.
    pub context: String,
    /// Preferred code runtime.
    pub runtime: String,
    /// Whether the user's tier is above the catalogue's lowest.
    pub is_premium: bool,
    /// concise or detailed.
    pub response_style: String,
    /// Whether code blocks are always expanded.
    pub always_show_code: bool,
    /// Last changed (the account's creation for a user who never changed one).
    pub updated_at: DateTime<Utc>,
}

/// `actor`'s settings.
pub async fn get(svc: &Services, actor: &Actor) -> Result<EffectiveSettings, AppError> {
    let row = settings::get(&svc.db, actor.id()).await?;
    // Premium is any tier above the catalogue's lowest (an unknown tier counts as the lowest).
    let lowest = svc.catalogue.tiers.first().map(|t| t.name.as_str());
    let is_premium = Some(svc.catalogue.tier(&actor.user.tier).name.as_str()) != lowest;
    Ok(match row {
        Some(s) => EffectiveSettings {
            model: s.model,
            theme: s.theme,
            context: s.context,
            runtime: s.runtime,
            is_premium,
            response_style: s.response_style,
            always_show_code: s.always_show_code,
            updated_at: s.updated_at,
        },
        None => {
            let (model, theme, context, runtime, style, code) = DEFAULTS;
            EffectiveSettings {
                model: model.to_owned(),
                theme: theme.to_owned(),
                context: context.to_owned(),
                runtime: runtime.to_owned(),
                is_premium,
                response_style: style.to_owned(),
                always_show_code: code,
                updated_at: actor.user.created_at,
            }
        }
    })
}

/// Applies `change` to `actor`'s settings and returns them as they now are.
pub async fn update(
    svc: &Services,
    actor: &Actor,
    change: SettingsChange,
) -> Result<EffectiveSettings, AppError> {
    let done = svc
        .commands
        .execute::<Settings>(
            &actor.id(),
            UpdateSettings {
                user_id: actor.id(),
                change,
                at: now(),
            },
            actor.metadata(),
        )
        .await?;
    svc.visible(settings::NAME, done.appended.map(|a| a.last_position))
        .await?;
    get(svc, actor).await
}
