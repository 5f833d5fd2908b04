//! The gateway on mall-common's HTTP/1.1 edge, spoken to over raw TCP: protocol errors get the JSON
//! error contract, keep-alive and pipelining keep requests apart, request bodies in every
//! framing reach the upstream, and nothing is ever answered out of step.

use std::time::Duration;

use mall_testkit::upstream::FakeUpstream;
use mall_testkit::{TestEnv, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{settings, spawn, token};

/// One answer read off a connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Reads one answer (a `Content-Length` body, or a body until close) from `stream`, whose
/// bytes read so far sit in `buf`; `head_only` for an answer to HEAD.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut closed = false;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut answer = Answer {
                status,
                head,
                body: Vec::new(),
            };
            let length = if head_only || status == 100 {
                Some(0)
            } else {
                answer
                    .header("content-length")
                    .map(|v| v.parse::<usize>().unwrap())
            };
            let start = end + 4;
            match length {
                Some(n) if buf.len() >= start + n => {
                    answer.body = buf[start..start + n].to_vec();
                    buf.drain(..start + n);
                    return answer;
                }
                None if closed => {
                    answer.body = buf[start..].to_vec();
                    buf.clear();
                    return answer;
                }
                _ => {}
            }
        }
        assert!(
            !closed,
            "the connection closed inside an answer: {:?}",
            String::from_utf8_lossy(buf)
        );
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        closed = n == 0;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A gateway in front of a product upstream and one for the other pools.
async fn gateway() -> (TestEnv, FakeUpstream, FakeUpstream, TestServer) {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let gw = spawn(&env, settings(&env, &[&product], &other, &[])).await;
    (env, product, other, gw)
}

/// Whether the gateway closes the connection (reads end) within a few seconds.
async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_it_cannot_take_get_json_errors_and_a_closed_connection() {
    let (_env, product, _other, gw) = gateway().await;

    let many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases = [
        ("GARBAGE\r\n\r\n".to_owned(), 400, "bad_request"),
        (
            "GET /api/products/1 HTTP/1.1\r\nbad header: 1\r\n\r\n".to_owned(),
            400,
            "bad_request",
        ),
        (
            "POST /api/products/1 HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_owned(),
            400,
            "bad_request",
        ),
        (
            "POST /api/products/1 HTTP/1.1\r\ncontent-length: -1\r\n\r\n".to_owned(),
            400,
            "bad_request",
        ),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9 * 1024)),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /api/products/1 HTTP/1.1\r\n{many}\r\n"),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
        assert_eq!(answer.status, status, "{request:.60}: {answer:?}");
        assert_eq!(answer.json()["code"], code, "{request:.60}");
        assert!(answer.header("x-request-id").is_some(), "{answer:?}");
        assert_eq!(answer.header("connection").as_deref(), Some("close"));
        assert!(
            closes(&mut stream).await,
            "{request:.60}: the connection is closed"
        );
    }
    assert_eq!(product.hits(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let (_env, product, _other, gw) = gateway().await;

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
    let (_env, product, _other, gw) = gateway().await;
    let admin = token("1", &["admin"]);

    // Chunked: decoded on the way in, streamed to the upstream; the connection closes after.
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
    assert_eq!(answer.header("connection").as_deref(), Some("close"));

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
