//! Credits: the balance, the history, the ledger commands a reply runs (reserve, consume,
//! release), the monthly reset (run by the schedule and by the cron route, once a month
//! per account whichever comes first), and the sweep that releases holds that expired.

use crate::{AppError, Services};
use chrono::Utc;
use confab_domain::credits::{CreditAccount, CreditAction, CreditCommand};
use confab_eventstore::EventMetadata;
use confab_projections::accounts::UserRow;
use confab_projections::credit_holds;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// Accounts reset by this run.
    pub reset: u64,
    /// Accounts seen.
    pub accounts: u64,
    /// Accounts that could not be reset, after the retries: running the reset again resets
    /// them (and nobody twice).
    pub failed: Vec<Uuid>,
}

impl ResetReport {
    /// The run as an error when accounts were left unreset: [`AppError::Unavailable`] naming
    /// how many were and were not, to be retried by running the reset again.
    pub fn incomplete(&self) -> Option<AppError> {
        if self.failed.is_empty() {
            return None;
        }
        let mut details = crate::error::Details::new();
        details.insert("resetCount".into(), self.reset.into());
        details.insert("failedCount".into(), self.failed.len().into());
        Some(AppError::Unavailable {
            message: format!(
                "{} of {} accounts could not be reset; call again to retry them (none is reset twice)",
                self.failed.len(),
                self.accounts
            ),
            details,
        })
    }
}

/// Passes over the accounts that failed, after the first, and the pause before each.
const RESET_RETRIES: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(1),
];

/// Runs the monthly reset for every account. An account already reset this month (by the
/// schedule or the cron route, whichever ran first) is not reset again, so the reset is
/// exactly once per period per account however often it runs. An account that fails does
/// not stop the others: it is retried after the pass, twice, and reported in
/// [`ResetReport::failed`] if it still fails. Returns once the resets are readable, or
/// after the write timeout.
pub async fn reset_all(svc: &Services) -> Result<ResetReport, AppError> {
    let accounts = confab_projections::accounts::all_tiers(&svc.db).await?;
    let meta = crate::metadata(None, Some(Uuid::now_v7()));
    let mut reset = 0;
    let mut last = 0;
    let mut pending: Vec<&(Uuid, String)> = accounts.iter().collect();
    for pause in std::iter::once(None).chain(RESET_RETRIES.iter().map(Some)) {
        if pending.is_empty() {
            break;
        }
        if let Some(pause) = pause {
            tokio::time::sleep(*pause).await;
        }
        let mut failed = Vec::new();
        for account @ (user, tier) in pending {
            match reset_one(svc, *user, tier, &meta).await {
                Ok(Some(position)) => {
                    reset += 1;
                    last = last.max(position);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(user = %user, error = ?e, "an account's credit reset failed");
                    failed.push(account);
                }
            }
        }
        pending = failed;
    }
    // Whoever asked for the reset reads its effect next.
    if last > 0
        && let Err(e) = svc.visible(credits::NAME, Some(last)).await
    {
        tracing::warn!(error = %e, "the credit reset is recorded but not yet readable");
    }
    let failed: Vec<Uuid> = pending.iter().map(|(user, _)| *user).collect();
    if failed.is_empty() {
        tracing::info!(reset, accounts = accounts.len(), "monthly credit reset");
    } else {
        tracing::error!(
            reset,
            accounts = accounts.len(),
            failed = failed.len(),
            "monthly credit reset left accounts unreset; run it again to retry them"
        );
    }
    Ok(ResetReport {
        reset,
        accounts: accounts.len() as u64,
        failed,
    })
}

/// Resets one account: the position appended, or `None` when it was reset this period.
async fn reset_one(
    svc: &Services,
    user: Uuid,
    tier: &str,
    meta: &EventMetadata,
) -> Result<Option<u64>, AppError> {
    let tier = svc.catalogue.tier(tier);
    let done = svc
        .commands
        .execute::<CreditAccount>(
            &user,
            CreditCommand {
                user,
                opening: tier.starting_credits,
                at: Utc::now(),
                action: CreditAction::Reset {
                    allowance: tier.monthly_credits,
                },
            },
            meta.clone(),
        )
        .await?;
    Ok(done.appended.map(|a| a.last_position))
}

/// What a sweep of expired credit holds did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired holds found.
    pub expired: u64,
    /// Holds this run released (the others were settled or released meanwhile).
    pub released: u64,
    /// Holds that could not be released (the store failed): the next sweep tries again.
    pub failed: u64,
}

