//! What every area's tests share: the real app on port 0 on SQLite or a fresh PostgreSQL
//! database, the HTTP client and the calls tests make through it (sign-up, sign-in, chats,
//! messages), waiting without sleeping blindly, the job queues, and child processes.

use confab::{Application, Config};
use confab_eventstore::testing::fresh_postgres_database;
use confab_projections::ReadDb;
use reqwest::{Method, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::oneshot;

/// The password every test user signs up with.
pub const PASSWORD: &str = "correct horse battery";
/// The operator account [`with_admin`] creates at start-up.
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// Its password.
pub const ADMIN_PASSWORD: &str = "operator password";

/// Which database a test app runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    /// The embedded default.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// Runs each listed async test body, `fn(Db)`, on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::helpers::Db::Sqlite).await } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::helpers::Db::Postgres).await } )* }
    };
}
pub(crate) use on_both;

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client, without cookies (tests pass tokens explicitly).
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The temporary directory (kept alive for the app's lifetime).
    pub dir: tempfile::TempDir,
    /// The data directory the app was configured with.
    pub data_dir: PathBuf,
    /// The PostgreSQL database it runs on, if not the embedded default.
    pub database_url: Option<String>,
    /// The application layer of this instance, to run a use case or a job body directly.
    pub svc: confab_application::Services,
}

/// The provider-key encryption key of every test instance and process (base64 of 32 bytes):
/// on PostgreSQL all processes must share one.
pub const TEST_ENCRYPTION_KEY: &str = "Y29uZmFiLXRlc3QtZW5jcnlwdGlvbi1rZXktMzJieXQ=";

/// The test config on `database_url` (the embedded default if `None`) in `dir`.
pub fn test_config(database_url: Option<String>, dir: &std::path::Path) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.join("data"),
        database_url: database_url.map(Into::into),
        auto_migrate: true,
        // Tests send many requests from one address; the rate-limit tests turn limits on.
        rate_limit_enabled: false,
        encryption_key: Some(TEST_ENCRYPTION_KEY.to_owned().into()),
        ..Config::default()
    }
}

/// A fresh PostgreSQL database for `Db::Postgres`, none for the embedded default.
pub async fn database_for(db: Db) -> Option<String> {
    match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_postgres_database().await),
    }
}

/// Starts the app on `db` with the default config.
pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// Starts the app on `db` with a config adjusted by `tweak`.
pub async fn spawn_app_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(database_for(db).await, tweak).await
}

/// Starts an app on the PostgreSQL database `database_url` (another instance of the same
/// deployment when several share it), or on a new embedded default if `None`.
pub async fn spawn_app_on(
    database_url: Option<String>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(database_url, dir.path());
    tweak(&mut config);
    let data_dir = config.data_dir.clone();
    let database_url = config
        .database_url
        .as_ref()
        .map(|u| secrecy::ExposeSecret::expose_secret(u).to_owned());
    let app = Application::build(config).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let svc = app.services();
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
        data_dir,
        database_url,
        svc,
    }
}

/// Config for an app whose operator account ([`ADMIN_EMAIL`]) is created at start-up and may
/// register providers on 127.0.0.1.
pub fn with_admin(c: &mut Config) {
    c.admin_email = Some(ADMIN_EMAIL.into());
    c.admin_password = Some(ADMIN_PASSWORD.to_owned().into());
    c.provider_hosts_allowlist = "127.0.0.1".into();
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

/// The message of the API error body `body`.
#[track_caller]
pub fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().expect("an error message")
}

