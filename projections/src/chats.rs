//! The `chats` projection: chats and their messages, as the API reads them.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::execute;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use confab_domain::EventSchema;
use confab_domain::chat::{ChatEvent, MessageSent, event_types};
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
        apply_one(tx, decode(event)?).await
    }

    /// Runs of sent messages (the bulk of any log) are inserted with one statement per run;
    /// everything else is applied one by one, in order.
    async fn apply_batch(
        &self,
        tx: &mut Tx,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut run: Vec<MessageSent> = Vec::new();
        for event in events {
            match decode(event)? {
                ChatEvent::MessageSent(m) => run.push(m),
                other => {
                    insert_messages(tx, &run).await?;
                    run.clear();
                    apply_one(tx, other).await?;
                }
            }
        }
        insert_messages(tx, &run).await
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM messages")?;
        execute!(tx, "DELETE FROM chats")?;
        Ok(())
    }
}

fn decode(event: &RecordedEvent) -> Result<ChatEvent, ProjectionError> {
    Ok(ChatEvent::from_stored(
        &event.event_type,
        event.schema_version,
        event.payload.clone(),
    )?)
}

/// Inserts sent messages with one statement, and moves each chat's last activity once. The rows
/// travel as one JSON array; on SQLite, ids are 16-byte blobs and times the text sqlx writes.
async fn insert_messages(tx: &mut Tx, run: &[MessageSent]) -> Result<(), ProjectionError> {
    if run.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Sqlite(t) => {
            let rows: Vec<serde_json::Value> = run
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.message_id.simple().to_string(),
                        "chat": m.chat_id.simple().to_string(),
                        "user": m.author.simple().to_string(),
                        "role": m.role.as_str(),
                        "content": m.content.as_str(),
                        "type": m.kind.as_str(),
                        "at": m.at.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                    })
                })
                .collect();
            let rows = serde_json::Value::Array(rows).to_string();
            sqlx::query(
                "INSERT INTO messages (id, chat_id, user_id, role, content, type, created_at, \
                 updated_at) SELECT unhex(value->>'id'), unhex(value->>'chat'), \
                 unhex(value->>'user'), value->>'role', value->>'content', value->>'type', \
                 value->>'at', value->>'at' FROM jsonb_each(jsonb($1)) WHERE TRUE \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&rows)
            .execute(&mut **t)
            .await?;
            sqlx::query(
                "UPDATE chats SET last_activity_at = j.at FROM (SELECT unhex(value->>'chat') AS \
                 chat, MAX(value->>'at') AS at FROM jsonb_each(jsonb($1)) GROUP BY 1) AS j \
                 WHERE chats.id = j.chat AND chats.last_activity_at < j.at",
            )
            .bind(&rows)
            .execute(&mut **t)
            .await?;
        }
        Tx::Postgres(t) => {
            let rows: Vec<serde_json::Value> = run
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.message_id,
                        "chat": m.chat_id,
                        "usr": m.author,
                        "role": m.role.as_str(),
                        "content": m.content.as_str(),
                        "type": m.kind.as_str(),
                        // Truncated to microseconds, as sqlx binds a timestamptz (PostgreSQL
                        // would round a longer fraction), so both write paths agree.
                        "at": m.at.to_rfc3339_opts(SecondsFormat::Micros, true),
                    })
                })
                .collect();
            let rows = sqlx::types::Json(rows);
            sqlx::query(
                "INSERT INTO messages (id, chat_id, user_id, role, content, type, created_at, \
                 updated_at) SELECT r.id, r.chat, r.usr, r.role, r.content, r.type, r.at, r.at \
                 FROM jsonb_to_recordset($1) AS r(id UUID, chat UUID, usr UUID, role TEXT, \
                 content TEXT, type TEXT, at TIMESTAMPTZ) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&rows)
            .execute(&mut **t)
            .await?;
            sqlx::query(
                "UPDATE chats c SET last_activity_at = j.at FROM (SELECT r.chat, MAX(r.at) AS at \
                 FROM jsonb_to_recordset($1) AS r(chat UUID, at TIMESTAMPTZ) GROUP BY r.chat) j \
                 WHERE c.id = j.chat AND c.last_activity_at < j.at",
            )
            .bind(&rows)
            .execute(&mut **t)
            .await?;
        }
    }
    Ok(())
}

/// Applies one chat event.
async fn apply_one(tx: &mut Tx, e: ChatEvent) -> Result<(), ProjectionError> {
    {
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
    /// Last message, rename or creation: lists sort by it.
    pub last_activity_at: DateTime<Utc>,
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
            last_activity_at: r.try_get("last_activity_at")?,
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
        "SELECT id, owner_id, title, created_at, updated_at, last_activity_at FROM chats \
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
