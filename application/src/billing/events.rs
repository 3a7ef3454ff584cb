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
//! 2. The job ([`process_stripe_event`]) reads the event back from its stream, finds whose it is
//!    (Stripe customer, then the user id Confab put in the checkout's and subscription's
//!    metadata), and runs idempotent commands: the credit account is opened at the tier held
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
use confab_domain::credits::{CreditAccount, CreditAction, CreditCommand, GrantKind};
use confab_domain::{Aggregate, EventSchema};
use confab_eventstore::EventMetadata;
use confab_eventstore::aggregate::{ExecuteError, exists};
use serde_json::Value;
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

/// A Stripe id field: a string, or an expanded object with an `id`.
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    v.as_i64().and_then(|s| Utc.timestamp_opt(s, 0).single())
}

fn user_in(metadata: &Value) -> Option<Uuid> {
    metadata
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
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
        let tier = confab_projections::accounts::tier(&self.svc.db, user)
            .await?
            .unwrap_or_default();
        let opening = self.svc.catalogue.tier(&tier).starting_credits;
        let done = self
            .svc
            .commands
            .execute::<CreditAccount>(
                &user,
                CreditCommand {
                    user,
                    opening,
                    at: Utc::now(),
                    action: CreditAction::Open,
                },
                meta.clone(),
            )
            .await?;
        Written::note(&mut written.credits, done.appended.map(|a| a.last_position));
        Ok(())
    }

    async fn grant(
        &self,
        user: Uuid,
        grant_id: String,
        kind: GrantKind,
        amount: i64,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<bool, AppError> {
        let done = self
            .svc
            .commands
            .execute::<CreditAccount>(
                &user,
                CreditCommand {
                    user,
                    opening: 0,
                    at: Utc::now(),
                    action: CreditAction::Grant {
                        grant_id,
                        kind,
                        amount,
                    },
                },
                meta.clone(),
            )
            .await?;
        let appended = done.appended.map(|a| a.last_position);
        Written::note(&mut written.credits, appended);
        Ok(appended.is_some())
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
        let object = &payload["data"]["object"];
        match event_type {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                self.checkout(event_type, object, event_id, created, meta, written)
                    .await
            }
            "invoice.paid" | "invoice.payment_failed" => {
                self.invoice(event_type, object, event_id, created, meta, written)
                    .await
            }
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted" => {
                self.subscription_event(event_type, object, event_id, created, meta, written)
                    .await
            }
            other => Ok(format!("acknowledged: {other} is not acted on")),
        }
    }

    async fn checkout(
        &self,
        event_type: &str,
        session: &Value,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        let Some(session_id) = id_of(&session["id"]) else {
            return Ok("ignored: the session has no id".into());
        };
        let customer = id_of(&session["customer"]);
        let reference = session["client_reference_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok());
        let Some(user) = self
            .owner(
                customer.as_deref(),
                &[reference, user_in(&session["metadata"])],
            )
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
        if let Some(c) = &customer {
            // A customer Stripe created during checkout is this account's from now on.
            let link = BillingAccountCommand::LinkStripeCustomer {
                user_id: user,
                customer_id: c.clone(),
                at: Utc::now(),
            };
            if !self.account(user, link, meta, written).await? {
                return Ok(format!("ignored: user {user} has no account"));
            }
        }
        let Some(price) = session["metadata"]["price_id"]
            .as_str()
            .and_then(|id| find_price(self.svc.billing.prices(), id))
        else {
            return Ok(format!(
                "ignored: session {session_id} names no configured price"
            ));
        };
        let paid = event_type == "checkout.session.async_payment_succeeded"
            || matches!(
                session["payment_status"].as_str(),
                Some("paid" | "no_payment_required")
            );
        match (session["mode"].as_str(), price.grant()) {
            (Some("subscription"), PriceGrant::Tier(tier)) => {
                let Some(subscription_id) = id_of(&session["subscription"]) else {
                    return Ok(format!("ignored: session {session_id} has no subscription"));
                };
                self.open_credits(user, meta, written).await?;
                let report = SubscriptionReport {
                    subscription_id: subscription_id.clone(),
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
                        session_id.clone(),
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
        event_type: &str,
        inv: &Value,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        let (Some(invoice_id), Some(customer)) = (id_of(&inv["id"]), id_of(&inv["customer"]))
        else {
            return Ok("ignored: the invoice has no id or customer".into());
        };
        // Stripe moved the subscription under `parent` in 2025; read both shapes.
        let details = &inv["parent"]["subscription_details"];
        let subscription_id =
            id_of(&inv["subscription"]).or_else(|| id_of(&details["subscription"]));
        let metadata_user = user_in(&details["metadata"])
            .or_else(|| user_in(&inv["subscription_details"]["metadata"]));
        let Some(user) = self.owner(Some(&customer), &[metadata_user]).await? else {
            return Ok(format!(
                "ignored: invoice {invoice_id} belongs to no Confab user"
            ));
        };
        let meta = &EventMetadata {
            actor: Some(user),
            ..meta.clone()
        };
        let status = inv["status"]
            .as_str()
            .unwrap_or(if event_type == "invoice.paid" {
                "paid"
            } else {
                "open"
            })
            .to_owned();
        let amount = if status == "paid" {
            inv["amount_paid"].as_i64()
        } else {
            inv["amount_due"].as_i64()
        }
        .unwrap_or(0);
        let lines = inv["lines"]["data"].as_array().cloned().unwrap_or_default();
        let description = inv["description"]
            .as_str()
            .or_else(|| lines.first().and_then(|l| l["description"].as_str()))
            .map(str::to_owned);
        let invoice = Invoice {
            invoice_id: invoice_id.clone(),
            customer_id: customer,
            subscription_id: subscription_id.clone(),
            amount,
            currency: inv["currency"].as_str().unwrap_or("usd").to_lowercase(),
            status,
            created: timestamp(&inv["created"]).unwrap_or(created),
            hosted_invoice_url: inv["hosted_invoice_url"].as_str().map(str::to_owned),
            description,
            observed_at: created,
        };
        if event_type == "invoice.payment_failed" {
            let known = self
                .account(
                    user,
                    BillingAccountCommand::RecordInvoice {
                        user_id: user,
                        invoice,
                        at: Utc::now(),
                    },
                    meta,
                    written,
                )
                .await?;
            return Ok(if known {
                format!("invoice {invoice_id}: payment failed, recorded")
            } else {
                format!("ignored: user {user} has no account")
            });
        }
        // A subscription's invoice paid: the period it opens gets the tier's credits.
        let price_ids: Vec<&str> = lines
            .iter()
            .filter_map(|l| {
                l["price"]["id"]
                    .as_str()
                    .or_else(|| l["pricing"]["price_details"]["price"].as_str())
            })
            .collect();
        let tier = subscription_id
            .as_ref()
            .and_then(|_| self.tier_price(price_ids.iter().copied()));
        let mut outcome = format!("invoice {invoice_id} paid, recorded");
        if let (Some(sub), Some((_, tier))) = (&subscription_id, &tier) {
            self.open_credits(user, meta, written).await?;
            let report = SubscriptionReport {
                subscription_id: sub.clone(),
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
                        invoice_id.clone(),
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
        let known = self
            .account(
                user,
                BillingAccountCommand::RecordInvoice {
                    user_id: user,
                    invoice,
                    at: Utc::now(),
                },
                meta,
                written,
            )
            .await?;
        if !known {
            return Ok(format!("ignored: user {user} has no account"));
        }
        Ok(outcome)
    }

    async fn subscription_event(
        &self,
        event_type: &str,
        sub: &Value,
        event_id: &str,
        created: DateTime<Utc>,
        meta: &EventMetadata,
        written: &mut Written,
    ) -> Result<String, AppError> {
        let Some(subscription_id) = id_of(&sub["id"]) else {
            return Ok("ignored: the subscription has no id".into());
        };
        let customer = id_of(&sub["customer"]);
        let Some(user) = self
            .owner(customer.as_deref(), &[user_in(&sub["metadata"])])
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
        let items = sub["items"]["data"].as_array().cloned().unwrap_or_default();
        let price_ids: Vec<&str> = items
            .iter()
            .filter_map(|i| i["price"]["id"].as_str().or_else(|| i["price"].as_str()))
            .collect();
        let Some((_, tier)) = self.tier_price(price_ids.iter().copied()) else {
            return Ok(format!(
                "ignored: subscription {subscription_id} is to no configured price"
            ));
        };
        let status = if event_type == "customer.subscription.deleted" {
            Some(SubscriptionStatus::Canceled)
        } else {
            sub["status"].as_str().and_then(SubscriptionStatus::parse)
        };
        let Some(status) = status else {
            return Ok(format!(
                "ignored: subscription {subscription_id} has an unknown status {}",
                sub["status"]
            ));
        };
        // Stripe moved the period onto the items in 2025; read both shapes.
        let period_end = timestamp(&sub["current_period_end"]).or_else(|| {
            items
                .iter()
                .filter_map(|i| timestamp(&i["current_period_end"]))
                .max()
        });
        let report = SubscriptionReport {
            subscription_id: subscription_id.clone(),
            status,
            tier: tier.clone(),
            current_period_end: period_end,
            cancel_at_period_end: sub["cancel_at_period_end"].as_bool(),
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
    use serde_json::json;

    #[test]
    fn ids_may_be_strings_or_expanded_objects() {
        assert_eq!(id_of(&json!("cus_1")), Some("cus_1".into()));
        assert_eq!(
            id_of(&json!({ "id": "cus_2", "object": "customer" })),
            Some("cus_2".into())
        );
        assert_eq!(id_of(&json!(null)), None);
        assert_eq!(id_of(&json!("")), None);
        let u = Uuid::now_v7();
        assert_eq!(user_in(&json!({ "user_id": u.to_string() })), Some(u));
        assert_eq!(user_in(&json!({ "user_id": "nope" })), None);
    }
}
