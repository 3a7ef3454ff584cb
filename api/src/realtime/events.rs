//! What realtime clients are told: seed 000's events (`message:sent`, `message:updated`,
//! `message:deleted`, `chat:updated`, `chat:deleted`) with exactly its payload shapes, mapped
//! from the chat events of the log (a restored chat is `chat:updated`, a restored message
//! `message:sent` again); and `document:updated` `{id, status, chunks, error}`
//! (seed 003) when a document's status changes.

use chrono::{DateTime, Utc};
use confab_domain::chat::{ChatEvent, event_types as chat_types};
use confab_domain::document::{Document, DocumentEvent, event_types as document_types};
use confab_domain::session::{SessionEvent, event_types as session_types};
use confab_domain::{EventSchema, UpcastError};
use confab_eventstore::RecordedEvent;
use serde_json::{Value, json};
use uuid::Uuid;

/// The event names of seed 000.
pub mod names {
    /// A message was created: `{id, content, type, userId, createdAt}`.
    pub const MESSAGE_SENT: &str = "message:sent";
    /// A message changed: `{id, updates: {content?, type?}}`.
    pub const MESSAGE_UPDATED: &str = "message:updated";
    /// A message was removed: the message id, as a JSON string.
    pub const MESSAGE_DELETED: &str = "message:deleted";
    /// A chat's details changed: `{id, title, createdAt, updatedAt}`, as `PUT /api/chats/{id}`
    /// answers.
    pub const CHAT_UPDATED: &str = "chat:updated";
    /// A chat was removed: the chat id, as a JSON string.
    pub const CHAT_DELETED: &str = "chat:deleted";
    /// A document's status changed: `{id, status, chunks, error}`.
    pub const DOCUMENT_UPDATED: &str = "document:updated";
}

/// One event for the clients of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeEvent {
    /// The global log position of the event it comes from: its id for SSE resumption.
    pub id: u64,
    /// The chat's owner: the only user whose clients receive it.
    pub user: Uuid,
    /// The chat it is about (for `document:updated`, the document: it reaches the user's
    /// channel, never a chat's).
    pub chat: Uuid,
    /// One of [`names`].
    pub name: &'static str,
    /// The payload, as JSON text (serialised once, sent to every client).
    pub data: String,
}

/// What the realtime side needs to know about a chat that the later events of the chat do not
/// carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatInfo {
    /// Who owns it (only the owner ever acts on a chat).
    pub owner: Uuid,
    /// When it was created (the `createdAt` of `chat:updated`).
    pub created_at: DateTime<Utc>,
}

/// A log event, as far as realtime is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A chat event: the chat it belongs to, and the event.
    Chat(Uuid, ChatEvent),
    /// A session was signed out: its connections must close.
    SessionRevoked {
        /// The session's user.
        user: Uuid,
        /// The session.
        session: Uuid,
    },
    /// A document's status changed: the document, at the stream version of the event.
    Document {
        /// The document.
        document: Uuid,
        /// The version of the event in the document's stream.
        version: u64,
    },
    /// The user was erased: their connections must close.
    UserErased {
        /// The user.
        user: Uuid,
    },
    /// Nothing realtime clients are told about.
    Ignored,
}

/// Decodes (and upcasts) the events realtime cares about; everything else is `Ignored`.
pub fn decode(event: &RecordedEvent) -> Result<Decoded, UpcastError> {
    let t = event.event_type.as_str();
    if chat_types::ALL.contains(&t) {
        let e = ChatEvent::from_stored(t, event.schema_version, event.payload.clone())?;
        return Ok(Decoded::Chat(chat_of(&e), e));
    }
    if matches!(
        t,
        document_types::UPLOADED
            | document_types::READY
            | document_types::FAILED
            | document_types::PROCESSING_REQUESTED
    ) {
        let e = DocumentEvent::from_stored(t, event.schema_version, event.payload.clone())?;
        let document = match e {
            DocumentEvent::Uploaded(u) => u.document_id,
            DocumentEvent::Ready(r) => r.document_id,
            DocumentEvent::Failed(f) => f.document_id,
            DocumentEvent::ProcessingRequested(p) => p.document_id,
            DocumentEvent::ChunksRecorded(c) => c.document_id,
            DocumentEvent::Deleted(d) => d.document_id,
        };
        return Ok(Decoded::Document {
            document,
            version: event.version,
        });
    }
    if t == confab_domain::account::event_types::USER_ERASED
        && let Some(user) = event
            .payload
            .get("userId")
            .and_then(|u| u.as_str())
            .and_then(|u| u.parse().ok())
    {
        return Ok(Decoded::UserErased { user });
    }
    if t == session_types::SESSION_REVOKED
        && let SessionEvent::Revoked(r) =
            SessionEvent::from_stored(t, event.schema_version, event.payload.clone())?
    {
        return Ok(Decoded::SessionRevoked {
            user: r.user_id,
            session: r.session_id,
        });
    }
    Ok(Decoded::Ignored)
}

