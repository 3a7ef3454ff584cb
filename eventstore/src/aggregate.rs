//! Running domain commands against the store: load, decide, append with the expected version.
//!
//! An aggregate split out of another one ([`Aggregate::legacy_stream`]) is loaded from the
//! stream its history began in and then its own; only the own stream's version is expected on
//! append, since nothing is appended to the legacy stream any more.

use crate::{
    AppendResult, EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, StoreError,
};
use confab_domain::{Aggregate, EventSchema, UpcastError};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
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
    /// The new events (empty when the command changed nothing).
    pub events: Vec<A::Event>,
    /// Where they were appended, when there were any: await projections up to `last_position`.
    pub appended: Option<AppendResult>,
}

/// Domain events as events to append, each with `metadata`.
fn to_new_events<E: EventSchema>(events: &[E], metadata: &EventMetadata) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| {
            NewEvent::new(
                e.event_type(),
                e.schema_version(),
                e.to_payload(),
                metadata.clone(),
            )
        })
        .collect()
}

/// Loads aggregate `id` and the version of its own stream: its legacy stream's events first
/// (those that are its own), then its own stream's.
pub async fn load<A: Aggregate>(
    store: &dyn EventStore,
    id: &A::Id,
) -> Result<(A, u64), ExecuteError<A::Error>> {
    let mut state = A::default();
    if let Some(legacy) = A::legacy_stream(id) {
        for e in crate::read_whole_stream(store, &legacy).await? {
            state = state.evolve_legacy(id, &e.event_type, e.schema_version, e.payload)?;
        }
    }
    let mut version = 0;
    for e in crate::read_whole_stream(store, &A::stream_name(id)).await? {
        state = state.evolve_stored(&e.event_type, e.schema_version, e.payload)?;
        version = e.version;
    }
    Ok((state, version))
}

/// Whether aggregate `id`'s own stream holds any event (its legacy stream is not read): for an
/// aggregate whose first event is its creation, whether it exists.
pub async fn exists<A: Aggregate>(store: &dyn EventStore, id: &A::Id) -> Result<bool, StoreError> {
    Ok(!store
        .read_stream(&A::stream_name(id), 1, 1)
        .await?
        .is_empty())
}

