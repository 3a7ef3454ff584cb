//! A user's billing account: their Stripe customer, subscriptions, the tier those give, and
//! invoices, on a stream of its own (`billing-{user_id}`), so that Stripe events neither replay
//! nor contend with sign-ins and profile edits.
//!
//! These facts were recorded in the user's `account-{user_id}` stream before billing had a
//! stream of its own: that stream is the billing account's legacy stream, read first when
//! loading, so a customer linked before the split is still the account's. The event type names
//! stay `account.*`: they are a persisted contract. The billing account cannot tell whether the
//! user exists (that is the [`Account`]'s stream): callers check.

use crate::Aggregate;
use crate::account::Account;
use crate::billing::{Invoice, SubscriptionReport, SubscriptionState, entitled_tier};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// What can be asked of a billing account.
#[derive(Debug, Clone, PartialEq)]
pub enum BillingAccountCommand {
    /// Record the Stripe customer created for this user (once).
    LinkStripeCustomer {
        /// The user.
        user_id: Uuid,
        /// Stripe's customer id (`cus_...`).
        customer_id: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Merge what a Stripe event says about a subscription, and follow the tier it gives.
    ApplySubscription {
        /// The user.
        user_id: Uuid,
        /// The report.
        report: SubscriptionReport,
        /// The catalogue's tiers, lowest first: the order subscriptions' tiers are ranked by.
        tiers: Vec<String>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record (or update) an invoice.
    RecordInvoice {
        /// The user.
        user_id: Uuid,
        /// The invoice as the Stripe event shows it.
        invoice: Invoice,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why a billing account command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingAccountError {
    /// The account already has another Stripe customer.
    #[error("account already linked to Stripe customer {existing}")]
    CustomerAlreadyLinked {
        /// The customer it has.
        existing: String,
    },
}

/// The account's Stripe customer was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeCustomerLinked {
    /// The user.
    pub user_id: Uuid,
    /// Stripe's customer id.
    pub customer_id: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// What the account knows of one subscription changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionChanged {
    /// The user.
    pub user_id: Uuid,
    /// The subscription as now known.
    pub subscription: SubscriptionState,
    /// The Stripe event that reported the change.
    pub source_event: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The billing tier changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierChanged {
    /// The user.
    pub user_id: Uuid,
    /// The tier before.
    pub from: String,
    /// The tier now.
    pub to: String,
    /// The subscription whose change caused it.
    pub subscription_id: String,
    /// The Stripe event that reported it.
    pub source_event: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An invoice was recorded or changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceRecorded {
    /// The user.
    pub user_id: Uuid,
    /// The invoice as now known.
    pub invoice: Invoice,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of billing account events (also in [`crate::account::event_types`]).
    pub mod event_types;

    /// Everything a billing account records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum BillingAccountEvent {
        /// The Stripe customer was created.
        #[event(STRIPE_CUSTOMER_LINKED = "account.stripe_customer_linked", version = 1)]
        StripeCustomerLinked(StripeCustomerLinked),
        /// A subscription changed.
        #[event(SUBSCRIPTION_CHANGED = "account.subscription_changed", version = 1)]
        SubscriptionChanged(SubscriptionChanged),
        /// The billing tier changed.
        #[event(TIER_CHANGED = "account.tier_changed", version = 1)]
        TierChanged(TierChanged),
        /// An invoice was recorded.
        #[event(INVOICE_RECORDED = "account.invoice_recorded", version = 1)]
        InvoiceRecorded(InvoiceRecorded),
    }
}

/// The billing account aggregate's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BillingAccount {
    /// The Stripe customer, once created.
    pub stripe_customer: Option<String>,
    /// Subscriptions by Stripe id.
    pub subscriptions: HashMap<String, SubscriptionState>,
    /// The billing tier, once a subscription set it (before: the lowest tier).
    pub tier: Option<String>,
    /// Invoices by Stripe id.
    pub invoices: HashMap<String, Invoice>,
}

impl Aggregate for BillingAccount {
    type Id = Uuid;
    type Command = BillingAccountCommand;
    type Event = BillingAccountEvent;
    type Error = BillingAccountError;

    fn stream_name(user_id: &Uuid) -> String {
        format!("billing-{user_id}")
    }

    fn legacy_stream(user_id: &Uuid) -> Option<String> {
        Some(Account::stream_name(user_id))
    }

    fn decide(
        &self,
        command: BillingAccountCommand,
    ) -> Result<Vec<BillingAccountEvent>, BillingAccountError> {
        match command {
            BillingAccountCommand::LinkStripeCustomer {
                user_id,
                customer_id,
                at,
            } => match &self.stripe_customer {
                Some(c) if *c == customer_id => Ok(vec![]),
                Some(c) => Err(BillingAccountError::CustomerAlreadyLinked {
                    existing: c.clone(),
                }),
                None => Ok(vec![BillingAccountEvent::StripeCustomerLinked(
                    StripeCustomerLinked {
                        user_id,
                        customer_id,
                        at,
                    },
                )]),
            },
            BillingAccountCommand::ApplySubscription {
                user_id,
                report,
                tiers,
                at,
            } => {
                let current = self.subscriptions.get(&report.subscription_id);
                let Some(merged) = SubscriptionState::merge(current, &report) else {
                    return Ok(vec![]);
                };
                let lowest = tiers.first().cloned().unwrap_or_else(|| "free".to_owned());
                let before = self.tier.clone().unwrap_or(lowest);
                let after = entitled_tier(
                    self.subscriptions
                        .values()
                        .filter(|s| s.subscription_id != merged.subscription_id)
                        .chain(std::iter::once(&merged)),
                    &tiers,
                );
                let mut events = vec![BillingAccountEvent::SubscriptionChanged(
                    SubscriptionChanged {
                        user_id,
                        subscription: merged,
                        source_event: report.source_event.clone(),
                        at,
                    },
                )];
                if after != before {
                    events.push(BillingAccountEvent::TierChanged(TierChanged {
                        user_id,
                        from: before,
                        to: after,
                        subscription_id: report.subscription_id,
                        source_event: report.source_event,
                        at,
                    }));
                }
                Ok(events)
            }
            BillingAccountCommand::RecordInvoice {
                user_id,
                invoice,
                at,
            } => {
                let newer = self
                    .invoices
                    .get(&invoice.invoice_id)
                    .is_none_or(|known| invoice.supersedes(known));
                if !newer {
                    return Ok(vec![]);
                }
                Ok(vec![BillingAccountEvent::InvoiceRecorded(
                    InvoiceRecorded {
                        user_id,
                        invoice,
                        at,
                    },
                )])
            }
        }
    }

    fn evolve(mut self, event: &BillingAccountEvent) -> Self {
        match event {
            BillingAccountEvent::StripeCustomerLinked(e) => {
                self.stripe_customer = Some(e.customer_id.clone());
            }
            BillingAccountEvent::SubscriptionChanged(e) => {
                self.subscriptions.insert(
                    e.subscription.subscription_id.clone(),
                    e.subscription.clone(),
                );
            }
            BillingAccountEvent::TierChanged(e) => {
                self.tier = Some(e.to.clone());
            }
            BillingAccountEvent::InvoiceRecorded(e) => {
                self.invoices
                    .insert(e.invoice.invoice_id.clone(), e.invoice.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventSchema;
    use crate::account::{AccountEvent, AccountRegistered, AccountRole, DisplayName, Email};
    use crate::billing::SubscriptionStatus;
    use crate::session::{SessionEvent, SessionStarted};
    use crate::testing::{given, given_stored, stored};
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn link(customer: &str) -> BillingAccountCommand {
        BillingAccountCommand::LinkStripeCustomer {
            user_id: id(1),
            customer_id: customer.into(),
            at: at(),
        }
    }
    fn linked(customer: &str) -> BillingAccountEvent {
        BillingAccountEvent::StripeCustomerLinked(StripeCustomerLinked {
            user_id: id(1),
            customer_id: customer.into(),
            at: at(),
        })
    }
    fn sub(status: SubscriptionStatus, secs: i64) -> BillingAccountCommand {
        BillingAccountCommand::ApplySubscription {
            user_id: id(1),
            report: SubscriptionReport {
                subscription_id: "sub_1".into(),
                status,
                tier: "pro".into(),
                current_period_end: None,
                cancel_at_period_end: None,
                observed_at: at() + chrono::Duration::seconds(secs),
                source_event: format!("evt_{secs}"),
            },
            tiers: vec!["free".into(), "pro".into()],
            at: at(),
        }
    }
    fn tier_changed(from: &str, to: &str) -> BillingAccountEvent {
        BillingAccountEvent::TierChanged(TierChanged {
            user_id: id(1),
            from: from.into(),
            to: to.into(),
            subscription_id: "sub_1".into(),
            source_event: "evt_1".into(),
            at: at(),
        })
    }

    /// Applies commands in order from an empty account, keeping their events.
    fn run(commands: Vec<BillingAccountCommand>) -> BillingAccount {
        commands
            .into_iter()
            .fold(BillingAccount::default(), |s, c| {
                let events = s.decide(c).expect("decided");
                events.iter().fold(s, |s, e| s.evolve(e))
            })
    }

    /// An `account-{id}` stream as written before the split: identity, sessions and billing
    /// in one.
    fn old_account_stream() -> Vec<crate::testing::StoredEvent> {
        let registered = AccountEvent::Registered(AccountRegistered {
            user_id: id(1),
            email: Email::parse("a@example.com").unwrap(),
            name: DisplayName::parse("Ann").unwrap(),
            password_hash: "$argon2id$...".into(),
            role: AccountRole::User,
            at: at(),
        });
        let session = SessionEvent::Started(SessionStarted {
            user_id: id(1),
            session_id: id(9),
            token_hash: "ab".into(),
            expires_at: at(),
            at: at(),
        });
        vec![
            stored(&registered),
            stored(&session),
            stored(&linked("cus_1")),
            stored(&tier_changed("free", "pro")),
        ]
    }

    #[test]
    fn a_stripe_customer_is_linked_once() {
        given::<BillingAccount>([])
            .when(link("cus_1"))
            .then([linked("cus_1")]);
        given::<BillingAccount>([linked("cus_1")])
            .when(link("cus_1"))
            .then([]);
        given::<BillingAccount>([linked("cus_1")])
            .when(link("cus_2"))
            .then_error(BillingAccountError::CustomerAlreadyLinked {
                existing: "cus_1".into(),
            });
    }

    #[test]
    fn a_customer_linked_in_the_account_stream_is_still_the_accounts() {
        given_stored::<BillingAccount>(&id(1), old_account_stream(), [])
            .when(link("cus_2"))
            .then_error(BillingAccountError::CustomerAlreadyLinked {
                existing: "cus_1".into(),
            });
        // The same customer again changes nothing, and the tier set before the split is
        // where the next change starts from.
        let state = given_stored::<BillingAccount>(&id(1), old_account_stream(), [])
            .when(link("cus_1"))
            .then([]);
        assert_eq!(state.tier.as_deref(), Some("pro"));
    }

    #[test]
    fn the_tier_follows_the_subscription_and_a_cancellation_drops_it() {
        use SubscriptionStatus::*;
        let state = given::<BillingAccount>([]).when(sub(Active, 1)).then([
            BillingAccountEvent::SubscriptionChanged(SubscriptionChanged {
                user_id: id(1),
                subscription: SubscriptionState {
                    subscription_id: "sub_1".into(),
                    status: Active,
                    tier: "pro".into(),
                    status_observed_at: at() + chrono::Duration::seconds(1),
                    current_period_end: None,
                    cancel_at_period_end: false,
                    period_observed_at: None,
                },
                source_event: "evt_1".into(),
                at: at(),
            }),
            tier_changed("free", "pro"),
        ]);
        assert_eq!(state.tier.as_deref(), Some("pro"));
        // The same report again changes nothing.
        assert_eq!(state.decide(sub(Active, 1)), Ok(vec![]));
        let state = run(vec![sub(Active, 1), sub(Canceled, 5)]);
        assert_eq!(state.tier.as_deref(), Some("free"));
        // Delivered the other way round, and twice: the same end.
        let reversed = run(vec![sub(Canceled, 5), sub(Active, 1), sub(Canceled, 5)]);
        assert_eq!(reversed.tier.as_deref().unwrap_or("free"), "free");
        assert_eq!(reversed.subscriptions, state.subscriptions);
        // A report that leaves the tier as it was records no tier change.
        let events = BillingAccount::default()
            .decide(sub(Incomplete, 1))
            .unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn an_invoice_is_recorded_once_and_a_paid_one_stays_paid() {
        let invoice = |status: &str, secs| BillingAccountCommand::RecordInvoice {
            user_id: id(1),
            invoice: Invoice {
                invoice_id: "in_1".into(),
                customer_id: "cus_1".into(),
                subscription_id: Some("sub_1".into()),
                amount: 900,
                currency: "usd".into(),
                status: status.into(),
                created: at(),
                hosted_invoice_url: None,
                description: None,
                observed_at: at() + chrono::Duration::seconds(secs),
            },
            at: at(),
        };
        let paid_first = run(vec![invoice("paid", 10), invoice("open", 5)]);
        let in_order = run(vec![invoice("open", 5), invoice("paid", 10)]);
        assert_eq!(paid_first.invoices, in_order.invoices);
        assert_eq!(paid_first.invoices["in_1"].status, "paid");
        assert_eq!(in_order.decide(invoice("paid", 10)), Ok(vec![]));
    }

    #[test]
    fn billing_has_its_own_stream_and_keeps_its_type_names() {
        assert_eq!(
            BillingAccount::stream_name(&id(1)),
            format!("billing-{}", id(1))
        );
        assert_eq!(
            BillingAccount::legacy_stream(&id(1)),
            Some(format!("account-{}", id(1)))
        );
        assert_eq!(
            event_types::ALL,
            [
                "account.stripe_customer_linked",
                "account.subscription_changed",
                "account.tier_changed",
                "account.invoice_recorded",
            ]
        );
        let recorded = run(vec![sub(SubscriptionStatus::Active, 1)]);
        let mut events = vec![linked("cus_1"), tier_changed("free", "pro")];
        events.extend(
            recorded
                .decide(BillingAccountCommand::RecordInvoice {
                    user_id: id(1),
                    invoice: Invoice {
                        invoice_id: "in_1".into(),
                        customer_id: "cus_1".into(),
                        subscription_id: None,
                        amount: 100,
                        currency: "usd".into(),
                        status: "open".into(),
                        created: at(),
                        hosted_invoice_url: None,
                        description: None,
                        observed_at: at(),
                    },
                    at: at(),
                })
                .unwrap(),
        );
        events.extend(
            BillingAccount::default()
                .decide(sub(SubscriptionStatus::Active, 2))
                .unwrap(),
        );
        assert_eq!(events.len(), 5);
        for e in events {
            let back = BillingAccountEvent::from_stored(
                e.event_type(),
                e.schema_version(),
                e.to_payload(),
            );
            assert_eq!(back, Ok(e));
        }
    }
}
