//! Confab's application layer: the use cases, between the edges and the domain.
//!
//! Every edge calls these functions: the HTTP handlers (`confab_api`), the job workers
//! (`confab_workers`) and the command line. A command function parses nothing (its inputs are
//! the domain's validated types), loads the aggregate, runs the pure `decide`, appends through
//! the event store, waits for the read model when the caller reads its own write next, and
//! answers from the event or the read model. A query function reads through the projections'
//! query functions, for the caller's own data only. Errors are typed ([`AppError`]); the edges
//! map them, in one place each.
//!
//! One module per use-case group: [`accounts`], [`chats`], [`settings`], [`ai`] (replies,
//! models, credits), [`billing`], [`providers`], [`documents`] (uploads and retrieval).
//! [`jobs`] holds what use cases queue for the
//! background and the port the workers implement.

pub mod accounts;
pub mod ai;
pub mod billing;
pub mod chats;
pub mod credits;
pub mod documents;
pub mod error;
pub mod jobs;
pub mod operations;
pub mod privacy;
pub mod providers;
pub mod settings;

pub use error::{AppError, Details, Problems};

use chrono::{DateTime, SubsecRound, Utc};
use confab_domain::catalogue::Catalogue;
use confab_eventstore::aggregate::CommandExecutor;
use confab_eventstore::{EventMetadata, EventStore};
use confab_projections::accounts::UserRow;
use confab_projections::{Positions, ReadDb};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What the use cases work with: the log, the read models, the configured services and the
/// queues. Cheap to clone (every field is shared).
#[derive(Clone)]
pub struct Services {
    /// The event log.
    pub store: Arc<dyn EventStore>,
    /// The users' data keys: destroyed on erasure.
    pub vault: Arc<confab_eventstore::sealed::KeyVault>,
    /// Runs commands against the log, one line per aggregate.
    pub commands: Arc<CommandExecutor>,
    /// The read models.
    pub db: ReadDb,
    /// The projections' positions, for read-your-writes.
    pub positions: Positions,
    /// How long a write waits for its effect to become readable.
    pub write_timeout: Duration,
    /// How long a sign-in session lasts.
    pub session_ttl: chrono::Duration,
    /// How long a reply's credit hold lasts before the sweeper may release it.
    pub hold_ttl: chrono::Duration,
    /// How long after its deletion a chat or message may still be restored.
    pub restore_window: chrono::Duration,
    /// Models and tiers.
    pub catalogue: Arc<Catalogue>,
    /// LLM providers and the rules of calling them.
    pub llm: Arc<ai::LlmSettings>,
    /// Encrypts users' provider keys.
    pub cipher: providers::KeyCipher,
    /// Hosts a provider endpoint may name even if private, and over http.
    pub provider_hosts_allowlist: Arc<[String]>,
    /// Where uploaded files are kept.
    pub objects: Arc<dyn object_store::ObjectStore>,
    /// Where live replies travel from workers to listeners.
    pub relay: ai::relay::Relay,
    /// Where background work is queued.
    pub jobs: Arc<dyn jobs::JobQueue>,
    /// Stripe: the client, the prices sold, the return URLs.
    pub billing: billing::BillingSettings,
    /// Documents: accepted uploads, chunking, embedding, retrieval.
    pub documents: Arc<documents::DocumentSettings>,
    /// The in-memory vector index of retrieval (a cache of the stored vectors).
    pub vectors: Arc<documents::index::VectorIndex>,
}

impl Services {
    /// Waits until `projection` has applied everything in the log now: for a read of what an
    /// earlier run of the same request wrote, whose position is not known.
    pub async fn caught_up(&self, projection: &str) -> Result<(), AppError> {
        let head = self.store.head_position().await?;
        self.visible(projection, (head > 0).then_some(head)).await
    }

