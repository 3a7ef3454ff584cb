//! The application's typed errors: what a use case can answer, whichever edge called it.
//!
//! This is the one place where each aggregate's refusals and the store's failures become
//! application errors. The HTTP edge maps [`AppError`] to statuses in one place
//! (`confab_api::error`); job workers ask [`AppError::is_retryable`].

use confab_domain::account::{AccountError, EmailClaimError};
use confab_domain::billing::StripeEventError;
use confab_domain::billing_account::BillingAccountError;
use confab_domain::chat::ChatError;
use confab_domain::credits::CreditError;
use confab_domain::provider::{ProviderError, UserLlmConfigError};
use confab_domain::session::SessionError;
use confab_domain::settings::SettingsError;
use confab_domain::{UpcastError, ValidationError};
use confab_eventstore::StoreError;
use confab_eventstore::aggregate::ExecuteError;
use confab_projections::WaitTimeout;
use std::collections::BTreeMap;

/// Specifics of an error for the client, as JSON (for example the setting to set).
pub type Details = serde_json::Map<String, serde_json::Value>;

/// Any error, boxed, kept as the source of an [`AppError::Internal`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Fields that failed validation, each with why; ordered by field so messages are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(BTreeMap<String, String>);

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Problems::default()
    }

    /// One problem.
    pub fn one(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut p = Problems::new();
        p.add(field, reason);
        p
    }

    /// Records that `field` is invalid because of `reason` (the first reason per field wins).
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| reason.into());
    }

    /// The value of a parse, or `None` with its problem recorded.
    pub fn check<T>(&mut self, parsed: Result<T, ValidationError>) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(e.field, e.reason);
                None
            }
        }
    }

    /// Whether nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found wrong, else the problems as an error.
    pub fn into_result<T>(self, value: T) -> Result<T, AppError> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(AppError::Invalid(self))
        }
    }

    /// Each field and its reason.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.len() {
            0 => f.write_str("invalid input"),
            1 => {
                let (field, reason) = self.0.iter().next().expect("one problem");
                write!(f, "{field}: {reason}")
            }
            _ => {
                let fields: Vec<&str> = self.0.keys().map(String::as_str).collect();
                write!(f, "invalid fields: {}", fields.join(", "))
            }
        }
    }
}

impl From<ValidationError> for Problems {
    fn from(e: ValidationError) -> Self {
        Problems::one(e.field, e.reason)
    }
}

