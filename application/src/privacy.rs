//! Privacy: erasing a user (crypto-shredding, GDPR art. 17) and exporting what Confab holds
//! about them (art. 15 and 20).
//!
//! Erasure, in an order that a crash at any point can be resumed from by running it again:
//! count what the read models hold (the receipt), delete the user's objects (profile images,
//! uploaded documents), their idempotent answers and reply drafts, release their email (so it
//! can sign up again), destroy their data key (from then on every personal field of theirs in
//! the log reads as erased), record `account.user_erased`, wait until every projection has
//! purged their rows, and scrub the database files of the deleted rows' copies.

use crate::{AppError, Services, accounts, metadata, now};
use confab_domain::account::{
    Account, AccountCommand, EmailClaim, EmailClaimCommand, ErasureReceipt,
};
use confab_eventstore::EventStore;
use confab_eventstore::aggregate::{execute, load};
use confab_eventstore::sealed::KeyVault;
use confab_projections::ReadDb;
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use uuid::Uuid;

/// Who asked for an erasure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasedBy {
    /// The user, with their password (`DELETE /api/me`).
    User,
    /// An operator (`confab users erase`).
    Operator,
}

impl ErasedBy {
    fn as_str(self) -> &'static str {
        match self {
            ErasedBy::User => "self",
            ErasedBy::Operator => "operator",
        }
    }
}

/// Erases the signed-in user after checking their password again: 403 on a wrong one.
pub async fn erase_me(
    svc: &Services,
    actor: &crate::Actor,
    password: String,
) -> Result<ErasureReceipt, AppError> {
    let ok = accounts::verify_password(password, actor.user.password_hash.clone()).await?;
    if !ok {
        return Err(AppError::Forbidden("the password is wrong".into()));
    }
    let erased = erase(
        Ports::of(svc),
        actor.id(),
        "requested by the user",
        ErasedBy::User,
        actor.correlation_id,
    )
    .await?;
    for projection in confab_projections::all() {
        svc.visible(projection.name(), Some(erased.position))
            .await?;
    }
    confab_projections::privacy::scrub(&svc.db).await?;
    Ok(erased.receipt)
}

/// What an erasure needs: the log, the read models, the data keys and the object store.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    /// The event log.
    pub store: &'a dyn EventStore,
    /// The read models.
    pub db: &'a ReadDb,
    /// The users' data keys.
    pub vault: &'a KeyVault,
    /// Uploaded files.
    pub objects: &'a dyn object_store::ObjectStore,
}

impl<'a> Ports<'a> {
    /// The ports of `svc`.
    pub fn of(svc: &'a Services) -> Self {
        Ports {
            store: &*svc.store,
            db: &svc.db,
            vault: &svc.vault,
            objects: &*svc.objects,
        }
    }
}

/// A recorded erasure: its receipt, and the position of its `account.user_erased` (the read
/// models are purged once they have applied it).
#[derive(Debug, Clone, PartialEq)]
pub struct Erased {
    /// What was erased where.
    pub receipt: ErasureReceipt,
    /// Where the erasure was recorded.
    pub position: u64,
}

/// Erases user `user_id` and records it: see the module's documentation; the caller then
/// waits for the projections to apply the erasure and scrubs the database
/// ([`confab_projections::privacy::scrub`]). 404 for a user who does not exist (or was erased
/// already).
pub async fn erase(
    ports: Ports<'_>,
    user_id: Uuid,
    reason: &str,
    by: ErasedBy,
    correlation_id: Option<Uuid>,
) -> Result<Erased, AppError> {
    let (account, _) = load::<Account>(ports.store, &user_id).await?;
    if account.user_id.is_none() || account.erased {
        return Err(AppError::NotFound("user"));
    }
    let rows = confab_projections::privacy::rows_of(ports.db, user_id).await?;
    let object_keys = delete_objects(ports.objects, user_id).await?;
    delete_outside_read_models(ports.db, user_id).await?;
    let meta = metadata(None, correlation_id);
    if let Some(email) = account.email.as_ref().filter(|e| e.as_str() != ERASED_TEXT) {
        let release = EmailClaimCommand::Release { user_id, at: now() };
        execute::<EmailClaim>(
            ports.store,
            &EmailClaim::id_for(email),
            release,
            meta.clone(),
        )
        .await?;
    }
    ports.vault.destroy(user_id).await?;
    let receipt = ErasureReceipt { rows, object_keys };
    let erase = AccountCommand::Erase {
        reason: reason.to_owned(),
        by: by.as_str().to_owned(),
        receipt: receipt.clone(),
        at: now(),
    };
    let done = execute::<Account>(ports.store, &user_id, erase, meta).await?;
    let position = done
        .appended
        .map(|a| a.last_position)
        .ok_or_else(|| AppError::internal("erasing a user", "nothing was recorded"))?;
    tracing::info!(user = %user_id, by = by.as_str(), "user erased");
    Ok(Erased { receipt, position })
}

