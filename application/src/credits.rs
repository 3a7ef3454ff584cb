//! Credits: the balance, the history, the ledger commands a reply runs (reserve, consume,
//! release), and the monthly reset (run by the schedule and by the cron route, once a month
//! per account whichever comes first).

use crate::{AppError, Services};
use chrono::Utc;
use confab_domain::credits::{CreditAccount, CreditAction, CreditCommand};
use confab_eventstore::EventMetadata;
use confab_projections::accounts::UserRow;
use confab_projections::credits::{self, TransactionRow};
use uuid::Uuid;

/// `user`'s balance: the ledger's, or their tier's starting credits before its first use.
pub async fn balance(svc: &Services, user: &UserRow) -> Result<i64, AppError> {
    let balance = credits::balance(&svc.db, user.id).await?;
    Ok(balance.unwrap_or_else(|| svc.catalogue.tier(&user.tier).starting_credits))
}

/// The starting allowance of `user`'s tier, with which their ledger opens on first use.
pub async fn opening(svc: &Services, user: Uuid) -> Result<i64, AppError> {
    let tier = confab_projections::accounts::tier(&svc.db, user)
        .await?
        .unwrap_or_default();
    Ok(svc.catalogue.tier(&tier).starting_credits)
}

/// Runs a credit command on `user`'s ledger (opening it on first use): the position of what
/// it appended (none when it changed nothing). The ledger's refusals are errors
/// ([`AppError::InsufficientCredits`], ...).
pub async fn run(
    svc: &Services,
    user: Uuid,
    action: CreditAction,
    meta: EventMetadata,
) -> Result<Option<u64>, AppError> {
    let opening = opening(svc, user).await?;
    let done = svc
        .commands
        .execute::<CreditAccount>(
            &user,
            CreditCommand {
                user,
                opening,
                at: Utc::now(),
                action,
            },
            meta,
        )
        .await?;
    Ok(done.appended.map(|a| a.last_position))
}

/// A page of `user`'s credit transactions, newest first, of one `kind` or all, and how many
/// there are.
pub async fn history(
    svc: &Services,
    user: Uuid,
    kind: Option<&str>,
    limit: u32,
    offset: u64,
) -> Result<(Vec<TransactionRow>, u64), AppError> {
    Ok(credits::history(&svc.db, user, kind, limit, offset).await?)
}

/// What a monthly reset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetReport {
    /// Accounts reset by this run.
    pub reset: u64,
    /// Accounts seen.
    pub accounts: u64,
}

/// Runs the monthly reset for every account. An account already reset this month (by the
/// schedule or the cron route, whichever ran first) is not reset again. Returns once the
/// resets are readable, or after the write timeout.
pub async fn reset_all(svc: &Services) -> Result<ResetReport, AppError> {
    let accounts = confab_projections::accounts::all_tiers(&svc.db).await?;
    let mut reset = 0;
    let mut last = 0;
    let meta = crate::metadata(None, Some(Uuid::now_v7()));
    for (user, tier) in &accounts {
        let tier = svc.catalogue.tier(tier);
        let done = svc
            .commands
            .execute::<CreditAccount>(
                user,
                CreditCommand {
                    user: *user,
                    opening: tier.starting_credits,
                    at: Utc::now(),
                    action: CreditAction::Reset {
                        allowance: tier.monthly_credits,
                    },
                },
                meta.clone(),
            )
            .await?;
        if let Some(a) = done.appended {
            reset += 1;
            last = last.max(a.last_position);
        }
    }
    // Whoever asked for the reset reads its effect next.
    if last > 0
        && let Err(e) = svc.visible(credits::NAME, Some(last)).await
    {
        tracing::warn!(error = %e, "the credit reset is recorded but not yet readable");
    }
    tracing::info!(reset, accounts = accounts.len(), "monthly credit reset");
    Ok(ResetReport {
        reset,
        accounts: accounts.len() as u64,
    })
}