/// Why a use case did not go through.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The input is invalid: each offending field with why.
    #[error("{0}")]
    Invalid(Problems),
    /// Nobody is signed in, or the credentials are wrong.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource, or it is not the caller's (the two are never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// It was deleted too long ago to be restored: not found, with the reason.
    #[error("{0}")]
    Unrecoverable(String),
    /// The resource's state does not allow it (an email taken, a document not ready, changes
    /// that kept racing).
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// Specifics for the client.
        details: Details,
    },
    /// The balance, less what is held, does not cover the request.
    #[error("this request may cost up to {needed} credits and {available} are available")]
    InsufficientCredits {
        /// What the request may cost.
        needed: i64,
        /// What is free to use.
        available: i64,
    },
    /// The input is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The input is of a type that is not accepted.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// Something this needs is not configured (a provider, Stripe).
    #[error("{message}")]
    Unavailable {
        /// What is missing.
        message: String,
        /// The setting to set, and the like.
        details: Details,
    },
    /// Too much of this work is in progress or queued: try again after `retry_after_secs`.
    #[error("{message}")]
    Busy {
        /// What is saturated.
        message: String,
        /// When a retry may succeed, in seconds.
        retry_after_secs: u64,
    },
    /// An upstream service (Stripe, an LLM provider) refused or could not be reached.
    #[error("{message}")]
    Upstream {
        /// What failed; never with secrets.
        message: String,
        /// The upstream's status and error type, when it answered.
        details: Details,
    },
    /// The change is recorded, but the read model did not show it in time.
    #[error(transparent)]
    NotVisible(#[from] WaitTimeout),
    /// The event store failed.
    #[error("the event store failed")]
    Store(#[source] StoreError),
    /// A stored event could not be read by this code.
    #[error("a stored event cannot be read")]
    Upcast(#[from] UpcastError),
    /// The read models failed.
    #[error("the read models failed")]
    ReadModel(#[from] sqlx::Error),
    /// Anything else that should not happen; `context` says what was being done.
    #[error("{context}")]
    Internal {
        /// What was being done.
        context: &'static str,
        /// Why it failed, when there is an underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl AppError {
    /// A conflict without details.
    pub fn conflict(message: impl Into<String>) -> Self {
        AppError::Conflict {
            message: message.into(),
            details: Details::new(),
        }
    }

    /// A validation error on one field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AppError::Invalid(Problems::one(field, reason))
    }

    /// An unexpected failure while doing `context`, with its cause.
    pub fn internal(context: &'static str, source: impl Into<BoxError>) -> Self {
        AppError::Internal {
            context,
            source: Some(source.into()),
        }
    }

    /// An unexpected state while doing `context` (no underlying error).
    pub fn bug(context: &'static str) -> Self {
        AppError::Internal {
            context,
            source: None,
        }
    }

    /// Whether trying again later can help: the store, the read models or an upstream were
    /// unavailable or slow. Refusals (bad input, not found, not allowed) never change by
    /// themselves, so a job that met one gives up.
    pub fn is_retryable(&self) -> bool {
        match self {
            AppError::NotVisible(_)
            | AppError::ReadModel(_)
            | AppError::Upstream { .. }
            | AppError::Busy { .. }
            | AppError::Internal { .. } => true,
            AppError::Store(s) => !matches!(
                s,
                StoreError::InvalidStreamName(_)
                    | StoreError::InvalidInput(_)
                    | StoreError::PayloadTooLarge { .. }
            ),
            // Conflicts are the executor's retries running out under contention.
            AppError::Conflict { .. } => true,
            AppError::Invalid(_)
            | AppError::Unauthenticated(_)
            | AppError::Forbidden(_)
            | AppError::NotFound(_)
            | AppError::Unrecoverable(_)
            | AppError::InsufficientCredits { .. }
            | AppError::TooLarge(_)
            | AppError::UnsupportedMedia(_)
            | AppError::Unavailable { .. }
            | AppError::Upcast(_) => false,
        }
    }
}

impl From<ValidationError> for AppError {
    fn from(e: ValidationError) -> Self {
        AppError::Invalid(e.into())
    }
}

impl From<Problems> for AppError {
    fn from(p: Problems) -> Self {
        AppError::Invalid(p)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => AppError::conflict("too many concurrent changes; retry"),
            StoreError::PayloadTooLarge { size, limit } => AppError::TooLarge(format!(
                "the change is {size} bytes, more than the {limit} bytes one event may hold"
            )),
            other => AppError::Store(other),
        }
    }
}

/// Every aggregate's refusal, and the store's failures, through one conversion.
impl<E> From<ExecuteError<E>> for AppError
where
    E: std::error::Error + 'static,
    AppError: From<E>,
{
    fn from(e: ExecuteError<E>) -> Self {
        match e {
            ExecuteError::Domain(refused) => refused.into(),
            ExecuteError::Store(s) => s.into(),
            ExecuteError::Upcast(u) => u.into(),
        }
    }
}

impl From<ChatError> for AppError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::ChatNotFound => AppError::NotFound("chat"),
            ChatError::MessageNotFound => AppError::NotFound("message"),
            ChatError::NotMessageAuthor => AppError::Forbidden(e.to_string()),
            ChatError::ChatAlreadyExists | ChatError::MessageAlreadyExists => {
                AppError::conflict(e.to_string())
            }
            ChatError::NothingToChange => AppError::invalid("content", "nothing to change"),
            ChatError::ChatNotDeleted | ChatError::MessageNotDeleted => {
                AppError::conflict(e.to_string())
            }
            // API.md: past the restore window, what was deleted is not found, and says why.
            ChatError::RestoreWindowPassed { .. } => AppError::Unrecoverable(e.to_string()),
        }
    }
}

