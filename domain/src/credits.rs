//! The credit account: one ledger per user.
//!
//! Rules: the balance never goes below zero. An LLM call first reserves its worst-case cost
//! (refused when the balance less what other calls hold cannot cover it), then consumes what the
//! provider reports it used, and the rest is released; a failed call releases everything. A
//! month's reset raises the balance to the tier's monthly allowance (it never takes credits
//! away) and happens once per calendar month (UTC), however often it is asked for. The account
//! opens on its first command with the starting allowance, as that month's reset. Every command
//! is idempotent by its id: a retried reservation, consumption, release, reset or grant changes
//! nothing the second time.
//!
//! A reservation expires: a hold whose call never settles (a crash between reserving and queuing
//! the job, a job that ran out of attempts) is released by the sweeper once past its
//! `expires_at`, as its own event ([`CreditsHoldExpired`]). A call that still finishes after
//! that is charged what it used from what is free then, never below zero and once.

use crate::Aggregate;
use crate::UpcastError;
use crate::schema::parse;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// A command to a user's credit account.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditCommand {
    /// The account holder.
    pub user: Uuid,
    /// The balance the account opens with if this is its first command (the tier's starting
    /// allowance).
    pub opening: i64,
    /// Now.
    pub at: DateTime<Utc>,
    /// What to do.
    pub action: CreditAction,
}

/// What a credit command does.
#[derive(Debug, Clone, PartialEq)]
pub enum CreditAction {
    /// Open the account (with the command's `opening`) if it has not opened; nothing else.
    /// Billing opens it before it changes the tier, so the opening allowance is the tier's
    /// before the change whatever order the payment's events arrive in.
    Open,
    /// Hold `amount` for an LLM call.
    Reserve {
        /// The reservation's id (the reply's id).
        reservation_id: Uuid,
        /// The call's worst-case cost.
        amount: i64,
        /// The chat the call answers in.
        chat_id: Uuid,
        /// The model id.
        model: String,
        /// When the hold lapses if nothing settles it.
        expires_at: DateTime<Utc>,
    },
    /// Charge what a call used and release the rest of its reservation.
    Consume {
        /// The reservation.
        reservation_id: Uuid,
        /// What the call cost by the provider's token counts.
        used: i64,
        /// Input tokens reported.
        input_tokens: u64,
        /// Output tokens reported.
        output_tokens: u64,
    },
    /// Give a reservation back whole (the call failed before producing anything).
    Release {
        /// The reservation.
        reservation_id: Uuid,
    },
    /// Release a hold past its `expires_at` (at the command's `at`): nothing settled it. A
    /// hold not yet expired, or no longer held, is left as it is.
    Expire {
        /// The reservation.
        reservation_id: Uuid,
    },
    /// The monthly reset, for the calendar month of `at`.
    Reset {
        /// The tier's monthly allowance.
        allowance: i64,
    },
    /// Usage billed after the fact, with no reservation before it (a document's embeddings):
    /// `amount` is charged once per `charge_id`, and at most what the balance less every hold
    /// leaves, so the balance never goes below zero.
    Charge {
        /// A unique reference of the work charged (e.g. a document, model and batch), so a
        /// retried job charges nothing more.
        charge_id: String,
        /// What the work cost (zero is recorded, as a transaction of nothing).
        amount: i64,
        /// The model used.
        model: String,
        /// The tokens the provider reported.
        input_tokens: u64,
        /// The document the work was for.
        document_id: Option<Uuid>,
    },
    /// An operator's correction of the balance, by `amount` (negative takes credits away),
    /// never below zero; recorded with who made it and why.
    Adjust {
        /// A unique id, so a retried adjustment changes nothing more.
        adjustment_id: Uuid,
        /// Credits added (negative: taken away); never zero.
        amount: i64,
        /// Why, as the operator put it.
        reason: String,
        /// Who: the operator's name.
        by: String,
    },
    /// Credits bought or granted by a subscription.
    Grant {
        /// A unique reference (e.g. the payment's id), so a replay grants nothing.
        grant_id: String,
        /// Top-up or subscription.
        kind: GrantKind,
        /// How many.
        amount: i64,
    },
}

/// Why credits were granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantKind {
    /// A one-time purchase.
    Topup,
    /// A subscription's period.
    Subscription,
}

/// Why a credit command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The balance, less what other calls hold, does not cover the amount.
    #[error("insufficient credits: {needed} needed, {available} available")]
    InsufficientCredits {
        /// What the request needs.
        needed: i64,
        /// What is free to use.
        available: i64,
    },
    /// An amount that is zero or negative.
    #[error("credit amounts must be positive")]
    InvalidAmount,
    /// Consuming from a reservation that was never made.
    #[error("no such reservation")]
    UnknownReservation,
    /// An adjustment that would take the balance below zero.
    #[error("the balance is {balance}; an adjustment of {amount} would take it below zero")]
    BelowZero {
        /// The balance now.
        balance: i64,
        /// The adjustment asked for.
        amount: i64,
    },
}

