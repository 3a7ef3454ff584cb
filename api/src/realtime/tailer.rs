//! The live subscription to the event log: one task per process follows the global log from
//! where it stood at start-up, turns chat events into realtime events for the chat's owner and
//! hands them to the hub. Every instance follows the same log, so a write on one instance
//! reaches the clients of every other without a broker.

use super::events::{self, ChatInfo, Decoded};
use super::hub::Hub;
use confab_domain::chat::ChatEvent;
use confab_domain::{Aggregate, EventSchema};
use confab_eventstore::{EventStore, RecordedEvent, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Events read from the log at once.
const BATCH: usize = 512;
/// Chats whose owner is kept in memory before the cache starts over.
const MAX_CACHED_CHATS: usize = 100_000;
/// Longest wait for new events before looking again (the store wakes the tailer sooner).
const WAIT: Duration = Duration::from_secs(30);
/// Pause after a failed read, before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Who owns a chat: remembered from `chat.created` as it passes, otherwise read from the
/// chat's own stream, whose first event names the owner (the read model forgets a deleted
/// chat; the log does not).
#[derive(Clone)]
pub struct Owners {
    store: Arc<dyn EventStore>,
    cache: Arc<Mutex<HashMap<Uuid, ChatInfo>>>,
}

impl Owners {
    /// A resolver reading from `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Owners {
        Owners {
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn remember(&self, chat: Uuid, info: ChatInfo) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_CHATS {
            cache.clear();
        }
        cache.insert(chat, info);
    }

    /// The chat's owner and creation time; `None` if the chat was never created.
    pub async fn get(&self, chat: Uuid) -> Result<Option<ChatInfo>, StoreError> {
        if let Some(info) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&chat)
        {
            return Ok(Some(*info));
        }
        let stream = <confab_domain::chat::Chat as confab_domain::Aggregate>::stream_name(&chat);
        let first = self.store.read_stream(&stream, 1, 1).await?;
        let info = first.first().and_then(|e| {
            ChatEvent::from_stored(&e.event_type, e.schema_version, e.payload.clone())
                .ok()
                .and_then(|c| events::chat_info(&c))
        });
        if let Some(info) = info {
            self.remember(chat, info);
        }
        Ok(info)
    }
}

/// Follows the log from `from` until `closing` turns true.
pub async fn run(
    store: Arc<dyn EventStore>,
    hub: Arc<Hub>,
    owners: Owners,
    from: u64,
    mut closing: watch::Receiver<bool>,
) {
    let mut at = from;
    tracing::info!(position = at, "realtime: following the event log");
    loop {
        if *closing.borrow() {
            return;
        }
        let head = tokio::select! {
            _ = closing.changed() => return,
            head = store.wait_for_events(at, WAIT) => head,
        };
        match head {
            Ok(head) if head <= at => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "realtime: waiting for events failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        loop {
            let batch = match store.read_all(at, BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, position = at, "realtime: reading the log failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            if batch.is_empty() {
                // The head moved but the new events are not readable yet (a commit still in
                // flight): look again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(2)).await;
                break;
            }
            let n = batch.len();
            for event in &batch {
                if let Err(e) = handle(&hub, &owners, event).await {
                    tracing::warn!(error = %e, position = event.position, "realtime: resolving a chat's owner failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
                at = event.position;
            }
            hub.advance(at);
            if n < BATCH {
                break;
            }
        }
    }
}

/// Publishes what one log event means to realtime clients. Fails only when the chat's owner
/// could not be read, so the event is tried again rather than lost.
async fn handle(hub: &Hub, owners: &Owners, event: &RecordedEvent) -> Result<(), StoreError> {
    let decoded = match events::decode(event) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, position = event.position, "realtime: skipping an event that does not decode");
            return Ok(());
        }
    };
    match decoded {
        Decoded::Ignored => {}
        Decoded::Document { document, version } => {
            // The document as it stood after this event: its owner and chunk count are in
            // earlier events of its stream.
            let stream =
                <confab_domain::document::Document as confab_domain::Aggregate>::stream_name(
                    &document,
                );
            let history = owners
                .store
                .read_stream(&stream, 1, version as usize)
                .await?;
            let mut doc = confab_domain::document::Document::default();
            for e in history.iter().filter(|e| e.version <= version) {
                match doc
                    .clone()
                    .evolve_stored(&e.event_type, e.schema_version, e.payload.clone())
                {
                    Ok(next) => doc = next,
                    Err(err) => {
                        tracing::warn!(error = %err, %document, "realtime: skipping a document event that does not decode");
                        return Ok(());
                    }
                }
            }
            if let Some(r) = events::document_updated(event.position, document, &doc) {
                hub.publish(r);
            }
        }
        Decoded::SessionRevoked { user, session } => hub.revoke(user, session),
        Decoded::UserErased { user } => hub.erased(user),
        Decoded::Chat(chat, e) => {
            if let Some(info) = events::chat_info(&e) {
                owners.remember(chat, info);
                return Ok(());
            }
            let Some(info) = owners.get(chat).await? else {
                tracing::warn!(%chat, position = event.position, "realtime: an event of a chat that was never created");
                return Ok(());
            };
            if let Some(r) = events::to_realtime(event.position, &e, &info) {
                hub.publish(r);
            }
        }
    }
    Ok(())
}
