//! The `chats` projection: chats and their messages, as the API reads them.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::search;
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use confab_domain::EventSchema;
use confab_domain::chat::{ChatEvent, MessageSent, event_types};
use confab_eventstore::RecordedEvent;
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
            || event_type == confab_domain::account::event_types::USER_ERASED
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(event) {
            crate::privacy::purge_chats(tx, user).await?;
            return Ok(());
        }
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
            if let Some(user) = crate::privacy::erased_user(event) {
                insert_messages(tx, &run).await?;
                run.clear();
                crate::privacy::purge_chats(tx, user).await?;
                continue;
            }
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
        if let Tx::Sqlite(t) = tx {
            sqlx::query("INSERT INTO messages_fts (messages_fts) VALUES ('delete-all')")
                .execute(&mut **t)
                .await?;
        }
        execute!(tx, "DELETE FROM attachments")?;
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
                        "words": search::words(&search::fold(m.content.as_str())),
                    })
                })
                .collect();
            let rows = serde_json::Value::Array(rows).to_string();
            sqlx::query(
                "INSERT INTO messages (id, chat_id, user_id, role, content, type, created_at, \
                 updated_at, owner_key) SELECT unhex(value->>'id'), \
                 unhex(value->>'chat'), unhex(value->>'user'), value->>'role', \
                 value->>'content', value->>'type', value->>'at', value->>'at', \
                 COALESCE((SELECT 'u' || lower(hex(c.owner_id)) FROM chats c \
                 WHERE c.id = unhex(value->>'chat')), '') FROM jsonb_each(jsonb($1)) \
                 WHERE TRUE ON CONFLICT (id) DO NOTHING",
            )
            .bind(&rows)
            .execute(&mut **t)
            .await?;
            // The owner-scoped terms (migration 0012), built from the owner key just stored.
            sqlx::query(
                "INSERT OR REPLACE INTO messages_fts (rowid, terms) SELECT m.rowid, \
                 (SELECT group_concat(m.owner_key || w.value, ' ') FROM json_each(j.value, '$.words') w) \
                 FROM jsonb_each(jsonb($1)) j JOIN messages m ON m.id = unhex(j.value->>'id') \
                 WHERE m.owner_key <> ''",
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
                        "search": search::fold(m.content.as_str()),
                    })
                })
                .collect();
            let rows = sqlx::types::Json(rows);
            sqlx::query(
                "INSERT INTO messages (id, chat_id, user_id, role, content, type, created_at, \
                 updated_at, search) SELECT r.id, r.chat, r.usr, r.role, r.content, r.type, \
                 r.at, r.at, to_tsvector('simple', r.search) || COALESCE((SELECT \
                 array_to_tsvector(ARRAY['u' || replace(c.owner_id::TEXT, '-', '')]) \
                 FROM chats c WHERE c.id = r.chat), ''::TSVECTOR) \
                 FROM jsonb_to_recordset($1) AS \
                 r(id UUID, chat UUID, usr UUID, role TEXT, content TEXT, type TEXT, \
                 at TIMESTAMPTZ, search TEXT) ON CONFLICT (id) DO NOTHING",
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

/// Removes from the SQLite search index the messages whose `column` (`id` or `chat_id`) is
/// `id`, before their rows go: the index is contentless, so it is not kept by triggers.
async fn unindex(tx: &mut Tx, column: &'static str, id: Uuid) -> Result<(), ProjectionError> {
    if let Tx::Sqlite(t) = tx {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM messages_fts WHERE rowid IN (SELECT rowid FROM messages WHERE {column} = $1)"
        )))
        .bind(id)
        .execute(&mut **t)
        .await?;
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
                unindex(tx, "chat_id", d.chat_id).await?;
                execute!(tx, "DELETE FROM attachments WHERE chat_id = $1", d.chat_id)?;
                execute!(tx, "DELETE FROM messages WHERE chat_id = $1", d.chat_id)?;
                execute!(tx, "DELETE FROM chats WHERE id = $1", d.chat_id)?;
            }
            ChatEvent::MessageSent(m) => insert_messages(tx, &[m]).await?,
            ChatEvent::MessageEdited(m) => {
                let search = m.content.as_ref().map(|c| search::fold(c.as_str()));
                let content = m.content.map(|c| c.as_str().to_owned());
                let kind = m.kind.map(|k| k.as_str());
                match tx {
                    Tx::Sqlite(t) => {
                        sqlx::query(
                            "UPDATE messages SET content = COALESCE($2, content), \
                             type = COALESCE($3, type), updated_at = $4 WHERE id = $1",
                        )
                        .bind(m.message_id)
                        .bind(content)
                        .bind(kind)
                        .bind(m.at)
                        .execute(&mut **t)
                        .await?;
                        if let Some(folded) = search {
                            let words = serde_json::to_string(&search::words(&folded))
                                .expect("strings serialise");
                            sqlx::query(
                                "INSERT OR REPLACE INTO messages_fts (rowid, terms) \
                                 SELECT m.rowid, (SELECT group_concat(m.owner_key || w.value, ' ') \
                                 FROM json_each($2) w) FROM messages m \
                                 WHERE m.id = $1 AND m.owner_key <> ''",
                            )
                            .bind(m.message_id)
                            .bind(words)
                            .execute(&mut **t)
                            .await?;
                        }
                    }
                    Tx::Postgres(t) => {
                        sqlx::query(
                            "UPDATE messages SET content = COALESCE($2, content), \
                             type = COALESCE($3, type), updated_at = $4, \
                             search = COALESCE(to_tsvector('simple', $5) || \
                             array_to_tsvector(ARRAY['u' || replace(c.owner_id::TEXT, '-', '')]), \
                             search) FROM chats c WHERE messages.id = $1 \
                             AND c.id = messages.chat_id",
                        )
                        .bind(m.message_id)
                        .bind(content)
                        .bind(kind)
                        .bind(m.at)
                        .bind(search)
                        .execute(&mut **t)
                        .await?;
                    }
                }
            }
            ChatEvent::MessageDeleted(m) => {
                execute!(
                    tx,
                    "DELETE FROM attachments WHERE message_id = $1",
                    m.message_id
                )?;
                unindex(tx, "id", m.message_id).await?;
                execute!(tx, "DELETE FROM messages WHERE id = $1", m.message_id)?;
            }
            ChatEvent::AttachmentAdded(a) => {
                execute!(
                    tx,
                    "INSERT INTO attachments (id, message_id, chat_id, file_type, file_path, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    a.attachment_id,
                    a.message_id,
                    a.chat_id,
                    a.file_type,
                    a.file_path,
                    a.at
                )?;
            }
            // The row as it was when deleted; its messages follow as their own events.
            ChatEvent::Restored(c) => {
                execute!(
                    tx,
                    "INSERT INTO chats (id, owner_id, title, created_at, updated_at, \
                     last_activity_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    c.chat_id,
                    c.owner,
                    c.title.as_str().to_owned(),
                    c.created_at,
                    c.updated_at,
                    c.last_activity_at
                )?;
            }
            // The row as it was when deleted, back in the search index and with its
            // attachments: inserted as when sent, then given its last change's time.
            ChatEvent::MessageRestored(m) => {
                let sent = MessageSent {
                    chat_id: m.chat_id,
                    message_id: m.message_id,
                    author: m.author,
                    role: m.role,
                    content: m.content,
                    kind: m.kind,
                    at: m.sent_at,
                };
                insert_messages(tx, &[sent]).await?;
                execute!(
                    tx,
                    "UPDATE messages SET updated_at = $2 WHERE id = $1",
                    m.message_id,
                    m.updated_at
                )?;
                for a in m.attachments {
                    execute!(
                        tx,
                        "INSERT INTO attachments (id, message_id, chat_id, file_type, \
                         file_path, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (id) DO NOTHING",
                        a.attachment_id,
                        m.message_id,
                        m.chat_id,
                        a.file_type,
                        a.file_path,
                        a.at
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A chat as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Last edited.
    pub updated_at: DateTime<Utc>,
}

impl From<&MessageSent> for MessageRow {
    /// The row this projection writes for a sent message, as a just-sent message reads.
    fn from(m: &MessageSent) -> Self {
        MessageRow {
            id: m.message_id,
            chat_id: m.chat_id,
            user_id: m.author,
            role: m.role.as_str().to_owned(),
            content: m.content.as_str().to_owned(),
            kind: m.kind.as_str().to_owned(),
            created_at: m.at,
            updated_at: m.at,
        }
    }
}

/// The chat `id` if `owner` owns it (another user's chat reads as missing).
pub async fn get_chat(db: &ReadDb, id: Uuid, owner: Uuid) -> Result<Option<ChatRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        ChatRow,
        "SELECT id, owner_id, title, created_at, updated_at, last_activity_at FROM chats \
         WHERE id = $1 AND owner_id = $2",
        id,
        owner
    )
}

