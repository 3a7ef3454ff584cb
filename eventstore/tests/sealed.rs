//! Payload encryption ([`SealedStore`]) over the SQLite adapter: personal fields are sealed in
//! the log and open on read, read as erased once their user's key is destroyed, clear events
//! from before encryption still read, and master key rotation keeps every live key usable.

use confab_eventstore::sealed::{KeyDb, KeyVault, MasterKeys, SealedStore};
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::{EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, StoreError};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

const OLD: [u8; 32] = [7; 32];
const NEW: [u8; 32] = [9; 32];

struct Fixture {
    raw: Arc<dyn EventStore>,
    pool: sqlx::SqlitePool,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let options = connect_options(&url).expect("options");
    let pool = read_pool(options.clone()).await.expect("pool");
    confab_migrations::SQLITE.run(&pool).await.expect("migrate");
    let raw = SqliteStore::open(options, pool.clone(), Limits::default())
        .await
        .expect("open");
    Fixture {
        raw: Arc::new(raw),
        pool,
        _dir: dir,
    }
}

impl Fixture {
    fn sealed(&self, master: MasterKeys) -> (SealedStore, Arc<KeyVault>) {
        let vault = Arc::new(KeyVault::new(master, KeyDb::Sqlite(self.pool.clone())));
        (SealedStore::new(self.raw.clone(), vault.clone()), vault)
    }
}

fn ev(t: &str, payload: Value) -> NewEvent {
    NewEvent::new(t, 1, payload, EventMetadata::default())
}

fn registered(user: Uuid, email: &str) -> NewEvent {
    ev(
        "account.registered",
        json!({"userId": user, "email": email, "name": "Name", "passwordHash": "$argon2id$x",
               "role": "user", "at": "2026-01-01T00:00:00Z"}),
    )
}

async fn payloads(store: &dyn EventStore) -> Vec<Value> {
    store
        .read_all(0, 1000)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

#[tokio::test]
async fn personal_fields_are_sealed_in_the_log_and_open_on_every_read() {
    let f = fixture().await;
    let (store, _) = f.sealed(MasterKeys::new(&OLD, &[]));
    let (ann, chat) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .append(
            &format!("account-{ann}"),
            ExpectedVersion::NoStream,
            vec![registered(ann, "ann-secret@example.com")],
        )
        .await
        .expect("append");
    let stream = format!("chat-{chat}");
    let created = ev(
        "chat.created",
        json!({"chatId": chat, "owner": ann, "title": "ann's title", "at": "2026-01-01T00:00:00Z"}),
    );
    store
        .append(&stream, ExpectedVersion::NoStream, vec![created])
        .await
        .expect("create");
    // A later event of the stream: its owner comes from the stream's first event.
    let sent = ev(
        "chat.message_sent",
        json!({"chatId": chat, "messageId": Uuid::now_v7(), "author": ann, "role": "user",
               "content": "ann's secret message", "kind": "text", "at": "2026-01-01T00:00:00Z"}),
    );
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![sent])
        .await
        .expect("send");

    let raw = serde_json::to_string(&payloads(&*f.raw).await).expect("json");
    for secret in [
        "ann-secret",
        "ann's title",
        "ann's secret message",
        "argon2id",
    ] {
        assert!(
            !raw.contains(secret),
            "{secret} is in the log in clear: {raw}"
        );
    }
    assert!(raw.contains("$enc"));
    assert!(raw.contains(&ann.to_string()), "ids stay in clear");

    // A fresh process (no cached keys) reads them back, by stream and from the global log.
    let (fresh, _) = f.sealed(MasterKeys::new(&OLD, &[]));
    let all = payloads(&fresh).await;
    assert_eq!(all[0]["email"], "ann-secret@example.com");
    assert_eq!(all[1]["title"], "ann's title");
    assert_eq!(all[2]["content"], "ann's secret message");
    let by_stream = fresh.read_stream(&stream, 1, 10).await.expect("stream");
    assert_eq!(by_stream[1].payload["content"], "ann's secret message");
}

#[tokio::test]
async fn a_destroyed_key_reads_as_erased_and_refuses_new_personal_data() {
    let f = fixture().await;
    let (store, vault) = f.sealed(MasterKeys::new(&OLD, &[]));
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (u, email) in [(ann, "ann@example.com"), (bob, "bob@example.com")] {
        store
            .append(
                &format!("account-{u}"),
                ExpectedVersion::NoStream,
                vec![registered(u, email)],
            )
            .await
            .expect("append");
    }
    // An event written in clear before encryption existed (straight to the store).
    f.raw
        .append(
            "settings-legacy",
            ExpectedVersion::NoStream,
            vec![ev(
                "settings.updated",
                json!({"userId": ann, "change": {"context": "ann's old context"},
                       "at": "2026-01-01T00:00:00Z"}),
            )],
        )
        .await
        .expect("legacy");
    assert_eq!(
        payloads(&store).await[2]["change"]["context"],
        "ann's old context",
        "clear events still read"
    );

    assert!(vault.destroy(ann).await.expect("destroy"));
    for reader in [store, f.sealed(MasterKeys::new(&OLD, &[])).0] {
        let all = payloads(&reader).await;
        assert_eq!(all[0]["email"], "[erased]");
        assert_eq!(all[0]["name"], "[erased]");
        assert_eq!(all[0]["userId"], ann.to_string());
        assert_eq!(all[1]["email"], "bob@example.com", "others are untouched");
        assert_eq!(
            all[2]["change"],
            json!({}),
            "clear fields of the erased read as erased"
        );
        let refused = reader
            .append(
                &format!("settings-{ann}"),
                ExpectedVersion::Any,
                vec![ev(
                    "settings.updated",
                    json!({"userId": ann, "change": {"context": "new"}, "at": "2026-01-01T00:00:00Z"}),
                )],
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::InvalidInput(_))),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn rotation_rewraps_every_live_key_under_the_current_master_key() {
    let f = fixture().await;
    let (old, _) = f.sealed(MasterKeys::new(&OLD, &[]));
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (u, email) in [(ann, "ann@example.com"), (bob, "bob@example.com")] {
        old.append(
            &format!("account-{u}"),
            ExpectedVersion::NoStream,
            vec![registered(u, email)],
        )
        .await
        .expect("append");
    }
    // The new master key alone cannot unwrap keys made under the old one.
    let (new_only, _) = f.sealed(MasterKeys::new(&NEW, &[]));
    assert!(new_only.read_all(0, 10).await.is_err());

    let (rotating, vault) = f.sealed(MasterKeys::new(&NEW, &[OLD]));
    vault.destroy(ann).await.expect("destroy");
    let r = vault.rotate().await.expect("rotate");
    assert_eq!((r.rewrapped, r.current, r.destroyed), (1, 0, 1));
    assert_eq!(vault.rotate().await.expect("again").rewrapped, 0);
    drop(rotating);

    let (after, _) = f.sealed(MasterKeys::new(&NEW, &[]));
    let all = payloads(&after).await;
    assert_eq!(all[0]["email"], "[erased]");
    assert_eq!(all[1]["email"], "bob@example.com");
}
