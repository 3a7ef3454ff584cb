//! The chat aggregate: a chat, its owner, title and messages.
//!
//! Rules: only the owner acts on a chat (anyone else is told it does not exist); only a message's
//! author edits or deletes it; a deleted chat accepts nothing more, and its messages vanish with it.

use crate::schema::parse;
use crate::{Aggregate, ChatTitle, MessageContent, MessageKind, Role, UpcastError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// What can be asked of a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatCommand {
    /// Start a new chat.
    Create {
        /// The new chat's id.
        chat_id: Uuid,
        /// The user who owns it.
        owner: Uuid,
        /// Its title.
        title: ChatTitle,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Change the title.
    Rename {
        /// Who asks.
        actor: Uuid,
        /// The new title.
        title: ChatTitle,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Delete the chat and, with it, every message.
    Delete {
        /// Who asks.
        actor: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Add a message.
    SendMessage {
        /// The new message's id.
        message_id: Uuid,
        /// Who asks (the chat's owner; assistant replies are sent on the owner's behalf).
        actor: Uuid,
        /// Who speaks.
        role: Role,
        /// The text.
        content: MessageContent,
        /// Text, code or image.
        kind: MessageKind,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Change a message's content or kind.
    EditMessage {
        /// The message.
        message_id: Uuid,
        /// Who asks (must be the author).
        actor: Uuid,
        /// New content, if it changes.
        content: Option<MessageContent>,
        /// New kind, if it changes.
        kind: Option<MessageKind>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Attach a file reference to a message.
    AddAttachment {
        /// The message.
        message_id: Uuid,
        /// The new attachment's id.
        attachment_id: Uuid,
        /// Who asks (must be the message's author).
        actor: Uuid,
        /// Its media type, e.g. `image/png`.
        file_type: String,
        /// Where the file is.
        file_path: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Remove a message.
    DeleteMessage {
        /// The message.
        message_id: Uuid,
        /// Who asks (must be the author).
        actor: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why a chat command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// No such chat, it was deleted, or it belongs to someone else.
    #[error("chat not found")]
    ChatNotFound,
    /// A chat with this id already exists.
    #[error("chat already exists")]
    ChatAlreadyExists,
    /// No such message in this chat, or it was deleted.
    #[error("message not found")]
    MessageNotFound,
    /// A message with this id already exists.
    #[error("message already exists")]
    MessageAlreadyExists,
    /// Only a message's author may change it.
    #[error("only the author may change this message")]
    NotMessageAuthor,
    /// An edit that changes nothing.
    #[error("nothing to change")]
    NothingToChange,
}

/// A chat was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatCreated {
    /// The chat.
    pub chat_id: Uuid,
    /// Its owner.
    pub owner: Uuid,
    /// Its title.
    pub title: ChatTitle,
    /// When.
    pub at: DateTime<Utc>,
}

/// A chat was renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatRenamed {
    /// The chat.
    pub chat_id: Uuid,
    /// The new title.
    pub title: ChatTitle,
    /// When.
    pub at: DateTime<Utc>,
}

/// A chat was deleted, and its messages with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatDeleted {
    /// The chat.
    pub chat_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

/// A message was added (schema version 2: adds `role`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSent {
    /// The chat.
    pub chat_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// The user the message belongs to (the chat's owner).
    pub author: Uuid,
    /// Who speaks.
    pub role: Role,
    /// The text.
    pub content: MessageContent,
    /// Text, code or image.
    pub kind: MessageKind,
    /// When.
    pub at: DateTime<Utc>,
}

/// Schema version 1 of `chat.message_sent`, from before roles (seed 000's shape): every message
/// was the user's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSentV1 {
    chat_id: Uuid,
    message_id: Uuid,
    author: Uuid,
    content: MessageContent,
    kind: MessageKind,
    at: DateTime<Utc>,
}

/// A message's content or kind changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEdited {
    /// The chat.
    pub chat_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// The new content, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// The new kind, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MessageKind>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A file reference was attached to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentAdded {
    /// The chat.
    pub chat_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// The attachment.
    pub attachment_id: Uuid,
    /// Media type.
    pub file_type: String,
    /// Where the file is.
    pub file_path: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A message was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeleted {
    /// The chat.
    pub chat_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of chat events.
    pub mod event_types;

    /// Everything a chat records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ChatEvent {
        /// A chat was created.
        #[event(CREATED = "chat.created", version = 1)]
        Created(ChatCreated),
        /// A chat was renamed.
        #[event(RENAMED = "chat.renamed", version = 1)]
        Renamed(ChatRenamed),
        /// A chat was deleted.
        #[event(DELETED = "chat.deleted", version = 1)]
        Deleted(ChatDeleted),
        /// A message was sent.
        #[event(MESSAGE_SENT = "chat.message_sent", version = 2, upcast(1 => message_sent_v1))]
        MessageSent(MessageSent),
        /// A message was edited.
        #[event(MESSAGE_EDITED = "chat.message_edited", version = 1)]
        MessageEdited(MessageEdited),
        /// A message was deleted.
        #[event(MESSAGE_DELETED = "chat.message_deleted", version = 1)]
        MessageDeleted(MessageDeleted),
        /// A file was attached to a message.
        #[event(ATTACHMENT_ADDED = "chat.attachment_added", version = 1)]
        AttachmentAdded(AttachmentAdded),
    }
}

/// Reads a version 1 `chat.message_sent`: from before roles, every message was the user's own.
fn message_sent_v1(payload: serde_json::Value) -> Result<MessageSent, UpcastError> {
    let v1: MessageSentV1 = parse(event_types::MESSAGE_SENT, payload)?;
    Ok(MessageSent {
        chat_id: v1.chat_id,
        message_id: v1.message_id,
        author: v1.author,
        role: Role::User,
        content: v1.content,
        kind: v1.kind,
        at: v1.at,
    })
}

/// Where a chat is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatStatus {
    /// Not created yet.
    #[default]
    Absent,
    /// Live.
    Active,
    /// Deleted; accepts nothing more.
    Deleted,
}

/// What the chat needs to remember about one message to decide.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageState {
    /// The user it belongs to.
    pub author: Uuid,
    /// Current content.
    pub content: MessageContent,
    /// Current kind.
    pub kind: MessageKind,
    /// Whether it was deleted.
    pub deleted: bool,
}

