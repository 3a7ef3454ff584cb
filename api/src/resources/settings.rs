//! A user's preferences.

use chrono::{DateTime, Utc};
use confab_application::settings::EffectiveSettings;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Light, dark or follow the system.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThemeName {
    /// Light.
    Light,
    /// Dark.
    Dark,
    /// Follow the device.
    System,
}

/// How long replies should be.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStyleName {
    /// Short.
    Concise,
    /// Long.
    Detailed,
}

/// A user's effective settings.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// The model replies use by default.
    pub model: String,
    /// The theme.
    #[schema(value_type = ThemeName)]
    pub theme: String,
    /// Standing context given to the model.
    pub context: String,
    /// Preferred code runtime.
    pub runtime: String,
    /// Whether the billing tier is above the lowest (read-only).
    pub is_premium: bool,
    /// Reply length.
    #[schema(value_type = ResponseStyleName)]
    pub response_style: String,
    /// Whether code blocks are always expanded.
    pub always_show_code: bool,
    /// When they last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<EffectiveSettings> for Settings {
    fn from(s: EffectiveSettings) -> Self {
        Settings {
            model: s.model,
            theme: s.theme,
            context: s.context,
            runtime: s.runtime,
            is_premium: s.is_premium,
            response_style: s.response_style,
            always_show_code: s.always_show_code,
            updated_at: s.updated_at,
        }
    }
}

/// `{settings}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SettingsEnvelope {
    /// The settings.
    pub settings: Settings,
}

/// The fields a user may set, any subset; `isPremium` and `updatedAt` are read-only and
/// ignored if sent back.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsFields {
    /// A model id: not blank, at most 100 characters.
    #[schema(nullable = false, max_length = 100, pattern = "patterns::NOT_BLANK")]
    #[serde(default, deserialize_with = "super::not_null")]
    pub model: Option<String>,
    /// The theme.
    #[schema(nullable = false, value_type = Option<ThemeName>)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub theme: Option<String>,
    /// At most 10,000 characters.
    #[schema(nullable = false, max_length = 10_000, pattern = "patterns::NO_NUL")]
    #[serde(default, deserialize_with = "super::not_null")]
    pub context: Option<String>,
    /// At most 100 characters.
    #[schema(nullable = false, max_length = 100, pattern = "patterns::NO_NUL")]
    #[serde(default, deserialize_with = "super::not_null")]
    pub runtime: Option<String>,
    /// Reply length.
    #[schema(nullable = false, value_type = Option<ResponseStyleName>)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub response_style: Option<String>,
    /// Whether code blocks are always expanded.
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub always_show_code: Option<bool>,
}

/// `{settings: {...}}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SettingsBody {
    /// The fields to change.
    pub settings: SettingsFields,
}
