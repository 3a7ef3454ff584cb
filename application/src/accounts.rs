//! Accounts and sessions: sign-up, sign-in, sign-out, finding the user of a session token, the
//! profile (name, email, image) and creating administrators.
//!
//! Passwords are hashed with Argon2id (on the blocking pool: it is deliberately slow). A session
//! token is 32 random bytes, given to the client once; only its SHA-256 is recorded, in the
//! `account.session_started` event and the `sessions` read model. Email addresses are unique
//! across accounts: an address is claimed (its own aggregate) before the account records it,
//! and the old one is released after a change.

use crate::{Actor, AppError, Problems, Services, credits, metadata, now};
use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use confab_domain::account::{
    Account, AccountCommand, AccountRole, DisplayName, Email, EmailClaim, EmailClaimCommand,
    EmailClaimError,
};
use confab_domain::session::{Session, SessionCommand, SessionKey};
use confab_eventstore::aggregate::{ExecuteError, execute, load};
use confab_eventstore::{EventMetadata, EventStore};
use confab_projections::accounts::{self, UserRow};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use uuid::Uuid;

/// A claim older than this whose account never appeared is treated as a crashed sign-up.
const ABANDONED_CLAIM_AFTER: chrono::Duration = chrono::Duration::minutes(1);

/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in characters.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Validates a password's length: 8 to 128 characters.
pub fn check_password(p: &str) -> Result<(), String> {
    match p.chars().count() {
        n if n < MIN_PASSWORD_CHARS => Err("must be at least 8 characters".into()),
        n if n > MAX_PASSWORD_CHARS => Err("must be at most 128 characters".into()),
        _ => Ok(()),
    }
}

/// A fresh session token: 32 random bytes, base64url.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 of a session token, hex: what is stored instead of the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Bounds the Argon2 work of a process: each hash takes tens of milliseconds of CPU and 19 MiB
/// of memory, so a flood of sign-ins or sign-ups must not run them all at once. At most
/// `concurrency` run together and at most `queue` more wait; beyond that the request is
/// refused at once ([`AppError::Busy`], 503 with `Retry-After`), while the per-IP auth budget
/// of the rate limiter still applies in front.
#[derive(Debug)]
pub struct HashLimiter {
    running: tokio::sync::Semaphore,
    admitted: tokio::sync::Semaphore,
}

impl HashLimiter {
    /// `concurrency` hashes at once (at least 1), `queue` more waiting.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        HashLimiter {
            running: tokio::sync::Semaphore::new(concurrency),
            admitted: tokio::sync::Semaphore::new(concurrency + queue),
        }
    }

    /// The process's limiter: `CONFAB_PASSWORD_HASH_CONCURRENCY` (default: the CPUs) and
    /// `CONFAB_PASSWORD_HASH_QUEUE` (default: 8 per permitted hash).
    pub fn global() -> &'static HashLimiter {
        static LIMITER: OnceLock<HashLimiter> = OnceLock::new();
        LIMITER.get_or_init(|| {
            let var = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse().ok());
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            let concurrency = var("CONFAB_PASSWORD_HASH_CONCURRENCY")
                .unwrap_or(cpus)
                .max(1);
            let queue = var("CONFAB_PASSWORD_HASH_QUEUE").unwrap_or(8 * concurrency);
            HashLimiter::new(concurrency, queue)
        })
    }

    /// Runs `work` on the blocking pool once a permit is free; [`AppError::Busy`] when the
    /// queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _admitted = self.admitted.try_acquire().map_err(|_| AppError::Busy {
            message: "too many sign-ins are being checked; try again shortly".into(),
            retry_after_secs: 1,
        })?;
        let _running = self
            .running
            .acquire()
            .await
            .map_err(|e| AppError::internal("waiting to hash a password", e))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AppError::internal("hashing a password", e))
    }
}

async fn hash_password(password: String) -> Result<String, AppError> {
    HashLimiter::global()
        .run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AppError::internal("hashing a password", e.to_string()))
        })
        .await?
}

