//! Billing: the prices Confab sells (from configuration), the Stripe facts an account records
//! (its customer, its subscriptions, its invoices) with the rules that make them independent of
//! the order Stripe delivers them in, and the [`StripeEvent`] aggregate that makes each
//! delivered webhook event count once.
//!
//! Stripe delivers events at least once and in no guaranteed order. Every fact here is
//! therefore merged, never overwritten blindly: a subscription's status is a last-writer-wins
//! register ordered by the `created` time of the Stripe event that reported it (ties broken by
//! how final the status is, so the result never depends on arrival order), a cancelled
//! subscription stays cancelled, and an invoice that was paid or voided stays so.

use crate::Aggregate;
use crate::catalogue::Catalogue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A price users may buy, as configured (`[[billing.prices]]`): a subscription price grants a
/// tier, a one-time price grants a number of credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Stripe's price id (`price_...`).
    pub id: String,
    /// The tier a subscription to this price gives (subscription prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The credits one purchase gives (one-time prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<i64>,
}

/// What buying a price gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceGrant<'a> {
    /// A subscription to this tier.
    Tier(&'a str),
    /// A one-time top-up of this many credits.
    Credits(i64),
}

/// How a price is bought: the `mode` of `POST /api/billing/checkout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseMode {
    /// A recurring subscription.
    Subscription,
    /// A one-time payment.
    OneTime,
}

impl PurchaseMode {
    /// Parses `subscription` or `one-time`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "subscription" => Some(PurchaseMode::Subscription),
            "one-time" => Some(PurchaseMode::OneTime),
            _ => None,
        }
    }
}

impl Price {
    /// What the price gives. A validated price has exactly one of `tier` and `credits`.
    pub fn grant(&self) -> PriceGrant<'_> {
        match (&self.tier, self.credits) {
            (Some(t), _) => PriceGrant::Tier(t),
            (None, c) => PriceGrant::Credits(c.unwrap_or(0)),
        }
    }

    /// How the price is bought.
    pub fn mode(&self) -> PurchaseMode {
        match self.grant() {
            PriceGrant::Tier(_) => PurchaseMode::Subscription,
            PriceGrant::Credits(_) => PurchaseMode::OneTime,
        }
    }
}

/// Why a price list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// A price with neither or both of `tier` and `credits`.
    #[error("price {0:?} must have exactly one of `tier` (a subscription) or `credits` (a top-up)")]
    Ambiguous(String),
    /// A price naming a tier the catalogue does not have.
    #[error("price {price:?} grants tier {tier:?}, which is not among the catalogue's tiers")]
    UnknownTier {
        /// The price.
        price: String,
        /// The tier it names.
        tier: String,
    },
    /// A top-up of zero or fewer credits.
    #[error("price {0:?} must grant a positive number of credits")]
    NoCredits(String),
    /// Two prices with one id.
    #[error("price id {0:?} appears twice")]
    Duplicate(String),
    /// An empty id.
    #[error("a price has an empty id")]
    EmptyId,
}

/// Checks every price against the catalogue.
pub fn validate_prices(prices: &[Price], catalogue: &Catalogue) -> Result<(), PriceError> {
    let mut seen = std::collections::HashSet::new();
    for p in prices {
        if p.id.trim().is_empty() {
            return Err(PriceError::EmptyId);
        }
        if !seen.insert(p.id.as_str()) {
            return Err(PriceError::Duplicate(p.id.clone()));
        }
        match (&p.tier, p.credits) {
            (Some(tier), None) => {
                if !catalogue.tiers.iter().any(|t| &t.name == tier) {
                    return Err(PriceError::UnknownTier {
                        price: p.id.clone(),
                        tier: tier.clone(),
                    });
                }
            }
            (None, Some(c)) if c <= 0 => return Err(PriceError::NoCredits(p.id.clone())),
            (None, Some(_)) => {}
            _ => return Err(PriceError::Ambiguous(p.id.clone())),
        }
    }
    Ok(())
}

/// The configured price with this id.
pub fn find_price<'a>(prices: &'a [Price], id: &str) -> Option<&'a Price> {
    prices.iter().find(|p| p.id == id)
}

/// A Stripe subscription's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// The first payment has not gone through yet.
    Incomplete,
    /// The first payment never went through; final.
    IncompleteExpired,
    /// In a free trial.
    Trialing,
    /// Paid up.
    Active,
    /// A renewal payment failed; Stripe is retrying.
    PastDue,
    /// Retries ran out; the subscription is kept but unpaid.
    Unpaid,
    /// Paused (trial ended without a payment method).
    Paused,
    /// Ended; final.
    Canceled,
}

