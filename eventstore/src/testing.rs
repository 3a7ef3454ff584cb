//! Helpers for tests that need a real database: a fresh PostgreSQL database per test.

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

/// The server tests use: `CONFAB_TEST_POSTGRES_URL`, by default the local `test` database.
pub fn postgres_admin_url() -> String {
    std::env::var("CONFAB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Creates an empty database named `confab_t_<uuid>` on the test server and returns its URL.
///
/// Panics with a hint when PostgreSQL is not reachable: the suite needs it.
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {admin} ({e}); start it or set CONFAB_TEST_POSTGRES_URL")
    });
    let name = format!("confab_t_{}", Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) if !admin[..i].ends_with('/') => format!("{}/{name}", &admin[..i]),
        _ => format!("{}/{name}", admin.trim_end_matches('/')),
    }
}
