//! The event store: the append-only log that is Confab's only source of truth.
//!
//! One trait, [`EventStore`], and its adapters: [`sqlite::SqliteStore`] (the embedded default),
//! [`postgres::PostgresStore`] (several processes), and `kurrent::KurrentStore` behind the
//! `kurrentdb` cargo feature. The `conformance` module holds the one test suite every adapter
//! must pass, and `testing` the test-database helpers; both only with the `testing` feature
//! (tests and benchmarks enable it).

pub mod aggregate;
#[cfg(feature = "testing")]
pub mod conformance;
mod error;
mod group_commit;
mod head;
#[cfg(feature = "kurrentdb")]
pub mod kurrent;
pub mod postgres;
pub mod sealed;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use error::StoreError;
pub use types::{
    AppendResult, EventMetadata, ExpectedVersion, Limits, NewEvent, RecordedEvent, validate_append,
};

use async_trait::async_trait;
use std::time::Duration;

/// Result alias for event store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The append-only event log, split into streams (one per aggregate instance) and totally ordered
/// by a global position.
///
/// Versions are 1-based within a stream (a stream with `n` events is at version `n`; one that does
/// not exist is at version 0). Global positions are strictly increasing in commit order and start
/// above 0, so `0` means "before the first event". They are dense on SQLite and PostgreSQL and
/// merely increasing on KurrentDB.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`; either all of them
    /// are stored or none is.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult>;

    /// Reads up to `limit` events of `stream` with version `>= from_version`, in version order.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>>;

    /// Reads up to `limit` events of the global log with position `> after`, in position order.
    ///
    /// Never returns an event while an event with a lower position can still appear: what it
    /// returns is a prefix of the log that can no longer grow in the middle.
    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>>;

    /// The position of the last event of the global log (0 when it is empty).
    async fn head_position(&self) -> StoreResult<u64>;

    /// Waits until the log holds an event with position `> after`, or `timeout` passes; returns
    /// the head position seen (which is `<= after` on timeout).
    async fn wait_for_events(&self, after: u64, timeout: Duration) -> StoreResult<u64>;

    /// The limits this store enforces on input.
    fn limits(&self) -> &Limits;
}

/// Reads a whole stream, following pages until its end.
pub async fn read_whole_stream(
    store: &dyn EventStore,
    stream: &str,
) -> StoreResult<Vec<RecordedEvent>> {
    const PAGE: usize = 1_000;
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_stream(stream, from, PAGE).await?;
        let n = page.len();
        if let Some(last) = page.last() {
            from = last.version + 1;
        }
        out.extend(page);
        if n < PAGE {
            return Ok(out);
        }
    }
}