const ERASED_TEXT: &str = confab_domain::privacy::ERASED;

/// Deletes the user's objects (profile images, uploaded documents); returns their keys.
async fn delete_objects(
    objects: &dyn object_store::ObjectStore,
    user_id: Uuid,
) -> Result<Vec<String>, AppError> {
    let mut keys = Vec::new();
    for prefix in ["profile-images", "documents"] {
        let prefix = ObjectPath::from(format!("{prefix}/{user_id}"));
        let listed: Vec<object_store::ObjectMeta> = objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| AppError::internal("listing a user's objects", e))?;
        for meta in listed {
            match objects.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(AppError::internal("deleting a user's object", e)),
            }
            keys.push(meta.location.to_string());
        }
    }
    keys.sort();
    Ok(keys)
}

/// What no projection rebuilds but holds the user's data: idempotent answers (with the
/// bodies of their responses) and reply drafts.
async fn delete_outside_read_models(db: &ReadDb, user_id: Uuid) -> Result<(), sqlx::Error> {
    use confab_projections::execute;
    let mut tx = db.begin().await?;
    execute!(
        &mut tx,
        "DELETE FROM idempotency_keys WHERE user_id = $1",
        user_id
    )?;
    if db.is_postgres() {
        execute!(
            &mut tx,
            "DELETE FROM reply_chunks WHERE owner_id = $1",
            user_id
        )?;
    } else {
        execute!(
            &mut tx,
            "DELETE FROM reply_drafts WHERE reply_id IN (SELECT m.id FROM messages m \
             JOIN chats c ON c.id = m.chat_id WHERE c.owner_id = $1)",
            user_id
        )?;
    }
    tx.commit().await
}

/// What Confab holds about a user, apart from their chats' messages (which the export reads
/// one chat at a time, with [`export_messages`], so that it streams).
#[derive(Debug, Clone)]
pub struct Export {
    /// The account.
    pub user: confab_projections::accounts::UserRow,
    /// The credit balance.
    pub credits: i64,
    /// The settings.
    pub settings: crate::settings::EffectiveSettings,
    /// Every chat, most recent activity first.
    pub chats: Vec<confab_projections::chats::ChatRow>,
    /// Every document's metadata, newest first.
    pub documents: Vec<confab_projections::documents::DocumentRow>,
    /// The whole credit history, newest first.
    pub credit_history: Vec<confab_projections::credits::TransactionRow>,
    /// The invoices.
    pub invoices: Vec<confab_projections::billing::InvoiceRow>,
}

/// Pages through a list query until it is exhausted.
async fn every<T, F, Fut>(mut page: F) -> Result<Vec<T>, AppError>
where
    F: FnMut(u32, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, u64), sqlx::Error>>,
{
    const PAGE: u32 = 500;
    let mut out = Vec::new();
    loop {
        let (rows, total) = page(PAGE, out.len() as u64).await?;
        let n = rows.len();
        out.extend(rows);
        if n == 0 || out.len() as u64 >= total {
            return Ok(out);
        }
    }
}

/// Everything `actor`'s export holds but their messages.
pub async fn export(svc: &Services, actor: &crate::Actor) -> Result<Export, AppError> {
    use confab_projections::{billing, chats, credits, documents};
    let db = &svc.db;
    let user = actor.id();
    Ok(Export {
        user: actor.user.clone(),
        credits: crate::credits::balance(svc, &actor.user).await?,
        settings: crate::settings::get(svc, actor).await?,
        chats: every(|limit, offset| chats::list_chats(db, user, limit, offset)).await?,
        documents: every(|limit, offset| documents::list(db, user, limit, offset)).await?,
        credit_history: every(|limit, offset| credits::history(db, user, None, limit, offset))
            .await?,
        invoices: billing::invoices(db, user).await?,
    })
}

/// Every message of `actor`'s chat `chat_id`, oldest first (404 for another user's chat).
pub async fn export_messages(
    svc: &Services,
    actor: &crate::Actor,
    chat_id: Uuid,
) -> Result<Vec<confab_projections::chats::MessageRow>, AppError> {
    crate::chats::all_messages(svc, actor, chat_id).await
}