/// Most expired holds one sweep releases; the next sweep takes the rest.
pub const SWEEP_BATCH: u32 = 500;

/// Releases, through each ledger, the credit holds that expired with nothing to settle them (a
/// crash between reserving and queuing a reply, a reply job out of attempts), so their credits
/// can be used again; each shows in the credit history as a `release`. Idempotent: a hold
/// settled or released meanwhile, or swept by another process at the same time, is left as
/// it is. Returns once the releases are readable, or after the write timeout.
pub async fn sweep_expired_holds(svc: &Services) -> Result<SweepReport, AppError> {
    let expired = credit_holds::expired(&svc.db, Utc::now(), SWEEP_BATCH).await?;
    let meta = crate::metadata(None, Some(Uuid::now_v7()));
    let mut report = SweepReport {
        expired: expired.len() as u64,
        ..SweepReport::default()
    };
    let mut last = None;
    for hold in &expired {
        let action = CreditAction::Expire {
            reservation_id: hold.reservation_id,
        };
        match run(svc, hold.user_id, action, meta.clone()).await {
            Ok(Some(position)) => {
                report.released += 1;
                last = last.max(Some(position));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(user = %hold.user_id, reservation = %hold.reservation_id,
                    error = ?e, "an expired credit hold could not be released; the next sweep retries it");
                report.failed += 1;
            }
        }
    }
    for projection in [credits::NAME, credit_holds::NAME] {
        if let Err(e) = svc.visible(projection, last).await {
            tracing::warn!(error = %e, projection, "released credit holds are not yet readable");
        }
    }
    if report.expired > 0 {
        tracing::info!(
            expired = report.expired,
            released = report.released,
            failed = report.failed,
            "swept expired credit holds"
        );
    }
    Ok(report)
}

/// An operator's adjustment, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjusted {
    /// The account holder.
    pub user: Uuid,
    /// Their email.
    pub email: String,
    /// Credits added (negative: taken away).
    pub amount: i64,
    /// The balance after.
    pub balance_after: i64,
    /// The position of the adjustment in the log.
    pub position: u64,
}

/// Longest reason an adjustment may give.
pub const MAX_REASON_CHARS: usize = 500;

/// `confab credits adjust`: adds `amount` credits to the ledger of `user` (an id or an email;
/// negative takes credits away, never below zero), recording `reason` and the operator `by`
/// in the event. A ledger not yet opened opens first with the tier's starting credits, as on
/// any first use. Runs on the bare store, as operators' commands do, beside running servers.
pub async fn adjust(
    store: &dyn confab_eventstore::EventStore,
    db: &confab_projections::ReadDb,
    catalogue: &confab_domain::catalogue::Catalogue,
    user: &str,
    amount: i64,
    reason: &str,
    by: &str,
) -> Result<Adjusted, AppError> {
    let mut problems = crate::Problems::new();
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        problems.add(
            "reason",
            format!("must say why, in 1 to {MAX_REASON_CHARS} characters"),
        );
    }
    if by.trim().is_empty() {
        problems.add("by", "must name the operator");
    }
    if amount == 0 {
        problems.add("amount", "must not be zero");
    }
    problems.into_result(())?;
    let row = match Uuid::parse_str(user) {
        Ok(id) => confab_projections::accounts::user_by_id(db, id).await?,
        Err(_) => {
            confab_projections::accounts::user_by_email(db, &user.trim().to_lowercase()).await?
        }
    };
    let row = row.ok_or(AppError::NotFound("user"))?;
    let meta = crate::metadata(None, Some(Uuid::now_v7()));
    let done = confab_eventstore::aggregate::execute::<CreditAccount>(
        store,
        &row.id,
        CreditCommand {
            user: row.id,
            opening: catalogue.tier(&row.tier).starting_credits,
            at: crate::now(),
            action: CreditAction::Adjust {
                adjustment_id: Uuid::now_v7(),
                amount,
                reason: reason.to_owned(),
                by: by.trim().to_owned(),
            },
        },
        meta,
    )
    .await?;
    let balance_after = done
        .events
        .iter()
        .find_map(|e| match e {
            confab_domain::credits::CreditEvent::Adjusted(a) => Some(a.balance_after),
            _ => None,
        })
        .ok_or(AppError::bug("an adjustment appended no adjustment"))?;
    Ok(Adjusted {
        user: row.id,
        email: row.email,
        amount,
        balance_after,
        position: done.appended.map(|a| a.last_position).unwrap_or(0),
    })
}
