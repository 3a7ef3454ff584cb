//! The projection engine against real SQLite and PostgreSQL: end to end from commands to read
//! models, crash safety, fencing, leases, rebuilds and read-your-writes.

use async_trait::async_trait;
use chrono::Utc;
use confab_domain::chat::{Chat, ChatCommand};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::aggregate::execute;
use confab_eventstore::postgres::PostgresStore;
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::testing::fresh_postgres_database;
use confab_eventstore::{EventMetadata, EventStore, Limits, RecordedEvent};
use confab_projections::chats;
use confab_projections::{Engine, Projection, ProjectionError, ReadDb, Tx, execute};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

struct Env {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("confab.db").display());
    let options = connect_options(&url).expect("options");
    let pool = read_pool(options.clone()).await.expect("pool");
    confab_migrations::SQLITE.run(&pool).await.expect("migrate");
    let store = SqliteStore::open(options, pool.clone(), Limits::default())
        .await
        .expect("open");
    Env {
        store: Arc::new(store),
        db: ReadDb::Sqlite(pool),
        _dir: Some(dir),
    }
}

async fn postgres() -> Env {
    let url = fresh_postgres_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("connect");
    confab_migrations::POSTGRES
        .run(&pool)
        .await
        .expect("migrate");
    let store = PostgresStore::open(pool.clone(), Limits::default())
        .await
        .expect("open");
    Env {
        store: Arc::new(store),
        db: ReadDb::Postgres(pool),
        _dir: None,
    }
}

/// Runs each test body on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::sqlite().await).await } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::postgres().await).await } )* }
    };
}

on_both!(
    commands_flow_through_the_log_into_the_read_model,
    a_failure_between_writes_and_checkpoint_applies_nothing_twice,
    two_runners_racing_apply_every_event_exactly_once,
    rebuild_reproduces_the_same_read_model,
    read_your_writes_waits_for_the_running_projection,
    set_wise_and_one_by_one_application_agree,
    search_follows_edits_and_deletes,
    a_projection_with_nothing_to_apply_writes_its_checkpoint_only_when_quiet,
);

fn meta(user: Uuid) -> EventMetadata {
    EventMetadata {
        actor: Some(user),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
    }
}

/// Creates a chat with `n` messages; returns (chat, owner, message ids).
async fn seed_chat(store: &dyn EventStore, n: usize) -> (Uuid, Uuid, Vec<Uuid>) {
    let owner = Uuid::now_v7();
    let chat = Uuid::now_v7();
    execute::<Chat>(
        store,
        &chat,
        ChatCommand::Create {
            chat_id: chat,
            owner,
            title: ChatTitle::parse("Trip").expect("title"),
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("create");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Uuid::now_v7();
        execute::<Chat>(
            store,
            &chat,
            ChatCommand::SendMessage {
                message_id: id,
                actor: owner,
                role: Role::User,
                content: MessageContent::parse(&format!("message {i}")).expect("content"),
                kind: MessageKind::Text,
                at: Utc::now(),
            },
            meta(owner),
        )
        .await
        .expect("send");
        ids.push(id);
    }
    (chat, owner, ids)
}

async fn commands_flow_through_the_log_into_the_read_model(env: Env) {
    let engine = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let (chat, owner, ids) = seed_chat(&*env.store, 3).await;
    execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::EditMessage {
            message_id: ids[1],
            actor: owner,
            content: Some(MessageContent::parse("edited").expect("content")),
            kind: Some(MessageKind::Code),
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("edit");
    execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::DeleteMessage {
            message_id: ids[0],
            actor: owner,
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("delete");
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");

    let row = chats::get_chat(&env.db, chat, owner)
        .await
        .expect("read")
        .expect("chat");
    assert_eq!(row.title, "Trip");
    assert!(
        chats::get_chat(&env.db, chat, Uuid::now_v7())
            .await
            .expect("read")
            .is_none()
    );
    let msgs = chats::list_messages(&env.db, chat, 50, 0)
        .await
        .expect("messages");
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].id, ids[1]);
    assert_eq!(msgs[0].content, "edited");
    assert_eq!(msgs[0].kind, "code");
    assert_eq!(msgs[1].content, "message 2");

    // Deleting the chat removes its messages from every read.
    execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::Delete {
            actor: owner,
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("delete chat");
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    assert!(
        chats::get_chat(&env.db, chat, owner)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        chats::list_messages(&env.db, chat, 50, 0)
            .await
            .expect("messages")
            .is_empty()
    );
    let status = engine.status().await.expect("status");
    let chats_status = status
        .iter()
        .find(|s| s.name == chats::NAME)
        .expect("chats status");
    assert_eq!(chats_status.lag(), 0);
}

/// Records every event it applies in `test_applied`, and fails once, after writing, on the
/// event at `fail_at`: a crash between a projection's writes and its checkpoint.
struct Recorder {
    fail_at: u64,
    failed: AtomicBool,
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn handles(&self, _: &str) -> bool {
        true
    }
    async fn apply(&self, tx: &mut Tx, e: &RecordedEvent) -> Result<(), ProjectionError> {
        execute!(
            tx,
            "INSERT INTO test_applied (event_id, position) VALUES ($1, $2)",
            e.event_id.to_string(),
            e.position as i64
        )?;
        if e.position == self.fail_at && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(ProjectionError::Database(sqlx::Error::Protocol(
                "simulated crash after the write, before the checkpoint".into(),
            )));
        }
        Ok(())
    }
    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM test_applied")?;
        Ok(())
    }
}

