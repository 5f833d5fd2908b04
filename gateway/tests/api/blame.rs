//! Faults are blamed on whoever caused them: a client that aborts, trickles or sends too much
//! gets its 4xx and never counts toward the breaker or passive ejection; and a request the
//! gateway accepts is never refused by an instance's parser.

use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{gateway_with_fakes, metric, settings, spawn, token};
use crate::raw::{closes, read_answer};

/// The head of an anonymous payment callback (public route to the order pool) with `framing`.
fn callback_head(framing: &str) -> String {
    format!(
        "POST /api/payments/callback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_abort_trickle_or_send_too_much_never_count_against_the_pool() {
    let env = TestEnv::new().await;
    let (product, order_a, order_b) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("order-a").await,
        FakeUpstream::start("order-b").await,
    );
    let orders = format!("{},{}", order_a.url(), order_b.url());
    let gw = spawn(
        &env,
        settings(
            &env,
            &[&product],
            &order_a,
            &[
                ("MALL_UPSTREAM_ORDER", orders.as_str()),
                ("MALL_GW_BREAKER_MIN_CALLS", "5"),
                ("MALL_GW_BREAKER_WINDOW", "10"),
                ("MALL_GW_EJECT_AFTER", "3"),
                ("MALL_GW_BODY_TIMEOUT", "300ms"),
            ],
        ),
    )
    .await;

    for _ in 0..5 {
        // Aborted inside a small body: read before anything goes upstream, then gone.
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let aborted = callback_head("transfer-encoding: chunked\r\n") + "5\r\nhel";
        stream.write_all(aborted.as_bytes()).await.unwrap();
        drop(stream);

        // Trickled: the body stops arriving; 408 at the body timeout.
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let trickled = callback_head("transfer-encoding: chunked\r\n") + "5\r\nhello\r\n";
        stream.write_all(trickled.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
        assert_eq!(
            (answer.status, answer.json()["code"].as_str()),
            (408, Some("request_timeout")),
            "{answer:?}"
        );

        // Aborted inside a streamed body (over 64 KiB): the instance saw the head, the client
        // broke the body off.
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let head = callback_head("content-length: 300000\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![b'x'; 100_000]).await.unwrap();
        drop(stream);

        // Too much: 10 MB chunked against the 1 MB limit.
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let head = callback_head("transfer-encoding: chunked\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let chunk = format!("100000\r\n{}\r\n", "y".repeat(0x100000));
            for _ in 0..10 {
                if write.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = write.write_all(b"0\r\n\r\n").await;
        });
        let mut buf = Vec::new();
        let answer = crate::raw::read_answer_from(&mut read, &mut buf).await;
        assert_eq!(
            (answer.status, answer.json()["code"].as_str()),
            (413, Some("payload_too_large")),
            "{answer:?}"
        );
        writer.abort();

        // And the aborted small body's connection is closed without an answer anyone reads.
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        stream
            .write_all((callback_head("content-length: 10\r\n") + "abc").as_bytes())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        assert!(closes(&mut stream).await);
    }

    // 25 broken requests: had they counted, the breaker (5 calls, half failing) would be open and
    // the instances (3 failures in a row) out of rotation.
    let user = token("42", &[]);
    for _ in 0..5 {
        let res = gw
            .client()
            .get(gw.url("/api/orders"))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "shoppers are still served");
    }
    for order in [&order_a, &order_b] {
        let instance = order.url().trim_start_matches("http://").to_owned();
        let labels = [("pool", "order"), ("upstream", instance.as_str())];
        assert_eq!(
            metric(&gw, "gateway_upstream_in_rotation", &labels).await,
            1.0,
            "{instance} not ejected"
        );
        let errors = [
            ("pool", "order"),
            ("upstream", instance.as_str()),
            ("status", "error"),
        ];
        assert_eq!(
            metric(&gw, "gateway_upstream_requests_total", &errors).await,
            0.0,
            "{instance} not blamed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_as_many_fields_as_the_gateway_takes_is_read_by_the_instance() {
    let (_env, product, _other, gw) = gateway_with_fakes().await;
    // 100 fields with Host: the gateway's limit; it adds its own on the way.
    let fields: String = (0..99).map(|i| format!("x-f{i}: {i}\r\n")).collect();
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(format!("GET /api/products/1 HTTP/1.1\r\nhost: x\r\n{fields}\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(product.seen()[0].headers["x-f98"], "98");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_early_answer_to_a_streamed_body_reaches_the_client() {
    let (_env, _product, order, gw) = gateway_with_fakes().await;
    order.set_early_answer(Some(413));
    // Over 64 KiB the gateway streams the body on; the instance answers after the head, never
    // reading it. Its answer must reach the client every time, not a 502 for a reset connection.
    for round in 0..20 {
        let framing = if round % 2 == 0 {
            "content-length: 300000\r\n"
        } else {
            "transfer-encoding: chunked\r\n"
        };
        let stream = TcpStream::connect(gw.addr()).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let chunked = round % 2 == 1;
        let writer = tokio::spawn(async move {
            write.write_all(callback_head(framing).as_bytes()).await?;
            for _ in 0..3 {
                if chunked {
                    write.write_all(b"186a0\r\n").await?;
                }
                write.write_all(&[b'x'; 100_000]).await?;
                if chunked {
                    write.write_all(b"\r\n").await?;
                }
            }
            if chunked {
                write.write_all(b"0\r\n\r\n").await?;
            }
            Ok::<_, std::io::Error>(write)
        });
        let answer = crate::raw::read_answer_from(&mut read, &mut Vec::new()).await;
        assert_eq!(
            (answer.status, answer.json()["message"].as_str()),
            (413, Some("refused unread")),
            "round {round}: {answer:?}"
        );
        writer.abort();
    }
}