impl SubscriptionStatus {
    /// Parses Stripe's status string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "unpaid" => Self::Unpaid,
            "paused" => Self::Paused,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Stripe's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
            Self::Canceled => "canceled",
        }
    }

    /// Whether a subscription in this status gives its tier. A failed renewal (`past_due`)
    /// keeps the tier while Stripe retries; the end of a subscription comes as `canceled`.
    pub fn entitles(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }

    /// Whether nothing can follow it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Canceled | Self::IncompleteExpired)
    }

    /// How far along a subscription's life the status is: breaks ties between two reports
    /// with the same Stripe timestamp, so that the later stage wins whatever the arrival order.
    fn stage(self) -> u8 {
        match self {
            Self::Incomplete => 0,
            Self::Trialing => 1,
            Self::Active => 2,
            Self::PastDue => 3,
            Self::Paused => 4,
            Self::Unpaid => 5,
            Self::IncompleteExpired => 6,
            Self::Canceled => 7,
        }
    }
}

/// What one Stripe event says about one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionReport {
    /// Stripe's subscription id (`sub_...`).
    pub subscription_id: String,
    /// Its status.
    pub status: SubscriptionStatus,
    /// The tier its price gives.
    pub tier: String,
    /// The end of the current period, when the event carries the subscription itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<DateTime<Utc>>,
    /// Whether it ends at the end of the period, when the event carries the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_at_period_end: Option<bool>,
    /// The `created` time of the Stripe event that reported it: the order of reports.
    pub observed_at: DateTime<Utc>,
    /// That event's id.
    pub source_event: String,
}

/// What an account knows of one subscription: two last-writer-wins registers, the status (with
/// its tier) and the period, each ordered by the Stripe event time of its latest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionState {
    /// Stripe's subscription id.
    pub subscription_id: String,
    /// The latest status.
    pub status: SubscriptionStatus,
    /// The tier its price gives.
    pub tier: String,
    /// When the status was reported.
    pub status_observed_at: DateTime<Utc>,
    /// The end of the current period, once reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<DateTime<Utc>>,
    /// Whether it ends at the period's end, once reported.
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// When the period was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_observed_at: Option<DateTime<Utc>>,
}

impl SubscriptionState {
    /// The order of status reports: a final status beats any other (Stripe never revives an
    /// ended subscription, so a late or clock-skewed update cannot either), then the later
    /// Stripe time, then the later stage of life, then the tier name. A total order, so the
    /// state is the maximum of its reports, the same for any arrival order or repetition.
    fn status_key(
        status: SubscriptionStatus,
        at: DateTime<Utc>,
        tier: &str,
    ) -> (bool, DateTime<Utc>, u8, &str) {
        (status.is_final(), at, status.stage(), tier)
    }

    /// Merges a report into what is known (or into nothing); `None` when it changes nothing.
    pub fn merge(current: Option<&SubscriptionState>, r: &SubscriptionReport) -> Option<Self> {
        let reports_period = r.current_period_end.is_some() || r.cancel_at_period_end.is_some();
        let period = (
            r.observed_at,
            r.current_period_end,
            r.cancel_at_period_end.unwrap_or(false),
        );
        let Some(cur) = current else {
            return Some(SubscriptionState {
                subscription_id: r.subscription_id.clone(),
                status: r.status,
                tier: r.tier.clone(),
                status_observed_at: r.observed_at,
                current_period_end: r.current_period_end,
                cancel_at_period_end: period.2,
                period_observed_at: reports_period.then_some(r.observed_at),
            });
        };
        let mut next = cur.clone();
        if Self::status_key(r.status, r.observed_at, &r.tier)
            > Self::status_key(cur.status, cur.status_observed_at, &cur.tier)
        {
            next.status = r.status;
            next.tier = r.tier.clone();
            next.status_observed_at = r.observed_at;
        }
        let newer_period = reports_period
            && cur.period_observed_at.is_none_or(|seen| {
                period > (seen, cur.current_period_end, cur.cancel_at_period_end)
            });
        if newer_period {
            next.current_period_end = r.current_period_end;
            next.cancel_at_period_end = period.2;
            next.period_observed_at = Some(r.observed_at);
        }
        (next != *cur).then_some(next)
    }
}

