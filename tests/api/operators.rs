//! Operators and auditors (issue 15): the credit ledger that reconciles with the balance, and
//! operators' adjustments through `confab credits adjust`.

use crate::billing::{TOPUP, billing_app_with};
use crate::helpers::{
    Db, PATIENCE, Queue, TestApp, confab_command, eventually, on_both, poll, spawn_app,
    spawn_app_on, spawn_app_with,
};
use confab_eventstore::{EventMetadata, ExpectedVersion, NewEvent};
use confab_projections::ReadDb;
use confab_testkit::openai::{Act, OpenAiStandIn};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

on_both!(
    the_ledger_reconciles_after_concurrent_chats_resets_and_top_ups,
    an_operator_adjusts_credits_recording_who_and_why,
    a_read_model_built_by_another_version_is_rebuilt_at_start_up,
    a_poison_event_halts_its_projection_until_an_operator_skips_it,
    a_poison_event_is_parked_and_retried_or_skipped,
    metrics_show_request_projection_and_job_latency_and_queue_depth,
);

/// Runs `sql` on the read-model database.
pub(crate) async fn exec(db: &ReadDb, sql: &'static str) -> u64 {
    let done = match db {
        ReadDb::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        ReadDb::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
    };
    done.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every transaction of the caller's credit history, oldest first.
async fn history(app: &TestApp, token: &str) -> Vec<Value> {
    let h = app.credit_history(token, "?limit=100").await;
    let total = h["total"].as_u64().expect("total");
    let mut rows = h["transactions"].as_array().expect("transactions").clone();
    assert_eq!(rows.len() as u64, total, "one page holds the whole history");
    rows.reverse();
    rows
}

/// The credits the caller's history adds up to.
fn sum(rows: &[Value]) -> i64 {
    rows.iter()
        .map(|t| t["amount"].as_i64().expect("amount"))
        .sum()
}

/// Asks for a reply in a new chat and reads it whole → status.
async fn chat(app: &TestApp, token: &str, text: &str) -> u16 {
    let body = json!({ "messages": [{ "role": "user", "content": text }] });
    let r = app
        .request(Method::POST, "/api/chat", Some(token))
        .json(&body);
    let r = r.send().await.expect("chat");
    let status = r.status().as_u16();
    let _ = r.text().await;
    status
}

async fn the_ledger_reconciles_after_concurrent_chats_resets_and_top_ups(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["ok"], (1000, 2000), Duration::from_millis(1)));
    let b = billing_app_with(db, |c| {
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.cron_secret = Some("cron-secret".to_owned().into());
        c.llm_first_token_timeout_ms = 30_000;
    })
    .await;
    let mut buyers = Vec::new();
    for i in 0..3 {
        buyers.push(b.customer(&format!("ledger{i}@example.com")).await);
    }
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for (i, buyer) in buyers.iter().enumerate() {
        for n in 0..4 {
            let (b, token) = (b.clone(), buyer.token.clone());
            tasks.push(tokio::spawn(async move {
                let status = chat(&b.app, &token, &format!("question {n}")).await;
                assert_eq!(status, 200);
            }));
        }
        let (b, event) = (
            b.clone(),
            buyer.checkout_completed(
                &format!("evt_ledger_{i}"),
                chrono::Utc::now().timestamp(),
                &format!("cs_ledger_{i}"),
                TOPUP,
                None,
            ),
        );
        tasks.push(tokio::spawn(async move { b.apply(&event).await }));
    }
    for _ in 0..2 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let r = b
                .app
                .request(Method::GET, "/api/cron/reset-credits", None)
                .bearer_auth("cron-secret")
                .send()
                .await
                .expect("reset");
            assert_eq!(r.status(), 200);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let b = Arc::try_unwrap(b).ok().expect("sole owner");
    b.app.drained(Queue::Replies).await;
    b.drained().await;

    for buyer in &buyers {
        let rows = history(&b.app, &buyer.token).await;
        let balance = b.app.me(&buyer.token).await["credits"]
            .as_i64()
            .expect("credits");
        assert_eq!(sum(&rows), balance, "{rows:?}");
        assert_eq!(rows[0]["type"], "grant", "the history opens with the grant");
        assert_eq!(rows[0]["amount"], 1_000);
        let kinds: Vec<&str> = rows.iter().filter_map(|t| t["type"].as_str()).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "usage").count(),
            4,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| **k == "topup").count(),
            1,
            "{kinds:?}"
        );
        // Each row's balance is the running sum.
        let mut running = 0;
        for t in &rows {
            running += t["amount"].as_i64().expect("amount");
            assert_eq!(t["balanceAfter"], running, "{t}");
        }
        let grants = b.app.credit_history(&buyer.token, "?type=grant").await;
        assert_eq!(grants["total"], 1, "{grants}");
        assert_eq!(grants["transactions"][0]["type"], "grant");
    }
    b.finish().await;
}

