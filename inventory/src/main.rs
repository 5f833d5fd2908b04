//! The `mall-inventory` process: settings from the environment, telemetry, serve until SIGTERM.

use mall_inventory::Settings;

// mimalloc as the C `malloc`, linked in by the `use` (why: mall-gateway's main.rs).
use mimalloc as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = mall_common::config::or_exit("mall-inventory", Settings::from_env());
    let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
    let app = mall_inventory::build(settings).await?;
    app.run_until_stopped(mall_common::shutdown::signal()).await
}
