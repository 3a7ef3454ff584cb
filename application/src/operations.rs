//! Operators' use cases on projections: skipping an event a projection cannot apply (a
//! poison event it parked or halted on), recorded in the log with why and by whom.

use crate::{AppError, Problems};
use confab_domain::operations::{EventSkipped, ProjectionControl};
use confab_eventstore::EventStore;
use confab_eventstore::aggregate::execute;
use confab_projections::{ReadDb, parked};

/// Longest reason a skip may give.
pub const MAX_REASON_CHARS: usize = 500;

/// A skip, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The type of the event skipped.
    pub event_type: String,
    /// The position of the skip event in the log.
    pub recorded_at: u64,
}

/// `confab projections skip`: records in the log (stream `projection-{name}`) that projection
/// `name` passes over the event at `position`, which it parked or halted on, with `reason`
/// and `by`; the dead letter goes, and a halted projection goes on (it honours the skip, as
/// every rebuild does). An event neither parked nor halted on is refused: skip only what
/// failed.
pub async fn skip(
    store: &dyn EventStore,
    db: &ReadDb,
    name: &str,
    position: u64,
    reason: &str,
    by: &str,
) -> Result<Skipped, AppError> {
    let mut problems = Problems::new();
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        problems.add(
            "reason",
            format!("must say why, in 1 to {MAX_REASON_CHARS} characters"),
        );
    }
    if by.trim().is_empty() {
        problems.add("by", "must name the operator");
    }
    problems.into_result(())?;
    let row = parked::list(db, Some(name))
        .await?
        .into_iter()
        .find(|r| r.position as u64 == position)
        .ok_or(AppError::NotFound("parked or halted event"))?;
    let done = execute::<ProjectionControl>(
        store,
        &name.to_owned(),
        EventSkipped {
            projection: name.to_owned(),
            position,
            event_id: row.event_id,
            reason: reason.to_owned(),
            by: by.trim().to_owned(),
            at: crate::now(),
        },
        crate::metadata(None, Some(uuid::Uuid::now_v7())),
    )
    .await?;
    let recorded_at = match done.appended {
        Some(a) => a.last_position,
        None => store.head_position().await?,
    };
    // Only once the skip is in the log: a halted runner that sees its halt lifted reads the
    // skips again and passes over the event.
    let mut tx = db.begin().await?;
    parked::remove(&mut tx, name, position).await?;
    tx.commit().await?;
    Ok(Skipped {
        event_type: row.event_type,
        recorded_at,
    })
}
