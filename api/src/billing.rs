//! Billing (seed 003): `POST /api/billing/checkout` and `POST /api/billing/portal` through
//! Stripe, `GET /api/billing/invoices` from the invoices read model, and the Stripe webhook
//! `POST /api/webhooks/stripe`, which verifies the signature on the raw body here, at the
//! edge, and hands the event to [`confab_application::billing::record_stripe_event`].

use crate::auth::{AuthUser, correlation_id};
use crate::error::ErrorBody;
use crate::extract::{ApiJson, ApiQuery};
use crate::resources::billing::{
    CheckoutBody, Invoice, InvoiceList, InvoicesQuery, Redirect, StripeEventBody, WebhookAck,
};
use crate::stripe_signature::{self, SignatureError};
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use confab_application::billing;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// `POST /api/billing/checkout {priceId, mode}` → `{url}`: a Stripe Checkout session for one
/// of the configured prices. The user's Stripe customer is created on first use.
#[utoipa::path(post, path = "/api/billing/checkout", tag = "billing", security(("bearer" = []), ("cookie" = [])), request_body = CheckoutBody,
    responses(
        (status = 200, description = "Where to send the user to pay", body = Redirect),
        (status = 502, description = "Stripe refused the request or could not be reached", body = ErrorBody),
        (status = 503, description = "STRIPE_SECRET_KEY is not set", body = ErrorBody),
    ))]
pub(crate) async fn checkout(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<Json<Redirect>, ApiError> {
    let url = billing::checkout(&state.app, &auth, &body.price_id, &body.mode).await?;
    Ok(Json(Redirect { url }))
}

/// `POST /api/billing/portal` → `{url}`: a Stripe Billing Portal session for the user's
/// customer (created on first use).
#[utoipa::path(post, path = "/api/billing/portal", tag = "billing", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The user's billing portal", body = Redirect),
        (status = 502, description = "Stripe refused the request or could not be reached", body = ErrorBody),
        (status = 503, description = "STRIPE_SECRET_KEY is not set", body = ErrorBody),
    ))]
pub(crate) async fn portal(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<Redirect>, ApiError> {
    let url = billing::portal(&state.app, &auth).await?;
    Ok(Json(Redirect { url }))
}

/// `GET /api/billing/invoices?customerId` → `{invoices}`, newest first: the caller's own;
/// another customer's id is 404.
#[utoipa::path(get, path = "/api/billing/invoices", tag = "billing", security(("bearer" = []), ("cookie" = [])),
    params(InvoicesQuery),
    responses(
        (status = 200, description = "The caller's invoices, newest first; amounts in the currency's smallest unit", body = InvoiceList),
        (status = 404, description = "Not the caller's customer", body = ErrorBody),
    ))]
pub(crate) async fn invoices(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<InvoicesQuery>,
) -> Result<Json<InvoiceList>, ApiError> {
    let rows = billing::invoices(&state.app, &auth, q.customer_id.as_deref()).await?;
    Ok(Json(InvoiceList {
        invoices: rows.into_iter().map(Invoice::from).collect(),
    }))
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
#[utoipa::path(post, path = "/api/webhooks/stripe", tag = "billing",
    params(("stripe-signature" = String, Header, description = "t=<unix time>,v1=<HMAC-SHA256 hex>[,v1=...]")),
    request_body(content = StripeEventBody, description = "The Stripe event, as Stripe sent it", content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded", body = WebhookAck),
        (status = 400, description = "Bad or stale signature, or not a Stripe event", body = ErrorBody),
        (status = 503, description = "STRIPE_WEBHOOK_SECRET is not set", body = ErrorBody),
    ))]
pub(crate) async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookAck>, ApiError> {
    let Some(secret) = state.stripe_webhook_secret.as_ref() else {
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
    billing::record_stripe_event(&state.app, correlation_id(&headers), payload).await?;
    Ok(Json(WebhookAck { received: true }))
}