/// The chat a chat event belongs to.
pub fn chat_of(e: &ChatEvent) -> Uuid {
    match e {
        ChatEvent::Created(c) => c.chat_id,
        ChatEvent::Renamed(c) => c.chat_id,
        ChatEvent::Deleted(c) => c.chat_id,
        ChatEvent::MessageSent(m) => m.chat_id,
        ChatEvent::MessageEdited(m) => m.chat_id,
        ChatEvent::MessageDeleted(m) => m.chat_id,
        ChatEvent::AttachmentAdded(a) => a.chat_id,
        ChatEvent::Restored(c) => c.chat_id,
        ChatEvent::MessageRestored(m) => m.chat_id,
    }
}

/// What a `chat.created` event says about its chat.
pub fn chat_info(e: &ChatEvent) -> Option<ChatInfo> {
    match e {
        ChatEvent::Created(c) => Some(ChatInfo {
            owner: c.owner,
            created_at: c.at,
        }),
        _ => None,
    }
}

/// The realtime event a chat event at log position `id` becomes, for the owner `info` names;
/// `None` for chat events clients are not told about (creation, attachments).
pub fn to_realtime(id: u64, e: &ChatEvent, info: &ChatInfo) -> Option<RealtimeEvent> {
    let (name, data): (&'static str, Value) = match e {
        ChatEvent::MessageSent(m) => (
            names::MESSAGE_SENT,
            json!({
                "id": m.message_id,
                "content": m.content.as_str(),
                "type": m.kind.as_str(),
                "userId": m.author,
                "createdAt": m.at,
            }),
        ),
        ChatEvent::MessageEdited(m) => {
            let mut updates = serde_json::Map::new();
            if let Some(c) = &m.content {
                updates.insert("content".into(), c.as_str().into());
            }
            if let Some(k) = &m.kind {
                updates.insert("type".into(), k.as_str().into());
            }
            (
                names::MESSAGE_UPDATED,
                json!({ "id": m.message_id, "updates": updates }),
            )
        }
        ChatEvent::MessageDeleted(m) => (names::MESSAGE_DELETED, json!(m.message_id)),
        ChatEvent::Renamed(r) => (
            names::CHAT_UPDATED,
            json!({
                "id": r.chat_id,
                "title": r.title.as_str(),
                "createdAt": info.created_at,
                "updatedAt": r.at,
            }),
        ),
        ChatEvent::Deleted(d) => (names::CHAT_DELETED, json!(d.chat_id)),
        // A restoration is told as the chat reappearing with its details, and each message as
        // sent again, so that seed 000's clients show them back without knowing of restores.
        ChatEvent::Restored(r) => (
            names::CHAT_UPDATED,
            json!({
                "id": r.chat_id,
                "title": r.title.as_str(),
                "createdAt": r.created_at,
                "updatedAt": r.updated_at,
            }),
        ),
        ChatEvent::MessageRestored(m) => (
            names::MESSAGE_SENT,
            json!({
                "id": m.message_id,
                "content": m.content.as_str(),
                "type": m.kind.as_str(),
                "userId": m.author,
                "createdAt": m.sent_at,
            }),
        ),
        ChatEvent::Created(_) | ChatEvent::AttachmentAdded(_) => return None,
    };
    Some(RealtimeEvent {
        id,
        user: info.owner,
        chat: chat_of(e),
        name,
        data: data.to_string(),
    })
}

