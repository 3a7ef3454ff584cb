//! Billing (seed 003) through Stripe: checkout and the billing portal (async-stripe), the
//! invoices read model, and Stripe's events.
//!
//! A user's Stripe customer is created on their first checkout or portal visit and recorded on
//! their account (`account.stripe_customer_linked`) before Stripe can send any event about it.
//! A verified webhook delivery is recorded in a stream of its own ([`record_stripe_event`]; a
//! redelivery finds it and records nothing) and queued; the job applies it
//! ([`process_stripe_event`], in [`events`], whose documentation describes the whole flow).

pub mod events;

pub use events::{process_stripe_event, requeue_unprocessed};

use crate::jobs::{Job, ProcessStripeEvent};
use crate::{Actor, AppError, Details, Problems, Services, now};
use chrono::{TimeZone, Utc};
use confab_domain::billing::{Price, PurchaseMode, StripeEvent, StripeEventCommand, find_price};
use confab_domain::billing_account::{BillingAccount, BillingAccountCommand, BillingAccountError};
use confab_eventstore::aggregate::ExecuteError;
use confab_projections::accounts::UserRow;
use confab_projections::billing::{self as read, InvoiceRow};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use uuid::Uuid;

/// Longest Stripe id (event, customer, type) accepted, in characters.
pub const MAX_ID_LEN: usize = 255;

/// The latest event time accepted: the last second of year 9999.
const MAX_CREATED: i64 = 253_402_300_799;

/// Per-user locks (striped), so that one process never creates two Stripe customers for one
/// user; other processes are covered by Stripe's idempotency key and the account's rule that
/// the first customer recorded stays.
const LOCK_STRIPES: usize = 64;

/// Where Stripe sends the user back to.
#[derive(Debug, Clone)]
pub struct ReturnUrls {
    /// After a completed checkout.
    pub success: String,
    /// After an abandoned checkout.
    pub cancel: String,
    /// From the billing portal.
    pub portal_return: String,
}

