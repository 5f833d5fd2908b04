//! Redis losing or rewinding a sale's state: the book of admissions in Postgres keeps every 202,
//! the item is loaded again from it within seconds, and settlement waits on the book and on the orders.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use mall_common::redis::client;
use mall_flashsale::store::admission::ItemKeys;
use mall_flashsale::store::book::{self, Entry, Recorded};
use mall_testkit::checks::metric_sum;
use mall_testkit::{ChaosProxy, TestEnv, eventually};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    Options, SETTLE, buy, create, flash_db, purchase, redis, redis_numbers, running, sale, stock, token_ok,
    wait_loaded, wait_orders,
};

/// Deletes every key of this test's Redis prefix, as a Redis restarted without its data would.
async fn wipe_redis(env: &TestEnv) -> usize {
    let redis = redis(env);
    let mut conn = redis.conn().await.unwrap();
    let keys: Vec<String> = client::cmd("KEYS")
        .arg(format!("{}*", redis.prefix()))
        .query_async(&mut *conn)
        .await
        .unwrap();
    for k in &keys {
        let () = client::cmd("DEL").arg(k).query_async(&mut *conn).await.unwrap();
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_202_becomes_an_order_when_redis_loses_everything_while_rabbitmq_is_down() {
    let env = TestEnv::new().await;
    let amqp_url = env.platform_settings(&mall_flashsale::config::DEFAULTS).amqp.url;
    let (proxy, through) = ChaosProxy::for_url(&amqp_url).await;
    let sale = sale(
        &env,
        &[15],
        50,
        Options {
            single: true,
            flash: &[("MALL_FLASHSALE_SETTLE_AFTER", "0s")],
            tweak_first: Some(Box::new(move |s: &mut mall_flashsale::Settings| {
                *mall_testkit::checks::dependency_url(&mut s.platform, "rabbitmq") = through;
            })),
            ..Options::default()
        },
    )
    .await;
    let now = Utc::now();
    let ends_at = now + chrono::Duration::seconds(20);
    let (status, body) = create(
        &sale.fs[0],
        now - chrono::Duration::seconds(1),
        ends_at,
        json!([{"sku_id": 15, "price_cents": 100, "quantity": 10, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session_id"].as_i64().unwrap();
    wait_loaded(&sale, session).await;
    let fs = &sale.fs[0];
    fs.wait_ready().await;
    proxy.cut();

    let mut admitted = HashSet::new();
    let mut tokens = Vec::new();
    for i in 0..6 {
        let buyer = format!("early-{i}");
        let t = token_ok(fs, &buyer, session, 15).await;
        let (status, body) = buy(fs, &buyer, purchase(session, 15, 1, &t, "r")).await;
        assert_eq!(status, 202, "{body}");
        admitted.insert(body["order_id"].as_str().unwrap().to_owned());
        tokens.push((buyer, t, body["order_id"].clone()));
    }

    // Redis comes back empty: the admissions, counters, catalog and locks are gone.
    assert!(wipe_redis(&env).await > 0);

    // Buyers are told 503 not_ready (with Retry-After) only while the item is loaded again.
    let t = token_ok(fs, "late-0", session, 15).await;
    let late = eventually(Duration::from_secs(10), "the sale is back", || async {
        let (status, body) = buy(fs, "late-0", purchase(session, 15, 1, &t, "r")).await;
        match (status, body["code"].as_str()) {
            (202, _) => Ok(body["order_id"].as_str().unwrap().to_owned()),
            (503, Some("not_ready")) => Err(body),
            _ => panic!("only not_ready while the sale is reloaded: {status} {body}"),
        }
    })
    .await;
    admitted.insert(late);

    // The book remembers each early buyer: a retried request id gets its order, a new one the
    // per-user limit.
    for (buyer, t, order) in &tokens[..2] {
        let (status, body) = buy(fs, buyer, purchase(session, 15, 1, t, "r")).await;
        assert_eq!((status, &body["order_id"]), (202, order), "{body}");
        let (status, body) = buy(fs, buyer, purchase(session, 15, 1, t, "another")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("limit_exceeded")),
            "{body}"
        );
    }
    // Exactly the units the book does not hold are sold: 10 - 6 - 1.
    let mut more = 0;
    for i in 0..8 {
        let buyer = format!("more-{i}");
        let t = token_ok(fs, &buyer, session, 15).await;
        let (status, body) = buy(fs, &buyer, purchase(session, 15, 1, &t, "r")).await;
        match status {
            202 => {
                more += 1;
                admitted.insert(body["order_id"].as_str().unwrap().to_owned());
            }
            409 => assert_eq!(body["code"], "sold_out", "{body}"),
            _ => panic!("{status} {body}"),
        }
    }
    assert_eq!(more, 3);
    assert_eq!(redis_numbers(&env, session, 15).await, (0, 10));

    // The session ends with every admission still waiting for the broker; settlement must not
    // give the session's units back meanwhile, or the orders below could not be carved.
    eventually(Duration::from_secs(30), "the session has ended", || async {
        if Utc::now() > ends_at + chrono::Duration::seconds(1) {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    proxy.restore();
    let orders: HashSet<String> = wait_orders(&env, session, 10).await.into_iter().collect();
    assert_eq!(orders, admitted, "every 202, and only those, became an order");
    eventually(Duration::from_secs(30), "the session is settled", || async {
        let s = stock(&env, 15).await;
        if s == (40, 10, 0, 50) { Ok(()) } else { Err(s) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_settled_only_once_every_admission_became_an_order() {
    let env = TestEnv::new().await;
    let sale = sale(
        &env,
        &[18],
        20,
        Options {
            single: true,
            flash: &[("MALL_FLASHSALE_SETTLE_AFTER", "0s")],
            order_inventory_proxy: true,
            ..Options::default()
        },
    )
    .await;
    let fs = &sale.fs[0];
    let now = Utc::now();
    let (status, body) = create(
        fs,
        now - chrono::Duration::seconds(1),
        now + chrono::Duration::seconds(6),
        json!([{"sku_id": 18, "price_cents": 100, "quantity": 5, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session_id"].as_i64().unwrap();
    wait_loaded(&sale, session).await;
    // Order cannot reach inventory: every admission is handed to the broker, none is carved.
    let proxy = sale.order_inventory.as_ref().unwrap();
    proxy.cut();
    let mut admitted = HashSet::new();
    for i in 0..3 {
        let buyer = format!("waiting-{i}");
        let t = token_ok(fs, &buyer, session, 18).await;
        let (status, body) = buy(fs, &buyer, purchase(session, 18, 1, &t, "r")).await;
        assert_eq!(status, 202, "{body}");
        admitted.insert(body["order_id"].as_str().unwrap().to_owned());
    }

    // The session ends and is handed off; its settlement waits for the orders, and gives
    // nothing back meanwhile: a released reservation would refuse the orders' carves.
    eventually(SETTLE, "settlement waits for the orders", || async {
        let waits = metric_sum(
            fs,
            "flashsale_settlements_deferred_total",
            &[("waiting_for", "orders")],
        )
        .await;
        if waits >= 2.0 { Ok(()) } else { Err(waits) }
    })
    .await;
    assert_eq!(stock(&env, 18).await, (15, 5, 0, 20));

    proxy.restore();
    let orders: HashSet<String> = wait_orders(&env, session, 3).await.into_iter().collect();
    assert_eq!(orders, admitted, "every 202 became an order");
    // Then the two unsold units go back; the three orders keep theirs until paid or cancelled.
    eventually(SETTLE, "the session is settled", || async {
        let s = stock(&env, 18).await;
        if s == (17, 3, 0, 20) { Ok(()) } else { Err(s) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_decided_against_an_older_load_is_not_booked_and_a_restarted_redis_is_reloaded() {
    let env = TestEnv::new().await;
    let sale = sale(&env, &[16], 20, Options::default()).await;
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 16, "price_cents": 100, "quantity": 5, "per_user_limit": 1}]),
    )
    .await;
    let db = flash_db(&env);
    let s = mall_flashsale::store::sessions::session(&db, session)
        .await
        .unwrap()
        .unwrap();
    let epoch_now = || async { book::epochs(&db, &[session]).await.unwrap()[&(session, 16)] };
    let loaded = epoch_now().await;
    let entry = |epoch: i64, order_id: Uuid| Entry {
        session_id: session,
        sku_id: 16,
        order_id,
        user_id: "u",
        request_id: "r",
        quantity: 1,
        price_cents: 100,
        reservation_id: s.items[0].reservation_id,
        admitted_at: Utc::now(),
        epoch,
    };
    let stale = Uuid::now_v7();
    assert_eq!(
        book::record(&db, &entry(loaded - 1, stale)).await.unwrap(),
        Recorded::Stale
    );
    let fresh = Uuid::now_v7();
    assert_eq!(
        book::record(&db, &entry(loaded, fresh)).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        book::record(&db, &entry(loaded, fresh)).await.unwrap(),
        Recorded::Already
    );

    // Redis restarted from an older file: its run_id differs from the one the load saw.
    let redis = redis(&env);
    let keys = ItemKeys::new(&redis, session, 16);
    {
        let mut conn = redis.conn().await.unwrap();
        let () = client::cmd("HSET")
            .arg(&keys.meta)
            .arg("run_id")
            .arg("an-earlier-redis")
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    let reloaded = eventually(Duration::from_secs(10), "the item is loaded again", || async {
        let e = epoch_now().await;
        if e > loaded { Ok(e) } else { Err(e) }
    })
    .await;
    wait_loaded(&sale, session).await;
    let mut conn = redis.conn().await.unwrap();
    let (epoch, left): (i64, i64) = client::pipe()
        .cmd("HGET")
        .arg(&keys.meta)
        .arg("epoch")
        .cmd("GET")
        .arg(&keys.stock)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(epoch, reloaded);
    assert_eq!(left, 4, "the booked admission holds its unit after the reload");
}