/// A month's reset (or the account's opening): the balance rose by `amount` to `balance_after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsReset {
    /// The account holder.
    pub user: Uuid,
    /// The calendar month, `YYYY-MM`.
    pub period: String,
    /// How many credits were added (zero when the balance was already at the allowance).
    pub amount: i64,
    /// The balance after.
    pub balance_after: i64,
    /// When.
    pub at: DateTime<Utc>,
}

/// Credits held for a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsReserved {
    /// The account holder.
    pub user: Uuid,
    /// The reservation.
    pub reservation_id: Uuid,
    /// How many.
    pub amount: i64,
    /// The chat.
    pub chat_id: Uuid,
    /// The model id.
    pub model: String,
    /// When.
    pub at: DateTime<Utc>,
    /// When the hold lapses if nothing settles it (version 2; version 1 reservations lapse
    /// [`DEFAULT_HOLD_TTL`] after they were made).
    pub expires_at: DateTime<Utc>,
}

/// How long a hold lasts when its reservation recorded no expiry (those made before holds
/// expired), and the default for new ones.
pub const DEFAULT_HOLD_TTL: Duration = Duration::hours(1);

/// `credits.reserved` as version 1 wrote it: no expiry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreditsReservedV1 {
    user: Uuid,
    reservation_id: Uuid,
    amount: i64,
    chat_id: Uuid,
    model: String,
    at: DateTime<Utc>,
}

/// Reads a version 1 `credits.reserved`: it lapses [`DEFAULT_HOLD_TTL`] after it was made.
fn reserved_v1(payload: serde_json::Value) -> Result<CreditsReserved, UpcastError> {
    let v1: CreditsReservedV1 = parse(event_types::RESERVED, payload)?;
    Ok(CreditsReserved {
        user: v1.user,
        reservation_id: v1.reservation_id,
        amount: v1.amount,
        chat_id: v1.chat_id,
        model: v1.model,
        at: v1.at,
        expires_at: v1.at + DEFAULT_HOLD_TTL,
    })
}

/// A hold lapsed: nothing settled it by its expiry, so the sweeper gave it back whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsHoldExpired {
    /// The account holder.
    pub user: Uuid,
    /// The reservation.
    pub reservation_id: Uuid,
    /// Credits the hold gave back.
    pub amount: i64,
    /// The chat it was for.
    pub chat_id: Uuid,
    /// The model it was for.
    pub model: String,
    /// When it lapsed.
    pub expires_at: DateTime<Utc>,
    /// The balance, unchanged (a hold never took credits away, it kept them from use).
    pub balance: i64,
    /// When it was released.
    pub at: DateTime<Utc>,
}

/// A call's cost was charged; `released` of its reservation went back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsConsumed {
    /// The account holder.
    pub user: Uuid,
    /// The reservation.
    pub reservation_id: Uuid,
    /// Credits charged.
    pub amount: i64,
    /// Credits of the reservation not used.
    pub released: i64,
    /// The balance after.
    pub balance_after: i64,
    /// The chat.
    pub chat_id: Uuid,
    /// The model id.
    pub model: String,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// When.
    pub at: DateTime<Utc>,
}

/// A reservation went back whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsReleased {
    /// The account holder.
    pub user: Uuid,
    /// The reservation.
    pub reservation_id: Uuid,
    /// How many.
    pub amount: i64,
    /// When.
    pub at: DateTime<Utc>,
}

/// Usage without a reservation was charged (a document's embeddings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsCharged {
    /// The account holder.
    pub user: Uuid,
    /// The unique reference of the work charged.
    pub charge_id: String,
    /// Credits charged.
    pub amount: i64,
    /// The balance after.
    pub balance_after: i64,
    /// The model used.
    pub model: String,
    /// Tokens the provider reported.
    pub input_tokens: u64,
    /// The document the work was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<Uuid>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Credits were bought or granted by a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsGranted {
    /// The account holder.
    pub user: Uuid,
    /// The unique reference.
    pub grant_id: String,
    /// Why.
    pub kind: GrantKind,
    /// How many.
    pub amount: i64,
    /// The balance after.
    pub balance_after: i64,
    /// When.
    pub at: DateTime<Utc>,
}

