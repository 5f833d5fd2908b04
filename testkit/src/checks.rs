//! Assertions every mall process must pass: health, readiness that follows its dependencies,
//! Prometheus metrics, JSON errors, trace continuation, graceful shutdown and start-up
//! validation. [`platform_conformance!`](crate::platform_conformance) turns them into tests in
//! each service's test binary.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mall_common::platform::PlatformSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use crate::proxy::ChaosProxy;
use crate::server::TestServer;
use crate::spans::{Via, collector};

/// One sample of Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels as written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Parses the Prometheus text exposition format strictly enough to catch a broken exporter:
/// every non-comment line must be `name{labels} value`, and every sample's name must have been
/// declared by a `# TYPE` line (histogram/summary suffixes allowed).
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().ok_or(format!("line {n}: TYPE without a name"))?;
            let kind = parts.next().ok_or(format!("line {n}: TYPE without a kind"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("line {n}: unknown type {kind}"));
            }
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .ok_or(format!("line {n}: no value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or(format!("line {n}: unclosed labels: {line}"))?;
                let mut labels = Vec::new();
                for pair in split_labels(body) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or(format!("line {n}: bad label {pair:?}"))?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or(format!("line {n}: unquoted label value {v:?}"))?;
                    labels.push((k.to_owned(), v.to_owned()));
                }
                (name.to_owned(), labels)
            }
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        if !typed.iter().any(|t| t == &name || t == base) {
            return Err(format!("line {n}: {name} has no # TYPE line"));
        }
        samples.push(Sample { name, labels, value });
    }
    Ok(samples)
}

fn split_labels(body: &str) -> Vec<&str> {
    // Commas inside quoted values do not split.
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            '\\' if quoted => escaped = !escaped,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

/// `/healthz` is 200, `/readyz` is 200 with every check up, `/metrics` parses and counts the
/// requests just made, and unknown paths or methods get the JSON error body.
pub async fn serves_health_readiness_and_metrics(app: &TestServer, service: &str) {
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.expect("healthz json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], service);

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("readyz json");
    assert_eq!(body["status"], "ready", "{body}");
    let checks = body["checks"].as_object().expect("checks object");
    assert!(
        !checks.is_empty(),
        "a service must report its dependencies: {body}"
    );
    assert!(checks.values().all(|c| c["status"] == "up"), "{body}");

    let missing = app
        .client()
        .get(app.url("/no/such/route"))
        .header("x-request-id", "req-conformance-1")
        .send()
        .await
        .expect("GET unknown route");
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-request-id"], "req-conformance-1");
    let body: serde_json::Value = missing.json().await.expect("404 json");
    assert_eq!(body["code"], "not_found");

    let wrong_method = app
        .client()
        .delete(app.url("/healthz"))
        .send()
        .await
        .expect("DELETE /healthz");
    assert_eq!(wrong_method.status(), 405);
    let body: serde_json::Value = wrong_method.json().await.expect("405 json");
    assert_eq!(body["code"], "method_not_allowed");

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "metrics content type"
    );
    let samples =
        parse_prometheus(&metrics.text().await.expect("metrics text")).expect("valid Prometheus text");
    let healthz_count: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "http_server_requests_total"
                && s.labels.contains(&("service".into(), service.into()))
                && s.labels.contains(&("route".into(), "/healthz".into()))
                && s.labels.contains(&("status".into(), "200".into()))
        })
        .map(|s| s.value)
        .sum();
    assert!(healthz_count >= 1.0, "the /healthz request was not counted");
    assert!(
        samples
            .iter()
            .any(|s| s.name == "http_server_request_duration_seconds_bucket"),
        "latency histogram missing"
    );
}

/// The sum of a metric in `server`'s `/metrics` over the samples carrying every label given.
pub async fn metric_sum(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = server.get("/metrics").await.text().await.expect("metrics text");
    parse_prometheus(&text)
        .expect("valid Prometheus text")
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.contains(&((*k).into(), (*v).into())))
        })
        .map(|s| s.value)
        .sum()
}

