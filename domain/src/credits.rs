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

use crate::Aggregate;
use chrono::{DateTime, Utc};
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
    /// The monthly reset, for the calendar month of `at`.
    Reset {
        /// The tier's monthly allowance.
        allowance: i64,
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
        #[event(RESERVED = "credits.reserved", version = 1)]
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
    /// Reservations consumed or released.
    pub closed: HashSet<Uuid>,
    /// The last month reset, `YYYY-MM`.
    pub last_reset: Option<String>,
    /// Grants applied.
    pub grants: HashSet<String>,
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
                }));
            }
            CreditAction::Consume {
                reservation_id,
                used,
                input_tokens,
                output_tokens,
            } => {
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
                    },
                );
            }
            CreditEvent::Consumed(e) => {
                self.holds.remove(&e.reservation_id);
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
    fn reserve(id: u128, amount: i64) -> CreditAction {
        CreditAction::Reserve {
            reservation_id: Uuid::from_u128(id),
            amount,
            chat_id: Uuid::from_u128(9),
            model: "m".into(),
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

    #[test]
    fn events_round_trip_through_their_stored_form() {
        for e in [opened(1, 100), reserved(7, 5)] {
            let back = CreditEvent::from_stored(e.event_type(), 1, e.to_payload()).expect("read");
            assert_eq!(back, e);
        }
        assert!(matches!(
            CreditEvent::from_stored("credits.reset", 9, serde_json::json!({})),
            Err(UpcastError::UnknownVersion { .. })
        ));
    }
}
