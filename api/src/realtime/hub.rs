//! The in-process fan-out: which connection listens for which user, and a bounded window of
//! recent events for clients that resume.
//!
//! One lock guards the listeners, the window and the position together, so a client that
//! attaches with a resume point gets, with no gap and no duplicate, the window's events after
//! it and then every event published after the attach.

use super::events::RealtimeEvent;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

/// Events a connection may have waiting before it counts as too slow and is dropped.
pub const CONNECTION_BUFFER: usize = 1024;

/// What the hub hands a connection.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// An event for the user it listens for.
    Event(Arc<RealtimeEvent>),
    /// One of the user's sessions was signed out.
    Revoked {
        /// The session.
        session: Uuid,
    },
    /// The user was erased: every connection of theirs closes.
    Erased,
}

/// A connection's side of the hub: where its deliveries go, and how it learns it was dropped.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Unique within the process.
    pub id: u64,
    tx: mpsc::Sender<Delivery>,
    /// Notified when the hub dropped this connection because its buffer was full.
    pub dropped: Arc<Notify>,
}

/// What a client attaching with a resume point gets.
#[derive(Debug)]
pub struct Attached {
    /// The user's events after the resume point that the window still holds, oldest first.
    pub replay: Vec<Arc<RealtimeEvent>>,
    /// Set when events after the resume point may be missing from `replay`: the resume point is
    /// older than the window (or unknown to this process). Holds the oldest position from which
    /// the window is complete.
    pub gap: Option<u64>,
    /// The log position every event up to which has been published: what the client resumes
    /// from if it reconnects before any new event.
    pub position: u64,
}

struct Inner {
    listeners: HashMap<Uuid, Vec<ConnHandle>>,
    window: VecDeque<Arc<RealtimeEvent>>,
    /// Events at or before this position may have left the window (or came before this process
    /// started): the window holds every event after it.
    floor: u64,
    /// Every event up to this log position has been published.
    position: u64,
}

