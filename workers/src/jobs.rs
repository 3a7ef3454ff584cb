//! The one job trait every background job implements, and the apalis handler that runs any of
//! them: a stable queue name, a typed payload (the job struct itself, serde) and context, and
//! an error that says whether another attempt can help.
//!
//! Job bodies are the application layer's use cases ([`confab_application::ai::generate_reply`],
//! [`confab_application::billing::process_stripe_event`],
//! [`confab_application::credits::reset_all`],
//! [`confab_application::credits::sweep_expired_holds`]); this module only adapts them to
//! apalis.

use apalis::prelude::*;
use confab_application::jobs::{GenerateReply, ProcessDocument, ProcessStripeEvent};
use confab_application::{AppError, Services};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Something transient (the store, the read models, an upstream): try again later.
    #[error("{0}")]
    Retry(#[source] AppError),
    /// Bad input or a refusal that will not change: retrying cannot help.
    #[error("{0}")]
    Permanent(#[source] AppError),
}

impl From<AppError> for JobError {
    fn from(e: AppError) -> Self {
        if e.is_retryable() {
            JobError::Retry(e)
        } else {
            JobError::Permanent(e)
        }
    }
}

/// A background job: its payload is the implementing type.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The queue's stable name (pinned, so renaming the Rust type strands nothing).
    const NAME: &'static str;
    /// Most attempts of one job before it is given up.
    const MAX_ATTEMPTS: usize;
    /// What the job needs to run.
    type Context: Clone + Send + Sync + 'static;

    /// Runs the job once; idempotent, so a retry or a re-run after a crash changes state once.
    fn run(self, ctx: &Self::Context) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// The apalis handler of every [`Job`]: runs it, logs the failure once, and tells apalis
/// whether to retry (a permanent failure aborts the job).
pub(crate) async fn handle<J: Job>(job: J, ctx: Data<J::Context>) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    let result = job.run(&ctx).await;
    let outcome = match &result {
        Ok(()) => "ok",
        Err(JobError::Permanent(_)) => "failed",
        Err(JobError::Retry(_)) => "retry",
    };
    metrics::histogram!("confab_job_duration_seconds", "queue" => J::NAME, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => Ok(()),
        Err(JobError::Permanent(e)) => {
            tracing::error!(queue = J::NAME, error = %e, "job failed and cannot succeed; giving up");
            Err(Box::new(AbortError::new(e)))
        }
        Err(JobError::Retry(e)) => {
            tracing::warn!(queue = J::NAME, error = %e, "job failed; it will be retried");
            Err(Box::new(e))
        }
    }
}

impl Job for GenerateReply {
    const NAME: &'static str = crate::queue::REPLY_QUEUE;
    // A reply fails only while the store is unreachable.
    const MAX_ATTEMPTS: usize = 3;
    type Context = Services;

    async fn run(self, svc: &Services) -> Result<(), JobError> {
        confab_application::ai::generate_reply(svc, &self)
            .await
            .map_err(JobError::from)
    }
}

impl Job for ProcessStripeEvent {
    const NAME: &'static str = crate::billing::STRIPE_QUEUE;
    // A Stripe job fails only while the store or the read models cannot be reached or lag.
    const MAX_ATTEMPTS: usize = 10;
    type Context = Services;

    async fn run(self, svc: &Services) -> Result<(), JobError> {
        let outcome =
            confab_application::billing::process_stripe_event(svc, &self.event_id).await?;
        tracing::info!(stripe_event = %self.event_id, %outcome, "stripe event processed");
        Ok(())
    }
}

impl Job for ProcessDocument {
    const NAME: &'static str = crate::documents::DOCUMENT_QUEUE;
    // A step fails (rather than recording `document.failed`) only while the store, the read
    // models or the object store cannot be reached or lag.
    const MAX_ATTEMPTS: usize = 10;
    type Context = Services;

    async fn run(self, svc: &Services) -> Result<(), JobError> {
        confab_application::documents::process(svc, &self)
            .await
            .map_err(JobError::from)
    }
}

/// The monthly credit reset, run by the schedule.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct ResetCredits;

impl Job for ResetCredits {
    const NAME: &'static str = "credit_reset";
    const MAX_ATTEMPTS: usize = 3;
    type Context = Services;

    /// Accounts left unreset make the job fail retryably: the next attempt resets them, and
    /// only them (an account is reset once a period).
    async fn run(self, svc: &Services) -> Result<(), JobError> {
        let report = confab_application::credits::reset_all(svc).await?;
        match report.incomplete() {
            Some(e) => Err(JobError::Retry(e)),
            None => Ok(()),
        }
    }
}

/// The release of expired credit holds, run by its schedule.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct SweepCreditHolds;

impl Job for SweepCreditHolds {
    const NAME: &'static str = "credit_hold_sweep";
    const MAX_ATTEMPTS: usize = 1;
    type Context = Services;

    /// Holds that could not be released are left to the next tick: the sweep is idempotent
    /// and runs often, so a retry now would only repeat it.
    async fn run(self, svc: &Services) -> Result<(), JobError> {
        confab_application::credits::sweep_expired_holds(svc).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(matches!(
            JobError::from(AppError::NotFound("stripe event")),
            JobError::Permanent(_)
        ));
        assert!(matches!(
            JobError::from(AppError::ReadModel(sqlx::Error::PoolTimedOut)),
            JobError::Retry(_)
        ));
    }
}
