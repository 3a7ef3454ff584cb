//! Event store and projection benchmark (not a timed test): append throughput against the raw
//! single-row-commit reference on the same database, global read throughput, and projection
//! rebuild time.
//!
//! `cargo bench --bench store` runs everything (SQLite and PostgreSQL, 1, 4, 16, 64 writers,
//! 1,000,000 events for reads and rebuilds). Environment:
//! - `CONFAB_BENCH_BACKENDS=sqlite,postgres`  which databases
//! - `CONFAB_BENCH_SECONDS=5`                 length of each append run
//! - `CONFAB_BENCH_EVENTS=1000000`            size of the log for read and rebuild
//! - `CONFAB_BENCH_SMOKE=1`                   a seconds-long run that checks it all works
//! - `CONFAB_BENCH_ENCRYPTION=1`              also payload encryption on against off, in the
//!   same run: chat appends (16 writers) and a rebuild of `chats`, as ratios (target >= 0.9x)
//!
//! Either way it fails (exit 1) on a collapse: more writers appending under half as fast as
//! fewer, or PostgreSQL rebuilding at under a fifth of SQLite's rate.
//!
//! PostgreSQL runs in a fresh database on `CONFAB_TEST_POSTGRES_URL` (default the local `test`).

use chrono::Utc;
use confab_domain::EventSchema;
use confab_domain::chat::{ChatCreated, ChatEvent, MessageSent};
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::postgres::PostgresStore;
use confab_eventstore::sealed::{KeyDb, KeyVault, MasterKeys, SealedStore};
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::testing::fresh_postgres_database;
use confab_eventstore::{EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent};
use confab_projections::{Engine, ReadDb};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::sqlite::SqliteConnection;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

// The same allocator as the `confab` binary, so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Settings {
    backends: Vec<String>,
    seconds: f64,
    events: u64,
    writers: Vec<usize>,
}

