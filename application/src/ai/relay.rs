//! How a reply's text travels from the worker generating it to the API instance holding the
//! client's connection.
//!
//! - [`Relay::Local`]: one process runs the API and the workers (the embedded default), so the
//!   worker writes straight into the process's [`ReplyHub`] and listeners read it there.
//! - [`Relay::Postgres`]: API and workers in several processes sharing a PostgreSQL database.
//!   The worker appends the reply's pieces to `reply_chunks` and wakes listeners with
//!   `NOTIFY confab_replies`; each API instance mirrors the replies its clients ask for into
//!   its own hub, reading the pieces after the last one it saw. The table, not the notification,
//!   carries the text, so a notification lost while a listener reconnects delays a piece (the
//!   mirror also looks once a second) but never drops it, and a client that reconnects to
//!   another instance still gets the reply from its start.
//!
//! Either way, listeners use [`super::replies::listen`] on the hub's [`Reply`], from any offset.

use super::replies::{Ending, LINGER, Reply, ReplyHub};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

/// The notification channel.
pub const CHANNEL: &str = "confab_replies";

/// How long a mirror waits for a piece of a reply before giving up on it.
pub const STALL: Duration = Duration::from_secs(600);

/// How a mirror looks for pieces when no notification came.
const POLL: Duration = Duration::from_secs(1);

/// Where replies travel.
#[derive(Clone)]
pub enum Relay {
    /// Within this process.
    Local(ReplyHub),
    /// Through PostgreSQL.
    Postgres(PgRelay),
}

impl Relay {
    /// The hub this process's listeners read.
    pub fn hub(&self) -> &ReplyHub {
        match self {
            Relay::Local(hub) => hub,
            Relay::Postgres(pg) => &pg.hub,
        }
    }

    /// Announces reply `id` (before its job is queued) and returns it for listening.
    pub async fn open(
        &self,
        id: Uuid,
        chat_id: Uuid,
        owner: Uuid,
    ) -> Result<Arc<Reply>, sqlx::Error> {
        match self {
            Relay::Local(hub) => Ok(hub.open(id, chat_id, owner)),
            Relay::Postgres(pg) => {
                pg.append(id, chat_id, owner, &[Piece::Open]).await?;
                Ok(pg.follow(id, chat_id, owner))
            }
        }
    }

    /// The latest reply in `chat_id` that `owner` may read, running or just finished.
    pub async fn latest_in_chat(
        &self,
        chat_id: Uuid,
        owner: Uuid,
    ) -> Result<Option<Arc<Reply>>, sqlx::Error> {
        match self {
            Relay::Local(hub) => Ok(hub.latest_in_chat(chat_id, owner)),
            Relay::Postgres(pg) => pg.latest_in_chat(chat_id, owner).await,
        }
    }

    /// Where the worker writes reply `id`.
    pub fn writer(&self, id: Uuid, chat_id: Uuid, owner: Uuid) -> ReplyWriter {
        match self {
            Relay::Local(hub) => ReplyWriter {
                text: String::new(),
                sink: Sink::Local {
                    hub: hub.clone(),
                    reply: hub.open(id, chat_id, owner),
                },
            },
            Relay::Postgres(pg) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let flusher = tokio::spawn(pg.clone().flush(id, chat_id, owner, rx));
                ReplyWriter {
                    text: String::new(),
                    sink: Sink::Postgres { tx, flusher },
                }
            }
        }
    }
}

/// One piece of a reply as it is relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Open,
    Text(String),
    Restart,
    End(Ending),
}

impl Piece {
    fn columns(&self) -> (&'static str, &str) {
        match self {
            Piece::Open => ("open", ""),
            Piece::Text(t) => ("text", t),
            Piece::Restart => ("restart", ""),
            Piece::End(Ending::Done) => ("done", ""),
            Piece::End(Ending::Failed(why)) => ("failed", why),
        }
    }
}

