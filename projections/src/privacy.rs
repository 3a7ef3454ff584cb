//! Erasure in the read models: what each projection deletes when it applies a user's
//! `account.user_erased`, the count of a user's rows per read model (the receipt), and the
//! clean-up that leaves no copy of deleted rows in the database files.
//!
//! Each projection purges its own tables in the same transaction as its checkpoint, so a
//! rebuild from the log (where the user's payloads read as erased anyway) ends without them too.

use crate::db::{ReadDb, Tx};
use crate::execute;
use confab_domain::account::event_types::USER_ERASED;
use confab_eventstore::RecordedEvent;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The user `event` erases, if it is an `account.user_erased`.
pub fn erased_user(event: &RecordedEvent) -> Option<Uuid> {
    if event.event_type != USER_ERASED {
        return None;
    }
    event.payload.get("userId")?.as_str()?.parse().ok()
}

/// The `users` and `sessions` rows of `user`.
pub async fn purge_accounts(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    execute!(tx, "DELETE FROM sessions WHERE user_id = $1", user)?;
    execute!(tx, "DELETE FROM users WHERE id = $1", user)?;
    Ok(())
}

/// The chats of `user` with their messages, attachments and search terms.
pub async fn purge_chats(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    if let Tx::Sqlite(t) = tx {
        sqlx::query(
            "DELETE FROM messages_fts WHERE rowid IN (SELECT m.rowid FROM messages m \
             JOIN chats c ON c.id = m.chat_id WHERE c.owner_id = $1)",
        )
        .bind(user)
        .execute(&mut **t)
        .await?;
    }
    execute!(
        tx,
        "DELETE FROM attachments WHERE chat_id IN (SELECT id FROM chats WHERE owner_id = $1)",
        user
    )?;
    execute!(
        tx,
        "DELETE FROM messages WHERE chat_id IN (SELECT id FROM chats WHERE owner_id = $1)",
        user
    )?;
    execute!(tx, "DELETE FROM chats WHERE owner_id = $1", user)?;
    Ok(())
}

/// The documents of `user` with their chunks, search terms and the vectors no one else's
/// chunk shares.
pub async fn purge_documents(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    const ONLY_THEIRS: &str = "hash IN (SELECT hash FROM document_chunks WHERE owner_id = $1) \
                               AND hash NOT IN (SELECT hash FROM document_chunks \
                               WHERE owner_id <> $1)";
    match tx {
        Tx::Sqlite(t) => {
            sqlx::query(
                "DELETE FROM document_chunks_fts WHERE rowid IN \
                 (SELECT rowid FROM document_chunks WHERE owner_id = $1)",
            )
            .bind(user)
            .execute(&mut **t)
            .await?;
        }
        Tx::Postgres(t) => {
            let pgvector: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('chunk_vectors')::text")
                    .fetch_one(&mut **t)
                    .await?;
            if pgvector.is_some() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM chunk_vectors WHERE {ONLY_THEIRS}"
                )))
                .bind(user)
                .execute(&mut **t)
                .await?;
            }
        }
    }
    let sql = format!("DELETE FROM chunk_embeddings WHERE {ONLY_THEIRS}");
    match tx {
        Tx::Sqlite(t) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .execute(&mut **t)
            .await?
            .rows_affected(),
        Tx::Postgres(t) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .execute(&mut **t)
            .await?
            .rows_affected(),
    };
    execute!(tx, "DELETE FROM document_chunks WHERE owner_id = $1", user)?;
    execute!(tx, "DELETE FROM documents WHERE owner_id = $1", user)?;
    Ok(())
}

/// The settings of `user`.
pub async fn purge_settings(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    execute!(tx, "DELETE FROM settings WHERE user_id = $1", user)?;
    Ok(())
}

/// The provider keys of `user`.
pub async fn purge_providers(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    execute!(tx, "DELETE FROM user_llm_configs WHERE user_id = $1", user)?;
    Ok(())
}

/// The credit balance and history of `user`.
pub async fn purge_credits(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    execute!(
        tx,
        "DELETE FROM credit_transactions WHERE user_id = $1",
        user
    )?;
    execute!(tx, "DELETE FROM credit_balances WHERE user_id = $1", user)?;
    Ok(())
}

/// The open credit holds of `user`.
pub async fn purge_credit_holds(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    execute!(tx, "DELETE FROM credit_holds WHERE user_id = $1", user)?;
    Ok(())
}

