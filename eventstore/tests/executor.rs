//! The command executor against both SQL adapters: concurrent commands of one aggregate share
//! appends without losing any, refusals stay with their own command, and a second process
//! writing the same stream (a second executor over the same database) is caught by the expected
//! version and absorbed by reloading. Aggregates split out of the account still see the history
//! written to account streams before the split.

use chrono::Utc;
use confab_domain::EventSchema;
use confab_domain::account::{
    Account, AccountCommand, AccountEvent, AccountRegistered, AccountRole, DisplayName, Email,
};
use confab_domain::billing::{SubscriptionReport, SubscriptionStatus};
use confab_domain::billing_account::{
    BillingAccount, BillingAccountCommand, BillingAccountError, BillingAccountEvent,
    StripeCustomerLinked, TierChanged,
};
use confab_domain::chat::{Chat, ChatCommand, ChatError};
use confab_domain::session::{
    Session, SessionCommand, SessionError, SessionEvent, SessionKey, SessionStarted,
};
use confab_domain::{Aggregate, ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::aggregate::{CommandExecutor, ExecuteError, execute, exists, load};
use confab_eventstore::postgres::PostgresStore;
use confab_eventstore::sqlite::{SqliteStore, connect_options, read_pool};
use confab_eventstore::testing::fresh_postgres_database;
use confab_eventstore::{
    EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, StoreError, read_whole_stream,
};
use futures::future::join_all;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use uuid::Uuid;

/// Opens a fresh store; `second` opens another handle on the same database, as a second
/// process would.
struct Backend {
    first: Arc<dyn EventStore>,
    second: Arc<dyn EventStore>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite(limits: Limits) -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let options = connect_options(&url).expect("options");
    let pool = read_pool(options.clone()).await.expect("pool");
    confab_migrations::SQLITE.run(&pool).await.expect("migrate");
    let first: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(options.clone(), pool, limits.clone())
            .await
            .expect("open"),
    );
    let pool = read_pool(options.clone()).await.expect("pool");
    let second: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(options, pool, limits)
            .await
            .expect("open"),
    );
    Backend {
        first,
        second,
        _dir: Some(dir),
    }
}

async fn postgres(limits: Limits) -> Backend {
    let url = fresh_postgres_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect");
    confab_migrations::POSTGRES
        .run(&pool)
        .await
        .expect("migrate");
    let first: Arc<dyn EventStore> = Arc::new(
        PostgresStore::open(pool, limits.clone())
            .await
            .expect("open"),
    );
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect");
    let second: Arc<dyn EventStore> =
        Arc::new(PostgresStore::open(pool, limits).await.expect("open"));
    Backend {
        first,
        second,
        _dir: None,
    }
}

fn send(owner: Uuid, text: &str) -> ChatCommand {
    ChatCommand::SendMessage {
        message_id: Uuid::now_v7(),
        actor: owner,
        role: Role::User,
        content: MessageContent::parse(text).expect("content"),
        kind: MessageKind::Text,
        at: Utc::now(),
    }
}

async fn new_chat(executor: &Arc<CommandExecutor>) -> (Uuid, Uuid) {
    let (chat, owner) = (Uuid::now_v7(), Uuid::now_v7());
    executor
        .execute::<Chat>(
            &chat,
            ChatCommand::Create {
                chat_id: chat,
                owner,
                title: ChatTitle::parse("executor").expect("title"),
                at: Utc::now(),
            },
            EventMetadata::default(),
        )
        .await
        .expect("create");
    (chat, owner)
}

