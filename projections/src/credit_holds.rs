//! The `credit_holds` projection: the credit reservations still held, with when each lapses,
//! so the sweeper finds the expired ones without loading every ledger.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::credits::{CreditEvent, event_types};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds `credit_holds`.
pub struct CreditHoldsProjection;

/// The projection's name.
pub const NAME: &str = "credit_holds";

#[async_trait]
impl Projection for CreditHoldsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            event_types::RESERVED
                | event_types::CONSUMED
                | event_types::RELEASED
                | event_types::HOLD_EXPIRED
                | confab_domain::account::event_types::USER_ERASED
        )
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(event) {
            crate::privacy::purge_credit_holds(tx, user).await?;
            return Ok(());
        }
        let e = CreditEvent::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload.clone(),
        )?;
        let closed = match &e {
            CreditEvent::Reserved(r) => {
                execute!(
                    tx,
                    "INSERT INTO credit_holds (reservation_id, user_id, amount, expires_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (reservation_id) DO NOTHING",
                    r.reservation_id,
                    r.user,
                    r.amount,
                    r.expires_at.timestamp_millis()
                )?;
                return Ok(());
            }
            CreditEvent::Consumed(c) => c.reservation_id,
            CreditEvent::Released(r) => r.reservation_id,
            CreditEvent::HoldExpired(x) => x.reservation_id,
            CreditEvent::Reset(_)
            | CreditEvent::Granted(_)
            | CreditEvent::Charged(_)
            | CreditEvent::Adjusted(_) => {
                return Ok(());
            }
        };
        execute!(
            tx,
            "DELETE FROM credit_holds WHERE reservation_id = $1",
            closed
        )?;
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM credit_holds")?;
        Ok(())
    }
}

/// A hold past its expiry.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExpiredHold {
    /// The reservation.
    pub reservation_id: Uuid,
    /// Whose ledger holds it.
    pub user_id: Uuid,
}

/// At most `limit` holds that lapsed at or before `now`, the longest expired first.
pub async fn expired(
    db: &ReadDb,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<ExpiredHold>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        ExpiredHold,
        "SELECT reservation_id, user_id FROM credit_holds WHERE expires_at_ms <= $1 \
         ORDER BY expires_at_ms LIMIT $2",
        now.timestamp_millis(),
        i64::from(limit)
    )
}

/// How many holds are open (expired or not).
pub async fn open_count(db: &ReadDb) -> Result<u64, sqlx::Error> {
    let (n,): (i64,) = query_as!(db, fetch_one, (i64,), "SELECT COUNT(*) FROM credit_holds")?;
    Ok(n as u64)
}
