//! Stripe's objects and events as Stripe sends them, for tests: complete checkout sessions,
//! invoices, subscriptions and prices with every field Stripe renders (the Stripe job parses them
//! into async-stripe's typed objects, which require many of those fields), and the event envelope
//! around them. Each constructor takes the ids a test cares about and fills in the rest; a test
//! changes anything else with [`merge`].
//!
//! The objects are written for this crate (see `fixtures/stripe/`) after Stripe's API reference,
//! in the layout of [`API_VERSION`]: since 2025-03-31.basil an invoice names its subscription under
//! `parent.subscription_details` and a line's price under `pricing.price_details`, and a
//! subscription's period is on its items. [`invoice_before_basil`] is the layout before that.

use serde_json::{Value, json};

/// The API version the fixtures are rendered at: the one async-stripe 1.0.0-rc.10, which Confab
/// parses events with, targets.
pub const API_VERSION: &str = "2026-09-30.endive";

const CHECKOUT_SESSION: &str = include_str!("../fixtures/stripe/checkout_session.json");
const INVOICE: &str = include_str!("../fixtures/stripe/invoice.json");
const SUBSCRIPTION: &str = include_str!("../fixtures/stripe/subscription.json");
const PRICE: &str = include_str!("../fixtures/stripe/price.json");
const PLAN: &str = include_str!("../fixtures/stripe/plan.json");
const CUSTOMER: &str = include_str!("../fixtures/stripe/customer.json");

fn load(text: &str) -> Value {
    serde_json::from_str(text).expect("a Stripe fixture is JSON")
}

/// `patch` merged into `target`: objects key by key, recursively; anything else (arrays
/// included) replaces what was there. `null` sets a field to `null`, as Stripe renders an
/// absent value.
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (t, p) => *t = p,
    }
}

/// The event `id` of type `event_type`, created at `created`, about `object`: the envelope
/// Stripe delivers to a webhook endpoint on [`API_VERSION`].
pub fn event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
    })
}

/// A completed, paid Checkout Session `id` of `mode` (`subscription`: it created subscription
/// `sub_{id}`; `payment`: a one-time payment, with its payment intent) for an existing customer.
pub fn checkout_session(id: &str, mode: &str) -> Value {
    let mut session = load(CHECKOUT_SESSION);
    let subscription = (mode == "subscription").then(|| format!("sub_{id}"));
    let payment_intent = (mode == "payment").then(|| format!("pi_{id}"));
    merge(
        &mut session,
        json!({
            "id": id,
            "mode": mode,
            "subscription": subscription,
            "payment_intent": payment_intent,
            "payment_method_collection": if mode == "payment" { "if_required" } else { "always" },
        }),
    );
    session
}

/// Customer `id`, created at `created`, with the fixture's email, name and no metadata.
pub fn customer(id: &str, created: i64) -> Value {
    let mut customer = load(CUSTOMER);
    merge(&mut customer, json!({ "id": id, "created": created }));
    customer
}

/// Price `id`: `unit_amount` cents (USD), monthly if `recurring`, else bought once.
pub fn price(id: &str, unit_amount: i64, recurring: bool) -> Value {
    let mut price = load(PRICE);
    merge(
        &mut price,
        json!({
            "id": id,
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount.to_string(),
        }),
    );
    if !recurring {
        merge(&mut price, json!({ "recurring": null, "type": "one_time" }));
    }
    price
}

/// An active monthly subscription `id` of `customer` to `price` (900 cents a month), with one
/// item whose period runs from `period_start` for 30 days.
pub fn subscription(id: &str, customer: &str, price_id: &str, period_start: i64) -> Value {
    let mut sub = load(SUBSCRIPTION);
    let mut plan = load(PLAN);
    merge(&mut plan, json!({ "id": price_id }));
    let period_end = period_start + 30 * 86_400;
    merge(
        &mut sub,
        json!({
            "id": id,
            "customer": customer,
            "billing_cycle_anchor": period_start,
            "created": period_start,
            "start_date": period_start,
            "latest_invoice": format!("in_{id}"),
            "items": {
                "data": [{
                    "id": format!("si_{id}"),
                    "object": "subscription_item",
                    "billing_thresholds": null,
                    "created": period_start,
                    "current_period_end": period_end,
                    "current_period_start": period_start,
                    "discounts": [],
                    "metadata": {},
                    "plan": plan,
                    "price": price(price_id, 900, true),
                    "quantity": 1,
                    "subscription": id,
                    "tax_rates": [],
                }],
                "url": format!("/v1/subscription_items?subscription={id}"),
            },
        }),
    );
    sub
}

