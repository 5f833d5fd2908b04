//! Broadcasts between instances: plain pub/sub on one node, sharded pub/sub (`SPUBLISH`,
//! `SSUBSCRIBE`) on a cluster, where a message travels to the channel's shard only instead of
//! over every node's cluster bus (measured in `loadtest/pubsub.sh`).

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::cluster::ClusterClientBuilder;
use redis::{ProtocolVersion, PushKind};

use super::{Backend, Redis, RedisError, client};

impl Redis {
    /// Sends `message` to every subscriber of `channel` (a full key, see [`Redis::key`]).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), RedisError> {
        let verb = match &*self.backend {
            Backend::Node { .. } => "PUBLISH",
            Backend::Cluster { .. } => "SPUBLISH",
        };
        let mut conn = self.conn().await?;
        let _: i64 = client::cmd(verb)
            .arg(channel)
            .arg(message)
            .query_async(&mut *conn)
            .await?;
        Ok(())
    }

    /// The messages published on `channel` from now on. The stream ends when the subscription
    /// is lost; subscribe again then (messages sent in between are not seen).
    pub async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, String>, RedisError> {
        match &*self.backend {
            Backend::Node { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok(pubsub
                    .into_on_message()
                    .map(|m| m.get_payload::<String>().unwrap_or_default())
                    .boxed())
            }
            Backend::Cluster { seeds, .. } => {
                // Pushes need RESP3 and a connection of their own; the client resubscribes
                // by itself after a failover or a reconnect.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let client = ClusterClientBuilder::new(seeds.iter().map(url::Url::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(channel).await?;
                Ok(
                    futures_util::stream::unfold((rx, conn), |(mut rx, conn)| async move {
                        loop {
                            let push = rx.recv().await?;
                            if push.kind == PushKind::SMessage
                                && let Some(Ok(text)) =
                                    push.data.into_iter().nth(1).map(client::from_redis_value)
                            {
                                return Some((text, (rx, conn)));
                            }
                        }
                    })
                    .boxed(),
                )
            }
        }
    }
}
