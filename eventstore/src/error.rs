//! The event store's typed errors.

use crate::ExpectedVersion;

/// What can go wrong in the event store. Input errors are detected before anything is written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was appended.
    #[error("stream {stream:?} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was tried.
        actual: u64,
    },
    /// The stream name is empty, too long or contains control characters.
    #[error("invalid stream name: {0}")]
    InvalidStreamName(String),
    /// One event's payload and metadata exceed the configured limit.
    #[error("event payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Serialised size of the offending event.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An append carried no events, or one event was malformed.
    #[error("invalid append: {0}")]
    InvalidInput(String),
    /// The database failed or is unreachable.
    #[error("event store database error: {0}")]
    Database(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// A stored event could not be decoded.
    #[error("event store serialization error: {0}")]
    Serialization(String),
    /// The store is shutting down and takes no more appends.
    #[error("event store is closed")]
    Closed,
}

impl StoreError {
    /// Wraps any database error.
    pub fn database(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Database(std::sync::Arc::new(e))
    }

    /// Whether a retry from fresh state could succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::database(e)
    }
}