async fn create_test_table(db: &ReadDb) {
    let sql = "CREATE TABLE test_applied (event_id TEXT NOT NULL, position BIGINT NOT NULL)";
    match db {
        ReadDb::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        ReadDb::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .expect("create test table");
}

async fn applied(db: &ReadDb) -> (i64, i64) {
    let sql = "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM test_applied";
    match db {
        ReadDb::Sqlite(p) => sqlx::query_as(sql).fetch_one(p).await,
        ReadDb::Postgres(p) => sqlx::query_as(sql).fetch_one(p).await,
    }
    .expect("count")
}

async fn a_failure_between_writes_and_checkpoint_applies_nothing_twice(env: Env) {
    create_test_table(&env.db).await;
    seed_chat(&*env.store, 30).await;
    let head = env.store.head_position().await.expect("head");
    let recorder = Arc::new(Recorder {
        fail_at: head - 5,
        failed: AtomicBool::new(false),
    });
    let engine =
        Engine::new(env.store.clone(), env.db.clone(), vec![recorder.clone()]).with_batch_size(8);
    let err = engine
        .catch_up("recorder", |_, _| {})
        .await
        .expect_err("crash");
    assert!(matches!(err, ProjectionError::Database(_)));
    let status = engine.status().await.expect("status");
    assert!(
        status[0].position < head - 5,
        "checkpoint passed the failed batch"
    );
    let (rows, distinct) = applied(&env.db).await;
    assert_eq!(
        rows as u64, status[0].position,
        "rows of the failed batch were kept"
    );
    assert_eq!(rows, distinct);

    // Restart: everything is applied exactly once.
    let reached = engine
        .catch_up("recorder", |_, _| {})
        .await
        .expect("resume");
    assert_eq!(reached, head);
    let (rows, distinct) = applied(&env.db).await;
    assert_eq!(rows as u64, head);
    assert_eq!(distinct as u64, head);
}

async fn two_runners_racing_apply_every_event_exactly_once(env: Env) {
    create_test_table(&env.db).await;
    seed_chat(&*env.store, 200).await;
    let head = env.store.head_position().await.expect("head");
    let make = || {
        Engine::new(
            env.store.clone(),
            env.db.clone(),
            vec![Arc::new(Recorder {
                fail_at: u64::MAX,
                failed: AtomicBool::new(false),
            })],
        )
        .with_batch_size(7)
    };
    let (a, b) = (make(), make());
    let (ra, rb) = tokio::join!(
        a.catch_up("recorder", |_, _| {}),
        b.catch_up("recorder", |_, _| {})
    );
    assert_eq!(ra.expect("a"), head);
    assert_eq!(rb.expect("b"), head);
    let (rows, distinct) = applied(&env.db).await;
    assert_eq!((rows as u64, distinct as u64), (head, head));
}

async fn rebuild_reproduces_the_same_read_model(env: Env) {
    let engine = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let mut chats_seen = Vec::new();
    for _ in 0..3 {
        chats_seen.push(seed_chat(&*env.store, 20).await);
    }
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    let mut before = Vec::new();
    for (chat, _, _) in &chats_seen {
        before.push(
            chats::list_messages(&env.db, *chat, 100, 0)
                .await
                .expect("read"),
        );
    }
    let mut calls = 0;
    let reached = engine
        .rebuild(chats::NAME, |_, _| calls += 1)
        .await
        .expect("rebuild");
    assert_eq!(reached, env.store.head_position().await.expect("head"));
    assert!(calls >= 1);
    for ((chat, owner, _), old) in chats_seen.iter().zip(before) {
        assert_eq!(
            chats::list_messages(&env.db, *chat, 100, 0)
                .await
                .expect("read"),
            old
        );
        assert!(
            chats::get_chat(&env.db, *chat, *owner)
                .await
                .expect("read")
                .is_some()
        );
    }
    assert!(matches!(
        engine.rebuild("nope", |_, _| {}).await,
        Err(ProjectionError::Unknown(_))
    ));
}

async fn read_your_writes_waits_for_the_running_projection(env: Env) {
    let engine = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let positions = engine.positions();
    let (chat, owner, _) = seed_chat(&*env.store, 0).await;
    let head = env.store.head_position().await.expect("head");
    // Nobody runs the projection yet: the wait times out with a typed error.
    let err = positions
        .wait_for(chats::NAME, head, Duration::from_millis(100))
        .await
        .expect_err("no runner");
    assert_eq!(err.wanted, head);

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run(shutdown).await })
    };
    for i in 0..50 {
        let r = execute::<Chat>(
            &*env.store,
            &chat,
            ChatCommand::SendMessage {
                message_id: Uuid::now_v7(),
                actor: owner,
                role: Role::User,
                content: MessageContent::parse(&format!("m{i}")).expect("content"),
                kind: MessageKind::Text,
                at: Utc::now(),
            },
            meta(owner),
        )
        .await
        .expect("send");
        let pos = r.appended.expect("appended").last_position;
        positions
            .wait_for(chats::NAME, pos, Duration::from_secs(5))
            .await
            .expect("projection reached the write");
        let msgs = chats::list_messages(&env.db, chat, 100, 0)
            .await
            .expect("read");
        assert_eq!(msgs.len(), i + 1, "write not visible right after the wait");
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("runner stops on shutdown")
        .expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_runner_holds_the_lease_and_another_takes_over() {
    let env = postgres().await;
    let (chat, owner, _) = seed_chat(&*env.store, 5).await;
    let a = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let b = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let (stop_a, shut_a) = tokio::sync::watch::channel(false);
    let (stop_b, shut_b) = tokio::sync::watch::channel(false);
    let ra = {
        let a = a.clone();
        tokio::spawn(async move { a.run(shut_a).await })
    };
    let head = env.store.head_position().await.expect("head");
    a.positions()
        .wait_for(chats::NAME, head, Duration::from_secs(5))
        .await
        .expect("a runs");
    let rb = {
        let b = b.clone();
        tokio::spawn(async move { b.run(shut_b).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.positions().local(chats::NAME),
        Some(0),
        "b must stand by while a holds the lease"
    );

    stop_a.send(true).expect("stop a");
    ra.await.expect("a stops");
    let r = execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::SendMessage {
            message_id: Uuid::now_v7(),
            actor: owner,
            role: Role::User,
            content: MessageContent::parse("after failover").expect("content"),
            kind: MessageKind::Text,
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("send");
    let pos = r.appended.expect("appended").last_position;
    tokio::time::timeout(Duration::from_secs(10), async {
        while b.positions().local(chats::NAME).unwrap_or(0) < pos {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("b took over the projection");
    assert_eq!(
        chats::list_messages(&env.db, chat, 100, 0)
            .await
            .expect("read")
            .len(),
        6
    );
    stop_b.send(true).expect("stop b");
    rb.await.expect("b stops");
}

async fn set_wise_and_one_by_one_application_agree(env: Env) {
    use confab_projections::Projection;
    let engine = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let (chat, owner, ids) = seed_chat(&*env.store, 12).await;
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let cmd = if i % 2 == 0 {
            ChatCommand::EditMessage {
                message_id: *id,
                actor: owner,
                content: Some(MessageContent::parse("changed").expect("content")),
                kind: None,
                at: Utc::now(),
            }
        } else {
            ChatCommand::DeleteMessage {
                message_id: *id,
                actor: owner,
                at: Utc::now(),
            }
        };
        execute::<Chat>(&*env.store, &chat, cmd, meta(owner))
            .await
            .expect("command");
    }
    let (_, _, more) = seed_chat(&*env.store, 3).await;
    assert_eq!(more.len(), 3);
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    let set_wise = (
        chats::get_chat(&env.db, chat, owner).await.expect("read"),
        chats::list_messages(&env.db, chat, 100, 0)
            .await
            .expect("read"),
    );

    let mut tx = env.db.begin().await.expect("begin");
    chats::ChatsProjection.reset(&mut tx).await.expect("reset");
    for e in env.store.read_all(0, 10_000).await.expect("read all") {
        chats::ChatsProjection
            .apply(&mut tx, &e)
            .await
            .expect("apply");
    }
    tx.commit().await.expect("commit");
    let one_by_one = (
        chats::get_chat(&env.db, chat, owner).await.expect("read"),
        chats::list_messages(&env.db, chat, 100, 0)
            .await
            .expect("read"),
    );
    assert!(set_wise.0.is_some());
    assert_eq!(set_wise.1.len(), 12 - 2);
    assert_eq!(set_wise, one_by_one);
}

/// What `owner` finds for `q`, as message contents, best first.
async fn found(db: &ReadDb, owner: Uuid, q: &str) -> (Vec<String>, u64) {
    let filter = chats::MessageFilter {
        search: Some(q.to_owned()),
        ..chats::MessageFilter::default()
    };
    let (rows, total) = chats::find_messages(db, owner, &filter, 20, 0)
        .await
        .expect("search");
    (rows.into_iter().map(|r| r.content).collect(), total)
}

async fn search_follows_edits_and_deletes(env: Env) {
    let engine = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all());
    let (chat, owner, ids) = seed_chat(&*env.store, 3).await;
    let (_, stranger, _) = seed_chat(&*env.store, 3).await;
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    assert_eq!(found(&env.db, owner, "MESSAGE").await.1, 3);
    assert_eq!(found(&env.db, stranger, "message").await.1, 3);

    execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::EditMessage {
            message_id: ids[1],
            actor: owner,
            content: Some(MessageContent::parse("Crème brûlée, twice: crème").expect("content")),
            kind: None,
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("edit");
    execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::DeleteMessage {
            message_id: ids[0],
            actor: owner,
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("delete");
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    // The edited message is found by its new words only, the deleted one not at all.
    assert_eq!(
        found(&env.db, owner, "message").await,
        (vec!["message 2".to_owned()], 1)
    );
    assert_eq!(
        found(&env.db, owner, "brulee CREME").await,
        (vec!["Crème brûlée, twice: crème".to_owned()], 1)
    );
    // Nobody else's search sees it, and theirs is untouched.
    assert_eq!(found(&env.db, stranger, "creme").await.1, 0);
    assert_eq!(found(&env.db, stranger, "message").await.1, 3);

    execute::<Chat>(
        &*env.store,
        &chat,
        ChatCommand::Delete {
            actor: owner,
            at: Utc::now(),
        },
        meta(owner),
    )
    .await
    .expect("delete chat");
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    assert_eq!(found(&env.db, owner, "creme").await.1, 0);
    assert_eq!(found(&env.db, owner, "message").await.1, 0);
    assert_eq!(found(&env.db, stranger, "message").await.1, 3);

    // A rebuild gives the same answers.
    engine
        .rebuild(chats::NAME, |_, _| {})
        .await
        .expect("rebuild");
    assert_eq!(found(&env.db, owner, "message").await.1, 0);
    assert_eq!(found(&env.db, stranger, "message").await.1, 3);
}

async fn stored_checkpoint(db: &ReadDb, name: &str) -> i64 {
    let sql = "SELECT position FROM projection_checkpoints WHERE name = $1";
    match db {
        ReadDb::Sqlite(p) => sqlx::query_scalar(sql).bind(name).fetch_one(p).await,
        ReadDb::Postgres(p) => sqlx::query_scalar(sql).bind(name).fetch_one(p).await,
    }
    .expect("checkpoint")
}

/// The `settings` projection reads no chat event: while chats are written it follows the log
/// in memory (read-your-writes and readiness see it current) and writes its checkpoint once the
/// log is quiet, not once per batch.
async fn a_projection_with_nothing_to_apply_writes_its_checkpoint_only_when_quiet(env: Env) {
    // Not written while busy, however slow this machine is: only the quiet rule applies.
    let engine = Engine::new(env.store.clone(), env.db.clone(), confab_projections::all())
        .with_skipped_checkpoint_every(Duration::from_secs(600));
    let positions = engine.positions();
    let (chat, owner, _) = seed_chat(&*env.store, 0).await;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run(shutdown).await })
    };
    let start = env.store.head_position().await.expect("head");
    positions
        .wait_for("settings", start, Duration::from_secs(5))
        .await
        .expect("settings caught up");
    // Let it write what it skipped so far, then write chats quickly.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = stored_checkpoint(&env.db, "settings").await;
    let mut last = 0;
    for i in 0..20 {
        let r = execute::<Chat>(
            &*env.store,
            &chat,
            ChatCommand::SendMessage {
                message_id: Uuid::now_v7(),
                actor: owner,
                role: Role::User,
                content: MessageContent::parse(&format!("m{i}")).expect("content"),
                kind: MessageKind::Text,
                at: Utc::now(),
            },
            meta(owner),
        )
        .await
        .expect("send");
        last = r.appended.expect("appended").last_position;
        positions
            .wait_for("settings", last, Duration::from_secs(5))
            .await
            .expect("settings follows the log in memory");
        positions
            .wait_for(chats::NAME, last, Duration::from_secs(5))
            .await
            .expect("chats applied the write");
    }
    // The stored checkpoint did not follow the batches.
    let during = stored_checkpoint(&env.db, "settings").await;
    assert!(
        during < last as i64,
        "checkpoint written per batch: {before} -> {during} of {last}"
    );
    // The status reports the runner's own position, so readiness does not see a lag.
    let status = engine.status().await.expect("status");
    let settings = status
        .iter()
        .find(|s| s.name == "settings")
        .expect("settings");
    assert_eq!(settings.position, last);
    assert_eq!(stored_checkpoint(&env.db, chats::NAME).await, last as i64);

    // Once the log is quiet, the checkpoint is written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stored_checkpoint(&env.db, "settings").await < last as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "skipped positions never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("runner stops on shutdown")
        .expect("runner");
}

/// Migration 0012 changes the search index on SQLite: upgrading a database whose read model
/// was built by the earlier schema clears it and the next catch-up rebuilds it from the log, so
/// messages sent before the upgrade are found after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_upgrading_to_the_owner_scoped_index_rebuilds_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let earlier = dir.path().join("migrations");
    std::fs::create_dir(&earlier).expect("mkdir");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite"))
        .expect("migrations")
    {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "0012" {
            std::fs::copy(&path, earlier.join(&name)).expect("copy");
        }
    }
    let url = format!("sqlite://{}", dir.path().join("confab.db").display());
    let options = connect_options(&url).expect("options");
    let pool = read_pool(options.clone()).await.expect("pool");
    sqlx::migrate::Migrator::new(earlier.as_path())
        .await
        .expect("earlier migrations")
        .run(&pool)
        .await
        .expect("migrate to 0011");
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(options, pool.clone(), Limits::default())
            .await
            .expect("open"),
    );
    let (_, owner, _) = seed_chat(&*store, 4).await;
    let head = store.head_position().await.expect("head");
    // As an earlier build would have left it: the read model at the head of the log.
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, position, updated_at)          VALUES ('chats', $1, '2026-11-30T00:00:00Z')",
    )
    .bind(head as i64)
    .execute(&pool)
    .await
    .expect("checkpoint");

    confab_migrations::SQLITE.run(&pool).await.expect("upgrade");
    let db = ReadDb::Sqlite(pool);
    assert_eq!(
        stored_checkpoint_or_zero(&db).await,
        0,
        "the upgrade keeps a checkpoint for rows it dropped"
    );
    let engine = Engine::new(store, db.clone(), confab_projections::all());
    engine
        .catch_up(chats::NAME, |_, _| {})
        .await
        .expect("catch up");
    assert_eq!(found(&db, owner, "message").await.1, 4);
}

