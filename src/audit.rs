//! `confab audit`: replays the event log into a shadow copy of read models, compares the shadow
//! with the live tables at the same position, and checks the credit ledger's invariants.
//!
//! The shadow is another schema (`audit_<pid>`) on PostgreSQL and another file beside the
//! database on SQLite; it is dropped when the audit ends, also on error. Each projection is
//! replayed up to the checkpoint its live read model has reached, and the comparison reads that
//! checkpoint and the live tables in one snapshot, so the audit is safe while servers run: if
//! the live projection moved in between, the shadow catches up and the comparison runs again.

use anyhow::Context;
use confab_eventstore::EventStore;
use confab_projections::{Projection, ReadDb};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, Row, Sqlite};
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events read from the log per replayed batch.
const BATCH: usize = 1_000;
/// Differing rows listed per table and direction; more are counted.
const MAX_ROWS: usize = 100;
/// How many times the comparison is retried when a live projection moves under it.
const ATTEMPTS: usize = 5;

/// The tables each projection writes and the audit compares. Every column of these tables is a
/// function of the log alone: projections take times, ids and amounts from the events, never
/// from the clock or another service. Left out, as derived indexes rather than read models:
/// SQLite's full-text tables (`messages_fts`, `document_chunks_fts`: contentless, they cannot
/// be read back) and the vectors the embedding job writes (`chunk_embeddings`,
/// `chunk_vectors`), which depend on an external model.
pub fn tables(projection: &str) -> &'static [&'static str] {
    match projection {
        "accounts" => &["users", "sessions"],
        "chats" => &["chats", "messages", "attachments"],
        "settings" => &["settings"],
        "providers" => &["llm_providers", "user_llm_configs"],
        "credits" => &["credit_balances", "credit_transactions"],
        "credit_holds" => &["credit_holds"],
        "billing" => &[
            "billing_customers",
            "billing_subscriptions",
            "invoices",
            "stripe_events",
        ],
        "documents" => &["documents", "document_chunks"],
        _ => &[],
    }
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct Options {
    /// The projections to audit (all if empty).
    pub projections: Vec<String>,
    /// How long past its expiry a credit hold may stay open before it is a violation (the
    /// sweeper runs every minute).
    pub hold_grace: Duration,
    /// Whether to show progress on stderr.
    pub progress: bool,
}

/// The audit's findings.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether the read models equal the replay and every invariant holds.
    pub clean: bool,
    /// Per projection.
    pub projections: Vec<ProjectionReport>,
    /// Invariants that do not hold.
    pub violations: Vec<Violation>,
}

/// One projection's comparison.
#[derive(Debug, Serialize)]
pub struct ProjectionReport {
    /// The projection.
    pub projection: String,
    /// The checkpoint compared at.
    pub position: u64,
    /// Events of the log it was replayed over.
    pub events: u64,
    /// Per table.
    pub tables: Vec<TableReport>,
}

/// One table's comparison.
#[derive(Debug, Serialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Rows in the live read model.
    pub live_rows: u64,
    /// Rows in the replay.
    pub replay_rows: u64,
    /// SHA-256 (SQLite) or MD5 (PostgreSQL) of the live rows, in key order.
    pub live_checksum: String,
    /// The same of the replay.
    pub replay_checksum: String,
    /// Whether they are equal.
    pub equal: bool,
    /// The rows that differ (at most 100 each way).
    pub differences: Vec<RowDifference>,
}

/// A row that differs between the live read model and the replay.
#[derive(Debug, Serialize)]
pub struct RowDifference {
    /// Its primary key, `column=value` pairs.
    pub key: String,
    /// `changed`, `missing` (in the replay, not live) or `extra` (live, not in the replay).
    pub kind: &'static str,
    /// The columns that differ (every compared column when the row is missing or extra).
    /// Values are left out: read models hold personal data.
    pub columns: Vec<String>,
}

/// An invariant that does not hold.
#[derive(Debug, Serialize)]
pub struct Violation {
    /// `balance_equals_transactions` or `no_hold_open_past_expiry`.
    pub invariant: &'static str,
    /// The row: user or reservation.
    pub key: String,
    /// What is wrong.
    pub detail: String,
}