/// The chat aggregate's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chat {
    /// Life cycle.
    pub status: ChatStatus,
    /// The chat's id, once created.
    pub id: Option<Uuid>,
    /// Its owner, once created.
    pub owner: Option<Uuid>,
    /// Its title.
    pub title: Option<ChatTitle>,
    /// Its messages by id, deleted ones included (ids are never reused).
    pub messages: HashMap<Uuid, MessageState>,
}

impl Chat {
    /// The chat's id, if `actor` may act on it.
    fn owned_by(&self, actor: Uuid) -> Result<Uuid, ChatError> {
        match (self.status, self.id, self.owner) {
            (ChatStatus::Active, Some(id), Some(owner)) if owner == actor => Ok(id),
            _ => Err(ChatError::ChatNotFound),
        }
    }

    fn live_message(&self, id: Uuid, actor: Uuid) -> Result<&MessageState, ChatError> {
        match self.messages.get(&id) {
            Some(m) if !m.deleted => {
                if m.author == actor {
                    Ok(m)
                } else {
                    Err(ChatError::NotMessageAuthor)
                }
            }
            _ => Err(ChatError::MessageNotFound),
        }
    }
}

impl Aggregate for Chat {
    type Id = Uuid;
    type Command = ChatCommand;
    type Event = ChatEvent;
    type Error = ChatError;

