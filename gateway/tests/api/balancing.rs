//! Spreading load, following instance health, preferring fast instances.

use std::time::Duration;

use mall_testkit::upstream::FakeUpstream;
use mall_testkit::{TestEnv, eventually};

use crate::helpers::{concurrent_gets, get, settings, spawn, until_rotation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_spreads_a_dead_instance_leaves_rotation_and_a_restarted_one_returns() {
    let env = TestEnv::new().await;
    let ups = [
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
        FakeUpstream::start("c").await,
    ];
    let other = FakeUpstream::start("other").await;
    let gw = spawn(&env, settings(&env, &[&ups[0], &ups[1], &ups[2]], &other, &[])).await;

    let statuses = concurrent_gets(&gw, "/api/skus/1", 40, 8).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for u in &ups {
        assert!(
            u.hits() >= 20,
            "every instance takes a share: {:?}",
            ups.iter().map(FakeUpstream::hits).collect::<Vec<_>>()
        );
    }

    until_rotation(&gw, &ups[2], true).await;
    ups[2].kill();
    until_rotation(&gw, &ups[2], false).await;
    let before = ups[2].hits();
    for _ in 0..200 {
        let (status, body) = get(&gw, "/api/skus/1").await;
        assert_eq!(
            status, 200,
            "no request fails once the dead instance is out: {body}"
        );
    }
    assert_eq!(ups[2].hits(), before);

    ups[2].restart().await;
    eventually(
        Duration::from_secs(5),
        "the restarted instance receives traffic",
        || async {
            // Concurrent traffic, as in production: a returning instance wins p2c comparisons once
            // the others have requests pending.
            let statuses = concurrent_gets(&gw, "/api/skus/1", 1, 8).await;
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
            if ups[2].hits() > before {
                Ok(())
            } else {
                Err("no traffic yet")
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_eject_an_instance_but_never_the_last_one_in_rotation() {
    let env = TestEnv::new().await;
    let (a, b, other) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
        FakeUpstream::start("other").await,
    );
    // No check for the test's length (a passing check brings an ejected instance back) and no
    // breaker: passive ejection alone.
    let quiet = [
        ("MALL_GW_HEALTH_INTERVAL", "1h"),
        ("MALL_GW_BREAKER_MIN_CALLS", "100000"),
        ("MALL_GW_EJECT_AFTER", "3"),
    ];
    let gw = spawn(&env, settings(&env, &[&a, &b], &other, &quiet)).await;

    // Both answer 503 (they cannot serve). The first to fail three requests in a row is
    // ejected; the other is then the last in rotation and stays in: every request still
    // reaches it, and the client gets its answer, never the gateway's 503
    // `upstream_unavailable` (which ejecting it too would give).
    a.set_failing(Some(503));
    b.set_failing(Some(503));
    for _ in 0..60 {
        let (status, body) = get(&gw, "/api/skus/1").await;
        assert_eq!(status, 503);
        assert_ne!(body["code"], "upstream_unavailable", "{body}");
    }
    let (ejected, last) = if a.hits() < b.hits() { (&a, &b) } else { (&b, &a) };
    assert_eq!(ejected.hits(), 3, "ejected after its third failure in a row");
    assert_eq!(last.hits(), 57, "the last in rotation took every other request");

    // The last one recovers and answers; the ejected one waits for its checks.
    ejected.set_failing(None);
    last.set_failing(None);
    for _ in 0..20 {
        assert_eq!(get(&gw, "/api/skus/1").await.0, 200);
    }
    assert_eq!((ejected.hits(), last.hits()), (3, 77));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_receives_less_traffic_than_a_fast_one() {
    let env = TestEnv::new().await;
    let (fast, slow) = (
        FakeUpstream::start("fast").await,
        FakeUpstream::start("slow").await,
    );
    slow.set_delay(Duration::from_millis(40));
    let other = FakeUpstream::start("other").await;
    let gw = spawn(&env, settings(&env, &[&fast, &slow], &other, &[])).await;

    let statuses = concurrent_gets(&gw, "/api/skus/9", 30, 4).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(
        fast.hits() > 3 * slow.hits(),
        "peak-EWMA should prefer the fast instance: fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_whose_checks_are_late_stays_in_rotation_while_it_answers_requests() {
    let env = TestEnv::new().await;
    let busy = FakeUpstream::start("busy").await;
    let other = FakeUpstream::start("other").await;
    // Checks every 100 ms that give up after 100 ms; two failed in a row take an instance out.
    let gw = spawn(&env, settings(&env, &[&busy], &other, &[])).await;
    busy.set_health_delay(Duration::from_millis(300));

    // Requests keep coming and are answered: every check is late, none is a verdict.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let mut answered = 0;
    while std::time::Instant::now() < until {
        let (status, body) = get(&gw, "/api/skus/1").await;
        assert_eq!(status, 200, "the busy instance stays in rotation: {body}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered > 20, "only {answered} requests");

    // Without traffic a late check is all there is to go on: the instance leaves rotation
    // (a hung instance must), and the next request is told so.
    until_rotation(&gw, &busy, false).await;
    let (status, body) = get(&gw, "/api/skus/1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "upstream_unavailable");

    // Checks answered in time again bring it back.
    busy.set_health_delay(Duration::ZERO);
    eventually(Duration::from_secs(5), "the instance returns", || async {
        match get(&gw, "/api/skus/1").await {
            (200, _) => Ok(()),
            _ => Err("not yet"),
        }
    })
    .await;
}
