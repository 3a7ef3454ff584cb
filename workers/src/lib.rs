//! Confab's background work, run by `confab work` and, on the embedded default, inside
//! `confab serve`: the projection runners that keep the read models at the head of the log,
//! and the job workers (LLM replies, the monthly credit reset, Stripe events, documents) on
//! apalis queues.
//!
//! Job bodies are the application layer's use cases; this crate owns the queues, the one
//! [`jobs::Job`] trait that adapts a use case to apalis, and [`Queues`], the application's
//! [`JobQueue`] port.

pub mod billing;
pub mod documents;
pub mod jobs;
pub mod pg_queue;
pub mod queue;
pub mod sqlite_queue;

use confab_application::jobs::{Job, JobQueue, QueueError};
use confab_projections::Engine;
use std::time::Duration;
use tokio::sync::watch;

/// How long shutdown waits for in-flight batches before giving up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The set of background tasks of one process.
pub struct Workers {
    engine: Engine,
}

impl Workers {
    /// Background work over `engine`'s projections.
    pub fn new(engine: Engine) -> Self {
        Workers { engine }
    }

    /// Runs until `shutdown` turns true, then lets in-flight batches commit (each batch is one
    /// transaction, so stopping between them loses nothing) for at most [`SHUTDOWN_GRACE`].
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut signal = shutdown.clone();
        let engine = self.engine.clone();
        let mut task = tokio::spawn(async move { engine.run(shutdown).await });
        tokio::select! {
            _ = &mut task => return,
            _ = signal.wait_for(|stop| *stop) => {}
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("projection runners did not stop within the grace period; aborting");
            task.abort();
        }
    }
}

/// Every queue a use case may push to: the application's [`JobQueue`].
#[derive(Clone)]
pub struct Queues {
    /// LLM replies.
    pub replies: queue::ReplyQueue,
    /// Stripe events: only in processes that serve the webhook (`serve`).
    pub stripe: Option<billing::StripeQueue>,
    /// Document processing: on SQLite only in `serve` (a file of its own); on PostgreSQL in
    /// every process (the shared queue).
    pub documents: Option<documents::DocumentQueue>,
}

#[async_trait::async_trait]
impl JobQueue for Queues {
    async fn push(&self, job: Job) -> Result<(), QueueError> {
        match job {
            Job::Reply(j) => self.replies.push(j).await,
            Job::StripeEvent(j) => match &self.stripe {
                Some(q) => q.push(j).await,
                None => Err(QueueError {
                    queue: billing::STRIPE_QUEUE,
                    source: "this process has no Stripe queue (only `serve` does)".into(),
                }),
            },
            Job::Document(j) => match &self.documents {
                Some(q) => q.push(j).await,
                None => Err(QueueError {
                    queue: documents::DOCUMENT_QUEUE,
                    source: "this process has no document queue".into(),
                }),
            },
        }
    }

    async fn depths(&self) -> Vec<(&'static str, i64)> {
        fn counted(
            queue: &'static str,
            n: anyhow::Result<i64>,
            out: &mut Vec<(&'static str, i64)>,
        ) {
            match n {
                Ok(n) => out.push((queue, n)),
                Err(e) => tracing::warn!(queue, error = %e, "cannot count the queue's jobs"),
            }
        }
        let mut out = Vec::new();
        counted(
            queue::REPLY_QUEUE,
            self.replies.unfinished().await,
            &mut out,
        );
        if let Some(q) = &self.stripe {
            counted(billing::STRIPE_QUEUE, q.unfinished().await, &mut out);
        }
        if let Some(q) = &self.documents {
            counted(documents::DOCUMENT_QUEUE, q.unfinished().await, &mut out);
        }
        out
    }
}
