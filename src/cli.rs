//! The `confab` command line: one binary, one subcommand per operation.

use crate::app::{Application, shutdown_signal};
use crate::backend::{self, Backend, Migrations};
use crate::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand};
use confab_eventstore::RecordedEvent;
use figment::providers::Serialized;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Confab: the event-sourced backend of an AI chat product.
#[derive(Debug, Parser)]
#[command(name = "confab", version, about)]
pub struct Cli {
    /// A TOML configuration file (every setting can also be set as CONFAB_<NAME>).
    #[arg(long, global = true, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the embedded database lives [default: ./data].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (and, by default, run the projections in the same process).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Run the background work without the HTTP API: the projections, and on PostgreSQL the
    /// job workers (LLM replies, the credit reset) on the queue shared with `serve`.
    Work,
    /// Apply pending database migrations.
    Migrate,
    /// Inspect and rebuild read models.
    Projections {
        /// What to do with them.
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Operate on users' credit ledgers.
    Credits {
        /// What to do.
        #[command(subcommand)]
        action: CreditsAction,
    },
    /// Manage accounts.
    Admin {
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Verify read models against the log: replay it into a shadow copy of each read model
    /// (a schema `audit_<pid>` on PostgreSQL, a file `audit-<pid>.db` beside the database on
    /// SQLite, dropped afterwards) up to the position the live projection has reached, and
    /// compare: a checksum per table, then the keys and columns that differ. Also checks that
    /// each user's credit balance is the sum of their credit transactions and that no credit
    /// hold is open past its expiry plus a grace. Every column of the compared tables is a
    /// function of the log (projections take times and ids from the events, never from the
    /// clock), so every column is compared; derived indexes are not: SQLite's full-text tables
    /// and the embedding job's vectors. Safe while servers run. Exits 1 naming projection,
    /// table, key and column of each difference.
    Audit {
        /// The projections to audit [default: all].
        projections: Vec<String>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Seconds a credit hold may stay open past its expiry (the sweeper runs every minute).
        #[arg(long, default_value_t = 120)]
        hold_grace: u64,
    },
    /// Erase users (crypto-shredding).
    Users {
        /// What to do.
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Manage the keys of payload encryption.
    Keys {
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Read and verify the event log. Without a subcommand: the events matching the filters,
    /// oldest first (`confab events --type 'chat.*' --since 2026-12-01 --format table`).
    #[command(args_conflicts_with_subcommands = true)]
    Events {
        /// Which events to list.
        #[command(flatten)]
        filter: crate::events::Filter,
        /// What else to do.
        #[command(subcommand)]
        action: Option<EventsAction>,
    },
}

/// `confab projections ...`
#[derive(Debug, Subcommand)]
pub enum ProjectionsAction {
    /// Show each projection's checkpoint against the head of the log.
    Status,
    /// Rebuild a read model from the start of the log (all of them if no name). Offline by
    /// default: its rows are dropped first and the API serves it partly until it is done.
    Rebuild {
        /// The projection to rebuild.
        name: Option<String>,
        /// Build it side by side while the live one serves, then swap it in atomically with its
        /// checkpoint: readers never see it empty or partial; safe while servers run.
        #[arg(long)]
        online: bool,
    },
    /// List the events projections could not apply: parked, or halted on.
    Parked {
        /// Only this projection's.
        name: Option<String>,
    },
    /// Try a projection's parked events again (all, or the one at POSITION); an event it
    /// halted on is handed back to its runner.
    Retry {
        /// The projection.
        name: String,
        /// The event's global position.
        position: Option<u64>,
    },
    /// Tell a projection to pass over an event it parked or halted on, recorded in the log
    /// with the reason and the operator.
    Skip {
        /// The projection.
        name: String,
        /// The event's global position.
        position: u64,
        /// Why (kept in the log).
        #[arg(long)]
        reason: String,
        /// Who skips it [default: the OS user running the command].
        #[arg(long)]
        by: Option<String>,
    },
}

/// `confab credits ...`
#[derive(Debug, Subcommand)]
pub enum CreditsAction {
    /// Add credits to a user's balance, or take them away (never below zero), recording who
    /// and why in the log; it shows in their credit history as an `adjustment`.
    Adjust {
        /// The user: their id or email.
        #[arg(long)]
        user: String,
        /// Credits to add; negative takes them away.
        #[arg(long, allow_negative_numbers = true)]
        amount: i64,
        /// Why (kept in the log and shown in the user's history).
        #[arg(long)]
        reason: String,
        /// Who makes the adjustment [default: the OS user running the command].
        #[arg(long)]
        by: Option<String>,
    },
}

/// `confab users ...`
#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Erase a user (GDPR art. 17): destroy their data key, record `account.user_erased`,
    /// purge every read model of their rows, delete their objects; prints the receipt.
    Erase {
        /// The user's id.
        user_id: uuid::Uuid,
        /// Why (recorded in the log).
        #[arg(long)]
        reason: String,
    },
}

/// `confab keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Rewrap every user's data key under the current master key (`CONFAB_ENCRYPTION_KEY`);
    /// keys wrapped under the previous one need it as `CONFAB_ENCRYPTION_KEY_PREVIOUS`.
    Rotate,
}

/// `confab admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Create an admin account.
    Create {
        /// Its email address.
        #[arg(long)]
        email: String,
        /// Its password (8 to 128 characters); prefer CONFAB_NEW_ADMIN_PASSWORD over the flag,
        /// which other users of the machine can see.
        #[arg(long, env = "CONFAB_NEW_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        /// Its display name.
        #[arg(long, default_value = "Admin")]
        name: String,
    },
}

/// `confab events ...`
#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Print the last events of the global log as JSON lines; with --follow, keep printing.
    Tail {
        /// How many past events to print first.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u64,
        /// Start after this global position instead of the last N events.
        #[arg(long)]
        after: Option<u64>,
        /// Keep waiting for new events (ctrl-c to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print every event of one stream as JSON lines.
    Show {
        /// The stream, e.g. chat-0192...
        stream: String,
    },
    /// Check the log itself: positions dense, each stream's versions without gaps, every
    /// payload readable by this version of Confab. Exits 1 naming each problem's position.
    Verify,
}

impl Cli {
    /// The configuration with this command line's flags on top.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut figment = Config::figment(self.config.as_deref());
        if let Some(dir) = &self.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        if let Command::Serve { bind: Some(bind) } = &self.command {
            figment = figment.merge(Serialized::default("bind", bind));
        }
        figment.extract().context("invalid configuration")
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config()?;
    match cli.command {
        Command::Serve { .. } => {
            let app = Application::build(config).await?;
            tracing::info!(port = app.port(), "confab listening");
            app.run_until(shutdown_signal()).await
        }
        Command::Work => crate::app::work(config, shutdown_signal()).await,
        Command::Migrate => {
            let n = backend::migrate(&config).await?;
            println!("{n} migration(s) applied; the schema is up to date");
            Ok(())
        }
        Command::Projections { action } => projections(config, action).await,
        Command::Audit {
            projections,
            json,
            hold_grace,
        } => {
            let backend = Backend::open(&config, Migrations::Require).await?;
            let opts = crate::audit::Options {
                projections,
                hold_grace: Duration::from_secs(hold_grace),
                progress: true,
            };
            let report = crate::audit::run(
                backend.store.clone(),
                &backend.db,
                confab_projections::all(),
                &opts,
            )
            .await?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", crate::audit::human(&report))?;
            }
            out.flush()?;
            let problems = report.problems();
            if problems > 0 {
                anyhow::bail!(
                    "the audit found {problems} difference(s) or broken invariant(s) (listed \
                     above); nothing was changed. Rebuild a read model that differs with \
                     `confab projections rebuild NAME`"
                );
            }
            if !json {
                writeln!(
                    out,
                    "audit clean: every read model equals a replay of the log"
                )?;
            }
            Ok(())
        }
        Command::Credits {
            action:
                CreditsAction::Adjust {
                    user,
                    amount,
                    reason,
                    by,
                },
        } => {
            let by = match by.or_else(os_user) {
                Some(by) => by,
                None => {
                    anyhow::bail!("cannot tell which OS user runs this; name yourself with --by")
                }
            };
            let backend = Backend::open(&config, Migrations::Require).await?;
            let done = confab_application::credits::adjust(
                &*backend.store,
                &backend.db,
                &config.catalogue,
                &user,
                amount,
                &reason,
                &by,
            )
            .await;
            match done {
                Ok(a) => {
                    println!(
                        "{} ({}): {:+} credits by {by}, balance now {} (position {})",
                        a.email, a.user, a.amount, a.balance_after, a.position
                    );
                    Ok(())
                }
                Err(confab_application::AppError::NotFound(_)) => anyhow::bail!(
                    "no user {user:?}: give their id or email (a user signed up moments ago \
                     shows once the server's projections have caught up)"
                ),
                Err(confab_application::AppError::Invalid(problems)) => {
                    anyhow::bail!("nothing adjusted: {problems}")
                }
                Err(e) => Err(anyhow::Error::new(e).context("the adjustment failed")),
            }
        }
        Command::Admin {
            action:
                AdminAction::Create {
                    email,
                    password,
                    name,
                },
        } => {
            let backend = Backend::open(&config, Migrations::Require).await?;
            match crate::admin::ensure(&*backend.store, &email, &password, &name).await? {
                crate::admin::Outcome::Created(_) => {
                    println!("admin {email} created; sign in with POST /api/auth/signin");
                    Ok(())
                }
                crate::admin::Outcome::Exists => anyhow::bail!(
                    "an account with the email {email} exists already; choose another address"
                ),
            }
        }
        Command::Users {
            action: UsersAction::Erase { user_id, reason },
        } => crate::privacy::erase_user(&config, user_id, &reason).await,
        Command::Keys {
            action: KeysAction::Rotate,
        } => crate::privacy::rotate_keys(&config).await,
        Command::Events { filter, action } => match action {
            Some(action) => events(config, action).await,
            None => {
                let backend = Backend::open(&config, Migrations::Require).await?;
                let shown = crate::events::list(&*backend.store, &filter).await?;
                if shown == 0 {
                    eprintln!("no event matches these filters");
                }
                Ok(())
            }
        },
    }
}

