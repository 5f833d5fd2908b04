//! Order events: applied once, acknowledged after commit, poison dead-lettered.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use mall_common::amqp::{Amqp, Topology};
use mall_common::events::{ORDER_CANCELLED, ORDER_EVENTS, ORDER_PAID, OrderCancelled, OrderPaid};
use mall_inventory::config::DEFAULTS;
use mall_inventory::mq::ORDER_EVENTS_QUEUE;
use mall_testkit::checks::metric_sum;
use mall_testkit::{TestEnv, eventually};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{db, ledger_sum, numbers, receive, reserve, settings, spawn};

/// A publisher standing in for the order service.
async fn publisher(env: &TestEnv) -> (Amqp, CancellationToken) {
    let amqp = Amqp::new(
        env.platform_settings(&DEFAULTS).amqp,
        "test-order",
        Topology::new().topic_exchange(ORDER_EVENTS),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(amqp.clone().run(cancel.clone()));
    assert!(amqp.wait_connected(Duration::from_secs(10)).await);
    (amqp, cancel)
}

async fn publish(amqp: &Amqp, key: &str, body: &[u8], id: &str) {
    amqp.publish(ORDER_EVENTS, key, id, body, FieldTable::default())
        .await
        .expect("confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_and_cancelled_events_settle_reservations_once_even_when_delivered_twice() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    let (amqp, cancel) = publisher(&env).await;
    receive(&app, 21, 10).await;
    let (paid, cancelled) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        reserve(&app, paid, json!([{"sku_id": 21, "quantity": 4}]))
            .await
            .0,
        201
    );
    assert_eq!(
        reserve(&app, cancelled, json!([{"sku_id": 21, "quantity": 1}]))
            .await
            .0,
        201
    );

    let paid_event = OrderPaid {
        event_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        reservation_id: paid,
    };
    let cancel_event = OrderCancelled {
        event_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        reservation_id: cancelled,
        flash: None,
    };
    let paid_body = serde_json::to_vec(&paid_event).unwrap();
    let cancel_body = serde_json::to_vec(&cancel_event).unwrap();
    // Each event twice: what an at-least-once relay, or a redelivery after a lost ack, produces.
    for _ in 0..2 {
        publish(&amqp, ORDER_PAID, &paid_body, &paid_event.event_id.to_string()).await;
        publish(
            &amqp,
            ORDER_CANCELLED,
            &cancel_body,
            &cancel_event.event_id.to_string(),
        )
        .await;
    }
    let db = db(&env);
    eventually(Duration::from_secs(10), "both events applied", || async {
        let n = numbers(&db, 21).await;
        if n == (6, 0, 4, 10) { Ok(()) } else { Err(n) }
    })
    .await;
    // Every delivery handled, the repeats included: only then can "applied once" be judged.
    let queue = amqp.name(ORDER_EVENTS_QUEUE);
    eventually(Duration::from_secs(10), "all four deliveries handled", || async {
        let done = metric_sum(
            &app,
            "amqp_deliveries_total",
            &[("queue", &queue), ("outcome", "done")],
        )
        .await;
        if done >= 4.0 { Ok(()) } else { Err(done) }
    })
    .await;
    assert_eq!(
        numbers(&db, 21).await,
        (6, 0, 4, 10),
        "no second confirm or release"
    );
    assert_eq!(ledger_sum(&db, 21, "confirm").await, 4);
    assert_eq!(ledger_sum(&db, 21, "release").await, 1);
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(inbox, 2);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_ends_in_the_dead_letter_queue_and_the_queue_moves_on() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[("MALL_INVENTORY_DELIVERY_LIMIT", "3")])).await;
    let (amqp, cancel) = publisher(&env).await;
    receive(&app, 31, 5).await;

    publish(&amqp, ORDER_PAID, b"{not json", "poison-1").await;
    // A well-formed event for a reservation that does not exist can never succeed either.
    let orphan = OrderPaid {
        event_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        reservation_id: Uuid::new_v4(),
    };
    publish(
        &amqp,
        ORDER_PAID,
        &serde_json::to_vec(&orphan).unwrap(),
        "poison-2",
    )
    .await;
    // And the queue keeps working behind them.
    let good = Uuid::new_v4();
    assert_eq!(
        reserve(&app, good, json!([{"sku_id": 31, "quantity": 2}]))
            .await
            .0,
        201
    );
    let event = OrderPaid {
        event_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        reservation_id: good,
    };
    publish(&amqp, ORDER_PAID, &serde_json::to_vec(&event).unwrap(), "good").await;

    let db = db(&env);
    eventually(Duration::from_secs(10), "the good event applied", || async {
        let n = numbers(&db, 31).await;
        if n.2 == 2 { Ok(()) } else { Err(n) }
    })
    .await;
    let dlq = amqp.name("inventory.order-events.dlq");
    let dead = std::sync::Mutex::new(Vec::new());
    eventually(
        Duration::from_secs(10),
        "both poison messages dead-lettered",
        || async {
            let channel = amqp.channel().await.map_err(|e| e.to_string())?;
            while let Ok(Some(msg)) = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
                .await
            {
                let id = msg
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                dead.lock().unwrap().push(id);
            }
            let seen = dead.lock().unwrap().clone();
            if seen.len() >= 2 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    let mut dead = dead.into_inner().unwrap();
    dead.sort();
    assert_eq!(dead, ["poison-1", "poison-2"]);
    cancel.cancel();
}
