//! The `mall-gateway` process: serve (the default), or mint a development token.

use clap::{Parser, Subcommand};
use mall_common::config::{Vars, parse_duration};
use mall_gateway::Settings;
use mall_gateway::auth::{MintKey, mint};

#[derive(Parser)]
#[command(name = "mall-gateway", about = "The edge of mall", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print a signed JWT for development and load tests (HS256 with MALL_JWT_SECRET, or RS256
    /// with the PEM private key in MALL_JWT_PRIVATE_KEY).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Comma-separated roles, e.g. `admin`.
        #[arg(long, default_value = "", value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Mint this many tokens, one per line, for users `<user>1` .. `<user><count>` (load
        /// tests with many distinct users).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
    },
}

// mimalloc as the C `malloc` (its `override` feature): glibc's arenas contend under many small
// per-request allocations. Not `#[global_allocator] MiMalloc`, whose aligned path is far slower
// for blocks over 1 KiB (docs/performance.md). The `use` links it in; a test checks it took.
use mimalloc as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Token {
            user,
            roles,
            ttl,
            count,
        } => {
            let vars = Vars::from_env();
            let roles: Vec<String> = roles.into_iter().filter(|r| !r.is_empty()).collect();
            let pem = match vars.get("MALL_JWT_PRIVATE_KEY") {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("MALL_JWT_PRIVATE_KEY={path}: {e}"))?,
                ),
                None => None,
            };
            let secret = vars.secret("MALL_JWT_SECRET", mall_gateway::config::DEV_JWT_SECRET);
            let users: Vec<String> = if count == 1 {
                vec![user]
            } else {
                (1..=count).map(|i| format!("{user}{i}")).collect()
            };
            let mut out = String::new();
            for user in users {
                let key = match &pem {
                    Some(pem) => MintKey::Rs256Pem(pem),
                    None => MintKey::Hs256(secret.expose()),
                };
                let token = mint(key, &user, &roles, ttl.as_secs()).map_err(anyhow::Error::msg)?;
                out.push_str(&token);
                out.push('\n');
            }
            print!("{out}");
            Ok(())
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let settings = mall_common::config::or_exit("mall-gateway", Settings::from_env());
    let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
    let app = mall_gateway::build(settings).await?;
    app.run_until_stopped(mall_common::shutdown::signal()).await
}