async fn projections(config: Config, action: ProjectionsAction) -> anyhow::Result<()> {
    let backend = Backend::open(&config, Migrations::Require).await?;
    let engine = backend
        .engine()
        .with_on_error(config.projection_on_error()?);
    let known = |name: &str| -> anyhow::Result<()> {
        if engine.names().contains(&name) {
            Ok(())
        } else {
            anyhow::bail!(
                "no projection named {name:?}; `confab projections status` lists them ({})",
                engine.names().join(", ")
            )
        }
    };
    match action {
        ProjectionsAction::Parked { name } => {
            if let Some(n) = &name {
                known(n)?;
            }
            let rows = confab_projections::parked::list(&backend.db, name.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            if rows.is_empty() {
                writeln!(out, "no parked or halted event")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<14} {:>10} {:<8} {:<28} {:>8}  {:<20} ERROR",
                "PROJECTION", "POSITION", "STATUS", "EVENT TYPE", "ATTEMPTS", "SINCE"
            )?;
            for r in rows {
                writeln!(
                    out,
                    "{:<14} {:>10} {:<8} {:<28} {:>8}  {:<20} {} (stream {})",
                    r.projection,
                    r.position,
                    r.status,
                    r.event_type,
                    r.attempts,
                    r.parked_at.format("%Y-%m-%d %H:%M:%S"),
                    r.error,
                    r.stream
                )?;
            }
            Ok(())
        }
        ProjectionsAction::Retry { name, position } => {
            known(&name)?;
            let done = engine.retry(&name, position).await?;
            if done.is_empty() {
                anyhow::bail!(
                    "{name} has no parked or halted event{}",
                    position
                        .map(|p| format!(" at position {p}"))
                        .unwrap_or_default()
                );
            }
            let mut failed = 0;
            for (p, outcome) in done {
                match outcome {
                    confab_projections::Retried::Applied => println!("{name} {p}: applied"),
                    confab_projections::Retried::Resumed => {
                        println!("{name} {p}: halt lifted; the projection tries it again")
                    }
                    confab_projections::Retried::Failed(why) => {
                        failed += 1;
                        println!("{name} {p}: failed again: {why}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!(
                    "{failed} event(s) still fail and stay parked; fix the cause, or skip them \
                     with `confab projections skip {name} POSITION --reason ...`"
                );
            }
            Ok(())
        }
        ProjectionsAction::Skip {
            name,
            position,
            reason,
            by,
        } => {
            known(&name)?;
            let Some(by) = by.or_else(os_user) else {
                anyhow::bail!("cannot tell which OS user runs this; name yourself with --by");
            };
            match confab_application::operations::skip(
                &*backend.store,
                &backend.db,
                &name,
                position,
                &reason,
                &by,
            )
            .await
            {
                Ok(s) => {
                    println!(
                        "{name} passes over position {position} ({}); the skip is position {} \
                         of the log",
                        s.event_type, s.recorded_at
                    );
                    Ok(())
                }
                Err(confab_application::AppError::NotFound(_)) => anyhow::bail!(
                    "{name} has not parked or halted on position {position}: \
                     `confab projections parked {name}` lists what it has"
                ),
                Err(confab_application::AppError::Invalid(problems)) => {
                    anyhow::bail!("nothing skipped: {problems}")
                }
                Err(e) => Err(anyhow::Error::new(e).context("the skip failed")),
            }
        }
        ProjectionsAction::Status => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<20} {:>12} {:>12} {:>10}",
                "PROJECTION", "POSITION", "HEAD", "LAG"
            )?;
            for s in engine.status().await? {
                writeln!(
                    out,
                    "{:<20} {:>12} {:>12} {:>10}{}",
                    s.name,
                    s.position,
                    s.head,
                    s.lag(),
                    s.halted
                        .map(|p| format!("  HALTED at {p}"))
                        .unwrap_or_default()
                )?;
            }
            let model = &config.embedding_model;
            let progress =
                confab_projections::documents::index_progress(&backend.db, model).await?;
            writeln!(out, "{}", vector_status(model, &progress))?;
            Ok(())
        }
        ProjectionsAction::Rebuild { name, online } => {
            let names: Vec<String> = match name {
                Some(n) => {
                    if !engine.names().contains(&n.as_str()) {
                        anyhow::bail!(
                            "no projection named {n:?}; `confab projections status` lists them ({})",
                            engine.names().join(", ")
                        );
                    }
                    vec![n]
                }
                None => engine.names().iter().map(|s| s.to_string()).collect(),
            };
            if online {
                for name in names {
                    let projection = confab_projections::all()
                        .into_iter()
                        .find(|p| p.name() == name)
                        .with_context(|| format!("no projection named {name:?}"))?;
                    let done = crate::rebuild::online(
                        backend.store.clone(),
                        &backend.db,
                        projection,
                        true,
                        None,
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "the online rebuild of {name} failed; the live read model is                              unchanged: rerun the command"
                        )
                    })?;
                    println!(
                        "{name}: rebuilt online up to position {} ({} events replayed, {} rows                          swapped in) in {:.1}s",
                        done.position, done.events, done.rows, done.seconds
                    );
                }
                return Ok(());
            }
            for name in names {
                let bar = ProgressBar::new(0);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(name.clone());
                let started = std::time::Instant::now();
                let reached = engine
                    .rebuild(&name, |at, head| {
                        bar.set_length(head);
                        bar.set_position(at);
                    })
                    .await
                    .with_context(|| {
                        format!("rebuilding {name} failed; rerun the command to start over")
                    })?;
                bar.finish_and_clear();
                println!(
                    "{name}: rebuilt up to position {reached} in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
    }
}

