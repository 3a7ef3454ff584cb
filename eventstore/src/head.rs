//! The head signal: the last committed position, shared between a store's writer, its listener
//! and the callers waiting for new events.

use crate::{StoreError, StoreResult};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Moves the head forward (never back) and wakes waiters if it moved.
pub(crate) fn advance(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|h| {
        let moved = to > *h;
        if moved {
            *h = to;
        }
        moved
    });
}

/// Waits until the head passes `after` or `timeout` ends. Woken by the signal; every `every`
/// it also re-reads the head from the database with `read_head`, in case an append the signal
/// cannot see (another process, a lost notification) moved it.
pub(crate) async fn wait_past<F, Fut>(
    mut head: watch::Receiver<u64>,
    after: u64,
    timeout: Duration,
    every: Duration,
    mut read_head: F,
) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<u64>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = *head.borrow_and_update();
        if seen > after {
            return Ok(seen);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(seen);
        }
        let nap = (deadline - now).min(every);
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return Err(StoreError::Closed);
                }
            }
            _ = tokio::time::sleep(nap) => {
                let stored = read_head().await?;
                if stored > after {
                    return Ok(stored);
                }
            }
        }
    }
}
