//! Creating administrators: `confab admin create`, and `CONFAB_ADMIN_EMAIL` /
//! `CONFAB_ADMIN_PASSWORD` at start-up, through
//! [`confab_application::accounts::ensure_admin`].

use confab_application::AppError;
pub use confab_application::accounts::AdminOutcome as Outcome;
use confab_eventstore::EventStore;

/// Creates an admin account for `email` unless an account holds that address already.
pub async fn ensure(
    store: &dyn EventStore,
    email: &str,
    password: &str,
    name: &str,
) -> anyhow::Result<Outcome> {
    match confab_application::accounts::ensure_admin(store, email, password, name).await {
        Ok(outcome) => Ok(outcome),
        Err(AppError::Invalid(problems)) => anyhow::bail!("the admin's {problems}"),
        Err(e) => Err(anyhow::Error::new(e).context("cannot create the admin")),
    }
}
