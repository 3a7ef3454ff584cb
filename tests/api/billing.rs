//! Stripe billing over HTTP, against the Stripe stand-in of `confab-testkit` (a local server
//! that speaks Stripe's wire format): checkout and the billing portal; the
//! webhook's signatures; redeliveries, concurrency and out-of-order events; subscriptions,
//! tiers and credits; invoices.
//!
//! Webhook effects are applied by a worker after the 200, so tests wait for the `stripe_events`
//! read model to show an event processed (the worker marks it so only once every effect is
//! readable) and for the job queue to drain; they never sleep to let work happen.

use crate::helpers::{
    Db, PATIENCE, Queue, TestApp, assert_error, database_for, error_message, on_both, parts, poll,
    spawn_app_with,
};
use confab_domain::billing::Price;
use confab_projections::ReadDb;
use confab_testkit::stripe::{SECRET_KEY, StripeStandIn, WEBHOOK_SECRET, sign, signature};
use confab_testkit::stripe_fixtures::{self as fx, event, merge};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

on_both!(
    signatures_are_verified_on_the_raw_body,
    a_redelivered_event_changes_nothing_even_twenty_at_once,
    events_out_of_order_end_in_the_same_state_as_in_order,
    a_cancelled_subscription_drops_the_tier_and_the_premium_models,
    checkout_and_portal_go_through_stripe,
    a_stripe_error_is_a_502_and_records_nothing,
    invoices_are_the_callers_own,
    a_top_up_grants_its_credits_once_paid,
    unknown_event_types_are_acknowledged_and_recorded,
    an_event_acted_on_that_cannot_be_read_is_ignored_for_good,
    an_event_recorded_but_never_queued_is_applied_at_start_up,
);

const PRO: &str = "price_pro_monthly";
pub(crate) const TOPUP: &str = "price_topup_5000";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---------------------------------------------------------------------------------------------
// The app, its read models, the webhook.

pub(crate) struct Billing {
    pub(crate) app: TestApp,
    db: ReadDb,
    stripe: StripeStandIn,
}

async fn billing_app(db: Db) -> Billing {
    billing_app_with(db, |_| {}).await
}

pub(crate) async fn billing_app_with(db: Db, tweak: impl FnOnce(&mut confab::Config)) -> Billing {
    let stripe = StripeStandIn::start().await;
    let app = spawn_app_with(db, |c| {
        tweak(c);
        c.stripe_secret_key = Some(SECRET_KEY.to_owned().into());
        c.stripe_webhook_secret = Some(WEBHOOK_SECRET.to_owned().into());
        c.stripe_api_base = stripe.base_url().to_owned();
        c.billing.prices = vec![
            Price {
                id: PRO.into(),
                tier: Some("pro".into()),
                credits: None,
            },
            Price {
                id: TOPUP.into(),
                tier: None,
                credits: Some(5_000),
            },
        ];
    })
    .await;
    let db = app.read_db().await;
    Billing { app, db, stripe }
}

impl Billing {
    /// Posts `body` to the webhook with `signature` (none: no header) → (status, body).
    async fn deliver_raw(&self, body: &str, signature: Option<String>) -> (u16, Value) {
        let mut r = self
            .app
            .request(Method::POST, "/api/webhooks/stripe", None)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(s) = signature {
            r = r.header("stripe-signature", s);
        }
        parts(r.send().await.expect("webhook")).await
    }

    /// Delivers `event`, validly signed; expects 200 `{received: true}`.
    async fn deliver(&self, event: &Value) {
        let body = event.to_string();
        let (s, b) = self.deliver_raw(&body, Some(signature(&body))).await;
        assert_eq!((s, &b), (200, &json!({ "received": true })), "{event}");
    }

    /// Delivers `event` and waits until its effects are readable.
    pub(crate) async fn apply(&self, event: &Value) {
        self.deliver(event).await;
        self.processed(event["id"].as_str().unwrap()).await;
    }

    /// Waits until the read model shows `event_id` processed; returns the outcome.
    async fn processed(&self, event_id: &str) -> String {
        let outcome = || async {
            let row = confab_projections::billing::stripe_event(&self.db, event_id)
                .await
                .expect("read");
            row.filter(|r| r.processed_at.is_some())
                .map(|r| r.outcome.unwrap_or_default())
        };
        let every = Duration::from_millis(20);
        let outcome = poll(PATIENCE, every, outcome, Option::is_some).await;
        outcome.unwrap_or_else(|| panic!("stripe event {event_id} was not processed"))
    }