/// The fan-out and the replay window.
pub struct Hub {
    inner: Mutex<Inner>,
    capacity: usize,
    next_id: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Hub {
    /// A hub whose window keeps `capacity` events, following the log from `position`.
    pub fn new(capacity: usize, position: u64) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                listeners: HashMap::new(),
                window: VecDeque::with_capacity(capacity.min(1 << 16)),
                floor: position,
                position,
            }),
            capacity,
            next_id: AtomicU64::new(1),
            closing: watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; recover the data if something ever does.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection: its handle (to listen with) and where its deliveries arrive.
    pub fn connect(&self) -> (ConnHandle, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(CONNECTION_BUFFER);
        let handle = ConnHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            dropped: Arc::new(Notify::new()),
        };
        (handle, rx)
    }

    /// Delivers `user`'s events from now on to `conn`.
    pub fn listen(&self, user: Uuid, conn: &ConnHandle) {
        let mut inner = self.lock();
        let list = inner.listeners.entry(user).or_default();
        if !list.iter().any(|c| c.id == conn.id) {
            list.push(conn.clone());
        }
    }

    /// Delivers `user`'s events to `conn` from now on, and returns what it missed after
    /// `after` (nothing to replay without a resume point).
    pub fn attach(&self, user: Uuid, conn: &ConnHandle, after: Option<u64>) -> Attached {
        let mut inner = self.lock();
        let position = inner.position;
        let (replay, gap) = match after {
            None => (Vec::new(), None),
            Some(after) => {
                let replay = inner
                    .window
                    .iter()
                    .filter(|e| e.user == user && e.id > after)
                    .cloned()
                    .collect();
                // A resume point before the window, or past what this process has seen (from
                // another deployment, or made up), cannot be answered exactly.
                let gap = (after < inner.floor || after > position).then_some(inner.floor);
                (replay, gap)
            }
        };
        let list = inner.listeners.entry(user).or_default();
        if !list.iter().any(|c| c.id == conn.id) {
            list.push(conn.clone());
        }
        Attached {
            replay,
            gap,
            position,
        }
    }

    /// Stops delivering `user`'s events to connection `conn`.
    pub fn unlisten(&self, user: Uuid, conn: u64) {
        let mut inner = self.lock();
        if let Some(list) = inner.listeners.get_mut(&user) {
            list.retain(|c| c.id != conn);
            if list.is_empty() {
                inner.listeners.remove(&user);
            }
        }
    }

    /// Keeps `event` in the window and hands it to every connection listening for its user. A
    /// connection whose buffer is full is dropped (and told so) rather than slowing the rest.
    pub fn publish(&self, event: RealtimeEvent) {
        let event = Arc::new(event);
        let mut inner = self.lock();
        inner.position = inner.position.max(event.id);
        if self.capacity > 0 {
            while inner.window.len() >= self.capacity {
                if let Some(old) = inner.window.pop_front() {
                    inner.floor = inner.floor.max(old.id);
                }
            }
            inner.window.push_back(event.clone());
        } else {
            inner.floor = inner.position;
        }
        let user = event.user;
        Self::deliver(&mut inner, user, Delivery::Event(event));
    }

    /// Tells `user`'s connections that `session` was signed out.
    pub fn revoke(&self, user: Uuid, session: Uuid) {
        let mut inner = self.lock();
        Self::deliver(&mut inner, user, Delivery::Revoked { session });
    }

    /// Tells `user`'s connections that the user was erased.
    pub fn erased(&self, user: Uuid) {
        let mut inner = self.lock();
        Self::deliver(&mut inner, user, Delivery::Erased);
    }

    fn deliver(inner: &mut Inner, user: Uuid, delivery: Delivery) {
        let Some(list) = inner.listeners.get_mut(&user) else {
            return;
        };
        list.retain(|c| match c.tx.try_send(delivery.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    connection = c.id,
                    "realtime connection too slow to keep up; dropping it"
                );
                c.dropped.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if list.is_empty() {
            inner.listeners.remove(&user);
        }
    }

    /// Records that the log has been followed up to `position` (events that concern no client
    /// move it too).
    pub fn advance(&self, position: u64) {
        let mut inner = self.lock();
        inner.position = inner.position.max(position);
        if self.capacity == 0 {
            inner.floor = inner.position;
        }
    }

    /// The log position followed so far.
    pub fn position(&self) -> u64 {
        self.lock().position
    }

    /// How many connections listen, over all users.
    pub fn listeners(&self) -> usize {
        self.lock().listeners.values().map(Vec::len).sum()
    }

    /// Resolves once the process is shutting down, and at once if it already is.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Resolves when `closing` (from [`Hub::closing`]) says the process is shutting down.
    pub async fn closed(closing: &mut watch::Receiver<bool>) {
        // The guard `wait_for` returns must not live across the caller's awaits.
        let _ = closing.wait_for(|c| *c).await.map(|_| ());
    }

    /// Tells every connection to close: the process is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::names;
    use super::*;

    fn ev(id: u64, user: u128) -> RealtimeEvent {
        RealtimeEvent {
            id,
            user: Uuid::from_u128(user),
            chat: Uuid::from_u128(100 + user),
            name: names::MESSAGE_DELETED,
            data: format!("\"{id}\""),
        }
    }

    fn ids(events: &[Arc<RealtimeEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    fn drain(rx: &mut mpsc::Receiver<Delivery>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            if let Delivery::Event(e) = d {
                out.push(e.id);
            }
        }
        out
    }

    #[test]
    fn events_reach_only_their_users_connections() {
        let hub = Hub::new(10, 0);
        let (a, mut rx_a) = hub.connect();
        let (b, mut rx_b) = hub.connect();
        hub.listen(Uuid::from_u128(1), &a);
        hub.listen(Uuid::from_u128(2), &b);
        hub.publish(ev(1, 1));
        hub.publish(ev(2, 2));
        hub.publish(ev(3, 1));
        assert_eq!(drain(&mut rx_a), vec![1, 3]);
        assert_eq!(drain(&mut rx_b), vec![2]);
        hub.unlisten(Uuid::from_u128(1), a.id);
        hub.publish(ev(4, 1));
        assert_eq!(drain(&mut rx_a), Vec::<u64>::new());
        assert_eq!(hub.listeners(), 1);
    }

    #[test]
    fn resuming_replays_the_users_missed_events_then_live_ones_without_duplicates() {
        let hub = Hub::new(10, 0);
        for i in 1..=5 {
            hub.publish(ev(i, 1 + i as u128 % 2));
        }
        let (c, mut rx) = hub.connect();
        let user = Uuid::from_u128(2);
        let got = hub.attach(user, &c, Some(1));
        assert_eq!(ids(&got.replay), vec![3, 5]);
        assert_eq!((got.gap, got.position), (None, 5));
        hub.publish(ev(6, 2));
        assert_eq!(drain(&mut rx), vec![6]);
    }

    #[test]
    fn a_resume_point_older_than_the_window_is_reported_as_a_gap() {
        let hub = Hub::new(3, 10);
        for i in 11..=15 {
            hub.publish(ev(i, 1));
        }
        let (c, _rx) = hub.connect();
        let user = Uuid::from_u128(1);
        let got = hub.attach(user, &c, Some(11));
        assert_eq!(ids(&got.replay), vec![13, 14, 15]);
        assert_eq!(got.gap, Some(12));
        assert_eq!(hub.attach(user, &c, Some(12)).gap, None);
        // Before the process started following the log, and past what it has seen.
        assert_eq!(Hub::new(3, 10).attach(user, &c, Some(9)).gap, Some(10));
        assert_eq!(hub.attach(user, &c, Some(99)).gap, Some(12));
        hub.advance(20);
        assert_eq!(hub.attach(user, &c, Some(20)).gap, None);
    }

    #[test]
    fn a_connection_that_falls_behind_is_dropped_and_told() {
        let hub = Hub::new(0, 0);
        let (c, mut rx) = hub.connect();
        hub.listen(Uuid::from_u128(1), &c);
        for i in 0..=CONNECTION_BUFFER as u64 {
            hub.publish(ev(i + 1, 1));
        }
        assert_eq!(hub.listeners(), 0);
        assert_eq!(drain(&mut rx).len(), CONNECTION_BUFFER);
        // The notification was stored for the connection to pick up.
        let dropped = c.dropped.clone();
        let now = futures_util::FutureExt::now_or_never(dropped.notified());
        assert!(now.is_some());
    }

    #[test]
    fn revocations_go_to_the_users_connections() {
        let hub = Hub::new(10, 0);
        let (c, mut rx) = hub.connect();
        hub.listen(Uuid::from_u128(1), &c);
        hub.revoke(Uuid::from_u128(1), Uuid::from_u128(9));
        hub.revoke(Uuid::from_u128(2), Uuid::from_u128(8));
        assert!(
            matches!(rx.try_recv(), Ok(Delivery::Revoked { session }) if session == Uuid::from_u128(9))
        );
        assert!(rx.try_recv().is_err());
    }
}
