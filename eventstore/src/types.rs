//! The event envelope and the values that go in and out of the store.

use crate::{StoreError, StoreResult};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The state a stream must be in for an append to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be at exactly this version (0 is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }

    /// Encoding shared by the SQL adapters: -1 any, otherwise the exact version.
    pub(crate) fn as_i64(self) -> i64 {
        match self {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(v) => v as i64,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Who caused an event and in answer to what: carried with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    /// The user on whose behalf the command ran, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Uuid>,
    /// The request (or job) this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message (command, event or job) that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
}

/// An event on its way into the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id (UUID v7); appending the same id twice is refused by the store.
    pub event_id: Uuid,
    /// Stable type name, e.g. `chat.message_sent`.
    pub event_type: String,
    /// Version of the payload schema, for upcasting old events on read.
    pub schema_version: u32,
    /// The event's data.
    pub payload: serde_json::Value,
    /// Actor, correlation and causation.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// A new event with a fresh v7 id.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: serde_json::Value,
        metadata: EventMetadata,
    ) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
        }
    }
}

/// An event as stored: the envelope around the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    /// Unique id.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream: String,
    /// 1-based version within the stream.
    pub version: u64,
    /// Position in the global log.
    pub position: u64,
    /// Stable type name.
    pub event_type: String,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// The event's data.
    pub payload: serde_json::Value,
    /// Actor, correlation and causation.
    pub metadata: EventMetadata,
    /// When the store committed it.
    pub recorded_at: DateTime<Utc>,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (the last appended event's version).
    pub next_expected_version: u64,
    /// Global position of the first appended event.
    pub first_position: u64,
    /// Global position of the last appended event: await projections up to here.
    pub last_position: u64,
}

/// Input limits, enforced before anything is written.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest stream name, in bytes.
    pub max_stream_name_bytes: usize,
    /// Largest serialised payload plus metadata of one event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stream_name_bytes: 200,
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 1_000,
        }
    }
}

/// Checks an append against `limits`; every adapter calls it before touching storage.
pub fn validate_append(limits: &Limits, stream: &str, events: &[NewEvent]) -> StoreResult<()> {
    if stream.is_empty() {
        return Err(StoreError::InvalidStreamName("empty".into()));
    }
    if stream.len() > limits.max_stream_name_bytes {
        return Err(StoreError::InvalidStreamName(format!(
            "{} bytes, longer than {}",
            stream.len(),
            limits.max_stream_name_bytes
        )));
    }
    if stream.chars().any(char::is_control) || stream.starts_with('$') {
        return Err(StoreError::InvalidStreamName(
            "contains control characters or starts with '$'".into(),
        ));
    }
    if events.is_empty() {
        return Err(StoreError::InvalidInput("no events to append".into()));
    }
    if events.len() > limits.max_events_per_append {
        return Err(StoreError::InvalidInput(format!(
            "{} events in one append, more than {}",
            events.len(),
            limits.max_events_per_append
        )));
    }
    for e in events {
        if e.event_type.is_empty() || e.event_type.len() > 200 || e.event_type.starts_with('$') {
            return Err(StoreError::InvalidInput(format!(
                "invalid event type {:?}",
                e.event_type
            )));
        }
        let size = encoded_size(&e.payload) + encoded_size(&e.metadata);
        if size > limits.max_event_bytes {
            return Err(StoreError::PayloadTooLarge {
                size,
                limit: limits.max_event_bytes,
            });
        }
    }
    Ok(())
}

fn encoded_size<T: Serialize>(v: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Serialising a serde_json::Value or plain struct into a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(payload: serde_json::Value) -> NewEvent {
        NewEvent::new("t", 1, payload, EventMetadata::default())
    }

    #[test]
    fn expected_version_matching_follows_its_definition() {
        assert!(ExpectedVersion::Any.matches(7));
        assert!(ExpectedVersion::NoStream.matches(0));
        assert!(!ExpectedVersion::NoStream.matches(1));
        assert!(ExpectedVersion::Exact(3).matches(3));
        assert!(!ExpectedVersion::Exact(3).matches(4));
    }

    #[test]
    fn validation_refuses_bad_streams_and_oversized_payloads() {
        let l = Limits {
            max_event_bytes: 100,
            ..Limits::default()
        };
        let ok = [ev(serde_json::json!({"a": 1}))];
        assert!(validate_append(&l, "chat-1", &ok).is_ok());
        assert!(matches!(
            validate_append(&l, "", &ok),
            Err(StoreError::InvalidStreamName(_))
        ));
        assert!(matches!(
            validate_append(&l, &"x".repeat(201), &ok),
            Err(StoreError::InvalidStreamName(_))
        ));
        assert!(matches!(
            validate_append(&l, "a\nb", &ok),
            Err(StoreError::InvalidStreamName(_))
        ));
        assert!(matches!(
            validate_append(&l, "s", &[]),
            Err(StoreError::InvalidInput(_))
        ));
        let big = [ev(serde_json::json!({"a": "y".repeat(200)}))];
        assert!(matches!(
            validate_append(&l, "s", &big),
            Err(StoreError::PayloadTooLarge { limit: 100, .. })
        ));
    }
}
