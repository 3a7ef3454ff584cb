//! A real crash: a process running a projection is killed with SIGKILL in the middle of its
//! batches, and the next runner must apply every event exactly once, on SQLite and PostgreSQL.

use async_trait::async_trait;
use confab_eventstore::postgres::PostgresStore;
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::testing::fresh_postgres_database;
use confab_eventstore::{
    EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, RecordedEvent,
};
use confab_projections::{Engine, Projection, ProjectionError, ReadDb, Tx, execute};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes one row per event, with no unique key: applying an event twice leaves two rows.
struct Slow;

#[async_trait]
impl Projection for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn handles(&self, _: &str) -> bool {
        true
    }
    async fn apply(&self, tx: &mut Tx, e: &RecordedEvent) -> Result<(), ProjectionError> {
        execute!(
            tx,
            "INSERT INTO crash_applied (event_id, position) VALUES ($1, $2)",
            e.event_id.to_string(),
            e.position as i64
        )?;
        // Slow enough that the kill lands inside an open transaction.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM crash_applied")?;
        Ok(())
    }
}

async fn open(url: &str) -> (Arc<dyn EventStore>, ReadDb) {
    if url.starts_with("sqlite:") {
        let options = connect_options(url).expect("options");
        let pool = read_pool(options.clone()).await.expect("pool");
        confab_migrations::SQLITE.run(&pool).await.expect("migrate");
        let store = SqliteStore::open(options, pool.clone(), Limits::default())
            .await
            .expect("open");
        (Arc::new(store), ReadDb::Sqlite(pool))
    } else {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .expect("connect");
        confab_migrations::POSTGRES
            .run(&pool)
            .await
            .expect("migrate");
        let store = PostgresStore::open(pool.clone(), Limits::default())
            .await
            .expect("open");
        (Arc::new(store), ReadDb::Postgres(pool))
    }
}

async fn counts(db: &ReadDb) -> (i64, i64) {
    let sql = "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM crash_applied";
    match db {
        ReadDb::Sqlite(p) => sqlx::query_as(sql).fetch_one(p).await,
        ReadDb::Postgres(p) => sqlx::query_as(sql).fetch_one(p).await,
    }
    .expect("count")
}

/// The process that gets killed: runs the slow projection until it is.
#[tokio::test]
#[ignore = "the child process of the crash tests below; they run it and kill it"]
async fn crash_child_runs_the_slow_projection() {
    let url = std::env::var("CONFAB_CRASH_DB").expect("CONFAB_CRASH_DB");
    let (store, db) = open(&url).await;
    let engine = Engine::new(store, db, vec![Arc::new(Slow)]).with_batch_size(10);
    engine.catch_up("slow", |_, _| {}).await.expect("catch up");
}

async fn killed_mid_batch_then_resumed(url: String) {
    const EVENTS: u64 = 400;
    let (store, db) = open(&url).await;
    let create = "CREATE TABLE crash_applied (event_id TEXT NOT NULL, position BIGINT NOT NULL)";
    match &db {
        ReadDb::Sqlite(p) => sqlx::query(create).execute(p).await.map(|_| ()),
        ReadDb::Postgres(p) => sqlx::query(create).execute(p).await.map(|_| ()),
    }
    .expect("create");
    for i in 0..EVENTS {
        let e = NewEvent::new(
            "crash.test",
            1,
            serde_json::json!({ "i": i }),
            EventMetadata::default(),
        );
        store
            .append(&format!("crash-{}", i % 7), ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }

    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "crash_child_runs_the_slow_projection",
            "--nocapture",
        ])
        .env("CONFAB_CRASH_DB", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = match &db {
            ReadDb::Sqlite(p) => {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM crash_applied")
                    .fetch_one(p)
                    .await
            }
            ReadDb::Postgres(p) => {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM crash_applied")
                    .fetch_one(p)
                    .await
            }
        }
        .expect("count");
        if committed >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "the child made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();

    let (rows, distinct) = counts(&db).await;
    assert_eq!(
        rows, distinct,
        "the killed process left an event applied twice"
    );
    assert!(
        (rows as u64) < EVENTS,
        "the child finished before it was killed"
    );

    let engine = Engine::new(store.clone(), db.clone(), vec![Arc::new(Slow)]).with_batch_size(10);
    let reached = engine.catch_up("slow", |_, _| {}).await.expect("resume");
    assert_eq!(reached, store.head_position().await.expect("head"));
    let (rows, distinct) = counts(&db).await;
    assert_eq!((rows as u64, distinct as u64), (EVENTS, EVENTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_projection_killed_mid_batch_applies_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    killed_mid_batch_then_resumed(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_projection_killed_mid_batch_applies_every_event_once() {
    killed_mid_batch_then_resumed(fresh_postgres_database().await).await;
}
