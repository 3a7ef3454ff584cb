//! The conformance suite: what every [`EventStore`] adapter must do, written once.
//!
//! An adapter's test file implements [`Harness`] (open a handle on a fresh, empty log; open more
//! handles on the same log) and calls [`conformance_suite!`](crate::conformance_suite), which
//! expands to one `#[tokio::test]` per case below. The cases panic with a message on failure.

use crate::{
    AppendResult, EventMetadata, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError,
    read_whole_stream,
};
use async_trait::async_trait;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Opens handles on one fresh log for a test.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens a handle on this harness's log; every call opens another, independent one (its own
    /// connections and writer), all on the same log.
    async fn open(&self) -> Arc<dyn EventStore>;
}

/// Expands to one `#[tokio::test]` per conformance case; `$harness` is an async fn returning a
/// value that implements [`Harness`]. With `optional`, it returns an `Option` of one, and the
/// cases skip (saying so) when it is `None`: for servers CI does not run.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:path) => {
        $crate::conformance_suite!(@cases $harness, required;
            appended_events_read_back_with_their_envelope,
            a_batch_is_appended_atomically_or_not_at_all,
            expected_versions_are_enforced_with_typed_conflicts,
            concurrent_appends_at_the_same_version_let_exactly_one_win,
            the_global_log_is_ordered_and_complete,
            reads_can_start_in_the_middle,
            waiting_wakes_on_append_and_times_out_otherwise,
            large_payloads_round_trip_and_oversized_ones_are_refused,
            unicode_round_trips_in_streams_types_and_payloads,
            bad_input_gets_typed_errors_and_writes_nothing,
            sixteen_writers_and_a_checkpointing_reader_see_every_event_once_in_order,
            concurrent_appends_to_one_stream_with_any_version_all_land_in_order,
        );
    };
    (optional $harness:path) => {
        $crate::conformance_suite!(@cases $harness, optional;
            appended_events_read_back_with_their_envelope,
            a_batch_is_appended_atomically_or_not_at_all,
            expected_versions_are_enforced_with_typed_conflicts,
            concurrent_appends_at_the_same_version_let_exactly_one_win,
            the_global_log_is_ordered_and_complete,
            reads_can_start_in_the_middle,
            waiting_wakes_on_append_and_times_out_otherwise,
            large_payloads_round_trip_and_oversized_ones_are_refused,
            unicode_round_trips_in_streams_types_and_payloads,
            bad_input_gets_typed_errors_and_writes_nothing,
            sixteen_writers_and_a_checkpointing_reader_see_every_event_once_in_order,
            concurrent_appends_to_one_stream_with_any_version_all_land_in_order,
        );
    };
    (@cases $harness:path, required; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = $harness().await;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
    (@cases $harness:path, optional; $($case:ident),* $(,)?) => {
        $(
            // Reported as ignored, with the reason, in every run that has no server; run with
            // `--ignored` (and the server's URL) to run them. Without the URL they then fail.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "needs a server of this adapter: set its URL (see the test file) and pass --ignored"]
            async fn $case() {
                let Some(harness) = $harness().await else {
                    panic!("the adapter's server is not configured: set its URL (see the test file)");
                };
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}

fn meta() -> EventMetadata {
    EventMetadata {
        actor: Some(Uuid::now_v7()),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("test.happened", 1, json!({ "n": n }), meta())
}

fn stream() -> String {
    format!("test-{}", Uuid::now_v7().simple())
}

async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 500).await.expect("read_all");
        if page.is_empty() {
            return out;
        }
        after = page.last().map(|e| e.position).unwrap_or(after);
        out.extend(page);
    }
}

/// Events come back with every field of the envelope as appended.
pub async fn appended_events_read_back_with_their_envelope(h: &impl Harness) {
    let store = h.open().await;
    let s = stream();
    let events: Vec<NewEvent> = (1..=3).map(event).collect();
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let r = store
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    assert_eq!(r.next_expected_version, 3);
    assert!(r.first_position > 0 && r.last_position > r.first_position);
    let read = read_whole_stream(&*store, &s).await.expect("read");
    assert_eq!(read.len(), 3);
    for (i, (got, sent)) in read.iter().zip(&events).enumerate() {
        assert_eq!(got.event_id, sent.event_id);
        assert_eq!(got.stream, s);
        assert_eq!(got.version, i as u64 + 1);
        assert_eq!(got.event_type, "test.happened");
        assert_eq!(got.schema_version, 1);
        assert_eq!(got.payload, sent.payload);
        assert_eq!(got.metadata, sent.metadata);
        assert!(
            got.recorded_at > before
                && got.recorded_at < chrono::Utc::now() + chrono::Duration::seconds(5)
        );
    }
    assert_eq!(read[0].position, r.first_position);
    assert_eq!(read[2].position, r.last_position);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert!(store.head_position().await.expect("head") >= r.last_position);
}

/// A conflicting or invalid batch leaves no trace; a valid one is visible whole.
pub async fn a_batch_is_appended_atomically_or_not_at_all(h: &impl Harness) {
    let store = h.open().await;
    let s = stream();
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("first append");
    let head = store.head_position().await.expect("head");
    let err = store
        .append(&s, ExpectedVersion::Exact(5), (2..=4).map(event).collect())
        .await
        .expect_err("wrong version");
    assert!(err.is_conflict(), "{err:?}");
    let mut batch: Vec<NewEvent> = (2..=4).map(event).collect();
    batch[1].payload = json!({ "big": "x".repeat(store.limits().max_event_bytes + 1) });
    let err = store
        .append(&s, ExpectedVersion::Exact(1), batch)
        .await
        .expect_err("oversized middle event");
    assert!(matches!(err, StoreError::PayloadTooLarge { .. }), "{err:?}");
    assert_eq!(read_whole_stream(&*store, &s).await.expect("read").len(), 1);
    assert_eq!(store.head_position().await.expect("head"), head);
    let r = store
        .append(&s, ExpectedVersion::Exact(1), (2..=4).map(event).collect())
        .await
        .expect("valid batch");
    assert_eq!(r.next_expected_version, 4);
    let read = read_whole_stream(&*store, &s).await.expect("read");
    let ns: Vec<u64> = read
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ns, vec![1, 2, 3, 4]);
}

