//! Group commit: funnels concurrent appends into one transaction per batch.
//!
//! Every append becomes a request on a channel; one writer task takes whatever is queued (up to a
//! cap), writes it in one transaction with one fsync, and answers each caller. Under load, batches
//! grow by themselves while the previous commit is being flushed, so throughput rises with
//! concurrency instead of being capped by one fsync per event. Each request keeps its own
//! expected-version check, so one conflicting append never fails its neighbours.

use crate::{AppendResult, ExpectedVersion, NewEvent, StoreError, StoreResult};
use async_trait::async_trait;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// One append waiting to be written.
pub(crate) struct PendingAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// The outcome of one append inside a batch.
pub(crate) enum Outcome {
    Appended(AppendResult),
    Conflict { actual: u64 },
}

/// A backend that can write a batch of appends in one transaction. The appends of one batch are
/// always to distinct streams.
#[async_trait]
pub(crate) trait BatchWriter: Send + 'static {
    /// Writes every non-conflicting append of `batch` in one transaction; on `Err`, nothing of
    /// the batch was written.
    async fn write_batch(&mut self, batch: &[PendingAppend]) -> StoreResult<Vec<Outcome>>;

    /// Called after a successful commit with the new head of the log.
    fn committed(&mut self, head: u64);
}

type Request = (PendingAppend, oneshot::Sender<StoreResult<AppendResult>>);

/// The sending half, held by the store.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::Sender<Request>,
}

/// Caps one batch: by appends and by events.
const MAX_BATCH_APPENDS: usize = 512;
const MAX_BATCH_EVENTS: usize = 4_096;
/// How many times a short batch yields to let answered callers queue again (microseconds each).
const MAX_LINGER_YIELDS: usize = 4;

impl GroupCommit {
    /// Starts the writer task.
    pub(crate) fn spawn(writer: impl BatchWriter) -> Self {
        let (tx, rx) = mpsc::channel(8_192);
        tokio::spawn(run(writer, rx));
        GroupCommit { tx }
    }

    /// Queues one append and waits for its outcome.
    pub(crate) async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingAppend {
            stream: stream.to_owned(),
            expected,
            events,
        };
        self.tx
            .send((pending, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(mut writer: impl BatchWriter, mut rx: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH_APPENDS);
    let mut streams: HashSet<String> = HashSet::with_capacity(MAX_BATCH_APPENDS);
    // A request held back because its stream was already in the batch: it opens the next one.
    let mut carried: Option<Request> = None;
    // How many appends the previous batch carried: the callers it answered are about to send
    // their next appends, so a batch that starts smaller waits a moment for them.
    let mut previous = 0;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut events = first.0.events.len();
        streams.insert(first.0.stream.clone());
        batch.push(first);
        let mut lingered = 0;
        'fill: while batch.len() < MAX_BATCH_APPENDS && events < MAX_BATCH_EVENTS {
            match rx.try_recv() {
                Ok(next) => {
                    // Appends in one batch touch distinct streams, so each one's expected
                    // version is checked against the state before the batch.
                    if !streams.insert(next.0.stream.clone()) {
                        carried = Some(next);
                        break 'fill;
                    }
                    events += next.0.events.len();
                    batch.push(next);
                }
                Err(_) if batch.len() < previous && lingered < MAX_LINGER_YIELDS => {
                    // Let the tasks just answered run and queue their next append, instead of
                    // committing a batch of one and making them wait a whole commit for the next.
                    lingered += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break 'fill,
            }
        }
        previous = batch.len();
        streams.clear();
        write_and_answer(&mut writer, std::mem::take(&mut batch)).await;
    }
}

async fn write_and_answer(writer: &mut impl BatchWriter, batch: Vec<Request>) {
    let (appends, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match writer.write_batch(&appends).await {
        Ok(outcomes) => {
            finish(writer, &appends, outcomes, replies);
        }
        Err(e) if appends.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) => {
            // One bad append (a duplicate event id, say) must not fail its neighbours: write
            // them one by one so that only the culprit gets the error.
            tracing::debug!(error = %e, size = appends.len(), "group commit batch failed, retrying one by one");
            for (append, reply) in appends.into_iter().zip(replies) {
                let one = [append];
                let answer = match writer.write_batch(&one).await {
                    Ok(outcomes) => {
                        finish(writer, &one, outcomes, vec![reply]);
                        continue;
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

fn finish(
    writer: &mut impl BatchWriter,
    appends: &[PendingAppend],
    outcomes: Vec<Outcome>,
    replies: Vec<oneshot::Sender<StoreResult<AppendResult>>>,
) {
    let head = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Appended(r) => Some(r.last_position),
            Outcome::Conflict { .. } => None,
        })
        .max();
    if let Some(head) = head {
        writer.committed(head);
    }
    for ((append, outcome), reply) in appends.iter().zip(outcomes).zip(replies) {
        let answer = match outcome {
            Outcome::Appended(r) => Ok(r),
            Outcome::Conflict { actual } => Err(StoreError::Conflict {
                stream: append.stream.clone(),
                expected: append.expected,
                actual,
            }),
        };
        // The caller may have gone away (request cancelled); its append stands regardless.
        let _ = reply.send(answer);
    }
}