/// An operator corrected the balance: `amount` added (negative: taken away), with who and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsAdjusted {
    /// The account holder.
    pub user: Uuid,
    /// The adjustment's unique id.
    pub adjustment_id: Uuid,
    /// Credits added (negative: taken away).
    pub amount: i64,
    /// The balance after.
    pub balance_after: i64,
    /// Why, as the operator put it.
    pub reason: String,
    /// Who made it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of credit events.
    pub mod event_types;

    /// Everything a credit account records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum CreditEvent {
        /// A month's reset or the opening.
        #[event(RESET = "credits.reset", version = 1)]
        Reset(CreditsReset),
        /// Credits held for a call.
        #[event(RESERVED = "credits.reserved", version = 2, upcast(1 => reserved_v1))]
        Reserved(CreditsReserved),
        /// A call's cost charged.
        #[event(CONSUMED = "credits.consumed", version = 1)]
        Consumed(CreditsConsumed),
        /// A reservation given back.
        #[event(RELEASED = "credits.released", version = 1)]
        Released(CreditsReleased),
        /// Credits bought or granted.
        #[event(GRANTED = "credits.granted", version = 1)]
        Granted(CreditsGranted),
        /// A hold released because it expired.
        #[event(HOLD_EXPIRED = "credits.hold_expired", version = 1)]
        HoldExpired(CreditsHoldExpired),
        /// Usage without a reservation charged.
        #[event(CHARGED = "credits.charged", version = 1)]
        Charged(CreditsCharged),
        /// An operator's correction of the balance.
        #[event(ADJUSTED = "credits.adjusted", version = 1)]
        Adjusted(CreditsAdjusted),
    }
}

/// A reservation still held.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// Credits held.
    pub amount: i64,
    /// The chat.
    pub chat_id: Uuid,
    /// The model id.
    pub model: String,
    /// When it lapses.
    pub expires_at: DateTime<Utc>,
}

/// The credit account's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreditAccount {
    /// Whether the account has opened.
    pub opened: bool,
    /// Credits owned (holds not subtracted).
    pub balance: i64,
    /// Reservations still held.
    pub holds: HashMap<Uuid, Hold>,
    /// Reservations consumed or released (expired ones too).
    pub closed: HashSet<Uuid>,
    /// Holds released because they expired and not charged since: a call that finishes late
    /// is still charged, once.
    pub expired: HashMap<Uuid, Hold>,
    /// The last month reset, `YYYY-MM`.
    pub last_reset: Option<String>,
    /// Grants applied.
    pub grants: HashSet<String>,
    /// Charges (without reservation) applied.
    pub charges: HashSet<String>,
    /// Operator adjustments applied.
    pub adjustments: HashSet<Uuid>,
}

impl CreditAccount {
    /// Credits free to reserve: the balance less every hold.
    pub fn available(&self) -> i64 {
        self.balance - self.holds.values().map(|h| h.amount).sum::<i64>()
    }
}

/// The calendar month (UTC) of `at`, `YYYY-MM`.
pub fn period_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

impl Aggregate for CreditAccount {
    type Id = Uuid;
    type Command = CreditCommand;
    type Event = CreditEvent;
    type Error = CreditError;

    fn stream_name(id: &Uuid) -> String {
        format!("credits-{id}")
    }

