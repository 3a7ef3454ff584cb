//! Stripe events: applying a verified webhook delivery, the body of the Stripe job.
//!
//! The design, end to end:
//!
//! 1. `POST /api/webhooks/stripe` verifies the signature on the raw body and appends the event,
//!    whole, to a stream of its own (`stripe-event-{uuid v5 of Stripe's event id}`, through the
//!    command executor): the first delivery appends `stripe.event_received`; a redelivery finds
//!    the stream and appends nothing ([`super::record_stripe_event`]). It then queues a
//!    [`crate::jobs::ProcessStripeEvent`] job unless the event has already been processed, and
//!    answers 200 without waiting for it.
//! 2. The job ([`process_stripe_event`]) reads the event back from its stream and, for the types
//!    it acts on, parses it into async-stripe's typed `Event` and its checkout session, invoice
//!    or subscription (`read`; the log keeps Stripe's JSON as received, so the route accepts any
//!    correctly signed event, and an object that does not parse is a final "ignored" outcome
//!    naming the field, never retried). It finds whose the event is (Stripe customer, then the
//!    user id Confab put in the checkout's and subscription's metadata), and runs idempotent
//!    commands: the credit account is opened at the tier held
//!    before any change, subscriptions are merged into the account (ordered by the Stripe
//!    event's `created` time, a cancellation final; see `confab_domain::billing`), the tier
//!    follows them, credits are granted once per invoice (renewals) or checkout session
//!    (top-ups), and invoices are recorded. It waits until the read models show all of that,
//!    then appends `stripe.event_processed`.
//!
//! So a redelivered event changes nothing, a job that is retried or runs twice (two deliveries
//! raced, each pushing one) changes state once, and events applied in any order end in the
//! same state. A job is pushed again by a redelivery of an event still unprocessed, which
//! covers a crash between the append and the push (Stripe redelivers when it got no 200).

use crate::jobs::{Job, ProcessStripeEvent};
use crate::{AppError, Services};
use chrono::{DateTime, TimeZone, Utc};
use confab_domain::account::Account;
use confab_domain::billing::{
    Invoice, PriceGrant, StripeEvent, StripeEventCommand, SubscriptionReport, SubscriptionStatus,
    find_price,
};
use confab_domain::billing_account::{BillingAccount, BillingAccountCommand, BillingAccountError};
use confab_domain::credits::{CreditAction, GrantKind};
use confab_domain::{Aggregate, EventSchema};
use confab_eventstore::EventMetadata;
use confab_eventstore::aggregate::{ExecuteError, exists};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use stripe_shared::{
    CheckoutSession, CheckoutSessionPaymentStatus, Invoice as StripeInvoice, Subscription,
};
use stripe_types::{AsCursorOpt, Expandable, Object};
use stripe_webhook::{Event, EventObject};
use uuid::Uuid;

/// Applies Stripe event `event_id` (recorded in its stream) and marks it processed; returns
/// what it did. Applying it again changes nothing. An error the job may retry says so
/// ([`AppError::is_retryable`]): the store or the read models failed or fell behind.
pub async fn process_stripe_event(svc: &Services, event_id: &str) -> Result<String, AppError> {
    Processor { svc }.process(event_id).await
}

/// Queues every received Stripe event the read model shows unprocessed (a job lost with a
/// crash, or a queue file that was removed); returns how many. Queuing one that is queued
/// already only costs a job that finds it processed.
pub async fn requeue_unprocessed(svc: &Services) -> Result<usize, AppError> {
    let ids = confab_projections::billing::unprocessed_stripe_events(&svc.db).await?;
    for event_id in &ids {
        svc.jobs
            .push(Job::StripeEvent(ProcessStripeEvent {
                event_id: event_id.clone(),
            }))
            .await?;
    }
    if !ids.is_empty() {
        tracing::info!(events = ids.len(), "queued unprocessed stripe events again");
    }
    Ok(ids.len())
}

/// One event's processing.
struct Processor<'a> {
    svc: &'a Services,
}

/// The positions one event's commands appended, per projection that shows them.
#[derive(Default)]
struct Written {
    accounts: Option<u64>,
    credits: Option<u64>,
    billing: Option<u64>,
}

impl Written {
    fn note(slot: &mut Option<u64>, pos: Option<u64>) {
        if let Some(p) = pos {
            *slot = Some(slot.map_or(p, |s| s.max(p)));
        }
    }
}

/// The event types the job acts on; any other is acknowledged and recorded as it came.
const ACTED_ON: [&str; 7] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
];

/// The longest reason an event could not be read that an outcome keeps, in characters.
const MAX_REASON: usize = 300;

