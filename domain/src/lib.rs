//! Confab's domain: aggregates, their commands and events, and the pure `decide`/`evolve`
//! functions that hold the business rules.
//!
//! Nothing here does IO, reads a clock or draws a random number: whatever a decision needs
//! (the time, new ids, external results) arrives in the command. That keeps every rule testable
//! with plain `#[test]`s in the given/when/then form of [`testing`].

pub mod account;
pub mod billing;
pub mod billing_account;
pub mod catalogue;
pub mod chat;
pub mod credits;
pub mod document;
pub mod log;
pub mod operations;
pub mod patterns;
pub mod privacy;
pub mod provider;
mod schema;
pub mod session;
pub mod settings;
pub mod sources;
pub mod testing;
mod values;

pub use schema::{EventSchema, UpcastError};
pub use values::{ChatTitle, MessageContent, MessageKind, Role, ValidationError};

/// An event-sourced aggregate: its state is a fold of its events, and it decides which new events
/// a command produces.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// What names one instance (a `Uuid` for most aggregates).
    type Id: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// What the aggregate can be asked to do.
    type Command;
    /// What it records.
    type Event: EventSchema + Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// Why it refuses a command.
    type Error: Clone + PartialEq + std::fmt::Debug + std::error::Error + Send + Sync;

    /// Event types that this aggregate's streams still hold from before they moved to another
    /// aggregate: loading skips them (the other aggregate reads them as its legacy history).
    const MOVED_OUT: &'static [&'static str] = &[];

    /// The stream name of the aggregate instance `id`.
    fn stream_name(id: &Self::Id) -> String;

    /// The stream that instance `id`'s history began in, when this aggregate was split out of
    /// another one: loading reads the events of it that are this aggregate's and this instance's
    /// (see [`Aggregate::owns_legacy`]) before its own stream. Nothing is appended there, and
    /// the expected version of an append is that of the own stream alone.
    fn legacy_stream(_id: &Self::Id) -> Option<String> {
        None
    }

    /// Whether `event`, read from the legacy stream, belongs to instance `id` (a legacy stream
    /// may hold several instances' events).
    fn owns_legacy(_id: &Self::Id, _event: &Self::Event) -> bool {
        true
    }

    /// Decides the events `command` produces from the current state, or refuses it.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state.
    fn evolve(self, event: &Self::Event) -> Self;

    /// Folds a history into a state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), |s, e| s.evolve(e))
    }

    /// Applies one stored event of the instance's own stream: types moved out are skipped,
    /// anything else must be this aggregate's.
    fn evolve_stored(
        self,
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, UpcastError> {
        if Self::MOVED_OUT.contains(&event_type) {
            return Ok(self);
        }
        let event = Self::Event::from_stored(event_type, schema_version, payload)?;
        Ok(self.evolve(&event))
    }

    /// Applies one stored event of instance `id`'s legacy stream: only this aggregate's events
    /// that belong to `id` count; the other aggregates' are skipped.
    fn evolve_legacy(
        self,
        id: &Self::Id,
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, UpcastError> {
        match Self::Event::from_stored(event_type, schema_version, payload) {
            Ok(event) if Self::owns_legacy(id, &event) => Ok(self.evolve(&event)),
            Ok(_) | Err(UpcastError::UnknownType(_)) => Ok(self),
            Err(e) => Err(e),
        }
    }
}
