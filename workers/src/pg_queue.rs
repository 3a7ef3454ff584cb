//! A job queue in the `apalis` schema of Confab's PostgreSQL database, shared by every `serve`
//! and `work` process: any of them may push, any that runs its worker may take the job. The
//! worker is woken by PostgreSQL's notification of an insert, polls once a second for
//! retries, and beats every [`HEARTBEAT`](crate::queue::HEARTBEAT), so a job whose process
//! died is handed to another.

use crate::jobs::{Job, handle};
use crate::queue::{HEARTBEAT, MISSED_HEARTBEATS};
use apalis::prelude::*;
use apalis_postgres::{PostgresStorage, Pubsub};
use confab_application::jobs::QueueError;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The PostgreSQL queue of jobs `J`, as the application pushes to it.
pub struct PgQueue<J> {
    storage: PostgresStorage<J>,
}

impl<J> Clone for PgQueue<J> {
    fn clone(&self) -> Self {
        PgQueue {
            storage: self.storage.clone(),
        }
    }
}

impl<J: Job> PgQueue<J> {
    /// Opens the queue in the database of `pool` (apalis' migrations applied in their own
    /// history table, as the reply queue does); a worker takes at most `batch` jobs at a time.
    pub async fn open(pool: &PgPool, batch: usize) -> anyhow::Result<PgQueue<J>> {
        let mut migrator = PostgresStorage::migrations();
        migrator.dangerous_set_table_name("_apalis_migrations");
        migrator.run(pool).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot prepare the {} job queue in PostgreSQL: {e}",
                J::NAME
            )
        })?;
        let storage = PostgresStorage::new(pool).with_config(
            apalis_postgres::Config::default()
                .queue(J::NAME)
                .batch_size(batch.max(1))
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS),
        );
        Ok(PgQueue { storage })
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
            "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1 AND (status IN \
             ('Pending', 'Queued', 'Running') OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(J::NAME)
        .fetch_one(self.storage.pool())
        .await?)
    }
}

/// Adds a worker of `queue` (`concurrency` jobs at a time) to `monitor`, named
/// `{prefix}-{uuid}`.
pub fn register<J: Job>(
    monitor: Monitor,
    queue: PgQueue<J>,
    ctx: J::Context,
    concurrency: usize,
    prefix: &str,
) -> Monitor {
    let name = format!("{prefix}-{}", Uuid::now_v7().simple());
    let pool = queue.storage.pool().clone();
    monitor.register(move |_| {
        let wakeups = Strategy::new()
            .stream(Pubsub::new(pool.clone(), J::NAME.to_owned()))
            .interval(Duration::from_secs(1));
        WorkerBuilder::new(name.clone())
            .backend(queue.storage.clone().poll_with_strategy(wakeups))
            .data(ctx.clone())
            .concurrency(concurrency.max(1))
            .build(handle::<J>)
    })
}
