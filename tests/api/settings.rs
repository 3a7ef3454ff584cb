//! `GET`/`PUT /api/settings` over HTTP on SQLite and PostgreSQL.

use crate::helpers::{Db, assert_error, on_both, spawn_app};
use serde_json::json;

on_both!(
    a_new_user_gets_defaults_and_partial_updates_merge,
    bad_settings_are_refused_field_by_field_and_change_nothing,
);

async fn a_new_user_gets_defaults_and_partial_updates_merge(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("set@example.com").await;
    let (other, _) = app.sign_up("other@example.com").await;
    let (status, body) = app.get("/api/settings", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let s = &body["settings"];
    assert_eq!(s["model"], "gpt-4o-mini");
    assert_eq!(s["theme"], "system");
    assert_eq!(s["responseStyle"], "concise");
    assert_eq!(s["alwaysShowCode"], false);
    assert_eq!(s["isPremium"], false);
    assert_eq!(s["context"], "");
    assert!(s["updatedAt"].is_string());

    let (status, body) = app
        .put(
            "/api/settings",
            &token,
            &json!({ "settings": { "theme": "dark", "alwaysShowCode": true } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.put(
        "/api/settings",
        &token,
        &json!({ "settings": { "context": "I write Rust", "responseStyle": "detailed", "isPremium": true } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let s = &body["settings"];
    assert_eq!(s["theme"], "dark", "earlier changes are kept");
    assert_eq!(s["alwaysShowCode"], true);
    assert_eq!(s["context"], "I write Rust");
    assert_eq!(s["responseStyle"], "detailed");
    assert_eq!(
        s["isPremium"], false,
        "isPremium comes from the tier, not the user"
    );
    let (_, again) = app.get("/api/settings", Some(&token)).await;
    assert_eq!(again["settings"], *s);
    let (_, theirs) = app.get("/api/settings", Some(&other)).await;
    assert_eq!(theirs["settings"]["theme"], "system");
    let (status, body) = app.get("/api/settings", None).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    app.shutdown().await;
}

async fn bad_settings_are_refused_field_by_field_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let (token, _) = app.sign_up("bad@example.com").await;
    let (status, body) = app.put(
        "/api/settings",
        &token,
        &json!({ "settings": { "theme": "neon", "responseStyle": "verbose", "model": " ", "context": "x".repeat(10_001) } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "validation_error");
    for field in ["theme", "responseStyle", "model", "context"] {
        assert!(
            body["error"]["details"][field].is_string(),
            "{field}: {body}"
        );
    }
    let (status, body) = app
        .put("/api/settings", &token, &json!({ "theme": "dark" }))
        .await;
    assert_eq!(status, 400, "the fields go inside `settings`: {body}");
    let (status, body) = app
        .put(
            "/api/settings",
            &token,
            &json!({ "settings": { "alwaysShowCode": "yes" } }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, now) = app.get("/api/settings", Some(&token)).await;
    assert_eq!(now["settings"]["theme"], "system");
    app.shutdown().await;
}
