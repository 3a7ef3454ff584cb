//! The test app: the real server on a random port, on SQLite or PostgreSQL, and an HTTP client.
#![allow(dead_code)]

use confab::{Application, Config};
use confab_eventstore::testing::fresh_postgres_database;
use reqwest::{Method, Response};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::oneshot;

/// Which database a test app runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    /// The embedded default.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client, without cookies (tests pass tokens explicitly).
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The data directory (kept alive for the app's lifetime).
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database it runs on, if not the embedded default.
    pub database_url: Option<String>,
}

/// Starts the app on `db` with a config adjusted by `tweak`.
pub async fn spawn_app_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let database_url = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_postgres_database().await),
    };
    spawn_app_on(database_url, tweak).await
}

/// The test config on `database_url` (the embedded default if `None`) in `dir`.
pub fn test_config(database_url: Option<String>, dir: &std::path::Path) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.join("data"),
        database_url: database_url.map(Into::into),
        auto_migrate: true,
        // Tests send many requests from one address; the rate-limit tests turn limits on.
        rate_limit_enabled: false,
        ..Config::default()
    }
}

/// Starts an app on the PostgreSQL database `database_url` (another instance of the same
/// deployment when several share it), or on a new embedded default if `None`.
pub async fn spawn_app_on(
    database_url: Option<String>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(database_url.clone(), dir.path());
    tweak(&mut config);
    let app = Application::build(config).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        http: reqwest::Client::new(),
        stop: Some(stop),
        server: Some(server),
        dir,
        database_url,
    }
}

/// Starts the app on `db` with the default config.
pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// A response's status and JSON body (`Value::Null` when empty or not JSON).
pub async fn parts(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

impl TestApp {
    /// A request to `path`, with `token` as bearer if given.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET `path` → (status, body).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        parts(
            self.request(Method::GET, path, token)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// POST `body` as JSON to `path` → (status, body).
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        parts(
            self.request(Method::POST, path, token)
                .json(body)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// Signs a new user up; returns (token, user).
    pub async fn sign_up(&self, email: &str) -> (String, Value) {
        let (status, body) = self
            .post(
                "/api/auth/signup",
                None,
                &serde_json::json!({ "email": email, "password": "correct horse battery", "name": "Test User" }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"].as_str().expect("token").to_owned(),
            body["user"].clone(),
        )
    }

    /// Stops the server and checks it stopped cleanly within the grace period.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(15), server)
                .await
                .expect("server stops within the grace period")
                .expect("join")
                .expect("server ran cleanly");
        }
    }
}

/// Asserts `body` is the API error body with `code`.
#[track_caller]
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["details"].is_object(), "{body}");
}

/// Runs each listed async test body, `fn(Db)`, on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Db::Sqlite).await } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Db::Postgres).await } )* }
    };
}