/// Decides `command` against the current state of aggregate `id` and appends the events with
/// the version it was decided on; on a conflict, reloads and decides again.
#[tracing::instrument(skip_all, fields(stream = %A::stream_name(id)))]
pub async fn execute<A: Aggregate>(
    store: &dyn EventStore,
    id: &A::Id,
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
                events,
                appended: None,
            });
        }
        let new = to_new_events(&events, &metadata);
        match store
            .append(&stream, ExpectedVersion::Exact(version), new)
            .await
        {
            Ok(appended) => {
                return Ok(Executed {
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

/// Runs commands for many aggregates at once, with each aggregate's commands in one line.
///
/// Deciding a command needs the aggregate's state, and appending its events needs the version
/// that state was decided on. [`execute`] loads the whole stream for every command and, when two
/// commands of one aggregate race, lets one of them lose a version conflict and start again: both
/// costs grow with the stream and with the number of concurrent writers. The executor instead
///
/// - keeps each aggregate's state and version in memory after first use, so a command costs one
///   append, not a replay;
/// - queues the commands of one aggregate and lets one task at a time work the queue: it decides
///   every waiting command in order against the evolving state and appends all their events in
///   one append with the expected version. Concurrent writers of one stream therefore share an
///   append instead of conflicting, and a command refused by the aggregate refuses only itself.
///
/// The cached state is a guess, never trusted over the store: appends still carry the expected
/// version, and a conflict (another process wrote the stream) drops the cache, reloads the stream
/// and decides the queued commands again. Events are checked against the store's limits one
/// command at a time before they join a shared append, so one oversized command cannot fail its
/// neighbours.
pub struct CommandExecutor {
    store: Arc<dyn EventStore>,
    lines: std::sync::Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    max_cached: usize,
}

/// One aggregate's queue and cached state.
struct Line<A: Aggregate> {
    inner: std::sync::Mutex<LineState<A>>,
}

struct LineState<A: Aggregate> {
    queue: std::collections::VecDeque<Pending<A>>,
    /// Whether a task is working the queue.
    working: bool,
    /// The state and version after the last append this process made or read.
    cached: Option<(A, u64)>,
}

/// The result of one command.
pub type ExecuteResult<A> = Result<Executed<A>, ExecuteError<<A as Aggregate>::Error>>;

/// What a caller wants to see of the state right after its own command.
type View<A> = Arc<dyn Fn(&A) -> Box<dyn Any + Send> + Send + Sync>;

/// A command's events and its view of the state after them.
type Seen<A> = (Executed<A>, Option<Box<dyn Any + Send>>);

struct Pending<A: Aggregate> {
    command: A::Command,
    metadata: EventMetadata,
    view: Option<View<A>>,
    reply: tokio::sync::oneshot::Sender<Result<Seen<A>, ExecuteError<A::Error>>>,
}

impl std::fmt::Debug for CommandExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("max_cached", &self.max_cached)
            .finish_non_exhaustive()
    }
}

impl CommandExecutor {
    /// How many aggregates' states are kept by default.
    pub const DEFAULT_MAX_CACHED: usize = 10_000;

    /// An executor over `store` that keeps up to [`Self::DEFAULT_MAX_CACHED`] states.
    pub fn new(store: Arc<dyn EventStore>) -> Arc<Self> {
        Self::with_capacity(store, Self::DEFAULT_MAX_CACHED)
    }

    /// An executor that keeps up to `max_cached` aggregates' states in memory (idle ones are
    /// dropped when there are more).
    pub fn with_capacity(store: Arc<dyn EventStore>, max_cached: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            lines: std::sync::Mutex::new(HashMap::new()),
            max_cached: max_cached.max(1),
        })
    }

    /// The store commands are appended to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Decides `command` against aggregate `id` and appends its events, after every command of
    /// the same aggregate submitted before it. The command runs to its end even if the caller
    /// stops waiting.
    pub async fn execute<A: Aggregate>(
        self: &Arc<Self>,
        id: &A::Id,
        command: A::Command,
        metadata: EventMetadata,
    ) -> ExecuteResult<A>
    where
        A::Command: Clone + Send,
    {
        Ok(self.submit(id, command, metadata, None).await?.0)
    }

    /// Like [`Self::execute`], and also answers `view` of the aggregate's state right after this
    /// command's events: later commands of the same batch do not show in it, as they would in a
    /// read that comes after.
    pub async fn execute_then<A: Aggregate, R: Send + 'static>(
        self: &Arc<Self>,
        id: &A::Id,
        command: A::Command,
        metadata: EventMetadata,
        view: impl Fn(&A) -> R + Send + Sync + 'static,
    ) -> Result<(Executed<A>, R), ExecuteError<A::Error>>
    where
        A::Command: Clone + Send,
    {
        let view: View<A> = Arc::new(move |state: &A| Box::new(view(state)) as Box<dyn Any + Send>);
        let (done, seen) = self.submit(id, command, metadata, Some(view)).await?;
        let seen = seen
            .and_then(|s| s.downcast::<R>().ok())
            .expect("a view answers its own type");
        Ok((done, *seen))
    }

    async fn submit<A: Aggregate>(
        self: &Arc<Self>,
        id: &A::Id,
        command: A::Command,
        metadata: EventMetadata,
        view: Option<View<A>>,
    ) -> Result<Seen<A>, ExecuteError<A::Error>>
    where
        A::Command: Clone + Send,
    {
        let id = id.clone();
        let stream = A::stream_name(&id);
        let line = self.line::<A>(&stream);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut state = line.inner.lock().expect("executor line lock");
            state.queue.push_back(Pending {
                command,
                metadata,
                view,
                reply,
            });
            !std::mem::replace(&mut state.working, true)
        };
        if start {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.work::<A>(id, stream, line).await });
        }
        answer
            .await
            .unwrap_or(Err(ExecuteError::Store(StoreError::Closed)))
    }

    /// The line of `stream`, created on first use.
    fn line<A: Aggregate>(&self, stream: &str) -> Arc<Line<A>>
    where
        A::Command: Send,
    {
        let mut lines = self.lines.lock().expect("executor lines lock");
        if let Some(line) = lines.get(stream)
            && let Ok(line) = Arc::clone(line).downcast::<Line<A>>()
        {
            return line;
        }
        if lines.len() >= self.max_cached {
            // Only the map holds an idle line; a line in use is also held by its caller or task.
            lines.retain(|_, line| Arc::strong_count(line) > 1);
        }
        let line = Arc::new(Line::<A> {
            inner: std::sync::Mutex::new(LineState {
                queue: std::collections::VecDeque::new(),
                working: false,
                cached: None,
            }),
        });
        lines.insert(stream.to_owned(), line.clone());
        line
    }

    /// Works the queue of one line until it is empty.
    async fn work<A: Aggregate>(self: Arc<Self>, id: A::Id, stream: String, line: Arc<Line<A>>)
    where
        A::Command: Clone + Send,
    {
        loop {
            let (batch, cached) = {
                let mut state = line.inner.lock().expect("executor line lock");
                if state.queue.is_empty() {
                    state.working = false;
                    return;
                }
                let n = state.queue.len().min(MAX_BATCH_COMMANDS);
                let batch: Vec<Pending<A>> = state.queue.drain(..n).collect();
                (batch, state.cached.take())
            };
            let (cached, rest) = self.run_batch::<A>(&id, &stream, cached, batch).await;
            let mut state = line.inner.lock().expect("executor line lock");
            state.cached = cached;
            // Commands that did not fit go first next time, keeping submission order.
            for pending in rest.into_iter().rev() {
                state.queue.push_front(pending);
            }
        }
    }

    /// Decides and appends one batch and answers its commands. Returns the state to cache (none
    /// when the store failed and the state is unknown) and the commands left for the next batch
    /// because their events would have made the append longer than the store accepts.
    async fn run_batch<A: Aggregate>(
        &self,
        id: &A::Id,
        stream: &str,
        cached: Option<(A, u64)>,
        mut batch: Vec<Pending<A>>,
    ) -> (Option<(A, u64)>, Vec<Pending<A>>)
    where
        A::Command: Clone,
    {
        let mut rest: Vec<Pending<A>> = Vec::new();
        let mut current = cached;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let from_cache = current.is_some();
            let (state, version) = match current.take() {
                Some(c) => c,
                None => match load::<A>(self.store.as_ref(), id).await {
                    Ok(c) => c,
                    Err(e) => {
                        answer_all(batch, || clone_error(&e));
                        return (None, rest);
                    }
                },
            };
            let decided = decide_batch(state, &batch, self.store.limits(), stream);
            let Decided {
                state: after,
                outcomes,
                events,
            } = decided;
            // An append from a stale cache is caught by its expected version; a refusal (or a
            // no-op) appends nothing, so it is checked here: if another process wrote the
            // stream since, the batch is decided again on the stream as it is.
            let refused = events.is_empty() || outcomes.iter().any(Result::is_err);
            if from_cache && refused && attempt < MAX_ATTEMPTS {
                match self.store.read_stream(stream, version + 1, 1).await {
                    Ok(newer) if !newer.is_empty() => {
                        tracing::debug!(stream, "a refusal on a stale state; reloading");
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        answer_all(batch, || ExecuteError::Store(e.clone()));
                        return (None, rest);
                    }
                }
            }
            if outcomes.len() < batch.len() {
                let mut later = batch.split_off(outcomes.len());
                later.append(&mut rest);
                rest = later;
            }
            if events.is_empty() {
                answer(batch, outcomes, None);
                return (Some((after, version)), rest);
            }
            match self
                .store
                .append(stream, ExpectedVersion::Exact(version), events)
                .await
            {
                Ok(appended) => {
                    let next = appended.next_expected_version;
                    answer(batch, outcomes, Some(appended));
                    return (Some((after, next)), rest);
                }
                Err(e) if e.is_conflict() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(
                        stream,
                        attempt,
                        "version conflict: another writer appended; reloading"
                    );
                    if attempt > 1 {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    current = None;
                }
                Err(e) => {
                    answer_all(batch, || ExecuteError::Store(e.clone()));
                    return (None, rest);
                }
            }
        }
    }
}

