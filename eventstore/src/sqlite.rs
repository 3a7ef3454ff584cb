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
        .foreign_keys(true)
        // Deleted rows are overwritten, not left in free space: an erased user's data must
        // not linger in the file (issue 16).
        .pragma("secure_delete", "on"))
}

/// The lock every write transaction of this process on one SQLite file takes before `BEGIN
/// IMMEDIATE` and holds until it ends: the store's appends and the projections' batches.
///
/// SQLite has one writer at a time, and a connection that finds the write lock taken waits in
/// SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20... ms between tries. Two writers in one
/// process (the log's group commit and a projection) met there constantly under load, and those
/// sleeps were most of the tail latency of a write. Queued on this lock instead, the next writer
/// starts the moment the previous one commits. Writers in other processes (an operator command)
/// still meet in the busy handler.
pub type WriteGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// The [`WriteGate`] of the file `options` open: the same one for every caller in this process.
pub fn write_gate(options: &SqliteConnectOptions) -> WriteGate {
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    static GATES: OnceLock<Mutex<HashMap<std::path::PathBuf, Weak<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    let file = options.get_filename();
    let key = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut gates = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(gate) = gates.get(&key).and_then(Weak::upgrade) {
        return gate;
    }
    gates.retain(|_, g| g.strong_count() > 0);
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    gates.insert(key, Arc::downgrade(&gate));
    gate
}

/// A read pool over `options`, for the store's reads and the read models.
///
/// The projections write their batches through this pool, with `synchronous = NORMAL`: in WAL
/// mode a commit is then atomic but not flushed until the next durable commit or checkpoint.
/// Events are only ever written by the store's own connection, with `synchronous = FULL`, and
/// each of its commits flushes the WAL, so the log stays durable and in order. A read-model batch
/// lost to a power cut is one whose checkpoint was lost with it: the projection applies those
/// events again on the next start (which catches up before serving). This takes a second fsync
/// off every write's path to read-your-writes.
pub async fn read_pool(options: SqliteConnectOptions) -> StoreResult<SqlitePool> {
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(options.synchronous(SqliteSynchronous::Normal))
        .await?)
}

/// The event store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: GroupCommit,
    head: watch::Receiver<u64>,
    recent: Recent,
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
        let recent = Recent::default();
        let writer = GroupCommit::spawn(SqliteWriter {
            conn,
            head: tx,
            gate: write_gate(&options),
            recent: recent.clone(),
            written: Vec::new(),
        });
        Ok(SqliteStore {
            pool,
            writer,
            head,
            recent,
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
    gate: WriteGate,
    recent: Recent,
    /// The events of the transaction in progress, for `recent` once it commits.
    written: Vec<RecordedEvent>,
}

/// How many of the latest events this process appended are kept in memory.
const RECENT_EVENTS: usize = 4_096;

/// The latest events this process appended, in position order and without gaps, so that the
/// projections and other followers of the log read what was just written without a query (each
/// of them reads every batch, right after it commits). It only ever holds committed events whose
/// positions follow one another; when another process appended in between, it starts again.
#[derive(Clone, Default)]
struct Recent(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<RecordedEvent>>>);

impl Recent {
    /// Records a committed batch that followed position `head`.
    fn push(&self, head: u64, batch: &mut Vec<RecordedEvent>) {
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if recent.back().map(|e| e.position) != Some(head) {
            recent.clear();
        }
        recent.extend(batch.drain(..));
        let excess = recent.len().saturating_sub(RECENT_EVENTS);
        recent.drain(..excess);
    }

    /// Up to `limit` events after position `after`, if they are all here: `after` is inside what
    /// is kept and something newer is kept too. Otherwise `None`, and the caller reads the file.
    fn after(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        let recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first = recent.front()?.position;
        let last = recent.back()?.position;
        if after + 1 < first || after >= last {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(recent.iter().skip(skip).take(limit).cloned().collect())
    }
}

impl SqliteWriter {
    /// Writes a batch with a fixed number of statements, whatever its size: one for the head and
    /// the current versions of every stream in the batch, and one multi-row insert (the rows travel
    /// as one JSON array). Positions are assigned here, under the write lock, as head + 1...
    /// Returns the head before the batch, and each append's outcome.
    async fn write_in_tx(&mut self, batch: &[PendingAppend]) -> StoreResult<(u64, Vec<Outcome>)> {
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
        let recorded_at = Utc::now();
        self.written.clear();
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
                self.written.push(RecordedEvent {
                    event_id: event.event_id,
                    stream: append.stream.clone(),
                    version: current + i as u64 + 1,
                    position,
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    payload: event.payload.clone(),
                    metadata: event.metadata.clone(),
                    recorded_at,
                });
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
            .bind(recorded_at)
            .execute(&mut self.conn)
            .await?;
        }
        Ok((head as u64, outcomes))
    }
}

#[async_trait]
impl BatchWriter for SqliteWriter {
    async fn write_batch(&mut self, batch: &[PendingAppend]) -> StoreResult<Vec<Outcome>> {
        let gate = std::sync::Arc::clone(&self.gate);
        let _writing = gate.lock().await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        match self.write_in_tx(batch).await {
            Ok((head, outcomes)) => {
                if let Err(e) = sqlx::query("COMMIT").execute(&mut self.conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                    return Err(e.into());
                }
                // Before the head moves (in `committed`), so that whoever it wakes finds them.
                self.recent.push(head, &mut self.written);
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
        if let Some(events) = self.recent.after(after, limit) {
            return Ok(events);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: u64) -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::now_v7(),
            stream: "s".into(),
            version: position,
            position,
            event_type: "t".into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: EventMetadata::default(),
            recorded_at: Utc::now(),
        }
    }

    fn positions(events: Option<Vec<RecordedEvent>>) -> Option<Vec<u64>> {
        events.map(|e| e.iter().map(|e| e.position).collect())
    }

    #[test]
    fn recent_events_serve_only_reads_they_cover_entirely() {
        let recent = Recent::default();
        assert_eq!(positions(recent.after(0, 10)), None);
        // Positions 11..=15 after a head of 10 this process did not see being written.
        recent.push(10, &mut (11..=15).map(at).collect());
        assert_eq!(positions(recent.after(9, 10)), None, "10 is not kept");
        assert_eq!(
            positions(recent.after(10, 10)),
            Some(vec![11, 12, 13, 14, 15])
        );
        assert_eq!(positions(recent.after(12, 2)), Some(vec![13, 14]));
        assert_eq!(
            positions(recent.after(15, 10)),
            None,
            "nothing newer is kept"
        );
        // The next batch follows on: kept after the others.
        recent.push(15, &mut vec![at(16)]);
        assert_eq!(positions(recent.after(14, 10)), Some(vec![15, 16]));
        // Another process wrote 17..=19: what was kept no longer runs on, so it starts again.
        recent.push(19, &mut vec![at(20)]);
        assert_eq!(positions(recent.after(16, 10)), None);
        assert_eq!(positions(recent.after(19, 10)), Some(vec![20]));
    }

    #[test]
    fn recent_events_keep_only_the_latest() {
        let recent = Recent::default();
        let n = RECENT_EVENTS as u64 + 100;
        recent.push(0, &mut (1..=n).map(at).collect());
        assert_eq!(positions(recent.after(99, 1)), None);
        assert_eq!(positions(recent.after(100, 1)), Some(vec![101]));
        assert_eq!(positions(recent.after(n - 1, 5)), Some(vec![n]));
    }
}
