//! Chats and messages, and seed 002's conversations and attachments over the same model.
//!
//! Commands go to the chat aggregate; reads come from the `chats` read model, for the caller's
//! own chats only (another user's chat reads as missing); every write returns once the same
//! user's next read sees it. Time travel reads the chat's own stream instead: the chat as it was
//! at a past time, a message's versions; a deletion is undone by a compensating event.

use crate::{Actor, AppError, Page, PageRequest, Problems, Services, now};
use chrono::{DateTime, Utc};
use confab_domain::chat::{Chat, ChatCommand, ChatError, ChatEvent, ChatStatus};
use confab_domain::{Aggregate, ChatTitle, EventSchema, MessageContent, MessageKind, Role};
use confab_eventstore::aggregate::{ExecuteError, Executed};
use confab_projections::chats::{self, AttachmentRow, ChatRow, MessageFilter, MessageRow};
use confab_projections::search;
use uuid::Uuid;

/// Runs a chat command for `actor` and waits until its effect is readable.
async fn run(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    command: ChatCommand,
) -> Result<Executed<Chat>, AppError> {
    let done = svc
        .commands
        .execute::<Chat>(&chat_id, command, actor.metadata())
        .await?;
    svc.visible(chats::NAME, done.appended.map(|a| a.last_position))
        .await?;
    Ok(done)
}

/// Chat `chat_id` if it is `actor`'s.
pub async fn get_chat(svc: &Services, actor: &Actor, chat_id: Uuid) -> Result<ChatRow, AppError> {
    chats::get_chat(&svc.db, chat_id, actor.id())
        .await?
        .ok_or(AppError::NotFound("chat"))
}

/// Creates a chat titled `title` for `owner` (the actor, or anyone for an admin).
pub async fn create_chat(
    svc: &Services,
    actor: &Actor,
    owner: Uuid,
    title: ChatTitle,
) -> Result<ChatRow, AppError> {
    actor.may_act_for(owner)?;
    let chat_id = actor.new_id();
    let command = ChatCommand::Create {
        chat_id,
        owner,
        title,
        at: now(),
    };
    match svc
        .commands
        .execute::<Chat>(&chat_id, command, actor.metadata())
        .await
    {
        Ok(done) => {
            svc.visible(chats::NAME, done.appended.map(|a| a.last_position))
                .await?;
        }
        // Created by an earlier run of this very request (same Idempotency-Key), whose answer
        // was lost: answer with what it created.
        Err(ExecuteError::Domain(ChatError::ChatAlreadyExists)) if actor.resource_id.is_some() => {
            svc.caught_up(chats::NAME).await?;
        }
        Err(e) => return Err(e.into()),
    }
    chats::get_chat(&svc.db, chat_id, owner)
        .await?
        .ok_or(AppError::bug(
            "a created chat is missing from the read model",
        ))
}

/// One page of `actor`'s chats, most recent activity first.
pub async fn list_chats(
    svc: &Services,
    actor: &Actor,
    page: PageRequest,
) -> Result<Page<ChatRow>, AppError> {
    let (items, total) = chats::list_chats(&svc.db, actor.id(), page.limit, page.offset()).await?;
    Ok(Page {
        items,
        total,
        request: page,
    })
}

/// Renames `actor`'s chat.
pub async fn rename_chat(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    title: ChatTitle,
) -> Result<ChatRow, AppError> {
    let command = ChatCommand::Rename {
        actor: actor.id(),
        title,
        at: now(),
    };
    run(svc, actor, chat_id, command).await?;
    get_chat(svc, actor, chat_id).await
}

/// Deletes `actor`'s chat; its messages vanish from every read.
pub async fn delete_chat(svc: &Services, actor: &Actor, chat_id: Uuid) -> Result<(), AppError> {
    let command = ChatCommand::Delete {
        actor: actor.id(),
        at: now(),
    };
    run(svc, actor, chat_id, command).await?;
    Ok(())
}

/// Which messages to list: a type, an inclusive date range, words to search for.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    /// Only this type.
    pub kind: Option<MessageKind>,
    /// Sent at or after.
    pub start: Option<DateTime<Utc>>,
    /// Sent at or before.
    pub end: Option<DateTime<Utc>>,
    /// Words that must all occur (any order, case and accents ignored); results are then
    /// ranked by relevance. Blank means no search.
    pub search: Option<String>,
    /// Which page.
    pub page: PageRequest,
}