/// One command's events, or why it was refused.
type Outcome<A> = Result<
    (Vec<<A as Aggregate>::Event>, Option<Box<dyn Any + Send>>),
    ExecuteError<<A as Aggregate>::Error>,
>;

/// At most this many commands share one append.
const MAX_BATCH_COMMANDS: usize = 64;

/// A batch decided against one state.
struct Decided<A: Aggregate> {
    state: A,
    /// Per command, for a prefix of the batch (the rest did not fit in one append): its events,
    /// or why it was refused.
    outcomes: Vec<Outcome<A>>,
    /// Every accepted command's events, in order, ready to append.
    events: Vec<NewEvent>,
}

fn decide_batch<A: Aggregate>(
    mut state: A,
    batch: &[Pending<A>],
    limits: &Limits,
    stream: &str,
) -> Decided<A>
where
    A::Command: Clone,
{
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    for pending in batch {
        let decided = match state.decide(pending.command.clone()) {
            Ok(decided) => decided,
            Err(e) => {
                outcomes.push(Err(ExecuteError::Domain(e)));
                continue;
            }
        };
        let new = to_new_events(&decided, &pending.metadata);
        if !new.is_empty()
            && let Err(e) = crate::validate_append(limits, stream, &new)
        {
            outcomes.push(Err(ExecuteError::Store(e)));
            continue;
        }
        if !events.is_empty() && events.len() + new.len() > limits.max_events_per_append {
            // This command and the ones after it go in the next append.
            break;
        }
        for e in &decided {
            state = state.evolve(e);
        }
        events.extend(new);
        let seen = pending.view.as_ref().map(|view| view(&state));
        outcomes.push(Ok((decided, seen)));
    }
    Decided {
        state,
        outcomes,
        events,
    }
}

fn answer<A: Aggregate>(
    batch: Vec<Pending<A>>,
    outcomes: Vec<Outcome<A>>,
    appended: Option<AppendResult>,
) {
    for (pending, outcome) in batch.into_iter().zip(outcomes) {
        let result = outcome.map(|(events, seen)| {
            let done = Executed {
                appended: if events.is_empty() { None } else { appended },
                events,
            };
            (done, seen)
        });
        // The caller may have stopped waiting; the command is done either way.
        let _ = pending.reply.send(result);
    }
}

fn answer_all<A: Aggregate>(batch: Vec<Pending<A>>, error: impl Fn() -> ExecuteError<A::Error>) {
    for pending in batch {
        let _ = pending.reply.send(Err(error()));
    }
}

fn clone_error<E: std::error::Error + Clone + 'static>(e: &ExecuteError<E>) -> ExecuteError<E> {
    match e {
        ExecuteError::Domain(e) => ExecuteError::Domain(e.clone()),
        ExecuteError::Store(e) => ExecuteError::Store(e.clone()),
        ExecuteError::Upcast(e) => ExecuteError::Upcast(e.clone()),
    }
}