/// Any, NoStream and Exact behave as documented, and a conflict reports the actual version.
pub async fn expected_versions_are_enforced_with_typed_conflicts(h: &impl Harness) {
    let store = h.open().await;
    let s = stream();
    store
        .append(&s, ExpectedVersion::Exact(0), vec![event(1)])
        .await
        .expect("exact 0 on a new stream");
    match store
        .append(&s, ExpectedVersion::NoStream, vec![event(2)])
        .await
    {
        Err(StoreError::Conflict {
            stream: cs,
            expected,
            actual,
        }) => {
            assert_eq!(cs, s);
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store
        .append(&s, ExpectedVersion::Exact(3), vec![event(2)])
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let r = store
        .append(&s, ExpectedVersion::Any, vec![event(2)])
        .await
        .expect("any");
    assert_eq!(r.next_expected_version, 2);
    let r = store
        .append(&s, ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .expect("exact 2");
    assert_eq!(r.next_expected_version, 3);
    let fresh = stream();
    let r = store
        .append(&fresh, ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("any on a new stream");
    assert_eq!(r.next_expected_version, 1);
}

/// Of many appends racing at the same expected version, on several handles, exactly one wins.
pub async fn concurrent_appends_at_the_same_version_let_exactly_one_win(h: &impl Harness) {
    let stores = [h.open().await, h.open().await];
    let s = stream();
    stores[0]
        .append(&s, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .expect("seed");
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let store = Arc::clone(&stores[(i % 2) as usize]);
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(&s, ExpectedVersion::Exact(1), vec![event(i)])
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.next_expected_version, 2);
            }
            Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 2),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        read_whole_stream(&*stores[0], &s)
            .await
            .expect("read")
            .len(),
        2
    );
}

/// The global log holds every appended event once, in position order, interleaving streams.
pub async fn the_global_log_is_ordered_and_complete(h: &impl Harness) {
    let store = h.open().await;
    let streams: Vec<String> = (0..5).map(|_| stream()).collect();
    let mut appended = Vec::new();
    for round in 0..4u64 {
        for (i, s) in streams.iter().enumerate() {
            let r = store
                .append(
                    s,
                    ExpectedVersion::Exact(round),
                    vec![event(round * 10 + i as u64)],
                )
                .await
                .expect("append");
            appended.push(r.last_position);
        }
    }
    let log = all_events(&*store).await;
    let ours: Vec<&RecordedEvent> = log.iter().filter(|e| streams.contains(&e.stream)).collect();
    assert_eq!(ours.len(), 20);
    let positions: Vec<u64> = ours.iter().map(|e| e.position).collect();
    assert_eq!(positions, appended);
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
}

/// Reading a stream from a version, and the log after a position, with limits.
pub async fn reads_can_start_in_the_middle(h: &impl Harness) {
    let store = h.open().await;
    let s = stream();
    let r = store
        .append(&s, ExpectedVersion::NoStream, (1..=10).map(event).collect())
        .await
        .expect("append");
    let mid = store.read_stream(&s, 4, 3).await.expect("read");
    assert_eq!(
        mid.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(
        store
            .read_stream(&s, 11, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read_stream(&stream(), 1, 10)
            .await
            .expect("read")
            .is_empty()
    );
    let after_fourth = store.read_stream(&s, 4, 1).await.expect("read")[0].position;
    let tail = store.read_all(after_fourth, 100).await.expect("read_all");
    let ours: Vec<u64> = tail
        .iter()
        .filter(|e| e.stream == s)
        .map(|e| e.version)
        .collect();
    assert_eq!(ours, (5..=10).collect::<Vec<_>>());
    let two = store.read_all(after_fourth, 2).await.expect("read_all");
    assert_eq!(two.len(), 2);
    assert!(
        store
            .read_all(r.last_position, 10)
            .await
            .expect("read_all")
            .iter()
            .all(|e| e.stream != s)
    );
}

/// A waiter wakes soon after an append and returns at its timeout when nothing comes.
pub async fn waiting_wakes_on_append_and_times_out_otherwise(h: &impl Harness) {
    let store = h.open().await;
    let head = store.head_position().await.expect("head");
    let t0 = Instant::now();
    let seen = store
        .wait_for_events(head, Duration::from_millis(200))
        .await
        .expect("wait");
    assert!(seen <= head);
    assert!(t0.elapsed() >= Duration::from_millis(190));

    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let t = Instant::now();
            let seen = store.wait_for_events(head, Duration::from_secs(10)).await;
            (seen, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = store
        .append(&stream(), ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("append");
    let (seen, waited) = waiter.await.expect("waiter");
    assert!(seen.expect("wait") >= r.last_position);
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");

    // A handle woken by another handle's append (another process, in production).
    let other = h.open().await;
    let head = r.last_position;
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let seen = other.wait_for_events(head, Duration::from_secs(10)).await;
        (seen, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = store
        .append(&stream(), ExpectedVersion::Any, vec![event(2)])
        .await
        .expect("append");
    let (seen, waited) = waiter.await.expect("waiter");
    assert!(seen.expect("wait") >= r.last_position);
    assert!(waited < Duration::from_secs(3), "woke after {waited:?}");
}

/// A payload just under the limit round-trips byte for byte; one over it is refused.
pub async fn large_payloads_round_trip_and_oversized_ones_are_refused(h: &impl Harness) {
    let store = h.open().await;
    let s = stream();
    let limit = store.limits().max_event_bytes;
    let body: String = (0..limit - 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let big = NewEvent::new("test.big", 1, json!({ "body": body }), meta());
    store
        .append(&s, ExpectedVersion::NoStream, vec![big.clone()])
        .await
        .expect("large append");
    let read = store.read_stream(&s, 1, 1).await.expect("read");
    assert_eq!(read[0].payload, big.payload);
    let head = store.head_position().await.expect("head");
    let too_big = NewEvent::new(
        "test.big",
        1,
        json!({ "body": "z".repeat(limit + 1) }),
        meta(),
    );
    let err = store
        .append(&s, ExpectedVersion::Exact(1), vec![too_big])
        .await
        .expect_err("over the limit");
    assert!(matches!(err, StoreError::PayloadTooLarge { .. }), "{err:?}");
    assert_eq!(store.head_position().await.expect("head"), head);
}

/// Non-ASCII text survives in stream names, event types and payloads.
pub async fn unicode_round_trips_in_streams_types_and_payloads(h: &impl Harness) {
    let store = h.open().await;
    let s = format!("chat-Ünïcødé-日本語-{}", Uuid::now_v7().simple());
    let text = "Grüße, 世界! مرحبا 👋🏽 e\u{301} \u{200d} \"quotes\" \\ back\nslash\ttab";
    let e = NewEvent::new(
        "test.ünïcode",
        1,
        json!({ "text": text, "ключ": [text] }),
        meta(),
    );
    store
        .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .expect("append");
    let read = store.read_stream(&s, 1, 10).await.expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].stream, s);
    assert_eq!(read[0].event_type, "test.ünïcode");
    assert_eq!(read[0].payload, e.payload);
}

/// Empty or over-long stream names, empty batches: typed errors, nothing written.
pub async fn bad_input_gets_typed_errors_and_writes_nothing(h: &impl Harness) {
    let store = h.open().await;
    let head = store.head_position().await.expect("head");
    let long = "s".repeat(store.limits().max_stream_name_bytes + 1);
    for name in ["", long.as_str(), "bad\u{0}name", "$system"] {
        let err = store
            .append(name, ExpectedVersion::Any, vec![event(1)])
            .await
            .expect_err("bad name");
        assert!(
            matches!(err, StoreError::InvalidStreamName(_)),
            "{name:?}: {err:?}"
        );
    }
    let err = store
        .append(&stream(), ExpectedVersion::Any, vec![])
        .await
        .expect_err("empty batch");
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let mut bad_type = event(1);
    bad_type.event_type = String::new();
    let err = store
        .append(&stream(), ExpectedVersion::Any, vec![event(0), bad_type])
        .await
        .expect_err("empty type");
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.head_position().await.expect("head"), head);
}

/// 16 writers, each on its own handle (its own connections, so its own transactions), append
/// concurrently while a reader follows the log and checkpoints after every page. The reader must
/// see every appended event exactly once and in strictly increasing position order: a gap that
/// filled in after the reader passed it would be missed here.
pub async fn sixteen_writers_and_a_checkpointing_reader_see_every_event_once_in_order(
    h: &impl Harness,
) {
    const WRITERS: usize = 16;
    const APPENDS: u64 = 60;
    let reader_store = h.open().await;
    let start = reader_store.head_position().await.expect("head");
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = h.open().await;
        writers.push(tokio::spawn(async move {
            let s = format!("order-{w}-{}", Uuid::now_v7().simple());
            let mut results: Vec<AppendResult> = Vec::new();
            for i in 0..APPENDS {
                // Mix single events and small batches.
                let n = if i % 7 == 0 { 3 } else { 1 };
                let version = results.last().map(|r| r.next_expected_version).unwrap_or(0);
                let events = (0..n).map(|k| event(i * 10 + k)).collect();
                let r = store
                    .append(&s, ExpectedVersion::Exact(version), events)
                    .await
                    .expect("append");
                results.push(r);
            }
            (s, results)
        }));
    }
    let expected_total: usize = (0..APPENDS)
        .map(|i| if i % 7 == 0 { 3 } else { 1 })
        .sum::<u64>() as usize
        * WRITERS;
    let reader = {
        let store = Arc::clone(&reader_store);
        tokio::spawn(async move {
            let mut checkpoint = start;
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.len() < expected_total && Instant::now() < deadline {
                let page = store.read_all(checkpoint, 37).await.expect("read_all");
                if page.is_empty() {
                    store
                        .wait_for_events(checkpoint, Duration::from_millis(100))
                        .await
                        .expect("wait");
                    continue;
                }
                for e in page {
                    assert!(e.position > checkpoint, "position went backwards");
                    checkpoint = e.position;
                    if e.stream.starts_with("order-") {
                        seen.push(e);
                    }
                }
            }
            seen
        })
    };
    let mut appended_positions = HashSet::new();
    let mut streams = HashSet::new();
    for w in writers {
        let (s, results) = w.await.expect("writer");
        for r in results {
            for p in r.first_position..=r.last_position {
                appended_positions.insert(p);
            }
        }
        streams.insert(s);
    }
    let seen = reader.await.expect("reader");
    let seen: Vec<RecordedEvent> = seen
        .into_iter()
        .filter(|e| streams.contains(&e.stream))
        .collect();
    assert_eq!(seen.len(), expected_total, "the reader missed events");
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), expected_total, "the reader saw an event twice");
    // KurrentDB positions are not dense, so compare with the appended events' own positions
    // only where positions are dense (SQLite, PostgreSQL: last - first + 1 == count).
    if appended_positions.len() == expected_total {
        let seen_positions: HashSet<u64> = seen.iter().map(|e| e.position).collect();
        assert_eq!(seen_positions, appended_positions);
    }
    for s in &streams {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|e| &e.stream == s)
            .map(|e| e.version)
            .collect();
        let want: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, want, "stream {s} out of order");
    }
}