impl MessageQuery {
    /// Checks what cannot be checked field by field: the range's order.
    pub fn validate(self) -> Result<Self, Problems> {
        if let (Some(s), Some(e)) = (self.start, self.end)
            && s > e
        {
            return Err(Problems::one("endDate", "must not be before startDate"));
        }
        Ok(self)
    }

    fn filter(&self, chat_id: Option<Uuid>) -> MessageFilter {
        MessageFilter {
            chat_id,
            kind: self.kind.map(|k| k.as_str().to_owned()),
            start: self.start,
            end: self.end,
            search: self.search.clone().filter(|s| !s.trim().is_empty()),
        }
    }
}

async fn page_of_messages(
    svc: &Services,
    actor: &Actor,
    filter: MessageFilter,
    page: PageRequest,
) -> Result<Page<MessageRow>, AppError> {
    let (items, total) =
        chats::find_messages(&svc.db, actor.id(), &filter, page.limit, page.offset()).await?;
    Ok(Page {
        items,
        total,
        request: page,
    })
}

/// A page of the messages of `actor`'s chat `chat_id` matching `query`.
pub async fn list_messages(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    query: &MessageQuery,
) -> Result<Page<MessageRow>, AppError> {
    let found = page_of_messages(svc, actor, query.filter(Some(chat_id)), query.page).await?;
    // The page is read for the caller's chats only, so a match proves the chat is theirs; only
    // when nothing matched must it be told apart from another's or a missing chat.
    if found.total == 0 {
        get_chat(svc, actor, chat_id).await?;
    }
    Ok(found)
}

/// A page of the messages of all of `actor`'s chats matching `query`, whose search must not
/// be blank.
pub async fn search_messages(
    svc: &Services,
    actor: &Actor,
    query: &MessageQuery,
) -> Result<Page<MessageRow>, AppError> {
    if query.search.as_deref().is_none_or(|w| w.trim().is_empty()) {
        return Err(AppError::invalid("q", "must not be empty"));
    }
    page_of_messages(svc, actor, query.filter(None), query.page).await
}

/// Every message of `actor`'s chat `chat_id`, oldest first.
pub async fn all_messages(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
) -> Result<Vec<MessageRow>, AppError> {
    get_chat(svc, actor, chat_id).await?;
    let filter = MessageFilter {
        chat_id: Some(chat_id),
        ..MessageFilter::default()
    };
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (rows, total) = chats::find_messages(&svc.db, actor.id(), &filter, 500, offset).await?;
        offset += rows.len() as u64;
        let done = rows.is_empty() || offset >= total;
        out.extend(rows);
        if done {
            return Ok(out);
        }
    }
}

/// Sends a message as `actor` to their chat `chat_id`.
pub async fn send_message(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    role: Role,
    content: MessageContent,
    kind: MessageKind,
) -> Result<MessageRow, AppError> {
    let message_id = actor.new_id();
    let command = ChatCommand::SendMessage {
        message_id,
        actor: actor.id(),
        role,
        content,
        kind,
        at: now(),
    };
    let done = match svc
        .commands
        .execute::<Chat>(&chat_id, command, actor.metadata())
        .await
    {
        Ok(done) => {
            svc.visible(chats::NAME, done.appended.map(|a| a.last_position))
                .await?;
            done
        }
        // Sent by an earlier run of this very request (same Idempotency-Key), whose answer was
        // lost: answer with that message.
        Err(ExecuteError::Domain(ChatError::MessageAlreadyExists))
            if actor.resource_id.is_some() =>
        {
            svc.caught_up(chats::NAME).await?;
            return chats::get_message(&svc.db, chat_id, message_id)
                .await?
                .filter(|m| m.user_id == actor.id())
                .ok_or(AppError::bug(
                    "a message sent by an earlier run of the request is missing",
                ));
        }
        Err(e) => return Err(e.into()),
    };
    // The event holds the whole new row, and the read model holds it too by now: answer from
    // the event rather than reading it back.
    done.events
        .iter()
        .find_map(|e| match e {
            ChatEvent::MessageSent(m) if m.message_id == message_id => Some(MessageRow::from(m)),
            _ => None,
        })
        .ok_or(AppError::bug("sending a message recorded no message"))
}

