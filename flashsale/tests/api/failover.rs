//! A Redis Cluster failover in the middle of a flash sale: once 20 units are sold, the master
//! holding the item is killed (`SIGKILL`) and its replica promoted. The sale goes on,
//! sells no unit twice, and every 202 gets its order: an admission is promised only once the
//! replica holds it (`WAIT`), and the job reloads the item from the book on the new master.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mall_flashsale::store::admission::ItemKeys;
use mall_testkit::checks::metric_sum;
use mall_testkit::{RedisCluster, TestEnv, eventually};
use serde_json::json;
use tokio::time::Instant;

use crate::helpers::{
    Options, admitted_orders, buy_patiently, flash_orders, purchase, redis, running, sale, stock, token_ok,
    wait_orders,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_sale_loses_no_admission_and_sells_no_unit_twice() {
    let cluster = Arc::new(RedisCluster::start(3).await);
    let env = TestEnv::on_cluster(&cluster).await;
    let sale = Arc::new(sale(&env, &[21], 150, Options::default()).await);
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 21, "price_cents": 990, "quantity": 100, "per_user_limit": 1}]),
    )
    .await;
    let master = cluster
        .master_of(&ItemKeys::new(&redis(&env), session, 21).meta)
        .await;

    // The fault, once 20 units are sold (with buyers still arriving for seconds): the master
    // dies and its replica takes over.
    let admitted_so_far = Arc::new(AtomicUsize::new(0));
    let mut fault = {
        let (sold, cluster) = (admitted_so_far.clone(), cluster.clone());
        tokio::spawn(async move {
            eventually(Duration::from_secs(30), "20 units sold", || async {
                let n = sold.load(Ordering::Relaxed);
                if n >= 20 { Ok(()) } else { Err(n) }
            })
            .await;
            cluster.kill(master);
            Instant::now()
        })
    };

    // 2,000 buyers arriving at 200/s, each retrying its 503s with the same request id.
    let mut arrivals = tokio::time::interval(Duration::from_millis(5));
    let mut buyers = Vec::new();
    let mut killed_at = None;
    for i in 0..2000 {
        arrivals.tick().await;
        // No one else arrives until the master is dead: on a loaded machine the kill could
        // otherwise come after the last unit, leaving nothing to sell on the new master.
        if killed_at.is_none() && admitted_so_far.load(Ordering::Relaxed) >= 20 {
            killed_at = Some((&mut fault).await.unwrap());
        }
        let (sale, admitted_so_far) = (sale.clone(), admitted_so_far.clone());
        buyers.push(tokio::spawn(async move {
            let fs = &sale.fs[i % 2];
            let buyer = format!("crowd-{i}");
            let t = token_ok(fs, &buyer, session, 21).await;
            let answer = buy_patiently(fs, &buyer, purchase(session, 21, 1, &t, &format!("r{i}"))).await;
            if answer.0 == 202 {
                admitted_so_far.fetch_add(1, Ordering::Relaxed);
            }
            (answer, Instant::now())
        }));
    }
    let killed_at = match killed_at {
        Some(at) => at,
        None => fault.await.unwrap(),
    };

    let mut admitted = HashSet::new();
    let mut after_the_kill = 0;
    let mut sold_out = 0;
    for b in buyers {
        match b.await.unwrap() {
            ((202, body), at) => {
                assert!(admitted.insert(body["order_id"].as_str().unwrap().to_owned()));
                after_the_kill += usize::from(at > killed_at);
            }
            ((409, body), _) => {
                assert_eq!(body["code"], "sold_out");
                sold_out += 1;
            }
            ((status, body), _) => panic!("{status}: {body}"),
        }
    }
    // The sale went on after the promotion, and sold out without selling a unit twice.
    assert!(after_the_kill > 0, "no purchase admitted after the failover");
    assert_eq!((admitted.len(), sold_out), (100, 1900));

    // Every 202 has its order, and nothing else has one (checked in Postgres).
    let orders: HashSet<String> = wait_orders(&env, session, 100).await.into_iter().collect();
    let booked: HashSet<String> = admitted_orders(&env, session, 21).await.into_iter().collect();
    assert_eq!(orders, admitted);
    assert_eq!(booked, admitted);
    // Orders were carved from the session's reservation: inventory's counters are unchanged.
    assert_eq!(stock(&env, 21).await, (50, 100, 0, 150));
    // The job noticed the new master and reloaded the item from the book.
    eventually(
        Duration::from_secs(10),
        "the item reloaded on the new master",
        || async {
            let mut count = 0.0;
            for fs in &sale.fs {
                count += metric_sum(fs, "flashsale_reloads_total", &[]).await;
            }
            if count >= 1.0 { Ok(()) } else { Err(count) }
        },
    )
    .await;
    // The promoted master has no replica (the old one is not restarted): its admissions were
    // promised without one, and counted.
    let mut unreplicated = 0.0;
    for fs in &sale.fs {
        unreplicated += metric_sum(fs, "flashsale_unreplicated_admissions_total", &[]).await;
    }
    assert!(
        unreplicated >= 1.0,
        "admissions after the failover: {unreplicated}"
    );
    assert_eq!(flash_orders(&env, session).await.len(), 100, "no order twice");
}