impl From<CreditError> for AppError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::InsufficientCredits { needed, available } => {
                AppError::InsufficientCredits { needed, available }
            }
            CreditError::InvalidAmount | CreditError::BelowZero { .. } => {
                AppError::invalid("amount", e.to_string())
            }
            CreditError::UnknownReservation => AppError::internal("settling credits", e),
        }
    }
}

impl From<AccountError> for AppError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::NotFound => AppError::NotFound("account"),
            AccountError::AlreadyRegistered => AppError::conflict(e.to_string()),
        }
    }
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unknown => AppError::NotFound("session"),
            SessionError::AlreadyStarted => AppError::conflict(e.to_string()),
        }
    }
}

impl From<BillingAccountError> for AppError {
    fn from(e: BillingAccountError) -> Self {
        match e {
            BillingAccountError::CustomerAlreadyLinked { .. } => AppError::conflict(e.to_string()),
        }
    }
}

impl From<EmailClaimError> for AppError {
    fn from(e: EmailClaimError) -> Self {
        match e {
            EmailClaimError::Taken { .. } => AppError::conflict("email address already in use"),
        }
    }
}

impl From<ProviderError> for AppError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::AlreadyRegistered => AppError::conflict(e.to_string()),
        }
    }
}

impl From<UserLlmConfigError> for AppError {
    fn from(e: UserLlmConfigError) -> Self {
        match e {}
    }
}

impl From<confab_domain::operations::ControlError> for AppError {
    fn from(e: confab_domain::operations::ControlError) -> Self {
        match e {}
    }
}

impl From<confab_domain::sources::SourcesError> for AppError {
    fn from(e: confab_domain::sources::SourcesError) -> Self {
        match e {}
    }
}

impl From<SettingsError> for AppError {
    fn from(e: SettingsError) -> Self {
        match e {}
    }
}

impl From<StripeEventError> for AppError {
    fn from(e: StripeEventError) -> Self {
        match e {
            StripeEventError::NotReceived => AppError::internal("recording a Stripe event", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_fields_in_order() {
        let mut p = Problems::new();
        p.add("title", "must not be empty");
        assert_eq!(p.to_string(), "title: must not be empty");
        p.add("content", "too long");
        p.add("title", "a second reason is ignored");
        assert_eq!(p.to_string(), "invalid fields: content, title");
        assert_eq!(p.iter().count(), 2);
    }

    #[test]
    fn aggregate_refusals_map_to_their_kind() {
        let e: AppError = ExecuteError::Domain(ChatError::ChatNotFound).into();
        assert!(matches!(e, AppError::NotFound("chat")));
        assert_eq!(e.to_string(), "chat not found");
        let e: AppError = ExecuteError::<ChatError>::Store(StoreError::Conflict {
            stream: "chat-1".into(),
            expected: confab_eventstore::ExpectedVersion::Exact(1),
            actual: 2,
        })
        .into();
        assert!(matches!(e, AppError::Conflict { .. }));
        let e: AppError = CreditError::InsufficientCredits {
            needed: 5,
            available: 2,
        }
        .into();
        assert!(matches!(
            e,
            AppError::InsufficientCredits {
                needed: 5,
                available: 2
            }
        ));
    }

    #[test]
    fn only_transient_failures_are_worth_retrying() {
        assert!(AppError::ReadModel(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!AppError::NotFound("chat").is_retryable());
        assert!(!AppError::invalid("x", "y").is_retryable());
    }
}
