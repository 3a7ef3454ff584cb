//! The account aggregate: a user's identity, credentials and sign-in sessions, their billing
//! (Stripe customer, subscriptions, the tier they give, invoices), and the email claim that
//! keeps addresses unique.
//!
//! Email uniqueness across accounts is decided by a separate, tiny aggregate per address
//! ([`EmailClaim`]): appending its first event with "no stream" expected is what reserves the
//! address, so two concurrent sign-ups cannot both get it.

use crate::billing::{Invoice, SubscriptionReport, SubscriptionState, entitled_tier};
use crate::{Aggregate, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// An email address: trimmed, lower-cased, one `@` with text on both sides and a dot in the
/// domain, at most 254 characters, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Validates and normalises an address.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let e = s.trim().to_lowercase();
        let bad = |why: &str| Err(ValidationError::new("email", why));
        if e.is_empty() {
            return bad("must not be empty");
        }
        if e.chars().count() > 254 {
            return bad("must be at most 254 characters");
        }
        if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("must not contain spaces");
        }
        let Some((local, domain)) = e.split_once('@') else {
            return bad("must be an email address");
        };
        if local.is_empty() || domain.contains('@') || !domain.contains('.') {
            return bad("must be an email address");
        }
        if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
            return bad("must be an email address");
        }
        Ok(Email(e))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    /// Validates a name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let n = s.trim();
        if n.is_empty() {
            return Err(ValidationError::new("name", "must not be empty"));
        }
        if n.chars().count() > 100 {
            return Err(ValidationError::new(
                "name",
                "must be at most 100 characters",
            ));
        }
        if n.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(DisplayName(n.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a user may do beyond their own data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountRole {
    /// An ordinary user.
    User,
    /// An operator: manages providers and operator routes.
    Admin,
}

impl AccountRole {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountRole::User => "user",
            AccountRole::Admin => "admin",
        }
    }
}

