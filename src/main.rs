//! `confab`: one binary for the API server, the workers and the operator commands.

use clap::Parser;
use tracing_subscriber::EnvFilter;

// mimalloc: the event log and projections allocate many small JSON values; it is measurably
// faster than the system allocator for that (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = confab::cli::Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // CONFAB_LOG_FORMAT: `text` (default, for people) or `json` (one object per line, with the
    // span's fields such as request_id, for log pipelines).
    match std::env::var("CONFAB_LOG_FORMAT").as_deref() {
        Err(_) | Ok("") | Ok("text") => logs.init(),
        Ok("json") => logs.json().with_current_span(true).init(),
        Ok(other) => {
            eprintln!("error: CONFAB_LOG_FORMAT={other:?} is not a log format: use text or json");
            return std::process::ExitCode::FAILURE;
        }
    }
    match confab::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
