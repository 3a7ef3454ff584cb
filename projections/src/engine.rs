//! The projection engine: runs each projection from its checkpoint to the head of the log and
//! keeps it there.
//!
//! A batch of events and the checkpoint move in one transaction, so a crash (or an error) at any
//! point leaves the read model exactly as of the last committed checkpoint: no event is applied
//! twice or skipped. The transaction also re-reads the checkpoint and refuses to commit if it
//! moved (fencing), so two runners of one projection (a lease that expired, a rebuild running
//! beside `serve`) can never both apply the same batch. On PostgreSQL each process takes a
//! session advisory lock per projection, so normally exactly one runner is active; when its
//! process dies the lock goes with its connection and another process takes over.

use crate::db::{ReadDb, Tx};
use crate::execute;
use async_trait::async_trait;
use confab_domain::UpcastError;
use confab_eventstore::{EventStore, RecordedEvent, StoreError};
use sqlx::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events read and applied per transaction.
pub const DEFAULT_BATCH: usize = 1_000;

/// A following runner does not write its checkpoint for a batch it has nothing to apply from
/// (events of other projections), until it has skipped this many positions...
const SKIPPED_BEFORE_PERSIST: u64 = 10_000;
/// ...or this long has passed since it last wrote, or it is idle. Every batch otherwise costs a
/// write transaction (and, on SQLite, a durable commit in the one writer's queue) per
/// projection, whatever it holds. The unwritten positions are safe to read again after a crash:
/// they change nothing.
const SKIPPED_PERSIST_EVERY: Duration = Duration::from_secs(1);
/// How long the log must be quiet before a runner writes the positions it skipped.
const SKIPPED_QUIET: Duration = Duration::from_millis(200);

/// Why a projection could not apply events.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The read-model database failed.
    #[error("read model database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be read; the projection stops rather than skip it.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// Another runner moved the checkpoint; this batch was not applied.
    #[error("checkpoint of {name} moved to {actual} under this runner (expected {expected})")]
    CheckpointMoved {
        /// The projection.
        name: String,
        /// Where this runner thought it was.
        expected: u64,
        /// Where it is.
        actual: u64,
    },
    /// No projection has this name.
    #[error("unknown projection {0:?}")]
    Unknown(String),
    /// The projection stopped on an event it cannot apply (CONFAB_PROJECTION_ON_ERROR=halt):
    /// every event up to `after` is applied; `position` waits for an operator.
    #[error("projection {name} halted at position {position}: an event it cannot apply")]
    Halted {
        /// The projection.
        name: String,
        /// Its checkpoint.
        after: u64,
        /// The poison event.
        position: u64,
    },
}

impl ProjectionError {
    /// Whether the failure comes from the event or what the projection does with it (a payload
    /// it cannot read, a statement the database refuses), so that retrying cannot help for
    /// ever, rather than from the database being out of reach.
    pub fn is_poison(&self) -> bool {
        match self {
            ProjectionError::Upcast(_) => true,
            ProjectionError::Database(sqlx::Error::Database(e)) => statement_refused(&**e),
            ProjectionError::Database(e) => matches!(
                e,
                sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::Encode(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::RowNotFound
            ),
            _ => false,
        }
    }
}

/// Whether the database refused a statement for what it says or writes (bad data, a broken
/// constraint, a missing table or column), as opposed to being busy, shutting down, out of
/// connections or out of disk: only the former can make an event poison.
fn statement_refused(e: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // SQLSTATE classes: 22 data exception, 23 integrity constraint violation, 42 syntax
        // error or access rule violation (an undefined table or column among them).
        let code = pg.code();
        return ["22", "23", "42"]
            .iter()
            .any(|class| code.starts_with(class));
    }
    // SQLite: the primary result code (the low byte of the extended one): ERROR (a missing
    // table or column, a bad statement), TOOBIG, CONSTRAINT, MISMATCH, RANGE.
    e.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 1 | 18 | 19 | 20 | 25))
}

/// What a projection does with an event it cannot apply after its retries
/// (`CONFAB_PROJECTION_ON_ERROR`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop there: `/readyz` names it until an operator retries or skips the event.
    #[default]
    Halt,
    /// Park the event in `projection_parked` and go on.
    Park,
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "halt" => Ok(OnError::Halt),
            "park" => Ok(OnError::Park),
            other => Err(format!("{other:?} is neither halt nor park")),
        }
    }
}

