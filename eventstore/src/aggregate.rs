//! Running domain commands against the store: load, decide, append with the expected version.

use crate::{AppendResult, EventMetadata, EventStore, ExpectedVersion, NewEvent, StoreError};
use confab_domain::{Aggregate, EventSchema, UpcastError};
use uuid::Uuid;

/// How many times a command is decided again from fresh state after a version conflict. Under
/// contention one append per stream wins each commit round, so this bounds how many concurrent
/// writers of one stream all get through.
const MAX_ATTEMPTS: u32 = 16;

/// A pause before retrying: grows with the attempt (up to 32 ms) with random jitter, so the
/// losers of a round do not collide again in lock step.
fn backoff(attempt: u32) -> std::time::Duration {
    let cap_ms = 1u64 << attempt.min(5);
    // The random tail of a v7 UUID is a cheap source of jitter.
    let jitter = (Uuid::now_v7().as_u128() & 0xffff) as u64;
    std::time::Duration::from_micros(jitter % (cap_ms * 1000))
}

/// Why a command did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(E),
    /// The store failed, or conflicts persisted through every retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be read.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The new events (empty when the command changed nothing).
    pub events: Vec<A::Event>,
    /// Where they were appended, when there were any: await projections up to `last_position`.
    pub appended: Option<AppendResult>,
}

/// Loads aggregate `id` and its version from its stream.
pub async fn load<A: Aggregate>(
    store: &dyn EventStore,
    id: &Uuid,
) -> Result<(A, u64), ExecuteError<A::Error>> {
    let stream = A::stream_name(id);
    let mut state = A::default();
    let mut version = 0;
    for e in crate::read_whole_stream(store, &stream).await? {
        let event = A::Event::from_stored(&e.event_type, e.schema_version, e.payload)?;
        state = state.evolve(&event);
        version = e.version;
    }
    Ok((state, version))
}

/// Decides `command` against the current state of aggregate `id` and appends the events with
/// the version it was decided on; on a conflict, reloads and decides again.
#[tracing::instrument(skip_all, fields(stream = %A::stream_name(id)))]
pub async fn execute<A: Aggregate>(
    store: &dyn EventStore,
    id: &Uuid,
    command: A::Command,
    metadata: EventMetadata,
) -> Result<Executed<A>, ExecuteError<A::Error>>
where
    A::Command: Clone,
{
    let stream = A::stream_name(id);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (state, version) = load::<A>(store, id).await?;
        let events = state
            .decide(command.clone())
            .map_err(ExecuteError::Domain)?;
        if events.is_empty() {
            return Ok(Executed {
                state,
                events,
                appended: None,
            });
        }
        let new: Vec<NewEvent> = events
            .iter()
            .map(|e| {
                NewEvent::new(
                    e.event_type(),
                    e.schema_version(),
                    e.to_payload(),
                    metadata.clone(),
                )
            })
            .collect();
        match store
            .append(&stream, ExpectedVersion::Exact(version), new)
            .await
        {
            Ok(appended) => {
                let state = events.iter().fold(state, |s, e| s.evolve(e));
                return Ok(Executed {
                    state,
                    events,
                    appended: Some(appended),
                });
            }
            Err(e) if e.is_conflict() && attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, "version conflict, deciding again from fresh state");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
