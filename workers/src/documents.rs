//! The document job queue: its own SQLite file (`document-jobs.db` in the data directory, WAL),
//! registered on the same apalis monitor as the other workers, like the Stripe queue. What a
//! job does is [`confab_application::documents::process`] (parse and chunk, or embed); every
//! document still processing is queued again at start-up
//! ([`confab_application::documents::requeue_processing`]), so neither a crash between an
//! append and its push nor a lost queue file strands a document.

use crate::jobs::{Job, handle};
use apalis::prelude::*;
use apalis_sqlite::SqliteStorage;
use confab_application::Services;
use confab_application::jobs::{ProcessDocument, QueueError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The queue name of document jobs (pinned, so renaming the Rust type strands nothing).
pub const DOCUMENT_QUEUE: &str = "process_document";

/// The document job queue, as uploads push to it.
#[derive(Clone)]
pub struct DocumentQueue {
    storage: SqliteStorage<ProcessDocument>,
}

/// The queue and the listener that wakes its worker.
pub struct OpenedDocumentQueue {
    /// For pushing.
    pub queue: DocumentQueue,
    wakeups: Arc<dyn Fn() -> Strategy + Send + Sync>,
}

impl DocumentQueue {
    /// Opens the queue in its own job database at `path` (created if needed; apalis'
    /// migrations are applied in their own history table).
    pub async fn open(path: &Path) -> anyhow::Result<OpenedDocumentQueue> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let (pool, listener) = SqliteStorage::connect_with_callback(&url)?;
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
                "cannot prepare the document job queue in {}: {e}",
                path.display()
            )
        })?;
        let storage = SqliteStorage::new(&pool)
            .with_config(apalis_sqlite::Config::default().queue(DOCUMENT_QUEUE));
        Ok(OpenedDocumentQueue {
            queue: DocumentQueue { storage },
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(listener.clone())
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Enqueues one step of a document.
    pub async fn push(&self, job: ProcessDocument) -> Result<(), QueueError> {
        let task = TaskBuilder::new(job)
            .max_attempts(ProcessDocument::MAX_ATTEMPTS)
            .build();
        self.storage
            .clone()
            .push_task(task)
            .await
            .map_err(|e| QueueError {
                queue: DOCUMENT_QUEUE,
                source: e.to_string().into(),
            })
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND (status IN \
             ('Pending', 'Queued', 'Running') OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(DOCUMENT_QUEUE)
        .fetch_one(self.storage.pool())
        .await?)
    }
}

/// Adds the document worker (`concurrency` jobs at a time, which caps the embeddings calls in
/// flight) to `monitor`.
pub fn register(
    monitor: Monitor,
    opened: OpenedDocumentQueue,
    svc: Services,
    concurrency: usize,
) -> Monitor {
    let OpenedDocumentQueue { queue, wakeups } = opened;
    let name = format!("documents-{}", Uuid::now_v7().simple());
    monitor.register(move |_| {
        WorkerBuilder::new(name.clone())
            .backend(queue.storage.clone().poll_with_strategy(wakeups()))
            .data(svc.clone())
            .concurrency(concurrency.max(1))
            .build(handle::<ProcessDocument>)
    })
}