/// One page of `owner`'s chats, most recent activity first, and how many there are.
pub async fn list_chats(
    db: &ReadDb,
    owner: Uuid,
    limit: u32,
    offset: u64,
) -> Result<(Vec<ChatRow>, u64), sqlx::Error> {
    let rows = query_as!(
        db,
        fetch_all,
        ChatRow,
        "SELECT id, owner_id, title, created_at, updated_at, last_activity_at FROM chats \
         WHERE owner_id = $1 ORDER BY last_activity_at DESC, id DESC LIMIT $2 OFFSET $3",
        owner,
        i64::from(limit),
        offset as i64
    )?;
    let (total,): (i64,) = query_as!(
        db,
        fetch_one,
        (i64,),
        "SELECT COUNT(*) FROM chats WHERE owner_id = $1",
        owner
    )?;
    Ok((rows, total as u64))
}

/// Message `id` of chat `chat_id`, if both exist.
pub async fn get_message(
    db: &ReadDb,
    chat_id: Uuid,
    id: Uuid,
) -> Result<Option<MessageRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        MessageRow,
        "SELECT id, chat_id, user_id, role, content, type, created_at, updated_at FROM messages \
         WHERE id = $1 AND chat_id = $2",
        id,
        chat_id
    )
}

/// Which messages to find: always one owner's; optionally one chat, one type, a date range
/// (inclusive) and words to search for.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Only this chat.
    pub chat_id: Option<Uuid>,
    /// Only this type (`text`, `code`, `image`).
    pub kind: Option<String>,
    /// Sent at or after.
    pub start: Option<DateTime<Utc>>,
    /// Sent at or before.
    pub end: Option<DateTime<Utc>>,
    /// Words that must all occur, in any order, whatever their case and accents; results are
    /// then ranked by relevance instead of sorted by time.
    pub search: Option<String>,
}

