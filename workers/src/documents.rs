//! The document job queue: its own SQLite file (`document-jobs.db` in the data directory, WAL),
//! registered on the same apalis monitor as the other workers, like the Stripe queue. What a
//! job does is [`confab_application::documents::process`] (parse and chunk, or embed); every
//! document still processing is queued again at start-up
//! ([`confab_application::documents::requeue_processing`]), so neither a crash between an
//! append and its push nor a lost queue file strands a document.

use crate::sqlite_queue::{OpenedSqliteQueue, SqliteQueue};
use apalis::prelude::Monitor;
use confab_application::Services;
use confab_application::jobs::ProcessDocument;

/// The queue name of document jobs (pinned, so renaming the Rust type strands nothing).
pub const DOCUMENT_QUEUE: &str = "process_document";

/// The queue, as the application pushes to it.
pub type DocumentQueue = SqliteQueue<ProcessDocument>;

/// The queue and the listener that wakes its worker.
pub type OpenedDocumentQueue = OpenedSqliteQueue<ProcessDocument>;

/// Adds the document worker (`concurrency` jobs at a time, which caps the embeddings calls in
/// flight) to `monitor`.
pub fn register(
    monitor: Monitor,
    opened: OpenedDocumentQueue,
    svc: Services,
    concurrency: usize,
) -> Monitor {
    crate::sqlite_queue::register(monitor, opened, svc, concurrency, "documents")
}
