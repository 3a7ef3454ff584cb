//! Creating administrators: `confab admin create`, and `CONFAB_ADMIN_EMAIL` /
//! `CONFAB_ADMIN_PASSWORD` at start-up.

use anyhow::{Context, bail};
use confab_api::ApiError;
use confab_api::auth::{check_password, register};
use confab_domain::account::{Account, AccountRole, DisplayName, Email, EmailClaim};
use confab_eventstore::aggregate::load;
use confab_eventstore::{EventMetadata, EventStore};

/// What `ensure` found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new admin account was created; the log is at this position.
    Created(u64),
    /// An account with this email exists already; nothing was changed.
    Exists,
}

/// Creates an admin account for `email` unless an account holds that address already.
pub async fn ensure(
    store: &dyn EventStore,
    email: &str,
    password: &str,
    name: &str,
) -> anyhow::Result<Outcome> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("admin email: {}", e.reason))?;
    let name = DisplayName::parse(name).map_err(|e| anyhow::anyhow!("admin name: {}", e.reason))?;
    if let Err(reason) = check_password(password) {
        bail!("admin password: {reason}");
    }
    let (claim, _) = load::<EmailClaim>(store, &EmailClaim::id_for(&email))
        .await
        .context("cannot read the event store")?;
    if let Some(holder) = claim.holder {
        let (_, version) = load::<Account>(store, &holder)
            .await
            .context("cannot read the event store")?;
        if version > 0 {
            return Ok(Outcome::Exists);
        }
    }
    match register(
        store,
        &EventMetadata::default(),
        email,
        name,
        password.to_owned(),
        AccountRole::Admin,
    )
    .await
    {
        Ok((_, position)) => Ok(Outcome::Created(position)),
        Err(ApiError::Conflict(_)) => Ok(Outcome::Exists),
        Err(e) => Err(anyhow::anyhow!("cannot create the admin: {e}")),
    }
}