async fn concurrent_commands_on_one_aggregate_all_land_in_order(b: Backend) {
    let executor = CommandExecutor::new(b.first.clone());
    let (chat, owner) = new_chat(&executor).await;
    let results = join_all((0..300).map(|i| {
        let executor = executor.clone();
        async move {
            executor
                .execute::<Chat>(
                    &chat,
                    send(owner, &format!("m{i}")),
                    EventMetadata::default(),
                )
                .await
        }
    }))
    .await;
    let mut positions = Vec::new();
    let mut appends = std::collections::BTreeSet::new();
    for r in results {
        let done = r.expect("every command goes through");
        assert_eq!(done.events.len(), 1);
        let appended = done.appended.expect("appended");
        positions.push(appended.last_position);
        appends.insert(appended.first_position);
    }
    assert!(
        appends.len() < 300,
        "queued commands share appends ({} appends for 300 commands)",
        appends.len()
    );
    let events = read_whole_stream(b.first.as_ref(), &Chat::stream_name(&chat))
        .await
        .expect("read");
    assert_eq!(events.len(), 301, "create plus 300 messages, none lost");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=301).collect::<Vec<_>>());
    // Each answer's position covers the command's own event, so read-your-writes holds.
    for (i, p) in positions.iter().enumerate() {
        let own = events
            .iter()
            .find(|e| e.payload["content"] == format!("m{i}"))
            .expect("own event");
        assert!(own.position <= *p);
    }
    let (state, version) = load::<Chat>(b.first.as_ref(), &chat).await.expect("load");
    assert_eq!(version, 301);
    assert_eq!(state.messages.len(), 300);
}

