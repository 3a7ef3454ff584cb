//! Online rebuild: a projection's read model is rebuilt from position 0 side by side with the
//! live one, which keeps serving, and replaces it in one transaction together with its
//! checkpoint (`confab projections rebuild NAME --online`, and at start-up when a projection's
//! version in code differs from the one that built its read model).
//!
//! The new read model is built in the audit's shadow (another schema on PostgreSQL, another
//! file on SQLite) by replaying the log up to the live checkpoint, again and again while the
//! live projection moves, until it is within a batch of it. The swap then takes the live
//! checkpoint's lock (the row lock on PostgreSQL, the write lock on SQLite), so the live runner
//! waits; applies to the shadow the last events up to exactly the live checkpoint; replaces the
//! live tables' rows with the shadow's (on SQLite with their rowids, and the full-text index's
//! own tables, whose rows are keyed by them); stamps the checkpoint with the code's version;
//! and commits. Readers see the old read model until that commit and the new one after it:
//! never an empty or a partial one. Writers of that read model wait for the swap; on SQLite,
//! where one file holds the log too, every writer does.

use crate::audit::{self, Kind, Replay, Shadow};
use anyhow::Context;
use confab_eventstore::EventStore;
use confab_projections::{Projection, ReadDb, Tx};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// The shadow is swapped in once it is within this many positions of the live checkpoint:
/// the rest is applied while the live runner waits.
const CLOSE_ENOUGH: u64 = 1_000;
/// Events read from the log per batch while the live runner waits.
const BATCH: usize = 1_000;

/// What an online rebuild did.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The projection.
    pub projection: &'static str,
    /// The checkpoint the new read model took over at.
    pub position: u64,
    /// Events of the log replayed.
    pub events: u64,
    /// Rows the new read model holds (in the tables `confab audit` compares).
    pub rows: u64,
    /// How long it took, in seconds.
    pub seconds: f64,
}

