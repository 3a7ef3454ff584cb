//! Privacy (issue 16), on SQLite and PostgreSQL: erasure by crypto-shredding (`DELETE /api/me`
//! and `confab users erase`) leaves none of the user's unique strings in the database files (with
//! their write-ahead log), in a `pg_dump`, in the object store or in any event payload, while
//! other users' data stays; replay and audit stay clean; master key rotation keeps everyone
//! else's data readable; the export holds exactly the caller's data.

use crate::helpers::{
    Db, PASSWORD, TestApp, assert_error, confab_command, on_both, parts, png, poll, spawn_app_on,
    spawn_app_with,
};
use confab::Config;
use confab_testkit::openai::OpenAiStandIn;
use confab_testkit::stripe::{WEBHOOK_SECRET, signature};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

on_both!(
    deleting_my_account_leaves_no_trace_of_me_and_keeps_everyone_else,
    deleting_my_account_needs_my_password,
    an_operator_erases_a_user_and_gets_a_receipt,
    key_rotation_keeps_every_other_users_data_readable,
    the_export_holds_exactly_the_callers_data,
    what_was_restored_is_erased_with_its_owner,
);

/// The app with the stand-in as the embeddings provider, so documents get ready, and Stripe
/// webhooks accepted.
async fn app(db: Db, up: &OpenAiStandIn) -> TestApp {
    spawn_app_with(db, |c: &mut Config| {
        c.stripe_webhook_secret = Some(WEBHOOK_SECRET.to_owned().into());
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.chunk_tokens = 60;
        c.chunk_overlap = 0;
    })
    .await
}

/// Strings that exist only in one user's data, lower case (the search index folds case).
struct Marks {
    email: String,
    name: String,
    title: String,
    message: String,
    context: String,
    doc_word: String,
    filename: String,
    /// In a Stripe event about the user.
    street: String,
}

impl Marks {
    fn new(who: &str) -> Self {
        let u = uuid::Uuid::now_v7().simple().to_string();
        let tag = format!("{who}{}", &u[u.len() - 10..]);
        Marks {
            email: format!("{tag}@example.com"),
            name: format!("{tag}name"),
            title: format!("{tag}title"),
            message: format!("{tag}message"),
            context: format!("{tag}context"),
            doc_word: format!("{tag}docword"),
            street: format!("{tag}street"),
            filename: format!("{tag}file.txt"),
        }
    }

    fn all(&self) -> [&str; 8] {
        [
            &self.email,
            &self.name,
            &self.title,
            &self.message,
            &self.context,
            &self.doc_word,
            &self.filename,
            &self.street,
        ]
    }
}

/// What a user made: (token, user id, chat id, document id).
struct Made {
    token: String,
    id: String,
    chat: String,
    doc: String,
}

/// Signs `m`'s user up and gives them a chat with messages (one through an Idempotency-Key),
/// settings, a profile image and a processed document.
/// Delivers a signed Stripe `customer.updated` about `user` (named in its metadata), holding
/// their email and street.
async fn stripe_event_about(app: &TestApp, user: &str, email: &str, street: &str) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let body = json!({
        "id": format!("evt_{id}"), "object": "event", "type": "customer.updated",
        "created": chrono::Utc::now().timestamp(), "livemode": false,
        "data": { "object": {
            "id": format!("cus_{id}"), "object": "customer", "email": email,
            "address": { "line1": street }, "metadata": { "user_id": user },
        } },
    })
    .to_string();
    let (s, v) = parts(
        app.request(Method::POST, "/api/webhooks/stripe", None)
            .header("content-type", "application/json")
            .header("stripe-signature", signature(&body))
            .body(body)
            .send()
            .await
            .expect("webhook"),
    )
    .await;
    assert_eq!((s, v), (200, json!({"received": true})));
}

