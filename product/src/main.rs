//! The `mall-product` process: serve (the default), or fill an empty catalog with demo data.

use clap::{Parser, Subcommand};
use mall_common::db::Db;
use mall_product::Settings;
use mall_product::store::seed::{Seeded, seed};

// mimalloc as the C `malloc`, linked in by the `use` (why: mall-gateway's main.rs).
use mimalloc as _;

#[derive(Parser)]
#[command(name = "mall-product", about = "The catalog service of mall", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Fill an empty catalog with a deterministic demo catalog (runs migrations first).
    Seed {
        /// How many SKUs (three per SPU).
        #[arg(long, default_value_t = 10_000)]
        skus: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = mall_common::config::or_exit("mall-product", Settings::from_env());
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
            let app = mall_product::build(settings).await?;
            app.run_until_stopped(mall_common::shutdown::signal()).await
        }
        Command::Seed { skus } => {
            let db = Db::connect_lazy(&settings.platform.database, "mall-product-seed")?;
            db.migrate(&mall_product::startup::MIGRATIONS).await?;
            let started = std::time::Instant::now();
            match seed(&db, skus).await? {
                Seeded::AlreadySeeded(n) => println!("the catalog already has {n} SKUs; nothing to do"),
                Seeded::Written {
                    categories,
                    brands,
                    spus,
                    skus,
                } => {
                    println!(
                        "seeded {categories} categories, {brands} brands, {spus} SPUs, {skus} SKUs in {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    // The ids went to the database alone: the bloom filters in Redis (if an
                    // instance built them before) must be built again to hold them.
                    let redis = mall_common::redis::Redis::connect_lazy(&settings.platform.redis)?;
                    mall_product::store::bloom::Bloom::forget_all(&redis).await?;
                }
            }
            Ok(())
        }
    }
}