async fn a_refused_command_fails_alone(b: Backend) {
    let executor = CommandExecutor::new(b.first.clone());
    let (chat, owner) = new_chat(&executor).await;
    let stranger = Uuid::now_v7();
    let results = join_all((0..40).map(|i| {
        let executor = executor.clone();
        let actor = if i % 4 == 0 { stranger } else { owner };
        async move {
            executor
                .execute::<Chat>(&chat, send(actor, "hello"), EventMetadata::default())
                .await
        }
    }))
    .await;
    for (i, r) in results.into_iter().enumerate() {
        if i % 4 == 0 {
            assert!(
                matches!(r, Err(ExecuteError::Domain(ChatError::ChatNotFound))),
                "{i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    let (state, _) = load::<Chat>(b.first.as_ref(), &chat).await.expect("load");
    assert_eq!(state.messages.len(), 30);
}

async fn an_oversized_command_fails_alone(b: Backend) {
    let executor = CommandExecutor::new(b.first.clone());
    let (chat, owner) = new_chat(&executor).await;
    let big = "x".repeat(5_000);
    let results = join_all((0..20).map(|i| {
        let executor = executor.clone();
        let text = if i == 7 { big.clone() } else { "small".into() };
        async move {
            executor
                .execute::<Chat>(&chat, send(owner, &text), EventMetadata::default())
                .await
        }
    }))
    .await;
    for (i, r) in results.into_iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(
                    r,
                    Err(ExecuteError::Store(StoreError::PayloadTooLarge { .. }))
                ),
                "{r:?}"
            );
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    let (state, version) = load::<Chat>(b.first.as_ref(), &chat).await.expect("load");
    assert_eq!((state.messages.len(), version), (19, 20));
}

async fn more_events_than_one_append_takes_are_split(b: Backend) {
    let executor = CommandExecutor::new(b.first.clone());
    let (chat, owner) = new_chat(&executor).await;
    let results = join_all((0..200).map(|_| {
        let executor = executor.clone();
        async move {
            executor
                .execute::<Chat>(&chat, send(owner, "hi"), EventMetadata::default())
                .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    let (state, version) = load::<Chat>(b.first.as_ref(), &chat).await.expect("load");
    assert_eq!((state.messages.len(), version), (200, 201));
}

/// A command refused on this process's cached state is decided again when another process
/// wrote the stream since: the message the other process added can be edited here at once.
async fn a_refusal_is_never_decided_on_a_stale_state(b: Backend) {
    let one = CommandExecutor::new(b.first.clone());
    let two = CommandExecutor::new(b.second.clone());
    let (chat, owner) = new_chat(&one).await;
    // `one` caches the chat; `two` adds a message `one` has not seen.
    one.execute::<Chat>(&chat, send(owner, "cached"), EventMetadata::default())
        .await
        .expect("warm one");
    let message = Uuid::now_v7();
    two.execute::<Chat>(
        &chat,
        ChatCommand::SendMessage {
            message_id: message,
            actor: owner,
            role: Role::User,
            content: MessageContent::parse("from the other process").unwrap(),
            kind: MessageKind::Text,
            at: Utc::now(),
        },
        EventMetadata::default(),
    )
    .await
    .expect("send on two");
    let edit = |content: &str| ChatCommand::EditMessage {
        message_id: message,
        actor: owner,
        content: Some(MessageContent::parse(content).unwrap()),
        kind: None,
        at: Utc::now(),
    };
    one.execute::<Chat>(&chat, edit("edited on one"), EventMetadata::default())
        .await
        .expect("the edit is decided on the stream as it is, not as `one` cached it");
    // A refusal that stands on the fresh state still stands.
    let unknown = ChatCommand::EditMessage {
        message_id: Uuid::now_v7(),
        actor: owner,
        content: Some(MessageContent::parse("nobody").unwrap()),
        kind: None,
        at: Utc::now(),
    };
    assert!(matches!(
        one.execute::<Chat>(&chat, unknown, EventMetadata::default())
            .await,
        Err(ExecuteError::Domain(ChatError::MessageNotFound))
    ));
    let (state, version) = load::<Chat>(b.first.as_ref(), &chat).await.expect("load");
    assert_eq!((state.messages.len(), version), (2, 4));
    assert_eq!(state.messages[&message].content.as_str(), "edited on one");
}

async fn two_processes_writing_one_stream_lose_nothing(b: Backend) {
    let one = CommandExecutor::new(b.first.clone());
    let two = CommandExecutor::new(b.second.clone());
    let (chat, owner) = new_chat(&one).await;
    // Both executors cache the chat, then race.
    one.execute::<Chat>(&chat, send(owner, "warm"), EventMetadata::default())
        .await
        .expect("warm one");
    two.execute::<Chat>(&chat, send(owner, "warm"), EventMetadata::default())
        .await
        .expect("warm two");
    let results = join_all((0..100).map(|i| {
        let executor = if i % 2 == 0 { one.clone() } else { two.clone() };
        async move {
            executor
                .execute::<Chat>(&chat, send(owner, "race"), EventMetadata::default())
                .await
        }
    }))
    .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let (state, version) = load::<Chat>(b.first.as_ref(), &chat).await.expect("load");
    assert_eq!((state.messages.len(), version), (102, 103));
    // A message id reused across the two processes is still refused: the cache is not trusted
    // over the store.
    let id = Uuid::now_v7();
    let again = |executor: Arc<CommandExecutor>| async move {
        executor
            .execute::<Chat>(
                &chat,
                ChatCommand::SendMessage {
                    message_id: id,
                    actor: owner,
                    role: Role::User,
                    content: MessageContent::parse("once").unwrap(),
                    kind: MessageKind::Text,
                    at: Utc::now(),
                },
                EventMetadata::default(),
            )
            .await
    };
    again(one.clone()).await.expect("first time");
    assert!(matches!(
        again(two.clone()).await,
        Err(ExecuteError::Domain(ChatError::MessageAlreadyExists))
    ));
}

async fn a_small_cache_evicts_and_reloads(b: Backend) {
    let executor = CommandExecutor::with_capacity(b.first.clone(), 2);
    let mut chats = Vec::new();
    for _ in 0..5 {
        chats.push(new_chat(&executor).await);
    }
    for round in 0..3 {
        for (chat, owner) in &chats {
            executor
                .execute::<Chat>(
                    chat,
                    send(*owner, &format!("r{round}")),
                    EventMetadata::default(),
                )
                .await
                .expect("send");
        }
    }
    for (chat, _) in &chats {
        let (state, version) = load::<Chat>(b.first.as_ref(), chat).await.expect("load");
        assert_eq!((state.messages.len(), version), (3, 4));
    }
}

/// Writes an `account-{user}` stream as it was before sessions and billing had streams of their
/// own: registration, two sign-ins (one signed out), a Stripe customer and the tier it paid for.
async fn old_account_layout(store: &dyn EventStore, user: Uuid, sessions: [Uuid; 2]) {
    let at = Utc::now();
    let started = |session_id| {
        stored(&SessionEvent::Started(SessionStarted {
            user_id: user,
            session_id,
            token_hash: format!("hash-{session_id}"),
            expires_at: at + chrono::Duration::days(30),
            at,
        }))
    };
    let history = vec![
        stored(&AccountEvent::Registered(AccountRegistered {
            user_id: user,
            email: Email::parse("old@example.com").expect("email"),
            name: DisplayName::parse("Old").expect("name"),
            password_hash: "$argon2id$...".into(),
            role: AccountRole::User,
            at,
        })),
        started(sessions[0]),
        stored(&BillingAccountEvent::StripeCustomerLinked(
            StripeCustomerLinked {
                user_id: user,
                customer_id: "cus_old".into(),
                at,
            },
        )),
        stored(&BillingAccountEvent::TierChanged(TierChanged {
            user_id: user,
            from: "free".into(),
            to: "pro".into(),
            subscription_id: "sub_old".into(),
            source_event: "evt_old".into(),
            at,
        })),
        started(sessions[1]),
    ];
    store
        .append(
            &Account::stream_name(&user),
            ExpectedVersion::NoStream,
            history,
        )
        .await
        .expect("old layout");
}

fn stored(e: &impl EventSchema) -> NewEvent {
    NewEvent::new(
        e.event_type(),
        e.schema_version(),
        e.to_payload(),
        EventMetadata::default(),
    )
}

async fn stream_types(store: &dyn EventStore, stream: &str) -> Vec<String> {
    read_whole_stream(store, stream)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

async fn an_old_account_stream_feeds_the_aggregates_split_out_of_it(b: Backend) {
    let (user, old, older) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    old_account_layout(b.first.as_ref(), user, [older, old]).await;
    let executor = CommandExecutor::new(b.first.clone());
    let meta = EventMetadata::default;
    let account_stream = Account::stream_name(&user);

    // The account skips the session and billing events, and appends after them.
    assert!(
        exists::<Account>(b.first.as_ref(), &user)
            .await
            .expect("exists")
    );
    let (account, version) = load::<Account>(b.first.as_ref(), &user)
        .await
        .expect("load");
    assert_eq!((account.user_id, version), (Some(user), 5));
    let renamed = executor
        .execute::<Account>(
            &user,
            AccountCommand::UpdateProfile {
                name: Some(DisplayName::parse("New").expect("name")),
                email: None,
                at: Utc::now(),
            },
            meta(),
        )
        .await
        .expect("rename");
    assert_eq!(renamed.events.len(), 1);

    // The customer linked before the split is still the account's: no second one.
    let link = |customer: &str| BillingAccountCommand::LinkStripeCustomer {
        user_id: user,
        customer_id: customer.into(),
        at: Utc::now(),
    };
    match executor
        .execute::<BillingAccount>(&user, link("cus_new"), meta())
        .await
    {
        Err(ExecuteError::Domain(BillingAccountError::CustomerAlreadyLinked { existing })) => {
            assert_eq!(existing, "cus_old")
        }
        other => panic!("expected the old customer, got {other:?}"),
    }
    let again = execute::<BillingAccount>(b.second.as_ref(), &user, link("cus_old"), meta())
        .await
        .expect("link the same customer");
    assert!(again.events.is_empty());
    // The tier paid for before the split is where a subscription report starts from.
    let report = BillingAccountCommand::ApplySubscription {
        user_id: user,
        report: SubscriptionReport {
            subscription_id: "sub_old".into(),
            status: SubscriptionStatus::Active,
            tier: "pro".into(),
            current_period_end: None,
            cancel_at_period_end: None,
            observed_at: Utc::now(),
            source_event: "evt_new".into(),
        },
        tiers: vec!["free".into(), "pro".into()],
        at: Utc::now(),
    };
    let applied = executor
        .execute::<BillingAccount>(&user, report, meta())
        .await
        .expect("subscription");
    assert_eq!(
        applied.events.len(),
        1,
        "no tier change: {:?}",
        applied.events
    );
    let (billing, billing_version) = load::<BillingAccount>(b.first.as_ref(), &user)
        .await
        .expect("load billing");
    assert_eq!(billing.stripe_customer.as_deref(), Some("cus_old"));
    assert_eq!(
        billing_version, 1,
        "the version is the billing stream's own"
    );

    // A session started before the split can be signed out, once; one never started cannot.
    let revoke = |session_id| SessionCommand::Revoke {
        session_id,
        at: Utc::now(),
    };
    let key = |session_id| SessionKey {
        user_id: user,
        session_id,
    };
    let revoked = executor
        .execute::<Session>(&key(old), revoke(old), meta())
        .await
        .expect("revoke an old session");
    assert!(matches!(revoked.events[..], [SessionEvent::Revoked(_)]));
    let twice = execute::<Session>(b.second.as_ref(), &key(old), revoke(old), meta())
        .await
        .expect("revoke again");
    assert!(twice.events.is_empty());
    let stranger = Uuid::now_v7();
    assert!(matches!(
        executor
            .execute::<Session>(&key(stranger), revoke(stranger), meta())
            .await,
        Err(ExecuteError::Domain(SessionError::Unknown))
    ));
    // A new sign-in gets a stream of its own.
    let new = Uuid::now_v7();
    executor
        .execute::<Session>(
            &key(new),
            SessionCommand::Start {
                user_id: user,
                session_id: new,
                token_hash: "new".into(),
                expires_at: Utc::now(),
                at: Utc::now(),
            },
            meta(),
        )
        .await
        .expect("sign in");

    // Nothing more went to the old stream than the profile change; the rest has its own.
    let store = b.first.as_ref();
    assert_eq!(
        stream_types(store, &account_stream).await[5..],
        ["account.profile_updated"]
    );
    assert_eq!(
        stream_types(store, &BillingAccount::stream_name(&user)).await,
        ["account.subscription_changed"]
    );
    assert_eq!(
        stream_types(store, &Session::stream_name(&key(old))).await,
        ["account.session_revoked"]
    );
    assert_eq!(
        stream_types(store, &Session::stream_name(&key(new))).await,
        ["account.session_started"]
    );
    assert!(
        stream_types(store, &Session::stream_name(&key(older)))
            .await
            .is_empty()
    );
}

fn small_events() -> Limits {
    Limits {
        max_event_bytes: 4_096,
        max_events_per_append: 16,
        ..Limits::default()
    }
}

macro_rules! on_both {
    ($($name:ident($limits:expr)),* $(,)?) => {
        mod on_sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(sqlite($limits).await).await;
                }
            )*
        }
        mod on_postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(postgres($limits).await).await;
                }
            )*
        }
    };
}

on_both!(
    concurrent_commands_on_one_aggregate_all_land_in_order(Limits::default()),
    a_refused_command_fails_alone(Limits::default()),
    an_oversized_command_fails_alone(small_events()),
    more_events_than_one_append_takes_are_split(small_events()),
    two_processes_writing_one_stream_lose_nothing(Limits::default()),
    a_refusal_is_never_decided_on_a_stale_state(Limits::default()),
    a_small_cache_evicts_and_reloads(Limits::default()),
    an_old_account_stream_feeds_the_aggregates_split_out_of_it(Limits::default()),
);
