//! Documents and retrieval benchmark (issue 14), run by hand, not in CI:
//!
//! - `ingest`: text uploaded over HTTP to a real `serve` (files of 10,000,000 bytes), parsed,
//!   chunked, recorded as events and embedded against the local OpenAI stand-in, until every
//!   document is ready: MB/s of Confab's whole pipeline (the stand-in runs in the same process
//!   and its share of the CPU is included).
//! - `retrieval`: the latency of `documents::retrieve` (query embedding through the stand-in,
//!   lexical ranking, vector ranking, fusion, texts) for one user whose 20 documents hold
//!   `CONFAB_BENCH_USER_CHUNKS` chunks, with `CONFAB_BENCH_TOTAL_CHUNKS` chunks in the
//!   database in all (the rest belong to 9 other users), vectors of `CONFAB_BENCH_DIMS`
//!   dimensions. The read model is seeded directly with multi-row inserts of the rows the
//!   `documents` projection and the embedding job write (text, FTS5 terms or tsvector, vectors
//!   as the job stores them), not through the event log, for speed.
//! - `recall`: recall@5 of hybrid retrieval against lexical-only on a labeled set: this
//!   repository's README.md uploaded as a document, and questions whose answer section is
//!   known (the chunk holding a given phrase). The vector side is the stand-in's deterministic
//!   bag-of-words embedding (word counts hashed into buckets), not a semantic model.
//!
//! `cargo bench --bench rag`. Environment:
//! - `CONFAB_BENCH_BACKENDS=sqlite,postgres`, `CONFAB_BENCH_PARTS=ingest,retrieval,recall`
//! - `CONFAB_BENCH_INGEST_MB=100`, `CONFAB_BENCH_TOTAL_CHUNKS=1000000`,
//!   `CONFAB_BENCH_USER_CHUNKS=100000`, `CONFAB_BENCH_DIMS=1536`, `CONFAB_BENCH_QUERIES=300`
//! - `CONFAB_BENCH_PGVECTOR=off`: the app's `CONFAB_PGVECTOR` (the seeding of `retrieval`
//!   writes the vectors as bytes only, so measure the pgvector path there with a small load
//!   and `auto` only after its backfill; off measures the in-memory index on both databases)

use confab::{Application, Config};
use confab_application::documents;
use confab_projections::ReadDb;
use confab_projections::documents::DocumentRow;
use confab_projections::search;
use confab_testkit::openai::{OpenAiStandIn, embedding_of_size};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "Y29uZmFiLXRlc3QtZW5jcnlwdGlvbi1rZXktMzJieXQ=";

fn var<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn list(k: &str, default: &str) -> Vec<String> {
    std::env::var(k)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

/// A tiny deterministic generator (xorshift), so every run seeds the same data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pronounceable words: syllables from a fixed set (about 2 to 3 cl100k tokens each).
fn word(i: u64) -> String {
    const SYL: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ber", "dan", "fel", "gor", "hal", "jin",
        "pex", "wul",
    ];
    let mut s = String::new();
    let mut n = i + 17;
    while n > 0 {
        s.push_str(SYL[(n % 16) as usize]);
        n /= 16;
    }
    s
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    base: String,
    svc: confab_application::Services,
}

/// Starts a real `serve` on `backend` (a fresh PostgreSQL database, or SQLite in `dir`) with
/// the stand-in as its `openai` provider.
async fn start(
    backend: &str,
    dir: &std::path::Path,
    up: &OpenAiStandIn,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let url = match backend {
        "postgres" => Some(confab_eventstore::testing::fresh_postgres_database().await),
        _ => None,
    };
    let mut config = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.join("data"),
        database_url: url.map(Into::into),
        auto_migrate: true,
        rate_limit_enabled: false,
        encryption_key: Some(KEY.to_owned().into()),
        openai_base_url: Some(up.base_url().to_owned()),
        openai_api_key: Some("bench-key".to_owned().into()),
        pgvector: std::env::var("CONFAB_BENCH_PGVECTOR").unwrap_or_else(|_| "off".into()),
        ..Config::default()
    };
    tweak(&mut config);
    let app = Application::build(config).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let svc = app.services().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Running {
        stop,
        server,
        base,
        svc,
    }
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(60), self.server).await;
    }
}

