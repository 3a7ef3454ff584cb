//! Confab's domain: aggregates, their commands and events, and the pure `decide`/`evolve`
//! functions that hold the business rules.
//!
//! Nothing here does IO, reads a clock or draws a random number: whatever a decision needs
//! (the time, new ids, external results) arrives in the command. That keeps every rule testable
//! with plain `#[test]`s in the given/when/then form of [`testing`].

pub mod account;
pub mod billing;
pub mod catalogue;
pub mod chat;
pub mod credits;
pub mod patterns;
pub mod provider;
mod schema;
pub mod settings;
pub mod testing;
mod values;

pub use schema::{EventSchema, UpcastError};
pub use values::{ChatTitle, MessageContent, MessageKind, Role, ValidationError};

/// An event-sourced aggregate: its state is a fold of its events, and it decides which new events
/// a command produces.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// What the aggregate can be asked to do.
    type Command;
    /// What it records.
    type Event: EventSchema + Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// Why it refuses a command.
    type Error: Clone + PartialEq + std::fmt::Debug + std::error::Error + Send + Sync;

    /// The stream name of the aggregate instance `id`.
    fn stream_name(id: &uuid::Uuid) -> String;

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
}
