//! The scenarios. Each returns the invariants it found broken (empty: all held) and prints
//! what it measured on the way.

use crate::client::{self, Outcome, User};
use crate::procs::{Confab, Db, PgDatabase, PrivatePostgres, PrivateRedis, Scratch};
use anyhow::{Context, Result};
use confab_testkit::openai::{Act, OpenAiStandIn};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

/// What every scenario needs.
pub struct Ctx {
    pub confab: PathBuf,
    pub postgres_url: String,
}

/// A scenario's broken invariants, in words.
pub type Failures = Vec<String>;

/// A server with its data: a scratch directory, and on PostgreSQL a fresh database.
struct Site {
    scratch: Scratch,
    pg: Option<PgDatabase>,
}

impl Site {
    fn new(ctx: &Ctx, db: Db, label: &str) -> Result<Site> {
        let scratch = Scratch::new(label)?;
        let pg = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(PgDatabase::create(&ctx.postgres_url)?),
        };
        Ok(Site { scratch, pg })
    }

    fn server(&self, ctx: &Ctx, env: &[(&str, String)]) -> Result<Confab> {
        let mut all: Vec<(&str, String)> = env.to_vec();
        if let Some(pg) = &self.pg {
            all.push(("CONFAB_DATABASE_URL", pg.url()));
        }
        Confab::new(&ctx.confab, &self.scratch.0, &all)
    }
}

/// One writer: a user posting numbered messages to a chat of their own, each with a fresh
/// `Idempotency-Key`, and what the server acknowledged.
struct Writer {
    user: User,
    chat: String,
    label: String,
    next: u64,
    /// Contents acknowledged with a 2xx.
    acked: Vec<String>,
    /// A write sent whose answer never came: retried with the same key later.
    pending: Option<(String, Uuid)>,
    /// Every answer, with when its request was sent and when the answer came.
    seen: Vec<(Instant, Instant, Outcome)>,
    /// The longest wait for an answer.
    slowest: Duration,
}

impl Writer {
    async fn new(base: &str, i: usize) -> Result<Writer> {
        let user = client::sign_up(
            base,
            &format!("writer{i}-{}@example.com", Uuid::now_v7().simple()),
        )
        .await?;
        let chat = user.create_chat(&format!("writer {i}")).await?;
        Ok(Writer {
            user,
            chat,
            label: format!("w{i}"),
            next: 0,
            acked: Vec::new(),
            pending: None,
            seen: Vec::new(),
            slowest: Duration::ZERO,
        })
    }

    /// The next write: the pending one, or a new one.
    fn take_next(&mut self) -> (String, Uuid) {
        self.pending.take().unwrap_or_else(|| {
            self.next += 1;
            (
                format!(
                    "{} message {} {}",
                    self.label,
                    self.next,
                    Uuid::now_v7().simple()
                ),
                Uuid::now_v7(),
            )
        })
    }

