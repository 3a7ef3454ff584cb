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
//!
//! The text is also kept durably as it arrives, so that a job attempt that follows one which got
//! past its first token (a crash, a retry) finishes the reply from it instead of calling the
//! provider again ([`Relay::draft`]): on PostgreSQL `reply_chunks` is that record; on the
//! embedded default the writer also keeps it in `reply_drafts`, in the database file.

use super::llm::Usage;
use super::replies::{Ending, LINGER, Reply, ReplyHub};
use confab_projections::ReadDb;
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

/// How long the durable record of a finished reply is kept: a job re-run after its reply
/// ended (a crash before the queue marked it done) still finds it rather than calling again.
const DRAFT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Where replies travel.
#[derive(Clone)]
pub enum Relay {
    /// Within this process; the text is also kept in `reply_drafts` of the database (if
    /// given), for a job re-run after this process died.
    Local(ReplyHub, Option<ReadDb>),
    /// Through PostgreSQL.
    Postgres(PgRelay),
}

/// How the provider's stream of a reply ended, recorded before the reply is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutcome {
    /// The provider finished, reporting these token counts if it did.
    Complete(Option<Usage>),
    /// The stream broke after some text; why.
    Cut(String),
}

impl StreamOutcome {
    fn encode(&self) -> String {
        let v = match self {
            StreamOutcome::Complete(usage) => serde_json::json!({
                "complete": usage.map(|u| serde_json::json!({"input": u.input, "output": u.output})),
            }),
            StreamOutcome::Cut(why) => serde_json::json!({ "cut": why }),
        };
        v.to_string()
    }

    fn decode(text: &str) -> Option<StreamOutcome> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if let Some(why) = v.get("cut").and_then(|w| w.as_str()) {
            return Some(StreamOutcome::Cut(why.to_owned()));
        }
        let complete = v.get("complete")?;
        let usage = match (
            complete.get("input").and_then(|n| n.as_u64()),
            complete.get("output").and_then(|n| n.as_u64()),
        ) {
            (Some(input), Some(output)) => Some(Usage { input, output }),
            _ => None,
        };
        Some(StreamOutcome::Complete(usage))
    }
}

/// What earlier attempts of a reply's job kept: the text streamed so far and, if the stream
/// ended, how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// The text, as listeners received it.
    pub text: String,
    /// How the stream ended, if it did before the attempt stopped.
    pub outcome: Option<StreamOutcome>,
}

impl Relay {
    /// The hub this process's listeners read.
    pub fn hub(&self) -> &ReplyHub {
        match self {
            Relay::Local(hub, _) => hub,
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
            Relay::Local(hub, _) => Ok(hub.open(id, chat_id, owner)),
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
            Relay::Local(hub, _) => Ok(hub.latest_in_chat(chat_id, owner)),
            Relay::Postgres(pg) => pg.latest_in_chat(chat_id, owner).await,
        }
    }

    /// What earlier attempts of reply `id`'s job kept of it (`None` if none began it here).
    /// In this process's hub, the text listeners received; otherwise the durable record.
    pub async fn draft(&self, id: Uuid) -> Result<Option<Draft>, sqlx::Error> {
        match self {
            Relay::Local(hub, db) => {
                let stored = match db {
                    Some(db) => sqlite_draft(db, id).await?,
                    None => None,
                };
                let live = hub.get(id).map(|r| r.text()).filter(|t| !t.is_empty());
                Ok(match (live, stored) {
                    // This process streamed it: listeners have seen the hub's text, which is
                    // ahead of the record by at most the write in flight.
                    (Some(text), stored) => Some(Draft {
                        text,
                        outcome: stored.and_then(|d| d.outcome),
                    }),
                    (None, stored) => stored,
                })
            }
            Relay::Postgres(pg) => pg.draft(id).await,
        }
    }