impl Report {
    /// How many differences and violations it found.
    pub fn problems(&self) -> usize {
        self.violations.len()
            + self
                .projections
                .iter()
                .flat_map(|p| &p.tables)
                .map(|t| {
                    if t.equal {
                        0
                    } else {
                        t.differences.len().max(1)
                    }
                })
                .sum::<usize>()
    }
}

/// Runs the audit of `opts.projections` (every one if empty) against the live read models.
pub async fn run(
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    all: Vec<Arc<dyn Projection>>,
    opts: &Options,
) -> anyhow::Result<Report> {
    let chosen: Vec<Arc<dyn Projection>> = if opts.projections.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for n in &opts.projections {
            let Some(p) = all.iter().find(|p| p.name() == n) else {
                anyhow::bail!(
                    "no projection named {n:?}; known: {}",
                    all.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                );
            };
            chosen.push(p.clone());
        }
        chosen
    };
    let shadow = Shadow::create(db, "audit")
        .await
        .context("cannot create the shadow")?;
    let result = audit(&*store, db, &shadow, &chosen, opts).await;
    let dropped = shadow.drop().await;
    let report = result?;
    dropped.context("cannot drop the shadow")?;
    Ok(report)
}

/// A projection being replayed into the shadow.
pub(crate) struct Replay {
    pub(crate) projection: Arc<dyn Projection>,
    /// Positions the live projection passed over: parked, or skipped by an operator.
    pub(crate) passed: HashSet<u64>,
    /// How far the shadow has applied it.
    pub(crate) at: u64,
    /// How far it is to go: the live checkpoint.
    pub(crate) target: u64,
}

/// The positions the live projection `name` passed over: events it parked, and events an
/// operator skipped (recorded in the stream `projection-NAME`). A replay passes over them too.
pub(crate) async fn passed_over(
    store: &dyn EventStore,
    db: &ReadDb,
    name: &str,
) -> anyhow::Result<HashSet<u64>> {
    let mut passed: HashSet<u64> = confab_projections::parked::list(db, Some(name))
        .await?
        .into_iter()
        .filter(|r| r.status == confab_projections::parked::PARKED)
        .map(|r| r.position as u64)
        .collect();
    let skips = confab_eventstore::read_whole_stream(store, &format!("projection-{name}")).await?;
    for e in skips {
        use confab_domain::EventSchema;
        let s = confab_domain::operations::EventSkipped::from_stored(
            &e.event_type,
            e.schema_version,
            e.payload,
        )?;
        passed.insert(s.position);
    }
    Ok(passed)
}

async fn audit(
    store: &dyn EventStore,
    db: &ReadDb,
    shadow: &Shadow,
    chosen: &[Arc<dyn Projection>],
    opts: &Options,
) -> anyhow::Result<Report> {
    let mut pending = Vec::new();
    for p in chosen {
        let name = p.name();
        pending.push(Replay {
            projection: p.clone(),
            passed: passed_over(store, db, name).await?,
            at: 0,
            target: 0,
        });
    }
    let mut done: Vec<ProjectionReport> = Vec::new();
    let mut events = 0;
    for _ in 0..ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        for r in &mut pending {
            r.target = checkpoint(db, r.projection.name()).await?;
        }
        events += replay(store, &shadow.db, &mut pending, opts.progress).await?;
        let mut moved = Vec::new();
        for r in pending {
            let name = r.projection.name();
            match shadow.compare(name, r.target).await? {
                Some(tables) => done.push(ProjectionReport {
                    projection: name.to_owned(),
                    position: r.target,
                    events,
                    tables,
                }),
                None => moved.push(r),
            }
        }
        pending = moved;
    }
    if let Some(r) = pending.first() {
        anyhow::bail!(
            "{} kept moving while it was compared ({ATTEMPTS} tries); audit it again when the \
             log is quieter",
            r.projection.name()
        );
    }
    // In the order asked for.
    done.sort_by_key(|p| chosen.iter().position(|c| c.name() == p.projection));
    let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
    let mut violations = Vec::new();
    if names.contains(&"credits") {
        violations.extend(unbalanced(db).await?);
    }
    if names.contains(&"credit_holds") {
        violations.extend(overdue_holds(db, opts.hold_grace).await?);
    }
    let mut report = Report {
        clean: false,
        projections: done,
        violations,
    };
    report.clean = report.problems() == 0;
    Ok(report)
}

