//! The `billing` projection: each account's Stripe customer, its subscriptions and invoices
//! (what `GET /api/billing/invoices` lists), and every Stripe event the webhook received, with
//! whether its effects have been applied (what the worker and the tests wait on).

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::billing::{StripeEventEvent, event_types as stripe_types};
use confab_domain::billing_account::{BillingAccountEvent, event_types as billing_types};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds `billing_customers`, `billing_subscriptions`, `invoices` and `stripe_events`.
pub struct BillingProjection;

/// The projection's name.
pub const NAME: &str = "billing";

#[async_trait]
impl Projection for BillingProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            billing_types::STRIPE_CUSTOMER_LINKED
                | billing_types::SUBSCRIPTION_CHANGED
                | billing_types::INVOICE_RECORDED
                | stripe_types::RECEIVED
                | stripe_types::PROCESSED
                | confab_domain::account::event_types::USER_ERASED
        )
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(event) {
            crate::privacy::purge_billing(tx, user).await?;
            return Ok(());
        }
        if stripe_types::ALL.contains(&event.event_type.as_str()) {
            let e = StripeEventEvent::from_stored(
                &event.event_type,
                event.schema_version,
                event.payload.clone(),
            )?;
            match e {
                StripeEventEvent::Received(r) => {
                    execute!(
                        tx,
                        "INSERT INTO stripe_events (event_id, type, created_at, received_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
                        r.event_id,
                        r.event_type,
                        r.created,
                        r.at
                    )?;
                }
                StripeEventEvent::Processed(p) => {
                    execute!(
                        tx,
                        "UPDATE stripe_events SET processed_at = $2, outcome = $3 \
                         WHERE event_id = $1",
                        p.event_id,
                        p.at,
                        p.outcome
                    )?;
                }
            }
            return Ok(());
        }
        let e = BillingAccountEvent::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload.clone(),
        )?;
        match e {
            BillingAccountEvent::StripeCustomerLinked(c) => {
                execute!(
                    tx,
                    "INSERT INTO billing_customers (customer_id, user_id, created_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (customer_id) DO NOTHING",
                    c.customer_id,
                    c.user_id,
                    c.at
                )?;
            }
            BillingAccountEvent::SubscriptionChanged(c) => {
                let s = c.subscription;
                execute!(
                    tx,
                    "INSERT INTO billing_subscriptions (subscription_id, user_id, status, tier, \
                     current_period_end, cancel_at_period_end, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (subscription_id) DO UPDATE \
                     SET status = $3, tier = $4, current_period_end = $5, \
                     cancel_at_period_end = $6, updated_at = $7",
                    s.subscription_id,
                    c.user_id,
                    s.status.as_str(),
                    s.tier,
                    s.current_period_end,
                    s.cancel_at_period_end,
                    c.at
                )?;
            }
            BillingAccountEvent::InvoiceRecorded(r) => {
                let i = r.invoice;
                execute!(
                    tx,
                    "INSERT INTO invoices (id, user_id, customer_id, subscription_id, amount, \
                     currency, status, created_at, invoice_url, description, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (id) DO UPDATE SET amount = $5, currency = $6, status = $7, \
                     invoice_url = $9, description = $10, updated_at = $11",
                    i.invoice_id,
                    r.user_id,
                    i.customer_id,
                    i.subscription_id,
                    i.amount,
                    i.currency,
                    i.status,
                    i.created,
                    i.hosted_invoice_url,
                    i.description,
                    r.at
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        execute!(tx, "DELETE FROM billing_customers")?;
        execute!(tx, "DELETE FROM billing_subscriptions")?;
        execute!(tx, "DELETE FROM invoices")?;
        execute!(tx, "DELETE FROM stripe_events")?;
        Ok(())
    }
}

/// The user whose Stripe customer this is.
pub async fn customer_user(db: &ReadDb, customer_id: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let row: Option<(Uuid,)> = query_as!(
        db,
        fetch_optional,
        (Uuid,),
        "SELECT user_id FROM billing_customers WHERE customer_id = $1",
        customer_id
    )?;
    Ok(row.map(|(u,)| u))
}

/// `user`'s Stripe customer, once created.
pub async fn customer_of(db: &ReadDb, user: Uuid) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = query_as!(
        db,
        fetch_optional,
        (String,),
        "SELECT customer_id FROM billing_customers WHERE user_id = $1",
        user
    )?;
    Ok(row.map(|(c,)| c))
}

/// One invoice as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InvoiceRow {
    /// Stripe's invoice id.
    pub id: String,
    /// The customer billed.
    pub customer_id: String,
    /// The subscription billed, if any.
    pub subscription_id: Option<String>,
    /// In the currency's smallest unit.
    pub amount: i64,
    /// ISO code, lower-case.
    pub currency: String,
    /// draft, open, paid, uncollectible or void.
    pub status: String,
    /// When Stripe created it.
    pub created_at: DateTime<Utc>,
    /// Stripe's hosted page.
    pub invoice_url: Option<String>,
    /// What it is for.
    pub description: Option<String>,
}

/// `user`'s invoices, newest first.
pub async fn invoices(db: &ReadDb, user: Uuid) -> Result<Vec<InvoiceRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        InvoiceRow,
        "SELECT id, customer_id, subscription_id, amount, currency, status, created_at, \
         invoice_url, description FROM invoices WHERE user_id = $1 \
         ORDER BY created_at DESC, id DESC",
        user
    )
}

/// A subscription as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SubscriptionRow {
    /// Stripe's subscription id.
    pub subscription_id: String,
    /// Its status.
    pub status: String,
    /// The tier it gives while entitled.
    pub tier: String,
    /// The end of the current period, once known.
    pub current_period_end: Option<DateTime<Utc>>,
    /// Whether it ends then.
    pub cancel_at_period_end: bool,
}

/// `user`'s subscriptions.
pub async fn subscriptions(db: &ReadDb, user: Uuid) -> Result<Vec<SubscriptionRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        SubscriptionRow,
        "SELECT subscription_id, status, tier, current_period_end, cancel_at_period_end \
         FROM billing_subscriptions WHERE user_id = $1 ORDER BY subscription_id",
        user
    )
}

/// A received Stripe event as read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StripeEventRow {
    /// Stripe's event id.
    pub event_id: String,
    /// Its type.
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// When it arrived (first).
    pub received_at: DateTime<Utc>,
    /// When its effects were applied.
    pub processed_at: Option<DateTime<Utc>>,
    /// What processing did.
    pub outcome: Option<String>,
}

/// The received Stripe event with this id.
pub async fn stripe_event(
    db: &ReadDb,
    event_id: &str,
) -> Result<Option<StripeEventRow>, sqlx::Error> {
    query_as!(
        db,
        fetch_optional,
        StripeEventRow,
        "SELECT event_id, type, received_at, processed_at, outcome FROM stripe_events \
         WHERE event_id = $1",
        event_id
    )
}

/// The ids of received Stripe events not yet processed, oldest first.
pub async fn unprocessed_stripe_events(db: &ReadDb) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = query_as!(
        db,
        fetch_all,
        (String,),
        "SELECT event_id FROM stripe_events WHERE processed_at IS NULL \
         ORDER BY received_at, event_id"
    )?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
