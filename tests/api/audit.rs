//! `confab audit` (issue 15): read models verified against a replay of the log, on a healthy
//! store and after a row is altered behind its projection's back.

use crate::helpers::{Db, TestApp, confab_command, on_both, spawn_app};
use confab_projections::ReadDb;
use serde_json::{Value, json};
use std::process::Output;

on_both!(
    an_online_rebuild_never_shows_an_empty_or_short_read_model,
    audit_passes_on_a_healthy_store,
    audit_names_the_projection_table_key_and_column_of_a_tampered_row,
    audit_checks_the_ledger_balances_and_overdue_credit_holds,
    restored_chats_and_messages_match_a_replay,
);

fn audit(app: &TestApp, args: &[&str]) -> Output {
    let mut cmd = confab_command();
    cmd.arg("--data-dir")
        .arg(&app.data_dir)
        .arg("audit")
        .args(args);
    if let Some(url) = &app.database_url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    cmd.output().expect("run confab audit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A user with a chat of two messages, some settings and a credit adjustment; returns the
/// first message's id.
async fn some_history(app: &TestApp) -> String {
    let (token, _, chat) = app
        .sign_up_with_chat("audited@example.com", "Audited")
        .await;
    let first = app.send_message(&token, &chat, "hello", "text").await;
    app.send_message(&token, &chat, "again", "text").await;
    let (other, _, chat2) = app.sign_up_with_chat("other@example.com", "Other").await;
    app.send_message(&other, &chat2, "hi there", "text").await;
    let mut cmd = confab_command();
    cmd.arg("--data-dir").arg(&app.data_dir).args([
        "credits",
        "adjust",
        "--user",
        "audited@example.com",
        "--amount",
        "25",
        "--reason",
        "goodwill",
        "--by",
        "tester",
    ]);
    if let Some(url) = &app.database_url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    let out = cmd.output().expect("run confab credits adjust");
    assert!(out.status.success(), "{}", text(&out.stderr));
    first["id"].as_str().expect("message id").to_owned()
}

/// Waits until every projection has caught up with the log, as `confab projections status`
/// tells.
async fn caught_up(app: &TestApp) {
    for _ in 0..100 {
        let mut cmd = confab_command();
        cmd.arg("--data-dir")
            .arg(&app.data_dir)
            .args(["projections", "status"]);
        if let Some(url) = &app.database_url {
            cmd.env("CONFAB_DATABASE_URL", url);
        }
        let out = cmd.output().expect("status");
        let s = text(&out.stdout);
        let lagging = s
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("documents vectors"))
            .any(|l| l.split_whitespace().nth(3) != Some("0"));
        if !lagging {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("projections did not catch up");
}

async fn audit_passes_on_a_healthy_store(db: Db) {
    let app = spawn_app(db).await;
    some_history(&app).await;
    caught_up(&app).await;

    let out = audit(&app, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("audit clean"), "{stdout}");
    assert!(stdout.contains("chats: messages equal"), "{stdout}");
    assert!(
        stdout.contains("credits: credit_transactions equal"),
        "{stdout}"
    );

    let out = audit(&app, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    let chats = report["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .find(|p| p["projection"] == "chats")
        .expect("chats audited");
    let messages = chats["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "messages")
        .expect("messages compared");
    assert_eq!(messages["live_rows"], 3, "{messages}");
    assert_eq!(messages["live_checksum"], messages["replay_checksum"]);

    // The shadow is gone.
    let leftovers: Vec<_> = std::fs::read_dir(&app.data_dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    if let ReadDb::Postgres(p) = app.read_db().await {
        let schemas: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'audit_%'",
        )
        .fetch_one(&p)
        .await
        .expect("schemas");
        assert_eq!(schemas, 0);
    }
    app.shutdown().await;
}

async fn audit_names_the_projection_table_key_and_column_of_a_tampered_row(db: Db) {
    let app = spawn_app(db).await;
    let id = some_history(&app).await;
    caught_up(&app).await;
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    let sql = "UPDATE messages SET content = 'tampered' WHERE id = $1";
    let changed = match app.read_db().await {
        ReadDb::Sqlite(p) => sqlx::query(sql)
            .bind(uuid)
            .execute(&p)
            .await
            .map(|r| r.rows_affected()),
        ReadDb::Postgres(p) => sqlx::query(sql)
            .bind(uuid)
            .execute(&p)
            .await
            .map(|r| r.rows_affected()),
    }
    .expect("tamper");
    assert_eq!(changed, 1);

    let out = audit(&app, &["chats"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no line names {id}:\n{stdout}"));
    assert!(line.contains("projection chats"), "{line}");
    assert!(line.contains("table messages"), "{line}");
    assert!(line.contains(&format!("key id={id}")), "{line}");
    assert!(line.contains("column content"), "{line}");
    assert!(!line.contains("column chat_id"), "{line}");

    let out = audit(&app, &["chats", "--json"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    assert_eq!(report["clean"], false);
    let tables = report["projections"][0]["tables"]
        .as_array()
        .expect("tables");
    let messages = tables
        .iter()
        .find(|t| t["table"] == "messages")
        .expect("messages");
    assert_eq!(messages["equal"], false, "{messages}");
    assert_eq!(
        messages["differences"],
        serde_json::json!([{ "key": format!("id={id}"), "kind": "changed", "columns": ["content"] }]),
        "{messages}"
    );
    for t in tables.iter().filter(|t| t["table"] != "messages") {
        assert_eq!(t["equal"], true, "{t}");
    }
    app.shutdown().await;
}

async fn audit_checks_the_ledger_balances_and_overdue_credit_holds(db: Db) {
    let app = spawn_app(db).await;
    some_history(&app).await;
    caught_up(&app).await;
    let read = app.read_db().await;
    let hold = uuid::Uuid::now_v7();
    let lapsed = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let raise = "UPDATE credit_balances SET balance = balance + 5";
    let insert = "INSERT INTO credit_holds (reservation_id, user_id, amount, expires_at_ms) \
                  VALUES ($1, $2, 10, $3)";
    match &read {
        ReadDb::Sqlite(p) => {
            sqlx::query(raise).execute(p).await.expect("raise");
            sqlx::query(insert)
                .bind(hold)
                .bind(hold)
                .bind(lapsed)
                .execute(p)
                .await
                .expect("hold");
        }
        ReadDb::Postgres(p) => {
            sqlx::query(raise).execute(p).await.expect("raise");
            sqlx::query(insert)
                .bind(hold)
                .bind(hold)
                .bind(lapsed)
                .execute(p)
                .await
                .expect("hold");
        }
    }

    let out = audit(&app, &["credits", "credit_holds", "--json"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    let violations = report["violations"].as_array().expect("violations");
    let unbalanced = violations
        .iter()
        .filter(|v| v["invariant"] == "balance_equals_transactions")
        .count();
    // Only the user with a credit transaction (the adjustment) has a balance row.
    assert_eq!(unbalanced, 1, "{report}");
    let overdue: Vec<_> = violations
        .iter()
        .filter(|v| v["invariant"] == "no_hold_open_past_expiry")
        .collect();
    assert_eq!(overdue.len(), 1, "{report}");
    assert_eq!(overdue[0]["key"], format!("reservation_id={hold}"));
    let credits = &report["projections"][0];
    assert_eq!(credits["projection"], "credits");
    let balances = &credits["tables"][0];
    assert_eq!(balances["table"], "credit_balances");
    for d in balances["differences"].as_array().expect("differences") {
        assert_eq!(d["kind"], "changed", "{d}");
        assert_eq!(d["columns"], serde_json::json!(["balance"]), "{d}");
    }
    let holds = &report["projections"][1]["tables"][0];
    assert_eq!(holds["table"], "credit_holds");
    assert_eq!(
        holds["differences"],
        serde_json::json!([{
            "key": format!("reservation_id={hold}"),
            "kind": "extra",
            "columns": ["reservation_id", "user_id", "amount", "expires_at_ms"]
        }]),
        "{holds}"
    );

    // A generous grace tolerates the hold, not the balances.
    let out = audit(&app, &["credit_holds", "--hold-grace", "7200", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    app.shutdown().await;
}

fn rebuild_online(app: &TestApp, name: &str) -> Output {
    let mut cmd = confab_command();
    cmd.arg("--data-dir")
        .arg(&app.data_dir)
        .args(["projections", "rebuild", name, "--online"]);
    if let Some(url) = &app.database_url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    cmd.output()
        .expect("run confab projections rebuild --online")
}

/// `confab projections rebuild chats --online` while the server serves reads and takes writes:
/// no read sees a chat list, a message page or a search shorter than what was acknowledged
/// before it began, and the rebuilt read model equals a replay of the log.
async fn an_online_rebuild_never_shows_an_empty_or_short_read_model(db: Db) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let app = Arc::new(spawn_app(db).await);
    let (token, _, chat) = app.sign_up_with_chat("online@example.com", "Online").await;
    for i in 0..40 {
        app.send_message(&token, &chat, &format!("note {i} about zebras"), "text")
            .await;
    }
    for i in 0..30 {
        app.new_chat(&token, &format!("Chat {i}")).await;
    }
    let chats = Arc::new(AtomicU64::new(31));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (app, token, chat, chats, stop) = (
            app.clone(),
            token.clone(),
            chat.clone(),
            chats.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut reads = 0u32;
            let mut short = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let floor = chats.load(Ordering::SeqCst);
                let (s, list) = app.get("/api/chats?limit=100", Some(&token)).await;
                if s != 200 || list["total"].as_u64().unwrap_or(0) < floor {
                    short.push(format!("chats: {s} {} < {floor}", list["total"]));
                }
                let path = format!("/api/chats/{chat}/messages?limit=100");
                let (s, page) = app.get(&path, Some(&token)).await;
                let n = page["messages"].as_array().map_or(0, Vec::len);
                if s != 200 || n < 40 {
                    short.push(format!("messages: {s} {n} < 40"));
                }
                let (s, found) = app
                    .get("/api/messages/search?q=zebras&limit=100", Some(&token))
                    .await;
                if s != 200 || found["total"].as_u64().unwrap_or(0) < 40 {
                    short.push(format!("search: {s} {}", found["total"]));
                }
                reads += 1;
            }
            (reads, short)
        })
    };
    let writer = {
        let (app, token, chats, stop) = (app.clone(), token.clone(), chats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                app.new_chat(&token, &format!("During {i}")).await;
                chats.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let out = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || rebuild_online(&app, "chats"))
            .await
            .expect("joined")
    };
    // Reads and writes go on a little after the swap too.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (reads, short) = reader.await.expect("reader");
    writer.await.expect("writer");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("chats: rebuilt online up to position"),
        "{}",
        text(&out.stdout)
    );
    assert!(reads > 0, "the reader never read");
    assert!(short.is_empty(), "reads during the rebuild: {short:?}");
    let (_, list) = app.get("/api/chats?limit=100", Some(&token)).await;
    assert_eq!(list["total"].as_u64(), Some(chats.load(Ordering::SeqCst)));
    let out = audit(&app, &["chats"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Arc::into_inner(app).expect("one owner").shutdown().await;
}

/// Restorations (time travel) rebuild rows, search terms and attachments exactly as a replay of
/// the log does.
async fn restored_chats_and_messages_match_a_replay(db: Db) {
    let app = spawn_app(db).await;
    let (token, _, chat) = app.sign_up_with_chat("ann@example.com", "Restored").await;
    let m = app.send_message(&token, &chat, "with a file", "text").await;
    let id = m["id"].as_str().expect("id");
    let (status, body) = app
        .post(
            "/chat/attachments",
            Some(&token),
            &json!({ "message_id": id, "file_type": "pdf", "file_path": "docs/a.pdf" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let gone = app
        .send_message(&token, &chat, "deleted first", "text")
        .await;
    let gone_path = format!(
        "/api/chats/{chat}/messages/{}",
        gone["id"].as_str().expect("id")
    );
    let (status, _) = app
        .put(
            &format!("/api/chats/{chat}/messages/{id}"),
            &token,
            &json!({ "content": "with a file, edited" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.delete(&gone_path, &token).await, 204);
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &token).await, 204);
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(&format!("{gone_path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, files) = app
        .get(&format!("/chat/messages/{id}/attachments"), Some(&token))
        .await;
    assert_eq!(status, 200, "{files}");
    assert_eq!(files[0]["file_path"], "docs/a.pdf", "{files}");
    caught_up(&app).await;

    let out = audit(&app, &["chats"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("chats: messages equal"), "{stdout}");
    assert!(stdout.contains("audit clean"), "{stdout}");
    app.shutdown().await;
}
