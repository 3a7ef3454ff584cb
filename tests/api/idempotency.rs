//! `Idempotency-Key` on POST routes, on SQLite and PostgreSQL: retries get the first answer and
//! store nothing new; a reused key with another body, or a concurrent retry, is a 409.

use crate::helpers::{Db, TestApp, assert_error, on_both, parts, spawn_app, spawn_app_on};
use reqwest::Method;
use serde_json::{Value, json};

on_both!(
    a_retried_post_returns_the_first_answer_and_stores_nothing_new,
    concurrent_retries_with_one_key_create_one_chat,
    answers_older_than_a_day_are_purged,
    a_write_the_read_model_has_not_shown_is_a_202_a_retry_replays,
    a_caller_is_authenticated_before_the_body_is_buffered,
    a_run_that_never_answered_is_taken_over_and_writes_nothing_twice,
);

async fn post_with_key(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (u16, Value, bool) {
    let r = app
        .request(Method::POST, path, Some(token))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("post");
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let (status, body) = parts(r).await;
    (status, body, replayed)
}

/// A write is committed but its read model lags (here no projections run at all): the
/// answer is 202 with the log position, not a 500, and a retry with the same key replays it
/// instead of writing again. Once projections run, exactly one chat is there.
async fn a_write_the_read_model_has_not_shown_is_a_202_a_retry_replays(db: Db) {
    let first = spawn_app(db).await;
    let (token, _) = first.sign_up("lag@example.com").await;
    let (url, data_dir) = (first.database_url.clone(), first.data_dir.clone());
    let _kept = first.stop().await;
    let same_data = |c: &mut confab::Config| c.data_dir = data_dir.clone();
    let lagging = spawn_app_on(url.clone(), |c| {
        same_data(c);
        c.run_projections = false;
        c.write_timeout_ms = 100;
    })
    .await;
    let body = json!({ "title": "Committed" });
    let (s1, first_answer, r1) = post_with_key(&lagging, "/api/chats", &token, "lag", &body).await;
    assert_eq!((s1, r1), (202, false), "{first_answer}");
    assert_eq!(first_answer["status"], "accepted");
    assert!(first_answer["position"].as_u64().is_some_and(|p| p > 0));
    let (s2, second_answer, r2) = post_with_key(&lagging, "/api/chats", &token, "lag", &body).await;
    assert_eq!((s2, r2), (202, true), "a replay, not a second write");
    assert_eq!(second_answer, first_answer);
    let _kept_too = lagging.stop().await;
    let caught_up = spawn_app_on(url, same_data).await;
    let (_, list) = caught_up.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["chats"][0]["title"], "Committed");
    caught_up.shutdown().await;
}

/// Sends a keyed POST of `bytes` body bytes over a raw connection, writing the body while it
/// reads the answer, and returns the answer's status. A server that answers before reading the
/// whole body (then closes) is answered as such: a writer that fails is not the answer.
async fn raw_post(app: &TestApp, bearer: &str, bytes: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /api/chats HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {bearer}\r\n\
         idempotency-key: big\r\ncontent-type: application/json\r\n\
         content-length: {bytes}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            write.write_all(&chunk[..n]).await?;
            left -= n;
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), read.read(&mut buf))
            .await
            .expect("an answer within 30 s")
            .expect("read the answer");
        assert!(
            n > 0,
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    let status_line = String::from_utf8_lossy(&answer);
    status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"))
}

/// A keyed request from nobody is answered 401 from its headers: its body, larger than the
/// layer ever buffers (17 MB), is not read. A signed-in caller is held to the route's own limit.
async fn a_caller_is_authenticated_before_the_body_is_buffered(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("limits@example.com").await;
    assert_eq!(raw_post(&app, "not-a-session", 17 << 20).await, 401);
    assert_eq!(raw_post(&app, &token, 3 << 20).await, 413);
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 0);
    app.shutdown().await;
}

/// The hourly purge deletes answers past their 24 hours and keeps the others.
async fn answers_older_than_a_day_are_purged(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("purge@example.com").await;
    let body = json!({ "title": "Kept a day" });
    post_with_key(&app, "/api/chats", &token, "old", &body).await;
    let read = app.read_db().await;
    // The only answer so far is made 25 hours old; the next one is fresh.
    let aged = chrono::Utc::now() - chrono::Duration::hours(25);
    let age = "UPDATE idempotency_keys SET created_at = $1";
    match &read {
        confab_projections::ReadDb::Sqlite(p) => {
            sqlx::query(age).bind(aged).execute(p).await.unwrap();
        }
        confab_projections::ReadDb::Postgres(p) => {
            sqlx::query(age).bind(aged).execute(p).await.unwrap();
        }
    }
    post_with_key(&app, "/api/chats", &token, "new", &body).await;
    assert_eq!(
        confab_api::idempotency::purge_expired(&read).await.unwrap(),
        1
    );
    let count = "SELECT COUNT(*) FROM idempotency_keys";
    let remaining: i64 = match &read {
        confab_projections::ReadDb::Sqlite(p) => sqlx::query_scalar(count).fetch_one(p).await,
        confab_projections::ReadDb::Postgres(p) => sqlx::query_scalar(count).fetch_one(p).await,
    }
    .unwrap();
    assert_eq!(remaining, 1, "the recent answer stays");
    // The purged key is free again: a new request, not a replay.
    let (status, _, replayed) = post_with_key(&app, "/api/chats", &token, "old", &body).await;
    assert_eq!((status, replayed), (201, false));
    app.shutdown().await;
}

