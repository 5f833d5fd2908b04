//! The transactional outbox: events are written in the same transaction as the state change
//! they announce ([`enqueue`]), and a relay ([`relay`]) publishes them with publisher confirms,
//! stamping `sent_at` only after the broker's ack.
//!
//! Several instances relay at once without sending a row twice at the same time: a batch first
//! claims whole aggregates (an order) with transaction-scoped advisory locks, then takes only
//! their unsent rows, strictly in `created_at` order; an aggregate whose earlier row failed is
//! left for the next round, so one aggregate's events never overtake each other.
//! At-least-once remains (a crash after the ack and before the commit re-sends a row), which
//! consumers absorb with their inbox. While RabbitMQ is down the relay backs off and the rows
//! wait; `outbox_oldest_unsent_seconds` shows how long.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::amqp::{Amqp, PublishError};
use crate::db::Db;

/// Where an outbox row goes.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// A topic exchange (unprefixed name) and routing key.
    Exchange(&'a str, &'a str),
    /// A queue (unprefixed name) through the default exchange, e.g. a delay hold queue.
    Queue(&'a str),
}

/// Writes an event into the outbox inside the caller's transaction, with the current trace
/// context, so the event exists if and only if the state change commits.
pub async fn enqueue(
    conn: &mut PgConnection,
    aggregate_id: &str,
    destination: Destination<'_>,
    payload: &impl serde::Serialize,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let headers = trace_headers();
    let (exchange, routing_key) = match destination {
        Destination::Exchange(e, k) => (e, k),
        Destination::Queue(q) => ("", q),
    };
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_id, exchange, routing_key, payload, headers) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(aggregate_id)
    .bind(exchange)
    .bind(routing_key)
    .bind(serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(headers)
    .execute(conn)
    .await?;
    Ok(id)
}

/// The current span's trace context as an outbox row's `headers` (for services that write
/// their outbox rows in a statement of their own).
pub fn trace_headers() -> Value {
    let mut carrier = FieldTable::default();
    crate::telemetry::propagation::inject_amqp(&mut carrier);
    Value::Object(
        carrier
            .inner()
            .iter()
            .filter_map(|(k, v)| match v {
                AMQPValue::LongString(s) => Some((
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                )),
                _ => None,
            })
            .collect(),
    )
}

