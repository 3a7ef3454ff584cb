//! Rate limiting over HTTP: exact counts at the window's edges, per IP and per user, route
//! groups, trusted proxies, two instances sharing one budget in Redis, and Redis going away
//! and coming back (fail-open and fail-closed).

use crate::helpers::{
    Db, Killed, TestApp, assert_error, eventually, free_port, listening, parts, spawn_app_with,
    spawn_quiet, test_config,
};
use confab::Config;
use confab::config::GroupLimits;
use reqwest::Method;
use std::process::Command;
use std::time::{Duration, Instant};

fn limits(per_ip: &str, per_user: &str) -> impl FnOnce(&mut Config) {
    let (per_ip, per_user) = (per_ip.to_owned(), per_user.to_owned());
    move |c| {
        c.rate_limit_enabled = true;
        c.rate_limit_per_ip = per_ip;
        c.rate_limit_per_user = per_user;
        c.rate_limit_groups = Default::default();
    }
}

/// GET `path` → (status, X-RateLimit-Limit, -Remaining, Retry-After).
async fn hit(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    forwarded_for: Option<&str>,
) -> (u16, Option<u64>, Option<u64>, Option<u64>) {
    let mut r = app.request(Method::GET, path, token);
    if let Some(xff) = forwarded_for {
        r = r.header("x-forwarded-for", xff);
    }
    let r = r.send().await.expect("request");
    let num = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let out = (
        r.status().as_u16(),
        num("x-ratelimit-limit"),
        num("x-ratelimit-remaining"),
        num("retry-after"),
    );
    if out.0 == 429 {
        let (_, body) = parts(r).await;
        assert_error(&body, "rate_limited");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_exact_and_the_budget_comes_back_as_the_window_slides() {
    let app = spawn_app_with(Db::Sqlite, limits("5/2s", "off")).await;
    let started = Instant::now();
    for i in 0..5 {
        let (s, limit, remaining, _) = hit(&app, "/api/chat", None, None).await;
        assert_eq!(
            (s, limit, remaining),
            (200, Some(5), Some(4 - i)),
            "request {i}"
        );
    }
    let r = app.fetch("/api/chat").await;
    assert_eq!(r.status(), 429);
    let reset: u64 = r.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reset >= now && reset <= now + 3,
        "reset {reset} vs now {now}"
    );
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    let (_, body) = parts(r).await;
    assert_error(&body, "rate_limited");
    assert_eq!(body["error"]["details"]["limit"], 5);
    // Still refused just before the first request leaves the window ...
    if started.elapsed() < Duration::from_millis(1_700) {
        tokio::time::sleep(Duration::from_millis(1_700) - started.elapsed()).await;
        assert_eq!(hit(&app, "/api/chat", None, None).await.0, 429);
    }
    // ... and once the window has slid past all five, the whole budget is back.
    tokio::time::sleep(Duration::from_millis(2_100).saturating_sub(started.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for i in 0..5 {
        assert_eq!(hit(&app, "/api/chat", None, None).await.0, 200, "again {i}");
    }
    assert_eq!(hit(&app, "/api/chat", None, None).await.0, 429);
    // Operational routes are never limited and carry no budget.
    let (s, limit, ..) = hit(&app, "/healthz", None, None).await;
    assert_eq!((s, limit), (200, None));
    let metrics = app.fetch("/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("confab_rate_limited_total"), "{text}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_budget_of_their_own() {
    let app = spawn_app_with(Db::Sqlite, limits("off", "3/10s")).await;
    let (alice, _) = app.sign_up("alice-rl@example.com").await;
    let (bob, _) = app.sign_up("bob-rl@example.com").await;
    for i in 0..3 {
        let (s, limit, remaining, _) = hit(&app, "/api/me", Some(&alice), None).await;
        assert_eq!((s, limit, remaining), (200, Some(3), Some(2 - i)));
    }
    let (s, _, remaining, retry) = hit(&app, "/api/me", Some(&alice), None).await;
    assert_eq!((s, remaining), (429, Some(0)));
    assert!(retry.is_some_and(|r| (1..=10).contains(&r)), "{retry:?}");
    // Bob is untouched; an anonymous request has no user budget at all.
    assert_eq!(hit(&app, "/api/me", Some(&bob), None).await.0, 200);
    let (s, limit, ..) = hit(&app, "/api/chat", None, None).await;
    assert_eq!((s, limit), (200, None));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_groups_have_their_own_budgets() {
    let app = spawn_app_with(Db::Sqlite, |c| {
        limits("4/1m", "off")(c);
        c.rate_limit_groups.insert(
            "auth".into(),
            GroupLimits {
                per_ip: Some("2/1m".into()),
                per_user: None,
            },
        );
    })
    .await;
    let signin = |n: u32| {
        app.request(Method::POST, "/api/auth/signin", None)
            .json(&serde_json::json!({ "email": format!("nobody{n}@example.com"), "password": "wrong password" }))
            .send()
    };
    for n in 0..2 {
        let r = signin(n).await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    }
    let r = signin(3).await.unwrap();
    assert_eq!(r.status(), 429);
    // The default group's budget is separate and untouched.
    let (s, limit, remaining, _) = hit(&app, "/api/chat", None, None).await;
    assert_eq!((s, limit, remaining), (200, Some(4), Some(3)));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let trusted = spawn_app_with(Db::Sqlite, |c| {
        limits("2/1m", "off")(c);
        c.trusted_proxies = "127.0.0.1/32".into();
    })
    .await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..2 {
            assert_eq!(hit(&trusted, "/api/chat", None, Some(client)).await.0, 200);
        }
        assert_eq!(hit(&trusted, "/api/chat", None, Some(client)).await.0, 429);
    }
    trusted.shutdown().await;

    let untrusted = spawn_app_with(Db::Sqlite, limits("2/1m", "off")).await;
    assert_eq!(
        hit(&untrusted, "/api/chat", None, Some("203.0.113.1"))
            .await
            .0,
        200
    );
    assert_eq!(
        hit(&untrusted, "/api/chat", None, Some("203.0.113.2"))
            .await
            .0,
        200
    );
    // A client cannot buy a fresh budget by making up a header.
    assert_eq!(
        hit(&untrusted, "/api/chat", None, Some("203.0.113.3"))
            .await
            .0,
        429
    );
    untrusted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rate_settings_are_refused_at_start_with_the_setting_named() {
    for (tweak, expected) in [
        (
            Box::new(|c: &mut Config| c.rate_limit_per_ip = "10 per second".into())
                as Box<dyn FnOnce(&mut Config)>,
            "CONFAB_RATE_LIMIT_PER_IP",
        ),
        (
            Box::new(|c: &mut Config| c.rate_limit_backend = "memcached".into()),
            "CONFAB_RATE_LIMIT_BACKEND",
        ),
        (
            Box::new(|c: &mut Config| {
                c.rate_limit_backend = "redis".into();
                c.redis_url = None;
            }),
            "CONFAB_REDIS_URL",
        ),
        (
            Box::new(|c: &mut Config| c.trusted_proxies = "10.0.0.0/8,proxy.local".into()),
            "CONFAB_TRUSTED_PROXIES",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(None, dir.path());
        config.rate_limit_enabled = true;
        tweak(&mut config);
        let err = confab::Application::build(config)
            .await
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }
}

/// A private Redis server on a free port, so the test can stop and restart it.
struct Redis {
    port: u16,
    server: Option<Killed>,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        // redis-server must be installed for this test (apt-get install redis-server).
        let server = spawn_quiet(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"]),
        );
        assert!(
            listening(port).await,
            "redis-server did not start on port {port}"
        );
        Redis {
            port,
            server: Some(server),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        self.server.take();
    }
}

fn on_redis(url: String, per_ip: &'static str, fail_open: bool) -> impl FnOnce(&mut Config) {
    move |c| {
        limits(per_ip, "off")(c);
        c.rate_limit_backend = "redis".into();
        c.redis_url = Some(url.into());
        c.rate_limit_fail_open = fail_open;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_share_one_budget() {
    let redis = Redis::start(free_port()).await;
    let a = spawn_app_with(Db::Sqlite, on_redis(redis.url(), "4/1m", true)).await;
    let b = spawn_app_with(Db::Sqlite, on_redis(redis.url(), "4/1m", true)).await;
    let mut remaining = Vec::new();
    for app in [&a, &b, &a, &b] {
        let (s, limit, left, _) = hit(app, "/api/chat", None, None).await;
        assert_eq!((s, limit), (200, Some(4)));
        remaining.push(left.unwrap());
    }
    assert_eq!(remaining, vec![3, 2, 1, 0]);
    assert_eq!(hit(&a, "/api/chat", None, None).await.0, 429);
    assert_eq!(hit(&b, "/api/chat", None, None).await.0, 429);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_the_api_keeps_serving_and_recovers_on_its_own() {
    let port = free_port();
    let mut redis = Redis::start(port).await;
    let open = spawn_app_with(Db::Sqlite, on_redis(redis.url(), "1000/1m", true)).await;
    let closed = spawn_app_with(Db::Sqlite, on_redis(redis.url(), "1000/1m", false)).await;
    let (s, limit, ..) = hit(&open, "/api/chat", None, None).await;
    assert_eq!((s, limit), (200, Some(1000)));

    redis.kill();
    // Fail-open: served, without a budget to report; fail-closed: 503 with the error body.
    let started = Instant::now();
    let (s, limit, ..) = hit(&open, "/api/chat", None, None).await;
    assert_eq!((s, limit), (200, None));
    assert!(started.elapsed() < Duration::from_secs(2), "no long stall");
    let r = closed.fetch("/api/chat").await;
    assert_eq!(r.status(), 503);
    let (_, body) = parts(r).await;
    assert_error(&body, "unavailable");
    let metrics = open.fetch("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("confab_rate_limit_backend_errors_total"),
        "{metrics}"
    );

    let _redis = Redis::start(port).await;
    let (open_app, closed_app) = (&open, &closed);
    let both_back = move || async move {
        let (s, limit, ..) = hit(open_app, "/api/chat", None, None).await;
        assert_eq!(s, 200);
        let (closed_status, ..) = hit(closed_app, "/api/chat", None, None).await;
        limit == Some(1000) && closed_status == 200
    };
    let recovered = eventually(
        Duration::from_secs(15),
        Duration::from_millis(250),
        both_back,
    )
    .await;
    assert!(recovered, "both instances use Redis again once it is back");
    open.shutdown().await;
    closed.shutdown().await;
}
