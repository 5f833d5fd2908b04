//! The outbox relay: two relays at once send every row exactly once (in normal operation) and
//! each aggregate's events in the order they were written.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use mall_common::amqp::{Amqp, Topology};
use mall_common::db::Db;
use mall_common::outbox::{Destination, enqueue, relay};
use mall_testkit::TestEnv;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

static NONE: Migrator = Migrator::DEFAULT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_send_each_row_once_and_keep_each_aggregates_order() {
    let env = TestEnv::new().await;
    let settings = env.platform_settings(&crate::DEFAULTS);
    let db = Db::connect_lazy(&settings.database, "outbox-test").unwrap();
    db.migrate(&NONE).await.unwrap();
    let topology = Topology::new().topic_exchange("mall.test.events").queue(
        "test.relayed",
        "mall.test.events",
        &["thing.#"],
        5,
    );
    let amqp = Amqp::new(settings.amqp.clone(), "outbox-test", topology);
    let cancel = CancellationToken::new();
    tokio::spawn(amqp.clone().run(cancel.clone()));
    assert!(amqp.wait_connected(Duration::from_secs(10)).await);

    // 10 aggregates x 30 events, interleaved, each numbered in its aggregate.
    let mut tx = db.pool().begin().await.unwrap();
    for seq in 0..30 {
        for agg in 0..10 {
            let payload = serde_json::json!({ "aggregate": agg, "seq": seq });
            enqueue(
                &mut tx,
                &format!("agg-{agg}"),
                Destination::Exchange("mall.test.events", "thing.happened"),
                &payload,
            )
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();

    let relays = CancellationToken::new();
    for _ in 0..2 {
        tokio::spawn(relay(
            db.clone(),
            amqp.clone(),
            Duration::from_millis(10),
            relays.clone(),
        ));
    }
    mall_testkit::outbox_drained(&db, Duration::from_secs(20)).await;
    relays.cancel();

    let channel = amqp.channel().await.unwrap();
    let queue = amqp.name("test.relayed");
    let mut seen: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut total = 0;
    while let Ok(Some(msg)) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
    {
        let v: serde_json::Value = serde_json::from_slice(&msg.delivery.data).unwrap();
        seen.entry(v["aggregate"].as_i64().unwrap())
            .or_default()
            .push(v["seq"].as_i64().unwrap());
        msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
        total += 1;
    }
    assert_eq!(total, 300, "each of the 300 rows published exactly once");
    for (agg, seqs) in &seen {
        assert_eq!(
            seqs,
            &(0..30).collect::<Vec<_>>(),
            "aggregate {agg} in written order"
        );
    }
    cancel.cancel();
    amqp.delete_topology(&env.infra().amqp_url).await.unwrap();
}