fn settings() -> Settings {
    let smoke = std::env::var("CONFAB_BENCH_SMOKE").is_ok();
    let var = |k: &str| std::env::var(k).ok();
    Settings {
        backends: var("CONFAB_BENCH_BACKENDS")
            .unwrap_or_else(|| "sqlite,postgres".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        seconds: var("CONFAB_BENCH_SECONDS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if smoke { 0.3 } else { 5.0 }),
        events: var("CONFAB_BENCH_EVENTS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if smoke { 5_000 } else { 1_000_000 }),
        writers: if smoke {
            vec![1, 16, 64]
        } else {
            vec![1, 4, 16, 64]
        },
    }
}

fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({
        "chatId": Uuid::now_v7(),
        "content": format!("benchmark message number {i}, long enough to look like a chat line"),
        "kind": "text",
    })
}

/// A fresh database of the given kind: (event store, read db, URL for raw connections).
async fn fresh(kind: &str, dir: &tempfile::TempDir) -> (Arc<dyn EventStore>, ReadDb, String) {
    if kind == "sqlite" {
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{}.db", Uuid::now_v7())).display()
        );
        let options = connect_options(&url).expect("options");
        let pool = read_pool(options.clone()).await.expect("pool");
        confab_migrations::SQLITE.run(&pool).await.expect("migrate");
        let store = SqliteStore::open(options, pool.clone(), Limits::default())
            .await
            .expect("open");
        (Arc::new(store), ReadDb::Sqlite(pool), url)
    } else {
        let url = fresh_postgres_database().await;
        let pool = PgPoolOptions::new()
            .max_connections(16)
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
        (Arc::new(store), ReadDb::Postgres(pool), url)
    }
}

/// Single-event appends with exact expected versions, each writer on its own stream.
async fn confab_appends(store: Arc<dyn EventStore>, writers: usize, seconds: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = Arc::clone(&store);
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let stream = format!("bench-{}", Uuid::now_v7().simple());
                let mut version = 0;
                while Instant::now() < deadline {
                    let e = NewEvent::new(
                        "bench.appended",
                        1,
                        payload(version),
                        EventMetadata::default(),
                    );
                    let r = store
                        .append(&stream, ExpectedVersion::Exact(version), vec![e])
                        .await
                        .expect("append");
                    version = r.next_expected_version;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The physical reference: plain single-row INSERT + COMMIT into an equivalent table, one
/// connection per writer, same durability settings.
async fn raw_inserts(kind: &str, url: &str, writers: usize, seconds: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let setup = if kind == "sqlite" {
        "CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, stream TEXT NOT NULL, \
         version INTEGER NOT NULL, payload TEXT NOT NULL, UNIQUE (stream, version))"
    } else {
        "CREATE TABLE IF NOT EXISTS bench_raw (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, \
         version BIGINT NOT NULL, payload JSONB NOT NULL, UNIQUE (stream, version))"
    };
    if kind == "sqlite" {
        let mut c = SqliteConnection::connect_with(&connect_options(url).expect("options"))
            .await
            .expect("connect");
        sqlx::query(setup).execute(&mut c).await.expect("create");
    } else {
        let mut c = PgConnection::connect(url).await.expect("connect");
        sqlx::query(setup).execute(&mut c).await.expect("create");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let count = Arc::clone(&count);
            let url = url.to_owned();
            let kind = kind.to_owned();
            tokio::spawn(async move {
                let stream = format!("raw-{}", Uuid::now_v7().simple());
                let mut version: i64 = 0;
                let insert = "INSERT INTO bench_raw (stream, version, payload) VALUES ($1, $2, $3)";
                if kind == "sqlite" {
                    let mut c =
                        SqliteConnection::connect_with(&connect_options(&url).expect("options"))
                            .await
                            .expect("connect");
                    while Instant::now() < deadline {
                        version += 1;
                        sqlx::query(insert)
                            .bind(&stream)
                            .bind(version)
                            .bind(payload(version as u64).to_string())
                            .execute(&mut c)
                            .await
                            .expect("insert");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let mut c = PgConnection::connect(&url).await.expect("connect");
                    while Instant::now() < deadline {
                        version += 1;
                        sqlx::query(insert)
                            .bind(&stream)
                            .bind(version)
                            .bind(sqlx::types::Json(payload(version as u64)))
                            .execute(&mut c)
                            .await
                            .expect("insert");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Fills the log with `n` realistic chat events (1,000 chats), in large appends.
/// `store` with payload encryption, its data keys in `db`.
fn sealed(store: Arc<dyn EventStore>, db: &ReadDb) -> Arc<dyn EventStore> {
    let keys = match db {
        ReadDb::Sqlite(p) => KeyDb::Sqlite(p.clone()),
        ReadDb::Postgres(p) => KeyDb::Postgres(p.clone()),
    };
    let vault = Arc::new(KeyVault::new(MasterKeys::new(&[7; 32], &[]), keys));
    Arc::new(SealedStore::new(store, vault))
}

/// Chat messages appended one at a time by `writers`, each to a chat of its own user: the hot
/// path of payload encryption (one sealed field per event).
async fn chat_appends(store: Arc<dyn EventStore>, writers: usize, seconds: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = Arc::clone(&store);
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let (chat, owner) = (Uuid::now_v7(), Uuid::now_v7());
                let stream = format!("chat-{chat}");
                let created = ChatEvent::Created(ChatCreated {
                    chat_id: chat,
                    owner,
                    title: ChatTitle::parse("bench").expect("title"),
                    at: Utc::now(),
                });
                let new = |e: &ChatEvent| {
                    NewEvent::new(
                        e.event_type(),
                        e.schema_version(),
                        e.to_payload(),
                        EventMetadata::default(),
                    )
                };
                let mut version = store
                    .append(&stream, ExpectedVersion::NoStream, vec![new(&created)])
                    .await
                    .expect("create")
                    .next_expected_version;
                while Instant::now() < deadline {
                    let sent = ChatEvent::MessageSent(MessageSent {
                        chat_id: chat,
                        message_id: Uuid::now_v7(),
                        author: owner,
                        role: Role::User,
                        content: MessageContent::parse(&format!(
                            "message {version} of the benchmark, long enough to look like a chat line"
                        ))
                        .expect("content"),
                        kind: MessageKind::Text,
                        at: Utc::now(),
                    });
                    version = store
                        .append(&stream, ExpectedVersion::Exact(version), vec![new(&sent)])
                        .await
                        .expect("append")
                        .next_expected_version;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Payload encryption on against off, on fresh databases of `backend`: (appends/s off, on,
/// rebuild events/s off, on).
async fn encryption_ratios(backend: &str, s: &Settings, dir: &tempfile::TempDir) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (i, encrypted) in [false, true].into_iter().enumerate() {
        let (store, db, _) = fresh(backend, dir).await;
        let store = if encrypted { sealed(store, &db) } else { store };
        out[i] = chat_appends(store, 16, s.seconds).await;
    }
    for (i, encrypted) in [false, true].into_iter().enumerate() {
        let (store, db, _) = fresh(backend, dir).await;
        let store = if encrypted { sealed(store, &db) } else { store };
        fill_chats(&store, s.events).await;
        let head = store.head_position().await.expect("head");
        let engine = Engine::new(store, db, confab_projections::all());
        let t = Instant::now();
        engine
            .rebuild(confab_projections::chats::NAME, |_, _| {})
            .await
            .expect("rebuild");
        out[2 + i] = head as f64 / t.elapsed().as_secs_f64();
    }
    out
}

async fn fill_chats(store: &Arc<dyn EventStore>, n: u64) {
    let chats = 1_000.min(n.max(1));
    let per_chat = n / chats;
    let owner = Uuid::now_v7();
    let mut tasks = Vec::new();
    for _ in 0..chats {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let chat = Uuid::now_v7();
            let stream = format!("chat-{chat}");
            let at = Utc::now();
            let mut events = vec![ChatEvent::Created(ChatCreated {
                chat_id: chat,
                owner,
                title: ChatTitle::parse("bench").expect("title"),
                at,
            })];
            for i in 1..per_chat {
                events.push(ChatEvent::MessageSent(MessageSent {
                    chat_id: chat,
                    message_id: Uuid::now_v7(),
                    author: owner,
                    role: Role::User,
                    content: MessageContent::parse(&format!("message {i} of the benchmark chat"))
                        .expect("content"),
                    kind: MessageKind::Text,
                    at,
                }));
            }
            let mut version = 0;
            for chunk in events.chunks(500) {
                let new = chunk
                    .iter()
                    .map(|e| {
                        NewEvent::new(
                            e.event_type(),
                            e.schema_version(),
                            e.to_payload(),
                            EventMetadata::default(),
                        )
                    })
                    .collect();
                version = store
                    .append(&stream, ExpectedVersion::Exact(version), new)
                    .await
                    .expect("append")
                    .next_expected_version;
            }
        }));
        if tasks.len() >= 16 {
            for t in tasks.drain(..) {
                t.await.expect("fill");
            }
        }
    }
    for t in tasks {
        t.await.expect("fill");
    }
}

#[tokio::main]
async fn main() {
    let s = settings();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "# confab store benchmark: {} s per append run, {} events for read/rebuild\n",
        s.seconds, s.events
    );
    println!("| database | writers | confab appends/s | raw INSERT+COMMIT/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut collapses = Vec::new();
    for backend in &s.backends {
        let mut by_writers = Vec::new();
        for &w in &s.writers {
            let (store, _, url) = fresh(backend, &dir).await;
            let ours = confab_appends(store, w, s.seconds).await;
            let raw = raw_inserts(backend, &url, w, s.seconds).await;
            println!(
                "| {backend} | {w} | {ours:.0} | {raw:.0} | {:.2}x |",
                ours / raw
            );
            by_writers.push((w, ours));
        }
        // More writers must never mean far fewer appends (PostgreSQL at 64 writers once fell
        // to a twelfth of 16 and nobody noticed).
        for pair in by_writers.windows(2) {
            let ((fewer, a), (more, b)) = (pair[0], pair[1]);
            if b < 0.5 * a {
                collapses.push(format!(
                    "{backend}: {more} writers append {b:.0}/s, under half of {fewer} writers' {a:.0}/s"
                ));
            }
        }
    }
    println!(
        "\n| database | events | fill s | global read events/s | rebuild s | rebuild events/s \
         | audit s | audit events/s | online rebuild s | online events/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rebuild_rates = Vec::new();
    for backend in &s.backends {
        let (store, db, _) = fresh(backend, &dir).await;
        let t = Instant::now();
        fill_chats(&store, s.events).await;
        let fill = t.elapsed().as_secs_f64();
        let head = store.head_position().await.expect("head");

        let t = Instant::now();
        let mut after = 0;
        let mut read = 0u64;
        loop {
            let page = store.read_all(after, 1_000).await.expect("read");
            let Some(last) = page.last() else { break };
            after = last.position;
            read += page.len() as u64;
        }
        let read_secs = t.elapsed().as_secs_f64();
        assert_eq!(read, head);

        let mut engine = Engine::new(store.clone(), db.clone(), confab_projections::all());
        if let Some(b) = std::env::var("CONFAB_BENCH_BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
        {
            engine = engine.with_batch_size(b);
        }
        let t = Instant::now();
        let reached = engine
            .rebuild(confab_projections::chats::NAME, |_, _| {})
            .await
            .expect("rebuild");
        let rebuild = t.elapsed().as_secs_f64();
        assert_eq!(reached, head);

        // `confab audit chats`: the log replayed into a shadow and compared with the live rows.
        let t = Instant::now();
        let report = confab::audit::run(
            store.clone(),
            &db,
            confab_projections::all(),
            &confab::audit::Options {
                projections: vec![confab_projections::chats::NAME.to_owned()],
                hold_grace: std::time::Duration::from_secs(60),
                progress: false,
            },
        )
        .await
        .expect("audit");
        let audit = t.elapsed().as_secs_f64();
        assert!(report.clean, "the audit found differences after a rebuild");

        // `confab projections rebuild chats --online`: side by side, then swapped in.
        let chats = confab_projections::all()
            .into_iter()
            .find(|p| p.name() == confab_projections::chats::NAME)
            .expect("chats");
        let t = Instant::now();
        let online = confab::rebuild::online(store.clone(), &db, chats, false, None)
            .await
            .expect("online rebuild");
        let online_secs = t.elapsed().as_secs_f64();
        assert_eq!(online.position, head);
        println!(
            "| {backend} | {head} | {fill:.1} | {:.0} | {rebuild:.2} | {:.0} | {audit:.2} | {:.0} \
             | {online_secs:.2} | {:.0} |",
            read as f64 / read_secs,
            head as f64 / rebuild,
            head as f64 / audit,
            head as f64 / online_secs
        );
        rebuild_rates.push((backend.clone(), head as f64 / rebuild));
    }
    // PostgreSQL rebuilding at a fifth of SQLite's rate or less is the Nagle stall of sqlx
    // 0.9.0 (about 40 ms per statement of some sizes), which made rebuilds crawl at ~1,000
    // events/s.
    if let (Some((_, sqlite)), Some((_, postgres))) = (
        rebuild_rates.iter().find(|(b, _)| b == "sqlite"),
        rebuild_rates.iter().find(|(b, _)| b == "postgres"),
    ) && *postgres < 0.2 * sqlite
    {
        collapses.push(format!(
            "postgres rebuilds {postgres:.0} events/s, under a fifth of sqlite's {sqlite:.0}/s"
        ));
    }
    if std::env::var("CONFAB_BENCH_ENCRYPTION").is_ok() {
        println!("\n| database | appends/s off | on | ratio | rebuild events/s off | on | ratio |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for backend in &s.backends {
            let [a_off, a_on, r_off, r_on] = encryption_ratios(backend, &s, &dir).await;
            println!(
                "| {backend} | {a_off:.0} | {a_on:.0} | {:.2}x | {r_off:.0} | {r_on:.0} | {:.2}x |",
                a_on / a_off,
                r_on / r_off
            );
        }
    }
    if !collapses.is_empty() {
        eprintln!("\nCOLLAPSE:\n- {}", collapses.join("\n- "));
        std::process::exit(1);
    }
}
