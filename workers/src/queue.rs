//! The job queue: apalis on SQLite (a `jobs.db` file beside the embedded database, for the one
//! process of the embedded default) or on PostgreSQL (the `apalis` schema of Confab's database,
//! shared by every `serve` and `work` process), with the reply worker woken the moment a job is
//! pushed (SQLite's update hook, PostgreSQL's notification) and polling once a second for
//! retries; and, on apalis-cron schedules, the monthly credit reset and the sweep that releases
//! expired credit holds.

use crate::jobs::{Job, ResetCredits, SweepCreditHolds, handle};
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use apalis_postgres::{PostgresStorage, Pubsub};
use apalis_sqlite::SqliteStorage;
use confab_application::Services;
use confab_application::jobs::{GenerateReply, QueueError};
use sqlx::PgPool;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteOperation, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The queue name of reply jobs (pinned, so renaming the Rust type strands nothing).
pub const REPLY_QUEUE: &str = "generate_reply";

/// Wakes the SQLite worker: one item per job inserted (by any connection of the pool).
#[derive(Clone)]
struct Inserts(Arc<std::sync::Mutex<futures_channel::mpsc::UnboundedReceiver<()>>>);

impl futures_core::Stream for Inserts {
    type Item = ();

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        let mut rx = self.0.lock().expect("wake-up lock");
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut *rx), cx)
    }
}

/// The reply queue, as the API pushes to it.
#[derive(Clone)]
pub enum ReplyQueue {
    /// `jobs.db` beside the embedded database: one process pushes and works.
    Sqlite(SqliteStorage<GenerateReply>),
    /// The `apalis` schema of the PostgreSQL database: any number of processes push and work.
    Postgres(PostgresStorage<GenerateReply>),
}

/// The queue and the listener that wakes its worker.
pub struct OpenedQueue {
    /// For pushing.
    pub queue: ReplyQueue,
    /// How the worker learns of new jobs: at once (SQLite's update hook, or PostgreSQL's
    /// notification of an insert), and every second for retries.
    wakeups: Arc<dyn Fn() -> Strategy + Send + Sync>,
}

/// How often a PostgreSQL worker says it is alive, and how many beats it may miss before its
/// jobs are handed to another worker (a crashed `work` process's replies resume within
/// `HEARTBEAT * MISSED_HEARTBEATS`).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// See [`HEARTBEAT`].
pub const MISSED_HEARTBEATS: usize = 3;

