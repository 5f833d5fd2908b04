//! Calling another mall service's `/internal/...` endpoints over HTTP: JSON in and out, the
//! trace context injected, and fail-over across the service's instances (round-robin start,
//! then the next instance when one does not answer).
//!
//! A peer answers with any status; only "no instance answered" is an error here, because what a
//! status means (409 out of stock, 404 unknown) is the caller's business.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

/// A peer call that got no answer from any instance.
#[derive(Debug, thiserror::Error)]
#[error("{service} unreachable: {reason}")]
pub struct Unreachable {
    /// The peer service.
    pub service: &'static str,
    /// The last failure.
    pub reason: String,
}

impl Unreachable {
    /// An answer that is not what the caller can use (the peer is broken for this call).
    pub fn unexpected(service: &'static str, status: u16, body: &Value) -> Self {
        Self {
            service,
            reason: format!("unexpected answer {status}: {body}"),
        }
    }
}

/// The instances of one peer service.
#[derive(Debug)]
pub struct Peer {
    service: &'static str,
    client: reqwest::Client,
    urls: Vec<Url>,
    next: AtomicUsize,
}

/// An HTTP client with the timeouts every peer call uses.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client")
}

impl Peer {
    /// `service`'s instances at `urls`, called through `client`.
    pub fn new(service: &'static str, client: reqwest::Client, urls: Vec<Url>) -> Self {
        Self {
            service,
            client,
            urls,
            next: AtomicUsize::new(0),
        }
    }

    /// The peer's name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// POSTs `body` as JSON to one instance after another until one answers.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), Unreachable> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// GETs `path` from one instance after another until one answers.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), Unreachable> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Unreachable> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::from("no instances configured");
        for i in 0..self.urls.len() {
            let base = &self.urls[(start + i) % self.urls.len()];
            let url = base.join(path).map_err(|e| Unreachable {
                service: self.service,
                reason: e.to_string(),
            })?;
            let mut headers = http::HeaderMap::new();
            crate::telemetry::propagation::inject_http(&mut headers);
            let mut req = self.client.request(method.clone(), url).headers(headers);
            if let Some(body) = body {
                req = req.json(body);
            }
            match req.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let body = res.json::<Value>().await.unwrap_or(Value::Null);
                    return Ok((status, body));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(Unreachable {
            service: self.service,
            reason: last,
        })
    }

    /// Parses an answer body into `T`, or calls the answer unusable.
    pub fn parse<T: DeserializeOwned>(&self, status: u16, body: Value) -> Result<T, Unreachable> {
        serde_json::from_value(body.clone()).map_err(|_| Unreachable::unexpected(self.service, status, &body))
    }
}
