//! The `chats` projection: chats and their messages, as the API reads them.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::execute;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::chat::{ChatEvent, event_types};
use confab_eventstore::RecordedEvent;
use sqlx::Row;
use uuid::Uuid;

/// Builds the `chats` and `messages` tables.
pub struct ChatsProjection;

/// The projection's name.
pub const NAME: &str = "chats";

#[async_trait]
impl Projection for ChatsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        event_types::ALL.contains(&event_type)
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let e = ChatEvent::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload.clone(),
        )?;
        match e {
            ChatEvent::Created(c) => {
                execute!(
                    tx,
                    "INSERT INTO chats (id, owner_id, title, created_at, updated_at, \
                     last_activity_at) VALUES ($1, $2, $3, $4, $4, $4) ON CONFLICT (id) DO NOTHING",
                    c.chat_id,
                    c.owner,
                    c.title.as_str().to_owned(),
                    c.at
                )?;
            }
            ChatEvent::Renamed(r) => {
                execute!(
                    tx,
                    "UPDATE chats SET title = $2, updated_at = $3, last_activity_at = $3 \
                     WHERE id = $1",
                    r.chat_id,
                    r.title.as_str().to_owned(),
                    r.at
                )?;
            }
            ChatEvent::Deleted(d) => {
                execute!(tx, "DELETE FROM messages WHERE chat_id = $1", d.chat_id)?;
                execute!(tx, "DELETE FROM chats WHERE id = $1", d.chat_id)?;
            }
            ChatEvent::MessageSent(m) => {
                execute!(
                    tx,
                    "INSERT INTO messages (id, chat_id, user_id, role, content, type, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (id) DO NOTHING",
                    m.message_id,
                    m.chat_id,
                    m.author,
                    m.role.as_str(),
                    m.content.as_str().to_owned(),
                    m.kind.as_str(),
                    m.at
                )?;
                execute!(
                    tx,
                    "UPDATE chats SET last_activity_at = $2 WHERE id = $1 AND last_activity_at < $2",
                    m.chat_id,
                    m.at
                )?;
            }
            ChatEvent::MessageEdited(m) => {
                execute!(
                    tx,
                    "UPDATE messages SET content = COALESCE($2, content), type = COALESCE($3, type), \
                     updated_at = $4 WHERE id = $1",
                    m.message_id,
                    m.content.map(|c| c.as_str().to_owned()),
                    m.kind.map(|k| k.as_str()),
                    m.at
                )?;
            }
            ChatEvent::MessageDeleted(m) => {
                execute!(tx, "DELETE FROM messages WHERE id = $1", m.message_id)?;
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM messages")?;
        execute!(tx, "DELETE FROM chats")?;
        Ok(())
    }
}

/// A chat as read.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub owner_id: Uuid,
    /// Title.
    pub title: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A message as read.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    /// Id.
    pub id: Uuid,
    /// Chat.
    pub chat_id: Uuid,
    /// The user it belongs to.
    pub user_id: Uuid,
    /// user, assistant or system.
    pub role: String,
    /// Text.
    pub content: String,
    /// text, code or image.
    pub kind: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Last edited.
    pub updated_at: DateTime<Utc>,
}

macro_rules! fetch {
    ($db:expr, $method:ident, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $db {
            ReadDb::Sqlite(p) => sqlx::query($sql)$(.bind($arg))*.$method(p).await
                .and_then(|rows| rows.into_iter().map(|r| map_row(&r)).collect::<Result<Vec<_>, _>>()),
            ReadDb::Postgres(p) => sqlx::query($sql)$(.bind($arg))*.$method(p).await
                .and_then(|rows| rows.into_iter().map(|r| map_row(&r)).collect::<Result<Vec<_>, _>>()),
        }
    };
}

trait FromRow: Sized {
    fn from_row<R: Row>(r: &R) -> Result<Self, sqlx::Error>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        DateTime<Utc>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>;
}

impl FromRow for ChatRow {
    fn from_row<R: Row>(r: &R) -> Result<Self, sqlx::Error>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        DateTime<Utc>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(ChatRow {
            id: r.try_get("id")?,
            owner_id: r.try_get("owner_id")?,
            title: r.try_get("title")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

impl FromRow for MessageRow {
    fn from_row<R: Row>(r: &R) -> Result<Self, sqlx::Error>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        DateTime<Utc>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(MessageRow {
            id: r.try_get("id")?,
            chat_id: r.try_get("chat_id")?,
            user_id: r.try_get("user_id")?,
            role: r.try_get("role")?,
            content: r.try_get("content")?,
            kind: r.try_get("type")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

fn map_row<T: FromRow, R: Row>(r: &R) -> Result<T, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    Uuid: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    T::from_row(r)
}

/// The chat `id` if `owner` owns it (another user's chat reads as missing).
pub async fn get_chat(db: &ReadDb, id: Uuid, owner: Uuid) -> Result<Option<ChatRow>, sqlx::Error> {
    let rows: Vec<ChatRow> = fetch!(
        db,
        fetch_all,
        "SELECT id, owner_id, title, created_at, updated_at FROM chats \
         WHERE id = $1 AND owner_id = $2",
        id,
        owner
    )?;
    Ok(rows.into_iter().next())
}

/// One page of a chat's messages, oldest first.
pub async fn list_messages(
    db: &ReadDb,
    chat_id: Uuid,
    limit: u32,
    offset: u64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    fetch!(
        db,
        fetch_all,
        "SELECT id, chat_id, user_id, role, content, type, created_at, updated_at FROM messages \
         WHERE chat_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3",
        chat_id,
        i64::from(limit),
        offset as i64
    )
}
