//! The persisted form of events: stable type names, schema versions and upcasting.

/// How an event is written to and read from the store.
///
/// The type name and the payload layout are a persisted contract: they never change in place. A
/// new layout gets a new schema version, and [`EventSchema::from_stored`] upcasts every older
/// version it has ever written, so old events are read, never rewritten.
pub trait EventSchema: Sized {
    /// The stable type name, e.g. `chat.message_sent`.
    fn event_type(&self) -> &'static str;
    /// The schema version this code writes for this event.
    fn schema_version(&self) -> u32;
    /// The payload, in the current schema.
    fn to_payload(&self) -> serde_json::Value;
    /// Reads a stored event of any known schema version, upcasting older ones.
    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, UpcastError>;
}

/// A stored event that this code cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    /// The type name belongs to no event of this aggregate.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The schema version is newer than this code, or was never written.
    #[error("event type {event_type:?} has no schema version {version}")]
    UnknownVersion {
        /// The type name.
        event_type: String,
        /// The version found.
        version: u32,
    },
    /// The payload does not match its schema.
    #[error("malformed {event_type:?} payload: {reason}")]
    Malformed {
        /// The type name.
        event_type: String,
        /// What serde said.
        reason: String,
    },
}

/// Deserialises `payload` as `T`, naming the event type in the error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    event_type: &str,
    payload: serde_json::Value,
) -> Result<T, UpcastError> {
    serde_json::from_value(payload).map_err(|e| UpcastError::Malformed {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })
}