    /// Waits until no Stripe job is left in the queue.
    pub(crate) async fn drained(&self) {
        self.app.drained(Queue::Stripe).await;
    }

    /// Waits for the Stripe queue to drain, then stops the app.
    pub(crate) async fn finish(self) {
        self.drained().await;
        self.app.shutdown().await;
    }

    /// Signs `email` up and starts a checkout for the subscription so that their Stripe
    /// customer exists.
    pub(crate) async fn customer(&self, email: &str) -> Buyer {
        let (token, user) = self.app.sign_up(email).await;
        let (s, b) = post_checkout(&self.app, Some(&token), &pro_monthly()).await;
        assert_eq!(s, 200, "{b}");
        let user_id = user["id"].as_str().unwrap().to_owned();
        let customer = confab_projections::billing::customer_of(
            &self.db,
            uuid::Uuid::parse_str(&user_id).unwrap(),
        )
        .await
        .unwrap()
        .expect("the customer is recorded before checkout answers");
        Buyer {
            token,
            user: user_id,
            customer,
        }
    }

    async fn me(&self, token: &str) -> Value {
        self.app.me(token).await
    }

    async fn history(&self, token: &str) -> Vec<(String, i64, i64)> {
        let h = self.app.credit_history(token, "?limit=100").await;
        let mut rows: Vec<(String, i64, i64)> = h["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["type"].as_str().unwrap().to_owned(),
                    t["amount"].as_i64().unwrap(),
                    t["balanceAfter"].as_i64().unwrap(),
                )
            })
            .collect();
        rows.reverse(); // oldest first
        rows
    }

    async fn invoices(&self, token: &str) -> Vec<Value> {
        let (s, b) = self.app.get("/api/billing/invoices", Some(token)).await;
        assert_eq!(s, 200, "{b}");
        b["invoices"].as_array().unwrap().clone()
    }

    /// The head of the event log, from /readyz.
    async fn head(&self) -> u64 {
        let (_, r) = self.app.get("/readyz", None).await;
        r["projections"][0]["head"].as_u64().expect("head")
    }
}

/// `POST /api/billing/checkout` with `body`, as `token` if given.
async fn post_checkout(app: &TestApp, token: Option<&str>, body: &Value) -> (u16, Value) {
    app.post("/api/billing/checkout", token, body).await
}

/// The checkout body for the Pro subscription.
fn pro_monthly() -> Value {
    json!({ "priceId": PRO, "mode": "subscription" })
}

/// `POST /api/billing/portal`, as `token` if given.
async fn open_portal(app: &TestApp, token: Option<&str>) -> (u16, Value) {
    app.post("/api/billing/portal", token, &json!({})).await
}

// ---------------------------------------------------------------------------------------------
// Stripe events, in Stripe's shapes: the complete objects of `confab_testkit::stripe_fixtures`
// with this test's ids.

/// Where an invoice names its subscription.
#[derive(Clone, Copy)]
enum Shape {
    /// Under `parent.subscription_details`, as Stripe renders it since 2025-03-31.basil.
    Parent,
    /// At the top (`invoice.subscription`, a field async-stripe's Invoice still has), without a
    /// parent.
    TopLevel,
}

/// An `invoice.{kind}` event (`paid` or `payment_failed`, which leaves the invoice open).
fn invoice_event(
    id: &str,
    kind: &str,
    created: i64,
    invoice: &str,
    customer: &str,
    subscription: &str,
    shape: Shape,
) -> Value {
    let mut object = fx::invoice(invoice, customer, subscription, PRO, created - 5);
    merge(
        &mut object,
        json!({ "billing_reason": "subscription_cycle" }),
    );
    if kind != "paid" {
        object = fx::unpaid(object);
    }
    if let Shape::TopLevel = shape {
        merge(
            &mut object,
            json!({ "parent": null, "subscription": subscription }),
        );
    }
    fx::event(id, &format!("invoice.{kind}"), created, object)
}

/// A signed-up user with a Stripe customer, and the events Stripe sends about them.
pub(crate) struct Buyer {
    pub(crate) token: String,
    pub(crate) user: String,
    customer: String,
}

impl Buyer {
    /// `checkout.session.completed`, paid: a subscription if `subscription` is given, else a
    /// one-time payment.
    pub(crate) fn checkout_completed(
        &self,
        id: &str,
        created: i64,
        session: &str,
        price: &str,
        subscription: Option<&str>,
    ) -> Value {
        let mode = if subscription.is_some() {
            "subscription"
        } else {
            "payment"
        };
        let mut object = fx::checkout_session(session, mode);
        merge(
            &mut object,
            json!({
                "created": created - 60,
                "expires_at": created - 60 + 86_400,
                "customer": self.customer,
                "subscription": subscription,
                "client_reference_id": self.user,
                "metadata": { "user_id": self.user, "price_id": price },
            }),
        );
        fx::event(id, "checkout.session.completed", created, object)
    }

