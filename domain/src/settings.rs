//! The settings aggregate: one user's preferences. Only the fields a command changes are
//! recorded; reads fill the rest with defaults.

use crate::{Aggregate, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The model a new user starts with.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Light, dark or follow the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    /// Light.
    Light,
    /// Dark.
    Dark,
    /// Follow the device.
    System,
}

impl Theme {
    /// Parses `light`, `dark` or `system`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "light" => Ok(Theme::Light),
            "dark" => Ok(Theme::Dark),
            "system" => Ok(Theme::System),
            _ => Err(ValidationError::new(
                "theme",
                "must be one of light, dark, system",
            )),
        }
    }
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::Light => "light",
            Theme::Dark => "dark",
            Theme::System => "system",
        }
    }
}

/// How long replies should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStyle {
    /// Short.
    Concise,
    /// Long.
    Detailed,
}

impl ResponseStyle {
    /// Parses `concise` or `detailed`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "concise" => Ok(ResponseStyle::Concise),
            "detailed" => Ok(ResponseStyle::Detailed),
            _ => Err(ValidationError::new(
                "responseStyle",
                "must be one of concise, detailed",
            )),
        }
    }
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseStyle::Concise => "concise",
            ResponseStyle::Detailed => "detailed",
        }
    }
}

/// Checks a free-text setting's length.
pub fn bounded_text(
    field: &'static str,
    s: &str,
    max_chars: usize,
) -> Result<String, ValidationError> {
    if s.chars().count() > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if s.contains('\0') {
        return Err(ValidationError::new(field, "must not contain NUL"));
    }
    Ok(s.to_owned())
}

/// A change of some settings: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsChange {
    /// Model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Theme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theme: Option<Theme>,
    /// Standing context given to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Preferred code runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Reply length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_style: Option<ResponseStyle>,
    /// Whether code blocks are always expanded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_show_code: Option<bool>,
}

impl SettingsChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == SettingsChange::default()
    }
}

/// Settings were changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsUpdated {
    /// Whose.
    pub user_id: Uuid,
    /// What changed.
    pub change: SettingsChange,
    /// When.
    pub at: DateTime<Utc>,
}

/// Stable type name of the settings event.
pub const SETTINGS_UPDATED: &str = "settings.updated";

crate::schema::event_schema! {
    impl EventSchema for SettingsUpdated = SETTINGS_UPDATED, version 1;
}

/// Change settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateSettings {
    /// Whose.
    pub user_id: Uuid,
    /// What to change.
    pub change: SettingsChange,
    /// Now.
    pub at: DateTime<Utc>,
}

/// Settings commands are never refused once validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("settings error")]
pub enum SettingsError {}

/// The settings aggregate's state: the effective values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Every change so far, folded.
    pub current: SettingsChange,
}

impl Aggregate for Settings {
    type Id = Uuid;
    type Command = UpdateSettings;
    type Event = SettingsUpdated;
    type Error = SettingsError;

    fn stream_name(id: &Uuid) -> String {
        format!("settings-{id}")
    }

    fn decide(&self, c: UpdateSettings) -> Result<Vec<SettingsUpdated>, SettingsError> {
        // Record only what actually changes.
        let cur = &self.current;
        let change = SettingsChange {
            model: c.change.model.filter(|v| cur.model.as_ref() != Some(v)),
            theme: c.change.theme.filter(|v| cur.theme != Some(*v)),
            context: c.change.context.filter(|v| cur.context.as_ref() != Some(v)),
            runtime: c.change.runtime.filter(|v| cur.runtime.as_ref() != Some(v)),
            response_style: c
                .change
                .response_style
                .filter(|v| cur.response_style != Some(*v)),
            always_show_code: c
                .change
                .always_show_code
                .filter(|v| cur.always_show_code != Some(*v)),
        };
        if change.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![SettingsUpdated {
            user_id: c.user_id,
            change,
            at: c.at,
        }])
    }

    fn evolve(mut self, e: &SettingsUpdated) -> Self {
        let c = e.change.clone();
        let cur = &mut self.current;
        cur.model = c.model.or(cur.model.take());
        cur.theme = c.theme.or(cur.theme);
        cur.context = c.context.or(cur.context.take());
        cur.runtime = c.runtime.or(cur.runtime.take());
        cur.response_style = c.response_style.or(cur.response_style);
        cur.always_show_code = c.always_show_code.or(cur.always_show_code);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn only_changed_fields_are_recorded() {
        let first = SettingsUpdated {
            user_id: Uuid::nil(),
            change: SettingsChange {
                theme: Some(Theme::Dark),
                ..SettingsChange::default()
            },
            at: at(),
        };
        given::<Settings>([first])
            .when(UpdateSettings {
                user_id: Uuid::nil(),
                change: SettingsChange {
                    theme: Some(Theme::Dark),
                    always_show_code: Some(true),
                    ..SettingsChange::default()
                },
                at: at(),
            })
            .then([SettingsUpdated {
                user_id: Uuid::nil(),
                change: SettingsChange {
                    always_show_code: Some(true),
                    ..SettingsChange::default()
                },
                at: at(),
            }]);
    }

    #[test]
    fn an_update_that_changes_nothing_records_nothing() {
        given::<Settings>([])
            .when(UpdateSettings {
                user_id: Uuid::nil(),
                change: SettingsChange::default(),
                at: at(),
            })
            .then([]);
    }

    #[test]
    fn enums_parse_only_their_names() {
        assert_eq!(Theme::parse("dark"), Ok(Theme::Dark));
        assert!(Theme::parse("Dark").is_err());
        assert_eq!(
            ResponseStyle::parse("detailed"),
            Ok(ResponseStyle::Detailed)
        );
        assert_eq!(
            ResponseStyle::parse("long").unwrap_err().field,
            "responseStyle"
        );
    }
}
