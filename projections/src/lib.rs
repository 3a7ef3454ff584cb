//! Confab's read models and the engine that builds them from the event log.
//!
//! Every read the API serves comes from tables written here, by projections that follow the
//! global log. A read model can be dropped and rebuilt from position zero to the same state.

pub mod accounts;
pub mod billing;
pub mod chats;
pub mod credit_holds;
pub mod credits;
pub mod db;
pub mod documents;
pub mod engine;
pub mod parked;
pub mod pgvector;
pub mod privacy;
pub mod providers;
pub mod search;
pub mod settings;

pub use db::{ReadDb, Tx};
pub use engine::{
    Engine, OnError, Positions, Projection, ProjectionError, Retried, Status, WaitTimeout,
};

use std::sync::Arc;

/// Every projection Confab runs.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(accounts::AccountsProjection),
        Arc::new(chats::ChatsProjection),
        Arc::new(settings::SettingsProjection),
        Arc::new(providers::ProvidersProjection),
        Arc::new(credits::CreditsProjection),
        Arc::new(credit_holds::CreditHoldsProjection),
        Arc::new(billing::BillingProjection),
        Arc::new(documents::DocumentsProjection),
    ]
}
