//! Payload encryption for crypto-shredding: [`SealedStore`] wraps any [`EventStore`] and seals
//! the personal fields of event payloads with their user's data key, which [`KeyVault`] keeps
//! wrapped under the master key.
//!
//! Which fields of which event types are personal, and whose, is the domain's map
//! ([`confab_domain::privacy::PERSONAL`]). On append each listed field's value is replaced by
//! `{"$enc": {"kid", "nonce", "ct", "type"}}`: AES-256-GCM of the value's JSON under the user's
//! data key `kid`, with the user, the event id and the field's path as associated data, so a
//! sealed field copied into another event or field does not open. Every read path opens them
//! again. Once a user's data key is destroyed ([`KeyVault::destroy`]) their fields read as
//! [`ERASED`] (an array as `[]`, an object as `{}`), in clear events written before encryption
//! existed too; ids, types, timestamps and amounts were never sealed, so projections, the audit
//! and billing still replay.
//!
//! Unwrapped data keys are cached in memory (bounded), so an append costs one AES-GCM per field
//! and no database round trip once a user's key is known.

use crate::{
    AppendResult, EventStore, ExpectedVersion, Limits, NewEvent, RecordedEvent, StoreError,
    StoreResult,
};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::Engine as _;
use confab_domain::account::event_types::USER_ERASED;
use confab_domain::privacy::{ERASED, OWNS_STREAM, Personal, Subject, personal};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const KID_LABEL: &[u8] = b"confab/key-id/v1\0";
const WRAP_LABEL: &[u8] = b"confab/data-key/v1\0";
const FIELD_LABEL: &[u8] = b"confab/field/v1\0";
/// The key of a sealed field's envelope.
pub const ENVELOPE: &str = "$enc";
/// Most cached entries per map before the cache starts over.
const CACHE_CAP: usize = 16_384;

/// The id of a master key: the first 8 hex digits of SHA-256 over a domain-separated encoding
/// of it. It names the key next to what it sealed without revealing it.
pub fn master_key_id(key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(KID_LABEL)
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..4])
}

/// The master keys by id: the current one (`CONFAB_ENCRYPTION_KEY`) wraps new data keys, the
/// previous ones (`CONFAB_ENCRYPTION_KEY_PREVIOUS`) only unwrap, until `confab keys rotate`
/// has rewrapped everything under the current one.
#[derive(Clone)]
pub struct MasterKeys {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKeys(current: {})", self.current)
    }
}

impl MasterKeys {
    /// A keyring with `current` and any `previous` keys.
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        let mut keys = HashMap::new();
        for k in previous.iter().chain(std::iter::once(current)) {
            keys.insert(
                master_key_id(k),
                Aes256Gcm::new(&Key::<Aes256Gcm>::from(*k)),
            );
        }
        MasterKeys {
            current: master_key_id(current),
            keys,
        }
    }

    /// The id of the key that wraps new data keys.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    fn get(&self, id: &str) -> StoreResult<&Aes256Gcm> {
        self.keys.get(id).ok_or_else(|| {
            StoreError::Serialization(format!(
                "a data key is wrapped under master key id {id}, which is not configured (the \
                 current one is {}): set CONFAB_ENCRYPTION_KEY_PREVIOUS to that key",
                self.current
            ))
        })
    }
}

/// Where the data keys are kept: the `data_keys` table of the SQL database.
#[derive(Clone, Debug)]
pub enum KeyDb {
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

impl KeyDb {
    /// Before a write on SQLite: the process's write gate of that database file, held until
    /// dropped (SQLite takes one writer at a time). Nothing on PostgreSQL.
    async fn write_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self {
            KeyDb::Sqlite(p) => Some(
                crate::sqlite::write_gate(&p.connect_options())
                    .lock_owned()
                    .await,
            ),
            KeyDb::Postgres(_) => None,
        }
    }
}

/// `$body` with `$p` bound to the pool, whichever database `$db` is (the same statement on
/// both: sqlx's types differ per database, the code does not).
macro_rules! on_key_db {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            KeyDb::Sqlite($p) => $body,
            KeyDb::Postgres($p) => $body,
        }
    };
}

