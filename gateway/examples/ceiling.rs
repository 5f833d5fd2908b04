//! Where the gateway's time goes: the same proxy built up from the bare framework.
//!
//! Listens on 127.0.0.1:18095 and forwards `/api/...` to a mall-product on 127.0.0.1:18081
//! (start both as `loadtest/gateway.sh` does), in one of four shapes given as the argument:
//!
//! - `plain`: axum + the shared hyper-util client, nothing else (the framework's ceiling);
//! - `stack`: plus `mall_common::http::standard_stack` (request id, span, metrics, timeout...);
//! - `pool`: plus the gateway's upstream pool (balancer, breaker, retries, timeouts), no stack;
//! - `stack+pool`: both.
//!
//! ```text
//! cargo run --release -p mall-gateway --example ceiling -- plain &
//! wrk -t1 -c50 -d10s http://127.0.0.1:18095/api/products/0
//! ```
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use http::Request;
use mall_common::config::Vars;

/// The mall-product the benchmark starts.
const UPSTREAM: &str = "http://127.0.0.1:18081";

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let (use_stack, use_pool) = match mode.as_str() {
        "plain" => (false, false),
        "stack" => (true, false),
        "pool" => (false, true),
        "stack+pool" => (true, true),
        _ => {
            eprintln!("usage: ceiling <plain|stack|pool|stack+pool>");
            std::process::exit(2);
        }
    };
    let _guard =
        mall_common::telemetry::init(&mall_common::telemetry::TelemetrySettings::local("bare")).unwrap();
    let settings = mall_gateway::Settings::from_vars(&Vars::from_pairs(vec![(
        "MALL_UPSTREAM_PRODUCT".to_owned(),
        UPSTREAM.to_owned(),
    )]))
    .unwrap();
    let client = mall_gateway::upstream::http_client();
    let (pool, health) = mall_gateway::upstream::Pool::start(
        mall_gateway::routes::PoolName::Product,
        &settings.gateway.upstreams.product,
        &settings.gateway,
        client.clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    tokio::spawn(health);
    let mut app = Router::new().route(
        "/api/{*rest}",
        any(move |mut req: Request<Body>| {
            let client = client.clone();
            let pool = pool.clone();
            async move {
                let res = if use_pool {
                    pool.send(mall_gateway::upstream::Outbound::from_request(req))
                        .await
                        .map(|answer| answer.response)
                        .map_err(|e| e.to_string())
                } else {
                    let pq = req.uri().path_and_query().unwrap().clone();
                    *req.uri_mut() = format!("{UPSTREAM}{pq}").parse().unwrap();
                    client
                        .request(req)
                        .await
                        .map(|r| r.map(Body::new))
                        .map_err(|e| e.to_string())
                };
                match res {
                    Ok(res) => res,
                    Err(_) => http::Response::builder().status(502).body(Body::empty()).unwrap(),
                }
            }
        }),
    );
    if use_stack {
        app = mall_common::http::standard_stack(
            app,
            &mall_common::http::StackSettings {
                service: "bare",
                request_timeout: Duration::from_secs(30),
                body_limit: 1 << 20,
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:18095").await.unwrap();
    axum::serve(listener, app).await.unwrap();
}
