//! Live replies: the text a worker is generating, relayed to whoever listens (the request that
//! asked for it, or a client that reconnects), from any offset.
//!
//! Each reply keeps its whole text so far, so a listener that joins late or reconnects gets what
//! it missed and then the rest as it comes. A finished reply stays for [`LINGER`] so a client
//! that reconnects just after the end still reads it whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How long a finished reply can still be read from the hub.
pub const LINGER: Duration = Duration::from_secs(120);

/// How a reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Complete.
    Done,
    /// Cut short; the message says why (shown to the user).
    Failed(String),
}

#[derive(Debug, Default)]
struct Text {
    text: String,
    ending: Option<Ending>,
}

/// One reply in progress.
#[derive(Debug)]
pub struct Reply {
    /// The reply (and its assistant message's) id.
    pub id: Uuid,
    /// The chat it answers in.
    pub chat_id: Uuid,
    /// The chat's owner: only they may listen.
    pub owner: Uuid,
    text: Mutex<Text>,
    changed: watch::Sender<u64>,
}

impl Reply {
    /// Adds generated text (nothing after the end).
    pub fn push(&self, delta: &str) {
        {
            let mut t = self.text.lock().expect("reply lock");
            if delta.is_empty() || t.ending.is_some() {
                return;
            }
            t.text.push_str(delta);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Ends the reply (the first ending counts).
    pub fn finish(&self, ending: Ending) {
        {
            let mut t = self.text.lock().expect("reply lock");
            if t.ending.is_some() {
                return;
            }
            t.ending = Some(ending);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// The text so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("reply lock").text.clone()
    }

    /// What follows byte `offset` now, and the ending if there is one.
    fn since(&self, offset: usize) -> (String, Option<Ending>) {
        let t = self.text.lock().expect("reply lock");
        // Offsets from clients may fall inside a character: start at the next boundary.
        let mut start = offset.min(t.text.len());
        while !t.text.is_char_boundary(start) {
            start += 1;
        }
        (t.text[start..].to_owned(), t.ending.clone())
    }
}

/// A piece of a reply as a listener receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text.
    Text(String),
    /// The end.
    End(Ending),
}

/// The replies this process is generating or has just finished.
#[derive(Debug, Clone, Default)]
pub struct ReplyHub {
    inner: Arc<Mutex<HashMap<Uuid, Arc<Reply>>>>,
}

impl ReplyHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reply `id`, created if new (a retried job continues the same one).
    pub fn open(&self, id: Uuid, chat_id: Uuid, owner: Uuid) -> Arc<Reply> {
        self.open_new(id, chat_id, owner).0
    }

    /// The reply `id`, and whether this call created it.
    pub fn open_new(&self, id: Uuid, chat_id: Uuid, owner: Uuid) -> (Arc<Reply>, bool) {
        let mut map = self.inner.lock().expect("hub lock");
        let mut new = false;
        let reply = map
            .entry(id)
            .or_insert_with(|| {
                new = true;
                Arc::new(Reply {
                    id,
                    chat_id,
                    owner,
                    text: Mutex::new(Text::default()),
                    changed: watch::channel(0).0,
                })
            })
            .clone();
        (reply, new)
    }

    /// Restarts reply `id` from nothing (a retry after a failure before any text was kept).
    pub fn restart(&self, id: Uuid) {
        if let Some(r) = self.get(id) {
            let mut t = r.text.lock().expect("reply lock");
            t.text.clear();
            t.ending = None;
        }
    }

    /// Forgets reply `id` after [`LINGER`].
    pub fn retire(&self, id: Uuid) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            inner.lock().expect("hub lock").remove(&id);
        });
    }

    /// Reply `id`, if this process has it.
    pub fn get(&self, id: Uuid) -> Option<Arc<Reply>> {
        self.inner.lock().expect("hub lock").get(&id).cloned()
    }

    /// The most recent reply in `chat_id` that `owner` may read, preferring one still running.
    pub fn latest_in_chat(&self, chat_id: Uuid, owner: Uuid) -> Option<Arc<Reply>> {
        let map = self.inner.lock().expect("hub lock");
        map.values()
            .filter(|r| r.chat_id == chat_id && r.owner == owner)
            .max_by_key(|r| {
                let running = r.text.lock().expect("reply lock").ending.is_none();
                (running, r.id)
            })
            .cloned()
    }

    /// How many replies are still being generated.
    pub fn running(&self) -> usize {
        let map = self.inner.lock().expect("hub lock");
        map.values()
            .filter(|r| r.text.lock().expect("reply lock").ending.is_none())
            .count()
    }
}

/// Listens to `reply` from byte `offset`: the text so far, then each addition, then the end.
pub fn listen(
    reply: Arc<Reply>,
    offset: usize,
) -> impl futures_core::Stream<Item = Piece> + Send + 'static {
    let mut changes = reply.changed.subscribe();
    async_stream::stream! {
        let mut at = offset;
        loop {
            changes.borrow_and_update();
            let (text, ending) = reply.since(at);
            if !text.is_empty() {
                at += text.len();
                yield Piece::Text(text);
            }
            if let Some(ending) = ending {
                yield Piece::End(ending);
                break;
            }
            if changes.changed().await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_listener_gets_what_it_missed_then_the_rest_then_the_end() {
        let hub = ReplyHub::new();
        let (id, chat, owner) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let reply = hub.open(id, chat, owner);
        reply.push("Hel");
        let late = listen(reply.clone(), 0);
        let resumed = listen(reply.clone(), 2);
        reply.push("lo");
        reply.finish(Ending::Done);
        reply.push(" ignored?");
        let text = |pieces: Vec<Piece>| {
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => t.clone(),
                    Piece::End(e) => format!("<{e:?}>"),
                })
                .collect::<String>()
        };
        let late: Vec<Piece> = late.collect().await;
        assert_eq!(text(late), "Hello<Done>");
        let resumed: Vec<Piece> = resumed.collect().await;
        assert_eq!(text(resumed), "llo<Done>");
        assert_eq!(
            hub.latest_in_chat(chat, owner).map(|r| r.id),
            Some(id),
            "its owner finds it"
        );
        assert!(hub.latest_in_chat(chat, Uuid::now_v7()).is_none());
        assert_eq!(hub.running(), 0);
    }

    #[tokio::test]
    async fn an_offset_inside_a_character_starts_at_the_next_one() {
        let hub = ReplyHub::new();
        let reply = hub.open(Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        reply.push("é!");
        reply.finish(Ending::Failed("boom".into()));
        let pieces: Vec<Piece> = listen(reply, 1).collect().await;
        assert_eq!(
            pieces,
            vec![
                Piece::Text("!".into()),
                Piece::End(Ending::Failed("boom".into()))
            ]
        );
    }
}
