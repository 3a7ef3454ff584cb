//! Confab's reliability suite: scripted failures against a real `confab serve` (a release
//! build), each checked the way a client would check it. One command per scenario:
//!
//! ```sh
//! cargo build --release --bin confab -p confab-testkit --bin reliability
//! target/release/reliability kill9 --db sqlite      # SIGKILL under 16 writers, then restart
//! target/release/reliability kill9 --db postgres
//! target/release/reliability postgres-restart       # PostgreSQL crashes and comes back under load
//! target/release/reliability redis-kill             # Redis (rate limits) killed under load
//! target/release/reliability upstream --db sqlite   # the LLM upstream hangs, resets, fails
//! target/release/reliability soak --minutes 10      # mixed traffic at a steady rate
//! ```
//!
//! Each prints what it saw and exits 1 when an invariant broke, naming it. docs/reliability.md
//! records the figures.

mod client;
mod procs;
mod scenarios;

use clap::{Parser, Subcommand};
use procs::Db;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "reliability", about = "Confab's reliability suite")]
struct Args {
    /// The `confab` binary under test.
    #[arg(long, global = true, default_value = "target/release/confab")]
    confab: PathBuf,
    /// A PostgreSQL database URL on whose server the scenarios create (and drop) their own
    /// databases.
    #[arg(
        long,
        global = true,
        env = "CONFAB_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// SIGKILL `serve` under concurrent writers, restart it, and check that every acknowledged
    /// write is readable once, retried writes are not doubled, and the read models equal a
    /// rebuild from the log.
    Kill9 {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: Db,
        /// Concurrent writers, each posting to its own chat with an `Idempotency-Key`.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Kills in one run (each after a random 1-3 s of load).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Crash a private PostgreSQL instance (`pg_ctl stop -m immediate`) under load, start it
    /// again, and check that the API answered 503 (not 500, not a hang) meanwhile, recovered by
    /// itself, and lost no acknowledged write.
    PostgresRestart {
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// How long PostgreSQL stays down.
        #[arg(long, default_value_t = 5)]
        down_secs: u64,
    },
    /// Kill a private Redis holding the rate-limit budgets under load, start it again, and check
    /// that requests were served per `CONFAB_RATE_LIMIT_FAIL_OPEN` and limits apply again.
    RedisKill {
        #[arg(long, default_value_t = 4)]
        writers: usize,
        #[arg(long, default_value_t = 5)]
        down_secs: u64,
        /// `CONFAB_RATE_LIMIT_FAIL_OPEN`: serve without limits while Redis is down (`true`) or
        /// answer 503 (`false`).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        fail_open: bool,
    },
    /// Streamed replies against an OpenAI-wire upstream that hangs, resets mid-stream, stalls,
    /// answers 500 and 429: each reply ends, says why when cut short, charges exactly what was
    /// produced, and leaves no job behind.
    Upstream {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: Db,
    },
    /// Mixed traffic (sign-ins, chats, messages, search, streamed replies, webhooks) at a
    /// steady rate: no 5xx, and p99 latency and memory flat from the first minute to the last.
    Soak {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: Db,
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Requests started per second.
        #[arg(long, default_value_t = 40)]
        rate: u32,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let ctx = scenarios::Ctx {
        confab: args.confab,
        postgres_url: args.postgres_url,
    };
    let result = match args.scenario {
        Scenario::Kill9 {
            db,
            writers,
            rounds,
        } => scenarios::kill9(&ctx, db, writers, rounds).await,
        Scenario::PostgresRestart { writers, down_secs } => {
            scenarios::postgres_restart(&ctx, writers, down_secs).await
        }
        Scenario::RedisKill {
            writers,
            down_secs,
            fail_open,
        } => scenarios::redis_kill(&ctx, writers, down_secs, fail_open).await,
        Scenario::Upstream { db } => scenarios::upstream(&ctx, db).await,
        Scenario::Soak { db, minutes, rate } => scenarios::soak(&ctx, db, minutes, rate).await,
    };
    match result {
        Ok(failures) if failures.is_empty() => println!("\nPASS"),
        Ok(failures) => {
            println!("\nFAIL");
            for f in failures {
                println!("- {f}");
            }
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
