//! Routing by prefix, header hygiene, streaming bodies.

use mall_common::identity;
use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;

use crate::helpers::{gateway_with_fakes, get, settings, spawn, token};
use crate::raw::{head_only, raw_upstream};

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
    // The client's own forwarding fields are replaced, not passed on beside the gateway's; its
    // Host (reqwest's: the gateway's address) is passed on once, in place of the instance's.
    for (name, value) in [
        ("x-forwarded-for", "127.0.0.1".to_owned()),
        ("x-forwarded-proto", "http".to_owned()),
        ("host", gw.url("").trim_start_matches("http://").to_owned()),
    ] {
        let sent: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(sent, [value.as_str()], "{name}");
    }
    assert!(
        !seen.headers.contains_key("x-forwarded-host"),
        "a client's x-forwarded-host is not evidence of anything"
    );
    let request_ids: Vec<_> = seen.headers.get_all("x-request-id").iter().collect();
    assert_eq!(
        request_ids,
        [res.headers()["x-request-id"].to_str().unwrap()],
        "one request id upstream, the one the client is answered with"
    );

    // A client's usable request id goes upstream as it is, once; an unusable one (too long) is
    // replaced by the gateway's, not sent beside it.
    for (sent, kept) in [("client-id-7", true), (&*"x".repeat(200), false)] {
        let res = gw
            .client()
            .get(gw.url("/api/products/1"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let answered = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(answered == sent, kept, "{sent}");
        let seen = product.seen().pop().unwrap();
        let upstream: Vec<_> = seen.headers.get_all("x-request-id").iter().collect();
        assert_eq!(upstream, [answered.as_str()], "{sent}");
    }

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_keeps_the_upstreams_fields_but_its_connections_own() {
    static ANSWERS: [(&str, &str); 2] = [
        (
            "/api/products/1",
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: one\r\nSet-Cookie: a=1\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
             Set-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "/api/products/2",
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 7\r\n\
             Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
             X-Request-Id: from-upstream\r\nContent-Length: 9\r\n\r\nslow down",
        ),
    ];
    let env = TestEnv::new().await;
    let other = FakeUpstream::start("other").await;
    let (product, _) = raw_upstream(&ANSWERS).await;
    let gw = spawn(
        &env,
        settings(&env, &[], &other, &[("MALL_UPSTREAM_PRODUCT", product.as_str())]),
    )
    .await;

    let res = gw.client().get(gw.url("/api/products/1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    assert_eq!(headers["x-upstream"], "one");
    assert_eq!(headers["content-type"], "text/plain");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "repeated fields pass as they came");
    for own in ["x-hop", "keep-alive"] {
        assert!(
            !headers.contains_key(own),
            "the upstream connection's {own} was passed on"
        );
    }
    assert_eq!(headers["content-length"], "5");
    assert_eq!(
        headers.get_all("x-request-id").iter().count(),
        1,
        "the gateway's id, once"
    );
    assert_eq!(res.text().await.unwrap(), "hello");

    // A HEAD answer keeps the length the upstream gave.
    let res = gw.client().head(gw.url("/api/products/1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], "5");
    assert_eq!(res.headers()["x-upstream"], "one");

    // A plain-text error gets the JSON error body, with the upstream's fields but its framing
    // and type, and its own request id rather than a second one.
    let res = gw.client().get(gw.url("/api/products/2")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "7");
    assert_eq!(res.headers()["content-type"], "application/json");
    let ids: Vec<_> = res.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids, ["from-upstream"]);
    let cookies: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "a repeated field survives the JSON body");
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(err["message"], "slow down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_document_is_asked_of_every_pool_and_a_missing_one_is_a_503_naming_it() {
    let (_env, product, other, gw) = gateway_with_fakes().await;

    let (status, doc) = get(&gw, "/openapi.json").await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")), "{doc}");
    assert_eq!(doc["info"]["title"], "mall");
    let asked = |u: &FakeUpstream| u.seen().iter().filter(|s| s.path == "/openapi.json").count();
    assert_eq!(
        (asked(&product), asked(&other)),
        (1, 3),
        "product once, the three other pools once each"
    );

    let page = gw.client().get(gw.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains(r#"<redoc spec-url="/openapi.json">"#)
    );

    product.set_failing(Some(500));
    let (status, body) = get(&gw, "/openapi.json").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("product"), "{body}");
}
