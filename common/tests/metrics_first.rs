//! Its own test binary, so its own process: nothing has installed the metrics recorder before
//! `Platform::start`, as in a service's process (the other test binaries share theirs with
//! services that built their health routes first, which hid the bug this guards against).

use mall_common::config::Vars;
use mall_common::platform::{HttpThreads, Needs, Platform, PlatformSettings, ServiceDefaults};

const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "metricsfirst",
    port: 0,
    schema: "metricsfirst",
    http_threads: HttpThreads::Shared,
};

#[tokio::test]
async fn handles_taken_right_after_start_are_exported() {
    let settings =
        PlatformSettings::from_vars(&Vars::from_pairs::<&str, &str>([]), &DEFAULTS).expect("defaults parse");
    let _platform = Platform::start(DEFAULTS.name, settings, Needs::default())
        .await
        .expect("starts with no dependencies");
    // What a service does between `Platform::start` and building its routes.
    let early = metrics::counter!("metricsfirst_early_total");
    early.increment(3);
    let text = mall_common::health::prometheus().render();
    assert!(
        text.lines().any(|l| l == "metricsfirst_early_total 3"),
        "the early handle's count is not exported:\n{text}"
    );
}
