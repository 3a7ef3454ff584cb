//! Time travel on SQLite and PostgreSQL: a chat and its messages as they were at a past time
//! (`?asOf`), a message's versions, and undoing deletions within `CONFAB_RESTORE_WINDOW_DAYS`
//! through compensating events that reach the read models, search and realtime.

use crate::helpers::{
    Db, TestApp, assert_error, error_message, on_both, spawn_app, spawn_app_with,
};
use crate::realtime::Sse;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use confab_domain::chat::{Chat, ChatCommand};
use confab_eventstore::EventMetadata;
use serde_json::{Value, json};
use uuid::Uuid;

on_both!(
    as_of_shows_the_chat_and_its_messages_as_they_were,
    history_lists_every_version_of_a_message,
    a_restored_message_is_back_in_reads_search_and_realtime,
    a_restored_chat_comes_back_with_the_messages_it_had,
    restoring_past_the_window_or_what_is_not_deleted_is_refused,
    another_users_chat_reads_as_missing_in_the_past_too,
    a_malformed_as_of_is_a_400,
);

/// `t` as an RFC 3339 query value.
fn q(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The time field `field` of `body`.
fn time(body: &Value, field: &str) -> DateTime<Utc> {
    body[field]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("{field} in {body}"))
        .with_timezone(&Utc)
}

/// The contents of a page of messages, in order.
fn contents(page: &Value) -> Vec<&str> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}