/// What can be asked of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    /// Create the account (its email already claimed).
    Register {
        /// The new user's id.
        user_id: Uuid,
        /// Their address.
        email: Email,
        /// Their name.
        name: DisplayName,
        /// Argon2id PHC string; never the password.
        password_hash: String,
        /// Their role.
        role: AccountRole,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record a sign-in.
    StartSession {
        /// The session.
        session_id: Uuid,
        /// SHA-256 of the bearer token, hex; never the token.
        token_hash: String,
        /// When it stops working.
        expires_at: DateTime<Utc>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Change the name and/or the email (the new email already claimed).
    UpdateProfile {
        /// The new name, if it changes.
        name: Option<DisplayName>,
        /// The new address, if it changes.
        email: Option<Email>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record a new profile image (already stored).
    ChangeImage {
        /// Where it is served.
        image_url: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Sign a session out.
    RevokeSession {
        /// The session.
        session_id: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record the Stripe customer created for this account (once).
    LinkStripeCustomer {
        /// Stripe's customer id (`cus_...`).
        customer_id: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Merge what a Stripe event says about a subscription, and follow the tier it gives.
    ApplySubscription {
        /// The report.
        report: SubscriptionReport,
        /// The catalogue's tiers, lowest first: the order subscriptions' tiers are ranked by.
        tiers: Vec<String>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record (or update) an invoice.
    RecordInvoice {
        /// The invoice as the Stripe event shows it.
        invoice: Invoice,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why an account command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account exists already.
    #[error("account already registered")]
    AlreadyRegistered,
    /// No such account.
    #[error("account not found")]
    NotFound,
    /// No such session on this account.
    #[error("session not found")]
    UnknownSession,
    /// The account already has another Stripe customer.
    #[error("account already linked to Stripe customer {existing}")]
    CustomerAlreadyLinked {
        /// The customer it has.
        existing: String,
    },
}

/// An account was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountRegistered {
    /// The user.
    pub user_id: Uuid,
    /// Their address.
    pub email: Email,
    /// Their name.
    pub name: DisplayName,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Their role.
    pub role: AccountRole,
    /// When.
    pub at: DateTime<Utc>,
}

/// A session began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStarted {
    /// The user.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The name or email changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileUpdated {
    /// The user.
    pub user_id: Uuid,
    /// The new name, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DisplayName>,
    /// The new address, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The profile image changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageChanged {
    /// The user.
    pub user_id: Uuid,
    /// Where it is served.
    pub image_url: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A session was signed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRevoked {
    /// The user.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
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
    /// Stable type names of account events.
    pub mod event_types {
        pub use super::email_event_types::{EMAIL_CLAIMED, EMAIL_RELEASED};
    }

    /// Everything an account records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum AccountEvent {
        /// An account was created.
        #[event(REGISTERED = "account.registered", version = 1)]
        Registered(AccountRegistered),
        /// A session began.
        #[event(SESSION_STARTED = "account.session_started", version = 1)]
        SessionStarted(SessionStarted),
        /// A session ended.
        #[event(SESSION_REVOKED = "account.session_revoked", version = 1)]
        SessionRevoked(SessionRevoked),
        /// The name or email changed.
        #[event(PROFILE_UPDATED = "account.profile_updated", version = 1)]
        ProfileUpdated(ProfileUpdated),
        /// The profile image changed.
        #[event(IMAGE_CHANGED = "account.image_changed", version = 1)]
        ImageChanged(ImageChanged),
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

/// The account aggregate's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Account {
    /// The user, once registered.
    pub user_id: Option<Uuid>,
    /// Their address.
    pub email: Option<Email>,
    /// Their name.
    pub name: Option<DisplayName>,
    /// Sessions by id, and whether each was revoked.
    pub sessions: HashMap<Uuid, bool>,
    /// The Stripe customer, once created.
    pub stripe_customer: Option<String>,
    /// Subscriptions by Stripe id.
    pub subscriptions: HashMap<String, SubscriptionState>,
    /// The billing tier, once a subscription set it (before: the lowest tier).
    pub tier: Option<String>,
    /// Invoices by Stripe id.
    pub invoices: HashMap<String, Invoice>,
}

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn stream_name(id: &Uuid) -> String {
        format!("account-{id}")
    }

    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Register {
                user_id,
                email,
                name,
                password_hash,
                role,
                at,
            } => {
                if self.user_id.is_some() {
                    return Err(AccountError::AlreadyRegistered);
                }
                Ok(vec![AccountEvent::Registered(AccountRegistered {
                    user_id,
                    email,
                    name,
                    password_hash,
                    role,
                    at,
                })])
            }
            AccountCommand::StartSession {
                session_id,
                token_hash,
                expires_at,
                at,
            } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
                Ok(vec![AccountEvent::SessionStarted(SessionStarted {
                    user_id,
                    session_id,
                    token_hash,
                    expires_at,
                    at,
                })])
            }
            AccountCommand::UpdateProfile { name, email, at } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
                let name = name.filter(|n| self.name.as_ref() != Some(n));
                let email = email.filter(|e| self.email.as_ref() != Some(e));
                if name.is_none() && email.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::ProfileUpdated(ProfileUpdated {
                    user_id,
                    name,
                    email,
                    at,
                })])
            }
            AccountCommand::ChangeImage { image_url, at } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
                Ok(vec![AccountEvent::ImageChanged(ImageChanged {
                    user_id,
                    image_url,
                    at,
                })])
            }
            AccountCommand::RevokeSession { session_id, at } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
                match self.sessions.get(&session_id) {
                    None => Err(AccountError::UnknownSession),
                    // Signing out twice is not an error: the session is gone either way.
                    Some(true) => Ok(vec![]),
                    Some(false) => Ok(vec![AccountEvent::SessionRevoked(SessionRevoked {
                        user_id,
                        session_id,
                        at,
                    })]),
                }
            }
            AccountCommand::LinkStripeCustomer { customer_id, at } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
                match &self.stripe_customer {
                    Some(c) if *c == customer_id => Ok(vec![]),
                    Some(c) => Err(AccountError::CustomerAlreadyLinked {
                        existing: c.clone(),
                    }),
                    None => Ok(vec![AccountEvent::StripeCustomerLinked(
                        StripeCustomerLinked {
                            user_id,
                            customer_id,
                            at,
                        },
                    )]),
                }
            }
            AccountCommand::ApplySubscription { report, tiers, at } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
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
                let mut events = vec![AccountEvent::SubscriptionChanged(SubscriptionChanged {
                    user_id,
                    subscription: merged,
                    source_event: report.source_event.clone(),
                    at,
                })];
                if after != before {
                    events.push(AccountEvent::TierChanged(TierChanged {
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
            AccountCommand::RecordInvoice { invoice, at } => {
                let user_id = self.user_id.ok_or(AccountError::NotFound)?;
                let newer = self
                    .invoices
                    .get(&invoice.invoice_id)
                    .is_none_or(|known| invoice.supersedes(known));
                if !newer {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::InvoiceRecorded(InvoiceRecorded {
                    user_id,
                    invoice,
                    at,
                })])
            }
        }
    }

    fn evolve(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Registered(e) => {
                self.user_id = Some(e.user_id);
                self.email = Some(e.email.clone());
                self.name = Some(e.name.clone());
            }
            AccountEvent::ImageChanged(_) => {}
            AccountEvent::ProfileUpdated(e) => {
                if let Some(n) = &e.name {
                    self.name = Some(n.clone());
                }
                if let Some(m) = &e.email {
                    self.email = Some(m.clone());
                }
            }
            AccountEvent::SessionStarted(e) => {
                self.sessions.insert(e.session_id, false);
            }
            AccountEvent::SessionRevoked(e) => {
                self.sessions.insert(e.session_id, true);
            }
            AccountEvent::StripeCustomerLinked(e) => {
                self.stripe_customer = Some(e.customer_id.clone());
            }
            AccountEvent::SubscriptionChanged(e) => {
                self.subscriptions.insert(
                    e.subscription.subscription_id.clone(),
                    e.subscription.clone(),
                );
            }
            AccountEvent::TierChanged(e) => {
                self.tier = Some(e.to.clone());
            }
            AccountEvent::InvoiceRecorded(e) => {
                self.invoices
                    .insert(e.invoice.invoice_id.clone(), e.invoice.clone());
            }
        }
        self
    }
}