    fn stream_name(id: &Uuid) -> String {
        format!("chat-{id}")
    }

    fn decide(&self, command: ChatCommand) -> Result<Vec<ChatEvent>, ChatError> {
        match command {
            ChatCommand::Create {
                chat_id,
                owner,
                title,
                at,
            } => {
                if self.status != ChatStatus::Absent {
                    return Err(ChatError::ChatAlreadyExists);
                }
                Ok(vec![ChatEvent::Created(ChatCreated {
                    chat_id,
                    owner,
                    title,
                    at,
                })])
            }
            ChatCommand::Rename { actor, title, at } => {
                let chat_id = self.owned_by(actor)?;
                if self.title.as_ref() == Some(&title) {
                    return Ok(vec![]);
                }
                Ok(vec![ChatEvent::Renamed(ChatRenamed { chat_id, title, at })])
            }
            ChatCommand::Delete { actor, at } => {
                let chat_id = self.owned_by(actor)?;
                Ok(vec![ChatEvent::Deleted(ChatDeleted { chat_id, at })])
            }
            ChatCommand::SendMessage {
                message_id,
                actor,
                role,
                content,
                kind,
                at,
            } => {
                let chat_id = self.owned_by(actor)?;
                if self.messages.contains_key(&message_id) {
                    return Err(ChatError::MessageAlreadyExists);
                }
                Ok(vec![ChatEvent::MessageSent(MessageSent {
                    chat_id,
                    message_id,
                    author: actor,
                    role,
                    content,
                    kind,
                    at,
                })])
            }
            ChatCommand::EditMessage {
                message_id,
                actor,
                content,
                kind,
                at,
            } => {
                let chat_id = self.owned_by(actor)?;
                let current = self.live_message(message_id, actor)?;
                let content = content.filter(|c| *c != current.content);
                let kind = kind.filter(|k| *k != current.kind);
                if content.is_none() && kind.is_none() {
                    return Err(ChatError::NothingToChange);
                }
                Ok(vec![ChatEvent::MessageEdited(MessageEdited {
                    chat_id,
                    message_id,
                    content,
                    kind,
                    at,
                })])
            }
            ChatCommand::AddAttachment {
                message_id,
                attachment_id,
                actor,
                file_type,
                file_path,
                at,
            } => {
                let chat_id = self.owned_by(actor)?;
                self.live_message(message_id, actor)?;
                Ok(vec![ChatEvent::AttachmentAdded(AttachmentAdded {
                    chat_id,
                    message_id,
                    attachment_id,
                    file_type,
                    file_path,
                    at,
                })])
            }
            ChatCommand::DeleteMessage {
                message_id,
                actor,
                at,
            } => {
                let chat_id = self.owned_by(actor)?;
                self.live_message(message_id, actor)?;
                Ok(vec![ChatEvent::MessageDeleted(MessageDeleted {
                    chat_id,
                    message_id,
                    at,
                })])
            }
        }
    }

    fn evolve(mut self, event: &ChatEvent) -> Self {
        match event {
            ChatEvent::Created(e) => {
                self.status = ChatStatus::Active;
                self.id = Some(e.chat_id);
                self.owner = Some(e.owner);
                self.title = Some(e.title.clone());
            }
            ChatEvent::Renamed(e) => self.title = Some(e.title.clone()),
            ChatEvent::Deleted(_) => self.status = ChatStatus::Deleted,
            ChatEvent::MessageSent(e) => {
                self.messages.insert(
                    e.message_id,
                    MessageState {
                        author: e.author,
                        content: e.content.clone(),
                        kind: e.kind,
                        deleted: false,
                    },
                );
            }
            ChatEvent::MessageEdited(e) => {
                if let Some(m) = self.messages.get_mut(&e.message_id) {
                    if let Some(c) = &e.content {
                        m.content = c.clone();
                    }
                    if let Some(k) = e.kind {
                        m.kind = k;
                    }
                }
            }
            ChatEvent::MessageDeleted(e) => {
                if let Some(m) = self.messages.get_mut(&e.message_id) {
                    m.deleted = true;
                }
            }
            ChatEvent::AttachmentAdded(_) => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventSchema;
    use crate::testing::given;
    use chrono::TimeZone;

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, s).unwrap()
    }
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    const CHAT: u128 = 1;
    const ALICE: u128 = 10;
    const BOB: u128 = 11;
    const M1: u128 = 100;

