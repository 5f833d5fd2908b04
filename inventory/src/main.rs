//! The `mall-inventory` process: settings from the environment, telemetry, serve until SIGTERM.

use mall_inventory::Settings;

// glibc's allocator contends on its arena locks under many small per-request allocations:
// mimalloc replaces the C `malloc` (its `override` feature), which Rust's default allocator
// calls; the `use` links it in. Why not `#[global_allocator] MiMalloc`: see mall-gateway's main.rs
// (here it was about 2,800 instructions of every request, callgrind).
use mimalloc as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = mall_common::config::or_exit("mall-inventory", Settings::from_env());
    let _telemetry = mall_common::telemetry::init(&settings.telemetry)?;
    let app = mall_inventory::build(settings).await?;
    app.run_until_stopped(mall_common::shutdown::signal()).await
}
