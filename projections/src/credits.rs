//! The `credits` projection: each user's balance and the credit history (the starting grant,
//! usage, resets, top-ups, subscription grants, operator adjustments, and holds released
//! because they expired) that `GET /api/billing/credit-history` pages through. Every change of
//! a balance is a transaction, so a user's history sums to their balance.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::credits::{CreditEvent, GrantKind, event_types};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds `credit_balances` and `credit_transactions`.
pub struct CreditsProjection;

/// The projection's name.
pub const NAME: &str = "credits";

/// The kinds of transaction, as API.md names them.
pub const TYPES: &[&str] = &[
    "usage",
    "reset",
    "topup",
    "subscription",
    "grant",
    "adjustment",
    "release",
];

/// The version of this projection: 2 shows the ledger's opening as a `grant` (it was a
/// `reset`) and records operator adjustments.
pub const VERSION: u32 = 2;

/// One history row to write.
struct Entry<'a> {
    user: Uuid,
    kind: &'a str,
    amount: i64,
    balance_after: i64,
    chat_id: Option<Uuid>,
    model: Option<&'a str>,
    reference: Option<&'a str>,
    tokens: Option<(u64, u64)>,
    released: Option<i64>,
    actor: Option<&'a str>,
    at: DateTime<Utc>,
}

#[async_trait]
impl Projection for CreditsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            event_types::RESET
                | event_types::CONSUMED
                | event_types::GRANTED
                | event_types::HOLD_EXPIRED
                | event_types::CHARGED
                | event_types::ADJUSTED
                | confab_domain::account::event_types::USER_ERASED
        )
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(event) {
            crate::privacy::purge_credits(tx, user).await?;
            return Ok(());
        }
        let e = CreditEvent::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload.clone(),
        )?;
        let document = match &e {
            CreditEvent::Charged(c) => c.document_id.map(|d| d.to_string()),
            _ => None,
        };
        let entry = match &e {
            // The first event of a ledger opens it with the starting allowance: a grant, not a
            // month's reset (whichever command opened it).
            CreditEvent::Reset(r) => Entry {
                user: r.user,
                kind: if event.version == 1 { "grant" } else { "reset" },
                amount: r.amount,
                balance_after: r.balance_after,
                chat_id: None,
                model: None,
                reference: Some(&r.period),
                tokens: None,
                released: None,
                actor: None,
                at: r.at,
            },
            CreditEvent::Consumed(c) => Entry {
                user: c.user,
                kind: "usage",
                amount: -c.amount,
                balance_after: c.balance_after,
                chat_id: Some(c.chat_id),
                model: Some(&c.model),
                reference: None,
                tokens: Some((c.input_tokens, c.output_tokens)),
                released: None,
                actor: None,
                at: c.at,
            },
            CreditEvent::Granted(g) => Entry {
                user: g.user,
                kind: match g.kind {
                    GrantKind::Topup => "topup",
                    GrantKind::Subscription => "subscription",
                },
                amount: g.amount,
                balance_after: g.balance_after,
                chat_id: None,
                model: None,
                reference: Some(&g.grant_id),
                tokens: None,
                released: None,
                actor: None,
                at: g.at,
            },
            // A hold that lapsed: the balance is unchanged (a hold only kept credits from
            // use), so the row adds nothing and says what it gave back.
            CreditEvent::HoldExpired(x) => Entry {
                user: x.user,
                kind: "release",
                amount: 0,
                balance_after: x.balance,
                chat_id: Some(x.chat_id),
                model: Some(&x.model),
                reference: None,
                tokens: None,
                released: Some(x.amount),
                actor: None,
                at: x.at,
            },
            // Usage without a reservation (a document's embeddings): its reference is the
            // document.
            CreditEvent::Charged(c) => Entry {
                user: c.user,
                kind: "usage",
                amount: -c.amount,
                balance_after: c.balance_after,
                chat_id: None,
                model: Some(&c.model),
                reference: document.as_deref(),
                tokens: Some((c.input_tokens, 0)),
                released: None,
                actor: None,
                at: c.at,
            },
            CreditEvent::Adjusted(a) => Entry {
                user: a.user,
                kind: "adjustment",
                amount: a.amount,
                balance_after: a.balance_after,
                chat_id: None,
                model: None,
                reference: Some(&a.reason),
                tokens: None,
                released: None,
                actor: Some(&a.by),
                at: a.at,
            },
            CreditEvent::Reserved(_) | CreditEvent::Released(_) => return Ok(()),
        };
        let (input, output) = match entry.tokens {
            Some((i, o)) => (Some(i as i64), Some(o as i64)),
            None => (None, None),
        };
        execute!(
            tx,
            "INSERT INTO credit_transactions (id, user_id, position, type, amount, \
             balance_after, chat_id, model, reference, input_tokens, output_tokens, released, \
             actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14) ON CONFLICT (id) DO NOTHING",
            event.event_id,
            entry.user,
            event.position as i64,
            entry.kind,
            entry.amount,
            entry.balance_after,
            entry.chat_id,
            entry.model,
            entry.reference,
            input,
            output,
            entry.released,
            entry.actor,
            entry.at
        )?;
        execute!(
            tx,
            "INSERT INTO credit_balances (user_id, balance, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET balance = $2, updated_at = $3",
            entry.user,
            entry.balance_after,
            entry.at
        )?;
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM credit_transactions")?;
        execute!(tx, "DELETE FROM credit_balances")?;
        Ok(())
    }
}

