//! Consuming a queue: one delivery at a time per handler, acknowledged only after its effect
//! is committed.
//!
//! The handler decides each delivery's fate:
//! - [`Outcome::Done`]: the effect is committed (or was already, for a duplicate): ack.
//! - [`Outcome::Retry`]: a transient failure (database down...): nack with requeue. The queue's
//!   `x-delivery-limit` bounds the redeliveries; past it RabbitMQ dead-letters the message to
//!   `<queue>.dlq`, so a message that can never succeed does not loop forever.
//! - [`Outcome::Poison`]: the message can never be handled (unparseable, unknown type): reject
//!   without requeue, straight to `<queue>.dlq`.
//!
//! Handlers must be idempotent (an inbox of processed event ids written in the same
//! transaction as the effect, or a guarded state transition): a delivery whose ack was lost is
//! delivered again. Each delivery is handled inside a span continuing the publisher's trace.
//! The runner resubscribes after a lost connection and stops at shutdown after the delivery in
//! hand.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Amqp;
use crate::telemetry::propagation;

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or already committed before): acknowledge.
    Done,
    /// Failed for now: requeue (bounded by the queue's delivery limit).
    Retry(String),
    /// Can never succeed: dead-letter now.
    Poison(String),
}

/// Consumes `queue` (unprefixed name) with `handler` until `cancel`, one delivery at a time
/// (in queue order).
pub async fn consume<H, Fut>(amqp: Amqp, queue: &str, consumer: &str, cancel: CancellationToken, handler: H)
where
    H: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = (Delivery, Outcome)> + Send,
{
    consume_parallel(amqp, queue, consumer, 1, cancel, handler).await;
}

/// Like [`consume`], with up to `parallel` deliveries handled at once (for queues whose
/// messages are independent, so their order does not matter). Each delivery is still acked
/// only after its own effect is committed.
pub async fn consume_parallel<H, Fut>(
    amqp: Amqp,
    queue: &str,
    consumer: &str,
    parallel: usize,
    cancel: CancellationToken,
    handler: H,
) where
    H: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = (Delivery, Outcome)> + Send,
{
    let parallel = parallel.max(1);
    let queue = amqp.name(queue);
    // At zero from the start, so a dashboard and an alert's increase() see the first one.
    let labels = [("queue", queue.clone())];
    metrics::counter!("amqp_redeliveries_total", &labels).increment(0);
    metrics::counter!("amqp_dead_lettered_total", &labels).increment(0);
    loop {
        if !amqp.wait_connected(Duration::from_secs(1)).await {
            if cancel.is_cancelled() {
                return;
            }
            continue;
        }
        let run = async {
            let channel = amqp.channel().await.map_err(|e| e.to_string())?;
            channel
                .basic_qos(16.max(parallel as u16), BasicQosOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    consumer.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut in_flight = futures_util::stream::FuturesUnordered::new();
            loop {
                let next = tokio::select! {
                    () = cancel.cancelled() => {
                        // Finish what is in hand; the rest is redelivered to someone else.
                        while in_flight.next().await.is_some() {}
                        return Ok(());
                    }
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                    next = deliveries.next(), if in_flight.len() < parallel => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("consumer cancelled by the broker".to_owned()),
                };
                in_flight.push(handle_one(&queue, delivery, &handler));
            }
        };
        match run.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "consumer stopped; resubscribing");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

async fn handle_one<H, Fut>(queue: &str, delivery: Delivery, handler: &H)
where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = (Delivery, Outcome)>,
{
    let span = tracing::info_span!(
        "amqp.consume",
        otel.name = %format_args!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.destination.name = %queue,
        messaging.message.id = tracing::field::Empty,
        redelivered = delivery.redelivered,
        outcome = tracing::field::Empty,
    );
    if let Some(headers) = delivery.properties.headers() {
        let _ = span.set_parent(propagation::extract_amqp(headers));
    }
    if let Some(id) = delivery.properties.message_id() {
        span.record("messaging.message.id", id.as_str());
    }
    let labels = [("queue", queue.to_owned())];
    if delivery.redelivered {
        metrics::counter!("amqp_redeliveries_total", &labels).increment(1);
    }
    let (delivery, outcome) = handler(delivery).instrument(span.clone()).await;
    span.record("outcome", format!("{outcome:?}").as_str());
    let handled = match &outcome {
        Outcome::Done => "done",
        Outcome::Retry(_) => "retry",
        Outcome::Poison(_) => "poison",
    };
    metrics::counter!("amqp_deliveries_total", "queue" => queue.to_owned(), "outcome" => handled)
        .increment(1);
    let settled = match &outcome {
        Outcome::Done => delivery.ack(BasicAckOptions::default()).await,
        Outcome::Retry(reason) => {
            tracing::warn!(parent: &span, %reason, "delivery failed; requeued");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Outcome::Poison(reason) => {
            tracing::error!(parent: &span, %reason, "poison message dead-lettered");
            metrics::counter!("amqp_dead_lettered_total", &labels).increment(1);
            delivery.reject(BasicRejectOptions { requeue: false }).await
        }
    };
    if let Err(e) = settled {
        // The broker redelivers an unsettled message; the handler's idempotency absorbs it.
        tracing::warn!(parent: &span, error = %e, "could not settle a delivery");
    }
}