async fn a_retried_post_returns_the_first_answer_and_stores_nothing_new(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("idem@example.com").await;
    let (other, _) = app.sign_up("idem2@example.com").await;
    let body = json!({ "title": "Once" });
    let (s1, first, r1) = post_with_key(&app, "/api/chats", &token, "key-1", &body).await;
    let (s2, second, r2) = post_with_key(&app, "/api/chats", &token, "key-1", &body).await;
    assert_eq!((s1, s2), (201, 201));
    assert!(!r1 && r2, "only the retry is a replay");
    assert_eq!(first, second);
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 1);

    let (status, err, _) = post_with_key(
        &app,
        "/api/chats",
        &token,
        "key-1",
        &json!({ "title": "Other" }),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    assert_error(&err, "conflict");

    // Another user's identical key is theirs alone.
    let (status, theirs, replayed) =
        post_with_key(&app, "/api/chats", &other, "key-1", &body).await;
    assert_eq!((status, replayed), (201, false));
    assert_ne!(theirs["id"], first["id"]);

    // Messages too.
    let chat = first["id"].as_str().expect("id");
    let path = format!("/api/chats/{chat}/messages");
    let msg = json!({ "content": "exactly once", "type": "text" });
    let (a, m1, _) = post_with_key(&app, &path, &token, "m-1", &msg).await;
    let (b, m2, _) = post_with_key(&app, &path, &token, "m-1", &msg).await;
    assert_eq!((a, b), (201, 201));
    assert_eq!(m1["id"], m2["id"]);
    let (_, msgs) = app.get(&path, Some(&token)).await;
    assert_eq!(msgs["total"], 1);

    // A refused request is replayed as refused, and still stores nothing.
    let bad = json!({ "title": "" });
    let (s1, _, _) = post_with_key(&app, "/api/chats", &token, "bad-1", &bad).await;
    let (s2, _, replayed) = post_with_key(&app, "/api/chats", &token, "bad-1", &bad).await;
    assert_eq!((s1, s2, replayed), (400, 400, true));
    let (status, body, _) =
        post_with_key(&app, "/api/chats", &token, &"k".repeat(300), &body).await;
    assert_eq!(status, 400, "{body}");
    app.shutdown().await;
}

async fn concurrent_retries_with_one_key_create_one_chat(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("burst@example.com").await;
    let body = json!({ "title": "Burst" });
    let attempts = (0..10).map(|_| post_with_key(&app, "/api/chats", &token, "burst-key", &body));
    let results = futures::future::join_all(attempts).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .filter(|(s, _, _)| *s == 201)
        .filter_map(|(_, b, _)| b["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(s, _, _)| *s == 201 || *s == 409),
        "{results:?}"
    );
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 1);
    app.shutdown().await;
}

/// Makes every kept answer look like a claim whose run never answered (its process died after
/// it wrote, before it kept its answer), `age` ago.
async fn unanswered(app: &TestApp, age: chrono::Duration) {
    let sql = "UPDATE idempotency_keys SET status = NULL, content_type = NULL, body = NULL, \
               created_at = $1";
    let at = chrono::Utc::now() - age;
    match &app.read_db().await {
        confab_projections::ReadDb::Sqlite(p) => {
            sqlx::query(sql).bind(at).execute(p).await.unwrap();
        }
        confab_projections::ReadDb::Postgres(p) => {
            sqlx::query(sql).bind(at).execute(p).await.unwrap();
        }
    }
}

/// A request whose process died after it wrote and before it answered leaves its claim: a
/// retry meanwhile is a 409 (it may still be running), and after 15 seconds the retry runs
/// again and answers with what the first run wrote, the same message and the same chat,
/// never a second one.
async fn a_run_that_never_answered_is_taken_over_and_writes_nothing_twice(db: Db) {
    let app = spawn_app(db).await;
    let (token, chat) = {
        let (token, _) = app.sign_up("crash@example.com").await;
        let chat = app.new_chat(&token, "Crash").await;
        (token, chat)
    };
    let path = format!("/api/chats/{chat}/messages");
    let body = json!({ "content": "written once", "type": "text" });
    let (s1, first, _) = post_with_key(&app, &path, &token, "crash", &body).await;
    assert_eq!(s1, 201, "{first}");
    unanswered(&app, chrono::Duration::seconds(5)).await;
    let (s2, busy, _) = post_with_key(&app, &path, &token, "crash", &body).await;
    assert_eq!(s2, 409, "a run that may still be going: {busy}");
    assert_error(&busy, "conflict");
    unanswered(&app, chrono::Duration::seconds(31)).await;
    let (s3, again, replayed) = post_with_key(&app, &path, &token, "crash", &body).await;
    assert_eq!((s3, replayed), (201, false), "run again: {again}");
    assert_eq!(
        again["id"], first["id"],
        "the same message, found, not sent twice"
    );
    assert_eq!(again["content"], "written once");
    let (_, list) = app.get(&format!("{path}?limit=100"), Some(&token)).await;
    assert_eq!(list["total"], 1, "{list}");
    // And now its answer is kept: a further retry is a replay.
    let (s4, kept, replayed) = post_with_key(&app, &path, &token, "crash", &body).await;
    assert_eq!((s4, replayed), (201, true));
    assert_eq!(kept["id"], first["id"]);

    // A chat likewise.
    let chat_body = json!({ "title": "Created once" });
    let (c1, created, _) =
        post_with_key(&app, "/api/chats", &token, "crash-chat", &chat_body).await;
    assert_eq!(c1, 201, "{created}");
    unanswered(&app, chrono::Duration::seconds(31)).await;
    let (c2, again, _) = post_with_key(&app, "/api/chats", &token, "crash-chat", &chat_body).await;
    assert_eq!(c2, 201, "{again}");
    assert_eq!(again["id"], created["id"]);
    let (_, chats) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(chats["total"], 2, "the first chat and this one: {chats}");
    app.shutdown().await;
}