/// Which setting a dependency's URL lives in.
pub fn dependency_url<'a>(settings: &'a mut PlatformSettings, dependency: &str) -> &'a mut Url {
    match dependency {
        "postgres" => &mut settings.database.url,
        "redis" => &mut settings.redis.url,
        "rabbitmq" => &mut settings.amqp.url,
        other => panic!("unknown dependency {other}"),
    }
}

/// With `dependency` reached through `proxy`: ready, then 503 naming it (and only it) while the
/// proxy is cut, then ready again once restored.
pub async fn readiness_follows(app: &TestServer, proxy: &ChaosProxy, dependency: &str) {
    app.wait_ready().await;
    proxy.cut();
    let body = app.wait_readyz(503).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"][dependency]["status"], "down", "{body}");
    assert!(body["checks"][dependency]["error"].is_string(), "{body}");
    for (name, check) in body["checks"].as_object().expect("checks") {
        if name != dependency {
            assert_eq!(check["status"], "up", "only {dependency} was cut: {body}");
        }
    }
    proxy.restore();
    let body = app.wait_readyz(200).await;
    assert_eq!(body["checks"][dependency]["status"], "up");
}

fn random_hex(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

/// A request carrying `traceparent` (and one carrying only B3) produces a server span of that
/// trace, child of the caller's span, received by both the OTLP and the Zipkin receiver.
pub async fn continues_the_callers_trace(app: &TestServer, service: &str) {
    let spans = collector();
    let (trace_id, parent) = (random_hex(32), random_hex(16));
    let res = app
        .client()
        .get(app.url("/healthz"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .expect("traced request");
    assert_eq!(res.status(), 200);

    for via in [Via::Otlp, Via::Zipkin] {
        let span = spans
            .wait_for(
                via,
                &trace_id,
                &format!("{via:?} server span of {service}"),
                |s| s.kind == "server" && s.attributes.get("service").map(String::as_str) == Some(service),
            )
            .await;
        assert_eq!(span.parent_span_id.as_deref(), Some(parent.as_str()), "{span:?}");
        assert_eq!(span.name, "GET /healthz");
        assert_eq!(
            span.attributes.get("http.route").map(String::as_str),
            Some("/healthz")
        );
    }

    let (b3_trace, b3_parent) = (random_hex(32), random_hex(16));
    let res = app
        .client()
        .get(app.url("/healthz"))
        .header("b3", format!("{b3_trace}-{b3_parent}-1"))
        .send()
        .await
        .expect("b3 request");
    assert_eq!(res.status(), 200);
    let span = spans
        .wait_for(Via::Zipkin, &b3_trace, "server span continuing a B3 trace", |s| {
            s.kind == "server"
        })
        .await;
    assert_eq!(span.parent_span_id.as_deref(), Some(b3_parent.as_str()));
}

/// With a dependency slowed through `proxy`, a `/readyz` in flight when shutdown starts still gets its
/// answer, new connections are refused afterwards, and the server stops cleanly.
pub async fn drains_in_flight_then_refuses(mut app: TestServer, proxy: &ChaosProxy) {
    app.wait_ready().await;
    proxy.set_delay(Duration::from_millis(400));
    let started = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(app.addr()).await.expect("connect");
    conn.write_all(b"GET /readyz HTTP/1.1\r\nhost: mall\r\n\r\n")
        .await
        .expect("send /readyz");
    // In flight means the server has taken the request off its socket. Traffic held at the
    // proxy is no sign of it: background jobs' queries go through the same proxy, and a
    // request still unread when shutdown begins is rightly dropped with its idle connection.
    let (server, client) = (app.addr(), conn.local_addr().expect("client address"));
    crate::eventually(
        Duration::from_secs(5),
        "the server has read the /readyz request",
        || async move {
            match unread_bytes(server, client) {
                Some(0) => Ok(()),
                other => Err(format!("unread bytes on the server's socket: {other:?}")),
            }
        },
    )
    .await;
    app.begin_shutdown();

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the connection closes after its answer")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        status == "200" || status == "503",
        "the in-flight request got an answer: {answer:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the request must have been in flight when shutdown began"
    );

    let addr = app.addr();
    crate::eventually(
        Duration::from_secs(5),
        "new connections are refused",
        || async move {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    proxy.set_delay(Duration::ZERO);
    app.stop().await.expect("clean stop");
}

/// Bytes waiting unread in the receive queue of the local IPv4 TCP socket `local` connected to
/// `remote` (Linux's `/proc/net/tcp`), or `None` if there is no such socket.
fn unread_bytes(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (local, remote) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        // `sl local_address rem_address st tx_queue:rx_queue ...`
        let mut fields = line.split_whitespace().skip(1);
        let (from, to, queues) = (fields.next()?, fields.next()?, fields.nth(1)?);
        if from != local || to != remote {
            return None;
        }
        u64::from_str_radix(queues.split_once(':')?.1, 16).ok()
    })
}

/// Runs `binary` with `vars` and returns (exit code, stderr); kills it after 10 s.
pub fn run_binary(binary: &str, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MALL_HTTP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn binary");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            return (None, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An unparsable port or a malformed URL stops the binary at once with exit code 2 and a message
/// naming the variable (and never printing a password).
pub fn rejects_bad_configuration(binary: &str) {
    let cases: [(&str, &str); 4] = [
        ("MALL_HTTP_ADDR", "127.0.0.1:notaport"),
        ("MALL_REDIS_URL", "not a url"),
        ("MALL_DATABASE_URL", "mysql://mall:hunter2@127.0.0.1/mall"),
        ("MALL_SHUTDOWN_TIMEOUT", "ten"),
    ];
    for (var, value) in cases {
        let (code, stderr) = run_binary(binary, &[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: expected exit 2, stderr: {stderr}");
        assert!(stderr.contains(var), "{var} not named in: {stderr}");
        assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    }
}

/// The binary allocates with mimalloc: it defines the C allocator's entry points itself
/// (mimalloc's `override` feature, linked in by a `use mimalloc as _;`) and exports them, so
/// Rust's default allocator and the C libraries' own `malloc` calls land in mimalloc. Without
/// the `use` nothing pulls the library in and glibc's allocator is back, silently; this is
/// where that shows. Reads the dynamic symbol table with `nm` (binutils, which linking needs).
pub fn allocates_with_mimalloc(binary: &str) {
    let out = Command::new("nm")
        .args(["--dynamic", "--defined-only", binary])
        .output()
        .expect("nm (binutils) runs");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let symbols = String::from_utf8_lossy(&out.stdout);
    for wanted in ["malloc", "free", "realloc", "calloc", "posix_memalign"] {
        assert!(
            symbols
                .lines()
                .any(|line| line.split_whitespace().nth(2) == Some(wanted) && line.contains(" T ")),
            "{binary} does not define {wanted}: the process would allocate with glibc, not mimalloc"
        );
    }
}

/// Generates the platform conformance tests for a service crate.
///
/// ```ignore
/// mall_testkit::platform_conformance! {
///     service: mall_product::Product, binary: "mall-product", dependencies: [postgres, redis, rabbitmq]
/// }
/// ```
#[macro_export]
macro_rules! platform_conformance {
    (service: $svc:path, binary: $bin:literal, dependencies: [$first:ident $(, $rest:ident)* $(,)?]) => {
        /// Defaults for everything, then the env's isolated platform settings and `tweak`.
        async fn __conformance_build(
            env: &$crate::TestEnv,
            tweak: impl FnOnce(&mut ::mall_common::platform::PlatformSettings),
        ) -> ::mall_common::server::Server {
            env.build::<$svc>(&[], |s| tweak(<$svc as ::mall_common::service::Service>::platform(s).0))
                .await
        }

        const __DEFAULTS: ::mall_common::platform::ServiceDefaults =
            <$svc as ::mall_common::service::Service>::DEFAULTS;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn serves_health_readiness_metrics_and_json_errors() {
            let env = $crate::TestEnv::new().await;
            let app = env.start(__conformance_build(&env, |_| {}).await).await;
            $crate::checks::serves_health_readiness_and_metrics(&app, __DEFAULTS.name).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_request_with_trace_context_produces_a_server_span_in_that_trace() {
            let env = $crate::TestEnv::new().await;
            $crate::collector();
            let app = env.start(__conformance_build(&env, |_| {}).await).await;
            $crate::checks::continues_the_callers_trace(&app, __DEFAULTS.name).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_connections() {
            let env = $crate::TestEnv::new().await;
            // The first dependency is slowed so /readyz is still running when shutdown begins.
            let dependency = stringify!($first);
            let mut target = env.platform_settings(&__DEFAULTS);
            let (proxy, url) =
                $crate::ChaosProxy::for_url($crate::checks::dependency_url(&mut target, dependency)).await;
            let server = __conformance_build(&env, |s| {
                *$crate::checks::dependency_url(s, dependency) = url;
            })
            .await;
            let app = env.start(server).await;
            $crate::checks::drains_in_flight_then_refuses(app, &proxy).await;
        }

        #[test]
        fn bad_configuration_stops_start_up_naming_the_variable() {
            $crate::checks::rejects_bad_configuration(env!(concat!("CARGO_BIN_EXE_", $bin)));
        }

        $crate::__readiness_test!($first);
        $( $crate::__readiness_test!($rest); )*
    };
}

/// One readiness test module per dependency (used by `platform_conformance!`).
#[doc(hidden)]
#[macro_export]
macro_rules! __readiness_test {
    ($dep:ident) => {
        mod $dep {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn readyz_reports_it_down_while_unreachable_and_recovers() {
                let env = $crate::TestEnv::new().await;
                let dependency = stringify!($dep);
                let mut target = env.platform_settings(&super::__DEFAULTS);
                let (proxy, url) =
                    $crate::ChaosProxy::for_url($crate::checks::dependency_url(&mut target, dependency))
                        .await;
                let server = super::__conformance_build(&env, |s| {
                    *$crate::checks::dependency_url(s, dependency) = url;
                })
                .await;
                let app = env.start(server).await;
                $crate::checks::readiness_follows(&app, &proxy, dependency).await;
            }
        }
    };
}

/// Sends every request at once (each on a task of its own); their statuses and JSON bodies
/// (`null` when not JSON), in order.
pub async fn send_all(
    requests: impl IntoIterator<Item = reqwest::RequestBuilder>,
) -> Vec<(u16, serde_json::Value)> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| {
            tokio::spawn(async move {
                let res = req.send().await.expect("request sent");
                let status = res.status().as_u16();
                (status, res.json().await.unwrap_or(serde_json::Value::Null))
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

/// Receives `quantity` units of `sku` at an inventory instance through its admin API.
pub async fn receive_stock(inventory: &TestServer, sku: i64, quantity: i64) {
    let url = inventory.url(&format!("/admin/stock/{sku}/receive"));
    let res = as_admin(inventory.client().post(url))
        .json(&serde_json::json!({ "quantity": quantity, "reason": "test delivery" }))
        .send()
        .await
        .expect("stock intake");
    assert_eq!(res.status(), 200, "stock intake of SKU {sku}");
}

/// As the development admin (user `1`, role `admin`), through [`signed_as`].
pub fn as_admin(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    signed_as(req, "1", &["admin"])
}

/// As `user` without roles, through [`signed_as`].
pub fn as_user(req: reqwest::RequestBuilder, user: &str) -> reqwest::RequestBuilder {
    signed_as(req, user, &[])
}

/// Adds the identity header the gateway would assert for `user` with `roles`, signed with the
/// development internal secret (what every test service runs with).
pub fn signed_as(req: reqwest::RequestBuilder, user: &str, roles: &[&str]) -> reqwest::RequestBuilder {
    let mut headers = http::HeaderMap::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    mall_common::identity::assert_identity(
        &mut headers,
        mall_common::platform::DEV_INTERNAL_SECRET.as_bytes(),
        &mall_common::identity::Identity {
            user_id: user.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        },
        now,
    )
    .expect("a test identity fits the header");
    req.headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_checked() {
        let good = "# TYPE a_total counter\na_total{x=\"1,2\",y=\"z\"} 3\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_sum 0.5\n";
        let samples = parse_prometheus(good).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels[0], ("x".into(), "1,2".into()));
        assert!(
            parse_prometheus("a_total 1\n").is_err(),
            "untyped sample accepted"
        );
        assert!(parse_prometheus("# TYPE a counter\na{x=1} 1\n").is_err());
        assert!(parse_prometheus("# TYPE a counter\na one\n").is_err());
    }
}
