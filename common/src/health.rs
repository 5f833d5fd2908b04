//! `/healthz` (the process is alive), `/readyz` (its dependencies answer) and `/metrics`.
//!
//! Readiness is a list of named checks, one per dependency the service declared (and any a
//! service adds, such as the gateway's upstream pools). `/readyz` runs them concurrently, each
//! under a short timeout so a hung dependency cannot hang the probe, and answers 503 naming
//! every dependency that is down.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::{BoxFuture, join_all};
use http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

/// How long one readiness check may take before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The named dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckStatus {
    /// `up` or `down`.
    pub status: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyReport {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// One entry per dependency.
    pub checks: BTreeMap<&'static str, CheckStatus>,
}

impl ReadyReport {
    /// Whether every dependency is up.
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

impl Readiness {
    /// Adds a named check.
    pub fn add<F, Fut>(&mut self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as BoxFuture<'static, _>)));
    }

    /// Runs every check concurrently.
    pub async fn report(&self) -> ReadyReport {
        let results = join_all(self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(Ok(())) => CheckStatus {
                        status: "up",
                        error: None,
                    },
                    Ok(Err(e)) => CheckStatus {
                        status: "down",
                        error: Some(e),
                    },
                    Err(_) => CheckStatus {
                        status: "down",
                        error: Some(format!("no answer within {CHECK_TIMEOUT:?}")),
                    },
                };
                (*name, outcome)
            }
        }))
        .await;
        let ready = results.iter().all(|(_, s)| s.status == "up");
        ReadyReport {
            status: if ready { "ready" } else { "unavailable" },
            checks: results.into_iter().collect(),
        }
    }
}

/// A counter a service exports from its start: its name, help text, and the label whose every
/// value is exported (none for an unlabelled counter).
pub type CounterSpec<'a> = (
    &'static str,
    &'static str,
    Option<(&'static str, &'a [&'static str])>,
);

/// Exports each counter at zero with its help text. An alert on `increase()` sees a series'
/// first event only if the series existed before it, and a dashboard shows 0 rather than
/// "no data".
pub fn declare_counters(counters: &[CounterSpec<'_>]) {
    for &(name, help, label) in counters {
        metrics::describe_counter!(name, help);
        match label {
            None => metrics::counter!(name).increment(0),
            Some((key, values)) => {
                for &value in values {
                    metrics::counter!(name, key => value).increment(0);
                }
            }
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// One per process: in tests several services share it, so every metric carries a `service`
/// label instead of relying on a global one.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("static buckets are valid")
            .install_recorder()
            .expect("the metrics recorder is installed once per process");
        // Histograms are drained on render; the upkeep keeps memory flat if nobody scrapes.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawn metrics upkeep thread");
        handle
    })
}

#[derive(Clone)]
struct HealthState {
    service: &'static str,
    readiness: Readiness,
}

/// The routes `/healthz`, `/readyz` and `/metrics`.
pub fn routes(service: &'static str, readiness: Readiness) -> Router {
    prometheus();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { service, readiness })
}

async fn healthz(State(state): State<HealthState>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "service": state.service,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn readyz(State(state): State<HealthState>) -> Response {
    let report = state.readiness.report().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics_text() -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus().render(),
    )
        .into_response()
}
