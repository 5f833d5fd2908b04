//! The admission script on its own, against a real Redis: every return code, the boundaries,
//! and concurrent runs.

use std::sync::Arc;

use mall_common::redis::{Redis, client};
use mall_flashsale::config::DEFAULTS;
use mall_flashsale::store::admission::{Admission, Attempt, ItemKeys, Warm, admit, warm_item};
use mall_testkit::TestEnv;

const START: i64 = 1_000_000;
const END: i64 = 2_000_000;

async fn item(env: &TestEnv, units: i64, limit: i64) -> (Redis, ItemKeys) {
    let redis = Redis::connect_lazy(&env.platform_settings(&DEFAULTS).redis).unwrap();
    mall_common::redis::LuaScript::load_all(
        &redis,
        &[
            &mall_flashsale::store::admission::ADMIT,
            &mall_flashsale::store::admission::WARM_ITEM,
        ],
    )
    .await
    .unwrap();
    let keys = ItemKeys::new(&redis, 7, 42);
    let warm = Warm {
        start_ms: START,
        end_ms: END,
        limit,
        quantity: units,
        expire_at_ms: 4_000_000_000_000,
    };
    assert!(
        warm_item(&redis, &keys, warm).await.unwrap(),
        "loaded the first time"
    );
    (redis, keys)
}

fn attempt<'a>(user: &'a str, request: &'a str, quantity: i64, now_ms: i64, order: &'a str) -> Attempt<'a> {
    Attempt {
        user_id: user,
        request_id: request,
        quantity,
        now_ms,
        order_id: order,
        trace: "",
    }
}

async fn stream_len(redis: &Redis, keys: &ItemKeys) -> i64 {
    let mut conn = redis.conn().await.unwrap();
    client::cmd("XLEN")
        .arg(&keys.admissions)
        .query_async(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_return_code_and_boundary() {
    let env = TestEnv::new().await;
    let (redis, keys) = item(&env, 3, 2).await;

    let cold = ItemKeys::new(&redis, 7, 43);
    assert_eq!(
        admit(&redis, &cold, attempt("u", "r0", 1, START, "o0"))
            .await
            .unwrap(),
        Admission::NotWarmed
    );
    assert_eq!(
        admit(&redis, &keys, attempt("u", "r1", 1, START - 1, "o1"))
            .await
            .unwrap(),
        Admission::NotStarted
    );
    assert_eq!(
        admit(&redis, &keys, attempt("u", "r2", 1, END, "o2"))
            .await
            .unwrap(),
        Admission::Ended
    );
    assert_eq!(
        admit(&redis, &keys, attempt("u", "r3", 0, START, "o3"))
            .await
            .unwrap(),
        Admission::BadQuantity
    );

    // The first millisecond of the window admits; a repeat of the request returns the same order.
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a1", 1, START, "order-a1"))
            .await
            .unwrap(),
        Admission::Admitted {
            order_id: "order-a1".into(),
            left: 2
        }
    );
    assert_eq!(
        admit(
            &redis,
            &keys,
            attempt("alice", "a1", 1, START + 5, "another-order")
        )
        .await
        .unwrap(),
        Admission::Repeat {
            order_id: "order-a1".into()
        }
    );
    // Up to the limit exactly, then no more.
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a2", 1, START + 10, "order-a2"))
            .await
            .unwrap(),
        Admission::Admitted {
            order_id: "order-a2".into(),
            left: 1
        }
    );
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a3", 1, START + 11, "x"))
            .await
            .unwrap(),
        Admission::LimitExceeded
    );
    // More than is left is sold out; exactly what is left is admitted; then sold out.
    assert_eq!(
        admit(&redis, &keys, attempt("bob", "b1", 2, END - 1, "x"))
            .await
            .unwrap(),
        Admission::SoldOut { left: 1 }
    );
    assert_eq!(
        admit(&redis, &keys, attempt("carol", "c1", 1, END - 1, "order-c1"))
            .await
            .unwrap(),
        Admission::Admitted {
            order_id: "order-c1".into(),
            left: 0
        }
    );
    assert_eq!(
        admit(&redis, &keys, attempt("dave", "d1", 1, END - 1, "x"))
            .await
            .unwrap(),
        Admission::SoldOut { left: 0 }
    );
    assert_eq!(
        stream_len(&redis, &keys).await,
        3,
        "every admission, and only admissions, recorded"
    );

    // A second warm-up never hands out the same units again.
    let warm = Warm {
        start_ms: START,
        end_ms: END,
        limit: 2,
        quantity: 3,
        expire_at_ms: 4_000_000_000_000,
    };
    assert!(!warm_item(&redis, &keys, warm).await.unwrap());
    assert_eq!(
        admit(&redis, &keys, attempt("erin", "e1", 1, START, "x"))
            .await
            .unwrap(),
        Admission::SoldOut { left: 0 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_buyers_for_a_hundred_units_get_exactly_a_hundred() {
    let env = TestEnv::new().await;
    let (redis, keys) = item(&env, 100, 1).await;
    let (redis, keys) = (Arc::new(redis), Arc::new(keys));
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let (redis, keys) = (redis.clone(), keys.clone());
            tokio::spawn(async move {
                let (user, req, order) = (format!("u{i}"), format!("r{i}"), format!("o{i}"));
                admit(&redis, &keys, attempt(&user, &req, 1, START + 1, &order))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Admission::Admitted { .. } => admitted += 1,
            Admission::SoldOut { left: 0 } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 100);
    let mut conn = redis.conn().await.unwrap();
    let left: i64 = client::cmd("GET")
        .arg(&keys.stock)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(stream_len(&redis, &keys).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_trying_five_times_at_once_never_pass_a_limit_of_two_and_a_repeated_request_admits_once() {
    let env = TestEnv::new().await;
    let (redis, keys) = item(&env, 1000, 2).await;
    let (redis, keys) = (Arc::new(redis), Arc::new(keys));
    let tasks: Vec<_> = (0..50)
        .flat_map(|u| (0..5).map(move |t| (u, t)))
        .map(|(u, t)| {
            let (redis, keys) = (redis.clone(), keys.clone());
            tokio::spawn(async move {
                let (user, req, order) = (format!("u{u}"), format!("u{u}-t{t}"), format!("o{u}-{t}"));
                admit(&redis, &keys, attempt(&user, &req, 1, START + 1, &order))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut conn = redis.conn().await.unwrap();
    let per_user: Vec<(String, i64)> = client::cmd("HGETALL")
        .arg(&keys.users)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(per_user.len(), 50);
    assert!(per_user.iter().all(|(_, n)| *n == 2), "{per_user:?}");

    let same: Vec<_> = (0..20)
        .map(|i| {
            let (redis, keys) = (redis.clone(), keys.clone());
            tokio::spawn(async move {
                let order = format!("candidate-{i}");
                admit(&redis, &keys, attempt("zoe", "one-click", 1, START + 2, &order))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut orders = Vec::new();
    for t in same {
        match t.await.unwrap() {
            Admission::Admitted { order_id, .. } | Admission::Repeat { order_id } => orders.push(order_id),
            other => panic!("{other:?}"),
        }
    }
    orders.dedup();
    assert_eq!(orders.len(), 1, "one admission, the same answer each time");
    assert_eq!(stream_len(&redis, &keys).await, 101);
}