    fn decide(&self, c: CreditCommand) -> Result<Vec<CreditEvent>, CreditError> {
        let mut events = Vec::new();
        let mut state = std::borrow::Cow::Borrowed(self);
        if !self.opened {
            let opening = CreditEvent::Reset(CreditsReset {
                user: c.user,
                period: period_of(c.at),
                amount: c.opening.max(0),
                balance_after: c.opening.max(0),
                at: c.at,
            });
            state = std::borrow::Cow::Owned(self.clone().evolve(&opening));
            events.push(opening);
        }
        let s = state.as_ref();
        let (user, at) = (c.user, c.at);
        match c.action {
            CreditAction::Open => {}
            CreditAction::Reserve {
                reservation_id,
                amount,
                chat_id,
                model,
                expires_at,
            } => {
                if amount <= 0 {
                    return Err(CreditError::InvalidAmount);
                }
                if s.holds.contains_key(&reservation_id) || s.closed.contains(&reservation_id) {
                    return Ok(events);
                }
                if amount > s.available() {
                    return Err(CreditError::InsufficientCredits {
                        needed: amount,
                        available: s.available().max(0),
                    });
                }
                events.push(CreditEvent::Reserved(CreditsReserved {
                    user,
                    reservation_id,
                    amount,
                    chat_id,
                    model,
                    at,
                    expires_at,
                }));
            }
            CreditAction::Consume {
                reservation_id,
                used,
                input_tokens,
                output_tokens,
            } => {
                if let Some(hold) = s.expired.get(&reservation_id) {
                    // The hold lapsed before the call settled, and its credits went back: the
                    // call is charged now, from what is free (other holds stay whole), never
                    // below zero.
                    let amount = used.max(0).min(s.available().max(0));
                    events.push(CreditEvent::Consumed(CreditsConsumed {
                        user,
                        reservation_id,
                        amount,
                        released: 0,
                        balance_after: s.balance - amount,
                        chat_id: hold.chat_id,
                        model: hold.model.clone(),
                        input_tokens,
                        output_tokens,
                        at,
                    }));
                    return Ok(events);
                }
                if s.closed.contains(&reservation_id) {
                    return Ok(events);
                }
                let hold = s
                    .holds
                    .get(&reservation_id)
                    .ok_or(CreditError::UnknownReservation)?;
                // Never below zero: a call that overran its estimate is charged at most what
                // the other holds leave of the balance.
                let others = s.balance - s.available() - hold.amount;
                let amount = used.max(0).min(s.balance - others);
                events.push(CreditEvent::Consumed(CreditsConsumed {
                    user,
                    reservation_id,
                    amount,
                    released: (hold.amount - amount).max(0),
                    balance_after: s.balance - amount,
                    chat_id: hold.chat_id,
                    model: hold.model.clone(),
                    input_tokens,
                    output_tokens,
                    at,
                }));
            }
            CreditAction::Release { reservation_id } => {
                if let Some(hold) = s.holds.get(&reservation_id) {
                    events.push(CreditEvent::Released(CreditsReleased {
                        user,
                        reservation_id,
                        amount: hold.amount,
                        at,
                    }));
                }
            }
            CreditAction::Expire { reservation_id } => {
                if let Some(hold) = s.holds.get(&reservation_id)
                    && hold.expires_at <= at
                {
                    events.push(CreditEvent::HoldExpired(CreditsHoldExpired {
                        user,
                        reservation_id,
                        amount: hold.amount,
                        chat_id: hold.chat_id,
                        model: hold.model.clone(),
                        expires_at: hold.expires_at,
                        balance: s.balance,
                        at,
                    }));
                }
            }
            CreditAction::Reset { allowance } => {
                let period = period_of(at);
                if s.last_reset.as_deref().is_some_and(|last| *last >= *period) {
                    return Ok(events);
                }
                let balance_after = s.balance.max(allowance);
                events.push(CreditEvent::Reset(CreditsReset {
                    user,
                    period,
                    amount: balance_after - s.balance,
                    balance_after,
                    at,
                }));
            }
            CreditAction::Charge {
                charge_id,
                amount,
                model,
                input_tokens,
                document_id,
            } => {
                if amount < 0 {
                    return Err(CreditError::InvalidAmount);
                }
                if s.charges.contains(&charge_id) {
                    return Ok(events);
                }
                let amount = amount.min(s.available().max(0));
                events.push(CreditEvent::Charged(CreditsCharged {
                    user,
                    charge_id,
                    amount,
                    balance_after: s.balance - amount,
                    model,
                    input_tokens,
                    document_id,
                    at,
                }));
            }
            CreditAction::Adjust {
                adjustment_id,
                amount,
                reason,
                by,
            } => {
                if s.adjustments.contains(&adjustment_id) {
                    return Ok(events);
                }
                if amount == 0 {
                    return Err(CreditError::InvalidAmount);
                }
                if s.balance + amount < 0 {
                    return Err(CreditError::BelowZero {
                        balance: s.balance,
                        amount,
                    });
                }
                events.push(CreditEvent::Adjusted(CreditsAdjusted {
                    user,
                    adjustment_id,
                    amount,
                    balance_after: s.balance + amount,
                    reason,
                    by,
                    at,
                }));
            }
            CreditAction::Grant {
                grant_id,
                kind,
                amount,
            } => {
                if amount <= 0 {
                    return Err(CreditError::InvalidAmount);
                }
                if s.grants.contains(&grant_id) {
                    return Ok(events);
                }
                events.push(CreditEvent::Granted(CreditsGranted {
                    user,
                    grant_id,
                    kind,
                    amount,
                    balance_after: s.balance + amount,
                    at,
                }));
            }
        }
        Ok(events)
    }

