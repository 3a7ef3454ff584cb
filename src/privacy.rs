//! `confab users erase` and `confab keys rotate`: erasing a user as an operator, with a printed
//! receipt, and rewrapping every data key under the current master key.

use crate::backend::{Backend, Migrations};
use crate::config::Config;
use confab_application::AppError;
use confab_application::privacy::{ErasedBy, Ports, erase};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long `confab users erase` waits for the read models to purge the user.
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Erases `user` for `reason`, waits until every read model has purged them, scrubs the
/// database and prints the receipt (also recorded in the log, in the `account.user_erased`
/// event).
pub async fn erase_user(config: &Config, user: Uuid, reason: &str) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        anyhow::bail!("give the reason for the erasure with --reason");
    }
    let backend = Backend::open(config, Migrations::Require).await?;
    let objects = crate::app::object_store_for(config)?;
    let ports = Ports {
        store: &*backend.store,
        db: &backend.db,
        vault: &backend.vault,
        objects: &*objects,
    };
    let erased = match erase(ports, user, reason.trim(), ErasedBy::Operator, None).await {
        Ok(e) => e,
        Err(AppError::NotFound(_)) => {
            anyhow::bail!("no user {user} (never registered, or erased already)")
        }
        Err(e) => return Err(anyhow::Error::new(e).context("the erasure failed")),
    };
    // Apply the erasure to the read models here; a running server may be doing it too, and
    // then this waits for it.
    let engine = backend.engine();
    let started = Instant::now();
    for name in engine.names() {
        loop {
            let status = engine.status().await?;
            let at = status
                .iter()
                .find(|s| s.name == name)
                .map_or(0, |s| s.position);
            if at >= erased.position {
                break;
            }
            if started.elapsed() > PURGE_TIMEOUT {
                anyhow::bail!(
                    "the erasure is recorded (position {}) and the data key destroyed, but the \
                     read model {name} has not applied it yet (at {at}); run `confab projections \
                     status` and, once it has, `confab users erase` again is not needed",
                    erased.position
                );
            }
            if let Err(e) = engine.catch_up(name, |_, _| {}).await {
                tracing::debug!(projection = name, error = %e, "another runner applies it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    confab_projections::privacy::scrub(&backend.db).await?;
    let r = &erased.receipt;
    println!(
        "user {user} erased (reason: {}); recorded as account.user_erased at position {}",
        reason.trim(),
        erased.position
    );
    println!("data key: destroyed; the user's personal fields in the log now read as erased");
    println!("read model rows purged:");
    for (table, n) in &r.rows {
        println!("  {table:<20} {n}");
    }
    println!("objects deleted: {}", r.object_keys.len());
    for key in &r.object_keys {
        println!("  {key}");
    }
    Ok(())
}

/// Rewraps every data key under the current master key (`CONFAB_ENCRYPTION_KEY`); keys wrapped
/// under another one need it as `CONFAB_ENCRYPTION_KEY_PREVIOUS`.
pub async fn rotate_keys(config: &Config) -> anyhow::Result<()> {
    let backend = Backend::open(config, Migrations::Require).await?;
    let r = backend.vault.rotate().await?;
    println!(
        "{} data key(s) rewrapped under master key {}; {} already under it; {} destroyed \
         (erased users)",
        r.rewrapped,
        backend.vault.master().current_id(),
        r.current,
        r.destroyed
    );
    // Users' provider keys are sealed under the master key itself: each is resealed (as an
    // event, so a rebuilt read model holds the new ciphertext too).
    let engine = backend.engine();
    let providers = confab_projections::providers::NAME;
    engine.catch_up(providers, |_, _| {}).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot bring the read model of provider keys up to date ({e}); run `confab \
             projections status` and try again"
        )
    })?;
    let cipher = crate::app::key_cipher(config)?;
    let commands = confab_eventstore::aggregate::CommandExecutor::new(backend.store.clone());
    let mut seen = 0;
    let keys =
        confab_application::providers::reseal_user_keys(&commands, &backend.db, &cipher, |n| {
            seen += n;
            eprintln!("provider keys: {seen} checked");
        })
        .await?;
    engine.catch_up(providers, |_, _| {}).await?;
    println!(
        "{} provider key(s) resealed under master key {}; {} already under it",
        keys.resealed,
        cipher.current_key_id(),
        keys.current
    );
    if !keys.failed.is_empty() {
        for (user, provider) in &keys.failed {
            eprintln!(
                "provider key of user {user} for provider {provider} opens under no key given"
            );
        }
        anyhow::bail!(
            "{} provider key(s) open under neither CONFAB_ENCRYPTION_KEY nor \
             CONFAB_ENCRYPTION_KEY_PREVIOUS: set the key they were sealed with as \
             CONFAB_ENCRYPTION_KEY_PREVIOUS and run `confab keys rotate` again",
            keys.failed.len()
        );
    }
    Ok(())
}