/// The tier that subscriptions give: the highest tier (by `tiers`, lowest first) of those
/// whose status entitles, or the lowest tier when none does. Tiers not in `tiers` count as
/// the lowest.
pub fn entitled_tier<'a>(
    subscriptions: impl IntoIterator<Item = &'a SubscriptionState>,
    tiers: &'a [String],
) -> String {
    let rank = |t: &str| tiers.iter().position(|n| n == t).unwrap_or(0);
    let lowest = tiers.first().cloned().unwrap_or_else(|| "free".to_owned());
    subscriptions
        .into_iter()
        .filter(|s| s.status.entitles())
        .max_by_key(|s| rank(&s.tier))
        .map(|s| tiers.get(rank(&s.tier)).cloned().unwrap_or(s.tier.clone()))
        .unwrap_or(lowest)
}

/// An invoice as an account records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    /// Stripe's invoice id (`in_...`).
    pub invoice_id: String,
    /// The customer billed.
    pub customer_id: String,
    /// The subscription it bills, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// In the currency's smallest unit (cents): what was paid once paid, what is due before.
    pub amount: i64,
    /// ISO currency code, lower-case.
    pub currency: String,
    /// draft, open, paid, uncollectible or void.
    pub status: String,
    /// When Stripe created it.
    pub created: DateTime<Utc>,
    /// Stripe's hosted page for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_invoice_url: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The `created` time of the Stripe event that reported it.
    pub observed_at: DateTime<Utc>,
}

impl Invoice {
    /// Paid and void invoices never change again.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "paid" | "void")
    }

    fn stage(&self) -> u8 {
        match self.status.as_str() {
            "draft" => 0,
            "open" => 1,
            "uncollectible" => 2,
            "void" => 3,
            "paid" => 4,
            _ => 0,
        }
    }

    /// Whether this report replaces `current`. Reports are ordered by: a final status first
    /// (a paid invoice stays paid whatever arrives late), then the later Stripe time, then the
    /// later stage; the recorded invoice is the maximum, whatever the arrival order.
    pub fn supersedes(&self, current: &Invoice) -> bool {
        let key = |i: &Invoice| {
            (
                i.is_final(),
                i.observed_at,
                i.stage(),
                i.status.clone(),
                i.amount,
            )
        };
        key(self) > key(current)
    }
}

// ---------------------------------------------------------------------------------------------
// The Stripe event aggregate.

/// One event Stripe delivered to the webhook, as a stream of its own (keyed by Stripe's event
/// id), so that a redelivery finds it and changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StripeEvent {
    /// The delivery, once received.
    pub received: Option<StripeEventReceived>,
    /// Whether its effects have been applied.
    pub processed: bool,
}

/// What can be asked of a Stripe event's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StripeEventCommand {
    /// Record a verified delivery (nothing if the event was received before).
    Receive {
        /// Stripe's event id (`evt_...`).
        event_id: String,
        /// E.g. `invoice.paid`.
        event_type: String,
        /// When Stripe created the event.
        created: DateTime<Utc>,
        /// The whole event, as Stripe sent it.
        payload: serde_json::Value,
        /// The Confab user it is about, when one is known.
        user_id: Option<Uuid>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record that its effects are applied (nothing the second time).
    MarkProcessed {
        /// What it did, for operators.
        outcome: String,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why a Stripe event command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeEventError {
    /// Marking an event processed that was never received.
    #[error("stripe event not received")]
    NotReceived,
}

/// A verified delivery of a Stripe event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeEventReceived {
    /// Stripe's event id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// When Stripe created it.
    pub created: DateTime<Utc>,
    /// The event as Stripe sent it.
    pub payload: serde_json::Value,
    /// The Confab user it is about (whose data key seals `payload`), when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// When it arrived.
    pub at: DateTime<Utc>,
}

/// A Stripe event's effects were applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeEventProcessed {
    /// Stripe's event id.
    pub event_id: String,
    /// What it did.
    pub outcome: String,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of Stripe event records.
    pub mod event_types;

    /// Everything a Stripe event's stream records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum StripeEventEvent {
        /// A verified delivery.
        #[event(RECEIVED = "stripe.event_received", version = 1)]
        Received(StripeEventReceived),
        /// Its effects applied.
        #[event(PROCESSED = "stripe.event_processed", version = 1)]
        Processed(StripeEventProcessed),
    }
}

impl StripeEvent {
    /// The stream id of Stripe event `event_id`: a name-based UUID (v5) of it, so the stream
    /// name is bounded and safe whatever the id holds.
    pub fn id_for(event_id: &str) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("stripe:event:{event_id}").as_bytes(),
        )
    }
}

