//! The dead letters of projections (`projection_parked`): events a projection could not apply
//! after its retries, parked (it went on past them) or halted on (it stopped there), until an
//! operator retries or skips them.

use crate::db::{ReadDb, Tx};
use crate::{execute, query_as};
use chrono::{DateTime, Utc};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// The projection went on past the event.
pub const PARKED: &str = "parked";
/// The projection stopped on the event.
pub const HALTED: &str = "halted";

/// One event a projection could not apply.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ParkedRow {
    /// The projection.
    pub projection: String,
    /// The event's global position.
    pub position: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its stream.
    pub stream: String,
    /// `parked` or `halted`.
    pub status: String,
    /// The projection's checkpoint when it failed.
    pub after: i64,
    /// The last failure.
    pub error: String,
    /// Tries so far.
    pub attempts: i64,
    /// When it was parked (or halted on).
    pub parked_at: DateTime<Utc>,
}

/// Records, inside `tx`, that `projection` could not apply `event`.
pub async fn insert(
    tx: &mut Tx,
    projection: &str,
    event: &RecordedEvent,
    status: &str,
    after: u64,
    error: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    execute!(
        tx,
        "INSERT INTO projection_parked (projection, position, event_id, event_type, stream, \
         status, after, error, attempts, parked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (projection, position) DO UPDATE SET status = EXCLUDED.status, \
         after = EXCLUDED.after, error = EXCLUDED.error, \
         attempts = projection_parked.attempts + EXCLUDED.attempts",
        projection,
        event.position as i64,
        event.event_id,
        &event.event_type,
        &event.stream,
        status,
        after as i64,
        error,
        i64::from(attempts),
        Utc::now()
    )?;
    Ok(())
}

/// Records, in its own transaction, that `projection` could not apply `event`.
pub async fn record(
    db: &ReadDb,
    projection: &str,
    event: &RecordedEvent,
    status: &str,
    after: u64,
    error: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    insert(&mut tx, projection, event, status, after, error, attempts).await?;
    tx.commit().await
}

/// Every projection halted, with the position it halted on.
pub async fn halted(db: &ReadDb) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = query_as!(
        db,
        fetch_all,
        (String, i64),
        "SELECT projection, position FROM projection_parked WHERE status = $1 \
         ORDER BY projection, position",
        HALTED
    )?;
    Ok(rows.into_iter().map(|(n, p)| (n, p as u64)).collect())
}

/// How many events each projection has parked (set aside to go on), by projection.
pub async fn parked_counts(db: &ReadDb) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = query_as!(
        db,
        fetch_all,
        (String, i64),
        "SELECT projection, COUNT(*) FROM projection_parked WHERE status = $1 \
         GROUP BY projection ORDER BY projection",
        PARKED
    )?;
    Ok(rows.into_iter().map(|(n, c)| (n, c as u64)).collect())
}

/// Whether `projection` is still halted on `position`.
pub async fn is_halted(db: &ReadDb, projection: &str, position: u64) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> = query_as!(
        db,
        fetch_optional,
        (i64,),
        "SELECT position FROM projection_parked WHERE projection = $1 AND position = $2 \
         AND status = $3",
        projection,
        position as i64,
        HALTED
    )?;
    Ok(row.is_some())
}

/// The events parked or halted on, of one projection or all, in order.
pub async fn list(db: &ReadDb, projection: Option<&str>) -> Result<Vec<ParkedRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        ParkedRow,
        "SELECT projection, position, event_id, event_type, stream, status, after, error, \
         CAST(attempts AS BIGINT) AS attempts, parked_at FROM projection_parked \
         WHERE ($1 IS NULL OR projection = $1) ORDER BY projection, position",
        projection
    )
}

/// Removes, inside `tx`, the row of `projection` at `position`; whether there was one.
pub async fn remove(tx: &mut Tx, projection: &str, position: u64) -> Result<bool, sqlx::Error> {
    let n = execute!(
        tx,
        "DELETE FROM projection_parked WHERE projection = $1 AND position = $2",
        projection,
        position as i64
    )?;
    Ok(n > 0)
}

/// Notes another failed try of the event of `projection` at `position`.
pub async fn failed_again(
    db: &ReadDb,
    projection: &str,
    position: u64,
    error: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    execute!(
        &mut tx,
        "UPDATE projection_parked SET error = $3, attempts = attempts + 1 \
         WHERE projection = $1 AND position = $2",
        projection,
        position as i64,
        error
    )?;
    tx.commit().await
}
