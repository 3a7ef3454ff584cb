//! Billing (seed 003): `POST /api/billing/checkout` and `POST /api/billing/portal` through
//! Stripe (async-stripe), `GET /api/billing/invoices` from the invoices read model, and the
//! Stripe webhook `POST /api/webhooks/stripe`.
//!
//! A user's Stripe customer is created on their first checkout or portal visit and recorded on
//! their account (`account.stripe_customer_linked`) before Stripe can send any event about it.
//! The webhook verifies the signature on the raw body, records the event in a stream of its
//! own (a redelivery finds it and records nothing), queues its processing and answers 200; what
//! the event does (tier, credits, invoices) is applied by the worker job in
//! `confab_workers::billing`, whose module documentation describes the whole flow.

use crate::auth::{AuthUser, metadata};
use crate::extract::ApiQuery;
use crate::json::ApiJson;
use crate::openapi::ErrorBody;
use crate::stripe_signature::{self, SignatureError};
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use chrono::{TimeZone, Utc};
use confab_domain::billing::{Price, PurchaseMode, StripeEvent, StripeEventCommand, find_price};
use confab_domain::billing_account::{BillingAccount, BillingAccountCommand, BillingAccountError};
use confab_eventstore::StoreError;
use confab_eventstore::aggregate::ExecuteError;
use confab_projections::accounts::UserRow;
use confab_projections::billing as read;
use confab_workers::billing::{ProcessStripeEvent, StripeQueue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};

/// Longest Stripe id (event, customer) accepted.
const MAX_ID_LEN: usize = 255;

/// Per-user locks (striped), so that one process never creates two Stripe customers for one
/// user; other processes are covered by Stripe's idempotency key and the account's rule that
/// the first customer recorded stays.
const LOCK_STRIPES: usize = 64;

/// Billing's configuration and handles, shared by the routes.
#[derive(Clone)]
pub struct Billing {
    stripe: Option<stripe::Client>,
    webhook_secret: Option<Arc<SecretString>>,
    prices: Arc<Vec<Price>>,
    urls: Arc<ReturnUrls>,
    queue: StripeQueue,
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

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

/// The Stripe API client for `secret_key` at `api_base` (`https://api.stripe.com` in
/// production; a local stand-in in tests), or none without a key.
pub fn stripe_client(
    secret_key: Option<&SecretString>,
    api_base: &str,
) -> anyhow::Result<Option<stripe::Client>> {
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
        .build()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot configure the Stripe client (STRIPE_SECRET_KEY, CONFAB_STRIPE_API_BASE): {e}"
            )
        })?;
    Ok(Some(client))
}

impl Billing {
    /// Billing with `stripe` (none: checkout and portal answer 503), the webhook's signing
    /// secret (none: the webhook answers 503), the prices sold, the return URLs and the queue
    /// the webhook hands events to.
    pub fn new(
        stripe: Option<stripe::Client>,
        webhook_secret: Option<SecretString>,
        prices: Arc<Vec<Price>>,
        urls: ReturnUrls,
        queue: StripeQueue,
    ) -> Self {
        Billing {
            stripe,
            webhook_secret: webhook_secret.map(Arc::new),
            prices,
            urls: Arc::new(urls),
            queue,
            locks: Arc::new((0..LOCK_STRIPES).map(|_| Default::default()).collect()),
        }
    }

