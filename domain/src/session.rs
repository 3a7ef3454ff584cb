//! Sign-in sessions: one short stream per session (`session-{session_id}`), so signing in and
//! out neither grows nor contends with the account's identity or billing streams.
//!
//! Sessions were recorded in the user's `account-{user_id}` stream before they had streams of
//! their own, so a session's key names its user too: that account stream is the session's
//! legacy stream, where a session started before the split is still found (and can be
//! revoked). The event type names stay `account.session_*`: they are a persisted contract.

use crate::Aggregate;
use crate::account::Account;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What names a session: the session, and the user whose account stream held it before
/// sessions had streams of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The user signed in.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
}

/// What can be asked of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    /// Record a sign-in (the caller has checked the credentials, so the account exists).
    Start {
        /// The user signing in.
        user_id: Uuid,
        /// The new session.
        session_id: Uuid,
        /// SHA-256 of the bearer token, hex; never the token.
        token_hash: String,
        /// When it stops working.
        expires_at: DateTime<Utc>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Sign the session out.
    Revoke {
        /// The session.
        session_id: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why a session command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session was started before: a new sign-in needs a new id.
    #[error("session already started")]
    AlreadyStarted,
    /// No such session.
    #[error("session not found")]
    Unknown,
}

/// A session began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStarted {
    /// The user.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A session was signed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRevoked {
    /// The user.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of session events (also in [`crate::account::event_types`]).
    pub mod event_types;

    /// Everything a session records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum SessionEvent {
        /// A session began.
        #[event(SESSION_STARTED = "account.session_started", version = 1)]
        Started(SessionStarted),
        /// A session ended.
        #[event(SESSION_REVOKED = "account.session_revoked", version = 1)]
        Revoked(SessionRevoked),
    }
}

impl SessionEvent {
    /// The session the event is about.
    pub fn session_id(&self) -> Uuid {
        match self {
            SessionEvent::Started(e) => e.session_id,
            SessionEvent::Revoked(e) => e.session_id,
        }
    }
}

/// The session aggregate's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    /// The user, once started.
    pub user_id: Option<Uuid>,
    /// The session, once started.
    pub session_id: Option<Uuid>,
    /// When it stops working, once started.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it was signed out.
    pub revoked: bool,
}

impl Aggregate for Session {
    type Id = SessionKey;
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;

    fn stream_name(key: &SessionKey) -> String {
        format!("session-{}", key.session_id)
    }

    fn legacy_stream(key: &SessionKey) -> Option<String> {
        Some(Account::stream_name(&key.user_id))
    }

    /// The account stream holds every session of its user; only this one's events count.
    fn owns_legacy(key: &SessionKey, event: &SessionEvent) -> bool {
        event.session_id() == key.session_id
    }

    fn decide(&self, command: SessionCommand) -> Result<Vec<SessionEvent>, SessionError> {
        match command {
            SessionCommand::Start {
                user_id,
                session_id,
                token_hash,
                expires_at,
                at,
            } => {
                if self.session_id.is_some() {
                    return Err(SessionError::AlreadyStarted);
                }
                Ok(vec![SessionEvent::Started(SessionStarted {
                    user_id,
                    session_id,
                    token_hash,
                    expires_at,
                    at,
                })])
            }
            SessionCommand::Revoke { session_id, at } => {
                let (Some(user_id), Some(known)) = (self.user_id, self.session_id) else {
                    return Err(SessionError::Unknown);
                };
                // A command for another session, sent to this one's stream, finds nothing.
                if known != session_id {
                    return Err(SessionError::Unknown);
                }
                // Signing out twice is not an error: the session is gone either way.
                if self.revoked {
                    return Ok(vec![]);
                }
                Ok(vec![SessionEvent::Revoked(SessionRevoked {
                    user_id,
                    session_id,
                    at,
                })])
            }
        }
    }

