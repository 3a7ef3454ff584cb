//! The `accounts` projection: users (with their billing tier) and their sign-in sessions, as
//! authentication reads them.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::account::{AccountEvent, event_types};
use confab_domain::billing_account::{BillingAccountEvent, event_types as billing_types};
use confab_domain::privacy::ERASED;
use confab_domain::session::{SessionEvent, event_types as session_types};
use confab_domain::{EventSchema, UpcastError};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds the `users` and `sessions` tables.
pub struct AccountsProjection;

/// The projection's name.
pub const NAME: &str = "accounts";

#[async_trait]
impl Projection for AccountsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        [event_types::ALL, session_types::ALL, billing_types::ALL]
            .iter()
            .any(|all| all.contains(&event_type))
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        match Decoded::from(event)? {
            Decoded::Account(AccountEvent::Registered(r)) => {
                execute!(
                    tx,
                    "INSERT INTO users (id, email, name, role, password_hash, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
                    r.user_id,
                    unique_email(r.email.as_str(), r.user_id),
                    r.name.as_str().to_owned(),
                    r.role.as_str(),
                    r.password_hash,
                    r.at
                )?;
            }
            Decoded::Session(SessionEvent::Started(s)) => {
                execute!(
                    tx,
                    "INSERT INTO sessions (token_hash, session_id, user_id, created_at, \
                     expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO NOTHING",
                    s.token_hash,
                    s.session_id,
                    s.user_id,
                    s.at,
                    s.expires_at
                )?;
            }
            Decoded::Account(AccountEvent::ProfileUpdated(p)) => {
                execute!(
                    tx,
                    "UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email), \
                     updated_at = $4 WHERE id = $1",
                    p.user_id,
                    p.name.map(|n| n.as_str().to_owned()),
                    p.email.map(|e| unique_email(e.as_str(), p.user_id)),
                    p.at
                )?;
            }
            Decoded::Account(AccountEvent::ImageChanged(i)) => {
                execute!(
                    tx,
                    "UPDATE users SET image_url = $2, updated_at = $3 WHERE id = $1",
                    i.user_id,
                    i.image_url,
                    i.at
                )?;
            }
            Decoded::Session(SessionEvent::Revoked(s)) => {
                execute!(
                    tx,
                    "UPDATE sessions SET revoked_at = $2 WHERE session_id = $1 \
                     AND revoked_at IS NULL",
                    s.session_id,
                    s.at
                )?;
            }
            // Not a profile edit: `updated_at` stays the profile's.
            Decoded::Billing(BillingAccountEvent::TierChanged(t)) => {
                execute!(
                    tx,
                    "UPDATE users SET tier = $2 WHERE id = $1",
                    t.user_id,
                    t.to
                )?;
            }
            Decoded::Account(AccountEvent::Erased(e)) => {
                crate::privacy::purge_accounts(tx, e.user_id).await?;
            }
            // The billing projection keeps the rest.
            Decoded::Billing(_) => {}
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM sessions")?;
        execute!(tx, "DELETE FROM users")?;
        Ok(())
    }
}

/// The address a row keeps: an erased user's reads as [`ERASED`] in the log, made unique per
/// user here (the column is unique, and a rebuild meets several erased users before their
/// rows are purged).
fn unique_email(email: &str, user: Uuid) -> String {
    if email == ERASED {
        format!("{ERASED}{user}")
    } else {
        email.to_owned()
    }
}

/// An event this projection reads, from whichever aggregate records it: the account, a
/// session or the billing account (all once in the account stream; type names unchanged).
enum Decoded {
    Account(AccountEvent),
    Session(SessionEvent),
    Billing(BillingAccountEvent),
}

impl Decoded {
    fn from(e: &RecordedEvent) -> Result<Self, UpcastError> {
        let (t, v, payload) = (e.event_type.as_str(), e.schema_version, e.payload.clone());
        Ok(if session_types::ALL.contains(&t) {
            Decoded::Session(SessionEvent::from_stored(t, v, payload)?)
        } else if billing_types::ALL.contains(&t) {
            Decoded::Billing(BillingAccountEvent::from_stored(t, v, payload)?)
        } else {
            Decoded::Account(AccountEvent::from_stored(t, v, payload)?)
        })
    }
}

/// A user as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    /// Id.
    pub id: Uuid,
    /// Normalised address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Where their image is served, if they uploaded one.
    pub image_url: Option<String>,
    /// `user` or `admin`.
    pub role: String,
    /// Billing tier.
    pub tier: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Registered.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The user with this (normalised) address.
pub async fn user_by_email(db: &ReadDb, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        UserRow,
        "SELECT u.id, u.email, u.name, u.image_url, u.role, u.tier, u.password_hash, \
         u.created_at, u.updated_at FROM users u WHERE u.email = $1",
        email
    )
}

/// The user with this id.
pub async fn user_by_id(db: &ReadDb, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        UserRow,
        "SELECT u.id, u.email, u.name, u.image_url, u.role, u.tier, u.password_hash, \
         u.created_at, u.updated_at FROM users u WHERE u.id = $1",
        id
    )
}

/// A live session and its user.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUser {
    /// The session.
    pub session_id: Uuid,
    /// Its user.
    pub user: UserRow,
}

#[derive(sqlx::FromRow)]
struct SessionUserRow {
    session_id: Uuid,
    #[sqlx(flatten)]
    user: UserRow,
}

/// The user of the unrevoked, unexpired session whose token hashes to `token_hash`.
pub async fn session_user(
    db: &ReadDb,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<SessionUser>, sqlx::Error> {
    let row = query_as!(
        db,
        fetch_optional,
        SessionUserRow,
        "SELECT s.session_id, u.id, u.email, u.name, u.image_url, u.role, u.tier, \
         u.password_hash, u.created_at, u.updated_at FROM sessions s JOIN users u \
         ON u.id = s.user_id WHERE s.token_hash = $1 AND s.revoked_at IS NULL \
         AND s.expires_at > $2",
        token_hash,
        now
    )?;
    Ok(row.map(|r| SessionUser {
        session_id: r.session_id,
        user: r.user,
    }))
}

/// Whether session `session_id` is neither signed out nor expired at `now`: what long-lived
/// connections (realtime) re-check while they stay open.
pub async fn session_live(
    db: &ReadDb,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let row: Option<(Uuid,)> = query_as!(
        db,
        fetch_optional,
        (Uuid,),
        "SELECT session_id FROM sessions WHERE session_id = $1 AND revoked_at IS NULL \
         AND expires_at > $2",
        session_id,
        now
    )?;
    Ok(row.is_some())
}

/// Every account's id and tier, in sign-up order.
pub async fn all_tiers(db: &ReadDb) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        (Uuid, String),
        "SELECT id, tier FROM users ORDER BY created_at, id"
    )
}

/// The tier of `user`, if the account exists.
pub async fn tier(db: &ReadDb, user: Uuid) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = query_as!(
        db,
        fetch_optional,
        (String,),
        "SELECT tier FROM users WHERE id = $1",
        user
    )?;
    Ok(row.map(|(t,)| t))
}
