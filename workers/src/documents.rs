//! The document job queue, registered on the same apalis monitor as the other workers. On the
//! embedded SQLite default it is a file of its own (`document-jobs.db` in the data directory,
//! WAL), worked by the `serve` process that took the upload; on PostgreSQL it is the
//! `process_document` queue of the shared `apalis` schema, worked by every process that runs
//! the job workers (`confab work`, and `serve` unless `CONFAB_RUN_JOBS=false`), like replies.
//! What a job does is [`confab_application::documents::process`] (parse and chunk, or embed);
//! every document still processing is queued again at start-up
//! ([`confab_application::documents::requeue_processing`]), so neither a crash between an
//! append and its push nor a lost queue file strands a document.

use crate::pg_queue::PgQueue;
use crate::sqlite_queue::{OpenedSqliteQueue, SqliteQueue};
use apalis::prelude::Monitor;
use confab_application::Services;
use confab_application::jobs::{ProcessDocument, QueueError};
use std::path::Path;

/// The queue name of document jobs (pinned, so renaming the Rust type strands nothing).
pub const DOCUMENT_QUEUE: &str = "process_document";

/// The queue, as the application pushes to it.
#[derive(Clone)]
pub enum DocumentQueue {
    /// `document-jobs.db` in the data directory: the one `serve` process pushes and works.
    Sqlite(SqliteQueue<ProcessDocument>),
    /// The shared `apalis` schema: any process pushes, any process with job workers works.
    Postgres(PgQueue<ProcessDocument>),
}

/// The queue and what its worker needs.
pub enum OpenedDocumentQueue {
    /// See [`DocumentQueue::Sqlite`].
    Sqlite(OpenedSqliteQueue<ProcessDocument>),
    /// See [`DocumentQueue::Postgres`].
    Postgres(PgQueue<ProcessDocument>),
}

impl OpenedDocumentQueue {
    /// Opens the queue of a process on the embedded default: the file at `path`.
    pub async fn sqlite(path: &Path) -> anyhow::Result<OpenedDocumentQueue> {
        Ok(OpenedDocumentQueue::Sqlite(SqliteQueue::open(path).await?))
    }

    /// Opens the queue shared by every process on PostgreSQL; a worker takes at most `batch`
    /// jobs at a time.
    pub async fn postgres(
        pool: &sqlx::PgPool,
        batch: usize,
    ) -> anyhow::Result<OpenedDocumentQueue> {
        Ok(OpenedDocumentQueue::Postgres(
            PgQueue::open(pool, batch).await?,
        ))
    }

    /// The queue, for pushing.
    pub fn queue(&self) -> DocumentQueue {
        match self {
            OpenedDocumentQueue::Sqlite(o) => DocumentQueue::Sqlite(o.queue.clone()),
            OpenedDocumentQueue::Postgres(q) => DocumentQueue::Postgres(q.clone()),
        }
    }
}

impl DocumentQueue {
    /// Enqueues a document job.
    pub async fn push(&self, job: ProcessDocument) -> Result<(), QueueError> {
        match self {
            DocumentQueue::Sqlite(q) => q.push(job).await,
            DocumentQueue::Postgres(q) => q.push(job).await,
        }
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        match self {
            DocumentQueue::Sqlite(q) => q.unfinished().await,
            DocumentQueue::Postgres(q) => q.unfinished().await,
        }
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
    match opened {
        OpenedDocumentQueue::Sqlite(o) => {
            crate::sqlite_queue::register(monitor, o, svc, concurrency, "documents")
        }
        OpenedDocumentQueue::Postgres(q) => {
            crate::pg_queue::register(monitor, q, svc, concurrency, "documents")
        }
    }
}
