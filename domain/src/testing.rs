//! A given/when/then harness for aggregates: given past events, when a command, then these new
//! events or this error.
//!
//! [`given_stored`] starts from streams as the store holds them, for aggregates split out of
//! another one: their legacy stream mixes several aggregates' events.

use crate::{Aggregate, EventSchema};

/// Starts a scenario from past events.
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let history: Vec<A::Event> = history.into_iter().collect();
    Given {
        state: A::replay(&history),
    }
}

/// An event as a store holds it: type name, schema version and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The stable type name.
    pub event_type: String,
    /// The schema version it was written with.
    pub schema_version: u32,
    /// The payload in that version.
    pub payload: serde_json::Value,
}

/// `event` (of any aggregate) as the store would hold it.
pub fn stored(event: &impl EventSchema) -> StoredEvent {
    StoredEvent {
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event.to_payload(),
    }
}

/// Starts a scenario from instance `id`'s streams as loading reads them: its legacy stream
/// first (only its own events there count), then its own stream (types moved out skipped).
#[track_caller]
pub fn given_stored<A: Aggregate>(
    id: &A::Id,
    legacy: impl IntoIterator<Item = StoredEvent>,
    own: impl IntoIterator<Item = StoredEvent>,
) -> Given<A> {
    let state = legacy
        .into_iter()
        .try_fold(A::default(), |s, e| {
            s.evolve_legacy(id, &e.event_type, e.schema_version, e.payload)
        })
        .and_then(|s| {
            own.into_iter().try_fold(s, |s, e| {
                s.evolve_stored(&e.event_type, e.schema_version, e.payload)
            })
        })
        .unwrap_or_else(|e| panic!("the stored history does not load: {e}"));
    Given { state }
}

/// A state built from past events.
pub struct Given<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` against the state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.decide(command);
        Then {
            state: self.state,
            result,
        }
    }
}

/// The outcome of a decision, to assert on.
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command produced exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                events.iter().fold(self.state, |s, e| s.evolve(e))
            }
            Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
        }
    }

    /// Asserts the command was refused with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error) {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }
}
