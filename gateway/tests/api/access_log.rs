//! The access log, read from a real `mall-gateway` process's stdout: one JSON line per request,
//! routed or not, with what an operator greps for.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;
use serde_json::Value;

/// Kills the gateway process even when an assertion fails.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next JSON log line for which `pick` is true, within `within`.
fn next_line(lines: &mpsc::Receiver<Value>, within: Duration, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if pick(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no such log line within {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxied_request_gets_one_json_access_line() {
    let env = TestEnv::new().await;
    let upstream = FakeUpstream::start("product").await;
    let prefix = format!("{}:", env.id());
    let child = Command::new(env!("CARGO_BIN_EXE_mall-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MALL_HTTP_ADDR", "127.0.0.1:0")
        .env("MALL_LOG_FORMAT", "json")
        .env("MALL_REDIS_URL", env.infra().redis_url.as_str())
        .env("MALL_REDIS_PREFIX", &prefix)
        .env("MALL_UPSTREAM_PRODUCT", upstream.url())
        .env("MALL_UPSTREAM_INVENTORY", upstream.url())
        .env("MALL_UPSTREAM_ORDER", upstream.url())
        .env("MALL_UPSTREAM_FLASHSALE", upstream.url())
        .env("MALL_GW_HEALTH_INTERVAL", "100ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mall-gateway");
    let mut gateway = Gateway(child);
    let stdout = gateway.0.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON: {line:?}: {e}"));
            if tx.send(parsed).is_err() {
                break;
            }
        }
    });

    let listening = next_line(&lines, Duration::from_secs(30), |l| l["message"] == "listening");
    let addr = listening["addr"]
        .as_str()
        .expect("listening names its address")
        .to_owned();
    let client = reqwest::Client::new();
    mall_testkit::eventually(Duration::from_secs(30), "the gateway is ready", || async {
        match client.get(format!("http://{addr}/readyz")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let res = client
        .get(format!("http://{addr}/api/products/7"))
        .header("x-request-id", "access-ok")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let res = client
        .get(format!("http://{addr}/api/products/7"))
        .header("x-request-id", "access-traced")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    // Requests no route takes get their line too.
    for (path, id) in [
        ("/nowhere", "access-unrouted"),
        ("/internal/x", "access-internal"),
    ] {
        let res = client
            .post(format!("http://{addr}{path}"))
            .header("x-request-id", id)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 404);
    }

    // Lines are written in 20 ms batches; a second is plenty for all of them.
    let access: Vec<Value> = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(1)).ok())
        .filter(|l| l["target"] == "mall_gateway::access")
        .collect();
    let only = |request_id: &str| {
        let found: Vec<&Value> = access.iter().filter(|l| l["request_id"] == request_id).collect();
        assert_eq!(found.len(), 1, "one line for {request_id}: {access:?}");
        // A line of its own, not one inside the request's span: that span's fields are the
        // line's own fields already.
        assert!(found[0].get("span").is_none(), "{}", found[0]);
        found[0].clone()
    };
    let line = only("access-ok");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/api/products");
    assert_eq!(line["pool"], "product");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], upstream.url().trim_start_matches("http://"));
    assert!(line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    // Milliseconds to the microsecond, not a float product's noise.
    let decimals = line["latency_ms"]
        .to_string()
        .split('.')
        .nth(1)
        .map_or(0, str::len);
    assert!(decimals <= 3, "{line}");
    let trace_id = line["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
    // A caller's trace is continued: the line names the caller's trace id.
    assert_eq!(
        only("access-traced")["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    for id in ["access-unrouted", "access-internal"] {
        let line = only(id);
        assert_eq!(line["method"], "POST");
        assert_eq!(line["route"], "unmatched");
        assert_eq!(line["status"], 404);
        assert_eq!(line["upstream"], "");
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
    }
    drop(gateway);
    assert_eq!(upstream.hits(), 2);
}
