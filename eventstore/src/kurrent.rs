//! The KurrentDB adapter: [`KurrentStore`] implements [`EventStore`] on a KurrentDB server through
//! the official `kurrentdb` gRPC client.
//!
//! Mapping to KurrentDB concepts:
//!
//! - **Versions.** Ours are 1-based (a stream with `n` events is at version `n`, a missing stream at
//!   0); KurrentDB revisions are 0-based, so `version = revision + 1`. [`ExpectedVersion::Any`] is
//!   `StreamState::Any`, [`ExpectedVersion::NoStream`] and `Exact(0)` are `StreamState::NoStream`,
//!   and `Exact(n)` is `StreamState::StreamRevision(n - 1)`.
//! - **Global positions** are `$all` commit positions. Events appended through gRPC are implicitly
//!   committed, so each event's commit position equals its prepare position and is unique; a
//!   position `p` is therefore addressed as `Position { commit: p, prepare: p }`. Positions are
//!   increasing but not dense.
//! - **System events** (event type or stream name starting with `$`) never leave this adapter: reads
//!   of `$all` use the server-side "exclude system events" filter and drop `$` streams on the client.
//! - **Envelope.** The event id, type and JSON payload are KurrentDB's own; the custom metadata holds
//!   [`EventMetadata`] plus the payload schema version, e.g.
//!   `{"schemaVersion":1,"actor":"…","correlationId":"…","causationId":"…"}`.
//!
//! KurrentDB deduplicates appends by event id (an append whose ids were already written in the same
//! place succeeds without writing again) instead of refusing them.

use crate::{
    AppendResult, EventMetadata, EventStore, ExpectedVersion, Limits, NewEvent, RecordedEvent,
    StoreError, StoreResult, validate_append,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position,
    ReadAllOptions, ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions,
    SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Events read per round trip when walking `$all` backwards to find the head.
const HEAD_PAGE: usize = 64;

/// An [`EventStore`] backed by a KurrentDB server (or cluster) over gRPC.
///
/// Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct KurrentStore {
    client: Client,
    limits: Limits,
}

impl std::fmt::Debug for KurrentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentStore")
            .field("hosts", self.client.settings().hosts())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl KurrentStore {
    /// Connects to the KurrentDB server named by a connection string such as
    /// `kurrentdb://127.0.0.1:2113?tls=false`.
    ///
    /// Must be called from inside a Tokio runtime, whose handle the client keeps. The connection is
    /// established lazily, so an unreachable server shows up as a database error on first use.
    pub fn connect(url: &str, limits: Limits) -> StoreResult<Self> {
        let settings: ClientSettings = url.parse().map_err(StoreError::database)?;
        let handle = tokio::runtime::Handle::try_current().map_err(StoreError::database)?;
        let client = Client::with_runtime_handle(handle, settings).map_err(|e| {
            StoreError::Database(std::sync::Arc::from(Box::<
                dyn std::error::Error + Send + Sync,
            >::from(e)))
        })?;
        Ok(Self::from_client(client, limits))
    }

    /// Wraps an already configured client.
    pub fn from_client(client: Client, limits: Limits) -> Self {
        KurrentStore { client, limits }
    }

    /// The underlying KurrentDB client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads the `$all` positions of the `count` events of `stream` starting at revision
    /// `first_revision`, in revision order.
    async fn positions_of(
        &self,
        stream: &str,
        first_revision: u64,
        count: usize,
    ) -> StoreResult<Vec<u64>> {
        let options = ReadStreamOptions::default()
            .position(StreamPosition::Position(first_revision))
            .forwards()
            .max_count(count);
        let mut read = self
            .client
            .read_stream(stream, &options)
            .await
            .map_err(StoreError::database)?;
        let mut positions = Vec::with_capacity(count);
        while let Some(resolved) = read.next().await.map_err(StoreError::database)? {
            if let Some(event) = resolved.event {
                positions.push(event.position.commit);
            }
            if positions.len() >= count {
                break;
            }
        }
        Ok(positions)
    }

    /// First and last `$all` positions of an append of `count` events to `stream` whose last event
    /// got revision `last_revision`.
    ///
    /// A single event's position is the one the server returned. For several events the write
    /// result does not name each event's position exactly, so they are read back; if that read
    /// fails the write result's (prepare, commit) pair is used instead, since the append itself
    /// went through.
    async fn appended_positions(
        &self,
        stream: &str,
        count: usize,
        last_revision: u64,
        written: Position,
    ) -> (u64, u64) {
        if count == 1 && written.commit > 0 {
            return (written.commit, written.commit);
        }
        let first_revision = last_revision.saturating_sub(count.saturating_sub(1) as u64);
        match self.positions_of(stream, first_revision, count).await {
            Ok(positions) if positions.len() == count => {
                if let (Some(&first), Some(&last)) = (positions.first(), positions.last()) {
                    return (first, last);
                }
            }
            Ok(positions) => tracing::warn!(
                stream,
                expected = count,
                found = positions.len(),
                "could not read back all appended events; using the write result's positions"
            ),
            Err(error) => tracing::warn!(
                stream,
                %error,
                "could not read back appended events; using the write result's positions"
            ),
        }
        (written.prepare.min(written.commit), written.commit)
    }
}

