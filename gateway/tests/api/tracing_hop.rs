//! One trace across the gateway hop.

use mall_common::telemetry::propagation::Formats;
use mall_testkit::spans::Via;
use mall_testkit::upstream::FakeUpstream;
use mall_testkit::{TestEnv, TestServer, collector};

use crate::helpers::{settings, spawn};

/// `GET /api/skus/5` continuing the client span `b7ad6b7169203331` of `trace_id` (W3C).
async fn get_continuing(gw: &TestServer, trace_id: &str) -> reqwest::Response {
    gw.client()
        .get(gw.url("/api/skus/5"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_request_carries_the_trace_of_the_gateway_span() {
    let spans = collector();
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    let gw = spawn(&env, settings(&env, &[&up], &other, &[])).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_parent = "b7ad6b7169203331";
    let res = gw
        .client()
        .get(gw.url("/api/skus/5"))
        .header("traceparent", format!("00-{trace_id}-{client_parent}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("b3", format!("{trace_id}-{client_parent}-1"))
        .header("x-b3-traceid", trace_id)
        .header("x-b3-spanid", client_parent)
        .header("x-b3-sampled", "1")
        .header("x-b3-flags", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let seen = up.seen().pop().unwrap();
    for name in ["traceparent", "b3", "tracestate"] {
        assert_eq!(
            seen.headers.get_all(name).iter().count(),
            1,
            "one {name}: the client's was replaced"
        );
    }
    // The span continues the client's trace state.
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
    // By default (OTEL_PROPAGATORS=tracecontext,b3) the gateway writes no x-b3-* headers, and
    // the client's never pass.
    for name in ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"] {
        assert!(seen.headers.get(name).is_none(), "{name} was passed on");
    }
    let traceparent = seen.headers["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], trace_id, "the upstream continues the client's trace");
    let upstream_parent = parts[2];
    assert_ne!(
        upstream_parent, client_parent,
        "the gateway's own span sits in between"
    );
    let b3 = seen.headers["b3"].to_str().unwrap();
    assert!(
        b3.starts_with(&format!("{trace_id}-{upstream_parent}")),
        "B3 carries the same: {b3}"
    );

    // One span per request: the upstream's parent is the gateway's server span, whose own
    // parent is the client's span.
    let server_span = spans
        .wait_for(Via::Otlp, trace_id, "the gateway's server span", |s| {
            s.span_id == upstream_parent
        })
        .await;
    assert_eq!(server_span.kind, "server");
    assert_eq!(server_span.parent_span_id.as_deref(), Some(client_parent));
    let attribute = |name: &str| server_span.attributes.get(name).map(String::as_str);
    assert_eq!(attribute("http.response.status_code"), Some("200"));
    assert_eq!(attribute("http.route"), Some("/api/skus/{*rest}"));
    assert!(!server_span.error, "a 200 is no error");
    let gateway_spans = spans
        .spans(Via::Otlp, trace_id)
        .into_iter()
        .filter(|s| s.service == server_span.service)
        .count();
    assert_eq!(gateway_spans, 1, "one gateway span per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_formats_written_upstream_are_otel_propagators() {
    // Telemetry is process-wide: until it is installed the gateway's span is disabled and writes
    // no context, so this test failed whenever it ran before every other test that installs it.
    collector();
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    let mut settings = settings(&env, &[&up], &other, &[]);
    settings.telemetry.propagators = Formats::parse("b3multi").unwrap();
    let gw = spawn(&env, settings).await;

    // Not the other test's trace: both export to the same collector.
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let res = get_continuing(&gw, trace_id).await;
    assert_eq!(res.status(), 200);

    let seen = up.seen().pop().unwrap();
    assert_eq!(
        seen.headers["x-b3-traceid"], trace_id,
        "the W3C context goes on as B3"
    );
    let span_id = seen.headers["x-b3-spanid"].to_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, "b7ad6b7169203331",
        "the gateway's own span is the parent"
    );
    assert_eq!(seen.headers["x-b3-sampled"], "1");
    for name in ["traceparent", "tracestate", "b3"] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} was written or passed on"
        );
    }

    // Without a context from the client the gateway's span is a new root, written the same way.
    let res = gw.client().get(gw.url("/api/skus/5")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.seen().pop().unwrap();
    let fresh = seen.headers["x-b3-traceid"].to_str().unwrap();
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, trace_id);
    assert!(seen.headers.get("traceparent").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_is_an_error_span_with_its_status_code_in_both_formats() {
    let spans = collector();
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    let gw = spawn(&env, settings(&env, &[&up], &other, &[])).await;
    up.set_failing(Some(500));

    let trace_id = "7d3efb1b173fecfa8f0e4d2c1b8a9e21";
    let res = get_continuing(&gw, trace_id).await;
    assert_eq!(res.status(), 500);

    for via in [Via::Otlp, Via::Zipkin] {
        let server_span = spans
            .wait_for(via, trace_id, "the gateway's server span", |s| s.kind == "server")
            .await;
        assert_eq!(
            server_span
                .attributes
                .get("http.response.status_code")
                .map(String::as_str),
            Some("500"),
            "{via:?}"
        );
        assert!(server_span.error, "{via:?}: a 500 is an error span");
    }
}