/// A page of `owner`'s messages matching `filter`, and how many match in all. Without a search,
/// oldest first; with one, most relevant first. A search with no words matches nothing.
pub async fn find_messages(
    db: &ReadDb,
    owner: Uuid,
    filter: &MessageFilter,
    limit: u32,
    offset: u64,
) -> Result<(Vec<MessageRow>, u64), sqlx::Error> {
    let limit = i64::from(limit);
    let offset = offset as i64;
    let f = filter;
    let Some(search) = &f.search else {
        let rows = query_as!(
            db,
            fetch_all,
            MessageRow,
            "SELECT m.id, m.chat_id, m.user_id, m.role, m.content, m.type, m.created_at, \
             m.updated_at FROM messages m JOIN chats c ON c.id = m.chat_id \
             WHERE c.owner_id = $1 AND ($2 IS NULL OR m.chat_id = $2) \
             AND ($3 IS NULL OR m.type = $3) AND ($4 IS NULL OR m.created_at >= $4) \
             AND ($5 IS NULL OR m.created_at <= $5) \
             ORDER BY m.created_at, m.id LIMIT $6 OFFSET $7",
            owner,
            f.chat_id,
            f.kind.clone(),
            f.start,
            f.end,
            limit,
            offset
        )?;
        let (total,): (i64,) = query_as!(
            db,
            fetch_one,
            (i64,),
            "SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id \
             WHERE c.owner_id = $1 AND ($2 IS NULL OR m.chat_id = $2) \
             AND ($3 IS NULL OR m.type = $3) AND ($4 IS NULL OR m.created_at >= $4) \
             AND ($5 IS NULL OR m.created_at <= $5)",
            owner,
            f.chat_id,
            f.kind.clone(),
            f.start,
            f.end
        )?;
        return Ok((rows, total as u64));
    };
    match db {
        ReadDb::Sqlite(p) => {
            let Some(q) = search::fts5_query(search, owner) else {
                return Ok((Vec::new(), 0));
            };
            // The terms are the owner's own (migration 0012), so the index yields only the
            // owner's matches, ranked by bm25() (best first, newest first among equals); the
            // owner is checked again on the row itself.
            let unfiltered =
                f.chat_id.is_none() && f.kind.is_none() && f.start.is_none() && f.end.is_none();
            let rows = if unfiltered {
                // Nothing to filter on the rows: the index ranks and pages by itself, and only
                // the page's rows are read.
                sqlx::query_as::<_, Counted>(
                    "SELECT m.id, m.chat_id, m.user_id, m.role, m.content, m.type, m.created_at, \
                     m.updated_at, t.total FROM (SELECT rowid, rank FROM messages_fts \
                     WHERE messages_fts MATCH $1 ORDER BY rank, rowid DESC LIMIT $3 OFFSET $4) f \
                     JOIN messages m ON m.rowid = f.rowid, \
                     (SELECT COUNT(*) AS total FROM messages_fts WHERE messages_fts MATCH $1) t \
                     WHERE m.owner_key = $2 ORDER BY f.rank, f.rowid DESC",
                )
                .bind(&q)
                .bind(search::owner_key(owner))
                .bind(limit)
                .bind(offset)
                .fetch_all(p)
                .await?
            } else {
                sqlx::query_as::<_, Counted>(
                    "SELECT m.id, m.chat_id, m.user_id, m.role, m.content, m.type, m.created_at, \
                     m.updated_at, COUNT(*) OVER () AS total \
                     FROM (SELECT rowid, rank FROM messages_fts WHERE messages_fts MATCH $1) f \
                     JOIN messages m ON m.rowid = f.rowid \
                     WHERE m.owner_key = $2 AND ($3 IS NULL OR m.chat_id = $3) \
                     AND ($4 IS NULL OR m.type = $4) AND ($5 IS NULL OR m.created_at >= $5) \
                     AND ($6 IS NULL OR m.created_at <= $6) \
                     ORDER BY f.rank, m.rowid DESC LIMIT $7 OFFSET $8",
                )
                .bind(&q)
                .bind(search::owner_key(owner))
                .bind(f.chat_id)
                .bind(f.kind.clone())
                .bind(f.start)
                .bind(f.end)
                .bind(limit)
                .bind(offset)
                .fetch_all(p)
                .await?
            };
            if let Some(first) = rows.first() {
                let total = first.total as u64;
                return Ok((rows.into_iter().map(|r| r.row).collect(), total));
            }
            // A page past the end still reports how many matched.
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages_fts f JOIN messages m ON m.rowid = f.rowid \
                 WHERE messages_fts MATCH $1 \
                 AND m.owner_key = $2 AND ($3 IS NULL OR m.chat_id = $3) \
                 AND ($4 IS NULL OR m.type = $4) AND ($5 IS NULL OR m.created_at >= $5) \
                 AND ($6 IS NULL OR m.created_at <= $6)",
            )
            .bind(&q)
            .bind(search::owner_key(owner))
            .bind(f.chat_id)
            .bind(f.kind.clone())
            .bind(f.start)
            .bind(f.end)
            .fetch_one(p)
            .await?;
            Ok((Vec::new(), total as u64))
        }
        ReadDb::Postgres(p) => {
            let folded = search::fold(search);
            // The owner's key lexeme (see migration 0008) makes GIN intersect the words'
            // postings with the owner's; the join checks the owner on the row itself.
            const FROM: &str = "FROM messages m JOIN chats c ON c.id = m.chat_id, \
                 plainto_tsquery('simple', $1) q \
                 WHERE m.search @@ (q && ('u' || replace($2::TEXT, '-', ''))::TSQUERY) \
                 AND c.owner_id = $2 AND ($3::UUID IS NULL OR m.chat_id = $3) \
                 AND ($4::TEXT IS NULL OR m.type = $4) \
                 AND ($5::TIMESTAMPTZ IS NULL OR m.created_at >= $5) \
                 AND ($6::TIMESTAMPTZ IS NULL OR m.created_at <= $6)";
            let rows = sqlx::query_as::<_, Counted>(sqlx::AssertSqlSafe(format!(
                "SELECT m.id, m.chat_id, m.user_id, m.role, m.content, m.type, m.created_at, \
                 m.updated_at, COUNT(*) OVER () AS total {FROM} \
                 ORDER BY ts_rank(m.search, q) DESC, m.created_at DESC LIMIT $7 OFFSET $8"
            )))
            .bind(&folded)
            .bind(owner)
            .bind(f.chat_id)
            .bind(f.kind.clone())
            .bind(f.start)
            .bind(f.end)
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await?;
            if let Some(first) = rows.first() {
                let total = first.total as u64;
                return Ok((rows.into_iter().map(|r| r.row).collect(), total));
            }
            let total: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {FROM}")))
                    .bind(&folded)
                    .bind(owner)
                    .bind(f.chat_id)
                    .bind(f.kind.clone())
                    .bind(f.start)
                    .bind(f.end)
                    .fetch_one(p)
                    .await?;
            Ok((Vec::new(), total as u64))
        }
    }
}

