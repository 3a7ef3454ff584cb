//! The load generator of the webhook benchmark (`bench/webhooks.sh`): `concurrency` clients send
//! `requests` validly signed deliveries of distinct Stripe events (one-time top-ups of one user,
//! so every event grants credits in the worker) to `POST /api/webhooks/stripe`, and, in the same
//! run, as many `GET /healthz` as the baseline. It prints throughput and latency percentiles of
//! each, their ratio, and how long the worker took to apply every event (the user's balance is
//! polled until it holds every grant).
//!
//! `cargo run --release --example webhook_load -- <base-url> <webhook-secret> <token> <user-id>
//! <price-id> <credits-per-event> [requests] [concurrency]`

use confab_testkit::stripe_fixtures;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What one phase measured.
struct Phase {
    name: &'static str,
    elapsed: Duration,
    latencies: Vec<Duration>,
    failures: usize,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn print(&self) {
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            self.name,
            self.latencies.len(),
            self.rate(),
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            ms(*self.latencies.last().unwrap_or(&Duration::ZERO)),
            self.failures,
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `total` requests made by `make(i)` over `concurrency` clients.
async fn run<F, Fut>(name: &'static str, total: usize, concurrency: usize, make: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut failures = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return (seen, failures);
                }
                let t = Instant::now();
                let ok = make(i).await;
                seen.push(t.elapsed());
                if !ok {
                    failures += 1;
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failures = 0;
    for t in tasks {
        let (seen, f) = t.await.expect("client task");
        latencies.extend(seen);
        failures += f;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Phase {
        name,
        elapsed,
        latencies,
        failures,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!(
            "usage: webhook_load <base-url> <webhook-secret> <token> <user-id> <price-id> \
             <credits-per-event> [requests] [concurrency]"
        );
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let secret = args[2].clone();
    let token = args[3].clone();
    let user = args[4].clone();
    let price = args[5].clone();
    let credits: i64 = args[6].parse().expect("credits per event");
    let requests: usize = args.get(7).map_or(5_000, |s| s.parse().expect("requests"));
    let concurrency: usize = args.get(8).map_or(50, |s| s.parse().expect("concurrency"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let me = |http: reqwest::Client, base: String, token: String| async move {
        let v: serde_json::Value = http
            .get(format!("{base}/api/me"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("me")
            .json()
            .await
            .expect("json");
        v["user"]["credits"].as_i64().expect("credits")
    };
    let before = me(http.clone(), base.clone(), token.clone()).await;

    // Warm the connections up on both routes.
    let warm = http.clone();
    let warm_base = base.clone();
    run("warm-up", 500, concurrency, move |_| {
        let (http, base) = (warm.clone(), warm_base.clone());
        async move { http.get(format!("{base}/healthz")).send().await.is_ok() }
    })
    .await;

    let h = http.clone();
    let hb = base.clone();
    let health = run(
        "GET /healthz (baseline)",
        requests,
        concurrency,
        move |_| {
            let (http, base) = (h.clone(), hb.clone());
            async move {
                http.get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        },
    )
    .await;

    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let w = http.clone();
    let wb = base.clone();
    let sent_at = Instant::now();
    let webhook = run(
        "POST /api/webhooks/stripe",
        requests,
        concurrency,
        move |i| {
            let (http, base) = (w.clone(), wb.clone());
            let now = chrono::Utc::now().timestamp();
            // A complete checkout session, as Stripe sends it: the worker parses it into
            // async-stripe's typed object, which a partial one would not satisfy.
            let mut session =
                stripe_fixtures::checkout_session(&format!("cs_bench_{run_id}_{i}"), "payment");
            stripe_fixtures::merge(
                &mut session,
                serde_json::json!({
                    "customer": null,
                    "client_reference_id": user,
                    "metadata": { "user_id": user, "price_id": price },
                }),
            );
            let body = stripe_fixtures::event(
                &format!("evt_bench_{run_id}_{i}"),
                "checkout.session.completed",
                now,
                session,
            )
            .to_string();
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
            mac.update(format!("{now}.{body}").as_bytes());
            let signature = format!("t={now},v1={}", hex::encode(mac.finalize().into_bytes()));
            async move {
                http.post(format!("{base}/api/webhooks/stripe"))
                    .header("stripe-signature", signature)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        },
    )
    .await;

    println!("requests per phase: {requests}, concurrency: {concurrency}");
    println!("| route | requests | requests/s | p50 | p99 | max | non-200 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    health.print();
    webhook.print();
    println!(
        "webhook throughput / baseline: {:.2}x; p99 webhook / baseline: {:.1}x",
        webhook.rate() / health.rate(),
        ms(webhook.percentile(0.99)) / ms(health.percentile(0.99)).max(f64::MIN_POSITIVE)
    );

    // The worker applies the events after the 200s: wait until every grant is in the balance.
    let expected = before + credits * (requests - webhook.failures) as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = me(http.clone(), base.clone(), token.clone()).await;
        if now >= expected {
            println!(
                "all {} events applied {:.1} s after the first delivery ({:.0} events/s end to end)",
                requests - webhook.failures,
                sent_at.elapsed().as_secs_f64(),
                (requests - webhook.failures) as f64 / sent_at.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > deadline {
            println!(
                "after 600 s the balance is {now}, {expected} expected: events still unapplied"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
