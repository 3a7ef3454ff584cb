//! The chat aggregate: a chat, its owner, title and messages.
//!
//! Rules: only the owner acts on a chat (anyone else is told it does not exist); only a message's
//! author edits or deletes it; a deleted chat accepts nothing more, and its messages vanish with it.
//! A deletion is undone, within a window the caller passes in, by a compensating event (a chat's
//! restoration brings back the messages that were live when it was deleted); the log keeps every
//! version, so the state at any past time is a fold of the events recorded until then.

use crate::schema::parse;
use crate::{Aggregate, ChatTitle, MessageContent, MessageKind, Role, UpcastError};
use chrono::{DateTime, Duration, Utc};
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
    /// Undo the chat's deletion, with the messages it had then.
    Restore {
        /// Who asks (must be the owner).
        actor: Uuid,
        /// Now.
        at: DateTime<Utc>,
        /// How long after its deletion a chat may still be restored.
        window: Duration,
    },
    /// Undo a message's deletion.
    RestoreMessage {
        /// The message.
        message_id: Uuid,
        /// Who asks (must be the author).
        actor: Uuid,
        /// Now.
        at: DateTime<Utc>,
        /// How long after its deletion a message may still be restored.
        window: Duration,
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
    /// Restoring a chat that is not deleted.
    #[error("the chat is not deleted")]
    ChatNotDeleted,
    /// Restoring a message that is not deleted.
    #[error("the message is not deleted")]
    MessageNotDeleted,
    /// The deletion is older than the restore window.
    #[error(
        "deleted at {deleted_at}, more than {window_days} days ago: it can no longer be restored"
    )]
    RestoreWindowPassed {
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
        /// The window, in whole days.
        window_days: i64,
    },
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

/// A chat's deletion was undone: the chat as it was when deleted (its messages follow, each
/// as a [`MessageRestored`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatRestored {
    /// The chat.
    pub chat_id: Uuid,
    /// Its owner.
    pub owner: Uuid,
    /// Its title.
    pub title: ChatTitle,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed before its deletion.
    pub updated_at: DateTime<Utc>,
    /// Its last activity before its deletion (lists sort by it).
    pub last_activity_at: DateTime<Utc>,
    /// When it was restored.
    pub at: DateTime<Utc>,
}

/// An attachment that comes back with its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentState {
    /// The attachment.
    pub attachment_id: Uuid,
    /// Media type.
    pub file_type: String,
    /// Where the file is.
    pub file_path: String,
    /// When it was attached.
    pub at: DateTime<Utc>,
}

/// A message's deletion was undone (on its own, or with its chat's): the message as it was
/// when deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRestored {
    /// The chat.
    pub chat_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// The user it belongs to.
    pub author: Uuid,
    /// Who speaks.
    pub role: Role,
    /// Its content when deleted.
    pub content: MessageContent,
    /// Its kind when deleted.
    pub kind: MessageKind,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// When it last changed before its deletion.
    pub updated_at: DateTime<Utc>,
    /// Its attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentState>,
    /// When it was restored.
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
        /// A chat's deletion was undone.
        #[event(RESTORED = "chat.restored", version = 1)]
        Restored(ChatRestored),
        /// A message's deletion was undone.
        #[event(MESSAGE_RESTORED = "chat.message_restored", version = 1)]
        MessageRestored(MessageRestored),
    }
}

impl ChatEvent {
    /// When it happened, as the command that recorded it said.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            ChatEvent::Created(e) => e.at,
            ChatEvent::Renamed(e) => e.at,
            ChatEvent::Deleted(e) => e.at,
            ChatEvent::MessageSent(e) => e.at,
            ChatEvent::MessageEdited(e) => e.at,
            ChatEvent::MessageDeleted(e) => e.at,
            ChatEvent::AttachmentAdded(e) => e.at,
            ChatEvent::Restored(e) => e.at,
            ChatEvent::MessageRestored(e) => e.at,
        }
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