/// A user's data key as cached.
#[derive(Clone)]
enum UserKey {
    Live {
        kid: Uuid,
        cipher: Arc<Aes256Gcm>,
    },
    Destroyed,
    /// No key yet (seen by a read of a clear field; an append makes one).
    Absent,
}

/// A data key by id as cached: its user, and the key unless destroyed.
#[derive(Clone)]
struct KidEntry {
    user: Uuid,
    cipher: Option<Arc<Aes256Gcm>>,
}

/// A stored data key row: key id, user, master key id, wrapped key (NULL once destroyed).
type KeyRow = (Uuid, Uuid, String, Option<Vec<u8>>);

/// What `confab keys rotate` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotated {
    /// Data keys rewrapped under the current master key.
    pub rewrapped: u64,
    /// Data keys already under it.
    pub current: u64,
    /// Destroyed keys (nothing to wrap).
    pub destroyed: u64,
}

/// The users' data keys: made on a user's first personal field, wrapped under the master key,
/// destroyed on erasure; unwrapped keys cached in memory.
pub struct KeyVault {
    master: MasterKeys,
    db: KeyDb,
    by_user: Mutex<HashMap<Uuid, UserKey>>,
    by_kid: Mutex<HashMap<Uuid, KidEntry>>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyVault({:?})", self.master)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
    if map.len() >= CACHE_CAP {
        map.clear();
    }
    map.insert(k, v);
}

fn wrap_aad(user: Uuid, kid: Uuid) -> Vec<u8> {
    [WRAP_LABEL, user.as_bytes(), kid.as_bytes()].concat()
}

impl KeyVault {
    /// A vault over the `data_keys` table of `db`, wrapping with `master`.
    pub fn new(master: MasterKeys, db: KeyDb) -> Self {
        KeyVault {
            master,
            db,
            by_user: Mutex::new(HashMap::new()),
            by_kid: Mutex::new(HashMap::new()),
        }
    }

    /// The master keyring.
    pub fn master(&self) -> &MasterKeys {
        &self.master
    }

    fn unwrap_key(&self, row: &KeyRow) -> StoreResult<Option<Arc<Aes256Gcm>>> {
        Ok(self.export_key(row)?.map(|key| cipher_of(&key)))
    }