fn confab(app: &TestApp, args: &[&str], user: Option<&str>) -> Output {
    let mut cmd = confab_command();
    cmd.arg("--data-dir").arg(&app.data_dir).args(args);
    if let Some(url) = &app.database_url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    match user {
        Some(u) => cmd.env("USER", u),
        None => cmd.env_remove("USER"),
    };
    cmd.env_remove("LOGNAME").env_remove("USERNAME");
    cmd.output().expect("run confab")
}

async fn an_operator_adjusts_credits_recording_who_and_why(db: Db) {
    let app = spawn_app(db).await;
    let (token, user) = app.sign_up("adjusted@example.com").await;
    let id = user["id"].as_str().expect("id").to_owned();

    // Taken away by an operator named on the command line; the ledger opens first.
    let out = confab(
        &app,
        &[
            "credits",
            "adjust",
            "--user",
            &id,
            "--amount",
            "-200",
            "--reason",
            "duplicate grant",
            "--by",
            "alice",
        ],
        Some("root"),
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("balance now 800"), "{said}");
    // Added, by email, by the OS user running the command.
    let out = confab(
        &app,
        &[
            "credits",
            "adjust",
            "--user",
            "Adjusted@example.com",
            "--amount",
            "50",
            "--reason",
            "goodwill",
        ],
        Some("bob"),
    );
    assert!(out.status.success(), "{out:?}");

    let adjustments = poll(
        PATIENCE,
        Duration::from_millis(25),
        || app.credit_history(&token, "?type=adjustment"),
        |h| h["transactions"].as_array().is_some_and(|t| t.len() == 2),
    )
    .await;
    assert_eq!(adjustments["total"], 2, "{adjustments}");
    let t = &adjustments["transactions"];
    assert_eq!(t[0]["amount"], 50);
    assert_eq!(t[0]["balanceAfter"], 850);
    assert_eq!(
        t[0]["reference"],
        json!({ "reason": "goodwill", "by": "bob" })
    );
    assert_eq!(t[1]["amount"], -200);
    assert_eq!(
        t[1]["reference"],
        json!({ "reason": "duplicate grant", "by": "alice" })
    );
    let rows = history(&app, &token).await;
    assert_eq!(sum(&rows), 850);
    assert_eq!(app.me(&token).await["credits"], 850);

    // Never below zero; nobody unknown; always a reason; someone to name.
    let refused = [
        (
            vec!["--user", id.as_str(), "--amount", "-851", "--reason", "x"],
            Some("bob"),
            "below zero",
        ),
        (
            vec![
                "--user",
                "nobody@example.com",
                "--amount",
                "5",
                "--reason",
                "x",
            ],
            Some("bob"),
            "no user",
        ),
        (
            vec!["--user", id.as_str(), "--amount", "5", "--reason", " "],
            Some("bob"),
            "reason",
        ),
        (
            vec!["--user", id.as_str(), "--amount", "0", "--reason", "x"],
            Some("bob"),
            "amount",
        ),
        (
            vec!["--user", id.as_str(), "--amount", "5", "--reason", "x"],
            None,
            "--by",
        ),
    ];
    for (args, os_user, says) in refused {
        let mut all = vec!["credits", "adjust"];
        all.extend(args);
        let out = confab(&app, &all, os_user);
        assert!(!out.status.success(), "{all:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let events = app.svc.store.head_position().await.expect("head");
    let rows = history(&app, &token).await;
    assert_eq!(sum(&rows), 850, "refused adjustments changed nothing");
    let (s, body) = app
        .get("/api/billing/credit-history?type=refund", Some(&token))
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"]["details"]["type"].is_string(), "{body}");
    assert_eq!(app.svc.store.head_position().await.expect("head"), events);
    app.shutdown().await;
}

async fn a_read_model_built_by_another_version_is_rebuilt_at_start_up(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("upgraded@example.com").await;
    let done = confab_application::credits::adjust(
        &*app.svc.store,
        &app.svc.db,
        &app.svc.catalogue,
        "upgraded@example.com",
        25,
        "welcome back",
        "carol",
    )
    .await
    .expect("adjusted");
    app.svc
        .visible(confab_projections::credits::NAME, Some(done.position))
        .await
        .expect("visible");
    assert_eq!(sum(&history(&app, &token).await), 1_025);
    let (data_dir, database_url) = (app.data_dir.clone(), app.database_url.clone());
    let read = app.read_db().await;
    let _dir = app.stop().await;
    // The credit history as version 1 of the projection left it: the opening a `reset`, no
    // adjustments.
    assert_eq!(
        exec(
            &read,
            "UPDATE credit_transactions SET type = 'reset' WHERE type = 'grant'"
        )
        .await,
        1
    );
    exec(
        &read,
        "DELETE FROM credit_transactions WHERE type = 'adjustment'",
    )
    .await;
    exec(
        &read,
        "UPDATE projection_checkpoints SET version = 1 WHERE name = 'credits'",
    )
    .await;

    // The old read model serves while the new version is built beside it, then the new one
    // takes over: the history is never empty.
    let app = spawn_app_on(database_url, |c| c.data_dir = data_dir).await;
    let (token, _) = app
        .sign_in("upgraded@example.com", crate::helpers::PASSWORD)
        .await;
    let rows = poll(
        PATIENCE,
        Duration::from_millis(20),
        || history(&app, &token),
        |rows| {
            assert!(!rows.is_empty(), "the credit history was empty meanwhile");
            rows.len() == 2 && rows[0]["type"] == "grant"
        },
    )
    .await;
    let kinds: Vec<&str> = rows.iter().filter_map(|t| t["type"].as_str()).collect();
    assert_eq!(kinds, vec!["grant", "adjustment"]);
    assert_eq!(sum(&rows), 1_025);
    let version: i64 = match &read {
        ReadDb::Sqlite(p) => {
            sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE name = 'credits'")
                .fetch_one(p)
                .await
                .expect("version")
        }
        ReadDb::Postgres(p) => sqlx::query_scalar(
            "SELECT version::BIGINT FROM projection_checkpoints WHERE name = 'credits'",
        )
        .fetch_one(p)
        .await
        .expect("version"),
    };
    assert_eq!(version, i64::from(confab_projections::credits::VERSION));
    app.shutdown().await;
}

/// Appends to `user`'s settings a `settings.updated` event with `payload`, as a buggy or
/// newer release might; returns its position.
async fn append_settings(app: &TestApp, user: &str, payload: Value) -> u64 {
    let appended = app
        .svc
        .store
        .append(
            &format!("settings-{user}"),
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "settings.updated",
                1,
                payload,
                EventMetadata::default(),
            )],
        )
        .await
        .expect("append");
    appended.last_position
}

