//! The admission and load scripts on their own, against a real Redis: every return code, the
//! boundaries, concurrent runs, and a load from a book.

use std::sync::Arc;

use mall_common::redis::{Redis, client};
use mall_flashsale::config::DEFAULTS;
use mall_flashsale::store::admission::{
    Admission, Admitted, Attempt, ItemKeys, Load, admit, load_item, mark_booked,
};
use mall_flashsale::store::book::Booked;
use mall_flashsale::store::replica::Replication;
use mall_testkit::TestEnv;

const START: i64 = 1_000_000;
const END: i64 = 2_000_000;

async fn item(env: &TestEnv, units: i64, limit: i64) -> (Redis, ItemKeys) {
    let redis = Redis::connect_lazy(&env.platform_settings(&DEFAULTS).redis).unwrap();
    mall_common::redis::LuaScript::load_all(
        &redis,
        &[
            &mall_flashsale::store::admission::ADMIT,
            &mall_flashsale::store::admission::LOAD_ITEM,
            &mall_flashsale::store::admission::MARK_BOOKED,
        ],
    )
    .await
    .unwrap();
    let keys = ItemKeys::new(&redis, 7, 42);
    assert!(
        load_item(&redis, &keys, &load(units, limit, 1, &[]))
            .await
            .unwrap(),
        "loaded the first time"
    );
    (redis, keys)
}

fn load(units: i64, limit: i64, epoch: i64, booked: &[Booked]) -> Load<'_> {
    Load {
        start_ms: START,
        end_ms: END,
        limit,
        quantity: units,
        expire_at_ms: 4_000_000_000_000,
        epoch,
        run_id: "test-run",
        booked,
    }
}

fn admitted(order: &str, quantity: i64, left: i64, epoch: i64) -> Admitted {
    Admitted {
        order_id: order.into(),
        quantity,
        left,
        epoch,
        booked: false,
        replication: Replication::NotAsked,
    }
}

async fn units_admitted(redis: &Redis, keys: &ItemKeys) -> i64 {
    let mut conn = redis.conn().await.unwrap();
    let per_user: Vec<(String, i64)> = client::cmd("HGETALL")
        .arg(&keys.users)
        .query_async(&mut *conn)
        .await
        .unwrap();
    per_user.iter().map(|(_, n)| n).sum()
}

fn attempt<'a>(user: &'a str, request: &'a str, quantity: i64, now_ms: i64, order: &'a str) -> Attempt<'a> {
    Attempt {
        user_id: user,
        request_id: request,
        quantity,
        now_ms,
        order_id: order,
    }
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
        Admission::Admitted(admitted("order-a1", 1, 2, 1))
    );
    assert_eq!(
        admit(
            &redis,
            &keys,
            attempt("alice", "a1", 2, START + 5, "another-order")
        )
        .await
        .unwrap(),
        Admission::Repeat(admitted("order-a1", 1, 2, 1)),
        "the first answer, with its quantity"
    );
    // Once marked booked, a repeat says so (and skips the booking write).
    assert!(
        mark_booked(&redis, &keys, "alice", "a1", &admitted("order-a1", 1, 2, 1))
            .await
            .unwrap()
    );
    assert!(
        !mark_booked(&redis, &keys, "alice", "never-sent", &admitted("x", 1, 2, 1))
            .await
            .unwrap(),
        "only an existing answer is marked"
    );
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a1", 1, START + 6, "x"))
            .await
            .unwrap(),
        Admission::Repeat(Admitted {
            booked: true,
            ..admitted("order-a1", 1, 2, 1)
        })
    );
    // Up to the limit exactly, then no more.
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a2", 1, START + 10, "order-a2"))
            .await
            .unwrap(),
        Admission::Admitted(admitted("order-a2", 1, 1, 1))
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
        Admission::Admitted(admitted("order-c1", 1, 0, 1))
    );
    assert_eq!(
        admit(&redis, &keys, attempt("dave", "d1", 1, END - 1, "x"))
            .await
            .unwrap(),
        Admission::SoldOut { left: 0 }
    );
    assert_eq!(
        units_admitted(&redis, &keys).await,
        3,
        "every admission, and only admissions, counted"
    );

    // A load of the same epoch (another instance, a restart) never hands out the units again.
    assert!(!load_item(&redis, &keys, &load(3, 2, 1, &[])).await.unwrap());
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
            Admission::Admitted(_) => admitted += 1,
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
    assert_eq!(units_admitted(&redis, &keys).await, 100);
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
            Admission::Admitted(a) | Admission::Repeat(a) => orders.push(a.order_id),
            other => panic!("{other:?}"),
        }
    }
    orders.dedup();
    assert_eq!(orders.len(), 1, "one admission, the same answer each time");
    assert_eq!(units_admitted(&redis, &keys).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_from_the_book_replaces_whatever_redis_held_and_an_older_load_never_wins() {
    let env = TestEnv::new().await;
    let (redis, keys) = item(&env, 10, 3).await;
    // Redis admitted three units to bob that the book never got (say, lost in a failover).
    for r in ["b1", "b2", "b3"] {
        assert!(matches!(
            admit(&redis, &keys, attempt("bob", r, 1, START, &format!("o-{r}")))
                .await
                .unwrap(),
            Admission::Admitted(_)
        ));
    }
    let booked = |order: &str, user: &str, request: &str, quantity: i64, returned: bool| Booked {
        order_id: order.into(),
        user_id: user.into(),
        request_id: request.into(),
        quantity,
        returned,
    };
    let book = [
        booked("o-a1", "alice", "a1", 2, false),
        booked("o-c1", "carol", "c1", 1, true),
        booked("o-c2", "carol", "c2", 1, false),
    ];
    assert!(load_item(&redis, &keys, &load(10, 3, 2, &book)).await.unwrap());
    // An older load arriving late (a second leader) is left alone.
    assert!(!load_item(&redis, &keys, &load(10, 3, 1, &[])).await.unwrap());

    // 10 on sale - 2 (alice) - 1 (carol's live order); carol's cancelled order is not held.
    assert_eq!(units_admitted(&redis, &keys).await, 3);
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a1", 1, START + 1, "x"))
            .await
            .unwrap(),
        Admission::Repeat(Admitted {
            booked: true,
            ..admitted("o-a1", 2, 7, 2)
        }),
        "a booked request id answers with its order, known booked"
    );
    assert_eq!(
        admit(&redis, &keys, attempt("alice", "a9", 2, START + 1, "x"))
            .await
            .unwrap(),
        Admission::LimitExceeded,
        "the buyer's count comes from the book"
    );
    assert_eq!(
        admit(&redis, &keys, attempt("bob", "b1", 1, START + 1, "o-b1-again"))
            .await
            .unwrap(),
        Admission::Admitted(admitted("o-b1-again", 1, 6, 2)),
        "what the book never had is gone"
    );
    let mut conn = redis.conn().await.unwrap();
    let returned: bool = client::cmd("SISMEMBER")
        .arg(&keys.returned)
        .arg("o-c1")
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert!(returned, "a cancelled order is not given back twice");
}