    fn client(&self) -> Result<&stripe::Client, ApiError> {
        self.stripe.as_ref().ok_or_else(|| ApiError::Unavailable {
            message: "billing is not configured: set STRIPE_SECRET_KEY".into(),
            details: json!({ "setting": "STRIPE_SECRET_KEY" }),
        })
    }
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

/// A failed Stripe call as the 502 the client sees (and one log line).
fn stripe_error(doing: &str, e: stripe::StripeError) -> ApiError {
    match e {
        stripe::StripeError::Stripe(err, status) => {
            let message = err.message.as_deref().map(redact);
            let kind = err.type_.as_str().to_owned();
            let code = err.code.as_ref().map(|c| c.as_str().to_owned());
            tracing::warn!(doing, status, kind, code, "stripe refused the request");
            ApiError::BadGateway {
                message: format!(
                    "the payment provider refused to {doing}: {}",
                    message.clone().unwrap_or_else(|| kind.clone())
                ),
                details: json!({
                    "provider": "stripe",
                    "status": status,
                    "type": kind,
                    "code": code,
                    "providerMessage": message,
                }),
            }
        }
        other => {
            tracing::warn!(doing, error = %other, "stripe could not be reached");
            ApiError::BadGateway {
                message: format!("the payment provider could not be reached to {doing}"),
                details: json!({ "provider": "stripe" }),
            }
        }
    }
}

/// `user`'s Stripe customer: the recorded one, or a new one, created at Stripe and recorded
/// on the account (and readable) before this returns.
async fn ensure_customer(
    state: &AppState,
    headers: &HeaderMap,
    user: &UserRow,
) -> Result<String, ApiError> {
    let billing = &state.billing;
    let client = billing.client()?;
    let stripe_lock = &billing.locks[(user.id.as_u128() % LOCK_STRIPES as u128) as usize];
    let _guard = stripe_lock.lock().await;
    if let Some(c) = read::customer_of(&state.db, user.id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
    {
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
    let key = IdempotencyKey::new(key).map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
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
    let linked = state
        .commands
        .execute::<BillingAccount>(
            &user.id,
            BillingAccountCommand::LinkStripeCustomer {
                user_id: user.id,
                customer_id: customer_id.clone(),
                at: crate::auth::now(),
            },
            metadata(headers, Some(user.id)),
        )
        .await;
    match linked {
        Ok(done) => {
            state
                .visible(read::NAME, done.appended.map(|a| a.last_position))
                .await?;
            Ok(customer_id)
        }
        // Another process recorded one first: that one is the account's.
        Err(ExecuteError::Domain(BillingAccountError::CustomerAlreadyLinked { existing })) => {
            Ok(existing)
        }
        Err(e) => Err(ApiError::Internal(anyhow::anyhow!("{e}"))),
    }
}

/// The body of `POST /api/billing/checkout`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CheckoutBody {
    /// A configured Stripe price id.
    price_id: String,
    /// `subscription` or `one-time`.
    mode: String,
}

/// `POST /api/billing/checkout {priceId, mode}` → `{url}`: a Stripe Checkout session for one
/// of the configured prices. The user's Stripe customer is created on first use.
#[utoipa::path(post, path = "/api/billing/checkout", tag = "billing", security(("bearer" = []), ("cookie" = [])), request_body = CheckoutBody, responses((status = 200, description = "{url}: where to send the user to pay"), (status = 400, description = "Unknown price or a mode that does not match it", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 502, description = "Stripe refused the request or could not be reached", body = ErrorBody), (status = 503, description = "STRIPE_SECRET_KEY is not set", body = ErrorBody)))]
pub(crate) async fn checkout(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<Json<Value>, ApiError> {
    let billing = &state.billing;
    let mode = PurchaseMode::parse(&body.mode);
    let price = find_price(&billing.prices, body.price_id.trim());
    let mut problems = serde_json::Map::new();
    match price {
        None => {
            let known: Vec<&str> = billing.prices.iter().map(|p| p.id.as_str()).collect();
            problems.insert(
                "priceId".into(),
                if known.is_empty() {
                    "unknown price: no prices are configured".into()
                } else {
                    format!("unknown price; one of {}", known.join(", ")).into()
                },
            );
        }
        Some(p) if mode.is_some_and(|m| m != p.mode()) => {
            let expected = match p.mode() {
                PurchaseMode::Subscription => "subscription",
                PurchaseMode::OneTime => "one-time",
            };
            problems.insert(
                "mode".into(),
                format!("price {} is bought with mode {expected}", p.id).into(),
            );
        }
        Some(_) => {}
    }
    if mode.is_none() {
        problems.insert("mode".into(), "must be subscription or one-time".into());
    }
    let (Some(price), Some(mode), true) = (price, mode, problems.is_empty()) else {
        return Err(ApiError::invalid(problems));
    };
    let client = billing.client()?;
    let customer = ensure_customer(&state, &headers, &auth.user).await?;
    let tags = HashMap::from([
        ("user_id".to_owned(), auth.user.id.to_string()),
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
        .client_reference_id(auth.user.id.to_string())
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
    let url = session.url.ok_or_else(|| ApiError::BadGateway {
        message: "the payment provider returned a checkout session without a URL".into(),
        details: json!({ "provider": "stripe" }),
    })?;
    Ok(Json(json!({ "url": url })))
}

/// `POST /api/billing/portal` → `{url}`: a Stripe Billing Portal session for the user's
/// customer (created on first use).
#[utoipa::path(post, path = "/api/billing/portal", tag = "billing", security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "{url}: the user's billing portal"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 502, description = "Stripe refused the request or could not be reached", body = ErrorBody), (status = 503, description = "STRIPE_SECRET_KEY is not set", body = ErrorBody)))]
pub(crate) async fn portal(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let client = state.billing.client()?;
    let customer = ensure_customer(&state, &headers, &auth.user).await?;
    let session = stripe_billing::billing_portal_session::CreateBillingPortalSession::new()
        .customer(customer)
        .return_url(state.billing.urls.portal_return.clone())
        .send(client)
        .await
        .map_err(|e| stripe_error("open the billing portal", e))?;
    Ok(Json(json!({ "url": session.url })))
}

/// Query of the invoices route.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InvoicesQuery {
    customer_id: Option<String>,
}

/// `GET /api/billing/invoices?customerId` → `{invoices: [{id, amount, currency, status, date,
/// invoiceUrl, description}]}`, newest first: the caller's own; another customer's id is 404.
#[utoipa::path(get, path = "/api/billing/invoices", tag = "billing", security(("bearer" = []), ("cookie" = [])), params(("customerId" = Option<String>, Query, description = "The caller's Stripe customer id (optional)")), responses((status = 200, description = "{invoices: [{id, amount, currency, status, date, invoiceUrl, description}]}; amount in the currency's smallest unit"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "Not the caller's customer", body = ErrorBody)))]
pub(crate) async fn invoices(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<InvoicesQuery>,
) -> Result<Json<Value>, ApiError> {
    let internal = |e: sqlx::Error| ApiError::Internal(e.into());
    if let Some(asked) = q.customer_id.as_deref() {
        let own = read::customer_of(&state.db, auth.user.id)
            .await
            .map_err(internal)?;
        if own.as_deref() != Some(asked) {
            return Err(ApiError::NotFound("customer not found".into()));
        }
    }
    let rows = read::invoices(&state.db, auth.user.id)
        .await
        .map_err(internal)?;
    let invoices: Vec<Value> = rows
        .into_iter()
        .map(|i| {
            json!({
                "id": i.id,
                "amount": i.amount,
                "currency": i.currency,
                "status": i.status,
                "date": i.created_at,
                "invoiceUrl": i.invoice_url,
                "description": i.description,
            })
        })
        .collect();
    Ok(Json(json!({ "invoices": invoices })))
}

fn bad_signature(e: SignatureError) -> ApiError {
    ApiError::Validation {
        message: format!("invalid Stripe signature: {e}"),
        details: json!({ "stripe-signature": e.to_string() }),
    }
}

/// `POST /api/webhooks/stripe` with `stripe-signature` → 200 `{received: true}` once the event
/// is recorded (its effects follow in a worker job); 400 for a missing, wrong or stale
/// signature or a body that is not a Stripe event. A redelivered event records nothing new.
#[utoipa::path(post, path = "/api/webhooks/stripe", tag = "billing", params(("stripe-signature" = String, Header, description = "t=<unix time>,v1=<HMAC-SHA256 hex>[,v1=...]")), request_body(content = String, description = "The Stripe event, as Stripe sent it", content_type = "application/json"), responses((status = 200, description = "{received: true}"), (status = 400, description = "Bad or stale signature, or not a Stripe event", body = ErrorBody), (status = 413, description = "Event too large", body = ErrorBody), (status = 503, description = "STRIPE_WEBHOOK_SECRET is not set", body = ErrorBody)))]
pub(crate) async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some(secret) = state.billing.webhook_secret.as_ref() else {
        return Err(ApiError::Unavailable {
            message: "the Stripe webhook is not configured: set STRIPE_WEBHOOK_SECRET".into(),
            details: json!({ "setting": "STRIPE_WEBHOOK_SECRET" }),
        });
    };
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("event too large".into())
        } else {
            ApiError::field("body", "unreadable request body")
        }
    })?;
    let header = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or(""));
    stripe_signature::verify(
        header,
        &body,
        secret.expose_secret().as_bytes(),
        Utc::now().timestamp(),
    )
    .map_err(bad_signature)?;

    let payload: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::field("body", "not a JSON Stripe event"))?;
    let mut problems = serde_json::Map::new();
    let text = |field: &str| {
        payload[field]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
            .map(str::to_owned)
    };
    let event_id = text("id");
    let event_type = text("type");
    let created = payload["created"]
        .as_i64()
        .and_then(|s| Utc.timestamp_opt(s, 0).single());
    if event_id.is_none() {
        problems.insert("id".into(), "must be the event's id".into());
    }
    if event_type.is_none() {
        problems.insert("type".into(), "must be the event's type".into());
    }
    if created.is_none() {
        problems.insert("created".into(), "must be a unix timestamp".into());
    }
    if !payload["data"]["object"].is_object() {
        problems.insert("data.object".into(), "must be an object".into());
    }
    let (Some(event_id), Some(event_type), Some(created), true) =
        (event_id, event_type, created, problems.is_empty())
    else {
        return Err(ApiError::invalid(problems));
    };

    let stream_id = StripeEvent::id_for(&event_id);
    let recorded = state
        .commands
        .execute_then::<StripeEvent, bool>(
            &stream_id,
            StripeEventCommand::Receive {
                event_id: event_id.clone(),
                event_type,
                created,
                payload,
                at: crate::auth::now(),
            },
            metadata(&headers, None),
            |s: &StripeEvent| s.processed,
        )
        .await;
    let processed = match recorded {
        Ok((_, processed)) => processed,
        Err(ExecuteError::Store(StoreError::PayloadTooLarge { .. })) => {
            return Err(ApiError::PayloadTooLarge("event too large".into()));
        }
        Err(e) => return Err(ApiError::Internal(anyhow::anyhow!("{e}"))),
    };
    // Queued again for a redelivery of an event still unprocessed: the first push may have
    // been lost with a crash, and processing twice changes nothing.
    if !processed {
        state
            .billing
            .queue
            .push(ProcessStripeEvent { event_id })
            .await
            .map_err(ApiError::Internal)?;
    }
    Ok(Json(json!({ "received": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

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