enum Sink {
    Local {
        hub: ReplyHub,
        reply: Arc<Reply>,
    },
    Postgres {
        tx: mpsc::UnboundedSender<Piece>,
        flusher: tokio::task::JoinHandle<()>,
    },
}

/// The worker's side of one reply: text in, an ending last.
pub struct ReplyWriter {
    text: String,
    sink: Sink,
}

impl ReplyWriter {
    /// Adds generated text.
    pub fn push(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        self.text.push_str(delta);
        match &self.sink {
            Sink::Local { reply, .. } => reply.push(delta),
            Sink::Postgres { tx, .. } => {
                let _ = tx.send(Piece::Text(delta.to_owned()));
            }
        }
    }

    /// Starts the reply over (a job re-run after a crash).
    pub fn restart(&mut self) {
        self.text.clear();
        match &self.sink {
            Sink::Local { hub, reply } => hub.restart(reply.id),
            Sink::Postgres { tx, .. } => {
                let _ = tx.send(Piece::Restart);
            }
        }
    }

    /// The text written so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ends the reply; returns once listeners can read the end.
    pub async fn finish(self, ending: Ending) {
        match self.sink {
            Sink::Local { hub, reply } => {
                reply.finish(ending);
                hub.retire(reply.id);
            }
            Sink::Postgres { tx, flusher } => {
                let _ = tx.send(Piece::End(ending));
                drop(tx);
                let _ = flusher.await;
            }
        }
    }
}

/// The PostgreSQL relay of one process.
#[derive(Clone)]
pub struct PgRelay {
    pool: PgPool,
    hub: ReplyHub,
    wake: broadcast::Sender<Uuid>,
}

