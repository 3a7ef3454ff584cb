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
    /// Manage accounts.
    Admin {
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Read the event log.
    Events {
        /// What to read.
        #[command(subcommand)]
        action: EventsAction,
    },
}

/// `confab projections ...`
#[derive(Debug, Subcommand)]
pub enum ProjectionsAction {
    /// Show each projection's checkpoint against the head of the log.
    Status,
    /// Drop a read model and rebuild it from the start of the log (all of them if no name).
    Rebuild {
        /// The projection to rebuild.
        name: Option<String>,
    },
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
        Command::Events { action } => events(config, action).await,
    }
}

async fn projections(config: Config, action: ProjectionsAction) -> anyhow::Result<()> {
    let backend = Backend::open(&config, Migrations::Require).await?;
    let engine = backend.engine();
    match action {
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
                    "{:<20} {:>12} {:>12} {:>10}",
                    s.name,
                    s.position,
                    s.head,
                    s.lag()
                )?;
            }
            Ok(())
        }
        ProjectionsAction::Rebuild { name } => {
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
