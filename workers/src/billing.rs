//! The Stripe job queue: its own SQLite file (`stripe-jobs.db` in the data directory, WAL, no
//! fsync per push), registered on the same apalis monitor as the reply worker. What a job does
//! is [`confab_application::billing::process_stripe_event`]; every event still unprocessed is
//! queued again at start-up ([`confab_application::billing::requeue_unprocessed`]), so neither
//! a crash between the webhook's append and its push nor a lost queue file loses an event.

use crate::jobs::{Job, handle};
use apalis::prelude::*;
use apalis_sqlite::SqliteStorage;
use confab_application::Services;
use confab_application::jobs::{ProcessStripeEvent, QueueError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The queue name of Stripe jobs (pinned, so renaming the Rust type strands nothing).
pub const STRIPE_QUEUE: &str = "process_stripe_event";

/// The Stripe job queue, as the webhook pushes to it.
#[derive(Clone)]
pub struct StripeQueue {
    storage: SqliteStorage<ProcessStripeEvent>,
}

/// The queue and the listener that wakes its worker.
pub struct OpenedStripeQueue {
    /// For pushing.
    pub queue: StripeQueue,
    wakeups: Arc<dyn Fn() -> Strategy + Send + Sync>,
}

impl StripeQueue {
    /// Opens the queue in its own job database at `path` (created if needed; apalis'
    /// migrations are applied, in their own history table, as the reply queue does).
    ///
    /// The file is in WAL mode with `synchronous = NORMAL`: a push costs no fsync, so the
    /// webhook's answer does not wait for the disk. A push lost with the machine (power loss)
    /// is not lost work: the event itself is in the event log, and
    /// [`confab_application::billing::requeue_unprocessed`] queues every unprocessed event again at start-up.
    pub async fn open(path: &Path) -> anyhow::Result<OpenedStripeQueue> {
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
                "cannot prepare the Stripe job queue in {}: {e}",
                path.display()
            )
        })?;
        let storage = SqliteStorage::new(&pool)
            .with_config(apalis_sqlite::Config::default().queue(STRIPE_QUEUE));
        Ok(OpenedStripeQueue {
            queue: StripeQueue { storage },
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(listener.clone())
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Enqueues the processing of one event.
    pub async fn push(&self, job: ProcessStripeEvent) -> Result<(), QueueError> {
        let task = TaskBuilder::new(job)
            .max_attempts(ProcessStripeEvent::MAX_ATTEMPTS)
            .build();
        self.storage
            .clone()
            .push_task(task)
            .await
            .map_err(|e| QueueError {
                queue: STRIPE_QUEUE,
                source: e.to_string().into(),
            })
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND (status IN \
             ('Pending', 'Queued', 'Running') OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(STRIPE_QUEUE)
        .fetch_one(self.storage.pool())
        .await?)
    }
}

/// Adds the Stripe worker (`concurrency` events at a time) to `monitor`.
pub fn register(
    monitor: Monitor,
    opened: OpenedStripeQueue,
    svc: Services,
    concurrency: usize,
) -> Monitor {
    let OpenedStripeQueue { queue, wakeups } = opened;
    let name = format!("stripe-events-{}", Uuid::now_v7().simple());
    monitor.register(move |_| {
        WorkerBuilder::new(name.clone())
            .backend(queue.storage.clone().poll_with_strategy(wakeups()))
            .data(svc.clone())
            .concurrency(concurrency.max(1))
            .build(handle::<ProcessStripeEvent>)
    })
}