/// Invoice `id` of `customer` for subscription `subscription` at `price_id` (one line, 900
/// cents for a month from `created`), paid; `status` `open` leaves it unpaid.
pub fn invoice(
    id: &str,
    customer: &str,
    subscription: &str,
    price_id: &str,
    created: i64,
) -> Value {
    let mut invoice = load(INVOICE);
    let line = json!({
        "id": format!("il_{id}"),
        "invoice": id,
        "parent": {
            "subscription_item_details": {
                "subscription": subscription,
                "subscription_item": format!("si_{subscription}"),
            },
        },
        "period": { "start": created, "end": created + 30 * 86_400 },
        "pricing": { "price_details": { "price": price_id } },
    });
    let mut lines = invoice["lines"]["data"].take();
    merge(&mut lines[0], line);
    merge(
        &mut invoice,
        json!({
            "id": id,
            "customer": customer,
            "created": created,
            "effective_at": created,
            "period_start": created,
            "period_end": created,
            "status_transitions": { "finalized_at": created, "paid_at": created + 2 },
            "webhooks_delivered_at": created,
            "hosted_invoice_url": format!("https://invoice.stripe.com/i/acct_1ConfabFixture/test_{id}"),
            "invoice_pdf": format!("https://pay.stripe.com/invoice/acct_1ConfabFixture/test_{id}/pdf"),
            "lines": { "data": lines, "url": format!("/v1/invoices/{id}/lines") },
            "parent": { "subscription_details": { "subscription": subscription } },
        }),
    );
    invoice
}

/// The same invoice as [`invoice`], unpaid: what `invoice.payment_failed` carries.
pub fn unpaid(mut invoice: Value) -> Value {
    let due = invoice["amount_due"].clone();
    let next_attempt = invoice["created"].as_i64().map(|c| c + 3 * 86_400);
    merge(
        &mut invoice,
        json!({
            "status": "open",
            "amount_paid": 0,
            "amount_remaining": due,
            "next_payment_attempt": next_attempt,
            "status_transitions": { "paid_at": null },
        }),
    );
    invoice
}

/// The invoice of [`invoice`] in the layout of API versions before 2025-03-31.basil (such as
/// 2024-06-20): the subscription named at the top (`subscription`, `subscription_details`), each
/// line with its whole `price` and `plan`, and none of the fields basil added (`parent`, a line's
/// `pricing`, `subtotal` and `parent`, `amount_overpaid`).
pub fn invoice_before_basil(
    id: &str,
    customer: &str,
    subscription: &str,
    price_id: &str,
    created: i64,
) -> Value {
    let mut invoice = invoice(id, customer, subscription, price_id, created);
    let o = invoice.as_object_mut().expect("an object");
    for gone in [
        "parent",
        "amount_overpaid",
        "confirmation_secret",
        "customer_account",
        "total_pretax_credit_amounts",
        "total_taxes",
    ] {
        o.remove(gone);
    }
    let mut plan = load(PLAN);
    merge(&mut plan, json!({ "id": price_id }));
    for line in o["lines"]["data"].as_array_mut().expect("lines") {
        let l = line.as_object_mut().expect("a line");
        for gone in [
            "parent",
            "pricing",
            "subtotal",
            "taxes",
            "pretax_credit_amounts",
        ] {
            l.remove(gone);
        }
        merge(
            line,
            json!({
                "amount_excluding_tax": 900,
                "invoice_item": null,
                "plan": plan,
                "price": price(price_id, 900, true),
                "proration": false,
                "proration_details": { "credited_items": null },
                "subscription": subscription,
                "subscription_item": format!("si_{subscription}"),
                "tax_amounts": [],
                "tax_rates": [],
                "type": "subscription",
                "unit_amount_excluding_tax": "900",
            }),
        );
    }
    merge(
        &mut invoice,
        json!({
            "application_fee_amount": null,
            "charge": format!("ch_{id}"),
            "discount": null,
            "paid": true,
            "paid_out_of_band": false,
            "payment_intent": format!("pi_{id}"),
            "quote": null,
            "subscription": subscription,
            "subscription_details": { "metadata": {} },
            "tax": null,
            "total_tax_amounts": [],
            "transfer_data": null,
        }),
    );
    invoice
}