async fn make_user(app: &TestApp, m: &Marks) -> Made {
    let (s, body) = app
        .try_sign_up(&json!({"email": m.email, "password": PASSWORD, "name": m.name}))
        .await;
    assert_eq!(s, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let id = body["user"]["id"].as_str().expect("id").to_owned();
    let chat = app.new_chat(&token, &m.title).await;
    app.send_message(&token, &chat, &format!("hello {} there", m.message), "text")
        .await;
    let r = app
        .request(
            Method::POST,
            &format!("/api/chats/{chat}/messages"),
            Some(&token),
        )
        .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
        .json(&json!({"content": format!("again {}", m.message), "type": "text"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let (s, body) = app
        .put(
            "/api/settings",
            &token,
            &json!({"settings": {"context": m.context}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let form = Form::new().part(
        "image",
        Part::bytes(png(4, 4))
            .file_name("me.png")
            .mime_str("image/png")
            .expect("mime"),
    );
    let (s, body) = parts(
        app.request(Method::POST, "/api/profile/image", Some(&token))
            .multipart(form)
            .send()
            .await
            .expect("image"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let text = format!("# Notes\n\nThe {} is here, with more words.\n", m.doc_word);
    let form = Form::new().part(
        "file",
        Part::bytes(text.into_bytes())
            .file_name(m.filename.clone())
            .mime_str("text/plain")
            .expect("mime"),
    );
    let (s, body) = parts(
        app.request(Method::POST, "/api/upload", Some(&token))
            .multipart(form)
            .send()
            .await
            .expect("upload"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let doc = body["documentId"].as_str().expect("documentId").to_owned();
    let path = format!("/api/documents/{doc}");
    let (s, got) = poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || app.get(&path, Some(&token)),
        |(s, d)| *s != 200 || d["status"] == "ready",
    )
    .await;
    assert_eq!((s, &got["status"]), (200, &json!("ready")), "{got}");
    stripe_event_about(app, &id, &m.email, &m.street).await;
    Made {
        token,
        id,
        chat,
        doc,
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Everything the deployment stores, as bytes per place: every file of the data directory
/// (the SQLite database with its WAL, the job queues, the object store) and, on PostgreSQL,
/// a `pg_dump` of its database.
fn stored(app_dir: &Path, database_url: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = files(app_dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_default();
            // A file's name is stored data too.
            let mut all = p.display().to_string().into_bytes();
            all.extend(bytes);
            (p.display().to_string(), all)
        })
        .collect();
    if let Some(url) = database_url {
        // The test server is shared with every other test: retry while it is full.
        let mut tries = 0;
        let dump = loop {
            let dump = std::process::Command::new("pg_dump")
                .arg("--no-owner")
                .arg(url)
                .output()
                .expect("run pg_dump");
            tries += 1;
            if dump.status.success()
                || tries == 40
                || !String::from_utf8_lossy(&dump.stderr).contains("too many clients")
            {
                break dump;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        out.push(("pg_dump".into(), dump.stdout));
    }
    out
}

/// Asserts that none of `gone` appears anywhere stored and each of `kept` does.
fn assert_stored(app: &TestApp, gone: &Marks, kept: &Marks) {
    let places = stored(&app.data_dir, app.database_url.as_deref());
    for s in gone.all() {
        for (place, bytes) in &places {
            assert!(!contains(bytes, s), "{s} is still in {place}");
        }
    }
    // The scan sees what it looks for: the other user's strings are found.
    for s in [&kept.message, &kept.title, &kept.doc_word] {
        assert!(
            places.iter().any(|(_, b)| contains(b, s)),
            "{s} (kept) is nowhere: the scan is blind"
        );
    }
}

/// Every event payload, read through the app's store (sealed fields opened) and straight
/// from the database (as stored).
async fn payloads(app: &TestApp) -> (String, String) {
    let opened = app.svc.store.read_all(0, 100_000).await.expect("read");
    let raw = app.store().await.read_all(0, 100_000).await.expect("read");
    let text = |events: Vec<confab_eventstore::RecordedEvent>| {
        events
            .into_iter()
            .map(|e| e.payload.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    (text(opened), text(raw))
}

fn confab(app_dir: &Path, database_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = confab_command();
    cmd.arg("--data-dir").arg(app_dir).args(args);
    if let Some(url) = database_url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    cmd.output().expect("run confab")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn deleting_my_account_leaves_no_trace_of_me_and_keeps_everyone_else(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up).await;
    let (ann_m, bob_m) = (Marks::new("ann"), Marks::new("bob"));
    let ann = make_user(&app, &ann_m).await;
    let bob = make_user(&app, &bob_m).await;
    let (opened, raw) = payloads(&app).await;
    assert!(opened.contains(&ann_m.message), "the log opens for reads");
    for s in ann_m.all().into_iter().chain(bob_m.all()) {
        assert!(!raw.contains(s), "{s} is stored in clear in the log");
    }

    let r = app
        .request(Method::DELETE, "/api/me", Some(&ann.token))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);

    // Ann is gone: her token, her chats and documents; Bob is untouched.
    let (s, _) = app.get("/api/me", Some(&ann.token)).await;
    assert_eq!(s, 401);
    let (s, _) = app.try_sign_in(&ann_m.email, PASSWORD).await;
    assert_eq!(s, 401);
    for path in [
        format!("/api/chats/{}", ann.chat),
        format!("/api/chats/{}/messages", ann.chat),
        format!("/api/documents/{}", ann.doc),
    ] {
        let (s, body) = app.get(&path, Some(&bob.token)).await;
        assert_eq!(s, 404, "{path}: {body}");
    }
    let (s, msgs) = app
        .get(
            &format!("/api/chats/{}/messages", bob.chat),
            Some(&bob.token),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(msgs["total"], 2, "{msgs}");
    let (s, doc) = app
        .get(&format!("/api/documents/{}", bob.doc), Some(&bob.token))
        .await;
    assert_eq!((s, &doc["status"]), (200, &json!("ready")), "{doc}");
    let (s, set) = app.get("/api/settings", Some(&bob.token)).await;
    assert_eq!(
        (s, &set["settings"]["context"]),
        (200, &json!(bob_m.context))
    );
    let (s, found) = app
        .get(
            &format!("/api/messages/search?q={}", bob_m.message),
            Some(&bob.token),
        )
        .await;
    assert_eq!((s, &found["total"]), (200, &json!(2)), "{found}");

    // Stripe still writes about her: only the event's ids are recorded.
    stripe_event_about(&app, &ann.id, &ann_m.email, &ann_m.street).await;

    // Nowhere: not in any event payload (opened or as stored), not in the files, the WAL, a
    // pg_dump or the object store.
    let (opened, raw) = payloads(&app).await;
    assert!(
        opened.contains(&bob_m.street),
        "Bob's Stripe event still opens"
    );
    for s in ann_m.all() {
        assert!(!opened.contains(s), "{s} reads from the log");
        assert!(!raw.contains(s), "{s} is stored in the log");
    }
    assert!(opened.contains("[erased]"));
    assert!(opened.contains(&bob_m.message), "Bob's messages still open");
    assert!(
        !files(&app.data_dir.join("objects"))
            .iter()
            .any(|p| p.display().to_string().contains(&ann.id)),
        "Ann's objects are deleted"
    );
    assert_stored(&app, &ann_m, &bob_m);

    // Replay and audit are clean, and the rebuilt read models hold nothing of Ann's.
    let (dir, url) = (app.data_dir.clone(), app.database_url.clone());
    let kept = app.stop().await;
    let out = confab(&dir, url.as_deref(), &["projections", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = confab(&dir, url.as_deref(), &["audit"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("audit clean"));
    let again = spawn_app_on(url.clone(), |c| {
        c.data_dir = dir.clone();
        c.openai_base_url = Some(up.base_url().to_owned());
    })
    .await;
    let (s, msgs) = again
        .get(
            &format!("/api/chats/{}/messages", bob.chat),
            Some(&bob.token),
        )
        .await;
    assert_eq!((s, &msgs["total"]), (200, &json!(2)), "{msgs}");
    for (place, bytes) in stored(&dir, url.as_deref()) {
        for s in ann_m.all() {
            assert!(!contains(&bytes, s), "{s} is in {place} after the rebuild");
        }
    }

    // The address is free again; the new account sees nothing of the old one.
    let (s, body) = again
        .try_sign_up(&json!({"email": ann_m.email, "password": PASSWORD, "name": "New"}))
        .await;
    assert_eq!(s, 201, "{body}");
    let token = body["token"].as_str().expect("token");
    let (s, chats) = again.get("/api/chats", Some(token)).await;
    assert_eq!(s, 200);
    assert_eq!(chats["chats"].as_array().map(Vec::len), Some(0), "{chats}");
    let (s, _) = again
        .get(&format!("/api/chats/{}", ann.chat), Some(token))
        .await;
    assert_eq!(s, 404);
    again.shutdown().await;
    drop(kept);
}

async fn deleting_my_account_needs_my_password(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let (token, _) = app.sign_up("keep-me@example.com").await;
    let (s, body) = parts(
        app.request(Method::DELETE, "/api/me", Some(&token))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_error(&body, "validation_error");
    assert!(body["error"]["details"]["password"].is_string(), "{body}");
    let (s, body) = app
        .send(Method::DELETE, "/api/me", Some(&token), &json!({}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_error(&body, "validation_error");
    let (s, body) = app
        .send(
            Method::DELETE,
            "/api/me",
            Some(&token),
            &json!({"password": "not my password"}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_error(&body, "forbidden");
    let (s, _) = app
        .send(
            Method::DELETE,
            "/api/me",
            None,
            &json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(app.me(&token).await["email"], "keep-me@example.com");
    app.shutdown().await;
}

async fn an_operator_erases_a_user_and_gets_a_receipt(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let (token, user, chat) = app.sign_up_with_chat("gone@example.com", "Gone").await;
    app.send_message(&token, &chat, "one", "text").await;
    app.send_message(&token, &chat, "two", "text").await;
    let id = user["id"].as_str().expect("id");
    let url = app.database_url.clone();

    let out = confab(
        &app.data_dir,
        url.as_deref(),
        &["users", "erase", id, "--reason", "ticket 42"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains(&format!("user {id} erased")), "{stdout}");
    let row = |table: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    assert_eq!(row("chats").as_deref(), Some("1"), "{stdout}");
    assert_eq!(row("messages").as_deref(), Some("2"), "{stdout}");
    assert_eq!(row("users").as_deref(), Some("1"), "{stdout}");

    // The receipt is recorded in the log, without personal data (the server notices another
    // process's appends within a second).
    let events = poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { app.store().await.read_all(0, 10_000).await.expect("read") },
        |events| events.iter().any(|e| e.event_type == "account.user_erased"),
    )
    .await;
    let erased = events
        .iter()
        .find(|e| e.event_type == "account.user_erased")
        .expect("recorded");
    assert_eq!(erased.payload["reason"], "ticket 42");
    assert_eq!(erased.payload["by"], "operator");
    assert_eq!(erased.payload["receipt"]["rows"]["messages"], 2);
    assert!(!erased.payload.to_string().contains("gone@example.com"));

    // The running server sees it: the session ends, the chat is gone.
    let gone = poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || app.get("/api/me", Some(&token)),
        |(s, _)| *s == 401,
    )
    .await;
    assert_eq!(gone.0, 401);
    let (other, _) = app.sign_up("other@example.com").await;
    let (s, _) = app.get(&format!("/api/chats/{chat}"), Some(&other)).await;
    assert_eq!(s, 404);

    // Twice, or a user who never was: refused, naming the user.
    let out = confab(
        &app.data_dir,
        url.as_deref(),
        &["users", "erase", id, "--reason", "again"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(id), "{}", text(&out.stderr));
    app.shutdown().await;
}

/// A chat deleted and restored (time travel), and an edited message deleted and restored, are
/// recorded again by compensating events: those are sealed too, and erased with their owner.
async fn what_was_restored_is_erased_with_its_owner(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up).await;
    let m = Marks::new("cat");
    let (s, body) = app
        .try_sign_up(&json!({"email": m.email, "password": PASSWORD, "name": m.name}))
        .await;
    assert_eq!(s, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let chat = app.new_chat(&token, &m.title).await;
    let sent = app
        .send_message(&token, &chat, &format!("first {}", m.message), "text")
        .await;
    let message = sent["id"].as_str().expect("id").to_owned();
    let path = format!("/api/chats/{chat}/messages/{message}");
    let (s, body) = app
        .put(
            &path,
            &token,
            &json!({"content": format!("edited {}", m.context)}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(app.delete(&path, &token).await, 204);
    let (s, body) = app
        .post(&format!("{path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &token).await, 204);
    let (s, body) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (opened, raw) = payloads(&app).await;
    assert!(opened.contains(&m.title), "the restored chat opens");
    for s in [&m.title, &m.message, &m.context] {
        assert!(
            !raw.contains(s.as_str()),
            "{s} is stored in clear in the log"
        );
    }

    let r = app
        .request(Method::DELETE, "/api/me", Some(&token))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let (opened, raw) = payloads(&app).await;
    for s in [&m.title, &m.message, &m.context, &m.email, &m.name] {
        assert!(!opened.contains(s.as_str()), "{s} reads from the log");
        assert!(!raw.contains(s.as_str()), "{s} is stored in the log");
    }
    let places = stored(&app.data_dir, app.database_url.as_deref());
    for s in [&m.title, &m.message, &m.context] {
        for (place, bytes) in &places {
            assert!(!contains(bytes, s), "{s} is still in {place}");
        }
    }
    app.shutdown().await;
}

async fn key_rotation_keeps_every_other_users_data_readable(db: Db) {
    const NEW_KEY: &str = "bmV3LW1hc3Rlci1rZXktbmV3LW1hc3Rlci1rZXktMzI=";
    const BOB_KEY: &str = "sk-bob-own-provider-key-0042";
    let up = OpenAiStandIn::start().await;
    let app = spawn_app_with(db, |c: &mut Config| {
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        crate::helpers::with_admin(c);
    })
    .await;
    let (ann, ann_user, _) = app.sign_up_with_chat("ann@example.com", "Ann").await;
    let (bob, bob_user, bob_chat) = app.sign_up_with_chat("bob@example.com", "Bob").await;
    app.send_message(&bob, &bob_chat, "bob keeps this", "text")
        .await;
    // Bob's own provider key, sealed under the master key itself.
    let admin = app.sign_in_admin().await;
    let (s, provider) = app.add_provider(&admin, "OpenAI", up.base_url()).await;
    assert_eq!(s, 201, "{provider}");
    let (s, cfg) = app
        .add_user_key(&bob, &bob_user["id"], &provider["id"], BOB_KEY)
        .await;
    assert_eq!(s, 201, "{cfg}");
    let ids = |v: &Value| v.as_str().expect("id").parse::<uuid::Uuid>().expect("uuid");
    let scope = confab_application::providers::KeyScope {
        user: ids(&bob_user["id"]),
        provider: ids(&provider["id"]),
    };
    let read = app.read_db().await;
    let r = app
        .request(Method::DELETE, "/api/me", Some(&ann))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let _ = ann_user;
    let (dir, url) = (app.data_dir.clone(), app.database_url.clone());
    let kept = app.stop().await;
    let with_keys = |current: &str, previous: Option<&str>, args: &[&str]| {
        let mut cmd = confab_command();
        cmd.arg("--data-dir").arg(&dir).args(args);
        cmd.env("CONFAB_ENCRYPTION_KEY", current);
        if let Some(p) = previous {
            cmd.env("CONFAB_ENCRYPTION_KEY_PREVIOUS", p);
        }
        if let Some(u) = &url {
            cmd.env("CONFAB_DATABASE_URL", u);
        }
        cmd.output().expect("run confab")
    };
    let show = ["events", "show", &format!("chat-{bob_chat}")];
    // The new key alone cannot read the data keys yet.
    let out = with_keys(NEW_KEY, None, &show);
    assert!(!out.status.success(), "{}", text(&out.stdout));

    let out = with_keys(
        NEW_KEY,
        Some(crate::helpers::TEST_ENCRYPTION_KEY),
        &["keys", "rotate"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("data key(s) rewrapped"), "{stdout}");
    assert!(stdout.contains("1 destroyed"), "{stdout}");
    assert!(stdout.contains("1 provider key(s) resealed"), "{stdout}");

    // Bob's provider key is resealed: it opens under the new master key alone, not the old.
    let sealed = confab_projections::providers::get_user_config(&read, scope.user, scope.provider)
        .await
        .expect("read")
        .expect("Bob's key")
        .encrypted_key;
    let master = |b64: &str| -> [u8; 32] {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
            .try_into()
            .expect("32 bytes")
    };
    let new_cipher = confab_application::providers::KeyCipher::new(&master(NEW_KEY));
    assert_eq!(new_cipher.decrypt(&sealed, scope).expect("opens"), BOB_KEY);
    let old_cipher =
        confab_application::providers::KeyCipher::new(&master(crate::helpers::TEST_ENCRYPTION_KEY));
    assert!(old_cipher.decrypt(&sealed, scope).is_err());
    // Twice: nothing left to reseal.
    let out = with_keys(NEW_KEY, None, &["keys", "rotate"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("0 provider key(s) resealed"), "{stdout}");

    // Now the new key alone reads Bob's data; the old one no longer does.
    let out = with_keys(NEW_KEY, None, &show);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("bob keeps this"),
        "{}",
        text(&out.stdout)
    );
    let out = with_keys(crate::helpers::TEST_ENCRYPTION_KEY, None, &show);
    assert!(!out.status.success());
    let out = with_keys(NEW_KEY, None, &["projections", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(kept);
}

async fn the_export_holds_exactly_the_callers_data(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up).await;
    let (ann_m, bob_m) = (Marks::new("ann"), Marks::new("bob"));
    let ann = make_user(&app, &ann_m).await;
    let bob = make_user(&app, &bob_m).await;
    let second = app.new_chat(&ann.token, "second chat").await;

    let r = app
        .request(Method::GET, "/api/me/export", Some(&ann.token))
        .send()
        .await
        .expect("export");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.text().await.expect("body");
    let export: Value = serde_json::from_str(&body).expect("the export is one JSON document");
    for s in bob_m.all() {
        assert!(!body.contains(s), "Bob's {s} is in Ann's export");
    }
    assert!(!body.contains(&bob.id) && !body.contains(&bob.chat) && !body.contains(&bob.doc));
    assert!(
        !body.contains("passwordHash") && !body.contains("argon2"),
        "no credentials"
    );

    assert_eq!(export["user"]["id"], ann.id.as_str());
    assert_eq!(export["user"]["email"], ann_m.email.as_str());
    assert_eq!(export["user"]["name"], ann_m.name.as_str());
    assert_eq!(export["settings"]["context"], ann_m.context.as_str());
    let chats = export["chats"].as_array().expect("chats");
    assert_eq!(chats.len(), 2, "{export}");
    assert_eq!(chats[0]["id"], second.as_str(), "most recent first");
    assert_eq!(chats[0]["messages"], json!([]));
    assert_eq!(chats[1]["id"], ann.chat.as_str());
    assert_eq!(chats[1]["title"], ann_m.title.as_str());
    let contents: Vec<&str> = chats[1]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        [
            format!("hello {} there", ann_m.message),
            format!("again {}", ann_m.message)
        ]
    );
    let docs = export["documents"].as_array().expect("documents");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["id"], ann.doc.as_str());
    assert_eq!(docs[0]["filename"], ann_m.filename.as_str());
    assert!(
        !body.contains(&ann_m.doc_word),
        "metadata only, not the text"
    );
    let history = export["creditHistory"].as_array().expect("history");
    assert!(!history.is_empty(), "the starting grant at least");
    let sum: i64 = history.iter().filter_map(|t| t["amount"].as_i64()).sum();
    assert_eq!(sum, export["user"]["credits"].as_i64().expect("credits"));
    assert_eq!(export["invoices"], json!([]));

    let (s, _) = app.get("/api/me/export", None).await;
    assert_eq!(s, 401);
    app.shutdown().await;
}
