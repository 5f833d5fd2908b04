//! The standard middleware stack keeps the error contract: every failure is JSON with a stable
//! code, nothing internal leaks, and limits answer before handlers run.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use mall_common::http::{Json, Query, StackSettings, standard_stack};
use serde::Deserialize;

#[derive(Deserialize, serde::Serialize)]
struct Item {
    quantity: u32,
}

#[derive(Deserialize)]
struct Page {
    #[allow(dead_code)]
    limit: u32,
}

async fn spawn() -> String {
    let routes = Router::new()
        .route("/echo", post(|Json(item): Json<Item>| async move { Json(item) }))
        .route("/page", get(|Query(_): Query<Page>| async { "ok" }))
        .route("/panic", get(panics))
        .route(
            "/slow",
            get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }),
        );
    let app = standard_stack(
        routes,
        &StackSettings {
            service: "stacktest",
            request_timeout: Duration::from_millis(300),
            body_limit: 1024,
            identity_key: mall_common::identity::IdentityKey::new(b"stack-test-secret"),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn code_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.expect("every error is JSON");
    (
        status,
        body["code"].as_str().unwrap_or_default().to_owned(),
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn bad_bodies_get_stable_codes() {
    let base = spawn().await;
    let c = reqwest::Client::new();
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut req = c.post(format!("{base}/echo")).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let ok = post(r#"{"quantity":2}"#, Some("application/json")).await.unwrap();
    assert_eq!(ok.status(), 200);

    let (status, code, _) = code_of(post("{not json", Some("application/json")).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "malformed_json"));
    let (status, code, _) = code_of(
        post(r#"{"quantity":-1}"#, Some("application/json"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "invalid_body"));
    let (status, code, _) = code_of(post(r#"{"quantity":1}"#, None).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));

    let big = format!(r#"{{"quantity":1,"pad":"{}"}}"#, "x".repeat(4096));
    let res = c
        .post(format!("{base}/echo"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (status, code, _) = code_of(res).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));

    // Without a Content-Length (chunked), the limit still holds while streaming.
    let (status, body) = raw_chunked_post(&base, "/echo", big.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");

    let (status, code, _) = code_of(c.get(format!("{base}/page?limit=-3")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
}

/// Sends `body` in two chunks with `Transfer-Encoding: chunked`; returns status and body text.
async fn raw_chunked_post(base: &str, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(body.len() / 2 + 1) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        // The server may answer 413 and close before the whole body is sent.
        if stream.write_all(chunk).await.is_err() || stream.write_all(b"\r\n").await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn panics_and_timeouts_are_json_and_leak_nothing() {
    let base = spawn().await;
    let c = reqwest::Client::new();
    let (status, code, message) = code_of(c.get(format!("{base}/panic")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (500, "internal"));
    assert!(!message.contains("secret-internal-detail"), "{message}");

    let started = std::time::Instant::now();
    let (status, code, _) = code_of(c.get(format!("{base}/slow")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (504, "timeout"));
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let base = spawn().await;
    let c = reqwest::Client::new();
    let res = c
        .get(format!("{base}/nowhere"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let (status, code, _) = code_of(res).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));

    let res = c.get(format!("{base}/nowhere")).send().await.unwrap();
    let made = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
}

async fn panics() -> &'static str {
    panic!("secret-internal-detail")
}