pub(crate) async fn checkpoint(db: &ReadDb, name: &str) -> Result<u64, sqlx::Error> {
    let sql = "SELECT position FROM projection_checkpoints WHERE name = $1";
    let p: Option<i64> = match db {
        ReadDb::Sqlite(p) => sqlx::query_scalar(sql).bind(name).fetch_optional(p).await?,
        ReadDb::Postgres(p) => sqlx::query_scalar(sql).bind(name).fetch_optional(p).await?,
    };
    Ok(p.unwrap_or(0).max(0) as u64)
}

/// Brings every projection of `replays` in the shadow up to its target, reading the log once
/// for all of them; returns how many events of the log it read.
pub(crate) async fn replay(
    store: &dyn EventStore,
    shadow: &ReadDb,
    replays: &mut [Replay],
    progress: bool,
) -> anyhow::Result<u64> {
    replay_as("audit", store, shadow, replays, progress).await
}

/// [`replay`], its progress lines on a pipe prefixed with `label`.
pub(crate) async fn replay_as(
    label: &str,
    store: &dyn EventStore,
    shadow: &ReadDb,
    replays: &mut [Replay],
    progress: bool,
) -> anyhow::Result<u64> {
    let Some(from) = replays
        .iter()
        .filter(|r| r.at < r.target)
        .map(|r| r.at)
        .min()
    else {
        return Ok(0);
    };
    let to = replays.iter().map(|r| r.target).max().unwrap_or(0);
    let bar = if progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(to), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "replaying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_position(from);
        Some(bar)
    } else {
        None
    };
    let mut said = Instant::now();
    let mut at = from;
    let mut read = 0;
    while at < to {
        let batch = store.read_all(at, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        read += batch.iter().filter(|e| e.position <= to).count() as u64;
        for r in replays.iter_mut().filter(|r| r.at < r.target) {
            let p = &r.projection;
            let handled: Vec<_> = batch
                .iter()
                .filter(|e| e.position > r.at && e.position <= r.target)
                .filter(|e| p.handles(&e.event_type) && !r.passed.contains(&e.position))
                .collect();
            if !handled.is_empty() {
                let mut tx = shadow.begin().await?;
                p.apply_batch(&mut tx, &handled).await.with_context(|| {
                    format!("replaying {} failed near position {last}", p.name())
                })?;
                tx.commit().await?;
            }
            r.at = last.min(r.target);
        }
        at = last.min(to);
        if let Some(bar) = &bar {
            bar.set_position(at);
        } else if progress && (said.elapsed() > Duration::from_secs(5) || at >= to) {
            eprintln!("{label}: {at}/{to} events replayed");
            said = Instant::now();
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for r in replays.iter_mut() {
        // Nothing left in the log for it up to its target (the head moved back is impossible).
        r.at = r.at.max(r.target.min(at));
    }
    Ok(read)
}

/// The shadow read models, and a connection that sees them beside the live ones.
pub(crate) struct Shadow {
    /// The shadow, as projections write it.
    pub(crate) db: ReadDb,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    /// A file beside the database; its pool has one connection, with the live file attached
    /// as `live`.
    Sqlite(PathBuf),
    /// A schema beside the live one.
    Postgres {
        live: sqlx::PgPool,
        live_schema: String,
        schema: String,
    },
}

impl Shadow {
    /// Creates an empty shadow of every read model, named after `purpose` (`audit`,
    /// `rebuild`) and this process.
    pub(crate) async fn create(db: &ReadDb, purpose: &str) -> anyhow::Result<Shadow> {
        let pid = std::process::id();
        match db {
            ReadDb::Sqlite(live) => {
                let live_path = live.connect_options().get_filename().to_owned();
                let path = live_path.with_file_name(format!("{purpose}-{pid}.db"));
                remove_sqlite(&path);
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Memory)
                    .synchronous(SqliteSynchronous::Off)
                    // An online rebuild's swap waits here for the live file's writers.
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options)
                    .await?;
                let shadow = Shadow {
                    db: ReadDb::Sqlite(pool.clone()),
                    kind: Kind::Sqlite(path),
                };
                let made = async {
                    sqlx::query("ATTACH DATABASE $1 AS live")
                        .bind(live_path.to_string_lossy().into_owned())
                        .execute(&pool)
                        .await?;
                    copy_sqlite_schema(&pool).await
                }
                .await;
                match made {
                    Ok(()) => Ok(shadow),
                    Err(e) => {
                        let _ = shadow.drop().await;
                        Err(e.into())
                    }
                }
            }
            ReadDb::Postgres(live) => {
                let schema = format!("{purpose}_{pid}");
                let live_schema: String = sqlx::query_scalar("SELECT current_schema()")
                    .fetch_one(live)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(live)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(live)
                    .await?;
                let options = (*live.connect_options())
                    .clone()
                    .options([("search_path", format!("{schema},{live_schema}"))]);
                let pool = match PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {schema} CASCADE"
                        )))
                        .execute(live)
                        .await;
                        return Err(e.into());
                    }
                };
                let shadow = Shadow {
                    db: ReadDb::Postgres(pool),
                    kind: Kind::Postgres {
                        live: live.clone(),
                        live_schema: live_schema.clone(),
                        schema: schema.clone(),
                    },
                };
                let made = async {
                    for p in confab_projections::all() {
                        for t in tables(p.name()) {
                            sqlx::query(sqlx::AssertSqlSafe(format!(
                                "CREATE TABLE {schema}.{t} (LIKE {}.{t} INCLUDING ALL)",
                                ident(&live_schema)
                            )))
                            .execute(live)
                            .await?;
                        }
                    }
                    Ok::<_, sqlx::Error>(())
                }
                .await;
                match made {
                    Ok(()) => Ok(shadow),
                    Err(e) => {
                        let _ = shadow.drop().await;
                        Err(e.into())
                    }
                }
            }
        }
    }

    pub(crate) async fn drop(self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Sqlite(path) => {
                if let ReadDb::Sqlite(p) = &self.db {
                    p.close().await;
                }
                remove_sqlite(&path);
                Ok(())
            }
            Kind::Postgres { live, schema, .. } => {
                if let ReadDb::Postgres(p) = &self.db {
                    p.close().await;
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&live)
                .await?;
                Ok(())
            }
        }
    }

    /// Compares `projection`'s tables, live and shadow, in one snapshot of the live database
    /// in which its checkpoint is `at`; `None` if the checkpoint is elsewhere by then.
    async fn compare(&self, projection: &str, at: u64) -> anyhow::Result<Option<Vec<TableReport>>> {
        let mut conn = match (&self.db, &self.kind) {
            (ReadDb::Sqlite(p), Kind::Sqlite(_)) => Conn::Sqlite(p.acquire().await?),
            (_, Kind::Postgres { live, .. }) => Conn::Postgres(live.acquire().await?),
            _ => anyhow::bail!("the shadow is on another kind of database"),
        };
        let (live, shadow) = match &self.kind {
            Kind::Sqlite(_) => ("live".to_owned(), "main".to_owned()),
            Kind::Postgres {
                live_schema,
                schema,
                ..
            } => (ident(live_schema), schema.clone()),
        };
        conn.execute(match conn {
            Conn::Sqlite(_) => "BEGIN",
            Conn::Postgres(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        })
        .await?;
        let result = async {
            let now: Option<i64> = conn
                .optional_i64(
                    &format!("SELECT position FROM {live}.projection_checkpoints WHERE name = $1"),
                    projection,
                )
                .await?;
            if now.unwrap_or(0).max(0) as u64 != at {
                return Ok(None);
            }
            let mut reports = Vec::new();
            for t in tables(projection) {
                reports.push(compare_table(&mut conn, &live, &shadow, t).await?);
            }
            Ok(Some(reports))
        }
        .await;
        conn.execute("ROLLBACK").await?;
        result
    }
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Creates in the shadow file every table, index and trigger of the live file (attached as
/// `live`), empty. A full-text table's own shadow tables are created with it, not copied.
async fn copy_sqlite_schema(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT type, name, sql FROM live.sqlite_master WHERE sql IS NOT NULL \
         AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 \
         WHEN 'index' THEN 1 ELSE 2 END, rowid",
    )
    .fetch_all(pool)
    .await?;
    let virtual_tables: Vec<&str> = rows
        .iter()
        .filter(|(ty, _, sql)| ty == "table" && sql.to_uppercase().starts_with("CREATE VIRTUAL"))
        .map(|(_, name, _)| name.as_str())
        .collect();
    let fts_own = |name: &str| {
        virtual_tables.iter().any(|v| {
            ["_data", "_idx", "_content", "_docsize", "_config"]
                .iter()
                .any(|s| name == format!("{v}{s}"))
        })
    };
    for (ty, name, sql) in &rows {
        if ty == "view" || fts_own(name) {
            continue;
        }
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// A double-quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One connection, on either database; on SQLite it names the live and shadow schemas.
enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Conn {
    async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Sqlite(c) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut **c)
                .await
                .map(|_| ()),
            Conn::Postgres(c) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut **c)
                .await
                .map(|_| ()),
        }
    }

    async fn optional_i64(&mut self, sql: &str, bind: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            Conn::Sqlite(c) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(bind)
                    .fetch_optional(&mut **c)
                    .await
            }
            Conn::Postgres(c) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(bind)
                    .fetch_optional(&mut **c)
                    .await
            }
        }
    }

    /// Every column of every row, as text.
    async fn texts(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
        fn decode<R: Row>(r: &R) -> Result<Vec<Option<String>>, sqlx::Error>
        where
            for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i))
                .collect()
        }
        match self {
            Conn::Sqlite(c) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&mut **c)
                .await?
                .iter()
                .map(decode)
                .collect(),
            Conn::Postgres(c) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&mut **c)
                .await?
                .iter()
                .map(decode)
                .collect(),
        }
    }

    /// The table's columns and its primary key's, in order.
    async fn columns(
        &mut self,
        schema: &str,
        table: &str,
    ) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
        match self {
            Conn::Sqlite(c) => {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT name, pk FROM pragma_table_info($1, $2) ORDER BY cid")
                        .bind(table)
                        .bind(schema)
                        .fetch_all(&mut **c)
                        .await?;
                let mut pk: Vec<(i64, String)> = rows
                    .iter()
                    .filter(|(_, k)| *k > 0)
                    .map(|(n, k)| (*k, n.clone()))
                    .collect();
                pk.sort();
                Ok((
                    rows.into_iter().map(|(n, _)| n).collect(),
                    pk.into_iter().map(|(_, n)| n).collect(),
                ))
            }
            Conn::Postgres(c) => {
                let qualified = format!("{schema}.{}", ident(table));
                let columns: Vec<String> = sqlx::query_scalar(
                    "SELECT attname::TEXT FROM pg_attribute WHERE attrelid = $1::regclass \
                     AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                )
                .bind(&qualified)
                .fetch_all(&mut **c)
                .await?;
                let pk: Vec<String> = sqlx::query_scalar(
                    "SELECT a.attname::TEXT FROM pg_index i JOIN pg_attribute a \
                     ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = $1::regclass AND i.indisprimary \
                     ORDER BY array_position(i.indkey::SMALLINT[], a.attnum)",
                )
                .bind(&qualified)
                .fetch_all(&mut **c)
                .await?;
                Ok((columns, pk))
            }
        }
    }

    /// The number of rows of `table` and a digest of their text, in key order.
    async fn checksum(
        &mut self,
        table: &str,
        values: &[String],
        order: &str,
    ) -> Result<(u64, String), sqlx::Error> {
        match self {
            Conn::Sqlite(c) => {
                let sql = format!(
                    "SELECT {} FROM {table} ORDER BY {order}",
                    values.join("||','||")
                );
                let mut rows =
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).fetch(&mut **c);
                let mut hash = Sha256::new();
                let mut n = 0;
                while let Some(r) = rows.try_next().await? {
                    hash.update(r.as_bytes());
                    hash.update(b"\n");
                    n += 1;
                }
                Ok((n, hex::encode(hash.finalize())))
            }
            Conn::Postgres(c) => {
                let sql = format!(
                    "SELECT count(*), coalesce(md5(string_agg(concat_ws(',', {}), E'\\n' \
                     ORDER BY {order})), '') FROM {table}",
                    values.join(", ")
                );
                let (n, sum): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut **c)
                    .await?;
                Ok((n as u64, sum))
            }
        }
    }
}