    fn title(s: &str) -> ChatTitle {
        ChatTitle::parse(s).unwrap()
    }
    fn content(s: &str) -> MessageContent {
        MessageContent::parse(s).unwrap()
    }
    fn created() -> ChatEvent {
        ChatEvent::Created(ChatCreated {
            chat_id: id(CHAT),
            owner: id(ALICE),
            title: title("Plans"),
            at: at(0),
        })
    }
    fn sent(by: u128) -> ChatEvent {
        ChatEvent::MessageSent(MessageSent {
            chat_id: id(CHAT),
            message_id: id(M1),
            author: id(by),
            role: Role::User,
            content: content("hello"),
            kind: MessageKind::Text,
            at: at(1),
        })
    }
    fn send(by: u128) -> ChatCommand {
        ChatCommand::SendMessage {
            message_id: id(M1),
            actor: id(by),
            role: Role::User,
            content: content("hello"),
            kind: MessageKind::Text,
            at: at(1),
        }
    }
    fn edit(by: u128, c: Option<&str>, k: Option<MessageKind>) -> ChatCommand {
        ChatCommand::EditMessage {
            message_id: id(M1),
            actor: id(by),
            content: c.map(content),
            kind: k,
            at: at(2),
        }
    }

    #[test]
    fn creating_a_new_chat_records_it() {
        given::<Chat>([])
            .when(ChatCommand::Create {
                chat_id: id(CHAT),
                owner: id(ALICE),
                title: title("Plans"),
                at: at(0),
            })
            .then([created()]);
    }

    #[test]
    fn creating_a_chat_twice_is_refused() {
        given::<Chat>([created()])
            .when(ChatCommand::Create {
                chat_id: id(CHAT),
                owner: id(BOB),
                title: title("Other"),
                at: at(0),
            })
            .then_error(ChatError::ChatAlreadyExists);
    }

    #[test]
    fn the_owner_sends_a_message() {
        let state = given::<Chat>([created()])
            .when(send(ALICE))
            .then([sent(ALICE)]);
        assert_eq!(state.messages.len(), 1);
    }

    #[test]
    fn sending_to_another_users_chat_looks_like_a_missing_chat() {
        given::<Chat>([created()])
            .when(send(BOB))
            .then_error(ChatError::ChatNotFound);
    }

    #[test]
    fn sending_to_a_missing_chat_is_refused() {
        given::<Chat>([])
            .when(send(ALICE))
            .then_error(ChatError::ChatNotFound);
    }

    #[test]
    fn a_message_id_is_never_reused() {
        given::<Chat>([created(), sent(ALICE)])
            .when(send(ALICE))
            .then_error(ChatError::MessageAlreadyExists);
    }

    #[test]
    fn the_author_edits_only_what_changes() {
        given::<Chat>([created(), sent(ALICE)])
            .when(edit(ALICE, Some("hello"), Some(MessageKind::Code)))
            .then([ChatEvent::MessageEdited(MessageEdited {
                chat_id: id(CHAT),
                message_id: id(M1),
                content: None,
                kind: Some(MessageKind::Code),
                at: at(2),
            })]);
    }

    #[test]
    fn an_edit_that_changes_nothing_is_refused() {
        given::<Chat>([created(), sent(ALICE)])
            .when(edit(ALICE, Some("hello"), None))
            .then_error(ChatError::NothingToChange);
    }

