//! Declarative RabbitMQ topology: exchanges, queues (with their dead-letter queues) and bindings,
//! declared idempotently on every (re)connect so a broker that lost them gets them back.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// An exchange (durable).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Name (prefixed once the topology is bound to a handle).
    pub name: String,
    /// Topic or fanout.
    pub kind: ExchangeKind,
}

/// A durable quorum queue with a delivery limit and a `.dlq` dead-letter queue.
#[derive(Debug, Clone)]
pub struct Queue {
    /// Name, `<consumer>.<what>`.
    pub name: String,
    /// `(exchange, routing key)` pairs.
    pub bindings: Vec<(String, String)>,
    /// Deliveries before a message is dead-lettered (`x-delivery-limit`).
    pub delivery_limit: u32,
}

/// A hold queue for delayed messages: they wait out the queue's TTL, then dead-letter into an
/// exchange with a routing key (one hold queue per delay length).
#[derive(Debug, Clone)]
pub struct DelayQueue {
    /// Name, e.g. `order.timeout.hold-900s`.
    pub name: String,
    /// The delay.
    pub delay_ms: u64,
    /// Where expired messages go.
    pub exchange: String,
    /// With which routing key.
    pub routing_key: String,
}

/// A service's exchanges and queues.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
    delays: Vec<DelayQueue>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a durable topic exchange.
    pub fn topic_exchange(mut self, name: &str) -> Self {
        self.exchanges.push(Exchange {
            name: name.to_owned(),
            kind: ExchangeKind::Topic,
        });
        self
    }

    /// Adds a quorum queue bound to `exchange` with each routing key, plus its `.dlq`.
    pub fn queue(mut self, name: &str, exchange: &str, routing_keys: &[&str], delivery_limit: u32) -> Self {
        self.queues.push(Queue {
            name: name.to_owned(),
            bindings: routing_keys
                .iter()
                .map(|rk| (exchange.to_owned(), (*rk).to_owned()))
                .collect(),
            delivery_limit,
        });
        self
    }

    /// Adds a delay hold queue (quorum, no consumer) that dead-letters into `exchange` with
    /// `routing_key` after `delay_ms`.
    pub fn delay_queue(mut self, name: &str, delay_ms: u64, exchange: &str, routing_key: &str) -> Self {
        self.delays.push(DelayQueue {
            name: name.to_owned(),
            delay_ms,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        });
        self
    }

    pub(super) fn prefixed(&self, prefix: &str) -> Self {
        Self {
            exchanges: self
                .exchanges
                .iter()
                .map(|e| Exchange {
                    name: format!("{prefix}{}", e.name),
                    kind: e.kind.clone(),
                })
                .collect(),
            queues: self
                .queues
                .iter()
                .map(|q| Queue {
                    name: format!("{prefix}{}", q.name),
                    bindings: q
                        .bindings
                        .iter()
                        .map(|(ex, rk)| (format!("{prefix}{ex}"), rk.clone()))
                        .collect(),
                    delivery_limit: q.delivery_limit,
                })
                .collect(),
            delays: self
                .delays
                .iter()
                .map(|d| DelayQueue {
                    name: format!("{prefix}{}", d.name),
                    delay_ms: d.delay_ms,
                    exchange: format!("{prefix}{}", d.exchange),
                    routing_key: d.routing_key.clone(),
                })
                .collect(),
        }
    }

    /// Exchange names.
    pub fn exchange_names(&self) -> impl Iterator<Item = &str> {
        self.exchanges.iter().map(|e| e.name.as_str())
    }

    /// Queue names, including dead-letter and delay hold queues.
    pub fn queue_names(&self) -> Vec<String> {
        self.queues
            .iter()
            .flat_map(|q| [q.name.clone(), format!("{}.dlq", q.name)])
            .chain(self.delays.iter().map(|d| d.name.clone()))
            .collect()
    }

    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for e in &self.exchanges {
            channel
                .exchange_declare(
                    e.name.as_str().into(),
                    e.kind.clone(),
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        let queue_opts = QueueDeclareOptions::durable();
        for d in &self.delays {
            let mut args = FieldTable::default();
            args.insert(ShortString::from("x-queue-type"), long("quorum"));
            args.insert(
                ShortString::from("x-message-ttl"),
                AMQPValue::LongLongInt(d.delay_ms as i64),
            );
            args.insert(ShortString::from("x-dead-letter-exchange"), long(&d.exchange));
            args.insert(
                ShortString::from("x-dead-letter-routing-key"),
                long(&d.routing_key),
            );
            // Quorum queues dead-letter at-least-once only with overflow reject-publish.
            args.insert(ShortString::from("x-overflow"), long("reject-publish"));
            args.insert(ShortString::from("x-dead-letter-strategy"), long("at-least-once"));
            channel
                .queue_declare(d.name.as_str().into(), queue_opts, args)
                .await?;
        }
        for q in &self.queues {
            let dlq = format!("{}.dlq", q.name);
            let mut dlq_args = FieldTable::default();
            dlq_args.insert(ShortString::from("x-queue-type"), long("quorum"));
            channel
                .queue_declare(dlq.as_str().into(), queue_opts, dlq_args)
                .await?;

            let mut args = FieldTable::default();
            args.insert(ShortString::from("x-queue-type"), long("quorum"));
            args.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongLongInt(i64::from(q.delivery_limit)),
            );
            // Dead-letter through the default exchange straight into the .dlq queue.
            args.insert(ShortString::from("x-dead-letter-exchange"), long(""));
            args.insert(ShortString::from("x-dead-letter-routing-key"), long(&dlq));
            channel
                .queue_declare(q.name.as_str().into(), queue_opts, args)
                .await?;
            for (exchange, rk) in &q.bindings {
                channel
                    .queue_bind(
                        q.name.as_str().into(),
                        exchange.as_str().into(),
                        rk.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