/// Asserts `body` is the API error body with `code`.
#[track_caller]
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["details"].is_object(), "{body}");
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

    /// GET `path` without a token → the response itself, headers and all.
    pub async fn fetch(&self, path: &str) -> Response {
        let r = self.request(Method::GET, path, None).send().await;
        r.expect("request")
    }

    /// POSTs `body` to `path` as `content_type` → (status, body).
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self.request(Method::POST, path, token);
        let r = r
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        parts(r.expect("request")).await
    }

    /// Sends `method` to `path` with `body` as JSON → (status, body).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let r = self.request(method, path, token).json(body).send().await;
        parts(r.expect("request")).await
    }

    /// GET `path` → (status, body).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let r = self.request(Method::GET, path, token).send().await;
        parts(r.expect("request")).await
    }

    /// POST `body` as JSON to `path` → (status, body).
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(Method::POST, path, token, body).await
    }

    /// PUT `body` as JSON to `path` as `token` → (status, body).
    pub async fn put(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(Method::PUT, path, Some(token), body).await
    }

    /// DELETE `path` as `token` → status.
    pub async fn delete(&self, path: &str, token: &str) -> u16 {
        let r = self.request(Method::DELETE, path, Some(token)).send().await;
        r.expect("delete").status().as_u16()
    }

    /// Tries to sign up with `body` → (status, body).
    pub async fn try_sign_up(&self, body: &Value) -> (u16, Value) {
        self.post("/api/auth/signup", None, body).await
    }

    /// Signs a new user up; returns (token, user).
    pub async fn sign_up(&self, email: &str) -> (String, Value) {
        let body = json!({ "email": email, "password": PASSWORD, "name": "Test User" });
        let (status, body) = self.try_sign_up(&body).await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"].as_str().expect("token").to_owned(),
            body["user"].clone(),
        )
    }

    /// Tries to sign in → (status, body).
    pub async fn try_sign_in(&self, email: &str, password: &str) -> (u16, Value) {
        let body = json!({ "email": email, "password": password });
        self.post("/api/auth/signin", None, &body).await
    }

    /// Signs in, expecting success; returns (token, user).
    pub async fn sign_in(&self, email: &str, password: &str) -> (String, Value) {
        let (status, body) = self.try_sign_in(email, password).await;
        assert_eq!(status, 200, "{body}");
        (
            body["token"].as_str().expect("token").to_owned(),
            body["user"].clone(),
        )
    }

    /// Signs the session of `token` out → status.
    pub async fn sign_out(&self, token: &str) -> u16 {
        let r = self.request(Method::POST, "/api/auth/signout", Some(token));
        r.send().await.expect("signout").status().as_u16()
    }

    /// Signs the operator of [`with_admin`] in; returns their token.
    pub async fn sign_in_admin(&self) -> String {
        self.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await.0
    }

    /// `GET /api/me` as `token`, expecting success; returns the user.
    pub async fn me(&self, token: &str) -> Value {
        let (status, me) = self.get("/api/me", Some(token)).await;
        assert_eq!(status, 200, "{me}");
        me["user"].clone()
    }

    /// `GET /api/billing/credit-history{query}`, expecting success.
    pub async fn credit_history(&self, token: &str, query: &str) -> Value {
        let path = format!("/api/billing/credit-history{query}");
        let (status, history) = self.get(&path, Some(token)).await;
        assert_eq!(status, 200, "{history}");
        history
    }

    /// Creates a chat; returns its id.
    pub async fn new_chat(&self, token: &str, title: &str) -> String {
        let (status, body) = self
            .post("/api/chats", Some(token), &json!({ "title": title }))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// Signs a new user up and creates their first chat; returns (token, user, chat id).
    pub async fn sign_up_with_chat(&self, email: &str, title: &str) -> (String, Value, String) {
        let (token, user) = self.sign_up(email).await;
        let chat = self.new_chat(&token, title).await;
        (token, user, chat)
    }

    /// Sends a message of `kind` to `chat`; returns it as answered.
    pub async fn send_message(&self, token: &str, chat: &str, content: &str, kind: &str) -> Value {
        let path = format!("/api/chats/{chat}/messages");
        let body = json!({ "content": content, "type": kind });
        let (status, body) = self.post(&path, Some(token), &body).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Registers a provider (seed 002) as `token` → (status, body).
    pub async fn add_provider(&self, token: &str, name: &str, endpoint: &str) -> (u16, Value) {
        let body = json!({ "name": name, "api_endpoint": endpoint });
        self.post("/chat/llm-providers", Some(token), &body).await
    }

    /// Stores `api_key` for `user_id` and `provider_id` (seed 002) as `token` → (status, body).
    pub async fn add_user_key(
        &self,
        token: &str,
        user_id: impl Serialize,
        provider_id: impl Serialize,
        api_key: &str,
    ) -> (u16, Value) {
        let body = json!({ "user_id": user_id, "provider_id": provider_id, "api_key": api_key });
        self.post("/chat/user-llm-configs", Some(token), &body)
            .await
    }

    /// A connection to the app's read models.
    pub async fn read_db(&self) -> ReadDb {
        match &self.database_url {
            Some(url) => ReadDb::Postgres(sqlx::PgPool::connect(url).await.expect("postgres")),
            None => ReadDb::Sqlite(sqlite(&self.data_dir.join("confab.db")).await),
        }
    }

    /// The app's event store, opened beside it (as another process would).
    pub async fn store(&self) -> std::sync::Arc<dyn confab_eventstore::EventStore> {
        use confab_eventstore::{Limits, postgres::PostgresStore, sqlite};
        match &self.database_url {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("postgres");
                std::sync::Arc::new(PostgresStore::open(pool, Limits::default()).await.unwrap())
            }
            None => {
                let url = format!("sqlite://{}", self.data_dir.join("confab.db").display());
                let options = sqlite::connect_options(&url).expect("sqlite url");
                let pool = sqlite::read_pool(options.clone()).await.expect("sqlite");
                std::sync::Arc::new(
                    sqlite::SqliteStore::open(options, pool, Limits::default())
                        .await
                        .unwrap(),
                )
            }
        }
    }

    /// Jobs in `queue` not yet finished (pending, running, or failed with attempts left).
    pub async fn unfinished_jobs(&self, queue: Queue) -> i64 {
        const UNFINISHED: &str = "(status IN ('Pending', 'Queued', 'Running') OR \
             (status = 'Failed' AND attempts < max_attempts))";
        let (file, sql) = match queue {
            Queue::Replies => (
                "jobs.db",
                format!("SELECT COUNT(*) FROM {{}} WHERE {UNFINISHED}"),
            ),
            Queue::Stripe => (
                "stripe-jobs.db",
                format!(
                    "SELECT COUNT(*) FROM {{}} WHERE job_type = 'process_stripe_event' AND \
                     {UNFINISHED}"
                ),
            ),
            Queue::Documents => (
                "document-jobs.db",
                format!(
                    "SELECT COUNT(*) FROM {{}} WHERE job_type = 'process_document' AND \
                     {UNFINISHED}"
                ),
            ),
        };
        // The reply and document queues move to PostgreSQL with the app; the Stripe queue is
        // always a file.
        let count = match (&self.database_url, queue) {
            (Some(url), Queue::Replies | Queue::Documents) => {
                let pool = sqlx::PgPool::connect(url).await.expect("postgres");
                let sql = sqlx::AssertSqlSafe(sql.replace("{}", "apalis.jobs"));
                sqlx::query_scalar(sql).fetch_one(&pool).await
            }
            _ => {
                let pool = sqlite(&self.data_dir.join(file)).await;
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.replace("{}", "Jobs")))
                    .fetch_one(&pool)
                    .await
            }
        };
        count.expect("count")
    }

    /// Waits until `queue` has no unfinished job (workers mark a job done just after its
    /// effects are readable).
    pub async fn drained(&self, queue: Queue) {
        let left = poll(
            PATIENCE,
            Duration::from_millis(25),
            || self.unfinished_jobs(queue),
            |n| *n == 0,
        )
        .await;
        assert_eq!(left, 0, "the {queue:?} queue did not drain");
    }

    /// Stops the server like [`TestApp::shutdown`] and hands back its directory, so that
    /// another instance can start on the same data.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        self.shutdown().await;
        dir
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