    fn evolve(mut self, event: &CreditEvent) -> Self {
        match event {
            CreditEvent::Reset(e) => {
                self.opened = true;
                self.balance = e.balance_after;
                self.last_reset = Some(e.period.clone());
            }
            CreditEvent::Reserved(e) => {
                self.holds.insert(
                    e.reservation_id,
                    Hold {
                        amount: e.amount,
                        chat_id: e.chat_id,
                        model: e.model.clone(),
                        expires_at: e.expires_at,
                    },
                );
            }
            CreditEvent::Consumed(e) => {
                self.holds.remove(&e.reservation_id);
                self.expired.remove(&e.reservation_id);
                self.closed.insert(e.reservation_id);
                self.balance = e.balance_after;
            }
            CreditEvent::Released(e) => {
                self.holds.remove(&e.reservation_id);
                self.closed.insert(e.reservation_id);
            }
            CreditEvent::Granted(e) => {
                self.grants.insert(e.grant_id.clone());
                self.balance = e.balance_after;
            }
            CreditEvent::HoldExpired(e) => {
                if let Some(hold) = self.holds.remove(&e.reservation_id) {
                    self.expired.insert(e.reservation_id, hold);
                }
                self.closed.insert(e.reservation_id);
            }
            CreditEvent::Charged(e) => {
                self.charges.insert(e.charge_id.clone());
                self.balance = e.balance_after;
            }
            CreditEvent::Adjusted(e) => {
                self.adjustments.insert(e.adjustment_id);
                self.balance = e.balance_after;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;
    use crate::{EventSchema, UpcastError};
    use chrono::TimeZone;

    fn user() -> Uuid {
        Uuid::from_u128(1)
    }
    fn at(month: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, month, 3, 12, 0, 0).unwrap()
    }
    fn cmd(month: u32, action: CreditAction) -> CreditCommand {
        CreditCommand {
            user: user(),
            opening: 100,
            at: at(month),
            action,
        }
    }
    fn opened(month: u32, balance: i64) -> CreditEvent {
        CreditEvent::Reset(CreditsReset {
            user: user(),
            period: format!("2026-{month:02}"),
            amount: balance,
            balance_after: balance,
            at: at(month),
        })
    }
    /// When holds made in [`at`]`(1)` lapse.
    fn lapse() -> DateTime<Utc> {
        at(1) + Duration::minutes(10)
    }
    fn reserve(id: u128, amount: i64) -> CreditAction {
        CreditAction::Reserve {
            reservation_id: Uuid::from_u128(id),
            amount,
            chat_id: Uuid::from_u128(9),
            model: "m".into(),
            expires_at: lapse(),
        }
    }
    fn reserved(id: u128, amount: i64) -> CreditEvent {
        CreditEvent::Reserved(CreditsReserved {
            user: user(),
            reservation_id: Uuid::from_u128(id),
            amount,
            chat_id: Uuid::from_u128(9),
            model: "m".into(),
            at: at(1),
            expires_at: lapse(),
        })
    }
    fn expire_at(id: u128, when: DateTime<Utc>) -> CreditCommand {
        CreditCommand {
            user: user(),
            opening: 100,
            at: when,
            action: CreditAction::Expire {
                reservation_id: Uuid::from_u128(id),
            },
        }
    }
    fn hold_expired(id: u128, amount: i64, balance: i64, when: DateTime<Utc>) -> CreditEvent {
        CreditEvent::HoldExpired(CreditsHoldExpired {
            user: user(),
            reservation_id: Uuid::from_u128(id),
            amount,
            chat_id: Uuid::from_u128(9),
            model: "m".into(),
            expires_at: lapse(),
            balance,
            at: when,
        })
    }
    fn consume(id: u128, used: i64) -> CreditAction {
        CreditAction::Consume {
            reservation_id: Uuid::from_u128(id),
            used,
            input_tokens: 10,
            output_tokens: 20,
        }
    }
    fn consumed(id: u128, amount: i64, released: i64, balance_after: i64) -> CreditEvent {
        CreditEvent::Consumed(CreditsConsumed {
            user: user(),
            reservation_id: Uuid::from_u128(id),
            amount,
            released,
            balance_after,
            chat_id: Uuid::from_u128(9),
            model: "m".into(),
            input_tokens: 10,
            output_tokens: 20,
            at: at(1),
        })
    }

    #[test]
    fn the_first_command_opens_the_account_with_the_starting_allowance() {
        given::<CreditAccount>([])
            .when(cmd(1, reserve(7, 30)))
            .then([opened(1, 100), reserved(7, 30)]);
    }

    #[test]
    fn a_reservation_the_free_balance_cannot_cover_is_refused() {
        given::<CreditAccount>([opened(1, 100), reserved(7, 80)])
            .when(cmd(1, reserve(8, 21)))
            .then_error(CreditError::InsufficientCredits {
                needed: 21,
                available: 20,
            });
        given::<CreditAccount>([opened(1, 100), reserved(7, 80)])
            .when(cmd(1, reserve(8, 20)))
            .then([reserved(8, 20)]);
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, reserve(8, 0)))
            .then_error(CreditError::InvalidAmount);
    }

    #[test]
    fn a_retried_reservation_holds_nothing_more() {
        given::<CreditAccount>([opened(1, 100), reserved(7, 80)])
            .when(cmd(1, reserve(7, 80)))
            .then([]);
    }

