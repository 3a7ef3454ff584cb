//! The whole log as today's code reads it: any stored event, of any aggregate and any schema
//! version this code has ever written, decoded (and upcast) by the aggregate it belongs to.
//! What auditors verify a log with (`confab events verify`).

use crate::{EventSchema, UpcastError};

/// One aggregate's attempt at a stored event: `None` when the type is not its own.
type Decoder = fn(&str, u32, &serde_json::Value) -> Option<Result<&'static str, UpcastError>>;

/// Decodes one stored event with today's code, by whichever aggregate knows its type: the name
/// of that aggregate's event enum, or why the event cannot be read.
pub fn decode_stored(
    event_type: &str,
    schema_version: u32,
    payload: &serde_json::Value,
) -> Result<&'static str, UpcastError> {
    /// Tries `E`: `None` when the type is not one of `E`'s.
    fn attempt<E: EventSchema>(
        name: &'static str,
        event_type: &str,
        schema_version: u32,
        payload: &serde_json::Value,
    ) -> Option<Result<&'static str, UpcastError>> {
        match E::from_stored(event_type, schema_version, payload.clone()) {
            Ok(_) => Some(Ok(name)),
            Err(UpcastError::UnknownType(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }
    let tries: [Decoder; 13] = [
        |t, v, p| attempt::<crate::account::AccountEvent>("AccountEvent", t, v, p),
        |t, v, p| attempt::<crate::account::EmailClaimEvent>("EmailClaimEvent", t, v, p),
        |t, v, p| attempt::<crate::session::SessionEvent>("SessionEvent", t, v, p),
        |t, v, p| {
            attempt::<crate::billing_account::BillingAccountEvent>("BillingAccountEvent", t, v, p)
        },
        |t, v, p| attempt::<crate::billing::StripeEventEvent>("StripeEventEvent", t, v, p),
        |t, v, p| attempt::<crate::chat::ChatEvent>("ChatEvent", t, v, p),
        |t, v, p| attempt::<crate::credits::CreditEvent>("CreditEvent", t, v, p),
        |t, v, p| attempt::<crate::document::DocumentEvent>("DocumentEvent", t, v, p),
        |t, v, p| attempt::<crate::provider::ProviderRegistered>("ProviderRegistered", t, v, p),
        |t, v, p| attempt::<crate::provider::UserKeySet>("UserKeySet", t, v, p),
        |t, v, p| attempt::<crate::settings::SettingsUpdated>("SettingsUpdated", t, v, p),
        |t, v, p| attempt::<crate::sources::SourcesRecorded>("SourcesRecorded", t, v, p),
        |t, v, p| attempt::<crate::operations::EventSkipped>("EventSkipped", t, v, p),
    ];
    tries
        .iter()
        .find_map(|decode| decode(event_type, schema_version, payload))
        .unwrap_or_else(|| Err(UpcastError::UnknownType(event_type.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatTitle;
    use crate::chat::{ChatCreated, ChatEvent};
    use chrono::Utc;
    use uuid::Uuid;

    /// Every type name any aggregate declares is known here: an aggregate added without being
    /// listed in [`decode_stored`] fails this.
    #[test]
    fn every_declared_type_is_known() {
        let declared = [
            crate::account::event_types::ALL,
            crate::account::email_event_types::ALL,
            crate::session::event_types::ALL,
            crate::billing_account::event_types::ALL,
            crate::billing::event_types::ALL,
            crate::chat::event_types::ALL,
            crate::credits::event_types::ALL,
            crate::document::event_types::ALL,
        ];
        for t in declared.iter().flat_map(|all| all.iter()).chain([
            &crate::provider::event_types::PROVIDER_REGISTERED,
            &crate::provider::event_types::USER_KEY_SET,
            &crate::settings::SETTINGS_UPDATED,
            &crate::sources::SOURCES_RECORDED,
            &crate::operations::EVENT_SKIPPED,
        ]) {
            assert_ne!(
                decode_stored(t, 1, &serde_json::json!({})),
                Err(UpcastError::UnknownType((*t).to_owned())),
                "{t}"
            );
        }
    }

    #[test]
    fn every_aggregate_s_events_decode_and_strangers_do_not() {
        let created = ChatEvent::Created(ChatCreated {
            chat_id: Uuid::nil(),
            owner: Uuid::nil(),
            title: ChatTitle::parse("t").unwrap(),
            at: Utc::now(),
        });
        assert_eq!(
            decode_stored(
                created.event_type(),
                created.schema_version(),
                &created.to_payload()
            ),
            Ok("ChatEvent")
        );
        assert!(matches!(
            decode_stored("chat.created", 1, &serde_json::json!({"nonsense": true})),
            Err(UpcastError::Malformed { .. })
        ));
        assert!(matches!(
            decode_stored("chat.created", 99, &created.to_payload()),
            Err(UpcastError::UnknownVersion { .. })
        ));
        assert_eq!(
            decode_stored("nobody.knows", 1, &serde_json::json!({})),
            Err(UpcastError::UnknownType("nobody.knows".into()))
        );
    }
}
