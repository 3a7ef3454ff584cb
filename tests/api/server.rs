//! The real server on a random port, on SQLite and PostgreSQL: health, readiness, the error body
//! for unknown routes, and graceful shutdown.

use crate::helpers::{Db, assert_error, on_both, parts, spawn_app};
use confab::{Application, Config};
use confab_eventstore::testing::fresh_postgres_database;

on_both!(the_server_answers_health_readiness_and_error_bodies);

async fn the_server_answers_health_readiness_and_error_bodies(db: Db) {
    let app = spawn_app(db).await;
    let (status, body) = app.get("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    let names: Vec<&str> = body["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"chats") && names.contains(&"accounts"),
        "{body}"
    );
    let (status, body) = app.get("/no/such/route", None).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let r = app
        .request(reqwest::Method::DELETE, "/healthz", None)
        .send()
        .await
        .expect("request");
    let (status, body) = parts(r).await;
    assert_eq!(status, 405);
    assert!(body["error"]["code"].is_string());
    app.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app(Db::Sqlite).await;
    let (status, doc) = app.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/auth/signup", "post"),
        ("/api/auth/signin", "post"),
        ("/api/auth/signout", "post"),
        ("/api/me", "get"),
        ("/api/profile", "put"),
        ("/api/profile/image", "post"),
        ("/api/settings", "get"),
        ("/api/settings", "put"),
        ("/api/chats", "post"),
        ("/api/chats", "get"),
        ("/api/chats/{chatId}", "get"),
        ("/api/chats/{chatId}", "put"),
        ("/api/chats/{chatId}", "delete"),
        ("/api/chats/{chatId}/messages", "get"),
        ("/api/chats/{chatId}/messages", "post"),
        ("/api/chats/{chatId}/messages/{messageId}", "put"),
        ("/api/chats/{chatId}/messages/{messageId}", "delete"),
        ("/api/messages/search", "get"),
        ("/api/chats/{chatId}/restore", "post"),
        ("/api/chats/{chatId}/messages/{messageId}/restore", "post"),
        ("/api/chats/{chatId}/messages/{messageId}/history", "get"),
        ("/chat/conversations", "post"),
        ("/chat/conversations/{id}", "get"),
        ("/chat/conversations/{id}/messages", "get"),
        ("/chat/messages", "post"),
        ("/chat/attachments", "post"),
        ("/chat/messages/{id}/attachments", "get"),
        ("/chat/llm-providers", "post"),
        ("/chat/llm-providers/{id}", "get"),
        ("/chat/user-llm-configs", "post"),
        ("/chat/user-llm-configs/{user_id}/{provider_id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let r = app
        .request(reqwest::Method::GET, "/docs", None)
        .send()
        .await
        .expect("docs");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.expect("html").contains("/openapi.json"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_embedded_default_creates_its_data_directory_and_database() {
    let app = spawn_app(Db::Sqlite).await;
    assert!(app.dir.path().join("data").join("confab.db").exists());
    app.shutdown().await;
}

#[tokio::test]
async fn without_auto_migrate_an_unmigrated_postgres_is_refused_with_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(fresh_postgres_database().await.into()),
        auto_migrate: false,
        ..Config::default()
    };
    let err = Application::build(config).await.err().expect("refused");
    assert!(err.to_string().contains("confab migrate"), "{err}");
}