/// What the chat remembers about one message: enough to decide, and to restore it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageState {
    /// The user it belongs to.
    pub author: Uuid,
    /// Who speaks.
    pub role: Role,
    /// Current content.
    pub content: MessageContent,
    /// Current kind.
    pub kind: MessageKind,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Its attachments, oldest first.
    pub attachments: Vec<AttachmentState>,
    /// Whether it was deleted.
    pub deleted: bool,
    /// When it was deleted, while it is.
    pub deleted_at: Option<DateTime<Utc>>,
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
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When its title last changed (or it was created).
    pub updated_at: Option<DateTime<Utc>>,
    /// Its creation, last rename or newest message, whichever is latest.
    pub last_activity_at: Option<DateTime<Utc>>,
    /// When it was deleted, while it is.
    pub deleted_at: Option<DateTime<Utc>>,
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

    /// Refuses a restoration `at` of something deleted at `deleted_at` once `window` has passed.
    fn within_window(
        deleted_at: DateTime<Utc>,
        at: DateTime<Utc>,
        window: Duration,
    ) -> Result<(), ChatError> {
        if at - deleted_at > window {
            return Err(ChatError::RestoreWindowPassed {
                deleted_at,
                window_days: window.num_days(),
            });
        }
        Ok(())
    }

    /// The event restoring message `id`, as it was when deleted.
    fn restored(&self, chat_id: Uuid, id: Uuid, m: &MessageState, at: DateTime<Utc>) -> ChatEvent {
        ChatEvent::MessageRestored(MessageRestored {
            chat_id,
            message_id: id,
            author: m.author,
            role: m.role,
            content: m.content.clone(),
            kind: m.kind,
            sent_at: m.sent_at,
            updated_at: m.updated_at,
            attachments: m.attachments.clone(),
            at,
        })
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
            ChatCommand::Restore { actor, at, window } => {
                let (Some(chat_id), Some(owner), Some(title), Some(created_at)) =
                    (self.id, self.owner, self.title.clone(), self.created_at)
                else {
                    return Err(ChatError::ChatNotFound);
                };
                if owner != actor {
                    return Err(ChatError::ChatNotFound);
                }
                let deleted_at = match (self.status, self.deleted_at) {
                    (ChatStatus::Deleted, Some(d)) => d,
                    _ => return Err(ChatError::ChatNotDeleted),
                };
                Self::within_window(deleted_at, at, window)?;
                let mut events = vec![ChatEvent::Restored(ChatRestored {
                    chat_id,
                    owner,
                    title,
                    created_at,
                    updated_at: self.updated_at.unwrap_or(created_at),
                    last_activity_at: self.last_activity_at.unwrap_or(created_at),
                    at,
                })];
                // The messages live when the chat was deleted, in the order they were sent;
                // those deleted before stay deleted (each can be restored on its own).
                let mut live: Vec<_> = self.messages.iter().filter(|(_, m)| !m.deleted).collect();
                live.sort_by_key(|(id, m)| (m.sent_at, **id));
                events.extend(
                    live.into_iter()
                        .map(|(id, m)| self.restored(chat_id, *id, m, at)),
                );
                Ok(events)
            }
            ChatCommand::RestoreMessage {
                message_id,
                actor,
                at,
                window,
            } => {
                let chat_id = self.owned_by(actor)?;
                let m = self
                    .messages
                    .get(&message_id)
                    .ok_or(ChatError::MessageNotFound)?;
                if m.author != actor {
                    return Err(ChatError::NotMessageAuthor);
                }
                let deleted_at = match (m.deleted, m.deleted_at) {
                    (true, Some(d)) => d,
                    _ => return Err(ChatError::MessageNotDeleted),
                };
                Self::within_window(deleted_at, at, window)?;
                Ok(vec![self.restored(chat_id, message_id, m, at)])
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
                self.created_at = Some(e.at);
                self.updated_at = Some(e.at);
                self.last_activity_at = Some(e.at);
            }
            ChatEvent::Renamed(e) => {
                self.title = Some(e.title.clone());
                self.updated_at = Some(e.at);
                self.last_activity_at = Some(e.at);
            }
            ChatEvent::Deleted(e) => {
                self.status = ChatStatus::Deleted;
                self.deleted_at = Some(e.at);
            }
            ChatEvent::Restored(e) => {
                self.status = ChatStatus::Active;
                self.deleted_at = None;
                self.updated_at = Some(e.updated_at);
                self.last_activity_at = Some(e.last_activity_at);
            }
            ChatEvent::MessageSent(e) => {
                self.messages.insert(
                    e.message_id,
                    MessageState {
                        author: e.author,
                        role: e.role,
                        content: e.content.clone(),
                        kind: e.kind,
                        sent_at: e.at,
                        updated_at: e.at,
                        attachments: Vec::new(),
                        deleted: false,
                        deleted_at: None,
                    },
                );
                // As the read model orders chats: the newest message moves the activity.
                if self.last_activity_at.is_none_or(|a| a < e.at) {
                    self.last_activity_at = Some(e.at);
                }
            }
            ChatEvent::MessageEdited(e) => {
                if let Some(m) = self.messages.get_mut(&e.message_id) {
                    if let Some(c) = &e.content {
                        m.content = c.clone();
                    }
                    if let Some(k) = e.kind {
                        m.kind = k;
                    }
                    m.updated_at = e.at;
                }
            }
            ChatEvent::MessageDeleted(e) => {
                if let Some(m) = self.messages.get_mut(&e.message_id) {
                    m.deleted = true;
                    m.deleted_at = Some(e.at);
                }
            }
            ChatEvent::MessageRestored(e) => {
                if let Some(m) = self.messages.get_mut(&e.message_id) {
                    m.deleted = false;
                    m.deleted_at = None;
                }
            }
            ChatEvent::AttachmentAdded(a) => {
                if let Some(m) = self.messages.get_mut(&a.message_id) {
                    m.attachments.push(AttachmentState {
                        attachment_id: a.attachment_id,
                        file_type: a.file_type.clone(),
                        file_path: a.file_path.clone(),
                        at: a.at,
                    });
                }
            }
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

    fn days(n: i64) -> Duration {
        Duration::days(n)
    }
    fn message_deleted(at_s: u32) -> ChatEvent {
        ChatEvent::MessageDeleted(MessageDeleted {
            chat_id: id(CHAT),
            message_id: id(M1),
            at: at(at_s),
        })
    }
    fn chat_deleted(at_s: u32) -> ChatEvent {
        ChatEvent::Deleted(ChatDeleted {
            chat_id: id(CHAT),
            at: at(at_s),
        })
    }
    fn restore_message(by: u128, when: DateTime<Utc>, window: Duration) -> ChatCommand {
        ChatCommand::RestoreMessage {
            message_id: id(M1),
            actor: id(by),
            at: when,
            window,
        }
    }
    fn message_restored(when: DateTime<Utc>) -> ChatEvent {
        ChatEvent::MessageRestored(MessageRestored {
            chat_id: id(CHAT),
            message_id: id(M1),
            author: id(ALICE),
            role: Role::User,
            content: content("hello"),
            kind: MessageKind::Text,
            sent_at: at(1),
            updated_at: at(1),
            attachments: vec![],
            at: when,
        })
    }

    #[test]
    fn a_deleted_message_is_restored_as_it_was_within_the_window() {
        let state = given::<Chat>([created(), sent(ALICE), message_deleted(3)])
            .when(restore_message(ALICE, at(9), days(30)))
            .then([message_restored(at(9))]);
        assert!(!state.messages[&id(M1)].deleted);
    }

    #[test]
    fn restoring_a_message_that_is_not_deleted_is_a_conflict() {
        given::<Chat>([created(), sent(ALICE)])
            .when(restore_message(ALICE, at(9), days(30)))
            .then_error(ChatError::MessageNotDeleted);
        given::<Chat>([created()])
            .when(restore_message(ALICE, at(9), days(30)))
            .then_error(ChatError::MessageNotFound);
    }

    #[test]
    fn a_deletion_older_than_the_window_stays() {
        let late = at(3) + days(30) + Duration::microseconds(1);
        given::<Chat>([created(), sent(ALICE), message_deleted(3)])
            .when(restore_message(ALICE, late, days(30)))
            .then_error(ChatError::RestoreWindowPassed {
                deleted_at: at(3),
                window_days: 30,
            });
        given::<Chat>([created(), sent(ALICE), message_deleted(3)])
            .when(restore_message(ALICE, at(3) + days(30), days(30)))
            .then([message_restored(at(3) + days(30))]);
    }

    #[test]
    fn only_the_owner_restores_and_a_deleted_chat_first() {
        given::<Chat>([created(), sent(ALICE), message_deleted(3)])
            .when(restore_message(BOB, at(9), days(30)))
            .then_error(ChatError::ChatNotFound);
        given::<Chat>([created(), sent(ALICE), chat_deleted(3)])
            .when(restore_message(ALICE, at(9), days(30)))
            .then_error(ChatError::ChatNotFound);
        given::<Chat>([created(), chat_deleted(3)])
            .when(ChatCommand::Restore {
                actor: id(BOB),
                at: at(9),
                window: days(30),
            })
            .then_error(ChatError::ChatNotFound);
        given::<Chat>([created()])
            .when(ChatCommand::Restore {
                actor: id(ALICE),
                at: at(9),
                window: days(30),
            })
            .then_error(ChatError::ChatNotDeleted);
    }

    #[test]
    fn a_restored_chat_brings_back_the_messages_it_had_when_deleted() {
        const M2: u128 = 101;
        let second = ChatEvent::MessageSent(MessageSent {
            chat_id: id(CHAT),
            message_id: id(M2),
            author: id(ALICE),
            role: Role::Assistant,
            content: content("reply"),
            kind: MessageKind::Text,
            at: at(2),
        });
        let removed_first = ChatEvent::MessageDeleted(MessageDeleted {
            chat_id: id(CHAT),
            message_id: id(M2),
            at: at(3),
        });
        let state = given::<Chat>([
            created(),
            sent(ALICE),
            second,
            removed_first,
            chat_deleted(4),
        ])
        .when(ChatCommand::Restore {
            actor: id(ALICE),
            at: at(9),
            window: days(30),
        })
        .then([
            ChatEvent::Restored(ChatRestored {
                chat_id: id(CHAT),
                owner: id(ALICE),
                title: title("Plans"),
                created_at: at(0),
                updated_at: at(0),
                last_activity_at: at(2),
                at: at(9),
            }),
            message_restored(at(9)),
        ]);
        assert_eq!(state.status, ChatStatus::Active);
        assert!(state.messages[&id(M2)].deleted);
        given::<Chat>([created(), chat_deleted(4)])
            .when(ChatCommand::Restore {
                actor: id(ALICE),
                at: at(4) + days(1),
                window: days(0),
            })
            .then_error(ChatError::RestoreWindowPassed {
                deleted_at: at(4),
                window_days: 0,
            });
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
            ChatEvent::Restored(ChatRestored {
                chat_id: id(CHAT),
                owner: id(ALICE),
                title: title("T"),
                created_at: at(0),
                updated_at: at(1),
                last_activity_at: at(2),
                at: at(5),
            }),
            message_restored(at(5)),
            ChatEvent::MessageRestored(MessageRestored {
                attachments: vec![AttachmentState {
                    attachment_id: id(7),
                    file_type: "pdf".into(),
                    file_path: "a.pdf".into(),
                    at: at(2),
                }],
                ..match message_restored(at(6)) {
                    ChatEvent::MessageRestored(m) => m,
                    _ => unreachable!(),
                }
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
