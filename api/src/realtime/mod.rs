//! Realtime: seed 000's events for every connected client of a chat's owner, on any instance,
//! over the Pusher Channels WebSocket protocol (`/app/{key}`, `POST /api/realtime/auth`) and
//! over Server-Sent Events (`GET /api/events`).
//!
//! One [`tailer`] task per process follows the global log, maps chat events to
//! [`events::RealtimeEvent`]s and publishes them to the [`hub::Hub`], which fans them out to the
//! process's connections and keeps a bounded window of them for clients that resume.

pub mod events;
pub mod hub;
pub mod pusher;
pub mod sse;
pub mod tailer;

use confab_eventstore::{EventStore, StoreError};
use hub::Hub;
use pusher::PusherApp;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use tailer::Owners;

/// How realtime is set up.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// The Pusher app key and secret; realtime over WebSocket is off without them.
    pub pusher: Option<(String, SecretString)>,
    /// Events kept in memory for clients that resume.
    pub replay_window: usize,
    /// Idle time after which an SSE stream sends a keep-alive comment.
    pub keepalive: Duration,
    /// How often an open connection re-checks that its session is still live.
    pub session_check: Duration,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            pusher: None,
            replay_window: 1000,
            keepalive: Duration::from_secs(15),
            session_check: Duration::from_secs(60),
        }
    }
}

struct Inner {
    store: Arc<dyn EventStore>,
    hub: Arc<Hub>,
    owners: Owners,
    pusher: Option<Arc<PusherApp>>,
    keepalive: Duration,
    session_check: Duration,
    start: u64,
}

/// The realtime side of a process: its hub, its tailer and its settings.
#[derive(Clone)]
pub struct Realtime {
    inner: Arc<Inner>,
}

impl Realtime {
    /// Realtime following `store` from its current head.
    pub async fn new(
        store: Arc<dyn EventStore>,
        config: RealtimeConfig,
    ) -> Result<Realtime, StoreError> {
        let start = store.head_position().await?;
        let floor = Duration::from_secs(1);
        Ok(Realtime {
            inner: Arc::new(Inner {
                hub: Arc::new(Hub::new(config.replay_window, start)),
                owners: Owners::new(store.clone()),
                store,
                pusher: config
                    .pusher
                    .map(|(key, secret)| Arc::new(PusherApp::new(key, secret))),
                keepalive: config.keepalive.max(floor),
                session_check: config.session_check.max(floor),
                start,
            }),
        })
    }

    /// Starts following the log; the task ends after [`Realtime::close`].
    pub fn spawn_tailer(&self) -> tokio::task::JoinHandle<()> {
        let i = &self.inner;
        tokio::spawn(tailer::run(
            i.store.clone(),
            i.hub.clone(),
            i.owners.clone(),
            i.start,
            i.hub.closing(),
        ))
    }

    /// Closes every realtime connection and stops the tailer: the process is shutting down.
    pub fn close(&self) {
        self.inner.hub.close();
    }

    /// Whether realtime over WebSocket (Pusher) is on.
    pub fn pusher_enabled(&self) -> bool {
        self.inner.pusher.is_some()
    }

    /// The fan-out.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub(crate) fn owners(&self) -> &Owners {
        &self.inner.owners
    }

    pub(crate) fn pusher(&self) -> Option<Arc<PusherApp>> {
        self.inner.pusher.clone()
    }

    pub(crate) fn session_check(&self) -> Duration {
        self.inner.session_check
    }

    pub(crate) fn keepalive(&self) -> Duration {
        self.inner.keepalive
    }
}
