//! Operators' decisions about projections, kept in the log: an event a projection cannot apply
//! (a poison event) skipped on an operator's word, with why and by whom (stream
//! `projection-{name}`). A projection honours every skip recorded for it, in a rebuild too.

use crate::Aggregate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use uuid::Uuid;

/// An operator told a projection to pass over the event at `position`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSkipped {
    /// The projection.
    pub projection: String,
    /// The global position of the event it passes over.
    pub position: u64,
    /// That event's id, so the skip names exactly one event.
    pub event_id: Uuid,
    /// Why, as the operator put it.
    pub reason: String,
    /// Who.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Stable type name of the skip event.
pub const EVENT_SKIPPED: &str = "projection.event_skipped";

crate::schema::event_schema! {
    impl EventSchema for EventSkipped = EVENT_SKIPPED, version 1;
}

/// Skips are never refused (the edge checks the event is parked or halted on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("projection control error")]
pub enum ControlError {}

/// What operators decided about one projection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectionControl {
    /// Positions skipped.
    pub skipped: HashSet<u64>,
}

impl Aggregate for ProjectionControl {
    type Id = String;
    type Command = EventSkipped;
    type Event = EventSkipped;
    type Error = ControlError;

    fn stream_name(id: &String) -> String {
        format!("projection-{id}")
    }

    /// A position is skipped once: a repeated skip records nothing more.
    fn decide(&self, c: EventSkipped) -> Result<Vec<EventSkipped>, ControlError> {
        if self.skipped.contains(&c.position) {
            return Ok(vec![]);
        }
        Ok(vec![c])
    }

    fn evolve(mut self, e: &EventSkipped) -> Self {
        self.skipped.insert(e.position);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn skipped(position: u64) -> EventSkipped {
        EventSkipped {
            projection: "settings".into(),
            position,
            event_id: Uuid::from_u128(position.into()),
            reason: "unreadable payload".into(),
            by: "ops".into(),
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn a_position_is_skipped_once() {
        given::<ProjectionControl>([])
            .when(skipped(7))
            .then([skipped(7)]);
        given::<ProjectionControl>([skipped(7)])
            .when(skipped(7))
            .then([]);
        given::<ProjectionControl>([skipped(7)])
            .when(skipped(8))
            .then([skipped(8)]);
    }
}
