//! The distributed lock and script loading against a real Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mall_common::platform::{Needs, Platform, StartError};
use mall_common::redis::{LuaScript, Redis, lock};
use mall_testkit::TestEnv;

fn redis(env: &TestEnv) -> Redis {
    Redis::connect_lazy(&env.platform_settings(&crate::DEFAULTS).redis).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_of_many_concurrent_contenders_gets_the_lock() {
    let env = TestEnv::new().await;
    let redis = redis(&env);
    let winners = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (redis, winners) = (redis.clone(), winners.clone());
            tokio::spawn(async move {
                if let Some(guard) = lock::try_acquire(&redis, "lock:job", Duration::from_secs(10))
                    .await
                    .unwrap()
                {
                    winners.fetch_add(1, Ordering::SeqCst);
                    std::mem::forget(guard);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(winners.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_ran_out_cannot_release_or_renew_the_next_holders_lock() {
    let env = TestEnv::new().await;
    let redis = redis(&env);
    let first = lock::try_acquire(&redis, "lock:warmup", Duration::from_millis(150))
        .await
        .unwrap()
        .expect("free lock");
    assert!(first.renew().await.unwrap(), "the owner renews");
    assert!(
        lock::try_acquire(&redis, "lock:warmup", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "held locks are not shared"
    );

    // The first holder "dies": its lease runs out and another instance takes over.
    let second = mall_testkit::eventually(Duration::from_secs(5), "taken over after the lease", || async {
        match lock::try_acquire(&redis, "lock:warmup", Duration::from_secs(5)).await {
            Ok(Some(guard)) => Ok(guard),
            Ok(None) => Err("still held".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert!(!first.renew().await.unwrap(), "a stale holder cannot renew");
    assert!(!first.release().await.unwrap(), "a stale holder cannot release");
    assert!(
        lock::try_acquire(&redis, "lock:warmup", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "the second holder still holds it"
    );
    assert!(second.release().await.unwrap());
    assert!(
        lock::try_acquire(&redis, "lock:warmup", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_lua_script_stops_start_up() {
    static BROKEN: std::sync::LazyLock<LuaScript> =
        std::sync::LazyLock::new(|| LuaScript::new("test/broken", "return redis.call('GET', KEYS[1]"));
    let env = TestEnv::new().await;
    let needs = Needs {
        redis: Some(vec![&BROKEN]),
        ..Needs::default()
    };
    match Platform::start("platformtest", env.platform_settings(&crate::DEFAULTS), needs).await {
        Err(StartError::Script(e)) => assert!(e.to_string().contains("test/broken"), "{e}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a broken script must stop start-up"),
    }
}