/// `/readyz` → (status, body).
async fn readiness(app: &TestApp) -> (u16, Value) {
    app.get("/readyz", None).await
}

/// The dead letters of `settings`: (position, status).
async fn dead_letters(read: &ReadDb) -> Vec<(u64, String)> {
    confab_projections::parked::list(read, Some("settings"))
        .await
        .expect("parked")
        .into_iter()
        .map(|r| (r.position as u64, r.status))
        .collect()
}

/// The skips recorded in the log for `settings`: (position, reason, by).
async fn skips(app: &TestApp) -> Vec<(u64, String, String)> {
    confab_eventstore::read_whole_stream(&*app.svc.store, "projection-settings")
        .await
        .expect("stream")
        .into_iter()
        .map(|e| {
            assert_eq!(e.event_type, "projection.event_skipped");
            (
                e.payload["position"].as_u64().expect("position"),
                e.payload["reason"].as_str().expect("reason").to_owned(),
                e.payload["by"].as_str().expect("by").to_owned(),
            )
        })
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn a_poison_event_halts_its_projection_until_an_operator_skips_it(db: Db) {
    let app = spawn_app_with(db, |c| c.write_timeout_ms = 500).await;
    let read = app.read_db().await;
    let (_, a) = app.sign_up("poisoned@example.com").await;
    let (b_token, _) = app.sign_up("bystander@example.com").await;
    let poison = append_settings(&app, a["id"].as_str().unwrap(), json!({ "nonsense": 1 })).await;

    let halted = poll(
        PATIENCE,
        Duration::from_millis(50),
        || readiness(&app),
        |(s, _)| *s == 503,
    )
    .await;
    assert_eq!(halted.0, 503, "{}", halted.1);
    let message = halted.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("settings halted at position {poison}")),
        "{message}"
    );
    assert_eq!(
        dead_letters(&read).await,
        vec![(poison, "halted".to_owned())]
    );
    // It falls behind in time too, from the event it stopped on.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let metrics = app.fetch("/metrics").await.text().await.unwrap();
    let lag = gauge(&metrics, "confab_projection_lag_seconds", "settings");
    assert!(lag >= 0.05, "lag {lag}: {metrics}");
    assert!(gauge(&metrics, "confab_projection_lag", "settings") >= 1.0);
    // The other projections go on.
    app.new_chat(&b_token, "still served").await;
    // The settings projection does not: the write is recorded, its effect not yet readable.
    let (s, body) = app
        .put(
            "/api/settings",
            &b_token,
            &json!({ "settings": { "theme": "dark" } }),
        )
        .await;
    assert_eq!(s, 202, "{body}");

    let out = confab(&app, &["projections", "parked"], Some("ops"));
    assert!(out.status.success(), "{out:?}");
    let listed = stdout(&out);
    assert!(
        listed.contains("settings")
            && listed.contains("halted")
            && listed.contains("settings.updated"),
        "{listed}"
    );
    let out = confab(&app, &["projections", "status"], Some("ops"));
    assert!(
        stdout(&out).contains(&format!("HALTED at {poison}")),
        "{out:?}"
    );

    // A retry hands the event back to the runner, which fails on it again and halts again.
    let first = confab_projections::parked::list(&read, Some("settings"))
        .await
        .expect("parked");
    let out = confab(&app, &["projections", "retry", "settings"], Some("ops"));
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("halt lifted"), "{out:?}");
    let halted_again = || async {
        confab_projections::parked::list(&read, Some("settings"))
            .await
            .expect("parked")
            .iter()
            .any(|r| {
                r.position as u64 == poison
                    && r.status == "halted"
                    && r.parked_at > first[0].parked_at
            })
    };
    assert!(eventually(PATIENCE, Duration::from_millis(50), halted_again).await);

    // Skipping something that is not parked is refused.
    let out = confab(
        &app,
        &["projections", "skip", "settings", "1", "--reason", "no"],
        Some("ops"),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has not parked or halted"), "{out:?}");
    let out = confab(
        &app,
        &[
            "projections",
            "skip",
            "settings",
            &poison.to_string(),
            "--reason",
            "test poison",
        ],
        Some("alice"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        skips(&app).await,
        vec![(poison, "test poison".to_owned(), "alice".to_owned())]
    );
    let ready = poll(
        PATIENCE,
        Duration::from_millis(50),
        || readiness(&app),
        |(s, _)| *s == 200,
    )
    .await;
    assert_eq!(ready.0, 200, "{}", ready.1);
    let theme = || async {
        let (s, body) = app.get("/api/settings", Some(&b_token)).await;
        s == 200 && body["settings"]["theme"] == "dark"
    };
    assert!(eventually(PATIENCE, Duration::from_millis(50), theme).await);
    assert!(dead_letters(&read).await.is_empty());

    // A rebuild honours the skip.
    let out = confab(&app, &["projections", "rebuild", "settings"], Some("ops"));
    assert!(out.status.success(), "{out:?}");
    assert!(dead_letters(&read).await.is_empty());
    assert!(eventually(PATIENCE, Duration::from_millis(50), theme).await);
    assert_eq!(readiness(&app).await.0, 200);
    app.shutdown().await;
}

async fn a_poison_event_is_parked_and_retried_or_skipped(db: Db) {
    let app = spawn_app_with(db, |c| c.projection_on_error = "park".into()).await;
    let read = app.read_db().await;
    let (_, a) = app.sign_up("parked@example.com").await;
    let (b_token, b) = app.sign_up("later@example.com").await;
    let b_id = b["id"].as_str().unwrap().to_owned();
    let poison = append_settings(&app, a["id"].as_str().unwrap(), json!({ "nonsense": 1 })).await;
    let parked = poll(
        PATIENCE,
        Duration::from_millis(50),
        || dead_letters(&read),
        |rows| !rows.is_empty(),
    )
    .await;
    assert_eq!(parked, vec![(poison, "parked".to_owned())]);
    let ready = poll(
        PATIENCE,
        Duration::from_millis(50),
        || readiness(&app),
        |(s, _)| *s == 200,
    )
    .await;
    assert_eq!(ready.0, 200, "parking goes on: {}", ready.1);
    let metrics = app.fetch("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("confab_projection_parked{projection=\"settings\"} 1\n"),
        "{metrics}"
    );

    // An event that fails because of the read model's database, not its payload: parked too,
    // and applied by a retry once the cause is gone.
    exec(&read, "ALTER TABLE settings RENAME TO settings_away").await;
    let good = append_settings(
        &app,
        &b_id,
        json!({ "userId": b_id, "change": { "theme": "dark" }, "at": chrono::Utc::now() }),
    )
    .await;
    let parked = poll(
        PATIENCE,
        Duration::from_millis(50),
        || dead_letters(&read),
        |rows| rows.len() == 2,
    )
    .await;
    assert_eq!(
        parked,
        vec![(poison, "parked".to_owned()), (good, "parked".to_owned())]
    );
    let out = confab(
        &app,
        &["projections", "retry", "settings", &good.to_string()],
        Some("ops"),
    );
    assert!(!out.status.success(), "the cause is still there: {out:?}");
    assert!(stdout(&out).contains("failed again"), "{out:?}");
    exec(&read, "ALTER TABLE settings_away RENAME TO settings").await;
    let out = confab(
        &app,
        &["projections", "retry", "settings", &good.to_string()],
        Some("ops"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains(&format!("{good}: applied")),
        "{out:?}"
    );
    let (s, body) = app.get("/api/settings", Some(&b_token)).await;
    assert_eq!(
        (s, &body["settings"]["theme"]),
        (200, &json!("dark")),
        "{body}"
    );

    // The poison one fails again, and is skipped on the record.
    let out = confab(&app, &["projections", "retry", "settings"], Some("ops"));
    assert!(!out.status.success());
    assert_eq!(
        dead_letters(&read).await,
        vec![(poison, "parked".to_owned())]
    );
    let out = confab(
        &app,
        &[
            "projections",
            "skip",
            "settings",
            &poison.to_string(),
            "--reason",
            "bad payload",
        ],
        Some("bob"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(dead_letters(&read).await.is_empty());
    assert_eq!(
        skips(&app).await,
        vec![(poison, "bad payload".to_owned(), "bob".to_owned())]
    );
    let out = confab(&app, &["projections", "retry", "settings"], Some("ops"));
    assert!(!out.status.success(), "nothing left to retry");
    assert_eq!(readiness(&app).await.0, 200);
    app.shutdown().await;
}

/// The value of the gauge `name` of `projection` in a Prometheus text.
fn gauge(metrics: &str, name: &str, projection: &str) -> f64 {
    let prefix = format!("{name}{{projection=\"{projection}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .parse()
        .expect("a number")
}

/// `/metrics` shows request latency per route group, each projection's apply latency, lag and
/// parked count, and each job queue's depth and job latency.
async fn metrics_show_request_projection_and_job_latency_and_queue_depth(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(
        &["measured"],
        (10, 20),
        Duration::from_millis(1),
    ));
    let app = spawn_app_with(db, |c| {
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
    })
    .await;
    let (token, _) = app.sign_up("metrics@example.com").await;
    app.new_chat(&token, "measured").await;
    assert_eq!(chat(&app, &token, "a question").await, 200);
    let job = "confab_job_duration_seconds_bucket{queue=\"generate_reply\",outcome=\"ok\"";
    let metrics = poll(
        PATIENCE,
        Duration::from_millis(50),
        || async { app.fetch("/metrics").await.text().await.unwrap() },
        |text| text.contains(job),
    )
    .await;
    assert!(metrics.contains(job), "{metrics}");
    for needle in [
        "# TYPE confab_http_request_duration_seconds histogram",
        "confab_http_request_duration_seconds_bucket{group=\"/api/chats\",method=\"POST\",status=\"2xx\",le=\"0.005\"}",
        "confab_http_request_duration_seconds_bucket{group=\"/api/auth\",method=\"POST\",status=\"2xx\"",
        "# TYPE confab_projection_apply_seconds histogram",
        "confab_projection_apply_seconds_bucket{projection=\"chats\"",
        "confab_projection_events_applied_total{projection=\"chats\"}",
        "# TYPE confab_job_duration_seconds histogram",
        "confab_job_queue_depth{queue=\"generate_reply\"} ",
    ] {
        assert!(metrics.contains(needle), "no {needle} in {metrics}");
    }
    // This app's projections are caught up: no lag, nothing parked.
    for projection in ["chats", "credits", "settings"] {
        assert_eq!(gauge(&metrics, "confab_projection_parked", projection), 0.0);
        let lag = gauge(&metrics, "confab_projection_lag", projection);
        let seconds = gauge(&metrics, "confab_projection_lag_seconds", projection);
        assert!(lag > 0.0 || seconds == 0.0, "{projection}: {lag} {seconds}");
    }
    app.shutdown().await;
}