/// Relays until `cancel`, polling every `idle` when there is nothing to send.
pub async fn relay(db: Db, amqp: Amqp, idle: Duration, cancel: CancellationToken) {
    // Exported from the start: a dashboard reading it sees 0 rather than no series.
    metrics::counter!("outbox_sent_total", "schema" => db.schema().to_owned()).increment(0);
    let mut backoff = idle;
    let mut outage = crate::outage::Outage::new("outbox relay");
    loop {
        let sent = tokio::select! {
            () = cancel.cancelled() => return,
            r = relay_batch(&db, &amqp, 200) => r,
        };
        report_lag(&db).await;
        let pause = match sent {
            Ok(n) if n > 0 => {
                outage.succeeded();
                backoff = idle;
                continue;
            }
            Ok(_) => {
                outage.succeeded();
                idle
            }
            Err(e) => {
                // The events wait in the outbox meanwhile; nothing is lost. At most a second
                // apart, as the broker connection retries, so they flow within a second of its return.
                outage.failed(&e);
                backoff = (backoff * 2).clamp(idle, Duration::from_secs(1));
                backoff
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn report_lag(db: &Db) {
    let age: Result<Option<f64>, sqlx::Error> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(db.pool())
    .await;
    if let Ok(age) = age {
        metrics::gauge!("outbox_oldest_unsent_seconds", "schema" => db.schema().to_owned())
            .set(age.unwrap_or(0.0));
    }
}

/// Publishes one batch; returns how many rows were sent, or the error that stopped it.
pub async fn relay_batch(db: &Db, amqp: &Amqp, limit: i64) -> Result<u64, String> {
    if !amqp.is_connected() {
        return Err(PublishError::NotConnected.to_string());
    }
    let mut tx = db.pool().begin().await.map_err(|e| e.to_string())?;
    // Claim whole aggregates first (oldest waiting first), then take only their rows: a relay
    // that holds an aggregate holds all of its unsent rows, so no other relay can publish a
    // later event of it while an earlier one waits.
    let claimed = claim(&mut tx, limit).await.map_err(|e| e.to_string())?;
    let rows = sqlx::query(
        "SELECT id, aggregate_id, exchange, routing_key, payload, headers FROM outbox
          WHERE sent_at IS NULL AND aggregate_id = ANY($1) ORDER BY created_at, id LIMIT $2 FOR UPDATE",
    )
    .bind(&claimed)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    // Aggregates whose earlier row failed in this batch: their later rows wait.
    let mut stopped: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut sent = Vec::new();
    let mut failure = None;
    for row in rows {
        let aggregate: String = row.get("aggregate_id");
        if stopped.contains(&aggregate) {
            continue;
        }
        let id: Uuid = row.get("id");
        let published = publish(amqp, &row, id).await?;
        match published {
            Ok(()) => sent.push(id),
            Err(e) => {
                // Later rows of this aggregate must not overtake this one.
                stopped.insert(aggregate);
                let _ =
                    sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
                        .bind(id)
                        .bind(e.to_string())
                        .execute(&mut *tx)
                        .await;
                failure = Some(e.to_string());
                if matches!(e, PublishError::NotConnected) {
                    break;
                }
            }
        }
    }
    // Acked rows are stamped only now, after every ack of this batch arrived.
    sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
        .bind(&sent)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    if !sent.is_empty() {
        metrics::counter!("outbox_sent_total", "schema" => db.schema().to_owned())
            .increment(sent.len() as u64);
    }
    match failure {
        Some(e) if sent.is_empty() => Err(e),
        _ => Ok(sent.len() as u64),
    }
}

/// Locks up to `limit` aggregates with unsent rows, oldest waiting first, for this
/// transaction; aggregates another relay holds are skipped.
async fn claim(conn: &mut sqlx::PgConnection, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    let candidates: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM outbox WHERE sent_at IS NULL
          GROUP BY aggregate_id ORDER BY min(created_at) LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(candidates.len());
    for aggregate in candidates {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(&aggregate)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            claimed.push(aggregate);
        }
    }
    Ok(claimed)
}

/// Publishes one outbox row in a producer span; the outer error is a row that cannot be sent
/// at all, the inner one the broker's answer.
async fn publish(
    amqp: &Amqp,
    row: &sqlx::postgres::PgRow,
    id: Uuid,
) -> Result<Result<(), PublishError>, String> {
    let exchange: String = row.get("exchange");
    let routing_key: String = row.get("routing_key");
    let payload: Value = row.get("payload");
    let headers: Value = row.get("headers");
    let mut table = FieldTable::default();
    if let Value::Object(map) = headers {
        for (k, v) in map {
            if let Value::String(s) = v {
                table.insert(ShortString::from(k), AMQPValue::LongString(s.into()));
            }
        }
    }
    let body = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    // A producer span in the trace of the request that wrote the event; the message carries
    // this span's context, so the consumer's span hangs below it.
    let target = if exchange.is_empty() {
        routing_key.as_str()
    } else {
        exchange.as_str()
    };
    let span = tracing::info_span!(
        "outbox.publish",
        otel.name = %format_args!("{target} publish"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = %target,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = %id,
    );
    let _ = span.set_parent(crate::telemetry::propagation::extract_amqp(&table));
    span.in_scope(|| crate::telemetry::propagation::inject_amqp(&mut table));
    let published = if exchange.is_empty() {
        amqp.publish_to_queue(&routing_key, &id.to_string(), &body, table)
            .instrument(span)
            .await
    } else {
        amqp.publish(&exchange, &routing_key, &id.to_string(), &body, table)
            .instrument(span)
            .await
    };
    Ok(published)
}