/// A message as an edit left it.
#[derive(Debug, Clone, PartialEq)]
pub struct EditedMessage {
    /// The message.
    pub id: Uuid,
    /// Its content.
    pub content: String,
    /// Its type.
    pub kind: String,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Edits the content, the type or both of `actor`'s message (only its author may).
pub async fn edit_message(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    message_id: Uuid,
    content: Option<MessageContent>,
    kind: Option<MessageKind>,
) -> Result<EditedMessage, AppError> {
    if content.is_none() && kind.is_none() {
        return Err(AppError::invalid("content", "give content, type or both"));
    }
    let command = ChatCommand::EditMessage {
        message_id,
        actor: actor.id(),
        content,
        kind,
        at: now(),
    };
    // The answer is the message as this edit left it, even if a concurrent edit follows at once.
    let edited = svc
        .commands
        .execute_then::<Chat, _>(&chat_id, command, actor.metadata(), move |chat: &Chat| {
            chat.messages
                .get(&message_id)
                .map(|m| (m.content.clone(), m.kind))
        })
        .await;
    match edited {
        Ok((done, Some((content, kind)))) => {
            svc.visible(chats::NAME, done.appended.map(|a| a.last_position))
                .await?;
            let at = done.events.iter().find_map(|e| match e {
                ChatEvent::MessageEdited(m) => Some(m.at),
                _ => None,
            });
            if let Some(updated_at) = at {
                return Ok(EditedMessage {
                    id: message_id,
                    content: content.as_str().to_owned(),
                    kind: kind.as_str().to_owned(),
                    updated_at,
                });
            }
        }
        Ok((_, None)) => return Err(AppError::NotFound("message")),
        // Asking for what is already there changes nothing and is not an error.
        Err(ExecuteError::Domain(ChatError::NothingToChange)) => {}
        Err(e) => return Err(e.into()),
    }
    let m = chats::get_message(&svc.db, chat_id, message_id)
        .await?
        .filter(|m| m.user_id == actor.id())
        .ok_or(AppError::NotFound("message"))?;
    Ok(EditedMessage {
        id: m.id,
        content: m.content,
        kind: m.kind,
        updated_at: m.updated_at,
    })
}

/// Deletes `actor`'s message.
pub async fn delete_message(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    message_id: Uuid,
) -> Result<(), AppError> {
    let command = ChatCommand::DeleteMessage {
        message_id,
        actor: actor.id(),
        at: now(),
    };
    run(svc, actor, chat_id, command).await?;
    Ok(())
}

/// Longest attachment type, in characters.
pub const MAX_FILE_TYPE_CHARS: usize = 100;
/// Longest attachment path, in characters.
pub const MAX_FILE_PATH_CHARS: usize = 1024;

/// Checks a file reference: a type of 1 to 100 characters without spaces, and a path of 1 to
/// 1024 characters without control characters or `..` segments.
pub fn check_attachment(file_type: &str, file_path: &str) -> Result<(), Problems> {
    let mut problems = Problems::new();
    if file_type.is_empty()
        || file_type.chars().count() > MAX_FILE_TYPE_CHARS
        || file_type
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        problems.add("file_type", "must be 1 to 100 characters without spaces");
    }
    if file_path.is_empty()
        || file_path.chars().count() > MAX_FILE_PATH_CHARS
        || file_path.chars().any(char::is_control)
        || file_path.split(['/', '\\']).any(|seg| seg == "..")
    {
        problems.add(
            "file_path",
            "must be 1 to 1024 characters, without control characters or `..` segments",
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Attaches a file reference to `actor`'s message `message_id` (only its author may).
pub async fn add_attachment(
    svc: &Services,
    actor: &Actor,
    message_id: Uuid,
    file_type: String,
    file_path: String,
) -> Result<AttachmentRow, AppError> {
    check_attachment(&file_type, &file_path)?;
    let chat_id = chats::chat_of_message(&svc.db, message_id, actor.id())
        .await?
        .ok_or(AppError::NotFound("message"))?;
    let attachment_id = actor.new_id();
    let command = ChatCommand::AddAttachment {
        message_id,
        attachment_id,
        actor: actor.id(),
        file_type,
        file_path,
        at: now(),
    };
    match run(svc, actor, chat_id, command).await {
        Ok(_) => {}
        // The chat or the message went away since it was read.
        Err(AppError::NotFound(_)) => return Err(AppError::NotFound("message")),
        Err(AppError::Forbidden(_)) => {
            return Err(AppError::Forbidden(
                "only the author may attach files to this message".into(),
            ));
        }
        Err(e) => return Err(e),
    }
    chats::get_attachment(&svc.db, attachment_id)
        .await?
        .ok_or(AppError::bug(
            "an added attachment is missing from the read model",
        ))
}

/// The attachments of `actor`'s message `message_id`.
pub async fn list_attachments(
    svc: &Services,
    actor: &Actor,
    message_id: Uuid,
) -> Result<Vec<AttachmentRow>, AppError> {
    chats::chat_of_message(&svc.db, message_id, actor.id())
        .await?
        .ok_or(AppError::NotFound("message"))?;
    Ok(chats::list_attachments(&svc.db, message_id).await?)
}

/// The chat's events from the log, in the order they were recorded.
async fn chat_history(svc: &Services, chat_id: Uuid) -> Result<Vec<ChatEvent>, AppError> {
    let stream = Chat::stream_name(&chat_id);
    let recorded = confab_eventstore::read_whole_stream(svc.store.as_ref(), &stream).await?;
    recorded
        .into_iter()
        .map(|e| {
            Ok(ChatEvent::from_stored(
                &e.event_type,
                e.schema_version,
                e.payload,
            )?)
        })
        .collect()
}

/// `actor`'s chat `chat_id` as it stood at `as_of`: the fold of its events up to then (the
/// times the API shows as `createdAt` and `updatedAt`), stopping at the first one after. A
/// chat that did not exist then, was deleted then, or is someone else's is not found.
async fn chat_as_of(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    as_of: DateTime<Utc>,
) -> Result<Chat, AppError> {
    let chat = chat_history(svc, chat_id)
        .await?
        .iter()
        .take_while(|e| e.at() <= as_of)
        .fold(Chat::default(), |chat, e| chat.evolve(e));
    if chat.status != ChatStatus::Active || chat.owner != Some(actor.id()) {
        return Err(AppError::NotFound("chat"));
    }
    Ok(chat)
}

/// `actor`'s chat `chat_id` as it was at `as_of`, built from the log.
pub async fn get_chat_as_of(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    as_of: DateTime<Utc>,
) -> Result<ChatRow, AppError> {
    let chat = chat_as_of(svc, actor, chat_id, as_of).await?;
    match (chat.id, chat.owner, chat.title, chat.created_at) {
        (Some(id), Some(owner_id), Some(title), Some(created_at)) => Ok(ChatRow {
            id,
            owner_id,
            title: title.as_str().to_owned(),
            created_at,
            updated_at: chat.updated_at.unwrap_or(created_at),
            last_activity_at: chat.last_activity_at.unwrap_or(created_at),
        }),
        _ => Err(AppError::bug("a created chat folds without its details")),
    }
}

/// A page of the messages of `actor`'s chat `chat_id` matching `query`, as they were at
/// `as_of`, built from the log: the same filters and pages as the read model's, oldest first
/// (a search keeps that order: the past has no ranking index).
pub async fn list_messages_as_of(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    as_of: DateTime<Utc>,
    query: &MessageQuery,
) -> Result<Page<MessageRow>, AppError> {
    let chat = chat_as_of(svc, actor, chat_id, as_of).await?;
    let filter = query.filter(Some(chat_id));
    let wanted: Option<Vec<String>> = filter.search.as_deref().map(|q| {
        let folded = search::fold(q);
        search::words(&folded)
            .into_iter()
            .map(str::to_owned)
            .collect()
    });
    let mut rows: Vec<MessageRow> = chat
        .messages
        .into_iter()
        .filter(|(_, m)| !m.deleted)
        .map(|(id, m)| MessageRow {
            id,
            chat_id,
            user_id: m.author,
            role: m.role.as_str().to_owned(),
            content: m.content.as_str().to_owned(),
            kind: m.kind.as_str().to_owned(),
            created_at: m.sent_at,
            updated_at: m.updated_at,
        })
        .filter(|m| filter.kind.as_deref().is_none_or(|k| m.kind == k))
        .filter(|m| filter.start.is_none_or(|s| m.created_at >= s))
        .filter(|m| filter.end.is_none_or(|e| m.created_at <= e))
        .filter(|m| {
            wanted.as_ref().is_none_or(|ws| {
                let folded = search::fold(&m.content);
                let have = search::words(&folded);
                !ws.is_empty() && ws.iter().all(|w| have.contains(&w.as_str()))
            })
        })
        .collect();
    rows.sort_by_key(|m| (m.created_at, m.id));
    let total = rows.len() as u64;
    let items = rows
        .into_iter()
        .skip(usize::try_from(query.page.offset()).unwrap_or(usize::MAX))
        .take(query.page.limit as usize)
        .collect();
    Ok(Page {
        items,
        total,
        request: query.page,
    })
}

/// What one version of a message records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionKind {
    /// It was sent.
    Created,
    /// Its content or type changed.
    Edited,
    /// It was deleted (on its own, or with its chat).
    Deleted,
    /// Its deletion was undone (on its own, or with its chat's).
    Restored,
}

impl VersionKind {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Created => "created",
            VersionKind::Edited => "edited",
            VersionKind::Deleted => "deleted",
            VersionKind::Restored => "restored",
        }
    }
}