    /// Where the worker writes reply `id`.
    pub fn writer(&self, id: Uuid, chat_id: Uuid, owner: Uuid) -> ReplyWriter {
        match self {
            Relay::Local(hub, db) => ReplyWriter {
                text: String::new(),
                sink: Sink::Local {
                    hub: hub.clone(),
                    reply: hub.open(id, chat_id, owner),
                    record: db.as_ref().map(|db| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let flusher = tokio::spawn(record_sqlite(db.clone(), id, rx));
                        (tx, flusher)
                    }),
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
    /// How the provider's stream ended (encoded [`StreamOutcome`]); listeners skip it.
    Streamed(String),
    End(Ending),
}

impl Piece {
    fn columns(&self) -> (&'static str, &str) {
        match self {
            Piece::Open => ("open", ""),
            Piece::Text(t) => ("text", t),
            Piece::Restart => ("restart", ""),
            Piece::Streamed(outcome) => ("streamed", outcome),
            Piece::End(Ending::Done) => ("done", ""),
            Piece::End(Ending::Failed(why)) => ("failed", why),
        }
    }
}

type Recorder = (mpsc::UnboundedSender<Piece>, tokio::task::JoinHandle<()>);

enum Sink {
    Local {
        hub: ReplyHub,
        reply: Arc<Reply>,
        record: Option<Recorder>,
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
        if let Sink::Local { reply, .. } = &self.sink {
            reply.push(delta);
        }
        self.record(Piece::Text(delta.to_owned()));
    }

    /// Sends `piece` to the durable record (and, on PostgreSQL, to listeners).
    fn record(&self, piece: Piece) {
        let tx = match &self.sink {
            Sink::Local {
                record: Some((tx, _)),
                ..
            } => tx,
            Sink::Local { record: None, .. } => return,
            Sink::Postgres { tx, .. } => tx,
        };
        let _ = tx.send(piece);
    }

    /// Starts the reply over (an attempt that kept no text before).
    pub fn restart(&mut self) {
        self.text.clear();
        if let Sink::Local { hub, reply, .. } = &self.sink {
            hub.restart(reply.id);
        }
        self.record(Piece::Restart);
    }

    /// Continues from `draft`, the text an earlier attempt streamed: listeners that already
    /// have it get nothing again; this process's hub, if it lost it (a restart), gets it back.
    pub fn resume(&mut self, draft: &str) {
        self.text = draft.to_owned();
        if let Sink::Local { hub, reply, .. } = &self.sink
            && reply.text() != draft
        {
            hub.restart(reply.id);
            reply.push(draft);
        }
    }

    /// Records how the provider's stream ended, before the reply is stored: an attempt that
    /// follows finishes the reply the same way.
    pub fn streamed(&self, outcome: &StreamOutcome) {
        self.record(Piece::Streamed(outcome.encode()));
    }

    /// The text written so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ends the reply; returns once listeners can read the end.
    pub async fn finish(self, ending: Ending) {
        match self.sink {
            Sink::Local { hub, reply, record } => {
                reply.finish(ending.clone());
                hub.retire(reply.id);
                if let Some((tx, flusher)) = record {
                    let _ = tx.send(Piece::End(ending));
                    drop(tx);
                    let _ = flusher.await;
                }
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

    /// What `reply_chunks` holds of reply `id`, if any text.
    async fn draft(&self, id: Uuid) -> Result<Option<Draft>, sqlx::Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT kind, data FROM reply_chunks WHERE reply_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        let mut draft = Draft::default();
        for (kind, data) in rows {
            match kind.as_str() {
                "text" => draft.text.push_str(&data),
                "restart" => draft = Draft::default(),
                "streamed" => draft.outcome = StreamOutcome::decode(&data),
                _ => {}
            }
        }
        Ok(Some(draft).filter(|d| !d.text.is_empty()))
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

/// What `reply_drafts` holds of reply `id` (embedded default).
async fn sqlite_draft(db: &ReadDb, id: Uuid) -> Result<Option<Draft>, sqlx::Error> {
    let row: Option<(String, Option<String>)> = confab_projections::query_as!(
        db,
        fetch_optional,
        (String, Option<String>),
        "SELECT text, outcome FROM reply_drafts WHERE reply_id = $1",
        id
    )?;
    Ok(row
        .map(|(text, outcome)| Draft {
            text,
            outcome: outcome.as_deref().and_then(StreamOutcome::decode),
        })
        .filter(|d| !d.text.is_empty()))
}

/// Keeps reply `id`'s text in `reply_drafts` as it comes (embedded default): whatever piled up
/// while the last write was in flight goes in the next one.
async fn record_sqlite(db: ReadDb, id: Uuid, mut rx: mpsc::UnboundedReceiver<Piece>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
        }
        let batch = coalesce(batch);
        let ended = batch.iter().any(|p| matches!(p, Piece::End(_)));
        let mut attempt = 0;
        while let Err(e) = write_draft(&db, id, &batch).await {
            attempt += 1;
            if attempt >= 5 {
                tracing::error!(reply = %id, error = %e, "reply record: cannot keep a piece of the reply; a retried job may call the provider again");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        if ended {
            return;
        }
    }
}

async fn write_draft(db: &ReadDb, id: Uuid, batch: &[Piece]) -> Result<(), sqlx::Error> {
    use confab_projections::execute;
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = db.begin().await?;
    execute!(
        &mut tx,
        "INSERT INTO reply_drafts (reply_id, text, updated_at_ms) VALUES ($1, '', $2) \
         ON CONFLICT (reply_id) DO NOTHING",
        id,
        now
    )?;
    for piece in batch {
        match piece {
            Piece::Text(t) => execute!(
                &mut tx,
                "UPDATE reply_drafts SET text = text || $2, updated_at_ms = $3 \
                 WHERE reply_id = $1",
                id,
                t,
                now
            )?,
            Piece::Restart => execute!(
                &mut tx,
                "UPDATE reply_drafts SET text = '', outcome = NULL, updated_at_ms = $2 \
                 WHERE reply_id = $1",
                id,
                now
            )?,
            Piece::Streamed(outcome) => execute!(
                &mut tx,
                "UPDATE reply_drafts SET outcome = $2, updated_at_ms = $3 WHERE reply_id = $1",
                id,
                outcome,
                now
            )?,
            Piece::End(_) => execute!(
                &mut tx,
                "DELETE FROM reply_drafts WHERE updated_at_ms < $1",
                now - DRAFT_RETENTION.as_millis() as i64
            )?,
            Piece::Open => 0,
        };
    }
    tx.commit().await
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
    fn a_stream_outcome_reads_back_as_it_was_recorded() {
        for outcome in [
            StreamOutcome::Complete(Some(Usage {
                input: 12,
                output: 34,
            })),
            StreamOutcome::Complete(None),
            StreamOutcome::Cut("connection reset".into()),
        ] {
            assert_eq!(StreamOutcome::decode(&outcome.encode()), Some(outcome));
        }
        assert_eq!(StreamOutcome::decode("not json"), None);
        assert_eq!(StreamOutcome::decode("{}"), None);
    }

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
