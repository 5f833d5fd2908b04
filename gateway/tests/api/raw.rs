//! Speaking raw HTTP/1.1 over TCP, to the gateway and as an upstream: what a client library
//! would refuse to send or would tidy up is exactly what these tests need.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off a connection.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Reads one answer (a `Content-Length` body, or a body until close) from `stream`, whose
/// bytes read so far sit in `buf`; `head_only` for an answer to HEAD.
pub(crate) async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    read_answer_of(stream, buf, head_only).await
}

/// [`read_answer`] from the read half of a split connection.
pub(crate) async fn read_answer_from(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Answer {
    read_answer_of(stream, buf, false).await
}

async fn read_answer_of(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    head_only: bool,
) -> Answer {
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

/// Whether the gateway closes the connection (reads end) within a few seconds.
pub(crate) async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

/// Sends a raw request head and returns the status and the whole answer.
pub(crate) async fn head_only(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
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

/// An upstream that answers from a table of raw answers by path (any other path, `/healthz`
/// too, gets an empty 200), keeping each connection alive; returns its URL and the count of
/// connections it accepted.
pub(crate) async fn raw_upstream(
    answers: &'static [(&'static str, &'static str)],
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut line = head.split_whitespace();
                    let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    let answer = answers
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map_or("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", |(_, a)| *a);
                    let answer = if method == "HEAD" {
                        // The head alone, its length kept.
                        &answer[..answer.find("\r\n\r\n").unwrap() + 4]
                    } else {
                        answer
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}