async fn edit(app: &TestApp, token: &str, chat: &str, message: &str, content: &str) -> Value {
    let (status, body) = app
        .put(
            &format!("/api/chats/{chat}/messages/{message}"),
            token,
            &json!({ "content": content }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn as_of_shows_the_chat_and_its_messages_as_they_were(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("ann@example.com").await;
    let (status, created) = app
        .post("/api/chats", Some(&token), &json!({ "title": "Draft" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let chat = created["id"].as_str().expect("id").to_owned();
    let born = time(&created, "createdAt");
    let first = app.send_message(&token, &chat, "first draft", "text").await;
    let first_id = first["id"].as_str().expect("id");
    let second = app.send_message(&token, &chat, "second line", "code").await;
    let before_edit = time(&second, "createdAt");
    let edited = edit(&app, &token, &chat, first_id, "final wording").await;
    let after_edit = time(&edited, "updatedAt");
    let (status, _) = app
        .put(
            &format!("/api/chats/{chat}"),
            &token,
            &json!({ "title": "Final" }),
        )
        .await;
    assert_eq!(status, 200);

    // Now: the edit and the new title.
    let (_, now) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(&token))
        .await;
    assert_eq!(contents(&now), ["final wording", "second line"]);

    // Before the edit: the first content, the first title, the same shapes.
    let (status, then) = app
        .get(
            &format!("/api/chats/{chat}/messages?asOf={}", q(before_edit)),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(contents(&then), ["first draft", "second line"]);
    assert_eq!(
        (then["total"].as_u64(), then["page"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(then["messages"][0]["id"], first_id);
    assert_eq!(then["messages"][0]["chatId"], chat.as_str());
    assert_eq!(then["messages"][0]["role"], "user");
    assert_eq!(then["messages"][1]["type"], "code");
    assert_eq!(then["messages"][0]["createdAt"], first["createdAt"]);
    let (status, old_chat) = app
        .get(
            &format!("/api/chats/{chat}?asOf={}", q(before_edit)),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{old_chat}");
    assert_eq!(old_chat["title"], "Draft");
    assert_eq!(old_chat["id"], chat.as_str());
    assert_eq!(old_chat["createdAt"], created["createdAt"]);

    // At the edit's own time, the edit is there; filters and pages apply to the past too.
    let (_, at_edit) = app
        .get(
            &format!("/api/chats/{chat}/messages?asOf={}", q(after_edit)),
            Some(&token),
        )
        .await;
    assert_eq!(contents(&at_edit), ["final wording", "second line"]);
    let (_, paged) = app
        .get(
            &format!(
                "/api/chats/{chat}/messages?asOf={}&page=2&limit=1",
                q(before_edit)
            ),
            Some(&token),
        )
        .await;
    assert_eq!(contents(&paged), ["second line"]);
    assert_eq!(
        (paged["total"].as_u64(), paged["limit"].as_u64()),
        (Some(2), Some(1))
    );
    let (_, by_type) = app
        .get(
            &format!(
                "/api/chats/{chat}/messages?asOf={}&type=text",
                q(before_edit)
            ),
            Some(&token),
        )
        .await;
    assert_eq!(contents(&by_type), ["first draft"]);
    let (_, searched) = app
        .get(
            &format!(
                "/api/chats/{chat}/messages?asOf={}&search=DRAFT",
                q(before_edit)
            ),
            Some(&token),
        )
        .await;
    assert_eq!(contents(&searched), ["first draft"]);

    // Right at creation the chat is there and empty; before it, it did not exist.
    let (status, empty) = app
        .get(
            &format!("/api/chats/{chat}/messages?asOf={}", q(born)),
            Some(&token),
        )
        .await;
    assert_eq!((status, empty["total"].as_u64()), (200, Some(0)), "{empty}");
    for path in [
        format!("/api/chats/{chat}?asOf={}", q(born - Duration::seconds(1))),
        format!(
            "/api/chats/{chat}/messages?asOf={}",
            q(born - Duration::seconds(1))
        ),
    ] {
        let (status, body) = app.get(&path, Some(&token)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_error(&body, "not_found");
    }

    // A deleted chat still has its past, and is missing from its deletion on.
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &token).await, 204);
    let (status, past) = app
        .get(
            &format!("/api/chats/{chat}/messages?asOf={}", q(after_edit)),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{past}");
    assert_eq!(contents(&past), ["final wording", "second line"]);
    let (status, _) = app
        .get(
            &format!("/api/chats/{chat}?asOf={}", q(Utc::now())),
            Some(&token),
        )
        .await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

async fn history_lists_every_version_of_a_message(db: Db) {
    let app = spawn_app(db).await;
    let (token, _, chat) = app.sign_up_with_chat("ann@example.com", "Notes").await;
    let sent = app.send_message(&token, &chat, "one", "text").await;
    let id = sent["id"].as_str().expect("id").to_owned();
    let other = app.send_message(&token, &chat, "unrelated", "text").await;
    edit(&app, &token, &chat, &id, "two").await;
    edit(
        &app,
        &token,
        &chat,
        other["id"].as_str().expect("id"),
        "still unrelated",
    )
    .await;
    edit(&app, &token, &chat, &id, "three").await;
    let path = format!("/api/chats/{chat}/messages/{id}");
    assert_eq!(app.delete(&path, &token).await, 204);
    let (status, restored) = app
        .post(&format!("{path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 200, "{restored}");

    let (status, history) = app.get(&format!("{path}/history"), Some(&token)).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messageId"], id.as_str());
    let versions = history["versions"].as_array().expect("versions");
    let summary: Vec<(u64, &str, Option<&str>, bool)> = versions
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().expect("version"),
                v["kind"].as_str().expect("kind"),
                v["content"].as_str(),
                v["deleted"].as_bool().expect("deleted"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "created", Some("one"), false),
            (2, "edited", Some("two"), false),
            (3, "edited", Some("three"), false),
            (4, "deleted", None, true),
            (5, "restored", Some("three"), false),
        ]
    );
    assert!(versions[3].get("content").is_none(), "{}", versions[3]);
    assert_eq!(versions[0]["type"], "text");
    assert_eq!(versions[0]["at"], sent["createdAt"]);
    let times: Vec<DateTime<Utc>> = versions.iter().map(|v| time(v, "at")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // A chat's deletion takes its messages with it, and shows in their history.
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &token).await, 204);
    let (status, history) = app.get(&format!("{path}/history"), Some(&token)).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["versions"][5]["kind"], "deleted");

    // A message that is not in this chat has no history here.
    let (status, body) = app
        .get(
            &format!("/api/chats/{chat}/messages/{}/history", Uuid::now_v7()),
            Some(&token),
        )
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    app.shutdown().await;
}

async fn a_restored_message_is_back_in_reads_search_and_realtime(db: Db) {
    let app = spawn_app(db).await;
    let (token, _, chat) = app.sign_up_with_chat("ann@example.com", "Recipes").await;
    let kept = app
        .send_message(&token, &chat, "bread needs flour", "text")
        .await;
    let sent = app
        .send_message(&token, &chat, "Crème brûlée needs caramel", "text")
        .await;
    let id = sent["id"].as_str().expect("id").to_owned();
    let edited = edit(&app, &token, &chat, &id, "Crème brûlée needs sugar").await;
    let path = format!("/api/chats/{chat}/messages/{id}");
    assert_eq!(app.delete(&path, &token).await, 204);
    let (_, found) = app.get("/api/messages/search?q=brulee", Some(&token)).await;
    assert_eq!(found["total"], 0, "{found}");

    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    let (status, restored) = app
        .post(&format!("{path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["id"], id.as_str());
    assert_eq!(restored["content"], "Crème brûlée needs sugar");
    assert_eq!(restored["createdAt"], sent["createdAt"]);
    assert_eq!(restored["updatedAt"], edited["updatedAt"]);

    // Read-your-writes: the list, in its place by time, and search.
    let (_, page) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(&token))
        .await;
    assert_eq!(
        contents(&page),
        ["bread needs flour", "Crème brûlée needs sugar"]
    );
    assert_eq!(page["messages"][0]["id"], kept["id"]);
    let (_, found) = app
        .get("/api/messages/search?q=BRULEE sugar", Some(&token))
        .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["messages"][0]["id"], id.as_str());
    let (_, found) = app
        .get(
            &format!("/api/chats/{chat}/messages?search=caramel"),
            Some(&token),
        )
        .await;
    assert_eq!(
        found["total"], 0,
        "the restored message is indexed as it was last: {found}"
    );

    // Realtime: the message is sent again, with seed 000's shape.
    let event = sse.event().await;
    assert_eq!(event.event.as_deref(), Some("message:sent"), "{event:?}");
    let data = event.json();
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["content"], "Crème brûlée needs sugar");
    assert_eq!(data["createdAt"], sent["createdAt"]);

    // It can be edited and deleted again like any message.
    edit(&app, &token, &chat, &id, "Crème brûlée, revised").await;
    assert_eq!(app.delete(&path, &token).await, 204);
    app.shutdown().await;
}

async fn a_restored_chat_comes_back_with_the_messages_it_had(db: Db) {
    let app = spawn_app(db).await;
    let (token, _, chat) = app.sign_up_with_chat("ann@example.com", "Garden").await;
    let other = app.new_chat(&token, "Other").await;
    app.send_message(&token, &chat, "plant tomatoes", "text")
        .await;
    let gone = app.send_message(&token, &chat, "water basil", "text").await;
    app.send_message(&token, &chat, "prune roses", "code").await;
    let gone_path = format!(
        "/api/chats/{chat}/messages/{}",
        gone["id"].as_str().expect("id")
    );
    assert_eq!(app.delete(&gone_path, &token).await, 204);
    let (_, before) = app.get(&format!("/api/chats/{chat}"), Some(&token)).await;
    let (_, list_before) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list_before["chats"][0]["id"], chat.as_str());
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &token).await, 204);
    let (_, found) = app
        .get("/api/messages/search?q=tomatoes", Some(&token))
        .await;
    assert_eq!(found["total"], 0);

    let mut sse = Sse::open(&app, &token, None).await;
    sse.until_connected().await;
    let (status, restored) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored, before, "the chat as it was");

    // Read-your-writes: the chat, its order among the others, its live messages, search.
    let (status, got) = app.get(&format!("/api/chats/{chat}"), Some(&token)).await;
    assert_eq!((status, &got), (200, &before));
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["chats"][0]["id"], chat.as_str());
    assert_eq!(list["chats"][1]["id"], other.as_str());
    let (_, page) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(&token))
        .await;
    assert_eq!(contents(&page), ["plant tomatoes", "prune roses"]);
    let (_, found) = app
        .get("/api/messages/search?q=tomatoes", Some(&token))
        .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["messages"][0]["chatId"], chat.as_str());

    // Realtime: the chat is updated, then its messages are sent again in order.
    let event = sse.event().await;
    assert_eq!(event.event.as_deref(), Some("chat:updated"), "{event:?}");
    assert_eq!(event.json()["title"], "Garden");
    for content in ["plant tomatoes", "prune roses"] {
        let event = sse.event().await;
        assert_eq!(event.event.as_deref(), Some("message:sent"), "{event:?}");
        assert_eq!(event.json()["content"], content);
    }

    // The message deleted before the chat stays deleted, and can be restored on its own.
    let (status, back) = app
        .post(&format!("{gone_path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 200, "{back}");
    let (_, page) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(&token))
        .await;
    assert_eq!(
        contents(&page),
        ["plant tomatoes", "water basil", "prune roses"]
    );
    app.shutdown().await;
}

async fn restoring_past_the_window_or_what_is_not_deleted_is_refused(db: Db) {
    // A window of 0 days: nothing deleted can be restored.
    let app = spawn_app_with(db, |c| c.restore_window_days = 0).await;
    let (token, _, chat) = app.sign_up_with_chat("ann@example.com", "Closed").await;
    let m = app
        .send_message(&token, &chat, "gone for good", "text")
        .await;
    let path = format!(
        "/api/chats/{chat}/messages/{}",
        m["id"].as_str().expect("id")
    );
    assert_eq!(app.delete(&path, &token).await, 204);
    let (status, body) = app
        .post(&format!("{path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "not_found");
    assert!(
        error_message(&body).contains("can no longer be restored"),
        "{body}"
    );
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &token).await, 204);
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("0 days"), "{body}");
    let (status, _) = app.get(&format!("/api/chats/{chat}"), Some(&token)).await;
    assert_eq!(status, 404, "nothing was restored");
    app.shutdown().await;

    // The default window of 30 days, against a deletion recorded 31 days ago.
    let app = spawn_app(db).await;
    let (token, _, chat) = app.sign_up_with_chat("bob@example.com", "Old").await;
    let old = app.send_message(&token, &chat, "long ago", "text").await;
    let recent = app.send_message(&token, &chat, "just now", "text").await;
    let chat_id: Uuid = chat.parse().expect("uuid");
    let old_id: Uuid = old["id"].as_str().expect("id").parse().expect("uuid");
    // The deletion goes through the app's own command line (so its cached state sees it),
    // with the time the command says it happened.
    let owner: Uuid = app.me(&token).await["id"]
        .as_str()
        .expect("user id")
        .parse()
        .expect("uuid");
    app.svc
        .commands
        .execute::<Chat>(
            &chat_id,
            ChatCommand::DeleteMessage {
                message_id: old_id,
                actor: owner,
                at: Utc::now() - Duration::days(31),
            },
            EventMetadata::default(),
        )
        .await
        .expect("a back-dated deletion");
    app.svc.caught_up("chats").await.expect("caught up");
    let old_path = format!("/api/chats/{chat}/messages/{old_id}");
    let (status, body) = app
        .post(&format!("{old_path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("30 days"), "{body}");

    // Within the window it goes through; what is not deleted is a conflict.
    let recent_path = format!(
        "/api/chats/{chat}/messages/{}",
        recent["id"].as_str().expect("id")
    );
    let (status, body) = app
        .post(&format!("{recent_path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "conflict");
    assert_eq!(app.delete(&recent_path, &token).await, 204);
    let (status, body) = app
        .post(&format!("{recent_path}/restore"), Some(&token), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "conflict");
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/messages/{}/restore", Uuid::now_v7()),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    app.shutdown().await;
}

async fn another_users_chat_reads_as_missing_in_the_past_too(db: Db) {
    let app = spawn_app(db).await;
    let (ann, _, chat) = app.sign_up_with_chat("ann@example.com", "Private").await;
    let m = app.send_message(&ann, &chat, "secret", "text").await;
    let id = m["id"].as_str().expect("id");
    let then = q(Utc::now());
    let message = format!("/api/chats/{chat}/messages/{id}");
    assert_eq!(app.delete(&message, &ann).await, 204);
    let (bob, _) = app.sign_up("bob@example.com").await;

    for path in [
        format!("/api/chats/{chat}?asOf={then}"),
        format!("/api/chats/{chat}/messages?asOf={then}"),
        format!("{message}/history"),
    ] {
        let (status, body) = app.get(&path, Some(&bob)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_error(&body, "not_found");
    }
    let (status, body) = app
        .post(&format!("{message}/restore"), Some(&bob), &json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "not_found");
    assert_eq!(app.delete(&format!("/api/chats/{chat}"), &ann).await, 204);
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&bob),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "not_found");
    let (status, _) = app
        .get(&format!("/api/chats/{chat}?asOf={then}"), None)
        .await;
    assert_eq!(status, 401);

    // Nothing Bob tried changed Ann's chat: it is still deleted, and hers to restore.
    let (status, _) = app.get(&format!("/api/chats/{chat}"), Some(&ann)).await;
    assert_eq!(status, 404);
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/restore"),
            Some(&ann),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.shutdown().await;
}

async fn a_malformed_as_of_is_a_400(db: Db) {
    let app = spawn_app(db).await;
    let (token, _, chat) = app.sign_up_with_chat("ann@example.com", "Dates").await;
    for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-03-01", ""] {
        for path in [
            format!("/api/chats/{chat}?asOf={bad}"),
            format!("/api/chats/{chat}/messages?asOf={bad}"),
        ] {
            let (status, body) = app.get(&path, Some(&token)).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert_error(&body, "validation_error");
            assert!(body["error"]["details"]["asOf"].is_string(), "{body}");
        }
    }
    let (status, body) = app
        .get(
            &format!("/api/chats/not-a-uuid?asOf={}", q(Utc::now())),
            Some(&token),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "validation_error");
    app.shutdown().await;
}
