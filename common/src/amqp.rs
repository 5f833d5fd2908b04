//! RabbitMQ: one managed connection per process, re-established after any failure, with the
//! service's topology declared on every (re)connect and publishing that waits for the broker's
//! confirm.
//!
//! The connection is made in the background, so a service starts while RabbitMQ is down and
//! `/readyz` reports it. A publish while disconnected fails fast with
//! [`PublishError::NotConnected`]; callers that must not lose a message (the outbox relay) keep
//! it and retry. A message counts as published only when the broker acked it.
//!
//! lapin drives each connection's socket from a thread of its own through the tokio handle it
//! was created on, so it needs a multi-thread runtime (`#[tokio::main]`'s default): on a
//! current-thread runtime that thread can wait for a reactor nobody is driving.

pub mod consumer;
mod topology;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use topology::{DelayQueue, Exchange, Queue, Topology};

/// How often each dead-letter queue's depth is read.
pub const DEAD_LETTER_POLL: Duration = Duration::from_secs(15);

/// RabbitMQ settings (`MALL_AMQP_*`).
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `MALL_AMQP_URL`.
    pub url: Url,
    /// `MALL_AMQP_PREFIX`: prepended to every exchange and queue name.
    pub prefix: String,
    /// `MALL_AMQP_CONFIRM_TIMEOUT`: how long a publish waits for the broker's confirm.
    pub confirm_timeout: Duration,
}

/// Why a publish did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// There is no connection right now.
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The broker did not confirm within the timeout; the message may or may not be stored.
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// The broker refused the message (nack).
    #[error("the broker nacked the message")]
    Nacked,
    /// The channel or connection failed.
    #[error("publish failed: {0}")]
    Channel(#[from] lapin::Error),
}

#[derive(Clone)]
struct Link {
    conn: Arc<Connection>,
    publisher: Channel,
}

struct Inner {
    settings: AmqpSettings,
    service: String,
    topology: Topology,
    link: watch::Sender<Option<Link>>,
    last_error: Mutex<Option<String>>,
}