/// What the job makes of a recorded event: its object, typed, for the types acted on.
#[derive(Debug)]
enum Reading {
    /// `checkout.session.completed`, or `.async_payment_succeeded` (`async_paid`).
    Checkout {
        session: Box<CheckoutSession>,
        async_paid: bool,
    },
    /// `invoice.paid` (`paid`) or `invoice.payment_failed`.
    Invoice {
        invoice: Box<StripeInvoice>,
        paid: bool,
    },
    /// `customer.subscription.created`, `.updated` or `.deleted` (`deleted`).
    Subscription {
        subscription: Box<Subscription>,
        deleted: bool,
    },
    /// A type the job does not act on (its object is not read).
    NotActedOn,
    /// A type acted on whose event or object is not what async-stripe's types describe: why.
    Unreadable(String),
}

/// Reads event `payload` (Stripe's JSON, as recorded) of type `event_type` into async-stripe's
/// typed [`Event`], for the types acted on.
///
/// Through serde (the webhook crate's `deserialize` feature), which names the field that does
/// not parse (`detailed-errors`): a missing required field, a value of the wrong type. Unknown
/// fields are skipped and unknown enum values (a status Stripe adds) read as `Unknown`. The
/// types follow the API version async-stripe targets ([`stripe_shared::version::VERSION`]);
/// an object rendered at a version whose layout they do not describe (before 2025-03-31.basil:
/// subscription items without their period, invoice lines without `subtotal`) is unreadable.
fn read(event_type: &str, payload: &Value) -> Reading {
    if !ACTED_ON.contains(&event_type) {
        return Reading::NotActedOn;
    }
    let event = match Event::deserialize(payload) {
        Ok(event) => event,
        Err(e) => return Reading::Unreadable(reason(&e.to_string())),
    };
    match event.data.object {
        EventObject::CheckoutSessionCompleted(session) => Reading::Checkout {
            session,
            async_paid: false,
        },
        EventObject::CheckoutSessionAsyncPaymentSucceeded(session) => Reading::Checkout {
            session,
            async_paid: true,
        },
        EventObject::InvoicePaid(invoice) => Reading::Invoice {
            invoice,
            paid: true,
        },
        EventObject::InvoicePaymentFailed(invoice) => Reading::Invoice {
            invoice,
            paid: false,
        },
        EventObject::CustomerSubscriptionCreated(subscription)
        | EventObject::CustomerSubscriptionUpdated(subscription) => Reading::Subscription {
            subscription,
            deleted: false,
        },
        EventObject::CustomerSubscriptionDeleted(subscription) => Reading::Subscription {
            subscription,
            deleted: true,
        },
        // The type is one of the above; its object is read by the type, so this is not met.
        _ => Reading::NotActedOn,
    }
}

/// The outcome of an event acted on that could not be read (and one log line). Reading it again
/// will not change it, so it is final: recorded as ignored, never retried.
fn unreadable(event_id: &str, event_type: &str, why: &str) -> String {
    tracing::warn!(
        stripe_event = %event_id,
        event_type,
        reason = %why,
        "a stripe event of a type acted on could not be read; recorded as ignored"
    );
    format!("ignored: the {event_type} event could not be read: {why}")
}

/// `message` cut to [`MAX_REASON`] characters.
fn reason(message: &str) -> String {
    match message.char_indices().nth(MAX_REASON) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

/// The id of an id-or-object field, unless empty.
fn id_of<T: Object>(field: &Expandable<T>) -> Option<&str> {
    field.id().as_cursor_opt().filter(|s| !s.is_empty())
}

fn timestamp(secs: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0).single()
}