    fn wrap_key(&self, master_id: &str, user: Uuid, kid: Uuid, key: &[u8]) -> StoreResult<Vec<u8>> {
        let master = self.master.get(master_id)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = master
            .encrypt(
                &nonce,
                Payload {
                    msg: key,
                    aad: &wrap_aad(user, kid),
                },
            )
            .map_err(|_| StoreError::Serialization("data key wrapping failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(ct);
        Ok(out)
    }

    fn remember(&self, row: &KeyRow, cipher: Option<Arc<Aes256Gcm>>) {
        let (kid, user, _, _) = row;
        let entry = match &cipher {
            Some(c) => UserKey::Live {
                kid: *kid,
                cipher: c.clone(),
            },
            None => UserKey::Destroyed,
        };
        insert_bounded(&mut lock(&self.by_user), *user, entry);
        insert_bounded(
            &mut lock(&self.by_kid),
            *kid,
            KidEntry {
                user: *user,
                cipher,
            },
        );
    }

    async fn row_by_user(&self, user: Uuid) -> StoreResult<Option<KeyRow>> {
        const SQL: &str =
            "SELECT key_id, user_id, master_key_id, wrapped FROM data_keys WHERE user_id = $1";
        Ok(on_key_db!(&self.db, |p| sqlx::query_as(SQL)
            .bind(user)
            .fetch_optional(p)
            .await?))
    }

    async fn row_by_kid(&self, kid: Uuid) -> StoreResult<Option<KeyRow>> {
        const SQL: &str =
            "SELECT key_id, user_id, master_key_id, wrapped FROM data_keys WHERE key_id = $1";
        Ok(on_key_db!(&self.db, |p| sqlx::query_as(SQL)
            .bind(kid)
            .fetch_optional(p)
            .await?))
    }

    async fn insert(&self, row: &KeyRow) -> StoreResult<()> {
        const SQL: &str = "INSERT INTO data_keys (key_id, user_id, master_key_id, wrapped, \
                           created_at, destroyed_at) VALUES ($1, $2, $3, $4, $5, $6) \
                           ON CONFLICT (user_id) DO NOTHING";
        let now = chrono::Utc::now();
        let destroyed = row.3.is_none().then_some(now);
        let _gate = self.db.write_gate().await;
        on_key_db!(&self.db, |p| sqlx::query(SQL)
            .bind(row.0)
            .bind(row.1)
            .bind(&row.2)
            .bind(&row.3)
            .bind(now)
            .bind(destroyed)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// The data key of `user` (made now if they have none), or `None` if it was destroyed.
    pub async fn for_user(&self, user: Uuid) -> StoreResult<Option<(Uuid, Arc<Aes256Gcm>)>> {
        match lock(&self.by_user).get(&user).cloned() {
            Some(UserKey::Live { kid, cipher }) => return Ok(Some((kid, cipher))),
            Some(UserKey::Destroyed) => return Ok(None),
            Some(UserKey::Absent) | None => {}
        }
        let row = match self.row_by_user(user).await? {
            Some(row) => row,
            None => {
                let key = zeroizing::Key(Aes256Gcm::generate_key(OsRng).to_vec());
                let kid = Uuid::now_v7();
                let current = self.master.current_id().to_owned();
                let wrapped = self.wrap_key(&current, user, kid, &key)?;
                self.insert(&(kid, user, current, Some(wrapped))).await?;
                // Another process (or task) may have made one first: theirs stands.
                self.row_by_user(user).await?.ok_or_else(|| {
                    StoreError::Serialization(format!("the data key of {user} vanished"))
                })?
            }
        };
        let cipher = self.unwrap_key(&row)?;
        self.remember(&row, cipher.clone());
        Ok(cipher.map(|c| (row.0, c)))
    }

    /// The user and key of data key `kid`; the key is `None` if it was destroyed.
    async fn by_kid(&self, kid: Uuid) -> StoreResult<KidEntry> {
        if let Some(e) = lock(&self.by_kid).get(&kid).cloned() {
            return Ok(e);
        }
        let row = self
            .row_by_kid(kid)
            .await?
            .ok_or_else(|| StoreError::Serialization(format!("unknown data key {kid}")))?;
        let cipher = self.unwrap_key(&row)?;
        self.remember(&row, cipher.clone());
        Ok(KidEntry {
            user: row.1,
            cipher,
        })
    }

    /// Whether `user`'s data key was destroyed (a user who never had one was not).
    pub async fn is_destroyed(&self, user: Uuid) -> StoreResult<bool> {
        if let Some(k) = lock(&self.by_user).get(&user) {
            return Ok(matches!(k, UserKey::Destroyed));
        }
        // Remembered either way: a replay of clear events asks once per user, not per event.
        match self.row_by_user(user).await? {
            Some(row) => {
                let cipher = self.unwrap_key(&row)?;
                let destroyed = cipher.is_none();
                self.remember(&row, cipher);
                Ok(destroyed)
            }
            None => {
                insert_bounded(&mut lock(&self.by_user), user, UserKey::Absent);
                Ok(false)
            }
        }
    }

    /// Destroys `user`'s data key (crypto-shredding): every field sealed with it reads as
    /// erased from now on, and nothing personal of theirs can be recorded again. Returns
    /// whether there was a live key to destroy.
    pub async fn destroy(&self, user: Uuid) -> StoreResult<bool> {
        const SQL: &str = "UPDATE data_keys SET wrapped = NULL, destroyed_at = $2 \
                           WHERE user_id = $1 AND wrapped IS NOT NULL";
        let now = chrono::Utc::now();
        let gate = self.db.write_gate().await;
        let n = on_key_db!(&self.db, |p| sqlx::query(SQL)
            .bind(user)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected());
        drop(gate);
        if n == 0 && self.row_by_user(user).await?.is_none() {
            // No key yet: record a destroyed one, so that none is ever made for them.
            let master = self.master.current_id().to_owned();
            self.insert(&(Uuid::now_v7(), user, master, None)).await?;
        }
        self.forget(user);
        Ok(n > 0)
    }

    /// Drops `user`'s key from the caches and remembers it destroyed: what a process does when
    /// it reads the user's erasure in the log (another process destroyed the key).
    pub fn forget(&self, user: Uuid) {
        insert_bounded(&mut lock(&self.by_user), user, UserKey::Destroyed);
        for e in lock(&self.by_kid).values_mut() {
            if e.user == user {
                e.cipher = None;
            }
        }
    }

    /// Rewraps every live data key under the current master key (`confab keys rotate`).
    pub async fn rotate(&self) -> StoreResult<Rotated> {
        const ALL: &str = "SELECT key_id, user_id, master_key_id, wrapped FROM data_keys";
        const SET: &str = "UPDATE data_keys SET master_key_id = $2, wrapped = $3 \
                           WHERE key_id = $1 AND master_key_id = $4 AND wrapped IS NOT NULL";
        let rows: Vec<KeyRow> = on_key_db!(&self.db, |p| sqlx::query_as(ALL).fetch_all(p).await?);
        let current = self.master.current_id().to_owned();
        let mut out = Rotated::default();
        for row in rows {
            let (kid, user, master_id, wrapped) = &row;
            if wrapped.is_none() {
                out.destroyed += 1;
                continue;
            }
            if *master_id == current {
                out.current += 1;
                continue;
            }
            let Some(key) = self.export_key(&row)? else {
                continue;
            };
            let cipher = cipher_of(&key);
            let rewrapped = self.wrap_key(&current, *user, *kid, &key)?;
            let gate = self.db.write_gate().await;
            on_key_db!(&self.db, |p| sqlx::query(SET)
                .bind(kid)
                .bind(&current)
                .bind(&rewrapped)
                .bind(master_id)
                .execute(p)
                .await?
                .rows_affected());
            drop(gate);
            self.remember(&row, Some(cipher));
            out.rewrapped += 1;
        }
        Ok(out)
    }

    /// The raw data key of a row, for rewrapping.
    fn export_key(&self, row: &KeyRow) -> StoreResult<Option<zeroizing::Key>> {
        let (kid, user, master_id, wrapped) = row;
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        let master = self.master.get(master_id)?;
        let damaged = || StoreError::Serialization(format!("data key {kid} is damaged"));
        if wrapped.len() < 12 {
            return Err(damaged());
        }
        let (nonce, ct) = wrapped.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| damaged())?;
        let plain = master
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: &wrap_aad(*user, *kid),
                },
            )
            .map_err(|_| {
                StoreError::Serialization(format!(
                    "data key {kid} does not unwrap under master key {master_id}"
                ))
            })?;
        if plain.len() != 32 {
            return Err(damaged());
        }
        Ok(Some(zeroizing::Key(plain)))
    }
}

/// An AES-256-GCM cipher over a 32-byte data key (checked by [`KeyVault::export_key`]).
fn cipher_of(key: &[u8]) -> Arc<Aes256Gcm> {
    let mut k = [0u8; 32];
    k.copy_from_slice(&key[..32]);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(k));
    k.iter_mut().for_each(|b| *b = 0);
    Arc::new(cipher)
}