/// `document:updated` for `doc` as it stood after an event at log position `id`.
pub fn document_updated(id: u64, document: Uuid, doc: &Document) -> Option<RealtimeEvent> {
    let owner = doc.owner()?;
    Some(RealtimeEvent {
        id,
        user: owner,
        chat: document,
        name: names::DOCUMENT_UPDATED,
        data: json!({
            "id": document,
            "status": doc.status.as_str(),
            "chunks": doc.chunks,
            "error": doc.error,
        })
        .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_domain::chat::{
        ChatCreated, ChatDeleted, ChatRenamed, MessageDeleted, MessageEdited, MessageSent,
    };
    use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
    use confab_eventstore::EventMetadata;

    fn at() -> DateTime<Utc> {
        "2026-03-01T10:00:00.123456Z".parse().unwrap()
    }

    fn info() -> ChatInfo {
        ChatInfo {
            owner: Uuid::from_u128(1),
            created_at: "2026-02-01T09:00:00Z".parse().unwrap(),
        }
    }

    fn payload(e: &ChatEvent) -> (&'static str, Value) {
        let r = to_realtime(42, e, &info()).expect("a realtime event");
        assert_eq!((r.id, r.user, r.chat), (42, info().owner, chat_of(e)));
        (r.name, serde_json::from_str(&r.data).unwrap())
    }

    const CHAT: Uuid = Uuid::from_u128(7);
    const MSG: Uuid = Uuid::from_u128(8);

    #[test]
    fn a_sent_message_has_exactly_the_seed_shape() {
        let e = ChatEvent::MessageSent(MessageSent {
            chat_id: CHAT,
            message_id: MSG,
            author: Uuid::from_u128(1),
            role: Role::User,
            content: MessageContent::parse("hello").unwrap(),
            kind: MessageKind::parse("code").unwrap(),
            at: at(),
        });
        assert_eq!(
            payload(&e),
            (
                "message:sent",
                json!({
                    "id": MSG, "content": "hello", "type": "code",
                    "userId": Uuid::from_u128(1), "createdAt": "2026-03-01T10:00:00.123456Z",
                })
            )
        );
    }

    #[test]
    fn an_edit_lists_only_what_changed() {
        let edit = |content: Option<&str>, kind: Option<&str>| {
            ChatEvent::MessageEdited(MessageEdited {
                chat_id: CHAT,
                message_id: MSG,
                content: content.map(|c| MessageContent::parse(c).unwrap()),
                kind: kind.map(|k| MessageKind::parse(k).unwrap()),
                at: at(),
            })
        };
        assert_eq!(
            payload(&edit(Some("new"), None)),
            (
                "message:updated",
                json!({ "id": MSG, "updates": { "content": "new" } })
            )
        );
        assert_eq!(
            payload(&edit(None, Some("image"))).1,
            json!({ "id": MSG, "updates": { "type": "image" } })
        );
        assert_eq!(
            payload(&edit(Some("x"), Some("text"))).1,
            json!({ "id": MSG, "updates": { "content": "x", "type": "text" } })
        );
    }

    #[test]
    fn deletions_carry_the_bare_id_as_a_json_string() {
        let m = ChatEvent::MessageDeleted(MessageDeleted {
            chat_id: CHAT,
            message_id: MSG,
            at: at(),
        });
        assert_eq!(payload(&m), ("message:deleted", json!(MSG.to_string())));
        let c = ChatEvent::Deleted(ChatDeleted {
            chat_id: CHAT,
            at: at(),
        });
        assert_eq!(payload(&c), ("chat:deleted", json!(CHAT.to_string())));
    }

    #[test]
    fn a_rename_is_a_chat_update_with_the_chat_details() {
        let e = ChatEvent::Renamed(ChatRenamed {
            chat_id: CHAT,
            title: ChatTitle::parse("Renamed").unwrap(),
            at: at(),
        });
        assert_eq!(
            payload(&e),
            (
                "chat:updated",
                json!({
                    "id": CHAT, "title": "Renamed",
                    "createdAt": "2026-02-01T09:00:00Z", "updatedAt": "2026-03-01T10:00:00.123456Z",
                })
            )
        );
    }

    #[test]
    fn creation_is_remembered_but_not_announced() {
        let e = ChatEvent::Created(ChatCreated {
            chat_id: CHAT,
            owner: Uuid::from_u128(1),
            title: ChatTitle::parse("t").unwrap(),
            at: info().created_at,
        });
        assert_eq!(chat_info(&e), Some(info()));
        assert_eq!(to_realtime(1, &e, &info()), None);
    }

    #[test]
    fn only_chat_events_and_sign_outs_are_decoded() {
        let recorded = |t: &str, payload: Value| RecordedEvent {
            event_id: Uuid::now_v7(),
            stream: "s".into(),
            version: 1,
            position: 5,
            event_type: t.into(),
            schema_version: 1,
            payload,
            metadata: EventMetadata::default(),
            recorded_at: Utc::now(),
        };
        let user = Uuid::from_u128(1);
        let session = Uuid::from_u128(2);
        let revoked = recorded(
            "account.session_revoked",
            json!({ "userId": user, "sessionId": session, "at": at() }),
        );
        assert_eq!(
            decode(&revoked).unwrap(),
            Decoded::SessionRevoked { user, session }
        );
        let deleted = recorded("chat.deleted", json!({ "chatId": CHAT, "at": at() }));
        assert!(
            matches!(decode(&deleted).unwrap(), Decoded::Chat(c, ChatEvent::Deleted(_)) if c == CHAT)
        );
        let other = recorded("settings.updated", json!({}));
        assert_eq!(decode(&other).unwrap(), Decoded::Ignored);
        assert!(decode(&recorded("chat.deleted", json!({ "nope": 1 }))).is_err());
    }
}