    /// An `invoice.{kind}` event about their subscription.
    fn invoice(
        &self,
        id: &str,
        kind: &str,
        created: i64,
        invoice: &str,
        subscription: &str,
        shape: Shape,
    ) -> Value {
        invoice_event(
            id,
            kind,
            created,
            invoice,
            &self.customer,
            subscription,
            shape,
        )
    }

    /// A `customer.subscription.{kind}` event (`updated`: active; `deleted`: canceled).
    fn subscription(
        &self,
        id: &str,
        kind: &str,
        created: i64,
        subscription: &str,
        cancel_at_period_end: bool,
    ) -> Value {
        let mut object = fx::subscription(subscription, &self.customer, PRO, created);
        let period_end = object["items"]["data"][0]["current_period_end"].clone();
        merge(
            &mut object,
            json!({
                "status": "active",
                "cancel_at_period_end": cancel_at_period_end,
                "cancel_at": if cancel_at_period_end { period_end } else { Value::Null },
            }),
        );
        if kind == "deleted" {
            merge(
                &mut object,
                json!({
                    "status": "canceled",
                    "canceled_at": created,
                    "ended_at": created,
                    "cancellation_details": { "reason": "cancellation_requested" },
                }),
            );
        }
        fx::event(
            id,
            &format!("customer.subscription.{kind}"),
            created,
            object,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

async fn signatures_are_verified_on_the_raw_body(db: Db) {
    let b = billing_app(db).await;
    let ev = event("evt_sig", "ping.test", now(), json!({ "id": "x" }));
    let body = ev.to_string();
    let t = now();
    let refused = |(s, v): (u16, Value)| {
        assert_eq!(s, 400, "{v}");
        assert_error(&v, "validation_error");
        assert!(error_message(&v).contains("signature"), "{v}");
    };
    // Missing header.
    refused(b.deliver_raw(&body, None).await);
    // Signed with another secret.
    let wrong = format!("t={t},v1={}", sign("whsec_someone_else", t, &body));
    refused(b.deliver_raw(&body, Some(wrong)).await);
    // A good signature of an old timestamp.
    let old = t - 301;
    let stale = format!("t={old},v1={}", sign(WEBHOOK_SECRET, old, &body));
    refused(b.deliver_raw(&body, Some(stale)).await);
    // The body changed after signing.
    let tampered = body.replace("ping.test", "invoice.paid");
    refused(b.deliver_raw(&tampered, Some(signature(&body))).await);
    // Nothing refused was recorded.
    assert!(
        confab_projections::billing::stripe_event(&b.db, "evt_sig")
            .await
            .unwrap()
            .is_none()
    );
    // Several v1 values (a secret being rolled), one of them right.
    let several = format!(
        "t={t},v1={},v1={}",
        sign("whsec_old", t, &body),
        sign(WEBHOOK_SECRET, t, &body)
    );
    let (s, v) = b.deliver_raw(&body, Some(several)).await;
    assert_eq!((s, v), (200, json!({ "received": true })));
    b.processed("evt_sig").await;
    // Signed but not a Stripe event.
    let junk = r#"{"hello":"world"}"#;
    let (s, v) = b.deliver_raw(junk, Some(signature(junk))).await;
    assert_eq!(s, 400, "{v}");
    assert_error(&v, "validation_error");
    b.finish().await;
}

async fn a_redelivered_event_changes_nothing_even_twenty_at_once(db: Db) {
    let b = Arc::new(billing_app(db).await);
    let buyer = b.customer("again@example.com").await;
    let token = buyer.token.as_str();
    let t = now();
    // A top-up delivered twice, one after the other.
    let topup = buyer.checkout_completed("evt_topup_1", t, "cs_topup_1", TOPUP, None);
    b.apply(&topup).await;
    b.apply(&topup).await;
    assert_eq!(b.me(token).await["credits"], 1_000 + 5_000);
    // A renewal delivered 20 times at once.
    let paid = buyer.invoice("evt_paid_1", "paid", t + 1, "in_1", "sub_1", Shape::Parent);
    let mut deliveries = Vec::new();
    for _ in 0..20 {
        let (b, paid) = (b.clone(), paid.clone());
        deliveries.push(tokio::spawn(async move { b.deliver(&paid).await }));
    }
    for d in deliveries {
        d.await.expect("delivery");
    }
    b.processed("evt_paid_1").await;
    b.drained().await;
    assert_eq!(b.me(token).await["credits"], 1_000 + 5_000 + 20_000);
    assert_eq!(
        b.history(token).await,
        vec![
            ("grant".to_owned(), 1_000, 1_000),
            ("topup".to_owned(), 5_000, 6_000),
            ("subscription".to_owned(), 20_000, 26_000),
        ]
    );
    assert_eq!(b.invoices(token).await.len(), 1);
    // Delivered again once everything is done: still nothing new.
    b.apply(&paid).await;
    b.drained().await;
    assert_eq!(b.me(token).await["credits"], 26_000);
    let b = Arc::try_unwrap(b).ok().expect("sole owner");
    b.app.shutdown().await;
}

/// What a user's billing looks like from the API, for comparing two users.
async fn billing_state(b: &Billing, token: &str) -> Value {
    let me = b.me(token).await;
    let (_, settings) = b.app.get("/api/settings", Some(token)).await;
    let invoices: Vec<Value> = b
        .invoices(token)
        .await
        .into_iter()
        .map(|i| json!([i["amount"], i["status"], i["currency"]]))
        .collect();
    json!({
        "tier": me["tier"],
        "credits": me["credits"],
        "isPremium": settings["settings"]["isPremium"],
        "history": b.history(token).await,
        "invoices": invoices,
    })
}

async fn events_out_of_order_end_in_the_same_state_as_in_order(db: Db) {
    let b = billing_app(db).await;
    let t = now();
    let a = b.customer("inorder@example.com").await;
    let z = b.customer("outoforder@example.com").await;
    // Stripe's order: the checkout completes, then the first invoice is paid.
    b.apply(&a.checkout_completed("evt_a1", t, "cs_a", PRO, Some("sub_a")))
        .await;
    b.apply(&a.invoice("evt_a2", "paid", t + 1, "in_a", "sub_a", Shape::TopLevel))
        .await;
    // The same two events delivered the other way round.
    b.apply(&z.invoice("evt_z2", "paid", t + 1, "in_z", "sub_z", Shape::TopLevel))
        .await;
    b.apply(&z.checkout_completed("evt_z1", t, "cs_z", PRO, Some("sub_z")))
        .await;
    let in_order = billing_state(&b, &a.token).await;
    let out_of_order = billing_state(&b, &z.token).await;
    assert_eq!(in_order, out_of_order);
    assert_eq!(in_order["tier"], "pro");
    assert_eq!(in_order["isPremium"], true);
    assert_eq!(in_order["credits"], 21_000);
    // A failed payment reported late (its event is older than the paid one) does not reopen
    // the invoice.
    b.apply(&a.invoice(
        "evt_a0",
        "payment_failed",
        t,
        "in_a",
        "sub_a",
        Shape::TopLevel,
    ))
    .await;
    assert_eq!(b.invoices(&a.token).await[0]["status"], "paid");
    b.finish().await;
}

async fn a_cancelled_subscription_drops_the_tier_and_the_premium_models(db: Db) {
    let b = billing_app(db).await;
    let t = now();
    let buyer = b.customer("cancel@example.com").await;
    let (token, user) = (buyer.token.as_str(), buyer.user.as_str());
    let premium = json!({ "messages": [{ "role": "user", "content": "hi" }], "modelId": "gpt-4o" });
    // Free: the premium model is refused for the tier.
    let (s, body) = b.app.post("/api/chat", Some(token), &premium).await;
    assert_eq!(s, 403, "{body}");
    assert_error(&body, "forbidden");

    b.apply(&buyer.checkout_completed("evt_c1", t, "cs_c", PRO, Some("sub_c")))
        .await;
    b.apply(&buyer.invoice("evt_c2", "paid", t + 1, "in_c1", "sub_c", Shape::Parent))
        .await;
    assert_eq!(b.me(token).await["tier"], "pro");
    let (_, settings) = b.app.get("/api/settings", Some(token)).await;
    assert_eq!(settings["settings"]["isPremium"], true);
    // Pro: the tier check passes (no provider is configured here, hence 503, not 403).
    let (s, body) = b.app.post("/api/chat", Some(token), &premium).await;
    assert_eq!(s, 503, "{body}");
    let (_, models) = b.app.get("/api/models", Some(token)).await;
    assert_eq!(models["models"].as_array().unwrap().len(), 5);

    // A month later: renewed.
    b.apply(&buyer.invoice("evt_c3", "paid", t + 30, "in_c2", "sub_c", Shape::Parent))
        .await;
    // The user cancels in the portal: the subscription runs to the end of the period.
    b.apply(&buyer.subscription("evt_c4", "updated", t + 40, "sub_c", true))
        .await;
    assert_eq!(b.me(token).await["tier"], "pro", "still paid for");
    let subs =
        confab_projections::billing::subscriptions(&b.db, uuid::Uuid::parse_str(user).unwrap())
            .await
            .unwrap();
    assert!(subs[0].cancel_at_period_end && subs[0].current_period_end.is_some());
    // At the period's end Stripe deletes it.
    b.apply(&buyer.subscription("evt_c5", "deleted", t + 60, "sub_c", true))
        .await;
    // A stale update arriving after the deletion does not bring the tier back.
    b.apply(&buyer.subscription("evt_c6", "updated", t + 50, "sub_c", false))
        .await;
    assert_eq!(b.me(token).await["tier"], "free");
    let (_, settings) = b.app.get("/api/settings", Some(token)).await;
    assert_eq!(settings["settings"]["isPremium"], false);
    let (s, body) = b.app.post("/api/chat", Some(token), &premium).await;
    assert_eq!(s, 403, "{body}");
    assert_error(&body, "forbidden");
    let (_, models) = b.app.get("/api/models", Some(token)).await;
    assert_eq!(models["models"].as_array().unwrap().len(), 1);
    // Each step is in the credit history: the opening, the first period, the renewal; the
    // credits bought stay after the downgrade.
    assert_eq!(
        b.history(token).await,
        vec![
            ("grant".to_owned(), 1_000, 1_000),
            ("subscription".to_owned(), 20_000, 21_000),
            ("subscription".to_owned(), 20_000, 41_000),
        ]
    );
    assert_eq!(b.me(token).await["credits"], 41_000);
    let subs =
        confab_projections::billing::subscriptions(&b.db, uuid::Uuid::parse_str(user).unwrap())
            .await
            .unwrap();
    assert_eq!(subs[0].status, "canceled");
    b.finish().await;
}

async fn checkout_and_portal_go_through_stripe(db: Db) {
    let b = billing_app(db).await;
    let (token, user) = b.app.sign_up("buyer@example.com").await;
    let user = user["id"].as_str().unwrap().to_owned();
    let (s, v) = post_checkout(&b.app, Some(&token), &pro_monthly()).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.test/c/pay/cs_test_"),
        "{v}"
    );
    let customers = b.stripe.requests("/v1/customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].authorization, format!("Bearer {SECRET_KEY}"));
    assert!(customers[0].idempotency_key.is_some());
    assert_eq!(customers[0].form["email"], "buyer@example.com");
    assert_eq!(customers[0].form["metadata[user_id]"], user);
    let sessions = b.stripe.requests("/v1/checkout/sessions");
    let f = &sessions[0].form;
    assert_eq!(f["mode"], "subscription");
    assert_eq!(f["customer"], "cus_test_1");
    assert_eq!(f["client_reference_id"], user);
    assert_eq!(f["line_items[0][price]"], PRO);
    assert_eq!(f["line_items[0][quantity]"], "1");
    assert_eq!(f["metadata[price_id]"], PRO);
    assert_eq!(f["subscription_data[metadata][user_id]"], user);
    assert!(f.contains_key("success_url") && f.contains_key("cancel_url"));

    // A top-up, then the portal: the same customer every time.
    let (s, v) = post_checkout(
        &b.app,
        Some(&token),
        &json!({ "priceId": TOPUP, "mode": "one-time" }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let sessions = b.stripe.requests("/v1/checkout/sessions");
    assert_eq!(sessions[1].form["mode"], "payment");
    assert_eq!(sessions[1].form["customer"], "cus_test_1");
    assert!(
        !sessions[1]
            .form
            .contains_key("subscription_data[metadata][user_id]")
    );
    let (s, v) = open_portal(&b.app, Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("https://billing.stripe.test/p/session/")
    );
    let portal = b.stripe.requests("/v1/billing_portal/sessions");
    assert_eq!(portal[0].form["customer"], "cus_test_1");
    assert!(portal[0].form.contains_key("return_url"));
    assert_eq!(b.stripe.requests("/v1/customers").len(), 1, "one customer");

    // Concurrent first uses by another user still make one customer.
    let (other, _) = b.app.sign_up("racer@example.com").await;
    let calls: Vec<_> = (0..5)
        .map(|_| {
            b.app
                .request(Method::POST, "/api/billing/portal", Some(&other))
                .json(&json!({}))
                .send()
        })
        .collect();
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.expect("portal").status(), 200);
    }
    let portal = b.stripe.requests("/v1/billing_portal/sessions");
    let racer: std::collections::HashSet<&String> =
        portal[1..].iter().map(|p| &p.form["customer"]).collect();
    assert_eq!(racer.len(), 1, "{racer:?}");

    // What is refused before Stripe is asked.
    let before = b.stripe.request_count();
    for (body, field) in [
        (
            json!({ "priceId": "price_unknown", "mode": "subscription" }),
            "priceId",
        ),
        (json!({ "priceId": PRO, "mode": "one-time" }), "mode"),
        (json!({ "priceId": TOPUP, "mode": "subscription" }), "mode"),
        (json!({ "priceId": PRO, "mode": "weekly" }), "mode"),
    ] {
        let (s, v) = post_checkout(&b.app, Some(&token), &body).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_error(&v, "validation_error");
        assert!(v["error"]["details"][field].is_string(), "{v}");
    }
    let (s, v) = post_checkout(&b.app, Some(&token), &json!({ "mode": "subscription" })).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = post_checkout(&b.app, None, &pro_monthly()).await;
    assert_eq!(s, 401);
    let (s, _) = open_portal(&b.app, None).await;
    assert_eq!(s, 401);
    let (s, _) = b.app.get("/api/billing/invoices", None).await;
    assert_eq!(s, 401);
    assert_eq!(b.stripe.request_count(), before);
    b.app.shutdown().await;
}

async fn a_stripe_error_is_a_502_and_records_nothing(db: Db) {
    let b = billing_app(db).await;
    let (token, user) = b.app.sign_up("declined@example.com").await;
    let user = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let pro = pro_monthly();
    // Stripe refuses to create the customer.
    b.stripe.fail(
        "/v1/customers",
        400,
        "invalid_request_error",
        "Invalid email address: declined@example.com",
    );
    let head = b.head().await;
    let (s, v) = post_checkout(&b.app, Some(&token), &pro).await;
    assert_eq!(s, 502, "{v}");
    assert_error(&v, "bad_gateway");
    assert!(error_message(&v).contains("Invalid email address"), "{v}");
    assert_eq!(v["error"]["details"]["status"], 400);
    assert_eq!(v["error"]["details"]["type"], "invalid_request_error");
    assert_eq!(b.head().await, head, "nothing recorded");
    assert!(
        confab_projections::billing::customer_of(&b.db, user)
            .await
            .unwrap()
            .is_none()
    );
    // Stripe is down while the portal is asked for.
    b.stripe.fail(
        "/v1/customers",
        500,
        "api_error",
        "Something went wrong on Stripe's end.",
    );
    let (s, v) = open_portal(&b.app, Some(&token)).await;
    assert_eq!(s, 502, "{v}");
    assert_error(&v, "bad_gateway");
    assert_eq!(b.head().await, head, "nothing recorded");
    // The customer exists; Stripe refuses the session.
    b.stripe.heal();
    let (s, _) = open_portal(&b.app, Some(&token)).await;
    assert_eq!(s, 200);
    let head = b.head().await;
    b.stripe.fail(
        "/v1/checkout/sessions",
        400,
        "invalid_request_error",
        "No such price: 'price_pro_monthly'",
    );
    let (s, v) = post_checkout(&b.app, Some(&token), &pro).await;
    assert_eq!(s, 502, "{v}");
    assert!(error_message(&v).contains("No such price"), "{v}");
    assert_eq!(b.head().await, head, "nothing recorded");
    // Keys Stripe echoes are never passed on.
    b.stripe.fail(
        "/v1/checkout/sessions",
        401,
        "invalid_request_error",
        "Invalid API Key provided: sk_test_confab_4242",
    );
    let (s, v) = post_checkout(&b.app, Some(&token), &pro).await;
    assert_eq!(s, 502);
    assert!(!v.to_string().contains("sk_test"), "{v}");
    b.app.shutdown().await;
}

async fn invoices_are_the_callers_own(db: Db) {
    let b = billing_app(db).await;
    let t = now();
    let buyer = b.customer("invoiced@example.com").await;
    let nosy = b.customer("nosy@example.com").await;
    let (token, customer) = (buyer.token.as_str(), buyer.customer.as_str());
    let (other, other_customer) = (nosy.token.as_str(), nosy.customer.as_str());
    b.apply(&buyer.invoice(
        "evt_i1",
        "payment_failed",
        t,
        "in_i1",
        "sub_i",
        Shape::Parent,
    ))
    .await;
    b.apply(&buyer.invoice("evt_i2", "paid", t + 10, "in_i2", "sub_i", Shape::TopLevel))
        .await;
    let mine = b.invoices(token).await;
    assert_eq!(mine.len(), 2, "{mine:?}");
    let by_id = |id: &str| mine.iter().find(|i| i["id"] == id).unwrap().clone();
    let failed = by_id("in_i1");
    assert_eq!(failed["status"], "open");
    assert_eq!(failed["amount"], 900);
    assert_eq!(failed["currency"], "usd");
    assert_eq!(
        failed["invoiceUrl"],
        "https://invoice.stripe.com/i/acct_1ConfabFixture/test_in_i1"
    );
    assert_eq!(failed["description"], "1 × Confab Pro (at $9.00 / month)");
    assert!(failed["date"].as_str().unwrap().ends_with('Z'));
    assert_eq!(by_id("in_i2")["status"], "paid");
    // A failed payment grants nothing; the paid one grants the period.
    assert_eq!(b.me(token).await["credits"], 21_000);
    // Filtering by one's own customer works; another user's is a 404.
    let (s, v) = b
        .app
        .get(
            &format!("/api/billing/invoices?customerId={customer}"),
            Some(token),
        )
        .await;
    assert_eq!((s, v["invoices"].as_array().unwrap().len()), (200, 2));
    let (s, v) = b
        .app
        .get(
            &format!("/api/billing/invoices?customerId={customer}"),
            Some(other),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert_error(&v, "not_found");
    let (s, v) = b
        .app
        .get("/api/billing/invoices?customerId=cus_nobody", Some(token))
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(b.invoices(other).await.is_empty());
    let (s, _) = b
        .app
        .get(
            &format!("/api/billing/invoices?customerId={other_customer}"),
            Some(other),
        )
        .await;
    assert_eq!(s, 200);
    b.finish().await;
}

async fn a_top_up_grants_its_credits_once_paid(db: Db) {
    let b = billing_app(db).await;
    let t = now();
    let buyer = b.customer("topup@example.com").await;
    let token = buyer.token.as_str();
    // An asynchronous payment method: completed, not yet paid.
    let mut pending = buyer.checkout_completed("evt_t1", t, "cs_t", TOPUP, None);
    pending["data"]["object"]["payment_status"] = json!("unpaid");
    let outcome = {
        b.deliver(&pending).await;
        b.processed("evt_t1").await
    };
    assert!(outcome.contains("awaits"), "{outcome}");
    assert_eq!(b.me(token).await["credits"], 1_000);
    let mut succeeded = pending.clone();
    succeeded["id"] = json!("evt_t2");
    succeeded["type"] = json!("checkout.session.async_payment_succeeded");
    succeeded["data"]["object"]["payment_status"] = json!("paid");
    b.apply(&succeeded).await;
    // The same session reported completed-and-paid as well: granted once.
    b.apply(&buyer.checkout_completed("evt_t3", t + 1, "cs_t", TOPUP, None))
        .await;
    assert_eq!(b.me(token).await["credits"], 6_000);
    assert_eq!(
        b.me(token).await["tier"],
        "free",
        "a top-up is no subscription"
    );
    let (s, h) = b
        .app
        .get("/api/billing/credit-history?type=topup", Some(token))
        .await;
    assert_eq!(s, 200);
    assert_eq!(h["total"], 1);
    assert_eq!(h["transactions"][0]["reference"]["payment"], "cs_t");
    b.finish().await;
}

async fn unknown_event_types_are_acknowledged_and_recorded(db: Db) {
    let b = billing_app(db).await;
    let outcome = {
        let ev = event(
            "evt_u1",
            "customer.tax_id.created",
            now(),
            json!({ "id": "txi_1" }),
        );
        b.apply(&ev).await;
        b.processed("evt_u1").await
    };
    assert!(outcome.contains("not acted on"), "{outcome}");
    // Events about customers Confab never made are recorded and change nothing.
    let stray = invoice_event(
        "evt_u2",
        "paid",
        now(),
        "in_stray",
        "cus_elsewhere",
        "sub_x",
        Shape::Parent,
    );
    b.apply(&stray).await;
    assert!(b.processed("evt_u2").await.contains("no Confab user"));
    b.finish().await;
}

async fn an_event_acted_on_that_cannot_be_read_is_ignored_for_good(db: Db) {
    let b = billing_app(db).await;
    let t = now();
    let buyer = b.customer("unreadable@example.com").await;
    let token = buyer.token.as_str();
    // An invoice rendered at an API version before 2025-03-31.basil: correctly signed, so
    // accepted and recorded as received, but its lines lack what async-stripe's Invoice requires.
    let object = fx::invoice_before_basil("in_old", &buyer.customer, "sub_old", PRO, t - 5);
    let mut old = event("evt_old", "invoice.paid", t, object);
    old["api_version"] = json!("2024-06-20");
    b.deliver(&old).await;
    let ignored = b.processed("evt_old").await;
    assert!(
        ignored.starts_with("ignored: the invoice.paid event could not be read: "),
        "{ignored}"
    );
    assert!(
        ignored.contains("lines.data[0]") && ignored.contains("subtotal"),
        "{ignored}"
    );
    // A checkout session short of what Stripe sends.
    let bare = event(
        "evt_bare",
        "checkout.session.completed",
        t,
        json!({
            "id": "cs_bare",
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": "paid",
            "customer": buyer.customer,
            "metadata": { "user_id": buyer.user, "price_id": TOPUP },
        }),
    );
    b.deliver(&bare).await;
    let outcome = b.processed("evt_bare").await;
    assert!(
        outcome.starts_with(
            "ignored: the checkout.session.completed event could not be read: data.object"
        ),
        "{outcome}"
    );
    // Neither is tried again nor changed anything; a redelivery is acknowledged and changes
    // nothing either.
    b.drained().await;
    b.deliver(&old).await;
    b.drained().await;
    assert_eq!(b.processed("evt_old").await, ignored);
    assert_eq!(b.me(token).await["credits"], 1_000);
    assert_eq!(b.me(token).await["tier"], "free");
    assert!(b.invoices(token).await.is_empty());
    b.finish().await;
}

async fn an_event_recorded_but_never_queued_is_applied_at_start_up(db: Db) {
    // A process recorded the event and died before queuing its job (or its queue file is
    // gone): the event is in the log, unprocessed, and no job exists for it.
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let database_url = database_for(db).await;
    let config = confab::Config {
        data_dir: data_dir.clone(),
        database_url: database_url.clone().map(Into::into),
        auto_migrate: true,
        // Every process on PostgreSQL shares the master key (it wraps the data keys too).
        encryption_key: Some(crate::helpers::TEST_ENCRYPTION_KEY.to_owned().into()),
        ..confab::Config::default()
    };
    std::fs::create_dir_all(&data_dir).unwrap();
    let backend = confab::backend::Backend::open(&config, confab::backend::Migrations::Apply)
        .await
        .expect("backend");
    let lost = event(
        "evt_lost",
        "customer.updated",
        now(),
        json!({ "id": "cus_x" }),
    );
    confab_eventstore::aggregate::execute::<confab_domain::billing::StripeEvent>(
        backend.store.as_ref(),
        &confab_domain::billing::StripeEvent::id_for("evt_lost"),
        confab_domain::billing::StripeEventCommand::Receive {
            event_id: "evt_lost".into(),
            event_type: "customer.updated".into(),
            created: chrono::Utc::now(),
            payload: lost,
            user_id: None,
            at: chrono::Utc::now(),
        },
        Default::default(),
    )
    .await
    .expect("recorded");
    drop(backend);
    // The next start queues it again.
    let b = billing_app_with(db, |c| {
        c.data_dir = data_dir;
        c.database_url = database_url.map(Into::into);
    })
    .await;
    assert!(b.processed("evt_lost").await.contains("not acted on"));
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stripe_settings_the_routes_say_what_to_set() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let (token, _) = app.sign_up("unset@example.com").await;
    let (s, v) = post_checkout(
        &app,
        Some(&token),
        &json!({ "priceId": "price_x", "mode": "subscription" }),
    )
    .await;
    assert_eq!(s, 400, "no prices configured: {v}");
    let (s, v) = open_portal(&app, Some(&token)).await;
    assert_eq!(s, 503, "{v}");
    assert_error(&v, "unavailable");
    assert!(error_message(&v).contains("STRIPE_SECRET_KEY"));
    let body = event("evt_1", "invoice.paid", now(), json!({})).to_string();
    let r = app
        .request(Method::POST, "/api/webhooks/stripe", None)
        .header("stripe-signature", signature(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    let (s, v) = parts(r).await;
    assert_eq!(s, 503, "{v}");
    assert!(error_message(&v).contains("STRIPE_WEBHOOK_SECRET"));
    let (s, v) = app.get("/api/billing/invoices", Some(&token)).await;
    assert_eq!((s, v), (200, json!({ "invoices": [] })));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_the_billing_routes() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let (s, doc) = app.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    for path in [
        "/api/billing/checkout",
        "/api/billing/portal",
        "/api/billing/invoices",
        "/api/webhooks/stripe",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    app.shutdown().await;
}