mod zeroizing {
    /// A raw key that is overwritten when dropped.
    pub struct Key(pub Vec<u8>);
    impl std::ops::Deref for Key {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Key {
        fn drop(&mut self) {
            self.0.iter_mut().for_each(|b| *b = 0);
        }
    }
}

fn field_aad(user: Uuid, event_id: Uuid, path: &[&str]) -> Vec<u8> {
    let mut aad = [FIELD_LABEL, user.as_bytes(), event_id.as_bytes()].concat();
    aad.extend(path.join(".").as_bytes());
    aad
}

fn field_mut<'a>(payload: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(payload, |v, k| v.get_mut(*k))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    }
}

fn erased(json_type: &str) -> Value {
    match json_type {
        "array" => Value::Array(vec![]),
        "object" => Value::Object(Default::default()),
        "number" => Value::from(0),
        "bool" => Value::Bool(false),
        "null" => Value::Null,
        _ => Value::String(ERASED.to_owned()),
    }
}

/// Seals `value` in place for `user` under data key `kid`.
fn seal(
    cipher: &Aes256Gcm,
    kid: Uuid,
    user: Uuid,
    event_id: Uuid,
    path: &[&str],
    value: &mut Value,
) -> StoreResult<()> {
    if value.is_null() {
        return Ok(());
    }
    let plain = serde_json::to_vec(value).map_err(|e| StoreError::Serialization(e.to_string()))?;
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &plain,
                aad: &field_aad(user, event_id, path),
            },
        )
        .map_err(|_| StoreError::Serialization("field encryption failed".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut env = serde_json::Map::with_capacity(4);
    env.insert("kid".into(), Value::String(kid.to_string()));
    env.insert("nonce".into(), Value::String(b64.encode(nonce)));
    env.insert("ct".into(), Value::String(b64.encode(ct)));
    env.insert("type".into(), Value::String(json_type(value).into()));
    let mut outer = serde_json::Map::with_capacity(1);
    outer.insert(ENVELOPE.into(), Value::Object(env));
    *value = Value::Object(outer);
    Ok(())
}

/// The envelope of a sealed field, if `value` is one.
fn envelope(value: &Value) -> Option<&serde_json::Map<String, Value>> {
    match value {
        Value::Object(o) if o.len() == 1 => o.get(ENVELOPE)?.as_object(),
        _ => None,
    }
}

/// An [`EventStore`] that seals personal payload fields on append and opens them on every read.
pub struct SealedStore {
    inner: Arc<dyn EventStore>,
    vault: Arc<KeyVault>,
    owners: Mutex<HashMap<String, Uuid>>,
}

impl SealedStore {
    /// Wraps `inner`, with data keys from `vault`.
    pub fn new(inner: Arc<dyn EventStore>, vault: Arc<KeyVault>) -> Self {
        SealedStore {
            inner,
            vault,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// The data keys.
    pub fn vault(&self) -> &Arc<KeyVault> {
        &self.vault
    }

    /// The owner of `stream`: the `owner` of its first event (one of [`OWNS_STREAM`]).
    async fn stream_owner(&self, stream: &str) -> StoreResult<Option<Uuid>> {
        if let Some(o) = lock(&self.owners).get(stream) {
            return Ok(Some(*o));
        }
        let first = self.inner.read_stream(stream, 1, 1).await?;
        let owner = first
            .first()
            .filter(|e| OWNS_STREAM.contains(&e.event_type.as_str()))
            .and_then(|e| uuid_at(&e.payload, "owner"));
        if let Some(o) = owner {
            insert_bounded(&mut lock(&self.owners), stream.to_owned(), o);
        }
        Ok(owner)
    }

    async fn subject(
        &self,
        rule: &Personal,
        stream: &str,
        payload: &Value,
        batch_owner: Option<Uuid>,
    ) -> StoreResult<Option<Uuid>> {
        match rule.subject {
            Subject::Field(f) | Subject::FieldIfPresent(f) => Ok(uuid_at(payload, f)),
            Subject::StreamOwner => match batch_owner {
                Some(o) => Ok(Some(o)),
                None => self.stream_owner(stream).await,
            },
        }
    }

    async fn seal_events(&self, stream: &str, events: &mut [NewEvent]) -> StoreResult<()> {
        let batch_owner = events
            .iter()
            .find(|e| OWNS_STREAM.contains(&e.event_type.as_str()))
            .and_then(|e| uuid_at(&e.payload, "owner"));
        for e in events.iter_mut() {
            let Some(rule) = personal(&e.event_type) else {
                continue;
            };
            let holds_personal = rule.fields.iter().any(|path| {
                path.iter()
                    .try_fold(&e.payload, |v, k| v.get(*k))
                    .is_some_and(|v| !v.is_null() && envelope(v).is_none())
            });
            if !holds_personal {
                // Nothing to seal (a payload without those fields is the projections' to
                // refuse, not the store's).
                continue;
            }
            let subject = self.subject(rule, stream, &e.payload, batch_owner).await?;
            if subject.is_none() && matches!(rule.subject, Subject::FieldIfPresent(_)) {
                // About no user of Confab: nothing of a user's to seal.
                continue;
            }
            let Some(user) = subject else {
                return Err(StoreError::InvalidInput(format!(
                    "{} on {stream}: no user to seal its personal data for",
                    e.event_type
                )));
            };
            let Some((kid, cipher)) = self.vault.for_user(user).await? else {
                return Err(StoreError::InvalidInput(format!(
                    "{} on {stream}: user {user} is erased; their personal data is not recorded",
                    e.event_type
                )));
            };
            for path in rule.fields {
                if let Some(v) = field_mut(&mut e.payload, path)
                    && envelope(v).is_none()
                {
                    seal(&cipher, kid, user, e.event_id, path, v)?;
                }
            }
        }
        Ok(())
    }

    async fn open_events(&self, events: &mut [RecordedEvent]) -> StoreResult<()> {
        for e in events.iter_mut() {
            if e.event_type == USER_ERASED {
                if let Some(user) = uuid_at(&e.payload, "userId") {
                    self.vault.forget(user);
                }
                continue;
            }
            if e.version == 1
                && OWNS_STREAM.contains(&e.event_type.as_str())
                && let Some(o) = uuid_at(&e.payload, "owner")
            {
                insert_bounded(&mut lock(&self.owners), e.stream.clone(), o);
            }
            let Some(rule) = personal(&e.event_type) else {
                continue;
            };
            let mut clear_subject: Option<Option<Uuid>> = None;
            for path in rule.fields {
                let Some(v) = field_mut(&mut e.payload, path) else {
                    continue;
                };
                if let Some(env) = envelope(v) {
                    *v = self.open(env, e.event_id, path).await?;
                    continue;
                }
                // A field written in clear, before encryption: still read, but as erased once
                // its user is.
                if v.is_null() {
                    continue;
                }
                let subject = match clear_subject {
                    Some(s) => s,
                    None => {
                        let payload = &e.payload;
                        let s = match rule.subject {
                            Subject::Field(f) | Subject::FieldIfPresent(f) => uuid_at(payload, f),
                            Subject::StreamOwner => self.stream_owner(&e.stream).await?,
                        };
                        clear_subject = Some(s);
                        s
                    }
                };
                if let Some(user) = subject
                    && self.vault.is_destroyed(user).await?
                    && let Some(v) = field_mut(&mut e.payload, path)
                {
                    *v = erased(json_type(v));
                }
            }
        }
        Ok(())
    }

    async fn open(
        &self,
        env: &serde_json::Map<String, Value>,
        event_id: Uuid,
        path: &[&str],
    ) -> StoreResult<Value> {
        let bad = || StoreError::Serialization(format!("malformed sealed field {path:?}"));
        let text = |k: &str| env.get(k).and_then(Value::as_str).ok_or_else(bad);
        let kid: Uuid = text("kid")?.parse().map_err(|_| bad())?;
        let ty = text("type")?;
        let entry = self.vault.by_kid(kid).await?;
        let Some(cipher) = entry.cipher else {
            return Ok(erased(ty));
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce: [u8; 12] = b64
            .decode(text("nonce")?)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        let ct = b64.decode(text("ct")?).map_err(|_| bad())?;
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ct,
                    aad: &field_aad(entry.user, event_id, path),
                },
            )
            .map_err(|_| {
                StoreError::Serialization(format!(
                    "sealed field {path:?} of event {event_id} does not open (damaged or moved)"
                ))
            })?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Serialization(e.to_string()))
    }
}

fn uuid_at(payload: &Value, field: &str) -> Option<Uuid> {
    payload.get(field)?.as_str()?.parse().ok()
}

#[async_trait]
impl EventStore for SealedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        self.seal_events(stream, &mut events).await?;
        let owner = events
            .iter()
            .find(|e| OWNS_STREAM.contains(&e.event_type.as_str()))
            .and_then(|e| uuid_at(&e.payload, "owner"));
        let result = self.inner.append(stream, expected, events).await?;
        if let Some(o) = owner {
            insert_bounded(&mut lock(&self.owners), stream.to_owned(), o);
        }
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let mut events = self.inner.read_stream(stream, from_version, limit).await?;
        self.open_events(&mut events).await?;
        Ok(events)
    }

    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>> {
        let mut events = self.inner.read_all(after, limit).await?;
        self.open_events(&mut events).await?;
        Ok(events)
    }

    async fn head_position(&self) -> StoreResult<u64> {
        self.inner.head_position().await
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> StoreResult<u64> {
        self.inner.wait_for_events(after, timeout).await
    }

    fn limits(&self) -> &Limits {
        self.inner.limits()
    }
}
