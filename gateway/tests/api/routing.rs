//! Routing by prefix, header hygiene, streaming bodies.

use mall_common::identity;
use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;

use crate::helpers::{get, settings, spawn, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_pool_of_their_prefix_and_internal_paths_are_never_routed() {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let gw = spawn(&env, settings(&env, &[&product], &other, &[])).await;

    let (status, body) = get(&gw, "/api/products/12?x=1").await;
    assert_eq!((status, body["instance"].as_str()), (200, Some("product")));
    assert_eq!(body["path"], "/api/products/12?x=1");
    let (status, body) = get(&gw, "/api/stock/7").await;
    assert_eq!((status, body["instance"].as_str()), (200, Some("other")));
    let (status, _) = get(&gw, "/api/products").await;
    assert_eq!(status, 200);

    for path in [
        "/internal/reservations",
        "/internal",
        "/api/productsX",
        "/nowhere",
    ] {
        let (status, body) = get(&gw, path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    assert_eq!(product.hits() + other.hits(), 3, "404s never reach an upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_forged_identity_headers_never_reach_a_service() {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let gw = spawn(&env, settings(&env, &[&product], &other, &[])).await;

    let res = gw
        .client()
        .get(gw.url("/api/products/1"))
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("x-mall-identity", format!("v1;{};1;admin;999", "0".repeat(64)))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = product.seen().pop().unwrap();
    assert!(!seen.headers.contains_key("x-hop"));
    assert!(
        !seen.headers.contains_key("x-mall-identity"),
        "a client-sent identity was forwarded"
    );
    // The client's own forwarding fields are replaced, not passed on beside the gateway's.
    for (name, value) in [
        ("x-forwarded-for", "127.0.0.1".to_owned()),
        ("x-forwarded-proto", "http".to_owned()),
        // reqwest's Host: the gateway's address.
        (
            "x-forwarded-host",
            gw.url("").trim_start_matches("http://").to_owned(),
        ),
    ] {
        let sent: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(sent, [value.as_str()], "{name}");
    }
    assert!(seen.headers.contains_key("x-request-id"));

    // With a token, the service gets the gateway's signed identity, and it verifies.
    let res = gw
        .client()
        .get(gw.url("/api/orders"))
        .bearer_auth(token("42", &["buyer"]))
        .header("x-mall-identity", format!("v1;{};1;admin;999", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = other.seen().pop().unwrap();
    assert!(!seen.headers.contains_key("authorization"));
    assert_eq!(
        seen.headers.get_all("x-mall-identity").iter().count(),
        1,
        "only the gateway's own identity header"
    );
    let now = mall_gateway::auth::now_secs();
    let who = identity::verify(
        &seen.headers,
        mall_gateway::config::DEV_INTERNAL_SECRET.as_bytes(),
        now,
    )
    .expect("signed by the gateway")
    .expect("an identity");
    assert_eq!(who.user_id, "42");
    assert_eq!(who.roles, ["buyer"]);
    // The same headers with another key (a forger without the secret) do not verify.
    assert!(identity::verify(&seen.headers, b"guess", now).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_and_oversized_ones_get_413() {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let gw = spawn(&env, settings(&env, &[&product], &other, &[])).await;
    let admin = token("1", &["admin"]);

    let body = vec![b'x'; 700 * 1024];
    let res = gw
        .client()
        .post(gw.url("/admin/products"))
        .bearer_auth(&admin)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echoed["body_bytes"], 700 * 1024);

    // The limit answers from Content-Length before any body is read. Only the head is sent: a
    // client still writing 2 MB would race the gateway closing the connection after its 413.
    let (status, text) = head_only(
        gw.addr(),
        &format!("POST /admin/products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ncontent-length: 2097152\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");

    let res = gw
        .client()
        .get(gw.url("/api/products/1"))
        .header("x-big", "y".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["code"], "headers_too_large");
    assert_eq!(product.hits(), 1, "rejected requests never reach the upstream");
}

/// Sends a raw request head and returns the status and the whole answer.
async fn head_only(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
