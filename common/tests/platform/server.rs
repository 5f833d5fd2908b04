//! `MALL_HTTP_THREADS`: requests are served on the serving threads it asks for (or on the shared
//! runtime with 0), and a stop ends those threads.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mall_common::config::Vars;
use mall_common::platform::{HttpThreads, Needs, Platform, PlatformSettings, ServiceDefaults};
use mall_common::server::Server;
use mall_testkit::{TestEnv, TestServer, eventually};

/// A short name: thread names are cut to 15 bytes in `/proc`.
const SRV: ServiceDefaults = ServiceDefaults {
    name: "srv",
    port: 0,
    schema: "srv",
    http_threads: HttpThreads::PerCore,
};

/// Serves `/thread` (the name of the thread that ran the handler) with `threads` serving threads.
async fn serve(env: &TestEnv, threads: usize) -> TestServer {
    let mut settings = env.platform_settings(&SRV);
    settings.http.threads = threads;
    let platform = Platform::start("srv", settings, Needs::default()).await.unwrap();
    let routes = Router::new().route(
        "/thread",
        get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
    );
    env.start(Server::bind(platform, routes).await.unwrap()).await
}

/// Thread names seen by `connections` fresh connections.
async fn threads_seen(app: &TestServer, connections: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..connections {
        // A client per request: a new connection each time, so any serving thread may take it.
        let client = reqwest::Client::new();
        let res = client.get(app.url("/thread")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        seen.insert(res.text().await.unwrap());
    }
    seen
}

fn serving_threads_alive() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("srv-http-"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_on_the_serving_threads_and_stopping_ends_them() {
    let env = TestEnv::new().await;
    let app = serve(&env, 2).await;
    let seen = threads_seen(&app, 20).await;
    assert!(!seen.is_empty());
    for name in &seen {
        assert!(name == "srv-http-0" || name == "srv-http-1", "served on {name:?}");
    }
    assert_eq!(serving_threads_alive(), 2);
    app.stop().await.expect("clean stop");
    eventually(Duration::from_secs(5), "the serving threads end", || async {
        match serving_threads_alive() {
            0 => Ok(()),
            n => Err(format!("{n} still running")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_threads_serve_on_the_shared_runtime() {
    let env = TestEnv::new().await;
    let app = serve(&env, 0).await;
    for name in threads_seen(&app, 5).await {
        assert!(!name.starts_with("srv-http-"), "served on {name:?}");
    }
    app.stop().await.expect("clean stop");
}

#[test]
fn the_thread_count_defaults_per_service_and_is_validated() {
    let threads = |defaults: &ServiceDefaults, vars: &[(&str, &str)]| {
        PlatformSettings::from_vars(&Vars::from_pairs(vars.iter().copied()), defaults).map(|s| s.http.threads)
    };
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(threads(&SRV, &[]).unwrap(), cores);
    assert_eq!(threads(&crate::DEFAULTS, &[]).unwrap(), 0);
    assert_eq!(
        threads(&crate::DEFAULTS, &[("MALL_HTTP_THREADS", "3")]).unwrap(),
        3
    );
    let err = threads(&SRV, &[("MALL_HTTP_THREADS", "many")]).unwrap_err();
    assert_eq!(err.var, "MALL_HTTP_THREADS");
}