/// What goes into KurrentDB's custom metadata of each event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredMetadataRef<'a> {
    schema_version: u32,
    #[serde(flatten)]
    metadata: &'a EventMetadata,
}

/// Custom metadata as read back.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredMetadata {
    #[serde(default = "default_schema_version")]
    schema_version: u32,
    #[serde(flatten)]
    metadata: EventMetadata,
}

fn default_schema_version() -> u32 {
    1
}

/// The stream state an append requires, in KurrentDB terms.
fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => StreamState::NoStream,
        ExpectedVersion::Exact(v) => StreamState::StreamRevision(v - 1),
    }
}

/// Our version of a stream at KurrentDB's `current` revision.
fn version_of(current: CurrentRevision) -> u64 {
    match current {
        CurrentRevision::Current(revision) => revision + 1,
        CurrentRevision::NoStream => 0,
    }
}

/// The exact `$all` position of an event whose commit position is `commit`.
fn all_position(commit: u64) -> Position {
    Position {
        commit,
        prepare: commit,
    }
}

/// The server-side filter that keeps system events (type starting with `$`) out of `$all` reads.
fn user_events() -> SubscriptionFilter {
    SubscriptionFilter::on_event_type().exclude_system_events()
}

/// Whether an event belongs to KurrentDB itself rather than to us.
fn is_system(event: &kurrentdb::RecordedEvent) -> bool {
    event.event_type.starts_with('$') || event.stream_id().starts_with('$')
}

/// Converts one event to KurrentDB's wire form.
fn encode(event: &NewEvent) -> StoreResult<EventData> {
    let serialization = |e: serde_json::Error| StoreError::Serialization(e.to_string());
    let metadata = StoredMetadataRef {
        schema_version: event.schema_version,
        metadata: &event.metadata,
    };
    EventData::json(&event.event_type, &event.payload)
        .map_err(serialization)?
        .id(event.event_id)
        .metadata_as_json(&metadata)
        .map_err(serialization)
}

/// When the server committed `event`, at the 100 ns precision of its `created` metadata (the
/// client's own `created` field is truncated to whole seconds).
fn recorded_at(event: &kurrentdb::RecordedEvent) -> DateTime<Utc> {
    event
        .metadata
        .get("created")
        .and_then(|ticks| ticks.parse::<u64>().ok())
        .and_then(|ticks| {
            let secs = i64::try_from(ticks / 10_000_000).ok()?;
            // Below 10^7 ticks of 100 ns, so below 10^9 ns: fits in u32.
            let nanos = u32::try_from((ticks % 10_000_000) * 100).ok()?;
            DateTime::from_timestamp(secs, nanos)
        })
        .unwrap_or(event.created)
}

