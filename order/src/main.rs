//! The `mall-order` process: serve (the default), or sign a payment callback for development
//! and load tests.

use clap::{Parser, Subcommand};
use mall_common::config::Vars;
use mall_order::Settings;

// mimalloc as the C `malloc`, linked in by the `use` (why: mall-gateway's main.rs).
use mimalloc as _;

#[derive(Parser)]
#[command(name = "mall-order", about = "The order service of mall", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Print the X-Signature of a callback body (HMAC-SHA256 with MALL_PAYMENT_SECRET).
    SignCallback {
        /// The exact JSON body that will be sent.
        body: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = mall_common::config::or_exit("mall-order", Settings::from_env());
            let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
            let app = mall_order::build(settings).await?;
            app.run_until_stopped(mall_common::shutdown::signal()).await
        }
        Command::SignCallback { body } => {
            let secret =
                Vars::from_env().secret("MALL_PAYMENT_SECRET", mall_order::config::DEV_PAYMENT_SECRET);
            println!(
                "{}",
                mall_order::domain::sign(secret.expose().as_bytes(), body.as_bytes())
            );
            Ok(())
        }
    }
}
