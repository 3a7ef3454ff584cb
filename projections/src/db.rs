//! The read-model database: SQLite or PostgreSQL, behind one handle.
//!
//! Projections write plain SQL that both databases accept (`$1` placeholders, `ON CONFLICT`,
//! `RETURNING`); the [`execute!`](crate::execute) macro runs one statement on whichever this is.
//! Where the dialects differ, code matches on [`Tx`] itself.

use sqlx::{PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};

/// A pool on the database that holds the read models (the same one as the event store).
#[derive(Clone, Debug)]
pub enum ReadDb {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// For several processes.
    Postgres(PgPool),
}

/// A transaction on the read-model database.
pub enum Tx {
    /// On SQLite.
    Sqlite(SqliteTx),
    /// On PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
}

impl ReadDb {
    /// Begins a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`), so that a read followed by a write cannot fail with a lock upgrade conflict.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            ReadDb::Sqlite(p) => {
                let gate = confab_eventstore::sqlite::write_gate(&p.connect_options())
                    .lock_owned()
                    .await;
                Tx::Sqlite(SqliteTx {
                    tx: p.begin_with("BEGIN IMMEDIATE").await?,
                    _gate: gate,
                })
            }
            ReadDb::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, ReadDb::Postgres(_))
    }
}

/// A write transaction on SQLite, holding this process's write lock on the file (see
/// [`confab_eventstore::sqlite::WriteGate`]) until it commits or is dropped. It derefs to the
/// connection, so `&mut **t` runs a statement in it.
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for SqliteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.tx.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

/// Runs one statement with the same binds on whichever database `$tx` (a `&mut Tx`) is on, and
/// evaluates to `Result<u64, sqlx::Error>` (rows affected).
#[macro_export]
macro_rules! execute {
    ($tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $tx {
            $crate::Tx::Sqlite(t) => sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **t).await.map(|r| r.rows_affected()),
            $crate::Tx::Postgres(t) => sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **t).await.map(|r| r.rows_affected()),
        }
    };
}

/// Runs one query returning rows of `$ty` (a tuple or `FromRow` type that decodes on both
/// databases) with the same binds on whichever database `$db` (a `&ReadDb`) is; `$method` is
/// `fetch_one`, `fetch_optional` or `fetch_all`.
#[macro_export]
macro_rules! query_as {
    ($db:expr, $method:ident, $ty:ty, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $db {
            $crate::ReadDb::Sqlite(p) => {
                sqlx::query_as::<_, $ty>($sql)$(.bind($arg))*.$method(p).await
            }
            $crate::ReadDb::Postgres(p) => {
                sqlx::query_as::<_, $ty>($sql)$(.bind($arg))*.$method(p).await
            }
        }
    };
}
