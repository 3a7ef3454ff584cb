//! The persisted form of events: stable type names, schema versions and upcasting.

/// How an event is written to and read from the store.
///
/// The type name and the payload layout are a persisted contract: they never change in place. A
/// new layout gets a new schema version, and [`EventSchema::from_stored`] upcasts every older
/// version it has ever written, so old events are read, never rewritten.
pub trait EventSchema: Sized {
    /// The stable type name, e.g. `chat.message_sent`.
    fn event_type(&self) -> &'static str;
    /// The schema version this code writes for this event.
    fn schema_version(&self) -> u32;
    /// The payload, in the current schema.
    fn to_payload(&self) -> serde_json::Value;
    /// Reads a stored event of any known schema version, upcasting older ones.
    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, UpcastError>;
}

/// A stored event that this code cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    /// The type name belongs to no event of this aggregate.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The schema version is newer than this code, or was never written.
    #[error("event type {event_type:?} has no schema version {version}")]
    UnknownVersion {
        /// The type name.
        event_type: String,
        /// The version found.
        version: u32,
    },
    /// The payload does not match its schema.
    #[error("malformed {event_type:?} payload: {reason}")]
    Malformed {
        /// The type name.
        event_type: String,
        /// What serde said.
        reason: String,
    },
}

/// Deserialises `payload` as `T`, naming the event type in the error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    event_type: &str,
    payload: serde_json::Value,
) -> Result<T, UpcastError> {
    serde_json::from_value(payload).map_err(|e| UpcastError::Malformed {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes the [`EventSchema`] boilerplate of an aggregate's events.
///
/// The enum form declares the event enum, a module of type-name constants with `ALL`, and the
/// `EventSchema` impl, from one line per variant: the payload type, the constant and stable type
/// name, the version written now, and an upcaster per older version still found in logs:
///
/// ```text
/// event_schema! {
///     /// Stable type names of chat events.
///     pub mod event_types;
///
///     /// Everything a chat records.
///     #[derive(Debug, Clone, PartialEq)]
///     pub enum ChatEvent {
///         /// A chat was created.
///         #[event(CREATED = "chat.created", version = 1)]
///         Created(ChatCreated),
///         /// A message was sent.
///         #[event(MESSAGE_SENT = "chat.message_sent", version = 2, upcast(1 => message_sent_v1))]
///         MessageSent(MessageSent),
///     }
/// }
/// ```
///
/// An upcaster is a `fn(serde_json::Value) -> Result<Payload, UpcastError>` reading the payload
/// as that older version wrote it. The module may hold further items after the constants
/// (`pub mod event_types { pub use ...; }`).
///
/// The struct form implements `EventSchema` for an aggregate whose only event is one struct,
/// named by a constant declared next to it:
///
/// ```text
/// event_schema! {
///     impl EventSchema for SettingsUpdated = SETTINGS_UPDATED, version 1;
/// }
/// ```
macro_rules! event_schema {
    // The enum form; a module without extra items.
    (
        $(#[doc = $mod_doc:literal])*
        $mod_vis:vis mod $types:ident;
        $($rest:tt)*
    ) => {
        $crate::schema::event_schema! {
            $(#[doc = $mod_doc])*
            $mod_vis mod $types {}
            $($rest)*
        }
    };
    (
        $(#[doc = $mod_doc:literal])*
        $mod_vis:vis mod $types:ident { $($extra:item)* }

        $(#[$enum_meta:meta])*
        $vis:vis enum $Enum:ident {
            $(
                $(#[doc = $doc:literal])*
                #[event($CONST:ident = $name:literal, version = $version:literal
                    $(, upcast($($old:literal => $upcast:path),+ $(,)?))? $(,)?)]
                $Variant:ident($Payload:ty)
            ),+ $(,)?
        }
    ) => {
        $(#[doc = $mod_doc])*
        $mod_vis mod $types {
            $(
                $(#[doc = $doc])*
                pub const $CONST: &str = $name;
            )+
            #[doc = concat!("Every `", stringify!($Enum), "` type name, in declaration order.")]
            pub const ALL: &[&str] = &[$($CONST),+];
            $($extra)*
        }

        $(#[$enum_meta])*
        $vis enum $Enum {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Stored as `", $name, "`, schema version ", stringify!($version), ".")]
                $Variant($Payload),
            )+
        }

        impl $crate::EventSchema for $Enum {
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$Variant(_) => $types::$CONST,)+
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    $(Self::$Variant(_) => $version,)+
                }
            }

            fn to_payload(&self) -> serde_json::Value {
                let payload = match self {
                    $(Self::$Variant(e) => serde_json::to_value(e),)+
                };
                // Plain structs of strings, numbers, ids and timestamps always serialise.
                payload.unwrap_or(serde_json::Value::Null)
            }

            fn from_stored(
                event_type: &str,
                schema_version: u32,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::UpcastError> {
                $(
                    if event_type == $types::$CONST {
                        return match schema_version {
                            $version => Ok(Self::$Variant($crate::schema::parse(event_type, payload)?)),
                            $($($old => Ok(Self::$Variant($upcast(payload)?)),)+)?
                            version => Err($crate::UpcastError::UnknownVersion {
                                event_type: event_type.to_owned(),
                                version,
                            }),
                        };
                    }
                )+
                Err($crate::UpcastError::UnknownType(event_type.to_owned()))
            }
        }
    };

    // The struct form.
    (
        impl EventSchema for $Event:ty = $name:path, version $version:literal
            $(, upcast($($old:literal => $upcast:path),+ $(,)?))? ;
    ) => {
        impl $crate::EventSchema for $Event {
            fn event_type(&self) -> &'static str {
                $name
            }

            fn schema_version(&self) -> u32 {
                $version
            }

            fn to_payload(&self) -> serde_json::Value {
                // Plain structs of strings, numbers, ids and timestamps always serialise.
                serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
            }

            fn from_stored(
                event_type: &str,
                schema_version: u32,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::UpcastError> {
                if event_type != $name {
                    return Err($crate::UpcastError::UnknownType(event_type.to_owned()));
                }
                match schema_version {
                    $version => $crate::schema::parse(event_type, payload),
                    $($($old => $upcast(payload),)+)?
                    version => Err($crate::UpcastError::UnknownVersion {
                        event_type: event_type.to_owned(),
                        version,
                    }),
                }
            }
        }
    };
}
pub(crate) use event_schema;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Opened {
        name: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Moved {
        from: String,
        to: String,
    }

    /// Version 1 of `test.moved` had one `path` field, `from>to`; version 2 kept it as `to`
    /// only; version 3 splits it.
    fn moved_v1(payload: Value) -> Result<Moved, UpcastError> {
        let path: String = parse(types::MOVED, payload["path"].clone())?;
        let (from, to) = path.split_once('>').unwrap_or(("", &path));
        Ok(Moved {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }

    fn moved_v2(payload: Value) -> Result<Moved, UpcastError> {
        Ok(Moved {
            from: String::new(),
            to: parse(types::MOVED, payload["to"].clone())?,
        })
    }

    event_schema! {
        /// Type names of the test events.
        mod types {
            /// Not an event: proves extra items land in the module.
            pub const PREFIX: &str = "test.";
        }

        /// Test events.
        #[derive(Debug, Clone, PartialEq)]
        enum TestEvent {
            /// Something opened.
            #[event(OPENED = "test.opened", version = 1)]
            Opened(Opened),
            /// Something moved.
            #[event(MOVED = "test.moved", version = 3, upcast(1 => moved_v1, 2 => moved_v2))]
            Moved(Moved),
        }
    }

    const CLOSED: &str = "test.closed";

    event_schema! {
        impl EventSchema for Opened = CLOSED, version 2, upcast(1 => opened_v1);
    }

    fn opened_v1(payload: Value) -> Result<Opened, UpcastError> {
        Ok(Opened {
            name: parse(CLOSED, payload["title"].clone())?,
        })
    }

    fn round_trip<E: EventSchema + PartialEq + std::fmt::Debug>(e: &E) {
        let back = E::from_stored(e.event_type(), e.schema_version(), e.to_payload());
        assert_eq!(back.as_ref(), Ok(e));
    }

    #[test]
    fn every_variant_round_trips_under_its_name_and_current_version() {
        let opened = TestEvent::Opened(Opened { name: "a".into() });
        let moved = TestEvent::Moved(Moved {
            from: "a".into(),
            to: "b".into(),
        });
        for e in [&opened, &moved] {
            round_trip(e);
        }
        assert_eq!(
            (opened.event_type(), opened.schema_version()),
            ("test.opened", 1)
        );
        assert_eq!(
            (moved.event_type(), moved.schema_version()),
            ("test.moved", 3)
        );
        assert_eq!(types::ALL, ["test.opened", "test.moved"]);
        assert!(types::ALL.iter().all(|t| t.starts_with(types::PREFIX)));
        let single = Opened { name: "x".into() };
        round_trip(&single);
        assert_eq!((single.event_type(), single.schema_version()), (CLOSED, 2));
    }

    #[test]
    fn older_versions_are_upcast_on_read() {
        let want = TestEvent::Moved(Moved {
            from: "a".into(),
            to: "b".into(),
        });
        let v1 = TestEvent::from_stored(types::MOVED, 1, json!({"path": "a>b"}));
        assert_eq!(v1, Ok(want));
        let v2 = TestEvent::from_stored(types::MOVED, 2, json!({"to": "b"}));
        assert_eq!(
            v2,
            Ok(TestEvent::Moved(Moved {
                from: String::new(),
                to: "b".into()
            }))
        );
        assert_eq!(
            Opened::from_stored(CLOSED, 1, json!({"title": "t"})),
            Ok(Opened { name: "t".into() })
        );
    }

    #[test]
    fn unknown_types_versions_and_bad_payloads_are_typed_errors() {
        assert_eq!(
            TestEvent::from_stored("test.exploded", 1, json!({})),
            Err(UpcastError::UnknownType("test.exploded".into()))
        );
        for version in [0, 2, 9] {
            assert_eq!(
                TestEvent::from_stored(types::OPENED, version, json!({"name": "a"})),
                Err(UpcastError::UnknownVersion {
                    event_type: types::OPENED.into(),
                    version
                })
            );
        }
        assert!(matches!(
            TestEvent::from_stored(types::MOVED, 4, json!({})),
            Err(UpcastError::UnknownVersion { version: 4, .. })
        ));
        assert!(matches!(
            TestEvent::from_stored(types::MOVED, 1, json!({"path": 7})),
            Err(UpcastError::Malformed { .. })
        ));
        assert!(matches!(
            TestEvent::from_stored(types::OPENED, 1, json!({})),
            Err(UpcastError::Malformed { .. })
        ));
        assert_eq!(
            Opened::from_stored(types::OPENED, 2, json!({"name": "a"})),
            Err(UpcastError::UnknownType(types::OPENED.into()))
        );
        assert!(matches!(
            Opened::from_stored(CLOSED, 3, json!({"name": "a"})),
            Err(UpcastError::UnknownVersion { version: 3, .. })
        ));
    }

    /// The schema versions of `event_type` that `E` reads (probing with a payload no version
    /// accepts, so a known version answers `Malformed` and an unknown one `UnknownVersion`).
    fn versions_read<E: EventSchema + std::fmt::Debug>(event_type: &str) -> Vec<u32> {
        (0..=10)
            .filter(|&v| match E::from_stored(event_type, v, Value::Null) {
                Err(UpcastError::Malformed { .. }) => true,
                Err(UpcastError::UnknownVersion { .. }) => false,
                other => panic!("{event_type} v{v}: {other:?}"),
            })
            .collect()
    }

    /// The persisted contract: every type name ever written, byte for byte, and the schema
    /// versions still read (the highest is the one written now).
    #[test]
    fn every_stored_type_name_and_version_is_still_read() {
        use crate::{
            account, billing, billing_account, chat, credits, document, provider, session,
            settings, sources,
        };
        fn check<E: EventSchema + std::fmt::Debug>(all: &[&str], expected: &[(&str, &[u32])]) {
            let names: Vec<&str> = expected.iter().map(|(t, _)| *t).collect();
            assert_eq!(all, names);
            for (t, versions) in expected {
                assert_eq!(versions_read::<E>(t), *versions, "{t}");
            }
        }
        check::<chat::ChatEvent>(
            chat::event_types::ALL,
            &[
                ("chat.created", &[1]),
                ("chat.renamed", &[1]),
                ("chat.deleted", &[1]),
                ("chat.message_sent", &[1, 2]),
                ("chat.message_edited", &[1]),
                ("chat.message_deleted", &[1]),
                ("chat.attachment_added", &[1]),
                ("chat.restored", &[1]),
                ("chat.message_restored", &[1]),
            ],
        );
        check::<document::DocumentEvent>(
            document::event_types::ALL,
            &[
                ("document.uploaded", &[1]),
                ("document.chunks_recorded", &[1]),
                ("document.ready", &[1]),
                ("document.failed", &[1]),
                ("document.processing_requested", &[1]),
                ("document.deleted", &[1]),
            ],
        );
        check::<credits::CreditEvent>(
            credits::event_types::ALL,
            &[
                ("credits.reset", &[1]),
                ("credits.reserved", &[1, 2]),
                ("credits.consumed", &[1]),
                ("credits.released", &[1]),
                ("credits.granted", &[1]),
                ("credits.hold_expired", &[1]),
                ("credits.charged", &[1]),
                ("credits.adjusted", &[1]),
            ],
        );
        check::<billing::StripeEventEvent>(
            billing::event_types::ALL,
            &[
                ("stripe.event_received", &[1]),
                ("stripe.event_processed", &[1]),
            ],
        );
        check::<account::AccountEvent>(
            account::event_types::ALL,
            &[
                ("account.registered", &[1]),
                ("account.profile_updated", &[1]),
                ("account.image_changed", &[1]),
                ("account.user_erased", &[1]),
            ],
        );
        check::<session::SessionEvent>(
            session::event_types::ALL,
            &[
                ("account.session_started", &[1]),
                ("account.session_revoked", &[1]),
            ],
        );
        check::<billing_account::BillingAccountEvent>(
            billing_account::event_types::ALL,
            &[
                ("account.stripe_customer_linked", &[1]),
                ("account.subscription_changed", &[1]),
                ("account.tier_changed", &[1]),
                ("account.invoice_recorded", &[1]),
            ],
        );
        // The constants of the types that moved out of the account keep their old paths.
        use account::event_types as old;
        assert_eq!(
            [
                old::SESSION_STARTED,
                old::SESSION_REVOKED,
                old::STRIPE_CUSTOMER_LINKED,
                old::SUBSCRIPTION_CHANGED,
                old::TIER_CHANGED,
                old::INVOICE_RECORDED,
            ],
            [
                "account.session_started",
                "account.session_revoked",
                "account.stripe_customer_linked",
                "account.subscription_changed",
                "account.tier_changed",
                "account.invoice_recorded",
            ]
        );
        check::<account::EmailClaimEvent>(
            account::email_event_types::ALL,
            &[("email.claimed", &[1]), ("email.released", &[1])],
        );
        assert_eq!(
            [
                account::event_types::EMAIL_CLAIMED,
                account::event_types::EMAIL_RELEASED
            ],
            ["email.claimed", "email.released"]
        );
        check::<provider::ProviderRegistered>(
            &provider::event_types::ALL[..1],
            &[("provider.registered", &[1])],
        );
        check::<provider::UserKeySet>(
            &provider::event_types::ALL[1..],
            &[("user_llm_config.key_set", &[1])],
        );
        check::<settings::SettingsUpdated>(
            &[settings::SETTINGS_UPDATED],
            &[("settings.updated", &[1])],
        );
        check::<sources::SourcesRecorded>(
            &[sources::SOURCES_RECORDED],
            &[("reply.sources_recorded", &[1])],
        );
        check::<crate::operations::EventSkipped>(
            &[crate::operations::EVENT_SKIPPED],
            &[("projection.event_skipped", &[1])],
        );
    }
}
