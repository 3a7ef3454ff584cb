//! The seed-002 routes (`/chat/...`, snake_case) on SQLite and PostgreSQL: conversations and
//! their messages on the same model as `/api/chats`, providers (admins only, SSRF-checked
//! endpoints) and users' provider keys (encrypted, only a hint returned).

use crate::helpers::{Db, TestApp, assert_error, on_both, spawn_app_with, with_admin};
use serde_json::{Value, json};

on_both!(
    conversations_and_messages_share_the_chat_model,
    providers_are_admin_only_and_endpoints_are_checked,
    user_keys_are_stored_encrypted_and_only_hinted,
    a_stored_key_names_its_key_id_and_opens_only_for_its_user_and_provider,
);

/// `POST /chat/messages` as `token` → (status, body).
async fn post_message(
    app: &TestApp,
    token: &str,
    conversation: &str,
    role: &str,
    content: &str,
) -> (u16, Value) {
    let body = json!({ "conversation_id": conversation, "role": role, "content": content });
    app.post("/chat/messages", Some(token), &body).await
}

async fn conversations_and_messages_share_the_chat_model(db: Db) {
    let app = spawn_app_with(db, with_admin).await;
    let (token, user) = app.sign_up("ann@example.com").await;
    let (other, other_user) = app.sign_up("bob@example.com").await;
    let uid = user["id"].as_str().expect("id");
    let (status, conv) = app
        .post(
            "/chat/conversations",
            Some(&token),
            &json!({ "user_id": uid, "title": "Seed two" }),
        )
        .await;
    assert_eq!(status, 201, "{conv}");
    assert_eq!(conv["user_id"], uid);
    assert!(conv["created_at"].is_string() && conv["updated_at"].is_string());
    let cid = conv["id"].as_str().expect("id");

    let (status, body) = app
        .post(
            "/chat/conversations",
            Some(&token),
            &json!({ "user_id": other_user["id"], "title": "Not mine" }),
        )
        .await;
    assert_eq!(status, 403, "another user's user_id: {body}");
    assert_error(&body, "forbidden");

    for (role, content) in [
        ("system", "be brief"),
        ("user", "hello"),
        ("assistant", "hi!"),
    ] {
        let (status, m) = post_message(&app, &token, cid, role, content).await;
        assert_eq!(status, 201, "{m}");
        assert_eq!(
            (m["role"].as_str(), m["conversation_id"].as_str()),
            (Some(role), Some(cid))
        );
    }
    let (status, body) = post_message(&app, &token, cid, "admin", "x").await;
    assert_eq!(status, 400, "{body}");
    let (status, list) = app
        .get(&format!("/chat/conversations/{cid}/messages"), Some(&token))
        .await;
    assert_eq!(status, 200);
    let roles: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, vec!["system", "user", "assistant"]);
    // The same chat, seen through the seed-000 routes.
    let (_, same) = app
        .get(&format!("/api/chats/{cid}/messages"), Some(&token))
        .await;
    assert_eq!(same["total"], 3);
    let (status, got) = app
        .get(&format!("/chat/conversations/{cid}"), Some(&token))
        .await;
    assert_eq!((status, got["title"].as_str()), (200, Some("Seed two")));

    for path in [
        format!("/chat/conversations/{cid}"),
        format!("/chat/conversations/{cid}/messages"),
    ] {
        let (status, body) = app.get(&path, Some(&other)).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = post_message(&app, &other, cid, "user", "intrude").await;
    assert_eq!(status, 404);
    let (status, body) = app
        .get("/chat/conversations/not-a-uuid", Some(&token))
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "validation_error");
    app.shutdown().await;
}

async fn providers_are_admin_only_and_endpoints_are_checked(db: Db) {
    let app = spawn_app_with(db, with_admin).await;
    let admin = app.sign_in_admin().await;
    let (user, _) = app.sign_up("user@example.com").await;
    let (status, body) = app
        .add_provider(&user, "OpenAI", "https://8.8.8.8/v1")
        .await;
    assert_eq!(status, 403, "{body}");
    assert_error(&body, "forbidden");
    for bad in [
        "http://8.8.8.8/v1",
        "https://169.254.169.254/latest",
        "https://10.0.0.5/v1",
        "https://localhost/v1",
        "https://[::1]/v1",
        "not a url",
    ] {
        let (status, body) = app.add_provider(&admin, "Bad", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["details"]["api_endpoint"].is_string(),
            "{body}"
        );
    }
    let (status, p) = app
        .add_provider(&admin, "Public", "https://8.8.8.8/v1")
        .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["api_endpoint"], "https://8.8.8.8/v1");
    let (status, local) = app
        .add_provider(&admin, "Ollama", "http://127.0.0.1:11434/v1")
        .await;
    assert_eq!(
        status, 201,
        "an operator-allowed host may be local and http: {local}"
    );
    let (status, got) = app
        .get(
            &format!("/chat/llm-providers/{}", p["id"].as_str().expect("id")),
            Some(&user),
        )
        .await;
    assert_eq!((status, got["name"].as_str()), (200, Some("Public")));
    let (status, _) = app
        .get(
            &format!("/chat/llm-providers/{}", uuid::Uuid::now_v7()),
            Some(&user),
        )
        .await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