/// Billing's configuration and handles.
#[derive(Clone)]
pub struct BillingSettings {
    stripe: Option<stripe::Client>,
    prices: Arc<Vec<Price>>,
    urls: Arc<ReturnUrls>,
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl BillingSettings {
    /// Billing with `stripe` (none: checkout and portal answer "unavailable"), the prices sold
    /// and the return URLs.
    pub fn new(stripe: Option<stripe::Client>, prices: Arc<Vec<Price>>, urls: ReturnUrls) -> Self {
        BillingSettings {
            stripe,
            prices,
            urls: Arc::new(urls),
            locks: Arc::new((0..LOCK_STRIPES).map(|_| Default::default()).collect()),
        }
    }

    /// The prices sold.
    pub fn prices(&self) -> &[Price] {
        &self.prices
    }

    fn client(&self) -> Result<&stripe::Client, AppError> {
        self.stripe.as_ref().ok_or_else(|| AppError::Unavailable {
            message: "billing is not configured: set STRIPE_SECRET_KEY".into(),
            details: details([("setting", "STRIPE_SECRET_KEY".into())]),
        })
    }
}

fn details<const N: usize>(pairs: [(&str, Value); N]) -> Details {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The Stripe API client for `secret_key` at `api_base` (`https://api.stripe.com` in
/// production; a local stand-in in tests), or none without a key.
pub fn stripe_client(
    secret_key: Option<&SecretString>,
    api_base: &str,
) -> Result<Option<stripe::Client>, stripe::StripeError> {
    let Some(key) = secret_key else {
        return Ok(None);
    };
    // The workspace links rustls with both crypto back-ends (sqlx brings ring, object_store
    // aws-lc-rs), so rustls cannot pick one by itself, and the Stripe client's TLS connector
    // asks for the process default: name it (unless the process already has).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The client appends `v1/...` to the base as written: it must end with a slash.
    let base = format!("{}/", api_base.trim_end_matches('/'));
    let client = stripe::ClientBuilder::new(key.expose_secret())
        .url(base)
        .timeout(std::time::Duration::from_secs(30))
        .app_info("confab", Some(env!("CARGO_PKG_VERSION").to_owned()), None)
        .build()?;
    Ok(Some(client))
}

/// Hides anything that looks like a Stripe key in text Stripe sent back.
fn redact(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            let bare = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            if ["sk_", "rk_", "pk_", "whsec_"]
                .iter()
                .any(|p| bare.starts_with(p))
            {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A failed Stripe call as the upstream error the client sees (and one log line).
fn stripe_error(doing: &str, e: stripe::StripeError) -> AppError {
    match e {
        stripe::StripeError::Stripe(err, status) => {
            let message = err.message.as_deref().map(redact);
            let kind = err.type_.as_str().to_owned();
            let code = err.code.as_ref().map(|c| c.as_str().to_owned());
            tracing::warn!(doing, status, kind, code, "stripe refused the request");
            AppError::Upstream {
                message: format!(
                    "the payment provider refused to {doing}: {}",
                    message.clone().unwrap_or_else(|| kind.clone())
                ),
                details: details([
                    ("provider", "stripe".into()),
                    ("status", status.into()),
                    ("type", kind.into()),
                    ("code", code.into()),
                    ("providerMessage", message.into()),
                ]),
            }
        }
        other => {
            tracing::warn!(doing, error = %other, "stripe could not be reached");
            AppError::Upstream {
                message: format!("the payment provider could not be reached to {doing}"),
                details: details([("provider", "stripe".into())]),
            }
        }
    }
}

/// `user`'s Stripe customer: the recorded one, or a new one, created at Stripe and recorded
/// on the account (and readable) before this returns.
async fn ensure_customer(svc: &Services, actor: &Actor) -> Result<String, AppError> {
    let billing = &svc.billing;
    let client = billing.client()?;
    let user: &UserRow = &actor.user;
    let stripe_lock = &billing.locks[(user.id.as_u128() % LOCK_STRIPES as u128) as usize];
    let _guard = stripe_lock.lock().await;
    if let Some(c) = read::customer_of(&svc.db, user.id).await? {
        return Ok(c);
    }
    // The same user with the same details within Stripe's 24 hours of idempotency gets the
    // same customer back, whichever process asks.
    let fingerprint = Sha256::digest(format!("{}\n{}", user.email, user.name));
    let key = format!(
        "confab-customer-{}-{}",
        user.id,
        hex::encode(&fingerprint[..8])
    );
    let key = IdempotencyKey::new(key)
        .map_err(|e| AppError::internal("making a Stripe idempotency key", e.to_string()))?;
    let customer = stripe_core::customer::CreateCustomer::new()
        .email(user.email.clone())
        .name(user.name.clone())
        .metadata(HashMap::from([("user_id".to_owned(), user.id.to_string())]))
        .customize()
        .request_strategy(RequestStrategy::Idempotent(key))
        .send(client)
        .await
        .map_err(|e| stripe_error("create the customer", e))?;
    let customer_id = customer.id.as_str().to_owned();
    let linked = svc
        .commands
        .execute::<BillingAccount>(
            &user.id,
            BillingAccountCommand::LinkStripeCustomer {
                user_id: user.id,
                customer_id: customer_id.clone(),
                at: now(),
            },
            actor.metadata(),
        )
        .await;
    match linked {
        Ok(done) => {
            svc.visible(read::NAME, done.appended.map(|a| a.last_position))
                .await?;
            Ok(customer_id)
        }
        // Another process recorded one first: that one is the account's.
        Err(ExecuteError::Domain(BillingAccountError::CustomerAlreadyLinked { existing })) => {
            Ok(existing)
        }
        Err(e) => Err(e.into()),
    }
}

/// A Stripe Checkout session for one of the configured prices, bought with `mode`; its URL.
/// The user's Stripe customer is created on first use.
pub async fn checkout(
    svc: &Services,
    actor: &Actor,
    price_id: &str,
    mode: &str,
) -> Result<String, AppError> {
    let billing = &svc.billing;
    let mode = PurchaseMode::parse(mode);
    let price = find_price(&billing.prices, price_id);
    let mut problems = Problems::new();
    match price {
        None => {
            let known: Vec<&str> = billing.prices.iter().map(|p| p.id.as_str()).collect();
            problems.add(
                "priceId",
                if known.is_empty() {
                    "unknown price: no prices are configured".to_owned()
                } else {
                    format!("unknown price; one of {}", known.join(", "))
                },
            );
        }
        Some(p) if mode.is_some_and(|m| m != p.mode()) => {
            let expected = match p.mode() {
                PurchaseMode::Subscription => "subscription",
                PurchaseMode::OneTime => "one-time",
            };
            problems.add(
                "mode",
                format!("price {} is bought with mode {expected}", p.id),
            );
        }
        Some(_) => {}
    }
    if mode.is_none() {
        problems.add("mode", "must be subscription or one-time");
    }
    let (Some(price), Some(mode), true) = (price, mode, problems.is_empty()) else {
        return Err(problems.into());
    };
    let client = billing.client()?;
    let customer = ensure_customer(svc, actor).await?;
    let tags = HashMap::from([
        ("user_id".to_owned(), actor.id().to_string()),
        ("price_id".to_owned(), price.id.clone()),
    ]);
    use stripe_checkout::checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems,
        CreateCheckoutSessionSubscriptionData,
    };
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.clone());
    line.quantity = Some(1);
    let mut request = CreateCheckoutSession::new()
        .customer(customer)
        .client_reference_id(actor.id().to_string())
        .line_items(vec![line])
        .metadata(tags.clone())
        .success_url(billing.urls.success.clone())
        .cancel_url(billing.urls.cancel.clone());
    request = match mode {
        PurchaseMode::Subscription => {
            let mut data = CreateCheckoutSessionSubscriptionData::new();
            data.metadata = Some(tags);
            request
                .mode(stripe_checkout::CheckoutSessionMode::Subscription)
                .subscription_data(data)
        }
        PurchaseMode::OneTime => request.mode(stripe_checkout::CheckoutSessionMode::Payment),
    };
    let session = request
        .send(client)
        .await
        .map_err(|e| stripe_error("start the checkout", e))?;
    session.url.ok_or_else(|| AppError::Upstream {
        message: "the payment provider returned a checkout session without a URL".into(),
        details: details([("provider", "stripe".into())]),
    })
}

/// A Stripe Billing Portal session for `actor`'s customer (created on first use); its URL.
pub async fn portal(svc: &Services, actor: &Actor) -> Result<String, AppError> {
    let client = svc.billing.client()?;
    let customer = ensure_customer(svc, actor).await?;
    let session = stripe_billing::billing_portal_session::CreateBillingPortalSession::new()
        .customer(customer)
        .return_url(svc.billing.urls.portal_return.clone())
        .send(client)
        .await
        .map_err(|e| stripe_error("open the billing portal", e))?;
    Ok(session.url)
}

/// `actor`'s invoices, newest first; `customer_id`, when given, must be their own customer.
pub async fn invoices(
    svc: &Services,
    actor: &Actor,
    customer_id: Option<&str>,
) -> Result<Vec<InvoiceRow>, AppError> {
    if let Some(asked) = customer_id {
        let own = read::customer_of(&svc.db, actor.id()).await?;
        if own.as_deref() != Some(asked) {
            return Err(AppError::NotFound("customer"));
        }
    }
    Ok(read::invoices(&svc.db, actor.id()).await?)
}

/// Records a verified Stripe event (the webhook's body, parsed) and queues its processing,
/// unless a delivery of it was processed already. A redelivery records nothing new.
pub async fn record_stripe_event(
    svc: &Services,
    correlation_id: Option<Uuid>,
    payload: Value,
) -> Result<(), AppError> {
    let mut problems = Problems::new();
    let text = |field: &str| {
        payload[field]
            .as_str()
            .filter(|s| !s.is_empty() && s.chars().count() <= MAX_ID_LEN)
            .map(str::to_owned)
    };
    let event_id = text("id");
    let event_type = text("type");
    // Whole seconds from 1970 to the end of year 9999 (JSON may write a whole number as 1e9).
    let created = match &payload["created"] {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
    .filter(|s| (0..=MAX_CREATED).contains(s))
    .and_then(|s| Utc.timestamp_opt(s, 0).single());
    if event_id.is_none() {
        problems.add("id", "must be the event's id");
    }
    if event_type.is_none() {
        problems.add("type", "must be the event's type");
    }
    if created.is_none() {
        problems.add("created", "must be a unix timestamp");
    }
    if !payload["data"]["object"].is_object() {
        problems.add("data.object", "must be an object");
    }
    let (Some(event_id), Some(event_type), Some(created), true) =
        (event_id, event_type, created, problems.is_empty())
    else {
        return Err(problems.into());
    };
    // The payload holds personal data (names, emails, addresses): it is sealed with the data
    // key of the user it is about. Of an erased user, only the ids are recorded, in clear.
    let (user_id, payload) = match events::subject_of(svc, &payload).await? {
        Some(user) if svc.vault.is_destroyed(user).await? => (None, ids_only(&payload)),
        found => (found, payload),
    };
    let stream_id = StripeEvent::id_for(&event_id);
    let (_, processed) = svc
        .commands
        .execute_then::<StripeEvent, bool>(
            &stream_id,
            StripeEventCommand::Receive {
                event_id: event_id.clone(),
                event_type,
                created,
                payload,
                user_id,
                at: now(),
            },
            crate::metadata(None, correlation_id),
            |s: &StripeEvent| s.processed,
        )
        .await?;
    // Queued again for a redelivery of an event still unprocessed: the first push may have
    // been lost with a crash, and processing twice changes nothing.
    if !processed {
        svc.jobs
            .push(Job::StripeEvent(ProcessStripeEvent { event_id }))
            .await?;
    }
    Ok(())
}

/// A Stripe event reduced to its ids: what is recorded of an erased user's.
fn ids_only(payload: &Value) -> Value {
    let object = &payload["data"]["object"];
    serde_json::json!({
        "id": payload["id"],
        "type": payload["type"],
        "created": payload["created"],
        "data": { "object": { "id": object["id"], "object": object["object"] } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_an_erased_users_stripe_event_only_ids_are_kept() {
        let full = serde_json::json!({
            "id": "evt_1", "type": "invoice.paid", "created": 1_700_000_000,
            "data": { "object": { "id": "in_1", "object": "invoice",
                "customer_email": "someone@example.com", "customer_name": "Some One" } },
        });
        let kept = ids_only(&full);
        assert_eq!(kept["data"]["object"]["id"], "in_1");
        assert_eq!(kept["type"], "invoice.paid");
        assert!(!kept.to_string().contains("someone"), "{kept}");
    }

    #[test]
    fn keys_in_stripe_messages_are_redacted() {
        assert_eq!(
            redact("Invalid API Key provided: sk_test_abc123"),
            "Invalid API Key provided: [redacted]"
        );
        assert_eq!(
            redact("No such price: 'price_1'"),
            "No such price: 'price_1'"
        );
        assert_eq!(redact("key (rk_live_x) bad"), "key [redacted] bad");
    }
}