/// Rebuilds `projection` side by side and swaps it in (see the module's documentation). With
/// `progress`, replay progress goes to stderr. If `stop` turns true first, the shadow is dropped
/// and the live read model stays as it was.
pub async fn online(
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    projection: Arc<dyn Projection>,
    progress: bool,
    stop: Option<watch::Receiver<bool>>,
) -> anyhow::Result<Rebuilt> {
    let started = Instant::now();
    let name = projection.name();
    let shadow = Shadow::create(db, "rebuild")
        .await
        .with_context(|| format!("cannot create the shadow to rebuild {name} in"))?;
    let work = build_and_swap(&*store, db, &shadow, projection, progress);
    let result = match stop {
        Some(mut stop) => tokio::select! {
            r = work => r,
            _ = stop.wait_for(|s| *s) => Err(anyhow::anyhow!(
                "the online rebuild of {name} was stopped; the live read model is unchanged"
            )),
        },
        None => work.await,
    };
    let dropped = shadow.drop().await;
    let (position, events, rows) = result?;
    dropped.context("cannot drop the shadow")?;
    Ok(Rebuilt {
        projection: name,
        position,
        events,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Replays into the shadow until it is close to the live checkpoint, then swaps; returns the
/// position swapped at, the events replayed and the rows swapped in.
async fn build_and_swap(
    store: &dyn EventStore,
    db: &ReadDb,
    shadow: &Shadow,
    projection: Arc<dyn Projection>,
    progress: bool,
) -> anyhow::Result<(u64, u64, u64)> {
    let name = projection.name();
    let mut replay = [Replay {
        passed: audit::passed_over(store, db, name).await?,
        projection,
        at: 0,
        target: 0,
    }];
    let mut events = 0;
    loop {
        replay[0].target = audit::checkpoint(db, name).await?;
        events += audit::replay_as("rebuild", store, &shadow.db, &mut replay, progress).await?;
        let live = audit::checkpoint(db, name).await?;
        if live.saturating_sub(replay[0].at) <= CLOSE_ENOUGH {
            break;
        }
    }
    if progress {
        eprintln!("rebuild: {name} replayed; swapping it in");
    }
    let [replay] = replay;
    swap(store, db, shadow, replay, events).await
}

/// Catches the shadow up to the live checkpoint while holding its lock, then replaces the live
/// rows and checkpoint in the same transaction.
async fn swap(
    store: &dyn EventStore,
    db: &ReadDb,
    shadow: &Shadow,
    mut replay: Replay,
    mut events: u64,
) -> anyhow::Result<(u64, u64, u64)> {
    let projection = replay.projection.clone();
    let name = projection.name();
    let (live, copy) = match &shadow.kind {
        Kind::Sqlite(_) => ("live".to_owned(), "main".to_owned()),
        Kind::Postgres {
            live_schema,
            schema,
            ..
        } => (audit::ident(live_schema), schema.clone()),
    };
    // In this process, the live file's writers queue behind the swap instead of meeting
    // SQLite's busy timeout.
    let _gate = match db {
        ReadDb::Sqlite(p) => Some(
            confab_eventstore::sqlite::write_gate(&p.connect_options())
                .lock_owned()
                .await,
        ),
        ReadDb::Postgres(_) => None,
    };
    let mut tx = shadow.db.begin().await?;
    let lock = match &tx {
        Tx::Sqlite(_) => {
            format!("SELECT position FROM {live}.projection_checkpoints WHERE name = $1")
        }
        Tx::Postgres(_) => {
            format!("SELECT position FROM {live}.projection_checkpoints WHERE name = $1 FOR UPDATE")
        }
    };
    let at = optional_i64(&mut tx, &lock, name)
        .await?
        .unwrap_or(0)
        .max(0) as u64;
    if at < replay.at {
        anyhow::bail!(
            "{name}'s live checkpoint moved back to {at} (an offline rebuild ran meanwhile?); \
             run the online rebuild again"
        );
    }
    // The last events, up to exactly the live checkpoint, while its runner waits.
    while replay.at < at {
        let batch = store.read_all(replay.at, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        let handled: Vec<_> = batch
            .iter()
            .filter(|e| e.position <= at && projection.handles(&e.event_type))
            .filter(|e| !replay.passed.contains(&e.position))
            .collect();
        events += batch.iter().filter(|e| e.position <= at).count() as u64;
        if !handled.is_empty() {
            projection
                .apply_batch(&mut tx, &handled)
                .await
                .with_context(|| format!("replaying {name} failed near position {last}"))?;
        }
        replay.at = last.min(at);
    }
    let mut rows = 0;
    let tables = tables_of(&mut tx, name).await?;
    for t in tables.iter().rev() {
        exec(
            &mut tx,
            &format!("DELETE FROM {live}.{}", audit::ident(&t.name)),
        )
        .await?;
    }
    for t in &tables {
        let copied = copy_rows(&mut tx, &live, &copy, t).await?;
        if !t.internal {
            rows += copied;
        }
    }
    let now = chrono::Utc::now();
    let version = i64::from(projection.version());
    let update = format!(
        "UPDATE {live}.projection_checkpoints SET position = $2, updated_at = $3, version = $4 \
         WHERE name = $1"
    );
    let insert = format!(
        "INSERT INTO {live}.projection_checkpoints (name, position, updated_at, version) \
         VALUES ($1, $2, $3, $4)"
    );
    let updated = match &mut tx {
        Tx::Sqlite(t) => sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(name)
            .bind(at as i64)
            .bind(now)
            .bind(version)
            .execute(&mut **t)
            .await?
            .rows_affected(),
        Tx::Postgres(t) => sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(name)
            .bind(at as i64)
            .bind(now)
            .bind(version as i32)
            .execute(&mut **t)
            .await?
            .rows_affected(),
    };
    if updated == 0 {
        match &mut tx {
            Tx::Sqlite(t) => {
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(name)
                    .bind(at as i64)
                    .bind(now)
                    .bind(version)
                    .execute(&mut **t)
                    .await?;
            }
            Tx::Postgres(t) => {
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(name)
                    .bind(at as i64)
                    .bind(now)
                    .bind(version as i32)
                    .execute(&mut **t)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok((at, events, rows))
}

/// A table the swap replaces.
struct Table {
    name: String,
    /// One of a full-text index's own tables (SQLite), copied as they are.
    internal: bool,
}

/// The tables of `projection` in the order they are filled: the read model's tables, then on
/// SQLite the own tables of its full-text indexes (contentless: their rows are keyed by the
/// read model's rowids and cannot be rebuilt from the rows alone).
async fn tables_of(tx: &mut Tx, projection: &str) -> anyhow::Result<Vec<Table>> {
    let mut out: Vec<Table> = audit::tables(projection)
        .iter()
        .map(|t| Table {
            name: (*t).to_owned(),
            internal: false,
        })
        .collect();
    if let Tx::Sqlite(t) = tx {
        let indexes: &[&str] = match projection {
            "chats" => &["messages_fts"],
            "documents" => &["document_chunks_fts"],
            _ => &[],
        };
        for index in indexes {
            let own: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name IN \
                 ($1 || '_data', $1 || '_idx', $1 || '_docsize', $1 || '_config', \
                 $1 || '_content') ORDER BY name",
            )
            .bind(index)
            .fetch_all(&mut **t)
            .await?;
            out.extend(own.into_iter().map(|name| Table {
                name,
                internal: true,
            }));
        }
    }
    Ok(out)
}

/// Copies every row of `table` from the shadow into the live schema; returns how many.
async fn copy_rows(tx: &mut Tx, live: &str, copy: &str, table: &Table) -> anyhow::Result<u64> {
    let t = audit::ident(&table.name);
    let copied = match tx {
        Tx::Sqlite(c) => {
            let sql = if table.internal {
                format!("INSERT INTO {live}.{t} SELECT * FROM {copy}.{t}")
            } else {
                let columns: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM pragma_table_info($1, 'main') ORDER BY cid",
                )
                .bind(&table.name)
                .fetch_all(&mut **c)
                .await?;
                let list = columns
                    .iter()
                    .map(|c| audit::ident(c))
                    .collect::<Vec<_>>()
                    .join(", ");
                // With their rowids: the full-text index's rows are keyed by them.
                format!(
                    "INSERT INTO {live}.{t} (rowid, {list}) SELECT rowid, {list} FROM {copy}.{t}"
                )
            };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut **c)
                .await?
                .rows_affected()
        }
        Tx::Postgres(c) => {
            let qualified = format!("{copy}.{t}");
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT attname::TEXT FROM pg_attribute WHERE attrelid = $1::regclass \
                 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            )
            .bind(&qualified)
            .fetch_all(&mut **c)
            .await?;
            let list = columns
                .iter()
                .map(|c| audit::ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO {live}.{t} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {qualified}"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut **c)
                .await?
                .rows_affected()
        }
    };
    Ok(copied)
}

async fn exec(tx: &mut Tx, sql: &str) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Sqlite(t) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut **t)
            .await
            .map(|_| ()),
        Tx::Postgres(t) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut **t)
            .await
            .map(|_| ()),
    }
}

async fn optional_i64(tx: &mut Tx, sql: &str, bind: &str) -> Result<Option<i64>, sqlx::Error> {
    match tx {
        Tx::Sqlite(t) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .bind(bind)
                .fetch_optional(&mut **t)
                .await
        }
        Tx::Postgres(t) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .bind(bind)
                .fetch_optional(&mut **t)
                .await
        }
    }
}