/// The claim on one email address: which user holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmailClaim {
    /// The holder.
    pub holder: Option<Uuid>,
    /// When the holder claimed it.
    pub since: Option<DateTime<Utc>>,
}

/// What can be asked of an email claim.
#[derive(Debug, Clone, PartialEq)]
pub enum EmailClaimCommand {
    /// Give the address up (the holder changed theirs), so that anyone may claim it again.
    Release {
        /// The holder giving it up.
        user_id: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Reserve the address for `user_id`. Taking over from `abandoned_by` is allowed when the
    /// caller has checked that that user's account was never created (a sign-up that crashed
    /// between claiming and registering).
    Claim {
        /// The claimant.
        user_id: Uuid,
        /// A previous holder whose account does not exist.
        abandoned_by: Option<Uuid>,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// Why a claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailClaimError {
    /// Another user holds the address.
    #[error("email address already in use")]
    Taken {
        /// Who holds it.
        holder: Uuid,
    },
}

/// An address was reserved for a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailClaimed {
    /// The holder.
    pub user_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

/// An address was given up by its holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailReleased {
    /// The former holder.
    pub user_id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of email claim events (also in [`event_types`]).
    pub mod email_event_types;

    /// Everything an email claim records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum EmailClaimEvent {
        /// An address was claimed.
        #[event(EMAIL_CLAIMED = "email.claimed", version = 1)]
        Claimed(EmailClaimed),
        /// An address was given up.
        #[event(EMAIL_RELEASED = "email.released", version = 1)]
        Released(EmailReleased),
    }
}

impl EmailClaim {
    /// The claim's id for an address: a name-based UUID (v5) of the normalised address, so the
    /// stream name is short and holds no personal data.
    pub fn id_for(email: &Email) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("mailto:{}", email.as_str()).as_bytes(),
        )
    }
}

impl Aggregate for EmailClaim {
    type Command = EmailClaimCommand;
    type Event = EmailClaimEvent;
    type Error = EmailClaimError;

    fn stream_name(id: &Uuid) -> String {
        format!("email-{id}")
    }