async fn user_keys_are_stored_encrypted_and_only_hinted(db: Db) {
    let app = spawn_app_with(db, with_admin).await;
    let admin = app.sign_in_admin().await;
    let (token, user) = app.sign_up("keys@example.com").await;
    let (other, other_user) = app.sign_up("nosy@example.com").await;
    let (_, p) = app
        .add_provider(&admin, "Public", "https://8.8.8.8/v1")
        .await;
    let pid = p["id"].as_str().expect("id").to_owned();
    let uid = user["id"].as_str().expect("id").to_owned();
    let secret = "sk-live-0123456789SECRETa1b2";
    let (status, cfg) = app.add_user_key(&token, &uid, &pid, secret).await;
    assert_eq!(status, 201, "{cfg}");
    assert_eq!(cfg["api_key_hint"], "sk-...a1b2");
    assert!(
        !cfg.to_string().contains("SECRET"),
        "the key must never be returned: {cfg}"
    );
    let path = format!("/chat/user-llm-configs/{uid}/{pid}");
    let (status, got) = app.get(&path, Some(&token)).await;
    assert_eq!(status, 200);
    assert!(!got.to_string().contains("SECRET"));
    assert_eq!(got["provider_id"], pid.as_str());

    let (status, body) = app.get(&path, Some(&other)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .add_user_key(&other, &uid, &pid, "sk-evil-000000000000")
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get(
            &format!(
                "/chat/user-llm-configs/{}/{pid}",
                other_user["id"].as_str().expect("id")
            ),
            Some(&other),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .add_user_key(&token, &uid, uuid::Uuid::now_v7(), "sk-x-0000000000000")
        .await;
    assert_eq!(status, 404, "unknown provider");
    let (status, _) = app.add_user_key(&token, &uid, &pid, "has space").await;
    assert_eq!(status, 400);

    // Replacing the key changes the hint; the stored bytes never hold the key in the clear.
    let (status, cfg) = app
        .add_user_key(&token, &uid, &pid, "sk-live-9999999999NEWKEYzz99")
        .await;
    assert_eq!(
        (status, cfg["api_key_hint"].as_str()),
        (201, Some("sk-...zz99"))
    );
    if matches!(db, Db::Sqlite) {
        let bytes = std::fs::read(app.dir.path().join("data").join("confab.db")).expect("db file");
        let wal =
            std::fs::read(app.dir.path().join("data").join("confab.db-wal")).unwrap_or_default();
        let hay = [bytes, wal].concat();
        assert!(
            !hay.windows(6).any(|w| w == b"SECRET"),
            "the key is stored in the clear"
        );
    }
    let _: Value = cfg;
    app.shutdown().await;
}

/// What is recorded is `v2:<key id>:...`, bound to (user, provider): the application opens it
/// for its owner and provider and for nobody else.
async fn a_stored_key_names_its_key_id_and_opens_only_for_its_user_and_provider(db: Db) {
    use confab_application::providers::{KeyScope, key_id};
    use uuid::Uuid;
    let app = spawn_app_with(db, with_admin).await;
    let admin = app.sign_in_admin().await;
    let (token, user) = app.sign_up("bound@example.com").await;
    let (_, other) = app.sign_up("other@example.com").await;
    let (_, p) = app
        .add_provider(&admin, "Public", "https://8.8.8.8/v1")
        .await;
    let (_, q) = app
        .add_provider(&admin, "Public", "https://8.8.4.4/v1")
        .await;
    let id = |v: &Value| -> Uuid { v["id"].as_str().expect("id").parse().expect("uuid") };
    let (uid, pid) = (id(&user), id(&p));
    let secret = "sk-live-0123456789BOUNDa1b2";
    let (status, cfg) = app.add_user_key(&token, &uid, &pid, secret).await;
    assert_eq!(status, 201, "{cfg}");

    let stored = confab_projections::providers::get_user_config(&app.svc.db, uid, pid)
        .await
        .expect("read")
        .expect("stored")
        .encrypted_key;
    let key = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        crate::helpers::TEST_ENCRYPTION_KEY,
    )
    .expect("base64");
    let kid = key_id(&key.try_into().expect("32 bytes"));
    assert!(
        stored.starts_with(&format!("v2:{kid}:")),
        "sealed with the key id: {stored}"
    );
    let cipher = &app.svc.cipher;
    let owner = KeyScope {
        user: uid,
        provider: pid,
    };
    assert_eq!(cipher.decrypt(&stored, owner).expect("opens"), secret);
    for (user, provider) in [(id(&other), pid), (uid, id(&q))] {
        assert!(
            cipher
                .decrypt(&stored, KeyScope { user, provider })
                .is_err(),
            "opened for another user or provider"
        );
    }
    app.shutdown().await;
}