/// What accounting law needs of `user`'s invoices stays (amounts, currency, status, dates,
/// Stripe ids); the rest goes (the hosted page's URL, the description).
pub async fn purge_billing(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    execute!(
        tx,
        "UPDATE invoices SET invoice_url = NULL, description = NULL WHERE user_id = $1",
        user
    )?;
    Ok(())
}

/// How many rows each read model holds about `user`: what an erasure's receipt reports.
pub async fn rows_of(db: &ReadDb, user: Uuid) -> Result<BTreeMap<String, u64>, sqlx::Error> {
    const COUNTS: &[(&str, &str)] = &[
        ("users", "SELECT COUNT(*) FROM users WHERE id = $1"),
        (
            "sessions",
            "SELECT COUNT(*) FROM sessions WHERE user_id = $1",
        ),
        (
            "settings",
            "SELECT COUNT(*) FROM settings WHERE user_id = $1",
        ),
        ("chats", "SELECT COUNT(*) FROM chats WHERE owner_id = $1"),
        (
            "messages",
            "SELECT COUNT(*) FROM messages WHERE chat_id IN \
             (SELECT id FROM chats WHERE owner_id = $1)",
        ),
        (
            "attachments",
            "SELECT COUNT(*) FROM attachments WHERE chat_id IN \
             (SELECT id FROM chats WHERE owner_id = $1)",
        ),
        (
            "documents",
            "SELECT COUNT(*) FROM documents WHERE owner_id = $1",
        ),
        (
            "document_chunks",
            "SELECT COUNT(*) FROM document_chunks WHERE owner_id = $1",
        ),
        (
            "user_llm_configs",
            "SELECT COUNT(*) FROM user_llm_configs WHERE user_id = $1",
        ),
        (
            "credit_transactions",
            "SELECT COUNT(*) FROM credit_transactions WHERE user_id = $1",
        ),
        (
            "credit_balances",
            "SELECT COUNT(*) FROM credit_balances WHERE user_id = $1",
        ),
        (
            "credit_holds",
            "SELECT COUNT(*) FROM credit_holds WHERE user_id = $1",
        ),
        (
            "invoices",
            "SELECT COUNT(*) FROM invoices WHERE user_id = $1",
        ),
        (
            "idempotency_keys",
            "SELECT COUNT(*) FROM idempotency_keys WHERE user_id = $1",
        ),
    ];
    let mut out = BTreeMap::new();
    for (table, sql) in COUNTS {
        let n: i64 = match db {
            ReadDb::Sqlite(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(*sql))
                    .bind(user)
                    .fetch_one(p)
                    .await?
            }
            ReadDb::Postgres(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(*sql))
                    .bind(user)
                    .fetch_one(p)
                    .await?
            }
        };
        out.insert((*table).to_owned(), u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// Leaves no copy of deleted rows in the database files. On SQLite (every connection runs
/// with `secure_delete`, so deleted cells and freed pages are overwritten with zeros): the
/// full-text indexes are merged (a contentless index keeps deleted terms in its segments until
/// then), and the write-ahead log, which still holds earlier images of the changed pages, is
/// checkpointed and truncated. (Not `VACUUM`: it may renumber the rowids that the full-text
/// indexes point at.) On PostgreSQL deleted rows are dead tuples that no query (nor `pg_dump`)
/// returns; `VACUUM` frees their space for reuse.
pub async fn scrub(db: &ReadDb) -> Result<(), sqlx::Error> {
    match db {
        ReadDb::Sqlite(p) => {
            let _gate = confab_eventstore::sqlite::write_gate(&p.connect_options())
                .lock_owned()
                .await;
            let mut conn = p.acquire().await?;
            for fts in ["messages_fts", "document_chunks_fts"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {fts} ({fts}) VALUES ('optimize')"
                )))
                .execute(&mut *conn)
                .await?;
            }
            // Readers of older snapshots hold the log's start; wait for them (briefly).
            for _ in 0..50 {
                let (busy, _, _): (i64, i64, i64) =
                    sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                        .fetch_one(&mut *conn)
                        .await?;
                if busy == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        ReadDb::Postgres(p) => {
            for table in [
                "users",
                "sessions",
                "settings",
                "chats",
                "messages",
                "attachments",
                "documents",
                "document_chunks",
                "user_llm_configs",
                "credit_transactions",
                "idempotency_keys",
                "invoices",
            ] {
                sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM {table}")))
                    .execute(p)
                    .await?;
            }
        }
    }
    Ok(())
}
