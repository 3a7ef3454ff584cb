//! The Stripe stand-in as a process, for tools that need a running server (schemathesis against
//! `confab serve` with `CONFAB_STRIPE_API_BASE` pointing here). Prints its base URL on stdout
//! once it listens, then serves until interrupted.

use clap::Parser;
use confab_testkit::stripe::{SECRET_KEY, StripeStandIn};
use std::io::Write;
use std::net::IpAddr;

/// Serves the Stripe API stand-in.
#[derive(Parser)]
#[command(name = "stripe-stand-in")]
struct Args {
    /// The port to listen on (0: a free one; the printed URL says which).
    #[arg(long, default_value_t = 12111)]
    port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The secret key clients must send (`CONFAB_STRIPE_SECRET_KEY` of the server under test).
    #[arg(long, default_value = SECRET_KEY)]
    secret_key: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let stripe = StripeStandIn::start_on((args.host, args.port).into(), &args.secret_key).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", stripe.base_url())?;
    out.flush()?;
    drop(out);
    tokio::signal::ctrl_c().await
}
