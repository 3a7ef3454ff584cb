//! Stripe events: the job that applies a verified webhook delivery, and its queue.
//!
//! The design, end to end:
//!
//! 1. `POST /api/webhooks/stripe` verifies the signature on the raw body and appends the event,
//!    whole, to a stream of its own (`stripe-event-{uuid v5 of Stripe's event id}`, through the
//!    command executor): the first delivery appends `stripe.event_received`; a redelivery finds
//!    the stream and appends nothing. It then pushes a [`ProcessStripeEvent`] job (apalis, in
//!    `stripe-jobs.db`, queue [`STRIPE_QUEUE`]) unless the event has already been processed, and
//!    answers 200 without waiting for it.
//! 2. The job ([`Billing::process`]) reads the event back from its stream, finds whose it is
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
//!
//! The queue is its own SQLite file (`stripe-jobs.db` in the data directory, WAL, no fsync per
//! push), registered on the same apalis monitor as the reply worker. Every event still
//! unprocessed is queued again at start-up, so neither a crash between the append and the
//! push nor a lost queue file loses an event.

use apalis::prelude::*;
use apalis_sqlite::SqliteStorage;
use chrono::{DateTime, TimeZone, Utc};
use confab_domain::account::Account;
use confab_domain::billing::{
    Invoice, Price, PriceGrant, StripeEvent, StripeEventCommand, SubscriptionReport,
    SubscriptionStatus, find_price,
};
use confab_domain::billing_account::{BillingAccount, BillingAccountCommand, BillingAccountError};
use confab_domain::catalogue::Catalogue;
use confab_domain::credits::{CreditAccount, CreditAction, CreditCommand, GrantKind};
use confab_domain::{Aggregate, EventSchema};
use confab_eventstore::EventMetadata;
use confab_eventstore::aggregate::{CommandExecutor, ExecuteError, exists};
use confab_projections::{Positions, ReadDb};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The queue name of Stripe jobs (pinned, so renaming the Rust type strands nothing).
pub const STRIPE_QUEUE: &str = "process_stripe_event";

/// Most attempts of one job: a job fails only while the store or the read models cannot be
/// reached or fall behind.
pub const MAX_ATTEMPTS: usize = 10;

/// The job: apply Stripe event `event_id`, already recorded in its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStripeEvent {
    /// Stripe's event id (`evt_...`).
    pub event_id: String,
}

/// The Stripe job queue, as the webhook pushes to it.
#[derive(Clone)]
pub struct StripeQueue {
    storage: SqliteStorage<ProcessStripeEvent>,
}

/// The queue and the listener that wakes its worker.
pub struct OpenedStripeQueue {
    /// For pushing.
    pub queue: StripeQueue,
    wakeups: Arc<dyn Fn() -> Strategy + Send + Sync>,
}

impl StripeQueue {
    /// Opens the queue in its own job database at `path` (created if needed; apalis'
    /// migrations are applied, in their own history table, as the reply queue does).
    ///
    /// The file is in WAL mode with `synchronous = NORMAL`: a push costs no fsync, so the
    /// webhook's answer does not wait for the disk. A push lost with the machine (power loss)
    /// is not lost work: the event itself is in the event log, and
    /// [`Billing::requeue_unprocessed`] queues every unprocessed event again at start-up.
    pub async fn open(path: &Path) -> anyhow::Result<OpenedStripeQueue> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let (pool, listener) = SqliteStorage::connect_with_callback(&url)?;
        // The pool is lazy: every connection it opens gets these (and apalis' update hook).
        let options = (*pool.connect_options())
            .clone()
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        pool.set_connect_options(options);
        let mut migrator = SqliteStorage::migrations();
        migrator.dangerous_set_table_name("_apalis_migrations");
        migrator.run(&pool).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot prepare the Stripe job queue in {}: {e}",
                path.display()
            )
        })?;
        let storage = SqliteStorage::new(&pool)
            .with_config(apalis_sqlite::Config::default().queue(STRIPE_QUEUE));
        Ok(OpenedStripeQueue {
            queue: StripeQueue { storage },
            wakeups: Arc::new(move || {
                Strategy::new()
                    .stream(listener.clone())
                    .interval(Duration::from_secs(1))
            }),
        })
    }

    /// Enqueues the processing of one event.
    pub async fn push(&self, job: ProcessStripeEvent) -> anyhow::Result<()> {
        let task = TaskBuilder::new(job).max_attempts(MAX_ATTEMPTS).build();
        self.storage
            .clone()
            .push_task(task)
            .await
            .map_err(|e| anyhow::anyhow!("cannot enqueue the Stripe event: {e}"))
    }

    /// Jobs not yet finished: waiting, running, or failed with attempts left.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND (status IN \
             ('Pending', 'Queued', 'Running') OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(STRIPE_QUEUE)
        .fetch_one(self.storage.pool())
        .await?)
    }
}

/// Adds the Stripe worker (`concurrency` events at a time) to `monitor`.
pub fn register(
    monitor: Monitor,
    opened: OpenedStripeQueue,
    billing: Billing,
    concurrency: usize,
) -> Monitor {
    let OpenedStripeQueue { queue, wakeups } = opened;
    let name = format!("stripe-events-{}", Uuid::now_v7().simple());
    monitor.register(move |_| {
        WorkerBuilder::new(name.clone())
            .backend(queue.storage.clone().poll_with_strategy(wakeups()))
            .data(billing.clone())
            .concurrency(concurrency.max(1))
            .build(run_job)
    })
}