    /// Writes until `stop`. Without `persist`, a write without an answer (the server died)
    /// is kept pending and the writer stops; with it, a write that failed (no answer, 503, an
    /// in-progress 409, a 429) is retried with the same key after a pause, as a client would.
    async fn run(&mut self, stop: &AtomicBool, persist: bool) {
        while !stop.load(Ordering::Relaxed) {
            let (content, key) = self.take_next();
            let sent = Instant::now();
            let outcome = self.user.post_message(&self.chat, &content, key).await;
            self.slowest = self.slowest.max(sent.elapsed());
            self.seen.push((sent, Instant::now(), outcome));
            match outcome {
                Outcome::Status(s) if (200..300).contains(&s) => self.acked.push(content),
                Outcome::NoAnswer if !persist => {
                    self.pending = Some((content, key));
                    return;
                }
                _ => {
                    self.pending = Some((content, key));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Retries the pending write with its key until it is acknowledged (within `within`).
    async fn settle(&mut self, within: Duration) -> Option<String> {
        let started = Instant::now();
        while let Some((content, key)) = self.pending.clone() {
            let sent = Instant::now();
            let outcome = self.user.post_message(&self.chat, &content, key).await;
            self.seen.push((sent, Instant::now(), outcome));
            if let Outcome::Status(s) = outcome
                && (200..300).contains(&s)
            {
                self.acked.push(content);
                self.pending = None;
                return None;
            }
            if started.elapsed() > within {
                return Some(format!(
                    "{}: a write retried with its Idempotency-Key for {within:?} was never \
                     acknowledged (last answer {outcome:?})",
                    self.label
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Every acknowledged write is in the chat exactly once, and nothing is there twice.
    async fn check(&self) -> Result<Failures> {
        let messages = self.user.messages(&self.chat).await?;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for m in &messages {
            *counts.entry(m.content.as_str()).or_default() += 1;
        }
        let mut failures = Failures::new();
        for c in &self.acked {
            match counts.get(c.as_str()) {
                None => failures.push(format!("{}: acknowledged write lost: {c:?}", self.label)),
                Some(1) => {}
                Some(n) => failures.push(format!("{}: write stored {n} times: {c:?}", self.label)),
            }
        }
        for (c, n) in &counts {
            if *n > 1 && !self.acked.iter().any(|a| a == c) {
                failures.push(format!(
                    "{}: unacknowledged write stored {n} times: {c:?}",
                    self.label
                ));
            }
        }
        Ok(failures)
    }
}

/// Counts of answers by kind, for the report.
fn tally<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        let k = match o {
            Outcome::Status(s) => s.to_string(),
            Outcome::NoAnswer => "no answer".to_owned(),
        };
        *t.entry(k).or_default() += 1;
    }
    t
}

fn show(t: &BTreeMap<String, u64>) -> String {
    t.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn writers(base: &str, n: usize) -> Result<Vec<Arc<Mutex<Writer>>>> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(Arc::new(Mutex::new(Writer::new(base, i).await?)));
    }
    Ok(all)
}

/// Runs every writer until `stop` is set; returns their tasks.
fn spawn_writers(
    all: &[Arc<Mutex<Writer>>],
    stop: &Arc<AtomicBool>,
    persist: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    all.iter()
        .map(|w| {
            let (w, stop) = (w.clone(), stop.clone());
            tokio::spawn(async move { w.lock().await.run(&stop, persist).await })
        })
        .collect()
}

/// Every message of every writer's chat, by chat.
async fn snapshot(all: &[Arc<Mutex<Writer>>]) -> Result<BTreeMap<String, Vec<client::Message>>> {
    let mut s = BTreeMap::new();
    for w in all {
        let w = w.lock().await;
        s.insert(w.chat.clone(), w.user.messages(&w.chat).await?);
    }
    Ok(s)
}

/// Each writer's invariants, and the whole tally.
async fn check_writers(all: &[Arc<Mutex<Writer>>]) -> Result<(Failures, u64)> {
    let mut failures = Failures::new();
    let mut acked = 0;
    for w in all {
        let w = w.lock().await;
        acked += w.acked.len() as u64;
        failures.extend(w.check().await?);
    }
    Ok((failures, acked))
}

/// Points every writer at `base` (a restarted server's port may differ).
async fn retarget(all: &[Arc<Mutex<Writer>>], base: &str) {
    for w in all {
        let mut w = w.lock().await;
        w.user = w.user.on(base);
    }
}

pub async fn kill9(ctx: &Ctx, db: Db, n: usize, rounds: u32) -> Result<Failures> {
    println!("# kill -9 of serve under {n} writers, {rounds} rounds, on {db:?}\n");
    let site = Site::new(ctx, db, "kill9")?;
    let mut server = site.server(ctx, &[])?;
    server.start().await?;
    let all = writers(&server.base(), n).await?;
    let mut failures = Failures::new();
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = spawn_writers(&all, &stop, false);
        let load = Duration::from_millis(1000 + u64::from(Uuid::now_v7().as_u128() as u16) % 2000);
        tokio::time::sleep(load).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let pending = {
            let mut p = 0;
            for w in &all {
                p += u64::from(w.lock().await.pending.is_some());
            }
            p
        };
        let restarted = Instant::now();
        server.start().await?;
        let ready = restarted.elapsed();
        retarget(&all, &server.base()).await;
        for w in &all {
            if let Some(f) = w.lock().await.settle(Duration::from_secs(60)).await {
                failures.push(f);
            }
        }
        let (broken, acked) = check_writers(&all).await?;
        println!(
            "round {round}: killed after {load:?} of load; {pending} writes in flight, retried \
             with their keys; ready again in {ready:.1?}; {acked} writes acknowledged so far; {} \
             broken invariants",
            broken.len()
        );
        failures.extend(broken);
    }
    let mut outcomes = Vec::new();
    for w in &all {
        outcomes.extend(w.lock().await.seen.iter().map(|(_, _, o)| *o));
    }
    println!("answers: {}", show(&tally(outcomes.iter())));
    for o in &outcomes {
        if let Outcome::Status(s) = o
            && *s >= 500
            && *s != 503
        {
            failures.push(format!("a write answered {s}"));
        }
    }
    // The read models equal a replay of the log: rebuild them all and compare.
    let before = snapshot(&all).await?;
    server.stop().await;
    let started = Instant::now();
    server
        .run(&["projections", "rebuild"])
        .context("confab projections rebuild")?;
    println!(
        "rebuilt every projection from the log in {:.1?}",
        started.elapsed()
    );
    server.start().await?;
    retarget(&all, &server.base()).await;
    let after = snapshot(&all).await?;
    let messages: usize = after.values().map(Vec::len).sum();
    if before == after {
        println!(
            "read models after the rebuild equal those before: {messages} messages in {n} chats"
        );
    } else {
        for (chat, msgs) in &before {
            if after.get(chat) != Some(msgs) {
                failures.push(format!(
                    "chat {chat}: {} messages served before a rebuild from the log, {} after, or \
                     different ones",
                    msgs.len(),
                    after.get(chat).map_or(0, Vec::len)
                ));
            }
        }
    }
    server.stop().await;
    Ok(failures)
}

pub async fn postgres_restart(ctx: &Ctx, n: usize, down_secs: u64) -> Result<Failures> {
    println!("# PostgreSQL crashed for {down_secs} s under {n} writers\n");
    let scratch = Scratch::new("pg-restart")?;
    let pg = PrivatePostgres::start_new(&scratch.0)?;
    let database = PgDatabase::create(&pg.url())?;
    let mut server = Confab::new(
        &ctx.confab,
        &scratch.0,
        &[("CONFAB_DATABASE_URL", database.url())],
    )?;
    server.start().await?;
    let all = writers(&server.base(), n).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_writers(&all, &stop, true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let crashed = Instant::now();
    pg.crash()?;
    // While it is down: what /readyz and the writers see.
    let http = reqwest::Client::new();
    let mut readyz = BTreeMap::<String, u64>::new();
    while crashed.elapsed() < Duration::from_secs(down_secs) {
        let k = match http
            .get(format!("{}/readyz", server.base()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16().to_string(),
            Err(_) => "no answer".to_owned(),
        };
        *readyz.entry(k).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restarted = Instant::now();
    pg.start()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let mut failures = Failures::new();
    for w in &all {
        if let Some(f) = w.lock().await.settle(Duration::from_secs(60)).await {
            failures.push(f);
        }
    }
    if !server.alive() {
        failures.push("serve exited while PostgreSQL was down".into());
    }
    // Answers by phase, and how long after PostgreSQL came back the first write succeeded.
    let (mut down, mut up) = (Vec::new(), Vec::new());
    let mut recovered: Option<Duration> = None;
    for w in &all {
        for (at, _, o) in &w.lock().await.seen {
            if *at < crashed {
                continue;
            }
            if *at < restarted {
                down.push(*o);
            } else {
                up.push(*o);
                if matches!(o, Outcome::Status(s) if (200..300).contains(s)) {
                    let t = *at - restarted;
                    recovered = Some(recovered.map_or(t, |r| r.min(t)));
                }
            }
        }
    }
    let mut slowest = Duration::ZERO;
    for w in &all {
        slowest = slowest.max(w.lock().await.slowest);
    }
    println!(
        "while down: writes {}; /readyz {}",
        show(&tally(down.iter())),
        show(&readyz)
    );
    println!("slowest answer to a write: {slowest:.1?}");
    println!(
        "after the restart: writes {}; first acknowledged write {}",
        show(&tally(up.iter())),
        recovered.map_or("never".to_owned(), |d| format!(
            "{d:.1?} after PostgreSQL started"
        ))
    );
    for o in down.iter().chain(up.iter()) {
        match o {
            Outcome::Status(s) if *s >= 500 && *s != 503 => {
                failures.push(format!(
                    "a write answered {s} (PostgreSQL down or restarting)"
                ));
            }
            Outcome::NoAnswer => {
                failures.push("a write got no answer within 30 s around the outage".into());
            }
            _ => {}
        }
    }
    if !down.contains(&Outcome::Status(503)) {
        failures.push("no write answered 503 while PostgreSQL was down".into());
    }
    if readyz.keys().any(|k| k != "503") {
        failures.push(format!(
            "/readyz answered other than 503 while PostgreSQL was down: {}",
            show(&readyz)
        ));
    }
    if recovered.is_none() {
        failures.push("no write succeeded after PostgreSQL came back".into());
    }
    failures.dedup();
    // Projections catch up, then every acknowledged write is there once.
    server.ready(Duration::from_secs(60)).await?;
    let (broken, acked) = check_writers(&all).await?;
    println!(
        "{acked} writes acknowledged in all; {} broken invariants",
        broken.len()
    );
    failures.extend(broken);
    server.stop().await;
    drop(database);
    Ok(failures)
}

pub async fn redis_kill(ctx: &Ctx, n: usize, down_secs: u64, fail_open: bool) -> Result<Failures> {
    println!(
        "# Redis (rate-limit budgets) killed for {down_secs} s under {n} writers, fail-open {fail_open}\n"
    );
    let scratch = Scratch::new("redis-kill")?;
    let mut redis = PrivateRedis::start_new().await?;
    // Sign-ins get a tight budget: proof that limits apply (again) through Redis.
    let config = scratch.0.join("confab.toml");
    std::fs::write(&config, "[rate_limit_groups.auth]\nper_ip = \"40/1m\"\n")?;
    let mut server = Confab::new(
        &ctx.confab,
        &scratch.0,
        &[
            ("CONFAB_CONFIG", config.display().to_string()),
            ("CONFAB_RATE_LIMIT_ENABLED", "true".into()),
            ("CONFAB_RATE_LIMIT_BACKEND", "redis".into()),
            ("CONFAB_REDIS_URL", redis.url()),
            ("CONFAB_RATE_LIMIT_PER_IP", "off".into()),
            ("CONFAB_RATE_LIMIT_PER_USER", "100000/10s".into()),
            ("CONFAB_RATE_LIMIT_FAIL_OPEN", fail_open.to_string()),
        ],
    )?;
    server.start().await?;
    let all = writers(&server.base(), n).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_writers(&all, &stop, true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.kill9();
    // Requests sent from here on meet no Redis (those in flight at the kill count as before).
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(down_secs)).await;
    let restarted = Instant::now();
    redis.start().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let mut failures = Failures::new();
    for w in &all {
        if let Some(f) = w.lock().await.settle(Duration::from_secs(30)).await {
            failures.push(f);
        }
    }
    let (mut before, mut down, mut up) = (Vec::new(), Vec::new(), Vec::new());
    let mut straddling = Vec::new();
    let mut recovered: Option<Duration> = None;
    for w in &all {
        for (at, answered, o) in &w.lock().await.seen {
            if *at < killed {
                before.push(*o);
            } else if *answered < restarted {
                down.push(*o);
            } else {
                // Sent during the outage but answered after Redis was started again: the
                // limiter may have reached the new Redis (its reconnection waits up to its
                // time-out), so the request counts with those that found Redis up.
                up.push(*o);
                if *at < restarted {
                    straddling.push(*o);
                }
                if matches!(o, Outcome::Status(s) if (200..300).contains(s)) {
                    let t = answered.saturating_duration_since(restarted);
                    recovered = Some(recovered.map_or(t, |r| r.min(t)));
                }
            }
        }
    }
    println!("before: writes {}", show(&tally(before.iter())));
    println!("while Redis was down: writes {}", show(&tally(down.iter())));
    println!(
        "after Redis came back: writes {} (of which sent while it was down: {}); first acknowledged {}",
        show(&tally(up.iter())),
        show(&tally(straddling.iter())),
        recovered.map_or("never".to_owned(), |d| format!("{d:.1?} after it started"))
    );
    let served = down
        .iter()
        .filter(|o| matches!(o, Outcome::Status(s) if (200..300).contains(s)))
        .count();
    let refused = down.iter().filter(|o| **o == Outcome::Status(503)).count();
    if fail_open && (served == 0 || refused > 0) {
        failures.push(format!(
            "fail-open: while Redis was down {served} writes were served and {refused} refused with 503"
        ));
    }
    if !fail_open && (served > 0 || refused == 0) {
        failures.push(format!(
            "fail-closed: while Redis was down {served} writes were served and {refused} refused with 503"
        ));
    }
    for o in down.iter().chain(up.iter()).chain(before.iter()) {
        match o {
            Outcome::Status(s) if *s >= 500 && *s != 503 => {
                failures.push(format!("a write answered {s}"))
            }
            Outcome::NoAnswer => failures.push("a write got no answer".into()),
            _ => {}
        }
    }
    if recovered.is_none() {
        failures.push("no write succeeded after Redis came back".into());
    }
    failures.dedup();
    // Limits apply again through Redis: sign-ins beyond the budget are refused.
    let http = reqwest::Client::new();
    let mut signins = BTreeMap::<String, u64>::new();
    for _ in 0..50 {
        let s = http
            .post(format!("{}/api/auth/signin", server.base()))
            .json(&serde_json::json!({"email": "nobody@example.com", "password": "not a password at all"}))
            .send()
            .await?
            .status()
            .as_u16();
        *signins.entry(s.to_string()).or_default() += 1;
    }
    println!(
        "50 sign-ins after recovery (budget 40/1m): {}",
        show(&signins)
    );
    if !signins.contains_key("429") {
        failures.push("the sign-in budget was not enforced after Redis came back".into());
    }
    let (broken, acked) = check_writers(&all).await?;
    println!(
        "{acked} writes acknowledged in all; {} broken invariants",
        broken.len()
    );
    failures.extend(broken);
    server.stop().await;
    Ok(failures)
}

/// One upstream behaviour, what the stand-in does for it, and what the client must see.
struct Case {
    name: &'static str,
    acts: Vec<Act>,
    /// The reply text before any marker.
    text: &'static str,
    /// Whether the reply must end with the interruption marker.
    interrupted: bool,
    /// Whether the user is charged for it.
    charged: bool,
}

const MARKER: &str = "[reply interrupted";

pub async fn upstream(ctx: &Ctx, db: Db) -> Result<Failures> {
    println!("# streamed replies against a failing upstream, on {db:?}\n");
    let openai = OpenAiStandIn::start().await;
    openai.always(Act::reply(&["fallback"], (5, 1), Duration::from_millis(1)));
    let site = Site::new(ctx, db, "upstream")?;
    let mut server = site.server(
        ctx,
        &[
            ("OPENAI_BASE_URL", openai.base_url().to_owned()),
            ("OPENAI_API_KEY", "sk-reliability-suite".into()),
            ("CONFAB_LLM_FIRST_TOKEN_TIMEOUT_MS", "2000".into()),
            ("CONFAB_LLM_IDLE_TIMEOUT_MS", "2000".into()),
            ("CONFAB_LLM_RETRIES", "1".into()),
            ("CONFAB_LLM_BACKOFF_MS", "100".into()),
        ],
    )?;
    server.start().await?;
    let user = client::sign_up(&server.base(), "upstream@example.com").await?;
    let start_credits = user.credits().await?;
    let ok = |p: &[&str]| Act::reply(p, (20, 4), Duration::from_millis(5));
    let cases = vec![
        Case {
            name: "hangs before the first token, twice",
            acts: vec![Act::Hang, Act::Hang],
            text: "",
            interrupted: true,
            charged: false,
        },
        Case {
            name: "answers 500, twice",
            acts: vec![Act::Status(500), Act::Status(500)],
            text: "",
            interrupted: true,
            charged: false,
        },
        Case {
            name: "answers 429, then replies",
            acts: vec![Act::Status(429), ok(&["Fine", " after", " all."])],
            text: "Fine after all.",
            interrupted: false,
            charged: true,
        },
        Case {
            name: "resets the connection mid-stream",
            acts: vec![Act::broken(&["Partial", " answer"])],
            text: "Partial answer",
            interrupted: true,
            charged: true,
        },
        Case {
            name: "stalls mid-stream",
            acts: vec![Act::Stall(vec!["Half".into(), " way".into()])],
            text: "Half way",
            interrupted: true,
            charged: true,
        },
        Case {
            name: "replies normally",
            acts: vec![ok(&["All", " good."])],
            text: "All good.",
            interrupted: false,
            charged: true,
        },
    ];
    let mut failures = Failures::new();
    let mut charged_replies = Vec::new();
    println!("| upstream | status | ended in | reply as streamed |");
    println!("| --- | ---: | ---: | --- |");
    for case in &cases {
        for act in &case.acts {
            openai.then(act.clone());
        }
        let seen = user.chat(case.name, Duration::from_secs(30)).await?;
        println!(
            "| {} | {} | {:.1?} | {:?} |",
            case.name, seen.status, seen.took, seen.text
        );
        if seen.status != 200 || !seen.ended {
            failures.push(format!(
                "{}: status {}, ended {}",
                case.name, seen.status, seen.ended
            ));
            continue;
        }
        if !seen.text.starts_with(case.text) {
            failures.push(format!(
                "{}: the reply {:?} does not start with {:?}",
                case.name, seen.text, case.text
            ));
        }
        if seen.text.contains(MARKER) != case.interrupted {
            failures.push(format!(
                "{}: the reply {:?} {} the interruption marker",
                case.name,
                seen.text,
                if case.interrupted { "lacks" } else { "has" }
            ));
        }
        if case.charged {
            charged_replies.push(case.name);
        }
        // What was stored is what was streamed.
        let chat = seen.chat_id.context("x-chat-id")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stored = user.messages(&chat).await?;
        let reply = stored.iter().find(|m| m.role == "assistant");
        match (reply, case.text.is_empty()) {
            (Some(m), false) if m.content.trim_end() == seen.text.trim_end() => {}
            (None, true) => {}
            (m, _) => failures.push(format!(
                "{}: stored reply {:?}, streamed {:?}",
                case.name,
                m.map(|m| &m.content),
                seen.text
            )),
        }
    }
    // Credits: one usage transaction per reply that produced text, none for the others, and the
    // balance is the start less exactly those.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = user.credit_history().await?;
    let usage: Vec<_> = history.iter().filter(|t| t["type"] == "usage").collect();
    let spent: i64 = usage
        .iter()
        .map(|t| t["amount"].as_i64().unwrap_or(0).abs())
        .sum();
    let end_credits = user.credits().await?;
    println!(
        "\ncredits: {start_credits} at the start, {end_credits} at the end; {} usage transactions \
         totalling {spent}",
        usage.len()
    );
    if usage.len() != charged_replies.len() {
        failures.push(format!(
            "{} usage transactions for {} replies that produced text",
            usage.len(),
            charged_replies.len()
        ));
    }
    if start_credits - spent != end_credits {
        failures.push(format!(
            "the balance {end_credits} is not the start {start_credits} less the usage {spent}: \
             a reservation was kept or released twice"
        ));
    }
    // Every provider call was answered or abandoned: a reply that still holds credits would
    // show as a balance below what the history says.
    let calls = openai.requests().len();
    let scripted: usize = cases.iter().map(|c| c.acts.len()).sum();
    println!("upstream calls: {calls} (scripted {scripted})");
    if calls != scripted {
        failures.push(format!(
            "{calls} upstream calls for {scripted} scripted answers"
        ));
    }
    // No job left behind: a reply after all these still streams at once.
    let last = user
        .chat("one more, after the failures", Duration::from_secs(10))
        .await?;
    if last.status != 200 || last.text != "fallback" {
        failures.push(format!(
            "a reply after the failures: {} {:?}",
            last.status, last.text
        ));
    }
    server.stop().await;
    Ok(failures)
}

/// One request of the soak: when it started (seconds since the start), what it was, its
/// latency and status (0: no answer).
struct Sample {
    at: f64,
    kind: &'static str,
    latency: Duration,
    status: u16,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub async fn soak(ctx: &Ctx, db: Db, minutes: f64, rate: u32) -> Result<Failures> {
    use confab_testkit::{stripe, stripe_fixtures};
    println!("# soak: {minutes} min of mixed traffic at {rate} requests/s on {db:?}\n");
    let openai = OpenAiStandIn::start().await;
    openai.always(Act::reply(
        &["A", " steady", " reply."],
        (30, 3),
        Duration::from_millis(20),
    ));
    let site = Site::new(ctx, db, "soak")?;
    let config = site.scratch.0.join("confab.toml");
    // Enough credits that a steady stream of replies never runs anyone dry.
    std::fs::write(
        &config,
        "[[catalogue.tiers]]\nname = \"free\"\nstarting_credits = 100000000\nmonthly_credits = 1000\n\n\
         [[catalogue.tiers]]\nname = \"pro\"\nstarting_credits = 100000000\nmonthly_credits = 1000\n",
    )?;
    let mut server = site.server(
        ctx,
        &[
            ("CONFAB_CONFIG", config.display().to_string()),
            ("OPENAI_BASE_URL", openai.base_url().to_owned()),
            ("OPENAI_API_KEY", "sk-reliability-suite".into()),
            ("STRIPE_WEBHOOK_SECRET", stripe::WEBHOOK_SECRET.into()),
        ],
    )?;
    server.start().await?;
    let base = server.base();
    let mut users = Vec::new();
    for i in 0..20 {
        let email = format!("soak{i}@example.com");
        let u = client::sign_up(&base, &email).await?;
        let chat = u.create_chat("soak").await?;
        users.push((email, u, chat));
    }
    let users = Arc::new(users);
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
    let started = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut rss = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut last_rss = Instant::now() - Duration::from_secs(60);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    while started.elapsed() < total {
        tick.tick().await;
        n += 1;
        if last_rss.elapsed() >= Duration::from_secs(10) {
            last_rss = Instant::now();
            rss.push((
                started.elapsed().as_secs_f64(),
                server.rss_kib().unwrap_or(0),
            ));
        }
        let (users, samples, http, base) =
            (users.clone(), samples.clone(), http.clone(), base.clone());
        let at = started.elapsed().as_secs_f64();
        tokio::spawn(async move {
            let (email, user, chat) = &users[(n % users.len() as u64) as usize];
            let t = Instant::now();
            let word = ["alpha", "bravo", "charlie", "delta", "echo"][(n % 5) as usize];
            let (kind, sent) = match n % 20 {
                0 => ("sign-in", http.post(format!("{base}/api/auth/signin")).json(&serde_json::json!({"email": email, "password": "reliability suite password"})).send().await),
                1 => ("webhook", {
                    let event = stripe_fixtures::event(&format!("evt_soak_{n}"), "customer.created", chrono::Utc::now().timestamp(), stripe_fixtures::customer(&format!("cus_soak_{n}"), chrono::Utc::now().timestamp()));
                    let body = event.to_string();
                    http.post(format!("{base}/api/webhooks/stripe")).header("stripe-signature", stripe::signature(&body)).header("content-type", "application/json").body(body).send().await
                }),
                2 => ("create chat", http.post(format!("{base}/api/chats")).bearer_auth(&user.token).json(&serde_json::json!({"title": format!("soak {n}")})).send().await),
                3 | 4 => ("streamed reply", http.post(format!("{base}/api/chat")).bearer_auth(&user.token).json(&serde_json::json!({"messages": [{"role": "user", "content": format!("question {n} {word}")}]})).send().await),
                5..=7 => ("search", http.get(format!("{base}/api/messages/search?q={word}")).bearer_auth(&user.token).send().await),
                8..=11 => ("list messages", http.get(format!("{base}/api/chats/{chat}/messages?limit=50")).bearer_auth(&user.token).send().await),
                _ => ("post message", http.post(format!("{base}/api/chats/{chat}/messages")).bearer_auth(&user.token).json(&serde_json::json!({"content": format!("soak message {n} about {word}"), "type": "text"})).send().await),
            };
            let status = match sent {
                Ok(r) => {
                    let s = r.status().as_u16();
                    // The whole body, streamed replies included, counts in the latency.
                    if r.bytes().await.is_ok() { s } else { 0 }
                }
                Err(_) => 0,
            };
            samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Sample {
                    at,
                    kind,
                    latency: t.elapsed(),
                    status,
                });
        });
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    rss.push((
        started.elapsed().as_secs_f64(),
        server.rss_kib().unwrap_or(0),
    ));
    let samples = std::mem::take(
        &mut *samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut failures = Failures::new();
    let minutes_n = minutes.ceil() as usize;
    println!("| minute | requests | p50 | p99 | max | 5xx or no answer | RSS at its end (MiB) |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut p99s = Vec::new();
    for m in 0..minutes_n {
        let in_minute: Vec<&Sample> = samples
            .iter()
            .filter(|s| (s.at / 60.0) as usize == m)
            .collect();
        let mut lat: Vec<Duration> = in_minute
            .iter()
            .filter(|s| s.kind != "streamed reply")
            .map(|s| s.latency)
            .collect();
        lat.sort();
        let bad = in_minute
            .iter()
            .filter(|s| s.status >= 500 || s.status == 0)
            .count();
        let mem = rss
            .iter()
            .rfind(|(t, _)| *t <= (m as f64 + 1.0) * 60.0)
            .map_or(0, |(_, k)| *k);
        let p99 = percentile(&lat, 0.99);
        p99s.push((p99, mem));
        println!(
            "| {} | {} | {:.1?} | {:.1?} | {:.1?} | {bad} | {:.0} |",
            m + 1,
            in_minute.len(),
            percentile(&lat, 0.5),
            p99,
            lat.last().copied().unwrap_or_default(),
            mem as f64 / 1024.0
        );
    }
    let mut by_kind: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for s in &samples {
        *by_kind
            .entry(s.kind)
            .or_default()
            .entry(s.status.to_string())
            .or_default() += 1;
    }
    println!("\n| request | answers |");
    println!("| --- | --- |");
    for (k, t) in &by_kind {
        println!("| {k} | {} |", show(t));
    }
    let bad: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status >= 500 || s.status == 0)
        .collect();
    if !bad.is_empty() {
        failures.push(format!(
            "{} requests answered 5xx or not at all (first: {} at {:.0} s, status {})",
            bad.len(),
            bad[0].kind,
            bad[0].at,
            bad[0].status
        ));
    }
    if let (Some((p1, m1)), Some((pn, mn))) = (p99s.first(), p99s.last())
        && p99s.len() > 1
    {
        // Flat: the last minute's p99 within 2x the first's (plus 5 ms of noise), and memory
        // within 1.5x.
        if *pn > *p1 * 2 + Duration::from_millis(5) {
            failures.push(format!(
                "p99 grew from {p1:.1?} in minute 1 to {pn:.1?} in the last minute"
            ));
        }
        if *mn as f64 > *m1 as f64 * 1.5 {
            failures.push(format!(
                "RSS grew from {} MiB in minute 1 to {} MiB in the last minute",
                m1 / 1024,
                mn / 1024
            ));
        }
    }
    server.stop().await;
    Ok(failures)
}