/// The Confab user named in Stripe `metadata` (Confab puts `user_id` in a checkout's and its
/// subscription's).
fn user_in(metadata: Option<&HashMap<String, String>>) -> Option<Uuid> {
    metadata
        .and_then(|m| m.get("user_id"))
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The Confab user a Stripe event is about, as its processing will find them: the owner of its
/// object's customer, or else the user Confab named in the object (`client_reference_id`,
/// `metadata.user_id`, the subscription details' metadata). Read from the JSON, so that events
/// of every type count (those Confab does not act on hold personal data too).
pub(super) async fn subject_of(svc: &Services, payload: &Value) -> Result<Option<Uuid>, AppError> {
    let object = &payload["data"]["object"];
    let customer = match &object["customer"] {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => (object["object"] == "customer")
            .then(|| object["id"].as_str())
            .flatten(),
    }
    .filter(|s| !s.is_empty());
    let named = [
        &object["client_reference_id"],
        &object["metadata"]["user_id"],
        &object["parent"]["subscription_details"]["metadata"]["user_id"],
        &object["subscription_details"]["metadata"]["user_id"],
    ]
    .into_iter()
    .filter_map(Value::as_str)
    .find_map(|s| Uuid::parse_str(s).ok());
    Processor { svc }.owner(customer, &[named]).await
}

impl Processor<'_> {
    fn tiers(&self) -> Vec<String> {
        self.svc
            .catalogue
            .tiers
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// The configured subscription price among `ids`, with its tier.
    fn tier_price<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<(String, String)> {
        ids.into_iter().find_map(|id| {
            find_price(self.svc.billing.prices(), id).and_then(|p| match p.grant() {
                PriceGrant::Tier(t) => Some((p.id.clone(), t.to_owned())),
                PriceGrant::Credits(_) => None,
            })
        })
    }

    /// Whose event this is: the owner of its Stripe customer, or else the user Confab named
    /// in the object's references.
    async fn owner(
        &self,
        customer: Option<&str>,
        references: &[Option<Uuid>],
    ) -> Result<Option<Uuid>, AppError> {
        if let Some(c) = customer {
            let found = confab_projections::billing::customer_user(&self.svc.db, c).await?;
            if found.is_some() {
                return Ok(found);
            }
            // The customer is recorded before any checkout can start; if the read model has
            // not shown it yet, it will once it reaches the log's present head.
            let head = self.svc.commands.store().head_position().await?;
            self.svc
                .visible(confab_projections::billing::NAME, Some(head))
                .await?;
            let found = confab_projections::billing::customer_user(&self.svc.db, c).await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(references.iter().flatten().next().copied())
    }

    /// Opens `user`'s credit account at the tier they hold now, before anything changes it.
    async fn open_credits(
        &self,
        user: Uuid,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<(), AppError> {
        let appended =
            crate::credits::run(self.svc, user, CreditAction::Open, meta.clone()).await?;
        Written::note(&mut written.credits, appended);
        Ok(())
    }

    /// Grants `amount` credits once per `grant_id`; `Ok(false)` when granted before.
    async fn grant(
        &self,
        user: Uuid,
        grant_id: String,
        kind: GrantKind,
        amount: i64,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<bool, AppError> {
        let action = CreditAction::Grant {
            grant_id,
            kind,
            amount,
        };
        let appended = crate::credits::run(self.svc, user, action, meta.clone()).await?;
        Written::note(&mut written.credits, appended);
        Ok(appended.is_some())
    }

    /// Records `invoice` on `user`'s billing account; `Ok(false)` when there is no account.
    async fn record_invoice(
        &self,
        user: Uuid,
        invoice: Invoice,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<bool, AppError> {
        let command = BillingAccountCommand::RecordInvoice {
            user_id: user,
            invoice,
            at: Utc::now(),
        };
        self.account(user, command, meta, written).await
    }

    /// Runs a billing account command; `Ok(false)` when the account does not exist.
    async fn account(
        &self,
        user: Uuid,
        command: BillingAccountCommand,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<bool, AppError> {
        // The billing account has a stream of its own and cannot tell; the account's can.
        if !exists::<Account>(self.svc.store.as_ref(), &user).await? {
            return Ok(false);
        }
        match self
            .svc
            .commands
            .execute::<BillingAccount>(&user, command, meta.clone())
            .await
        {
            Ok(done) => {
                let pos = done.appended.map(|a| a.last_position);
                Written::note(&mut written.billing, pos);
                Written::note(&mut written.accounts, pos);
                Ok(true)
            }
            // Another customer is linked already: the one recorded first stays.
            Err(ExecuteError::Domain(BillingAccountError::CustomerAlreadyLinked { .. })) => {
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn subscription(
        &self,
        user: Uuid,
        report: SubscriptionReport,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<bool, AppError> {
        self.account(
            user,
            BillingAccountCommand::ApplySubscription {
                user_id: user,
                report,
                tiers: self.tiers(),
                at: Utc::now(),
            },
            meta,
            written,
        )
        .await
    }

    /// Applies Stripe event `event_id` (recorded in its stream) and marks it processed; returns
    /// what it did. Applying it again changes nothing.
    #[tracing::instrument(skip_all, fields(stripe_event = %event_id))]
    async fn process(&self, event_id: &str) -> Result<String, AppError> {
        let stream_id = StripeEvent::id_for(event_id);
        let stream = StripeEvent::stream_name(&stream_id);
        let records =
            confab_eventstore::read_whole_stream(self.svc.commands.store().as_ref(), &stream)
                .await?;
        let mut state = StripeEvent::default();
        let mut causation = None;
        for r in &records {
            let e = confab_domain::billing::StripeEventEvent::from_stored(
                &r.event_type,
                r.schema_version,
                r.payload.clone(),
            )?;
            causation.get_or_insert(r.event_id);
            state = state.evolve(&e);
        }
        let Some(received) = state.received.clone() else {
            return Err(AppError::NotFound("stripe event"));
        };
        if state.processed {
            return Ok("already processed".into());
        }
        let meta = EventMetadata {
            actor: None,
            correlation_id: Some(stream_id),
            causation_id: causation,
        };
        let mut written = Written::default();
        let outcome = self
            .apply(
                &received.event_type,
                &received.payload,
                event_id,
                received.created,
                &meta,
                &mut written,
            )
            .await?;
        // Whoever reads after `processed` sees every effect.
        for (name, pos) in [
            (confab_projections::accounts::NAME, written.accounts),
            (confab_projections::credits::NAME, written.credits),
            (confab_projections::billing::NAME, written.billing),
        ] {
            self.svc.visible(name, pos).await?;
        }
        let done = self
            .svc
            .commands
            .execute::<StripeEvent>(
                &stream_id,
                StripeEventCommand::MarkProcessed {
                    outcome: outcome.clone(),
                    at: Utc::now(),
                },
                meta,
            )
            .await?;
        self.svc
            .visible(
                confab_projections::billing::NAME,
                done.appended.map(|a| a.last_position),
            )
            .await?;
        Ok(outcome)
    }

    async fn apply(
        &self,
        event_type: &str,
        payload: &Value,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        match read(event_type, payload) {
            Reading::Checkout {
                session,
                async_paid,
            } => {
                self.checkout(&session, async_paid, event_id, created, meta, written)
                    .await
            }
            Reading::Invoice { invoice, paid } => {
                self.invoice(&invoice, paid, event_id, created, meta, written)
                    .await
            }
            Reading::Subscription {
                subscription,
                deleted,
            } => {
                self.subscription_event(&subscription, deleted, event_id, created, meta, written)
                    .await
            }
            Reading::NotActedOn => Ok(format!("acknowledged: {event_type} is not acted on")),
            Reading::Unreadable(why) => Ok(unreadable(event_id, event_type, &why)),
        }
    }

    async fn checkout(
        &self,
        session: &CheckoutSession,
        async_paid: bool,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        let session_id = session.id.as_str();
        if session_id.is_empty() {
            return Ok("ignored: the session has no id".into());
        }
        let customer = session.customer.as_ref().and_then(id_of);
        let reference = session
            .client_reference_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok());
        let metadata = session.metadata.as_ref();
        let Some(user) = self
            .owner(customer, &[reference, user_in(metadata)])
            .await?
        else {
            return Ok(format!(
                "ignored: session {session_id} belongs to no Confab user"
            ));
        };
        let meta = &EventMetadata {
            actor: Some(user),
            ..meta.clone()
        };
        if let Some(c) = customer {
            // A customer Stripe created during checkout is this account's from now on.
            let link = BillingAccountCommand::LinkStripeCustomer {
                user_id: user,
                customer_id: c.to_owned(),
                at: Utc::now(),
            };
            if !self.account(user, link, meta, written).await? {
                return Ok(format!("ignored: user {user} has no account"));
            }
        }
        let Some(price) = metadata
            .and_then(|m| m.get("price_id"))
            .and_then(|id| find_price(self.svc.billing.prices(), id))
        else {
            return Ok(format!(
                "ignored: session {session_id} names no configured price"
            ));
        };
        let paid = async_paid
            || matches!(
                session.payment_status,
                CheckoutSessionPaymentStatus::Paid
                    | CheckoutSessionPaymentStatus::NoPaymentRequired
            );
        let mode = Some(session.mode.as_str());
        match (mode, price.grant()) {
            (Some("subscription"), PriceGrant::Tier(tier)) => {
                let Some(subscription_id) = session.subscription.as_ref().and_then(id_of) else {
                    return Ok(format!("ignored: session {session_id} has no subscription"));
                };
                self.open_credits(user, meta, written).await?;
                let report = SubscriptionReport {
                    subscription_id: subscription_id.to_owned(),
                    status: if paid {
                        SubscriptionStatus::Active
                    } else {
                        SubscriptionStatus::Incomplete
                    },
                    tier: tier.to_owned(),
                    current_period_end: None,
                    cancel_at_period_end: None,
                    observed_at: created,
                    source_event: event_id.to_owned(),
                };
                self.subscription(user, report, meta, written).await?;
                Ok(format!("subscription {subscription_id} to {tier}"))
            }
            (Some("payment"), PriceGrant::Credits(credits)) => {
                if !paid {
                    return Ok(format!("top-up {session_id} awaits its payment"));
                }
                self.open_credits(user, meta, written).await?;
                let granted = self
                    .grant(
                        user,
                        session_id.to_owned(),
                        GrantKind::Topup,
                        credits,
                        meta,
                        written,
                    )
                    .await?;
                Ok(if granted {
                    format!("top-up {session_id}: {credits} credits")
                } else {
                    format!("top-up {session_id} was granted before")
                })
            }
            (mode, _) => Ok(format!(
                "ignored: session {session_id} of mode {mode:?} does not match price {}",
                price.id
            )),
        }
    }

    async fn invoice(
        &self,
        inv: &StripeInvoice,
        paid_event: bool,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        let invoice_id = inv
            .id
            .as_ref()
            .map(|i| i.as_str())
            .filter(|s| !s.is_empty());
        let customer = inv.customer.as_ref().and_then(id_of);
        let (Some(invoice_id), Some(customer)) = (invoice_id, customer) else {
            return Ok("ignored: the invoice has no id or customer".into());
        };
        // Since 2025-03-31.basil Stripe names the subscription under `parent`; the top-level
        // `subscription` of earlier versions is still in async-stripe's Invoice, so both are read.
        // (Earlier versions' top-level `subscription_details` is not, and an invoice rendered at
        // such a version is unreadable anyway: its lines lack `subtotal`; see [`read`].)
        let details = inv
            .parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref());
        let subscription_id = inv
            .subscription
            .as_ref()
            .and_then(id_of)
            .or_else(|| details.and_then(|d| id_of(&d.subscription)));
        let metadata_user = user_in(details.and_then(|d| d.metadata.as_ref()));
        let Some(user) = self.owner(Some(customer), &[metadata_user]).await? else {
            return Ok(format!(
                "ignored: invoice {invoice_id} belongs to no Confab user"
            ));
        };
        let meta = &EventMetadata {
            actor: Some(user),
            ..meta.clone()
        };
        let status = match &inv.status {
            Some(s) => s.as_str(),
            None if paid_event => "paid",
            None => "open",
        }
        .to_owned();
        let amount = if status == "paid" {
            inv.amount_paid
        } else {
            inv.amount_due
        };
        let lines = &inv.lines.data;
        let description = inv
            .description
            .as_deref()
            .or_else(|| lines.first().and_then(|l| l.description.as_deref()))
            .map(str::to_owned);
        let invoice = Invoice {
            invoice_id: invoice_id.to_owned(),
            customer_id: customer.to_owned(),
            subscription_id: subscription_id.map(str::to_owned),
            amount,
            currency: inv.currency.to_string().to_lowercase(),
            status,
            created: timestamp(inv.created).unwrap_or(created),
            hosted_invoice_url: inv.hosted_invoice_url.clone(),
            description,
            observed_at: created,
        };
        if !paid_event {
            let known = self.record_invoice(user, invoice, meta, written).await?;
            return Ok(if known {
                format!("invoice {invoice_id}: payment failed, recorded")
            } else {
                format!("ignored: user {user} has no account")
            });
        }
        // A subscription's invoice paid: the period it opens gets the tier's credits. A line
        // names its price under `pricing.price_details` (since 2025-03-31.basil; the whole
        // `price` of earlier versions is not in async-stripe's line item).
        let price_ids: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.pricing.as_ref()?.price_details.as_ref())
            .filter_map(|d| id_of(&d.price))
            .collect();
        let tier = subscription_id.and_then(|_| self.tier_price(price_ids.iter().copied()));
        let mut outcome = format!("invoice {invoice_id} paid, recorded");
        if let (Some(sub), Some((_, tier))) = (subscription_id, &tier) {
            self.open_credits(user, meta, written).await?;
            let report = SubscriptionReport {
                subscription_id: sub.to_owned(),
                status: SubscriptionStatus::Active,
                tier: tier.clone(),
                current_period_end: None,
                cancel_at_period_end: None,
                observed_at: created,
                source_event: event_id.to_owned(),
            };
            if !self.subscription(user, report, meta, written).await? {
                return Ok(format!("ignored: user {user} has no account"));
            }
            let credits = self.svc.catalogue.tier(tier).monthly_credits;
            if credits > 0 {
                let granted = self
                    .grant(
                        user,
                        invoice_id.to_owned(),
                        GrantKind::Subscription,
                        credits,
                        meta,
                        written,
                    )
                    .await?;
                if granted {
                    outcome = format!("invoice {invoice_id} paid: {credits} credits of {tier}");
                }
            }
        }
        let known = self.record_invoice(user, invoice, meta, written).await?;
        if !known {
            return Ok(format!("ignored: user {user} has no account"));
        }
        Ok(outcome)
    }

    async fn subscription_event(
        &self,
        sub: &Subscription,
        deleted: bool,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        let subscription_id = sub.id.as_str();
        if subscription_id.is_empty() {
            return Ok("ignored: the subscription has no id".into());
        }
        let customer = id_of(&sub.customer);
        let Some(user) = self
            .owner(customer, &[user_in(Some(&sub.metadata))])
            .await?
        else {
            return Ok(format!(
                "ignored: subscription {subscription_id} belongs to no Confab user"
            ));
        };
        let meta = &EventMetadata {
            actor: Some(user),
            ..meta.clone()
        };
        let items = &sub.items.data;
        let price_ids: Vec<&str> = items.iter().map(|i| i.price.id.as_str()).collect();
        let Some((_, tier)) = self.tier_price(price_ids.iter().copied()) else {
            return Ok(format!(
                "ignored: subscription {subscription_id} is to no configured price"
            ));
        };
        let status = if deleted {
            Some(SubscriptionStatus::Canceled)
        } else {
            SubscriptionStatus::parse(sub.status.as_str())
        };
        let Some(status) = status else {
            return Ok(format!(
                "ignored: subscription {subscription_id} has an unknown status {:?}",
                sub.status.as_str()
            ));
        };
        // The period is on the items since 2025-03-31.basil; async-stripe's Subscription has no
        // top-level `current_period_end` of earlier versions any more (and a subscription
        // rendered at such a version is unreadable: its items lack their period).
        let period_end = items
            .iter()
            .filter_map(|i| timestamp(i.current_period_end))
            .max();
        let report = SubscriptionReport {
            subscription_id: subscription_id.to_owned(),
            status,
            tier: tier.clone(),
            current_period_end: period_end,
            cancel_at_period_end: Some(sub.cancel_at_period_end),
            observed_at: created,
            source_event: event_id.to_owned(),
        };
        self.open_credits(user, meta, written).await?;
        if !self.subscription(user, report, meta, written).await? {
            return Ok(format!("ignored: user {user} has no account"));
        }
        Ok(format!(
            "subscription {subscription_id} ({tier}) is {}",
            status.as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_testkit::stripe_fixtures::{self as fx, merge};
    use serde_json::json;

    const T: i64 = 1_767_225_600;
    const PRICE: &str = "price_pro_monthly";

    fn user() -> Uuid {
        Uuid::parse_str("0190a6a4-6f1c-7cc2-9a3e-2b1f5d3c4e5f").unwrap()
    }

    fn read_event(event: &Value) -> Reading {
        read(event["type"].as_str().unwrap(), event)
    }

    fn checkout(kind: &str, session: Value) -> Value {
        fx::event("evt_1", kind, T, session)
    }

    fn a_session(mode: &str) -> Value {
        let mut s = fx::checkout_session("cs_test_1", mode);
        merge(
            &mut s,
            json!({
                "customer": "cus_1",
                "client_reference_id": user().to_string(),
                "metadata": { "user_id": user().to_string(), "price_id": PRICE },
            }),
        );
        s
    }

    fn unreadable_reason(event: &Value) -> String {
        match read_event(event) {
            Reading::Unreadable(why) => why,
            other => panic!("read: {other:?}"),
        }
    }

    #[test]
    fn a_completed_checkout_reads_as_its_session() {
        let Reading::Checkout {
            session,
            async_paid,
        } = read_event(&checkout(
            "checkout.session.completed",
            a_session("subscription"),
        ))
        else {
            panic!("not a checkout")
        };
        assert!(!async_paid);
        assert_eq!(session.id.as_str(), "cs_test_1");
        assert_eq!(session.customer.as_ref().and_then(id_of), Some("cus_1"));
        assert_eq!(
            session.subscription.as_ref().and_then(id_of),
            Some("sub_cs_test_1")
        );
        assert_eq!(session.mode.as_str(), "subscription");
        assert_eq!(session.payment_status, CheckoutSessionPaymentStatus::Paid);
        assert_eq!(user_in(session.metadata.as_ref()), Some(user()));
        let price = session.metadata.as_ref().and_then(|m| m.get("price_id"));
        assert_eq!(price.map(String::as_str), Some(PRICE));

        let mut pending = a_session("payment");
        merge(&mut pending, json!({ "payment_status": "unpaid" }));
        let Reading::Checkout {
            session,
            async_paid,
        } = read_event(&checkout(
            "checkout.session.async_payment_succeeded",
            pending,
        ))
        else {
            panic!("not a checkout")
        };
        assert!(async_paid, "the async payment succeeded");
        assert_eq!(session.mode.as_str(), "payment");
        assert_eq!(session.subscription.as_ref().and_then(id_of), None);
    }

    #[test]
    fn ids_may_be_expanded_objects() {
        let mut s = a_session("subscription");
        s["customer"] = fx::customer("cus_expanded", T);
        s["subscription"] = fx::subscription("sub_expanded", "cus_expanded", PRICE, T);
        let Reading::Checkout { session, .. } =
            read_event(&checkout("checkout.session.completed", s))
        else {
            panic!("not a checkout")
        };
        assert!(session.customer.as_ref().unwrap().is_object());
        assert_eq!(
            session.customer.as_ref().and_then(id_of),
            Some("cus_expanded")
        );
        assert_eq!(
            session.subscription.as_ref().and_then(id_of),
            Some("sub_expanded")
        );

        let mut inv = fx::invoice("in_1", "cus_1", "sub_1", PRICE, T);
        inv["customer"] = fx::customer("cus_expanded", T);
        inv["parent"]["subscription_details"]["subscription"] =
            fx::subscription("sub_expanded", "cus_expanded", PRICE, T);
        inv["lines"]["data"][0]["pricing"]["price_details"]["price"] = fx::price(PRICE, 900, true);
        let Reading::Invoice { invoice, .. } =
            read_event(&fx::event("evt_2", "invoice.paid", T, inv))
        else {
            panic!("not an invoice")
        };
        assert_eq!(
            invoice.customer.as_ref().and_then(id_of),
            Some("cus_expanded")
        );
        let details = invoice
            .parent
            .as_ref()
            .unwrap()
            .subscription_details
            .as_ref();
        assert_eq!(
            details.and_then(|d| id_of(&d.subscription)),
            Some("sub_expanded")
        );
        let pricing = invoice.lines.data[0].pricing.as_ref().unwrap();
        let price = &pricing.price_details.as_ref().unwrap().price;
        assert!(price.is_object());
        assert_eq!(id_of(price), Some(PRICE));

        // An empty id is as good as none.
        let mut s = a_session("subscription");
        s["customer"] = json!("");
        let Reading::Checkout { session, .. } =
            read_event(&checkout("checkout.session.completed", s))
        else {
            panic!("not a checkout")
        };
        assert_eq!(session.customer.as_ref().and_then(id_of), None);
    }

    #[test]
    fn an_invoice_reads_with_its_subscription_and_lines() {
        let paid = fx::invoice("in_1", "cus_1", "sub_1", PRICE, T);
        let Reading::Invoice { invoice, paid } =
            read_event(&fx::event("evt_1", "invoice.paid", T, paid))
        else {
            panic!("not an invoice")
        };
        assert!(paid);
        assert_eq!(invoice.id.as_ref().map(|i| i.as_str()), Some("in_1"));
        assert_eq!(invoice.status.as_ref().map(|s| s.as_str()), Some("paid"));
        assert_eq!((invoice.amount_paid, invoice.amount_due), (900, 900));
        assert_eq!(invoice.currency.to_string(), "usd");
        assert_eq!(invoice.created, T);
        let details = invoice
            .parent
            .as_ref()
            .unwrap()
            .subscription_details
            .as_ref();
        assert_eq!(details.and_then(|d| id_of(&d.subscription)), Some("sub_1"));
        assert_eq!(invoice.subscription.as_ref().and_then(id_of), None);
        assert_eq!(
            invoice.lines.data[0].description.as_deref(),
            Some("1 × Confab Pro (at $9.00 / month)")
        );

        let failed = fx::unpaid(fx::invoice("in_2", "cus_1", "sub_1", PRICE, T));
        let Reading::Invoice { invoice, paid } =
            read_event(&fx::event("evt_2", "invoice.payment_failed", T, failed))
        else {
            panic!("not an invoice")
        };
        assert!(!paid);
        assert_eq!(invoice.status.as_ref().map(|s| s.as_str()), Some("open"));
        assert_eq!(invoice.amount_paid, 0);

        // The subscription named at the top, as the typed Invoice still allows.
        let mut top = fx::invoice("in_3", "cus_1", "sub_1", PRICE, T);
        merge(
            &mut top,
            json!({ "parent": null, "subscription": "sub_top" }),
        );
        let Reading::Invoice { invoice, .. } =
            read_event(&fx::event("evt_3", "invoice.paid", T, top))
        else {
            panic!("not an invoice")
        };
        assert_eq!(
            invoice.subscription.as_ref().and_then(id_of),
            Some("sub_top")
        );
    }

    #[test]
    fn a_subscription_reads_with_its_items() {
        for (kind, deleted) in [("created", false), ("updated", false), ("deleted", true)] {
            let mut sub = fx::subscription("sub_1", "cus_1", PRICE, T);
            merge(
                &mut sub,
                json!({ "cancel_at_period_end": true, "metadata": { "user_id": user().to_string() } }),
            );
            let event = fx::event("evt_1", &format!("customer.subscription.{kind}"), T, sub);
            let Reading::Subscription {
                subscription,
                deleted: d,
            } = read_event(&event)
            else {
                panic!("not a subscription")
            };
            assert_eq!(d, deleted, "{kind}");
            assert_eq!(subscription.id.as_str(), "sub_1");
            assert_eq!(id_of(&subscription.customer), Some("cus_1"));
            assert_eq!(subscription.status.as_str(), "active");
            assert!(subscription.cancel_at_period_end);
            assert_eq!(user_in(Some(&subscription.metadata)), Some(user()));
            let item = &subscription.items.data[0];
            assert_eq!(item.price.id.as_str(), PRICE);
            assert_eq!(item.current_period_end, T + 30 * 86_400);
        }
        // A status Stripe adds later still reads (the job then ignores it by name).
        let mut sub = fx::subscription("sub_1", "cus_1", PRICE, T);
        sub["status"] = json!("hibernating");
        let Reading::Subscription { subscription, .. } =
            read_event(&fx::event("evt_2", "customer.subscription.updated", T, sub))
        else {
            panic!("not a subscription")
        };
        assert_eq!(subscription.status.as_str(), "hibernating");
        assert_eq!(
            SubscriptionStatus::parse(subscription.status.as_str()),
            None
        );
    }

    #[test]
    fn types_not_acted_on_are_not_read() {
        for kind in [
            "customer.tax_id.created",
            "ping.test",
            "checkout.session.expired",
        ] {
            let event = fx::event("evt_1", kind, T, json!({ "id": "x" }));
            assert!(matches!(read_event(&event), Reading::NotActedOn), "{kind}");
        }
    }

    #[test]
    fn an_object_that_does_not_parse_is_unreadable_and_says_where() {
        // A required field missing.
        let mut inv = fx::invoice("in_1", "cus_1", "sub_1", PRICE, T);
        inv.as_object_mut().unwrap().remove("lines");
        let why = unreadable_reason(&fx::event("evt_1", "invoice.paid", T, inv));
        assert_eq!(why, "data.object: missing field `lines`");
        // A value of the wrong type, deep inside.
        let mut sub = fx::subscription("sub_1", "cus_1", PRICE, T);
        sub["items"]["data"][0]["current_period_end"] = json!("soon");
        let event = fx::event("evt_2", "customer.subscription.updated", T, sub);
        let why = unreadable_reason(&event);
        assert!(
            why.starts_with("data.object.items.data[0].current_period_end: invalid type"),
            "{why}"
        );
        // The minimal objects a hand-written test might send.
        let bare = json!({ "id": "cs_1", "object": "checkout.session", "mode": "payment" });
        let why = unreadable_reason(&checkout("checkout.session.completed", bare));
        assert!(why.starts_with("data.object: missing field"), "{why}");
        // An envelope without what every event has.
        let mut event = checkout("checkout.session.completed", a_session("payment"));
        event.as_object_mut().unwrap().remove("livemode");
        let why = unreadable_reason(&event);
        assert!(why.contains("missing field `livemode`"), "{why}");
        // An invoice rendered before 2025-03-31.basil: its lines lack what basil added.
        let old = fx::invoice_before_basil("in_1", "cus_1", "sub_1", PRICE, T);
        let why = unreadable_reason(&fx::event("evt_3", "invoice.paid", T, old));
        assert_eq!(why, "data.object.lines.data[0]: missing field `subtotal`");
        // The outcome recorded for it: ignored, with the reason.
        let outcome = unreadable("evt_3", "invoice.paid", &why);
        assert!(outcome.starts_with("ignored: the invoice.paid event could not be read: "));
        assert!(outcome.ends_with(&why), "{outcome}");
    }

    #[test]
    fn reasons_are_cut_and_users_read_from_metadata() {
        assert_eq!(reason("short"), "short");
        let long = "é".repeat(MAX_REASON + 10);
        assert_eq!(reason(&long).chars().count(), MAX_REASON + 1);
        let u = user();
        let m = HashMap::from([("user_id".to_owned(), u.to_string())]);
        assert_eq!(user_in(Some(&m)), Some(u));
        let m = HashMap::from([("user_id".to_owned(), "nope".to_owned())]);
        assert_eq!(user_in(Some(&m)), None);
        assert_eq!(user_in(None), None);
    }
}