/// A job queue of the app.
#[derive(Debug, Clone, Copy)]
pub enum Queue {
    /// AI replies: `jobs.db` on the embedded default, the `apalis` schema on PostgreSQL.
    Replies,
    /// Stripe events: `stripe-jobs.db` in the data directory.
    Stripe,
    /// Document processing: `document-jobs.db` on the embedded default, the `apalis` schema
    /// on PostgreSQL.
    Documents,
}

async fn sqlite(path: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The longest a test waits for something that happens in the background.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Calls `probe` every `every` until `done` holds for its value or `patience` has passed;
/// returns the last value, for the caller to assert on.
pub async fn poll<T, F>(
    patience: Duration,
    every: Duration,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let value = probe().await;
        if done(&value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(every).await;
    }
}

/// A free port on 127.0.0.1, for a child process that must be told one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Whether `check` comes true within `patience`, asked every `every`.
pub async fn eventually<F>(patience: Duration, every: Duration, check: impl FnMut() -> F) -> bool
where
    F: Future<Output = bool>,
{
    poll(patience, every, check, |ok| *ok).await
}

/// Whether something accepts connections on `port` of 127.0.0.1 within 15 s.
pub async fn listening(port: u16) -> bool {
    let accepts = move || async move {
        let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        connected.is_ok()
    };
    eventually(Duration::from_secs(15), Duration::from_millis(50), accepts).await
}

/// Starts `command` with its output discarded; it is killed when the result is dropped.
pub fn spawn_quiet(command: &mut Command) -> Killed {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
    Killed(child)
}

/// A child process, killed when dropped.
pub struct Killed(pub Child);

impl Killed {
    /// Kills it now and waits for it to go.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `confab` binary of this build, without a database URL from the environment.
pub fn confab_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.env_remove("CONFAB_DATABASE_URL");
    cmd.env("CONFAB_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY);
    cmd
}

/// A PNG whose header says `w` x `h` (the body is not a real image: only the header is read).
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend(w.to_be_bytes());
    v.extend(h.to_be_bytes());
    v.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v.extend(b"\0\0\0\0IEND\xaeB`\x82");
    v
}
