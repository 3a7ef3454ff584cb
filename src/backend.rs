//! Opens the databases the configuration names: the event store and the read-model database,
//! migrated (or checked) before use.

use crate::config::{Config, DatabaseKind};
use anyhow::{Context, bail};
use confab_eventstore::postgres::PostgresStore;
use confab_eventstore::sealed::{KeyDb, KeyVault, SealedStore};
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::{EventStore, Limits};
use confab_projections::{Engine, ReadDb};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;

/// What to do with pending migrations when opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Apply them.
    Apply,
    /// Refuse to start if any is pending.
    Require,
}

/// The opened storage of one process.
#[derive(Clone)]
pub struct Backend {
    /// The event log.
    pub store: Arc<dyn EventStore>,
    /// The read models.
    pub db: ReadDb,
    /// The users' data keys, for erasure and key rotation.
    pub vault: Arc<KeyVault>,
}

impl Backend {
    /// Opens the database in `config`, applying or checking migrations.
    pub async fn open(config: &Config, migrations: Migrations) -> anyhow::Result<Backend> {
        let limits = Limits {
            max_event_bytes: config.max_event_bytes,
            ..Limits::default()
        };
        let url = config.database_url();
        let (sql_store, db): (Arc<dyn EventStore>, ReadDb) = match config.database_kind()? {
            DatabaseKind::Sqlite => {
                let options = connect_options(&url).context("invalid SQLite URL")?;
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("cannot create the data directory {}", dir.display())
                    })?;
                }
                let pool = read_pool(options.clone()).await.with_context(|| {
                    format!(
                        "cannot open the SQLite database {}",
                        options.get_filename().display()
                    )
                })?;
                // The embedded default is always migrated: it has no operator to do it.
                confab_migrations::SQLITE
                    .run(&pool)
                    .await
                    .context("cannot apply SQLite migrations")?;
                let store = SqliteStore::open(options, pool.clone(), limits.clone()).await?;
                (Arc::new(store), ReadDb::Sqlite(pool))
            }
            DatabaseKind::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    // With PostgreSQL out of reach, a request fails in seconds (503, retry)
                    // instead of queueing for sqlx's default 30.
                    .acquire_timeout(std::time::Duration::from_secs(3))
                    .connect(&url)
                    .await
                    .context("cannot connect to PostgreSQL (check CONFAB_DATABASE_URL)")?;
                match migrations {
                    Migrations::Apply => confab_migrations::POSTGRES
                        .run(&pool)
                        .await
                        .context("cannot apply PostgreSQL migrations")?,
                    Migrations::Require => require_migrated(&pool).await?,
                }
                let store = PostgresStore::open(pool.clone(), limits.clone()).await?;
                (Arc::new(store), ReadDb::Postgres(pool))
            }
        };
        let store = match &config.event_store_url {
            None => sql_store,
            Some(url) => open_kurrentdb(url, limits)?,
        };
        // Personal payload fields are sealed with their user's data key, kept in the SQL
        // database whichever store holds the log.
        let keys = match &db {
            ReadDb::Sqlite(p) => KeyDb::Sqlite(p.clone()),
            ReadDb::Postgres(p) => KeyDb::Postgres(p.clone()),
        };
        let vault = Arc::new(KeyVault::new(config.master_keys()?, keys));
        let store: Arc<dyn EventStore> = Arc::new(SealedStore::new(store, vault.clone()));
        Ok(Backend { store, db, vault })
    }

    /// The projection engine over this backend, with every projection.
    pub fn engine(&self) -> Engine {
        Engine::new(
            self.store.clone(),
            self.db.clone(),
            confab_projections::all(),
        )
    }
}

#[cfg(feature = "kurrentdb")]
fn open_kurrentdb(
    url: &secrecy::SecretString,
    limits: Limits,
) -> anyhow::Result<Arc<dyn EventStore>> {
    use secrecy::ExposeSecret;
    let store = confab_eventstore::kurrent::KurrentStore::connect(url.expose_secret(), limits)
        .context("cannot connect to KurrentDB (check CONFAB_EVENT_STORE_URL)")?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "kurrentdb"))]
fn open_kurrentdb(
    _url: &secrecy::SecretString,
    _limits: Limits,
) -> anyhow::Result<Arc<dyn EventStore>> {
    bail!(
        "CONFAB_EVENT_STORE_URL is set but this binary was built without KurrentDB support; \
         rebuild with `cargo build --release --features kurrentdb` or unset it"
    )
}

async fn require_migrated(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let pending: Vec<i64> = confab_migrations::POSTGRES
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if !pending.is_empty() {
        bail!(
            "the PostgreSQL schema is not up to date ({} migration(s) pending): run `confab migrate` \
             first, or set CONFAB_AUTO_MIGRATE=true",
            pending.len()
        );
    }
    Ok(())
}

/// Applies every pending migration; returns how many there were.
pub async fn migrate(config: &Config) -> anyhow::Result<usize> {
    let url = config.database_url();
    match config.database_kind()? {
        DatabaseKind::Sqlite => {
            let before = pending_sqlite(config).await?;
            Backend::open(config, Migrations::Apply).await?;
            Ok(before)
        }
        DatabaseKind::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .context("cannot connect to PostgreSQL (check CONFAB_DATABASE_URL)")?;
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            let pending = confab_migrations::POSTGRES
                .iter()
                .filter(|m| !applied.contains(&m.version))
                .count();
            confab_migrations::POSTGRES
                .run(&pool)
                .await
                .context("cannot apply PostgreSQL migrations")?;
            Ok(pending)
        }
    }
}

async fn pending_sqlite(config: &Config) -> anyhow::Result<usize> {
    let options = connect_options(&config.database_url())?;
    if !options.get_filename().exists() {
        return Ok(confab_migrations::SQLITE.iter().count());
    }
    let pool = read_pool(options).await?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    Ok(confab_migrations::SQLITE
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count())
}