/// A search hit with the number of all hits.
#[derive(sqlx::FromRow)]
struct Counted {
    #[sqlx(flatten)]
    row: MessageRow,
    total: i64,
}

/// One page of a chat's messages, oldest first (no ownership check: for internal use).
pub async fn list_messages(
    db: &ReadDb,
    chat_id: Uuid,
    limit: u32,
    offset: u64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        MessageRow,
        "SELECT id, chat_id, user_id, role, content, type, created_at, updated_at FROM messages \
         WHERE chat_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3",
        chat_id,
        i64::from(limit),
        offset as i64
    )
}

/// An attachment as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AttachmentRow {
    /// Id.
    pub id: Uuid,
    /// Its message.
    pub message_id: Uuid,
    /// Media type.
    pub file_type: String,
    /// Where the file is.
    pub file_path: String,
    /// Added.
    pub created_at: DateTime<Utc>,
}

/// The chat of message `id`, if `owner` owns it.
pub async fn chat_of_message(
    db: &ReadDb,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    let row: Option<(Uuid,)> = query_as!(
        db,
        fetch_optional,
        (Uuid,),
        "SELECT m.chat_id FROM messages m JOIN chats c ON c.id = m.chat_id \
         WHERE m.id = $1 AND c.owner_id = $2",
        id,
        owner
    )?;
    Ok(row.map(|r| r.0))
}

/// Attachment `id`.
pub async fn get_attachment(db: &ReadDb, id: Uuid) -> Result<Option<AttachmentRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        AttachmentRow,
        "SELECT id, message_id, file_type, file_path, created_at FROM attachments WHERE id = $1",
        id
    )
}

/// Message `message_id`'s attachments, oldest first.
pub async fn list_attachments(
    db: &ReadDb,
    message_id: Uuid,
) -> Result<Vec<AttachmentRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        AttachmentRow,
        "SELECT id, message_id, file_type, file_path, created_at FROM attachments \
         WHERE message_id = $1 ORDER BY created_at, id",
        message_id
    )
}
