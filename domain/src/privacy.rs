//! Which parts of which event payloads are personal data, and whose: the map the event store's
//! payload encryption (`confab_eventstore::sealed`) follows.
//!
//! Ids, types, timestamps, amounts and versions stay in clear, so that projections, the audit
//! and billing read them as before; the listed fields are sealed with the data key of the user
//! the event is about, and read as [`ERASED`] once that key is destroyed.

use crate::{
    account, billing, billing_account, chat, credits, document, provider, settings, sources,
};

/// What a personal field of an erased user reads as (strings; an erased array reads as `[]`
/// and an erased object as `{}`).
pub const ERASED: &str = "[erased]";

/// Whose data an event holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The user id in this top-level payload field.
    Field(&'static str),
    /// The owner of the event's stream: the `owner` field of the stream's first event (one
    /// of [`OWNS_STREAM`]).
    StreamOwner,
    /// The user id in this top-level payload field when there is one; an event without it is
    /// about no user of Confab and its fields stay in clear (a Stripe event for a customer
    /// no user owns).
    FieldIfPresent(&'static str),
}

/// The personal fields of one event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Personal {
    /// The stable type name.
    pub event_type: &'static str,
    /// Whose data it is.
    pub subject: Subject,
    /// Payload fields to seal, as paths of object keys (`["invoice", "description"]`); a field
    /// that is absent (an unset option) is left alone.
    pub fields: &'static [&'static [&'static str]],
}

/// Event types that open a stream and name its owner in their `owner` field.
pub const OWNS_STREAM: &[&str] = &[chat::event_types::CREATED, document::event_types::UPLOADED];

/// Every event type that carries personal data, with its fields.
pub const PERSONAL: &[Personal] = &[
    Personal {
        event_type: account::event_types::REGISTERED,
        subject: Subject::Field("userId"),
        fields: &[&["email"], &["name"], &["passwordHash"]],
    },
    Personal {
        event_type: account::event_types::PROFILE_UPDATED,
        subject: Subject::Field("userId"),
        fields: &[&["email"], &["name"]],
    },
    Personal {
        event_type: account::event_types::IMAGE_CHANGED,
        subject: Subject::Field("userId"),
        fields: &[&["imageUrl"]],
    },
    Personal {
        event_type: settings::SETTINGS_UPDATED,
        subject: Subject::Field("userId"),
        fields: &[&["change"]],
    },
    Personal {
        event_type: provider::event_types::USER_KEY_SET,
        subject: Subject::Field("userId"),
        fields: &[&["encryptedKey"], &["keyHint"]],
    },
    Personal {
        event_type: chat::event_types::CREATED,
        subject: Subject::Field("owner"),
        fields: &[&["title"]],
    },
    Personal {
        event_type: chat::event_types::RENAMED,
        subject: Subject::StreamOwner,
        fields: &[&["title"]],
    },
    Personal {
        event_type: chat::event_types::MESSAGE_SENT,
        subject: Subject::StreamOwner,
        fields: &[&["content"]],
    },
    Personal {
        event_type: chat::event_types::MESSAGE_EDITED,
        subject: Subject::StreamOwner,
        fields: &[&["content"]],
    },
    Personal {
        event_type: chat::event_types::ATTACHMENT_ADDED,
        subject: Subject::StreamOwner,
        fields: &[&["filePath"]],
    },
    Personal {
        event_type: chat::event_types::RESTORED,
        subject: Subject::StreamOwner,
        fields: &[&["title"]],
    },
    Personal {
        event_type: chat::event_types::MESSAGE_RESTORED,
        subject: Subject::StreamOwner,
        fields: &[&["content"], &["attachments"]],
    },
    Personal {
        event_type: document::event_types::UPLOADED,
        subject: Subject::Field("owner"),
        fields: &[&["filename"], &["objectKey"]],
    },
    Personal {
        event_type: document::event_types::CHUNKS_RECORDED,
        subject: Subject::StreamOwner,
        fields: &[&["chunks"]],
    },
    Personal {
        event_type: sources::SOURCES_RECORDED,
        subject: Subject::Field("owner"),
        fields: &[&["sources"]],
    },
    Personal {
        event_type: credits::event_types::ADJUSTED,
        subject: Subject::Field("user"),
        fields: &[&["reason"]],
    },
    Personal {
        event_type: billing::event_types::RECEIVED,
        subject: Subject::FieldIfPresent("userId"),
        fields: &[&["payload"]],
    },
    Personal {
        event_type: billing_account::event_types::INVOICE_RECORDED,
        subject: Subject::Field("userId"),
        fields: &[
            &["invoice", "hostedInvoiceUrl"],
            &["invoice", "description"],
        ],
    },
];

/// The personal fields of `event_type`, if it has any.
pub fn personal(event_type: &str) -> Option<&'static Personal> {
    PERSONAL.iter().find(|p| p.event_type == event_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventSchema;

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    /// Every listed field path exists in a real payload of its type, so a renamed field cannot
    /// silently fall out of encryption; and every subject field holds a user id.
    #[test]
    fn every_listed_field_exists_in_its_events_payload() {
        use uuid::Uuid;
        let u = Uuid::from_u128(1);
        fn stored(e: &impl EventSchema) -> (&'static str, serde_json::Value) {
            (e.event_type(), e.to_payload())
        }
        let samples = vec![
            stored(&account::AccountEvent::Registered(
                account::AccountRegistered {
                    user_id: u,
                    email: account::Email::parse("a@b.io").unwrap(),
                    name: account::DisplayName::parse("A").unwrap(),
                    password_hash: "h".into(),
                    role: account::AccountRole::User,
                    at: at(),
                },
            )),
            stored(&account::AccountEvent::ProfileUpdated(
                account::ProfileUpdated {
                    user_id: u,
                    name: Some(account::DisplayName::parse("B").unwrap()),
                    email: Some(account::Email::parse("b@b.io").unwrap()),
                    at: at(),
                },
            )),
            stored(&account::AccountEvent::ImageChanged(
                account::ImageChanged {
                    user_id: u,
                    image_url: "/i".into(),
                    at: at(),
                },
            )),
            stored(&chat::ChatEvent::Created(chat::ChatCreated {
                chat_id: u,
                owner: u,
                title: crate::ChatTitle::parse("t").unwrap(),
                at: at(),
            })),
            stored(&chat::ChatEvent::Renamed(chat::ChatRenamed {
                chat_id: u,
                title: crate::ChatTitle::parse("t").unwrap(),
                at: at(),
            })),
            stored(&chat::ChatEvent::MessageEdited(chat::MessageEdited {
                chat_id: u,
                message_id: u,
                content: Some(crate::MessageContent::parse("c").unwrap()),
                kind: None,
                at: at(),
            })),
            stored(&chat::ChatEvent::AttachmentAdded(chat::AttachmentAdded {
                chat_id: u,
                message_id: u,
                attachment_id: u,
                file_type: "image".into(),
                file_path: "/p".into(),
                at: at(),
            })),
            stored(&chat::ChatEvent::Restored(chat::ChatRestored {
                chat_id: u,
                owner: u,
                title: crate::ChatTitle::parse("t").unwrap(),
                created_at: at(),
                updated_at: at(),
                last_activity_at: at(),
                at: at(),
            })),
            stored(&chat::ChatEvent::MessageRestored(chat::MessageRestored {
                chat_id: u,
                message_id: u,
                author: u,
                role: crate::Role::User,
                content: crate::MessageContent::parse("c").unwrap(),
                kind: crate::MessageKind::Text,
                sent_at: at(),
                updated_at: at(),
                attachments: vec![chat::AttachmentState {
                    attachment_id: u,
                    file_type: "image".into(),
                    file_path: "/p".into(),
                    at: at(),
                }],
                at: at(),
            })),
            stored(&document::DocumentEvent::ChunksRecorded(
                document::ChunksRecorded {
                    document_id: u,
                    total: 0,
                    chunks: vec![],
                    at: at(),
                },
            )),
            stored(&billing::StripeEventEvent::Received(
                billing::StripeEventReceived {
                    event_id: "evt_1".into(),
                    event_type: "invoice.paid".into(),
                    created: at(),
                    payload: serde_json::json!({"id": "evt_1"}),
                    user_id: Some(u),
                    at: at(),
                },
            )),
        ];
        for (event_type, payload) in samples {
            let rule = personal(event_type).expect("listed");
            for path in rule.fields {
                let mut v = &payload;
                for key in *path {
                    v = v
                        .get(key)
                        .unwrap_or_else(|| panic!("{event_type}: {path:?}"));
                }
            }
            if let Subject::Field(f) | Subject::FieldIfPresent(f) = rule.subject {
                let id = payload[f].as_str().expect("subject field");
                assert!(id.parse::<Uuid>().is_ok(), "{event_type}.{f}");
            }
        }
        assert!(personal(chat::event_types::DELETED).is_none());
    }
}
