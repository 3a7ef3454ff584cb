//! The account aggregate: a user's identity, credentials and profile, on `account-{user_id}`;
//! and the email claim that keeps addresses unique.
//!
//! Sign-in sessions ([`crate::session`]) and billing ([`crate::billing_account`]) were once
//! recorded in the account stream too; they have streams of their own now, so that signing in
//! and Stripe events neither grow nor contend with the identity stream. Old account streams
//! still hold those events: the account skips them ([`Aggregate::MOVED_OUT`]) and the new
//! aggregates read them as their legacy history.
//!
//! Email uniqueness across accounts is decided by a separate, tiny aggregate per address
//! ([`EmailClaim`]): appending its first event with "no stream" expected is what reserves the
//! address, so two concurrent sign-ups cannot both get it.

use crate::{Aggregate, ValidationError, billing_account, session};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An email address: at most 254 characters as sent, trimmed, lower-cased, one `@` with text
/// on both sides and a dot in the domain, no spaces ([`crate::patterns::EMAIL`]).
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
        if s.chars().count() > 254 {
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

/// A person's display name: at most 100 characters as sent, trimmed, not empty, no control
/// characters ([`crate::patterns::TRIMMED_LINE`]).
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
        if s.chars().count() > 100 {
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
    /// Erase the account (GDPR art. 17): its data key is destroyed by the caller, and every
    /// read model purges the user's rows when it sees the event.
    Erase {
        /// Why (free text an operator gives, or "requested by the user").
        reason: String,
        /// Who asked: `self`, or `operator`.
        by: String,
        /// What the caller purged outside the read models, and what the read models held.
        receipt: ErasureReceipt,
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

/// What an erasure removed: rows per read model and the objects deleted from the object store.
/// Holds counts and ids only, never personal data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureReceipt {
    /// Rows held about the user, per read model (table), when the erasure began.
    pub rows: std::collections::BTreeMap<String, u64>,
    /// Keys of the objects deleted from the object store.
    pub object_keys: Vec<String>,
}

/// The user was erased: their data key is destroyed, so every earlier payload field of theirs
/// reads as [`crate::privacy::ERASED`]; the read models purge their rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserErased {
    /// The user.
    pub user_id: Uuid,
    /// Why.
    pub reason: String,
    /// Who asked: `self` or `operator`.
    pub by: String,
    /// What was erased where.
    pub receipt: ErasureReceipt,
    /// When.
    pub at: DateTime<Utc>,
}

crate::schema::event_schema! {
    /// Stable type names of account events, and (re-exported, so their paths stay) of the
    /// email claim, session and billing account events that share the `account` module's past.
    pub mod event_types {
        pub use super::email_event_types::{EMAIL_CLAIMED, EMAIL_RELEASED};
        pub use crate::billing_account::event_types::{
            INVOICE_RECORDED, STRIPE_CUSTOMER_LINKED, SUBSCRIPTION_CHANGED, TIER_CHANGED,
        };
        pub use crate::session::event_types::{SESSION_REVOKED, SESSION_STARTED};
    }

    /// Everything an account records.
    #[derive(Debug, Clone, PartialEq)]
    pub enum AccountEvent {
        /// An account was created.
        #[event(REGISTERED = "account.registered", version = 1)]
        Registered(AccountRegistered),
        /// The name or email changed.
        #[event(PROFILE_UPDATED = "account.profile_updated", version = 1)]
        ProfileUpdated(ProfileUpdated),
        /// The profile image changed.
        #[event(IMAGE_CHANGED = "account.image_changed", version = 1)]
        ImageChanged(ImageChanged),
        /// The user was erased.
        #[event(USER_ERASED = "account.user_erased", version = 1)]
        Erased(UserErased),
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
    /// Whether the account was erased.
    pub erased: bool,
}

impl Aggregate for Account {
    type Id = Uuid;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    /// Session and billing events written to account streams before those had streams of their
    /// own: [`Session`](crate::session::Session) and
    /// [`BillingAccount`](crate::billing_account::BillingAccount) read them from here.
    const MOVED_OUT: &'static [&'static str] = &[
        session::event_types::SESSION_STARTED,
        session::event_types::SESSION_REVOKED,
        billing_account::event_types::STRIPE_CUSTOMER_LINKED,
        billing_account::event_types::SUBSCRIPTION_CHANGED,
        billing_account::event_types::TIER_CHANGED,
        billing_account::event_types::INVOICE_RECORDED,
    ];

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
            AccountCommand::UpdateProfile { name, email, at } => {
                let user_id = self.live()?;
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
                let user_id = self.live()?;
                Ok(vec![AccountEvent::ImageChanged(ImageChanged {
                    user_id,
                    image_url,
                    at,
                })])
            }
            AccountCommand::Erase {
                reason,
                by,
                receipt,
                at,
            } => {
                let user_id = self.live()?;
                Ok(vec![AccountEvent::Erased(UserErased {
                    user_id,
                    reason,
                    by,
                    receipt,
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
            AccountEvent::Erased(_) => {
                self.erased = true;
                self.email = None;
                self.name = None;
            }
            AccountEvent::ProfileUpdated(e) => {
                if let Some(n) = &e.name {
                    self.name = Some(n.clone());
                }
                if let Some(m) = &e.email {
                    self.email = Some(m.clone());
                }
            }
        }
        self
    }
}

impl Account {
    /// The user's id, if the account exists and is not erased.
    fn live(&self) -> Result<Uuid, AccountError> {
        match self.user_id {
            Some(id) if !self.erased => Ok(id),
            _ => Err(AccountError::NotFound),
        }
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
    type Id = Uuid;
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

    fn profile_updated() -> AccountEvent {
        AccountEvent::ProfileUpdated(ProfileUpdated {
            user_id: id(1),
            name: Some(DisplayName::parse("Bea").unwrap()),
            email: None,
            at: at(),
        })
    }

    #[test]
    fn a_profile_changes_only_what_differs_and_needs_an_account() {
        let rename = |n: &str| AccountCommand::UpdateProfile {
            name: Some(DisplayName::parse(n).unwrap()),
            email: Some(Email::parse("a@example.com").unwrap()),
            at: at(),
        };
        given::<Account>([registered()])
            .when(rename("Bea"))
            .then([profile_updated()]);
        given::<Account>([registered()])
            .when(rename("Ann"))
            .then([]);
        given::<Account>([])
            .when(rename("Bea"))
            .then_error(AccountError::NotFound);
    }

    #[test]
    fn an_old_account_stream_loads_without_its_session_and_billing_events() {
        use crate::billing_account::{BillingAccountEvent, StripeCustomerLinked};
        use crate::session::{SessionEvent, SessionStarted};
        use crate::testing::{given_stored, stored};
        let old_stream = [
            stored(&registered()),
            stored(&SessionEvent::Started(SessionStarted {
                user_id: id(1),
                session_id: id(9),
                token_hash: "ab".into(),
                expires_at: at(),
                at: at(),
            })),
            stored(&BillingAccountEvent::StripeCustomerLinked(
                StripeCustomerLinked {
                    user_id: id(1),
                    customer_id: "cus_1".into(),
                    at: at(),
                },
            )),
        ];
        let state = given_stored::<Account>(&id(1), [], old_stream)
            .when(AccountCommand::UpdateProfile {
                name: Some(DisplayName::parse("Bea").unwrap()),
                email: None,
                at: at(),
            })
            .then([profile_updated()]);
        assert_eq!(state, Account::replay(&[registered(), profile_updated()]));
        // What moved out is exactly what the new aggregates record, and nothing else is skipped.
        let moved: Vec<&str> = crate::session::event_types::ALL
            .iter()
            .chain(crate::billing_account::event_types::ALL)
            .copied()
            .collect();
        assert_eq!(Account::MOVED_OUT, moved);
        assert!(
            Account::default()
                .evolve_stored("account.exploded", 1, serde_json::json!({}))
                .is_err()
        );
    }

    fn erased() -> AccountEvent {
        AccountEvent::Erased(UserErased {
            user_id: id(1),
            reason: "asked".into(),
            by: "self".into(),
            receipt: ErasureReceipt::default(),
            at: at(),
        })
    }

    #[test]
    fn an_erased_account_takes_no_more_commands() {
        let erase = || AccountCommand::Erase {
            reason: "asked".into(),
            by: "self".into(),
            receipt: ErasureReceipt::default(),
            at: at(),
        };
        given::<Account>([registered()])
            .when(erase())
            .then([erased()]);
        given::<Account>([registered(), erased()])
            .when(erase())
            .then_error(AccountError::NotFound);
        given::<Account>([registered(), erased()])
            .when(AccountCommand::ChangeImage {
                image_url: "/y.png".into(),
                at: at(),
            })
            .then_error(AccountError::NotFound);
        given::<Account>([])
            .when(erase())
            .then_error(AccountError::NotFound);
    }

    #[test]
    fn account_events_round_trip_and_are_all_listed() {
        let events = [
            registered(),
            profile_updated(),
            AccountEvent::ImageChanged(ImageChanged {
                user_id: id(1),
                image_url: "/x.png".into(),
                at: at(),
            }),
            erased(),
        ];
        let types: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(event_types::ALL, types);
        for e in events {
            let back =
                AccountEvent::from_stored(e.event_type(), e.schema_version(), e.to_payload());
            assert_eq!(back, Ok(e));
        }
    }
}
