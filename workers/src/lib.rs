//! Confab's background work, run by `confab work` and, on the embedded default, inside
//! `confab serve`: the projection runners that keep the read models at the head of the log,
//! and the job workers (LLM replies, the monthly credit reset).

pub mod ai;
pub mod billing;
pub mod llm;
pub mod queue;
pub mod relay;
pub mod replies;

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
