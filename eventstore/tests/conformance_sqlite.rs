//! The conformance suite against the SQLite adapter, each case on a fresh file.

use async_trait::async_trait;
use confab_eventstore::conformance::Harness;
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::{EventStore, Limits};
use std::sync::Arc;

struct Sqlite {
    url: String,
    _dir: tempfile::TempDir,
}

async fn harness() -> Sqlite {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let pool = read_pool(connect_options(&url).expect("options"))
        .await
        .expect("pool");
    confab_migrations::SQLITE.run(&pool).await.expect("migrate");
    Sqlite { url, _dir: dir }
}

#[async_trait]
impl Harness for Sqlite {
    async fn open(&self) -> Arc<dyn EventStore> {
        let options = connect_options(&self.url).expect("options");
        let pool = read_pool(options.clone()).await.expect("pool");
        Arc::new(
            SqliteStore::open(options, pool, Limits::default())
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