/// Whether `password` matches the PHC string; [`AppError::Busy`] when too many are queued.
pub(crate) async fn verify_password(password: String, phc: String) -> Result<bool, AppError> {
    HashLimiter::global()
        .run(move || {
            PasswordHash::new(&phc)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
}

/// A hash of a random password, verified against when the email is unknown, so that a wrong
/// email takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(new_token().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Claims `email` for `user_id`, taking over a claim whose sign-up crashed before registering.
pub async fn claim_email(
    store: &dyn EventStore,
    meta: &EventMetadata,
    email: &Email,
    user_id: Uuid,
) -> Result<(), AppError> {
    let claim_id = EmailClaim::id_for(email);
    let claim = |abandoned_by| EmailClaimCommand::Claim {
        user_id,
        abandoned_by,
        at: now(),
    };
    match execute::<EmailClaim>(store, &claim_id, claim(None), meta.clone()).await {
        Ok(_) => Ok(()),
        Err(ExecuteError::Domain(EmailClaimError::Taken { holder })) => {
            let (claim_state, _) = load::<EmailClaim>(store, &claim_id).await?;
            let (_, holder_version) = load::<Account>(store, &holder).await?;
            let old = claim_state
                .since
                .is_some_and(|since| now() - since > ABANDONED_CLAIM_AFTER);
            if holder_version > 0 || !old {
                return Err(EmailClaimError::Taken { holder }.into());
            }
            execute::<EmailClaim>(store, &claim_id, claim(Some(holder)), meta.clone()).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives up a claim; a failure only leaves the address reserved, so it is logged, not returned.
async fn release_email(svc: &Services, meta: &EventMetadata, email: &Email, user_id: Uuid) {
    let command = EmailClaimCommand::Release { user_id, at: now() };
    if let Err(e) = svc
        .commands
        .execute::<EmailClaim>(&EmailClaim::id_for(email), command, meta.clone())
        .await
    {
        tracing::warn!(error = %e, "could not release an email claim; the address stays reserved");
    }
}

/// Creates an account: claims the email, hashes the password, records the registration.
/// Returns the new user's id and the position to await. Used by sign-up and by operators
/// creating admins (before any server runs, hence the bare store).
pub async fn register(
    store: &dyn EventStore,
    meta: &EventMetadata,
    email: Email,
    name: DisplayName,
    password: String,
    role: AccountRole,
) -> Result<(Uuid, u64), AppError> {
    let password_hash = hash_password(password).await?;
    let user_id = Uuid::now_v7();
    let meta = EventMetadata {
        actor: meta.actor.or(Some(user_id)),
        ..meta.clone()
    };
    claim_email(store, &meta, &email, user_id).await?;
    let done = execute::<Account>(
        store,
        &user_id,
        AccountCommand::Register {
            user_id,
            email,
            name,
            password_hash,
            role,
            at: now(),
        },
        meta,
    )
    .await?;
    Ok((user_id, done.appended.map(|a| a.last_position).unwrap_or(0)))
}

/// What `ensure_admin` found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    /// A new admin account was created; the log is at this position.
    Created(u64),
    /// An account with this email exists already; nothing was changed.
    Exists,
}

/// Creates an admin account for `email` unless an account holds that address already.
pub async fn ensure_admin(
    store: &dyn EventStore,
    email: &str,
    password: &str,
    name: &str,
) -> Result<AdminOutcome, AppError> {
    let mut problems = Problems::new();
    let email = problems.check(Email::parse(email));
    let name = problems.check(DisplayName::parse(name));
    if let Err(reason) = check_password(password) {
        problems.add("password", reason);
    }
    let (Some(email), Some(name)) = (email, name) else {
        return Err(problems.into());
    };
    problems.into_result(())?;
    let (claim, _) = load::<EmailClaim>(store, &EmailClaim::id_for(&email)).await?;
    if let Some(holder) = claim.holder {
        let (_, version) = load::<Account>(store, &holder).await?;
        if version > 0 {
            return Ok(AdminOutcome::Exists);
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
        Ok((_, position)) => Ok(AdminOutcome::Created(position)),
        Err(AppError::Conflict { .. }) => Ok(AdminOutcome::Exists),
        Err(e) => Err(e),
    }
}

/// A signed-in user: who they are, their balance, and the session token (given once).
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The user.
    pub user: UserRow,
    /// Their credit balance.
    pub credits: i64,
    /// The session token, to send back as a bearer token or cookie.
    pub token: String,
}

/// Starts a session for `user_id`; returns the token and the position to await.
async fn start_session(
    svc: &Services,
    meta: &EventMetadata,
    user_id: Uuid,
) -> Result<(String, Option<u64>), AppError> {
    let token = new_token();
    let at = now();
    let session_id = Uuid::now_v7();
    let done = svc
        .commands
        .execute::<Session>(
            &SessionKey {
                user_id,
                session_id,
            },
            SessionCommand::Start {
                user_id,
                session_id,
                token_hash: token_hash(&token),
                expires_at: at + svc.session_ttl,
                at,
            },
            meta.clone(),
        )
        .await?;
    Ok((token, done.appended.map(|a| a.last_position)))
}

/// The sign-up form.
#[derive(Debug, Clone)]
pub struct SignUp {
    /// The address.
    pub email: Email,
    /// The display name.
    pub name: DisplayName,
    /// The password, already checked with [`check_password`].
    pub password: String,
}

/// Creates an account and signs it in.
pub async fn sign_up(
    svc: &Services,
    correlation_id: Option<Uuid>,
    form: SignUp,
) -> Result<SignedIn, AppError> {
    let (user_id, _) = register(
        &*svc.store,
        &metadata(None, correlation_id),
        form.email,
        form.name,
        form.password,
        AccountRole::User,
    )
    .await?;
    let (token, pos) =
        start_session(svc, &metadata(Some(user_id), correlation_id), user_id).await?;
    svc.visible(accounts::NAME, pos).await?;
    let user = accounts::user_by_id(&svc.db, user_id)
        .await?
        .ok_or(AppError::bug(
            "a registered user is missing from the read model",
        ))?;
    let credits = credits::balance(svc, &user).await?;
    Ok(SignedIn {
        user,
        credits,
        token,
    })
}

/// Signs in with an email and password; a wrong email and a wrong password are refused alike,
/// in the same time.
pub async fn sign_in(
    svc: &Services,
    correlation_id: Option<Uuid>,
    email: &str,
    password: String,
) -> Result<SignedIn, AppError> {
    let user = match Email::parse(email) {
        Ok(email) => accounts::user_by_email(&svc.db, email.as_str()).await?,
        Err(_) => None,
    };
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let ok = verify_password(password, phc).await?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(AppError::Unauthenticated("wrong email or password"));
    };
    let (token, pos) =
        start_session(svc, &metadata(Some(user.id), correlation_id), user.id).await?;
    // The session is committed and the token exists only in this answer: give it even when
    // the read model is slow to show the session (the token works once it does).
    match svc.visible(accounts::NAME, pos).await {
        Err(AppError::NotVisible(t)) => {
            tracing::warn!(
                wanted = t.wanted,
                reached = t.reached,
                "a session is recorded but not yet readable; answering with its token"
            );
        }
        other => other?,
    }
    let credits = credits::balance(svc, &user).await?;
    Ok(SignedIn {
        user,
        credits,
        token,
    })
}

/// Ends `actor`'s session: its token stops working at once.
pub async fn sign_out(svc: &Services, actor: &Actor) -> Result<(), AppError> {
    let done = svc
        .commands
        .execute::<Session>(
            &SessionKey {
                user_id: actor.id(),
                session_id: actor.session_id,
            },
            SessionCommand::Revoke {
                session_id: actor.session_id,
                at: now(),
            },
            actor.metadata(),
        )
        .await?;
    svc.visible(accounts::NAME, done.appended.map(|a| a.last_position))
        .await?;
    Ok(())
}

/// The user and session of a live (unrevoked, unexpired) session token, if any.
pub async fn authenticate(
    svc: &Services,
    token: &str,
    correlation_id: Option<Uuid>,
) -> Result<Option<Actor>, AppError> {
    let found = accounts::session_user(&svc.db, &token_hash(token), Utc::now()).await?;
    Ok(found.map(|s| Actor {
        user: s.user,
        session_id: s.session_id,
        correlation_id,
        resource_id: None,
    }))
}

/// Whether session `session_id` is still live (not signed out, not expired).
pub async fn session_live(svc: &Services, session_id: Uuid) -> Result<bool, AppError> {
    Ok(accounts::session_live(&svc.db, session_id, Utc::now()).await?)
}

/// `actor`'s account and credit balance.
pub async fn me(svc: &Services, actor: &Actor) -> Result<(UserRow, i64), AppError> {
    let credits = credits::balance(svc, &actor.user).await?;
    Ok((actor.user.clone(), credits))
}

/// Changes `actor`'s name, email or both; a new email is claimed first (409 if someone holds
/// it) and the old one released after.
pub async fn update_profile(
    svc: &Services,
    actor: &Actor,
    name: Option<DisplayName>,
    email: Option<Email>,
) -> Result<UserRow, AppError> {
    if name.is_none() && email.is_none() {
        return Err(AppError::invalid("name", "give name, email or both"));
    }
    let user_id = actor.id();
    let meta = actor.metadata();
    let new_email = email.filter(|e| e.as_str() != actor.user.email);
    if let Some(e) = &new_email {
        claim_email(&*svc.store, &meta, e, user_id).await?;
    }
    let command = AccountCommand::UpdateProfile {
        name,
        email: new_email.clone(),
        at: now(),
    };
    let done = match svc
        .commands
        .execute::<Account>(&user_id, command, meta.clone())
        .await
    {
        Ok(done) => done,
        Err(e) => {
            if let Some(claimed) = &new_email {
                release_email(svc, &meta, claimed, user_id).await;
            }
            return Err(e.into());
        }
    };
    if new_email.is_some()
        && let Ok(old) = Email::parse(&actor.user.email)
    {
        release_email(svc, &meta, &old, user_id).await;
    }
    svc.visible(accounts::NAME, done.appended.map(|a| a.last_position))
        .await?;
    accounts::user_by_id(&svc.db, user_id)
        .await?
        .ok_or(AppError::NotFound("account"))
}

/// Largest profile image, in bytes.
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
/// Largest profile image width or height, in pixels.
pub const MAX_IMAGE_SIDE: usize = 2048;

/// The accepted image formats, judged by the bytes: (extension, media type).
fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    match imagesize::image_type(bytes).ok()? {
        imagesize::ImageType::Jpeg => Some(("jpg", "image/jpeg")),
        imagesize::ImageType::Png => Some(("png", "image/png")),
        imagesize::ImageType::Gif => Some(("gif", "image/gif")),
        _ => None,
    }
}

/// The media type of a stored image's extension.
pub fn image_media_type(ext: &str) -> &'static str {
    match ext {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// A profile image as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileImage {
    /// Where it is served.
    pub image_url: String,
    /// When the account changed.
    pub updated_at: DateTime<Utc>,
}

/// Stores `bytes` as `actor`'s profile image: a JPEG, PNG or GIF judged by its own bytes, at
/// most [`MAX_IMAGE_BYTES`] and [`MAX_IMAGE_SIDE`] pixels a side (read from the header alone;
/// nothing is decoded).
pub async fn set_image(
    svc: &Services,
    actor: &Actor,
    bytes: Bytes,
) -> Result<ProfileImage, AppError> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(AppError::TooLarge(format!(
            "the image must be at most {MAX_IMAGE_BYTES} bytes"
        )));
    }
    let (ext, _) = sniff(&bytes).ok_or_else(|| {
        AppError::UnsupportedMedia("the image must be a JPEG, PNG or GIF file".into())
    })?;
    let size = imagesize::blob_size(&bytes)
        .map_err(|_| AppError::invalid("image", "the image header is unreadable"))?;
    if size.width > MAX_IMAGE_SIDE
        || size.height > MAX_IMAGE_SIDE
        || size.width == 0
        || size.height == 0
    {
        return Err(AppError::invalid(
            "image",
            format!(
                "is {}x{} pixels; at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} allowed",
                size.width, size.height
            ),
        ));
    }
    let user_id = actor.id();
    let file = format!("{}.{ext}", Uuid::now_v7());
    let path = ObjectPath::from(format!("profile-images/{user_id}/{file}"));
    svc.objects
        .put(&path, bytes.into())
        .await
        .map_err(|e| AppError::internal("storing a profile image", e))?;
    let image_url = format!("/api/profile/image/{user_id}/{file}");
    let done = svc
        .commands
        .execute::<Account>(
            &user_id,
            AccountCommand::ChangeImage {
                image_url: image_url.clone(),
                at: now(),
            },
            actor.metadata(),
        )
        .await?;
    svc.visible(accounts::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let user = accounts::user_by_id(&svc.db, user_id)
        .await?
        .ok_or(AppError::NotFound("account"))?;
    Ok(ProfileImage {
        image_url,
        updated_at: user.updated_at,
    })
}

/// A stored profile image `file` of `user_id` (`{uuid}.{jpg|png|gif}`): its bytes and media
/// type.
pub async fn image(
    svc: &Services,
    user_id: Uuid,
    file: &str,
) -> Result<(Bytes, &'static str), AppError> {
    let not_found = AppError::NotFound("image");
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return Err(not_found);
    };
    if Uuid::parse_str(stem).is_err() || !matches!(ext, "jpg" | "png" | "gif") {
        return Err(not_found);
    }
    let path = ObjectPath::from(format!("profile-images/{user_id}/{stem}.{ext}"));
    let got = match svc.objects.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Err(not_found),
        Err(e) => return Err(AppError::internal("reading a profile image", e)),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| AppError::internal("reading a profile image", e))?;
    Ok((bytes, image_media_type(ext)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse".into(), h.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong horse".into(), h).await.unwrap());
        assert!(
            !verify_password("x".into(), "not a hash".into())
                .await
                .unwrap()
        );
    }

    /// One hash at a time and one waiting: a third caller is refused at once, and once the
    /// first two finish the limiter admits again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_beyond_the_queue_is_refused_not_queued() {
        let limiter = std::sync::Arc::new(HashLimiter::new(1, 1));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Arc::new(std::sync::Mutex::new(gate));
        let hold = |limiter: std::sync::Arc<HashLimiter>| {
            let gate = gate.clone();
            tokio::spawn(async move {
                limiter
                    .run(move || {
                        let _ = gate.lock().map(|g| g.recv());
                    })
                    .await
            })
        };
        let first = hold(limiter.clone());
        let second = hold(limiter.clone());
        // Both admitted (one running, one queued) before the third arrives.
        while limiter.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        match limiter.run(|| ()).await {
            Err(AppError::Busy {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected Busy, got {other:?}"),
        }
        release.send(()).unwrap();
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        limiter.run(|| ()).await.expect("admitted again");
    }

    #[test]
    fn formats_are_judged_by_their_bytes() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").map(|s| s.0),
            Some("png")
        );
        assert_eq!(
            sniff(b"GIF89a\x01\0\x01\0\0\0\0;").map(|s| s.0),
            Some("gif")
        );
        assert_eq!(
            sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01").map(|s| s.0),
            Some("jpg")
        );
        assert_eq!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), None);
        assert_eq!(sniff(b"%PDF-1.7"), None);
    }

    #[test]
    fn passwords_are_bounded() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
    }
}