/// A read model built from the event log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name, the key of its checkpoint.
    fn name(&self) -> &'static str;
    /// The version of what it writes. Raise it when the read model changes shape or meaning
    /// for events already in the log: a read model built by another version is rebuilt from
    /// the log at start-up.
    fn version(&self) -> u32 {
        1
    }
    /// Whether it reads events of this type; the others only move its checkpoint.
    fn handles(&self, event_type: &str) -> bool;
    /// Applies one event inside the batch's transaction.
    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError>;
    /// Applies a batch of events it handles, in order, inside one transaction. The default
    /// applies them one by one; a projection may write runs of similar events set-wise.
    async fn apply_batch(
        &self,
        tx: &mut Tx,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for e in events {
            self.apply(tx, e).await?;
        }
        Ok(())
    }
    /// Deletes every row of the read model, for a rebuild.
    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError>;
}

/// What retrying one parked event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// Applied now, and out of the dead letters.
    Applied,
    /// A halt lifted: the runner tries the event again itself.
    Resumed,
    /// It failed again, for this reason; it stays parked.
    Failed(String),
}

/// A projection's place against the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The projection.
    pub name: &'static str,
    /// Its checkpoint.
    pub position: u64,
    /// The head of the log.
    pub head: u64,
    /// The position of the event it halted on, if it did.
    pub halted: Option<u64>,
    /// How many events it has parked (`CONFAB_PROJECTION_ON_ERROR=park`).
    pub parked: u64,
    /// When the oldest event it has not applied yet was recorded (none: caught up).
    pub behind_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Status {
    /// How many positions it is behind.
    pub fn lag(&self) -> u64 {
        self.head.saturating_sub(self.position)
    }

    /// How far behind it is in time at `now`: the age of the oldest event it has not applied.
    pub fn lag_seconds(&self, now: chrono::DateTime<chrono::Utc>) -> f64 {
        self.behind_since
            .map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0)
    }
}

/// Read-your-writes: lets a caller wait until a projection has applied a position.
#[derive(Clone)]
pub struct Positions {
    db: ReadDb,
    known: Arc<HashMap<&'static str, Local>>,
}

/// What this process knows of one projection: the last position its runner here applied, and
/// whether that runner is following the log now (on PostgreSQL it may be standing by while
/// another process holds the lease).
struct Local {
    position: watch::Sender<u64>,
    following: std::sync::atomic::AtomicBool,
}

/// The projection did not reach the position in time.
#[derive(Debug, thiserror::Error)]
#[error("projection {name} had not reached position {wanted} after {waited:?} (at {reached})")]
pub struct WaitTimeout {
    /// The projection.
    pub name: String,
    /// The position awaited.
    pub wanted: u64,
    /// Where it was.
    pub reached: u64,
    /// How long the caller waited.
    pub waited: Duration,
}

/// How often a waiter re-reads the checkpoint, in case the runner is in another process.
const CHECKPOINT_POLL: Duration = Duration::from_millis(20);

