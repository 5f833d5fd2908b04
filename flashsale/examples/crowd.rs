//! The flash-crowd load generator of `loadtest/flashsale.sh`: every line of `--buyers` is one
//! distinct buyer (`<jwt> <purchase token>`); `--concurrency` workers on keep-alive connections
//! send each buyer's purchase once, and the client-side latency of every answer is kept by
//! status, so admitted (202) and rejected (409) requests are reported apart. oha and wrk send one
//! fixed request (or cannot tell latencies apart by status), which a crowd of distinct buyers
//! with their own tokens is not.
//!
//! Prints one JSON object: `{"seconds", "by_status": {"202": {"count", "p50_ms", "p99_ms"}, ...},
//! "errors", "order_ids"}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        arg("--url").ok_or_else(|| anyhow::anyhow!("--url http://127.0.0.1:8080/api/flashsale/purchase"))?;
    let buyers_file = arg("--buyers").ok_or_else(|| anyhow::anyhow!("--buyers FILE"))?;
    let session: i64 = arg("--session")
        .ok_or_else(|| anyhow::anyhow!("--session ID"))?
        .parse()?;
    let sku: i64 = arg("--sku").ok_or_else(|| anyhow::anyhow!("--sku ID"))?.parse()?;
    let concurrency: usize = arg("--concurrency").unwrap_or_else(|| "256".into()).parse()?;
    let buyers: Vec<(String, String)> = std::fs::read_to_string(&buyers_file)?
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let buyers = Arc::new(buyers);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, buyers, next) = (client.clone(), url.clone(), buyers.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen: Vec<(u16, u64, Option<String>)> = Vec::new();
                let mut errors = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((jwt, token)) = buyers.get(i) else { break };
                    let body = json!({ "session_id": session, "sku_id": sku, "quantity": 1, "token": token, "request_id": format!("crowd-{i}") });
                    let t = Instant::now();
                    match client.post(&url).bearer_auth(jwt).json(&body).send().await {
                        Ok(res) => {
                            let status = res.status().as_u16();
                            let text = res.text().await.unwrap_or_default();
                            let micros = t.elapsed().as_micros() as u64;
                            let order = (status == 202)
                                .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
                                .flatten()
                                .and_then(|v| v["order_id"].as_str().map(str::to_owned));
                            seen.push((status, micros, order));
                        }
                        Err(_) => errors += 1,
                    }
                }
                (seen, errors)
            })
        })
        .collect();
    let mut by_status: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    let (mut errors, mut orders) = (0u64, Vec::new());
    for w in workers {
        let (seen, e) = w.await?;
        errors += e;
        for (status, micros, order) in seen {
            by_status.entry(status).or_default().push(micros);
            orders.extend(order);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let report: BTreeMap<String, serde_json::Value> = by_status
        .into_iter()
        .map(|(status, mut v)| {
            v.sort_unstable();
            (
                status.to_string(),
                json!({ "count": v.len(), "p50_ms": percentile(&v, 0.50), "p99_ms": percentile(&v, 0.99) }),
            )
        })
        .collect();
    println!(
        "{}",
        json!({ "seconds": seconds, "by_status": report, "errors": errors, "order_ids": orders })
    );
    Ok(())
}