impl PgRelay {
    /// Listens on [`CHANNEL`] (one connection for the whole process) and relays into `hub`.
    pub async fn start(pool: PgPool, hub: ReplyHub) -> Result<PgRelay, sqlx::Error> {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let (wake, _) = broadcast::channel(1024);
        let sender = wake.clone();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        if let Ok(id) = n.payload().parse::<Uuid>() {
                            let _ = sender.send(id);
                        }
                    }
                    // recv() reconnects on its next call; mirrors poll meanwhile.
                    Err(e) => {
                        tracing::warn!(error = %e, "reply relay: lost the notification connection; reconnecting");
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        });
        Ok(PgRelay { pool, hub, wake })
    }

    /// Appends pieces of reply `id` and wakes its listeners, in one statement.
    async fn append(
        &self,
        id: Uuid,
        chat_id: Uuid,
        owner: Uuid,
        pieces: &[Piece],
    ) -> sqlx::Result<()> {
        let (kinds, data): (Vec<&str>, Vec<&str>) = pieces.iter().map(Piece::columns).unzip();
        sqlx::query(
            "WITH added AS (INSERT INTO reply_chunks (reply_id, chat_id, owner_id, kind, data) \
             SELECT $1, $2, $3, k, d FROM unnest($4::text[], $5::text[]) WITH ORDINALITY \
             AS p(k, d, n) ORDER BY n) SELECT pg_notify($6, $7)",
        )
        .bind(id)
        .bind(chat_id)
        .bind(owner)
        .bind(kinds)
        .bind(data)
        .bind(CHANNEL)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes what the worker produces, as it comes: whatever piled up while the last write
    /// was in flight goes in the next one, so a fast stream costs few round trips.
    async fn flush(
        self,
        id: Uuid,
        chat_id: Uuid,
        owner: Uuid,
        mut rx: mpsc::UnboundedReceiver<Piece>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(p) = rx.try_recv() {
                batch.push(p);
            }
            let batch = coalesce(batch);
            let ended = batch.iter().any(|p| matches!(p, Piece::End(_)));
            let mut attempt = 0;
            while let Err(e) = self.append(id, chat_id, owner, &batch).await {
                attempt += 1;
                if attempt >= 5 {
                    tracing::error!(reply = %id, error = %e, "reply relay: cannot write a piece of the reply; listeners miss it (the stored message is whole)");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            if ended {
                let _ = sqlx::query(
                    "DELETE FROM reply_chunks WHERE created_at < now() - interval '15 minutes'",
                )
                .execute(&self.pool)
                .await;
                return;
            }
        }
    }

    /// Reply `id` in this process's hub, mirrored from the table by a task started on first
    /// use.
    fn follow(&self, id: Uuid, chat_id: Uuid, owner: Uuid) -> Arc<Reply> {
        let (reply, new) = self.hub.open_new(id, chat_id, owner);
        if new {
            tokio::spawn(self.clone().mirror(reply.clone()));
        }
        reply
    }

    async fn mirror(self, reply: Arc<Reply>) {
        let mut wake = self.wake.subscribe();
        let mut seen = 0_i64;
        let mut last_piece = tokio::time::Instant::now();
        loop {
            let rows: Result<Vec<(i64, String, String)>, _> = sqlx::query_as(
                "SELECT seq, kind, data FROM reply_chunks WHERE reply_id = $1 AND seq > $2 \
                 ORDER BY seq",
            )
            .bind(reply.id)
            .bind(seen)
            .fetch_all(&self.pool)
            .await;
            match rows {
                Ok(rows) => {
                    if !rows.is_empty() {
                        last_piece = tokio::time::Instant::now();
                    }
                    for (seq, kind, data) in rows {
                        seen = seq;
                        match kind.as_str() {
                            "text" => reply.push(&data),
                            "restart" => self.hub.restart(reply.id),
                            "done" | "failed" => {
                                reply.finish(if kind == "done" {
                                    Ending::Done
                                } else {
                                    Ending::Failed(data)
                                });
                                self.hub.retire(reply.id);
                                return;
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(reply = %reply.id, error = %e, "reply relay: cannot read the reply; retrying");
                }
            }
            if last_piece.elapsed() > STALL {
                reply.finish(Ending::Failed(
                    "the reply stopped arriving; reload the chat to see what was stored".into(),
                ));
                self.hub.retire(reply.id);
                return;
            }
            let id = reply.id;
            let _ = tokio::time::timeout(POLL, async {
                loop {
                    match wake.recv().await {
                        Ok(woken) if woken == id => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            })
            .await;
        }
    }

    async fn latest_in_chat(
        &self,
        chat_id: Uuid,
        owner: Uuid,
    ) -> Result<Option<Arc<Reply>>, sqlx::Error> {
        // The latest reply announced in the chat, unless it ended longer than LINGER ago.
        let found: Option<Uuid> = sqlx::query_scalar(
            "SELECT o.reply_id FROM reply_chunks o WHERE o.chat_id = $1 AND o.owner_id = $2 \
             AND o.kind = 'open' AND NOT EXISTS (SELECT 1 FROM reply_chunks e \
             WHERE e.reply_id = o.reply_id AND e.kind IN ('done', 'failed') \
             AND e.created_at < now() - make_interval(secs => $3)) \
             ORDER BY o.seq DESC LIMIT 1",
        )
        .bind(chat_id)
        .bind(owner)
        .bind(LINGER.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|id| self.follow(id, chat_id, owner)))
    }
}

/// Joins neighbouring text pieces.
fn coalesce(batch: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(batch.len());
    for p in batch {
        match (out.last_mut(), p) {
            (Some(Piece::Text(prev)), Piece::Text(t)) => prev.push_str(&t),
            (_, p) => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_text_is_written_as_one_piece() {
        let batch = vec![
            Piece::Text("a".into()),
            Piece::Text("b".into()),
            Piece::Restart,
            Piece::Text("c".into()),
            Piece::End(Ending::Done),
        ];
        assert_eq!(
            coalesce(batch),
            vec![
                Piece::Text("ab".into()),
                Piece::Restart,
                Piece::Text("c".into()),
                Piece::End(Ending::Done)
            ]
        );
    }
}
