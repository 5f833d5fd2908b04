//! `MALL_HTTP_THREADS`: requests are served on the serving threads it asks for (or on the shared
//! runtime with 0), each thread talks to Redis over its own connection, and a stop ends them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mall_common::config::Vars;
use mall_common::platform::{HttpThreads, Needs, Platform, PlatformSettings, ServiceDefaults};
use mall_common::redis::{Redis, client};
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
    serve_as(env, "srv", threads).await
}

/// `serve` under another service name, so its threads are not counted as `srv`'s.
async fn serve_as(env: &TestEnv, service: &'static str, threads: usize) -> TestServer {
    let mut settings = env.platform_settings(&SRV);
    settings.http.threads = threads;
    let platform = Platform::start(service, settings, Needs::default())
        .await
        .unwrap();
    let routes = Router::new().route(
        "/thread",
        get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
    );
    env.start(Server::bind(platform, routes).await.unwrap()).await
}

/// How many of `connections` fresh connections each thread served.
async fn connections_by_thread(app: &TestServer, connections: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..connections {
        // A client per request: a new connection each time, so any serving thread may take it.
        let client = reqwest::Client::new();
        let res = client.get(app.url("/thread")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        *seen.entry(res.text().await.unwrap()).or_default() += 1;
    }
    seen
}

/// Thread names seen by `connections` fresh connections.
async fn threads_seen(app: &TestServer, connections: usize) -> BTreeSet<String> {
    connections_by_thread(app, connections)
        .await
        .into_keys()
        .collect()
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
async fn connections_are_dealt_to_the_serving_threads_in_turn() {
    let env = TestEnv::new().await;
    // Named apart from `srv`: another test counts the `srv-http-*` threads of this process.
    let app = serve_as(&env, "deal", 3).await;
    // Before, every thread accepted from the one socket and whichever ran first could take them
    // all; dealt in turn, twelve connections one after another are four per thread, exactly.
    let by_thread = connections_by_thread(&app, 12).await;
    let expected: BTreeMap<String, usize> = (0..3).map(|i| (format!("deal-http-{i}"), 4)).collect();
    assert_eq!(by_thread, expected);

    // Connections opened together, as a load generator opens them, are dealt evenly too.
    let clients: Vec<reqwest::Client> = (0..9).map(|_| reqwest::Client::new()).collect();
    let answers =
        futures_util::future::join_all(clients.iter().map(|client| client.get(app.url("/thread")).send()))
            .await;
    let mut together: BTreeMap<String, usize> = BTreeMap::new();
    for res in answers {
        let res = res.unwrap();
        assert_eq!(res.status(), 200);
        *together.entry(res.text().await.unwrap()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = (0..3).map(|i| (format!("deal-http-{i}"), 3)).collect();
    assert_eq!(together, expected);
    app.stop().await.expect("clean stop");
}

/// The Redis `CLIENT ID` of the connection `redis.conn()` gives here.
async fn client_id(redis: &Redis) -> i64 {
    let mut conn = redis.conn().await.unwrap();
    client::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_thread_talks_to_redis_over_its_own_connection() {
    let env = TestEnv::new().await;
    // Named apart from `srv`: the other test counts the `srv-http-*` threads of this process.
    let mut settings = env.platform_settings(&SRV);
    settings.http.threads = 2;
    let needs = Needs {
        redis: Some(vec![]),
        ..Needs::default()
    };
    let platform = Platform::start("rds", settings, needs).await.unwrap();
    let redis = platform.redis().unwrap().clone();
    let handler_redis = redis.clone();
    let routes = Router::new().route(
        "/redis",
        get(move || {
            let redis = handler_redis.clone();
            async move {
                let thread = std::thread::current().name().unwrap_or("").to_owned();
                format!("{thread} {}", client_id(&redis).await)
            }
        }),
    );
    let app = env.start(Server::bind(platform, routes).await.unwrap()).await;

    let mut by_thread: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for _ in 0..20 {
        let res = reqwest::Client::new()
            .get(app.url("/redis"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        let (thread, id) = text.split_once(' ').unwrap();
        by_thread
            .entry(thread.to_owned())
            .or_default()
            .insert(id.parse().unwrap());
    }
    let mut shared = BTreeSet::new();
    for _ in 0..6 {
        shared.insert(client_id(&redis).await);
    }
    for (thread, ids) in &by_thread {
        assert!(thread.starts_with("rds-http-"), "{thread}");
        assert_eq!(ids.len(), 1, "{thread} used one connection: {ids:?}");
        assert!(
            ids.is_disjoint(&shared),
            "{thread} has its own, not the process's {shared:?}"
        );
    }
    let all: BTreeSet<i64> = by_thread.values().flatten().copied().collect();
    assert_eq!(
        all.len(),
        by_thread.len(),
        "no two threads share one: {by_thread:?}"
    );
    app.stop().await.expect("clean stop");
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

/// Sends `raw` on a fresh connection and returns the whole answer (the server closes it).
async fn raw_answer(app: &TestServer, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of an answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_cannot_parse_get_its_status_and_a_closed_connection_on_both_kinds_of_runtime() {
    let env = TestEnv::new().await;
    for threads in [2, 0] {
        let app = serve(&env, threads).await;
        let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70 * 1024));
        let big_head = format!(
            "GET /thread HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "y".repeat(500 * 1024)
        );
        let fields: String = (0..200).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let too_many = format!("GET /thread HTTP/1.1\r\nhost: x\r\n{fields}\r\n");
        let cases: [(&[u8], u16); 6] = [
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /thread HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n", 400),
            (
                b"GET /thread HTTP/1.1\r\nhost: x\r\ncontent-length: ten\r\n\r\n",
                400,
            ),
            (long_uri.as_bytes(), 414),
            (big_head.as_bytes(), 431),
            (too_many.as_bytes(), 431),
        ];
        for (raw, status) in cases {
            // `raw_answer` reads until the server closes the connection.
            let answer = raw_answer(&app, raw).await;
            assert_eq!(status_of(&answer), status, "{threads} threads: {answer:.200}");
        }
        // As many fields as the gateway passes on, plus the ones it adds, are read.
        let fields: String = (0..110).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let answer = raw_answer(
            &app,
            format!("GET /thread HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{fields}\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
}