    fn evolve(mut self, event: &SessionEvent) -> Self {
        match event {
            SessionEvent::Started(e) => {
                self.user_id = Some(e.user_id);
                self.session_id = Some(e.session_id);
                self.expires_at = Some(e.expires_at);
            }
            SessionEvent::Revoked(_) => self.revoked = true,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventSchema;
    use crate::account::{AccountEvent, AccountRegistered, AccountRole, DisplayName, Email};
    use crate::testing::{given, given_stored, stored};
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn key(s: u128) -> SessionKey {
        SessionKey {
            user_id: id(1),
            session_id: id(s),
        }
    }
    fn started(s: u128) -> SessionEvent {
        SessionEvent::Started(SessionStarted {
            user_id: id(1),
            session_id: id(s),
            token_hash: "ab".into(),
            expires_at: at(),
            at: at(),
        })
    }
    fn revoked(s: u128) -> SessionEvent {
        SessionEvent::Revoked(SessionRevoked {
            user_id: id(1),
            session_id: id(s),
            at: at(),
        })
    }
    fn revoke(s: u128) -> SessionCommand {
        SessionCommand::Revoke {
            session_id: id(s),
            at: at(),
        }
    }
    fn registered() -> AccountEvent {
        AccountEvent::Registered(AccountRegistered {
            user_id: id(1),
            email: Email::parse("a@example.com").unwrap(),
            name: DisplayName::parse("Ann").unwrap(),
            password_hash: "$argon2id$...".into(),
            role: AccountRole::User,
            at: at(),
        })
    }

    #[test]
    fn a_session_starts_once() {
        let start = SessionCommand::Start {
            user_id: id(1),
            session_id: id(9),
            token_hash: "ab".into(),
            expires_at: at(),
            at: at(),
        };
        given::<Session>([]).when(start.clone()).then([started(9)]);
        given::<Session>([started(9)])
            .when(start)
            .then_error(SessionError::AlreadyStarted);
    }

    #[test]
    fn a_session_is_revoked_once_and_only_if_it_exists() {
        given::<Session>([started(9)])
            .when(revoke(9))
            .then([revoked(9)]);
        given::<Session>([started(9), revoked(9)])
            .when(revoke(9))
            .then([]);
        given::<Session>([])
            .when(revoke(9))
            .then_error(SessionError::Unknown);
        given::<Session>([started(9)])
            .when(revoke(8))
            .then_error(SessionError::Unknown);
    }

    #[test]
    fn a_session_started_in_the_account_stream_can_still_be_revoked() {
        let old_account_stream = || {
            [
                stored(&registered()),
                stored(&started(8)),
                stored(&started(9)),
                stored(&revoked(8)),
            ]
        };
        // Session 8's sign-out in the same old stream is not session 9's.
        given_stored::<Session>(&key(9), old_account_stream(), [])
            .when(revoke(9))
            .then([revoked(9)]);
        // A session signed out before the split stays signed out.
        given_stored::<Session>(&key(8), old_account_stream(), [])
            .when(revoke(8))
            .then([]);
        // Revoked in its own stream after the split: done.
        given_stored::<Session>(&key(9), old_account_stream(), [stored(&revoked(9))])
            .when(revoke(9))
            .then([]);
        given_stored::<Session>(&key(7), old_account_stream(), [])
            .when(revoke(7))
            .then_error(SessionError::Unknown);
    }

    #[test]
    fn sessions_have_their_own_streams_and_keep_their_type_names() {
        assert_eq!(Session::stream_name(&key(9)), format!("session-{}", id(9)));
        assert_eq!(
            Session::legacy_stream(&key(9)),
            Some(format!("account-{}", id(1)))
        );
        assert_eq!(
            event_types::ALL,
            ["account.session_started", "account.session_revoked"]
        );
        for e in [started(3), revoked(3)] {
            let back =
                SessionEvent::from_stored(e.event_type(), e.schema_version(), e.to_payload());
            assert_eq!(back, Ok(e));
        }
    }
}
