//! The `mall-inventory` process: settings from the environment, telemetry, serve until SIGTERM.

use mall_inventory::{Application, Settings};

// glibc's allocator contends on its arena locks under many small per-request allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = mall_common::config::or_exit("mall-inventory", Settings::from_env());
    let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(mall_common::shutdown::signal()).await
}