async fn run_job(job: ProcessStripeEvent, billing: Data<Billing>) -> Result<(), BoxDynError> {
    match billing.process(&job.event_id).await {
        Ok(outcome) => {
            tracing::info!(stripe_event = %job.event_id, %outcome, "stripe event processed");
            Ok(())
        }
        Err(ProcessError::Permanent(why)) => {
            tracing::error!(stripe_event = %job.event_id, %why, "stripe event cannot be processed");
            Err(Box::new(AbortError::new(why)))
        }
        Err(ProcessError::Retry(e)) => {
            tracing::warn!(stripe_event = %job.event_id, error = %e, "stripe event job failed; it will be retried");
            Err(BoxDynError::from(e.to_string()))
        }
    }
}

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Bad input: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
    /// The store or the read models failed or fell behind: try again.
    #[error(transparent)]
    Retry(#[from] anyhow::Error),
}

impl<E: std::error::Error + Send + Sync + 'static> From<ExecuteError<E>> for ProcessError {
    fn from(e: ExecuteError<E>) -> Self {
        ProcessError::Retry(e.into())
    }
}

/// What Stripe jobs need.
#[derive(Clone)]
pub struct Billing {
    /// Runs commands.
    pub commands: Arc<CommandExecutor>,
    /// Read models.
    pub db: ReadDb,
    /// Projection positions, to wait for effects to be readable.
    pub positions: Positions,
    /// Tiers and their allowances.
    pub catalogue: Arc<Catalogue>,
    /// The prices sold, and what each gives.
    pub prices: Arc<Vec<Price>>,
    /// How long to wait for the read models.
    pub write_timeout: Duration,
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

impl Billing {
    /// Queues every received Stripe event the read model shows unprocessed (a job lost with
    /// a crash, or a queue file that was removed); returns how many. Queuing one that is
    /// queued already only costs a job that finds it processed.
    pub async fn requeue_unprocessed(&self, queue: &StripeQueue) -> anyhow::Result<usize> {
        let ids = confab_projections::billing::unprocessed_stripe_events(&self.db).await?;
        for event_id in &ids {
            queue
                .push(ProcessStripeEvent {
                    event_id: event_id.clone(),
                })
                .await?;
        }
        if !ids.is_empty() {
            tracing::info!(events = ids.len(), "queued unprocessed stripe events again");
        }
        Ok(ids.len())
    }

    fn tiers(&self) -> Vec<String> {
        self.catalogue
            .tiers
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// The configured subscription price among `ids`, with its tier.
    fn tier_price<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<(String, String)> {
        ids.into_iter().find_map(|id| {
            find_price(&self.prices, id).and_then(|p| match p.grant() {
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
    ) -> Result<Option<Uuid>, ProcessError> {
        if let Some(c) = customer {
            let found = confab_projections::billing::customer_user(&self.db, c)
                .await
                .map_err(anyhow::Error::from)?;
            if found.is_some() {
                return Ok(found);
            }
            // The customer is recorded before any checkout can start; if the read model has
            // not shown it yet, it will once it reaches the log's present head.
            let head = self
                .commands
                .store()
                .head_position()
                .await
                .map_err(anyhow::Error::from)?;
            self.positions
                .wait_for(confab_projections::billing::NAME, head, self.write_timeout)
                .await
                .map_err(anyhow::Error::from)?;
            let found = confab_projections::billing::customer_user(&self.db, c)
                .await
                .map_err(anyhow::Error::from)?;
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
    ) -> Result<(), ProcessError> {
        let tier = confab_projections::accounts::tier(&self.db, user)
            .await
            .map_err(anyhow::Error::from)?
            .unwrap_or_default();
        let opening = self.catalogue.tier(&tier).starting_credits;
        let done = self
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
    ) -> Result<bool, ProcessError> {
        let done = self
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
    ) -> Result<bool, ProcessError> {
        // The billing account has a stream of its own and cannot tell; the account's can.
        if !exists::<Account>(self.commands.store().as_ref(), &user)
            .await
            .map_err(anyhow::Error::from)?
        {
            return Ok(false);
        }
        match self
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
    ) -> Result<bool, ProcessError> {
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
    pub async fn process(&self, event_id: &str) -> Result<String, ProcessError> {
        let stream_id = StripeEvent::id_for(event_id);
        let stream = StripeEvent::stream_name(&stream_id);
        let records = confab_eventstore::read_whole_stream(self.commands.store().as_ref(), &stream)
            .await
            .map_err(anyhow::Error::from)?;
        let mut state = StripeEvent::default();
        let mut causation = None;
        for r in &records {
            let e = confab_domain::billing::StripeEventEvent::from_stored(
                &r.event_type,
                r.schema_version,
                r.payload.clone(),
            )
            .map_err(|e| ProcessError::Permanent(e.to_string()))?;
            causation.get_or_insert(r.event_id);
            state = state.evolve(&e);
        }
        let Some(received) = state.received.clone() else {
            return Err(ProcessError::Permanent(format!(
                "stripe event {event_id} was never received"
            )));
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
            if let Some(pos) = pos {
                self.positions
                    .wait_for(name, pos, self.write_timeout)
                    .await
                    .map_err(anyhow::Error::from)?;
            }
        }
        let done = self
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
        if let Some(a) = done.appended {
            self.positions
                .wait_for(
                    confab_projections::billing::NAME,
                    a.last_position,
                    self.write_timeout,
                )
                .await
                .map_err(anyhow::Error::from)?;
        }
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
    ) -> Result<String, ProcessError> {
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
    ) -> Result<String, ProcessError> {
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
            .and_then(|id| find_price(&self.prices, id))
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
    ) -> Result<String, ProcessError> {
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
            let credits = self.catalogue.tier(tier).monthly_credits;
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
    ) -> Result<String, ProcessError> {
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
