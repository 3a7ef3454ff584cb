//! Confab's SQL schema, as sqlx migrations embedded in the binary: one set per database.
//!
//! The event store, the projection checkpoints and every read model live in the same database,
//! so that a projection's rows and its checkpoint commit in one transaction.

use sqlx::migrate::Migrator;

/// Migrations for the embedded SQLite default.
pub static SQLITE: Migrator = sqlx::migrate!("./sqlite");

/// Migrations for PostgreSQL.
pub static POSTGRES: Migrator = sqlx::migrate!("./postgres");