/// One credit transaction as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TransactionRow {
    /// The event's id.
    pub id: Uuid,
    /// usage, reset, topup, subscription, grant, adjustment or release.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Credits added (negative when charged).
    pub amount: i64,
    /// The balance after.
    pub balance_after: i64,
    /// The chat a usage was for.
    pub chat_id: Option<Uuid>,
    /// The model a usage was for.
    pub model: Option<String>,
    /// The month of a reset or the starting grant, the payment of a top-up or subscription,
    /// the document of an embedding usage, or the reason of an adjustment.
    pub reference: Option<String>,
    /// Input tokens of a usage.
    pub input_tokens: Option<i64>,
    /// Output tokens of a usage.
    pub output_tokens: Option<i64>,
    /// Credits an expired hold gave back (a release).
    pub released: Option<i64>,
    /// Who made an adjustment.
    pub actor: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A page of `user`'s credit history, newest first, optionally of one `kind`, and how many
/// there are in all. The page and its total come from one statement, so they agree however
/// the ledger moves meanwhile.
pub async fn history(
    db: &ReadDb,
    user: Uuid,
    kind: Option<&str>,
    limit: u32,
    offset: u64,
) -> Result<(Vec<TransactionRow>, u64), sqlx::Error> {
    /// A row with the count of the whole list.
    #[derive(sqlx::FromRow)]
    struct Counted {
        #[sqlx(flatten)]
        row: TransactionRow,
        total: i64,
    }
    let rows = query_as!(
        db,
        fetch_all,
        Counted,
        "SELECT id, type, amount, balance_after, chat_id, model, reference, input_tokens, \
         output_tokens, released, actor, created_at, COUNT(*) OVER () AS total \
         FROM credit_transactions WHERE user_id = $1 AND ($2 IS NULL OR type = $2) \
         ORDER BY position DESC LIMIT $3 OFFSET $4",
        user,
        kind,
        i64::from(limit),
        offset as i64
    )?;
    if let Some(first) = rows.first() {
        let total = first.total as u64;
        return Ok((rows.into_iter().map(|c| c.row).collect(), total));
    }
    // An empty first page is an empty list (a count read now could see a row committed since
    // the page was read, and answer a total the page does not show).
    if offset == 0 {
        return Ok((Vec::new(), 0));
    }
    // A page past the end: the total still says how many there are.
    let (total,): (i64,) = query_as!(
        db,
        fetch_one,
        (i64,),
        "SELECT COUNT(*) FROM credit_transactions WHERE user_id = $1 AND ($2 IS NULL OR type = $2)",
        user,
        kind
    )?;
    Ok((Vec::new(), total as u64))
}

/// `user`'s balance, if their account has opened.
pub async fn balance(db: &ReadDb, user: Uuid) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = query_as!(
        db,
        fetch_optional,
        (i64,),
        "SELECT balance FROM credit_balances WHERE user_id = $1",
        user
    )?;
    Ok(row.map(|(b,)| b))
}
