//! Billing: Stripe redirects, invoices and the webhook's acknowledgement.

use chrono::{DateTime, Utc};
use confab_projections::billing::InvoiceRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a price is bought.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PurchaseModeName {
    /// A recurring subscription.
    Subscription,
    /// A one-time top-up.
    OneTime,
}

/// `{priceId, mode}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutBody {
    /// A configured Stripe price id.
    pub price_id: String,
    /// Must match the price: `subscription` for a tier, `one-time` for a top-up.
    #[schema(value_type = PurchaseModeName)]
    pub mode: String,
}

/// `{url}`: where to send the user.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Redirect {
    /// A Stripe-hosted page.
    pub url: String,
}

/// An invoice.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    /// Stripe's invoice id.
    pub id: String,
    /// In the currency's smallest unit (cents).
    pub amount: i64,
    /// ISO code, lower-case.
    pub currency: String,
    /// draft, open, paid, uncollectible or void.
    pub status: String,
    /// When Stripe created it.
    pub date: DateTime<Utc>,
    /// Stripe's hosted page.
    pub invoice_url: Option<String>,
    /// What it is for.
    pub description: Option<String>,
}

impl From<InvoiceRow> for Invoice {
    fn from(i: InvoiceRow) -> Self {
        Invoice {
            id: i.id,
            amount: i.amount,
            currency: i.currency,
            status: i.status,
            date: i.created_at,
            invoice_url: i.invoice_url,
            description: i.description,
        }
    }
}

/// `{invoices}`, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvoiceList {
    /// The caller's invoices.
    pub invoices: Vec<Invoice>,
}

/// `?customerId` of the invoices route.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct InvoicesQuery {
    /// The caller's own Stripe customer id (another's is 404).
    pub customer_id: Option<String>,
}

/// `{received: true}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookAck {
    /// Always true: the event is recorded.
    pub received: bool,
}

/// What the webhook needs of a Stripe event; the rest of it (the object's fields) is kept as
/// Stripe sent it and read by the job that applies it.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct StripeEventBody {
    /// Stripe's event id (`evt_...`).
    #[schema(min_length = 1, max_length = 255)]
    pub id: String,
    /// The event type, such as `invoice.paid`.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 255)]
    pub kind: String,
    /// When Stripe created it, in Unix seconds.
    #[schema(minimum = 0, maximum = 253_402_300_799_i64)]
    pub created: i64,
    /// The object the event is about.
    pub data: StripeEventData,
}

/// `{object}`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct StripeEventData {
    /// The object (a checkout session, an invoice, a subscription, ...).
    #[schema(value_type = Object)]
    pub object: serde_json::Map<String, serde_json::Value>,
}
