//! A local server that speaks the Stripe API's wire format (form-encoded requests, JSON objects
//! and JSON errors) for what Confab calls: customers (replayed by `Idempotency-Key` as Stripe
//! does), checkout sessions and billing-portal sessions. Failures can be scripted per path and
//! every request is recorded. Also the signature Stripe puts on webhook deliveries.

use crate::stripe_fixtures;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The secret key the stand-in accepts unless told another.
pub const SECRET_KEY: &str = "sk_test_confab_4242";
/// The webhook signing secret the tests sign deliveries with.
pub const WEBHOOK_SECRET: &str = "whsec_test_confab";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The path, such as `/v1/customers`.
    pub path: String,
    /// The `Authorization` header (empty if none).
    pub authorization: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The form-encoded body, by field (`metadata[user_id]` and so on).
    pub form: HashMap<String, String>,
}

/// A scripted failure: status, Stripe error type, message.
type Failure = (u16, String, String);

struct Inner {
    secret_key: String,
    seen: Mutex<Vec<Request>>,
    failures: Mutex<HashMap<String, Failure>>,
    /// Customers by idempotency key, as Stripe replays them.
    replays: Mutex<HashMap<String, Value>>,
    counter: Mutex<u64>,
}

/// A running stand-in; clones share it. It stops with the Tokio runtime that started it.
#[derive(Clone)]
pub struct StripeStandIn {
    inner: Arc<Inner>,
    base_url: String,
}

impl StripeStandIn {
    /// Starts one on a free port of 127.0.0.1, accepting [`SECRET_KEY`].
    pub async fn start() -> StripeStandIn {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        StripeStandIn::start_on(addr, SECRET_KEY)
            .await
            .expect("a free port for the Stripe stand-in")
    }

    /// Starts one on `addr` (port 0: a free one), accepting `secret_key` as the bearer.
    pub async fn start_on(addr: SocketAddr, secret_key: &str) -> std::io::Result<StripeStandIn> {
        let inner = Arc::new(Inner {
            secret_key: secret_key.to_owned(),
            seen: Mutex::default(),
            failures: Mutex::default(),
            replays: Mutex::default(),
            counter: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/{*rest}", post(api))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(StripeStandIn { inner, base_url })
    }

    /// `http://<host>:<port>`, what `CONFAB_STRIPE_API_BASE` takes.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Answers requests to `path` with this error from now on.
    pub fn fail(&self, path: &str, status: u16, kind: &str, message: &str) {
        lock(&self.inner.failures).insert(
            path.to_owned(),
            (status, kind.to_owned(), message.to_owned()),
        );
    }

    /// Forgets every scripted failure.
    pub fn heal(&self) {
        lock(&self.inner.failures).clear();
    }

    /// The requests to `path` so far, oldest first.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        lock(&self.inner.seen)
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    /// How many requests it has received, to any path.
    pub fn request_count(&self) -> usize {
        lock(&self.inner.seen).len()
    }
}

/// A test that failed while holding a lock must not hide its failure behind a poisoned one.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": { "type": kind, "message": message } });
    (status, axum::Json(body)).into_response()
}

async fn api(
    State(stripe): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = uri.path().to_owned();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header("content-type").as_deref() != Some("application/x-www-form-urlencoded") {
        return error(
            400,
            "invalid_request_error",
            "Stripe takes form-encoded bodies",
        );
    }
    let Ok(form) = serde_urlencoded::from_str::<HashMap<String, String>>(&body) else {
        return error(400, "invalid_request_error", "the body is not a form");
    };
    let seen = Request {
        path: path.clone(),
        authorization: header("authorization").unwrap_or_default(),
        idempotency_key: header("idempotency-key"),
        form,
    };
    lock(&stripe.seen).push(seen.clone());
    if seen.authorization != format!("Bearer {}", stripe.secret_key) {
        return error(
            401,
            "invalid_request_error",
            "Invalid API Key provided: sk_test_****",
        );
    }
    let failure = lock(&stripe.failures).get(&path).cloned();
    if let Some((status, kind, message)) = failure {
        return error(status, &kind, &message);
    }
    match path.as_str() {
        "/v1/customers" => customer(&stripe, &seen),
        "/v1/checkout/sessions" => checkout_session(&stripe, &seen.form),
        "/v1/billing_portal/sessions" => portal_session(&stripe, &seen.form),
        other => error(
            404,
            "invalid_request_error",
            &format!("Unrecognized request URL (POST: {other})"),
        ),
    }
}

fn next_id(stripe: &Inner, prefix: &str) -> String {
    let mut n = lock(&stripe.counter);
    *n += 1;
    format!("{prefix}_test_{n}")
}

fn customer(stripe: &Inner, seen: &Request) -> Response {
    let mut replays = lock(&stripe.replays);
    if let Some(replay) = seen.idempotency_key.as_ref().and_then(|k| replays.get(k)) {
        return axum::Json(replay.clone()).into_response();
    }
    let form = &seen.form;
    let mut customer =
        stripe_fixtures::customer(&next_id(stripe, "cus"), chrono::Utc::now().timestamp());
    stripe_fixtures::merge(
        &mut customer,
        json!({
            "email": form.get("email"),
            "name": form.get("name"),
            "metadata": { "user_id": form.get("metadata[user_id]") },
        }),
    );
    if let Some(key) = &seen.idempotency_key {
        replays.insert(key.clone(), customer.clone());
    }
    axum::Json(customer).into_response()
}

fn checkout_session(stripe: &Inner, form: &HashMap<String, String>) -> Response {
    let id = next_id(stripe, "cs");
    let created = chrono::Utc::now().timestamp();
    let mode = form.get("mode").map_or("payment", String::as_str);
    // What Stripe answers a create: the whole session, open and unpaid until the buyer pays.
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_owned(), Value::from(v.as_str())))
        })
        .collect();
    let mut session = stripe_fixtures::checkout_session(&id, mode);
    stripe_fixtures::merge(
        &mut session,
        json!({
            "cancel_url": form.get("cancel_url"),
            "client_reference_id": form.get("client_reference_id"),
            "collected_information": null,
            "created": created,
            "customer": form.get("customer"),
            "customer_details": null,
            "expires_at": created + 86_400,
            "payment_intent": null,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": null,
            "success_url": form.get("success_url"),
            "url": format!("https://checkout.stripe.test/c/pay/{id}"),
        }),
    );
    session["metadata"] = Value::Object(metadata);
    axum::Json(session).into_response()
}

fn portal_session(stripe: &Inner, form: &HashMap<String, String>) -> Response {
    let id = next_id(stripe, "bps");
    axum::Json(json!({
        "id": id,
        "object": "billing_portal.session",
        "configuration": "bpc_test_1",
        "created": chrono::Utc::now().timestamp(),
        "customer": form.get("customer"),
        "livemode": false,
        "return_url": form.get("return_url"),
        "url": format!("https://billing.stripe.test/p/session/{id}"),
    }))
    .into_response()
}

/// The `v1` value of a webhook signature: HMAC-SHA256 of `"{t}.{body}"` with `secret`, in hex.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `Stripe-Signature` header Stripe would send with `body` now, signed with
/// [`WEBHOOK_SECRET`].
pub fn signature(body: &str) -> String {
    let t = chrono::Utc::now().timestamp();
    format!("t={t},v1={}", sign(WEBHOOK_SECRET, t, body))
}
