//! Chats and messages over HTTP on SQLite and PostgreSQL: every route's happy path, paging
//! edges, filters, full-text search, cross-user access, bad input, concurrent edits and
//! read-your-writes.

mod common;

use common::{Db, TestApp, assert_error, parts, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

on_both!(
    chats_are_created_listed_renamed_and_deleted,
    messages_are_sent_paged_filtered_edited_and_deleted,
    search_ignores_case_order_and_accents,
    another_users_chats_and_messages_read_as_missing,
    bad_ids_bodies_and_parameters_get_the_error_body,
    concurrent_edits_of_one_message_all_apply_in_turn,
    a_post_is_always_visible_to_the_next_get,
);

async fn put(app: &TestApp, path: &str, token: &str, body: &Value) -> (u16, Value) {
    parts(
        app.request(Method::PUT, path, Some(token))
            .json(body)
            .send()
            .await
            .expect("put"),
    )
    .await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> u16 {
    app.request(Method::DELETE, path, Some(token))
        .send()
        .await
        .expect("delete")
        .status()
        .as_u16()
}

async fn new_chat(app: &TestApp, token: &str, title: &str) -> String {
    let (status, body) = app
        .post("/api/chats", Some(token), &json!({ "title": title }))
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

async fn send(app: &TestApp, token: &str, chat: &str, content: &str, kind: &str) -> Value {
    let (status, body) = app
        .post(
            &format!("/api/chats/{chat}/messages"),
            Some(token),
            &json!({ "content": content, "type": kind }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn chats_are_created_listed_renamed_and_deleted(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("ann@example.com").await;
    let (status, body) = app
        .post("/api/chats", Some(&token), &json!({ "title": "  Trip  " }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["title"], "Trip");
    assert!(body["createdAt"].is_string());
    let first = body["id"].as_str().expect("id").to_owned();
    let second = new_chat(&app, &token, "Work").await;

    // Newest activity first: a message in the first chat moves it to the top.
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["chats"][0]["id"], second.as_str());
    send(&app, &token, &first, "hello", "text").await;
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["chats"][0]["id"], first.as_str());
    let (_, page) = app.get("/api/chats?page=2&limit=1", Some(&token)).await;
    assert_eq!(page["chats"][0]["id"], second.as_str());
    assert_eq!(
        (page["page"].as_u64(), page["limit"].as_u64()),
        (Some(2), Some(1))
    );

    let (status, body) = put(
        &app,
        &format!("/api/chats/{first}"),
        &token,
        &json!({ "title": "Holiday" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["title"], "Holiday");
    let (status, body) = app.get(&format!("/api/chats/{first}"), Some(&token)).await;
    assert_eq!((status, body["title"].as_str()), (200, Some("Holiday")));

    assert_eq!(
        delete(&app, &format!("/api/chats/{first}"), &token).await,
        204
    );
    let (status, body) = app.get(&format!("/api/chats/{first}"), Some(&token)).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, _) = app
        .get(&format!("/api/chats/{first}/messages"), Some(&token))
        .await;
    assert_eq!(status, 404);
    let (_, found) = app.get("/api/messages/search?q=hello", Some(&token)).await;
    assert_eq!(
        found["total"], 0,
        "a deleted chat's messages vanish from search too"
    );
    assert_eq!(
        delete(&app, &format!("/api/chats/{first}"), &token).await,
        404
    );
    app.shutdown().await;
}

async fn messages_are_sent_paged_filtered_edited_and_deleted(db: Db) {
    let app = spawn_app(db).await;
    let (token, user) = app.sign_up("bob@example.com").await;
    let chat = new_chat(&app, &token, "Notes").await;
    let first = send(&app, &token, &chat, "first note", "text").await;
    for key in [
        "id",
        "chatId",
        "role",
        "content",
        "type",
        "userId",
        "createdAt",
        "updatedAt",
    ] {
        assert!(!first[key].is_null(), "{key} missing: {first}");
    }
    assert_eq!(first["userId"], user["id"]);
    assert_eq!(first["role"], "user");
    for i in 1..=11 {
        let kind = if i % 3 == 0 { "code" } else { "text" };
        send(&app, &token, &chat, &format!("note {i}"), kind).await;
    }
    let base = format!("/api/chats/{chat}/messages");
    let (status, all) = app.get(&base, Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            all["total"].as_u64(),
            all["page"].as_u64(),
            all["limit"].as_u64()
        ),
        (Some(12), Some(1), Some(50))
    );
    assert_eq!(all["messages"][0]["content"], "first note");
    let (_, p2) = app
        .get(&format!("{base}?page=2&limit=5"), Some(&token))
        .await;
    let contents: Vec<&str> = p2["messages"]
        .as_array()
        .expect("page")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        vec!["note 5", "note 6", "note 7", "note 8", "note 9"]
    );
    let (status, past) = app
        .get(&format!("{base}?page=9&limit=5"), Some(&token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(past["messages"].as_array().map(Vec::len), Some(0));
    assert_eq!(past["total"], 12);
    let (_, code) = app.get(&format!("{base}?type=code"), Some(&token)).await;
    assert_eq!(code["total"], 3);

    let created = first["createdAt"].as_str().expect("createdAt");
    let (_, from) = app
        .get(
            &format!("{base}?startDate={created}&endDate={created}"),
            Some(&token),
        )
        .await;
    assert_eq!(from["total"], 1, "date bounds are inclusive");
    let day = &created[..10];
    let (_, today) = app
        .get(
            &format!("{base}?startDate={day}&endDate={day}"),
            Some(&token),
        )
        .await;
    assert_eq!(today["total"], 12);
    let (_, none) = app
        .get(&format!("{base}?endDate=2000-01-01"), Some(&token))
        .await;
    assert_eq!(none["total"], 0);

    let id = first["id"].as_str().expect("id");
    let (status, edited) = put(
        &app,
        &format!("{base}/{id}"),
        &token,
        &json!({ "content": "fixed note", "type": "code" }),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(
        (edited["content"].as_str(), edited["type"].as_str()),
        (Some("fixed note"), Some("code"))
    );
    assert!(edited["updatedAt"].as_str() > first["updatedAt"].as_str());
    let (status, same) = put(
        &app,
        &format!("{base}/{id}"),
        &token,
        &json!({ "content": "fixed note" }),
    )
    .await;
    assert_eq!(
        status, 200,
        "an edit that changes nothing is not an error: {same}"
    );
    assert_eq!(delete(&app, &format!("{base}/{id}"), &token).await, 204);
    let (_, after) = app.get(&base, Some(&token)).await;
    assert_eq!(after["total"], 11);
    let (status, body) = put(
        &app,
        &format!("{base}/{id}"),
        &token,
        &json!({ "content": "again" }),
    )
    .await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    assert_eq!(delete(&app, &format!("{base}/{id}"), &token).await, 404);
    app.shutdown().await;
}

async fn search_ignores_case_order_and_accents(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("cy@example.com").await;
    let a = new_chat(&app, &token, "Food").await;
    let b = new_chat(&app, &token, "More food").await;
    send(&app, &token, &a, "The Crème Brûlée was perfect", "text").await;
    send(
        &app,
        &token,
        &a,
        "brulee recipe: creme, sugar, eggs. Creme brulee forever",
        "text",
    )
    .await;
    send(&app, &token, &a, "nothing to see here", "text").await;
    send(&app, &token, &b, "CRÈME brûlée in the other chat", "code").await;
    let (other, _) = app.sign_up("other@example.com").await;
    let theirs = new_chat(&app, &other, "Theirs").await;
    send(
        &app,
        &other,
        &theirs,
        "creme brulee belongs to someone else",
        "text",
    )
    .await;

    for q in ["creme brulee", "BRÛLÉE crème", "Brulee%20CREME"] {
        let (status, found) = app
            .get(&format!("/api/chats/{a}/messages?search={q}"), Some(&token))
            .await;
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["total"], 2, "{q}: {found}");
        let (_, everywhere) = app
            .get(&format!("/api/messages/search?q={q}"), Some(&token))
            .await;
        assert_eq!(everywhere["total"], 3, "{q}: {everywhere}");
        assert!(
            everywhere["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .all(|m| m["chatId"] != theirs.as_str())
        );
    }
    // Ranked: the message that says it twice comes first.
    let (_, ranked) = app
        .get(
            &format!("/api/chats/{a}/messages?search=creme%20brulee"),
            Some(&token),
        )
        .await;
    assert!(
        ranked["messages"][0]["content"]
            .as_str()
            .expect("content")
            .starts_with("brulee recipe")
    );
    let (_, code) = app
        .get("/api/messages/search?q=creme&type=code", Some(&token))
        .await;
    assert_eq!(code["total"], 1);
    // Past the last page: no messages, and still the total.
    let (_, all) = app.get("/api/messages/search?q=creme", Some(&token)).await;
    let (status, past) = app
        .get("/api/messages/search?q=creme&page=9&limit=1", Some(&token))
        .await;
    assert_eq!(status, 200, "{past}");
    assert_eq!(past["messages"], json!([]));
    assert_eq!(past["total"], all["total"]);
    assert!(all["total"].as_u64().unwrap() >= 2, "{all}");
    let (_, none) = app
        .get("/api/messages/search?q=tiramisu", Some(&token))
        .await;
    assert_eq!(none["total"], 0);
    let (_, syntax) = app
        .get(
            &format!("/api/chats/{a}/messages?search=%22creme%22%20OR%20*"),
            Some(&token),
        )
        .await;
    assert!(
        syntax["total"].is_u64(),
        "query syntax is not interpreted: {syntax}"
    );
    let (status, body) = app.get("/api/messages/search?q=%20", Some(&token)).await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    app.shutdown().await;
}

async fn another_users_chats_and_messages_read_as_missing(db: Db) {
    let app = spawn_app(db).await;
    let (owner, _) = app.sign_up("owner@example.com").await;
    let (intruder, intruder_id) = app.sign_up("intruder@example.com").await;
    let chat = new_chat(&app, &owner, "Private").await;
    let msg = send(&app, &owner, &chat, "secret", "text").await;
    let msg = msg["id"].as_str().expect("id");
    let chat_path = format!("/api/chats/{chat}");
    let msgs_path = format!("{chat_path}/messages");
    let msg_path = format!("{msgs_path}/{msg}");

    let checks: Vec<(u16, Value)> = vec![
        app.get(&chat_path, Some(&intruder)).await,
        put(&app, &chat_path, &intruder, &json!({ "title": "mine" })).await,
        app.get(&msgs_path, Some(&intruder)).await,
        app.post(
            &msgs_path,
            Some(&intruder),
            &json!({ "content": "hi", "type": "text" }),
        )
        .await,
        put(&app, &msg_path, &intruder, &json!({ "content": "changed" })).await,
    ];
    for (status, body) in checks {
        assert_eq!(status, 404, "{body}");
        assert_error(&body, "not_found");
    }
    assert_eq!(delete(&app, &msg_path, &intruder).await, 404);
    assert_eq!(delete(&app, &chat_path, &intruder).await, 404);
    let (_, list) = app.get("/api/chats", Some(&intruder)).await;
    assert_eq!(list["total"], 0);
    let (_, found) = app
        .get("/api/messages/search?q=secret", Some(&intruder))
        .await;
    assert_eq!(found["total"], 0);
    // Search is scoped by an owner key inside the index: a message that spells out the
    // intruder's key as a word still belongs to its owner's search only.
    let intruder_id = intruder_id["id"].as_str().expect("id").to_owned();
    let key = format!("u{}", intruder_id.replace('-', ""));
    send(&app, &owner, &chat, &format!("{key} classified"), "text").await;
    for q in ["classified", key.as_str()] {
        let (_, found) = app
            .get(&format!("/api/messages/search?q={q}"), Some(&intruder))
            .await;
        assert_eq!(found["total"], 0, "{q}: {found}");
    }
    let (_, found) = app
        .get("/api/messages/search?q=classified", Some(&owner))
        .await;
    assert_eq!(found["total"], 1, "{found}");
    // Nothing changed for the owner.
    let (_, mine) = app.get(&msgs_path, Some(&owner)).await;
    assert_eq!(mine["messages"][0]["content"], "secret");
    let (_, c) = app.get(&chat_path, Some(&owner)).await;
    assert_eq!(c["title"], "Private");
    for path in [chat_path.as_str(), "/api/chats", msgs_path.as_str()] {
        let (status, body) = app.get(path, None).await;
        assert_eq!(status, 401);
        assert_error(&body, "unauthorized");
    }
    app.shutdown().await;
}

async fn bad_ids_bodies_and_parameters_get_the_error_body(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("dee@example.com").await;
    let chat = new_chat(&app, &token, "Edge").await;
    let base = format!("/api/chats/{chat}/messages");
    let cases: Vec<(u16, Value)> = vec![
        app.get("/api/chats/not-a-uuid", Some(&token)).await,
        app.get("/api/chats/not-a-uuid/messages", Some(&token))
            .await,
        app.get(&format!("{base}?page=0"), Some(&token)).await,
        app.get(&format!("{base}?limit=101"), Some(&token)).await,
        app.get(&format!("{base}?limit=abc"), Some(&token)).await,
        app.get(&format!("{base}?type=video"), Some(&token)).await,
        app.get(&format!("{base}?startDate=yesterday"), Some(&token))
            .await,
        app.get(
            &format!("{base}?startDate=2026-02-02&endDate=2026-01-01"),
            Some(&token),
        )
        .await,
        app.post("/api/chats", Some(&token), &json!({ "title": "" }))
            .await,
        app.post(
            "/api/chats",
            Some(&token),
            &json!({ "title": "t".repeat(201) }),
        )
        .await,
        app.post(
            "/api/chats",
            Some(&token),
            &json!({ "name": "wrong field" }),
        )
        .await,
        app.post(
            &base,
            Some(&token),
            &json!({ "content": "   ", "type": "text" }),
        )
        .await,
        app.post(
            &base,
            Some(&token),
            &json!({ "content": "x", "type": "video" }),
        )
        .await,
        put(
            &app,
            &format!("{base}/not-a-uuid"),
            &token,
            &json!({ "content": "x" }),
        )
        .await,
    ];
    for (i, (status, body)) in cases.into_iter().enumerate() {
        assert_eq!(status, 400, "case {i}: {body}");
        assert_error(&body, "validation_error");
    }
    let (status, body) = app
        .get(&format!("{base}?page=0&limit=101"), Some(&token))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["details"]["page"].is_string()
            && body["error"]["details"]["limit"].is_string()
    );
    let r = app
        .request(Method::POST, &base, Some(&token))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("send");
    let (status, body) = parts(r).await;
    assert_eq!(status, 415);
    assert_error(&body, "unsupported_media_type");
    let r = app
        .request(Method::POST, &base, Some(&token))
        .header("content-type", "application/json")
        .body("{\"content\": \"unterminated")
        .send()
        .await
        .expect("send");
    let (status, body) = parts(r).await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    let (_, list) = app.get(&base, Some(&token)).await;
    assert_eq!(
        list["total"], 0,
        "nothing was stored by the refused requests"
    );
    app.shutdown().await;
}

async fn concurrent_edits_of_one_message_all_apply_in_turn(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("eli@example.com").await;
    let chat = new_chat(&app, &token, "Race").await;
    let msg = send(&app, &token, &chat, "v0", "text").await;
    let path = format!(
        "/api/chats/{chat}/messages/{}",
        msg["id"].as_str().expect("id")
    );
    let bodies: Vec<Value> = (1..=8)
        .map(|i| json!({ "content": format!("v{i}") }))
        .collect();
    let edits = bodies.iter().map(|b| put(&app, &path, &token, b));
    let results = futures::future::join_all(edits).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let (_, list) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(&token))
        .await;
    let last = list["messages"][0]["content"]
        .as_str()
        .expect("content")
        .to_owned();
    assert!((1..=8).any(|i| last == format!("v{i}")), "{last}");
    // Every edit answered with the message as it left it (its own content), and the stored
    // content is one of them: none was lost or answered with a neighbour's result.
    let mut answered: Vec<String> = results
        .iter()
        .filter_map(|(_, b)| b["content"].as_str().map(str::to_owned))
        .collect();
    answered.sort();
    let mut expected: Vec<String> = (1..=8).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(answered, expected);
    app.shutdown().await;
}

async fn a_post_is_always_visible_to_the_next_get(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("fay@example.com").await;
    let chat = new_chat(&app, &token, "RYW").await;
    let base = format!("/api/chats/{chat}/messages");
    for i in 0..200 {
        let sent = send(&app, &token, &chat, &format!("m{i}"), "text").await;
        let (_, page) = app
            .get(&format!("{base}?page={}&limit=1", i + 1), Some(&token))
            .await;
        assert_eq!(page["total"], i + 1);
        assert_eq!(
            page["messages"][0], sent,
            "write {i} not visible as answered"
        );
    }
    app.shutdown().await;
}