impl Aggregate for StripeEvent {
    type Id = Uuid;
    type Command = StripeEventCommand;
    type Event = StripeEventEvent;
    type Error = StripeEventError;

    fn stream_name(id: &Uuid) -> String {
        format!("stripe-event-{id}")
    }

    fn decide(
        &self,
        command: StripeEventCommand,
    ) -> Result<Vec<StripeEventEvent>, StripeEventError> {
        match command {
            StripeEventCommand::Receive {
                event_id,
                event_type,
                created,
                payload,
                user_id,
                at,
            } => {
                if self.received.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![StripeEventEvent::Received(StripeEventReceived {
                    event_id,
                    event_type,
                    created,
                    payload,
                    user_id,
                    at,
                })])
            }
            StripeEventCommand::MarkProcessed { outcome, at } => {
                let received = self
                    .received
                    .as_ref()
                    .ok_or(StripeEventError::NotReceived)?;
                if self.processed {
                    return Ok(vec![]);
                }
                Ok(vec![StripeEventEvent::Processed(StripeEventProcessed {
                    event_id: received.event_id.clone(),
                    outcome,
                    at,
                })])
            }
        }
    }

    fn evolve(mut self, event: &StripeEventEvent) -> Self {
        match event {
            StripeEventEvent::Received(e) => self.received = Some(e.clone()),
            StripeEventEvent::Processed(_) => self.processed = true,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventSchema;
    use crate::testing::given;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn report(status: SubscriptionStatus, secs: i64) -> SubscriptionReport {
        SubscriptionReport {
            subscription_id: "sub_1".into(),
            status,
            tier: "pro".into(),
            current_period_end: None,
            cancel_at_period_end: None,
            observed_at: t(secs),
            source_event: format!("evt_{secs}"),
        }
    }

    /// Folds reports in the given order.
    fn fold(reports: &[SubscriptionReport]) -> Option<SubscriptionState> {
        reports.iter().fold(None, |cur, r| {
            SubscriptionState::merge(cur.as_ref(), r).or(cur)
        })
    }

    #[test]
    fn prices_are_checked_against_the_catalogue() {
        let c = Catalogue::default();
        let pro = Price {
            id: "price_pro".into(),
            tier: Some("pro".into()),
            credits: None,
        };
        let topup = Price {
            id: "price_topup".into(),
            tier: None,
            credits: Some(5_000),
        };
        assert_eq!(validate_prices(&[pro.clone(), topup.clone()], &c), Ok(()));
        assert_eq!(pro.mode(), PurchaseMode::Subscription);
        assert_eq!(topup.grant(), PriceGrant::Credits(5_000));
        let gold = Price {
            tier: Some("gold".into()),
            ..pro.clone()
        };
        assert!(matches!(
            validate_prices(&[gold], &c),
            Err(PriceError::UnknownTier { .. })
        ));
        let both = Price {
            credits: Some(1),
            ..pro.clone()
        };
        assert!(matches!(
            validate_prices(&[both], &c),
            Err(PriceError::Ambiguous(_))
        ));
        let none = Price {
            credits: Some(0),
            ..topup.clone()
        };
        assert!(matches!(
            validate_prices(&[none], &c),
            Err(PriceError::NoCredits(_))
        ));
        assert!(matches!(
            validate_prices(&[pro.clone(), pro], &c),
            Err(PriceError::Duplicate(_))
        ));
        assert_eq!(PurchaseMode::parse("one-time"), Some(PurchaseMode::OneTime));
        assert_eq!(PurchaseMode::parse("payment"), None);
    }

    #[test]
    fn a_subscription_ends_in_the_same_state_whatever_the_order_of_its_reports() {
        use SubscriptionStatus::*;
        let mut updated = report(Active, 20);
        updated.cancel_at_period_end = Some(true);
        updated.current_period_end = Some(t(1000));
        let reports = [
            report(Active, 10),
            report(Active, 12),
            updated,
            report(Canceled, 30),
            // Stripe may stamp two events in the same second.
            report(PastDue, 30),
            // A clock-skewed update cannot revive it either.
            report(Active, 99),
        ];
        let expected = fold(&reports).expect("state");
        assert_eq!(expected.status, Canceled);
        assert!(expected.cancel_at_period_end);
        assert_eq!(expected.current_period_end, Some(t(1000)));
        // Every permutation of the five reports, each delivered once or twice.
        let mut order: Vec<usize> = (0..reports.len()).collect();
        permute(&mut order, 0, &mut |o| {
            let shuffled: Vec<SubscriptionReport> = o.iter().map(|&i| reports[i].clone()).collect();
            assert_eq!(fold(&shuffled).as_ref(), Some(&expected), "{o:?}");
            let twice: Vec<SubscriptionReport> =
                shuffled.iter().chain(shuffled.iter()).cloned().collect();
            assert_eq!(fold(&twice).as_ref(), Some(&expected), "{o:?} twice");
        });
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn a_late_update_does_not_revive_a_cancelled_subscription() {
        use SubscriptionStatus::*;
        let cancelled = fold(&[report(Canceled, 10)]).expect("state");
        assert_eq!(
            SubscriptionState::merge(Some(&cancelled), &report(Active, 99)),
            None
        );
    }

    #[test]
    fn the_tier_is_the_highest_an_entitling_subscription_gives() {
        use SubscriptionStatus::*;
        let tiers = vec!["free".to_owned(), "pro".to_owned(), "team".to_owned()];
        let state = |id: &str, status, tier: &str| SubscriptionState {
            subscription_id: id.into(),
            status,
            tier: tier.into(),
            status_observed_at: t(0),
            current_period_end: None,
            cancel_at_period_end: false,
            period_observed_at: None,
        };
        assert_eq!(entitled_tier([], &tiers), "free");
        let subs = [state("a", Active, "pro"), state("b", Canceled, "team")];
        assert_eq!(entitled_tier(&subs, &tiers), "pro");
        let subs = [state("a", PastDue, "pro"), state("b", Trialing, "team")];
        assert_eq!(entitled_tier(&subs, &tiers), "team");
        let subs = [state("a", Unpaid, "pro")];
        assert_eq!(entitled_tier(&subs, &tiers), "free");
    }

    #[test]
    fn an_invoice_report_replaces_an_older_unfinished_one_only() {
        let inv = |status: &str, secs| Invoice {
            invoice_id: "in_1".into(),
            customer_id: "cus_1".into(),
            subscription_id: None,
            amount: 900,
            currency: "usd".into(),
            status: status.into(),
            created: t(0),
            hosted_invoice_url: None,
            description: None,
            observed_at: t(secs),
        };
        assert!(inv("paid", 10).supersedes(&inv("open", 5)));
        assert!(
            !inv("open", 20).supersedes(&inv("paid", 10)),
            "paid is final"
        );
        assert!(!inv("open", 5).supersedes(&inv("open", 10)), "older");
        assert!(
            inv("paid", 5).supersedes(&inv("open", 5)),
            "tie: the later stage"
        );
        assert!(!inv("paid", 5).supersedes(&inv("paid", 5)), "the same");
    }

    #[test]
    fn a_stripe_event_is_received_and_processed_once() {
        let received = StripeEventEvent::Received(StripeEventReceived {
            event_id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            created: t(0),
            payload: serde_json::json!({ "id": "evt_1" }),
            user_id: None,
            at: t(1),
        });
        let receive = StripeEventCommand::Receive {
            event_id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            created: t(0),
            payload: serde_json::json!({ "id": "evt_1" }),
            user_id: None,
            at: t(1),
        };
        given::<StripeEvent>([])
            .when(receive.clone())
            .then([received.clone()]);
        given::<StripeEvent>([received.clone()])
            .when(receive)
            .then([]);
        let mark = StripeEventCommand::MarkProcessed {
            outcome: "ok".into(),
            at: t(2),
        };
        given::<StripeEvent>([])
            .when(mark.clone())
            .then_error(StripeEventError::NotReceived);
        let processed = StripeEventEvent::Processed(StripeEventProcessed {
            event_id: "evt_1".into(),
            outcome: "ok".into(),
            at: t(2),
        });
        given::<StripeEvent>([received.clone()])
            .when(mark.clone())
            .then([processed.clone()]);
        given::<StripeEvent>([received.clone(), processed.clone()])
            .when(mark)
            .then([]);
        for e in [received, processed] {
            let back = StripeEventEvent::from_stored(e.event_type(), 1, e.to_payload()).unwrap();
            assert_eq!(back, e);
        }
        assert_eq!(StripeEvent::id_for("evt_1"), StripeEvent::id_for("evt_1"));
        assert_ne!(StripeEvent::id_for("evt_1"), StripeEvent::id_for("evt_2"));
    }
}