    #[test]
    fn only_the_author_edits_a_message() {
        // Bob cannot even see Alice's chat.
        given::<Chat>([created(), sent(ALICE)])
            .when(edit(BOB, Some("mine now"), None))
            .then_error(ChatError::ChatNotFound);
        // A message recorded under another author (e.g. before an ownership change) stays theirs.
        given::<Chat>([created(), sent(BOB)])
            .when(edit(ALICE, Some("x"), None))
            .then_error(ChatError::NotMessageAuthor);
    }

    #[test]
    fn a_deleted_message_cannot_be_edited_or_deleted_again() {
        let deleted = ChatEvent::MessageDeleted(MessageDeleted {
            chat_id: id(CHAT),
            message_id: id(M1),
            at: at(3),
        });
        given::<Chat>([created(), sent(ALICE), deleted.clone()])
            .when(edit(ALICE, Some("again"), None))
            .then_error(ChatError::MessageNotFound);
        given::<Chat>([created(), sent(ALICE), deleted])
            .when(ChatCommand::DeleteMessage {
                message_id: id(M1),
                actor: id(ALICE),
                at: at(4),
            })
            .then_error(ChatError::MessageNotFound);
    }

    #[test]
    fn a_deleted_chat_accepts_nothing() {
        let deleted = ChatEvent::Deleted(ChatDeleted {
            chat_id: id(CHAT),
            at: at(5),
        });
        given::<Chat>([created(), deleted.clone()])
            .when(send(ALICE))
            .then_error(ChatError::ChatNotFound);
        given::<Chat>([created(), deleted])
            .when(ChatCommand::Rename {
                actor: id(ALICE),
                title: title("New"),
                at: at(6),
            })
            .then_error(ChatError::ChatNotFound);
    }

    #[test]
    fn renaming_to_the_same_title_records_nothing() {
        given::<Chat>([created()])
            .when(ChatCommand::Rename {
                actor: id(ALICE),
                title: title("Plans"),
                at: at(6),
            })
            .then([]);
    }

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        let events = vec![
            created(),
            sent(ALICE),
            ChatEvent::Renamed(ChatRenamed {
                chat_id: id(CHAT),
                title: title("T"),
                at: at(1),
            }),
            ChatEvent::MessageEdited(MessageEdited {
                chat_id: id(CHAT),
                message_id: id(M1),
                content: Some(content("x")),
                kind: None,
                at: at(2),
            }),
            ChatEvent::MessageDeleted(MessageDeleted {
                chat_id: id(CHAT),
                message_id: id(M1),
                at: at(3),
            }),
            ChatEvent::Deleted(ChatDeleted {
                chat_id: id(CHAT),
                at: at(4),
            }),
        ];
        for e in events {
            let back =
                ChatEvent::from_stored(e.event_type(), e.schema_version(), e.to_payload()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn a_version_1_message_is_upcast_to_a_user_message() {
        let v1 = serde_json::json!({
            "chatId": id(CHAT), "messageId": id(M1), "author": id(ALICE),
            "content": "hello", "kind": "text", "at": at(1),
        });
        let e = ChatEvent::from_stored(event_types::MESSAGE_SENT, 1, v1).unwrap();
        assert_eq!(e, sent(ALICE));
    }

    #[test]
    fn unknown_types_versions_and_bad_payloads_are_typed_errors() {
        assert_eq!(
            ChatEvent::from_stored("chat.exploded", 1, serde_json::json!({})),
            Err(UpcastError::UnknownType("chat.exploded".into()))
        );
        assert!(matches!(
            ChatEvent::from_stored(event_types::CREATED, 9, serde_json::json!({})),
            Err(UpcastError::UnknownVersion { version: 9, .. })
        ));
        assert!(matches!(
            ChatEvent::from_stored(event_types::CREATED, 1, serde_json::json!({"title": ""})),
            Err(UpcastError::Malformed { .. })
        ));
    }
}
