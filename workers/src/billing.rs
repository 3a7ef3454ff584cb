//! The Stripe job queue: its own SQLite file (`stripe-jobs.db` in the data directory, WAL, no
//! fsync per push), registered on the same apalis monitor as the reply worker. What a job does
//! is [`confab_application::billing::process_stripe_event`]; every event still unprocessed is
//! queued again at start-up ([`confab_application::billing::requeue_unprocessed`]), so neither
//! a crash between the webhook's append and its push nor a lost queue file loses an event.

use crate::sqlite_queue::{OpenedSqliteQueue, SqliteQueue};
use apalis::prelude::Monitor;
use confab_application::Services;
use confab_application::jobs::ProcessStripeEvent;

/// The queue name of Stripe jobs (pinned, so renaming the Rust type strands nothing).
pub const STRIPE_QUEUE: &str = "process_stripe_event";

/// The queue, as the application pushes to it.
pub type StripeQueue = SqliteQueue<ProcessStripeEvent>;

/// The queue and the listener that wakes its worker.
pub type OpenedStripeQueue = OpenedSqliteQueue<ProcessStripeEvent>;

/// Adds the worker (`concurrency` jobs at a time) to `monitor`.
pub fn register(
    monitor: Monitor,
    opened: OpenedStripeQueue,
    svc: Services,
    concurrency: usize,
) -> Monitor {
    crate::sqlite_queue::register(monitor, opened, svc, concurrency, "stripe-events")
}