/// Rebuilds our envelope from a KurrentDB event.
fn decode(event: &kurrentdb::RecordedEvent) -> StoreResult<RecordedEvent> {
    let stream = event.stream_id();
    let fail = |what: &str, e: serde_json::Error| {
        StoreError::Serialization(format!(
            "{what} of event {} (stream {stream:?}, revision {}): {e}",
            event.id, event.revision
        ))
    };
    let payload = if event.data.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&event.data).map_err(|e| fail("payload", e))?
    };
    let stored = if event.custom_metadata.is_empty() {
        StoredMetadata {
            schema_version: default_schema_version(),
            metadata: EventMetadata::default(),
        }
    } else {
        serde_json::from_slice::<StoredMetadata>(&event.custom_metadata)
            .map_err(|e| fail("metadata", e))?
    };
    Ok(RecordedEvent {
        event_id: event.id,
        stream: stream.to_owned(),
        version: event.revision + 1,
        position: event.position.commit,
        event_type: event.event_type.clone(),
        schema_version: stored.schema_version,
        payload,
        metadata: stored.metadata,
        recorded_at: recorded_at(event),
    })
}

#[async_trait]
impl EventStore for KurrentStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        validate_append(&self.limits, stream, &events)?;
        let count = events.len();
        let data = events.iter().map(encode).collect::<StoreResult<Vec<_>>>()?;
        let options = AppendToStreamOptions::default().stream_state(stream_state(expected));

        let written = match self.client.append_to_stream(stream, &options, data).await {
            Ok(written) => written,
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                return Err(StoreError::Conflict {
                    stream: stream.to_owned(),
                    expected,
                    actual: version_of(current),
                });
            }
            Err(e) => return Err(StoreError::database(e)),
        };

        let last_revision = written.next_expected_version;
        let (first_position, last_position) = self
            .appended_positions(stream, count, last_revision, written.position)
            .await;
        Ok(AppendResult {
            next_expected_version: last_revision + 1,
            first_position,
            last_position,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        // The server reads without bound when asked for 0 events.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let options = ReadStreamOptions::default()
            .position(StreamPosition::Position(from_version.saturating_sub(1)))
            .forwards()
            .max_count(limit);
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::database(e)),
        };
        let mut out = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => {
                    if let Some(event) = resolved.event.as_ref() {
                        out.push(decode(event)?);
                    }
                }
                Ok(None) => break,
                // The "stream not found" answer arrives as the first message of the read.
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::database(e)),
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            // Forward reads of $all include the event at the start position, which is `cursor`
            // itself: ask for one more so that a full page still holds enough new events.
            let requested = (limit - out.len()).saturating_add(1);
            let start = if cursor == 0 {
                StreamPosition::Start
            } else {
                StreamPosition::Position(all_position(cursor))
            };
            let options = ReadAllOptions::default()
                .position(start)
                .forwards()
                .filter(user_events())
                .max_count(requested);
            let mut read = self
                .client
                .read_all(&options)
                .await
                .map_err(StoreError::database)?;

            let mut received = 0usize;
            let mut furthest = cursor;
            while let Some(resolved) = read.next().await.map_err(StoreError::database)? {
                received += 1;
                let Some(event) = resolved.event.as_ref() else {
                    continue;
                };
                let position = event.position.commit;
                if position <= cursor {
                    continue;
                }
                furthest = furthest.max(position);
                if is_system(event) {
                    continue;
                }
                out.push(decode(event)?);
                if out.len() >= limit {
                    return Ok(out);
                }
            }

            // The server fills a filtered page unless it reached the end of $all; a full page
            // that still came up short (events of `$` streams with ordinary types were dropped
            // here) is followed by another one.
            if received < requested || furthest == cursor {
                return Ok(out);
            }
            cursor = furthest;
        }
    }

    async fn head_position(&self) -> StoreResult<u64> {
        let mut before: Option<u64> = None;
        loop {
            let start = match before {
                None => StreamPosition::End,
                Some(position) => StreamPosition::Position(all_position(position)),
            };
            // Backward reads of $all exclude the start position.
            let options = ReadAllOptions::default()
                .position(start)
                .backwards()
                .filter(user_events())
                .max_count(HEAD_PAGE);
            let mut read = self
                .client
                .read_all(&options)
                .await
                .map_err(StoreError::database)?;

            let mut received = 0usize;
            let mut lowest: Option<u64> = None;
            while let Some(resolved) = read.next().await.map_err(StoreError::database)? {
                received += 1;
                let Some(event) = resolved.event.as_ref() else {
                    continue;
                };
                if !is_system(event) {
                    return Ok(event.position.commit);
                }
                let position = event.position.commit;
                lowest = Some(lowest.map_or(position, |l| l.min(position)));
            }

            match lowest {
                Some(position) if received >= HEAD_PAGE && before != Some(position) => {
                    before = Some(position);
                }
                _ => return Ok(0),
            }
        }
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> StoreResult<u64> {
        let head = self.head_position().await?;
        if head > after {
            return Ok(head);
        }

        // Subscribing to $all from a position delivers the events after it. `head` is a real
        // event position (or the very start), so the server accepts it whatever `after` is;
        // anything up to `after` is skipped here.
        let start = if head == 0 {
            StreamPosition::Start
        } else {
            StreamPosition::Position(all_position(head))
        };
        let options = SubscribeToAllOptions::default()
            .position(start)
            .filter(user_events());
        let mut subscription = self.client.subscribe_to_all(&options).await;

        let next_event = async {
            loop {
                let resolved = subscription.next().await.map_err(StoreError::database)?;
                if let Some(event) = resolved.event.as_ref()
                    && event.position.commit > after
                    && !is_system(event)
                {
                    return Ok::<u64, StoreError>(event.position.commit);
                }
            }
        };

        match tokio::time::timeout(timeout, next_event).await {
            Ok(seen) => seen,
            Err(_elapsed) => self.head_position().await,
        }
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn expected_versions_map_to_zero_based_revisions() {
        assert_eq!(stream_state(ExpectedVersion::Any), StreamState::Any);
        assert_eq!(
            stream_state(ExpectedVersion::NoStream),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(0)),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(1)),
            StreamState::StreamRevision(0)
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(7)),
            StreamState::StreamRevision(6)
        );
        assert_eq!(version_of(CurrentRevision::NoStream), 0);
        assert_eq!(version_of(CurrentRevision::Current(0)), 1);
        assert_eq!(version_of(CurrentRevision::Current(9)), 10);
    }

    #[test]
    fn metadata_round_trips_with_schema_version() {
        let metadata = EventMetadata {
            actor: Some(Uuid::now_v7()),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        };
        let json = serde_json::to_value(StoredMetadataRef {
            schema_version: 3,
            metadata: &metadata,
        })
        .unwrap();
        assert_eq!(json["schemaVersion"], 3);
        assert!(json.get("actor").is_some());
        assert!(json.get("correlationId").is_some());
        assert!(json.get("causationId").is_none());

        let back: StoredMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back.schema_version, 3);
        assert_eq!(back.metadata, metadata);

        let bare: StoredMetadata = serde_json::from_str("{}").unwrap();
        assert_eq!(bare.schema_version, 1);
        assert_eq!(bare.metadata, EventMetadata::default());
    }

    #[test]
    fn connection_strings_are_parsed_or_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(
                KurrentStore::connect("kurrentdb://127.0.0.1:2113?tls=false", Limits::default())
                    .is_ok()
            );
            assert!(matches!(
                KurrentStore::connect("not a connection string", Limits::default()),
                Err(StoreError::Database(_))
            ));
        });
        assert!(
            KurrentStore::connect("kurrentdb://127.0.0.1:2113?tls=false", Limits::default())
                .is_err()
        );
    }
}