    /// Read-your-writes: waits until `projection` has applied position `pos` (nothing to wait
    /// for when the command appended nothing), so the caller's next read sees the write.
    pub async fn visible(&self, projection: &str, pos: Option<u64>) -> Result<(), AppError> {
        let Some(pos) = pos else {
            return Ok(());
        };
        self.positions
            .wait_for(projection, pos, self.write_timeout)
            .await?;
        Ok(())
    }
}

/// Who runs a use case: the signed-in user, their session, and the request it came in.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user, as the accounts read model shows them.
    pub user: UserRow,
    /// The session the request came with.
    pub session_id: Uuid,
    /// The request (its `x-request-id`), recorded on every event it causes.
    pub correlation_id: Option<Uuid>,
    /// The id of what this request creates, when it is fixed in advance: a request sent with
    /// an `Idempotency-Key` always creates the same resource, so that running it again (its
    /// first run was cut short by a crash) finds what the first run made instead of making
    /// another.
    pub resource_id: Option<Uuid>,
}

impl Actor {
    /// The user's id.
    pub fn id(&self) -> Uuid {
        self.user.id
    }

    /// Whether the user is an administrator.
    pub fn is_admin(&self) -> bool {
        self.user.role == "admin"
    }

    /// The id of the resource this request creates: the one fixed for it, or a new one.
    pub fn new_id(&self) -> Uuid {
        self.resource_id.unwrap_or_else(Uuid::now_v7)
    }

    /// Metadata for the events this actor causes.
    pub fn metadata(&self) -> EventMetadata {
        metadata(Some(self.user.id), self.correlation_id)
    }

    /// Whether the actor may act for `user_id`: their own, or any as an admin.
    pub fn may_act_for(&self, user_id: Uuid) -> Result<(), AppError> {
        if self.user.id == user_id || self.is_admin() {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "user_id must be your own user id".into(),
            ))
        }
    }
}

/// Event metadata for a command made by `actor` in request `correlation_id`.
pub fn metadata(actor: Option<Uuid>, correlation_id: Option<Uuid>) -> EventMetadata {
    EventMetadata {
        actor,
        correlation_id,
        causation_id: None,
    }
}

/// Now, at the microsecond precision both databases store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Which page of a list: `page` from 1, `limit` items per page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// From 1.
    pub page: u32,
    /// From 1 to [`PageRequest::MAX_LIMIT`].
    pub limit: u32,
}

impl PageRequest {
    /// Largest page.
    pub const MAX_LIMIT: u32 = 100;
    /// Page size when none is asked for.
    pub const DEFAULT_LIMIT: u32 = 50;

    /// Validates a page request; absent values take their defaults.
    pub fn parse(page: Option<u32>, limit: Option<u32>) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let page = match page {
            None => 1,
            Some(p) if p >= 1 => p,
            Some(_) => {
                problems.add("page", "must be a whole number of at least 1");
                1
            }
        };
        let limit = match limit {
            None => Self::DEFAULT_LIMIT,
            Some(l) if (1..=Self::MAX_LIMIT).contains(&l) => l,
            Some(_) => {
                problems.add(
                    "limit",
                    format!("must be between 1 and {}", Self::MAX_LIMIT),
                );
                Self::DEFAULT_LIMIT
            }
        };
        if problems.is_empty() {
            Ok(PageRequest { page, limit })
        } else {
            Err(problems)
        }
    }

    /// Rows to skip.
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.limit)
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            page: 1,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Rows in the whole list.
    pub total: u64,
    /// Which page was asked for.
    pub request: PageRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_defaults_and_bounds() {
        assert_eq!(
            PageRequest::parse(None, None).unwrap(),
            PageRequest::default()
        );
        let p = PageRequest::parse(Some(3), Some(100)).unwrap();
        assert_eq!(p.offset(), 200);
        let e = PageRequest::parse(Some(0), Some(101)).unwrap_err();
        assert_eq!(e.iter().count(), 2);
    }
}
