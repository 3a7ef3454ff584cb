//! The real server on a random port, on SQLite and PostgreSQL: health, readiness, the error body
//! for unknown routes, and graceful shutdown.

use confab::{Application, Config};
use confab_eventstore::testing::fresh_postgres_database;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::oneshot;

struct TestApp {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn spawn_app(database_url: Option<String>) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        database_url: database_url.map(Into::into),
        auto_migrate: true,
        ..Config::default()
    };
    let app = Application::build(config).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        stop: Some(stop),
        server,
        _dir: dir,
    }
}

impl TestApp {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.server)
            .await
            .expect("server stops within the grace period")
            .expect("join")
            .expect("server ran cleanly");
    }
}

async fn health_and_errors(app: TestApp) {
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["projections"][0]["name"], "chats");
    let (status, body) = app.get("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].is_string());
    let r = reqwest::Client::new()
        .delete(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 405);
    let body: Value = r.json().await.expect("json");
    assert!(body["error"]["code"].is_string());
    app.shutdown().await;
}

#[tokio::test]
async fn on_sqlite_the_server_answers_health_readiness_and_error_bodies() {
    health_and_errors(spawn_app(None).await).await;
}

#[tokio::test]
async fn on_postgres_the_server_answers_health_readiness_and_error_bodies() {
    health_and_errors(spawn_app(Some(fresh_postgres_database().await)).await).await;
}

#[tokio::test]
async fn the_embedded_default_creates_its_data_directory_and_database() {
    let app = spawn_app(None).await;
    assert!(app._dir.path().join("data").join("confab.db").exists());
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
