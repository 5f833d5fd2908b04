//! Hostile requests, sent as raw bytes: every head a front end and a back end could read two
//! ways is refused with a 4xx and a closed connection, and nothing of it reaches an instance.
//! Where the gateway writes the answer itself it is the JSON error contract; where hyper
//! refuses to parse, the status is hyper's.

use std::sync::atomic::Ordering;

use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{gateway_with_fakes, settings, spawn, token};
use crate::raw::{closes, raw_upstream, read_answer};

/// One hostile request: what it is, its bytes, the status it must get, and our error code when
/// the gateway writes the answer (`None`: hyper's own).
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn case(what: &'static str, bytes: impl Into<Vec<u8>>, status: u16, code: Option<&'static str>) -> Case {
    Case {
        what,
        bytes: bytes.into(),
        status,
        code,
    }
}

fn cases(admin: &str) -> Vec<Case> {
    let post = |framing: &str, body: &str| {
        format!(
            "POST /admin/products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n{framing}\r\n{body}"
        )
    };
    let many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let too_many: String = (0..200).map(|i| format!("x-h{i}: 1\r\n")).collect();
    vec![
        case(
            "two different Content-Lengths",
            post("content-length: 3\r\ncontent-length: 5\r\n", "abcde"),
            400,
            None,
        ),
        case(
            "Transfer-Encoding: chunked, identity",
            post(
                "transfer-encoding: chunked, identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
            None,
        ),
        case(
            "Transfer-Encoding : chunked",
            post("transfer-encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            400,
            None,
        ),
        case(
            "HTTP/1.0 with Transfer-Encoding",
            format!(
                "POST /admin/products HTTP/1.0\r\nhost: x\r\nauthorization: Bearer {admin}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            400,
            None,
        ),
        case(
            "obs-fold",
            "GET /api/products/1 HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n  b\r\n\r\n",
            400,
            None,
        ),
        case(
            "NUL in a header value",
            &b"GET /api/products/1 HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\n\r\n"[..],
            400,
            None,
        ),
        case(
            "chunk-size overflow",
            post(
                "transfer-encoding: chunked\r\n",
                "FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
            ),
            400,
            Some("bad_request"),
        ),
        case(
            "LF inside a chunk extension",
            post(
                "transfer-encoding: chunked\r\n",
                "5;ext=a\nb\r\nhello\r\n0\r\n\r\n",
            ),
            400,
            Some("bad_request"),
        ),
        case(
            "oversized request line",
            format!(
                "GET /api/products/{} HTTP/1.1\r\nhost: x\r\n\r\n",
                "a".repeat(9 * 1024)
            ),
            414,
            Some("uri_too_long"),
        ),
        case(
            "oversized header block",
            format!(
                "GET /api/products/1 HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "y".repeat(20 * 1024)
            ),
            431,
            Some("headers_too_large"),
        ),
        case(
            "more fields than the gateway passes on",
            format!("GET /api/products/1 HTTP/1.1\r\nhost: x\r\n{many}\r\n"),
            431,
            Some("headers_too_large"),
        ),
        case(
            "more fields than the gateway reads",
            format!("GET /api/products/1 HTTP/1.1\r\nhost: x\r\n{too_many}\r\n"),
            431,
            None,
        ),
        case(
            "absolute-form target naming another host",
            "GET http://internal.example/api/products/1 HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("bad_request"),
        ),
        case(
            "HTTP/1.1 without Host",
            "GET /api/products/1 HTTP/1.1\r\n\r\n",
            400,
            Some("bad_request"),
        ),
        case(
            "two Hosts",
            "GET /api/products/1 HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n",
            400,
            Some("bad_request"),
        ),
        case(
            "%2e%2e toward /internal",
            "GET /api/products/%2e%2e/%2e%2e/internal/prices HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("invalid_path"),
        ),
        case(
            "%2E%2e toward /internal",
            "GET /api/products/%2E%2e/%2E%2E/internal/prices HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("invalid_path"),
        ),
        case(
            "..%2f toward /internal",
            "GET /api/products/..%2f..%2finternal/prices HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("invalid_path"),
        ),
        case(
            "..%2F toward /internal",
            "GET /api/products/..%2F..%2Finternal/prices HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("invalid_path"),
        ),
        case(
            "// toward /internal",
            "GET /api/products//internal/prices HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("invalid_path"),
        ),
        case(
            "plain .. toward /internal",
            "GET /api/products/../../internal/prices HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            Some("invalid_path"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_hostile_heads_get_a_4xx_a_closed_connection_and_reach_no_instance() {
    let (_env, product, other, gw) = gateway_with_fakes().await;
    let admin = token("1", &["admin"]);
    let mut wrong = Vec::new();
    for case in cases(&admin) {
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        stream.write_all(&case.bytes).await.unwrap();
        let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
        let code = case
            .code
            .map(|_| answer.json()["code"].as_str().unwrap_or_default().to_owned());
        if answer.status != case.status || code.as_deref() != case.code || !closes(&mut stream).await {
            wrong.push(format!(
                "{}: got {} {:?}, want {} {:?} and a closed connection",
                case.what, answer.status, code, case.status, case.code
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        product.hits(),
        0,
        "nothing reached an instance: {:?}",
        product.seen()
    );
    assert_eq!(other.hits(), 0);
}

/// Two heads hyper reads as RFC 9112 lets a recipient, rather than refusing them: both
/// `Content-Length` and `Transfer-Encoding` (the coding wins, the length is dropped, and the
/// connection is closed after the answer, section 6.1), and bare LF line ends (section 2.2).
/// Neither can set a front end and a back end apart here, because nothing is passed on as it
/// came: the request goes upstream re-framed by hyper's client. What must hold: what follows the
/// body is never read as a request, and the instance sees one plainly framed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_reads_leniently_reach_the_instance_re_framed_and_smuggle_nothing() {
    let (_env, product, _other, gw) = gateway_with_fakes().await;
    let admin = token("1", &["admin"]);

    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let both = format!(
        "POST /admin/products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n\
         content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /internal/prices HTTP/1.1\r\nhost: x\r\n\r\n"
    );
    stream.write_all(both.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(
        (answer.status, answer.json()["body_bytes"].as_u64()),
        (200, Some(0))
    );
    assert!(closes(&mut stream).await, "closed after the answer");
    assert!(
        buf.is_empty(),
        "no second answer: {:?}",
        String::from_utf8_lossy(&buf)
    );

    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/products/1 HTTP/1.1\nhost: x\n\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(answer.status, 200);

    let seen = product.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/admin/products", "/api/products/1"], "nothing smuggled");
    assert!(
        !seen[0].headers.contains_key("content-length") || seen[0].headers["content-length"] == "0",
        "the dropped length is not passed on: {:?}",
        seen[0].headers
    );
    assert!(
        !seen[0].headers.contains_key("transfer-encoding")
            || seen[0].headers["transfer-encoding"] == "chunked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_inside_a_body_stays_body_bytes() {
    let (_env, product, _other, gw) = gateway_with_fakes().await;
    let admin = token("1", &["admin"]);
    let inner = "GET /internal/prices HTTP/1.1\r\nhost: x\r\n\r\n";
    for framing in [
        format!("content-length: {}\r\n\r\n{inner}", inner.len()),
        format!(
            "transfer-encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
            inner.len()
        ),
    ] {
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let request =
            format!("POST /admin/products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n{framing}");
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["body_bytes"], inner.len());
    }
    let paths: Vec<String> = product.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/admin/products", "/admin/products"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_with_both_framings_is_not_followed_by_reuse_of_its_connection() {
    let env = TestEnv::new().await;
    let other = FakeUpstream::start("other").await;
    // Every answer carries both `Transfer-Encoding` and `Content-Length`.
    static ANSWERS: [(&str, &str); 1] = [(
        "/api/products/1",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )];
    let (url, accepted) = raw_upstream(&ANSWERS).await;
    // No retries: each request is one upstream exchange.
    let mut s = settings(
        &env,
        &[],
        &other,
        &[
            ("MALL_UPSTREAM_PRODUCT", url.as_str()),
            ("MALL_GW_MAX_RETRIES", "0"),
        ],
    );
    // No health checks on this connection count: one a minute.
    s.gateway.health.interval = std::time::Duration::from_secs(60);
    let gw = spawn(&env, s).await;
    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..3 {
        let res = gw.client().get(gw.url("/api/products/1")).send().await.unwrap();
        assert_eq!(res.status(), 502, "an answer framed two ways is refused");
        let err: serde_json::Value = res.json().await.unwrap();
        assert_eq!(err["code"], "bad_gateway");
    }
    // Reuse would need fewer; a health check may add one of its own.
    let opened = accepted.load(Ordering::SeqCst) - before;
    assert!(opened >= 3, "each request on a connection of its own: {opened}");
}
