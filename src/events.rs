//! `confab events`: the event log for auditors. Filtered listings (by stream, type, user, time
//! and position, as JSON lines or a table), the tail of the log, one stream, and `verify`,
//! which checks the log itself: positions dense, each stream's versions without gaps, every
//! payload readable by today's code.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};
use confab_eventstore::{EventStore, RecordedEvent};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use uuid::Uuid;

/// Events read per page while scanning the log.
const PAGE: usize = 1_000;

/// How events are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line: the whole event (payload and metadata included).
    #[default]
    Json,
    /// One aligned line per event: position, time, stream, version, type, actor.
    Table,
}

/// Which events `confab events` lists. Every filter given must match.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only this stream (e.g. `chat-0192...`), or streams starting with it when it ends in `*`
    /// (e.g. `chat-*`).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only this event type (e.g. `chat.message_sent`), or types starting with it when it ends
    /// in `*` (e.g. `credits.*`). May be given several times.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Only what concerns this user: events they caused (the metadata's actor) and the events
    /// of their own streams (`account-`, `credits-`, `settings-`, `billing-{user}`).
    #[arg(long)]
    pub user: Option<Uuid>,
    /// Only events recorded at or after this time (RFC 3339, or a date: `2026-12-01`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only events recorded before this time (RFC 3339, or a date: the start of that day).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only events after this global position.
    #[arg(long)]
    pub after: Option<u64>,
    /// Only events before this global position.
    #[arg(long)]
    pub before: Option<u64>,
    /// How to print them.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

/// An RFC 3339 time, or a date meaning its first instant (UTC).
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-12-01T09:30:00Z) nor a date (2026-12-01)"
            )
        })
}

/// Whether `value` is `pattern`, or starts with it when the pattern ends in `*`.
fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

impl Filter {
    fn accepts(&self, e: &RecordedEvent) -> bool {
        if self
            .stream
            .as_deref()
            .is_some_and(|s| !matches(s, &e.stream))
        {
            return false;
        }
        if !self.types.is_empty() && !self.types.iter().any(|t| matches(t, &e.event_type)) {
            return false;
        }
        if let Some(user) = self.user {
            let own_stream = e.stream.ends_with(&format!("-{user}"));
            if e.metadata.actor != Some(user) && !own_stream {
                return false;
            }
        }
        if self.since.is_some_and(|t| e.recorded_at < t)
            || self.until.is_some_and(|t| e.recorded_at >= t)
        {
            return false;
        }
        true
    }
}

/// A progress bar on stderr for a scan of the log up to `head`, drawn only for a person at a
/// terminal (scripts reading stdout see nothing of it).
fn progress(head: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(head);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} positions ({per_sec}, {eta} left)",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn print(out: &mut impl Write, format: Format, e: &RecordedEvent) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, e)?;
            writeln!(out)?;
        }
        Format::Table => writeln!(
            out,
            "{:>10}  {}  {:<44} {:>5}  {:<32} {}",
            e.position,
            e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            e.stream,
            e.version,
            e.event_type,
            e.metadata
                .actor
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        )?,
    }
    Ok(())
}

/// `confab events [FILTERS]`: prints the events that match, oldest first; how many.
pub async fn list(store: &dyn EventStore, filter: &Filter) -> anyhow::Result<u64> {
    let mut out = std::io::stdout().lock();
    if filter.format == Format::Table {
        writeln!(
            out,
            "{:>10}  {:<24}  {:<44} {:>5}  {:<32} actor",
            "position", "recorded at", "stream", "ver", "type"
        )?;
    }
    let mut shown = 0;
    // One whole stream: read it alone rather than scan the log.
    if let Some(stream) = filter.stream.as_deref().filter(|s| !s.ends_with('*')) {
        for e in confab_eventstore::read_whole_stream(store, stream).await? {
            let in_range = filter.after.is_none_or(|a| e.position > a)
                && filter.before.is_none_or(|b| e.position < b);
            if in_range && filter.accepts(&e) {
                print(&mut out, filter.format, &e)?;
                shown += 1;
            }
        }
        return Ok(shown);
    }
    let head = store.head_position().await?;
    let end = filter
        .before
        .map_or(head, |b| b.saturating_sub(1).min(head));
    let bar = progress(end, "scanning the log");
    let mut at = filter.after.unwrap_or(0);
    bar.set_position(at);
    while at < end {
        let page = store.read_all(at, PAGE).await?;
        let Some(last) = page.last() else { break };
        at = last.position;
        for e in page.iter().filter(|e| e.position <= end) {
            if filter.accepts(e) {
                bar.suspend(|| print(&mut out, filter.format, e))?;
                shown += 1;
            }
        }
        bar.set_position(at.min(end));
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok(shown)
}

/// One thing wrong with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: the global position.
    pub position: u64,
    /// What.
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Events read.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// What is wrong, in log order (at most [`MAX_PROBLEMS`] kept; `more` counts the rest).
    pub problems: Vec<Problem>,
    /// Problems beyond those kept.
    pub more: u64,
}

/// Problems listed in full; beyond, only counted.
pub const MAX_PROBLEMS: usize = 100;

impl Verified {
    fn found(&mut self, position: u64, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { position, what });
        } else {
            self.more += 1;
        }
    }
}

/// `confab events verify`: reads the whole log and checks that positions run 1, 2, 3, ...
/// without a gap or a repeat, that each stream's versions run 1, 2, 3, ... in log order, and
/// that every payload decodes (upcast if old) with today's code.
pub async fn verify(store: &dyn EventStore) -> anyhow::Result<Verified> {
    let head = store.head_position().await?;
    let bar = progress(head, "verifying the log");
    let mut v = Verified::default();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut expected = 1;
    let mut at = 0;
    loop {
        let page = store
            .read_all(at, PAGE)
            .await
            .with_context(|| format!("reading the log after position {at}"))?;
        let Some(last) = page.last() else { break };
        at = last.position;
        for e in &page {
            v.events += 1;
            if e.position != expected {
                let what = if e.position > expected {
                    format!("positions {expected} to {} are missing", e.position - 1)
                } else {
                    format!("position {} comes again after {}", e.position, expected - 1)
                };
                v.found(e.position, what);
            }
            expected = e.position + 1;
            let last = versions.entry(e.stream.clone()).or_insert(0);
            if e.version != *last + 1 {
                v.found(
                    e.position,
                    format!(
                        "stream {} jumps from version {} to {}",
                        e.stream, last, e.version
                    ),
                );
            }
            *last = e.version;
            if let Err(why) =
                confab_domain::log::decode_stored(&e.event_type, e.schema_version, &e.payload)
            {
                v.found(
                    e.position,
                    format!(
                        "{} (stream {}, version {}) cannot be read: {why}",
                        e.event_type, e.stream, e.version
                    ),
                );
            }
        }
        bar.set_position(at);
    }
    bar.finish_and_clear();
    if expected <= head {
        v.found(
            head,
            format!("the head is {head}, but the log ends at {}", expected - 1),
        );
    }
    v.streams = versions.len() as u64;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_times() {
        assert!(matches("chat-*", "chat-0192"));
        assert!(!matches("chat-*", "account-1"));
        assert!(matches("chat.created", "chat.created"));
        assert!(!matches("chat.created", "chat.created2"));
        assert_eq!(
            parse_time("2026-12-01").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-12-01T09:30:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T08:30:00+00:00"
        );
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