/// A service's RabbitMQ handle; cheap to clone.
#[derive(Clone)]
pub struct Amqp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("prefix", &self.inner.settings.prefix)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Amqp {
    /// Creates the handle; [`Amqp::run`] must be spawned to connect.
    pub fn new(settings: AmqpSettings, service: &str, topology: Topology) -> Self {
        let (link, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                topology: topology.prefixed(&settings.prefix),
                settings,
                service: service.to_owned(),
                link,
                last_error: Mutex::new(Some("not connected yet".into())),
            }),
        }
    }

    /// The prefixed name of an exchange or queue (`mall.order.events` -> `<prefix>mall.order.events`).
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.inner.settings.prefix, base)
    }

    /// The declared topology (names already prefixed).
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().is_some()
    }

    /// Waits until connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.link.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Readiness: connected, or why not.
    pub async fn check(&self) -> Result<(), String> {
        if self.is_connected() {
            return Ok(());
        }
        let reason = self
            .inner
            .last_error
            .lock()
            .expect("amqp error lock")
            .clone()
            .unwrap_or_else(|| "disconnected".into());
        Err(reason)
    }

    /// A new channel on the current connection (for consumers, which own their channel).
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        let link = self
            .inner
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        Ok(link.conn.create_channel().await?)
    }

    /// Publishes persistently and waits for the broker's confirm.
    ///
    /// `exchange` is the unprefixed name. `headers` should carry the trace context
    /// ([`crate::telemetry::propagation::inject_amqp`]).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        self.publish_raw(&self.name(exchange), routing_key, message_id, payload, headers)
            .await
    }

    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let link = self
            .inner
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into())
            .with_app_id(self.inner.service.as_str().into())
            .with_headers(headers);
        let timeout = self.inner.settings.confirm_timeout;
        let confirm = link
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                props,
            )
            .await?;
        let confirmation = tokio::time::timeout(timeout, confirm)
            .await
            .map_err(|_| PublishError::ConfirmTimeout(timeout))??;
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
        Ok(())
    }

    /// Publishes persistently to a queue (unprefixed name) through the default exchange, and
    /// waits for the broker's confirm; used for delay hold queues.
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        message_id: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        self.publish_raw("", &self.name(queue), message_id, payload, headers)
            .await
    }

    /// Connects, declares the topology, and reconnects after any failure, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // One warning when the broker goes, one line with the failed attempts when it is back.
        let mut outage = crate::outage::Outage::new("rabbitmq connection");
        while !cancel.is_cancelled() {
            let attempt = tokio::time::timeout(Duration::from_secs(5), self.connect());
            let outcome = tokio::select! {
                () = cancel.cancelled() => break,
                r = attempt => r,
            };
            match outcome {
                Ok(Ok(link)) => {
                    tracing::info!(url = %crate::config::redact_url(&self.inner.settings.url), "connected to RabbitMQ");
                    backoff = Duration::from_millis(100);
                    outage.succeeded();
                    *self.inner.last_error.lock().expect("amqp error lock") = None;
                    let conn = link.conn.clone();
                    // Events after connect; an error in between surfaces as a failed publish
                    // and as the next event anyway.
                    let mut events = conn.events_listener();
                    self.inner.link.send_replace(Some(link));
                    let lost = async {
                        while let Some(event) = events.next().await {
                            if let Event::Error(e) = event {
                                return e.to_string();
                            }
                        }
                        "connection closed".to_owned()
                    };
                    tokio::select! {
                        () = self.watch_dead_letters(&conn) => {}
                        () = cancel.cancelled() => {
                            if let Some(link) = self.inner.link.send_replace(None) {
                                let _ = link.publisher.close(200, "shutting down".into()).await;
                            }
                            let _ = conn.close(200, "shutting down".into()).await;
                            break;
                        }
                        reason = lost => {
                            self.inner.link.send_replace(None);
                            self.note_failure(format!("connection lost: {reason}"), &mut outage);
                        }
                    }
                }
                Ok(Err(e)) => self.note_failure(e.to_string(), &mut outage),
                Err(_) => self.note_failure("connect timed out".into(), &mut outage),
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            // At most a second apart, so a returning broker is used within a second; the
            // failures are logged once per outage.
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Exports each dead-letter queue's depth (`amqp_dead_letter_messages{queue}`) every
    /// [`DEAD_LETTER_POLL`] while connected: a message there needs a person, so it pages.
    async fn watch_dead_letters(&self, conn: &Connection) {
        let queues: Vec<String> = self
            .inner
            .topology
            .queue_names()
            .into_iter()
            .filter(|q| q.ends_with(".dlq"))
            .collect();
        loop {
            // A channel of its own: a failed passive declare closes the channel it ran on.
            match conn.create_channel().await {
                Ok(channel) => {
                    for queue in &queues {
                        let passive = QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        };
                        match channel
                            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                            .await
                        {
                            Ok(q) => metrics::gauge!("amqp_dead_letter_messages", "queue" => queue.clone())
                                .set(f64::from(q.message_count())),
                            Err(e) => {
                                tracing::debug!(%queue, error = %e, "cannot read the dead-letter queue's depth");
                                break;
                            }
                        }
                    }
                    let _ = channel.close(200, "done".into()).await;
                }
                Err(e) => tracing::debug!(error = %e, "no channel for the dead-letter depths"),
            }
            tokio::time::sleep(DEAD_LETTER_POLL).await;
        }
    }

    fn note_failure(&self, reason: String, outage: &mut crate::outage::Outage) {
        outage.failed(&reason);
        *self.inner.last_error.lock().expect("amqp error lock") = Some(reason);
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let props = ConnectionProperties::default().with_connection_name(self.inner.service.clone().into());
        let conn = Connection::connect(self.inner.settings.url.as_str(), props).await?;
        let channel = conn.create_channel().await?;
        self.inner.topology.declare(&channel).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Link {
            conn: Arc::new(conn),
            publisher: channel,
        })
    }

    /// Deletes every exchange and queue of this handle's topology through the broker at `url`
    /// (tests, decommissioning).
    pub async fn delete_topology(&self, url: &Url) -> Result<(), lapin::Error> {
        let conn = Connection::connect(url.as_str(), ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        for queue in self.inner.topology.queue_names() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in self.inner.topology.exchange_names() {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = channel.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }
}