/// The OS user running this command, for the record of who adjusted credits.
fn os_user() -> Option<String> {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
}

/// The line of `confab projections status` about the vector index of `model`, e.g.
/// `documents vectors text-embedding-3-large: 1,234/5,000 chunks, building; serving
/// text-embedding-3-small`.
fn vector_status(model: &str, p: &confab_projections::documents::IndexProgress) -> String {
    let state = if p.complete(model) {
        "complete"
    } else {
        "building"
    };
    let serving = if p.serving.is_empty() {
        "no document ready".to_owned()
    } else {
        p.serving
            .iter()
            .map(|(m, n)| {
                let docs = if *n == 1 { "document" } else { "documents" };
                format!("{m} ({} {docs})", thousands(*n))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "documents vectors {model}: {}/{} chunks, {state}; serving {serving}",
        thousands(p.embedded),
        thousands(p.chunks)
    )
}

/// `n` with a comma between thousands (1,234,567).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_event(out: &mut impl Write, e: &RecordedEvent) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, e)?;
    writeln!(out)?;
    Ok(())
}

async fn events(config: Config, action: EventsAction) -> anyhow::Result<()> {
    let backend = Backend::open(&config, Migrations::Require).await?;
    let store = backend.store;
    match action {
        EventsAction::Show { stream } => {
            let events = confab_eventstore::read_whole_stream(&*store, &stream).await?;
            if events.is_empty() {
                anyhow::bail!(
                    "stream {stream:?} has no events; `confab events tail` shows recent streams"
                );
            }
            let mut out = std::io::stdout().lock();
            for e in &events {
                print_event(&mut out, e)?;
            }
            Ok(())
        }
        EventsAction::Verify => {
            let v = crate::events::verify(&*store).await?;
            let mut out = std::io::stdout().lock();
            for p in &v.problems {
                writeln!(out, "position {}: {}", p.position, p.what)?;
            }
            if v.more > 0 {
                writeln!(out, "... and {} more problems", v.more)?;
            }
            let problems = v.problems.len() as u64 + v.more;
            if problems > 0 {
                anyhow::bail!(
                    "the log has {problems} problem(s) in {} events of {} streams (listed above); \
                     nothing was changed. An unreadable payload needs an upcaster in this version \
                     of Confab; gaps or repeats mean the database was edited outside Confab",
                    v.events,
                    v.streams
                );
            }
            writeln!(
                out,
                "the log is sound: {} events in {} streams, positions 1 to {} without a gap, \
                 every stream's versions in order, every payload readable",
                v.events, v.streams, v.events
            )?;
            Ok(())
        }
        EventsAction::Tail {
            lines,
            after,
            follow,
        } => {
            let head = store.head_position().await?;
            let mut at = after.unwrap_or_else(|| head.saturating_sub(lines));
            let mut stop = std::pin::pin!(shutdown_signal());
            loop {
                let batch = store.read_all(at, 500).await?;
                if let Some(last) = batch.last() {
                    at = last.position;
                    let mut out = std::io::stdout().lock();
                    for e in &batch {
                        print_event(&mut out, e)?;
                    }
                    out.flush()?;
                    continue;
                }
                if !follow {
                    return Ok(());
                }
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    r = store.wait_for_events(at, Duration::from_secs(30)) => { r?; }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_projections::documents::IndexProgress;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn the_vector_line_says_what_is_built_and_what_serves() {
        let building = IndexProgress {
            embedded: 1_234,
            chunks: 5_000,
            serving: vec![("small".into(), 3)],
        };
        assert_eq!(
            vector_status("large", &building),
            "documents vectors large: 1,234/5,000 chunks, building; serving small (3 documents)"
        );
        let done = IndexProgress {
            embedded: 5_000,
            chunks: 5_000,
            serving: vec![("large".into(), 1)],
        };
        assert_eq!(
            vector_status("large", &done),
            "documents vectors large: 5,000/5,000 chunks, complete; serving large (1 document)"
        );
    }
}