impl Positions {
    /// Waits until projection `name` has applied `position`, or `timeout` passes.
    pub async fn wait_for(
        &self,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let local = self.known.get(name);
        let mut rx = local.map(|l| l.position.subscribe());
        // The stored checkpoint matters when the runner is in another process. While the runner
        // here follows the log, its own signal is enough, and the stored one is read only as a
        // slow fallback, so that many waiters woken by each batch do not each query it.
        let following = |local: Option<&Local>| {
            local.is_some_and(|l| l.following.load(std::sync::atomic::Ordering::Acquire))
        };
        let mut next_check = if following(local) {
            start + CHECKPOINT_POLL
        } else {
            start
        };
        let mut stored = 0;
        loop {
            let here = rx.as_mut().map(|r| *r.borrow_and_update()).unwrap_or(0);
            if here >= position {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= next_check || now >= deadline {
                stored = read_checkpoint(&self.db, name).await.unwrap_or(0);
                if stored >= position {
                    return Ok(());
                }
                next_check = now + CHECKPOINT_POLL;
            }
            if now >= deadline {
                return Err(WaitTimeout {
                    name: name.to_owned(),
                    wanted: position,
                    reached: here.max(stored),
                    waited: timeout,
                });
            }
            let nap = deadline.min(next_check) - now;
            match rx.as_mut() {
                Some(r) => {
                    let _ = tokio::time::timeout(nap, r.changed()).await;
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }

    /// The last position applied by this process's runner of `name`.
    pub fn local(&self, name: &str) -> Option<u64> {
        self.known.get(name).map(|l| *l.position.borrow())
    }

    fn following(&self, name: &str, now: bool) {
        if let Some(l) = self.known.get(name) {
            l.following.store(now, std::sync::atomic::Ordering::Release);
        }
    }

    fn publish(&self, name: &str, position: u64) {
        if let Some(l) = self.known.get(name) {
            l.position.send_if_modified(|p| {
                let moved = *p != position;
                *p = position;
                moved
            });
        }
    }
}

async fn read_checkpoint(db: &ReadDb, name: &str) -> Result<u64, sqlx::Error> {
    let pos: Option<i64> = match db {
        ReadDb::Sqlite(p) => {
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await?
        }
        ReadDb::Postgres(p) => {
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await?
        }
    };
    Ok(pos.unwrap_or(0) as u64)
}

/// The version of projection `name` that built its read model, if it ever ran.
async fn read_version(db: &ReadDb, name: &str) -> Result<Option<u32>, sqlx::Error> {
    let v: Option<i64> = match db {
        ReadDb::Sqlite(p) => {
            sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await?
        }
        ReadDb::Postgres(p) => {
            sqlx::query_scalar("SELECT version::BIGINT FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await?
        }
    };
    Ok(v.map(|v| v as u32))
}

/// Runs projections against a store and a read-model database.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    projections: Vec<Arc<dyn Projection>>,
    positions: Positions,
    batch: usize,
    persist_every: Duration,
    on_error: OnError,
    attempts: u32,
    retry_backoff: Duration,
    /// Positions operators told each projection to pass over (from the log).
    skips: Arc<std::sync::RwLock<HashMap<&'static str, std::collections::HashSet<u64>>>>,
}

/// How often a halted runner looks whether an operator retried or skipped its event.
const HALT_POLL: Duration = Duration::from_millis(250);

impl Engine {
    /// An engine for `projections`.
    pub fn new(
        store: Arc<dyn EventStore>,
        db: ReadDb,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Self {
        let known = projections
            .iter()
            .map(|p| {
                let local = Local {
                    position: watch::channel(0).0,
                    following: std::sync::atomic::AtomicBool::new(false),
                };
                (p.name(), local)
            })
            .collect();
        let positions = Positions {
            db: db.clone(),
            known: Arc::new(known),
        };
        Engine {
            store,
            db,
            projections,
            positions,
            batch: DEFAULT_BATCH,
            persist_every: SKIPPED_PERSIST_EVERY,
            on_error: OnError::Halt,
            attempts: 3,
            retry_backoff: Duration::from_millis(200),
            skips: Arc::default(),
        }
    }

    /// Sets what a projection does with an event it cannot apply.
    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Sets how many times a failing batch is tried before its poison event is looked for,
    /// and the first pause between tries (doubled each time).
    pub fn with_retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.retry_backoff = backoff;
        self
    }

    /// Reads the positions operators told `name` to skip from the log.
    async fn refresh_skips(&self, name: &'static str) -> Result<(), ProjectionError> {
        use confab_domain::EventSchema;
        let stream = format!("projection-{name}");
        let mut skipped = std::collections::HashSet::new();
        for e in confab_eventstore::read_whole_stream(&*self.store, &stream).await? {
            let skip = confab_domain::operations::EventSkipped::from_stored(
                &e.event_type,
                e.schema_version,
                e.payload,
            )?;
            skipped.insert(skip.position);
        }
        if let Ok(mut all) = self.skips.write() {
            all.insert(name, skipped);
        }
        Ok(())
    }

    fn skipped(&self, name: &str, position: u64) -> bool {
        self.skips
            .read()
            .map(|all| all.get(name).is_some_and(|s| s.contains(&position)))
            .unwrap_or(false)
    }

    /// Sets how long a following runner may go without writing the checkpoint of positions
    /// that held nothing for it, while the log is busy (it writes it anyway once the log is
    /// quiet for a moment, or after 10,000 such positions).
    pub fn with_skipped_checkpoint_every(mut self, every: Duration) -> Self {
        self.persist_every = every;
        self
    }

    /// Sets the events per transaction.
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The read-your-writes handle.
    pub fn positions(&self) -> Positions {
        self.positions.clone()
    }

    /// The projections' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    fn find(&self, name: &str) -> Result<Arc<dyn Projection>, ProjectionError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
    }

    /// Every projection's checkpoint against the head of the log.
    pub async fn status(&self) -> Result<Vec<Status>, ProjectionError> {
        let head = self.store.head_position().await?;
        let halted = crate::parked::halted(&self.db).await?;
        let parked = crate::parked::parked_counts(&self.db).await?;
        // The recorded time of the first event after each distinct checkpoint, read once each.
        let mut first_after: HashMap<u64, Option<chrono::DateTime<chrono::Utc>>> = HashMap::new();
        let mut out = Vec::new();
        for p in &self.projections {
            // A runner here may be ahead of its stored checkpoint by positions it skipped.
            let stored = read_checkpoint(&self.db, p.name()).await?;
            let local = self.positions.local(p.name()).unwrap_or(0);
            let position = stored.max(local);
            let behind_since = if position < head {
                match first_after.get(&position) {
                    Some(t) => *t,
                    None => {
                        let t = self
                            .store
                            .read_all(position, 1)
                            .await?
                            .first()
                            .map(|e| e.recorded_at);
                        first_after.insert(position, t);
                        t
                    }
                }
            } else {
                None
            };
            out.push(Status {
                name: p.name(),
                position,
                head,
                halted: halted
                    .iter()
                    .find(|(n, _)| n == p.name())
                    .map(|(_, pos)| *pos),
                parked: parked
                    .iter()
                    .find(|(n, _)| n == p.name())
                    .map_or(0, |(_, c)| *c),
                behind_since,
            });
        }
        Ok(out)
    }

    /// Applies the next batch after `from` for `projection`; returns the new checkpoint and how
    /// many events it read (0: caught up).
    pub async fn step(
        &self,
        projection: &dyn Projection,
        from: u64,
    ) -> Result<(u64, usize), ProjectionError> {
        let mut cursor = Cursor::at(from);
        let n = self.advance(projection, &mut cursor, true).await?;
        Ok((cursor.at, n))
    }

    /// Reads the next batch after `cursor.at` and applies it. A batch with nothing for the
    /// projection only moves the cursor, unless `persist` is set or the cursor's written
    /// checkpoint is far behind (see [`SKIPPED_BEFORE_PERSIST`]). Returns how many events it
    /// read (0: caught up).
    async fn advance(
        &self,
        projection: &dyn Projection,
        cursor: &mut Cursor,
        persist: bool,
    ) -> Result<usize, ProjectionError> {
        let events = self.store.read_all(cursor.at, self.batch).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        if events
            .iter()
            .any(|e| e.event_type == confab_domain::operations::EVENT_SKIPPED)
        {
            self.refresh_skips(projection.name()).await?;
        }
        let relevant = events.iter().any(|e| projection.handles(&e.event_type));
        if relevant || persist || cursor.due(last, self.persist_every) {
            self.apply_guarded(projection, cursor.persisted, &events)
                .await?;
            cursor.persisted(last);
        }
        cursor.at = last;
        self.positions.publish(projection.name(), last);
        Ok(events.len())
    }

    /// Writes the checkpoint of positions the cursor skipped, if any.
    async fn persist(
        &self,
        projection: &dyn Projection,
        cursor: &mut Cursor,
    ) -> Result<(), ProjectionError> {
        if cursor.at == cursor.persisted {
            return Ok(());
        }
        self.write_checkpoint(projection, cursor.persisted, cursor.at, &[])
            .await?;
        cursor.persisted(cursor.at);
        Ok(())
    }

    async fn apply_batch(
        &self,
        projection: &dyn Projection,
        from: u64,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let handled: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| projection.handles(&e.event_type))
            .filter(|e| !self.skipped(projection.name(), e.position))
            .collect();
        let started = std::time::Instant::now();
        let applied = self
            .write_checkpoint(projection, from, last, &handled)
            .await;
        if applied.is_ok() && !handled.is_empty() {
            let name = projection.name();
            metrics::histogram!("confab_projection_apply_seconds", "projection" => name)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("confab_projection_events_applied_total", "projection" => name)
                .increment(handled.len() as u64);
        }
        applied
    }

    /// Applies `events` after checkpoint `from`, retrying a failing batch with backoff; if it
    /// still fails on the event's account (see [`ProjectionError::is_poison`]), applies the
    /// events one by one to find the poison one, and parks it or halts on it. A halt is
    /// [`ProjectionError::Halted`], with every event before the poison one applied.
    async fn apply_guarded(
        &self,
        projection: &dyn Projection,
        from: u64,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        let mut pause = self.retry_backoff;
        let mut attempt = 1;
        let error = loop {
            match self.apply_batch(projection, from, events).await {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_poison() => return Err(e),
                Err(e) if attempt >= self.attempts => break e,
                Err(e) => {
                    tracing::warn!(projection = name, attempt, error = %e,
                        "a batch failed to apply; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
            }
        };
        tracing::warn!(projection = name, error = %error,
            "a batch keeps failing; applying its events one by one to find the poison one");
        let mut at = from;
        for e in events {
            match self
                .apply_batch(projection, at, std::slice::from_ref(e))
                .await
            {
                Ok(()) => at = e.position,
                Err(err) if err.is_poison() => match self.on_error {
                    OnError::Park => {
                        tracing::error!(projection = name, position = e.position,
                            event_type = %e.event_type, error = %err,
                            "parked an event the projection cannot apply; going on");
                        self.park(projection, at, e, &err).await?;
                        at = e.position;
                    }
                    OnError::Halt => {
                        tracing::error!(projection = name, position = e.position,
                            event_type = %e.event_type, error = %err,
                            "projection halted on an event it cannot apply; \
                             `confab projections retry` or `skip` it");
                        crate::parked::record(
                            &self.db,
                            name,
                            e,
                            crate::parked::HALTED,
                            at,
                            &err.to_string(),
                            self.attempts,
                        )
                        .await?;
                        return Err(ProjectionError::Halted {
                            name: name.to_owned(),
                            after: at,
                            position: e.position,
                        });
                    }
                },
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// In one transaction: records `event` as parked for `projection` and moves the
    /// checkpoint from `from` past it.
    async fn park(
        &self,
        projection: &dyn Projection,
        from: u64,
        event: &RecordedEvent,
        error: &ProjectionError,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        let mut tx = self.db.begin().await?;
        let stored = lock_checkpoint(&mut tx, name).await?.unwrap_or(0);
        if stored != from {
            return Err(ProjectionError::CheckpointMoved {
                name: name.to_owned(),
                expected: from,
                actual: stored,
            });
        }
        crate::parked::insert(
            &mut tx,
            name,
            event,
            crate::parked::PARKED,
            from,
            &error.to_string(),
            self.attempts,
        )
        .await?;
        execute!(
            &mut tx,
            "UPDATE projection_checkpoints SET position = $2, updated_at = $3 WHERE name = $1",
            name,
            event.position as i64,
            chrono::Utc::now()
        )?;
        tx.commit().await?;
        Ok(())
    }

    /// In one transaction: checks that the stored checkpoint is still `from` (fencing), applies
    /// `handled` and moves the checkpoint to `last`.
    async fn write_checkpoint(
        &self,
        projection: &dyn Projection,
        from: u64,
        last: u64,
        handled: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        let mut tx = self.db.begin().await?;
        let stored = match lock_checkpoint(&mut tx, name).await? {
            Some(p) => p,
            None => {
                // First batch ever: create the row, then lock it. A concurrent runner's insert
                // blocks ours until it commits, and we then see its checkpoint, not an empty one.
                execute!(
                    &mut tx,
                    "INSERT INTO projection_checkpoints (name, position, updated_at, version) \
                     VALUES ($1, 0, $2, $3) ON CONFLICT (name) DO NOTHING",
                    name,
                    chrono::Utc::now(),
                    i64::from(projection.version())
                )?;
                lock_checkpoint(&mut tx, name).await?.unwrap_or(0)
            }
        };
        if stored != from {
            return Err(ProjectionError::CheckpointMoved {
                name: name.to_owned(),
                expected: from,
                actual: stored,
            });
        }
        if !handled.is_empty() {
            projection.apply_batch(&mut tx, handled).await?;
        }
        let now = chrono::Utc::now();
        execute!(
            &mut tx,
            "UPDATE projection_checkpoints SET position = $2, updated_at = $3 WHERE name = $1",
            name,
            last as i64,
            now
        )?;
        tx.commit().await?;
        Ok(())
    }

    /// Brings `name` up to the head of the log as it is now; returns the checkpoint reached.
    /// `progress(position, head)` is called after every batch. The next batch is read from the
    /// store while the current one is applied. An event it halts on (see
    /// [`Engine::with_on_error`]) ends it with [`ProjectionError::Halted`].
    pub async fn catch_up(
        &self,
        name: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ProjectionError> {
        let projection = self.find(name)?;
        let name = projection.name();
        self.refresh_skips(name).await?;
        let head = self.store.head_position().await?;
        let mut at = read_checkpoint(&self.db, name).await?;
        let mut events = self.store.read_all(at, self.batch).await?;
        while at < head {
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            let (applied, next) = tokio::join!(
                self.apply_guarded(&*projection, at, &events),
                self.store.read_all(last, self.batch)
            );
            match applied {
                Ok(()) => {
                    at = last;
                    self.positions.publish(name, at);
                    events = next?;
                }
                Err(ProjectionError::CheckpointMoved { actual, .. }) => {
                    at = actual;
                    events = self.store.read_all(at, self.batch).await?;
                }
                Err(e @ ProjectionError::Halted { after, .. }) => {
                    self.positions.publish(name, after);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            progress(at, head);
        }
        Ok(at)
    }

    /// Drops projection `name`'s rows, resets its checkpoint to zero and rebuilds it from the
    /// start of the log. `progress(position, head)` is called after every batch.
    pub async fn rebuild(
        &self,
        name: &str,
        progress: impl FnMut(u64, u64),
    ) -> Result<u64, ProjectionError> {
        let projection = self.find(name)?;
        let mut tx = self.db.begin().await?;
        projection.reset(&mut tx).await?;
        execute!(
            &mut tx,
            "INSERT INTO projection_checkpoints (name, position, updated_at, version) \
             VALUES ($1, 0, $2, $3) ON CONFLICT (name) DO UPDATE SET position = 0, \
             updated_at = EXCLUDED.updated_at, version = EXCLUDED.version",
            name,
            chrono::Utc::now(),
            i64::from(projection.version())
        )?;
        tx.commit().await?;
        self.positions.publish(name, 0);
        tracing::info!(
            projection = name,
            "read model dropped; rebuilding from position 0"
        );
        self.catch_up(name, progress).await
    }

    /// Tries again the events `name` parked (all of them, or the one at `position`): each is
    /// applied in a transaction of its own and leaves the dead letters once applied. An event
    /// the projection halted on is handed back to its runner, which tries it again.
    pub async fn retry(
        &self,
        name: &str,
        position: Option<u64>,
    ) -> Result<Vec<(u64, Retried)>, ProjectionError> {
        let projection = self.find(name)?;
        let name = projection.name();
        self.refresh_skips(name).await?;
        let rows = crate::parked::list(&self.db, Some(name)).await?;
        let mut out = Vec::new();
        for row in rows {
            let pos = row.position as u64;
            if position.is_some_and(|p| p != pos) {
                continue;
            }
            if row.status == crate::parked::HALTED {
                let mut tx = self.db.begin().await?;
                crate::parked::remove(&mut tx, name, pos).await?;
                tx.commit().await?;
                out.push((pos, Retried::Resumed));
                continue;
            }
            let event = self
                .store
                .read_all(pos.saturating_sub(1), 1)
                .await?
                .into_iter()
                .find(|e| e.position == pos && e.event_id == row.event_id);
            let Some(event) = event else {
                out.push((pos, Retried::Failed("the event is not in the log".into())));
                continue;
            };
            let mut tx = self.db.begin().await?;
            let applied = if projection.handles(&event.event_type) && !self.skipped(name, pos) {
                projection.apply_batch(&mut tx, &[&event]).await
            } else {
                Ok(())
            };
            match applied {
                Ok(()) => {
                    crate::parked::remove(&mut tx, name, pos).await?;
                    tx.commit().await?;
                    out.push((pos, Retried::Applied));
                }
                Err(e) => {
                    drop(tx);
                    crate::parked::failed_again(&self.db, name, pos, &e.to_string()).await?;
                    out.push((pos, Retried::Failed(e.to_string())));
                }
            }
        }
        Ok(out)
    }

    /// The projections whose read model was built by another version than this code's:
    /// `(name, stored version, version in code)`. A projection that never ran is not listed.
    pub async fn outdated(&self) -> Result<Vec<(&'static str, u32, u32)>, ProjectionError> {
        let mut out = Vec::new();
        for p in &self.projections {
            if let Some(stored) = read_version(&self.db, p.name()).await?
                && stored != p.version()
            {
                out.push((p.name(), stored, p.version()));
            }
        }
        Ok(out)
    }

    /// Rebuilds every projection whose stored version differs from the code's (see
    /// [`Engine::outdated`]); returns their names. `progress(name, position, head)` is called
    /// after every batch.
    pub async fn upgrade(
        &self,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> Result<Vec<&'static str>, ProjectionError> {
        let mut rebuilt = Vec::new();
        for (name, stored, code) in self.outdated().await? {
            tracing::info!(
                projection = name,
                stored,
                code,
                "read model built by another version; rebuilding it from the log"
            );
            match self
                .rebuild(name, |at, head| progress(name, at, head))
                .await
            {
                // Logged where it halted; its runner waits there for an operator.
                Ok(_) | Err(ProjectionError::Halted { .. }) => {}
                Err(e) => return Err(e),
            }
            rebuilt.push(name);
        }
        Ok(rebuilt)
    }

    /// Runs every projection until `shutdown` resolves: catch up, then follow the log.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for p in &self.projections {
            let engine = self.clone();
            let p = Arc::clone(p);
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(
                async move { engine.run_one(p, shutdown).await },
            ));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn run_one(&self, projection: Arc<dyn Projection>, mut shutdown: watch::Receiver<bool>) {
        let name = projection.name();
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let lease = match self.lease(name, &mut shutdown).await {
                Some(l) => l,
                None => return,
            };
            tracing::info!(projection = name, "projection runner started");
            match self.follow(&*projection, lease, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    // Logged here, where it is handled: the runner backs off and starts over.
                    tracing::error!(projection = name, error = %e, "projection runner failed; restarting");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Takes the lease on `name` (PostgreSQL: a session advisory lock; SQLite: one process
    /// owns the file, nothing to take). `None` on shutdown.
    async fn lease(&self, name: &str, shutdown: &mut watch::Receiver<bool>) -> Option<Lease> {
        let ReadDb::Postgres(pool) = &self.db else {
            return Some(Lease(None));
        };
        let key = lock_key(name);
        let mut announced = false;
        loop {
            let attempt = async {
                let mut conn = pool.acquire().await?.detach();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(got.then_some(conn))
            };
            match attempt.await {
                Ok(Some(conn)) => return Some(Lease(Some(conn))),
                Ok(None) => {
                    if !announced {
                        tracing::info!(
                            projection = name,
                            "another process runs this projection; standing by"
                        );
                        announced = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "cannot take projection lease")
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn follow(
        &self,
        projection: &dyn Projection,
        mut lease: Lease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        self.refresh_skips(name).await?;
        let mut cursor = Cursor::at(read_checkpoint(&self.db, name).await?);
        self.positions.publish(name, cursor.at);
        // Marks the runner here as following until this returns, however it returns.
        struct Following<'a>(&'a Positions, &'static str);
        impl Drop for Following<'_> {
            fn drop(&mut self) {
                self.0.following(self.1, false);
            }
        }
        self.positions.following(name, true);
        let _following = Following(&self.positions, name);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            match self.advance(projection, &mut cursor, false).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(ProjectionError::CheckpointMoved { actual, .. }) => {
                    tracing::info!(
                        projection = name,
                        from = cursor.at,
                        to = actual,
                        "checkpoint moved by another runner; following it"
                    );
                    cursor = Cursor::at(actual);
                    self.positions.publish(name, cursor.at);
                    continue;
                }
                Err(ProjectionError::Halted {
                    after, position, ..
                }) => {
                    self.positions.publish(name, after);
                    // Wait for an operator: `retry` or `skip` removes the halt.
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => return Ok(()),
                            _ = tokio::time::sleep(HALT_POLL) => {}
                        }
                        lease.check().await?;
                        if !crate::parked::is_halted(&self.db, name, position).await? {
                            break;
                        }
                    }
                    tracing::info!(
                        projection = name,
                        position,
                        "halt lifted by an operator; going on"
                    );
                    self.refresh_skips(name).await?;
                    cursor = Cursor::at(read_checkpoint(&self.db, name).await?);
                    self.positions.publish(name, cursor.at);
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Caught up. Positions skipped without writing are written once the log has been
            // quiet for a moment, so that the stored checkpoint (which other processes and a
            // restart read) is current whenever nothing is happening.
            let quiet = if cursor.at > cursor.persisted {
                SKIPPED_QUIET
            } else {
                Duration::from_secs(5)
            };
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                waited = self.store.wait_for_events(cursor.at, quiet) => {
                    let head = waited?;
                    if head <= cursor.at && cursor.at > cursor.persisted {
                        match self.persist(projection, &mut cursor).await {
                            Ok(()) => {}
                            Err(ProjectionError::CheckpointMoved { actual, .. }) => {
                                cursor = Cursor::at(actual);
                                self.positions.publish(name, cursor.at);
                            }
                            Err(e) => return Err(e),
                        }
                    } else if head <= cursor.at {
                        // Idle: make sure the lease is still ours before going on.
                        lease.check().await?;
                        // A rebuild may have reset the checkpoint while we were idle.
                        let stored = read_checkpoint(&self.db, name).await?;
                        if stored != cursor.persisted {
                            cursor = Cursor::at(stored);
                            self.positions.publish(name, cursor.at);
                        }
                    }
                }
            }
        }
    }
}

/// A following runner's place: how far it has read (`at`) and the checkpoint it last wrote
/// (`persisted`), which may lag behind by positions that held nothing for it.
#[derive(Debug)]
struct Cursor {
    at: u64,
    persisted: u64,
    persisted_at: std::time::Instant,
}

impl Cursor {
    fn at(position: u64) -> Self {
        Cursor {
            at: position,
            persisted: position,
            persisted_at: std::time::Instant::now(),
        }
    }

    fn persisted(&mut self, position: u64) {
        self.persisted = position;
        self.persisted_at = std::time::Instant::now();
    }

    /// Whether skipping up to `last` without writing would leave the stored checkpoint too far
    /// behind.
    fn due(&self, last: u64, every: Duration) -> bool {
        last - self.persisted >= SKIPPED_BEFORE_PERSIST || self.persisted_at.elapsed() >= every
    }
}

/// Reads a projection's checkpoint inside `tx`, locking its row on PostgreSQL (SQLite's
/// `BEGIN IMMEDIATE` already holds the database's write lock).
async fn lock_checkpoint(tx: &mut Tx, name: &str) -> Result<Option<u64>, sqlx::Error> {
    let pos: Option<i64> = match tx {
        Tx::Sqlite(t) => {
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **t)
                .await?
        }
        Tx::Postgres(t) => {
            sqlx::query_scalar(
                "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
            )
            .bind(name)
            .fetch_optional(&mut **t)
            .await?
        }
    };
    Ok(pos.map(|p| p as u64))
}

/// The connection holding a projection's advisory lock; dropping it releases the lock.
struct Lease(Option<sqlx::PgConnection>);

impl Lease {
    async fn check(&mut self) -> Result<(), ProjectionError> {
        if let Some(conn) = &mut self.0 {
            conn.ping().await?;
        }
        Ok(())
    }
}

/// A stable 64-bit advisory lock key for a projection name (FNV-1a).
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"confab.projection.".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("chats"), super::lock_key("chats"));
        assert_ne!(super::lock_key("chats"), super::lock_key("settings"));
    }
}