/// One version of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageVersion {
    /// From 1, oldest first.
    pub version: u32,
    /// What happened.
    pub kind: VersionKind,
    /// The content and type from then on; `None` for a deletion.
    pub content: Option<(String, String)>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Every version of `actor`'s message `message_id` in their chat `chat_id`, oldest first,
/// read from the log (so a deleted message, or one of a deleted chat, has its history too).
pub async fn message_history(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    message_id: Uuid,
) -> Result<Vec<MessageVersion>, AppError> {
    let events = chat_history(svc, chat_id).await?;
    let owner = events.first().and_then(|e| match e {
        ChatEvent::Created(c) => Some(c.owner),
        _ => None,
    });
    if owner != Some(actor.id()) {
        return Err(AppError::NotFound("chat"));
    }
    let mut chat = Chat::default();
    let mut versions: Vec<MessageVersion> = Vec::new();
    for e in &events {
        let was_live = chat.messages.get(&message_id).is_some_and(|m| !m.deleted)
            && chat.status == ChatStatus::Active;
        chat = chat.evolve(e);
        let kind = match e {
            ChatEvent::MessageSent(m) if m.message_id == message_id => VersionKind::Created,
            ChatEvent::MessageEdited(m) if m.message_id == message_id => VersionKind::Edited,
            ChatEvent::MessageDeleted(m) if m.message_id == message_id => VersionKind::Deleted,
            ChatEvent::MessageRestored(m) if m.message_id == message_id => VersionKind::Restored,
            // The chat's deletion takes the message with it.
            ChatEvent::Deleted(_) if was_live => VersionKind::Deleted,
            _ => continue,
        };
        let content = (kind != VersionKind::Deleted)
            .then(|| chat.messages.get(&message_id))
            .flatten()
            .map(|m| (m.content.as_str().to_owned(), m.kind.as_str().to_owned()));
        versions.push(MessageVersion {
            version: u32::try_from(versions.len() + 1).unwrap_or(u32::MAX),
            kind,
            content,
            at: e.at(),
        });
    }
    if versions.is_empty() {
        return Err(AppError::NotFound("message"));
    }
    Ok(versions)
}

