//! The job queue: apalis on SQLite (a `jobs.db` file beside the embedded database), with the
//! reply worker woken the moment a job is pushed (SQLite's update hook) and polling once a
//! second for retries, and the monthly credit reset on an apalis-cron schedule.

use crate::ai::{Ai, GenerateReply};
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use apalis_sqlite::SqliteStorage;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The queue name of reply jobs (pinned, so renaming the Rust type strands nothing).
pub const REPLY_QUEUE: &str = "generate_reply";

/// Most attempts of one job (a job fails only when the store is unreachable).
pub const MAX_ATTEMPTS: usize = 3;

/// The reply queue, as the API pushes to it.
#[derive(Clone)]
pub struct ReplyQueue {
    storage: SqliteStorage<GenerateReply>,
}

/// The queue and the listener that wakes its worker.
pub struct OpenedQueue {
    /// For pushing.
    pub queue: ReplyQueue,
    /// How the worker learns of new jobs: at once from the update hook, and every second.
    wakeups: Arc<dyn Fn() -> Strategy + Send + Sync>,
}

impl ReplyQueue {
    /// Opens (creating if needed) the queue database at `path` and applies apalis' migrations
    /// (kept in their own history table, apart from Confab's).
    pub async fn open(path: &Path) -> anyhow::Result<OpenedQueue> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let (pool, listener) = SqliteStorage::connect_with_callback(&url)?;
        let mut migrator = SqliteStorage::migrations();
        migrator.dangerous_set_table_name("_apalis_migrations");
        migrator.run(&pool).await.map_err(|e| {
            anyhow::anyhow!("cannot prepare the job queue in {}: {e}", path.display())
        })?;
        let storage = SqliteStorage::new(&pool)
            .with_config(apalis_sqlite::Config::default().queue(REPLY_QUEUE));
        Ok(OpenedQueue {
            queue: ReplyQueue { storage },
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(listener.clone())
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Enqueues a reply job.
    pub async fn push(&self, job: GenerateReply) -> anyhow::Result<()> {
        let task = TaskBuilder::new(job).max_attempts(MAX_ATTEMPTS).build();
        self.storage
            .clone()
            .push_task(task)
            .await
            .map_err(|e| anyhow::anyhow!("cannot enqueue the reply: {e}"))
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND (status IN \
             ('Pending', 'Queued', 'Running') OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(REPLY_QUEUE)
        .fetch_one(self.storage.pool())
        .await?)
    }
}

async fn run_reply(job: GenerateReply, ai: Data<Ai>) -> Result<(), BoxDynError> {
    ai.generate(&job).await.map_err(|e| {
        tracing::error!(reply = %job.reply_id, error = %e, "reply job failed; it will be retried");
        BoxDynError::from(e.to_string())
    })
}

async fn run_reset(_tick: Tick, ai: Data<Ai>) -> Result<(), BoxDynError> {
    ai.reset_all()
        .await
        .map(|_| ())
        .map_err(|e| BoxDynError::from(e.to_string()))
}

/// The job workers of one process: `concurrency` replies at a time, and the credit reset on
/// `reset_schedule` (a cron expression with seconds, e.g. `0 0 0 1 * *`).
pub fn monitor(
    opened: OpenedQueue,
    ai: Ai,
    concurrency: usize,
    reset_schedule: &str,
) -> anyhow::Result<Monitor> {
    let schedule = cron::Schedule::from_str(reset_schedule).map_err(|e| {
        anyhow::anyhow!(
            "credit_reset_schedule {reset_schedule:?} is not a cron expression \
             (sec min hour day month weekday): {e}"
        )
    })?;
    let OpenedQueue { queue, wakeups } = opened;
    // Unique per start: apalis refuses a worker name it saw recently.
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (reply_ai, reset_ai) = (ai.clone(), ai);
    let reply_name = format!("replies-{suffix}");
    let reset_name = format!("credit-reset-{suffix}");
    Ok(Monitor::new()
        .register(move |_| {
            WorkerBuilder::new(reply_name.clone())
                .backend(queue.storage.clone().poll_with_strategy(wakeups()))
                .data(reply_ai.clone())
                .concurrency(concurrency)
                .build(run_reply)
        })
        .register(move |_| {
            WorkerBuilder::new(reset_name.clone())
                .backend(CronScheduler::new(schedule.clone()))
                .data(reset_ai.clone())
                .build(run_reset)
        })
        .shutdown_timeout(Duration::from_secs(30)))
}
