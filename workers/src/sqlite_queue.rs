//! A job queue in a SQLite file of its own (WAL, no fsync per push), for the jobs whose work
//! is recorded in the event log anyway and queued again at start-up when unfinished (Stripe
//! events, documents): a push lost with the machine is not lost work.

use crate::jobs::{Job, handle};
use apalis::prelude::*;
use apalis_sqlite::SqliteStorage;
use confab_application::jobs::QueueError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The queue of jobs `J`, as the application pushes to it.
pub struct SqliteQueue<J> {
    storage: SqliteStorage<J>,
}

impl<J> Clone for SqliteQueue<J> {
    fn clone(&self) -> Self {
        SqliteQueue {
            storage: self.storage.clone(),
        }
    }
}

/// The queue and the listener that wakes its worker.
pub struct OpenedSqliteQueue<J> {
    /// For pushing.
    pub queue: SqliteQueue<J>,
    wakeups: Arc<dyn Fn() -> Strategy + Send + Sync>,
}

impl<J: Job> SqliteQueue<J> {
    /// Opens the queue in its own job database at `path` (created if needed; apalis'
    /// migrations are applied in their own history table, as the reply queue does). The file
    /// is in WAL mode with `synchronous = NORMAL`: a push costs no fsync.
    pub async fn open(path: &Path) -> anyhow::Result<OpenedSqliteQueue<J>> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let (pool, listener) = SqliteStorage::connect_with_callback(&url)?;
        // The pool is lazy: every connection it opens gets these (and apalis' update hook).
        let options = (*pool.connect_options())
            .clone()
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        pool.set_connect_options(options);
        let mut migrator = SqliteStorage::migrations();
        migrator.dangerous_set_table_name("_apalis_migrations");
        migrator.run(&pool).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot prepare the {} job queue in {}: {e}",
                J::NAME,
                path.display()
            )
        })?;
        let storage =
            SqliteStorage::new(&pool).with_config(apalis_sqlite::Config::default().queue(J::NAME));
        Ok(OpenedSqliteQueue {
            queue: SqliteQueue { storage },
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(listener.clone())
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Enqueues one job.
    pub async fn push(&self, job: J) -> Result<(), QueueError> {
        let task = TaskBuilder::new(job).max_attempts(J::MAX_ATTEMPTS).build();
        self.storage
            .clone()
            .push_task(task)
            .await
            .map_err(|e| QueueError {
                queue: J::NAME,
                source: e.to_string().into(),
            })
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND (status IN \
             ('Pending', 'Queued', 'Running') OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(J::NAME)
        .fetch_one(self.storage.pool())
        .await?)
    }
}

/// Adds the worker of `opened` (`concurrency` jobs at a time) to `monitor`, named
/// `{prefix}-{uuid}`.
pub fn register<J: Job>(
    monitor: Monitor,
    opened: OpenedSqliteQueue<J>,
    ctx: J::Context,
    concurrency: usize,
    prefix: &str,
) -> Monitor {
    let OpenedSqliteQueue { queue, wakeups } = opened;
    let name = format!("{prefix}-{}", Uuid::now_v7().simple());
    monitor.register(move |_| {
        WorkerBuilder::new(name.clone())
            .backend(queue.storage.clone().poll_with_strategy(wakeups()))
            .data(ctx.clone())
            .concurrency(concurrency.max(1))
            .build(handle::<J>)
    })
}