/// Many concurrent appends to one stream with `Any` all land, with versions 1..n and no gaps,
/// however the adapter batches them.
pub async fn concurrent_appends_to_one_stream_with_any_version_all_land_in_order(h: &impl Harness) {
    let store = h.open().await;
    let s = stream();
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let s = s.clone();
            tokio::spawn(
                async move { store.append(&s, ExpectedVersion::Any, vec![event(i)]).await },
            )
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(
            t.await
                .expect("task")
                .expect("append")
                .next_expected_version,
        );
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=64).collect::<Vec<_>>());
    let read = read_whole_stream(&*store, &s).await.expect("read");
    assert_eq!(read.len(), 64);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
}

/// Appending an event id that is already stored fails that append alone, even when it shares
/// a group-commit batch with others (SQL adapters; KurrentDB treats a repeated id as a retry).
pub async fn a_duplicate_event_id_fails_only_its_own_append(h: &impl Harness) {
    let store = h.open().await;
    let original = event(0);
    store
        .append(&stream(), ExpectedVersion::Any, vec![original.clone()])
        .await
        .expect("original");
    let tasks: Vec<_> = (0..32u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let e = if i == 13 { original.clone() } else { event(i) };
            tokio::spawn(async move {
                store
                    .append(&stream(), ExpectedVersion::NoStream, vec![e])
                    .await
            })
        })
        .collect();
    let mut failures = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(_) => assert_ne!(i, 13, "the duplicate was accepted"),
            Err(StoreError::Database(_)) => {
                assert_eq!(i, 13, "a neighbour of the duplicate failed");
                failures += 1;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(failures, 1);
}