async fn stored_checkpoint_or_zero(db: &ReadDb) -> i64 {
    let ReadDb::Sqlite(p) = db else {
        unreachable!("SQLite only")
    };
    sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = 'chats'")
        .fetch_optional(p)
        .await
        .expect("checkpoint")
        .unwrap_or(0)
}

/// In one process, the log's writer and the projections' transactions queue for SQLite's write
/// lock instead of meeting in its busy handler (which sleeps between tries). With no busy
/// timeout at all, a collision would fail at once with "database is locked"; none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqlite_writers_in_one_process_never_collide_on_the_write_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("confab.db").display());
    let options = connect_options(&url)
        .expect("options")
        .busy_timeout(Duration::ZERO);
    let pool = read_pool(options.clone()).await.expect("pool");
    confab_migrations::SQLITE.run(&pool).await.expect("migrate");
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(options, pool.clone(), Limits::default())
            .await
            .expect("open"),
    );
    let db = ReadDb::Sqlite(pool);
    create_test_table(&db).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                seed_chat(&*store, 1).await;
            }
            w
        }));
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let mut tx = db.begin().await.expect("begin");
                execute!(
                    &mut tx,
                    "INSERT INTO test_applied (event_id, position) VALUES ($1, $2)",
                    format!("{w}-{i}"),
                    i
                )
                .expect("insert");
                tx.commit().await.expect("commit");
            }
            w
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    assert_eq!(applied(&db).await, (100, 100));
    assert_eq!(store.head_position().await.expect("head"), 200);
}