    #[test]
    fn consuming_charges_usage_and_releases_the_rest_once() {
        let consume = |used| CreditAction::Consume {
            reservation_id: Uuid::from_u128(7),
            used,
            input_tokens: 10,
            output_tokens: 20,
        };
        let state = given::<CreditAccount>([opened(1, 100), reserved(7, 50)])
            .when(cmd(1, consume(12)))
            .then([CreditEvent::Consumed(CreditsConsumed {
                user: user(),
                reservation_id: Uuid::from_u128(7),
                amount: 12,
                released: 38,
                balance_after: 88,
                chat_id: Uuid::from_u128(9),
                model: "m".into(),
                input_tokens: 10,
                output_tokens: 20,
                at: at(1),
            })]);
        assert_eq!(state.available(), 88);
        let history = [
            opened(1, 100),
            reserved(7, 50),
            CreditEvent::Consumed(CreditsConsumed {
                user: user(),
                reservation_id: Uuid::from_u128(7),
                amount: 12,
                released: 38,
                balance_after: 88,
                chat_id: Uuid::from_u128(9),
                model: "m".into(),
                input_tokens: 10,
                output_tokens: 20,
                at: at(1),
            }),
        ];
        given::<CreditAccount>(history.clone())
            .when(cmd(1, consume(12)))
            .then([]);
        given::<CreditAccount>(history)
            .when(cmd(
                1,
                CreditAction::Release {
                    reservation_id: Uuid::from_u128(7),
                },
            ))
            .then([]);
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, consume(1)))
            .then_error(CreditError::UnknownReservation);
    }

    #[test]
    fn an_overrun_never_takes_the_balance_below_zero_or_into_other_holds() {
        let state = given::<CreditAccount>([opened(1, 100), reserved(7, 50), reserved(8, 30)])
            .when(cmd(
                1,
                CreditAction::Consume {
                    reservation_id: Uuid::from_u128(7),
                    used: 500,
                    input_tokens: 0,
                    output_tokens: 0,
                },
            ))
            .then([CreditEvent::Consumed(CreditsConsumed {
                user: user(),
                reservation_id: Uuid::from_u128(7),
                amount: 70,
                released: 0,
                balance_after: 30,
                chat_id: Uuid::from_u128(9),
                model: "m".into(),
                input_tokens: 0,
                output_tokens: 0,
                at: at(1),
            })]);
        assert_eq!(state.available(), 0);
    }

    #[test]
    fn releasing_gives_a_hold_back_whole() {
        let state = given::<CreditAccount>([opened(1, 100), reserved(7, 50)])
            .when(cmd(
                1,
                CreditAction::Release {
                    reservation_id: Uuid::from_u128(7),
                },
            ))
            .then([CreditEvent::Released(CreditsReleased {
                user: user(),
                reservation_id: Uuid::from_u128(7),
                amount: 50,
                at: at(1),
            })]);
        assert_eq!(state.available(), 100);
    }

    #[test]
    fn a_month_is_reset_once_and_a_reset_never_takes_credits_away() {
        let reset = CreditAction::Reset { allowance: 100 };
        // Opening in January counts as January's reset.
        given::<CreditAccount>([])
            .when(cmd(1, reset.clone()))
            .then([opened(1, 100)]);
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, reset.clone()))
            .then([]);
        let spent = CreditEvent::Consumed(CreditsConsumed {
            user: user(),
            reservation_id: Uuid::from_u128(7),
            amount: 60,
            released: 0,
            balance_after: 40,
            chat_id: Uuid::from_u128(9),
            model: "m".into(),
            input_tokens: 0,
            output_tokens: 0,
            at: at(1),
        });
        let state = given::<CreditAccount>([opened(1, 100), reserved(7, 60), spent.clone()])
            .when(cmd(2, reset.clone()))
            .then([CreditEvent::Reset(CreditsReset {
                user: user(),
                period: "2026-02".into(),
                amount: 60,
                balance_after: 100,
                at: at(2),
            })]);
        assert_eq!(state.balance, 100);
        given::<CreditAccount>([opened(1, 100), opened(2, 150)])
            .when(cmd(3, reset))
            .then([CreditEvent::Reset(CreditsReset {
                user: user(),
                period: "2026-03".into(),
                amount: 0,
                balance_after: 150,
                at: at(3),
            })]);
    }

    #[test]
    fn opening_opens_once_and_does_nothing_else() {
        given::<CreditAccount>([])
            .when(cmd(1, CreditAction::Open))
            .then([opened(1, 100)]);
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(2, CreditAction::Open))
            .then([]);
    }

    #[test]
    fn a_grant_applies_once() {
        let grant = CreditAction::Grant {
            grant_id: "cs_1".into(),
            kind: GrantKind::Topup,
            amount: 500,
        };
        let granted = CreditEvent::Granted(CreditsGranted {
            user: user(),
            grant_id: "cs_1".into(),
            kind: GrantKind::Topup,
            amount: 500,
            balance_after: 600,
            at: at(1),
        });
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, grant.clone()))
            .then([granted.clone()]);
        given::<CreditAccount>([opened(1, 100), granted])
            .when(cmd(1, grant))
            .then([]);
    }

    fn charge(id: &str, amount: i64) -> CreditAction {
        CreditAction::Charge {
            charge_id: id.into(),
            amount,
            model: "e".into(),
            input_tokens: 1234,
            document_id: Some(Uuid::from_u128(5)),
        }
    }
    fn charged(id: &str, amount: i64, balance_after: i64) -> CreditEvent {
        CreditEvent::Charged(CreditsCharged {
            user: user(),
            charge_id: id.into(),
            amount,
            balance_after,
            model: "e".into(),
            input_tokens: 1234,
            document_id: Some(Uuid::from_u128(5)),
            at: at(1),
        })
    }

    #[test]
    fn a_charge_applies_once_per_id() {
        let state = given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, charge("doc/e/1", 30)))
            .then([charged("doc/e/1", 30, 70)]);
        assert_eq!(state.balance, 70);
        given::<CreditAccount>([opened(1, 100), charged("doc/e/1", 30, 70)])
            .when(cmd(1, charge("doc/e/1", 30)))
            .then([]);
        given::<CreditAccount>([opened(1, 100), charged("doc/e/1", 30, 70)])
            .when(cmd(1, charge("doc/e/2", 5)))
            .then([charged("doc/e/2", 5, 65)]);
    }

    #[test]
    fn a_free_charge_is_recorded_and_a_negative_one_refused() {
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, charge("free", 0)))
            .then([charged("free", 0, 100)]);
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, charge("bad", -1)))
            .then_error(CreditError::InvalidAmount);
    }

    #[test]
    fn a_charge_never_takes_the_balance_below_zero_or_into_holds() {
        let state = given::<CreditAccount>([opened(1, 100), reserved(7, 60)])
            .when(cmd(1, charge("big", 500)))
            .then([charged("big", 40, 60)]);
        assert_eq!(state.available(), 0);
    }

    #[test]
    fn an_expired_hold_is_released_whole_and_frees_its_credits() {
        let late = lapse() + Duration::seconds(1);
        let state = given::<CreditAccount>([opened(1, 100), reserved(7, 80), reserved(8, 10)])
            .when(expire_at(7, late))
            .then([hold_expired(7, 80, 100, late)]);
        assert_eq!(state.available(), 90, "only the other hold is left");
        assert_eq!(state.balance, 100, "a hold never took credits away");
        // Exactly at its expiry it lapses too.
        given::<CreditAccount>([opened(1, 100), reserved(7, 80)])
            .when(expire_at(7, lapse()))
            .then([hold_expired(7, 80, 100, lapse())]);
    }

    #[test]
    fn a_hold_not_yet_expired_or_no_longer_held_is_left_alone() {
        let early = lapse() - Duration::seconds(1);
        let late = lapse() + Duration::seconds(1);
        given::<CreditAccount>([opened(1, 100), reserved(7, 80)])
            .when(expire_at(7, early))
            .then([]);
        // Expiring twice releases once.
        given::<CreditAccount>([
            opened(1, 100),
            reserved(7, 80),
            hold_expired(7, 80, 100, late),
        ])
        .when(expire_at(7, late))
        .then([]);
        // Settled before the sweeper came: nothing to release.
        given::<CreditAccount>([opened(1, 100), reserved(7, 80), consumed(7, 12, 68, 88)])
            .when(expire_at(7, late))
            .then([]);
        given::<CreditAccount>([opened(1, 100)])
            .when(expire_at(7, late))
            .then([]);
    }

    #[test]
    fn a_call_that_finishes_after_its_hold_expired_is_charged_once_from_what_is_free() {
        let late = lapse() + Duration::seconds(1);
        let history = [
            opened(1, 100),
            reserved(7, 50),
            hold_expired(7, 50, 100, late),
        ];
        let state = given::<CreditAccount>(history.clone())
            .when(cmd(1, consume(7, 12)))
            .then([consumed(7, 12, 0, 88)]);
        assert_eq!(state.available(), 88);
        assert!(state.expired.is_empty());
        // Charged once: a retried consumption, a release or a re-reservation changes nothing.
        let mut charged = history.to_vec();
        charged.push(consumed(7, 12, 0, 88));
        given::<CreditAccount>(charged.clone())
            .when(cmd(1, consume(7, 12)))
            .then([]);
        given::<CreditAccount>(charged.clone())
            .when(cmd(
                1,
                CreditAction::Release {
                    reservation_id: Uuid::from_u128(7),
                },
            ))
            .then([]);
        given::<CreditAccount>(charged)
            .when(cmd(1, reserve(7, 50)))
            .then([]);
        // A release after the expiry gives nothing back a second time.
        given::<CreditAccount>(history)
            .when(cmd(
                1,
                CreditAction::Release {
                    reservation_id: Uuid::from_u128(7),
                },
            ))
            .then([]);
    }

    #[test]
    fn a_late_charge_never_goes_below_zero_or_into_other_holds() {
        let late = lapse() + Duration::seconds(1);
        // After the lapse, 90 of the 100 were held again by another call: 10 are free.
        let state = given::<CreditAccount>([
            opened(1, 100),
            reserved(7, 50),
            hold_expired(7, 50, 100, late),
            reserved(8, 90),
        ])
        .when(cmd(1, consume(7, 40)))
        .then([consumed(7, 10, 0, 90)]);
        assert_eq!(state.available(), 0);
        // Nothing free at all: the charge is zero, recorded with its tokens, and the balance
        // stays.
        given::<CreditAccount>([
            opened(1, 100),
            reserved(7, 50),
            hold_expired(7, 50, 100, late),
            reserved(8, 100),
        ])
        .when(cmd(1, consume(7, 40)))
        .then([consumed(7, 0, 0, 100)]);
    }

    #[test]
    fn a_reservation_recorded_before_expiries_lapses_after_the_default_ttl() {
        let v1 = serde_json::json!({
            "user": user(),
            "reservationId": Uuid::from_u128(7),
            "amount": 30,
            "chatId": Uuid::from_u128(9),
            "model": "m",
            "at": at(1),
        });
        let read = CreditEvent::from_stored("credits.reserved", 1, v1).expect("upcast");
        let CreditEvent::Reserved(r) = &read else {
            panic!("{read:?}")
        };
        assert_eq!(r.expires_at, at(1) + DEFAULT_HOLD_TTL);
        assert_eq!(r.amount, 30);
        // Such a hold is swept like any other.
        given::<CreditAccount>([opened(1, 100), read.clone()])
            .when(expire_at(7, at(1) + DEFAULT_HOLD_TTL))
            .then([CreditEvent::HoldExpired(CreditsHoldExpired {
                user: user(),
                reservation_id: Uuid::from_u128(7),
                amount: 30,
                chat_id: Uuid::from_u128(9),
                model: "m".into(),
                expires_at: at(1) + DEFAULT_HOLD_TTL,
                balance: 100,
                at: at(1) + DEFAULT_HOLD_TTL,
            })]);
        assert_eq!(read.schema_version(), 2, "written as version 2 from now on");
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        for e in [
            opened(1, 100),
            reserved(7, 5),
            hold_expired(7, 5, 100, lapse()),
            charged("c", 3, 97),
            adjusted(5, -3, 97),
        ] {
            let back = CreditEvent::from_stored(e.event_type(), e.schema_version(), e.to_payload())
                .expect("read");
            assert_eq!(back, e);
        }
        assert!(matches!(
            CreditEvent::from_stored("credits.reset", 9, serde_json::json!({})),
            Err(UpcastError::UnknownVersion { .. })
        ));
    }

    fn adjust(id: u128, amount: i64) -> CreditAction {
        CreditAction::Adjust {
            adjustment_id: Uuid::from_u128(id),
            amount,
            reason: "goodwill".into(),
            by: "ops".into(),
        }
    }
    fn adjusted(id: u128, amount: i64, balance_after: i64) -> CreditEvent {
        CreditEvent::Adjusted(CreditsAdjusted {
            user: user(),
            adjustment_id: Uuid::from_u128(id),
            amount,
            balance_after,
            reason: "goodwill".into(),
            by: "ops".into(),
            at: at(1),
        })
    }

    #[test]
    fn an_adjustment_moves_the_balance_either_way_once_and_records_who_and_why() {
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, adjust(5, 50)))
            .then([adjusted(5, 50, 150)]);
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, adjust(5, -100)))
            .then([adjusted(5, -100, 0)]);
        given::<CreditAccount>([opened(1, 100), adjusted(5, 50, 150)])
            .when(cmd(1, adjust(5, 50)))
            .then([]);
        // An account not yet opened opens with its starting allowance first.
        given::<CreditAccount>([])
            .when(cmd(1, adjust(5, 1)))
            .then([opened(1, 100), adjusted(5, 1, 101)]);
    }

    #[test]
    fn an_adjustment_never_takes_the_balance_below_zero_and_is_never_zero() {
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, adjust(5, -101)))
            .then_error(CreditError::BelowZero {
                balance: 100,
                amount: -101,
            });
        given::<CreditAccount>([opened(1, 100)])
            .when(cmd(1, adjust(5, 0)))
            .then_error(CreditError::InvalidAmount);
    }
}
