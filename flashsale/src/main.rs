//! The `mall-flashsale` process: settings from the environment, telemetry, serve until SIGTERM.

use mall_flashsale::Settings;

// mimalloc as the C `malloc`, linked in by the `use` (why: mall-gateway's main.rs).
use mimalloc as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = mall_common::config::or_exit("mall-flashsale", Settings::from_env());
    let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
    let app = mall_flashsale::build(settings).await?;
    app.run_until_stopped(mall_common::shutdown::signal()).await
}
