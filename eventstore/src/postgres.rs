//! The PostgreSQL adapter, for several API and worker processes sharing one log.
//!
//! # Why positions never appear out of order (the sequence-gap problem)
//!
//! With a plain `BIGSERIAL`, two transactions take positions 7 and 8, the one holding 8 commits
//! first, a reader checkpoints at 8, and 7 becomes visible afterwards and is skipped forever.
//! The known fixes are: (a) a `xid8` column and a `pg_snapshot_xmin` fence on every read, with an
//! `(xid, position)` checkpoint; (b) serialised position assignment; (c) an epoch counter of
//! in-flight writers.
//!
//! Confab uses (b). `confab_append()` (see `migrations/postgres`) takes the row lock on
//! `event_log_head` before it assigns positions and holds it until commit. PostgreSQL makes a
//! transaction visible before it releases its locks, so when the next appender gets the lock,
//! every lower position is already committed and visible: the log only grows at its end, and a
//! reader needs nothing more than `WHERE position > $checkpoint ORDER BY position`. Positions
//! are also dense, which makes "projection X has reached P" a plain comparison.
//!
//! The cost is that appends serialise on one lock for the length of their transaction, commit
//! flush included. Two things keep that cheap. Appends are only ever made by `confab_append()`,
//! one statement in its own implicit transaction, so nothing slow (no client round trip, no user
//! transaction) ever happens while the lock is held, and a long-running transaction elsewhere
//! cannot stall the log, unlike the xmin fence of (a), where one idle-in-transaction session
//! holds every reader back. And each process funnels its appends through the group committer (`group_commit.rs`), so one
//! lock acquisition and one WAL flush carry a whole batch of appends from many callers. Under
//! contention throughput therefore grows with the batch size rather than being capped at one
//! commit per event; `docs/benchmarks.md` has the figures.
//!
//! Waiting for events uses `LISTEN confab_events`: `confab_append()` notifies with the new head,
//! and PostgreSQL delivers notifications only on commit. A slow fallback re-read of the head
//! covers a dropped listener connection.

use crate::group_commit::{BatchWriter, GroupCommit, Outcome, PendingAppend};
use crate::head::{self, advance};
use crate::{
    AppendResult, EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, RecordedEvent,
    StoreError, StoreResult, validate_append,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::types::Json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// The notification channel `confab_append()` signals on.
pub const NOTIFY_CHANNEL: &str = "confab_events";

/// How often a waiter re-reads the head in case a notification was lost.
const FALLBACK_CHECK: Duration = Duration::from_secs(1);

/// The event store in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    writer: GroupCommit,
    head: watch::Receiver<u64>,
    limits: Limits,
}

impl PostgresStore {
    /// Opens the store on a database whose schema is already migrated, and starts listening for
    /// appends made by other processes.
    pub async fn open(pool: PgPool, limits: Limits) -> StoreResult<Self> {
        let initial = head_of(&pool).await?;
        let (tx, head) = watch::channel(initial);
        let tx = Arc::new(tx);
        tokio::spawn(listen(pool.clone(), Arc::clone(&tx)));
        // One batch in flight per process: a second one would only wait on the head lock
        // (measured: no gain, smaller batches).
        let writer = GroupCommit::spawn(PgWriter {
            pool: pool.clone(),
            head: tx,
        });
        Ok(PostgresStore {
            pool,
            writer,
            head,
            limits,
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Relays `NOTIFY confab_events` into the head signal until the store is dropped.
async fn listen(pool: PgPool, head: Arc<watch::Sender<u64>>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "event store listener cannot connect; retrying");
                tokio::select! {
                    _ = head.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "event store listener cannot LISTEN; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // A notification may have been missed while not listening.
        if let Ok(h) = head_of(&pool).await {
            advance(&head, h);
        }
        loop {
            tokio::select! {
                _ = head.closed() => return,
                n = listener.recv() => match n {
                    Ok(n) => {
                        if let Ok(pos) = n.payload().parse::<u64>() {
                            advance(&head, pos);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event store listener lost its connection");
                        break;
                    }
                }
            }
        }
    }
}

async fn head_of(pool: &PgPool) -> StoreResult<u64> {
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head WHERE id")
        .fetch_one(pool)
        .await?;
    Ok(head as u64)
}

struct PgWriter {
    pool: PgPool,
    head: Arc<watch::Sender<u64>>,
}

#[async_trait]
impl BatchWriter for PgWriter {
    async fn write_batch(&mut self, batch: &[PendingAppend]) -> StoreResult<Vec<Outcome>> {
        let requests: Vec<serde_json::Value> = batch
            .iter()
            .map(|a| {
                let events: Vec<serde_json::Value> = a
                    .events
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.event_id,
                            "type": e.event_type,
                            "schemaVersion": e.schema_version,
                            "payload": e.payload,
                            "metadata": e.metadata,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "stream": a.stream,
                    "expected": a.expected.as_i64(),
                    "events": events,
                })
            })
            .collect();
        let rows = sqlx::query(
            "SELECT idx, ok, stream_version, first_pos, last_pos FROM confab_append($1) \
             ORDER BY idx",
        )
        .bind(Json(requests))
        .fetch_all(&self.pool)
        .await?;
        if rows.len() != batch.len() {
            return Err(StoreError::Serialization(format!(
                "confab_append answered {} rows for {} appends",
                rows.len(),
                batch.len()
            )));
        }
        rows.iter()
            .map(|row| {
                let ok: bool = row.try_get("ok")?;
                let version: i64 = row.try_get("stream_version")?;
                if !ok {
                    return Ok(Outcome::Conflict {
                        actual: version as u64,
                    });
                }
                let first: i64 = row.try_get("first_pos")?;
                let last: i64 = row.try_get("last_pos")?;
                Ok(Outcome::Appended(AppendResult {
                    next_expected_version: version as u64,
                    first_position: first as u64,
                    last_position: last as u64,
                }))
            })
            .collect()
    }

    fn committed(&mut self, head: u64) {
        advance(&self.head, head);
    }
}

fn decode(row: &PgRow) -> StoreResult<RecordedEvent> {
    let position: i64 = row.try_get("position")?;
    let version: i64 = row.try_get("version")?;
    let schema_version: i32 = row.try_get("schema_version")?;
    let Json(payload): Json<serde_json::Value> = row.try_get("payload")?;
    let Json(metadata): Json<EventMetadata> = row
        .try_get("metadata")
        .map_err(|e| StoreError::Serialization(format!("metadata at {position}: {e}")))?;
    Ok(RecordedEvent {
        event_id: row.try_get::<Uuid, _>("event_id")?,
        stream: row.try_get("stream")?,
        version: version as u64,
        position: position as u64,
        event_type: row.try_get("event_type")?,
        schema_version: schema_version as u32,
        payload,
        metadata,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    })
}

#[async_trait]
impl EventStore for PostgresStore {
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
            "metadata, recorded_at FROM events WHERE stream = $1 AND version >= $2 ",
            "ORDER BY version LIMIT $3"
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
            "metadata, recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn head_position(&self) -> StoreResult<u64> {
        head_of(&self.pool).await
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> StoreResult<u64> {
        let pool = &self.pool;
        head::wait_past(self.head.clone(), after, timeout, FALLBACK_CHECK, || {
            head_of(pool)
        })
        .await
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}
