//! The RabbitMQ connection manager: confirmed publishing, trace headers through a real message,
//! and reconnecting after the broker becomes unreachable.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::FieldTable;
use mall_common::amqp::{Amqp, PublishError, Topology};
use mall_common::telemetry::propagation;
use mall_testkit::{ChaosProxy, TestEnv, eventually};
use tokio_util::sync::CancellationToken;

fn topology() -> Topology {
    Topology::new().topic_exchange("mall.test.events").queue(
        "test.events",
        "mall.test.events",
        &["thing.#"],
        3,
    )
}

async fn get_one(amqp: &Amqp, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    let channel = amqp.channel().await.ok()?;
    let msg = channel
        .basic_get(amqp.name(queue).into(), BasicGetOptions::default())
        .await
        .ok()??;
    msg.delivery.ack(BasicAckOptions::default()).await.ok()?;
    Some(msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_publish_reaches_the_bound_queue_with_its_trace_context() {
    let env = TestEnv::new().await;
    let settings = env.platform_settings(&crate::DEFAULTS);
    let amqp = Amqp::new(settings.amqp.clone(), "platformtest", topology());
    let cancel = CancellationToken::new();
    tokio::spawn(amqp.clone().run(cancel.clone()));
    assert!(amqp.wait_connected(Duration::from_secs(10)).await);

    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    amqp.publish(
        "mall.test.events",
        "thing.created",
        "m-1",
        br#"{"id":1}"#,
        headers,
    )
    .await
    .expect("confirmed");

    let msg = eventually(Duration::from_secs(5), "message in queue", || async {
        get_one(&amqp, "test.events").await.ok_or("empty")
    })
    .await;
    assert_eq!(msg.delivery.data, br#"{"id":1}"#);
    let props = &msg.delivery.properties;
    assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    let cx = propagation::extract_amqp(props.headers().as_ref().expect("headers"));
    assert_eq!(
        propagation::trace_id_of(&cx).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    cancel.cancel();
    amqp.delete_topology(&env.infra().amqp_url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_fails_fast_while_unreachable_and_works_again_after_reconnect() {
    let env = TestEnv::new().await;
    let mut settings = env.platform_settings(&crate::DEFAULTS);
    let (proxy, url) = ChaosProxy::for_url(&settings.amqp.url).await;
    settings.amqp.url = url;
    let amqp = Amqp::new(settings.amqp.clone(), "platformtest", topology());
    let cancel = CancellationToken::new();
    tokio::spawn(amqp.clone().run(cancel.clone()));
    assert!(amqp.wait_connected(Duration::from_secs(10)).await);

    proxy.cut();
    eventually(Duration::from_secs(10), "disconnect noticed", || async {
        if amqp.is_connected() {
            Err("still connected")
        } else {
            Ok(())
        }
    })
    .await;
    let err = amqp
        .publish(
            "mall.test.events",
            "thing.created",
            "m-2",
            b"{}",
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::NotConnected), "{err}");
    assert!(amqp.check().await.is_err());

    proxy.restore();
    assert!(amqp.wait_connected(Duration::from_secs(15)).await, "reconnected");
    amqp.publish(
        "mall.test.events",
        "thing.created",
        "m-3",
        b"{}",
        FieldTable::default(),
    )
    .await
    .expect("publish after reconnect");
    let msg = eventually(Duration::from_secs(5), "message in queue", || async {
        get_one(&amqp, "test.events").await.ok_or("empty")
    })
    .await;
    assert_eq!(
        msg.delivery.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("m-3")
    );
    cancel.cancel();
    amqp.delete_topology(&env.infra().amqp_url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dead_letter_queue_s_depth_is_exported() {
    // The recorder first, as Platform::start does: a gauge set before it counts into nothing.
    mall_common::health::prometheus();
    let env = TestEnv::new().await;
    let settings = env.platform_settings(&crate::DEFAULTS);
    let first = Amqp::new(settings.amqp.clone(), "platformtest", topology());
    let cancel = CancellationToken::new();
    tokio::spawn(first.clone().run(cancel.clone()));
    assert!(first.wait_connected(Duration::from_secs(10)).await);
    let dlq = first.name("test.events.dlq");
    let exported = |n: u32| {
        let line = format!("amqp_dead_letter_messages{{queue=\"{dlq}\"}} {n}");
        async move {
            let text = mall_common::health::prometheus().render();
            if text.lines().any(|l| l == line) {
                Ok(())
            } else {
                Err(format!("no line {line}"))
            }
        }
    };
    eventually(
        Duration::from_secs(10),
        "an empty dead-letter queue exported as 0",
        || exported(0),
    )
    .await;

    first
        .publish_to_queue("test.events.dlq", "dead-1", br#"{"id":1}"#, FieldTable::default())
        .await
        .expect("confirmed");
    // A second process connecting reads the depth at once (the first reads it again within
    // DEAD_LETTER_POLL).
    let second = Amqp::new(settings.amqp.clone(), "platformtest-2", topology());
    tokio::spawn(second.clone().run(cancel.clone()));
    eventually(
        Duration::from_secs(10),
        "the dead-lettered message counted",
        || exported(1),
    )
    .await;

    cancel.cancel();
    first.delete_topology(&env.infra().amqp_url).await.unwrap();
}
