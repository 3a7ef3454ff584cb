//! The SQLite adapter: the embedded default, one file in WAL mode.
//!
//! SQLite has one writer at a time, so positions (the rowid) are assigned in commit order and the
//! global log never has gaps that fill later. Appends go through the group committer (`group_commit.rs`): one dedicated
//! connection writes every queued append in one `BEGIN IMMEDIATE` transaction, so concurrent
//! callers share one fsync (`synchronous = FULL`: durable on commit). Reads use a separate pool;
//! WAL lets them run while the writer commits.
//!
//! Waiting for new events uses an in-process signal from the writer. Another process writing to
//! the same file (an operator command, say) is noticed by a slow fallback check of the head.

use crate::group_commit::{BatchWriter, GroupCommit, Outcome, PendingAppend};
use crate::head;
use crate::{
    AppendResult, EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, RecordedEvent,
    StoreError, StoreResult, validate_append,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How often a waiter re-reads the head in case another process appended.
const CROSS_PROCESS_CHECK: Duration = Duration::from_millis(500);

/// Connection options every Confab SQLite connection uses: WAL, durable commits, a busy timeout
/// long enough to ride out another writer's commit.
pub fn connect_options(url: &str) -> StoreResult<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}

/// A read pool over `options`, for the store and the read models.
pub async fn read_pool(options: SqliteConnectOptions) -> StoreResult<SqlitePool> {
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(options)
        .await?)
}

/// The event store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: GroupCommit,
    head: watch::Receiver<u64>,
    limits: Limits,
}

impl SqliteStore {
    /// Opens the store on a database whose schema is already migrated; `pool` serves reads.
    pub async fn open(
        options: SqliteConnectOptions,
        pool: SqlitePool,
        limits: Limits,
    ) -> StoreResult<Self> {
        let conn = SqliteConnection::connect_with(&options).await?;
        let initial = head_of(&pool).await?;
        let (tx, head) = watch::channel(initial);
        let writer = GroupCommit::spawn(SqliteWriter { conn, head: tx });
        Ok(SqliteStore {
            pool,
            writer,
            head,
            limits,
        })
    }

    /// The read pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn head_of(pool: &SqlitePool) -> StoreResult<u64> {
    let head: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(head.unwrap_or(0) as u64)
}

struct SqliteWriter {
    conn: SqliteConnection,
    head: watch::Sender<u64>,
}

impl SqliteWriter {
    /// Writes a batch with a fixed number of statements, whatever its size: one for the head and
    /// the current versions of every stream in the batch, and one multi-row insert (the rows travel
    /// as one JSON array). Positions are assigned here, under the write lock, as head + 1...
    async fn write_in_tx(&mut self, batch: &[PendingAppend]) -> StoreResult<Vec<Outcome>> {
        let names: Vec<&str> = batch.iter().map(|a| a.stream.as_str()).collect();
        let names =
            serde_json::to_string(&names).map_err(|e| StoreError::Serialization(e.to_string()))?;
        // One statement for the head and every stream's version. The correlated MAX lets SQLite
        // seek to the last version of each stream instead of scanning all of them.
        let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT j.value, (SELECT MAX(e.version) FROM events e WHERE e.stream = j.value), \
             (SELECT COALESCE(MAX(position), 0) FROM events) FROM json_each($1) j",
        )
        .bind(names)
        .fetch_all(&mut self.conn)
        .await?;
        let head = rows.first().map(|r| r.2).unwrap_or(0);
        let mut versions: HashMap<&str, u64> = HashMap::with_capacity(rows.len());
        for (stream, version, _) in &rows {
            versions.insert(stream.as_str(), version.unwrap_or(0) as u64);
        }
        let mut position = head as u64;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut values = Vec::new();
        for append in batch {
            let current = versions.get(append.stream.as_str()).copied().unwrap_or(0);
            if !append.expected.matches(current) {
                outcomes.push(Outcome::Conflict { actual: current });
                continue;
            }
            let first = position + 1;
            for (i, event) in append.events.iter().enumerate() {
                position += 1;
                values.push(serde_json::json!({
                    "p": position,
                    "id": event.event_id.simple().to_string(),
                    "s": append.stream,
                    "v": current + i as u64 + 1,
                    "t": event.event_type,
                    "sv": event.schema_version,
                    "pl": event.payload,
                    "m": event.metadata,
                }));
            }
            let next = current + append.events.len() as u64;
            versions.insert(append.stream.as_str(), next);
            outcomes.push(Outcome::Appended(AppendResult {
                next_expected_version: next,
                first_position: first,
                last_position: position,
            }));
        }
        if !values.is_empty() {
            let values = serde_json::to_string(&values)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            sqlx::query(
                "INSERT INTO events (position, event_id, stream, version, event_type, \
                 schema_version, payload, metadata, recorded_at) \
                 SELECT value->>'p', unhex(value->>'id'), value->>'s', value->>'v', value->>'t', \
                 value->>'sv', value->'pl', value->'m', $2 FROM jsonb_each(jsonb($1))",
            )
            .bind(values)
            .bind(Utc::now())
            .execute(&mut self.conn)
            .await?;
        }
        Ok(outcomes)
    }
}

#[async_trait]
impl BatchWriter for SqliteWriter {
    async fn write_batch(&mut self, batch: &[PendingAppend]) -> StoreResult<Vec<Outcome>> {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        match self.write_in_tx(batch).await {
            Ok(outcomes) => {
                if let Err(e) = sqlx::query("COMMIT").execute(&mut self.conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                    return Err(e.into());
                }
                Ok(outcomes)
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                Err(e)
            }
        }
    }

    fn committed(&mut self, to: u64) {
        head::advance(&self.head, to);
    }
}

fn decode(row: &SqliteRow) -> StoreResult<RecordedEvent> {
    let payload: String = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    let position: i64 = row.try_get("position")?;
    let version: i64 = row.try_get("version")?;
    let schema_version: i64 = row.try_get("schema_version")?;
    Ok(RecordedEvent {
        event_id: row.try_get::<Uuid, _>("event_id")?,
        stream: row.try_get("stream")?,
        version: version as u64,
        position: position as u64,
        event_type: row.try_get("event_type")?,
        schema_version: schema_version as u32,
        payload: serde_json::from_str(&payload)
            .map_err(|e| StoreError::Serialization(format!("payload at {position}: {e}")))?,
        metadata: serde_json::from_str::<EventMetadata>(&metadata)
            .map_err(|e| StoreError::Serialization(format!("metadata at {position}: {e}")))?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    })
}

#[async_trait]
impl EventStore for SqliteStore {
    #[tracing::instrument(skip_all, fields(stream = %stream, events = events.len()))]
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        validate_append(&self.limits, stream, &events)?;
        self.writer.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let rows = sqlx::query(concat!(
            "SELECT position, event_id, stream, version, event_type, schema_version, payload, ",
            "metadata, recorded_at FROM events WHERE stream = ?1 AND version >= ?2 ",
            "ORDER BY version LIMIT ?3"
        ))
        .bind(stream)
        .bind(from_version as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>> {
        let rows = sqlx::query(concat!(
            "SELECT position, event_id, stream, version, event_type, schema_version, payload, ",
            "metadata, recorded_at FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn head_position(&self) -> StoreResult<u64> {
        let head = head_of(&self.pool).await?;
        Ok(head.max(*self.head.borrow()))
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> StoreResult<u64> {
        let pool = &self.pool;
        head::wait_past(
            self.head.clone(),
            after,
            timeout,
            CROSS_PROCESS_CHECK,
            || head_of(pool),
        )
        .await
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}
