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

fn event(n: usize) -> confab_eventstore::NewEvent {
    confab_eventstore::NewEvent::new(
        "test.happened",
        1,
        serde_json::json!({ "n": n, "text": "ünïcode ✓" }),
        confab_eventstore::EventMetadata::default(),
    )
}

/// The store serves the latest events it appended from memory: what it serves must be exactly
/// what the file holds, envelope and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_served_from_memory_equal_those_in_the_file() {
    let h = harness().await;
    let store = h.open().await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                store
                    .append(
                        &format!("writer-{w}"),
                        confab_eventstore::ExpectedVersion::Any,
                        vec![event(i), event(i + 1000)],
                    )
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let from_memory = store.read_all(0, 1_000).await.expect("read");
    let from_file = h.open().await.read_all(0, 1_000).await.expect("read");
    assert_eq!(from_memory.len(), 400);
    assert_eq!(from_memory, from_file);
    // Pages starting anywhere agree too.
    for after in [0, 1, 57, 398, 399, 400] {
        assert_eq!(
            store.read_all(after, 10).await.expect("read"),
            h.open().await.read_all(after, 10).await.expect("read"),
            "page after {after}"
        );
    }
}

/// Appends by another process (here another store on the same file) between this store's own
/// are never hidden by what it keeps in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_another_process_in_between_are_read_from_the_file() {
    let h = harness().await;
    let (a, b) = (h.open().await, h.open().await);
    let any = confab_eventstore::ExpectedVersion::Any;
    a.append("a", any, vec![event(1), event(2), event(3)])
        .await
        .expect("a");
    b.append("b", any, vec![event(4), event(5)])
        .await
        .expect("b");
    let after_a = a.read_all(3, 10).await.expect("read");
    assert_eq!(
        after_a.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![4, 5]
    );
    a.append("a", any, vec![event(6), event(7)])
        .await
        .expect("a again");
    let all = a.read_all(0, 10).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(all.iter().filter(|e| e.stream == "b").count(), 2);
    assert_eq!(all, h.open().await.read_all(0, 10).await.expect("read"));
}
