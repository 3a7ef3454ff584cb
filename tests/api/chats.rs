//! Chats and messages over HTTP on SQLite and PostgreSQL: every route's happy path, paging
//! edges, filters, full-text search, cross-user access, bad input, concurrent edits and
//! read-your-writes.

use crate::helpers::{Db, assert_error, on_both, spawn_app};
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
    let second = app.new_chat(&token, "Work").await;

    // Newest activity first: a message in the first chat moves it to the top.
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["chats"][0]["id"], second.as_str());
    app.send_message(&token, &first, "hello", "text").await;
    let (_, list) = app.get("/api/chats", Some(&token)).await;
    assert_eq!(list["chats"][0]["id"], first.as_str());
    let (_, page) = app.get("/api/chats?page=2&limit=1", Some(&token)).await;
    assert_eq!(page["chats"][0]["id"], second.as_str());
    assert_eq!(
        (page["page"].as_u64(), page["limit"].as_u64()),
        (Some(2), Some(1))
    );

    let (status, body) = app
        .put(
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
        app.delete(&format!("/api/chats/{first}"), &token).await,
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
        app.delete(&format!("/api/chats/{first}"), &token).await,
        404
    );
    app.shutdown().await;
}

async fn messages_are_sent_paged_filtered_edited_and_deleted(db: Db) {
    let app = spawn_app(db).await;
    let (token, user, chat) = app.sign_up_with_chat("bob@example.com", "Notes").await;
    let first = app.send_message(&token, &chat, "first note", "text").await;
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
        app.send_message(&token, &chat, &format!("note {i}"), kind)
            .await;
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
    let (status, edited) = app
        .put(
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
    let (status, same) = app
        .put(
            &format!("{base}/{id}"),
            &token,
            &json!({ "content": "fixed note" }),
        )
        .await;
    assert_eq!(
        status, 200,
        "an edit that changes nothing is not an error: {same}"
    );
    assert_eq!(app.delete(&format!("{base}/{id}"), &token).await, 204);
    let (_, after) = app.get(&base, Some(&token)).await;
    assert_eq!(after["total"], 11);
    let (status, body) = app
        .put(
            &format!("{base}/{id}"),
            &token,
            &json!({ "content": "again" }),
        )
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    assert_eq!(app.delete(&format!("{base}/{id}"), &token).await, 404);
    app.shutdown().await;
}

async fn search_ignores_case_order_and_accents(db: Db) {
    let app = spawn_app(db).await;
    let (token, _, a) = app.sign_up_with_chat("cy@example.com", "Food").await;
    let b = app.new_chat(&token, "More food").await;
    app.send_message(&token, &a, "The Crème Brûlée was perfect", "text")
        .await;
    app.send_message(
        &token,
        &a,
        "brulee recipe: creme, sugar, eggs. Creme brulee forever",
        "text",
    )
    .await;
    app.send_message(&token, &a, "nothing to see here", "text")
        .await;
    app.send_message(&token, &b, "CRÈME brûlée in the other chat", "code")
        .await;
    let (other, _, theirs) = app.sign_up_with_chat("other@example.com", "Theirs").await;
    app.send_message(
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
    let chat = app.new_chat(&owner, "Private").await;
    let msg = app.send_message(&owner, &chat, "secret", "text").await;
    let msg = msg["id"].as_str().expect("id");
    let chat_path = format!("/api/chats/{chat}");
    let msgs_path = format!("{chat_path}/messages");
    let msg_path = format!("{msgs_path}/{msg}");

    let checks: Vec<(u16, Value)> = vec![
        app.get(&chat_path, Some(&intruder)).await,
        app.put(&chat_path, &intruder, &json!({ "title": "mine" }))
            .await,
        app.get(&msgs_path, Some(&intruder)).await,
        app.post(
            &msgs_path,
            Some(&intruder),
            &json!({ "content": "hi", "type": "text" }),
        )
        .await,
        app.put(&msg_path, &intruder, &json!({ "content": "changed" }))
            .await,
    ];
    for (status, body) in checks {
        assert_eq!(status, 404, "{body}");
        assert_error(&body, "not_found");
    }
    assert_eq!(app.delete(&msg_path, &intruder).await, 404);
    assert_eq!(app.delete(&chat_path, &intruder).await, 404);
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
    app.send_message(&owner, &chat, &format!("{key} classified"), "text")
        .await;
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
    let (token, _, chat) = app.sign_up_with_chat("dee@example.com", "Edge").await;
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
        app.put(
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
    let (status, body) = app
        .post_raw(&base, Some(&token), "text/plain", "hello")
        .await;
    assert_eq!(status, 415);
    assert_error(&body, "unsupported_media_type");
    let (status, body) = app
        .post_raw(
            &base,
            Some(&token),
            "application/json",
            "{\"content\": \"unterminated",
        )
        .await;
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
    let (token, _, chat) = app.sign_up_with_chat("eli@example.com", "Race").await;
    let msg = app.send_message(&token, &chat, "v0", "text").await;
    let path = format!(
        "/api/chats/{chat}/messages/{}",
        msg["id"].as_str().expect("id")
    );
    let bodies: Vec<Value> = (1..=8)
        .map(|i| json!({ "content": format!("v{i}") }))
        .collect();
    let edits = bodies.iter().map(|b| app.put(&path, &token, b));
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
    let (token, _, chat) = app.sign_up_with_chat("fay@example.com", "RYW").await;
    let base = format!("/api/chats/{chat}/messages");
    for i in 0..200 {
        let sent = app
            .send_message(&token, &chat, &format!("m{i}"), "text")
            .await;
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
