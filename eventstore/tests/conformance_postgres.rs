//! The conformance suite against the PostgreSQL adapter, each case in a fresh database.

use async_trait::async_trait;
use confab_eventstore::conformance::Harness;
use confab_eventstore::postgres::PostgresStore;
use confab_eventstore::testing::fresh_postgres_database;
use confab_eventstore::{EventStore, Limits};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;

struct Postgres {
    url: String,
}

async fn harness() -> Postgres {
    let url = fresh_postgres_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect");
    confab_migrations::POSTGRES
        .run(&pool)
        .await
        .expect("migrate");
    pool.close().await;
    Postgres { url }
}

#[async_trait]
impl Harness for Postgres {
    async fn open(&self) -> Arc<dyn EventStore> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect");
        Arc::new(
            PostgresStore::open(pool, Limits::default())
                .await
                .expect("open"),
        )
    }
}

confab_eventstore::conformance_suite!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_event_id_fails_only_its_own_append() {
    confab_eventstore::conformance::a_duplicate_event_id_fails_only_its_own_append(
        &harness().await,
    )
    .await;
}
