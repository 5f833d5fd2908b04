//! The gateway's connections, spoken to over raw TCP and HTTP/2: keep-alive and pipelining keep
//! requests apart, idle connections close, request bodies in every framing reach the upstream,
//! and nothing is ever answered out of step.

use std::time::Duration;

use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{gateway_with_fakes, settings, spawn, token};
use crate::raw::{closes, read_answer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let (_env, product, _other, gw) = gateway_with_fakes().await;

    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    // Two requests in one write, then a HEAD (an answer without a body) and one more: each
    // answer must belong to its request, so nothing may be left over or taken from the next.
    stream
        .write_all(
            b"GET /api/products/1 HTTP/1.1\r\nhost: x\r\n\r\nGET /api/stock/2 HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let first = read_answer(&mut stream, &mut buf, false).await;
    let second = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(
        (first.status, first.json()["path"].as_str()),
        (200, Some("/api/products/1"))
    );
    assert_eq!(
        (second.status, second.json()["instance"].as_str()),
        (200, Some("other"))
    );
    stream
        .write_all(b"HEAD /api/products/3 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(head.status, 200);
    stream
        .write_all(b"GET /api/products/4 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let fourth = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(fourth.json()["path"], "/api/products/4", "{fourth:?}");
    assert!(
        buf.is_empty(),
        "nothing but the answers: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(product.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_for_the_idle_timeout_is_closed_and_a_busy_one_is_not() {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let mut s = settings(&env, &[&product], &other, &[]);
    s.platform.http.idle_timeout = Duration::from_millis(300);
    let gw = spawn(&env, s).await;

    // Requests 150 ms apart for twice the idle timeout: the connection is never idle that long.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        stream
            .write_all(format!("GET /api/products/{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(
            answer.status, 200,
            "request {i} on the kept connection: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then nothing: the gateway closes it, and without an answer (nothing was asked).
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed, silently: {read:?} {rest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after about the idle timeout, not {:?}",
        started.elapsed()
    );
    assert_eq!(product.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_reach_the_upstream_in_every_framing() {
    let (_env, product, _other, gw) = gateway_with_fakes().await;
    let admin = token("1", &["admin"]);

    // Chunked: decoded on the way in and passed on; the connection stays open.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /admin/products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"5\r\nhello\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"c;ext=1\r\n, streaming!\r\n0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["body_bytes"], 17);
    assert_ne!(answer.header("connection").as_deref(), Some("close"));

    // A chunked body framed wrongly is the client's fault: 400, not a 502.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"3\r\nabcXY0\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(
        (answer.status, answer.json()["code"].as_str()),
        (400, Some("bad_request")),
        "{answer:?}"
    );

    // `Expect: 100-continue`: the gateway says go ahead, then takes the body.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "PUT /admin/products/9 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let go_ahead = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(go_ahead.status, 100);
    stream.write_all(b"12345").await.unwrap();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(
        (answer.status, answer.json()["body_bytes"].as_u64()),
        (200, Some(5))
    );
    assert!(
        !product.seen().last().unwrap().headers.contains_key("expect"),
        "answered at the edge"
    );

    // HTTP/1.0: answered, then closed.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/products/1 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(answer.status, 200);
    assert!(closes(&mut stream).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served_on_the_same_port() {
    use http_body_util::BodyExt as _;
    let (_env, product, _other, gw) = gateway_with_fakes().await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("http://{}/api/products/{i}", gw.addr()))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.expect("an answer");
        assert_eq!(
            (res.status().as_u16(), res.version()),
            (200, http::Version::HTTP_2)
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed["path"], format!("/api/products/{i}"));
    }
    assert_eq!(product.hits(), 3, "three streams on one connection, each proxied");
}