async fn compare_table(
    conn: &mut Conn,
    live: &str,
    shadow: &str,
    table: &str,
) -> anyhow::Result<TableReport> {
    let (columns, mut key) = conn.columns(live, table).await?;
    if key.is_empty() {
        key = columns.clone();
    }
    let sqlite = matches!(conn, Conn::Sqlite(_));
    // Each value as text that tells NULL, numbers, strings and blobs apart.
    let value = |c: &str| {
        if sqlite {
            format!("quote({})", ident(c))
        } else {
            format!("quote_nullable({}::TEXT)", ident(c))
        }
    };
    // A key as people read it: UUIDs (blobs on SQLite) in their usual form.
    let shown = |c: &str| {
        let c = ident(c);
        if sqlite {
            format!(
                "CASE WHEN typeof({c}) = 'blob' AND length({c}) = 16 THEN lower(substr(hex({c}), \
                 1, 8) || '-' || substr(hex({c}), 9, 4) || '-' || substr(hex({c}), 13, 4) || '-' \
                 || substr(hex({c}), 17, 4) || '-' || substr(hex({c}), 21)) ELSE CAST({c} AS TEXT) \
                 END"
            )
        } else {
            format!("{c}::TEXT")
        }
    };
    let values: Vec<String> = columns.iter().map(|c| value(c)).collect();
    let order = key.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let live_t = format!("{live}.{}", ident(table));
    let shadow_t = format!("{shadow}.{}", ident(table));
    let (live_rows, live_checksum) = conn.checksum(&live_t, &values, &order).await?;
    let (replay_rows, replay_checksum) = conn.checksum(&shadow_t, &values, &order).await?;
    let equal = live_rows == replay_rows && live_checksum == replay_checksum;
    let mut differences = Vec::new();
    if !equal {
        let select = key
            .iter()
            .map(|c| shown(c))
            .chain(values.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ");
        let only = |a: &str, b: &str| {
            format!(
                "SELECT * FROM (SELECT {select} FROM {a} EXCEPT SELECT {select} FROM {b}) AS d \
                 LIMIT {MAX_ROWS}"
            )
        };
        let split = |rows: Vec<Vec<Option<String>>>| -> BTreeMap<String, Vec<Option<String>>> {
            rows.into_iter()
                .map(|mut r| {
                    let rest = r.split_off(key.len());
                    let k = key
                        .iter()
                        .zip(r)
                        .map(|(c, v)| format!("{c}={}", v.unwrap_or_else(|| "NULL".into())))
                        .collect::<Vec<_>>()
                        .join(",");
                    (k, rest)
                })
                .collect()
        };
        let in_live = split(conn.texts(&only(&live_t, &shadow_t)).await?);
        let mut in_replay = split(conn.texts(&only(&shadow_t, &live_t)).await?);
        for (k, l) in in_live {
            match in_replay.remove(&k) {
                Some(r) => differences.push(RowDifference {
                    key: k,
                    kind: "changed",
                    columns: columns
                        .iter()
                        .zip(l.iter().zip(&r))
                        .filter(|(_, (a, b))| a != b)
                        .map(|(c, _)| c.clone())
                        .collect(),
                }),
                None => differences.push(RowDifference {
                    key: k,
                    kind: "extra",
                    columns: columns.clone(),
                }),
            }
        }
        for k in in_replay.into_keys() {
            differences.push(RowDifference {
                key: k,
                kind: "missing",
                columns: columns.clone(),
            });
        }
    }
    Ok(TableReport {
        table: table.to_owned(),
        live_rows,
        replay_rows,
        live_checksum,
        replay_checksum,
        equal,
        differences,
    })
}

/// Users whose balance is not the sum of their credit transactions.
async fn unbalanced(db: &ReadDb) -> Result<Vec<Violation>, sqlx::Error> {
    let user = match db {
        ReadDb::Sqlite(_) => uuid_text_sqlite("b.user_id"),
        ReadDb::Postgres(_) => "b.user_id::TEXT".to_owned(),
    };
    let sql = format!(
        "SELECT {user}, b.balance, CAST(COALESCE((SELECT SUM(t.amount) FROM credit_transactions t \
         WHERE t.user_id = b.user_id), 0) AS BIGINT) AS summed FROM credit_balances b"
    );
    let rows: Vec<(String, i64, i64)> = confab_projections::query_as!(
        db,
        fetch_all,
        (String, i64, i64),
        sqlx::AssertSqlSafe(sql.clone())
    )?;
    Ok(rows
        .into_iter()
        .filter(|(_, balance, summed)| balance != summed)
        .map(|(user, balance, summed)| Violation {
            invariant: "balance_equals_transactions",
            key: format!("user_id={user}"),
            detail: format!(
                "credit_balances says {balance}, credit_transactions add up to {summed}"
            ),
        })
        .collect())
}

/// Credit holds still open longer than `grace` past their expiry: the sweeper should have
/// released them.
async fn overdue_holds(db: &ReadDb, grace: Duration) -> Result<Vec<Violation>, sqlx::Error> {
    let id = match db {
        ReadDb::Sqlite(_) => uuid_text_sqlite("reservation_id"),
        ReadDb::Postgres(_) => "reservation_id::TEXT".to_owned(),
    };
    let limit = chrono::Utc::now().timestamp_millis() - grace.as_millis() as i64;
    let sql = format!(
        "SELECT {id}, expires_at_ms FROM credit_holds WHERE expires_at_ms < $1 \
         ORDER BY expires_at_ms"
    );
    let rows: Vec<(String, i64)> = confab_projections::query_as!(
        db,
        fetch_all,
        (String, i64),
        sqlx::AssertSqlSafe(sql.clone()),
        limit
    )?;
    let now = chrono::Utc::now().timestamp_millis();
    Ok(rows
        .into_iter()
        .map(|(id, expires)| Violation {
            invariant: "no_hold_open_past_expiry",
            key: format!("reservation_id={id}"),
            detail: format!(
                "open {}s past its expiry (grace {}s)",
                (now - expires) / 1000,
                grace.as_secs()
            ),
        })
        .collect())
}

fn uuid_text_sqlite(c: &str) -> String {
    format!(
        "lower(substr(hex({c}), 1, 8) || '-' || substr(hex({c}), 9, 4) || '-' || \
         substr(hex({c}), 13, 4) || '-' || substr(hex({c}), 17, 4) || '-' || substr(hex({c}), 21))"
    )
}

/// The report as people read it: one line per difference or violation, then a summary.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    for p in &report.projections {
        for t in &p.tables {
            if t.equal {
                out += &format!(
                    "{}: {} equal at position {} ({} rows)\n",
                    p.projection, t.table, p.position, t.live_rows
                );
                continue;
            }
            out += &format!(
                "{}: {} DIFFERS at position {} ({} rows live, {} in the replay)\n",
                p.projection, t.table, p.position, t.live_rows, t.replay_rows
            );
            for d in &t.differences {
                out += &format!(
                    "  projection {} table {} key {}: {} ({})\n",
                    p.projection,
                    t.table,
                    d.key,
                    d.kind,
                    match d.kind {
                        "changed" => format!("column {}", d.columns.join(", column ")),
                        "missing" => "the replay has it, the live table not".to_owned(),
                        _ => "the live table has it, the replay not".to_owned(),
                    }
                );
            }
        }
    }
    for v in &report.violations {
        out += &format!(
            "invariant {} broken for {}: {}\n",
            v.invariant, v.key, v.detail
        );
    }
    out
}