/// Undoes the deletion of `actor`'s chat, within the restore window; its messages come back
/// as they were when it was deleted.
pub async fn restore_chat(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
) -> Result<ChatRow, AppError> {
    let command = ChatCommand::Restore {
        actor: actor.id(),
        at: now(),
        window: svc.restore_window,
    };
    run(svc, actor, chat_id, command).await?;
    get_chat(svc, actor, chat_id).await
}

/// Undoes the deletion of `actor`'s message, within the restore window.
pub async fn restore_message(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    message_id: Uuid,
) -> Result<MessageRow, AppError> {
    let command = ChatCommand::RestoreMessage {
        message_id,
        actor: actor.id(),
        at: now(),
        window: svc.restore_window,
    };
    run(svc, actor, chat_id, command).await?;
    chats::get_message(&svc.db, chat_id, message_id)
        .await?
        .filter(|m| m.user_id == actor.id())
        .ok_or(AppError::bug(
            "a restored message is missing from the read model",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_are_checked_field_by_field() {
        assert!(check_attachment("pdf", "docs/a.pdf").is_ok());
        let p = check_attachment("p df", "../etc/passwd").unwrap_err();
        assert_eq!(p.iter().count(), 2);
        assert!(check_attachment("", "a").is_err());
        assert!(check_attachment("pdf", "").is_err());
    }

    #[test]
    fn a_range_must_not_end_before_it_starts() {
        let q = MessageQuery {
            start: Some(Utc::now()),
            end: Some(Utc::now() - chrono::Duration::days(1)),
            ..MessageQuery::default()
        };
        assert!(q.validate().is_err());
    }
}