async fn sign_up(base: &str, email: &str) -> (String, Uuid) {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/auth/signup"))
        .json(&serde_json::json!({ "email": email, "password": "password123", "name": "Bench" }))
        .send()
        .await
        .expect("signup")
        .json()
        .await
        .expect("json");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["user"]["id"].as_str().expect("id").parse().expect("uuid"),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "  {name:<28} n={:<5} p50 {:>10}  p95 {:>10}  p99 {:>10}  max {:>10}",
        times.len(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.95)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("times"))
    );
}

async fn ingest(backend: &str) {
    let mb: usize = var("CONFAB_BENCH_INGEST_MB", 100);
    let dims: usize = var("CONFAB_BENCH_DIMS", 1536);
    let up = OpenAiStandIn::start().await;
    up.embedding_dimensions(dims);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(backend, dir.path(), &up, |_| {}).await;
    let (token, _) = sign_up(&app.base, "ingest@example.com").await;
    let http = reqwest::Client::new();
    const FILE: usize = 10_000_000;
    let files = (mb * 1_000_000).div_ceil(FILE);
    let mut rng = Rng(42);
    let bodies: Vec<Vec<u8>> = (0..files)
        .map(|_| {
            let mut s = String::with_capacity(FILE);
            while s.len() < FILE - 200 {
                for _ in 0..12 {
                    s.push_str(&word(rng.below(200_000)));
                    s.push(' ');
                }
                s.push_str(".\n");
                if rng.below(8) == 0 {
                    s.push('\n');
                }
            }
            s.into_bytes()
        })
        .collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let started = Instant::now();
    let mut ids = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let part = reqwest::multipart::Part::bytes(body).file_name(format!("part{i}.txt"));
        let v: serde_json::Value = http
            .post(format!("{}/api/upload", app.base))
            .bearer_auth(&token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("json");
        ids.push(v["documentId"].as_str().expect("documentId").to_owned());
    }
    let uploaded = started.elapsed();
    let mut chunks = 0;
    for id in &ids {
        loop {
            let v: serde_json::Value = http
                .get(format!("{}/api/documents/{id}", app.base))
                .bearer_auth(&token)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            if v["status"] == "ready" {
                chunks += v["chunks"].as_i64().unwrap_or(0);
                break;
            }
            assert_ne!(v["status"], "failed", "{v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "ingest [{backend}]: {:.1} MB in {:.1} s = {:.2} MB/s ({} files, {chunks} chunks, {:.0} chunks/s, {dims} dims; uploads took {:.1} s)",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        files,
        chunks as f64 / elapsed.as_secs_f64(),
        uploaded.as_secs_f64()
    );
    app.shutdown().await;
}

const MODEL: &str = "text-embedding-3-small";

/// Seeds `n` chunks of `docs` documents of `owner` (each chunk `words` words from a
/// vocabulary of `vocab`), with their vectors, into the read model.
#[allow(clippy::too_many_arguments)]
async fn seed(
    db: &ReadDb,
    owner: Uuid,
    docs: usize,
    n: usize,
    dims: usize,
    vocab: u64,
    rng: &mut Rng,
    first_rowid: &mut i64,
) -> Vec<Uuid> {
    let per = n.div_ceil(docs);
    let key = search::owner_key(owner);
    let mut ids = Vec::new();
    let now = chrono::Utc::now();
    for d in 0..docs {
        let id = Uuid::now_v7();
        ids.push(id);
        let count = per.min(n - d * per);
        let doc_sql = "INSERT INTO documents (id, owner_id, filename, content_type, bytes, \
             content_hash, object_key, status, error, chunks, embedding_model, created_at, \
             updated_at) VALUES ($1, $2, $3, 'text/plain', $4, 'x', 'x', 'ready', NULL, $5, $6, $7, $7)";
        macro_rules! doc {
            ($p:expr) => {
                sqlx::query(doc_sql)
                    .bind(id)
                    .bind(owner)
                    .bind(format!("doc{d}.txt"))
                    .bind((count * 400) as i64)
                    .bind(count as i32)
                    .bind(MODEL)
                    .bind(now)
                    .execute($p)
                    .await
                    .expect("document")
            };
        }
        match db {
            ReadDb::Sqlite(p) => {
                doc!(p);
            }
            ReadDb::Postgres(p) => {
                doc!(p);
            }
        }
        const BATCH: usize = 250;
        let mut at = 0;
        while at < count {
            let take = BATCH.min(count - at);
            let rows: Vec<(i32, String, String, Vec<u8>)> = (0..take)
                .map(|i| {
                    let text: Vec<String> = (0..50).map(|_| word(rng.below(vocab))).collect();
                    let text = text.join(" ");
                    let hash = format!("{:016x}{:016x}{:08x}", rng.next(), rng.next(), i);
                    let v = embedding_of_size(&text, dims);
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    ((at + i) as i32, text, hash, bytes)
                })
                .collect();
            match db {
                ReadDb::Sqlite(p) => {
                    let mut tx = p.begin().await.expect("tx");
                    let mut b = sqlx::QueryBuilder::new(
                        "INSERT INTO document_chunks (rowid, document_id, chunk_index, owner_id, text, hash) ",
                    );
                    let start = *first_rowid;
                    b.push_values(rows.iter().enumerate(), |mut b, (k, (i, t, h, _))| {
                        b.push_bind(start + k as i64)
                            .push_bind(id)
                            .push_bind(*i)
                            .push_bind(owner)
                            .push_bind(t)
                            .push_bind(h);
                    });
                    b.build().execute(&mut *tx).await.expect("chunks");
                    let mut b =
                        sqlx::QueryBuilder::new("INSERT INTO document_chunks_fts (rowid, terms) ");
                    b.push_values(rows.iter().enumerate(), |mut b, (k, (_, t, _, _))| {
                        b.push_bind(start + k as i64)
                            .push_bind(search::fts5_terms(&key, &search::fold(t)));
                    });
                    b.build().execute(&mut *tx).await.expect("fts");
                    let mut b = sqlx::QueryBuilder::new(
                        "INSERT INTO chunk_embeddings (hash, model, dimensions, vector) ",
                    );
                    b.push_values(rows.iter(), |mut b, (_, _, h, v)| {
                        b.push_bind(h)
                            .push_bind(MODEL)
                            .push_bind(dims as i32)
                            .push_bind(v);
                    });
                    b.build().execute(&mut *tx).await.expect("vectors");
                    tx.commit().await.expect("commit");
                    *first_rowid += take as i64;
                }
                ReadDb::Postgres(p) => {
                    let mut tx = p.begin().await.expect("tx");
                    let mut b = sqlx::QueryBuilder::new(
                        "INSERT INTO document_chunks (document_id, chunk_index, owner_id, text, hash, search) ",
                    );
                    b.push_values(rows.iter(), |mut b, (i, t, h, _)| {
                        b.push_bind(id)
                            .push_bind(*i)
                            .push_bind(owner)
                            .push_bind(t)
                            .push_bind(h)
                            .push("to_tsvector('simple', ")
                            .push_bind_unseparated(search::fold(t))
                            .push_unseparated(")");
                    });
                    b.build().execute(&mut *tx).await.expect("chunks");
                    let mut b = sqlx::QueryBuilder::new(
                        "INSERT INTO chunk_embeddings (hash, model, dimensions, vector) ",
                    );
                    b.push_values(rows.iter(), |mut b, (_, _, h, v)| {
                        b.push_bind(h)
                            .push_bind(MODEL)
                            .push_bind(dims as i32)
                            .push_bind(v);
                    });
                    b.build().execute(&mut *tx).await.expect("vectors");
                    tx.commit().await.expect("commit");
                }
            }
            at += take;
        }
    }
    ids
}

async fn retrieval(backend: &str) {
    let total: usize = var("CONFAB_BENCH_TOTAL_CHUNKS", 1_000_000);
    let user: usize = var("CONFAB_BENCH_USER_CHUNKS", 100_000);
    let dims: usize = var("CONFAB_BENCH_DIMS", 1536);
    let queries: usize = var("CONFAB_BENCH_QUERIES", 300);
    const VOCAB: u64 = 20_000;
    let up = OpenAiStandIn::start().await;
    up.embedding_dimensions(dims);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(backend, dir.path(), &up, |_| {}).await;
    let db = app.svc.db.clone();
    let mut rng = Rng(7);
    let mut rowid = 1i64;
    let seeding = Instant::now();
    let owner = Uuid::now_v7();
    let ids = seed(&db, owner, 20, user, dims, VOCAB, &mut rng, &mut rowid).await;
    let others = total.saturating_sub(user);
    for u in 0..9 {
        let n = others / 9 + usize::from(u < others % 9);
        seed(
            &db,
            Uuid::now_v7(),
            20,
            n,
            dims,
            VOCAB,
            &mut rng,
            &mut rowid,
        )
        .await;
    }
    if let ReadDb::Postgres(p) = &db {
        sqlx::query("ANALYZE").execute(p).await.expect("analyze");
    }
    println!(
        "retrieval [{backend}]: seeded {total} chunks ({user} of one user in 20 documents, {dims} dims) in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );
    let mut docs: Vec<DocumentRow> = Vec::new();
    for id in &ids {
        docs.push(
            confab_projections::documents::get(&db, *id, owner)
                .await
                .expect("doc")
                .expect("exists"),
        );
    }
    let svc = &app.svc;
    let ask = |rng: &mut Rng| {
        (0..4)
            .map(|_| word(rng.below(VOCAB)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cold = Instant::now();
    let first = documents::retrieve(svc, owner, &docs, &ask(&mut rng), 5)
        .await
        .expect("retrieve");
    assert_eq!(first.len(), 5);
    println!(
        "  first request (loads the user's vectors into the index): {}",
        ms(cold.elapsed())
    );
    let (mut all, mut embed, mut lexical) = (Vec::new(), Vec::new(), Vec::new());
    let endpoint = confab_application::ai::configured_endpoint(svc, "openai").expect("endpoint");
    for _ in 0..queries {
        let q = ask(&mut rng);
        let t = Instant::now();
        let got = documents::retrieve(svc, owner, &docs, &q, 5)
            .await
            .expect("retrieve");
        all.push(t.elapsed());
        assert_eq!(got.len(), 5);
        let t = Instant::now();
        documents::embed::embed(&endpoint, &svc.llm.policy, MODEL, std::slice::from_ref(&q))
            .await
            .expect("embed");
        embed.push(t.elapsed());
        let t = Instant::now();
        confab_projections::documents::lexical_many(&db, owner, &ids, &q, 20)
            .await
            .expect("lexical");
        lexical.push(t.elapsed());
    }
    summary("retrieve (whole)", all);
    summary("  query embedding alone", embed);
    summary("  lexical ranking alone", lexical);
    app.shutdown().await;
}

/// Questions about README.md and a phrase of the section that answers each.
const LABELED: &[(&str, &str)] = &[
    (
        "how do I start the server on the embedded default",
        "cargo run --release -- serve",
    ),
    (
        "which command applies pending migrations",
        "applies pending migrations",
    ),
    (
        "how to rebuild a read model from position zero",
        "drops a read model",
    ),
    (
        "follow the last events of the global log as JSON lines",
        "the last events of the global log",
    ),
    (
        "create an admin account from the command line",
        "creates an admin",
    ),
    (
        "where do uploaded files go, S3 or a directory",
        "where uploads go",
    ),
    (
        "how many chunk texts per embeddings request",
        "chunk texts per embeddings request",
    ),
    (
        "what is the chunk size and overlap in tokens",
        "chunk size and overlap",
    ),
    (
        "how many chunks does a grounded reply get",
        "chunks a grounded reply gets",
    ),
    (
        "sliding window rate limits per IP",
        "requests per client IP",
    ),
    (
        "Redis unreachable: fail open or answer 503",
        "with Redis unreachable",
    ),
    ("how are Argon2 password hashes limited", "Argon2 hashes"),
    (
        "which proxies are trusted for X-Forwarded-For",
        "X-Forwarded-For",
    ),
    ("Stripe webhook signing secret whsec", "signing secret"),
    ("Stripe checkout success url and cancel url", "success_url"),
    (
        "what happens when a subscription is deleted",
        "customer.subscription.deleted",
    ),
    (
        "Pusher close codes for a client too slow",
        "4100 client too slow",
    ),
    (
        "SSE reconnect with Last-Event-ID and resync",
        "Last-Event-ID",
    ),
    (
        "how is the PDF parsed safely, encrypted files and bombs",
        "catch_unwind",
    ),
    (
        "what does readyz report when projections lag",
        "CONFAB_READINESS_MAX_LAG",
    ),
];

async fn recall(backend: &str) {
    let up = OpenAiStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(backend, dir.path(), &up, |c| {
        c.chunk_tokens = 200;
        c.chunk_overlap = 0;
    })
    .await;
    let (token, owner) = sign_up(&app.base, "recall@example.com").await;
    let readme = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let http = reqwest::Client::new();
    let part = reqwest::multipart::Part::bytes(readme).file_name("README.md");
    let v: serde_json::Value = http
        .post(format!("{}/api/upload", app.base))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let id: Uuid = v["documentId"].as_str().expect("id").parse().expect("uuid");
    let svc = &app.svc;
    let doc = loop {
        let d = confab_projections::documents::get(&svc.db, id, owner)
            .await
            .expect("get")
            .expect("doc");
        if d.status == "ready" {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut hybrid, mut lexical) = (0, 0);
    for (question, phrase) in LABELED {
        let h = documents::retrieve(svc, owner, std::slice::from_ref(&doc), question, 5)
            .await
            .expect("retrieve");
        let hit_h = h.iter().any(|s| s.text.contains(phrase));
        let l = confab_projections::documents::lexical_many(&svc.db, owner, &[id], question, 5)
            .await
            .expect("lexical");
        let places: Vec<(Uuid, i32)> = l[0]
            .iter()
            .map(|c| (c.document_id, c.chunk_index))
            .collect();
        let texts = confab_projections::documents::chunk_texts(&svc.db, owner, &places)
            .await
            .expect("texts");
        let hit_l = texts.iter().any(|c| c.text.contains(phrase));
        hybrid += usize::from(hit_h);
        lexical += usize::from(hit_l);
        if hit_h != hit_l {
            println!("  {question:?}: hybrid {hit_h}, lexical {hit_l}");
        }
    }
    let n = LABELED.len() as f64;
    println!(
        "recall@5 [{backend}]: hybrid {:.2} ({hybrid}/{}), lexical-only {:.2} ({lexical}/{}); {} chunks of README.md",
        hybrid as f64 / n,
        LABELED.len(),
        lexical as f64 / n,
        LABELED.len(),
        doc.chunks
    );
    app.shutdown().await;
}

#[tokio::main]
async fn main() {
    let parts = list("CONFAB_BENCH_PARTS", "ingest,retrieval,recall");
    for backend in list("CONFAB_BENCH_BACKENDS", "sqlite,postgres") {
        for part in &parts {
            match part.as_str() {
                "ingest" => ingest(&backend).await,
                "retrieval" => retrieval(&backend).await,
                "recall" => recall(&backend).await,
                other => panic!("unknown part {other:?}"),
            }
        }
    }
}