    fn decide(&self, command: EmailClaimCommand) -> Result<Vec<EmailClaimEvent>, EmailClaimError> {
        match command {
            EmailClaimCommand::Claim {
                user_id,
                abandoned_by,
                at,
            } => {
                let claimed = || Ok(vec![EmailClaimEvent::Claimed(EmailClaimed { user_id, at })]);
                match self.holder {
                    None => claimed(),
                    Some(h) if h == user_id => Ok(vec![]),
                    Some(h) if Some(h) == abandoned_by => claimed(),
                    Some(holder) => Err(EmailClaimError::Taken { holder }),
                }
            }
            EmailClaimCommand::Release { user_id, at } => match self.holder {
                Some(h) if h == user_id => Ok(vec![EmailClaimEvent::Released(EmailReleased {
                    user_id,
                    at,
                })]),
                // Not theirs (any more): nothing to give up.
                _ => Ok(vec![]),
            },
        }
    }

    fn evolve(mut self, event: &EmailClaimEvent) -> Self {
        match event {
            EmailClaimEvent::Claimed(e) => {
                self.holder = Some(e.user_id);
                self.since = Some(e.at);
            }
            EmailClaimEvent::Released(_) => {
                self.holder = None;
                self.since = None;
            }
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

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn registered() -> AccountEvent {
        AccountEvent::Registered(AccountRegistered {
            user_id: id(1),
            email: Email::parse("a@example.com").unwrap(),
            name: DisplayName::parse("Ann").unwrap(),
            password_hash: "$argon2id$...".into(),
            role: AccountRole::User,
            at: at(),
        })
    }
    fn started(s: u128) -> AccountEvent {
        AccountEvent::SessionStarted(SessionStarted {
            user_id: id(1),
            session_id: id(s),
            token_hash: "ab".into(),
            expires_at: at(),
            at: at(),
        })
    }

    #[test]
    fn emails_are_normalised_and_validated() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "a b@example.com",
            "a@b",
            "a@@b.com",
            "a@.b.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn an_account_registers_once() {
        given::<Account>([registered()])
            .when(AccountCommand::Register {
                user_id: id(1),
                email: Email::parse("a@example.com").unwrap(),
                name: DisplayName::parse("Ann").unwrap(),
                password_hash: "x".into(),
                role: AccountRole::User,
                at: at(),
            })
            .then_error(AccountError::AlreadyRegistered);
    }

    #[test]
    fn sessions_need_an_account_and_revoke_once() {
        given::<Account>([])
            .when(AccountCommand::StartSession {
                session_id: id(9),
                token_hash: "ab".into(),
                expires_at: at(),
                at: at(),
            })
            .then_error(AccountError::NotFound);
        given::<Account>([registered(), started(9)])
            .when(AccountCommand::RevokeSession {
                session_id: id(9),
                at: at(),
            })
            .then([AccountEvent::SessionRevoked(SessionRevoked {
                user_id: id(1),
                session_id: id(9),
                at: at(),
            })]);
        let revoked = AccountEvent::SessionRevoked(SessionRevoked {
            user_id: id(1),
            session_id: id(9),
            at: at(),
        });
        given::<Account>([registered(), started(9), revoked])
            .when(AccountCommand::RevokeSession {
                session_id: id(9),
                at: at(),
            })
            .then([]);
        given::<Account>([registered()])
            .when(AccountCommand::RevokeSession {
                session_id: id(8),
                at: at(),
            })
            .then_error(AccountError::UnknownSession);
    }

    #[test]
    fn an_email_claim_is_exclusive_unless_abandoned() {
        let claimed = EmailClaimEvent::Claimed(EmailClaimed {
            user_id: id(1),
            at: at(),
        });
        given::<EmailClaim>([claimed.clone()])
            .when(EmailClaimCommand::Claim {
                user_id: id(2),
                abandoned_by: None,
                at: at(),
            })
            .then_error(EmailClaimError::Taken { holder: id(1) });
        given::<EmailClaim>([claimed.clone()])
            .when(EmailClaimCommand::Claim {
                user_id: id(1),
                abandoned_by: None,
                at: at(),
            })
            .then([]);
        given::<EmailClaim>([claimed])
            .when(EmailClaimCommand::Claim {
                user_id: id(2),
                abandoned_by: Some(id(1)),
                at: at(),
            })
            .then([EmailClaimEvent::Claimed(EmailClaimed {
                user_id: id(2),
                at: at(),
            })]);
        let claimed_then_released = [
            EmailClaimEvent::Claimed(EmailClaimed {
                user_id: id(1),
                at: at(),
            }),
            EmailClaimEvent::Released(EmailReleased {
                user_id: id(1),
                at: at(),
            }),
        ];
        given::<EmailClaim>(claimed_then_released)
            .when(EmailClaimCommand::Claim {
                user_id: id(3),
                abandoned_by: None,
                at: at(),
            })
            .then([EmailClaimEvent::Claimed(EmailClaimed {
                user_id: id(3),
                at: at(),
            })]);
        assert_eq!(
            EmailClaim::id_for(&Email::parse("A@x.io").unwrap()),
            EmailClaim::id_for(&Email::parse("a@X.io").unwrap())
        );
    }

    fn sub(status: crate::billing::SubscriptionStatus, secs: i64) -> AccountCommand {
        AccountCommand::ApplySubscription {
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

    /// Applies commands in order, keeping their events.
    fn run(commands: Vec<AccountCommand>) -> Account {
        commands
            .into_iter()
            .fold(Account::replay(&[registered()]), |s, c| {
                let events = s.decide(c).expect("decided");
                events.iter().fold(s, |s, e| s.evolve(e))
            })
    }

    #[test]
    fn a_stripe_customer_is_linked_once() {
        let link = |id: &str| AccountCommand::LinkStripeCustomer {
            customer_id: id.into(),
            at: at(),
        };
        let linked = AccountEvent::StripeCustomerLinked(StripeCustomerLinked {
            user_id: id(1),
            customer_id: "cus_1".into(),
            at: at(),
        });
        given::<Account>([registered()])
            .when(link("cus_1"))
            .then([linked.clone()]);
        given::<Account>([registered(), linked.clone()])
            .when(link("cus_1"))
            .then([]);
        given::<Account>([registered(), linked])
            .when(link("cus_2"))
            .then_error(AccountError::CustomerAlreadyLinked {
                existing: "cus_1".into(),
            });
        given::<Account>([])
            .when(link("cus_1"))
            .then_error(AccountError::NotFound);
    }

    #[test]
    fn the_tier_follows_the_subscription_and_a_cancellation_drops_it() {
        use crate::billing::SubscriptionStatus::*;
        let events = given::<Account>([registered()]).when(sub(Active, 1));
        let state = events.then([
            AccountEvent::SubscriptionChanged(SubscriptionChanged {
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
            AccountEvent::TierChanged(TierChanged {
                user_id: id(1),
                from: "free".into(),
                to: "pro".into(),
                subscription_id: "sub_1".into(),
                source_event: "evt_1".into(),
                at: at(),
            }),
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
        let events = Account::replay(&[registered()])
            .decide(sub(Incomplete, 1))
            .unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn an_invoice_is_recorded_once_and_a_paid_one_stays_paid() {
        let invoice = |status: &str, secs| AccountCommand::RecordInvoice {
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
    fn account_events_round_trip_and_are_all_listed() {
        let more = [
            AccountEvent::ProfileUpdated(ProfileUpdated {
                user_id: id(1),
                name: Some(DisplayName::parse("B").unwrap()),
                email: None,
                at: at(),
            }),
            AccountEvent::ImageChanged(ImageChanged {
                user_id: id(1),
                image_url: "/x.png".into(),
                at: at(),
            }),
            AccountEvent::SessionRevoked(SessionRevoked {
                user_id: id(1),
                session_id: id(2),
                at: at(),
            }),
            AccountEvent::StripeCustomerLinked(StripeCustomerLinked {
                user_id: id(1),
                customer_id: "cus_1".into(),
                at: at(),
            }),
            AccountEvent::TierChanged(TierChanged {
                user_id: id(1),
                from: "free".into(),
                to: "pro".into(),
                subscription_id: "sub_1".into(),
                source_event: "evt_1".into(),
                at: at(),
            }),
        ];
        for e in [registered(), started(3)].into_iter().chain(more) {
            assert!(
                event_types::ALL.contains(&e.event_type()),
                "{}",
                e.event_type()
            );
            let back =
                AccountEvent::from_stored(e.event_type(), e.schema_version(), e.to_payload())
                    .unwrap();
            assert_eq!(back, e);
        }
    }
}