impl ReplyQueue {
    /// Opens (creating if needed) the queue database at `path` and applies apalis' migrations
    /// (kept in their own history table, apart from Confab's).
    pub async fn open(path: &Path) -> anyhow::Result<OpenedQueue> {
        // Our own pool rather than apalis' `connect_with_callback`, whose connections keep
        // SQLite's rollback journal (several fsyncs per job): WAL, durable at each commit like
        // the event store, and the same wake-up on insert through the update hook.
        let (tx, rx) = futures_channel::mpsc::unbounded::<()>();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let tx = tx.clone();
                Box::pin(async move {
                    let mut handle = conn.lock_handle().await?;
                    handle.set_update_hook(move |ev| {
                        if ev.operation == SqliteOperation::Insert && ev.table == "Jobs" {
                            let _ = tx.unbounded_send(());
                        }
                    });
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the job queue {}: {e}", path.display()))?;
        let mut migrator = SqliteStorage::migrations();
        migrator.dangerous_set_table_name("_apalis_migrations");
        migrator.run(&pool).await.map_err(|e| {
            anyhow::anyhow!("cannot prepare the job queue in {}: {e}", path.display())
        })?;
        let storage = SqliteStorage::new(&pool)
            .with_config(apalis_sqlite::Config::default().queue(REPLY_QUEUE));
        let inserts = Inserts(Arc::new(std::sync::Mutex::new(rx)));
        Ok(OpenedQueue {
            queue: ReplyQueue::Sqlite(storage),
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(inserts.clone())
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Opens the queue in the PostgreSQL database of `pool` (schema `apalis`, migrated here,
    /// its history kept apart from Confab's); a worker takes at most `batch` jobs at a time.
    pub async fn open_postgres(pool: &PgPool, batch: usize) -> anyhow::Result<OpenedQueue> {
        let mut migrator = PostgresStorage::migrations();
        migrator.dangerous_set_table_name("_apalis_migrations");
        migrator
            .run(pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot prepare the job queue in PostgreSQL: {e}"))?;
        let storage = PostgresStorage::new(pool).with_config(
            apalis_postgres::Config::default()
                .queue(REPLY_QUEUE)
                .batch_size(batch.max(1))
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS),
        );
        let pool = pool.clone();
        Ok(OpenedQueue {
            queue: ReplyQueue::Postgres(storage),
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(Pubsub::new(pool.clone(), REPLY_QUEUE.to_owned()))
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Enqueues a reply job.
    pub async fn push(&self, job: GenerateReply) -> Result<(), QueueError> {
        let task = TaskBuilder::new(job).max_attempts(GenerateReply::MAX_ATTEMPTS);
        let pushed = match self {
            ReplyQueue::Sqlite(s) => s
                .clone()
                .push_task(task.build())
                .await
                .map_err(|e| e.to_string()),
            ReplyQueue::Postgres(s) => s
                .clone()
                .push_task(task.build())
                .await
                .map_err(|e| e.to_string()),
        };
        pushed.map_err(|e| QueueError {
            queue: REPLY_QUEUE,
            source: e.into(),
        })
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        const UNFINISHED: &str = "job_type = $1 AND (status IN ('Pending', 'Queued', 'Running') \
             OR (status = 'Failed' AND attempts < max_attempts))";
        Ok(match self {
            ReplyQueue::Sqlite(s) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM Jobs WHERE {UNFINISHED}"
                )))
                .bind(REPLY_QUEUE)
                .fetch_one(s.pool())
                .await?
            }
            ReplyQueue::Postgres(s) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM apalis.jobs WHERE {UNFINISHED}"
                )))
                .bind(REPLY_QUEUE)
                .fetch_one(s.pool())
                .await?
            }
        })
    }
}

/// A cron expression with seconds (`sec min hour day month weekday`), or why not.
fn schedule(setting: &str, expression: &str) -> anyhow::Result<cron::Schedule> {
    cron::Schedule::from_str(expression).map_err(|e| {
        anyhow::anyhow!(
            "{setting} {expression:?} is not a cron expression \
             (sec min hour day month weekday): {e}"
        )
    })
}

/// The job workers of one process: `concurrency` replies at a time, the credit reset on
/// `reset_schedule` and the sweep of expired credit holds on `sweep_schedule` (cron
/// expressions with seconds, e.g. `0 0 0 1 * *`).
pub fn monitor(
    opened: OpenedQueue,
    svc: Services,
    concurrency: usize,
    reset_schedule: &str,
    sweep_schedule: &str,
) -> anyhow::Result<Monitor> {
    let reset_schedule = schedule("credit_reset_schedule", reset_schedule)?;
    let sweep_schedule = schedule("credit_sweep_schedule", sweep_schedule)?;
    let OpenedQueue { queue, wakeups } = opened;
    // Unique per start: apalis refuses a worker name it saw recently.
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (reply_svc, reset_svc, sweep_svc) = (svc.clone(), svc.clone(), svc);
    let reply_name = format!("replies-{suffix}");
    let reset_name = format!("credit-reset-{suffix}");
    let sweep_name = format!("credit-hold-sweep-{suffix}");
    let monitor = Monitor::new()
        .register(move |_| {
            WorkerBuilder::new(reset_name.clone())
                .backend(CronScheduler::new(reset_schedule.clone()))
                .data(reset_svc.clone())
                .build(|_tick: Tick, svc: Data<Services>| handle(ResetCredits, svc))
        })
        .register(move |_| {
            WorkerBuilder::new(sweep_name.clone())
                .backend(CronScheduler::new(sweep_schedule.clone()))
                .data(sweep_svc.clone())
                .build(|_tick: Tick, svc: Data<Services>| handle(SweepCreditHolds, svc))
        });
    let monitor = match queue {
        ReplyQueue::Sqlite(s) => monitor.register(move |_| {
            WorkerBuilder::new(reply_name.clone())
                .backend(s.clone().poll_with_strategy(wakeups()))
                .data(reply_svc.clone())
                .concurrency(concurrency)
                .build(handle::<GenerateReply>)
        }),
        ReplyQueue::Postgres(s) => monitor.register(move |_| {
            WorkerBuilder::new(reply_name.clone())
                .backend(s.clone().poll_with_strategy(wakeups()))
                .data(reply_svc.clone())
                .concurrency(concurrency)
                .build(handle::<GenerateReply>)
        }),
    };
    Ok(monitor.shutdown_timeout(Duration::from_secs(30)))
}
