//! The OpenAI-wire stand-in as a process, for tools that need a running server (schemathesis
//! against `confab serve` with `OPENAI_BASE_URL` pointing here): every chat completion is a
//! short streamed reply with its usage. Prints its base URL on stdout once it listens, then
//! serves until interrupted.

use clap::Parser;
use confab_testkit::openai::{Act, OpenAiStandIn};
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

/// Serves the OpenAI chat-completions stand-in.
#[derive(Parser)]
#[command(name = "openai-stand-in")]
struct Args {
    /// The port to listen on (0: a free one; the printed URL says which).
    #[arg(long, default_value_t = 12112)]
    port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let openai = OpenAiStandIn::start_on((args.host, args.port).into()).await?;
    openai.always(Act::reply(
        &["Hello", " from", " the", " stand-in."],
        (12, 4),
        Duration::from_millis(1),
    ));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", openai.base_url())?;
    out.flush()?;
    drop(out);
    tokio::signal::ctrl_c().await
}
