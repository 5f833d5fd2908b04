//! Small HTTP upstreams for gateway tests that answer, delay, fail, or die on command.
//!
//! Each answers `/healthz` (200, or 503 when marked unhealthy, late when told to) and every
//! other path with 200 and a JSON echo `{instance, method, path, body_bytes}`, after
//! an optional delay or with a forced status, or at once without reading the body. It reads as many header fields as a mall service
//! does, and records every request's headers. [`FakeUpstream::kill`] drops the listener and every open
//! connection at once, like a crashed process; [`FakeUpstream::restart`] binds the same port again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::task::JoinHandle;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
}

struct Knobs {
    name: String,
    hits: AtomicU64,
    delay_ms: AtomicU64,
    health_delay_ms: AtomicU64,
    fail_status: AtomicU16,
    early_status: AtomicU16,
    healthy: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

/// A controllable upstream on a loopback port.
pub struct FakeUpstream {
    addr: SocketAddr,
    knobs: Arc<Knobs>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl FakeUpstream {
    /// Starts an upstream called `name` on a free port.
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let knobs = Arc::new(Knobs {
            name: name.to_owned(),
            hits: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            health_delay_ms: AtomicU64::new(0),
            fail_status: AtomicU16::new(0),
            early_status: AtomicU16::new(0),
            healthy: AtomicBool::new(true),
            seen: Mutex::new(Vec::new()),
        });
        let task = serve(listener, knobs.clone());
        Self {
            addr,
            knobs,
            task: Mutex::new(Some(task)),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered (health checks excluded).
    pub fn hits(&self) -> u64 {
        self.knobs.hits.load(Ordering::SeqCst)
    }

    /// Requests seen so far (health checks excluded).
    pub fn seen(&self) -> Vec<Seen> {
        self.knobs.seen.lock().expect("seen").clone()
    }

    /// Delays every answer (health checks excluded).
    pub fn set_delay(&self, delay: Duration) {
        self.knobs.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Delays `/healthz` answers only (an instance so busy its health check waits behind traffic).
    pub fn set_health_delay(&self, delay: Duration) {
        self.knobs.health_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Answers every request (health checks excluded) with `status`, or normally with `None`.
    pub fn set_failing(&self, status: Option<u16>) {
        self.knobs
            .fail_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Answers every request (health checks excluded) with `status` at once, without reading
    /// its body, as a handler refusing an upload does; `None` reads bodies again.
    pub fn set_early_answer(&self, status: Option<u16>) {
        self.knobs
            .early_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Makes `/healthz` answer 503 (`false`) or 200 (`true`).
    pub fn set_healthy(&self, healthy: bool) {
        self.knobs.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Drops the listener and every open connection, like a crash.
    pub fn kill(&self) {
        if let Some(task) = self.task.lock().expect("task").take() {
            task.abort();
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&self) {
        self.kill();
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        *self.task.lock().expect("task") = Some(serve(listener, self.knobs.clone()));
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(listener: tokio::net::TcpListener, knobs: Arc<Knobs>) -> JoinHandle<()> {
    let app = Router::new().fallback(handle).with_state(knobs);
    tokio::spawn(async move {
        // Connections live in this task's JoinSet: aborting the task drops them all.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        builder.http1().max_headers(mall_common::server::MAX_HEADER_FIELDS);
                        let _ = builder.serve_connection(TokioIo::new(mall_common::server::Lingering::new(stream)), service).await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn handle(State(knobs): State<Arc<Knobs>>, req: Request<Body>) -> Response {
    if req.uri().path() == "/healthz" {
        let delay = knobs.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        return if knobs.healthy.load(Ordering::SeqCst) {
            StatusCode::OK.into_response()
        } else {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        };
    }
    knobs.hits.fetch_add(1, Ordering::SeqCst);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    knobs.seen.lock().expect("seen").push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        headers: req.headers().clone(),
    });
    let delay = knobs.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let early = knobs.early_status.load(Ordering::SeqCst);
    if early != 0 {
        let status = StatusCode::from_u16(early).unwrap_or(StatusCode::PAYLOAD_TOO_LARGE);
        let body = serde_json::json!({"code": "payload_too_large", "message": "refused unread"});
        return (status, axum::Json(body)).into_response();
    }
    let method = req.method().to_string();
    let body = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024)
        .await
        .map(|b| b.len())
        .unwrap_or(0);
    let fail = knobs.fail_status.load(Ordering::SeqCst);
    let status = if fail == 0 {
        StatusCode::OK
    } else {
        StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    };
    (
        status,
        axum::Json(serde_json::json!({
            "instance": knobs.name,
            "method": method,
            "path": path,
            "body_bytes": body,
        })),
    )
        .into_response()
}
